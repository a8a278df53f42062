//! The failover core, without I/O: who may hold the master's lease, when a
//! standby may take over, and when a master must stop taking uploads. The
//! driver ([`super::driver`]) feeds it messages and clock ticks and carries
//! out the [`Action`]s it returns, so every interleaving is a unit test.
//!
//! Three voters: the two file hosts and the witness. A master may take
//! uploads only while it holds a *lease*, a majority of promises: its own and
//! at least one other voter's. A voter that grants promises not to grant
//! anyone else until its grant (by its own clock) is `after` old. The master
//! counts its lease from when it *sent* the ask, which is before any voter
//! received it, so its lease always ends before the promise it rests on; it
//! stops taking uploads a margin before that. A standby takes over only once
//! its own promise to the master has run out and the witness grants it a
//! newer epoch, which the witness does only once its promise has run out too:
//! at no moment do two hosts hold a lease.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Role;

/// A message between the three hosts (authenticated by [`super::wire`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender's node name.
    pub from: String,
    /// The sender's freshness token now: an ask to the sender is granted
    /// only if it echoes a token the sender gave out less than about
    /// `after` ago, so an old ask replayed from the link promises nothing.
    pub fresh: u64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// "Promise me the lease at `epoch` for `after_ms`": a master renewing
    /// (`takeover` false), or a standby taking over (`takeover` true).
    Ask {
        epoch: u64,
        nonce: u64,
        after_ms: u64,
        takeover: bool,
        /// The asker holds the lease now. A master that keeps asking
        /// without ever holding it (its grants are lost on the way back)
        /// is refused after `after`, so that the standby can take over.
        holding: bool,
        /// Voter → the newest freshness token heard from it ([`Message::fresh`]).
        echo: BTreeMap<String, u64>,
        /// A takeover: the master this host last gave its vote to, as a
        /// voter ([`Core::with_vote`]). The witness grants a takeover only
        /// to the master's own voter: with several standbys, one that the
        /// master never asked (a further standby) must never take over,
        /// since the master may hold its lease through the one it asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voted: Option<Holder>,
        /// A master renewing: the voters whose grants its lease rests on
        /// now, so that the witness knows which file host votes for it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        voters: Vec<String>,
    },
    /// The promise was given, for the ask with this nonce.
    Grant {
        nonce: u64,
        epoch: u64,
        /// Sent by the witness, which names the file host it holds for the
        /// asking master's voter at this epoch ([`Holder::voter`]): with
        /// several standbys a master counts a file host's grant only while
        /// the witness names that host.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        witness: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voter: Option<String>,
    },
    /// It was not; `holder` is whom the voter holds for the master.
    Refuse {
        nonce: u64,
        reason: String,
        holder: Option<Holder>,
        /// Only because the ask echoed no fresh token of this voter (the
        /// asker just started, or the ask is a replay): ask again at once
        /// with the token this refusal carries.
        stale: bool,
        /// Sent by the witness: its `holder` is the one its grants made,
        /// which a master at the same epoch made without it yields to.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        witness: bool,
    },
    /// A master that stepped down frees the promise its last ask (`nonce`)
    /// got, so its successor need not wait for it to run out.
    Release {
        epoch: u64,
        nonce: u64,
    },
    /// "Are you there?", from a host that asks nothing (a standby, about
    /// the witness), so the status can say whether the third vote is there.
    Ping,
    Pong,
    /// "I am the master at `epoch`, in `mode = "manual"`": such a master
    /// asks for no lease and does not stop writing when none is held, so
    /// the witness and an automatic standby must never take over from it.
    Manual {
        epoch: u64,
        /// As in an ask: a notice replayed later is ignored, so it cannot
        /// turn automatic failover off for a master back in automatic mode.
        echo: BTreeMap<String, u64>,
    },
}

/// A master as a voter knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub epoch: u64,
    /// The master runs `mode = "manual"`: no automatic takeover from it.
    #[serde(default)]
    pub manual: bool,
    /// The witness's record: the file host this master's lease may rest on
    /// besides the witness (the one its renewals named first). Only that
    /// host may take over from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter: Option<String>,
}

impl Holder {
    /// The same master at the same epoch, in the same mode (the voter aside).
    fn same_master(&self, other: &Holder) -> bool {
        (&self.node, self.epoch, self.manual) == (&other.node, other.epoch, other.manual)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Witness,
    /// The other file host.
    Peer,
    /// Whoever sent the message being answered.
    Sender,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        to: Target,
        message: Message,
    },
    /// A master starts (`true`) or stops taking uploads. Stopping must be
    /// done within the fence margin: the lease ends then.
    Writable {
        writable: bool,
        reason: String,
    },
    /// A standby was granted the takeover: become the master at `epoch`.
    Promote {
        epoch: u64,
        reason: String,
    },
    /// A newer master exists: step down to a standby at `epoch`.
    StepDown {
        epoch: u64,
        master: String,
    },
    /// The witness remembers the highest epoch it granted, and to whom,
    /// before the grant leaves (a restarted witness must never grant an
    /// older epoch again).
    Persist(Holder),
    /// A file host remembers the master it gave its vote to (a newer master
    /// or epoch than before): after a restart it may still take over from
    /// that master ([`Body::Ask::voted`]).
    RememberVote(Holder),
    /// One journal line: a decision and its reason.
    Journal {
        warn: bool,
        line: String,
    },
}

/// What this host is in the vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file host in `mode = "auto"`.
    FileHost,
    /// A file host in `mode = "manual"` that has a witness and the key: it
    /// asks for no lease and fences nothing, refuses every ask, and while
    /// it is the master says so ([`Body::Manual`]) to the witness and its
    /// peer every `renew_every`.
    Manual,
    /// The third vote: stores no files.
    Witness,
}

/// How long a silent master has, and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub after: Duration,
}

