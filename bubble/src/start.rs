//! `hpk-bubble start ID ROLE`: the launcher on the host, run by the job's user.
//!
//! Checks first (shared dir, programs, /dev/net/tun, the host's address and ports), waits
//! for the controller when it is a node, starts the bubble and its uplink, waits for PID 1
//! to report ready, publishes the record, prints one line, then holds until SIGTERM or
//! until a part dies. Whatever happens after the first step, [`Running`]'s drop removes
//! what was made: processes, namespaces, the record and the state dir (a controller that
//! failed keeps etcd's data and its certificate there for the start that takes over).
//!
//! A state dir left by a dead bubble (its launcher SIGKILLed) is taken over
//! ([`state::claim`]): that is how `hpk.slurm` restarts a bubble in place.

mod running;
pub mod state;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpk_netd::subnet::etcd::netconfig::NetworkConfig;

use crate::cli::{BubbleRuntime, Role, StartArgs, UnderlayKind, UplinkKind};
use crate::host::{self, Forward, HostLink, Proto};
use crate::init::Plan;
use crate::record::{self, Record, SharedDir};
use crate::signals::{wants_stop, Signals};
use crate::{pki, tools, uplink};
use running::Running;

/// What a controller's state dir keeps for a restart in place: etcd's data, the server's
/// certificate and key, K3s's data.
const CONTROLLER_KEEPS: &[&str] = &["etcd", "pki", "k3s"];

/// What pre-flight found out about the node.
struct Node {
    shared: SharedDir,
    link: HostLink,
    uplink: UplinkKind,
    runtime: BubbleRuntime,
    network: NetworkConfig,
    network_text: String,
    forwards: Vec<Forward>,
    /// The overlay's UDP socket on the host (host-socket underlay), bound in pre-flight.
    host_socket: Option<std::net::UdpSocket>,
    exe: PathBuf,
    netd: PathBuf,
    net_daemon: PathBuf,
    etcd: Option<PathBuf>,
}

pub fn run(args: StartArgs) -> Result<()> {
    let mut signals = Signals::block()?;
    if args.id == 0 {
        bail!("bubble numbers start at 1");
    }
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(args.id));
    let keep = match args.role {
        Role::Controller => CONTROLLER_KEEPS,
        Role::Node => &[],
    };
    // Before pre-flight: a dead bubble's processes may still hold its ports as they end.
    let (state, takeover) = state::claim(&state_dir, args.id, keep)?;
    let node = match preflight(&args) {
        Ok(node) => node,
        Err(e) => {
            state.discard_if_new();
            return Err(e);
        }
    };
    if let Some(t) = takeover {
        // claim logged it to the job's output; the bubble's own log says so too.
        note_in_log(
            &node.shared.log_path(args.id, "init"),
            &t.describe(args.id, &state_dir),
        );
    }
    let controller_url = match args.role {
        Role::Controller => None,
        Role::Node => {
            let controller = wait_for_controller(&node.shared, &args, &mut signals)?;
            Some(
                controller
                    .etcd
                    .context("the controller's record names no etcd")?,
            )
        }
    };
    let mut running = Running::new(node.shared.clone(), args.id, state, keep);
    let etcd = etcd_access(&args, &node, controller_url, &mut running)?;
    let plan = Plan {
        id: args.id,
        role: args.role,
        host_ip: node.link.addr,
        host_mtu: node.link.mtu,
        underlay: args.underlay,
        etcd_port: args.etcd_port,
        k3s_port: args.k3s_port,
        network_config: node.network_text.clone(),
        etcd_url: etcd.url,
        etcd_client_tls: etcd.client,
        etcd_server_tls: etcd.server,
        shared_dir: node.shared.path.clone(),
        state_dir: state_dir.clone(),
        ready_fifo: state_dir.join("ready.fifo"),
        netd: node.netd.clone(),
        net_daemon: node.net_daemon.clone(),
        etcd: node.etcd.clone(),
        k3s: (args.role == Role::Controller)
            .then(|| tools::find_on_path("k3s"))
            .flatten(),
    };
    let record = running.bring_up(&node, &plan, &args, &mut signals)?;
    println!(
        "bubble {} ready: {} on {} ({}), subnet {}, uplink {}, underlay {}; enter it with: hpk-bubble shell {} --shared-dir {}",
        record.id,
        record.role,
        record.host,
        record.host_ip,
        record.subnet,
        record.uplink,
        record.underlay,
        record.id,
        node.shared.path.display()
    );
    running.hold(&mut signals)
}

/// How this bubble's services reach etcd.
struct EtcdAccess {
    url: String,
    client: Option<pki::ClientFiles>,
    server: Option<pki::ServerFiles>,
}

