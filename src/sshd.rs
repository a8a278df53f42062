//! The one sshd drop-in sftp-ha owns: chroot SFTP only, for the group sftp-ha.
//! It is written atomically, checked with `sshd -t` against the host's whole
//! config, put back as it was if sshd refuses it, and only then is sshd reloaded.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accounts::system::KEYS_DIR;
use crate::config::Role;
use crate::layout::{MANAGED_GROUP, SYNC_KEYS, SYNC_USER};

pub const DROP_IN: &str = "/etc/ssh/sshd_config.d/50-sftp-ha.conf";
const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
const SSHD: &str = "/usr/sbin/sshd";

#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "sshd -t refused the new {DROP_IN} ({message}); the previous file was put back and sshd was not touched; fix: check data_dir in the config and the host's sshd_config"
    )]
    Refused { message: String },
    #[error(
        "NOT FENCED by sshd: sshd -t refuses the host's config ({message}); the read-only {DROP_IN} is kept, but sshd was not reloaded, so the users' sessions are ended as they come; fix: run sshd -t and correct the host's sshd config"
    )]
    FenceRefused { message: String },
    #[error("cannot run {SSHD} -t: {0}; fix: install openssh-server")]
    NoSshd(io::Error),
    #[error("sshd did not reload: {0}; fix: systemctl status ssh (or sshd)")]
    Reload(String),
}

/// What no sftp-ha account may do: forward anything or get a terminal.
const LOCKDOWN: &str = concat!(
    "    DisableForwarding yes\n",
    "    AllowTcpForwarding no\n",
    "    AllowAgentForwarding no\n",
    "    AllowStreamLocalForwarding no\n",
    "    X11Forwarding no\n",
    "    PermitTunnel no\n",
    "    PermitTTY no\n",
);

/// SFTP requests no account may make: links. A link lets whoever follows it
/// (root on the standby, the sync walk, another user's client) be led
/// somewhere the link's maker chose; users of a drop box never need one.
const NO_LINKS: &str = "-P symlink,hardlink";

/// The drop-in's text for a data dir and the host's role (pure, so it is
/// unit-tested). On a standby, users' sessions are read-only (`-R`): one
/// writer at a time, and nothing a user does there can change a file.
/// `sync_root` is where the peer's sync key is chrooted: the data dir, or with
/// shared storage this host's own control folder ([`crate::config::Config::sync_root`]).
pub fn render(data_dir: &Path, sync_root: &Path, role: Role) -> String {
    // One writer at a time: users write on the master, the sync account on
    // the standby. On a master the sync account may only read, so a former
    // master that comes back still configured as one cannot overwrite or
    // delete what this host took since (it sees "permission denied" and stops).
    let (users_mode, sync_mode) = match role {
        Role::Master => ("", " -R"),
        Role::Standby => (" -R", ""),
    };
    format!(
        "\
# Written by sftp-ha (see /etc/sftp-ha/config.toml); do not edit: it is
# rewritten whenever sftp-ha starts or reloads.
# This host is a {role}.
# The peer's sync key (sftp-ha pair accept-peer) may do SFTP in {sync} and
# nothing else. The account has uid 0 only so that files keep their owners.
Match User {SYNC_USER}
    ChrootDirectory {sync}
    ForceCommand internal-sftp -u 0000 {NO_LINKS}{sync_mode}
    AuthorizedKeysFile {SYNC_KEYS}
    PubkeyAuthentication yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    PermitRootLogin prohibit-password
{LOCKDOWN}# Members of the group {MANAGED_GROUP} get SFTP only, chrooted to their folder under
# {data}, with nothing else: no shell, no forwarding, no tunnels, no TTY, no links{ro}.
Match Group {MANAGED_GROUP}
    ChrootDirectory {data}/%u
    ForceCommand internal-sftp -l INFO -u 0027 {NO_LINKS}{users_mode}
    AuthorizedKeysFile {KEYS_DIR}/%u
    PasswordAuthentication yes
    PubkeyAuthentication yes
{LOCKDOWN}",
        data = data_dir.display(),
        sync = sync_root.display(),
        ro = if role == Role::Standby {
            ";\n# read-only on this standby: users may log in and download, not change a file"
        } else {
            ""
        },
    )
}

