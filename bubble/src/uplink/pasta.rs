//! pasta (Debian `passt`): forwards are given on its command line, bound on the host's
//! address only, so other users' and clusters' ports on the host stay theirs.

use std::process::Command;

use anyhow::Result;

use super::{UplinkPlan, TAP, TAP_MTU};
use crate::child::Service;
use crate::host::Proto;

pub fn start(plan: &UplinkPlan) -> Result<Service> {
    let mut cmd = Command::new(super::require(crate::cli::UplinkKind::Pasta)?);
    cmd.args(args(plan));
    Service::spawn("pasta", &mut cmd, plan.log)
}

fn args(plan: &UplinkPlan) -> Vec<String> {
    let mut args: Vec<String> = [
        "--config-net",
        "--foreground",
        "--quiet",
        "--ns-ifname",
        TAP,
        "--mtu",
        &TAP_MTU.to_string(),
        // The bubble's own host is reached on its real address, not the gateway's.
        "--no-map-gw",
        "-T",
        "none",
        "-U",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for proto in [Proto::Tcp, Proto::Udp] {
        let flag = if proto == Proto::Tcp { "-t" } else { "-u" };
        let ports: Vec<String> = plan
            .forwards
            .iter()
            .filter(|f| f.proto == proto)
            .map(|f| format!("{}/{}", plan.host_ip, f.port))
            .collect();
        if ports.is_empty() {
            args.extend([flag.to_string(), "none".to_string()]);
        }
        for p in ports {
            args.extend([flag.to_string(), p]);
        }
    }
    args.push(plan.pid.to_string());
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Forward;

    #[test]
    fn forwards_bind_the_host_address_only() {
        let forwards = [
            Forward {
                proto: Proto::Udp,
                port: 8472,
                purpose: "",
            },
            Forward {
                proto: Proto::Tcp,
                port: 2379,
                purpose: "",
            },
        ];
        let plan = UplinkPlan {
            pid: 42,
            host_ip: "192.0.2.11".parse().unwrap(),
            forwards: &forwards,
            state_dir: std::path::Path::new("/x"),
            log: std::path::Path::new("/x/log"),
        };
        let a = args(&plan).join(" ");
        assert!(
            a.ends_with("-t 192.0.2.11/2379 -u 192.0.2.11/8472 42"),
            "{a}"
        );
        let node = [forwards[0]];
        let plan = UplinkPlan {
            forwards: &node,
            ..plan
        };
        assert!(args(&plan)
            .join(" ")
            .ends_with("-t none -u 192.0.2.11/8472 42"));
    }
}
