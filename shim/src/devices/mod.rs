//! Devices for containers: CDI devices (`--device VENDOR/CLASS=NAME`), plain device nodes
//! (`--device /dev/PATH[:CONTAINER_PATH][:rwm]`, as Podman has them), NVIDIA GPUs
//! (`--gpus`, `--nv`) and resource limits (`--ulimit`). Everything is checked by
//! [`resolve`] before a container exists, then written into its config.json by
//! [`Resolved::apply`].

pub mod cdi;
pub mod edits;
pub mod gpus;
pub mod registry;
pub mod ulimit;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{PosixRlimit, Spec};

use crate::cli::RunOpts;
use crate::rootless::IdMappings;
use edits::Edit;

/// Where CDI specs live unless --cdi-spec-dir / CDI_SPEC_DIRS say otherwise; the later
/// directory wins when both define a device.
pub const DEFAULT_CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// What the user's device and limit options came to.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    pub edits: Vec<Edit>,
    pub rlimits: Vec<PosixRlimit>,
    /// The CDI devices asked for, GPUs included (`nvidia.com/gpu=0`), for runtimes that
    /// apply CDI themselves (SingularityCE).
    pub cdi_names: Vec<String>,
    /// The plain `--device` arguments.
    pub plain: Vec<String>,
    pub cdi_dirs: Vec<PathBuf>,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.rlimits.is_empty()
    }

    /// Writes the edits and limits into `spec`; `rootless`: the container's id mappings.
    pub fn apply(&self, spec: &mut Spec, rootless: Option<&IdMappings>) -> Result<()> {
        // Nothing asked: the spec stays as built (edits re-sort its mounts).
        if self.is_empty() {
            return Ok(());
        }
        edits::apply(spec, &self.edits, rootless)?;
        ulimit::apply(spec, &self.rlimits);
        Ok(())
    }
}

/// The CDI directories: the user's, else the defaults.
pub fn cdi_dirs(opts: &RunOpts) -> Vec<PathBuf> {
    if opts.cdi_spec_dir.is_empty() {
        DEFAULT_CDI_DIRS.iter().map(PathBuf::from).collect()
    } else {
        opts.cdi_spec_dir.clone()
    }
}

/// Checks every device and limit the user asked for against the specs and this host.
pub fn resolve(opts: &RunOpts, rootless: bool) -> Result<Resolved> {
    let mut out = Resolved {
        cdi_dirs: cdi_dirs(opts),
        rlimits: opts
            .ulimit
            .iter()
            .map(|u| ulimit::parse(u))
            .collect::<Result<_>>()?,
        ..Resolved::default()
    };
    let mut names = Vec::new();
    for d in &opts.device {
        if d.starts_with('/') {
            out.edits.push(plain(d, rootless)?);
            out.plain.push(d.clone());
        } else {
            names.push(d.clone());
        }
    }
    let gpus = match (&opts.gpus, opts.nv) {
        (Some(g), _) => Some(g.as_str()),
        (None, true) => Some("all"),
        (None, false) => None,
    };
    if names.is_empty() && gpus.is_none() {
        return Ok(out);
    }
    let reg = registry::Registry::load(&out.cdi_dirs)?;
    if let Some(which) = gpus {
        names.extend(gpus::names(which, &reg, |n| std::env::var(n).ok())?);
    }
    let mut seen_specs = Vec::new();
    let mut seen_devices = Vec::new();
    for text in &names {
        let (kind, name) = cdi::parse_name(text).context("--device")?;
        for (loaded, device) in reg.resolve(&kind, &name)? {
            let key = (loaded.path.clone(), device.name.clone());
            if seen_devices.contains(&key) {
                continue;
            }
            seen_devices.push(key);
            let file = loaded.path.display();
            if !seen_specs.contains(&loaded.path) {
                seen_specs.push(loaded.path.clone());
                let origin = format!("{kind} in {file}");
                out.edits
                    .push(edit(&loaded.spec.container_edits, origin, rootless)?);
            }
            let origin = format!("{kind}={} in {file}", device.name);
            out.edits
                .push(edit(&device.container_edits, origin, rootless)?);
        }
        out.cdi_names.push(text.clone());
    }
    Ok(out)
}

