//! The bubble's state directory on the host. Its launcher holds a lock on
//! [`LOCK`] for as long as it lives (the kernel drops the lock when the launcher dies,
//! however it dies), so a start that finds the directory can tell a running bubble from
//! the leftovers of a dead one: a launcher SIGKILLed, an OOM kill, a node's job step
//! killed. Leftovers are taken over once no process of the dead bubble is alive: what
//! the controller needs to carry on with the same cluster (etcd's data, the server's
//! certificate) is kept, the rest removed, and the containers that were in it are named.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpk_netd::sys::process::ProcId;

/// The launcher's lock file, in the state directory.
pub const LOCK: &str = "launcher.lock";

/// The bubble's processes on the host (PID 1, its holder, the uplink), by PID and start
/// time, in the state directory.
pub const PROCESSES: &str = "processes.json";

/// How long a dead bubble's processes may take to follow their launcher (parent-death
/// signals; PID 1 stopping its services).
const LEFTOVER_GRACE: Duration = Duration::from_secs(20);

/// A state directory this launcher holds.
pub struct StateDir {
    pub path: PathBuf,
    /// Whether this start made the directory (no dead bubble's was there).
    new: bool,
    /// Held until the launcher exits.
    _lock: File,
}

impl StateDir {
    /// Removes the directory if this start made it (nothing was started in it yet).
    pub fn discard_if_new(self) {
        if self.new {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What a start found of a dead bubble in its state directory.
#[derive(Debug, Default, PartialEq)]
pub struct Takeover {
    /// Containers that were running in the dead bubble (by name): they are gone.
    pub containers: Vec<String>,
    /// Entries kept for the new bubble (etcd's data, the server's PKI).
    pub kept: Vec<String>,
}

impl Takeover {
    /// One line for the launcher's log and the job's output.
    pub fn describe(&self, id: u32, dir: &Path) -> String {
        let gone = if self.containers.is_empty() {
            "no container was in it".to_owned()
        } else {
            format!(
                "its containers are gone: {} (start them again)",
                self.containers.join(", ")
            )
        };
        let kept = if self.kept.is_empty() {
            String::new()
        } else {
            format!("; kept {}", self.kept.join(", "))
        };
        format!(
            "bubble {id} took over the state directory {} of a dead bubble {id} (no process of it alive); {gone}{kept}",
            dir.display()
        )
    }
}

/// Takes `path` for bubble `id`: new, or the leftovers of a dead bubble (keeping the
/// entries named in `keep`). Refuses a directory whose launcher still runs.
pub fn claim(path: &Path, id: u32, keep: &[&str]) -> Result<(StateDir, Option<Takeover>)> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let lock = lock(path, id)?;
            Ok((
                StateDir {
                    path: path.to_owned(),
                    new: true,
                    _lock: lock,
                },
                None,
            ))
        }
        Err(e) => Err(e).with_context(|| format!("cannot look at {}", path.display())),
        Ok(meta) => {
            if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
                bail!(
                    "state directory {} exists and is not a directory of this user: remove it, or choose another (--state-dir, HPK_STATE_DIR)",
                    path.display()
                );
            }
            let lock = lock(path, id)?;
            let takeover = take_over(path, keep)?;
            tracing::warn!("{}", takeover.describe(id, path));
            Ok((
                StateDir {
                    path: path.to_owned(),
                    new: false,
                    _lock: lock,
                },
                Some(takeover),
            ))
        }
    }
}

