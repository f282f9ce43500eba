//! Published ports: a host port forwarded to a container's port, bound before the
//! container starts and released when it stops; the container sees its clients' own
//! addresses. Here hpk-netd runs on the host itself (no bubble): it binds the ports in its
//! own namespace. Needs root: every test builds its own namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use hpk_hook::ports::ANNOTATION_PORTS;
use testkit::cluster::{Host, Site};
use testkit::runc::{bundle, BundleSpec, Container};
use testkit::*;

fn published(host: &Host, root: &Path, id: &str, ports: &str) -> Result<Container, String> {
    let b = bundle(
        root,
        &format!("{id}-bundle"),
        &BundleSpec {
            args: &["sleep", "600"],
            socket: &host.dir.join("netd.sock"),
            annotations: &[(ANNOTATION_PORTS, ports)],
            rootless: false,
            no_hooks: false,
        },
    );
    host.runc.run(id, &b)
}

/// A TCP server in the container's namespace: answers one connection with the address it
/// came from, then echoes until the client closes (then the thread ends).
fn tcp_server(c: &Container, port: u16) {
    let ready = std::sync::mpsc::channel();
    let tx = ready.0;
    spawn_in(&c.netns(), move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        if let Some(conn) = l.incoming().next() {
            let Ok(mut conn) = conn else { return };
            let peer = conn.peer_addr().unwrap();
            let _ = conn.write_all(format!("{}\n", peer.ip()).as_bytes());
            let mut buf = [0u8; 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    ready.1.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A UDP server in the container's namespace: answers one datagram with its sender.
fn udp_server(c: &Container, port: u16) {
    let ready = std::sync::mpsc::channel();
    let tx = ready.0;
    spawn_in(&c.netns(), move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
    ready.1.recv_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_published_port_reaches_the_container_which_sees_its_client() {
    let mut site = Site::flannel("10.244.51.1/24");
    let root = site.scratch.0.clone();
    let (client_ns, client_addr) = site.world.host("h2");
    let h = &site.host;
    let c = published(h, &root, "web1", "18080:8080,15353:5353/udp").unwrap();
    tcp_server(&c, 8080);
    udp_server(&c, 5353);
    let status = h.netd().status();
    assert_eq!(status.published.len(), 2, "{:?}", status.published);
    assert!(status.published.iter().all(|p| p.client_address_kept));
    let target: SocketAddr = (h.addr, 18080).into();

    // TCP from another host of the LAN: the container names the client's own address.
    let (seen, echoed) = spawn_in(&client_ns.path(), move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        (String::from_utf8_lossy(&first[..n]).trim().to_owned(), back)
    })
    .join()
    .unwrap();
    assert_eq!(seen, client_addr.to_string());
    assert_eq!(&echoed, b"ping");

    // UDP likewise.
    let udp_target: SocketAddr = (h.addr, 15353).into();
    let seen = spawn_in(&client_ns.path(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"who", udp_target).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .join()
    .unwrap();
    assert_eq!(seen, client_addr.to_string());

    // Stopped: the ports are released (the same can be bound again).
    c.stop();
    let host_ns = h.ns.path();
    wait_until("the ports to be released", Duration::from_secs(10), || {
        spawn_in(&host_ns, || {
            TcpListener::bind("0.0.0.0:18080").is_ok() && UdpSocket::bind("0.0.0.0:15353").is_ok()
        })
        .join()
        .unwrap()
    });
    assert!(h.netd().status().published.is_empty());
}

#[test]
fn a_taken_port_fails_the_start_and_leaves_nothing() {
    let site = Site::flannel("10.244.52.1/24");
    let root = site.scratch.0.clone();
    let h = &site.host;
    let (taken_tx, taken_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    spawn_in(&h.ns.path(), move || {
        let l = TcpListener::bind("0.0.0.0:18081").unwrap();
        taken_tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop(l);
    });
    taken_rx.recv().unwrap();
    // The first port is free, the second taken: neither stays bound.
    let err = published(h, &root, "web1", "18082:80,18081:81").unwrap_err();
    assert!(
        err.contains("cannot publish -p 18081:81/tcp: host port 0.0.0.0:18081/tcp is in use"),
        "{err}"
    );
    h.netd().assert_empty(&h.ns, &[]);
    assert!(h.netd().status().published.is_empty());
    let free = spawn_in(&h.ns.path(), || TcpListener::bind("0.0.0.0:18082").is_ok())
        .join()
        .unwrap();
    assert!(free, "the port bound before the failure stayed bound");
    // Nonsense in the annotation is refused by the hook with the reason.
    let err = published(h, &root, "web2", "80:80").unwrap_err();
    assert!(err.contains("host port 80 is below 1024"), "{err}");
    done_tx.send(()).unwrap();
}
