//! Logging in to an SFTP server as an ordinary user, as any client would:
//! the host key checked against a known_hosts file, then a password or a key.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2::{CheckResult, KnownHostFileKind, Session};

use super::StressError;
use crate::config::Endpoint;
use crate::sync::sftp::SftpClient;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How to prove who we are.
#[derive(Debug, Clone)]
pub enum Auth {
    Password(String),
    Key(PathBuf),
}

/// Who logs in, how, and which host keys are trusted.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub auth: Auth,
    pub known_hosts: PathBuf,
}

/// One SFTP session to a server.
pub struct Connection {
    _session: Session,
    pub sftp: SftpClient<ssh2::Channel>,
}

pub fn connect(endpoint: &Endpoint, login: &Login) -> Result<Connection, StressError> {
    let fail = |message: String| StressError::Connect {
        endpoint: endpoint.to_string(),
        message,
    };
    let (session, _) =
        crate::sync::transport::handshake(endpoint, CONNECT_TIMEOUT, IO_TIMEOUT).map_err(fail)?;
    check_host_key(&session, endpoint, &login.known_hosts)?;
    let auth_failed = |e: ssh2::Error| StressError::Auth {
        endpoint: endpoint.to_string(),
        user: login.user.clone(),
        message: e.message().to_string(),
    };
    match &login.auth {
        Auth::Password(p) => session.userauth_password(&login.user, p),
        Auth::Key(k) => session.userauth_pubkey_file(&login.user, None, k, None),
    }
    .map_err(auth_failed)?;
    let mut channel = session.channel_session().map_err(|e| fail(e.to_string()))?;
    channel.subsystem("sftp").map_err(|e| fail(e.to_string()))?;
    let sftp = SftpClient::new(channel).map_err(StressError::Sftp)?;
    Ok(Connection {
        _session: session,
        sftp,
    })
}

fn check_host_key(session: &Session, endpoint: &Endpoint, file: &Path) -> Result<(), StressError> {
    let refuse = |message: String| StressError::HostKey {
        endpoint: endpoint.to_string(),
        message,
    };
    let (key, _) = session
        .host_key()
        .ok_or_else(|| refuse("the server showed no host key".into()))?;
    let mut known = session.known_hosts().map_err(|e| refuse(e.to_string()))?;
    known
        .read_file(file, KnownHostFileKind::OpenSSH)
        .map_err(|e| refuse(format!("cannot read {}: {}", file.display(), e.message())))?;
    let add = format!(
        "check it, then add it with: ssh-keyscan -t ed25519 -p {} {} >> {}",
        endpoint.port,
        endpoint.host,
        file.display()
    );
    match known.check_port(&endpoint.host, endpoint.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound => Err(refuse(format!(
            "its ed25519 host key is not in {}; {add}",
            file.display()
        ))),
        CheckResult::Mismatch => Err(refuse(format!(
            "its host key DIFFERS from the one in {}: the server was reinstalled or someone is in between",
            file.display()
        ))),
        CheckResult::Failure => Err(refuse(format!(
            "cannot check it against {}",
            file.display()
        ))),
    }
}

/// Asks for a password on the terminal without echoing it.
pub fn prompt_password(prompt: &str) -> std::io::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    if !tty.is_terminal() {
        return Err(std::io::Error::other("no terminal to ask on"));
    }
    let saved = tcgetattr(&tty).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    (&tty).write_all(prompt.as_bytes())?;
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
