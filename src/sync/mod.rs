//! One-way replication master → standby.
//!
//! One worker thread owns everything: inotify watches on every folder of the
//! data dir, the index of what the standby has confirmed, and the connection.
//! Any event (debounced) or the fallback timer leads to a scan with local
//! `stat` only, a [`tree::plan`] against the index, and the operations over
//! SFTP. The index is updated per confirmed operation and saved after each
//! round, so a restart resumes without re-sending what already arrived.
//!
//! Files reach the standby under a temporary name, are fsynced, get owner,
//! mode and mtime, and are renamed over the target with posix-rename: a reader
//! there never sees a partial file.

pub mod sftp;
pub mod transport;
pub mod tree;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::Endpoint;
use crate::timefmt::unix_now;
use sftp::Attrs;
use transport::{Standby, TransportError};
use tree::{Entry, Kind, Op, TEMP_PREFIX, Tree};

/// Quiet time after the last event before a scan: bursts become one round.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A file modified this recently and not yet closed may still be written to.
const SETTLE: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const INDEX_FILE: &str = "sync-index";

/// What the sync worker reports, for `sftp-ha status` and the STATUS= line.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncStatus {
    pub standby: String,
    pub connected: bool,
    /// Since when the standby is reachable or not (unix seconds).
    pub since: u64,
    pub last_error: Option<String>,
    /// Operations waiting for the standby.
    pub pending: usize,
    pub last_sync: Option<u64>,
    pub last_scan: Option<u64>,
    pub files_synced: u64,
    pub bytes_synced: u64,
    pub deletes_held_back: bool,
    /// When the standby's tree was last listed and compared, and what it repaired.
    pub last_audit: Option<u64>,
    pub last_audit_repairs: usize,
    /// How long the last file took from its last change on the master to being
    /// safe on the standby, in milliseconds.
    pub last_lag_ms: Option<u64>,
}

/// Settings the worker runs with.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub standby: Endpoint,
    pub fallback_interval: Duration,
    /// Mirror deletes.
    pub delete: bool,
    pub audit_interval: Duration,
}

