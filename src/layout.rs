//! The names sftp-ha itself gives to accounts, groups and files on the host.
//! They live here, apart from the code that uses them, so that `pair`, `sshd`
//! and `accounts` can share them without importing one another, and so that
//! users.yaml can refuse every one of them.

/// The group every managed account is in; sshd's Match block keys on it.
pub const MANAGED_GROUP: &str = "sftp-ha";
/// The group of admins, who get the admin folder.
pub const ADMIN_GROUP: &str = "sftp-ha-admin";
/// The standby account the master logs in as (uid 0; see [`crate::pair`]).
pub const SYNC_USER: &str = "sftp-ha-sync";
/// The master's public key, on the standby (root, 0600, outside the data dir).
pub const SYNC_KEYS: &str = "/etc/sftp-ha/sync_authorized_keys";

/// The daemon's SFTP log socket, at the top of the data dir (outside every
/// chroot; hard-linked into each as `dev/log`).
pub const LOG_SOCKET: &str = ".sftp-ha-log.sock";

/// On the master, the users.yaml as last applied, written by the daemon at the
/// top of the data dir (root's, outside every chroot, so no user can write
/// it) and replicated: the only users.yaml a standby applies.
pub const PUBLISHED_USERS: &str = ".sftp-ha-users.yaml";

/// Every account and group name sftp-ha creates; users.yaml may use none of
/// them (a user named like the sync account would get its sshd Match block).
pub const OWN_NAMES: &[&str] = &[MANAGED_GROUP, ADMIN_GROUP, SYNC_USER];

/// At the top of the data dir (root's, 0700, outside every chroot and never
/// replicated): how this host and its peer tell each other their roles. The
/// peer reaches it over the sync account, which is chrooted in the data dir.
pub const CONTROL_DIR: &str = ".sftp-ha-ctl";
/// In [`CONTROL_DIR`]: this host's role and epoch, written by its daemon for
/// the peer to read.
pub const ROLE_FILE: &str = "role.json";
/// In [`CONTROL_DIR`]: written there by the peer while it is this host's
/// master: its epoch, and a handover when it gives the role away.
pub const CLAIM_FILE: &str = "claim.json";
/// How far the master found this standby caught up ([`crate::role::Position`]).
pub const POSITION_FILE: &str = "position.json";
/// In [`CONTROL_DIR`] of a host that stepped down from master: the files it
/// had written that its standby had not confirmed (hex paths, one a line),
/// so the new master treats them as changed there even where size and mtime
/// look unchanged.
pub const CHANGED_FILE: &str = "changed";
