//! Containers started by real runc with our hooks, in a bubble run by hpk-netd: addresses,
//! neighbours, the outside world through NAT, supervision and restarts.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::cluster::Site;
use testkit::netd::subnet_env;
use testkit::runc::{bundle, BundleSpec};
use testkit::world::echo_from;
use testkit::*;

/// Stops `c` as a runtime does and checks that its poststop hook detached its endpoint:
/// hpk-netd would detach a dead container's endpoint by itself too, 5 s later, and say so.
fn stop_by_poststop(netd: &testkit::netd::Netd, c: &testkit::runc::Container) {
    c.stop();
    assert_eq!(
        netd.wait_detached(&c.id),
        "poststop",
        "{} was not detached by its poststop hook",
        c.id
    );
}

#[test]
fn veth_endpoints_get_addresses_reach_each_other_and_the_outside() {
    reach_each_other_and_the_outside(&[], "veth");
}

#[test]
fn tap_endpoints_get_addresses_reach_each_other_and_the_outside() {
    reach_each_other_and_the_outside(&["--endpoint", "tap"], "tap");
}

#[test]
fn tap_endpoints_with_a_forwarder_each_reach_each_other_and_the_outside() {
    reach_each_other_and_the_outside(
        &[
            "--endpoint",
            "tap",
            "--tap-hub",
            "false",
            "--busy-poll-us",
            "0",
        ],
        "tap",
    );
}

/// With the hub's shortcut off every frame crosses the bridge (captures, filters there).
#[test]
fn tap_endpoints_on_a_hub_without_its_shortcut_reach_each_other_over_the_bridge() {
    reach_each_other_and_the_outside(
        &[
            "--endpoint",
            "tap",
            "--hub-shortcut",
            "false",
            "--busy-poll-us",
            "2000",
        ],
        "tap",
    );
}

#[test]
fn socket_endpoints_get_addresses_reach_each_other_and_the_outside() {
    reach_each_other_and_the_outside(&["--endpoint", "socket"], "socket");
}

/// A hub that runs but does not answer fails a tap attach with a message naming it, and
/// no second hub is started beside it to serve the same taps.
#[test]
fn a_hub_that_does_not_answer_fails_the_attach_and_gets_no_twin() {
    let s = Site::flannel_with("10.244.3.1/24", &["--endpoint", "tap"]);
    let c1 = s.host.runc.run("mute1", &s.host.bundle).expect("c1 starts");
    let hub = s.host.forwarders()[0];
    let hub_pid = nix::unistd::Pid::from_raw(hub);
    nix::sys::signal::kill(hub_pid, Signal::SIGSTOP).unwrap();
    let attached = s.host.runc.run("mute2", &s.host.bundle);
    nix::sys::signal::kill(hub_pid, Signal::SIGCONT).unwrap();
    let Err(err) = attached else {
        panic!("a container attached through a stopped hub");
    };
    assert!(
        err.contains(&format!("tap forwarder (pid {hub}) did not answer")),
        "{err}"
    );
    // Hubs in this bubble: still the one, serving the first container.
    let bubble_netns = std::fs::read_link(format!("/proc/{hub}/ns/net")).unwrap();
    let hubs: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains("--mode\0hub")
                && std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .ok()
                    .as_ref()
                    == Some(&bubble_netns)
        })
        .collect();
    assert_eq!(hubs, [hub]);
    assert_eq!(s.host.forwarders(), [hub]);
    assert!(
        c1.ping("10.244.3.1"),
        "the first container lost its network"
    );
}

#[test]
fn a_killed_socket_client_is_restarted_with_its_server() {
    let mut s = Site::flannel_with("10.244.3.1/24", &["--endpoint", "socket"]);
    let c1 = s.host.runc.run("s1", &s.host.bundle).unwrap();
    let c2 = s.host.runc.run("s2", &s.host.bundle).unwrap();
    let a2 = s.host.address_of("s2");
    assert!(c1.ping(&a2.to_string()));
    let sock1 = s.host.dir.join("state/endpoints/s1.sock");
    let client = daemons_on(&sock1, "--mode client");
    assert_eq!(client.len(), 1, "s1's client runs");
    let server_before = s.host.forwarders();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(client[0]), Signal::SIGKILL);
    wait_until("the pair to be rebuilt", Duration::from_secs(10), || {
        let now = s.host.forwarders();
        now.len() == 2 && now != server_before
    });
    wait_until(
        "traffic through the rebuilt pair",
        Duration::from_secs(10),
        || c1.ping(&a2.to_string()),
    );

    // Both ends follow their container, even with hpk-netd away.
    let pid2 = s
        .host
        .netd()
        .status()
        .endpoints
        .iter()
        .find(|e| e.id == "s2")
        .unwrap()
        .pid;
    s.host.netd_mut().proc.stop_with(Signal::SIGKILL);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid2), Signal::SIGKILL);
    let sock2 = s.host.dir.join("state/endpoints/s2.sock");
    wait_until(
        "s2's server and client to exit with it",
        Duration::from_secs(10),
        || daemons_on(&sock2, "").is_empty(),
    );
    s.host.start_netd(&["--endpoint", "socket"]);
    drop(c2);
    let fw = s.host.forwarders();
    stop_by_poststop(s.host.netd(), &c1);
    s.host.netd().assert_empty(&s.host.ns, &fw);
    assert!(!sock1.exists() && !sock2.exists(), "a socket file is left");
}

