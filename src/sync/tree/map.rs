//! [`Tree`]: paths (bytes, in byte order) to entries, compact enough for a
//! million paths, and able to hold the two trees the worker keeps (the
//! master's tree and what the standby confirmed) in one copy where they agree.
//!
//! A tree is a sorted, read-only `base`, shared by reference count between
//! trees, and its own `changes` on top of it. Walks and index files build a
//! base in one go (64 bytes per path plus the path itself, no spare room);
//! single inserts and removes only touch `changes`. [`share`] puts two trees
//! on one base: at steady state the index equals the tree, so it then holds
//! next to nothing of its own.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::iter::Peekable;
use std::sync::Arc;

use super::Entry;

type Base = Vec<(Box<[u8]>, Entry)>;

/// Paths to entries, in byte order of the paths: a folder `a` comes before
/// `a-b` (`-` is below `/`) and `a-b` before `a/x`, so what is below a folder
/// is contiguous only among the paths that start with it (see
/// [`super::subtree`]).
#[derive(Clone, Default)]
pub struct Tree {
    /// Sorted by path, one entry per path; never changed in place, as other
    /// trees may hold it too.
    base: Arc<Base>,
    /// Where this tree differs from `base`: a new or other entry, or `None`
    /// for a path of `base` this tree no longer has.
    changes: BTreeMap<Box<[u8]>, Option<Entry>>,
    /// How many paths the tree has (`base` with `changes` applied).
    len: usize,
}

/// Every field equal, the ctime too: only then can one copy stand for both
/// (the index keeps the ctime the standby confirmed).
fn identical(a: &Entry, b: &Entry) -> bool {
    a == b && a.ctime == b.ctime
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        *self = Tree::new();
    }

    fn in_base(&self, path: &[u8]) -> Option<&Entry> {
        self.base
            .binary_search_by(|(p, _)| p.as_ref().cmp(path))
            .ok()
            .map(|i| &self.base[i].1)
    }

    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        match self.changes.get(path) {
            Some(changed) => changed.as_ref(),
            None => self.in_base(path),
        }
    }

    pub fn contains_key(&self, path: &[u8]) -> bool {
        self.get(path).is_some()
    }

    /// The entry to change in place (copied out of the shared base first).
    pub fn get_mut(&mut self, path: &[u8]) -> Option<&mut Entry> {
        if !self.changes.contains_key(path) {
            let e = *self.in_base(path)?;
            self.changes.insert(path.into(), Some(e));
        }
        self.changes.get_mut(path).and_then(Option::as_mut)
    }

    /// Sets the entry of `path`; returns the one it had.
    pub fn insert(&mut self, path: impl Into<Box<[u8]>>, entry: Entry) -> Option<Entry> {
        let path = path.into();
        let old = self.get(&path).copied();
        if self.in_base(&path).is_some_and(|b| identical(b, &entry)) {
            // Back to what the base has: nothing of its own to keep.
            self.changes.remove(&path);
        } else {
            self.changes.insert(path, Some(entry));
        }
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `path` (not what is below it); returns its entry.
    pub fn remove(&mut self, path: &[u8]) -> Option<Entry> {
        let old = self.get(path).copied()?;
        if self.in_base(path).is_some() {
            self.changes.insert(path.into(), None);
        } else {
            self.changes.remove(path);
        }
        self.len -= 1;
        Some(old)
    }

    /// All paths in order.
    pub fn iter(&self) -> Iter<'_> {
        Merge::new(self.base.iter(), self.changes.range::<[u8], _>(..), false)
    }

    /// All paths, last first.
    pub fn iter_rev(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        Merge::new(
            self.base.iter().rev(),
            self.changes.range::<[u8], _>(..).rev(),
            true,
        )
    }

    /// The paths from `start` on, in order.
    pub fn range_from<'a>(&'a self, start: &[u8]) -> Iter<'a> {
        let first = self.base.partition_point(|(p, _)| p.as_ref() < start);
        Merge::new(
            self.base[first..].iter(),
            self.changes
                .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded)),
            false,
        )
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(|(p, _)| p)
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, e)| e)
    }

    /// Keeps the paths `keep` says yes to; it may change their entries.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &mut Entry) -> bool) {
        let mut decided: Vec<(Box<[u8]>, Option<Entry>)> = Vec::new();
        for (path, e) in self.iter() {
            let mut kept = *e;
            if !keep(path, &mut kept) {
                decided.push((path.into(), None));
            } else if !identical(&kept, e) {
                decided.push((path.into(), Some(kept)));
            }
        }
        for (path, e) in decided {
            match e {
                Some(e) => self.insert(path, e),
                None => self.remove(&path),
            };
        }
    }

    /// True when this tree's own changes over its base have grown enough
    /// that folding them in is worth a pass: the master's tree, which every
    /// standby's worker gets a copy of (the base shared, the changes copied)
    /// after each look, keeps its changes few this way.
    pub fn needs_compacting(&self) -> bool {
        self.changes.len() > (self.len / 256).max(1024)
    }

    /// Which base this tree is on (the same number: one shared copy).
    pub fn base_id(&self) -> usize {
        Arc::as_ptr(&self.base) as usize
    }

    /// Folds `changes` into a base of this tree's own (the old one stays
    /// with the trees that share it).
    pub fn compact(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        let mut merged = Base::with_capacity(self.len);
        let mut changes = changes.into_iter().peekable();
        // Paths are moved out of a base no other tree holds, copied (one by
        // one, no second list) out of a shared one.
        let shared;
        let base: Box<dyn Iterator<Item = (Box<[u8]>, Entry)> + '_> =
            match Arc::try_unwrap(std::mem::take(&mut self.base)) {
                Ok(own) => Box::new(own.into_iter()),
                Err(other) => {
                    shared = other;
                    Box::new(shared.iter().map(|(p, e)| (p.clone(), *e)))
                }
            };
        for (path, e) in base {
            // Paths new in this tree that come before this one.
            while let Some((c, ce)) = changes.next_if(|(c, _)| *c < path) {
                merged.extend(ce.map(|ce| (c, ce)));
            }
            match changes.next_if(|(c, _)| *c == path) {
                Some((_, Some(ce))) => merged.push((path, ce)),
                Some((_, None)) => {}
                None => merged.push((path, e)),
            }
        }
        merged.extend(changes.filter_map(|(c, ce)| ce.map(|ce| (c, ce))));
        merged.shrink_to_fit();
        self.base = Arc::new(merged);
    }
}

