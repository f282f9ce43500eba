//! The built-in flannel-compatible agent: a subnet lease in etcd, the vxlan device, and
//! routes to every other node's subnet, kept current by watching `subnets/`.
//!
//! Where it differs from flanneld (on purpose): a garbled value under `subnets/` is
//! logged and ignored instead of dropping every route, and a lost own lease is recreated
//! for the same subnet instead of exiting.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnet::Ipv4Net;
use rand::seq::IndexedRandom;
use tracing::{debug, error, info, warn};

use super::lease::{self, lease_value, parse_lease, parse_subnet_key, Parsed, Peer};
use super::netconfig::NetworkConfig;
use super::vxlan::{self, Device, DeviceSpec, VXLAN_OVERHEAD};
use crate::firewall::{flannel_chains, Firewall};
use crate::netlink::Netlink;
use crate::subnet::{SubnetEnv, SubnetSource};

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
    /// Where subnet.env is written.
    pub subnet_file: PathBuf,
}

/// What status reports: our lease and the peers we route to.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    pub subnet: Option<Ipv4Net>,
    pub public_ip: Option<Ipv4Addr>,
    pub expires: u64,
    pub peers: BTreeMap<Ipv4Net, Peer>,
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How often the agent re-lists `subnets/` even when the watch is healthy.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Everything the background loop needs.
struct Agent {
    cfg: AgentConfig,
    net: NetworkConfig,
    client: Client,
    device: Device,
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    value: String,
    /// When our lease must be renewed.
    renew_at: tokio::time::Instant,
    overlay: SharedOverlay,
}

