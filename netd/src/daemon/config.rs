//! hpk-netd's configuration: a TOML file (`config/hpk-netd.toml` documents every key),
//! each key overridable by a flag or an `HPK_NETD_*` environment variable.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

pub use hpk_hook::proto::EndpointKind;

use crate::datapath::args::DEFAULT_BUSY_POLL_US;
use crate::sys::tap::validate_ifname;
use crate::sys::users::parse_mode;

/// The longest polling after traffic a configuration may ask of the forwarders.
const MAX_BUSY_POLL_US: u64 = 1_000_000;

/// Whether hpk-netd masquerades traffic that leaves the overlay network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Masquerade {
    /// Only when the subnet source does not already (FLANNEL_IPMASQ=false).
    #[default]
    Auto,
    On,
    Off,
}

impl Masquerade {
    /// Whether we add the rule, given what the subnet source does.
    pub fn ours(self, source_masquerades: bool) -> bool {
        match self {
            Masquerade::Auto => !source_masquerades,
            Masquerade::On => true,
            Masquerade::Off => false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A real flanneld writes subnet.env; hpk-netd reads it.
    #[default]
    Flannel,
    /// hpk-netd's own flannel-compatible agent over etcd (writes subnet.env itself).
    Etcd,
}

/// Where the agent's vxlan meets the host's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UnderlayKind {
    /// host-socket when a socket is served at underlay_socket, else kernel.
    #[default]
    Auto,
    /// flannel's kernel vxlan device on the uplink.
    Kernel,
    /// hpk-netd's own VTEP on a UDP socket of the host, fetched from underlay_socket.
    HostSocket,
    /// hpk-netd's own VTEP on a UDP socket it binds itself (a host where it runs with the
    /// network's port free: no kernel vxlan module needed, and the overlay can be sealed).
    Userspace,
}

/// The built-in agent's settings (`[subnet.etcd]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Address other nodes send vxlan to; empty: the uplink's address.
    pub public_ip: String,
    /// Uplink, by name or address; empty: the default route's interface.
    pub interface: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    /// Lease time to live, seconds (flanneld: 24 h).
    pub lease_ttl: u64,
    /// Install flanneld's --ip-masq rules (and say so in subnet.env).
    pub ip_masq: bool,
    /// MTU of the link vxlan really leaves the host on; 0: the uplink's own MTU.
    pub underlay_mtu: u32,
    pub underlay: UnderlayKind,
    /// UNIX socket where the bubble's launcher serves the host's UDP socket.
    pub underlay_socket: String,
    /// The cluster's overlay key: datagrams between hpk-netd VTEPs are sealed with it.
    pub overlay_key: String,
    /// Encrypt the frames as well as authenticate them; unset: yes, when there is a key.
    pub overlay_encrypt: Option<bool>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: crate::subnet::etcd::lease::DEFAULT_PREFIX.into(),
            public_ip: String::new(),
            interface: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            lease_ttl: 86400,
            ip_masq: true,
            underlay_mtu: 0,
            underlay: UnderlayKind::Auto,
            underlay_socket: String::new(),
            overlay_key: String::new(),
            overlay_encrypt: None,
        }
    }
}

