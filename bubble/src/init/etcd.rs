//! The controller's etcd: data in the bubble's state dir, clients on the forwarded port,
//! peers on the bubble's own loopback; then the flannel network config, written once.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// etcd's command line for a single-member cluster.
pub fn command(etcd: &Path, data_dir: &Path, host_ip: Ipv4Addr, port: u16) -> Command {
    let peer_port = if port == 2380 { 2381 } else { 2380 };
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(etcd);
    cmd.arg("--name")
        .arg("hpk")
        .arg("--data-dir")
        .arg(data_dir)
        .arg(format!("--listen-client-urls=http://0.0.0.0:{port}"))
        .arg(format!("--advertise-client-urls=http://{host_ip}:{port}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=hpk={peer}"));
    cmd
}

/// One attempt: etcd answers, then the network config is written unless one exists.
/// Returns whether it was written now.
pub fn configure(url: &str, key: &str, config: &str) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        let mut client = Client::connect([url], Some(options))
            .await
            .with_context(|| format!("etcd at {url}"))?;
        client.status().await.context("etcd status")?;
        // Written once: a restarted controller keeps the config the cluster runs with.
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, config, None)]);
        let resp = client
            .txn(txn)
            .await
            .context("writing the network config")?;
        Ok(resp.succeeded())
    })
}
