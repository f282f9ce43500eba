//! Bad input and broken surroundings: one clear line, exit status 125, nothing left
//! behind (links, addresses, processes, directories). And a SIGKILLed hpktainer: the next
//! `ps` or `run` shows and sweeps what it left.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{stderr, Env};
use testkit::{wait_until, Proc};

/// Runs `args`, expects hpktainer's own failure with `needle` in one error line.
fn refused(env: &Env, args: &[&str], needle: &str) {
    let out = env.out(args);
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {msg}");
    let errors: Vec<_> = msg
        .lines()
        .filter(|l| l.starts_with("hpktainer: "))
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: not one error line: {msg}");
    assert!(errors[0].contains(needle), "{args:?}: {msg}");
    env.assert_clean();
}

#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing() {
    let env = Env::new("10.244.13.1/24");
    let r = env.rootfs();
    refused(
        &env,
        &["run", "/no/such/image", "true"],
        "unknown image \"/no/such/image\"",
    );
    refused(
        &env,
        &["run", "docker://Bad/Name", "true"],
        "malformed image reference",
    );
    refused(
        &env,
        &["run", "docker://127.0.0.1:5999/none/here:1", "true"],
        "connection refused",
    );
    refused(
        &env,
        &["run", "--runtime", "no-such-runtime", r, "true"],
        "runtime no-such-runtime not found on PATH",
    );
    refused(
        &env,
        &["run", "-v", "/no/such/src:/x", r, "true"],
        "the source /no/such/src does not exist",
    );
    refused(
        &env,
        &["run", "--ip", "10.99.0.5", r, "true"],
        "outside this bubble's subnet 10.244.13.0/24",
    );
    refused(
        &env,
        &["run", "--name", "bad/name", r, "true"],
        "container name \"bad/name\": use 1 to 64 letters, digits, '_', '.', '-'",
    );
    // hpk-netd down: a socket nobody serves.
    let dead = env.dir.join("dead.sock");
    let out = env
        .bubble
        .nsenter(support::HPKTAINER)
        .arg("--root")
        .arg(&env.root)
        .arg("--socket")
        .arg(&dead)
        .args(["run", r, "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("hpk-netd is not running"),
        "{}",
        stderr(&out)
    );
    env.assert_clean();

    // Commands on a container that does not exist: one clear line, and nothing made.
    let before = tree(&env.root);
    for args in [
        &["exec", "nosuch", "true"][..],
        &["stop", "nosuch"],
        &["logs", "nosuch"],
        &["rm", "nosuch"],
    ] {
        let out = env.out(args);
        let msg = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {msg}");
        assert!(
            msg.lines().next().is_some_and(
                |l| l == "hpktainer: no container named nosuch (see `hpktainer ps -a`)"
            ),
            "{args:?}: {msg}"
        );
        assert_eq!(support::stdout(&out), "", "{args:?}");
        assert_eq!(tree(&env.root), before, "{args:?} made something");
    }
    env.assert_clean();

    // A name in use.
    env.ok(&["run", "-d", "--name", "taken", r, "sleep", "600"]);
    let out = env.out(&["run", "--name", "taken", r, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("the name taken is already in use"),
        "{}",
        stderr(&out)
    );
    // A running container is not removed without --force: it says how, and runs on.
    let out = env.out(&["rm", "taken"]);
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{msg}");
    assert!(
        msg.contains("hpktainer: taken is running: `hpktainer stop taken` first, or rm --force"),
        "{msg}"
    );
    assert!(
        env.ps()
            .iter()
            .any(|c| c["name"] == "taken" && c["status"] == "detached"),
        "{:?}",
        env.ps()
    );
    assert_eq!(
        env.ok(&["exec", "taken", "echo", "still here"]).trim(),
        "still here"
    );
    assert!(env.netd.status().endpoints.iter().any(|e| e.id == "taken"));
    // A static address someone holds: the hook's refusal, and hpktainer's own exit status.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "--ip",
        "10.244.13.50",
        r,
        "sleep",
        "600",
    ]);
    let out = env.out(&["run", "--ip", "10.244.13.50", r, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).lines().any(
            |l| l.contains("hpk-hook") && l.contains("address 10.244.13.50 is in use by first")
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("hpktainer: runc could not start the container"),
        "{}",
        stderr(&out)
    );
    env.ok(&["rm", "--force", "taken", "first"]);
    env.assert_clean();
    // Nothing half-unpacked in the image cache either.
    let tmp: Vec<_> = std::fs::read_dir(env.root.join("images/rootfs"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

/// Every path under `dir`, sorted.
fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
            all.push(e.path());
        }
    }
    all.sort();
    all
}