impl EtcdConfig {
    /// The agent's settings; `subnet_file` is where it writes subnet.env.
    pub fn agent(&self, subnet_file: &Path) -> Result<crate::subnet::etcd::AgentConfig> {
        let opt = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        if self.endpoints.is_empty() {
            bail!("subnet.etcd.endpoints is empty");
        }
        if self.lease_ttl < 3 {
            bail!(
                "subnet.etcd.lease_ttl {} is too short (3 s at least)",
                self.lease_ttl
            );
        }
        if self.underlay_mtu != 0 && !(576..=65535).contains(&self.underlay_mtu) {
            bail!(
                "subnet.etcd.underlay_mtu {} is out of range (576 to 65535, or 0 for the uplink's MTU)",
                self.underlay_mtu
            );
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            bail!("subnet.etcd.cert_file and key_file go together");
        }
        if !self.cert_file.is_empty() && self.ca_file.is_empty() {
            bail!("subnet.etcd.cert_file needs ca_file (TLS)");
        }
        let userspace = match (self.underlay, self.underlay_socket.as_str()) {
            (UnderlayKind::Kernel, _) | (UnderlayKind::Auto, "") => None,
            (UnderlayKind::Userspace, _) => Some(crate::subnet::etcd::VtepSocket::Own),
            (UnderlayKind::HostSocket, "") => bail!(
                "subnet.etcd.underlay is host-socket but underlay_socket is empty: name the \
                 UNIX socket the launcher serves the host's UDP socket on"
            ),
            (_, path) => Some(crate::subnet::etcd::VtepSocket::Served(PathBuf::from(path))),
        };
        if self.overlay_encrypt.is_some() && self.overlay_key.is_empty() {
            bail!(
                "subnet.etcd.overlay_encrypt needs overlay_key: the cluster's key file (a \
                 bubble cluster's controller writes it as SHARED_DIR/pki/overlay.key)"
            );
        }
        if !self.overlay_key.is_empty() && userspace.is_none() {
            bail!(
                "subnet.etcd.overlay_key seals hpk-netd's own VTEP (underlay host-socket or \
                 userspace); flannel's kernel device cannot seal"
            );
        }
        Ok(crate::subnet::etcd::AgentConfig {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            public_ip: match self.public_ip.as_str() {
                "" => None,
                ip => {
                    Some(ip.parse().map_err(|_| {
                        anyhow!("subnet.etcd.public_ip {ip:?} is not an IPv4 address")
                    })?)
                }
            },
            interface: (!self.interface.is_empty()).then(|| self.interface.clone()),
            ca_file: opt(&self.ca_file),
            cert_file: opt(&self.cert_file),
            key_file: opt(&self.key_file),
            lease_ttl: std::time::Duration::from_secs(self.lease_ttl),
            ip_masq: self.ip_masq,
            underlay_mtu: (self.underlay_mtu != 0).then_some(self.underlay_mtu),
            userspace,
            overlay_key: opt(&self.overlay_key),
            overlay_encrypt: self.overlay_encrypt.unwrap_or(true),
            subnet_file: subnet_file.to_path_buf(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubnetConfig {
    pub source: SourceKind,
    /// flannel's subnet file: read (source flannel) or written (source etcd).
    pub subnet_file: PathBuf,
    pub etcd: EtcdConfig,
}

impl Default for SubnetConfig {
    fn default() -> Self {
        SubnetConfig {
            source: SourceKind::Flannel,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            etcd: EtcdConfig::default(),
        }
    }
}

/// Container names and the bubble's DNS server (`[names]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamesConfig {
    /// Serve DNS on the bridge's gateway and register containers' names.
    pub enabled: bool,
    /// The cluster domain: `web` and `web.<domain>` both resolve.
    pub domain: String,
    /// Seconds a dead bubble's names outlive it (their etcd lease).
    pub ttl: u64,
    /// Resolvers for other names, `ADDRESS[:PORT]`; empty: those of `resolv_conf`.
    pub upstream: Vec<String>,
    /// The bubble's own resolver configuration.
    pub resolv_conf: PathBuf,
    /// Queries a second one container may send; beyond that they are dropped.
    pub client_qps: u32,
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            enabled: true,
            domain: "hpk.internal".into(),
            ttl: 15,
            upstream: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            client_qps: 100_000,
        }
    }
}

impl NamesConfig {
    /// The configured upstreams, checked.
    pub fn upstream(&self) -> Result<Vec<std::net::SocketAddr>> {
        self.upstream
            .iter()
            .map(|s| crate::names::parse_server(s))
            .collect()
    }

    fn validate(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        crate::names::answer::Zone::new(&self.domain).map_err(|e| anyhow!("names.domain: {e}"))?;
        if !(2..=3600).contains(&self.ttl) {
            bail!("names.ttl = {}: between 2 and 3600 seconds", self.ttl);
        }
        self.upstream()?;
        if self.client_qps == 0 {
            bail!("names.client_qps = 0: no container could ask anything");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses and endpoint records live here; they survive restarts.
    pub state_dir: PathBuf,
    /// The control socket hooks and the CLI talk to.
    pub socket: PathBuf,
    /// Permission bits of the control socket, octal.
    pub socket_mode: String,
    /// Group owning the control socket (name or number); empty: hpk-netd's own.
    pub socket_group: String,
    /// Peers (by uid, from SO_PEERCRED) allowed to use the control socket.
    pub allowed_uids: Vec<u32>,
    /// The bubble's bridge.
    pub bridge: String,
    pub masquerade: Masquerade,
    /// Name of the interface inside each container (whatever its kind).
    pub container_tap: String,
    /// Endpoint kind of containers that do not ask for one (annotation
    /// io.hpktainer.endpoint).
    pub endpoint: EndpointKind,
    /// Tap endpoints share one forwarder per bubble, the hub (fewer wake-ups per round
    /// trip, no process per container); false: one hpk-net-daemon per container.
    pub tap_hub: bool,
    /// The hub hands a frame between two of its containers straight over when the bridge
    /// would only forward it; false: every frame crosses the bridge.
    pub hub_shortcut: bool,
    /// Tap forwarders and the hub poll this long (µs) after traffic before they sleep.
    pub busy_poll_us: u64,
    /// Containers may send only from their own MAC and address (nftables, bridge family).
    pub antispoof: bool,
    /// The forwarder binary; empty: next to hpk-netd, else on PATH.
    pub net_daemon: String,
    /// Where the bubble's launcher binds published ports on the host (a UNIX socket);
    /// empty: hpk-netd binds them in its own network namespace.
    pub ports_socket: String,
    pub subnet: SubnetConfig,
    pub names: NamesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/hpktainer"),
            socket: PathBuf::from(hpk_hook::proto::DEFAULT_SOCKET),
            socket_mode: "0660".into(),
            socket_group: String::new(),
            allowed_uids: vec![0],
            bridge: "hpk-bridge".into(),
            masquerade: Masquerade::Auto,
            container_tap: "tap0".into(),
            endpoint: EndpointKind::Auto,
            tap_hub: true,
            hub_shortcut: true,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            antispoof: true,
            net_daemon: String::new(),
            ports_socket: String::new(),
            subnet: SubnetConfig::default(),
            names: NamesConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing file is an error only when it was asked for explicitly.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow!("config file {}: {e}", path.display()))
    }

    pub fn socket_mode_bits(&self) -> Result<u32> {
        parse_mode(&self.socket_mode).map_err(|e| anyhow!("socket_mode: {e}"))
    }

    /// Checks values a type cannot.
    pub fn validate(&self) -> Result<()> {
        validate_ifname(&self.bridge).context("bridge")?;
        validate_ifname(&self.container_tap).context("container_tap")?;
        self.socket_mode_bits()?;
        if self.busy_poll_us > MAX_BUSY_POLL_US {
            bail!(
                "busy_poll_us = {}: at most {MAX_BUSY_POLL_US} (1 s); a forwarder would poll \
                 instead of sleeping that long after every frame",
                self.busy_poll_us
            );
        }
        if self.subnet.source == SourceKind::Etcd {
            self.subnet.etcd.agent(&self.subnet.subnet_file)?;
        }
        self.names.validate()?;
        if self.allowed_uids.is_empty() {
            bail!("allowed_uids is empty: nobody could use the control socket");
        }
        Ok(())
    }

    /// The launcher's socket for published ports, if one is configured.
    pub fn ports_socket(&self) -> Option<PathBuf> {
        (!self.ports_socket.is_empty()).then(|| PathBuf::from(&self.ports_socket))
    }

    /// The forwarder to start for each container.
    pub fn net_daemon_path(&self) -> PathBuf {
        if !self.net_daemon.is_empty() {
            return PathBuf::from(&self.net_daemon);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("hpk-net-daemon")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("hpk-net-daemon"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_the_default() {
        let text = include_str!("../../../config/hpk-netd.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = toml::from_str::<Config>("bridg = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `bridg`"), "{err}");
        let err = toml::from_str::<Config>("masquerade = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
        let cfg = Config {
            bridge: "a-very-long-bridge-name".into(),
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = Config {
            socket_mode: "rw".into(),
            ..Config::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("octal"));
        let cfg = Config {
            busy_poll_us: 5_000_000,
            ..Config::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("busy_poll_us = 5000000: at most 1000000"),
            "{err}"
        );
        let names = |names: NamesConfig| {
            Config {
                names,
                ..Config::default()
            }
            .validate()
            .unwrap_err()
            .to_string()
        };
        let err = names(NamesConfig {
            domain: "a..b".into(),
            ..NamesConfig::default()
        });
        assert!(err.contains("names.domain"), "{err}");
        let err = names(NamesConfig {
            upstream: vec!["dns.example".into()],
            ..NamesConfig::default()
        });
        assert!(err.contains("not ADDRESS or ADDRESS:PORT"), "{err}");
        let err = names(NamesConfig {
            ttl: 1,
            ..NamesConfig::default()
        });
        assert!(err.contains("names.ttl = 1"), "{err}");
    }

    #[test]
    fn masquerade_follows_the_source() {
        assert!(Masquerade::Auto.ours(false));
        assert!(!Masquerade::Auto.ours(true));
        assert!(Masquerade::On.ours(true));
        assert!(!Masquerade::Off.ours(false));
    }
}
