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
        #[serde(default)]
        holding: bool,
    },
    /// The promise was given, for the ask with this nonce.
    Grant {
        nonce: u64,
        epoch: u64,
    },
    /// It was not; `holder` is whom the voter holds for the master.
    Refuse {
        nonce: u64,
        reason: String,
        holder: Option<Holder>,
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
}

/// A master as a voter knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub epoch: u64,
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
}

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
        }
    }

    pub fn view(&self, now: Instant) -> View {
        View {
            lease_until: self.lease_until().filter(|u| *u > now),
            promised: self
                .promise
                .as_ref()
                .filter(|p| p.until > now)
                .map(|p| (p.node.clone(), p.epoch, p.until)),
            granted_by: self.granted.keys().cloned().collect(),
            writable: self.writable,
            candidate: self.candidate.map(|(e, _)| e),
        }
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
        });
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
            actions.push(self.send(Target::Witness, Body::Release { epoch, nonce }));
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

    fn send(&mut self, to: Target, body: Body) -> Action {
        Action::Send {
            to,
            message: Message {
                from: self.me.clone(),
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
            .values()
            .max()
            .map(|sent| *sent + self.timing.after)
    }

    /// The clock moved on: ask again, notice a lease running out, or a
    /// master gone silent.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.kind == Kind::Witness {
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
            };
            actions.push(self.send(Target::Witness, ask.clone()));
            if !takeover {
                actions.push(self.send(Target::Peer, ask));
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
        if now < self.quiet_until || self.promise.as_ref().is_some_and(|p| p.until > now) {
            return;
        }
        let epoch = self.highest.epoch.max(self.epoch).max(1) + 1;
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
        match message.body {
            Body::Ask {
                epoch,
                nonce,
                after_ms,
                takeover,
                holding,
            } => self.on_ask(from, epoch, nonce, after_ms, (takeover, holding), now),
            Body::Grant { nonce, epoch } => self.on_grant(from, nonce, epoch, now),
            Body::Refuse {
                nonce,
                reason,
                holder,
            } => self.on_refuse(from, nonce, reason, holder, now),
            Body::Ping => vec![self.send(Target::Sender, Body::Pong)],
            Body::Pong => Vec::new(),
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

    fn on_ask(
        &mut self,
        from: String,
        epoch: u64,
        nonce: u64,
        after_ms: u64,
        (takeover, holding): (bool, bool),
        now: Instant,
    ) -> Vec<Action> {
        let refuse = |core: &mut Core, reason: String| {
            let holder = (!core.highest.node.is_empty()).then(|| core.highest.clone());
            vec![core.send(
                Target::Sender,
                Body::Refuse {
                    nonce,
                    reason,
                    holder,
                },
            )]
        };
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
        if self.role == Role::Master && self.kind == Kind::FileHost {
            return refuse(
                self,
                format!("{} is the master at epoch {}", self.me, self.epoch),
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
        let newer = epoch > self.highest.epoch || self.highest.node != from;
        self.promise = Some(Promise {
            node: from.clone(),
            epoch,
            nonce,
            until: now + asked_for,
            lacking_since,
            last_ask: now,
            refused_until: None,
        });
        if newer {
            let holder = Holder {
                node: from.clone(),
                epoch,
            };
            if self.kind == Kind::Witness {
                actions.push(Action::Persist(holder.clone()));
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
        actions.push(self.send(Target::Sender, Body::Grant { nonce, epoch }));
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
        reason: String,
        holder: Option<Holder>,
        now: Instant,
    ) -> Vec<Action> {
        if !self.asks.iter().any(|(n, _)| *n == nonce) {
            return Vec::new();
        }
        let mut actions = Vec::new();
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
        if self.role == Role::Master
            && let Some(h) = holder
            && h.node != self.me
            && h.epoch > self.epoch
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
