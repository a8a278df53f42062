//! sftp-ha: highly available chroot SFTP on two ordinary Linux hosts.
//!
//! The binary is a thin shell over this library: [`cli::main`] parses the
//! command line and dispatches. Areas live in their own modules: [`config`]
//! (the TOML file and its check), [`daemon`] (lifecycle, systemd notify,
//! signals), [`logging`], [`metrics`] (Prometheus), [`status`] (what `sftp-ha status` shows).

pub mod accounts;
pub mod cli;
pub mod command;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod failover;
pub mod fsutil;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod pair;
pub mod role;
pub mod sshd;
pub mod status;
pub mod stress;
pub mod sync;
pub mod timefmt;
