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

    /// A number that moves whenever any rule may have changed, where the backend has one:
    /// while it stands still, rules found intact are intact still.
    fn generation(&self) -> Option<u32> {
        None
    }
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

    /// iptables-nft's rules live in nftables, whose ruleset has a generation; legacy
    /// iptables' have none.
    fn generation(&self) -> Option<u32> {
        static NFT_BACKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let nft_backed = *NFT_BACKED.get_or_init(|| {
            iptables(&["--version"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"))
        });
        nft_backed
            .then(crate::sys::nft_generation::current)
            .and_then(Result::ok)
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

/// Checks `chains` every few seconds and restores them when something removed them. A
/// check whose ruleset generation has not moved since the rules were last found intact
/// is skipped: an idle bubble then runs no iptables at all.
pub async fn keep(firewall: Arc<dyn Firewall>, chains: Vec<Chain>) {
    keep_every(RULE_CHECK, firewall, chains).await
}

async fn keep_every(every: Duration, firewall: Arc<dyn Firewall>, chains: Vec<Chain>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut verified: Option<u32> = None;
    loop {
        tick.tick().await;
        let (fw, c) = (firewall.clone(), chains.clone());
        let checked = tokio::task::spawn_blocking(move || {
            // Read before the check: a change during it moves the number again.
            let generation = fw.generation();
            if generation.is_some() && generation == verified {
                return verified;
            }
            if fw.intact(&c) {
                return generation;
            }
            match fw.apply(&c) {
                Ok(()) => tracing::warn!(chains = ?c.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), "firewall rules were missing; restored them"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot restore firewall rules"),
            }
            None
        })
        .await;
        verified = checked.unwrap_or(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};

    /// A firewall that counts: its generation (0: it has none), whether its rules are
    /// intact, how often they were checked and applied, and the keeper's ticks (it asks
    /// for the generation once a tick).
    #[derive(Default)]
    struct Counting {
        generation: AtomicU32,
        broken: AtomicBool,
        checks: AtomicUsize,
        applied: AtomicUsize,
        ticks: AtomicUsize,
    }

    impl Firewall for Counting {
        fn apply(&self, _: &[Chain]) -> Result<()> {
            self.applied.fetch_add(1, SeqCst);
            self.broken.store(false, SeqCst);
            Ok(())
        }
        fn intact(&self, _: &[Chain]) -> bool {
            self.checks.fetch_add(1, SeqCst);
            !self.broken.load(SeqCst)
        }
        fn generation(&self) -> Option<u32> {
            self.ticks.fetch_add(1, SeqCst);
            Some(self.generation.load(SeqCst)).filter(|&g| g != 0)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rules_are_checked_again_only_when_the_generation_moves() {
        let fw = Arc::new(Counting {
            generation: AtomicU32::new(1),
            ..Counting::default()
        });
        let every = Duration::from_millis(10);
        let keeper = tokio::spawn(keep_every(every, fw.clone(), vec![]));
        // Waits (at most 10 s: a loaded machine) for what must happen.
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let end = std::time::Instant::now() + Duration::from_secs(10);
            let ok = loop {
                if done() {
                    break true;
                }
                if std::time::Instant::now() > end {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            assert!(ok, "{what}");
        };
        // The keeper's next `n` ticks, counted, not timed: a tick that began has asked
        // for the generation, and one more began only after it ended.
        let ticks = |n: usize| {
            let from = fw.ticks.load(SeqCst);
            until(&format!("{n} ticks of the keeper"), &|| {
                fw.ticks.load(SeqCst) > from + n
            });
        };
        ticks(10);
        assert_eq!(fw.checks.load(SeqCst), 1, "checked while nothing changed");
        // Something changed the ruleset, and removed our rules: restored, and checked
        // again at the next tick whatever the generation says.
        fw.broken.store(true, SeqCst);
        fw.generation.store(2, SeqCst);
        until("restored and checked again", &|| {
            fw.applied.load(SeqCst) == 1 && fw.checks.load(SeqCst) >= 3
        });
        fw.generation.store(3, SeqCst); // (the restore itself moves it)
        until("checked after the restore", &|| fw.checks.load(SeqCst) >= 4);
        ticks(3);
        let settled = fw.checks.load(SeqCst);
        ticks(10);
        assert_eq!(
            fw.checks.load(SeqCst),
            settled,
            "checked while nothing changed"
        );
        // A backend without a generation is checked at every tick.
        fw.generation.store(0, SeqCst);
        until("checks at every tick", &|| {
            fw.checks.load(SeqCst) >= settled + 3
        });
        keeper.abort();
    }
}
