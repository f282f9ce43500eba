//! What lets a published port's container see its clients' addresses: connections to the
//! container leave hpk-netd from the client's address (IP_TRANSPARENT), and the container's
//! answers, addressed to that client, are delivered to hpk-netd's socket instead of being
//! routed out: nftables marks packets that belong to a transparent socket, and a routing
//! rule sends marked packets to a table where every address is local (the kernel's TPROXY
//! recipe). All of it inside the bubble's namespace, where hpk-netd is root.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::sys::netlink::Netlink;

/// The mark and the routing table (and the rule's priority): "HP" in ASCII.
pub const MARK: u32 = 0x4850;

const RULES: &str = "table inet hpk-ports {}
delete table inet hpk-ports
table inet hpk-ports {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        meta l4proto { tcp, udp } socket transparent 1 meta mark set 0x4850 accept
    }
}
";

/// Sets it up; an error means the containers will see the gateway's address instead.
pub fn enable() -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(RULES.as_bytes())
        .context("cannot talk to nft")?;
    let out = child.wait_with_output().context("nft")?;
    if !out.status.success() {
        bail!(
            "nft refused the published ports' rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut nl = Netlink::open()?;
    nl.replace_local_default_route(MARK)?;
    nl.add_fwmark_rule(MARK, MARK, MARK)?;
    Ok(())
}
