//! NAT and forwarding rules, in chains of our own so they can be rewritten idempotently.
//!
//! The chains are replaced whole with one `iptables-restore --noflush` (atomic, and a
//! restart rewrites rather than duplicates), then a single jump into each is ensured.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;

/// What the bubble needs from the firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The chain-name prefix, e.g. `HPK` gives `HPK-POSTRTG` and `HPK-FWD`.
    pub prefix: String,
    /// This bubble's subnet.
    pub subnet: Ipv4Net,
    /// The whole overlay: traffic inside it is never masqueraded.
    pub network: Ipv4Net,
    /// Masquerade traffic from the subnet that leaves the overlay.
    pub masquerade: bool,
}

/// A firewall backend.
pub trait Firewall: Send + Sync {
    fn apply(&self, rules: &Rules) -> Result<()>;
}

/// iptables (Debian's default, nft-backed) through `iptables-restore`.
pub struct Iptables;

impl Rules {
    fn nat_chain(&self) -> String {
        format!("{}-POSTRTG", self.prefix)
    }

    fn fwd_chain(&self) -> String {
        format!("{}-FWD", self.prefix)
    }

    /// The `iptables-restore` input that replaces our chains' contents.
    pub fn restore_script(&self) -> String {
        let (nat, fwd, s, n) = (
            self.nat_chain(),
            self.fwd_chain(),
            self.subnet,
            self.network,
        );
        let mut out = format!("*nat\n:{nat} - [0:0]\n-F {nat}\n");
        if self.masquerade {
            out += &format!("-A {nat} -s {s} -d {n} -j RETURN\n");
            out += &format!("-A {nat} -s {s} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully\n");
        }
        out += &format!("COMMIT\n*filter\n:{fwd} - [0:0]\n-F {fwd}\n");
        out += &format!("-A {fwd} -s {s} -j ACCEPT\n-A {fwd} -d {s} -j ACCEPT\nCOMMIT\n");
        out
    }
}

fn iptables(args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| anyhow!("cannot run iptables ({e}): install the iptables package"))
}

/// Ensures `table`'s `chain` jumps to `target` once, first.
fn ensure_jump(table: &str, chain: &str, target: &str) -> Result<()> {
    let check = iptables(&["-w", "-t", table, "-C", chain, "-j", target])?;
    if check.status.success() {
        return Ok(());
    }
    let add = iptables(&["-w", "-t", table, "-I", chain, "1", "-j", target])?;
    if !add.status.success() {
        bail!(
            "iptables -t {table} -I {chain} -j {target}: {}",
            String::from_utf8_lossy(&add.stderr).trim()
        );
    }
    Ok(())
}

impl Firewall for Iptables {
    fn apply(&self, rules: &Rules) -> Result<()> {
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow!("cannot run iptables-restore ({e}): install the iptables package")
            })?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(rules.restore_script().as_bytes())
            .context("writing to iptables-restore")?;
        let out = child
            .wait_with_output()
            .context("waiting for iptables-restore")?;
        if !out.status.success() {
            bail!(
                "iptables-restore refused our rules: {} (does this namespace allow netfilter changes? CAP_NET_ADMIN is needed)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        ensure_jump("nat", "POSTROUTING", &rules.nat_chain())?;
        ensure_jump("filter", "FORWARD", &rules.fwd_chain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_skips_the_overlay() {
        let rules = Rules {
            prefix: "HPK".into(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            network: "10.244.0.0/16".parse().unwrap(),
            masquerade: true,
        };
        let script = rules.restore_script();
        assert!(script.contains("-A HPK-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -j RETURN\n"));
        assert!(script.contains("-j MASQUERADE"));
        let off = Rules {
            masquerade: false,
            ..rules
        };
        assert!(!off.restore_script().contains("MASQUERADE"));
        assert!(off
            .restore_script()
            .contains("-A HPK-FWD -d 10.244.3.0/24 -j ACCEPT"));
    }
}
