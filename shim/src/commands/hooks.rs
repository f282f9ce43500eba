//! `hpktainer hooks install|uninstall`: oci-hooks(5) files for Podman/CRI-O, a CDI spec
//! for SingularityCE, and the `hooks` snippet for hand-made bundles.

use anyhow::{Context, Result};

use super::Ctx;
use crate::cli::{HooksDirs, HooksInstallArgs};
use crate::files::{pretty_json, write_if_changed};
use crate::hookset::{find_hook, HookSet, Stage};

pub fn install(ctx: &Ctx, a: &HooksInstallArgs) -> Result<()> {
    let hooks = HookSet::new(find_hook(a.hook.as_deref())?, &ctx.socket);
    if a.print_config_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"hooks": hooks.oci_hooks()}))?
        );
        return Ok(());
    }
    for (name, file) in hooks.oci_hook_files() {
        let path = a.dirs.podman.join(name);
        let changed = write_if_changed(&path, &pretty_json(&file))?;
        println!(
            "{} {}",
            if changed { "wrote" } else { "unchanged" },
            path.display()
        );
    }
    let path = a.dirs.cdi.join(HookSet::cdi_file_name());
    let changed = write_if_changed(&path, &pretty_json(&hooks.cdi_spec()))?;
    println!(
        "{} {}",
        if changed { "wrote" } else { "unchanged" },
        path.display()
    );
    Ok(())
}

pub fn uninstall(dirs: &HooksDirs) -> Result<()> {
    let mut paths: Vec<_> = Stage::ALL
        .iter()
        .map(|s| dirs.podman.join(s.hook_file_name()))
        .collect();
    paths.push(dirs.cdi.join(HookSet::cdi_file_name()));
    for p in paths {
        match std::fs::remove_file(&p) {
            Ok(()) => println!("removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(())
}
