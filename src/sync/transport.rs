//! The connection to the standby: SSH (libssh2, through ssh2) with the pinned
//! host key and the master's sync key, then the SFTP subsystem.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sftp::{SftpClient, SftpError};
use crate::config::Endpoint;
use crate::pair::SYNC_USER;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Any single SSH operation that takes longer means the standby is unreachable
/// (a cut link shows as silence, not as an error).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalives keep NAT and firewalls open and, with [`UNACKED_LIMIT`], notice
/// a dead peer on a quiet link: libssh2 sends them without waiting for an
/// answer, so it is TCP that must give up when they go unacknowledged.
const KEEPALIVE_SECS: u32 = 5;
/// Sent data unacknowledged this long breaks the connection (TCP_USER_TIMEOUT):
/// a standby cut off silently is noticed within KEEPALIVE_SECS plus this,
/// even when nothing is being replicated.
const UNACKED_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach the standby {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error(
        "no host key of the peer is pinned; fix: run `sftp-ha pair trust-peer HOST[:PORT]` on this host"
    )]
    NotPinned,
    #[error(
        "the standby {endpoint} presented a host key that is not the pinned one: sync stopped; if the standby was reinstalled, check its fingerprint and run `sftp-ha pair trust-peer --replace`"
    )]
    HostKeyMismatch { endpoint: String },
    #[error(
        "the peer {endpoint} refused this host's sync key: {message}; fix: run `sftp-ha pair accept-peer '<key from sftp-ha pair show-key here>'` on the peer"
    )]
    Auth { endpoint: String, message: String },
    #[error(
        "the peer {endpoint} does not accept replication: it is not a standby (it was made master while this host was away?), so nothing is sent to it and nothing there is changed; fix: if it is the master now, stop taking uploads here and make this host its standby; files uploaded here meanwhile stay here"
    )]
    NotAStandby { endpoint: String },
    #[error(
        "the peer {endpoint} is not this host's standby: {reason}; nothing is sent to it meanwhile"
    )]
    PeerRole { endpoint: String, reason: String },
    #[error(
        "the peer {endpoint} published a role this host cannot read ({message}); nothing is sent to it; fix: install the same sftp-ha version on both hosts"
    )]
    BadPeerRole { endpoint: String, message: String },
    #[error(
        "cannot reconcile with the former master {endpoint}: {message}; nothing is mirrored to it until this is fixed (it is tried again every few seconds)"
    )]
    Reconcile { endpoint: String, message: String },
    #[error("this host steps down: {reason}")]
    SteppedDown { reason: String },
    #[error(
        "the standby {endpoint} has the same host key as the standby {other}, also listed in `[sync] peer` of config.toml: they are one host under two names, and two workers writing to it at once would undo each other's work; nothing is replicated to {endpoint} (everything goes through {other}); fix: list the host once in `[sync] peer` and run `systemctl reload sftp-ha` (if they really are two hosts, pin each one's own key with `sftp-ha pair trust-peer --replace HOST[:PORT]`)"
    )]
    SameHost { endpoint: String, other: String },
    #[error(
        "the standby {endpoint} is still being written to by the replication to {other} started before the last reload or role change, which was told to stop and has not yet (it ends after its current request); nothing is sent to {endpoint} until it has"
    )]
    PreviousWorker { endpoint: String, other: String },
    #[error("replication was told to stop")]
    Stopped,
    #[error("SFTP with the standby: {0}")]
    Sftp(#[from] SftpError),
}

impl TransportError {
    /// Errors that trying again cannot fix: they need the admin.
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            TransportError::NotPinned
                | TransportError::HostKeyMismatch { .. }
                | TransportError::Auth { .. }
                | TransportError::NotAStandby { .. }
                | TransportError::PeerRole { .. }
                | TransportError::BadPeerRole { .. }
                | TransportError::SteppedDown { .. }
                | TransportError::Reconcile { .. }
                | TransportError::SameHost { .. }
        )
    }
}

pub struct Standby {
    // Kept alive for the channel inside `sftp`.
    _session: ssh2::Session,
    pub sftp: SftpClient<ssh2::Channel>,
    /// The session's socket, to shut it down before libssh2 frees the session.
    socket: TcpStream,
}

impl Standby {
    /// Sends an SSH keepalive if one is due (every KEEPALIVE_SECS): keeps
    /// firewalls and NAT from dropping an idle connection, and a dead standby
    /// is found by the failing send rather than by the next transfer.
    pub fn keepalive(&self) -> Result<(), TransportError> {
        self._session.keepalive_send().map(|_| ()).map_err(|e| {
            TransportError::Sftp(super::sftp::SftpError::Io(std::io::Error::other(format!(
                "keepalive: {}",
                e.message()
            ))))
        })
    }
}

impl Drop for Standby {
    /// A dropped connection is aborted, not closed politely:
    /// - libssh2 would wait for the answer to its channel close, up to the IO
    ///   timeout, from a standby that may be the reason we drop it: with the
    ///   read side shut down, that wait ends at once;
    /// - requests still queued in the kernel (a cut link) would otherwise reach
    ///   the standby seconds later, after a new connection has redone them, and
    ///   leave stray temporary files: with SO_LINGER 0 the last close discards
    ///   them and resets the connection.
    fn drop(&mut self) {
        let abort = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ =
            nix::sys::socket::setsockopt(&self.socket, nix::sys::socket::sockopt::Linger, &abort);
        let _ = self.socket.shutdown(std::net::Shutdown::Read);
    }
}

