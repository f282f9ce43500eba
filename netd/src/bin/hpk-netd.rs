//! hpk-netd: owns a bubble's network and every container endpoint in it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hpk_hook::client::{socket_path, Client};
use hpk_hook::proto::{Request, Response, Status};
use hpk_netd::config::{Config, Masquerade, SourceKind};
use hpk_netd::firewall::Iptables;
use hpk_netd::flannel::agent::EtcdSource;
use hpk_netd::ipam::Ipam;
use hpk_netd::service::{Service, Settings};
use hpk_netd::store::Store;
use hpk_netd::subnet::{FlannelFile, SubnetSource};
use nix::unistd::{Gid, Group};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// The network daemon of an hpktainer bubble.
///
/// `hpk-netd run` takes the bubble's subnet from flannel's subnet.env, sets up the bridge
/// (the subnet's .1), forwarding and NAT, and then serves the OCI hooks on its control
/// socket: each attached container gets an address, a tap, and a forwarder that outlives
/// hpk-netd restarts. Log level: HPK_LOG (e.g. HPK_LOG=debug).
#[derive(Debug, Parser)]
#[command(name = "hpk-netd", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (in the foreground).
    Run(Box<RunArgs>),
    /// Show the subnet, the bridge and every endpoint.
    Status {
        /// Control socket [env: HPK_NETD_SOCKET; default /run/hpktainer/netd.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Flags override the config file; each also reads an HPK_NETD_* variable.
#[derive(Debug, Args)]
struct RunArgs {
    /// Config file (TOML; see config/hpk-netd.toml). Without it, built-in defaults.
    #[arg(long, env = "HPK_NETD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for address allocations and endpoint records.
    #[arg(long, env = "HPK_NETD_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Control socket path.
    #[arg(long, env = "HPK_NETD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Control socket permission bits, octal.
    #[arg(long, env = "HPK_NETD_SOCKET_MODE", value_name = "OCTAL")]
    socket_mode: Option<String>,
    /// Group owning the control socket.
    #[arg(long, env = "HPK_NETD_SOCKET_GROUP", value_name = "GROUP")]
    socket_group: Option<String>,
    /// Uids allowed on the control socket, comma-separated.
    #[arg(
        long,
        env = "HPK_NETD_ALLOWED_UIDS",
        value_delimiter = ',',
        value_name = "UID,..."
    )]
    allowed_uids: Option<Vec<u32>>,
    /// The bubble's bridge.
    #[arg(long, env = "HPK_NETD_BRIDGE", value_name = "NAME")]
    bridge: Option<String>,
    /// Masquerade traffic leaving the overlay.
    #[arg(long, env = "HPK_NETD_MASQUERADE", value_enum)]
    masquerade: Option<Masquerade>,
    /// Name of the tap inside each container.
    #[arg(long, env = "HPK_NETD_CONTAINER_TAP", value_name = "NAME")]
    container_tap: Option<String>,
    /// The hpk-net-daemon binary.
    #[arg(long, env = "HPK_NETD_NET_DAEMON", value_name = "PATH")]
    net_daemon: Option<String>,
    /// flannel's subnet file (read from flanneld, or written by the etcd agent).
    #[arg(long, env = "HPK_NETD_SUBNET_FILE", value_name = "PATH")]
    subnet_file: Option<PathBuf>,
    /// Where the subnet comes from.
    #[arg(long, env = "HPK_NETD_SUBNET_SOURCE", value_enum)]
    subnet_source: Option<SourceKind>,
    /// etcd endpoints, comma-separated (source etcd).
    #[arg(
        long,
        env = "HPK_NETD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL,..."
    )]
    etcd_endpoints: Option<Vec<String>>,
    /// etcd key prefix (source etcd).
    #[arg(long, env = "HPK_NETD_ETCD_PREFIX", value_name = "PREFIX")]
    etcd_prefix: Option<String>,
    /// Address other nodes send vxlan to (source etcd).
    #[arg(long, env = "HPK_NETD_PUBLIC_IP", value_name = "IP")]
    public_ip: Option<String>,
    /// Uplink interface, by name or address (source etcd).
    #[arg(long, env = "HPK_NETD_IFACE", value_name = "NAME|IP")]
    iface: Option<String>,
    /// CA certificate for etcd TLS.
    #[arg(long, env = "HPK_NETD_ETCD_CA_FILE", value_name = "PEM")]
    etcd_ca_file: Option<String>,
    /// Client certificate for etcd TLS.
    #[arg(long, env = "HPK_NETD_ETCD_CERT_FILE", value_name = "PEM")]
    etcd_cert_file: Option<String>,
    /// Client key for etcd TLS.
    #[arg(long, env = "HPK_NETD_ETCD_KEY_FILE", value_name = "PEM")]
    etcd_key_file: Option<String>,
    /// Subnet lease time to live in seconds (source etcd).
    #[arg(long, env = "HPK_NETD_ETCD_LEASE_TTL", value_name = "SECS")]
    etcd_lease_ttl: Option<u64>,
    /// Install flanneld's --ip-masq rules (source etcd).
    #[arg(long, env = "HPK_NETD_IP_MASQ", value_name = "BOOL")]
    ip_masq: Option<bool>,
}

