//! The command line of `hpk-net-daemon`: parsed by the binary, and built by hpk-netd when
//! it starts a forwarder, so both sides share one typed definition.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use crate::sys::tap::MAX_TAP_MTU;
use crate::sys::users::{parse_mode, Owner};

/// How long a forwarder polls after traffic by default: long enough for a reply to come
/// back through the bubble (a round trip over veth is ~60 us on a small VM).
pub const DEFAULT_BUSY_POLL_US: u64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Copy frames between a tap in the container and a tap in the bubble (default).
    Tap,
    /// Socket mode, bubble side: create --tap and serve frames on --socket.
    Server,
    /// Socket mode, container side: create --tap and connect to --socket.
    Client,
    /// The bubble's shared tap forwarder: serve the tap pairs hpk-netd hands over on the
    /// listening socket --listen-fd, until none is left.
    Hub,
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
/// kept. The original's Go-style flags work as they did (`-mode client -socket PATH
/// -tap tap0 -create-tap`, `-version`).
///
/// Hub mode (`--mode hub`, started by hpk-netd) forwards for every tap endpoint of the
/// bubble in one thread; hpk-netd hands each pair of taps over on its control socket.
///
/// Taps created here disappear when the daemon exits (SIGTERM/SIGINT exit cleanly).
/// Log level: HPK_LOG (e.g. HPK_LOG=debug).
#[derive(Clone, Debug, PartialEq, Eq, Parser)]
#[command(name = "hpk-net-daemon", version, verbatim_doc_comment)]
pub struct NetDaemonArgs {
    /// Data path to run.
    #[arg(short, long, value_enum, default_value_t = Mode::Tap)]
    pub mode: Mode,

    /// Tap mode: the container's network namespace, a path (/proc/PID/ns/net) or an
    /// `ip netns` name.
    #[arg(long, value_name = "PATH|NAME")]
    pub netns: Option<String>,

    /// Tap mode: name of the tap created inside the container.
    #[arg(long, default_value = "tap0", value_name = "NAME")]
    pub container_tap: String,

    /// Tap mode: name of the tap created in this (the bubble's) namespace.
    #[arg(long, value_name = "NAME")]
    pub bubble_tap: Option<String>,

    /// Tap mode: an already-open tap fd of the container side, inherited from the parent.
    #[arg(long, value_name = "FD", conflicts_with_all = ["netns"])]
    pub container_fd: Option<RawFd>,

    /// Tap mode: an already-open tap fd of the bubble side, inherited from the parent.
    #[arg(long, value_name = "FD", conflicts_with_all = ["bubble_tap", "bridge"])]
    pub bubble_fd: Option<RawFd>,

    /// Hub mode: the listening control socket (SOCK_SEQPACKET), inherited from hpk-netd.
    #[arg(long, value_name = "FD", conflicts_with_all = ["netns", "container_fd", "bubble_fd", "tap_fd"])]
    pub listen_fd: Option<RawFd>,

    /// Tap mode: exit when this process (the container's) exits. Defaults to PID when
    /// --netns is /proc/PID/ns/net.
    #[arg(long, value_name = "PID")]
    pub watch_pid: Option<i32>,

    /// Bridge in this namespace to enslave the bubble-side tap (or socket-mode tap) to.
    #[arg(short, long, value_name = "BRIDGE")]
    pub bridge: Option<String>,

    /// MTU of the taps this daemon creates (68 to 65521).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(68..=MAX_TAP_MTU as i64))]
    pub mtu: u32,

    /// Tap and hub modes: microseconds to keep polling after traffic before sleeping,
    /// yielding the CPU to anything else runnable meanwhile. The reply to a frame then
    /// finds the forwarder awake, which saves a wake-up per hop; an idle forwarder sleeps
    /// (0: never poll).
    #[arg(long, default_value_t = DEFAULT_BUSY_POLL_US, value_name = "USEC")]
    pub busy_poll_us: u64,

