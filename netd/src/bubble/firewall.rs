//! The bubble's firewall rules: forward its subnet, and masquerade what leaves the
//! overlay.

use ipnet::Ipv4Net;

use crate::sys::firewall::Chain;

/// The bubble's rules: forward the subnet, and masquerade what leaves the overlay.
pub fn bubble_chains(subnet: Ipv4Net, network: Ipv4Net, masquerade: bool) -> Vec<Chain> {
    let mut nat = Vec::new();
    if masquerade {
        nat.push(format!("-s {subnet} -d {network} -j RETURN"));
        nat.push(format!(
            "-s {subnet} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"
        ));
    }
    vec![
        Chain {
            table: "nat",
            name: "HPK-POSTRTG".into(),
            parent: "POSTROUTING",
            rules: nat,
        },
        Chain {
            table: "filter",
            name: "HPK-FWD".into(),
            parent: "FORWARD",
            rules: vec![
                format!("-s {subnet} -j ACCEPT"),
                format!("-d {subnet} -j ACCEPT"),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::firewall::restore_script;

    #[test]
    fn bubble_masquerade_skips_the_overlay() {
        let (s, n) = (
            "10.244.3.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        let script = restore_script(&bubble_chains(s, n, true));
        assert!(script.contains("-A HPK-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -j RETURN\n"));
        assert!(script.contains("-j MASQUERADE"));
        let off = restore_script(&bubble_chains(s, n, false));
        assert!(!off.contains("MASQUERADE"));
        assert!(
            off.contains(":HPK-POSTRTG - [0:0]\n-F HPK-POSTRTG\n"),
            "an empty chain is still flushed"
        );
        assert!(off.contains("-A HPK-FWD -d 10.244.3.0/24 -j ACCEPT"));
    }
}
