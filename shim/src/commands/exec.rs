//! `hpktainer exec NAME CMD...`: a command in a running container.

use std::io::IsTerminal;
use std::process::Stdio;

use anyhow::{bail, Result};

use super::{exit_code, run_in_foreground, Ctx};
use crate::cli::ExecArgs;
use crate::state::ContainerDir;
use crate::sweep::{self, Status};

pub fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let dir = ContainerDir::open(&ctx.paths.containers, &a.name)?;
    let Some((record, seen)) = sweep::status_of(&dir, &ctx.paths.runtime_state) else {
        bail!(
            "container {} has no readable record: `hpktainer rm {}`",
            a.name,
            a.name
        );
    };
    if !matches!(seen.status, Status::Running | Status::Detached) {
        bail!(
            "container {} is not running ({:?}): start a new one with `hpktainer run`",
            a.name,
            seen.status
        );
    }
    let Some(oci) = sweep::oci_for(&record, &ctx.paths.runtime_state) else {
        bail!(
            "exec works for runc and crun containers; {} runs under {}",
            a.name,
            record.runtime.name()
        );
    };
    let stdin_tty = std::io::stdin().is_terminal();
    let tty = a.tty && stdin_tty;
    let mut cmd = oci.exec(record.id(), tty, &a.env, a.workdir.as_deref(), &a.command);
    if !(a.interactive || a.tty) {
        cmd.stdin(Stdio::null());
    }
    // The runtime passes signals it gets on to the process it runs.
    Ok(exit_code(run_in_foreground(&mut cmd)?))
}
