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

/// What a look at one container found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub status: Status,
    /// Whether its runtime knows the container, when the runtime was asked (`None`: not
    /// asked).
    pub in_runtime: Option<bool>,
}

/// A container directory with its record, as the sweep left it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dir: ContainerDir,
    pub record: Record,
    pub status: Status,
}

/// What a sweep removed and what it kept.
#[derive(Debug, Default)]
pub struct Swept {
    /// Names removed.
    pub removed: Vec<String>,
    /// Containers kept, in name order (half-made directories and unreadable records left
    /// out).
    pub kept: Vec<Entry>,
}

/// Classifies one directory; `None` for a directory without a readable record.
pub fn status_of(dir: &ContainerDir, runtime_state: &Path) -> Option<(Record, Seen)> {
    let record = dir.load().ok()?;
    let owned = matches!(dir.lock_owner(), Ok(None));
    let seen = classify(dir, &record, owned, runtime_state);
    Some((record, seen))
}

/// `owned`: a live hpktainer holds the directory's owner lock. A detached container's
/// process is looked up in /proc first; its runtime is asked only when the process is gone.
fn classify(dir: &ContainerDir, record: &Record, owned: bool, runtime_state: &Path) -> Seen {
    let unasked = |status| Seen {
        status,
        in_runtime: None,
    };
    if owned {
        return unasked(Status::Running);
    }
    if !record.detached {
        return unasked(Status::Orphaned);
    }
    if record.exited {
        return unasked(Status::Exited);
    }
    if process_alive(dir) {
        return Seen {
            status: Status::Detached,
            in_runtime: Some(true),
        };
    }
    let state = oci_for(record, runtime_state).and_then(|o| o.state(record.id()));
    let alive = state
        .as_ref()
        .is_some_and(|s| !matches!(s.status(), oci_spec::runtime::ContainerState::Stopped));
    Seen {
        status: if alive {
            Status::Detached
        } else {
            Status::Exited
        },
        in_runtime: Some(state.is_some()),
    }
}

