//! Operations on the standby: each [`Op`] of a plan as SFTP requests, paths
//! in the standby's chroot, and the upload that no reader there can catch
//! half-done.
//!
//! The sync account has uid 0 on the standby, so nothing here may act through
//! a link: files are written under a fresh name in [`TEMP_DIR`] (outside every
//! user's chroot) with O_EXCL, get their attributes on the open handle, and
//! folders theirs with `lsetstat`, which never follows a link. Users cannot
//! make links on either host (sshd's `-P symlink,hardlink`), a standby is
//! read-only for them, and the audit removes any link or special file the
//! master does not have: three walls, any one of which holds on its own.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::sftp::{self, Attrs, SftpClient, SftpError};
use super::transport::{Session, TransportError};
use super::tree::{self, Entry, Kind, Op, TEMP_DIR, TEMP_SLOTS, temp_folder};

/// Runs one operation on the standby; returns the file bytes sent. `stop`:
/// see [`put_file`].
pub fn execute(
    sftp: &mut SftpClient<impl Read + Write>,
    data_dir: &Path,
    op: &Op,
    stop: &AtomicBool,
) -> Result<u64, OpError> {
    let path = op.path();
    let t = |e: SftpError| OpError::from_sftp(path, e);
    match op {
        Op::Delete(path, kind) => {
            let remote = remote_path(path);
            let result = match kind {
                Kind::File => sftp.remove(&remote),
                Kind::Dir => match sftp.rmdir(&remote) {
                    // Not empty: what only the standby has in it may block it.
                    Err(e) if e.is_failure() => {
                        clear_leftovers(sftp, &remote).map_err(t)?;
                        sftp.rmdir(&remote)
                    }
                    other => other,
                },
            };
            match result {
                Err(e) if e.is_no_such_file() => Ok(0),
                other => other.map(|()| 0).map_err(t),
            }
        }
        Op::Mkdir(path, e) => {
            let remote = remote_path(path);
            match sftp.lstat(&remote).map_err(t)? {
                Some(a) if is_dir(&a) => set_attrs(sftp, &remote, a, attrs(e, false)).map_err(t)?,
                found => {
                    if found.is_some() {
                        // A link or file where the master has a folder: not what the master meant.
                        sftp.remove(&remote).map_err(t)?;
                    }
                    // mkdir never follows a link; the mode is exact (umask 0 for the sync account).
                    sftp.mkdir(&remote, dir_attrs(e)).map_err(t)?;
                    sftp.lsetstat(&remote, owner_only(e)).map_err(t)?;
                }
            }
            Ok(0)
        }
        Op::Rename { from, to } => {
            sftp.posix_rename(&remote_path(from), &remote_path(to))
                .map_err(t)?;
            Ok(0)
        }
        Op::SetAttrs(path, e) => {
            let remote = remote_path(path);
            let found = sftp.lstat(&remote).map_err(t)?;
            let right_kind = found.is_some_and(|a| match e.kind {
                Kind::File => is_file(&a),
                Kind::Dir => is_dir(&a),
            });
            match found {
                Some(a) if right_kind => {
                    set_attrs(sftp, &remote, a, attrs(e, e.kind == Kind::File)).map_err(t)?
                }
                _ => {
                    // Gone, or a link or something else now: the next full round
                    // (the audit) sees it as it is and repairs it.
                    return Err(OpError::Refused(
                        path.to_vec(),
                        SftpError::Status {
                            what: format!("set attributes of {}", sftp::show(&remote)),
                            code: 2,
                            message: "not there as the master has it".into(),
                        },
                    ));
                }
            }
            Ok(0)
        }
        Op::Put(path, e) => put_file(sftp, data_dir, path, e, stop),
    }
}

/// Sets `want` on `remote`, which an lstat just found as `found` (a file or a
/// folder, not a link): owner and times with lsetstat, which never follows a
/// link; a mode that differs on the open file or folder.
fn set_attrs(
    sftp: &mut SftpClient<impl Read + Write>,
    remote: &[u8],
    found: Attrs,
    want: Attrs,
) -> Result<(), SftpError> {
    sftp.lsetstat(remote, Attrs { mode: None, ..want })?;
    if let Some(mode) = want.mode
        && found.mode.map(|m| m & 0o7777) != Some(mode)
    {
        let handle = sftp.open_read(remote)?;
        let set = sftp.fsetstat(
            &handle,
            Attrs {
                mode: Some(mode),
                ..Attrs::default()
            },
        );
        sftp.close(&handle)?;
        set?;
    }
    Ok(())
}

