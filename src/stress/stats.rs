//! The numbers of a stress run: per-file timings in, summary out (pure).

use serde::Serialize;

/// One uploaded file, times in seconds since the run started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub size: u64,
    /// Upload finished (the master acknowledged the close).
    pub uploaded: f64,
    /// Seen complete on the standby; `None` if it never arrived (or not watched).
    pub arrived: Option<f64>,
}

impl Sample {
    /// Replication lag: from the end of the upload to complete on the standby.
    pub fn lag(&self) -> Option<f64> {
        self.arrived.map(|a| (a - self.uploaded).max(0.0))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lag {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
    /// From the first upload's start to the last upload's end.
    pub upload_seconds: f64,
    pub files_per_second: f64,
    pub mib_per_second: f64,
    /// Present when the standby was watched.
    pub arrived: Option<usize>,
    pub missing: Option<usize>,
    pub lag_seconds: Option<Lag>,
    /// From the first upload's start until the last file was on the standby.
    pub all_on_standby_seconds: Option<f64>,
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[Sample], upload_seconds: f64, watched: bool) -> Summary {
    let bytes: u64 = samples.iter().map(|s| s.size).sum();
    let secs = upload_seconds.max(1e-9);
    let mut lags: Vec<f64> = samples.iter().filter_map(Sample::lag).collect();
    lags.sort_by(f64::total_cmp);
    let arrived = lags.len();
    let lag_seconds = (watched && !lags.is_empty()).then(|| Lag {
        p50: percentile(&lags, 50.0),
        p95: percentile(&lags, 95.0),
        p99: percentile(&lags, 99.0),
        max: lags.last().copied().unwrap_or(0.0),
    });
    let all_on_standby_seconds = (watched && arrived == samples.len() && arrived > 0)
        .then(|| samples.iter().filter_map(|s| s.arrived).fold(0.0, f64::max));
    Summary {
        files: samples.len(),
        bytes,
        upload_seconds,
        files_per_second: samples.len() as f64 / secs,
        mib_per_second: bytes as f64 / secs / (1024.0 * 1024.0),
        arrived: watched.then_some(arrived),
        missing: watched.then_some(samples.len() - arrived),
        lag_seconds,
        all_on_standby_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 50.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn a_summary_counts_missing_files_and_lags() {
        let samples = vec![
            Sample {
                size: 1024 * 1024,
                uploaded: 0.5,
                arrived: Some(0.6),
            },
            Sample {
                size: 1024 * 1024,
                uploaded: 1.0,
                arrived: Some(1.3),
            },
            Sample {
                size: 0,
                uploaded: 1.0,
                arrived: None,
            },
        ];
        let s = summarize(&samples, 2.0, true);
        assert_eq!(s.files, 3);
        assert_eq!(s.missing, Some(1));
        assert_eq!(s.mib_per_second, 1.0);
        let lag = s.lag_seconds.unwrap();
        assert!((lag.max - 0.3).abs() < 1e-9);
        assert_eq!(s.all_on_standby_seconds, None);
        let unwatched = summarize(&samples, 2.0, false);
        assert_eq!((unwatched.missing, unwatched.lag_seconds), (None, None));
    }
}
