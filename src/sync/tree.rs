//! The replicated tree: walking the data dir without ever following a symlink,
//! the persisted index of what the standby has confirmed, and the plan that
//! turns the difference into operations (pure, unit-tested).
//!
//! Paths are bytes relative to the data dir, `/`-separated: names with spaces,
//! UTF-8 or even newlines are carried exactly.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

mod map;
#[cfg(test)]
pub use map::held_once;
pub use map::{Pair, Tree, drifted, same_base, share, share_base, side_by_side};

/// The folder, at the top of the standby's data dir, where files are written
/// before they are renamed into place: outside every chroot (a user name
/// cannot start with a dot), so users can neither make nor see its names.
/// Every name a user gives a file is replicated as it is.
pub const TEMP_DIR: &[u8] = b".sftp-ha-tmp";

/// Folders of temporaries in [`TEMP_DIR`], one per session by turns: each
/// session creates its temporaries in its own folder and renames them out of
/// it, so that the sessions do not all queue on the lock of one folder
/// (ext4 takes it for every create and rename there).
pub const TEMP_SLOTS: u8 = 8;

/// `TEMP_DIR/sN`, the folder of temporaries of slot `slot`.
pub fn temp_folder(slot: u8) -> Vec<u8> {
    let mut p = TEMP_DIR.to_vec();
    p.extend_from_slice(format!("/s{}", slot % TEMP_SLOTS).as_bytes());
    p
}

/// `path` is [`TEMP_DIR`] or a folder in it.
pub fn in_temp_dir(path: &[u8]) -> bool {
    path.strip_prefix(TEMP_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What is replicated of one file or folder. 48 bytes (a tree holds one per
/// path, a million of them on a big data dir): the nanoseconds fit an i32
/// and the permission bits a u16.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    /// 0..1e9; -1 marks a confirmation that is taken back (never equal to
    /// a real one).
    pub mtime_nsec: i32,
    /// Permission bits and the sticky bit. Set-uid and set-gid bits are not
    /// part of it: they are never replicated (the standby's root would make
    /// a set-id file it then chowns to a user) and never compared (a
    /// difference the standby cannot hold would be re-sent forever).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Inode number: a path that vanished and one that appeared with the same
    /// inode (and content) is a rename, mirrored as a rename, not a re-upload.
    pub ino: u64,
    /// When the inode last changed, in nanoseconds (0: not known, e.g. from
    /// an SFTP listing). Not compared (a chmod or a rename changes it, which
    /// replication handles by what it sees), but kept in the index: a master
    /// that steps down lists every file whose ctime is not the one its
    /// standby confirmed, which catches a rewrite that put size and mtime
    /// back as they were.
    pub ctime: i64,
}

/// Equal as far as replication goes: everything but the ctime.
impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (
            self.kind,
            self.size,
            self.mtime,
            self.mtime_nsec,
            self.mode,
            self.uid,
            self.gid,
            self.ino,
        ) == (
            other.kind,
            other.size,
            other.mtime,
            other.mtime_nsec,
            other.mode,
            other.uid,
            other.gid,
            other.ino,
        )
    }
}

impl Eq for Entry {}

impl Entry {
    fn from_stat(st: &FileStat, kind: Kind) -> Entry {
        Entry {
            kind,
            size: if kind == Kind::File {
                st.st_size as u64
            } else {
                0
            },
            mtime: st.st_mtime,
            // Always 0..1e9, so the conversion cannot fail.
            mtime_nsec: i32::try_from(st.st_mtime_nsec).unwrap_or(0),
            mode: mode_bits(st.st_mode),
            uid: st.st_uid,
            gid: st.st_gid,
            ino: st.st_ino,
            ctime: st
                .st_ctime
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_ctime_nsec),
        }
    }

    /// The permission bits as the 32-bit word SFTP and chmod take.
    pub fn mode_word(&self) -> u32 {
        u32::from(self.mode)
    }

    /// Same content as far as stat can tell (size and mtime).
    fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.mtime == other.mtime
            && self.mtime_nsec == other.mtime_nsec
    }
}

