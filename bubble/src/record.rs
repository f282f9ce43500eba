//! The shared directory: what every node of a job sees. A bubble publishes one record
//! there when it is ready (`bubble-ID.json`, written atomically) and removes it when it
//! stops; its logs (`bubble-ID-WHAT.log`) stay.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpk_netd::sys::process::ProcId;
use serde::{Deserialize, Serialize};

use crate::cli::{Role, UnderlayKind, UplinkKind};

/// A ready bubble, as other bubbles and the user's commands find it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: u32,
    pub role: Role,
    /// The Slurm job, when started by one.
    pub job: Option<String>,
    /// The node's hostname.
    pub host: String,
    pub host_ip: Ipv4Addr,
    pub uplink: UplinkKind,
    /// Where the overlay's vxlan meets the host's network.
    #[serde(default)]
    pub underlay: UnderlayKind,
    /// etcd's client URL (the controller's record only).
    pub etcd: Option<String>,
    /// UDP port of the overlay (flannel's Backend.Port).
    pub vxlan_port: u16,
    /// This bubble's overlay subnet.
    pub subnet: String,
    /// PID 1 of the bubble, as the host sees it.
    pub init: ProcId,
    pub state_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct SharedDir {
    pub path: PathBuf,
}

impl SharedDir {
    /// The shared directory, which must exist and be writable.
    pub fn open(path: &Path) -> Result<SharedDir> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "shared directory {} does not exist: create it on a file system every node sees (--shared-dir, HPK_SHARED_DIR)",
                path.display()
            )
        })?;
        if !meta.is_dir() {
            bail!("shared directory {} is not a directory", path.display());
        }
        nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).with_context(|| {
            format!(
                "shared directory {} is not writable by this user",
                path.display()
            )
        })?;
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        Ok(SharedDir { path })
    }

    pub fn record_path(&self, id: u32) -> PathBuf {
        self.path.join(format!("bubble-{id}.json"))
    }

    /// The cluster's etcd CA and client certificate (the controller writes them).
    pub fn pki_dir(&self) -> PathBuf {
        self.path.join("pki")
    }

    pub fn etcd_client_files(&self) -> crate::pki::ClientFiles {
        crate::pki::ClientFiles::in_dir(&self.pki_dir())
    }

    pub fn log_path(&self, id: u32, what: &str) -> PathBuf {
        self.path.join(format!("bubble-{id}-{what}.log"))
    }

    pub fn publish(&self, record: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(record)?;
        hpk_netd::sys::fs::write_atomically(&self.record_path(record.id), &json, 0o600, true)
    }

    /// Removes bubble `id`'s record if it is still the one `init` published.
    pub fn withdraw(&self, id: u32, init: ProcId) {
        if self.read(id).ok().flatten().is_some_and(|r| r.init == init) {
            let _ = std::fs::remove_file(self.record_path(id));
        }
    }

    /// Bubble `id`'s record, if published.
    pub fn read(&self, id: u32) -> Result<Option<Record>> {
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a bubble record", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Every record, by bubble id; unreadable files are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.path)
            .with_context(|| format!("cannot list {}", self.path.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("bubble-")?.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            match self.read(id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// The controller's record, once one is published and (if it runs on this host) alive.
    pub fn controller(&self) -> Result<Option<Record>> {
        let host = hostname();
        Ok(self
            .list()?
            .into_iter()
            .find(|r| r.role == Role::Controller && (r.host != host || r.init.alive())))
    }
}

/// Waits for a record with a deadline, giving up early when `give_up` says why.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut find: impl FnMut() -> Result<Option<Record>>,
    mut give_up: impl FnMut() -> Result<()>,
) -> Result<Record> {
    crate::child::wait_for(what, "", timeout, || {
        give_up()?;
        find()
    })
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
