//! Supervision of one endpoint: a task waits on two pidfds, the container's process (its
//! exit without a poststop detaches the endpoint) and the forwarder's of a tap endpoint
//! (its death while the container lives rebuilds the data path with the same address,
//! within a restart budget). A veth has no process: only the container is watched.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{error, warn};

use super::forwarder;
use super::store::Record;
use super::table::{Endpoints, Slot, STOP_GRACE};
use crate::sys::pidwatch::PidWatch;
use crate::sys::process::{reap, ProcId};

/// Forwarder restarts allowed in a row before the endpoint is given up.
const MAX_RESTARTS: u32 = 5;

/// A forwarder that ran this long resets the restart count.
const RESTART_BUDGET_RESET: Duration = Duration::from_secs(60);

/// A pidfd registered with the reactor: readable once the process has exited.
fn exit_notifier(watch: PidWatch) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open as long as it lives.
    unsafe { AsyncFd::register(watch.into_fd()) }.ok()
}

impl Endpoints {
    /// Watches an endpoint's container and forwarder until the endpoint goes away.
    pub(super) async fn supervise(self: Arc<Self>, mut record: Record, stop: Arc<Notify>) {
        let id = record.spec.id().to_owned();
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
            let forwarder = record.forwarder;
            let forwarder_fd = forwarder.and_then(|f| f.watch()).and_then(exit_notifier);
            tokio::select! {
                // A detach wins over anything that happens at the same moment.
                biased;
                _ = stop.notified() => return,
                _ = container_fd.readable() => {
                    let _ = self.detach(&id, "container exited (no poststop seen)");
                    return;
                }
                _ = async {
                    match (forwarder, &forwarder_fd) {
                        (None, _) => std::future::pending::<()>().await,
                        (Some(_), Some(fd)) => { let _ = fd.readable().await; }
                        // No pidfd means the forwarder is already gone.
                        (Some(_), None) => {}
                    }
                } => {}
            }
            let Some(dead) = forwarder else { return };
            reap(dead.pid);
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
                pid = dead.pid,
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
            let started = tokio::task::spawn_blocking(move || svc.start_data_path(&spec)).await;
            let forwarder = match started {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    error!(id, error = %format!("{e:#}"), "cannot restart the forwarder");
                    let _ = self.detach(&id, "forwarder could not be restarted");
                    return;
                }
                Err(_) => return,
            };
            record.forwarder = Some(forwarder);
            // A detach may have come while we rebuilt: then the new forwarder is not ours.
            let still_ours = {
                let mut slots = self.slots.lock().unwrap();
                match slots.get_mut(&id) {
                    Some(Slot::Ready { record: r, stop: s }) if Arc::ptr_eq(s, &stop) => {
                        r.forwarder = Some(forwarder);
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
                    warn!(id = saved.spec.id(), error = %e, "cannot update the endpoint record");
                }
            })
            .await;
            if !still_ours {
                return;
            }
        }
    }
}
