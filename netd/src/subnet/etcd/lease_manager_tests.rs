//! The lease policy against an in-memory registry: no etcd.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use tokio::time::Instant;

use super::{LeaseManager, LeaseStore, ATTEMPTS};
use crate::subnet::etcd::lease::{lease_value, subnet_key, DEFAULT_PREFIX};
use crate::subnet::etcd::netconfig::NetworkConfig;
use crate::subnet::etcd::registry::Entry;
use crate::subnet::etcd::SharedOverlay;

const TTL: Duration = Duration::from_secs(24 * 3600);
const OURS: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 20);

fn value(public_ip: Ipv4Addr, mac: u8) -> String {
    lease_value(public_ip, 1, [2, 0, 0, 0, 0, mac], None)
}

/// The registry as etcd would keep it: one value and etcd lease per subnet.
struct Memory {
    own: String,
    leases: BTreeMap<Ipv4Net, (String, i64)>,
    next_lease: i64,
    /// Creates that another node wins, taking the subnet just before us.
    stolen_creates: u32,
    /// etcd does not answer.
    away: bool,
    calls: Vec<String>,
}

impl Memory {
    fn new() -> Memory {
        Memory {
            own: value(OURS, 1),
            leases: BTreeMap::new(),
            next_lease: 1,
            stolen_creates: 0,
            away: false,
            calls: Vec::new(),
        }
    }

    fn hold(&mut self, subnet: Ipv4Net, value: String) {
        self.next_lease += 1;
        self.leases.insert(subnet, (value, self.next_lease));
    }

    fn check(&mut self, call: String) -> Result<()> {
        self.calls.push(call);
        if self.away {
            bail!("etcd is away");
        }
        Ok(())
    }
}

impl LeaseStore for Memory {
    fn prefix(&self) -> &str {
        DEFAULT_PREFIX
    }

    async fn list(&mut self) -> Result<(Vec<Entry>, i64)> {
        self.check("list".into())?;
        let entries = self
            .leases
            .iter()
            .map(|(subnet, (value, lease))| Entry {
                key: subnet_key(DEFAULT_PREFIX, *subnet),
                value: value.clone().into_bytes(),
                lease: *lease,
            })
            .collect();
        Ok((entries, self.next_lease))
    }

    async fn create(&mut self, subnet: Ipv4Net) -> Result<bool> {
        self.check(format!("create {subnet}"))?;
        if self.stolen_creates > 0 {
            self.stolen_creates -= 1;
            self.hold(subnet, value(OTHER, 2));
            return Ok(false);
        }
        if self.leases.contains_key(&subnet) {
            return Ok(false);
        }
        self.hold(subnet, self.own.clone());
        Ok(true)
    }

    async fn put(&mut self, subnet: Ipv4Net) -> Result<()> {
        self.check(format!("put {subnet}"))?;
        self.hold(subnet, self.own.clone());
        Ok(())
    }

