//! hpk-netd itself: its configuration, start-up (subnet, bubble network, endpoints, then
//! the control socket), the control protocol, and status.

pub mod args;
pub mod config;
pub mod control;
pub mod run;
pub mod status;

use std::sync::Arc;

use crate::endpoint::table::Endpoints;
use crate::names::Names;
use crate::ports::Ports;
use crate::subnet::etcd::SharedOverlay;
use crate::subnet::SubnetEnv;

/// A running hpk-netd: its endpoints and what status reports about the bubble.
pub struct Daemon {
    pub endpoints: Arc<Endpoints>,
    pub env: SubnetEnv,
    /// Where the subnet came from, for status (`flannel subnet.env at ...`, `etcd ...`).
    pub source: String,
    pub bridge: String,
    pub masquerade: bool,
    /// The etcd agent's lease and peers, when it is the source.
    pub overlay: Option<SharedOverlay>,
    /// Container names and the bubble's DNS server, unless disabled.
    pub names: Option<Arc<Names>>,
    /// Host ports forwarded to containers.
    pub ports: Arc<Ports>,
}
