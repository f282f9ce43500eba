//! Hooks and hpk-netd facing bad input: each case gets its clear error, a non-zero exit
//! where it should, and leaves nothing behind.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::netd::{subnet_env, Netd};
use testkit::runc::{bundle, rootfs, BundleSpec, Runc};
use testkit::*;

fn hook() -> std::path::PathBuf {
    hook_binary()
}

/// Runs the hook with `state` on stdin; returns (exit code, stderr).
fn run_hook(cmd: &mut Command, state: &str) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hook_fails(stage: &str, socket: &Path, state: &str, expect: &str) {
    let (code, err) = run_hook(
        Command::new(hook()).args([stage, "--socket"]).arg(socket),
        state,
    );
    assert_eq!(code, Some(1), "expected failure for {expect:?}: {err}");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line for the user: {err:?}"
    );
}

fn state(id: &str, pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!(
            r#"{{"ociVersion":"1.0.2","id":"{id}","status":"creating","pid":{pid},"bundle":"/nonexistent"}}"#
        ),
        None => format!(
            r#"{{"ociVersion":"1.0.2","id":"{id}","status":"stopped","bundle":"/nonexistent"}}"#
        ),
    }
}

/// A bubble with hpk-netd on `subnet`, `extra` flags added.
fn bubble(subnet: &str, extra: &[&str]) -> (Scratch, Netns, Netd) {
    bubble_prepared(subnet, extra, |_| {})
}

/// The same, `prepare` run on the scratch directory before hpk-netd starts.
fn bubble_prepared(
    subnet: &str,
    extra: &[&str],
    prepare: impl FnOnce(&Path),
) -> (Scratch, Netns, Netd) {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let ns = Netns::new(format!("{p}-b"));
    std::fs::write(
        scratch.0.join("subnet.env"),
        subnet_env(subnet, 1450, false),
    )
    .unwrap();
    prepare(&scratch.0);
    let netd = Netd::start(&ns, &scratch.0, extra);
    (scratch, ns, netd)
}

/// A `sleep 600` bundle with hooks pointing at `netd`, and runc in the bubble `ns`.
fn sleeper(dir: &Path, ns: &Netns, netd: &Netd) -> (std::path::PathBuf, Runc) {
    rootfs(dir);
    let b = bundle(
        dir,
        "sleeper",
        &BundleSpec {
            args: &["sleep", "600"],
            socket: &netd.socket,
            annotations: &[],
            rootless: false,
            no_hooks: false,
        },
    );
    (b, Runc::new(ns, dir))
}

#[test]
fn malformed_state_and_missing_pid() {
    let (_s, _ns, netd) = bubble("10.244.3.1/24", &[]);
    hook_fails(
        "createRuntime",
        &netd.socket,
        "{\"id\": ",
        "not valid JSON state",
    );
    hook_fails("createRuntime", &netd.socket, "", "no OCI state on stdin");
    hook_fails(
        "createRuntime",
        &netd.socket,
        r#"{"ociVersion":"1.0.2","status":"creating"}"#,
        "no container id",
    );
    hook_fails(
        "createRuntime",
        &netd.socket,
        &state("c1", None),
        "has no pid",
    );
    assert!(netd.status().endpoints.is_empty());
}

#[test]
fn pid_that_no_longer_exists() {
    let (_s, _ns, netd) = bubble("10.244.3.1/24", &[]);
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id() as i32;
    gone.wait().unwrap();
    hook_fails(
        "createRuntime",
        &netd.socket,
        &state("c1", Some(pid)),
        "is gone",
    );
    assert_eq!(netd.status().addresses_in_use, 0);
}