/// hpk-net-daemons serving or using `sock` whose command line also has `with`.
fn daemons_on(sock: &std::path::Path, with: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("hpk-net-daemon")
                && cmd.contains(with)
                && cmd.contains(&*sock.to_string_lossy())
        })
        .collect()
}

/// Two containers on hpk-netd started with `flags`, whose endpoints are of `kind`.
fn reach_each_other_and_the_outside(flags: &[&str], kind: &str) {
    let s = Site::flannel_with("10.244.3.1/24", flags);
    let off = |flag: &str| flags.windows(2).any(|w| w == [flag, "false"]);
    let hub = kind == "tap" && !off("--tap-hub");
    let shortcut = hub && !off("--hub-shortcut");
    // Ids of their own: runc's cgroups are named after the id, and these tests run at once.
    let tag = match (kind, hub, shortcut) {
        ("tap", false, _) => "tapown",
        ("tap", true, false) => "tapbr",
        _ => kind,
    };
    let (id1, id2) = (format!("{tag}1"), format!("{tag}2"));
    let c1 = s.host.runc.run(&id1, &s.host.bundle).expect("c1 starts");
    let c2 = s.host.runc.run(&id2, &s.host.bundle).expect("c2 starts");
    assert_eq!(
        s.host.kinds(),
        [(id1.clone(), kind.to_owned()), (id2.clone(), kind.into())]
    );
    // The container's interface is tap0 whatever its kind (a veth shows its peer).
    let link =
        String::from_utf8_lossy(&c1.exec(&["ip", "link", "show", "tap0"]).stdout).into_owned();
    assert_eq!(link.contains("tap0@if"), kind == "veth", "{link}");
    // Tap endpoints share the bubble's hub; otherwise a forwarder (or server) each.
    let mut forwarders = s.host.forwarders();
    assert_eq!(forwarders.len(), if kind == "veth" { 0 } else { 2 });
    forwarders.dedup();
    assert_eq!(
        forwarders.len(),
        if hub { 1 } else { s.host.forwarders().len() }
    );
    let shared = s
        .host
        .netd()
        .status()
        .endpoints
        .iter()
        .all(|e| e.shared_forwarder);
    assert_eq!(shared, hub);
    // Tap forwarders poll after traffic as long as hpk-netd was told (100 µs by default).
    if kind == "tap" {
        let told = flags
            .windows(2)
            .find(|w| w[0] == "--busy-poll-us")
            .map_or("100", |w| w[1]);
        for pid in s.host.forwarders() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let polls = args.windows(2).find(|w| w[0] == b"--busy-poll-us");
            assert_eq!(
                polls.map(|w| w[1]),
                Some(told.as_bytes()),
                "forwarder {pid}"
            );
        }
    }
    let (a1, a2) = (s.host.address_of(&id1), s.host.address_of(&id2));
    assert_ne!(a1, a2);
    let subnet: ipnet::Ipv4Net = "10.244.3.0/24".parse().unwrap();
    assert!(subnet.contains(&a1) && subnet.contains(&a2));

    // Inside the container: tap0 with the address, MTU, and a default route.
    let addr =
        String::from_utf8_lossy(&c1.exec(&["ip", "addr", "show", "tap0"]).stdout).into_owned();
    assert!(
        addr.contains(&format!("{a1}/24")) && addr.contains("mtu 1450"),
        "{addr}"
    );
    let route = String::from_utf8_lossy(&c1.exec(&["ip", "route"]).stdout).into_owned();
    assert!(route.contains("default via 10.244.3.1"), "{route}");

    assert!(c1.ping(&a2.to_string()), "c1 cannot reach c2");
    assert!(c2.ping(&a1.to_string()), "c2 cannot reach c1");
    tcp_stream(
        &c2.netns(),
        &c1.netns(),
        a2,
        4 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();
    // The hub hands the stream from one of its containers to the other past the bridge
    // (unless told not to); status counts it all the same.
    let status = s.host.netd().status();
    let counted = |key: &str| -> u64 { status.endpoints.iter().map(|e| e.counters[key]).sum() };
    let bridged: u64 = status
        .endpoints
        .iter()
        .map(|e| link_bytes(&s.host.ns, &e.bubble_tap))
        .sum();
    assert!(counted("from_container_bytes") >= 4 << 20, "{status:?}");
    assert!(counted("to_container_bytes") >= 4 << 20, "{status:?}");
    if shortcut {
        assert!(bridged < 1 << 20, "{bridged} bytes crossed the bridge");
    } else {
        assert!(
            bridged >= 8 << 20,
            "only {bridged} bytes crossed the bridge"
        );
    }

    // The outside world, through the bubble's masquerade: it sees the bubble's address.
    assert_eq!(echo_from(&c1.netns(), b"hello outside"), b"hello outside");
    let peers = s.world.echo_peers.lock().unwrap().clone();
    assert_eq!(peers.last().unwrap().ip(), Ipv4Addr::new(192, 0, 2, 11));

    let fw = s.host.forwarders();
    stop_by_poststop(s.host.netd(), &c1);
    if hub {
        // The hub serves the other container still, then exits with the last.
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(fw[0]), None).is_ok();
        assert!(alive, "the hub left with the first container");
    }
    stop_by_poststop(s.host.netd(), &c2);
    s.host.netd().assert_empty(&s.host.ns, &fw);
}

