//! Endpoint records on disk: what a restarted hpk-netd needs to adopt its endpoints.
//! One JSON file per container under `<state>/endpoints/`, written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::endpoint::EndpointSpec;
use crate::sys::fs::{write_atomically, TMP_SUFFIX};
use crate::sys::process::ProcId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub spec: EndpointSpec,
    #[serde(flatten)]
    pub path: DataPath,
}

/// The processes that carry an endpoint's frames; a veth has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPath {
    /// The forwarder of a tap endpoint, or a socket endpoint's server.
    pub forwarder: Option<ProcId>,
    /// A socket endpoint's client, in the container's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ProcId>,
    /// The forwarder is the bubble's hub, shared with the other tap endpoints: it is told
    /// to drop this endpoint, never stopped for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hub: bool,
}

impl DataPath {
    /// The processes: forwarder (or server, or hub), then client.
    pub fn processes(&self) -> impl Iterator<Item = ProcId> {
        self.forwarder.into_iter().chain(self.client)
    }
}

impl Record {
    pub fn processes(&self) -> impl Iterator<Item = ProcId> {
        self.path.processes()
    }
}

pub struct Store {
    dir: PathBuf,
}

/// What the files of an endpoint are called after its id: its record, its pair's socket,
/// its forwarder's log.
const RECORD: &str = ".json";
const SOCKET: &str = ".sock";
const LOG: &str = ".log";

/// The most an endpoint's file names add to its id: the record's, while it is written.
pub const LONGEST_SUFFIX: usize = RECORD.len() + TMP_SUFFIX.len();
const _: () = assert!(SOCKET.len() <= LONGEST_SUFFIX && LOG.len() <= LONGEST_SUFFIX);

/// Every file name made from `id`: the record and its temporary name, socket, log.
pub fn file_names(id: &str) -> [String; 4] {
    [
        format!("{id}{RECORD}"),
        format!("{id}{RECORD}{TMP_SUFFIX}"),
        format!("{id}{SOCKET}"),
        format!("{id}{LOG}"),
    ]
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store> {
        let dir = state_dir.join("endpoints");
        crate::sys::fs::private_dir(&dir)?;
        Ok(Store { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{RECORD}"))
    }

    /// The UNIX socket of a socket endpoint's pair.
    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SOCKET}"))
    }

    /// Where the forwarder of `id` writes its log.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{LOG}"))
    }

    /// Whether a record file of `id` exists, readable or not.
    pub fn has(&self, id: &str) -> bool {
        self.path(id).exists()
    }

    pub fn save(&self, record: &Record) -> Result<()> {
        let data = serde_json::to_vec_pretty(record)?;
        write_atomically(&self.path(record.spec.id()), &data, 0o600, false)
    }

    /// Forgets `id`: its record, its forwarder's log and socket.
    pub fn remove(&self, id: &str) {
        for path in [self.path(id), self.log_path(id), self.socket_path(id)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %path.display(), error = %e, "cannot remove endpoint file");
                }
            }
        }
    }

    /// Removes what an attach left when hpk-netd died in its middle: the logs and sockets
    /// of endpoints not in `keep` (the record was never written), and half-written
    /// records (nothing writes while hpk-netd starts).
    pub fn sweep(&self, keep: &std::collections::HashSet<String>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
            let orphan = || {
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|id| !keep.contains(id))
            };
            let stray = ext == "tmp" || ((ext == "log" || ext == "sock") && orphan());
            if stray {
                info!(path = %path.display(), "removing what an interrupted attach left");
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Every record that reads back whole and consistent. The others (truncated,
    /// garbled, or naming another endpoint's link) are reported and never acted on.
    pub fn load_all(&self) -> Loaded {
        let mut loaded = Loaded::default();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return loaded;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(RECORD))
            else {
                continue;
            };
            match fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Record::parse(id, &b))
            {
                Ok(r) => loaded.records.push(r),
                Err(e) => {
                    warn!(path = %path.display(), error = %format!("{e:#}"), "unreadable endpoint record: not adopted, its address stays reserved until its container stops (its poststop hook detaches it)");
                    loaded.unreadable.push(id.to_owned());
                }
            }
        }
        loaded
    }
}

/// What a restarted hpk-netd finds on disk.
#[derive(Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// Ids whose record could not be trusted.
    pub unreadable: Vec<String>,
}

impl Record {
    /// The record in file `ID.json`, if it is whole and consistent.
    pub fn parse(file_id: &str, bytes: &[u8]) -> Result<Record> {
        let record: Record = serde_json::from_slice(bytes)?;
        record.consistent_with(file_id)?;
        Ok(record)
    }

    /// A record is acted on (links deleted, processes signalled) only when it is the one
    /// its file name says and names that endpoint's own link.
    fn consistent_with(&self, file_id: &str) -> Result<()> {
        let id = self.spec.id();
        crate::endpoint::validate_id(id)?;
        if id != file_id {
            bail!("it holds endpoint {id:?}");
        }
        if self.spec.attachment.bubble_tap != crate::endpoint::bubble_tap_name(id) {
            bail!(
                "it names link {:?}, not this endpoint's",
                self.spec.attachment.bubble_tap
            );
        }
        if self.spec.pid <= 0 || self.processes().any(|p| p.pid <= 0) {
            bail!("it names no valid process");
        }
        Ok(())
    }
}
