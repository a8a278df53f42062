//! The daemon's side of live roles: the thin driver around [`crate::role`].
//! It persists the live role, publishes it for the peer, judges the claims a
//! master writes here, carries out `sftp-ha promote` / `demote`, and switches
//! everything that depends on the role (the sshd drop-in, the users' open
//! sessions, replication, the users.yaml watch) when it changes.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::layout::{CHANGED_FILE, CLAIM_FILE, CONTROL_DIR, POSITION_FILE, ROLE_FILE};
use crate::role::{
    self, Claim, ClaimVerdict, Live, OtherStandby, PeerAnswer, Position, PromoteVerdict, Published,
    Role, UsersOutcome,
};
use crate::status::{PeerSeen, RequestOutcome};
use crate::sync::BASELINE_FILE;
use crate::timefmt::unix_now;

use super::Daemon;

/// How long a promotion waits for the master to hand over, and a demotion
/// for the last changes to reach the standby, before giving up (and undoing
/// what it did).
const HANDOVER_PATIENCE: Duration = Duration::from_secs(30);
/// How long `promote` waits for the other standbys' answers (after the
/// master's probe, within the command's own 90 s): one that has not
/// answered by then counts as unreachable.
const COMPARE_PATIENCE: Duration = Duration::from_secs(20);
/// How long `demote` waits for the standby to accept the role.
const ACCEPT_PATIENCE: Duration = Duration::from_secs(20);
/// How long `promote` waits for the master's handover: longer than the
/// master's own patience, so the master always decides first.
const PROMOTE_PATIENCE: Duration = Duration::from_secs(45);
/// How long after this host stopped taking uploads the connections that were
/// open then are watched: one still logging in (sshd's LoginGraceTime is 2
/// minutes by default) would get the config it was accepted with, writable.
pub const FENCE_WINDOW: Duration = Duration::from_secs(180);
/// How long after a fence sshd is reloaded once more, if the fence's reload
/// found it restarting ([`crate::sshd::reload_may_be_lost`]). OpenSSH
/// ignores SIGHUP while it re-executes itself for an earlier one (tens of
/// milliseconds): a fence's reload that lands in that window, right after a
/// reload from elsewhere that read the config before the read-only drop-in
/// was written, would be lost, and that sshd would serve new logins
/// writable until its next reload. A second reload a second later reaches
/// an sshd that is listening again.
pub const FENCE_RELOAD_AGAIN: Duration = Duration::from_secs(1);
/// How often the fence looks at the connections again (see [`Daemon::keep_fencing`]).
const FENCE_LOOK_EVERY: Duration = Duration::from_millis(200);
/// `sftp-ha promote` / `demote` leave their request in the runtime dir as
/// `request-<id>.json`, one file each, so two at once do not overwrite one another.
pub const REQUEST_PREFIX: &str = "request-";
/// How many answers the status keeps, for the commands waiting on them.
const ANSWERS_KEPT: usize = 8;

/// A `promote` or `demote` asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandRequest {
    pub id: String,
    pub action: Action,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Promote,
    Demote,
}

/// A request being carried out.
pub(super) struct Pending {
    id: String,
    started: Instant,
    stage: Stage,
}

enum Stage {
    /// `promote`: asking the peer what it is, on a thread (a dead peer takes
    /// the connect timeout to say so).
    Probing {
        probe: JoinHandle<PeerAnswer>,
        force: bool,
    },
    /// `promote` with the master gone and other standbys listed: asking
    /// them how far they are caught up (on a thread), before this host
    /// becomes the master as `live`; `epoch` is this host's epoch when it
    /// began (a claim meanwhile calls it off).
    Comparing {
        answers: std::sync::mpsc::Receiver<(String, OtherStandby)>,
        asked: Vec<String>,
        got: Vec<(String, OtherStandby)>,
        live: Live,
        epoch: u64,
        /// The master's claim file as it was: a master that writes it
        /// meanwhile is back, and is asked for a handover instead.
        claim: Option<ClaimMark>,
    },
    /// `promote`: the master was asked to hand over.
    AwaitHandover,
    /// `demote`: the role was offered; the standby's daemon accepts it by
    /// asking for it (so the role never goes to a host nobody runs).
    AwaitAccept,
    /// `demote`: users stopped here; the worker sends the rest, then hands over.
    AwaitHandedOver,
}

/// What the daemon remembers of the claim file, to judge each claim once.
pub(super) type ClaimMark = (u64, i64, i64, u64);

impl Daemon {
    /// The persisted live role, or on the very first start the configured
    /// one; a config edited by the admin is followed while the live role
    /// still came from it ([`Live::follow_config`]).
    /// `progress` is called as a walk of the data dir goes (see [`WalkProgress`]).
    pub(super) fn load_live(
        config: &crate::config::Config,
        progress: &mut dyn FnMut(),
    ) -> Result<Live, role::RoleError> {
        let now = unix_now();
        let Some(live) = role::load(&config.state_dir)? else {
            let live = Live::first(config.role, now);
            role::save(&config.state_dir, &live)?;
            return Ok(live);
        };
        let Some(new) = live.follow_config(config.role, now) else {
            if live.role != config.role {
                tracing::info!(
                    "config.toml says role = \"{}\", but this host is live {} at epoch {} since {} ({}); the live role decides (sftp-ha promote / demote change it)",
                    config.role,
                    live.role,
                    live.epoch,
                    crate::timefmt::format_utc(live.since),
                    live.reason
                );
            }
            return Ok(live);
        };
        let state = &config.state_dir;
        if new.role == Role::Master {
            for index in crate::sync::index_files(state) {
                let _ = fs::remove_file(index);
            }
            save_baseline(config, progress)?;
        } else {
            let _ = fs::remove_file(state.join(BASELINE_FILE));
            if let Err(err) = write_changed_list(config, progress) {
                tracing::error!(
                    "cannot list the files the peer never confirmed: {err}; the new master goes by size and mtime alone"
                );
            }
        }
        role::save(state, &new)?;
        tracing::warn!(
            "role change: {} -> {} at epoch {}: {}",
            live.role,
            new.role,
            new.epoch,
            new.reason
        );
        Ok(new)
    }

