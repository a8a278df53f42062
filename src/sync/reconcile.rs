//! Failback: before a newly promoted master mirrors its tree onto the former
//! master (now its standby), it brings back what only the former master has,
//! so that no file a user uploaded there is lost when replication makes the
//! peer a copy of this host.
//!
//! [`plan`] decides, without any I/O, from three trees: this host's ("mine"),
//! the peer's ("theirs", listed over SFTP) and the baseline (this host's tree
//! when it was promoted: the last point both hosts agreed on). [`pull`] and
//! [`make_dir`] carry the actions out, never through a link and never over an
//! existing file.
//!
//! "Same version" means same kind, size and mtime seconds: an SFTP listing
//! carries whole seconds only, and mode/owner changes are not content.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::fchown;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, SFlag, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::push::remote_path;
use super::sftp::{SftpClient, SftpError, show};
use super::tree::{Entry, Kind, TEMP_DIR, Tree};

/// Top-level names starting with this are the hosts' own (temporaries, the
/// published users list): never a user's folder, never reconciled.
const RESERVED_PREFIX: &[u8] = b".sftp-ha";

/// The longest file name Linux takes (NAME_MAX).
const NAME_MAX: usize = 255;

/// One step of a reconciliation, on this host. Paths are relative to the
/// data dir, like a [`Tree`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A file only the peer has, written or changed after the baseline:
    /// copied to this host at the same path.
    BringBack { path: Vec<u8>, entry: Entry },
    /// The peer's file at `path` is copied to this host as `copy`, beside
    /// this host's own version (which stays, and then replaces the peer's by
    /// normal replication): the same path differs on both sides and the
    /// peer's version is not the baseline's.
    ConflictCopy {
        path: Vec<u8>,
        copy: Vec<u8>,
        entry: Entry,
    },
    /// A folder only the peer has (not in the baseline, or with something
    /// brought back below it): created here at `path`.
    MakeDir { path: Vec<u8>, entry: Entry },
}

impl Action {
    /// The path this action makes on this host.
    pub fn target(&self) -> &[u8] {
        match self {
            Action::BringBack { path, .. } | Action::MakeDir { path, .. } => path,
            Action::ConflictCopy { copy, .. } => copy,
        }
    }
}

/// Same version as far as an SFTP listing can tell: same kind and, for
/// files, same size and mtime seconds. (Folder sizes and times are not
/// content: a folder is the same folder.)
fn same_version(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind && (a.kind == Kind::Dir || (a.size == b.size && a.mtime == b.mtime))
}

/// True for the paths reconciliation looks at: below a user's folder, and
/// not below one of the hosts' own top-level names. User folders themselves
/// are made by the account code; top-level files are each host's own.
fn is_planned(path: &[u8]) -> bool {
    match path.iter().position(|b| *b == b'/') {
        Some(i) => !path[..i].starts_with(RESERVED_PREFIX),
        None => false,
    }
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    }
}

/// The folders above `path` that are below a user's folder, nearest to the
/// top first: `u/a/b/f` → `u/a`, `u/a/b`.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .skip(1)
        .map(move |(i, _)| &path[..i])
}

/// The name the peer's version of `path` gets beside this host's:
/// `dir/NAME.sftp-ha-conflict-<node>-<UTC mtime>[.ext]`, the extension being
/// the last one of the file name (`a.tar.gz` keeps `.gz`; `.bashrc` and
/// `Makefile` have none). From the peer's mtime, not the time now, so that
/// planning again after a crash finds the copy already made.
pub fn conflict_name(path: &[u8], node: &str, mtime: i64) -> Vec<u8> {
    numbered_conflict_name(path, node, mtime, 1)
}

/// [`conflict_name`], with `-<n>` after the time for n > 1: the name to try
/// when the first is taken by another version.
fn numbered_conflict_name(path: &[u8], node: &str, mtime: i64, n: u32) -> Vec<u8> {
    let (dir, name) = split_last(path);
    // A leading dot starts a hidden name, not an extension.
    let (stem, ext) = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, &[][..]),
    };
    let node: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut marker = format!(
        ".sftp-ha-conflict-{node}-{}",
        crate::timefmt::format_utc_compact(u64::try_from(mtime).unwrap_or(0))
    );
    if n > 1 {
        marker.push_str(&format!("-{n}"));
    }
    // A long name is shortened (its stem), not refused by the kernel later.
    let room = NAME_MAX.saturating_sub(marker.len() + ext.len());
    let stem = &stem[..stem.len().min(room)];
    let mut out = Vec::with_capacity(path.len() + marker.len());
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(stem);
    out.extend_from_slice(marker.as_bytes());
    out.extend_from_slice(ext);
    out
}

/// The name to keep the peer's version `entry` of `path` under, for a
/// conflict found outside [`plan`] (bytes that differ where size and mtime
/// agree): the first conflict name nobody holds; `None` if this host already
/// holds that version under one (an earlier run made it).
pub fn conflict_copy_for(
    path: &[u8],
    entry: &Entry,
    node: &str,
    mine: &Tree,
    theirs: &Tree,
) -> Option<Vec<u8>> {
    match conflict_target(path, entry, node, mine, theirs, &BTreeSet::new()) {
        Name::Free(name) => Some(name),
        Name::Present(_) => None,
    }
}

/// A name for the peer's `entry` (a conflict copy of `path`, or a folder
/// renamed out of the way) on this host.
enum Name {
    /// This host already has that version under this name (an earlier run
    /// made it): nothing to copy.
    Present(Vec<u8>),
    /// Nobody has this name.
    Free(Vec<u8>),
}

fn conflict_target(
    path: &[u8],
    entry: &Entry,
    node: &str,
    mine: &Tree,
    theirs: &Tree,
    claimed: &BTreeSet<Vec<u8>>,
) -> Name {
    // Ends: each n gives another name, and the trees are finite.
    let mut n = 1;
    loop {
        let name = numbered_conflict_name(path, node, entry.mtime, n);
        n += 1;
        if claimed.contains(&name) {
            continue;
        }
        match mine.get(&name) {
            Some(m) if same_version(m, entry) => return Name::Present(name),
            Some(_) => continue,
            None => {}
        }
        match theirs.get(&name) {
            // The peer keeps this very version under that name already; it
            // is brought back (or was deleted here) on its own.
            Some(t) if entry.kind == Kind::File && same_version(t, entry) => {
                return Name::Present(name);
            }
            // A folder is never merged into another folder of the peer.
            Some(_) => continue,
            None => return Name::Free(name),
        }
    }
}

