//! flannel's subnet registry in etcd (as `pkg/subnet/etcd/registry.go`): the client, the
//! key prefix and our lease value. It only talks to etcd; what to lease, and when, is the
//! lease manager's business.

use std::time::Duration;

use anyhow::{anyhow, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::lease;
use super::lease_manager::LeaseStore;
use super::netconfig::NetworkConfig;
use super::AgentConfig;

/// One key under `subnets/` as listed.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The etcd lease the key lives by (0: none).
    pub lease: i64,
}

pub(crate) struct Registry {
    client: Client,
    prefix: String,
    ttl: Duration,
    /// Our lease's value (PublicIP, backend data), once the vxlan device exists.
    value: String,
}

/// A client of the cluster's etcd, answering (one try).
pub(crate) async fn connect(cfg: &AgentConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    if let Some(ca) = &cfg.ca_file {
        let identity = cfg.cert_file.as_deref().zip(cfg.key_file.as_deref());
        opts = opts.with_tls(super::tls::options(ca, identity)?);
    }
    let mut client = Client::connect(&cfg.endpoints, Some(opts)).await?;
    // The channel connects lazily: ask something to know that etcd answers.
    client.get(lease::config_key(&cfg.prefix), None).await?;
    Ok(client)
}

impl Registry {
    /// Connects, retrying with backoff and saying which endpoints it tries.
    pub async fn connect(cfg: &AgentConfig) -> Registry {
        let mut backoff = Duration::from_millis(250);
        let client = loop {
            match connect(cfg).await {
                Ok(c) => break c,
                Err(e) => {
                    warn!(endpoints = ?cfg.endpoints, error = %e, retry_in = ?backoff, "etcd is not reachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        info!(endpoints = ?cfg.endpoints, "connected to etcd");
        Registry {
            client,
            prefix: cfg.prefix.clone(),
            ttl: cfg.lease_ttl,
            value: String::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn set_own_value(&mut self, value: String) {
        self.value = value;
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs().max(1) as i64
    }

    /// Reads `<prefix>/config`, waiting while it is missing; an invalid one is an error.
    pub async fn network_config(&mut self) -> Result<NetworkConfig> {
        let key = lease::config_key(&self.prefix);
        let mut announced = false;
        loop {
            match self.client.get(key.as_str(), None).await {
                Ok(resp) => {
                    if let Some(kv) = resp.kvs().first() {
                        return NetworkConfig::parse(&String::from_utf8_lossy(kv.value()))
                            .map_err(|e| anyhow!("etcd key {key} is invalid: {e:#}"));
                    }
                    if !announced {
                        info!(key, "waiting for the network config in etcd");
                        announced = true;
                    }
                }
                Err(e) => warn!(key, error = %e, "cannot read the network config; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Every key under `subnets/`, and the revision it was listed at.
    pub async fn list(&mut self) -> Result<(Vec<Entry>, i64)> {
        let prefix = lease::subnets_prefix(&self.prefix);
        let resp = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                lease: kv.lease(),
            })
            .collect();
        Ok((entries, revision))
    }

    /// Puts our value on `subnet`'s key with a fresh lease, if `condition` holds.
    async fn put_if(
        &mut self,
        subnet: Ipv4Net,
        condition: fn(&str, &str) -> Compare,
    ) -> Result<bool> {
        let key = lease::subnet_key(&self.prefix, subnet);
        let grant = self.client.lease_grant(self.ttl_secs(), None).await?;
        let put = TxnOp::put(
            key.as_str(),
            self.value.as_str(),
            Some(PutOptions::new().with_lease(grant.id())),
        );
        let txn = Txn::new()
            .when(vec![condition(&key, &self.value)])
            .and_then(vec![put]);
        Ok(self.client.txn(txn).await?.succeeded())
    }

    /// Leases `subnet` with our value only if nobody holds it; whether we got it.
    pub async fn create(&mut self, subnet: Ipv4Net) -> Result<bool> {
        self.put_if(subnet, |key, _| Compare::version(key, CompareOp::Equal, 0))
            .await
    }

    /// Puts our value on `subnet` with a fresh lease, unconditionally: only for taking
    /// back this node's own lease (found by its PublicIP) at start, as flanneld does.
    pub async fn put(&mut self, subnet: Ipv4Net) -> Result<()> {
        let grant = self.client.lease_grant(self.ttl_secs(), None).await?;
        self.client
            .put(
                lease::subnet_key(&self.prefix, subnet),
                self.value.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            )
            .await?;
        Ok(())
    }

    /// Renews `subnet` with a fresh lease, but only while the key still holds our value;
    /// whether it did (false: expired, or someone else's now).
    pub async fn renew(&mut self, subnet: Ipv4Net) -> Result<bool> {
        self.put_if(subnet, |key, ours| {
            Compare::value(key, CompareOp::Equal, ours)
        })
        .await
    }

    /// When the etcd lease `lease` runs out, in seconds since the Unix epoch; `None` for
    /// a key without a lease or one that is gone.
    pub async fn expiry(&mut self, lease: i64) -> Option<u64> {
        if lease == 0 {
            return None;
        }
        let ttl = self
            .client
            .lease_time_to_live(lease, None)
            .await
            .ok()?
            .ttl();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        (ttl > 0).then(|| now + ttl as u64)
    }

    /// Watches `subnets/` from the revision after `revision`.
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream> {
        let prefix = lease::subnets_prefix(&self.prefix);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        Ok(self.client.watch(prefix.as_str(), Some(opts)).await?)
    }
}

impl LeaseStore for Registry {
    fn prefix(&self) -> &str {
        Registry::prefix(self)
    }

    async fn list(&mut self) -> Result<(Vec<Entry>, i64)> {
        Registry::list(self).await
    }

    async fn create(&mut self, subnet: Ipv4Net) -> Result<bool> {
        Registry::create(self, subnet).await
    }

    async fn put(&mut self, subnet: Ipv4Net) -> Result<()> {
        Registry::put(self, subnet).await
    }

    async fn renew(&mut self, subnet: Ipv4Net) -> Result<bool> {
        Registry::renew(self, subnet).await
    }

    async fn expiry(&mut self, lease: i64) -> Option<u64> {
        Registry::expiry(self, lease).await
    }
}
