//! The journal of what users do over SFTP.
//!
//! sshd's internal-sftp runs inside the user's chroot, where there is no
//! /dev/log, so its log (`-l INFO`: sessions, uploads with their size,
//! renames, deletes) would be lost. The daemon binds one datagram socket in the
//! data dir and hard-links it into every managed chroot as `dev/log`. The kernel
//! tells us the sender's uid with each message (SCM_CREDENTIALS), so every event
//! is logged with the real user, whatever the message claims, as structured
//! fields: `journalctl -u sftp-ha SFTP_HA_USER=bob`.
//!
//! Each user's lines are rate-limited (numbers and reasons in [`limit`]), so that
//! one user's flood of small downloads cannot push the unit over journald's own
//! rate limit, which would drop every user's lines. The lines about changes
//! (uploads, renames, deletes, mkdir/rmdir, logins) have a larger budget than
//! downloads, and a separate one, so downloads never crowd them out. Lines over
//! budget are counted; a warning with the user says when the limiting starts,
//! then every 10 s one gives the counts per kind. The daemon's main loop calls
//! [`SftpLog::flush_due`] by [`SftpLog::deadline`], so the summary comes even
//! after the user has gone quiet.

mod limit;

use std::collections::HashMap;
use std::fs;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};

use limit::{Decision, Kind, UserRateLimit};

/// The socket, in the data dir but outside every chroot.
use crate::layout::LOG_SOCKET as SOCKET_NAME;
/// Longer messages are cut: they come from users' sessions.
const MAX_MESSAGE: usize = 4096;
/// Messages read per `drain`: a sender that never lets the queue empty must not
/// keep the main loop (signals, the watchdog ping) waiting; poll calls again.
const MAX_PER_DRAIN: usize = 1000;

/// What internal-sftp reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftpEvent {
    SessionOpened {
        from: String,
    },
    SessionClosed,
    /// A file closed after writing: an upload of `bytes`.
    Upload {
        path: String,
        bytes: u64,
    },
    Download {
        path: String,
        bytes: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// Anything else (open, stat, errors): logged at debug level.
    Other(String),
}

/// The message part of a syslog datagram (`<PRI>Mmm dd hh:mm:ss tag[pid]: message`).
pub fn syslog_message(datagram: &[u8]) -> String {
    let text = String::from_utf8_lossy(&datagram[..datagram.len().min(MAX_MESSAGE)]);
    let text = text.trim_end_matches(['\n', '\0']);
    let body = match text.find("]: ") {
        Some(i) => &text[i + 3..],
        None => text.split_once(": ").map_or(text, |(_, m)| m),
    };
    // Control characters in a path would forge journal lines; make them visible.
    body.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Parses an internal-sftp log message (OpenSSH sftp-server's wording).
pub fn parse(message: &str) -> SftpEvent {
    let quoted = |s: &str| -> Option<String> {
        let start = s.find('"')? + 1;
        let end = s.rfind('"')?;
        (end >= start).then(|| s[start..end].to_string())
    };
    let other = || SftpEvent::Other(message.to_string());
    if let Some(rest) = message.strip_prefix("session opened for local user ") {
        let from = rest
            .split_once(" from [")
            .map_or("", |(_, f)| f.trim_end_matches(']'));
        return SftpEvent::SessionOpened {
            from: from.to_string(),
        };
    }
    if message.starts_with("session closed for local user ") {
        return SftpEvent::SessionClosed;
    }
    if let Some(rest) = message.strip_prefix("close ") {
        let Some(at) = rest.rfind("\" bytes read ") else {
            return other();
        };
        let path = quoted(&rest[..=at]).unwrap_or_default();
        let mut words = rest[at..].split_whitespace();
        let read = words.nth(3).and_then(|w| w.parse().ok()).unwrap_or(0);
        let written = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
        return if written > 0 {
            SftpEvent::Upload {
                path,
                bytes: written,
            }
        } else if read > 0 {
            SftpEvent::Download { path, bytes: read }
        } else {
            other()
        };
    }
    // `rename` for SSH_FXP_RENAME, `posix-rename` for OpenSSH's extension (what sftp uses).
    let rename = message
        .strip_prefix("rename old \"")
        .or_else(|| message.strip_prefix("posix-rename old \""));
    if let Some(rest) = rename {
        if let Some((from, to)) = rest.split_once("\" new \"") {
            return SftpEvent::Rename {
                from: from.to_string(),
                to: to.trim_end_matches('"').to_string(),
            };
        }
        return other();
    }
    let named = |prefix: &str| message.strip_prefix(prefix).and_then(quoted);
    if let Some(path) = named("remove name ") {
        return SftpEvent::Remove { path };
    }
    if let Some(path) = named("rmdir name ") {
        return SftpEvent::Rmdir { path };
    }
    if let Some(rest) = message.strip_prefix("mkdir name ") {
        let path = rest.rsplit_once(" mode ").map_or(rest, |(p, _)| p);
        if let Some(path) = quoted(path) {
            return SftpEvent::Mkdir { path };
        }
    }
    other()
}

/// True if `path` (not followed) is the file `socket` describes.
fn same_file(path: &Path, socket: &Option<fs::Metadata>) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(path), socket) {
        (Ok(m), Some(s)) => m.dev() == s.dev() && m.ino() == s.ino(),
        _ => false,
    }
}