impl Timing {
    /// A master asks again four times per lease, so three lost datagrams in
    /// a row still leave it the lease.
    pub fn renew_every(self) -> Duration {
        self.after / 4
    }

    /// A master stops taking uploads this long before its lease ends: time
    /// for sshd to reload and for the sessions to end.
    pub fn fence_margin(self) -> Duration {
        self.after / 3
    }
}

/// A promise this host gave, as a voter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promise {
    node: String,
    epoch: u64,
    nonce: u64,
    until: Instant,
    /// Since when its asks say it holds no lease.
    lacking_since: Option<Instant>,
    /// Its last ask, and until when it is refused for lacking the lease.
    last_ask: Instant,
    refused_until: Option<Instant>,
}

/// What `sftp-ha status` shows of the core.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// This host holds the lease, until then.
    pub lease_until: Option<Instant>,
    /// Whom this host (as a voter) promised the lease, until when.
    pub promised: Option<(String, u64, Instant)>,
    /// The voters whose grant the lease rests on now.
    pub granted_by: Vec<String>,
    pub writable: bool,
    /// A standby asking the witness to take over, at this epoch.
    pub candidate: Option<u64>,
    /// sshd runs here (or has not been down for `after` yet).
    pub serving: bool,
    /// A master known to run `mode = "manual"`: no automatic takeover from it.
    pub manual_master: Option<Holder>,
    /// A file host: whether it may take over, in words (whose voter it is).
    pub vote: Option<String>,
}

/// The state machine of one host.
#[derive(Debug)]
pub struct Core {
    me: String,
    kind: Kind,
    timing: Timing,
    role: Role,
    epoch: u64,
    /// Nothing is promised to a new candidate before this (a restarted
    /// voter forgot the promises it gave), and a standby does not ask to
    /// take over before it.
    quiet_until: Instant,
    /// The highest epoch this host granted or knows, and its holder.
    highest: Holder,
    promise: Option<Promise>,
    nonces: u64,
    /// Asks sent, newest last, while they can still count.
    asks: VecDeque<(u64, Instant)>,
    /// Voter → when the ask it granted was sent (the current epoch only).
    granted: BTreeMap<String, Instant>,
    next_ask: Instant,
    writable: bool,
    /// A standby asking to take over: the epoch it asks for, since when.
    candidate: Option<(u64, Instant)>,
    /// Granted the takeover; waiting for the driver to confirm the role.
    promoting: Option<u64>,
    /// A master made so without the witness's grant (`promote --force`, a
    /// handover) still owes the promise it gave the old master as a voter:
    /// it takes no upload before that promise ran out or was released.
    owed: Option<Promise>,
    /// This run's freshness tokens: a random run number (a restarted voter
    /// accepts no token of its earlier run) and the slot of `renew_every`
    /// since `started`.
    run: u32,
    started: Instant,
    /// Node → the newest token heard from it, echoed in this host's asks.
    tokens: BTreeMap<String, u64>,
    /// The newest ask asked again for after a stale refusal.
    reasked_for: u64,
    /// Node → the newest of this host's tokens that its fresh asks echoed:
    /// a manual notice echoing no newer token may have been sent before
    /// that ask (a replay of a time when it ran manual mode): ignored.
    ask_echo: BTreeMap<String, u64>,
    /// The peer said it is the master in `mode = "manual"` (a standby in
    /// automatic mode then never asks to take over), until it asks for a
    /// lease again.
    peer_manual: Option<Holder>,
    /// sshd runs here (the driver watches it): a master whose users cannot
    /// log in stops renewing its lease, so that the standby takes over, and
    /// a standby in that state does not take over.
    serving: bool,
    /// A file host: the master it last granted a renewal to, as a voter.
    /// A standby that never voted is not the voter of any master (a further
    /// standby): it never asks to take over.
    voted_for: Option<Holder>,
    /// The journal said once that this host is no master's voter.
    told_not_a_voter: bool,
    /// This host's `[sync] peer` lists more than one other file host: a
    /// master counts a file host's grant only while the witness names that
    /// host its voter at this epoch ([`Body::Grant::voter`]), so that the
    /// witness always knows whom a lease may rest on. (With one standby it
    /// can only be that one, and a master made without the witness, by a
    /// handover or `promote --force`, keeps its lease through the other
    /// file host while the witness is away.)
    several: bool,
    /// The node the witness's grants come from.
    witness_node: Option<String>,
    /// The voter the witness's newest grant named: at which epoch, for the
    /// ask with which nonce (a grant that arrives late, for an older ask,
    /// does not bring back a voter named before).
    named_voter: Option<(u64, Option<String>, u64)>,
}

/// A token stays good for this many slots of `renew_every` (five quarters
/// of `after`): a master that lost one grant still asks with a good token,
/// and a replayed ask keeps a promise at most about one `after` longer.
const FRESH_SLOTS: u32 = 5;

impl Core {
    /// `nonce_seed` makes this run's nonces differ from an earlier run's (so
    /// a replayed grant never matches); `highest` is what a witness persisted.
    pub fn new(
        me: String,
        kind: Kind,
        timing: Timing,
        now: Instant,
        nonce_seed: u64,
        highest: Option<Holder>,
    ) -> Core {
        Core {
            highest: highest.unwrap_or(Holder {
                node: String::new(),
                epoch: 0,
                manual: false,
                voter: None,
            }),
            me,
            kind,
            timing,
            role: Role::Standby,
            epoch: 0,
            quiet_until: now + timing.after,
            promise: None,
            nonces: nonce_seed << 20,
            asks: VecDeque::new(),
            granted: BTreeMap::new(),
            next_ask: now,
            writable: false,
            candidate: None,
            promoting: None,
            owed: None,
            // Any run number will do as long as it differs from the last run's.
            run: u32::try_from(nonce_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32).unwrap_or(1),
            started: now,
            tokens: BTreeMap::new(),
            reasked_for: 0,
            ask_echo: BTreeMap::new(),
            peer_manual: None,
            serving: true,
            voted_for: None,
            told_not_a_voter: false,
            several: false,
            witness_node: None,
            named_voter: None,
        }
    }

