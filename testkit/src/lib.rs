//! Test fixtures shared by every crate's integration tests: throw-away network namespaces
//! and the world around a bubble (a LAN, an outside server), hpk-netd, etcd and runc under
//! guards that always stop them, and traffic checks. Every name carries a per-test prefix
//! so tests run in parallel and a leftover of a crashed run never collides with a new one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

pub mod bubble;
pub mod cluster;
pub mod etcd;
pub mod man;
pub mod netd;
pub mod netns;
pub mod process;
pub mod rootless;
pub mod runc;
pub mod traffic;
pub mod world;

pub use bubble::{address_container, Bubble};
pub use man::check_man_page;
pub use netns::Netns;
pub use process::Proc;
pub use traffic::{tcp_stream, tcp_transfer, Transfer};

/// A binary of the workspace, built next to the test executables (`target/<profile>/`)
/// by `cargo build --workspace --bins`, which `make test` runs first.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // Test executables live in target/<profile>/deps/.
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins` (or `make test`) first",
        path.display()
    );
    path
}

/// hpk-netd and the hook, as tests start them.
pub fn netd_binary() -> PathBuf {
    binary("hpk-netd")
}

pub fn hook_binary() -> PathBuf {
    binary("hpk-hook")
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{prefix}-test"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (device, inode) of a namespace file, which identifies the namespace.
pub fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// PIDs of the processes whose network namespace is `ns`.
pub fn pids_in_netns(ns: &Path) -> Vec<i32> {
    let Some(target) = ns_id(ns) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(target))
        .collect()
}

/// A short unique prefix: interface names are limited to 15 bytes.
pub fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "hk{:06x}",
        (std::process::id() ^ nanos.rotate_left(11)) & 0xff_ffff
    )
}

/// Waits for `cond` with a deadline; panics naming the condition that never held.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `f` on a thread inside the network namespace at `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = std::fs::File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}
