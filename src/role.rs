//! Live roles and epochs: who may take uploads, decided without I/O.
//!
//! `role` in config.toml is only the role a host starts with the very first
//! time. From then on the live role and an epoch decide: the epoch is a
//! counter that every promotion raises past any epoch either host has seen,
//! persisted in the state dir (`role.json`), so a host that comes back from a
//! crash or a power cut knows how old its claim is.
//!
//! The hosts tell each other through files in the data dir's control folder
//! ([`crate::layout::CONTROL_DIR`]), reached over the sync account:
//! - each host publishes a [`Published`] (`role.json`): its node name, role
//!   and epoch, and whether it asks to become master (a planned switchover);
//! - a master writes a [`Claim`] into its standby's folder (`claim.json`) on
//!   every connection: its epoch, and, to give the role away, a handover.
//!
//! The functions here take what a host knows and what it just learnt, and say
//! what to do; the daemon and the replication worker do the I/O. Rules:
//! - the higher epoch wins; a master that sees a higher epoch anywhere steps
//!   down at once;
//! - two masters with the same epoch (only possible after two forced
//!   promotions): the host whose node name sorts first stays master;
//! - a standby follows only a master whose epoch is not lower than its own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::config::Role;

/// The role file in the state dir.
const STATE_FILE: &str = "role.json";

/// This host's live role, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub role: Role,
    pub epoch: u64,
    /// When it took this role (unix seconds), and why, for the status.
    pub since: u64,
    pub reason: String,
    /// Still the role config.toml gave: no promotion, demotion or newer
    /// epoch has changed it since. While this holds, an admin who edits
    /// `role` in config.toml (the way before live roles) is followed.
    #[serde(default)]
    pub from_config: bool,
    /// This host was a master and may hold uploads its current master
    /// lacks: until that master says it has reconciled them (a claim whose
    /// `reconciled` names this token), the peer must not mirror over this
    /// host's tree. The token names the step-down, so an old claim about an
    /// earlier one never clears a later one.
    #[serde(default)]
    pub unreconciled: Option<u64>,
}

impl Live {
    /// The role on the very first start: what config.toml says. A master
    /// starts the first epoch; a standby knows none until a master claims it.
    pub fn first(role: Role, now: u64) -> Live {
        Live {
            role,
            epoch: u64::from(role == Role::Master),
            since: now,
            reason: "first start: the role in config.toml".into(),
            from_config: true,
            unreconciled: None,
        }
    }

    /// The admin changed `role` in config.toml of a host whose live role
    /// still came from it: followed, and a promotion raises the epoch like
    /// `sftp-ha promote` would. `None`: nothing to change (the config agrees,
    /// or the live role was changed since and the config only seeded it).
    pub fn follow_config(&self, configured: Role, now: u64) -> Option<Live> {
        if !self.from_config || self.role == configured {
            return None;
        }
        let epoch = match configured {
            Role::Master => self.epoch + 1,
            Role::Standby => self.epoch,
        };
        Some(Live {
            role: configured,
            epoch,
            since: now,
            reason: format!("role = \"{configured}\" set in config.toml by the admin"),
            from_config: true,
            // A master made standby by the admin may hold uploads.
            unreconciled: match configured {
                Role::Master => None,
                Role::Standby => self.unreconciled.or(Some(token(now, self.epoch))),
            },
        })
    }

    fn become_(&self, role: Role, epoch: u64, now: u64, reason: String) -> Live {
        Live {
            role,
            epoch,
            since: now,
            reason,
            from_config: false,
            // A master's own tree is the truth; a standby keeps what it had
            // to be reconciled, and a master stepping down has some.
            unreconciled: match (self.role, role) {
                (_, Role::Master) => None,
                (Role::Master, Role::Standby) => Some(token(now, epoch)),
                (Role::Standby, Role::Standby) => self.unreconciled,
            },
        }
    }
}

/// Names one step-down: when, and into which epoch.
fn token(now: u64, epoch: u64) -> u64 {
    (now << 16) | (epoch & 0xffff)
}

/// What a host tells its peer about itself (`<data>/.sftp-ha-ctl/role.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub node: String,
    pub role: Role,
    pub epoch: u64,
    /// A standby asks its master to hand the role over (`sftp-ha promote`).
    #[serde(default)]
    pub wants_master: bool,
    /// The standby's last users.yaml apply, for the master to report.
    #[serde(default)]
    pub users: Option<UsersOutcome>,
    /// See [`Live::unreconciled`]: the master reconciles before mirroring.
    #[serde(default)]
    pub unreconciled: Option<u64>,
    /// `[sync] storage = "shared"` on this host (missing: an older version,
    /// which only replicates).
    #[serde(default)]
    pub shared: bool,
}

