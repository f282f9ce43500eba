//! Adoption after a restart: endpoints a previous hpk-netd left are taken over when their
//! container still runs, torn down when it does not, and addresses nobody holds are freed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use super::store::Record;
use super::table::Endpoints;
use crate::sys::process::ProcId;

impl Endpoints {
    /// Takes over the endpoints a previous hpk-netd left, and frees what nobody owns.
    pub async fn adopt(self: &Arc<Self>) -> Result<()> {
        let svc = self.clone();
        let kept = tokio::task::spawn_blocking(move || -> Vec<Record> {
            let mut kept = Vec::new();
            let loaded = svc.store.load_all();
            let mut hubs = HashMap::new();
            for mut record in loaded.records {
                let id = record.spec.id().to_owned();
                let container = ProcId {
                    pid: record.spec.pid,
                    start: record.spec.pid_start,
                };
                if !container.alive() {
                    svc.teardown(&record);
                    let address = record.spec.attachment.address;
                    info!(id, %address, why = "container exited while hpk-netd was down", "detached");
                    continue;
                }
                let env = &svc.settings.env;
                if !env.subnet.contains(&record.spec.attachment.address) {
                    // The bubble got another subnet: this address routes nowhere now.
                    warn!(id, address = %record.spec.attachment.address, subnet = %env.subnet, "the bubble's subnet changed while hpk-netd was down; detaching (restart the container to get a new address)");
                    svc.teardown(&record);
                    let old = ipnet::Ipv4Net::new(record.spec.attachment.address, record.spec.attachment.prefix_len)
                        .map(|n| n.trunc());
                    if let Ok(old) = old {
                        svc.ipam.release_in(old, record.spec.attachment.address, &id);
                    }
                    continue;
                }
                let intact = svc.paths.intact(&record, &mut hubs);
                if !intact {
                    warn!(id, kind = %record.spec.attachment.kind, "data path gone while hpk-netd was down; rebuilding it");
                    svc.paths.stop(&record.spec, record.path);
                    match svc.paths.start(&record.spec) {
                        Ok(path) => record.path = path,
                        Err(e) => {
                            error!(id, error = %format!("{e:#}"), "cannot restart; detaching");
                            svc.teardown(&record);
                            continue;
                        }
                    }
                    let _ = svc.store.save(&record);
                }
                // The table was made afresh at start-up: guard the port again.
                if intact {
                    if let Err(e) = svc.paths.guard(&record.spec) {
                        error!(id, error = %format!("{e:#}"), "cannot guard the endpoint; detaching");
                        svc.teardown(&record);
                        continue;
                    }
                }
                kept.push(record);
            }
            // An unreadable record's container may still use its address: keep it, as
            // long as the endpoint's link (named after its id) says the container lives.
            let mut reserved = Vec::new();
            for id in loaded.unreadable {
                if svc.paths.link_exists(&id) {
                    reserved.push(id);
                } else {
                    info!(id, "an unreadable record's link is gone with its container; forgetting it");
                    svc.store.remove(&id);
                }
            }
            let owners: HashSet<_> = kept
                .iter()
                .map(|r| r.spec.id().to_owned())
                .chain(reserved)
                .collect();
            svc.store.sweep(&owners);
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
            info!(id = record.spec.id(), address = %record.spec.attachment.address, kind = %record.spec.attachment.kind, "adopted endpoint");
            self.install(record);
        }
        Ok(())
    }
}
