//! Building a container's endpoint: its interface (address, route, MTU) inside its
//! namespace and the bubble-side link on the bridge; either a veth pair (the kernel's own
//! path) or two taps for a forwarder, the hub, or a socket pair. Blocking: runs on a
//! worker thread.
//!
//! The endpoint table works against [`DataPathBuilder`], so that its states can be
//! tested without root; [`KernelBuilder`] is the real one.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hpk_hook::proto::{Attachment, EndpointKind};
use tracing::warn;

use super::hub::HubClient;
use super::store::{DataPath, Record, Store};
use super::table::Settings;
use super::{bubble_tap_name, forwarder, EndpointSpec};
use crate::bubble::antispoof;
use crate::datapath::args::{Mode, NetDaemonArgs};
use crate::datapath::shortcut::{Identity, ShortcutCounters};
use crate::sys::netlink::{LinkChange, Netlink, VethPair, LOOPBACK_INDEX};
use crate::sys::netns::NetnsRef;
use crate::sys::process::ProcId;
use crate::sys::tap::{Tap, TapOptions};

/// How long a forwarder gets to exit on SIGTERM before SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

/// What each hub serves, asked once per hub while endpoints are checked.
pub type HubAnswers = HashMap<ProcId, HashSet<String>>;

/// What the endpoint table needs done to the system: building, checking and removing
/// data paths. Blocking calls, made on worker threads.
pub trait DataPathBuilder: Send + Sync {
    /// The running container process `pid`, refused when it shares our namespace.
    fn container(&self, pid: i32) -> Result<ProcId>;
    /// Builds and guards the data path of `spec`, of kind `spec.attachment.kind` (veth,
    /// tap or socket); on error nothing is left.
    fn start(&self, spec: &EndpointSpec) -> Result<DataPath>;
    /// Removes a data path: its processes, its bubble link and its guard.
    fn stop(&self, spec: &EndpointSpec, path: DataPath);
    /// Stops the processes of endpoint `id`'s data path; the hub only drops the endpoint.
    fn stop_processes(&self, id: &str, path: DataPath);
    /// Whether `record`'s data path is still whole; `hubs` keeps what each hub serves,
    /// so that one question per hub is asked, not one per endpoint.
    fn intact(&self, record: &Record, hubs: &mut HubAnswers) -> bool;
    /// Guards the endpoint's port again (a restart forgot the rules' owner).
    fn guard(&self, spec: &EndpointSpec) -> Result<()>;
    /// Removes the bubble link and guard of endpoint `id`, known by its id alone.
    fn remove_link(&self, id: &str);
    /// Whether the bubble link of endpoint `id` exists.
    fn link_exists(&self, id: &str) -> bool;
    /// The last lines the forwarder of `record` logged (its own log, or the hub's).
    fn log_tail(&self, record: &Record) -> String;
    /// What the hub moved between its containers past the bridge, per endpoint.
    fn shortcut_counters(&self) -> BTreeMap<String, ShortcutCounters>;
}

/// Builds data paths in the kernel (veth, taps, anti-spoofing rules) and starts their
/// forwarders.
pub struct KernelBuilder {
    net_daemon: PathBuf,
    tap_hub: bool,
    hub_shortcut: bool,
    busy_poll_us: u64,
    antispoof: bool,
    /// Where forwarders log and socket pairs meet.
    store: Store,
    /// Where the anti-spoofing rules are changed.
    nft: antispoof::Nft,
    /// The bubble's shared tap forwarder.
    hub: HubClient,
}

impl KernelBuilder {
    pub fn new(settings: &Settings, store: Store, state_dir: &Path) -> KernelBuilder {
        KernelBuilder {
            hub: HubClient::new(state_dir, &settings.net_daemon, settings.busy_poll_us),
            net_daemon: settings.net_daemon.clone(),
            tap_hub: settings.tap_hub,
            hub_shortcut: settings.hub_shortcut,
            busy_poll_us: settings.busy_poll_us,
            antispoof: settings.antispoof,
            store,
            nft: antispoof::Nft::default(),
        }
    }

