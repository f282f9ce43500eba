//! Container names across bubbles: each hpk-netd answers DNS on its bridge's gateway from
//! the cluster's names in etcd; names are unique, leave with their container or their
//! bubble, and other names go upstream. Needs root: every test builds its own namespaces.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hpk_hook::names::ANNOTATION_NAME;
use nix::sys::signal::Signal;
use testkit::cluster::{Cluster, Host, Site};
use testkit::runc::{bundle, BundleSpec, Container};
use testkit::world::World;
use testkit::*;

/// An upstream resolver in the outside world: aardvark-dns (Podman's DNS server) knowing
/// `outside.example` as 198.51.100.77, with an empty resolv.conf of its own so that it
/// never forwards anything.
struct OutsideDns {
    proc: Proc,
}

const OUTSIDE_NAME: &str = "outside.example";
const OUTSIDE_ADDRESS: &str = "198.51.100.77";

impl OutsideDns {
    fn start(world: &World, dir: &Path) -> OutsideDns {
        let conf = dir.join("aardvark");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("outside"),
            format!(
                "{}\nc0ffee {OUTSIDE_ADDRESS}  {OUTSIDE_NAME}\n",
                world::OUTSIDE
            ),
        )
        .unwrap();
        let resolv = dir.join("aardvark-resolv.conf");
        std::fs::write(&resolv, "").unwrap();
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec /usr/lib/podman/aardvark-dns -c {} -p 53 run",
            resolv.display(),
            conf.display()
        );
        let mut cmd = world.out.nsenter("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn("aardvark-dns", &mut cmd);
        let ns = world.out.path();
        wait_until("aardvark-dns to answer", Duration::from_secs(10), || {
            resolve_from(&ns, world::OUTSIDE, OUTSIDE_NAME).is_some()
        });
        OutsideDns { proc }
    }
}

impl Drop for OutsideDns {
    fn drop(&mut self) {
        self.proc.stop_with(Signal::SIGTERM);
    }
}

/// Asks `server` for `name`'s A record from a thread in the namespace at `ns`; the first
/// address, if any.
fn resolve_from(ns: &Path, server: Ipv4Addr, name: &str) -> Option<Ipv4Addr> {
    let query =
        hpk_netd::names::answer::query_bytes(0x4242, name, hickory_proto::rr::RecordType::A);
    spawn_in(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        sock.send_to(&query, (server, 53)).ok()?;
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).ok()?;
        let m = hickory_proto::op::Message::from_vec(&buf[..n]).ok()?;
        m.answers.iter().find_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
    })
    .join()
    .unwrap()
}

