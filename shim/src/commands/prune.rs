//! `hpktainer rm` and `hpktainer prune`.

use anyhow::{bail, Result};

use super::Ctx;
use crate::state::ContainerDir;
use crate::sweep::{self, Status};

pub fn rm(ctx: &Ctx, names: &[String], force: bool) -> Result<()> {
    let mut failed = Vec::new();
    for name in names {
        let result = (|| {
            let dir = ContainerDir::open(&ctx.paths.containers, name)?;
            let Some((record, seen)) = sweep::status_of(&dir, &ctx.paths.runtime_state) else {
                return crate::rootfs::remove_dir(&dir);
            };
            if matches!(seen.status, Status::Running | Status::Detached) && !force {
                bail!("{name} is running: `hpktainer stop {name}` first, or rm --force");
            }
            sweep::remove(&dir, &record, &ctx.paths.runtime_state, seen.in_runtime)
        })();
        if let Err(e) = result {
            eprintln!("hpktainer: {e:#}");
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!("could not remove {}", failed.join(", "));
    }
    Ok(())
}

pub fn prune(ctx: &Ctx) -> Result<()> {
    ctx.paths.ensure()?;
    let swept = sweep::sweep(&ctx.paths.containers, &ctx.paths.runtime_state, true);
    for name in swept.removed {
        println!("{name}");
    }
    Ok(())
}
