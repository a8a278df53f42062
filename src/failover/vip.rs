//! The floating (virtual) IP that follows the master: put on an interface,
//! taken off it, and announced to the network, natively through the kernel.
//!
//! Why native and not `ip address add` / `arping`: the daemon runs in a
//! sandbox where spawning tools is slow and their absence or version would be
//! one more thing to break a failover; the three netlink messages and two
//! packets needed here are small enough to build by hand ([`add`] and
//! [`remove`] speak rtnetlink like `ip address` does, [`announce`] sends what
//! `arping -U` and `ndisend` send).
//!
//! Every function is idempotent or harmless to repeat, so the failover loop
//! can simply call them again after any error.
//!
//! What the process needs: CAP_NET_ADMIN for [`add`]/[`remove`], CAP_NET_RAW
//! for [`announce`], and the address families AF_NETLINK (also used by
//! `getifaddrs`), AF_PACKET (gratuitous ARP) and AF_INET6 (Neighbor
//! Advertisement). A systemd unit must allow them in `CapabilityBoundingSet=`
//! and `RestrictAddressFamilies=`; the error messages say so when they are missing.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::{InterfaceFlags, if_nametoindex};
use nix::sys::socket::{
    self, AddressFamily, LinkAddr, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    SockaddrIn6, SockaddrStorage, sockopt,
};
use nix::sys::time::TimeVal;

/// An address and its prefix length, as written in the config (`ADDR/PREFIX`).
///
/// The prefix matters to the kernel: it adds a route for the subnet and, for
/// IPv4, keys the address by address *and* prefix, so [`remove`] must be given
/// the same prefix [`add`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtualIp {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl VirtualIp {
    /// Parses `192.0.2.10/24` or `2001:db8::10/64`; a bare address means a
    /// host address (/32, /128). Refuses what cannot work as a virtual IP
    /// (loopback, multicast, broadcast, IPv4-mapped, the subnet's own network
    /// or broadcast address, /0 which would claim every route) with a message
    /// that says what is wrong, fit for a config error.
    pub fn parse(text: &str) -> Result<VirtualIp, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(
                "the virtual IP is empty; write ADDRESS/PREFIX, e.g. 192.0.2.10/24 or 2001:db8::10/64"
                    .into(),
            );
        }
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        if addr_text.starts_with('[') {
            return Err(format!(
                "{text:?}: write the IPv6 address without brackets, e.g. 2001:db8::10/64"
            ));
        }
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!(
                "{addr_text:?} is not an IPv4 or IPv6 address; write ADDRESS/PREFIX, e.g. 192.0.2.10/24 or 2001:db8::10/64"
            )
        })?;
        let max = max_prefix(addr);
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                let number =
                    if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) {
                        p.parse::<u8>().ok()
                    } else {
                        None
                    };
                match number {
                    Some(n) if (1..=max).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "the prefix length {p:?} in {text:?} must be a number from 1 to {max} for an {} address",
                            family_name(addr)
                        ));
                    }
                }
            }
        };
        if let Some(problem) = unusable(addr, prefix) {
            return Err(format!("{text:?}: {problem}"));
        }
        Ok(VirtualIp { addr, prefix })
    }
}

impl FromStr for VirtualIp {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        VirtualIp::parse(text)
    }
}

impl fmt::Display for VirtualIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Why `addr/prefix` cannot be a virtual IP, if it cannot.
fn unusable(addr: IpAddr, prefix: u8) -> Option<String> {
    let what = match addr {
        IpAddr::V4(a) if a.is_unspecified() => "the unspecified address",
        IpAddr::V4(a) if a.is_loopback() => "a loopback address",
        IpAddr::V4(a) if a.is_multicast() => "a multicast address",
        IpAddr::V4(a) if a.is_broadcast() => "the broadcast address",
        IpAddr::V6(a) if a.is_unspecified() => "the unspecified address",
        IpAddr::V6(a) if a.is_loopback() => "the loopback address",
        IpAddr::V6(a) if a.is_multicast() => "a multicast address",
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            return Some(format!(
                "{addr} is an IPv4-mapped IPv6 address; write the IPv4 address itself, e.g. {}/24",
                addr.to_canonical()
            ));
        }
        // A subnet's first (and, for IPv4, last) address is not a host's:
        // the network and broadcast addresses, the IPv6 subnet-router anycast.
        IpAddr::V4(a) if prefix <= 30 => {
            let host = u32::MAX >> prefix;
            let bits = u32::from(a);
            if bits & host == 0 {
                return Some(format!(
                    "{addr} is the network address of {addr}/{prefix}, not a host address; pick another address in the subnet"
                ));
            }
            if bits & host == host {
                return Some(format!(
                    "{addr} is the broadcast address of {}/{prefix}, not a host address; pick another address in the subnet",
                    Ipv4Addr::from(bits & !host)
                ));
            }
            return None;
        }
        IpAddr::V6(a) if prefix <= 126 && u128::from(a) & (u128::MAX >> prefix) == 0 => {
            return Some(format!(
                "{addr} is the subnet-router anycast address of {addr}/{prefix}, not a host address; pick another address in the subnet"
            ));
        }
        _ => return None,
    };
    Some(format!(
        "{addr} is {what}; a virtual IP must be a unicast address the other machines can reach"
    ))
}

