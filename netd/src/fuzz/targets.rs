//! The fuzz targets: one per parser of outside input, each with its property.

use std::io::Read;
use std::path::Path;

use super::{run, Shape};
use crate::datapath::framing::{encode_into, FrameReader, MIN_FRAME};
use crate::datapath::socket::negotiation::{is_control, ACK, HELLO};
use crate::endpoint::store::Record;
use crate::subnet::etcd::lease::{self, Parsed};
use crate::subnet::etcd::netconfig::NetworkConfig;
use crate::subnet::SubnetEnv;
use crate::sys::tap::{MAX_FRAME, VNET_HDR_LEN};
use crate::underlay::gso::{self, Coalescer, VnetHdr};
use crate::underlay::{checksum, header};

/// A reader handing out its bytes in chunks of the sizes given, as a socket might.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self
            .sizes
            .get(self.turn % self.sizes.len().max(1))
            .copied()
            .unwrap_or(0);
        self.turn += 1;
        let n = (size as usize * 61 + 1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Socket mode, both framings: whatever a peer sends, frames come out whole and within
/// the limits, re-encoding them gives back the stream's bytes, and a stream ends cleanly
/// only on a frame boundary. Negotiation frames are recognised only whole.
#[test]
fn socket_framing() {
    run("socket_framing", Shape::Bytes, |input| {
        let (sizes, stream) = input.split_at(input.len().min(4));
        let mut frames = 0;
        for (min, max) in [
            (MIN_FRAME, MAX_FRAME),
            (VNET_HDR_LEN + MIN_FRAME, VNET_HDR_LEN + MAX_FRAME),
        ] {
            let mut reader = FrameReader::new(Chunked {
                data: stream,
                sizes,
                turn: 0,
            });
            reader.set_limits(min, max);
            let mut again = Vec::new();
            let clean = loop {
                match reader.next_frame() {
                    Ok(Some(f)) => {
                        assert!((min..=max).contains(&f.len()), "frame of {} bytes", f.len());
                        if is_control(f, HELLO) || is_control(f, ACK) {
                            assert!(f.len() >= 14 + ACK.len());
                        }
                        if min > MIN_FRAME {
                            let mut h = [0u8; VnetHdr::LEN];
                            h.copy_from_slice(&f[..VnetHdr::LEN]);
                            let _ = VnetHdr::parse(&h);
                        }
                        encode_into(&mut again, f);
                        frames += 1;
                    }
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            };
            assert_eq!(
                again[..],
                stream[..again.len()],
                "frames are the stream's bytes"
            );
            assert_eq!(
                clean,
                again.len() == stream.len(),
                "clean end only at a boundary"
            );
        }
        frames > 0
    });
}

/// flannel's subnet.env: parsed or refused; what parses renders and parses the same.
#[test]
fn subnet_env() {
    run("subnet_env", Shape::Bytes, |input| {
        let text = String::from_utf8_lossy(input);
        let Ok(env) = SubnetEnv::parse(&text, Path::new("subnet.env")) else {
            return false;
        };
        assert!(env.network.contains(&env.subnet.network()));
        let again = SubnetEnv::parse(&env.render(), Path::new("rendered")).unwrap();
        assert_eq!(again, env);
        true
    });
}

/// flannel's network config in etcd: parsed or refused; what parses keeps the promises
/// the agent relies on (a network address, subnets that fit it, from the first leasable
/// to the last, a VNI and port vxlan can carry, an MTU a tap takes), and written again as
/// flannel writes it, reads back the same.
#[test]
fn network_config() {
    run("network_config", Shape::Json, |input| {
        let Ok(c) = NetworkConfig::parse(&String::from_utf8_lossy(input)) else {
            return false;
        };
        assert_eq!(c.network, c.network.trunc(), "Network is a network address");
        assert!((c.network.prefix_len() + 2..=30).contains(&c.subnet_len));
        let subnet = |a| ipnet::Ipv4Net::new(a, c.subnet_len).unwrap();
        let (first, last) = (subnet(c.subnet_min), subnet(c.subnet_max));
        assert!(c.fits(first) && c.fits(last), "{c:?}");
        assert!(c.subnet_min <= c.subnet_max);
        assert!(c.network.contains(&first) && c.network.contains(&last));
        assert_eq!(c.subnets().next(), Some(first));
        assert!((1..1 << 24).contains(&c.vni) && c.port != 0);
        if let Some(mtu) = c.mtu {
            assert!((576..=crate::sys::tap::MAX_TAP_MTU).contains(&mtu));
        }
        let written = serde_json::json!({
            "Network": c.network.to_string(),
            "SubnetLen": c.subnet_len,
            "SubnetMin": c.subnet_min.to_string(),
            "SubnetMax": c.subnet_max.to_string(),
            "Backend": {"Type": "vxlan", "VNI": c.vni, "Port": c.port, "MTU": c.mtu},
        });
        let again = NetworkConfig::parse(&written.to_string())
            .unwrap_or_else(|e| panic!("{written} does not parse: {e:#}"));
        assert_eq!(again, c, "{written}");
        true
    });
}

/// Subnet keys and lease values under `subnets/`, written by any etcd client: a vxlan
/// lease that parses names a MAC that formats back to what was written.
#[test]
fn lease() {
    run("lease", Shape::Json, |input| {
        let subnet = "10.244.3.0/24".parse().unwrap();
        let parsed = lease::parse_lease(subnet, input);
        if let Ok(Parsed::Vxlan(peer)) = &parsed {
            let value = lease::lease_value(peer.public_ip, 1, peer.vtep_mac, peer.hpk);
            match lease::parse_lease(subnet, value.as_bytes()).unwrap() {
                Parsed::Vxlan(again) => assert_eq!(again.vtep_mac, peer.vtep_mac),
                other => panic!("our own lease reads as {other:?}"),
            }
        }
        let key = String::from_utf8_lossy(input);
        if let Some(net) = lease::parse_subnet_key(lease::DEFAULT_PREFIX, &key) {
            assert_eq!(net, net.trunc(), "a subnet key names a network");
        }
        let _ = lease::parse_mac(&key);
        parsed.is_ok()
    });
}

/// The control socket's requests (any local user allowed to connect): parsed or refused;
/// what parses says the same once written again, and an id that passes validation makes
/// file names that fit one directory entry each.
#[test]
fn control_request() {
    run("control_request", Shape::Json, |input| {
        let Ok(request) = serde_json::from_slice::<hpk_hook::proto::Request>(input) else {
            return false;
        };
        let again = serde_json::to_vec(&request).expect("requests serialize");
        assert_eq!(
            serde_json::from_slice::<hpk_hook::proto::Request>(&again).unwrap(),
            request
        );
        if let hpk_hook::proto::Request::Attach(a) = &request {
            if crate::endpoint::validate_id(&a.id).is_ok() {
                for name in crate::endpoint::store::file_names(&a.id) {
                    assert!(name.len() <= 255, "a file name of {} bytes", name.len());
                    let parts: Vec<_> = Path::new(&name).components().collect();
                    assert_eq!(
                        parts,
                        [std::path::Component::Normal(name.as_ref())],
                        "{name:?} is one plain file name"
                    );
                    assert!(!name.contains('\0'));
                }
                assert_eq!(crate::endpoint::bubble_tap_name(&a.id).len(), 15);
            }
        }
        true
    });
}

/// The hub's control requests (from hpk-netd, over a root-only socket): parsed or refused;
/// what parses says the same once written again.
#[test]
fn hub_request() {
    run("hub_request", Shape::Json, |input| {
        let Ok(request) = serde_json::from_slice::<crate::datapath::hub::HubRequest>(input) else {
            return false;
        };
        let again = serde_json::to_vec(&request).expect("requests serialize");
        assert_eq!(
            serde_json::from_slice::<crate::datapath::hub::HubRequest>(&again).unwrap(),
            request
        );
        true
    });
}

/// What the hook makes of a container's annotations: an error only for an annotation of
/// ours, opting out only for `network=none`, and the address and endpoint kind asked for
/// exactly as written (no lenient reading of an address: `010.1.1.1` is no `10.1.1.1`).
fn check_wish(annotations: &std::collections::HashMap<String, String>) {
    use hpk_hook::hook::{wish, Wish};
    use hpk_hook::proto::{ANNOTATION_ENDPOINT, ANNOTATION_IP, ANNOTATION_NETWORK};
    let ours = |key: &str| annotations.get(key).map(String::as_str);
    match wish(annotations) {
        Err(e) => assert!(
            annotations.keys().any(|k| k.starts_with("io.hpktainer.")),
            "refused without an annotation of ours: {e:#}"
        ),
        Ok(Wish::OptOut) => assert_eq!(ours(ANNOTATION_NETWORK), Some("none")),
        Ok(Wish::Attach {
            address, endpoint, ..
        }) => {
            assert_ne!(ours(ANNOTATION_NETWORK), Some("none"));
            assert_eq!(
                address.map(|a| a.to_string()).as_deref(),
                ours(ANNOTATION_IP)
            );
            match (endpoint, ours(ANNOTATION_ENDPOINT)) {
                (None, None) => {}
                (Some(kind), Some(written)) => {
                    let value =
                        clap::ValueEnum::to_possible_value(&kind).expect("kinds have names");
                    assert!(value.matches(written, true), "{written:?} read as {kind:?}");
                }
                other => panic!("endpoint annotation and kind disagree: {other:?}"),
            }
        }
    }
}

/// The OCI state a runtime writes on the hook's stdin: one that parses has an id, reads
/// back the same once written again, and its annotations are read as written.
#[test]
fn oci_state() {
    run("oci_state", Shape::Json, |input| {
        let Ok(state) = hpk_hook::hook::read_state(input) else {
            return false;
        };
        assert!(!state.id().is_empty());
        let again = serde_json::to_vec(&state).expect("states serialize");
        assert_eq!(hpk_hook::hook::read_state(&again[..]).unwrap(), state);
        if let Some(a) = state.annotations() {
            check_wish(a);
        }
        true
    });
}

/// A bundle's config.json, read by the hook when the state has no annotations: one that
/// parses reads back the same once written again, and its annotations are read as
/// written.
#[test]
fn oci_config() {
    run("oci_config", Shape::Json, |input| {
        let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(input) else {
            return false;
        };
        let again = serde_json::to_vec(&spec).expect("specs serialize");
        assert_eq!(
            serde_json::from_slice::<oci_spec::runtime::Spec>(&again).unwrap(),
            spec
        );
        check_wish(&spec.annotations().clone().unwrap_or_default());
        true
    });
}

/// Endpoint records read back after a restart: one that parses is the endpoint its file
/// names, with that endpoint's own link.
#[test]
fn endpoint_record() {
    run("endpoint_record", Shape::Json, |input| {
        let Ok(r) = Record::parse("c1", input) else {
            return false;
        };
        assert_eq!(r.spec.id(), "c1");
        assert_eq!(
            r.spec.attachment.bubble_tap,
            crate::endpoint::bubble_tap_name("c1")
        );
        true
    });
}

/// Datagrams on the overlay's UDP port, from anyone on the network: decoded or dropped;
/// the frames that pass are joined as GRO would, and every frame handed to the tap is
/// whole: a header and a frame no longer than the tap takes, passed-through frames
/// unchanged, joined ones marked TCPv4 GSO with their checksum start inside.
#[test]
fn vxlan_datagrams() {
    run("vxlan_datagram", Shape::Bytes, |input| {
        // The input: a byte saying whether to make the checksums right (so that mutated
        // headers reach the joining logic), then datagrams with a 2-byte length each.
        let Some((&fix, mut rest)) = input.split_first() else {
            return false;
        };
        let mut datagrams = Vec::new();
        while rest.len() >= 2 {
            let n = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
            datagrams.push(&rest[2..2 + n]);
            rest = &rest[2 + n..];
        }
        let mut pushed: Vec<Vec<u8>> = Vec::new();
        let mut emitted: Vec<Vec<u8>> = Vec::new();
        let mut gro = Coalescer::default();
        for d in datagrams {
            if let Ok(frame) = header::decode(d, 1) {
                assert!(frame.len() >= 14 && frame.len() + header::LEN == d.len());
                let mut frame = frame.to_vec();
                if fix % 2 == 0 {
                    fix_checksums(&mut frame);
                }
                gro.push(&frame, &mut |f| emitted.push(f.to_vec()));
                pushed.push(frame);
            }
        }
        gro.flush(&mut |f| emitted.push(f.to_vec()));
        for f in &emitted {
            assert!(f.len() >= VnetHdr::LEN + 14 && f.len() <= VnetHdr::LEN + MAX_FRAME);
            let mut h = [0u8; VnetHdr::LEN];
            h.copy_from_slice(&f[..VnetHdr::LEN]);
            let hdr = VnetHdr::parse(&h);
            let frame = &f[VnetHdr::LEN..];
            if hdr.gso_type == gso::GSO_NONE {
                // Whole, or without the Ethernet padding after its IP packet.
                let ip_end = frame
                    .get(16..18)
                    .map(|l| 14 + usize::from(u16::from_be_bytes([l[0], l[1]])));
                assert!(
                    pushed.iter().any(|p| p[..] == *frame
                        || (p.starts_with(frame) && ip_end == Some(frame.len()))),
                    "a frame passed changed"
                );
            } else {
                assert_eq!(hdr.gso_type & !gso::GSO_ECN, gso::GSO_TCPV4);
                assert!((hdr.csum_start as usize) < frame.len());
            }
        }
        let bytes = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
        assert!(bytes(&emitted) <= bytes(&pushed) + emitted.len() * VnetHdr::LEN);
        // Accepted: segments were joined.
        emitted.len() < pushed.len()
    });
}

/// Sealed datagrams from anyone who can reach the port: the opener never panics, opens
/// only what the cluster's key sealed (a sealed copy of the input opens to the input), and
/// takes each sealed datagram once.
#[test]
fn sealed_datagrams() {
    use crate::underlay::auth::key::ClusterKey;
    use crate::underlay::auth::seal::{Opener, Protection, Sealer};
    let key = ClusterKey::from_bytes([7; 32]);
    let peer = std::net::Ipv4Addr::new(192, 0, 2, 11);
    run("sealed_datagram", Shape::Bytes, |input| {
        let mut opener = Opener::new(crate::underlay::auth::keys::Keys::new(key.clone()));
        let mut forged = input.to_vec();
        assert!(
            opener.open(peer, &mut forged).is_err(),
            "opened unsealed bytes"
        );
        if input.len() < header::LEN {
            return false;
        }
        let protection = if input[0] % 2 == 0 {
            Protection::Authenticate
        } else {
            Protection::Encrypt
        };
        let mut sealed = Vec::new();
        Sealer::new(&key, peer, 1, protection).seal(input, &mut sealed);
        let mut copy = sealed.clone();
        let range = opener.open(peer, &mut copy).expect("our own seal opens");
        assert_eq!(&copy[range], input);
        assert!(opener.open(peer, &mut sealed.clone()).is_err(), "replayed");
        true
    });
}

/// Makes the IPv4 header and TCP checksums of an Ethernet frame right, where it has them.
fn fix_checksums(f: &mut [u8]) {
    const IP: usize = 14;
    if f.len() < IP + 20 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(f[IP] & 0x0f) * 4;
    if ihl < 20 || f.len() < IP + ihl {
        return;
    }
    f[IP + 10..IP + 12].fill(0);
    let c = checksum::finish(checksum::add(0, &f[IP..IP + ihl]));
    f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    let tcp = IP + ihl;
    let end = (IP + usize::from(u16::from_be_bytes([f[IP + 2], f[IP + 3]]))).min(f.len());
    if f[IP + 9] != 6 || end < tcp + 20 {
        return;
    }
    f[tcp + 16..tcp + 18].fill(0);
    let pseudo = checksum::pseudo_header(&f[IP + 12..IP + 16], &f[IP + 16..IP + 20], 6, end - tcp);
    let c = checksum::finish(checksum::add(pseudo, &f[tcp..end]));
    f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
}

/// Frames a container writes into its tap with a virtio-net header (any header: the
/// container is not trusted), cut into datagrams: refused, or laid out as announced.
#[test]
fn tso_frames() {
    run("tso_frame", Shape::Bytes, |input| {
        if input.len() < VnetHdr::LEN {
            return false;
        }
        let mut h = [0u8; VnetHdr::LEN];
        h.copy_from_slice(&input[..VnetHdr::LEN]);
        let hdr = VnetHdr::parse(&h);
        let frame = &input[VnetHdr::LEN..];
        let prefix = header::encode(1);
        let mut out = vec![0xaa; 3];
        let Ok(d) = gso::segment(&hdr, frame, &prefix, &mut out) else {
            return false;
        };
        let made = out.len() - 3;
        assert!(d.count >= 1 && d.stride > prefix.len());
        assert!(made > (d.count - 1) * d.stride && made <= d.count * d.stride);
        assert_eq!(out[..3], [0xaa; 3], "what was in the buffer is kept");
        for i in 0..d.count {
            let at = 3 + i * d.stride;
            assert_eq!(out[at..at + prefix.len()], prefix);
        }
        d.count > 1
    });
}

/// The bubble's DNS server: whatever a container sends, a reply is a response to that
/// query (its id and question), parses, fits a UDP answer, and answers a name it knows
/// with that name's address; nothing but a query is ever forwarded.
#[test]
fn dns_query() {
    use crate::names::answer::{answer, Verdict, Zone};
    use crate::names::directory::{Directory, Entry};
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::rr::RData;
    let zone = Zone::new("hpk.internal").unwrap();
    let mut names = Directory::default();
    let web = std::net::Ipv4Addr::new(10, 244, 3, 5);
    names.insert(
        "web",
        Entry {
            address: web,
            container: "c1".into(),
            bubble: "192.0.2.13".into(),
        },
    );
    run("dns_query", Shape::Bytes, |input| {
        let asked = Message::from_vec(input).ok();
        match answer(input, &names, &zone) {
            Verdict::Ignore => true,
            Verdict::Forward(q) => {
                q.metadata.message_type == MessageType::Query && q.queries.len() == 1
            }
            Verdict::Reply(bytes) => {
                let Ok(reply) = Message::from_vec(&bytes) else {
                    return false;
                };
                let same_id = input.len() >= 2
                    && reply.metadata.id == u16::from_be_bytes([input[0], input[1]]);
                let fits = bytes.len() <= 512 || asked.as_ref().is_some_and(|m| m.edns.is_some());
                let right = reply.answers.iter().all(|r| match &r.data {
                    RData::A(a) => a.0 == web,
                    RData::PTR(p) => p.0.to_ascii() == "web.hpk.internal.",
                    _ => false,
                });
                let question =
                    asked.is_none_or(|m| m.queries.is_empty() || reply.queries == m.queries);
                reply.metadata.message_type == MessageType::Response
                    && same_id
                    && fits
                    && right
                    && question
            }
        }
    });
}
