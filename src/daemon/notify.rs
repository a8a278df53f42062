//! Talking to systemd: READY/RELOADING/STOPPING, the STATUS= line, and watchdog pings.
//! Without NOTIFY_SOCKET (a foreground run) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Notifier {
    /// Half of WatchdogSec, or `None` when systemd runs no watchdog for us.
    watchdog_interval: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        // Ping at twice the rate systemd demands, so one slow tick is not fatal.
        let watchdog_interval = sd_notify::watchdog_enabled().map(|d| d / 2);
        Notifier { watchdog_interval }
    }

    /// How often the main loop must call [`Notifier::watchdog`].
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading(&self, status: &str) {
        // systemd >= 253 wants MONOTONIC_USEC with RELOADING=1; older ones ignore it.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(_) => send(&[NotifyState::Reloading, NotifyState::Status(status)]),
        }
    }

    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        if self.watchdog_interval.is_some() {
            send(&[NotifyState::Watchdog]);
        }
    }
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        // Not fatal: systemd will notice on its own if we really are unreachable.
        tracing::warn!("could not notify systemd: {err}");
    }
}
