//! The per-user rate limit on the SFTP log: the policy alone, with the time
//! passed in by the caller so that tests drive it.
//!
//! journald drops a unit's lines once it logs more than `RateLimitBurst` (10,000
//! by default) in `RateLimitIntervalSec` (30 s), whoever they are about. So one
//! user fetching thousands of small files could hide another user's upload or
//! delete. Each user (uid) therefore gets two token buckets of their own:
//!
//! - **changes** (uploads, renames, deletes, mkdir, rmdir, logins, logouts):
//!   a burst of 300 lines, then 5 a second, so at most 450 lines in any 30 s;
//! - **reads** (downloads, and internal-sftp's other lines when the level is debug):
//!   a burst of 100 lines, then 2 a second, so at most 160 lines in any 30 s.
//!
//! The changes are the lines that matter for security, so they get the larger
//! budget, and a bucket of their own: a user's flood of downloads never costs a
//! line about their (or anyone's) uploads or deletes. A person working
//! interactively (a few commands a minute, a folder of a few hundred files
//! now and then) stays within the bursts and is never limited; only scripted
//! bulk transfers are. One user can put at most about 615 lines in the journal
//! in 30 s (both budgets, plus the notice and summaries below), so journald's
//! default limit is reached only if more than 16 users flood uploads and
//! downloads at the same moment (more than 60 if they flood only downloads).
//!
//! A line over budget is not logged but counted, per user and per kind. The
//! first one logs a notice instead ("rate-limited from now on"), and every
//! [`SUMMARY_EVERY`] while the user stays limited one summary line says how many
//! lines of each kind were not logged. The counting window starts at the first
//! suppressed line; a window in which nothing more was suppressed ends the
//! user's limited state silently (a later flood starts with a notice again).
//! With these refill rates a drained bucket takes 50 s or more to fill up, so
//! the summary is always due at the end of the window, whether the user is
//! still sending or went quiet; the caller asks [`UserRateLimit::deadline`]
//! when to call [`UserRateLimit::flush_due`].
//!
//! Memory: a user has an entry only while one of their buckets is not full or
//! they are limited, that is for at most about a minute after their last line;
//! `flush_due` drops the others (a new entry would be the same: full buckets).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// How often a limited user's summary is logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// What a line of the SFTP log is about, for the budget and the summary's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Login,
    Logout,
    Upload,
    Download,
    Rename,
    Delete,
    Mkdir,
    Rmdir,
    Other,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Login,
        Kind::Logout,
        Kind::Upload,
        Kind::Download,
        Kind::Rename,
        Kind::Delete,
        Kind::Mkdir,
        Kind::Rmdir,
        Kind::Other,
    ];

    pub fn class(self) -> Class {
        match self {
            Kind::Download | Kind::Other => Class::Read,
            _ => Class::Change,
        }
    }

    /// Singular and plural, for the summary.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Kind::Login => ("login", "logins"),
            Kind::Logout => ("logout", "logouts"),
            Kind::Upload => ("upload", "uploads"),
            Kind::Download => ("download", "downloads"),
            Kind::Rename => ("rename", "renames"),
            Kind::Delete => ("delete", "deletes"),
            Kind::Mkdir => ("mkdir", "mkdirs"),
            Kind::Rmdir => ("rmdir", "rmdirs"),
            Kind::Other => ("other line", "other lines"),
        }
    }
}

/// Which of a user's two budgets a line takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Change,
    Read,
}

impl Class {
    /// The burst, and the lines per second it refills at (see the module docs).
    pub const fn budget(self) -> (u64, u64) {
        match self {
            Class::Change => (300, 5),
            Class::Read => (100, 2),
        }
    }

    /// What the notice says ran over the budget.
    pub fn words(self) -> &'static str {
        match self {
            Class::Change => "uploads, renames, deletes and logins",
            Class::Read => "downloads",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Change => 0,
            Class::Read => 1,
        }
    }
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the budget: log it.
    Log,
    /// Over the budget, the first time: log the notice that the user is
    /// rate-limited from now on instead of the line (which is counted).
    SuppressWithNotice,
    /// Over the budget: only counted.
    Suppress,
}

/// Lines not logged, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts([u64; Kind::ALL.len()]);

impl Counts {
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn add(&mut self, kind: Kind) {
        self.0[kind as usize] += 1;
    }
}