/// With shared storage, the folder the peer's sync key is chrooted to
/// ([`crate::config::Config::sync_root`]): root's, 0755, as sshd requires of
/// a chroot, with nothing in it but the control folder the daemon makes.
pub fn prepare_sync_root(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(std::io::Error::other(
                "exists and is not a folder (a symlink or a file)",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new().mode(0o755).create(path)?;
        }
        Err(e) => return Err(e),
    }
    std::os::unix::fs::chown(path, Some(0), Some(0))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    Unchanged,
    Reloaded,
    /// Written and checked, but no running sshd unit was found to reload.
    NotReloaded,
}

/// Writes the drop-in if it differs, checks it with `sshd -t`, reloads sshd.
pub fn install(data_dir: &Path, sync_root: &Path, role: Role) -> Result<Installed, SshdError> {
    install_at(Path::new(DROP_IN), data_dir, sync_root, role, false, reload)
}

/// [`install`], and sshd reloaded even if the file was already up to date:
/// at start and on a role change, the running sshd must have loaded it (a
/// crash between writing the file and the reload would leave a standby's
/// users writable).
pub fn install_and_reload(
    data_dir: &Path,
    sync_root: &Path,
    role: Role,
) -> Result<Installed, SshdError> {
    install_at(Path::new(DROP_IN), data_dir, sync_root, role, true, reload)
}

/// The read-only drop-in, for a host that must stop taking uploads now. If
/// `sshd -t` refuses the host's config, the read-only file is *kept* (never
/// the writable one put back) and sshd is not signalled: the running sshd
/// keeps its old config, so the caller must end users' sessions as they
/// come; with `stop_sshd` (a master that lost its lease: another host may
/// be taking uploads) sshd's listener is stopped instead, so that no user
/// logs in here at all until an admin corrects the config.
pub fn install_fence(
    data_dir: &Path,
    sync_root: &Path,
    stop_sshd: bool,
) -> Result<Installed, SshdError> {
    let path = Path::new(DROP_IN);
    // SIGHUP straight to sshd, not a reload job: a fence also runs while
    // sftp-ha stops (ExecStopPost, the daemon's last act), and systemd
    // orders a reload of ssh after a stop of sftp-ha (`After=ssh.service`):
    // the fence would wait for its own stop.
    let hup = || signal_sshd(nix::sys::signal::Signal::SIGHUP);
    match install_at(path, data_dir, sync_root, Role::Standby, true, hup) {
        Err(SshdError::Refused { mut message }) => {
            let text = render(data_dir, sync_root, Role::Standby);
            if let Err(e) = crate::fsutil::write_atomic(path, text.as_bytes(), 0o644, Some((0, 0)))
            {
                message.push_str(&format!("; and writing the read-only drop-in failed: {e}"));
            } else if sshd_pids().is_empty() {
                // No sshd runs (a stopped ssh.service also takes /run/sshd,
                // which `sshd -t` then misses): nobody logs in, and sshd
                // reads the read-only drop-in when it starts.
                return Ok(Installed::NotReloaded);
            }
            if stop_sshd {
                match signal_sshd(nix::sys::signal::Signal::SIGTERM) {
                    Ok(Installed::Reloaded) => message.push_str(
                        "; sshd's listener was stopped so that no user logs in writable here (systemctl restart ssh once the config is correct)",
                    ),
                    Ok(_) => {}
                    Err(e) => message.push_str(&format!("; and stopping sshd failed: {e}")),
                }
            }
            Err(SshdError::FenceRefused { message })
        }
        other => other,
    }
}

fn install_at(
    path: &Path,
    data_dir: &Path,
    sync_root: &Path,
    role: Role,
    always_reload: bool,
    reload: impl Fn() -> Result<Installed, SshdError>,
) -> Result<Installed, SshdError> {
    let text = render(data_dir, sync_root, role);
    let previous = fs::read(path).ok();
    if previous.as_deref() == Some(text.as_bytes()) {
        if !always_reload {
            return Ok(Installed::Unchanged);
        }
        // Never signal an sshd whose config it would refuse: a SIGHUP makes
        // sshd re-execute itself, and with a broken config it just exits.
        check_config()?;
        return reload();
    }
    let write_err = |source| SshdError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644, Some((0, 0))).map_err(write_err)?;
    match check_config() {
        Ok(()) => reload(),
        Err(SshdError::Refused { mut message }) => {
            let restored = match &previous {
                Some(old) => crate::fsutil::write_atomic(path, old, 0o644, Some((0, 0))),
                None => fs::remove_file(path),
            };
            if let Err(e) = restored {
                message.push_str(&format!("; and putting the previous file back failed: {e}"));
            }
            Err(SshdError::Refused { message })
        }
        Err(other) => Err(other),
    }
}

