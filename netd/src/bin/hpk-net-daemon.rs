//! hpk-net-daemon: moves Ethernet frames between a container and its bubble.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use hpk_netd::forward::{self, PumpStopped};
use hpk_netd::netlink::Netlink;
use hpk_netd::netns::NetnsRef;
use hpk_netd::pidwatch::{pid_of_netns_path, PidWatch};
use hpk_netd::socket_mode::{self, Owner};
use hpk_netd::tap::{Tap, TapOptions, MAX_TAP_MTU};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Copy frames between a tap in the container and a tap in the bubble (default).
    Tap,
    /// Socket mode, bubble side: create --tap and serve frames on --socket.
    Server,
    /// Socket mode, container side: create --tap and connect to --socket.
    Client,
}

/// Moves Ethernet frames between a container's network namespace and its bubble.
///
/// Tap mode (default) creates `--container-tap` inside `--netns` and `--bubble-tap` here
/// (enslaved to `--bridge` if given), both with the virtio-net header and offloads, and
/// copies frames between them; 64 KiB GSO frames cross in one read and one write. A parent
/// may instead hand over two open tap fds (`--container-fd`, `--bubble-fd`).
///
/// Socket mode (`--mode server|client`) speaks the original hpk-net-daemon protocol: each
/// frame is a 4-byte big-endian length and the Ethernet frame, over a UNIX stream socket.
/// Two hpk-net-daemons agree on an extended framing that adds the virtio-net header (GSO
/// frames cross whole); with the original tool on the other end the original framing is
/// kept. Go-style single-dash flags (`-mode server -socket PATH -tap NAME`) work too.
///
/// Taps created here disappear when the daemon exits (SIGTERM/SIGINT exit cleanly).
/// Log level: HPK_LOG (e.g. HPK_LOG=debug).
#[derive(Debug, Parser)]
#[command(name = "hpk-net-daemon", version, verbatim_doc_comment)]
struct Cli {
    /// Data path to run.
    #[arg(short, long, value_enum, default_value_t = Mode::Tap)]
    mode: Mode,

    /// Tap mode: the container's network namespace, a path (/proc/PID/ns/net) or an
    /// `ip netns` name.
    #[arg(long, value_name = "PATH|NAME")]
    netns: Option<String>,

    /// Tap mode: name of the tap created inside the container.
    #[arg(long, default_value = "tap0", value_name = "NAME")]
    container_tap: String,

    /// Tap mode: name of the tap created in this (the bubble's) namespace.
    #[arg(long, value_name = "NAME")]
    bubble_tap: Option<String>,

    /// Tap mode: an already-open tap fd of the container side, inherited from the parent.
    #[arg(long, value_name = "FD", conflicts_with_all = ["netns"])]
    container_fd: Option<RawFd>,

    /// Tap mode: an already-open tap fd of the bubble side, inherited from the parent.
    #[arg(long, value_name = "FD", conflicts_with_all = ["bubble_tap", "bridge"])]
    bubble_fd: Option<RawFd>,

    /// Tap mode: exit when this process (the container's) exits. Defaults to PID when
    /// --netns is /proc/PID/ns/net.
    #[arg(long, value_name = "PID")]
    watch_pid: Option<i32>,

    /// Bridge in this namespace to enslave the bubble-side tap (or socket-mode tap) to.
    #[arg(short, long, value_name = "BRIDGE")]
    bridge: Option<String>,

    /// MTU of the taps this daemon creates (68 to 65521).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(68..=MAX_TAP_MTU as i64))]
    mtu: u32,

    /// Tap mode: microseconds to keep polling after traffic before sleeping. Saves a
    /// wake-up per hop for request/response traffic where cores are idle; on a busy
    /// machine spinning steals the CPU the traffic needs, hence 0 (off) by default.
    #[arg(long, default_value_t = 0, value_name = "USEC")]
    busy_poll_us: u64,

    /// Tap mode: open the taps without virtio-net header and offloads (for comparison).
    #[arg(long)]
    no_offload: bool,

