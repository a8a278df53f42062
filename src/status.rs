//! The daemon's status file, `/run/sftp-ha/status.json`: the daemon rewrites it
//! atomically whenever what it is doing changes, and `sftp-ha status` reads it.
//! A file (rather than a socket) means `status` works even while the daemon is
//! stopped by a debugger or hung, and says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::timefmt::{format_duration, format_utc};

/// Default runtime folder (systemd's RuntimeDirectory=sftp-ha).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/sftp-ha";
/// Overrides [`DEFAULT_RUNTIME_DIR`], e.g. to run the daemon in the foreground as a normal user.
pub const RUNTIME_DIR_ENV: &str = "SFTP_HA_RUNTIME_DIR";
const FILE_NAME: &str = "status.json";

/// Where the status file lives: `$SFTP_HA_RUNTIME_DIR`, else `/run/sftp-ha`.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os(RUNTIME_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR), PathBuf::from)
}

/// The daemon's phase, as systemd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    Reloading,
    Stopping,
}

/// The outcome of the last SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub at: u64,
    pub ok: bool,
    pub message: String,
}

/// Everything `sftp-ha status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub role: Role,
    pub phase: Phase,
    /// The same words as the unit's STATUS= line.
    pub activity: String,
    pub started_at: u64,
    pub updated_at: u64,
    pub config_path: PathBuf,
    pub config_loaded_at: u64,
    pub data_dir: PathBuf,
    pub standby: Option<String>,
    pub fallback_interval: String,
    /// `[sync] storage = "shared"`: both hosts mount the data dir, nothing is copied.
    #[serde(default)]
    pub shared: bool,
    pub last_reload: Option<ReloadOutcome>,
    /// The sshd drop-in: installed, or what is wrong with it.
    #[serde(default)]
    pub sshd: String,
    /// The last users.yaml apply.
    #[serde(default)]
    pub users_apply: Option<UsersApply>,
    /// Replication, on a master with a standby.
    #[serde(default)]
    pub sync: Option<crate::sync::SyncStatus>,
    /// With several standbys, each one's replication, the first first (its
    /// status is also `sync`); empty with one standby.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<crate::sync::SyncStatus>,
    /// The live role's epoch, since when and why this host has its role.
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub role_since: u64,
    #[serde(default)]
    pub role_reason: String,
    /// This host's node name, as the peer sees it.
    #[serde(default)]
    pub node: String,
    /// The peer as last seen (its published role, or its claim).
    #[serde(default)]
    pub peer: Option<PeerSeen>,
    /// On a standby: how far its master last told it it is caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up: Option<crate::role::Position>,
    /// The answer to the last `sftp-ha promote` / `demote`.
    #[serde(default)]
    pub last_request: Option<RequestOutcome>,
    /// The last few answers, for the commands that wait on theirs.
    #[serde(default)]
    pub answers: Vec<RequestOutcome>,
    /// Automatic failover: the lease, the votes, the virtual IP.
    #[serde(default)]
    pub failover: Option<crate::failover::driver::FailoverStatus>,
    /// This host is the witness (`role = "witness"`).
    #[serde(default)]
    pub witness: bool,
}

/// The peer's role as this host last learnt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSeen {
    pub node: String,
    pub role: Role,
    pub epoch: u64,
    pub at: u64,
    /// The peer's last users.yaml apply, when it is the standby.
    #[serde(default)]
    pub users: Option<crate::role::UsersOutcome>,
}

/// What the daemon answered a `promote` / `demote` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub id: String,
    /// False while it is still being carried out.
    pub done: bool,
    pub ok: bool,
    pub message: String,
}

/// The outcome of the last users.yaml apply, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersApply {
    pub at: u64,
    pub file: PathBuf,
    pub ok: bool,
    pub summary: String,
}

/// Writes the status file: a temporary file, then rename, so a reader never sees half of it.
pub fn write(dir: &Path, status: &DaemonStatus) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut json = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
    json.push(b'\n');
    crate::fsutil::write_atomic(&dir.join(FILE_NAME), &json, 0o644, None)
}

/// Removes the status file when the daemon ends cleanly.
pub fn remove(dir: &Path) {
    let _ = fs::remove_file(dir.join(FILE_NAME));
}

/// What `sftp-ha status` found.
#[derive(Debug)]
pub enum Observed {
    Running(DaemonStatus),
    /// A status file whose daemon is gone (it crashed, or was killed).
    Stale(DaemonStatus),
    NotRunning,
}