    /// Removes the port's rules; absent ones (never made, or a reset) are no error.
    fn unguard(&self, port: &str) {
        if self.antispoof {
            let _ = self.nft.run(&antispoof::unguard_script(port));
        }
    }

    /// A veth pair; two taps and the hub or a forwarder of their own; or two taps and a
    /// server and client over a socket.
    fn build(&self, spec: &EndpointSpec) -> Result<DataPath> {
        let daemon = &self.net_daemon;
        let log = self.store.log_path(spec.id());
        match spec.attachment.kind {
            EndpointKind::Veth | EndpointKind::Auto => {
                build_veth(spec)?;
                Ok(DataPath::Veth)
            }
            EndpointKind::Tap if self.tap_hub => {
                let (container, bubble) = build_taps(spec)?;
                let owner = ProcId {
                    pid: spec.pid,
                    start: spec.pid_start,
                };
                // Without an identity the hub sends all the endpoint's frames to the bridge.
                let address = spec.attachment.address;
                let identity = self.hub_shortcut.then(|| Identity {
                    mac: container_mac(address),
                    address,
                });
                let hub = self
                    .hub
                    .add(spec.id(), owner, identity, [container, bubble])?;
                Ok(DataPath::Hub(hub))
            }
            EndpointKind::Tap => {
                let (container, bubble) = build_taps(spec)?;
                let (pid, busy_poll_us) = (spec.pid, self.busy_poll_us);
                let forwarder = forwarder::spawn(
                    daemon,
                    vec![container.into(), bubble.into()],
                    |fds| NetDaemonArgs {
                        busy_poll_us,
                        ..NetDaemonArgs::inherited(fds[0], fds[1], pid)
                    },
                    &log,
                )?;
                Ok(DataPath::Forwarder(forwarder))
            }
            EndpointKind::Socket => {
                let (container, bubble) = build_taps(spec)?;
                let socket = self.store.socket_path(spec.id());
                let _ = std::fs::remove_file(&socket);
                let (at, pid) = (socket.clone(), spec.pid);
                let server = forwarder::spawn(
                    daemon,
                    vec![bubble.into()],
                    |fds| NetDaemonArgs::socket_end(Mode::Server, fds[0], at, pid),
                    &log,
                )?;
                let client = forwarder::spawn(
                    daemon,
                    vec![container.into()],
                    |fds| NetDaemonArgs::socket_end(Mode::Client, fds[0], socket, pid),
                    &log,
                );
                match client {
                    Ok(client) => Ok(DataPath::SocketPair { server, client }),
                    Err(e) => {
                        forwarder::stop(server, STOP_GRACE);
                        Err(e)
                    }
                }
            }
        }
    }
}

impl DataPathBuilder for KernelBuilder {
    fn container(&self, pid: i32) -> Result<ProcId> {
        let proc_id = ProcId::of(pid).ok_or_else(|| {
            anyhow!("container process {pid} is gone (the container exited before its network was attached)")
        })?;
        check_own_netns(&super::netns_of(pid))?;
        Ok(proc_id)
    }

