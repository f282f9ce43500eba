//! hpk-netd's status as people read it.

use std::fmt::Write;

use crate::proto::Status;

/// `hpk-netd status` as a table: the bubble, its lease and peers, then one line per
/// endpoint. `hpktainer status` prints the same. (Writes to a String cannot fail.)
pub fn table(s: &Status) -> String {
    let mut out = String::new();
    writeln!(out, "source      {}", s.source).unwrap();
    writeln!(out, "network     {}", s.network).unwrap();
    writeln!(
        out,
        "subnet      {} (gateway {} on {}, MTU {})",
        s.subnet, s.gateway, s.bridge, s.mtu
    )
    .unwrap();
    let masquerade = if s.masquerade {
        "on (bubble chain HPK-POSTRTG)"
    } else {
        "not by the bubble (flannel's ip-masq rules, or off)"
    };
    writeln!(out, "masquerade  {masquerade}").unwrap();
    writeln!(
        out,
        "addresses   {} of {} in use",
        s.addresses_in_use, s.addresses_total
    )
    .unwrap();
    if let Some(lease) = &s.lease {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = lease.expires.saturating_sub(now);
        writeln!(
            out,
            "lease       {} for {}, expires in {}h{:02}m{:02}s",
            lease.subnet,
            lease.public_ip,
            left / 3600,
            left % 3600 / 60,
            left % 60
        )
        .unwrap();
    }
    for p in &s.peers {
        writeln!(
            out,
            "peer        {} via {} ({})",
            p.subnet, p.public_ip, p.vtep_mac
        )
        .unwrap();
    }
    writeln!(out,).unwrap();
    writeln!(
        out,
        "{:<24} {:<16} {:>8} {:<16} {:>9} {:>14} {:>14}",
        "CONTAINER", "ADDRESS", "PID", "BUBBLE TAP", "FORWARDER", "TO (bytes)", "FROM (bytes)"
    )
    .unwrap();
    for e in &s.endpoints {
        let c = |k: &str| e.counters.get(k).copied().unwrap_or(0);
        writeln!(
            out,
            "{:<24} {:<16} {:>8} {:<16} {:>9} {:>14} {:>14}",
            e.id,
            e.address,
            e.pid,
            e.bubble_tap,
            e.forwarder_pid,
            c("to_container_bytes"),
            c("from_container_bytes")
        )
        .unwrap();
    }
    out
}
