//! umoci unpacks OCI images into root filesystems: layer order, whiteouts, opaque
//! directories, modes and links, and a rootless mode that needs no chown. We call it
//! rather than re-implement layer unpacking.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::tool;

/// `umoci unpack [--rootless] --image LAYOUT:TAG BUNDLE`: BUNDLE/rootfs and a config.json
/// carrying the image's command, environment, user and working directory.
pub fn unpack(layout: &Path, tag: &str, bundle: &Path, rootless: bool) -> Result<()> {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if rootless {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle);
    tool::output(cmd, "cannot unpack the image").map(drop)
}
