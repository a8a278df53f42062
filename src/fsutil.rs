//! File writing that readers can rely on: a temporary file in the same folder,
//! fsync, then rename over the target, so a reader sees the old or the new
//! content, never half of it; then an fsync of the folder, so a power cut
//! after the write returned cannot bring the old content back (a vote, an
//! epoch, a peer's accepted key).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::fchown;
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the folder `rel` below `root`, every component (and `root`'s last)
/// with O_NOFOLLOW: a folder a user swapped for a symlink is an error (ELOOP or
/// ENOTDIR), never a way out. `root` is the admin's (the data dir).
pub fn open_dir_below(root: &Path, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut dir = nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(io::Error::from)?;
    for part in rel.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
        if part == b"." || part == b".." {
            return Err(io::Error::other("`.` or `..` in a path below the data dir"));
        }
        dir = openat(
            dir.as_fd(),
            OsStr::from_bytes(part),
            dir_flags(),
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
    }
    Ok(dir)
}

/// Opens the folder `dir`, which lies below `root`, with [`open_dir_below`].
pub fn open_dir_beneath(root: &Path, dir: &Path) -> io::Result<OwnedFd> {
    let rel = dir.strip_prefix(root).map_err(|_| {
        io::Error::other(format!("{} is not below {}", dir.display(), root.display()))
    })?;
    open_dir_below(root, rel.as_os_str().as_bytes())
}

/// [`write_atomic`] into an open folder, returning what was written (as the
/// rename leaves it: same inode, size and mtime): the temporary is made with O_EXCL and
/// O_NOFOLLOW, owner and mode are set on the open file, and it is renamed
/// over `name` within that same folder, whatever its path now leads to.
pub fn write_atomic_at(
    dir: &OwnedFd,
    name: impl AsRef<OsStr>,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<fs::Metadata> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    let name = name.as_ref();
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".sftp-ha-tmp");
    let tmp = tmp.as_os_str();
    let result = (|| {
        // A planted entry at the temporary name is removed (never followed).
        let _ = unlinkat(dir.as_fd(), tmp, UnlinkatFlags::NoRemoveDir);
        let fd = openat(
            dir.as_fd(),
            tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o777),
        )
        .map_err(io::Error::from)?;
        let mut file = fs::File::from(fd);
        file.write_all(data)?;
        if let Some((uid, gid)) = owner {
            fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.sync_all()?;
        let written = file.metadata()?;
        nix::fcntl::renameat(dir.as_fd(), tmp, dir.as_fd(), name).map_err(io::Error::from)?;
        // The rename is durable only with its folder.
        nix::unistd::fsync(dir.as_fd()).map_err(io::Error::from)?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = unlinkat(dir.as_fd(), tmp, UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Writes `data` to `path` atomically with `mode` and, if given, owner `(uid, gid)`:
/// [`write_atomic_at`] in `path`'s folder (a trusted path: the admin's or ours).
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    write_atomic_at(&dir, name, data, mode, owner).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600, None).unwrap();
        write_atomic(&p, b"two", 0o640, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn writes_below_a_root_never_follow_a_swapped_folder() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("u/admin")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("u/swapped")).unwrap();
        let dir = open_dir_below(root.path(), b"u/admin").unwrap();
        write_atomic_at(&dir, "users.yaml", b"x", 0o640, None).unwrap();
        assert_eq!(
            fs::read(root.path().join("u/admin/users.yaml")).unwrap(),
            b"x"
        );
        assert!(open_dir_below(root.path(), b"u/swapped").is_err());
        assert!(open_dir_below(root.path(), b"u/../u/admin").is_err());
        assert!(open_dir_beneath(root.path(), &root.path().join("u/swapped")).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        // A link planted at the final name is replaced, not written through.
        let target = outside.path().join("target");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("u/admin/status")).unwrap();
        write_atomic_at(&dir, "status", b"new", 0o640, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(
            fs::symlink_metadata(root.path().join("u/admin/status"))
                .unwrap()
                .is_file()
        );
    }
}