    /// A file host whose `[sync] peer` lists more than one other file host
    /// (see [`Core::several`]).
    pub fn with_several_standbys(mut self, several: bool) -> Core {
        self.several = several;
        self
    }

    /// A file host: the master it gave its vote to before a restart
    /// ([`Action::RememberVote`]).
    pub fn with_vote(mut self, vote: Option<Holder>) -> Core {
        self.voted_for = vote;
        self
    }

    /// "Are you there?", for the driver to send to a host it has not heard
    /// from for a while; the answer also brings that host's newest token.
    pub fn ping(&self, now: Instant) -> Message {
        Message {
            from: self.me.clone(),
            fresh: self.token(now),
            body: Body::Ping,
        }
    }

    /// This host's freshness token now.
    fn token(&self, now: Instant) -> u64 {
        (u64::from(self.run) << 32) | u64::from(self.slot(now))
    }

    fn slot(&self, now: Instant) -> u32 {
        let slot = now.saturating_duration_since(self.started).as_nanos()
            / self.timing.renew_every().as_nanos().max(1);
        u32::try_from(slot).unwrap_or(u32::MAX)
    }

    /// A token this run gave out within the last [`FRESH_SLOTS`].
    fn is_fresh(&self, token: u64, now: Instant) -> bool {
        let (run, slot) = ((token >> 32) as u32, token as u32);
        let current = self.slot(now);
        run == self.run && slot <= current && current - slot < FRESH_SLOTS
    }

    pub fn view(&self, now: Instant) -> View {
        View {
            lease_until: self.lease_until().filter(|u| *u > now),
            promised: self
                .promise
                .as_ref()
                .filter(|p| p.until > now)
                .map(|p| (p.node.clone(), p.epoch, p.until)),
            granted_by: self
                .granted
                .keys()
                .filter(|n| self.grant_counts(n))
                .cloned()
                .collect(),
            writable: self.writable,
            candidate: self.candidate.map(|(e, _)| e),
            serving: self.serving,
            manual_master: self
                .peer_manual
                .clone()
                .or_else(|| self.highest.manual.then(|| self.highest.clone()))
                .filter(|h| h.node != self.me),
            vote: self.vote_in_words(),
        }
    }

    /// Whose voter this file host is, for the status.
    fn vote_in_words(&self) -> Option<String> {
        if self.kind != Kind::FileHost {
            return None;
        }
        Some(match (self.role, &self.voted_for) {
            (Role::Master, _) if self.several => match &self.named_voter {
                Some((e, Some(v), _)) if *e == self.epoch => format!(
                    "the witness names {v} this master's voter at epoch {e}: only {v} takes over from it"
                ),
                _ => "the witness has named no voter for this master yet: its lease rests on the witness alone".into(),
            },
            (Role::Master, _) => "this master's lease rests on the witness and its peer".into(),
            (_, Some(v)) if v.node == self.me && (v.epoch >= self.epoch || !self.several) => format!(
                "this host was the master at epoch {}: it takes over again only if the witness holds it for the newest master",
                v.epoch
            ),
            (_, Some(v)) if v.epoch >= self.epoch || !self.several => format!(
                "this host last gave its vote to {} at epoch {}: it takes over if that master's lease runs out and the witness agrees",
                v.node, v.epoch
            ),
            _ => "no master this host follows has asked it for its vote: it never takes over automatically (a further standby; promote it by hand)".into(),
        })
    }

    /// The driver tells the core the live role (at start, and after every change).
    pub fn set_role(&mut self, role: Role, epoch: u64, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if role == self.role && epoch == self.epoch {
            return actions;
        }
        let was_master = self.role == Role::Master;
        if was_master && role != Role::Master && self.writable {
            self.writable = false;
            let reason = format!("this host is no longer the master ({role} at epoch {epoch} now)");
            actions.push(Action::Writable {
                writable: false,
                reason,
            });
        }
        if was_master && role != Role::Master {
            // Free the promises at once: the successor need not wait.
            if let Some(&(nonce, _)) = self.asks.back() {
                for to in [Target::Witness, Target::Peer] {
                    actions.push(self.send(
                        to,
                        Body::Release {
                            epoch: self.epoch,
                            nonce,
                        },
                        now,
                    ));
                }
            }
            // A standby now: it does not ask to take over before a whole
            // `after` without a master.
            self.quiet_until = now + self.timing.after;
        }
        self.role = role;
        self.epoch = epoch;
        self.note_epoch(&Holder {
            node: if role == Role::Master {
                self.me.clone()
            } else {
                self.highest.node.clone()
            },
            epoch,
            manual: role == Role::Master && self.kind == Kind::Manual,
            voter: None,
        });
        self.peer_manual = None;
        // A master votes for itself: should it step down at its own epoch
        // (two masters at one epoch, the other kept), it may still take over
        // later, if the witness holds it for the newest master.
        let own = Holder {
            node: self.me.clone(),
            epoch,
            manual: false,
            voter: None,
        };
        if role == Role::Master
            && self.kind == Kind::FileHost
            && self.voted_for.as_ref() != Some(&own)
        {
            self.voted_for = Some(own.clone());
            actions.push(Action::RememberVote(own));
        }
        // The grant of a takeover is the new master's first lease: kept.
        let promoted = role == Role::Master && self.promoting == Some(epoch);
        if !promoted {
            self.granted.clear();
            self.asks.clear();
        }
        self.promoting = None;
        self.candidate = None;
        if role == Role::Master {
            // A master promises only itself; one it gave another before
            // (without a takeover grant that proved it ran out) is owed.
            self.owed = self
                .promise
                .take()
                .filter(|p| !promoted && p.node != self.me && p.until > now);
            self.next_ask = now;
        } else {
            self.owed = None;
        }
        actions.extend(self.tick(now));
        actions
    }

