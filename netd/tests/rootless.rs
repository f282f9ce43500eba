//! A rootless bubble, as on a cluster node: an unprivileged user's user+net+mount
//! namespace with slirp4netns as its uplink, hpk-netd as the bubble's root, and
//! `runc spec --rootless` containers with our hooks.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use testkit::netd::{subnet_env, Netd};
use testkit::rootless::{RootlessBubble, BUBBLE_USER as USER};
use testkit::runc::{bundle, rootfs, BundleSpec, Runc};
use testkit::world::{echo_from, World};
use testkit::*;

#[test]
fn rootless_bubble_attaches_and_reaches_the_outside() {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let dir = scratch.0.clone();
    let mut world = World::new(&p);
    let (host, host_addr) = world.host("h");
    std::fs::write(
        dir.join("subnet.env"),
        subnet_env("10.244.5.1/24", 1450, false),
    )
    .unwrap();
    rootfs(&dir);
    let socket = dir.join("netd.sock");
    let b = bundle(
        &dir,
        "rootless",
        &BundleSpec {
            args: &["sleep", "600"],
            socket: &socket,
            annotations: &[],
            rootless: true,
            no_hooks: false,
        },
    );
    run(std::process::Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&dir));

    // The bubble: the unprivileged user's namespaces, with slirp4netns as on a node.
    let rootless = RootlessBubble::start(&host, &p);
    let bubble = &rootless.ns;
    let enter = rootless.enter();
    let netd = Netd::start_rootless(enter.clone(), &dir);
    let mut runc = Runc::new(bubble, &dir);
    runc.prefix = enter;

    let c1 = runc.run("rl1", &b).expect("rootless container 1 starts");
    let c2 = runc.run("rl2", &b).expect("rootless container 2 starts");
    let status = netd.status();
    let addr = |id: &str| {
        status
            .endpoints
            .iter()
            .find(|e| e.id == id)
            .unwrap()
            .address
    };
    let (a1, a2) = (addr("rl1"), addr("rl2"));
    assert_ne!(a1, a2);
    assert!(
        c1.ping(&a2.to_string()) && c2.ping(&a1.to_string()),
        "containers cannot reach each other"
    );
    tcp_stream(
        &c2.netns(),
        &c1.netns(),
        a2,
        4 << 20,
        Arc::new(AtomicBool::new(true)),
    )
    .check();
    // Out through the bubble's masquerade and slirp4netns: the world sees the host.
    assert_eq!(echo_from(&c1.netns(), b"rootless hello"), b"rootless hello");
    let seen = world.echo_peers.lock().unwrap().last().unwrap().ip();
    assert_eq!(seen, host_addr, "the outside saw {seen}, not the host");
    assert_ne!(seen, a1);

    let fw: Vec<_> = status.endpoints.iter().map(|e| e.forwarder_pid).collect();
    c1.stop();
    c2.stop();
    netd.assert_empty(bubble, &fw);
}
