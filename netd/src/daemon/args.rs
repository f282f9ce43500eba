//! `hpk-netd run`'s flags: each overrides its key of the config file and also reads an
//! `HPK_NETD_*` environment variable.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::config::{Config, EndpointKind, Masquerade, SourceKind, UnderlayKind};

/// Flags override the config file; each also reads an HPK_NETD_* variable.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (TOML; see config/hpk-netd.toml). Without it, built-in defaults.
    #[arg(long, env = "HPK_NETD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for address allocations and endpoint records.
    #[arg(long, env = "HPK_NETD_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Control socket path.
    #[arg(long, env = "HPK_NETD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Control socket permission bits, octal.
    #[arg(long, env = "HPK_NETD_SOCKET_MODE", value_name = "OCTAL")]
    socket_mode: Option<String>,
    /// Group owning the control socket.
    #[arg(long, env = "HPK_NETD_SOCKET_GROUP", value_name = "GROUP")]
    socket_group: Option<String>,
    /// Uids allowed on the control socket, comma-separated.
    #[arg(
        long,
        env = "HPK_NETD_ALLOWED_UIDS",
        value_delimiter = ',',
        value_name = "UID,..."
    )]
    allowed_uids: Option<Vec<u32>>,
    /// The bubble's bridge.
    #[arg(long, env = "HPK_NETD_BRIDGE", value_name = "NAME")]
    bridge: Option<String>,
    /// Masquerade traffic leaving the overlay.
    #[arg(long, env = "HPK_NETD_MASQUERADE", value_enum)]
    masquerade: Option<Masquerade>,
    /// Name of the tap inside each container.
    #[arg(long, env = "HPK_NETD_CONTAINER_TAP", value_name = "NAME")]
    container_tap: Option<String>,
    /// How containers are joined to the bridge: a veth pair (the kernel's path), a tap
    /// pair with an hpk-net-daemon forwarder, a socket pair (server and client
    /// hpk-net-daemons, the original design), or auto (veth where possible, else tap).
    #[arg(long, env = "HPK_NETD_ENDPOINT", value_enum)]
    endpoint: Option<EndpointKind>,
    /// Tap endpoints share one forwarder per bubble (true), or each has its own
    /// hpk-net-daemon (false).
    #[arg(long, env = "HPK_NETD_TAP_HUB", value_name = "BOOL")]
    tap_hub: Option<bool>,
    /// The hub hands frames between two of its containers straight over (true), or
    /// every frame crosses the bridge (false: for captures or filters on the bridge).
    #[arg(long, env = "HPK_NETD_HUB_SHORTCUT", value_name = "BOOL")]
    hub_shortcut: Option<bool>,
    /// Tap forwarders and the hub keep polling this many microseconds after traffic
    /// before they sleep (0: never); at least the gap between a container's messages
    /// makes every one find them awake, for a vCPU's time while traffic lasts.
    #[arg(long, env = "HPK_NETD_BUSY_POLL_US", value_name = "USEC")]
    busy_poll_us: Option<u64>,
    /// Let containers send only from their own MAC and address (nftables).
    #[arg(long, env = "HPK_NETD_ANTISPOOF", value_name = "BOOL")]
    antispoof: Option<bool>,
    /// The hpk-net-daemon binary.
    #[arg(long, env = "HPK_NETD_NET_DAEMON", value_name = "PATH")]
    net_daemon: Option<String>,
    /// flannel's subnet file (read from flanneld, or written by the etcd agent).
    #[arg(long, env = "HPK_NETD_SUBNET_FILE", value_name = "PATH")]
    subnet_file: Option<PathBuf>,
    /// Where the subnet comes from.
    #[arg(long, env = "HPK_NETD_SUBNET_SOURCE", value_enum)]
    subnet_source: Option<SourceKind>,
    /// etcd endpoints, comma-separated (source etcd).
    #[arg(
        long,
        env = "HPK_NETD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL,..."
    )]
    etcd_endpoints: Option<Vec<String>>,
    /// etcd key prefix (source etcd).
    #[arg(long, env = "HPK_NETD_ETCD_PREFIX", value_name = "PREFIX")]
    etcd_prefix: Option<String>,
    /// Address other nodes send vxlan to (source etcd).
    #[arg(long, env = "HPK_NETD_PUBLIC_IP", value_name = "IP")]
    public_ip: Option<String>,
    /// Uplink interface, by name or address (source etcd).
    #[arg(long, env = "HPK_NETD_IFACE", value_name = "NAME|IP")]
    iface: Option<String>,
    /// CA certificate for etcd TLS.
    #[arg(long, env = "HPK_NETD_ETCD_CA_FILE", value_name = "PEM")]
    etcd_ca_file: Option<String>,
    /// Client certificate for etcd TLS.
    #[arg(long, env = "HPK_NETD_ETCD_CERT_FILE", value_name = "PEM")]
    etcd_cert_file: Option<String>,
    /// Client key for etcd TLS.
    #[arg(long, env = "HPK_NETD_ETCD_KEY_FILE", value_name = "PEM")]
    etcd_key_file: Option<String>,
    /// Subnet lease time to live in seconds (source etcd).
    #[arg(long, env = "HPK_NETD_ETCD_LEASE_TTL", value_name = "SECS")]
    etcd_lease_ttl: Option<u64>,
    /// Install flanneld's --ip-masq rules (source etcd).
    #[arg(long, env = "HPK_NETD_IP_MASQ", value_name = "BOOL")]
    ip_masq: Option<bool>,
    /// MTU of the host link vxlan leaves on, when the uplink is not that link (a bubble
    /// behind slirp4netns or pasta): the overlay MTU is this minus 50 (source etcd).
    #[arg(long, env = "HPK_NETD_UNDERLAY_MTU", value_name = "BYTES")]
    underlay_mtu: Option<u32>,
    /// Where vxlan meets the host's network: flannel's kernel device, or hpk-netd's own
    /// VTEP on the host socket a bubble's launcher serves, or on one it binds itself
    /// (userspace) (source etcd).
    #[arg(long, env = "HPK_NETD_UNDERLAY", value_enum)]
    underlay: Option<UnderlayKind>,
    /// UNIX socket the launcher serves the host's UDP socket on (source etcd).
    #[arg(long, env = "HPK_NETD_UNDERLAY_SOCKET", value_name = "PATH")]
    underlay_socket: Option<String>,
    /// The cluster's overlay key (hex, 0600): datagrams between hpk-netd VTEPs are sealed
    /// with keys derived from it; unset: plain flannel vxlan (source etcd, host socket).
    #[arg(long, env = "HPK_NETD_OVERLAY_KEY", value_name = "PATH")]
    overlay_key: Option<String>,
    /// Encrypt the overlay's frames (the default with --overlay-key), or only authenticate
    /// them (false: frames readable on the wire, and slower: AES-GCM's associated data
    /// path is, see docs/overlay-security.md).
    #[arg(long, env = "HPK_NETD_OVERLAY_ENCRYPT", value_name = "BOOL")]
    overlay_encrypt: Option<bool>,
    /// UNIX socket where the bubble's launcher binds published ports on the host; unset:
    /// hpk-netd binds them in its own network namespace.
    #[arg(long, env = "HPK_NETD_PORTS_SOCKET", value_name = "PATH")]
    ports_socket: Option<String>,
    /// Serve container names on the bridge's gateway (DNS, port 53).
    #[arg(long, env = "HPK_NETD_NAMES", value_name = "BOOL")]
    names: Option<bool>,
    /// The cluster domain of container names.
    #[arg(long, env = "HPK_NETD_NAMES_DOMAIN", value_name = "DOMAIN")]
    names_domain: Option<String>,
    /// Seconds a dead bubble's names outlive it.
    #[arg(long, env = "HPK_NETD_NAMES_TTL", value_name = "SECS")]
    names_ttl: Option<u64>,
    /// DNS queries a second one container may send; beyond that they are dropped.
    #[arg(long, env = "HPK_NETD_NAMES_CLIENT_QPS", value_name = "QPS")]
    names_client_qps: Option<u32>,
    /// Resolvers for other names, comma-separated (default: the bubble's resolv.conf).
    #[arg(
        long,
        env = "HPK_NETD_DNS_UPSTREAM",
        value_delimiter = ',',
        value_name = "ADDR[:PORT],..."
    )]
    dns_upstream: Option<Vec<String>>,
}

