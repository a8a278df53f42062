//! The thin driver around [`super::core`]: a thread that owns the UDP
//! socket and the clock, signs and checks every datagram, and carries out
//! the core's actions. Stopping uploads when the lease runs out is done here,
//! on this thread, not on the daemon's main loop: a main loop busy with a
//! users.yaml or a walk must never make the fence late. What takes longer
//! (a promotion, a step-down) goes to the daemon as an [`Event`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::core::{Action, Core, Holder, Kind, Message, Target, Timing};
use super::key::FailoverKey;
use super::vip::VirtualIp;
use super::wire;
use crate::config::{Endpoint, Role};
use crate::timefmt::unix_now;

/// The longest the thread sleeps: it notices a role change this soon.
const POLL: Duration = Duration::from_millis(20);
/// After the virtual IP is added, it is announced again at these delays:
/// one lost announcement must not leave clients at the old MAC.
const ANNOUNCE_AT_MS: [u64; 5] = [0, 200, 1000, 2000, 5000];
/// A bad datagram from the same address is logged at most this often.
const BAD_LOG_EVERY: Duration = Duration::from_secs(60);
/// The witness's memory: the highest epoch it granted, and to whom.
pub const WITNESS_STATE_FILE: &str = "witness.json";
/// A file host's memory: the master it last gave its vote to.
pub const VOTE_STATE_FILE: &str = "vote.json";

/// What the thread needs.
pub struct Settings {
    pub node: String,
    pub kind: Kind,
    pub timing: Timing,
    pub port: u16,
    pub key: FailoverKey,
    pub witness: Option<Endpoint>,
    pub peer: Option<Endpoint>,
    pub virtual_ip: Option<VirtualIp>,
    pub interface: Option<String>,
    pub data_dir: PathBuf,
    /// Where the peer's sync key is chrooted (see [`crate::config::Config::sync_root`]).
    pub sync_root: PathBuf,
    pub state_dir: PathBuf,
    /// The live role at start.
    pub role: Role,
    pub epoch: u64,
    /// On a file host: unix ms of the main loop's last turn. The thread then
    /// feeds systemd's watchdog itself, with a deadline short enough that a
    /// stalled daemon (stopped, or this thread blocked) is killed, and the
    /// unit's ExecStopPost fences, before its lease can end.
    pub main_alive: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// A file host whose `[sync] peer` lists more than one other file host
    /// ([`Core::with_several_standbys`]).
    pub several_standbys: bool,
}

/// What the thread tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The witness granted the takeover: become the master at `epoch`.
    Promote { epoch: u64, reason: String },
    /// A newer master exists.
    StepDown { epoch: u64, master: String },
    /// The lease ran out: users were made read-only and their sessions
    /// ended here already; the daemon keeps fencing logins in progress.
    Fenced { reason: String },
    /// The lease is held again: users may write.
    Unfenced { reason: String },
}

/// What the daemon tells the thread.
enum ToThread {
    Role {
        role: Role,
        epoch: u64,
    },
    /// From the sshd watcher: see [`Core::set_serving`].
    Serving(bool),
    PromotionFailed,
    Stop,
}

/// Decides, for the daemon and the thread alike, which drop-in sshd gets:
/// users write only where the daemon serves as master *and* (in automatic
/// mode) the lease is held. Every install happens under its lock, so the
/// last one always reflects the latest state.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
}

#[derive(Debug, Clone)]
struct GateState {
    /// What the daemon asks users to be: master (writable) or not.
    wanted: Role,
    /// `mode = "auto"`: writable only with the lease.
    auto: bool,
    lease: bool,
    /// Users should be read-only, but sshd did not load the read-only
    /// drop-in: why. Their sessions must be ended as they come.
    unfenced: Option<String>,
}

