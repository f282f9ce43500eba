//! `hpk-bubble init`: PID 1 of a bubble. Brings the bubble up step by step, tells the
//! launcher on the ready FIFO (`started`, then `ready` or `failed`), then supervises its
//! services (restarting those that exit), reaps orphans, and on SIGTERM stops the services
//! in reverse order. When it exits, the kernel ends everything else in the bubble.

mod etcd;
pub mod k3s;
pub mod mounts;
pub mod netd;
mod services;

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpk_netd::sys::netlink::{LinkChange, Netlink};
use serde::{Deserialize, Serialize};

use crate::child::wait_for;
use crate::cli::{InitArgs, Role, UnderlayKind};
use crate::pki::{ClientFiles, ServerFiles};
use crate::record::SharedDir;
use crate::signals::Signals;
use crate::uplink::TAP;
use services::{Services, Spec};

/// Everything PID 1 needs, decided by the launcher on the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub id: u32,
    pub role: Role,
    pub host_ip: Ipv4Addr,
    /// MTU of the host's link: the overlay's is 50 less.
    pub host_mtu: u32,
    pub underlay: UnderlayKind,
    pub etcd_port: u16,
    pub k3s_port: u16,
    /// flannel's network config (the controller writes it once).
    pub network_config: String,
    /// The etcd hpk-netd's agent uses.
    pub etcd_url: String,
    /// What a client of that etcd presents (None: plain HTTP).
    pub etcd_client_tls: Option<ClientFiles>,
    /// The controller's etcd's certificate (None: plain HTTP).
    pub etcd_server_tls: Option<ServerFiles>,
    pub shared_dir: PathBuf,
    pub state_dir: PathBuf,
    pub ready_fifo: PathBuf,
    pub netd: PathBuf,
    pub net_daemon: PathBuf,
    /// The controller's etcd binary.
    pub etcd: Option<PathBuf>,
    /// K3s, on the controller, when installed.
    pub k3s: Option<PathBuf>,
}

/// What PID 1 tells the launcher, one JSON line each.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Report {
    Started,
    Ready { subnet: String },
    Failed { error: String },
}

/// etcd key of flannel's network config, under the prefix hpk-netd will use.
fn config_key() -> String {
    let prefix = std::env::var("HPK_NETD_ETCD_PREFIX")
        .unwrap_or_else(|_| hpk_netd::subnet::etcd::lease::DEFAULT_PREFIX.into());
    format!("{}/config", prefix.trim_end_matches('/'))
}

pub fn run(args: InitArgs) -> Result<()> {
    let plan: Plan = serde_json::from_str(&args.plan).context("invalid init plan")?;
    let mut signals = Signals::block()?;
    let mut fifo = File::options()
        .write(true)
        .open(&plan.ready_fifo)
        .with_context(|| format!("cannot open {}", plan.ready_fifo.display()))?;
    report(&mut fifo, &Report::Started);
    let mut services = Services::default();
    match bring_up(&plan, &mut services, &mut signals) {
        Ok(subnet) => {
            tracing::info!(%subnet, "bubble ready");
            report(&mut fifo, &Report::Ready { subnet });
            drop(fifo);
            services.supervise(&mut signals, &plan)
        }
        Err(e) => {
            report(
                &mut fifo,
                &Report::Failed {
                    error: format!("{e:#}"),
                },
            );
            services.stop_all();
            Err(e)
        }
    }
}

fn report(fifo: &mut File, r: &Report) {
    let mut line = serde_json::to_string(r).expect("reports serialize");
    line.push('\n');
    if let Err(e) = fifo.write_all(line.as_bytes()) {
        tracing::warn!("cannot tell the launcher: {e}");
    }
}

fn bring_up(plan: &Plan, services: &mut Services, signals: &mut Signals) -> Result<String> {
    mounts::setup(&plan.state_dir, &plan.shared_dir)?;
    let mut nl = Netlink::open()?;
    let lo = nl.link_index("lo")?.context("no loopback in the bubble")?;
    nl.set_link(
        lo,
        LinkChange {
            up: true,
            ..Default::default()
        },
    )
    .context("cannot bring lo up")?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("cannot enable forwarding in the bubble")?;
    let tap = wait_for(
        "the uplink's tap0 with an address",
        " (the uplink did not configure the bubble)",
        Duration::from_secs(30),
        || {
            let stop = signals.pending()?;
            if let Some(sig) = crate::signals::wants_stop(&stop) {
                bail!("stopped by {sig} while waiting for the uplink");
            }
            let Some(index) = nl.link_index(TAP)? else {
                return Ok(None);
            };
            Ok((!nl.ipv4_addresses(index)?.is_empty()).then_some(index))
        },
    )?;
    // vxlan leaves the bubble from the host's address, as on the host itself.
    if !nl
        .ipv4_addresses(tap)?
        .iter()
        .any(|(a, _)| *a == plan.host_ip)
    {
        nl.add_ipv4_address(tap, plan.host_ip, 32)?;
    }
    let shared = SharedDir {
        path: plan.shared_dir.clone(),
    };
    let log = |what: &str| shared.log_path(plan.id, what);
    if plan.role == Role::Controller {
        let etcd = plan.etcd.clone().context("no etcd binary in the plan")?;
        let (data, host_ip, port) = (plan.state_dir.join("etcd"), plan.host_ip, plan.etcd_port);
        let tls = plan
            .etcd_client_tls
            .clone()
            .zip(plan.etcd_server_tls.clone());
        services.start(Spec::new("etcd", log("etcd"), move || {
            etcd::command(
                &etcd,
                &data,
                host_ip,
                port,
                tls.as_ref().map(|(c, s)| (c, s)),
            )
        }))?;
        let tls = plan.etcd_client_tls.as_ref();
        let written = wait_for("etcd to answer", "", Duration::from_secs(60), || {
            services.check_alive("etcd")?;
            Ok(etcd::configure(&plan.etcd_url, tls, &config_key(), &plan.network_config).ok())
        })?;
        tracing::info!(written, "network config in etcd");
    }
    let netd_plan = plan.clone();
    services.start(Spec::new("hpk-netd", log("netd"), move || {
        netd::command(&netd_plan.netd, &netd_plan.net_daemon, &netd_plan)
    }))?;
    let client = hpk_hook::client::Client::new(netd::socket());
    let status = wait_for("hpk-netd to serve", "", Duration::from_secs(120), || {
        services.check_alive("hpk-netd")?;
        Ok(client.status().ok())
    })?;
    if let (Role::Controller, Some(k3s)) = (plan.role, plan.k3s.clone()) {
        let k = services::k3s_plan(plan);
        services.start(Spec::new("k3s", log("k3s"), move || {
            let mut cmd = std::process::Command::new(&k3s);
            cmd.args(k3s::args(&k));
            cmd
        }))?;
    }
    Ok(status.subnet.to_string())
}

/// Where the controller publishes K3s's kubeconfig.
pub fn kubeconfig_path(shared_dir: &Path) -> PathBuf {
    shared_dir.join("kubeconfig")
}