/// `nslookup NAME SERVER` inside a container (busybox): its output, if it succeeded.
fn nslookup(c: &Container, name: &str, server: Ipv4Addr) -> Option<String> {
    let out = c.exec(&["nslookup", name, &server.to_string()]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A sleeper container named `name` (annotation io.hpktainer.name) on `host`.
fn named(host: &Host, root: &Path, id: &str, name: &str) -> Result<Container, String> {
    let b = bundle(
        root,
        &format!("{}-{id}-bundle", host.name),
        &BundleSpec {
            args: &["sleep", "600"],
            socket: &host.dir.join("netd.sock"),
            annotations: &[(ANNOTATION_NAME, name)],
            rootless: false,
            no_hooks: false,
        },
    );
    host.runc.run(id, &b)
}

fn gateway(host: &Host) -> Ipv4Addr {
    host.netd().status().gateway
}

fn known(host: &Host, name: &str) -> bool {
    host.netd()
        .status()
        .names
        .expect("hpk-netd serves names")
        .records
        .iter()
        .any(|r| r.name == name)
}

#[test]
fn names_resolve_in_every_bubble_are_unique_and_leave_with_their_container() {
    let mut cluster = Cluster::new(3);
    let root = cluster.scratch.0.clone();
    let _upstream = OutsideDns::start(&cluster.world, &root);
    let upstream = format!("{}:53", world::OUTSIDE);
    for h in &mut cluster.hosts {
        h.start_netd_etcd(&cluster.etcd, &["--dns-upstream", &upstream]);
    }
    let [h1, h2, h3] = &cluster.hosts[..] else {
        unreachable!()
    };
    let started = Instant::now();
    let web = named(h3, &root, "web1", "web").unwrap();
    let web_addr = h3.address_of("web1");
    let (client, _) = h1.container("client");
    let gw1 = gateway(h1);

    // Short and in the cluster domain, from a container of another bubble.
    wait_until("h1 to learn web", Duration::from_secs(10), || {
        known(h1, "web")
    });
    eprintln!("web known in bubble 1 after {:?}", started.elapsed());
    for name in ["web", "web.hpk.internal", "WEB.hpk.internal"] {
        let out = nslookup(&client, name, gw1).unwrap_or_else(|| panic!("{name} unresolved"));
        assert!(out.contains(&web_addr.to_string()), "{name}: {out}");
    }
    // Reverse: the overlay address names the container.
    let out = nslookup(&client, &web_addr.to_string(), gw1).expect("reverse lookup");
    assert!(out.contains("web.hpk.internal"), "{out}");
    // Unknown names in the domain do not exist; other names go upstream.
    assert!(nslookup(&client, "nosuch.hpk.internal", gw1).is_none());
    let out = nslookup(&client, OUTSIDE_NAME, gw1).expect("forwarded upstream");
    assert!(out.contains(OUTSIDE_ADDRESS), "{out}");
    let counters = h1.netd().status().names.unwrap().counters;
    assert!(counters["forwarded"] >= 1, "{counters:?}");
    // Asked again: from the cache.
    assert!(nslookup(&client, OUTSIDE_NAME, gw1).is_some());
    let counters = h1.netd().status().names.unwrap().counters;
    assert!(counters["cached"] >= 1, "{counters:?}");

    // A second `web` anywhere is refused before it runs, saying where web runs; nothing
    // is left of it.
    let err = named(h2, &root, "web2", "web").unwrap_err();
    assert!(
        err.contains(&format!(
            "name web is taken: container web1 at {web_addr} in the bubble of {}",
            h3.addr
        )),
        "{err}"
    );
    h2.netd().assert_empty(&h2.ns, &[]);

    // Stopped: gone everywhere, and the name is free again.
    web.stop();
    wait_until("web to leave bubble 1", Duration::from_secs(10), || {
        !known(h1, "web")
    });
    assert!(nslookup(&client, "web", gw1).is_none());
    let again = named(h2, &root, "web3", "web").expect("the name is free again");
    let addr = h2.address_of("web3");
    wait_until("web to point at bubble 2", Duration::from_secs(10), || {
        resolve_from(&h1.ns.path(), gw1, "web") == Some(addr)
    });
    drop(again);
    wait_until("the names in etcd to go", Duration::from_secs(15), || {
        cluster
            .etcd
            .get_prefix("/coreos.com/network/hpk-names/")
            .is_empty()
    });
}

#[test]
fn a_dead_bubbles_names_expire_and_come_back_with_it() {
    let mut cluster = Cluster::new(2);
    let root = cluster.scratch.0.clone();
    for h in &mut cluster.hosts {
        h.start_netd_etcd(&cluster.etcd, &["--names-ttl", "3"]);
    }
    let _web = named(&cluster.hosts[1], &root, "web1", "web").unwrap();
    wait_until("h1 to learn web", Duration::from_secs(10), || {
        known(&cluster.hosts[0], "web")
    });
    // The bubble's hpk-netd dies: its lease is no longer kept alive, its names expire.
    cluster.hosts[1].netd_mut().proc.stop_with(Signal::SIGKILL);
    wait_until("web to expire", Duration::from_secs(15), || {
        !known(&cluster.hosts[0], "web")
    });
    assert!(resolve_from(
        &cluster.hosts[0].ns.path(),
        gateway(&cluster.hosts[0]),
        "web"
    )
    .is_none());
    // Back: the container is adopted and its name registered again.
    let url = cluster.etcd.url.clone();
    let args = Host::etcd_args(&url, &["--names-ttl", "3"]);
    cluster.hosts[1].start_netd(&args);
    wait_until("web to come back", Duration::from_secs(15), || {
        known(&cluster.hosts[0], "web")
    });
}

#[test]
fn without_etcd_names_are_the_bubbles_own_and_bad_queries_are_answered() {
    let site = Site::flannel("10.244.31.1/24");
    let root = site.scratch.0.clone();
    let h = &site.host;
    let db = named(h, &root, "db1", "db").unwrap();
    let db_addr = h.address_of("db1");
    let (client, _) = h.container("client");
    let gw = gateway(h);
    let status = h.netd().status().names.unwrap();
    assert_eq!(status.scope, "bubble");
    let out = nslookup(&client, "db", gw).expect("db resolves");
    assert!(out.contains(&db_addr.to_string()), "{out}");
    let err = named(h, &root, "db2", "db").unwrap_err();
    assert!(err.contains("name db is taken: container db1"), "{err}");
    // A name that is no DNS label is refused with the reason, and leaves nothing.
    let err = named(h, &root, "bad", "my_db").unwrap_err();
    assert!(err.contains("'_' is not allowed"), "{err}");

    // Garbage, a response, an oversized datagram: FORMERR or silence, and the server
    // goes on answering.
    let ns = h.ns.path();
    let replies = spawn_in(&ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let mut response =
            hpk_netd::names::answer::query_bytes(1, "db.", hickory_proto::rr::RecordType::A);
        response[2] |= 0x80;
        let inputs: Vec<Vec<u8>> = vec![
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03db".to_vec(),
            response,
            vec![0x55; 65000],
        ];
        for input in inputs {
            sock.send_to(&input, (gw, 53)).unwrap();
            let mut buf = [0u8; 1500];
            got.push(sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec()));
        }
        got
    })
    .join()
    .unwrap();
    let formerr = replies[0].as_ref().expect("a truncated query is answered");
    let m = hickory_proto::op::Message::from_vec(formerr).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::FormErr
    );
    assert!(replies[1].is_none(), "a response was answered");
    assert!(nslookup(&client, "db", gw).is_some());
    drop(db);
    wait_until("db to be released", Duration::from_secs(10), || {
        !known(h, "db")
    });
}

