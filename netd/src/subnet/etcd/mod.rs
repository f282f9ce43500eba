//! Our own flannel-compatible agent over etcd, taking flanneld's place on a node: a
//! subnet lease in etcd, the vxlan device, and routes to every other node's subnet, kept
//! current by watching `subnets/`. Split as flannel is: the registry talks to etcd, the
//! lease manager holds the policy, the vxlan network consumes lease events.

pub mod lease;
pub(crate) mod lease_manager;
pub mod masq;
pub mod netconfig;
pub(crate) mod registry;
pub mod tls;
pub mod vxlan;
pub(crate) mod vxlan_network;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::EventType;
use ipnet::Ipv4Net;
use tracing::{info, warn};

use self::lease::{lease_value, Peer};
use self::lease_manager::LeaseManager;
use self::masq::flannel_chains;
pub(crate) use self::registry::connect;
use self::registry::Registry;
use self::vxlan::{Device, DeviceSpec, SharedVtep, Vtep, VXLAN_OVERHEAD};
use self::vxlan_network::VxlanNetwork;
use crate::subnet::{SubnetEnv, SubnetSource};
use crate::sys::firewall::Firewall;
use crate::sys::fs::write_atomically;
use crate::sys::netlink::Netlink;
use crate::underlay;
use crate::underlay::auth::key::ClusterKey;
use crate::underlay::auth::keys::Keys;
use crate::underlay::auth::seal::{Protection, OVERHEAD as SEAL_OVERHEAD};

/// How the agent reaches etcd and presents this node.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The address other nodes send vxlan to; default: the uplink's address.
    pub public_ip: Option<Ipv4Addr>,
    /// Uplink by name or address; default: the interface of the default route.
    pub interface: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub lease_ttl: Duration,
    pub ip_masq: bool,
    /// MTU of the link vxlan really leaves the host on, when the uplink is not that link
    /// (a bubble's slirp4netns or pasta tap at 65520): vxlan must fit the real link, or
    /// every datagram fragments on the LAN.
    pub underlay_mtu: Option<u32>,
    /// Where hpk-netd's own VTEP gets its UDP socket. `None`: flannel's kernel vxlan device.
    pub userspace: Option<VtepSocket>,
    /// The cluster's key: our VTEP seals its datagrams to hpk-netd peers and takes only
    /// sealed ones from them.
    pub overlay_key: Option<PathBuf>,
    /// Encrypt as well as authenticate (the default; authenticating alone is slower with
    /// ring's AES-GCM, whose associated-data path is a third of its encryption's speed).
    pub overlay_encrypt: bool,
    /// Where subnet.env is written.
    pub subnet_file: PathBuf,
}

/// The UDP socket of hpk-netd's own VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VtepSocket {
    /// Served by a bubble's launcher on this UNIX socket (the VTEP in a rootless bubble).
    Served(PathBuf),
    /// Bound by hpk-netd itself on the public address and the network's port.
    Own,
}

/// What status reports: our lease and the peers we route to.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    pub subnet: Option<Ipv4Net>,
    pub public_ip: Option<Ipv4Addr>,
    pub expires: u64,
    pub peers: BTreeMap<Ipv4Net, Peer>,
    /// When each peer's lease runs out (seconds since the epoch), refreshed at each
    /// re-list and lease event.
    pub peer_expiry: BTreeMap<Ipv4Net, u64>,
    /// The local VTEP, once it exists.
    pub vtep: Option<SharedVtep>,
}

pub type SharedOverlay = Arc<Mutex<Overlay>>;

pub struct EtcdSource {
    cfg: AgentConfig,
    firewall: Arc<dyn Firewall>,
    overlay: SharedOverlay,
}

impl EtcdSource {
    pub fn new(cfg: AgentConfig, firewall: Arc<dyn Firewall>) -> EtcdSource {
        EtcdSource {
            cfg,
            firewall,
            overlay: SharedOverlay::default(),
        }
    }

    pub fn overlay(&self) -> SharedOverlay {
        self.overlay.clone()
    }
}

/// How often the agent re-lists `subnets/` even when the watch is healthy: retries a
/// peer whose routes could not be installed, and catches anything a watch may have missed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The agent's life after start-up: lease events in, routes and renewals out.
struct Agent {
    leases: LeaseManager,
    network: VxlanNetwork,
}

/// The link vxlan leaves this namespace on.
struct Uplink {
    index: u32,
    mtu: u32,
    /// slirp4netns' or pasta's tap: its MTU says nothing about the real link.
    is_tun: bool,
    public_ip: Ipv4Addr,
}

