//! The daemon's lifecycle: load the config, do the start-up work, tell systemd
//! it is ready, then run one single-threaded main loop that handles signals and
//! pings the watchdog, and nothing else, so that a ping really means "healthy".

mod failover;
mod notify;
mod roles;
mod witness;

pub use roles::{Action, CommandRequest, REQUEST_PREFIX};
mod sftp_log;
mod signals;
mod users_watch;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::{self, Config, ConfigError, Role};
use crate::exit::Exit;
use crate::logging::LogHandle;
use crate::status::{self, DaemonStatus, Phase, ReloadOutcome};
use crate::timefmt::{format_duration, unix_now};

use notify::Notifier;
use sftp_log::SftpLog;
use signals::{Request, Signals};
use users_watch::UsersWatch;

/// The longest the main loop sleeps, so it notices a stop request promptly even
/// when no watchdog is configured.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot create {what} {path}: {source}; fix: check that the parent folder exists and is writable by root"
    )]
    CreateDir {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{what} {path} exists but is not a folder; fix: move it away or point the config elsewhere"
    )]
    NotADir { what: &'static str, path: PathBuf },
    #[error(transparent)]
    Role(#[from] crate::role::RoleError),
    /// Shared storage whose data dir is not mounted.
    #[error("{0}")]
    NotMounted(String),
    #[error("the witness cannot start: {0}")]
    Witness(String),
    #[error("cannot set up {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

impl DaemonError {
    pub fn exit(&self) -> Exit {
        match self {
            DaemonError::Config(_) => Exit::Config,
            DaemonError::CreateDir { .. } | DaemonError::NotADir { .. } => Exit::CantCreate,
            DaemonError::Os { .. } | DaemonError::Witness(_) => Exit::OsError,
            // Not a config error: systemd tries again (the mount may come).
            DaemonError::Role(_) | DaemonError::NotMounted(_) => Exit::Failure,
        }
    }
}

struct Daemon {
    config: Config,
    notifier: Notifier,
    log: LogHandle,
    runtime_dir: PathBuf,
    /// What the daemon does, in words; `status.activity` adds warnings to it.
    activity: String,
    status: DaemonStatus,
    users: UsersWatch,
    /// Receives internal-sftp's log from the chroots; `None` if it could not be set up.
    sftp_log: Option<SftpLog>,
    /// The replication worker, on a master with a standby.
    sync: Option<crate::sync::SyncHandle>,
    /// On a standby: when stale temporaries were last cleaned up.
    last_cleanup: Option<Instant>,
    /// Prometheus metrics (textfile and/or HTTP); `None` when both are off.
    metrics: Option<crate::metrics::Metrics>,
    /// The live role (see [`crate::role`]); `config.role` only seeds it.
    live: crate::role::Live,
    /// This host's name, as the peer sees it.
    node: String,
    /// The claim file as last judged.
    claim_seen: Option<roles::ClaimMark>,
    /// The same for the position file (see [`Daemon::check_position`]).
    position_seen: Option<roles::ClaimMark>,
    /// A `promote` / `demote` under way.
    pending: Option<roles::Pending>,
    /// Until when, and against which connections, users' sessions are ended
    /// after this host stopped taking uploads (see [`roles::FENCE_WINDOW`]).
    fencing: Option<(Instant, std::collections::HashSet<i32>)>,
    /// When [`Daemon::keep_fencing`] last looked.
    fence_looked: Option<Instant>,
    /// When sshd is told once more to read its config, after a fence (see
    /// [`roles::FENCE_RELOAD_AGAIN`]).
    fence_reload_at: Option<Instant>,
    /// With shared storage, when the lease ran out: when the users' session
    /// processes the failover thread sent SIGTERM and that are still there
    /// get SIGKILL (half the fence margin later: before the peer can take
    /// over, none of them may still write into the shared tree).
    fence_kill_at: Option<Instant>,
    /// The epoch whose offered role (`demote` on the master) this host
    /// said it refuses, its shared data dir not being mounted: said once.
    offer_refused_said: Option<u64>,
    /// The published role asks the master to hand over (`promote`).
    wants_master: bool,
    /// sshd has the drop-in of the current role loaded.
    sshd_ok: bool,
    /// When the drop-in was last tried again after a failure.
    sshd_retried: Option<Instant>,
    /// Decides which drop-in sshd gets (the lease, in automatic failover).
    gate: std::sync::Arc<crate::failover::driver::Gate>,
    /// The failover thread: with `[failover] mode = "auto"`, or "manual"
    /// with a witness (it then only tells the others so).
    failover: Option<crate::failover::driver::Failover>,
    /// When the failover part of the status was last copied.
    failover_copied: Option<Instant>,
    /// Unix ms of the main loop's last turn, for the failover thread, which
    /// feeds systemd's watchdog in automatic failover.
    main_alive: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where the virtual IP goes, for the fence after a crash.
    fence_interface: Option<String>,
}

/// Runs the daemon until SIGTERM/SIGINT. `log` is already set up; its level follows the config.
pub fn run(config_path: &Path, log: LogHandle) -> Result<(), DaemonError> {
    // Before anything else (and before any thread exists): signals become events.
    let mut signals = Signals::install().map_err(|source| DaemonError::Os {
        what: "signal handling",
        source,
    })?;
    // Also before any thread: see memory::configure.
    crate::sync::memory::configure();
    let notifier = Notifier::from_env();
    notifier.status(&format!("loading {}", config_path.display()));

    let config = config::load(config_path)?;
    log.set_level(config.log_level);
    if config.host == config::HostKind::Witness {
        return witness::run(config, log, notifier, &mut signals);
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        role = %config.role,
        config = %config.path.display(),
        "sftp-ha {} starting: {}",
        env!("CARGO_PKG_VERSION"),
        config.summary()
    );

    prepare_dirs(&config)?;
    // Before the failover thread: the watchdog is this thread's to feed.
    let mut progress = roles::WalkProgress::new(Some(&notifier), None);
    let live = Daemon::load_live(&config, &mut || progress.tick())?;
    tracing::info!(
        "live role: {} at epoch {} since {} ({})",
        live.role,
        live.epoch,
        crate::timefmt::format_utc(live.since),
        live.reason
    );

    let now = unix_now();
    let mut daemon = Daemon {
        status: DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            role: live.role,
            phase: Phase::Starting,
            activity: String::new(),
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
            epoch: live.epoch,
            role_since: live.since,
            role_reason: live.reason.clone(),
            node: String::new(),
            peer: None,
            caught_up: None,
            last_request: None,
            answers: Vec::new(),
            failover: None,
            witness: false,
        },
        users: UsersWatch::new(
            &config.data_dir,
            config.hash_method,
            live.role,
            config.shared(),
        )
        .map_err(|e| DaemonError::Os {
            what: "inotify for the admin folders",
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?,
        config,
        notifier,
        log,
        runtime_dir: status::runtime_dir(),
        activity: String::new(),
        sftp_log: None,
        sync: None,
        last_cleanup: None,
        metrics: None,
        live,
        node: crate::role::node_name(),
        claim_seen: None,
        position_seen: None,
        pending: None,
        fencing: None,
        fence_reload_at: None,
        fence_kill_at: None,
        offer_refused_said: None,
        fence_looked: None,
        wants_master: false,
        sshd_ok: false,
        sshd_retried: None,
        gate: crate::failover::driver::Gate::new(false),
        failover: None,
        failover_copied: None,
        main_alive: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            crate::timefmt::unix_now_ms(),
        )),
        fence_interface: None,
    };
    daemon.start_failover();
    daemon.refresh_config_fields();
    daemon.install_sshd();
    // One writer at a time: on a master, a former master's replication
    // sessions; on a standby, users' sessions from before a crash mid-switch.
    daemon.fence_at_start();
    daemon.forget_claim_if_master();
    daemon.list_unconfirmed_if_missing();
    daemon.publish_role();
    daemon.bind_sftp_log();
    daemon.users.startup();
    daemon.start_sync();
    daemon.start_metrics();
    daemon.set_phase(Phase::Running);
    daemon.notifier.ready(&daemon.status.activity);
    tracing::info!("ready: {}", daemon.status.activity);

    daemon.main_loop(&mut signals)?;

    daemon.set_phase(Phase::Stopping);
    daemon.notifier.stopping("stopping");
    if let Some(failover) = daemon.failover.take() {
        failover.stop();
    }
    if let Some(sync) = daemon.sync.take() {
        sync.stop(Duration::from_secs(3));
    }
    if let Some(metrics) = daemon.metrics.take() {
        metrics.stop(false);
    }
    tracing::info!("stopped");
    status::remove(&daemon.runtime_dir);
    Ok(())
}

impl Daemon {
    fn main_loop(&mut self, signals: &mut Signals) -> Result<(), DaemonError> {
        let tick = self
            .notifier
            .watchdog_interval()
            .map_or(MAX_TICK, |w| w.min(MAX_TICK));
        let mut last_ping = Instant::now();
        self.notifier.watchdog();
        loop {
            let mut wait = tick.saturating_sub(last_ping.elapsed());
            wait = wait.min(
                self.users
                    .deadline()
                    .saturating_duration_since(Instant::now()),
            );
            if let Some(due) = self.sftp_log.as_ref().and_then(SftpLog::deadline) {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            let mut fds = vec![
                PollFd::new(signals.fd(), PollFlags::POLLIN),
                PollFd::new(self.users.fd(), PollFlags::POLLIN),
            ];
            let log_index = fds.len();
            if let Some(log) = &self.sftp_log {
                fds.push(PollFd::new(log.fd(), PollFlags::POLLIN));
            }
            let failover_index = fds.len();
            if let Some(failover) = &self.failover {
                fds.push(PollFd::new(failover.wake_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(source) => {
                    return Err(DaemonError::Os {
                        what: "the main loop (poll)",
                        source,
                    });
                }
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .is_some_and(|r| r.contains(PollFlags::POLLIN))
            };
            let users_ready = ready(1);
            let log_ready = self.sftp_log.is_some() && ready(log_index);
            let failover_ready = self.failover.is_some() && ready(failover_index);
            drop(fds);
            if failover_ready || self.failover.is_some() {
                self.on_failover_events();
            }
            if log_ready && let Some(log) = &mut self.sftp_log {
                log.drain();
            }
            if let Some(log) = &mut self.sftp_log {
                log.flush_due();
            }
            if users_ready {
                self.users.on_readable();
            }
            if let Some(report) = self.users.run_due() {
                self.record_users(&report);
                self.set_phase(Phase::Running);
                self.notifier.status(&self.status.activity);
            }
            self.refresh_sync_status();
            if let Some(metrics) = &mut self.metrics {
                metrics.tick();
            }
            self.clean_up_temporaries();
            self.check_claim();
            self.check_position();
            self.keep_fencing();
            self.check_sync_control();
            self.advance_request();
            let link = self.links_sftp_log();
            if std::mem::take(&mut self.users.rewatched)
                && let Some(log) = &mut self.sftp_log
            {
                log.link_chroots(&self.config.data_dir, link);
            }
            while let Some(request) = signals.next().map_err(|source| DaemonError::Os {
                what: "signal handling (read)",
                source,
            })? {
                match request {
                    Request::Stop => {
                        tracing::info!("stop requested");
                        return Ok(());
                    }
                    Request::Reload => self.reload(),
                    Request::Command => self.on_command(),
                }
            }
            self.main_alive.store(
                crate::timefmt::unix_now_ms(),
                std::sync::atomic::Ordering::Relaxed,
            );
            // With the failover thread, it feeds the watchdog (and checks this loop's turns).
            if last_ping.elapsed() >= tick {
                if self.failover.as_ref().is_none_or(|f| !f.feeds_watchdog) {
                    self.notifier.watchdog();
                }
                last_ping = Instant::now();
            }
        }
    }

    /// SIGHUP: read the config again; a broken one is refused and the old one kept.
    fn reload(&mut self) {
        let path = self.config.path.clone();
        self.set_phase(Phase::Reloading);
        self.notifier
            .reloading(&format!("reloading {}", path.display()));
        let outcome = match config::load(&path).map_err(|e| e.to_string()).inspect(|new| {
            if new.role != self.live.role {
                tracing::info!(
                    "{}: role = \"{}\" only applies on the very first start; this host stays {} at epoch {} (sftp-ha promote / demote change the live role)",
                    path.display(),
                    new.role,
                    self.live.role,
                    self.live.epoch
                );
            }
        }) {
            // Where the control folder is, what sshd's sync account sees and
            // whether anything is copied all follow the storage mode.
            Ok(new) if new.sync.storage != self.config.sync.storage => self.refused(format!(
                "[sync] storage changed from \"{}\" to \"{}\": that takes a restart (systemctl restart sftp-ha), on both hosts",
                self.config.sync.storage, new.sync.storage
            )),
            // The failover thread fences with the data dir it started with.
            Ok(new)
                if self.config.failover.mode == config::FailoverMode::Auto
                    && new.data_dir != self.config.data_dir =>
            {
                self.refused(format!(
                    "data_dir changed from {} to {}: with automatic failover that takes a restart (systemctl restart sftp-ha), so that the fence and the drop-in agree",
                    self.config.data_dir.display(),
                    new.data_dir.display()
                ))
            }
            Ok(new) => match prepare_dirs(&new) {
                Ok(()) => {
                    for warning in new.warnings() {
                        tracing::warn!("{warning}");
                    }
                    self.log.set_level(new.log_level);
                    let message = if new == self.config {
                        "no change".to_string()
                    } else {
                        new.summary()
                    };
                    tracing::info!(config = %path.display(), "config reloaded: {message}");
                    let data_dir_changed = new.data_dir != self.config.data_dir;
                    let sync_changed = crate::sync::settings(&new).map(|s| format!("{s:?}"))
                        != crate::sync::settings(&self.config).map(|s| format!("{s:?}"));
                    if new.failover != self.config.failover {
                        tracing::warn!(
                            config = %path.display(),
                            "[failover] changed: it takes effect at the next restart (systemctl restart sftp-ha)"
                        );
                    }
                    self.users.set_config(&new.data_dir, new.hash_method);
                    self.config = new;
                    self.status.config_loaded_at = unix_now();
                    self.refresh_config_fields();
                    if data_dir_changed {
                        self.install_sshd();
                        self.bind_sftp_log();
                    }
                    if sync_changed {
                        if let Some(sync) = self.sync.take() {
                            sync.stop(Duration::from_secs(3));
                        }
                        self.status.sync = None;
                        self.status.standbys.clear();
                        self.start_sync();
                    }
                    self.start_metrics();
                    ReloadOutcome {
                        at: unix_now(),
                        ok: true,
                        message,
                    }
                }
                Err(err) => self.refused(err.to_string()),
            },
            Err(message) => self.refused(message),
        };
        self.status.last_reload = Some(outcome);
        self.set_phase(Phase::Running);
        self.notifier.ready(&self.status.activity);
    }

    fn refused(&self, message: String) -> ReloadOutcome {
        tracing::error!(
            config = %self.config.path.display(),
            "reload refused, still running on the previous config: {message}"
        );
        ReloadOutcome {
            at: unix_now(),
            ok: false,
            message,
        }
    }

    /// Writes the sshd drop-in (checked by `sshd -t`) and records the outcome.
    fn install_sshd(&mut self) {
        if let Some(warning) = crate::sshd::include_warning() {
            tracing::error!("{warning}");
        }
        self.install_sshd_for(self.live.role);
    }

    /// Writes the drop-in for `role` (a master handing over already serves
    /// its users as a standby would).
    /// Returns false if sshd could not be given the drop-in (the status says why).
    fn install_sshd_for(&mut self, role: Role) -> bool {
        let (installed, result) =
            self.gate
                .install(&self.config.data_dir, &self.config.sync_root(), role);
        if installed != role {
            tracing::info!(
                "users stay read-only here until this host holds the master's lease (automatic failover)"
            );
        }
        let ok = result.is_ok();
        self.status.sshd = match result {
            Ok(installed) => {
                let words = match installed {
                    crate::sshd::Installed::Unchanged => "drop-in up to date",
                    crate::sshd::Installed::Reloaded => "drop-in installed, sshd reloaded",
                    crate::sshd::Installed::NotReloaded => "drop-in installed (sshd not running)",
                };
                tracing::info!(path = crate::sshd::DROP_IN, "sshd {words}");
                format!("{words} ({})", crate::sshd::DROP_IN)
            }
            Err(err) => {
                tracing::error!(path = crate::sshd::DROP_IN, "{err}");
                format!("ERROR: {err}")
            }
        };
        self.sshd_ok = ok;
        ok
    }

    /// Starts replication on a master with a standby configured.
    fn start_sync(&mut self) {
        if self.live.role != Role::Master {
            return;
        }
        let Some(mut settings) = crate::sync::settings(&self.config) else {
            return;
        };
        settings.node = self.node.clone();
        settings.live = self.live.clone();
        match crate::sync::start(settings) {
            Ok(handle) => {
                self.status.sync = Some(handle.snapshot());
                self.status.standbys = several(handle.snapshots());
                self.sync = Some(handle);
                self.refresh_activity();
            }
            Err(err) => tracing::error!("cannot start replication: {err}"),
        }
    }

    /// Starts (or, after a reload that changed `[metrics]` or made the default
    /// textfile folder appear, restarts) the metrics publisher.
    fn start_metrics(&mut self) {
        let settings = crate::metrics::Settings::from_config(&self.config.metrics);
        if self.metrics.as_ref().map(crate::metrics::Metrics::settings) == Some(&settings) {
            return;
        }
        if let Some(old) = self.metrics.take() {
            let moved = old.settings().textfile != settings.textfile;
            old.stop(moved);
        }
        self.metrics = crate::metrics::Metrics::start(settings, &self.status);
    }

    /// With shared storage only the master links the SFTP log socket into the
    /// chroots: `dev/log` is one name on the shared file system.
    fn links_sftp_log(&self) -> bool {
        !self.config.shared() || self.live.role == Role::Master
    }

    /// On a standby, every 10 minutes: removes what interrupted transfers left
    /// (with shared storage nothing is transferred; only the probes of the
    /// peer's sync account, in this host's own folder, could be left).
    fn clean_up_temporaries(&mut self) {
        const EVERY: Duration = Duration::from_secs(600);
        const STALE: Duration = Duration::from_secs(3600);
        if self.live.role != Role::Standby || self.last_cleanup.is_some_and(|t| t.elapsed() < EVERY)
        {
            return;
        }
        self.last_cleanup = Some(Instant::now());
        match crate::sync::tree::remove_stale_temporaries(&self.config.sync_root(), STALE) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} unfinished transfer(s) older than an hour"),
            Err(err) => tracing::warn!(
                path = %self.config.data_dir.display(),
                "cannot look for unfinished transfers: {err}"
            ),
        }
    }

    /// Copies the worker's status into the status file and the STATUS= line when it changed.
    fn refresh_sync_status(&mut self) {
        let Some(sync) = &self.sync else {
            return;
        };
        let now = sync.snapshot();
        let all = several(sync.snapshots());
        if self.status.sync.as_ref() != Some(&now) || self.status.standbys != all {
            self.status.sync = Some(now);
            self.status.standbys = all;
            self.refresh_activity();
            self.set_phase(self.status.phase);
            self.notifier.status(&self.status.activity);
        }
    }

    /// Sets up the SFTP log socket and links it into every chroot.
    fn bind_sftp_log(&mut self) {
        let name = if self.config.shared() {
            // Each host its own socket: the data dir is the same on both.
            Some(self.node.as_str())
        } else {
            None
        };
        let link = self.links_sftp_log();
        self.sftp_log = match SftpLog::bind(&self.config.data_dir, name) {
            Ok(mut log) => {
                log.link_chroots(&self.config.data_dir, link);
                Some(log)
            }
            Err(err) => {
                tracing::error!(
                    path = %self.config.data_dir.display(),
                    "cannot set up the SFTP log socket, uploads will not be logged: {err}"
                );
                None
            }
        };
    }

    fn record_users(&mut self, report: &crate::accounts::Report) {
        self.status.users_apply = Some(crate::status::UsersApply {
            at: report.at,
            file: report.file.clone(),
            ok: report.ok(),
            summary: report.summary(),
        });
        if self.live.role == Role::Standby {
            // For the master to report (see `role::Published::users`).
            self.publish_role();
        }
    }

    /// Copies what the status shows of the config, and words the activity line.
    fn refresh_config_fields(&mut self) {
        let c = &self.config;
        self.status.data_dir = c.data_dir.clone();
        self.status.standby = c.sync.peer.as_ref().map(ToString::to_string);
        self.status.fallback_interval = format_duration(c.sync.fallback_interval);
        self.status.shared = c.shared();
        self.refresh_activity();
    }

    /// Words the activity line (also the unit's STATUS=).
    fn refresh_activity(&mut self) {
        let c = &self.config;
        self.activity = match (self.live.role, &c.sync.peer) {
            (Role::Master, Some(s)) => match &self.status.sync {
                Some(sync) if self.status.standbys.is_empty() => format!(
                    "master serving {}; {}",
                    c.data_dir.display(),
                    crate::status::sync_words(sync)
                ),
                Some(_) => format!(
                    "master serving {}; {}",
                    c.data_dir.display(),
                    crate::status::several_words(&self.status.standbys)
                ),
                None => format!("master serving {}; standby {s}", c.data_dir.display()),
            },
            (Role::Master, None) => format!(
                "master serving {}; no standby configured",
                c.data_dir.display()
            ),
            (Role::Standby, _) if c.shared() => format!(
                "standby on shared storage {} (read-only for users)",
                c.data_dir.display()
            ),
            (Role::Standby, _) => format!("standby keeping {}", c.data_dir.display()),
        };
    }

    /// Records the phase, words the activity line and rewrites the status file.
    fn set_phase(&mut self, phase: Phase) {
        self.status.phase = phase;
        self.status.updated_at = unix_now();
        self.status.activity = match &self.status.last_reload {
            Some(r) if !r.ok => format!(
                "{} (last reload refused, running on the previous config: see journalctl -u sftp-ha)",
                self.activity
            ),
            _ => self.activity.clone(),
        };
        if let Err(err) = status::write(&self.runtime_dir, &self.status) {
            tracing::warn!(
                path = %self.runtime_dir.display(),
                "cannot write the status file, `sftp-ha status` will be out of date: {err}"
            );
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.update(&self.status);
        }
    }
}

/// The witness keeps only its state folder.
fn prepare_state_dir(config: &Config) -> Result<(), DaemonError> {
    let path = &config.state_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DaemonError::CreateDir {
            what: "state folder",
            path: path.clone(),
            source,
        })
}

/// Creates the data and state folders if missing. The data folder holds root-owned
/// chroots, so it is made root-only-writable (0755), as sshd requires of every
/// folder above a chroot.
fn prepare_dirs(config: &Config) -> Result<(), DaemonError> {
    // Shared storage: the data dir is the mount point, never created here.
    if config.shared() {
        crate::mount::check(&config.data_dir).map_err(|why| {
            DaemonError::NotMounted(crate::mount::not_mounted_message(
                &config.path,
                &config.data_dir,
                &why,
            ))
        })?;
    }
    let data = (!config.shared()).then_some(("data folder", &config.data_dir, 0o755));
    for (what, path, mode) in data
        .into_iter()
        .chain([("state folder", &config.state_dir, 0o700)])
    {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => {
                return Err(DaemonError::NotADir {
                    what,
                    path: path.clone(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DaemonError::CreateDir {
                    what,
                    path: path.clone(),
                    source,
                });
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|source| DaemonError::CreateDir {
                what,
                path: path.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), "created {what}");
    }
    if config.shared() {
        let root = config.sync_root();
        crate::sshd::prepare_sync_root(&root).map_err(|source| DaemonError::CreateDir {
            what: "folder of the peer's sync key",
            path: root,
            source,
        })?;
    }
    Ok(())
}

/// The per-standby statuses the status file lists: all of them with several
/// standbys, none with one (its status is `sync`, as before).
fn several(all: Vec<crate::sync::SyncStatus>) -> Vec<crate::sync::SyncStatus> {
    if all.len() > 1 { all } else { Vec::new() }
}
