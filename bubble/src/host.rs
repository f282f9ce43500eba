//! The node as the bubble sees it from outside: the address other nodes reach it on, the
//! MTU of that link (the overlay's MTU is 50 bytes less), and which ports are free.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use anyhow::{bail, Context, Result};
use hpk_netd::sys::netlink::Netlink;

/// The host's link towards the other nodes.
#[derive(Clone, Debug)]
pub struct HostLink {
    pub name: String,
    pub addr: Ipv4Addr,
    pub mtu: u32,
}

/// The link holding `explicit`, or the default route's link and its first address.
pub fn host_link(explicit: Option<Ipv4Addr>) -> Result<HostLink> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    if let Some(addr) = explicit {
        for link in &links {
            if nl
                .ipv4_addresses(link.index)?
                .iter()
                .any(|(a, _)| *a == addr)
            {
                return Ok(HostLink {
                    name: link.name.clone(),
                    addr,
                    mtu: link.mtu,
                });
            }
        }
        bail!("{addr} is not an address of this host (--host-ip, HPK_HOST_IP): give one that `ip addr` shows");
    }
    let Some(index) = nl.default_route_link()? else {
        bail!("this host has no IPv4 default route: give its address with --host-ip (HPK_HOST_IP)");
    };
    let link = links
        .into_iter()
        .find(|l| l.index == index)
        .context("the default route's link vanished")?;
    let Some((addr, _)) = nl.ipv4_addresses(index)?.into_iter().next() else {
        bail!(
            "{}, the default route's link, has no IPv4 address: give the host's address with --host-ip",
            link.name
        );
    };
    Ok(HostLink {
        name: link.name,
        addr,
        mtu: link.mtu,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A host port forwarded into the bubble (same port number inside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub port: u16,
    /// What it is for, and how to choose another port.
    pub purpose: &'static str,
}

/// Fails naming the first forward whose host port is taken on `addr`.
pub fn check_free(addr: Ipv4Addr, forwards: &[Forward]) -> Result<()> {
    for f in forwards {
        let at = SocketAddrV4::new(addr, f.port);
        let taken = match f.proto {
            Proto::Tcp => TcpListener::bind(at).err(),
            Proto::Udp => UdpSocket::bind(at).err(),
        };
        if let Some(e) = taken {
            return Err(not_free(addr, f, e));
        }
    }
    Ok(())
}

/// Binds the UDP port `f` on the host's address, for the bubble to use.
pub fn bind_udp(addr: Ipv4Addr, f: &Forward) -> Result<UdpSocket> {
    UdpSocket::bind(SocketAddrV4::new(addr, f.port)).map_err(|e| not_free(addr, f, e))
}

fn not_free(addr: Ipv4Addr, f: &Forward, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{} port {} on {addr} is not free ({e}): another bubble or program uses it; {}",
        f.proto,
        f.port,
        f.purpose
    )
}