/// The running worker; dropping it does not stop it, [`SyncHandle::stop`] does.
pub struct SyncHandle {
    stop: Arc<AtomicBool>,
    pub status: Arc<Mutex<SyncStatus>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncHandle {
    /// Asks the worker to stop and waits up to `patience` for it.
    pub fn stop(mut self, patience: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while start.elapsed() < patience {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Blocked in the network: it holds nothing that needs saving beyond what is saved.
    }

    pub fn snapshot(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Starts the worker thread.
pub fn start(settings: SyncSettings) -> std::io::Result<SyncHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(SyncStatus {
        standby: settings.standby.to_string(),
        since: unix_now(),
        ..SyncStatus::default()
    }));
    let inotify = Inotify::init()?;
    let mut worker = Worker {
        index_path: settings.state_dir.join(INDEX_FILE),
        index: tree::load_index(&settings.state_dir.join(INDEX_FILE)),
        settings,
        inotify,
        watches: HashMap::new(),
        closed: HashSet::new(),
        standby: None,
        backoff: BACKOFF_MIN,
        stop: stop.clone(),
        status: status.clone(),
        skipped_logged: HashSet::new(),
        next_audit: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || worker.run())?;
    Ok(SyncHandle {
        stop,
        status,
        thread: Some(thread),
    })
}

struct Worker {
    settings: SyncSettings,
    index_path: PathBuf,
    /// What the standby has confirmed.
    index: Tree,
    inotify: Inotify,
    /// Watched folder → its path in the tree (empty: the data dir).
    watches: HashMap<WatchDescriptor, Vec<u8>>,
    /// Files closed after writing since the last round: safe to ship at once.
    closed: HashSet<Vec<u8>>,
    standby: Option<Standby>,
    backoff: Duration,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<SyncStatus>>,
    skipped_logged: HashSet<Vec<u8>>,
    /// When to list the standby and repair drift next (also after every connect).
    next_audit: Instant,
}

impl Worker {
    fn run(&mut self) {
        tracing::info!(standby = %self.settings.standby, "sync started");
        let mut due = Some(Instant::now()); // start-up scan
        let mut next_fallback = Instant::now() + self.settings.fallback_interval;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wake = due.unwrap_or(next_fallback).min(next_fallback);
            let wait = wake
                .saturating_duration_since(now)
                .min(Duration::from_millis(200));
            if self.wait_for_events(wait) {
                due = Some(Instant::now() + DEBOUNCE);
            }
            let now = Instant::now();
            let fallback = now >= next_fallback;
            if fallback || due.is_some_and(|d| now >= d) {
                if fallback {
                    next_fallback = now + self.settings.fallback_interval;
                }
                due = self.round();
            }
        }
        tracing::info!("sync stopped");
    }

    /// Waits up to `wait` for inotify events; true if any arrived.
    fn wait_for_events(&mut self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).unwrap_or(0) <= 0 {
            return false;
        }
        let mut buf = [0u8; 64 * 1024];
        let mut any = false;
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            let mut n = 0;
            for e in events {
                n += 1;
                any = true;
                if e.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::warn!("inotify queue overflowed: a full scan follows");
                }
                // Closed after writing, or renamed into place (how WinSCP and `mv`
                // finish a file): complete, so it may go at once.
                if e.mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
                    && let (Some(dir), Some(name)) = (self.watches.get(&e.wd), e.name)
                {
                    self.closed.insert(join(dir, name.as_encoded_bytes()));
                }
            }
            if n == 0 {
                break;
            }
        }
        any
    }

    /// One scan and sync. Returns when to run again (files still settling,
    /// or the standby unreachable), or `None` when all is done.
    fn round(&mut self) -> Option<Instant> {
        let (current, skipped) = match tree::scan(&self.settings.data_dir) {
            Ok(t) => t,
            Err(err) => {
                tracing::error!(path = %self.settings.data_dir.display(), "cannot scan the data dir: {err}");
                self.set_status(|s| {
                    s.last_error = Some(format!("cannot scan the data dir: {err}"))
                });
                return Some(Instant::now() + BACKOFF_MAX);
            }
        };
        for (path, what) in skipped {
            if self.skipped_logged.insert(path.clone()) {
                tracing::info!(path = %sftp::show(&path), "not replicated: a {what}");
            }
        }
        self.update_watches(&current);
        self.set_status(|s| s.last_scan = Some(unix_now()));
        if self.standby.is_none() || Instant::now() >= self.next_audit {
            if let Err(retry) = self.connect() {
                return Some(retry);
            }
            if let Err(err) = self.audit(&current) {
                return Some(self.failed(err));
            }
        }

        // A file modified in the last seconds and not closed yet may still be being
        // written: it keeps its confirmed version (or waits to be created) until it settles.
        let now = unix_now() as i64;
        let mut settling = false;
        let mut ready = Tree::new();
        for (path, e) in current {
            let fresh = e.kind == Kind::File
                && now - e.mtime < SETTLE.as_secs() as i64
                && !self.closed.contains(&path);
            settling |= fresh;
            match (fresh, self.index.get(&path)) {
                (false, _) => {
                    ready.insert(path, e);
                }
                (true, Some(old)) => {
                    ready.insert(path, *old);
                }
                (true, None) => {}
            }
        }
        self.closed.clear();

        let mass_delete = tree::looks_like_mass_delete(&ready, &self.index);
        if mass_delete {
            tracing::error!(
                path = %self.settings.data_dir.display(),
                "the data dir is empty but the standby has files: deletes are NOT mirrored; check that the data dir is mounted"
            );
        }
        let ops = tree::plan(&ready, &self.index, self.settings.delete && !mass_delete);
        self.set_status(|s| {
            s.pending = ops.len();
            s.deletes_held_back = mass_delete;
        });
        let retry = if ops.is_empty() {
            None
        } else {
            self.apply(ops)
        };
        let settle_again = settling.then(|| Instant::now() + Duration::from_millis(500));
        match (retry, settle_again) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Connects if not connected; a new connection is audited before anything is sent.
    fn connect(&mut self) -> Result<(), Instant> {
        if self.standby.is_some() {
            return Ok(());
        }
        let pinned = crate::pair::pinned_host_key(&self.settings.state_dir);
        let key = crate::pair::key_path(&self.settings.state_dir);
        match Standby::connect(&self.settings.standby, pinned.as_deref(), &key) {
            Ok(s) => {
                tracing::info!(standby = %self.settings.standby, "connected to the standby");
                self.standby = Some(s);
                self.backoff = BACKOFF_MIN;
                self.next_audit = Instant::now();
                self.set_status(|s| {
                    s.connected = true;
                    s.since = unix_now();
                    s.last_error = None;
                });
                Ok(())
            }
            Err(err) => Err(self.failed(err)),
        }
    }

    /// Lists the standby's tree and corrects the index wherever the standby
    /// differs from what it confirmed (changed or deleted behind our back, or
    /// extra files), so the plan that follows repairs it.
    fn audit(&mut self, current: &Tree) -> Result<(), TransportError> {
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        let mut remote = Tree::new();
        let mut folders = vec![Vec::new()];
        while let Some(folder) = folders.pop() {
            for (name, a) in standby.sftp.read_dir(&remote_path(&folder))? {
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let path = join(&folder, &name);
                let mode = a.mode.unwrap_or(0);
                let kind = match mode & 0o170000 {
                    0o040000 => Kind::Dir,
                    0o100000 => Kind::File,
                    _ => continue, // the standby's own dev/log and the like
                };
                if kind == Kind::Dir {
                    folders.push(path.clone());
                }
                let (uid, gid) = a.owner.unwrap_or((u32::MAX, u32::MAX));
                let mtime = a.times.map_or(-1, |(_, m)| i64::from(m));
                remote.insert(
                    path,
                    Entry {
                        kind,
                        size: a.size.unwrap_or(0),
                        mtime,
                        mtime_nsec: 0,
                        mode: mode & 0o7777,
                        uid,
                        gid,
                        ino: 0,
                    },
                );
            }
        }
        let matches = |confirmed: &Entry, there: &Entry| {
            confirmed.kind == there.kind
                && confirmed.mode == there.mode
                && confirmed.uid == there.uid
                && confirmed.gid == there.gid
                && (confirmed.kind == Kind::Dir
                    || (confirmed.size == there.size && confirmed.mtime == there.mtime))
        };
        let mut repairs = 0;
        self.index.retain(|path, confirmed| {
            let ok = remote
                .get(path)
                .is_some_and(|there| matches(confirmed, there));
            repairs += usize::from(!ok);
            ok
        });
        for (path, there) in remote {
            if self.index.contains_key(&path) || host_local(&path) {
                continue;
            }
            // Already there as the master has it (a lost index): confirmed as is.
            // Anything else is recorded as it is, so the plan replaces or deletes it.
            match current.get(&path) {
                Some(mine) if matches(mine, &there) => {
                    self.index.insert(path, *mine);
                }
                _ => {
                    repairs += 1;
                    self.index.insert(path, there);
                }
            }
        }
        if repairs > 0 {
            tracing::warn!(standby = %self.settings.standby, "audit: {repairs} difference(s) on the standby, repairing");
        } else {
            tracing::debug!("audit: the standby matches");
        }
        self.save_index(true);
        self.next_audit = Instant::now() + self.settings.audit_interval;
        self.set_status(|s| {
            s.last_audit = Some(unix_now());
            s.last_audit_repairs = repairs;
        });
        Ok(())
    }

    /// Runs the operations; on a transport error, stops and asks to retry later.
    fn apply(&mut self, ops: Vec<Op>) -> Option<Instant> {
        if let Err(retry) = self.connect() {
            return Some(retry);
        }
        let total = ops.len();
        let mut done = 0;
        let mut changed = false;
        for op in ops {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.execute(&op) {
                Ok(bytes) => {
                    done += 1;
                    changed = true;
                    match &op {
                        Op::Delete(path, _) => {
                            self.index.remove(path);
                        }
                        Op::Mkdir(path, e) | Op::Put(path, e) | Op::SetAttrs(path, e) => {
                            self.index.insert(path.clone(), *e);
                        }
                        Op::Rename { from, to } => {
                            tree::rekey(&mut self.index, from, to);
                        }
                    }
                    if let Op::Put(path, e) = &op {
                        tracing::debug!(path = %sftp::show(path), bytes = e.size, "synced");
                    }
                    let lag = match &op {
                        Op::Put(_, e) => Some(lag_ms(e)),
                        _ => None,
                    };
                    self.set_status(|s| {
                        s.pending = total - done;
                        s.files_synced += u64::from(matches!(op, Op::Put(..)));
                        s.bytes_synced += bytes;
                        s.last_sync = Some(unix_now());
                        if lag.is_some() {
                            s.last_lag_ms = lag;
                        }
                    });
                }
                Err(OpError::Transport(err)) => {
                    self.save_index(changed);
                    return Some(self.failed(err));
                }
                Err(OpError::Local(path, err)) => {
                    // Changed or gone under us: the next round sees its new state.
                    tracing::debug!(path = %sftp::show(&path), "skipped for now: {err}");
                }
            }
        }
        self.save_index(changed);
        None
    }

    fn save_index(&self, changed: bool) {
        if changed && let Err(err) = tree::save_index(&self.index_path, &self.index) {
            tracing::warn!(path = %self.index_path.display(), "cannot save the sync index: {err}");
        }
    }

    /// Records a transport failure and returns when to retry (capped backoff).
    fn failed(&mut self, err: TransportError) -> Instant {
        let needs_admin = err.needs_admin();
        let message = err.to_string();
        let was_connected = self.standby.take().is_some();
        let first = self
            .status
            .lock()
            .map(|s| s.last_error.as_deref() != Some(message.as_str()))
            .unwrap_or(true);
        if first || was_connected {
            if err.needs_admin() {
                tracing::error!(standby = %self.settings.standby, "{message}");
            } else {
                tracing::warn!(standby = %self.settings.standby, "{message}; retrying");
            }
        }
        self.set_status(|s| {
            if s.connected || s.last_error.is_none() {
                s.since = unix_now();
            }
            s.connected = false;
            s.last_error = Some(message);
        });
        let wait = self.backoff;
        // What needs the admin (pairing) is checked often, so sync starts soon after it.
        let cap = if needs_admin {
            Duration::from_secs(3)
        } else {
            BACKOFF_MAX
        };
        self.backoff = (self.backoff * 2).min(cap);
        Instant::now() + wait
    }

    fn execute(&mut self, op: &Op) -> Result<u64, OpError> {
        let data_dir = self.settings.data_dir.clone();
        let Some(standby) = self.standby.as_mut() else {
            return Err(OpError::Transport(TransportError::NotPinned));
        };
        let sftp = &mut standby.sftp;
        let t = |e: sftp::SftpError| OpError::Transport(TransportError::Sftp(e));
        match op {
            Op::Delete(path, kind) => {
                let remote = remote_path(path);
                let result = match kind {
                    Kind::File => sftp.remove(&remote),
                    Kind::Dir => sftp.rmdir(&remote),
                };
                match result {
                    Err(e) if e.is_no_such_file() => Ok(0),
                    other => other.map(|()| 0).map_err(t),
                }
            }
            Op::Mkdir(path, e) => {
                let remote = remote_path(path);
                if sftp.lstat(&remote).map_err(t)?.is_none() {
                    sftp.mkdir(&remote, Attrs::default()).map_err(t)?;
                }
                sftp.setstat(&remote, attrs(e, false)).map_err(t)?;
                Ok(0)
            }
            Op::Rename { from, to } => {
                sftp.posix_rename(&remote_path(from), &remote_path(to))
                    .map_err(t)?;
                Ok(0)
            }
            Op::SetAttrs(path, e) => {
                sftp.setstat(&remote_path(path), attrs(e, e.kind == Kind::File))
                    .map_err(t)?;
                Ok(0)
            }
            Op::Put(path, e) => {
                let (mut file, now) = tree::open_file(&data_dir, path)
                    .map_err(|err| OpError::Local(path.clone(), err))?;
                if now != *e {
                    return Err(OpError::Local(
                        path.clone(),
                        std::io::Error::other("changed since the scan"),
                    ));
                }
                let remote = remote_path(path);
                let temp = temp_path(&remote);
                let handle = sftp
                    .create(
                        &temp,
                        Attrs {
                            mode: Some(0o600),
                            ..Attrs::default()
                        },
                    )
                    .map_err(t)?;
                let written = sftp.write_from(&handle, &mut file).map_err(t)?;
                sftp.fsetstat(&handle, attrs(e, true)).map_err(t)?;
                sftp.fsync(&handle).map_err(t)?;
                sftp.close(&handle).map_err(t)?;
                sftp.posix_rename(&temp, &remote).map_err(t)?;
                Ok(written)
            }
        }
    }

    /// Watches every folder of the tree (and the data dir), drops vanished ones.
    fn update_watches(&mut self, current: &Tree) {
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::ONLYDIR
            | WatchMask::DONT_FOLLOW;
        let wanted: HashSet<&[u8]> = std::iter::once(&b""[..])
            .chain(
                current
                    .iter()
                    .filter(|(_, e)| e.kind == Kind::Dir)
                    .map(|(p, _)| p.as_slice()),
            )
            .collect();
        let have: HashSet<Vec<u8>> = self.watches.values().cloned().collect();
        let mut watches = self.inotify.watches();
        self.watches.retain(|wd, path| {
            let keep = wanted.contains(path.as_slice());
            if !keep {
                let _ = watches.remove(wd.clone());
            }
            keep
        });
        for path in wanted {
            if have.contains(path) {
                continue;
            }
            let full = self
                .settings
                .data_dir
                .join(std::ffi::OsStr::from_bytes(path));
            match watches.add(&full, mask) {
                Ok(wd) => {
                    self.watches.insert(wd, path.to_vec());
                }
                Err(err) if err.raw_os_error() == Some(nix::libc::ENOSPC) => {
                    tracing::warn!(
                        "inotify watch limit reached: new files are found by the fallback scan only; raise it with sysctl fs.inotify.max_user_watches"
                    );
                    break;
                }
                Err(_) => {} // gone meanwhile
            }
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

enum OpError {
    Transport(TransportError),
    /// The local file changed or vanished: not an error, the next round sees it.
    Local(Vec<u8>, std::io::Error),
}

/// Milliseconds from a file's modification on the master until now.
fn lag_ms(e: &Entry) -> u64 {
    let modified = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(e.mtime).unwrap_or(0),
            u32::try_from(e.mtime_nsec).unwrap_or(0),
        );
    std::time::SystemTime::now()
        .duration_since(modified)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The outcome files of a users.yaml apply: each host writes its own, so
/// they are not drift for the audit to repair.
fn host_local(path: &[u8]) -> bool {
    path.ends_with(b"/admin/users.yaml.status")
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The standby's sync account is chrooted to its data dir: `/` is the data dir.
fn remote_path(rel: &[u8]) -> Vec<u8> {
    let mut p = b"/".to_vec();
    p.extend_from_slice(rel);
    p
}

/// `/dir/.sftp-ha-tmp.name` for `/dir/name`: same folder, so the rename is atomic.
fn temp_path(remote: &[u8]) -> Vec<u8> {
    let split = remote.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
    let mut p = remote[..split].to_vec();
    p.extend_from_slice(TEMP_PREFIX);
    p.extend_from_slice(&remote[split..]);
    p
}

fn attrs(e: &Entry, with_times: bool) -> Attrs {
    Attrs {
        size: None,
        owner: Some((e.uid, e.gid)),
        mode: Some(e.mode),
        times: with_times.then(|| {
            let t = u32::try_from(e.mtime).unwrap_or(0);
            (t, t)
        }),
    }
}

/// For callers that need the sync settings from a config.
pub fn settings(config: &crate::config::Config) -> Option<SyncSettings> {
    Some(SyncSettings {
        data_dir: config.data_dir.clone(),
        state_dir: config.state_dir.clone(),
        standby: config.sync.standby.clone()?,
        fallback_interval: config.sync.fallback_interval,
        delete: config.sync.delete,
        audit_interval: config.sync.audit_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_sit_beside_the_target() {
        assert_eq!(
            temp_path(b"/u/upload/a b"),
            b"/u/upload/.sftp-ha-tmp.a b".to_vec()
        );
        assert_eq!(remote_path(b"u/x"), b"/u/x".to_vec());
    }
}