/// Files written here since the baseline that the peer has with the same
/// size and mtime second: [`plan`] takes them for the same version, but two
/// uploads within one second look alike, so their bytes must be compared.
/// Returns each with the peer's entry.
pub fn same_second_suspects(mine: &Tree, theirs: &Tree, baseline: &Tree) -> Vec<(Vec<u8>, Entry)> {
    mine.iter()
        .filter(|(path, e)| {
            // Written here since the baseline: another version, or the same
            // size and mtime with another ctime (a rewrite that kept them).
            e.kind == Kind::File
                && !baseline
                    .get(path)
                    .is_some_and(|b| same_version(e, b) && (b.ctime == 0 || b.ctime == e.ctime))
        })
        .filter_map(|(path, e)| {
            let there = theirs.get(path).filter(|t| same_version(e, t))?;
            Some((path.to_vec(), *there))
        })
        .collect()
}

/// The files in `current` that `confirmed` (what the standby confirmed)
/// does not hold as they are, ctime included: what a master that steps down
/// had written and its standby never got, also a rewrite that put size and
/// mtime back (only its ctime says it changed).
pub fn unconfirmed_files(current: &Tree, confirmed: &Tree) -> Vec<Vec<u8>> {
    current
        .iter()
        .filter(|(path, e)| {
            e.kind == Kind::File
                && confirmed
                    .get(path)
                    .is_none_or(|c| c != *e || c.ctime != e.ctime)
        })
        .map(|(path, _)| path.to_vec())
        .collect()
}

/// The most a list of changed files may hold; a longer one says "all of
/// them" instead, so no user can make it too big to read.
pub const CHANGED_LIST_MAX: usize = 32 << 20;

/// What a former master says it changed that its standby never confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Too many to list: every file counts as changed there.
    All,
    These(std::collections::HashSet<Vec<u8>>),
}

impl Changed {
    pub fn contains(&self, path: &[u8]) -> bool {
        match self {
            Changed::All => true,
            Changed::These(paths) => paths.contains(path),
        }
    }
}

/// The list of [`unconfirmed_files`] as written to the control folder: hex
/// paths, one a line; `*` alone when longer than [`CHANGED_LIST_MAX`].
pub fn changed_list_text(paths: &[Vec<u8>]) -> String {
    let text: String = paths
        .iter()
        .map(|p| format!("{}\n", super::tree::hex(p)))
        .collect();
    if text.len() > CHANGED_LIST_MAX {
        "*\n".into()
    } else {
        text
    }
}

/// Reads a list written by [`changed_list_text`]; lines that are not hex are skipped.
pub fn parse_changed_list(text: &str) -> Changed {
    if text.lines().any(|l| l == "*") {
        return Changed::All;
    }
    Changed::These(
        text.lines()
            .filter_map(super::tree::unhex)
            .filter(|p| !p.is_empty())
            .collect(),
    )
}

/// What this host must do so that replication from it loses nothing only
/// the peer has; see the module comment and [`Action`]. Ordered by the path
/// each action makes, so a folder comes before what goes in it.
///
/// Where the peer has a folder and this host a file of the same name, the
/// peer's folder is brought back renamed (as a conflict name of the
/// folder), and its files as conflict copies inside it, each under the
/// rules for a file this host lacks. Where the peer has a file and this host
/// a folder, the peer's file is a conflict copy beside the folder unless it
/// is the baseline's version (this host replaced it on purpose), as for any
/// other file.
///
/// Files below a user folder this host lacks are planned too: carrying them
/// out fails with [`ReconcileError::NoUserFolder`], for the caller to report.
/// Planning again after every action was carried out yields nothing.
pub fn plan(mine: &Tree, theirs: &Tree, baseline: &Tree, peer_node: &str) -> Vec<Action> {
    let in_baseline =
        |path: &[u8], e: &Entry| baseline.get(path).is_some_and(|b| same_version(b, e));
    let mut actions = Vec::new();
    // Folders of the peer this host lacks, by the path they would get here:
    // (the peer's entry, whether they are to be made).
    let mut folders: BTreeMap<Vec<u8>, (Entry, bool)> = BTreeMap::new();
    // Peer folders where this host has a file → the name they get here.
    let mut renamed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Names given out in this plan, so two copies never get the same one.
    let mut claimed = BTreeSet::new();
    for (path, entry) in theirs {
        if !is_planned(path) {
            continue;
        }
        // The path this entry gets here: its own, or below a renamed folder.
        // (The tree is sorted, so a folder is renamed before its contents.)
        let moved = ancestors(path).find_map(|a| {
            renamed.get(a).map(|to| {
                let mut t = to.clone();
                t.extend_from_slice(&path[a.len()..]);
                t
            })
        });
        match (entry.kind, moved) {
            (Kind::Dir, None) => match mine.get(path) {
                Some(m) if m.kind == Kind::Dir => {}
                Some(_) => {
                    let to = match conflict_target(path, entry, peer_node, mine, theirs, &claimed) {
                        Name::Present(to) | Name::Free(to) => to,
                    };
                    claimed.insert(to.clone());
                    renamed.insert(path.to_vec(), to.clone());
                    if !mine.get(&to).is_some_and(|m| m.kind == Kind::Dir) {
                        folders.insert(to, (*entry, !in_baseline(path, entry)));
                    }
                }
                None => {
                    folders.insert(path.to_vec(), (*entry, !in_baseline(path, entry)));
                }
            },
            (Kind::Dir, Some(to)) => {
                if !mine.get(&to).is_some_and(|m| m.kind == Kind::Dir) {
                    folders.insert(to, (*entry, !in_baseline(path, entry)));
                }
            }
            (Kind::File, None) => match mine.get(path) {
                None if !in_baseline(path, entry) => actions.push(Action::BringBack {
                    path: path.to_vec(),
                    entry: *entry,
                }),
                None => {} // deleted here since the baseline
                Some(m) if same_version(m, entry) => {}
                Some(_) if in_baseline(path, entry) => {} // changed only here
                Some(_) => {
                    if let Name::Free(copy) =
                        conflict_target(path, entry, peer_node, mine, theirs, &claimed)
                    {
                        claimed.insert(copy.clone());
                        actions.push(Action::ConflictCopy {
                            path: path.to_vec(),
                            copy,
                            entry: *entry,
                        });
                    }
                }
            },
            (Kind::File, Some(to)) => {
                if in_baseline(path, entry) {
                    continue; // deleted here since the baseline
                }
                let copy = match mine.get(&to) {
                    Some(m) if same_version(m, entry) => continue,
                    None if !claimed.contains(&to) => to,
                    // Taken by another version (made here since an earlier run).
                    _ => match conflict_target(&to, entry, peer_node, mine, theirs, &claimed) {
                        Name::Present(_) => continue,
                        Name::Free(copy) => copy,
                    },
                };
                claimed.insert(copy.clone());
                actions.push(Action::ConflictCopy {
                    path: path.to_vec(),
                    copy,
                    entry: *entry,
                });
            }
        }
    }
    // A folder is made if anything is made below it.
    let made: Vec<Vec<u8>> = actions
        .iter()
        .map(|a| a.target().to_vec())
        .chain(
            folders
                .iter()
                .filter(|(_, (_, wanted))| *wanted)
                .map(|(p, _)| p.clone()),
        )
        .collect();
    for path in &made {
        for a in ancestors(path) {
            if let Some((_, wanted)) = folders.get_mut(a) {
                *wanted = true;
            }
        }
    }
    actions.extend(
        folders
            .into_iter()
            .filter(|(_, (_, wanted))| *wanted)
            .map(|(path, (entry, _))| Action::MakeDir { path, entry }),
    );
    // A prefix sorts before its extensions: parents before children.
    actions.sort_by(|a, b| a.target().cmp(b.target()));
    actions
}

