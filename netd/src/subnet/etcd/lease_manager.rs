//! The lease policy (as flannel's `pkg/subnet/etcd/local_manager.go`): which subnet to
//! lease, renewing it, and taking it back when it is lost.
//!
//! Where it differs from flanneld (on purpose): a garbled value under `subnets/` is
//! logged and ignored instead of dropping every route, and a lost own lease is recreated
//! for the same subnet instead of exiting.
//!
//! The policy works against [`LeaseStore`] (etcd's [`Registry`] is the real one), so that
//! it is tested without etcd, as flannel tests its lease manager against a mock registry.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use ipnet::Ipv4Net;
use rand::seq::IndexedRandom;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::lease::{parse_lease, parse_subnet_key, Parsed, Peer};
use super::netconfig::NetworkConfig;
use super::registry::{Entry, Registry};
use super::SharedOverlay;

/// How many free subnets a random pick chooses among, as flanneld.
const RANDOM_AMONG: usize = 100;
/// Lost races for a subnet before giving up.
const ATTEMPTS: u32 = 10;

/// What the lease policy asks of the subnet registry.
pub(crate) trait LeaseStore {
    /// The etcd prefix the keys live under.
    fn prefix(&self) -> &str;
    /// Every key under `subnets/`, and the revision it was listed at.
    async fn list(&mut self) -> Result<(Vec<Entry>, i64)>;
    /// Leases `subnet` with our value only if nobody holds it; whether we got it.
    async fn create(&mut self, subnet: Ipv4Net) -> Result<bool>;
    /// Puts our value on `subnet` with a fresh lease, whoever holds it.
    async fn put(&mut self, subnet: Ipv4Net) -> Result<()>;
    /// Renews `subnet` while it holds our value; whether it did.
    async fn renew(&mut self, subnet: Ipv4Net) -> Result<bool>;
    /// When the lease `lease` runs out (seconds since the epoch), if it runs.
    async fn expiry(&mut self, lease: i64) -> Option<u64>;
}

