//! Published ports (`hpktainer run -p`): a listening socket of the host per mapping (the
//! bubble's launcher binds it and hands it in, or hpk-netd binds it where it runs on the
//! host itself), bound before the container starts and closed when it stops; connections
//! and datagrams are forwarded to the container's address, from the client's own address
//! where the bubble allows it.

pub mod handover;
mod tcp;
mod transparent;
mod udp;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hpk_hook::ports::PortMapping;
use hpk_hook::proto::PublishedPort;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::handover::{ListenRequest, Listener};
use crate::sys::fs::write_atomically;

/// One forwarded port: its task ends (and its socket closes) when this is dropped.
struct Forward {
    mapping: PortMapping,
    listening: String,
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What is remembered across restarts: the container's address and its mappings.
#[derive(Serialize, Deserialize)]
struct Saved {
    address: Ipv4Addr,
    mappings: Vec<PortMapping>,
}

pub struct Ports {
    /// The launcher's socket; `None`: bind in hpk-netd's own namespace.
    launcher: Option<PathBuf>,
    /// Containers see their clients' addresses.
    transparent: bool,
    forwards: Mutex<HashMap<String, Vec<Forward>>>,
    state_dir: PathBuf,
}

impl Ports {
    /// Sets up transparency and publishes again the ports of containers still attached
    /// (after a restart).
    pub async fn start(
        launcher: Option<PathBuf>,
        state_dir: &std::path::Path,
        live: &HashSet<String>,
    ) -> Result<Arc<Ports>> {
        let transparent = match tokio::task::spawn_blocking(transparent::enable).await? {
            Ok(()) => true,
            Err(e) => {
                warn!(error = format!("{e:#}"), "published ports: containers will see the gateway's address, not their clients'");
                false
            }
        };
        let state_dir = state_dir.join("ports");
        crate::sys::fs::private_dir(&state_dir).context("ports state directory")?;
        let ports = Arc::new(Ports {
            launcher,
            transparent,
            forwards: Mutex::default(),
            state_dir,
        });
        ports.republish(live).await;
        Ok(ports)
    }

    /// Binds every mapping of `container` and starts forwarding to `address`; all or
    /// nothing.
    pub async fn publish(
        &self,
        container: &str,
        address: Ipv4Addr,
        mappings: &[PortMapping],
    ) -> Result<()> {
        if mappings.is_empty() {
            return Ok(());
        }
        hpk_hook::ports::check_distinct(mappings).map_err(anyhow::Error::msg)?;
        let mut made = Vec::new();
        for m in mappings {
            // On an error, `made` is dropped: the ports bound so far close again.
            made.push(self.forward(*m, address).await?);
        }
        let saved = Saved {
            address,
            mappings: mappings.to_vec(),
        };
        write_atomically(
            &self.state_dir.join(container),
            &serde_json::to_vec(&saved)?,
            0o600,
            false,
        )?;
        for f in &made {
            info!(container, mapping = %f.mapping, listening = f.listening, "port published");
        }
        self.forwards
            .lock()
            .unwrap()
            .insert(container.to_string(), made);
        Ok(())
    }

    /// Closes `container`'s ports.
    pub fn unpublish(&self, container: &str) {
        let gone = self.forwards.lock().unwrap().remove(container);
        let _ = std::fs::remove_file(self.state_dir.join(container));
        if let Some(gone) = gone {
            for f in &gone {
                info!(container, mapping = %f.mapping, "port closed");
            }
        }
    }

    pub fn status(&self) -> Vec<PublishedPort> {
        let forwards = self.forwards.lock().unwrap();
        let mut out: Vec<PublishedPort> = forwards
            .iter()
            .flat_map(|(id, list)| {
                list.iter().map(|f| PublishedPort {
                    container: id.clone(),
                    mapping: f.mapping,
                    listening: f.listening.clone(),
                    client_address_kept: self.transparent,
                    forwarded: f.forwarded.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.container, a.mapping.host_port).cmp(&(&b.container, b.mapping.host_port))
        });
        out
    }

    async fn forward(&self, mapping: PortMapping, address: Ipv4Addr) -> Result<Forward> {
        let req = ListenRequest {
            protocol: mapping.protocol,
            address: mapping.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            port: mapping.host_port,
        };
        let launcher = self.launcher.clone();
        let listener = tokio::task::spawn_blocking(move || match &launcher {
            Some(path) => handover::request(path, &req),
            None => handover::bind(&req),
        })
        .await?
        .with_context(|| format!("cannot publish -p {mapping}"))?;
        let listening = listener.local_addr()?.to_string();
        let target = SocketAddrV4::new(address, mapping.container_port);
        let forwarded = Arc::new(AtomicU64::new(0));
        let (count, transparent) = (forwarded.clone(), self.transparent);
        let task = match listener {
            Listener::Tcp(l) => tokio::spawn(tcp::serve(l, target, transparent, count)),
            Listener::Udp(u) => tokio::spawn(udp::serve(u, target, transparent, count)),
        };
        Ok(Forward {
            mapping,
            listening,
            forwarded,
            task,
        })
    }

    /// Publishes again what containers still attached had (hpk-netd restarted: the old
    /// sockets closed with it); forgets the others.
    async fn republish(&self, live: &HashSet<String>) {
        let Ok(dir) = std::fs::read_dir(&self.state_dir) else {
            return;
        };
        for item in dir.flatten() {
            let path = item.path();
            let id = item.file_name().to_string_lossy().into_owned();
            let saved: Option<Saved> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match saved {
                Some(s) if live.contains(&id) => {
                    if let Err(e) = self.publish(&id, s.address, &s.mappings).await {
                        warn!(
                            container = id,
                            error = format!("{e:#}"),
                            "cannot publish its ports again"
                        );
                    }
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    /// Closes the ports of containers no longer attached (gone without a poststop).
    pub fn unpublish_gone(&self, alive: &HashSet<String>) {
        let gone: Vec<String> = self
            .forwards
            .lock()
            .unwrap()
            .keys()
            .filter(|id| !alive.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.unpublish(&id);
        }
    }
}