    async fn renew(&mut self, subnet: Ipv4Net) -> Result<bool> {
        self.check(format!("renew {subnet}"))?;
        match self.leases.get(&subnet) {
            Some((value, _)) if *value == self.own => {
                self.hold(subnet, self.own.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn expiry(&mut self, lease: i64) -> Option<u64> {
        self.leases
            .values()
            .any(|(_, l)| *l == lease)
            .then_some(1_000 + lease as u64)
    }
}

fn network(text: &str) -> NetworkConfig {
    NetworkConfig::parse(text).unwrap()
}

fn manager(memory: Memory) -> LeaseManager<Memory> {
    let net = network(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    LeaseManager::new(memory, net, OURS, TTL, SharedOverlay::default())
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn holder(m: &LeaseManager<Memory>, subnet: Ipv4Net) -> Option<&str> {
    m.registry.leases.get(&subnet).map(|(v, _)| v.as_str())
}

#[tokio::test]
async fn a_first_lease_is_a_free_subnet_of_the_network() {
    let mut memory = Memory::new();
    let taken = net("10.244.1.0/24");
    memory.hold(taken, value(OTHER, 2));
    let mut m = manager(memory);
    m.acquire(None).await.unwrap();
    assert_ne!(m.subnet, taken);
    assert!(m.net.fits(m.subnet), "{}", m.subnet);
    assert_eq!(holder(&m, m.subnet), Some(value(OURS, 1).as_str()));
    assert_eq!(holder(&m, taken), Some(value(OTHER, 2).as_str()));
    let overlay = m.overlay.lock().unwrap().clone();
    assert_eq!(overlay.subnet, Some(m.subnet));
    assert_eq!(overlay.public_ip, Some(OURS));
    assert!(overlay.expires > 0);
}

/// This node's lease, found by its PublicIP, is taken back (its value rewritten, say with
/// a new VTEP MAC) over a previous subnet and a random pick.
#[tokio::test]
async fn the_lease_of_our_public_ip_is_reused() {
    let mut memory = Memory::new();
    let ours = net("10.244.9.0/24");
    memory.hold(ours, value(OURS, 7));
    let mut m = manager(memory);
    m.acquire(Some(net("10.244.3.0/24"))).await.unwrap();
    assert_eq!(m.subnet, ours);
    assert!(m.registry.calls.contains(&format!("put {ours}")));
    assert!(!m.registry.calls.iter().any(|c| c.starts_with("create")));
    assert_eq!(holder(&m, ours), Some(value(OURS, 1).as_str()));
    assert_eq!(m.registry.leases.len(), 1);
}

#[tokio::test]
async fn the_previous_subnet_is_reused_while_it_is_free() {
    let previous = net("10.244.3.0/24");
    let mut m = manager(Memory::new());
    m.acquire(Some(previous)).await.unwrap();
    assert_eq!(m.subnet, previous);

    // Another node holds it now: a different one is leased, theirs left alone.
    let mut memory = Memory::new();
    memory.hold(previous, value(OTHER, 2));
    let mut m = manager(memory);
    m.acquire(Some(previous)).await.unwrap();
    assert_ne!(m.subnet, previous);
    assert_eq!(holder(&m, previous), Some(value(OTHER, 2).as_str()));
}

/// A subnet another node creates between our list and our create is not overwritten: the
/// next try picks again; losing every try is an error that says so.
#[tokio::test]
async fn a_lost_race_is_retried_and_never_overwrites() {
    let mut memory = Memory::new();
    memory.stolen_creates = 2;
    let mut m = manager(memory);
    m.acquire(None).await.unwrap();
    let others = m
        .registry
        .leases
        .values()
        .filter(|(v, _)| *v == value(OTHER, 2))
        .count();
    assert_eq!(others, 2, "both stolen subnets stay the other node's");
    assert_eq!(holder(&m, m.subnet), Some(value(OURS, 1).as_str()));

    let mut memory = Memory::new();
    memory.stolen_creates = ATTEMPTS;
    let mut m = manager(memory);
    let err = m.acquire(None).await.unwrap_err().to_string();
    assert!(err.contains("lost the race"), "{err}");
}

#[tokio::test]
async fn a_full_network_is_an_error() {
    let mut memory = Memory::new();
    let net = network(r#"{"Network":"10.244.0.0/22","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#);
    for subnet in net.subnets() {
        memory.hold(subnet, value(OTHER, 2));
    }
    let mut m = LeaseManager::new(memory, net, OURS, TTL, SharedOverlay::default());
    let err = m.acquire(None).await.unwrap_err().to_string();
    assert!(err.contains("no free subnet"), "{err}");
}

#[tokio::test]
async fn renewal_refreshes_our_lease_and_schedules_the_next() {
    let mut m = manager(Memory::new());
    m.acquire(None).await.unwrap();
    let lease = m.registry.leases[&m.subnet].1;
    m.renew_at = Instant::now();
    m.renew().await.unwrap();
    assert!(m.registry.leases[&m.subnet].1 > lease, "a fresh etcd lease");
    // Long TTLs renew an hour before they run out.
    assert!(m.renew_at > Instant::now() + TTL - Duration::from_secs(2 * 3600));
}

/// Our key expired (etcd away too long, say): it is created again for the same subnet.
#[tokio::test]
async fn an_expired_lease_is_recreated() {
    let mut m = manager(Memory::new());
    m.acquire(None).await.unwrap();
    let subnet = m.subnet;
    m.registry.leases.clear();
    m.renew().await.unwrap();
    assert_eq!(m.subnet, subnet);
    assert_eq!(holder(&m, subnet), Some(value(OURS, 1).as_str()));
    assert!(m.renew_at > Instant::now() + Duration::from_secs(3600));
}

/// Another node leased our subnet while ours had expired: its lease stays, we ask again
/// later.
#[tokio::test]
async fn a_lost_lease_is_not_taken_from_its_new_holder() {
    let mut m = manager(Memory::new());
    m.acquire(None).await.unwrap();
    let subnet = m.subnet;
    m.registry.hold(subnet, value(OTHER, 2));
    m.renew().await.unwrap();
    assert_eq!(holder(&m, subnet), Some(value(OTHER, 2).as_str()));
    let later = m.renew_at - Instant::now();
    assert!(later > Duration::from_secs(10) && later <= Duration::from_secs(30));
}

#[tokio::test]
async fn a_failed_renewal_is_retried_soon() {
    let mut m = manager(Memory::new());
    m.acquire(None).await.unwrap();
    m.registry.away = true;
    m.renew_or_retry("").await;
    assert!(m.renew_at <= Instant::now() + Duration::from_secs(2));
    m.registry.away = false;
    m.renew_or_retry("").await;
    assert!(m.renew_at > Instant::now() + Duration::from_secs(3600));
}

/// Peers: other nodes' vxlan leases in the network; our own, garbled ones, other
/// backends' and ones outside the network are skipped.
#[tokio::test]
async fn peers_are_the_valid_leases_of_other_nodes() {
    let mut memory = Memory::new();
    let peer = net("10.244.5.0/24");
    memory.hold(peer, value(OTHER, 2));
    memory.hold(net("10.244.6.0/24"), "{garbled".into());
    memory.hold(
        net("10.244.7.0/24"),
        r#"{"PublicIP":"192.168.0.30","BackendType":"host-gw"}"#.into(),
    );
    memory.hold(net("10.99.0.0/24"), value(OTHER, 3));
    let mut m = manager(memory);
    let (entries, _) = m.acquire(None).await.unwrap();
    let peers = m.peers(&entries);
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].0.subnet, peer);
    assert_eq!(peers[0].0.public_ip, OTHER);
    // Its expiry is its own etcd lease's.
    let lease = m.registry.leases[&peer].1;
    assert_eq!(peers[0].1, lease);
    let expiry = m.peer_expiry(&peers).await;
    assert_eq!(expiry, BTreeMap::from([(peer, 1_000 + lease as u64)]));
}
