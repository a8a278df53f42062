//! `/etc/sftp-ha/config.toml`: parsing, defaults and the semantic check.
//!
//! Parsing happens in two steps, as in ntpd-rs: serde reads the file into
//! [`ConfigFile`] (every field optional and spanned, unknown keys refused), then
//! [`ConfigFile::check`] turns it into the validated [`Config`] the daemon uses.
//! Every error names the file, the line and column, the key, what is wrong and
//! how to fix it, in one line that reads well in the journal.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::accounts::crypt::Method;
use crate::timefmt::{format_duration, parse_duration};

/// Where the daemon and the CLI look for the config unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/sftp-ha/config.toml";
/// Default root of the per-user chroots.
pub const DEFAULT_DATA_DIR: &str = "/srv/sftp-ha";
/// Default home of the daemon's own state (index, keys); systemd's StateDirectory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sftp-ha";
/// Default period of the full fallback scan.
pub const DEFAULT_FALLBACK_INTERVAL: Duration = Duration::from_secs(100);
/// Default period of the remote audit.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(3600);
const AUDIT_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600));
/// Default SSH port of the standby.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// node-exporter's textfile-collector folder on Debian (prometheus-node-exporter):
/// when it exists, metrics are written there unless the config says otherwise.
pub const DEFAULT_TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
/// The metrics file written into [`DEFAULT_TEXTFILE_DIR`].
pub const DEFAULT_TEXTFILE_NAME: &str = "sftp-ha.prom";

/// Shortest and longest accepted fallback interval: shorter scans would only burn CPU,
/// longer ones would leave a missed file unreplicated for more than a day.
const FALLBACK_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// What this host is in the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes uploads and replicates them to the standby.
    Master,
    /// Receives the master's files and users.yaml, ready to take over.
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Standby => "standby",
        })
    }
}

/// `role` as written: a witness stores no files and only votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Master,
    Standby,
    Witness,
}

/// What this host is: one of the two file hosts, or the third vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    FileHost,
    /// `role = "witness"`: no files, no users; it only votes in automatic failover.
    Witness,
}

/// `[failover] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Roles change only by `sftp-ha promote` / `demote`.
    #[default]
    Manual,
    /// The standby takes over by itself when the master's lease runs out
    /// and the witness agrees.
    Auto,
}

/// Default UDP port of the failover messages (lease, votes).
pub const DEFAULT_FAILOVER_PORT: u16 = 7410;
/// Default time a silent master has before the standby takes over.
pub const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(3);
/// Below half a second, a lost datagram or two would fence a healthy master;
/// above a minute, nobody would call it automatic.
const FAILOVER_AFTER_RANGE: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(60));

/// `[failover]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverConfig {
    pub mode: FailoverMode,
    /// The other file host's failover address (default: `[sync] peer`'s host).
    pub peer: Option<Endpoint>,
    /// The third vote, `HOST[:PORT]`.
    pub witness: Option<Endpoint>,
    pub virtual_ip: Option<crate::failover::vip::VirtualIp>,
    /// Where the virtual IP goes; `None`: the interface that routes to the peer.
    pub interface: Option<String>,
    pub after: Duration,
    /// The UDP port this host listens on.
    pub port: u16,
    pub key_file: PathBuf,
    /// Loaded when the mode is auto or this host is the witness.
    pub key: Option<crate::failover::key::FailoverKey>,
}

impl Default for FailoverConfig {
    fn default() -> FailoverConfig {
        FailoverConfig {
            mode: FailoverMode::Manual,
            peer: None,
            witness: None,
            virtual_ip: None,
            interface: None,
            after: DEFAULT_FAILOVER_AFTER,
            port: DEFAULT_FAILOVER_PORT,
            key_file: PathBuf::from(crate::failover::key::DEFAULT_KEY_FILE),
            key: None,
        }
    }
}

/// Log verbosity; `RUST_LOG`, when set, takes precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A standby's SSH address, `host` or `host:port` (IPv6 as `[addr]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        Endpoint::parse_with_port(text, DEFAULT_SSH_PORT)
    }

    /// As [`Endpoint::parse`], with another default port.
    pub fn parse_with_port(text: &str, default_port: u16) -> Result<Endpoint, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or("an IPv6 address needs a closing `]`")?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or("expected `:PORT` after `]`")?,
                    ),
                ),
            }
        } else {
            match text.matches(':').count() {
                0 => (text, None),
                1 => {
                    let (host, port) = text.split_once(':').unwrap_or((text, ""));
                    (host, Some(port))
                }
                _ => {
                    return Err("write an IPv6 address in brackets, like `[2001:db8::2]:22`".into());
                }
            }
        };
        if host.is_empty() {
            return Err("the host name is empty".into());
        }
        let bracketed = text.starts_with('[');
        let valid_char = |c: char| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (bracketed && c == ':')
        };
        if let Some(bad) = host.chars().find(|c| !valid_char(*c)) {
            return Err(format!("the host name contains {bad:?}"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(format!("`{p}` is not a port number (1-65535)")),
            },
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub role: Role,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_level: LogLevel,
    pub sync: SyncConfig,
    /// Password hashing method; `None`: ENCRYPT_METHOD from /etc/login.defs.
    pub hash_method: Option<Method>,
    pub metrics: MetricsConfig,
    /// A file host, or the witness (`role = "witness"`; then `role` is
    /// [`Role::Standby`] and means nothing).
    pub host: HostKind,
    pub failover: FailoverConfig,
}

/// Where Prometheus metrics go: `[metrics]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsConfig {
    pub textfile: Textfile,
    /// Serve `GET /metrics` on this address; `None`: no HTTP endpoint (the default).
    pub listen: Option<SocketAddr>,
}

/// The `textfile` setting as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Textfile {
    /// Not set: [`DEFAULT_TEXTFILE_DIR`]/[`DEFAULT_TEXTFILE_NAME`] if that folder exists, else off.
    #[default]
    Default,
    /// `textfile = ""`.
    Off,
    At(PathBuf),
}

impl MetricsConfig {
    /// The file to write, if any: for [`Textfile::Default`] this looks at the
    /// file system, so the answer can change when node-exporter is installed.
    pub fn textfile_path(&self) -> Option<PathBuf> {
        match &self.textfile {
            Textfile::Default => Path::new(DEFAULT_TEXTFILE_DIR)
                .is_dir()
                .then(|| Path::new(DEFAULT_TEXTFILE_DIR).join(DEFAULT_TEXTFILE_NAME)),
            Textfile::Off => None,
            Textfile::At(path) => Some(path.clone()),
        }
    }

