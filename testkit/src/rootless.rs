//! A rootless bubble as on a node: an unprivileged user's user + net + mount namespaces,
//! started from a host namespace, with slirp4netns (run in the host namespace) giving it
//! `tap0` and NAT.

use std::time::Duration;

use crate::{wait_until, Netns, Proc};

/// The unprivileged user that owns the bubbles (`nobody`); tests give it their files.
pub const BUBBLE_USER: u32 = 65534;

/// These machines ship /dev/net/tun as 0600; distributions ship 0666, which is what
/// rootless taps (ours, slirp4netns's, pasta's) rely on: set the usual mode.
pub fn allow_rootless_tun() {
    std::fs::set_permissions(
        "/dev/net/tun",
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
}

/// `setpriv` arguments that run the rest of the command line as [`BUBBLE_USER`].
pub fn setpriv_args() -> [String; 3] {
    [
        format!("--reuid={BUBBLE_USER}"),
        format!("--regid={BUBBLE_USER}"),
        "--clear-groups".to_string(),
    ]
}

// Fields drop in order: slirp4netns, the namespace's name (and what runs in it), then the
// process that holds the namespaces.
pub struct RootlessBubble {
    pub slirp: Proc,
    /// The bubble's network namespace, named `<prefix>-bubble` for inspection.
    pub ns: Netns,
    holder: Proc,
}

impl RootlessBubble {
    /// Starts the namespaces as [`BUBBLE_USER`] from `host`, and slirp4netns at MTU 65520.
    pub fn start(host: &Netns, prefix: &str) -> RootlessBubble {
        allow_rootless_tun();
        let holder = Proc::spawn(
            "bubble",
            host.nsenter("setpriv").args(setpriv_args()).args([
                "unshare",
                "--user",
                "--map-root-user",
                "--net",
                "--mount",
                "sleep",
                "600",
            ]),
        );
        let pid = holder.pid();
        // `unshare` execs `sleep` only once the namespaces exist.
        wait_until("bubble namespaces", Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        let ns = Netns::attach(format!("{prefix}-bubble"), pid);
        ns.ip(&["link", "set", "lo", "up"]);
        let slirp = Proc::spawn(
            "slirp4netns",
            host.nsenter("slirp4netns").args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                &pid.to_string(),
                "tap0",
            ]),
        );
        wait_until("slirp4netns tap0", Duration::from_secs(10), || {
            ns.link_up("tap0")
        });
        RootlessBubble { slirp, ns, holder }
    }

    /// The process holding the bubble's namespaces.
    pub fn pid(&self) -> i32 {
        self.holder.pid()
    }

    /// The command prefix that enters the bubble as its root (`nsenter -t PID -U -n -m`).
    pub fn enter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid().to_string(), "-U", "-n", "-m"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}