/// A walk of the whole tree again, built on the base of the tree the last
/// walk made: a path found as that base has it sets one bit, anything else
/// goes to `changes`, and paths of the base not found are marked gone. An
/// unchanged walk of a million paths so holds 125 KB of bits, where a fresh
/// list would be a second copy of the tree (over 100 MB) next to the old one
/// until the walk ends.
pub struct Rewalk {
    base: Arc<Base>,
    /// One bit per path of `base`: found by this walk.
    seen: Vec<u64>,
    changes: BTreeMap<Box<[u8]>, Option<Entry>>,
    len: usize,
}

impl Rewalk {
    pub fn new(previous: &Tree) -> Rewalk {
        Rewalk {
            seen: vec![0; previous.base.len().div_ceil(64)],
            base: Arc::clone(&previous.base),
            changes: BTreeMap::new(),
            len: 0,
        }
    }

    /// One path the walk found (a path found twice keeps the last entry).
    pub fn found(&mut self, path: &[u8], entry: Entry) {
        match self.base.binary_search_by(|(p, _)| p.as_ref().cmp(path)) {
            Ok(i) => {
                let (word, bit) = (i / 64, 1u64 << (i % 64));
                let again = self.seen[word] & bit != 0;
                self.seen[word] |= bit;
                if identical(&self.base[i].1, &entry) {
                    // Found twice, the first time otherwise: this one counts.
                    self.changes.remove(path);
                } else {
                    self.changes.insert(path.into(), Some(entry));
                }
                if !again {
                    self.len += 1;
                }
            }
            Err(_) => {
                if self.changes.insert(path.into(), Some(entry)).is_none() {
                    self.len += 1;
                }
            }
        }
    }