    /// In words, for the summary line.
    fn words(&self) -> String {
        let mut ways = Vec::new();
        if let Some(path) = self.textfile_path() {
            ways.push(path.display().to_string());
        }
        if let Some(addr) = self.listen {
            ways.push(format!("http://{addr}/metrics"));
        }
        if ways.is_empty() {
            "metrics off".into()
        } else {
            format!("metrics to {}", ways.join(" and "))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// The other file host: where this host replicates to while it is the
    /// master, and the host it asks before a promotion. `None`: none yet.
    pub peer: Option<Endpoint>,
    /// Every standby a master replicates to, `peer` first (`[sync] peer` as
    /// a list); empty when no peer is set. On a standby, the first is the
    /// master it asks before a promotion and all are its standbys once it
    /// is promoted.
    pub standbys: Vec<Endpoint>,
    pub fallback_interval: Duration,
    /// Mirror deletes to the standby.
    pub delete: bool,
    /// How often the standby's tree is listed and drift repaired (also after every connect).
    pub audit_interval: Duration,
    /// Whether sftp-ha replicates the data dir, or both hosts mount it from
    /// a shared file system.
    pub storage: Storage,
    /// With shared storage: the replication settings written in the file
    /// anyway (key and line), which mean nothing there; see [`Config::warnings`].
    pub ignored: Vec<(&'static str, usize)>,
}

/// `[sync] storage`: who keeps the standby's copy of the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Each host has its own data dir; the master replicates to the standby.
    #[default]
    Replicated,
    /// Both hosts mount the same data dir from a shared file system (NFS,
    /// CephFS, GlusterFS), which does its own replication: sftp-ha copies
    /// nothing and reconciles nothing, and keeps accounts, the sshd drop-in,
    /// roles and failover.
    Shared,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Replicated => "replicated",
            Storage::Shared => "shared",
        }
    }

    fn from_name(name: &str) -> Option<Storage> {
        match name {
            "replicated" => Some(Storage::Replicated),
            "shared" => Some(Storage::Shared),
            _ => None,
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the peer's sync key is chrooted with shared storage, in the state
/// dir: the host's own control folder, never the (shared) data.
pub const SHARED_SYNC_ROOT: &str = "peer";

impl Config {
    /// True when both hosts mount the same data dir ([`Storage::Shared`]).
    pub fn shared(&self) -> bool {
        self.sync.storage == Storage::Shared
    }

    /// The folder the peer's sync account is chrooted to, holding this
    /// host's control folder ([`crate::layout::CONTROL_DIR`]): the data dir
    /// when replicating; with shared storage a folder of this host's own
    /// (`<state_dir>/peer`), because the data dir, and every name in it, is
    /// the same on both hosts.
    pub fn sync_root(&self) -> PathBuf {
        sync_root(&self.data_dir, &self.state_dir, self.sync.storage)
    }
}

/// See [`Config::sync_root`].
pub fn sync_root(data_dir: &Path, state_dir: &Path, storage: Storage) -> PathBuf {
    match storage {
        Storage::Replicated => data_dir.to_path_buf(),
        Storage::Shared => state_dir.join(SHARED_SYNC_ROOT),
    }
}

impl Config {
    /// Things that are allowed but probably not what the admin wants.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let f = &self.failover;
        if self.host == HostKind::FileHost
            && f.mode == FailoverMode::Manual
            && f.virtual_ip.is_some()
        {
            warnings.push(format!(
                "{}: [failover] virtual_ip is used only with mode = \"auto\"; with mode = \"manual\" it is ignored",
                self.path.display()
            ));
        }
        if self.host == HostKind::Witness {
            return warnings;
        }
        if self.role == Role::Master && self.sync.peer.is_none() {
            warnings.push(if self.shared() {
                format!(
                    "{}: no [sync] peer is set, so the standby cannot be asked for its role, nor hand over; set peer = \"HOST:PORT\" (the other file host) under [sync]",
                    self.path.display()
                )
            } else {
                format!(
                    "{}: no [sync] peer is set, so nothing is replicated; set peer = \"HOST:PORT\" (the standby) under [sync]",
                    self.path.display()
                )
            });
        }
        for (key, line) in &self.sync.ignored {
            warnings.push(format!(
                "{}, line {line}: [sync] {key} is ignored with storage = \"shared\": the shared file system replicates the files, sftp-ha copies nothing; remove it",
                self.path.display()
            ));
        }
        if let Textfile::At(path) = &self.metrics.textfile
            && let Some(dir) = path.parent()
            && !dir.is_dir()
        {
            warnings.push(format!(
                "{}: [metrics] textfile: the folder {} does not exist, so no metrics file is written; create it (node-exporter's textfile collector must read it) or correct the path",
                self.path.display(),
                dir.display()
            ));
        }
        warnings
    }

    /// One line for logs and `check-config`.
    pub fn summary(&self) -> String {
        let f = &self.failover;
        if self.host == HostKind::Witness {
            return format!(
                "witness: votes in automatic failover on UDP port {}, `after` {}, key {}",
                f.port,
                format_duration(f.after),
                f.key_file.display()
            );
        }
        let failover = match f.mode {
            FailoverMode::Manual => "failover manual (sftp-ha promote)".to_string(),
            FailoverMode::Auto => format!(
                "failover auto after {} with witness {}{}",
                format_duration(f.after),
                f.witness
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string),
                f.virtual_ip
                    .as_ref()
                    .map_or_else(String::new, |v| format!(", virtual IP {v}"))
            ),
        };
        let standby = match &self.sync.peer {
            Some(s) if self.sync.standbys.len() <= 1 => format!(", peer {s}"),
            Some(_) => format!(
                ", peers {}{}",
                self.sync
                    .standbys
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                match (&f.mode, &f.peer) {
                    (FailoverMode::Auto, Some(voter)) => {
                        format!(
                            " (automatic failover with {}: the others follow)",
                            voter.host
                        )
                    }
                    _ => String::new(),
                }
            ),
            None => ", no peer".to_string(),
        };
        let storage = match self.sync.storage {
            Storage::Replicated => format!(
                "replicated, fallback scan every {}",
                format_duration(self.sync.fallback_interval)
            ),
            Storage::Shared => {
                "shared (both hosts mount it; sftp-ha replicates nothing)".to_string()
            }
        };
        format!(
            "first role {}, data in {}{}, storage {storage}, {failover}, {}",
            self.role,
            self.data_dir.display(),
            standby,
            self.metrics.words()
        )
    }
}

/// The config file as written: every key optional, each value with its place in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    role: Option<Spanned<RoleName>>,
    data_dir: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    log_level: Option<Spanned<LogLevel>>,
    sync: Option<SyncFile>,
    accounts: Option<AccountsFile>,
    metrics: Option<MetricsFile>,
    failover: Option<FailoverFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverFile {
    mode: Option<Spanned<FailoverMode>>,
    peer: Option<Spanned<String>>,
    witness: Option<Spanned<String>>,
    virtual_ip: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    after: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    textfile: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    hash_method: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncFile {
    peer: Option<Spanned<Peers>>,
    /// The older name of `peer`, on a master.
    standby: Option<Spanned<Peers>>,
    fallback_interval: Option<Spanned<String>>,
    delete: Option<Spanned<bool>>,
    audit_interval: Option<Spanned<String>>,
    storage: Option<Spanned<String>>,
}

/// `[sync] peer`: one address, or a list of them (a master with several
/// standbys). Each entry keeps its place in the file where the format gives
/// one (`None`: the single string, whose place is the key's).
#[derive(Debug)]
struct Peers(Vec<(String, Option<Range<usize>>)>);

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Peers, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Peers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address in quotes, or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Peers, E> {
                Ok(Peers(vec![(v.to_string(), None)]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Peers, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<Spanned<String>>()? {
                    let span = one.span();
                    all.push((one.into_inner(), Some(span)));
                }
                Ok(Peers(all))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; {hint}", hint = read_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", format_invalid(path, *line, *column, key.as_deref(), message, hint))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key path such as `sync.standby`, where one could be named.
        key: Option<String>,
        message: String,
        hint: String,
    },
}

fn read_hint(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            "create it (the package ships a commented one) or point --config at the right file"
        }
        std::io::ErrorKind::PermissionDenied => "run as root or make the file readable",
        _ => "check the file and the file system it is on",
    }
}