/// Reads the status file and checks that its daemon still lives.
pub fn read(dir: &Path) -> io::Result<Observed> {
    let text = match fs::read(dir.join(FILE_NAME)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Observed::NotRunning),
        Err(e) => return Err(e),
    };
    let status: DaemonStatus = serde_json::from_slice(&text).map_err(io::Error::other)?;
    Ok(if process_is_sftp_ha(status.pid) {
        Observed::Running(status)
    } else {
        Observed::Stale(status)
    })
}

/// True if `pid` is alive and is an sftp-ha process (not a recycled pid).
fn process_is_sftp_ha(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sftp-ha")
}

impl DaemonStatus {
    /// The human-readable form of `sftp-ha status`.
    pub fn render(&self, now: u64) -> String {
        let uptime = std::time::Duration::from_secs(now.saturating_sub(self.started_at));
        let mut out = format!(
            "sftp-ha {} ({}) - {} since {} (up {}), pid {}\n",
            self.version,
            if self.witness {
                "witness".to_string()
            } else {
                self.role.to_string()
            },
            match self.phase {
                Phase::Starting => "starting",
                Phase::Running => "running",
                Phase::Reloading => "reloading",
                Phase::Stopping => "stopping",
            },
            format_utc(self.started_at),
            format_duration(uptime),
            self.pid
        );
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
        row("doing:", self.activity.clone());
        if self.witness {
            row("node:", self.node.clone());
            if let Some(f) = &self.failover {
                for (k, v) in failover_rows(f, true) {
                    row(k, v);
                }
            }
            row("config:", self.config_path.display().to_string());
            return out;
        }
        row(
            "role:",
            format!(
                "{} at epoch {} since {} ({}); node {}",
                self.role,
                self.epoch,
                format_utc(self.role_since),
                self.role_reason,
                self.node
            ),
        );
        if let Some(p) = &self.peer {
            row(
                "peer:",
                format!(
                    "{} is {} at epoch {} (seen {})",
                    p.node,
                    p.role,
                    p.epoch,
                    format_utc(p.at)
                ),
            );
            if let Some(u) = p.users.as_ref().filter(|u| !u.ok) {
                row(
                    "peer users:",
                    format!(
                        "the standby did NOT follow the last users.yaml ({}): {}",
                        format_utc(u.at),
                        u.summary
                    ),
                );
            }
        }
        if let Some(p) = self
            .caught_up
            .as_ref()
            .filter(|_| self.role == Role::Standby)
        {
            row(
                "caught up:",
                format!("{} (as that master last told this host)", p.describe()),
            );
        }
        if let Some(r) = &self.last_request {
            row(
                "request:",
                format!(
                    "{}{}",
                    if !r.done {
                        "in progress: "
                    } else if r.ok {
                        ""
                    } else {
                        "FAILED: "
                    },
                    r.message
                ),
            );
        }
        row(
            "config:",
            format!(
                "{} (loaded {})",
                self.config_path.display(),
                format_utc(self.config_loaded_at)
            ),
        );
        row("data dir:", self.data_dir.display().to_string());
        if self.role == Role::Master {
            row(
                "standby:",
                self.standby
                    .clone()
                    .unwrap_or_else(|| "none configured".into()),
            );
        }
        if self.shared {
            row(
                "storage:",
                "shared: both hosts mount the data dir; nothing is copied or reconciled".into(),
            );
        } else {
            row(
                "fallback:",
                format!("full scan every {}", self.fallback_interval),
            );
        }
        // Several standbys: a row for each, the details below for the first.
        for s in &self.standbys {
            row("sync:", standby_words(s));
            if s.reconciling {
                row(
                    "reconcile:",
                    format!(
                        "{}: waiting for it to be reconciled (a former master, or a standby of another master): what it has that this host lacks comes here before anything is mirrored to it",
                        s.standby
                    ),
                );
            }
        }
        if let Some(sync) = &self.sync {
            if self.standbys.is_empty() {
                row("sync:", sync_words(sync));
            }
            if let Some(watches) = &sync.watches {
                row("inotify:", watches.words(&self.fallback_interval));
            }
            if sync.reconciling && self.standbys.is_empty() {
                row(
                    "reconcile:",
                    "waiting for the former master: what it has that this host lacks comes here before anything is mirrored to it".into(),
                );
            }
            if let Some(at) = sync.last_reconcile {
                row(
                    "reconciled:",
                    format!(
                        "{} file(s) brought back, {} conflict copie(s) kept (last {}; each is in the journal and in reconcile-report.jsonl in the state dir)",
                        sync.brought_back,
                        sync.conflicts,
                        format_utc(at)
                    ),
                );
            }
            if !self.standbys.is_empty() {
                // Each standby's row has the rest.
            } else if sync.files_synced > 0 || sync.last_sync.is_some() {
                row(
                    "synced:",
                    format!(
                        "{} files, {} bytes since start; last {}{}",
                        sync.files_synced,
                        sync.bytes_synced,
                        sync.last_sync.map_or("never".into(), format_utc),
                        sync.last_lag_ms
                            .map_or(String::new(), |ms| format!(", {ms} ms after its change"))
                    ),
                );
            }
            if let Some(at) = sync.last_audit.filter(|_| self.standbys.is_empty()) {
                row(
                    "audit:",
                    format!(
                        "{} ({})",
                        format_utc(at),
                        match sync.last_audit_repairs {
                            0 => "the standby matched".to_string(),
                            n => format!("{n} difference(s) repaired"),
                        }
                    ),
                );
            }
        }
        if let Some(f) = &self.failover {
            for (k, v) in failover_rows(f, self.witness) {
                row(k, v);
            }
        }
        if !self.sshd.is_empty() {
            row("sshd:", self.sshd.clone());
        }
        match &self.users_apply {
            Some(u) => row(
                "users.yaml:",
                format!(
                    "{} {} {}: {}",
                    format_utc(u.at),
                    if u.ok { "applied" } else { "REFUSED" },
                    u.file.display(),
                    u.summary
                ),
            ),
            None => row("users.yaml:", "none applied since start".into()),
        }
        if let Some(r) = &self.last_reload {
            row(
                "last reload:",
                format!(
                    "{} {}{}",
                    format_utc(r.at),
                    if r.ok { "applied" } else { "REFUSED" },
                    if r.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.message)
                    }
                ),
            );
        }
        out
    }
}