/// What went wrong, on which interface, and how to fix it: each message is
/// meant to be read by an admin in the journal.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error(
        "network interface {interface:?} does not exist; fix: name an interface listed by `ip link`, or create it before sftp-ha starts"
    )]
    NoSuchInterface { interface: String },
    #[error("cannot {action} on {interface}: {source}; fix: {hint}")]
    Kernel {
        /// What was being done, e.g. "add 192.0.2.10/24".
        action: String,
        interface: String,
        #[source]
        source: Errno,
        hint: String,
    },
    #[error(
        "cannot add {vip} on {interface}: the interface already has {addr}/{held}, and IPv6 allows an address only once per interface; fix: remove it (`ip address del {addr}/{held} dev {interface}`) or give the virtual IP the prefix /{held}",
        addr = vip.addr
    )]
    PrefixConflict {
        vip: VirtualIp,
        interface: String,
        held: u8,
    },
    #[error(
        "{interface} has no Ethernet address, so a virtual IP on it cannot be announced with ARP or Neighbor Advertisement; fix: put the virtual IP on an Ethernet interface (or a bond, bridge or VLAN on one)"
    )]
    NotEthernet { interface: String },
    #[error(
        "cannot list this host's network interfaces (getifaddrs): {source}; fix: allow AF_NETLINK in the systemd unit's RestrictAddressFamilies="
    )]
    ListInterfaces {
        #[source]
        source: Errno,
    },
    #[error(
        "cannot find the route from this host to the peer {peer}: {source}; fix: check the peer address and this host's routes (`ip route get {peer}`)"
    )]
    NoRoute {
        peer: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "the peer {peer} is an address of this host, so it shows no interface for the virtual IP; fix: set the peer to the other host's address"
    )]
    PeerIsLocal { peer: IpAddr },
    #[error(
        "this host reaches the peer {peer} from {local}, but no interface holds {local} any more; fix: retry, and check `ip address` and `ip route get {peer}`"
    )]
    NoInterfaceFor { peer: IpAddr, local: IpAddr },
}

/// The interface whose address this host uses to reach `peer`: the natural
/// home of the virtual IP when the config names no interface, because the
/// two hosts and their clients share that network.
///
/// Asks the routing table by connecting a UDP socket (which sends nothing)
/// and reading the source address it picked, then finds the interface that
/// holds that address.
pub fn interface_towards(peer: IpAddr) -> Result<String, VipError> {
    let peer = peer.to_canonical();
    let no_route = |source| VipError::NoRoute { peer, source };
    let any: SocketAddr = match peer {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(any).map_err(no_route)?;
    // Port 9 (discard): any port does, as a UDP connect sends no packet.
    probe.connect((peer, 9)).map_err(no_route)?;
    let local = probe.local_addr().map_err(no_route)?.ip();
    if local == peer {
        return Err(VipError::PeerIsLocal { peer });
    }
    let list = getifaddrs().map_err(|source| VipError::ListInterfaces { source })?;
    for entry in list {
        if entry.address.as_ref().and_then(ip_of) != Some(local) {
            continue;
        }
        if entry.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            return Err(VipError::PeerIsLocal { peer });
        }
        return Ok(device_name(&entry.interface_name).to_string());
    }
    Err(VipError::NoInterfaceFor { peer, local })
}

/// Puts the virtual IP on `interface`. `Ok(true)` if it was added now,
/// `Ok(false)` if the interface already had it (so repeating is harmless).
/// IPv6 addresses skip duplicate address detection (IFA_F_NODAD): the
/// standby takes the address over precisely because the other host stopped
/// answering, and DAD would keep it unusable for a second or more.
pub fn add(vip: &VirtualIp, interface: &str) -> Result<bool, VipError> {
    let index = interface_index(interface)?;
    match netlink_request(Change::Add, vip, index) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => {
            let held = prefixes_held(vip.addr, interface)?;
            match held.first() {
                _ if held.contains(&vip.prefix) => Ok(false),
                Some(&other) => Err(VipError::PrefixConflict {
                    vip: *vip,
                    interface: interface.to_string(),
                    held: other,
                }),
                None => Err(change_error("add", vip, interface, Errno::EEXIST)),
            }
        }
        Err(Errno::ENODEV) => Err(no_such_interface(interface)),
        Err(errno) => Err(change_error("add", vip, interface, errno)),
    }
}

/// Takes the virtual IP off `interface`. `Ok(true)` if it was removed now,
/// `Ok(false)` if the interface did not have it (with this prefix).
pub fn remove(vip: &VirtualIp, interface: &str) -> Result<bool, VipError> {
    let index = interface_index(interface)?;
    match netlink_request(Change::Remove, vip, index) {
        Ok(()) => Ok(true),
        Err(Errno::EADDRNOTAVAIL) => Ok(false),
        Err(Errno::ENODEV) => Err(no_such_interface(interface)),
        Err(errno) => Err(change_error("remove", vip, interface, errno)),
    }
}

/// Whether `interface` holds the virtual IP (same address and prefix) now:
/// what the failover loop checks to notice that someone removed it.
pub fn holds(vip: &VirtualIp, interface: &str) -> Result<bool, VipError> {
    interface_index(interface)?;
    Ok(prefixes_held(vip.addr, interface)?.contains(&vip.prefix))
}

