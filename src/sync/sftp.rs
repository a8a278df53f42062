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
const READ: u8 = 5;
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
const DATA: u8 = 103;
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
    #[error("{path} is larger than the {limit} bytes expected of it")]
    TooLarge { path: String, limit: u64 },
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
    /// Which folder of temporaries this session writes in ([`super::tree::temp_folder`]).
    temp_slot: u8,
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
        // By turns: the sessions opened together get different folders.
        static NEXT_SLOT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let temp_slot =
            NEXT_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % super::tree::TEMP_SLOTS;
        Ok(SftpClient {
            stream,
            queued: Vec::new(),
            next_id: 1,
            extensions,
            early: HashMap::new(),
            temp_slot,
        })
    }

    /// The folder of temporaries this session writes in.
    pub fn temp_slot(&self) -> u8 {
        self.temp_slot
    }

    /// Queues a request; it is written with the others before the next wait.
    fn send(&mut self, kind: u8, payload: &[u8]) -> Result<u32, SftpError> {
        self.send_parts(kind, &[payload])
    }

    /// [`SftpClient::send`] of a payload given in pieces, put end to end.
    fn send_parts(&mut self, kind: u8, parts: &[&[u8]]) -> Result<u32, SftpError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        put_u32(&mut self.queued, (len + 5) as u32);
        self.queued.push(kind);
        put_u32(&mut self.queued, id);
        for part in parts {
            self.queued.extend_from_slice(part);
        }
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

    /// Opens the existing file `path` for writing, without creating or
    /// truncating it: a further handle on a temporary that
    /// [`SftpClient::create`] made (on another session), so several sessions
    /// can write parts of one big file. Only for names in the folders of
    /// temporaries, where no user can put anything.
    pub fn open_write(&mut self, path: &[u8]) -> Result<Vec<u8>, SftpError> {
        self.open_existing(path, OPEN_WRITE)
    }

    /// Opens the existing `path` with `flags` (nothing created) and returns its handle.
    fn open_existing(&mut self, path: &[u8], flags: u32) -> Result<Vec<u8>, SftpError> {
        let mut p = Vec::new();
        put_str(&mut p, path);
        put_u32(&mut p, flags);
        Attrs::default().encode(&mut p);
        let id = self.send(OPEN, &p)?;
        self.handle(id, path)
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
        // The data goes straight into the queue, not through a payload copy
        // first: a big file is copied once less.
        let mut head = Vec::with_capacity(handle.len() + 16);
        put_str(&mut head, handle);
        head.extend_from_slice(&offset.to_be_bytes());
        put_u32(&mut head, data.len() as u32);
        self.send_parts(WRITE, &[&head, data])
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
        self.open_existing(path, OPEN_READ)
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

    /// The whole content of the small file `path` (a control file): more than
    /// `limit` bytes is [`SftpError::TooLarge`], so a peer cannot make this
    /// host buffer an arbitrary amount.
    pub fn read_all(&mut self, path: &[u8], limit: u64) -> Result<Vec<u8>, SftpError> {
        let mut data = Vec::new();
        // No more requests in flight than the limit can need (plus the one
        // that sees EOF): a control file is a few bytes, not 2 MiB of reads.
        let window = usize::try_from(limit / CHUNK as u64)
            .unwrap_or(WINDOW)
            .saturating_add(2)
            .min(WINDOW);
        self.read_into(path, &mut data, Some(limit), window)?;
        Ok(data)
    }

    /// Copies the whole file `path` into `out`, with up to [`WINDOW`] READ
    /// requests in flight (as writes are pipelined). Returns the bytes copied.
    /// A missing file is an error whose `is_no_such_file()` is true.
    pub fn download(&mut self, path: &[u8], out: &mut impl Write) -> Result<u64, SftpError> {
        self.read_into(path, out, None, WINDOW)
    }

    fn read_into(
        &mut self,
        path: &[u8],
        out: &mut impl Write,
        limit: Option<u64>,
        window: usize,
    ) -> Result<u64, SftpError> {
        let handle = self.open_read(path)?;
        let copied = self.read_handle(&handle, path, out, limit, window.max(1));
        // Closed whatever happened; the first failure is the one reported.
        let closed = self.close(&handle);
        let copied = copied?;
        closed?;
        Ok(copied)
    }

    /// Reads `handle` from offset 0 to EOF into `out`, in order.
    fn read_handle(
        &mut self,
        handle: &[u8],
        path: &[u8],
        out: &mut impl Write,
        limit: Option<u64>,
        window: usize,
    ) -> Result<u64, SftpError> {
        // (request id, offset, length) in offset order: replies are written
        // to `out` in that order, whatever order they arrive in.
        let mut in_flight = std::collections::VecDeque::new();
        let mut next_offset = 0u64;
        let mut copied = 0u64;
        let result = loop {
            while in_flight.len() < window {
                let id = self.start_read(handle, next_offset, CHUNK as u32)?;
                in_flight.push_back((id, next_offset, CHUNK as u32));
                next_offset += CHUNK as u64;
            }
            let Some((id, offset, len)) = in_flight.pop_front() else {
                break Ok(copied);
            };
            match self.read_reply(id, path, len) {
                Ok(None) => break Ok(copied),
                Ok(Some(data)) => {
                    copied += data.len() as u64;
                    if let Some(limit) = limit.filter(|l| copied > *l) {
                        break Err(SftpError::TooLarge {
                            path: show(path),
                            limit,
                        });
                    }
                    if let Err(e) = out.write_all(&data) {
                        break Err(e.into());
                    }
                    // A short read (allowed by the protocol) leaves a gap
                    // that must be filled before the later replies are
                    // written: ask for the rest at once, ahead of them.
                    let got = data.len() as u32;
                    if got < len {
                        match self.start_read(handle, offset + u64::from(got), len - got) {
                            Ok(id) => {
                                in_flight.push_front((id, offset + u64::from(got), len - got))
                            }
                            Err(e) => break Err(e),
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        // The answers still due are read and dropped, so none is left
        // waiting for an id no one asks for. On a broken connection that
        // fails too; the first error is the one that counts.
        for (id, _, _) in in_flight {
            if self.reply(id).is_err() {
                break;
            }
        }
        result
    }

    /// Sends one READ of `len` bytes at `offset` without waiting.
    fn start_read(&mut self, handle: &[u8], offset: u64, len: u32) -> Result<u32, SftpError> {
        let mut p = Vec::with_capacity(handle.len() + 16);
        put_str(&mut p, handle);
        p.extend_from_slice(&offset.to_be_bytes());
        put_u32(&mut p, len);
        self.send(READ, &p)
    }

    /// The data a READ of `asked` bytes sent as `id` returned; `None` at EOF.
    fn read_reply(
        &mut self,
        id: u32,
        path: &[u8],
        asked: u32,
    ) -> Result<Option<Vec<u8>>, SftpError> {
        let reply = self.reply(id)?;
        if reply.kind == DATA {
            let data = Reader { data: &reply.body }.string()?;
            // Empty data would ask for the same bytes again, forever; more
            // than asked for cannot be placed.
            if data.is_empty() || data.len() > asked as usize {
                return Err(SftpError::Protocol(format!(
                    "READ of {asked} bytes answered with {}",
                    data.len()
                )));
            }
            return Ok(Some(data.to_vec()));
        }
        if reply.kind == STATUS && (Reader { data: &reply.body }).u32()? == FX_EOF {
            return Ok(None);
        }
        check_status(&reply, || format!("read {}", show(path)))?;
        Err(SftpError::Protocol("READ answered OK without data".into()))
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

/// An in-memory server for tests here and in the modules that use the client.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// One SFTP packet as the server sends it: length, type, id, body.
    fn frame(kind: u8, id: Option<u32>, body: &[u8]) -> Vec<u8> {
        let mut p = vec![kind];
        if let Some(id) = id {
            put_u32(&mut p, id);
        }
        p.extend_from_slice(body);
        let mut framed = Vec::new();
        put_str(&mut framed, &p);
        framed
    }

    /// An in-memory SFTP server holding a few files: it answers INIT, OPEN
    /// (read), READ and CLOSE as requests are written, at most `max_read`
    /// bytes per READ (to exercise short reads), and records each READ.
    pub(crate) struct FakeServer {
        pub(crate) files: HashMap<Vec<u8>, Vec<u8>>,
        pub(crate) max_read: usize,
        /// Handle number → file content.
        pub(crate) open: HashMap<u32, Vec<u8>>,
        pub(crate) next_handle: u32,
        pub(crate) input: Vec<u8>,
        pub(crate) output: std::collections::VecDeque<u8>,
        pub(crate) reads: Vec<(u64, u32)>,
        pub(crate) most_unanswered: usize,
    }

    impl FakeServer {
        pub(crate) fn new(files: &[(&[u8], Vec<u8>)], max_read: usize) -> FakeServer {
            FakeServer {
                files: files.iter().map(|(p, d)| (p.to_vec(), d.clone())).collect(),
                max_read,
                open: HashMap::new(),
                next_handle: 0,
                input: Vec::new(),
                output: Default::default(),
                reads: Vec::new(),
                most_unanswered: 0,
            }
        }

        fn answer(&mut self, kind: u8, id: Option<u32>, body: &[u8]) {
            self.output.extend(frame(kind, id, body));
        }

        fn status(&mut self, id: u32, code: u32) {
            let mut b = Vec::new();
            put_u32(&mut b, code);
            put_str(&mut b, b"message");
            put_str(&mut b, b"");
            self.answer(STATUS, Some(id), &b);
        }

        fn handle_packet(&mut self, kind: u8, body: &[u8]) {
            let mut r = Reader { data: body };
            if kind == INIT {
                let mut b = Vec::new();
                put_u32(&mut b, 3);
                put_str(&mut b, b"fsync@openssh.com");
                put_str(&mut b, b"1");
                self.answer(VERSION, None, &b);
                return;
            }
            let id = r.u32().unwrap();
            match kind {
                OPEN => {
                    let path = r.string().unwrap();
                    match self.files.get(path).cloned() {
                        Some(data) => {
                            self.next_handle += 1;
                            self.open.insert(self.next_handle, data);
                            let mut b = Vec::new();
                            put_str(&mut b, &self.next_handle.to_be_bytes());
                            self.answer(HANDLE, Some(id), &b);
                        }
                        None => self.status(id, FX_NO_SUCH_FILE),
                    }
                }
                READ => {
                    let h = r.string().unwrap();
                    let h = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    let offset = r.u64().unwrap();
                    let len = r.u32().unwrap();
                    self.reads.push((offset, len));
                    let data = &self.open[&h];
                    if offset >= data.len() as u64 {
                        self.status(id, FX_EOF);
                    } else {
                        let end = data
                            .len()
                            .min(offset as usize + len as usize)
                            .min(offset as usize + self.max_read);
                        let mut b = Vec::new();
                        put_str(&mut b, &data[offset as usize..end]);
                        self.answer(DATA, Some(id), &b);
                    }
                }
                CLOSE => {
                    let h = r.string().unwrap();
                    let h = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    let code = if self.open.remove(&h).is_some() {
                        FX_OK
                    } else {
                        FX_FAILURE
                    };
                    self.status(id, code);
                }
                _ => self.status(id, FX_FAILURE),
            }
        }
    }

    impl Write for FakeServer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.input.extend_from_slice(buf);
            let mut packets = 0;
            while self.input.len() >= 4 {
                let len = u32::from_be_bytes([
                    self.input[0],
                    self.input[1],
                    self.input[2],
                    self.input[3],
                ]) as usize;
                if self.input.len() < 4 + len {
                    break;
                }
                let packet: Vec<u8> = self.input.drain(..4 + len).skip(4).collect();
                self.handle_packet(packet[0], &packet[1..]);
                packets += 1;
            }
            self.most_unanswered = self.most_unanswered.max(packets);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for FakeServer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.output.len());
            for (b, v) in buf.iter_mut().zip(self.output.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }
    }

    /// One entry of a [`FakeFs`]: `mode` with the type bits, as lstat gives it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Node {
        pub(crate) mode: u32,
        pub(crate) uid: u32,
        pub(crate) gid: u32,
        pub(crate) mtime: u32,
        pub(crate) data: Vec<u8>,
    }

    impl Node {
        pub(crate) fn file(data: &[u8], mode: u32) -> Node {
            Node {
                mode: 0o100000 | mode,
                uid: 0,
                gid: 0,
                mtime: 1,
                data: data.to_vec(),
            }
        }

        pub(crate) fn dir(mode: u32) -> Node {
            Node {
                mode: 0o040000 | mode,
                uid: 0,
                gid: 0,
                mtime: 1,
                data: Vec::new(),
            }
        }

        fn is_dir(&self) -> bool {
            self.mode & 0o170000 == 0o040000
        }

        fn attrs(&self) -> Attrs {
            Attrs {
                size: Some(self.data.len() as u64),
                owner: Some((self.uid, self.gid)),
                mode: Some(self.mode),
                times: Some((self.mtime, self.mtime)),
            }
        }

        fn set(&mut self, a: &Attrs) {
            if let Some((uid, gid)) = a.owner {
                (self.uid, self.gid) = (uid, gid);
            }
            if let Some(mode) = a.mode {
                self.mode = (self.mode & 0o170000) | (mode & 0o7777);
            }
            if let Some((_, mtime)) = a.times {
                self.mtime = mtime;
            }
        }
    }

    /// A whole standby file system in memory, shared by every [`FakeStream`]
    /// opened on it: absolute paths (`/u/f`; the root `/` is implicit) to
    /// entries. It answers what replication uses: OPEN (read, or create with
    /// EXCL), READ, WRITE, FSETSTAT, CLOSE, LSTAT, OPENDIR/READDIR, MKDIR,
    /// RMDIR, REMOVE, and the OpenSSH extensions posix-rename, lsetstat and
    /// fsync. Like sftp-server in a chroot, lsetstat refuses a mode. With
    /// `read_only` every change is refused with PERMISSION_DENIED, as
    /// `sftp-server -R` does.
    #[derive(Debug, Default)]
    pub(crate) struct FakeFs {
        pub(crate) nodes: std::collections::BTreeMap<Vec<u8>, Node>,
        pub(crate) read_only: bool,
        /// Requests that changed something, in order (request type, path).
        pub(crate) changes: Vec<(u8, Vec<u8>)>,
        /// The network to it is cut: every request fails as a broken
        /// connection would (and a test's connector refuses new sessions).
        pub(crate) cut_off: bool,
        /// Requests hang while this is set, as on a standby that has stopped
        /// answering without the connection breaking.
        pub(crate) stalled: bool,
        /// Streams made so far ([`FakeStream::tagged`]), each numbered in turn.
        pub(crate) streams_made: usize,
        /// The stream numbered `.0` breaks after `.1` writes to it (one
        /// session lost, the others fine).
        pub(crate) break_stream: Option<(usize, usize)>,
        /// The stream numbered so has its CLOSEs refused, and what it wrote
        /// through that handle lost (zeroed): a write error reported late,
        /// as NFS or a FUSE file system may.
        pub(crate) fail_close_on_stream: Option<usize>,
        /// `changes` with the tag of the stream that made each (see
        /// [`FakeStream::tagged`]): which client wrote what, in order.
        pub(crate) by: Vec<(u8, u8, Vec<u8>)>,
    }

    impl FakeFs {
        /// Records a change made by the stream tagged `tag`.
        fn note(&mut self, tag: u8, change: (u8, Vec<u8>)) {
            self.by.push((tag, change.0, change.1.clone()));
            self.changes.push(change);
        }

        fn parent_is_dir(&self, path: &[u8]) -> bool {
            match path.iter().rposition(|b| *b == b'/') {
                Some(0) => true,
                Some(i) => self.nodes.get(&path[..i]).is_some_and(Node::is_dir),
                None => false,
            }
        }

        fn children(&self, dir: &[u8]) -> Vec<Vec<u8>> {
            let mut prefix = dir.to_vec();
            if prefix.last() != Some(&b'/') {
                prefix.push(b'/');
            }
            self.nodes
                .keys()
                .filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains(&b'/'))
                .cloned()
                .collect()
        }

        fn is_dir(&self, path: &[u8]) -> bool {
            path == b"/" || self.nodes.get(path).is_some_and(Node::is_dir)
        }

        fn rename(&mut self, from: &[u8], to: &[u8]) -> u32 {
            let Some(node) = self.nodes.get(from).cloned() else {
                return FX_NO_SUCH_FILE;
            };
            if !self.parent_is_dir(to) {
                return FX_NO_SUCH_FILE;
            }
            if let Some(there) = self.nodes.get(to)
                && (there.is_dir() != node.is_dir() || !self.children(to).is_empty())
            {
                return FX_FAILURE;
            }
            let mut below = from.to_vec();
            below.push(b'/');
            let moved: Vec<Vec<u8>> = self
                .nodes
                .keys()
                .filter(|k| k.starts_with(&below))
                .cloned()
                .collect();
            self.nodes.remove(from);
            self.nodes.insert(to.to_vec(), node);
            for old in moved {
                let n = self.nodes.remove(&old).unwrap();
                let mut new = to.to_vec();
                new.extend_from_slice(&old[from.len()..]);
                self.nodes.insert(new, n);
            }
            FX_OK
        }
    }

    enum Open {
        File(Vec<u8>),
        Dir { listed: bool, path: Vec<u8> },
    }

    /// One session's byte stream to a [`FakeFs`]: answers each request as
    /// it is written, like [`FakeServer`].
    pub(crate) struct FakeStream {
        fs: std::sync::Arc<std::sync::Mutex<FakeFs>>,
        open: HashMap<u32, Open>,
        next_handle: u32,
        input: Vec<u8>,
        output: std::collections::VecDeque<u8>,
        tag: u8,
        /// Its number among the streams to its file system, and the writes made.
        number: usize,
        writes: usize,
        /// What each open handle wrote (offset, length), for a failed CLOSE.
        written: HashMap<u32, Vec<(usize, usize)>>,
        /// This stream broke ([`FakeFs::break_stream`]).
        broken: bool,
    }

    impl FakeStream {
        /// A stream whose changes [`FakeFs::by`] records with `tag`.
        pub(crate) fn tagged(fs: std::sync::Arc<std::sync::Mutex<FakeFs>>, tag: u8) -> FakeStream {
            let number = {
                let mut fs = fs.lock().unwrap();
                fs.streams_made += 1;
                fs.streams_made - 1
            };
            FakeStream {
                number,
                writes: 0,
                written: HashMap::new(),
                fs,
                open: HashMap::new(),
                next_handle: 0,
                input: Vec::new(),
                output: Default::default(),
                tag,
                broken: false,
            }
        }

        fn answer(&mut self, kind: u8, id: Option<u32>, body: &[u8]) {
            self.output.extend(frame(kind, id, body));
        }

        fn status(&mut self, id: u32, code: u32) {
            let mut b = Vec::new();
            put_u32(&mut b, code);
            put_str(&mut b, format!("fake status {code}").as_bytes());
            put_str(&mut b, b"");
            self.answer(STATUS, Some(id), &b);
        }

        fn new_handle(&mut self, id: u32, open: Open) {
            self.next_handle += 1;
            self.open.insert(self.next_handle, open);
            let mut b = Vec::new();
            put_str(&mut b, &self.next_handle.to_be_bytes());
            self.answer(HANDLE, Some(id), &b);
        }

        fn handle_of(r: &mut Reader<'_>) -> u32 {
            let h = r.string().unwrap();
            u32::from_be_bytes(h.try_into().unwrap_or([0; 4]))
        }

        /// The path of an open file or folder.
        fn open_path(&self, h: u32) -> Option<Vec<u8>> {
            match self.open.get(&h)? {
                Open::File(path) | Open::Dir { path, .. } => Some(path.clone()),
            }
        }

        fn handle_packet(&mut self, kind: u8, body: &[u8]) {
            let mut r = Reader { data: body };
            if kind == INIT {
                let mut b = Vec::new();
                put_u32(&mut b, 3);
                for ext in [
                    "posix-rename@openssh.com",
                    "lsetstat@openssh.com",
                    "fsync@openssh.com",
                ] {
                    put_str(&mut b, ext.as_bytes());
                    put_str(&mut b, b"1");
                }
                self.answer(VERSION, None, &b);
                return;
            }
            let id = r.u32().unwrap();
            let code = self.serve(kind, id, &mut r);
            if let Some(code) = code {
                self.status(id, code);
            }
        }

        /// Answers one request; returns the status to answer with, if not
        /// answered already.
        fn serve(&mut self, kind: u8, id: u32, r: &mut Reader<'_>) -> Option<u32> {
            let tag = self.tag;
            let fs = self.fs.clone();
            let mut fs = fs.lock().unwrap();
            let mut peek = Reader { data: r.data };
            let writes = match kind {
                OPEN => {
                    let _ = peek.string();
                    peek.u32().unwrap() & OPEN_WRITE != 0
                }
                WRITE | FSETSTAT | REMOVE | MKDIR | RMDIR => true,
                EXTENDED => peek.string().unwrap() != b"fsync@openssh.com",
                _ => false,
            };
            if writes && fs.read_only {
                return Some(FX_PERMISSION_DENIED);
            }
            match kind {
                OPEN => {
                    let path = r.string().unwrap().to_vec();
                    let flags = r.u32().unwrap();
                    let attrs = Attrs::decode(r).unwrap();
                    if flags & OPEN_WRITE != 0 && flags & OPEN_CREATE == 0 {
                        // A further handle on a temporary (a big file's
                        // stripes): never anything outside the folders of
                        // temporaries, never a folder, never a new file.
                        let is_file = fs
                            .nodes
                            .get(&path)
                            .is_some_and(|n| n.mode & 0o170000 == 0o100000);
                        if !path.starts_with(b"/.sftp-ha-tmp/") || !is_file {
                            return Some(FX_FAILURE);
                        }
                    } else if flags & OPEN_WRITE != 0 {
                        if flags & OPEN_EXCLUSIVE == 0 {
                            return Some(FX_FAILURE);
                        }
                        if fs.nodes.contains_key(&path) || path == b"/" {
                            return Some(FX_FAILURE);
                        }
                        if !fs.parent_is_dir(&path) {
                            return Some(FX_NO_SUCH_FILE);
                        }
                        let node = Node::file(b"", attrs.mode.unwrap_or(0o644) & 0o7777);
                        fs.nodes.insert(path.clone(), node);
                        fs.note(tag, (OPEN, path.clone()));
                    } else if !fs.is_dir(&path) && !fs.nodes.contains_key(&path) {
                        return Some(FX_NO_SUCH_FILE);
                    }
                    drop(fs);
                    self.new_handle(id, Open::File(path));
                    None
                }
                OPENDIR => {
                    let path = r.string().unwrap().to_vec();
                    if !fs.is_dir(&path) {
                        return Some(FX_NO_SUCH_FILE);
                    }
                    drop(fs);
                    self.new_handle(
                        id,
                        Open::Dir {
                            listed: false,
                            path,
                        },
                    );
                    None
                }
                READDIR => {
                    let h = Self::handle_of(r);
                    let Some(Open::Dir { listed, path }) = self.open.get_mut(&h) else {
                        return Some(FX_FAILURE);
                    };
                    if *listed {
                        return Some(FX_EOF);
                    }
                    *listed = true;
                    let children = fs.children(path);
                    let mut b = Vec::new();
                    put_u32(&mut b, children.len() as u32);
                    for child in &children {
                        let name = &child[child.iter().rposition(|c| *c == b'/').unwrap() + 1..];
                        put_str(&mut b, name);
                        put_str(&mut b, name);
                        fs.nodes[child].attrs().encode(&mut b);
                    }
                    drop(fs);
                    self.answer(NAME, Some(id), &b);
                    None
                }
                READ => {
                    let h = Self::handle_of(r);
                    let offset = r.u64().unwrap() as usize;
                    let len = r.u32().unwrap() as usize;
                    let data = self
                        .open_path(h)
                        .and_then(|p| fs.nodes.get(&p))
                        .map(|n| n.data.clone());
                    drop(fs);
                    match data {
                        Some(data) if offset < data.len() => {
                            let mut b = Vec::new();
                            put_str(&mut b, &data[offset..data.len().min(offset + len)]);
                            self.answer(DATA, Some(id), &b);
                            None
                        }
                        Some(_) => Some(FX_EOF),
                        None => Some(FX_FAILURE),
                    }
                }
                WRITE => {
                    let h = Self::handle_of(r);
                    let offset = r.u64().unwrap() as usize;
                    let data = r.string().unwrap();
                    let Some(node) = self.open_path(h).and_then(|p| fs.nodes.get_mut(&p)) else {
                        return Some(FX_FAILURE);
                    };
                    if node.data.len() < offset + data.len() {
                        node.data.resize(offset + data.len(), 0);
                    }
                    node.data[offset..offset + data.len()].copy_from_slice(data);
                    self.written
                        .entry(h)
                        .or_default()
                        .push((offset, data.len()));
                    Some(FX_OK)
                }
                FSETSTAT => {
                    let h = Self::handle_of(r);
                    let attrs = Attrs::decode(r).unwrap();
                    let Some(path) = self.open_path(h) else {
                        return Some(FX_FAILURE);
                    };
                    let Some(node) = fs.nodes.get_mut(&path) else {
                        return Some(FX_NO_SUCH_FILE);
                    };
                    node.set(&attrs);
                    fs.note(tag, (FSETSTAT, path));
                    Some(FX_OK)
                }
                CLOSE => {
                    let h = Self::handle_of(r);
                    let written = self.written.remove(&h).unwrap_or_default();
                    let Some(Open::File(path) | Open::Dir { path, .. }) = self.open.remove(&h)
                    else {
                        return Some(FX_FAILURE);
                    };
                    if fs.fail_close_on_stream == Some(self.number) {
                        if let Some(node) = fs.nodes.get_mut(&path) {
                            for (offset, len) in written {
                                node.data[offset..offset + len].fill(0);
                            }
                        }
                        return Some(FX_FAILURE);
                    }
                    Some(FX_OK)
                }
                LSTAT => {
                    let path = r.string().unwrap();
                    let attrs = if path == b"/" {
                        Node::dir(0o755).attrs()
                    } else {
                        match fs.nodes.get(path) {
                            Some(node) => node.attrs(),
                            None => return Some(FX_NO_SUCH_FILE),
                        }
                    };
                    drop(fs);
                    let mut b = Vec::new();
                    attrs.encode(&mut b);
                    self.answer(ATTRS, Some(id), &b);
                    None
                }
                MKDIR => {
                    let path = r.string().unwrap().to_vec();
                    let attrs = Attrs::decode(r).unwrap();
                    if fs.nodes.contains_key(&path) || path == b"/" {
                        return Some(FX_FAILURE);
                    }
                    if !fs.parent_is_dir(&path) {
                        return Some(FX_NO_SUCH_FILE);
                    }
                    let node = Node::dir(attrs.mode.unwrap_or(0o755) & 0o7777);
                    fs.nodes.insert(path.clone(), node);
                    fs.note(tag, (MKDIR, path));
                    Some(FX_OK)
                }
                RMDIR | REMOVE => {
                    let path = r.string().unwrap().to_vec();
                    let Some(node) = fs.nodes.get(&path) else {
                        return Some(FX_NO_SUCH_FILE);
                    };
                    if node.is_dir() != (kind == RMDIR) || !fs.children(&path).is_empty() {
                        return Some(FX_FAILURE);
                    }
                    fs.nodes.remove(&path);
                    fs.note(tag, (kind, path));
                    Some(FX_OK)
                }
                EXTENDED => {
                    let name = r.string().unwrap();
                    Some(match name {
                        b"posix-rename@openssh.com" => {
                            let from = r.string().unwrap();
                            let to = r.string().unwrap();
                            let code = fs.rename(from, to);
                            if code == FX_OK {
                                fs.note(tag, (EXTENDED, to.to_vec()));
                            }
                            code
                        }
                        b"lsetstat@openssh.com" => {
                            let path = r.string().unwrap();
                            let attrs = Attrs::decode(r).unwrap();
                            // In a chroot, sftp-server cannot set a mode without
                            // following links (no /proc): it fails.
                            if attrs.mode.is_some() {
                                return Some(FX_FAILURE);
                            }
                            let Some(node) = fs.nodes.get_mut(path) else {
                                return Some(FX_NO_SUCH_FILE);
                            };
                            node.set(&attrs);
                            fs.note(tag, (EXTENDED, path.to_vec()));
                            FX_OK
                        }
                        b"fsync@openssh.com" => {
                            if self.open.contains_key(&Self::handle_of(r)) {
                                FX_OK
                            } else {
                                FX_FAILURE
                            }
                        }
                        _ => FX_FAILURE,
                    })
                }
                _ => Some(FX_FAILURE),
            }
        }
    }

    impl Write for FakeStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            loop {
                let (cut_off, stalled) = {
                    let fs = self.fs.lock().map_err(|_| io::Error::other("poisoned"))?;
                    self.writes += 1;
                    if fs.break_stream == Some((self.number, self.writes)) {
                        self.broken = true;
                    }
                    (fs.cut_off, fs.stalled)
                };
                if cut_off || self.broken {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "cut off"));
                }
                if !stalled {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.input.extend_from_slice(buf);
            while self.input.len() >= 4 {
                let len = u32::from_be_bytes([
                    self.input[0],
                    self.input[1],
                    self.input[2],
                    self.input[3],
                ]) as usize;
                if self.input.len() < 4 + len {
                    break;
                }
                let packet: Vec<u8> = self.input.drain(..4 + len).skip(4).collect();
                self.handle_packet(packet[0], &packet[1..]);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for FakeStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.broken {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "broken"));
            }
            if self.output.is_empty() {
                // A real stream would block forever: a test bug, said at once.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no answer due",
                ));
            }
            let n = buf.len().min(self.output.len());
            for (b, v) in buf.iter_mut().zip(self.output.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fake::FakeServer;

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

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn downloads_whole_files_pipelined_and_in_order() {
        for (len, max_read) in [
            (0, CHUNK),
            (10, CHUNK),
            (CHUNK, CHUNK),
            (5 * CHUNK + 17, CHUNK),
            (100 * CHUNK + 3, CHUNK),
            // Every READ answered short: the gaps are asked for again.
            (3 * CHUNK + 5, 1000),
        ] {
            let data = content(len);
            let server = FakeServer::new(&[(b"/u/f", data.clone())], max_read);
            let mut c = SftpClient::new(server).unwrap();
            let mut out = Vec::new();
            assert_eq!(c.download(b"/u/f", &mut out).unwrap(), len as u64);
            assert!(out == data, "{len} bytes, {max_read} per read");
            assert!(c.early.is_empty(), "no answer left behind");
            assert!(c.stream.open.is_empty(), "the handle is closed");
            if len > WINDOW * CHUNK {
                assert!(
                    c.stream.most_unanswered >= WINDOW,
                    "reads are pipelined: {}",
                    c.stream.most_unanswered
                );
            }
        }
    }

    #[test]
    fn a_missing_file_is_no_such_file() {
        let mut c = SftpClient::new(FakeServer::new(&[], CHUNK)).unwrap();
        let err = c.download(b"/u/gone", &mut Vec::new()).unwrap_err();
        assert!(err.is_no_such_file(), "{err}");
        let err = c.read_all(b"/u/gone", 10).unwrap_err();
        assert!(err.is_no_such_file(), "{err}");
    }

    #[test]
    fn read_all_keeps_to_its_limit() {
        let big = content(3 * CHUNK);
        let server = FakeServer::new(
            &[(b"/small", b"abc".to_vec()), (b"/big", big.clone())],
            CHUNK,
        );
        let mut c = SftpClient::new(server).unwrap();
        assert_eq!(c.read_all(b"/small", 3).unwrap(), b"abc");
        assert_eq!(c.stream.reads.len(), 3, "{:?}", c.stream.reads);
        c.stream.reads.clear();
        assert_eq!(c.read_all(b"/small", 100).unwrap(), b"abc");
        assert!(
            c.stream.reads.len() <= 3,
            "a small limit sends few reads: {:?}",
            c.stream.reads
        );
        let err = c.read_all(b"/small", 2).unwrap_err();
        assert!(matches!(err, SftpError::TooLarge { limit: 2, .. }), "{err}");
        assert!(err.to_string().contains("/small"), "{err}");
        let err = c.read_all(b"/big", CHUNK as u64).unwrap_err();
        assert!(matches!(err, SftpError::TooLarge { .. }), "{err}");
        // The session is still usable after a refusal.
        assert!(c.early.is_empty() && c.stream.open.is_empty());
        assert_eq!(c.read_all(b"/big", big.len() as u64).unwrap(), big);
    }

    #[test]
    fn a_bad_data_reply_is_a_protocol_error() {
        let mut c = SftpClient::new(FakeServer::new(&[], CHUNK)).unwrap();
        // A DATA answer with more than was asked for.
        let mut b = Vec::new();
        put_str(&mut b, &[0u8; 10]);
        c.early.insert(
            77,
            Reply {
                kind: DATA,
                body: b,
            },
        );
        assert!(matches!(
            c.read_reply(77, b"/f", 5),
            Err(SftpError::Protocol(_))
        ));
        let mut b = Vec::new();
        put_str(&mut b, &[]);
        c.early.insert(
            78,
            Reply {
                kind: DATA,
                body: b,
            },
        );
        assert!(matches!(
            c.read_reply(78, b"/f", 5),
            Err(SftpError::Protocol(_))
        ));
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
