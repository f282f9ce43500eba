//! What each container directory is, and the sweep of dead runs: at every `run` and `ps`,
//! and on demand with `prune`. A run whose hpktainer was SIGKILLed leaves a container
//! (running, stopped or half-made) and its directory: the runtime deletes the container
//! (which runs poststop: hpk-netd frees the address), then the directory goes.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::runtime::{oci::Oci, Kind};
use crate::state::{self, ContainerDir, Record};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A live hpktainer is starting it or runs it in the foreground.
    Running,
    /// Detached, and the runtime says it runs.
    Detached,
    /// Detached and finished (log kept until `rm`/`prune`).
    Exited,
    /// Its hpktainer is gone: a leftover to sweep.
    Orphaned,
}

pub fn oci_for(record: &Record, runtime_state: &Path) -> Option<Oci> {
    (record.runtime.kind == Kind::Oci).then(|| Oci::new(record.runtime.clone(), runtime_state))
}

/// Classifies one directory; `None` for a directory without a readable record.
pub fn status_of(dir: &ContainerDir, runtime_state: &Path) -> Option<(Record, Status)> {
    let record = dir.load().ok()?;
    let owned = matches!(dir.lock_owner(), Ok(None));
    let status = classify(&record, owned, runtime_state);
    Some((record, status))
}

/// `owned`: a live hpktainer holds the directory's owner lock.
fn classify(record: &Record, owned: bool, runtime_state: &Path) -> Status {
    if owned {
        Status::Running
    } else if !record.detached {
        Status::Orphaned
    } else if record.exited {
        Status::Exited
    } else {
        let alive = oci_for(record, runtime_state)
            .and_then(|o| o.state(&record.id))
            .is_some_and(|s| !matches!(s.status(), oci_spec::runtime::ContainerState::Stopped));
        if alive {
            Status::Detached
        } else {
            Status::Exited
        }
    }
}

/// Deletes the container in its runtime (if it still knows it) and unmounts its rootfs.
pub fn stop_in_runtime(dir: &ContainerDir, record: &Record, runtime_state: &Path) {
    if let Some(oci) = oci_for(record, runtime_state) {
        if oci.state(&record.id).is_some() {
            if let Err(e) = oci.delete(&record.id) {
                warn!("{e:#}");
            }
        }
    }
    crate::rootfs::release(dir);
}

/// Removes a container completely: runtime state, overlay, directory.
pub fn remove(dir: &ContainerDir, record: &Record, runtime_state: &Path) -> Result<()> {
    stop_in_runtime(dir, record, runtime_state);
    crate::rootfs::remove_dir(dir)
}

/// Sweeps leftovers of dead runs; with `all`, also exited detached containers.
/// Returns the names removed.
pub fn sweep(containers: &Path, runtime_state: &Path, all: bool) -> Vec<String> {
    let mut removed = Vec::new();
    for dir in state::list(containers) {
        let name = dir.name();
        // The lock is held for the whole sweep of one directory: two sweeps never race.
        let Ok(Some(_lock)) = dir.lock_owner() else {
            continue;
        };
        // Half-made directories (.new-*) and Apptainer bundles (.apptainer-*) whose
        // hpktainer is gone.
        if name.starts_with('.') {
            debug!(dir = %dir.dir.display(), "removing a leftover directory");
            let _ = crate::rootfs::remove_dir(&dir);
            continue;
        }
        let Ok(mut record) = dir.load() else {
            continue;
        };
        let status = classify(&record, false, runtime_state);
        let gone = match status {
            Status::Orphaned => true,
            Status::Exited => all || record.remove,
            Status::Running | Status::Detached => false,
        };
        if gone {
            info!(container = %name, ?status, "removing");
            match remove(&dir, &record, runtime_state) {
                Ok(()) => removed.push(name),
                Err(e) => warn!("{e:#}"),
            }
        } else if status == Status::Exited && !record.exited {
            // Finished on its own: free its network now, keep its log.
            stop_in_runtime(&dir, &record, runtime_state);
            record.exited = true;
            let _ = dir.save(&record);
        }
    }
    removed
}