impl RunArgs {
    /// The config file with flags and environment applied on top.
    pub fn config(self) -> Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! set {
            ($($field:ident).+ <- $value:expr) => {
                if let Some(v) = $value {
                    c.$($field).+ = v;
                }
            };
        }
        set!(state_dir <- self.state_dir);
        set!(socket <- self.socket);
        set!(socket_mode <- self.socket_mode);
        set!(socket_group <- self.socket_group);
        set!(allowed_uids <- self.allowed_uids);
        set!(bridge <- self.bridge);
        set!(masquerade <- self.masquerade);
        set!(container_tap <- self.container_tap);
        set!(endpoint <- self.endpoint);
        set!(tap_hub <- self.tap_hub);
        set!(hub_shortcut <- self.hub_shortcut);
        set!(busy_poll_us <- self.busy_poll_us);
        set!(antispoof <- self.antispoof);
        set!(net_daemon <- self.net_daemon);
        set!(subnet.subnet_file <- self.subnet_file);
        set!(subnet.source <- self.subnet_source);
        set!(subnet.etcd.endpoints <- self.etcd_endpoints);
        set!(subnet.etcd.prefix <- self.etcd_prefix);
        set!(subnet.etcd.public_ip <- self.public_ip);
        set!(subnet.etcd.interface <- self.iface);
        set!(subnet.etcd.ca_file <- self.etcd_ca_file);
        set!(subnet.etcd.cert_file <- self.etcd_cert_file);
        set!(subnet.etcd.key_file <- self.etcd_key_file);
        set!(subnet.etcd.lease_ttl <- self.etcd_lease_ttl);
        set!(subnet.etcd.ip_masq <- self.ip_masq);
        set!(subnet.etcd.underlay_mtu <- self.underlay_mtu);
        set!(subnet.etcd.underlay <- self.underlay);
        set!(subnet.etcd.underlay_socket <- self.underlay_socket);
        set!(subnet.etcd.overlay_key <- self.overlay_key);
        set!(subnet.etcd.overlay_encrypt <- self.overlay_encrypt.map(Some));
        set!(ports_socket <- self.ports_socket);
        set!(names.enabled <- self.names);
        set!(names.domain <- self.names_domain);
        set!(names.ttl <- self.names_ttl);
        set!(names.upstream <- self.dns_upstream);
        set!(names.client_qps <- self.names_client_qps);
        c.validate()?;
        Ok(c)
    }
}
