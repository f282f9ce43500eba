//! The table of the bubble's endpoints, one slot per container id, and the state machine
//! a slot goes through: `Busy` while an attach builds it, `Ready` while it serves, and
//! `Leaving` while it is torn down in the background.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hpk_hook::proto::{AttachRequest, Attachment, EndpointKind};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::build::{self, check_own_netns, VethNotPossible};
use super::forwarder;
use super::hub::HubClient;
use super::store::{DataPath, Record, Store};
use super::{bubble_tap_name, netns_of, validate_id, EndpointSpec};
use crate::bubble::antispoof;
use crate::bubble::ipam::Ipam;
use crate::datapath::args::{Mode, NetDaemonArgs};
use crate::datapath::shortcut::{Identity, ShortcutCounters};
use crate::subnet::SubnetEnv;
use crate::sys::process::ProcId;

/// How long a forwarder gets to exit on SIGTERM before SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

pub(super) enum Slot {
    /// An attach or adoption is building this endpoint.
    Busy,
    Ready {
        record: Record,
        stop: Arc<Notify>,
    },
    /// Being torn down; `done` turns true when it is gone.
    Leaving {
        record: Record,
        done: watch::Receiver<bool>,
    },
}

/// What every endpoint of this bubble is built with.
pub struct Settings {
    pub env: SubnetEnv,
    pub bridge: String,
    /// The interface's name inside each container.
    pub container_tap: String,
    /// The hpk-net-daemon binary.
    pub net_daemon: PathBuf,
    /// The endpoint kind of containers that do not ask for one.
    pub endpoint: EndpointKind,
    /// Tap endpoints are served by the bubble's hub, not a forwarder each.
    pub tap_hub: bool,
    /// The hub may hand frames between its containers straight over.
    pub hub_shortcut: bool,
    /// Tap forwarders and the hub poll this long (µs) after traffic before they sleep.
    pub busy_poll_us: u64,
    /// Guard each endpoint's bridge port against spoofed MACs and addresses.
    pub antispoof: bool,
}

pub struct Endpoints {
    pub(super) settings: Settings,
    pub(super) ipam: Ipam,
    pub(super) store: Store,
    pub(super) slots: Mutex<HashMap<String, Slot>>,
    /// Where the anti-spoofing rules are changed.
    nft: antispoof::Nft,
    /// The bubble's shared tap forwarder.
    hub: HubClient,
}

impl Endpoints {
    pub fn new(settings: Settings, ipam: Ipam, store: Store, state_dir: &Path) -> Arc<Endpoints> {
        let hub = HubClient::new(state_dir, &settings.net_daemon, settings.busy_poll_us);
        Arc::new(Endpoints {
            hub,
            settings,
            ipam,
            store,
            slots: Mutex::new(HashMap::new()),
            nft: antispoof::Nft::default(),
        })
    }

