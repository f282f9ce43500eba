//! An overlay other users of a node cannot write into: hpk-netd VTEPs on host sockets
//! with the cluster's key, a real etcd, runc containers, and someone else on a member
//! host who sends hand-made VXLAN (from a port they can bind, from the VTEP's own port
//! unsealed or sealed with another key, and captured datagrams replayed).

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hpk_netd::underlay::auth::key::ClusterKey;
use hpk_netd::underlay::auth::keys::Keys;
use hpk_netd::underlay::auth::seal::{Opener, Protection, Sealer};
use testkit::cluster::{Cluster, Host};
use testkit::netd::Netd;
use testkit::rootless::setpriv_args;
use testkit::*;

mod support;
use support::*;

/// Where the listener in the receiving container waits.
const PORT: u16 = 7777;

/// `n` hosts with one cluster key (and `extra` flags).
fn keyed_cluster(
    n: usize,
    extra: &[&str],
) -> (
    Cluster,
    Vec<(hpk_netd::underlay::handover::Server, UdpSocket)>,
) {
    static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nth = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let key = std::env::temp_dir().join(format!("hpk-overlay-{}-{nth}.key", std::process::id()));
    ClusterKey::generate().unwrap().write(&key).unwrap();
    let mut flags = vec!["--overlay-key", key.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let cluster = userspace_cluster(n, &flags);
    // hpk-netd has read it; the cluster's copy is the one that matters.
    std::fs::remove_file(&key).unwrap();
    cluster
}

/// A VXLAN datagram (VNI 1) with an Ethernet frame from `h0`'s VtepMAC to `h1`'s carrying
/// UDP from `src` to `dst`:PORT: what a container on h0 would send a container on h1.
fn vxlan_udp(h0: &Host, h1: &Host, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&vtep_mac(h1.addr));
    d.extend_from_slice(&vtep_mac(h0.addr));
    d.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = !ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .fold(0u32, |a, w| {
            let s = a + w;
            (s & 0xffff) + (s >> 16)
        }) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    d.extend_from_slice(&ip);
    d.extend_from_slice(&5000u16.to_be_bytes());
    d.extend_from_slice(&PORT.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]); // no UDP checksum (legal over IPv4)
    d.extend_from_slice(payload);
    d
}

/// A UDP socket at `addr`:PORT inside the container's namespace.
fn listener(c: &testkit::runc::Container, addr: Ipv4Addr) -> UdpSocket {
    let s = spawn_in(&c.netns(), move || UdpSocket::bind((addr, PORT)).unwrap())
        .join()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn send_from_container(c: &testkit::runc::Container, to: Ipv4Addr, payload: &'static [u8]) {
    spawn_in(&c.netns(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(payload, (to, PORT)).unwrap();
    })
    .join()
    .unwrap();
}

/// The UDP payloads of vxlan datagrams from `from` crossing a link of `ns` until `stop`.
fn capture(ns: &Netns, from: Ipv4Addr, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Vec<u8>>> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = nix::sys::time::TimeVal::new(0, 100_000);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // Asked to stop: what is queued still counts; an idle 100 ms ends it.
            let stopping = stop.load(Ordering::Relaxed);
            let Ok(n) = nix::sys::socket::recv(
                fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            ) else {
                if stopping {
                    break;
                }
                continue;
            };
            let p = &buf[..n];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if n < ihl + 8 || p[9] != 17 || p[12..16] != from.octets() {
                continue;
            }
            if u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]) == VXLAN_PORT {
                seen.push(p[ihl + 8..].to_vec());
            }
        }
        seen
    });
    ready.recv_timeout(Duration::from_secs(5)).unwrap();
    handle
}