/// One container floods the server with queries it must forward (to an upstream that
/// never answers): it gets REFUSED beyond its share, and the others are still answered.
#[test]
fn a_flooding_container_does_not_silence_the_others() {
    let silent = format!("{}:5353", world::OUTSIDE);
    let site = Site::flannel_with(
        "10.244.32.1/24",
        &["--dns-upstream", &silent, "--names-client-qps", "2000"],
    );
    let root = site.scratch.0.clone();
    let h = &site.host;
    let _db = named(h, &root, "db1", "db").unwrap();
    let (flooder, _) = h.container("flooder");
    let (client, _) = h.container("client");
    let gw = gateway(h);
    let flood_ns = flooder.netns();
    let flood = std::thread::spawn(move || {
        spawn_in(&flood_ns, move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut sent = 0u32;
            while Instant::now() < deadline {
                let q = hpk_netd::names::answer::query_bytes(
                    sent as u16,
                    &format!("q{sent}.example.org."),
                    hickory_proto::rr::RecordType::A,
                );
                let _ = sock.send_to(&q, (gw, 53));
                sent += 1;
            }
            sent
        })
        .join()
        .unwrap()
    });
    let mut answered = 0;
    for _ in 0..5 {
        if nslookup(&client, "db", gw).is_some() {
            answered += 1;
        }
    }
    let sent = flood.join().unwrap();
    assert!(sent > 1000, "the flood sent only {sent} queries");
    assert_eq!(answered, 5, "the other container was not answered");
    let counters = h.netd().status().names.unwrap().counters;
    assert!(counters["limited"] > 0, "{counters:?}");
}
