//! Hooks and hpk-netd facing bad input: each case gets its clear error, a non-zero exit
//! where it should, and leaves nothing behind.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::netd::{subnet_env, Netd};
use testkit::runc::{bundle, rootfs, BundleSpec, Container, Runc};
use testkit::*;

/// Connections of allowed peers hpk-netd serves at once (its README's figure).
const CONNECTION_CAP: usize = 256;

/// Stops `c` as a runtime does and checks that its poststop hook detached its endpoint
/// (hpk-netd would detach a dead container's endpoint by itself too, 5 s later).
fn stop_by_poststop(netd: &Netd, c: &Container) {
    c.stop();
    assert_eq!(
        netd.wait_detached(&c.id),
        "poststop",
        "{} was not detached by its poststop hook",
        c.id
    );
}

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
        stop_by_poststop(&netd, c);
    }
    netd.assert_empty(&ns, &fw);
}

/// A process in a network namespace of its own: what hpk-netd attaches, without a runtime.
fn sleeper_in_own_netns() -> Proc {
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    // SAFETY: unshare(2) is async-signal-safe, and nothing else runs before the exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Proc::spawn("a sleeper in its own netns", &mut cmd)
}

/// Runs hook `stage` for container `id` (of process `pid`) against `netd`.
fn hook_for(netd: &Netd, stage: &str, id: &str, pid: Option<i32>) -> (Option<i32>, String) {
    run_hook(
        Command::new(hook())
            .args([stage, "--socket"])
            .arg(&netd.socket),
        &state(id, pid),
    )
}

/// A /24 holds 253 containers (the gateway takes .1): every address handed out once, the
/// 254th refused with the README's message and nothing of it left; an address given back
/// goes to the next. (Processes of their own network namespace stand for containers, with
/// veth endpoints and the hook as runtimes run it: 254 runc containers would take minutes.)
#[test]
fn a_full_24_refuses_the_254th_container() {
    let (_s, ns, netd) = bubble("10.244.3.1/24", &["--endpoint", "veth"]);
    let sleepers: Vec<Proc> = (0..254).map(|_| sleeper_in_own_netns()).collect();
    let attach = |i: usize| {
        hook_for(
            &netd,
            "createRuntime",
            &format!("full-{i}"),
            Some(sleepers[i].pid()),
        )
    };
    for i in 0..253 {
        let (code, err) = attach(i);
        assert_eq!(code, Some(0), "full-{i}: {err}");
    }
    let status = netd.status();
    assert_eq!(
        (status.endpoints.len(), status.addresses_in_use),
        (253, 253)
    );
    let given: HashSet<Ipv4Addr> = status.endpoints.iter().map(|e| e.address).collect();
    let all: HashSet<Ipv4Addr> = (2..=254).map(|h| Ipv4Addr::new(10, 244, 3, h)).collect();
    assert_eq!(given, all, "not every host address handed out once");

    let links_before = ns.links();
    let (code, err) = attach(253);
    assert_eq!(code, Some(1), "the 254th attached: {err}");
    assert!(
        err.contains("subnet 10.244.3.0/24 has no free address (253 in use)"),
        "{err}"
    );
    assert_eq!(ns.links(), links_before, "the refused attach left a link");
    assert_eq!(netd.status().addresses_in_use, 253);

    // One leaves: its address goes to the one refused.
    let freed = netd
        .status()
        .endpoints
        .iter()
        .find(|e| e.id == "full-100")
        .unwrap()
        .address;
    let (code, err) = hook_for(&netd, "poststop", "full-100", None);
    assert_eq!(code, Some(0), "{err}");
    wait_until(
        "full-100's address to be free",
        Duration::from_secs(10),
        || netd.status().addresses_in_use == 252,
    );
    let (code, err) = attach(253);
    assert_eq!(code, Some(0), "{err}");
    let status = netd.status();
    let last = status
        .endpoints
        .iter()
        .find(|e| e.id == "full-253")
        .unwrap();
    assert_eq!(last.address, freed);

    for i in (0..254).filter(|i| *i != 100) {
        let (code, err) = hook_for(&netd, "poststop", &format!("full-{i}"), None);
        assert_eq!(code, Some(0), "full-{i}: {err}");
    }
    assert_eq!(netd.wait_detached("full-253"), "poststop");
    netd.assert_empty(&ns, &[]);
}

/// A container that died without a poststop keeps its endpoint a moment (its poststop may
/// still come); a new container of the same id, started at once, is attached all the same.
#[test]
fn an_id_used_again_after_a_death_without_poststop_is_attached() {
    let (_s, ns, netd) = bubble("10.244.3.1/24", &[]);
    let mut first = sleeper_in_own_netns();
    let (code, err) = hook_for(&netd, "createRuntime", "again", Some(first.pid()));
    assert_eq!(code, Some(0), "{err}");
    first.stop_with(nix::sys::signal::Signal::SIGKILL);
    let second = sleeper_in_own_netns();
    let (code, err) = hook_for(&netd, "createRuntime", "again", Some(second.pid()));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        netd.wait_detached("again"),
        "container exited; its id is attached again"
    );
    let status = netd.status();
    let pids: Vec<i32> = status.endpoints.iter().map(|e| e.pid).collect();
    assert_eq!(pids, [second.pid()]);
    let (code, err) = hook_for(&netd, "poststop", "again", None);
    assert_eq!(code, Some(0), "{err}");
    netd.assert_empty(&ns, &[]);
}

