//! The inotify side of replication: one watch per folder of the data dir,
//! kept in step with the tree, and events turned into the paths they name.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::tree::join;

/// The kernel's inotify limits (`/proc/sys/fs/inotify/`), read at each full
/// walk; `None` where it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Watches all of one user's programs together may hold (root's, here:
    /// systemd and others take theirs from the same count).
    pub max_user_watches: Option<u64>,
    /// Events queued before the kernel drops them (then a full walk follows).
    pub max_queued_events: Option<u64>,
}

impl Limits {
    pub fn read() -> Limits {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        Limits {
            max_user_watches: read("max_user_watches"),
            max_queued_events: read("max_queued_events"),
        }
    }
}

/// How the watches stand after a full walk: the folders the tree has (each
/// needs one watch), those that got one, and the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watches {
    pub folders: usize,
    pub watched: usize,
    pub max_user_watches: Option<u64>,
    pub max_queued_events: Option<u64>,
}

impl Watches {
    /// Whether some folders have no watch: their changes wait for the
    /// fallback walk.
    pub fn short(&self) -> bool {
        self.watched < self.folders
    }

    /// A `max_user_watches` with room for every folder, and for the tree to
    /// double: the present limit (which the other programs share) plus the
    /// folders left without a watch plus the tree's folders again, rounded
    /// up to a power of two.
    pub fn suggested_limit(&self) -> u64 {
        let missing = self.folders.saturating_sub(self.watched) as u64;
        self.max_user_watches
            .unwrap_or(8192)
            .saturating_add(missing)
            .saturating_add(self.folders as u64)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
    }

    /// For the journal and `sftp-ha status`; `fallback` is the fallback
    /// walk's interval in words.
    pub fn words(&self, fallback: &str) -> String {
        let limit = match self.max_user_watches {
            Some(n) => format!("fs.inotify.max_user_watches = {n}"),
            None => "fs.inotify.max_user_watches unknown".into(),
        };
        let queue = match self.max_queued_events {
            Some(n) => format!(", max_queued_events = {n}"),
            None => String::new(),
        };
        if self.short() {
            format!(
                "LIMIT REACHED: {} of {} folders watched ({limit}, for all of root's programs together{queue}); \
                 changes in the other {} wait for the fallback walk (every {}); \
                 fix: sysctl -w fs.inotify.max_user_watches={} and the same line in /etc/sysctl.d/60-sftp-ha.conf",
                self.watched,
                self.folders,
                self.folders - self.watched,
                fallback,
                self.suggested_limit()
            )
        } else {
            format!(
                "{} folders watched, one watch each ({limit}, for all of root's programs together{queue})",
                self.watched
            )
        }
    }
}

/// What a batch of events named.
#[derive(Debug, Default)]
pub struct Noticed {
    /// Any event at all.
    pub any: bool,
    /// Events were lost (queue overflow, the data dir's own watch gone):
    /// only a walk of the whole tree can tell what changed.
    pub rescan_all: bool,
    /// Paths to look at again, each with whether it was just completed
    /// (closed after writing, or renamed into place).
    pub paths: Vec<(Vec<u8>, bool)>,
}

pub struct Watcher {
    root: PathBuf,
    inotify: Inotify,
    /// Watched folder → its path in the tree (empty: the data dir), and back.
    by_wd: HashMap<WatchDescriptor, Vec<u8>>,
    by_path: HashMap<Vec<u8>, WatchDescriptor>,
    /// Tests only: refuse watches beyond this many, as the kernel does at
    /// `max_user_watches` (which is one value for the whole machine, so a
    /// test cannot lower it for itself alone).
    #[cfg(test)]
    pub(super) cap: Option<usize>,
    /// Events read by [`Watcher::drain`] and not handed out yet.
    pending: Noticed,
}

impl Watcher {
    pub fn new(root: PathBuf) -> std::io::Result<Watcher> {
        Ok(Watcher {
            root,
            inotify: Inotify::init()?,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            #[cfg(test)]
            cap: None,
            pending: Noticed::default(),
        })
    }

