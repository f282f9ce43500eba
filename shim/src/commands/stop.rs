//! `hpktainer stop NAME`: SIGTERM, a grace period, SIGKILL; then the runtime deletes the
//! container (poststop: its address goes back to hpk-netd). The log stays until `rm`,
//! unless the container was started with --rm.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use oci_spec::runtime::ContainerState;
use tracing::debug;

use super::Ctx;
use crate::state::ContainerDir;
use crate::sweep;

pub fn stop(ctx: &Ctx, names: &[String], grace: u64, remove: bool) -> Result<()> {
    let mut failed = Vec::new();
    for name in names {
        if let Err(e) = stop_one(ctx, name, grace, remove) {
            eprintln!("hpktainer: {e:#}");
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!("could not stop {}", failed.join(", "));
    }
    Ok(())
}

fn stop_one(ctx: &Ctx, name: &str, grace: u64, remove: bool) -> Result<()> {
    let dir = ContainerDir::open(&ctx.paths.containers, name)?;
    let mut record = dir.load()?;
    let Some(oci) = sweep::oci_for(&record, &ctx.paths.runtime_state) else {
        bail!("{name} runs under {}: stop it there", record.runtime.name());
    };
    let running = |o: &crate::runtime::oci::Oci| {
        o.state(record.id())
            .is_some_and(|s| !matches!(s.status(), ContainerState::Stopped))
    };
    if running(&oci) {
        let _ = oci.kill(record.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(grace);
        let mut pause = Duration::from_millis(10);
        while running(&oci) && Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        if running(&oci) {
            debug!(
                container = name,
                "still running after the grace period: SIGKILL"
            );
            let _ = oci.kill(record.id(), "KILL");
        }
    }
    // A foreground hpktainer cleans up after its own container; detached ones are ours.
    if !record.detached {
        return Ok(());
    }
    let Ok(Some(_lock)) = dir.lock_owner() else {
        return Ok(());
    };
    // Asked again under the lock: a sweep may have deleted it meanwhile.
    if remove || record.remove {
        sweep::remove(&dir, &record, &ctx.paths.runtime_state, None)?;
    } else {
        sweep::stop_in_runtime(&dir, &record, &ctx.paths.runtime_state, None);
        record.exited = true;
        dir.save(&record)?;
    }
    Ok(())
}
