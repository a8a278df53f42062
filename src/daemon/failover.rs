//! The daemon's side of automatic failover: starts the failover thread
//! ([`crate::failover::driver`]) and acts on what it reports: a takeover the
//! witness granted, a newer master, the lease lost or won.

use std::time::{Duration, Instant};

use crate::config::{FailoverMode, Role};
use crate::failover::core::{Kind, Timing};
use crate::failover::driver::{Event, Failover, Gate, Settings};
use crate::role;
use crate::timefmt::unix_now;

use super::Daemon;

/// How often the failover part of the status file is refreshed when
/// nothing else changed (the lease's time left moves all the time).
const COPY_EVERY: Duration = Duration::from_secs(1);

impl Daemon {
    /// With `mode = "auto"`: the gate makes users wait for the lease, and
    /// the thread starts. Without a failover key or port the daemon runs on
    /// without it: users stay read-only on a master, and the status says why.
    pub(super) fn start_failover(&mut self) {
        let f = &self.config.failover;
        let fence_file = self.runtime_dir.join(crate::failover::FENCE_FILE);
        if f.mode != FailoverMode::Auto {
            let _ = std::fs::remove_file(&fence_file);
            self.start_manual_notices();
            return;
        }
        self.fence_interface = crate::failover::vip_interface(f);
        self.save_fence_info();
        self.gate = Gate::new(true);
        let Some(key) = f.key.clone() else {
            tracing::error!("failover: no key loaded; automatic failover is off");
            return;
        };
        let settings = Settings {
            virtual_ip: f.virtual_ip,
            interface: f.interface.clone(),
            main_alive: Some(self.main_alive.clone()),
            ..self.failover_settings(Kind::FileHost, key)
        };
        match Failover::start(settings, self.gate.clone()) {
            Ok(failover) => {
                tracing::info!(
                    "automatic failover: witness {}, peer {}, after {}; users write here only while this host holds the master's lease",
                    f.witness
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string),
                    f.peer
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string),
                    crate::timefmt::format_duration(f.after)
                );
                self.failover = Some(failover);
            }
            Err(err) => tracing::error!(
                "{err}; automatic failover is off, and users stay read-only on a master"
            ),
        }
    }

    /// With `mode = "manual"` and a witness: a thread that only tells the
    /// witness and the peer that this host runs manual failover (while it
    /// is the master), so that an automatic peer never takes over from a
    /// master that does not stop writing when a lease runs out. It fences
    /// nothing and moves no address.
    fn start_manual_notices(&mut self) {
        let f = &self.config.failover;
        let (Some(witness), Some(key)) = (f.witness.clone(), f.key.clone()) else {
            return;
        };
        let settings = Settings {
            witness: Some(witness),
            ..self.failover_settings(Kind::Manual, key)
        };
        match Failover::start(settings, self.gate.clone()) {
            Ok(failover) => {
                tracing::info!(
                    "manual failover: the witness and the peer are told so, and an automatic peer does not take over from this host"
                );
                self.failover = Some(failover);
            }
            Err(err) => tracing::error!(
                "{err}; the witness and the peer cannot be told that this host runs manual failover: switch the peer to mode = \"manual\" too"
            ),
        }
    }

    /// The thread's settings from `[failover]` and the live role, without
    /// the virtual IP and without the watchdog.
    fn failover_settings(&self, kind: Kind, key: crate::failover::key::FailoverKey) -> Settings {
        let f = &self.config.failover;
        Settings {
            node: self.node.clone(),
            kind,
            timing: Timing { after: f.after },
            port: f.port,
            key,
            witness: f.witness.clone(),
            peer: f.peer.clone(),
            virtual_ip: None,
            interface: None,
            data_dir: self.config.data_dir.clone(),
            sync_root: self.config.sync_root(),
            state_dir: self.config.state_dir.clone(),
            role: self.live.role,
            epoch: self.live.epoch,
            main_alive: None,
            several_standbys: self.config.sync.standbys.len() > 1,
        }
    }

    /// Tells the thread the live role (after every change).
    pub(super) fn tell_failover_role(&self) {
        if let Some(f) = &self.failover {
            f.set_role(self.live.role, self.live.epoch);
            if self.config.failover.mode == FailoverMode::Auto {
                self.save_fence_info();
            }
        }
    }

    /// For ExecStopPost, should this daemon die: what to fence with, and
    /// whether this host was the master (then a refused drop-in stops sshd).
    fn save_fence_info(&self) {
        let f = &self.config.failover;
        crate::failover::save_fence_info(
            &self.runtime_dir,
            &crate::failover::FenceInfo {
                data_dir: self.config.data_dir.clone(),
                sync_root: Some(self.config.sync_root()),
                virtual_ip: f.virtual_ip.map(|v| v.to_string()),
                interface: self.fence_interface.clone(),
                master: self.live.role == Role::Master,
            },
        );
    }

    /// Acts on what the failover thread reported, and copies its status.
    pub(super) fn on_failover_events(&mut self) {
        let Some(failover) = &self.failover else {
            return;
        };
        let events = failover.events();
        let had_events = !events.is_empty();
        for event in events {
            match event {
                Event::Promote { epoch, reason } => self.take_over(epoch, reason),
                Event::StepDown { epoch, master } => {
                    if self.live.role == Role::Master {
                        let live = role::step_down(
                            &self.live,
                            epoch,
                            format!(
                                "a newer master exists: {master} at epoch {epoch}, as the witness or the peer answered this host's lease renewal"
                            ),
                            unix_now(),
                        );
                        self.become_standby(live);
                    }
                    self.handover_done_by_newer_master(epoch, &master);
                }
                Event::Fenced { reason } => {
                    tracing::warn!("users are read-only here now: {reason}");
                    self.start_fencing(crate::sshd::connection_pids());
                    if self.config.shared() {
                        let margin = Timing {
                            after: self.config.failover.after,
                        }
                        .fence_margin();
                        self.fence_kill_at = Some(Instant::now() + margin / 2);
                    }
                    self.refresh_activity();
                }
                Event::Unfenced { reason } => {
                    tracing::info!("users may write here again: {reason}");
                    self.fencing = None;
                    self.fence_kill_at = None;
                    self.refresh_activity();
                }
            }
        }
        if had_events
            || self
                .failover_copied
                .is_none_or(|t| t.elapsed() >= COPY_EVERY)
        {
            self.failover_copied = Some(Instant::now());
            if let Some(f) = &self.failover {
                self.status.failover = Some(f.status());
            }
            self.set_phase(self.status.phase);
        }
    }

    /// The witness granted this standby the takeover.
    fn take_over(&mut self, epoch: u64, reason: String) {
        if self.live.role == Role::Master {
            return;
        }
        let live = role::take_over(&self.live, epoch, reason, unix_now());
        if !self.become_master(live) {
            tracing::error!(
                "failover: the takeover at epoch {epoch} could not be carried out; this host stays a standby"
            );
            if let Some(f) = &self.failover {
                f.promotion_failed();
            }
        }
    }
}
