//! When the sync worker does what: rounds after events (debounced), the
//! fallback full walk, reconnects with a capped backoff, audits of the
//! standby, peer-role checks and index writes.
//!
//! Sans-IO: [`Schedule`] takes events with the time they happened and
//! answers questions for a given time; it never reads the clock, so tests
//! drive time by hand.

use std::time::{Duration, Instant};

/// How long after the first event of a batch its round starts: the events of
/// a burst arriving meanwhile join the same round. Not reset by later events,
/// so a steady stream of uploads cannot postpone replication.
pub const DEBOUNCE: Duration = Duration::from_millis(25);
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// A standby back after an outage is noticed within this (plus the connect timeout).
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The backoff cap for a failure only the admin can fix (pairing, a peer
/// that refuses the role): checked often, so sync starts soon after the fix.
pub const BACKOFF_ADMIN: Duration = Duration::from_secs(3);
/// When a round left files settling or paths to look at again, the next one
/// comes this soon.
pub const AGAIN: Duration = Duration::from_millis(500);
/// While a handover waits for the last operations to be confirmed, how soon
/// it looks again.
pub const HANDOVER_AGAIN: Duration = Duration::from_millis(200);
/// At most one write of the index per this interval, and this again per
/// [`INDEX_PATHS_PER_INTERVAL`] paths (see [`index_save_interval`]).
pub const INDEX_SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// The index's size that earns one more [`INDEX_SAVE_INTERVAL`] between writes.
pub const INDEX_PATHS_PER_INTERVAL: usize = 100_000;
/// How often a connected master reads its peer's role: a promotion there (or
/// a switchover request) is noticed within this.
pub const PEER_CHECK: Duration = Duration::from_secs(1);
/// The worker's loop never sleeps longer than this: a stop request, the
/// daemon's handover, keepalives and peer checks are looked at in between.
pub const MAX_SLEEP: Duration = Duration::from_millis(200);

/// How long an index of `paths` paths waits between writes: each write is
/// the whole file (128 MB and about half a second of CPU at a million
/// paths), so a big index under a steady trickle of uploads is written less
/// often. Nothing is lost by the wait: what a crash loses of the index costs
/// no re-upload (the audit after a restart confirms files already on the
/// standby as they are), and a step-down or stop writes it at once.
pub fn index_save_interval(paths: usize) -> Duration {
    let steps = u32::try_from(paths / INDEX_PATHS_PER_INTERVAL).unwrap_or(u32::MAX);
    INDEX_SAVE_INTERVAL.saturating_mul(steps.max(1))
}

/// The worker's timers.
#[derive(Debug, Clone)]
pub struct Schedule {
    fallback_interval: Duration,
    audit_interval: Duration,
    /// When the next round runs; `None`: only when events or the fallback
    /// timer ask for one.
    due: Option<Instant>,
    /// When the whole data dir is walked again, events or not.
    next_fallback: Instant,
    /// How long the next failure waits before the retry.
    backoff: Duration,
    /// While the standby is unreachable: when to try again. Events do not
    /// bring a round before it.
    retry_at: Option<Instant>,
    /// When to list the standby and repair drift next (also after every connect).
    next_audit: Instant,
    last_peer_check: Instant,
    /// The index changed since it was last written, and when that was.
    index_unsaved: bool,
    index_saved: Instant,
}

impl Schedule {
    /// A worker starting at `now`: a round (the start-up walk) is due at once.
    pub fn new(now: Instant, fallback_interval: Duration, audit_interval: Duration) -> Schedule {
        Schedule {
            fallback_interval,
            audit_interval,
            due: Some(now),
            next_fallback: now + fallback_interval,
            backoff: BACKOFF_MIN,
            retry_at: None,
            next_audit: now,
            last_peer_check: now,
            index_unsaved: false,
            index_saved: now,
        }
    }

    /// Until when the worker may sleep waiting for events: the next round or
    /// fallback walk, and never more than [`MAX_SLEEP`].
    pub fn next_wake(&self, now: Instant) -> Instant {
        let wake = self
            .due
            .map_or(self.next_fallback, |d| d.min(self.next_fallback));
        wake.min(now + MAX_SLEEP)
    }

    /// Events named paths to look at: a round soon ([`DEBOUNCE`]), but not
    /// before a reconnect is due, and never later than already planned.
    pub fn events_arrived(&mut self, now: Instant) {
        let soon = now + DEBOUNCE;
        let earliest = self.retry_at.map_or(soon, |r| r.max(soon));
        self.due = Some(self.due.map_or(earliest, |d| d.min(earliest)));
    }

    /// A standby's worker got a new look of the master's tree (already
    /// debounced by the local side): a round at once, but not before a
    /// reconnect is due, and never later than already planned.
    pub fn update_arrived(&mut self, now: Instant) {
        let earliest = self.retry_at.map_or(now, |r| r.max(now));
        self.due = Some(self.due.map_or(earliest, |d| d.min(earliest)));
    }

    /// True once the fallback period has passed since the start or the last
    /// fallback walk.
    pub fn fallback_due(&self, now: Instant) -> bool {
        now >= self.next_fallback
    }

    /// The fallback walk was asked for: it runs at once, the next one a
    /// period from now.
    pub fn fallback_started(&mut self, now: Instant) {
        self.next_fallback = now + self.fallback_interval;
        self.due = Some(now);
    }

    pub fn round_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|d| now >= d)
    }

    /// A round (or a retry after a failure) is planned: something is left to do.
    pub fn round_planned(&self) -> bool {
        self.due.is_some()
    }

    /// A round ended: the next one at a reconnect (`retry`), or soon if
    /// files were settling or paths are left to look at (`again`), whichever
    /// comes first; none if all is done. Unlike events, `again` is not held
    /// back until a pending reconnect: a round with files settling while the
    /// standby is unreachable tries to connect again after [`AGAIN`] (the
    /// behaviour the worker had before this module; see the test
    /// `a_round_that_left_work_runs_again_at_the_retry_or_soon_whichever_first`).
    pub fn round_done(&mut self, now: Instant, retry: Option<Instant>, again: bool) {
        let again = again.then(|| now + AGAIN);
        self.due = match (retry, again) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The data dir could not be walked: tried again after [`BACKOFF_MAX`].
    pub fn scan_failed(&mut self, now: Instant) {
        self.due = Some(now + BACKOFF_MAX);
    }

    /// A handover still waits for operations to be confirmed.
    pub fn handover_pending(&mut self, now: Instant) {
        self.due = Some(now + HANDOVER_AGAIN);
    }

    /// A session to the standby is open (and the peer judged): the backoff
    /// starts over, and the new connection is audited before anything is sent.
    pub fn connected(&mut self, now: Instant) {
        self.backoff = BACKOFF_MIN;
        self.retry_at = None;
        self.next_audit = now;
    }

    /// The connection failed or broke: returns when to retry, which is also
    /// when the next round runs. The wait doubles on each failure up to
    /// [`BACKOFF_MAX`], or [`BACKOFF_ADMIN`] for what needs the admin.
    pub fn failed(&mut self, now: Instant, needs_admin: bool) -> Instant {
        let wait = self.backoff;
        let cap = if needs_admin {
            BACKOFF_ADMIN
        } else {
            BACKOFF_MAX
        };
        self.backoff = (self.backoff * 2).min(cap);
        let retry = now + wait;
        self.retry_at = Some(retry);
        self.due = Some(retry);
        retry
    }

    pub fn audit_due(&self, now: Instant) -> bool {
        now >= self.next_audit
    }

    /// The standby was listed and compared: the next audit a period from now.
    pub fn audited(&mut self, now: Instant) {
        self.next_audit = now + self.audit_interval;
    }

    pub fn peer_check_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_peer_check) >= PEER_CHECK
    }

    pub fn peer_checked(&mut self, now: Instant) {
        self.last_peer_check = now;
    }

    /// The index changed in memory.
    pub fn index_changed(&mut self) {
        self.index_unsaved = true;
    }

    /// The index has changes not yet written.
    pub fn index_unsaved(&self) -> bool {
        self.index_unsaved
    }

    /// The index of `paths` paths has changes and its last write is
    /// [`index_save_interval`] old.
    pub fn index_save_due(&self, now: Instant, paths: usize) -> bool {
        self.index_unsaved
            && now.saturating_duration_since(self.index_saved) >= index_save_interval(paths)
    }

    /// The index was written (or its write failed: it is tried again after
    /// the next change, not in a loop).
    pub fn index_saved(&mut self, now: Instant) {
        self.index_unsaved = false;
        self.index_saved = now;
    }
}

