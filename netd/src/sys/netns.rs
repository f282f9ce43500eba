//! Running code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so work that must happen in a
//! container's namespace (creating its tap, configuring its links) runs on a short-lived
//! thread that enters the namespace and ends there. Sockets and tap fds created on that
//! thread stay bound to that namespace after the thread is gone.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Where `ip netns add NAME` keeps its namespaces.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// A network namespace given as a path (`/proc/PID/ns/net`) or as a name (`ip netns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef(PathBuf);

impl NetnsRef {
    /// Interprets `spec`: anything with a `/` is a path, anything else a named namespace.
    pub fn parse(spec: &str) -> Result<NetnsRef> {
        if spec.is_empty() {
            return Err(anyhow!("empty network namespace"));
        }
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            Path::new(NAMED_NETNS_DIR).join(spec)
        };
        Ok(NetnsRef(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Opens the namespace file, with an error that says what to check.
    pub fn open(&self) -> Result<File> {
        File::open(&self.0).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "network namespace {} does not exist (has the container exited, or is the name wrong?)",
                    self.0.display()
                )
            } else {
                anyhow!("cannot open network namespace {}: {e}", self.0.display())
            }
        })
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let ns = self.open()?;
        let shown = self.0.display().to_string();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || -> Result<T> {
                setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| {
                    format!("cannot enter network namespace {shown} (needs CAP_SYS_ADMIN over it)")
                })?;
                f()
            })
            .context("cannot spawn a thread")?
            .join()
            .map_err(|_| anyhow!("thread working in {} panicked", self.0.display()))?
    }
}

impl std::fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(
            NetnsRef::parse("c1").unwrap().path(),
            Path::new("/run/netns/c1")
        );
        assert_eq!(
            NetnsRef::parse("/proc/42/ns/net").unwrap().path(),
            Path::new("/proc/42/ns/net")
        );
        assert!(NetnsRef::parse("").is_err());
    }

    #[test]
    fn missing_namespace_is_explained() {
        let err = NetnsRef::parse("/proc/999999999/ns/net")
            .unwrap()
            .open()
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
