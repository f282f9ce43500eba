//! The vxlan network (as flannel's `pkg/backend/vxlan/vxlan_network.go`): consumes lease
//! events and keeps flannel.1's neighbours, fdb entries and routes equal to the peers.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use tracing::{error, info, warn};

use super::lease::Peer;
use super::vxlan::SharedVtep;
use super::SharedOverlay;

pub(crate) struct VxlanNetwork {
    pub vtep: SharedVtep,
    /// The peers routed to, shared with status.
    overlay: SharedOverlay,
}

impl VxlanNetwork {
    pub fn new(vtep: SharedVtep, overlay: SharedOverlay) -> VxlanNetwork {
        VxlanNetwork { vtep, overlay }
    }

    /// Routes to `peer` (a new one, or one whose lease changed).
    pub async fn add_peer(&self, peer: Peer) {
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
        let (vtep, p) = (self.vtep.clone(), peer.clone());
        match tokio::task::spawn_blocking(move || vtep.add_peer(&p)).await {
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

    /// Stops routing to the peer that held `subnet`.
    pub async fn remove_peer(&self, subnet: Ipv4Net) {
        let peer = {
            let mut o = self.overlay.lock().unwrap();
            o.peer_expiry.remove(&subnet);
            o.peers.remove(&subnet)
        };
        let Some(peer) = peer else {
            return;
        };
        let (vtep, p) = (self.vtep.clone(), peer.clone());
        match tokio::task::spawn_blocking(move || vtep.remove_peer(&p)).await {
            Ok(Ok(())) => info!(subnet = %subnet, public_ip = %peer.public_ip, "peer removed"),
            Ok(Err(e)) => {
                warn!(subnet = %subnet, error = %format!("{e:#}"), "peer removal incomplete")
            }
            Err(e) => error!(error = %e, "peer task failed"),
        }
    }

    /// Records when peers' leases run out, for status; only peers routed to are kept.
    pub fn set_expiry(&self, expiry: BTreeMap<Ipv4Net, u64>) {
        let mut o = self.overlay.lock().unwrap();
        o.peer_expiry = expiry
            .into_iter()
            .filter(|(s, _)| o.peers.contains_key(s))
            .collect();
    }

    /// Records one peer's lease expiry after a lease event.
    pub fn note_expiry(&self, subnet: Ipv4Net, expiry: Option<u64>) {
        let mut o = self.overlay.lock().unwrap();
        match expiry {
            Some(t) if o.peers.contains_key(&subnet) => o.peer_expiry.insert(subnet, t),
            _ => o.peer_expiry.remove(&subnet),
        };
    }

    /// Makes the routes match `peers` exactly.
    pub async fn converge(&self, peers: Vec<Peer>) {
        let wanted: BTreeMap<Ipv4Net, Peer> = peers.into_iter().map(|p| (p.subnet, p)).collect();
        let known: Vec<Ipv4Net> = self.overlay.lock().unwrap().peers.keys().copied().collect();
        for subnet in known {
            if !wanted.contains_key(&subnet) {
                self.remove_peer(subnet).await;
            }
        }
        for peer in wanted.into_values() {
            self.add_peer(peer).await;
        }
    }
}
