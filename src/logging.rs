//! Logging: structured events to the journal when there is one, else to stderr.
//!
//! Our own fields get the `SFTP_HA_` prefix in the journal, so an event logged
//! with `user = "bob"` can be found with `journalctl -u sftp-ha SFTP_HA_USER=bob`.
//! Passwords and hashes are never logged: no event anywhere carries one.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogLevel;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Prefix of our journal fields: `user` becomes `SFTP_HA_USER`.
pub const JOURNAL_FIELD_PREFIX: &str = "SFTP_HA";

/// Changes the level after start-up (config loaded, SIGHUP).
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` overrides the config when set.
    from_env: bool,
}

impl LogHandle {
    /// Applies the config's level unless `RUST_LOG` decides.
    pub fn set_level(&self, level: LogLevel) {
        if self.from_env {
            return;
        }
        if let Err(err) = self.filter.reload(EnvFilter::new(level.as_str())) {
            tracing::warn!("could not change the log level: {err}");
        }
    }
}

fn env_filter(default: LogLevel) -> (EnvFilter, bool) {
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, true),
            Err(err) => {
                eprintln!("sftp-ha: ignoring RUST_LOG={spec:?}: {err}");
                (EnvFilter::new(default.as_str()), false)
            }
        },
        _ => (EnvFilter::new(default.as_str()), false),
    }
}

/// Logging for the daemon: the journal if its socket exists and accepts us, else stderr.
pub fn init_daemon(default: LogLevel) -> LogHandle {
    let (filter, from_env) = env_filter(default);
    let (filter, handle) = reload::Layer::new(filter);
    // `tracing_journald::layer()` fails where there is no journal: fall back, don't fail.
    let journald = if Path::new(JOURNAL_SOCKET).exists() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string())))
    } else {
        None
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    // A second init (only possible in tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
    LogHandle {
        filter: handle,
        from_env,
    }
}

/// Logging for one-shot commands: warnings and errors to stderr, short and plain.
pub fn init_cli() {
    let (filter, _) = env_filter(LogLevel::Warn);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .without_time()
                .with_target(false),
        )
        .try_init();
}

/// A tool's output as one journal-friendly line: lines joined with "; ",
/// other control characters (which make journalctl show a "blob") dropped.
pub fn one_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_joins_and_cleans() {
        assert_eq!(super::one_line("a\r\nb\x1b[0m\n\n"), "a; b[0m");
    }
}
