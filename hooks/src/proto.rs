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

/// The control protocol's version, sent in every request. hpk-netd serves its own version
/// only: the hooks, hpktainer and hpk-netd of one release go together. Requests of
/// releases before versions carry none (protocol 0).
pub const PROTOCOL_VERSION: u32 = 1;

/// A request as it travels: the protocol's version beside the operation's fields
/// (`{"version":1,"op":"detach","id":"c1"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl Envelope {
    /// `request` in this release's protocol.
    pub fn new(request: Request) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

/// Reads one request line as hpk-netd does: the version first, so that a client of
/// another release is told so rather than given a parse error of what it sent.
pub fn parse_request(line: &[u8]) -> Result<Request, ControlError> {
    // Only the version: whatever else the line holds is another release's business.
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<u64>,
    }
    let malformed = |e: serde_json::Error| {
        ControlError::new(ErrorCode::BadRequest, format!("malformed request: {e}"))
    };
    let Versioned { version } = serde_json::from_slice(line).map_err(malformed)?;
    let version = version.unwrap_or(0);
    if version != u64::from(PROTOCOL_VERSION) {
        let old = if version == 0 {
            " (no version: an older release)"
        } else {
            ""
        };
        return Err(ControlError::new(
            ErrorCode::BadRequest,
            format!(
                "this client speaks protocol {version}{old}, hpk-netd speaks {PROTOCOL_VERSION}: \
                 use the hpk-hook/hpktainer of the same release"
            ),
        ));
    }
    serde_json::from_slice::<Envelope>(line)
        .map(|e| e.request)
        .map_err(malformed)
}

/// What an operation is (inside an [`Envelope`] on the wire).
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
    Detached {
        id: String,
        was_attached: bool,
    },
    Status(Box<Status>),
    /// `{"result":"error","code":"conflict","message":"..."}`: clients of every release
    /// read the message (those before codes ignore the code).
    Error(ControlError),
}

/// What kind of failure an error is: what a client can do about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request cannot be served as sent (bad input, another protocol version, a peer
    /// that may not ask).
    BadRequest,
    /// What the request names does not exist (an unknown container, a process gone).
    NotFound,
    /// It clashes with what exists (a name or address taken, a container attached).
    Conflict,
    /// Not now: hpk-netd is busy or cannot reach etcd; a retry may succeed.
    Unavailable,
    /// A failure inside hpk-netd. Also what an answer without a code (hpk-netd of a
    /// release before codes) or with a code of a later release reads as.
    #[default]
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    /// What the user can do, beyond the message, if the message does not say it.
    pub fn advice(self) -> Option<&'static str> {
        match self {
            // The message says what is wrong with the request or what it clashes with.
            ErrorCode::BadRequest | ErrorCode::NotFound | ErrorCode::Conflict => None,
            ErrorCode::Unavailable => {
                Some("hpk-netd is starting, busy or cannot reach etcd: retry, or see its log")
            }
            ErrorCode::Internal => Some("a failure inside hpk-netd: its log has the details"),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        })
    }
}