/// `4,800 downloads, 12 uploads, 1 rename`: the largest counts first.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|&k| self.get(k) > 0).collect();
        // Stable: equal counts keep the order of `Kind::ALL`.
        kinds.sort_by_key(|&k| std::cmp::Reverse(self.get(k)));
        for (i, kind) in kinds.into_iter().enumerate() {
            let n = self.get(kind);
            let (one, many) = kind.words();
            let sep = if i == 0 { "" } else { ", " };
            write!(
                f,
                "{sep}{} {}",
                thousands(n),
                if n == 1 { one } else { many }
            )?;
        }
        Ok(())
    }
}

/// `4812` as `4,812`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One user's lines that were not logged in the window that just ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The sender's uid (`None`: the kernel did not say).
    pub uid: Option<u32>,
    pub counts: Counts,
    /// How long the window was (`SUMMARY_EVERY`, or a little more if the call was late).
    pub over: Duration,
}

/// A token bucket counted in thousandths of a line, so it refills exactly.
#[derive(Debug)]
struct Bucket {
    class: Class,
    milli: u64,
    /// Up to when the refill has been counted.
    at: Instant,
}

impl Bucket {
    fn full(class: Class, now: Instant) -> Bucket {
        Bucket {
            class,
            milli: class.budget().0 * 1000,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let (burst, per_second) = self.class.budget();
        let cap = burst * 1000;
        let ms =
            u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        // `per_second` lines a second is `per_second` thousandths a millisecond.
        self.milli = self
            .milli
            .saturating_add(ms.saturating_mul(per_second))
            .min(cap);
        // Only whole milliseconds are counted; the rest carries over to the next call.
        self.at = if self.milli == cap {
            now.max(self.at)
        } else {
            self.at + Duration::from_millis(ms)
        };
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.milli == self.class.budget().0 * 1000
    }
}

#[derive(Debug)]
struct Window {
    since: Instant,
    counts: Counts,
}

#[derive(Debug)]
struct User {
    buckets: [Bucket; 2],
    /// Set while the user is rate-limited.
    window: Option<Window>,
}

/// The per-uid budgets and the counts of what was not logged.
#[derive(Debug, Default)]
pub struct UserRateLimit {
    users: HashMap<Option<u32>, User>,
}

impl UserRateLimit {
    /// Decides about one line of `uid`'s at `now`.
    pub fn record(&mut self, uid: Option<u32>, kind: Kind, now: Instant) -> Decision {
        let user = self.users.entry(uid).or_insert_with(|| User {
            buckets: [
                Bucket::full(Class::Change, now),
                Bucket::full(Class::Read, now),
            ],
            window: None,
        });
        if user.buckets[kind.class().index()].take(now) {
            return Decision::Log;
        }
        match &mut user.window {
            Some(window) => {
                window.counts.add(kind);
                Decision::Suppress
            }
            None => {
                let mut counts = Counts::default();
                counts.add(kind);
                user.window = Some(Window { since: now, counts });
                Decision::SuppressWithNotice
            }
        }
    }

    /// When the next window ends (`flush_due` should be called then), if a user is limited.
    pub fn deadline(&self) -> Option<Instant> {
        self.users
            .values()
            .filter_map(|u| u.window.as_ref())
            .map(|w| w.since + SUMMARY_EVERY)
            .min()
    }

    /// Ends the windows due at `now`: returns a summary for each that counted
    /// something (by uid), ends the limited state of users with nothing to
    /// report, and forgets users whose budgets are full again.
    pub fn flush_due(&mut self, now: Instant) -> Vec<Summary> {
        let mut summaries = Vec::new();
        self.users.retain(|&uid, user| {
            if let Some(window) = &mut user.window
                && window.since + SUMMARY_EVERY <= now
            {
                if window.counts.total() > 0 {
                    summaries.push(Summary {
                        uid,
                        counts: window.counts,
                        over: now.saturating_duration_since(window.since),
                    });
                    *window = Window {
                        since: now,
                        counts: Counts::default(),
                    };
                } else {
                    user.window = None;
                }
            }
            user.window.is_some() || !user.buckets.iter_mut().all(|b| b.is_full(now))
        });
        summaries.sort_by_key(|s| s.uid);
        summaries
    }

    /// How many users have an entry.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOODER: Option<u32> = Some(1000);
    const OTHER: Option<u32> = Some(1001);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Records `kind` for `uid` and tallies the decisions into `tally`.
    fn tally(
        limit: &mut UserRateLimit,
        uid: Option<u32>,
        kind: Kind,
        now: Instant,
        tally: &mut [u64; 3],
    ) {
        match limit.record(uid, kind, now) {
            Decision::Log => tally[0] += 1,
            Decision::SuppressWithNotice => tally[1] += 1,
            Decision::Suppress => tally[2] += 1,
        }
    }

