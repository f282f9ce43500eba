//! Container names across the cluster: every bubble's hpk-netd keeps the cluster's names
//! in memory (watched from etcd, beside flannel's leases) and answers DNS for its
//! containers on the bridge's gateway; other names go to the bubble's own resolvers.

pub mod answer;
pub(crate) mod directory;
mod server;
mod store;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpk_hook::proto::{NameStatus, NamesStatus};
use tracing::{info, warn};

use self::answer::{Verdict, Zone};
use self::directory::{Directory, Entry};
use self::server::Counters;
use self::store::{Change, Claim, EtcdNames};
use self::upstream::Upstream;
pub use self::upstream::{parse_server, resolvers};
use crate::sys::fs::write_atomically;

/// What the names service is started with.
pub struct Settings {
    /// The cluster domain (`hpk.internal`).
    pub domain: String,
    /// The etcd lease of this bubble's names: how long they outlive a dead bubble.
    pub ttl: Duration,
    /// Resolvers for every other name.
    pub upstream: Vec<SocketAddr>,
    /// Where the server listens (the bridge's gateway, port 53).
    pub listen: SocketAddr,
    /// Where this bubble's own names are remembered across restarts.
    pub state_dir: PathBuf,
    /// Queries a second one client may send.
    pub client_qps: u32,
}

/// The cluster's etcd, when the subnet comes from it.
pub struct Cluster {
    pub client: etcd_client::Client,
    /// flannel's key prefix (`/coreos.com/network`).
    pub prefix: String,
    /// This bubble's public address: names say where they run.
    pub public_ip: Ipv4Addr,
}

pub struct Names {
    zone: Zone,
    directory: RwLock<Directory>,
    store: Option<EtcdNames>,
    bubble: String,
    listen: SocketAddr,
    upstream: Upstream,
    counters: Counters,
    client_qps: u32,
    /// This bubble's names (name -> entry), also one file each under `own_dir`.
    own: Mutex<HashMap<String, Entry>>,
    own_dir: PathBuf,
}

impl Names {
    /// Loads this bubble's names, registers them, fills the directory, then serves DNS.
    pub async fn start(
        settings: Settings,
        cluster: Option<Cluster>,
        live: &HashSet<String>,
    ) -> Result<Arc<Names>> {
        let zone = Zone::new(&settings.domain).map_err(anyhow::Error::msg)?;
        let own_dir = settings.state_dir.join("names");
        crate::sys::fs::private_dir(&own_dir).context("names state directory")?;
        let bubble = cluster
            .as_ref()
            .map_or_else(|| "local".to_string(), |c| c.public_ip.to_string());
        let store = cluster.map(|c| EtcdNames::new(c.client, &c.prefix, settings.ttl));
        let names = Arc::new(Names {
            zone,
            directory: RwLock::default(),
            store,
            bubble,
            listen: settings.listen,
            upstream: Upstream::new(settings.upstream),
            counters: Counters::default(),
            client_qps: settings.client_qps,
            own: Mutex::default(),
            own_dir,
        });
        names.load_own(live)?;
        if let Some(store) = &names.store {
            store.grant().await?;
            names.register_own().await?;
            let (all, revision) = store.list().await?;
            names.directory.write().unwrap().replace_all(all);
            tokio::spawn(names.clone().watch(revision));
            tokio::spawn(names.clone().keep_alive());
        } else {
            let own = names.own.lock().unwrap().clone();
            names.directory.write().unwrap().replace_all(own);
        }
        server::serve(names.clone(), names.listen).await?;
        info!(
            listen = %names.listen,
            domain = %names.zone.domain,
            scope = names.scope(),
            upstream = ?names.upstream.servers(),
            "serving container names"
        );
        Ok(names)
    }

