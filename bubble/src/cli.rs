//! Command-line interface: every flag also reads an `HPK_*` environment variable, so the
//! Slurm script and users configure bubbles the same way.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// hpktainer's bubble: one rootless container per node holding its network services.
///
/// `start 1 controller` on the first node (etcd, hpk-netd), `start N node` on the others
/// (hpk-netd joins the controller's etcd); then `shell N` enters bubble N, where
/// `hpktainer run` starts containers on the overlay. Log level: HPK_LOG.
#[derive(Debug, Parser)]
#[command(name = "hpk-bubble", version, verbatim_doc_comment)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start bubble ID on this node; runs until SIGTERM, then removes everything.
    Start(StartArgs),
    /// Open a shell (or run a command) inside a running bubble.
    Shell(ShellArgs),
    /// Wait until bubble ID is ready (its record is published).
    Wait(WaitArgs),
    /// List the bubbles of a shared directory.
    List(ListArgs),
    /// PID 1 inside the bubble (started by `start`).
    #[command(hide = true)]
    Init(Box<InitArgs>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs etcd (and K3s when installed) besides hpk-netd.
    Controller,
    /// Runs hpk-netd, which joins the controller's etcd.
    Node,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkKind {
    Slirp4netns,
    Pasta,
}

/// Where the overlay's vxlan meets the host's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnderlayKind {
    /// hpk-netd is the VTEP, on a UDP socket the launcher opens on the host: no NAT in
    /// the overlay's path.
    #[default]
    HostSocket,
    /// flannel's kernel vxlan device in the bubble; its UDP port is forwarded by the
    /// uplink (slirp4netns or pasta), through their userspace NAT.
    Kernel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BubbleRuntime {
    /// An Apptainer instance of the hpk-bubble image (`--fakeroot --network=none`).
    Apptainer,
    /// `unshare`d user + network + mount + PID namespaces (no image needed).
    Unshare,
}

/// Shown as on the command line (`controller`, `pasta`, ...).
macro_rules! display_as_value {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let value = self.to_possible_value().expect("no skipped variants");
                f.write_str(value.get_name())
            }
        }
    )*};
}
display_as_value!(Role, UplinkKind, UnderlayKind);

#[derive(Debug, Args)]
pub struct SharedDirArg {
    /// Directory every node sees (records, logs, kubeconfig): the job's submit directory.
    #[arg(long, env = "HPK_SHARED_DIR", value_name = "DIR")]
    pub shared_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Bubble number (1 is the controller in hpk.slurm).
    pub id: u32,
    /// What this bubble runs.
    #[arg(value_enum)]
    pub role: Role,
    #[command(flatten)]
    pub shared: SharedDirArg,
    /// Uplink to the host network [default: pasta if installed, else slirp4netns].
    #[arg(long, env = "HPK_UPLINK", value_enum)]
    pub uplink: Option<UplinkKind>,
    /// Where the overlay's vxlan meets the host's network.
    #[arg(long, env = "HPK_UNDERLAY", value_enum, default_value_t)]
    pub underlay: UnderlayKind,
    /// The host's address others reach it on [default: the default route's].
    #[arg(long, env = "HPK_HOST_IP", value_name = "IP")]
    pub host_ip: Option<Ipv4Addr>,
    /// flannel network config (JSON, or @FILE), written once by the controller.
    #[arg(
        long,
        env = "HPK_NETWORK_CONFIG",
        value_name = "JSON|@FILE",
        default_value = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#
    )]
    pub network_config: String,
    /// Host port of the controller's etcd.
    #[arg(long, env = "HPK_ETCD_PORT", default_value_t = 2379)]
    pub etcd_port: u16,
    /// Serve the controller's etcd over plain HTTP to anyone who reaches the port, as the
    /// original did. By default it is TLS with client certificates made for this cluster
    /// (in SHARED_DIR/pki); nodes follow what the controller serves.
    #[arg(long, env = "HPK_ETCD_PLAIN_HTTP")]
    pub etcd_plain_http: bool,
    /// Host port of the controller's K3s API server (when K3s is installed).
    #[arg(long, env = "HPK_K3S_PORT", default_value_t = 6443)]
    pub k3s_port: u16,
    /// Seconds to wait for the controller, and for this bubble to be ready.
    #[arg(
        long,
        env = "HPK_WAIT_TIMEOUT",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub wait_timeout: u64,
    /// How the bubble is made [default: apptainer when installed and an image is given].
    #[arg(long, env = "HPK_BUBBLE_RUNTIME", value_enum)]
    pub runtime: Option<BubbleRuntime>,
    /// The hpk-bubble image (SIF) for the Apptainer runtime.
    #[arg(long, env = "HPK_BUBBLE_IMAGE", value_name = "SIF")]
    pub image: Option<PathBuf>,
    /// Node-local state (etcd data, hpk-netd state, images), removed at the end
    /// [default: $TMPDIR/hpk-bubble-UID-JOB-ID].
    #[arg(long, env = "HPK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Bubble number.
    pub id: u32,
    #[command(flatten)]
    pub shared: SharedDirArg,
    /// Command to run instead of an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Bubble number.
    pub id: u32,
    #[command(flatten)]
    pub shared: SharedDirArg,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
    /// Fail as soon as this process (the bubble's launcher) exits.
    #[arg(long, value_name = "PID")]
    pub watch: Option<i32>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub shared: SharedDirArg,
    /// Print JSON records instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `start` tells PID 1 (serialized as one JSON argument).
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The bubble's plan, as JSON.
    #[arg(long)]
    pub plan: String,
}

#[cfg(test)]
mod man {
    #[test]
    fn man_page_is_current() {
        use clap::CommandFactory;
        testkit::check_man_page(super::Cli::command(), "1");
    }
}
