//! skopeo copies images between registries, archives and OCI layouts. It is the field's
//! tool for this (TLS, auth files, registries.conf, signature policy, manifest lists): we
//! call it rather than re-implement a registry client.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::tool;

/// `skopeo copy SRC oci:LAYOUT:TAG`; `insecure` skips TLS (plain HTTP registries);
/// `registries_d` replaces the signature-storage configuration (see [`own_registries_d`]).
pub fn copy(
    source: &str,
    layout: &Path,
    tag: &str,
    insecure: bool,
    registries_d: Option<&Path>,
) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    if let Some(dir) = registries_d {
        cmd.arg("--registries.d").arg(dir);
    }
    cmd.arg("copy").arg("--quiet");
    if insecure {
        cmd.arg("--src-tls-verify=false");
    }
    cmd.arg(source)
        .arg(format!("oci:{}:{tag}", layout.display()));
    tool::output(cmd, &format!("cannot fetch image {source}")).map(drop)
}

/// As root of a user namespace (a fakeroot bubble) skopeo believes it is root and reads
/// signatures from /var/lib/containers/sigstore, which the real user may not read
/// ("permission denied"): point it at a signature store in our cache instead.
pub fn own_registries_d(cache: &Path) -> Result<Option<std::path::PathBuf>> {
    if crate::rootless::is_real_root() || !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let dir = cache.join("registries.d");
    std::fs::create_dir_all(&dir)?;
    let store = cache.join("sigstore");
    std::fs::create_dir_all(&store)?;
    std::fs::write(
        dir.join("default.yaml"),
        format!("default-docker:\n  lookaside: file://{}\n", store.display()),
    )?;
    Ok(Some(dir))
}
