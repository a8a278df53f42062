//! Automatic failover (`[failover] mode = "auto"`): a witness vote, a master
//! lease, a floating IP. [`core`] decides, without I/O; [`driver`] owns the
//! socket, the clock and the effects; [`wire`] and [`key`] authenticate;
//! [`vip`] moves the virtual IP.

pub mod core;
pub mod driver;
pub mod key;
pub mod vip;
pub mod wire;
