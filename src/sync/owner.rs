//! Which worker may write to a standby, and to its index file: one at a time.
//!
//! Why: [`super::SyncHandle::stop`] waits a bounded time (the daemon's main
//! loop must not hang on a standby that stopped answering), so on a reload,
//! a step-down or a handover a worker can outlive it, blocked in a request,
//! while the daemon starts new workers. Two workers writing to one standby
//! undo each other's work (one's audit removes the other's temporaries, one
//! deletes what the other just sent, and the last to rename its index file
//! wins). The same happens when one host is listed under two names in
//! `[sync] peer`: two workers of the same start reach it.
//!
//! The design: a worker holds, for as long as its thread lives, what it
//! writes to: the standby's address and its index file (taken before it
//! does anything), and the standby's pinned host key (the one thing two
//! names of one host share; taken once a session was checked against it).
//! A new worker that finds one of them held waits (it connects to nothing
//! and does not even read its index until it holds the first two, so it
//! starts from the old worker's last index): the old one, told to stop,
//! ends at its next check of the stop flag (at most one request or one
//! batch). A worker of the same start that reaches a host key another one
//! holds is on a host listed twice: that one never goes away by itself, so
//! it is reported as a configuration error naming both entries, and the
//! worker that connected first replicates. This is simpler than a
//! generation number checked before each write: a check and the write that
//! follows it are not atomic, a held key is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// One thing a worker writes to and holds alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// The standby's address as listed in `[sync] peer`.
    Endpoint(String),
    /// Its index file in the state dir.
    Index(PathBuf),
    /// The host key pinned for it: one host under two names has one.
    HostKey(String),
}

/// Who holds a key: the start of the workers (see [`Owners::start`]) and
/// the `[sync] peer` entry the worker replicates to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    start: u64,
    entry: String,
}

/// A key another worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub key: Key,
    /// The `[sync] peer` entry of the worker that holds it.
    pub entry: String,
    /// It was started together with the one that asked (the same config):
    /// it will not go away by itself.
    pub same_start: bool,
}

/// The keys held in this process.
#[derive(Debug, Default)]
pub struct Owners {
    held: Mutex<BTreeMap<Key, Holder>>,
    starts: AtomicU64,
}

/// The daemon's: every start of the workers in this process shares it.
static PROCESS: LazyLock<Arc<Owners>> = LazyLock::new(Arc::default);

/// The owners of this process (tests use their own).
pub fn process() -> Arc<Owners> {
    PROCESS.clone()
}

impl Owners {
    /// A number for one start of the workers (one [`super::SyncHandle`]).
    pub fn start(&self) -> u64 {
        self.starts.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Holder>> {
        // Nothing panics while it is held: the map is whole even if poisoned.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every key, or none: the first one held by someone else is
    /// returned.
    pub fn take(
        self: &Arc<Self>,
        start: u64,
        entry: &str,
        keys: Vec<Key>,
    ) -> Result<Owned, Conflict> {
        let mut held = self.lock();
        let holder = Holder {
            start,
            entry: entry.to_string(),
        };
        if let Some(conflict) = keys.iter().find_map(|k| conflict(&held, k, &holder)) {
            return Err(conflict);
        }
        for key in &keys {
            held.insert(key.clone(), holder.clone());
        }
        Ok(Owned {
            owners: self.clone(),
            holder,
            keys,
        })
    }
}

fn conflict(held: &BTreeMap<Key, Holder>, key: &Key, me: &Holder) -> Option<Conflict> {
    let other = held.get(key)?;
    (other != me).then(|| Conflict {
        key: key.clone(),
        entry: other.entry.clone(),
        same_start: other.start == me.start,
    })
}

/// Keys held by one worker; dropping it (the worker's thread ends) lets them go.
#[derive(Debug)]
pub struct Owned {
    owners: Arc<Owners>,
    holder: Holder,
    keys: Vec<Key>,
}

impl Owned {
    /// Holds `key` as the standby's host key instead of the one held so far
    /// (re-pinned since: `sftp-ha pair trust-peer --replace`); `None` (not
    /// pinned) lets the old one go.
    pub fn set_host_key(&mut self, key: Option<String>) -> Result<(), Conflict> {
        let key = key.map(Key::HostKey);
        let old = self.keys.iter().position(|k| matches!(k, Key::HostKey(_)));
        if old.map(|i| &self.keys[i]) == key.as_ref() {
            return Ok(());
        }
        let mut held = self.owners.lock();
        if let Some(key) = &key
            && let Some(conflict) = conflict(&held, key, &self.holder)
        {
            return Err(conflict);
        }
        if let Some(i) = old {
            held.remove(&self.keys.swap_remove(i));
        }
        if let Some(key) = key {
            held.insert(key.clone(), self.holder.clone());
            self.keys.push(key);
        }
        Ok(())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let mut held = self.owners.lock();
        for key in &self.keys {
            if held.get(key) == Some(&self.holder) {
                held.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(host: &str, hostkey: &str) -> Vec<Key> {
        vec![
            Key::Endpoint(format!("{host}:22")),
            Key::Index(PathBuf::from(format!("/state/sync-index.{host}"))),
            Key::HostKey(hostkey.into()),
        ]
    }

    #[test]
    fn a_key_is_held_by_one_worker_until_it_is_dropped() {
        let owners = Arc::new(Owners::default());
        let (old, new) = (owners.start(), owners.start());
        let first = owners.take(old, "s1:22", keys("s1", "K1")).unwrap();
        // A later start waits for it.
        let err = owners.take(new, "s1:22", keys("s1", "K1")).unwrap_err();
        assert_eq!(err.entry, "s1:22");
        assert!(!err.same_start);
        // Nothing was taken by the refused one: all or none.
        let other = owners.take(new, "s2:22", keys("s2", "K2")).unwrap();
        drop(first);
        let again = owners.take(new, "s1:22", keys("s1", "K1")).unwrap();
        drop((other, again));
        assert!(owners.lock().is_empty());
    }

    #[test]
    fn one_host_under_two_names_is_refused_in_the_same_start() {
        let owners = Arc::new(Owners::default());
        let start = owners.start();
        let _first = owners.take(start, "s1:22", keys("s1", "K")).unwrap();
        let err = owners
            .take(start, "10.0.0.1:22", keys("10.0.0.1", "K"))
            .unwrap_err();
        assert_eq!(
            err,
            Conflict {
                key: Key::HostKey("K".into()),
                entry: "s1:22".into(),
                same_start: true
            }
        );
    }

    #[test]
    fn a_host_key_pinned_again_is_held_instead_of_the_old_one() {
        let owners = Arc::new(Owners::default());
        let start = owners.start();
        let mut first = owners.take(start, "s1:22", keys("s1", "K1")).unwrap();
        let mut second = owners.take(start, "s2:22", keys("s2", "K2")).unwrap();
        // Re-pinned to the other's key: refused, the old one still held.
        assert!(second.set_host_key(Some("K1".into())).is_err());
        assert_eq!(first.set_host_key(Some("K3".into())), Ok(()));
        assert_eq!(second.set_host_key(Some("K1".into())), Ok(()));
        assert_eq!(first.set_host_key(None), Ok(()));
        assert!(!owners.lock().contains_key(&Key::HostKey("K3".into())));
    }
}
