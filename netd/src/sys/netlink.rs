//! A small synchronous rtnetlink client.
//!
//! Blocking, because most of its work runs on a thread that has entered a container's
//! network namespace (a netlink socket belongs to the namespace of the thread that opened
//! it), and because the forwarder, which runs once per container, should not carry an
//! async runtime. Messages are built with `netlink-packet-route`.

use std::io;

use anyhow::{anyhow, Context, Result};
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What to change on a link; `None` leaves a property alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub up: bool,
    /// A new MAC address.
    pub address: Option<[u8; 6]>,
    /// Index of the bridge to enslave the link to.
    pub master: Option<u32>,
}

/// A veth pair to create: see [`Netlink::create_veth`].
#[derive(Clone, Debug)]
pub struct VethPair {
    pub name: String,
    pub master: u32,
    pub peer: String,
    pub peer_netns: std::os::fd::RawFd,
    pub peer_mac: [u8; 6],
    pub mtu: u32,
}

/// The loopback device's index, the same in every network namespace.
pub const LOOPBACK_INDEX: u32 = 1;

/// A blocking rtnetlink socket bound to the caller's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("cannot open a netlink socket")?;
        socket.bind_auto().context("cannot bind a netlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("cannot connect a netlink socket")?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the replies until the kernel's ACK or DONE.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(replies),
                            Some(_) => Err(err.to_io()),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// The index of link `name`, or `None` when there is no such link.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!("cannot look up link {name:?}: {e}")),
        }
    }

    /// Applies `change` to the link with index `index`.
    pub fn set_link(&mut self, index: u32, change: LinkChange) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if change.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        if let Some(mtu) = change.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = change.address {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(master) = change.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(|_| ())
    }

    /// Sets MTU, bridge port and up state of link `name`, with errors that name the link.
    pub fn configure(&mut self, name: &str, mtu: u32, bridge: Option<&str>) -> Result<()> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| anyhow!("link {name:?} vanished while being configured"))?;
        let master = match bridge {
            Some(bridge) => Some(self.link_index(bridge)?.ok_or_else(|| {
                anyhow!("bridge {bridge:?} does not exist in this network namespace; create it first (hpk-netd does)")
            })?),
            None => None,
        };
        self.bring_up(
            name,
            index,
            LinkChange {
                mtu: Some(mtu),
                master,
                ..LinkChange::default()
            },
        )
    }

    /// Applies `change` to link `index` (called `name`) and brings it up, in one request
    /// (the kernel sets address, MTU and bridge before the up state).
    pub fn bring_up(&mut self, name: &str, index: u32, change: LinkChange) -> Result<()> {
        let mtu = change.mtu;
        self.set_link(index, LinkChange { up: true, ..change })
            .map_err(|e| match (e.raw_os_error(), mtu) {
                (Some(libc::EINVAL), Some(mtu)) => {
                    anyhow!("MTU {mtu} is not valid for {name:?} (a tap takes 68 to 65521)")
                }
                _ => anyhow!("cannot configure {name:?} and bring it up: {e}"),
            })
    }
}

/// Statistics of a link, as `ip -s link` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// What a link dump says about one link.
#[derive(Clone, Debug)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub stats: LinkStats,
    /// A tun or tap: a userspace program's link (slirp4netns, pasta), not a real one.
    pub is_tun: bool,
}

fn summarize(link: LinkMessage) -> LinkSummary {
    let mut out = LinkSummary {
        index: link.header.index,
        name: String::new(),
        mtu: 0,
        stats: LinkStats::default(),
        is_tun: false,
    };
    for attr in link.attributes {
        match attr {
            LinkAttribute::IfName(n) => out.name = n,
            LinkAttribute::Mtu(m) => out.mtu = m,
            LinkAttribute::LinkInfo(infos) => {
                out.is_tun = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun)));
            }
            LinkAttribute::Stats64(s) => {
                out.stats = LinkStats {
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                }
            }
            _ => {}
        }
    }
    out
}

