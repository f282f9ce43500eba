//! Apptainer has no `--oci` run mode with hooks; its `oci` commands run a bundle that we
//! may edit: `apptainer oci mount IMAGE BUNDLE`, our hooks and a network namespace into
//! BUNDLE/config.json, `apptainer oci run -b BUNDLE ID`, `apptainer oci umount BUNDLE`.
//! Root (or fakeroot, uid 0 in a user namespace) only. Apptainer clears the environment
//! of hooks, so ours carry PATH.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use oci_spec::runtime::Spec;

use crate::bundle;
use crate::environment::DEFAULT_PATH;
use crate::hookset::HookSet;

/// `apptainer oci` needs uid 0.
pub fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("Apptainer runs OCI bundles only as root or with --fakeroot (uid 0): run hpktainer in a fakeroot bubble, or choose --runtime runc");
    }
    Ok(())
}

pub fn mount_cmd(apptainer: &Path, image: &str, bundle: &Path) -> Command {
    let mut cmd = Command::new(apptainer);
    cmd.args(["oci", "mount", image]).arg(bundle);
    cmd
}

pub fn run_cmd(apptainer: &Path, bundle: &Path, id: &str) -> Command {
    let mut cmd = Command::new(apptainer);
    cmd.args(["oci", "run", "-b"]).arg(bundle).arg(id);
    cmd
}

pub fn umount_cmd(apptainer: &Path, bundle: &Path) -> Command {
    let mut cmd = Command::new(apptainer);
    cmd.args(["oci", "umount"]).arg(bundle);
    cmd
}

/// What the user overrides in the bundle Apptainer made from the image.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub annotations: HashMap<String, String>,
}

/// The edit of an Apptainer bundle's config.json: hooks (with PATH), network namespace,
/// annotations, and the user's command and environment.
pub fn edit_spec(spec: &mut Spec, hooks: Option<&HookSet>, o: &Overrides) {
    match hooks {
        Some(hooks) => {
            let mut hooks = hooks.clone();
            if !hooks.env.iter().any(|e| e.starts_with("PATH=")) {
                hooks.env.push(DEFAULT_PATH.into());
            }
            bundle::add_hooks_and_netns(spec, &hooks);
        }
        None => bundle::ensure_network_namespace(spec),
    }
    if !o.annotations.is_empty() {
        let mut a = spec.annotations().clone().unwrap_or_default();
        a.extend(o.annotations.clone());
        spec.set_annotations(Some(a));
    }
    if let Some(mut p) = spec.process().clone() {
        if !o.args.is_empty() {
            p.set_args(Some(o.args.clone()));
        }
        let mut env = p.env().clone().unwrap_or_default();
        env.extend(o.env.iter().cloned());
        p.set_env(Some(env));
        if let Some(c) = &o.cwd {
            p.set_cwd(c.into());
        }
        spec.set_process(Some(p));
    }
}

/// Edits `BUNDLE/config.json` in place, keeping what oci-spec does not know.
pub fn edit_bundle(bundle_dir: &Path, hooks: Option<&HookSet>, o: &Overrides) -> Result<()> {
    bundle::edit_config_with(bundle_dir, |spec| edit_spec(spec, hooks, o))
}
