//! A small SFTP v3 client over any byte stream (an ssh2 channel in the `sftp`
//! subsystem), with the two OpenSSH extensions replication needs:
//! `posix-rename@openssh.com` (atomic replace, which plain SSH_FXP_RENAME
//! refuses when the target exists) and `fsync@openssh.com` (durability).
//!
//! Why not ssh2's own SFTP API: it has no posix-rename, and libssh2 pipelines
//! only within one write call. Here requests are queued and go out in one
//! channel write when a reply is awaited (or the queue holds [`SEND_BATCH`]),
//! and writes are pipelined explicitly: up to [`WINDOW`] requests are in
//! flight before the first reply is read. The `start_*` calls send without
//! waiting, so a caller can have several files in flight at once.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const FSETSTAT: u8 = 10;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const NAME: u8 = 104;
const ATTRS: u8 = 105;
const EXTENDED: u8 = 200;

const OPEN_READ: u32 = 0x01;
const OPEN_WRITE: u32 = 0x02;
const OPEN_CREATE: u32 = 0x08;
const OPEN_TRUNCATE: u32 = 0x10;
/// O_EXCL: fail if the name exists (a planted symlink included: with O_EXCL
/// the kernel never follows a link at the last component).
const OPEN_EXCLUSIVE: u32 = 0x20;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;

const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;
const FX_FAILURE: u32 = 4;

/// Bytes per WRITE request (OpenSSH accepts packets up to 256 KiB).
pub const CHUNK: usize = 64 * 1024;
/// WRITE requests in flight at once: 32 × 64 KiB = 2 MiB, well inside the channel window.
pub const WINDOW: usize = 32;
/// Queued requests are written once they reach this size (or a reply is awaited).
pub const SEND_BATCH: usize = 1024 * 1024;
/// Replies larger than this are refused: they cannot come from a sane server.
const MAX_PACKET: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("{what}: {message} (SFTP status {code})")]
    Status {
        what: String,
        code: u32,
        message: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the standby's sftp-server lacks {0}; fix: use OpenSSH 8.0 or later on the standby")]
    MissingExtension(&'static str),
}

impl SftpError {
    pub fn is_no_such_file(&self) -> bool {
        matches!(
            self,
            SftpError::Status {
                code: FX_NO_SUCH_FILE,
                ..
            }
        )
    }

    /// The standby answered and refused this one request (permission, not
    /// empty, disk full, ...): the session itself is fine.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SftpError::Status { .. })
    }

    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            SftpError::Status {
                code: FX_PERMISSION_DENIED,
                ..
            }
        )
    }

    /// A generic failure, which is what sftp-server answers for "folder not empty".
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            SftpError::Status {
                code: FX_FAILURE,
                ..
            }
        )
    }
}

/// File attributes as SFTP v3 carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub owner: Option<(u32, u32)>,
    pub mode: Option<u32>,
    /// (atime, mtime) in whole seconds: SFTP v3 has no sub-second times.
    pub times: Option<(u32, u32)>,
}

