//! The endpoint table's slot states and their races, against a builder that only records
//! what it is asked: no root, no links, no forwarders.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hpk_hook::proto::{AttachRequest, EndpointKind};
use testkit::wait_until;

use super::build::{DataPathBuilder, HubAnswers};
use super::store::{DataPath, Record, Store};
use super::table::{Endpoints, Settings, Slot};
use super::{bubble_tap_name, EndpointSpec};
use crate::bubble::ipam::Ipam;
use crate::datapath::shortcut::ShortcutCounters;
use crate::subnet::SubnetEnv;
use crate::sys::process::ProcId;

const DEADLINE: Duration = Duration::from_secs(10);

/// A builder that records its calls; `start` and `stop` can be held at a gate, and
/// `start` told to fail.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    /// Ids whose bubble link "exists".
    links: Mutex<HashSet<String>>,
    /// Ids whose data path is no longer whole.
    broken: Mutex<HashSet<String>>,
    fail_start: Mutex<bool>,
    start_gate: Mutex<Option<mpsc::Receiver<()>>>,
    stop_gate: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Recorder {
    fn call(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Holds the next calls of `gate` until the returned sender sends (or is dropped).
    fn hold(gate: &Mutex<Option<mpsc::Receiver<()>>>) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        *gate.lock().unwrap() = Some(rx);
        tx
    }

    fn pass(gate: &Mutex<Option<mpsc::Receiver<()>>>) {
        let held = gate.lock().unwrap().take();
        if let Some(rx) = held {
            let _ = rx.recv();
        }
    }
}

impl DataPathBuilder for Recorder {
    fn container(&self, pid: i32) -> Result<ProcId> {
        ProcId::of(pid).ok_or_else(|| anyhow!("container process {pid} is gone"))
    }

    fn start(&self, spec: &EndpointSpec) -> Result<DataPath> {
        self.call(format!("start {}", spec.id()));
        Recorder::pass(&self.start_gate);
        if *self.fail_start.lock().unwrap() {
            bail!("the build failed");
        }
        self.links.lock().unwrap().insert(spec.id().to_owned());
        self.broken.lock().unwrap().remove(spec.id());
        Ok(DataPath::Veth)
    }

    fn stop(&self, spec: &EndpointSpec, _path: DataPath) {
        self.call(format!("stop {}", spec.id()));
        Recorder::pass(&self.stop_gate);
        self.links.lock().unwrap().remove(spec.id());
    }

    fn stop_processes(&self, id: &str, _path: DataPath) {
        self.call(format!("stop processes {id}"));
    }

    fn intact(&self, record: &Record, _hubs: &mut HubAnswers) -> bool {
        !self.broken.lock().unwrap().contains(record.spec.id())
    }

    fn guard(&self, spec: &EndpointSpec) -> Result<()> {
        self.call(format!("guard {}", spec.id()));
        Ok(())
    }

    fn remove_link(&self, id: &str) {
        self.call(format!("remove link {id}"));
        self.links.lock().unwrap().remove(id);
    }

    fn link_exists(&self, id: &str) -> bool {
        self.links.lock().unwrap().contains(id)
    }

    fn log_tail(&self, _record: &Record) -> String {
        String::new()
    }

    fn shortcut_counters(&self) -> BTreeMap<String, ShortcutCounters> {
        BTreeMap::new()
    }
}

/// Lends the table the recorder: the table owns its builder, the test looks on.
struct Shared(Arc<Recorder>);

impl DataPathBuilder for Shared {
    fn container(&self, pid: i32) -> Result<ProcId> {
        self.0.container(pid)
    }
    fn start(&self, spec: &EndpointSpec) -> Result<DataPath> {
        self.0.start(spec)
    }
    fn stop(&self, spec: &EndpointSpec, path: DataPath) {
        self.0.stop(spec, path)
    }
    fn stop_processes(&self, id: &str, path: DataPath) {
        self.0.stop_processes(id, path)
    }
    fn intact(&self, record: &Record, hubs: &mut HubAnswers) -> bool {
        self.0.intact(record, hubs)
    }
    fn guard(&self, spec: &EndpointSpec) -> Result<()> {
        self.0.guard(spec)
    }
    fn remove_link(&self, id: &str) {
        self.0.remove_link(id)
    }
    fn link_exists(&self, id: &str) -> bool {
        self.0.link_exists(id)
    }
    fn log_tail(&self, record: &Record) -> String {
        self.0.log_tail(record)
    }
    fn shortcut_counters(&self) -> BTreeMap<String, ShortcutCounters> {
        self.0.shortcut_counters()
    }
}

/// A state directory of its own, removed when the test ends.
struct Fixture {
    dir: PathBuf,
    paths: Arc<Recorder>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env() -> SubnetEnv {
    SubnetEnv {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet: "10.244.3.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 244, 3, 1),
        mtu: 1450,
        ipmasq: false,
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "hpk-table-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Fixture {
            dir,
            paths: Arc::default(),
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.dir).unwrap()
    }

