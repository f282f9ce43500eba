//! K3s on the controller, when a `k3s` binary is installed: the original's server flags
//! (flannel and network policy off: the overlay is ours; etcd as datastore), plus what
//! makes it usable from other bubbles: the API advertised on the host's address, and a
//! kubeconfig naming that address, written to the shared directory (mode 0600).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::pki::ClientFiles;

pub struct K3sPlan {
    pub host_ip: Ipv4Addr,
    pub port: u16,
    pub etcd_url: String,
    /// The cluster's etcd client certificate (None: plain HTTP).
    pub etcd_tls: Option<ClientFiles>,
    pub data_dir: PathBuf,
    /// Where K3s writes its kubeconfig (node-local, 127.0.0.1).
    pub local_kubeconfig: PathBuf,
}

pub fn args(p: &K3sPlan) -> Vec<String> {
    let mut args = vec![
        "server".into(),
        "--flannel-backend=none".into(),
        "--disable-network-policy".into(),
        "--disable=traefik,servicelb,metrics-server".into(),
        format!("--datastore-endpoint={}", p.etcd_url),
        format!("--data-dir={}", p.data_dir.display()),
        format!("--https-listen-port={}", p.port),
        format!("--advertise-address={}", p.host_ip),
        format!("--node-ip={}", p.host_ip),
        format!("--tls-san={}", p.host_ip),
        format!("--write-kubeconfig={}", p.local_kubeconfig.display()),
        "--write-kubeconfig-mode=0600".into(),
    ];
    if let Some(t) = &p.etcd_tls {
        args.extend([
            format!("--datastore-cafile={}", t.ca.display()),
            format!("--datastore-certfile={}", t.cert.display()),
            format!("--datastore-keyfile={}", t.key.display()),
        ]);
    }
    args
}

/// The kubeconfig K3s wrote, with its server moved from loopback to the host's address.
pub fn shared_kubeconfig(local: &str, host_ip: Ipv4Addr, port: u16) -> String {
    local
        .lines()
        .map(|line| match line.trim_start().strip_prefix("server: ") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}server: https://{host_ip}:{port}")
            }
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Copies K3s's kubeconfig to `shared` once it exists; returns whether it did.
pub fn publish_kubeconfig(p: &K3sPlan, shared: &Path) -> Result<bool> {
    let Ok(local) = std::fs::read_to_string(&p.local_kubeconfig) else {
        return Ok(false);
    };
    let text = shared_kubeconfig(&local, p.host_ip, p.port);
    hpk_netd::sys::fs::write_atomically(shared, text.as_bytes(), 0o600, true)
        .with_context(|| format!("cannot write {}", shared.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> K3sPlan {
        K3sPlan {
            host_ip: "192.0.2.11".parse().unwrap(),
            port: 6443,
            etcd_url: "https://127.0.0.1:2379".into(),
            etcd_tls: Some(ClientFiles::in_dir(Path::new("/shared/pki"))),
            data_dir: "/run/hpktainer/k3s".into(),
            local_kubeconfig: "/run/hpktainer/k3s/kubeconfig.yaml".into(),
        }
    }

    #[test]
    fn server_command_line() {
        assert_eq!(
            args(&plan()).join(" "),
            "server --flannel-backend=none --disable-network-policy \
             --disable=traefik,servicelb,metrics-server \
             --datastore-endpoint=https://127.0.0.1:2379 --data-dir=/run/hpktainer/k3s \
             --https-listen-port=6443 --advertise-address=192.0.2.11 --node-ip=192.0.2.11 \
             --tls-san=192.0.2.11 --write-kubeconfig=/run/hpktainer/k3s/kubeconfig.yaml \
             --write-kubeconfig-mode=0600 --datastore-cafile=/shared/pki/etcd-ca.pem \
             --datastore-certfile=/shared/pki/etcd-client.pem \
             --datastore-keyfile=/shared/pki/etcd-client-key.pem"
        );
    }

    #[test]
    fn kubeconfig_points_at_the_host() {
        let local = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://127.0.0.1:6443\n  name: default\n";
        let shared = shared_kubeconfig(local, "192.0.2.11".parse().unwrap(), 6443);
        assert_eq!(
            shared,
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://192.0.2.11:6443\n  name: default\n"
        );
    }
}
