//! Starting, finding and stopping `hpk-net-daemon` processes.
//!
//! A forwarder runs in its own session and holds the only fds of its endpoint's taps, so
//! it outlives hpk-netd restarts and its taps vanish exactly when it exits. Processes are
//! named by PID plus start time, so a recycled PID is never mistaken for ours.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::pidwatch::PidWatch;
use crate::tap::Tap;

/// A process, identified by PID and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcId {
    pub fn of(pid: i32) -> Option<ProcId> {
        start_time(pid).map(|start| ProcId { pid, start })
    }

    /// Whether this very process still runs (and is not a zombie).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|s| s == "Z");
        !zombie && start_time(self.pid) == Some(self.start)
    }

    /// A pidfd for this process, if it is still this process.
    pub fn watch(&self) -> Option<PidWatch> {
        let watch = PidWatch::open(self.pid).ok()?;
        // Checked after opening: the pidfd now pins the process we verified.
        self.alive().then_some(watch)
    }
}

/// Reaps `pid` if it is our exited child; harmless otherwise.
pub fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

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
    cmd.args(["--container-fd", "3", "--bubble-fd", "4", "--watch-pid"])
        .arg(watch_pid.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_is_stable() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let other = ProcId {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive(), "a different start time must not match");
    }
}
