//! NAT and forwarding rules, in chains of our own so they can be rewritten idempotently.
//!
//! Each chain is replaced whole with one `iptables-restore --noflush` (atomic, and a
//! restart rewrites rather than duplicates), then a single jump into it is ensured.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

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