/// The lease, the votes and the virtual IP, in words.
fn failover_rows(
    f: &crate::failover::driver::FailoverStatus,
    witness: bool,
) -> Vec<(&'static str, String)> {
    let ms = |ms: u64| format_duration(std::time::Duration::from_millis(ms));
    let mut rows = Vec::new();
    let manual = f.mode == "manual";
    let lease = if manual {
        "no lease: the witness and the peer are told that this host runs manual failover (while it is the master), so an automatic peer never takes over from it".into()
    } else if witness {
        match &f.promised {
            Some((node, epoch, left)) => {
                format!(
                    "the master's lease is promised to {node} at epoch {epoch} ({} left)",
                    ms(*left)
                )
            }
            None => "no master holds a lease from this witness now".into(),
        }
    } else if let Some(left) = f.lease_left_ms {
        format!(
            "this host holds the master's lease ({} left, granted by {}); users {}",
            ms(left),
            f.granted_by.join(" and "),
            if f.writable {
                "write here"
            } else {
                "are read-only here (the lease is about to end)"
            }
        )
    } else if let Some(epoch) = f.candidate {
        format!("asking the witness to take over at epoch {epoch}")
    } else {
        match &f.promised {
            Some((node, epoch, left)) => format!(
                "{node} holds the master's lease at epoch {epoch} (this host's vote: {} left)",
                ms(*left)
            ),
            None => "no lease held or promised here; users are read-only here".into(),
        }
    };
    rows.push((
        "failover:",
        format!(
            "{}, after {}, UDP port {}: {lease}",
            f.mode,
            ms(f.after_ms),
            f.port
        ),
    ));
    let reach = |r: &crate::failover::driver::Reach| {
        format!(
            "{} {}{}",
            r.address,
            if r.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            r.last_heard.map_or_else(
                || ", never heard".into(),
                |t| format!(", last heard {}", format_utc(t))
            )
        )
    };
    if let Some(why) = &f.unfenced {
        rows.push(("FENCE:", why.clone()));
    }
    if let Some((node, epoch)) = &f.manual_master {
        rows.push((
            "manual:",
            format!(
                "{node}, the master at epoch {epoch}, runs mode = \"manual\": no automatic takeover from it until it runs mode = \"auto\" again"
            ),
        ));
    }
    if let Some(vote) = &f.vote {
        rows.push(("vote:", vote.clone()));
    }
    if f.sshd_down {
        rows.push((
            "SSHD:",
            "not taking logins here for `after`: this host neither holds nor takes the master's lease until sshd runs again (systemctl status ssh)".into(),
        ));
    }
    if let Some(w) = &f.witness {
        let mut words = reach(w);
        if !w.reachable && manual {
            words.push_str("; it may not know that this host runs manual failover");
        } else if !w.reachable {
            words.push_str(
                "; the pair has no third vote: nothing fails over automatically, and a master cut off from the standby too stops taking uploads",
            );
        }
        rows.push(("witness:", words));
    }
    if let Some(p) = &f.peer {
        rows.push(("vote peer:", reach(p)));
    }
    if let Some(v) = &f.virtual_ip {
        rows.push((
            "virtual IP:",
            format!(
                "{} on {}: {}{}",
                v.address,
                if v.interface.is_empty() {
                    "?"
                } else {
                    &v.interface
                },
                if v.held_here { "held here" } else { "not here" },
                v.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (ERROR: {e})"))
            ),
        ));
    }
    if let Some(l) = &f.last_failover {
        rows.push((
            "took over:",
            format!(
                "{} at epoch {}: the master was silent for {}, users wrote here {} after the witness's grant",
                format_utc(l.at),
                l.epoch,
                l.master_silent_ms.map_or("?".into(), ms),
                l.grant_to_writable_ms.map_or("?".into(), ms)
            ),
        ));
    }
    if f.refused_datagrams > 0 {
        rows.push((
            "bad key:",
            format!(
                "{} datagram(s) ignored: not a failover message signed with this host's key (see the journal)",
                f.refused_datagrams
            ),
        ));
    }
    rows
}

