//! Building a container's endpoint: its tap (address, route, MTU) inside its namespace,
//! and the bubble-side tap on the bridge. Blocking: runs on a worker thread.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::netlink::{LinkChange, Netlink};
use crate::netns::NetnsRef;
use crate::tap::{Tap, TapOptions};

/// Everything needed to (re)build one endpoint; persisted as the endpoint's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub id: String,
    /// The container's process and its start time (guards against PID reuse).
    pub pid: i32,
    pub pid_start: u64,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub tap: String,
    pub bubble_tap: String,
    pub bridge: String,
}

impl EndpointSpec {
    pub fn netns(&self) -> PathBuf {
        netns_of(self.pid)
    }
}

pub fn netns_of(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Container ids become file names and log fields: keep them to what runtimes allow.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if !ok {
        bail!(
            "invalid container id {id:?}: 1 to 256 of A-Z a-z 0-9 _ + - . (not starting with '.')"
        );
    }
    Ok(())
}

/// The bridge-side tap's name: `hpk` and 12 hex digits of a hash of the id, so that ids
/// with a common prefix never collide within the 15-byte limit.
pub fn bubble_tap_name(id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("hpk{:012x}", hash >> 16)
}

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
    let inner = spec.clone();
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
        .with_context(|| format!("container side of {} (in {netns})", spec.id))?;
    let bubble = Tap::create(&spec.bubble_tap, opts)?;
    Netlink::open()?
        .configure(&spec.bubble_tap, spec.mtu, Some(&spec.bridge))
        .with_context(|| format!("bubble side of {}", spec.id))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["c1", "4f2a-b_c.d+e", &"x".repeat(256)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "a b", "../x", &"x".repeat(257)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bubble_tap_names_fit_and_differ() {
        let a = bubble_tap_name("job-000001");
        let b = bubble_tap_name("job-000002");
        assert_eq!(a.len(), 15);
        assert_ne!(a, b);
        assert_eq!(a, bubble_tap_name("job-000001"));
    }
}
