//! What one round of the sync worker plans: which part of the trees is
//! compared, and which files are held back because they may still be
//! being written.
//!
//! Pure: whether the kernel knows of a writer (an I/O question, see
//! [`super::lease`]) is asked by the worker between
//! [`maybe_being_written`] and [`hold_back`].

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::tree::{self, Kind, Tree};

/// A file modified this recently and not yet closed may still be written to.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What a targeted round looks at: paths whose own entry changed, and paths
/// whose whole subtree may have (new, gone or replaced folders).
#[derive(Debug, Default)]
pub struct Changed {
    pub exact: BTreeSet<Vec<u8>>,
    pub subtrees: BTreeSet<Vec<u8>>,
}

/// The master's tree and the index as far as this round plans them: only
/// what changed (with its parents), or, for `None`, all of both. All of
/// them is borrowed, not copied: copies of 100,000 entries would double the
/// daemon's memory.
pub fn scope<'a>(
    current: &'a Tree,
    index: &'a Tree,
    changed: Option<&Changed>,
) -> (Cow<'a, Tree>, Cow<'a, Tree>) {
    match changed {
        Some(c) => (
            Cow::Owned(tree::part(current, &c.exact, &c.subtrees)),
            Cow::Owned(tree::part(index, &c.exact, &c.subtrees)),
        ),
        None => (Cow::Borrowed(current), Cow::Borrowed(index)),
    }
}

/// The files of `part` that may still be being written: modified less than
/// [`SETTLE`] before `now` (unix seconds) and not seen closed after writing
/// since. A file with an mtime ahead of the clock counts as just modified.
pub fn maybe_being_written(part: &Tree, now: i64, closed: &HashSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let settle = i64::try_from(SETTLE.as_secs()).unwrap_or(i64::MAX);
    part.iter()
        .filter(|(path, e)| {
            e.kind == Kind::File && now.saturating_sub(e.mtime) < settle && !closed.contains(*path)
        })
        .map(|(path, _)| path.to_vec())
        .collect()
}

/// `part` with each `settling` file at its confirmed version, or left out
/// if none was confirmed: the plan neither sends nor deletes it until it
/// settles. Without settling files, `part` is returned as it is (not copied).
pub fn hold_back<'a>(part: Cow<'a, Tree>, confirmed: &Tree, settling: &[Vec<u8>]) -> Cow<'a, Tree> {
    if settling.is_empty() {
        return part;
    }
    let mut ready = part.into_owned();
    for path in settling {
        match confirmed.get(path) {
            Some(old) => ready.insert(path.clone(), *old),
            None => ready.remove(path),
        };
    }
    Cow::Owned(ready)
}