#[test]
fn container_sharing_the_bubble_namespace() {
    let (_s, ns, netd) = bubble("10.244.3.1/24", &[]);
    let mut same = Proc::spawn("sleeper in the bubble", ns.nsenter("sleep").arg("60"));
    // The PID is nsenter's until it has joined the namespace and exec'd sleep.
    let joined = || ns_id(Path::new(&format!("/proc/{}/ns/net", same.pid())));
    wait_until(
        "the sleeper to join the bubble",
        Duration::from_secs(5),
        || joined() == ns_id(&ns.path()),
    );
    hook_fails(
        "createRuntime",
        &netd.socket,
        &state("c1", Some(same.pid())),
        "shares the bubble's network namespace",
    );
    assert_eq!(netd.status().addresses_in_use, 0);
    same.stop_with(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn netd_down() {
    let p = prefix();
    let socket = std::env::temp_dir().join(format!("{p}-nobody.sock"));
    hook_fails(
        "createRuntime",
        &socket,
        &state("c1", Some(1)),
        "hpk-netd is not running: no socket at",
    );
    hook_fails(
        "poststop",
        &socket,
        &state("c1", None),
        "hpk-netd is not running",
    );
    // A stale socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    hook_fails(
        "poststop",
        &socket,
        &state("c1", None),
        "nothing listens on",
    );
    std::fs::remove_file(&socket).unwrap();
}

#[test]
fn detach_of_an_unknown_container_succeeds() {
    let (_s, _ns, netd) = bubble("10.244.3.1/24", &[]);
    let (code, err) = run_hook(
        Command::new(hook())
            .args(["poststop", "--socket"])
            .arg(&netd.socket),
        &state("never-attached", None),
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn exhausted_pool_fails_the_start_and_leaks_nothing() {
    let (s, ns, netd) = bubble("10.244.3.1/29", &[]);
    let (b, runc) = sleeper(&s.0, &ns, &netd);
    let full: Vec<_> = (0..5)
        .map(|i| runc.run(&format!("fill-{i}"), &b).expect("fits"))
        .collect();
    let links_before = ns.links();
    let err = runc
        .run("one-too-many", &b)
        .expect_err("the sixth container must not start");
    assert!(
        err.contains("subnet 10.244.3.0/29 has no free address (5 in use)"),
        "{err}"
    );
    assert_eq!(ns.links(), links_before, "the failed attach left a link");
    let status = netd.status();
    assert_eq!((status.endpoints.len(), status.addresses_in_use), (5, 5));
    let fw: Vec<_> = status.endpoints.iter().map(|e| e.forwarder_pid).collect();
    for c in &full {
        c.stop();
    }
    netd.assert_empty(&ns, &fw);
}

#[test]
fn garbled_subnet_env_stops_netd_with_the_line() {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let ns = Netns::new(format!("{p}-b"));
    std::fs::write(
        scratch.0.join("subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=fourteen-fifty\n",
    )
    .unwrap();
    let out = Netd::command(&ns, &scratch.0, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("subnet.env line 3: bad MTU"), "{err}");
    assert_eq!(
        ns.links(),
        ["lo"],
        "netd set up a bridge from a garbled file"
    );
    assert!(!scratch.0.join("netd.sock").exists());
}

#[test]
fn bad_config_file_is_explained() {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let ns = Netns::new(format!("{p}-b"));
    let config = scratch.0.join("netd.toml");
    std::fs::write(
        &config,
        "bridge = \"hpk-bridge\"\nmasquerade = \"sometimes\"\n",
    )
    .unwrap();
    let out = Netd::command(&ns, &scratch.0, &["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("netd.toml") && err.contains("sometimes"),
        "{err}"
    );
    assert_eq!(ns.links(), ["lo"]);
}

#[test]
fn netd_waits_for_flanneld_to_write_the_subnet_file() {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let ns = Netns::new(format!("{p}-b"));
    let log = scratch.0.join("netd.log");
    let mut netd = Proc {
        child: Netd::command(&ns, &scratch.0, &[])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        what: "hpk-netd".into(),
    };
    wait_until("netd to say it waits", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting for flanneld to write its subnet file")
    });
    assert!(netd.alive() && !ns.has_link("hpk-bridge"));
    std::fs::write(
        scratch.0.join("subnet.env"),
        subnet_env("10.244.9.1/24", 1450, true),
    )
    .unwrap();
    wait_until("the bridge", Duration::from_secs(10), || {
        ns.link_up("hpk-bridge")
    });
    let (code, _) = netd.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn peers_without_permission_are_refused() {
    // Socket open to everyone, so the SO_PEERCRED check itself is what refuses.
    let (_s, _ns, netd) = bubble("10.244.3.1/24", &["--socket-mode", "0666"]);
    let (code, err) = run_hook(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(hook())
            .args(["poststop", "--socket"])
            .arg(&netd.socket),
        &state("c1", None),
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("permission denied: uid 65534 may not use hpk-netd"),
        "{err}"
    );

    // With the default mode the socket itself refuses.
    let (_s2, _ns2, strict) = bubble("10.244.3.1/24", &[]);
    std::fs::set_permissions(
        &strict.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, err) = run_hook(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(hook())
            .args(["poststop", "--socket"])
            .arg(&strict.socket),
        &state("c1", None),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("permission denied on"), "{err}");
}

/// Run by `a_flood_of_bad_connections_does_not_stop_attaches` as another user: connects
/// to $HPK_FLOOD_SOCKET $HPK_FLOOD_COUNT times, holding up to 900 connections open and
/// sending nothing.
#[test]
#[ignore = "a helper the flood test runs as another user"]
fn flood_helper() {
    let (Ok(path), Ok(count)) = (
        std::env::var("HPK_FLOOD_SOCKET"),
        std::env::var("HPK_FLOOD_COUNT"),
    ) else {
        return;
    };
    let mut held = std::collections::VecDeque::new();
    for _ in 0..count.parse::<usize>().unwrap() {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&path) {
            held.push_back(s);
        }
        if held.len() > 900 {
            held.pop_front();
        }
    }
}

#[test]
fn a_flood_of_bad_connections_does_not_stop_attaches() {
    let (s, ns, netd) = bubble("10.244.3.1/24", &["--socket-mode", "0666"]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", netd.proc.pid()))
            .unwrap()
            .count()
    };
    let (b, runc) = sleeper(&s.0, &ns, &netd);
    // The first attach opens what hpk-netd keeps (its nft session): count after it.
    runc.run("warm", &b).unwrap().stop();
    let fds_before = fds();
    // Another user opens thousands of idle connections; root sends garbage, oversized
    // and half requests, in four threads.
    let mut idle = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args(["flood_helper", "--exact", "--ignored", "--quiet"])
        .env("HPK_FLOOD_SOCKET", &netd.socket)
        .env("HPK_FLOOD_COUNT", "4000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let garbage: Vec<_> = (0..4)
        .map(|t| {
            let path = netd.socket.clone();
            std::thread::spawn(move || {
                let mut answered = 0;
                for i in 0..250 {
                    let Ok(mut c) = std::os::unix::net::UnixStream::connect(&path) else {
                        continue;
                    };
                    let bad: Vec<u8> = match (t + i) % 3 {
                        0 => b"{not json\n".to_vec(),
                        1 => vec![b'x'; 70 << 10],
                        _ => br#"{"op":"attach","id":"half"#.to_vec(),
                    };
                    let _ = c.write_all(&bad);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let mut answer = String::new();
                    let _ = std::io::Read::read_to_string(&mut c, &mut answer);
                    answered += answer.contains("\"error\"") as usize;
                }
                answered
            })
        })
        .collect();
    // Meanwhile containers start as usual.
    let started: Vec<_> = (0..8)
        .map(|i| {
            runc.run(&format!("amid-{i}"), &b)
                .expect("a container starts amid the flood")
        })
        .collect();
    let answered: usize = garbage.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        answered > 900,
        "bad requests were not answered with errors: {answered}"
    );
    let _ = idle.wait();
    assert_eq!(netd.status().endpoints.len(), 8);
    for c in &started {
        assert!(c.exec(&["ip", "addr", "show", "tap0"]).status.success());
    }
    let log = netd.log();
    assert!(log.contains("refused a control peer"), "{log}");
    for c in &started {
        c.stop();
    }
    netd.assert_empty(&ns, &[]);
    // Every connection's descriptor was closed again.
    wait_until(
        "hpk-netd's descriptors to settle",
        Duration::from_secs(10),
        || fds() <= fds_before + 2,
    );
}

#[test]
fn a_full_state_directory_fails_the_attach_and_leaves_nothing() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let mut unmount = None;
    // The state directory on a small file system of its own.
    let (scratch, ns, netd) = bubble_prepared("10.244.3.1/24", &[], |dir| {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(&state));
        unmount = Some(Unmount(state));
    });
    // Unmounted before the scratch directory goes (declared later, dropped earlier).
    let _unmount = unmount;
    let state = scratch.0.join("state");
    let (b, runc) = sleeper(&scratch.0, &ns, &netd);
    // Fill it up.
    let filler = state.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let links_before = ns.links();
    let err = runc
        .run("crowded", &b)
        .expect_err("no space for its records");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(ns.links(), links_before, "the failed attach left a link");
    let status = netd.status();
    assert_eq!(
        (status.endpoints.len(), status.addresses_in_use),
        (0, 0),
        "{status:?}"
    );
    // Room again: the next start works, with the first address (nothing was half-claimed).
    std::fs::remove_file(&filler).unwrap();
    let c = runc.run("roomy", &b).expect("starts once there is room");
    assert_eq!(
        netd.status().endpoints[0].address,
        std::net::Ipv4Addr::new(10, 244, 3, 2)
    );
    c.stop();
    netd.assert_empty(&ns, &[]);
}
