//! hpk-netd's side of the bubble's shared tap forwarder ([`crate::datapath::hub`]): it is
//! started when a tap endpoint needs it, given each endpoint's taps, and told to drop
//! them. It runs in its own session, so it outlives hpk-netd restarts, and exits by itself
//! a while after it serves no endpoint.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{
    bind, connect, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::{TimeVal, TimeValLike};
use tracing::{debug, info, warn};

use super::forwarder;
use crate::datapath::args::NetDaemonArgs;
use crate::datapath::hub::{receive_message, send_message, HubReply, HubRequest};
use crate::datapath::shortcut::{Identity, ShortcutCounters};
use crate::sys::process::ProcId;
use crate::sys::tap::Tap;

/// The hub's log is started afresh beyond this size.
const MAX_LOG: u64 = 1 << 20;

/// How long the hub gets to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a call failed because the hub did not answer in time.
fn timed_out(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|c| c.downcast_ref::<nix::errno::Errno>() == Some(&nix::errno::Errno::EAGAIN))
}

pub struct HubClient {
    daemon: PathBuf,
    /// The hub's polling after traffic (`--busy-poll-us`).
    busy_poll_us: u64,
    socket: PathBuf,
    log: PathBuf,
    /// The hub as far as we know; the lock also keeps two hubs from being started at once.
    current: Mutex<Option<ProcId>>,
    /// Hubs we started that may have exited since: ours to reap (a hub exits on its own
    /// when its last endpoint goes, with nobody watching it any more).
    started: Mutex<Vec<i32>>,
}

impl HubClient {
    pub fn new(state_dir: &Path, daemon: &Path, busy_poll_us: u64) -> HubClient {
        HubClient {
            daemon: daemon.to_owned(),
            busy_poll_us,
            socket: state_dir.join("hub.sock"),
            log: state_dir.join("hub.log"),
            current: Mutex::new(None),
            started: Mutex::new(Vec::new()),
        }
    }