    #[test]
    fn a_flood_is_limited_and_summarised() {
        let (burst, per_second) = Class::Read.budget();
        let t0 = Instant::now();
        let mut limit = UserRateLimit::default();
        let mut seen = [0; 3];
        // 1,000 downloads in one second.
        for i in 0..1000 {
            tally(&mut limit, FLOODER, Kind::Download, t0 + ms(i), &mut seen);
        }
        // The burst, plus what refilled during the second (2/s: one at 500 ms, not yet the second).
        assert_eq!(per_second, 2);
        assert_eq!(seen, [burst + 1, 1, 1000 - burst - 2]);
        // The window started with the first suppressed line, the 101st, at 100 ms.
        assert_eq!(limit.deadline(), Some(t0 + ms(burst) + SUMMARY_EVERY));
        assert!(limit.flush_due(t0 + ms(1000)).is_empty());
        let summaries = limit.flush_due(t0 + ms(burst) + SUMMARY_EVERY);
        assert_eq!(summaries.len(), 1);
        let summary = &summaries[0];
        assert_eq!(summary.uid, FLOODER);
        assert_eq!(summary.over, SUMMARY_EVERY);
        assert_eq!(summary.counts.get(Kind::Download), 1000 - burst - 1);
        assert_eq!(summary.counts.total(), 1000 - burst - 1);
        assert_eq!(summary.counts.to_string(), "899 downloads");
    }

    #[test]
    fn other_users_and_changes_are_logged_during_a_flood() {
        let t0 = Instant::now();
        let mut limit = UserRateLimit::default();
        let (mut flooder, mut flooder_changes, mut other) = ([0; 3], [0; 3], [0; 3]);
        // 20 s of 500 downloads a second; meanwhile the flooder uploads and
        // renames a file a second, and another user works normally.
        for i in 0..10_000 {
            let now = t0 + ms(i * 2);
            tally(&mut limit, FLOODER, Kind::Download, now, &mut flooder);
            if i % 500 == 0 {
                tally(&mut limit, FLOODER, Kind::Upload, now, &mut flooder_changes);
                tally(&mut limit, FLOODER, Kind::Rename, now, &mut flooder_changes);
            }
            if i % 50 == 0 {
                let kind = [Kind::Upload, Kind::Download, Kind::Delete, Kind::Rmdir]
                    [(i / 50) as usize % 4];
                tally(&mut limit, OTHER, kind, now, &mut other);
            }
            for summary in limit.flush_due(now) {
                assert_eq!(summary.uid, FLOODER);
            }
        }
        assert_eq!(other, [200, 0, 0]);
        assert_eq!(flooder_changes, [40, 0, 0]);
        // The flooder: the burst, 2 a second for 20 s, the rest counted.
        assert_eq!(flooder[0], 100 + 39);
        assert_eq!(flooder[1], 1);
    }

    #[test]
    fn the_budget_refills_over_time() {
        let (burst, _) = Class::Read.budget();
        let t0 = Instant::now();
        let mut limit = UserRateLimit::default();
        for _ in 0..burst {
            assert_eq!(limit.record(FLOODER, Kind::Download, t0), Decision::Log);
        }
        assert_eq!(
            limit.record(FLOODER, Kind::Download, t0),
            Decision::SuppressWithNotice
        );
        assert_eq!(
            limit.record(FLOODER, Kind::Download, t0 + ms(499)),
            Decision::Suppress
        );
        // 2 a second: one line's worth after 500 ms, counted across calls.
        assert_eq!(
            limit.record(FLOODER, Kind::Download, t0 + ms(500)),
            Decision::Log
        );
        assert_eq!(
            limit.record(FLOODER, Kind::Download, t0 + ms(500)),
            Decision::Suppress
        );
        // Calls closer together than a millisecond do not lose the refill.
        let mut now = t0 + ms(500);
        let mut logged = 0;
        while now < t0 + ms(1000) {
            now += Duration::from_micros(300);
            if limit.record(FLOODER, Kind::Download, now) == Decision::Log {
                logged += 1;
            }
        }
        assert_eq!(logged, 1);
        // Quiet for 60 s: the whole burst again, and no more.
        let later = t0 + Duration::from_secs(61);
        for _ in 0..burst {
            assert_eq!(limit.record(FLOODER, Kind::Download, later), Decision::Log);
        }
        // Still in the same limited state (its window ended without a flush_due call).
        assert_eq!(
            limit.record(FLOODER, Kind::Download, later),
            Decision::Suppress
        );
    }