/// Saves the baseline (the tree this host had when promoted), in the index
/// format, atomically.
pub fn save_baseline(path: &Path, tree: &Tree) -> io::Result<()> {
    super::tree::save_index(path, tree)
}

/// Loads the baseline: `None` if there is none. Unlike an index, a baseline
/// that cannot be read whole is an error, never an empty tree: an empty
/// baseline would make every file this host deleted since look like one
/// only the peer has (harmless) but, worse, a caller could take "no
/// baseline" for "nothing agreed" without knowing why.
pub fn load_baseline(path: &Path) -> io::Result<Option<Tree>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |line: usize, why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} line {line}: {why}", path.display()),
        )
    };
    let text = std::str::from_utf8(&text).map_err(|_| bad(0, "not text"))?;
    let mut lines = text.lines();
    // Format 2 had no ctime: read as "not known", never as "nothing agreed".
    let legacy = match lines.next() {
        Some(super::tree::INDEX_HEADER) => false,
        Some("sftp-ha-index 2") => true,
        _ => return Err(bad(1, "not a baseline this version can read")),
    };
    let mut tree = Tree::new();
    for (n, line) in lines.enumerate() {
        let line = if legacy {
            std::borrow::Cow::Owned(format!("{line} 0"))
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        let (path, entry) =
            super::tree::parse_index_line(&line).ok_or_else(|| bad(n + 2, "unreadable"))?;
        tree.insert(path, entry);
    }
    Ok(Some(tree))
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("copying from the peer: {0}")]
    Sftp(#[from] SftpError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} already exists on this host and is never overwritten; plan again")]
    Exists(String),
    #[error("the user folder of {0} does not exist on this host (no such account here)")]
    NoUserFolder(String),
    #[error("{0} is not a path below a user folder")]
    BadPath(String),
    #[error("{path} is not a {expected} in the peer's tree")]
    WrongKind {
        path: String,
        expected: &'static str,
    },
    #[error("the folder {0} is missing here and the peer's tree has no folder there")]
    MissingParent(String),
    #[error(
        "{path} changed on the peer while it was copied: {listed} bytes listed, {copied} copied"
    )]
    Changed {
        path: String,
        listed: u64,
        copied: u64,
    },
}

fn io_error(what: &'static str, path: &[u8]) -> impl FnOnce(Errno) -> ReconcileError {
    let path = show(path);
    move |e| ReconcileError::Io {
        what,
        path,
        source: e.into(),
    }
}

/// Refuses what a tree never holds: an absolute or empty path, `.`, `..`,
/// empty components, a path at the top level or below a reserved name.
fn check_path(path: &[u8]) -> Result<(), ReconcileError> {
    let bad = path
        .split(|b| *b == b'/')
        .any(|part| part.is_empty() || part == b"." || part == b"..");
    if bad || !is_planned(path) {
        return Err(ReconcileError::BadPath(show(path)));
    }
    Ok(())
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Sets owner, mode (set-id bits never) and mtime on an open file or folder.
fn set_attributes(fd: &OwnedFd, entry: &Entry, path: &[u8]) -> Result<(), ReconcileError> {
    let io = |what, source| ReconcileError::Io {
        what,
        path: show(path),
        source,
    };
    fchown(fd, Some(entry.uid), Some(entry.gid)).map_err(|e| io("set the owner of", e))?;
    // After the chown, which would clear set-id bits anyway; they are never set.
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(entry.mode_word() & 0o1777))
        .map_err(io_error("set the mode of", path))?;
    let mtime = TimeSpec::new(entry.mtime, 0);
    futimens(fd, &mtime, &mtime).map_err(io_error("set the times of", path))
}

/// Makes folder `name` in `parent` (`path` is its path, for messages) with
/// `entry`'s owner, mode and mtime, and opens it. `Ok(None)` if a folder is
/// already there (left as it is); anything else there is
/// [`ReconcileError::Exists`].
fn create_dir_at(
    parent: &OwnedFd,
    name: &[u8],
    path: &[u8],
    entry: &Entry,
) -> Result<Option<OwnedFd>, ReconcileError> {
    let name = OsStr::from_bytes(name);
    // Made private to root first: users see it only once it is theirs.
    match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let st = fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(io_error("look at", path))?;
            if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
                return Ok(None);
            }
            return Err(ReconcileError::Exists(show(path)));
        }
        Err(e) => return Err(io_error("make the folder", path)(e)),
    }
    let fd = openat(parent.as_fd(), name, dir_flags(), Mode::empty())
        .map_err(io_error("open the folder", path))?;
    set_attributes(&fd, entry, path)?;
    Ok(Some(fd))
}

/// Opens the user folder `path` starts with, never through a link.
fn open_user_folder(data_dir: &Path, path: &[u8]) -> Result<OwnedFd, ReconcileError> {
    let user = path.split(|b| *b == b'/').next().unwrap_or_default();
    crate::fsutil::open_dir_below(data_dir, user).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ReconcileError::NoUserFolder(show(path))
        } else {
            ReconcileError::Io {
                what: "open the user folder of",
                path: show(path),
                source: e,
            }
        }
    })
}

/// Opens the folder `local` is in, every component with O_NOFOLLOW (as
/// [`crate::fsutil::open_dir_below`] does), making the missing ones below
/// the user folder with the attributes of the peer's folder at the same
/// depth of `remote` (which differs from `local` only in the names a
/// conflict gave).
fn open_parent(
    data_dir: &Path,
    local: &[u8],
    remote: &[u8],
    dirs: &Tree,
) -> Result<OwnedFd, ReconcileError> {
    let local_folders: Vec<&[u8]> = ancestors(local).collect();
    let remote_folders: Vec<&[u8]> = ancestors(remote).collect();
    if local_folders.len() != remote_folders.len() {
        return Err(ReconcileError::BadPath(format!(
            "{} (as {})",
            show(remote),
            show(local)
        )));
    }
    let mut dir = open_user_folder(data_dir, local)?;
    for (folder, peers) in local_folders.iter().zip(&remote_folders) {
        let (_, name) = split_last(folder);
        dir = match openat(
            dir.as_fd(),
            OsStr::from_bytes(name),
            dir_flags(),
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let entry = dirs
                    .get(peers)
                    .filter(|e| e.kind == Kind::Dir)
                    .ok_or_else(|| ReconcileError::MissingParent(show(folder)))?;
                match create_dir_at(&dir, name, folder, entry)? {
                    Some(fd) => fd,
                    // Made meanwhile: opened like any other.
                    None => openat(
                        dir.as_fd(),
                        OsStr::from_bytes(name),
                        dir_flags(),
                        Mode::empty(),
                    )
                    .map_err(io_error("open the folder", folder))?,
                }
            }
            Err(e) => return Err(io_error("open the folder", folder)(e)),
        };
    }
    Ok(dir)
}

