//! The built-in flannel-compatible agent: hosts on a LAN, a real etcd, real vxlan, runc
//! containers on each host reaching each other, and a lease written as flanneld would.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::cluster::{flanneld_node, Cluster, Host, Site, ETCD_PREFIX, NETWORK_CONFIG};
use testkit::etcd::Etcd;
use testkit::netd::Netd;
use testkit::runc::Container;
use testkit::*;

const PREFIX: &str = ETCD_PREFIX;

fn ping(c: &Container, addr: Ipv4Addr) -> bool {
    c.ping(&addr.to_string())
}

#[test]
fn containers_on_three_hosts_reach_each_other() {
    let mut cl = Cluster::new(3);
    cl.start_all();
    let subnets: Vec<String> = cl.hosts.iter().map(Host::subnet).collect();
    assert!(
        subnets[0] != subnets[1] && subnets[1] != subnets[2] && subnets[0] != subnets[2],
        "{subnets:?}"
    );
    let cs = cl.containers(3);
    for (i, (c, _)) in cs.iter().enumerate() {
        for (j, (_, addr)) in cs.iter().enumerate() {
            if i != j {
                wait_until(
                    &format!("c{i} to reach c{j} at {addr}"),
                    Duration::from_secs(10),
                    || ping(c, *addr),
                );
            }
        }
    }
    tcp_stream(
        &cs[2].0.netns(),
        &cs[0].0.netns(),
        cs[2].1,
        8 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();

    // The keys are what flanneld writes: one per host, byte for byte in its format.
    let leases = cl.etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 3, "{leases:?}");
    for h in &cl.hosts {
        let key = format!("{PREFIX}/subnets/{}", h.subnet().replace('/', "-"));
        let (_, value) = leases
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no {key} in {leases:?}"));
        let mac = h.ns.link_json("flannel.1").unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            *value,
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
                h.addr
            )
        );
        assert_eq!(mac, mac.to_lowercase());
        // flannel.1 as flanneld makes it: VNI 1, port 8472, learning off, MTU 1500 - 50.
        let dev = h.ns.link_json("flannel.1").unwrap();
        assert_eq!(dev["mtu"], 1450);
        let details =
            String::from_utf8_lossy(&h.ns.ip(&["-d", "link", "show", "flannel.1"]).stdout)
                .into_owned();
        assert!(
            details.contains("vxlan id 1")
                && details.contains("dstport 8472")
                && details.contains("nolearning"),
            "{details}"
        );
        let env = std::fs::read_to_string(h.dir.join("subnet.env")).unwrap();
        assert!(
            env.starts_with("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.")
                && env.contains("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
            "{env}"
        );
        let status = h.netd().status();
        assert_eq!(status.peers.len(), 2, "{:?}", status.peers);
        // Every other bubble's lease expiry is known (the default TTL is 24 h).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for p in &status.peers {
            let left = p.expires.expect("peer lease expiry").saturating_sub(now);
            assert!((86_000..=86_400).contains(&left), "{p:?}");
        }
        assert_eq!(status.lease.unwrap().public_ip, h.addr);
    }
}

#[test]
fn coexists_with_a_flanneld_node() {
    let mut cl = Cluster::new(2);
    cl.hosts[0].start_netd_etcd(&cl.etcd, &[]);
    let (c, _) = cl.hosts[0].container("ours");
    let fixture = flanneld_node(&cl.etcd, &cl.hosts[1].ns, cl.hosts[1].addr);
    wait_until(
        "a route to the flanneld node",
        Duration::from_secs(10),
        || cl.hosts[0].routes_to("10.244.200.0/24"),
    );
    assert!(
        ping(&c, fixture),
        "our container cannot reach the flanneld node's pod bridge"
    );
}