/// Files closed after writing whose size and mtime (to the nanosecond) are
/// still what the standby confirmed but whose ctime is not: rewritten with
/// the mtime set back (WinSCP
/// keeps timestamps by default, so does `sftp put -p`), which stat alone
/// cannot tell from no change. The caller drops their confirmation, so they
/// are sent again.
pub fn rewritten_alike(
    current: &Tree,
    confirmed: &Tree,
    closed: &HashSet<Vec<u8>>,
) -> Vec<Vec<u8>> {
    closed
        .iter()
        .filter(|path| {
            current.get(path).is_some_and(|now| {
                now.kind == Kind::File
                    && confirmed.get(path).is_some_and(|c| {
                        c.kind == Kind::File
                            && c.size == now.size
                            && c.mtime == now.mtime
                            && c.mtime_nsec == now.mtime_nsec
                            // A write changes the ctime; an open and close
                            // without one (which anyone may do, over and
                            // over) does not, and costs nothing.
                            && (c.ctime == 0 || c.ctime != now.ctime)
                    })
            })
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::tree::{Entry, Op, plan};

    fn file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            mtime_nsec: 0,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            ino: 1,
            ctime: 0,
        }
    }

    fn dir(mtime: i64) -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            ..file(0, mtime)
        }
    }

    fn tree(entries: &[(&str, Entry)]) -> Tree {
        entries
            .iter()
            .map(|(p, e)| (p.as_bytes().to_vec(), *e))
            .collect()
    }

    fn set(paths: &[&str]) -> BTreeSet<Vec<u8>> {
        paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn keys(t: &Tree) -> Vec<&str> {
        t.keys()
            .map(|p| std::str::from_utf8(p).unwrap_or("?"))
            .collect()
    }

    #[test]
    fn a_whole_round_borrows_both_trees() {
        let current = tree(&[("u", dir(1)), ("u/a", file(1, 1))]);
        let index = tree(&[("u", dir(1))]);
        let (part, confirmed) = scope(&current, &index, None);
        assert!(matches!(part, Cow::Borrowed(t) if std::ptr::eq(t, &current)));
        assert!(matches!(confirmed, Cow::Borrowed(t) if std::ptr::eq(t, &index)));
    }

    #[test]
    fn a_targeted_round_plans_what_changed_with_its_parents() {
        let current = tree(&[
            ("u", dir(1)),
            ("u/a", file(1, 1)),
            ("u/b", file(1, 1)),
            ("u/new", dir(1)),
            ("u/new/x", file(1, 1)),
            ("v", dir(1)),
            ("v/c", file(1, 1)),
        ]);
        let index = tree(&[
            ("u", dir(1)),
            ("u/a", file(0, 0)),
            ("v", dir(1)),
            ("v/c", file(1, 1)),
        ]);
        let changed = Changed {
            exact: set(&["u/a"]),
            subtrees: set(&["u/new"]),
        };
        let (part, confirmed) = scope(&current, &index, Some(&changed));
        assert_eq!(keys(&part), ["u", "u/a", "u/new", "u/new/x"]);
        assert_eq!(keys(&confirmed), ["u", "u/a"]);
    }

    #[test]
    fn only_recent_files_not_seen_closed_may_be_being_written() {
        let now = 10_000;
        let part = tree(&[
            ("u", dir(now)),
            ("u/old", file(1, now - 2)),
            ("u/recent", file(1, now - 1)),
            ("u/now", file(1, now)),
            ("u/closed", file(1, now)),
            // A clock behind the file's mtime: taken as just modified.
            ("u/future", file(1, now + 3_600)),
        ]);
        let closed = [b"u/closed".to_vec()].into();
        let fresh = maybe_being_written(&part, now, &closed);
        let fresh: Vec<&[u8]> = fresh.iter().map(Vec::as_slice).collect();
        assert_eq!(fresh, [b"u/future".as_slice(), b"u/now", b"u/recent"]);
        // Extreme mtimes do not overflow.
        let odd = tree(&[("a", file(1, i64::MIN)), ("b", file(1, i64::MAX))]);
        let fresh = maybe_being_written(&odd, now, &HashSet::new());
        assert_eq!(fresh, [b"b".to_vec()]);
    }

    #[test]
    fn nothing_settling_is_nothing_copied() {
        let current = tree(&[("u/a", file(1, 1))]);
        let ready = hold_back(Cow::Borrowed(&current), &Tree::new(), &[]);
        assert!(matches!(ready, Cow::Borrowed(t) if std::ptr::eq(t, &current)));
    }

    #[test]
    fn a_settling_file_keeps_its_confirmed_version_or_waits_to_be_created() {
        let current = tree(&[
            ("u", dir(1)),
            ("u/growing", file(500, 10_000)),
            ("u/new", file(10, 10_000)),
            ("u/done", file(7, 9_000)),
        ]);
        let confirmed = tree(&[("u", dir(1)), ("u/growing", file(100, 9_000))]);
        let settling = [b"u/growing".to_vec(), b"u/new".to_vec()];
        let ready = hold_back(Cow::Borrowed(&current), &confirmed, &settling);
        assert_eq!(
            *ready,
            tree(&[
                ("u", dir(1)),
                ("u/growing", file(100, 9_000)),
                ("u/done", file(7, 9_000)),
            ])
        );
        // Neither sent nor deleted meanwhile; the rest goes.
        assert_eq!(
            plan(&ready, &confirmed, true),
            [Op::Put(b"u/done".to_vec(), file(7, 9_000))]
        );
    }

    #[test]
    fn a_file_rewritten_to_the_same_size_and_mtime_is_sent_again() {
        let confirmed = tree(&[("a", file(5, 10)), ("b", file(5, 10)), ("d", dir(3))]);
        let current = tree(&[("a", file(5, 10)), ("b", file(6, 10)), ("d", dir(3))]);
        let closed: HashSet<Vec<u8>> = [
            b"a".to_vec(),
            b"b".to_vec(),
            b"d".to_vec(),
            b"gone".to_vec(),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            rewritten_alike(&current, &confirmed, &closed),
            vec![b"a".to_vec()]
        );
        // Opened and closed without a write: the ctime did not move, nothing is sent.
        let mut known = confirmed.clone();
        let mut seen = current.clone();
        for t in [&mut known, &mut seen] {
            if let Some(e) = t.get_mut(b"a".as_slice()) {
                e.ctime = 5;
            }
        }
        assert!(rewritten_alike(&seen, &known, &closed).is_empty());
        if let Some(e) = seen.get_mut(b"a".as_slice()) {
            e.ctime = 6;
        }
        assert_eq!(rewritten_alike(&seen, &known, &closed), vec![b"a".to_vec()]);
        // Not closed: nothing was written, nothing is sent.
        assert!(rewritten_alike(&current, &confirmed, &HashSet::new()).is_empty());
        // Once its confirmation is dropped, the plan sends it.
        let mut dropped = confirmed.clone();
        if let Some(e) = dropped.get_mut(b"a".as_slice()) {
            e.mtime_nsec = -1;
        }
        let ops = plan(&current, &dropped, true);
        assert!(
            ops.contains(&Op::Put(b"a".to_vec(), file(5, 10))),
            "{ops:?}"
        );
    }
}
