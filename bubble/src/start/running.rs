//! A bubble being started, then held: its namespaces' holder, the uplink, the hand-over
//! servers, the record. Dropping it tears everything down; the state directory goes too,
//! except what a controller that failed (rather than being stopped) keeps for the start
//! that takes over after it (etcd's data, the server's certificate).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hpk_netd::sys::process::ProcId;
use hpk_netd::underlay::handover::Server;

use super::state::StateDir;
use super::Node;
use crate::child::Service;
use crate::cli::{BubbleRuntime, Role, StartArgs};
use crate::holder::{Holder, Launch};
use crate::init::{Plan, Report};
use crate::record::{self, Record, SharedDir};
use crate::signals::{wants_stop, Signals};
use crate::uplink;

const STOP_GRACE: Duration = Duration::from_secs(15);

/// A bubble being started or running; dropping it tears everything down.
pub(super) struct Running {
    shared: SharedDir,
    id: u32,
    pub(super) state: StateDir,
    holder: Option<Holder>,
    uplink: Option<Service>,
    init: Option<ProcId>,
    /// Serves the host socket to hpk-netd (each start of it).
    handover: Option<Server>,
    /// Binds published ports on the host for hpk-netd.
    ports: Option<hpk_netd::ports::handover::Server>,
    /// The cluster's PKI in the shared directory, when this controller made or kept it.
    pub(super) pki: Option<PathBuf>,
    /// What the state dir keeps when the bubble fails rather than being stopped, so that
    /// a restart in place carries on with the same cluster.
    keep_on_failure: &'static [&'static str],
    /// Set once a stop signal ends the bubble: then everything goes.
    stopped: bool,
}