    fn ipam(&self) -> Ipam {
        let env = env();
        Ipam::open(&self.dir, env.subnet, env.gateway).unwrap()
    }

    fn table(&self) -> Arc<Endpoints> {
        let settings = Settings {
            env: env(),
            bridge: "hpk-bridge".into(),
            container_tap: "eth0".into(),
            net_daemon: Path::new("/nonexistent").into(),
            endpoint: EndpointKind::Veth,
            tap_hub: false,
            hub_shortcut: false,
            busy_poll_us: 0,
            antispoof: false,
        };
        let paths = Box::new(Shared(self.paths.clone()));
        Endpoints::with_builder(settings, self.ipam(), self.store(), paths)
    }
}

/// This test's own process: a container that runs.
fn alive() -> ProcId {
    ProcId::of(std::process::id() as i32).unwrap()
}

/// A process that has gone: init's PID with another start time (a PID reused).
fn gone() -> ProcId {
    let init = ProcId::of(1).unwrap();
    ProcId {
        start: init.start + 1,
        ..init
    }
}

fn request(id: &str) -> AttachRequest {
    serde_json::from_value(serde_json::json!({"id": id, "pid": alive().pid})).unwrap()
}

fn record(id: &str, container: ProcId, address: Ipv4Addr) -> Record {
    let env = env();
    serde_json::from_value(serde_json::json!({
        "spec": {"id": id, "address": address, "prefix_len": env.subnet.prefix_len(),
                 "gateway": env.gateway, "mtu": env.mtu, "tap": "eth0",
                 "bubble_tap": bubble_tap_name(id), "kind": "veth",
                 "pid": container.pid, "pid_start": container.start, "bridge": "hpk-bridge"},
        "data_path": "veth"
    }))
    .unwrap()
}

fn state(table: &Endpoints, id: &str) -> &'static str {
    match table.slots.lock().unwrap().get(id) {
        None => "none",
        Some(Slot::Busy) => "busy",
        Some(Slot::Ready { .. }) => "ready",
        Some(Slot::Leaving { .. }) => "leaving",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_builds_saves_and_is_answered_again_without_a_rebuild() {
    let fx = Fixture::new("attach");
    let table = fx.table();
    let att = table.attach(request("c1")).await.unwrap();
    assert!(env().subnet.contains(&att.address), "{att:?}");
    assert_eq!(state(&table, "c1"), "ready");
    let saved = fx.store().load_all().records;
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].spec.attachment, att);

    // The hook may ask twice for the same container: same answer, nothing built again.
    assert_eq!(table.attach(request("c1")).await.unwrap(), att);
    assert_eq!(fx.paths.calls(), ["start c1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_container_under_a_live_id_is_refused() {
    let fx = Fixture::new("taken");
    let table = fx.table();
    table.attach(request("c1")).await.unwrap();
    // Another process under the same id, while the first one's container runs.
    let mut req = request("c1");
    req.pid = 1;
    let err = table.attach(req).await.unwrap_err().to_string();
    assert!(err.contains("already attached"), "{err}");
    assert_eq!(fx.paths.calls(), ["start c1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_leaves_nothing() {
    let fx = Fixture::new("failed");
    let table = fx.table();
    *fx.paths.fail_start.lock().unwrap() = true;
    let err = table.attach(request("c1")).await.unwrap_err();
    assert!(format!("{err:#}").contains("the build failed"), "{err:#}");
    assert_eq!(state(&table, "c1"), "none");
    assert!(table.ipam().in_use().is_empty(), "the address went back");
    assert!(!fx.store().has("c1"), "no record");

    // The id is free for the next try.
    *fx.paths.fail_start.lock().unwrap() = false;
    table.attach(request("c1")).await.unwrap();
    assert_eq!(state(&table, "c1"), "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detaching_an_unknown_id_succeeds_and_touches_nothing() {
    let fx = Fixture::new("unknown");
    let table = fx.table();
    assert!(!table.detach("nobody", "test").unwrap());
    assert!(fx.paths.calls().is_empty(), "{:?}", fx.paths.calls());
    assert!(table.detach("../x", "test").is_err(), "ids are checked");
}

/// An id known only by an unreadable record goes with its container's detach: its link,
/// its address and the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detaching_an_unreadable_record_removes_what_it_left() {
    let fx = Fixture::new("leftover");
    let table = fx.table();
    table.ipam().allocate("c9", None).unwrap();
    std::fs::write(fx.dir.join("endpoints/c9.json"), b"{garbled").unwrap();
    assert!(!table.detach("c9", "test").unwrap());
    assert_eq!(fx.paths.calls(), ["remove link c9"]);
    assert!(!fx.store().has("c9"));
    assert!(table.ipam().in_use().is_empty());
}

/// A detach takes the endpoint out at once and tears it down in the background; an
/// attach of the same id meanwhile waits for the teardown, then builds anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_while_detaching_waits_for_the_teardown() {
    let fx = Fixture::new("race");
    let table = fx.table();
    table.attach(request("c1")).await.unwrap();
    let teardown = Recorder::hold(&fx.paths.stop_gate);
    assert!(table.detach("c1", "test").unwrap());
    assert_eq!(state(&table, "c1"), "leaving");
    // A second detach finds it leaving: nothing more to do.
    assert!(!table.detach("c1", "test").unwrap());

    let again = tokio::spawn({
        let table = table.clone();
        async move { table.attach(request("c1")).await }
    });
    wait_until("the teardown to start", DEADLINE, || {
        fx.paths.calls().len() == 2
    });
    assert_eq!(fx.paths.calls(), ["start c1", "stop c1"]);
    assert!(!again.is_finished(), "the attach waits for the teardown");
    teardown.send(()).unwrap();
    again.await.unwrap().unwrap();
    assert_eq!(fx.paths.calls(), ["start c1", "stop c1", "start c1"]);
    assert_eq!(state(&table, "c1"), "ready");
    assert_eq!(fx.store().load_all().records.len(), 1);
}

/// While an attach builds, a detach and a second attach of that id are refused with a
/// reason; the first attach completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_slot_refuses_detach_and_attach() {
    let fx = Fixture::new("busy");
    let table = fx.table();
    let build = Recorder::hold(&fx.paths.start_gate);
    let first = tokio::spawn({
        let table = table.clone();
        async move { table.attach(request("c1")).await }
    });
    wait_until("the attach to be building", DEADLINE, || {
        !fx.paths.calls().is_empty()
    });
    assert_eq!(state(&table, "c1"), "busy");
    let err = table.detach("c1", "test").unwrap_err().to_string();
    assert!(err.contains("being attached"), "{err}");
    let err = table.attach(request("c1")).await.unwrap_err().to_string();
    assert!(err.contains("being attached"), "{err}");
    build.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(state(&table, "c1"), "ready");
    assert_eq!(fx.paths.calls(), ["start c1"]);
}

/// A container that died without a poststop leaves its endpoint for a grace period; its
/// id attached again replaces it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_whose_container_died_is_attached_again() {
    let fx = Fixture::new("reuse");
    let table = fx.table();
    let address = Ipv4Addr::new(10, 244, 3, 7);
    table.ipam().allocate("c1", Some(address)).unwrap();
    table.install(record("c1", gone(), address));
    table.attach(request("c1")).await.unwrap();
    assert_eq!(fx.paths.calls(), ["stop c1", "start c1"]);
    assert_eq!(state(&table, "c1"), "ready");
    let records = table.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].spec.pid_start, alive().start);
}