/// A request hpk-netd did not serve: the code for clients to act on, the message for
/// people. Shown as the message and, per code, what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    #[serde(default)]
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code.advice() {
            Some(advice) => write!(f, "{} ({advice})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ControlError {}

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

    fn attach(id: &str) -> Request {
        Request::Attach(AttachRequest {
            id: id.into(),
            pid: 42,
            address: None,
            endpoint: None,
            name: None,
            ports: Vec::new(),
        })
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Envelope::new(attach("c1"))).unwrap(),
            r#"{"version":1,"op":"attach","id":"c1","pid":42}"#
        );
        assert_eq!(
            serde_json::to_string(&Envelope::new(Request::Status)).unwrap(),
            r#"{"version":1,"op":"status"}"#
        );
        let det = parse_request(br#"{"version":1,"op":"detach","id":"c1"}"#).unwrap();
        assert_eq!(det, Request::Detach { id: "c1".into() });
        let err = Response::Error(ControlError::new(ErrorCode::Conflict, "x"));
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"result":"error","code":"conflict","message":"x"}"#
        );
    }

    #[test]
    fn every_request_of_this_version_parses_back() {
        for request in [
            attach("c1"),
            Request::Detach { id: "c1".into() },
            Request::Status,
        ] {
            let line = serde_json::to_vec(&Envelope::new(request.clone())).unwrap();
            assert_eq!(parse_request(&line).unwrap(), request);
        }
    }

    /// A client of another release is told to match releases, whatever else it sent.
    #[test]
    fn other_versions_are_refused_with_the_remedy() {
        let old = "this client speaks protocol 0 (no version: an older release), hpk-netd \
                   speaks 1: use the hpk-hook/hpktainer of the same release";
        let later = |n: u32| {
            format!(
                "this client speaks protocol {n}, hpk-netd speaks 1: use the \
                 hpk-hook/hpktainer of the same release"
            )
        };
        for (line, expect) in [
            // Clients from before versions.
            (&br#"{"op":"status"}"#[..], old.to_owned()),
            (br#"{"op":"attach","id":"c1","pid":42}"#, old.to_owned()),
            (br#"{"version":null,"op":"status"}"#, old.to_owned()),
            (br#"{"version":2,"op":"status"}"#, later(2)),
            // A later release's operation: its version is what is wrong.
            (br#"{"version":7,"op":"migrate","to":"x"}"#, later(7)),
        ] {
            let err = parse_request(line).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{err}");
            assert_eq!(err.message, expect, "for {}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        for line in [
            &b"{not json"[..],
            br#"{"op":"attach","id":"half"#,
            br#"{"version":"1","op":"status"}"#,
            br#"{"version":1,"op":"fly"}"#,
            br#"{"version":1,"op":"attach","id":"c1"}"#,
        ] {
            let err = parse_request(line).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.starts_with("malformed request: "), "{err}");
        }
    }

    /// hpk-netd of a release before versions ignores the version it does not know.
    #[test]
    fn an_older_hpk_netd_reads_versioned_requests() {
        for request in [
            attach("c1"),
            Request::Detach { id: "c1".into() },
            Request::Status,
        ] {
            let line = serde_json::to_vec(&Envelope::new(request.clone())).unwrap();
            assert_eq!(serde_json::from_slice::<Request>(&line).unwrap(), request);
        }
    }

    #[test]
    fn codes_have_a_stable_wire_form_and_unknown_ones_read_as_internal() {
        for (code, wire) in [
            (ErrorCode::BadRequest, "bad_request"),
            (ErrorCode::NotFound, "not_found"),
            (ErrorCode::Conflict, "conflict"),
            (ErrorCode::Unavailable, "unavailable"),
            (ErrorCode::Internal, "internal"),
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{wire}\""));
            assert_eq!(code.to_string(), wire);
            let back: ErrorCode = serde_json::from_str(&format!("\"{wire}\"")).unwrap();
            assert_eq!(back, code);
        }
        let later: Response =
            serde_json::from_str(r#"{"result":"error","code":"gone_fishing","message":"m"}"#)
                .unwrap();
        assert_eq!(
            later,
            Response::Error(ControlError::new(ErrorCode::Internal, "m"))
        );
    }

    /// The error of hpk-netd before codes (`{"result":"error","message":...}`) is read with
    /// its message whole.
    #[test]
    fn answers_without_a_code_are_read() {
        let old: Response =
            serde_json::from_str(r#"{"result":"error","message":"address 10.0.0.2 is in use"}"#)
                .unwrap();
        let Response::Error(e) = old else {
            panic!("{old:?}")
        };
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(e.message, "address 10.0.0.2 is in use");
        let detached: Response =
            serde_json::from_str(r#"{"result":"detached","id":"c1","was_attached":false}"#)
                .unwrap();
        assert_eq!(
            detached,
            Response::Detached {
                id: "c1".into(),
                was_attached: false
            }
        );
    }

    /// A client of a release before versions and codes, refused for its missing version,
    /// reads our error as the error it knows, with the remedy in its message.
    #[test]
    fn an_older_client_reads_the_version_error() {
        #[derive(Debug, Deserialize)]
        #[serde(tag = "result", rename_all = "snake_case")]
        enum OldResponse {
            Error { message: String },
        }
        let err = parse_request(br#"{"op":"detach","id":"c1"}"#).unwrap_err();
        let line = serde_json::to_string(&Response::Error(err)).unwrap();
        let OldResponse::Error { message } = serde_json::from_str(&line).unwrap();
        assert!(
            message.contains("use the hpk-hook/hpktainer of the same release"),
            "{message}"
        );
    }

    #[test]
    fn errors_say_what_to_do_per_code() {
        let shown = |code| ControlError::new(code, "the message").to_string();
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
        ] {
            assert_eq!(shown(code), "the message");
        }
        assert_eq!(
            shown(ErrorCode::Unavailable),
            "the message (hpk-netd is starting, busy or cannot reach etcd: retry, or see its log)"
        );
        assert_eq!(
            shown(ErrorCode::Internal),
            "the message (a failure inside hpk-netd: its log has the details)"
        );
    }
}
