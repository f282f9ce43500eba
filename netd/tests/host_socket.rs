//! The userspace VTEP on a host socket: hosts on a LAN, a real etcd, runc containers,
//! each hpk-netd fetching its UDP socket from a launcher-like server, talking to each
//! other, to a kernel vxlan peer made by hpk-netd and to a flanneld-style node.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::net::UnixListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hpk_netd::underlay::auth::key::ClusterKey;
use hpk_netd::underlay::handover::Server;
use nix::sys::signal::Signal;
use testkit::cluster::{flanneld_node, Cluster, Host, ETCD_PREFIX};
use testkit::netd::Netd;
use testkit::*;

mod support;
use support::*;

#[test]
fn userspace_vteps_on_three_hosts_carry_tcp() {
    let (cl, _servers) = userspace_cluster(3, &[]);
    let cs = cl.containers(3);
    reach_each_other(&cs);
    tcp_stream(
        &cs[2].0.netns(),
        &cs[0].0.netns(),
        cs[2].1,
        8 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();

    for h in &cl.hosts {
        let u = underlay(h);
        assert_eq!(u.kind, "host-socket");
        assert_eq!(
            u.local.as_deref(),
            Some(&*format!("{}:{VXLAN_PORT}", h.addr))
        );
        // flannel.1 is a tap here (no kernel vxlan), MTU from eth0, with the VtepMAC
        // derived from the public address, and that is what the lease says.
        let details =
            String::from_utf8_lossy(&h.ns.ip(&["-d", "link", "show", "flannel.1"]).stdout)
                .into_owned();
        assert!(
            details.contains("tun type tap") && details.contains("mtu 1450"),
            "{details}"
        );
        let o = h.addr.octets();
        let mac = format!("0e:68:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        let key = format!("{ETCD_PREFIX}/subnets/{}", h.subnet().replace('/', "-"));
        let lease = cl.etcd.get_prefix(&key);
        assert!(
            lease[0].1.contains(&format!(r#""VtepMAC":"{mac}""#)),
            "{lease:?}"
        );
        assert!(
            u.counters["tx_datagrams"] > 0 && u.counters["rx_datagrams"] > 0,
            "{u:?}"
        );
        for k in ["drop_unknown_sender", "drop_wrong_vni", "drop_malformed"] {
            assert_eq!(u.counters[k], 0, "{k} on {}: {u:?}", h.name);
        }
    }
    // Whole TCP windows crossed as few large writes: the receiving tap got far fewer
    // frames than the 8 MB needed datagrams.
    let rx = underlay(&cl.hosts[2]).counters;
    assert!(
        rx["rx_frames"] * 4 < rx["rx_datagrams"],
        "segments were not joined: {rx:?}"
    );
}

#[test]
fn kernel_vxlan_peers_and_a_flanneld_node_talk_to_a_userspace_vtep() {
    let mut cl = Cluster::new(3);
    let (_server, path, _) = serve_host_socket(&cl.hosts[0]);
    // The userspace VTEP has the cluster's key: kernel peers cannot seal, and stay plain.
    let key = cl.hosts[0].dir.join("overlay.key");
    ClusterKey::generate().unwrap().write(&key).unwrap();
    let key_flag = ["--overlay-key", key.to_str().unwrap()];
    start_userspace(&mut cl.hosts[0], &cl.etcd.url, &path, &key_flag);
    let etcd_url = cl.etcd.url.clone();
    cl.hosts[1].start_netd(&Host::etcd_args(&etcd_url, &[]));
    assert_eq!(underlay(&cl.hosts[1]).kind, "kernel");
    let fixture = flanneld_node(&cl.etcd, &cl.hosts[2].ns, cl.hosts[2].addr);
    let cs = cl.containers(2);
    reach_each_other(&cs);
    tcp_stream(
        &cs[0].0.netns(),
        &cs[1].0.netns(),
        cs[0].1,
        4 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();
    tcp_stream(
        &cs[1].0.netns(),
        &cs[0].0.netns(),
        cs[1].1,
        4 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();
    // The flanneld node (a kernel flannel.1 set up as flanneld does, on a LAN link that
    // offloads checksums) with a pod behind cni0, both ways: ping, 8 MB of TCP with its
    // checksum, and UDP. Its inner segments arrive with partial checksums.
    wait_until(
        "a route to the flanneld node",
        Duration::from_secs(10),
        || cl.hosts[0].routes_to("10.244.200.0/24"),
    );
    let pod = flanneld_pod(&cl.hosts[2].ns, &format!("{}-pod", cl.world.prefix));
    let pod_addr = Ipv4Addr::new(10, 244, 200, 2);
    assert!(cs[0].0.ping(&fixture.to_string()), "userspace to flanneld");
    assert!(cs[0].0.ping(&pod_addr.to_string()), "userspace to the pod");
    assert!(
        pod.ping(&cs[0].1.to_string()),
        "the pod to the userspace VTEP's container"
    );
    let done = || Arc::new(AtomicBool::new(true));
    tcp_stream(&pod.path(), &cs[0].0.netns(), pod_addr, 8 << 20, done()).check();
    tcp_stream(&cs[0].0.netns(), &pod.path(), cs[0].1, 8 << 20, done()).check();
    assert_eq!(
        udp_exchange(&pod.path(), pod_addr, &cs[0].0.netns()),
        "pong"
    );
    assert_eq!(udp_exchange(&cs[0].0.netns(), cs[0].1, &pod.path()), "pong");
    let status = cl.hosts[0].netd().status();
    assert_eq!(status.peers.len(), 2, "{:?}", status.peers);
    for p in &status.peers {
        assert_eq!(
            p.datagrams.as_deref(),
            Some("plain: a kernel flannel VTEP (any port, no key)"),
            "{p:?}"
        );
    }
    assert_eq!(counter(&cl.hosts[0], "tx_sealed"), 0);
    // The partial checksums were really there (else this test proves nothing).
    assert!(
        counter(&cl.hosts[0], "rx_partial_checksum") > 0,
        "no partial checksum arrived: {:?}",
        underlay(&cl.hosts[0]).counters
    );
}

/// A pod behind the flanneld node's cni0: a namespace with 10.244.200.2.
fn flanneld_pod(node: &Netns, name: &str) -> Netns {
    let pod = Netns::new(name.to_owned());
    run(std::process::Command::new("ip").args([
        "link", "add", "veth-pod", "netns", &node.name, "type", "veth", "peer", "name", "eth0",
        "netns", &pod.name,
    ]));
    node.ip(&["link", "set", "veth-pod", "master", "cni0", "up"]);
    run(node.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    pod.ip(&["addr", "add", "10.244.200.2/24", "dev", "eth0"]);
    // flanneld's CNI config gives pods the overlay's MTU.
    node.ip(&["link", "set", "veth-pod", "mtu", "1450"]);
    pod.ip(&["link", "set", "eth0", "mtu", "1450", "up"]);
    pod.ip(&["link", "set", "lo", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.244.200.1"]);
    pod
}

/// One datagram from the namespace at `client` to a UDP server at `addr` in `server`;
/// the answer.
fn udp_exchange(server: &std::path::Path, addr: Ipv4Addr, client: &std::path::Path) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = spawn_in(server, move || {
        let s = UdpSocket::bind((addr, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(s.local_addr().unwrap().port()).unwrap();
        let mut buf = [0u8; 64];
        let (_, peer) = s.recv_from(&mut buf).unwrap();
        s.send_to(b"pong", peer).unwrap();
    });
    let port = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let answer = spawn_in(client, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&[7u8; 1000], (addr, port)).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .join()
    .unwrap();
    srv.join().unwrap();
    answer
}

#[test]
fn bad_datagrams_are_dropped_and_counted_and_leaving_peers_are_not_sent_to() {
    let (mut cl, mut servers) = userspace_cluster(3, &[]);
    let cs = cl.containers(3);
    reach_each_other(&cs);

    let (h0, h1) = (&cl.hosts[0], &cl.hosts[1]);
    let frame = |vni: u8| {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, vni, 0];
        d.extend_from_slice(&[0xff; 6]);
        d.extend_from_slice(&[0x0e; 6]);
        d.extend_from_slice(&[0x08, 0x00]);
        d.extend_from_slice(&[0u8; 46]);
        d
    };
    // From a member's address but not from its VTEP's port: another user of that host.
    send_datagram(&h0.ns, h0.addr, h1.addr, frame(1));
    // The LAN's router is no peer of anyone.
    send_datagram(
        &cl.world.lan,
        Ipv4Addr::new(192, 0, 2, 1),
        h1.addr,
        frame(1),
    );
    // From the VTEP's own port, what is looked at next: the header.
    let vtep0 = &servers[0].1;
    for bad in [
        frame(7),
        vec![0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2],
        b"garbage, not vxlan at all".to_vec(),
    ] {
        vtep0.send_to(&bad, (h1.addr, VXLAN_PORT)).unwrap();
    }
    // Frames that decode but are not for h1's VTEP (here: broadcast), or whose IPv4
    // source lies outside h0's lease.
    vtep0.send_to(&frame(1), (h1.addr, VXLAN_PORT)).unwrap();
    let mut foreign = frame(1);
    foreign[8..14].copy_from_slice(&vtep_mac(h1.addr));
    foreign[8 + 26..8 + 30].copy_from_slice(&[10, 244, 250, 5]);
    vtep0.send_to(&foreign, (h1.addr, VXLAN_PORT)).unwrap();
    wait_until("every bad datagram counted", Duration::from_secs(5), || {
        counter(h1, "drop_wrong_vni") == 1
            && counter(h1, "drop_malformed") == 2
            && counter(h1, "drop_unknown_sender") == 1
            && counter(h1, "drop_wrong_port") == 1
            && counter(h1, "drop_not_for_us") == 1
            && counter(h1, "drop_foreign_source") == 1
    });
    assert!(cs[0].0.ping(&cs[1].1.to_string()), "traffic goes on");

    // h2 leaves: its hpk-netd is gone and its lease deleted. h0 forgets it, and sends it
    // nothing more, even a frame for h2's VtepMAC.
    let s2 = cl.hosts[2].subnet();
    let vtep2 = s2.split('/').next().unwrap().to_owned();
    let neighbours = cl.hosts[0].neighbours();
    let mac2 = neighbours
        .lines()
        .find(|l| l.starts_with(&format!("{vtep2} ")))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "lladdr").nth(1))
        .unwrap_or_else(|| panic!("h0 has no neighbour entry for h2's VTEP {vtep2}: {neighbours}"))
        .to_owned();
    cl.hosts[2].netd_mut().proc.stop_with(Signal::SIGKILL);
    let out = cl.etcd.ctl(&[
        "del",
        &format!("{ETCD_PREFIX}/subnets/{}", s2.replace('/', "-")),
    ]);
    assert!(out.status.success());
    let h0 = &cl.hosts[0];
    wait_until(
        "h2's route and neighbour to go",
        Duration::from_secs(10),
        || !h0.routes_to(&s2) && !h0.neighbours().contains(&mac2),
    );
    assert_eq!(h0.netd().status().peers.len(), 1);
    // Where h2 listened, a socket that counts what still arrives.
    drop(servers.remove(2));
    let h2_addr = cl.hosts[2].addr;
    let where_h2_was = cl.hosts[2]
        .ns
        .spawn(move || UdpSocket::bind((h2_addr, VXLAN_PORT)).expect("bind where h2 listened"))
        .join()
        .unwrap();
    let sent = counter(h0, "tx_datagrams");
    assert!(!cs[0].0.ping(&cs[2].1.to_string()));

    // A neighbour entry left pointing at h2's VtepMAC (put back by hand) still routes a
    // frame into h0's VTEP: it no longer knows where that MAC lives, and drops it.
    h0.ns.ip(&[
        "neigh",
        "replace",
        &vtep2,
        "lladdr",
        &mac2,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    h0.ns.ip(&[
        "route",
        "replace",
        &s2,
        "via",
        &vtep2,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let unrouted = counter(h0, "drop_no_peer");
    let c2 = cs[2].1;
    h0.ns
        .spawn(move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            s.send_to(b"for h2", (c2, 9)).unwrap();
        })
        .join()
        .unwrap();
    wait_until(
        "h0's VTEP to take the frame for h2's VtepMAC",
        Duration::from_secs(5),
        || counter(h0, "drop_no_peer") > unrouted || counter(h0, "tx_datagrams") > sent,
    );
    assert_eq!(
        counter(h0, "tx_datagrams"),
        sent,
        "datagrams still sent to h2"
    );
    // Nothing reached h2's address: a marker sent after the frame arrives first.
    send_datagram(&h0.ns, h0.addr, h2_addr, b"marker".to_vec());
    where_h2_was
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = where_h2_was
        .recv_from(&mut buf)
        .expect("the marker reaches h2's address");
    assert_eq!(
        &buf[..n],
        b"marker",
        "{n} bytes from {from} reached h2's address after it left"
    );
}

#[test]
fn a_restarted_netd_fetches_the_socket_again() {
    let (mut cl, _servers) = userspace_cluster(2, &[]);
    let cs = cl.containers(2);
    reach_each_other(&cs);
    let lease_before = cl.etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/"));
    cl.hosts[1].netd_mut().proc.stop_with(Signal::SIGKILL);
    wait_until(
        "flannel.1 to go with hpk-netd",
        Duration::from_secs(5),
        || !cl.hosts[1].ns.has_link("flannel.1"),
    );
    let path = cl.hosts[1].dir.join("underlay.sock");
    start_userspace(&mut cl.hosts[1], &cl.etcd.url, &path, &[]);
    reach_each_other(&cs);
    assert_eq!(
        cl.etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/")),
        lease_before,
        "same subnets and VtepMACs after the restart"
    );
}

#[test]
fn without_a_served_socket_netd_says_what_to_do() {
    let cl = Cluster::new(1);
    let h = &cl.hosts[0];
    let cases: [(&[&str], &str); 2] = [
        (&["--underlay", "host-socket"], "underlay_socket is empty"),
        (
            &["--underlay-socket", "/nonexistent/underlay.sock"],
            "nothing serves the host UDP socket at /nonexistent/underlay.sock",
        ),
    ];
    for (extra, expect) in cases {
        let out = Netd::command(&h.ns, &h.dir, &Host::etcd_args(&cl.etcd.url, extra))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{extra:?}: {err}"
        );
        assert!(!h.ns.has_link("flannel.1"), "{extra:?} left flannel.1");
    }
    // A socket on another port than the network's.
    let addr = h.addr;
    let socket =
        h.ns.spawn(move || UdpSocket::bind((addr, 8999)).unwrap())
            .join()
            .unwrap();
    let path = h.dir.join("wrong-port.sock");
    let _server = Server::spawn(UnixListener::bind(&path).unwrap(), socket).unwrap();
    let out = Netd::command(
        &h.ns,
        &h.dir,
        &Host::etcd_args(&cl.etcd.url, &["--underlay-socket", path.to_str().unwrap()]),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("bound to port 8999, but the network's vxlan port is 8472"),
        "{err}"
    );
}

#[test]
fn a_rootful_host_can_be_its_own_userspace_vtep() {
    let mut cl = Cluster::new(2);
    let url = cl.etcd.url.clone();
    // The port taken by someone else first: a clear error, no device left.
    let addr = cl.hosts[0].addr;
    let squatter = cl.hosts[0]
        .ns
        .spawn(move || UdpSocket::bind((addr, VXLAN_PORT)).unwrap())
        .join()
        .unwrap();
    let h = &cl.hosts[0];
    let out = Netd::command(
        &h.ns,
        &h.dir,
        &Host::etcd_args(&url, &["--underlay", "userspace"]),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot bind the vxlan port 192.0.2.11:8472"),
        "{err}"
    );
    assert!(!h.ns.has_link("flannel.1"));
    drop(squatter);
    for h in &mut cl.hosts {
        h.start_netd(&Host::etcd_args(&url, &["--underlay", "userspace"]));
    }
    let cs = cl.containers(2);
    reach_each_other(&cs);
    for h in &cl.hosts {
        let u = underlay(h);
        assert_eq!(
            u.local.as_deref(),
            Some(&*format!("{}:{VXLAN_PORT}", h.addr))
        );
        assert!(u.counters["rx_datagrams"] > 0, "{u:?}");
    }
}