fn format_invalid(
    path: &Path,
    line: usize,
    column: usize,
    key: Option<&str>,
    message: &str,
    hint: &str,
) -> String {
    let key = key.map(|k| format!(" key `{k}`:")).unwrap_or_default();
    format!(
        "config error in {}, line {line}, column {column}:{key} {message}; fix: {hint}",
        path.display()
    )
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and checks config text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        let key = unknown_key(err.message()).or_else(|| key_at(text, &span));
        let message =
            err.message()
                .trim()
                .replace('\n', " ")
                .replacen("unknown field", "unknown key", 1);
        let hint = hint_for(key.as_deref(), &message);
        invalid(text, path, span, key, message, hint)
    })?;
    file.check(text, path)
}

fn invalid(
    text: &str,
    path: &Path,
    span: Range<usize>,
    key: Option<String>,
    message: String,
    hint: String,
) -> ConfigError {
    let (line, column) = line_column(text, span.start);
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message,
        hint,
    }
}

impl ConfigFile {
    /// The semantic check: what serde cannot know, with the place of each bad value.
    pub fn check(self, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let fail = |span: Range<usize>, key: &str, message: String, hint: &str| {
            invalid(
                text,
                path,
                span,
                Some(key.to_string()),
                message,
                hint.to_string(),
            )
        };
        let (role_span, role_name) = match self.role {
            Some(role) => (role.span(), role.into_inner()),
            None => {
                return Err(fail(
                    0..0,
                    "role",
                    "missing key: this host's role is never guessed".into(),
                    "add role = \"master\" or role = \"standby\" at the top of the file (or role = \"witness\" on the third host of automatic failover)",
                ));
            }
        };
        let (role, host) = match role_name {
            RoleName::Master => (Role::Master, HostKind::FileHost),
            RoleName::Standby => (Role::Standby, HostKind::FileHost),
            RoleName::Witness => (Role::Standby, HostKind::Witness),
        };
        let data_dir = checked_dir(self.data_dir, DEFAULT_DATA_DIR).map_err(|(span, msg)| {
            fail(
                span,
                "data_dir",
                msg,
                "use an absolute path such as \"/srv/sftp-ha\"",
            )
        })?;
        let state_dir = checked_dir(self.state_dir, DEFAULT_STATE_DIR).map_err(|(span, msg)| {
            fail(
                span,
                "state_dir",
                msg,
                "use an absolute path such as \"/var/lib/sftp-ha\"",
            )
        })?;
        if data_dir.starts_with(&state_dir) || state_dir.starts_with(&data_dir) {
            return Err(fail(
                0..0,
                "state_dir",
                format!(
                    "data_dir ({}) and state_dir ({}) overlap, so users could reach the daemon's state",
                    data_dir.display(),
                    state_dir.display()
                ),
                "keep the two folders apart",
            ));
        }
        let sync = self.sync.unwrap_or_default();
        let (peer_key, peer) = match (sync.peer, sync.standby) {
            (Some(_), Some(s)) => {
                return Err(fail(
                    s.span(),
                    "sync.standby",
                    "both `peer` and `standby` are set; `standby` is the older name of `peer`"
                        .into(),
                    "keep only peer = \"HOST:PORT\"",
                ));
            }
            (Some(p), None) => ("sync.peer", Some(p)),
            (None, Some(s)) if role == Role::Standby => {
                return Err(fail(
                    s.span(),
                    "sync.standby",
                    "a standby does not replicate anywhere while it is a standby; the other host is its `peer`".into(),
                    "write peer = \"HOST:PORT\" (the master's address) under [sync] instead",
                ));
            }
            (None, s) => ("sync.standby", s),
        };
        let mut standbys: Vec<Endpoint> = Vec::new();
        if let Some(list) = peer {
            let key_span = list.span();
            let Peers(entries) = list.into_inner();
            if entries.is_empty() {
                return Err(fail(
                    key_span,
                    peer_key,
                    "the list of standbys is empty".into(),
                    "write at least one address, e.g. peer = [\"standby1.example\", \"standby2.example\"], or leave the key out",
                ));
            }
            for (text, span) in entries {
                let span = span.unwrap_or_else(|| key_span.clone());
                let endpoint = Endpoint::parse(&text).map_err(|msg| {
                    fail(
                        span.clone(),
                        peer_key,
                        format!("`{text}` is not a valid address: {msg}"),
                        "write HOST or HOST:PORT, e.g. \"standby.example:22\"",
                    )
                })?;
                if standbys.contains(&endpoint) {
                    return Err(fail(
                        span,
                        peer_key,
                        format!("`{text}` is listed twice ({endpoint})"),
                        "list each standby once",
                    ));
                }
                standbys.push(endpoint);
            }
        }
        let peer = standbys.first().cloned();
        let duration = |value: Option<Spanned<String>>,
                        key: &str,
                        default: Duration,
                        (min, max): (Duration, Duration)| {
            let Some(s) = value else {
                return Ok(default);
            };
            let hint = format!(
                "write a duration between {} and {}, e.g. \"100s\", \"5m\" or \"1h30m\"",
                format_duration(min),
                format_duration(max)
            );
            let value =
                parse_duration(s.get_ref()).map_err(|msg| fail(s.span(), key, msg, &hint))?;
            if value < min || value > max {
                return Err(fail(
                    s.span(),
                    key,
                    format!("{} is out of range", s.get_ref()),
                    &hint,
                ));
            }
            Ok(value)
        };
        let storage = match &sync.storage {
            None => Storage::Replicated,
            Some(s) => Storage::from_name(s.get_ref()).ok_or_else(|| {
                fail(
                    s.span(),
                    "sync.storage",
                    format!(
                        "`{}` is not a storage mode; accepted: \"replicated\", \"shared\"",
                        s.get_ref()
                    ),
                    "write storage = \"replicated\" (each host has its own data dir; sftp-ha copies the files) or storage = \"shared\" (both hosts mount the same data dir from NFS, CephFS or GlusterFS), or leave it out for \"replicated\"",
                )
            })?,
        };
        let mut ignored = Vec::new();
        if storage == Storage::Shared {
            let spans = [
                (
                    "fallback_interval",
                    sync.fallback_interval.as_ref().map(Spanned::span),
                ),
                ("delete", sync.delete.as_ref().map(Spanned::span)),
                (
                    "audit_interval",
                    sync.audit_interval.as_ref().map(Spanned::span),
                ),
            ];
            for (key, span) in spans {
                if let Some(span) = span {
                    ignored.push((key, line_column(text, span.start).0));
                }
            }
        }
        let fallback_interval = duration(
            sync.fallback_interval,
            "sync.fallback_interval",
            DEFAULT_FALLBACK_INTERVAL,
            FALLBACK_INTERVAL_RANGE,
        )?;
        let audit_interval = duration(
            sync.audit_interval,
            "sync.audit_interval",
            DEFAULT_AUDIT_INTERVAL,
            AUDIT_INTERVAL_RANGE,
        )?;
        let hash_method = match self.accounts.and_then(|a| a.hash_method) {
            None => None,
            Some(m) => Some(Method::from_name(m.get_ref()).ok_or_else(|| {
                fail(
                    m.span(),
                    "accounts.hash_method",
                    format!("`{}` is not a supported method", m.get_ref()),
                    "write \"yescrypt\", \"sha512\" or \"sha256\", or leave it out to follow ENCRYPT_METHOD in /etc/login.defs",
                )
            })?),
        };
        let metrics = self.metrics.unwrap_or_default();
        let textfile = match metrics.textfile {
            None => Textfile::Default,
            Some(t) if t.get_ref().is_empty() => Textfile::Off,
            Some(t) => Textfile::At(checked_textfile(t.get_ref(), &data_dir).map_err(|msg| {
                fail(
                    t.span(),
                    "metrics.textfile",
                    msg,
                    "write an absolute path ending in .prom in a folder node-exporter's textfile collector reads, e.g. \"/var/lib/prometheus/node-exporter/sftp-ha.prom\", or \"\" to write no file",
                )
            })?),
        };
        let listen = match metrics.listen {
            None => None,
            Some(l) if l.get_ref().is_empty() => None,
            Some(l) => Some(checked_listen(l.get_ref()).map_err(|msg| {
                fail(
                    l.span(),
                    "metrics.listen",
                    msg,
                    "write an IP address and a port, e.g. \"127.0.0.1:9781\" or \"[::1]:9781\", or leave it out for no HTTP endpoint",
                )
            })?),
        };
        let failover = checked_failover(
            self.failover.unwrap_or_default(),
            host,
            role_span,
            peer.as_ref(),
            &standbys,
            &fail,
        )?;
        Ok(Config {
            failover,
            host,
            metrics: MetricsConfig { textfile, listen },
            hash_method,
            path: path.to_path_buf(),
            role,
            data_dir,
            state_dir,
            log_level: self.log_level.map(Spanned::into_inner).unwrap_or_default(),
            sync: SyncConfig {
                peer,
                standbys,
                fallback_interval,
                delete: sync.delete.as_ref().is_none_or(|d| *d.get_ref()),
                audit_interval,
                storage,
                ignored,
            },
        })
    }
}