async fn connect(cfg: &AgentConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    if let Some(ca) = &cfg.ca_file {
        let ca = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let mut tls =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            let cert =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key =
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    let mut client = Client::connect(&cfg.endpoints, Some(opts)).await?;
    // The channel connects lazily: ask something to know that etcd answers.
    client.get(lease::config_key(&cfg.prefix), None).await?;
    Ok(client)
}

/// Connects, retrying with backoff and saying which endpoints it tries.
async fn connect_with_retry(cfg: &AgentConfig) -> Client {
    let mut backoff = Duration::from_millis(250);
    loop {
        match connect(cfg).await {
            Ok(c) => return c,
            Err(e) => {
                warn!(endpoints = ?cfg.endpoints, error = %e, retry_in = ?backoff, "etcd is not reachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Reads `<prefix>/config`, waiting while it is missing; an invalid one is an error.
async fn network_config(client: &mut Client, prefix: &str) -> Result<NetworkConfig> {
    let key = lease::config_key(prefix);
    let mut announced = false;
    loop {
        match client.get(key.as_str(), None).await {
            Ok(resp) => {
                if let Some(kv) = resp.kvs().first() {
                    return NetworkConfig::parse(&String::from_utf8_lossy(kv.value()))
                        .map_err(|e| anyhow!("etcd key {key} is invalid: {e:#}"));
                }
                if !announced {
                    info!(key, "waiting for the network config in etcd");
                    announced = true;
                }
            }
            Err(e) => warn!(key, error = %e, "cannot read the network config; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The uplink (index, MTU) and the public address.
fn uplink(cfg: &AgentConfig) -> Result<(u32, u32, Ipv4Addr)> {
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
    Ok((index, link.mtu, public_ip))
}

/// The subnet flanneld (or we) had before, from an existing subnet.env.
fn previous_subnet(path: &std::path::Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    SubnetEnv::parse(&text, path).ok().map(|e| e.subnet)
}

/// Writes `text` to `path` atomically (temp file + rename), mode 0644.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

impl Agent {
    fn key(&self) -> String {
        lease::subnet_key(&self.cfg.prefix, self.subnet)
    }

    fn ttl_secs(&self) -> i64 {
        self.cfg.lease_ttl.as_secs().max(1) as i64
    }

    /// Renew an hour before expiry, or a third of the TTL for short ones.
    fn schedule_renewal(&mut self) {
        let ttl = self.cfg.lease_ttl;
        let margin = (ttl / 3).min(Duration::from_secs(3600));
        self.renew_at = tokio::time::Instant::now() + ttl - margin;
        let mut o = self.overlay.lock().unwrap();
        o.expires = now() + ttl.as_secs();
    }

    /// Puts `key = value` with a fresh lease, only if the key does not exist.
    async fn create(&mut self, key: &str) -> Result<bool> {
        let grant = self.client.lease_grant(self.ttl_secs(), None).await?;
        let put = TxnOp::put(
            key,
            self.value.as_str(),
            Some(PutOptions::new().with_lease(grant.id())),
        );
        let txn = Txn::new()
            .when(vec![Compare::version(key, CompareOp::Equal, 0)])
            .and_then(vec![put]);
        Ok(self.client.txn(txn).await?.succeeded())
    }

    /// Renews: a new lease and an unconditional put of our own key (flanneld's way).
    /// Puts our key unconditionally with a fresh lease: only for taking back this node's
    /// own lease (found by its PublicIP) at start, as flanneld does.
    async fn put_own(&mut self) -> Result<()> {
        let grant = self.client.lease_grant(self.ttl_secs(), None).await?;
        self.client
            .put(
                self.key(),
                self.value.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            )
            .await?;
        self.schedule_renewal();
        Ok(())
    }

    /// Renews with a fresh lease, but only while the key still holds our value: if it
    /// expired and another node took the subnet meanwhile, we must not overwrite it.
    async fn renew(&mut self) -> Result<()> {
        let key = self.key();
        let grant = self.client.lease_grant(self.ttl_secs(), None).await?;
        let put = TxnOp::put(
            key.as_str(),
            self.value.as_str(),
            Some(PutOptions::new().with_lease(grant.id())),
        );
        let txn = Txn::new()
            .when(vec![Compare::value(
                key.as_str(),
                CompareOp::Equal,
                self.value.as_str(),
            )])
            .and_then(vec![put]);
        if self.client.txn(txn).await?.succeeded() {
            self.schedule_renewal();
            debug!(subnet = %self.subnet, "lease renewed");
            return Ok(());
        }
        // Gone (expired during an outage) or someone else's now.
        self.recreate_own().await;
        Ok(())
    }

    /// Lists `subnets/`: the valid vxlan peers (not us), and the revision listed.
    async fn list(&mut self) -> Result<(BTreeMap<Ipv4Net, Peer>, i64)> {
        let prefix = lease::subnets_prefix(&self.cfg.prefix);
        let resp = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut peers = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some(peer) = self.peer_of(&String::from_utf8_lossy(kv.key()), kv.value()) {
                peers.insert(peer.subnet, peer);
            }
        }
        Ok((peers, revision))
    }

    /// A valid remote vxlan lease; anything else is logged and skipped.
    fn peer_of(&self, key: &str, value: &[u8]) -> Option<Peer> {
        let Some(subnet) = parse_subnet_key(&self.cfg.prefix, key) else {
            warn!(key, "ignoring a key under subnets/ that is not a lease");
            return None;
        };
        if subnet == self.subnet {
            return None;
        }
        if !self.net.routable(subnet, self.subnet) {
            warn!(key, subnet = %subnet, network = %self.net.network, "ignoring a lease outside this network's subnets");
            return None;
        }
        match parse_lease(subnet, value) {
            Ok(Parsed::Vxlan(peer)) => Some(peer),
            Ok(Parsed::OtherBackend(kind)) => {
                debug!(key, kind, "ignoring a lease of another backend");
                None
            }
            Err(e) => {
                warn!(key, error = %e, "ignoring a garbled lease; routes of valid peers stay");
                None
            }
        }
    }

    async fn add_peer(&self, peer: Peer) {
        let existing = self
            .overlay
            .lock()
            .unwrap()
            .peers
            .get(&peer.subnet)
            .cloned();
        if existing.as_ref() == Some(&peer) {
            return;
        }
        let (dev, p) = (self.device.clone(), peer.clone());
        match tokio::task::spawn_blocking(move || vxlan::add_peer(&dev, &p)).await {
            Ok(Ok(())) => {
                info!(subnet = %peer.subnet, public_ip = %peer.public_ip, "peer added");
                self.overlay.lock().unwrap().peers.insert(peer.subnet, peer);
            }
            Ok(Err(e)) => {
                error!(subnet = %peer.subnet, error = %format!("{e:#}"), "cannot route to peer")
            }
            Err(e) => error!(error = %e, "peer task failed"),
        }
    }

    async fn remove_peer(&self, subnet: Ipv4Net) {
        let Some(peer) = self.overlay.lock().unwrap().peers.remove(&subnet) else {
            return;
        };
        let dev = self.device.clone();
        let p = peer.clone();
        match tokio::task::spawn_blocking(move || vxlan::remove_peer(&dev, &p)).await {
            Ok(Ok(())) => info!(subnet = %subnet, public_ip = %peer.public_ip, "peer removed"),
            Ok(Err(e)) => {
                warn!(subnet = %subnet, error = %format!("{e:#}"), "peer removal incomplete")
            }
            Err(e) => error!(error = %e, "peer task failed"),
        }
    }

    /// Makes the routes match `peers` exactly.
    async fn converge(&self, peers: BTreeMap<Ipv4Net, Peer>) {
        let known: Vec<Ipv4Net> = self.overlay.lock().unwrap().peers.keys().copied().collect();
        for subnet in known {
            if !peers.contains_key(&subnet) {
                self.remove_peer(subnet).await;
            }
        }
        for peer in peers.into_values() {
            self.add_peer(peer).await;
        }
    }

    /// Our own key was deleted (revoked, or expired while etcd was away): put it back.
    async fn recreate_own(&mut self) {
        let key = self.key();
        match self.create(&key).await {
            Ok(true) => {
                warn!(subnet = %self.subnet, "our lease was removed; recreated it");
                self.schedule_renewal();
            }
            Ok(false) => {
                error!(key, "our subnet was leased by another node while ours had expired; not overwriting it: restart hpk-netd on this node to take a new subnet");
                // Ask again later, in case that node goes away.
                self.renew_at = tokio::time::Instant::now() + Duration::from_secs(30);
            }
            Err(e) => {
                warn!(key, error = %e, "cannot recreate our lease yet");
                self.renew_at = tokio::time::Instant::now() + Duration::from_secs(2);
            }
        }
    }

    /// Watches `subnets/` from `revision`; returns `Ok` when it is time to re-list, an
    /// error when the watch broke.
    async fn watch(&mut self, revision: i64) -> Result<()> {
        let prefix = lease::subnets_prefix(&self.cfg.prefix);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = self.client.watch(prefix.as_str(), Some(opts)).await?;
        // Re-list now and then: retries a peer whose routes could not be installed, and
        // catches anything a watch may have missed.
        let resync = tokio::time::sleep(RESYNC_EVERY);
        tokio::pin!(resync);
        loop {
            let msg = tokio::select! {
                m = stream.message() => m?,
                _ = &mut resync => return Ok(()),
                _ = tokio::time::sleep_until(self.renew_at) => {
                    if let Err(e) = self.renew().await {
                        warn!(error = %e, "lease renewal failed; retrying");
                        self.renew_at = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
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
                let subnet = parse_subnet_key(&self.cfg.prefix, &key);
                match event.event_type() {
                    EventType::Put => {
                        if let Some(peer) = self.peer_of(&key, kv.value()) {
                            self.add_peer(peer).await;
                        }
                    }
                    EventType::Delete if subnet == Some(self.subnet) => self.recreate_own().await,
                    EventType::Delete => {
                        if let Some(subnet) = subnet {
                            self.remove_peer(subnet).await;
                        }
                    }
                }
            }
        }
    }

    /// The agent's life after start-up: watch, renew, and ride out etcd outages (routes
    /// stay as they are until etcd says otherwise).
    async fn run(mut self, mut revision: i64) {
        loop {
            if let Err(e) = self.watch(revision).await {
                warn!(error = %e, "lost the etcd watch; existing routes stay; resyncing");
            }
            loop {
                // The connection may be gone: reconnect if a plain read fails.
                match self.list().await {
                    Ok((peers, rev)) => {
                        self.converge(peers).await;
                        revision = rev;
                        break;
                    }
                    Err(e) => {
                        warn!(endpoints = ?self.cfg.endpoints, error = %e, "etcd unreachable; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if tokio::time::Instant::now() >= self.renew_at {
                            let _ = self.renew().await;
                        }
                    }
                }
            }
            // Our key may have expired during the outage: renewing checks and recreates.
            if let Err(e) = self.renew().await {
                warn!(error = %e, "lease renewal after the outage failed; retrying");
                self.renew_at = tokio::time::Instant::now() + Duration::from_secs(2);
            }
        }
    }
}

impl EtcdSource {
    /// Lease acquisition as flanneld does it: our PublicIP's lease, else the previous
    /// subnet, else a random free one among the first 100; create-if-absent, retried on
    /// a lost race.
    async fn acquire_lease(agent: &mut Agent) -> Result<(BTreeMap<Ipv4Net, Peer>, i64)> {
        let previous = previous_subnet(&agent.cfg.subnet_file);
        for attempt in 1..=10 {
            let prefix = lease::subnets_prefix(&agent.cfg.prefix);
            let resp = agent
                .client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            let mut taken = std::collections::HashSet::new();
            let mut ours = None;
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let Some(subnet) = parse_subnet_key(&agent.cfg.prefix, &key) else {
                    continue;
                };
                taken.insert(subnet);
                if let Ok(Parsed::Vxlan(p)) = parse_lease(subnet, kv.value()) {
                    if p.public_ip == agent.public_ip && agent.net.fits(subnet) {
                        ours = Some(subnet);
                    }
                }
            }
            if let Some(subnet) = ours {
                agent.subnet = subnet;
                agent.put_own().await?;
                info!(subnet = %subnet, "reusing this node's lease");
            } else {
                let subnet = match previous.filter(|s| agent.net.fits(*s) && !taken.contains(s)) {
                    Some(s) => s,
                    None => {
                        let free: Vec<Ipv4Net> = agent
                            .net
                            .subnets()
                            .filter(|s| !taken.contains(s))
                            .take(100)
                            .collect();
                        *free.choose(&mut rand::rng()).ok_or_else(|| {
                            anyhow!(
                                "network {} has no free subnet ({} leased)",
                                agent.net.network,
                                taken.len()
                            )
                        })?
                    }
                };
                agent.subnet = subnet;
                let key = agent.key();
                if !agent.create(&key).await? {
                    info!(subnet = %subnet, attempt, "another node took this subnet first; retrying");
                    continue;
                }
                agent.schedule_renewal();
                info!(subnet = %subnet, "leased a subnet");
            }
            {
                let mut overlay = agent.overlay.lock().unwrap();
                overlay.subnet = Some(agent.subnet);
                overlay.public_ip = Some(agent.public_ip);
            }
            return agent.list().await;
        }
        bail!("lost the race for a subnet 10 times in a row; is etcd overloaded?")
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
        Box::pin(async move {
            let mut client = connect_with_retry(&self.cfg).await;
            info!(endpoints = ?self.cfg.endpoints, "connected to etcd");
            let net = network_config(&mut client, &self.cfg.prefix).await?;
            let cfg = self.cfg.clone();
            let (uplink_index, uplink_mtu, public_ip) =
                tokio::task::spawn_blocking(move || uplink(&cfg)).await??;
            let mtu = net.mtu.unwrap_or(uplink_mtu.saturating_sub(VXLAN_OVERHEAD));
            let spec = DeviceSpec {
                vni: net.vni,
                local: public_ip,
                uplink: uplink_index,
                port: net.port,
                mtu,
            };
            let device = tokio::task::spawn_blocking(move || vxlan::ensure_device(&spec)).await??;
            let value = lease_value(public_ip, net.vni, device.mac);
            let mut agent = Agent {
                cfg: self.cfg.clone(),
                net: net.clone(),
                client,
                device,
                subnet: net.subnets().next().expect("at least one subnet"),
                public_ip,
                value,
                renew_at: tokio::time::Instant::now(),
                overlay: self.overlay.clone(),
            };
            let (peers, revision) = Self::acquire_lease(&mut agent).await?;
            let (dev, subnet) = (agent.device.clone(), agent.subnet);
            tokio::task::spawn_blocking(move || vxlan::set_device_address(&dev, subnet)).await??;
            agent.converge(peers).await;
            if self.cfg.ip_masq {
                let chains = flannel_chains(subnet, net.network);
                let fw = self.firewall.clone();
                let c = chains.clone();
                tokio::task::spawn_blocking(move || fw.apply(&c)).await??;
                // Like flanneld, put the rules back if someone flushes them.
                tokio::spawn(crate::firewall::keep(self.firewall.clone(), chains));
            }
            let gateway = subnet.hosts().next().expect("subnets have hosts");
            let env = SubnetEnv {
                network: net.network,
                subnet,
                gateway,
                mtu: agent.device.mtu,
                ipmasq: self.cfg.ip_masq,
            };
            write_atomically(&self.cfg.subnet_file, &env.render())?;
            info!(subnet = %subnet, public_ip = %public_ip, device = agent.device.name, "overlay ready");
            tokio::spawn(agent.run(revision));
            Ok(env)
        })
    }
}