fn owner_only(e: &Entry) -> Attrs {
    Attrs {
        owner: Some((e.uid, e.gid)),
        ..Attrs::default()
    }
}

/// Empties a folder the master removed of what the standby alone holds and
/// no user wrote: links, special files, the host's own users.yaml.status,
/// and folders left empty by that. Users' regular files are kept: the rmdir
/// then fails, is reported, and nothing is lost.
fn clear_leftovers(sftp: &mut SftpClient<impl Read + Write>, dir: &[u8]) -> Result<(), SftpError> {
    for (name, a) in sftp.read_dir(dir)? {
        let mut path = dir.to_vec();
        path.push(b'/');
        path.extend_from_slice(&name);
        let result = if is_dir(&a) {
            clear_leftovers(sftp, &path).and_then(|()| sftp.rmdir(&path))
        } else if !is_file(&a)
            || (name == crate::accounts::STATUS_FILE.as_bytes() && is_admin_folder(dir))
        {
            sftp.remove(&path)
        } else {
            Ok(())
        };
        match result {
            Err(e) if e.is_refusal() => {} // reported by the rmdir that follows
            other => other?,
        }
    }
    Ok(())
}

/// `/<user>/admin`: where the host writes its own users.yaml.status.
fn is_admin_folder(remote: &[u8]) -> bool {
    let parts: Vec<&[u8]> = remote.split(|b| *b == b'/').collect();
    matches!(parts.as_slice(), [b"", _, admin] if *admin == b"admin")
}

fn is_dir(a: &Attrs) -> bool {
    a.mode.is_some_and(|m| m & 0o170000 == 0o040000)
}

fn is_file(a: &Attrs) -> bool {
    a.mode.is_some_and(|m| m & 0o170000 == 0o100000)
}

/// Uploads one file: to a temporary name beside the target, fsynced, with
/// owner, mode and mtime, then renamed over the target. A reader on the
/// standby sees the old file or the new one, never a part.
///
/// Once `stop` is set (the worker was told to stop: a reload, a step-down,
/// a handover) nothing more is sent and the file is not renamed into place
/// ([`OpError::Aborted`]): a new worker for the same standby may start as
/// soon as this one is gone, so a big file must not keep it waiting, and
/// after a step-down the standby may be the new master. The temporary left
/// there is removed by the next audit.
pub fn put_file(
    sftp: &mut SftpClient<impl Read + Write>,
    data_dir: &Path,
    path: &[u8],
    e: &Entry,
    stop: &AtomicBool,
) -> Result<u64, OpError> {
    let t = |e: SftpError| OpError::from_sftp(path, e);
    let local = |err| OpError::Local(path.to_vec(), err);
    if stop.load(Ordering::Relaxed) {
        return Err(OpError::Aborted);
    }
    let file = open_as_scanned(data_dir, path, e).map_err(local)?;
    let temp = temp_path(sftp.temp_slot());
    let handle = sftp.create(&temp, TEMPORARY).map_err(t)?;
    let mut source = UntilStopped { file, stop };
    let sent = sftp.write_from(&handle, &mut source);
    let file = source.file;
    let sent = match sent {
        // Answers may still be due on the session: the worker ends anyway.
        Err(_) if stop.load(Ordering::Relaxed) => return Err(OpError::Aborted),
        other => other.map_err(Sent::Sftp),
    };
    put_in_place(sftp, path, e, &file, &temp, &handle, sent, stop)
}

/// How the data of an upload went.
enum Sent {
    Sftp(SftpError),
    /// The local file was shorter than scanned: changed while it was read.
    Local(std::io::Error),
}

