//! A small world for bubbles: a LAN router, an "outside" server behind it, and host
//! namespaces on the LAN.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{run, Netns};

/// The outside world's server: a TCP echo on this address and port.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ECHO_PORT: u16 = 7777;

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
        // Checksum offloads stay on, as on every veth and on virtio between VMs of one
        // hypervisor: a kernel vxlan peer then sends inner segments with a partial
        // checksum, which a userspace VTEP must pass on as such.
        (ns, addr)
    }
}

/// Sends `payload` to the outside echo server from the namespace at `ns`; returns what
/// came back.
pub fn echo_from(ns: &Path, payload: &'static [u8]) -> Vec<u8> {
    crate::spawn_in(ns, move || {
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