    fn control_dir(&self) -> PathBuf {
        self.config.sync_root().join(CONTROL_DIR)
    }

    /// A master forgets the claim of the master it once followed: it must
    /// never be judged again (see [`Daemon::check_claim`]).
    pub(super) fn forget_claim_if_master(&self) {
        if self.live.role == Role::Master {
            let _ = fs::remove_file(self.control_dir().join(CLAIM_FILE));
        }
    }

    /// With shared storage, why this host must not become master: its
    /// data dir is not mounted (see [`crate::mount`]). `None` otherwise.
    fn shared_unmounted(&self) -> Option<String> {
        if !self.config.shared() {
            return None;
        }
        crate::mount::check(&self.config.data_dir).err().map(|why| {
            crate::mount::not_mounted_message(&self.config.path, &self.config.data_dir, &why)
        })
    }

    /// Writes this host's [`Published`] role for the peer to read.
    pub(super) fn publish_role(&mut self) {
        let users = match (self.live.role, &self.status.users_apply) {
            (Role::Standby, Some(u)) => Some(UsersOutcome {
                at: u.at,
                ok: u.ok,
                summary: u.summary.clone(),
            }),
            _ => None,
        };
        let published = Published {
            node: self.node.clone(),
            role: self.live.role,
            epoch: self.live.epoch,
            wants_master: self.wants_master,
            users,
            unreconciled: self.live.unreconciled,
            shared: self.config.shared(),
        };
        let dir = self.control_dir();
        let written = prepare_control_dir(&dir).and_then(|()| {
            let text = serde_json::to_vec_pretty(&published).map_err(io::Error::other)?;
            crate::fsutil::write_atomic(&dir.join(ROLE_FILE), &text, 0o600, Some((0, 0)))
        });
        if let Err(err) = written {
            tracing::error!(path = %dir.display(), "cannot publish this host's role for the peer: {err}");
        }
        self.status.role = self.live.role;
        self.status.epoch = self.live.epoch;
        self.status.role_since = self.live.since;
        self.status.role_reason = self.live.reason.clone();
        self.status.node = self.node.clone();
        self.tell_failover_role();
    }

    /// Persists a new live role and says why; returns false (and changes
    /// nothing) if it cannot be persisted: a role the host would forget at
    /// the next start must not be acted on.
    fn persist(&mut self, live: Live) -> bool {
        if let Err(err) = role::save(&self.config.state_dir, &live) {
            tracing::error!(
                "{err}; the role stays {} at epoch {}",
                self.live.role,
                self.live.epoch
            );
            return false;
        }
        if live.role != self.live.role {
            tracing::warn!(
                "role change: {} -> {} at epoch {}: {}",
                self.live.role,
                live.role,
                live.epoch,
                live.reason
            );
        } else if live.epoch != self.live.epoch {
            tracing::info!("{} at epoch {} now: {}", live.role, live.epoch, live.reason);
        }
        self.live = live;
        true
    }

    /// Becomes the master: the tree as it is now is the baseline for the
    /// reconciliation with the former master; then users may write, the sync
    /// account may not, and replication starts.
    pub(super) fn become_master(&mut self, live: Live) -> bool {
        if let Some(why) = self.shared_unmounted() {
            tracing::error!("not promoted: {why}");
            return false;
        }
        let state = self.config.state_dir.clone();
        // The old indexes describe peers of long ago; the first audits rebuild them.
        for index in crate::sync::index_files(&state) {
            let _ = fs::remove_file(index);
        }
        if let Err(err) = save_baseline(&self.config, &mut self.walk_progress()) {
            tracing::error!("{err}; not promoted");
            return false;
        }
        if !self.persist(live) {
            return false;
        }
        // The claim of the master this host followed is history now, and
        // so is how far that master found this host caught up.
        let _ = fs::remove_file(self.control_dir().join(CLAIM_FILE));
        let _ = fs::remove_file(self.control_dir().join(POSITION_FILE));
        self.wants_master = false;
        self.switch_role_parts(false);
        true
    }

    /// Becomes a standby: users' sessions end and new ones are read-only,
    /// replication stops, the sync account may write here.
    pub(super) fn become_standby(&mut self, live: Live) {
        let was_master = self.live.role == Role::Master;
        if !self.persist(live) {
            // It cannot be remembered, but users must stop writing anyway.
            self.live.role = Role::Standby;
        }
        let state = self.config.state_dir.clone();
        let _ = fs::remove_file(state.join(BASELINE_FILE));
        self.switch_role_parts(was_master);
    }