#[test]
fn a_sealed_overlay_takes_nothing_forged_replayed_or_from_another_port() {
    let (cl, servers) = keyed_cluster(2, &[]);
    let cs = cl.containers(2);
    reach_each_other(&cs);
    let (h0, h1) = (&cl.hosts[0], &cl.hosts[1]);
    for h in [h0, h1] {
        let status = h.netd().status();
        let u = status.underlay.as_ref().unwrap();
        assert_eq!(
            u.protection.as_deref(),
            Some("encrypt"),
            "the default: {u:?}"
        );
        assert_eq!(status.peers[0].datagrams.as_deref(), Some("sealed"));
        assert!(u.counters["tx_sealed"] > 0 && u.counters["rx_authenticated"] > 0);
    }
    let lease = cl.etcd.get_prefix(&format!(
        "{}/subnets/{}",
        testkit::cluster::ETCD_PREFIX,
        h0.subnet().replace('/', "-")
    ));
    assert!(
        lease[0]
            .1
            .contains(r#""HpkVtep":{"Port":8472,"Sealed":true}"#),
        "{lease:?}"
    );

    let inbox = listener(&cs[1].0, cs[1].1);
    let forged = vxlan_udp(h0, h1, cs[0].1, cs[1].1, b"forged");

    // Another user of h0, from a port it can bind: the attack of a shared node.
    let file = cl.scratch.0.join("forged.bin");
    std::fs::write(&file, &forged).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let sent = h0
        .ns
        .nsenter("setpriv")
        .args(setpriv_args())
        .args(["socat", "-u"])
        .arg(format!("OPEN:{}", file.display()))
        .arg(format!(
            "UDP4-SENDTO:{}:{VXLAN_PORT},bind={}",
            h1.addr, h0.addr
        ))
        .output()
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    wait_until(
        "the other user's datagram dropped",
        Duration::from_secs(5),
        || counter(h1, "drop_wrong_port") == 1,
    );

    // From the VTEP's own port: unsealed (as a kernel peer sends), and sealed with another
    // cluster's key.
    let vtep0 = &servers[0].1;
    vtep0.send_to(&forged, (h1.addr, VXLAN_PORT)).unwrap();
    let mut foreign = Vec::new();
    Sealer::new(
        &ClusterKey::generate().unwrap(),
        h0.addr,
        u64::MAX,
        Protection::Authenticate,
    )
    .seal(&forged, &mut foreign);
    vtep0.send_to(&foreign, (h1.addr, VXLAN_PORT)).unwrap();
    wait_until(
        "both dropped as unauthenticated",
        Duration::from_secs(5),
        || counter(h1, "drop_unauthenticated") == 2,
    );

    // Real datagrams of h0, captured on h1's link and sent again from h0's VTEP port.
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(&h1.ns, h0.addr, stop.clone());
    assert!(cs[0].0.ping(&cs[1].1.to_string()));
    stop.store(true, Ordering::Relaxed);
    let captured = cap.join().unwrap();
    assert!(!captured.is_empty(), "the ping crossed h1's link");
    let before = counter(h1, "drop_replayed");
    let frames = counter(h1, "rx_frames");
    for d in &captured {
        vtep0.send_to(d, (h1.addr, VXLAN_PORT)).unwrap();
    }
    wait_until("every replay dropped", Duration::from_secs(5), || {
        counter(h1, "drop_replayed") == before + captured.len() as u64
    });
    assert_eq!(counter(h1, "rx_frames"), frames, "a replay reached the tap");

    // Nothing of the above reached the container: a real datagram sent now is the first.
    send_from_container(&cs[0].0, cs[1].1, b"marker");
    let mut buf = [0u8; 64];
    let (n, from) = inbox.recv_from(&mut buf).expect("the marker arrives");
    assert_eq!(&buf[..n], b"marker", "{from} got through first");
    for k in ["drop_wrong_vni", "drop_malformed", "drop_no_key"] {
        assert_eq!(counter(h1, k), 0, "{k}: {:?}", underlay(h1).counters);
    }
}

#[test]
fn encryption_hides_the_frames_on_the_wire_and_authentication_does_not() {
    const KNOWN: &[u8] = b"a known payload that must not cross the LAN in the clear";
    for (extra, protection, visible) in [
        (&["--overlay-encrypt", "false"][..], "authenticate", true),
        (&[][..], "encrypt", false),
    ] {
        let (cl, _servers) = keyed_cluster(2, extra);
        let cs = cl.containers(2);
        reach_each_other(&cs);
        let (h0, h1) = (&cl.hosts[0], &cl.hosts[1]);
        assert_eq!(
            underlay(h0).protection.as_deref(),
            Some(protection),
            "{extra:?}"
        );
        let inbox = listener(&cs[1].0, cs[1].1);
        let stop = Arc::new(AtomicBool::new(false));
        let cap = capture(&h1.ns, h0.addr, stop.clone());
        send_from_container(&cs[0].0, cs[1].1, KNOWN);
        let mut buf = [0u8; 128];
        let n = inbox.recv(&mut buf).expect("the payload arrives");
        assert_eq!(&buf[..n], KNOWN);
        stop.store(true, Ordering::Relaxed);
        let captured = cap.join().unwrap();
        assert!(!captured.is_empty());
        let seen = captured
            .iter()
            .any(|d| d.windows(KNOWN.len()).any(|w| w == KNOWN));
        assert_eq!(seen, visible, "{protection}: payload seen on the LAN");
    }
}

#[test]
fn overlay_keys_that_cannot_be_used_are_refused_with_the_way_out() {
    let cl = Cluster::new(1);
    let h = &cl.hosts[0];
    let (_server, socket, _) = serve_host_socket(h);
    let socket = socket.to_str().unwrap().to_owned();
    let open_key = h.dir.join("open.key");
    ClusterKey::generate().unwrap().write(&open_key).unwrap();
    std::fs::set_permissions(
        &open_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let missing = h.dir.join("missing.key");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "--underlay-socket",
                &socket,
                "--overlay-key",
                missing.to_str().unwrap(),
            ],
            "cannot read the overlay key",
        ),
        (
            vec![
                "--underlay-socket",
                &socket,
                "--overlay-key",
                open_key.to_str().unwrap(),
            ],
            "is open to other users (mode 644): chmod 0600 it",
        ),
        (
            vec!["--underlay-socket", &socket, "--overlay-encrypt", "true"],
            "overlay_encrypt needs overlay_key",
        ),
        (
            vec![
                "--underlay",
                "kernel",
                "--overlay-key",
                open_key.to_str().unwrap(),
            ],
            "flannel's kernel device cannot seal",
        ),
    ];
    for (extra, expect) in cases {
        let out = Netd::command(&h.ns, &h.dir, &Host::etcd_args(&cl.etcd.url, &extra))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{extra:?}: {err}"
        );
        assert!(!h.ns.has_link("flannel.1"), "{extra:?} left flannel.1");
    }
}

