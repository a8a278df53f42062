//! Watching the admin folders for users.yaml and applying it.
//!
//! Every admin has `<data_dir>/<name>/admin/` in their chroot, seen as `/admin`.
//! They are kept as one folder: a users.yaml uploaded to any of them is applied,
//! then copied (rewritten without plaintext) to every other admin's folder, and
//! the outcome, users.yaml.status, is written to all of them.
//!
//! Every way a client puts a new users.yaml in place is an event: FileZilla
//! writes in place (IN_CLOSE_WRITE); `posix-rename@openssh.com` (the stock
//! sftp client's `rename`) and sync tools rename over it (IN_MOVED_TO); WinSCP
//! and plain SFTP v3 clients remove the old file and rename a temporary to
//! users.yaml, which sftp-server does with link() and unlink() (IN_CREATE,
//! and no close). A file still open for writing when its quiet time is over
//! waits for its close. The moment when users.yaml is absent means nothing:
//! a missing file is never read as "no users". Events are debounced, so a
//! burst of writes leads to one apply.
//!
//! An apply runs on a thread of its own: hashing passwords and running
//! useradd can take seconds, and the main loop must keep pinging the watchdog.
//!
//! Which file counts: on a master, only the folders of the current managed
//! admins (owned by them); among several, the most recently *changed* one
//! (ctime: no user can set it). After each successful apply the master also
//! writes the file as applied to `<data_dir>/.sftp-ha-users.yaml` (root's,
//! outside every chroot), and a standby applies that file and nothing else:
//! never an upload the master refused, never a demoted admin's old file,
//! never anything a user could have written.
//!
//! With shared storage (`[sync] storage = "shared"`) the standby sees the
//! master's data dir itself: it applies the same `.sftp-ha-users.yaml` (so
//! both hosts get the same uids, which the files on the shared storage carry)
//! as soon as inotify says it changed, and looks at it again every
//! [`SHARED_LOOK_EVERY`] because inotify does not see another client's
//! writes on NFS. It then changes only the accounts and their keys: never the
//! users' folders (the master's), never a file in the data dir (no copies,
//! no users.yaml.status: the master writes those).

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::accounts::crypt::Method;
use crate::accounts::{self, AdminDir, Apply, FileVersion, Report, USERS_FILE};
use crate::config::Role;
use crate::layout::PUBLISHED_USERS;

/// Quiet time after the last event before applying.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// The admin folders are looked for again at least this often, in case one was
/// made without /etc/group changing at a moment we saw.
const REWATCH_EVERY: Duration = Duration::from_secs(10);
/// How often the main loop looks whether a running apply has finished.
const APPLY_POLL: Duration = Duration::from_millis(20);
/// With shared storage, how often a standby looks at the master's published
/// users.yaml even without an event (inotify does not see an NFS client's
/// writes from the other host).
pub const SHARED_LOOK_EVERY: Duration = Duration::from_secs(2);
/// On a standby, the first wait before the master's users.yaml is applied
/// again after the host refused a step (useradd failed, /etc/passwd locked);
/// it doubles on each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// A version of the master's users.yaml whose apply the host refused, and
/// when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Retry {
    path: PathBuf,
    version: Option<FileVersion>,
    at: Instant,
    wait: Duration,
}

/// Whether an outcome settles a file's version (it is not applied again
/// until it changes): applied, or invalid (trying again changes nothing).
/// A step the host refused may succeed later.
fn settles<T>(outcome: &Result<T, accounts::Failure>) -> bool {
    !matches!(outcome, Err(accounts::Failure::System(_)))
}

/// The wait before the next try, after one of `previous` (none: the first failure).
fn next_retry_wait(previous: Option<Duration>) -> Duration {
    previous.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX))
}