/// The launcher's lock, or an error naming the launcher that holds it.
fn lock(dir: &Path, id: u32) -> Result<File> {
    let path = dir.join(LOCK);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "bubble {id} is already running here: launcher PID {} holds {} (stop it first, or choose another --state-dir)",
            holder.trim(),
            path.display()
        );
    }
    file.set_len(0)?;
    std::fs::write(&path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// Writes [`PROCESSES`].
pub fn note_processes(dir: &Path, procs: &[ProcId]) -> Result<()> {
    hpk_netd::sys::fs::write_atomically(
        &dir.join(PROCESSES),
        &serde_json::to_vec(procs)?,
        0o600,
        false,
    )
}

/// The dead bubble's processes still alive: those it noted, and any naming `dir`.
fn left_over(dir: &Path) -> Vec<i32> {
    let noted: Vec<ProcId> = std::fs::read(dir.join(PROCESSES))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut left: Vec<i32> = noted.iter().filter(|p| p.alive()).map(|p| p.pid).collect();
    // PID 1 still counts while it ends its PID namespace: its other processes hold the
    // bubble's ports until then.
    left.extend(processes_naming(&dir.to_string_lossy()));
    left.sort();
    left.dedup();
    left
}

/// Waits until no process of the dead bubble is left, then clears `dir` but `keep`.
fn take_over(dir: &Path, keep: &[&str]) -> Result<Takeover> {
    take_over_within(dir, keep, LEFTOVER_GRACE)
}

fn take_over_within(dir: &Path, keep: &[&str], grace: Duration) -> Result<Takeover> {
    let deadline = std::time::Instant::now() + grace;
    let left = loop {
        let left = left_over(dir);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            break left;
        }
        // Polled: these processes are no children of ours to wait for.
        std::thread::sleep(Duration::from_millis(100));
    };
    if !left.is_empty() {
        bail!(
            "state directory {} belongs to a bubble whose launcher is gone but whose processes still run ({}): end them (kill PID) and start again",
            dir.display(),
            left.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut containers: Vec<String> = std::fs::read_dir(dir.join("containers"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    containers.sort();
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == LOCK {
            continue;
        }
        if keep.contains(&name.as_ref()) {
            kept.push(name.into_owned());
            continue;
        }
        remove(&entry.path())?;
    }
    kept.sort();
    Ok(Takeover { containers, kept })
}

fn remove(path: &Path) -> Result<()> {
    let result = if path.is_dir() && !path.is_symlink() {
        // A container's files may have lost their owner's write bit: give it back first.
        make_writable(path);
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.with_context(|| format!("cannot remove the dead bubble's {}", path.display()))
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        if meta.is_dir() {
            let mode = meta.permissions().mode();
            if mode & 0o700 != 0o700 {
                let _ =
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Processes of this user whose command line names `needle` (the bubble's PID 1 and
/// holder carry the state dir in their plan, the uplink its API socket), but not this one.
fn processes_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let uid = nix::unistd::getuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid)
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .any(|arg| arg.contains(needle))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hpk-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_held_directory_is_refused_and_a_dead_ones_is_taken_over() {
        let dir = scratch("claim");
        let (held, none) = claim(&dir, 2, &[]).unwrap();
        assert!(none.is_none());
        let e = format!("{:#}", claim(&dir, 2, &[]).err().unwrap());
        assert!(e.contains("already running here"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(held);
        // What a dead controller left: containers, sockets, etcd's data.
        for d in [
            "containers/web",
            "containers/db/bundle",
            "etcd/member",
            "pki",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("ports.sock"), "").unwrap();
        std::fs::write(dir.join("etcd/member/wal"), "data").unwrap();
        let (_held, takeover) = claim(&dir, 2, &["etcd", "pki"]).unwrap();
        let takeover = takeover.unwrap();
        assert_eq!(takeover.containers, ["db", "web"]);
        assert_eq!(takeover.kept, ["etcd", "pki"]);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["etcd", "launcher.lock", "pki"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("etcd/member/wal")).unwrap(),
            "data"
        );
        let line = takeover.describe(2, &dir);
        assert!(line.contains("its containers are gone: db, web"), "{line}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_process_of_the_dead_bubble_is_named() {
        let dir = scratch("live");
        std::fs::create_dir_all(&dir).unwrap();
        // A process whose command line names the directory, as a bubble's PID 1 does.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :"])
            .arg(&dir)
            .spawn()
            .unwrap();
        // Once it has exec'd: until then its command line is ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let left = loop {
            let left = processes_naming(&dir.to_string_lossy());
            if !left.is_empty() || std::time::Instant::now() >= deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(left, [child.id() as i32]);
        let e = format!(
            "{:#}",
            take_over_within(&dir, &[], Duration::ZERO).unwrap_err()
        );
        assert!(e.contains(&format!("still run ({})", child.id())), "{e}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(processes_naming(&dir.to_string_lossy()).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