/// One standby's row when there are several: reachability, queue, the last
/// lag and the last audit.
pub fn standby_words(s: &crate::sync::SyncStatus) -> String {
    let mut words = sync_words(s);
    if let Some(ms) = s.last_lag_ms {
        words.push_str(&format!(", last file {ms} ms after its change"));
    }
    match s.last_audit {
        Some(at) => words.push_str(&format!(
            ", audit {} ({})",
            format_utc(at),
            match s.last_audit_repairs {
                0 => "matched".to_string(),
                n => format!("{n} difference(s) repaired"),
            }
        )),
        None => words.push_str(", not audited yet"),
    }
    words
}

/// Several standbys in a few words, for the activity line: the first's
/// words, then how many of the others are reachable.
pub fn several_words(all: &[crate::sync::SyncStatus]) -> String {
    let Some((first, others)) = all.split_first() else {
        return String::new();
    };
    let mut words = sync_words(first);
    if !others.is_empty() {
        let down: Vec<&str> = others
            .iter()
            .filter(|s| !s.connected)
            .map(|s| s.standby.as_str())
            .collect();
        words.push_str(&format!(
            "; {} more standby(s), {}",
            others.len(),
            if down.is_empty() {
                "all reachable".to_string()
            } else {
                format!("UNREACHABLE: {}", down.join(", "))
            }
        ));
    }
    words
}

