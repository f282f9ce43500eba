//! What the userspace vxlan data path shares with the agent: where each VtepMAC lives
//! (flannel's FDB entries, kept in userspace), which addresses may send to us, and
//! counters for status.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// VtepMAC to the peer's public address; the agent writes, the data path reads.
#[derive(Debug, Default)]
pub struct PeerTable {
    by_mac: RwLock<HashMap<[u8; 6], Ipv4Addr>>,
}

impl PeerTable {
    pub fn insert(&self, mac: [u8; 6], public_ip: Ipv4Addr) {
        self.by_mac.write().unwrap().insert(mac, public_ip);
    }

    pub fn remove(&self, mac: [u8; 6]) {
        self.by_mac.write().unwrap().remove(&mac);
    }

    /// Where a frame for `mac` goes.
    pub fn destination(&self, mac: &[u8]) -> Option<Ipv4Addr> {
        let mac: [u8; 6] = mac.try_into().ok()?;
        self.by_mac.read().unwrap().get(&mac).copied()
    }

    /// Whether `addr` is a peer's public address (one we may receive from).
    pub fn knows(&self, addr: Ipv4Addr) -> bool {
        self.by_mac.read().unwrap().values().any(|a| *a == addr)
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
            ("drop_wrong_vni", c(&self.drop_wrong_vni)),
            ("drop_malformed", c(&self.drop_malformed)),
            ("drop_tap_write", c(&self.drop_tap_write)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