impl Gate {
    pub fn new(auto: bool) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState {
                wanted: Role::Standby,
                auto,
                lease: false,
                unfenced: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // A poisoned lock only means another thread panicked while
        // holding it; the state itself is three plain values.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Installs the drop-in for what the daemon wants (`wanted`), made
    /// read-only when the lease is not held. Returns the role installed.
    pub fn install(
        &self,
        data_dir: &std::path::Path,
        sync_root: &std::path::Path,
        wanted: Role,
    ) -> (Role, Result<crate::sshd::Installed, crate::sshd::SshdError>) {
        let mut state = self.lock();
        state.wanted = wanted;
        let role = state.drop_in_role();
        let result = state.install(data_dir, sync_root);
        (role, result)
    }

    /// Why users who should be read-only here may not be (see [`GateState::unfenced`]).
    pub fn unfenced(&self) -> Option<String> {
        self.lock().unfenced.clone()
    }

    /// As [`Gate::unfenced`], or `None` if an install holds the lock now
    /// (the failover thread never waits for the status).
    fn unfenced_now(&self) -> Option<Option<String>> {
        self.state.try_lock().ok().map(|s| s.unfenced.clone())
    }

    fn set_lease(
        &self,
        data_dir: &std::path::Path,
        sync_root: &std::path::Path,
        lease: bool,
    ) -> Result<crate::sshd::Installed, crate::sshd::SshdError> {
        let mut state = self.lock();
        state.lease = lease;
        state.install(data_dir, sync_root)
    }

    /// Users may write here now.
    pub fn writable(&self) -> bool {
        self.lock().drop_in_role() == Role::Master
    }
}

impl GateState {
    /// Installs the drop-in of the current state; a read-only one that
    /// sshd refuses is kept all the same (never the writable one put back).
    fn install(
        &mut self,
        data_dir: &std::path::Path,
        sync_root: &std::path::Path,
    ) -> Result<crate::sshd::Installed, crate::sshd::SshdError> {
        let role = self.drop_in_role();
        // A master without its lease stops sshd if it must: another host
        // may be taking uploads. A standby keeps sshd for replication.
        let result = match role {
            Role::Master => crate::sshd::install_and_reload(data_dir, sync_root, role),
            Role::Standby => {
                crate::sshd::install_fence(data_dir, sync_root, self.wanted == Role::Master)
            }
        };
        self.unfenced = match (&result, role) {
            (Err(err), Role::Standby) => Some(err.to_string()),
            _ => None,
        };
        result
    }

    fn drop_in_role(&self) -> Role {
        if self.wanted == Role::Master && (!self.auto || self.lease) {
            Role::Master
        } else {
            Role::Standby
        }
    }
}

/// What `sftp-ha status` shows of failover.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// "auto" or "manual" on a file host, "witness" on the witness.
    pub mode: String,
    pub after_ms: u64,
    pub port: u16,
    /// This host holds the master's lease: for so many ms more.
    pub lease_left_ms: Option<u64>,
    /// The voters the lease rests on.
    pub granted_by: Vec<String>,
    /// Users may write here.
    pub writable: bool,
    /// Whom this host promised the lease (as a voter), at which epoch, for how long.
    pub promised: Option<(String, u64, u64)>,
    /// A standby asking the witness to take over, at this epoch.
    pub candidate: Option<u64>,
    pub witness: Option<Reach>,
    pub peer: Option<Reach>,
    pub virtual_ip: Option<VipSeen>,
    pub last_failover: Option<LastFailover>,
    /// Datagrams dropped for a bad key, in total.
    pub refused_datagrams: u64,
    /// Users should be read-only here but sshd refused the drop-in: why.
    #[serde(default)]
    pub unfenced: Option<String>,
    /// sshd has not taken logins here for `after`: this host neither holds
    /// nor takes the master's lease.
    #[serde(default)]
    pub sshd_down: bool,
    /// Another host known to be the master in `mode = "manual"`, at this epoch.
    #[serde(default)]
    pub manual_master: Option<(String, u64)>,
    /// A file host: whose voter it is, in words.
    #[serde(default)]
    pub vote: Option<String>,
}

/// Another host of the vote, as this one hears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub address: String,
    /// Heard within `after`.
    pub reachable: bool,
    /// Unix time of the last valid message from it.
    pub last_heard: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSeen {
    pub address: String,
    pub interface: String,
    pub held_here: bool,
    /// The last error adding, removing or announcing it.
    pub error: Option<String>,
}

/// The last automatic takeover by this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFailover {
    pub at: u64,
    pub epoch: u64,
    /// How long the master had been silent when the witness granted the takeover.
    pub master_silent_ms: Option<u64>,
    /// From the grant to users writing here.
    pub grant_to_writable_ms: Option<u64>,
}

/// The daemon's handle on the thread.
pub struct Failover {
    to_thread: Sender<ToThread>,
    events: Receiver<Event>,
    /// Readable when an event waits (the daemon polls it).
    wake: UnixStream,
    status: Arc<Mutex<FailoverStatus>>,
    thread: Option<JoinHandle<()>>,
    pub gate: Arc<Gate>,
    /// The thread feeds systemd's watchdog (a file host in automatic mode).
    pub feeds_watchdog: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "cannot listen for failover messages on UDP port {port}: {source}; fix: free the port or set another [failover] port (the same on all three hosts)"
    )]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the failover thread: {0}")]
    Setup(#[source] io::Error),
}

