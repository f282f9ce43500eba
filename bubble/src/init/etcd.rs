//! The controller's etcd: data in the bubble's state dir, clients on the forwarded port
//! (TLS with this cluster's client certificates unless plain HTTP was asked for), peers
//! on the bubble's own loopback; then the flannel network config, written once.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::pki::{ClientFiles, ServerFiles};

/// etcd's command line for a single-member cluster.
pub fn command(
    etcd: &Path,
    data_dir: &Path,
    host_ip: Ipv4Addr,
    port: u16,
    tls: Option<(&ClientFiles, &ServerFiles)>,
) -> Command {
    let peer_port = if port == 2380 { 2381 } else { 2380 };
    let peer = format!("http://127.0.0.1:{peer_port}");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut cmd = Command::new(etcd);
    cmd.arg("--name")
        .arg("hpk")
        .arg("--data-dir")
        .arg(data_dir)
        .arg(format!("--listen-client-urls={scheme}://0.0.0.0:{port}"))
        .arg(format!(
            "--advertise-client-urls={scheme}://{host_ip}:{port}"
        ))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=hpk={peer}"));
    if let Some((client, server)) = tls {
        cmd.arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&client.ca)
            .arg("--cert-file")
            .arg(&server.cert)
            .arg("--key-file")
            .arg(&server.key);
    }
    cmd
}

/// One attempt: etcd answers, then the network config is written unless one exists.
/// Returns whether it was written now.
pub fn configure(url: &str, tls: Option<&ClientFiles>, key: &str, config: &str) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        if let Some(t) = tls {
            options = options.with_tls(hpk_netd::subnet::etcd::tls::options(
                &t.ca,
                Some((&t.cert, &t.key)),
            )?);
        }
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
