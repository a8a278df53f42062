//! Pairing master and standby, with trust pinned by the admin, never guessed.
//!
//! - `pair show-key` (master): the master's ed25519 sync key, made on first use
//!   in the state dir; prints the public line.
//! - `pair accept-master 'KEY'` (standby): lets that key, and only it, do SFTP
//!   into the data dir as the account `sftp-ha-sync`, and nothing else.
//! - `pair trust-standby HOST[:PORT]` (master): fetches the standby's ed25519
//!   host key once, pins it in the state dir and prints its fingerprint for the
//!   admin to compare. A different key later is refused, never re-learnt.
//!
//! Why `sftp-ha-sync` has uid 0: the standby must give every file the owner it
//! has on the master, and only root may chown. sshd confines the account to
//! `ChrootDirectory <data_dir>` with `ForceCommand internal-sftp`, no password,
//! no shell, no forwarding (see [`crate::sshd::render`]), so the key can reach
//! the data dir and nothing else.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::accounts::plan::check_public_key;
use crate::config::Endpoint;

pub use crate::layout::{SYNC_KEYS, SYNC_USER};
const KEY_FILE: &str = "sync_key";
const PINNED_FILE: &str = "standby_host_key";

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
    #[error(
        "not an OpenSSH public key: {0}; fix: paste the whole line `sftp-ha pair show-key` printed on the master"
    )]
    BadKey(String),
    #[error(
        "no ed25519 host key answered at {0}; fix: check that sshd runs there and the address is right"
    )]
    NoHostKey(String),
    #[error(
        "the standby {endpoint} now has the host key {new}, but {old} is pinned; if the standby was really reinstalled, check the new fingerprint on it and run `sftp-ha pair trust-standby --replace {endpoint}`"
    )]
    HostKeyChanged {
        endpoint: String,
        old: String,
        new: String,
    },
    #[error(transparent)]
    Sshd(#[from] crate::sshd::SshdError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(io::Error) -> PairError + 'a {
    move |source| PairError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Holds an exclusive lock on `folder` (created if needed) until dropped:
/// the accepted keys are read, changed and written under it, so two
/// `accept-peer` (or `forget-peer`) at once cannot lose one of the keys.
fn lock_folder(folder: &Path) -> Result<nix::fcntl::Flock<fs::File>, PairError> {
    fs::create_dir_all(folder).map_err(io_err("create", folder))?;
    let file = fs::File::open(folder).map_err(io_err("open", folder))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err("lock", folder)(io::Error::from(errno)))
}

/// [`lock_folder`] for the folder of [`SYNC_KEYS`].
fn lock_accepted() -> Result<nix::fcntl::Flock<fs::File>, PairError> {
    lock_folder(Path::new(SYNC_KEYS).parent().unwrap_or(Path::new("/")))
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, PairError> {
    Ok(crate::command::run(
        program,
        args,
        input.map(str::as_bytes),
    )?)
}

/// The master's sync key (private part), made if missing; returns the public line.
pub fn show_key(state_dir: &Path) -> Result<String, PairError> {
    let key = state_dir.join(KEY_FILE);
    let public = state_dir.join(format!("{KEY_FILE}.pub"));
    if !key.exists() {
        fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
        let host = run("hostname", &[], None).unwrap_or_default();
        let comment = format!("sftp-ha-sync@{}", host.trim());
        let key_str = key.to_string_lossy();
        run(
            "ssh-keygen",
            &[
                "-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &key_str,
            ],
            None,
        )?;
    }
    let line = fs::read_to_string(&public).map_err(io_err("read", &public))?;
    Ok(line.trim().to_string())
}

/// The path of the master's private sync key.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

/// On the standby: installs the master's key for `sftp-ha-sync` (creating the
/// account if needed) and makes sure sshd has the confining drop-in.
pub fn accept_master(
    key_line: &str,
    data_dir: &Path,
    sync_root: &Path,
    role: crate::config::Role,
) -> Result<(), PairError> {
    let key_line = key_line.trim();
    check_public_key(key_line).map_err(PairError::BadKey)?;
    let exists = run("getent", &["passwd", SYNC_USER], None).is_ok();
    if !exists {
        run(
            "useradd",
            &[
                "-o",
                "-u",
                "0",
                "-g",
                "0",
                "-M",
                "-d",
                "/",
                "-s",
                "/usr/sbin/nologin",
                "-c",
                "sftp-ha sync from the master",
                SYNC_USER,
            ],
            None,
        )?;
        // No password: the key is the only way in.
        run("usermod", &["-p", "*", SYNC_USER], None)?;
    }
    let path = Path::new(SYNC_KEYS);
    let _locked = lock_accepted()?;
    let text = authorized_with(&read_accepted()?, key_line);
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o600, Some((0, 0)))
        .map_err(io_err("write", path))?;
    if sync_root != data_dir {
        crate::sshd::prepare_sync_root(sync_root).map_err(io_err("create", sync_root))?;
    }
    crate::sshd::install(data_dir, sync_root, role)?;
    Ok(())
}

