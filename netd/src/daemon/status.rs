//! What `status` answers: the subnet, the bubble, every endpoint with its counters, and
//! the overlay's lease and peers when the etcd agent is the source.

use std::collections::BTreeMap;

use hpk_hook::proto::{EndpointStatus, LeaseStatus, PeerStatus, Status, UnderlayStatus};

use super::Daemon;
use crate::datapath::shortcut::ShortcutCounters;
use crate::endpoint::store::Record;
use crate::subnet::etcd::lease::{format_mac, Peer};
use crate::subnet::etcd::vxlan::Vtep;
use crate::subnet::etcd::SharedOverlay;
use crate::sys::netlink::{LinkSummary, Netlink};
use crate::underlay::auth::seal::Protection;

/// Status of the whole bubble. Blocking (a netlink dump): not for the async workers.
pub fn status(daemon: &Daemon) -> Status {
    let env = &daemon.env;
    let links = Netlink::open()
        .and_then(|mut nl| nl.links())
        .unwrap_or_default();
    // (Empty without a running hub: then no endpoint has moved frames past the bridge.)
    let shortcut = daemon.endpoints.shortcut_counters();
    let mut endpoints: Vec<EndpointStatus> = daemon
        .endpoints
        .records()
        .into_iter()
        .map(|r| {
            let past_bridge = shortcut.get(r.spec.id()).copied().unwrap_or_default();
            endpoint_status(r, &links, past_bridge)
        })
        .collect();
    endpoints.sort_by_key(|e| e.address);
    let (lease, peers) = daemon.overlay.as_ref().map(overlay).unwrap_or_default();
    let underlay = daemon.overlay.as_ref().and_then(underlay);
    let ipam = daemon.endpoints.ipam();
    Status {
        source: daemon.source.clone(),
        network: env.network.to_string(),
        subnet: env.subnet.to_string(),
        gateway: env.gateway,
        mtu: env.mtu,
        bridge: daemon.bridge.clone(),
        masquerade: daemon.masquerade,
        addresses_in_use: ipam.in_use().len(),
        addresses_total: ipam.capacity(),
        endpoints,
        lease,
        peers,
        underlay,
        names: daemon.names.as_ref().map(|n| n.status()),
        published: daemon.ports.status(),
    }
}

/// `past_bridge`: what the bubble's hub moved between this container and another of its
/// own without the bridge (so without the bubble tap's counting it).
fn endpoint_status(
    r: Record,
    links: &[LinkSummary],
    past_bridge: ShortcutCounters,
) -> EndpointStatus {
    let att = &r.spec.attachment;
    let mut counters = BTreeMap::new();
    if let Some(l) = links.iter().find(|l| l.name == att.bubble_tap) {
        // The bubble tap transmits what goes to the container.
        let (s, p) = (&l.stats, past_bridge);
        for (key, value) in [
            ("to_container_bytes", s.tx_bytes + p.to_container_bytes),
            ("to_container_frames", s.tx_packets + p.to_container_frames),
            ("from_container_bytes", s.rx_bytes + p.from_container_bytes),
            (
                "from_container_frames",
                s.rx_packets + p.from_container_frames,
            ),
        ] {
            counters.insert(key.to_owned(), value);
        }
    }
    EndpointStatus {
        id: att.id.clone(),
        address: att.address,
        pid: r.spec.pid,
        netns: r.spec.netns(),
        bubble_tap: att.bubble_tap.clone(),
        forwarder_pid: r.path.forwarder().map_or(0, |f| f.pid),
        shared_forwarder: r.path.is_hub(),
        kind: att.kind,
        counters,
    }
}

fn overlay(overlay: &SharedOverlay) -> (Option<LeaseStatus>, Vec<PeerStatus>) {
    let o = overlay.lock().unwrap();
    let lease = o
        .subnet
        .zip(o.public_ip)
        .map(|(subnet, public_ip)| LeaseStatus {
            subnet: subnet.to_string(),
            public_ip,
            expires: o.expires,
        });
    let peers = o
        .peers
        .values()
        .map(|p| PeerStatus {
            subnet: p.subnet.to_string(),
            public_ip: p.public_ip,
            vtep_mac: format_mac(p.vtep_mac),
            expires: o.peer_expiry.get(&p.subnet).copied(),
            datagrams: datagrams(o.vtep.as_deref(), p),
        })
        .collect();
    (lease, peers)
}

/// How datagrams between our userspace VTEP and `peer` travel, and why when plain.
fn datagrams(vtep: Option<&Vtep>, peer: &Peer) -> Option<String> {
    let Some(Vtep::Userspace(_, u)) = vtep else {
        return None;
    };
    Some(match (peer.hpk, u.protection) {
        (Some(h), Some(_)) if h.sealed => "sealed".into(),
        (Some(h), None) if h.sealed => {
            "unreachable: it seals, this node has no overlay key (give hpk-netd the cluster's: --overlay-key)".into()
        },
        (Some(_), _) => "plain: an hpk-netd VTEP without the overlay key".into(),
        (None, _) => "plain: a kernel flannel VTEP (any port, no key)".into(),
    })
}

fn underlay(overlay: &SharedOverlay) -> Option<UnderlayStatus> {
    let vtep = overlay.lock().unwrap().vtep.clone()?;
    Some(match &*vtep {
        Vtep::Kernel(dev) => UnderlayStatus {
            kind: "kernel".into(),
            device: dev.name.clone(),
            local: None,
            counters: BTreeMap::new(),
            protection: None,
        },
        Vtep::Userspace(dev, u) => UnderlayStatus {
            kind: "host-socket".into(),
            device: dev.name.clone(),
            local: Some(u.local.to_string()),
            counters: u.counters.snapshot(),
            protection: Some(match u.protection {
                Some(Protection::Authenticate) => "authenticate".into(),
                Some(Protection::Encrypt) => "encrypt".into(),
                None => "plain".into(),
            }),
        },
    })
}