/// After a restart: a live container's endpoint is adopted (guarded again), a dead one's
/// torn down, a broken one rebuilt; an unreadable record keeps its address while its link
/// is there; an address nobody holds is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_keeps_rebuilds_and_frees() {
    let fx = Fixture::new("adopt");
    let (store, ipam) = (fx.store(), fx.ipam());
    let a = |n| Ipv4Addr::new(10, 244, 3, n);
    for (id, container, n) in [
        ("live", alive(), 2),
        ("dead", gone(), 3),
        ("broken", alive(), 4),
    ] {
        ipam.allocate(id, Some(a(n))).unwrap();
        store.save(&record(id, container, a(n))).unwrap();
    }
    fx.paths.broken.lock().unwrap().insert("broken".into());
    ipam.allocate("unreadable", Some(a(5))).unwrap();
    std::fs::write(fx.dir.join("endpoints/unreadable.json"), b"{").unwrap();
    fx.paths.links.lock().unwrap().insert("unreadable".into());
    ipam.allocate("lost", Some(a(6))).unwrap();
    std::fs::write(fx.dir.join("endpoints/lost.json"), b"{").unwrap();
    ipam.allocate("nobody", Some(a(8))).unwrap();

    let table = fx.table();
    table.adopt().await.unwrap();

    assert_eq!(state(&table, "live"), "ready");
    assert_eq!(state(&table, "broken"), "ready");
    assert_eq!(state(&table, "dead"), "none");
    let mut calls = fx.paths.calls();
    calls.sort();
    assert_eq!(
        calls,
        ["guard live", "start broken", "stop broken", "stop dead"]
    );
    let mut in_use: Vec<_> = table.ipam().in_use().into_iter().map(|(_, o)| o).collect();
    in_use.sort();
    assert_eq!(in_use, ["broken", "live", "unreadable"]);
    assert!(!store.has("dead") && !store.has("lost"));
    assert!(store.has("unreadable"), "kept while its link is there");
}
