//! Container-to-container traffic through a bubble's bridge, over each data path.
//! Needs root: every test builds its own namespaces and removes them.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::*;

const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");

#[derive(Clone, Copy, Debug)]
enum Method {
    TapToTap,
    /// Two of our daemons: they agree on the extended framing.
    Socket,
    /// Our daemons held to the original tool's framing by `--original-framing` on one
    /// end: the server (it refuses the client's offer, as the original tool does) or the
    /// client (it makes none).
    SocketOriginal {
        on_server: bool,
    },
    /// Socket mode started with the original scripts' exact command lines.
    OriginalCommandLines,
}

/// Starts the daemon(s) that attach container `n` to the bubble's bridge.
fn attach(prefix: &str, bubble: &Bubble, c: &Netns, n: u8, method: Method, mtu: u32) -> Vec<Proc> {
    let bubble_tap = format!("{prefix}{n}");
    let mtu = mtu.to_string();
    match method {
        Method::TapToTap => {
            let mut cmd = bubble.ns.cmd(DAEMON);
            cmd.args(["--netns", &c.name, "--bubble-tap", &bubble_tap])
                .args(["--bridge", &bubble.bridge, "--mtu", &mtu]);
            vec![Proc::spawn("tap-to-tap daemon", &mut cmd)]
        }
        Method::Socket | Method::SocketOriginal { .. } => {
            let socket = format!("/tmp/{prefix}-{n}.sock");
            let mut server = bubble.ns.cmd(DAEMON);
            // The original tool's Go-style flags, as its users wrote them.
            server
                .args(["-mode", "server", "-socket", &socket, "-tap", &bubble_tap])
                .args(["--bridge", &bubble.bridge, "--mtu", &mtu]);
            let mut client = c.cmd(DAEMON);
            client.args([
                "--mode", "client", "--socket", &socket, "--tap", "tap0", "--mtu", &mtu,
            ]);
            if let Method::SocketOriginal { on_server } = method {
                let end = if on_server { &mut server } else { &mut client };
                end.arg("--original-framing");
            }
            let server = Proc::spawn("socket server", &mut server);
            vec![server, Proc::spawn("socket client", &mut client)]
        }
        Method::OriginalCommandLines => {
            let socket = format!("/tmp/{prefix}-{n}.sock");
            let mut server = bubble.ns.cmd(DAEMON);
            server.args([
                "-mode",
                "server",
                "-socket",
                &socket,
                "-tap",
                &bubble_tap,
                "-create-tap",
            ]);
            let server = Proc::spawn("socket server", &mut server);
            // The base image's entrypoint, word for word.
            let mut client = c.cmd(DAEMON);
            client.args([
                "-mode",
                "client",
                "-socket",
                &socket,
                "-tap",
                "tap0",
                "-create-tap",
            ]);
            let client = Proc::spawn("socket client", &mut client);
            // The original's bubble script enslaves the server's tap itself.
            wait_until("the server's tap", Duration::from_secs(10), || {
                bubble.ns.has_link(&bubble_tap)
            });
            bubble
                .ns
                .ip(&["link", "set", &bubble_tap, "master", &bubble.bridge, "up"]);
            vec![server, client]
        }
    }
}

/// The framing a socket-mode pair settles on: the value of `framing` in the daemons'
/// "peer connected" log line.
fn expected_framing(method: Method) -> Option<&'static str> {
    match method {
        Method::TapToTap => None,
        Method::Socket | Method::OriginalCommandLines => Some("extended"),
        Method::SocketOriginal { .. } => Some("original"),
    }
}

/// The framings a socket-mode daemon's log says its connections used.
fn framings_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("peer connected"))
        .map(|l| {
            l.split("framing=\"")
                .nth(1)
                .and_then(|rest| rest.split([' ', '"']).next())
                .unwrap_or("none")
                .to_owned()
        })
        .collect()
}

fn c2c(method: Method, mtu: u32) {
    let p = prefix();
    let bubble = Bubble::new(&p, [198, 18, 7], mtu);
    let c1 = Netns::new(format!("{p}-c1"));
    let c2 = Netns::new(format!("{p}-c2"));
    let mut daemons = attach(&p, &bubble, &c1, 1, method, mtu);
    daemons.extend(attach(&p, &bubble, &c2, 2, method, mtu));
    address_container(&c1, "tap0", bubble.addr(2));
    address_container(&c2, "tap0", bubble.addr(3));
    assert_eq!(c1.link_json("tap0").unwrap()["mtu"], mtu);

    assert!(
        c1.ping("198.18.7.3"),
        "c1 -> c2 ping failed ({method:?}, MTU {mtu})"
    );
    assert!(
        c2.ping("198.18.7.2"),
        "c2 -> c1 ping failed ({method:?}, MTU {mtu})"
    );
    assert!(c1.ping("198.18.7.1"), "c1 -> bubble gateway ping failed");
    tcp_transfer(&c2, &c1, bubble.addr(3), 8 << 20);
    tcp_transfer(&c1, &c2, bubble.addr(2), 8 << 20);

    // Clean exit on SIGTERM/SIGINT, and the taps go with the daemons.
    for (i, d) in daemons.iter_mut().enumerate() {
        let sig = if i % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        };
        let (code, err) = d.stop_with(sig);
        assert_eq!(code, Some(0), "{} exited badly: {err}", d.what);
        if let Some(expected) = expected_framing(method) {
            let used = framings_in(&err);
            assert!(
                !used.is_empty() && used.iter().all(|f| f == expected),
                "{} used the framings {used:?}, not only {expected} ({method:?}): {err}",
                d.what
            );
        }
    }
    let left: Vec<_> = bubble
        .ns
        .links()
        .into_iter()
        .filter(|l| l.starts_with(&p))
        .collect();
    assert!(left.is_empty(), "bubble taps left behind: {left:?}");
    assert!(
        !c1.has_link("tap0") && !c2.has_link("tap0"),
        "container tap left behind"
    );
    if let Method::Socket | Method::SocketOriginal { .. } | Method::OriginalCommandLines = method {
        for n in 1..=2 {
            assert!(!std::path::Path::new(&format!("/tmp/{p}-{n}.sock")).exists());
        }
    }
}