#[test]
fn fifty_containers_at_once() {
    let s = Site::flannel("10.244.3.1/24");
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let (runc, bundle) = (s.host.runc.clone(), s.host.bundle.clone());
            std::thread::spawn(move || runc.run(&format!("many-{i:02}"), &bundle))
        })
        .collect();
    let containers: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("container starts"))
        .collect();
    let status = s.host.netd().status();
    assert_eq!(status.endpoints.len(), 50);
    let unique: HashSet<_> = status.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(unique.len(), 50, "addresses handed out twice");
    for e in &status.endpoints {
        assert!(
            s.host.ns.ping(&e.address.to_string()),
            "{} ({}) unreachable",
            e.id,
            e.address
        );
    }
    let fw = s.host.forwarders();
    let stoppers: Vec<_> = containers
        .into_iter()
        .map(|c| std::thread::spawn(move || c.stop()))
        .collect();
    for t in stoppers {
        t.join().unwrap();
    }
    s.host.netd().assert_empty(&s.host.ns, &fw);
}

#[test]
fn killed_runtime_endpoint_is_reclaimed() {
    let s = Site::flannel("10.244.3.1/24");
    // A foreground `runc run`, killed with its container: no poststop ever runs.
    let mut runtime = Proc::spawn(
        "runc run",
        s.host
            .runc
            .cmd()
            .args(["run", "--bundle"])
            .arg(&s.host.bundle)
            .arg("doomed"),
    );
    wait_until("doomed to be attached", Duration::from_secs(20), || {
        s.host
            .netd()
            .status()
            .endpoints
            .iter()
            .any(|e| e.id == "doomed")
    });
    let status = s.host.netd().status();
    let victim = status.endpoints.iter().find(|e| e.id == "doomed").unwrap();
    let fw = vec![victim.forwarder_pid];
    runtime.stop_with(Signal::SIGKILL);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.pid), Signal::SIGKILL);
    // No poststop comes: hpk-netd detaches it itself once it has waited for one.
    assert_eq!(
        s.host.netd().wait_detached("doomed"),
        "container exited, no poststop within 5s"
    );
    s.host.netd().assert_empty(&s.host.ns, &fw);
    let _ = s
        .host
        .runc
        .cmd()
        .args(["delete", "--force", "doomed"])
        .output();
}

