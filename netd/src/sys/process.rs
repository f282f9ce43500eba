//! Processes named by PID and start time, so that a recycled PID is never mistaken for
//! the process it used to be.

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::sys::pidwatch::PidWatch;

/// A process, identified by PID and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// A pidfd for this process; `None` if it is gone (or its PID is another's now). An
    /// error is a pidfd that could not be made (out of descriptors, say), not an exit.
    pub fn watch(&self) -> std::io::Result<Option<PidWatch>> {
        let watch = match PidWatch::open(self.pid) {
            Ok(watch) => watch,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Checked after opening: the pidfd now pins the process we verified.
        Ok(self.alive().then_some(watch))
    }
}

/// Raises this process's soft limit of open files to the hard limit; returns it.
pub fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Reaps `pid` if it is our exited child; harmless otherwise.
pub fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
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
        // A pidfd for ourselves; none (and no error) for a process that is not ours.
        assert!(me.watch().unwrap().is_some());
        assert!(other.watch().unwrap().is_none());
    }

    /// Set in the child that `the_open_files_limit_is_raised_to_the_hard_one` runs.
    const IN_CHILD: &str = "HPK_TEST_FD_LIMIT_CHILD";

    /// Lowers and raises the limit of the process it runs in: in a child of its own (this
    /// test binary again, this test only), never beside the tests running in parallel.
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let name = "sys::process::tests::the_open_files_limit_is_raised_to_the_hard_one";
        if std::env::var_os(IN_CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads", "1"])
                .env(IN_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "in the child: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // A filter that matched nothing passes too: the child must have run it.
            assert!(
                stdout.contains("1 passed"),
                "the child ran no test: {stdout}"
            );
            return;
        }
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        assert_eq!(raise_fd_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