/// Lines of one kind logged one by one per [`LogBudget::WINDOW`]; the rest
/// are counted and said in one line, so users' churn cannot flood the journal.
#[derive(Debug, Clone)]
pub struct LogBudget {
    per_window: usize,
    window_start: Instant,
    counted: usize,
}

/// What to log of one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// Log this one in full.
    pub log: bool,
    /// Occurrences of the window that just ended that were only counted:
    /// to be said in one line, if any.
    pub unlogged_before: usize,
}

impl LogBudget {
    pub const WINDOW: Duration = Duration::from_secs(60);

    pub fn new(now: Instant, per_window: usize) -> LogBudget {
        LogBudget {
            per_window,
            window_start: now,
            counted: 0,
        }
    }

    /// One more occurrence at `now`. A window starts with the first
    /// occurrence after the last one ended.
    pub fn spend(&mut self, now: Instant) -> Spend {
        let mut unlogged_before = 0;
        if now.saturating_duration_since(self.window_start) >= Self::WINDOW {
            unlogged_before = self.counted.saturating_sub(self.per_window);
            self.window_start = now;
            self.counted = 0;
        }
        self.counted += 1;
        Spend {
            log: self.counted <= self.per_window,
            unlogged_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FALLBACK: Duration = Duration::from_secs(300);
    const AUDIT: Duration = Duration::from_secs(3600);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A schedule whose start-up round has run and found nothing left to do.
    fn idle(t0: Instant) -> Schedule {
        let mut s = Schedule::new(t0, FALLBACK, AUDIT);
        s.round_done(t0, None, false);
        s
    }

    #[test]
    fn the_start_up_round_is_due_at_once() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, FALLBACK, AUDIT);
        assert!(s.round_due(t0));
        assert!(s.audit_due(t0));
        assert!(!s.fallback_due(t0));
        assert_eq!(s.next_wake(t0), t0);
    }