    /// Everything that follows the role, switched to the current one.
    /// `was_master`: this host steps down, so it lists what its standby never
    /// confirmed before it publishes its new role (the new master reads the
    /// list as soon as it sees this host as its standby).
    fn switch_role_parts(&mut self, was_master: bool) {
        let role = self.live.role;
        // Users first: stopping the worker can take seconds.
        self.install_sshd();
        self.fence();
        if role == Role::Standby
            && let Some(sync) = self.sync.take()
        {
            sync.stop(Duration::from_secs(3));
            self.status.sync = None;
            self.status.standbys.clear();
        }
        if was_master && role == Role::Standby {
            // After the worker stopped: its index on disk is final.
            match write_changed_list(&self.config, &mut self.walk_progress()) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    "{n} file(s) written here never reached the peer; they are listed for the new master's reconciliation"
                ),
                Err(err) => tracing::error!(
                    "cannot list the files the peer never confirmed: {err}; the new master goes by size and mtime alone"
                ),
            }
        }
        self.publish_role();
        self.claim_seen = None;
        match super::UsersWatch::new(
            &self.config.data_dir,
            self.config.hash_method,
            role,
            self.config.shared(),
        ) {
            Ok(users) => {
                self.users = users;
                self.users.startup();
            }
            Err(err) => {
                tracing::error!("cannot watch the admin folders after the role change: {err}")
            }
        }
        if role == Role::Master {
            self.start_sync();
        }
        self.refresh_activity();
        self.set_phase(self.status.phase);
        self.notifier.status(&self.status.activity);
    }

    /// Ends the sessions that the role forbids: on a master, replication
    /// sessions of the former master; on a standby, the users' sessions (a new
    /// drop-in changes only new connections), and for [`FENCE_WINDOW`] any
    /// login completing on a connection that was open then.
    pub(super) fn fence(&mut self) {
        match self.live.role {
            Role::Master => {
                self.fencing = None;
                let ended = crate::sshd::end_sync_sessions();
                if ended > 0 {
                    tracing::warn!(
                        "ended {ended} replication session process(es) of another host: this host is the master, and a master takes no replication"
                    );
                }
            }
            Role::Standby => {
                self.fence_users("this host is not the master, users may only read here")
            }
        }
    }

    /// At start: as [`Daemon::fence`], but on a standby only the managed
    /// users' sessions end (a crash in the middle of a role change could have
    /// left writable ones); nobody else's login in progress is cut.
    pub(super) fn fence_at_start(&mut self) {
        if self.live.role == Role::Master {
            self.fence();
            return;
        }
        let connections = crate::sshd::connection_pids();
        let ended = crate::sshd::end_user_sessions_of(&connections);
        if ended > 0 {
            tracing::info!(
                "ended {ended} user session process(es) from before this start: this host is a standby"
            );
        }
        self.start_fencing(connections);
    }

    /// Watches `connections` for [`FENCE_WINDOW`] and plans sshd's second
    /// reload (see [`FENCE_RELOAD_AGAIN`]); call once the read-only drop-in
    /// is written.
    pub(super) fn start_fencing(&mut self, connections: std::collections::HashSet<i32>) {
        let now = Instant::now();
        self.fencing = Some((now + FENCE_WINDOW, connections));
        self.fence_reload_at = Some(now + FENCE_RELOAD_AGAIN);
    }

    /// At start: a standby that stepped down and crashed before it listed
    /// what its standby never confirmed lists it now (its index on disk is
    /// what it was), before it publishes its role.
    pub(super) fn list_unconfirmed_if_missing(&self) {
        if self.live.role != Role::Standby
            || self.config.shared()
            || self.live.unreconciled.is_none()
            || self.control_dir().join(CHANGED_FILE).exists()
        {
            return;
        }
        match write_changed_list(&self.config, &mut self.walk_progress()) {
            Ok(n) => tracing::warn!(
                "listed {n} file(s) written here that the peer may never have received, for the new master's reconciliation"
            ),
            Err(err) => tracing::error!(
                "cannot list the files the peer never confirmed: {err}; the new master goes by size and mtime alone"
            ),
        }
    }

    /// Ends the users' sessions on the connections open now, and keeps doing
    /// so for [`FENCE_WINDOW`] (call after the read-only drop-in is loaded).
    fn fence_users(&mut self, why: &str) {
        let connections = crate::sshd::connection_pids();
        let ended = crate::sshd::end_user_sessions_of(&connections)
            + crate::sshd::end_logins_of(&connections);
        if ended > 0 {
            tracing::warn!("ended {ended} user session process(es): {why}");
        }
        self.start_fencing(connections);
    }

    /// Each loop while fencing: a login that completes on a connection that
    /// was open when this host stopped taking uploads is ended.
    pub(super) fn keep_fencing(&mut self) {
        // Each look walks /proc: a few times a second is soon enough (a
        // login needs longer than that to get to its first write), however
        // often the loop wakes for the SFTP log.
        if self
            .fence_looked
            .is_some_and(|t| t.elapsed() < FENCE_LOOK_EVERY)
        {
            return;
        }
        self.fence_looked = Some(Instant::now());
        // A standby whose read-only drop-in sshd refused: every managed
        // user's session is ended as it comes, and the drop-in tried again.
        let unfenced = self.gate.unfenced().is_some();
        if (self.live.role == Role::Standby && !self.sshd_ok) || unfenced {
            let ended = crate::sshd::end_user_sessions_of(&crate::sshd::connection_pids());
            if ended > 0 {
                tracing::error!(
                    "ended {ended} user session process(es): this host is a standby but sshd has not loaded the read-only drop-in (see sftp-ha status: sshd)"
                );
            }
            if self
                .sshd_retried
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                self.sshd_retried = Some(Instant::now());
                self.install_sshd();
            }
        }
        if self.fence_reload_at.is_some_and(|at| Instant::now() >= at) {
            self.fence_reload_at = None;
            // Only over a drop-in sshd took: where it refused the read-only
            // one (sshd_ok false, or the lease's fence refused), sshd is kept
            // running on purpose and must not be signalled into exiting.
            let refused = !self.sshd_ok || self.gate.unfenced().is_some();
            // Only when the fence's reload found an sshd restarting for
            // another one: every reload refuses connections for a moment.
            if !refused && crate::sshd::reload_may_be_lost() {
                match crate::sshd::reload_again() {
                    Ok(crate::sshd::Installed::Reloaded) => tracing::info!(
                        "sshd reloaded a second time after the fence, in case the first reload reached it while it restarted for another one"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(
                        "cannot reload sshd a second time after the fence: {err}; sessions of users logging in are still ended for {}",
                        crate::timefmt::format_duration(FENCE_WINDOW)
                    ),
                }
            }
        }
        let Some((until, connections)) = &self.fencing else {
            self.fence_kill_at = None;
            return;
        };
        if self.fence_kill_at.is_some_and(|at| Instant::now() >= at) {
            self.fence_kill_at = None;
            let killed = crate::sshd::kill_user_sessions_of(connections);
            if !killed.is_empty() {
                tracing::warn!(
                    "sent SIGKILL to {} user session process(es) still there after the lease ran out (pids {killed:?}): with shared storage none may write into the tree once the peer can take over",
                    killed.len()
                );
            }
        }
        if Instant::now() >= *until {
            self.fencing = None;
            return;
        }
        let ended = crate::sshd::end_user_sessions_of(connections);
        if ended > 0 {
            tracing::warn!(
                "ended {ended} user session process(es) that logged in on a connection opened while this host still took uploads"
            );
        }
    }

    /// Shows how far the master told this standby it is caught up
    /// (`position.json`), read again when the file changed.
    pub(super) fn check_position(&mut self) {
        let path = self.control_dir().join(POSITION_FILE);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && self.live.role == Role::Standby => m,
            _ => {
                self.status.caught_up = None;
                self.position_seen = None;
                return;
            }
        };
        let mark = (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size());
        if self.position_seen != Some(mark) {
            self.position_seen = Some(mark);
            // One from a master older than this host's epoch (one that
            // wrote it before it learnt it had been replaced) is not shown.
            self.status.caught_up = read_json::<Position>(&path)
                .ok()
                .filter(|p| p.epoch >= self.live.epoch);
        }
    }

    /// Reads the claim file if it changed, and acts on it.
    pub(super) fn check_claim(&mut self) {
        let path = self.control_dir().join(CLAIM_FILE);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            _ => return,
        };
        let mark = (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size());
        if self.claim_seen == Some(mark) {
            return;
        }
        self.claim_seen = Some(mark);
        let claim: Claim = match read_json(&path) {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot read the master's claim: {err}");
                return;
            }
        };
        self.status.peer = Some(PeerSeen {
            node: claim.node.clone(),
            role: Role::Master,
            epoch: claim.epoch,
            at: unix_now(),
            users: None,
        });
        match role::judge_claim(&self.live, &claim, unix_now()) {
            ClaimVerdict::Ignore => {}
            ClaimVerdict::Follow(live) => {
                let reconciled = self.live.unreconciled.is_some() && live.unreconciled.is_none();
                if self.persist(live) {
                    if reconciled {
                        let _ = fs::remove_file(self.control_dir().join(CHANGED_FILE));
                    }
                    self.publish_role();
                }
            }
            ClaimVerdict::TakeOver(live) => {
                if self.become_master(live) {
                    self.answer_pending(true, format!(
                        "switchover complete: this host is the master at epoch {}, {} is its standby",
                        self.live.epoch, claim.node
                    ));
                }
            }
            ClaimVerdict::Refuse { reason } => {
                tracing::error!("{reason}");
                let ended = crate::sshd::end_sync_sessions();
                tracing::warn!(
                    "ended {ended} replication session process(es) of the stale master {}",
                    claim.node
                );
                let _ = fs::remove_file(&path);
            }
            ClaimVerdict::StepDown(live) => self.become_standby(live),
        }
        // `demote` on the master: accepted by asking for the role, as
        // `promote` does, unless a request is under way here.
        let offered = claim.offer
            && self.live.role == Role::Standby
            && claim.epoch == self.live.epoch
            && self.pending.is_none();
        let unmounted = offered.then(|| self.shared_unmounted()).flatten();
        if let Some(why) = unmounted {
            if self.offer_refused_said != Some(claim.epoch) {
                self.offer_refused_said = Some(claim.epoch);
                tracing::error!(
                    "the master {} offers its role (sftp-ha demote): not accepted, {why}",
                    claim.node
                );
            }
        } else if offered {
            tracing::info!(
                "the master {} offers its role (sftp-ha demote): accepting",
                claim.node
            );
            self.wants_master = true;
            self.publish_role();
            self.pending = Some(Pending {
                id: String::from("(offered by the master)"),
                started: Instant::now(),
                stage: Stage::AwaitHandover,
            });
        }
        self.set_phase(self.status.phase);
    }

    /// What the replication worker learnt about the peer and the role.
    pub(super) fn check_sync_control(&mut self) {
        let Some(sync) = &self.sync else {
            return;
        };
        let Some((peer, step_down, asked, handed_over)) = sync.control(|c| {
            (
                c.peer.clone(),
                c.step_down.clone(),
                std::mem::take(&mut c.handover_asked),
                c.handed_over,
            )
        }) else {
            return;
        };
        if let Some(p) = peer {
            self.note_peer(p);
        }
        if let Some((epoch, reason)) = step_down {
            let live = role::step_down(&self.live, epoch, reason, unix_now());
            self.become_standby(live);
            self.answer_pending(
                false,
                "this host stepped down instead: a newer epoch was seen".into(),
            );
            return;
        }
        if let Some(to) = handed_over {
            let live = role::step_down(
                &self.live,
                to,
                "handed the role over to the standby (planned switchover)".into(),
                unix_now(),
            );
            self.become_standby(live);
            self.answer_pending(true, format!("switchover complete: the peer is the master at epoch {to}, this host is its standby"));
            return;
        }
        if asked {
            match self.pending.take() {
                // `demote`: the standby took the offer.
                Some(Pending {
                    id,
                    stage: Stage::AwaitAccept,
                    ..
                }) => {
                    if self.start_handover(id.clone()) {
                        self.progress(
                            &id,
                            "the standby accepted; users stopped, sending the last changes".into(),
                        );
                    } else {
                        self.answer(
                            &id,
                            false,
                            "the standby accepted, but sshd refused the read-only drop-in here; nothing changed (see `sftp-ha status`: sshd)".into(),
                        );
                    }
                }
                None => {
                    self.start_handover(String::from("(asked by the standby)"));
                }
                other => self.pending = other,
            }
        }
    }

    fn note_peer(&mut self, p: Published) {
        let users = p.users.clone();
        if let Some(u) = &users {
            let before = self.status.peer.as_ref().and_then(|b| b.users.as_ref());
            let news = before.is_none_or(|b| b.at != u.at || b.ok != u.ok);
            if news && !u.ok {
                tracing::warn!(
                    "the standby {} did NOT follow the last users.yaml: {}; after a failover its accounts would differ from this host's",
                    p.node,
                    u.summary
                );
                // The admins read the outcome next to their file.
                crate::accounts::note_status(
                    &self.config.data_dir,
                    crate::accounts::Note::Standby,
                    Some(&format!(
                        "the standby {} did NOT follow this users.yaml ({}): {}. After a failover its accounts would differ from these; fix it on the standby (journalctl -u sftp-ha there), then upload users.yaml again.",
                        p.node,
                        crate::timefmt::format_utc(u.at),
                        u.summary
                    )),
                );
            } else if news && before.is_some_and(|b| !b.ok) {
                tracing::info!(
                    "the standby {} follows the users.yaml again: {}",
                    p.node,
                    u.summary
                );
                crate::accounts::note_status(
                    &self.config.data_dir,
                    crate::accounts::Note::Standby,
                    None,
                );
            }
        }
        let seen = PeerSeen {
            node: p.node,
            role: p.role,
            epoch: p.epoch,
            at: unix_now(),
            users,
        };
        let news = self.status.peer.as_ref().is_none_or(|b| {
            (&b.node, b.role, b.epoch, &b.users) != (&seen.node, seen.role, seen.epoch, &seen.users)
        });
        self.status.peer = Some(seen);
        if news {
            self.set_phase(self.status.phase);
        }
    }

    /// A master stops its users and lets the worker send the rest, then hand over.
    fn start_handover(&mut self, id: String) -> bool {
        let connected = self.sync.as_ref().is_some_and(|s| s.handover_connected());
        if !connected {
            return false;
        }
        // Users first: a handover with writable users would lose what they write.
        if !self.install_sshd_for(Role::Standby) {
            tracing::error!(
                "cannot hand the role over: sshd refused the read-only drop-in; this host stays the master"
            );
            self.install_sshd();
            return false;
        }
        tracing::warn!(
            "handing the role over: users' sessions end, new ones are read-only, the last changes go to the standby"
        );
        self.fence_users("handing the role over");
        // With shared storage the worker hands over only once these
        // connections' user sessions are gone.
        let fenced = self
            .fencing
            .as_ref()
            .map(|(_, connections)| connections.clone())
            .unwrap_or_default();
        if let Some(sync) = &self.sync {
            sync.control(|c| {
                c.hand_over = true;
                c.fenced = fenced;
                c.writers_left = 0;
            });
        }
        self.pending = Some(Pending {
            id,
            started: Instant::now(),
            stage: Stage::AwaitHandedOver,
        });
        true
    }

    /// SIGUSR1: reads the request `sftp-ha promote` / `demote` left.
    pub(super) fn on_command(&mut self) {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.runtime_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(REQUEST_PREFIX) && n.ends_with(".json"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        if files.is_empty() {
            tracing::warn!(path = %self.runtime_dir.display(), "SIGUSR1 without a request");
        }
        for path in files {
            let request = read_json::<CommandRequest>(&path);
            let _ = fs::remove_file(&path);
            match request {
                Ok(r) => self.carry_out(r),
                Err(err) => tracing::warn!(path = %path.display(), "an unreadable request: {err}"),
            }
        }
    }

    fn carry_out(&mut self, request: CommandRequest) {
        if let Some(p) = &self.pending {
            let busy = p.id.clone();
            self.answer(
                &request.id,
                false,
                format!("another request ({busy}) is under way; try again when it is done"),
            );
            return;
        }
        tracing::info!(
            "sftp-ha {:?} requested{}",
            request.action,
            if request.force { " with --force" } else { "" }
        );
        match (request.action, self.live.role) {
            (Action::Promote, Role::Master) => self.answer(
                &request.id,
                true,
                format!(
                    "already the master at epoch {}; nothing to do",
                    self.live.epoch
                ),
            ),
            (Action::Demote, Role::Standby) => self.answer(
                &request.id,
                true,
                format!(
                    "already a standby at epoch {}; nothing to do",
                    self.live.epoch
                ),
            ),
            (Action::Promote, Role::Standby) => {
                // Shared storage: a host whose shared data dir is not
                // mounted would take uploads onto its local disk.
                if let Some(why) = self.shared_unmounted() {
                    self.answer(
                        &request.id,
                        false,
                        format!("this host cannot become the master; nothing changed. {why}"),
                    );
                    return;
                }
                let probe = self.probe_peer();
                self.pending = Some(Pending {
                    id: request.id.clone(),
                    started: Instant::now(),
                    stage: Stage::Probing {
                        probe,
                        force: request.force,
                    },
                });
                self.progress(&request.id, "asking the master".into());
            }
            (Action::Demote, Role::Master) => {
                let offered = self.sync.as_ref().is_some_and(|s| {
                    s.snapshot().connected && s.control(|c| c.offer = true).is_some()
                });
                if offered {
                    self.pending = Some(Pending {
                        id: request.id.clone(),
                        started: Instant::now(),
                        stage: Stage::AwaitAccept,
                    });
                    self.progress(
                        &request.id,
                        "offered the role to the standby; waiting for it to accept".into(),
                    );
                } else {
                    self.answer(
                        &request.id,
                        false,
                        "no standby is connected to hand the role to; nothing changed (see `sftp-ha status`: sync)".into(),
                    );
                }
            }
        }
    }

    /// Moves a request under way on; called every loop.
    pub(super) fn advance_request(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match pending.stage {
            Stage::Probing { probe, force } if probe.is_finished() => {
                let answer = probe
                    .join()
                    .unwrap_or_else(|_| PeerAnswer::Unreachable("the probe failed".into()));
                let id = pending.id;
                match role::judge_promote(
                    &self.live,
                    &answer,
                    force,
                    self.config.shared(),
                    unix_now(),
                ) {
                    PromoteVerdict::AlreadyMaster => {
                        self.answer(&id, true, "already the master".into())
                    }
                    PromoteVerdict::Refuse(why) => self.answer(&id, false, why),
                    // The master is gone and other standbys are listed:
                    // the most caught-up one is to be promoted.
                    PromoteVerdict::Failover(live)
                        if matches!(answer, PeerAnswer::Unreachable(_))
                            && !force
                            && !self.config.shared()
                            && self.config.sync.standbys.len() > 1 =>
                    {
                        self.progress(
                            &id,
                            "the master does not answer; asking the other standbys how far they are caught up".into(),
                        );
                        let (answers, asked) = self.probe_other_standbys();
                        self.pending = Some(Pending {
                            id,
                            started: Instant::now(),
                            stage: Stage::Comparing {
                                answers,
                                asked,
                                got: Vec::new(),
                                live,
                                epoch: self.live.epoch,
                                claim: self.claim_seen,
                            },
                        });
                    }
                    PromoteVerdict::Failover(live) => self.fail_over(&id, live, None),
                    PromoteVerdict::AskHandover => {
                        self.wants_master = true;
                        self.publish_role();
                        self.progress(
                            &id,
                            "the master answers; asking it to hand over (planned switchover)"
                                .into(),
                        );
                        self.pending = Some(Pending {
                            id,
                            started: Instant::now(),
                            stage: Stage::AwaitHandover,
                        });
                    }
                }
            }
            Stage::Comparing {
                answers,
                asked,
                mut got,
                live,
                epoch,
                claim,
            } => {
                got.extend(answers.try_iter());
                let late = pending.started.elapsed() >= COMPARE_PATIENCE;
                if got.len() < asked.len() && !late {
                    self.pending = Some(Pending {
                        stage: Stage::Comparing {
                            answers,
                            asked,
                            got,
                            live,
                            epoch,
                            claim,
                        },
                        ..pending
                    });
                    return;
                }
                for name in asked {
                    if !got.iter().any(|(n, _)| *n == name) {
                        let why = format!("no answer within {} s", COMPARE_PATIENCE.as_secs());
                        got.push((name, OtherStandby::Unreachable(why)));
                    }
                }
                let id = pending.id;
                if self.live.role != Role::Standby || self.live.epoch != epoch {
                    self.answer(
                        &id,
                        false,
                        format!(
                            "this host's role changed while the other standbys were asked (it is {} at epoch {} now); nothing else changed: see `sftp-ha status`",
                            self.live.role, self.live.epoch
                        ),
                    );
                    return;
                }
                if self.claim_seen != claim {
                    self.answer(
                        &id,
                        false,
                        "the master wrote its claim here while the other standbys were asked: it is back; nothing changed. Run sftp-ha promote again (it asks the master to hand over)".into(),
                    );
                    return;
                }
                let mine = read_json::<Position>(&self.control_dir().join(POSITION_FILE)).ok();
                match role::judge_among_standbys(&self.live, &self.node, mine.as_ref(), &got) {
                    Ok(compared) => self.fail_over(&id, live, Some(compared)),
                    Err(why) => {
                        tracing::warn!("promote refused: {why}");
                        self.answer(&id, false, why);
                    }
                }
            }
            Stage::AwaitAccept if pending.started.elapsed() >= ACCEPT_PATIENCE => {
                self.answer(
                    &pending.id,
                    false,
                    format!(
                        "the standby did not accept the role within {} s (is sftp-ha running there?); nothing changed",
                        ACCEPT_PATIENCE.as_secs()
                    ),
                );
            }
            // Master already by another path: in automatic mode the old
            // master releases its lease as it hands over, and the failover
            // thread may take over with the witness before the handover's
            // claim is read here. The switchover is done either way.
            Stage::AwaitHandover if self.live.role == Role::Master => {
                self.wants_master = false;
                self.publish_role();
                self.answer(
                    &pending.id,
                    true,
                    format!(
                        "switchover complete: this host is the master at epoch {} ({})",
                        self.live.epoch, self.live.reason
                    ),
                );
            }
            Stage::AwaitHandover if pending.started.elapsed() >= PROMOTE_PATIENCE => {
                self.wants_master = false;
                self.publish_role();
                let then = if self.config.shared() {
                    "both hosts then take uploads into the one shared tree until they meet again, and nothing sorts those out afterwards: stop the master's sftp-ha and fence its sshd first"
                } else {
                    "both hosts then take uploads until they meet again; then the one with the older epoch reconciles and follows"
                };
                self.answer(
                    &pending.id,
                    false,
                    format!(
                        "the master answered but did not hand over within {} s; nothing changed here. If it is unhealthy, `sftp-ha promote --force` takes over anyway ({then})",
                        PROMOTE_PATIENCE.as_secs()
                    ),
                );
            }
            Stage::AwaitHandedOver
                if pending.started.elapsed() >= HANDOVER_PATIENCE
                    && self.sync.as_ref().is_none_or(|sync| {
                        // Called off only if the worker is not writing it.
                        sync.control(|c| {
                            let off = !c.writing_handover && c.handed_over.is_none();
                            if off {
                                c.hand_over = false;
                            }
                            off
                        })
                        .unwrap_or(true)
                    }) =>
            {
                let writers_left = self
                    .sync
                    .as_ref()
                    .and_then(|sync| sync.control(|c| c.writers_left))
                    .unwrap_or(0);
                // Users may write again.
                self.fencing = None;
                self.install_sshd();
                tracing::error!(
                    "the handover did not complete in time; this host stays the master"
                );
                let message = if writers_left > 0 {
                    format!(
                        "{writers_left} user session process(es) were still there {} s after SIGTERM and SIGKILL (stuck in I/O on the shared storage?), and the standby must not take uploads while one may still write; this host stays the master and users may write again (see journalctl -u sftp-ha; check the storage)",
                        HANDOVER_PATIENCE.as_secs()
                    )
                } else {
                    format!(
                        "the last changes did not reach the standby within {} s; this host stays the master and users may write again (see `sftp-ha status`: sync)",
                        HANDOVER_PATIENCE.as_secs()
                    )
                };
                self.answer(&pending.id, false, message);
            }
            stage => {
                self.pending = Some(Pending {
                    id: pending.id,
                    started: pending.started,
                    stage,
                });
            }
        }
    }

    /// Becomes the master as `live` (a failover) and answers the request.
    fn fail_over(&mut self, id: &str, live: Live, compared: Option<String>) {
        let epoch = live.epoch;
        let reason = live.reason.clone();
        if self.become_master(live) {
            let compared = compared.map_or(String::new(), |c| format!("; compared: {c}"));
            self.answer(
                id,
                true,
                format!("this host is the master at epoch {epoch}: {reason}{compared}"),
            );
        } else {
            self.answer(
                id,
                false,
                "cannot become master: see journalctl -u sftp-ha".into(),
            );
        }
    }

    /// Asks every other standby of `[sync] peer` (all but the first, the
    /// master) for its role and how far it is caught up, each on a thread of
    /// its own; the answers come on the channel, one per name returned.
    fn probe_other_standbys(
        &self,
    ) -> (
        std::sync::mpsc::Receiver<(String, OtherStandby)>,
        Vec<String>,
    ) {
        let (tell, answers) = std::sync::mpsc::channel();
        let mut asked = Vec::new();
        for (position, endpoint) in self.config.sync.standbys.iter().enumerate().skip(1) {
            let state = self.config.state_dir.clone();
            let endpoint = endpoint.clone();
            let tell = tell.clone();
            asked.push(endpoint.to_string());
            std::thread::spawn(move || {
                let pinned = crate::pair::pinned_host_key_of(&state, position, &endpoint);
                let answer =
                    ask_other_standby(&endpoint, pinned.as_deref(), &crate::pair::key_path(&state));
                // The request may have been given up on: nobody listens then.
                let _ = tell.send((endpoint.to_string(), answer));
            });
        }
        (answers, asked)
    }

    /// Connects to the peer as the sync account and reads its role, on a thread.
    fn probe_peer(&self) -> JoinHandle<PeerAnswer> {
        let peer = self.config.sync.peer.clone();
        let state = self.config.state_dir.clone();
        let shared = self.config.shared();
        std::thread::spawn(move || {
            // Nobody to ask is not "nobody there": the master may be up.
            let Some(peer) = peer else {
                return PeerAnswer::Unasked(
                    "no [sync] peer is set in config.toml; set peer = \"HOST\" (the master) under [sync]".into(),
                );
            };
            let pinned = crate::pair::pinned_host_key(&state);
            let key = crate::pair::key_path(&state);
            // Three tries a second apart: sshd refuses connections for a
            // moment while it reloads, which is no sign the master is down.
            let mut tries = 0;
            let mut session = loop {
                tries += 1;
                match crate::sync::transport::Standby::connect(&peer, pinned.as_deref(), &key) {
                    Ok(s) => break s,
                    // Only "nobody there" counts as down: a pairing problem
                    // says nothing about whether the master still takes uploads.
                    Err(err @ crate::sync::transport::TransportError::Connect { .. }) => {
                        if tries >= 3 {
                            return PeerAnswer::Unreachable(err.to_string());
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(err) => return PeerAnswer::Unasked(err.to_string()),
                }
            };
            let path = format!("/{CONTROL_DIR}/{ROLE_FILE}");
            match session.sftp.read_all(path.as_bytes(), 64 * 1024) {
                Ok(bytes) => match serde_json::from_slice::<Published>(&bytes) {
                    // It answers, so it may be taking uploads; but it would
                    // never hand over to a host that stores files otherwise.
                    Ok(p) => match role::storage_mismatch(shared, &p) {
                        Some(why) => PeerAnswer::Unasked(format!("{peer} answered, but {why}")),
                        None => PeerAnswer::Answered(p),
                    },
                    Err(e) => {
                        PeerAnswer::Unasked(format!("{peer} answered with an unreadable role: {e}"))
                    }
                },
                Err(e) => {
                    PeerAnswer::Unasked(format!("{peer} answered but its role cannot be read: {e}"))
                }
            }
        })
    }

    /// In automatic failover the lease can tell a master that the peer took
    /// over before the worker reads the handover's completion: a `demote`
    /// (or the handover a `promote` asked for) under way is done, not failed.
    pub(super) fn handover_done_by_newer_master(&mut self, epoch: u64, master: &str) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| matches!(p.stage, Stage::AwaitHandedOver | Stage::AwaitAccept))
        {
            self.answer_pending(
                true,
                format!("switchover complete: {master} is the master at epoch {epoch}, this host is its standby"),
            );
        }
    }

    fn answer_pending(&mut self, ok: bool, message: String) {
        if let Some(p) = self.pending.take() {
            self.answer(&p.id, ok, message);
        }
    }

    fn progress(&mut self, id: &str, message: String) {
        self.record_answer(RequestOutcome {
            id: id.to_string(),
            done: false,
            ok: true,
            message,
        });
    }

    /// The answer goes to the status (the last one shown, a few kept for
    /// the commands waiting on them).
    fn record_answer(&mut self, outcome: RequestOutcome) {
        let answers = &mut self.status.answers;
        answers.retain(|a| a.id != outcome.id);
        answers.push(outcome.clone());
        if answers.len() > ANSWERS_KEPT {
            answers.remove(0);
        }
        self.status.last_request = Some(outcome);
        self.set_phase(self.status.phase);
    }

    fn answer(&mut self, id: &str, ok: bool, message: String) {
        if ok {
            tracing::info!("request done: {message}");
        } else {
            tracing::error!("request failed: {message}");
        }
        self.record_answer(RequestOutcome {
            id: id.to_string(),
            done: true,
            ok,
            message,
        });
    }
}

