//! The command line: every subcommand and option, with the help texts users read.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run containers on the bubble's overlay network (hpk-netd), and set up hpktainer's OCI
/// hooks for Podman, SingularityCE, Apptainer and any OCI runtime.
///
/// State lives in one place per user: as root /run/hpktainer (containers) and
/// /var/lib/hpktainer (images); rootless $XDG_RUNTIME_DIR/hpktainer and
/// $XDG_DATA_HOME/hpktainer. HPKTAINER_ROOT or --root puts both under one directory.
#[derive(Debug, Parser)]
#[command(name = "hpktainer", version, verbatim_doc_comment)]
pub struct Cli {
    /// Debug logging (same as HPK_LOG=debug); prints the runtime choice and every tool call.
    #[arg(long, global = true)]
    pub debug: bool,

    /// Directory for all of hpktainer's state (containers and image cache).
    #[arg(long, global = true, env = "HPKTAINER_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// hpk-netd's control socket [env: HPK_NETD_SOCKET; default: /run/hpktainer/netd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new container on the bubble's network.
    Run(RunArgs),
    /// Run an interactive shell (/bin/sh) in a new container (= run -it IMAGE /bin/sh).
    Shell {
        #[command(flatten)]
        opts: RunOpts,
        /// Image: a rootfs directory, docker://REF, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE.
        image: String,
    },
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// List this user's containers.
    Ps(PsArgs),
    /// Stop a container (SIGTERM, then SIGKILL after the grace period).
    Stop(StopArgs),
    /// The published ports of a container (HOST -> CONTAINER), or of all.
    Port {
        /// Container name; all containers without one.
        name: Option<String>,
    },
    /// Print the output of a detached container.
    Logs {
        /// Container name.
        name: String,
    },
    /// Remove a stopped container (with --force also a running one).
    Rm {
        /// Force-remove a running container.
        #[arg(short, long)]
        force: bool,
        /// Container names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove the state of every container that is not running, and leftovers of killed runs.
    Prune,
    /// Apptainer-style aliases: instance start|stop|list.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Install or remove hook configurations (oci-hooks for Podman/CRI-O, CDI for SingularityCE).
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// OCI runtime shim with runc's command line, for --runtime users (Podman, Docker).
    ///
    /// On create/run it adds our hooks and a network namespace to the bundle's
    /// config.json, then runs the real runtime with the arguments untouched; other verbs
    /// pass through. Our options (--runtime-path, --socket) come before runc's. Also
    /// reachable as a symlink named hpktainer-runtime.
    Runtime(ShimArgs),
    /// This bubble's network (what `hpk-netd status` shows) and this user's containers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: RunOpts,
    /// Image: a rootfs directory, docker://REF, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE.
    pub image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    /// Always ask the registry (layers already cached are not fetched again).
    Always,
    /// Pull only when the image is not in the cache.
    #[default]
    Missing,
    /// Never pull: fail when the image is not cached.
    Never,
}

#[derive(Clone, Debug, Default, Args)]
pub struct RunOpts {
    /// Container name (default: a generated one); unique among this user's containers.
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background; output goes to the container's log (`hpktainer logs`).
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits (always so for foreground runs).
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (NAME=VALUE, or NAME to take it from here).
    #[arg(short, long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines, # comments).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Bind-mount a directory or file: SRC:DST[:ro].
    #[arg(
        short = 'v',
        long = "bind",
        visible_alias = "volume",
        value_name = "SRC:DST[:ro]"
    )]
    pub bind: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The container's hostname (default: its name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// User to run as: UID[:GID] or a name from the image's /etc/passwd.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Keep stdin open (foreground runs always pass stdin through).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal (when stdin is one).
    #[arg(short, long)]
    pub tty: bool,
    /// Publish a port of the container on the host: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]
    /// (repeatable). The host port is bound before the container starts and released
    /// when it stops; reach it at the node's address (from the login node, or ssh -L).
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CONTAINER[/PROTO]", value_parser = parse_port)]
    pub publish: Vec<hpk_hook::ports::PortMapping>,
    /// A static address in the bubble's subnet (annotation io.hpktainer.ip).
    #[arg(long, value_name = "ADDRESS")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// `none`: a network namespace with loopback only (annotation io.hpktainer.network=none).
    #[arg(long, value_name = "MODE", default_value = "hpk")]
    pub network: NetworkMode,
    /// Runtime: runc, crun, apptainer, singularity, or a path. Default: the first found of
    /// runc, crun, apptainer, singularity (in this order).
    #[arg(long, env = "HPKTAINER_RUNTIME", value_name = "NAME|PATH")]
    pub runtime: Option<String>,
    /// The hpk-hook binary (default: next to hpktainer, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub hook: Option<PathBuf>,
    /// When to pull the image.
    #[arg(long, value_enum, default_value_t)]
    pub pull: PullPolicy,
    /// A registry (host[:port]) reached over plain HTTP / without TLS verification
    /// (also HPKTAINER_INSECURE_REGISTRIES, comma-separated; localhost always is).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// A device (repeatable): a CDI device VENDOR/CLASS=NAME (=all: every device of the
    /// kind) from the specs in the CDI directories, or a device node
    /// /dev/PATH[:CONTAINER_PATH][:rwm] (a directory: every node under it). Rootless, a
    /// node is bind-mounted and must be one this user may open.
    #[arg(long, value_name = "NAME|/dev/PATH[:PATH][:rwm]")]
    pub device: Vec<String>,
    /// NVIDIA GPUs through their CDI spec (`nvidia-ctk cdi generate`): `all`, or a list
    /// of indices/UUIDs. `all` means the GPUs Slurm gave the job when SLURM_STEP_GPUS,
    /// SLURM_JOB_GPUS or CUDA_VISIBLE_DEVICES is set.
    #[arg(long, value_name = "all|LIST")]
    pub gpus: Option<String>,
    /// Apptainer's name for --gpus all.
    #[arg(long)]
    pub nv: bool,
    /// A resource limit NAME=SOFT[:HARD] (repeatable; -1: unlimited), e.g. memlock=-1 for
    /// RDMA; at most the user's own hard limit.
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Directories of CDI specs (repeatable; colon-separated in the variable), instead of
    /// /etc/cdi and /var/run/cdi.
    #[arg(
        long = "cdi-spec-dir",
        env = "CDI_SPEC_DIRS",
        value_delimiter = ':',
        value_name = "DIR"
    )]
    pub cdi_spec_dir: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum NetworkMode {
    /// The bubble's overlay network through hpk-netd.
    #[default]
    Hpk,
    /// Loopback only.
    None,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal (when stdin is one).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (NAME=VALUE).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Container name.
    pub name: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also list containers that have exited.
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10, value_name = "SECS")]
    pub time: u64,
    /// Container names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

