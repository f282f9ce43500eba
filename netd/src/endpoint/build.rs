//! Building a container's endpoint: its interface (address, route, MTU) inside its
//! namespace and the bubble-side link on the bridge; either a veth pair (the kernel's own
//! path) or two taps for a forwarder. Blocking: runs on a worker thread.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use hpk_hook::proto::Attachment;

use super::EndpointSpec;
use crate::sys::netlink::{LinkChange, Netlink, VethPair, LOOPBACK_INDEX};
use crate::sys::netns::NetnsRef;
use crate::sys::tap::{Tap, TapOptions};

/// Refuses a container that shares the bubble's network namespace.
pub fn check_own_netns(netns: &Path) -> Result<()> {
    let theirs = std::fs::metadata(netns).with_context(|| {
        format!(
            "cannot inspect {}: has the container exited?",
            netns.display()
        )
    })?;
    let ours = std::fs::metadata("/proc/self/ns/net").context("cannot inspect our namespace")?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        bail!("the container shares the bubble's network namespace; give it its own (a \"network\" entry in linux.namespaces of config.json)");
    }
    Ok(())
}

/// The container interface's MAC, from its address (as CNI's bridge plugin does): a
/// rebuilt endpoint keeps it, so its neighbours' ARP entries stay right.
pub fn container_mac(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// Address and default route of the container's interface `index`, and `lo` up; runs
/// inside the container's namespace.
fn address_inside(nl: &mut Netlink, index: u32, inner: &Attachment) -> Result<()> {
    nl.add_ipv4_address(index, inner.address, inner.prefix_len)?;
    nl.replace_ipv4_route(Ipv4Addr::UNSPECIFIED, 0, Some(inner.gateway), index, false)?;
    nl.set_link(
        LOOPBACK_INDEX,
        LinkChange {
            up: true,
            ..LinkChange::default()
        },
    )
    .context("cannot bring lo up")
}

/// The container's tap: MAC, MTU, up, address and route; runs inside its namespace.
fn configure_tap_inside(inner: &Attachment) -> Result<()> {
    let mut nl = Netlink::open()?;
    let index = nl.link_index(&inner.tap)?.context("interface vanished")?;
    nl.bring_up(
        &inner.tap,
        index,
        LinkChange {
            address: Some(container_mac(inner.address)),
            mtu: Some(inner.mtu),
            ..LinkChange::default()
        },
    )?;
    address_inside(&mut nl, index, inner)
}

/// Creates and configures both taps; returns (container tap, bubble tap). On error,
/// whatever was made is dropped, which removes it.
pub fn build_taps(spec: &EndpointSpec) -> Result<(Tap, Tap)> {
    let netns = NetnsRef::parse(&spec.netns().to_string_lossy())?;
    check_own_netns(netns.path())?;
    let opts = TapOptions { vnet_hdr: true };
    let inner = spec.attachment.clone();
    let container = netns
        .run(move || {
            let tap = Tap::create(&inner.tap, opts)?;
            configure_tap_inside(&inner)?;
            Ok(tap)
        })
        .with_context(|| format!("container side of {} (in {netns})", spec.id()))?;
    let att = &spec.attachment;
    let bubble = Tap::create(&att.bubble_tap, opts)?;
    Netlink::open()?
        .configure(&att.bubble_tap, att.mtu, Some(&spec.bridge))
        .with_context(|| format!("bubble side of {}", spec.id()))?;
    Ok((container, bubble))
}

/// Why a veth could not be made where a tap pair still can.
#[derive(Debug, thiserror::Error)]
#[error("cannot move a link into {netns}: {source} (hpk-netd needs CAP_NET_ADMIN over the container's network namespace)")]
pub struct VethNotPossible {
    netns: String,
    source: std::io::Error,
}

/// Creates the veth pair, its container end born inside the container's namespace under
/// the container's interface name, and configures both ends. On error nothing is left:
/// removing the bubble end removes the pair.
pub fn build_veth(spec: &EndpointSpec) -> Result<()> {
    let netns = NetnsRef::parse(&spec.netns().to_string_lossy())?;
    check_own_netns(netns.path())?;
    let att = &spec.attachment;
    let ns_file = netns.open()?;
    let mut nl = Netlink::open()?;
    let master = nl.link_index(&spec.bridge)?.ok_or_else(|| {
        anyhow!(
            "bridge {:?} does not exist in this network namespace",
            spec.bridge
        )
    })?;
    // Both ends are named, sized, addressed (MAC) and bridged in this one request.
    nl.create_veth(&VethPair {
        name: att.bubble_tap.clone(),
        master,
        peer: att.tap.clone(),
        peer_netns: ns_file.as_raw_fd(),
        peer_mac: container_mac(att.address),
        mtu: att.mtu,
    })
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => anyhow!(VethNotPossible {
            netns: netns.to_string(),
            source: e,
        }),
        Some(libc::EEXIST) => anyhow!(
            "interface name {:?} is already taken in the container, or {:?} in the bubble",
            att.tap,
            att.bubble_tap
        ),
        _ => anyhow!(
            "cannot create the veth pair {} / {}: {e}",
            att.bubble_tap,
            att.tap
        ),
    })?;
    let inner = att.clone();
    let configured = netns
        .run(move || {
            let mut nl = Netlink::open()?;
            let index = nl.link_index(&inner.tap)?.context("interface vanished")?;
            nl.bring_up(&inner.tap, index, LinkChange::default())?;
            address_inside(&mut nl, index, &inner)
        })
        .with_context(|| format!("container side of {} (in {netns})", spec.id()));
    if configured.is_err() {
        let _ = remove_bubble_link(&att.bubble_tap);
    }
    configured
}

/// Removes the bubble-side link: a veth (which takes its container end along), or a
/// tap a forwarder left behind (normally it goes with its forwarder).
pub fn remove_bubble_link(name: &str) -> Result<()> {
    let mut nl = Netlink::open()?;
    if let Some(index) = nl.link_index(name)? {
        nl.delete_link(index)
            .with_context(|| format!("cannot remove {name}"))?;
    }
    Ok(())
}

/// Whether the bubble-side link `name` exists.
pub fn bubble_link_exists(name: &str) -> bool {
    Netlink::open()
        .and_then(|mut nl| nl.link_index(name))
        .is_ok_and(|i| i.is_some())
}
