//! Restart in place, as `hpk.slurm` does it: a bubble's launcher SIGKILLed (a crash, an
//! OOM kill) and started again on its node with the same ID. The new start takes over
//! the dead bubble's state directory and says which containers went with it; a node gets
//! its subnet back and is routed to again, its new containers' names reach the others; a
//! controller carries on with the same etcd data and CA, so the nodes reconnect and a
//! node started afterwards joins. Meanwhile a ping between two other bubbles' containers
//! runs: none of its echoes may be lost, and what was sent is printed.

mod inplace;
mod support;

use std::time::Duration;

use inplace::*;
use nix::sys::signal::Signal;
use support::*;
use testkit::wait_until;

#[test]
fn a_node_restarted_in_place_gets_its_subnet_back() {
    let mut c = cluster(3);
    let a3 = c.container(3, "far", &[]);
    c.container(2, "old", &[]);
    let before = record(&c, 2);
    let pinger = Pinger::start(&c, 1, a3);

    c.launcher(2).stop_with(Signal::SIGKILL);
    assert!(c.state_dir(2).exists(), "a SIGKILL leaves the state dir");
    c.launch_with(1, 2, "node", &[], &[NAMES_TTL]);
    let after = wait_restarted(&mut c, 2, &before);
    let log = c.launcher_log(2);
    assert!(
        log.contains("took over the state directory") && log.contains("containers are gone: old"),
        "{log}"
    );
    let init_log = std::fs::read_to_string(c.shared.join("bubble-2-init.log")).unwrap();
    assert!(init_log.contains("containers are gone: old"), "{init_log}");
    assert_eq!(after["subnet"], before["subnet"], "the lease by PublicIP");

    // A second start beside the running one is refused, naming its launcher.
    let state = c.state_dir(2);
    let out = c
        .command(1, &["start", "2", "node", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already running here"),
        "{}",
        stderr(&out)
    );

    // Peers route to it again; its new container's name reaches them, the old one's goes.
    let a2 = c.container(2, "fresh", &[]);
    for id in [1, 3] {
        let out = c.in_container(id, &format!("ping -c 1 -W 5 {a2}"));
        assert!(out.status.success(), "bubble {id}: {}", stdout(&out));
        wait_until(
            &format!("bubble {id} to learn fresh and forget old"),
            Duration::from_secs(20),
            || {
                let names = names_in(&c, id);
                names.contains(&"fresh".to_string()) && !names.contains(&"old".to_string())
            },
        );
    }
    let (sent, lost) = pinger.finish(&c, 10);
    eprintln!("bubble 1 -> 3 while bubble 2 restarted: {sent} sent, lost {lost:?}");
    assert!(lost.is_empty(), "bubbles 1 and 3 lost each other: {lost:?}");
}

#[test]
fn a_controller_restarted_in_place_carries_on_with_the_same_cluster() {
    let mut c = cluster(4);
    let a3 = c.container(3, "far", &[]);
    let before = record(&c, 1);
    let pki = c.shared.join("pki");
    let ca = std::fs::read(pki.join("etcd-ca.pem")).unwrap();
    let key = std::fs::read(pki.join("overlay.key")).unwrap();
    let pinger = Pinger::start(&c, 2, a3);

    c.launcher(1).stop_with(Signal::SIGKILL);
    c.launch_with(0, 1, "controller", &[], &[NAMES_TTL]);
    let after = wait_restarted(&mut c, 1, &before);
    let log = c.launcher_log(1);
    assert!(
        log.contains("took over the state directory") && log.contains("kept etcd, pki"),
        "{log}"
    );
    assert_eq!(after["subnet"], before["subnet"]);
    assert_eq!(
        std::fs::read(pki.join("etcd-ca.pem")).unwrap(),
        ca,
        "same CA"
    );
    // The overlay key rotated: a new one first, the one the nodes hold second.
    let rotated = String::from_utf8(std::fs::read(pki.join("overlay.key")).unwrap()).unwrap();
    let old = String::from_utf8(key).unwrap();
    let lines: Vec<&str> = rotated.lines().collect();
    assert_eq!(lines.len(), 2, "{rotated}");
    assert_ne!(lines[0], old.trim(), "a new key");
    assert_eq!(lines[1], old.trim(), "the old one kept second");

    // A node started now holds the kept CA's certificate; the running nodes learn its
    // lease from the restarted etcd, so their watches came back.
    c.launch_with(3, 4, "node", &[], &[NAMES_TTL]);
    c.wait_ready(4);
    let a4 = c.container(4, "new", &[]);
    for id in [1, 2, 3] {
        let out = c.in_container(id, &format!("ping -c 1 -W 5 {a4}"));
        assert!(out.status.success(), "bubble {id}: {}", stdout(&out));
        wait_until(
            &format!("bubble {id} to learn new"),
            Duration::from_secs(20),
            || names_in(&c, id).contains(&"new".to_string()),
        );
    }
    let (sent, lost) = pinger.finish(&c, 10);
    eprintln!("bubble 2 -> 3 while the controller restarted: {sent} sent, lost {lost:?}");
    assert!(lost.is_empty(), "bubbles 2 and 3 lost each other: {lost:?}");

    // scancel's SIGTERM then takes everything, the kept etcd data and PKI too.
    for id in [4, 3, 2, 1] {
        let (code, err) = c.stop_launcher(id, Signal::SIGTERM);
        assert_eq!(code, Some(0), "bubble {id}: {err}");
    }
    assert!(!pki.exists());
    for id in 1..=4 {
        assert!(!c.state_dir(id).exists(), "bubble {id}");
    }
    assert_eq!(c.bubble_processes(), Vec::<String>::new());
}

/// A controller that fails (its uplink died) rather than being stopped keeps etcd's data
/// and its certificate in its state directory; the start after it takes them over and the
/// node started before reaches it again.
#[test]
fn a_failed_controller_keeps_what_its_restart_needs() {
    let mut c = cluster(2);
    let a2 = c.container(2, "far", &[]);
    let before = record(&c, 1);
    // The uplink is the last of the processes the launcher noted.
    let noted: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(c.state_dir(1).join("processes.json")).unwrap())
            .unwrap();
    let uplink = noted.last().unwrap()["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(uplink), Signal::SIGKILL).unwrap();
    let (code, log) = c.launcher(1).wait_exit(Duration::from_secs(30));
    assert_ne!(code, Some(0), "{log:?}");
    let mut left: Vec<String> = std::fs::read_dir(c.state_dir(1))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["etcd", "launcher.lock", "pki"],
        "kept for the restart"
    );
    assert!(c.shared.join("pki/etcd-ca.pem").exists());

    c.launch_with(0, 1, "controller", &[], &[NAMES_TTL]);
    let after = wait_restarted(&mut c, 1, &before);
    assert!(
        c.launcher_log(1).contains("kept etcd, pki"),
        "{}",
        c.launcher_log(1)
    );
    assert_eq!(after["subnet"], before["subnet"]);
    let a1 = c.container(1, "back", &[]);
    for (from, to) in [(1, a2), (2, a1)] {
        let out = c.in_container(from, &format!("ping -c 1 -W 5 {to}"));
        assert!(out.status.success(), "bubble {from}: {}", stdout(&out));
    }
}