    /// Builds the data path of `spec`: a veth pair; two taps and the hub or a forwarder of
    /// their own; or two taps and a server and client over a socket.
    pub(super) fn start_data_path(&self, spec: &EndpointSpec) -> Result<DataPath> {
        // The rules name the port, not its index: they go in while the port is built.
        let (started, guarded) = std::thread::scope(|scope| {
            let guard = scope.spawn(|| self.guard(spec));
            let started = self.build_data_path(spec);
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
                self.stop_data_path(&Record {
                    spec: spec.clone(),
                    path,
                });
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

    /// Lets the endpoint's port carry only its own MAC and address (when configured).
    pub(super) fn guard(&self, spec: &EndpointSpec) -> Result<()> {
        if !self.settings.antispoof {
            return Ok(());
        }
        let att = &spec.attachment;
        self.nft
            .run(&antispoof::guard_script(
                &att.bubble_tap,
                build::container_mac(att.address),
                att.address,
            ))
            .with_context(|| format!("anti-spoofing rules of {}", spec.id()))
    }

    /// Removes the port's rules; absent ones (never made, or a reset) are no error.
    fn unguard(&self, port: &str) {
        if self.settings.antispoof {
            let _ = self.nft.run(&antispoof::unguard_script(port));
        }
    }

    fn build_data_path(&self, spec: &EndpointSpec) -> Result<DataPath> {
        let daemon = &self.settings.net_daemon;
        let log = self.store.log_path(spec.id());
        match spec.attachment.kind {
            EndpointKind::Veth | EndpointKind::Auto => {
                build::build_veth(spec)?;
                Ok(DataPath::default())
            }
            EndpointKind::Tap if self.settings.tap_hub => {
                let (container, bubble) = build::build_taps(spec)?;
                let owner = ProcId {
                    pid: spec.pid,
                    start: spec.pid_start,
                };
                // Without an identity the hub sends all the endpoint's frames to the bridge.
                let address = spec.attachment.address;
                let identity = self.settings.hub_shortcut.then(|| Identity {
                    mac: build::container_mac(address),
                    address,
                });
                let hub = self
                    .hub
                    .add(spec.id(), owner, identity, [container, bubble])?;
                Ok(DataPath {
                    forwarder: Some(hub),
                    client: None,
                    hub: true,
                })
            }
            EndpointKind::Tap => {
                let (container, bubble) = build::build_taps(spec)?;
                let (pid, busy_poll_us) = (spec.pid, self.settings.busy_poll_us);
                let forwarder = forwarder::spawn(
                    daemon,
                    vec![container.into(), bubble.into()],
                    |fds| NetDaemonArgs {
                        busy_poll_us,
                        ..NetDaemonArgs::inherited(fds[0], fds[1], pid)
                    },
                    &log,
                )?;
                Ok(DataPath {
                    forwarder: Some(forwarder),
                    ..DataPath::default()
                })
            }
            EndpointKind::Socket => {
                let (container, bubble) = build::build_taps(spec)?;
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
                    Ok(client) => Ok(DataPath {
                        forwarder: Some(server),
                        client: Some(client),
                        hub: false,
                    }),
                    Err(e) => {
                        forwarder::stop(server, STOP_GRACE);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Builds `spec` as the kind `wanted`: `auto` is a veth where hpk-netd may move a link
    /// into the container's namespace, else a tap pair (said in the log, with why).
    fn start_kind(&self, spec: &mut EndpointSpec, wanted: EndpointKind) -> Result<DataPath> {
        spec.attachment.kind = match wanted {
            EndpointKind::Auto => EndpointKind::Veth,
            kind => kind,
        };
        match self.start_data_path(spec) {
            Err(e) if wanted == EndpointKind::Auto && e.is::<VethNotPossible>() => {
                info!(id = spec.id(), reason = %e, "no veth here; the endpoint is a tap pair with a forwarder");
                spec.attachment.kind = EndpointKind::Tap;
                self.start_data_path(spec)
            }
            other => other,
        }
    }

    /// The blocking part of an attach; undoes its own work on failure.
    fn build_new(&self, req: &AttachRequest) -> Result<Record> {
        let started = std::time::Instant::now();
        let proc_id = ProcId::of(req.pid).ok_or_else(|| {
            anyhow!("container process {} is gone (the container exited before its network was attached)", req.pid)
        })?;
        check_own_netns(&netns_of(req.pid))?;
        let address = self.ipam.allocate(&req.id, req.address)?;
        let allocated = started.elapsed();
        let env = &self.settings.env;
        let mut spec = EndpointSpec {
            attachment: Attachment {
                id: req.id.clone(),
                address,
                prefix_len: env.subnet.prefix_len(),
                gateway: env.gateway,
                mtu: env.mtu,
                tap: self.settings.container_tap.clone(),
                bubble_tap: bubble_tap_name(&req.id),
                kind: EndpointKind::Auto,
            },
            pid: req.pid,
            pid_start: proc_id.start,
            bridge: self.settings.bridge.clone(),
        };
        let wanted = req.endpoint.unwrap_or(self.settings.endpoint);
        let record = self.start_kind(&mut spec, wanted).and_then(|path| {
            let built = started.elapsed();
            let record = Record { spec, path };
            if let Err(e) = self.store.save(&record) {
                self.stop_data_path(&record);
                return Err(e);
            }
            // Where an attach's time goes, for profiling (HPK_LOG=hpk_netd=debug).
            debug!(
                id = req.id,
                allocated_us = allocated.as_micros(),
                built_us = built.as_micros(),
                saved_us = started.elapsed().as_micros(),
                "attach timings"
            );
            Ok(record)
        });
        if record.is_err() {
            let _ = self.ipam.release(address, &req.id);
            self.store.remove(&req.id);
        }
        record
    }

    pub async fn attach(self: &Arc<Self>, req: AttachRequest) -> Result<Attachment> {
        validate_id(&req.id)?;
        loop {
            let (leaving, dead) = {
                let slots = self.slots.lock().unwrap();
                match slots.get(&req.id) {
                    Some(Slot::Leaving { done, .. }) => (Some(done.clone()), false),
                    // A container that died without a poststop keeps its endpoint for a
                    // grace period: its id may be used again at once all the same.
                    Some(Slot::Ready { record, .. }) => {
                        let owner = ProcId {
                            pid: record.spec.pid,
                            start: record.spec.pid_start,
                        };
                        (None, record.spec.pid != req.pid && !owner.alive())
                    }
                    _ => (None, false),
                }
            };
            // A previous container of this id is still being torn down: wait for it.
            match leaving {
                Some(mut done) => {
                    let _ = done.wait_for(|gone| *gone).await;
                }
                None if dead => {
                    self.detach(&req.id, "container exited; its id is attached again")?;
                }
                None => break,
            }
        }
        {
            let mut slots = self.slots.lock().unwrap();
            match slots.get(&req.id) {
                Some(Slot::Ready { record, .. }) if record.spec.pid == req.pid => {
                    return Ok(record.spec.attachment.clone());
                }
                Some(Slot::Ready { record, .. }) => bail!(
                    "container id {} is already attached (process {}); detach it first",
                    req.id,
                    record.spec.pid
                ),
                Some(Slot::Busy) => bail!("container {} is being attached right now", req.id),
                Some(Slot::Leaving { .. }) => bail!(
                    "container id {} is being detached by another request; retry",
                    req.id
                ),
                None => {
                    slots.insert(req.id.clone(), Slot::Busy);
                }
            }
        }
        let svc = self.clone();
        let id = req.id.clone();
        let built = tokio::task::spawn_blocking(move || svc.build_new(&req))
            .await
            .map_err(|e| anyhow!("attach task failed: {e}"))
            .and_then(|r| r);
        match built {
            Ok(record) => {
                let att = &record.spec.attachment;
                info!(id, address = %att.address, kind = %att.kind, forwarder = ?record.path.forwarder.map(|f| f.pid), hub = record.path.hub, "attached");
                let att = record.spec.attachment.clone();
                self.install(record);
                Ok(att)
            }
            Err(e) => {
                self.slots.lock().unwrap().remove(&id);
                Err(e)
            }
        }
    }

    /// Makes `record` the endpoint of its id and starts its supervisor.
    pub(super) fn install(self: &Arc<Self>, record: Record) {
        let stop = Arc::new(Notify::new());
        self.slots.lock().unwrap().insert(
            record.spec.id().to_owned(),
            Slot::Ready {
                record: record.clone(),
                stop: stop.clone(),
            },
        );
        tokio::spawn(self.clone().supervise(record, stop));
    }

    /// Takes the endpoint of `id` out of service: `Ok(Ok(..))` when the caller must tear
    /// it down, `Ok(Err(done))` when a teardown is already under way.
    #[allow(clippy::type_complexity)]
    fn take(
        &self,
        id: &str,
    ) -> Result<Option<Result<(Record, watch::Sender<bool>), watch::Receiver<bool>>>> {
        let mut slots = self.slots.lock().unwrap();
        match slots.get(id) {
            None => {
                // Under the lock: no attach of `id` can start meanwhile.
                self.forget_leftovers(id);
                Ok(None)
            }
            Some(Slot::Busy) => {
                bail!("container {id} is being attached right now; retry the detach")
            }
            Some(Slot::Leaving { done, .. }) => Ok(Some(Err(done.clone()))),
            Some(Slot::Ready { record, stop }) => {
                stop.notify_one();
                let record = record.clone();
                let (tx, rx) = watch::channel(false);
                slots.insert(
                    id.to_owned(),
                    Slot::Leaving {
                        record: record.clone(),
                        done: rx,
                    },
                );
                Ok(Some(Ok((record, tx))))
            }
        }
    }

    /// Removes the data path: the forwarder (its taps go with it), or the veth pair.
    pub(super) fn stop_data_path(&self, record: &Record) {
        self.stop_processes(record.spec.id(), record.path);
        let att = &record.spec.attachment;
        if let Err(e) = build::remove_bubble_link(&att.bubble_tap) {
            warn!(id = att.id, error = %e, "bubble link cleanup");
        }
        self.unguard(&att.bubble_tap);
    }

    /// Stops the processes of endpoint `id`'s data path; the hub only drops the endpoint.
    pub(super) fn stop_processes(&self, id: &str, path: DataPath) {
        match path.forwarder {
            Some(hub) if path.hub => self.hub.remove(hub, id),
            _ => path
                .processes()
                .for_each(|p| forwarder::stop(p, STOP_GRACE)),
        }
    }

    /// Whether the processes of `record`'s data path run and serve it. `hubs` keeps what
    /// each hub serves: one question per hub, not one per endpoint (a hub that did not
    /// answer is asked again for the next).
    pub(super) fn processes_intact(
        &self,
        record: &Record,
        hubs: &mut HashMap<ProcId, HashSet<String>>,
    ) -> bool {
        match record.path.forwarder {
            Some(hub) if record.path.hub => {
                let ids = match hubs.entry(hub) {
                    Entry::Occupied(known) => Some(known.into_mut()),
                    Entry::Vacant(slot) => self.hub.endpoints(hub).map(|ids| slot.insert(ids)),
                };
                ids.is_some_and(|ids| ids.contains(record.spec.id()))
            }
            _ => record.processes().all(|p| p.alive()),
        }
    }

    /// Removes the data path and frees the address and records.
    pub(super) fn teardown(&self, record: &Record) {
        self.stop_data_path(record);
        let att = &record.spec.attachment;
        if let Err(e) = self.ipam.release(att.address, &att.id) {
            warn!(id = att.id, error = %e, "address release");
        }
        self.store.remove(&att.id);
    }

    /// What an endpoint out of service left: an unreadable record (not adopted at
    /// start-up, its address kept reserved) goes with its container's detach.
    fn forget_leftovers(&self, id: &str) {
        if !self.store.has(id) {
            return;
        }
        warn!(
            id,
            "detaching an endpoint known only by an unreadable record"
        );
        let link = bubble_tap_name(id);
        if let Err(e) = build::remove_bubble_link(&link) {
            warn!(id, error = %format!("{e:#}"), "cannot remove the bubble-side link");
        }
        self.unguard(&link);
        self.ipam.release_owner(id);
        self.store.remove(id);
    }

    /// Takes `id` out of service and tears it down in the background: the kernel needs
    /// tens of milliseconds to remove the taps, and a poststop hook should not wait for
    /// that. The address is released only once the taps are gone. Returns whether this
    /// call detached it (an unknown id, or one already leaving, is a success too).
    pub fn detach(self: &Arc<Self>, id: &str, why: &str) -> Result<bool> {
        validate_id(id)?;
        let (record, done) = match self.take(id)? {
            None | Some(Err(_)) => return Ok(false),
            Some(Ok(taken)) => taken,
        };
        let svc = self.clone();
        let (id, why) = (id.to_owned(), why.to_owned());
        tokio::spawn(async move {
            let r = record.clone();
            let s = svc.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || s.teardown(&r)).await {
                error!(id, error = %e, "teardown task failed");
            }
            svc.slots.lock().unwrap().remove(&id);
            let _ = done.send(true);
            info!(id, address = %record.spec.attachment.address, why, "detached");
        });
        Ok(true)
    }

    /// Whether `stop` still belongs to the ready endpoint `id` (no detach came).
    pub(super) fn still_ours(&self, id: &str, stop: &Arc<Notify>) -> bool {
        matches!(self.slots.lock().unwrap().get(id), Some(Slot::Ready { stop: s, .. }) if Arc::ptr_eq(s, stop))
    }

    /// The last lines the forwarder of `record` logged (its own log, or the hub's), for
    /// netd's own log.
    pub(super) fn forwarder_log_tail(&self, record: &Record) -> String {
        if record.path.hub {
            forwarder::log_tail(self.hub.log_path())
        } else {
            forwarder::log_tail(&self.store.log_path(record.spec.id()))
        }
    }

    /// The records of every endpoint that is serving or leaving, for status.
    pub fn records(&self) -> Vec<Record> {
        self.slots
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| match s {
                Slot::Ready { record, .. } | Slot::Leaving { record, .. } => Some(record.clone()),
                Slot::Busy => None,
            })
            .collect()
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// What the bubble's hub moved between its containers past the bridge, per endpoint.
    pub fn shortcut_counters(&self) -> std::collections::BTreeMap<String, ShortcutCounters> {
        self.hub.counters()
    }
}
