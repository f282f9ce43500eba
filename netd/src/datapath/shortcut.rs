//! Which frames the hub may hand from one of its containers straight to another, past the
//! bridge: unicast IPv4 that the bridge's anti-spoofing rules would let in (the sender's
//! own MAC and address). Everything else (ARP, broadcasts, IPv6, VLAN tags, frames to the
//! gateway or to a container the hub does not serve, or a frame with someone else's
//! source) takes the bridge, where the rules judge it as before.
//!
//! Through the bridge a frame between two containers costs two more tap writes and reads
//! (a copy each) and a bridge traversal; on a round trip that is about half the hub's work.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What a container's own frames carry, as hpk-netd configured its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
}

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// Ethernet header (14) and the IPv4 header up to its source address (16).
const MIN_FRAME: usize = 14 + 16;

/// The destination MAC of `frame` (an Ethernet frame, no virtio-net header) if it may skip
/// the bridge: unicast IPv4 from `sender`'s MAC and address.
pub fn destination(frame: &[u8], sender: &Identity) -> Option<[u8; 6]> {
    if frame.len() < MIN_FRAME || frame[12..14] != ETHERTYPE_IPV4 {
        return None;
    }
    let dst: [u8; 6] = frame[0..6].try_into().ok()?;
    let multicast = dst[0] & 1 != 0;
    let version = frame[14] >> 4;
    let source = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    (!multicast && version == 4 && frame[6..12] == sender.mac && source == sender.address)
        .then_some(dst)
}

/// Frames and bytes moved past the bridge for one endpoint, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortcutCounters {
    pub to_container_frames: u64,
    pub to_container_bytes: u64,
    pub from_container_frames: u64,
    pub from_container_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Identity = Identity {
        mac: [0x0a, 0x58, 10, 244, 3, 2],
        address: Ipv4Addr::new(10, 244, 3, 2),
    };
    const B_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 3, 3];

    /// An Ethernet + IPv4 header (no payload) from `src_mac`/`src_ip` to `dst_mac`.
    fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], ethertype: [u8; 2], src_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(&[0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&src_ip.octets());
        f.extend_from_slice(&[10, 244, 3, 3]);
        f
    }

    #[test]
    fn only_the_senders_own_unicast_ipv4_skips_the_bridge() {
        let ok = frame(B_MAC, A.mac, ETHERTYPE_IPV4, A.address);
        assert_eq!(destination(&ok, &A), Some(B_MAC));
        // Someone else's MAC or address: the bridge's rules decide (and drop it).
        let other_mac = frame(
            B_MAC,
            [0x0a, 0x58, 10, 244, 3, 9],
            ETHERTYPE_IPV4,
            A.address,
        );
        assert_eq!(destination(&other_mac, &A), None);
        let other_ip = frame(B_MAC, A.mac, ETHERTYPE_IPV4, Ipv4Addr::new(10, 244, 3, 9));
        assert_eq!(destination(&other_ip, &A), None);
        // Broadcast, multicast, ARP, IPv6, VLAN-tagged: the bridge.
        assert_eq!(
            destination(&frame([0xff; 6], A.mac, ETHERTYPE_IPV4, A.address), &A),
            None
        );
        let multicast = [0x01, 0x00, 0x5e, 0, 0, 1];
        assert_eq!(
            destination(&frame(multicast, A.mac, ETHERTYPE_IPV4, A.address), &A),
            None
        );
        for ethertype in [[0x08, 0x06], [0x86, 0xdd], [0x81, 0x00]] {
            assert_eq!(
                destination(&frame(B_MAC, A.mac, ethertype, A.address), &A),
                None
            );
        }
        // Not IPv4 inside, or cut short.
        let mut v6_inside = ok.clone();
        v6_inside[14] = 0x60;
        assert_eq!(destination(&v6_inside, &A), None);
        assert_eq!(destination(&ok[..MIN_FRAME - 1], &A), None);
        assert_eq!(destination(&[], &A), None);
    }
}
