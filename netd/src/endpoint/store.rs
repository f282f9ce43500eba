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
#[serde(try_from = "RecordFile")]
pub struct Record {
    pub spec: EndpointSpec,
    #[serde(rename = "data_path")]
    pub path: DataPath,
}

/// What carries an endpoint's frames between its container and the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPath {
    /// A veth pair: the kernel's own path, no process.
    Veth,
    /// Two taps served by the bubble's hub, shared with the other tap endpoints: it is
    /// told to drop this endpoint, never stopped for it.
    Hub(ProcId),
    /// Two taps and a forwarder of their own.
    Forwarder(ProcId),
    /// Two taps, each with a process of its own joined by a UNIX socket: the server on
    /// the bridge's side, the client in the container's namespace.
    SocketPair { server: ProcId, client: ProcId },
}

impl DataPath {
    /// The processes that must run for the endpoint to carry frames: forwarder (or
    /// server, or hub), then client.
    pub fn processes(&self) -> impl Iterator<Item = ProcId> {
        let (first, second) = match *self {
            DataPath::Veth => (None, None),
            DataPath::Hub(p) | DataPath::Forwarder(p) => (Some(p), None),
            DataPath::SocketPair { server, client } => (Some(server), Some(client)),
        };
        first.into_iter().chain(second)
    }

    /// The process on the bridge's side: the forwarder, server or hub.
    pub fn forwarder(&self) -> Option<ProcId> {
        self.processes().next()
    }

    /// Whether the forwarder is the bubble's shared hub.
    pub fn is_hub(&self) -> bool {
        matches!(self, DataPath::Hub(_))
    }
}

impl Record {
    pub fn processes(&self) -> impl Iterator<Item = ProcId> {
        self.path.processes()
    }
}

/// A record as files hold it: `data_path`, or the fields hpk-netd wrote before it (a
/// restarted newer hpk-netd adopts the endpoints an older one left).
#[derive(Deserialize)]
struct RecordFile {
    spec: EndpointSpec,
    data_path: Option<DataPath>,
    /// Before `data_path`: the forwarder, server or hub.
    #[serde(default)]
    forwarder: Option<ProcId>,
    /// Before `data_path`: a socket endpoint's client.
    #[serde(default)]
    client: Option<ProcId>,
    /// Before `data_path`: the forwarder is the hub.
    #[serde(default)]
    hub: bool,
}

impl TryFrom<RecordFile> for Record {
    type Error = String;

    fn try_from(file: RecordFile) -> Result<Record, String> {
        let old = (file.forwarder, file.client, file.hub);
        let path = match (file.data_path, old) {
            (Some(path), (None, None, false)) => path,
            (Some(_), _) => return Err("it holds both data_path and older fields".into()),
            (None, (None, None, false)) => DataPath::Veth,
            (None, (Some(hub), None, true)) => DataPath::Hub(hub),
            (None, (Some(forwarder), None, false)) => DataPath::Forwarder(forwarder),
            (None, (Some(server), Some(client), false)) => DataPath::SocketPair { server, client },
            (None, _) => return Err("its data path fields do not go together".into()),
        };
        Ok(Record {
            spec: file.spec,
            path,
        })
    }
}

#[derive(Clone)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json() -> serde_json::Value {
        let id = "c1";
        serde_json::json!({"id": id, "address": "10.244.3.2", "prefix_len": 24,
            "gateway": "10.244.3.1", "mtu": 1450, "tap": "eth0",
            "bubble_tap": crate::endpoint::bubble_tap_name(id), "kind": "tap",
            "pid": 4242, "pid_start": 7, "bridge": "hpk-bridge"})
    }

    fn parse(fields: serde_json::Value) -> Result<Record> {
        let mut record = serde_json::json!({ "spec": spec_json() });
        record
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        Record::parse("c1", &serde_json::to_vec(&record).unwrap())
    }

    const P: ProcId = ProcId { pid: 10, start: 1 };
    const Q: ProcId = ProcId { pid: 11, start: 2 };

    /// Records written before `data_path` existed still read, as what they meant.
    #[test]
    fn old_records_read() {
        let p = serde_json::json!({"pid": 10, "start": 1});
        let q = serde_json::json!({"pid": 11, "start": 2});
        let cases = [
            (serde_json::json!({"forwarder": null}), DataPath::Veth),
            (serde_json::json!({}), DataPath::Veth),
            (serde_json::json!({"forwarder": p}), DataPath::Forwarder(P)),
            (
                serde_json::json!({"forwarder": p, "hub": true}),
                DataPath::Hub(P),
            ),
            (
                serde_json::json!({"forwarder": p, "client": q}),
                DataPath::SocketPair {
                    server: P,
                    client: Q,
                },
            ),
        ];
        for (fields, path) in cases {
            let record = parse(fields.clone()).unwrap_or_else(|e| panic!("{fields}: {e:#}"));
            assert_eq!(record.path, path, "{fields}");
        }
    }

    #[test]
    fn old_fields_that_do_not_go_together_are_refused() {
        let p = serde_json::json!({"pid": 10, "start": 1});
        for fields in [
            serde_json::json!({"client": p}),
            serde_json::json!({"hub": true}),
            serde_json::json!({"forwarder": p, "client": p, "hub": true}),
            serde_json::json!({"data_path": "veth", "forwarder": p}),
        ] {
            assert!(parse(fields.clone()).is_err(), "{fields}");
        }
    }

    /// Records are written in the new layout, which reads back the same.
    #[test]
    fn new_records_round_trip() {
        for path in [
            DataPath::Veth,
            DataPath::Hub(P),
            DataPath::Forwarder(P),
            DataPath::SocketPair {
                server: P,
                client: Q,
            },
        ] {
            let record = Record {
                spec: serde_json::from_value(spec_json()).unwrap(),
                path,
            };
            let json = serde_json::to_value(&record).unwrap();
            assert!(json.get("data_path").is_some(), "{json}");
            assert!(json.get("forwarder").is_none(), "{json}");
            let bytes = serde_json::to_vec(&record).unwrap();
            assert_eq!(Record::parse("c1", &bytes).unwrap(), record);
        }
    }
}
