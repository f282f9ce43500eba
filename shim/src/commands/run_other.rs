//! `run` through Apptainer or SingularityCE: they pull and build by themselves; we add
//! our hooks (a bundle edit, or a CDI device) and run them in the foreground.

use anyhow::{bail, Context, Result};
use tracing::info;

use super::run::Checked;
use super::{exit_code, run_in_foreground, Ctx};
use crate::cli::RunOpts;
use crate::files::{pretty_json, write_if_changed};
use crate::hookset::HookSet;
use crate::runtime::{apptainer, singularity};
use crate::state::ContainerDir;
use crate::tool;

fn no_detach(opts: &RunOpts, runtime: &str) -> Result<()> {
    if opts.detach {
        bail!("{runtime} runs are foreground only here: use --runtime runc or crun for -d");
    }
    if opts.user.is_some() || opts.hostname.is_some() {
        bail!("--user and --hostname are not passed to {runtime}: use --runtime runc or crun");
    }
    Ok(())
}

/// `apptainer oci mount`, our hooks into the bundle, `apptainer oci run`, `oci umount`.
pub fn apptainer(
    ctx: &Ctx,
    opts: &RunOpts,
    c: Checked,
    image: &str,
    command: &[String],
) -> Result<i32> {
    no_detach(opts, "Apptainer")?;
    apptainer::check_root()?;
    if !c.binds.is_empty() {
        bail!("-v/--bind is not passed to Apptainer OCI bundles here: use --runtime runc or crun");
    }
    // Under a lock like our own containers, so a sweep leaves a running one alone; the
    // bundle is one level down, where the sweep checks for a mount before removing.
    let dir = ContainerDir::new(ctx.paths.containers.join(format!(".apptainer-{}", c.name)));
    let bundle = dir.bundle();
    std::fs::create_dir_all(&bundle)
        .with_context(|| format!("cannot create {}", bundle.display()))?;
    let _lock = dir.lock_owner()?;
    let path = &c.runtime.path;
    let result = (|| {
        tool::output(
            apptainer::mount_cmd(path, image, &bundle),
            "apptainer oci mount",
        )?;
        let overrides = apptainer::Overrides {
            args: command.to_vec(),
            env: c.env.clone(),
            cwd: opts.workdir.clone(),
            annotations: c.annotations.clone(),
        };
        apptainer::edit_bundle(&bundle, c.hooks.as_ref(), &overrides)?;
        if !c.devices.is_empty() {
            // Apptainer's `oci` mode has no --nv or CDI of its own: the same edits as ours.
            let rootless = (!ctx.ids.is_real_root()).then(|| ctx.ids.mappings());
            let mut applied = Ok(());
            crate::bundle::edit_config_with(&bundle, |spec| {
                applied = c.devices.apply(spec, rootless.as_ref());
            })?;
            applied.context("applying the devices to Apptainer's bundle")?;
        }
        info!(container = %c.name, "starting with apptainer");
        let status = run_in_foreground(&mut apptainer::run_cmd(path, &bundle, &c.name))?;
        Ok(exit_code(status))
    })();
    let _ = tool::output(apptainer::umount_cmd(path, &bundle), "apptainer oci umount");
    let _ = crate::rootfs::remove_dir(&dir);
    result
}

/// `singularity run|exec --oci ... --device hpktainer.io/net=net --cdi-dirs DIR`.
pub fn singularity(
    ctx: &Ctx,
    opts: &RunOpts,
    c: Checked,
    image: &str,
    command: &[String],
) -> Result<i32> {
    no_detach(opts, "SingularityCE")?;
    if opts.ip.is_some() {
        bail!("--ip cannot reach the hook through SingularityCE's CDI device: use --runtime runc or crun");
    }
    if !c.devices.plain.is_empty() || !c.devices.rlimits.is_empty() {
        bail!("--device /dev/PATH and --ulimit are not passed to SingularityCE (its --oci mode takes CDI devices only): use a CDI device, or --runtime runc or crun");
    }
    let cdi_dir = ctx.paths.generated.join("cdi");
    if let Some(hooks) = &c.hooks {
        // Concurrent runs read it: written whole, and only when it changes.
        write_if_changed(
            &cdi_dir.join(HookSet::cdi_file_name()),
            &pretty_json(&hooks.cdi_spec()),
        )?;
    }
    let inv = singularity::Invocation {
        image: image.to_string(),
        args: command.to_vec(),
        env: c.env.clone(),
        binds: opts.bind.clone(),
        cwd: opts.workdir.clone(),
        cdi_dir,
        no_network: c.hooks.is_none(),
        devices: c.devices.cdi_names.clone(),
        device_cdi_dirs: c.devices.cdi_dirs.clone(),
    };
    let mut cmd = singularity::command(&c.runtime.path, &inv)?;
    info!(command = %tool::render(&cmd), "starting with singularity");
    Ok(exit_code(run_in_foreground(&mut cmd)?))
}
