//! skopeo copies images between registries, archives and OCI layouts. It is the field's
//! tool for this (TLS, auth files, registries.conf, signature policy, manifest lists): we
//! call it rather than re-implement a registry client.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

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
/// ("permission denied"): point it at a signature store in our cache instead. `rootless`:
/// not real root.
pub fn own_registries_d(cache: &Path, rootless: bool) -> Result<Option<std::path::PathBuf>> {
    if !rootless || !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let dir = cache.join("registries.d");
    let store = cache.join("sigstore");
    for d in [&dir, &store] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let config = dir.join("default.yaml");
    std::fs::write(
        &config,
        format!("default-docker:\n  lookaside: file://{}\n", store.display()),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    Ok(Some(dir))
}