/// Makes a config error at a place: span, key, message, hint.
type Fail<'a> = dyn Fn(Range<usize>, &str, String, &str) -> ConfigError + 'a;

/// `[failover]`: each value checked, and the key loaded where it is needed.
fn checked_failover(
    file: FailoverFile,
    host: HostKind,
    role_span: Range<usize>,
    sync_peer: Option<&Endpoint>,
    standbys: &[Endpoint],
    fail: &Fail,
) -> Result<FailoverConfig, ConfigError> {
    let mut config = FailoverConfig::default();
    let mode_span = file.mode.as_ref().map_or(0..0, Spanned::span);
    config.mode = file.mode.map(Spanned::into_inner).unwrap_or_default();
    if let Some(p) = file.port {
        config.port = u16::try_from(*p.get_ref())
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                fail(
                    p.span(),
                    "failover.port",
                    format!("{} is not a port number (1-65535)", p.get_ref()),
                    "write a UDP port, e.g. port = 7410 (the same on all three hosts)",
                )
            })?;
    }
    let endpoint = |value: Option<Spanned<String>>, key: &str, what: &str| {
        value
            .map(|v| {
                Endpoint::parse_with_port(v.get_ref(), config.port).map_err(|msg| {
                    fail(
                        v.span(),
                        key,
                        format!("`{}` is not a valid address: {msg}", v.get_ref()),
                        &format!("write HOST or HOST:PORT of {what}, e.g. \"witness.example\""),
                    )
                })
            })
            .transpose()
    };
    let file_peer_span = file.peer.as_ref().map(Spanned::span);
    config.peer = endpoint(file.peer, "failover.peer", "the other file host")?.or_else(|| {
        sync_peer.map(|p| Endpoint {
            host: p.host.clone(),
            port: config.port,
        })
    });
    config.witness = endpoint(file.witness, "failover.witness", "the witness")?;
    if let Some(v) = file.virtual_ip {
        config.virtual_ip = Some(crate::failover::vip::VirtualIp::parse(v.get_ref()).map_err(
            |msg| {
                fail(
                    v.span(),
                    "failover.virtual_ip",
                    msg,
                    "write ADDRESS/PREFIX, e.g. \"192.0.2.10/24\" or \"2001:db8::10/64\"",
                )
            },
        )?);
    }
    if let Some(i) = file.interface {
        let name = i.get_ref();
        if name.is_empty()
            || name.len() > 15
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
        {
            return Err(fail(
                i.span(),
                "failover.interface",
                format!("`{name}` is not a network interface name"),
                "write the name `ip link` shows, e.g. \"eth0\", or leave it out for the interface that routes to the peer",
            ));
        }
        config.interface = Some(name.clone());
    }
    if let Some(a) = file.after {
        let (min, max) = FAILOVER_AFTER_RANGE;
        let hint = format!(
            "write a duration between {} and {}, e.g. \"3s\" or \"1s\" (the same on all three hosts)",
            format_duration(min),
            format_duration(max)
        );
        let value = parse_duration(a.get_ref())
            .map_err(|msg| fail(a.span(), "failover.after", msg, &hint))?;
        if value < min || value > max {
            return Err(fail(
                a.span(),
                "failover.after",
                format!("{} is out of range", a.get_ref()),
                &hint,
            ));
        }
        config.after = value;
    }
    let key_span = file.key_file.as_ref().map(Spanned::span);
    if let Some(k) = &file.key_file {
        let path = Path::new(k.get_ref());
        if !path.is_absolute() {
            return Err(fail(
                k.span(),
                "failover.key_file",
                format!("`{}` is not an absolute path", k.get_ref()),
                "write an absolute path, e.g. \"/etc/sftp-ha/failover.key\"",
            ));
        }
        config.key_file = path.to_path_buf();
    }
    let auto = config.mode == FailoverMode::Auto;
    if auto
        && host == HostKind::FileHost
        && standbys.len() > 1
        && let (Some(voter), Some(f)) = (&config.peer, &file_peer_span)
        && !standbys.iter().any(|s| s.host == voter.host)
    {
        // The voter takes over when the master dies: it must hold the files.
        return Err(fail(
            f.clone(),
            "failover.peer",
            format!(
                "`{}` is not one of the hosts of [sync] peer, so it would take over without the files",
                voter.host
            ),
            "with several standbys, name in [failover] peer the standby that votes and takes over automatically (one of [sync] peer), or leave it out: the first entry of [sync] peer is taken",
        ));
    }
    if auto && host == HostKind::FileHost {
        if config.witness.is_none() {
            return Err(fail(
                mode_span,
                "failover.mode",
                "mode = \"auto\" needs a witness: two hosts alone cannot tell a dead master from a broken link, and would both take uploads".into(),
                "set witness = \"HOST\" under [failover] (a third host with the same package and role = \"witness\"), or use mode = \"manual\"",
            ));
        }
        if config.peer.is_none() {
            return Err(fail(
                mode_span,
                "failover.mode",
                "mode = \"auto\" needs the other file host's address".into(),
                "set peer = \"HOST\" under [sync] (or under [failover])",
            ));
        }
    }
    // A file host in manual mode with a witness tells the witness and its
    // peer so (an automatic peer then never takes over from it): signed too.
    let manual_notices = !auto && host == HostKind::FileHost && config.witness.is_some();
    if auto || host == HostKind::Witness || manual_notices {
        let key = crate::failover::key::load(&config.key_file).map_err(|err| {
            let (span, key) = match (&key_span, host) {
                (Some(span), _) => (span.clone(), "failover.key_file"),
                (None, HostKind::Witness) => (role_span.clone(), "role"),
                (None, HostKind::FileHost) => (mode_span.clone(), "failover.mode"),
            };
            fail(
                span,
                key,
                err.to_string(),
                if manual_notices {
                    "with mode = \"manual\", a witness is told that this host runs manual failover, signed with the key: copy the key file of the other hosts here, or remove `witness`"
                } else {
                    "every host of automatic failover needs the same key file: `sftp-ha failover keygen` on one, copied to the other two"
                },
            )
        })?;
        config.key = Some(key);
    }
    Ok(config)
}