/// The uplink and the public address.
fn uplink(cfg: &AgentConfig) -> Result<Uplink> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let by_addr = |nl: &mut Netlink, ip: Ipv4Addr| -> Result<Option<u32>> {
        for l in &links {
            if nl.ipv4_addresses(l.index)?.iter().any(|(a, _)| *a == ip) {
                return Ok(Some(l.index));
            }
        }
        Ok(None)
    };
    let index = match &cfg.interface {
        Some(iface) => match iface.parse::<Ipv4Addr>() {
            Ok(ip) => by_addr(&mut nl, ip)?
                .ok_or_else(|| anyhow!("no interface has address {ip} (--iface)"))?,
            Err(_) => nl
                .link_index(iface)?
                .ok_or_else(|| anyhow!("interface {iface:?} (--iface) does not exist"))?,
        },
        None => match cfg
            .public_ip
            .map(|ip| by_addr(&mut nl, ip))
            .transpose()?
            .flatten()
        {
            Some(i) => i,
            None => nl
                .default_route_link()?
                .ok_or_else(|| anyhow!("no default route to pick the uplink from: set --iface"))?,
        },
    };
    let link = links
        .iter()
        .find(|l| l.index == index)
        .ok_or_else(|| anyhow!("uplink {index} vanished"))?;
    let public_ip = match cfg.public_ip {
        Some(ip) => ip,
        None => nl
            .ipv4_addresses(index)?
            .first()
            .map(|(a, _)| *a)
            .ok_or_else(|| anyhow!("uplink {} has no IPv4 address: set --public-ip", link.name))?,
    };
    Ok(Uplink {
        index,
        mtu: link.mtu,
        is_tun: link.is_tun,
        public_ip,
    })
}

/// MTU of the link vxlan really leaves the host on: configured, or the uplink's unless
/// that is a userspace program's tap (65520 would make every datagram ~45 fragments).
fn underlay_mtu(configured: Option<u32>, uplink: Option<&Uplink>) -> u32 {
    if let Some(mtu) = configured {
        return mtu;
    }
    match uplink {
        Some(u) if !u.is_tun => u.mtu,
        _ => {
            warn!(
                "the host link's MTU is not visible from here (uplink is a tap, or the \
                 underlay is a host socket): assuming 1500; set --underlay-mtu"
            );
            1500
        }
    }
}

/// The host socket, fetched from the launcher.
async fn host_socket(path: &std::path::Path) -> Result<std::net::UdpSocket> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || underlay::handover::receive(&path, Duration::from_secs(10)))
        .await?
}

/// The subnet flanneld (or we) had before, from an existing subnet.env.
fn previous_subnet(path: &std::path::Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    SubnetEnv::parse(&text, path).ok().map(|e| e.subnet)
}

impl Agent {
    /// Watches `subnets/` from `revision`; returns `Ok` when it is time to re-list, an
    /// error when the watch broke.
    async fn watch(&mut self, revision: i64) -> Result<()> {
        let mut stream = self.leases.registry.watch(revision).await?;
        let resync = tokio::time::sleep(RESYNC_EVERY);
        tokio::pin!(resync);
        loop {
            let msg = tokio::select! {
                m = stream.message() => m?,
                _ = &mut resync => return Ok(()),
                _ = tokio::time::sleep_until(self.leases.renew_at) => {
                    self.leases.renew_or_retry("").await;
                    continue;
                }
            };
            let Some(resp) = msg else {
                bail!("watch ended");
            };
            if resp.compact_revision() > 0 {
                bail!("watch compacted at revision {}", resp.compact_revision());
            }
            if resp.canceled() {
                bail!("watch canceled by etcd");
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let subnet = self.leases.subnet_of(&key);
                match event.event_type() {
                    EventType::Put => {
                        if let Some(peer) = self.leases.peer_of(&key, kv.value()) {
                            let expiry = self.leases.registry.expiry(kv.lease()).await;
                            let subnet = peer.subnet;
                            self.network.add_peer(peer).await;
                            self.network.note_expiry(subnet, expiry);
                        }
                    }
                    EventType::Delete if subnet == Some(self.leases.subnet) => {
                        self.leases.recreate_own().await
                    }
                    EventType::Delete => {
                        if let Some(subnet) = subnet {
                            self.network.remove_peer(subnet).await;
                        }
                    }
                }
            }
        }
    }

