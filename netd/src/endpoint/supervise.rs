//! Supervision of one endpoint: a task waits on two pidfds, the container's process (its
//! exit detaches the endpoint when no poststop does within a grace period) and the
//! forwarder's of a tap endpoint (its death while the container lives rebuilds the data
//! path with the same address, within a restart budget). A veth has no process: only the
//! container is watched.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{error, warn};

use super::build::STOP_GRACE;
use super::forwarder;
use super::store::Record;
use super::table::{Endpoints, Slot};
use crate::sys::pidwatch::PidWatch;
use crate::sys::process::{reap, ProcId};

/// Forwarder restarts allowed in a row before the endpoint is given up.
const MAX_RESTARTS: u32 = 5;

/// A forwarder that ran this long resets the restart count.
const RESTART_BUDGET_RESET: Duration = Duration::from_secs(60);

/// Tries to start a dead forwarder's replacement before the endpoint is given up.
const START_ATTEMPTS: u32 = 5;

/// How long a dead container's endpoint is left to its poststop hook, which runtimes run
/// right after the container's death, before hpk-netd detaches it itself (a runtime
/// killed with its container runs none). The log then says truly which of the two did.
const POSTSTOP_GRACE: Duration = Duration::from_secs(5);

/// A pidfd registered with the reactor: readable once the process has exited.
fn exit_notifier(watch: PidWatch) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open as long as it lives.
    Ok(unsafe { AsyncFd::register(watch.into_fd()) }?)
}

impl Endpoints {
    /// Watches an endpoint's container and forwarder until the endpoint goes away.
    pub(super) async fn supervise(self: Arc<Self>, mut record: Record, stop: Arc<Notify>) {
        let id = record.spec.id().to_owned();
        let container = ProcId {
            pid: record.spec.pid,
            start: record.spec.pid_start,
        };
        let container_fd = match container
            .watch()
            .and_then(|watch| watch.map(exit_notifier).transpose())
        {
            Ok(Some(fd)) => fd,
            Ok(None) => {
                self.reap_without_poststop(&id, &stop).await;
                return;
            }
            // A live container keeps its endpoint; only the watching is lost.
            Err(e) => {
                error!(id, error = %e, "cannot watch the container process: its endpoint goes at its poststop hook only, and its forwarder is not restarted should it die (restart hpk-netd to watch it again)");
                return;
            }
        };
        let mut restarts = 0u32;
        let mut last_restart = Instant::now();
        loop {
            // The data path's processes: a tap's forwarder, or a socket pair's two ends.
            let processes: Vec<ProcId> = record.processes().collect();
            let fds: Vec<Option<AsyncFd<OwnedFd>>> = processes
                .iter()
                .map(|p| p.watch().ok().flatten().and_then(|w| exit_notifier(w).ok()))
                .collect();
            tokio::select! {
                // A detach wins over anything that happens at the same moment.
                biased;
                _ = stop.notified() => return,
                _ = container_fd.readable() => {
                    self.reap_without_poststop(&id, &stop).await;
                    return;
                }
                _ = any_exit(&fds) => {}
            }
            let Some(dead) = processes.iter().find(|p| !p.alive()).copied() else {
                continue;
            };
            if !self.still_ours(&id, &stop) {
                return;
            }
            // The survivor of a pair goes too: the whole data path is rebuilt. (A hub is
            // a single process: nothing survives it.)
            let survivors: Vec<ProcId> = processes.iter().copied().filter(|p| *p != dead).collect();
            let _ = tokio::task::spawn_blocking(move || {
                for p in survivors {
                    forwarder::stop(p, STOP_GRACE);
                }
            })
            .await;
            for p in &processes {
                reap(p.pid);
            }
            if !container.alive() {
                self.reap_without_poststop(&id, &stop).await;
                return;
            }
            // A forwarder that ran for a while earned a fresh budget.
            if last_restart.elapsed() > RESTART_BUDGET_RESET {
                restarts = 0;
            }
            restarts += 1;
            last_restart = Instant::now();
            let tail = self.paths.log_tail(&record);
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
            let mut attempt = 0;
            let path = loop {
                attempt += 1;
                let backoff = Duration::from_millis(100 << (restarts + attempt - 2).min(5));
                tokio::select! {
                    biased;
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                let svc = self.clone();
                let spec = record.spec.clone();
                let started = tokio::task::spawn_blocking(move || svc.paths.start(&spec)).await;
                match started {
                    Ok(Ok(path)) => break path,
                    // A child of ours started while the dead forwarder's taps were being
                    // handed over holds them (and their names) until it exits: try again.
                    Ok(Err(e)) if attempt < START_ATTEMPTS && container.alive() => {
                        warn!(id, attempt, error = %format!("{e:#}"), "cannot restart the forwarder yet; retrying");
                    }
                    Ok(Err(e)) => {
                        error!(id, attempt, error = %format!("{e:#}"), "cannot restart the forwarder");
                        let _ = self.detach(&id, "forwarder could not be restarted");
                        return;
                    }
                    Err(_) => return,
                }
            };
            record.path = path;
            // A detach may have come while we rebuilt: then the new processes are not ours.
            let still_ours = {
                let mut slots = self.slots.lock().unwrap();
                match slots.get_mut(&id) {
                    Some(Slot::Ready { record: r, stop: s }) if Arc::ptr_eq(s, &stop) => {
                        r.path = path;
                        true
                    }
                    _ => false,
                }
            };
            let svc = self.clone();
            let saved = record.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if !still_ours {
                    svc.paths.stop_processes(saved.spec.id(), saved.path);
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

    /// The container of `id` has exited: its poststop hook detaches the endpoint (and
    /// notifies `stop`); when none comes within [`POSTSTOP_GRACE`], it is detached here.
    async fn reap_without_poststop(self: &Arc<Self>, id: &str, stop: &Arc<Notify>) {
        tokio::select! {
            biased;
            _ = stop.notified() => {}
            _ = tokio::time::sleep(POSTSTOP_GRACE) => {
                if self.still_ours(id, stop) {
                    let secs = POSTSTOP_GRACE.as_secs();
                    let why = format!("container exited, no poststop within {secs}s");
                    let _ = self.detach(id, &why);
                }
            }
        }
    }
}

/// Resolves when any of the processes behind `fds` (at most a pair) has exited; at once
/// if a pidfd is missing (that process is gone already); never when there are none (a
/// veth).
async fn any_exit(fds: &[Option<AsyncFd<OwnedFd>>]) {
    match fds {
        [] => std::future::pending().await,
        [Some(a)] => {
            let _ = a.readable().await;
        }
        [Some(a), Some(b)] => {
            tokio::select! {
                _ = a.readable() => {}
                _ = b.readable() => {}
            }
        }
        _ => {}
    }
}