    /// The tree the walk found. Where much changed, it gets a compact base
    /// of its own rather than a big map of changes.
    pub fn finish(self) -> Tree {
        let Rewalk {
            base,
            seen,
            mut changes,
            len,
        } = self;
        for (i, (path, _)) in base.iter().enumerate() {
            if seen[i / 64] & (1 << (i % 64)) == 0 {
                changes.insert(path.clone(), None);
            }
        }
        let mut tree = Tree { base, changes, len };
        if tree.changes.len() > (tree.len / 64).max(1024) {
            tree.compact();
        }
        tree
    }
}

/// Whether `a` and `b` stand on one base (see [`share`]).
pub fn same_base(a: &Tree, b: &Tree) -> bool {
    Arc::ptr_eq(&a.base, &b.base)
}

/// Puts `other` on the base of `primary` (made from all of `primary`), with
/// only where `other` differs kept apart: the worker's index next to the
/// master's tree it equals almost everywhere. If they differ in more than
/// half of `other`'s paths (a standby still being filled), `other` gets a
/// compact base of its own instead. Costs a pass or two over both.
pub fn share(primary: &mut Tree, other: &mut Tree) {
    primary.compact();
    if Arc::ptr_eq(&primary.base, &other.base) && other.changes.is_empty() {
        return;
    }
    put_on_base(&primary.base, other);
}

/// Puts `other` on `base`, keeping apart where it differs; or, if it differs
/// in more than half of its paths, gives it a compact base of its own.
fn put_on_base(base: &Arc<Base>, other: &mut Tree) {
    let differing = diff(base, other).count();
    if differing > other.len / 2 {
        other.compact();
        return;
    }
    let changes = diff(base, other)
        .map(|(path, e)| (path.into(), e.copied()))
        .collect();
    other.base = Arc::clone(base);
    other.changes = changes;
}

/// As [`share`], but `primary` is left as it is (it is shared read-only by
/// several standbys' workers, see [`crate::sync`]): `other` goes on
/// `primary`'s base, keeping apart where it differs from that base. If they
/// differ in more than half of `other`'s paths, `other` gets a compact base
/// of its own instead (once: it is not copied again while it is on it).
pub fn share_base(primary: &Tree, other: &mut Tree) {
    if Arc::ptr_eq(&primary.base, &other.base) {
        // Already on it: only fold what `other` changed since, if it is much.
        if other.changes.len() <= (other.len / 64).max(1024) {
            return;
        }
    }
    put_on_base(&primary.base, other);
}

/// Where `tree` differs from `base`: its entry, or `None` where it has none.
fn diff<'a>(base: &'a Base, tree: &'a Tree) -> impl Iterator<Item = (&'a [u8], Option<&'a Entry>)> {
    let mut base = base.iter().peekable();
    let mut mine = tree.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            let order = match (base.peek(), mine.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((b, _)), Some((m, _))) => b.as_ref().cmp(*m),
            };
            match order {
                Ordering::Less => return base.next().map(|(b, _)| (b.as_ref(), None)),
                Ordering::Greater => return mine.next().map(|(m, e)| (m, Some(e))),
                Ordering::Equal => {
                    let (_, be) = base.next()?;
                    let (m, e) = mine.next()?;
                    if !identical(be, e) {
                        return Some((m, Some(e)));
                    }
                }
            }
        }
    })
}

/// True if `b` is all on the base of `a`, nothing of its own (tests).
#[cfg(test)]
pub fn held_once(a: &Tree, b: &Tree) -> bool {
    Arc::ptr_eq(&a.base, &b.base) && b.changes.is_empty()
}

/// A path and its entries in two trees (`None` where one has none).
pub type Pair<'a> = (&'a [u8], Option<&'a Entry>, Option<&'a Entry>);

