//! Watching the admin folders for users.yaml and applying it.
//!
//! Every admin has `<data_dir>/<name>/admin/` in their chroot, seen as `/admin`.
//! They are kept as one folder: a users.yaml uploaded to any of them is applied,
//! then copied (rewritten without plaintext) to every other admin's folder, and
//! the outcome, users.yaml.status, is written to all of them.
//!
//! FileZilla writes in place (IN_CLOSE_WRITE); WinSCP uploads to a temporary
//! name and renames (IN_MOVED_TO). Events are debounced, so a burst of writes
//! leads to one apply.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};

use crate::accounts::crypt::Method;
use crate::accounts::{self, AdminDir, Report, USERS_FILE};
use crate::config::Role;

/// Quiet time after the last event before applying.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// The admin folders are looked for again at least this often, in case one was
/// made without /etc/group changing at a moment we saw.
const REWATCH_EVERY: Duration = Duration::from_secs(10);

pub struct UsersWatch {
    inotify: Inotify,
    data_dir: PathBuf,
    hash_method: Option<Method>,
    watched: HashMap<WatchDescriptor, PathBuf>,
    /// /etc, for /etc/group: who is an admin changes with it (`users apply`, by hand).
    etc: Option<WatchDescriptor>,
    /// The users.yaml to apply and when.
    pending: Option<(PathBuf, Instant)>,
    /// When to look for admin folders again: soon after /etc/group changes
    /// (useradd makes the folder just after), and every REWATCH_EVERY.
    rewatch_at: Instant,
    /// The users.yaml files as last applied or written by us: a file still in
    /// that state is not applied again; any other is (an upload, or on a
    /// standby the master's copy arriving).
    known: HashMap<PathBuf, FileStamp>,
    /// On a standby the admin folders come from the master, before their
    /// accounts exist: every `<data_dir>/*/admin` folder counts.
    standby: bool,
    /// Set when the admin folders were looked for again, so the daemon can
    /// bring other per-user set-up (the SFTP log link) up to date too.
    pub rewatched: bool,
}

