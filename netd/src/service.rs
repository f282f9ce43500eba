//! The bubble's endpoints: attach, detach, supervision, and adoption after a restart.
//!
//! Each endpoint has a supervisor task that waits on two pidfds: the container's process
//! (its exit without a poststop detaches the endpoint) and the forwarder's (its death
//! while the container lives rebuilds the data path with the same address).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hpk_hook::proto::{AttachRequest, Attachment, EndpointStatus, LeaseStatus, PeerStatus, Status};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::endpoint::{self, bubble_tap_name, netns_of, validate_id, EndpointSpec};
use crate::flannel::agent::SharedOverlay;
use crate::forwarder::{self, ProcId};
use crate::ipam::Ipam;
use crate::netlink::Netlink;
use crate::pidwatch::PidWatch;
use crate::store::{Record, Store};
use crate::subnet::SubnetEnv;

/// How long a forwarder gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Forwarder restarts allowed in a row before the endpoint is given up.
const MAX_RESTARTS: u32 = 5;

/// A forwarder that ran this long resets the restart count.
const RESTART_BUDGET_RESET: Duration = Duration::from_secs(60);

enum Slot {
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

/// What the service was set up with.
pub struct Settings {
    pub env: SubnetEnv,
    pub source: String,
    pub bridge: String,
    pub container_tap: String,
    pub masquerade: bool,
    pub net_daemon: PathBuf,
    /// The etcd agent's lease and peers, when it is the source.
    pub overlay: Option<SharedOverlay>,
}

pub struct Service {
    settings: Settings,
    ipam: Ipam,
    store: Store,
    slots: Mutex<HashMap<String, Slot>>,
}

/// A pidfd registered with the reactor: readable once the process has exited.
fn exit_notifier(watch: PidWatch) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open as long as it lives.
    unsafe { AsyncFd::register(watch.into_fd()) }.ok()
}

fn attachment(spec: &EndpointSpec) -> Attachment {
    Attachment {
        id: spec.id.clone(),
        address: spec.address,
        prefix_len: spec.prefix_len,
        gateway: spec.gateway,
        mtu: spec.mtu,
        tap: spec.tap.clone(),
        bubble_tap: spec.bubble_tap.clone(),
    }
}