pub struct UsersWatch {
    inotify: Inotify,
    data_dir: PathBuf,
    hash_method: Option<Method>,
    watched: HashMap<WatchDescriptor, PathBuf>,
    /// /etc, for /etc/group: who is an admin changes with it (`users apply`, by hand).
    etc: Option<WatchDescriptor>,
    /// On a standby: the data dir itself, where the master's applied file arrives.
    top: Option<WatchDescriptor>,
    /// The users.yaml to apply and when.
    pending: Option<(PathBuf, Instant)>,
    /// What scheduled it, for the journal.
    pending_why: &'static str,
    /// When to look for admin folders again: soon after /etc/group changes
    /// (useradd makes the folder just after), and every REWATCH_EVERY.
    rewatch_at: Instant,
    /// The users.yaml files as last applied or written by us: a file still in
    /// that state is not applied again; any other is (an upload, or on a
    /// standby the master's copy arriving).
    known: HashMap<PathBuf, FileVersion>,
    /// A standby applies only what the master published.
    standby: bool,
    /// Both hosts mount the same data dir: a standby changes accounts only.
    shared: bool,
    /// Set when the admin folders were looked for again, so the daemon can
    /// bring other per-user set-up (the SFTP log link) up to date too.
    pub rewatched: bool,
    /// The apply running on its own thread, and the file it reads.
    running: Option<(PathBuf, JoinHandle<Report>, &'static str)>,
    /// On a standby: the master's file the host failed to apply, tried again later.
    retry: Option<Retry>,
}

impl UsersWatch {
    pub fn new(
        data_dir: &Path,
        hash_method: Option<Method>,
        role: Role,
        shared: bool,
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
        let standby = role == Role::Standby;
        let top = if standby {
            watch_top(&inotify, data_dir)
        } else {
            None
        };
        Ok(UsersWatch {
            inotify,
            etc,
            top,
            data_dir: data_dir.to_path_buf(),
            hash_method,
            watched: HashMap::new(),
            pending: None,
            pending_why: "",
            rewatch_at: Instant::now(),
            known: HashMap::new(),
            standby,
            shared,
            rewatched: false,
            running: None,
            retry: None,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Follows a config reload.
    pub fn set_config(&mut self, data_dir: &Path, hash_method: Option<Method>) {
        if self.standby && data_dir != self.data_dir {
            if let Some(wd) = self.top.take() {
                let _ = self.inotify.watches().remove(wd);
            }
            self.top = watch_top(&self.inotify, data_dir);
        }
        self.data_dir = data_dir.to_path_buf();
        self.hash_method = hash_method;
        self.rewatch();
    }

    /// The admin folders whose users.yaml may be applied: none on a standby.
    fn admin_dirs(&self) -> Vec<AdminDir> {
        if self.standby {
            Vec::new()
        } else {
            accounts::admin_dirs(&self.data_dir)
        }
    }

    /// How often the folders (on a standby the published file) are looked at
    /// again without an event.
    fn look_every(&self) -> Duration {
        if self.standby && self.shared {
            SHARED_LOOK_EVERY
        } else {
            REWATCH_EVERY
        }
    }

    /// On a standby, the file the master publishes after each successful apply.
    fn published(&self) -> PathBuf {
        self.data_dir.join(PUBLISHED_USERS)
    }

    /// Watches exactly the current admin folders.
    pub fn rewatch(&mut self) {
        self.rewatch_at = Instant::now() + self.look_every();
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
                | WatchMask::CREATE
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
            let candidates: Vec<PathBuf> = if self.standby {
                vec![self.published()]
            } else {
                self.watched.values().map(|p| p.join(USERS_FILE)).collect()
            };
            for file in candidates {
                if let Some(stamp) = FileVersion::of(&file)
                    && self.known.get(&file) != Some(&stamp)
                    // On a standby files arrive whole (renamed into place).
                    && (self.standby || stamp.settled())
                {
                    self.pending = Some((file, Instant::now() + DEBOUNCE));
                    self.pending_why = "found by a look at the admin folders";
                    break;
                }
            }
        }
    }

    /// At start-up: schedule the most recently changed users.yaml among the
    /// admin folders (on a standby, the master's published file), if any;
    /// the main loop applies it, off its own thread.
    pub fn startup(&mut self) {
        self.rewatch();
        let candidates: Vec<PathBuf> = if self.standby {
            vec![self.published()]
        } else {
            self.admin_dirs()
                .into_iter()
                .map(|d| d.path.join(USERS_FILE))
                .collect()
        };
        let newest = candidates
            .into_iter()
            .filter_map(|p| {
                let m = fs::symlink_metadata(&p).ok()?;
                Some(((m.ctime(), m.ctime_nsec()), p))
            })
            .max();
        if let Some((_, path)) = newest {
            self.pending = Some((path, Instant::now()));
            self.pending_why = "found at start";
        }
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
                } else if Some(&event.wd) == self.top.as_ref() {
                    if event.name.is_some_and(|n| n == PUBLISHED_USERS) {
                        self.pending = Some((self.published(), Instant::now() + DEBOUNCE));
                        self.pending_why = "arrived from the master";
                    }
                } else if event.name.is_some_and(|n| n == USERS_FILE)
                    && let Some(dir) = self.watched.get(&event.wd)
                {
                    self.pending = Some((dir.join(USERS_FILE), Instant::now() + DEBOUNCE));
                    self.pending_why = if event.mask.contains(EventMask::MOVED_TO) {
                        "renamed into place"
                    } else if event.mask.contains(EventMask::CREATE) {
                        "created"
                    } else {
                        "written"
                    };
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
        if self.running.is_some() {
            return Instant::now() + APPLY_POLL;
        }
        self.pending
            .as_ref()
            .map_or(self.rewatch_at, |(_, at)| (*at).min(self.rewatch_at))
    }

    /// Looks for admin folders again if it is time, starts the pending apply
    /// if its quiet time is over, and returns the outcome of one that finished.
    pub fn run_due(&mut self) -> Option<Report> {
        if let Some((path, handle, why)) = self.running.take() {
            if !handle.is_finished() {
                self.running = Some((path, handle, why));
                return None;
            }
            let report = match handle.join() {
                Ok(report) => report,
                Err(_) => Report {
                    at: crate::timefmt::unix_now(),
                    file: path.clone(),
                    dry_run: false,
                    outcome: Err(accounts::Failure::System(
                        "the apply stopped unexpectedly; see the journal".into(),
                    )),
                    version: None,
                },
            };
            return Some(self.finish(&path, report, why));
        }
        if Instant::now() >= self.rewatch_at {
            self.rewatch();
        }
        let (path, at) = self.pending.take()?;
        if Instant::now() < at {
            self.pending = Some((path, at));
            return None;
        }
        if let Some(retry) = &self.retry
            && retry.path == path
            && Instant::now() < retry.at
            && FileVersion::of(&path) == retry.version
        {
            // Failed a moment ago and unchanged since: not before its time.
            self.pending = Some((path, retry.at));
            return None;
        }
        if self
            .known
            .get(&path)
            .is_some_and(|s| Some(*s) == FileVersion::of(&path))
        {
            // Our own rewrite or copy, or a file already applied.
            return None;
        }
        if still_being_written(&path) {
            // Created and not closed yet: its IN_CLOSE_WRITE schedules it again.
            return None;
        }
        // On a master, only a current admin's folder (one may have been demoted
        // since the event); on a standby, only the master's published file.
        let allowed = if self.standby {
            path == self.published()
        } else {
            self.admin_dirs()
                .iter()
                .any(|d| path.parent() == Some(&d.path))
        };
        if !allowed {
            return None;
        }
        tracing::debug!(path = %path.display(), "applying users.yaml ({})", self.pending_why);
        let how = apply_mode(self.standby, self.shared);
        let (file, data_dir, method) = (path.clone(), self.data_dir.clone(), self.hash_method);
        match std::thread::Builder::new()
            .name("users-apply".into())
            .spawn(move || accounts::apply_file(&file, &data_dir, method, how))
        {
            Ok(handle) => self.running = Some((path, handle, self.pending_why)),
            Err(err) => {
                tracing::error!("cannot start applying users.yaml: {err}; trying again shortly");
                self.pending = Some((path, Instant::now() + REWATCH_EVERY));
            }
        }
        None
    }

    /// After an apply: logs it, then publishes the file and the outcome to every admin folder.
    fn finish(&mut self, path: &Path, report: Report, why: &str) -> Report {
        if report.ok() {
            tracing::info!(path = %path.display(), "users.yaml applied ({why}): {}", report.summary());
        } else {
            tracing::error!(path = %path.display(), "users.yaml not applied ({why}): {}", report.summary());
        }
        if let Ok(users) = &report.outcome {
            for (name, what) in users.iter().filter(|(_, w)| w != "unchanged") {
                tracing::info!(user = %name, "account {name}: {what}");
            }
        }
        // A new admin has a new folder to watch and to publish to.
        self.rewatch();
        // Copied to the other admins and to the standby only while the file is
        // still the version applied (a newer upload is applied, then copied, next).
        let published =
            if report.ok() && report.version.is_some() && FileVersion::of(path) == report.version {
                accounts::read_users_file(path).ok().map(|(t, _)| t)
            } else {
                None
            };
        if self.standby && self.shared {
            // The master's folders, and the master's outcome in them: nothing
            // is written here (see the module doc).
            self.settle_or_retry(path, &report);
            return report;
        }
        let dirs = accounts::admin_dirs(&self.data_dir);
        // On a standby the master already replicates users.yaml into every admin
        // folder: only the outcome is written here.
        let copies = if self.standby {
            None
        } else {
            published.as_deref()
        };
        accounts::publish(&self.data_dir, &dirs, path, copies, &report.render());
        // The version this outcome is about: a newer upload that landed during
        // the apply is not marked as known, so it is applied next.
        if self.standby {
            self.settle_or_retry(path, &report);
        } else if let Some(version) = report.version {
            self.known.insert(path.to_path_buf(), version);
        }
        if published.is_some() {
            for p in dirs.iter().map(|d| d.path.join(USERS_FILE)) {
                if let Some(stamp) = FileVersion::of(&p) {
                    self.known.insert(p, stamp);
                }
            }
        }
        report
    }
}

impl UsersWatch {
    /// On a standby, after an apply of the master's file: a version applied
    /// or invalid is known (not applied again until it changes); one the
    /// host refused a step of is tried again after a wait that doubles, from
    /// [`RETRY_FIRST`] up to [`RETRY_MAX`].
    fn settle_or_retry(&mut self, path: &Path, report: &Report) {
        if settles(&report.outcome) {
            self.retry = None;
            if let Some(version) = report.version {
                self.known.insert(path.to_path_buf(), version);
            }
            return;
        }
        let version = report.version.or_else(|| FileVersion::of(path));
        let previous = self
            .retry
            .as_ref()
            .filter(|r| r.path == path && r.version == version)
            .map(|r| r.wait);
        let wait = next_retry_wait(previous);
        let at = Instant::now() + wait;
        tracing::warn!(
            path = %path.display(),
            "the master's users.yaml is tried again in {} (unless it changes first)",
            crate::timefmt::format_duration(wait)
        );
        self.retry = Some(Retry {
            path: path.to_path_buf(),
            version,
            at,
            wait,
        });
        self.pending = Some((path.to_path_buf(), at));
        self.pending_why = "tried again after a failure";
    }
}

/// How a host applies a users.yaml: a master applies uploads (and rewrites
/// them); a standby mirrors the master's file, and with shared storage
/// leaves the (master's) folders alone too.
fn apply_mode(standby: bool, shared: bool) -> Apply {
    match (standby, shared) {
        (false, _) => Apply::Apply,
        (true, false) => Apply::Mirror,
        (true, true) => Apply::Accounts,
    }
}

/// True if the kernel says some process has `path` open for writing (an
/// in-place upload in progress). When it cannot say, the file is taken as it is.
fn still_being_written(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()
        .and_then(|f| crate::sync::lease::nobody_writes(&f))
        == Some(false)
}

/// On a standby: watches the data dir for the master's published file.
fn watch_top(inotify: &Inotify, data_dir: &Path) -> Option<WatchDescriptor> {
    let mask =
        WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::DONT_FOLLOW | WatchMask::ONLYDIR;
    inotify
        .watches()
        .add(data_dir, mask)
        .map_err(|err| {
            tracing::warn!(path = %data_dir.display(), "cannot watch the data dir for the master's users.yaml: {err}")
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_master_rewrites_and_a_shared_standby_leaves_the_folders_alone() {
        assert_eq!(apply_mode(false, false), Apply::Apply);
        assert_eq!(apply_mode(false, true), Apply::Apply);
        assert_eq!(apply_mode(true, false), Apply::Mirror);
        assert_eq!(apply_mode(true, true), Apply::Accounts);
    }

    #[test]
    fn a_refused_step_is_tried_again_with_a_growing_wait_an_invalid_file_is_not() {
        assert!(settles(&Ok::<(), _>(())));
        assert!(settles(&Err::<(), _>(accounts::Failure::Invalid(
            Vec::new()
        ))));
        assert!(!settles(&Err::<(), _>(accounts::Failure::System(
            "useradd: cannot lock /etc/passwd".into()
        ))));
        assert_eq!(next_retry_wait(None), RETRY_FIRST);
        assert_eq!(next_retry_wait(Some(RETRY_FIRST)), RETRY_FIRST * 2);
        assert_eq!(next_retry_wait(Some(Duration::from_secs(160))), RETRY_MAX);
        assert_eq!(next_retry_wait(Some(RETRY_MAX)), RETRY_MAX);
    }

    #[test]
    fn a_standby_tries_the_masters_file_again_after_a_system_failure() {
        let dir = std::env::temp_dir().join(format!("sftp-ha-users-retry-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut w = UsersWatch::new(&dir, None, Role::Standby, true).unwrap();
        let file = w.published();
        fs::write(&file, "users: []\n").unwrap();
        let version = FileVersion::of(&file);
        let report = |outcome| Report {
            at: 0,
            file: file.clone(),
            dry_run: false,
            outcome,
            version,
        };
        let refused = || Err(accounts::Failure::System("useradd failed".into()));
        let before = Instant::now();
        w.finish(&file, report(refused()), "test");
        assert!(
            !w.known.contains_key(&file),
            "a refused version is not known"
        );
        let retry = w.retry.clone().unwrap();
        assert_eq!(retry.wait, RETRY_FIRST);
        assert!(retry.at >= before + RETRY_FIRST);
        assert_eq!(
            w.pending.as_ref().map(|(p, at)| (p, *at)),
            Some((&file, retry.at))
        );
        // An event before the wait is over does not start it early.
        w.pending = Some((file.clone(), Instant::now()));
        assert!(w.run_due().is_none());
        assert!(w.running.is_none());
        assert_eq!(w.pending.as_ref().map(|(_, at)| *at), Some(retry.at));
        // Failing again: the wait doubles.
        w.finish(&file, report(refused()), "test");
        assert_eq!(w.retry.as_ref().unwrap().wait, RETRY_FIRST * 2);
        // Applied (or invalid): known, no more tries.
        w.finish(&file, report(Ok(Vec::new())), "test");
        assert_eq!(w.known.get(&file), version.as_ref());
        assert!(w.retry.is_none());
        w.known.clear();
        w.finish(
            &file,
            report(Err(accounts::Failure::Invalid(Vec::new()))),
            "test",
        );
        assert_eq!(w.known.get(&file), version.as_ref());
        assert!(w.retry.is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shared_standby_looks_at_the_published_file_every_few_seconds() {
        let dir = std::env::temp_dir();
        let shared = UsersWatch::new(&dir, None, Role::Standby, true).unwrap();
        assert_eq!(shared.look_every(), SHARED_LOOK_EVERY);
        let own = UsersWatch::new(&dir, None, Role::Standby, false).unwrap();
        assert_eq!(own.look_every(), REWATCH_EVERY);
        let master = UsersWatch::new(&dir, None, Role::Master, true).unwrap();
        assert_eq!(master.look_every(), REWATCH_EVERY);
    }
}
