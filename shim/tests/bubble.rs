//! The user's first contact, as in the README, inside a rootless bubble as on a cluster
//! node: an unprivileged user's user+net+mount namespace with slirp4netns as its uplink,
//! hpk-netd as the bubble's root, a registry reachable from the bubble, and
//! `hpktainer run docker://...` typed by the bubble's root.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{stderr, stdout};
use testkit::netd::{subnet_env, Netd};
use testkit::rootless::{RootlessBubble, BUBBLE_USER as USER};
use testkit::world::{World, ECHO_PORT, OUTSIDE};
use testkit::*;

/// Runs its command when dropped (a container's removal, even after a failed assertion).
struct RemoveOnDrop(Command);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

#[test]
fn hpktainer_in_a_rootless_bubble() {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let dir = scratch.0.clone();
    let mut world = World::new(&p);
    let (host, host_addr) = world.host("h");
    std::fs::write(
        dir.join("subnet.env"),
        subnet_env("10.244.23.1/24", 1450, false),
    )
    .unwrap();

    // An image with a busybox layer, pushed later to a registry in the bubble.
    let image = support::layout_image(&dir, |_| {});
    std::fs::create_dir_all(dir.join("home")).unwrap();
    run(Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&dir));

    // The bubble: the unprivileged user's namespaces, with slirp4netns as on a node.
    let rootless = RootlessBubble::start(&host, &p);
    let bubble = &rootless.ns;
    let enter = rootless.enter();
    let netd = Netd::start_rootless(enter.clone(), &dir);

    // A registry on the bubble's loopback, and the image pushed to it.
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let _registry = Proc::spawn(
        "docker-registry",
        bubble.nsenter("docker-registry").arg("serve").arg(&config),
    );
    wait_until("the registry", Duration::from_secs(20), || {
        bubble
            .nsenter("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{image}"),
                "docker://127.0.0.1:5000/hpk/base:latest",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });

    // hpktainer typed by the bubble's root.
    let hpk_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&enter[0]);
        cmd.args(&enter[1..])
            .arg(support::HPKTAINER)
            .arg("--root")
            .arg(dir.join("hpk"))
            .arg("--socket")
            .arg(&netd.socket)
            .args(args)
            // The bubble's root is the unprivileged user: its home, not the test's.
            .env("HOME", dir.join("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        cmd
    };
    let hpk = |args: &[&str]| {
        let out = hpk_cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    };
    let reference = "docker://127.0.0.1:5000/hpk/base:latest";
    // Removed whatever happens below, before hpk-netd and the bubble go.
    let _peer = RemoveOnDrop(hpk_cmd(&["rm", "--force", "peer"]));
    hpk(&["run", "-d", "--name", "peer", reference, "sleep", "600"]);
    let peer = netd.status().endpoints[0].address;
    let got = hpk(&[
        "run", reference, "sh", "-c",
        &format!(
            "ip -4 -o addr show tap0; ping -c 1 -W 2 {peer} >/dev/null && echo ping-ok; echo via-nat | timeout 10 nc {OUTSIDE} {ECHO_PORT}"
        ),
    ]);
    assert!(got.contains("inet 10.244.23."), "{got}");
    assert!(got.contains("ping-ok"), "{got}");
    assert!(got.contains("via-nat"), "{got}");
    let seen = world.echo_peers.lock().unwrap().last().unwrap().ip();
    assert_eq!(seen, host_addr, "the outside saw {seen}, not the host");

    let ps = hpk(&["ps"]);
    assert!(
        ps.contains("peer") && ps.contains(&peer.to_string()),
        "{ps}"
    );
    hpk(&["stop", "-t", "1", "peer"]);
    hpk(&["rm", "peer"]);
    wait_until("endpoints released", Duration::from_secs(10), || {
        netd.status().endpoints.is_empty()
    });
    netd.assert_empty(bubble, &[]);
    assert_eq!(
        std::fs::read_dir(dir.join("hpk/containers"))
            .unwrap()
            .count(),
        0
    );
}