impl Service {
    pub fn new(settings: Settings, ipam: Ipam, store: Store) -> Arc<Service> {
        Arc::new(Service {
            settings,
            ipam,
            store,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Builds the data path of `spec` and starts its forwarder.
    fn start_forwarder(&self, spec: &EndpointSpec) -> Result<ProcId> {
        let (container, bubble) = endpoint::build(spec)?;
        forwarder::spawn(
            &self.settings.net_daemon,
            container,
            bubble,
            spec.pid,
            &self.store.log_path(&spec.id),
        )
    }

    /// The blocking part of an attach; undoes its own work on failure.
    fn build_new(&self, req: &AttachRequest) -> Result<Record> {
        let proc_id = ProcId::of(req.pid).ok_or_else(|| {
            anyhow!("container process {} is gone (the container exited before its network was attached)", req.pid)
        })?;
        endpoint::check_own_netns(&netns_of(req.pid))?;
        let address = self.ipam.allocate(&req.id, req.address)?;
        let env = &self.settings.env;
        let spec = EndpointSpec {
            id: req.id.clone(),
            pid: req.pid,
            pid_start: proc_id.start,
            address,
            prefix_len: env.subnet.prefix_len(),
            gateway: env.gateway,
            mtu: env.mtu,
            tap: self.settings.container_tap.clone(),
            bubble_tap: bubble_tap_name(&req.id),
            bridge: self.settings.bridge.clone(),
        };
        let record = self.start_forwarder(&spec).and_then(|forwarder| {
            let record = Record { spec, forwarder };
            if let Err(e) = self.store.save(&record) {
                forwarder::stop(forwarder, STOP_GRACE);
                return Err(e);
            }
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
            let leaving = {
                let slots = self.slots.lock().unwrap();
                match slots.get(&req.id) {
                    Some(Slot::Leaving { done, .. }) => Some(done.clone()),
                    _ => None,
                }
            };
            // A previous container of this id is still being torn down: wait for it.
            match leaving {
                Some(mut done) => {
                    let _ = done.wait_for(|gone| *gone).await;
                }
                None => break,
            }
        }
        {
            let mut slots = self.slots.lock().unwrap();
            match slots.get(&req.id) {
                Some(Slot::Ready { record, .. }) if record.spec.pid == req.pid => {
                    return Ok(attachment(&record.spec));
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
                info!(id, address = %record.spec.address, forwarder = record.forwarder.pid, "attached");
                let att = attachment(&record.spec);
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
    fn install(self: &Arc<Self>, record: Record) {
        let stop = Arc::new(Notify::new());
        self.slots.lock().unwrap().insert(
            record.spec.id.clone(),
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
            None => Ok(None),
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

    /// Stops the forwarder (its taps go with it) and frees the address and records.
    fn teardown(&self, record: &Record) {
        forwarder::stop(record.forwarder, STOP_GRACE);
        if let Err(e) = endpoint::remove_bubble_tap(&record.spec.bubble_tap) {
            warn!(id = record.spec.id, error = %e, "bubble tap cleanup");
        }
        if let Err(e) = self.ipam.release(record.spec.address, &record.spec.id) {
            warn!(id = record.spec.id, error = %e, "address release");
        }
        self.store.remove(&record.spec.id);
    }

    /// Detaches `id`; an unknown id is a success. Returns whether it was attached.
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
            info!(id, address = %record.spec.address, why, "detached");
        });
        Ok(true)
    }

    /// Whether `stop` still belongs to the ready endpoint `id` (no detach came).
    fn still_ours(&self, id: &str, stop: &Arc<Notify>) -> bool {
        matches!(self.slots.lock().unwrap().get(id), Some(Slot::Ready { stop: s, .. }) if Arc::ptr_eq(s, stop))
    }

    /// The last lines a forwarder logged, for netd's own log (its file goes with it).
    fn forwarder_log_tail(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.store.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Watches an endpoint's container and forwarder until the endpoint goes away.
    async fn supervise(self: Arc<Self>, mut record: Record, stop: Arc<Notify>) {
        let id = record.spec.id.clone();
        let container = ProcId {
            pid: record.spec.pid,
            start: record.spec.pid_start,
        };
        let Some(container_fd) = container.watch().and_then(exit_notifier) else {
            let _ = self.detach(&id, "container process is gone");
            return;
        };
        let mut restarts = 0u32;
        let mut last_restart = Instant::now();
        loop {
            let forwarder_fd = record.forwarder.watch().and_then(exit_notifier);
            tokio::select! {
                // A detach wins over anything that happens at the same moment.
                biased;
                _ = stop.notified() => return,
                _ = container_fd.readable() => {
                    let _ = self.detach(&id, "container exited (no poststop seen)");
                    return;
                }
                _ = async {
                    // No pidfd means the forwarder is already gone.
                    if let Some(fd) = &forwarder_fd {
                        let _ = fd.readable().await;
                    }
                } => {}
            }
            forwarder::reap(record.forwarder.pid);
            if !self.still_ours(&id, &stop) {
                return;
            }
            if !container.alive() {
                let _ = self.detach(&id, "container exited");
                return;
            }
            // A forwarder that ran for a while earned a fresh budget.
            if last_restart.elapsed() > RESTART_BUDGET_RESET {
                restarts = 0;
            }
            restarts += 1;
            last_restart = Instant::now();
            let tail = self.forwarder_log_tail(&id);
            if restarts > MAX_RESTARTS {
                error!(
                    id,
                    restarts,
                    forwarder_log = tail,
                    "forwarder keeps dying; giving the endpoint up"
                );
                let _ = self.detach(&id, "forwarder keeps dying");
                return;
            }
            warn!(
                id,
                pid = record.forwarder.pid,
                forwarder_log = tail,
                "forwarder exited while its container runs; restarting it"
            );
            let backoff = Duration::from_millis(100 << (restarts - 1).min(5));
            tokio::select! {
                biased;
                _ = stop.notified() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            let svc = self.clone();
            let spec = record.spec.clone();
            let started = tokio::task::spawn_blocking(move || svc.start_forwarder(&spec)).await;
            let forwarder = match started {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    error!(id, error = %format!("{e:#}"), "cannot restart the forwarder");
                    let _ = self.detach(&id, "forwarder could not be restarted");
                    return;
                }
                Err(_) => return,
            };
            record.forwarder = forwarder;
            // A detach may have come while we rebuilt: then the new forwarder is not ours.
            let still_ours = {
                let mut slots = self.slots.lock().unwrap();
                match slots.get_mut(&id) {
                    Some(Slot::Ready { record: r, stop: s }) if Arc::ptr_eq(s, &stop) => {
                        r.forwarder = forwarder;
                        true
                    }
                    _ => false,
                }
            };
            let svc = self.clone();
            let saved = record.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if !still_ours {
                    forwarder::stop(forwarder, STOP_GRACE);
                } else if let Err(e) = svc.store.save(&saved) {
                    warn!(id = saved.spec.id, error = %e, "cannot update the endpoint record");
                }
            })
            .await;
            if !still_ours {
                return;
            }
        }
    }

    /// Takes over the endpoints a previous hpk-netd left, and frees what nobody owns.
    pub async fn adopt(self: &Arc<Self>) -> Result<()> {
        let svc = self.clone();
        let kept = tokio::task::spawn_blocking(move || -> Vec<Record> {
            let mut kept = Vec::new();
            for mut record in svc.store.load_all() {
                let id = record.spec.id.clone();
                let container = ProcId {
                    pid: record.spec.pid,
                    start: record.spec.pid_start,
                };
                if !container.alive() {
                    info!(id, "container exited while hpk-netd was down; detaching");
                    svc.teardown(&record);
                    continue;
                }
                let env = &svc.settings.env;
                if !env.subnet.contains(&record.spec.address) {
                    // The bubble got another subnet: this address routes nowhere now.
                    warn!(id, address = %record.spec.address, subnet = %env.subnet, "the bubble's subnet changed while hpk-netd was down; detaching (restart the container to get a new address)");
                    svc.teardown(&record);
                    let old = ipnet::Ipv4Net::new(record.spec.address, record.spec.prefix_len)
                        .map(|n| n.trunc());
                    if let Ok(old) = old {
                        svc.ipam.release_in(old, record.spec.address, &id);
                    }
                    continue;
                }
                if !record.forwarder.alive() {
                    warn!(id, "forwarder gone while hpk-netd was down; restarting it");
                    match svc.start_forwarder(&record.spec) {
                        Ok(f) => record.forwarder = f,
                        Err(e) => {
                            error!(id, error = %format!("{e:#}"), "cannot restart; detaching");
                            svc.teardown(&record);
                            continue;
                        }
                    }
                    let _ = svc.store.save(&record);
                }
                kept.push(record);
            }
            let owners: std::collections::HashSet<_> =
                kept.iter().map(|r| r.spec.id.clone()).collect();
            for (addr, owner) in svc.ipam.in_use() {
                if !owners.contains(&owner) {
                    info!(%addr, owner, "freeing an address no endpoint holds");
                    let _ = svc.ipam.release(addr, &owner);
                }
            }
            kept
        })
        .await
        .context("adoption task failed")?;
        for record in kept {
            info!(id = record.spec.id, address = %record.spec.address, forwarder = record.forwarder.pid, "adopted endpoint");
            self.install(record);
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        let env = &self.settings.env;
        let records: Vec<Record> = self
            .slots
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| match s {
                Slot::Ready { record, .. } | Slot::Leaving { record, .. } => Some(record.clone()),
                Slot::Busy => None,
            })
            .collect();
        let links = Netlink::open()
            .and_then(|mut nl| nl.links())
            .unwrap_or_default();
        let mut endpoints: Vec<EndpointStatus> = records
            .into_iter()
            .map(|r| {
                let mut counters = std::collections::BTreeMap::new();
                if let Some(l) = links.iter().find(|l| l.name == r.spec.bubble_tap) {
                    // The bubble tap transmits what goes to the container.
                    counters.insert("to_container_bytes".into(), l.stats.tx_bytes);
                    counters.insert("to_container_frames".into(), l.stats.tx_packets);
                    counters.insert("from_container_bytes".into(), l.stats.rx_bytes);
                    counters.insert("from_container_frames".into(), l.stats.rx_packets);
                }
                EndpointStatus {
                    id: r.spec.id.clone(),
                    address: r.spec.address,
                    pid: r.spec.pid,
                    netns: r.spec.netns(),
                    bubble_tap: r.spec.bubble_tap.clone(),
                    forwarder_pid: r.forwarder.pid,
                    counters,
                }
            })
            .collect();
        endpoints.sort_by_key(|e| e.address);
        let (lease, peers) = match &self.settings.overlay {
            None => (None, Vec::new()),
            Some(overlay) => {
                let o = overlay.lock().unwrap();
                let lease = o
                    .subnet
                    .zip(o.public_ip)
                    .map(|(subnet, public_ip)| LeaseStatus {
                        subnet: subnet.to_string(),
                        public_ip,
                        expires: o.expires,
                    });
                let peers = o
                    .peers
                    .values()
                    .map(|p| PeerStatus {
                        subnet: p.subnet.to_string(),
                        public_ip: p.public_ip,
                        vtep_mac: crate::flannel::lease::format_mac(p.vtep_mac),
                    })
                    .collect();
                (lease, peers)
            }
        };
        Status {
            source: self.settings.source.clone(),
            network: env.network.to_string(),
            subnet: env.subnet.to_string(),
            gateway: env.gateway,
            mtu: env.mtu,
            bridge: self.settings.bridge.clone(),
            masquerade: self.settings.masquerade,
            addresses_in_use: self.ipam.in_use().len(),
            addresses_total: self.ipam.capacity(),
            endpoints,
            lease,
            peers,
        }
    }
}
