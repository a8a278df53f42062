//! With `[sync] storage = "shared"` the data dir must be the shared file
//! system's mount point: if the mount is missing (not mounted yet at boot,
//! or lost), the folder below it is the host's own disk, and a master would
//! take uploads there that the other host never sees.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A folder's device and inode, from its `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
}

impl DirId {
    fn of(meta: &std::fs::Metadata) -> DirId {
        DirId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Whether `dir` is a mount point, from its stat and its parent's (`..`):
/// another device is one; the same folder as its parent is `/`, never the
/// shared storage; the same device is one only if the kernel lists the path
/// as a mount point (`listed`: a bind mount of a folder of the same file
/// system). `Err` says why not.
pub fn judge(dir: DirId, parent: DirId, listed: bool) -> Result<(), String> {
    if dir == parent {
        Err("it is /".into())
    } else if dir.dev != parent.dev || listed {
        Ok(())
    } else {
        Err(
            "it is on the same file system as its parent folder, so nothing is mounted there"
                .into(),
        )
    }
}

/// True if a `/proc/self/mountinfo` text lists `path` as a mount point
/// (the fifth field; a space, tab, newline or backslash is written as an
/// octal escape such as `\040`).
pub fn listed_in(mountinfo: &str, path: &Path) -> bool {
    let want = path.as_os_str().as_encoded_bytes();
    mountinfo.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|field| unescape(field) == want)
    })
}

fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Checks that the shared data dir `dir` exists and is a mount point; `Err`
/// says why not (never creates anything).
pub fn check(dir: &Path) -> Result<(), String> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return Err("it is not a folder".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(
                "it does not exist (it is not created with shared storage: it is the mount point)"
                    .into(),
            );
        }
        Err(e) => return Err(format!("cannot look at it: {e}")),
    };
    let parent = std::fs::metadata(dir.join(".."))
        .map_err(|e| format!("cannot look at its parent folder: {e}"))?;
    // The kernel lists the path with every symlink resolved.
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let listed =
        std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| listed_in(&text, &real));
    judge(DirId::of(&meta), DirId::of(&parent), listed)
}

/// The error for a shared data dir that is not mounted: what, why, and the fix.
pub fn not_mounted_message(config: &Path, dir: &Path, why: &str) -> String {
    let d = dir.display();
    format!(
        "{}: [sync] storage = \"shared\", but data_dir {d} is not a mount point: {why}. Without the shared storage mounted this host would serve (and, as master, take uploads into) its local disk, which the other host never sees; fix: mount the shared storage at {d} (check its line in /etc/fstab, then `mount {d}`), and have sftp-ha wait for it at boot: `systemctl edit sftp-ha`, then under [Unit] add RequiresMountsFor={d}",
        config.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(dev: u64, ino: u64) -> DirId {
        DirId { dev, ino }
    }

    #[test]
    fn a_mount_point_is_on_another_device_or_listed() {
        // NFS on /srv/sftp-ha: another device than /srv.
        assert_eq!(judge(id(50, 1), id(2, 900), false), Ok(()));
        // A plain folder on the root file system: not mounted.
        let e = judge(id(2, 901), id(2, 900), false).unwrap_err();
        assert!(e.contains("same file system"), "{e}");
        // A bind mount from the same file system: the kernel lists it.
        assert_eq!(judge(id(2, 901), id(2, 900), true), Ok(()));
        // `/` is its own parent: never the shared storage, listed or not.
        assert!(
            judge(id(2, 2), id(2, 2), true)
                .unwrap_err()
                .contains("it is /")
        );
    }

    #[test]
    fn mountinfo_is_read_with_its_escapes() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /srv/sftp-ha rw,nosuid,nodev shared:40 - nfs4 filer:/export rw
91 22 0:51 / /srv/my\\040data rw - nfs4 filer:/x rw
";
        assert!(listed_in(text, Path::new("/srv/sftp-ha")));
        assert!(listed_in(text, Path::new("/srv/my data")));
        assert!(!listed_in(text, Path::new("/srv")));
        assert!(!listed_in(text, Path::new("/srv/sftp-ha/u")));
    }

    #[test]
    fn a_missing_or_unmounted_folder_is_refused_and_nothing_is_created() {
        let dir = std::env::temp_dir().join(format!("sftp-ha-mount-{}", std::process::id()));
        let e = check(&dir).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!dir.exists());
        std::fs::create_dir_all(&dir).unwrap();
        // A folder of the temp dir's file system (unless something is mounted there).
        let listed =
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| listed_in(&t, &dir));
        assert!(!listed);
        assert!(check(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(check(Path::new("/")).unwrap_err().contains("it is /"));
        let m = not_mounted_message(Path::new("/etc/sftp-ha/config.toml"), &dir, "why");
        assert!(
            m.contains("/etc/sftp-ha/config.toml")
                && m.contains("data_dir")
                && m.contains("RequiresMountsFor=")
                && m.contains("/etc/fstab"),
            "{m}"
        );
    }
}
