//! Automatic failover (`[failover] mode = "auto"`): a witness vote, a master
//! lease, a floating IP. [`core`] decides, without I/O; [`driver`] owns the
//! socket, the clock and the effects; [`wire`] and [`key`] authenticate;
//! [`vip`] moves the virtual IP.

pub mod core;
pub mod driver;
pub mod key;
pub mod vip;
pub mod wire;

use std::path::{Path, PathBuf};

use crate::config::{Config, FailoverMode, HostKind};

/// What the daemon fences with, saved in the runtime dir at start: the
/// unit's ExecStopPost fences with it even when config.toml no longer loads
/// (an edit since the start, a key file made unreadable).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceInfo {
    pub data_dir: PathBuf,
    /// Where the peer's sync key is chrooted; missing (saved by an older
    /// version, or shared storage not in use): the data dir.
    #[serde(default)]
    pub sync_root: Option<PathBuf>,
    pub virtual_ip: Option<String>,
    /// The interface the address was given to, once known.
    pub interface: Option<String>,
    /// This host was the master: if sshd refuses the read-only drop-in,
    /// its listener is stopped (a standby keeps it, for replication).
    #[serde(default)]
    pub master: bool,
}

/// Where the virtual IP goes: `[failover] interface`, else the one that
/// routes to the peer (`None` if that cannot be told).
pub fn vip_interface(failover: &crate::config::FailoverConfig) -> Option<String> {
    failover.interface.clone().or_else(|| {
        let peer = failover.peer.as_ref()?;
        let ip = std::net::ToSocketAddrs::to_socket_addrs(&(peer.host.as_str(), peer.port))
            .ok()?
            .next()?
            .ip();
        vip::interface_towards(ip).ok()
    })
}

/// The file [`FenceInfo`] is kept in, in the runtime dir.
pub const FENCE_FILE: &str = "fence.json";

pub fn save_fence_info(runtime_dir: &Path, info: &FenceInfo) {
    let text = serde_json::to_vec_pretty(info).unwrap_or_default();
    if let Err(err) = crate::fsutil::write_atomic(&runtime_dir.join(FENCE_FILE), &text, 0o600, None)
    {
        tracing::error!(
            path = %runtime_dir.display(),
            "cannot save what to fence with if the daemon dies: {err}"
        );
    }
}

/// After the daemon ended (the unit's `ExecStopPost`): in automatic
/// failover, users become read-only and the virtual IP goes, because nobody
/// renews this host's lease any more. Goes by what the daemon saved at start
/// ([`FenceInfo`]), else by the config; returns what it did, in words.
pub fn fence_after_stop(config: Option<&Config>, runtime_dir: &Path) -> Vec<String> {
    let saved: Option<FenceInfo> = std::fs::read(runtime_dir.join(FENCE_FILE))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    let from_config = config
        .filter(|c| c.failover.mode == FailoverMode::Auto && c.host == HostKind::FileHost)
        .map(|c| FenceInfo {
            data_dir: c.data_dir.clone(),
            sync_root: Some(c.sync_root()),
            virtual_ip: c.failover.virtual_ip.map(|v| v.to_string()),
            interface: vip_interface(&c.failover),
            // Without the daemon's record, assume the worst.
            master: true,
        });
    let Some(info) = saved.or(from_config) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    // On a standby sshd keeps running even if it refuses the config
    // (replication needs it; the users' sessions end below).
    match crate::sshd::install_fence(
        &info.data_dir,
        info.sync_root.as_deref().unwrap_or(&info.data_dir),
        info.master,
    ) {
        Ok(_) => done.push("users are read-only (the daemon is not running)".to_string()),
        Err(err) => done.push(format!("ERROR: {err}")),
    }
    let connections = crate::sshd::connection_pids();
    let ended =
        crate::sshd::end_user_sessions_of(&connections) + crate::sshd::end_logins_of(&connections);
    if ended > 0 {
        done.push(format!("ended {ended} user session process(es)"));
    }
    if let Some(text) = &info.virtual_ip
        && let Ok(vip) = vip::VirtualIp::parse(text)
    {
        match info.interface.as_deref().map(|i| (vip::remove(&vip, i), i)) {
            Some((Ok(true), i)) => done.push(format!("gave up the virtual IP {vip} on {i}")),
            Some((Ok(false), _)) => {}
            Some((Err(err), _)) => done.push(format!("ERROR: {err}")),
            None => done.push(format!(
                "cannot tell which interface may hold the virtual IP {vip}; set [failover] interface"
            )),
        }
    }
    done
}
