//! A small world for a bubble: a LAN router, an "outside" server behind it, and bubble
//! namespaces on the LAN; plus hpk-netd under a guard.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hpk_hook::client::Client;
use hpk_hook::proto::{Request, Response, Status};

use super::{run, wait_until, Netns, Proc, NETD};

/// The outside world's server: a TCP echo on this address and port.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ECHO_PORT: u16 = 7777;

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

/// LAN router `<p>-lan` (192.0.2.1, 198.51.100.1) and outside host `<p>-out` (198.51.100.2)
/// running a TCP echo server that records who connected.
pub struct World {
    pub prefix: String,
    pub lan: Netns,
    pub out: Netns,
    /// Source addresses the echo server saw.
    pub echo_peers: Arc<Mutex<Vec<SocketAddr>>>,
    hosts: u8,
}

fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    run(std::process::Command::new("ip").args([
        "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name, "netns",
        &b.name,
    ]));
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

impl World {
    pub fn new(prefix: &str) -> World {
        let lan = Netns::new(format!("{prefix}-lan"));
        let out = Netns::new(format!("{prefix}-out"));
        run(lan.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
        lan.ip(&["link", "add", "lanbr", "type", "bridge"]);
        lan.ip(&["link", "set", "lanbr", "up"]);
        lan.ip(&["addr", "add", "192.0.2.1/24", "dev", "lanbr"]);
        veth(&lan, "wan0", &out, "eth0");
        lan.ip(&["addr", "add", "198.51.100.1/24", "dev", "wan0"]);
        out.ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"]);
        out.ip(&["route", "add", "default", "via", "198.51.100.1"]);

        let echo_peers = Arc::new(Mutex::new(Vec::new()));
        let peers = echo_peers.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Lives as long as the test process; its namespace goes with the World.
        out.spawn(move || {
            let listener = TcpListener::bind((OUTSIDE, ECHO_PORT)).unwrap();
            ready_tx.send(()).unwrap();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                peers.lock().unwrap().push(conn.peer_addr().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        World {
            prefix: prefix.to_owned(),
            lan,
            out,
            echo_peers,
            hosts: 0,
        }
    }

    /// A host namespace on the LAN at 192.0.2.(10 + n), default route via the router.
    pub fn host(&mut self, name: &str) -> (Netns, Ipv4Addr) {
        self.hosts += 1;
        let ns = Netns::new(format!("{}-{name}", self.prefix));
        let lan_side = format!("{}{}", self.prefix, self.hosts);
        veth(&self.lan, &lan_side, &ns, "eth0");
        self.lan.ip(&["link", "set", &lan_side, "master", "lanbr"]);
        let addr = Ipv4Addr::new(192, 0, 2, 10 + self.hosts);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        (ns, addr)
    }
}

/// Sends `payload` to the outside echo server from the namespace at `ns`; returns what
/// came back.
pub fn echo_from(ns: &Path, payload: &'static [u8]) -> Vec<u8> {
    super::spawn_in(ns, move || {
        let addr = SocketAddr::from((OUTSIDE, ECHO_PORT));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the outside world: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(payload).unwrap();
        let mut back = vec![0u8; payload.len()];
        conn.read_exact(&mut back).unwrap();
        back
    })
    .join()
    .expect("echo thread")
}

/// A flannel subnet.env as flanneld writes it.
pub fn subnet_env(subnet_with_gw: &str, mtu: u32, ipmasq: bool) -> String {
    format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet_with_gw}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n")
}

/// hpk-netd running in a bubble namespace with its files under `dir`.
pub struct Netd {
    pub proc: Proc,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// How to enter a rootless bubble (`nsenter -t PID -U -n -m`); empty: ask directly.
    pub enter: Vec<String>,
}

impl Netd {
    /// The command that starts hpk-netd in `bubble` with state, socket and subnet file in `dir`.
    pub fn command(bubble: &Netns, dir: &Path, extra: &[&str]) -> std::process::Command {
        let mut cmd = bubble.nsenter(NETD);
        cmd.arg("run")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("netd.sock"))
            .arg("--subnet-file")
            .arg(dir.join("subnet.env"))
            .args(extra);
        cmd
    }

    /// Starts hpk-netd (log in `dir/netd.log`) and waits until it answers.
    pub fn start(bubble: &Netns, dir: &Path, extra: &[&str]) -> Netd {
        Self::start_with(Self::command(bubble, dir, extra), dir, Vec::new())
    }

    /// Starts hpk-netd inside a rootless bubble: `enter` is the command that enters it.
    pub fn start_rootless(enter: Vec<String>, dir: &Path) -> Netd {
        let mut cmd = std::process::Command::new(&enter[0]);
        cmd.args(&enter[1..]).arg(NETD).arg("run");
        cmd.arg("--state-dir").arg(dir.join("state"));
        cmd.arg("--socket").arg(dir.join("netd.sock"));
        cmd.arg("--subnet-file").arg(dir.join("subnet.env"));
        Self::start_with(cmd, dir, enter)
    }

    fn start_with(mut cmd: std::process::Command, dir: &Path, enter: Vec<String>) -> Netd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("netd.log"))
            .unwrap();
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let netd = Netd {
            proc: Proc {
                child,
                what: "hpk-netd".into(),
            },
            dir: dir.to_owned(),
            socket: dir.join("netd.sock"),
            enter,
        };
        wait_until("hpk-netd to answer", Duration::from_secs(20), || {
            netd.try_status().is_some()
        });
        netd
    }

    fn try_status(&self) -> Option<Status> {
        if self.enter.is_empty() {
            return match Client::new(&self.socket).call(&Request::Status).ok()? {
                Response::Status(s) => Some(*s),
                _ => None,
            };
        }
        // Our uid is not mapped in a rootless bubble: ask from inside, as its root.
        let out = std::process::Command::new(&self.enter[0])
            .args(&self.enter[1..])
            .arg(NETD)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("netd.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Status {
        self.try_status().expect("hpk-netd answers status")
    }

    /// Asserts that no endpoint, address, record or forwarder is left, once the
    /// background teardowns that detaches start have finished.
    pub fn assert_empty(&self, bubble: &Netns, forwarders: &[i32]) {
        wait_until(
            "detached endpoints to be torn down",
            Duration::from_secs(10),
            || self.status().endpoints.is_empty(),
        );
        let status = self.status();
        assert!(
            status.endpoints.is_empty(),
            "endpoints left: {:?}",
            status.endpoints
        );
        assert_eq!(status.addresses_in_use, 0, "addresses left in use");
        let taps: Vec<_> = bubble
            .links()
            .into_iter()
            .filter(|l| l.starts_with("hpk0") || (l.starts_with("hpk") && l.len() == 15))
            .collect();
        assert!(taps.is_empty(), "bubble taps left: {taps:?}");
        let records: Vec<_> = std::fs::read_dir(self.dir.join("state/endpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(records.is_empty(), "endpoint files left: {records:?}");
        for pid in forwarders {
            // A zombie has released its taps and fds; reaping an orphan is the job of the
            // namespace's init (this machine's PID 1 does not), not hpk-netd's.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .unwrap_or("");
            let running = stat.contains("(hpk-net-daemon)") && state != "Z";
            assert!(!running, "forwarder {pid} still runs: {stat}");
        }
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- hpk-netd log ----\n{}", self.log());
            for e in std::fs::read_dir(self.dir.join("state/endpoints"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.path().extension().is_some_and(|x| x == "log") {
                    eprintln!(
                        "---- {} ----\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    );
                }
            }
        }
    }
}