/// The socket's group and `allowed_uids` let a user in, not only keep others out: a member
/// of the group in the list is served; one outside the list, or outside the group, is not.
#[test]
fn socket_group_and_allowed_uids_let_a_user_in() {
    let (_s, _ns, netd) = bubble(
        "10.244.3.1/24",
        &[
            "--socket-group",
            "nogroup",
            "--socket-mode",
            "0660",
            "--allowed-uids",
            "0,65534",
        ],
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&netd.socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (65534, 0o660));
    std::fs::set_permissions(&netd.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |uid: u32, gid: u32, args: &[&str], program: &Path, stdin: &str| {
        run_hook(
            Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program)
                .args(args)
                .arg(&netd.socket),
            stdin,
        )
    };
    // uid 65534 of group nogroup: in the group and in the list.
    let (code, err) = as_user(
        65534,
        65534,
        &["poststop", "--socket"],
        &hook(),
        &state("c1", None),
    );
    assert_eq!(code, Some(0), "{err}");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netd_binary())
        .args(["status", "--json", "--socket"])
        .arg(&netd.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: hpk_hook::proto::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.subnet, "10.244.3.0/24");
    assert!(!netd.log().contains("refused a control peer"));
    // In the group, not in the list: hpk-netd refuses it.
    let (code, err) = as_user(
        65533,
        65534,
        &["poststop", "--socket"],
        &hook(),
        &state("c1", None),
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("permission denied: uid 65533 may not use hpk-netd"),
        "{err}"
    );
    // In the list, not in the group: the socket's mode refuses it.
    let (code, err) = as_user(
        65534,
        65533,
        &["poststop", "--socket"],
        &hook(),
        &state("c1", None),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("permission denied on"), "{err}");
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

/// Run by the flood tests as another user: connects to $HPK_FLOOD_SOCKET again and again
/// sending nothing, and checks every answer. $HPK_FLOOD_EXPECT says which:
/// - `refused`: $HPK_FLOOD_COUNT connections, up to 900 open at once, each answered with
///   the refusal of this uid;
/// - `busy`: connections held open until one is answered "busy", which may come only once
///   [`CONNECTION_CAP`] of them hold a slot; then every one's answer is read.
///
/// A failed connect or another answer fails it (its exit status, which the tests check).
#[test]
#[ignore = "a helper the flood tests run as another user"]
fn flood_helper() {
    let (Ok(path), Ok(expect)) = (
        std::env::var("HPK_FLOOD_SOCKET"),
        std::env::var("HPK_FLOOD_EXPECT"),
    ) else {
        return;
    };
    match expect.as_str() {
        "refused" => {
            let count: usize = std::env::var("HPK_FLOOD_COUNT").unwrap().parse().unwrap();
            flood_refused(Path::new(&path), count);
        }
        "busy" => flood_until_busy(Path::new(&path)),
        other => panic!("HPK_FLOOD_EXPECT={other:?}"),
    }
}

/// The whole answer on `c`, up to hpk-netd's closing it.
fn answer_of(mut c: UnixStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("no answer: {e} (after {answer:?})"));
    answer
}

fn flood_refused(path: &Path, count: usize) {
    let refusal = format!(
        "permission denied: uid {} may not use hpk-netd",
        nix::unistd::getuid()
    );
    let mut held = std::collections::VecDeque::new();
    let check = |c: UnixStream| {
        let answer = answer_of(c);
        assert!(answer.contains(&refusal), "{answer:?}");
    };
    for i in 0..count {
        let c = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        held.push_back(c);
        if held.len() > 900 {
            check(held.pop_front().unwrap());
        }
    }
    held.into_iter().for_each(check);
}

fn flood_until_busy(path: &Path) {
    let busy = format!("hpk-netd is busy ({CONNECTION_CAP} connections open); retry");
    // Connections opened and not answered yet, with what came on each so far.
    let mut held: Vec<(UnixStream, Vec<u8>)> = Vec::new();
    let mut answers = Vec::new();
    for i in 0..2000 {
        let c = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        c.set_nonblocking(true).unwrap();
        held.push((c, Vec::new()));
        held.retain_mut(|(c, answer)| {
            let mut buf = [0u8; 512];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(e) => panic!("reading an answer: {e}"),
                }
            }
            answers.push(String::from_utf8_lossy(answer).into_owned());
            false
        });
        if answers.iter().any(|a| a.contains(&busy)) {
            break;
        }
    }
    assert!(
        answers.iter().any(|a| a.contains(&busy)),
        "2000 connections and none answered busy"
    );
    // The rest are answered too: busy, or (a slot's holder) once its request's time is
    // up. When "busy" came, every slot was held by one of ours: at least the cap's number
    // of them had a slot.
    for (mut c, mut answer) in held {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.read_to_end(&mut answer).unwrap();
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    let slotted = answers
        .iter()
        .filter(|a| a.contains("no request within 5s"))
        .count();
    let turned_away = answers.iter().filter(|a| a.contains(&busy)).count();
    assert_eq!(
        slotted + turned_away,
        answers.len(),
        "other answers: {answers:?}"
    );
    assert!(
        slotted >= CONNECTION_CAP,
        "busy with {slotted} connections served (of {})",
        answers.len()
    );
}