/// On a master that steps down: lists in the control folder the files it
/// wrote that its standby never confirmed, ctime included (see
/// [`CHANGED_FILE`] and `reconcile::unconfirmed_files`). Returns how many.
/// With shared storage there is nothing to list: the new master has the
/// same files.
fn write_changed_list(
    config: &crate::config::Config,
    progress: &mut dyn FnMut(),
) -> io::Result<usize> {
    use crate::sync::tree;
    if config.shared() {
        return Ok(0);
    }
    let (current, _) = tree::scan(&config.data_dir, &mut |_| progress())?;
    // With several standbys, the next master may be any of them: a file
    // any of them has not confirmed (one never reached: all) counts as
    // changed here.
    let files = crate::sync::unconfirmed_by_any(&config.state_dir, &config.sync.standbys, &current);
    let dir = config.sync_root().join(CONTROL_DIR);
    prepare_control_dir(&dir)?;
    let text = crate::sync::reconcile::changed_list_text(&files);
    crate::fsutil::write_atomic(
        &dir.join(CHANGED_FILE),
        text.as_bytes(),
        0o600,
        Some((0, 0)),
    )?;
    Ok(files.len())
}

/// Saves the tree as it is now as the baseline: the last point both hosts
/// agreed on, for the reconciliation when the other one rejoins. With shared
/// storage there is no reconciliation, so no baseline (and none left over).
fn save_baseline(
    config: &crate::config::Config,
    progress: &mut dyn FnMut(),
) -> Result<(), role::RoleError> {
    let path = config.state_dir.join(BASELINE_FILE);
    if config.shared() {
        let _ = fs::remove_file(&path);
        return Ok(());
    }
    let fail = |source: io::Error| role::RoleError::Write {
        path: path.clone(),
        source,
    };
    let (tree, _) = crate::sync::tree::scan(&config.data_dir, &mut |_| progress()).map_err(fail)?;
    crate::sync::reconcile::save_baseline(&path, &tree).map_err(fail)
}

