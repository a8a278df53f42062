//! Prometheus metrics: what `sftp-ha status` shows, as numbers an alert rule
//! can watch. [`render`] turns a [`DaemonStatus`] into the text exposition
//! format (pure); [`Metrics`] publishes that text in the two ways `[metrics]`
//! allows: a file for node-exporter's textfile collector, written atomically,
//! and `GET /metrics` on a local address ([`http`]).
//!
//! The daemon calls [`Metrics::update`] whenever its status changes and
//! [`Metrics::tick`] on every turn of its main loop (at least once a second).
//! The file is rewritten at most once a second while the numbers change, and
//! at least every [`REFRESH`] while they don't, so its mtime (node-exporter's
//! `node_textfile_mtime_seconds`) tells a live daemon from a dead one.

pub mod http;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{MetricsConfig, Role};
use crate::status::DaemonStatus;

/// The least time between two writes of the file while the numbers change.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The most time between two writes of the file while nothing changes: far
/// below the 5 minutes after which the README's alert calls the file stale.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Where the metrics go, resolved from `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub textfile: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

impl Settings {
    /// Resolves the default textfile (it depends on node-exporter's folder existing).
    pub fn from_config(config: &MetricsConfig) -> Settings {
        Settings {
            textfile: config.textfile_path(),
            listen: config.listen,
        }
    }

    pub fn is_off(&self) -> bool {
        self.textfile.is_none() && self.listen.is_none()
    }
}

/// The running publisher: the textfile writer and the HTTP thread.
pub struct Metrics {
    settings: Settings,
    /// The latest rendered text, shared with the HTTP thread.
    latest: Arc<Mutex<String>>,
    http: Option<http::Server>,
    /// What the file holds, as far as this process wrote it.
    written: Option<String>,
    last_attempt: Option<Instant>,
    /// A failed write was logged: the next failures are not, until one succeeds.
    failing: bool,
}

