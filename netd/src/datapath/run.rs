//! The life of an `hpk-net-daemon` process: set up its taps (or adopt inherited ones),
//! start the pump of its mode, and wait for a signal, the container's exit, or a pump
//! that stopped for good.

use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

use super::args::{Mode, NetDaemonArgs};
use super::{socket, tap_pump, PumpStopped};
use crate::sys::netlink::Netlink;
use crate::sys::netns::NetnsRef;
use crate::sys::pidwatch::{pid_of_netns_path, PidWatch};
use crate::sys::tap::{Tap, TapOptions};

/// What ends the daemon: a signal, or a data path that stopped for good.
enum Event {
    Signal(Signal),
    Stopped(PumpStopped),
    ContainerExited(i32),
    /// The hub has served no endpoint for a while, or failed.
    HubDone(Result<()>),
}

/// Runs the daemon until it should exit; the exit code says how it ended.
pub fn run(cli: NetDaemonArgs) -> Result<ExitCode> {
    // A forwarder hpk-netd started (it hands over the taps) leaves hpk-netd's session and
    // process group, so that signals meant for hpk-netd never reach it.
    if cli.inherits_taps() {
        let _ = nix::unistd::setsid();
    }
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
    let done = events.clone();
    let on_stop = move |stopped: PumpStopped| {
        let _ = events.send(Event::Stopped(stopped));
    };

    let mut socket_path = None;
    // A forwarder that follows a container (--watch-pid, or tap mode's /proc/PID/ns/net)
    // ends with it: its taps would otherwise outlive the container, and, should hpk-netd be
    // gone too, nobody would stop it.
    if let Some(watch) = container_watch(&cli)? {
        std::thread::Builder::new()
            .name("container".into())
            .spawn(move || {
                if watch.wait().is_ok() {
                    let _ = exited.send(Event::ContainerExited(watch.pid()));
                }
            })?;
    }
    match cli.mode {
        Mode::Tap => start_tap_to_tap(&cli, on_stop)?,
        Mode::Hub => {
            let fd = cli
                .listen_fd
                .ok_or_else(|| anyhow!("--mode hub needs --listen-fd (hpk-netd starts the hub)"))?;
            // SAFETY: the parent handed this fd over for us alone.
            let control =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let busy_poll = std::time::Duration::from_micros(cli.busy_poll_us);
            // Each endpoint holds three fds (two taps, a pidfd): a soft limit of 1024
            // would refuse the ~340th.
            match crate::sys::process::raise_fd_limit() {
                Ok(limit) => info!(open_files = limit, "hub serving"),
                Err(e) => warn!(error = %e, "hub serving; cannot raise its limit of open files"),
            }
            std::thread::Builder::new()
                .name("hub".into())
                .spawn(move || {
                    let _ = done.send(Event::HubDone(super::hub::serve(
                        control,
                        busy_poll,
                        super::hub::LINGER,
                    )));
                })?;
        }
        Mode::Server | Mode::Client => {
            let path = cli
                .socket
                .clone()
                .ok_or_else(|| anyhow!("--mode {:?} needs --socket PATH", cli.mode))?;
            // Always with the header; offloads go on only once a peer agrees to carry it.
            let opts = TapOptions { vnet_hdr: true };
            let tap = match (cli.tap_fd, &cli.tap) {
                // SAFETY: the parent handed this fd over for us alone.
                (Some(fd), _) => unsafe { Tap::from_raw_fd(fd)? },
                (None, Some(name)) => {
                    let tap = if cli.create_tap {
                        Tap::create(name, opts)?
                    } else {
                        Tap::attach(name, opts)?
                    };
                    Netlink::open()?.configure(name, cli.mtu, cli.bridge.as_deref())?;
                    tap
                }
                (None, None) => bail!("--mode {:?} needs --tap NAME", cli.mode),
            };
            tap.set_offloads(false)?;
            let name = tap.name().to_owned();
            let tap = Arc::new(tap);
            let extended = !cli.original_framing;
            if cli.mode == Mode::Server {
                let (uid, gid) = cli
                    .socket_owner
                    .map_or((None, None), |o| (Some(o.uid), o.gid));
                let listener = crate::sys::unix_socket::bind(&path, cli.socket_mode, uid, gid)?;
                info!(tap = name, socket = %path.display(), "serving frames");
                socket_path = Some(path);
                std::thread::Builder::new()
                    .name("accept".into())
                    .spawn(move || socket::serve(tap, listener, extended, on_stop))?;
            } else {
                info!(tap = name, socket = %path.display(), "client starting");
                std::thread::Builder::new()
                    .name("client".into())
                    .spawn(move || socket::run_client(tap, path, extended, on_stop))?;
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
        Ok(Event::HubDone(Ok(()))) => ExitCode::SUCCESS,
        Ok(Event::HubDone(Err(e))) => {
            error!("hub failed: {e:#}; exiting");
            ExitCode::FAILURE
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
fn container_watch(cli: &NetDaemonArgs) -> Result<Option<PidWatch>> {
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
    cli: &NetDaemonArgs,
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
    tap_pump::spawn(container, bubble, busy_poll, on_stop)?;
    Ok(())
}
