//! Images through skopeo and umoci: a real registry (Debian's docker-registry) in the
//! bubble, an image built and pushed by the test, the cache (a second run does not pull),
//! and the local transports oci:, oci-archive:, docker-archive:.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{layout_image, stderr, Env};
use testkit::{run, wait_until, Proc};

/// An OCI layout `dir/layout:latest` with two layers: busybox with a file `/gone`, then
/// a layer that deletes it (a whiteout) and adds `/etc/motd`; default command, env and
/// working directory in the image config.
fn build_image(dir: &Path) -> PathBuf {
    let image = layout_image(dir, |rootfs| {
        std::fs::write(rootfs.join("gone"), "first layer").unwrap();
    });
    let bundle = dir.join("b");
    let rootfs = bundle.join("rootfs");
    std::fs::remove_file(rootfs.join("gone")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "second layer\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "FROM_IMAGE=yes",
        "--config.workingdir",
        "/srv",
        "--config.cmd",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo default $FROM_IMAGE $(pwd) $(cat /etc/motd) $(ls /gone 2>&1 | wc -l)",
    ]));
    dir.join("layout")
}

/// How often a `--debug` run called umoci to unpack an image.
fn unpacks_in(out: &std::process::Output) -> usize {
    stderr(out)
        .lines()
        .filter(|l| l.contains("running command=umoci unpack"))
        .count()
}

/// docker-registry listening on 127.0.0.1:5000 in the bubble.
fn start_registry(env: &Env) -> Proc {
    let storage = env.dir.join("registry");
    let config = env.dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut cmd = env.bubble.nsenter("docker-registry");
    cmd.arg("serve").arg(&config);
    let registry = Proc::spawn("docker-registry", &mut cmd);
    wait_until("the registry to listen", Duration::from_secs(20), || {
        env.bubble
            .spawn(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)),
                    Duration::from_secs(1),
                )
                .is_ok()
            })
            .join()
            .unwrap()
    });
    registry
}

#[test]
fn registry_images_are_pulled_once_and_cached() {
    let env = Env::new("10.244.11.1/24");
    let layout = build_image(&env.dir);
    let mut registry = start_registry(&env);
    run(env.bubble.nsenter("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.display()),
        "docker://127.0.0.1:5000/test/busybox:1",
    ]));
    let image = "docker://127.0.0.1:5000/test/busybox:1";

    // First run pulls (plain HTTP: localhost), unpacks and runs the image's command.
    let out = env.out(&["--debug", "run", image]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        support::stdout(&out).trim(),
        "default yes /srv second layer 1",
        "image config or layers (whiteout) wrong"
    );
    assert!(stderr(&out).contains("pulling"), "{}", stderr(&out));

    // Second run: from the cache, no skopeo call.
    let out = env.out(&["--debug", "run", image, "cat", "/etc/motd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("image in the cache: not pulling"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("running command=skopeo"),
        "{}",
        stderr(&out)
    );

    // Writes go to the container's overlay, never into the shared image.
    env.ok(&[
        "run",
        image,
        "sh",
        "-c",
        "echo changed > /etc/motd; rm /bin/ls",
    ]);
    assert_eq!(
        env.ok(&["run", image, "cat", "/etc/motd"]).trim(),
        "second layer"
    );

    // With the registry gone the cached image still runs; --pull always now fails clearly.
    registry.stop_with(nix::sys::signal::Signal::SIGTERM);
    env.ok(&["run", "--pull", "never", image, "true"]);
    let out = env.out(&["run", "--pull", "always", image, "true"]);
    assert_eq!(out.status.code(), Some(125));
    let msg = stderr(&out);
    assert!(
        msg.contains("cannot fetch image docker://127.0.0.1:5000/test/busybox:1"),
        "{msg}"
    );
    let errors = msg.lines().filter(|l| l.starts_with("hpktainer:")).count();
    assert_eq!(errors, 1, "not one error line: {msg}");
    assert!(msg.contains("connection refused"), "{msg}");

    // Not cached and never pulled: a clear refusal.
    let out = env.out(&[
        "run",
        "--pull",
        "never",
        "docker://127.0.0.1:5000/test/other:1",
        "true",
    ]);
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{msg}");
    assert_eq!(
        msg.lines().filter(|l| l.starts_with("hpktainer:")).count(),
        1,
        "not one error line: {msg}"
    );
    assert!(
        msg.contains(
            "image docker://127.0.0.1:5000/test/other:1 is not in the cache and --pull never forbids pulling it"
        ),
        "{msg}"
    );
    env.assert_clean();
}

#[test]
fn local_transports_run() {
    let env = Env::new("10.244.12.1/24");
    let layout = build_image(&env.dir);
    let oci = format!("oci:{}:latest", layout.display());
    let archive = env.dir.join("image.tar");
    let docker_archive = env.dir.join("docker.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", &oci])
        .arg(format!("oci-archive:{}", archive.display())));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", &oci])
        .arg(format!(
            "docker-archive:{}:test/bb:1",
            docker_archive.display()
        )));
    let mut unpacks = 0;
    for image in [
        oci.clone(),
        format!("oci-archive:{}", archive.display()),
        format!("docker-archive:{}", docker_archive.display()),
    ] {
        let out = env.out(&["--debug", "run", &image, "cat", "/etc/motd"]);
        assert!(out.status.success(), "{image}: {}", stderr(&out));
        assert_eq!(support::stdout(&out).trim(), "second layer", "{image}");
        unpacks += unpacks_in(&out);
    }
    // One unpack per manifest: oci: and oci-archive: share one.
    assert_eq!(unpacks, 2, "three runs, two manifests");
    let unpacked: Vec<_> = std::fs::read_dir(env.root.join("images/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(unpacked.len(), 2, "{unpacked:?}");
    env.assert_clean();
}

#[test]
fn concurrent_runs_unpack_an_image_once() {
    let env = Env::new("10.244.25.1/24");
    let layout = build_image(&env.dir);
    let archive = env.dir.join("image.tar");
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{}:latest", layout.display()),
        ])
        .arg(format!("oci-archive:{}", archive.display())));
    let image = format!("oci-archive:{}", archive.display());
    let runs: Vec<_> = (0..3)
        .map(|_| {
            env.hpk(&["--debug", "run", &image, "cat", "/etc/motd"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut unpacks = 0;
    for child in runs {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(support::stdout(&out).trim(), "second layer");
        unpacks += unpacks_in(&out);
    }
    assert_eq!(unpacks, 1, "three runs, one unpack");
    let unpacked: Vec<_> = std::fs::read_dir(env.root.join("images/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    env.assert_clean();
}