impl Metrics {
    /// Starts publishing `status`; `None` when `settings` turn both ways off. An
    /// address that cannot be bound is logged and leaves only the file.
    pub fn start(settings: Settings, status: &DaemonStatus) -> Option<Metrics> {
        if settings.is_off() {
            return None;
        }
        let latest = Arc::new(Mutex::new(render(status)));
        let http = settings.listen.and_then(|addr| {
            match http::Server::start(addr, latest.clone(), http::TIMEOUT) {
                Ok(server) => {
                    tracing::info!("metrics served on http://{addr}/metrics");
                    Some(server)
                }
                Err(err) => {
                    let fix = if err.kind() == io::ErrorKind::PermissionDenied && addr.port() < 1024
                    {
                        "use a port above 1023 (the unit grants no CAP_NET_BIND_SERVICE)"
                    } else {
                        "choose a free port on an address of this host in [metrics] listen, then systemctl reload sftp-ha"
                    };
                    tracing::error!(
                        "cannot serve metrics on {addr}: {err}; fix: {fix}; the metrics file (if any) is still written"
                    );
                    None
                }
            }
        });
        if let Some(path) = &settings.textfile {
            tracing::info!(path = %path.display(), "metrics written to a textfile");
        }
        let mut metrics = Metrics {
            settings,
            latest,
            http,
            written: None,
            last_attempt: None,
            failing: false,
        };
        metrics.flush(Instant::now());
        Some(metrics)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Renders `status`: the HTTP endpoint serves it at once, the file follows
    /// within [`MIN_INTERVAL`].
    pub fn update(&mut self, status: &DaemonStatus) {
        let text = render(status);
        if let Ok(mut latest) = self.latest.lock()
            && *latest != text
        {
            *latest = text;
        }
        self.flush(Instant::now());
    }

    /// Writes the file if it is due; called on every turn of the main loop.
    pub fn tick(&mut self) {
        self.flush(Instant::now());
    }

    /// Stops the HTTP thread. `remove_textfile`: also remove the file this
    /// process wrote (the config moved it or turned it off); on a plain stop it
    /// stays, so the stale-file alert notices a daemon that is gone.
    pub fn stop(mut self, remove_textfile: bool) {
        if let Some(server) = self.http.take() {
            server.stop();
        }
        if remove_textfile
            && self.written.is_some()
            && let Some(path) = &self.settings.textfile
        {
            match fs::remove_file(path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed the metrics file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "cannot remove the old metrics file, remove it by hand: {e}"
                ),
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        let Some(path) = &self.settings.textfile else {
            return;
        };
        let since = self.last_attempt.map(|t| now.saturating_duration_since(t));
        if since.is_some_and(|s| s < MIN_INTERVAL) {
            return;
        }
        let Some(text) = self.latest.lock().ok().map(|t| t.clone()) else {
            return;
        };
        let changed = self.written.as_ref() != Some(&text);
        if !changed && since.is_some_and(|s| s < REFRESH) {
            return;
        }
        self.last_attempt = Some(now);
        match write_textfile(path, text.as_bytes()) {
            Ok(()) => {
                if self.failing {
                    tracing::info!(path = %path.display(), "the metrics file is written again");
                    self.failing = false;
                }
                self.written = Some(text);
            }
            Err(err) => {
                if !self.failing {
                    tracing::warn!(
                        path = %path.display(),
                        "cannot write the metrics file, alerts will see stale or no numbers (said once, retried every second): {err}; fix: create the folder, or set [metrics] textfile to another path or \"\" and systemctl reload sftp-ha"
                    );
                    self.failing = true;
                }
            }
        }
    }
}

/// Writes `data` to `path` through a temporary in the same folder and a
/// rename, so the collector reads the old or the new text, never half of it.
/// The temporary's name does not end in `.prom` (the collector ignores it),
/// it is created with O_EXCL and O_NOFOLLOW (node-exporter's folder belongs
/// to another user), mode 0644 so the collector can read it.
pub fn write_textfile(path: &Path, data: &[u8]) -> io::Result<()> {
    crate::fsutil::write_atomic(path, data, 0o644, None)
}

/// The text exposition format (version 0.0.4) of `status`. Series that have
/// no value yet (no audit so far, no users.yaml applied since start) are left
/// out rather than shown as 0, so an alert on their age never fires on "never".
pub fn render(status: &DaemonStatus) -> String {
    let mut out = Exposition::default();
    out.sample(
        "sftp_ha_info",
        Kind::Gauge,
        "Version and role of this sftp-ha daemon; always 1.",
        &[
            ("version", &status.version),
            ("role", &status.role.to_string()),
        ],
        "1",
    );
    out.gauge(
        "sftp_ha_epoch",
        "The live role's epoch: raised by every promotion; with sftp_ha_info's role, two masters at once show up as two hosts with role=\"master\".",
        status.epoch,
    );
    out.gauge(
        "sftp_ha_role_change_time_seconds",
        "When this host took its live role, in unix seconds.",
        status.role_since,
    );
    out.gauge(
        "sftp_ha_start_time_seconds",
        "When the daemon started, in unix seconds.",
        status.started_at,
    );
    out.gauge(
        "sftp_ha_config_load_time_seconds",
        "When the running config was loaded (at start or by the last good reload), in unix seconds.",
        status.config_loaded_at,
    );
    out.gauge(
        "sftp_ha_last_reload_ok",
        "1 unless the last reload was refused (the daemon then runs on the previous config).",
        u8::from(status.last_reload.as_ref().is_none_or(|r| r.ok)),
    );
    if let Some(reload) = &status.last_reload {
        out.gauge(
            "sftp_ha_last_reload_time_seconds",
            "When the config was last reloaded or a reload refused, in unix seconds.",
            reload.at,
        );
    }
    if !status.sshd.is_empty() {
        out.gauge(
            "sftp_ha_sshd_config_ok",
            "1 if the sshd drop-in is installed and accepted by sshd -t, 0 if not (see sftp-ha status).",
            u8::from(!status.sshd.starts_with("ERROR")),
        );
    }
    if let Some(apply) = &status.users_apply {
        out.gauge(
            "sftp_ha_users_apply_ok",
            "1 if the last users.yaml apply succeeded, 0 if it was refused.",
            u8::from(apply.ok),
        );
        out.gauge(
            "sftp_ha_users_apply_last_time_seconds",
            "When users.yaml was last applied or refused, in unix seconds.",
            apply.at,
        );
    }
    if status.role == Role::Master && status.standby.is_some() {
        let sync = status.sync.as_ref();
        out.gauge(
            "sftp_ha_standby_up",
            "1 while the master reaches its standby, 0 while it does not (or replication cannot run).",
            u8::from(sync.is_some_and(|s| s.connected)),
        );
        if let Some(sync) = sync {
            render_sync(&mut out, sync);
        }
    }
    out.text
}

fn render_sync(out: &mut Exposition, sync: &crate::sync::SyncStatus) {
    out.gauge(
        "sftp_ha_standby_state_change_time_seconds",
        "Since when the standby is reachable or not (sftp_ha_standby_up), in unix seconds.",
        sync.since,
    );
    out.gauge(
        "sftp_ha_sync_pending_operations",
        "Operations (uploads, deletes, renames, attribute changes) waiting for the standby.",
        sync.pending,
    );
    out.counter(
        "sftp_ha_sync_files_total",
        "Files copied to the standby since replication started.",
        sync.files_synced,
    );
    out.counter(
        "sftp_ha_sync_bytes_total",
        "Bytes of files copied to the standby since replication started.",
        sync.bytes_synced,
    );
    if let Some(at) = sync.last_sync {
        out.gauge(
            "sftp_ha_sync_last_success_time_seconds",
            "When an operation (upload, delete, rename, attributes) last succeeded on the standby, in unix seconds.",
            at,
        );
    }
    if let Some(ms) = sync.last_lag_ms {
        out.gauge(
            "sftp_ha_sync_lag_seconds",
            "How long the last file copied took from its last change (mtime) on the master to being safe on the standby; a client that preserves mtimes makes it large.",
            format!("{}.{:03}", ms / 1000, ms % 1000),
        );
    }
    if let Some(at) = sync.last_scan {
        out.gauge(
            "sftp_ha_sync_last_full_scan_time_seconds",
            "When the master's data dir was last walked whole, in unix seconds.",
            at,
        );
    }
    out.gauge(
        "sftp_ha_sync_deletes_held_back",
        "1 while deletes are not mirrored because the master's data dir looks empty or unmounted.",
        u8::from(sync.deletes_held_back),
    );
    out.gauge(
        "sftp_ha_sync_refused_operations",
        "Operations the standby refused and that were skipped (retried on the next full scan).",
        sync.refused,
    );
    if let Some(watches) = &sync.watches {
        out.gauge(
            "sftp_ha_inotify_folders",
            "Folders in the data dir at the last full walk: each needs one inotify watch.",
            watches.folders,
        );
        out.gauge(
            "sftp_ha_inotify_folders_watched",
            "Folders with an inotify watch; fewer than sftp_ha_inotify_folders means fs.inotify.max_user_watches is reached and changes in the others wait for the fallback walk.",
            watches.watched,
        );
    }
    out.counter(
        "sftp_ha_reconcile_brought_back_total",
        "Files brought back from a former master since start (each is in the journal and reconcile-report.jsonl).",
        sync.brought_back,
    );
    out.counter(
        "sftp_ha_reconcile_conflicts_total",
        "Conflict copies kept from a former master since start (a file changed on both hosts).",
        sync.conflicts,
    );
    out.gauge(
        "sftp_ha_reconcile_pending",
        "1 while a former master waits to be reconciled (nothing is mirrored to it meanwhile).",
        u8::from(sync.reconciling),
    );
    if let Some(at) = sync.last_audit {
        out.gauge(
            "sftp_ha_audit_last_time_seconds",
            "When the standby's tree was last listed and compared with the master's, in unix seconds.",
            at,
        );
        out.gauge(
            "sftp_ha_audit_last_repairs",
            "Differences the last audit found on the standby and repaired (0: the standby matched).",
            sync.last_audit_repairs,
        );
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// Builds the text: each metric's HELP and TYPE, then its one sample.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.sample(name, Kind::Gauge, help, &[], &value.to_string());
    }

    fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        self.sample(name, Kind::Counter, help, &[], &value.to_string());
    }

    fn sample(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], value: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self.text.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A HELP text: backslash and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
