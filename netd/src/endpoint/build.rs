//! Building a container's endpoint: its tap (address, route, MTU) inside its namespace,
//! and the bubble-side tap on the bridge. Blocking: runs on a worker thread.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::EndpointSpec;
use crate::sys::netlink::{LinkChange, Netlink};
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

/// Creates and configures both taps; returns (container tap, bubble tap). On error,
/// whatever was made is dropped, which removes it.
pub fn build(spec: &EndpointSpec) -> Result<(Tap, Tap)> {
    let netns = NetnsRef::parse(&spec.netns().to_string_lossy())?;
    check_own_netns(netns.path())?;
    let opts = TapOptions { vnet_hdr: true };
    let inner = spec.attachment.clone();
    let container = netns
        .run(move || {
            let tap = Tap::create(&inner.tap, opts)?;
            let mut nl = Netlink::open()?;
            nl.configure(&inner.tap, inner.mtu, None)?;
            let index = nl.link_index(&inner.tap)?.context("tap vanished")?;
            nl.add_ipv4_address(index, inner.address, inner.prefix_len)?;
            nl.replace_ipv4_route(Ipv4Addr::UNSPECIFIED, 0, Some(inner.gateway), index, false)?;
            if let Some(lo) = nl.link_index("lo")? {
                nl.set_link(
                    lo,
                    LinkChange {
                        up: true,
                        ..LinkChange::default()
                    },
                )
                .context("cannot bring lo up")?;
            }
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

/// Removes the bubble-side tap if something left it behind (normally it goes with its
/// forwarder).
pub fn remove_bubble_tap(name: &str) -> Result<()> {
    let mut nl = Netlink::open()?;
    if let Some(index) = nl.link_index(name)? {
        nl.delete_link(index)
            .with_context(|| format!("cannot remove {name}"))?;
    }
    Ok(())
}
