//! Real bubbles on hosts of a LAN, as an unprivileged user: slirp4netns and pasta
//! uplinks, etcd in the controller, hpk-netd in each, rootless runc containers through
//! `hpktainer` inside. Containers reach each other across bubbles and the outside; a
//! node that dies is dropped and replaced; etcd restarts without stopping traffic;
//! SIGTERM leaves nothing but logs.

mod support;

use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;
use testkit::wait_until;

/// Whether `port` is free on `addr` in host `h`'s namespace.
fn port_free(cluster: &Cluster, h: usize, tcp: bool, port: u16) -> bool {
    let addr = SocketAddrV4::new(cluster.hosts[h].1, port);
    testkit::spawn_in(&cluster.hosts[h].0.path(), move || {
        if tcp {
            TcpListener::bind(addr).is_ok()
        } else {
            UdpSocket::bind(addr).is_ok()
        }
    })
    .join()
    .unwrap()
}

fn pids_of(cluster: &Cluster, needle: &str) -> Vec<i32> {
    cluster
        .bubble_processes()
        .iter()
        .filter(|p| p.contains(needle))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect()
}

/// Every file and directory under `dir` with its permission bits, for the modes check.
fn modes(dir: &std::path::Path, out: &mut Vec<(String, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        out.push((
            e.path().display().to_string(),
            meta.permissions().mode() & 0o7777,
        ));
        if meta.is_dir() {
            modes(&e.path(), out);
        }
    }
}

/// What hpktainer writes has the narrowest mode that works: nothing anyone else may
/// write, and records, logs, keys and sockets for their owner alone; the state directory
/// is 0700. Inside it, the containers' files
/// (`containers/`, runc's `runtime/`) stay readable: a container's non-root user must read
/// its hosts file.
fn assert_narrow_modes(c: &Cluster, ids: &[u32]) {
    let mut all = Vec::new();
    modes(&c.shared, &mut all);
    for id in ids {
        all.push((c.state_dir(*id).display().to_string(), {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(c.state_dir(*id))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        }));
        modes(&c.state_dir(*id), &mut all);
    }
    eprintln!("modes of what the bubbles wrote:");
    for (path, mode) in &all {
        eprintln!("  {mode:04o} {path}");
    }
    for (path, mode) in &all {
        assert_eq!(mode & 0o022, 0, "{path} is writable by others: {mode:o}");
        let name = path.rsplit('/').next().unwrap();
        let containers = path.contains("/containers/") || path.contains("/runtime/");
        let private = !containers && name.ends_with(".json")
            || name.ends_with(".log")
            || name == "kubeconfig"
            || name.ends_with(".pem")
            || (!containers && name.ends_with(".sock"));
        if private {
            assert_eq!(mode & 0o077, 0, "{path} is readable by others: {mode:o}");
        }
    }
    for id in ids {
        let state = c.state_dir(*id).display().to_string();
        let (_, mode) = all.iter().find(|(p, _)| *p == state).unwrap();
        assert_eq!(*mode, 0o700, "{state}");
    }
}

/// The controller's etcd, seen from another host: a client without the cluster's
/// certificate is refused (over TLS, or plain HTTP); one with it reads the leases.
fn etcd_serves_only_the_cluster(c: &Cluster) {
    let pki = c.shared.join("pki");
    let file = |name: &str| pki.join(name).display().to_string();
    let etcdctl = |endpoint: &str, extra: &[String]| {
        c.hosts[2]
            .0
            .nsenter("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoint,
                "--dial-timeout=3s",
                "--command-timeout=5s",
            ])
            .args(extra)
            .args([
                "get",
                "--prefix",
                "--keys-only",
                "/coreos.com/network/subnets",
            ])
            .output()
            .unwrap()
    };
    let ca = vec!["--cacert".to_string(), file("etcd-ca.pem")];
    let out = etcdctl("https://192.0.2.11:2379", &ca);
    assert!(
        !out.status.success(),
        "no client certificate: {}",
        stdout(&out)
    );
    let out = etcdctl("http://192.0.2.11:2379", &[]);
    assert!(!out.status.success(), "plain HTTP: {}", stdout(&out));
    // A certificate from another CA (another cluster, another user) is refused too.
    let other = testkit::etcd::Tls::generate(&c.dir.0, "192.0.2.11".parse().unwrap());
    let path = |p: &std::path::Path| p.display().to_string();
    let mut foreign = ca.clone();
    foreign.extend([
        "--cert".into(),
        path(&other.client_cert),
        "--key".into(),
        path(&other.client_key),
    ]);
    let out = etcdctl("https://192.0.2.11:2379", &foreign);
    assert!(
        !out.status.success(),
        "another CA's certificate: {}",
        stdout(&out)
    );
    let mut ours = ca;
    ours.extend([
        "--cert".into(),
        file("etcd-client.pem"),
        "--key".into(),
        file("etcd-client-key.pem"),
    ]);
    let out = etcdctl("https://192.0.2.11:2379", &ours);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().filter(|l| !l.is_empty()).count(),
        3,
        "{}",
        stdout(&out)
    );
}

