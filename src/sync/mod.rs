//! One-way replication master → standby(s).
//!
//! The master's side is kept once, however many standbys there are: the
//! `Local` side (thread `sync-local`) owns the inotify watches on every
//! folder of the data dir and the master's tree as last seen. Events
//! (debounced) name the paths to look at again with local `stat`; at start,
//! on the fallback timer, after an inotify overflow and when a worker asks
//! (a handover, a reconciliation that brought files in), the whole tree is
//! walked instead. After each look the tree is posted to every standby's
//! `Inbox` as one `Arc<Tree>` (a copy of the changes over the shared base,
//! made once for all) with the paths that changed, so a round plans only
//! those ([`tree::plan`] against that standby's index) and costs what
//! changed, not the size of the tree.
//!
//! Each standby has a `Worker` thread of its own (`sync` for the first,
//! `sync-N` for the others) with everything that is the standby's: its
//! sessions, its index (what it confirmed, in `<state_dir>/sync-index` for
//! the first, as with one standby, and `sync-index.<host:port>` for the
//! others), schedule and backoff, audits, refused operations, role checks,
//! reconciliation and [`SyncStatus`]. Why threads and not one loop over the
//! standbys: a transfer blocks in the network (a big file to a slow standby,
//! a connect timeout to an unreachable one), and a loop would make every
//! other standby wait for it; a worker that is busy or away simply takes the
//! newest look when it comes back, the paths it missed merged into one
//! update (or, past `CHANGED_MAX`, "plan everything"). The local side
//! never waits for a worker. Workers talk back only through a shared list of
//! paths to look at again (`Asked`) and the daemon's [`Control`].
//!
//! Memory: the master's tree is held once, by the local side; its base is
//! shared by reference count with the snapshots the workers hold, and each
//! index is put on that same base ([`tree::share_base`]) where it agrees, so
//! an extra standby that is level costs its index's differences, its
//! sessions and status, not another copy of a million paths. The local side
//! folds its changes into a new base now and then ([`Tree::needs_compacting`]);
//! a worker moves its index to the new base at its next round, so a worker
//! stuck in a long transfer keeps the old base alive until then.
//!
//! Safety, per standby, as with one: the claim (node and epoch) is written to
//! each standby and each one's role is checked; any standby that publishes a
//! newer epoch makes this host step down (every worker and the local side
//! stop). The mass-delete guard is judged per standby. A baseline (this
//! host was promoted) is reconciled with every standby before anything is
//! mirrored to it, and removed once all of them are. A standby whose claim
//! names another master (e.g. the old master's other standby after a
//! promotion) may hold uploads that never reached this host: it is
//! reconciled like a former master with no baseline (everything of it that
//! differs is brought back or kept as a conflict copy, nothing deleted) before
//! its extra files could be deleted by mirroring, and this host's claim is
//! written there only afterwards, so a restart halfway reconciles again. The
//! first standby speaks for the daemon's peer (the peer's role in `status`,
//! `sftp-ha demote`'s offer); a handover goes to the standby that asked.
//!
//! The worker keeps the index updated per confirmed operation and writes it
//! at most every few seconds, so a restart resumes without re-sending what
//! already arrived. Runs of uploads are shared by several sessions.
//!
//! Files reach the standby under a temporary name, are fsynced, get owner,
//! mode and mtime, and are renamed over the target with posix-rename: a reader
//! there never sees a partial file.
//!
//! What lives where: the decisions are pure and unit-tested in their own
//! modules: [`schedule`] (when rounds, reconnects, audits, peer checks and
//! index writes are due; the backoff), [`round`] (which part of the trees a
//! round plans and which files wait to settle), [`tree`] (the plan against
//! the index), [`audit`] (what of the standby's listing is compared, removed
//! or left alone; correcting the index), [`reconcile`] (the failback plan)
//! and [`crate::role`] (judging the peer). `Local` and `Worker` here are the
//! drivers: they own the state, do the I/O (inotify, local `stat`, SFTP),
//! feed events to those modules and carry out what they decide. [`push`]
//! turns planned operations into SFTP requests, [`watch`] is inotify,
//! [`lease`] asks the kernel about writers.
//!
//! With shared storage (`[sync] storage = "shared"`) both hosts mount the same
//! data dir and the workers copy nothing: the local side does not run (no
//! watches, no walks), no index is kept, nothing is listed on a peer and
//! nothing reconciled (there is one tree). What a worker still does is the
//! role protocol: it connects to its peer's sync account (chrooted there to
//! the peer's own control folder), writes this master's claim, reads the
//! peer's role every second, steps down for a newer epoch and hands over on
//! `promote` / `demote`. A former master that rejoins is answered at once as
//! reconciled.
//!
//! A worker reaches its standby only through [`transport::Connector`]
//! (opens sessions: SSH in [`transport::SshConnector`]) and
//! [`transport::Session`] (an SFTP client and a keepalive), so its rounds
//! are unit-tested without a network against in-memory standbys, one or
//! several, stepped by hand or in their threads.

pub mod audit;
mod clock;
pub mod lease;
pub mod memory;
pub mod owner;
pub mod push;
pub mod reconcile;
pub mod round;
pub mod schedule;
pub mod sftp;
pub mod transport;
pub mod tree;
pub mod watch;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::Endpoint;
use crate::layout::{CLAIM_FILE, CONTROL_DIR, POSITION_FILE, ROLE_FILE};
use crate::role::{Claim, Live, PeerVerdict, Position, Published, Role};
use crate::timefmt::unix_now;
use push::{OpError, put_file, remote_path};
use round::Changed;
use schedule::{LogBudget, Schedule};
use transport::{Connector, Session, SshConnector, TransportError};
use tree::{Entry, Kind, Op, Tree, join};

pub const INDEX_FILE: &str = "sync-index";
/// The master's tree when this host was promoted (see [`reconcile`]).
pub const BASELINE_FILE: &str = "baseline";
/// Every file brought back and conflict copy kept, one JSON object per line.
pub const RECONCILE_REPORT: &str = "reconcile-report.jsonl";
/// Sessions to the standby that share a run of uploads: many small files are
/// bound by round trips and the standby's fsyncs, which sessions overlap.
const SESSIONS: usize = 4;
/// Uploads in one run below which a second session is not worth opening.
const PARALLEL_MIN: usize = 8;
/// Files a session takes at a time from a run of uploads.
const BATCH: usize = 16;
/// Refused operations logged one by one per minute; the rest are counted.
const REFUSALS_LOGGED: usize = 10;

/// What the sync worker reports, for `sftp-ha status` and the STATUS= line.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncStatus {
    pub standby: String,
    pub connected: bool,
    /// Since when the standby is reachable or not (unix seconds).
    pub since: u64,
    pub last_error: Option<String>,
    /// Operations waiting for the standby.
    pub pending: usize,
    pub last_sync: Option<u64>,
    pub last_scan: Option<u64>,
    pub files_synced: u64,
    pub bytes_synced: u64,
    pub deletes_held_back: bool,
    /// When the standby's tree was last listed and compared, and what it repaired.
    pub last_audit: Option<u64>,
    pub last_audit_repairs: usize,
    /// How long the last file took from its last change on the master to being
    /// safe on the standby, in milliseconds.
    pub last_lag_ms: Option<u64>,
    /// Operations the standby refused (and that were skipped), with the last
    /// refusal in words; they are tried again on the next full round.
    #[serde(default)]
    pub refused: usize,
    #[serde(default)]
    pub last_refused: Option<String>,
    /// A baseline waits: the peer is reconciled before anything is mirrored.
    #[serde(default)]
    pub reconciling: bool,
    /// Files brought back from a former master, and conflict copies kept,
    /// since the daemon started (each is in the journal and the report).
    #[serde(default)]
    pub brought_back: u64,
    #[serde(default)]
    pub conflicts: u64,
    #[serde(default)]
    pub last_reconcile: Option<u64>,
    /// The inotify watches after the last full walk (`None`: none yet).
    #[serde(default)]
    pub watches: Option<watch::Watches>,
}

/// What the daemon and the worker tell each other about roles (see [`crate::role`]).
#[derive(Debug, Default)]
pub struct Control {
    /// Worker → daemon: the peer's role as last read.
    pub peer: Option<Published>,
    /// Worker → daemon: a newer epoch was seen; this host must stop taking
    /// uploads now (the worker has stopped sending).
    pub step_down: Option<(u64, String)>,
    /// Worker → daemon: the standby asks for the role (`sftp-ha promote`).
    pub handover_asked: bool,
    /// Which standby asked (its place in `[sync] peer`): the handover goes
    /// to it. `None`: the first.
    pub handover_link: Option<usize>,
    /// Daemon → worker: offer the role to the standby (`sftp-ha demote`); it
    /// answers by asking for it, which comes back as `handover_asked`.
    pub offer: bool,
    /// Daemon → worker: users can no longer write here; send the last
    /// changes, then hand the role over.
    pub hand_over: bool,
    /// Worker → daemon: the handover is being written: too late to call it
    /// off (the standby may already have read it).
    pub writing_handover: bool,
    /// Worker → daemon: the handover is written; the standby becomes master
    /// with this epoch.
    pub handed_over: Option<u64>,
    /// Daemon → worker: the SSH connections open when users were fenced for
    /// the handover. With shared storage the handover waits until none of
    /// their managed users' session processes is left (see [`judge_writers`]).
    pub fenced: HashSet<i32>,
    /// Worker → daemon: how many of those session processes a shared-storage
    /// handover still waits for.
    pub writers_left: usize,
}

/// With shared storage, how long a handover lets the users' session
/// processes the fence sent SIGTERM end by themselves before it sends
/// SIGKILL. The daemon calls the handover off after its own patience (30 s)
/// if they are still there then (stuck in I/O on the shared file system).
pub const WRITERS_KILL_AFTER: Duration = Duration::from_secs(5);

/// What a shared-storage handover does about the fenced users' session
/// processes still there: the new master must not take uploads while one of
/// them may still write into the same tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// None left: hand over.
    Gone,
    /// Some left, SIGTERM sent not long ago: look again soon.
    Wait,
    /// Some left after [`WRITERS_KILL_AFTER`]: SIGKILL them, and look again.
    Kill,
}

/// `left` session processes, `waited` since the handover began waiting.
pub fn judge_writers(left: usize, waited: Duration) -> Writers {
    if left == 0 {
        Writers::Gone
    } else if waited >= WRITERS_KILL_AFTER {
        Writers::Kill
    } else {
        Writers::Wait
    }
}

/// Lists (`kill` false) or SIGKILLs (`kill` true) the managed users' session
/// processes among the connections; returns their pids. The sshd helpers,
/// but for tests.
type WritersProbe = fn(&HashSet<i32>, bool) -> Vec<i32>;

fn sshd_writers(connections: &HashSet<i32>, kill: bool) -> Vec<i32> {
    if kill {
        crate::sshd::kill_user_sessions_of(connections)
    } else {
        crate::sshd::user_sessions_left(connections)
    }
}

/// Settings the worker runs with.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The first (or only) standby: its index is [`INDEX_FILE`], its status
    /// the `sync` of `sftp-ha status`.
    pub standby: Endpoint,
    /// More standbys (`[sync] peer` as a list), each with a worker of its own.
    pub others: Vec<Endpoint>,
    /// This host's name and live role (a master's epoch does not change while
    /// its worker runs: stepping down stops the worker).
    pub node: String,
    pub live: Live,
    pub fallback_interval: Duration,
    /// Mirror deletes.
    pub delete: bool,
    pub audit_interval: Duration,
    /// Both hosts mount the same data dir: the role protocol only, no copies.
    pub shared: bool,
}

impl SyncSettings {
    /// This master's claim on the peer.
    fn claim(&self, handover: Option<u64>, reconciled: Option<u64>) -> Claim {
        Claim {
            node: self.node.clone(),
            epoch: self.live.epoch,
            handover,
            reconciled,
            offer: false,
        }
    }

    /// Every standby, the first first.
    pub fn standbys(&self) -> Vec<Endpoint> {
        std::iter::once(self.standby.clone())
            .chain(self.others.iter().cloned())
            .collect()
    }
}

/// The index file of the standby at `position` in `[sync] peer`: the first
/// keeps the name of the one-standby days, so an upgrade resumes where it
/// was; the others are named after their address.
pub fn index_file(position: usize, standby: &Endpoint) -> String {
    if position == 0 {
        INDEX_FILE.to_string()
    } else {
        format!("{INDEX_FILE}.{standby}")
    }
}

