//! Start-up and life of hpk-netd: the subnet, the bubble network, adoption of the
//! endpoints a previous run left, then the control socket until a signal.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use nix::unistd::Gid;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use super::config::{Config, SourceKind};
use super::Daemon;
use crate::bubble::ipam::Ipam;
use crate::endpoint::store::Store;
use crate::endpoint::table::{Endpoints, Settings};
use crate::names::Names;
use crate::ports::Ports;
use crate::subnet::etcd::EtcdSource;
use crate::subnet::{FlannelFile, SubnetSource};
use crate::sys::firewall::Iptables;
use crate::sys::users;

/// Builds the runtime hpk-netd runs on and runs it.
pub fn run_blocking(cfg: Config) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(cfg))
}

/// The control socket's group, if one is configured.
fn socket_gid(group: &str) -> Result<Option<Gid>> {
    if group.is_empty() {
        return Ok(None);
    }
    users::gid(group)
        .map(Some)
        .with_context(|| format!("socket_group {group:?}"))
}

/// Runs hpk-netd until SIGTERM or SIGINT; endpoints keep running after it exits.
pub async fn run(cfg: Config) -> Result<()> {
    // From the first moment: a SIGTERM while waiting for flanneld is a clean exit too.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    tokio::pin!(shutdown);
    let server = tokio::select! {
        started = start(&cfg) => started?,
        sig = &mut shutdown => {
            info!(signal = sig, "exiting during startup");
            return Ok(());
        }
    };
    let result = tokio::select! {
        sig = &mut shutdown => {
            info!(signal = sig, "exiting; endpoints keep running");
            Ok(())
        }
        r = server => Err(anyhow!("control server stopped: {r:?}")),
    };
    let _ = std::fs::remove_file(&cfg.socket);
    result
}

/// Subnet, bubble network, endpoints, then the control socket; returns the server task.
async fn start(cfg: &Config) -> Result<tokio::task::JoinHandle<()>> {
    let (mut source, overlay): (Box<dyn SubnetSource>, _) = match cfg.subnet.source {
        SourceKind::Flannel => (Box::new(FlannelFile::new(&cfg.subnet.subnet_file)), None),
        SourceKind::Etcd => {
            let agent = cfg.subnet.etcd.agent(&cfg.subnet.subnet_file)?;
            let etcd = EtcdSource::new(agent, Arc::new(Iptables));
            let overlay = etcd.overlay();
            (Box::new(etcd), Some(overlay))
        }
    };
    info!(source = source.describe(), "hpk-netd starting");
    let env = source.acquire().await?;
    let masquerade = cfg.masquerade.ours(env.ipmasq);
    let antispoof = cfg.antispoof;
    {
        let (env, bridge) = (env.clone(), cfg.bridge.clone());
        tokio::task::spawn_blocking(move || {
            crate::bubble::prepare(&env, &bridge, masquerade, antispoof, &Iptables)
        })
        .await??;
    }
    tokio::spawn(crate::sys::firewall::keep(
        Arc::new(Iptables),
        crate::bubble::firewall::bubble_chains(env.subnet, env.network, masquerade),
    ));
    crate::sys::fs::private_dir(&cfg.state_dir).context("state directory")?;
    let ipam = Ipam::open(&cfg.state_dir, env.subnet, env.gateway)?;
    let store = Store::open(&cfg.state_dir)?;
    let endpoints = Endpoints::new(
        Settings {
            env: env.clone(),
            bridge: cfg.bridge.clone(),
            container_tap: cfg.container_tap.clone(),
            net_daemon: cfg.net_daemon_path(),
            endpoint: cfg.endpoint,
            tap_hub: cfg.tap_hub,
            hub_shortcut: cfg.hub_shortcut,
            busy_poll_us: cfg.busy_poll_us,
            antispoof: cfg.antispoof,
        },
        ipam,
        store,
        &cfg.state_dir,
    );
    endpoints.adopt().await?;
    let live = live_ids(&endpoints);
    let names = match cfg.names.enabled {
        true => Some(start_names(cfg, &env, overlay.as_ref(), &live).await?),
        false => None,
    };
    let ports = Ports::start(cfg.ports_socket(), &cfg.state_dir, &live).await?;
    tokio::spawn(release_gone(
        endpoints.clone(),
        names.clone(),
        ports.clone(),
    ));
    let daemon = Arc::new(Daemon {
        endpoints,
        env,
        source: source.describe(),
        bridge: cfg.bridge.clone(),
        masquerade,
        overlay,
        names,
        ports,
    });

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let std_listener = crate::sys::unix_socket::bind(
        &cfg.socket,
        cfg.socket_mode_bits()?,
        None,
        socket_gid(&cfg.socket_group)?,
    )?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    info!(socket = %cfg.socket.display(), "serving");
    Ok(tokio::spawn(super::control::serve(
        listener,
        daemon,
        Arc::new(cfg.allowed_uids.clone()),
    )))
}

/// The names service: the cluster's names from etcd when the agent is the source, else
/// this bubble's own; DNS on the gateway.
async fn start_names(
    cfg: &Config,
    env: &crate::subnet::SubnetEnv,
    overlay: Option<&crate::subnet::etcd::SharedOverlay>,
    live: &HashSet<String>,
) -> Result<Arc<Names>> {
    let upstream = match cfg.names.upstream()? {
        configured if !configured.is_empty() => configured,
        _ => {
            let text = std::fs::read_to_string(&cfg.names.resolv_conf).unwrap_or_default();
            crate::names::resolvers(&text, env.gateway)
        }
    };
    let cluster = match overlay {
        Some(overlay) => {
            let agent = cfg.subnet.etcd.agent(&cfg.subnet.subnet_file)?;
            let public_ip = overlay
                .lock()
                .unwrap()
                .public_ip
                .ok_or_else(|| anyhow!("the overlay has no public address yet"))?;
            Some(crate::names::Cluster {
                client: crate::subnet::etcd::connect(&agent).await?,
                prefix: agent.prefix,
                public_ip,
            })
        }
        None => None,
    };
    Names::start(
        crate::names::Settings {
            domain: cfg.names.domain.clone(),
            ttl: std::time::Duration::from_secs(cfg.names.ttl),
            upstream,
            listen: (env.gateway, 53).into(),
            state_dir: cfg.state_dir.clone(),
            client_qps: cfg.names.client_qps,
        },
        cluster,
        live,
    )
    .await
}

/// The ids of the containers attached now.
fn live_ids(endpoints: &Endpoints) -> HashSet<String> {
    endpoints
        .records()
        .iter()
        .map(|r| r.spec.id().to_string())
        .collect()
}

/// How often names and ports of containers that went without a poststop are dropped.
const RELEASE_GONE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Drops the names and ports of containers hpk-netd reaped (gone without a poststop).
async fn release_gone(endpoints: Arc<Endpoints>, names: Option<Arc<Names>>, ports: Arc<Ports>) {
    loop {
        tokio::time::sleep(RELEASE_GONE_EVERY).await;
        let alive = live_ids(&endpoints);
        ports.unpublish_gone(&alive);
        if let Some(names) = &names {
            names.release_gone(&alive).await;
        }
    }
}
