//! Starting and stopping `hpk-net-daemon` processes.
//!
//! A forwarder runs in its own session and holds the only fds of its endpoint's taps, so
//! it outlives hpk-netd restarts and its taps vanish exactly when it exits. Processes are
//! named by PID plus start time ([`ProcId`]), so a recycled PID is never mistaken for ours.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::datapath::args::NetDaemonArgs;
use crate::sys::pidwatch::PidWatch;
use crate::sys::process::{start_time, ProcId};

/// Serializes forwarder starts: between duplicating a pair of tap fds as inheritable and
/// closing them again after the spawn, no other forwarder may be started (it would inherit
/// them and keep the taps alive as long as it runs; a short-lived child such as
/// iptables-restore holds them only for its few milliseconds).
static SPAWNING: Mutex<()> = Mutex::new(());

/// Starts hpk-net-daemon with `fds` (taps, or the hub's listening socket) handed over;
/// `args` builds its command line from the fd numbers they get.
///
/// No code runs between fork and exec, so the standard library starts it with
/// `posix_spawn` (a vfork), not a fork of this whole process: the taps are passed as
/// inheritable descriptors named on the command line, and the forwarder leaves our
/// session itself.
pub fn spawn(
    daemon: &Path,
    fds: Vec<OwnedFd>,
    args: impl FnOnce(&[RawFd]) -> NetDaemonArgs,
    log: &Path,
) -> Result<ProcId> {
    let log_file = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("cannot open forwarder log {}", log.display()))?;
    let _spawning = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    let inheritable = fds
        .iter()
        .map(|t| -> Result<OwnedFd> {
            let fd = nix::fcntl::fcntl(t, nix::fcntl::FcntlArg::F_DUPFD(3))
                .context("cannot duplicate an fd for the forwarder")?;
            // SAFETY: fcntl just returned this new fd.
            Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
        })
        .collect::<Result<Vec<OwnedFd>>>()?;
    drop(fds);
    let fds: Vec<RawFd> = inheritable.iter().map(|f| f.as_raw_fd()).collect();
    let child = Command::new(daemon)
        .args(args(&fds).to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start forwarder {}", daemon.display()))?;
    drop(inheritable);
    let pid = child.id() as i32;
    // The Child handle is dropped without waiting: exits are noticed by pidfd and reaped
    // with `reap`, also for forwarders adopted after a restart.
    drop(child);
    ProcId::of(pid)
        .filter(ProcId::alive)
        .ok_or_else(|| anyhow!("forwarder {pid} exited at once: {}", log_tail(log)))
}

/// The last lines of a forwarder's log, joined (a log may be shared, as the hub's is).
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Stops a forwarder: SIGTERM, then SIGKILL after `grace`. Returns once it is gone and,
/// if it is our child, reaped.
pub fn stop(proc_id: ProcId, grace: Duration) {
    // The pidfd pins the PID; a start time that differs means another process got it.
    let Ok(watch) = PidWatch::open(proc_id.pid) else {
        return;
    };
    if start_time(proc_id.pid) != Some(proc_id.start) {
        return;
    }
    let pid = Pid::from_raw(proc_id.pid);
    // Readable only when every thread has exited; a leader alone can look like a zombie.
    if !watch.wait_timeout(Duration::ZERO) {
        let _ = kill(pid, Signal::SIGTERM);
        if !watch.wait_timeout(grace) {
            let _ = kill(pid, Signal::SIGKILL);
            watch.wait_timeout(Duration::from_secs(5));
        }
    }
    // Fully exited: a blocking wait returns at once for our child, ECHILD otherwise.
    let _ = nix::sys::wait::waitpid(pid, None);
}