/// Keeps systemd's watchdog fed while the main loop walks the whole data
/// dir for a role change (the baseline, the list of unconfirmed files): a
/// million files take seconds, far longer from a cold cache, and the loop
/// makes no turn meanwhile. Called for every folder listed, it pings at most
/// once a second, itself or, where the failover thread feeds the watchdog,
/// through the loop's `main_alive` mark; a walk stuck in one system call
/// (a hung NFS server) pings nothing, and systemd kills and fences as for a
/// stalled daemon.
pub(super) struct WalkProgress<'a> {
    notifier: Option<&'a super::notify::Notifier>,
    main_alive: Option<&'a std::sync::atomic::AtomicU64>,
    last: Instant,
}

impl<'a> WalkProgress<'a> {
    pub(super) fn new(
        notifier: Option<&'a super::notify::Notifier>,
        main_alive: Option<&'a std::sync::atomic::AtomicU64>,
    ) -> WalkProgress<'a> {
        WalkProgress {
            notifier,
            main_alive,
            last: Instant::now(),
        }
    }

    pub(super) fn tick(&mut self) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        if let Some(alive) = self.main_alive {
            alive.store(
                crate::timefmt::unix_now_ms(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if let Some(notifier) = self.notifier {
            notifier.watchdog();
        }
    }
}

impl Daemon {
    /// The progress callback for a walk in the main loop (see [`WalkProgress`]).
    fn walk_progress(&self) -> impl FnMut() + '_ {
        let thread_feeds = self.failover.as_ref().is_some_and(|f| f.feeds_watchdog);
        let mut progress = WalkProgress::new(
            (!thread_feeds).then_some(&self.notifier),
            Some(&*self.main_alive),
        );
        move || progress.tick()
    }
}

