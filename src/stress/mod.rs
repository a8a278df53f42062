//! `sftp-ha stress`: uploads generated files to the master as an ordinary
//! SFTP user, over several sessions, at full speed or a fixed rate, and with
//! `--standby` watches the standby (as the same user) to time when each file
//! is there complete: the replication lag. Prints a summary, and optionally
//! JSON and a self-contained HTML report.
//!
//! The pure parts (size spec, statistics, report) live in their own modules;
//! this one does the network and the clock.

pub mod client;
pub mod report;
pub mod spec;
pub mod stats;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Endpoint;
use crate::sync::sftp::{Attrs, SftpError};
use client::{Connection, Login};
use spec::{Content, SizeSpec};
use stats::{Sample, Summary};

/// How often the standby's folder is listed while files are outstanding.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum StressError {
    #[error("cannot reach {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("host key of {endpoint} refused: {message}")]
    HostKey { endpoint: String, message: String },
    #[error(
        "login as {user} on {endpoint} failed: {message}; check the user, the password (or --key) and that the account exists there"
    )]
    Auth {
        endpoint: String,
        user: String,
        message: String,
    },
    #[error("SFTP: {0}")]
    Sftp(#[from] SftpError),
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
}

/// A validated stress run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub master: Endpoint,
    pub standby: Option<Endpoint>,
    pub login: Login,
    pub files: usize,
    pub size: SizeSpec,
    pub sessions: usize,
    /// Files per second; `None` for full speed.
    pub rate: Option<f64>,
    /// Folder (as the user sees it) the run's folder is made in.
    pub dir: String,
    /// How long to wait for the standby after the last upload.
    pub timeout: Duration,
    pub json: bool,
    pub report: Option<PathBuf>,
    pub cleanup: bool,
}

/// What a run produced.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub run_id: String,
    pub folder: String,
    pub master: String,
    pub standby: Option<String>,
    pub sessions: usize,
    pub size_spec: String,
    pub rate: Option<f64>,
    pub summary: Summary,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

fn file_name(index: usize) -> String {
    format!("f{index:07}")
}

fn index_of(name: &[u8]) -> Option<usize> {
    std::str::from_utf8(name.strip_prefix(b"f")?)
        .ok()?
        .parse()
        .ok()
}