    /// Socket mode: path of the UNIX socket to serve or connect to.
    #[arg(short, long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Socket mode: name of the tap to create in this namespace.
    #[arg(short, long, value_name = "NAME")]
    tap: Option<String>,

    /// Socket mode: never offer or accept the extended framing (virtio-net header and
    /// offloads over the socket, negotiated between two hpk-net-daemons); always the
    /// original tool's framing.
    #[arg(long)]
    original_framing: bool,

    /// Socket mode, server: permission bits of the socket file (octal).
    #[arg(long, default_value = "600", value_parser = parse_octal, value_name = "OCTAL")]
    socket_mode: u32,

    /// Socket mode, server: owner of the socket file, USER[:GROUP] (names or numbers).
    #[arg(long, value_name = "USER[:GROUP]")]
    socket_owner: Option<Owner>,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 600 or 660"))
}

/// Turns the original tool's Go-style `-name value` / `-name=value` flags into `--name`.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    const GO_FLAGS: [&str; 6] = ["mode", "socket", "tap", "bridge", "mtu", "help"];
    args.enumerate()
        .map(|(i, arg)| {
            let word = arg
                .strip_prefix('-')
                .filter(|rest| !rest.starts_with('-'))
                .map(|rest| rest.split('=').next().unwrap_or(rest));
            match word {
                Some(w) if i > 0 && GO_FLAGS.contains(&w) => format!("-{arg}"),
                _ => arg,
            }
        })
        .collect()
}

/// What ends the daemon: a signal, or a data path that stopped for good.
enum Event {
    Signal(Signal),
    Stopped(PumpStopped),
    ContainerExited(i32),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    hpk_netd::logging::init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Signals go to one waiting thread; block them before any other thread exists.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;
    let (events, next_event) = mpsc::channel::<Event>();
    {
        let events = events.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(sig) = signals.wait() {
                    let _ = events.send(Event::Signal(sig));
                }
            })?;
    }
    let exited = events.clone();
    let on_stop = move |stopped: PumpStopped| {
        let _ = events.send(Event::Stopped(stopped));
    };

    let mut socket_path = None;
    match cli.mode {
        Mode::Tap => {
            if let Some(watch) = container_watch(&cli)? {
                std::thread::Builder::new()
                    .name("container".into())
                    .spawn(move || {
                        if watch.wait().is_ok() {
                            let _ = exited.send(Event::ContainerExited(watch.pid()));
                        }
                    })?;
            }
            start_tap_to_tap(&cli, on_stop)?
        }
        Mode::Server | Mode::Client => {
            let path = cli
                .socket
                .clone()
                .ok_or_else(|| anyhow!("--mode {:?} needs --socket PATH", cli.mode))?;
            let name = cli
                .tap
                .clone()
                .ok_or_else(|| anyhow!("--mode {:?} needs --tap NAME", cli.mode))?;
            // Always with the header; offloads go on only once a peer agrees to carry it.
            let tap = Tap::create(&name, TapOptions { vnet_hdr: true })?;
            tap.set_offloads(false)?;
            let tap = Arc::new(tap);
            let extended = !cli.original_framing;
            Netlink::open()?.configure(&name, cli.mtu, cli.bridge.as_deref())?;
            if cli.mode == Mode::Server {
                let (uid, gid) = cli
                    .socket_owner
                    .map_or((None, None), |o| (Some(o.uid), o.gid));
                let listener = hpk_netd::unix_socket::bind(&path, cli.socket_mode, uid, gid)?;
                info!(tap = name, socket = %path.display(), "serving frames");
                socket_path = Some(path);
                std::thread::Builder::new()
                    .name("accept".into())
                    .spawn(move || socket_mode::serve(tap, listener, extended, on_stop))?;
            } else {
                info!(tap = name, socket = %path.display(), "client starting");
                std::thread::Builder::new()
                    .name("client".into())
                    .spawn(move || socket_mode::run_client(tap, path, extended, on_stop))?;
            }
        }
    }

    let code = match next_event.recv() {
        Ok(Event::Signal(sig)) => {
            info!(signal = %sig, "exiting");
            ExitCode::SUCCESS
        }
        Ok(Event::ContainerExited(pid)) => {
            info!(pid, "container process exited; removing its taps");
            ExitCode::SUCCESS
        }
        Ok(Event::Stopped(stopped)) => {
            error!("{stopped}; exiting");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    };
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    // Taps are not persistent: the kernel removes them when the process exits.
    Ok(code)
}

