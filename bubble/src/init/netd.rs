//! hpk-netd in the bubble: its etcd agent leases the bubble's subnet, vxlan leaves from
//! the host's address (a /32 on the uplink), and the overlay MTU follows the host's link.

use std::path::Path;
use std::process::Command;

use super::Plan;
use crate::init::mounts::RUN_DIR;
use crate::uplink::TAP;

/// hpk-netd's control socket in the bubble (hpktainer's default).
pub fn socket() -> String {
    format!("{RUN_DIR}/netd.sock")
}

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
        .arg("--net-daemon")
        .arg(net_daemon);
    cmd
}
