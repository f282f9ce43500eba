//! `hpktainer logs NAME`: what a detached container wrote.

use std::io::Write;

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::state::ContainerDir;

pub fn logs(ctx: &Ctx, name: &str) -> Result<()> {
    let dir = ContainerDir::open(&ctx.paths.containers, name)?;
    let path = dir.log();
    if !path.exists() {
        bail!("container {name} has no log: only detached containers (-d) keep one");
    }
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut f, &mut out)?;
    out.flush()?;
    Ok(())
}