/// Runs the plan. Progress goes to stderr; the caller prints the outcome.
pub fn run(plan: &Plan) -> Result<Outcome, StressError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = spec::mix64(now.as_nanos() as u64);
    // 2026-11-24 11:03:36 UTC → 20261124-110336-<4 hex digits>
    let stamp: String = crate::timefmt::format_utc(now.as_secs())
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == ' ')
        .collect();
    let run_id = format!("{}-{:04x}", stamp.trim().replace(' ', "-"), seed & 0xffff);
    let folder = format!("{}/stress-{run_id}", plan.dir.trim_end_matches('/'));

    let mut masters = Vec::with_capacity(plan.sessions);
    for _ in 0..plan.sessions {
        masters.push(client::connect(&plan.master, &plan.login)?);
    }
    let mut watcher = match &plan.standby {
        Some(s) => Some(client::connect(s, &plan.login)?),
        None => None,
    };
    masters[0].sftp.mkdir(folder.as_bytes(), Attrs::default())?;

    let sizes: Vec<u64> = (0..plan.files)
        .map(|i| plan.size.size_of(seed, i as u64))
        .collect();
    let uploaded: Mutex<Vec<Option<f64>>> = Mutex::new(vec![None; plan.files]);
    let arrived: Mutex<Vec<Option<f64>>> = Mutex::new(vec![None; plan.files]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let seen = AtomicUsize::new(0);
    let uploads_over = AtomicBool::new(false);
    let failure: Mutex<Option<StressError>> = Mutex::new(None);
    let start = Instant::now();
    let mut last_upload = 0.0f64;

    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for conn in masters.iter_mut() {
            let (next, done, uploaded, failure, sizes, folder) =
                (&next, &done, &uploaded, &failure, &sizes, &folder);
            workers.push(scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= sizes.len() {
                        return;
                    }
                    if let Some(rate) = plan.rate {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let path = format!("{folder}/{}", file_name(i));
                    match upload(conn, &path, seed, i, sizes[i]) {
                        Ok(()) => {
                            let t = start.elapsed().as_secs_f64();
                            if let Ok(mut u) = uploaded.lock() {
                                u[i] = Some(t);
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(err);
                            }
                            // The others stop at their next file.
                            next.store(sizes.len(), Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
        let watch = watcher.as_mut().map(|conn| {
            let (arrived, seen, uploads_over, sizes, folder) =
                (&arrived, &seen, &uploads_over, &sizes, &folder);
            scope.spawn(move || {
                watch_standby(
                    conn,
                    folder,
                    sizes,
                    start,
                    arrived,
                    seen,
                    uploads_over,
                    plan.timeout,
                )
            })
        });

        let progress = Progress::new(plan.files as u64, plan.standby.is_some());
        while workers.iter().any(|w| !w.is_finished()) {
            progress.show(
                done.load(Ordering::Relaxed),
                seen.load(Ordering::Relaxed),
                false,
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        last_upload = start.elapsed().as_secs_f64();
        uploads_over.store(true, Ordering::Relaxed);
        if let Some(w) = watch {
            while !w.is_finished() {
                progress.show(
                    done.load(Ordering::Relaxed),
                    seen.load(Ordering::Relaxed),
                    true,
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Ok(Err(err)) = w.join()
                && let Ok(mut f) = failure.lock()
            {
                f.get_or_insert(err);
            }
        }
        progress.finish(done.load(Ordering::Relaxed), seen.load(Ordering::Relaxed));
    });
    if let Some(err) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(err);
    }

    let uploaded = uploaded.into_inner().unwrap_or_default();
    let arrived = arrived.into_inner().unwrap_or_default();
    let samples: Vec<Sample> = sizes
        .iter()
        .zip(uploaded.iter().zip(&arrived))
        .map(|(size, (u, a))| Sample {
            size: *size,
            uploaded: u.unwrap_or(last_upload),
            arrived: *a,
        })
        .collect();
    let upload_seconds = uploaded.iter().flatten().copied().fold(0.0, f64::max);
    let summary = stats::summarize(&samples, upload_seconds, plan.standby.is_some());
    let outcome = Outcome {
        run_id,
        folder: folder.clone(),
        master: plan.master.to_string(),
        standby: plan.standby.as_ref().map(ToString::to_string),
        sessions: plan.sessions,
        size_spec: plan.size.to_string(),
        rate: plan.rate,
        summary,
        samples,
    };
    if let Some(path) = &plan.report {
        let info = report::RunInfo {
            run_id: &outcome.run_id,
            master: &outcome.master,
            standby: outcome.standby.as_deref(),
            sessions: outcome.sessions,
            size_spec: &outcome.size_spec,
            rate: outcome.rate,
        };
        let page = report::render(&info, &outcome.summary, &outcome.samples);
        std::fs::write(path, page).map_err(|err| StressError::Write {
            path: path.clone(),
            err,
        })?;
    }
    if plan.cleanup {
        let sftp = &mut masters[0].sftp;
        for i in 0..plan.files {
            sftp.remove(format!("{folder}/{}", file_name(i)).as_bytes())?;
        }
        sftp.rmdir(folder.as_bytes())?;
    }
    Ok(outcome)
}

/// Uploads one generated file the way an ordinary client does: open, write, close.
fn upload(
    conn: &mut Connection,
    path: &str,
    seed: u64,
    index: usize,
    size: u64,
) -> Result<(), StressError> {
    let handle = conn.sftp.create(path.as_bytes(), Attrs::default())?;
    conn.sftp
        .write_from(&handle, &mut Content::new(seed, index as u64, size))?;
    conn.sftp.close(&handle)?;
    Ok(())
}

/// Lists the run's folder on the standby until every file is there with its
/// full size, or `timeout` after the uploads ended.
#[allow(clippy::too_many_arguments)]
fn watch_standby(
    conn: &mut Connection,
    folder: &str,
    sizes: &[u64],
    start: Instant,
    arrived: &Mutex<Vec<Option<f64>>>,
    seen: &AtomicUsize,
    uploads_over: &AtomicBool,
    timeout: Duration,
) -> Result<(), StressError> {
    let mut waiting_since: Option<Instant> = None;
    let mut present: HashSet<usize> = HashSet::new();
    while present.len() < sizes.len() {
        match conn.sftp.read_dir(folder.as_bytes()) {
            Ok(entries) => {
                let t = start.elapsed().as_secs_f64();
                for (name, attrs) in entries {
                    let Some(i) = index_of(&name) else { continue };
                    if i < sizes.len()
                        && attrs.size == Some(sizes[i])
                        && present.insert(i)
                        && let Ok(mut a) = arrived.lock()
                    {
                        a[i] = Some(t);
                    }
                }
                seen.store(present.len(), Ordering::Relaxed);
            }
            // The folder is not there yet, or not yet usable: a replicator may
            // create it as root first and hand it over to the user later.
            Err(e @ SftpError::Status { .. }) => tracing::debug!("standby: {e}"),
            Err(e) => return Err(e.into()),
        }
        if uploads_over.load(Ordering::Relaxed) {
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() > timeout {
                break;
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// A progress bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    watching: bool,
    last_line: Mutex<Instant>,
}

impl Progress {
    fn new(total: u64, watching: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} uploaded {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            total,
            watching,
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn show(&self, uploaded: usize, arrived: usize, waiting: bool) {
        let standby = if self.watching {
            format!(", {arrived} on the standby")
        } else {
            String::new()
        };
        if let Some(bar) = &self.bar {
            bar.set_position(uploaded as u64);
            bar.set_message(standby.trim_start_matches(", ").to_string());
            return;
        }
        if let Ok(mut last) = self.last_line.lock()
            && last.elapsed() >= Duration::from_secs(2)
        {
            *last = Instant::now();
            let phase = if waiting {
                " (waiting for the standby)"
            } else {
                ""
            };
            eprintln!("stress: {uploaded}/{} uploaded{standby}{phase}", self.total);
        }
    }

    fn finish(&self, uploaded: usize, arrived: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(uploaded as u64);
            bar.finish_and_clear();
        } else {
            let standby = if self.watching {
                format!(", {arrived} on the standby")
            } else {
                String::new()
            };
            eprintln!("stress: {uploaded}/{} uploaded{standby}, done", self.total);
        }
    }
}

/// The summary as text, for a person.
pub fn render_summary(o: &Outcome) -> String {
    let s = &o.summary;
    let mut out = format!(
        "sftp-ha stress {}: {} files ({:.1} MiB, sizes {}) to {} in {}, {} session(s){}\n",
        o.run_id,
        s.files,
        s.bytes as f64 / 1048576.0,
        o.size_spec,
        o.master,
        o.folder,
        o.sessions,
        o.rate.map_or(String::new(), |r| format!(", {r} files/s"))
    );
    out.push_str(&format!(
        "  upload:   {:.2} s, {:.1} files/s, {:.2} MiB/s\n",
        s.upload_seconds, s.files_per_second, s.mib_per_second
    ));
    if let (Some(standby), Some(arrived), Some(missing)) = (&o.standby, s.arrived, s.missing) {
        out.push_str(&format!(
            "  standby:  {standby}: {arrived} arrived, {missing} missing"
        ));
        if let Some(t) = s.all_on_standby_seconds {
            out.push_str(&format!(", all there {t:.2} s after the start"));
        }
        out.push('\n');
        if let Some(l) = &s.lag_seconds {
            out.push_str(&format!(
                "  lag:      p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, max {:.3} s\n",
                l.p50, l.p95, l.p99, l.max
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_their_index() {
        assert_eq!(file_name(42), "f0000042");
        assert_eq!(index_of(b"f0000042"), Some(42));
        assert_eq!(index_of(b".sftp-ha-tmp.f0000042"), None);
        assert_eq!(index_of(b"g1"), None);
    }
}
