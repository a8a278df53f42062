//! Exit statuses, sysexits-style, so scripts and systemd can tell a config
//! error (fix the file) from a runtime error (look at the system).

use std::process::ExitCode;

/// Every status `sftp-ha` exits with. Documented in `sftp-ha --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A runtime error that fits no narrower status.
    Failure = 1,
    /// `status`: the daemon is not running (as LSB init scripts say).
    NotRunning = 3,
    /// The command line is wrong (EX_USAGE).
    Usage = 64,
    /// An input file (users.yaml) is invalid (EX_DATAERR).
    DataError = 65,
    /// An operating-system call failed (EX_OSERR).
    OsError = 71,
    /// A folder or file could not be created (EX_CANTCREAT).
    CantCreate = 73,
    /// Needs root (EX_NOPERM).
    NoPermission = 77,
    /// The config file is missing, unreadable or invalid (EX_CONFIG).
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// The EXIT STATUS section of `--help`.
pub const HELP: &str = "\
EXIT STATUS:
    0   success
    1   runtime error
    3   status: the daemon is not running
    64  wrong command line
    65  users.yaml is invalid (nothing was changed)
    71  an operating-system call failed
    73  a folder or file could not be created
    77  needs root
    78  config error: the file is missing, unreadable or invalid
";