/// The end of an upload whose data went out as `sent` says: attributes,
/// fsync and close on `handle`, then the temporary renamed over the target,
/// unless the local file changed meanwhile or `stop` was set. A refused
/// upload's temporary is removed at once; one left by a broken session, by
/// the next audit.
#[allow(clippy::too_many_arguments)]
fn put_in_place(
    sftp: &mut SftpClient<impl Read + Write>,
    path: &[u8],
    e: &Entry,
    file: &std::fs::File,
    temp: &[u8],
    handle: &[u8],
    sent: Result<u64, Sent>,
    stop: &AtomicBool,
) -> Result<u64, OpError> {
    let t = |e: SftpError| OpError::from_sftp(path, e);
    let local = |err| OpError::Local(path.to_vec(), err);
    let finished = match sent {
        Ok(written) => sftp
            .finish(handle, attrs(e, true))
            .map(|()| written)
            .map_err(Sent::Sftp),
        Err(err) => Err(err),
    };
    let written = match finished {
        Err(_) if stop.load(Ordering::Relaxed) => return Err(OpError::Aborted),
        Ok(written) => written,
        Err(Sent::Local(err)) => {
            let _ = sftp.close(handle);
            let _ = sftp.remove(temp);
            return Err(local(err));
        }
        Err(Sent::Sftp(err)) => {
            if err.is_refusal() {
                let _ = sftp.close(handle);
                let _ = sftp.remove(temp);
            }
            return Err(t(err));
        }
    };
    if let Err(err) = still_as_scanned(file, e) {
        let _ = sftp.remove(temp);
        return Err(local(err));
    }
    if stop.load(Ordering::Relaxed) {
        return Err(OpError::Aborted);
    }
    if let Err(err) = sftp.posix_rename(temp, &remote_path(path)) {
        let _ = sftp.remove(temp);
        return Err(t(err));
    }
    Ok(written)
}

/// Files at least this big go over every session at once
/// ([`put_striped`]): libssh2 encrypts on the thread that sends, so one
/// session carries only what one core can encrypt (chacha20-poly1305 in
/// portable C: about 2.3 s of CPU per GiB on the test bed).
pub const STRIPED_MIN: u64 = 32 * 1024 * 1024;
/// The part of a big file a session takes at a time.
pub const STRIPE: u64 = 4 * 1024 * 1024;

/// Uploads one big file as [`put_file`] does (one temporary, renamed into
/// place once complete and fsynced), with its data written by `main` and
/// every session of `helpers` at once, each taking the next [`STRIPE`] of
/// the file until none is left, each on its own handle on the temporary.
/// Stripes a helper could not confirm are written again by `main`, so the
/// file is renamed into place only when every byte was confirmed. Returns
/// the outcome and the helpers that broke (to be dropped).
pub fn put_striped<S: Session>(
    main: &mut S,
    helpers: &mut [S],
    data_dir: &Path,
    path: &[u8],
    e: &Entry,
    stop: &AtomicBool,
) -> (Result<u64, OpError>, Vec<usize>) {
    let t = |e: SftpError| OpError::from_sftp(path, e);
    let local = |err| OpError::Local(path.to_vec(), err);
    if stop.load(Ordering::Relaxed) {
        return (Err(OpError::Aborted), Vec::new());
    }
    let file = match open_as_scanned(data_dir, path, e) {
        Ok(f) => f,
        Err(err) => return (Err(local(err)), Vec::new()),
    };
    let sftp = main.sftp();
    let temp = temp_path(sftp.temp_slot());
    let handle = match sftp.create(&temp, TEMPORARY) {
        Ok(h) => h,
        Err(err) => return (Err(t(err)), Vec::new()),
    };
    let next = AtomicU64::new(0);
    let abandoned = AtomicBool::new(false);
    let stripes = Stripes {
        file: &file,
        size: e.size,
        next: &next,
        stop,
        abandoned: &abandoned,
    };
    let mut broken = Vec::new();
    let mut redo = Vec::new();
    // A helper thread that ended abnormally: which of its stripes were
    // confirmed is unknown, so the upload fails (and is tried again).
    let mut lost_stripes = false;
    let sent = std::thread::scope(|scope| {
        let others: Vec<_> = helpers
            .iter_mut()
            .map(|helper| {
                let (temp, stripes) = (&temp, &stripes);
                scope.spawn(move || {
                    let sftp = helper.sftp();
                    let handle = sftp
                        .open_write(temp)
                        .map_err(|err| (Sent::Sftp(err), Vec::new()))?;
                    let taken = stripes.send(sftp, &handle)?;
                    // Some file systems report a failed write only at close:
                    // then none of this session's stripes counts as written.
                    sftp.close(&handle).map_err(|err| (Sent::Sftp(err), taken))
                })
            })
            .collect();
        let sent = stripes.send(main.sftp(), &handle);
        if sent.is_err() {
            // The upload is lost anyway: the helpers stop at their next piece.
            abandoned.store(true, Ordering::Relaxed);
        }
        for (n, other) in others.into_iter().enumerate() {
            match other.join() {
                Ok(Ok(())) => {}
                Ok(Err((err, claimed))) => {
                    if let Sent::Sftp(err) = &err {
                        if !err.is_refusal() {
                            tracing::debug!("extra session lost: {err}");
                            broken.push(n);
                        }
                    }
                    redo.extend(claimed);
                }
                Err(_) => {
                    broken.push(n);
                    lost_stripes = true;
                }
            }
        }
        sent
    });
    let sftp = main.sftp();
    // What a helper could not confirm, `main` writes again (a stripe it did
    // confirm is only written twice).
    let sent = sent.map_err(|(err, _)| err).and_then(|_| {
        if lost_stripes {
            return Err(Sent::Local(std::io::Error::other(
                "a session's thread ended abnormally while it sent this file",
            )));
        }
        let mut in_flight = std::collections::VecDeque::new();
        for start in redo {
            stripes.send_one(sftp, &handle, start, &mut in_flight)?;
        }
        drain(sftp, &mut in_flight)?;
        Ok(e.size)
    });
    let sent = match sent {
        Err(_) if stop.load(Ordering::Relaxed) => return (Err(OpError::Aborted), broken),
        other => other,
    };
    (
        put_in_place(sftp, path, e, &file, &temp, &handle, sent, stop),
        broken,
    )
}