/// Starts a foreground `hpktainer run` and waits until its container is attached.
fn foreground(env: &Env, name: &str, script: &str) -> Proc {
    foreground_with(env, &[], name, script)
}

/// [`foreground`] with more options for `run` (`--runtime crun`).
fn foreground_with(env: &Env, opts: &[&str], name: &str, script: &str) -> Proc {
    // Not a pipe: the container inherits hpktainer's stdio and would hold it open.
    let log = std::fs::File::create(env.dir.join(format!("{name}.err"))).unwrap();
    let mut args = vec!["run"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--name", name, env.rootfs(), "sh", "-c", script]);
    let child = env
        .hpk(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Proc {
        child,
        what: format!("hpktainer run {name}"),
    };
    wait_until(
        "the container to be attached",
        Duration::from_secs(20),
        || env.netd.status().endpoints.iter().any(|e| e.id == name),
    );
    p
}

#[test]
fn a_killed_hpktainer_is_swept_by_the_next_ps_and_run() {
    let env = Env::new("10.244.14.1/24");
    let mut p = foreground(&env, "k1", "sleep 600");
    let rows = env.ps();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "running");
    p.stop_with(Signal::SIGKILL);
    let out = env.out(&["ps", "-a"]);
    assert!(stderr(&out).contains("removed k1"), "{}", stderr(&out));
    assert!(!support::stdout(&out).contains("k1"));
    env.assert_clean();

    // The same through the next run.
    let mut p = foreground(&env, "k2", "sleep 600");
    p.stop_with(Signal::SIGKILL);
    assert_eq!(
        env.ok(&["run", env.rootfs(), "echo", "next"]).trim(),
        "next"
    );
    env.assert_clean();

    // SIGTERM, SIGHUP, SIGQUIT and SIGINT (Ctrl-C) to a foreground hpktainer reach the
    // container, whose trap for that signal decides the exit code (a PID 1 without a
    // handler would ignore it, as under any runtime), under either runtime.
    for rt in ["runc", "crun"] {
        for (sig, trap, code) in [
            (Signal::SIGTERM, "TERM", 42),
            (Signal::SIGHUP, "HUP", 43),
            (Signal::SIGQUIT, "QUIT", 44),
            (Signal::SIGINT, "INT", 45),
        ] {
            let name = format!("k3-{rt}-{}", trap.to_lowercase());
            let marker = format!("{}-{name}", env.prefix);
            let mut p = foreground_with(
                &env,
                &["--runtime", rt],
                &name,
                &format!(": {marker}; trap 'exit {code}' {trap}; while true; do sleep 1; done"),
            );
            // The trap is set once the loop sleeps.
            wait_until("the container's loop", Duration::from_secs(20), || {
                support::sleeping_under(&marker)
            });
            let (got, _) = p.stop_with(sig);
            let err = std::fs::read_to_string(env.dir.join(format!("{name}.err"))).unwrap();
            assert_eq!(got, Some(code), "{rt}, {sig}: {err}");
            env.assert_clean();
        }
    }

    // A detached container that ended keeps its log until prune.
    env.ok(&["run", "-d", "--name", "ended", env.rootfs(), "echo", "bye"]);
    wait_until("the container to end", Duration::from_secs(10), || {
        env.ps()
            .iter()
            .any(|r| r["name"] == "ended" && r["status"] == "exited")
    });
    assert_eq!(env.ok(&["logs", "ended"]).trim(), "bye");
    assert_eq!(env.ok(&["prune"]).trim(), "ended");
    env.assert_clean();

    // A detached --rm container that ended on its own is swept by the next ps.
    env.ok(&["run", "-d", "--rm", "--name", "short", env.rootfs(), "true"]);
    wait_until(
        "the --rm container to be swept",
        Duration::from_secs(10),
        || env.ps().is_empty(),
    );
    env.assert_clean();
}
