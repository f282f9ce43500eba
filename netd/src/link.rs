//! A small synchronous rtnetlink client for the forwarder.
//!
//! The forwarder only needs to look links up and set MTU, state and bridge port, so it
//! speaks netlink directly over a blocking socket instead of pulling an async runtime into
//! a process that runs once per container. The socket belongs to the network namespace of
//! the thread that opened it.

use std::io;

use anyhow::{anyhow, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What to change on a link; `None` leaves a property alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub up: bool,
    /// Index of the bridge to enslave the link to.
    pub master: Option<u32>,
}

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
        self.set_link(
            index,
            LinkChange {
                mtu: Some(mtu),
                master,
                up: false,
            },
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => {
                anyhow!("MTU {mtu} is not valid for {name:?} (a tap takes 68 to 65521)")
            }
            _ => anyhow!("cannot set MTU/bridge of {name:?}: {e}"),
        })?;
        self.set_link(
            index,
            LinkChange {
                up: true,
                ..LinkChange::default()
            },
        )
        .with_context(|| format!("cannot bring {name:?} up"))
    }
}