#[test]
fn netd_restart_keeps_traffic_flowing() {
    let mut s = Site::flannel_with("10.244.3.1/24", &["--endpoint", "tap"]);
    let c1 = s.host.runc.run("r1", &s.host.bundle).unwrap();
    let c2 = s.host.runc.run("r2", &s.host.bundle).unwrap();
    let a2 = s.host.address_of("r2");
    let before = s.host.netd().status().endpoints;

    let done = Arc::new(AtomicBool::new(false));
    let transfer = tcp_stream(&c2.netns(), &c1.netns(), a2, 16 << 20, done.clone());
    let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    s.host.start_netd(&["--endpoint", "tap"]);
    done.store(true, Ordering::SeqCst);
    let moved = transfer.check();
    assert!(moved >= 16 << 20);

    let after = s.host.netd().status().endpoints;
    let key =
        |e: &hpk_hook::proto::EndpointStatus| (e.id.clone(), e.address, e.pid, e.forwarder_pid);
    assert_eq!(
        before.iter().map(key).collect::<Vec<_>>(),
        after.iter().map(key).collect::<Vec<_>>(),
        "endpoints were not adopted unchanged"
    );
    // The restarted hpk-netd took the running hub over: a new container joins it.
    let hub = after[0].forwarder_pid;
    assert!(after
        .iter()
        .all(|e| e.forwarder_pid == hub && e.shared_forwarder));
    let c3 = s.host.runc.run("r3", &s.host.bundle).unwrap();
    assert_eq!(
        s.host.forwarders(),
        [hub, hub, hub],
        "r3 did not join the hub"
    );
    assert!(
        c3.ping(&a2.to_string()),
        "r3 cannot reach r2 through the hub"
    );
    stop_by_poststop(s.host.netd(), &c3);
    // A hub killed behind netd's back is rebuilt, with every endpoint's address.
    let victim = hub;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL);
    wait_until("the hub to be restarted", Duration::from_secs(10), || {
        s.host
            .netd()
            .status()
            .endpoints
            .iter()
            .all(|e| e.forwarder_pid != victim)
    });
    assert!(
        c1.ping(&a2.to_string()),
        "no traffic after the forwarder restart"
    );
    let fw = s.host.forwarders();
    stop_by_poststop(s.host.netd(), &c1);
    stop_by_poststop(s.host.netd(), &c2);
    s.host.netd().assert_empty(&s.host.ns, &fw);
}

#[test]
fn netd_restart_adopts_veth_endpoints_and_rebuilds_a_missing_one() {
    let mut s = Site::flannel("10.244.3.1/24");
    let c1 = s.host.runc.run("v1", &s.host.bundle).unwrap();
    let c2 = s.host.runc.run("v2", &s.host.bundle).unwrap();
    let a2 = s.host.address_of("v2");
    let before = s.host.netd().status().endpoints;
    assert!(before.iter().all(|e| e.kind.to_string() == "veth"));

    // A veth needs nobody while hpk-netd is away: traffic flows through the restart.
    let done = Arc::new(AtomicBool::new(false));
    let transfer = tcp_stream(&c2.netns(), &c1.netns(), a2, 16 << 20, done.clone());
    let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(c1.ping(&a2.to_string()), "veth traffic needs no hpk-netd");
    s.host.start_netd(&[]);
    done.store(true, Ordering::SeqCst);
    assert!(transfer.check() >= 16 << 20);

    // While hpk-netd is away again, one pair is removed behind its back.
    let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    let v2 = before.iter().find(|e| e.id == "v2").unwrap();
    s.host.ns.ip(&["link", "del", &v2.bubble_tap]);
    s.host.start_netd(&[]);
    assert!(
        s.host
            .netd()
            .log()
            .contains("data path gone while hpk-netd was down; rebuilding it"),
        "{}",
        s.host.netd().log()
    );
    let after = s.host.netd().status().endpoints;
    let key = |e: &hpk_hook::proto::EndpointStatus| (e.id.clone(), e.address, e.pid, e.kind);
    assert_eq!(
        before.iter().map(key).collect::<Vec<_>>(),
        after.iter().map(key).collect::<Vec<_>>(),
        "endpoints were not adopted unchanged"
    );
    // The rebuilt pair has the same MAC (from the address): c1's neighbour entry holds.
    assert!(c1.ping(&a2.to_string()), "no traffic to the rebuilt veth");
    stop_by_poststop(s.host.netd(), &c1);
    stop_by_poststop(s.host.netd(), &c2);
    s.host.netd().assert_empty(&s.host.ns, &[]);
}

