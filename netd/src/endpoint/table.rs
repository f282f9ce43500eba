//! The table of the bubble's endpoints, one slot per container id, and the state machine
//! a slot goes through: `Busy` while an attach builds it, `Ready` while it serves, and
//! `Leaving` while it is torn down in the background.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use hpk_hook::proto::{AttachRequest, Attachment, EndpointKind};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::build::{DataPathBuilder, KernelBuilder, VethNotPossible};
use super::store::{DataPath, Record, Store};
use super::{bubble_tap_name, validate_id, EndpointSpec};
use crate::bubble::ipam::Ipam;
use crate::datapath::shortcut::ShortcutCounters;
use crate::subnet::SubnetEnv;
use crate::sys::process::ProcId;

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

/// What [`Endpoints::take`] found under an id.
enum Taken {
    /// No endpoint (what an unreadable record left of one is gone now too).
    Unknown,
    /// An attach is building it.
    Busy,
    /// A teardown is already under way.
    Leaving,
    /// It served and is out of service now: the caller tears it down and then sends
    /// true on `done`.
    Ready {
        record: Record,
        done: watch::Sender<bool>,
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
    /// What builds, checks and removes the data paths.
    pub(super) paths: Box<dyn DataPathBuilder>,
}

impl Endpoints {
    pub fn new(settings: Settings, ipam: Ipam, store: Store, state_dir: &Path) -> Arc<Endpoints> {
        let paths = KernelBuilder::new(&settings, store.clone(), state_dir);
        Endpoints::with_builder(settings, ipam, store, Box::new(paths))
    }

    /// A table whose data paths `paths` builds.
    pub(super) fn with_builder(
        settings: Settings,
        ipam: Ipam,
        store: Store,
        paths: Box<dyn DataPathBuilder>,
    ) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            settings,
            ipam,
            store,
            slots: Mutex::new(HashMap::new()),
            paths,
        })
    }

    /// Builds `spec` as the kind `wanted`: `auto` is a veth where hpk-netd may move a link
    /// into the container's namespace, else a tap pair (said in the log, with why).
    fn start_kind(&self, spec: &mut EndpointSpec, wanted: EndpointKind) -> Result<DataPath> {
        spec.attachment.kind = match wanted {
            EndpointKind::Auto => EndpointKind::Veth,
            kind => kind,
        };
        match self.paths.start(spec) {
            Err(e) if wanted == EndpointKind::Auto && e.is::<VethNotPossible>() => {
                info!(id = spec.id(), reason = %e, "no veth here; the endpoint is a tap pair with a forwarder");
                spec.attachment.kind = EndpointKind::Tap;
                self.paths.start(spec)
            }
            other => other,
        }
    }

    /// The blocking part of an attach; undoes its own work on failure.
    fn build_new(&self, req: &AttachRequest) -> Result<Record> {
        let started = std::time::Instant::now();
        let proc_id = self.paths.container(req.pid)?;
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
                self.paths.stop(&record.spec, record.path);
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
                info!(id, address = %att.address, kind = %att.kind, path = ?record.path, "attached");
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

    /// Takes the endpoint of `id` out of service, if it serves.
    fn take(&self, id: &str) -> Taken {
        let mut slots = self.slots.lock().unwrap();
        match slots.get(id) {
            None => {
                // Under the lock: no attach of `id` can start meanwhile.
                self.forget_leftovers(id);
                Taken::Unknown
            }
            Some(Slot::Busy) => Taken::Busy,
            Some(Slot::Leaving { .. }) => Taken::Leaving,
            Some(Slot::Ready { record, stop }) => {
                stop.notify_one();
                let record = record.clone();
                let (done, rx) = watch::channel(false);
                slots.insert(
                    id.to_owned(),
                    Slot::Leaving {
                        record: record.clone(),
                        done: rx,
                    },
                );
                Taken::Ready { record, done }
            }
        }
    }

    /// Removes the data path and frees the address and records.
    pub(super) fn teardown(&self, record: &Record) {
        self.paths.stop(&record.spec, record.path);
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
        self.paths.remove_link(id);
        self.ipam.release_owner(id);
        self.store.remove(id);
    }

    /// Takes `id` out of service and tears it down in the background: the kernel needs
    /// tens of milliseconds to remove the taps, and a poststop hook should not wait for
    /// that. The address is released only once the taps are gone. Returns whether this
    /// call detached it (an unknown id, or one already leaving, is a success too).
    pub fn detach(self: &Arc<Self>, id: &str, why: &str) -> Result<bool> {
        validate_id(id)?;
        let (record, done) = match self.take(id) {
            Taken::Unknown | Taken::Leaving => return Ok(false),
            Taken::Busy => bail!("container {id} is being attached right now; retry the detach"),
            Taken::Ready { record, done } => (record, done),
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
        self.paths.shortcut_counters()
    }
}
