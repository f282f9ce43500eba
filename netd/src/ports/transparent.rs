//! What lets a published port's container see its clients' addresses: connections to the
//! container leave hpk-netd from the client's address (IP_TRANSPARENT), and the container's
//! answers, addressed to that client, are delivered to hpk-netd's socket instead of being
//! routed out: nftables marks packets that belong to a transparent socket, and a routing
//! rule sends marked packets to a table where every address is local (the kernel's TPROXY
//! recipe). All of it inside the bubble's namespace, where hpk-netd is root.

use anyhow::Result;

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
    crate::bubble::antispoof::run_nft(RULES, "the published ports' rules")?;
    let mut nl = Netlink::open()?;
    nl.replace_local_default_route(MARK)?;
    nl.add_fwmark_rule(MARK, MARK, MARK)?;
    Ok(())
}