/// Opens (making it if missing: 0700, root's) the folder of temporaries at
/// the top of the data dir, outside every chroot.
fn open_temp_dir(data_dir: &Path) -> Result<OwnedFd, ReconcileError> {
    let root = nix::fcntl::open(data_dir, dir_flags(), Mode::empty()).map_err(io_error(
        "open the data dir",
        data_dir.as_os_str().as_bytes(),
    ))?;
    match mkdirat(
        root.as_fd(),
        OsStr::from_bytes(TEMP_DIR),
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(io_error("make the folder", TEMP_DIR)(e)),
    }
    openat(
        root.as_fd(),
        OsStr::from_bytes(TEMP_DIR),
        dir_flags(),
        Mode::empty(),
    )
    .map_err(io_error("open the folder", TEMP_DIR))
}

/// Creates a fresh temporary (O_EXCL, O_NOFOLLOW, 0600) in `tmp_dir`.
fn create_temp(tmp_dir: &OwnedFd) -> Result<(Vec<u8>, File), ReconcileError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Not the names push gives on a standby: those are removed as strays.
        let name = format!(
            "pull-{:x}-{:x}-{n:x}",
            std::process::id(),
            crate::timefmt::unix_now()
        )
        .into_bytes();
        match openat(
            tmp_dir.as_fd(),
            OsStr::from_bytes(&name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            // Left by an earlier process with the same pid: the next number.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(io_error("create a temporary in", TEMP_DIR)(e)),
        }
    }
}

/// Writes a file into place at `local`: a fresh temporary filled by `fill`,
/// checked against `entry.size`, given `entry`'s owner, mode and mtime,
/// fsynced, and renamed to `local` only if nothing is there.
fn place(
    data_dir: &Path,
    local: &[u8],
    remote: &[u8],
    entry: &Entry,
    dirs: &Tree,
    fill: impl FnOnce(&mut File) -> Result<u64, ReconcileError>,
) -> Result<u64, ReconcileError> {
    check_path(local)?;
    check_path(remote)?;
    if entry.kind != Kind::File {
        return Err(ReconcileError::WrongKind {
            path: show(remote),
            expected: "file",
        });
    }
    let parent = open_parent(data_dir, local, remote, dirs)?;
    let (_, name) = split_last(local);
    let tmp_dir = open_temp_dir(data_dir)?;
    let (tmp_name, mut file) = create_temp(&tmp_dir)?;
    let tmp_shown = [TEMP_DIR, b"/", &tmp_name].concat();
    let result = (|| {
        let copied = fill(&mut file)?;
        if copied != entry.size {
            return Err(ReconcileError::Changed {
                path: show(remote),
                listed: entry.size,
                copied,
            });
        }
        let fd = OwnedFd::from(file);
        set_attributes(&fd, entry, &tmp_shown)?;
        nix::unistd::fsync(&fd).map_err(io_error("fsync", &tmp_shown))?;
        match renameat2(
            tmp_dir.as_fd(),
            OsStr::from_bytes(&tmp_name),
            parent.as_fd(),
            OsStr::from_bytes(name),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Err(ReconcileError::Exists(show(local))),
            Err(e) => return Err(io_error("rename into place", local)(e)),
        }
        // The new name is durable too, not only the data.
        nix::unistd::fsync(&parent).map_err(io_error("fsync the folder of", local))?;
        Ok(copied)
    })();
    if result.is_err() {
        let _ = unlinkat(
            tmp_dir.as_fd(),
            OsStr::from_bytes(&tmp_name),
            UnlinkatFlags::NoRemoveDir,
        );
    }
    result
}

/// Copies the peer's file `remote` into this host's data dir at `local`
/// (both relative paths), never through a link: missing parent folders
/// below the user folder are made with the attributes of the peer's (from
/// `dirs`, the peer's tree); a missing user folder is
/// [`ReconcileError::NoUserFolder`]. The data goes to a fresh temporary in
/// the data dir's [`TEMP_DIR`], is fsynced, gets `entry`'s owner, mode
/// (set-id bits never) and mtime, and is renamed into place only if nothing
/// is there ([`ReconcileError::Exists`] otherwise: plan again). A file that
/// is not `entry.size` bytes when copied is [`ReconcileError::Changed`].
/// Returns the size copied.
pub fn pull(
    sftp: &mut SftpClient<impl Read + io::Write>,
    data_dir: &Path,
    remote: &[u8],
    local: &[u8],
    entry: &Entry,
    dirs: &Tree,
) -> Result<u64, ReconcileError> {
    place(data_dir, local, remote, entry, dirs, |file| {
        Ok(sftp.download(&remote_path(remote), file)?)
    })
}

/// The local half of [`pull`]: writes what `source` yields into place at
/// `local`, under the same rules, the parents' attributes taken from `dirs`
/// at the same paths.
pub fn place_from_reader(
    data_dir: &Path,
    local: &[u8],
    entry: &Entry,
    dirs: &Tree,
    source: &mut impl Read,
) -> Result<u64, ReconcileError> {
    place(data_dir, local, local, entry, dirs, |file| {
        io::copy(source, file).map_err(|e| ReconcileError::Io {
            what: "write",
            path: show(local),
            source: e,
        })
    })
}