impl Failover {
    pub fn start(settings: Settings, gate: Arc<Gate>) -> Result<Failover, DriverError> {
        let socket = UdpSocket::bind(("::", settings.port))
            .or_else(|_| UdpSocket::bind(("0.0.0.0", settings.port)))
            .map_err(|source| DriverError::Bind {
                port: settings.port,
                source,
            })?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(DriverError::Setup)?;
        // Room for bursts: a full buffer drops the grants a lease lives on.
        let _ =
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
        set_network_control_priority(&socket);
        let (wake, wake_thread) = UnixStream::pair().map_err(DriverError::Setup)?;
        wake.set_nonblocking(true).map_err(DriverError::Setup)?;
        wake_thread
            .set_nonblocking(true)
            .map_err(DriverError::Setup)?;
        let (to_thread, from_daemon) = channel();
        let (to_daemon, events) = channel();
        let status = Arc::new(Mutex::new(FailoverStatus::default()));
        let feeds_watchdog = settings.main_alive.is_some();
        let watch_sshd =
            (settings.kind == Kind::FileHost).then(|| (to_thread.clone(), settings.timing.after));
        let mut thread = Thread::new(
            settings,
            socket,
            gate.clone(),
            from_daemon,
            to_daemon,
            wake_thread,
            status.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("failover".into())
            .spawn(move || thread.run())
            .map_err(DriverError::Setup)?;
        if let Some((to_thread, after)) = watch_sshd {
            std::thread::Builder::new()
                .name("failover-sshd".into())
                .spawn(move || watch_sshd_until_stopped(&to_thread, after))
                .map_err(DriverError::Setup)?;
        }
        Ok(Failover {
            to_thread,
            events,
            wake,
            status,
            thread: Some(handle),
            gate,
            feeds_watchdog,
        })
    }

    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.wake.as_fd()
    }

    /// The events waiting, oldest first.
    pub fn events(&self) -> Vec<Event> {
        let mut sink = [0u8; 64];
        while matches!(io::Read::read(&mut &self.wake, &mut sink), Ok(n) if n > 0) {}
        self.events.try_iter().collect()
    }

    pub fn set_role(&self, role: Role, epoch: u64) {
        let _ = self.to_thread.send(ToThread::Role { role, epoch });
    }

    pub fn promotion_failed(&self) {
        let _ = self.to_thread.send(ToThread::PromotionFailed);
    }

    pub fn status(&self) -> FailoverStatus {
        lock_status(&self.status).clone()
    }

