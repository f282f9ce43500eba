//! Per-endpoint anti-spoofing on the bubble's bridge, in nftables' bridge family: frames
//! entering the bridge from a container's port must carry that container's MAC (derived
//! from its address) and, for IPv4 and ARP, its address. A container cannot take over a
//! neighbour's address or MAC (the bridge would otherwise learn it on the wrong port).
//!
//! One table `bridge hpk`: a prerouting chain dispatching on the input port through a
//! verdict map, and a chain per endpoint named after its port.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const TABLE: &str = "bridge hpk";

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The table, empty: made afresh at start-up (endpoints adopted then are guarded again).
pub fn reset_script() -> String {
    format!(
        "add table {TABLE}\ndelete table {TABLE}\nadd table {TABLE}\n\
         add chain {TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add map {TABLE} ports {{ type ifname : verdict; }}\n\
         add rule {TABLE} prerouting iifname vmap @ports\n"
    )
}

/// The rules of the endpoint on `port` (replacing any it had).
pub fn guard_script(port: &str, container_mac: [u8; 6], address: Ipv4Addr) -> String {
    let m = mac(container_mac);
    format!(
        "add chain {TABLE} {port}\nflush chain {TABLE} {port}\n\
         add rule {TABLE} {port} ether saddr != {m} counter drop\n\
         add rule {TABLE} {port} ether type arp arp saddr ether != {m} counter drop\n\
         add rule {TABLE} {port} ether type arp arp saddr ip != {address} counter drop\n\
         add rule {TABLE} {port} ether type ip ip saddr != {address} counter drop\n\
         add rule {TABLE} {port} ether type ip6 counter drop\n\
         add element {TABLE} ports {{ \"{port}\" : jump {port} }}\n"
    )
}

/// Removes the endpoint's rules (its map entry first, then its chain).
pub fn unguard_script(port: &str) -> String {
    format!("delete element {TABLE} ports {{ \"{port}\" }}\ndelete chain {TABLE} {port}\n")
}

/// Runs an nft script atomically (all of it or none).
pub fn run(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "cannot run nft (install nftables, or turn anti-spoofing off: antispoof = false)",
        )?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .context("cannot talk to nft")?;
    let out = child.wait_with_output().context("nft")?;
    if !out.status.success() {
        bail!(
            "nft refused the anti-spoofing rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_may_send_only_as_itself() {
        let s = guard_script(
            "hpk0123456789ab",
            [0x0a, 0x58, 10, 244, 3, 2],
            Ipv4Addr::new(10, 244, 3, 2),
        );
        assert!(
            s.contains("ether saddr != 0a:58:0a:f4:03:02 counter drop"),
            "{s}"
        );
        assert!(s.contains("arp saddr ip != 10.244.3.2 counter drop"), "{s}");
        assert!(s.contains("ip saddr != 10.244.3.2 counter drop"), "{s}");
        assert!(s.ends_with(
            "add element bridge hpk ports { \"hpk0123456789ab\" : jump hpk0123456789ab }\n"
        ));
        assert_eq!(
            unguard_script("hpkx"),
            "delete element bridge hpk ports { \"hpkx\" }\ndelete chain bridge hpk hpkx\n"
        );
    }
}