#[test]
fn a_rotated_key_is_taken_up_without_losing_a_ping() {
    // Removed with the scratch directory even if the test fails half-way.
    let scratch = Scratch::new(&format!("hpk-overlay-{}-rotated", std::process::id()));
    let key = scratch.0.join("overlay.key");
    let old = ClusterKey::generate().unwrap();
    old.write(&key).unwrap();
    let (cl, _servers) = userspace_cluster(2, &["--overlay-key", key.to_str().unwrap()]);
    let cs = cl.containers(2);
    reach_each_other(&cs);
    let (h0, h1) = (&cl.hosts[0], &cl.hosts[1]);

    // Pings every 50 ms across the change: the controller writes a new key.
    let target = cs[1].1.to_string();
    let ns = cs[0].0.netns();
    let pings = std::thread::spawn(move || {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ping", "-q", "-c", "160", "-i", "0.05", "-W", "2", &target])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    let new = ClusterKey::generate().unwrap();
    new.write(&key).unwrap();
    wait_until(
        "both hosts to load the new key",
        Duration::from_secs(10),
        || h0.log_says("the overlay key changed") && h1.log_says("the overlay key changed"),
    );
    let out = pings.join().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains(" 0% packet loss"), "{summary}");

    // What h0 sends now is sealed with the new key only.
    wait_until(
        "h0 to seal with the new key",
        Duration::from_secs(10),
        || {
            let stop = Arc::new(AtomicBool::new(false));
            let cap = capture(&h1.ns, h0.addr, stop.clone());
            let _ = cs[0].0.ping(&cs[1].1.to_string());
            stop.store(true, Ordering::Relaxed);
            let captured = cap.join().unwrap();
            let opens = |k: &ClusterKey| {
                let mut o = Opener::new(Keys::new(k.clone()));
                captured
                    .iter()
                    .all(|d| o.open(h0.addr, &mut d.clone()).is_ok())
            };
            !captured.is_empty() && opens(&new) && !opens(&old)
        },
    );
}
