//! What the forwarder says when it cannot start, and that it leaves nothing behind.

use std::process::{Command, Stdio};

use testkit::*;

const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");

/// Runs `cmd` to completion; asserts a failure whose message contains `expect`.
fn fails_with(cmd: &mut Command, expect: &str) {
    let out = cmd.stdin(Stdio::null()).output().expect("run daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1 for {expect:?}, got: {err}"
    );
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
}

/// Bubble and container namespaces with nothing in them but `lo`.
fn namespaces(p: &str) -> (Netns, Netns) {
    (Netns::new(format!("{p}-b")), Netns::new(format!("{p}-c")))
}

fn only_lo(ns: &Netns, extra: &[&str]) {
    let links = ns.links();
    let unexpected: Vec<_> = links
        .iter()
        .filter(|l| *l != "lo" && !extra.contains(&l.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "links left in {}: {unexpected:?}",
        ns.name
    );
}

#[test]
fn missing_tun_device() {
    let p = prefix();
    let (b, c) = namespaces(&p);
    // Hide /dev/net/tun in a private mount namespace.
    let script = format!(
        "mount -t tmpfs none /dev/net && exec {DAEMON} --netns {} --bubble-tap {p}1",
        c.name
    );
    fails_with(
        b.cmd("unshare").args(["--mount", "sh", "-c", &script]),
        "/dev/net/tun does not exist",
    );
    only_lo(&b, &[]);
    only_lo(&c, &[]);
}

#[test]
fn no_cap_net_admin() {
    let p = prefix();
    let (b, c) = namespaces(&p);
    fails_with(
        b.cmd("setpriv")
            .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", DAEMON])
            .args(["--netns", &c.name, "--bubble-tap", &format!("{p}1")]),
        "needs CAP_NET_ADMIN",
    );
    only_lo(&b, &[]);
    only_lo(&c, &[]);
}

#[test]
fn unprivileged_user_cannot_open_tun() {
    let p = prefix();
    let (b, _c) = namespaces(&p);
    // A private /dev/net/tun of mode 0600, whatever the host's node allows.
    let socket = format!("/tmp/{p}.sock");
    let script = format!(
        "mount -t tmpfs none /dev/net && mknod -m 600 /dev/net/tun c 10 200 && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         {DAEMON} --mode server --socket {socket} --tap {p}1"
    );
    fails_with(
        b.cmd("unshare").args(["--mount", "sh", "-c", &script]),
        "permission denied",
    );
    assert!(!std::path::Path::new(&socket).exists());
    only_lo(&b, &[]);
}

#[test]
fn namespace_that_does_not_exist() {
    let p = prefix();
    let (b, _c) = namespaces(&p);
    fails_with(
        b.cmd(DAEMON).args([
            "--netns",
            &format!("{p}-nope"),
            "--bubble-tap",
            &format!("{p}1"),
        ]),
        "does not exist",
    );
    fails_with(
        b.cmd(DAEMON).args([
            "--netns",
            "/proc/2147483600/ns/net",
            "--bubble-tap",
            &format!("{p}1"),
        ]),
        "is not running",
    );
    only_lo(&b, &[]);
}

#[test]
fn bubble_tap_name_taken() {
    let p = prefix();
    let (b, c) = namespaces(&p);
    let name = format!("{p}1");
    b.ip(&["link", "add", &name, "type", "bridge"]);
    fails_with(
        b.cmd(DAEMON)
            .args(["--netns", &c.name, "--bubble-tap", &name]),
        "already taken",
    );
    // The existing link is untouched; the container tap made before the failure is gone.
    only_lo(&b, &[&name]);
    only_lo(&c, &[]);
}

#[test]
fn container_tap_name_taken() {
    let p = prefix();
    let (b, c) = namespaces(&p);
    c.ip(&["link", "add", "tap0", "type", "bridge"]);
    fails_with(
        b.cmd(DAEMON)
            .args(["--netns", &c.name, "--bubble-tap", &format!("{p}1")]),
        "already taken",
    );
    only_lo(&b, &[]);
    only_lo(&c, &["tap0"]);
}

#[test]
fn missing_bridge() {
    let p = prefix();
    let (b, c) = namespaces(&p);
    fails_with(
        b.cmd(DAEMON).args([
            "--netns",
            &c.name,
            "--bubble-tap",
            &format!("{p}1"),
            "--bridge",
            "nobr",
        ]),
        "bridge \"nobr\" does not exist",
    );
    only_lo(&b, &[]);
    only_lo(&c, &[]);
}

#[test]
fn inherited_fd_that_is_not_a_tap() {
    fails_with(
        Command::new(DAEMON).args(["--container-fd", "0", "--bubble-fd", "0"]),
        "not an open tap device",
    );
}

#[test]
fn socket_mode_needs_its_flags() {
    fails_with(
        Command::new(DAEMON).args(["--mode", "server", "--tap", "x"]),
        "needs --socket",
    );
    fails_with(
        Command::new(DAEMON).args(["--mode", "client", "--socket", "/tmp/x"]),
        "needs --tap",
    );
}