impl SftpEvent {
    /// What the event counts as for the rate limit.
    fn kind(&self) -> Kind {
        match self {
            SftpEvent::SessionOpened { .. } => Kind::Login,
            SftpEvent::SessionClosed => Kind::Logout,
            SftpEvent::Upload { .. } => Kind::Upload,
            SftpEvent::Download { .. } => Kind::Download,
            SftpEvent::Rename { .. } => Kind::Rename,
            SftpEvent::Remove { .. } => Kind::Delete,
            SftpEvent::Mkdir { .. } => Kind::Mkdir,
            SftpEvent::Rmdir { .. } => Kind::Rmdir,
            SftpEvent::Other(_) => Kind::Other,
        }
    }
}

pub struct SftpLog {
    socket: UnixDatagram,
    path: PathBuf,
    names: HashMap<u32, String>,
    limit: UserRateLimit,
}

impl SftpLog {
    /// Binds the socket in `data_dir` (replacing a stale one from an earlier run).
    /// With shared storage `host` names this host, so that the two hosts'
    /// daemons never replace each other's socket ([`socket_name`]).
    pub fn bind(data_dir: &Path, host: Option<&str>) -> std::io::Result<SftpLog> {
        let path = data_dir.join(socket_name(host));
        let _ = fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::PassCred, &true).map_err(std::io::Error::from)?;
        // Users' sessions (their own uid) must be able to send to it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
        Ok(SftpLog {
            socket,
            path,
            names: HashMap::new(),
            limit: UserRateLimit::default(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Makes `<data_dir>/<user>/dev/log` a hard link to the socket for every
    /// managed user, replacing links to an earlier run's socket. Without
    /// `link` (a standby on shared storage, where the master's daemon owns
    /// the links) only the names of the managed users are refreshed.
    pub fn link_chroots(&mut self, data_dir: &Path, link: bool) {
        let Ok((snapshot, _)) = crate::accounts::system::snapshot() else {
            return;
        };
        self.names = snapshot
            .accounts
            .values()
            .filter(|a| a.managed)
            .map(|a| (a.uid, a.name.clone()))
            .collect();
        if !link {
            return;
        }
        let socket = fs::symlink_metadata(&self.path).ok();
        for name in self.names.values() {
            let root = data_dir.join(name);
            // Only inside a real, root-owned chroot folder; never through a symlink.
            if !fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let dev = root.join("dev");
            if !fs::symlink_metadata(&dev).is_ok_and(|m| m.is_dir()) {
                let _ = fs::remove_file(&dev);
                if let Err(err) = fs::DirBuilder::new().mode(0o755).create(&dev) {
                    tracing::warn!(path = %dev.display(), "cannot create: {err}");
                    continue;
                }
            }
            let link = dev.join("log");
            // Already this socket: left alone. Replacing it anyway would
            // touch `dev` at every look (each REWATCH_EVERY), and the sync
            // would send that folder's new mtime and save its index again.
            if same_file(&link, &socket) {
                continue;
            }
            let _ = fs::remove_file(&link);
            if let Err(err) = fs::hard_link(&self.path, &link) {
                tracing::warn!(path = %link.display(), "cannot link the SFTP log socket: {err}");
            }
        }
    }

    /// Reads the waiting messages (up to [`MAX_PER_DRAIN`]) and logs each for its sender.
    pub fn drain(&mut self) {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        for _ in 0..MAX_PER_DRAIN {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (bytes, uid) = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let uid = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::ScmCredentials(cred) => Some(cred.uid()),
                            _ => None,
                        })
                    });
                    (msg.bytes, uid)
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(err) => {
                    tracing::warn!("reading the SFTP log socket failed: {err}");
                    return;
                }
            };
            let event = parse(&syslog_message(&buf[..bytes]));
            let kind = event.kind();
            // Lines the log level hides would not reach the journal: they cost no budget.
            let shown = if kind == Kind::Other {
                tracing::enabled!(tracing::Level::DEBUG)
            } else {
                tracing::enabled!(tracing::Level::INFO)
            };
            if !shown {
                continue;
            }
            let user = self.user_name(uid);
            match self.limit.record(uid, kind, Instant::now()) {
                Decision::Log => log_event(&user, event),
                Decision::SuppressWithNotice => {
                    let (burst, per_second) = kind.class().budget();
                    tracing::warn!(
                        user,
                        "SFTP log of {user} rate-limited from now on: more than {burst} {} at once or {per_second} a second; \
                         the lines not logged are counted in a summary every {} s",
                        kind.class().words(),
                        limit::SUMMARY_EVERY.as_secs()
                    );
                }
                Decision::Suppress => {}
            }
        }
    }

    /// When [`SftpLog::flush_due`] has a summary to log, if a user is rate-limited.
    pub fn deadline(&self) -> Option<Instant> {
        self.limit.deadline()
    }

    /// Logs the summaries of rate-limited users that are due, and forgets idle users.
    pub fn flush_due(&mut self) {
        for summary in self.limit.flush_due(Instant::now()) {
            let user = self.user_name(summary.uid);
            let total = summary.counts.total();
            tracing::warn!(
                user,
                not_logged = total,
                "SFTP log of {user} rate-limited: {} {} not logged in the last {} s ({})",
                limit::thousands(total),
                if total == 1 { "event" } else { "events" },
                summary.over.as_secs_f64().round(),
                summary.counts
            );
        }
    }

    /// The managed user's name, else `uid N`.
    fn user_name(&self, uid: Option<u32>) -> String {
        uid.map_or_else(
            || "unknown".to_string(),
            |uid| {
                self.names
                    .get(&uid)
                    .cloned()
                    .unwrap_or_else(|| format!("uid {uid}"))
            },
        )
    }
}