/// The permission and sticky bits of a mode word: what [`Entry::mode`] keeps.
pub fn mode_bits(mode: u32) -> u16 {
    // Masked to 0o1777, so it always fits.
    u16::try_from(mode & 0o1777).unwrap_or(0)
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

/// What a scan could not replicate (symlinks, devices, FIFOs, sockets), for the log.
pub type Skipped = Vec<(Vec<u8>, &'static str)>;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Walks `root`. Each folder is opened relative to its parent with O_NOFOLLOW,
/// so a user who swaps a folder for a symlink cannot lead the walk outside.
/// `before_listing` is called with each folder's path before its entries are
/// read: a watch added there misses nothing created after the listing.
pub fn scan(root: &Path, before_listing: &mut dyn FnMut(&[u8])) -> io::Result<(Tree, Skipped)> {
    scan_below(root, &[], before_listing)
}

/// Walks the folder `rel` of the tree (not including `rel` itself), opened
/// component by component with O_NOFOLLOW; `before_listing` as for [`scan`].
pub fn scan_below(
    root: &Path,
    rel: &[u8],
    before_listing: &mut dyn FnMut(&[u8]),
) -> io::Result<(Tree, Skipped)> {
    let mut found = Vec::new();
    let mut skipped = Skipped::new();
    let top = open_dir(root, rel)?;
    walk(
        top,
        rel.to_vec(),
        &mut |path, e| found.push((path.into(), e)),
        &mut skipped,
        before_listing,
    )?;
    // Built in one go from all that was found: sorted, with no spare room.
    Ok((Tree::from_walk(found), skipped))
}

/// Walks `root` again, as [`scan`], into a tree on top of `previous`'s base
/// (see [`map::Rewalk`]): what is as it was costs a bit, not a copy, so an
/// unchanged walk of a million files needs next to no memory (a fresh
/// list would be a second copy of the tree while the old one is held).
pub fn rescan(
    root: &Path,
    previous: &Tree,
    before_listing: &mut dyn FnMut(&[u8]),
) -> io::Result<(Tree, Skipped)> {
    if previous.is_empty() {
        // Nothing to build on (the first walk): one sorted list.
        return scan(root, before_listing);
    }
    let mut rewalk = map::Rewalk::new(previous);
    let mut skipped = Skipped::new();
    let top = open_dir(root, &[])?;
    walk(
        top,
        Vec::new(),
        &mut |path, e| rewalk.found(path, e),
        &mut skipped,
        before_listing,
    )?;
    Ok((rewalk.finish(), skipped))
}

/// What one path of the tree is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Gone, or a folder on its way is gone or no longer a folder.
    Missing,
    Entry(Entry),
    /// Something that is not replicated (symlink, device, FIFO, socket).
    Skipped(&'static str),
}

/// Looks at one path without following any symlink on the way or at its end.
pub fn stat_path(root: &Path, rel: &[u8]) -> io::Result<Found> {
    let gone = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(nix::libc::ENOENT | nix::libc::ENOTDIR | nix::libc::ELOOP)
        )
    };
    let (parent, last) = split_last(rel);
    let dir = match open_dir(root, parent) {
        Ok(d) => d,
        Err(e) if gone(&e) => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let st = if last.is_empty() {
        fstat(&dir).map_err(io::Error::from)?
    } else {
        match fstatat(
            dir.as_fd(),
            std::ffi::OsStr::from_bytes(last),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => return Ok(Found::Missing),
            Err(e) => return Err(e.into()),
        }
    };
    Ok(
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => {
                if st.st_mode & SET_ID != 0 {
                    drop_set_id(&dir, last, rel);
                }
                Found::Entry(Entry::from_stat(&st, Kind::File))
            }
            SFlag::S_IFDIR => Found::Entry(Entry::from_stat(&st, Kind::Dir)),
            other => Found::Skipped(kind_name(other)),
        },
    )
}

/// Set-uid and set-gid.
const SET_ID: u32 = 0o6000;

/// Clears the set-uid and set-gid bits of an upload on the master: a drop box
/// has no use for them, and the standby never carries them (see
/// [`Entry::mode`]), so both hosts end up the same. Done on the open file,
/// never through a link; a failure is logged and the file still replicated.
fn drop_set_id(dir: &OwnedFd, name: &[u8], path: &[u8]) {
    let cleared = openat(
        dir.as_fd(),
        std::ffi::OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .and_then(|fd| {
        let st = fstat(&fd)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Ok(false);
        }
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(st.st_mode & 0o1777))?;
        Ok(true)
    });
    match cleared {
        Ok(true) => note_cleared(path),
        Ok(false) => {}
        Err(err) => {
            tracing::debug!(path = %String::from_utf8_lossy(path), "cannot clear the set-uid/set-gid bits: {err}")
        }
    }
}

/// Logs cleared set-id bits at most once a minute, with a count: a user who
/// chmods in a loop must not be able to flood the journal (and push other
/// users' lines past journald's rate limit).
fn note_cleared(path: &[u8]) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    const EVERY: Duration = Duration::from_secs(60);
    // (when the last line was logged, how many were cleared since)
    static STATE: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
    let Ok(mut state) = STATE.lock() else {
        return;
    };
    let shown = String::from_utf8_lossy(path);
    match &mut *state {
        Some((last, since)) if last.elapsed() < EVERY => *since += 1,
        other => {
            let before = other.map_or(0, |(_, n)| n);
            tracing::info!(
                path = %shown,
                "cleared the set-uid/set-gid bits of an upload (never kept on a drop box){}",
                if before > 0 {
                    format!("; and of {before} more in the last minute")
                } else {
                    String::new()
                }
            );
            *other = Some((Instant::now(), 0));
        }
    }
}

fn kind_name(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFIFO => "FIFO",
        _ => "device file",
    }
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
/// `name` in the folder `dir` (the empty path is the data dir itself).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[][..], rel),
    }
}

