//! Which container runtime runs a container, and how each is driven.
//!
//! Automatic choice, first found on PATH: runc, crun, apptainer, singularity. runc and crun
//! run a bundle we build (hooks in config.json); Apptainer and SingularityCE pull and build
//! by themselves and get our hooks through a bundle edit or a CDI device.

pub mod apptainer;
pub mod oci;
pub mod singularity;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tracing::debug;

/// The automatic order.
pub const AUTO_ORDER: [&str; 4] = ["runc", "crun", "apptainer", "singularity"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// runc, crun, or another program with runc's command line.
    Oci,
    Apptainer,
    Singularity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub kind: Kind,
    pub path: PathBuf,
}

impl Runtime {
    pub fn from_path(path: PathBuf) -> Runtime {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if name.contains("apptainer") {
            Kind::Apptainer
        } else if name.contains("singularity") {
            Kind::Singularity
        } else {
            Kind::Oci
        };
        Runtime { kind, path }
    }

    /// Short name for messages and `ps`.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    pub fn is_crun(&self) -> bool {
        self.name().starts_with("crun")
    }
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The runtime the user named (a name on PATH or a path), or the first found in
/// [`AUTO_ORDER`].
pub fn select(requested: Option<&str>) -> Result<Runtime> {
    match requested {
        Some(r) if r.contains('/') => {
            let p = PathBuf::from(r);
            if !is_executable(&p) {
                bail!("runtime {r} is not an executable file: pass --runtime NAME|PATH of an installed runtime");
            }
            debug!(runtime = %p.display(), "runtime chosen by --runtime / HPKTAINER_RUNTIME (a path)");
            Ok(Runtime::from_path(p))
        }
        Some(name) => match which(name) {
            Some(p) => {
                debug!(runtime = %p.display(), "runtime chosen by --runtime / HPKTAINER_RUNTIME");
                Ok(Runtime::from_path(p))
            }
            None => bail!("runtime {name} not found on PATH: install it, or pass --runtime with another name or a path"),
        },
        None => {
            for name in AUTO_ORDER {
                if let Some(p) = which(name) {
                    debug!(runtime = %p.display(), order = ?AUTO_ORDER,
                        "runtime chosen automatically: the first of the order found on PATH");
                    return Ok(Runtime::from_path(p));
                }
                debug!(runtime = name, "not on PATH");
            }
            bail!("no container runtime found: install runc or crun (or apptainer / singularity), or pass --runtime PATH")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_file_name() {
        assert_eq!(Runtime::from_path("/usr/bin/runc".into()).kind, Kind::Oci);
        assert_eq!(Runtime::from_path("/opt/crun".into()).kind, Kind::Oci);
        assert_eq!(
            Runtime::from_path("/usr/local/bin/apptainer".into()).kind,
            Kind::Apptainer
        );
        assert_eq!(
            Runtime::from_path("/usr/local/bin/singularity".into()).kind,
            Kind::Singularity
        );
        assert!(select(Some("no-such-runtime-xyz")).is_err());
        assert!(select(Some("/no/such/runtime")).is_err());
    }
}