/// The container process to follow: --watch-pid, else the PID in a /proc/PID/ns/net path.
fn container_watch(cli: &Cli) -> Result<Option<PidWatch>> {
    let pid = cli.watch_pid.or_else(|| {
        cli.netns
            .as_deref()
            .and_then(|ns| pid_of_netns_path(std::path::Path::new(ns)))
    });
    pid.map(|pid| {
        PidWatch::open(pid).with_context(|| {
            format!("container process {pid} is not running (has the container exited?)")
        })
    })
    .transpose()
}

fn start_tap_to_tap(
    cli: &Cli,
    on_stop: impl Fn(PumpStopped) + Send + Sync + 'static,
) -> Result<()> {
    let opts = TapOptions {
        vnet_hdr: !cli.no_offload,
    };
    let container = match cli.container_fd {
        // SAFETY: the parent handed this fd to us and nothing else here owns it.
        Some(fd) => unsafe { Tap::from_raw_fd(fd) }.context("--container-fd")?,
        None => {
            let ns = cli.netns.as_deref().ok_or_else(|| {
                anyhow!("tap mode needs --netns (the container's namespace) or --container-fd")
            })?;
            let ns = NetnsRef::parse(ns)?;
            let (name, mtu) = (cli.container_tap.clone(), cli.mtu);
            ns.run(move || {
                let tap = Tap::create(&name, opts)?;
                Netlink::open()?.configure(&name, mtu, None)?;
                Ok(tap)
            })
            .with_context(|| format!("container side in {ns}"))?
        }
    };
    let bubble = match cli.bubble_fd {
        // SAFETY: as above.
        Some(fd) => unsafe { Tap::from_raw_fd(fd) }.context("--bubble-fd")?,
        None => {
            let name = cli
                .bubble_tap
                .as_deref()
                .ok_or_else(|| anyhow!("tap mode needs --bubble-tap NAME or --bubble-fd"))?;
            let tap = Tap::create(name, opts)?;
            Netlink::open()?
                .configure(name, cli.mtu, cli.bridge.as_deref())
                .context("bubble side")?;
            tap
        }
    };
    if container.vnet_hdr() != bubble.vnet_hdr() {
        bail!(
            "taps disagree on the virtio-net header ({}: {}, {}: {}); open both with IFF_VNET_HDR or neither",
            container.name(),
            container.vnet_hdr(),
            bubble.name(),
            bubble.vnet_hdr()
        );
    }
    info!(
        container = container.name(),
        bubble = bubble.name(),
        offloads = container.offloads(),
        "forwarding"
    );
    let busy_poll = std::time::Duration::from_micros(cli.busy_poll_us);
    forward::spawn(container, bubble, busy_poll, on_stop)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        normalize_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_style_flags_are_accepted() {
        assert_eq!(
            args(&[
                "d",
                "-mode",
                "server",
                "-socket=/x",
                "-tap",
                "t0",
                "-m",
                "client",
                "--mtu",
                "9000"
            ]),
            [
                "d",
                "--mode",
                "server",
                "--socket=/x",
                "--tap",
                "t0",
                "-m",
                "client",
                "--mtu",
                "9000"
            ]
        );
        let cli = Cli::try_parse_from(args(&[
            "d", "-mode", "client", "-socket", "/s", "-tap", "tap0",
        ]))
        .unwrap();
        assert_eq!(cli.mode, Mode::Client);
        assert_eq!(cli.tap.as_deref(), Some("tap0"));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["d", "--mtu", "65522"]).is_err());
        assert!(Cli::try_parse_from(["d", "--socket-mode", "999"]).is_err());
        assert!(Cli::try_parse_from(["d", "--container-fd", "3", "--netns", "x"]).is_err());
        assert_eq!(parse_octal("660"), Ok(0o660));
    }
}