/// An absolute, normalised directory that is not `/`.
fn checked_dir(
    value: Option<Spanned<String>>,
    default: &str,
) -> Result<PathBuf, (Range<usize>, String)> {
    let Some(value) = value else {
        return Ok(PathBuf::from(default));
    };
    let text = value.get_ref();
    let path = Path::new(text);
    let problem = if !path.is_absolute() {
        Some("is not an absolute path")
    } else if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        Some("contains `..`")
    } else if path.parent().is_none() {
        Some("is the root directory")
    } else if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    {
        // It ends up in sshd's ChrootDirectory, where spaces, quotes and `%` mean something.
        Some("may only contain letters, digits and `/._-`")
    } else {
        None
    };
    match problem {
        Some(p) => Err((value.span(), format!("`{text}` {p}"))),
        // `components()` drops `.` and doubled slashes, so the daemon compares clean paths.
        None => Ok(path.components().collect()),
    }
}

/// An absolute path ending in `.prom` (the only files the textfile collector
/// reads), outside the data dir (users must not reach a file root rewrites).
fn checked_textfile(text: &str, data_dir: &Path) -> Result<PathBuf, String> {
    let path = Path::new(text);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let problem = if !path.is_absolute() {
        "is not an absolute path"
    } else if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        "contains `..`"
    } else if text.ends_with('/') || !name.ends_with(".prom") || name == ".prom" {
        "does not name a file ending in `.prom`, the only files node-exporter's textfile collector reads"
    } else if text.chars().any(char::is_control) {
        "contains a control character"
    } else if path.starts_with(data_dir) {
        "is inside data_dir, where users could reach it"
    } else {
        return Ok(path.components().collect());
    };
    Err(format!("`{text}` {problem}"))
}

/// `IPv4:PORT` or `[IPv6]:PORT`, with a port other than 0.
fn checked_listen(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        format!("`{text}` is not an IP address with a port (a host name is not accepted)")
    })?;
    if addr.port() == 0 {
        return Err(format!("`{text}` has port 0"));
    }
    Ok(addr)
}

/// The key named in serde's "unknown field `x`" message.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// The dotted path of the innermost key whose key or value covers `span`.
/// Tables are searched whole: a `[table]` header's span does not cover its keys.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    fn search(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
        let covers = |r: Range<usize>| r.start <= offset && offset < r.end.max(r.start + 1);
        for (key, value) in table.iter() {
            path.push(key.get_ref().to_string());
            if let toml::de::DeValue::Table(inner) = value.get_ref()
                && search(inner, offset, path)
            {
                return true;
            }
            if covers(key.span()) || covers(value.span()) {
                return true;
            }
            path.pop();
        }
        false
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    search(doc.get_ref(), span.start, &mut path).then(|| path.join("."))
}