impl RunArgs {
    /// The config file with flags and environment applied on top.
    fn config(self) -> Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! set {
            ($($field:ident).+ <- $value:expr) => {
                if let Some(v) = $value {
                    c.$($field).+ = v;
                }
            };
        }
        set!(state_dir <- self.state_dir);
        set!(socket <- self.socket);
        set!(socket_mode <- self.socket_mode);
        set!(socket_group <- self.socket_group);
        set!(allowed_uids <- self.allowed_uids);
        set!(bridge <- self.bridge);
        set!(masquerade <- self.masquerade);
        set!(container_tap <- self.container_tap);
        set!(net_daemon <- self.net_daemon);
        set!(subnet.subnet_file <- self.subnet_file);
        set!(subnet.source <- self.subnet_source);
        set!(subnet.etcd.endpoints <- self.etcd_endpoints);
        set!(subnet.etcd.prefix <- self.etcd_prefix);
        set!(subnet.etcd.public_ip <- self.public_ip);
        set!(subnet.etcd.interface <- self.iface);
        set!(subnet.etcd.ca_file <- self.etcd_ca_file);
        set!(subnet.etcd.cert_file <- self.etcd_cert_file);
        set!(subnet.etcd.key_file <- self.etcd_key_file);
        set!(subnet.etcd.lease_ttl <- self.etcd_lease_ttl);
        set!(subnet.etcd.ip_masq <- self.ip_masq);
        c.validate()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_netd::logging::init();
    let result = match cli.command {
        Command::Run(args) => args.config().and_then(|cfg| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(run(cfg))
        }),
        Command::Status { socket, json } => status(socket, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn socket_gid(group: &str) -> Result<Option<Gid>> {
    if group.is_empty() {
        return Ok(None);
    }
    if let Ok(n) = group.parse() {
        return Ok(Some(Gid::from_raw(n)));
    }
    Ok(Some(
        Group::from_name(group)?
            .ok_or_else(|| anyhow!("socket_group {group:?}: no such group"))?
            .gid,
    ))
}

async fn run(cfg: Config) -> Result<()> {
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
    {
        let (env, bridge) = (env.clone(), cfg.bridge.clone());
        tokio::task::spawn_blocking(move || {
            hpk_netd::bubble::prepare(&env, &bridge, masquerade, &Iptables)
        })
        .await??;
    }
    tokio::spawn(hpk_netd::firewall::keep(
        Arc::new(Iptables),
        hpk_netd::firewall::bubble_chains(env.subnet, env.network, masquerade),
    ));
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    let ipam = Ipam::open(&cfg.state_dir, env.subnet, env.gateway)?;
    let store = Store::open(&cfg.state_dir)?;
    let service = Service::new(
        Settings {
            env,
            source: source.describe(),
            bridge: cfg.bridge.clone(),
            container_tap: cfg.container_tap.clone(),
            masquerade,
            net_daemon: cfg.net_daemon_path(),
            overlay,
        },
        ipam,
        store,
    );
    service.adopt().await?;

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let std_listener = hpk_netd::unix_socket::bind(
        &cfg.socket,
        cfg.socket_mode_bits()?,
        None,
        socket_gid(&cfg.socket_group)?,
    )?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    info!(socket = %cfg.socket.display(), "serving");
    Ok(tokio::spawn(hpk_netd::control::serve(
        listener,
        service,
        Arc::new(cfg.allowed_uids.clone()),
    )))
}

fn status(socket: Option<PathBuf>, json: bool) -> Result<()> {
    let path = socket_path(socket.as_deref());
    match Client::new(&path).call(&Request::Status)? {
        Response::Status(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
        Response::Status(s) => {
            print_status(&s);
            Ok(())
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn print_status(s: &Status) {
    println!("source      {}", s.source);
    println!("network     {}", s.network);
    println!(
        "subnet      {} (gateway {} on {}, MTU {})",
        s.subnet, s.gateway, s.bridge, s.mtu
    );
    let masquerade = if s.masquerade {
        "on (bubble chain HPK-POSTRTG)"
    } else {
        "not by the bubble (flannel's ip-masq rules, or off)"
    };
    println!("masquerade  {masquerade}");
    println!(
        "addresses   {} of {} in use",
        s.addresses_in_use, s.addresses_total
    );
    if let Some(lease) = &s.lease {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = lease.expires.saturating_sub(now);
        println!(
            "lease       {} for {}, expires in {}h{:02}m{:02}s",
            lease.subnet,
            lease.public_ip,
            left / 3600,
            left % 3600 / 60,
            left % 60
        );
    }
    for p in &s.peers {
        println!(
            "peer        {} via {} ({})",
            p.subnet, p.public_ip, p.vtep_mac
        );
    }
    println!();
    println!(
        "{:<24} {:<16} {:>8} {:<16} {:>9} {:>14} {:>14}",
        "CONTAINER", "ADDRESS", "PID", "BUBBLE TAP", "FORWARDER", "TO (bytes)", "FROM (bytes)"
    );
    for e in &s.endpoints {
        let c = |k: &str| e.counters.get(k).copied().unwrap_or(0);
        println!(
            "{:<24} {:<16} {:>8} {:<16} {:>9} {:>14} {:>14}",
            e.id,
            e.address,
            e.pid,
            e.bubble_tap,
            e.forwarder_pid,
            c("to_container_bytes"),
            c("from_container_bytes")
        );
    }
}