    #[test]
    fn an_idle_worker_sleeps_at_most_max_sleep() {
        let t0 = Instant::now();
        let s = idle(t0);
        assert!(!s.round_planned());
        assert!(!s.round_due(t0 + secs(100)));
        assert_eq!(s.next_wake(t0), t0 + MAX_SLEEP);
        // Close to the fallback walk, it wakes for it.
        let near = t0 + FALLBACK - ms(50);
        assert_eq!(s.next_wake(near), t0 + FALLBACK);
    }

    #[test]
    fn events_bring_a_round_after_the_debounce() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.events_arrived(t0 + ms(10));
        assert!(!s.round_due(t0 + ms(34)));
        assert!(s.round_due(t0 + ms(35)));
        assert_eq!(s.next_wake(t0 + ms(10)), t0 + ms(35));
    }

    #[test]
    fn the_debounce_is_not_reset_by_later_events() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.events_arrived(t0);
        for k in 1..=20 {
            s.events_arrived(t0 + ms(k));
        }
        assert!(s.round_due(t0 + DEBOUNCE));
    }

    #[test]
    fn events_never_postpone_a_round_already_due_sooner() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.round_done(t0, None, true); // again at t0 + 500 ms
        s.events_arrived(t0 + ms(490));
        assert!(s.round_due(t0 + AGAIN));
        // And bring forward one planned later.
        let mut s = idle(t0);
        s.round_done(t0, Some(t0 + secs(60)), false);
        s.events_arrived(t0 + ms(10));
        assert!(s.round_due(t0 + ms(35)));
    }

    #[test]
    fn events_never_bring_a_round_before_a_pending_reconnect() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        let retry = s.failed(t0, false);
        assert_eq!(retry, t0 + BACKOFF_MIN);
        s.events_arrived(t0 + ms(10));
        assert!(!s.round_due(t0 + ms(35)));
        assert!(!s.round_due(retry - ms(1)));
        assert!(s.round_due(retry));
        // A retry time that has passed delays nothing.
        s.round_done(retry, None, false);
        s.events_arrived(retry + secs(5));
        assert!(!s.round_due(retry + secs(5)));
        assert!(s.round_due(retry + secs(5) + DEBOUNCE));
    }

    #[test]
    fn a_connection_ends_the_reconnect_wait() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.failed(t0, false);
        s.failed(t0, false); // retry at t0 + 2 s
        s.connected(t0 + ms(100));
        s.round_done(t0 + ms(100), None, false);
        s.events_arrived(t0 + ms(200));
        assert!(s.round_due(t0 + ms(225)));
    }

    #[test]
    fn a_failure_plans_the_next_round_at_the_retry() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        let retry = s.failed(t0, false);
        assert!(s.round_planned());
        assert!(!s.round_due(retry - ms(1)));
        assert!(s.round_due(retry));
        assert_eq!(s.next_wake(retry - ms(100)), retry);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_starts_over_on_connect() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        let waits: Vec<Duration> = (0..6).map(|_| s.failed(t0, false) - t0).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10].map(secs));
        s.connected(t0);
        assert_eq!(s.failed(t0, false) - t0, BACKOFF_MIN);
    }

    #[test]
    fn what_needs_the_admin_is_retried_at_least_every_three_seconds() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        let waits: Vec<Duration> = (0..4).map(|_| s.failed(t0, true) - t0).collect();
        assert_eq!(waits, [1, 2, 3, 3].map(secs));
        // After a longer backoff, the cap applies from the wait after this one.
        let mut s = idle(t0);
        for _ in 0..4 {
            s.failed(t0, false);
        }
        assert_eq!(s.failed(t0, true) - t0, secs(10));
        assert_eq!(s.failed(t0, true) - t0, secs(3));
        // And back to the ordinary cap once the admin's problem is gone.
        let waits: Vec<Duration> = (0..3).map(|_| s.failed(t0, false) - t0).collect();
        assert_eq!(waits, [3, 6, 10].map(secs));
    }

    #[test]
    fn a_round_that_left_work_runs_again_at_the_retry_or_soon_whichever_first() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.round_done(t0, None, true);
        assert!(!s.round_due(t0 + AGAIN - ms(1)));
        assert!(s.round_due(t0 + AGAIN));

        s.round_done(t0, Some(t0 + secs(4)), false);
        assert!(!s.round_due(t0 + secs(4) - ms(1)));
        assert!(s.round_due(t0 + secs(4)));

        s.round_done(t0, Some(t0 + secs(4)), true);
        assert!(s.round_due(t0 + AGAIN));
        s.round_done(t0, Some(t0 + ms(100)), true);
        assert!(s.round_due(t0 + ms(100)));

        s.round_done(t0, None, false);
        assert!(!s.round_planned());
    }

    #[test]
    fn a_failed_walk_is_tried_again_after_the_longest_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, FALLBACK, AUDIT);
        s.scan_failed(t0);
        assert!(!s.round_due(t0 + BACKOFF_MAX - ms(1)));
        assert!(s.round_due(t0 + BACKOFF_MAX));
        // The backoff of the connection is not touched.
        assert_eq!(s.failed(t0, false) - t0, BACKOFF_MIN);
    }

    #[test]
    fn a_pending_handover_looks_again_soon() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.handover_pending(t0);
        assert!(!s.round_due(t0 + ms(199)));
        assert!(s.round_due(t0 + HANDOVER_AGAIN));
    }

    #[test]
    fn the_fallback_walk_comes_every_period_from_when_it_ran() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        assert!(!s.fallback_due(t0 + FALLBACK - ms(1)));
        let late = t0 + FALLBACK + ms(150);
        assert!(s.fallback_due(late));
        s.fallback_started(late);
        assert!(s.round_due(late));
        assert!(!s.fallback_due(late + FALLBACK - ms(1)));
        assert!(s.fallback_due(late + FALLBACK));
        // A fallback walk does not wait for a pending reconnect either.
        let mut s = idle(t0);
        s.failed(t0, false);
        s.failed(t0, false);
        s.failed(t0, false);
        s.failed(t0 + FALLBACK - ms(1), false); // retry 8 s after
        s.fallback_started(t0 + FALLBACK);
        assert!(s.round_due(t0 + FALLBACK));
    }

    #[test]
    fn a_new_connection_is_audited_at_once_then_every_period() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.audited(t0);
        assert!(!s.audit_due(t0 + AUDIT - ms(1)));
        assert!(s.audit_due(t0 + AUDIT));
        // Reconnected in between: audited before anything is sent.
        let back = t0 + secs(30);
        s.connected(back);
        assert!(s.audit_due(back));
        s.audited(back + secs(2));
        assert!(!s.audit_due(back + secs(2) + AUDIT - ms(1)));
        assert!(s.audit_due(back + secs(2) + AUDIT));
    }

    #[test]
    fn the_peer_is_read_every_second() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        assert!(!s.peer_check_due(t0 + ms(999)));
        assert!(s.peer_check_due(t0 + PEER_CHECK));
        s.peer_checked(t0 + secs(5));
        assert!(!s.peer_check_due(t0 + secs(5) + ms(999)));
        assert!(s.peer_check_due(t0 + secs(6)));
    }

    #[test]
    fn the_index_is_written_at_most_every_five_seconds_and_only_when_changed() {
        let t0 = Instant::now();
        let mut s = idle(t0);
        let small = 1000;
        assert!(!s.index_unsaved());
        assert!(!s.index_save_due(t0 + secs(60), small));
        s.index_changed();
        assert!(s.index_unsaved());
        assert!(!s.index_save_due(t0 + INDEX_SAVE_INTERVAL - ms(1), small));
        assert!(s.index_save_due(t0 + INDEX_SAVE_INTERVAL, small));
        let saved = t0 + secs(7);
        s.index_saved(saved);
        assert!(!s.index_unsaved());
        s.index_changed();
        assert!(!s.index_save_due(saved + secs(4), small));
        assert!(s.index_save_due(saved + INDEX_SAVE_INTERVAL, small));
    }

    #[test]
    fn a_big_index_is_written_less_often() {
        assert_eq!(index_save_interval(0), secs(5));
        assert_eq!(index_save_interval(199_999), secs(5));
        assert_eq!(index_save_interval(200_000), secs(10));
        assert_eq!(index_save_interval(1_010_020), secs(50));
        assert!(index_save_interval(usize::MAX) >= secs(3600));
        let t0 = Instant::now();
        let mut s = idle(t0);
        s.index_changed();
        assert!(!s.index_save_due(t0 + secs(49), 1_000_000));
        assert!(s.index_save_due(t0 + secs(50), 1_000_000));
    }

    #[test]
    fn a_log_budget_logs_so_many_a_minute_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(t0, 3);
        let logged: Vec<bool> = (0..5).map(|k| b.spend(t0 + secs(k)).log).collect();
        assert_eq!(logged, [true, true, true, false, false]);
        // The next window says how many went unlogged, once.
        assert_eq!(
            b.spend(t0 + secs(60)),
            Spend {
                log: true,
                unlogged_before: 2
            }
        );
        assert_eq!(b.spend(t0 + secs(61)).unlogged_before, 0);
        // A quiet window: nothing to say, and a new one starts at the next occurrence.
        let later = t0 + secs(500);
        assert_eq!(
            b.spend(later),
            Spend {
                log: true,
                unlogged_before: 0
            }
        );
        for k in 1..3 {
            assert!(b.spend(later + secs(k)).log);
        }
        assert!(!b.spend(later + secs(59)).log);
        assert!(b.spend(later + secs(60)).log);
    }
}