#[test]
fn annotations_opt_out_and_request_an_address() {
    let s = Site::flannel("10.244.3.1/24");
    let spec = |annotations| BundleSpec {
        args: &["sleep", "600"],
        socket: &s.host.netd().socket,
        annotations,
        rootless: false,
        no_hooks: false,
    };
    let opted_out = bundle(
        &s.scratch.0,
        "none",
        &spec(&[("io.hpktainer.network", "none")]),
    );
    let c = s
        .host
        .runc
        .run("loner", &opted_out)
        .expect("opted-out container starts");
    assert!(s.host.netd().status().endpoints.is_empty());
    assert!(!c.exec(&["ip", "link", "show", "tap0"]).status.success());
    c.stop();

    let fixed = bundle(
        &s.scratch.0,
        "fixed",
        &spec(&[("io.hpktainer.ip", "10.244.3.200")]),
    );
    let c = s
        .host
        .runc
        .run("fixed", &fixed)
        .expect("container with a static address starts");
    assert_eq!(s.host.address_of("fixed"), Ipv4Addr::new(10, 244, 3, 200));
    let err = s
        .host
        .runc
        .run("clash", &fixed)
        .expect_err("a second claim of the same address");
    assert!(err.contains("10.244.3.200 is in use by fixed"), "{err}");

    // A container may ask for its endpoint kind; others get hpk-netd's (auto: veth).
    let tapped = bundle(
        &s.scratch.0,
        "tapped",
        &spec(&[("io.hpktainer.endpoint", "tap")]),
    );
    let t = s
        .host
        .runc
        .run("tapped", &tapped)
        .expect("tap container starts");
    assert_eq!(
        s.host.kinds(),
        [
            ("fixed".to_owned(), "veth".to_owned()),
            ("tapped".into(), "tap".into())
        ]
    );
    assert!(t.ping("10.244.3.200"), "tap to veth");
    let bad = bundle(
        &s.scratch.0,
        "bad-kind",
        &spec(&[("io.hpktainer.endpoint", "vxlan")]),
    );
    let err = s
        .host
        .runc
        .run("bad-kind", &bad)
        .expect_err("an unknown kind");
    assert!(
        err.contains("io.hpktainer.endpoint=")
            && err.contains("is not understood (auto, veth, tap or socket)"),
        "{err}"
    );
    let fw = s.host.forwarders();
    assert_eq!(fw.len(), 1);
    stop_by_poststop(s.host.netd(), &c);
    stop_by_poststop(s.host.netd(), &t);
    s.host.netd().assert_empty(&s.host.ns, &fw);
}

