//! The replicated tree: walking the data dir without ever following a symlink,
//! the persisted index of what the standby has confirmed, and the plan that
//! turns the difference into operations (pure, unit-tested).
//!
//! Paths are bytes relative to the data dir, `/`-separated: names with spaces,
//! UTF-8 or even newlines are carried exactly.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Prefix of the temporary names files are written under on the standby;
/// excluded from scans on both sides.
pub const TEMP_PREFIX: &[u8] = b".sftp-ha-tmp.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What is replicated of one file or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Permission bits (including setgid and sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

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
            mtime_nsec: st.st_mtime_nsec,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    /// Same content as far as stat can tell (size and mtime).
    fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.mtime == other.mtime
            && self.mtime_nsec == other.mtime_nsec
    }
}

pub type Tree = BTreeMap<Vec<u8>, Entry>;

/// What a scan could not replicate (symlinks, devices, FIFOs, sockets), for the log.
pub type Skipped = Vec<(Vec<u8>, &'static str)>;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Walks `root`. Each folder is opened relative to its parent with O_NOFOLLOW,
/// so a user who swaps a folder for a symlink cannot lead the walk outside.
pub fn scan(root: &Path) -> io::Result<(Tree, Skipped)> {
    let mut tree = Tree::new();
    let mut skipped = Skipped::new();
    let top = nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(io::Error::from)?;
    walk(top, Vec::new(), &mut tree, &mut skipped)?;
    Ok((tree, skipped))
}

fn walk(
    dir_fd: OwnedFd,
    prefix: Vec<u8>,
    tree: &mut Tree,
    skipped: &mut Skipped,
) -> io::Result<()> {
    let mut children = Vec::new();
    {
        let dup = dir_fd.try_clone()?;
        let mut dir = Dir::from_fd(dup).map_err(io::Error::from)?;
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name().to_bytes().to_vec();
            if name == b"." || name == b".." || name.starts_with(TEMP_PREFIX) {
                continue;
            }
            children.push(name);
        }
    }
    for name in children {
        let mut path = prefix.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        let cname = std::ffi::OsStr::from_bytes(&name);
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
                tree.insert(path, Entry::from_stat(&st, Kind::File));
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
                tree.insert(path.clone(), Entry::from_stat(&st, Kind::Dir));
                walk(child, path, tree, skipped)?;
            }
            SFlag::S_IFLNK => skipped.push((path, "symlink")),
            SFlag::S_IFSOCK => skipped.push((path, "socket")),
            SFlag::S_IFIFO => skipped.push((path, "FIFO")),
            _ => skipped.push((path, "device file")),
        }
    }
    Ok(())
}

/// Opens a file of the tree for reading, every component with O_NOFOLLOW, and
/// returns it with its current stat. Anything but a regular file is refused.
pub fn open_file(root: &Path, rel: &[u8]) -> io::Result<(File, Entry)> {
    let mut dir = nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(io::Error::from)?;
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| io::Error::other("empty path"))?;
    for part in parents {
        dir = openat(
            dir.as_fd(),
            std::ffi::OsStr::from_bytes(part),
            dir_flags(),
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
    }
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
}

/// The operations that make `confirmed` (what the standby has) equal `current`.
/// Deletes come first, children before parents; then creations, parents first.
/// With `allow_deletes` false no delete is planned.
pub fn plan(current: &Tree, confirmed: &Tree, allow_deletes: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    if allow_deletes {
        for (path, old) in confirmed.iter().rev() {
            match current.get(path) {
                Some(new) if new.kind == old.kind => {}
                _ => ops.push(Op::Delete(path.clone(), old.kind)),
            }
        }
    }
    for (path, new) in current {
        let old = confirmed
            .get(path)
            .filter(|o| o.kind == new.kind || !allow_deletes);
        match (new.kind, old) {
            (_, Some(old)) if old == new => {}
            (Kind::Dir, None) => ops.push(Op::Mkdir(path.clone(), *new)),
            (Kind::Dir, Some(_)) => ops.push(Op::SetAttrs(path.clone(), *new)),
            (Kind::File, Some(old)) if old.same_content(new) => {
                ops.push(Op::SetAttrs(path.clone(), *new))
            }
            (Kind::File, _) => ops.push(Op::Put(path.clone(), *new)),
        }
    }
    ops
}

/// True if deleting what the standby has would follow a vanished data dir
/// rather than users' deletes: the master's tree is empty but the standby's is not.
pub fn looks_like_mass_delete(current: &Tree, confirmed: &Tree) -> bool {
    current.is_empty() && confirmed.values().any(|e| e.kind == Kind::File)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Saves the index: one line per entry, the path hex-encoded (names are bytes).
pub fn save_index(path: &Path, tree: &Tree) -> io::Result<()> {
    let mut out = Vec::with_capacity(tree.len() * 64);
    writeln!(out, "sftp-ha-index 1")?;
    for (p, e) in tree {
        let kind = if e.kind == Kind::Dir { 'd' } else { 'f' };
        writeln!(
            out,
            "{} {kind} {} {} {} {:o} {} {}",
            hex(p),
            e.size,
            e.mtime,
            e.mtime_nsec,
            e.mode,
            e.uid,
            e.gid
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
    if lines.next() != Some("sftp-ha-index 1") {
        return Tree::new();
    }
    let parse = |line: &str| -> Option<(Vec<u8>, Entry)> {
        let f: Vec<&str> = line.split(' ').collect();
        Some((
            unhex(f.first()?)?,
            Entry {
                kind: if *f.get(1)? == "d" {
                    Kind::Dir
                } else {
                    Kind::File
                },
                size: f.get(2)?.parse().ok()?,
                mtime: f.get(3)?.parse().ok()?,
                mtime_nsec: f.get(4)?.parse().ok()?,
                mode: u32::from_str_radix(f.get(5)?, 8).ok()?,
                uid: f.get(6)?.parse().ok()?,
                gid: f.get(7)?.parse().ok()?,
            },
        ))
    };
    lines.filter_map(parse).collect()
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
            mtime_nsec: 0,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
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

    #[test]
    fn scan_skips_symlinks_specials_and_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("u/upload")).unwrap();
        std::fs::write(root.join("u/upload/a file\n"), b"x").unwrap();
        std::fs::write(root.join("u/upload/.sftp-ha-tmp.x"), b"partial").unwrap();
        symlink("/etc/shadow", root.join("u/upload/evil")).unwrap();
        symlink("/etc", root.join("u/etc-dir")).unwrap();
        let (tree, skipped) = scan(root).unwrap();
        let names: Vec<String> = tree
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(names, vec!["u", "u/upload", "u/upload/a file\n"]);
        assert_eq!(skipped.len(), 2);
        assert!(open_file(root, b"u/upload/evil").is_err());
        assert!(open_file(root, b"u/etc-dir/passwd").is_err());
        let (_, e) = open_file(root, b"u/upload/a file\n").unwrap();
        assert_eq!(e.size, 1);
    }
}