impl Running {
    pub(super) fn new(
        shared: SharedDir,
        id: u32,
        state: StateDir,
        keep_on_failure: &'static [&'static str],
    ) -> Running {
        Running {
            shared,
            id,
            state,
            holder: None,
            uplink: None,
            init: None,
            handover: None,
            ports: None,
            pki: None,
            keep_on_failure,
            stopped: false,
        }
    }

    pub(super) fn bring_up(
        &mut self,
        node: &Node,
        plan: &Plan,
        args: &StartArgs,
        signals: &mut Signals,
    ) -> Result<Record> {
        nix::unistd::mkfifo(
            &plan.ready_fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .context("cannot make the ready FIFO")?;
        let mut fifo = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&plan.ready_fifo)?;
        if let Some(socket) = &node.host_socket {
            let path = self.state.path.join(crate::init::netd::UNDERLAY_SOCKET);
            let listener = hpk_netd::sys::unix_socket::bind(&path, 0o600, None, None)?;
            let socket = socket.try_clone().context("cannot share the host socket")?;
            self.handover = Some(Server::spawn(listener, socket)?);
        }
        let path = self.state.path.join(crate::init::netd::PORTS_SOCKET);
        let listener = hpk_netd::sys::unix_socket::bind(&path, 0o600, None, None)?;
        self.ports = Some(hpk_netd::ports::handover::Server::spawn(listener)?);
        let init_log = self.shared.log_path(self.id, "init");
        let launch = Launch {
            exe: &node.exe,
            init_args: vec!["init".into(), "--plan".into(), serde_json::to_string(plan)?],
            binds: vec![&self.shared.path, &self.state.path],
            log: &init_log,
        };
        self.holder = Some(match node.runtime {
            BubbleRuntime::Unshare => Holder::unshare(&launch)?,
            BubbleRuntime::Apptainer => Holder::apptainer(
                args.image.as_deref().expect("checked in preflight"),
                format!("bubble{}", self.id),
                &launch,
            )?,
        });
        let mut lines = Lines::default();
        let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
        match self.next_report(&mut fifo, &mut lines, signals, deadline, &init_log)? {
            Report::Started => {}
            other => bail!("the bubble's init said {other:?} first"),
        }
        let pid =
            crate::child::wait_for("the bubble's PID 1", "", Duration::from_secs(10), || {
                self.holder.as_mut().expect("set").init_pid()
            })?;
        self.init = ProcId::of(pid);
        let uplink_log = self.shared.log_path(self.id, "uplink");
        self.uplink = Some(uplink::start(
            node.uplink,
            &uplink::UplinkPlan {
                pid,
                host_ip: node.link.addr,
                forwards: &node.forwards,
                state_dir: &self.state.path,
                log: &uplink_log,
            },
        )?);
        self.note_processes();
        let subnet = match self.next_report(&mut fifo, &mut lines, signals, deadline, &init_log)? {
            Report::Ready { subnet } => subnet,
            Report::Failed { error } => bail!(
                "the bubble failed to start: {error} (its logs: {}/bubble-{}-*.log)",
                self.shared.path.display(),
                self.id
            ),
            Report::Started => bail!("the bubble's init started twice"),
        };
        let record = Record {
            id: self.id,
            role: plan.role,
            job: std::env::var("SLURM_JOB_ID").ok(),
            host: record::hostname(),
            host_ip: node.link.addr,
            uplink: node.uplink,
            underlay: plan.underlay,
            etcd: (plan.role == Role::Controller).then(|| {
                let scheme = if plan.etcd_server_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}:{}", node.link.addr, args.etcd_port)
            }),
            vxlan_port: node.network.port,
            subnet,
            init: self.init.context("the bubble's PID 1 vanished")?,
            state_dir: self.state.path.clone(),
        };
        self.shared.publish(&record)?;
        Ok(record)
    }

    /// The next report of PID 1, while watching signals, the holder and the uplink.
    fn next_report(
        &mut self,
        fifo: &mut std::fs::File,
        lines: &mut Lines,
        signals: &mut Signals,
        deadline: Instant,
        init_log: &Path,
    ) -> Result<Report> {
        loop {
            if let Some(line) = lines.next() {
                return serde_json::from_str(&line)
                    .with_context(|| format!("unexpected report from the bubble: {line:?}"));
            }
            if let Some(sig) = wants_stop(&signals.pending()?) {
                self.stopped = true;
                bail!("stopped by {sig} while the bubble was starting");
            }
            self.check_parts()
                .with_context(|| format!("the bubble's init log: {}", init_log.display()))?;
            if Instant::now() >= deadline {
                bail!(
                    "the bubble was not ready in time (--wait-timeout); its logs: {}/bubble-{}-*.log",
                    self.shared.path.display(),
                    self.id
                );
            }
            hpk_netd::sys::poll::readable(&[fifo.as_raw_fd(), signals.raw_fd()], 200)?;
            lines.fill(fifo)?;
        }
    }

    /// Names the bubble's processes on the host in the state dir, so that a start taking
    /// the dir over after this launcher's death waits for them to end.
    fn note_processes(&mut self) {
        let mut pids: Vec<i32> = self.init.iter().map(|p| p.pid).collect();
        if let Some(Holder::Unshare(unshare)) = &self.holder {
            pids.push(unshare.pid());
        }
        pids.extend(self.uplink.as_ref().map(|u| u.pid()));
        let procs: Vec<ProcId> = pids.into_iter().filter_map(ProcId::of).collect();
        if let Err(e) = super::state::note_processes(&self.state.path, &procs) {
            tracing::warn!("{e:#}");
        }
    }

    /// An error when the holder or the uplink is gone.
    fn check_parts(&mut self) -> Result<()> {
        if let Some(e) = self.holder.as_mut().and_then(|h| h.gone(self.init)) {
            return Err(e);
        }
        if let Some(up) = self.uplink.as_mut() {
            if let Some(status) = up.exited() {
                return Err(up.exit_report(status));
            }
        }
        Ok(())
    }

    pub(super) fn hold(mut self, signals: &mut Signals) -> Result<()> {
        loop {
            let got = signals.wait(Duration::from_secs(1))?;
            if let Some(sig) = wants_stop(&got) {
                tracing::info!(%sig, bubble = self.id, "stopping");
                self.stopped = true;
                return Ok(());
            }
            self.check_parts()?;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(holder) = self.holder.as_mut() {
            holder.stop(self.init, STOP_GRACE);
        }
        if let Some(up) = self.uplink.as_mut() {
            up.stop(Duration::from_secs(2));
        }
        if let Some(init) = self.init {
            self.shared.withdraw(self.id, init);
        }
        if self.stopped || self.keep_on_failure.is_empty() {
            if let Some(pki) = &self.pki {
                let _ = std::fs::remove_dir_all(pki);
            }
            if let Err(e) = std::fs::remove_dir_all(&self.state.path) {
                tracing::warn!(dir = %self.state.path.display(), "cannot remove the state dir: {e}");
            }
            return;
        }
        // Failed, not stopped: a start in its place takes this over (see state.rs).
        clear_but(&self.state.path, self.keep_on_failure);
        tracing::warn!(
            dir = %self.state.path.display(),
            kept = ?self.keep_on_failure,
            "the bubble failed: its state directory keeps what a restart needs to carry on with the same cluster; a start of bubble {} here takes it over",
            self.id
        );
    }
}

/// Removes everything in `dir` but `keep` and the launcher's lock.
fn clear_but(dir: &Path, keep: &[&str]) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == super::state::LOCK || keep.contains(&name.as_ref()) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "cannot remove: {e}");
        }
    }
}

/// Newline-separated reports read from the FIFO.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn fill(&mut self, fifo: &mut std::fs::File) -> Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match fifo.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("reading the ready FIFO"),
            }
        }
    }

    fn next(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line).trim().to_owned())
    }
}