/// Why a master must not work with `peer` at all: the two hosts disagree on
/// `[sync] storage`. A replicating master would copy the whole tree into a
/// shared-storage standby's own folder (its sync key's chroot), and a
/// shared-storage master would copy nothing to a standby that needs copies.
pub fn storage_mismatch(shared_here: bool, peer: &Published) -> Option<String> {
    let name = |shared: bool| if shared { "shared" } else { "replicated" };
    (shared_here != peer.shared).then(|| {
        format!(
            "it runs [sync] storage = \"{}\" and this host \"{}\"; fix: set the same storage on both hosts and restart both",
            name(peer.shared),
            name(shared_here)
        )
    })
}

/// A users.yaml apply on the standby, as the master shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersOutcome {
    pub at: u64,
    pub ok: bool,
    pub summary: String,
}

/// What a master writes into its standby's control folder (`claim.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub epoch: u64,
    /// Set when the master gives its role away: the standby becomes master
    /// with this epoch (one above the master's).
    #[serde(default)]
    pub handover: Option<u64>,
    /// The master offers its role (`sftp-ha demote`): a standby whose daemon
    /// runs answers by asking for it, as `promote` does, so a handover never
    /// goes to a host nobody runs.
    #[serde(default)]
    pub offer: bool,
    /// The master has reconciled this host's tree (brought back what only it
    /// had) for the step-down with this token: it may be mirrored over now.
    #[serde(default)]
    pub reconciled: Option<u64>,
}

/// What a master writes into each standby's control folder
/// (`position.json`) once that standby confirmed everything of one look at
/// the master's data dir: how far it is caught up. `promote` on a standby
/// whose master is gone compares its own with the other standbys' (see
/// [`judge_among_standbys`]), so that the most caught-up one is promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The master that wrote it, and its epoch then.
    pub master: String,
    pub epoch: u64,
    /// The standby has everything the master's tree held at this time
    /// (unix milliseconds of the master's clock, when that look began).
    pub through_ms: u64,
}

impl Position {
    /// Newer epochs first: a standby that followed a newer master is ahead
    /// of one that still has an older master's position.
    fn ahead_of(&self, other: &Position) -> bool {
        (self.epoch, self.through_ms) > (other.epoch, other.through_ms)
    }

    /// "everything of master M at epoch E through TIME".
    pub fn describe(&self) -> String {
        format!(
            "everything of master {} at epoch {} through {}",
            self.master,
            self.epoch,
            crate::timefmt::format_unix_ms(self.through_ms)
        )
    }
}

/// What `promote` learns of another standby listed in `[sync] peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherStandby {
    Answered {
        role: Published,
        position: Option<Position>,
    },
    /// Nobody answered (down, or the link is): why. Not waited for.
    Unreachable(String),
    /// Something answered but could not be asked (pairing: no pinned host
    /// key, another host key, the key refused; an unreadable role or
    /// position): it may well be further caught up, or a master.
    Unasked(String),
}

/// `promote` on a standby whose master does not answer, with other standbys
/// listed: refuses (with what to do) when another host is further caught up
/// than this one, is a master, follows a newer master, could not be asked,
/// or is level with this host and its node name sorts first (two standbys
/// promoted at once must not both go ahead); otherwise says what was
/// compared. Nothing would be lost either way (the new master reconciles
/// the others: what only they have comes back), but a standby further
/// behind would be the master of an older tree until then, and its users
/// would miss files a moment. `node` is this host's node name.
pub fn judge_among_standbys(
    me: &Live,
    node: &str,
    mine: Option<&Position>,
    others: &[(String, OtherStandby)],
) -> Result<String, String> {
    let nothing = || "nothing confirmed by a master".to_string();
    let here = mine.map_or_else(nothing, Position::describe);
    let mut notes = Vec::new();
    for (name, other) in others {
        let (role, theirs) = match other {
            OtherStandby::Unreachable(why) => {
                notes.push(format!("{name} could not be compared: {why}"));
                continue;
            }
            OtherStandby::Unasked(why) => {
                return Err(format!(
                    "the other standby {name} answered but could not be asked ({why}), so it may be further caught up, or a master; nothing changed. Fix the pairing with it (sftp-ha pair trust-peer / accept-peer), or if it cannot serve, sftp-ha promote --force"
                ));
            }
            OtherStandby::Answered { role, position } => (role, position.as_ref()),
        };
        if role.role == Role::Master && role.epoch >= me.epoch {
            return Err(format!(
                "{name} is a master, at epoch {} (this host is at epoch {}), and takes uploads; nothing changed. A promotion asks the first host of [sync] peer for a handover: put {name} first there (and `systemctl reload sftp-ha`), then sftp-ha promote again",
                role.epoch, me.epoch
            ));
        }
        if role.epoch > me.epoch {
            return Err(format!(
                "the other standby {name} follows a newer master, at epoch {} (this host is at epoch {}): a host was promoted since; nothing changed. This host follows that master once its [sync] peer lists this host (see `sftp-ha status` on {name})",
                role.epoch, me.epoch
            ));
        }
        let further = match (theirs, mine) {
            (Some(t), Some(m)) => t.ahead_of(m),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if further {
            return Err(format!(
                "the other standby {name} is further caught up (it has {}; this host has {here}); nothing changed. Promote {name} instead (`sftp-ha promote` there), or if it cannot serve, `sftp-ha promote --force` here: {name} is then reconciled with this host when it is reached (what only it has comes here, nothing is lost)",
                theirs.map_or_else(nothing, Position::describe)
            ));
        }
        let level = match (theirs, mine) {
            (Some(t), Some(m)) => !m.ahead_of(t),
            (None, None) => true,
            _ => false,
        };
        if level && role.node.as_str() < node {
            return Err(format!(
                "the other standby {name} (node {}) is as far caught up as this host (both have {here}); of two level standbys the one whose node name sorts first is promoted, so that two promotions at once make one master; nothing changed. Promote {name} instead, or if it cannot serve, `sftp-ha promote --force` here",
                role.node
            ));
        }
        notes.push(format!(
            "{name} has {}",
            theirs.map_or_else(nothing, Position::describe)
        ));
    }
    Ok(format!("this host has {here}; {}", notes.join("; ")))
}

/// What a master's replication worker does after reading its peer's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerVerdict {
    /// The peer is our standby: replicate.
    Replicate,
    /// The peer asks for the role and we agree (same epoch): stop taking
    /// uploads, send the last changes, then hand over.
    HandOver,
    /// Someone holds a newer claim: this host must stop taking uploads now.
    StepDown { epoch: u64, reason: String },
    /// The peer is a master we outrank; it steps down when it reads our role.
    /// Nothing is sent meanwhile.
    Wait { reason: String },
}

