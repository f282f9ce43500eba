//! The Apptainer and SingularityCE paths of `hpktainer run`, end to end against stand-in
//! programs (Apptainer and SingularityCE cannot be installed here). The Apptainer stand-in
//! runs the bundle hpktainer edited with real runc and an empty environment, as Apptainer
//! clears it, so our hooks must work as written into the bundle. These stand-ins check
//! hpktainer's side of the contract, not the real programs.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hpktainer::hookset::CdiSpec;
use nix::sys::signal::Signal;
use support::{stderr, stdout, Env};
use testkit::{wait_until, Proc};

fn script(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `apptainer oci mount|run|umount`, backed by runc.
fn apptainer_standin(env: &Env) -> PathBuf {
    let path = env.dir.join("standin/apptainer");
    let d = env.dir.display();
    script(
        &path,
        &format!(
            r#"#!/bin/sh
echo "$*" >> {d}/apptainer.log
case "$1 $2" in
"oci mount")
    runc spec --bundle "$4"
    jq --arg r {rootfs} '.root={{path:$r,readonly:true}} | .process.terminal=false | .process.args=["sh","-c","echo from the image"]' \
        "$4/config.json" > "$4/c.json" && mv "$4/c.json" "$4/config.json" ;;
"oci run")
    cp "$4/config.json" {d}/apptainer-config.json
    exec env -i /usr/sbin/runc --root {d}/apptainer-runc run -b "$4" "$5" ;;
esac
"#,
            rootfs = env.rootfs()
        ),
    );
    path
}

/// Deletes the stand-in's runc container when dropped: after a failed assertion it would
/// outlive the test.
struct StandinContainer(std::process::Command);

impl StandinContainer {
    fn new(env: &Env, id: &str) -> StandinContainer {
        let mut cmd = std::process::Command::new("/usr/sbin/runc");
        cmd.arg("--root")
            .arg(env.dir.join("apptainer-runc"))
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        StandinContainer(cmd)
    }
}

impl Drop for StandinContainer {
    fn drop(&mut self) {
        let _ = self.0.status();
    }
}

#[test]
fn apptainer_bundles_get_our_hooks_and_run() {
    let env = Env::new("10.244.21.1/24");
    let apptainer = apptainer_standin(&env);
    let _container = StandinContainer::new(&env, "app1");
    let rt = apptainer.to_str().unwrap();
    let image = "docker://docker.io/chazapis/hpktainer-base:latest";
    let out = env.out(&[
        "run",
        "--runtime",
        rt,
        "--name",
        "app1",
        "-e",
        "X=1",
        image,
        "sh",
        "-c",
        "ip -4 -o addr show tap0; echo X=$X; exit 6",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(6), "{text}{}", stderr(&out));
    assert!(text.contains("inet 10.244.21."), "{text}");
    assert!(text.contains("X=1"), "{text}");

    // The calls, in order, with the image passed on untouched.
    let log = std::fs::read_to_string(env.dir.join("apptainer.log")).unwrap();
    let calls: Vec<String> = log
        .lines()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(calls, ["oci mount", "oci run", "oci umount"], "{log}");
    assert!(log.lines().next().unwrap().contains(image), "{log}");
    assert!(log.lines().nth(1).unwrap().ends_with(" app1"), "{log}");

    // The edited bundle: hooks with PATH and our socket, a network namespace.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.join("apptainer-config.json")).unwrap())
            .unwrap();
    let create = &config["hooks"]["createRuntime"][0];
    assert!(create["env"][0].as_str().unwrap().starts_with("PATH=/"));
    assert_eq!(create["args"][3], env.netd.socket.to_str().unwrap());
    assert!(config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "network"));
    env.assert_clean();

    // Not root: a clear refusal before anything runs.
    let home = env.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = env
        .bubble
        .nsenter("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(support::HPKTAINER)
        .arg("--root")
        .arg(home.join("hpk"))
        .args(["run", "--network", "none", "--runtime", rt, image, "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("Apptainer runs OCI bundles only as root or with --fakeroot"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigterm_reaches_an_apptainer_container() {
    let env = Env::new("10.244.26.1/24");
    let apptainer = apptainer_standin(&env);
    let _container = StandinContainer::new(&env, "app2");
    let marker = format!("{}-loop", env.prefix);
    let script = format!(": {marker}; trap 'exit 42' TERM; while true; do sleep 1; done");
    // Not a pipe: the container inherits hpktainer's stdio and would hold it open.
    let log = std::fs::File::create(env.dir.join("app2.err")).unwrap();
    let child = env
        .hpk(&[
            "run",
            "--runtime",
            apptainer.to_str().unwrap(),
            "--name",
            "app2",
            "docker://docker.io/chazapis/hpktainer-base:latest",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        what: "hpktainer run app2".into(),
    };
    wait_until(
        "the container to be attached",
        Duration::from_secs(20),
        || env.netd.status().endpoints.iter().any(|e| e.id == "app2"),
    );
    // Its trap is set once its loop sleeps.
    wait_until("the container's loop", Duration::from_secs(20), || {
        support::sleeping_under(&marker)
    });
    let (code, _) = p.stop_with(Signal::SIGTERM);
    let err = std::fs::read_to_string(env.dir.join("app2.err")).unwrap();
    assert_eq!(code, Some(42), "{err}");
    let calls = std::fs::read_to_string(env.dir.join("apptainer.log")).unwrap();
    assert!(
        calls.lines().last().unwrap().starts_with("oci umount"),
        "{calls}"
    );
    env.assert_clean();
}

#[test]
fn singularity_gets_our_cdi_device() {
    let env = Env::new("10.244.22.1/24");
    let path = env.dir.join("standin/singularity");
    let d = env.dir.display();
    // Records its arguments and the CDI directory it was pointed at.
    script(
        &path,
        &format!(
            "#!/bin/sh\necho \"$*\" > {d}/singularity.args\nwhile [ $# -gt 0 ]; do [ \"$1\" = --cdi-dirs ] && cp -r \"$2\" {d}/cdi-seen; shift; done\nexit 6\n"
        ),
    );
    let image = "docker://docker.io/chazapis/hpktainer-base:latest";
    let out = env.out(&[
        "run",
        "--runtime",
        path.to_str().unwrap(),
        "-e",
        "A=1",
        image,
        "ip",
        "addr",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let args = std::fs::read_to_string(env.dir.join("singularity.args")).unwrap();
    assert!(
        args.starts_with(
            "exec --oci --net --network none --device hpktainer.io/net=net --cdi-dirs "
        ),
        "{args}"
    );
    assert!(
        args.trim_end()
            .ends_with(&format!("--env A=1 {image} ip addr")),
        "{args}"
    );
    let spec: CdiSpec = serde_json::from_slice(
        &std::fs::read(env.dir.join("cdi-seen/hpktainer.io-net.json")).unwrap(),
    )
    .unwrap();
    let hooks = &spec.devices[0].container_edits.hooks;
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].path, testkit::hook_binary());
    assert_eq!(hooks[0].args[3], env.netd.socket.to_str().unwrap());
    // --ip cannot reach the hook through a CDI device: refused.
    let out = env.out(&[
        "run",
        "--runtime",
        path.to_str().unwrap(),
        "--ip",
        "10.244.22.9",
        image,
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--ip cannot reach the hook"),
        "{}",
        stderr(&out)
    );
    env.assert_clean();
}