#[test]
fn containers_talk_across_slirp4netns_and_pasta_bubbles() {
    let mut c = Cluster::new(3);
    c.launch(0, 1, "controller", &["--uplink", "slirp4netns"]);
    let controller = c.wait_ready(1);
    assert_eq!(controller["etcd"], "https://192.0.2.11:2379");
    c.launch(1, 2, "node", &["--uplink", "pasta"]);
    c.launch(2, 3, "node", &["--uplink", "slirp4netns"]);
    c.wait_ready(2);
    c.wait_ready(3);
    let list =
        String::from_utf8_lossy(&c.command(0, &["list"]).output().unwrap().stdout).into_owned();
    assert_eq!(list.lines().count(), 4, "{list}");

    // The overlay MTU follows the host's 1500-byte link, not the uplink's 65520: 50 bytes
    // for VXLAN, 36 for the seal. (The bubble's /sys is the host's: ask netlink.)
    let link = c.shell_ok(2, &["ip", "-o", "link", "show", "hpk-bridge"]);
    assert!(link.contains(" mtu 1414 "), "{link}");

    let web = c.container(3, "web", &["httpd", "-f", "-p", "8080", "-h", "/"]);
    let a2 = c.container(2, "sleeper", &[]);
    let busybox_md5 = {
        let out = std::process::Command::new("md5sum")
            .arg(c.rootfs.join("bin/busybox"))
            .output()
            .unwrap();
        stdout(&out).split_whitespace().next().unwrap().to_owned()
    };
    let script = format!(
        "ip addr show tap0 | grep -q 'inet 10.244.' && ping -c 2 -W 5 {a2} >/dev/null && \
         wget -q -O - http://{web}:8080/bin/busybox | md5sum"
    );
    let out = c.in_container(1, &script);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with(&busybox_md5), "{}", stdout(&out));
    let out = c.in_container(3, &format!("ping -c 1 -W 5 {a2}"));
    assert!(out.status.success(), "{}", stdout(&out));

    // The overlay went through each bubble's own socket on the host, not the uplink:
    // no UDP port is forwarded, and hpk-netd counts the datagrams.
    for id in 1..=3 {
        let status: serde_json::Value =
            serde_json::from_str(&c.shell_ok(id, &["hpk-netd", "status", "--json"])).unwrap();
        let u = &status["underlay"];
        assert_eq!(u["kind"], "host-socket", "bubble {id}: {u}");
        assert_eq!(u["device"], "flannel.1");
        assert!(
            u["counters"]["rx_datagrams"].as_u64().unwrap() > 0,
            "bubble {id}: {u}"
        );
        assert_eq!(u["counters"]["drop_unknown_sender"], 0, "bubble {id}: {u}");
        // Sealed with the cluster's key, which the controller wrote beside its PKI.
        assert_eq!(u["protection"], "encrypt", "bubble {id}: {u}");
        assert!(u["counters"]["rx_authenticated"].as_u64().unwrap() > 0);
        for p in status["peers"].as_array().unwrap() {
            assert_eq!(p["datagrams"], "sealed", "bubble {id}: {p}");
        }
    }
    // Another user of node 3, from a port it can bind, sends bubble 1 a datagram: dropped
    // and counted (hpk-netd's overlay tests show forged, foreign and replayed ones too).
    let (ns3, addr3) = &c.hosts[2];
    let out = ns3
        .nsenter("setpriv")
        .args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "socat",
            "-u",
        ])
        .arg("OPEN:/dev/zero,readbytes=64")
        .arg(format!("UDP4-SENDTO:{}:8472,bind={addr3}", c.hosts[0].1))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("bubble 1 to drop it", Duration::from_secs(10), || {
        let status: serde_json::Value =
            serde_json::from_str(&c.shell_ok(1, &["hpk-netd", "status", "--json"])).unwrap();
        status["underlay"]["counters"]["drop_wrong_port"] == 1
    });
    assert!(
        !port_free(&c, 1, false, 8472),
        "bubble 2's socket holds the port"
    );
    assert_narrow_modes(&c, &[1, 2, 3]);
    etcd_serves_only_the_cluster(&c);

    // The outside world, through the bubbles' NAT: a detached busybox nc until the answer
    // is in its log. Its input stays open: with the connection half-closed, the answer
    // came back more than once at times.
    let rootfs = c.rootfs.to_str().unwrap();
    c.shell_ok(
        2,
        &[
            "hpktainer",
            "run",
            "-d",
            "--name",
            "echo",
            rootfs,
            "sh",
            "-c",
            "(echo hello; exec sleep 600) | nc 198.51.100.2 7777",
        ],
    );
    let mut log = String::new();
    let answered = || {
        log = c.shell_ok(2, &["hpktainer", "logs", "echo"]);
        log.contains("hello")
    };
    wait_until(
        "the outside's answer in the container's log",
        Duration::from_secs(20),
        answered,
    );
    assert_eq!(log.trim(), "hello");
    c.shell_ok(2, &["hpktainer", "rm", "--force", "echo"]);
    let peers = c.world.echo_peers.lock().unwrap().clone();
    assert!(peers.iter().any(|p| p.ip() == c.hosts[1].1), "{peers:?}");

    // etcd killed: the controller restarts it with its data; traffic never stops.
    let etcd = pids_of(&c, "etcd --name");
    assert_eq!(etcd.len(), 1, "{:?}", c.bubble_processes());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(etcd[0]), Signal::SIGKILL).unwrap();
    let out = c.in_container(1, &format!("ping -c 3 -W 5 {a2}"));
    assert!(out.status.success(), "{}", stdout(&out));
    wait_until("etcd restarted", Duration::from_secs(20), || {
        let now = pids_of(&c, "etcd --name");
        now.len() == 1 && now != etcd
    });
    let out = c.in_container(2, &format!("ping -c 1 -W 5 {web}"));
    assert!(out.status.success(), "{}", stdout(&out));

    // SIGTERM: nothing left but logs.
    for id in [3, 2, 1] {
        let (code, err) = c.stop_launcher(id, Signal::SIGTERM);
        assert_eq!(code, Some(0), "bubble {id}: {err}");
    }
    assert_eq!(c.bubble_processes(), Vec::<String>::new());
    for id in 1..=3 {
        assert!(!c.shared.join(format!("bubble-{id}.json")).exists());
        assert!(
            !c.shared.join("pki").exists(),
            "the controller takes its PKI along"
        );
        assert!(!c.state_dir(id).exists());
        assert!(c.shared.join(format!("bubble-{id}-netd.log")).exists());
    }
    assert!(port_free(&c, 0, true, 2379));
    for h in 0..3 {
        assert!(port_free(&c, h, false, 8472));
    }
}