/// Is the process the runtime wrote to the pid file still running? Alive, not a zombie,
/// and started no later than the pid file was written (a reused pid starts later).
fn process_alive(dir: &ContainerDir) -> bool {
    let (Some(pid), Ok(written)) = (
        dir.runtime_pid(),
        std::fs::metadata(dir.pid_file()).and_then(|m| m.modified()),
    ) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((state, start_ticks)) = parse_stat(&stat) else {
        return false;
    };
    if matches!(state, 'Z' | 'X' | 'x') {
        return false;
    }
    let Some(boot) = boot_time() else {
        return true;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let Ok(ticks) = u64::try_from(ticks) else {
        return true;
    };
    let Ok(written) = written.duration_since(std::time::UNIX_EPOCH) else {
        return true;
    };
    // The boot time has a second's precision: allow one more.
    boot + start_ticks / ticks.max(1) <= written.as_secs() + 1
}

/// The state letter and start time (clock ticks after boot) of a /proc/PID/stat line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields 3 on follow the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // starttime is field 22, the 19th after the state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Seconds since the epoch at boot (`btime` of /proc/stat).
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Deletes the container in its runtime (if it still knows it) and unmounts its rootfs.
/// `in_runtime`: whether the runtime knows it, if already asked.
pub fn stop_in_runtime(
    dir: &ContainerDir,
    record: &Record,
    runtime_state: &Path,
    in_runtime: Option<bool>,
) {
    if let Some(oci) = oci_for(record, runtime_state) {
        let known = in_runtime.unwrap_or_else(|| oci.state(record.id()).is_some());
        if known {
            if let Err(e) = oci.delete(record.id()) {
                warn!("{e:#}");
            }
        }
    }
    crate::rootfs::release(dir);
}

/// Removes a container completely: runtime state, overlay, directory.
pub fn remove(
    dir: &ContainerDir,
    record: &Record,
    runtime_state: &Path,
    in_runtime: Option<bool>,
) -> Result<()> {
    stop_in_runtime(dir, record, runtime_state, in_runtime);
    crate::rootfs::remove_dir(dir)
}

/// Whether `name` is a directory being made or removed (`.new-NAME-PID`,
/// `.gone-NAME-PID`) by an hpktainer that still runs.
fn maker_alive(name: &str) -> bool {
    name.strip_prefix(".new-")
        .or_else(|| name.strip_prefix(".gone-"))
        .and_then(|rest| rest.rsplit_once('-'))
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Sweeps leftovers of dead runs; with `all`, also exited detached containers.
pub fn sweep(containers: &Path, runtime_state: &Path, all: bool) -> Swept {
    let mut swept = Swept::default();
    for dir in state::list(containers) {
        let name = dir.name();
        // A directory being made is not locked yet for a moment, and one being removed
        // no longer is: the PID of the hpktainer doing it is in its name, and while that
        // lives the directory is not ours to judge.
        if maker_alive(&name) {
            continue;
        }
        // The lock is held for the whole sweep of one directory: two sweeps never race.
        let lock = match dir.lock_owner() {
            Ok(Some(lock)) => lock,
            // A live hpktainer runs it (or is starting it).
            Ok(None) => {
                if !name.starts_with('.') {
                    if let Ok(record) = dir.load() {
                        swept.kept.push(Entry {
                            dir,
                            record,
                            status: Status::Running,
                        });
                    }
                }
                continue;
            }
            Err(_) => continue,
        };
        // Half-made or half-removed directories (.new-*, .gone-*) and Apptainer bundles
        // (.apptainer-*) whose hpktainer is gone.
        if name.starts_with('.') {
            debug!(dir = %dir.dir.display(), "removing a leftover directory");
            let _ = crate::rootfs::remove_dir(&dir);
            continue;
        }
        let Ok(mut record) = dir.load() else {
            continue;
        };
        let seen = classify(&dir, &record, false, runtime_state);
        let status = seen.status;
        let gone = match status {
            Status::Orphaned => true,
            Status::Exited => all || record.remove,
            Status::Running | Status::Detached => false,
        };
        if gone {
            info!(container = %name, ?status, "removing");
            match remove(&dir, &record, runtime_state, seen.in_runtime) {
                Ok(()) => {
                    swept.removed.push(name);
                    continue;
                }
                Err(e) => warn!("{e:#}"),
            }
        } else if status == Status::Exited && !record.exited {
            // Finished on its own: free its network now, keep its log.
            stop_in_runtime(&dir, &record, runtime_state, seen.in_runtime);
            record.exited = true;
            let _ = dir.save(&record);
        }
        drop(lock);
        swept.kept.push(Entry {
            dir,
            record,
            status,
        });
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_parse() {
        let line = "4242 (sh (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (init) Z 0"), None);
        assert_eq!(parse_stat("garbage"), None);
        // This very process, through the whole check.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (state, start) = parse_stat(&own).unwrap();
        assert!(matches!(state, 'R' | 'S'), "{own}");
        let boot = boot_time().unwrap();
        let now = crate::state::now();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(boot + start / ticks <= now + 1);
    }

    #[test]
    fn a_live_pid_file_is_seen_without_the_runtime() {
        let dir = crate::testutil::TempDir::new("sweep");
        let cdir = ContainerDir::new(dir.path().to_path_buf());
        assert!(!process_alive(&cdir), "no pid file");
        std::fs::write(cdir.pid_file(), std::process::id().to_string()).unwrap();
        assert!(process_alive(&cdir), "this process");
        // A pid file older than the process that has the pid now: the pid was reused.
        let before_boot = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(boot_time().unwrap().saturating_sub(10));
        std::fs::File::options()
            .write(true)
            .open(cdir.pid_file())
            .unwrap()
            .set_modified(before_boot)
            .unwrap();
        assert!(!process_alive(&cdir), "a reused pid");
        std::fs::write(cdir.pid_file(), "999999999").unwrap();
        assert!(!process_alive(&cdir), "no such process");
        // A zombie: a child that exited and is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::fs::write(cdir.pid_file(), pid.to_string()).unwrap();
        let stat = format!("/proc/{pid}/stat");
        testwait(|| {
            parse_stat(&std::fs::read_to_string(&stat).unwrap())
                .unwrap()
                .0
                == 'Z'
        });
        assert!(!process_alive(&cdir), "a zombie");
        child.wait().unwrap();
    }

    fn testwait(mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
