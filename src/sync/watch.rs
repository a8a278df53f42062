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
    limit_logged: bool,
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
            limit_logged: false,
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

    /// After a full walk, which watched every folder it listed: drops the
    /// watches of folders no longer in `folders`.
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
        match self.inotify.watches().add(&full, mask) {
            Ok(wd) => {
                // The same folder under a new name (renamed): same watch.
                if let Some(old) = self.by_wd.insert(wd.clone(), path.clone())
                    && old != path
                    && self.by_path.get(&old) == Some(&wd)
                {
                    self.by_path.remove(&old);
                }
                self.by_path.insert(path, wd);
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::ENOSPC) => {
                if !self.limit_logged {
                    self.limit_logged = true;
                    tracing::warn!(
                        "inotify watch limit reached: new files are found by the fallback scan only; raise it with sysctl fs.inotify.max_user_watches"
                    );
                }
            }
            Err(_) => {} // gone meanwhile
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
