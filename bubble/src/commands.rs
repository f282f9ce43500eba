//! `hpk-bubble wait` and `hpk-bubble list`.

use std::time::Duration;

use anyhow::{bail, Result};
use hpk_netd::sys::process::ProcId;

use crate::cli::{ListArgs, WaitArgs};
use crate::record::{self, SharedDir};

/// Waits for bubble ID's record; with `--watch PID`, fails as soon as PID exits (its
/// launcher failed), so a Slurm script does not wait out the whole timeout.
pub fn wait(args: WaitArgs) -> Result<()> {
    let shared = SharedDir::open(&args.shared.shared_dir)?;
    let watched = args.watch.map(|pid| (pid, ProcId::of(pid)));
    let record = record::wait_for(
        &format!("bubble {}", args.id),
        Duration::from_secs(args.timeout),
        || shared.read(args.id),
        || match watched {
            Some((pid, p)) if !p.is_some_and(|p| p.alive()) => bail!(
                "bubble {}'s launcher (PID {pid}) exited before it was ready; see {}",
                args.id,
                shared.log_path(args.id, "init").display()
            ),
            _ => Ok(()),
        },
    )?;
    println!(
        "bubble {} ready on {} ({}), subnet {}",
        record.id, record.host, record.host_ip, record.subnet
    );
    Ok(())
}

pub fn list(args: ListArgs) -> Result<()> {
    let shared = SharedDir::open(&args.shared.shared_dir)?;
    let records = shared.list()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    println!(
        "{:<4} {:<11} {:<16} {:<16} {:<18} {:<12} {:<12} PID",
        "ID", "ROLE", "HOST", "ADDRESS", "SUBNET", "UPLINK", "UNDERLAY"
    );
    for r in records {
        println!(
            "{:<4} {:<11} {:<16} {:<16} {:<18} {:<12} {:<12} {}",
            r.id,
            r.role.to_string(),
            r.host,
            r.host_ip.to_string(),
            r.subnet,
            r.uplink.to_string(),
            r.underlay.to_string(),
            r.init.pid
        );
    }
    Ok(())
}
