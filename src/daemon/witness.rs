//! The witness (`role = "witness"`): no files, no users, no sshd drop-in.
//! It runs the failover thread as a voter and a main loop that answers
//! systemd and writes the status file.

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::{Config, Role};
use crate::failover::core::{Kind, Timing};
use crate::failover::driver::{Failover, Gate, Settings};
use crate::logging::LogHandle;
use crate::status::{self, DaemonStatus, Phase};
use crate::timefmt::{format_duration, unix_now};

use super::DaemonError;
use super::notify::Notifier;
use super::signals::{Request, Signals};

pub(super) fn run(
    config: Config,
    _log: LogHandle,
    notifier: Notifier,
    signals: &mut Signals,
) -> Result<(), DaemonError> {
    tracing::info!(
        config = %config.path.display(),
        "sftp-ha {} starting: {}",
        env!("CARGO_PKG_VERSION"),
        config.summary()
    );
    super::prepare_state_dir(&config)?;
    let f = &config.failover;
    let Some(key) = f.key.clone() else {
        return Err(DaemonError::Config(crate::config::ConfigError::Invalid {
            path: config.path.clone(),
            line: 1,
            column: 1,
            key: Some("failover.key_file".into()),
            message: "no failover key loaded".into(),
            hint: "run sftp-ha failover keygen on one host and copy the key to the other two"
                .into(),
        }));
    };
    let node = crate::role::node_name();
    let settings = Settings {
        node: node.clone(),
        kind: Kind::Witness,
        timing: Timing { after: f.after },
        port: f.port,
        key,
        witness: None,
        peer: None,
        virtual_ip: None,
        interface: None,
        data_dir: config.data_dir.clone(),
        sync_root: config.sync_root(),
        state_dir: config.state_dir.clone(),
        role: Role::Standby,
        epoch: 0,
        main_alive: None,
        several_standbys: false,
    };
    let failover = Failover::start(settings, Gate::new(false))
        .map_err(|err| DaemonError::Witness(err.to_string()))?;
    let runtime_dir = status::runtime_dir();
    let now = unix_now();
    let activity = format!(
        "witness: votes in automatic failover on UDP port {} (after {})",
        f.port,
        format_duration(f.after)
    );
    let mut daemon_status = DaemonStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        role: Role::Standby,
        phase: Phase::Running,
        activity: activity.clone(),
        started_at: now,
        updated_at: now,
        config_path: config.path.clone(),
        config_loaded_at: now,
        data_dir: config.data_dir.clone(),
        standby: None,
        fallback_interval: String::new(),
        shared: false,
        last_reload: None,
        sshd: String::new(),
        users_apply: None,
        sync: None,
        standbys: Vec::new(),
        epoch: 0,
        role_since: now,
        role_reason: "role = \"witness\" in config.toml".into(),
        node,
        peer: None,
        caught_up: None,
        last_request: None,
        answers: Vec::new(),
        failover: Some(failover.status()),
        witness: true,
    };
    let write = |s: &DaemonStatus| {
        if let Err(err) = status::write(&runtime_dir, s) {
            tracing::warn!(path = %runtime_dir.display(), "cannot write the status file: {err}");
        }
    };
    write(&daemon_status);
    notifier.ready(&activity);
    tracing::info!("ready: {activity}");
    let tick = notifier
        .watchdog_interval()
        .map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
    let mut last = Instant::now();
    notifier.watchdog();
    let result = loop {
        let wait = tick.saturating_sub(last.elapsed());
        let mut fds = [
            PollFd::new(signals.fd(), PollFlags::POLLIN),
            PollFd::new(failover.wake_fd(), PollFlags::POLLIN),
        ];
        match poll(
            &mut fds,
            PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(source) => {
                break Err(DaemonError::Os {
                    what: "the main loop (poll)",
                    source,
                });
            }
        }
        // A witness is told nothing to act on; the wake-ups are drained.
        drop(failover.events());
        let mut stop = false;
        loop {
            match signals.next() {
                Ok(Some(Request::Stop)) => {
                    tracing::info!("stop requested");
                    stop = true;
                }
                Ok(Some(Request::Reload)) => tracing::info!(
                    "reload: a witness reads its config only at start (systemctl restart sftp-ha)"
                ),
                Ok(Some(Request::Command)) => tracing::warn!(
                    "sftp-ha promote / demote mean nothing on the witness; run them on a file host"
                ),
                Ok(None) => break,
                Err(source) => {
                    return Err(DaemonError::Os {
                        what: "signal handling (read)",
                        source,
                    });
                }
            }
        }
        if stop {
            break Ok(());
        }
        if last.elapsed() >= tick {
            notifier.watchdog();
            last = Instant::now();
            daemon_status.failover = Some(failover.status());
            daemon_status.updated_at = unix_now();
            write(&daemon_status);
        }
    };
    notifier.stopping("stopping");
    failover.stop();
    status::remove(&runtime_dir);
    tracing::info!("stopped");
    result
}
