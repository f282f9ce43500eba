//! Files that are either entirely old or entirely new: written to a temporary name, made
//! durable, then renamed over the old one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Appended to a file's name while it is written (the longest name it ever has).
pub const TMP_SUFFIX: &str = ".tmp";

/// Writes `data` to `path` atomically with permission bits `mode`, creating its
/// directory. With `durable`, the data reaches the disk before the rename, so a crash
/// leaves the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `path` and its missing parents as directories only their owner may enter
/// (hpk-netd's and the bubble's state holds nothing others need).
pub fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}
