//! Rootless runs: hpktainer as root of a user namespace that maps only its own id (what a
//! bubble gives), and as an unprivileged user outside any user namespace.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use support::{stderr, stdout, Env};
use testkit::run;

/// `unshare --user --map-root-user --mount hpktainer ...` in the bubble's network.
fn in_userns(env: &Env, args: &[&str]) -> std::process::Output {
    env.bubble
        .nsenter("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            support::HPKTAINER,
            "--root",
        ])
        .arg(&env.root)
        .arg("--socket")
        .arg(&env.netd.socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn rootless_in_a_user_namespace(rt: &str, net: &str) {
    let env = Env::new(&format!("{net}.1/24"));
    // An OCI image in a layout: unpacked with umoci --rootless, run on an overlay.
    let image = support::layout_image(&env.dir, |_| {});

    for img in [env.rootfs().to_string(), format!("oci:{image}")] {
        let out = in_userns(
            &env,
            &[
                "run",
                "--runtime",
                rt,
                &img,
                "sh",
                "-c",
                "cat /proc/self/uid_map; ip -4 -o addr show tap0; echo x > /tmp/w && exit 9",
            ],
        );
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(9), "{img}: {text}{}", stderr(&out));
        let map: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            map,
            ["0", "0", "1"],
            "the container's user namespace maps our one id"
        );
        assert!(text.contains(&format!("inet {net}.")), "{text}");
    }
    env.assert_clean();
}

#[test]
fn runc_rootless_in_a_user_namespace() {
    rootless_in_a_user_namespace("runc", "10.244.18");
}

#[test]
fn crun_rootless_in_a_user_namespace() {
    rootless_in_a_user_namespace("crun", "10.244.19");
}

#[test]
fn an_unprivileged_user_runs_without_the_network() {
    let env = Env::new("10.244.20.1/24");
    let image = format!("oci:{}", support::layout_image(&env.dir, |_| {}));
    // umoci writes its layout owner-only.
    run(Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(env.dir.join("layout")));
    let home = env.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    for d in [&env.dir, &home] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let as_nobody = |img: &str, script: &str| {
        env.bubble
            .nsenter("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(support::HPKTAINER)
            .arg("--root")
            .arg(home.join("hpk"))
            .args(["run", "--network", "none", img, "sh", "-c", script])
            .env("HOME", &home)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = as_nobody(env.rootfs(), "id -u; cat /proc/self/uid_map");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "65534", "1"]);

    // A cached image without overlay (no privilege to mount one): read-only root, a
    // writable /tmp, and the user is told.
    let out = as_nobody(
        &image,
        "touch /tmp/ok && ! touch /denied 2>/dev/null && echo read-only-root",
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).trim(), "read-only-root");
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    assert!(std::fs::read_dir(home.join("hpk/containers"))
        .unwrap()
        .next()
        .is_none());
}