    /// Where every hub logs.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Reaps the hubs we started that have exited.
    fn reap_exited(&self) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started.retain(|&pid| {
            let status = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            matches!(status, Ok(nix::sys::wait::WaitStatus::StillAlive))
        });
    }

    /// Hands the taps of endpoint `id` (whose container is `container`, its interface
    /// `identity`, if frames may skip the bridge) to the hub, starting one if none runs;
    /// returns the hub.
    pub fn add(
        &self,
        id: &str,
        container: ProcId,
        identity: Option<Identity>,
        taps: [Tap; 2],
    ) -> Result<ProcId> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let request = HubRequest::Add {
            id: id.to_owned(),
            pid: container.pid,
            start: container.start,
            identity,
        };
        let fds = [taps[0].as_raw_fd(), taps[1].as_raw_fd()];
        // A hub whose last endpoint just went exits without answering: start another.
        let mut last_error = None;
        for _ in 0..2 {
            let hub = match *current {
                Some(hub) if hub.alive() => hub,
                _ => *current.insert(self.start()?),
            };
            match self.call(&request, &fds) {
                Ok(HubReply::Done) => return Ok(hub),
                Ok(HubReply::Error { message }) => {
                    bail!("the bubble's tap forwarder refused the endpoint: {message}")
                }
                Ok(other) => bail!("the bubble's tap forwarder answered {other:?}"),
                // A hub that runs but does not answer keeps the request queued: a second
                // hub would serve the same taps, one of them out of reach.
                Err(e) if timed_out(&e) && hub.alive() => {
                    return Err(e).context(format!(
                        "the bubble's tap forwarder (pid {}) did not answer within {} s: see {}",
                        hub.pid,
                        ANSWER_TIMEOUT.as_secs(),
                        self.log.display()
                    ));
                }
                Err(e) => {
                    debug!(id, error = %format!("{e:#}"), "hub did not answer; starting another");
                    *current = None;
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no hub")))
            .context("cannot reach the bubble's tap forwarder")
    }

    /// Tells the hub to drop endpoint `id` (its taps go); a hub that is gone took them.
    pub fn remove(&self, hub: ProcId, id: &str) {
        self.reap_exited();
        if !hub.alive() {
            return;
        }
        if let Err(e) = self.call(&HubRequest::Remove { id: id.to_owned() }, &[]) {
            debug!(id, error = %format!("{e:#}"), "hub remove");
        }
    }

    /// The endpoints `hub` serves (after a restart): none if it is gone, unknown if it
    /// runs but did not say. A running hub that answers becomes ours.
    pub fn endpoints(&self, hub: ProcId) -> Option<HashSet<String>> {
        if !hub.alive() {
            return Some(HashSet::new());
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match self.call(&HubRequest::List, &[]) {
            Ok(HubReply::Ids { ids }) => {
                *current = Some(hub);
                Some(ids.into_iter().collect())
            }
            other => {
                warn!(hub = hub.pid, answer = ?other.map_err(|e| format!("{e:#}")), "the bubble's tap forwarder did not list its endpoints");
                None
            }
        }
    }

    /// What the running hub moved past the bridge, per endpoint (none without a hub).
    pub fn counters(&self) -> BTreeMap<String, ShortcutCounters> {
        let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current {
            Some(hub) if hub.alive() => match self.call(&HubRequest::Counters, &[]) {
                Ok(HubReply::Counters { endpoints }) => endpoints,
                Ok(other) => {
                    debug!(?other, "hub counters");
                    BTreeMap::new()
                }
                Err(e) => {
                    debug!(error = %format!("{e:#}"), "hub counters");
                    BTreeMap::new()
                }
            },
            _ => BTreeMap::new(),
        }
    }

    /// Starts a hub on a fresh listening socket, which it inherits: requests can be sent
    /// at once, they wait in the backlog until it runs.
    fn start(&self) -> Result<ProcId> {
        self.reap_exited();
        // Every hub appends to one log; it lives as long as the bubble: keep it bounded.
        if std::fs::metadata(&self.log).is_ok_and(|m| m.len() > MAX_LOG) {
            let _ = std::fs::remove_file(&self.log);
        }
        let listener = self.listen().with_context(|| {
            format!(
                "cannot make the hub's control socket {}",
                self.socket.display()
            )
        })?;
        let hub = forwarder::spawn(
            &self.daemon,
            vec![listener],
            |fds| NetDaemonArgs {
                busy_poll_us: self.busy_poll_us,
                ..NetDaemonArgs::hub(fds[0])
            },
            &self.log,
        )?;
        info!(pid = hub.pid, "started the bubble's tap forwarder");
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hub.pid);
        Ok(hub)
    }

    fn listen(&self) -> Result<OwnedFd> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let _ = std::fs::remove_file(&self.socket);
        // Only root (hpk-netd) may hand taps over: the file is made private before use.
        let addr = UnixAddr::new(&self.socket)?;
        bind(fd.as_raw_fd(), &addr)?;
        std::fs::set_permissions(
            &self.socket,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        listen(&fd, Backlog::new(64)?)?;
        Ok(fd)
    }

    fn call(&self, request: &HubRequest, fds: &[i32]) -> Result<HubReply> {
        let conn = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(conn.as_raw_fd(), &UnixAddr::new(&self.socket)?)
            .with_context(|| format!("connect {}", self.socket.display()))?;
        let timeout = TimeVal::seconds(ANSWER_TIMEOUT.as_secs() as i64);
        setsockopt(&conn, sockopt::ReceiveTimeout, &timeout)?;
        let text = serde_json::to_vec(request).expect("requests serialize");
        send_message(conn.as_fd(), &text, fds).context("send")?;
        let (answer, _) = receive_message(conn.as_fd()).context("receive")?;
        if answer.is_empty() {
            bail!("the hub closed the connection without an answer");
        }
        serde_json::from_slice(&answer).map_err(|e| anyhow!("the hub's answer is garbled: {e}"))
    }
}