/// A master (`me`, named `node`) judges the peer it has reached.
pub fn judge_peer(me: &Live, node: &str, peer: &Published) -> PeerVerdict {
    debug_assert_eq!(me.role, Role::Master);
    if peer.epoch > me.epoch {
        return PeerVerdict::StepDown {
            epoch: peer.epoch,
            reason: format!(
                "the peer {} is {} at epoch {}, newer than this host's epoch {}",
                peer.node, peer.role, peer.epoch, me.epoch
            ),
        };
    }
    match peer.role {
        Role::Standby if peer.wants_master && peer.epoch == me.epoch => PeerVerdict::HandOver,
        Role::Standby => PeerVerdict::Replicate,
        Role::Master if peer.epoch < me.epoch => PeerVerdict::Wait {
            reason: format!(
                "the peer {} is still a master, at the older epoch {}; it steps down when it sees this host's epoch {}",
                peer.node, peer.epoch, me.epoch
            ),
        },
        Role::Master if tie_winner(node, &peer.node) => PeerVerdict::Wait {
            reason: format!(
                "the peer {} is also a master at epoch {}: two forced promotions; {node} sorts first and stays master, the peer steps down",
                peer.node, peer.epoch
            ),
        },
        Role::Master => PeerVerdict::StepDown {
            epoch: peer.epoch,
            reason: format!(
                "the peer {} is also a master at epoch {}: two forced promotions; {} sorts first and stays master",
                peer.node, peer.epoch, peer.node
            ),
        },
    }
}

/// Two masters at the same epoch: the node name that sorts first keeps the
/// role. Names are unique in a pair (the daemon refuses a peer with its own name).
fn tie_winner(me: &str, peer: &str) -> bool {
    me < peer
}

/// What a host does with a claim found in its control folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimVerdict {
    /// Nothing new (the claim is known, or this host is a master and ignores it).
    Ignore,
    /// A master at this epoch or newer: follow it, remembering its epoch.
    Follow(Live),
    /// The master gives the role away: become master.
    TakeOver(Live),
    /// A master with an older epoch than this host knows: refuse its replication.
    Refuse { reason: String },
    /// A newer master claims this host while it is a master itself (only
    /// possible if the sync account was writable here): step down.
    StepDown(Live),
}

/// A host (`me`) judges a claim written into its control folder.
pub fn judge_claim(me: &Live, claim: &Claim, now: u64) -> ClaimVerdict {
    if claim.epoch < me.epoch {
        return ClaimVerdict::Refuse {
            reason: format!(
                "{} claims to be master at epoch {}, older than the epoch {} this host knows; its replication is refused",
                claim.node, claim.epoch, me.epoch
            ),
        };
    }
    match (me.role, claim.handover) {
        (Role::Standby, Some(to)) if to > me.epoch && to > claim.epoch => {
            ClaimVerdict::TakeOver(me.become_(
                Role::Master,
                to,
                now,
                format!("handover from {} (planned switchover)", claim.node),
            ))
        }
        (Role::Standby, _) if claim.epoch > me.epoch => ClaimVerdict::Follow(Live {
            unreconciled: me.unreconciled.filter(|t| claim.reconciled != Some(*t)),
            ..me.become_(
                Role::Standby,
                claim.epoch,
                now,
                format!(
                    "following the master {} at epoch {}",
                    claim.node, claim.epoch
                ),
            )
        }),
        (Role::Standby, _) if me.unreconciled.is_some() && claim.reconciled == me.unreconciled => {
            ClaimVerdict::Follow(Live {
                unreconciled: None,
                ..me.become_(
                    Role::Standby,
                    me.epoch,
                    now,
                    format!("reconciled by the master {}", claim.node),
                )
            })
        }
        (Role::Standby, _) => ClaimVerdict::Ignore,
        (Role::Master, _) if claim.epoch > me.epoch => ClaimVerdict::StepDown(me.become_(
            Role::Standby,
            claim.epoch,
            now,
            format!("the master {} claims epoch {}", claim.node, claim.epoch),
        )),
        (Role::Master, _) => ClaimVerdict::Ignore,
    }
}

