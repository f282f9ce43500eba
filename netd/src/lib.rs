//! hpk-netd: the network side of an hpktainer bubble.
//!
//! Two programs share this crate. `hpk-netd` owns a bubble's network: its subnet (from a
//! real flanneld, or its own flannel-compatible agent over etcd), the bridge, NAT,
//! addresses, and each container's endpoint. `hpk-net-daemon` is the per-container data
//! path: taps with the virtio-net header, tap-to-tap forwarding, and socket mode in the
//! original tool's framing or our extended one.
//!
//! The modules are layered; each uses only those listed before it:
//! - [`sys`]: the kernel and the OS behind small safe types.
//! - [`datapath`]: moving frames (hpk-net-daemon).
//! - [`underlay`]: flannel's vxlan in userspace on a host socket handed into the bubble.
//! - [`subnet`]: where the bubble's subnet comes from (subnet.env, etcd agent).
//! - [`bubble`]: the bridge, forwarding, NAT rules, address allocation.
//! - [`endpoint`]: each container's endpoint, its forwarder, records and supervision.
//! - [`names`]: container names across the cluster and the bubble's DNS server.
//! - [`ports`]: published ports, forwarded from host sockets to containers.
//! - [`daemon`]: hpk-netd's configuration, start-up, control socket and status.

pub mod sys;

pub mod datapath;

pub mod underlay;

pub mod subnet;

pub mod bubble;

pub mod endpoint;

pub mod names;

pub mod ports;

pub mod daemon;

pub mod logging;

#[cfg(test)]
mod fuzz;