    /// Watch, renew, and ride out etcd outages (routes stay as they are until etcd says
    /// otherwise).
    /// `peers` are those routed to at start-up; their lease expiry (status only, one etcd
    /// call each) is looked up here rather than on hpk-netd's start-up path.
    async fn run(mut self, peers: Vec<(Peer, i64)>, mut revision: i64) {
        let expiry = self.leases.peer_expiry(&peers).await;
        self.network.set_expiry(expiry);
        loop {
            if let Err(e) = self.watch(revision).await {
                warn!(error = %e, "lost the etcd watch; existing routes stay; resyncing");
            }
            loop {
                // The connection may be gone: reconnect if a plain read fails.
                match self.leases.registry.list().await {
                    Ok((entries, rev)) => {
                        let peers = self.leases.peers(&entries);
                        let expiry = self.leases.peer_expiry(&peers).await;
                        self.network
                            .converge(peers.into_iter().map(|(p, _)| p).collect())
                            .await;
                        self.network.set_expiry(expiry);
                        revision = rev;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "etcd unreachable; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if tokio::time::Instant::now() >= self.leases.renew_at {
                            let _ = self.leases.renew().await;
                        }
                    }
                }
            }
            // Our key may have expired during the outage: renewing checks and recreates.
            self.leases.renew_or_retry("after the outage ").await;
        }
    }
}

impl SubnetSource for EtcdSource {
    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.cfg.endpoints.join(","),
            self.cfg.prefix
        )
    }

    fn acquire(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<SubnetEnv>> + Send + '_>> {
        Box::pin(self.start())
    }
}

impl EtcdSource {
    /// flannel's kernel device on the uplink, and the address to publish.
    async fn kernel_vtep(
        &self,
        vni: u32,
        port: u16,
        net_mtu: Option<u32>,
    ) -> Result<(SharedVtep, Ipv4Addr)> {
        let cfg = self.cfg.clone();
        let up = tokio::task::spawn_blocking(move || uplink(&cfg)).await??;
        let mtu =
            net_mtu.unwrap_or(underlay_mtu(self.cfg.underlay_mtu, Some(&up)) - VXLAN_OVERHEAD);
        let spec = DeviceSpec {
            vni,
            local: up.public_ip,
            uplink: up.index,
            port,
            mtu,
        };
        let device = tokio::task::spawn_blocking(move || vxlan::ensure_device(&spec)).await??;
        info!(device = device.name, "underlay: kernel vxlan");
        Ok((Arc::new(Vtep::Kernel(device)), up.public_ip))
    }

    /// Our own VTEP's socket: fetched from the launcher, or bound here.
    async fn vtep_socket(&self, from: &VtepSocket, port: u16) -> Result<std::net::UdpSocket> {
        match from {
            VtepSocket::Served(path) => host_socket(path).await,
            VtepSocket::Own => {
                let cfg = self.cfg.clone();
                let up = tokio::task::spawn_blocking(move || uplink(&cfg)).await??;
                let at = std::net::SocketAddrV4::new(up.public_ip, port);
                std::net::UdpSocket::bind(at).with_context(|| {
                    format!(
                        "cannot bind the vxlan port {at} (underlay userspace): is flannel's \
                         kernel device or another VTEP on it?"
                    )
                })
            }
        }
    }

    /// Our own VTEP on the socket `from` gives, and the address to publish.
    async fn userspace_vtep(
        &self,
        from: &VtepSocket,
        vni: u32,
        port: u16,
        net_mtu: Option<u32>,
    ) -> Result<(SharedVtep, Ipv4Addr)> {
        let socket = self.vtep_socket(from, port).await?;
        let local = underlay::handover::local_addr(&socket)?;
        if local.port() != port {
            bail!(
                "the host socket is bound to port {}, but the network's vxlan port is {port}: \
                 the launcher must bind the port of the network config (Backend.Port)",
                local.port()
            );
        }
        let public_ip = match (self.cfg.public_ip, *local.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if !ip.is_unspecified() => ip,
            (None, _) => bail!(
                "the host socket is bound to {local}, which names no address to publish: set --public-ip"
            ),
        };
        let cfg = self.cfg.clone();
        let up = tokio::task::spawn_blocking(move || uplink(&cfg).ok()).await?;
        let sealing = self.sealing(public_ip)?;
        let overhead = if sealing.is_some() {
            SEAL_OVERHEAD as u32
        } else {
            0
        };
        let mtu = net_mtu
            .unwrap_or(underlay_mtu(self.cfg.underlay_mtu, up.as_ref()) - VXLAN_OVERHEAD)
            - overhead;
        let name = format!("flannel.{vni}");
        let mac = underlay::device::vtep_mac(public_ip);
        let dev_name = name.clone();
        let (vtep, index) = tokio::task::spawn_blocking(move || {
            underlay::start(&dev_name, mac, mtu, socket, (vni, port), sealing)
        })
        .await??;
        let device = Device {
            name,
            index,
            mac,
            mtu,
        };
        info!(device = device.name, local = %local, "underlay: userspace vxlan on the host socket");
        Ok((Arc::new(Vtep::Userspace(device, vtep)), public_ip))
    }

