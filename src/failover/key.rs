//! The key the three hosts share (`/etc/sftp-ha/failover.key`, root, 0600),
//! as corosync's authkey: every failover message carries an HMAC-SHA256 made
//! with it, and a message without a valid one is dropped.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where `sftp-ha failover keygen` writes the key, and where the config looks by default.
pub const DEFAULT_KEY_FILE: &str = "/etc/sftp-ha/failover.key";
/// 256 bits, written as 64 hex digits.
const KEY_BYTES: usize = 32;

/// The shared key. Its bytes never appear in Debug output or a log.
#[derive(Clone, PartialEq, Eq)]
pub struct FailoverKey([u8; KEY_BYTES]);

impl fmt::Debug for FailoverKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FailoverKey(..)")
    }
}

impl FailoverKey {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A key from its file's text: 64 hex digits, surrounding white space allowed.
    pub fn parse(text: &str) -> Result<FailoverKey, String> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "it does not hold a key ({} hex digits are expected, as `sftp-ha failover keygen` writes)",
                KEY_BYTES * 2
            ));
        }
        let mut key = [0u8; KEY_BYTES];
        for (i, byte) in key.iter_mut().enumerate() {
            let pair = text.get(i * 2..i * 2 + 2).unwrap_or("00");
            *byte = u8::from_str_radix(pair, 16).map_err(|e| e.to_string())?;
        }
        Ok(FailoverKey(key))
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read the failover key {path}: {source}; fix: create it on one host with `sftp-ha failover keygen` and copy it to the other two (root, mode 0600)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the failover key {path} {problem}; fix: {fix}")]
    Unsafe {
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
    #[error(
        "the failover key {path}: {message}; fix: run `sftp-ha failover keygen --force` on one host and copy the file to the other two"
    )]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{path} already exists; nothing changed (use --force to replace it, then copy it to the other two hosts)"
    )]
    Exists { path: PathBuf },
    #[error("cannot write the failover key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads the key: a regular file (not a link), owned by root, that no one
/// else may read.
pub fn load(path: &Path) -> Result<FailoverKey, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(nix::libc::ELOOP) => KeyError::Unsafe {
                path: path.to_path_buf(),
                problem: "is a symbolic link, which is not followed".into(),
                fix: "put the key file itself there",
            },
            _ => read_err(source),
        })?;
    let meta = file.metadata().map_err(read_err)?;
    let unsafe_key = |problem: String, fix| KeyError::Unsafe {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    if !meta.is_file() {
        return Err(unsafe_key(
            "is not a regular file".into(),
            "put the key file itself there, not a link or a folder",
        ));
    }
    if meta.uid() != 0 && nix::unistd::geteuid().is_root() {
        return Err(unsafe_key(
            format!("is owned by uid {}, not root", meta.uid()),
            "chown root:root the file",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_key(
            format!("may be read by others (mode {:o})", meta.mode() & 0o777),
            "chmod 600 the file",
        ));
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    FailoverKey::parse(&text).map_err(|message| KeyError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// Writes a new random key (root, 0600); an existing key is replaced only with `force`.
pub fn generate(path: &Path, force: bool) -> Result<(), KeyError> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(KeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(write_err)?;
    let key = FailoverKey(bytes);
    let owner = nix::unistd::geteuid().is_root().then_some((0, 0));
    crate::fsutil::write_atomic(path, format!("{}\n", key.hex()).as_bytes(), 0o600, owner)
        .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_loads_and_is_not_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.key");
        generate(&path, false).unwrap();
        let first = load(&path).unwrap();
        assert!(matches!(
            generate(&path, false),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(load(&path).unwrap(), first);
        generate(&path, true).unwrap();
        assert_ne!(load(&path).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(format!("{first:?}"), "FailoverKey(..)");
    }

    #[test]
    fn a_key_others_may_read_a_link_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.key");
        generate(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("read by others") && err.contains("chmod 600"),
            "{err}"
        );

        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = load(&link).unwrap_err().to_string();
        assert!(
            err.contains("symbolic link, which is not followed"),
            "{err}"
        );

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key\n").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("64 hex digits") && err.contains("keygen"),
            "{err}"
        );

        let missing = load(&dir.path().join("none.key")).unwrap_err().to_string();
        assert!(missing.contains("sftp-ha failover keygen"), "{missing}");
    }
}
