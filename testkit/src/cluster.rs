//! Hosts with a bubble each: a namespace on the world's LAN, a directory for its files,
//! runc with a sleeper bundle, and hpk-netd once started; a lone host (`Site`) and a
//! cluster of hosts sharing one etcd (`Cluster`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::etcd::Etcd;
use crate::netd::{subnet_env, Netd};
use crate::runc::{bundle, rootfs, BundleSpec, Container, Runc};
use crate::world::World;
use crate::{prefix, run, Netns, Proc, Scratch};

/// flannel's default etcd prefix and the network config the clusters use.
pub const ETCD_PREFIX: &str = "/coreos.com/network";
pub const NETWORK_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

pub struct Host {
    pub name: String,
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// hpk-netd's state, socket, subnet.env and log.
    pub dir: PathBuf,
    pub netd: Option<Netd>,
    pub runc: Runc,
    /// A bundle running `sleep 600` with our hooks pointing at this host's hpk-netd.
    pub bundle: PathBuf,
}

impl Host {
    /// A host on `world`'s LAN with its files in `root/name`; the busybox rootfs the
    /// bundles share is `root/rootfs`.
    pub fn on(world: &mut World, root: &Path, name: &str) -> Host {
        let (ns, addr) = world.host(name);
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        if !root.join("rootfs").exists() {
            rootfs(root);
        }
        let bundle = bundle(
            root,
            &format!("{name}-bundle"),
            &BundleSpec {
                args: &["sleep", "600"],
                socket: &dir.join("netd.sock"),
                annotations: &[],
                rootless: false,
                no_hooks: false,
            },
        );
        let runc = Runc::new(&ns, &dir);
        Host {
            name: name.to_owned(),
            ns,
            addr,
            dir,
            netd: None,
            runc,
            bundle,
        }
    }

    /// (Re)starts hpk-netd with `extra` flags and waits until it answers.
    pub fn start_netd(&mut self, extra: &[&str]) {
        self.netd = Some(Netd::start(&self.ns, &self.dir, extra));
    }

    /// Starts hpk-netd on a flanneld-style subnet.env for `subnet_with_gw` (MTU 1450),
    /// with `extra` flags.
    pub fn start_netd_flannel(&mut self, subnet_with_gw: &str, extra: &[&str]) {
        std::fs::write(
            self.dir.join("subnet.env"),
            subnet_env(subnet_with_gw, 1450, false),
        )
        .unwrap();
        self.start_netd(extra);
    }

    /// The flags of hpk-netd's etcd source on this host.
    pub fn etcd_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--subnet-source",
            "etcd",
            "--etcd-endpoints",
            url,
            "--iface",
            "eth0",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Starts hpk-netd with its etcd agent and waits until it answers.
    pub fn start_netd_etcd(&mut self, etcd: &Etcd, extra: &[&str]) {
        self.start_netd(&Self::etcd_args(&etcd.url, extra));
    }

