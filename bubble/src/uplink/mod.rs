//! The bubble's uplink to the host network: a userspace TCP/IP stack on the host side
//! giving the bubble `tap0`, outbound NAT, and host port forwards into the bubble.

mod pasta;
mod slirp4netns;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;

use crate::child::Service;
use crate::cli::UplinkKind;
use crate::host::Forward;
use crate::tools;

/// The interface the uplink creates in the bubble.
pub const TAP: &str = "tap0";
/// The uplink tap's MTU: large, since only the bubble's own traffic crosses it; the
/// overlay takes its MTU from the host's real link instead.
pub const TAP_MTU: u32 = 65520;

/// Where to plug the uplink in and what to forward.
pub struct UplinkPlan<'a> {
    /// A process in the bubble's user and network namespaces.
    pub pid: i32,
    pub host_ip: Ipv4Addr,
    pub forwards: &'a [Forward],
    /// Private directory for the API socket.
    pub state_dir: &'a Path,
    pub log: &'a Path,
}

/// pasta when installed (it moved more in the benchmark), else slirp4netns.
pub fn default_kind() -> UplinkKind {
    if tools::find_on_path("pasta").is_some() {
        UplinkKind::Pasta
    } else {
        UplinkKind::Slirp4netns
    }
}

/// The program of `kind`, or an error naming its package.
pub fn require(kind: UplinkKind) -> Result<std::path::PathBuf> {
    match kind {
        UplinkKind::Slirp4netns => tools::require("slirp4netns", "slirp4netns"),
        UplinkKind::Pasta => tools::require("pasta", "passt"),
    }
}

/// Starts the uplink; returns once its forwards are in place (slirp4netns) or it runs
/// (pasta, whose forwards are on its command line and fail its start).
pub fn start(kind: UplinkKind, plan: &UplinkPlan) -> Result<Service> {
    match kind {
        UplinkKind::Slirp4netns => slirp4netns::start(plan),
        UplinkKind::Pasta => pasta::start(plan),
    }
}