impl Attrs {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if self.owner.is_some() {
            flags |= ATTR_UIDGID;
        }
        if self.mode.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if self.times.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        put_u32(out, flags);
        if let Some(size) = self.size {
            out.extend_from_slice(&size.to_be_bytes());
        }
        if let Some((uid, gid)) = self.owner {
            put_u32(out, uid);
            put_u32(out, gid);
        }
        if let Some(mode) = self.mode {
            put_u32(out, mode);
        }
        if let Some((atime, mtime)) = self.times {
            put_u32(out, atime);
            put_u32(out, mtime);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Attrs, SftpError> {
        let flags = r.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(r.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.owner = Some((r.u32()?, r.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.mode = Some(r.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((r.u32()?, r.u32()?));
        }
        Ok(a)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

/// Reads fields from a packet body, failing cleanly on a short packet.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SftpError> {
        if self.data.len() < n {
            return Err(SftpError::Protocol("a reply ended early".into()));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, SftpError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, SftpError> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
    fn string(&mut self) -> Result<&'a [u8], SftpError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// One reply: its type and body after the request id.
struct Reply {
    kind: u8,
    body: Vec<u8>,
}

pub struct SftpClient<S: Read + Write> {
    stream: S,
    /// Requests not yet written to the stream.
    queued: Vec<u8>,
    next_id: u32,
    extensions: HashSet<String>,
    /// Replies read while waiting for another id (pipelining).
    early: HashMap<u32, Reply>,
}

impl<S: Read + Write> SftpClient<S> {
    /// Sends INIT and reads the server's VERSION with its extensions.
    pub fn new(mut stream: S) -> Result<SftpClient<S>, SftpError> {
        let mut init = Vec::new();
        put_u32(&mut init, 5);
        init.push(INIT);
        put_u32(&mut init, 3);
        // Never flush(): on an ssh2 channel it discards received data (libssh2_channel_flush).
        stream.write_all(&init)?;
        let (kind, body) = read_packet(&mut stream)?;
        if kind != VERSION {
            return Err(SftpError::Protocol(format!(
                "expected VERSION, got type {kind}"
            )));
        }
        let mut r = Reader { data: &body };
        let version = r.u32()?;
        if version < 3 {
            return Err(SftpError::Protocol(format!(
                "server speaks SFTP version {version}"
            )));
        }
        let mut extensions = HashSet::new();
        while !r.data.is_empty() {
            let name = r.string()?;
            let _data = r.string()?;
            extensions.insert(String::from_utf8_lossy(name).into_owned());
        }
        Ok(SftpClient {
            stream,
            queued: Vec::new(),
            next_id: 1,
            extensions,
            early: HashMap::new(),
        })
    }

    /// Queues a request; it is written with the others before the next wait.
    fn send(&mut self, kind: u8, payload: &[u8]) -> Result<u32, SftpError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        put_u32(&mut self.queued, (payload.len() + 5) as u32);
        self.queued.push(kind);
        put_u32(&mut self.queued, id);
        self.queued.extend_from_slice(payload);
        if self.queued.len() >= SEND_BATCH {
            self.send_queued()?;
        }
        Ok(id)
    }

    /// Writes the queued requests in one go. (Not `flush()`: on an ssh2
    /// channel that discards received data.)
    fn send_queued(&mut self) -> Result<(), SftpError> {
        if !self.queued.is_empty() {
            let result = self.stream.write_all(&self.queued);
            self.queued.clear();
            result?;
        }
        Ok(())
    }

    fn reply(&mut self, id: u32) -> Result<Reply, SftpError> {
        if let Some(r) = self.early.remove(&id) {
            return Ok(r);
        }
        self.send_queued()?;
        loop {
            let (kind, body) = read_packet(&mut self.stream)?;
            let mut r = Reader { data: &body };
            let got = r.u32()?;
            let reply = Reply {
                kind,
                body: r.data.to_vec(),
            };
            if got == id {
                return Ok(reply);
            }
            self.early.insert(got, reply);
        }
    }

    fn status(&mut self, id: u32, what: impl Fn() -> String) -> Result<(), SftpError> {
        let reply = self.reply(id)?;
        check_status(&reply, what)
    }

    fn request(
        &mut self,
        kind: u8,
        payload: &[u8],
        what: impl Fn() -> String,
    ) -> Result<(), SftpError> {
        let id = self.send(kind, payload)?;
        self.status(id, what)
    }

    /// Creates `path` for writing with `attrs`; it must not exist (O_EXCL: never
    /// an existing file, never through a symlink). Returns the handle.
    pub fn create(&mut self, path: &[u8], attrs: Attrs) -> Result<Vec<u8>, SftpError> {
        let id = self.start_create(path, attrs)?;
        self.handle(id, path)
    }

    /// Sends an OPEN like [`SftpClient::create`]; [`SftpClient::handle`] gets the answer.
    pub fn start_create(&mut self, path: &[u8], attrs: Attrs) -> Result<u32, SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        put_u32(
            &mut p,
            OPEN_WRITE | OPEN_CREATE | OPEN_TRUNCATE | OPEN_EXCLUSIVE,
        );
        attrs.encode(&mut p);
        self.send(OPEN, &p)
    }

    /// The handle an OPEN sent as `id` (for `path`, named in errors) returned.
    pub fn handle(&mut self, id: u32, path: &[u8]) -> Result<Vec<u8>, SftpError> {
        let reply = self.reply(id)?;
        if reply.kind == HANDLE {
            let mut r = Reader { data: &reply.body };
            return Ok(r.string()?.to_vec());
        }
        check_status(&reply, || format!("open {}", show(path)))?;
        Err(SftpError::Protocol(
            "OPEN answered OK without a handle".into(),
        ))
    }

    /// Sends one WRITE of `data` at `offset` without waiting for its answer.
    pub fn start_write(
        &mut self,
        handle: &[u8],
        offset: u64,
        data: &[u8],
    ) -> Result<u32, SftpError> {
        let mut p = Vec::with_capacity(data.len() + handle.len() + 16);
        put_str(&mut p, handle);
        p.extend_from_slice(&offset.to_be_bytes());
        put_str(&mut p, data);
        self.send(WRITE, &p)
    }

    /// Waits for the answer to request `id`; an error status names `what`.
    pub fn expect_ok(&mut self, id: u32, what: impl Fn() -> String) -> Result<(), SftpError> {
        self.status(id, what)
    }

    /// Writes everything `source` yields to `handle`, pipelined. Returns the byte count.
    pub fn write_from(&mut self, handle: &[u8], source: &mut impl Read) -> Result<u64, SftpError> {
        let mut offset = 0u64;
        let mut in_flight = std::collections::VecDeque::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_full(source, &mut buf)?;
            if n > 0 {
                in_flight.push_back(self.start_write(handle, offset, &buf[..n])?);
                offset += n as u64;
            }
            if in_flight.len() >= WINDOW || (n == 0 && !in_flight.is_empty()) {
                if let Some(id) = in_flight.pop_front() {
                    self.status(id, || "write".into())?;
                }
            }
            if n == 0 && in_flight.is_empty() {
                return Ok(offset);
            }
        }
    }

    /// Sets the final attributes, fsyncs and closes a written file: the three
    /// requests go out together and their answers are read after, one round
    /// trip instead of three. The first failure is returned.
    pub fn finish(&mut self, handle: &[u8], attrs: Attrs) -> Result<(), SftpError> {
        let ids = self.start_finish(handle, attrs)?;
        self.expect_finished(ids)
    }

    /// Sends what [`SftpClient::finish`] sends, without waiting.
    pub fn start_finish(&mut self, handle: &[u8], attrs: Attrs) -> Result<[u32; 3], SftpError> {
        if !self.extensions.contains("fsync@openssh.com") {
            return Err(SftpError::MissingExtension("fsync@openssh.com"));
        }
        let mut p = Vec::new();
        put_str(&mut p, handle);
        attrs.encode(&mut p);
        let set = self.send(FSETSTAT, &p)?;
        let mut p = Vec::new();
        put_str(&mut p, b"fsync@openssh.com");
        put_str(&mut p, handle);
        let sync = self.send(EXTENDED, &p)?;
        let mut p = Vec::new();
        put_str(&mut p, handle);
        let close = self.send(CLOSE, &p)?;
        Ok([set, sync, close])
    }

    /// The answers to [`SftpClient::start_finish`]; the first failure is returned.
    pub fn expect_finished(&mut self, [set, sync, close]: [u32; 3]) -> Result<(), SftpError> {
        let set = self.status(set, || "set attributes".into());
        let sync = self.status(sync, || "fsync".into());
        let close = self.status(close, || "close".into());
        set.and(sync).and(close)
    }

    /// Opens `path` (a file or a folder) read-only, for [`SftpClient::fsetstat`].
    pub fn open_read(&mut self, path: &[u8]) -> Result<Vec<u8>, SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        put_u32(&mut p, OPEN_READ);
        Attrs::default().encode(&mut p);
        let id = self.send(OPEN, &p)?;
        self.handle(id, path)
    }

    /// Sets attributes on an open handle (fchmod, fchown, futimes).
    pub fn fsetstat(&mut self, handle: &[u8], attrs: Attrs) -> Result<(), SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, handle);
        attrs.encode(&mut p);
        self.request(FSETSTAT, &p, || "set attributes".into())
    }

    pub fn close(&mut self, handle: &[u8]) -> Result<(), SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, handle);
        self.request(CLOSE, &p, || "close".into())
    }

    /// Atomically replaces `to` with `from` (rename(2) on the standby).
    pub fn posix_rename(&mut self, from: &[u8], to: &[u8]) -> Result<(), SftpError> {
        let id = self.start_posix_rename(from, to)?;
        self.status(id, || format!("rename {} to {}", show(from), show(to)))
    }

    /// Sends a posix-rename without waiting; [`SftpClient::expect_ok`] gets the answer.
    pub fn start_posix_rename(&mut self, from: &[u8], to: &[u8]) -> Result<u32, SftpError> {
        const NAME: &str = "posix-rename@openssh.com";
        if !self.extensions.contains(NAME) {
            return Err(SftpError::MissingExtension(NAME));
        }
        let mut p = Vec::new();
        put_str(&mut p, NAME.as_bytes());
        put_str(&mut p, from);
        put_str(&mut p, to);
        self.send(EXTENDED, &p)
    }

    pub fn remove(&mut self, path: &[u8]) -> Result<(), SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        self.request(REMOVE, &p, || format!("remove {}", show(path)))
    }

    pub fn rmdir(&mut self, path: &[u8]) -> Result<(), SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        self.request(RMDIR, &p, || format!("rmdir {}", show(path)))
    }

    pub fn mkdir(&mut self, path: &[u8], attrs: Attrs) -> Result<(), SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        attrs.encode(&mut p);
        self.request(MKDIR, &p, || format!("mkdir {}", show(path)))
    }

    /// Sets attributes of `path` itself, never of what a symlink there points
    /// to (`lsetstat@openssh.com`, OpenSSH 8.0 and later; plain SETSTAT follows
    /// links, so there is no fallback to it). Owner and times only: on Linux
    /// sftp-server's fchmodat(AT_SYMLINK_NOFOLLOW) needs /proc, which a chroot
    /// lacks, so a mode fails there.
    pub fn lsetstat(&mut self, path: &[u8], attrs: Attrs) -> Result<(), SftpError> {
        const NAME: &str = "lsetstat@openssh.com";
        if !self.extensions.contains(NAME) {
            return Err(SftpError::MissingExtension(NAME));
        }
        let mut p = Vec::new();
        put_str(&mut p, NAME.as_bytes());
        put_str(&mut p, path);
        attrs.encode(&mut p);
        self.request(EXTENDED, &p, || format!("set attributes of {}", show(path)))
    }

    /// True if the server offers `lsetstat@openssh.com`.
    pub fn has_lsetstat(&self) -> bool {
        self.extensions.contains("lsetstat@openssh.com")
    }

    /// The entries of folder `path` (without `.` and `..`), with their attributes
    /// (as lstat: a symlink is reported as a symlink).
    pub fn read_dir(&mut self, path: &[u8]) -> Result<Vec<(Vec<u8>, Attrs)>, SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        let id = self.send(OPENDIR, &p)?;
        let reply = self.reply(id)?;
        if reply.kind != HANDLE {
            check_status(&reply, || format!("list {}", show(path)))?;
            return Err(SftpError::Protocol(
                "OPENDIR answered OK without a handle".into(),
            ));
        }
        let handle = Reader { data: &reply.body }.string()?.to_vec();
        let mut entries = Vec::new();
        let listed = loop {
            let mut p = Vec::new();
            put_str(&mut p, &handle);
            let id = self.send(READDIR, &p)?;
            let reply = self.reply(id)?;
            if reply.kind == STATUS {
                let code = Reader { data: &reply.body }.u32()?;
                if code == FX_EOF {
                    break Ok(());
                }
                break check_status(&reply, || format!("list {}", show(path)));
            }
            if reply.kind != NAME {
                break Err(SftpError::Protocol(format!(
                    "READDIR answered type {}",
                    reply.kind
                )));
            }
            let mut r = Reader { data: &reply.body };
            for _ in 0..r.u32()? {
                let name = r.string()?.to_vec();
                let _long = r.string()?;
                let attrs = Attrs::decode(&mut r)?;
                if name != b"." && name != b".." {
                    entries.push((name, attrs));
                }
            }
        };
        self.close(&handle)?;
        listed.map(|()| entries)
    }

    /// Attributes of `path` without following a symlink; `None` if it does not exist.
    pub fn lstat(&mut self, path: &[u8]) -> Result<Option<Attrs>, SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        let id = self.send(LSTAT, &p)?;
        let reply = self.reply(id)?;
        if reply.kind == ATTRS {
            return Ok(Some(Attrs::decode(&mut Reader { data: &reply.body })?));
        }
        match check_status(&reply, || format!("lstat {}", show(path))) {
            Err(e) if e.is_no_such_file() => Ok(None),
            Err(e) => Err(e),
            Ok(()) => Err(SftpError::Protocol(
                "LSTAT answered OK without attributes".into(),
            )),
        }
    }
}