/// Makes the folder `path` with `entry`'s owner, mode and mtime, below its
/// parent opened with O_NOFOLLOW on every component. A folder already there
/// is fine (and left as it is); anything else there is
/// [`ReconcileError::Exists`].
pub fn make_dir(data_dir: &Path, path: &[u8], entry: &Entry) -> Result<(), ReconcileError> {
    check_path(path)?;
    if entry.kind != Kind::Dir {
        return Err(ReconcileError::WrongKind {
            path: show(path),
            expected: "folder",
        });
    }
    let (_, name) = split_last(path);
    // No folder entries: a missing parent is an error, not made here.
    let parent = open_parent(data_dir, path, path, &Tree::new())?;
    create_dir_at(&parent, name, path, entry).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            mtime_nsec: 0,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            ino: 0,
            ctime: 0,
        }
    }

    fn dir() -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 4096,
            mtime: 1,
            mtime_nsec: 0,
            mode: 0o755,
            uid: 1000,
            gid: 1000,
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

    const T: i64 = 1_795_509_333; // 2026-11-24 08:35:33 UTC

    fn cname(path: &str, mtime: i64) -> Vec<u8> {
        conflict_name(path.as_bytes(), "old1", mtime)
    }

    /// Carries `actions` out on `mine` as pull and make_dir would.
    fn apply(mine: &mut Tree, actions: &[Action]) {
        for a in actions {
            let e = match a {
                Action::BringBack { entry, .. }
                | Action::ConflictCopy { entry, .. }
                | Action::MakeDir { entry, .. } => *entry,
            };
            let target = a.target().to_vec();
            // Made in order: the parent is there already.
            let (parent, _) = split_last(&target);
            assert!(
                mine.get(parent).is_some_and(|p| p.kind == Kind::Dir),
                "{} before its folder",
                show(&target)
            );
            assert!(
                mine.insert(target.clone(), e).is_none(),
                "{} overwritten",
                show(&target)
            );
        }
    }

    /// Plans, checks the plan carries out in order, and that planning again
    /// afterwards finds nothing left to do.
    fn plan_and_apply(mine: &Tree, theirs: &Tree, baseline: &Tree) -> Vec<Action> {
        let actions = plan(mine, theirs, baseline, "old1");
        let mut after = mine.clone();
        apply(&mut after, &actions);
        assert_eq!(plan(&after, theirs, baseline, "old1"), vec![], "idempotent");
        actions
    }

    #[test]
    fn conflict_names() {
        let at = 1_795_926_600; // 2026-11-29 04:30:00 UTC
        let n =
            |p: &str, node: &str| String::from_utf8(conflict_name(p.as_bytes(), node, at)).unwrap();
        assert_eq!(
            n("u/up/report.pdf", "old1"),
            "u/up/report.sftp-ha-conflict-old1-20261129T043000Z.pdf"
        );
        assert_eq!(
            n("u/Makefile", "old1"),
            "u/Makefile.sftp-ha-conflict-old1-20261129T043000Z"
        );
        assert_eq!(
            n("u/.bashrc", "old1"),
            "u/.bashrc.sftp-ha-conflict-old1-20261129T043000Z"
        );
        assert_eq!(
            n("u/a.tar.gz", "old1"),
            "u/a.tar.sftp-ha-conflict-old1-20261129T043000Z.gz"
        );
        assert_eq!(
            n("u/x", "host b/ä:1"),
            "u/x.sftp-ha-conflict-host_b___1-20261129T043000Z",
            "the node is sanitised"
        );
        assert_eq!(
            String::from_utf8(numbered_conflict_name(b"u/r.pdf", "n", at, 2)).unwrap(),
            "u/r.sftp-ha-conflict-n-20261129T043000Z-2.pdf"
        );
        // A long name is shortened to fit, keeping marker and extension.
        let long = format!("u/{}.txt", "x".repeat(300));
        let c = conflict_name(long.as_bytes(), "old1", at);
        let (_, name) = split_last(&c);
        assert_eq!(name.len(), NAME_MAX);
        assert!(name.ends_with(b"-20261129T043000Z.txt"));
        // Bytes that are not UTF-8 stay as they are.
        assert_eq!(
            conflict_name(b"u/\xff.bin", "n", 0),
            b"u/\xff.sftp-ha-conflict-n-19700101T000000Z.bin".to_vec()
        );
    }

    #[test]
    fn a_file_only_the_peer_has_comes_back_unless_deleted_here() {
        let mine = tree(&[("u", dir()), ("u/up", dir())]);
        let theirs = tree(&[
            ("u", dir()),
            ("u/up", dir()),
            ("u/up/new", file(1, T)),
            ("u/up/deleted-here", file(2, T)),
            ("u/up/changed-there", file(3, T + 5)),
        ]);
        let baseline = tree(&[
            ("u", dir()),
            ("u/up", dir()),
            ("u/up/deleted-here", file(2, T)),
            ("u/up/changed-there", file(3, T)),
        ]);
        assert_eq!(
            plan_and_apply(&mine, &theirs, &baseline),
            vec![
                Action::BringBack {
                    path: b"u/up/changed-there".to_vec(),
                    entry: file(3, T + 5)
                },
                Action::BringBack {
                    path: b"u/up/new".to_vec(),
                    entry: file(1, T)
                },
            ]
        );
    }

    #[test]
    fn a_file_changed_on_the_peer_is_kept_beside_this_hosts() {
        let base = tree(&[
            ("u", dir()),
            ("u/f", file(1, T)),
            ("u/g", file(1, T)),
            ("u/h", file(1, T)),
        ]);
        let mine = tree(&[
            ("u", dir()),
            ("u/f", file(2, T + 1)), // changed here only
            ("u/g", file(1, T)),     // changed there only
            ("u/h", file(3, T + 3)), // changed on both
            ("u/same", file(4, T)),
            ("u/mine-only", file(5, T)),
        ]);
        let theirs = tree(&[
            ("u", dir()),
            ("u/f", file(1, T)),
            ("u/g", file(9, T + 9)),
            ("u/h", file(8, T + 8)),
            ("u/same", file(4, T)),
        ]);
        assert_eq!(
            plan_and_apply(&mine, &theirs, &base),
            vec![
                Action::ConflictCopy {
                    path: b"u/g".to_vec(),
                    copy: cname("u/g", T + 9),
                    entry: file(9, T + 9)
                },
                Action::ConflictCopy {
                    path: b"u/h".to_vec(),
                    copy: cname("u/h", T + 8),
                    entry: file(8, T + 8)
                },
            ]
        );
        // Without a common past, every difference is a conflict.
        let actions = plan_and_apply(&mine, &theirs, &Tree::new());
        assert_eq!(actions.len(), 3);
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, Action::ConflictCopy { .. }))
        );
    }

    #[test]
    fn mode_owner_and_nanoseconds_are_not_versions() {
        let mut other = file(1, T);
        other.mode = 0o600;
        other.uid = 5;
        other.mtime_nsec = 999;
        other.ino = 42;
        let mine = tree(&[("u", dir()), ("u/f", file(1, T))]);
        let theirs = tree(&[("u", dir()), ("u/f", other)]);
        assert_eq!(plan(&mine, &theirs, &Tree::new(), "old1"), vec![]);
        // Nor a folder's size or time.
        let mut d = dir();
        d.size = 12288;
        d.mtime = T;
        let theirs = tree(&[("u", dir()), ("u/d", d)]);
        let mine = tree(&[("u", dir()), ("u/d", dir())]);
        assert_eq!(plan(&mine, &theirs, &Tree::new(), "old1"), vec![]);
    }

    #[test]
    fn folders_only_the_peer_has() {
        let mine = tree(&[("u", dir())]);
        let theirs = tree(&[
            ("u", dir()),
            ("u/new", dir()),
            ("u/new/deeper", dir()),
            ("u/gone", dir()), // deleted here, nothing new below
            ("u/gone/old", file(1, T)),
            ("u/gone2", dir()), // deleted here, something new below
            ("u/gone2/sub", dir()),
            ("u/gone2/sub/fresh", file(2, T)),
        ]);
        let baseline = tree(&[
            ("u", dir()),
            ("u/gone", dir()),
            ("u/gone/old", file(1, T)),
            ("u/gone2", dir()),
            ("u/gone2/sub", dir()),
        ]);
        let targets: Vec<String> = plan_and_apply(&mine, &theirs, &baseline)
            .iter()
            .map(|a| String::from_utf8(a.target().to_vec()).unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                "u/gone2",
                "u/gone2/sub",
                "u/gone2/sub/fresh",
                "u/new",
                "u/new/deeper"
            ]
        );
    }

    #[test]
    fn parents_come_first_whatever_the_names() {
        // `-` and `.` sort before `/`: `u/a-b`, `u/a.x` and `u/a/...` mix.
        let mine = tree(&[("u", dir())]);
        let theirs = tree(&[
            ("u", dir()),
            ("u/a", dir()),
            ("u/a-b", file(1, T)),
            ("u/a.x", dir()),
            ("u/a.x/f", file(1, T)),
            ("u/a/b", dir()),
            ("u/a/b/c", file(1, T)),
            ("u/a/b-c", file(1, T)),
        ]);
        let actions = plan_and_apply(&mine, &theirs, &Tree::new());
        assert_eq!(actions.len(), 7);
    }

    #[test]
    fn the_top_level_and_the_hosts_own_names_are_never_planned() {
        let mine = tree(&[]);
        let theirs = tree(&[
            (".sftp-ha-users.yaml", file(1, T)),
            (".sftp-ha-tmp", dir()),
            (".sftp-ha-tmp/partial", file(1, T)),
            (".sftp-ha-other", dir()),
            (".sftp-ha-other/x", dir()),
            ("top-file", file(1, T)),
            ("newuser", dir()),
            ("newuser/upload", dir()),
            ("newuser/upload/f", file(1, T)),
        ]);
        // The user folder is not made (the account code does that); what is
        // below it is planned, and fails to carry out if the account is missing.
        assert_eq!(
            plan(&mine, &theirs, &Tree::new(), "old1")
                .iter()
                .map(|a| a.target().to_vec())
                .collect::<Vec<_>>(),
            vec![b"newuser/upload".to_vec(), b"newuser/upload/f".to_vec()]
        );
        // A user's own names may start with `.sftp-ha` below their folder.
        let theirs = tree(&[("u", dir()), ("u/.sftp-ha-tmp", file(1, T))]);
        let mine = tree(&[("u", dir())]);
        assert_eq!(plan(&mine, &theirs, &Tree::new(), "old1").len(), 1);
    }

    #[test]
    fn the_users_list_conflicts_like_any_file() {
        let mine = tree(&[
            ("u", dir()),
            ("u/admin", dir()),
            ("u/admin/users.yaml", file(10, T + 1)),
        ]);
        let theirs = tree(&[
            ("u", dir()),
            ("u/admin", dir()),
            ("u/admin/users.yaml", file(11, T + 2)),
        ]);
        assert_eq!(
            plan_and_apply(&mine, &theirs, &Tree::new()),
            vec![Action::ConflictCopy {
                path: b"u/admin/users.yaml".to_vec(),
                copy: cname("u/admin/users.yaml", T + 2),
                entry: file(11, T + 2)
            }]
        );
    }

    #[test]
    fn a_peer_file_where_this_host_has_a_folder() {
        let mine = tree(&[
            ("u", dir()),
            ("u/x", dir()),
            ("u/x/inside", file(1, T)),
            ("u/y", dir()),
        ]);
        let theirs = tree(&[("u", dir()), ("u/x", file(5, T)), ("u/y", file(6, T))]);
        // u/y was that very file when this host was promoted: replaced on purpose.
        let baseline = tree(&[("u", dir()), ("u/y", file(6, T))]);
        assert_eq!(
            plan_and_apply(&mine, &theirs, &baseline),
            vec![Action::ConflictCopy {
                path: b"u/x".to_vec(),
                copy: cname("u/x", T),
                entry: file(5, T)
            }]
        );
    }

    #[test]
    fn a_peer_folder_where_this_host_has_a_file_comes_back_renamed() {
        let mine = tree(&[("u", dir()), ("u/d", file(1, T))]);
        let mut peer_dir = dir();
        peer_dir.mtime = T + 100;
        let theirs = tree(&[
            ("u", dir()),
            ("u/d", peer_dir),
            ("u/d/new", file(2, T)),
            ("u/d/old", file(3, T)), // in the baseline: deleted here with its folder
            ("u/d/sub", dir()),
            ("u/d/sub/f", file(4, T)),
        ]);
        let baseline = tree(&[("u", dir()), ("u/d", dir()), ("u/d/old", file(3, T))]);
        let to = cname("u/d", T + 100);
        let under = |rest: &str| [to.as_slice(), rest.as_bytes()].concat();
        assert_eq!(
            plan_and_apply(&mine, &theirs, &baseline),
            vec![
                Action::MakeDir {
                    path: to.clone(),
                    entry: peer_dir
                },
                Action::ConflictCopy {
                    path: b"u/d/new".to_vec(),
                    copy: under("/new"),
                    entry: file(2, T)
                },
                Action::MakeDir {
                    path: under("/sub"),
                    entry: dir()
                },
                Action::ConflictCopy {
                    path: b"u/d/sub/f".to_vec(),
                    copy: under("/sub/f"),
                    entry: file(4, T)
                },
            ]
        );
        // Nothing new in it: nothing to bring back.
        let theirs = tree(&[("u", dir()), ("u/d", dir()), ("u/d/old", file(3, T))]);
        assert_eq!(plan(&mine, &theirs, &baseline, "old1"), vec![]);
    }

    #[test]
    fn a_taken_conflict_name_gets_a_number() {
        let mine = tree(&[
            ("u", dir()),
            ("u/f", file(1, T)),
            // A user made a file of that name since (or an older copy was edited).
            (
                std::str::from_utf8(&cname("u/f", T + 9)).unwrap(),
                file(7, T),
            ),
        ]);
        let theirs = tree(&[("u", dir()), ("u/f", file(2, T + 9))]);
        assert_eq!(
            plan_and_apply(&mine, &theirs, &Tree::new()),
            vec![Action::ConflictCopy {
                path: b"u/f".to_vec(),
                copy: numbered_conflict_name(b"u/f", "old1", T + 9, 2),
                entry: file(2, T + 9)
            }]
        );
        // The peer holds a copy of that same version under that name already:
        // it comes back as it is, not twice.
        let mine = tree(&[("u", dir()), ("u/f", file(1, T))]);
        let c = cname("u/f", T + 9);
        let theirs = tree(&[
            ("u", dir()),
            ("u/f", file(2, T + 9)),
            (std::str::from_utf8(&c).unwrap(), file(2, T + 9)),
        ]);
        assert_eq!(
            plan_and_apply(&mine, &theirs, &Tree::new()),
            vec![Action::BringBack {
                path: c,
                entry: file(2, T + 9)
            }]
        );
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = tree(&[("u", dir()), ("u/a", dir()), ("u/a/f", file(1, T))]);
        assert_eq!(plan(&t, &t, &Tree::new(), "old1"), vec![]);
        assert_eq!(plan(&t, &t, &t, "old1"), vec![]);
        assert_eq!(
            plan(&t, &Tree::new(), &t, "old1"),
            vec![],
            "mine-only: replication's"
        );
    }

    #[test]
    fn baselines_round_trip_and_a_bad_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("baseline");
        assert!(load_baseline(&p).unwrap().is_none());
        let t = tree(&[("u", dir()), ("u/a b\n\u{e4}", file(3, T))]);
        save_baseline(&p, &t).unwrap();
        assert_eq!(load_baseline(&p).unwrap(), Some(t.clone()));
        save_baseline(&p, &Tree::new()).unwrap();
        assert_eq!(load_baseline(&p).unwrap(), Some(Tree::new()));
        for bad in [
            &b""[..],
            b"sftp-ha-index 1\n",
            b"sftp-ha-index 3\n75 f 1 2 3 644 0 0\n",
            b"sftp-ha-index 3\n7 f 1 2 3 644 0 0 0 0\n",
            b"sftp-ha-index 3\n75 x 1 2 3 644 0 0 0 0\n",
            b"sftp-ha-index 3\n75 f 1 2 3 999 0 0 0 0\n",
            b"\xff\xfe",
        ] {
            std::fs::write(&p, bad).unwrap();
            let err = load_baseline(&p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        std::fs::create_dir(d.path().join("a-folder")).unwrap();
        assert!(load_baseline(&d.path().join("a-folder")).is_err());
    }

    mod local {
        use super::*;
        use std::fs;
        use std::os::unix::fs::MetadataExt;

        fn data_dir() -> tempfile::TempDir {
            let d = tempfile::tempdir().unwrap();
            fs::create_dir(d.path().join("u")).unwrap();
            d
        }

        fn temporaries(root: &Path) -> usize {
            fs::read_dir(root.join(".sftp-ha-tmp")).map_or(0, |d| d.count())
        }

        #[test]
        fn a_file_is_placed_with_its_attributes_and_missing_folders() {
            let d = data_dir();
            let root = d.path();
            let mut e = file(5, T);
            e.mode = 0o4750; // set-uid: never kept
            e.uid = 1234;
            e.gid = 2345;
            let mut folder = dir();
            folder.mode = 0o1770;
            folder.uid = 1111;
            folder.mtime = T - 50;
            let dirs = tree(&[("u/a", folder), ("u/a/b", folder)]);
            let n = place_from_reader(root, b"u/a/b/f", &e, &dirs, &mut &b"hello"[..]).unwrap();
            assert_eq!(n, 5);
            let p = root.join("u/a/b/f");
            assert_eq!(fs::read(&p).unwrap(), b"hello");
            let m = fs::symlink_metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 2345));
            assert_eq!(m.mode() & 0o7777, 0o750);
            assert_eq!((m.mtime(), m.mtime_nsec()), (T, 0));
            let m = fs::symlink_metadata(root.join("u/a")).unwrap();
            assert!(m.is_dir());
            // (Its mtime is set, then moved on by what is made in it.)
            assert_eq!((m.uid(), m.mode() & 0o7777), (1111, 0o1770));
            let tmp = fs::symlink_metadata(root.join(".sftp-ha-tmp")).unwrap();
            assert_eq!(tmp.mode() & 0o7777, 0o700);
            assert_eq!(temporaries(root), 0, "no temporary left");
        }

        #[test]
        fn an_existing_file_is_never_overwritten() {
            let d = data_dir();
            let root = d.path();
            fs::write(root.join("u/f"), b"mine").unwrap();
            let err =
                place_from_reader(root, b"u/f", &file(5, T), &Tree::new(), &mut &b"their"[..])
                    .unwrap_err();
            assert!(matches!(err, ReconcileError::Exists(_)), "{err}");
            assert_eq!(fs::read(root.join("u/f")).unwrap(), b"mine");
            assert_eq!(temporaries(root), 0);
            // Nor a folder, nor a link (which is not followed either).
            fs::create_dir(root.join("u/d")).unwrap();
            let err = place_from_reader(root, b"u/d", &file(1, T), &Tree::new(), &mut &b"x"[..])
                .unwrap_err();
            assert!(matches!(err, ReconcileError::Exists(_)), "{err}");
            let outside = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(outside.path().join("t"), root.join("u/l")).unwrap();
            let err = place_from_reader(root, b"u/l", &file(1, T), &Tree::new(), &mut &b"x"[..])
                .unwrap_err();
            assert!(matches!(err, ReconcileError::Exists(_)), "{err}");
            assert!(!outside.path().join("t").exists());
        }

        #[test]
        fn a_link_planted_as_a_folder_is_refused() {
            let d = data_dir();
            let root = d.path();
            let outside = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(outside.path(), root.join("u/up")).unwrap();
            std::os::unix::fs::symlink(outside.path(), root.join("evil")).unwrap();
            let dirs = tree(&[("u/up", dir()), ("u/up/x", dir())]);
            for path in [&b"u/up/f"[..], b"u/up/x/f", b"evil/f"] {
                let err =
                    place_from_reader(root, path, &file(1, T), &dirs, &mut &b"x"[..]).unwrap_err();
                let ReconcileError::Io { source, .. } = &err else {
                    panic!("{err}");
                };
                assert!(
                    matches!(
                        source.raw_os_error(),
                        Some(nix::libc::ELOOP | nix::libc::ENOTDIR)
                    ),
                    "{err}"
                );
                let err = make_dir(root, &[path, b"d"].concat(), &dir()).unwrap_err();
                assert!(matches!(err, ReconcileError::Io { .. }), "{err}");
            }
            assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        }

        #[test]
        fn what_cannot_be_placed() {
            let d = data_dir();
            let root = d.path();
            let err =
                place_from_reader(root, b"nobody/f", &file(1, T), &Tree::new(), &mut &b"x"[..])
                    .unwrap_err();
            assert!(matches!(err, ReconcileError::NoUserFolder(_)), "{err}");
            let err = place_from_reader(
                root,
                b"u/missing/f",
                &file(1, T),
                &Tree::new(),
                &mut &b"x"[..],
            )
            .unwrap_err();
            assert!(matches!(err, ReconcileError::MissingParent(_)), "{err}");
            for bad in [
                &b"f"[..],
                b"/u/f",
                b"u/../f",
                b"u//f",
                b"u/./f",
                b".sftp-ha-tmp/f",
                b"",
            ] {
                let err = place_from_reader(root, bad, &file(1, T), &Tree::new(), &mut &b"x"[..])
                    .unwrap_err();
                assert!(matches!(err, ReconcileError::BadPath(_)), "{err}");
            }
            // The peer's file changed between the listing and the copy.
            let err =
                place_from_reader(root, b"u/f", &file(3, T), &Tree::new(), &mut &b"longer"[..])
                    .unwrap_err();
            assert!(
                matches!(
                    err,
                    ReconcileError::Changed {
                        listed: 3,
                        copied: 6,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(!root.join("u/f").exists());
            assert_eq!(temporaries(root), 0);
            let err =
                place_from_reader(root, b"u/f", &dir(), &Tree::new(), &mut &b""[..]).unwrap_err();
            assert!(matches!(err, ReconcileError::WrongKind { .. }), "{err}");
        }

        #[test]
        fn pull_copies_the_peers_file_over_sftp() {
            use crate::sync::sftp::{CHUNK, fake::FakeServer};
            let d = data_dir();
            let root = d.path();
            let data: Vec<u8> = (0..3 * CHUNK + 11).map(|i| (i % 253) as u8).collect();
            let server = FakeServer::new(&[(&b"/u/d/f.txt"[..], data.clone())], CHUNK);
            let mut sftp = SftpClient::new(server).unwrap();
            let mut e = file(data.len() as u64, T);
            e.uid = 77;
            let dirs = tree(&[("u/d", dir())]);
            // Into a renamed folder, as for a peer folder where this host has a file.
            let local = b"u/d.sftp-ha-conflict-old1-x/f.txt";
            let n = pull(&mut sftp, root, b"u/d/f.txt", local, &e, &dirs).unwrap();
            assert_eq!(n, data.len() as u64);
            let p = root.join(OsStr::from_bytes(local));
            assert_eq!(fs::read(&p).unwrap(), data);
            assert_eq!(fs::symlink_metadata(&p).unwrap().uid(), 77);
            assert_eq!(temporaries(root), 0);
            let err = pull(&mut sftp, root, b"u/d/gone", b"u/d/gone", &e, &dirs).unwrap_err();
            assert!(
                matches!(&err, ReconcileError::Sftp(s) if s.is_no_such_file()),
                "{err}"
            );
            assert_eq!(temporaries(root), 0);
        }

        #[test]
        fn folders_are_made_with_their_attributes() {
            let d = data_dir();
            let root = d.path();
            let mut e = dir();
            e.mode = 0o2750; // set-gid: never kept
            e.uid = 4321;
            e.gid = 99;
            e.mtime = T;
            make_dir(root, b"u/new", &e).unwrap();
            let m = fs::symlink_metadata(root.join("u/new")).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
                (4321, 99, 0o750, T)
            );
            // Again: fine, and left as it is.
            let mut other = e;
            other.uid = 1;
            make_dir(root, b"u/new", &other).unwrap();
            assert_eq!(
                fs::symlink_metadata(root.join("u/new")).unwrap().uid(),
                4321
            );
            fs::write(root.join("u/file"), b"").unwrap();
            let err = make_dir(root, b"u/file", &e).unwrap_err();
            assert!(matches!(err, ReconcileError::Exists(_)), "{err}");
            let err = make_dir(root, b"u/a/b", &e).unwrap_err();
            assert!(matches!(err, ReconcileError::MissingParent(_)), "{err}");
            let err = make_dir(root, b"nobody/d", &e).unwrap_err();
            assert!(matches!(err, ReconcileError::NoUserFolder(_)), "{err}");
            let err = make_dir(root, b"v", &e).unwrap_err();
            assert!(
                matches!(err, ReconcileError::BadPath(_)),
                "user folders are not made here: {err}"
            );
            let err = make_dir(root, b"u/f2", &file(1, T)).unwrap_err();
            assert!(matches!(err, ReconcileError::WrongKind { .. }), "{err}");
        }
    }

    #[test]
    fn files_written_since_the_baseline_that_look_alike_are_suspects() {
        let f = |size: u64, mtime: i64| Entry {
            kind: Kind::File,
            size,
            mtime,
            mtime_nsec: 0,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            ino: 0,
            ctime: 0,
        };
        let mine = tree(&[
            ("u/agreed", f(1, 10)),
            ("u/new-alike", f(2, 20)),
            ("u/new-other", f(3, 30)),
            ("u/only-here", f(4, 40)),
        ]);
        let theirs = tree(&[
            ("u/agreed", f(1, 10)),
            ("u/new-alike", f(2, 20)),
            ("u/new-other", f(3, 31)),
        ]);
        let baseline = tree(&[("u/agreed", f(1, 10)), ("u/new-alike", f(2, 5))]);
        let suspects = same_second_suspects(&mine, &theirs, &baseline);
        assert_eq!(suspects, vec![(b"u/new-alike".to_vec(), f(2, 20))]);
        // Rewritten here since the baseline with size and mtime kept: only the ctime says so.
        let mut rewritten = f(1, 10);
        rewritten.ctime = 7;
        let mut baseline_ctime = f(1, 10);
        baseline_ctime.ctime = 3;
        let here = tree(&[("u/agreed", rewritten)]);
        let there = tree(&[("u/agreed", f(1, 10))]);
        assert_eq!(
            same_second_suspects(&here, &there, &tree(&[("u/agreed", baseline_ctime)])).len(),
            1
        );
        // With no baseline (the union), everything alike is a suspect.
        assert_eq!(same_second_suspects(&mine, &theirs, &Tree::new()).len(), 2);
    }

    #[test]
    fn the_unconfirmed_files_of_a_former_master_go_through_their_list() {
        let f = |size: u64, nsec: i32| Entry {
            kind: Kind::File,
            size,
            mtime: 10,
            mtime_nsec: nsec,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            ino: 1,
            ctime: 0,
        };
        let confirmed = tree(&[
            ("u/same", f(1, 5)),
            ("u/touched", f(1, 5)),
            ("u/rewritten", f(1, 5)),
        ]);
        // Same size, mtime and everything stat compares: only the ctime moved.
        let mut rewritten = f(1, 5);
        rewritten.ctime = 99;
        let current = tree(&[
            ("u/same", f(1, 5)),
            ("u/touched", f(1, 0)),
            ("u/new\nline", f(2, 0)),
            ("u/rewritten", rewritten),
        ]);
        let files = unconfirmed_files(&current, &confirmed);
        assert_eq!(
            files,
            vec![
                b"u/new\nline".to_vec(),
                b"u/rewritten".to_vec(),
                b"u/touched".to_vec()
            ]
        );
        let back = parse_changed_list(&changed_list_text(&files));
        assert!(back.contains(b"u/new\nline".as_slice()));
        assert!(back.contains(b"u/rewritten".as_slice()) && !back.contains(b"u/same".as_slice()));
        assert_eq!(
            parse_changed_list("zz\n\n"),
            Changed::These(Default::default())
        );
        // Too long to list: all of them.
        let many: Vec<Vec<u8>> = (0..200_000).map(|i| vec![b'x'; 100 + i % 7]).collect();
        let text = changed_list_text(&many);
        assert_eq!(text, "*\n");
        assert!(parse_changed_list(&text).contains(b"anything"));
    }
}
