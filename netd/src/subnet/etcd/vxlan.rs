//! flannel's vxlan backend on netlink: the `flannel.<VNI>` device, and per remote lease a
//! neighbour, an FDB entry and a route, installed and removed as flanneld does. The
//! device is the kernel's vxlan, or a tap whose VTEP is hpk-netd itself ([`Vtep`]).
//! Blocking: runs on worker threads.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use tracing::{info, warn};

use super::lease::{format_mac, HpkVtep, Peer};
use crate::sys::netlink::{LinkChange, Netlink};
use crate::underlay::forwarding::Sender;
use crate::underlay::Userspace;

/// vxlan header overhead flannel subtracts from the uplink MTU.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The local end of the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// What the device must look like.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub uplink: u32,
    pub port: u16,
    pub mtu: u32,
}

fn vxlan_settings(link: &LinkMessage) -> Option<(u32, Option<Ipv4Addr>, u16)> {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    })?;
    let (mut id, mut local, mut port) = (None, None, 0);
    for d in data {
        match d {
            InfoVxlan::Id(v) => id = Some(*v),
            InfoVxlan::Local(a) => local = Some(*a),
            InfoVxlan::Port(p) => port = *p,
            _ => {}
        }
    }
    Some((id?, local, port))
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => m.as_slice().try_into().ok(),
        _ => None,
    })
}

impl Netlink {
    /// The full link message of `name`.
    fn link_message(&mut self, name: &str) -> Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request_raw(RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!("cannot look up {name}: {e}")),
        }
    }
}

/// Creates `flannel.<VNI>`, or reuses a compatible one (same VNI, local address, port).
pub fn ensure_device(spec: &DeviceSpec) -> Result<Device> {
    let name = format!("flannel.{}", spec.vni);
    let mut nl = Netlink::open()?;
    if let Some(existing) = nl.link_message(&name)? {
        let compatible = vxlan_settings(&existing) == Some((spec.vni, Some(spec.local), spec.port));
        if compatible {
            info!(device = name, "reusing the existing vxlan device");
        } else {
            warn!(
                device = name,
                "existing device does not match (VNI, local address, port); recreating it"
            );
            nl.delete_link(existing.header.index)
                .with_context(|| format!("cannot remove the old {name}"))?;
        }
    }
    if nl.link_message(&name)?.is_none() {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Local(spec.local),
                InfoVxlan::Link(spec.uplink),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        nl.execute(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .with_context(|| {
                format!(
                    "cannot create vxlan device {name} (VNI {}, local {})",
                    spec.vni, spec.local
                )
            })?;
    }
    let link = nl
        .link_message(&name)?
        .ok_or_else(|| anyhow!("{name} vanished after creation"))?;
    let index = link.header.index;
    nl.set_link(
        index,
        LinkChange {
            mtu: Some(spec.mtu),
            up: true,
            master: None,
            address: None,
        },
    )
    .with_context(|| format!("cannot set MTU {} and bring {name} up", spec.mtu))?;
    let mac = mac_of(&link).ok_or_else(|| anyhow!("{name} has no MAC address"))?;
    Ok(Device {
        name,
        index,
        mac,
        mtu: spec.mtu,
    })
}

/// Gives the device exactly `<subnet network address>/32`, as flanneld does.
pub fn set_device_address(dev: &Device, subnet: Ipv4Net) -> Result<()> {
    let mut nl = Netlink::open()?;
    let want = subnet.network();
    for (addr, len) in nl.ipv4_addresses(dev.index)? {
        if (addr, len) != (want, 32) {
            let mut msg = AddressMessage::default();
            msg.header.family = AddressFamily::Inet;
            msg.header.prefix_len = len;
            msg.header.index = dev.index;
            msg.attributes
                .push(netlink_packet_route::address::AddressAttribute::Local(
                    addr.into(),
                ));
            nl.execute(RouteNetlinkMessage::DelAddress(msg), 0)
                .with_context(|| {
                    format!("cannot remove old address {addr}/{len} from {}", dev.name)
                })?;
        }
    }
    nl.add_ipv4_address(dev.index, want, 32)
}

fn neighbour(
    dev: &Device,
    family: AddressFamily,
    dest: Ipv4Addr,
    mac: [u8; 6],
    own: bool,
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = dev.index;
    msg.header.state = NeighbourState::Permanent;
    if own {
        msg.header.flags = NeighbourFlags::Own;
    }
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            dest,
        )));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

