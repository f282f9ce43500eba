//! NAT and forwarding rules, in chains of our own so they can be rewritten idempotently.
//!
//! Each chain is replaced whole with one `iptables-restore --noflush` (atomic, and a
//! restart rewrites rather than duplicates), then a single jump into it is ensured.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;

/// One chain of ours: its table, the built-in chain that jumps to it, and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub table: &'static str,
    pub name: String,
    pub parent: &'static str,
    /// Rule specifications, without `-A CHAIN`.
    pub rules: Vec<String>,
}

/// A firewall backend.
pub trait Firewall: Send + Sync {
    /// Makes each chain hold exactly its rules and be jumped to from its parent.
    fn apply(&self, chains: &[Chain]) -> Result<()>;

    /// Whether the chains are in place with their jumps (for periodic checks).
    fn intact(&self, chains: &[Chain]) -> bool;
}

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

/// The `iptables-restore --noflush` input that replaces the chains' contents.
pub fn restore_script(chains: &[Chain]) -> String {
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let mine: Vec<_> = chains.iter().filter(|c| c.table == table).collect();
        if mine.is_empty() {
            continue;
        }
        out += &format!("*{table}\n");
        for c in &mine {
            out += &format!(":{} - [0:0]\n-F {}\n", c.name, c.name);
        }
        for c in &mine {
            for rule in &c.rules {
                out += &format!("-A {} {rule}\n", c.name);
            }
        }
        out += "COMMIT\n";
    }
    out
}

/// iptables (Debian's default, nft-backed) through `iptables-restore`.
pub struct Iptables;

fn iptables(args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| anyhow!("cannot run iptables ({e}): install the iptables package"))
}

fn has_jump(c: &Chain) -> bool {
    iptables(&["-w", "-t", c.table, "-C", c.parent, "-j", &c.name])
        .is_ok_and(|o| o.status.success())
}

impl Firewall for Iptables {
    fn apply(&self, chains: &[Chain]) -> Result<()> {
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow!("cannot run iptables-restore ({e}): install the iptables package")
            })?;
        // Written and closed before waiting; waited for even if the write failed.
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(restore_script(chains).as_bytes());
        let out = child
            .wait_with_output()
            .context("waiting for iptables-restore")?;
        written.context("writing to iptables-restore")?;
        if !out.status.success() {
            bail!(
                "iptables-restore refused our rules: {} (CAP_NET_ADMIN over this network namespace is needed)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for c in chains {
            if has_jump(c) {
                continue;
            }
            let add = iptables(&["-w", "-t", c.table, "-I", c.parent, "1", "-j", &c.name])?;
            if !add.status.success() {
                bail!(
                    "iptables -t {} -I {} -j {}: {}",
                    c.table,
                    c.parent,
                    c.name,
                    String::from_utf8_lossy(&add.stderr).trim()
                );
            }
        }
        Ok(())
    }

    fn intact(&self, chains: &[Chain]) -> bool {
        chains.iter().all(|c| {
            has_jump(c)
                && c.rules.iter().all(|r| {
                    let spec: Vec<&str> = r.split_whitespace().collect();
                    let mut args = vec!["-w", "-t", c.table, "-C", &c.name];
                    args.extend(spec);
                    iptables(&args).is_ok_and(|o| o.status.success())
                })
        })
    }
}

/// How often firewall rules are checked and restored.
const RULE_CHECK: Duration = Duration::from_secs(5);

/// Checks `chains` every few seconds and restores them when something removed them.
pub async fn keep(firewall: Arc<dyn Firewall>, chains: Vec<Chain>) {
    let mut tick = tokio::time::interval(RULE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (fw, c) = (firewall.clone(), chains.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if !fw.intact(&c) {
                match fw.apply(&c) {
                    Ok(()) => tracing::warn!(chains = ?c.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), "firewall rules were missing; restored them"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot restore firewall rules"),
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> (Ipv4Net, Ipv4Net) {
        (
            "10.244.3.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        )
    }

    #[test]
    fn bubble_masquerade_skips_the_overlay() {
        let (s, n) = nets();
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

    #[test]
    fn flannel_rules_in_flanneld_order() {
        let (s, n) = nets();
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