    fn start(&self, spec: &EndpointSpec) -> Result<DataPath> {
        // The rules name the port, not its index: they go in while the port is built.
        let (started, guarded) = std::thread::scope(|scope| {
            let guard = scope.spawn(|| self.guard(spec));
            let started = self.build(spec);
            (
                started,
                guard
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("the guard thread panicked"))),
            )
        });
        match (started, guarded) {
            (Ok(started), Ok(())) => Ok(started),
            (Ok(path), Err(e)) => {
                self.stop(spec, path);
                Err(e)
            }
            (Err(e), guarded) => {
                if guarded.is_ok() {
                    self.unguard(&spec.attachment.bubble_tap);
                }
                Err(e)
            }
        }
    }

    fn stop(&self, spec: &EndpointSpec, path: DataPath) {
        self.stop_processes(spec.id(), path);
        let att = &spec.attachment;
        if let Err(e) = remove_bubble_link(&att.bubble_tap) {
            warn!(id = att.id, error = %e, "bubble link cleanup");
        }
        self.unguard(&att.bubble_tap);
    }

    fn stop_processes(&self, id: &str, path: DataPath) {
        match path {
            DataPath::Hub(hub) => self.hub.remove(hub, id),
            _ => path
                .processes()
                .for_each(|p| forwarder::stop(p, STOP_GRACE)),
        }
    }

    fn intact(&self, record: &Record, hubs: &mut HubAnswers) -> bool {
        match record.path {
            DataPath::Veth => bubble_link_exists(&record.spec.attachment.bubble_tap),
            DataPath::Hub(hub) => {
                let ids = match hubs.entry(hub) {
                    Entry::Occupied(known) => Some(known.into_mut()),
                    Entry::Vacant(slot) => self.hub.endpoints(hub).map(|ids| slot.insert(ids)),
                };
                ids.is_some_and(|ids| ids.contains(record.spec.id()))
            }
            DataPath::Forwarder(_) | DataPath::SocketPair { .. } => {
                record.processes().all(|p| p.alive())
            }
        }
    }

    /// Lets the endpoint's port carry only its own MAC and address (when configured).
    fn guard(&self, spec: &EndpointSpec) -> Result<()> {
        if !self.antispoof {
            return Ok(());
        }
        let att = &spec.attachment;
        self.nft
            .run(&antispoof::guard_script(
                &att.bubble_tap,
                container_mac(att.address),
                att.address,
            ))
            .with_context(|| format!("anti-spoofing rules of {}", spec.id()))
    }

    fn remove_link(&self, id: &str) {
        let link = bubble_tap_name(id);
        if let Err(e) = remove_bubble_link(&link) {
            warn!(id, error = %format!("{e:#}"), "cannot remove the bubble-side link");
        }
        self.unguard(&link);
    }

    fn link_exists(&self, id: &str) -> bool {
        bubble_link_exists(&bubble_tap_name(id))
    }

    fn log_tail(&self, record: &Record) -> String {
        match record.path {
            DataPath::Hub(_) => forwarder::log_tail(self.hub.log_path()),
            _ => forwarder::log_tail(&self.store.log_path(record.spec.id())),
        }
    }

    fn shortcut_counters(&self) -> BTreeMap<String, ShortcutCounters> {
        self.hub.counters()
    }
}

/// Refuses a container that shares the bubble's network namespace.
pub fn check_own_netns(netns: &Path) -> Result<()> {
    let theirs = std::fs::metadata(netns).with_context(|| {
        format!(
            "cannot inspect {}: has the container exited?",
            netns.display()
        )
    })?;
    let ours = std::fs::metadata("/proc/self/ns/net").context("cannot inspect our namespace")?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        bail!("the container shares the bubble's network namespace; give it its own (a \"network\" entry in linux.namespaces of config.json)");
    }
    Ok(())
}