/// What `sftp-ha promote` finds out about the master before it acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAnswer {
    /// No answer: the peer is down, or the link is.
    Unreachable(String),
    /// Something answered but could not be asked (pairing: no pinned host
    /// key, another host key, the key refused; or an unreadable role). The
    /// master may well be alive.
    Unasked(String),
    Answered(Published),
}

/// What `sftp-ha promote` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromoteVerdict {
    AlreadyMaster,
    /// Become master now, with this live state.
    Failover(Live),
    /// The master answers: ask it to hand over.
    AskHandover,
    /// Nothing changes: the master could not be asked, and may be alive.
    Refuse(String),
}

/// A host asked to become master judges what it learnt about its peer.
/// `shared`: `[sync] storage = "shared"`, both hosts write into one tree.
/// There a promotion without the master's handover needs `force`: with
/// replication a former master that kept taking uploads is reconciled
/// afterwards (conflict copies); on one shared tree there is nothing to
/// reconcile, so two masters would both write into it (the last writer
/// wins, uids and the log link flip between them).
pub fn judge_promote(
    me: &Live,
    peer: &PeerAnswer,
    force: bool,
    shared: bool,
    now: u64,
) -> PromoteVerdict {
    if me.role == Role::Master {
        return PromoteVerdict::AlreadyMaster;
    }
    let seen = match peer {
        PeerAnswer::Answered(p) => p.epoch,
        PeerAnswer::Unreachable(_) | PeerAnswer::Unasked(_) => 0,
    };
    // Never below 2: a master from config.toml has epoch 1 even if this
    // standby never heard from it.
    let epoch = me.epoch.max(seen).max(1) + 1;
    match peer {
        PeerAnswer::Answered(p) if p.role == Role::Master && !force => {
            PromoteVerdict::AskHandover
        }
        PeerAnswer::Answered(p) if p.role == Role::Master => PromoteVerdict::Failover(me.become_(
            Role::Master,
            epoch,
            now,
            format!(
                "promoted with --force while the master {} still answered (split brain until they meet again)",
                p.node
            ),
        )),
        PeerAnswer::Answered(p) => PromoteVerdict::Failover(me.become_(
            Role::Master,
            epoch,
            now,
            format!("promoted; the peer {} is a standby too", p.node),
        )),
        PeerAnswer::Unasked(why) if !force => PromoteVerdict::Refuse(format!(
            "the master could not be asked ({why}), so it may still be taking uploads; nothing changed. Fix the pairing (sftp-ha pair trust-peer / accept-peer), or if the master is really down, sftp-ha promote --force"
        )),
        PeerAnswer::Unasked(why) => PromoteVerdict::Failover(me.become_(
            Role::Master,
            epoch,
            now,
            format!("promoted with --force; the master could not be asked: {why}"),
        )),
        PeerAnswer::Unreachable(why) if shared && !force => PromoteVerdict::Refuse(format!(
            "the master does not answer ({why}), but it may still be taking uploads into the shared data dir: with storage = \"shared\" two masters write into one tree and nothing can reconcile them afterwards (the last writer wins), so a promotion without the master's handover needs --force; nothing changed. Fix: make sure the master is down (powered off, or its sftp-ha stopped and its sshd stopped or fenced), then sftp-ha promote --force"
        )),
        PeerAnswer::Unreachable(why) if shared => PromoteVerdict::Failover(me.become_(
            Role::Master,
            epoch,
            now,
            format!(
                "promoted with --force (failover, shared storage): the master does not answer: {why}"
            ),
        )),
        PeerAnswer::Unreachable(why) => PromoteVerdict::Failover(me.become_(
            Role::Master,
            epoch,
            now,
            format!("promoted (failover): the master does not answer: {why}"),
        )),
    }
}

/// A standby the witness granted a takeover at `epoch` (automatic failover).
pub fn take_over(me: &Live, epoch: u64, reason: String, now: u64) -> Live {
    me.become_(Role::Master, epoch.max(me.epoch + 1), now, reason)
}

/// A master steps down (a newer epoch, or it handed over).
pub fn step_down(me: &Live, epoch: u64, reason: String, now: u64) -> Live {
    me.become_(Role::Standby, epoch.max(me.epoch), now, reason)
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "cannot read the live role {path}: {source}; fix: restore it from a backup, or remove it to start again from the role in config.toml (only if the other host is the master or down for good)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid live role: {message}; fix: remove it to start again from the role in config.toml (only if the other host is the master or down for good)"
    )]
    Invalid { path: PathBuf, message: String },
    #[error("cannot save the live role {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// The persisted live role; `None` on the very first start.