fn edit(e: &cdi::Edits, origin: String, rootless: bool) -> Result<Edit> {
    let nodes = e
        .device_nodes
        .iter()
        .map(|n| edits::node(n, &origin, rootless))
        .collect::<Result<_>>()?;
    Ok(Edit {
        env: e.env.clone(),
        nodes,
        mounts: e.mounts.clone(),
        hooks: e.hooks.clone(),
        gids: e.additional_gids.clone(),
        origin,
    })
}

fn is_permissions(s: &str) -> bool {
    !s.is_empty() && s.len() <= 3 && s.chars().all(|c| "rwm".contains(c))
}

/// `--device /dev/PATH[:CONTAINER_PATH][:rwm]`; a directory brings every device node
/// under it (`/dev/infiniband`, `/dev/dri`).
pub fn plain(arg: &str, rootless: bool) -> Result<Edit> {
    let parts: Vec<&str> = arg.split(':').collect();
    let (host, dest, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if is_permissions(p) => (*h, *h, *p),
        [h, d] => (*h, *d, "rwm"),
        [h, d, p] => (*h, *d, *p),
        _ => bail!("--device {arg}: expected /dev/PATH[:CONTAINER_PATH][:PERMISSIONS]"),
    };
    if !is_permissions(perms) {
        bail!("--device {arg}: permissions {perms:?} are not a subset of rwm");
    }
    if !dest.starts_with('/') {
        bail!("--device {arg}: the container path {dest:?} must be absolute");
    }
    let origin = format!("--device {arg}");
    let meta = std::fs::metadata(host)
        .with_context(|| format!("device node {host} ({origin}) cannot be reached here"))?;
    let mut found = Vec::new();
    if meta.is_dir() {
        collect_nodes(Path::new(host), &mut found)?;
        if found.is_empty() {
            bail!("--device {arg}: {host} holds no device nodes");
        }
    } else {
        found.push(PathBuf::from(host));
    }
    let mut nodes = Vec::new();
    for path in found {
        let rel = path.strip_prefix(host).unwrap_or(Path::new(""));
        let inside = if rel.as_os_str().is_empty() {
            PathBuf::from(dest)
        } else {
            Path::new(dest).join(rel)
        };
        let spec = cdi::DeviceNode {
            path: inside.display().to_string(),
            host_path: Some(path.display().to_string()),
            permissions: Some(perms.to_string()),
            ..Default::default()
        };
        nodes.push(edits::node(&spec, &origin, rootless)?);
    }
    Ok(Edit {
        origin,
        nodes,
        ..Edit::default()
    })
}

fn collect_nodes(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect_nodes(&e.path(), out)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            out.push(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_devices_parse_as_podman_writes_them() {
        let e = plain("/dev/null", false).unwrap();
        assert_eq!(e.nodes[0].path, "/dev/null");
        let e = plain("/dev/null:r", false).unwrap();
        assert_eq!(
            (e.nodes[0].path.as_str(), e.nodes[0].access.as_str()),
            ("/dev/null", "r")
        );
        let e = plain("/dev/zero:/dev/z:rw", false).unwrap();
        assert_eq!(e.nodes[0].path, "/dev/z");
        assert_eq!(e.nodes[0].host, Path::new("/dev/zero"));
        assert!(plain("/dev/null:/x:rwx", false).is_err());
        assert!(plain("/dev/null:rel", false).is_err());
        let e = format!("{:#}", plain("/dev/no-such-device", false).unwrap_err());
        assert!(e.contains("/dev/no-such-device"), "{e}");
        // A directory: every node under it, placed under the container path.
        let e = plain("/dev/pts:/p", false).unwrap();
        assert!(e.nodes.iter().all(|n| n.path.starts_with("/p/")), "{e:?}");
    }
}