#[test]
fn leaving_hosts_are_forgotten_and_a_restart_keeps_the_subnet() {
    let mut cl = Cluster::new(3);
    cl.hosts[0].start_netd_etcd(&cl.etcd, &[]);
    cl.hosts[1].start_netd_etcd(&cl.etcd, &[]);
    cl.hosts[2].start_netd_etcd(&cl.etcd, &["--etcd-lease-ttl", "4"]);
    let (s1, s2) = (cl.hosts[1].subnet(), cl.hosts[2].subnet());
    let h0 = &cl.hosts[0];
    wait_until("routes to both peers", Duration::from_secs(10), || {
        h0.routes_to(&s1) && h0.routes_to(&s2)
    });

    // h1 leaves: its netd is gone and its lease is deleted.
    cl.hosts[1]
        .netd
        .as_mut()
        .unwrap()
        .proc
        .stop_with(Signal::SIGKILL);
    let out = cl
        .etcd
        .ctl(&["del", &format!("{PREFIX}/subnets/{}", s1.replace('/', "-"))]);
    assert!(out.status.success());
    let h0 = &cl.hosts[0];
    wait_until("h1's route to go", Duration::from_secs(10), || {
        !h0.routes_to(&s1)
    });
    let vtep1 = s1.split('/').next().unwrap();
    assert!(
        !h0.neighbours().contains(vtep1),
        "neighbour left: {}",
        h0.neighbours()
    );

    // h2 dies without a word: its short lease expires, and the others notice.
    cl.hosts[2]
        .netd
        .as_mut()
        .unwrap()
        .proc
        .stop_with(Signal::SIGKILL);
    let h0 = &cl.hosts[0];
    wait_until(
        "h2's lease to expire and its route to go",
        Duration::from_secs(20),
        || !h0.routes_to(&s2),
    );
    let fdb = String::from_utf8_lossy(
        &run(Command::new("bridge").args(["-n", &h0.ns.name, "fdb", "show", "dev", "flannel.1"]))
            .stdout,
    )
    .into_owned();
    assert!(
        !fdb.contains(&cl.hosts[2].addr.to_string()),
        "fdb entry left: {fdb}"
    );

    // A restarted netd keeps its subnet.
    let before = cl.hosts[0].subnet();
    cl.hosts[0]
        .netd
        .as_mut()
        .unwrap()
        .proc
        .stop_with(Signal::SIGTERM);
    let etcd = &cl.etcd;
    cl.hosts[0].start_netd_etcd(etcd, &[]);
    assert_eq!(cl.hosts[0].subnet(), before);
    assert_eq!(cl.etcd.get_prefix(&format!("{PREFIX}/subnets/")).len(), 1);
}

