//! The programs a bubble needs, found up front so that a missing one is named with the
//! Debian package that provides it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// `name` on `PATH`, if it is there.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` on `PATH`, or an error naming the package to install.
pub fn require(name: &str, package: &str) -> Result<PathBuf> {
    match find_on_path(name) {
        Some(p) => Ok(p),
        None => bail!("{name} not found on PATH: install it (Debian package {package})"),
    }
}

/// One of hpktainer's own programs: next to this binary first (a release's bin/, or
/// cargo's target dir), then on `PATH`.
pub fn find_ours(name: &str) -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| is_executable(p));
    match beside.or_else(|| find_on_path(name)) {
        Some(p) => Ok(p),
        None => bail!(
            "{name} not found next to hpk-bubble or on PATH: run `make binaries` and put bin/ on PATH"
        ),
    }
}