/// A small JSON file of ours (root's, in a root-only folder).
/// Another standby's role and position, read over its sync account. Only
/// "nobody there" counts as unreachable; a host that answers but cannot be
/// asked may be further caught up, or a master.
fn ask_other_standby(
    endpoint: &crate::config::Endpoint,
    pinned: Option<&str>,
    key: &Path,
) -> OtherStandby {
    use crate::sync::transport::{Standby, TransportError};
    let mut session = match Standby::connect(endpoint, pinned, key) {
        Ok(s) => s,
        Err(err @ TransportError::Connect { .. }) => {
            return OtherStandby::Unreachable(err.to_string());
        }
        Err(err) => return OtherStandby::Unasked(err.to_string()),
    };
    let mut read = |name: &str| {
        session
            .sftp
            .read_all(format!("/{CONTROL_DIR}/{name}").as_bytes(), 64 * 1024)
    };
    let role = match read(ROLE_FILE).map(|bytes| serde_json::from_slice::<Published>(&bytes)) {
        Ok(Ok(role)) => role,
        Ok(Err(e)) => return OtherStandby::Unasked(format!("an unreadable role: {e}")),
        Err(e) => return OtherStandby::Unasked(format!("its role cannot be read: {e}")),
    };
    let position = match read(POSITION_FILE) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => return OtherStandby::Unasked(format!("an unreadable position: {e}")),
        },
        // None written yet: nothing confirmed by a master.
        Err(e) if e.is_no_such_file() => None,
        Err(e) => return OtherStandby::Unasked(format!("its position cannot be read: {e}")),
    };
    OtherStandby::Answered { role, position }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The control folder: root's, 0700, a real folder (never a link).