    /// Tap mode: open the taps without virtio-net header and offloads (for comparison).
    #[arg(long)]
    pub no_offload: bool,

    /// Socket mode: path of the UNIX socket to serve or connect to.
    #[arg(short, long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Socket mode: name of the tap in this namespace.
    #[arg(short, long, value_name = "NAME")]
    pub tap: Option<String>,

    /// Socket mode: an already-open, configured tap fd inherited from the parent, instead
    /// of --tap.
    #[arg(long, value_name = "FD", conflicts_with_all = ["tap", "bridge"])]
    pub tap_fd: Option<RawFd>,

    /// Socket mode: create --tap (the default, also when given bare as the original's
    /// scripts do); `--create-tap=false` attaches to an existing persistent tap instead.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    pub create_tap: bool,

    /// Socket mode: never offer or accept the extended framing (virtio-net header and
    /// offloads over the socket, negotiated between two hpk-net-daemons); always the
    /// original tool's framing.
    #[arg(long)]
    pub original_framing: bool,

    /// Socket mode, server: permission bits of the socket file (octal).
    #[arg(long, default_value = "600", value_parser = parse_mode, value_name = "OCTAL")]
    pub socket_mode: u32,

    /// Socket mode, server: owner of the socket file, USER[:GROUP] (names or numbers).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub socket_owner: Option<Owner>,
}

/// The original tool's flags (Go's `flag` package takes one dash) and ours that share
/// their shape; each becomes `--name`.
const GO_FLAGS: [&str; 8] = [
    "mode",
    "socket",
    "tap",
    "create-tap",
    "version",
    "bridge",
    "mtu",
    "help",
];

/// Turns Go-style `-name value` / `-name=value` flags into `--name`.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let word = arg
                .to_str()
                .and_then(|a| a.strip_prefix('-'))
                .filter(|rest| !rest.starts_with('-'))
                .map(|rest| rest.split('=').next().unwrap_or(rest));
            match word {
                Some(w) if i > 0 && GO_FLAGS.contains(&w) => {
                    let mut long = OsString::from("-");
                    long.push(&arg);
                    long
                }
                _ => arg,
            }
        })
        .collect()
}

impl NetDaemonArgs {
    /// Parses the process's own command line, Go-style flags included.
    pub fn from_env() -> NetDaemonArgs {
        NetDaemonArgs::parse_from(normalize_args(std::env::args_os()))
    }

    /// A forwarder for two inherited tap fds that follows the container's process.
    pub fn inherited(container_fd: RawFd, bubble_fd: RawFd, watch_pid: i32) -> NetDaemonArgs {
        let mut args = NetDaemonArgs::parse_from(["hpk-net-daemon"]);
        args.container_fd = Some(container_fd);
        args.bubble_fd = Some(bubble_fd);
        args.watch_pid = Some(watch_pid);
        args
    }

    /// One end of a socket-mode pair on an inherited tap fd (server on the bubble side,
    /// client on the container's), following the container's process.
    pub fn socket_end(mode: Mode, tap_fd: RawFd, socket: PathBuf, watch_pid: i32) -> NetDaemonArgs {
        let mut args = NetDaemonArgs::parse_from(["hpk-net-daemon"]);
        args.mode = mode;
        args.tap_fd = Some(tap_fd);
        args.socket = Some(socket);
        args.watch_pid = Some(watch_pid);
        args
    }

    /// Whether a parent handed the taps over (it started this daemon as its forwarder).
    pub fn inherits_taps(&self) -> bool {
        self.container_fd.is_some() || self.tap_fd.is_some() || self.listen_fd.is_some()
    }

    /// The bubble's shared forwarder, serving the control socket `listen_fd`.
    pub fn hub(listen_fd: RawFd) -> NetDaemonArgs {
        let mut args = NetDaemonArgs::parse_from(["hpk-net-daemon"]);
        args.mode = Mode::Hub;
        args.listen_fd = Some(listen_fd);
        args
    }

