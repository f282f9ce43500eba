//! A container's root filesystem on a cached image: an overlay (the image read-only below,
//! the container's writes in its own directory), so runs share one unpacked image and
//! never change it. Where overlay cannot be mounted (an unprivileged user outside any user
//! namespace), the image is used read-only with a tmpfs on /tmp.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::{debug, warn};

use crate::state::ContainerDir;

pub struct Prepared {
    pub rootfs: PathBuf,
    pub readonly: bool,
    pub tmpfs_tmp: bool,
    pub overlay: bool,
}

/// Prepares the rootfs for `dir` on `image_rootfs` (cached: overlay; the user's own
/// directory: used as it is, writable).
pub fn prepare(dir: &ContainerDir, image_rootfs: &Path, cached: bool) -> Result<Prepared> {
    if !cached {
        return Ok(Prepared {
            rootfs: image_rootfs.to_path_buf(),
            readonly: false,
            tmpfs_tmp: false,
            overlay: false,
        });
    }
    let target = dir.bundle().join("rootfs");
    let upper = dir.dir.join("upper");
    let work = dir.dir.join("work");
    for d in [&target, &upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_rootfs.display(),
        upper.display(),
        work.display()
    );
    // Inside a user namespace overlay keeps its metadata in user.* xattrs.
    let first = mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    );
    let result = first.or_else(|_| {
        let data = format!("{data},userxattr");
        mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
    });
    match result {
        Ok(()) => {
            debug!(rootfs = %target.display(), "overlay on the cached image");
            Ok(Prepared {
                rootfs: target,
                readonly: false,
                tmpfs_tmp: false,
                overlay: true,
            })
        }
        Err(e) => {
            warn!("cannot mount an overlay here ({e}): the image's root filesystem is read-only, /tmp is a tmpfs");
            Ok(Prepared {
                rootfs: image_rootfs.to_path_buf(),
                readonly: true,
                tmpfs_tmp: true,
                overlay: false,
            })
        }
    }
}

/// Unmounts the overlay, if one is mounted (idempotent).
pub fn release(dir: &ContainerDir) {
    let target = dir.bundle().join("rootfs");
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) => debug!(rootfs = %target.display(), "overlay unmounted"),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => warn!("cannot unmount {}: {e}", target.display()),
    }
}

/// Removes a container directory, never through a still-mounted overlay.
pub fn remove_dir(dir: &ContainerDir) -> Result<()> {
    release(dir);
    let target = dir.bundle().join("rootfs");
    if is_mount_point(&target) {
        anyhow::bail!(
            "{} is still mounted: not removing it; `umount -l {}`, then `hpktainer prune`",
            target.display(),
            target.display()
        );
    }
    // Out of sight first: a concurrent sweep that took the lock of a directory half
    // removed would make a fresh owner.lock in it and keep it forever.
    let name = dir.dir.file_name().unwrap_or_default().to_string_lossy();
    let gone = dir
        .dir
        .with_file_name(format!(".gone-{name}-{}", std::process::id()));
    let target = match std::fs::rename(&dir.dir, &gone) {
        Ok(()) => gone,
        Err(_) => dir.dir.clone(),
    };
    std::fs::remove_dir_all(&target).with_context(|| format!("cannot remove {}", target.display()))
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}
