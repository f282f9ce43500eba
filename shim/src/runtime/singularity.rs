//! SingularityCE >= 4 runs OCI containers with `--oci` and applies CDI devices: ours
//! carries only the hooks. `--net --network none` gives the container a network namespace
//! with loopback, and our createRuntime hook adds tap0.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::hookset::{CDI_DEVICE, CDI_KIND};

#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// SRC:DST[:ro], as SingularityCE writes them.
    pub binds: Vec<String>,
    pub cwd: Option<String>,
    /// The directory holding our CDI spec.
    pub cdi_dir: PathBuf,
    /// `--network none`: no CDI device.
    pub no_network: bool,
    /// The user's CDI devices (GPUs included), and the directories of their specs.
    pub devices: Vec<String>,
    pub device_cdi_dirs: Vec<PathBuf>,
}

/// `singularity run|exec --oci --net --network none --device hpktainer.io/net=net
/// --cdi-dirs DIR [...] IMAGE [CMD...]`: `run` for the image's own command, `exec` for
/// ours.
pub fn command(singularity: &Path, inv: &Invocation) -> Result<Command> {
    if inv.image.is_empty() {
        bail!("no image given");
    }
    let mut cmd = Command::new(singularity);
    cmd.arg(if inv.args.is_empty() { "run" } else { "exec" });
    cmd.args(["--oci", "--net", "--network", "none"]);
    let mut dirs = Vec::new();
    if !inv.no_network {
        cmd.arg("--device").arg(format!("{CDI_KIND}={CDI_DEVICE}"));
        dirs.push(inv.cdi_dir.display().to_string());
    }
    for d in &inv.devices {
        cmd.arg("--device").arg(d);
    }
    if !inv.devices.is_empty() {
        dirs.extend(inv.device_cdi_dirs.iter().map(|d| d.display().to_string()));
    }
    // --cdi-dirs replaces SingularityCE's own list: ours and the user's, in one list.
    if !dirs.is_empty() {
        cmd.arg("--cdi-dirs").arg(dirs.join(","));
    }
    for e in &inv.env {
        cmd.arg("--env").arg(e);
    }
    for b in &inv.binds {
        cmd.arg("--bind").arg(b);
    }
    if let Some(c) = &inv.cwd {
        cmd.arg("--pwd").arg(c);
    }
    cmd.arg(&inv.image).args(&inv.args);
    Ok(cmd)
}