/// Tells the network once that the virtual IP is now at this host's MAC
/// address, so switches and neighbours stop sending its traffic to the old
/// master without waiting for their caches to expire. Call it after [`add`],
/// and a few times (packets get lost).
///
/// IPv4: a gratuitous ARP (a broadcast ARP request whose sender and target
/// IP are both the virtual IP), sent raw on an AF_PACKET socket. IPv6: an
/// unsolicited Neighbor Advertisement to all nodes (ff02::1) with the
/// override flag, from a raw ICMPv6 socket with hop limit 255 (receivers
/// drop NDP packets with any other) and the kernel computing the checksum.
pub fn announce(vip: &VirtualIp, interface: &str) -> Result<(), VipError> {
    let index = interface_index(interface)?;
    let (link, mac) = ethernet_address(interface)?;
    let fail = |step: &str, source: Errno| VipError::Kernel {
        action: format!("announce {vip} ({step})"),
        interface: interface.to_string(),
        source,
        hint: announce_hint(source, vip, interface),
    };
    let (packet, sent) = match vip.addr {
        IpAddr::V4(ip) => {
            let frame = gratuitous_arp(mac, ip);
            let fd = socket::socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                // Protocol 0: a socket that only sends and never queues received frames.
                None::<SockProtocol>,
            )
            .map_err(|e| fail("open a packet socket", e))?;
            let sent = socket::sendto(fd.as_raw_fd(), &frame, &link, MsgFlags::empty())
                .map_err(|e| fail("send a gratuitous ARP", e))?;
            (frame, sent)
        }
        IpAddr::V6(ip) => {
            let message = neighbor_advertisement(mac, ip);
            let fd = socket::socket(
                AddressFamily::Inet6,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::IcmpV6,
            )
            .map_err(|e| fail("open a raw ICMPv6 socket", e))?;
            socket::setsockopt(&fd, sockopt::Ipv6MulticastHops, &255)
                .map_err(|e| fail("set the hop limit to 255", e))?;
            // The scope id picks the interface for the link-local multicast group.
            let all_nodes = SockaddrIn6::from(SocketAddrV6::new(ALL_NODES, 0, 0, index));
            let sent = socket::sendto(fd.as_raw_fd(), &message, &all_nodes, MsgFlags::empty())
                .map_err(|e| fail("send a Neighbor Advertisement", e))?;
            (message, sent)
        }
    };
    if sent != packet.len() {
        return Err(fail("send the whole packet", Errno::EMSGSIZE));
    }
    Ok(())
}

/// ff02::1, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

// Values from <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>,
// <linux/if_ether.h>, <linux/if_arp.h> (checked against libc in the tests).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x001;
const NLM_F_ACK: u16 = 0x004;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RT_SCOPE_UNIVERSE: u8 = 0;
const ARPHRD_ETHER: u16 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ARPOP_REQUEST: u16 = 1;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINKADDR: u8 = 2;
/// Shortest Ethernet frame without its FCS; not every driver pads a short one.
const ETH_MIN_FRAME: usize = 60;
/// How long the kernel may take to answer a netlink request: it answers at
/// once, so this only bounds a wedged call.
const NETLINK_TIMEOUT_SECS: i64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
}

/// The RTM_NEWADDR / RTM_DELADDR request for `vip` on interface `index`, as
/// `ip address add|del ADDR/PREFIX dev IFACE` sends it: nlmsghdr, ifaddrmsg,
/// then IFA_LOCAL and IFA_ADDRESS both set to the address. Adding asks for
/// NLM_F_EXCL so that "already there" comes back as EEXIST, which is how
/// [`add`] tells the two cases apart.
fn address_request(change: Change, vip: &VirtualIp, index: u32, seq: u32) -> Vec<u8> {
    let (family, octets) = match vip.addr {
        IpAddr::V4(a) => (libc_family(AddressFamily::Inet), a.octets().to_vec()),
        IpAddr::V6(a) => (libc_family(AddressFamily::Inet6), a.octets().to_vec()),
    };
    let (kind, flags) = match change {
        Change::Add => (
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ),
        Change::Remove => (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK),
    };
    let ifa_flags = if change == Change::Add && vip.addr.is_ipv6() {
        IFA_F_NODAD
    } else {
        0
    };
    let attr_len = 4 + octets.len();
    let attr_space = attr_len.next_multiple_of(4);
    let total = NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * attr_space;
    let mut m = Vec::with_capacity(total);
    // nlmsghdr: length, type, flags, sequence, port id (0: the kernel fills it in).
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope, interface index.
    m.extend_from_slice(&[family, vip.prefix, ifa_flags, RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&index.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&octets);
        m.resize(m.len() + attr_space - attr_len, 0);
    }
    m
}

fn libc_family(family: AddressFamily) -> u8 {
    family as i32 as u8
}

/// The kernel's answer to request `seq` in one netlink datagram:
/// `Some(0)` if it was done, `Some(errno)` if refused, `None` if the
/// datagram does not answer it. A datagram that does not parse is EBADMSG.
fn ack_status(datagram: &[u8], seq: u32) -> Result<Option<i32>, Errno> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let len = ne_u32(datagram, at).ok_or(Errno::EBADMSG)? as usize;
        let kind = ne_u16(datagram, at + 4).ok_or(Errno::EBADMSG)?;
        let msg_seq = ne_u32(datagram, at + 8).ok_or(Errno::EBADMSG)?;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return Err(Errno::EBADMSG);
        }
        if kind == NLMSG_ERROR && msg_seq == seq {
            // struct nlmsgerr: a negative errno, 0 for an acknowledgement.
            let error = ne_u32(datagram, at + NLMSG_HDRLEN).ok_or(Errno::EBADMSG)? as i32;
            return Ok(Some(error.wrapping_neg()));
        }
        at += len.next_multiple_of(4);
    }
    Ok(None)
}

fn ne_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// Sends one address change to the kernel and waits for its acknowledgement.
fn netlink_request(change: Change, vip: &VirtualIp, index: u32) -> Result<(), Errno> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let request = address_request(change, vip, index, seq);
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let kernel = NetlinkAddr::new(0, 0);
    socket::bind(fd.as_raw_fd(), &kernel)?;
    socket::setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(NETLINK_TIMEOUT_SECS, 0),
    )?;
    if socket::sendto(fd.as_raw_fd(), &request, &kernel, MsgFlags::empty())? != request.len() {
        return Err(Errno::EMSGSIZE);
    }
    let mut buf = [0u8; 8192];
    // Nothing else is sent to this socket; the bound only guards against a loop.
    for _ in 0..16 {
        let (n, from) = socket::recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf)?;
        if from.is_some_and(|a| a.pid() != 0) {
            continue; // not from the kernel
        }
        match ack_status(buf.get(..n).ok_or(Errno::EBADMSG)?, seq)? {
            Some(0) => return Ok(()),
            Some(errno) => return Err(Errno::from_raw(errno)),
            None => {}
        }
    }
    Err(Errno::EBADMSG)
}