/// How to fix a serde-level error, by key.
fn hint_for(key: Option<&str>, message: &str) -> String {
    if message.starts_with("unknown key") {
        return "correct the key's spelling or remove it; the shipped /etc/sftp-ha/config.toml documents every key"
            .into();
    }
    match key {
        Some("role") => "write role = \"master\", role = \"standby\" or role = \"witness\"".into(),
        Some("log_level") => {
            "write one of \"error\", \"warn\", \"info\", \"debug\", \"trace\"".into()
        }
        Some("data_dir" | "state_dir") => "write an absolute path in quotes".into(),
        Some("sync.standby" | "sync.peer") => {
            "write HOST or HOST:PORT in quotes, e.g. \"standby.example:22\", or a list of them, e.g. [\"s1.example\", \"s2.example:2222\"]".into()
        }
        Some("sync.delete") => "write delete = true or delete = false (no quotes)".into(),
        Some("sync.storage") => {
            "write storage = \"replicated\" or storage = \"shared\" (in quotes)".into()
        }
        Some("sync.fallback_interval" | "sync.audit_interval") => {
            "write a duration in quotes, e.g. \"100s\" or \"5m\"".into()
        }
        Some("sync") => "[sync] is a table: put its keys under a [sync] line".into(),
        Some("accounts.hash_method") => {
            "write \"yescrypt\", \"sha512\" or \"sha256\" in quotes".into()
        }
        Some("metrics.textfile") => {
            "write an absolute path ending in .prom in quotes, or \"\" to write no file".into()
        }
        Some("metrics.listen") => {
            "write an IP address and a port in quotes, e.g. \"127.0.0.1:9781\"".into()
        }
        Some("metrics") => "[metrics] is a table: put its keys under a [metrics] line".into(),
        Some("failover.mode") => "write mode = \"manual\" or mode = \"auto\"".into(),
        Some("failover.port") => "write a port number without quotes, e.g. port = 7410".into(),
        Some(k) if k.starts_with("failover.") => {
            "write the value in quotes, as the shipped config.toml shows".into()
        }
        Some("failover") => "[failover] is a table: put its keys under a [failover] line".into(),
        _ => "correct the TOML syntax at that place".into(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("/etc/sftp-ha/config.toml")).expect("config should parse")
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("/etc/sftp-ha/config.toml"))
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn minimal_master_gets_documented_defaults() {
        let c = parse_ok("role = \"master\"\n");
        assert_eq!(c.role, Role::Master);
        assert_eq!(c.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.sync.fallback_interval, Duration::from_secs(100));
        assert_eq!(c.sync.peer, None);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(
            c.warnings().len(),
            1,
            "a master without standby is warned about"
        );
    }

    #[test]
    fn full_master() {
        let c = parse_ok(
            "role = \"master\"\ndata_dir = \"/data//sftp/\"\nlog_level = \"debug\"\n[sync]\nstandby = \"standby.example:2222\"\nfallback_interval = \"1m40s\"\n",
        );
        assert_eq!(c.data_dir, Path::new("/data/sftp"));
        assert_eq!(
            c.sync.peer,
            Some(Endpoint {
                host: "standby.example".into(),
                port: 2222
            })
        );
        assert_eq!(c.sync.fallback_interval, Duration::from_secs(100));
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../etc/sftp-ha/config.toml");
        let c = parse_ok(text);
        assert_eq!(c.role, Role::Master);
    }

    #[test]
    fn shipped_config_with_every_example_uncommented_is_valid() {
        let text: String = include_str!("../etc/sftp-ha/config.toml")
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // The example witness in manual mode needs the key (see below).
        let (_dir, key) = key_file();
        let text = text.replace("\"/etc/sftp-ha/failover.key\"", &format!("\"{key}\""));
        let c = parse_ok(&text);
        assert_eq!(
            c.metrics.textfile,
            Textfile::At(PathBuf::from(DEFAULT_TEXTFILE_DIR).join(DEFAULT_TEXTFILE_NAME))
        );
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9781".parse().unwrap()));
        assert!(c.sync.peer.is_some());
    }

    #[test]
    fn unknown_key_is_named_with_line_and_column() {
        let e = parse_err("role = \"master\"\n\nrolee = 1\n");
        assert!(e.contains("line 3, column 1"), "{e}");
        assert!(e.contains("key `rolee`"), "{e}");
        assert!(e.contains("/etc/sftp-ha/config.toml"), "{e}");
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn unknown_key_in_table() {
        let e = parse_err("role = \"master\"\n[sync]\nstandbi = \"x\"\n");
        assert!(e.contains("line 3") && e.contains("`standbi`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse_err("role = \"master\"\n[sync]\nfallback_interval = 100\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("key `sync.fallback_interval`"), "{e}");
        assert!(e.contains("\"100s\""), "{e}");
    }

    #[test]
    fn bad_role_value() {
        let e = parse_err("role = \"primary\"\n");
        assert!(e.contains("line 1, column 8"), "{e}");
        assert!(e.contains("key `role`"), "{e}");
        assert!(e.contains("master"), "{e}");
    }

    #[test]
    fn missing_role_is_refused() {
        let e = parse_err("data_dir = \"/srv/x\"\n");
        assert!(e.contains("key `role`") && e.contains("missing"), "{e}");
    }

    #[test]
    fn syntax_error_has_place() {
        let e = parse_err("role = \"master\"\ndata_dir = \"/srv\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn standby_on_standby_is_refused() {
        let e = parse_err("role = \"standby\"\n[sync]\nstandby = \"a:22\"\n");
        assert!(
            e.contains("line 3, column 11") && e.contains("sync.standby"),
            "{e}"
        );
    }

    #[test]
    fn the_peer_is_set_on_either_role_and_standby_is_its_older_name() {
        let c = parse_ok("role = \"standby\"\n[sync]\npeer = \"m.example\"\n");
        assert_eq!(
            c.sync.peer.map(|p| p.to_string()),
            Some("m.example:22".into())
        );
        let c = parse_ok("role = \"master\"\n[sync]\nstandby = \"s.example:2222\"\n");
        assert_eq!(
            c.sync.peer.map(|p| p.to_string()),
            Some("s.example:2222".into())
        );
        let e = parse_err("role = \"standby\"\n[sync]\nstandby = \"a:22\"\n");
        assert!(e.contains("peer = "), "the fix names the key to use: {e}");
        let e = parse_err("role = \"master\"\n[sync]\npeer = \"a\"\nstandby = \"b\"\n");
        assert!(
            e.contains("both `peer` and `standby`") && e.contains("line 4"),
            "{e}"
        );
        let e = parse_err("role = \"master\"\n[sync]\npeer = \"a:0\"\n");
        assert!(
            e.contains("sync.peer") && e.contains("not a valid address"),
            "{e}"
        );
    }

    #[test]
    fn relative_or_root_dirs_are_refused() {
        assert!(parse_err("role = \"master\"\ndata_dir = \"srv\"\n").contains("absolute"));
        assert!(parse_err("role = \"master\"\ndata_dir = \"/\"\n").contains("root directory"));
        assert!(parse_err("role = \"master\"\ndata_dir = \"/srv/../etc\"\n").contains(".."));
        assert!(
            parse_err("role = \"master\"\ndata_dir = \"/srv/a b\"\n").contains("may only contain")
        );
        assert!(
            parse_err("role = \"master\"\ndata_dir = \"/srv/%u\"\n").contains("may only contain")
        );
        assert!(
            parse_err("role = \"master\"\ndata_dir = \"/var/lib/sftp-ha/d\"\n").contains("overlap")
        );
    }

    #[test]
    fn hash_method() {
        let c = parse_ok("role = \"master\"\n[accounts]\nhash_method = \"SHA512\"\n");
        assert_eq!(c.hash_method, Some(Method::Sha512));
        assert!(
            parse_err("role = \"master\"\n[accounts]\nhash_method = \"md5\"\n")
                .contains("line 3, column 15")
        );
    }

    #[test]
    fn storage_is_replicated_unless_shared_is_asked_for() {
        let c = parse_ok("role = \"master\"\n");
        assert_eq!(c.sync.storage, Storage::Replicated);
        assert!(!c.shared());
        assert_eq!(c.sync_root(), c.data_dir);
        assert!(
            c.summary().contains("storage replicated"),
            "{}",
            c.summary()
        );
        let c = parse_ok(
            "role = \"standby\"\n[sync]\npeer = \"master.example\"\nstorage = \"shared\"\n",
        );
        assert_eq!(c.sync.storage, Storage::Shared);
        assert!(c.shared());
        assert_eq!(c.sync_root(), Path::new("/var/lib/sftp-ha/peer"));
        assert!(c.summary().contains("storage shared"), "{}", c.summary());
        assert_eq!(c.warnings(), Vec::<String>::new());
        let c = parse_ok("role = \"master\"\n[sync]\nstorage = \"replicated\"\n");
        assert_eq!(c.sync.storage, Storage::Replicated);
    }

    #[test]
    fn an_unknown_storage_mode_names_the_place_and_the_accepted_values() {
        let e = parse_err("role = \"master\"\n[sync]\nstorage = \"nfs\"\n");
        assert!(e.contains("line 3, column 11"), "{e}");
        assert!(e.contains("key `sync.storage`"), "{e}");
        assert!(e.contains("\"replicated\", \"shared\""), "{e}");
        assert!(e.contains("fix: "), "{e}");
        let e = parse_err("role = \"master\"\n[sync]\nstorage = true\n");
        assert!(e.contains("sync.storage"), "{e}");
    }

    #[test]
    fn replication_settings_with_shared_storage_are_warned_about_with_their_line() {
        let c = parse_ok(
            "role = \"master\"\n[sync]\npeer = \"standby.example\"\nstorage = \"shared\"\nfallback_interval = \"10s\"\ndelete = false\naudit_interval = \"1m\"\n",
        );
        let w = c.warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("line 5: [sync] fallback_interval is ignored with storage = \"shared\""),
            "{w:?}"
        );
        assert!(w[1].contains("line 6: [sync] delete is ignored"), "{w:?}");
        assert!(
            w[2].contains("line 7: [sync] audit_interval is ignored"),
            "{w:?}"
        );
        // Replicated: the same settings are what they always were.
        let c = parse_ok("role = \"master\"\n[sync]\npeer = \"s\"\nfallback_interval = \"10s\"\n");
        assert_eq!(c.warnings(), Vec::<String>::new());
        // Without a peer a shared master cannot hand over: said so.
        let c = parse_ok("role = \"master\"\n[sync]\nstorage = \"shared\"\n");
        assert!(
            c.warnings()[0].contains("cannot be asked for its role"),
            "{:?}",
            c.warnings()
        );
    }

    #[test]
    fn delete_and_audit() {
        let c = parse_ok("role = \"master\"\n");
        assert!(c.sync.delete);
        assert_eq!(c.sync.audit_interval, Duration::from_secs(3600));
        let c = parse_ok("role = \"master\"\n[sync]\ndelete = false\naudit_interval = \"10m\"\n");
        assert!(!c.sync.delete);
        assert_eq!(c.sync.audit_interval, Duration::from_secs(600));
        assert!(
            parse_err("role = \"master\"\n[sync]\naudit_interval = \"5s\"\n")
                .contains("between 1m and 7d")
        );
        assert!(parse_err("role = \"master\"\n[sync]\ndelete = \"yes\"\n").contains("sync.delete"));
    }

    #[test]
    fn metrics_defaults_and_settings() {
        let c = parse_ok("role = \"master\"\n");
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.metrics.textfile, Textfile::Default);
        assert_eq!(c.metrics.listen, None);
        let c = parse_ok(
            "role = \"standby\"\n[metrics]\ntextfile = \"/var/lib/x//sftp-ha.prom\"\nlisten = \"127.0.0.1:9781\"\n",
        );
        assert_eq!(
            c.metrics.textfile,
            Textfile::At("/var/lib/x/sftp-ha.prom".into())
        );
        assert_eq!(
            c.metrics.textfile_path(),
            Some(PathBuf::from("/var/lib/x/sftp-ha.prom"))
        );
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9781".parse().unwrap()));
        assert!(
            c.summary()
                .contains("metrics to /var/lib/x/sftp-ha.prom and http://127.0.0.1:9781/metrics"),
            "{}",
            c.summary()
        );
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.contains("/var/lib/x does not exist")),
            "{:?}",
            c.warnings()
        );
        let c =
            parse_ok("role = \"master\"\n[metrics]\ntextfile = \"\"\nlisten = \"[::1]:9781\"\n");
        assert_eq!(c.metrics.textfile, Textfile::Off);
        assert_eq!(c.metrics.textfile_path(), None);
        assert_eq!(c.metrics.listen, Some("[::1]:9781".parse().unwrap()));
        let c = parse_ok("role = \"master\"\n[metrics]\ntextfile = \"\"\nlisten = \"\"\n");
        assert!(c.summary().ends_with("metrics off"), "{}", c.summary());
    }

    #[test]
    fn bad_metrics_settings_are_refused_with_place_and_fix() {
        let e = parse_err("role = \"master\"\n[metrics]\ntextfile = \"sftp-ha.prom\"\n");
        assert!(e.contains("line 3, column 12"), "{e}");
        assert!(
            e.contains("key `metrics.textfile`") && e.contains("absolute"),
            "{e}"
        );
        assert!(e.contains("fix:"), "{e}");
        for bad in [
            "/var/lib/x/sftp-ha.txt",
            "/var/lib/x/",
            "/var/lib/x/.prom",
            "/var/lib/prom",
        ] {
            let e = parse_err(&format!(
                "role = \"master\"\n[metrics]\ntextfile = \"{bad}\"\n"
            ));
            assert!(e.contains("ending in `.prom`"), "{bad}: {e}");
        }
        let e = parse_err("role = \"master\"\n[metrics]\ntextfile = \"/var/../x.prom\"\n");
        assert!(e.contains("`..`"), "{e}");
        let e = parse_err("role = \"master\"\n[metrics]\ntextfile = \"/srv/sftp-ha/u/x.prom\"\n");
        assert!(e.contains("inside data_dir"), "{e}");
        let e = parse_err("role = \"master\"\n[metrics]\ntextfile = 1\n");
        assert!(e.contains("key `metrics.textfile`"), "{e}");
        for bad in [
            "localhost:9781",
            "127.0.0.1",
            "::1:9781",
            "127.0.0.1:0",
            "127.0.0.1:70000",
        ] {
            let e = parse_err(&format!(
                "role = \"master\"\n[metrics]\nlisten = \"{bad}\"\n"
            ));
            assert!(
                e.contains("line 3, column 10") && e.contains("key `metrics.listen`"),
                "{bad}: {e}"
            );
            assert!(e.contains("127.0.0.1:9781"), "{bad}: {e}");
        }
        let e = parse_err("role = \"master\"\n[metrics]\nlisen = \"127.0.0.1:9781\"\n");
        assert!(e.contains("unknown key `lisen`"), "{e}");
        let e = parse_err("role = \"master\"\nmetrics = \"on\"\n");
        assert!(e.contains("key `metrics`"), "{e}");
    }

    #[test]
    fn fallback_interval_range() {
        assert!(
            parse_err("role = \"master\"\n[sync]\nfallback_interval = \"0s\"\n")
                .contains("out of range")
        );
        assert!(
            parse_err("role = \"master\"\n[sync]\nfallback_interval = \"2d\"\n")
                .contains("out of range")
        );
        assert!(
            parse_err("role = \"master\"\n[sync]\nfallback_interval = \"soon\"\n")
                .contains("sync.fallback_interval")
        );
    }

    #[test]
    fn endpoints() {
        let ep = |s| Endpoint::parse(s);
        assert_eq!(ep("h").map(|e| e.port), Ok(22));
        assert_eq!(ep("h:2222").map(|e| e.to_string()), Ok("h:2222".into()));
        assert_eq!(
            ep("[2001:db8::2]:23").map(|e| e.to_string()),
            Ok("[2001:db8::2]:23".into())
        );
        assert_eq!(ep("[::1]").map(|e| e.host), Ok("::1".into()));
        assert!(ep("2001:db8::2").is_err());
        assert!(ep("h:0").is_err());
        assert!(ep("h:99999").is_err());
        assert!(ep(":22").is_err());
        assert!(ep("a b:22").is_err());
        assert!(ep("[::1").is_err());
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_column("ab", 100), (1, 3));
    }

    fn key_file() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.key");
        crate::failover::key::generate(&path, false).unwrap();
        let text = path.display().to_string();
        (dir, text)
    }

    #[test]
    fn automatic_failover_with_a_witness_and_a_key() {
        let (_dir, key) = key_file();
        let c = parse_ok(&format!(
            "role = \"master\"\n[sync]\npeer = \"10.0.0.2\"\n[failover]\nmode = \"auto\"\nwitness = \"witness.example\"\nvirtual_ip = \"192.0.2.10/24\"\nafter = \"1s\"\nkey_file = \"{key}\"\n"
        ));
        let f = &c.failover;
        assert_eq!(f.mode, FailoverMode::Auto);
        assert_eq!(
            f.peer,
            Some(Endpoint {
                host: "10.0.0.2".into(),
                port: DEFAULT_FAILOVER_PORT
            }),
            "the peer defaults to [sync] peer's host, on the failover port"
        );
        assert_eq!(
            f.witness.as_ref().map(|w| w.port),
            Some(DEFAULT_FAILOVER_PORT)
        );
        assert_eq!(f.after, Duration::from_secs(1));
        assert!(f.key.is_some());
        assert_eq!(
            f.virtual_ip.map(|v| v.to_string()).as_deref(),
            Some("192.0.2.10/24")
        );
        assert!(
            c.summary().contains("failover auto after 1s with witness"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn manual_is_the_default_and_needs_no_key() {
        let c = parse_ok("role = \"master\"\n");
        assert_eq!(c.failover.mode, FailoverMode::Manual);
        assert_eq!(c.failover.key, None);
        assert_eq!(c.host, HostKind::FileHost);
        let c = parse_ok(
            "role = \"master\"\n[sync]\npeer = \"b\"\n[failover]\nvirtual_ip = \"192.0.2.10/24\"\n",
        );
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.contains("only with mode = \"auto\"")),
            "{:?}",
            c.warnings()
        );
    }

    #[test]
    fn manual_with_a_witness_needs_the_key_to_tell_the_witness() {
        let e = parse_err(
            "role = \"master\"\n[sync]\npeer = \"b\"\n[failover]\nwitness = \"w\"\nkey_file = \"/nonexistent/failover.key\"\n",
        );
        assert!(
            e.contains("line 6")
                && e.contains("`failover.key_file`")
                && e.contains("runs manual failover"),
            "{e}"
        );
        let (_dir, key) = key_file();
        let c = parse_ok(&format!(
            "role = \"master\"\n[sync]\npeer = \"b\"\n[failover]\nwitness = \"w\"\nkey_file = \"{key}\"\n"
        ));
        assert_eq!(c.failover.mode, FailoverMode::Manual);
        assert!(c.failover.key.is_some());
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn auto_without_a_witness_or_a_key_is_refused_with_place_and_reason() {
        let e = parse_err("role = \"master\"\n[sync]\npeer = \"b\"\n[failover]\nmode = \"auto\"\n");
        assert!(
            e.contains("line 5") && e.contains("`failover.mode`") && e.contains("needs a witness"),
            "{e}"
        );
        let e = parse_err(
            "role = \"master\"\n[sync]\npeer = \"b\"\n[failover]\nmode = \"auto\"\nwitness = \"w\"\nkey_file = \"/nonexistent/failover.key\"\n",
        );
        assert!(
            e.contains("line 7")
                && e.contains("`failover.key_file`")
                && e.contains("/nonexistent/failover.key")
                && e.contains("keygen"),
            "{e}"
        );
        let e = parse_err("role = \"master\"\n[failover]\nmode = \"auto\"\nwitness = \"w\"\n");
        assert!(e.contains("other file host"), "{e}");
    }

    #[test]
    fn the_peer_may_be_a_list_of_standbys_the_first_being_the_peer() {
        let c =
            parse_ok("role = \"master\"\n[sync]\npeer = [\"s1.example\", \"s2.example:2222\"]\n");
        let all: Vec<String> = c.sync.standbys.iter().map(ToString::to_string).collect();
        assert_eq!(all, ["s1.example:22", "s2.example:2222"]);
        assert_eq!(c.sync.peer, c.sync.standbys.first().cloned());
        // The older name takes a list too; one string is a list of one.
        let c = parse_ok("role = \"master\"\n[sync]\nstandby = [\"s1\", \"s2\"]\n");
        assert_eq!(c.sync.standbys.len(), 2);
        let c = parse_ok("role = \"master\"\n[sync]\npeer = \"s1\"\n");
        assert_eq!(c.sync.standbys.len(), 1);
        let c = parse_ok("role = \"master\"\n");
        assert!(c.sync.standbys.is_empty());
    }

    #[test]
    fn a_list_of_standbys_with_a_bad_or_repeated_entry_is_refused_at_the_entry() {
        let e = parse_err("role = \"master\"\n[sync]\npeer = [\"s1\",\n  \"s2:0\"]\n");
        assert!(
            e.contains("line 4") && e.contains("`sync.peer`") && e.contains("s2:0"),
            "{e}"
        );
        // The same host and port, written two ways.
        let e = parse_err("role = \"master\"\n[sync]\npeer = [\"s1\", \"s1:22\"]\n");
        assert!(
            e.contains("line 3") && e.contains("listed twice") && e.contains("once"),
            "{e}"
        );
        let e = parse_err("role = \"master\"\n[sync]\npeer = []\n");
        assert!(e.contains("empty"), "{e}");
        let e = parse_err("role = \"master\"\n[sync]\npeer = [1]\n");
        assert!(
            e.contains("`sync.peer`") && e.contains("a list of them"),
            "{e}"
        );
    }

    #[test]
    fn automatic_failover_with_several_standbys_votes_with_one_of_them() {
        let (_dir, key) = key_file();
        let auto = |extra: &str| {
            format!(
                "role = \"master\"\n[sync]\npeer = [\"b\", \"c\"]\n[failover]\nmode = \"auto\"\nwitness = \"w\"\nkey_file = \"{key}\"\n{extra}"
            )
        };
        let c = parse_ok(&auto(""));
        assert_eq!(c.failover.peer.as_ref().map(|p| p.host.as_str()), Some("b"));
        assert!(
            c.summary()
                .contains("peers b:22, c:22 (automatic failover with b: the others follow)"),
            "{}",
            c.summary()
        );
        let c = parse_ok(&auto("peer = \"c\"\n"));
        assert_eq!(c.failover.peer.as_ref().map(|p| p.host.as_str()), Some("c"));
        let e = parse_err(&auto("peer = \"d\"\n"));
        assert!(
            e.contains("line 8")
                && e.contains("`failover.peer`")
                && e.contains("`d` is not one of the hosts of [sync] peer"),
            "{e}"
        );
        let c = parse_ok(
            "role = \"master\"\n[sync]\npeer = [\"b\", \"c\"]\n[failover]\nmode = \"manual\"\n",
        );
        assert_eq!(c.sync.standbys.len(), 2);
        assert!(c.summary().contains("peers b:22, c:22"), "{}", c.summary());
    }

    #[test]
    fn a_witness_needs_only_its_key() {
        let (_dir, key) = key_file();
        let c = parse_ok(&format!(
            "role = \"witness\"\n[failover]\nkey_file = \"{key}\"\nport = 7411\n"
        ));
        assert_eq!(c.host, HostKind::Witness);
        assert_eq!(c.failover.port, 7411);
        assert!(c.summary().starts_with("witness: votes"), "{}", c.summary());
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let e = parse_err("role = \"witness\"\n[failover]\nkey_file = \"/nonexistent.key\"\n");
        assert!(e.contains("`failover.key_file`"), "{e}");
    }

    #[test]
    fn bad_failover_values_are_refused_with_place_and_fix() {
        for (text, key, words) in [
            ("after = \"100ms\"", "failover.after", "out of range"),
            ("after = \"soon\"", "failover.after", "fix:"),
            ("port = 0", "failover.port", "not a port"),
            ("port = 70000", "failover.port", "not a port"),
            (
                "virtual_ip = \"192.0.2.10/33\"",
                "failover.virtual_ip",
                "fix:",
            ),
            ("virtual_ip = \"not-an-ip\"", "failover.virtual_ip", "fix:"),
            (
                "interface = \"eth0; rm\"",
                "failover.interface",
                "not a network interface",
            ),
            (
                "witness = \"a b\"",
                "failover.witness",
                "not a valid address",
            ),
            ("mode = \"sometimes\"", "failover.mode", "fix:"),
            (
                "key_file = \"relative.key\"",
                "failover.key_file",
                "absolute",
            ),
        ] {
            let e = parse_err(&format!("role = \"master\"\n[failover]\n{text}\n"));
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(words),
                "{text}: {e}"
            );
            assert!(e.contains("line 3"), "{text}: {e}");
        }
    }
}