    /// The driver watches sshd: `false` once it has not run for `after`,
    /// `true` as soon as it runs again. A master whose users cannot log in
    /// stops renewing its lease (the standby takes over once it runs out);
    /// a standby whose users could not log in does not take over.
    pub fn set_serving(&mut self, serving: bool, now: Instant) -> Vec<Action> {
        if serving == self.serving {
            return Vec::new();
        }
        self.serving = serving;
        let line = match (serving, self.role) {
            (false, Role::Master) => {
                "sshd has not been running here for `after`: users cannot log in, so this host stops renewing the master's lease and lets the standby take over"
            }
            (false, _) => {
                "sshd has not been running here for `after`: this host will not take over while it stays so"
            }
            (true, _) => "sshd runs again here",
        };
        let mut actions = vec![Action::Journal {
            warn: !serving,
            line: line.into(),
        }];
        self.next_ask = now;
        actions.extend(self.tick(now));
        actions
    }

    /// The driver could not carry out a [`Action::Promote`]: this host stays
    /// a standby and frees the witness's promise.
    pub fn promotion_failed(&mut self, now: Instant) -> Vec<Action> {
        let Some(epoch) = self.promoting.take() else {
            return Vec::new();
        };
        self.granted.clear();
        self.quiet_until = now + self.timing.after;
        let mut actions = Vec::new();
        if let Some(&(nonce, _)) = self.asks.back() {
            actions.push(self.send(Target::Witness, Body::Release { epoch, nonce }, now));
        }
        self.asks.clear();
        actions
    }

    /// The epoch this host knows as the newest.
    fn note_epoch(&mut self, holder: &Holder) {
        if holder.epoch > self.highest.epoch
            || (holder.epoch == self.highest.epoch && self.highest.node.is_empty())
        {
            self.highest = holder.clone();
        }
    }

    fn send(&self, to: Target, body: Body, now: Instant) -> Action {
        Action::Send {
            to,
            message: Message {
                from: self.me.clone(),
                fresh: self.token(now),
                body,
            },
        }
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonces = self.nonces.wrapping_add(1);
        self.nonces
    }

    /// When the lease ends: a majority is this host and one other voter.
    fn lease_until(&self) -> Option<Instant> {
        if self.role != Role::Master && self.promoting.is_none() {
            return None;
        }
        self.granted
            .iter()
            .filter(|(node, _)| self.grant_counts(node))
            .map(|(_, sent)| *sent + self.timing.after)
            .max()
    }

    /// `node`'s grant counts for the lease: always with one standby; with
    /// several, the witness's, and a file host's only while the witness's
    /// latest grant at this epoch named it the voter.
    fn grant_counts(&self, node: &str) -> bool {
        let current = if self.role == Role::Master {
            self.epoch
        } else {
            self.promoting.unwrap_or(0)
        };
        !self.several
            || self.witness_node.as_deref() == Some(node)
            || matches!(&self.named_voter, Some((e, Some(v), _)) if *e == current && v == node)
    }