/// One accepted line: `restrict TYPE DATA [COMMENT]` as (TYPE DATA, COMMENT).
fn key_and_comment(line: &str) -> (String, String) {
    let mut w = line.split_whitespace();
    if line.starts_with("restrict ") {
        w.next();
    }
    let key = format!("{} {}", w.next().unwrap_or(""), w.next().unwrap_or(""));
    (key, w.collect::<Vec<_>>().join(" "))
}

/// The sync account's authorized keys with `key_line` accepted: several
/// file hosts (a master with several standbys) each accept every other
/// one's key, so a standby that is promoted can replicate to the others.
/// A key already there is kept once. Nothing is replaced by a comment (two
/// hosts may share a hostname): a host's old key goes with `forget-peer`.
fn authorized_with(old: &str, key_line: &str) -> String {
    let (new_key, _) = key_and_comment(key_line);
    let mut text: String = old
        .lines()
        .filter(|line| !line.trim().is_empty() && key_and_comment(line).0 != new_key)
        .map(|line| format!("{}\n", line.trim()))
        .collect();
    // `restrict` turns off every forwarding and the TTY even if sshd's config changed.
    text.push_str(&format!("restrict {key_line}\n"));
    text
}

/// The accepted keys without the ones `which` names (the key data, the
/// whole `TYPE DATA` pair, or the comment, e.g. `sftp-ha-sync@master`),
/// and how many went.
fn authorized_without(old: &str, which: &str) -> (String, usize) {
    let which = which.trim();
    let mut gone = 0;
    let text = old
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            let (key, comment) = key_and_comment(line);
            let data = key.split(' ').nth(1).unwrap_or("");
            let named = which == key
                || which == data
                || (!comment.is_empty() && which == comment)
                || key_and_comment(which).0 == key;
            gone += usize::from(named);
            !named
        })
        .map(|line| format!("{}\n", line.trim()))
        .collect();
    (text, gone)
}

/// The sync account's authorized keys file as it is; empty if there is none yet.
fn read_accepted() -> Result<String, PairError> {
    let path = Path::new(SYNC_KEYS);
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The accepted peers' keys, one `TYPE DATA COMMENT` line each.
pub fn accepted_peers() -> Result<Vec<String>, PairError> {
    Ok(read_accepted()?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("restrict ").to_string())
        .collect())
}

/// Removes the accepted keys `which` names (see [`authorized_without`]);
/// returns how many. That peer's sessions already open go on until they
/// end; new ones are refused.
pub fn forget_peer(which: &str) -> Result<usize, PairError> {
    let path = Path::new(SYNC_KEYS);
    let _locked = lock_accepted()?;
    let (text, gone) = authorized_without(&read_accepted()?, which);
    if gone > 0 {
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600, Some((0, 0)))
            .map_err(io_err("write", path))?;
    }
    Ok(gone)
}

/// The file that pins a standby's host key: the first standby of `[sync]
/// peer` (or one not listed) has the one-standby name, so an upgrade keeps
/// its pin; the others one each, named after their address.
fn pin_file(first: bool, endpoint: &Endpoint) -> String {
    if first {
        PINNED_FILE.to_string()
    } else {
        format!("{PINNED_FILE}.{endpoint}")
    }
}

