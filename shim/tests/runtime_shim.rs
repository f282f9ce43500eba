//! `hpktainer runtime` driven with runc's own command line, as Docker or containerd would:
//! a bundle made by `runc spec --rootless` (no network namespace, no hooks) gets both on
//! `run`, idempotently; other verbs pass through, also through the `hpktainer-runtime` name.
//! And our hook under the deprecated `prestart` stage, as runtimes that know no other
//! call it: it attaches like createRuntime.

mod support;

use std::process::{Command, Stdio};

use serde_json::Value;
use support::{stderr, stdout, Env};
use testkit::run;
use testkit::runc::{bundle, BundleSpec, Runc};

#[test]
fn the_shim_adds_hooks_and_a_network_namespace() {
    let env = Env::new("10.244.24.1/24");
    let bundle = env.dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    run(Command::new("runc")
        .args(["spec", "--rootless", "--bundle"])
        .arg(&bundle));
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["process"]["terminal"] = Value::Bool(false);
    config["process"]["args"] = serde_json::json!(["sh", "-c", "ip -4 -o addr show tap0"]);
    config["root"] = serde_json::json!({"path": env.rootfs, "readonly": true});
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();

    let state = env.dir.join("runc-state");
    let shim = |prog: &str, args: &[&str]| {
        env.bubble
            .nsenter(prog)
            .args(args)
            .current_dir(&bundle)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let socket = env.netd.socket.to_str().unwrap();
    let root = state.to_str().unwrap();
    // runc's global options before the verb; the bundle from the working directory.
    let out = shim(
        support::HPKTAINER,
        &[
            "runtime",
            "--runtime-path",
            "/usr/sbin/runc",
            "--socket",
            socket,
            "--root",
            root,
            "run",
            "s1",
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("inet 10.244.24."), "{}", stdout(&out));

    let edited = std::fs::read_to_string(&config_path).unwrap();
    let v: Value = serde_json::from_str(&edited).unwrap();
    assert_eq!(v["hooks"]["createRuntime"][0]["args"][1], "createRuntime");
    assert_eq!(v["hooks"]["createRuntime"][0]["args"][3], socket);
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "network"));

    // Again: the same config (idempotent), the same result.
    let out = shim(
        support::HPKTAINER,
        &[
            "runtime",
            "--runtime-path",
            "/usr/sbin/runc",
            "--socket",
            socket,
            "--root",
            root,
            "run",
            "s2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), edited);

    // Pass-through under the hpktainer-runtime name: runc's own output.
    let link = env.dir.join("hpktainer-runtime");
    std::os::unix::fs::symlink(support::HPKTAINER, &link).unwrap();
    let out = shim(
        link.to_str().unwrap(),
        &[
            "--runtime-path",
            "/usr/sbin/runc",
            "--root",
            root,
            "list",
            "-q",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "", "foreground runs were deleted");
    let out = shim(
        link.to_str().unwrap(),
        &["--runtime-path", "/usr/sbin/runc", "--version"],
    );
    assert!(stdout(&out).starts_with("runc version"), "{}", stdout(&out));
    env.assert_clean();
}

/// A bundle naming our hook at `prestart`, run by plain runc: the container gets its
/// address on tap0 and reaches the gateway, as with createRuntime; poststop detaches it.
#[test]
fn a_prestart_hook_attaches_like_create_runtime() {
    let env = Env::new("10.244.27.1/24");
    let b = bundle(
        &env.dir,
        "prestart",
        &BundleSpec {
            args: &["sleep", "600"],
            socket: &env.netd.socket,
            annotations: &[],
            rootless: false,
            no_hooks: false,
        },
    );
    // Our createRuntime hook, moved to prestart and called so.
    let path = b.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hooks = config["hooks"].as_object_mut().unwrap();
    let mut hook = hooks.remove("createRuntime").unwrap();
    hook[0]["args"][1] = "prestart".into();
    hooks.insert("prestart".into(), hook);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let id = format!("{}-pre", env.prefix);
    let container = Runc::new(&env.bubble, &env.dir)
        .run(&id, &b)
        .unwrap_or_else(|e| panic!("runc run: {e}"));
    let address = env.address_of(&id);
    let inside = container.exec(&["ip", "-4", "-o", "addr", "show", "tap0"]);
    assert!(
        stdout(&inside).contains(&format!("inet {address}/24")),
        "{}{}",
        stdout(&inside),
        stderr(&inside)
    );
    assert!(container.ping("10.244.27.1"), "the gateway does not answer");
    // runc delete runs poststop: the endpoint goes.
    container.stop();
    testkit::wait_until(
        "poststop to detach",
        std::time::Duration::from_secs(10),
        || env.netd.status().endpoints.is_empty(),
    );
    drop(container);
    env.assert_clean();
}
