//! hpk-netd: the network side of an hpktainer bubble.
//!
//! Two programs share this crate. `hpk-netd` owns a bubble's network: its subnet (from a
//! real flanneld, or its own flannel-compatible agent over etcd), the bridge, NAT,
//! addresses, and each container's endpoint. `hpk-net-daemon` is the per-container data
//! path: taps with the virtio-net header, tap-to-tap forwarding, and socket mode in the
//! original tool's framing or our extended one.

pub mod bubble;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod firewall;
pub mod flannel;
pub mod forward;
pub mod forwarder;
pub mod framing;
pub mod ipam;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod pidwatch;
pub mod service;
pub mod socket_mode;
pub mod store;
pub mod subnet;
pub mod tap;
pub mod unix_socket;