    /// Stops the thread: a master frees its lease and gives up the virtual IP.
    pub fn stop(mut self) {
        let _ = self.to_thread.send(ToThread::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the sshd watcher looks.
const SSHD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches sshd apart from the failover thread (a slow /proc or a hung
/// systemctl must not hold up the lease): reports `Serving(false)` once
/// sshd has not taken logins for `after` (a restart of ssh, as in an
/// upgrade of openssh-server, is shorter), `Serving(true)` as soon as it
/// does again. Ends with the failover thread.
fn watch_sshd_until_stopped(to_thread: &Sender<ToThread>, after: Duration) {
    let mut down_since: Option<Instant> = None;
    let mut listener = None;
    loop {
        let now = Instant::now();
        down_since = if crate::sshd::takes_logins(&mut listener) {
            None
        } else {
            down_since.or(Some(now))
        };
        let serving = down_since.is_none_or(|since| now - since < after);
        // Sent every time (the core ignores no change): a failed send says
        // the failover thread has ended.
        if to_thread.send(ToThread::Serving(serving)).is_err() {
            return;
        }
        std::thread::sleep(SSHD_CHECK_EVERY);
    }
}

/// A poisoned lock only means a thread panicked while holding it; the
/// status is plain data, still fit to show.
fn lock_status(status: &Mutex<FailoverStatus>) -> MutexGuard<'_, FailoverStatus> {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Failover datagrams are network control (DSCP CS6): a switch that
/// queues by class sends them ahead of replication's bulk traffic.
fn set_network_control_priority(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(socket, sockopt::Ipv4Tos, &0xc0);
    let _ = setsockopt(socket, sockopt::Ipv6TClass, &0xc0);
}

/// Another host's address, resolved again when it fails.
struct Address {
    endpoint: Endpoint,
    resolved: Option<SocketAddr>,
    tried: Option<Instant>,
    heard: Option<(Instant, u64)>,
    pinged: Option<Instant>,
}

impl Address {
    fn new(endpoint: Endpoint) -> Address {
        Address {
            endpoint,
            resolved: None,
            tried: None,
            heard: None,
            pinged: None,
        }
    }

    fn get(&mut self, now: Instant) -> Option<SocketAddr> {
        if self.resolved.is_none() && self.tried.is_none_or(|t| now - t >= Duration::from_secs(5)) {
            self.tried = Some(now);
            self.resolved = (self.endpoint.host.as_str(), self.endpoint.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next());
            if self.resolved.is_none() {
                tracing::warn!(
                    "failover: cannot resolve {}; trying again in 5 s",
                    self.endpoint
                );
            }
        }
        self.resolved
    }

    fn is(&self, from: SocketAddr) -> bool {
        self.resolved
            .is_some_and(|a| a.ip().to_canonical() == from.ip().to_canonical())
    }

    fn reach(&self, now: Instant, after: Duration) -> Reach {
        Reach {
            address: self.endpoint.to_string(),
            reachable: self.heard.is_some_and(|(t, _)| now - t < after),
            last_heard: self.heard.map(|(_, unix)| unix),
        }
    }
}

struct Thread {
    core: Core,
    settings: Settings,
    socket: UdpSocket,
    gate: Arc<Gate>,
    from_daemon: Receiver<ToThread>,
    to_daemon: Sender<Event>,
    wake: UnixStream,
    status: Arc<Mutex<FailoverStatus>>,
    witness: Option<Address>,
    peer: Option<Address>,
    /// Where the virtual IP goes, once known.
    interface: Option<String>,
    vip_held: bool,
    vip_error: Option<String>,
    announce: VecDeque<Instant>,
    vip_checked: Option<Instant>,
    bad_logged: Vec<(std::net::IpAddr, Instant)>,
    refused: u64,
    /// The last Ask from the peer (a standby measures the master's silence by it).
    peer_asked: Option<Instant>,
    promoted: Option<(Instant, u64, Option<u64>)>,
    last_failover: Option<LastFailover>,
    watchdog: Option<Watchdog>,
}

/// systemd's watchdog, fed by this thread (see [`Settings::main_alive`]).
struct Watchdog {
    /// How long the main loop may go without a turn (the unit's WatchdogSec).
    main_patience: Duration,
    every: Duration,
    fed: Option<Instant>,
    main_alive: Arc<std::sync::atomic::AtomicU64>,
}

impl Watchdog {
    /// Half of `after`: a master stalled from the moment just after its
    /// last ask is killed, and fenced by ExecStopPost, with a quarter of
    /// `after` to spare before its lease can end.
    fn start(timing: Timing, main_alive: Arc<std::sync::atomic::AtomicU64>) -> Option<Watchdog> {
        let main_patience = sd_notify::watchdog_enabled()?;
        let deadline = timing.after / 2;
        let usec = u32::try_from(deadline.as_micros()).unwrap_or(u32::MAX);
        if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::WatchdogUsec(usec)]) {
            tracing::warn!("failover: cannot shorten systemd's watchdog: {err}");
            return None;
        }
        tracing::info!(
            "failover: systemd's watchdog now expects this daemon every {}: a stalled master is killed and fenced before its lease ends",
            crate::timefmt::format_duration(deadline)
        );
        Some(Watchdog {
            main_patience,
            every: deadline / 4,
            fed: None,
            main_alive,
        })
    }

    fn feed(&mut self, now: Instant) {
        if self.fed.is_some_and(|t| now - t < self.every) {
            return;
        }
        let last = self.main_alive.load(std::sync::atomic::Ordering::Relaxed);
        let main_ago = Duration::from_millis(crate::timefmt::unix_now_ms().saturating_sub(last));
        if main_ago > self.main_patience {
            return;
        }
        self.fed = Some(now);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }

    /// Back to the unit's own deadline (the daemon is stopping).
    fn restore(&self) {
        let usec = u32::try_from(self.main_patience.as_micros()).unwrap_or(u32::MAX);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::WatchdogUsec(usec)]);
    }
}