/// `sshd -t`: the host's whole config, with the drop-in as it is now.
fn check_config() -> Result<(), SshdError> {
    let check = Command::new(SSHD)
        .arg("-t")
        .env("LC_ALL", "C")
        .output()
        .map_err(SshdError::NoSshd)?;
    if check.status.success() {
        return Ok(());
    }
    let mut message = crate::logging::one_line(&String::from_utf8_lossy(&check.stderr));
    if message.contains("privilege separation directory") && sshd_pids().is_empty() {
        // ssh.service makes /run/sshd when it starts and removes it when it stops.
        message.push_str(
            " (sshd is not running here, so its runtime folder is missing: systemctl start ssh)",
        );
    }
    Err(SshdError::Refused { message })
}

/// Reloads sshd if it runs: unit `ssh` on Debian, `sshd` on RHEL (the
/// reload job returns once sshd has been told, by its `ExecReload=`), and
/// any other sshd listener of root's (one started by hand, or by another
/// unit) gets SIGHUP: it would otherwise keep serving the old drop-in.
fn reload() -> Result<Installed, SshdError> {
    let unit = sshd_main_pid();
    note_restarting(unit.map(|(_, pid)| pid).into_iter().collect());
    if let Some((unit, _)) = unit {
        let out = Command::new("systemctl")
            .args(["reload", unit])
            .output()
            .map_err(|e| SshdError::Reload(e.to_string()))?;
        if !out.status.success() {
            return Err(SshdError::Reload(crate::logging::one_line(
                &String::from_utf8_lossy(&out.stderr),
            )));
        }
    }
    let others: Vec<i32> = listeners()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| unit.is_none_or(|(_, main)| main != *pid))
        .collect();
    signal_each(&others, nix::sys::signal::Signal::SIGHUP)?;
    Ok(if unit.is_some() || !others.is_empty() {
        Installed::Reloaded
    } else {
        Installed::NotReloaded
    })
}

