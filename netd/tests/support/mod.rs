//! Test fixtures: throw-away network namespaces, daemons that are always stopped, and
//! traffic checks. Every name carries a per-test prefix so tests run in parallel and a
//! leftover of a crashed run never collides with a new one.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

pub mod etcd;
pub mod runc;
pub mod world;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");
pub const NETD: &str = env!("CARGO_BIN_EXE_hpk-netd");

/// A binary of another workspace crate, built next to ours by `cargo test --workspace`.
pub fn sibling_binary(name: &str) -> PathBuf {
    let path = Path::new(NETD).parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo test --workspace` (or `cargo build --workspace`) so it is built",
        path.display()
    );
    path
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

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: impl Into<String>) -> Netns {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Names the network namespace of `pid` (`ip netns attach`), for inspection.
    pub fn attach(name: impl Into<String>, pid: i32) -> Netns {
        let name = name.into();
        run(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]));
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command in this namespace that keeps the host's /sys (runc needs its cgroups,
    /// which `ip netns exec` hides by remounting /sys).
    pub fn nsenter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    pub fn has_link(&self, link: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", link])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether `link` exists and is administratively up.
    pub fn link_up(&self, link: &str) -> bool {
        self.link_json(link)
            .and_then(|j| j["flags"].as_array().cloned())
            .is_some_and(|flags| flags.iter().any(|f| f == "UP"))
    }

    pub fn link_json(&self, link: &str) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "-s", "link", "show", "dev", link])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0).cloned()
    }

    /// Frames the kernel received on `link` (for a tap: frames userspace wrote to it).
    pub fn rx_packets(&self, link: &str) -> u64 {
        self.link_json(link).expect("link exists")["stats64"]["rx"]["packets"]
            .as_u64()
            .unwrap()
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.cmd("ping")
            .args(["-c", "1", "-W", "2", addr])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in the namespace was started by this test (forwarders of a
        // test that failed half-way): end it, by PID.
        for pid in pids_in_netns(&self.path()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
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

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `sig` and waits for the exit; returns (exit code, stderr).
    pub fn stop_with(&mut self, sig: Signal) -> (Option<i32>, String) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit by itself; returns (exit code, stderr).
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let what = format!("{} to exit", self.what);
        let mut status = None;
        wait_until(&what, timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.unwrap().code(), err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can be checked.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Sends `bytes` over TCP from `client` to `server_addr` in `server`, and asserts that the
/// SHA-256 computed by the receiver equals the sender's.
pub fn tcp_transfer(server: &Netns, client: &Netns, server_addr: Ipv4Addr, bytes: usize) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    tcp_stream(&server.path(), &client.path(), server_addr, bytes, done).check();
}

/// A running checked TCP transfer; see [`tcp_stream`].
pub struct Transfer {
    receiver: JoinHandle<(usize, Vec<u8>)>,
    sender: JoinHandle<(usize, Vec<u8>, Vec<u8>)>,
}

impl Transfer {
    /// Waits for both ends and asserts that every byte arrived intact.
    pub fn check(self) -> usize {
        let (sent, sent_digest, echoed) = self.sender.join().expect("sender thread");
        let (received, digest) = self.receiver.join().expect("receiver thread");
        assert_eq!(received, sent, "receiver got {received} of {sent} bytes");
        assert_eq!(digest, sent_digest, "checksum differs between ends");
        assert_eq!(
            echoed, sent_digest,
            "receiver's checksum did not come back intact"
        );
        sent
    }
}

/// Starts sending at least `min_bytes` from the namespace at `client` to `server_addr`
/// in the namespace at `server`, and keeps sending until `done` is set.
pub fn tcp_stream(
    server: &Path,
    client: &Path,
    server_addr: Ipv4Addr,
    min_bytes: usize,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Transfer {
    use std::sync::atomic::Ordering;
    let (port_tx, port_rx) = mpsc::channel();
    let receiver = spawn_in(server, move || {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = conn.read(&mut buf).expect("receive");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        let digest = hash.finalize();
        conn.write_all(&digest).unwrap();
        (total, digest.to_vec())
    });
    let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let sender = spawn_in(client, move || {
        let addr = SocketAddr::from((server_addr, port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut hash = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < min_bytes || !done.load(Ordering::SeqCst) {
            let n = buf.len().min(min_bytes.saturating_sub(sent).max(4096));
            fill(&mut buf[..n], &mut state);
            conn.write_all(&buf[..n]).expect("send");
            hash.update(&buf[..n]);
            sent += n;
        }
        conn.shutdown(Shutdown::Write).unwrap();
        let mut echoed = Vec::new();
        conn.read_to_end(&mut echoed).unwrap();
        (sent, hash.finalize().to_vec(), echoed)
    });
    Transfer { receiver, sender }
}

/// A bubble namespace with a bridge holding the gateway address of `subnet` (x.y.z.0/24).
pub struct Bubble {
    pub ns: Netns,
    pub bridge: String,
    pub subnet: [u8; 3],
}

impl Bubble {
    pub fn new(prefix: &str, subnet: [u8; 3], mtu: u32) -> Bubble {
        let ns = Netns::new(format!("{prefix}-b"));
        let bridge = "br0".to_owned();
        ns.ip(&["link", "add", &bridge, "type", "bridge"]);
        ns.ip(&["link", "set", &bridge, "mtu", &mtu.to_string(), "up"]);
        let gw = format!("{}.{}.{}.1/24", subnet[0], subnet[1], subnet[2]);
        ns.ip(&["addr", "add", &gw, "dev", &bridge]);
        Bubble { ns, bridge, subnet }
    }

    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }
}

/// Gives `tap` in `ns` its address once the daemon has brought it up.
pub fn address_container(ns: &Netns, tap: &str, addr: Ipv4Addr) {
    wait_until(
        &format!("{tap} up in {}", ns.name),
        Duration::from_secs(10),
        || ns.link_up(tap),
    );
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", tap]);
}
