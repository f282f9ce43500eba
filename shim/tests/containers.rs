//! `hpktainer run` with real runc and crun in a bubble with a real hpk-netd: exit codes,
//! environment, mounts, working directory, user, hostname, a shell on a pseudo-terminal,
//! detached containers, traffic between containers and to the outside through NAT.

mod support;

use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use support::{stderr, stdout, Env};
use testkit::world::{ECHO_PORT, OUTSIDE};

fn options_reach_the_container(rt: &str) {
    let env = Env::new("10.244.7.1/24");
    let r = env.rootfs();
    // Exit codes are the container's.
    let out = env.out(&["run", "--runtime", rt, r, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        env.out(&["run", "--runtime", rt, r, "true"]).status.code(),
        Some(0)
    );

    // Environment: -e, --env-file, NAME from our own environment.
    let env_file = env.dir.join("vars");
    std::fs::write(&env_file, "# comment\nFROM_FILE=f1\n\nSHARED=file\n").unwrap();
    let out = env
        .hpk(&[
            "run",
            "--runtime",
            rt,
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "SHARED=flag",
            "-e",
            "PASSED",
            r,
            "sh",
            "-c",
            "echo $FROM_FILE/$SHARED/$PASSED/$PATH",
        ])
        .env("PASSED", "through")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim(),
        "f1/flag/through//usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "{}",
        stderr(&out)
    );

    // Bind mounts: read-write lands on the host, read-only refuses writes.
    let data = env.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "from-host").unwrap();
    let rw = format!("{}:/data", data.display());
    let got = env.ok(&[
        "run",
        "--runtime",
        rt,
        "-v",
        &rw,
        r,
        "sh",
        "-c",
        "cat /data/in; echo from-container > /data/out",
    ]);
    assert_eq!(got.trim(), "from-host");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap().trim(),
        "from-container"
    );
    let ro = format!("{}:/data:ro", data.display());
    let out = env.out(&[
        "run",
        "--runtime",
        rt,
        "-v",
        &ro,
        r,
        "sh",
        "-c",
        "echo x > /data/denied",
    ]);
    // The container's refusal, not hpktainer's own failure (125).
    assert!(
        !matches!(out.status.code(), Some(0) | Some(125)),
        "{:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join("denied").exists());

    // Working directory, user, hostname.
    assert_eq!(
        env.ok(&["run", "--runtime", rt, "-w", "/srv", r, "pwd"])
            .trim(),
        "/srv"
    );
    assert_eq!(
        env.ok(&[
            "run",
            "--runtime",
            rt,
            "-u",
            "33:44",
            r,
            "sh",
            "-c",
            "echo $(id -u):$(id -g)"
        ])
        .trim(),
        "33:44"
    );
    assert_eq!(
        env.ok(&["run", "--runtime", rt, "-u", "web", r, "id", "-un"])
            .trim(),
        "web"
    );
    assert_eq!(
        env.ok(&["run", "--runtime", rt, "--hostname", "box1", r, "hostname"])
            .trim(),
        "box1"
    );

    // The overlay network: tap0 in the subnet with the bubble's MTU; a static address;
    // none for --network none.
    let addr = env.ok(&[
        "run",
        "--runtime",
        rt,
        r,
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "tap0",
    ]);
    assert!(addr.contains("inet 10.244.7."), "{addr}");
    let mtu = env.ok(&["run", "--runtime", rt, r, "cat", "/sys/class/net/tap0/mtu"]);
    assert_eq!(mtu.trim(), "1450");
    let fixed = env.ok(&[
        "run",
        "--runtime",
        rt,
        "--ip",
        "10.244.7.77",
        r,
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "tap0",
    ]);
    assert!(fixed.contains("inet 10.244.7.77/24"), "{fixed}");
    let links = env.ok(&[
        "run",
        "--runtime",
        rt,
        "--network",
        "none",
        r,
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
    env.assert_clean();
}

fn shell_on_a_terminal(rt: &str, how: &str) {
    let env = Env::new("10.244.8.1/24");
    // `script` gives hpktainer a real pseudo-terminal as stdin and stdout.
    let args = format!("{how} --runtime {rt} {}", env.rootfs());
    let out = support::in_pty(&env, &args, b"[ -t 0 ] && echo TTY-$((6*7)); tty; exit 3\n");
    let text = stdout(&out);
    assert!(
        text.contains("TTY-42"),
        "no terminal inside: {text}{}",
        stderr(&out)
    );
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(out.status.code(), Some(3), "{text}");

    // exec -it into a detached container gets a terminal too.
    env.ok(&[
        "run",
        "-d",
        "--runtime",
        rt,
        "--name",
        "t1",
        env.rootfs(),
        "sleep",
        "600",
    ]);
    let out = support::in_pty(
        &env,
        "exec -it t1 /bin/sh",
        b"[ -t 0 ] && echo EXEC-TTY; exit 4\n",
    );
    assert!(
        stdout(&out).contains("EXEC-TTY"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(4));
    env.ok(&["rm", "--force", "t1"]);
    env.assert_clean();
}

fn detached_containers_talk(rt: &str) {
    let env = Env::new("10.244.9.1/24");
    let r = env.rootfs();
    let name1 = format!("{}-a", env.prefix);
    let name2 = format!("{}-b", env.prefix);
    for n in [&name1, &name2] {
        let printed = env.ok(&[
            "run",
            "-d",
            "--runtime",
            rt,
            "--name",
            n,
            r,
            "sh",
            "-c",
            "echo hello from $HOSTNAME; exec sleep 600",
        ]);
        assert_eq!(printed.trim(), n.as_str());
    }
    let ps = env.ps();
    assert_eq!(ps.len(), 2);
    assert!(ps.iter().all(|r| r["status"] == "detached"), "{ps:?}");
    let a1 = env.address_of(&name1);
    let a2 = env.address_of(&name2);
    assert!(ps.iter().any(|r| r["address"] == a1.to_string()));

    // status: the bubble's network as hpk-netd reports it, and our containers.
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["network"]["subnet"], "10.244.9.0/24");
    assert_eq!(status["network"]["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(status["containers"].as_array().unwrap().len(), 2);
    let table = env.ok(&["status"]);
    assert!(
        table.contains("subnet      10.244.9.0/24") && table.contains(&name1),
        "{table}"
    );

    // exec: exit code, ping across the bridge.
    let out = env.out(&["exec", &name1, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    env.ok(&[
        "exec",
        &name1,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &a2.to_string(),
    ]);

    // A few MB between the two containers' network namespaces, checked end to end.
    let ns1 = std::path::PathBuf::from(format!("/proc/{}/ns/net", env.pid_of(&name1)));
    let ns2 = std::path::PathBuf::from(format!("/proc/{}/ns/net", env.pid_of(&name2)));
    let sent =
        testkit::tcp_stream(&ns2, &ns1, a2, 4 << 20, Arc::new(AtomicBool::new(true))).check();
    assert!(sent >= 4 << 20);

    // The outside world through the bubble's NAT, from inside the container.
    let echo = env.ok(&[
        "exec",
        &name1,
        "sh",
        "-c",
        &format!("echo through-nat | timeout 10 nc {OUTSIDE} {ECHO_PORT}"),
    ]);
    assert_eq!(echo.trim(), "through-nat");
    // The outside saw the bubble's host, not the container's overlay address.
    let peers = env.world.echo_peers.lock().unwrap().clone();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p.ip() == env.host),
        "the outside saw {peers:?}, not only {}",
        env.host
    );

    // logs, stop (the log stays), rm.
    let logs = env.ok(&["logs", &name1]);
    assert_eq!(logs.trim(), format!("hello from {name1}"));
    env.ok(&["stop", "-t", "1", &name1, &name2]);
    let ps = env.ps();
    assert!(ps.iter().all(|r| r["status"] == "exited"), "{ps:?}");
    // poststop released both endpoints (the taps go in the background).
    testkit::wait_until(
        "endpoints released after stop",
        std::time::Duration::from_secs(10),
        || env.netd.status().endpoints.is_empty(),
    );
    env.ok(&["logs", &name1]);
    env.ok(&["rm", &name1, &name2]);
    env.assert_clean();
}

fn instances(rt: &str) {
    let env = Env::new("10.244.10.1/24");
    let name = format!("{}-i", env.prefix);
    env.ok(&[
        "instance",
        "start",
        "--runtime",
        rt,
        env.rootfs(),
        &name,
        "sleep",
        "600",
    ]);
    let list = env.ok(&["instance", "list"]);
    assert!(list.contains(&name), "{list}");
    env.ok(&["instance", "stop", "-t", "1", &name]);
    env.assert_clean();
}

#[test]
fn runc_options_reach_the_container() {
    options_reach_the_container("runc");
}

#[test]
fn crun_options_reach_the_container() {
    options_reach_the_container("crun");
}

#[test]
fn runc_shell_on_a_terminal() {
    shell_on_a_terminal("runc", "run -it");
}

#[test]
fn crun_shell_on_a_terminal() {
    shell_on_a_terminal("crun", "shell");
}

#[test]
fn runc_detached_containers_talk_and_reach_the_outside() {
    detached_containers_talk("runc");
}

#[test]
fn crun_detached_containers_talk_and_reach_the_outside() {
    detached_containers_talk("crun");
}

#[test]
fn runc_instances() {
    instances("runc");
}

#[test]
fn crun_instances() {
    instances("crun");
}