#[test]
fn flushed_firewall_rules_are_restored() {
    let s = Site::flannel("10.244.3.1/24");
    let check = |table: &str, args: &[&str]| {
        s.host
            .ns
            .cmd("iptables")
            .args(["-w", "-t", table, "-C"])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let masq = [
        "HPK-POSTRTG",
        "-s",
        "10.244.3.0/24",
        "!",
        "-d",
        "224.0.0.0/4",
        "-j",
        "MASQUERADE",
        "--random-fully",
    ];
    assert!(check("nat", &masq) && check("filter", &["FORWARD", "-j", "HPK-FWD"]));
    run(s
        .host
        .ns
        .cmd("iptables")
        .args(["-w", "-t", "nat", "-F", "HPK-POSTRTG"]));
    run(s
        .host
        .ns
        .cmd("iptables")
        .args(["-w", "-t", "filter", "-D", "FORWARD", "-j", "HPK-FWD"]));
    assert!(!check("nat", &masq));
    wait_until("the rules to come back", Duration::from_secs(15), || {
        check("nat", &masq) && check("filter", &["FORWARD", "-j", "HPK-FWD"])
    });
    assert!(s
        .host
        .netd()
        .log()
        .contains("firewall rules were missing; restored them"));
}

#[test]
fn endpoints_of_an_old_subnet_are_detached_at_restart() {
    let mut s = Site::flannel("10.244.3.1/24");
    let c = s.host.runc.run("old", &s.host.bundle).unwrap();
    let before = s.host.netd().status().endpoints;
    let address = before[0].address;
    let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    // flanneld came back with another subnet for this node.
    std::fs::write(
        s.host.dir.join("subnet.env"),
        subnet_env("10.244.9.1/24", 1450, false),
    )
    .unwrap();
    s.host.start_netd(&[]);
    assert!(
        s.host.netd().log().contains("the bubble's subnet changed"),
        "{}",
        s.host.netd().log()
    );
    let old_file = s
        .host
        .dir
        .join(format!("state/ipam/10.244.3.0-24/{address}"));
    assert!(!old_file.exists(), "the old subnet's address file is left");
    s.host
        .netd()
        .assert_empty(&s.host.ns, &[before[0].forwarder_pid]);
    drop(c);
}

/// Bytes received and sent by link `name` of namespace `ns`.
fn link_bytes(ns: &testkit::netns::Netns, name: &str) -> u64 {
    let out = run(ns.cmd("ip").args(["-j", "-s", "link", "show", "dev", name]));
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = &links[0]["stats64"];
    stats["rx"]["bytes"].as_u64().unwrap() + stats["tx"]["bytes"].as_u64().unwrap()
}

/// The MAC of c's tap0.
fn mac_of(c: &testkit::runc::Container) -> String {
    let link =
        String::from_utf8_lossy(&c.exec(&["ip", "link", "show", "tap0"]).stdout).into_owned();
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Echo requests c has received, from its /proc/net/snmp.
fn echo_requests_in(c: &testkit::runc::Container) -> u64 {
    let snmp = String::from_utf8_lossy(&c.exec(&["cat", "/proc/net/snmp"]).stdout).into_owned();
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Packets c's tap0 has received, from its /proc/net/dev.
fn rx_packets(c: &testkit::runc::Container) -> u64 {
    let dev = String::from_utf8_lossy(&c.exec(&["cat", "/proc/net/dev"]).stdout).into_owned();
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with("tap0:"))
        .expect("tap0 in /proc/net/dev");
    line.split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// What a takeover achieved.
struct Takeover {
    /// The bridge sent the neighbour's MAC to the thief's port.
    diverted: bool,
    /// Of 3 pings from a third container, those that reached the neighbour.
    reached: u64,
    /// Of 3 pings from the thief as the neighbour, those that reached the third container.
    impersonated: u64,
}

/// A container takes its neighbour's MAC and address, announces them, and pings a third
/// container as the neighbour; `tag` keeps the containers' ids apart from other tests'.
fn takeover(tag: &str, flags: &[&str]) -> Takeover {
    let s = Site::flannel_with("10.244.3.1/24", flags);
    let (id1, id2, thief_id) = (format!("{tag}1"), format!("{tag}2"), format!("{tag}thief"));
    let c1 = s.host.runc.run(&id1, &s.host.bundle).unwrap();
    let c2 = s.host.runc.run(&id2, &s.host.bundle).unwrap();
    let thief = s.host.runc.run(&thief_id, &s.host.bundle).unwrap();
    let (a1, a2) = (
        s.host.address_of(&id1).to_string(),
        s.host.address_of(&id2).to_string(),
    );
    let thief_port = s
        .host
        .netd()
        .status()
        .endpoints
        .iter()
        .find(|e| e.id == thief_id)
        .unwrap()
        .bubble_tap
        .clone();
    let mac2 = mac_of(&c2);
    assert!(c1.ping(&a2));
    // (As the container's root with CAP_NET_ADMIN would: from inside its namespace.)
    let script = format!(
        "ip link set tap0 down && ip link set tap0 address {mac2} && ip link set tap0 up && \
         ip addr add {a2}/24 dev tap0 && arping -U -c 1 -I tap0 {a2}; true"
    );
    run(std::process::Command::new("nsenter")
        .arg(format!("--net={}", thief.netns().display()))
        .args(["busybox", "sh", "-c", &script]));
    let fdb = String::from_utf8_lossy(
        &run(s
            .host
            .ns
            .cmd("bridge")
            .args(["fdb", "show", "br", "hpk-bridge"]))
        .stdout,
    )
    .into_owned();
    let diverted = fdb
        .lines()
        .any(|l| l.starts_with(&mac2) && l.contains(&format!("dev {thief_port} ")));
    let before = rx_packets(&c2);
    for _ in 0..3 {
        c1.exec(&["ping", "-c", "1", "-W", "1", &a2]);
    }
    let reached = rx_packets(&c2) - before;
    let before = echo_requests_in(&c1);
    // Its own neighbour entry for the third container: no ARP needed, which the rules
    // would stop before the pings. (Unanswered when guarded: the exit status says nothing.)
    let in_thief = || {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", thief.netns().display()));
        cmd
    };
    let mac1 = mac_of(&c1);
    run(in_thief().args([
        "ip", "neigh", "replace", &a1, "lladdr", &mac1, "dev", "tap0",
    ]));
    let _ = in_thief()
        .args(["busybox", "ping", "-c", "3", "-W", "1", "-I", &a2, &a1])
        .output();
    let impersonated = echo_requests_in(&c1) - before;
    let forwarders = s.host.forwarders();
    for c in [&c1, &c2, &thief] {
        stop_by_poststop(s.host.netd(), c);
    }
    s.host.netd().assert_empty(&s.host.ns, &forwarders);
    Takeover {
        diverted,
        reached,
        impersonated,
    }
}

#[test]
fn a_container_cannot_take_over_its_neighbours_address() {
    cannot_take_over("sv", &["--endpoint", "veth"]);
}

/// The same on the hub, which hands frames between its containers past the bridge: only
/// a container's own frames take that way.
#[test]
fn a_container_on_the_hub_cannot_take_over_its_neighbours_address() {
    cannot_take_over("sh", &["--endpoint", "tap"]);
}

fn cannot_take_over(tag: &str, flags: &[&str]) {
    // Without anti-spoofing the bridge learns the neighbour's MAC on the thief's port, and
    // the thief's pings as the neighbour arrive...
    let unguarded = takeover(tag, &[flags, &["--antispoof", "false"]].concat());
    assert!(
        unguarded.diverted && unguarded.impersonated >= 3,
        "the attack does not work unguarded: the test would see nothing"
    );
    // ...with it (the default) the thief's frames never enter the bridge, and the
    // neighbour keeps its traffic.
    let guarded = takeover(tag, flags);
    assert!(
        !guarded.diverted,
        "the bridge learned the neighbour's MAC on the thief's port"
    );
    assert!(
        guarded.reached >= 3,
        "the neighbour lost its traffic: {} of 3 pings reached it",
        guarded.reached
    );
    assert_eq!(
        guarded.impersonated, 0,
        "the thief's pings as the neighbour arrived"
    );
}

/// Records and address claims damaged while hpk-netd was away (a crash mid-write, a full
/// disk, a hand edit) are reported and never acted on: no link named by a bad record is
/// deleted, an address whose container may still run is not handed out again, and what a
/// gone container left is reclaimed.
#[test]
fn damaged_records_are_reported_and_never_trusted() {
    let mut s = Site::flannel("10.244.3.1/24");
    let c1 = s.host.runc.run("k1", &s.host.bundle).unwrap();
    let c2 = s.host.runc.run("k2", &s.host.bundle).unwrap();
    let c3 = s.host.runc.run("k3", &s.host.bundle).unwrap();
    let (a1, a2, a3) = (
        s.host.address_of("k1"),
        s.host.address_of("k2"),
        s.host.address_of("k3"),
    );
    let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGKILL);
    assert_eq!(code, None);
    let state = s.host.dir.join("state");
    let records = state.join("endpoints");
    // k1's record cut short; k2's names the bridge as its own link.
    let k1 = std::fs::read(records.join("k1.json")).unwrap();
    std::fs::write(records.join("k1.json"), &k1[..k1.len() / 2]).unwrap();
    let mut k2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records.join("k2.json")).unwrap()).unwrap();
    let bridge = k2["spec"]["bridge"].as_str().unwrap().to_owned();
    k2["spec"]["bubble_tap"] = bridge.clone().into();
    std::fs::write(records.join("k2.json"), k2.to_string()).unwrap();
    // A record of a container long gone, garbage; a claim with garbage for an owner; the
    // allocator's cursor garbled.
    std::fs::write(records.join("gone.json"), b"\0\0{\"spec\":").unwrap();
    let ipam = state.join("ipam/10.244.3.0-24");
    std::fs::write(ipam.join("10.244.3.200"), b"\xff\xfe\0").unwrap();
    std::fs::write(ipam.join("last"), b"10.244.3.999\n").unwrap();
    // What an attach cut short leaves: a half-written record, a forwarder's log.
    std::fs::write(records.join("k3.json.tmp"), b"{\"spec").unwrap();
    std::fs::write(records.join("ghost.log"), b"starting\n").unwrap();

    s.host.start_netd(&[]);
    let log = s.host.netd().log();
    for id in ["k1", "k2", "gone"] {
        assert!(
            log.contains(&format!("{id}.json")) && log.contains("unreadable endpoint record"),
            "{id} not reported: {log}"
        );
    }
    let status = s.host.netd().status();
    let ids: Vec<_> = status.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["k3"], "only the sound record is adopted");
    assert!(
        s.host.ns.links().contains(&bridge),
        "a bad record's link was acted on"
    );
    assert!(
        !records.join("gone.json").exists(),
        "a gone container's record is kept"
    );
    assert!(
        !ipam.join("10.244.3.200").exists(),
        "a garbage claim is kept"
    );
    assert!(!records.join("k3.json.tmp").exists() && !records.join("ghost.log").exists());
    // k1 and k2 still run on their veths: their addresses stay theirs.
    assert!(c3.ping(&a1.to_string()) && c3.ping(&a2.to_string()));
    let c4 = s.host.runc.run("k4", &s.host.bundle).unwrap();
    let a4 = s.host.address_of("k4");
    assert!(![a1, a2, a3].contains(&a4), "{a4} handed out twice");
    assert!(c4.ping(&a3.to_string()));
    // Their containers stop: poststop detaches what the bad records left.
    c1.stop();
    c2.stop();
    for (id, addr) in [("k1", a1), ("k2", a2)] {
        assert!(
            !records.join(format!("{id}.json")).exists(),
            "{id}'s record left"
        );
        assert!(!ipam.join(addr.to_string()).exists(), "{id}'s address left");
    }
    stop_by_poststop(s.host.netd(), &c3);
    stop_by_poststop(s.host.netd(), &c4);
    s.host.netd().assert_empty(&s.host.ns, &[]);
}