fn interface_index(interface: &str) -> Result<u32, VipError> {
    if interface.is_empty() {
        return Err(no_such_interface(interface));
    }
    match if_nametoindex(interface) {
        Ok(index) => Ok(index),
        // EINVAL: a NUL in the name; glibc says ENODEV for too long a name too.
        Err(Errno::ENODEV | Errno::EINVAL) => Err(no_such_interface(interface)),
        Err(source) => Err(VipError::Kernel {
            action: "look up the interface".into(),
            interface: interface.to_string(),
            source,
            hint: "check `ip link`; the systemd unit must allow AF_UNIX or AF_INET in RestrictAddressFamilies=".into(),
        }),
    }
}

fn no_such_interface(interface: &str) -> VipError {
    VipError::NoSuchInterface {
        interface: interface.to_string(),
    }
}

/// The prefixes with which `interface` holds `addr` (usually none or one).
fn prefixes_held(addr: IpAddr, interface: &str) -> Result<Vec<u8>, VipError> {
    let list = getifaddrs().map_err(|source| VipError::ListInterfaces { source })?;
    Ok(list
        .filter(|entry| device_name(&entry.interface_name) == interface)
        .filter(|entry| entry.address.as_ref().and_then(ip_of) == Some(addr))
        .map(|entry| match entry.netmask.as_ref().and_then(ip_of) {
            Some(IpAddr::V4(mask)) => u32::from(mask).count_ones() as u8,
            Some(IpAddr::V6(mask)) => u128::from(mask).count_ones() as u8,
            None => max_prefix(addr),
        })
        .collect())
}

/// getifaddrs names an IPv4 address by its label, `eth0:1` for an alias made
/// with `ip address add ... label eth0:1`; the device is the part before the
/// colon (a colon is not allowed in a device name).
fn device_name(label: &str) -> &str {
    label.split(':').next().unwrap_or(label)
}

fn ip_of(address: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// The interface's link-layer address (to send from, with its index) and
/// MAC, if it is Ethernet: ARP and NDP announcements carry a MAC.
fn ethernet_address(interface: &str) -> Result<(LinkAddr, [u8; 6]), VipError> {
    let list = getifaddrs().map_err(|source| VipError::ListInterfaces { source })?;
    for entry in list.filter(|entry| entry.interface_name == interface) {
        let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        return match link.addr() {
            Some(mac) if link.hatype() == ARPHRD_ETHER && link.halen() == 6 && mac != [0; 6] => {
                Ok((*link, mac))
            }
            _ => Err(VipError::NotEthernet {
                interface: interface.to_string(),
            }),
        };
    }
    Err(no_such_interface(interface))
}

/// A gratuitous ARP (RFC 5227's ARP announcement): a broadcast ARP request
/// from `mac` whose sender and target IP are both `ip`, padded to the
/// shortest Ethernet frame.
fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_MIN_FRAME);
    f.extend_from_slice(&[0xff; 6]); // Ethernet destination: broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&[6, 4]); // hardware and protocol address lengths
    f.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f.extend_from_slice(&mac); // sender MAC
    f.extend_from_slice(&ip.octets()); // sender IP
    f.extend_from_slice(&[0; 6]); // target MAC: unknown, ignored
    f.extend_from_slice(&ip.octets()); // target IP
    f.resize(ETH_MIN_FRAME, 0);
    f
}

/// An unsolicited Neighbor Advertisement (RFC 4861 4.4) for `target` at
/// `mac`: override flag set (replace cached entries), not solicited, not a
/// router, with the target link-layer address option. The checksum is left
/// 0: the kernel fills it in for raw ICMPv6 sockets.
fn neighbor_advertisement(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&[ND_NEIGHBOR_ADVERT, 0, 0, 0]); // type, code, checksum
    m.extend_from_slice(&[ND_NA_FLAG_OVERRIDE, 0, 0, 0]);
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[ND_OPT_TARGET_LINKADDR, 1]); // option length in units of 8 bytes
    m.extend_from_slice(&mac);
    m
}

fn change_error(action: &str, vip: &VirtualIp, interface: &str, source: Errno) -> VipError {
    VipError::Kernel {
        action: format!("{action} {vip}"),
        interface: interface.to_string(),
        source,
        hint: change_hint(source, vip, interface),
    }
}

fn change_hint(errno: Errno, vip: &VirtualIp, interface: &str) -> String {
    const CAP: &str = "run sftp-ha as root with CAP_NET_ADMIN (the systemd unit's CapabilityBoundingSet= must list it)";
    match errno {
        Errno::EPERM => CAP.into(),
        // The kernel refuses IPv6 addresses with EACCES where IPv6 is disabled.
        Errno::EACCES if vip.addr.is_ipv6() => format!(
            "check that IPv6 is enabled on {interface} (sysctl net.ipv6.conf.{interface}.disable_ipv6 must be 0), and {CAP}"
        ),
        Errno::EACCES => CAP.into(),
        Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT => {
            "allow AF_NETLINK in the systemd unit's RestrictAddressFamilies=".into()
        }
        Errno::EAGAIN => format!(
            "the kernel did not answer within {NETLINK_TIMEOUT_SECS} s; retry, and look at the load of this host"
        ),
        Errno::EEXIST => format!(
            "{} is already in use on this host; see `ip address show` and remove the other copy",
            vip.addr
        ),
        _ => format!(
            "look at `ip address show dev {interface}` and the kernel log (`journalctl -k`)"
        ),
    }
}

