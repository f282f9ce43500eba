//! Names and published ports on real bubbles (rootless, as an unprivileged user, each
//! behind its uplink): containers find each other by name across bubbles, a name is
//! unique in the cluster and leaves with its container or its bubble; published TCP and
//! UDP ports answer other hosts of the LAN, who are seen by their own address.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{stderr, stdout, Cluster};
use testkit::*;

/// The names bubble `id`'s hpk-netd knows.
fn names_in(c: &Cluster, id: u32) -> Vec<String> {
    let status: serde_json::Value =
        serde_json::from_str(&c.shell_ok(id, &["hpk-netd", "status", "--json"])).unwrap();
    status["names"]["records"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|n| n["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn names_and_published_ports_across_bubbles() {
    let mut c = Cluster::new(3);
    // socat from the host's /usr, for a UDP server in a container.
    for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        std::os::unix::fs::symlink(to, c.rootfs.join(link)).unwrap();
    }
    std::fs::create_dir_all(c.rootfs.join("usr")).unwrap();
    // A plain directory as root: the file hpktainer binds the bubble's DNS over must exist.
    std::fs::write(c.rootfs.join("etc/resolv.conf"), "").unwrap();
    for h in 0..3 {
        let (id, role) = (h as u32 + 1, if h == 0 { "controller" } else { "node" });
        c.launch_with(h, id, role, &[], &[("HPK_NETD_NAMES_TTL", "3")]);
        c.wait_ready(id);
    }
    let rootfs = c.rootfs.to_str().unwrap().to_owned();
    let h3 = c.hosts[2].1;

    // web in bubble 3, with a TCP and a UDP port published on its host.
    c.shell_ok(
        3,
        &[
            "hpktainer",
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "18080:8080",
            "-p",
            "15353:5353/udp",
            "-v",
            "/usr:/usr:ro",
            &rootfs,
            "sh",
            "-c",
            "socat UDP-RECVFROM:5353,fork SYSTEM:'echo $SOCAT_PEERADDR' & \
             httpd -f -v -p 8080 -h /",
        ],
    );
    wait_until("bubble 1 to learn web", Duration::from_secs(10), || {
        names_in(&c, 1).contains(&"web".to_string())
    });
    // By name from bubbles 1 and 2.
    for id in [1, 2] {
        let out = c.in_container(
            id,
            "nslookup web && wget -q -O - http://web:8080/bin/busybox | md5sum",
        );
        assert!(
            out.status.success(),
            "bubble {id}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("web.hpk.internal"),
            "{}",
            stdout(&out)
        );
    }
    // Unique in the cluster: a second web in bubble 2 is refused, saying where web runs.
    let out = c.shell(2, &["hpktainer", "run", "--name", "web", &rootfs, "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("name web is taken")
            && stderr(&out).contains(&format!("in the bubble of {h3}")),
        "{}",
        stderr(&out)
    );

    // The published ports from the LAN's router (as a login node would): TCP with the
    // client's own address in httpd's log, and UDP answered with the client's address.
    let url = format!("http://{h3}:18080/bin/busybox");
    let got = c
        .world
        .lan
        .cmd("busybox")
        .args(["wget", "-q", "-O", "/dev/null", &url])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    let log = c.shell_ok(3, &["hpktainer", "logs", "web"]);
    assert!(
        log.contains(":192.0.2.1]:"),
        "httpd saw another address: {log}"
    );
    let target: SocketAddr = (h3, 15353).into();
    let answer = c
        .world
        .lan
        .spawn(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            // The server starts in the background of the container: ask until it answers.
            for _ in 0..10 {
                s.send_to(b"who?", target).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = s.recv(&mut buf) {
                    return String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                }
            }
            String::new()
        })
        .join()
        .unwrap();
    assert_eq!(answer, "192.0.2.1");
    // A taken host port: refused, and nothing of the container left.
    let out = c.shell(
        3,
        &[
            "hpktainer",
            "run",
            "--name",
            "web2",
            "-p",
            "18080:80",
            &rootfs,
            "true",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("host port 0.0.0.0:18080/tcp is in use"),
        "{}",
        stderr(&out)
    );
    let ps = c.shell_ok(3, &["hpktainer", "ps", "-a"]);
    assert!(!ps.contains("web2"), "{ps}");

    // Stopped: the name leaves every bubble and the ports close.
    c.shell_ok(3, &["hpktainer", "rm", "--force", "web"]);
    wait_until("web to leave bubble 1", Duration::from_secs(10), || {
        !names_in(&c, 1).contains(&"web".to_string())
    });
    let refused = c
        .world
        .lan
        .cmd("busybox")
        .args(["wget", "-q", "-O", "/dev/null", &url])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the port still answers");

    // A bubble killed outright: its names expire with its lease.
    c.container(2, "db", &[]);
    wait_until("bubble 1 to learn db", Duration::from_secs(10), || {
        names_in(&c, 1).contains(&"db".to_string())
    });
    c.stop_launcher(2, Signal::SIGKILL);
    wait_until("db to expire", Duration::from_secs(20), || {
        !names_in(&c, 1).contains(&"db".to_string())
    });
}
