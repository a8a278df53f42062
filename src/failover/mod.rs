//! Automatic failover (`[failover] mode = "auto"`): a witness vote, a master
//! lease, a floating IP. [`core`] decides, without I/O; [`driver`] owns the
//! socket, the clock and the effects; [`wire`] and [`key`] authenticate;
//! [`vip`] moves the virtual IP.

pub mod core;
pub mod driver;
pub mod key;
pub mod vip;
pub mod wire;

use crate::config::{Config, FailoverMode, HostKind, Role};

/// After the daemon ended (the unit's `ExecStopPost`): in automatic
/// failover, users become read-only and the virtual IP goes, because nobody
/// renews this host's lease any more. Returns what it did, in words.
pub fn fence_after_stop(config: &Config) -> Vec<String> {
    let f = &config.failover;
    if f.mode != FailoverMode::Auto || config.host != HostKind::FileHost {
        return Vec::new();
    }
    let mut done = Vec::new();
    match crate::sshd::install_and_reload(&config.data_dir, Role::Standby) {
        Ok(_) => done.push("users are read-only (the daemon is not running)".to_string()),
        Err(err) => done.push(format!("ERROR: {err}")),
    }
    let connections = crate::sshd::connection_pids();
    let ended =
        crate::sshd::end_user_sessions_of(&connections) + crate::sshd::end_logins_of(&connections);
    if ended > 0 {
        done.push(format!("ended {ended} user session process(es)"));
    }
    if let Some(vip) = &f.virtual_ip {
        let interface = f.interface.clone().or_else(|| {
            let peer = f.peer.as_ref()?;
            let ip = std::net::ToSocketAddrs::to_socket_addrs(&(peer.host.as_str(), peer.port))
                .ok()?
                .next()?
                .ip();
            vip::interface_towards(ip).ok()
        });
        match interface.map(|i| (vip::remove(vip, &i), i)) {
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