    /// The command-line arguments (program name excluded) that parse back into `self`,
    /// for the fields a parent sets when it starts a tap-mode forwarder.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}"));
                out.push(v);
            }
        };
        flag("netns", self.netns.clone());
        flag("bubble-tap", self.bubble_tap.clone());
        flag("container-fd", self.container_fd.map(|v| v.to_string()));
        flag("bubble-fd", self.bubble_fd.map(|v| v.to_string()));
        flag("watch-pid", self.watch_pid.map(|v| v.to_string()));
        flag("bridge", self.bridge.clone());
        flag("mtu", Some(self.mtu.to_string()));
        flag("container-tap", Some(self.container_tap.clone()));
        flag("busy-poll-us", Some(self.busy_poll_us.to_string()));
        flag("tap-fd", self.tap_fd.map(|v| v.to_string()));
        flag("listen-fd", self.listen_fd.map(|v| v.to_string()));
        flag(
            "socket",
            self.socket.as_ref().map(|p| p.display().to_string()),
        );
        if self.mode != Mode::Tap {
            out.push("--mode".into());
            out.push(format!("{:?}", self.mode).to_lowercase());
        }
        if self.no_offload {
            out.push("--no-offload".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<NetDaemonArgs, clap::Error> {
        NetDaemonArgs::try_parse_from(normalize_args(list.iter().map(OsString::from)))
    }

    #[test]
    fn go_style_flags_are_accepted() {
        let norm: Vec<OsString> = normalize_args(
            [
                "d",
                "-mode",
                "server",
                "-socket=/x",
                "-tap",
                "t0",
                "-m",
                "client",
            ]
            .iter()
            .map(OsString::from),
        );
        assert_eq!(
            norm,
            [
                "d",
                "--mode",
                "server",
                "--socket=/x",
                "--tap",
                "t0",
                "-m",
                "client"
            ]
            .map(OsString::from)
        );
        let cli = parse(&["d", "-mode", "client", "-socket", "/s", "-tap", "tap0"]).unwrap();
        assert_eq!(cli.mode, Mode::Client);
        assert_eq!(cli.tap.as_deref(), Some("tap0"));
    }

    /// The command lines the original bubble and base-image scripts run.
    #[test]
    fn the_originals_command_lines_parse() {
        let client = parse(&[
            "hpk-net-daemon",
            "-mode",
            "client",
            "-socket",
            "/run/hpk/c1.sock",
            "-tap",
            "tap0",
            "-create-tap",
        ])
        .unwrap();
        assert_eq!(client.mode, Mode::Client);
        assert!(client.create_tap);
        let server = parse(&[
            "hpk-net-daemon",
            "-mode",
            "server",
            "-socket",
            "/run/hpk/c1.sock",
            "-tap",
            "hpk1",
            "-create-tap=false",
        ])
        .unwrap();
        assert!(!server.create_tap);
        assert!(
            parse(&["hpk-net-daemon", "-create-tap=true"])
                .unwrap()
                .create_tap
        );
        assert!(parse(&["hpk-net-daemon"]).unwrap().create_tap);
        let version = parse(&["hpk-net-daemon", "-version"]).unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["d", "--mtu", "65522"]).is_err());
        assert!(parse(&["d", "--socket-mode", "999"]).is_err());
        assert!(parse(&["d", "--container-fd", "3", "--netns", "x"]).is_err());
        assert!(parse(&["d", "-create-tap=maybe"]).is_err());
    }

    #[test]
    fn the_spawners_arguments_parse_back() {
        for args in [NetDaemonArgs::inherited(3, 4, 4242), NetDaemonArgs::hub(5)] {
            let mut line = vec!["hpk-net-daemon".to_owned()];
            line.extend(args.to_args());
            assert_eq!(NetDaemonArgs::try_parse_from(&line).unwrap(), args);
        }
    }
}
