//! The bubble's bridge with the subnet's gateway address, and IPv4 forwarding.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::sys::netlink::{LinkChange, Netlink};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns on IPv4 forwarding in this network namespace.
pub fn enable_forwarding() -> Result<()> {
    if std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1").with_context(|| {
        format!("cannot enable forwarding ({IP_FORWARD}): needs CAP_NET_ADMIN over this network namespace")
    })
}

/// The bridge's MAC: `0a:58` and the gateway's address, like a container's.
pub fn gateway_mac(gateway: Ipv4Addr) -> [u8; 6] {
    crate::endpoint::build::container_mac(gateway)
}

/// Creates (or adopts) `name` with the gateway address, MTU and MAC, and brings it up.
///
/// The MAC is set, derived from the gateway's address as the containers' are from theirs:
/// a bridge whose MAC was never set takes the lowest MAC of its ports, so a container
/// starting or stopping (its port's random MAC) would change the gateway's MAC under
/// every other container, and each would send to the old one until its ARP entry
/// expired: seconds of loss, again at every start.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, subnet: Ipv4Net, mtu: u32) -> Result<u32> {
    let mut nl = Netlink::open()?;
    let link = match nl.link(name)? {
        Some(link) => {
            info!(bridge = name, "adopting existing bridge");
            link
        }
        None => {
            nl.create_bridge(name)?;
            nl.link(name)?
                .with_context(|| format!("bridge {name:?} vanished after creation"))?
        }
    };
    for (addr, len) in nl.ipv4_addresses(link.index)? {
        let ours = addr == gateway && len == subnet.prefix_len();
        if !ours {
            warn!(bridge = name, address = %format!("{addr}/{len}"), "bridge has an address outside this bubble's subnet; leaving it");
        }
    }
    nl.add_ipv4_address(link.index, gateway, subnet.prefix_len())?;
    nl.set_link(
        link.index,
        LinkChange {
            mtu: Some(mtu),
            up: true,
            master: None,
            address: Some(gateway_mac(gateway)),
        },
    )
    .with_context(|| format!("cannot set MTU {mtu} and the MAC of {name:?} and bring it up"))?;
    Ok(link.index)
}
