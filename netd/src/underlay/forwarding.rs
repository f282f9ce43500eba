//! What the userspace vxlan data path shares with the agent: where each VtepMAC lives
//! (flannel's FDB entries, kept in userspace), which addresses and ports may send to us
//! and whether they seal, and counters for status.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use ipnet::Ipv4Net;

/// How a peer's datagrams must look, from its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    /// An hpk-netd VTEP's port: its datagrams come from there and nowhere else. A kernel
    /// flannel peer sends from any port (the kernel picks it per flow).
    pub port: Option<u16>,
    /// Whether its datagrams are sealed with the cluster's key (and ours to it are).
    pub sealed: bool,
    /// Its lease: the IPv4 sources its frames may carry.
    pub subnet: Ipv4Net,
}

/// VtepMAC to the peer's public address; the agent writes, the data path reads.
#[derive(Debug, Default)]
pub struct PeerTable {
    by_mac: RwLock<HashMap<[u8; 6], (Ipv4Addr, Sender)>>,
}

impl PeerTable {
    pub fn insert(&self, mac: [u8; 6], public_ip: Ipv4Addr, sender: Sender) {
        self.by_mac
            .write()
            .unwrap()
            .insert(mac, (public_ip, sender));
    }

    pub fn remove(&self, mac: [u8; 6]) {
        self.by_mac.write().unwrap().remove(&mac);
    }

    /// Where a frame for `mac` goes, and whether it goes sealed.
    pub fn destination(&self, mac: &[u8]) -> Option<(Ipv4Addr, bool)> {
        let mac: [u8; 6] = mac.try_into().ok()?;
        let by_mac = self.by_mac.read().unwrap();
        by_mac.get(&mac).map(|(ip, s)| (*ip, s.sealed))
    }

    /// What we take from `addr`, if it is a peer's public address.
    pub fn sender(&self, addr: Ipv4Addr) -> Option<Sender> {
        let by_mac = self.by_mac.read().unwrap();
        by_mac.values().find(|(a, _)| *a == addr).map(|(_, s)| *s)
    }
}

/// Counters of the data path, named as status prints them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames read from the vxlan tap (TSO frames count once).
    pub tx_frames: AtomicU64,
    pub tx_datagrams: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_datagrams: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames written to the tap (joined segments count once).
    pub rx_frames: AtomicU64,
    /// Segments whose checksum a kernel peer left partial (passed on marked so).
    pub rx_partial_checksum: AtomicU64,
    pub drop_no_peer: AtomicU64,
    pub drop_unsendable: AtomicU64,
    pub drop_send_error: AtomicU64,
    pub drop_unknown_sender: AtomicU64,
    /// From a peer's address but not from its VTEP port: another user of that host.
    pub drop_wrong_port: AtomicU64,
    /// Datagrams sealed with the cluster's key, sent and authenticated.
    pub tx_sealed: AtomicU64,
    pub rx_authenticated: AtomicU64,
    /// From a sealing peer but not sealed, or not by the cluster's key.
    pub drop_unauthenticated: AtomicU64,
    /// Authentic but seen before (or from the sender's older start).
    pub drop_replayed: AtomicU64,
    /// Inner frames not addressed to our VtepMAC (the bridge's, anyone's).
    pub drop_not_for_us: AtomicU64,
    /// Inner IPv4 packets whose source is outside the sending peer's lease.
    pub drop_foreign_source: AtomicU64,
    /// A peer seals but this node has no overlay key.
    pub drop_no_key: AtomicU64,
    pub drop_wrong_vni: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_tap_write: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter by name, for status.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("tx_frames", c(&self.tx_frames)),
            ("tx_datagrams", c(&self.tx_datagrams)),
            ("tx_bytes", c(&self.tx_bytes)),
            ("rx_datagrams", c(&self.rx_datagrams)),
            ("rx_bytes", c(&self.rx_bytes)),
            ("rx_frames", c(&self.rx_frames)),
            ("rx_partial_checksum", c(&self.rx_partial_checksum)),
            ("drop_no_peer", c(&self.drop_no_peer)),
            ("drop_unsendable", c(&self.drop_unsendable)),
            ("drop_send_error", c(&self.drop_send_error)),
            ("drop_unknown_sender", c(&self.drop_unknown_sender)),
            ("drop_wrong_port", c(&self.drop_wrong_port)),
            ("tx_sealed", c(&self.tx_sealed)),
            ("rx_authenticated", c(&self.rx_authenticated)),
            ("drop_unauthenticated", c(&self.drop_unauthenticated)),
            ("drop_replayed", c(&self.drop_replayed)),
            ("drop_not_for_us", c(&self.drop_not_for_us)),
            ("drop_foreign_source", c(&self.drop_foreign_source)),
            ("drop_no_key", c(&self.drop_no_key)),
            ("drop_wrong_vni", c(&self.drop_wrong_vni)),
            ("drop_malformed", c(&self.drop_malformed)),
            ("drop_tap_write", c(&self.drop_tap_write)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
