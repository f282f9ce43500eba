//! The userspace VTEP's device: a tap named as flannel's kernel device, carrying the
//! VtepMAC, with the virtio-net header and TSO so that the kernel hands over whole TCP
//! windows.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::sys::netlink::{LinkChange, Netlink};
use crate::sys::tap::{Tap, TapOptions};

/// Offloads offered to the kernel: exactly what [`super::gso`] can segment.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN;

/// A VtepMAC that stays the same across restarts (so peers need not relearn it):
/// locally administered, unicast, from the public address.
pub fn vtep_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let o = public_ip.octets();
    [0x0e, 0x68, o[0], o[1], o[2], o[3]]
}

/// Creates the tap `name` (replacing a leftover link of that name, such as a kernel vxlan
/// device from an earlier run) with `mac` and `mtu`, up. Returns it and its index.
pub fn create(name: &str, mac: [u8; 6], mtu: u32) -> Result<(Tap, u32)> {
    let mut nl = Netlink::open()?;
    if let Some(old) = nl.link_index(name)? {
        nl.delete_link(old)
            .with_context(|| format!("cannot remove the old {name}"))?;
    }
    let tap = Tap::create(name, TapOptions { vnet_hdr: true })?;
    tap.set_offload_bits(OFFLOADS)?;
    let index = nl
        .link_index(name)?
        .with_context(|| format!("{name} vanished after creation"))?;
    nl.set_link(
        index,
        LinkChange {
            mtu: Some(mtu),
            up: true,
            address: Some(mac),
            master: None,
        },
    )
    .with_context(|| format!("cannot set MAC, MTU {mtu} and bring {name} up"))?;
    // Nothing but IPv4 crosses the overlay; IPv6 would only send router solicitations
    // nobody answers. Best effort: /proc/sys may be read-only here.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1");
    Ok((tap, index))
}