impl Thread {
    fn new(
        settings: Settings,
        socket: UdpSocket,
        gate: Arc<Gate>,
        from_daemon: Receiver<ToThread>,
        to_daemon: Sender<Event>,
        wake: UnixStream,
        status: Arc<Mutex<FailoverStatus>>,
    ) -> Thread {
        let now = Instant::now();
        let seed = unix_now() ^ u64::from(std::process::id()) << 32;
        let highest = (settings.kind == Kind::Witness)
            .then(|| load_witness_state(&settings.state_dir))
            .flatten();
        let vote = (settings.kind == Kind::FileHost)
            .then(|| load_vote(&settings.state_dir))
            .flatten();
        let core = Core::new(
            settings.node.clone(),
            settings.kind,
            settings.timing,
            now,
            seed,
            highest,
        )
        .with_vote(vote)
        .with_several_standbys(settings.several_standbys);
        let mut thread = Thread {
            witness: settings.witness.clone().map(Address::new),
            peer: settings.peer.clone().map(Address::new),
            interface: settings.interface.clone(),
            core,
            settings,
            socket,
            gate,
            from_daemon,
            to_daemon,
            wake,
            status,
            vip_held: false,
            vip_error: None,
            announce: VecDeque::new(),
            vip_checked: None,
            bad_logged: Vec::new(),
            refused: 0,
            peer_asked: None,
            promoted: None,
            last_failover: None,
            watchdog: None,
        };
        if let Some(alive) = thread.settings.main_alive.clone() {
            thread.watchdog = Watchdog::start(thread.settings.timing, alive);
        }
        thread.publish(now);
        if thread.settings.kind != Kind::Witness {
            let (role, epoch) = (thread.settings.role, thread.settings.epoch);
            let actions = thread.core.set_role(role, epoch, now);
            thread.carry_out(actions, None, now);
        }
        thread
    }

