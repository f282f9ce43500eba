//! `hpk-bubble start ID ROLE`: the launcher on the host, run by the job's user.
//!
//! Checks first (shared dir, programs, /dev/net/tun, the host's address and ports), waits
//! for the controller when it is a node, starts the bubble and its uplink, waits for PID 1
//! to report ready, publishes the record, prints one line, then holds until SIGTERM or
//! until a part dies. Whatever happens after the first step, [`Running`]'s drop removes
//! what was made: processes, namespaces, the record and the state dir.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hpk_netd::subnet::etcd::netconfig::NetworkConfig;
use hpk_netd::sys::process::ProcId;
use hpk_netd::underlay::handover::Server;

use crate::child::Service;
use crate::cli::{BubbleRuntime, Role, StartArgs, UnderlayKind, UplinkKind};
use crate::holder::{Holder, Launch};
use crate::host::{self, Forward, HostLink, Proto};
use crate::init::{Plan, Report};
use crate::record::{self, Record, SharedDir};
use crate::signals::{wants_stop, Signals};
use crate::{pki, tools, uplink};

const STOP_GRACE: Duration = Duration::from_secs(15);

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
    let node = preflight(&args)?;
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
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(args.id));
    let mut running = Running::new(node.shared.clone(), args.id, state_dir.clone())?;
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
            let (client, server) = pki::create(
                &node.shared.pki_dir(),
                &running.state_dir.join("pki"),
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
    if args.id == 0 {
        bail!("bubble numbers start at 1");
    }
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

/// A bubble being started or running; dropping it tears everything down.
struct Running {
    shared: SharedDir,
    id: u32,
    state_dir: PathBuf,
    holder: Option<Holder>,
    uplink: Option<Service>,
    init: Option<ProcId>,
    /// Serves the host socket to hpk-netd (each start of it).
    handover: Option<Server>,
    /// Binds published ports on the host for hpk-netd.
    ports: Option<hpk_netd::ports::handover::Server>,
    /// The cluster's PKI in the shared directory, when this controller made it.
    pki: Option<PathBuf>,
}

impl Running {
    fn new(shared: SharedDir, id: u32, state_dir: PathBuf) -> Result<Running> {
        use std::os::unix::fs::DirBuilderExt;
        if state_dir.exists() {
            bail!(
                "state directory {} exists: is bubble {id} already running here? (remove it if not)",
                state_dir.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        Ok(Running {
            shared,
            id,
            state_dir,
            holder: None,
            uplink: None,
            init: None,
            handover: None,
            ports: None,
            pki: None,
        })
    }

    fn bring_up(
        &mut self,
        node: &Node,
        plan: &Plan,
        args: &StartArgs,
        signals: &mut Signals,
    ) -> Result<Record> {
        nix::unistd::mkfifo(
            &plan.ready_fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .context("cannot make the ready FIFO")?;
        let mut fifo = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&plan.ready_fifo)?;
        if let Some(socket) = &node.host_socket {
            let path = self.state_dir.join(crate::init::netd::UNDERLAY_SOCKET);
            let listener = hpk_netd::sys::unix_socket::bind(&path, 0o600, None, None)?;
            let socket = socket.try_clone().context("cannot share the host socket")?;
            self.handover = Some(Server::spawn(listener, socket)?);
        }
        let path = self.state_dir.join(crate::init::netd::PORTS_SOCKET);
        let listener = hpk_netd::sys::unix_socket::bind(&path, 0o600, None, None)?;
        self.ports = Some(hpk_netd::ports::handover::Server::spawn(listener)?);
        let init_log = self.shared.log_path(self.id, "init");
        let launch = Launch {
            exe: &node.exe,
            init_args: vec!["init".into(), "--plan".into(), serde_json::to_string(plan)?],
            binds: vec![&self.shared.path, &self.state_dir],
            log: &init_log,
        };
        self.holder = Some(match node.runtime {
            BubbleRuntime::Unshare => Holder::unshare(&launch)?,
            BubbleRuntime::Apptainer => Holder::apptainer(
                args.image.as_deref().expect("checked in preflight"),
                format!("bubble{}", self.id),
                &launch,
            )?,
        });
        let mut lines = Lines::default();
        let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
        match self.next_report(&mut fifo, &mut lines, signals, deadline, &init_log)? {
            Report::Started => {}
            other => bail!("the bubble's init said {other:?} first"),
        }
        let pid =
            crate::child::wait_for("the bubble's PID 1", "", Duration::from_secs(10), || {
                self.holder.as_mut().expect("set").init_pid()
            })?;
        self.init = ProcId::of(pid);
        let uplink_log = self.shared.log_path(self.id, "uplink");
        self.uplink = Some(uplink::start(
            node.uplink,
            &uplink::UplinkPlan {
                pid,
                host_ip: node.link.addr,
                forwards: &node.forwards,
                state_dir: &self.state_dir,
                log: &uplink_log,
            },
        )?);
        let subnet = match self.next_report(&mut fifo, &mut lines, signals, deadline, &init_log)? {
            Report::Ready { subnet } => subnet,
            Report::Failed { error } => bail!(
                "the bubble failed to start: {error} (its logs: {}/bubble-{}-*.log)",
                self.shared.path.display(),
                self.id
            ),
            Report::Started => bail!("the bubble's init started twice"),
        };
        let record = Record {
            id: self.id,
            role: plan.role,
            job: std::env::var("SLURM_JOB_ID").ok(),
            host: record::hostname(),
            host_ip: node.link.addr,
            uplink: node.uplink,
            underlay: plan.underlay,
            etcd: (plan.role == Role::Controller).then(|| {
                let scheme = if plan.etcd_server_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}:{}", node.link.addr, args.etcd_port)
            }),
            vxlan_port: node.network.port,
            subnet,
            init: self.init.context("the bubble's PID 1 vanished")?,
            state_dir: self.state_dir.clone(),
        };
        self.shared.publish(&record)?;
        Ok(record)
    }

    /// The next report of PID 1, while watching signals, the holder and the uplink.
    fn next_report(
        &mut self,
        fifo: &mut std::fs::File,
        lines: &mut Lines,
        signals: &mut Signals,
        deadline: Instant,
        init_log: &Path,
    ) -> Result<Report> {
        loop {
            if let Some(line) = lines.next() {
                return serde_json::from_str(&line)
                    .with_context(|| format!("unexpected report from the bubble: {line:?}"));
            }
            if let Some(sig) = wants_stop(&signals.pending()?) {
                bail!("stopped by {sig} while the bubble was starting");
            }
            self.check_parts()
                .with_context(|| format!("the bubble's init log: {}", init_log.display()))?;
            if Instant::now() >= deadline {
                bail!(
                    "the bubble was not ready in time (--wait-timeout); its logs: {}/bubble-{}-*.log",
                    self.shared.path.display(),
                    self.id
                );
            }
            hpk_netd::sys::poll::readable(&[fifo.as_raw_fd(), signals.raw_fd()], 200)?;
            lines.fill(fifo)?;
        }
    }

    /// An error when the holder or the uplink is gone.
    fn check_parts(&mut self) -> Result<()> {
        if let Some(e) = self.holder.as_mut().and_then(|h| h.gone(self.init)) {
            return Err(e);
        }
        if let Some(up) = self.uplink.as_mut() {
            if let Some(status) = up.exited() {
                return Err(up.exit_report(status));
            }
        }
        Ok(())
    }

    fn hold(mut self, signals: &mut Signals) -> Result<()> {
        loop {
            let got = signals.wait(Duration::from_secs(1))?;
            if let Some(sig) = wants_stop(&got) {
                tracing::info!(%sig, bubble = self.id, "stopping");
                return Ok(());
            }
            self.check_parts()?;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(holder) = self.holder.as_mut() {
            holder.stop(self.init, STOP_GRACE);
        }
        if let Some(up) = self.uplink.as_mut() {
            up.stop(Duration::from_secs(2));
        }
        if let Some(init) = self.init {
            self.shared.withdraw(self.id, init);
        }
        if let Some(pki) = &self.pki {
            let _ = std::fs::remove_dir_all(pki);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.state_dir) {
            tracing::warn!(dir = %self.state_dir.display(), "cannot remove the state dir: {e}");
        }
    }
}

/// Newline-separated reports read from the FIFO.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn fill(&mut self, fifo: &mut std::fs::File) -> Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match fifo.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("reading the ready FIFO"),
            }
        }
    }

    fn next(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line).trim().to_owned())
    }
}