/// Starts the flood helper as uid 65534 with `env`.
fn run_flood_helper(env: &[(&str, &str)]) -> Proc {
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args(["flood_helper", "--exact", "--ignored", "--nocapture"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Proc {
        child,
        what: "the flood helper".into(),
    }
}

/// Waits for the flood helper; fails unless it ran its test and passed.
fn flood_helper_passed(mut helper: Proc) {
    let (code, err) = helper.wait_exit(Duration::from_secs(120));
    let mut out = String::new();
    helper
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(code, Some(0), "the flood helper failed: {out}{err}");
    assert!(
        out.contains("1 passed"),
        "the flood helper ran nothing: {out}"
    );
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
    stop_by_poststop(&netd, &runc.run("warm", &b).unwrap());
    let fds_before = fds();
    // A user who may not use hpk-netd opens thousands of idle connections (refused
    // before they take a slot); root sends garbage, oversized and half requests, in four
    // threads.
    let idle = run_flood_helper(&[
        ("HPK_FLOOD_SOCKET", netd.socket.to_str().unwrap()),
        ("HPK_FLOOD_EXPECT", "refused"),
        ("HPK_FLOOD_COUNT", "4000"),
    ]);
    let garbage: Vec<_> = (0..4)
        .map(|t| {
            let path = netd.socket.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    let mut c = UnixStream::connect(&path)
                        .unwrap_or_else(|e| panic!("connect {t}/{i}: {e}"));
                    let (bad, expect): (Vec<u8>, &str) = match (t + i) % 3 {
                        0 => (b"{not json\n".to_vec(), "malformed request"),
                        1 => (vec![b'x'; 70 << 10], "request longer than 65536 bytes"),
                        _ => (
                            br#"{"op":"attach","id":"half"#.to_vec(),
                            "malformed request",
                        ),
                    };
                    // Refused early, the oversized one may find the socket closed.
                    let _ = c.write_all(&bad);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let mut answer = String::new();
                    let _ = c.read_to_string(&mut answer);
                    assert!(
                        answer.contains("\"error\"") && answer.contains(expect),
                        "{t}/{i}: {answer:?} (expected {expect:?})"
                    );
                }
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
    // Every bad request got its error (below the cap, none is turned away busy).
    for t in garbage {
        t.join().unwrap();
    }
    flood_helper_passed(idle);
    assert_eq!(netd.status().endpoints.len(), 8);
    for c in &started {
        assert!(c.exec(&["ip", "addr", "show", "tap0"]).status.success());
    }
    let log = netd.log();
    assert!(log.contains("refused a control peer"), "{log}");
    for c in &started {
        stop_by_poststop(&netd, c);
    }
    netd.assert_empty(&ns, &[]);
    // Every connection's descriptor was closed again.
    wait_until(
        "hpk-netd's descriptors to settle",
        Duration::from_secs(10),
        || fds() <= fds_before + 2,
    );
}

/// Allowed peers holding connections open meet the cap: the next is answered "busy" at
/// once (not queued); once they go, hpk-netd serves again and holds no more descriptors.
#[test]
fn idle_connections_of_an_allowed_user_meet_the_cap() {
    let (s, ns, netd) = bubble(
        "10.244.3.1/24",
        &["--socket-mode", "0666", "--allowed-uids", "0,65534"],
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", netd.proc.pid()))
            .unwrap()
            .count()
    };
    let (b, runc) = sleeper(&s.0, &ns, &netd);
    stop_by_poststop(&netd, &runc.run("warm", &b).unwrap());
    let fds_before = fds();
    flood_helper_passed(run_flood_helper(&[
        ("HPK_FLOOD_SOCKET", netd.socket.to_str().unwrap()),
        ("HPK_FLOOD_EXPECT", "busy"),
    ]));
    assert!(
        !netd.log().contains("refused a control peer"),
        "uid 65534 was refused"
    );
    // The flood's connections went with it: a container starts.
    let c = runc.run("after", &b).expect("a start after the flood");
    stop_by_poststop(&netd, &c);
    netd.assert_empty(&ns, &[]);
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
    stop_by_poststop(&netd, &c);
    netd.assert_empty(&ns, &[]);
}
