//! skopeo copies images between registries, archives and OCI layouts. It is the field's
//! tool for this (TLS, auth files, registries.conf, signature policy, manifest lists): we
//! call it rather than re-implement a registry client.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::tool;

/// Where skopeo runs differently from plain `skopeo copy` (see [`Overrides::for_cache`]).
#[derive(Debug, Default)]
pub struct Overrides {
    /// Replaces the signature-storage configuration.
    pub registries_d: Option<std::path::PathBuf>,
    /// The registry credentials file to read.
    pub authfile: Option<std::path::PathBuf>,
}

/// `skopeo copy SRC oci:LAYOUT:TAG`; `insecure` skips TLS (plain HTTP registries).
pub fn copy(
    source: &str,
    layout: &Path,
    tag: &str,
    insecure: bool,
    overrides: &Overrides,
) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    if let Some(dir) = &overrides.registries_d {
        cmd.arg("--registries.d").arg(dir);
    }
    cmd.arg("copy").arg("--quiet");
    if let Some(file) = &overrides.authfile {
        cmd.arg("--authfile").arg(file);
    }
    if insecure {
        cmd.arg("--src-tls-verify=false");
    }
    cmd.arg(source)
        .arg(format!("oci:{}:{tag}", layout.display()));
    tool::output(cmd, &format!("cannot fetch image {source}")).map(drop)
}

impl Overrides {
    /// As root of a user namespace (a fakeroot bubble) skopeo believes it is root: it
    /// reads signatures from /var/lib/containers/sigstore and credentials from
    /// /run/containers/0/auth.json, which belong to the real root ("permission denied").
    /// Signatures then go to a store in our cache, and credentials are read from the
    /// cache's auth.json when the real root's are out of reach and REGISTRY_AUTH_FILE
    /// names none. `rootless`: not real root.
    pub fn for_cache(cache: &Path, rootless: bool) -> Result<Overrides> {
        if !rootless || !nix::unistd::geteuid().is_root() {
            return Ok(Overrides::default());
        }
        let root_auth = Path::new("/run/containers/0/auth.json");
        let authfile = (std::env::var_os("REGISTRY_AUTH_FILE").is_none() && unreadable(root_auth))
            .then(|| cache.join("auth.json"));
        Ok(Overrides {
            registries_d: Some(own_registries_d(cache)?),
            authfile,
        })
    }
}

/// Whether looking at `path` is refused (as opposed to it being absent).
fn unreadable(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// A signature-storage configuration pointing at a store in `cache`.
fn own_registries_d(cache: &Path) -> Result<std::path::PathBuf> {
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
    Ok(dir)
}