pub fn load(state_dir: &Path) -> Result<Option<Live>, RoleError> {
    let path = state_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RoleError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RoleError::Invalid {
            path,
            message: e.to_string(),
        })
}

/// Persists the live role (fsynced and renamed: a crash leaves the old or the new one).
pub fn save(state_dir: &Path, live: &Live) -> Result<(), RoleError> {
    let path = state_path(state_dir);
    let text = serde_json::to_vec_pretty(live).map_err(|e| RoleError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::fsutil::write_atomic(&path, &text, 0o600, None)
        .map_err(|source| RoleError::Write { path, source })
}

/// This host's node name, as its peer sees it.
pub fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unnamed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(role: Role, epoch: u64) -> Live {
        Live {
            role,
            epoch,
            since: 0,
            reason: String::new(),
            from_config: false,
            unreconciled: None,
        }
    }

    #[test]
    fn the_config_is_followed_until_the_live_role_changes() {
        let first = Live::first(Role::Master, 1);
        assert_eq!(first.follow_config(Role::Master, 2), None);
        // Installed with the default (master), then configured as a standby.
        let standby = first.follow_config(Role::Standby, 2).unwrap();
        assert_eq!(
            (standby.role, standby.epoch, standby.from_config),
            (Role::Standby, 1, true)
        );
        // Promoted by editing the config: a new epoch, like `promote`.
        let master = standby.follow_config(Role::Master, 3).unwrap();
        assert_eq!((master.role, master.epoch), (Role::Master, 2));
        // Once a promotion, a step-down or a claim changed it, the config only seeded it.
        let stepped = step_down(&master, 5, "newer".into(), 4);
        assert!(!stepped.from_config);
        assert_eq!(stepped.follow_config(Role::Master, 5), None);
    }

    fn peer(node: &str, role: Role, epoch: u64) -> Published {
        Published {
            node: node.into(),
            role,
            epoch,
            wants_master: false,
            users: None,
            unreconciled: None,
            shared: false,
        }
    }

    #[test]
    fn hosts_that_disagree_on_the_storage_do_not_work_together() {
        let mut p = peer("beta", Role::Standby, 1);
        assert_eq!(storage_mismatch(false, &p), None);
        let why = storage_mismatch(true, &p).expect("a mismatch");
        assert!(
            why.contains("storage = \"replicated\" and this host \"shared\""),
            "{why}"
        );
        p.shared = true;
        assert_eq!(storage_mismatch(true, &p), None);
        assert!(storage_mismatch(false, &p).is_some());
        // An older peer publishes no `shared`: it replicates.
        let old: Published =
            serde_json::from_str(r#"{"node":"beta","role":"standby","epoch":1}"#).unwrap();
        assert!(!old.shared);
    }

    fn claim(node: &str, epoch: u64, handover: Option<u64>) -> Claim {
        Claim {
            node: node.into(),
            epoch,
            handover,
            reconciled: None,
            offer: false,
        }
    }

    #[test]
    fn a_master_that_steps_down_stays_unreconciled_until_its_master_says_so() {
        let me = step_down(&live(Role::Master, 1), 2, "newer".into(), 100);
        let token = me.unreconciled.expect("a token");
        // Following a claim does not clear it...
        let me = match judge_claim(&me, &claim("n", 3, None), 0) {
            ClaimVerdict::Follow(l) => l,
            other => panic!("{other:?}"),
        };
        assert!(me.unreconciled == Some(token) && me.epoch == 3);
        assert_eq!(
            judge_claim(&me, &claim("n", 3, None), 0),
            ClaimVerdict::Ignore
        );
        // ...nor a claim about another step-down (left over from an earlier one)...
        let mut old = claim("n", 3, None);
        old.reconciled = Some(token + 1);
        assert_eq!(judge_claim(&me, &old, 0), ClaimVerdict::Ignore);
        // ...only a claim that says this one is reconciled.
        let mut done = claim("n", 3, None);
        done.reconciled = Some(token);
        match judge_claim(&me, &done, 0) {
            ClaimVerdict::Follow(l) => assert!(l.unreconciled.is_none() && l.epoch == 3),
            other => panic!("{other:?}"),
        }
        // Two step-downs get two tokens.
        let again = step_down(&live(Role::Master, 4), 5, "newer".into(), 200);
        assert_ne!(again.unreconciled, Some(token));
        // An admin making a master a standby by config counts too; the other way not.
        let by_config = Live::first(Role::Master, 0)
            .follow_config(Role::Standby, 1)
            .unwrap();
        assert!(by_config.unreconciled.is_some());
        assert!(
            by_config
                .follow_config(Role::Master, 2)
                .unwrap()
                .unreconciled
                .is_none()
        );
        // A promotion clears it: a master's tree is the truth.
        match judge_promote(&me, &PeerAnswer::Unreachable("x".into()), false, false, 0) {
            PromoteVerdict::Failover(l) => assert!(l.unreconciled.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_first_start_takes_the_configured_role() {
        assert_eq!(Live::first(Role::Master, 5).epoch, 1);
        assert_eq!(Live::first(Role::Standby, 5).epoch, 0);
        assert_eq!(Live::first(Role::Standby, 5).role, Role::Standby);
    }

    #[test]
    fn a_master_replicates_to_a_standby_at_its_epoch_or_older() {
        let me = live(Role::Master, 3);
        for e in 0..=3 {
            assert_eq!(
                judge_peer(&me, "a", &peer("b", Role::Standby, e)),
                PeerVerdict::Replicate
            );
        }
    }

    #[test]
    fn a_master_steps_down_for_any_newer_epoch() {
        let me = live(Role::Master, 3);
        for role in [Role::Master, Role::Standby] {
            match judge_peer(&me, "a", &peer("b", role, 4)) {
                PeerVerdict::StepDown { epoch: 4, reason } => {
                    assert!(reason.contains("epoch 4"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_older_master_is_left_to_step_down_by_itself() {
        let me = live(Role::Master, 3);
        assert!(matches!(
            judge_peer(&me, "a", &peer("b", Role::Master, 2)),
            PeerVerdict::Wait { .. }
        ));
    }

    #[test]
    fn a_tie_between_masters_keeps_the_name_that_sorts_first() {
        let me = live(Role::Master, 3);
        assert!(matches!(
            judge_peer(&me, "alpha", &peer("beta", Role::Master, 3)),
            PeerVerdict::Wait { .. }
        ));
        assert!(matches!(
            judge_peer(&me, "beta", &peer("alpha", Role::Master, 3)),
            PeerVerdict::StepDown { epoch: 3, .. }
        ));
    }

    #[test]
    fn a_handover_is_agreed_only_with_a_standby_of_this_epoch() {
        let me = live(Role::Master, 3);
        let mut p = peer("b", Role::Standby, 3);
        p.wants_master = true;
        assert_eq!(judge_peer(&me, "a", &p), PeerVerdict::HandOver);
        // A standby that has not yet followed this master (older epoch) is
        // first brought up to date by a claim; it asks again.
        p.epoch = 2;
        assert_eq!(judge_peer(&me, "a", &p), PeerVerdict::Replicate);
    }

    #[test]
    fn a_standby_follows_newer_claims_and_refuses_older_ones() {
        let me = live(Role::Standby, 3);
        assert_eq!(
            judge_claim(&me, &claim("m", 3, None), 9),
            ClaimVerdict::Ignore
        );
        match judge_claim(&me, &claim("m", 4, None), 9) {
            ClaimVerdict::Follow(l) => {
                assert_eq!((l.role, l.epoch, l.since), (Role::Standby, 4, 9))
            }
            other => panic!("{other:?}"),
        }
        match judge_claim(&me, &claim("old", 2, None), 9) {
            ClaimVerdict::Refuse { reason } => assert!(reason.contains("older"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_handover_makes_the_standby_master_with_the_higher_epoch() {
        let me = live(Role::Standby, 3);
        match judge_claim(&me, &claim("m", 3, Some(4)), 9) {
            ClaimVerdict::TakeOver(l) => assert_eq!((l.role, l.epoch), (Role::Master, 4)),
            other => panic!("{other:?}"),
        }
        // A stale handover (already taken, or from an older master) does nothing.
        let me = live(Role::Standby, 4);
        assert_eq!(
            judge_claim(&me, &claim("m", 4, Some(4)), 9),
            ClaimVerdict::Ignore
        );
        assert!(matches!(
            judge_claim(&me, &claim("m", 3, Some(4)), 9),
            ClaimVerdict::Refuse { .. }
        ));
    }

    #[test]
    fn a_master_ignores_claims_unless_they_are_newer() {
        let me = live(Role::Master, 3);
        assert_eq!(
            judge_claim(&me, &claim("b", 3, Some(9)), 1),
            ClaimVerdict::Ignore
        );
        assert!(matches!(
            judge_claim(&me, &claim("b", 4, None), 1),
            ClaimVerdict::StepDown(Live {
                role: Role::Standby,
                epoch: 4,
                ..
            })
        ));
    }

    #[test]
    fn promote_fails_over_past_every_epoch_seen_or_asks_a_live_master() {
        let me = live(Role::Standby, 3);
        let gone = PeerAnswer::Unreachable("timed out".into());
        match judge_promote(&me, &gone, false, false, 7) {
            PromoteVerdict::Failover(l) => {
                assert_eq!((l.role, l.epoch), (Role::Master, 4));
                assert!(l.reason.contains("timed out"), "{}", l.reason);
            }
            other => panic!("{other:?}"),
        }
        let master = PeerAnswer::Answered(peer("m", Role::Master, 5));
        assert_eq!(
            judge_promote(&me, &master, false, false, 7),
            PromoteVerdict::AskHandover
        );
        match judge_promote(&me, &master, true, false, 7) {
            PromoteVerdict::Failover(l) => {
                assert_eq!(l.epoch, 6);
                assert!(l.reason.contains("--force"), "{}", l.reason);
            }
            other => panic!("{other:?}"),
        }
        let unasked = PeerAnswer::Unasked("no host key pinned".into());
        assert!(matches!(
            judge_promote(&me, &unasked, false, false, 7),
            PromoteVerdict::Refuse(r) if r.contains("--force")
        ));
        assert!(matches!(
            judge_promote(&me, &unasked, true, false, 7),
            PromoteVerdict::Failover(Live { epoch: 4, .. })
        ));
        let standby = PeerAnswer::Answered(peer("s", Role::Standby, 2));
        assert!(matches!(
            judge_promote(&me, &standby, false, false, 7),
            PromoteVerdict::Failover(Live { epoch: 4, .. })
        ));
        assert_eq!(
            judge_promote(&live(Role::Master, 1), &gone, true, false, 7),
            PromoteVerdict::AlreadyMaster
        );
    }

    #[test]
    fn with_shared_storage_a_promotion_without_the_handover_needs_force() {
        let me = live(Role::Standby, 3);
        let gone = PeerAnswer::Unreachable("timed out".into());
        // Refused, saying what, why and how: nothing changes.
        match judge_promote(&me, &gone, false, true, 7) {
            PromoteVerdict::Refuse(why) => {
                assert!(why.contains("timed out"), "{why}");
                assert!(why.contains("one tree"), "{why}");
                assert!(why.contains("nothing changed"), "{why}");
                assert!(why.contains("promote --force"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // With --force: failover past every epoch seen.
        match judge_promote(&me, &gone, true, true, 7) {
            PromoteVerdict::Failover(l) => {
                assert_eq!((l.role, l.epoch), (Role::Master, 4));
                assert!(l.reason.contains("--force"), "{}", l.reason);
            }
            other => panic!("{other:?}"),
        }
        // The rest is as with replication: a live master is asked to hand
        // over, an unasked one needs --force, a standby peer writes nothing.
        let master = PeerAnswer::Answered(peer("m", Role::Master, 5));
        assert_eq!(
            judge_promote(&me, &master, false, true, 7),
            PromoteVerdict::AskHandover
        );
        let unasked = PeerAnswer::Unasked("no host key pinned".into());
        assert!(matches!(
            judge_promote(&me, &unasked, false, true, 7),
            PromoteVerdict::Refuse(_)
        ));
        let standby = PeerAnswer::Answered(peer("s", Role::Standby, 2));
        assert!(matches!(
            judge_promote(&me, &standby, false, true, 7),
            PromoteVerdict::Failover(Live { epoch: 4, .. })
        ));
        assert_eq!(
            judge_promote(&live(Role::Master, 1), &gone, false, true, 7),
            PromoteVerdict::AlreadyMaster
        );
    }

    #[test]
    fn every_promotion_then_claim_sequence_leaves_one_master_per_epoch() {
        // Two hosts, any order of: promote (forced or not, peer answering or
        // not), claims delivered, peers read. Whatever happens, once each has
        // seen the other, exactly one is master.
        for a_promotes in [false, true] {
            for b_promotes in [false, true] {
                let mut a = live(Role::Master, 1);
                let mut b = live(Role::Standby, 1);
                if a_promotes {
                    a = match judge_promote(
                        &a,
                        &PeerAnswer::Unreachable("x".into()),
                        true,
                        false,
                        0,
                    ) {
                        PromoteVerdict::Failover(l) => l,
                        _ => a,
                    };
                }
                if b_promotes {
                    b = match judge_promote(
                        &b,
                        &PeerAnswer::Unreachable("x".into()),
                        true,
                        false,
                        0,
                    ) {
                        PromoteVerdict::Failover(l) => l,
                        _ => b,
                    };
                }
                // They meet: each master reads the other's role.
                for _ in 0..2 {
                    let (pa, pb) = (peer("a", a.role, a.epoch), peer("b", b.role, b.epoch));
                    if a.role == Role::Master
                        && let PeerVerdict::StepDown { epoch, reason } = judge_peer(&a, "a", &pb)
                    {
                        a = step_down(&a, epoch, reason, 0);
                    }
                    if b.role == Role::Master
                        && let PeerVerdict::StepDown { epoch, reason } = judge_peer(&b, "b", &pa)
                    {
                        b = step_down(&b, epoch, reason, 0);
                    }
                }
                let masters = [&a, &b].iter().filter(|l| l.role == Role::Master).count();
                assert_eq!(masters, 1, "a {a:?} b {b:?}");
            }
        }
    }

    #[test]
    fn the_live_role_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("sftp-ha-role-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        let l = live(Role::Master, 7);
        save(&dir, &l).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(l));
        std::fs::write(state_path(&dir), "{").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("not a valid live role") && e.contains("fix"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn position(epoch: u64, through_ms: u64) -> Position {
        Position {
            master: "m".into(),
            epoch,
            through_ms,
        }
    }

    fn answered(role: Role, epoch: u64, position: Option<Position>) -> OtherStandby {
        answered_by("s2", role, epoch, position)
    }

    fn answered_by(node: &str, role: Role, epoch: u64, position: Option<Position>) -> OtherStandby {
        OtherStandby::Answered {
            role: peer(node, role, epoch),
            position,
        }
    }

    /// This host is node "s1" in these tests.
    fn judge(
        me: &Live,
        mine: Option<&Position>,
        others: &[(String, OtherStandby)],
    ) -> Result<String, String> {
        judge_among_standbys(me, "s1", mine, others)
    }

    #[test]
    fn promote_among_standbys_refuses_when_another_is_further_caught_up() {
        let me = live(Role::Standby, 3);
        let mine = position(3, 5_000);
        let ahead = [(
            "s2".to_string(),
            answered(Role::Standby, 3, Some(position(3, 9_000))),
        )];
        let why = judge(&me, Some(&mine), &ahead).unwrap_err();
        assert!(
            why.contains("s2 is further caught up") && why.contains("promote --force"),
            "{why}"
        );
        // This host never confirmed anything, the other did.
        assert!(judge(&me, None, &ahead).is_err());
    }

    #[test]
    fn promote_among_standbys_goes_ahead_when_this_host_is_further_or_level_and_first() {
        let me = live(Role::Standby, 3);
        let mine = position(3, 9_000);
        let others = [
            (
                "s2".to_string(),
                answered(Role::Standby, 3, Some(position(3, 5_000))),
            ),
            // Level, but its node name sorts after this host's.
            (
                "s3".to_string(),
                answered_by("s3", Role::Standby, 3, Some(position(3, 9_000))),
            ),
            ("s4".to_string(), answered_by("s4", Role::Standby, 3, None)),
            (
                "s5".to_string(),
                OtherStandby::Unreachable("cannot connect".into()),
            ),
        ];
        let note = judge(&me, Some(&mine), &others).unwrap();
        assert!(
            note.contains("s2 has everything of master m at epoch 3")
                && note.contains("s4 has nothing confirmed")
                && note.contains("s5 could not be compared: cannot connect"),
            "{note}"
        );
        // Nothing to compare with: nothing refused.
        assert!(judge(&me, None, &[]).is_ok());
    }

    #[test]
    fn promote_among_standbys_refuses_when_another_is_a_master_or_follows_a_newer_one() {
        let me = live(Role::Standby, 3);
        let mine = position(3, 9_000);
        // Promoted since.
        let promoted = [("s2".to_string(), answered(Role::Master, 4, None))];
        let why = judge(&me, Some(&mine), &promoted).unwrap_err();
        assert!(why.contains("s2 is a master, at epoch 4"), "{why}");
        // A master at this host's epoch takes uploads too (a switchover
        // made it master; this host's list still names the old one first).
        let live_master = [("s2".to_string(), answered(Role::Master, 3, None))];
        let why = judge(&me, Some(&mine), &live_master).unwrap_err();
        assert!(why.contains("put s2 first"), "{why}");
        // A standby at a newer epoch follows a master this host does not know,
        // even with an older position (not told one by it yet).
        let follows = [(
            "s2".to_string(),
            answered(Role::Standby, 4, Some(position(3, 5_000))),
        )];
        let why = judge(&me, Some(&mine), &follows).unwrap_err();
        assert!(why.contains("follows a newer master, at epoch 4"), "{why}");
    }

    #[test]
    fn promote_among_standbys_refuses_one_that_could_not_be_asked() {
        let me = live(Role::Standby, 3);
        let unasked = [(
            "s2".to_string(),
            OtherStandby::Unasked("the host key changed".into()),
        )];
        let why = judge(&me, Some(&position(3, 9_000)), &unasked).unwrap_err();
        assert!(
            why.contains("could not be asked (the host key changed)") && why.contains("--force"),
            "{why}"
        );
    }

    #[test]
    fn of_two_level_standbys_promoted_at_once_only_one_goes_ahead() {
        let me = live(Role::Standby, 3);
        let level = position(3, 9_000);
        // On "a", asking "b"; on "b", asking "a".
        let a_sees_b = judge_among_standbys(
            &me,
            "a",
            Some(&level),
            &[(
                "b".to_string(),
                answered_by("b", Role::Standby, 3, Some(level.clone())),
            )],
        );
        let b_sees_a = judge_among_standbys(
            &me,
            "b",
            Some(&level),
            &[(
                "a".to_string(),
                answered_by("a", Role::Standby, 3, Some(level.clone())),
            )],
        );
        assert!(a_sees_b.is_ok(), "{a_sees_b:?}");
        let why = b_sees_a.unwrap_err();
        assert!(why.contains("sorts first"), "{why}");
        // Neither confirmed anything: level too.
        let none = judge_among_standbys(
            &me,
            "b",
            None,
            &[("a".into(), answered_by("a", Role::Standby, 3, None))],
        );
        assert!(none.is_err());
    }
}
