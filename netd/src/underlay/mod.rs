//! flannel's vxlan in userspace, on a UDP socket of the host's network.
//!
//! A rootless bubble cannot put a kernel vxlan device on the host's network, so its
//! overlay traffic would cross the uplink's userspace NAT (slirp4netns, pasta) twice. A
//! UDP socket, though, can be opened on the host by the launcher and handed in
//! ([`handover`]); hpk-netd then is the VTEP itself: a tap named like flannel's device
//! ([`device`]), the FDB in userspace ([`forwarding`]), and two threads moving 64 KiB at
//! a time ([`datapath`], [`gso`]). On the wire it is flannel's vxlan ([`header`]): kernel
//! and userspace peers talk to each other. Between hpk-netd VTEPs datagrams are sealed
//! with the cluster's key ([`auth`]): other users of a node cannot write into the overlay.

pub mod auth;
pub mod checksum;
pub mod datapath;
pub mod device;
pub mod forwarding;
pub mod gso;
pub mod handover;
pub mod header;
pub mod transmit;

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;

use anyhow::Result;

use self::forwarding::{Counters, PeerTable};

/// The running userspace VTEP, as the agent and status see it.
#[derive(Debug)]
pub struct Userspace {
    pub peers: Arc<PeerTable>,
    pub counters: Arc<Counters>,
    /// Where the socket is bound on the host.
    pub local: SocketAddrV4,
    /// How datagrams to hpk-netd peers are sealed; `None`: plain.
    pub protection: Option<auth::seal::Protection>,
}

/// Starts the VTEP on tap `name` with `mac` and `mtu`, sealing with `sealing` when
/// given: returns it and the tap's index.
pub fn start(
    name: &str,
    mac: [u8; 6],
    mtu: u32,
    socket: UdpSocket,
    (vni, port): (u32, u16),
    sealing: Option<datapath::Sealing>,
) -> Result<(Userspace, u32)> {
    let local = handover::local_addr(&socket)?;
    let (tap, index) = device::create(name, mac, mtu)?;
    let vtep = Userspace {
        peers: Arc::default(),
        counters: Arc::default(),
        local,
        protection: sealing.as_ref().map(|s| s.protection),
    };
    datapath::spawn(
        datapath::Path {
            tap,
            socket,
            vni,
            port,
            peers: vtep.peers.clone(),
            counters: vtep.counters.clone(),
            mtu: mtu as usize,
            mac,
        },
        sealing,
    )?;
    Ok((vtep, index))
}