fn announce_hint(errno: Errno, vip: &VirtualIp, interface: &str) -> String {
    match errno {
        Errno::EPERM | Errno::EACCES => "run sftp-ha as root with CAP_NET_RAW (the systemd unit's CapabilityBoundingSet= must list it)".into(),
        Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT => format!(
            "allow {} in the systemd unit's RestrictAddressFamilies=",
            if vip.addr.is_ipv4() { "AF_PACKET" } else { "AF_INET6" }
        ),
        Errno::ENETDOWN | Errno::ENXIO => {
            format!("bring the interface up (`ip link set {interface} up`)")
        }
        Errno::EADDRNOTAVAIL | Errno::ENETUNREACH if vip.addr.is_ipv6() => format!(
            "{interface} has no usable IPv6 address to send from yet: add the virtual IP first, and check that IPv6 is enabled on {interface}"
        ),
        _ => format!("look at `ip link show {interface}` and the kernel log (`journalctl -k`)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc;

    fn v(text: &str) -> VirtualIp {
        match VirtualIp::parse(text) {
            Ok(vip) => vip,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match VirtualIp::parse(text) {
            Ok(vip) => panic!("{text:?} should be refused, got {vip:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parse_accepts_addresses_with_and_without_prefix() {
        let a = v("192.0.2.10/24");
        assert_eq!(a.addr, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(a.prefix, 24);
        assert_eq!(a.to_string(), "192.0.2.10/24");
        let b = v("2001:db8::10/64");
        assert_eq!(b.addr, "2001:db8::10".parse::<IpAddr>().unwrap());
        assert_eq!(b.prefix, 64);
        assert_eq!(b.to_string(), "2001:db8::10/64");
        assert_eq!(
            v("192.0.2.10").prefix,
            32,
            "a bare IPv4 address is a host address"
        );
        assert_eq!(v("2001:db8::10").prefix, 128);
        assert_eq!(
            v("  10.0.0.5/8 ").to_string(),
            "10.0.0.5/8",
            "blanks around are ignored"
        );
        assert_eq!(v("192.0.2.10/32").prefix, 32);
        assert_eq!(
            v("192.0.2.10/31").prefix,
            31,
            "a /31 has no network address"
        );
        assert_eq!(v("192.0.2.0/31").prefix, 31);
        assert_eq!(v("2001:db8::/127").prefix, 127);
        assert_eq!(v("fe80::10/64").prefix, 64);
        assert_eq!("192.0.2.10/24".parse::<VirtualIp>(), Ok(a));
        assert_eq!(v(&b.to_string()), b, "Display reads back");
    }

    #[test]
    fn parse_refuses_bad_prefixes() {
        for (text, max) in [
            ("192.0.2.10/33", 32),
            ("192.0.2.10/0", 32),
            ("192.0.2.10/", 32),
            ("192.0.2.10/abc", 32),
            ("192.0.2.10/+24", 32),
            ("192.0.2.10/-1", 32),
            ("192.0.2.10/0024", 32),
            ("192.0.2.10/24/1", 32),
            ("192.0.2.10/256", 32),
            ("2001:db8::10/129", 128),
            ("2001:db8::10/0", 128),
        ] {
            let e = parse_err(text);
            assert!(
                e.contains("prefix length") && e.contains(&format!("from 1 to {max}")),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn parse_refuses_what_is_not_an_address() {
        for text in [
            "eth0",
            "192.0.2.300/24",
            "/24",
            "fe80::1%eth0/64",
            "192.0.2/24",
            "host.example",
        ] {
            let e = parse_err(text);
            assert!(e.contains("is not an IPv4 or IPv6 address"), "{text}: {e}");
            assert!(
                e.contains("e.g. 192.0.2.10/24"),
                "the message shows the form: {e}"
            );
        }
        assert!(parse_err("").contains("empty"));
        assert!(parse_err("   ").contains("empty"));
        assert!(parse_err("[2001:db8::10]/64").contains("without brackets"));
    }

    #[test]
    fn parse_refuses_addresses_that_cannot_float() {
        for (text, why) in [
            (
                "::ffff:192.0.2.10/120",
                "IPv4-mapped IPv6 address; write the IPv4 address itself, e.g. 192.0.2.10/24",
            ),
            ("127.0.0.2/8", "loopback"),
            ("::1", "loopback"),
            ("224.0.0.18/32", "multicast"),
            ("ff02::1/128", "multicast"),
            ("0.0.0.0/24", "unspecified"),
            ("::/64", "unspecified"),
            ("255.255.255.255", "broadcast address"),
            ("192.0.2.0/24", "network address of 192.0.2.0/24"),
            ("192.0.2.255/24", "broadcast address of 192.0.2.0/24"),
            ("10.1.2.3/30", "broadcast address of 10.1.2.0/30"),
            ("2001:db8::/64", "subnet-router anycast"),
        ] {
            let e = parse_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn the_kernel_constants_match_libc() {
        assert_eq!(NLMSG_ERROR as libc::c_int, libc::NLMSG_ERROR);
        assert_eq!(NLM_F_REQUEST as libc::c_int, libc::NLM_F_REQUEST);
        assert_eq!(NLM_F_ACK as libc::c_int, libc::NLM_F_ACK);
        assert_eq!(NLM_F_EXCL as libc::c_int, libc::NLM_F_EXCL);
        assert_eq!(NLM_F_CREATE as libc::c_int, libc::NLM_F_CREATE);
        assert_eq!(RTM_NEWADDR, libc::RTM_NEWADDR);
        assert_eq!(RTM_DELADDR, libc::RTM_DELADDR);
        assert_eq!(IFA_ADDRESS, libc::IFA_ADDRESS);
        assert_eq!(IFA_LOCAL, libc::IFA_LOCAL);
        assert_eq!(IFA_F_NODAD as u32, libc::IFA_F_NODAD);
        assert_eq!(RT_SCOPE_UNIVERSE, libc::RT_SCOPE_UNIVERSE);
        assert_eq!(ARPHRD_ETHER, libc::ARPHRD_ETHER);
        assert_eq!(ETH_P_IP as libc::c_int, libc::ETH_P_IP);
        assert_eq!(ETH_P_ARP as libc::c_int, libc::ETH_P_ARP);
        assert_eq!(NLMSG_HDRLEN, std::mem::size_of::<libc::nlmsghdr>());
        assert_eq!(IFADDRMSG_LEN, std::mem::size_of::<libc::ifaddrmsg>());
        assert_eq!(libc_family(AddressFamily::Inet), libc::AF_INET as u8);
        assert_eq!(libc_family(AddressFamily::Inet6), libc::AF_INET6 as u8);
    }

    fn ne16(x: u16) -> [u8; 2] {
        x.to_ne_bytes()
    }
    fn ne32(x: u32) -> [u8; 4] {
        x.to_ne_bytes()
    }

    #[test]
    fn the_add_request_for_ipv4_is_what_ip_address_add_sends() {
        let m = address_request(Change::Add, &v("192.0.2.10/24"), 7, 42);
        let mut want = Vec::new();
        want.extend(ne32(40)); // 16 header + 8 ifaddrmsg + 2 * 8 attributes
        want.extend(ne16(20)); // RTM_NEWADDR
        want.extend(ne16(0x0605)); // REQUEST | ACK | EXCL | CREATE
        want.extend(ne32(42));
        want.extend(ne32(0));
        want.extend([2, 24, 0, 0]); // AF_INET, /24, no flags, universe
        want.extend(ne32(7));
        want.extend(ne16(8));
        want.extend(ne16(2)); // IFA_LOCAL
        want.extend([192, 0, 2, 10]);
        want.extend(ne16(8));
        want.extend(ne16(1)); // IFA_ADDRESS
        want.extend([192, 0, 2, 10]);
        assert_eq!(m, want);
    }

    #[test]
    fn the_ipv6_add_request_skips_dad_and_remove_requests_carry_no_create_flags() {
        let vip = v("2001:db8::10/64");
        let octets = match vip.addr {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        };
        let m = address_request(Change::Add, &vip, 3, 9);
        assert_eq!(m.len(), 64, "16 + 8 + 2 * 20");
        assert_eq!(m[0..4], ne32(64));
        assert_eq!(m[16..20], [10, 64, 0x02, 0], "AF_INET6, /64, IFA_F_NODAD");
        assert_eq!(m[20..24], ne32(3));
        assert_eq!(m[24..26], ne16(20));
        assert_eq!(m[26..28], ne16(2));
        assert_eq!(m[28..44], octets);
        assert_eq!(m[44..46], ne16(20));
        assert_eq!(m[46..48], ne16(1));
        assert_eq!(m[48..64], octets);

        let r = address_request(Change::Remove, &vip, 3, 10);
        assert_eq!(r[4..6], ne16(21), "RTM_DELADDR");
        assert_eq!(r[6..8], ne16(0x0005), "REQUEST | ACK only");
        assert_eq!(r[8..12], ne32(10));
        assert_eq!(r[16..20], [10, 64, 0, 0], "no NODAD on removal");
        assert_eq!(r[24..], m[24..], "same attributes");

        let r4 = address_request(Change::Remove, &v("192.0.2.10/24"), 7, 1);
        assert_eq!(r4[16..20], [2, 24, 0, 0]);
    }

    /// A netlink error/ack message for `seq` with `error` (negative errno).
    fn nlmsgerr(seq: u32, error: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend(ne32(36)); // header + error + the echoed request header
        m.extend(ne16(2));
        m.extend(ne16(0));
        m.extend(ne32(seq));
        m.extend(ne32(0));
        m.extend(error.to_ne_bytes());
        m.extend([0; 16]);
        m
    }

    #[test]
    fn acks_are_read_from_the_kernel_answer() {
        assert_eq!(ack_status(&nlmsgerr(5, 0), 5), Ok(Some(0)));
        assert_eq!(
            ack_status(&nlmsgerr(5, -libc::EEXIST), 5),
            Ok(Some(libc::EEXIST))
        );
        assert_eq!(
            ack_status(&nlmsgerr(4, 0), 5),
            Ok(None),
            "another request's answer"
        );
        let mut two = nlmsgerr(4, -libc::EPERM);
        two.extend(nlmsgerr(5, -libc::EADDRNOTAVAIL));
        assert_eq!(ack_status(&two, 5), Ok(Some(libc::EADDRNOTAVAIL)));
        assert_eq!(ack_status(&[], 5), Ok(None));
        let whole = nlmsgerr(5, 0);
        assert_eq!(
            ack_status(&whole[..20], 5),
            Err(Errno::EBADMSG),
            "cut short"
        );
        let mut tiny = whole.clone();
        tiny[0..4].copy_from_slice(&ne32(8));
        assert_eq!(
            ack_status(&tiny, 5),
            Err(Errno::EBADMSG),
            "length below a header"
        );
    }

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn the_gratuitous_arp_frame() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 10));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // to: broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // from: our MAC
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet, IPv4, lengths
            0x00, 0x01,                         // request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 192, 0, 2, 10, // sender: our MAC, the VIP
            0, 0, 0, 0, 0, 0, 192, 0, 2, 10,                   // target: the VIP
        ];
        assert_eq!(f.len(), 60, "padded to the shortest Ethernet frame");
        assert_eq!(f[..42], want);
        assert!(f[42..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_neighbor_advertisement() {
        let target: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let m = neighbor_advertisement(MAC, target);
        let mut want = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        want.extend(target.octets());
        want.extend([2, 1]);
        want.extend(MAC);
        assert_eq!(m, want);
        assert_eq!(m.len(), 32);
    }

    #[test]
    fn errors_say_what_where_and_how_to_fix() {
        let vip = v("192.0.2.10/24");
        let e = change_error("add", &vip, "eth0", Errno::EPERM).to_string();
        assert!(
            e.starts_with("cannot add 192.0.2.10/24 on eth0: EPERM")
                && e.contains("fix: ")
                && e.contains("CAP_NET_ADMIN"),
            "{e}"
        );
        let e6 = change_error("add", &v("2001:db8::10/64"), "eth1", Errno::EACCES).to_string();
        assert!(e6.contains("net.ipv6.conf.eth1.disable_ipv6"), "{e6}");
        let e = change_error("remove", &vip, "eth0", Errno::EAFNOSUPPORT).to_string();
        assert!(
            e.contains("RestrictAddressFamilies=") && e.contains("AF_NETLINK"),
            "{e}"
        );
        assert!(announce_hint(Errno::EPERM, &vip, "eth0").contains("CAP_NET_RAW"));
        assert!(announce_hint(Errno::EAFNOSUPPORT, &vip, "eth0").contains("AF_PACKET"));
        assert!(announce_hint(Errno::ENETDOWN, &vip, "eth0").contains("ip link set eth0 up"));
        let e = VipError::PrefixConflict {
            vip: v("2001:db8::10/64"),
            interface: "eth0".into(),
            held: 80,
        }
        .to_string();
        assert!(
            e.contains("already has 2001:db8::10/80") && e.contains("fix: "),
            "{e}"
        );
        for e in [
            no_such_interface("eth9").to_string(),
            VipError::NotEthernet {
                interface: "tun0".into(),
            }
            .to_string(),
            VipError::PeerIsLocal { peer: vip.addr }.to_string(),
        ] {
            assert!(e.contains("fix: "), "{e}");
        }
        assert!(no_such_interface("eth9").to_string().contains("\"eth9\""));
    }

    #[test]
    fn alias_labels_name_their_device() {
        assert_eq!(device_name("eth0"), "eth0");
        assert_eq!(device_name("eth0:vip"), "eth0");
    }

    // ---- Against the kernel, each in a network namespace of its own ----

    /// Runs `body` on a new thread moved into a new, empty network namespace
    /// (namespaces are per thread; this one disappears with the thread), so
    /// the host's own interfaces are never touched. Prints why and returns
    /// when this is not possible (not root, no `ip`).
    fn in_new_netns(test: &str, body: impl FnOnce() + Send + 'static) {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping {test}: needs root to create a network namespace");
            return;
        }
        if std::process::Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipping {test}: `ip` (iproute2) is not installed");
            return;
        }
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            // SAFETY: unshare takes only flags and touches no memory; it moves
            // this thread alone, which the test spawned and ends, into a new
            // network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare(CLONE_NEWNET): {}", Errno::last()));
            }
            body();
            Ok(())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => eprintln!("skipping {test}: {reason}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs `ip ARGS` (in the calling thread's namespace, which a child inherits).
    fn ip(args: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap_or_else(|e| panic!("ip {args}: {e}"));
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A veth pair va <-> vb, both up, and lo up.
    fn veth_pair() {
        ip("link set lo up");
        ip("link add va type veth peer name vb");
        ip("link set va up");
        ip("link set vb up");
    }

    #[test]
    fn kernel_add_holds_remove_are_idempotent() {
        in_new_netns("kernel_add_holds_remove_are_idempotent", || {
            veth_pair();
            for text in ["192.0.2.10/24", "2001:db8::10/64", "198.51.100.7/32"] {
                let vip = v(text);
                let shown = || ip("-o address show dev va").contains(&format!(" {text} "));
                assert!(!holds(&vip, "va").unwrap());
                assert!(add(&vip, "va").unwrap(), "{text} added now");
                assert!(holds(&vip, "va").unwrap());
                assert!(
                    shown(),
                    "the kernel has {text}: {}",
                    ip("address show dev va")
                );
                assert!(!add(&vip, "va").unwrap(), "{text} was already there");
                if vip.addr.is_ipv6() {
                    // (va's own link-local address may still be in DAD: look at the VIP's line.)
                    let listing = ip("-o address show dev va");
                    let line = listing
                        .lines()
                        .find(|l| l.contains(text))
                        .unwrap_or_default();
                    assert!(!line.contains("tentative"), "NODAD: {line}");
                    // Usable at once: a tentative address cannot be bound.
                    UdpSocket::bind((vip.addr, 0)).expect("bind the new IPv6 address at once");
                }
                assert!(remove(&vip, "va").unwrap(), "{text} removed now");
                assert!(!holds(&vip, "va").unwrap());
                assert!(!shown(), "{text} gone: {}", ip("address show dev va"));
                assert!(!remove(&vip, "va").unwrap(), "{text} was not there");
            }
            // The same IPv4 address with another prefix is another address.
            assert!(add(&v("192.0.2.10/24"), "va").unwrap());
            assert!(!holds(&v("192.0.2.10/25"), "va").unwrap());
            assert!(!remove(&v("192.0.2.10/25"), "va").unwrap());
            assert!(holds(&v("192.0.2.10/24"), "va").unwrap());
            // An address an admin made with a label still counts.
            ip("address add 192.0.2.20/24 dev va label va:vip");
            assert!(holds(&v("192.0.2.20/24"), "va").unwrap());
            assert!(!add(&v("192.0.2.20/24"), "va").unwrap());
        });
    }

    #[test]
    fn kernel_errors_name_the_interface() {
        in_new_netns("kernel_errors_name_the_interface", || {
            veth_pair();
            let vip = v("192.0.2.10/24");
            for result in [
                add(&vip, "nosuch0").map(|_| ()),
                remove(&vip, "nosuch0").map(|_| ()),
                holds(&vip, "nosuch0").map(|_| ()),
                announce(&vip, "nosuch0"),
                add(&vip, "").map(|_| ()),
                add(&vip, "a-name-much-too-long-for-linux").map(|_| ()),
            ] {
                assert!(
                    matches!(result, Err(VipError::NoSuchInterface { .. })),
                    "{result:?}"
                );
            }
            // IPv6 keys addresses without the prefix: a second prefix conflicts.
            assert!(add(&v("2001:db8::10/64"), "va").unwrap());
            match add(&v("2001:db8::10/80"), "va") {
                Err(e @ VipError::PrefixConflict { held: 64, .. }) => {
                    assert!(e.to_string().contains("on va"), "{e}")
                }
                other => panic!("expected a prefix conflict, got {other:?}"),
            }
            // Loopback has no MAC to announce.
            assert!(matches!(
                announce(&v("192.0.2.10/24"), "lo"),
                Err(VipError::NotEthernet { .. })
            ));
        });
    }

    #[test]
    fn kernel_interface_towards_follows_the_routes() {
        in_new_netns("kernel_interface_towards_follows_the_routes", || {
            veth_pair();
            ip("address add 10.1.0.1/24 dev va");
            ip("-6 address add 2001:db8:1::1/64 dev va nodad");
            ip("address add 10.2.0.1/24 dev vb");
            let to = |peer: &str| interface_towards(peer.parse().unwrap());
            assert_eq!(to("10.1.0.99").unwrap(), "va");
            assert_eq!(to("::ffff:10.1.0.99").unwrap(), "va", "IPv4-mapped is IPv4");
            assert_eq!(to("10.2.0.42").unwrap(), "vb");
            assert_eq!(to("2001:db8:1::99").unwrap(), "va");
            assert!(
                matches!(to("203.0.113.5"), Err(VipError::NoRoute { .. })),
                "no default route here"
            );
            assert!(matches!(to("10.1.0.1"), Err(VipError::PeerIsLocal { .. })));
            assert!(matches!(to("127.0.0.1"), Err(VipError::PeerIsLocal { .. })));
        });
    }

    /// Opens a capture on `interface` (every protocol), bound to it.
    fn capture(interface: &str) -> std::os::fd::OwnedFd {
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .unwrap();
        let (link, _) = ethernet_address(interface).unwrap();
        socket::bind(fd.as_raw_fd(), &link).unwrap();
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000)).unwrap();
        fd
    }

    /// The first frame within 3 s that `wanted` accepts.
    fn first_frame(fd: &std::os::fd::OwnedFd, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) if wanted(&buf[..n]) => return buf[..n].to_vec(),
                Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => panic!("capture: {e}"),
            }
        }
        panic!("the announcement never arrived");
    }

    /// The ICMPv6 checksum (RFC 4443 2.3) over the pseudo-header and `body`.
    fn icmpv6_checksum(src: &[u8], dst: &[u8], body: &[u8]) -> u16 {
        let mut data = Vec::new();
        data.extend_from_slice(src);
        data.extend_from_slice(dst);
        data.extend((body.len() as u32).to_be_bytes());
        data.extend([0, 0, 0, 58]);
        data.extend_from_slice(body);
        data.resize(data.len().next_multiple_of(2), 0);
        let mut sum: u32 = data
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn kernel_announce_sends_a_gratuitous_arp_and_a_neighbor_advertisement() {
        in_new_netns(
            "kernel_announce_sends_a_gratuitous_arp_and_a_neighbor_advertisement",
            || {
                veth_pair();
                let (_, mac) = ethernet_address("va").unwrap();

                let vip4 = v("192.0.2.10/24");
                assert!(add(&vip4, "va").unwrap());
                let cap = capture("vb");
                announce(&vip4, "va").unwrap();
                let frame = first_frame(&cap, |f| f.get(12..14) == Some(&[0x08, 0x06]));
                assert_eq!(frame, gratuitous_arp(mac, Ipv4Addr::new(192, 0, 2, 10)));

                let vip6 = v("2001:db8::10/64");
                assert!(add(&vip6, "va").unwrap());
                let cap = capture("vb");
                announce(&vip6, "va").unwrap();
                let target = "2001:db8::10".parse::<Ipv6Addr>().unwrap().octets();
                let frame = first_frame(&cap, |f| {
                    f.get(12..14) == Some(&[0x86, 0xdd])
                        && f.get(20) == Some(&58)
                        && f.get(54) == Some(&ND_NEIGHBOR_ADVERT)
                        && f.get(62..78) == Some(&target[..])
                });
                assert_eq!(
                    frame[0..6],
                    [0x33, 0x33, 0, 0, 0, 1],
                    "to the all-nodes group"
                );
                assert_eq!(frame[6..12], mac, "from va");
                assert_eq!(frame[21], 255, "hop limit 255");
                assert_eq!(frame[38..54], ALL_NODES.octets());
                let body = &frame[54..];
                assert_eq!(body.len(), 32);
                let want = neighbor_advertisement(mac, "2001:db8::10".parse().unwrap());
                assert_eq!(body[..2], want[..2]);
                assert_eq!(body[4..], want[4..], "flags, target and option as built");
                let mut zeroed = body.to_vec();
                zeroed[2..4].copy_from_slice(&[0, 0]);
                let checksum = icmpv6_checksum(&frame[22..38], &frame[38..54], &zeroed);
                assert_eq!(
                    body[2..4],
                    checksum.to_be_bytes(),
                    "the kernel filled in the checksum"
                );
            },
        );
    }
}