    fn run(&mut self) {
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        loop {
            loop {
                match self.from_daemon.try_recv() {
                    Ok(ToThread::Stop) | Err(TryRecvError::Disconnected) => {
                        self.shut_down();
                        return;
                    }
                    Ok(ToThread::Role { role, epoch }) => {
                        let now = Instant::now();
                        let actions = self.core.set_role(role, epoch, now);
                        self.carry_out(actions, None, now);
                    }
                    Ok(ToThread::Serving(serving)) => {
                        let now = Instant::now();
                        let actions = self.core.set_serving(serving, now);
                        self.carry_out(actions, None, now);
                    }
                    Ok(ToThread::PromotionFailed) => {
                        let now = Instant::now();
                        let actions = self.core.promotion_failed(now);
                        self.promoted = None;
                        self.carry_out(actions, None, now);
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = Instant::now();
                    self.on_datagram(buf.get(..n).unwrap_or(&[]), from, now);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!("failover: cannot receive: {e}");
                    std::thread::sleep(POLL);
                }
            }
            let now = Instant::now();
            if let Some(w) = &mut self.watchdog {
                w.feed(now);
            }
            let actions = self.core.tick(now);
            self.carry_out(actions, None, now);
            self.keep_vip(now);
            self.keep_in_touch(now);
            self.publish(now);
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        let message = match wire::decode(&self.settings.key, datagram) {
            Ok(m) => m,
            Err(err) => {
                self.refused += 1;
                self.bad_logged.retain(|(_, t)| now - *t < BAD_LOG_EVERY);
                // Bounded: a flood from many addresses or ports logs a few
                // lines a minute, not one each.
                let ip = from.ip().to_canonical();
                if self.bad_logged.len() < 16 && !self.bad_logged.iter().any(|(a, _)| *a == ip) {
                    self.bad_logged.push((ip, now));
                    tracing::warn!(
                        "failover: ignored a datagram from {from}: {err} (logged once a minute per address)"
                    );
                }
                return;
            }
        };
        let unix = unix_now();
        for address in [&mut self.witness, &mut self.peer].into_iter().flatten() {
            if address.is(from) {
                address.heard = Some((now, unix));
            }
        }
        if matches!(message.body, super::core::Body::Ask { .. })
            && self.peer.as_ref().is_some_and(|p| p.is(from))
        {
            self.peer_asked = Some(now);
        }
        let actions = self.core.on_message(message, now);
        self.carry_out(actions, Some(from), now);
    }

    fn send(&mut self, to: Target, message: &Message, sender: Option<SocketAddr>, now: Instant) {
        let address = match to {
            Target::Sender => sender,
            Target::Witness => self.witness.as_mut().and_then(|a| a.get(now)),
            Target::Peer => self.peer.as_mut().and_then(|a| a.get(now)),
        };
        let Some(mut address) = address else {
            return;
        };
        // A dual-stack (IPv6) socket sends to IPv4 hosts at their mapped address.
        if let (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) = (address, self.socket.local_addr()) {
            address = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
        }
        let datagram = wire::encode(&self.settings.key, message);
        if let Err(e) = self.socket.send_to(&datagram, address) {
            tracing::debug!("failover: cannot send to {address}: {e}");
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>, sender: Option<SocketAddr>, now: Instant) {
        // A witness that could not remember a grant must not give it: a
        // restart would forget the epoch and could grant an older one again.
        let mut unsaved = false;
        for action in actions {
            match action {
                Action::Send { .. } if unsaved => {}
                Action::Send { to, message } => self.send(to, &message, sender, now),
                Action::Writable { writable, reason } => self.set_writable(writable, reason, now),
                Action::Promote { epoch, reason } => {
                    let silent = self
                        .peer_asked
                        .map(|t| u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX));
                    self.promoted = Some((now, epoch, silent));
                    self.tell(Event::Promote { epoch, reason });
                }
                Action::StepDown { epoch, master } => self.tell(Event::StepDown { epoch, master }),
                Action::Persist(holder) => {
                    unsaved = !save_witness_state(&self.settings.state_dir, &holder);
                }
                Action::RememberVote(holder) => save_vote(&self.settings.state_dir, &holder),
                Action::Journal { warn: true, line } => tracing::warn!("failover: {line}"),
                Action::Journal { warn: false, line } => tracing::info!("failover: {line}"),
            }
        }
    }

    fn tell(&mut self, event: Event) {
        let _ = self.to_daemon.send(event);
        let _ = self.wake.write(&[1]);
    }

    /// The lease was won or lost: the drop-in, the sessions, the virtual IP.
    fn set_writable(&mut self, writable: bool, reason: String, now: Instant) {
        if writable {
            if let Err(err) =
                self.gate
                    .set_lease(&self.settings.data_dir, &self.settings.sync_root, true)
            {
                tracing::error!("failover: users cannot write yet: {err}");
            }
            self.add_vip(now);
            if let Some((at, epoch, silent)) = self.promoted.take() {
                let record = LastFailover {
                    at: unix_now(),
                    epoch,
                    master_silent_ms: silent,
                    grant_to_writable_ms: u64::try_from((now - at).as_millis()).ok(),
                };
                tracing::warn!(
                    "failover: this host took over at epoch {epoch}: the master had been silent for {}, and users could write {} ms after the witness's grant",
                    silent.map_or("an unknown time".into(), |ms| format!("{ms} ms")),
                    record.grant_to_writable_ms.unwrap_or(0)
                );
                self.last_failover = Some(record);
            }
            self.tell(Event::Unfenced { reason });
        } else {
            // The virtual IP first: no new client reaches this host. Then
            // the sessions, before anything that may wait (the gate's lock
            // while the main loop runs sshd -t, sshd -t itself); then the
            // read-only drop-in, and the sessions again for the logins that
            // completed meanwhile.
            self.remove_vip();
            let end_sessions = || {
                let connections = crate::sshd::connection_pids();
                crate::sshd::end_user_sessions_of(&connections)
                    + crate::sshd::end_logins_of(&connections)
            };
            let mut ended = end_sessions();
            if let Err(err) =
                self.gate
                    .set_lease(&self.settings.data_dir, &self.settings.sync_root, false)
            {
                tracing::error!("failover: {err}");
            }
            ended += end_sessions();
            if ended > 0 {
                tracing::warn!(
                    "failover: ended {ended} user session process(es): the lease ran out"
                );
            }
            self.tell(Event::Fenced { reason });
        }
    }

    fn vip_interface(&mut self) -> Option<String> {
        if self.interface.is_none() {
            let peer = self
                .peer
                .as_mut()
                .and_then(|p| p.get(Instant::now()))
                .or_else(|| self.witness.as_mut().and_then(|w| w.get(Instant::now())))?;
            match super::vip::interface_towards(peer.ip()) {
                Ok(name) => self.interface = Some(name),
                Err(err) => self.vip_error = Some(err.to_string()),
            }
        }
        self.interface.clone()
    }

    fn add_vip(&mut self, now: Instant) {
        let Some(vip) = self.settings.virtual_ip else {
            return;
        };
        let Some(interface) = self.vip_interface() else {
            tracing::error!(
                "failover: cannot tell which interface gets the virtual IP {vip}: {}; set [failover] interface",
                self.vip_error.clone().unwrap_or_default()
            );
            return;
        };
        match super::vip::add(&vip, &interface) {
            Ok(_) => {
                self.vip_held = true;
                self.vip_error = None;
                tracing::info!("failover: took the virtual IP {vip} on {interface}");
                self.announce = ANNOUNCE_AT_MS
                    .iter()
                    .map(|ms| now + Duration::from_millis(*ms))
                    .collect();
            }
            Err(err) => {
                tracing::error!("failover: {err}");
                self.vip_error = Some(err.to_string());
            }
        }
    }

    fn remove_vip(&mut self) {
        self.announce.clear();
        let Some(vip) = self.settings.virtual_ip else {
            return;
        };
        let Some(interface) = self.vip_interface() else {
            return;
        };
        match super::vip::remove(&vip, &interface) {
            Ok(_) => {
                if self.vip_held {
                    tracing::info!("failover: gave up the virtual IP {vip} on {interface}");
                }
                self.vip_held = false;
            }
            Err(err) => {
                tracing::error!("failover: {err}");
                self.vip_error = Some(err.to_string());
            }
        }
    }

    /// Announces on schedule, and once a second puts the address right if
    /// someone changed it behind the daemon's back (or a crash left it).
    fn keep_vip(&mut self, now: Instant) {
        let Some(vip) = self.settings.virtual_ip else {
            return;
        };
        while self.announce.front().is_some_and(|t| *t <= now) {
            self.announce.pop_front();
            if let Some(interface) = self.interface.clone()
                && let Err(err) = super::vip::announce(&vip, &interface)
            {
                tracing::warn!("failover: {err}");
                self.vip_error = Some(err.to_string());
            }
        }
        if self
            .vip_checked
            .is_some_and(|t| now - t < Duration::from_secs(1))
            || self.settings.kind != Kind::FileHost
        {
            return;
        }
        self.vip_checked = Some(now);
        let should = self.core.view(now).writable;
        let Some(interface) = self.vip_interface() else {
            return;
        };
        match super::vip::holds(&vip, &interface) {
            Ok(held) if held && !should => {
                tracing::warn!(
                    "failover: {interface} holds the virtual IP {vip} but this host may not take uploads; removing it"
                );
                self.remove_vip();
            }
            Ok(held) if !held && should => {
                tracing::warn!(
                    "failover: the virtual IP {vip} went missing on {interface}; adding it again"
                );
                self.add_vip(now);
            }
            Ok(held) => self.vip_held = held,
            Err(err) => self.vip_error = Some(err.to_string()),
        }
    }

    /// A host that has not heard another for half of `after` pings it, so
    /// the status knows whether it is there (a standby asks the witness
    /// nothing while the master is alive).
    fn keep_in_touch(&mut self, now: Instant) {
        let quiet = self.settings.timing.after / 2;
        for to in [Target::Witness, Target::Peer] {
            let address = match to {
                Target::Witness => self.witness.as_mut(),
                _ => self.peer.as_mut(),
            };
            let Some(address) = address else {
                continue;
            };
            let recent = |t: Option<Instant>| t.is_some_and(|t| now - t < quiet);
            if recent(address.heard.map(|(t, _)| t)) || recent(address.pinged) {
                continue;
            }
            address.pinged = Some(now);
            let ping = self.core.ping(now);
            self.send(to, &ping, None, now);
        }
    }

    fn publish(&mut self, now: Instant) {
        let view = self.core.view(now);
        let after = self.settings.timing.after;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let status = FailoverStatus {
            mode: match self.settings.kind {
                Kind::FileHost => "auto".into(),
                Kind::Manual => "manual".into(),
                Kind::Witness => "witness".into(),
            },
            after_ms: ms(after),
            port: self.settings.port,
            lease_left_ms: view
                .lease_until
                .map(|u| ms(u.saturating_duration_since(now))),
            granted_by: view.granted_by,
            writable: view.writable,
            promised: view.promised.map(|(node, epoch, until)| {
                (node, epoch, ms(until.saturating_duration_since(now)))
            }),
            candidate: view.candidate,
            witness: self.witness.as_ref().map(|w| w.reach(now, after)),
            peer: self.peer.as_ref().map(|p| p.reach(now, after)),
            virtual_ip: self.settings.virtual_ip.map(|v| VipSeen {
                address: v.to_string(),
                interface: self.interface.clone().unwrap_or_default(),
                held_here: self.vip_held,
                error: self.vip_error.clone(),
            }),
            last_failover: self.last_failover.clone(),
            refused_datagrams: self.refused,
            unfenced: None,
            sshd_down: !view.serving,
            manual_master: view.manual_master.map(|h| (h.node, h.epoch)),
            vote: view.vote,
        };
        let mut shared = lock_status(&self.status);
        // While an install holds the gate, the last known answer stands.
        let unfenced = self
            .gate
            .unfenced_now()
            .unwrap_or_else(|| shared.unfenced.clone());
        *shared = FailoverStatus { unfenced, ..status };
    }

    /// The daemon stops: users stop writing here (the lease will not be
    /// renewed), but the lease is not released: a restart within `after`
    /// (an upgrade) keeps the role; a longer stop lets the standby take over.
    fn shut_down(&mut self) {
        if let Some(w) = &self.watchdog {
            w.restore();
        }
        let now = Instant::now();
        if self.core.view(now).writable {
            self.set_writable(false, "the daemon stops".into(), now);
        } else if self.vip_held {
            self.remove_vip();
        }
    }
}

/// The master this file host voted for before a restart; none (it is then
/// no master's voter until one asks it) if missing or unreadable.
fn load_vote(state_dir: &std::path::Path) -> Option<Holder> {
    let path = state_dir.join(VOTE_STATE_FILE);
    let text = std::fs::read(&path).ok()?;
    serde_json::from_slice(&text)
        .inspect_err(|err| {
            tracing::warn!(path = %path.display(), "failover: the record of this host's vote is unreadable ({err}); it takes over automatically only once a master has asked it for its vote again");
        })
        .ok()
}

fn save_vote(state_dir: &std::path::Path, holder: &Holder) {
    let path = state_dir.join(VOTE_STATE_FILE);
    let text = serde_json::to_vec_pretty(holder).unwrap_or_default();
    if let Err(err) = crate::fsutil::write_atomic(&path, &text, 0o600, None) {
        tracing::warn!(path = %path.display(), "failover: cannot record that this host votes for {} at epoch {} ({err}); after a restart it would not take over from that master automatically; fix: make the state folder writable", holder.node, holder.epoch);
    }
}

fn load_witness_state(state_dir: &std::path::Path) -> Option<Holder> {
    let path = state_dir.join(WITNESS_STATE_FILE);
    let text = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(holder) => Some(holder),
        Err(err) => {
            tracing::error!(path = %path.display(), "failover: the witness's state is unreadable ({err}); starting from epoch 0, and granting nothing new for `after`");
            None
        }
    }
}

/// Returns false if the grant could not be made durable (then it is not sent).
fn save_witness_state(state_dir: &std::path::Path, holder: &Holder) -> bool {
    let path = state_dir.join(WITNESS_STATE_FILE);
    let text = serde_json::to_vec_pretty(holder).unwrap_or_default();
    // The file is synced before its rename and the folder after it
    // (write_atomic), so a power cut right after the grant cannot undo it.
    let saved = crate::fsutil::write_atomic(&path, &text, 0o600, None);
    match saved {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(path = %path.display(), "failover: cannot remember the epoch granted ({err}), so the grant to {} at epoch {} is not sent; fix: make the state folder writable", holder.node, holder.epoch);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_write_only_on_a_master_with_the_lease_in_automatic_mode() {
        let state = |wanted, auto, lease| GateState {
            wanted,
            auto,
            lease,
            unfenced: None,
        };
        assert_eq!(
            state(Role::Master, false, false).drop_in_role(),
            Role::Master
        );
        assert_eq!(state(Role::Master, true, true).drop_in_role(), Role::Master);
        assert_eq!(
            state(Role::Master, true, false).drop_in_role(),
            Role::Standby
        );
        for (auto, lease) in [(false, false), (true, true), (true, false)] {
            assert_eq!(
                state(Role::Standby, auto, lease).drop_in_role(),
                Role::Standby
            );
        }
    }

    #[test]
    fn the_witness_remembers_the_highest_grant_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_witness_state(dir.path()), None);
        let holder = Holder {
            node: "bravo".into(),
            epoch: 7,
            manual: true,
            voter: None,
        };
        assert!(save_witness_state(dir.path(), &holder));
        assert_eq!(load_witness_state(dir.path()), Some(holder));
        // A file written before `manual` existed still loads.
        std::fs::write(
            dir.path().join(WITNESS_STATE_FILE),
            r#"{"node": "alpha", "epoch": 3}"#,
        )
        .unwrap();
        assert_eq!(
            load_witness_state(dir.path()).map(|h| (h.epoch, h.manual)),
            Some((3, false))
        );
        std::fs::write(dir.path().join(WITNESS_STATE_FILE), "{not json").unwrap();
        assert_eq!(load_witness_state(dir.path()), None);
    }
}