// Parsed once per process: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Start a detached container (= run -d --name NAME IMAGE [COMMAND]).
    Start {
        #[command(flatten)]
        opts: RunOpts,
        /// Image.
        image: String,
        /// Instance name.
        #[arg(id = "instance_name", value_name = "NAME")]
        instance: String,
        /// Command and arguments (default: the image's).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Stop and remove an instance.
    Stop {
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Instance names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List running instances.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Write the hook configurations (idempotent).
    Install(HooksInstallArgs),
    /// Remove the hook configurations this command installs.
    Uninstall(HooksDirs),
}

#[derive(Debug, Args)]
pub struct HooksDirs {
    /// oci-hooks(5) directory for Podman / CRI-O.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/share/containers/oci/hooks.d"
    )]
    pub podman: PathBuf,
    /// CDI spec directory for SingularityCE --oci (and other CDI users).
    #[arg(long, value_name = "DIR", default_value = "/etc/cdi")]
    pub cdi: PathBuf,
}

#[derive(Debug, Args)]
pub struct HooksInstallArgs {
    #[command(flatten)]
    pub dirs: HooksDirs,
    /// Only print the `hooks` object for a hand-made bundle's config.json (runc, crun,
    /// Apptainer oci bundles); write nothing.
    #[arg(long)]
    pub print_config_json: bool,
    /// The hpk-hook binary the configurations name (default: next to hpktainer, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub hook: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShimArgs {
    /// The real runtime [env: HPKTAINER_RUNTIME_PATH; default: runc]. Our options
    /// (this and --socket) come before runc's.
    #[arg(long, value_name = "PATH")]
    pub runtime_path: Option<PathBuf>,
    /// runc's command line, passed on untouched.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn parse_port(text: &str) -> Result<hpk_hook::ports::PortMapping, String> {
    hpk_hook::ports::PortMapping::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_is_current() {
        use clap::CommandFactory;
        testkit::check_man_page(Cli::command(), "1");
    }
}