/// Set when a reload was sent to an sshd that was restarting for an earlier
/// one (see [`reload_may_be_lost`]).
static RELOAD_MAY_BE_LOST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Called just before a reload, after the drop-in was written: an sshd
/// whose title is not `[listener]` is re-executing itself for an earlier
/// SIGHUP (or is older than OpenSSH 8.2 and never says), and ignores this
/// one meanwhile, while the config it reads may be from before the write.
fn note_restarting(pids: Vec<i32>) {
    let restarting = pids.iter().any(|pid| {
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty() && !is_listener(&c))
    });
    if restarting {
        RELOAD_MAY_BE_LOST.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a reload since the last call reached an sshd that was
/// restarting for another one, so it may not have read the drop-in as
/// written (the fence then reloads once more, see [`reload_again`]).
pub fn reload_may_be_lost() -> bool {
    RELOAD_MAY_BE_LOST.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Tells every running sshd to read its config again, without installing
/// anything: only if `sshd -t` passes (with a broken config sshd would exit
/// on the signal), and by SIGHUP to each sshd rather than `systemctl
/// reload`, whose job would wait behind a stop of sftp-ha queued meanwhile.
pub fn reload_again() -> Result<Installed, SshdError> {
    check_config()?;
    signal_sshd(nix::sys::signal::Signal::SIGHUP)
}

/// The main process of the running sshd unit, if any: its unit and pid.
fn sshd_main_pid() -> Option<(&'static str, i32)> {
    ["ssh.service", "sshd.service"]
        .into_iter()
        .find_map(|unit| {
            let out = Command::new("systemctl")
                .args(["show", "-p", "MainPID", "--value", unit])
                .output()
                .ok()?;
            let pid = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<i32>()
                .unwrap_or(0);
            (pid > 1).then_some((unit, pid))
        })
}

/// Every sshd that takes logins here or could again: the main process of
/// the sshd unit and every listener of root's (stopped ones too).
fn sshd_pids() -> Vec<i32> {
    let mut pids: Vec<i32> = listeners().into_iter().map(|(pid, _)| pid).collect();
    if let Some((_, main)) = sshd_main_pid()
        && !pids.contains(&main)
    {
        pids.push(main);
    }
    pids
}

/// Sends `signal` to every sshd ([`sshd_pids`]), if any runs.
fn signal_sshd(signal: nix::sys::signal::Signal) -> Result<Installed, SshdError> {
    let pids = sshd_pids();
    if signal == nix::sys::signal::Signal::SIGHUP {
        note_restarting(pids.clone());
    }
    signal_each(&pids, signal)?;
    Ok(if pids.is_empty() {
        Installed::NotReloaded
    } else {
        Installed::Reloaded
    })
}

/// Signals each pid; the first failure is the error (the others are still signalled).
fn signal_each(pids: &[i32], signal: nix::sys::signal::Signal) -> Result<(), SshdError> {
    let mut first = Ok(());
    for &pid in pids {
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            first = first.and(Err(SshdError::Reload(format!(
                "{signal} to sshd (pid {pid}): {e}"
            ))));
        }
    }
    first
}

/// Whether sshd takes logins here: a listener of root's runs (titled
/// `[listener]` since OpenSSH 8.2; one that is stopped takes none), or,
/// where no listener shows at all (an older sshd, socket activation), an
/// ssh unit is active. `cache` is the listener found last time: while it
/// still is one, /proc is not walked again.
pub fn takes_logins(cache: &mut Option<i32>) -> bool {
    // The cache answers only "yes": a stopped one may not be the only one.
    if let Some(pid) = *cache {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        if fs::read(dir.join("cmdline")).is_ok_and(|c| is_listener(&c))
            && root_state(&dir) == Some(true)
        {
            return true;
        }
    }
    let found = listeners();
    *cache = found
        .iter()
        .find_map(|(pid, running)| running.then_some(*pid));
    if cache.is_some() {
        return true;
    }
    if !found.is_empty() {
        return false;
    }
    ["ssh.service", "sshd.service", "ssh.socket", "sshd.socket"]
        .into_iter()
        .any(|unit| {
            Command::new("systemctl")
                .args(["is-active", "--quiet", unit])
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// sshd listeners of root's in this PID namespace: pid, and whether it
/// runs (not stopped). A process anyone can start under that title does
/// not count.
fn listeners() -> Vec<(i32, bool)> {
    let mut found = Vec::new();
    end_processes(|cmdline, proc_dir| {
        if is_listener(cmdline)
            && let Some(running) = root_state(proc_dir)
            && let Some(pid) = proc_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
        {
            found.push((pid, running));
        }
        false
    });
    found
}

fn root_state(proc_dir: &Path) -> Option<bool> {
    root_running(&fs::read_to_string(proc_dir.join("status")).ok()?)
}

/// From `/proc/PID/status`: `None` unless the real uid is root, else
/// whether it runs (not stopped, `State: T`, or traced, `t`).
fn root_running(status: &str) -> Option<bool> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
    };
    (field("Uid:") == Some("0")).then(|| !matches!(field("State:"), Some("T" | "t") | None))
}

/// sshd's listener: `sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups`.
fn is_listener(cmdline: &[u8]) -> bool {
    let title = title(cmdline);
    (title.starts_with(b"sshd: ") || title.starts_with(b"sshd ["))
        && title.windows(10).any(|w| w == b"[listener]")
}

/// Ends every open SSH session of the sync account (`sftp-ha-sync`): on a
/// host that has become master, sessions a former master opened while it was
/// the standby would otherwise keep writing, since an sshd reload changes
/// only new sessions. Returns how many processes were signalled.
pub fn end_sync_sessions() -> usize {
    end_processes(|cmdline, _| is_sync_session(cmdline))
}

/// The processes of the SSH connections open now (every sshd process but
/// the listener). A connection keeps the sshd config it was accepted with,
/// also for a login that completes after a reload: these are the ones a
/// host that stops taking uploads must watch (see [`end_user_sessions_of`]).
pub fn connection_pids() -> HashSet<i32> {
    let mut pids = HashSet::new();
    end_processes(|cmdline, proc_dir| {
        let title = title(cmdline);
        if (session_user(title).is_some() || is_reexec(cmdline))
            && !title.windows(10).any(|w| w == b"[listener]")
            && let Some(pid) = proc_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
        {
            pids.insert(pid);
        }
        false
    });
    pids
}

/// Ends the sessions of managed users (members of
/// [`crate::layout::MANAGED_GROUP`], named in the process title or by the
/// real uid) that belong to one of `connections` (the process itself or an
/// ancestor): also a login that was waiting for its password when the role
/// changed. Other accounts' sessions (root's, the sync account's) and
/// connections made later (read-only) are never touched. Returns how many
/// processes were signalled.
pub fn end_user_sessions_of(connections: &HashSet<i32>) -> usize {
    user_sessions_of(connections, Some(nix::sys::signal::Signal::SIGTERM)).len()
}

/// The managed users' session processes [`end_user_sessions_of`] would end
/// among `connections`, still there now: with shared storage a handover
/// waits for them to be gone (one may still be flushing a write to the
/// shared file system). Nothing is signalled.
pub fn user_sessions_left(connections: &HashSet<i32>) -> Vec<i32> {
    user_sessions_of(connections, None)
}

/// Sends SIGKILL to the managed users' session processes among
/// `connections` (those a SIGTERM did not end); returns their pids.
pub fn kill_user_sessions_of(connections: &HashSet<i32>) -> Vec<i32> {
    user_sessions_of(connections, Some(nix::sys::signal::Signal::SIGKILL))
}

/// The managed users' session processes among `connections`, each sent
/// `signal` if one is given (then only those it reached).
fn user_sessions_of(
    connections: &HashSet<i32>,
    signal: Option<nix::sys::signal::Signal>,
) -> Vec<i32> {
    if connections.is_empty() {
        return Vec::new();
    }
    let (names, uids) = managed_accounts();
    if names.is_empty() {
        return Vec::new();
    }
    pick_processes(signal, |cmdline, proc_dir| {
        let title = title(cmdline);
        // Only sshd's own session processes: never a `sudo -u` or anything
        // else a managed uid runs below root's session.
        let Some(user) = session_user(title) else {
            return false;
        };
        let managed = names.contains(user)
            || fs::read_to_string(proc_dir.join("status"))
                .ok()
                .and_then(|status| real_uid(&status))
                .is_some_and(|u| uids.contains(&u));
        managed && descends_from(proc_dir, connections)
    })
}

/// Ends the logins still in progress among `connections` (any account: the
/// client has not authenticated yet, so nothing is lost but a retry), so
/// none completes with the config its connection was accepted with. Returns
/// how many processes were signalled.
pub fn end_logins_of(connections: &HashSet<i32>) -> usize {
    end_processes(|cmdline, proc_dir| {
        (is_login_in_progress(title(cmdline)) || is_reexec(cmdline))
            && proc_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i32>().ok())
                .is_some_and(|pid| connections.contains(&pid))
    })
}

/// sshd's titles before authentication: `sshd: [accepted]`, and the
/// unprivileged child `sshd: [net]`, `sshd: unknown [net]`, `sshd: NAME [net]`.
fn is_login_in_progress(title: &[u8]) -> bool {
    session_user(title).is_some_and(|user| user == b"[accepted]" || user == b"[net]")
        || (session_user(title).is_some() && title.ends_with(b" [net]"))
}

/// A connection's process before it has set its title: sshd re-executing
/// itself for the connection (`/usr/sbin/sshd -D -R`), or OpenSSH 9.8's
/// `sshd-session`/`sshd-auth` just started.
fn is_reexec(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let program = args.next().unwrap_or_default();
    let name = program.rsplit(|b| *b == b'/').next().unwrap_or_default();
    match name {
        // -R: re-executed for one connection; -i: started for one by inetd
        // or socket activation (`ssh.socket` with `Accept=yes`).
        b"sshd" => args.any(|a| a == b"-R" || a == b"-i"),
        b"sshd-session" | b"sshd-auth" => true,
        _ => false,
    }
}

/// The names and uids of the managed accounts.
fn managed_accounts() -> (HashSet<Vec<u8>>, HashSet<u32>) {
    let members = nix::unistd::Group::from_name(crate::layout::MANAGED_GROUP)
        .ok()
        .flatten()
        .map(|g| g.mem)
        .unwrap_or_default();
    let uids = members
        .iter()
        .filter_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map(|u| u.uid.as_raw())
        .filter(|uid| *uid != 0)
        .collect();
    (members.into_iter().map(String::into_bytes).collect(), uids)
}

/// True if the process of `proc_dir`, or one of its ancestors, is in `pids`.
fn descends_from(proc_dir: &Path, pids: &HashSet<i32>) -> bool {
    let mut pid: Option<i32> = proc_dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok());
    // sshd nests a connection's processes a few levels deep at most.
    for _ in 0..8 {
        let Some(p) = pid.filter(|p| *p > 1) else {
            return false;
        };
        if pids.contains(&p) {
            return true;
        }
        pid = fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|stat| parent_pid(&stat));
    }
    false
}

