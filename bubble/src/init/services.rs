//! The bubble's services under PID 1: started with their logs in the shared directory,
//! restarted when they exit (a few times a minute at most), stopped in reverse order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::k3s::{self, K3sPlan};
use super::Plan;
use crate::child::Service;
use crate::signals::{wants_stop, Signals};

const RESTARTS_PER_MINUTE: usize = 5;
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Spec {
    pub what: &'static str,
    pub log: PathBuf,
    make: Box<dyn Fn() -> Command>,
}

impl Spec {
    pub fn new(what: &'static str, log: PathBuf, make: impl Fn() -> Command + 'static) -> Spec {
        Spec {
            what,
            log,
            make: Box::new(make),
        }
    }
}

struct Running {
    spec: Spec,
    service: Service,
    restarts: VecDeque<Instant>,
}

#[derive(Default)]
pub struct Services {
    running: Vec<Running>,
}

pub fn k3s_plan(plan: &Plan) -> K3sPlan {
    let dir = plan.state_dir.join("k3s");
    K3sPlan {
        host_ip: plan.host_ip,
        port: plan.k3s_port,
        etcd_url: plan.etcd_url.clone(),
        etcd_tls: plan.etcd_client_tls.clone(),
        local_kubeconfig: dir.join("kubeconfig.yaml"),
        data_dir: dir,
    }
}

impl Services {
    pub fn start(&mut self, spec: Spec) -> Result<()> {
        let service = Service::spawn(spec.what, &mut (spec.make)(), &spec.log)?;
        tracing::info!(service = spec.what, pid = service.pid(), "started");
        self.running.push(Running {
            spec,
            service,
            restarts: VecDeque::new(),
        });
        Ok(())
    }

    /// An error with its log when service `what` has exited (during bring-up).
    pub fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Some(r) = self.running.iter_mut().find(|r| r.spec.what == what) {
            if let Some(status) = r.service.exited() {
                return Err(r.service.exit_report(status));
            }
        }
        Ok(())
    }

    /// Until a stop signal: reap every exited child (orphans included, as PID 1 must),
    /// restart services that exited, publish K3s's kubeconfig once it exists.
    pub fn supervise(&mut self, signals: &mut Signals, plan: &Plan) -> Result<()> {
        let k3s = self
            .running
            .iter()
            .any(|r| r.spec.what == "k3s")
            .then(|| k3s_plan(plan));
        let mut kubeconfig_done = false;
        loop {
            let got = signals.wait(Duration::from_secs(1))?;
            if let Some(sig) = wants_stop(&got) {
                tracing::info!(%sig, "stopping the bubble");
                self.stop_all();
                return Ok(());
            }
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                let Some(pid) = status.pid() else { break };
                self.exited(pid.as_raw(), status)?;
            }
            if let (Some(k), false) = (&k3s, kubeconfig_done) {
                let shared = super::kubeconfig_path(&plan.shared_dir);
                kubeconfig_done = k3s::publish_kubeconfig(k, &shared).unwrap_or_else(|e| {
                    tracing::warn!("{e:#}");
                    false
                });
            }
        }
    }

    fn exited(&mut self, pid: i32, status: WaitStatus) -> Result<()> {
        let Some(r) = self.running.iter_mut().find(|r| r.service.pid() == pid) else {
            return Ok(()); // an orphan, reaped
        };
        let now = Instant::now();
        r.restarts
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if r.restarts.len() >= RESTARTS_PER_MINUTE {
            bail!(
                "{} exited ({status:?}) {} times within a minute; giving up (its log: {})",
                r.spec.what,
                RESTARTS_PER_MINUTE + 1,
                r.spec.log.display()
            );
        }
        r.restarts.push_back(now);
        tracing::warn!(service = r.spec.what, ?status, "exited; restarting");
        r.service = Service::spawn(r.spec.what, &mut (r.spec.make)(), &r.spec.log)?;
        Ok(())
    }

    /// Stops the services, last started first.
    pub fn stop_all(&mut self) {
        for r in self.running.iter_mut().rev() {
            r.service.stop(STOP_GRACE);
        }
        self.running.clear();
    }
}