/// A container stopped while hpk-netd is down: its poststop finds no hpk-netd (the hook
/// says so, the runtime deletes the container all the same), and the next hpk-netd
/// detaches what it left and frees its address at start-up.
#[test]
fn a_poststop_while_netd_is_down_is_made_good_at_its_restart() {
    let mut s = Site::flannel("10.244.3.1/24");
    let c = s.host.runc.run("orphan", &s.host.bundle).unwrap();
    let address = s.host.address_of("orphan");
    let claim = s
        .host
        .dir
        .join(format!("state/ipam/10.244.3.0-24/{address}"));
    let record = s.host.dir.join("state/endpoints/orphan.json");
    assert!(claim.exists() && record.exists());
    let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    let _ = s.host.runc.cmd().args(["kill", "orphan", "KILL"]).output();
    wait_until("orphan to stop", Duration::from_secs(10), || {
        c.state()["status"] != "running"
    });
    let out = s
        .host
        .runc
        .cmd()
        .args(["delete", "orphan"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hpk-netd is not running: no socket at"),
        "the poststop hook did not meet hpk-netd's absence: {err}"
    );
    assert!(
        claim.exists() && record.exists(),
        "something detached it without hpk-netd"
    );

    s.host.start_netd(&[]);
    assert_eq!(
        s.host.netd().wait_detached("orphan"),
        "container exited while hpk-netd was down"
    );
    assert!(!claim.exists() && !record.exists());
    s.host.netd().assert_empty(&s.host.ns, &[]);
    // Its address is free again: a container asking for it gets it.
    let wanted = address.to_string();
    let asks = bundle(
        &s.scratch.0,
        "asks",
        &BundleSpec {
            args: &["sleep", "600"],
            socket: &s.host.netd().socket,
            annotations: &[("io.hpktainer.ip", &wanted)],
            rootless: false,
            no_hooks: false,
        },
    );
    let heir = s
        .host
        .runc
        .run("heir", &asks)
        .expect("a container gets the freed address");
    assert_eq!(s.host.address_of("heir"), address);
    stop_by_poststop(s.host.netd(), &heir);
    s.host.netd().assert_empty(&s.host.ns, &[]);
}

/// A tap endpoint's forwarder that keeps dying is restarted, with the same address, five
/// times in a row; its sixth death gives the endpoint up, with the forwarder's last log
/// lines in hpk-netd's log. The container keeps running, without a network.
#[test]
fn a_forwarder_that_keeps_dying_is_given_up() {
    let s = Site::flannel_with(
        "10.244.3.1/24",
        &["--endpoint", "tap", "--tap-hub", "false"],
    );
    let c = s.host.runc.run("frail", &s.host.bundle).unwrap();
    let address = s.host.address_of("frail");
    let kill = |pid: i32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap()
    };
    let mut dead = vec![s.host.forwarders()[0]];
    for death in 1..=5 {
        kill(*dead.last().unwrap());
        let mut now = Vec::new();
        wait_until(
            &format!("the forwarder's restart after death {death}"),
            Duration::from_secs(20),
            || {
                now = s.host.forwarders();
                now.len() == 1 && !dead.contains(&now[0])
            },
        );
        assert_eq!(s.host.address_of("frail"), address, "death {death}");
        dead.push(now[0]);
    }
    assert!(
        c.ping("10.244.3.1"),
        "no traffic through the fifth forwarder"
    );
    assert!(s.host.netd().detach_reason("frail").is_none());
    // A line of the forwarder's own, to find in hpk-netd's log.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(s.host.dir.join("state/endpoints/frail.log"))
        .unwrap();
    std::io::Write::write_all(&mut log, b"forwarder-last-words\n").unwrap();
    kill(*dead.last().unwrap());
    assert_eq!(
        s.host.netd().wait_detached("frail"),
        "forwarder keeps dying"
    );
    let given_up = s
        .host
        .netd()
        .log()
        .lines()
        .find(|l| l.contains("forwarder keeps dying; giving the endpoint up"))
        .map(str::to_owned)
        .expect("no give-up line");
    assert!(
        given_up.contains("restarts=6") && given_up.contains("forwarder-last-words"),
        "{given_up}"
    );
    s.host.netd().assert_empty(&s.host.ns, &dead);
    assert_eq!(c.state()["status"], "running");
    wait_until(
        "the container's tap0 to go",
        Duration::from_secs(10),
        || !c.exec(&["ip", "link", "show", "tap0"]).status.success(),
    );
    c.stop();
}