/// A node speaks what the controller serves (its record's URL); the controller makes the
/// cluster's PKI (removed with `running`) unless plain HTTP was asked for.
fn etcd_access(
    args: &StartArgs,
    node: &Node,
    controller_url: Option<String>,
    running: &mut Running,
) -> Result<EtcdAccess> {
    let local = |scheme: &str| format!("{scheme}://127.0.0.1:{}", args.etcd_port);
    Ok(match controller_url {
        Some(url) => {
            let client = url
                .starts_with("https:")
                .then(|| node.shared.etcd_client_files());
            if let Some(files) = &client {
                files.check()?;
            }
            EtcdAccess {
                url,
                client,
                server: None,
            }
        }
        None if args.etcd_plain_http => {
            tracing::warn!(
                "etcd serves plain HTTP: anyone who reaches {}:{} can rewrite the cluster's routes",
                node.link.addr,
                args.etcd_port
            );
            EtcdAccess {
                url: local("http"),
                client: None,
                server: None,
            }
        }
        None => {
            running.pki = Some(node.shared.pki_dir());
            let (client, server) = pki::create_or_keep(
                &node.shared.pki_dir(),
                &running.state.path.join("pki"),
                node.link.addr,
            )?;
            EtcdAccess {
                url: local("https"),
                client: Some(client),
                server: Some(server),
            }
        }
    })
}

fn preflight(args: &StartArgs) -> Result<Node> {
    let shared = SharedDir::open(&args.shared.shared_dir)?;
    let network_text = match args.network_config.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the network config {file}"))?,
        None => args.network_config.clone(),
    };
    let network = NetworkConfig::parse(&network_text)
        .context("invalid --network-config (flannel's JSON, e.g. {\"Network\":\"10.244.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}})")?;
    let uplink = args.uplink.unwrap_or_else(uplink::default_kind);
    uplink::require(uplink)?;
    let runtime = match (args.runtime, &args.image) {
        (Some(r), _) => r,
        (None, Some(_)) if tools::find_on_path("apptainer").is_some() => BubbleRuntime::Apptainer,
        (None, _) => BubbleRuntime::Unshare,
    };
    match runtime {
        BubbleRuntime::Unshare => {
            tools::require("unshare", "util-linux")?;
        }
        BubbleRuntime::Apptainer => {
            tools::require("apptainer", "apptainer (from apptainer.org)")?;
            let image = args.image.as_ref().context(
                "the Apptainer runtime needs the hpk-bubble image (--image, HPK_BUBBLE_IMAGE)",
            )?;
            if !image.is_file() {
                bail!(
                    "bubble image {} not found (--image, HPK_BUBBLE_IMAGE)",
                    image.display()
                );
            }
        }
    }
    check_tun()?;
    let etcd = match args.role {
        Role::Controller => Some(tools::require("etcd", "etcd-server")?),
        Role::Node => None,
    };
    let link = host::host_link(args.host_ip)?;
    let overlay_port = Forward {
        proto: Proto::Udp,
        port: network.port,
        purpose:
            "the overlay's UDP port is flannel's Backend.Port: set another in --network-config",
    };
    // The overlay's port: a socket of our own on the host, or a forward by the uplink.
    let (host_socket, mut forwards) = match args.underlay {
        UnderlayKind::HostSocket => (Some(host::bind_udp(link.addr, &overlay_port)?), vec![]),
        UnderlayKind::Kernel => (None, vec![overlay_port]),
    };
    if args.role == Role::Controller {
        forwards.push(Forward {
            proto: Proto::Tcp,
            port: args.etcd_port,
            purpose: "choose another with --etcd-port (HPK_ETCD_PORT)",
        });
        if tools::find_on_path("k3s").is_some() {
            forwards.push(Forward {
                proto: Proto::Tcp,
                port: args.k3s_port,
                purpose: "choose another with --k3s-port (HPK_K3S_PORT)",
            });
        }
    }
    host::check_free(link.addr, &forwards)?;
    Ok(Node {
        shared,
        link,
        uplink,
        runtime,
        network,
        network_text,
        forwards,
        host_socket,
        exe: std::env::current_exe().context("cannot find hpk-bubble itself")?,
        netd: tools::find_ours("hpk-netd")?,
        net_daemon: tools::find_ours("hpk-net-daemon")?,
        etcd,
    })
}

/// Rootless taps (the uplink's, hpk-netd's) need /dev/net/tun open to everyone.
fn check_tun() -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open /dev/net/tun ({e}): bubbles need it usable by every user; ask an administrator to run `chmod 0666 /dev/net/tun` (the usual mode) or load the tun module"
            )
        })
}

fn wait_for_controller(
    shared: &SharedDir,
    args: &StartArgs,
    signals: &mut Signals,
) -> Result<Record> {
    tracing::info!(shared = %shared.path.display(), "waiting for the controller");
    record::wait_for(
        "the controller bubble",
        Duration::from_secs(args.wait_timeout),
        || shared.controller(),
        || match wants_stop(&signals.pending()?) {
            Some(sig) => bail!("stopped by {sig} while waiting for the controller"),
            None => Ok(()),
        },
    )
    .map_err(|e| {
        e.context(format!(
            "no controller bubble became ready in {} (start bubble 1 as controller first; its log: {})",
            shared.path.display(),
            shared.log_path(1, "init").display()
        ))
    })
}

fn default_state_dir(id: u32) -> PathBuf {
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| "local".into());
    std::env::temp_dir().join(format!(
        "hpk-bubble-{}-{job}-{id}",
        nix::unistd::getuid().as_raw()
    ))
}

/// Appends `line` to the log at `path` (best effort: the launcher's stderr has it too).
fn note_in_log(path: &std::path::Path, line: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "hpk-bubble start: {line}"));
    if let Err(e) = written {
        tracing::warn!(log = %path.display(), "cannot note the takeover: {e}");
    }
}