#[test]
fn node_first_then_controller_then_a_killed_node_is_replaced() {
    let mut c = Cluster::new(3);
    let ttl = [("HPK_NETD_ETCD_LEASE_TTL", "6")];
    c.launch_with(1, 2, "node", &["--uplink", "pasta"], &ttl);
    // Bubble 3 keeps flannel's kernel vxlan behind pasta; the others are host-socket.
    c.launch_with(
        2,
        3,
        "node",
        &["--uplink", "pasta", "--underlay", "kernel"],
        &ttl,
    );
    // The nodes wait; nothing is ready before the controller.
    for id in [2, 3] {
        c.wait_for_log(id, "waiting for the controller");
    }
    assert!(c.launcher(2).alive() && c.launcher(3).alive());
    assert!(!c.shared.join("bubble-2.json").exists() && !c.shared.join("bubble-3.json").exists());
    // Plain HTTP, when asked for: the nodes follow the controller's record.
    c.launch_with(
        0,
        1,
        "controller",
        &["--uplink", "pasta", "--etcd-plain-http"],
        &ttl,
    );
    for id in 1..=3 {
        c.wait_ready(id);
    }
    let controller: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.shared.join("bubble-1.json")).unwrap()).unwrap();
    assert_eq!(controller["etcd"], "http://192.0.2.11:2379");
    assert!(!c.shared.join("pki").exists());
    let a3 = c.container(3, "c3", &["httpd", "-f", "-p", "8080", "-h", "/"]);
    let a1 = c.container(1, "c1", &[]);
    let out = c.in_container(
        1,
        &format!(
            "ping -c 1 -W 5 {a3} >/dev/null && wget -q -O - http://{a3}:8080/bin/busybox | wc -c"
        ),
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let size = std::fs::metadata(c.rootfs.join("bin/busybox"))
        .unwrap()
        .len();
    assert_eq!(
        stdout(&out).trim(),
        size.to_string(),
        "host-socket to kernel over TCP"
    );
    let out = c.in_container(3, &format!("ping -c 1 -W 5 {a1}"));
    assert!(
        out.status.success(),
        "kernel to host-socket: {}",
        stdout(&out)
    );
    let list = stdout(&c.command(0, &["list"]).output().unwrap());
    assert!(
        list.lines()
            .any(|l| l.starts_with("3 ") && l.contains(" kernel ")),
        "{list}"
    );

    // Bubble 3's launcher SIGKILLed: its whole bubble dies with it.
    let record3: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.shared.join("bubble-3.json")).unwrap()).unwrap();
    let subnet3 = record3["subnet"].as_str().unwrap().to_owned();
    c.launcher(3).stop_with(Signal::SIGKILL);
    let state3 = c.state_dir(3).display().to_string();
    wait_until(
        "bubble 3's processes to end",
        Duration::from_secs(10),
        || pids_of(&c, &state3).is_empty(),
    );
    // Its lease expires; the others drop its route.
    wait_until(
        "bubble 1 to drop bubble 3's route",
        Duration::from_secs(40),
        || !c.shell_ok(1, &["ip", "route"]).contains(&subnet3),
    );
    // A new bubble on that node gets a subnet and is reachable.
    c.launch_with(2, 4, "node", &["--uplink", "slirp4netns"], &ttl);
    c.wait_ready(4);
    let a4 = c.container(4, "c4", &[]);
    let out = c.in_container(1, &format!("ping -c 1 -W 5 {a4}"));
    assert!(out.status.success(), "{}", stdout(&out));
}