/// The parent pid in a `/proc/PID/stat` text (the field after the state,
/// which follows the command name in parentheses, which may hold anything).
fn parent_pid(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends SIGTERM to every process whose command line (and `/proc/PID`
/// folder) `pick` chooses; returns how many were signalled.
fn end_processes(pick: impl FnMut(&[u8], &Path) -> bool) -> usize {
    pick_processes(Some(nix::sys::signal::Signal::SIGTERM), pick).len()
}

/// The pids of this host's processes whose command line (and `/proc/PID`
/// folder) `pick` chooses, each sent `signal` if one is given (then only
/// those it reached are returned).
fn pick_processes(
    signal: Option<nix::sys::signal::Signal>,
    mut pick: impl FnMut(&[u8], &Path) -> bool,
) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    // Only this host's processes: a container's sshd shows in /proc too, in
    // a PID namespace nested in ours, so with more levels in `NSpid`. (The
    // namespace links themselves need CAP_SYS_PTRACE, which the unit does
    // not have; the status file does not.)
    let ours = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| pid_ns_depth(&s));
    let mut picked = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if ours.is_some()
            && fs::read_to_string(entry.path().join("status"))
                .ok()
                .and_then(|s| pid_ns_depth(&s))
                != ours
        {
            continue;
        }
        if pick(&cmdline, &entry.path()) {
            let reached = signal.is_none_or(|signal| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
            });
            if reached {
                picked.push(pid);
            }
        }
    }
    picked
}