/// The paths of `tree` at `root` and below it (`root/...`, not `root-x`).
pub fn subtree<'a>(tree: &'a Tree, root: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a Entry)> {
    tree.range_from(root)
        // Everything that starts with `root` is contiguous; of it, only `root`
        // itself and what is below `root/` belongs to the subtree.
        .take_while(move |(k, _)| k.starts_with(root))
        .filter(move |(k, _)| {
            k.len() == root.len() || root.is_empty() || k.get(root.len()) == Some(&b'/')
        })
}

/// Removes `root` and everything below it; returns what was removed.
pub fn remove_subtree(tree: &mut Tree, root: &[u8]) -> Vec<(Vec<u8>, Entry)> {
    let keys: Vec<Vec<u8>> = subtree(tree, root).map(|(k, _)| k.to_vec()).collect();
    keys.into_iter()
        .filter_map(|k| tree.remove(&k).map(|e| (k, e)))
        .collect()
}

/// The part of `tree` a targeted plan looks at: the `exact` paths, everything
/// at and below the `subtrees` paths, and the folders above both (so a plan
/// of the part sees the parents the standby already has).
pub fn part(
    tree: &Tree,
    exact: &std::collections::BTreeSet<Vec<u8>>,
    subtrees: &std::collections::BTreeSet<Vec<u8>>,
) -> Tree {
    let mut out = Tree::new();
    let mut take = |path: &[u8]| {
        let mut end = 0;
        while let Some(i) = path[end..].iter().position(|b| *b == b'/') {
            end += i;
            if let Some(e) = tree.get(&path[..end]) {
                out.insert(path[..end].to_vec(), *e);
            }
            end += 1;
        }
    };
    for p in exact.iter().chain(subtrees) {
        take(p);
    }
    for p in exact {
        if let Some(e) = tree.get(p) {
            out.insert(p.clone(), *e);
        }
    }
    for root in subtrees {
        out.extend(subtree(tree, root).map(|(k, e)| (k, *e)));
    }
    out
}

fn walk(
    dir_fd: OwnedFd,
    prefix: Vec<u8>,
    found: &mut dyn FnMut(&[u8], Entry),
    skipped: &mut Skipped,
    before_listing: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    before_listing(&prefix);
    // The children's names end to end, and where each ends: one buffer, not
    // an allocation per name.
    let mut names = Vec::new();
    let mut ends = Vec::new();
    {
        let dup = dir_fd.try_clone()?;
        let mut dir = Dir::from_fd(dup).map_err(io::Error::from)?;
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name().to_bytes();
            if name == b"."
                || name == b".."
                || (prefix.is_empty()
                    && (name == TEMP_DIR || name == crate::layout::CONTROL_DIR.as_bytes()))
            {
                continue;
            }
            names.extend_from_slice(name);
            ends.push(names.len());
        }
    }
    // One buffer for the children's paths: a file's is only lent to `found`.
    let mut path = Vec::with_capacity(prefix.len() + 64);
    let mut start = 0;
    for end in ends {
        let name = &names[start..end];
        start = end;
        path.clear();
        path.extend_from_slice(&prefix);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let cname = std::ffi::OsStr::from_bytes(name);
        let st = match fstatat(
            dir_fd.as_fd(),
            cname,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => continue, // gone meanwhile
            Err(e) => return Err(e.into()),
        };
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => {
                if st.st_mode & SET_ID != 0 {
                    drop_set_id(&dir_fd, name, &path);
                }
                found(&path, Entry::from_stat(&st, Kind::File));
            }
            SFlag::S_IFDIR => {
                let child = match openat(dir_fd.as_fd(), cname, dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    // Replaced by something else between the stat and the open.
                    Err(
                        nix::errno::Errno::ENOENT
                        | nix::errno::Errno::ELOOP
                        | nix::errno::Errno::ENOTDIR,
                    ) => continue,
                    Err(e) => return Err(e.into()),
                };
                found(&path, Entry::from_stat(&st, Kind::Dir));
                walk(child, path.clone(), found, skipped, before_listing)?;
            }
            other => skipped.push((path.clone(), kind_name(other))),
        }
    }
    Ok(())
}