/// The paths of `a` and `b` in order (last first if `reverse`), each with its
/// entry in both: one pass over both rather than a search of one for every
/// path of the other (a plan of a million paths).
pub fn side_by_side<'a>(a: &'a Tree, b: &'a Tree, reverse: bool) -> impl Iterator<Item = Pair<'a>> {
    type Items<'a> = Peekable<Box<dyn Iterator<Item = (&'a [u8], &'a Entry)> + 'a>>;
    let (mut left, mut right): (Items<'a>, Items<'a>) = if reverse {
        (
            (Box::new(a.iter_rev()) as Box<dyn Iterator<Item = _>>).peekable(),
            (Box::new(b.iter_rev()) as Box<dyn Iterator<Item = _>>).peekable(),
        )
    } else {
        (
            (Box::new(a.iter()) as Box<dyn Iterator<Item = _>>).peekable(),
            (Box::new(b.iter()) as Box<dyn Iterator<Item = _>>).peekable(),
        )
    };
    std::iter::from_fn(move || {
        let order = match (left.peek(), right.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((p, _)), Some((q, _))) => {
                let o = p.cmp(q);
                if reverse { o.reverse() } else { o }
            }
        };
        match order {
            Ordering::Less => left.next().map(|(p, e)| (p, Some(e), None)),
            Ordering::Greater => right.next().map(|(q, e)| (q, None, Some(e))),
            Ordering::Equal => {
                let (p, in_a) = left.next()?;
                let (_, in_b) = right.next()?;
                Some((p, Some(in_a), Some(in_b)))
            }
        }
    })
}

/// True if `a` and `b` have drifted far enough from their bases (by changes
/// since [`share`]) that sharing again is worth a pass over both.
pub fn drifted(a: &Tree, b: &Tree) -> bool {
    a.changes.len() + b.changes.len() > (a.len.max(b.len) / 64).max(1024)
}

/// Two sorted iterators as one: the base, and the changes over it.
pub struct Merge<'a, B, C>
where
    B: Iterator<Item = &'a (Box<[u8]>, Entry)>,
    C: Iterator<Item = (&'a Box<[u8]>, &'a Option<Entry>)>,
{
    base: Peekable<B>,
    changes: Peekable<C>,
    /// Both run last path first.
    reverse: bool,
}

pub type Iter<'a> = Merge<
    'a,
    std::slice::Iter<'a, (Box<[u8]>, Entry)>,
    btree_map::Range<'a, Box<[u8]>, Option<Entry>>,
>;

impl<'a, B, C> Merge<'a, B, C>
where
    B: Iterator<Item = &'a (Box<[u8]>, Entry)>,
    C: Iterator<Item = (&'a Box<[u8]>, &'a Option<Entry>)>,
{
    fn new(base: B, changes: C, reverse: bool) -> Self {
        Merge {
            base: base.peekable(),
            changes: changes.peekable(),
            reverse,
        }
    }
}

impl<'a, B, C> Iterator for Merge<'a, B, C>
where
    B: Iterator<Item = &'a (Box<[u8]>, Entry)>,
    C: Iterator<Item = (&'a Box<[u8]>, &'a Option<Entry>)>,
{
    type Item = (&'a [u8], &'a Entry);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.changes.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((b, _)), Some((c, _))) => {
                    let o = b.cmp(c);
                    if self.reverse { o.reverse() } else { o }
                }
            };
            if order != Ordering::Greater {
                let (b, e) = self.base.next()?;
                if order == Ordering::Less {
                    return Some((b, e));
                }
            }
            // The change comes first, or stands for the base's entry.
            if let (c, Some(e)) = self.changes.next()? {
                return Some((c, e));
            }
        }
    }
}

