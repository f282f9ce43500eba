//! `hpk-bubble shell ID`: a shell (or a command) inside a running bubble, as
//! `apptainer shell instance://bubbleID` gives one for the original tool.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cli::ShellArgs;
use crate::init::{mounts::RUN_DIR, netd};
use crate::record::{hostname, SharedDir};
use crate::tools;

pub fn run(args: ShellArgs) -> Result<()> {
    let shared = SharedDir::open(&args.shared.shared_dir)?;
    let Some(record) = shared.read(args.id)? else {
        bail!(
            "bubble {} is not running: no {} (`hpk-bubble list` shows the running ones)",
            args.id,
            shared.record_path(args.id).display()
        );
    };
    if record.host != hostname() {
        bail!(
            "bubble {} runs on {}, not here: run this there (e.g. srun -w {} ...)",
            args.id,
            record.host,
            record.host
        );
    }
    if !record.init.alive() {
        bail!(
            "bubble {} has stopped (its record {} is stale): start it again, or remove the record",
            args.id,
            shared.record_path(args.id).display()
        );
    }
    let mut cmd = Command::new(tools::require("nsenter", "util-linux")?);
    cmd.arg("-t")
        .arg(record.init.pid.to_string())
        .args(["--user", "--net", "--mount", "--pid", "--wd=/"])
        // The bubble cannot call setgroups: keep our supplementary groups as they are.
        .arg("--preserve-credentials")
        .env("HPKTAINER_ROOT", RUN_DIR)
        .env("HPK_NETD_SOCKET", netd::socket())
        .env("HPK_BUBBLE", args.id.to_string());
    crate::gpus::pass_from(&mut cmd, record.init.pid);
    if args.command.is_empty() {
        let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
        cmd.arg(shell);
    } else {
        cmd.args(&args.command);
    }
    Err(cmd.exec()).context("cannot run nsenter")
}