/// Opens a file of the tree for reading, every component with O_NOFOLLOW, and
/// returns it with its current stat. Anything but a regular file is refused.
pub fn open_file(root: &Path, rel: &[u8]) -> io::Result<(File, Entry)> {
    let (parent, last) = split_last(rel);
    if last.is_empty() {
        return Err(io::Error::other("empty path"));
    }
    let dir = open_dir(root, parent)?;
    let fd = openat(
        dir.as_fd(),
        std::ffi::OsStr::from_bytes(last),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let st = fstat(&fd).map_err(io::Error::from)?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((File::from(fd), Entry::from_stat(&st, Kind::File)))
}

/// On a standby: removes temporaries in [`TEMP_DIR`] and its sessions'
/// folders ([`temp_folder`]) not written to for `older_than`, left behind by
/// a transfer the master never finished (it crashed, or the file was deleted
/// before it could retry). Returns how many. Nothing outside that folder is
/// touched: users' files may have any name. The folders stay.
pub fn remove_stale_temporaries(root: &Path, older_than: std::time::Duration) -> io::Result<usize> {
    let limit = crate::timefmt::unix_now() as i64 - older_than.as_secs() as i64;
    let dir_fd = match open_dir(root, TEMP_DIR) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = remove_old_files_in(&dir_fd, limit)?;
    for slot in 0..TEMP_SLOTS {
        match open_dir(root, &temp_folder(slot)) {
            Ok(fd) => removed += remove_old_files_in(&fd, limit)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Removes the files (never a folder) of the open folder `dir_fd` last
/// changed before `limit` (unix seconds); returns how many.
fn remove_old_files_in(dir_fd: &OwnedFd, limit: i64) -> io::Result<usize> {
    let mut dir = Dir::from_fd(dir_fd.try_clone()?).map_err(io::Error::from)?;
    let names: Vec<Vec<u8>> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    let mut removed = 0;
    for name in names {
        let cname = std::ffi::OsStr::from_bytes(&name);
        let old = fstatat(
            dir_fd.as_fd(),
            cname,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| st.st_mtime < limit);
        if old
            && nix::unistd::unlinkat(
                dir_fd.as_fd(),
                cname,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Opens a folder of the tree, every component with O_NOFOLLOW.
fn open_dir(root: &Path, rel: &[u8]) -> io::Result<OwnedFd> {
    crate::fsutil::open_dir_below(root, rel)
}

/// One step that brings the standby closer to the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove a file or an (empty by then) folder.
    Delete(Vec<u8>, Kind),
    Mkdir(Vec<u8>, Entry),
    /// Upload the file's content and attributes.
    Put(Vec<u8>, Entry),
    /// Only owner or mode changed: no upload.
    SetAttrs(Vec<u8>, Entry),
    /// Moved on the master (same inode): moved on the standby, nothing re-sent.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

impl Op {
    /// The path the operation is about (for a rename, where it goes).
    pub fn path(&self) -> &[u8] {
        match self {
            Op::Delete(p, _) | Op::Mkdir(p, _) | Op::Put(p, _) | Op::SetAttrs(p, _) => p,
            Op::Rename { to, .. } => to,
        }
    }
}

/// The chroot (first component) a path belongs to.
fn chroot_of(path: &[u8]) -> &[u8] {
    path.split(|b| *b == b'/').next().unwrap_or_default()
}

/// Moves `from` and everything below it to `to` in `tree` (what a rename does).
pub fn rekey(tree: &mut Tree, from: &[u8], to: &[u8]) {
    for (old, e) in remove_subtree(tree, from) {
        let mut new = to.to_vec();
        new.extend_from_slice(&old[from.len()..]);
        tree.insert(new, e);
    }
}

fn parent(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
}

/// Renames: a confirmed path that vanished and a new path with the same inode,
/// kind and content, whose new parent the standby already has. Parents first,
/// so a renamed folder carries its contents along.
///
/// An inode number can be reused by a new file once the old one is gone. So
/// that a reuse can never hand one user's file to another on the standby, a
/// move across chroots is never a rename (users cannot move files between
/// chroots anyway), and a file whose mtime has no nanoseconds (set by a
/// client, so it could repeat) is re-sent rather than renamed.
fn renames(current: &Tree, confirmed: &mut Tree, ops: &mut Vec<Op>) {
    let mut gone: std::collections::HashMap<u64, Vec<u8>> = confirmed
        .iter()
        .filter(|(p, e)| e.ino != 0 && current.get(p).is_none_or(|n| n.ino != e.ino))
        .map(|(p, e)| (e.ino, p.to_vec()))
        .collect();
    for (path, new) in current {
        if new.ino == 0 || confirmed.get(path).is_some_and(|o| o.ino == new.ino) {
            continue;
        }
        let Some(from) = gone.get(&new.ino).cloned() else {
            continue;
        };
        let Some(old) = confirmed.get(&from) else {
            continue;
        };
        let same = old.kind == new.kind
            && (new.kind == Kind::Dir || (old.same_content(new) && new.mtime_nsec != 0))
            && chroot_of(&from) == chroot_of(path);
        let parent_there = parent(path).is_none_or(|p| confirmed.contains_key(p));
        let into_itself = path.starts_with(&from) && path.get(from.len()) == Some(&b'/');
        if same && parent_there && !into_itself && !confirmed.contains_key(path) {
            gone.remove(&new.ino);
            ops.push(Op::Rename {
                from: from.clone(),
                to: path.to_vec(),
            });
            rekey(confirmed, &from, path);
        }
    }
}

/// The operations that make `confirmed` (what the standby has) equal `current`.
/// Renames come first, then deletes, children before parents, then creations,
/// parents first.
/// With `allow_deletes` false no delete is planned.
pub fn plan(current: &Tree, confirmed: &Tree, allow_deletes: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    // A rename needs a confirmed path that vanished (or whose inode changed);
    // only then is the index copied to play the renames through.
    let may_have_renames = allow_deletes
        && side_by_side(current, confirmed, false).any(|(_, new, old)| {
            old.is_some_and(|e| e.ino != 0 && new.is_none_or(|n| n.ino != e.ino))
        });
    let mut renamed;
    let confirmed = if may_have_renames {
        renamed = confirmed.clone();
        renames(current, &mut renamed, &mut ops);
        &renamed
    } else {
        confirmed
    };
    if allow_deletes {
        for (path, new, old) in side_by_side(current, confirmed, true) {
            match (new, old) {
                (_, None) => {}
                (Some(new), Some(old)) if new.kind == old.kind => {}
                (_, Some(old)) => ops.push(Op::Delete(path.to_vec(), old.kind)),
            }
        }
    }
    // All new folders first (parents first), then the files: uploads then
    // form one run that several sessions can share.
    let mut files = Vec::new();
    for (path, new, old) in side_by_side(current, confirmed, false) {
        let Some(new) = new else {
            continue;
        };
        let old = old.filter(|o| o.kind == new.kind || !allow_deletes);
        match (new.kind, old) {
            (_, Some(old)) if old == new => {}
            (Kind::Dir, None) => ops.push(Op::Mkdir(path.to_vec(), *new)),
            (Kind::Dir, Some(_)) => ops.push(Op::SetAttrs(path.to_vec(), *new)),
            (Kind::File, Some(old)) if old.same_content(new) => {
                files.push(Op::SetAttrs(path.to_vec(), *new))
            }
            (Kind::File, _) => files.push(Op::Put(path.to_vec(), *new)),
        }
    }
    ops.append(&mut files);
    ops
}

/// True if deleting what the standby has would follow a vanished data dir
/// rather than users' deletes: the master's tree holds no file at all while
/// the standby's does. (Folders do not count: the daemon itself puts back an
/// empty skeleton of chroots and `dev/` folders on an unmounted data dir.)
pub fn looks_like_mass_delete(current: &Tree, confirmed: &Tree) -> bool {
    !current.values().any(|e| e.kind == Kind::File)
        && confirmed.values().any(|e| e.kind == Kind::File)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out.into_iter().map(char::from).collect()
}

/// Appends `bytes` in lower-case hex: the index holds a million paths, and a
/// `format!` per byte was a tenth of the daemon's CPU in a walk that saved it.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The first line of an index (and of a baseline, which has the same format).
pub const INDEX_HEADER: &str = "sftp-ha-index 3";

/// Saves the index: one line per entry, the path hex-encoded (names are bytes).
pub fn save_index(path: &Path, tree: &Tree) -> io::Result<()> {
    let mut out = Vec::with_capacity(tree.len() * 72);
    writeln!(out, "{INDEX_HEADER}")?;
    for (p, e) in tree {
        let kind = if e.kind == Kind::Dir { 'd' } else { 'f' };
        push_hex(&mut out, p);
        writeln!(
            out,
            " {kind} {} {} {} {:o} {} {} {} {}",
            e.size, e.mtime, e.mtime_nsec, e.mode, e.uid, e.gid, e.ino, e.ctime
        )?;
    }
    crate::fsutil::write_atomic(path, &out, 0o600, None)
}

/// Loads the index; a missing or unreadable one is empty (everything is checked again).
pub fn load_index(path: &Path) -> Tree {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Tree::new();
    };
    let mut lines = text.lines();
    // Another version: start from nothing; the next audit confirms what the
    // standby already has as it is, so nothing is sent again.
    if lines.next() != Some(INDEX_HEADER) {
        return Tree::new();
    }
    lines.filter_map(parse_index_line).collect()
}

/// One line of the index, strictly: `hexpath kind size mtime nsec
/// mode(octal) uid gid ino ctime`.
pub fn parse_index_line(line: &str) -> Option<(Vec<u8>, Entry)> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 10 {
        return None;
    }
    let path = unhex(f[0])?;
    let kind = match f[1] {
        "d" => Kind::Dir,
        "f" => Kind::File,
        _ => return None,
    };
    Some((
        path,
        Entry {
            kind,
            size: f[2].parse().ok()?,
            mtime: f[3].parse().ok()?,
            mtime_nsec: f[4].parse().ok()?,
            mode: mode_bits(u32::from_str_radix(f[5], 8).ok()?),
            uid: f[6].parse().ok()?,
            gid: f[7].parse().ok()?,
            ino: f[8].parse().ok()?,
            ctime: f[9].parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            // Written by the kernel's clock: client-set times have no nanoseconds.
            mtime_nsec: 1,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            ino: 0,
            ctime: 0,
        }
    }
    fn dir() -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            mtime: 1,
            mtime_nsec: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            ino: 0,
            ctime: 0,
        }
    }
    fn tree(items: &[(&str, Entry)]) -> Tree {
        items
            .iter()
            .map(|(p, e)| (p.as_bytes().to_vec(), *e))
            .collect()
    }

    #[test]
    fn plan_creates_parents_first_and_deletes_children_first() {
        let current = tree(&[("a", dir()), ("a/b", file(1, 1)), ("c", file(2, 2))]);
        let confirmed = tree(&[("x", dir()), ("x/y", file(1, 1)), ("c", file(2, 2))]);
        let ops = plan(&current, &confirmed, true);
        assert_eq!(
            ops,
            vec![
                Op::Delete(b"x/y".to_vec(), Kind::File),
                Op::Delete(b"x".to_vec(), Kind::Dir),
                Op::Mkdir(b"a".to_vec(), dir()),
                Op::Put(b"a/b".to_vec(), file(1, 1)),
            ]
        );
    }

    #[test]
    fn attribute_changes_are_not_uploads() {
        let mut changed = file(5, 5);
        changed.mode = 0o600;
        let ops = plan(&tree(&[("f", changed)]), &tree(&[("f", file(5, 5))]), true);
        assert_eq!(ops, vec![Op::SetAttrs(b"f".to_vec(), changed)]);
        let ops = plan(
            &tree(&[("f", file(6, 5))]),
            &tree(&[("f", file(5, 5))]),
            true,
        );
        assert_eq!(ops, vec![Op::Put(b"f".to_vec(), file(6, 5))]);
        assert!(
            plan(
                &tree(&[("f", file(5, 5))]),
                &tree(&[("f", file(5, 5))]),
                true
            )
            .is_empty()
        );
    }

    #[test]
    fn a_file_that_became_a_folder_is_replaced() {
        let ops = plan(&tree(&[("p", dir())]), &tree(&[("p", file(1, 1))]), true);
        assert_eq!(
            ops,
            vec![
                Op::Delete(b"p".to_vec(), Kind::File),
                Op::Mkdir(b"p".to_vec(), dir())
            ]
        );
    }

    fn with_ino(mut e: Entry, ino: u64) -> Entry {
        e.ino = ino;
        e
    }

    #[test]
    fn renames_are_renames() {
        // A big file moved: one rename, nothing re-sent.
        let big = with_ino(file(1 << 30, 7), 42);
        let ops = plan(
            &tree(&[("u", dir()), ("u/new", big)]),
            &tree(&[("u", dir()), ("u/old", big)]),
            true,
        );
        assert_eq!(
            ops,
            vec![Op::Rename {
                from: b"u/old".to_vec(),
                to: b"u/new".to_vec()
            }]
        );
        // A folder moved with its contents.
        let d = with_ino(dir(), 5);
        let f = with_ino(file(3, 3), 6);
        let ops = plan(
            &tree(&[("u", dir()), ("u/b", d), ("u/b/f", f)]),
            &tree(&[("u", dir()), ("u/a", d), ("u/a/f", f)]),
            true,
        );
        assert_eq!(
            ops,
            vec![Op::Rename {
                from: b"u/a".to_vec(),
                to: b"u/b".to_vec()
            }]
        );
        // Into a folder the standby does not have yet: delete and upload instead.
        let ops = plan(&tree(&[("n", dir()), ("n/f", f)]), &tree(&[("f", f)]), true);
        assert_eq!(
            ops,
            vec![
                Op::Delete(b"f".to_vec(), Kind::File),
                Op::Mkdir(b"n".to_vec(), dir()),
                Op::Put(b"n/f".to_vec(), f)
            ]
        );
        // Same inode in another chroot (a reused inode): never a rename.
        let ops = plan(
            &tree(&[("v", dir()), ("v/f", f)]),
            &tree(&[("u", dir()), ("u/f", f)]),
            true,
        );
        assert!(
            !ops.iter().any(|op| matches!(op, Op::Rename { .. })),
            "{ops:?}"
        );
        assert!(ops.contains(&Op::Put(b"v/f".to_vec(), f)), "{ops:?}");
        // A client-set mtime (no nanoseconds) could repeat by chance: re-sent.
        let mut by_client = f;
        by_client.mtime_nsec = 0;
        let ops = plan(
            &tree(&[("u", dir()), ("u/g", by_client)]),
            &tree(&[("u", dir()), ("u/f", by_client)]),
            true,
        );
        assert!(
            !ops.iter().any(|op| matches!(op, Op::Rename { .. })),
            "{ops:?}"
        );
        // Same inode but other content (rewritten in place and moved): uploaded.
        let changed = with_ino(file(4, 9), 6);
        let ops = plan(&tree(&[("g", changed)]), &tree(&[("f", f)]), true);
        assert_eq!(
            ops,
            vec![
                Op::Delete(b"f".to_vec(), Kind::File),
                Op::Put(b"g".to_vec(), changed)
            ]
        );
    }

    #[test]
    fn rekey_moves_a_subtree_only() {
        let mut t = tree(&[
            ("a", dir()),
            ("a/x", file(1, 1)),
            ("a-b", file(2, 2)),
            ("ab", file(3, 3)),
        ]);
        rekey(&mut t, b"a", b"z");
        let keys: Vec<&[u8]> = t.keys().collect();
        assert_eq!(keys, vec![&b"a-b"[..], b"ab", b"z", b"z/x"]);
    }

    #[test]
    fn a_tree_of_empty_folders_looks_like_a_vanished_data_dir() {
        let standby = tree(&[("u", dir()), ("u/f", file(1, 1))]);
        assert!(looks_like_mass_delete(&Tree::new(), &standby));
        assert!(looks_like_mass_delete(
            &tree(&[("u", dir()), ("u/dev", dir())]),
            &standby
        ));
        assert!(!looks_like_mass_delete(
            &tree(&[("g", file(1, 1))]),
            &standby
        ));
        assert!(!looks_like_mass_delete(
            &Tree::new(),
            &tree(&[("u", dir())])
        ));
    }

    #[test]
    fn deletes_can_be_held_back() {
        let ops = plan(&Tree::new(), &tree(&[("f", file(1, 1))]), false);
        assert!(ops.is_empty());
        assert!(looks_like_mass_delete(
            &Tree::new(),
            &tree(&[("f", file(1, 1))])
        ));
        assert!(!looks_like_mass_delete(
            &tree(&[("g", file(1, 1))]),
            &tree(&[("f", file(1, 1))])
        ));
    }

    #[test]
    fn index_round_trips_byte_names() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(&[("a b/ü", file(3, 4))]);
        t.insert(b"new\nline".to_vec(), file(1, 2));
        t.insert(vec![0xff, 0xfe], dir());
        let p = tmp.path().join("index");
        save_index(&p, &t).unwrap();
        assert_eq!(load_index(&p), t);
        assert!(load_index(&tmp.path().join("missing")).is_empty());
    }

    /// Every field, the ctime too: what a walk must reproduce exactly.
    fn exactly(t: &Tree) -> Vec<(Vec<u8>, Entry, i64)> {
        t.iter().map(|(p, e)| (p.to_vec(), *e, e.ctime)).collect()
    }

    #[test]
    fn a_walk_again_builds_on_the_last_one_and_finds_what_a_fresh_walk_finds() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for i in 0..20 {
            std::fs::create_dir_all(root.join(format!("u{i}/sub"))).unwrap();
            for j in 0..30 {
                std::fs::write(root.join(format!("u{i}/sub/f{j}")), b"x").unwrap();
            }
        }
        let (first, _) = scan(root, &mut |_| {}).unwrap();
        // Nothing changed: the same paths, on the same base, nothing of its own.
        let mut listed = 0;
        let (again, _) = rescan(root, &first, &mut |_| listed += 1).unwrap();
        assert_eq!(listed, 41, "the data dir and its 40 folders");
        assert_eq!(exactly(&again), exactly(&first));
        assert!(same_base(&again, &first));
        assert_eq!(again.len(), first.len());
        // Changed, added, removed (a file and a whole folder), a duplicate
        // name elsewhere: the same as a fresh walk, field for field.
        std::fs::write(root.join("u3/sub/f7"), b"longer now").unwrap();
        std::fs::write(root.join("u3/sub/new"), b"n").unwrap();
        std::fs::remove_file(root.join("u4/sub/f0")).unwrap();
        std::fs::remove_dir_all(root.join("u5")).unwrap();
        std::fs::create_dir(root.join("u6/f0")).unwrap();
        let (again, _) = rescan(root, &first, &mut |_| {}).unwrap();
        let (fresh, _) = scan(root, &mut |_| {}).unwrap();
        assert_eq!(exactly(&again), exactly(&fresh));
        assert_eq!(again.len(), fresh.len());
        assert!(
            same_base(&again, &first),
            "little changed: still on the old base"
        );
        for (path, e) in fresh.iter() {
            assert_eq!(again.get(path).map(|a| (*a, a.ctime)), Some((*e, e.ctime)));
        }
        assert_eq!(again.get(b"u5/sub/f1"), None);
        // Everything changed (a new tree under the same names): a base of its own.
        std::fs::remove_dir_all(root).unwrap();
        std::fs::create_dir(root).unwrap();
        for i in 0..2000 {
            std::fs::write(root.join(format!("g{i}")), b"y").unwrap();
        }
        let (again, _) = rescan(root, &first, &mut |_| {}).unwrap();
        let (fresh, _) = scan(root, &mut |_| {}).unwrap();
        assert_eq!(exactly(&again), exactly(&fresh));
        assert!(!same_base(&again, &first));
        // Nothing to build on: a plain walk.
        let (from_nothing, _) = rescan(root, &Tree::new(), &mut |_| {}).unwrap();
        assert_eq!(exactly(&from_nothing), exactly(&fresh));
    }

    #[test]
    fn scan_skips_symlinks_specials_and_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("u/upload")).unwrap();
        std::fs::create_dir_all(root.join(".sftp-ha-tmp")).unwrap();
        std::fs::write(root.join("u/upload/a file\n"), b"x").unwrap();
        std::fs::write(root.join(".sftp-ha-tmp/x"), b"partial").unwrap();
        std::fs::create_dir_all(root.join(".sftp-ha-tmp/s2/deeper")).unwrap();
        std::fs::write(root.join(".sftp-ha-tmp/s2/y"), b"partial").unwrap();
        // A user's file may have any name, this one too.
        std::fs::write(root.join("u/upload/.sftp-ha-tmp.x"), b"mine").unwrap();
        symlink("/etc/shadow", root.join("u/upload/evil")).unwrap();
        symlink("/etc", root.join("u/etc-dir")).unwrap();
        let mut listed = Vec::new();
        let (tree, skipped) = scan(root, &mut |p| listed.push(p.to_vec())).unwrap();
        assert_eq!(
            listed,
            vec![b"".to_vec(), b"u".to_vec(), b"u/upload".to_vec()]
        );
        let names: Vec<String> = tree
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                "u",
                "u/upload",
                "u/upload/.sftp-ha-tmp.x",
                "u/upload/a file\n"
            ]
        );
        assert_eq!(skipped.len(), 2);
        assert!(open_file(root, b"u/upload/evil").is_err());
        assert!(open_file(root, b"u/etc-dir/passwd").is_err());
        let (_, e) = open_file(root, b"u/upload/a file\n").unwrap();
        assert_eq!(e.size, 1);
        // Fresh temporaries stay; old ones go.
        assert_eq!(
            remove_stale_temporaries(root, std::time::Duration::from_secs(3600)).unwrap(),
            0
        );
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for f in [
            ".sftp-ha-tmp/x",
            ".sftp-ha-tmp/s2/y",
            "u/upload/.sftp-ha-tmp.x",
        ] {
            std::fs::File::options()
                .write(true)
                .open(root.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(
            remove_stale_temporaries(root, std::time::Duration::from_secs(3600)).unwrap(),
            2
        );
        assert!(!root.join(".sftp-ha-tmp/x").exists());
        assert!(!root.join(".sftp-ha-tmp/s2/y").exists());
        assert!(root.join(".sftp-ha-tmp/s2/deeper").is_dir(), "folders stay");
        assert!(
            root.join("u/upload/.sftp-ha-tmp.x").exists(),
            "a user's file is kept"
        );
    }

    #[test]
    fn set_id_bits_are_cleared_on_the_master_and_never_replicated() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("u/upload")).unwrap();
        let evil = root.join("u/upload/evil.sh");
        std::fs::write(&evil, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let (tree, _) = scan(root, &mut |_| {}).unwrap();
        assert_eq!(tree.get(b"u/upload/evil.sh").map(|e| e.mode), Some(0o755));
        let on_disk = std::fs::metadata(&evil).unwrap().permissions().mode() & 0o7777;
        assert_eq!(on_disk, 0o755);
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o4700)).unwrap();
        let Found::Entry(e) = stat_path(root, b"u/upload/evil.sh").unwrap() else {
            panic!("not found");
        };
        assert_eq!(e.mode, 0o700);
        let on_disk = std::fs::metadata(&evil).unwrap().permissions().mode() & 0o7777;
        assert_eq!(on_disk, 0o700);
    }

    #[test]
    fn one_path_is_looked_at_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("u/in")).unwrap();
        std::fs::write(root.join("u/in/f"), b"abc").unwrap();
        symlink("/etc", root.join("u/link")).unwrap();
        assert!(matches!(stat_path(root, b"u/in/f").unwrap(), Found::Entry(e) if e.size == 3));
        assert!(
            matches!(stat_path(root, b"u/in").unwrap(), Found::Entry(e) if e.kind == Kind::Dir)
        );
        assert_eq!(
            stat_path(root, b"u/link").unwrap(),
            Found::Skipped("symlink")
        );
        // Through a symlinked folder: as if it were not there.
        assert_eq!(stat_path(root, b"u/link/passwd").unwrap(), Found::Missing);
        assert_eq!(stat_path(root, b"u/in/f/x").unwrap(), Found::Missing);
        assert_eq!(stat_path(root, b"u/gone").unwrap(), Found::Missing);
        let (below, _) = scan_below(root, b"u/in", &mut |_| {}).unwrap();
        assert_eq!(below.keys().collect::<Vec<_>>(), vec![&b"u/in/f".to_vec()]);
        assert!(scan_below(root, b"u/link", &mut |_| {}).is_err());
    }

    #[test]
    fn a_part_holds_its_paths_subtrees_and_their_parents() {
        let t = tree(&[
            ("a", dir()),
            ("a/b", dir()),
            ("a/b/c", file(1, 1)),
            ("a/b/d", file(1, 1)),
            ("a/x", dir()),
            ("a/x/y", file(1, 1)),
            ("a/x-z", file(1, 1)),
            ("q", file(1, 1)),
        ]);
        let set = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        let p = part(&t, &set(&["a/b/c", "gone/f"]), &set(&["a/x"]));
        let keys: Vec<String> = p
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, vec!["a", "a/b", "a/b/c", "a/x", "a/x/y"]);
        let mut t2 = t.clone();
        let removed = remove_subtree(&mut t2, b"a/x");
        assert_eq!(removed.len(), 2);
        assert!(t2.contains_key(b"a/x-z".as_slice()));
        assert_eq!(subtree(&t, b"").count(), t.len());
    }
}