    /// Waits up to `wait` for events (not at all if some were drained
    /// already) and returns all noticed since the last call.
    pub fn wait(&mut self, wait: Duration) -> Noticed {
        if !self.pending.any {
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            if poll(&mut fds, timeout).unwrap_or(0) <= 0 {
                return Noticed::default();
            }
        }
        self.drain();
        std::mem::take(&mut self.pending)
    }

    /// Reads the events queued now, without waiting, and keeps them for the
    /// next [`Watcher::wait`]. Called during long transfers, so a burst does
    /// not overflow the kernel's queue while no one reads it.
    pub fn drain(&mut self) {
        let noticed = &mut self.pending;
        let mut buf = [0u8; 64 * 1024];
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            let mut n = 0;
            for e in events {
                n += 1;
                noticed.any = true;
                if e.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::warn!("inotify queue overflowed: a full scan follows");
                    noticed.rescan_all = true;
                    continue;
                }
                let Some(dir) = self.by_wd.get(&e.wd).cloned() else {
                    continue;
                };
                if e.mask.intersects(EventMask::IGNORED | EventMask::UNMOUNT) {
                    // The folder is gone or its file system unmounted: its watch too.
                    self.by_wd.remove(&e.wd);
                    if self.by_path.get(&dir) == Some(&e.wd) {
                        self.by_path.remove(&dir);
                    }
                    noticed.rescan_all |= dir.is_empty();
                    noticed.paths.push((dir, false));
                    continue;
                }
                let path = match e.name {
                    Some(name) => join(&dir, name.as_encoded_bytes()),
                    None => dir,
                };
                // Closed after writing, or renamed into place (how WinSCP and `mv`
                // finish a file): complete, so it may go at once.
                let complete = e
                    .mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO);
                noticed.paths.push((path, complete));
            }
            if n == 0 {
                break;
            }
        }
    }

    pub fn is_watched(&self, path: &[u8]) -> bool {
        self.by_path.contains_key(path)
    }

    /// Folders watched now.
    pub fn watched(&self) -> usize {
        self.by_wd.len()
    }

    /// After a full walk, which watched every folder it listed: drops the
    /// watches of folders no longer in `folders`. Those the kernel refused a
    /// watch (the limit) have none: [`Watcher::watched`] tells them apart.
    pub fn keep_only(&mut self, folders: &std::collections::HashSet<Vec<u8>>) {
        let mut watches = self.inotify.watches();
        // A watch whose folder was renamed still carries the old path: dropped
        // here, and the folder watched again under its new one.
        self.by_wd.retain(|wd, path| {
            let keep = folders.contains(path);
            if !keep {
                let _ = watches.remove(wd.clone());
            }
            keep
        });
        self.by_path = self
            .by_wd
            .iter()
            .map(|(wd, p)| (p.clone(), wd.clone()))
            .collect();
    }

    /// Adds a watch on one folder of the tree.
    pub fn watch(&mut self, path: Vec<u8>) {
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::ONLYDIR
            | WatchMask::DONT_FOLLOW;
        let full = self.root.join(std::ffi::OsStr::from_bytes(&path));
        #[cfg(test)]
        if self.cap.is_some_and(|cap| self.by_wd.len() >= cap) && !self.by_path.contains_key(&path)
        {
            return;
        }
        // An error is the limit (ENOSPC: the folder has no watch, which the
        // next full walk reports, see `Watches`) or a folder gone meanwhile.
        if let Ok(wd) = self.inotify.watches().add(&full, mask) {
            // The same folder under a new name (renamed): same watch.
            if let Some(old) = self.by_wd.insert(wd.clone(), path.clone())
                && old != path
                && self.by_path.get(&old) == Some(&wd)
            {
                self.by_path.remove(&old);
            }
            self.by_path.insert(path, wd);
        }
    }

    /// Drops the watch of a folder that is gone from the tree.
    pub fn unwatch(&mut self, path: &[u8]) {
        if let Some(wd) = self.by_path.remove(path)
            // A folder renamed keeps its watch: it may already stand for the new path.
            && self.by_wd.get(&wd).is_some_and(|p| p == path)
        {
            self.by_wd.remove(&wd);
            let _ = self.inotify.watches().remove(wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_in_words_and_the_limit_to_suggest() {
        let all = Watches {
            folders: 10_001,
            watched: 10_001,
            max_user_watches: Some(8192 * 8),
            max_queued_events: Some(16_384),
        };
        assert!(!all.short());
        assert_eq!(
            all.words("1m40s"),
            "10001 folders watched, one watch each (fs.inotify.max_user_watches = 65536, for all of root's programs together, max_queued_events = 16384)"
        );
        // RHEL 8's default limit, most of it taken by other programs.
        let short = Watches {
            folders: 10_001,
            watched: 6_000,
            max_user_watches: Some(8192),
            max_queued_events: None,
        };
        assert!(short.short());
        // 8192 + 4001 missing + 10001 for growth, to a power of two.
        assert_eq!(short.suggested_limit(), 32_768);
        let words = short.words("1m40s");
        assert!(
            words.starts_with(
                "LIMIT REACHED: 6000 of 10001 folders watched (fs.inotify.max_user_watches = 8192"
            ),
            "{words}"
        );
        assert!(
            words.contains("the other 4001 wait for the fallback walk (every 1m40s)"),
            "{words}"
        );
        assert!(words.ends_with("fix: sysctl -w fs.inotify.max_user_watches=32768 and the same line in /etc/sysctl.d/60-sftp-ha.conf"), "{words}");
        let unknown = Watches {
            max_user_watches: None,
            ..short
        };
        assert!(
            unknown
                .words("1m40s")
                .contains("fs.inotify.max_user_watches unknown")
        );
        let limits = Limits::read();
        assert!(
            limits.max_user_watches.is_some() && limits.max_queued_events.is_some(),
            "{limits:?}"
        );
    }

    #[test]
    fn a_folder_beyond_the_limit_has_no_watch_and_is_watched_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        let mut w = Watcher::new(root.to_path_buf()).unwrap();
        w.cap = Some(2);
        let all: std::collections::HashSet<Vec<u8>> =
            [b"".to_vec(), b"a".to_vec(), b"b".to_vec()].into();
        for f in [b"".as_slice(), b"a", b"b"] {
            w.watch(f.to_vec());
        }
        w.keep_only(&all);
        assert_eq!(w.watched(), 2);
        assert!(!w.is_watched(b"b"));
        std::fs::write(root.join("b/f"), b"x").unwrap();
        assert!(
            !w.wait(Duration::from_millis(100)).any,
            "no watch, no event"
        );
        w.cap = None;
        w.watch(b"b".to_vec());
        w.keep_only(&all);
        assert_eq!(w.watched(), 3);
    }

    #[test]
    fn events_name_paths_and_a_renamed_folder_keeps_one_watch() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a")).unwrap();
        let mut w = Watcher::new(root.to_path_buf()).unwrap();
        w.watch(Vec::new());
        w.watch(b"a".to_vec());
        std::fs::write(root.join("a/f"), b"x").unwrap();
        let seen = w.wait(Duration::from_secs(1));
        assert!(seen.any && !seen.rescan_all);
        assert!(seen.paths.contains(&(b"a/f".to_vec(), true)), "{seen:?}");
        // Renamed: the kernel's watch follows the folder; watching it under
        // the new name reuses it, and dropping the old name keeps it.
        std::fs::rename(root.join("a"), root.join("b")).unwrap();
        w.watch(b"b".to_vec());
        w.unwatch(b"a");
        assert!(w.is_watched(b"b") && !w.is_watched(b"a"));
        std::fs::write(root.join("b/g"), b"y").unwrap();
        let seen = w.wait(Duration::from_secs(1));
        assert!(seen.paths.contains(&(b"b/g".to_vec(), true)), "{seen:?}");
    }
}