/// What the replication worker needs of a session with the standby: its SFTP
/// client, and a keepalive while it is idle. [`Standby`] is the real one (SSH);
/// tests use an in-memory server.
pub trait Session: Send {
    type Stream: Read + Write;
    fn sftp(&mut self) -> &mut SftpClient<Self::Stream>;
    /// Sends a keepalive if one is due; an error means the session is lost.
    fn keepalive(&self) -> Result<(), TransportError>;
}

impl Session for Standby {
    type Stream = ssh2::Channel;

    fn sftp(&mut self) -> &mut SftpClient<ssh2::Channel> {
        &mut self.sftp
    }

    fn keepalive(&self) -> Result<(), TransportError> {
        Standby::keepalive(self)
    }
}

/// How the worker opens sessions with the standby; several may be opened at
/// once, from several threads (the extra sessions of a run of uploads).
pub trait Connector: Sync {
    type Session: Session;
    fn open(&self) -> Result<Self::Session, TransportError>;
    /// The host key a session it opened was checked against (the pinned
    /// one): two names of one host have the same (see [`super::owner`]).
    fn host_key(&self) -> Option<String> {
        None
    }
}

/// The real connector: SSH to the standby with the pinned host key and this
/// host's sync key, both from the state dir (read again on every connect).
pub struct SshConnector {
    pub standby: Endpoint,
    pub state_dir: PathBuf,
    /// Its place in `[sync] peer`: which pinned host key is its.
    pub position: usize,
}

impl Connector for SshConnector {
    type Session = Standby;

    fn open(&self) -> Result<Standby, TransportError> {
        let pinned = crate::pair::pinned_host_key_of(&self.state_dir, self.position, &self.standby);
        let key = crate::pair::key_path(&self.state_dir);
        Standby::connect(&self.standby, pinned.as_deref(), &key)
    }

    fn host_key(&self) -> Option<String> {
        crate::pair::pinned_host_key_of(&self.state_dir, self.position, &self.standby)
    }
}

/// Opens TCP to `endpoint` and does the SSH handshake, offering only the
/// ed25519 host key type: the one we pin, and the one every OpenSSH server
/// has, so a server cannot answer with another key instead. Returns the
/// session and a handle on its socket; the error is a message for a person.
pub fn handshake(
    endpoint: &Endpoint,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<(ssh2::Session, TcpStream), String> {
    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the name has no address")?;
    let tcp = TcpStream::connect_timeout(&addr, connect_timeout).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let unacked = u32::try_from(UNACKED_LIMIT.as_millis()).unwrap_or(u32::MAX);
    if let Err(err) =
        nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::TcpUserTimeout, &unacked)
    {
        tracing::debug!("cannot set TCP_USER_TIMEOUT: {err}");
    }
    let socket = tcp.try_clone().map_err(|e| e.to_string())?;
    let mut session = ssh2::Session::new().map_err(|e| e.to_string())?;
    session.set_tcp_stream(tcp);
    session.set_timeout(u32::try_from(io_timeout.as_millis()).unwrap_or(u32::MAX));
    session
        .method_pref(ssh2::MethodType::HostKey, "ssh-ed25519")
        .map_err(|e| e.to_string())?;
    session.handshake().map_err(|e| e.to_string())?;
    Ok((session, socket))
}

impl Standby {
    /// Connects, checks the host key against `pinned` (`ssh-ed25519 BASE64`),
    /// authenticates with `key`, and opens SFTP.
    pub fn connect(
        endpoint: &Endpoint,
        pinned: Option<&str>,
        key: &Path,
    ) -> Result<Standby, TransportError> {
        let pinned = pinned.ok_or(TransportError::NotPinned)?;
        let fail = |message: String| TransportError::Connect {
            endpoint: endpoint.to_string(),
            message,
        };
        let (session, socket) = handshake(endpoint, CONNECT_TIMEOUT, IO_TIMEOUT).map_err(fail)?;
        let (blob, _) = session
            .host_key()
            .ok_or_else(|| fail("no host key".into()))?;
        let offered = format!("ssh-ed25519 {}", base64(blob));
        if offered != pinned {
            return Err(TransportError::HostKeyMismatch {
                endpoint: endpoint.to_string(),
            });
        }
        session
            .userauth_pubkey_file(SYNC_USER, None, key, None)
            .map_err(|e| TransportError::Auth {
                endpoint: endpoint.to_string(),
                message: e.message().to_string(),
            })?;
        session.set_keepalive(true, KEEPALIVE_SECS);
        tracing::debug!(
            cipher = session.methods(ssh2::MethodType::CryptCs).unwrap_or("?"),
            mac = session.methods(ssh2::MethodType::MacCs).unwrap_or("?"),
            "SSH session to the standby"
        );
        let mut channel = session.channel_session().map_err(|e| fail(e.to_string()))?;
        channel.subsystem("sftp").map_err(|e| fail(e.to_string()))?;
        let sftp = SftpClient::new(channel)?;
        Ok(Standby {
            _session: session,
            sftp,
            socket,
        })
    }
}

/// Standard base64 with padding (what OpenSSH writes in key lines).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input.as_bytes()), expected);
        }
    }
}
