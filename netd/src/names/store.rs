//! Where the cluster's names live: etcd, beside flannel's subnet leases (under
//! `<prefix>/hpk-names/`, which flanneld never reads), each key on an etcd lease of this
//! bubble's hpk-netd, kept alive while it runs: a bubble that dies takes its names along
//! when the lease runs out. Without etcd (flanneld's subnet.env) a bubble's names are its
//! own, kept in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};

use super::directory::Entry;

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The name is the container's now (or was already).
    Ours,
    /// Another container holds it.
    Taken(Entry),
}

/// A change seen by the watch.
pub enum Change {
    Put(String, Entry),
    Delete(String),
}

/// The names' keys and their lease in etcd.
pub struct EtcdNames {
    client: Client,
    /// `<prefix>/hpk-names/`.
    prefix: String,
    ttl: Duration,
    /// The etcd lease every name of this bubble lives by (0: none yet).
    lease: Mutex<i64>,
}

/// The key prefix of the names, beside flannel's `subnets/`.
pub fn names_prefix(flannel_prefix: &str) -> String {
    format!("{}/hpk-names/", flannel_prefix.trim_end_matches('/'))
}

impl EtcdNames {
    pub fn new(client: Client, flannel_prefix: &str, ttl: Duration) -> EtcdNames {
        EtcdNames {
            client,
            prefix: names_prefix(flannel_prefix),
            ttl,
            lease: Mutex::new(0),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn lease(&self) -> i64 {
        *self.lease.lock().unwrap()
    }

    /// A fresh lease for this bubble's names; the old one (if any) is dropped by etcd.
    pub async fn grant(&self) -> Result<i64> {
        let ttl = self.ttl.as_secs().max(1) as i64;
        let id = self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .context("cannot get an etcd lease for the names")?
            .id();
        *self.lease.lock().unwrap() = id;
        Ok(id)
    }

    /// Keeps the lease alive until it is lost (etcd says it is gone, or the stream
    /// breaks); returns then, so that the caller grants a new one and puts the names back.
    pub async fn keep_alive(&self) -> Result<()> {
        let id = self.lease();
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(id)
            .await
            .context("lease keep-alive")?;
        let every = (self.ttl / 3).max(Duration::from_millis(500));
        loop {
            keeper.keep_alive().await.context("lease keep-alive")?;
            match stream.message().await.context("lease keep-alive")? {
                Some(resp) if resp.ttl() > 0 => {}
                _ => return Err(anyhow!("the names' lease {id:x} ran out")),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Takes `name` for `entry`'s container unless another container holds it.
    pub async fn claim(&self, name: &str, entry: &Entry) -> Result<Claim> {
        let key = self.key(name);
        let value = serde_json::to_string(entry)?;
        let put = TxnOp::put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(self.lease())),
        );
        let txn = Txn::new()
            .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then(vec![put.clone()])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let resp = self.client.clone().txn(txn).await?;
        if resp.succeeded() {
            return Ok(Claim::Ours);
        }
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let holder: Option<Entry> = holder.and_then(|v| serde_json::from_slice(&v).ok());
        match holder {
            // Our own container again (a restart of hpk-netd): put it on our lease.
            Some(h) if h.container == entry.container && h.bubble == entry.bubble => {
                self.client
                    .clone()
                    .put(key, value, Some(PutOptions::new().with_lease(self.lease())))
                    .await?;
                Ok(Claim::Ours)
            }
            Some(h) => Ok(Claim::Taken(h)),
            // Gone between the compare and the read, or unreadable: try once more.
            None => self.claim_over_garbage(name, entry).await,
        }
    }

    /// Claims a name whose key vanished or holds no record of ours.
    async fn claim_over_garbage(&self, name: &str, entry: &Entry) -> Result<Claim> {
        let key = self.key(name);
        let current = self.client.clone().get(key.as_str(), None).await?;
        if let Some(kv) = current.kvs().first() {
            if let Ok(h) = serde_json::from_slice::<Entry>(kv.value()) {
                return Ok(Claim::Taken(h));
            }
        }
        let revision = current.kvs().first().map_or(0, |kv| kv.mod_revision());
        let value = serde_json::to_string(entry)?;
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(self.lease())),
            )]);
        if self.client.clone().txn(txn).await?.succeeded() {
            Ok(Claim::Ours)
        } else {
            Err(anyhow!(
                "name {name} changed hands while it was claimed; retry"
            ))
        }
    }

    /// Removes `name` if `container` still holds it.
    pub async fn release(&self, name: &str, container: &str) -> Result<()> {
        let key = self.key(name);
        let current = self.client.clone().get(key.as_str(), None).await?;
        let Some(kv) = current.kvs().first() else {
            return Ok(());
        };
        let holder: Option<Entry> = serde_json::from_slice(kv.value()).ok();
        if holder.is_some_and(|h| h.container == container) {
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then(vec![TxnOp::delete(key.as_str(), None)]);
            self.client.clone().txn(txn).await?;
        }
        Ok(())
    }

    /// Every name, and the revision listed at.
    pub async fn list(&self) -> Result<(HashMap<String, Entry>, i64)> {
        let resp = self
            .client
            .clone()
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let names = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = self.name_of(kv.key())?;
                let entry = serde_json::from_slice(kv.value()).ok()?;
                Some((name, entry))
            })
            .collect();
        Ok((names, revision))
    }

    /// Watches the names from the revision after `revision`.
    pub async fn watch(&self, revision: i64) -> Result<WatchStream> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        Ok(self
            .client
            .clone()
            .watch(self.prefix.as_str(), Some(opts))
            .await?)
    }

    /// What a watch event means for the directory.
    pub fn change(&self, kind: EventType, key: &[u8], value: &[u8]) -> Option<Change> {
        let name = self.name_of(key)?;
        match kind {
            EventType::Put => serde_json::from_slice(value)
                .ok()
                .map(|entry| Change::Put(name, entry)),
            EventType::Delete => Some(Change::Delete(name)),
        }
    }

    fn name_of(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let name = key.strip_prefix(&self.prefix)?;
        hpk_hook::names::validate(name)
            .is_ok()
            .then(|| name.to_ascii_lowercase())
    }
}