pub(crate) struct LeaseManager<S: LeaseStore = Registry> {
    pub registry: S,
    pub net: NetworkConfig,
    pub public_ip: Ipv4Addr,
    /// Our subnet, once leased.
    pub subnet: Ipv4Net,
    ttl: Duration,
    /// When our lease must be renewed.
    pub renew_at: Instant,
    overlay: SharedOverlay,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S: LeaseStore> LeaseManager<S> {
    pub fn new(
        registry: S,
        net: NetworkConfig,
        public_ip: Ipv4Addr,
        ttl: Duration,
        overlay: SharedOverlay,
    ) -> LeaseManager<S> {
        let first = net.subnets().next().expect("at least one subnet");
        LeaseManager {
            registry,
            subnet: first,
            net,
            public_ip,
            ttl,
            renew_at: Instant::now(),
            overlay,
        }
    }

    /// Leases a subnet as flanneld does: our PublicIP's lease, else `previous`, else a
    /// random free one among the first 100; create-if-absent, retried on a lost race.
    /// Returns the peers' entries and the revision they were listed at.
    pub async fn acquire(&mut self, previous: Option<Ipv4Net>) -> Result<(Vec<Entry>, i64)> {
        for attempt in 1..=ATTEMPTS {
            let (entries, _) = self.registry.list().await?;
            let mut taken = HashSet::new();
            let mut ours = None;
            for entry in &entries {
                let Some(subnet) = parse_subnet_key(self.registry.prefix(), &entry.key) else {
                    continue;
                };
                taken.insert(subnet);
                if let Ok(Parsed::Vxlan(p)) = parse_lease(subnet, &entry.value) {
                    if p.public_ip == self.public_ip && self.net.fits(subnet) {
                        ours = Some(subnet);
                    }
                }
            }
            if let Some(subnet) = ours {
                self.subnet = subnet;
                self.registry.put(subnet).await?;
                self.schedule_renewal();
                info!(subnet = %subnet, "reusing this node's lease");
            } else {
                let subnet = self.pick(previous, &taken)?;
                self.subnet = subnet;
                if !self.registry.create(subnet).await? {
                    info!(subnet = %subnet, attempt, "another node took this subnet first; retrying");
                    continue;
                }
                self.schedule_renewal();
                info!(subnet = %subnet, "leased a subnet");
            }
            {
                let mut overlay = self.overlay.lock().unwrap();
                overlay.subnet = Some(self.subnet);
                overlay.public_ip = Some(self.public_ip);
            }
            return self.registry.list().await;
        }
        bail!("lost the race for a subnet {ATTEMPTS} times in a row; is etcd overloaded?")
    }

    /// The previous subnet if it is still free, else a random free one.
    fn pick(&self, previous: Option<Ipv4Net>, taken: &HashSet<Ipv4Net>) -> Result<Ipv4Net> {
        if let Some(s) = previous.filter(|s| self.net.fits(*s) && !taken.contains(s)) {
            return Ok(s);
        }
        let free: Vec<Ipv4Net> = self
            .net
            .subnets()
            .filter(|s| !taken.contains(s))
            .take(RANDOM_AMONG)
            .collect();
        free.choose(&mut rand::rng()).copied().ok_or_else(|| {
            anyhow!(
                "network {} has no free subnet ({} leased)",
                self.net.network,
                taken.len()
            )
        })
    }

    /// Renew an hour before expiry, or a third of the TTL for short ones.
    fn schedule_renewal(&mut self) {
        let margin = (self.ttl / 3).min(Duration::from_secs(3600));
        self.renew_at = Instant::now() + self.ttl - margin;
        self.overlay.lock().unwrap().expires = now() + self.ttl.as_secs();
    }

    /// Renews our lease; if it expired or was taken meanwhile, tries to take it back.
    pub async fn renew(&mut self) -> Result<()> {
        if self.registry.renew(self.subnet).await? {
            self.schedule_renewal();
            debug!(subnet = %self.subnet, "lease renewed");
            return Ok(());
        }
        self.recreate_own().await;
        Ok(())
    }

    /// Renews, and on failure asks again in two seconds.
    pub async fn renew_or_retry(&mut self, when: &str) {
        if let Err(e) = self.renew().await {
            warn!(error = %e, "lease renewal {when}failed; retrying");
            self.renew_at = Instant::now() + Duration::from_secs(2);
        }
    }

    /// Our own key was deleted (revoked, or expired while etcd was away): put it back,
    /// unless another node leased the subnet meanwhile.
    pub async fn recreate_own(&mut self) {
        match self.registry.create(self.subnet).await {
            Ok(true) => {
                warn!(subnet = %self.subnet, "our lease was removed; recreated it");
                self.schedule_renewal();
            }
            Ok(false) => {
                error!(subnet = %self.subnet, "our subnet was leased by another node while ours had expired; not overwriting it: restart hpk-netd on this node to take a new subnet");
                // Ask again later, in case that node goes away.
                self.renew_at = Instant::now() + Duration::from_secs(30);
            }
            Err(e) => {
                warn!(subnet = %self.subnet, error = %e, "cannot recreate our lease yet");
                self.renew_at = Instant::now() + Duration::from_secs(2);
            }
        }
    }

    /// The subnet a key names, if it is a lease key.
    pub fn subnet_of(&self, key: &str) -> Option<Ipv4Net> {
        parse_subnet_key(self.registry.prefix(), key)
    }

    /// A valid remote vxlan lease; anything else is logged and skipped.
    pub fn peer_of(&self, key: &str, value: &[u8]) -> Option<Peer> {
        let Some(subnet) = self.subnet_of(key) else {
            warn!(key, "ignoring a key under subnets/ that is not a lease");
            return None;
        };
        if subnet == self.subnet {
            return None;
        }
        if !self.net.routable(subnet, self.subnet) {
            warn!(key, subnet = %subnet, network = %self.net.network, "ignoring a lease that is none of this network's subnets (outside it, of another size, or over ours); routes stay");
            return None;
        }
        match parse_lease(subnet, value) {
            Ok(Parsed::Vxlan(peer)) => Some(peer),
            Ok(Parsed::OtherBackend(kind)) => {
                info!(
                    key,
                    kind, "ignoring a lease of another backend; routes stay"
                );
                None
            }
            Err(e) => {
                warn!(key, error = %e, "ignoring a garbled lease; routes of valid peers stay");
                None
            }
        }
    }

    /// The valid peers among listed entries, with the etcd lease each lives by.
    pub fn peers(&self, entries: &[Entry]) -> Vec<(Peer, i64)> {
        entries
            .iter()
            .filter_map(|e| Some((self.peer_of(&e.key, &e.value)?, e.lease)))
            .collect()
    }

    /// When each peer's lease runs out, for status (one etcd call per peer).
    pub async fn peer_expiry(&mut self, peers: &[(Peer, i64)]) -> BTreeMap<Ipv4Net, u64> {
        let mut expiry = BTreeMap::new();
        for (peer, lease) in peers {
            if let Some(t) = self.registry.expiry(*lease).await {
                expiry.insert(peer.subnet, t);
            }
        }
        expiry
    }
}

#[cfg(test)]
#[path = "lease_manager_tests.rs"]
mod tests;