#[test]
fn garbled_values_change_nothing_for_valid_peers() {
    let mut cl = Cluster::new(2);
    cl.start_all();
    let (c0, _) = cl.hosts[0].container("g0");
    let (_c1, a1) = cl.hosts[1].container("g1");
    wait_until("c0 to reach c1", Duration::from_secs(10), || ping(&c0, a1));
    // Garbage under subnets/, at subnets no host holds.
    let taken: Vec<String> = cl.hosts.iter().map(Host::subnet).collect();
    let free: Vec<String> = (200..255)
        .map(|n| format!("10.244.{n}.0/24"))
        .filter(|s| !taken.contains(s))
        .take(3)
        .collect();
    let key = |s: &str| format!("{PREFIX}/subnets/{}", s.replace('/', "-"));
    cl.etcd.put(&key(&free[0]), "{not json");
    cl.etcd.put(&key(&free[1]), r#"{"PublicIP":"192.0.2.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"nope"}}"#);
    cl.etcd.put(&format!("{PREFIX}/subnets/garbage"), "x");
    // A lease of another backend, and a valid vxlan lease over every subnet (ours too).
    cl.etcd.put(
        &key(&free[2]),
        r#"{"PublicIP":"192.0.2.98","BackendType":"udp","BackendData":null}"#,
    );
    cl.etcd.put(
        &key("10.244.0.0/16"),
        r#"{"PublicIP":"192.0.2.97","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:68:c0:00:02:61"}}"#,
    );
    let s1 = cl.hosts[1].subnet();
    let h0 = &cl.hosts[0];
    wait_until("the garbage to be seen", Duration::from_secs(10), || {
        let log = h0.netd().log();
        log.contains("ignoring a garbled lease")
            && log.contains("ignoring a lease of another backend")
            && log.contains("ignoring a lease that is none of this network's subnets")
    });
    assert!(h0.routes_to(&s1), "a valid peer's route was dropped");
    for s in [&free[0], &free[1], &free[2], "10.244.0.0/16"] {
        assert!(!h0.routes_to(s), "routed {s}");
    }
    assert!(ping(&c0, a1), "traffic to a valid peer stopped");
    assert_eq!(h0.netd().status().peers.len(), 1);
}

#[test]
fn etcd_outage_keeps_traffic_and_later_joins_are_learned() {
    let mut cl = Cluster::new(3);
    cl.hosts[0].start_netd_etcd(&cl.etcd, &[]);
    cl.hosts[1].start_netd_etcd(&cl.etcd, &[]);
    let (c0, _) = cl.hosts[0].container("o0");
    let (c1, a1) = cl.hosts[1].container("o1");
    wait_until("c0 to reach c1", Duration::from_secs(10), || ping(&c0, a1));

    cl.etcd.stop();
    assert!(ping(&c0, a1), "cross-host traffic stopped with etcd");
    tcp_stream(
        &c1.netns(),
        &c0.netns(),
        a1,
        4 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();
    let h0 = &cl.hosts[0];
    wait_until("netd to notice the outage", Duration::from_secs(20), || {
        h0.netd().log().contains("etcd unreachable")
    });
    assert!(ping(&c0, a1), "traffic stopped during the outage");

    cl.etcd.restart();
    let etcd = &cl.etcd;
    cl.hosts[2].start_netd_etcd(etcd, &[]);
    let (_c2, a2) = cl.hosts[2].container("o2");
    let s2 = cl.hosts[2].subnet();
    let h0 = &cl.hosts[0];
    wait_until("h0 to learn the new host", Duration::from_secs(20), || {
        h0.routes_to(&s2)
    });
    wait_until(
        "c0 to reach the new host's container",
        Duration::from_secs(10),
        || ping(&c0, a2),
    );
}

#[test]
fn netd_waits_for_etcd_and_for_the_network_config() {
    let site = Site::new();
    let h = &site.host;
    let url = format!("http://{}:2379", h.addr);
    let mut netd = h.spawn_netd_etcd(&url);
    wait_until(
        "netd to say etcd is unreachable",
        Duration::from_secs(10),
        || h.log_says("etcd is not reachable") && h.log_says(&url),
    );
    let etcd = Etcd::start(&h.ns, h.addr, &site.scratch.0);
    wait_until(
        "netd to wait for the config",
        Duration::from_secs(20),
        || h.log_says("waiting for the network config"),
    );
    assert!(!h.ns.has_link("flannel.1"));
    etcd.put(&format!("{PREFIX}/config"), NETWORK_CONFIG);
    wait_until("the overlay", Duration::from_secs(20), || {
        h.log_says("overlay ready") && h.ns.link_up("hpk-bridge")
    });
    let (code, _) = netd.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn invalid_network_config_is_explained() {
    let site = Site::new();
    let h = &site.host;
    let etcd = Etcd::start(&h.ns, h.addr, &site.scratch.0);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16"}"#,
    );
    let mut netd = h.spawn_netd_etcd(&etcd.url);
    let (code, _) = netd.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1));
    assert!(
        h.log_says("etcd key /coreos.com/network/config is invalid"),
        "{}",
        std::fs::read_to_string(h.dir.join("netd.log")).unwrap()
    );
    assert!(h.log_says("flanneld's default when Backend is absent"));
    assert!(
        !h.ns.has_link("flannel.1") && !h.ns.has_link("hpk-bridge"),
        "an invalid config left devices"
    );
    assert!(
        etcd.get_prefix(&format!("{PREFIX}/subnets/")).is_empty(),
        "an invalid config took a lease"
    );
}

