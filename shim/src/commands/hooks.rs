//! `hpktainer hooks install|uninstall`: oci-hooks(5) files for Podman/CRI-O, a CDI spec
//! for SingularityCE, and the `hooks` snippet for hand-made bundles.

use std::path::Path;

use anyhow::{Context, Result};

use super::Ctx;
use crate::cli::{HooksDirs, HooksInstallArgs};
use crate::hookset::{find_hook, HookSet};

/// Writes `path` only when its content differs (idempotent, and no needless mtime bump
/// that would make Podman reload).
fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

fn pretty<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("serializes");
    out.push(b'\n');
    out
}

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
        let changed = write_if_changed(&path, &pretty(&file))?;
        println!(
            "{} {}",
            if changed { "wrote" } else { "unchanged" },
            path.display()
        );
    }
    let path = a.dirs.cdi.join(HookSet::cdi_file_name());
    let changed = write_if_changed(&path, &pretty(&hooks.cdi_spec()))?;
    println!(
        "{} {}",
        if changed { "wrote" } else { "unchanged" },
        path.display()
    );
    Ok(())
}

pub fn uninstall(dirs: &HooksDirs) -> Result<()> {
    let mut paths: Vec<_> = ["createRuntime", "poststop"]
        .iter()
        .map(|s| dirs.podman.join(format!("hpktainer-{s}.json")))
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