/// A pinned host key: `ssh-ed25519 AAAA...`.
fn read_pinned(state_dir: &Path) -> Option<String> {
    read_pin(&state_dir.join(PINNED_FILE))
}

fn read_pin(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    Some(format!("{} {}", words.next()?, words.next()?))
}

/// SHA256 fingerprint of a public key line, as ssh-keygen prints it.
fn fingerprint(key: &str) -> Result<String, PairError> {
    let out = run(
        "ssh-keygen",
        &["-l", "-E", "sha256", "-f", "-"],
        Some(&format!("{key}\n")),
    )?;
    Ok(out
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// On the master: fetches the standby's host key and pins it. Returns the fingerprint.
/// `first`: the endpoint is the first standby of `[sync] peer` (or not in it).
pub fn trust_standby(
    endpoint: &Endpoint,
    state_dir: &Path,
    replace: bool,
    first: bool,
) -> Result<String, PairError> {
    let port = endpoint.port.to_string();
    let scan = run(
        "ssh-keyscan",
        &["-T", "5", "-t", "ed25519", "-p", &port, &endpoint.host],
        None,
    )?;
    let key = scan
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            match (w.next(), w.next()) {
                (Some(kind @ "ssh-ed25519"), Some(body)) => Some(format!("{kind} {body}")),
                _ => None,
            }
        })
        .ok_or_else(|| PairError::NoHostKey(endpoint.to_string()))?;
    let new = fingerprint(&key)?;
    let path = state_dir.join(pin_file(first, endpoint));
    // The pin the transport would use for this host, wherever it is.
    let old = pinned_host_key_of(state_dir, if first { 0 } else { 1 }, endpoint);
    if let Some(old) = old
        && old != key
        && !replace
    {
        return Err(PairError::HostKeyChanged {
            endpoint: endpoint.to_string(),
            old: fingerprint(&old)?,
            new,
        });
    }
    fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
    let text = format!("{key} {endpoint}\n");
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600, None)
        .map_err(io_err("write", &path))?;
    if first {
        // A file of its own from when it was not first would be found before
        // this one: it goes.
        let own = state_dir.join(pin_file(false, endpoint));
        match fs::remove_file(&own) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &own)(e));
            }
            _ => {}
        }
    }
    Ok(new)
}

/// Whether the one-standby pin file may hold `endpoint`'s key: there is
/// none yet, or it was pinned for that address. With no standby listed in
/// the config yet, a second host paired (before the list is written) gets
/// a file of its own instead of being compared with the first one's key.
pub fn one_standby_pin_free_for(state_dir: &Path, endpoint: &Endpoint) -> bool {
    match fs::read_to_string(state_dir.join(PINNED_FILE)) {
        Ok(text) => text.split_whitespace().nth(2) == Some(endpoint.to_string().as_str()),
        Err(_) => true,
    }
}

/// The pinned standby host key, for the sync transport to compare against.
pub fn pinned_host_key(state_dir: &Path) -> Option<String> {
    read_pinned(state_dir)
}

/// The pinned host key of the standby at `position` in `[sync] peer`: its
/// own file if it has one, else the one-standby file when that was pinned
/// for this address, or (as before several standbys) for the first one.
/// So reordering the list, or pinning a standby before listing it, keeps
/// each key with its host.
pub fn pinned_host_key_of(
    state_dir: &Path,
    position: usize,
    endpoint: &Endpoint,
) -> Option<String> {
    if let Some(key) = read_pin(&state_dir.join(pin_file(false, endpoint))) {
        return Some(key);
    }
    let text = fs::read_to_string(state_dir.join(PINNED_FILE)).ok()?;
    let mut words = text.split_whitespace();
    let key = format!("{} {}", words.next()?, words.next()?);
    let pinned_for = words.next();
    (pinned_for == Some(endpoint.to_string().as_str()) || position == 0).then_some(key)
}

#[cfg(test)]
mod several_standbys {
    use super::*;

