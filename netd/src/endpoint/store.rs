//! Endpoint records on disk: what a restarted hpk-netd needs to adopt its endpoints.
//! One JSON file per container under `<state>/endpoints/`, written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::endpoint::EndpointSpec;
use crate::sys::fs::write_atomically;
use crate::sys::process::ProcId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub spec: EndpointSpec,
    /// The forwarder of a tap endpoint, or a socket endpoint's server; a veth has none.
    pub forwarder: Option<ProcId>,
    /// A socket endpoint's client, in the container's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ProcId>,
}

impl Record {
    /// The processes of the data path: forwarder (or server), then client.
    pub fn processes(&self) -> impl Iterator<Item = ProcId> {
        self.forwarder.into_iter().chain(self.client)
    }
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store> {
        let dir = state_dir.join("endpoints");
        crate::sys::fs::private_dir(&dir)?;
        Ok(Store { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The UNIX socket of a socket endpoint's pair.
    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sock"))
    }

    /// Where the forwarder of `id` writes its log.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
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

    /// Every readable record; unreadable ones are logged and skipped.
    pub fn load_all(&self) -> Vec<Record> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| match fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice(&b)?)) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(path = %p.display(), error = %e, "ignoring unreadable endpoint record");
                    None
                }
            })
            .collect()
    }
}
