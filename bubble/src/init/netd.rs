//! hpk-netd in the bubble: its etcd agent leases the bubble's subnet; vxlan leaves on the
//! host socket the launcher serves (or, kernel underlay, from the host's address as a /32
//! on the uplink); the overlay MTU follows the host's link. On the host socket, datagrams
//! between bubbles are sealed (encrypted) with the cluster's overlay key (beside the etcd
//! PKI); `HPK_NETD_OVERLAY_ENCRYPT=false` in the job's environment only authenticates them.

use std::path::Path;
use std::process::Command;

use super::Plan;
use crate::cli::UnderlayKind;
use crate::init::mounts::RUN_DIR;
use crate::uplink::TAP;

/// hpk-netd's control socket in the bubble (hpktainer's default).
pub fn socket() -> String {
    format!("{RUN_DIR}/netd.sock")
}

/// Where the launcher serves the host socket, under the state dir.
pub const UNDERLAY_SOCKET: &str = "underlay.sock";

/// Where the launcher binds published ports on the host, under the state dir.
pub const PORTS_SOCKET: &str = "ports.sock";

pub fn command(netd: &Path, net_daemon: &Path, plan: &Plan) -> Command {
    let mut cmd = Command::new(netd);
    cmd.args(["run", "--subnet-source", "etcd", "--etcd-endpoints"])
        .arg(&plan.etcd_url)
        .arg("--public-ip")
        .arg(plan.host_ip.to_string())
        .args(["--iface", TAP])
        .arg("--underlay-mtu")
        .arg(plan.host_mtu.to_string())
        .arg("--state-dir")
        .arg(format!("{RUN_DIR}/netd"))
        .arg("--socket")
        .arg(socket())
        // Hooks and hpktainer run as the bubble's root, hpk-netd's own uid.
        .args(["--socket-mode", "0600"])
        .arg("--net-daemon")
        .arg(net_daemon)
        .arg("--ports-socket")
        .arg(format!("{RUN_DIR}/{PORTS_SOCKET}"));
    if let Some(t) = &plan.etcd_client_tls {
        cmd.arg("--etcd-ca-file")
            .arg(&t.ca)
            .arg("--etcd-cert-file")
            .arg(&t.cert)
            .arg("--etcd-key-file")
            .arg(&t.key);
    }
    match plan.underlay {
        UnderlayKind::HostSocket => {
            cmd.arg("--underlay-socket")
                .arg(format!("{RUN_DIR}/{UNDERLAY_SOCKET}"));
            // The key lives with the PKI: a plain-HTTP cluster (no PKI) has none.
            if let Some(t) = &plan.etcd_client_tls {
                cmd.arg("--overlay-key")
                    .arg(t.ca.with_file_name(crate::pki::OVERLAY_KEY));
            }
        }
        UnderlayKind::Kernel => {
            cmd.args(["--underlay", "kernel"]);
        }
    };
    cmd
}
