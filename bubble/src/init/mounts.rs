//! The bubble's private file system layout: its own `/run` (hpk-netd's socket, flannel's
//! subnet.env), with the node-local state directory at `/run/hpktainer`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// Where hpk-netd and hpktainer keep their state inside the bubble.
pub const RUN_DIR: &str = "/run/hpktainer";

/// Mounts a fresh tmpfs on `/run` and binds `state_dir` at [`RUN_DIR`]. Directories that
/// lived under the host's `/run` (a state dir under `$XDG_RUNTIME_DIR`, say) are bound back
/// at their own paths, from handles opened before `/run` was covered.
pub fn setup(state_dir: &Path, shared_dir: &Path) -> Result<()> {
    let state = open_path(state_dir)?;
    let shared = open_path(shared_dir)?;
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .context("cannot mount a tmpfs on /run in the bubble")?;
    bind(&state, Path::new(RUN_DIR))?;
    for (fd, path) in [(&state, state_dir), (&shared, shared_dir)] {
        if path.starts_with("/run") {
            bind(fd, path)?;
        }
    }
    Ok(())
}

fn open_path(dir: &Path) -> Result<OwnedFd> {
    open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", dir.display()))
}

fn bind(from: &OwnedFd, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let source = format!("/proc/self/fd/{}", from.as_raw_fd());
    mount(
        Some(source.as_str()),
        to,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("cannot bind the bubble's state at {}", to.display()))
}
