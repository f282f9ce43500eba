//! One directory per container under `Paths::containers`:
//!
//! ```text
//! <name>/record.json   name, runtime, image, created, detached, ...
//! <name>/owner.lock    flock held by the hpktainer that runs the container in the foreground
//!                      (or is still starting it): when it dies, the kernel drops the lock,
//!                      which is how a sweep tells a live run from a SIGKILLed one
//! <name>/bundle/       config.json, rootfs (an overlay on the cached image)
//! <name>/upper, work   the container's writes
//! <name>/pid           written by the runtime (--pid-file)
//! <name>/log           stdout and stderr of a detached container
//! ```

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::runtime::Runtime;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub runtime: Runtime,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub command: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub detached: bool,
    /// Remove everything when the container exits.
    pub remove: bool,
    /// Set once the container has exited and was deleted in the runtime.
    #[serde(default)]
    pub exited: bool,
}

// Records of earlier versions also hold `id` (always the name), `pid` (the pid file's) and
// `overlay`: serde skips them when reading.
impl Record {
    /// The runtime's container id (and hpk-netd's endpoint id): the name.
    pub fn id(&self) -> &str {
        &self.name
    }
}

/// A container's directory.
#[derive(Clone, Debug)]
pub struct ContainerDir {
    pub dir: PathBuf,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Names users give: what runtimes accept as ids, and safe as a directory name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        bail!("container name {name:?}: use 1 to 64 letters, digits, '_', '.', '-', starting with a letter or digit");
    }
    Ok(())
}

/// The refusal of a name that one of the user's containers has.
pub fn name_in_use(name: &str) -> anyhow::Error {
    anyhow!("the name {name} is already in use by a container of yours: choose another --name, or `hpktainer rm {name}`")
}

/// A generated name: short, unique enough, valid as an id.
pub fn generate_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("hpk-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

impl ContainerDir {
    pub fn new(dir: PathBuf) -> ContainerDir {
        ContainerDir { dir }
    }

    pub fn open(containers: &Path, name: &str) -> Result<ContainerDir> {
        check_name(name)?;
        let dir = containers.join(name);
        if !dir.join("record.json").exists() {
            bail!("no container named {name} (see `hpktainer ps -a`)");
        }
        Ok(ContainerDir { dir })
    }

    /// Creates `<containers>/<name>` holding `record` with its owner lock taken. The
    /// directory is built under a temporary name and renamed into place, so a sweep never
    /// sees a directory without a record, and a taken name fails the rename.
    pub fn create(containers: &Path, record: &Record) -> Result<(ContainerDir, Flock<File>)> {
        let tmp = containers.join(format!(".new-{}-{}", record.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("bundle"))
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let staged = ContainerDir { dir: tmp.clone() };
        let lock = staged
            .lock_owner()?
            .ok_or_else(|| anyhow!("cannot lock {}", tmp.display()))?;
        staged.save(record)?;
        let dir = containers.join(&record.name);
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok((ContainerDir { dir }, lock)),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty
                ) || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(name_in_use(&record.name))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e).with_context(|| format!("cannot create {}", dir.display()))
            }
        }
    }

    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub fn load(&self) -> Result<Record> {
        let path = self.dir.join("record.json");
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is garbled", path.display()))
    }

    pub fn save(&self, record: &Record) -> Result<()> {
        let path = self.dir.join("record.json");
        let tmp = self.dir.join("record.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The container's pid as the runtime wrote it.
    pub fn runtime_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Takes the owner lock without waiting: `None` when a live hpktainer holds it.
    pub fn lock_owner(&self) -> Result<Option<Flock<File>>> {
        let path = self.dir.join("owner.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(anyhow!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// Every container directory (and half-made ones, `.new-*`).
pub fn list(containers: &Path) -> Vec<ContainerDir> {
    let mut dirs: Vec<_> = std::fs::read_dir(containers)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| ContainerDir::new(e.path()))
        .collect();
    dirs.sort_by(|a, b| a.dir.cmp(&b.dir));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_earlier_versions_are_read() {
        let old = r#"{"name":"web","id":"web","runtime":{"kind":"oci","path":"/usr/bin/runc"},
            "image":"/r","command":["sh"],"created":1,"pid":42,"detached":true,
            "remove":false,"overlay":true,"exited":false}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert_eq!(r.id(), "web");
        assert!(r.detached && !r.remove && !r.exited);
        let text = serde_json::to_string(&r).unwrap();
        for gone in ["\"id\"", "\"pid\"", "\"overlay\""] {
            assert!(!text.contains(gone), "{text}");
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["web", "a.b-c_1", "0abc"] {
            check_name(good).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        check_name(&generate_name()).unwrap();
    }
}