/// How many PID namespaces deep a process is, from the `NSpid` line of its
/// `/proc/PID/status` (one pid per level).
fn pid_ns_depth(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|pids| pids.split_whitespace().count())
}

/// The real uid in a `/proc/PID/status` text.
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process title: the first word of its command line.
fn title(cmdline: &[u8]) -> &[u8] {
    cmdline.split(|b| *b == 0).next().unwrap_or_default()
}

/// The account an sshd connection process names in its title (`sshd:
/// EPuser [priv]`, `sshd: EPuser@notty`, `sshd-session: ...`, `sshd-auth:
/// ...`), or `[accepted]`-style placeholders before the client named one.
fn session_user(title: &[u8]) -> Option<&[u8]> {
    let rest = [&b"sshd: "[..], b"sshd-session: ", b"sshd-auth: "]
        .iter()
        .find_map(|p| title.strip_prefix(*p))?;
    let end = rest
        .iter()
        .position(|b| *b == b' ' || *b == b'@')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// sshd's process title for a session of the sync account: `sshd:
/// sftp-ha-sync [priv]`, `sshd: sftp-ha-sync@internal-sftp` (OpenSSH 9.8 and
/// later say `sshd-session:`).
fn is_sync_session(cmdline: &[u8]) -> bool {
    let title = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let Some(rest) = title
        .strip_prefix(b"sshd: ")
        .or_else(|| title.strip_prefix(b"sshd-session: "))
    else {
        return false;
    };
    rest.strip_prefix(SYNC_USER.as_bytes())
        .is_some_and(|after| after.is_empty() || after[0] == b' ' || after[0] == b'@')
}

/// A warning if the host's sshd_config does not include the drop-in folder
/// (Debian 12 and RHEL 9 do, from the top of the file).
pub fn include_warning() -> Option<String> {
    let text = fs::read_to_string(SSHD_CONFIG).ok()?;
    (!includes_drop_ins(&text)).then(|| {
        format!(
            "{SSHD_CONFIG} does not Include /etc/ssh/sshd_config.d/*.conf, so sshd ignores {DROP_IN} and no sftp-ha user can log in; fix: add `Include /etc/ssh/sshd_config.d/*.conf` as the first line of {SSHD_CONFIG}"
        )
    })
}

/// True if an uncommented `Include` line names the sshd_config.d folder.
pub fn includes_drop_ins(sshd_config: &str) -> bool {
    sshd_config.lines().any(|l| {
        let mut words = l.split_whitespace();
        words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("include"))
            && words.any(|w| w.contains("sshd_config.d"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_that_finds_an_sshd_restarting_may_be_lost() {
        let spawn = |argv0: &str| {
            std::process::Command::new("bash")
                .args(["-c", &format!("exec -a '{argv0}' sleep 30")])
                .spawn()
                .unwrap()
        };
        // Re-executing: the plain command line, before the title is set.
        let mut restarting = spawn("/usr/sbin/sshd");
        // Listening again.
        let mut listening = spawn("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = reload_may_be_lost();
        note_restarting(vec![listening.id() as i32]);
        assert!(!reload_may_be_lost());
        note_restarting(vec![listening.id() as i32, restarting.id() as i32]);
        assert!(reload_may_be_lost());
        assert!(!reload_may_be_lost(), "said once");
        for child in [&mut restarting, &mut listening] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[test]
    fn user_sessions_are_found_by_title_and_real_uid() {
        let user = |cmdline: &[u8]| session_user(title(cmdline)).map(<[u8]>::to_vec);
        assert_eq!(user(b"sshd: EPuser@notty\0"), Some(b"EPuser".to_vec()));
        assert_eq!(user(b"sshd: EPuser [priv]\0"), Some(b"EPuser".to_vec()));
        assert_eq!(
            user(b"sshd-session: EPuser@internal-sftp\0"),
            Some(b"EPuser".to_vec())
        );
        assert_eq!(user(b"sshd-auth: EPuser [net]\0"), Some(b"EPuser".to_vec()));
        assert_eq!(user(b"/usr/sbin/sshd\0-D\0"), None);
        assert_eq!(user(b"bash\0"), None);
        assert_eq!(parent_pid("12 (sshd: a) b) S 7 12 12 0"), Some(7));
        for pre_auth in [
            &b"sshd: [accepted]"[..],
            b"sshd: [net]",
            b"sshd: unknown [net]",
            b"sshd: EPuser [net]",
            b"sshd-session: root [net]",
        ] {
            assert!(
                is_login_in_progress(pre_auth),
                "{}",
                String::from_utf8_lossy(pre_auth)
            );
        }
        assert!(is_reexec(b"/usr/sbin/sshd\0-D\0-R\0"));
        assert!(is_reexec(b"/usr/lib/openssh/sshd-session\0-R\0"));
        assert!(!is_reexec(b"/usr/sbin/sshd\0-D\0"));
        assert!(is_reexec(b"/usr/sbin/sshd\0-i\0"));
        assert!(!is_reexec(b"sshd: EPuser@notty\0"));
        for done in [
            &b"sshd: EPuser [priv]"[..],
            b"sshd: EPuser@notty",
            b"sshd: root@pts/0",
            b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
        ] {
            assert!(
                !is_login_in_progress(done),
                "{}",
                String::from_utf8_lossy(done)
            );
        }
        assert_eq!(parent_pid("garbage"), None);
        assert_eq!(
            real_uid("Name:\tsshd\nUid:\t1001\t1001\t1001\t1001\n"),
            Some(1001)
        );
        assert_eq!(real_uid("Name:\tsshd\n"), None);
        assert_eq!(pid_ns_depth("Name:\tsshd\nNSpid:\t41\n"), Some(1));
        assert_eq!(pid_ns_depth("NSpid:\t9041\t41\n"), Some(2));
        assert_eq!(pid_ns_depth("Name:\tx\n"), None);
    }

    #[test]
    fn drop_in_confines_the_group() {
        let text = render(
            Path::new("/srv/sftp-ha"),
            Path::new("/srv/sftp-ha"),
            Role::Master,
        );
        assert!(text.contains("Match Group sftp-ha\n"));
        assert!(text.contains("ChrootDirectory /srv/sftp-ha/%u"));
        assert!(text.contains("ForceCommand internal-sftp -l INFO -u 0027 -P symlink,hardlink\n"));
        assert!(text.contains("ForceCommand internal-sftp -u 0000 -P symlink,hardlink -R\n"));
        assert_eq!(text.matches("\n    PermitTTY no\n").count(), 2, "{text}");
        assert_eq!(
            text.matches("\n    AllowTcpForwarding no\n").count(),
            2,
            "{text}"
        );
        assert!(text.contains("AllowTcpForwarding no"));
        assert!(text.contains("AuthorizedKeysFile /etc/sftp-ha/authorized_keys/%u"));
        assert!(text.contains("Match User sftp-ha-sync\n    ChrootDirectory /srv/sftp-ha\n"));
        assert!(text.contains("AuthorizedKeysFile /etc/sftp-ha/sync_authorized_keys"));
    }

    #[test]
    fn with_shared_storage_the_sync_key_sees_only_the_hosts_own_folder() {
        let text = render(
            Path::new("/srv/sftp-ha"),
            Path::new("/var/lib/sftp-ha/peer"),
            Role::Standby,
        );
        assert!(
            text.contains("Match User sftp-ha-sync\n    ChrootDirectory /var/lib/sftp-ha/peer\n")
        );
        assert!(text.contains("ChrootDirectory /srv/sftp-ha/%u"));
        assert!(!text.contains("ChrootDirectory /srv/sftp-ha\n"), "{text}");
    }

    #[test]
    fn users_are_read_only_on_a_standby_only() {
        let standby = render(
            Path::new("/srv/sftp-ha"),
            Path::new("/srv/sftp-ha"),
            Role::Standby,
        );
        assert!(
            standby.contains("ForceCommand internal-sftp -l INFO -u 0027 -P symlink,hardlink -R\n")
        );
        // The sync account writes on the standby.
        assert!(standby.contains("ForceCommand internal-sftp -u 0000 -P symlink,hardlink\n"));
        // On a master, users write and the sync account only reads.
        let master = render(
            Path::new("/srv/sftp-ha"),
            Path::new("/srv/sftp-ha"),
            Role::Master,
        );
        assert!(
            master.contains("ForceCommand internal-sftp -l INFO -u 0027 -P symlink,hardlink\n")
        );
        assert!(master.contains("ForceCommand internal-sftp -u 0000 -P symlink,hardlink -R\n"));
    }

    #[test]
    fn only_a_running_root_process_counts_as_the_listener() {
        let status = |uid: &str, state: &str| {
            format!("Name:\tsshd\nState:\t{state}\nPid:\t34\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        };
        assert_eq!(root_running(&status("0", "S (sleeping)")), Some(true));
        assert_eq!(root_running(&status("0", "R (running)")), Some(true));
        assert_eq!(root_running(&status("1000", "S (sleeping)")), None);
        assert_eq!(root_running(&status("0", "T (stopped)")), Some(false));
        assert_eq!(root_running(&status("0", "t (tracing stop)")), Some(false));
        assert_eq!(root_running("garbage"), None);
    }

    #[test]
    fn the_listener_is_told_by_its_title() {
        assert!(is_listener(
            b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0"
        ));
        assert!(is_listener(
            b"sshd: /usr/sbin/sshd -D -f /etc/ssh/x [listener] 1 of 10-100 startups"
        ));
        assert!(!is_listener(b"sshd: EPuser [priv]"));
        assert!(!is_listener(b"sshd-session: EPuser@internal-sftp"));
        assert!(!is_listener(b"/usr/sbin/sshd -D"));
        assert!(!is_listener(b"vim [listener]"));
    }

    #[test]
    fn sync_sessions_are_told_by_their_title() {
        assert!(is_sync_session(b"sshd: sftp-ha-sync [priv]\0\0"));
        assert!(is_sync_session(b"sshd: sftp-ha-sync@internal-sftp"));
        assert!(is_sync_session(b"sshd-session: sftp-ha-sync [priv]"));
        assert!(!is_sync_session(b"sshd: sftp-ha-syncer [priv]"));
        assert!(!is_sync_session(b"sshd: EPuser@internal-sftp"));
        assert!(!is_sync_session(b"/usr/sbin/sshd -D"));
        assert!(!is_sync_session(b"sftp-ha-sync"));
    }

    #[test]
    fn include_detection() {
        assert!(includes_drop_ins(
            "Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n"
        ));
        assert!(includes_drop_ins("  include sshd_config.d/*.conf\n"));
        assert!(!includes_drop_ins(
            "#Include /etc/ssh/sshd_config.d/*.conf\n"
        ));
        assert!(!includes_drop_ins("Port 22\n"));
    }
}