/// The local VTEP: where the FDB lives decides what a peer needs.
#[derive(Debug)]
pub enum Vtep {
    /// flannel's kernel vxlan device, its socket in this namespace.
    Kernel(Device),
    /// A tap and hpk-netd's own VTEP on a socket of the host's network.
    Userspace(Device, Userspace),
}

impl Vtep {
    pub fn device(&self) -> &Device {
        match self {
            Vtep::Kernel(d) | Vtep::Userspace(d, _) => d,
        }
    }

    /// What our lease says about us beyond flannel's fields.
    pub fn hpk(&self) -> Option<HpkVtep> {
        match self {
            Vtep::Kernel(_) => None,
            Vtep::Userspace(_, u) => Some(HpkVtep {
                port: u.local.port(),
                sealed: u.protection.is_some(),
            }),
        }
    }

    /// Routes `peer`'s subnet through the overlay (replacing what was there).
    pub fn add_peer(&self, peer: &Peer) -> Result<()> {
        match self {
            Vtep::Kernel(dev) => route_peer(dev, peer, true),
            Vtep::Userspace(dev, u) => {
                let sender = Sender {
                    port: peer.hpk.map(|h| h.port),
                    sealed: peer.hpk.is_some_and(|h| h.sealed),
                    subnet: peer.subnet,
                };
                u.peers.insert(peer.vtep_mac, peer.public_ip, sender);
                route_peer(dev, peer, false)
            }
        }
    }

    /// Removes what [`Vtep::add_peer`] installed; each entry is attempted even if
    /// another fails.
    pub fn remove_peer(&self, peer: &Peer) -> Result<()> {
        match self {
            Vtep::Kernel(dev) => unroute_peer(dev, peer, true),
            Vtep::Userspace(dev, u) => {
                // Forgotten before unrouted: a frame still routed to it is dropped, and once
                // its route is gone nothing can reach it.
                u.peers.remove(peer.vtep_mac);
                unroute_peer(dev, peer, false)
            }
        }
    }
}

/// Shared between the network and status.
pub type SharedVtep = Arc<Vtep>;

/// Neighbour, FDB entry (kernel device only: the userspace VTEP keeps its own), route.
fn route_peer(dev: &Device, peer: &Peer, fdb: bool) -> Result<()> {
    let mut nl = Netlink::open()?;
    let vtep = peer.subnet.network();
    let mac = format_mac(peer.vtep_mac);
    nl.execute(
        RouteNetlinkMessage::NewNeighbour(neighbour(
            dev,
            AddressFamily::Inet,
            vtep,
            peer.vtep_mac,
            false,
        )),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .with_context(|| format!("neighbour {vtep} lladdr {mac} on {}", dev.name))?;
    if fdb {
        nl.execute(
            RouteNetlinkMessage::NewNeighbour(neighbour(
                dev,
                AddressFamily::Bridge,
                peer.public_ip,
                peer.vtep_mac,
                true,
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .with_context(|| format!("fdb {mac} dst {} on {}", peer.public_ip, dev.name))?;
    }
    nl.replace_ipv4_route(
        peer.subnet.network(),
        peer.subnet.prefix_len(),
        Some(vtep),
        dev.index,
        true,
    )
}

fn unroute_peer(dev: &Device, peer: &Peer, fdb: bool) -> Result<()> {
    let mut nl = Netlink::open()?;
    let vtep = peer.subnet.network();
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
        other => other,
    };
    let route = nl.delete_ipv4_route(peer.subnet.network(), peer.subnet.prefix_len(), dev.index);
    let neigh = gone(nl.execute(
        RouteNetlinkMessage::DelNeighbour(neighbour(
            dev,
            AddressFamily::Inet,
            vtep,
            peer.vtep_mac,
            false,
        )),
        0,
    ));
    let fdb = if fdb {
        gone(nl.execute(
            RouteNetlinkMessage::DelNeighbour(neighbour(
                dev,
                AddressFamily::Bridge,
                peer.public_ip,
                peer.vtep_mac,
                true,
            )),
            0,
        ))
    } else {
        Ok(())
    };
    route?;
    neigh.with_context(|| format!("neighbour {vtep} on {}", dev.name))?;
    fdb.with_context(|| format!("fdb entry for {} on {}", peer.public_ip, dev.name))
}