    /// The sealer and opener of our VTEP, when the cluster has a key.
    fn sealing(&self, public_ip: Ipv4Addr) -> Result<Option<underlay::datapath::Sealing>> {
        let Some(path) = &self.cfg.overlay_key else {
            warn!(
                "no overlay key: the overlay is plain flannel vxlan, and any user of a \
                 node can send frames into it (set --overlay-key)"
            );
            return Ok(None);
        };
        let (key, previous) = ClusterKey::load_with_previous(path)?;
        let keys = Keys::with_previous(key, previous);
        let protection = if self.cfg.overlay_encrypt {
            Protection::Encrypt
        } else {
            Protection::Authenticate
        };
        info!(
            ?protection,
            "overlay: datagrams to hpk-netd peers are sealed"
        );
        // A restarted controller rotates the key: follow the file.
        tokio::spawn(underlay::auth::keys::watch(path.clone(), keys.clone()));
        Ok(Some(underlay::datapath::Sealing {
            keys,
            protection,
            own: public_ip,
            session_file: self.cfg.subnet_file.with_file_name("vtep.session"),
        }))
    }

    /// Connects, leases a subnet, builds the vxlan device and routes, writes subnet.env,
    /// and leaves the agent running in the background.
    async fn start(&mut self) -> Result<SubnetEnv> {
        let mut registry = Registry::connect(&self.cfg).await;
        let net = registry.network_config().await?;
        let (vtep, public_ip) = match &self.cfg.userspace {
            Some(from) => {
                self.userspace_vtep(from, net.vni, net.port, net.mtu)
                    .await?
            }
            None => self.kernel_vtep(net.vni, net.port, net.mtu).await?,
        };
        let device = vtep.device().clone();
        self.overlay.lock().unwrap().vtep = Some(vtep.clone());
        registry.set_own_value(lease_value(public_ip, net.vni, device.mac, vtep.hpk()));
        let mut leases = LeaseManager::new(
            registry,
            net.clone(),
            public_ip,
            self.cfg.lease_ttl,
            self.overlay.clone(),
        );
        let (entries, revision) = leases
            .acquire(previous_subnet(&self.cfg.subnet_file))
            .await?;
        let subnet = leases.subnet;
        let dev = device.clone();
        tokio::task::spawn_blocking(move || vxlan::set_device_address(&dev, subnet)).await??;
        let network = VxlanNetwork::new(vtep, self.overlay.clone());
        let peers = leases.peers(&entries);
        network
            .converge(peers.iter().map(|(p, _)| p.clone()).collect())
            .await;
        if self.cfg.ip_masq {
            let chains = flannel_chains(subnet, net.network);
            let fw = self.firewall.clone();
            let c = chains.clone();
            tokio::task::spawn_blocking(move || fw.apply(&c)).await??;
            // Like flanneld, put the rules back if someone flushes them.
            tokio::spawn(crate::sys::firewall::keep(self.firewall.clone(), chains));
        }
        let env = SubnetEnv {
            network: net.network,
            subnet,
            gateway: subnet.hosts().next().expect("subnets have hosts"),
            mtu: device.mtu,
            ipmasq: self.cfg.ip_masq,
        };
        write_atomically(&self.cfg.subnet_file, env.render().as_bytes(), 0o644, false)?;
        info!(subnet = %subnet, public_ip = %public_ip, device = device.name, "overlay ready");
        tokio::spawn(Agent { leases, network }.run(peers, revision));
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_underlay_mtu_is_a_real_links() {
        let link = |mtu, is_tun| Uplink {
            index: 2,
            mtu,
            is_tun,
            public_ip: Ipv4Addr::new(192, 0, 2, 11),
        };
        assert_eq!(underlay_mtu(None, Some(&link(9000, false))), 9000);
        // slirp4netns' or pasta's tap says nothing about the LAN.
        assert_eq!(underlay_mtu(None, Some(&link(65520, true))), 1500);
        assert_eq!(underlay_mtu(None, None), 1500);
        assert_eq!(underlay_mtu(Some(1400), Some(&link(65520, true))), 1400);
    }
}
