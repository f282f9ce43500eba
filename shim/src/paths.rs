//! Where hpktainer keeps its state, per user.
//!
//! | who | containers (run state) | image cache |
//! |---|---|---|
//! | real root | `/run/hpktainer/containers` | `/var/lib/hpktainer/images` |
//! | rootless | `$XDG_RUNTIME_DIR/hpktainer/containers` (else `/tmp/hpktainer-UID/containers`) | `$XDG_DATA_HOME/hpktainer/images` (else `~/.local/share/hpktainer/images`) |
//! | `HPKTAINER_ROOT` / `--root DIR` | `DIR/containers` | `DIR/images` |
//!
//! Run state is meant to vanish at reboot (so do the containers); images are kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Clone, Debug)]
pub struct Paths {
    /// One directory per container: bundle, record, log.
    pub containers: PathBuf,
    /// The runtimes' own state (`runc --root`), so our containers never mix with others.
    pub runtime_state: PathBuf,
    /// Image cache: the shared OCI layout and unpacked root filesystems.
    pub images: PathBuf,
    /// Generated configurations (the CDI spec SingularityCE reads).
    pub generated: PathBuf,
}

impl Paths {
    /// `real_root`: uid 0 in the initial user namespace (see [`crate::rootless::Ids`]).
    pub fn new(root: Option<&Path>, real_root: bool) -> Paths {
        let (run, data) = match root {
            Some(root) => (root.to_path_buf(), root.to_path_buf()),
            None if real_root => (
                PathBuf::from("/run/hpktainer"),
                PathBuf::from("/var/lib/hpktainer"),
            ),
            None => (rootless_run_dir(), rootless_data_dir()),
        };
        Paths {
            containers: run.join("containers"),
            runtime_state: run.join("runtime"),
            generated: run.join("generated"),
            images: data.join("images"),
        }
    }

    /// Creates the directories: ours owner-only, parents with the usual mode, since a
    /// parent like /run/hpktainer also holds hpk-netd's socket, which others must reach.
    pub fn ensure(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [
            &self.containers,
            &self.runtime_state,
            &self.images,
            &self.generated,
        ] {
            let what = || {
                format!(
                    "cannot create {} (set HPKTAINER_ROOT or --root to a writable directory)",
                    dir.display()
                )
            };
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).with_context(what)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(what),
            }
        }
        Ok(())
    }
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn rootless_run_dir() -> PathBuf {
    match env_dir("XDG_RUNTIME_DIR") {
        Some(dir) if dir.is_dir() => dir.join("hpktainer"),
        _ => PathBuf::from(format!("/tmp/hpktainer-{}", nix::unistd::geteuid())),
    }
}

fn rootless_data_dir() -> PathBuf {
    if let Some(dir) = env_dir("XDG_DATA_HOME") {
        return dir.join("hpktainer");
    }
    match env_dir("HOME") {
        Some(home) => home.join(".local/share/hpktainer"),
        None => PathBuf::from(format!("/tmp/hpktainer-{}/data", nix::unistd::geteuid())),
    }
}