fn prepare_control_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} exists but is not a folder",
                dir.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(dir)?,
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_in_progress_marks_the_main_loop_alive_at_most_once_a_second() {
        let alive = std::sync::atomic::AtomicU64::new(0);
        let mut progress = WalkProgress::new(None, Some(&alive));
        progress.tick();
        assert_eq!(
            alive.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "not yet"
        );
        progress.last -= Duration::from_secs(1);
        progress.tick();
        let marked = alive.load(std::sync::atomic::Ordering::Relaxed);
        assert!(marked + 5_000 > crate::timefmt::unix_now_ms(), "{marked}");
    }

    #[test]
    fn the_baseline_walk_reports_progress_for_every_folder() {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        for dir in ["a", "a/b", "c"] {
            fs::create_dir(data.path().join(dir)).unwrap();
        }
        let text = format!(
            "role = \"master\"\ndata_dir = \"{}\"\nstate_dir = \"{}\"\n",
            data.path().display(),
            state.path().display()
        );
        let config = crate::config::parse(&text, Path::new("config.toml")).unwrap();
        let mut folders = 0;
        save_baseline(&config, &mut || folders += 1).unwrap();
        assert_eq!(folders, 4, "the data dir and its three folders");
        assert!(state.path().join(BASELINE_FILE).exists());
    }
}