/// A big file cut into [`STRIPE`]s that sessions take in turn.
struct Stripes<'a> {
    file: &'a std::fs::File,
    size: u64,
    /// Where the next stripe not yet taken starts.
    next: &'a AtomicU64,
    stop: &'a AtomicBool,
    /// Set when the main session failed: the upload will not be completed.
    abandoned: &'a AtomicBool,
}

impl Stripes<'_> {
    /// Takes stripes and writes them on `handle`, pipelined, until none is
    /// left; returns the stripes it took. On failure, the stripes this
    /// session took, too (any of them may be unconfirmed).
    fn send(
        &self,
        sftp: &mut SftpClient<impl Read + Write>,
        handle: &[u8],
    ) -> Result<Vec<u64>, (Sent, Vec<u64>)> {
        let mut taken = Vec::new();
        let mut in_flight = std::collections::VecDeque::new();
        loop {
            let start = self.next.fetch_add(STRIPE, Ordering::Relaxed);
            if start >= self.size {
                break;
            }
            taken.push(start);
            if let Err(err) = self.send_one(sftp, handle, start, &mut in_flight) {
                return Err((err, taken));
            }
        }
        match drain(sftp, &mut in_flight) {
            Ok(()) => Ok(taken),
            Err(err) => Err((err, taken)),
        }
    }

    /// Writes the stripe at `start`, keeping up to [`sftp::WINDOW`] writes
    /// in flight in `in_flight`; the ones left there are the caller's to
    /// wait for ([`drain`]).
    fn send_one(
        &self,
        sftp: &mut SftpClient<impl Read + Write>,
        handle: &[u8],
        start: u64,
        in_flight: &mut std::collections::VecDeque<u32>,
    ) -> Result<(), Sent> {
        let end = self.size.min(start.saturating_add(STRIPE));
        let mut buf = vec![0u8; sftp::CHUNK];
        let mut offset = start;
        while offset < end {
            if self.stop.load(Ordering::Relaxed) || self.abandoned.load(Ordering::Relaxed) {
                return Err(Sent::Local(std::io::Error::other(
                    "replication was told to stop",
                )));
            }
            let n = usize::try_from(end - offset).map_or(buf.len(), |left| left.min(buf.len()));
            read_exact_at(self.file, &mut buf[..n], offset).map_err(Sent::Local)?;
            in_flight.push_back(
                sftp.start_write(handle, offset, &buf[..n])
                    .map_err(Sent::Sftp)?,
            );
            offset += n as u64;
            if in_flight.len() >= sftp::WINDOW {
                if let Some(id) = in_flight.pop_front() {
                    sftp.expect_ok(id, || "write".into()).map_err(Sent::Sftp)?;
                }
            }
        }
        Ok(())
    }
}

/// Waits for the answers to the writes in flight.
fn drain(
    sftp: &mut SftpClient<impl Read + Write>,
    in_flight: &mut std::collections::VecDeque<u32>,
) -> Result<(), Sent> {
    while let Some(id) = in_flight.pop_front() {
        sftp.expect_ok(id, || "write".into()).map_err(Sent::Sftp)?;
    }
    Ok(())
}

