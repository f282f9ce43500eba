//! Podman 4.3 (Debian) with our hooks: the hooks.d files `hpktainer hooks install`
//! writes, and Podman's `--runtime` pointing at `hpktainer runtime`. Podman keeps its
//! storage under the test's directory.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use support::{stderr, stdout, Env};
use testkit::run;

struct Podman<'a> {
    env: &'a Env,
    dir: PathBuf,
    hooks_dir: PathBuf,
}

impl<'a> Podman<'a> {
    fn new(env: &'a Env) -> Podman<'a> {
        let dir = env.dir.join("podman");
        std::fs::create_dir_all(&dir).unwrap();
        // These VMs lack CAP_SYS_RESOURCE: Podman's default nofile limit makes runc fail.
        // File locks under the test's tmpdir: the default shared-memory locks are one
        // machine-wide set (/dev/shm/libpod_lock) that parallel tests race to create.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\nlock_type = \"file\"\n",
        )
        .unwrap();
        let p = Podman {
            env,
            hooks_dir: env.dir.join("hooks.d"),
            dir,
        };
        // An image from the busybox rootfs (no registry is reachable from here).
        let tar = p.dir.join("rootfs.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&env.rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        run(p
            .cmd()
            .arg("import")
            .arg(&tar)
            .arg("localhost/hpk-busybox:test")
            .stdout(Stdio::null()));
        p
    }

    fn cmd(&self) -> Command {
        let mut cmd = self.env.bubble.nsenter("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("HPK_NETD_SOCKET", &self.env.netd.socket)
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"));
        cmd
    }

    fn out(&self, global: &[&str], args: &[&str]) -> Output {
        self.cmd()
            .args(global)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, global: &[&str], args: &[&str]) -> String {
        let out = self.out(global, args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
        let _ = self.cmd().args(["system", "reset", "--force"]).output();
    }
}

fn installed_hooks(env: &Env) -> Vec<PathBuf> {
    let hooks = env.dir.join("hooks.d");
    let cdi = env.dir.join("cdi");
    let args = [
        "hooks",
        "install",
        "--podman",
        hooks.to_str().unwrap(),
        "--cdi",
        cdi.to_str().unwrap(),
    ];
    env.ok(&args);
    // Idempotent: a second install changes nothing.
    let again = env.ok(&args);
    assert!(again.lines().all(|l| l.starts_with("unchanged")), "{again}");
    std::fs::read_dir(&hooks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Podman's full ids of the containers `names` (hpk-netd's endpoints carry them).
fn podman_ids(p: &Podman, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            p.ok(&[], &["inspect", "--format", "{{.Id}}", n])
                .trim()
                .to_owned()
        })
        .collect()
}

fn tap_address(text: &str) -> Option<String> {
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap().to_string())
}

#[test]
fn podman_runs_our_hooks_from_hooks_d() {
    let env = Env::new("10.244.15.1/24");
    let files = installed_hooks(&env);
    assert_eq!(files.len(), 2, "{files:?}");
    let p = Podman::new(&env);
    let hooks = format!("--hooks-dir={}", p.hooks_dir.display());
    let image = "localhost/hpk-busybox:test";

    let got = p.ok(
        &[&hooks],
        &[
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "tap0",
        ],
    );
    let addr = tap_address(&got).unwrap_or_else(|| panic!("no tap0 address: {got}"));
    assert!(addr.starts_with("10.244.15."), "{got}");

    // Two detached containers talk over the bubble's bridge.
    p.ok(
        &[&hooks],
        &[
            "run",
            "-d",
            "--name",
            "pa",
            "--network",
            "none",
            image,
            "sleep",
            "600",
        ],
    );
    p.ok(
        &[&hooks],
        &[
            "run",
            "-d",
            "--name",
            "pb",
            "--network",
            "none",
            image,
            "sleep",
            "600",
        ],
    );
    let b = p.ok(
        &[],
        &["exec", "pb", "ip", "-4", "-o", "addr", "show", "tap0"],
    );
    let b_addr = tap_address(&b).unwrap();
    p.ok(&[], &["exec", "pa", "ping", "-c", "1", "-W", "2", &b_addr]);
    assert_eq!(env.netd.status().endpoints.len(), 2);
    // Podman runs poststop itself at cleanup: its hook frees both (hpk-netd's own reaping
    // of dead containers would too, later: its log tells which one did).
    let ids = podman_ids(&p, &["pa", "pb"]);
    p.ok(&[&hooks], &["rm", "--force", "--time", "0", "pa", "pb"]);
    for id in &ids {
        assert_eq!(env.netd.wait_detached(id), "poststop", "{id}");
    }
    assert!(env.netd.status().endpoints.is_empty());
    drop(p);
    env.ok(&[
        "hooks",
        "uninstall",
        "--podman",
        env.dir.join("hooks.d").to_str().unwrap(),
        "--cdi",
        env.dir.join("cdi").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_dir(env.dir.join("hooks.d")).unwrap().count(),
        0
    );
    env.assert_clean();
}

/// What Podman's --runtime names: a wrapper passing our options (conmon does not pass
/// HPK_NETD_SOCKET on).
fn runtime_wrapper(env: &Env, real: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.dir.join("hpk-runtime");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec {} runtime --runtime-path {real} --socket {} \"$@\"\n",
            support::HPKTAINER,
            env.netd.socket.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn podman_with_hpktainer_runtime_over_runc() {
    podman_with_hpktainer_runtime("/usr/sbin/runc", "10.244.16");
}

/// Podman runs crun itself only with our workaround for this host's hybrid cgroups.
#[test]
fn podman_with_hpktainer_runtime_over_crun() {
    podman_with_hpktainer_runtime("/usr/bin/crun", "10.244.17");
}

fn podman_with_hpktainer_runtime(real: &str, net: &str) {
    let env = Env::new(&format!("{net}.1/24"));
    let p = Podman::new(&env);
    let link = runtime_wrapper(&env, real);
    let runtime = format!("--runtime={}", link.display());
    let got = p.ok(
        &[&runtime],
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "localhost/hpk-busybox:test",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "tap0",
        ],
    );
    let addr = tap_address(&got).unwrap_or_else(|| panic!("no tap0 address: {got}"));
    assert!(addr.starts_with(&format!("{net}.")), "{got}");
    // Other verbs pass through: a detached container, exec, stop, rm.
    p.ok(
        &[&runtime],
        &[
            "run",
            "-d",
            "--name",
            "rt1",
            "--network",
            "none",
            "localhost/hpk-busybox:test",
            "sleep",
            "600",
        ],
    );
    let inside = p.ok(
        &[&runtime],
        &["exec", "rt1", "cat", "/sys/class/net/tap0/mtu"],
    );
    assert_eq!(inside.trim(), "1450");
    let ids = podman_ids(&p, &["rt1"]);
    p.ok(&[&runtime], &["rm", "--force", "--time", "0", "rt1"]);
    // The runtime's poststop (from the config.json hpktainer runtime edited) detached it.
    assert_eq!(env.netd.wait_detached(&ids[0]), "poststop");
    assert!(env.netd.status().endpoints.is_empty());
    drop(p);
    env.assert_clean();
}
