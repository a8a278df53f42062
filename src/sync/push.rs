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
    let local = |err| OpError::Local(path.to_vec(), err);
    let mut file = open_as_scanned(data_dir, path, e).map_err(local)?;
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
    still_as_scanned(&file, e).map_err(local)?;
    sftp.posix_rename(&temp, &remote).map_err(t)?;
    Ok(written)
}

/// Opens a file of the tree, refusing one that changed since the scan.
fn open_as_scanned(data_dir: &Path, path: &[u8], e: &Entry) -> std::io::Result<std::fs::File> {
    let (file, now) = tree::open_file(data_dir, path)?;
    if now != *e {
        return Err(std::io::Error::other("changed since the scan"));
    }
    Ok(file)
}

/// A file changed while it was read is not renamed into place on the
/// standby: its next event sends it again, whole.
fn still_as_scanned(file: &std::fs::File, e: &Entry) -> std::io::Result<()> {
    let now = nix::sys::stat::fstat(file)?;
    if now.st_size as u64 != e.size || now.st_mtime != e.mtime || now.st_mtime_nsec != e.mtime_nsec
    {
        return Err(std::io::Error::other("changed while it was read"));
    }
    Ok(())
}

pub enum OpError {
    Transport(TransportError),
    /// The local file changed or vanished: not an error, the next round sees it.
    Local(Vec<u8>, std::io::Error),
    /// Not done: the session broke on another file of the same batch.
    Aborted,
}

/// Files at most this big are read whole and sent [`put_batch`]-wise.
pub const SMALL: u64 = 256 * 1024;

/// Uploads several small files over one session with their requests
/// pipelined: all the OPENs, then every file's writes, attributes, fsync and
/// close, then the renames of those that got that far. Three round trips for
/// the lot instead of three per file, with the guarantees of [`put_file`]: a
/// file is renamed into place only after it was written, fsynced and closed.
/// Returns one result per item, in order; after a transport error the
/// remaining ones are [`OpError::Aborted`].
pub fn put_batch(
    sftp: &mut SftpClient<ssh2::Channel>,
    data_dir: &Path,
    items: &[(&[u8], &Entry)],
) -> Vec<Result<u64, OpError>> {
    let mut results: Vec<Result<u64, OpError>> = Vec::with_capacity(items.len());
    // The content now, as scanned; a file that changed waits for the next round.
    let mut contents = Vec::with_capacity(items.len());
    for (path, e) in items {
        match read_small(data_dir, path, e) {
            Ok(data) => {
                contents.push(Some(data));
                results.push(Ok(e.size));
            }
            Err(err) => {
                contents.push(None);
                results.push(Err(OpError::Local(path.to_vec(), err)));
            }
        }
    }
    if let Err(err) = send_batch(sftp, items, &contents, &mut results) {
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(OpError::Aborted);
        }
        if let Some(first) = results
            .iter_mut()
            .find(|r| matches!(r, Err(OpError::Aborted)))
        {
            *first = Err(OpError::Transport(TransportError::Sftp(err)));
        }
    }
    results
}

/// The three pipelined stages of [`put_batch`]; items whose `results` entry
/// is already an error are left out.
fn send_batch(
    sftp: &mut SftpClient<ssh2::Channel>,
    items: &[(&[u8], &Entry)],
    contents: &[Option<Vec<u8>>],
    results: &mut [Result<u64, OpError>],
) -> Result<(), sftp::SftpError> {
    let temporary = Attrs {
        mode: Some(0o600),
        ..Attrs::default()
    };
    let names: Vec<(Vec<u8>, Vec<u8>)> = items
        .iter()
        .map(|(path, _)| {
            let remote = remote_path(path);
            (temp_path(&remote), remote)
        })
        .collect();
    let todo: Vec<usize> = (0..items.len()).filter(|i| results[*i].is_ok()).collect();
    let mut opens = Vec::with_capacity(todo.len());
    for &i in &todo {
        opens.push(sftp.start_create(&names[i].0, temporary)?);
    }
    let mut handles = Vec::with_capacity(todo.len());
    for (&i, id) in todo.iter().zip(opens) {
        handles.push(sftp.handle(id, &names[i].0)?);
    }
    let mut pending = Vec::with_capacity(todo.len());
    for (&i, handle) in todo.iter().zip(&handles) {
        let mut writes = Vec::new();
        for (n, chunk) in contents[i]
            .as_deref()
            .unwrap_or_default()
            .chunks(sftp::CHUNK)
            .enumerate()
        {
            writes.push(sftp.start_write(handle, (n * sftp::CHUNK) as u64, chunk)?);
        }
        let finish = sftp.start_finish(handle, attrs(items[i].1, true))?;
        pending.push((writes, finish));
    }
    let mut renames = Vec::with_capacity(todo.len());
    for (&i, (writes, finish)) in todo.iter().zip(pending) {
        for id in writes {
            sftp.expect_ok(id, || "write".into())?;
        }
        sftp.expect_finished(finish)?;
        renames.push(sftp.start_posix_rename(&names[i].0, &names[i].1)?);
    }
    for (&i, id) in todo.iter().zip(renames) {
        sftp.expect_ok(id, || format!("rename into {}", sftp::show(&names[i].1)))?;
    }
    Ok(())
}

/// Reads a small file whole, refusing one that changed since the scan.
fn read_small(data_dir: &Path, path: &[u8], e: &Entry) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_as_scanned(data_dir, path, e)?;
    let mut data = Vec::with_capacity(usize::try_from(e.size).unwrap_or(0));
    (&file).take(e.size + 1).read_to_end(&mut data)?;
    if data.len() as u64 != e.size {
        return Err(std::io::Error::other("changed while it was read"));
    }
    still_as_scanned(&file, e)?;
    Ok(data)
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
