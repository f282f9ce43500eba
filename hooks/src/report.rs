//! hpk-netd's status as people read it.

use std::fmt::Write;

use crate::proto::{Status, UnderlayStatus};

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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(lease) = &s.lease {
        writeln!(
            out,
            "lease       {} for {}, expires in {}",
            lease.subnet,
            lease.public_ip,
            remaining(lease.expires, now)
        )
        .unwrap();
    }
    if let Some(u) = &s.underlay {
        writeln!(out, "underlay    {}", underlay(u)).unwrap();
    }
    for p in &s.peers {
        let expires = p
            .expires
            .map(|t| format!(", lease expires in {}", remaining(t, now)))
            .unwrap_or_default();
        let datagrams = p
            .datagrams
            .as_ref()
            .map(|d| format!(", {d}"))
            .unwrap_or_default();
        writeln!(
            out,
            "peer        {} via {} ({}){datagrams}{expires}",
            p.subnet, p.public_ip, p.vtep_mac
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    writeln!(
        out,
        "{:<24} {:<16} {:>8} {:<6} {:<16} {:>12} {:>14} {:>14}",
        "CONTAINER",
        "ADDRESS",
        "PID",
        "KIND",
        "BUBBLE LINK",
        "FORWARDER",
        "TO (bytes)",
        "FROM (bytes)"
    )
    .unwrap();
    for e in &s.endpoints {
        let c = |k: &str| e.counters.get(k).copied().unwrap_or(0);
        writeln!(
            out,
            "{:<24} {:<16} {:>8} {:<6} {:<16} {:>12} {:>14} {:>14}",
            e.id,
            e.address,
            e.pid,
            e.kind.to_string(),
            e.bubble_tap,
            match (e.forwarder_pid, e.shared_forwarder) {
                (0, _) => "-".to_owned(),
                (pid, true) => format!("{pid}/hub"),
                (pid, false) => pid.to_string(),
            },
            c("to_container_bytes"),
            c("from_container_bytes")
        )
        .unwrap();
    }
    out
}

/// `2h05m09s` from now until `at` (seconds since the epoch).
fn remaining(at: u64, now: u64) -> String {
    let left = at.saturating_sub(now);
    format!("{}h{:02}m{:02}s", left / 3600, left % 3600 / 60, left % 60)
}

/// `kernel vxlan on flannel.1`, or the host socket with traffic and drops.
fn underlay(u: &UnderlayStatus) -> String {
    let Some(local) = &u.local else {
        return format!("{} vxlan on {}", u.kind, u.device);
    };
    let c = |k: &str| u.counters.get(k).copied().unwrap_or(0);
    let drops: Vec<String> = u
        .counters
        .iter()
        .filter(|(k, v)| k.starts_with("drop_") && **v > 0)
        .map(|(k, v)| format!("{} {v}", k.trim_start_matches("drop_").replace('_', " ")))
        .collect();
    let protection = u
        .protection
        .as_ref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    format!(
        "userspace vxlan on {}{protection} via host socket {local}: sent {} datagrams, received {}, dropped {}",
        u.device,
        c("tx_datagrams"),
        c("rx_datagrams"),
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LeaseStatus, PeerStatus};

    #[test]
    fn the_table_names_every_bubble_and_its_lease() {
        let mut status: Status = serde_json::from_str(
            r#"{"source":"etcd","network":"10.244.0.0/16","subnet":"10.244.3.0/24",
                "gateway":"10.244.3.1","mtu":1450,"bridge":"hpk-bridge","masquerade":true,
                "addresses_in_use":0,"addresses_total":253,"endpoints":[]}"#,
        )
        .unwrap();
        status.lease = Some(LeaseStatus {
            subnet: "10.244.3.0/24".into(),
            public_ip: "192.0.2.11".parse().unwrap(),
            expires: u64::MAX,
        });
        status.peers = vec![
            PeerStatus {
                subnet: "10.244.7.0/24".into(),
                public_ip: "192.0.2.12".parse().unwrap(),
                vtep_mac: "02:00:00:00:00:07".into(),
                expires: Some(0),
                datagrams: Some("sealed".into()),
            },
            PeerStatus {
                subnet: "10.244.9.0/24".into(),
                public_ip: "192.0.2.13".parse().unwrap(),
                vtep_mac: "02:00:00:00:00:09".into(),
                expires: None,
                datagrams: None,
            },
        ];
        status.underlay = Some(UnderlayStatus {
            kind: "host-socket".into(),
            device: "flannel.1".into(),
            local: Some("192.0.2.11:8472".into()),
            counters: [
                ("tx_datagrams", 5),
                ("rx_datagrams", 7),
                ("drop_wrong_vni", 2),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            protection: Some("authenticate".into()),
        });
        let text = table(&status);
        assert!(text.contains(
            "underlay    userspace vxlan on flannel.1 (authenticate) via host socket 192.0.2.11:8472: sent 5 datagrams, received 7, dropped wrong vni 2\n"
        ));
        assert!(text.contains("lease       10.244.3.0/24 for 192.0.2.11, expires in "));
        assert!(text.contains(
            "peer        10.244.7.0/24 via 192.0.2.12 (02:00:00:00:00:07), sealed, lease expires in 0h00m00s\n"
        ));
        assert!(text.contains("peer        10.244.9.0/24 via 192.0.2.13 (02:00:00:00:00:09)\n"));
        assert!(text.contains("CONTAINER"));
        assert_eq!(remaining(3600 + 61, 0), "1h01m01s");
    }
}
