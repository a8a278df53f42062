//! Operations on the standby: each [`Op`] of a plan as SFTP requests, paths
//! in the standby's chroot, and the upload that no reader there can catch
//! half-done.

use std::path::Path;

use super::sftp::{self, Attrs, SftpClient};
use super::transport::TransportError;
use super::tree::{self, Entry, Kind, Op, TEMP_PREFIX};

/// Runs one operation on the standby; returns the file bytes sent.
pub fn execute(
    sftp: &mut SftpClient<ssh2::Channel>,
    data_dir: &Path,
    op: &Op,
) -> Result<u64, OpError> {
    let t = |e: sftp::SftpError| OpError::Transport(TransportError::Sftp(e));
    match op {
        Op::Delete(path, kind) => {
            let remote = remote_path(path);
            let result = match kind {
                Kind::File => sftp.remove(&remote),
                Kind::Dir => sftp.rmdir(&remote),
            };
            match result {
                Err(e) if e.is_no_such_file() => Ok(0),
                other => other.map(|()| 0).map_err(t),
            }
        }
        Op::Mkdir(path, e) => {
            let remote = remote_path(path);
            if sftp.lstat(&remote).map_err(t)?.is_none() {
                sftp.mkdir(&remote, Attrs::default()).map_err(t)?;
            }
            sftp.setstat(&remote, attrs(e, false)).map_err(t)?;
            Ok(0)
        }
        Op::Rename { from, to } => {
            sftp.posix_rename(&remote_path(from), &remote_path(to))
                .map_err(t)?;
            Ok(0)
        }
        Op::SetAttrs(path, e) => {
            sftp.setstat(&remote_path(path), attrs(e, e.kind == Kind::File))
                .map_err(t)?;
            Ok(0)
        }
        Op::Put(path, e) => put_file(sftp, data_dir, path, e),
    }
}

/// Uploads one file: to a temporary name beside the target, fsynced, with
/// owner, mode and mtime, then renamed over the target. A reader on the
/// standby sees the old file or the new one, never a part.
pub fn put_file(
    sftp: &mut SftpClient<ssh2::Channel>,
    data_dir: &Path,
    path: &[u8],
    e: &Entry,
) -> Result<u64, OpError> {
    let t = |e: sftp::SftpError| OpError::Transport(TransportError::Sftp(e));
    let (mut file, now) =
        tree::open_file(data_dir, path).map_err(|err| OpError::Local(path.to_vec(), err))?;
    if now != *e {
        return Err(OpError::Local(
            path.to_vec(),
            std::io::Error::other("changed since the scan"),
        ));
    }
    let remote = remote_path(path);
    let temp = temp_path(&remote);
    let handle = sftp
        .create(
            &temp,
            Attrs {
                mode: Some(0o600),
                ..Attrs::default()
            },
        )
        .map_err(t)?;
    let written = sftp.write_from(&handle, &mut file).map_err(t)?;
    sftp.finish(&handle, attrs(e, true)).map_err(t)?;
    sftp.posix_rename(&temp, &remote).map_err(t)?;
    Ok(written)
}

pub enum OpError {
    Transport(TransportError),
    /// The local file changed or vanished: not an error, the next round sees it.
    Local(Vec<u8>, std::io::Error),
}

/// The standby's sync account is chrooted to its data dir: `/` is the data dir.
pub fn remote_path(rel: &[u8]) -> Vec<u8> {
    let mut p = b"/".to_vec();
    p.extend_from_slice(rel);
    p
}

/// `/dir/.sftp-ha-tmp.name` for `/dir/name`: same folder, so the rename is atomic.
fn temp_path(remote: &[u8]) -> Vec<u8> {
    let split = remote.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
    let mut p = remote[..split].to_vec();
    p.extend_from_slice(TEMP_PREFIX);
    p.extend_from_slice(&remote[split..]);
    p
}

fn attrs(e: &Entry, with_times: bool) -> Attrs {
    Attrs {
        size: None,
        owner: Some((e.uid, e.gid)),
        mode: Some(e.mode),
        times: with_times.then(|| {
            let t = u32::try_from(e.mtime).unwrap_or(0);
            (t, t)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_sit_beside_the_target() {
        assert_eq!(
            temp_path(b"/u/upload/a b"),
            b"/u/upload/.sftp-ha-tmp.a b".to_vec()
        );
        assert_eq!(remote_path(b"u/x"), b"/u/x".to_vec());
    }
}
