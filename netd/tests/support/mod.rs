//! Hosts whose hpk-netd is the VTEP on a host socket, as a bubble's launcher serves it;
//! shared by the host-socket and overlay-protection tests.
#![allow(dead_code)]

use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpk_hook::proto::UnderlayStatus;
use hpk_netd::underlay::handover::Server;
use testkit::cluster::{Cluster, Host};
use testkit::*;

pub const VXLAN_PORT: u16 = 8472;

/// A UDP socket on the host's address and the network's port, served on `dir/underlay.sock`
/// as the bubble's launcher serves it; also a second handle on it, through which a test
/// sends from the VTEP's own address and port.
pub fn serve_host_socket(h: &Host) -> (Server, PathBuf, UdpSocket) {
    let addr = h.addr;
    let socket =
        h.ns.spawn(move || UdpSocket::bind((addr, VXLAN_PORT)).expect("bind the vxlan port"))
            .join()
            .unwrap();
    let handle = socket.try_clone().unwrap();
    let path = h.dir.join("underlay.sock");
    let _ = std::fs::remove_file(&path);
    let server = Server::spawn(UnixListener::bind(&path).unwrap(), socket).unwrap();
    (server, path, handle)
}

pub fn start_userspace(h: &mut Host, url: &str, socket: &Path, extra: &[&str]) {
    let socket = socket.to_str().unwrap();
    let mut flags = vec!["--underlay-socket", socket];
    flags.extend_from_slice(extra);
    h.start_netd(&Host::etcd_args(url, &flags));
}

/// `n` hosts, each hpk-netd on a host socket with `extra` flags; the servers (and the
/// sockets' second handles) live as long as they are kept.
pub fn userspace_cluster(n: usize, extra: &[&str]) -> (Cluster, Vec<(Server, UdpSocket)>) {
    let mut cl = Cluster::new(n);
    let url = cl.etcd.url.clone();
    let servers = cl
        .hosts
        .iter_mut()
        .map(|h| {
            let (server, path, handle) = serve_host_socket(h);
            start_userspace(h, &url, &path, extra);
            (server, handle)
        })
        .collect();
    (cl, servers)
}

pub fn underlay(h: &Host) -> UnderlayStatus {
    h.netd()
        .status()
        .underlay
        .expect("the etcd agent reports its underlay")
}

pub fn counter(h: &Host, name: &str) -> u64 {
    underlay(h).counters.get(name).copied().unwrap_or(0)
}

pub fn reach_each_other(cs: &[(testkit::runc::Container, Ipv4Addr)]) {
    for (i, (c, _)) in cs.iter().enumerate() {
        for (j, (_, addr)) in cs.iter().enumerate() {
            if i != j {
                wait_until(
                    &format!("c{i} to reach c{j} at {addr}"),
                    Duration::from_secs(10),
                    || c.ping(&addr.to_string()),
                );
            }
        }
    }
}

/// Sends `payload` to host `to`'s vxlan port from `from` (an address in namespace `ns`).
pub fn send_datagram(ns: &Netns, from: Ipv4Addr, to: Ipv4Addr, payload: Vec<u8>) {
    ns.spawn(move || {
        let s = UdpSocket::bind((from, 0)).unwrap();
        s.send_to(&payload, (to, VXLAN_PORT)).unwrap();
    })
    .join()
    .unwrap();
}

/// The VtepMAC hpk-netd derives from a host's public address.
pub fn vtep_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x0e, 0x68, o[0], o[1], o[2], o[3]]
}
