//! `hpk-bubble` facing bad input: each case exits non-zero with a message that says what
//! is wrong and what to do, and leaves no process, state directory or record behind.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;
use testkit::rootless::setpriv_args;

/// Runs `cmd`, expecting failure with `expect` in its one-line error.
fn fails(cmd: &mut Command, expect: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected failure {expect:?}: {err}"
    );
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    out
}

fn nothing_left(c: &Cluster, id: u32) {
    assert_eq!(c.bubble_processes(), Vec::<String>::new());
    assert!(!c.state_dir(id).exists(), "state dir of bubble {id} left");
    assert!(!c.shared.join(format!("bubble-{id}.json")).exists());
}

fn start(c: &Cluster, host: usize, id: u32, role: &str, extra: &[&str]) -> Command {
    let mut cmd = c.command(host, &["start", &id.to_string(), role]);
    cmd.arg("--state-dir").arg(c.state_dir(id)).args(extra);
    cmd
}

#[test]
fn preflight_errors() {
    let c = Cluster::new(1);
    fails(
        &mut start(
            &c,
            0,
            1,
            "controller",
            &["--shared-dir", "/nonexistent/shared"],
        ),
        "shared directory /nonexistent/shared does not exist",
    );
    fails(
        &mut start(
            &c,
            0,
            1,
            "controller",
            &["--network-config", "{\"Network\": 12}"],
        ),
        "invalid --network-config",
    );
    fails(
        &mut start(&c, 0, 1, "controller", &["--host-ip", "203.0.113.9"]),
        "203.0.113.9 is not an address of this host",
    );
    // A node whose controller never comes.
    fails(
        &mut start(&c, 0, 2, "node", &["--wait-timeout", "1"]),
        "no controller bubble became ready",
    );
    // A node whose controller serves TLS, in a shared directory without its certificates.
    let elsewhere = hpk_bubble::record::Record {
        id: 1,
        role: hpk_bubble::cli::Role::Controller,
        job: None,
        host: "elsewhere".into(),
        host_ip: "192.0.2.99".parse().unwrap(),
        uplink: hpk_bubble::cli::UplinkKind::Pasta,
        underlay: Default::default(),
        etcd: Some("https://192.0.2.99:2379".into()),
        vxlan_port: 8472,
        subnet: "10.244.7.0/24".into(),
        init: hpk_netd::sys::process::ProcId { pid: 1, start: 1 },
        state_dir: "/nonexistent".into(),
    };
    let record = c.shared.join("bubble-1.json");
    std::fs::write(&record, serde_json::to_vec(&elsewhere).unwrap()).unwrap();
    fails(
        &mut start(&c, 0, 2, "node", &[]),
        "etcd-ca.pem: the controller bubble writes it when it starts",
    );
    std::fs::remove_file(record).unwrap();
    nothing_left(&c, 1);
    nothing_left(&c, 2);
}

#[test]
fn missing_uplinks_are_named_with_their_package() {
    let c = Cluster::new(1);
    let empty = c.dir.0.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    for (uplink, expect) in [
        (
            "slirp4netns",
            "slirp4netns not found on PATH: install it (Debian package slirp4netns)",
        ),
        (
            "pasta",
            "pasta not found on PATH: install it (Debian package passt)",
        ),
    ] {
        let mut cmd = c.hosts[0].0.nsenter("setpriv");
        cmd.args(setpriv_args())
            .arg("env")
            .arg(format!("PATH={}", empty.display()))
            .arg(HPK_BUBBLE)
            .args([
                "start",
                "1",
                "controller",
                "--uplink",
                uplink,
                "--shared-dir",
            ])
            .arg(&c.shared)
            .arg("--state-dir")
            .arg(c.state_dir(1));
        fails(&mut cmd, expect);
    }
    nothing_left(&c, 1);
}

#[test]
fn unusable_tun_says_what_to_do() {
    let c = Cluster::new(1);
    // /dev/net/tun as these machines ship it (0600 root), in a private mount namespace.
    let fake = c.dir.0.join("tun");
    std::fs::write(&fake, "").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inner = start(&c, 0, 1, "controller", &[]);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /dev/net/tun && exec \"$@\"",
    ])
    .arg(&fake)
    .arg(inner.get_program())
    .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    fails(&mut cmd, "chmod 0666 /dev/net/tun");
    nothing_left(&c, 1);
}

#[test]
fn taken_port_is_named_and_another_port_works() {
    let mut c = Cluster::new(1);
    let host_ip = c.hosts[0].1;
    // Other programs hold the overlay's UDP port and etcd's port on this host.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = testkit::spawn_in(&c.hosts[0].0.path(), move || {
        let l = std::net::TcpListener::bind((host_ip, 2379)).unwrap();
        let u = std::net::UdpSocket::bind((host_ip, 8472)).unwrap();
        tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop((l, u));
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    fails(
        &mut start(&c, 0, 1, "controller", &["--uplink", "slirp4netns"]),
        "udp port 8472 on 192.0.2.11 is not free",
    );
    nothing_left(&c, 1);
    let port_8473 = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":8473}}"#;
    let config = ["--network-config", port_8473];
    fails(
        &mut start(
            &c,
            0,
            1,
            "controller",
            &[&["--uplink", "slirp4netns"][..], &config].concat(),
        ),
        "tcp port 2379 on 192.0.2.11 is not free",
    );
    nothing_left(&c, 1);
    // The ways out the messages name work.
    c.launch(
        0,
        1,
        "controller",
        &[
            &["--uplink", "slirp4netns", "--etcd-port", "2479"][..],
            &config,
        ]
        .concat(),
    );
    let record = c.wait_ready(1);
    assert_eq!(record["etcd"], "https://192.0.2.11:2479");
    assert_eq!(record["vxlan_port"], 8473);
    assert_eq!(record["underlay"], "host-socket");
    done_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn absent_bubbles() {
    let c = Cluster::new(1);
    fails(
        &mut c.command(0, &["shell", "9", "--", "true"]),
        "bubble 9 is not running",
    );
    fails(
        &mut c.command(0, &["wait", "9", "--timeout", "1"]),
        "timed out after 1s waiting for bubble 9",
    );
    let gone = std::process::Command::new("true").spawn().unwrap().id();
    fails(
        &mut c.command(0, &["wait", "9", "--watch", &gone.to_string()]),
        "exited before it was ready",
    );
}