    fn scope(&self) -> &'static str {
        if self.store.is_some() {
            "cluster"
        } else {
            "bubble"
        }
    }

    /// The DNS server's verdict on one query.
    pub fn answer(&self, query: &[u8]) -> Verdict {
        let verdict = answer::answer(query, &self.directory.read().unwrap(), &self.zone);
        match &verdict {
            Verdict::Reply(_) => self.counters.answered.fetch_add(1, Ordering::Relaxed),
            Verdict::Ignore => self.counters.ignored.fetch_add(1, Ordering::Relaxed),
            Verdict::Forward(_) => 0,
        };
        verdict
    }

    /// Fails when another container holds `name` (from memory: before anything is built).
    pub fn check(&self, name: &str, container: &str) -> Result<()> {
        match self.directory.read().unwrap().get(name) {
            Some(holder) if holder.container != container => bail!(taken(name, holder)),
            _ => Ok(()),
        }
    }

    /// Gives `name` to `container` at `address`, unless another container holds it
    /// anywhere in the cluster.
    pub async fn claim(&self, name: &str, container: &str, address: Ipv4Addr) -> Result<()> {
        hpk_hook::names::validate(name).map_err(anyhow::Error::msg)?;
        let entry = Entry {
            address,
            container: container.to_string(),
            bubble: self.bubble.clone(),
        };
        // From here to "name learned" in another bubble: what propagation takes.
        info!(name, container, %address, "claiming name");
        match &self.store {
            Some(store) => {
                let claim = tokio::time::timeout(Duration::from_secs(5), store.claim(name, &entry))
                    .await
                    .map_err(|_| anyhow::anyhow!("etcd did not answer within 5 s"))
                    .and_then(|r| r)
                    .with_context(|| {
                        format!("cannot register name {name} in the cluster's etcd; retry when it is back")
                    })?;
                if let Claim::Taken(holder) = claim {
                    bail!(taken(name, &holder));
                }
            }
            None => self.check(name, container)?,
        }
        self.remember(name, &entry)?;
        info!(name, container, %address, "name registered");
        self.directory.write().unwrap().insert(name, entry);
        Ok(())
    }

    /// Drops the names of `container` here and in the cluster.
    pub async fn release_container(&self, container: &str) {
        let mine: Vec<String> = self
            .own
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.container == container)
            .map(|(n, _)| n.clone())
            .collect();
        for name in mine {
            if let Some(store) = &self.store {
                if let Err(e) = store.release(&name, container).await {
                    warn!(name, error = %e, "cannot remove the name from etcd; it expires with the bubble's lease");
                }
            }
            self.forget(&name);
            let mut dir = self.directory.write().unwrap();
            if dir.get(&name).is_some_and(|e| e.container == container) {
                dir.remove(&name);
            }
            info!(name, container, "name released");
        }
    }

    pub fn status(&self) -> NamesStatus {
        let dir = self.directory.read().unwrap();
        let mut records: Vec<NameStatus> = dir
            .iter()
            .map(|(name, e)| NameStatus {
                name: name.clone(),
                address: e.address,
                container: e.container.clone(),
                bubble: e.bubble.clone(),
            })
            .collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        let server = match self.listen.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        NamesStatus {
            server,
            domain: self
                .zone
                .domain
                .to_ascii()
                .trim_end_matches('.')
                .to_string(),
            scope: self.scope().to_string(),
            records,
            counters: self.counters.snapshot(),
        }
    }

    fn own_file(&self, name: &str) -> PathBuf {
        self.own_dir.join(name)
    }

    fn remember(&self, name: &str, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec(entry)?;
        write_atomically(&self.own_file(name), &bytes, 0o600, false)?;
        self.own
            .lock()
            .unwrap()
            .insert(name.to_string(), entry.clone());
        Ok(())
    }

    fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.own_file(name));
        self.own.lock().unwrap().remove(name);
    }

    /// This bubble's names from the state directory, keeping those whose container is
    /// still attached (adopted after a restart).
    fn load_own(&self, live: &HashSet<String>) -> Result<()> {
        for item in std::fs::read_dir(&self.own_dir)
            .with_context(|| format!("cannot read {}", self.own_dir.display()))?
        {
            let path = item?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            let entry = read_entry(&path);
            match entry {
                Some(entry)
                    if live.contains(&entry.container)
                        && hpk_hook::names::validate(&name).is_ok() =>
                {
                    self.own.lock().unwrap().insert(name, entry);
                }
                // A stale record: a container gone while we were away, or a temp file.
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// Puts this bubble's names (back) on the current lease.
    async fn register_own(&self) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let own = self.own.lock().unwrap().clone();
        for (name, entry) in own {
            match store.claim(&name, &entry).await? {
                Claim::Ours => {}
                Claim::Taken(holder) => {
                    warn!(name, holder = ?holder, "a name of this bubble was taken meanwhile; dropping it here");
                    self.forget(&name);
                }
            }
        }
        Ok(())
    }

    /// Follows the names in etcd into memory; re-lists after any break.
    async fn watch(self: Arc<Self>, mut revision: i64) {
        let store = self.store.as_ref().expect("watch runs with etcd");
        loop {
            if let Err(e) = self.follow(store, revision).await {
                warn!(
                    error = format!("{e:#}"),
                    "lost the names watch; listing again"
                );
            }
            loop {
                match store.list().await {
                    Ok((all, rev)) => {
                        self.directory.write().unwrap().replace_all(all);
                        revision = rev;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot list the names; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    async fn follow(&self, store: &EtcdNames, revision: i64) -> Result<()> {
        let mut stream = store.watch(revision).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() > 0 {
                bail!("watch canceled or compacted");
            }
            let mut dir = self.directory.write().unwrap();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                match store.change(event.event_type(), kv.key(), kv.value()) {
                    Some(Change::Put(name, entry)) => {
                        if entry.bubble != self.bubble {
                            info!(name, bubble = entry.bubble, address = %entry.address, "name learned");
                        }
                        dir.insert(&name, entry)
                    }
                    Some(Change::Delete(name)) => {
                        dir.remove(&name);
                    }
                    None => {}
                }
            }
        }
        bail!("watch ended")
    }

    /// Keeps the names' lease alive; when it is lost (etcd away longer than the TTL), a
    /// new one is granted and this bubble's names are put back.
    async fn keep_alive(self: Arc<Self>) {
        let store = self.store.as_ref().expect("keep_alive runs with etcd");
        loop {
            if let Err(e) = store.keep_alive().await {
                warn!(
                    error = format!("{e:#}"),
                    "names' lease lost; registering them again"
                );
            }
            loop {
                let again = async {
                    store.grant().await?;
                    self.register_own().await
                };
                match again.await {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(
                            error = format!("{e:#}"),
                            "cannot register the names; retrying"
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Releases the names of containers no longer attached (gone without a poststop).
    pub async fn release_gone(&self, alive: &HashSet<String>) {
        let gone: HashSet<String> = self
            .own
            .lock()
            .unwrap()
            .values()
            .filter(|e| !alive.contains(&e.container))
            .map(|e| e.container.clone())
            .collect();
        for container in gone {
            self.release_container(&container).await;
        }
    }
}

fn read_entry(path: &Path) -> Option<Entry> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The conflict's message: where the name runs, and what to do.
fn taken(name: &str, holder: &Entry) -> String {
    hpk_hook::names::taken(name, &holder.container, holder.address, &holder.bubble)
}