    #[test]
    fn summaries_continue_and_end_after_the_flooder_goes_quiet() {
        let t0 = Instant::now();
        let mut limit = UserRateLimit::default();
        let mut seen = [0; 3];
        let mut summaries = Vec::new();
        // 15 s of 100 uploads and one delete a second, then quiet.
        for i in 0..1500 {
            let now = t0 + ms(i * 10);
            tally(&mut limit, FLOODER, Kind::Upload, now, &mut seen);
            if i % 100 == 0 {
                tally(&mut limit, FLOODER, Kind::Delete, now, &mut seen);
            }
            summaries.extend(limit.flush_due(now));
        }
        // One notice for the whole flood; one summary so far (the burst of 300
        // lasted about 3 s, so the first window ended at about 13 s).
        assert_eq!(seen[1], 1);
        assert_eq!(summaries.len(), 1);
        // The second window's summary comes with nobody sending anything.
        let deadline = limit.deadline().expect("still limited");
        assert!(deadline > t0 + ms(15_000));
        assert!(limit.flush_due(deadline - ms(1)).is_empty());
        summaries.extend(limit.flush_due(deadline));
        assert_eq!(summaries.len(), 2);
        assert_eq!(summaries[1].over, SUMMARY_EVERY);
        // The next window counts nothing: the limited state ends without a line.
        let next = limit.deadline().expect("one more window");
        assert_eq!(next, deadline + SUMMARY_EVERY);
        assert!(limit.flush_due(next).is_empty());
        assert_eq!(limit.deadline(), None);
        // Every upload and delete was either logged or counted in a summary.
        let counted: u64 = summaries.iter().map(|s| s.counts.total()).sum();
        assert_eq!(counted, seen[1] + seen[2]);
        assert_eq!(seen[0] + counted, 1515);
        let deletes: u64 = summaries.iter().map(|s| s.counts.get(Kind::Delete)).sum();
        assert!(deletes > 0 && deletes < 15);
    }

    #[test]
    fn a_new_flood_after_the_limited_state_ends_gets_a_new_notice() {
        let (burst, _) = Class::Read.budget();
        let t0 = Instant::now();
        let mut limit = UserRateLimit::default();
        for _ in 0..=burst {
            limit.record(FLOODER, Kind::Download, t0);
        }
        assert_eq!(limit.flush_due(t0 + SUMMARY_EVERY).len(), 1);
        assert!(limit.flush_due(t0 + SUMMARY_EVERY * 2).is_empty());
        assert_eq!(limit.deadline(), None);
        let t1 = t0 + SUMMARY_EVERY * 2;
        let decisions: Vec<_> = (0..=burst)
            .map(|_| limit.record(FLOODER, Kind::Download, t1))
            .filter(|d| *d != Decision::Log)
            .collect();
        // 20 s refilled 40 lines.
        assert_eq!(decisions.len() as u64, burst - 40 + 1);
        assert_eq!(decisions[0], Decision::SuppressWithNotice);
    }

    #[test]
    fn idle_users_are_forgotten() {
        let t0 = Instant::now();
        let mut limit = UserRateLimit::default();
        for uid in 0..500 {
            assert_eq!(limit.record(Some(uid), Kind::Upload, t0), Decision::Log);
        }
        for _ in 0..1000 {
            limit.record(FLOODER, Kind::Download, t0);
        }
        limit.record(None, Kind::Download, t0);
        assert_eq!(limit.tracked(), 502);
        // One upload refills in 200 ms (5 a second), one download in 500 ms.
        assert!(limit.flush_due(t0 + ms(199)).is_empty());
        assert_eq!(limit.tracked(), 502);
        limit.flush_due(t0 + ms(500));
        assert_eq!(limit.tracked(), 1);
        // The flooder: summary at 10 s, limited state ends at 20 s, budget full at 50 s.
        assert_eq!(limit.flush_due(t0 + SUMMARY_EVERY).len(), 1);
        assert!(limit.flush_due(t0 + SUMMARY_EVERY * 2).is_empty());
        assert_eq!(limit.tracked(), 1);
        limit.flush_due(t0 + Duration::from_secs(49));
        assert_eq!(limit.tracked(), 1);
        limit.flush_due(t0 + Duration::from_secs(50));
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn counts_in_words() {
        let mut counts = Counts::default();
        for _ in 0..4800 {
            counts.add(Kind::Download);
        }
        for _ in 0..12 {
            counts.add(Kind::Upload);
        }
        counts.add(Kind::Rename);
        counts.add(Kind::Delete);
        assert_eq!(counts.total(), 4814);
        assert_eq!(
            counts.to_string(),
            "4,800 downloads, 12 uploads, 1 rename, 1 delete"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