/// Fills `buf` from `file` at `offset`; a file that ends before is one that
/// changed since the scan.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset).map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::other("changed while it was read (shorter than scanned)")
        } else {
            err
        }
    })
}

/// A file to send that reads as failed once `stop` is set, so a big upload
/// ends at its next chunk.
struct UntilStopped<'a> {
    file: std::fs::File,
    stop: &'a AtomicBool,
}

impl Read for UntilStopped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("replication was told to stop"));
        }
        self.file.read(buf)
    }
}

/// Whether the peer takes replication: it is a standby only if the sync
/// account may write there (on a master it may only read). Makes the
/// folders of temporaries if missing (every session's: the others may not
/// pass here), then creates and removes a probe in this session's.
pub fn accepts_writes(sftp: &mut SftpClient<impl Read + Write>) -> Result<bool, SftpError> {
    let denied = |e: SftpError| {
        if e.is_permission_denied() {
            Ok(false)
        } else {
            Err(e)
        }
    };
    let folders = std::iter::once(TEMP_DIR.to_vec()).chain((0..TEMP_SLOTS).map(temp_folder));
    for folder in folders {
        let dir = remote_path(&folder);
        if sftp.lstat(&dir)?.is_none() {
            let made = sftp.mkdir(
                &dir,
                Attrs {
                    mode: Some(0o700),
                    ..Attrs::default()
                },
            );
            if let Err(e) = made {
                return denied(e);
            }
        }
    }
    let probe = temp_path(sftp.temp_slot());
    match sftp.create(&probe, TEMPORARY) {
        Ok(handle) => {
            sftp.close(&handle)?;
            sftp.remove(&probe)?;
            Ok(true)
        }
        Err(e) => denied(e),
    }
}

/// A temporary is root's alone until its attributes are set on the handle.
const TEMPORARY: Attrs = Attrs {
    size: None,
    owner: None,
    mode: Some(0o600),
    times: None,
};

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
    if now.st_size as u64 != e.size
        || now.st_mtime != e.mtime
        || now.st_mtime_nsec != i64::from(e.mtime_nsec)
    {
        return Err(std::io::Error::other("changed while it was read"));
    }
    Ok(())
}

pub enum OpError {
    Transport(TransportError),
    /// The local file changed or vanished: not an error, the next round sees it.
    Local(Vec<u8>, std::io::Error),
    /// The standby answered and refused this operation (not empty, permission,
    /// disk full, ...). The session is fine: the operation is reported and
    /// skipped, the queue goes on, and the next full round tries it again.
    Refused(Vec<u8>, SftpError),
    /// Not done: the session broke on another file of the same batch.
    Aborted,
}

impl OpError {
    /// A refusal for `path`, or a broken session.
    fn from_sftp(path: &[u8], e: SftpError) -> OpError {
        if e.is_refusal() {
            OpError::Refused(path.to_vec(), e)
        } else {
            OpError::Transport(TransportError::Sftp(e))
        }
    }
}

/// Files at most this big are read whole and sent [`put_batch`]-wise.
pub const SMALL: u64 = 256 * 1024;