/// The container interface's MAC, from its address (as CNI's bridge plugin does): a
/// rebuilt endpoint keeps it, so its neighbours' ARP entries stay right.
pub fn container_mac(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// Address and default route of the container's interface `index`, and `lo` up; runs
/// inside the container's namespace.
fn address_inside(nl: &mut Netlink, index: u32, inner: &Attachment) -> Result<()> {
    nl.add_ipv4_address(index, inner.address, inner.prefix_len)?;
    nl.replace_ipv4_route(Ipv4Addr::UNSPECIFIED, 0, Some(inner.gateway), index, false)?;
    nl.set_link(
        LOOPBACK_INDEX,
        LinkChange {
            up: true,
            ..LinkChange::default()
        },
    )
    .context("cannot bring lo up")
}

/// The container's tap: MAC, MTU, up, address and route; runs inside its namespace.
fn configure_tap_inside(inner: &Attachment) -> Result<()> {
    let mut nl = Netlink::open()?;
    let index = nl.link_index(&inner.tap)?.context("interface vanished")?;
    nl.bring_up(
        &inner.tap,
        index,
        LinkChange {
            address: Some(container_mac(inner.address)),
            mtu: Some(inner.mtu),
            ..LinkChange::default()
        },
    )?;
    address_inside(&mut nl, index, inner)
}

/// Creates and configures both taps; returns (container tap, bubble tap). On error,
/// whatever was made is dropped, which removes it.
pub fn build_taps(spec: &EndpointSpec) -> Result<(Tap, Tap)> {
    let netns = NetnsRef::parse(&spec.netns().to_string_lossy())?;
    check_own_netns(netns.path())?;
    let opts = TapOptions { vnet_hdr: true };
    let inner = spec.attachment.clone();
    let container = netns
        .run(move || {
            let tap = Tap::create(&inner.tap, opts)?;
            configure_tap_inside(&inner)?;
            Ok(tap)
        })
        .with_context(|| format!("container side of {} (in {netns})", spec.id()))?;
    let att = &spec.attachment;
    let bubble = Tap::create(&att.bubble_tap, opts)?;
    Netlink::open()?
        .configure(&att.bubble_tap, att.mtu, Some(&spec.bridge))
        .with_context(|| format!("bubble side of {}", spec.id()))?;
    Ok((container, bubble))
}

/// Why a veth could not be made where a tap pair still can.
#[derive(Debug, thiserror::Error)]
#[error("cannot move a link into {netns}: {source} (hpk-netd needs CAP_NET_ADMIN over the container's network namespace)")]
pub struct VethNotPossible {
    netns: String,
    source: std::io::Error,
}

/// Creates the veth pair, its container end born inside the container's namespace under
/// the container's interface name, and configures both ends. On error nothing is left:
/// removing the bubble end removes the pair.
pub fn build_veth(spec: &EndpointSpec) -> Result<()> {
    let netns = NetnsRef::parse(&spec.netns().to_string_lossy())?;
    check_own_netns(netns.path())?;
    let att = &spec.attachment;
    let ns_file = netns.open()?;
    let mut nl = Netlink::open()?;
    let master = nl.link_index(&spec.bridge)?.ok_or_else(|| {
        anyhow!(
            "bridge {:?} does not exist in this network namespace",
            spec.bridge
        )
    })?;
    // Both ends are named, sized, addressed (MAC) and bridged in this one request.
    nl.create_veth(&VethPair {
        name: att.bubble_tap.clone(),
        master,
        peer: att.tap.clone(),
        peer_netns: ns_file.as_raw_fd(),
        peer_mac: container_mac(att.address),
        mtu: att.mtu,
    })
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => anyhow!(VethNotPossible {
            netns: netns.to_string(),
            source: e,
        }),
        Some(libc::EEXIST) => anyhow!(
            "interface name {:?} is already taken in the container, or {:?} in the bubble",
            att.tap,
            att.bubble_tap
        ),
        _ => anyhow!(
            "cannot create the veth pair {} / {}: {e}",
            att.bubble_tap,
            att.tap
        ),
    })?;
    let inner = att.clone();
    let configured = netns
        .run(move || {
            let mut nl = Netlink::open()?;
            let index = nl.link_index(&inner.tap)?.context("interface vanished")?;
            nl.bring_up(&inner.tap, index, LinkChange::default())?;
            address_inside(&mut nl, index, &inner)
        })
        .with_context(|| format!("container side of {} (in {netns})", spec.id()));
    if configured.is_err() {
        let _ = remove_bubble_link(&att.bubble_tap);
    }
    configured
}

/// Removes the bubble-side link: a veth (which takes its container end along), or a
/// tap a forwarder left behind (normally it goes with its forwarder).
pub fn remove_bubble_link(name: &str) -> Result<()> {
    let mut nl = Netlink::open()?;
    if let Some(index) = nl.link_index(name)? {
        nl.delete_link(index)
            .with_context(|| format!("cannot remove {name}"))?;
    }
    Ok(())
}

/// Whether the bubble-side link `name` exists.
pub fn bubble_link_exists(name: &str) -> bool {
    Netlink::open()
        .and_then(|mut nl| nl.link_index(name))
        .is_ok_and(|i| i.is_some())
}
