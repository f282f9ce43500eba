//! Devices without GPUs: a made-up vendor's CDI specs (YAML and JSON, two spec versions)
//! whose device nodes are /dev/null and /dev/zero under other names, with a mount, an
//! environment variable and a hook, applied by runc and crun as root and in a rootless
//! bubble; plain `--device` nodes; `--gpus` picking the GPUs Slurm or CUDA name from a
//! stand-in NVIDIA spec; `--ulimit`; and bad specs, missing devices and unreachable nodes
//! refused before anything exists.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{stderr, stdout, Env};
use testkit::netd::{subnet_env, Netd};
use testkit::rootless::{RootlessBubble, BUBBLE_USER as USER};
use testkit::world::World;
use testkit::{prefix, run, wait_until, Scratch};

/// The container's view of what the specs gave it.
const SCRIPT: &str = "stat -c '%n %t:%T %F' /dev/fake0 /dev/fake1; \
    echo hi > /dev/fake0 && echo wrote; head -c 4 /dev/fake1 | od -An -tx1; \
    cat /vendor/file; echo \"env $FAKE_DEV $VENDOR $OTHER\"; ulimit -n; ulimit -H -n";

/// `dir/cdi`: example.test/dev (YAML, cdiVersion 0.6.0: devices a and b, a mount, an
/// environment variable and a createRuntime hook writing the container's state to
/// `dir/hook-ran`) and example.test/other (JSON, cdiVersion 0.3.0).
fn write_specs(dir: &Path) -> PathBuf {
    let cdi = dir.join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/file"), "vendor-data\n").unwrap();
    let hook_out = dir.join("hook-ran");
    std::fs::write(
        cdi.join("vendor.yaml"),
        format!(
            r#"cdiVersion: "0.6.0"
kind: example.test/dev
annotations:
  purpose: test
devices:
  - name: a
    containerEdits:
      env: ["FAKE_DEV=a"]
      deviceNodes:
        - path: /dev/fake0
          hostPath: /dev/null
  - name: b
    containerEdits:
      deviceNodes:
        - path: /dev/fake1
          hostPath: /dev/zero
          permissions: rw
containerEdits:
  env: ["VENDOR=example"]
  mounts:
    - hostPath: {share}
      containerPath: /vendor
      options: [ro, nosuid, nodev, bind]
  hooks:
    - hookName: createRuntime
      path: /bin/sh
      args: [sh, -c, "cat > {hook}"]
      env: ["PATH=/usr/bin:/bin"]
"#,
            share = dir.join("share").display(),
            hook = hook_out.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        cdi.join("other.json"),
        r#"{"cdiVersion": "0.3.0", "kind": "example.test/other",
            "devices": [{"name": "x", "containerEdits": {"env": ["OTHER=x"]}}]}"#,
    )
    .unwrap();
    cdi
}

/// What [`SCRIPT`] prints when every edit reached the container.
fn assert_edits_applied(text: &str) {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "/dev/fake0 1:3 character special file",
            "/dev/fake1 1:5 character special file",
            "wrote",
            "00 00 00 00",
            "vendor-data",
            "env a example x",
            "512",
            "1024",
        ],
        "{text}"
    );
}

fn device_args<'a>(cdi: &'a str, rt: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--runtime",
        rt,
        "--cdi-spec-dir",
        cdi,
        "--device",
        "example.test/dev=all",
        "--device",
        "example.test/other=x",
        "--ulimit",
        "nofile=512:1024",
    ]
}

fn cdi_devices_as_root(rt: &str, net: &str) {
    let env = Env::new(&format!("{net}.1/24"));
    let cdi = write_specs(&env.dir);
    let cdi = cdi.to_str().unwrap();
    let mut args = device_args(cdi, rt);
    args.extend([env.rootfs(), "sh", "-c", SCRIPT]);
    assert_edits_applied(&env.ok(&args));
    let state = std::fs::read_to_string(env.dir.join("hook-ran")).unwrap();
    assert!(state.contains("\"id\""), "the hook got the state: {state}");

    // The bundle: nodes with their numbers and a cgroup rule each, as asked.
    let mut args = device_args(cdi, rt);
    args.extend(["-d", "--name", "cfg", env.rootfs(), "sleep", "600"]);
    env.ok(&args);
    let config = env.root.join("containers/cfg/bundle/config.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    env.ok(&["rm", "--force", "cfg"]);
    let devices = &spec["linux"]["devices"];
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/dev/fake1"
                && d["type"] == "c"
                && d["major"] == 1
                && d["minor"] == 5),
        "{devices}"
    );
    let rules = &spec["linux"]["resources"]["devices"];
    assert!(
        rules.as_array().unwrap().iter().any(|r| r["allow"] == true
            && r["major"] == 1
            && r["minor"] == 5
            && r["access"] == "rw"),
        "{rules}"
    );
    env.assert_clean();
}

#[test]
fn runc_applies_cdi_devices_as_root() {
    cdi_devices_as_root("runc", "10.244.60");
}

#[test]
fn crun_applies_cdi_devices_as_root() {
    cdi_devices_as_root("crun", "10.244.61");
}