    #[test]
    fn the_accepted_keys_are_changed_by_one_command_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("etc");
        let held = lock_folder(&folder).unwrap();
        let other = fs::File::open(&folder).unwrap();
        let busy = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock);
        assert!(
            busy.is_err(),
            "a second command waits while the first holds the lock"
        );
        drop(held);
        let other = fs::File::open(&folder).unwrap();
        assert!(
            nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        );
    }

    fn endpoint(host: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            port: 22,
        }
    }

    #[test]
    fn accepted_keys_add_up_and_forget_peer_removes_the_one_named() {
        let master = "ssh-ed25519 AAAAmasterkey0000000 sftp-ha-sync@master";
        let standby2 = "ssh-ed25519 AAAAstandby2key00000 sftp-ha-sync@standby2";
        let one = authorized_with("", master);
        assert_eq!(one, format!("restrict {master}\n"));
        let two = authorized_with(&one, standby2);
        assert_eq!(two, format!("restrict {master}\nrestrict {standby2}\n"));
        // The same key again: once.
        assert_eq!(
            authorized_with(&two, master),
            format!("restrict {standby2}\nrestrict {master}\n")
        );
        // Two hosts with one hostname (one image, `localhost.localdomain`,
        // or none): both keys stay.
        let clone = "ssh-ed25519 AAAAclonekey000000000 sftp-ha-sync@master";
        let three = authorized_with(&two, clone);
        assert!(
            three.contains("AAAAmasterkey") && three.contains("AAAAclonekey"),
            "{three}"
        );
        // Forgotten by key data, by the whole line, or by comment (all of that name).
        assert_eq!(authorized_without(&three, "AAAAstandby2key00000").1, 1);
        assert_eq!(authorized_without(&three, standby2).1, 1);
        let (left, gone) = authorized_without(&three, "sftp-ha-sync@master");
        assert_eq!((left, gone), (format!("restrict {standby2}\n"), 2));
        // Nothing named: nothing goes; an empty name names nothing.
        assert_eq!(authorized_without(&three, "sftp-ha-sync@nobody").1, 0);
        assert_eq!(
            authorized_without("restrict ssh-ed25519 AAAAbare0000000000\n", "").1,
            0
        );
    }

    #[test]
    fn each_standby_finds_its_own_pinned_key() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path();
        fs::write(dir.join(PINNED_FILE), "ssh-ed25519 AAAfirst s1:22\n").unwrap();
        fs::write(
            dir.join(format!("{PINNED_FILE}.s2:22")),
            "ssh-ed25519 AAAsecond s2:22\n",
        )
        .unwrap();
        let (s1, s2, s3) = (endpoint("s1"), endpoint("s2"), endpoint("s3"));
        assert_eq!(
            pinned_host_key_of(dir, 0, &s1).as_deref(),
            Some("ssh-ed25519 AAAfirst")
        );
        assert_eq!(
            pinned_host_key_of(dir, 1, &s2).as_deref(),
            Some("ssh-ed25519 AAAsecond")
        );
        // The list reordered: each key stays with its host.
        assert_eq!(
            pinned_host_key_of(dir, 0, &s2).as_deref(),
            Some("ssh-ed25519 AAAsecond")
        );
        assert_eq!(
            pinned_host_key_of(dir, 1, &s1).as_deref(),
            Some("ssh-ed25519 AAAfirst")
        );
        // One never pinned has none (not the first one's).
        assert_eq!(pinned_host_key_of(dir, 2, &s3), None);
        // Paired before any standby is listed: the one-standby file is s1's.
        assert!(one_standby_pin_free_for(dir, &s1));
        assert!(!one_standby_pin_free_for(dir, &s3));
        let empty = tempfile::tempdir().unwrap();
        assert!(one_standby_pin_free_for(empty.path(), &s3));
        // The first standby keeps a pin made under another name for it.
        assert_eq!(
            pinned_host_key_of(dir, 0, &endpoint("10.0.0.2")).as_deref(),
            Some("ssh-ed25519 AAAfirst")
        );
    }
}
