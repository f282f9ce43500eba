//! hpktainer as users run it, inside a bubble namespace with a real hpk-netd, on top of
//! testkit's world (LAN router, outside echo server).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::netd::{subnet_env, Netd};
use testkit::world::World;
use testkit::{prefix, wait_until, Netns, Scratch};

pub const HPKTAINER: &str = env!("CARGO_BIN_EXE_hpktainer");

/// A busybox-static root filesystem with every applet and a user `web` (uid 33).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    let list = testkit::run(Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33:web:/srv:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nweb:x:33:\n").unwrap();
    root
}

/// An OCI layout `dir/layout` holding the image `latest`: one layer, the busybox root
/// filesystem after `first_layer` changed it (built in `dir/b`, left there for more
/// layers). Returns `LAYOUT:latest`, for `oci:` or umoci's `--image`.
pub fn layout_image(dir: &Path, first_layer: impl FnOnce(&Path)) -> String {
    let layout = dir.join("layout");
    let image = format!("{}:latest", layout.display());
    let bundle = dir.join("b");
    testkit::run(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    testkit::run(Command::new("umoci").args(["new", "--image", &image]));
    testkit::run(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    );
    std::fs::remove_dir_all(bundle.join("rootfs")).unwrap();
    first_layer(&busybox_rootfs(&bundle));
    testkit::run(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    );
    image
}

/// A bubble with hpk-netd on `subnet`, and hpktainer's state under a scratch directory.
// Fields drop in order: hpk-netd before its namespace and directory go.
pub struct Env {
    pub netd: Netd,
    pub bubble: Netns,
    /// The bubble's host address on the LAN: what the outside sees of its containers.
    pub host: Ipv4Addr,
    pub world: World,
    pub dir: PathBuf,
    /// hpktainer --root.
    pub root: PathBuf,
    pub rootfs: PathBuf,
    pub prefix: String,
    _scratch: Scratch,
}

impl Env {
    pub fn new(subnet_with_gw: &str) -> Env {
        let p = prefix();
        let scratch = Scratch::new(&p);
        let dir = scratch.0.clone();
        let mut world = World::new(&p);
        let (bubble, host) = world.host("b");
        std::fs::write(
            dir.join("subnet.env"),
            subnet_env(subnet_with_gw, 1450, false),
        )
        .unwrap();
        let netd = Netd::start(&bubble, &dir, &[]);
        let rootfs = busybox_rootfs(&dir);
        Env {
            root: dir.join("hpk"),
            rootfs,
            prefix: p,
            netd,
            bubble,
            host,
            world,
            dir,
            _scratch: scratch,
        }
    }

    /// `hpktainer --root R --socket S ARGS` in the bubble's network namespace.
    pub fn hpk(&self, args: &[&str]) -> Command {
        let mut cmd = self.bubble.nsenter(HPKTAINER);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.netd.socket)
            .args(args);
        cmd
    }

    /// Runs hpktainer to completion, stdin closed.
    pub fn out(&self, args: &[&str]) -> Output {
        self.hpk(args)
            .stdin(Stdio::null())
            .output()
            .expect("hpktainer runs")
    }

    /// Runs hpktainer and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "hpktainer {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn rootfs(&self) -> &str {
        self.rootfs.to_str().unwrap()
    }

    pub fn ps(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&["ps", "-a", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The container's pid, as `ps` reports it.
    pub fn pid_of(&self, name: &str) -> i32 {
        self.ps()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["pid"].as_i64())
            .unwrap_or_else(|| panic!("{name} has no pid in ps")) as i32
    }

    pub fn address_of(&self, id: &str) -> Ipv4Addr {
        self.netd
            .status()
            .endpoints
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("{id} is not attached"))
            .address
    }

    /// Container directories hpktainer keeps.
    pub fn container_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("containers"))
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Containers `rt` (runc or crun) still knows under our state directory.
    pub fn runtime_ids(&self, rt: &str) -> Vec<String> {
        let root = self.root.join("runtime").join(rt);
        if !root.exists() {
            return Vec::new();
        }
        let out = Command::new(rt)
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Containers the runtimes still know under our state directory.
    pub fn runtime_containers(&self) -> Vec<String> {
        ["runc", "crun"]
            .iter()
            .flat_map(|rt| self.runtime_ids(rt))
            .collect()
    }

    /// Nothing left: no container directory, runtime container, endpoint, address, tap,
    /// overlay mount or process in the bubble besides hpk-netd's.
    pub fn assert_clean(&self) {
        wait_until("endpoints to be released", Duration::from_secs(10), || {
            self.netd.status().endpoints.is_empty()
        });
        self.netd.assert_empty(&self.bubble, &[]);
        assert_eq!(
            self.container_dirs(),
            Vec::<String>::new(),
            "container directories left"
        );
        assert_eq!(
            self.runtime_containers(),
            Vec::<String>::new(),
            "runtime containers left"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root.display().to_string();
        assert!(!mounts.contains(&root), "mounts left under {root}");
        let netd_pid = self.netd.proc.pid();
        let others = || -> Vec<i32> {
            testkit::pids_in_netns(&self.bubble.path())
                .into_iter()
                .filter(|p| *p != netd_pid && !is_zombie(*p) && !is_netd_nft(*p, netd_pid))
                .collect()
        };
        // A runtime whose container was deleted under it exits on its own, shortly.
        wait_until(
            "processes in the bubble to exit",
            Duration::from_secs(10),
            || others().is_empty(),
        );
    }
}

impl Drop for Env {
    /// After a failed test: containers deleted (they live in namespaces of their own, out of
    /// reach of the bubble's cleanup), overlays unmounted, before the directory goes.
    fn drop(&mut self) {
        for rt in ["runc", "crun"] {
            let root = self.root.join("runtime").join(rt);
            for id in self.runtime_ids(rt) {
                let _ = Command::new(rt)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &id])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for dir in self.container_dirs() {
            let rootfs = self.root.join("containers").join(dir).join("bundle/rootfs");
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Runs hpktainer ARGS on a real pseudo-terminal (`script`), typing `input`.
pub fn in_pty(env: &Env, args: &str, input: &[u8]) -> Output {
    use std::io::Write;
    let inner = format!(
        "{HPKTAINER} --root {} --socket {} {args}",
        env.root.display(),
        env.netd.socket.display(),
    );
    let mut child = env
        .bubble
        .nsenter("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Whether a process whose command line holds `marker` has a `sleep` child (so the
/// commands of its script before the sleep have run).
pub fn sleeping_under(marker: &str) -> bool {
    let procs: Vec<(i32, Vec<u8>, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, cmdline, stat))
        })
        .collect();
    let shells: Vec<i32> = procs
        .iter()
        .filter(|(_, cmdline, _)| {
            cmdline
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    procs.iter().any(|(_, _, stat)| {
        let Some(i) = stat.rfind(')') else {
            return false;
        };
        let ppid = stat[i + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        stat.contains("(sleep)") && ppid.is_some_and(|p| shells.contains(&p))
    })
}

/// hpk-netd's own `nft -i` session, which lives as long as it does.
fn is_netd_nft(pid: i32, netd: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<i32>().ok());
    stat.contains("(nft)") && ppid == Some(netd)
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .is_none_or(|s| s == "Z")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