impl UsersWatch {
    pub fn new(
        data_dir: &Path,
        hash_method: Option<Method>,
        role: Role,
    ) -> std::io::Result<UsersWatch> {
        let inotify = Inotify::init()?;
        let etc = inotify
            .watches()
            .add(
                "/etc",
                WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR,
            )
            .map_err(|err| tracing::warn!("cannot watch /etc for new admins: {err}"))
            .ok();
        Ok(UsersWatch {
            inotify,
            etc,
            data_dir: data_dir.to_path_buf(),
            hash_method,
            watched: HashMap::new(),
            pending: None,
            rewatch_at: Instant::now(),
            known: HashMap::new(),
            standby: role == Role::Standby,
            rewatched: false,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Follows a config reload.
    pub fn set_config(&mut self, data_dir: &Path, hash_method: Option<Method>) {
        self.data_dir = data_dir.to_path_buf();
        self.hash_method = hash_method;
        self.rewatch();
    }

    fn admin_dirs(&self) -> Vec<AdminDir> {
        if self.standby {
            accounts::admin_dirs_on_disk(&self.data_dir)
        } else {
            accounts::admin_dirs(&self.data_dir)
        }
    }

    /// Watches exactly the current admin folders.
    pub fn rewatch(&mut self) {
        self.rewatch_at = Instant::now()
            + if self.standby {
                Duration::from_secs(1)
            } else {
                REWATCH_EVERY
            };
        self.rewatched = true;
        let dirs = self.admin_dirs();
        let mut watches = self.inotify.watches();
        self.watched.retain(|wd, path| {
            let keep = dirs.iter().any(|d| &d.path == path);
            if !keep {
                let _ = watches.remove(wd.clone());
            }
            keep
        });
        for d in dirs {
            if self.watched.values().any(|p| *p == d.path) {
                continue;
            }
            let mask = WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::DONT_FOLLOW
                | WatchMask::ONLYDIR;
            match watches.add(&d.path, mask) {
                Ok(wd) => {
                    self.watched.insert(wd, d.path);
                }
                Err(err) => {
                    tracing::warn!(path = %d.path.display(), "cannot watch the admin folder: {err}")
                }
            }
        }
        // A users.yaml not applied yet (it arrived before its folder was watched,
        // or while we were down): apply it once it has settled.
        if self.pending.is_none() {
            for path in self.watched.values() {
                let file = path.join(USERS_FILE);
                if let Some(stamp) = FileStamp::of(&file)
                    && self.known.get(&file) != Some(&stamp)
                    // On a standby files arrive whole (renamed into place).
                    && (self.standby || stamp.settled())
                {
                    self.pending = Some((file, Instant::now() + DEBOUNCE));
                    break;
                }
            }
        }
    }

    /// At start-up: apply the newest users.yaml among the admin folders, if any.
    pub fn startup(&mut self) -> Option<Report> {
        self.rewatch();
        let newest = self
            .admin_dirs()
            .into_iter()
            .map(|d| d.path.join(USERS_FILE))
            .filter_map(|p| Some((fs::symlink_metadata(&p).ok()?.mtime(), p)))
            .max()?;
        Some(self.apply(&newest.1))
    }

    /// Reads pending inotify events and schedules an apply.
    pub fn on_readable(&mut self) {
        let mut buffer = [0u8; 4096];
        loop {
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    tracing::warn!("reading inotify events failed: {err}");
                    return;
                }
            };
            let mut any = false;
            let mut groups_changed = false;
            for event in events {
                any = true;
                if Some(&event.wd) == self.etc.as_ref() {
                    groups_changed |= event.name.is_some_and(|n| n == "group");
                } else if event.name.is_some_and(|n| n == USERS_FILE)
                    && let Some(dir) = self.watched.get(&event.wd)
                {
                    self.pending = Some((dir.join(USERS_FILE), Instant::now() + DEBOUNCE));
                }
            }
            if groups_changed {
                self.rewatch_at = self.rewatch_at.min(Instant::now() + DEBOUNCE);
            }
            if !any {
                return;
            }
        }
    }

    /// When [`UsersWatch::run_due`] has something to do next.
    pub fn deadline(&self) -> Instant {
        self.pending
            .as_ref()
            .map_or(self.rewatch_at, |(_, at)| (*at).min(self.rewatch_at))
    }

    /// Looks for admin folders again if it is time, and applies the pending
    /// users.yaml if its quiet time is over.
    pub fn run_due(&mut self) -> Option<Report> {
        if Instant::now() >= self.rewatch_at {
            self.rewatch();
        }
        let (path, at) = self.pending.take()?;
        if Instant::now() < at {
            self.pending = Some((path, at));
            return None;
        }
        if self
            .known
            .get(&path)
            .is_some_and(|s| Some(*s) == FileStamp::of(&path))
        {
            // Our own rewrite or copy, or a file already applied.
            return None;
        }
        Some(self.apply(&path))
    }

    /// Applies one users.yaml, then publishes it and the outcome to every admin folder.
    fn apply(&mut self, path: &Path) -> Report {
        let report = accounts::apply_file(path, &self.data_dir, self.hash_method, false);
        if report.ok() {
            tracing::info!(path = %path.display(), "users.yaml applied: {}", report.summary());
        } else {
            tracing::error!(path = %path.display(), "users.yaml not applied: {}", report.summary());
        }
        if let Ok(users) = &report.outcome {
            for (name, what) in users.iter().filter(|(_, w)| w != "unchanged") {
                tracing::info!(user = %name, "account {name}: {what}");
            }
        }
        // A new admin has a new folder to watch and to publish to.
        self.rewatch();
        let published = if report.ok() {
            accounts::read_users_file(path).ok().map(|(t, _)| t)
        } else {
            None
        };
        let dirs = self.admin_dirs();
        // On a standby the master already replicates users.yaml into every admin
        // folder: only the outcome is written here.
        let copies = if self.standby {
            None
        } else {
            published.as_deref()
        };
        accounts::publish(&dirs, path, copies, &report.render());
        if let Some(stamp) = FileStamp::of(path) {
            self.known.insert(path.to_path_buf(), stamp);
        }
        if published.is_some() {
            for p in dirs.iter().map(|d| d.path.join(USERS_FILE)) {
                if let Some(stamp) = FileStamp::of(&p) {
                    self.known.insert(p, stamp);
                }
            }
        }
        report
    }
}

/// What tells one version of a file from the next: an upload either makes a
/// new inode (rename) or writes in place and moves the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// Last modified more than a second ago: not in the middle of an upload.
    fn settled(&self) -> bool {
        crate::timefmt::unix_now() as i64 > self.mtime + 1
    }

    fn of(path: &Path) -> Option<FileStamp> {
        let m = fs::symlink_metadata(path).ok()?;
        Some(FileStamp {
            inode: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}