    /// The clock moved on: ask again, notice a lease running out, or a
    /// master gone silent.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.kind == Kind::Manual && self.role == Role::Master && now >= self.next_ask {
            self.next_ask = now + self.timing.renew_every();
            let notice = Body::Manual {
                epoch: self.epoch,
                echo: self.tokens.clone(),
            };
            actions.push(self.send(Target::Witness, notice.clone(), now));
            actions.push(self.send(Target::Peer, notice, now));
        }
        if self.kind != Kind::FileHost {
            return actions;
        }
        let keep = self.timing.after;
        while self
            .asks
            .front()
            .is_some_and(|(_, sent)| now.duration_since(*sent) > keep)
        {
            self.asks.pop_front();
        }
        // A grant whose lease has run out no longer counts (nor shows in the status).
        let after = self.timing.after;
        self.granted.retain(|_, sent| *sent + after > now);
        let asking_epoch = match (self.role, self.promoting, self.candidate) {
            (Role::Master, _, _) if !self.serving => None,
            (Role::Master, _, _) => Some((self.epoch, false)),
            (_, Some(e), _) => Some((e, false)),
            (_, None, Some((e, _))) => Some((e, true)),
            _ => None,
        };
        if let Some((epoch, takeover)) = asking_epoch
            && now >= self.next_ask
        {
            let nonce = self.next_nonce();
            self.asks.push_back((nonce, now));
            self.next_ask = now + self.timing.renew_every();
            let ask = Body::Ask {
                epoch,
                nonce,
                after_ms: u64::try_from(self.timing.after.as_millis()).unwrap_or(u64::MAX),
                takeover,
                holding: self.writable,
                echo: self.tokens.clone(),
                voted: self.voted_for.clone().filter(|_| takeover),
                voters: if takeover {
                    Vec::new()
                } else {
                    self.granted
                        .keys()
                        .filter(|n| self.witness_node.as_ref() != Some(*n))
                        .cloned()
                        .collect()
                },
            };
            actions.push(self.send(Target::Witness, ask.clone(), now));
            if !takeover {
                actions.push(self.send(Target::Peer, ask, now));
            }
        }
        self.check_writable(now, &mut actions);
        self.check_candidacy(now, &mut actions);
        actions
    }

    fn check_writable(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let margin = self.timing.fence_margin();
        if self.owed.as_ref().is_some_and(|p| p.until <= now) {
            self.owed = None;
        }
        let holds = self.role == Role::Master
            && self.owed.is_none()
            && self.lease_until().is_some_and(|until| now + margin < until);
        if holds == self.writable {
            return;
        }
        self.writable = holds;
        let reason = if holds {
            format!(
                "this host holds the master's lease at epoch {} (granted by {})",
                self.epoch,
                self.granted
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        } else if !self.serving {
            format!(
                "the master's lease at epoch {} was not renewed while sshd is not running here; users stop writing here now",
                self.epoch
            )
        } else {
            format!(
                "the master's lease at epoch {} could not be renewed with the witness or the peer; it runs out within {}, so users stop writing here now",
                self.epoch,
                crate::timefmt::format_duration(margin)
            )
        };
        actions.push(Action::Journal {
            warn: !holds,
            line: reason.clone(),
        });
        actions.push(Action::Writable {
            writable: holds,
            reason,
        });
    }

    /// A standby whose promise to the master ran out asks the witness to
    /// take over; it gives up asking after `after` without an answer (and
    /// votes for the master again).
    fn check_candidacy(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.role != Role::Standby || self.promoting.is_some() {
            return;
        }
        if let Some((epoch, since)) = self.candidate {
            if now.duration_since(since) >= self.timing.after {
                self.candidate = None;
                self.promise = None;
                actions.push(Action::Journal {
                    warn: false,
                    line: format!(
                        "the witness did not answer the takeover at epoch {epoch} within {}; this host stays a standby and asks again",
                        crate::timefmt::format_duration(self.timing.after)
                    ),
                });
            }
            return;
        }
        if !self.serving
            || self.peer_manual.is_some()
            || now < self.quiet_until
            || self.promise.as_ref().is_some_and(|p| p.until > now)
        {
            return;
        }
        // With one standby there is no other file host whose master could
        // hold a lease unseen: the witness decides alone, as it always did.
        if self.several && self.voted_for.as_ref().is_none_or(|v| v.epoch < self.epoch) {
            // No master ever asked this host for its vote, or the master it
            // follows never did: with several standbys it is a further one,
            // and the master may hold its lease through the standby it
            // asks; a takeover from here would make two writers.
            if !self.told_not_a_voter {
                self.told_not_a_voter = true;
                actions.push(Action::Journal {
                    warn: true,
                    line: "no master has ever asked this host for its vote, so it never takes over automatically: only the standby a master asks (the first entry of the master's [sync] peer, or its [failover] peer) does; a further standby follows the master and is promoted by hand (run mode = \"manual\" on it)".into(),
                });
            }
            return;
        }
        // Newer than the master it voted for too: its live epoch may lag
        // its vote (a restart before replication told it the new epoch).
        let voted = self.voted_for.as_ref().map_or(0, |v| v.epoch);
        let epoch = self.highest.epoch.max(self.epoch).max(voted).max(1) + 1;
        let silent = match &self.promise {
            Some(p) => format!(
                "the master {} at epoch {} has not renewed its lease for {}",
                p.node,
                p.epoch,
                crate::timefmt::format_duration(self.timing.after)
            ),
            None => format!(
                "no master has asked this host for the lease for {}",
                crate::timefmt::format_duration(self.timing.after)
            ),
        };
        // It votes for itself: no promise to the old master from now on.
        self.promise = Some(Promise {
            node: self.me.clone(),
            epoch,
            nonce: 0,
            until: now + self.timing.after,
            lacking_since: None,
            last_ask: now,
            refused_until: None,
        });
        self.candidate = Some((epoch, now));
        self.next_ask = now;
        actions.push(Action::Journal {
            warn: true,
            line: format!("{silent}; asking the witness to take over at epoch {epoch}"),
        });
        actions.extend(self.tick(now));
    }

    /// A message arrived (already authenticated).
    pub fn on_message(&mut self, message: Message, now: Instant) -> Vec<Action> {
        if message.from == self.me {
            return Vec::new();
        }
        let from = message.from;
        self.note_token(&from, message.fresh);
        match message.body {
            Body::Ask {
                nonce, ref echo, ..
            } if !echo.get(&self.me).is_some_and(|t| self.is_fresh(*t, now)) => {
                let reason = format!(
                    "the ask echoes no token {} gave out in the last {} (a replayed ask, or the first one after a start)",
                    self.me,
                    crate::timefmt::format_duration(self.timing.renew_every() * FRESH_SLOTS)
                );
                vec![self.refusal(nonce, reason, true, now)]
            }
            Body::Ask {
                epoch,
                nonce,
                after_ms,
                takeover,
                holding,
                echo,
                voted,
                voters,
            } => {
                // The newest only: a replayed older ask does not lower it.
                if let Some(&token) = echo.get(&self.me) {
                    let newest = self.ask_echo.entry(from.clone()).or_insert(token);
                    *newest = (*newest).max(token);
                }
                if !takeover && self.peer_manual.as_ref().is_some_and(|h| h.node == from) {
                    // It asks for a lease: it runs automatic failover again.
                    self.peer_manual = None;
                }
                if self.kind == Kind::Witness
                    && takeover
                    && let Some(reason) = self.not_the_voter(&from, voted.as_ref())
                {
                    return vec![self.refusal(nonce, reason, false, now)];
                }
                let mut actions = self.on_ask(
                    from,
                    epoch,
                    nonce,
                    after_ms,
                    (takeover, holding, &voters),
                    now,
                );
                if !takeover {
                    actions.extend(self.remember_vote(&actions));
                }
                actions
            }
            Body::Grant {
                nonce,
                epoch,
                witness,
                voter,
            } => {
                // Only the answer to an ask of this run (a replay names nothing).
                if witness && self.asks.iter().any(|(n, _)| *n == nonce) {
                    self.witness_node = Some(from.clone());
                    if self.named_voter.as_ref().is_none_or(|(_, _, n)| nonce > *n) {
                        self.named_voter = Some((epoch, voter, nonce));
                    }
                }
                self.on_grant(from, nonce, epoch, now)
            }
            Body::Refuse {
                nonce,
                reason,
                holder,
                stale,
                witness,
            } => self.on_refuse(from, nonce, (reason, stale, witness), holder, now),
            Body::Ping => vec![self.send(Target::Sender, Body::Pong, now)],
            Body::Pong => Vec::new(),
            Body::Manual { epoch, echo } => {
                let echoed = echo.get(&self.me).filter(|t| self.is_fresh(**t, now));
                match echoed {
                    Some(t) if self.ask_echo.get(&from).is_none_or(|a| t > a) => {
                        self.on_manual(from, epoch, now)
                    }
                    // Fresh, but not newer than its latest ask's token (a
                    // replay from before it went back to automatic mode,
                    // or a switch to manual within one slot): the answer
                    // brings it a newer token for its next notice.
                    Some(_) => vec![self.send(Target::Sender, Body::Pong, now)],
                    // A replay, or the first notice after a start: the
                    // sender's pings bring it a fresh token for the next.
                    None => Vec::new(),
                }
            }
            Body::Release { epoch, nonce } => {
                let matches = |p: &Promise| p.node == from && p.epoch == epoch && p.nonce == nonce;
                if self.owed.as_ref().is_some_and(matches) {
                    self.owed = None;
                    let mut actions = vec![Action::Journal {
                        warn: false,
                        line: format!("{from} released the master's lease at epoch {epoch}"),
                    }];
                    self.check_writable(now, &mut actions);
                    actions
                } else if self.promise.as_ref().is_some_and(matches) {
                    self.promise = None;
                    if self.kind == Kind::FileHost {
                        // The master stepped down for a successor (a planned
                        // switchover): that one asks for votes, or its
                        // replication tells this host the new epoch.
                        self.quiet_until = now + self.timing.after;
                    }
                    vec![Action::Journal {
                        warn: false,
                        line: format!("{from} released the master's lease at epoch {epoch}"),
                    }]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The witness, asked for a takeover by `from`: the reason to refuse it
    /// if `from` is not the voter of the newest master known here. With
    /// several standbys only the one the master asks for its vote may take
    /// over: the master may hold its lease through that one, unseen here.
    /// The witness records that voter from the master's renewals before it
    /// names it in a grant, and a master counts no other file host's grant.
    fn not_the_voter(&self, from: &str, voted: Option<&Holder>) -> Option<String> {
        let known = &self.highest;
        // Nothing known, or the witness granted it the newest epoch itself
        // (a promotion that failed there): it asks again.
        if known.node.is_empty() || known.node == from {
            return None;
        }
        if let Some(voter) = &known.voter {
            return (voter != from).then(|| {
                format!(
                    "the master {} at epoch {} has {voter} for its voter (the witness's record), so only {voter} takes over from it automatically; {from} follows the new master and is promoted by hand",
                    known.node, known.epoch
                )
            });
        }
        // No voter recorded: the master's lease rests on no file host, or
        // it runs with one standby. A host that voted for an older master
        // than the newest one known is not that one's voter; one that says
        // nothing is an sftp-ha older than the witness's (with one standby),
        // and one whose last vote was for itself (a former master) voted for
        // nobody else.
        let voted = voted.filter(|v| v.node != from)?;
        (voted.epoch < known.epoch || (voted.epoch == known.epoch && voted.node != known.node))
            .then(|| {
                format!(
                    "{from} last gave its vote to {} at epoch {}, but the newest master is {} at epoch {}: {from} is not its voter",
                    voted.node, voted.epoch, known.node, known.epoch
                )
            })
    }

    /// A file host that granted a master's renewal remembers that master,
    /// once per master and epoch: the driver keeps it on disk. It comes
    /// after the grant: a lost record costs only a takeover after a
    /// restart, never a second writer.
    fn remember_vote(&mut self, actions: &[Action]) -> Option<Action> {
        if self.kind != Kind::FileHost {
            return None;
        }
        let promise = self.promise.as_ref()?;
        let granted = actions.iter().any(|a| match a {
            Action::Send { message, .. } => {
                matches!(message.body, Body::Grant { nonce, .. } if nonce == promise.nonce)
            }
            _ => false,
        });
        let vote = Holder {
            node: promise.node.clone(),
            epoch: promise.epoch,
            manual: false,
            voter: None,
        };
        if !granted || self.voted_for.as_ref() == Some(&vote) {
            return None;
        }
        self.voted_for = Some(vote.clone());
        self.told_not_a_voter = false;
        Some(Action::RememberVote(vote))
    }

    /// The newest token heard from `node`; an older one of the same run
    /// (a replayed message) does not replace it.
    fn note_token(&mut self, node: &str, token: u64) {
        let older = |known: &u64| known >> 32 == token >> 32 && *known as u32 >= token as u32;
        if !self.tokens.get(node).is_some_and(older) {
            self.tokens.insert(node.to_owned(), token);
        }
    }

    /// `from` says it is the master at `epoch` in `mode = "manual"`.
    fn on_manual(&mut self, from: String, epoch: u64, now: Instant) -> Vec<Action> {
        let known = &self.highest;
        if epoch < known.epoch
            || (epoch == known.epoch && !known.node.is_empty() && known.node != from)
        {
            // An older master, or one another host's lease already holds
            // this epoch for: it is told, and steps down (a manual master
            // otherwise learns of the newer one only through replication).
            let reason = format!(
                "{} is the master at epoch {}, newer than {from}'s epoch {epoch}",
                known.node, known.epoch
            );
            return vec![self.refusal(0, reason, false, now)];
        }
        let holder = Holder {
            node: from.clone(),
            epoch,
            manual: true,
            voter: None,
        };
        match self.kind {
            Kind::Witness => {
                if known.same_master(&holder) {
                    return Vec::new();
                }
                self.highest = holder.clone();
                vec![
                    Action::Persist(holder),
                    Action::Journal {
                        warn: true,
                        line: format!(
                            "{from} is the master at epoch {epoch} in mode = \"manual\": no automatic takeover from it until it runs mode = \"auto\" again"
                        ),
                    },
                ]
            }
            Kind::FileHost if self.role == Role::Master && epoch > self.epoch => {
                self.note_epoch(&holder);
                vec![Action::StepDown {
                    epoch,
                    master: from,
                }]
            }
            Kind::FileHost if self.role != Role::Master => {
                let first = self.peer_manual.as_ref() != Some(&holder);
                self.note_epoch(&holder);
                self.peer_manual = Some(holder);
                let mut actions = Vec::new();
                if let Some((cand, _)) = self.candidate.take() {
                    self.promise = None;
                    self.quiet_until = now + self.timing.after;
                    actions.push(Action::Journal {
                        warn: false,
                        line: format!("the takeover at epoch {cand} is given up"),
                    });
                }
                if first {
                    actions.push(Action::Journal {
                        warn: true,
                        line: format!(
                            "the master {from} at epoch {epoch} runs mode = \"manual\": it does not stop writing when a lease runs out, so this host never takes over from it automatically (promote by hand, or run mode = \"auto\" on both)"
                        ),
                    });
                }
                actions
            }
            _ => Vec::new(),
        }
    }

    fn refusal(&self, nonce: u64, reason: String, stale: bool, now: Instant) -> Action {
        let holder = (!self.highest.node.is_empty()).then(|| self.highest.clone());
        self.send(
            Target::Sender,
            Body::Refuse {
                nonce,
                reason,
                holder,
                stale,
                witness: self.kind == Kind::Witness,
            },
            now,
        )
    }

    fn on_ask(
        &mut self,
        from: String,
        epoch: u64,
        nonce: u64,
        after_ms: u64,
        (takeover, holding, voters): (bool, bool, &[String]),
        now: Instant,
    ) -> Vec<Action> {
        let refuse =
            |core: &mut Core, reason: String| vec![core.refusal(nonce, reason, false, now)];
        let asked_for = Duration::from_millis(after_ms);
        if asked_for > self.timing.after {
            // A voter that restarted waits its own `after`: a longer promise
            // could still be running when it forgot it.
            return refuse(
                self,
                format!(
                    "{} asks for a lease of {} but this host's `after` is {}; set the same [failover] after on all three hosts",
                    from,
                    crate::timefmt::format_duration(asked_for),
                    crate::timefmt::format_duration(self.timing.after)
                ),
            );
        }
        if self.kind == Kind::Manual {
            return refuse(
                self,
                format!(
                    "{} runs mode = \"manual\": it promises no lease (it can be promoted by hand at any time)",
                    self.me
                ),
            );
        }
        if self.role == Role::Master && self.kind == Kind::FileHost {
            return refuse(
                self,
                format!("{} is the master at epoch {}", self.me, self.epoch),
            );
        }
        if self.kind == Kind::Witness
            && epoch == self.highest.epoch
            && !takeover
            && !self.highest.node.is_empty()
            && self.highest.node != from
            && !self.highest.manual
        {
            // A second master at the epoch of the one this voter holds (a
            // standby promoted by hand to an epoch a takeover used already):
            // told who holds it, it steps down.
            return refuse(
                self,
                format!(
                    "{} is the master at epoch {}; a second master at the same epoch steps down",
                    self.highest.node, self.highest.epoch
                ),
            );
        }
        if takeover
            && epoch <= self.highest.epoch
            && !self.highest.node.is_empty()
            && self.highest.node != from
        {
            // A takeover makes a newer master: never a second one at the
            // epoch of the master it replaces.
            return refuse(
                self,
                format!(
                    "a takeover at epoch {epoch} is not newer than epoch {} of {}",
                    self.highest.epoch, self.highest.node
                ),
            );
        }
        if epoch < self.highest.epoch {
            return refuse(
                self,
                format!(
                    "epoch {epoch} is older than epoch {} of {}",
                    self.highest.epoch, self.highest.node
                ),
            );
        }
        let manual = &self.highest;
        if manual.manual && manual.node != from && (takeover || epoch <= manual.epoch) {
            let reason = format!(
                "{} is the master at epoch {} in mode = \"manual\": it does not stop writing when a lease runs out, so nobody takes over from it automatically (switch it to mode = \"auto\", or promote by hand)",
                manual.node, manual.epoch
            );
            return refuse(self, reason);
        }
        if let Some(p) = &self.promise
            && p.node != from
            && p.until > now
        {
            let reason = format!(
                "the lease is promised to {} at epoch {} for {} more",
                p.node,
                p.epoch,
                crate::timefmt::format_duration(p.until.duration_since(now))
            );
            return refuse(self, reason);
        }
        // A voter that restarted forgot what it promised: nothing new
        // before its `after` has passed since the start.
        if now < self.quiet_until && self.kind == Kind::Witness {
            return refuse(
                self,
                "the witness started less than `after` ago and may have promised the lease to another host before".into(),
            );
        }
        if takeover && self.kind == Kind::FileHost {
            // Only the witness decides a takeover; a file host is not asked.
            return refuse(self, "only the witness grants a takeover".into());
        }
        // A master that asks on and on without ever holding the lease gets
        // none of the grants back (one-way loss): it cannot take uploads,
        // and as long as it is renewed here, nobody else can. It is refused
        // for one `after`, long enough for the standby's promise to run out
        // and the standby to ask the witness; then granted again.
        let after = self.timing.after;
        let (lacking_since, refused_until) = match &self.promise {
            Some(p) if p.node == from && now.duration_since(p.last_ask) <= after => {
                (p.lacking_since.or(Some(now)), p.refused_until)
            }
            _ => (Some(now), None),
        };
        let lacking_since = lacking_since.filter(|_| !holding);
        let refused_until = refused_until.filter(|t| *t > now).or_else(|| {
            lacking_since
                .filter(|since| now.duration_since(*since) >= after)
                .map(|_| now + after)
        });
        if let Some(until) = refused_until {
            self.promise = Some(Promise {
                node: from.clone(),
                epoch,
                nonce,
                until: now,
                lacking_since: None,
                last_ask: now,
                refused_until: Some(until),
            });
            return refuse(
                self,
                format!(
                    "{from} has held no lease for {} although this host granted it (its grants are lost on the way back); not renewed for {}, so that another host can take over",
                    crate::timefmt::format_duration(after),
                    crate::timefmt::format_duration(after)
                ),
            );
        }
        let mut actions = Vec::new();
        // A master back in automatic mode clears its `manual` mark.
        let newer = epoch > self.highest.epoch || self.highest.node != from || self.highest.manual;
        self.promise = Some(Promise {
            node: from.clone(),
            epoch,
            nonce,
            until: now + asked_for,
            lacking_since,
            last_ask: now,
            refused_until: None,
        });
        let mut persist = false;
        if newer {
            let holder = Holder {
                node: from.clone(),
                epoch,
                manual: false,
                voter: None,
            };
            if self.kind == Kind::Witness {
                persist = true;
                actions.push(Action::Journal {
                    warn: takeover,
                    line: if takeover {
                        format!(
                            "granted {from} the takeover at epoch {epoch}: the previous master's lease ran out"
                        )
                    } else {
                        format!("{from} holds the master's lease at epoch {epoch}")
                    },
                });
            }
            self.highest = holder;
        }
        let witness = self.kind == Kind::Witness;
        if witness && !takeover {
            // The master's voter: the one recorded if it still names it,
            // else the first it names. Kept on disk before a grant names it.
            let named = |v: &&String| **v != self.me;
            let mut reported = voters.iter().filter(named);
            let kept = self.highest.voter.as_ref().filter(|v| voters.contains(v));
            if kept.is_none()
                && let Some(voter) = reported.next()
            {
                self.highest.voter = Some(voter.clone());
                persist = true;
                actions.push(Action::Journal {
                    warn: false,
                    line: format!(
                        "{from}'s lease at epoch {epoch} rests on {voter} besides the witness: only {voter} takes over from it"
                    ),
                });
            }
        }
        if persist {
            actions.push(Action::Persist(self.highest.clone()));
        }
        let grant = Body::Grant {
            nonce,
            epoch,
            witness,
            voter: self.highest.voter.clone().filter(|_| witness),
        };
        actions.push(self.send(Target::Sender, grant, now));
        actions
    }

    fn on_grant(&mut self, from: String, nonce: u64, epoch: u64, now: Instant) -> Vec<Action> {
        let Some(&(_, sent)) = self.asks.iter().find(|(n, _)| *n == nonce) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        if let Some((cand, _)) = self.candidate
            && cand == epoch
            && self.role == Role::Standby
        {
            self.candidate = None;
            self.promoting = Some(epoch);
            self.granted.clear();
            self.granted.insert(from.clone(), sent);
            actions.push(Action::Promote {
                epoch,
                reason: format!(
                    "automatic failover: the master's lease ran out and the witness {from} granted this host epoch {epoch}"
                ),
            });
            return actions;
        }
        let current = if self.role == Role::Master {
            self.epoch
        } else {
            self.promoting.unwrap_or(0)
        };
        if epoch == current && current != 0 {
            let newest = self.granted.entry(from).or_insert(sent);
            *newest = (*newest).max(sent);
            self.check_writable(now, &mut actions);
        }
        actions
    }

    fn on_refuse(
        &mut self,
        from: String,
        nonce: u64,
        (reason, stale, from_witness): (String, bool, bool),
        holder: Option<Holder>,
        now: Instant,
    ) -> Vec<Action> {
        if self.kind == Kind::Manual {
            // The answer to a notice: a newer master exists.
            return match holder {
                // A newer master, or (the witness's word) another one that
                // holds this very epoch: as an automatic master does below.
                Some(h)
                    if self.role == Role::Master
                        && h.node != self.me
                        && (h.epoch > self.epoch
                            || (h.epoch == self.epoch && from_witness && !h.manual)) =>
                {
                    self.note_epoch(&h);
                    vec![
                        Action::Journal {
                            warn: true,
                            line: format!("{from} answered: {reason}"),
                        },
                        Action::StepDown {
                            epoch: h.epoch,
                            master: h.node,
                        },
                    ]
                }
                _ => Vec::new(),
            };
        }
        if !self.asks.iter().any(|(n, _)| *n == nonce) {
            return Vec::new();
        }
        if stale {
            // The refusal carried a fresh token (noted already): ask again
            // now, once for this ask and any older one (a replayed refusal
            // does not make this host ask on and on).
            if nonce <= self.reasked_for {
                return Vec::new();
            }
            self.reasked_for = nonce;
            self.next_ask = now;
            return self.tick(now);
        }
        let mut actions = Vec::new();
        if let Some(h) = holder.as_ref().filter(|h| h.manual && h.node != self.me)
            && self.role != Role::Master
        {
            self.note_epoch(h);
            self.peer_manual = Some(h.clone());
        }
        if let Some((epoch, _)) = self.candidate {
            self.candidate = None;
            self.promise = None;
            actions.push(Action::Journal {
                warn: false,
                line: format!(
                    "{from} refused the takeover at epoch {epoch}: {reason}; this host stays a standby"
                ),
            });
            // Not again before a whole `after` without a master.
            self.quiet_until = now + self.timing.after;
            return actions;
        }
        // A newer master, or another one at this epoch that the witness
        // holds (made by its grant, where this one was made without it: two
        // masters at one epoch would split the history). A file host's word
        // on who holds its own epoch is not enough: a standby knows its
        // epoch, not always its master's name.
        if self.role == Role::Master
            && let Some(h) = holder
            && h.node != self.me
            && (h.epoch > self.epoch || (h.epoch == self.epoch && from_witness))
        {
            self.note_epoch(&h);
            actions.push(Action::StepDown {
                epoch: h.epoch,
                master: h.node,
            });
        }
        actions
    }
}

#[cfg(test)]
mod tests;