/// The socket's name at the top of the data dir: [`SOCKET_NAME`], or with
/// shared storage `.sftp-ha-log.<host>.sock` (the host name kept to letters,
/// digits, `.`, `-` and `_`).
fn socket_name(host: Option<&str>) -> String {
    match host {
        None => SOCKET_NAME.to_string(),
        Some(h) => {
            let clean: String = h
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!(".sftp-ha-log.{clean}.sock")
        }
    }
}

fn log_event(user: &str, event: SftpEvent) {
    match event {
        SftpEvent::SessionOpened { from } => {
            tracing::info!(user, remote = %from, "sftp login: {user} from {from}");
        }
        SftpEvent::SessionClosed => tracing::info!(user, "sftp logout: {user}"),
        SftpEvent::Upload { path, bytes } => {
            tracing::info!(user, path = %path, bytes, "upload: {user} wrote {path} ({bytes} bytes)");
        }
        SftpEvent::Download { path, bytes } => {
            tracing::info!(user, path = %path, bytes, "download: {user} read {path} ({bytes} bytes)");
        }
        SftpEvent::Rename { from, to } => {
            tracing::info!(user, path = %to, from = %from, "rename: {user} renamed {from} to {to}");
        }
        SftpEvent::Remove { path } => {
            tracing::info!(user, path = %path, "delete: {user} removed {path}")
        }
        SftpEvent::Mkdir { path } => {
            tracing::info!(user, path = %path, "mkdir: {user} created {path}")
        }
        SftpEvent::Rmdir { path } => {
            tracing::info!(user, path = %path, "rmdir: {user} removed {path}")
        }
        SftpEvent::Other(message) => tracing::debug!(user, "internal-sftp: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::socket_name;

    #[test]
    fn each_host_has_its_own_socket_on_shared_storage() {
        assert_eq!(socket_name(None), ".sftp-ha-log.sock");
        assert_eq!(socket_name(Some("master")), ".sftp-ha-log.master.sock");
        assert_eq!(socket_name(Some("a b/c")), ".sftp-ha-log.a_b_c.sock");
    }

    use super::*;

    #[test]
    fn a_link_to_the_socket_is_told_apart_from_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock");
        let _bound = UnixDatagram::bind(&socket).unwrap();
        let meta = fs::symlink_metadata(&socket).ok();
        fs::hard_link(&socket, dir.path().join("log")).unwrap();
        assert!(same_file(&dir.path().join("log"), &meta));
        let _other = UnixDatagram::bind(dir.path().join("old")).unwrap();
        assert!(!same_file(&dir.path().join("old"), &meta));
        std::os::unix::fs::symlink(&socket, dir.path().join("sym")).unwrap();
        assert!(
            !same_file(&dir.path().join("sym"), &meta),
            "a symlink is not the socket"
        );
        assert!(!same_file(&dir.path().join("missing"), &meta));
        assert!(!same_file(&dir.path().join("log"), &None));
    }

    #[test]
    fn syslog_framing_is_stripped() {
        assert_eq!(
            syslog_message(b"<134>Nov 24 09:11:17 internal-sftp[231]: close \"/upload/a b\" bytes read 0 written 12\n"),
            "close \"/upload/a b\" bytes read 0 written 12"
        );
        assert_eq!(syslog_message(b"<134>x[1]: evil\nline\x1b"), "evil?line?");
    }

    #[test]
    fn internal_sftp_messages() {
        assert_eq!(
            parse("close \"/upload/a \"b\" bytes read 0 written 1234"),
            SftpEvent::Upload {
                path: "/upload/a \"b".into(),
                bytes: 1234
            }
        );
        assert_eq!(
            parse("close \"/upload/x\" bytes read 77 written 0"),
            SftpEvent::Download {
                path: "/upload/x".into(),
                bytes: 77
            }
        );
        assert_eq!(
            parse("rename old \"/upload/a\" new \"/upload/b\""),
            SftpEvent::Rename {
                from: "/upload/a".into(),
                to: "/upload/b".into()
            }
        );
        assert_eq!(
            parse("remove name \"/upload/b\""),
            SftpEvent::Remove {
                path: "/upload/b".into()
            }
        );
        assert_eq!(
            parse("mkdir name \"/upload/d\" mode 0777"),
            SftpEvent::Mkdir {
                path: "/upload/d".into()
            }
        );
        assert_eq!(
            parse("rmdir name \"/upload/d\""),
            SftpEvent::Rmdir {
                path: "/upload/d".into()
            }
        );
        assert_eq!(
            parse("session opened for local user bob from [10.0.0.1]"),
            SftpEvent::SessionOpened {
                from: "10.0.0.1".into()
            }
        );
        assert!(matches!(
            parse("open \"/x\" flags READ mode 0666"),
            SftpEvent::Other(_)
        ));
        assert!(matches!(
            parse("close \"/x\" bytes read 0 written 0"),
            SftpEvent::Other(_)
        ));
        assert!(matches!(parse("close garbage"), SftpEvent::Other(_)));
    }
}
