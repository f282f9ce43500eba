//! hpk-netd's control protocol: one JSON request line, one JSON response line, per
//! connection on a UNIX stream socket.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where hpk-netd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hpktainer/netd.sock";

/// Environment variable that overrides the socket path for hooks and clients.
pub const SOCKET_ENV: &str = "HPK_NETD_SOCKET";

/// Largest response line accepted (a status of a full bubble is some hundred KiB).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Largest request line hpk-netd reads (a request is well under 1 KiB).
pub const MAX_REQUEST: usize = 64 << 10;

/// Annotation to opt a container out (`none`) of hpktainer networking.
pub const ANNOTATION_NETWORK: &str = "io.hpktainer.network";
/// Annotation requesting a static address in the bubble's subnet.
pub const ANNOTATION_IP: &str = "io.hpktainer.ip";
/// Annotation choosing the endpoint kind (`auto`, `veth`, `tap`, `socket`).
pub const ANNOTATION_ENDPOINT: &str = "io.hpktainer.endpoint";

/// How a container's interface is joined to the bubble's bridge.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// veth where hpk-netd can move a link into the container's namespace, else tap.
    #[default]
    Auto,
    /// A veth pair: the kernel's own path, no forwarder process.
    Veth,
    /// Two taps and an hpk-net-daemon forwarder copying frames between them.
    Tap,
    /// Two taps and two hpk-net-daemons (server in the bubble, client in the container's
    /// namespace) over a UNIX socket: the original tool's design.
    Socket,
}

impl std::fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let value = self.to_possible_value().expect("no skipped variants");
        f.write_str(value.get_name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Attach(AttachRequest),
    Detach { id: String },
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Container id, as the runtime names it.
    pub id: String,
    /// The container's process; its network namespace is `/proc/PID/ns/net`.
    pub pid: i32,
    /// A static address, if the container asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// An endpoint kind, if the container asked for one (else hpk-netd's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointKind>,
    /// The container's name, served by the bubbles' DNS (a DNS label, see `names`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Ports of the host to forward to the container (`-p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortMapping>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Attached(Attachment),
    Detached { id: String, was_attached: bool },
    Status(Box<Status>),
    Error { message: String },
}

/// What a container got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Tap inside the container.
    pub tap: String,
    /// The bubble-side link on the bridge (a tap, or the veth's bubble end).
    pub bubble_tap: String,
    /// What the container got: `veth` or `tap` (records written before kinds existed
    /// were taps).
    #[serde(default = "tap_kind")]
    pub kind: EndpointKind,
}

fn tap_kind() -> EndpointKind {
    EndpointKind::Tap
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Where the subnet came from (`flannel subnet.env at PATH`, `etcd ...`).
    pub source: String,
    pub network: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub bridge: String,
    pub masquerade: bool,
    pub addresses_in_use: usize,
    pub addresses_total: usize,
    pub endpoints: Vec<EndpointStatus>,
    /// Lease held in etcd, when the built-in agent is the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// Other nodes' subnets this bubble routes to.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Where vxlan meets the host's network, when the built-in agent is the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<UnderlayStatus>,
    /// The bubble's DNS server for container names, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<NamesStatus>,
    /// Ports of the host forwarded to containers.
    #[serde(default)]
    pub published: Vec<PublishedPort>,
}

/// A host port forwarded to a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container: String,
    pub mapping: crate::ports::PortMapping,
    /// Where the port listens on the host (`0.0.0.0:8080`).
    pub listening: String,
    /// Whether the container sees its clients' own addresses (else the gateway's).
    pub client_address_kept: bool,
    /// Connections (tcp) or flows (udp) forwarded so far.
    pub forwarded: u64,
}

/// The DNS server hpk-netd runs on the bridge's gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesStatus {
    /// Where it listens (UDP and TCP port 53): every container's nameserver.
    pub server: Ipv4Addr,
    /// The cluster domain: `web` and `web.<domain>` both answer.
    pub domain: String,
    /// `cluster` (names in the cluster's etcd) or `bubble` (this bubble's only).
    pub scope: String,
    /// Names known, with the address and the bubble (public address) each runs in.
    #[serde(default)]
    pub records: Vec<NameStatus>,
    /// Queries answered, forwarded, refused and failed.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub container: String,
    /// The public address of the bubble it runs in.
    pub bubble: String,
}

/// The local VTEP: flannel's kernel device, or hpk-netd's own on a host socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayStatus {
    /// `kernel` or `host-socket`.
    pub kind: String,
    /// The overlay device (`flannel.1`).
    pub device: String,
    /// The host socket's address (host-socket only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// Datagrams, frames, bytes and drops by reason (host-socket only).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// How datagrams to hpk-netd peers are sealed: `authenticate`, `encrypt`, or `plain`
    /// (host-socket only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub id: String,
    pub address: Ipv4Addr,
    pub pid: i32,
    pub netns: PathBuf,
    pub bubble_tap: String,
    /// The forwarder's PID; 0 for a veth (it has none).
    pub forwarder_pid: i32,
    /// The forwarder is the bubble's hub, shared by its tap endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_forwarder: bool,
    #[serde(default = "tap_kind")]
    pub kind: EndpointKind,
    /// Bytes and frames the bubble-side tap sent to and received from the container.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub subnet: String,
    pub public_ip: Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub subnet: String,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: String,
    /// When the peer's lease runs out, seconds since the Unix epoch, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// `sealed`, or `plain` and why (a kernel flannel VTEP, a peer without the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let req = Request::Attach(AttachRequest {
            id: "c1".into(),
            pid: 42,
            address: None,
            endpoint: None,
            name: None,
            ports: Vec::new(),
        });
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"op":"attach","id":"c1","pid":42}"#
        );
        let det: Request = serde_json::from_str(r#"{"op":"detach","id":"c1"}"#).unwrap();
        assert_eq!(det, Request::Detach { id: "c1".into() });
        let err = Response::Error {
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"result":"error","message":"x"}"#
        );
    }
}