/// The standby's reachability and the queue, in words.
pub fn sync_words(s: &crate::sync::SyncStatus) -> String {
    let mut words = if s.connected {
        format!(
            "standby {} reachable since {}",
            s.standby,
            format_utc(s.since)
        )
    } else if let Some(err) = &s.last_error {
        format!(
            "standby {} UNREACHABLE since {}: {err}",
            s.standby,
            format_utc(s.since)
        )
    } else {
        format!("standby {} not contacted yet", s.standby)
    };
    words.push_str(&format!(", {} pending", s.pending));
    if s.deletes_held_back {
        words.push_str(", DELETES HELD BACK: the data dir looks empty or unmounted");
    }
    if s.refused > 0 {
        words.push_str(&format!(
            ", {} operation(s) REFUSED by the standby and skipped (retried on the next full scan; last: {})",
            s.refused,
            s.last_refused.as_deref().unwrap_or("?")
        ));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            version: "0.1.0".into(),
            role: Role::Master,
            phase: Phase::Running,
            activity: "serving".into(),
            started_at: 1_000,
            updated_at: 1_000,
            config_path: "/etc/sftp-ha/config.toml".into(),
            config_loaded_at: 1_000,
            data_dir: "/srv/sftp-ha".into(),
            standby: None,
            fallback_interval: "1m40s".into(),
            shared: false,
            last_reload: Some(ReloadOutcome {
                at: 1_060,
                ok: false,
                message: "config error".into(),
            }),
            sshd: "drop-in installed".into(),
            users_apply: None,
            sync: None,
            standbys: Vec::new(),
            epoch: 1,
            role_since: 1_000,
            role_reason: "first start".into(),
            node: "m1".into(),
            peer: None,
            caught_up: None,
            last_request: None,
            answers: Vec::new(),
            failover: None,
            witness: false,
        }
    }

    #[test]
    fn write_then_read_round_trips_and_detects_stale() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Observed::NotRunning));
        let s = sample();
        write(dir.path(), &s).unwrap();
        // The test binary is not called sftp-ha, so its own pid reads as stale.
        match read(dir.path()).unwrap() {
            Observed::Stale(back) => assert_eq!(back, s),
            other => panic!("expected stale, got {other:?}"),
        }
        remove(dir.path());
        assert!(matches!(read(dir.path()).unwrap(), Observed::NotRunning));
    }

    #[test]
    fn render_mentions_what_an_admin_needs() {
        let text = sample().render(1_000 + 3_725);
        assert!(
            text.contains("running since 1970-01-01 00:16:40 UTC (up 1h2m5s)"),
            "{text}"
        );
        assert!(text.contains("none configured"), "{text}");
        assert!(text.contains("REFUSED: config error"), "{text}");
        assert!(text.contains("full scan every 1m40s"), "{text}");
    }

    #[test]
    fn a_standby_shows_how_far_it_is_caught_up() {
        let mut status = sample();
        status.caught_up = Some(crate::role::Position {
            master: "m1".into(),
            epoch: 3,
            through_ms: 1_000_250,
        });
        // Only on a standby: a master's would be a leftover.
        assert!(!status.render(1_000).contains("caught up:"));
        status.role = Role::Standby;
        let text = status.render(1_000);
        assert!(
            text.contains(
                "caught up:   everything of master m1 at epoch 3 through 1970-01-01 00:16:40.250 UTC"
            ),
            "{text}"
        );
    }

    #[test]
    fn shared_storage_says_so_instead_of_the_fallback_scan() {
        let mut status = sample();
        status.shared = true;
        let text = status.render(1_000);
        assert!(text.contains("storage:"), "{text}");
        assert!(text.contains("nothing is copied"), "{text}");
        assert!(!text.contains("full scan"), "{text}");
        // A status file from before the field: not shared.
        let mut json = serde_json::to_value(sample()).unwrap();
        json.as_object_mut().unwrap().remove("shared");
        let old: DaemonStatus = serde_json::from_value(json).unwrap();
        assert!(!old.shared);
    }

    #[test]
    fn several_standbys_get_a_sync_row_each() {
        let mut s = sample();
        s.role = Role::Master;
        let one = crate::sync::SyncStatus {
            standby: "10.231.0.2:22".into(),
            connected: true,
            since: 1_700_000_000,
            last_lag_ms: Some(212),
            last_audit: Some(1_700_000_000),
            ..Default::default()
        };
        let two = crate::sync::SyncStatus {
            standby: "10.231.0.3:22".into(),
            connected: false,
            since: 1_700_000_000,
            last_error: Some("cannot connect".into()),
            pending: 17,
            reconciling: true,
            ..Default::default()
        };
        s.sync = Some(one.clone());
        s.standbys = vec![one, two];
        let text = s.render(1_700_000_100);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("sync:"))
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[0].contains("10.231.0.2:22 reachable")
                && rows[0].contains("212 ms")
                && rows[0].contains("matched"),
            "{text}"
        );
        assert!(
            rows[1].contains("10.231.0.3:22 UNREACHABLE")
                && rows[1].contains("17 pending")
                && rows[1].contains("not audited yet"),
            "{text}"
        );
        assert!(
            text.contains("10.231.0.3:22: waiting for it to be reconciled"),
            "{text}"
        );
        assert!(!text.contains("synced:"), "{text}");
        // The JSON keeps `sync` and adds `standbys`; with one standby, no `standbys`.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["sync"]["standby"], "10.231.0.2:22");
        assert_eq!(json["standbys"][1]["pending"], 17);
        s.standbys.clear();
        assert!(serde_json::to_value(&s).unwrap().get("standbys").is_none());
    }
}