impl<'a> IntoIterator for &'a Tree {
    type Item = (&'a [u8], &'a Entry);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Tree {
    type Item = (Vec<u8>, Entry);
    type IntoIter = std::vec::IntoIter<(Vec<u8>, Entry)>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
            .map(|(p, e)| (p.to_vec(), *e))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

/// Builds the base in one go: sorted, no spare room. A path given twice
/// keeps its last entry, as a map's insert would.
impl<K: Into<Box<[u8]>>> FromIterator<(K, Entry)> for Tree {
    fn from_iter<I: IntoIterator<Item = (K, Entry)>>(items: I) -> Tree {
        let mut base: Base = items.into_iter().map(|(p, e)| (p.into(), e)).collect();
        // An index file is in order already: no sort, no scratch space.
        if !base.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable, so of equal paths the last given stays last.
            base.sort_by(|a, b| a.0.cmp(&b.0));
            // In place (a million paths are 64 MB): of equal paths the one
            // kept takes the entry of the last.
            base.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Tree::from_sorted(base)
    }
}

impl Tree {
    /// A tree of what a walk found: each path once (a folder lists a name
    /// once), so sorted in place without the scratch space (32 MB for a
    /// million paths) a stable sort takes.
    pub fn from_walk(mut found: Vec<(Box<[u8]>, Entry)>) -> Tree {
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Should a path come twice after all, one of them is kept.
        found.dedup_by(|a, b| a.0 == b.0);
        Tree::from_sorted(found)
    }

    fn from_sorted(mut base: Base) -> Tree {
        base.shrink_to_fit();
        Tree {
            len: base.len(),
            base: Arc::new(base),
            changes: BTreeMap::new(),
        }
    }
}

impl<K: Into<Box<[u8]>>> Extend<(K, Entry)> for Tree {
    fn extend<I: IntoIterator<Item = (K, Entry)>>(&mut self, items: I) {
        for (p, e) in items {
            self.insert(p, e);
        }
    }
}

/// Equal paths with equal entries (as [`Entry`]'s `==`: the ctime aside).
impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Tree {}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(p, e)| (String::from_utf8_lossy(p).into_owned(), e)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::tree::{Kind, rekey, remove_subtree, subtree};

    fn entry(n: u64) -> Entry {
        Entry {
            kind: if n % 5 == 0 { Kind::Dir } else { Kind::File },
            size: n,
            mtime: 1_700_000_000 + n as i64,
            mtime_nsec: (n % 1_000_000_000) as i32,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            ino: n,
            ctime: n as i64,
        }
    }

    /// The same paths and entries, the ctime too, in the same order both ways.
    fn same_as(tree: &Tree, model: &BTreeMap<Vec<u8>, Entry>) {
        assert_eq!(tree.len(), model.len());
        let got: Vec<(Vec<u8>, Entry, i64)> = tree
            .iter()
            .map(|(p, e)| (p.to_vec(), *e, e.ctime))
            .collect();
        let want: Vec<(Vec<u8>, Entry, i64)> = model
            .iter()
            .map(|(p, e)| (p.clone(), *e, e.ctime))
            .collect();
        assert_eq!(got, want);
        let back: Vec<&[u8]> = tree.iter_rev().map(|(p, _)| p).collect();
        let want_back: Vec<&[u8]> = model.keys().rev().map(Vec::as_slice).collect();
        assert_eq!(back, want_back);
        for (p, e) in model {
            assert!(tree.get(p).is_some_and(|t| identical(t, e)));
        }
    }

    #[test]
    fn a_rewalk_keeps_the_base_and_notes_what_changed_whatever_sorts_between() {
        // Names that sort between a folder's paths and its siblings': `a-b`
        // and `a.b` before `a/`, `a0` after it, a file named like a folder.
        let names: [&[u8]; 12] = [
            b"a", b"a-b", b"a-b/x", b"a.b", b"a/x", b"a/x/y", b"a/x-y", b"a/z", b"a0", b"a0/a",
            b"b", b"b/a",
        ];
        let model: BTreeMap<Vec<u8>, Entry> = names
            .iter()
            .enumerate()
            .map(|(n, p)| (p.to_vec(), entry(n as u64 + 1)))
            .collect();
        let first = Tree::from_walk(
            model
                .iter()
                .map(|(p, e)| (p.as_slice().into(), *e))
                .collect(),
        );
        // In a walk's order (folders' entries interleaved with what is below
        // them), with one path changed, one new and one gone.
        let order: [&[u8]; 12] = [
            b"b", b"a0", b"a", b"a/z", b"a/x", b"a/x/new", b"a/x-y", b"b/a", b"a0/a", b"a-b",
            b"a-b/x", b"a.b",
        ];
        let mut rewalk = Rewalk::new(&first);
        let mut want = model.clone();
        want.remove(b"a/x/y".as_slice());
        want.insert(b"a/x/new".to_vec(), entry(100));
        want.insert(b"a/z".to_vec(), entry(200));
        for p in order {
            rewalk.found(p, want[p]);
        }
        let again = rewalk.finish();
        same_as(&again, &want);
        assert!(same_base(&again, &first), "a few changes keep the base");
        assert_eq!(again.changes.len(), 3);
    }

    #[test]
    fn paths_are_in_byte_order_and_a_subtree_is_only_below_its_folder() {
        let paths: Vec<&[u8]> = vec![
            b"a",
            b"a/x",
            b"a-b",
            b"a.b",
            b"a/\xff",
            b"a\xc3\xbc",
            b"a0",
            b"b",
            b"\xff",
            b"a/b/c",
        ];
        let t: Tree = paths.iter().map(|p| (*p, entry(1))).collect();
        let keys: Vec<&[u8]> = t.keys().collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // '-' and '.' sort before '/', bytes above 0x7f after everything ASCII.
        assert_eq!(keys[..3], [&b"a"[..], b"a-b", b"a.b"]);
        assert_eq!(keys.last(), Some(&&b"\xff"[..]));
        let below: Vec<&[u8]> = subtree(&t, b"a").map(|(p, _)| p).collect();
        assert_eq!(below, vec![&b"a"[..], b"a/b/c", b"a/x", b"a/\xff"]);
    }

    #[test]
    fn inserts_removes_and_renames_read_back_as_a_map_would() {
        // A base from a walk, then changes on top of it, then a new base.
        let mut model: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        for n in 0..200u64 {
            model.insert(format!("u/d{}/f{n}", n % 7).into_bytes(), entry(n));
        }
        let mut tree: Tree = model.clone().into_iter().collect();
        same_as(&tree, &model);
        // A small, fixed pseudo-random sequence: no dependency needed.
        let mut seed = 0x2545_f491_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000u64 {
            let n = next() % 300;
            let path = format!("u/d{}/f{n}", n % 7).into_bytes();
            match next() % 4 {
                0 => assert_eq!(
                    tree.insert(path.clone(), entry(round)).map(|e| e.ctime),
                    model.insert(path, entry(round)).map(|e| e.ctime)
                ),
                1 => assert_eq!(
                    tree.remove(&path).map(|e| e.ctime),
                    model.remove(&path).map(|e| e.ctime)
                ),
                2 => {
                    if let (Some(t), Some(m)) = (tree.get_mut(&path), model.get_mut(&path)) {
                        t.size += 1;
                        m.size += 1;
                    }
                    assert_eq!(tree.contains_key(&path), model.contains_key(&path));
                }
                _ => {
                    // Back to the entry the base has: nothing kept apart.
                    let e = entry(n);
                    tree.insert(path.clone(), e);
                    model.insert(path, e);
                }
            }
            if round % 500 == 499 {
                same_as(&tree, &model);
                // Every other time the base is shared (copied out, and the
                // copy that keeps it unchanged), every other time its own.
                let other = (round % 1000 == 999).then(|| tree.clone());
                tree.compact();
                assert!(tree.changes.is_empty());
                same_as(&tree, &model);
                if let Some(other) = other {
                    same_as(&other, &model);
                }
            }
        }
        same_as(&tree, &model);
        let moved = remove_subtree(&mut tree, b"u/d3");
        assert!(!moved.is_empty());
        model.retain(|p, _| !p.starts_with(b"u/d3/"));
        same_as(&tree, &model);
        rekey(&mut tree, b"u/d4", b"u/e");
        let renamed: Vec<(Vec<u8>, Entry)> = model
            .iter()
            .filter(|(p, _)| p.starts_with(b"u/d4/"))
            .map(|(p, e)| ([&b"u/e"[..], &p[4..]].concat(), *e))
            .collect();
        model.retain(|p, _| !p.starts_with(b"u/d4/"));
        model.extend(renamed);
        same_as(&tree, &model);
        tree.retain(|_, e| {
            e.mode = 0o600;
            e.size % 2 == 0
        });
        model.retain(|_, e| {
            e.mode = 0o600;
            e.size % 2 == 0
        });
        same_as(&tree, &model);
        assert!(
            model
                .iter()
                .all(|(p, e)| tree.get(p).is_some_and(|t| t.mode == e.mode))
        );
    }

    #[test]
    fn a_path_given_twice_keeps_its_last_entry() {
        let t: Tree = [
            (&b"b"[..], entry(1)),
            (b"a", entry(2)),
            (b"b", entry(3)),
            (b"b", entry(4)),
        ]
        .into_iter()
        .collect();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(b"b").map(|e| e.size), Some(4));
        assert_eq!(t.keys().collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
    }

    #[test]
    fn side_by_side_pairs_every_path_of_both_in_order() {
        let a: Tree = [(&b"a"[..], entry(1)), (b"a/x", entry(2)), (b"c", entry(3))]
            .into_iter()
            .collect();
        let mut b = Tree::new();
        b.insert(&b"a-b"[..], entry(4));
        b.insert(&b"a/x"[..], entry(5));
        let sizes = |reverse| -> Vec<(String, Option<u64>, Option<u64>)> {
            side_by_side(&a, &b, reverse)
                .map(|(p, x, y)| {
                    (
                        String::from_utf8_lossy(p).into_owned(),
                        x.map(|e| e.size),
                        y.map(|e| e.size),
                    )
                })
                .collect()
        };
        let forward = vec![
            ("a".to_string(), Some(1), None),
            ("a-b".to_string(), None, Some(4)),
            ("a/x".to_string(), Some(2), Some(5)),
            ("c".to_string(), Some(3), None),
        ];
        assert_eq!(sizes(false), forward);
        let mut backward = forward;
        backward.reverse();
        assert_eq!(sizes(true), backward);
    }

    #[test]
    fn an_index_equal_to_the_tree_is_not_stored_twice() {
        let walked: Tree = (0..100u64)
            .map(|n| (format!("u/f{n:03}").into_bytes(), entry(n)))
            .collect();
        let mut current = walked.clone();
        // As read back from the index file: its own base, equal paths.
        let mut index: Tree = walked.iter().map(|(p, e)| (p, *e)).collect();
        // One confirmed differently (an older version), one gone on the
        // master, one the standby does not have yet.
        index.insert(&b"u/f001"[..], entry(1001));
        index.insert(&b"u/gone"[..], entry(7));
        index.remove(b"u/f002");
        let before = index.clone();
        share(&mut current, &mut index);
        assert!(Arc::ptr_eq(&current.base, &index.base));
        // Only where they differ is kept apart, and the index reads back the same.
        let apart: Vec<&[u8]> = index.changes.keys().map(|k| k.as_ref()).collect();
        assert_eq!(apart, vec![&b"u/f001"[..], b"u/f002", b"u/gone"]);
        assert_eq!(index.changes.get(&b"u/f002"[..]), Some(&None));
        let same = |a: &Tree, b: &Tree| {
            a.iter()
                .map(|(p, e)| (p, *e, e.ctime))
                .eq(b.iter().map(|(p, e)| (p, *e, e.ctime)))
        };
        assert!(same(&index, &before));
        assert!(same(&current, &walked));
        // A confirmation of what the master has: nothing of its own left.
        index.insert(&b"u/f001"[..], entry(1));
        assert!(!index.changes.contains_key(&b"u/f001"[..]));
        // The master's tree changing does not change the index.
        current.insert(&b"u/f005"[..], entry(555));
        current.remove(b"u/f006");
        assert_eq!(index.get(b"u/f005").map(|e| e.size), Some(5));
        assert!(index.contains_key(b"u/f006"));
        // A ctime of its own is not equal: kept apart.
        let mut later = entry(9);
        later.ctime += 1;
        index.insert(&b"u/f009"[..], later);
        assert_eq!(index.get(b"u/f009").map(|e| e.ctime), Some(later.ctime));
        // Far apart (a standby still being filled): a base of its own instead.
        let mut empty_index = Tree::new();
        empty_index.insert(&b"u/f000"[..], entry(0));
        share(&mut current, &mut empty_index);
        assert!(!Arc::ptr_eq(&current.base, &empty_index.base));
        assert_eq!(empty_index.len(), 1);
        assert!(empty_index.changes.is_empty());
    }
}