/// Every standby index in the state dir (a promotion forgets them all; a
/// step-down lists what any of them lacks).
pub fn index_files(state_dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // (The temporaries `save_index` writes start with a dot.)
            let ours = name == INDEX_FILE || name.starts_with(&format!("{INDEX_FILE}."));
            if ours {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// The files of `current` (the master's tree) that some standby may lack:
/// what a master that steps down lists for the next master's
/// reconciliation (with several standbys the next master may be any of
/// them). A file counts as there only if every standby confirmed it as it
/// is. A standby listed in `standbys` (`[sync] peer`) without an index file
/// was never reached since it was listed or since this host was promoted
/// (which removes every index): it confirmed nothing, so every file is
/// listed, not none. Index files of standbys no longer listed still count:
/// listing too much costs a comparison, too little loses an upload.
pub fn unconfirmed_by_any(
    state_dir: &std::path::Path,
    standbys: &[Endpoint],
    current: &Tree,
) -> Vec<Vec<u8>> {
    let indexes = index_files(state_dir);
    let never_reached = standbys
        .iter()
        .enumerate()
        .any(|(position, s)| !state_dir.join(index_file(position, s)).exists());
    if indexes.is_empty() || never_reached {
        return reconcile::unconfirmed_files(current, &Tree::new());
    }
    let mut files = BTreeSet::new();
    for index in indexes {
        let confirmed = tree::load_index(&index);
        files.extend(reconcile::unconfirmed_files(current, &confirmed));
    }
    files.into_iter().collect()
}

/// The running workers; dropping it does not stop them, [`SyncHandle::stop`] does.
pub struct SyncHandle {
    stop: Arc<AtomicBool>,
    /// Whether the workers may still write their index files: true until
    /// [`SyncHandle::stop`] gives up waiting for them (see there).
    may_save: Arc<RwLock<bool>>,
    /// The first standby's status (`sync` in `sftp-ha status`).
    pub status: Arc<Mutex<SyncStatus>>,
    /// Every standby's, the first first.
    pub statuses: Vec<Arc<Mutex<SyncStatus>>>,
    pub control: Arc<Mutex<Control>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SyncHandle {
    /// Asks the workers to stop and waits up to `patience` for them.
    pub fn stop(mut self, patience: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while start.elapsed() < patience {
            if self.threads.iter().all(|t| t.is_finished()) {
                for t in self.threads.drain(..) {
                    let _ = t.join();
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A worker blocked in the network: the daemon goes on without it
        // (a promotion removes the index files, a step-down lists what they
        // lack, a reload starts new workers), so from here on its index is
        // not written again: a late write would bring back a removed index
        // or change one after it was read. A write under way is waited for
        // (a local file). What it holds of the index beyond what is saved
        // costs no re-upload: the next audit confirms what the standby has.
        // It writes nothing more to the standby either (it checks `stop`
        // between requests), and a new worker for that standby waits until
        // it is gone (see [`owner`]).
        match self.may_save.write() {
            Ok(mut may) => *may = false,
            Err(poisoned) => *poisoned.into_inner() = false,
        }
    }

    pub fn snapshot(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every standby's status, the first first.
    pub fn snapshots(&self) -> Vec<SyncStatus> {
        self.statuses
            .iter()
            .map(|s| s.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }

    /// True if the standby a handover would go to (the one that asked, or
    /// the first) is connected.
    pub fn handover_connected(&self) -> bool {
        let link = self.control(|c| c.handover_link).flatten().unwrap_or(0);
        self.statuses
            .get(link)
            .and_then(|s| s.lock().ok().map(|s| s.connected))
            .unwrap_or(false)
    }

    /// Runs `f` on the shared [`Control`].
    pub fn control<T>(&self, f: impl FnOnce(&mut Control) -> T) -> Option<T> {
        self.control.lock().ok().map(|mut c| f(&mut c))
    }
}

/// Starts the local side and one worker per standby, each in its thread.
pub fn start(settings: SyncSettings) -> std::io::Result<SyncHandle> {
    let connectors = settings
        .standbys()
        .into_iter()
        .enumerate()
        .map(|(position, standby)| SshConnector {
            standby,
            state_dir: settings.state_dir.clone(),
            position,
        })
        .collect();
    start_with(settings, connectors, &owner::process())
}

/// [`start`] with a connector per standby (in memory, in tests), and the
/// owners of standbys it shares with earlier starts (see [`owner`]).
fn start_with<C: Connector + Send + 'static>(
    settings: SyncSettings,
    connectors: Vec<C>,
    owners: &Arc<owner::Owners>,
) -> std::io::Result<SyncHandle> {
    let (local, workers) = assemble(settings, connectors, owners)?;
    spawn(local, workers)
}

/// The local side and a worker per standby, wired together, not running.
fn assemble<C: Connector>(
    settings: SyncSettings,
    connectors: Vec<C>,
    owners: &Arc<owner::Owners>,
) -> std::io::Result<(Local, Vec<Worker<C>>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let may_save = Arc::new(RwLock::new(true));
    let start = owners.start();
    let control = Arc::new(Mutex::new(Control::default()));
    let (mut local, inboxes) = Local::new(&settings, stop.clone(), control.clone())?;
    let baseline = if settings.shared {
        // One tree: nothing to reconcile.
        Baseline {
            tree: None,
            waiting: Arc::default(),
        }
    } else {
        Baseline::load(&settings.state_dir, inboxes.len())?
    };
    let mut workers = Vec::new();
    let each = settings.standbys().into_iter().zip(connectors).zip(inboxes);
    for (position, ((standby, connector), inbox)) in each.enumerate() {
        let mut own = settings.clone();
        own.standby = standby;
        workers.push(Worker::new(
            own,
            position,
            connector,
            inbox,
            local.asked.clone(),
            control.clone(),
            stop.clone(),
            &baseline,
            Ownership {
                owners: owners.clone(),
                start,
                may_save: may_save.clone(),
            },
        ));
    }
    local.statuses = workers.iter().map(|w| w.status.clone()).collect();
    Ok((local, workers))
}

/// Runs the local side and each worker in a thread of its own.
fn spawn<C: Connector + Send + 'static>(
    mut local: Local,
    workers: Vec<Worker<C>>,
) -> std::io::Result<SyncHandle> {
    let statuses = local.statuses.clone();
    let (stop, control) = (local.stop.clone(), local.control.clone());
    let may_save = workers
        .first()
        .map(|w| w.ownership.may_save.clone())
        .unwrap_or_default();
    let Some(first) = statuses.first().cloned() else {
        return Err(std::io::Error::other("no standby to replicate to"));
    };
    let mut threads = Vec::new();
    for mut worker in workers {
        let name = if worker.position == 0 {
            "sync".to_string()
        } else {
            format!("sync-{}", worker.position)
        };
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run())?,
        );
    }
    if !local.shared {
        threads.push(
            std::thread::Builder::new()
                .name("sync-local".into())
                .spawn(move || local.run())?,
        );
    }
    Ok(SyncHandle {
        stop,
        may_save,
        status: first,
        statuses,
        control,
        threads,
    })
}

/// What the local side has for one standby's worker since it last looked:
/// the master's tree as it is now (one copy for all workers, see the module
/// doc) and which paths changed, so a round plans only those.
#[derive(Default)]
struct Update {
    tree: Option<Arc<Tree>>,
    /// Paths looked at again since the worker last took an update.
    changed: Changed,
    /// A full walk happened since: plan all of the tree.
    all: bool,
    /// Files closed after writing since: safe to ship at once.
    closed: HashSet<Vec<u8>>,
    /// Full walks of the data dir so far (no round before the first one).
    walks: u64,
    /// The last walk ticket ([`Asked::walk_tickets`]) served by a walk that
    /// began after it was asked for.
    served: u64,
    /// When the look that made `tree` began (unix milliseconds).
    looked_ms: u64,
}

/// One standby's mailbox from the local side, with a bell.
#[derive(Default)]
struct Inbox {
    update: Mutex<Update>,
    bell: std::sync::Condvar,
}

impl Inbox {
    /// Adds what one look found (a worker that has not taken the last update
    /// gets both at once: nothing is lost while it is busy or cut off).
    fn post(
        &self,
        tree: &Arc<Tree>,
        changed: Option<&Changed>,
        closed: &HashSet<Vec<u8>>,
        walks: u64,
        served: u64,
        looked_ms: u64,
    ) {
        if let Ok(mut u) = self.update.lock() {
            u.tree = Some(Arc::clone(tree));
            u.looked_ms = looked_ms;
            match changed {
                Some(c) if !u.all => {
                    u.changed.exact.extend(c.exact.iter().cloned());
                    u.changed.subtrees.extend(c.subtrees.iter().cloned());
                }
                Some(_) => {}
                None => u.all = true,
            }
            // A worker stuck in a slow transfer does not make this grow
            // without end: past a bound, its next round plans everything.
            if u.all || too_many(&u.changed) {
                u.all = true;
                u.changed = Changed::default();
            }
            u.closed.extend(closed.iter().cloned());
            if u.closed.len() > CHANGED_MAX {
                // Only a shortcut past the settle time: it goes.
                u.closed = HashSet::new();
            }
            u.walks = walks;
            u.served = served;
        }
        self.bell.notify_all();
    }

    /// Waits up to `wait` for an update and takes it, if any.
    fn take(&self, wait: Duration) -> Option<Update> {
        let mut u = self.update.lock().ok()?;
        if u.tree.is_none() && !wait.is_zero() {
            u = self.bell.wait_timeout(u, wait).ok()?.0;
        }
        u.tree.is_some().then(|| std::mem::take(&mut *u))
    }
}

/// Paths a worker keeps to plan, posted or its own, beyond which it plans
/// the whole tree instead (a pass over it, less than keeping them when a
/// standby is away for long).
const CHANGED_MAX: usize = 100_000;

/// A standby is told how far it is caught up ([`Position`]) at most this
/// often: one small write, not one per round, while files stream in.
const POSITION_EVERY: Duration = Duration::from_secs(1);

fn too_many(c: &Changed) -> bool {
    c.exact.len() + c.subtrees.len() > CHANGED_MAX
}

/// What the standbys' workers ask the local side to look at again.
#[derive(Debug, Default)]
struct Asked {
    paths: BTreeSet<Vec<u8>>,
    rescan_all: bool,
    /// Full walks asked for so far: a walk serves the tickets taken before
    /// it began (not one already under way when the worker asked).
    walk_tickets: u64,
}

/// The reconciliation baseline (see [`reconcile`]), loaded once and shared:
/// every standby is reconciled against it before anything is mirrored to
/// it, and the file goes once all of them are.
struct Baseline {
    tree: Option<Tree>,
    /// Workers not yet reconciled with it.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Baseline {
    fn load(state_dir: &std::path::Path, workers: usize) -> std::io::Result<Baseline> {
        // A baseline that cannot be read must not turn into "nothing agreed":
        // that would bring back every file the new master deleted, but worse,
        // an empty one would be taken as no reconciliation at all.
        let tree = reconcile::load_baseline(&state_dir.join(BASELINE_FILE)).map_err(|e| {
            std::io::Error::other(format!("cannot read the reconciliation baseline: {e}"))
        })?;
        Ok(Baseline {
            tree,
            waiting: Arc::new(std::sync::atomic::AtomicUsize::new(workers)),
        })
    }
}

/// The master's side, once for all standbys: the inotify watches, the walks
/// and the master's tree. Each look is posted to every standby's [`Inbox`].
struct Local {
    data_dir: PathBuf,
    /// Shared storage: the local side does not run (nothing to copy).
    shared: bool,
    fallback_interval: Duration,
    watcher: watch::Watcher,
    /// The master's tree as last seen: a full scan, then kept current path by
    /// path from the events, so a round looks only at what changed.
    current: Tree,
    /// Paths named by events (or asked for by a worker) since the last look.
    dirty: BTreeSet<Vec<u8>>,
    /// Walk the whole data dir next look (start, fallback timer, lost events).
    rescan_all: bool,
    /// Files closed after writing since the last look.
    closed: HashSet<Vec<u8>>,
    walks: u64,
    /// Walk tickets taken from the workers and not served yet, and the last
    /// served (see [`Asked::walk_tickets`]).
    tickets_taken: u64,
    tickets_served: u64,
    /// Only the event and fallback timers are used here.
    schedule: Schedule,
    inboxes: Vec<Arc<Inbox>>,
    asked: Arc<Mutex<Asked>>,
    /// Every worker's status: the walk's findings are shown in each.
    statuses: Vec<Arc<Mutex<SyncStatus>>>,
    skipped_logged: HashSet<Vec<u8>>,
    stop: Arc<AtomicBool>,
    control: Arc<Mutex<Control>>,
    /// Stamps each look for the standbys' positions.
    clock: clock::LookClock,
}

impl Local {
    /// The local side and an inbox for each standby.
    fn new(
        settings: &SyncSettings,
        stop: Arc<AtomicBool>,
        control: Arc<Mutex<Control>>,
    ) -> std::io::Result<(Local, Vec<Arc<Inbox>>)> {
        let inboxes: Vec<Arc<Inbox>> = settings
            .standbys()
            .iter()
            .map(|_| Arc::new(Inbox::default()))
            .collect();
        let watcher = watch::Watcher::new(settings.data_dir.clone())?;
        let local = Local {
            data_dir: settings.data_dir.clone(),
            shared: settings.shared,
            fallback_interval: settings.fallback_interval,
            watcher,
            current: Tree::new(),
            dirty: BTreeSet::new(),
            rescan_all: true,
            closed: HashSet::new(),
            walks: 0,
            tickets_taken: 0,
            tickets_served: 0,
            schedule: Schedule::new(
                Instant::now(),
                settings.fallback_interval,
                settings.audit_interval,
            ),
            inboxes: inboxes.clone(),
            asked: Arc::new(Mutex::new(Asked::default())),
            statuses: Vec::new(),
            skipped_logged: HashSet::new(),
            stop,
            control,
            clock: clock::LookClock::load(&settings.state_dir),
        };
        Ok((local, inboxes))
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self.schedule.next_wake(now).saturating_duration_since(now);
            if self.wait_for_events(wait) {
                self.schedule.events_arrived(Instant::now());
            }
            if self.take_asked() {
                self.schedule.events_arrived(Instant::now());
            }
            let now = Instant::now();
            if self.schedule.fallback_due(now) {
                self.schedule.fallback_started(now);
                self.rescan_all = true;
            }
            if self.schedule.round_due(now) {
                self.pass();
            }
            // A worker saw a newer epoch or handed the role over: all stop.
            if self
                .control
                .lock()
                .is_ok_and(|c| c.step_down.is_some() || c.handed_over.is_some())
            {
                break;
            }
        }
    }

    /// Waits up to `wait` for inotify events and notes the paths they name;
    /// true if any arrived.
    fn wait_for_events(&mut self, wait: Duration) -> bool {
        let noticed = self.watcher.wait(wait);
        self.rescan_all |= noticed.rescan_all;
        for (path, complete) in noticed.paths {
            if complete {
                self.closed.insert(path.clone());
            }
            self.dirty.insert(path);
        }
        noticed.any
    }

    /// Takes what the workers asked to look at again; true if anything.
    fn take_asked(&mut self) -> bool {
        let Ok(mut asked) = self.asked.lock() else {
            return false;
        };
        let any = asked.rescan_all || !asked.paths.is_empty();
        self.rescan_all |= std::mem::take(&mut asked.rescan_all);
        self.tickets_taken = self.tickets_taken.max(asked.walk_tickets);
        self.dirty.append(&mut asked.paths);
        any
    }

    /// One look, posted to every standby: the workers plan from it on their
    /// own time, so a slow one holds up nobody.
    fn pass(&mut self) {
        self.take_asked();
        let looked_ms = self.clock.stamp(crate::timefmt::unix_now_ms());
        match self.look() {
            Ok(changed) => {
                if self.current.needs_compacting() {
                    // Each worker gets a copy of the changes over the base
                    // with every look: kept few. The workers' indexes move
                    // to the new base at their next round.
                    self.current.compact();
                    memory::give_back();
                }
                let tree = Arc::new(self.current.clone());
                let closed = std::mem::take(&mut self.closed);
                for inbox in &self.inboxes {
                    inbox.post(
                        &tree,
                        changed.as_ref(),
                        &closed,
                        self.walks,
                        self.tickets_served,
                        looked_ms,
                    );
                }
                let again = !self.dirty.is_empty();
                self.schedule.round_done(Instant::now(), None, again);
            }
            Err(err) => {
                tracing::error!(path = %self.data_dir.display(), "cannot scan the data dir: {err}");
                self.set_status(|s| {
                    s.last_error = Some(format!("cannot scan the data dir: {err}"))
                });
                self.rescan_all = true;
                self.schedule.scan_failed(Instant::now());
            }
        }
    }

    /// Brings `current` up to date: a full walk, or the paths events named.
    /// Returns the part of the tree that changed, `None` for all of it.
    fn look(&mut self) -> Result<Option<Changed>, std::io::Error> {
        let mut all = false;
        if self.rescan_all {
            // The tickets taken before this walk begins are served by it.
            let serving = self.tickets_taken;
            // Every folder is watched as the walk reaches it; then the watches
            // of folders no longer there (or renamed) are dropped.
            let watcher = &mut self.watcher;
            let mut folders = HashSet::new();
            // Built on the last walk's list: a walk that finds little new
            // keeps the base the workers' indexes stand on.
            let (tree, skipped) = tree::rescan(&self.data_dir, &self.current, &mut |folder| {
                watcher.watch(folder.to_vec());
                folders.insert(folder.to_vec());
            })?;
            self.watcher.keep_only(&folders);
            self.note_watches(folders.len());
            self.log_skipped(skipped);
            self.current = tree;
            self.dirty.clear();
            self.rescan_all = false;
            self.walks += 1;
            self.tickets_served = serving;
            all = true;
            self.set_status(|s| s.last_scan = Some(unix_now()));
        }
        let mut changed = Changed::default();
        for path in std::mem::take(&mut self.dirty) {
            self.refresh(path, &mut changed);
        }
        Ok((!all).then_some(changed))
    }

    fn set_status(&self, f: impl Fn(&mut SyncStatus)) {
        for status in &self.statuses {
            if let Ok(mut s) = status.lock() {
                f(&mut s);
            }
        }
    }

    /// Says how the watches stand after a full walk: in the journal at the
    /// first walk and whenever the limit starts or stops leaving folders
    /// without a watch, and always in the status.
    fn note_watches(&mut self, folders: usize) {
        let limits = watch::Limits::read();
        let watches = watch::Watches {
            folders,
            // After `keep_only`, only folders of this walk have a watch.
            watched: self.watcher.watched().min(folders),
            max_user_watches: limits.max_user_watches,
            max_queued_events: limits.max_queued_events,
        };
        let before = self
            .statuses
            .first()
            .and_then(|s| s.lock().ok().and_then(|s| s.watches));
        let words = watches.words(&crate::timefmt::format_duration(self.fallback_interval));
        match before {
            None if watches.short() => tracing::warn!("inotify: {words}"),
            None => tracing::info!("inotify: {words}"),
            Some(b) if watches.short() && !b.short() => tracing::warn!("inotify: {words}"),
            Some(b) if !watches.short() && b.short() => {
                tracing::info!("inotify: every folder has its watch again: {words}")
            }
            Some(_) => {}
        }
        self.set_status(|s| s.watches = Some(watches));
    }

    /// Looks at one path again and updates `current` (and the watches) to match.
    fn refresh(&mut self, path: Vec<u8>, changed: &mut Changed) {
        if path.is_empty() {
            // The data dir itself: its attributes are not replicated, and losing
            // its watch (removed, unmounted) already asked for a full scan.
            return;
        }
        let root = self.data_dir.clone();
        let found = match tree::stat_path(&root, &path) {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(path = %sftp::show(&path), "cannot look at this path: {err}; the next full scan tries again");
                return;
            }
        };
        match found {
            tree::Found::Entry(e) if e.kind == Kind::Dir => {
                let known = self
                    .current
                    .get(&path)
                    .is_some_and(|old| old.kind == Kind::Dir && old.ino == e.ino)
                    && self.watcher.is_watched(&path);
                if known {
                    // Its own attributes; what is inside has events of its own.
                    self.current.insert(path.clone(), e);
                    changed.exact.insert(path);
                    return;
                }
                // New (or replaced) folder: each of its folders is watched and
                // then listed, so what was created in it before the watch is in
                // the listing and what comes after has events.
                self.forget(&path);
                self.current.insert(path.clone(), e);
                let watcher = &mut self.watcher;
                match tree::scan_below(&root, &path, &mut |folder| watcher.watch(folder.to_vec())) {
                    Ok((below, skipped)) => {
                        self.log_skipped(skipped);
                        self.current.extend(below);
                    }
                    Err(err) => {
                        tracing::debug!(path = %sftp::show(&path), "folder changed while walking it: {err}")
                    }
                }
            }
            tree::Found::Entry(e) => {
                if self.current.get(&path).is_some_and(|o| o.kind == Kind::Dir) {
                    self.forget(&path);
                }
                self.current.insert(path.clone(), e);
            }
            tree::Found::Missing => self.forget(&path),
            tree::Found::Skipped(what) => {
                self.forget(&path);
                self.log_skipped(vec![(path.clone(), what)]);
            }
        }
        changed.subtrees.insert(path);
    }

    /// Drops `path` and everything below it from `current`, and their watches.
    fn forget(&mut self, path: &[u8]) {
        let removed = tree::remove_subtree(&mut self.current, path);
        for (folder, _) in removed.iter().filter(|(_, e)| e.kind == Kind::Dir) {
            self.watcher.unwatch(folder);
        }
    }

    fn log_skipped(&mut self, skipped: tree::Skipped) {
        for (path, what) in skipped {
            // The host's own log sockets are no news.
            if audit::is_log_socket(&path) {
                continue;
            }
            if self.skipped_logged.insert(path.clone()) {
                tracing::info!(path = %sftp::show(&path), "not replicated: a {what}");
            }
        }
    }
}

/// One standby's worker: its sessions, index, schedule, audit, refusals,
/// reconciliation and status. It plans from the latest look of the local
/// side and never waits for another standby.
struct Worker<C: Connector> {
    settings: SyncSettings,
    /// Its place in `[sync] peer`: the first one speaks for the pair to the
    /// daemon (the peer's role, `sftp-ha demote`'s offer).
    position: usize,
    /// How sessions with the standby are opened (SSH; in tests, in memory).
    connector: C,
    /// This host's tree when it was promoted: while it is here, the peer is a
    /// former master to reconcile before anything is mirrored to it.
    baseline: Option<Tree>,
    /// Workers still to reconcile with the baseline; the last one removes it.
    baseline_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// The peer says it was a master and has not been reconciled (the token
    /// of that step-down, echoed back once it is).
    peer_unreconciled: Option<u64>,
    /// The peer's node name as last read (for the journal and conflict copies).
    peer_node: Option<String>,
    /// With shared storage: the token of the peer's step-down last answered
    /// as reconciled, so it is written once, not at every peer check.
    reconciled_told: Option<u64>,
    /// `baseline` is empty because there is none for this peer: everything
    /// of its that differs is kept.
    union: bool,
    control: Arc<Mutex<Control>>,
    /// Rounds, reconnects, audits, peer checks and index writes: when each is due.
    schedule: Schedule,
    index_path: PathBuf,
    /// What the standby has confirmed. Held on the same base as `current`
    /// where both agree (see [`tree::share_base`]): one copy of a million paths.
    index: Tree,
    /// The base `index` was last put on (see `keep_trees_shared`).
    shared_base: usize,
    /// The master's tree as the local side last posted it.
    current: Arc<Tree>,
    inbox: Arc<Inbox>,
    asked: Arc<Mutex<Asked>>,
    /// Full walks seen so far: no round before the first one.
    walks: u64,
    /// The last walk ticket a walk served (see [`Asked::walk_tickets`]).
    served: u64,
    /// The walk ticket a handover waits for, once asked.
    handover_walk: Option<u64>,
    /// After a reconciliation brought files in: the walk ticket whose walk
    /// must be posted before the local side's tree replaces this worker's
    /// own walk of the data dir.
    reconcile_walk: Option<u64>,
    /// With shared storage: since when the handover waits for the fenced
    /// users' session processes to be gone, and how many were last said.
    writers_since: Option<Instant>,
    writers_said: usize,
    writers: WritersProbe,
    /// Paths to plan next round (posted, or settling files planned again).
    changed: Changed,
    /// Compare the whole tree with the index next round, not only what changed
    /// (after a full scan, an audit, or operations left undone by a failure).
    replan_all: bool,
    /// Files closed after writing since the last round: safe to ship at once.
    closed: HashSet<Vec<u8>>,
    standby: Option<C::Session>,
    /// Extra sessions that share a run of uploads with `standby`.
    helpers: Vec<C::Session>,
    stop: Arc<AtomicBool>,
    ownership: Ownership,
    /// The standby, its index file and its host key, held by this worker
    /// alone (see [`owner`]); `None` until then: nothing is written, not
    /// even the index, which is read only once it is held.
    owned: Option<owner::Owned>,
    status: Arc<Mutex<SyncStatus>>,
    /// Paths whose operation the standby refused, with the refusal: each is
    /// logged once, shown in the status, and dropped when it succeeds.
    refused: std::collections::HashMap<Vec<u8>, String>,
    /// How many refusals the journal gets one by one.
    refusals_logged: LogBudget,
    /// The last connection failure logged, so a repeated one is said once;
    /// cleared once an audit succeeds.
    said: Option<String>,
    /// When the look that made `current` began (unix milliseconds).
    current_looked_ms: u64,
    /// The standby confirmed everything of the look that began then
    /// ([`Position`]); told to it at most every [`POSITION_EVERY`].
    caught_up_ms: u64,
    caught_up_told: u64,
    caught_up_told_at: Option<Instant>,
    /// The standby refused the last position write: said once.
    position_refused: bool,
    /// An operation of this round was skipped (refused, changed locally,
    /// aborted): the standby lacks part of the look.
    round_skipped: bool,
}

/// What a worker needs to write to its standby and its index alone, and
/// only while the daemon waits for it (see [`owner`] and [`SyncHandle::stop`]).
struct Ownership {
    owners: Arc<owner::Owners>,
    /// Its start of the workers ([`owner::Owners::start`]).
    start: u64,
    /// False once [`SyncHandle::stop`] gave up waiting: the index is not
    /// written any more.
    may_save: Arc<RwLock<bool>>,
}

impl<C: Connector> Worker<C> {
    /// A worker for the standby at `position` that opens its sessions with
    /// `connector`: its index loaded from the state dir (once it owns the
    /// standby, see [`Worker::own`]), nothing sent yet.
    #[allow(clippy::too_many_arguments)]
    fn new(
        settings: SyncSettings,
        position: usize,
        connector: C,
        inbox: Arc<Inbox>,
        asked: Arc<Mutex<Asked>>,
        control: Arc<Mutex<Control>>,
        stop: Arc<AtomicBool>,
        baseline: &Baseline,
        ownership: Ownership,
    ) -> Worker<C> {
        let status = Arc::new(Mutex::new(SyncStatus {
            standby: settings.standby.to_string(),
            since: unix_now(),
            reconciling: baseline.tree.is_some(),
            ..SyncStatus::default()
        }));
        let index_path = settings
            .state_dir
            .join(index_file(position, &settings.standby));
        let mut worker = Worker {
            baseline: baseline.tree.clone(),
            baseline_waiting: baseline.waiting.clone(),
            peer_unreconciled: None,
            peer_node: None,
            reconciled_told: None,
            union: false,
            control,
            schedule: Schedule::new(
                Instant::now(),
                settings.fallback_interval,
                settings.audit_interval,
            ),
            // Read by `own`.
            index: Tree::new(),
            index_path,
            shared_base: 0,
            settings,
            position,
            connector,
            current: Arc::new(Tree::new()),
            inbox,
            asked,
            walks: 0,
            served: 0,
            handover_walk: None,
            reconcile_walk: None,
            writers_since: None,
            writers_said: 0,
            writers: sshd_writers,
            changed: Changed::default(),
            replan_all: true,
            closed: HashSet::new(),
            standby: None,
            helpers: Vec::new(),
            stop,
            ownership,
            owned: None,
            status,
            refused: std::collections::HashMap::new(),
            refusals_logged: LogBudget::new(Instant::now(), REFUSALS_LOGGED),
            said: None,
            current_looked_ms: 0,
            caught_up_ms: 0,
            caught_up_told: 0,
            caught_up_told_at: None,
            position_refused: false,
            round_skipped: false,
        };
        // Taken at once if free, else at its rounds (see `own`).
        let _ = worker.own();
        worker
    }

    /// Takes the standby and its index file for this worker (see
    /// [`owner`]), if not held yet. While another worker holds one of them
    /// (one started before a reload or role change, still ending), this one
    /// writes nothing and says why; the schedule tries again at the retry.
    /// The index is read once they are held: the worker before may have
    /// written it until it ended.
    fn own(&mut self) -> Result<(), Instant> {
        if self.owned.is_some() {
            return Ok(());
        }
        let entry = self.settings.standby.to_string();
        let keys = vec![
            owner::Key::Endpoint(entry.clone()),
            owner::Key::Index(self.index_path.clone()),
        ];
        let owners = self.ownership.owners.clone();
        match owners.take(self.ownership.start, &entry, keys) {
            Ok(owned) => {
                self.owned = Some(owned);
                if !self.settings.shared {
                    self.index = tree::load_index(&self.index_path);
                    self.shared_base = 0;
                }
                Ok(())
            }
            Err(conflict) => Err(self.failed(self.held_by_another(conflict))),
        }
    }

    /// What another worker holding this one's standby means.
    fn held_by_another(&self, conflict: owner::Conflict) -> TransportError {
        let endpoint = self.settings.standby.to_string();
        if conflict.same_start {
            TransportError::SameHost {
                endpoint,
                other: conflict.entry,
            }
        } else {
            TransportError::PreviousWorker {
                endpoint,
                other: conflict.entry,
            }
        }
    }

    /// `Err(Stopped)` once the worker was told to stop: checked between
    /// writes that are not operations of a round (the audit, a reconcile).
    fn go_on(&self) -> Result<(), TransportError> {
        if self.stop.load(Ordering::Relaxed) {
            Err(TransportError::Stopped)
        } else {
            Ok(())
        }
    }

    fn run(&mut self) {
        if self.settings.shared {
            tracing::info!(standby = %self.settings.standby, "shared storage: nothing is replicated; the peer is asked for its role and told this master's claim");
        } else {
            tracing::info!(standby = %self.settings.standby, "sync started");
        }
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self.schedule.next_wake(now).saturating_duration_since(now);
            if self.take_update(wait) {
                self.schedule.update_arrived(Instant::now());
            }
            let now = Instant::now();
            if self.schedule.fallback_due(now) {
                // The walk itself is the local side's; its timer here only
                // brings a round (and keeps the wake-up time ahead).
                self.schedule.fallback_started(now);
            }
            if self.schedule.round_due(now) {
                if self.settings.shared {
                    self.claim_round();
                } else {
                    self.round();
                }
            } else if self.schedule.index_save_due(now, self.index.len()) {
                self.flush_index();
            } else if self.standby.is_some() && self.handing_over() {
                self.hand_over();
            } else if let Some(standby) = &self.standby {
                let alive = std::iter::once(standby)
                    .chain(&self.helpers)
                    .try_for_each(|s| s.keepalive());
                if let Err(err) = alive {
                    // Plans the next round at the retry.
                    self.failed(err);
                }
            }
            // The peer's role (a newer epoch, `promote`, `demote`'s offer)
            // is read when due whatever else this turn did: under a steady
            // stream of uploads a round is due at almost every turn, and a
            // check only in the turns without one would never come.
            if self.standby.is_some()
                && !self.stepped_down()
                && self.schedule.peer_check_due(Instant::now())
                && let Err(err) = self.check_peer()
            {
                self.failed(err);
            }
            if !self.stepped_down() {
                self.tell_position_if_due();
            }
            if self.stepped_down() {
                break;
            }
            if (self.handover_walk.is_some() || self.writers_since.is_some())
                && !self.handing_over()
            {
                // Called off: a later handover waits for a walk of its own.
                self.handover_walk = None;
                self.writers_since = None;
                self.writers_said = 0;
            }
        }
        self.flush_index();
        tracing::info!(standby = %self.settings.standby, "sync stopped");
    }

    /// Takes what the local side posted (waiting up to `wait` for it); true
    /// if anything.
    fn take_update(&mut self, wait: Duration) -> bool {
        let Some(update) = self.inbox.take(wait) else {
            return false;
        };
        if let Some(tree) = update.tree {
            match self.reconcile_walk {
                Some(ticket) if update.served < ticket => {}
                _ => {
                    self.reconcile_walk = None;
                    self.current = tree;
                    self.current_looked_ms = update.looked_ms;
                }
            }
        }
        if update.all {
            self.replan_all = true;
            // After a walk the index is compared with the tree's base again
            // if it is not on it (as with one standby: once per walk).
            self.shared_base = 0;
        } else if !self.replan_all {
            self.changed.exact.extend(update.changed.exact);
            self.changed.subtrees.extend(update.changed.subtrees);
        }
        if self.replan_all || too_many(&self.changed) {
            // All of it is planned next round: no list of paths to keep
            // (e.g. while the standby is unreachable).
            self.replan_all = true;
            self.changed = Changed::default();
        }
        self.closed.extend(update.closed);
        if self.closed.len() > CHANGED_MAX {
            self.closed = HashSet::new();
        }
        self.walks = update.walks;
        self.served = update.served;
        true
    }

    /// Asks the local side to look at these paths again (changed while being
    /// sent): the next update names them.
    fn ask_again(&self, paths: impl IntoIterator<Item = Vec<u8>>) {
        if let Ok(mut asked) = self.asked.lock() {
            asked.paths.extend(paths);
        }
    }

    /// Asks the local side for a full walk that begins after now; returns
    /// the ticket to wait for (see [`Asked::walk_tickets`]): a walk already
    /// under way may have passed a folder before a last upload landed there.
    fn ask_walk(&self) -> u64 {
        match self.asked.lock() {
            Ok(mut asked) => {
                asked.rescan_all = true;
                asked.walk_tickets += 1;
                asked.walk_tickets
            }
            // Never served: the handover waits, and is called off.
            Err(_) => u64::MAX,
        }
    }

    /// One round: plan what changed since the last one against the index and
    /// sync. Tells the schedule when to run again (files still settling, or
    /// the standby unreachable), if at all.
    fn round(&mut self) {
        self.take_update(Duration::ZERO);
        if self.own().is_err() {
            return;
        }
        if self.walks == 0 {
            // The local side has not walked the data dir yet: nothing to
            // plan from (an empty tree would look like everything deleted).
            self.schedule.round_done(Instant::now(), None, true);
            return;
        }
        // What this round plans from: a round that sends all of it leaves
        // the standby with everything of that look.
        let looked_ms = self.current_looked_ms;
        let changed = if self.replan_all {
            None
        } else {
            Some(std::mem::take(&mut self.changed))
        };
        self.changed = Changed::default();
        self.keep_trees_shared();
        // Before connecting: with the standby away, they must still be noted.
        let rewritten = round::rewritten_alike(&self.current, &self.index, &self.closed);
        for path in &rewritten {
            if let Some(confirmed) = self.index.get_mut(path) {
                confirmed.mtime_nsec = -1;
            }
        }
        if !rewritten.is_empty() {
            // Saved at once: if this host steps down before they are sent,
            // its list of unconfirmed files (see `reconcile`) must name them.
            self.schedule.index_changed();
            self.flush_index();
        }
        if self.standby.is_none() || self.schedule.audit_due(Instant::now()) {
            // A failure plans the next round at the retry.
            if self.connect().is_err() {
                // Away: what it lacks still shows, as far as the index
                // knows (an operator picks the most caught-up standby by it).
                let behind = tree::plan(&self.current, &self.index, self.settings.delete).len();
                self.set_status(|s| s.pending = behind);
                return;
            }
            if let Err(err) = self.audit() {
                self.failed(err);
                return;
            }
        }
        // The audit may have corrected the index anywhere: then all of it is planned.
        let changed = changed.filter(|_| !self.replan_all);
        let (part, confirmed) = round::scope(&self.current, &self.index, changed.as_ref());

        // A file modified in the last seconds, with no close seen, may still be
        // being written: unless the kernel says nobody has it open for writing,
        // it keeps its confirmed version (or waits to be created) until it settles.
        let now = unix_now() as i64;
        let fresh: Vec<Vec<u8>> = round::maybe_being_written(&part, now, &self.closed)
            .into_iter()
            .filter(|path| !self.nobody_writes(path))
            .collect();
        let settling = !fresh.is_empty();
        let ready = round::hold_back(part, &confirmed, &fresh);

        let mass_delete = tree::looks_like_mass_delete(&self.current, &self.index);
        if mass_delete {
            tracing::error!(
                path = %self.settings.data_dir.display(),
                "the data dir is empty but the standby has files: deletes are NOT mirrored; check that the data dir is mounted"
            );
        }
        let ops = tree::plan(&ready, &confirmed, self.settings.delete && !mass_delete);
        // After a walk, an audit or a plan of many paths.
        let big = matches!(confirmed, std::borrow::Cow::Borrowed(_)) || ready.len() > 10_000;
        drop((ready, confirmed));
        if big {
            memory::give_back();
        }
        // Planned again soon; a write to them meanwhile is an event anyway.
        self.changed.exact.extend(fresh);
        self.closed.clear();
        self.replan_all = false;
        self.set_status(|s| {
            s.pending = ops.len();
            s.deletes_held_back = mass_delete;
        });
        self.round_skipped = false;
        let retry = if ops.is_empty() {
            None
        } else {
            self.apply(ops)
        };
        // Everything of that look is there only if nothing was skipped, now
        // or in an earlier round (a refused path waits for a full round).
        if changed.is_none() && !self.round_skipped && retry.is_none() && !self.refused.is_empty() {
            // A round of the whole tree did all it planned: what was
            // refused before is there now or no longer to be sent (deleted
            // on this host meanwhile).
            self.refused.clear();
            self.set_status(|s| {
                s.refused = 0;
                s.last_refused = None;
            });
        }
        let complete = !self.round_skipped && self.refused.is_empty();
        if retry.is_none() && complete && !settling && !mass_delete && self.standby.is_some() {
            self.caught_up_ms = self.caught_up_ms.max(looked_ms);
        }
        self.keep_trees_shared();
        let again = settling || !self.changed.exact.is_empty() || !self.changed.subtrees.is_empty();
        self.schedule.round_done(Instant::now(), retry, again);
    }

    /// With shared storage, instead of a round: connects if not connected
    /// (which reads the peer's role) and (again after every connect and
    /// `audit_interval`) writes this master's claim there. Nothing is
    /// scanned, listed or sent.
    fn claim_round(&mut self) {
        if self.own().is_err() {
            return;
        }
        self.replan_all = false;
        self.changed = Changed::default();
        self.closed.clear();
        if self.standby.is_none() || self.schedule.audit_due(Instant::now()) {
            // A failure plans the next round at the retry.
            if self.connect().is_err() {
                return;
            }
            if let Err(err) = self.claim_shared() {
                self.failed(err);
                return;
            }
        }
        self.schedule.round_done(Instant::now(), None, false);
    }

    /// With shared storage: the peer takes this master's claim only while it
    /// is a standby (its sync account may write in its own folder); a former
    /// master is told it is reconciled at once (there is one tree).
    fn claim_shared(&mut self) -> Result<(), TransportError> {
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        if !push::accepts_writes(standby.sftp())? {
            return Err(TransportError::NotAStandby {
                endpoint: self.settings.standby.to_string(),
            });
        }
        let reconciled = self.peer_unreconciled;
        write_claim(standby.sftp(), &self.settings.claim(None, reconciled))?;
        if reconciled.is_some() && self.reconciled_told != reconciled {
            self.reconciled_told = reconciled;
            tracing::info!(standby = %self.settings.standby, "the former master is this host's standby now; shared storage: nothing to reconcile");
        }
        self.schedule.audited(Instant::now());
        self.said = None;
        Ok(())
    }

    /// Puts the index on the base of the master's tree again once that base
    /// is new (a walk, the local side compacting) or the index's changes
    /// since the last [`tree::share_base`] have added up (confirmations, an
    /// audit's corrections): a pass over both, once in many changes.
    fn keep_trees_shared(&mut self) {
        // Each base of the master's tree (and each walk) is compared once:
        // a standby still being filled keeps a base of its own until then;
        // and again when the index's own changes have added up.
        let moved = self.current.base_id() != self.shared_base
            && !tree::same_base(&self.current, &self.index);
        if moved || tree::drifted(&Tree::new(), &self.index) {
            tree::share_base(&self.current, &mut self.index);
            self.shared_base = self.current.base_id();
            memory::give_back();
        }
    }

    /// True if the kernel says no process has this file open for writing
    /// (found by a walk, e.g. created in a new folder before its watch existed).
    fn nobody_writes(&self, path: &[u8]) -> bool {
        tree::open_file(&self.settings.data_dir, path)
            .ok()
            .and_then(|(file, _)| lease::nobody_writes(&file))
            .unwrap_or(false)
    }

    /// Connects if not connected; a new connection is audited before anything is sent.
    fn connect(&mut self) -> Result<(), Instant> {
        if self.standby.is_some() {
            return Ok(());
        }
        self.own()?;
        match self.open_session() {
            Ok(s) => {
                // The session was checked against this pinned key: another
                // entry of `[sync] peer` whose worker reached the same key
                // first is the same host, and that one replicates to it (see
                // `owner`). Only keys that a session was checked against
                // count: a stale pin of an entry that cannot connect blocks
                // no other entry.
                let key = self.connector.host_key();
                if let Some(Err(conflict)) = self.owned.as_mut().map(|o| o.set_host_key(key)) {
                    drop(s);
                    let err = self.held_by_another(conflict);
                    return Err(self.failed(err));
                }
                // Not said again on every retry of a failure only the admin can fix.
                if self.said.is_none() {
                    tracing::info!(standby = %self.settings.standby, "connected to the standby");
                }
                self.standby = Some(s);
                // Whom we reached decides whether anything is sent at all.
                if let Err(err) = self.check_peer() {
                    return Err(self.failed(err));
                }
                // Ready before the first burst: opening them then would delay it.
                self.open_helpers();
                self.schedule.connected(Instant::now());
                self.set_status(|s| {
                    s.connected = true;
                    s.since = unix_now();
                    s.last_error = None;
                });
                Ok(())
            }
            Err(err) => Err(self.failed(err)),
        }
    }

    fn open_session(&self) -> Result<C::Session, TransportError> {
        self.connector.open()
    }

    /// Opens the missing extra sessions for runs of uploads, all at once; one
    /// that fails is left out (and tried again before the next run).
    fn open_helpers(&mut self) {
        let missing = (SESSIONS - 1).saturating_sub(self.helpers.len());
        if missing == 0 {
            return;
        }
        let connector = &self.connector;
        let opened: Vec<Result<C::Session, TransportError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..missing)
                .map(|_| scope.spawn(|| connector.open()))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for result in opened {
            match result {
                Ok(s) => self.helpers.push(s),
                Err(err) => tracing::debug!("extra session not opened: {err}"),
            }
        }
    }

    /// Lists the standby's tree and corrects the index wherever the standby
    /// differs from what it confirmed (changed or deleted behind our back, or
    /// extra files), so the plan that follows repairs it.
    fn audit(&mut self) -> Result<(), TransportError> {
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        // Before anything is compared, let alone deleted: a host takes
        // replication only while it is a standby.
        if !push::accepts_writes(standby.sftp())? {
            return Err(TransportError::NotAStandby {
                endpoint: self.settings.standby.to_string(),
            });
        }
        // A standby that took another master's replication (several
        // standbys: the old master's other standby, after a promotion) may
        // hold uploads that never reached this host: it is reconciled like a
        // former master before anything of it is deleted by mirroring. Its
        // claim is left as it is until then, so a restart halfway does it again.
        let foreign = read_claim(standby.sftp())?.filter(|c| c.node != self.settings.node);
        if let Some(claim) = &foreign {
            // A claim is a master's word: one at a newer epoch (or at this
            // epoch from a host that wins the tie) means this host must step
            // down, as if that master were the peer; an older one is history.
            let as_peer = Published {
                node: claim.node.clone(),
                role: Role::Master,
                epoch: claim.epoch,
                wants_master: false,
                users: None,
                unreconciled: None,
                // A claim says nothing of storage; only the epoch counts here.
                shared: self.settings.shared,
            };
            let verdict =
                crate::role::judge_peer(&self.settings.live, &self.settings.node, &as_peer);
            if let PeerVerdict::StepDown { epoch, reason } = verdict {
                let reason = format!(
                    "the standby {} takes replication from another master: {reason}",
                    self.settings.standby
                );
                if let Ok(mut c) = self.control.lock() {
                    c.step_down = Some((epoch, reason.clone()));
                }
                self.stop.store(true, Ordering::Relaxed);
                return Err(TransportError::SteppedDown { reason });
            }
        }
        if foreign.is_none() {
            // The standby learns (again) whose replication it takes, and at which epoch.
            write_claim(standby.sftp(), &self.settings.claim(None, None))?;
        }
        let mut listing = audit::Listing::new();
        while let Some(folder) = listing.next_folder() {
            let entries = match standby.sftp().read_dir(&remote_path(&folder)) {
                // Gone since its parent was listed: no temporaries to remove.
                Err(e) if tree::in_temp_dir(&folder) && e.is_no_such_file() => Vec::new(),
                other => other?,
            };
            listing.add(&folder, entries);
        }
        let audit::Found {
            tree: remote,
            temporaries,
            planted,
        } = listing.finish();
        // Listing a big tree takes a while: a worker told to stop meanwhile
        // removes nothing (a new one may already wait for this standby).
        self.go_on()?;
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        for temp in &temporaries {
            match standby.sftp().remove(&remote_path(temp)) {
                Err(e) if !e.is_no_such_file() => return Err(e.into()),
                _ => {}
            }
        }
        if !temporaries.is_empty() {
            tracing::info!(standby = %self.settings.standby, "audit: removed {} unfinished temporary file(s)", temporaries.len());
        }
        for path in &planted {
            match standby.sftp().remove(&remote_path(path)) {
                Err(e) if !e.is_refusal() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(standby = %self.settings.standby, path = %sftp::show(path), "audit: cannot remove a link or special file the master does not have: {e}")
                }
                Ok(()) => {
                    tracing::warn!(standby = %self.settings.standby, path = %sftp::show(path), "audit: removed a link or special file the master does not have")
                }
            }
        }

        // A former master rejoining: whatever it has that this host lacks,
        // or changed since the baseline, comes here before anything is
        // mirrored over it.
        // A peer that was a master and was never reconciled, while this host
        // has no baseline (it was not promoted over it: e.g. the peer stepped
        // down on its own after a forced promotion of its own): everything
        // it has that this host lacks is brought back, nothing of it is
        // taken as deleted here.
        if let (Some(claim), None) = (&foreign, &self.baseline) {
            tracing::info!(standby = %self.settings.standby, "the standby took replication from {} (epoch {}), not from this host: whatever it has that this host lacks comes here first, nothing is deleted there", claim.node, claim.epoch);
            self.baseline = Some(Tree::new());
            self.union = true;
            self.set_status(|s| s.reconciling = true);
        }
        if self.baseline.is_none() && self.peer_unreconciled.is_some() {
            tracing::info!(standby = %self.settings.standby, "the peer was a master before it became this host's standby, and this host has no baseline for it: whatever it has that this host lacks comes here first, nothing is deleted there");
            self.baseline = Some(Tree::new());
            self.union = true;
            self.set_status(|s| s.reconciling = true);
        }
        self.go_on()?;
        let differing = if self.baseline.is_some() {
            self.reconcile(&remote)?
        } else {
            HashSet::new()
        };

        let repairs = audit::correct_index(&mut self.index, remote, &self.current, differing);
        if repairs > 0 {
            tracing::warn!(standby = %self.settings.standby, "audit: {repairs} difference(s) on the standby, repairing");
        } else {
            tracing::debug!("audit: the standby matches");
        }
        self.schedule.index_changed();
        self.flush_index();
        self.replan_all = true;
        self.schedule.audited(Instant::now());
        self.said = None;
        if self.baseline.is_some() {
            self.go_on()?;
            // The peer may be mirrored over from now on, and it knows it;
            // the baseline goes only once it does.
            if let Some(standby) = self.standby.as_mut() {
                write_claim(
                    standby.sftp(),
                    &self.settings.claim(None, self.peer_unreconciled),
                )?;
            }
            let had_file = !self.union;
            self.baseline = None;
            self.union = false;
            // The file goes once every standby is reconciled with it (each
            // worker counts itself once: a union has no file behind it).
            let last = had_file && self.baseline_waiting.fetch_sub(1, Ordering::AcqRel) == 1;
            let path = self.settings.state_dir.join(BASELINE_FILE);
            match last.then(|| std::fs::remove_file(&path)) {
                Some(Err(err)) if err.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), "cannot remove the reconciled baseline: {err}")
                }
                _ => {}
            }
            self.peer_unreconciled = None;
            tracing::info!(standby = %self.settings.standby, "reconciled with the former master: normal one-way replication from now on");
            self.set_status(|s| s.reconciling = false);
        }
        self.set_status(|s| {
            s.last_audit = Some(unix_now());
            s.last_audit_repairs = repairs;
        });
        Ok(())
    }

    /// Runs the operations; on a transport error, stops and asks to retry later.
    /// A run of uploads is shared by several sessions.
    fn apply(&mut self, ops: Vec<Op>) -> Option<Instant> {
        if let Err(retry) = self.connect() {
            return Some(retry);
        }
        let total = ops.len();
        let mut done = 0;
        let mut changed = false;
        let mut start = 0;
        while start < ops.len() && !self.stop.load(Ordering::Relaxed) {
            let puts = ops[start..]
                .iter()
                .take_while(|op| matches!(op, Op::Put(..)))
                .count();
            let outcome = if puts >= PARALLEL_MIN {
                let run = &ops[start..start + puts];
                start += puts;
                self.put_parallel(run, total, &mut done)
            } else {
                let op = &ops[start];
                start += 1;
                match self.execute(op) {
                    Ok(bytes) => {
                        done += 1;
                        confirm(&mut self.index, &self.status, op, bytes, total - done);
                        self.clear_refused(op.path());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            changed = true;
            match outcome {
                Ok(()) => {}
                Err(OpError::Transport(err)) => {
                    self.save_index(changed);
                    return Some(self.failed(err));
                }
                Err(OpError::Local(path, err)) => {
                    // Changed or gone under us: looked at again next round.
                    tracing::debug!(path = %sftp::show(&path), "skipped for now: {err}");
                    self.ask_again([path]);
                    self.round_skipped = true;
                }
                Err(OpError::Refused(path, err)) => {
                    done += 1;
                    self.note_refused(path, &err);
                    self.set_status(|s| s.pending = total - done);
                    self.round_skipped = true;
                }
                Err(OpError::Aborted) => {
                    self.replan_all = true;
                    self.round_skipped = true;
                }
            }
        }
        self.save_index(changed);
        None
    }

    /// The standby refused one operation: said once, shown in the status,
    /// skipped. The next full round (fallback timer, audit) plans it again.
    fn note_refused(&mut self, path: Vec<u8>, err: &sftp::SftpError) {
        let message = err.to_string();
        if self.refused.get(&path) != Some(&message) {
            // The status has the count and the last one.
            let spend = self.refusals_logged.spend(Instant::now());
            if spend.unlogged_before > 0 {
                tracing::warn!(
                    standby = %self.settings.standby,
                    "{} more refused operation(s) in the last minute were not logged one by one (sftp-ha status counts them)",
                    spend.unlogged_before
                );
            }
            if spend.log {
                tracing::warn!(
                    standby = %self.settings.standby,
                    path = %sftp::show(&path),
                    "the standby refused an operation, skipped (tried again on the next full scan): {message}"
                );
            }
        }
        self.refused.insert(path, message.clone());
        let count = self.refused.len();
        self.set_status(|s| {
            s.refused = count;
            s.last_refused = Some(message);
        });
    }

    /// An operation on `path` went through: it is no longer refused.
    fn clear_refused(&mut self, path: &[u8]) {
        if self.refused.remove(path).is_some() {
            let count = self.refused.len();
            self.set_status(|s| {
                s.refused = count;
                if count == 0 {
                    s.last_refused = None;
                }
            });
        }
    }

    /// Uploads `run` (only Puts) over all sessions at once. Local failures
    /// are noted in `dirty`; the first transport failure is returned after
    /// the others have finished what they were doing.
    fn put_parallel(&mut self, run: &[Op], total: usize, done: &mut usize) -> Result<(), OpError> {
        self.open_helpers();
        let Worker {
            standby,
            helpers,
            settings,
            index,
            status,
            stop,
            ..
        } = self;
        let mut again = Vec::new();
        let Some(main) = standby.as_mut() else {
            return Err(OpError::Transport(TransportError::NotPinned));
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut failure = None;
        // Files an extra session failed on, and which sessions failed.
        let mut redo = Vec::new();
        let mut broken = Vec::new();
        let mut refusals = Vec::new();
        let mut succeeded = Vec::new();
        std::thread::scope(|scope| {
            let sessions = std::iter::once(main).chain(helpers.iter_mut());
            for (n, session) in sessions.enumerate() {
                let (tx, next, stop, data_dir) = (tx.clone(), &next, &*stop, &settings.data_dir);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // A few files at a time: the small ones pipelined together.
                        let first = next.fetch_add(BATCH, Ordering::Relaxed);
                        let Some(chunk) = run.get(first..run.len().min(first + BATCH)) else {
                            break;
                        };
                        let (mut small, mut big) = (Vec::new(), Vec::new());
                        for (k, op) in chunk.iter().enumerate() {
                            if let Op::Put(path, e) = op {
                                let item = (first + k, (path.as_slice(), e));
                                if e.size <= push::SMALL {
                                    small.push(item)
                                } else {
                                    big.push(item)
                                }
                            }
                        }
                        let items: Vec<_> = small.iter().map(|(_, item)| *item).collect();
                        let mut results: Vec<(usize, Result<u64, OpError>)> = small
                            .iter()
                            .map(|(i, _)| *i)
                            .zip(push::put_batch(session.sftp(), data_dir, &items, stop))
                            .collect();
                        let mut broke = results.iter().any(|(_, r)| {
                            matches!(r, Err(OpError::Transport(_) | OpError::Aborted))
                        });
                        for (i, (path, e)) in big {
                            let result = if broke {
                                Err(OpError::Aborted)
                            } else {
                                put_file(session.sftp(), data_dir, path, e, stop)
                            };
                            broke |= matches!(result, Err(OpError::Transport(_)));
                            results.push((i, result));
                        }
                        for (i, result) in results {
                            if tx.send((n, i, result)).is_err() {
                                return;
                            }
                        }
                        if broke {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (n, i, result) in rx {
                match result {
                    Ok(bytes) => {
                        *done += 1;
                        confirm(index, status, &run[i], bytes, total - *done);
                        succeeded.push(i);
                    }
                    Err(OpError::Local(path, err)) => {
                        tracing::debug!(path = %sftp::show(&path), "skipped for now: {err}");
                        again.push(path);
                    }
                    Err(OpError::Refused(path, err)) => {
                        *done += 1;
                        refusals.push((path, err));
                    }
                    Err(OpError::Transport(err)) if n > 0 => {
                        // An extra session broke: the others carry on, its files are redone.
                        tracing::debug!("extra session lost: {err}");
                        broken.push(n - 1);
                        redo.push(i);
                    }
                    Err(OpError::Aborted) => redo.push(i),
                    Err(transport) => {
                        // The main session broke: everything waits for a reconnect.
                        stop_others(&next, run.len());
                        failure.get_or_insert(transport);
                    }
                }
            }
        });
        self.ask_again(again);
        for (path, err) in refusals {
            self.note_refused(path, &err);
        }
        if !self.refused.is_empty() {
            for i in succeeded {
                self.clear_refused(run[i].path());
            }
        }
        if let Some(err) = failure {
            self.helpers.clear();
            return Err(err);
        }
        broken.sort_unstable();
        broken.dedup();
        for n in broken.into_iter().rev() {
            self.helpers.remove(n);
        }
        for i in redo {
            // Told to stop: not one more file (a new worker may wait for this standby).
            if self.stop.load(Ordering::Relaxed) {
                self.replan_all = true;
                break;
            }
            if let Op::Put(path, e) = &run[i] {
                let Some(main) = self.standby.as_mut() else {
                    return Err(OpError::Transport(TransportError::NotPinned));
                };
                match put_file(main.sftp(), &self.settings.data_dir, path, e, &self.stop) {
                    Ok(bytes) => {
                        *done += 1;
                        confirm(&mut self.index, &self.status, &run[i], bytes, total - *done);
                    }
                    Err(OpError::Local(path, _)) => self.ask_again([path]),
                    Err(OpError::Refused(path, err)) => {
                        *done += 1;
                        self.note_refused(path, &err);
                    }
                    Err(OpError::Aborted) => self.replan_all = true,
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// Notes that the index changed and writes it if the schedule says so
    /// ([`schedule::index_save_interval`]). What a crash loses of it costs no
    /// re-upload, since the audit after a restart confirms files already
    /// there as they are.
    fn save_index(&mut self, changed: bool) {
        if self.settings.shared {
            return;
        }
        if changed {
            self.schedule.index_changed();
        }
        if self
            .schedule
            .index_save_due(Instant::now(), self.index.len())
        {
            self.flush_index();
        }
    }

    /// Tells the standby how far it is caught up (`position.json`), for a
    /// `promote` there to compare with the other standbys when this master
    /// is gone.
    fn tell_position_if_due(&mut self) {
        let due = self.caught_up_ms > self.caught_up_told
            && self
                .caught_up_told_at
                .is_none_or(|at| at.elapsed() >= POSITION_EVERY);
        // A worker told to stop writes nothing more (see `go_on`).
        if !due || self.go_on().is_err() {
            return;
        }
        let position = Position {
            master: self.settings.node.clone(),
            epoch: self.settings.live.epoch,
            through_ms: self.caught_up_ms,
        };
        let Some(standby) = self.standby.as_mut() else {
            return;
        };
        match write_control(standby.sftp(), POSITION_FILE, &position) {
            Ok(()) => {
                self.caught_up_told = position.through_ms;
                self.caught_up_told_at = Some(Instant::now());
                self.position_refused = false;
            }
            // Refused (a full disk): like a refused upload, said once and
            // the session kept; tried again a second later.
            Err(err) if err.is_refusal() => {
                self.caught_up_told_at = Some(Instant::now());
                if !std::mem::replace(&mut self.position_refused, true) {
                    tracing::warn!(standby = %self.settings.standby, "the standby refused to store how far it is caught up ({POSITION_FILE}); a promote there then compares with an older position: {err}");
                }
            }
            Err(err) => {
                self.failed(err.into());
            }
        }
    }

    /// Writes the index if it changed; only while this worker owns it (see
    /// [`Worker::own`]) and the daemon still waits for it (see
    /// [`SyncHandle::stop`]): the read lock is held until the file is in
    /// place, so once `stop` has given up no write of it is under way.
    fn flush_index(&mut self) {
        if self.settings.shared || self.owned.is_none() {
            return;
        }
        if !self.schedule.index_unsaved() {
            return;
        }
        let may_save = self.ownership.may_save.clone();
        let Ok(may) = may_save.read() else {
            return;
        };
        if !*may {
            tracing::debug!(standby = %self.settings.standby, "the daemon stopped waiting for this worker: its index is not written");
            return;
        }
        if let Err(err) = tree::save_index(&self.index_path, &self.index) {
            tracing::warn!(path = %self.index_path.display(), "cannot save the sync index: {err}");
        }
        self.schedule.index_saved(Instant::now());
    }

    /// Records a transport failure; returns when to retry (capped backoff),
    /// which the schedule also takes as the next round.
    fn failed(&mut self, err: TransportError) -> Instant {
        let needs_admin = err.needs_admin();
        let message = err.to_string();
        let was_connected = self.standby.take().is_some();
        self.helpers.clear();
        // What was planned and not done is planned again.
        self.replan_all = true;
        let first = self.said.as_deref() != Some(message.as_str());
        // Stopping is no failure to report.
        let stopping = matches!(err, TransportError::Stopped);
        // A connection that works but is refused for a reason only the admin
        // can fix is retried often; it is said once, not on every retry.
        if !stopping && (first || (was_connected && !needs_admin)) {
            self.said = Some(message.clone());
            if err.needs_admin() {
                tracing::error!(standby = %self.settings.standby, "{message}");
            } else {
                tracing::warn!(standby = %self.settings.standby, "{message}; retrying");
            }
        }
        self.set_status(|s| {
            if s.connected || s.last_error.is_none() {
                s.since = unix_now();
            }
            s.connected = false;
            s.last_error = Some(message);
        });
        self.schedule.failed(Instant::now(), needs_admin)
    }

    /// Brings back what the former master (now the standby) has and this host
    /// lacks, and keeps its side of every conflict as a copy here, as
    /// [`reconcile::plan`] says. A file written here since the promotion that
    /// the peer has with the same size and mtime second is compared byte by
    /// byte (two uploads in the same second look alike otherwise). Each
    /// action is logged with the user and the path, counted, and appended to
    /// the report in the state dir as it is done. Any failure stops the
    /// audit: nothing is mirrored over the peer until all of it is done.
    /// Returns the paths whose content differs although size and mtime agree:
    /// the index must not take them as confirmed.
    fn reconcile(&mut self, remote: &Tree) -> Result<HashSet<Vec<u8>>, TransportError> {
        let Some(mut baseline) = self.baseline.clone() else {
            return Ok(HashSet::new());
        };
        let node = self
            .peer_node
            .clone()
            .unwrap_or_else(|| self.settings.standby.host.clone());
        // What the former master wrote that its standby never confirmed is
        // changed there, whatever size and mtime say.
        let peer_changed = self.read_peer_changed()?;
        match &peer_changed {
            reconcile::Changed::All => {
                tracing::info!(standby = %self.settings.standby, "the former master {node} changed too many files to list: all of its files count as changed there");
                baseline.clear();
            }
            reconcile::Changed::These(paths) if !paths.is_empty() => {
                tracing::info!(
                    standby = %self.settings.standby,
                    "the former master {node} lists {} file(s) it wrote that never reached this host",
                    paths.len()
                );
                for path in paths {
                    baseline.remove(path);
                }
            }
            reconcile::Changed::These(_) => {}
        }
        let mut actions: Vec<reconcile::Action> =
            reconcile::plan(&self.current, remote, &baseline, &node)
                .into_iter()
                .filter(|a| {
                    let source = match a {
                        reconcile::Action::ConflictCopy { path, .. } => path,
                        other => other.target(),
                    };
                    !audit::host_local(source)
                })
                .collect();
        // Without a baseline (the union) every file both have alike would
        // be read whole: only those the former master listed as changed are.
        let suspects: Vec<(Vec<u8>, Entry)> =
            reconcile::same_second_suspects(&self.current, remote, &baseline)
                .into_iter()
                .filter(|(path, _)| !audit::host_local(path))
                .filter(|(path, _)| !self.union || peer_changed.contains(path))
                .collect();
        let endpoint = self.settings.standby.to_string();
        let failed = |message: String| TransportError::Reconcile {
            endpoint: endpoint.clone(),
            message,
        };
        let data_dir = self.settings.data_dir.clone();
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        let mut differing = HashSet::new();
        for (path, there) in suspects {
            let (local, _) = tree::open_file(&data_dir, &path)
                .map_err(|e| failed(format!("{}: {e}", sftp::show(&path))))?;
            let mut compare = SameBytes::new(local);
            standby
                .sftp()
                .download(&remote_path(&path), &mut compare)
                .map_err(|e| failed(e.to_string()))?;
            if !compare.same() {
                if let Some(copy) =
                    reconcile::conflict_copy_for(&path, &there, &node, &self.current, remote)
                {
                    actions.push(reconcile::Action::ConflictCopy {
                        path: path.clone(),
                        copy,
                        entry: there,
                    });
                }
                differing.insert(path);
            }
        }
        let report_path = self.settings.state_dir.join(RECONCILE_REPORT);
        let (mut back, mut conflicts) = (0u64, 0u64);
        for action in &actions {
            // Told to stop: the rest is done by the next worker's reconcile
            // (the baseline stays until one completes).
            if self.stop.load(Ordering::Relaxed) {
                return Err(TransportError::Stopped);
            }
            let (what, path, copy) = match action {
                reconcile::Action::MakeDir { path, entry } => {
                    reconcile::make_dir(&data_dir, path, entry)
                        .map_err(|e| failed(e.to_string()))?;
                    ("made_dir", path, None)
                }
                reconcile::Action::BringBack { path, entry } => {
                    reconcile::pull(standby.sftp(), &data_dir, path, path, entry, remote)
                        .map_err(|e| failed(e.to_string()))?;
                    back += 1;
                    tracing::warn!(
                        user = %sftp::show(user_of(path)),
                        path = %sftp::show(path),
                        "reconcile: {}: {} brought back from {node} (the former master): written there, it had never reached this host",
                        sftp::show(user_of(path)),
                        sftp::show(path)
                    );
                    ("brought_back", path, None)
                }
                reconcile::Action::ConflictCopy { path, copy, entry } => {
                    reconcile::pull(standby.sftp(), &data_dir, path, copy, entry, remote)
                        .map_err(|e| failed(e.to_string()))?;
                    conflicts += 1;
                    tracing::warn!(
                        user = %sftp::show(user_of(path)),
                        path = %sftp::show(path),
                        copy = %sftp::show(copy),
                        "reconcile: CONFLICT for {}: {} changed on both hosts; this host's version stays, the one from {node} (the former master) is kept beside it as {}",
                        sftp::show(user_of(path)),
                        sftp::show(path),
                        sftp::show(copy)
                    );
                    if is_users_yaml(path) {
                        crate::accounts::note_status(
                            &data_dir,
                            crate::accounts::Note::Conflict,
                            Some(&format!(
                                "the former master {node} had another users.yaml; this one stays in force, the other is kept as {}",
                                sftp::show(copy)
                            )),
                        );
                    }
                    ("conflict_copy", path, Some(copy))
                }
            };
            // Recorded as soon as done: a failure later must not hide it.
            let line = serde_json::json!({
                "at": unix_now(),
                "peer": node,
                "epoch": self.settings.live.epoch,
                "action": what,
                "user": sftp::show(user_of(path)),
                "path": sftp::show(path),
                "copy": copy.map(|c| sftp::show(c)),
            });
            append_line(&report_path, &line.to_string());
            if let Ok(mut s) = self.status.lock() {
                s.brought_back += u64::from(what == "brought_back");
                s.conflicts += u64::from(what == "conflict_copy");
                s.last_reconcile = Some(unix_now());
            }
        }
        if !actions.is_empty() {
            // What was brought in is part of this host's tree now.
            // The rest of the audit compares with it: walked here, at once
            // (rare), and the local side walks too for every standby.
            let (tree, _) = tree::rescan(&data_dir, &self.current, &mut |_| {})
                .map_err(|e| failed(format!("cannot walk the data dir again: {e}")))?;
            self.current = Arc::new(tree);
            // Until a walk that began after these files came in is posted,
            // an older one (under way now) would look as if they were
            // deleted here, and mirror that to the standby they came from.
            self.reconcile_walk = Some(self.ask_walk());
        }
        tracing::info!(
            standby = %endpoint,
            "reconcile with the former master {node}: {back} file(s) brought back, {conflicts} conflict copie(s) kept"
        );
        self.set_status(|s| s.last_reconcile = Some(unix_now()));
        Ok(differing)
    }

    /// The former master's list of files its standby never confirmed
    /// ([`crate::layout::CHANGED_FILE`]); none: an empty list.
    fn read_peer_changed(&mut self) -> Result<reconcile::Changed, TransportError> {
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        let path = remote_path(&tree::join(
            CONTROL_DIR.as_bytes(),
            crate::layout::CHANGED_FILE.as_bytes(),
        ));
        match standby
            .sftp()
            .read_all(&path, reconcile::CHANGED_LIST_MAX as u64 + 16)
        {
            Ok(bytes) => Ok(reconcile::parse_changed_list(&String::from_utf8_lossy(
                &bytes,
            ))),
            Err(e) if e.is_no_such_file() => Ok(reconcile::Changed::These(HashSet::new())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the peer's role and judges it ([`crate::role::judge_peer`]):
    /// replicate, hand over, wait, or step down.
    fn check_peer(&mut self) -> Result<(), TransportError> {
        let endpoint = self.settings.standby.to_string();
        let Some(standby) = self.standby.as_mut() else {
            return Err(TransportError::NotPinned);
        };
        self.schedule.peer_checked(Instant::now());
        let path = remote_path(&join(CONTROL_DIR.as_bytes(), ROLE_FILE.as_bytes()));
        let peer = match standby.sftp().read_all(&path, 64 * 1024) {
            Ok(bytes) => serde_json::from_slice::<Published>(&bytes).map_err(|e| {
                TransportError::BadPeerRole {
                    endpoint: endpoint.clone(),
                    message: e.to_string(),
                }
            })?,
            // A peer that has published nothing yet (just installed, or
            // upgraded from a version without roles): a standby that knows
            // no epoch; whether it takes writes is probed before anything is sent.
            Err(e) if e.is_no_such_file() => Published {
                node: String::from("(unnamed)"),
                role: Role::Standby,
                epoch: 0,
                wants_master: false,
                users: None,
                unreconciled: None,
                // Not known yet: taken as this host's (a mismatch shows once it publishes).
                shared: self.settings.shared,
            },
            Err(e) => return Err(e.into()),
        };
        if let Some(reason) = crate::role::storage_mismatch(self.settings.shared, &peer) {
            return Err(TransportError::PeerRole { endpoint, reason });
        }
        if peer.node == self.settings.node {
            return Err(TransportError::PeerRole {
                endpoint,
                reason: format!(
                    "it has this host's own node name `{}`; fix: give the two hosts different host names",
                    peer.node
                ),
            });
        }
        self.peer_unreconciled = peer.unreconciled;
        self.peer_node = Some(peer.node.clone());
        let verdict = crate::role::judge_peer(&self.settings.live, &self.settings.node, &peer);
        let mut control = self.control.lock().map_err(|_| TransportError::NotPinned)?;
        // The daemon's peer (status, `promote`/`demote`) is the first standby.
        let offer = if self.position == 0 {
            control.peer = Some(peer);
            std::mem::take(&mut control.offer)
        } else {
            false
        };
        drop(control);
        if offer && matches!(verdict, PeerVerdict::Replicate | PeerVerdict::HandOver) {
            let mut claim = self.settings.claim(None, None);
            claim.offer = true;
            if let Some(standby) = self.standby.as_mut() {
                write_claim(standby.sftp(), &claim)?;
                tracing::info!(standby = %endpoint, "offered the role to the standby (sftp-ha demote)");
            }
        }
        // Shared storage: a former master that stepped down while connected
        // is answered as reconciled at once (nothing to compare).
        if self.settings.shared
            && self.peer_unreconciled.is_some()
            && self.peer_unreconciled != self.reconciled_told
            && matches!(verdict, PeerVerdict::Replicate | PeerVerdict::HandOver)
        {
            self.claim_shared()?;
        }
        let mut control = self.control.lock().map_err(|_| TransportError::NotPinned)?;
        match verdict {
            PeerVerdict::Replicate => Ok(()),
            PeerVerdict::HandOver => {
                if !control.handover_asked {
                    tracing::info!(standby = %endpoint, "the standby asks to become master (sftp-ha promote): handing over");
                }
                control.handover_asked = true;
                // A request being handled stays with the standby that made it.
                if !control.hand_over {
                    control.handover_link = Some(self.position);
                }
                Ok(())
            }
            PeerVerdict::StepDown { epoch, reason } => {
                control.step_down = Some((epoch, reason.clone()));
                // Every worker stops sending, not only this one: a transfer
                // to another standby ends at its next batch.
                self.stop.store(true, Ordering::Relaxed);
                Err(TransportError::SteppedDown { reason })
            }
            PeerVerdict::Wait { reason } => Err(TransportError::PeerRole { endpoint, reason }),
        }
    }

    fn handing_over(&self) -> bool {
        self.control.lock().is_ok_and(|c| {
            c.hand_over && c.handed_over.is_none() && c.handover_link.unwrap_or(0) == self.position
        })
    }

    fn stepped_down(&self) -> bool {
        self.control
            .lock()
            .is_ok_and(|c| c.step_down.is_some() || c.handed_over.is_some())
    }

    /// The daemon has stopped users writing here: sends what is left (a full
    /// walk, so nothing a last event missed stays behind), then writes the
    /// handover. Tells the schedule when to try again if something is still pending.
    fn hand_over(&mut self) {
        if self.settings.shared {
            // Nothing to send: the peer has the same files. But a user's
            // session the fence signalled may still be writing into them.
            if !self.writers_gone() {
                self.schedule.handover_pending(Instant::now());
                return;
            }
            self.claim_round();
        } else {
            let walk = match self.handover_walk {
                Some(walk) => walk,
                None => *self.handover_walk.insert(self.ask_walk()),
            };
            self.take_update(Duration::ZERO);
            if self.served < walk {
                self.schedule.handover_pending(Instant::now());
                return;
            }
            self.round();
        }
        if self.schedule.round_planned() {
            return;
        }
        let pending = self.status.lock().map_or(1, |s| s.pending);
        let asked = self
            .asked
            .lock()
            .map_or(true, |a| !a.paths.is_empty() || a.rescan_all);
        if pending > 0 || asked {
            self.schedule.handover_pending(Instant::now());
            return;
        }
        // From here on the daemon waits for the outcome instead of calling
        // the handover off: the standby may take over as soon as it is written.
        // Told to stop meanwhile: the daemon no longer waits for this one.
        let go = !self.stop.load(Ordering::Relaxed)
            && self.control.lock().is_ok_and(|mut c| {
                c.writing_handover = c.hand_over;
                c.hand_over
            });
        if !go {
            return;
        }
        let to = self.settings.live.epoch + 1;
        let claim = self.settings.claim(Some(to), None);
        let written = match self.standby.as_mut() {
            Some(standby) => write_claim(standby.sftp(), &claim).map_err(TransportError::from),
            None => Err(TransportError::NotPinned),
        };
        match written {
            Ok(()) => {
                self.flush_index();
                tracing::info!(standby = %self.settings.standby, "every change sent; handed the role over at epoch {to}");
                if let Ok(mut c) = self.control.lock() {
                    c.handed_over = Some(to);
                }
                // The other standbys' workers stop too: this host is no
                // longer their master.
                self.stop.store(true, Ordering::Relaxed);
            }
            Err(err) => {
                if let Ok(mut c) = self.control.lock() {
                    c.writing_handover = false;
                }
                self.failed(err);
            }
        }
    }

    /// With shared storage: true once no managed user's session process of
    /// the connections fenced for the handover is left; SIGKILLs those still
    /// there [`WRITERS_KILL_AFTER`] after the handover began to wait.
    fn writers_gone(&mut self) -> bool {
        let since = *self.writers_since.get_or_insert_with(Instant::now);
        let fenced = self
            .control
            .lock()
            .map(|c| c.fenced.clone())
            .unwrap_or_default();
        let left = (self.writers)(&fenced, false);
        let verdict = judge_writers(left.len(), since.elapsed());
        let left = match verdict {
            Writers::Gone => {
                if self.writers_said > 0 {
                    tracing::info!(
                        "the users' session processes are gone after {} ms; handing over",
                        since.elapsed().as_millis()
                    );
                }
                0
            }
            Writers::Wait => left.len(),
            Writers::Kill => {
                let killed = (self.writers)(&fenced, true);
                if killed.len() != self.writers_said {
                    tracing::warn!(
                        "{} user session process(es) still there {} s after the fence (pids {killed:?}): sent SIGKILL; the handover waits until they are gone, since one may still be writing into the shared data dir",
                        killed.len(),
                        since.elapsed().as_secs()
                    );
                    self.writers_said = killed.len();
                }
                killed.len().max(1)
            }
        };
        if let Ok(mut c) = self.control.lock() {
            c.writers_left = left;
        }
        verdict == Writers::Gone
    }

    fn execute(&mut self, op: &Op) -> Result<u64, OpError> {
        if let Op::Put(path, e) = op {
            if e.size >= push::STRIPED_MIN {
                return self.put_striped(path, e);
            }
        }
        let Some(standby) = self.standby.as_mut() else {
            return Err(OpError::Transport(TransportError::NotPinned));
        };
        push::execute(standby.sftp(), &self.settings.data_dir, op, &self.stop)
    }

    /// A big file over all sessions at once ([`push::put_striped`]); the
    /// extra sessions that broke are dropped (opened again before the next).
    fn put_striped(&mut self, path: &[u8], e: &Entry) -> Result<u64, OpError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(OpError::Aborted);
        }
        self.open_helpers();
        let Some(standby) = self.standby.as_mut() else {
            return Err(OpError::Transport(TransportError::NotPinned));
        };
        let (result, broken) = push::put_striped(
            standby,
            &mut self.helpers,
            &self.settings.data_dir,
            path,
            e,
            &self.stop,
        );
        for n in broken.into_iter().rev() {
            self.helpers.remove(n);
        }
        result
    }

    fn set_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// Makes the remaining workers of a parallel run find nothing left to do.
fn stop_others(next: &std::sync::atomic::AtomicUsize, len: usize) {
    next.store(len, Ordering::Relaxed);
}

/// Records an operation the standby confirmed, in the index and the status.
fn confirm(index: &mut Tree, status: &Mutex<SyncStatus>, op: &Op, bytes: u64, pending: usize) {
    match op {
        Op::Delete(path, _) => {
            index.remove(path);
        }
        Op::Mkdir(path, e) | Op::Put(path, e) | Op::SetAttrs(path, e) => {
            index.insert(path.clone(), *e);
        }
        Op::Rename { from, to } => tree::rekey(index, from, to),
    }
    let lag = match op {
        Op::Put(path, e) => {
            tracing::debug!(path = %sftp::show(path), bytes = e.size, "synced");
            Some(lag_ms(e))
        }
        _ => None,
    };
    if let Ok(mut s) = status.lock() {
        s.pending = pending;
        s.files_synced += u64::from(matches!(op, Op::Put(..)));
        s.bytes_synced += bytes;
        s.last_sync = Some(unix_now());
        if lag.is_some() {
            s.last_lag_ms = lag;
        }
    }
}

/// Milliseconds from a file's modification on the master until now.
fn lag_ms(e: &Entry) -> u64 {
    let modified = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(e.mtime).unwrap_or(0),
            u32::try_from(e.mtime_nsec).unwrap_or(0),
        );
    std::time::SystemTime::now()
        .duration_since(modified)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The claim in the peer's control folder, if any: whose replication it
/// takes. One that cannot be read as a claim counts as none.
fn read_claim(
    sftp: &mut sftp::SftpClient<impl std::io::Read + std::io::Write>,
) -> Result<Option<Claim>, sftp::SftpError> {
    let path = remote_path(&join(CONTROL_DIR.as_bytes(), CLAIM_FILE.as_bytes()));
    match sftp.read_all(&path, 64 * 1024) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.is_no_such_file() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a claim into the peer's control folder.
fn write_claim(
    sftp: &mut sftp::SftpClient<impl std::io::Read + std::io::Write>,
    claim: &Claim,
) -> Result<(), sftp::SftpError> {
    write_control(sftp, CLAIM_FILE, claim)
}

/// Writes `value` as the file `name` into the peer's control folder: a fresh
/// temporary there, then renamed over the last one, so the peer never reads
/// half of one.
fn write_control(
    sftp: &mut sftp::SftpClient<impl std::io::Read + std::io::Write>,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<(), sftp::SftpError> {
    let dir = remote_path(CONTROL_DIR.as_bytes());
    if sftp.lstat(&dir)?.is_none() {
        sftp.mkdir(
            &dir,
            sftp::Attrs {
                mode: Some(0o700),
                ..sftp::Attrs::default()
            },
        )?;
    }
    let text = serde_json::to_vec(value).unwrap_or_default();
    let temp = join(&dir, format!("{name}.{}", std::process::id()).as_bytes());
    // Left over from a crash of this same process id: replaced.
    let _ = sftp.remove(&temp);
    let handle = sftp.create(&temp, sftp::Attrs::default())?;
    sftp.write_from(&handle, &mut text.as_slice())?;
    sftp.close(&handle)?;
    sftp.posix_rename(&temp, &join(&dir, name.as_bytes()))
}

/// Appends one line to a report file (created 0600 by root if missing).
fn append_line(path: &std::path::Path, line: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(err) = appended {
        tracing::error!(path = %path.display(), "cannot write the reconciliation report: {err}");
    }
}

/// A writer that compares what is written with a local file's bytes.
struct SameBytes<R> {
    local: R,
    same: bool,
    buf: Vec<u8>,
}

impl<R: std::io::Read> SameBytes<R> {
    fn new(local: R) -> SameBytes<R> {
        SameBytes {
            local,
            same: true,
            buf: Vec::new(),
        }
    }

    /// True if every byte written matched, and the local file has no more.
    fn same(mut self) -> bool {
        let mut one = [0u8; 1];
        self.same && matches!(self.local.read(&mut one), Ok(0))
    }
}

impl<R: std::io::Read> std::io::Write for SameBytes<R> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.same {
            self.buf.resize(data.len(), 0);
            self.same = self.local.read_exact(&mut self.buf).is_ok() && self.buf == data;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An admin's users.yaml: `<user>/admin/users.yaml`.
fn is_users_yaml(path: &[u8]) -> bool {
    let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    matches!(parts.as_slice(), [_, admin, name] if *admin == b"admin" && *name == crate::accounts::USERS_FILE.as_bytes())
}

/// The user a path belongs to: its first component.
fn user_of(path: &[u8]) -> &[u8] {
    path.split(|b| *b == b'/').next().unwrap_or_default()
}

/// For callers that need the sync settings from a config.
pub fn settings(config: &crate::config::Config) -> Option<SyncSettings> {
    Some(SyncSettings {
        data_dir: config.data_dir.clone(),
        state_dir: config.state_dir.clone(),
        standby: config.sync.standbys.first()?.clone(),
        others: config.sync.standbys.iter().skip(1).cloned().collect(),
        node: crate::role::node_name(),
        live: crate::role::Live::first(Role::Master, 0),
        fallback_interval: config.sync.fallback_interval,
        delete: config.sync.delete,
        audit_interval: config.sync.audit_interval,
        shared: config.shared(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_never_reached_counts_as_having_confirmed_nothing() {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join("u")).unwrap();
        std::fs::write(data.path().join("u/a"), b"alpha").unwrap();
        std::fs::write(data.path().join("u/b"), b"beta").unwrap();
        let (current, _) = tree::scan(data.path(), &mut |_| {}).unwrap();
        let endpoint = |host: &str| Endpoint {
            host: host.into(),
            port: 22,
        };
        let standbys = [endpoint("s1"), endpoint("s2")];
        let index = |position: usize| state.path().join(index_file(position, &standbys[position]));
        let everything = vec![b"u/a".to_vec(), b"u/b".to_vec()];

        // The first confirmed everything; the second was never reached
        // since the promotion: it has no index, and nothing is safe there.
        tree::save_index(&index(0), &current).unwrap();
        assert_eq!(
            unconfirmed_by_any(state.path(), &standbys, &current),
            everything
        );
        // Once it confirmed what the first has but one file, that one.
        let mut confirmed = current.clone();
        confirmed.remove(b"u/b");
        tree::save_index(&index(1), &confirmed).unwrap();
        assert_eq!(
            unconfirmed_by_any(state.path(), &standbys, &current),
            vec![b"u/b".to_vec()]
        );
        tree::save_index(&index(1), &current).unwrap();
        assert!(unconfirmed_by_any(state.path(), &standbys, &current).is_empty());
        // No standby listed and no index: nothing was confirmed anywhere.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(unconfirmed_by_any(empty.path(), &[], &current), everything);
    }

    #[test]
    fn same_bytes_tells_equal_content_from_other_bytes_and_lengths() {
        use std::io::Write as _;
        let check = |local: &[u8], chunks: &[&[u8]]| {
            let mut c = SameBytes::new(local);
            for chunk in chunks {
                c.write_all(chunk).unwrap();
            }
            c.same()
        };
        assert!(check(b"abcdef", &[b"abc", b"def"]));
        assert!(check(b"", &[]));
        assert!(!check(b"abcdef", &[b"abc", b"deX"]));
        assert!(!check(b"abcdef", &[b"abc"]));
        assert!(!check(b"abc", &[b"abc", b"d"]));
    }

    /// Rounds of the real worker against an in-memory standby
    /// ([`sftp::fake::FakeFs`]): the master's data dir is a temporary folder.
    mod rounds {
        use super::super::*;
        use crate::sync::sftp::fake::{FakeFs, FakeStream, Node};
        use crate::sync::sftp::{SftpClient, SftpError};
        use std::os::unix::fs::PermissionsExt as _;
        use std::path::Path;

        struct FakeSession {
            sftp: SftpClient<FakeStream>,
        }

        impl Session for FakeSession {
            type Stream = FakeStream;

            fn sftp(&mut self) -> &mut SftpClient<FakeStream> {
                &mut self.sftp
            }

            fn keepalive(&self) -> Result<(), TransportError> {
                Ok(())
            }
        }

        /// Every session it opens is one more stream to the same file system,
        /// tagged `tag` (see [`FakeFs::by`]).
        struct FakeConnector {
            fs: Arc<Mutex<FakeFs>>,
            opened: Arc<std::sync::atomic::AtomicUsize>,
            tag: u8,
            /// The "pinned" host key of the standby.
            host_key: Option<String>,
        }

        impl Connector for FakeConnector {
            type Session = FakeSession;

            fn open(&self) -> Result<FakeSession, TransportError> {
                if self.fs.lock().unwrap().cut_off {
                    return Err(TransportError::Sftp(SftpError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "cut off",
                    ))));
                }
                self.opened.fetch_add(1, Ordering::Relaxed);
                let sftp = SftpClient::new(FakeStream::tagged(self.fs.clone(), self.tag))
                    .map_err(|e: SftpError| TransportError::Sftp(e))?;
                Ok(FakeSession { sftp })
            }

            fn host_key(&self) -> Option<String> {
                self.host_key.clone()
            }
        }

        /// The master's side and its first standby's worker (`fs`,
        /// `worker`), and the workers of more standbys in `more`, driven by
        /// hand, one step at a time, as their threads would.
        struct Bed {
            data: tempfile::TempDir,
            _state: tempfile::TempDir,
            fs: Arc<Mutex<FakeFs>>,
            local: Local,
            worker: Worker<FakeConnector>,
            more: Vec<(Arc<Mutex<FakeFs>>, Worker<FakeConnector>)>,
        }

        impl Bed {
            /// A look of the local side, then a round of every worker.
            fn round(&mut self) {
                self.local.pass();
                self.worker.round();
                for (_, w) in &mut self.more {
                    w.round();
                }
            }
        }

        /// Long ago: no file is taken as still being written.
        const OLD: u64 = 1_600_000_000;

        fn settings(data: &Path, state: &Path, standbys: usize) -> SyncSettings {
            let endpoint = |n: usize| Endpoint {
                host: if n == 0 {
                    "standby.test".into()
                } else {
                    format!("standby{n}.test")
                },
                port: 22,
            };
            SyncSettings {
                data_dir: data.to_path_buf(),
                state_dir: state.to_path_buf(),
                standby: endpoint(0),
                others: (1..standbys).map(endpoint).collect(),
                node: "alpha".into(),
                live: Live::first(Role::Master, 0),
                fallback_interval: Duration::from_secs(3600),
                delete: true,
                audit_interval: Duration::from_secs(3600),
                shared: false,
            }
        }

        fn connector(fs: &Arc<Mutex<FakeFs>>) -> FakeConnector {
            tagged(fs, 0, None)
        }

        /// A connector whose changes are recorded with `tag`, to a standby
        /// with this host key.
        fn tagged(fs: &Arc<Mutex<FakeFs>>, tag: u8, host_key: Option<&str>) -> FakeConnector {
            FakeConnector {
                fs: fs.clone(),
                opened: Default::default(),
                tag,
                host_key: host_key.map(String::from),
            }
        }

        fn bed(standby: FakeFs) -> Bed {
            beds(vec![standby])
        }

        /// One standby, on shared storage or not.
        fn bed_with(standby: FakeFs, shared: bool) -> Bed {
            beds_with(vec![standby], shared, |_, _| {})
        }

        /// A bed with a standby for each file system, the first first.
        fn beds(standbys: Vec<FakeFs>) -> Bed {
            beds_after(standbys, |_, _| {})
        }

        /// [`beds`], with the data and state dirs prepared first (a
        /// baseline, files on the master) by `prepare`.
        fn beds_after(standbys: Vec<FakeFs>, prepare: impl FnOnce(&Path, &Path)) -> Bed {
            beds_with(standbys, false, prepare)
        }

        fn beds_with(
            standbys: Vec<FakeFs>,
            shared: bool,
            prepare: impl FnOnce(&Path, &Path),
        ) -> Bed {
            let data = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            prepare(data.path(), state.path());
            let fss: Vec<_> = standbys
                .into_iter()
                .map(|fs| Arc::new(Mutex::new(fs)))
                .collect();
            let mut settings = settings(data.path(), state.path(), fss.len());
            settings.shared = shared;
            let (local, workers) = assemble(
                settings,
                fss.iter().map(connector).collect(),
                &Arc::default(),
            )
            .unwrap();
            let mut pairs = fss.into_iter().zip(workers);
            let (fs, worker) = pairs.next().unwrap();
            Bed {
                data,
                _state: state,
                fs,
                local,
                worker,
                more: pairs.collect(),
            }
        }

        /// A file on the master with its owner, mode and an old mtime.
        fn put(root: &Path, rel: &str, data: &[u8], mode: u32, mtime: u64) {
            let path = root.join(rel);
            std::fs::write(&path, data).unwrap();
            std::os::unix::fs::chown(&path, Some(1000), Some(1001)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))
                .unwrap();
        }

        fn mkdir(root: &Path, rel: &str, mode: u32) {
            let path = root.join(rel);
            std::fs::create_dir(&path).unwrap();
            std::os::unix::fs::chown(&path, Some(1000), Some(1001)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn node(fs: &Arc<Mutex<FakeFs>>, path: &str) -> Option<Node> {
            fs.lock().unwrap().nodes.get(path.as_bytes()).cloned()
        }

        /// Files left in the standby's folder of temporaries.
        fn temporaries(fs: &Arc<Mutex<FakeFs>>) -> Vec<String> {
            let fs = fs.lock().unwrap();
            // Files only: the sessions' folders of temporaries stay.
            fs.nodes
                .iter()
                .filter(|(k, n)| k.starts_with(b"/.sftp-ha-tmp/") && n.mode & 0o170000 != 0o040000)
                .map(|(k, _)| sftp::show(k))
                .collect()
        }

        #[test]
        fn a_first_round_ships_folders_and_files_with_their_attributes() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            mkdir(&root, "u/sub", 0o1770);
            put(&root, "u/a", b"alpha", 0o640, OLD);
            put(&root, "u/sub/b", &vec![7u8; 300_000], 0o600, OLD + 1);
            b.round();

            let status = b.worker.status.lock().unwrap().clone();
            assert!(status.connected, "{status:?}");
            assert_eq!(status.last_error, None);
            assert_eq!(status.files_synced, 2);
            assert_eq!(status.pending, 0);
            let u = node(&b.fs, "/u").expect("the folder is there");
            assert_eq!((u.mode, u.uid, u.gid), (0o040750, 1000, 1001));
            let sub = node(&b.fs, "/u/sub").unwrap();
            assert_eq!((sub.mode, sub.uid, sub.gid), (0o041770, 1000, 1001));
            let a = node(&b.fs, "/u/a").expect("the file is there");
            assert_eq!(a.data, b"alpha");
            assert_eq!((a.mode, a.uid, a.gid), (0o100640, 1000, 1001));
            assert_eq!(u64::from(a.mtime), OLD);
            let big = node(&b.fs, "/u/sub/b").unwrap();
            assert_eq!(big.data, vec![7u8; 300_000]);
            assert_eq!((big.mode, u64::from(big.mtime)), (0o100600, OLD + 1));
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
            // The standby learnt whose replication it takes.
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").expect("a claim");
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!((claim.node.as_str(), claim.epoch), ("alpha", 1));
            // Confirmed: the index has them.
            assert!(b.worker.index.contains_key(b"u/sub/b".as_slice()));
            assert!(!b.worker.schedule.round_planned());

            // Nothing changed: the next round sends nothing.
            b.fs.lock().unwrap().changes.clear();
            b.local.rescan_all = true;
            b.round();
            assert_eq!(b.fs.lock().unwrap().changes, Vec::new());
            // After the walk the index is the master's tree: held once.
            assert!(tree::held_once(&b.local.current, &b.worker.index));
            assert_eq!(b.worker.index.len(), 4);
        }

        /// The position a standby was told, if any.
        fn told_position(fs: &Arc<Mutex<FakeFs>>) -> Option<Position> {
            node(fs, "/.sftp-ha-ctl/position.json")
                .map(|n| serde_json::from_slice(&n.data).unwrap())
        }

        #[test]
        fn each_standby_is_told_how_far_it_is_caught_up_and_a_cut_off_one_is_not_moved_on() {
            let mut b = beds(vec![FakeFs::default(), FakeFs::default()]);
            let root = b.data.path().to_path_buf();
            put(&root, "a", b"a", 0o640, OLD);
            let before = crate::timefmt::unix_now_ms();
            b.round();
            b.worker.tell_position_if_due();
            b.more[0].1.tell_position_if_due();
            let first = told_position(&b.fs).expect("the first standby was told");
            assert_eq!((first.master.as_str(), first.epoch), ("alpha", 1));
            assert!(first.through_ms >= before, "{first:?}");
            assert_eq!(told_position(&b.more[0].0), Some(first.clone()));

            // The second standby is cut off; a new file reaches the first only.
            b.more[0].0.lock().unwrap().cut_off = true;
            put(&root, "b", b"b", 0o640, OLD);
            std::thread::sleep(Duration::from_millis(5));
            b.round();
            // Not told again within POSITION_EVERY: one write a second at most.
            b.worker.tell_position_if_due();
            assert_eq!(told_position(&b.fs), Some(first.clone()));
            b.worker.caught_up_told_at = Some(Instant::now() - POSITION_EVERY);
            b.more[0].1.caught_up_told_at = Some(Instant::now() - POSITION_EVERY);
            b.worker.tell_position_if_due();
            b.more[0].1.tell_position_if_due();
            let second = told_position(&b.fs).unwrap();
            assert!(second.through_ms > first.through_ms, "{second:?} {first:?}");
            // The cut-off one keeps what it had: it is behind the first.
            b.more[0].0.lock().unwrap().cut_off = false;
            assert_eq!(told_position(&b.more[0].0), Some(first));
        }

        /// Lets the worker tell its standby at once (as a second later).
        fn tell_now(w: &mut Worker<FakeConnector>) {
            w.caught_up_told_at = None;
            w.tell_position_if_due();
        }

        /// An upload the standby refuses (a full disk, a permission, a name
        /// its file system cannot hold) is skipped "until the next full scan";
        /// the round returns no retry, and the position moved past it: the
        /// standby claims everything of a look that had a file it lacks, and
        /// every later round scoped to other paths moves it further.
        #[test]
        fn a_refused_upload_is_not_counted_as_caught_up() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            put(&root, "a", b"a", 0o640, OLD);
            b.round();
            tell_now(&mut b.worker);
            assert!(told_position(&b.fs).is_some());

            // The standby refuses changes for one round.
            b.fs.lock().unwrap().read_only = true;
            put(&root, "b", b"b", 0o640, OLD);
            std::thread::sleep(Duration::from_millis(5));
            let b_looked = crate::timefmt::unix_now_ms();
            b.local.rescan_all = true;
            b.round();
            assert_eq!(b.worker.refused.len(), 1, "{:?}", b.worker.refused);
            b.fs.lock().unwrap().read_only = false;
            std::thread::sleep(Duration::from_millis(5));

            // A later upload, sent by a round scoped to it alone.
            put(&root, "c", b"c", 0o640, OLD);
            b.local.dirty.insert(b"c".to_vec());
            b.round();
            assert!(node(&b.fs, "/c").is_some());
            tell_now(&mut b.worker);

            assert!(node(&b.fs, "/b").is_none(), "b never reached the standby");
            let told = told_position(&b.fs).unwrap();
            assert!(
                told.through_ms < b_looked,
                "the standby lacks b, yet is told it has everything the master had at {} (b was there from {b_looked})",
                told.through_ms
            );
        }

        /// A standby that refuses writes (a full disk) has its refused
        /// uploads skipped and "the session is kept" (README). The position
        /// write it refuses too drops the session instead: every new look
        /// then costs a reconnect and a full audit listing of the standby.
        #[test]
        fn a_refused_position_write_keeps_the_session_like_a_refused_upload() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            put(&root, "a", b"a", 0o640, OLD);
            b.round();
            tell_now(&mut b.worker);
            b.fs.lock().unwrap().read_only = true;
            put(&root, "b", b"b", 0o640, OLD);
            std::thread::sleep(Duration::from_millis(5));
            b.local.rescan_all = true;
            b.round();
            assert_eq!(b.worker.refused.len(), 1);
            assert!(
                b.worker.standby.is_some(),
                "a refused upload keeps the session"
            );
            tell_now(&mut b.worker);
            assert!(
                b.worker.standby.is_some(),
                "a refused position write dropped the session: {:?}",
                b.worker.status.lock().unwrap().last_error
            );
        }

        #[test]
        fn folders_beyond_the_watch_limit_are_replicated_by_the_fallback_walk() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            for dir in ["a", "b", "c"] {
                mkdir(&root, dir, 0o750);
            }
            // Room for the data dir and one folder, as if max_user_watches
            // were nearly used up by other programs.
            b.local.watcher.cap = Some(2);
            b.round();
            let watches = b.worker.status.lock().unwrap().watches.unwrap();
            assert_eq!((watches.folders, watches.watched), (4, 2), "{watches:?}");
            assert!(watches.short());
            let words = watches.words("1m40s");
            assert!(
                words.contains("LIMIT REACHED: 2 of 4 folders watched"),
                "{words}"
            );
            assert!(
                words.contains("every 1m40s") && words.contains("sysctl -w"),
                "{words}"
            );

            // A file in a folder without a watch: no event, so nothing goes...
            let unwatched = ["a", "b", "c"]
                .into_iter()
                .find(|d| !b.local.watcher.is_watched(d.as_bytes()))
                .unwrap();
            put(&root, &format!("{unwatched}/f"), b"data", 0o640, OLD);
            b.local.wait_for_events(Duration::from_millis(200));
            b.round();
            assert_eq!(node(&b.fs, &format!("/{unwatched}/f")), None);
            // ...until the fallback walk finds it.
            b.local.rescan_all = true;
            b.round();
            assert_eq!(
                node(&b.fs, &format!("/{unwatched}/f")).unwrap().data,
                b"data"
            );

            // The limit raised: the next walk watches every folder again.
            b.local.watcher.cap = None;
            b.local.rescan_all = true;
            b.round();
            let watches = b.worker.status.lock().unwrap().watches.unwrap();
            assert_eq!((watches.folders, watches.watched), (4, 4));
            assert!(!watches.short());
        }

        #[test]
        fn a_changed_file_is_sent_again_and_a_deleted_one_deleted() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/keep", b"same", 0o640, OLD);
            put(&root, "u/change", b"old content", 0o640, OLD);
            put(&root, "u/gone", b"bye", 0o640, OLD);
            mkdir(&root, "u/gone-dir", 0o750);
            b.round();
            assert!(node(&b.fs, "/u/gone").is_some());
            assert!(node(&b.fs, "/u/gone-dir").is_some());

            put(&root, "u/change", b"new, longer content", 0o604, OLD + 10);
            std::fs::remove_file(root.join("u/gone")).unwrap();
            std::fs::remove_dir(root.join("u/gone-dir")).unwrap();
            b.fs.lock().unwrap().changes.clear();
            // As the thread does: the events name what to look at.
            assert!(b.local.wait_for_events(Duration::from_secs(1)));
            assert!(!b.local.rescan_all, "events, not a walk");
            b.round();

            let changed = node(&b.fs, "/u/change").unwrap();
            assert_eq!(changed.data, b"new, longer content");
            assert_eq!(
                (changed.mode, u64::from(changed.mtime)),
                (0o100604, OLD + 10)
            );
            assert_eq!(node(&b.fs, "/u/gone"), None);
            assert_eq!(node(&b.fs, "/u/gone-dir"), None);
            assert_eq!(node(&b.fs, "/u/keep").unwrap().data, b"same");
            let changes = b.fs.lock().unwrap().changes.clone();
            assert!(
                !changes.iter().any(|(_, p)| p == b"/u/keep"),
                "an unchanged file is left alone: {changes:?}"
            );
            assert!(!b.worker.index.contains_key(b"u/gone".as_slice()));
            assert_eq!(
                b.worker.status.lock().unwrap().files_synced,
                4,
                "three, then the changed one"
            );
        }

        #[test]
        fn a_run_of_uploads_is_shared_by_several_sessions() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            for i in 0..40 {
                put(
                    &root,
                    &format!("u/f{i}"),
                    format!("file {i}").as_bytes(),
                    0o640,
                    OLD,
                );
            }
            b.round();
            assert_eq!(
                b.worker.connector.opened.load(Ordering::Relaxed),
                SESSIONS,
                "the main session and its helpers"
            );
            for i in 0..40 {
                let f = node(&b.fs, &format!("/u/f{i}")).unwrap();
                assert_eq!(f.data, format!("file {i}").as_bytes());
                assert_eq!((f.mode, f.uid), (0o100640, 1000));
            }
            assert_eq!(b.worker.status.lock().unwrap().files_synced, 40);
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
        }

        /// A big file's bytes: no stripe looks like another.
        fn big_content() -> Vec<u8> {
            let size = push::STRIPED_MIN + push::STRIPE + 12_345;
            (0..size)
                .map(|i| (i ^ (i >> 11) ^ (i >> 19)) as u8)
                .collect()
        }

        #[test]
        fn a_big_file_goes_over_every_session_in_stripes() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            let data = big_content();
            put(&root, "u/big", &data, 0o640, OLD);
            b.round();
            assert_eq!(
                b.worker.connector.opened.load(Ordering::Relaxed),
                SESSIONS,
                "the main session and its helpers"
            );
            let f = node(&b.fs, "/u/big").unwrap();
            assert!(f.data == data, "the file arrived whole and in order");
            assert_eq!((f.mode, f.uid, f.gid), (0o100640, 1000, 1001));
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
            assert_eq!(b.worker.status.lock().unwrap().files_synced, 1);
            assert_eq!(
                b.worker.status.lock().unwrap().bytes_synced,
                data.len() as u64
            );
        }

        #[test]
        fn a_helper_session_that_breaks_midway_leaves_its_stripes_to_the_main_one() {
            let data = big_content();
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/big", &data, 0o640, OLD);
            // Stream 0 is the main session; 1 to 3 are its helpers.
            b.fs.lock().unwrap().break_stream = Some((2, 6));
            b.round();
            let f = node(&b.fs, "/u/big").expect("in place in the same round");
            assert!(f.data == data, "whole");
            assert_eq!(
                b.worker.helpers.len(),
                SESSIONS - 2,
                "the broken one dropped"
            );
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
        }

        #[test]
        fn a_helper_whose_close_fails_has_its_stripes_written_again() {
            let data = big_content();
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/big", &data, 0o640, OLD);
            // Helper 3's writes are lost at close, which says so.
            b.fs.lock().unwrap().fail_close_on_stream = Some(3);
            b.round();
            let f = node(&b.fs, "/u/big").expect("in place in the same round");
            assert!(
                f.data == data,
                "whole: the main session wrote its stripes again"
            );
            assert_eq!(
                b.worker.helpers.len(),
                SESSIONS - 1,
                "a refusal breaks no session"
            );
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
        }

        #[test]
        fn a_big_file_is_in_place_only_whole_when_the_main_session_breaks_midway() {
            let data = big_content();
            for after in [2, 5, 9, 14] {
                let mut b = bed(FakeFs::default());
                let root = b.data.path().to_path_buf();
                mkdir(&root, "u", 0o750);
                put(&root, "u/big", &data, 0o640, OLD);
                b.fs.lock().unwrap().break_stream = Some((0, after));
                b.round();
                assert!(
                    node(&b.fs, "/u/big").is_none(),
                    "after {after} writes: in place"
                );
                b.round();
                let f = node(&b.fs, "/u/big").expect("sent again, whole");
                assert!(f.data == data, "after {after} writes: not whole");
                // What the broken session left is the audit's to remove.
                b.worker.audit().unwrap();
                assert_eq!(
                    temporaries(&b.fs),
                    Vec::<String>::new(),
                    "after {after} writes"
                );
            }
        }

        #[test]
        fn a_big_file_changed_after_the_look_is_not_put_in_place() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            let data = big_content();
            put(&root, "u/big", &data, 0o640, OLD);
            b.local.pass();
            // Cut short after the look, its mtime as before: only the size tells.
            let f = std::fs::File::options()
                .write(true)
                .open(root.join("u/big"))
                .unwrap();
            f.set_len(push::STRIPE + 1).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(OLD))
                .unwrap();
            b.worker.round();
            assert!(node(&b.fs, "/u/big").is_none());
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
        }

        #[test]
        fn an_audit_repairs_what_changed_behind_the_masters_back() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"the master's", 0o640, OLD);
            put(&root, "u/b", b"untouched", 0o640, OLD);
            b.round();
            {
                let mut fs = b.fs.lock().unwrap();
                fs.nodes.get_mut(b"/u/a".as_slice()).unwrap().data = b"tampered".to_vec();
                fs.nodes
                    .insert(b"/u/extra".to_vec(), Node::file(b"not the master's", 0o644));
                fs.nodes
                    .insert(b"/.sftp-ha-tmp/left-over".to_vec(), Node::file(b"", 0o600));
                fs.changes.clear();
            }
            // Without an audit, the index says the standby has it all.
            b.local.rescan_all = true;
            b.round();
            assert_eq!(node(&b.fs, "/u/a").unwrap().data, b"tampered");

            b.worker.audit().unwrap();
            b.round();
            assert_eq!(node(&b.fs, "/u/a").unwrap().data, b"the master's");
            assert_eq!(node(&b.fs, "/u/extra"), None);
            assert_eq!(temporaries(&b.fs), Vec::<String>::new());
            let changes = b.fs.lock().unwrap().changes.clone();
            assert!(!changes.iter().any(|(_, p)| p == b"/u/b"), "{changes:?}");
            let status = b.worker.status.lock().unwrap().clone();
            assert_eq!(status.last_audit_repairs, 2, "{status:?}");
        }

        #[test]
        fn a_rename_on_the_master_is_a_rename_on_the_standby() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/draft", b"content", 0o640, OLD);
            // With nanoseconds, as a write gives it: a whole-second mtime
            // (set by a client, it could repeat) is sent again instead.
            std::fs::File::options()
                .write(true)
                .open(root.join("u/draft"))
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::new(OLD, 123_456_789))
                .unwrap();
            b.round();
            b.fs.lock().unwrap().changes.clear();

            std::fs::rename(root.join("u/draft"), root.join("u/final")).unwrap();
            assert!(b.local.wait_for_events(Duration::from_secs(1)));
            b.round();
            assert_eq!(node(&b.fs, "/u/draft"), None);
            assert_eq!(node(&b.fs, "/u/final").unwrap().data, b"content");
            let changes = b.fs.lock().unwrap().changes.clone();
            assert!(
                changes.iter().all(|(kind, _)| *kind != 3 /* OPEN */),
                "renamed, not sent again: {changes:?}"
            );
        }

        #[test]
        fn a_mode_change_alone_is_set_on_the_open_file_not_sent_again() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"content", 0o640, OLD);
            b.round();
            b.fs.lock().unwrap().changes.clear();

            std::fs::set_permissions(root.join("u/a"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            std::fs::set_permissions(root.join("u"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
            assert!(b.local.wait_for_events(Duration::from_secs(1)));
            b.round();
            assert_eq!(node(&b.fs, "/u/a").unwrap().mode, 0o100600);
            assert_eq!(node(&b.fs, "/u").unwrap().mode, 0o040700);
            let status = b.worker.status.lock().unwrap().clone();
            assert_eq!((status.files_synced, status.refused), (1, 0), "{status:?}");
        }

        #[test]
        fn a_handover_sends_the_last_changes_then_writes_the_claim() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            b.round();
            put(&root, "u/last", b"just before", 0o640, OLD);
            b.worker.control.lock().unwrap().hand_over = true;
            // It asks the local side for a full walk first and waits for it.
            b.worker.hand_over();
            assert_eq!(b.worker.control.lock().unwrap().handed_over, None);
            assert!(b.local.take_asked() && b.local.rescan_all);
            b.local.pass();
            b.worker.hand_over();

            assert_eq!(node(&b.fs, "/u/last").unwrap().data, b"just before");
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").unwrap();
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!((claim.epoch, claim.handover), (1, Some(2)));
            let control = b.worker.control.lock().unwrap();
            assert_eq!(control.handed_over, Some(2));
            assert!(control.writing_handover);
            drop(control);
            assert!(b.worker.stepped_down(), "the worker stops");
        }

        #[test]
        fn a_handover_waits_for_a_walk_begun_after_the_fence() {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            b.round();
            // A walk (fallback timer, overflow) is under way: it has passed u/ already.
            b.local.rescan_all = true;
            b.local.pass(); // walk N+1 posted, not yet taken by the worker
            // A user's last upload, after the walk passed u/, before the fence.
            put(&root, "u/last", b"just before", 0o640, OLD);
            b.worker.control.lock().unwrap().hand_over = true;
            b.worker.hand_over(); // asks for a walk that begins after now
            // The local side's loop takes the request (top of its loop) and starts walking.
            assert!(b.local.take_asked());
            // Meanwhile, the worker's retry 200 ms later:
            b.worker.hand_over();
            let handed = b.worker.control.lock().unwrap().handed_over;
            let there = node(&b.fs, "/u/last").is_some();
            assert!(
                handed.is_none() || there,
                "handed over at {handed:?} without u/last"
            );
        }

        /// Everything on the fake peer but its control folder and the probe folder.
        fn peer_files(fs: &Arc<Mutex<FakeFs>>) -> Vec<String> {
            fs.lock()
                .unwrap()
                .nodes
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .filter(|k| {
                    k != "/" && !k.starts_with("/.sftp-ha-ctl") && !k.starts_with("/.sftp-ha-tmp")
                })
                .collect()
        }

        #[test]
        fn with_shared_storage_only_the_claim_goes_to_the_peer() {
            let mut b = bed_with(FakeFs::default(), true);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/f", b"on the shared storage", 0o640, OLD);
            b.worker.claim_round();
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").expect("a claim");
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!((claim.epoch, claim.handover), (1, None));
            assert_eq!(peer_files(&b.fs), Vec::<String>::new());
            assert!(b.worker.status.lock().unwrap().connected);
            assert!(!b.worker.settings.state_dir.join(INDEX_FILE).exists());
        }

        #[test]
        fn hosts_that_disagree_on_the_storage_exchange_nothing() {
            // A shared-storage master and a replicating standby: no claim.
            let mut b = bed_with(publishing(Role::Standby, 1), true);
            put(b.data.path(), "f", b"data", 0o640, OLD);
            b.worker.claim_round();
            assert!(node(&b.fs, "/.sftp-ha-ctl/claim.json").is_none());
            let error = b.worker.status.lock().unwrap().last_error.clone();
            assert!(error.is_some_and(|e| e.contains("storage")));
            // A replicating master and a shared-storage standby: no files.
            let mut fs = publishing(Role::Standby, 1);
            let mut published: Published =
                serde_json::from_slice(&fs.nodes[b"/.sftp-ha-ctl/role.json".as_slice()].data)
                    .unwrap();
            published.shared = true;
            fs.nodes.insert(
                b"/.sftp-ha-ctl/role.json".to_vec(),
                Node::file(&serde_json::to_vec(&published).unwrap(), 0o644),
            );
            let mut b = bed_with(fs, false);
            put(b.data.path(), "f", b"data", 0o640, OLD);
            b.worker.round();
            assert_eq!(peer_files(&b.fs), Vec::<String>::new());
            assert!(node(&b.fs, "/.sftp-ha-ctl/claim.json").is_none());
        }

        #[test]
        fn with_shared_storage_a_handover_sends_nothing_and_writes_the_claim() {
            let mut b = bed_with(FakeFs::default(), true);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/last", b"just before", 0o640, OLD);
            b.worker.control.lock().unwrap().hand_over = true;
            b.worker.hand_over();
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").unwrap();
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!((claim.epoch, claim.handover), (1, Some(2)));
            assert_eq!(b.worker.control.lock().unwrap().handed_over, Some(2));
            assert_eq!(peer_files(&b.fs), Vec::<String>::new());
        }

        #[test]
        fn a_shared_storage_handover_waits_for_the_fenced_writers_and_kills_them_late() {
            use std::sync::atomic::AtomicUsize;
            // The probe: two session processes, until one SIGKILL.
            static KILLS: AtomicUsize = AtomicUsize::new(0);
            fn writers(fenced: &HashSet<i32>, kill: bool) -> Vec<i32> {
                assert!(fenced.contains(&42), "{fenced:?}");
                if kill {
                    KILLS.fetch_add(1, Ordering::SeqCst);
                    return vec![100, 101];
                }
                if KILLS.load(Ordering::SeqCst) > 0 {
                    Vec::new()
                } else {
                    vec![100, 101]
                }
            }
            let mut b = bed_with(FakeFs::default(), true);
            b.worker.writers = writers;
            {
                let mut c = b.worker.control.lock().unwrap();
                c.hand_over = true;
                c.fenced = HashSet::from([42]);
            }
            // Just fenced: they get time to end by themselves, no handover yet.
            b.worker.hand_over();
            assert!(node(&b.fs, "/.sftp-ha-ctl/claim.json").is_none());
            assert_eq!(KILLS.load(Ordering::SeqCst), 0);
            {
                let c = b.worker.control.lock().unwrap();
                assert_eq!((c.handed_over, c.writers_left), (None, 2));
                assert!(!c.writing_handover);
            }
            // Past the grace: SIGKILL, and still no handover while they are there.
            b.worker.writers_since = Some(Instant::now() - WRITERS_KILL_AFTER);
            b.worker.hand_over();
            assert_eq!(KILLS.load(Ordering::SeqCst), 1);
            assert!(node(&b.fs, "/.sftp-ha-ctl/claim.json").is_none());
            assert_eq!(b.worker.control.lock().unwrap().handed_over, None);
            // Gone: the handover is written.
            b.worker.hand_over();
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").unwrap();
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!(claim.handover, Some(2));
            let c = b.worker.control.lock().unwrap();
            assert_eq!((c.handed_over, c.writers_left), (Some(2), 0));
        }

        #[test]
        fn writers_are_waited_for_then_killed() {
            assert_eq!(judge_writers(0, Duration::ZERO), Writers::Gone);
            assert_eq!(judge_writers(0, Duration::from_secs(60)), Writers::Gone);
            assert_eq!(judge_writers(3, Duration::from_secs(1)), Writers::Wait);
            assert_eq!(judge_writers(1, WRITERS_KILL_AFTER), Writers::Kill);
        }

        #[test]
        fn with_shared_storage_a_former_master_is_answered_reconciled_at_once() {
            let mut fs = publishing(Role::Standby, 1);
            let mut published: Published =
                serde_json::from_slice(&fs.nodes[b"/.sftp-ha-ctl/role.json".as_slice()].data)
                    .unwrap();
            published.unreconciled = Some(77);
            published.shared = true;
            fs.nodes.insert(
                b"/.sftp-ha-ctl/role.json".to_vec(),
                Node::file(&serde_json::to_vec(&published).unwrap(), 0o644),
            );
            let mut b = bed_with(fs, true);
            put(b.data.path(), "kept", b"never compared", 0o640, OLD);
            b.worker.claim_round();
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").unwrap();
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!(claim.reconciled, Some(77));
            assert_eq!(peer_files(&b.fs), Vec::<String>::new());
            assert!(b.data.path().join("kept").exists());
        }

        #[test]
        fn demote_offers_the_role_once_and_a_standby_that_asks_gets_a_handover_request() {
            let mut b = bed(FakeFs::default());
            b.round();
            b.worker.control.lock().unwrap().offer = true;
            b.worker.check_peer().unwrap();
            let claim = node(&b.fs, "/.sftp-ha-ctl/claim.json").unwrap();
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert!(claim.offer && claim.handover.is_none(), "{claim:?}");
            assert!(!b.worker.control.lock().unwrap().offer, "offered once");
            assert!(!b.worker.control.lock().unwrap().handover_asked);
        }

        /// The standby's role file says what it is.
        fn publishing(role: Role, epoch: u64) -> FakeFs {
            let mut fs = FakeFs::default();
            fs.nodes.insert(b"/.sftp-ha-ctl".to_vec(), Node::dir(0o700));
            let published = Published {
                node: "beta".into(),
                role,
                epoch,
                wants_master: false,
                users: None,
                unreconciled: None,
                shared: false,
            };
            fs.nodes.insert(
                b"/.sftp-ha-ctl/role.json".to_vec(),
                Node::file(&serde_json::to_vec(&published).unwrap(), 0o644),
            );
            fs
        }

        #[test]
        fn a_peer_at_a_newer_epoch_makes_the_master_step_down_sending_nothing() {
            let mut b = bed(publishing(Role::Master, 5));
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"data", 0o640, OLD);
            let before = b.fs.lock().unwrap().nodes.clone();
            b.round();

            let fs = b.fs.lock().unwrap();
            assert_eq!(fs.changes, Vec::new(), "nothing sent, no claim written");
            assert_eq!(fs.nodes, before);
            drop(fs);
            let step_down = b.worker.control.lock().unwrap().step_down.clone();
            assert!(matches!(step_down, Some((5, _))), "{step_down:?}");
            assert!(b.worker.stepped_down());
            assert!(b.worker.standby.is_none());
            let status = b.worker.status.lock().unwrap().clone();
            assert!(!status.connected);
            assert!(
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("steps down"),
                "{status:?}"
            );
            assert!(b.worker.index.is_empty());
        }

        #[test]
        fn a_standby_at_this_epoch_is_replicated_to() {
            let mut b = bed(publishing(Role::Standby, 1));
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            b.round();
            assert!(node(&b.fs, "/u").is_some());
            assert!(!b.worker.stepped_down());
        }

        #[test]
        fn a_peer_that_takes_no_writes_gets_nothing() {
            let mut b = bed(FakeFs {
                read_only: true,
                ..FakeFs::default()
            });
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"data", 0o640, OLD);
            b.round();

            let fs = b.fs.lock().unwrap();
            assert_eq!(fs.changes, Vec::new());
            assert!(fs.nodes.is_empty());
            drop(fs);
            let status = b.worker.status.lock().unwrap().clone();
            assert!(!status.connected);
            assert!(
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("not a standby"),
                "{status:?}"
            );
            assert!(b.worker.standby.is_none());
            assert!(!b.worker.stepped_down(), "not this host's to decide");
            assert!(b.worker.schedule.round_planned(), "tried again later");
            assert!(b.worker.index.is_empty());
        }

        /// A standby's users' files: path → content (the control folder and
        /// the temporaries left out).
        fn files(fs: &Arc<Mutex<FakeFs>>) -> std::collections::BTreeMap<String, Vec<u8>> {
            let fs = fs.lock().unwrap();
            fs.nodes
                .iter()
                .filter(|(k, _)| !k.starts_with(b"/.sftp-ha"))
                .map(|(k, n)| (sftp::show(k), n.data.clone()))
                .collect()
        }

        /// The master's data dir as [`files`] shows a standby.
        fn master_files(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
            let (tree, _) = tree::scan(root, &mut |_| {}).unwrap();
            tree.iter()
                .map(|(p, e)| {
                    let data = if e.kind == Kind::Dir {
                        Vec::new()
                    } else {
                        std::fs::read(root.join(sftp::show(p))).unwrap()
                    };
                    (format!("/{}", sftp::show(p)), data)
                })
                .collect()
        }

        /// Waits up to `limit` for `done`; true if it came.
        fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
            let start = Instant::now();
            while start.elapsed() < limit {
                if done() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            done()
        }

        #[test]
        fn two_standbys_both_get_every_file_each_with_an_index_of_its_own() {
            let mut b = beds(vec![FakeFs::default(), FakeFs::default()]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"alpha", 0o640, OLD);
            put(&root, "u/b", b"beta", 0o600, OLD);
            b.round();
            let (fs2, second) = &b.more[0];
            assert_eq!(files(&b.fs), master_files(&root));
            assert_eq!(files(fs2), master_files(&root));
            assert_eq!(second.status.lock().unwrap().standby, "standby1.test:22");
            assert_eq!(second.status.lock().unwrap().files_synced, 2);
            // The first keeps the one-standby file name; each has its own.
            let state = b._state.path();
            assert_eq!(b.worker.index_path, state.join("sync-index"));
            assert_eq!(second.index_path, state.join("sync-index.standby1.test:22"));
            assert!(second.index_path.exists() && b.worker.index_path.exists());
            assert_eq!(index_files(state).len(), 2);

            // Nothing changed: a walk sends nothing to either, and both
            // indexes are held on the master's tree: one copy for all.
            b.fs.lock().unwrap().changes.clear();
            b.more[0].0.lock().unwrap().changes.clear();
            b.local.rescan_all = true;
            b.round();
            assert_eq!(b.fs.lock().unwrap().changes, Vec::new());
            assert_eq!(b.more[0].0.lock().unwrap().changes, Vec::new());
            assert!(tree::held_once(&b.local.current, &b.worker.index));
            assert!(tree::held_once(&b.local.current, &b.more[0].1.index));
        }

        #[test]
        fn a_delete_reaches_each_standby_from_its_own_index_and_a_cut_off_one_catches_up() {
            let mut b = beds(vec![FakeFs::default(), FakeFs::default()]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"alpha", 0o640, OLD);
            put(&root, "u/gone", b"bye", 0o640, OLD);
            b.round();
            b.more[0].0.lock().unwrap().cut_off = true;
            std::fs::remove_file(root.join("u/gone")).unwrap();
            put(&root, "u/new", b"while it was away", 0o640, OLD);
            assert!(b.local.wait_for_events(Duration::from_secs(1)));
            b.round();
            // The reachable one has the delete and the new file at once.
            assert_eq!(files(&b.fs), master_files(&root));
            let status = b.more[0].1.status.lock().unwrap().clone();
            assert!(
                !status.connected && status.last_error.is_some(),
                "{status:?}"
            );
            assert!(
                node(&b.more[0].0, "/u/gone").is_some(),
                "untouched while away"
            );
            // The first's index says it is gone; the other's still has it.
            assert!(!b.worker.index.contains_key(b"u/gone".as_slice()));
            assert!(b.more[0].1.index.contains_key(b"u/gone".as_slice()));

            // Back: the next round (at its retry) brings it level.
            b.more[0].0.lock().unwrap().cut_off = false;
            b.fs.lock().unwrap().changes.clear();
            b.round();
            assert_eq!(files(&b.more[0].0), master_files(&root));
            assert_eq!(
                b.fs.lock().unwrap().changes,
                Vec::new(),
                "the first is left alone"
            );
            assert!(b.more[0].1.status.lock().unwrap().connected);
        }

        #[test]
        fn an_audit_repairs_only_the_standby_it_lists() {
            let mut b = beds(vec![FakeFs::default(), FakeFs::default()]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"the master's", 0o640, OLD);
            b.round();
            {
                let mut fs = b.more[0].0.lock().unwrap();
                fs.nodes.remove(b"/u/a".as_slice());
                fs.nodes
                    .insert(b"/u/extra".to_vec(), Node::file(b"not the master's", 0o644));
            }
            b.fs.lock().unwrap().changes.clear();
            b.more[0].1.audit().unwrap();
            b.round();
            assert_eq!(files(&b.more[0].0), master_files(&root));
            assert_eq!(b.fs.lock().unwrap().changes, Vec::new());
            assert_eq!(b.more[0].1.status.lock().unwrap().last_audit_repairs, 2);
        }

        #[test]
        fn a_standby_at_a_newer_epoch_makes_the_master_step_down_whichever_it_is() {
            let mut b = beds(vec![FakeFs::default(), publishing(Role::Master, 5)]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            let before = b.more[0].0.lock().unwrap().nodes.clone();
            b.round();
            assert_eq!(
                b.more[0].0.lock().unwrap().nodes,
                before,
                "nothing sent there"
            );
            let step_down = b.worker.control.lock().unwrap().step_down.clone();
            assert!(matches!(step_down, Some((5, _))), "{step_down:?}");
            // Every worker and the local side stop.
            assert!(b.worker.stepped_down() && b.more[0].1.stepped_down());
        }

        #[test]
        fn a_standby_that_took_another_masters_replication_is_reconciled_before_mirroring() {
            let mut theirs = FakeFs::default();
            theirs
                .nodes
                .insert(b"/.sftp-ha-ctl".to_vec(), Node::dir(0o700));
            let claim = Claim {
                node: "gamma".into(),
                epoch: 1,
                handover: None,
                reconciled: None,
                offer: false,
            };
            theirs.nodes.insert(
                b"/.sftp-ha-ctl/claim.json".to_vec(),
                Node::file(&serde_json::to_vec(&claim).unwrap(), 0o600),
            );
            theirs.nodes.insert(b"/u".to_vec(), Node::dir(0o750));
            theirs.nodes.insert(
                b"/u/only-there".to_vec(),
                Node::file(b"uploaded to gamma", 0o640),
            );
            theirs
                .nodes
                .insert(b"/u/a".to_vec(), Node::file(b"gamma's version", 0o640));
            let mut b = beds(vec![FakeFs::default(), theirs]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"this host's version", 0o640, OLD);
            b.round();

            // Its upload came here, its other version is kept beside this
            // host's: nothing of it was deleted or overwritten unseen.
            assert_eq!(
                std::fs::read(root.join("u/only-there")).unwrap(),
                b"uploaded to gamma"
            );
            assert_eq!(
                std::fs::read(root.join("u/a")).unwrap(),
                b"this host's version"
            );
            let copies: Vec<_> = std::fs::read_dir(root.join("u"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("a") && n != "a")
                .collect();
            assert_eq!(copies.len(), 1, "one conflict copy: {copies:?}");
            let status = b.more[0].1.status.lock().unwrap().clone();
            assert_eq!(
                (status.brought_back, status.conflicts),
                (1, 1),
                "{status:?}"
            );
            assert!(!status.reconciling);
            // Now it is this host's standby, and everything reaches both.
            let claim = node(&b.more[0].0, "/.sftp-ha-ctl/claim.json").unwrap();
            let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
            assert_eq!(claim.node, "alpha");
            b.round();
            b.round();
            assert_eq!(files(&b.more[0].0), master_files(&root));
            assert_eq!(files(&b.fs), master_files(&root));
        }

        /// The threads as the daemon runs them: a standby that hangs, then
        /// one that is cut off, holds up neither the other standby nor the
        /// local side; once back it catches up by itself.
        #[test]
        fn a_slow_or_cut_off_standby_holds_up_nobody_and_catches_up_by_itself() {
            let data = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let root = data.path().to_path_buf();
            let one = Arc::new(Mutex::new(FakeFs::default()));
            let two = Arc::new(Mutex::new(FakeFs::default()));
            mkdir(&root, "u", 0o750);
            put(&root, "u/first", b"before", 0o640, OLD);
            let handle = start_with(
                settings(&root, state.path(), 2),
                vec![connector(&one), connector(&two)],
                &Arc::default(),
            )
            .unwrap();
            let level = |fs: &Arc<Mutex<FakeFs>>| files(fs) == master_files(&root);
            assert!(within(Duration::from_secs(15), || level(&one) && level(&two)));

            // The second stops answering (its worker hangs in a request).
            two.lock().unwrap().stalled = true;
            for i in 0..30 {
                put(
                    &root,
                    &format!("u/burst{i}"),
                    format!("{i}").as_bytes(),
                    0o640,
                    OLD,
                );
            }
            assert!(
                within(Duration::from_secs(15), || level(&one)),
                "the first got the burst while the second hangs"
            );
            assert!(!level(&two));

            // Then it is cut off: requests fail, reconnects are refused.
            {
                let mut fs = two.lock().unwrap();
                fs.cut_off = true;
                fs.stalled = false;
            }
            for i in 0..30 {
                put(
                    &root,
                    &format!("u/more{i}"),
                    format!("{i}").as_bytes(),
                    0o640,
                    OLD,
                );
            }
            std::fs::remove_file(root.join("u/first")).unwrap();
            assert!(within(Duration::from_secs(15), || level(&one)));
            assert!(within(Duration::from_secs(15), || !handle.snapshots()[1].connected));
            assert!(handle.snapshots()[0].connected);

            // Back: it catches up at its next retry, nobody asks it to.
            two.lock().unwrap().cut_off = false;
            assert!(
                within(Duration::from_secs(30), || level(&two)),
                "the second caught up by itself"
            );
            assert_eq!(files(&one), files(&two));
            // (A file lands before its confirmation is counted.)
            assert!(within(Duration::from_secs(15), || handle
                .snapshots()
                .iter()
                .all(|s| s.connected && s.pending == 0)));
            assert_eq!(handle.snapshots().len(), 2);
            handle.stop(Duration::from_secs(5));
        }

        #[test]
        fn a_baseline_is_reconciled_with_every_standby_and_goes_once_all_are() {
            let mut b = beds_after(vec![FakeFs::default(), FakeFs::default()], |data, state| {
                mkdir(data, "u", 0o750);
                put(data, "u/a", b"at the promotion", 0o640, OLD);
                let (tree, _) = tree::scan(data, &mut |_| {}).unwrap();
                reconcile::save_baseline(&state.join(BASELINE_FILE), &tree).unwrap();
            });
            let baseline = b._state.path().join(BASELINE_FILE);
            // Each standby has a file the master lacks, written after the baseline.
            for fs in [&b.fs, &b.more[0].0] {
                let mut fs = fs.lock().unwrap();
                fs.nodes.insert(b"/u".to_vec(), Node::dir(0o750));
                fs.nodes
                    .insert(b"/u/late".to_vec(), Node::file(b"written there", 0o640));
            }
            b.more[0].0.lock().unwrap().cut_off = true;
            b.round();
            let root = b.data.path().to_path_buf();
            assert_eq!(
                std::fs::read(root.join("u/late")).unwrap(),
                b"written there"
            );
            assert!(!b.worker.status.lock().unwrap().reconciling);
            assert!(b.more[0].1.status.lock().unwrap().reconciling);
            assert!(
                baseline.exists(),
                "kept: the second standby is not reconciled yet"
            );
            // The away one holds its files until it is reconciled itself.
            assert!(node(&b.more[0].0, "/u/late").is_some());

            b.more[0].0.lock().unwrap().cut_off = false;
            b.round();
            assert!(!b.more[0].1.status.lock().unwrap().reconciling);
            assert!(
                !baseline.exists(),
                "every standby reconciled: the baseline goes"
            );
            b.round();
            assert_eq!(files(&b.fs), master_files(&root));
            assert_eq!(files(&b.more[0].0), master_files(&root));
        }

        #[test]
        fn a_walk_older_than_a_reconcile_does_not_delete_what_it_brought_back() {
            let mut theirs = claimed_by("gamma", 0);
            theirs.nodes.insert(b"/u".to_vec(), Node::dir(0o750));
            theirs.nodes.insert(
                b"/u/only-there".to_vec(),
                Node::file(b"uploaded to gamma", 0o640),
            );
            let mut b = beds(vec![FakeFs::default(), theirs]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"mine", 0o640, OLD);
            b.local.pass();
            // A walk under way on the local side has passed u/ already.
            let before_pull = Arc::new(b.local.current.clone());
            let walks = b.local.walks + 1;
            b.more[0].1.round(); // reconciles: u/only-there comes here
            assert!(root.join("u/only-there").exists());
            assert!(node(&b.more[0].0, "/u/only-there").is_some());
            // That walk ends and is posted.
            b.more[0]
                .1
                .inbox
                .post(&before_pull, None, &HashSet::new(), walks, 0, 0);
            b.more[0].1.round();
            assert!(
                node(&b.more[0].0, "/u/only-there").is_some(),
                "deleted on the standby it came from"
            );
        }

        #[test]
        fn an_unreachable_standby_shows_what_it_misses() {
            let mut b = beds(vec![FakeFs::default(), FakeFs::default()]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"alpha", 0o640, OLD);
            b.round();
            b.more[0].0.lock().unwrap().cut_off = true;
            for n in 0..5 {
                put(
                    &root,
                    &format!("u/new{n}"),
                    b"while it was away",
                    0o640,
                    OLD,
                );
            }
            assert!(b.local.wait_for_events(Duration::from_secs(1)));
            b.round();
            b.round();
            for n in 0..20 {
                put(
                    &root,
                    &format!("u/later{n}"),
                    b"while it was away",
                    0o640,
                    OLD,
                );
            }
            assert!(b.local.wait_for_events(Duration::from_secs(1)));
            b.more[0].1.schedule.failed(Instant::now(), false);
            std::thread::sleep(Duration::from_millis(1100));
            b.round();
            let s0 = b.worker.status.lock().unwrap().clone();
            let s1 = b.more[0].1.status.lock().unwrap().clone();
            assert!(!s1.connected);
            assert_eq!((s0.pending, s1.pending), (0, 25), "{s1:?}");
        }

        fn peer_check_under_load(busy: bool) -> Option<(u64, String)> {
            let mut b = bed(FakeFs::default());
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"alpha", 0o640, OLD);
            b.round();
            assert!(b.worker.standby.is_some());
            // The standby now publishes a newer epoch (it follows another master).
            let published = Published {
                node: "beta".into(),
                role: Role::Standby,
                epoch: 99,
                wants_master: false,
                users: None,
                unreconciled: None,
                shared: false,
            };
            b.fs.lock().unwrap().nodes.insert(
                b"/.sftp-ha-ctl/role.json".to_vec(),
                Node::file(&serde_json::to_vec(&published).unwrap(), 0o644),
            );
            let control = b.worker.control.clone();
            let stop = b.worker.stop.clone();
            let mut worker = b.worker;
            let t = std::thread::spawn(move || worker.run());
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(4) {
                if busy {
                    // A user uploads a file every 100 ms.
                    put(&root, &format!("u/f{n}"), b"x", 0o640, OLD);
                    n += 1;
                    let _ = b.local.wait_for_events(Duration::from_millis(5));
                    b.local.pass();
                }
                std::thread::sleep(Duration::from_millis(100));
                if control.lock().unwrap().step_down.is_some() {
                    break;
                }
            }
            let seen = control.lock().unwrap().step_down.clone();
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap();
            seen
        }

        #[test]
        fn a_busy_master_still_reads_its_standbys_role() {
            assert!(peer_check_under_load(false).is_some(), "idle: seen");
            assert!(
                peer_check_under_load(true).is_some(),
                "busy: never seen in 4 s"
            );
        }

        /// A standby whose claim is another master's, at `epoch`.
        fn claimed_by(node: &str, epoch: u64) -> FakeFs {
            let mut fs = FakeFs::default();
            fs.nodes.insert(b"/.sftp-ha-ctl".to_vec(), Node::dir(0o700));
            let claim = Claim {
                node: node.into(),
                epoch,
                handover: None,
                reconciled: None,
                offer: false,
            };
            fs.nodes.insert(
                b"/.sftp-ha-ctl/claim.json".to_vec(),
                Node::file(&serde_json::to_vec(&claim).unwrap(), 0o600),
            );
            fs
        }

        #[test]
        fn a_standby_claimed_by_a_newer_master_makes_this_one_step_down_even_if_its_role_lags() {
            // Its own role file says nothing (its daemon is down, say), but
            // the claim shows a master at epoch 3: this one (epoch 1) goes.
            let mut b = beds(vec![FakeFs::default(), claimed_by("gamma", 3)]);
            let root = b.data.path().to_path_buf();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"data", 0o640, OLD);
            b.round();
            let step_down = b.worker.control.lock().unwrap().step_down.clone();
            assert!(
                matches!(&step_down, Some((3, why)) if why.contains("gamma")),
                "{step_down:?}"
            );
            assert!(files(&b.more[0].0).is_empty(), "nothing sent there");
            assert!(!root.join("u/only-there").exists());
            // An older claim is history: reconciled, then replicated to.
            let mut b = beds(vec![claimed_by("gamma", 0)]);
            mkdir(b.data.path(), "u", 0o750);
            b.round();
            assert!(b.worker.control.lock().unwrap().step_down.is_none());
            assert!(node(&b.fs, "/u").is_some());
        }

        #[test]
        fn with_shared_storage_each_standby_gets_the_claim_and_no_file() {
            let mut b = beds_with(
                vec![FakeFs::default(), FakeFs::default()],
                true,
                |data, _| {
                    mkdir(data, "u", 0o750);
                    put(data, "u/f", b"on the shared storage", 0o640, OLD);
                },
            );
            b.worker.claim_round();
            b.more[0].1.claim_round();
            for fs in [&b.fs, &b.more[0].0] {
                let claim = node(fs, "/.sftp-ha-ctl/claim.json").expect("a claim");
                let claim: Claim = serde_json::from_slice(&claim.data).unwrap();
                assert_eq!(claim.node, "alpha");
                assert!(files(fs).is_empty());
            }
            assert!(index_files(b._state.path()).is_empty());
        }

        /// A master whose standby stopped answering while a big file is
        /// sent, until after the daemon's `stop` (a reload, a step-down, a
        /// handover) gave up on the worker.
        fn blocked_in_a_request(
            root: &Path,
            state: &Path,
            fs: &Arc<Mutex<FakeFs>>,
            owners: &Arc<owner::Owners>,
        ) -> SyncHandle {
            mkdir(root, "u", 0o750);
            put(root, "u/a", b"alpha", 0o640, OLD);
            let handle =
                start_with(settings(root, state, 1), vec![tagged(fs, 1, None)], owners).unwrap();
            assert!(within(Duration::from_secs(15), || files(fs) == master_files(root)));
            fs.lock().unwrap().stalled = true;
            put(root, "u/big", &vec![7u8; 600_000], 0o640, OLD);
            assert!(within(Duration::from_secs(15), || handle
                .snapshot()
                .pending
                == 1));
            // In its request now (each one waits while the standby is stalled).
            std::thread::sleep(Duration::from_millis(100));
            handle
        }

        #[test]
        fn a_worker_that_outlives_its_stop_sends_nothing_more_and_the_next_one_waits_for_it() {
            let data = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let root = data.path().to_path_buf();
            let fs = Arc::new(Mutex::new(FakeFs::default()));
            let owners: Arc<owner::Owners> = Arc::default();
            let old = blocked_in_a_request(&root, state.path(), &fs, &owners);
            old.stop(Duration::from_millis(100));
            let stopped_at = fs.lock().unwrap().by.len();

            // The new workers (after a reload) for the same standby.
            let next = tagged(&fs, 2, None);
            let opened = next.opened.clone();
            let new = start_with(settings(&root, state.path(), 1), vec![next], &owners).unwrap();
            assert!(within(Duration::from_secs(5), || new
                .snapshot()
                .last_error
                .is_some_and(|e| e.contains(
                    "still being written to by the replication to standby.test:22"
                ))));
            assert_eq!(
                opened.load(Ordering::Relaxed),
                0,
                "it waits, not even connected"
            );

            // The old one gets its answer, sees it was told to stop, and ends;
            // then the new one connects and sends what is missing.
            fs.lock().unwrap().stalled = false;
            assert!(within(Duration::from_secs(30), || files(&fs)
                == master_files(&root)));
            let by = fs.lock().unwrap().by.clone();
            for (tag, _, path) in &by[stopped_at..] {
                assert!(
                    *tag != 1 || path.starts_with(b"/.sftp-ha-tmp/"),
                    "the old worker wrote {} after its stop",
                    sftp::show(path)
                );
            }
            let first_new = by.iter().position(|(tag, _, _)| *tag == 2).unwrap();
            assert!(
                by[first_new..].iter().all(|(tag, _, _)| *tag == 2),
                "the two never write to the standby at the same time"
            );
            assert!(within(Duration::from_secs(15), || new
                .snapshot()
                .last_error
                .is_none()));
            new.stop(Duration::from_secs(5));
        }

        #[test]
        fn a_worker_that_outlives_its_stop_does_not_write_its_index_when_it_ends() {
            let data = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let root = data.path().to_path_buf();
            let fs = Arc::new(Mutex::new(FakeFs::default()));
            let owners: Arc<owner::Owners> = Arc::default();
            let old = blocked_in_a_request(&root, state.path(), &fs, &owners);
            old.stop(Duration::from_millis(100));
            // What the daemon may do once `stop` returned: a promotion
            // removes the index files (a step-down reads them).
            let index = state.path().join(INDEX_FILE);
            let _ = std::fs::remove_file(&index);

            fs.lock().unwrap().stalled = false;
            // The worker has ended once its standby is free.
            let probe = || vec![owner::Key::Endpoint("standby.test:22".into())];
            assert!(within(Duration::from_secs(30), || owners
                .take(0, "probe", probe())
                .is_ok()));
            assert!(!index.exists(), "no index brought back by the late worker");
        }

        /// One host listed under two names in `[sync] peer` (the same
        /// pinned host key): the first name replicates to it; the second
        /// refuses, says why naming both entries, and writes nothing.
        #[test]
        fn one_host_under_two_names_is_replicated_to_once_and_the_second_name_says_why() {
            let data = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let root = data.path().to_path_buf();
            let fs = Arc::new(Mutex::new(FakeFs::default()));
            let key = Some("ssh-ed25519 AAAAsame");
            let (mut local, mut workers) = assemble(
                settings(&root, state.path(), 2),
                vec![tagged(&fs, 1, key), tagged(&fs, 2, key)],
                &Arc::default(),
            )
            .unwrap();
            mkdir(&root, "u", 0o750);
            put(&root, "u/a", b"alpha", 0o640, OLD);
            put(&root, "u/b", b"beta", 0o640, OLD);
            // Again and again, as its retries would.
            for _ in 0..3 {
                local.pass();
                for w in &mut workers {
                    w.round();
                }
            }
            assert_eq!(files(&fs), master_files(&root));
            let by = fs.lock().unwrap().by.clone();
            assert!(!by.is_empty());
            assert!(
                by.iter().all(|(tag, _, _)| *tag == 1),
                "only the first name's worker writes"
            );
            let second = workers[1].status.lock().unwrap().clone();
            assert!(!second.connected);
            let said = second.last_error.unwrap();
            assert!(
                said.contains(
                    "standby1.test:22 has the same host key as the standby standby.test:22"
                ) && said.contains("[sync] peer")
                    && said.contains("fix:"),
                "{said}"
            );
            assert!(workers[0].status.lock().unwrap().connected);
        }
    }
}