#[test]
fn tap_to_tap_mtu_1500() {
    c2c(Method::TapToTap, 1500);
}

#[test]
fn tap_to_tap_mtu_9000() {
    c2c(Method::TapToTap, 9000);
}

#[test]
fn socket_mode_mtu_1500() {
    c2c(Method::Socket, 1500);
}

#[test]
fn socket_mode_mtu_9000() {
    c2c(Method::Socket, 9000);
}

/// The server holds to the original framing: the client's offer goes unanswered.
#[test]
fn socket_mode_original_framing_mtu_1500() {
    c2c(Method::SocketOriginal { on_server: true }, 1500);
}

/// The client holds to the original framing: it makes no offer.
#[test]
fn socket_mode_original_framing_mtu_9000() {
    c2c(Method::SocketOriginal { on_server: false }, 9000);
}

#[test]
fn the_originals_command_lines_mtu_1500() {
    c2c(Method::OriginalCommandLines, 1500);
}

/// `-create-tap=false` attaches to a persistent tap made beforehand.
#[test]
fn server_attaches_to_an_existing_tap_when_told_not_to_create_it() {
    let p = prefix();
    let bubble = Bubble::new(&p, [198, 18, 8], 1500);
    let tap = format!("{p}9");
    bubble.ns.ip(&["tuntap", "add", &tap, "mode", "tap"]);
    let socket = format!("/tmp/{p}-persist.sock");
    let mut server = bubble.ns.cmd(DAEMON);
    server.args([
        "-mode",
        "server",
        "-socket",
        &socket,
        "-tap",
        &tap,
        "-create-tap=false",
        "--bridge",
        &bubble.bridge,
    ]);
    let mut server = Proc::spawn("socket server", &mut server);
    wait_until("the socket", Duration::from_secs(10), || {
        std::path::Path::new(&socket).exists()
    });
    assert!(
        bubble.ns.link_up(&tap),
        "the existing tap was not brought up"
    );
    let (code, err) = server.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{err}");
    let fails_with = |args: &[&str], expect: &str| {
        let out = bubble.ns.cmd(DAEMON).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{err}");
    };
    // Without -create-tap=false the same name is refused, as before.
    fails_with(
        &["-mode", "server", "-socket", &socket, "-tap", &tap],
        "already taken",
    );
    // And attaching to a tap that is not there says how to make one.
    fails_with(
        &[
            "-mode",
            "server",
            "-socket",
            &socket,
            "-tap",
            "nosuchtap0",
            "-create-tap=false",
        ],
        "ip tuntap add",
    );
}

#[test]
fn server_accepts_a_new_client_after_the_old_one_leaves() {
    let p = prefix();
    let bubble = Bubble::new(&p, [198, 18, 8], 1500);
    let c1 = Netns::new(format!("{p}-c1"));
    let mut daemons = attach(&p, &bubble, &c1, 1, Method::Socket, 1500);
    address_container(&c1, "tap0", bubble.addr(2));
    assert!(c1.ping("198.18.8.1"));

    let (code, _) = daemons[1].stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(daemons[0].alive(), "server died when its client left");

    let socket = format!("/tmp/{p}-1.sock");
    let mut client = c1.cmd(DAEMON);
    client.args(["-m", "client", "-s", &socket, "-t", "tap0"]);
    let _client = Proc::spawn("second client", &mut client);
    address_container(&c1, "tap0", bubble.addr(2));
    assert!(
        c1.ping("198.18.8.1"),
        "no traffic through the second client"
    );
}

#[test]
fn forwarder_exits_with_its_container() {
    let p = prefix();
    let bubble = Bubble::new(&p, [198, 18, 9], 1500);
    // The "container": a process in a network namespace of its own.
    let mut container = Proc::spawn(
        "container",
        Command::new("unshare").args(["--net", "sleep", "300"]),
    );
    let netns = format!("/proc/{}/ns/net", container.pid());
    wait_until("container namespace", Duration::from_secs(5), || {
        std::fs::read_link(&netns).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    });
    let tap = format!("{p}1");
    let mut daemon = Proc::spawn(
        "tap-to-tap daemon",
        bubble
            .ns
            .cmd(DAEMON)
            .args(["--netns", &netns, "--bubble-tap", &tap, "--bridge", "br0"]),
    );
    wait_until("bubble tap up", Duration::from_secs(10), || {
        bubble.ns.link_up(&tap)
    });
    container.stop_with(Signal::SIGKILL);
    let (code, err) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("container process exited"), "{err}");
    assert!(
        !bubble.ns.has_link(&tap),
        "bubble tap outlived its container"
    );
}