/// Uploads several small files over one session with their requests
/// pipelined: all the OPENs, then every file's writes, attributes, fsync and
/// close, then the renames of those that got that far. Three round trips for
/// the lot instead of three per file, with the guarantees of [`put_file`]: a
/// file is renamed into place only after it was written, fsynced and closed.
/// Returns one result per item, in order; after a transport error the
/// remaining ones are [`OpError::Aborted`], and so are all those not yet
/// renamed into place once `stop` is set (see [`put_file`]).
pub fn put_batch(
    sftp: &mut SftpClient<impl Read + Write>,
    data_dir: &Path,
    items: &[(&[u8], &Entry)],
    stop: &AtomicBool,
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
    if let Err(err) = send_batch(sftp, items, &contents, &mut results, stop) {
        // Only a broken session gets here: refusals were recorded per item.
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
    sftp: &mut SftpClient<impl Read + Write>,
    items: &[(&[u8], &Entry)],
    contents: &[Option<Vec<u8>>],
    results: &mut [Result<u64, OpError>],
    stop: &AtomicBool,
) -> Result<(), sftp::SftpError> {
    let slot = sftp.temp_slot();
    let names: Vec<(Vec<u8>, Vec<u8>)> = items
        .iter()
        .map(|(path, _)| (temp_path(slot), remote_path(path)))
        .collect();
    // A refusal (disk full, say) fails its own item; any other error is a
    // broken session and fails the batch.
    let refused = |results: &mut [Result<u64, OpError>], i: usize, e: SftpError| {
        if e.is_refusal() {
            results[i] = Err(OpError::Refused(items[i].0.to_vec(), e));
            Ok(())
        } else {
            Err(e)
        }
    };
    let todo: Vec<usize> = (0..items.len()).filter(|i| results[*i].is_ok()).collect();
    let mut opens = Vec::with_capacity(todo.len());
    for &i in &todo {
        opens.push(sftp.start_create(&names[i].0, TEMPORARY)?);
    }
    let mut handles = Vec::with_capacity(todo.len());
    for (&i, id) in todo.iter().zip(opens) {
        match sftp.handle(id, &names[i].0) {
            Ok(handle) => handles.push((i, handle)),
            Err(e) => refused(results, i, e)?,
        }
    }
    let mut pending = Vec::with_capacity(handles.len());
    for (i, handle) in &handles {
        let i = *i;
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
    let mut written = Vec::with_capacity(handles.len());
    for ((i, _), (writes, finish)) in handles.iter().zip(pending) {
        let i = *i;
        let mut outcome = Ok(());
        for id in writes {
            outcome = outcome.and(sftp.expect_ok(id, || "write".into()));
        }
        outcome = outcome.and(sftp.expect_finished(finish));
        match outcome {
            Ok(()) => written.push(i),
            Err(e) => {
                refused(results, i, e)?;
                sftp.remove(&names[i].0).or_else(ignore_refusal)?;
            }
        }
    }
    // Every answer is in: a worker told to stop leaves the session clean
    // and puts nothing in place (the audit removes the temporaries).
    if stop.load(Ordering::Relaxed) {
        for i in written {
            results[i] = Err(OpError::Aborted);
        }
        return Ok(());
    }
    let mut renames = Vec::with_capacity(written.len());
    for i in written {
        renames.push((i, sftp.start_posix_rename(&names[i].0, &names[i].1)?));
    }
    for (i, id) in renames {
        if let Err(e) = sftp.expect_ok(id, || format!("rename into {}", sftp::show(&names[i].1))) {
            refused(results, i, e)?;
            sftp.remove(&names[i].0).or_else(ignore_refusal)?;
        }
    }
    Ok(())
}

fn ignore_refusal(e: SftpError) -> Result<(), SftpError> {
    if e.is_refusal() { Ok(()) } else { Err(e) }
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

/// A fresh name in one of the standby's folders of temporaries (in
/// [`TEMP_DIR`]): in the data dir (one file system, so the rename into
/// place is atomic) but outside every chroot, so no user can make, see or
/// take that name; O_EXCL does the rest.
fn temp_path(slot: u8) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = crate::timefmt::unix_now();
    let mut p = remote_path(&temp_folder(slot));
    p.extend_from_slice(format!("/{:x}-{now:x}-{n:x}", std::process::id()).as_bytes());
    p
}

/// What a new folder is made with: its mode at once, its owner after.
fn dir_attrs(e: &Entry) -> Attrs {
    Attrs {
        mode: Some(e.mode_word() & 0o1777),
        ..Attrs::default()
    }
}

fn attrs(e: &Entry, with_times: bool) -> Attrs {
    Attrs {
        size: None,
        owner: Some((e.uid, e.gid)),
        // Set-id bits are never carried (see tree::Entry::mode).
        mode: Some(e.mode_word() & 0o1777),
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
    fn temporaries_are_fresh_names_outside_every_chroot() {
        let (a, b) = (temp_path(3), temp_path(3));
        assert!(a.starts_with(b"/.sftp-ha-tmp/s3/"), "{}", sftp::show(&a));
        assert_ne!(a, b);
        assert!(temp_path(TEMP_SLOTS + 1).starts_with(b"/.sftp-ha-tmp/s1/"));
        assert_eq!(remote_path(b"u/x"), b"/u/x".to_vec());
    }

    #[test]
    fn only_admin_folders_hold_the_hosts_status_file() {
        assert!(is_admin_folder(b"/admin/admin"));
        assert!(is_admin_folder(b"/EPuser/admin"));
        assert!(!is_admin_folder(b"/EPuser/upload/admin"));
        assert!(!is_admin_folder(b"/EPuser"));
    }
}
