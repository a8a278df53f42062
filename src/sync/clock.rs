//! The times a master stamps its looks at the data dir with, for the
//! positions it tells its standbys ([`crate::role::Position`]): the wall
//! clock, but never at or below a stamp given before, even after a restart
//! with the clock stepped back. Otherwise a standby reached after such a
//! restart would be told an older time than one cut off before it, though
//! it has more, and `promote` would prefer the one that lacks files.

use std::path::{Path, PathBuf};

/// In the state dir: a time no stamp given so far reaches.
pub const CLOCK_FILE: &str = "position-clock";
/// How far ahead of the stamps the file is written: once per this much
/// time, not once per look.
const RESERVE_MS: u64 = 2_000;

#[derive(Debug)]
pub struct LookClock {
    last: u64,
    reserved: u64,
    path: PathBuf,
    said: bool,
}

impl LookClock {
    /// Starts above every stamp an earlier run may have given.
    pub fn load(state_dir: &Path) -> LookClock {
        let path = state_dir.join(CLOCK_FILE);
        let reserved = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        LookClock {
            last: reserved,
            reserved,
            path,
            said: false,
        }
    }

    /// The stamp of a look that begins at `now_ms` (the wall clock).
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let stamp = now_ms.max(self.last.saturating_add(1));
        self.last = stamp;
        if stamp >= self.reserved {
            self.reserved = stamp.saturating_add(RESERVE_MS);
            let text = format!("{}\n", self.reserved);
            if let Err(err) = crate::fsutil::write_atomic(&self.path, text.as_bytes(), 0o600, None)
                && !std::mem::replace(&mut self.said, true)
            {
                tracing::warn!(path = %self.path.display(), "cannot save the clock of the standbys' positions (after a restart with the clock stepped back they may be ranked wrongly by promote): {err}");
            }
        }
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_follow_the_clock_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut clock = LookClock::load(dir.path());
        assert_eq!(clock.stamp(1_000), 1_000);
        assert_eq!(clock.stamp(1_500), 1_500);
        // The clock is stepped back: still later than the last stamp.
        assert_eq!(clock.stamp(900), 1_501);
        assert_eq!(clock.stamp(5_000), 5_000);
    }

    #[test]
    fn a_restart_with_the_clock_behind_stamps_above_every_earlier_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let mut before = LookClock::load(dir.path());
        let mut given = 0;
        for now in (3_600_000..3_610_000).step_by(100) {
            given = before.stamp(now);
        }
        // Restarted, with the clock an hour behind.
        let mut after = LookClock::load(dir.path());
        assert!(after.stamp(10_000) > given);
    }
}