#[test]
fn plain_devices_and_gpus_by_slurm_and_cuda() {
    let env = Env::new("10.244.62.1/24");
    let r = env.rootfs();
    let out = env.ok(&[
        "run",
        "--device",
        "/dev/zero:/dev/z0:r",
        "--device",
        "/dev/null",
        r,
        "sh",
        "-c",
        "stat -c '%n %t:%T' /dev/z0 /dev/null",
    ]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["/dev/z0 1:5", "/dev/null 1:3"]
    );

    // A stand-in for what `nvidia-ctk cdi generate` writes: GPUs by index, and "all".
    let cdi = env.dir.join("nvidia");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::write(
        cdi.join("nvidia.yaml"),
        r#"cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes: [{path: /dev/nvidia0, hostPath: /dev/null}]
  - name: "1"
    containerEdits:
      deviceNodes: [{path: /dev/nvidia1, hostPath: /dev/zero}]
  - name: all
    containerEdits:
      deviceNodes:
        - {path: /dev/nvidia0, hostPath: /dev/null}
        - {path: /dev/nvidia1, hostPath: /dev/zero}
containerEdits:
  env: ["NVIDIA_VISIBLE_DEVICES=void"]
"#,
    )
    .unwrap();
    let gpus = |flag: &str, vars: &[(&str, &str)]| {
        let mut cmd = env.hpk(&[
            "run",
            flag,
            "--cdi-spec-dir",
            cdi.to_str().unwrap(),
            r,
            "sh",
            "-c",
            "ls /dev/ | grep nvidia | tr '\\n' ' '",
        ]);
        for v in ["CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"] {
            cmd.env_remove(v);
        }
        cmd.envs(vars.iter().copied());
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{vars:?}: {}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(gpus("--nv", &[]), "nvidia0 nvidia1");
    assert_eq!(gpus("--nv", &[("CUDA_VISIBLE_DEVICES", "1")]), "nvidia1");
    // Slurm's absolute indices win over CUDA's (renumbered in the job's cgroup).
    assert_eq!(
        gpus(
            "--nv",
            &[("SLURM_JOB_GPUS", "0"), ("CUDA_VISIBLE_DEVICES", "1")]
        ),
        "nvidia0"
    );
    assert_eq!(gpus("--gpus=1", &[("SLURM_JOB_GPUS", "0")]), "nvidia1");
    env.assert_clean();
}

/// hpktainer's own failure: exit status 125, one error line holding every needle, nothing
/// created.
fn refused(env: &Env, args: &[&str], needles: &[&str]) {
    let out = env.out(args);
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {msg}");
    let errors: Vec<_> = msg
        .lines()
        .filter(|l| l.starts_with("hpktainer: "))
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: not one error line: {msg}");
    for n in needles {
        assert!(errors[0].contains(n), "{args:?}: no {n:?} in {msg}");
    }
    env.assert_clean();
}

#[test]
fn bad_specs_and_missing_devices_are_refused_before_anything_exists() {
    let env = Env::new("10.244.63.1/24");
    let cdi = write_specs(&env.dir);
    let bad = cdi.join("broken.yaml");
    std::fs::write(
        &bad,
        "cdiVersion: \"0.3.0\"\nkind: example.test/broken\ndevices:\n  - name: a\n    containerEdits:\n      deviceNodes: [{path: /dev/a, hostPath: /dev/null}]\n",
    )
    .unwrap();
    let c = cdi.to_str().unwrap();
    let r = env.rootfs();
    let run = |device: &'static str| ["run", "--cdi-spec-dir", c, "--device", device, r, "true"];
    refused(
        &env,
        &run("example.test/dev=zz"),
        &[
            "no CDI device example.test/dev=zz",
            "vendor.yaml",
            "it has: a, b",
        ],
    );
    refused(
        &env,
        &run("example.test/broken=a"),
        &["broken.yaml", "invalid", "need 0.5.0"],
    );
    refused(
        &env,
        &run("example.test/none=a"),
        &["no CDI spec of kind example.test/none", c],
    );
    refused(&env, &run("no-kind"), &["not a CDI device name"]);
    refused(
        &env,
        &run("/dev/no-such-node"),
        &["/dev/no-such-node", "cannot be reached"],
    );
    // A spec naming a node this host lacks.
    std::fs::write(
        &bad,
        "cdiVersion: \"0.5.0\"\nkind: example.test/broken\ndevices:\n  - name: a\n    containerEdits:\n      deviceNodes: [{path: /dev/a, hostPath: /dev/no-such-gpu}]\n",
    )
    .unwrap();
    refused(
        &env,
        &run("example.test/broken=a"),
        &[
            "/dev/no-such-gpu",
            "example.test/broken=a in",
            "broken.yaml",
        ],
    );
    refused(
        &env,
        &["run", "--cdi-spec-dir", c, "--gpus", "all", r, "true"],
        &["nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"],
    );
    refused(
        &env,
        &["run", "--ulimit", "nofile=1:99999999", r, "true"],
        &["above your own hard limit for nofile"],
    );
}

/// The user's devices in a rootless bubble (an unprivileged user's namespaces, as on a
/// node): nodes are bind-mounted, everything else as for root; a node the bubble's user
/// may not open is refused with the reason.
#[test]
fn cdi_devices_in_a_rootless_bubble() {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let dir = scratch.0.clone();
    let mut world = World::new(&p);
    let (host, _) = world.host("h");
    std::fs::write(
        dir.join("subnet.env"),
        subnet_env("10.244.64.1/24", 1450, false),
    )
    .unwrap();
    let cdi = write_specs(&dir);
    let rootfs = support::busybox_rootfs(&dir);
    // A node only real root may open.
    let secret = dir.join("secret-node");
    run(Command::new("mknod").arg(&secret).args(["c", "1", "3"]));
    std::fs::create_dir_all(dir.join("home")).unwrap();
    run(Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&dir));
    run(Command::new("chown").arg("0:0").arg(&secret));
    run(Command::new("chmod").arg("600").arg(&secret));

    let rootless = RootlessBubble::start(&host, &p);
    let enter = rootless.enter();
    let netd = Netd::start_rootless(enter.clone(), &dir);
    let hpk = |args: &[&str]| {
        Command::new(&enter[0])
            .args(&enter[1..])
            .arg(support::HPKTAINER)
            .arg("--root")
            .arg(dir.join("hpk"))
            .arg("--socket")
            .arg(&netd.socket)
            .args(args)
            .env("HOME", dir.join("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let c = cdi.to_str().unwrap();
    let r = rootfs.to_str().unwrap();
    for rt in ["runc", "crun"] {
        let _ = std::fs::remove_file(dir.join("hook-ran"));
        let mut args = device_args(c, rt);
        args.extend([r, "sh", "-c", SCRIPT]);
        let out = hpk(&args);
        assert!(
            out.status.success(),
            "{rt}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_edits_applied(&stdout(&out));
        assert!(dir.join("hook-ran").exists(), "{rt}: the hook ran");
    }

    let secret_arg = format!("{}:/dev/secret", secret.display());
    let out = hpk(&["run", "--device", &secret_arg, r, "true"]);
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{msg}");
    assert!(
        msg.contains("secret-node") && msg.contains("cannot be opened") && msg.contains("mode 600"),
        "{msg}"
    );
    wait_until("endpoints released", Duration::from_secs(10), || {
        netd.status().endpoints.is_empty()
    });
    netd.assert_empty(&rootless.ns, &[]);
    assert_eq!(
        std::fs::read_dir(dir.join("hpk/containers"))
            .unwrap()
            .count(),
        0,
        "container directories left"
    );
}

fn standin(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Apptainer's `oci` bundles get the same edits (a stand-in for `apptainer oci`, backed by
/// runc, as in standins.rs); SingularityCE gets the CDI names and directories, and refuses
/// what its `--oci` mode cannot take. Neither program can be installed here.
#[test]
fn apptainer_bundles_get_the_edits_and_singularity_the_cdi_names() {
    let env = Env::new("10.244.65.1/24");
    let d = env.dir.display();
    let cdi = write_specs(&env.dir);
    let c = cdi.to_str().unwrap();
    let apptainer = env.dir.join("standin/apptainer");
    standin(
        &apptainer,
        &format!(
            r#"#!/bin/sh
case "$1 $2" in
"oci mount")
    runc spec --bundle "$4"
    jq --arg r {rootfs} '.root={{path:$r,readonly:true}} | .process.terminal=false' \
        "$4/config.json" > "$4/c.json" && mv "$4/c.json" "$4/config.json" ;;
"oci run")
    exec env -i /usr/sbin/runc --root {d}/apptainer-runc run -b "$4" "$5" ;;
esac
"#,
            rootfs = env.rootfs()
        ),
    );
    let image = "docker://docker.io/chazapis/hpktainer-base:latest";
    let mut args = device_args(c, apptainer.to_str().unwrap());
    args.extend(["--name", "app1", image, "sh", "-c", SCRIPT]);
    assert_edits_applied(&env.ok(&args));
    let _ = Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(env.dir.join("apptainer-runc"))
        .args(["delete", "--force", "app1"])
        .stderr(Stdio::null())
        .status();

    let singularity = env.dir.join("standin/singularity");
    standin(
        &singularity,
        &format!("#!/bin/sh\necho \"$*\" > {d}/singularity.args\n"),
    );
    let s = singularity.to_str().unwrap();
    env.ok(&[
        "run",
        "--runtime",
        s,
        "--cdi-spec-dir",
        c,
        "--device",
        "example.test/dev=a",
        image,
        "true",
    ]);
    let seen = std::fs::read_to_string(env.dir.join("singularity.args")).unwrap();
    let ours = env.root.join("generated/cdi");
    assert!(
        seen.contains(&format!(
            "--device hpktainer.io/net=net --device example.test/dev=a --cdi-dirs {},{c} ",
            ours.display()
        )),
        "{seen}"
    );
    refused(
        &env,
        &[
            "run",
            "--runtime",
            s,
            "--device",
            "/dev/null",
            image,
            "true",
        ],
        &["not passed to SingularityCE"],
    );
}