impl Netlink {
    /// Runs a request whose only interesting answer is success or an errno.
    pub fn execute(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags).map(|_| ())
    }

    /// A request with no flags beyond REQUEST|ACK, for other modules' messages.
    pub(crate) fn request_raw(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, 0)
    }

    /// The link of the IPv4 default route in the main table, if there is one.
    pub fn default_route_link(&mut self) -> Result<Option<u32>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self
            .request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)
            .context("cannot list routes")?;
        Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewRoute(route)
                if route.header.destination_prefix_length == 0
                    && route.header.table == libc::RT_TABLE_MAIN =>
            {
                route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    /// Every link in this namespace.
    pub fn links(&mut self) -> Result<Vec<LinkSummary>> {
        let replies = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .context("cannot list links")?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(link) => Some(summarize(link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair in one request: `pair.name` here, on bridge `pair.master` and
    /// up; `pair.peer` born in the network namespace open at `pair.peer_netns` (so it
    /// never appears here) with MAC `pair.peer_mac`, still down (the kernel opens the peer
    /// before the pair is linked: asking for it up fails with ENOTCONN).
    pub fn create_veth(&mut self, pair: &VethPair) -> io::Result<()> {
        let up = |msg: &mut LinkMessage| {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        };
        let mut other = LinkMessage::default();
        other
            .attributes
            .push(LinkAttribute::IfName(pair.peer.clone()));
        other.attributes.push(LinkAttribute::Mtu(pair.mtu));
        other
            .attributes
            .push(LinkAttribute::Address(pair.peer_mac.to_vec()));
        other
            .attributes
            .push(LinkAttribute::NetNsFd(pair.peer_netns));
        let mut msg = LinkMessage::default();
        up(&mut msg);
        msg.attributes
            .push(LinkAttribute::IfName(pair.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(pair.mtu));
        msg.attributes.push(LinkAttribute::Controller(pair.master));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(other))),
        ]));
        self.execute(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkSummary>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(link) => Some(summarize(link)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!("cannot look up link {name:?}: {e}")),
        }
    }

    /// Creates a bridge named `name` (down, default settings).
    pub fn create_bridge(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.execute(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .with_context(|| format!("cannot create bridge {name:?}"))
    }

    /// Deletes the link with index `index`.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.execute(RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// IPv4 addresses on link `index`, with their prefix lengths.
    pub fn ipv4_addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self
            .request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)
            .context("cannot list addresses")?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let prefix = a.header.prefix_len;
                    a.attributes.into_iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((ip, prefix)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `addr/prefix_len` to link `index`; an address already there is fine.
    pub fn add_ipv4_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        if prefix_len < 31 {
            let bcast = u32::from(addr) | (u32::MAX >> prefix_len);
            msg.attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(bcast)));
        }
        match self.execute(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.with_context(|| format!("cannot add {addr}/{prefix_len}")),
        }
    }

    /// Installs (or replaces) an IPv4 route to `dest/prefix_len` out of link `index`,
    /// via `gateway` when given; `onlink` skips the kernel's reachability check.
    pub fn replace_ipv4_route(
        &mut self,
        dest: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        index: u32,
        onlink: bool,
    ) -> Result<()> {
        let msg = ipv4_route(dest, prefix_len, gateway, index, onlink);
        self.execute(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .with_context(|| format!("cannot install route to {dest}/{prefix_len}"))
    }

    /// Makes every IPv4 address local in routing table `table` (`ip route replace local
    /// 0.0.0.0/0 dev lo table TABLE`).
    pub fn replace_local_default_route(&mut self, table: u32) -> Result<()> {
        let mut msg = ipv4_route(Ipv4Addr::UNSPECIFIED, 0, None, LOOPBACK_INDEX, false);
        msg.header.table = libc::RT_TABLE_UNSPEC;
        msg.header.kind = RouteType::Local;
        msg.header.scope = RouteScope::Host;
        msg.attributes.push(RouteAttribute::Table(table));
        self.execute(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .with_context(|| format!("cannot make every address local in table {table}"))
    }

    /// Sends packets marked `mark` to routing table `table` (`ip rule add fwmark MARK
    /// lookup TABLE priority PRIORITY`); an existing rule is kept.
    pub fn add_fwmark_rule(&mut self, mark: u32, table: u32, priority: u32) -> Result<()> {
        use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.table = libc::RT_TABLE_UNSPEC;
        msg.header.action = RuleAction::ToTable;
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::FwMask(u32::MAX));
        msg.attributes.push(RuleAttribute::Table(table));
        msg.attributes.push(RuleAttribute::Priority(priority));
        match self.execute(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.with_context(|| format!("cannot add the rule for mark {mark:#x}")),
        }
    }

    /// Removes the route `dest/prefix_len` out of link `index`; a missing route is fine.
    pub fn delete_ipv4_route(&mut self, dest: Ipv4Addr, prefix_len: u8, index: u32) -> Result<()> {
        let mut msg = ipv4_route(dest, prefix_len, None, index, false);
        // Match the route whatever its scope, protocol and type, as `ip route del` does.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        match self.execute(RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other.with_context(|| format!("cannot remove route to {dest}/{prefix_len}")),
        }
    }
}

fn ipv4_route(
    dest: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    index: u32,
    onlink: bool,
) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = prefix_len;
    msg.header.table = libc::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.header.kind = RouteType::Unicast;
    if onlink {
        msg.header.flags |= netlink_packet_route::route::RouteFlags::Onlink;
    }
    if prefix_len > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dest)));
    }
    if let Some(gw) = gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}
