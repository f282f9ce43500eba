//! A bare bubble: a namespace with a bridge on the gateway address, no hpk-netd.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::{wait_until, Netns};

/// A bubble namespace with a bridge holding the gateway address of `subnet` (x.y.z.0/24).
pub struct Bubble {
    pub ns: Netns,
    pub bridge: String,
    pub subnet: [u8; 3],
}

impl Bubble {
    pub fn new(prefix: &str, subnet: [u8; 3], mtu: u32) -> Bubble {
        let ns = Netns::new(format!("{prefix}-b"));
        let bridge = "br0".to_owned();
        ns.ip(&["link", "add", &bridge, "type", "bridge"]);
        ns.ip(&["link", "set", &bridge, "mtu", &mtu.to_string(), "up"]);
        let gw = format!("{}.{}.{}.1/24", subnet[0], subnet[1], subnet[2]);
        ns.ip(&["addr", "add", &gw, "dev", &bridge]);
        Bubble { ns, bridge, subnet }
    }

    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }
}

/// Gives `tap` in `ns` its address once the daemon has brought it up.
pub fn address_container(ns: &Netns, tap: &str, addr: Ipv4Addr) {
    wait_until(
        &format!("{tap} up in {}", ns.name),
        Duration::from_secs(10),
        || ns.link_up(tap),
    );
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", tap]);
}