/// An uplink much larger than the real link (a bubble's slirp4netns tap at 65520): the
/// overlay MTU follows `--underlay-mtu`, not the uplink.
#[test]
fn overlay_mtu_follows_the_underlay_not_the_uplink() {
    let mut cl = Cluster::new(1);
    let h = &mut cl.hosts[0];
    h.ns.ip(&["link", "set", "eth0", "mtu", "9000"]);
    h.start_netd_etcd(&cl.etcd, &["--underlay-mtu", "1500"]);
    assert_eq!(h.ns.link_json("flannel.1").unwrap()["mtu"], 1450);
    assert_eq!(h.netd().status().mtu, 1450);
    let env = std::fs::read_to_string(h.dir.join("subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_MTU=1450\n"), "{env}");
    assert_eq!(h.ns.link_json("hpk-bridge").unwrap()["mtu"], 1450);

    // Out of range: a clear error before anything is touched.
    let out = Netd::command(
        &h.ns,
        &h.dir,
        &["--subnet-source", "etcd", "--underlay-mtu", "100"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("underlay_mtu 100 is out of range"),
        "{err}"
    );
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    let mut site = Site::new();
    let h = &mut site.host;
    let tls = testkit::etcd::Tls::generate(&site.scratch.0, h.addr);
    let etcd = Etcd::start_tls(&h.ns, h.addr, &site.scratch.0, tls.clone());
    etcd.put(&format!("{PREFIX}/config"), NETWORK_CONFIG);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (ca, cert, key) = (path(&tls.ca), path(&tls.client_cert), path(&tls.client_key));
    h.start_netd_etcd(
        &etcd,
        &[
            "--etcd-ca-file",
            &ca,
            "--etcd-cert-file",
            &cert,
            "--etcd-key-file",
            &key,
        ],
    );
    let lease = h.netd().status().lease.expect("a lease over TLS");
    assert_eq!(lease.public_ip, h.addr);
    assert_eq!(etcd.get_prefix(&format!("{PREFIX}/subnets/")).len(), 1);
}

#[test]
fn renewal_never_overwrites_a_subnet_another_node_took() {
    let mut cl = Cluster::new(1);
    cl.hosts[0].start_netd_etcd(&cl.etcd, &["--etcd-lease-ttl", "3"]);
    let subnet = cl.hosts[0].subnet();
    let key = format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"));
    // Another node's lease, as if ours had expired during an outage and it took the subnet.
    let theirs = r#"{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#;
    cl.etcd.put(&key, theirs);
    let h = &cl.hosts[0];
    wait_until(
        "netd to notice at its next renewal",
        Duration::from_secs(15),
        || h.netd().log().contains("leased by another node"),
    );
    let value = cl.etcd.get_prefix(&key).first().map(|(_, v)| v.clone());
    assert_eq!(
        value.as_deref(),
        Some(theirs),
        "our renewal overwrote another node's lease"
    );
}

/// A /16 whose SubnetMin and SubnetMax leave room for one subnet: the first node leases
/// it; the next finds none, says so and exits, having leased and written nothing.
#[test]
fn a_network_out_of_subnets_refuses_the_next_node() {
    let mut cl = Cluster::new(2);
    cl.etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.7.0","SubnetMax":"10.244.7.0","Backend":{"Type":"vxlan"}}"#,
    );
    cl.hosts[0].start_netd_etcd(&cl.etcd, &[]);
    assert_eq!(cl.hosts[0].subnet(), "10.244.7.0/24");
    let mut late = cl.hosts[1].spawn_netd_etcd(&cl.etcd.url);
    let (code, _) = late.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(cl.hosts[1].dir.join("netd.log")).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("network 10.244.0.0/16 has no free subnet (1 leased)"),
        "{log}"
    );
    let leases = cl.etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    assert_eq!(
        leases.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [format!("{PREFIX}/subnets/10.244.7.0-24")],
    );
    assert!(!cl.hosts[1].dir.join("subnet.env").exists());
    assert!(!cl.hosts[1].dir.join("netd.sock").exists());
    // The first node is unaffected.
    assert_eq!(cl.hosts[0].subnet(), "10.244.7.0/24");
}