    /// hpk-netd with the etcd source, started without waiting for it to answer (for
    /// tests of what it does while etcd is away); its log is `dir/netd.log`.
    pub fn spawn_netd_etcd(&self, url: &str) -> Proc {
        let log = std::fs::File::create(self.dir.join("netd.log")).unwrap();
        let child = Netd::command(&self.ns, &self.dir, &Self::etcd_args(url, &[]))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child,
            what: "hpk-netd".into(),
        }
    }

    pub fn netd(&self) -> &Netd {
        self.netd.as_ref().expect("hpk-netd runs on this host")
    }

    pub fn netd_mut(&mut self) -> &mut Netd {
        self.netd.as_mut().expect("hpk-netd runs on this host")
    }

    /// Whether hpk-netd's log contains `text`.
    pub fn log_says(&self, text: &str) -> bool {
        std::fs::read_to_string(self.dir.join("netd.log"))
            .unwrap_or_default()
            .contains(text)
    }

    pub fn subnet(&self) -> String {
        self.netd().status().subnet
    }

    /// The address hpk-netd gave container `id`.
    pub fn address_of(&self, id: &str) -> Ipv4Addr {
        self.netd()
            .status()
            .endpoints
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("{id} is not attached on {}", self.name))
            .address
    }

    /// PIDs of the forwarders of every tap endpoint.
    pub fn forwarders(&self) -> Vec<i32> {
        self.netd()
            .status()
            .endpoints
            .iter()
            .map(|e| e.forwarder_pid)
            .filter(|pid| *pid != 0)
            .collect()
    }

    /// The endpoint kinds in status, by container id.
    pub fn kinds(&self) -> Vec<(String, String)> {
        let mut kinds: Vec<_> = self
            .netd()
            .status()
            .endpoints
            .iter()
            .map(|e| (e.id.clone(), e.kind.to_string()))
            .collect();
        kinds.sort();
        kinds
    }

    /// Starts the sleeper bundle as container `id`; returns it with its address.
    pub fn container(&self, id: &str) -> (Container, Ipv4Addr) {
        let c = self
            .runc
            .run(id, &self.bundle)
            .unwrap_or_else(|e| panic!("{id} on {}: {e}", self.name));
        let addr = self.address_of(id);
        (c, addr)
    }

    /// Whether this host has a route for `subnet` through flannel.1.
    pub fn routes_to(&self, subnet: &str) -> bool {
        let out = self.ns.ip(&["route", "show", subnet]);
        String::from_utf8_lossy(&out.stdout).contains("dev flannel.1")
    }

    pub fn neighbours(&self) -> String {
        let out = self.ns.ip(&["neigh", "show", "dev", "flannel.1"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A world with one host, `h1`, and nothing started on it yet.
// Fields drop in order: the host (hpk-netd, containers) before the world and the files.
pub struct Site {
    pub host: Host,
    pub world: World,
    pub scratch: Scratch,
}

impl Site {
    pub fn new() -> Site {
        let p = prefix();
        let scratch = Scratch::new(&p);
        let mut world = World::new(&p);
        let host = Host::on(&mut world, &scratch.0, "h1");
        Site {
            host,
            world,
            scratch,
        }
    }

    /// A site whose hpk-netd takes `subnet_with_gw` from a flanneld subnet.env.
    pub fn flannel(subnet_with_gw: &str) -> Site {
        Site::flannel_with(subnet_with_gw, &[])
    }

    /// The same, hpk-netd started with `extra` flags (e.g. `--endpoint tap`).
    pub fn flannel_with(subnet_with_gw: &str, extra: &[&str]) -> Site {
        let mut site = Site::new();
        site.host.start_netd_flannel(subnet_with_gw, extra);
        site
    }
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

// Fields drop in order: hosts (hpk-netd, containers) before etcd, the world, the files.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub world: World,
    pub scratch: Scratch,
}

impl Cluster {
    /// `n` hosts on the LAN, etcd on the first, the network config written; no hpk-netd
    /// started yet.
    pub fn new(n: usize) -> Cluster {
        let p = prefix();
        let scratch = Scratch::new(&p);
        let mut world = World::new(&p);
        let hosts: Vec<Host> = (1..=n)
            .map(|i| Host::on(&mut world, &scratch.0, &format!("h{i}")))
            .collect();
        let etcd = Etcd::start(&hosts[0].ns, hosts[0].addr, &scratch.0);
        etcd.put(&format!("{ETCD_PREFIX}/config"), NETWORK_CONFIG);
        Cluster {
            hosts,
            etcd,
            world,
            scratch,
        }
    }

    /// A sleeper container `cI` on each of the first `n` hosts, with its address.
    pub fn containers(&self, n: usize) -> Vec<(Container, Ipv4Addr)> {
        self.hosts[..n]
            .iter()
            .enumerate()
            .map(|(i, h)| h.container(&format!("c{i}")))
            .collect()
    }

    /// Starts hpk-netd with the etcd agent on every host.
    pub fn start_all(&mut self) {
        for h in &mut self.hosts {
            h.start_netd_etcd(&self.etcd, &[]);
        }
    }
}

/// Sets up `ns` the way a real flanneld node would be: flannel.1, its lease in etcd with a
/// TTL, a pod bridge, and routes to the other leases; returns the bridge's address.
pub fn flanneld_node(etcd: &Etcd, ns: &Netns, addr: Ipv4Addr) -> Ipv4Addr {
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &addr.to_string(),
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    ns.ip(&["addr", "add", "10.244.200.0/32", "dev", "flannel.1"]);
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.244.200.1/24", "dev", "cni0"]);
    ns.ip(&["link", "set", "cni0", "up"]);
    let mac = ns.link_json("flannel.1").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let grant = etcd.ctl(&["lease", "grant", "600"]);
    let lease_id = String::from_utf8_lossy(&grant.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let value = format!(
        r#"{{"PublicIP":"{addr}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    let out = etcd.ctl(&[
        "put",
        "--lease",
        &lease_id,
        &format!("{ETCD_PREFIX}/subnets/10.244.200.0-24"),
        &value,
    ]);
    assert!(out.status.success());
    // What flanneld does for every other lease, parsed with flanneld's field names.
    for (key, value) in etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/")) {
        let subnet = key.rsplit('/').next().unwrap().replace('-', "/");
        if subnet == "10.244.200.0/24" {
            continue;
        }
        let lease: serde_json::Value =
            serde_json::from_str(&value).expect("our lease is JSON flanneld reads");
        assert_eq!(lease["BackendType"], "vxlan");
        assert!(lease["PublicIPv6"].is_null());
        let (public, vtep_mac) = (
            lease["PublicIP"].as_str().unwrap(),
            lease["BackendData"]["VtepMAC"].as_str().unwrap(),
        );
        assert_eq!(lease["BackendData"]["VNI"], 1);
        let vtep = subnet.split('/').next().unwrap();
        ns.ip(&[
            "neigh",
            "replace",
            vtep,
            "lladdr",
            vtep_mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        run(Command::new("bridge").args([
            "-n",
            &ns.name,
            "fdb",
            "replace",
            vtep_mac,
            "dev",
            "flannel.1",
            "dst",
            public,
            "self",
            "permanent",
        ]));
        ns.ip(&[
            "route",
            "replace",
            &subnet,
            "via",
            vtep,
            "dev",
            "flannel.1",
            "onlink",
        ]);
    }
    Ipv4Addr::new(10, 244, 200, 1)
}