fn check_status(reply: &Reply, what: impl Fn() -> String) -> Result<(), SftpError> {
    if reply.kind != STATUS {
        return Err(SftpError::Protocol(format!(
            "expected STATUS, got type {}",
            reply.kind
        )));
    }
    let mut r = Reader { data: &reply.body };
    let code = r.u32()?;
    if code == FX_OK {
        return Ok(());
    }
    let message = r
        .string()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    Err(SftpError::Status {
        what: what(),
        code,
        message,
    })
}

fn read_packet(stream: &mut impl Read) -> Result<(u8, Vec<u8>), SftpError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(SftpError::Protocol(format!("a reply of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    stream.read_exact(&mut data)?;
    let kind = data[0];
    data.remove(0);
    Ok((kind, data))
}

/// Fills `buf` unless the source ends first; returns how much it read.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A path for messages: bytes shown as text where they are UTF-8.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip() {
        let a = Attrs {
            size: Some(1 << 40),
            owner: Some((1000, 1001)),
            mode: Some(0o100640),
            times: Some((1, 2)),
        };
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(Attrs::decode(&mut Reader { data: &out }).unwrap(), a);
        let mut out = Vec::new();
        Attrs::default().encode(&mut out);
        assert_eq!(out, vec![0, 0, 0, 0]);
    }

    #[test]
    fn short_replies_are_errors_not_panics() {
        let mut r = Reader {
            data: &[0, 0, 0, 9, 1],
        };
        assert!(r.string().is_err());
        assert!(read_packet(&mut &[0u8, 0, 0, 0][..]).is_err());
        assert!(read_packet(&mut &[0xffu8, 0, 0, 0][..]).is_err());
    }
}
