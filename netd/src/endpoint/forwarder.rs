//! Starting and stopping `hpk-net-daemon` processes.
//!
//! A forwarder runs in its own session and holds the only fds of its endpoint's taps, so
//! it outlives hpk-netd restarts and its taps vanish exactly when it exits. Processes are
//! named by PID plus start time ([`ProcId`]), so a recycled PID is never mistaken for ours.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::datapath::args::NetDaemonArgs;
use crate::sys::pidwatch::PidWatch;
use crate::sys::process::{start_time, ProcId};
use crate::sys::tap::Tap;

/// Starts a forwarder for the two taps; `watch_pid` is the container's process.
pub fn spawn(
    daemon: &Path,
    container: Tap,
    bubble: Tap,
    watch_pid: i32,
    log: &Path,
) -> Result<ProcId> {
    // Move the fds above the range the child will use, so the dup2s cannot clobber them.
    let hi = |t: &Tap| -> Result<OwnedFd> {
        let fd = nix::fcntl::fcntl(t, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .context("cannot duplicate a tap fd")?;
        // SAFETY: fcntl just returned this new fd.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    };
    let (c, b) = (hi(&container)?, hi(&bubble)?);
    drop((container, bubble));
    let (c_raw, b_raw) = (c.as_raw_fd(), b.as_raw_fd());
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open forwarder log {}", log.display()))?;
    let mut cmd = Command::new(daemon);
    cmd.args(NetDaemonArgs::inherited(3, 4, watch_pid).to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(c_raw, 3) < 0 || libc::dup2(b_raw, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start forwarder {}", daemon.display()))?;
    let pid = child.id() as i32;
    // The Child handle is dropped without waiting: exits are noticed by pidfd and reaped
    // with `reap`, also for forwarders adopted after a restart.
    drop(child);
    ProcId::of(pid).filter(ProcId::alive).ok_or_else(|| {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        anyhow!("forwarder {pid} exited at once: {}", said.trim())
    })
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
