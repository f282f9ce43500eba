//! flanneld's `--ip-masq` rules, for nodes where our agent stands in for it.

use ipnet::Ipv4Net;

use crate::sys::firewall::Chain;

/// flanneld's `--ip-masq` and forward rules, in the same order, in chains of ours.
pub fn flannel_chains(own: Ipv4Net, network: Ipv4Net) -> Vec<Chain> {
    vec![
        Chain {
            table: "nat",
            name: "HPK-FLANNEL-POSTRTG".into(),
            parent: "POSTROUTING",
            rules: vec![
                "-m mark --mark 0x4000/0x4000 -j RETURN".into(),
                format!("-s {own} -d {network} -j RETURN"),
                format!("-s {network} -d {own} -j RETURN"),
                format!("! -s {network} -d {own} -j RETURN"),
                format!("-s {network} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"),
                format!("! -s {network} -d {network} -j MASQUERADE --random-fully"),
            ],
        },
        Chain {
            table: "filter",
            name: "HPK-FLANNEL-FWD".into(),
            parent: "FORWARD",
            rules: vec![
                format!("-s {network} -j ACCEPT"),
                format!("-d {network} -j ACCEPT"),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::firewall::restore_script;

    #[test]
    fn flannel_rules_in_flanneld_order() {
        let (s, n) = (
            "10.244.3.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        let chains = flannel_chains(s, n);
        assert_eq!(
            chains[0].rules,
            [
                "-m mark --mark 0x4000/0x4000 -j RETURN",
                "-s 10.244.3.0/24 -d 10.244.0.0/16 -j RETURN",
                "-s 10.244.0.0/16 -d 10.244.3.0/24 -j RETURN",
                "! -s 10.244.0.0/16 -d 10.244.3.0/24 -j RETURN",
                "-s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully",
                "! -s 10.244.0.0/16 -d 10.244.0.0/16 -j MASQUERADE --random-fully",
            ]
        );
        let script = restore_script(&chains);
        assert!(script.starts_with("*nat\n:HPK-FLANNEL-POSTRTG - [0:0]\n"));
        assert!(script.contains("*filter\n:HPK-FLANNEL-FWD - [0:0]\n"));
    }
}
