//! The cluster's overlay key: 32 random bytes the controller's launcher writes beside the
//! etcd PKI (hex, 0600 in a 0700 directory) and every bubble's hpk-netd reads. Only the
//! job's user can read it; whoever holds it can speak on the overlay. A rotated file holds
//! the previous key on a second line: an hpk-netd started after the rotation still opens
//! what its peers seal with the previous key until they have followed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ring::rand::{SecureRandom, SystemRandom};

use crate::sys::fs::write_atomically;

/// Bytes of key material.
pub const LEN: usize = 32;

/// The per-cluster secret every VTEP derives its session keys from.
#[derive(Clone)]
pub struct ClusterKey([u8; LEN]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<ClusterKey> {
        let mut bytes = [0u8; LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
        Ok(ClusterKey(bytes))
    }

    pub fn from_bytes(bytes: [u8; LEN]) -> ClusterKey {
        ClusterKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }

    /// Writes the key to `path`, readable by its owner only.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        write_atomically(path, text.as_bytes(), 0o600, true)
    }

    /// Writes `self` as the current key and `previous` after it (a rotation).
    pub fn write_rotated(&self, previous: &ClusterKey, path: &Path) -> Result<()> {
        let hex = |k: &ClusterKey| k.0.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let text = format!("{}\n{}\n", hex(self), hex(previous));
        write_atomically(path, text.as_bytes(), 0o600, true)
    }

    /// Reads the current key of a key file; see [`ClusterKey::load_with_previous`].
    pub fn load(path: &Path) -> Result<ClusterKey> {
        Ok(Self::load_with_previous(path)?.0)
    }

    /// Reads a key file: the current key and, after a rotation, the previous one; refuses
    /// a file others may read or write.
    pub fn load_with_previous(path: &Path) -> Result<(ClusterKey, Option<ClusterKey>)> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cannot read the overlay key {}: the controller bubble writes it beside the \
                 etcd PKI in the shared directory",
                path.display()
            )
        })?;
        if meta.mode() & 0o077 != 0 {
            bail!(
                "the overlay key {} is open to other users (mode {:o}): chmod 0600 it, or \
                 restart the cluster to make a new one",
                path.display(),
                meta.mode() & 0o777
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the overlay key {}", path.display()))?;
        let bad = || {
            format!(
                "{} is no overlay key ({} hex digits expected, then the previous key's)",
                path.display(),
                2 * LEN
            )
        };
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let current = Self::parse(lines.next().unwrap_or("")).with_context(bad)?;
        let previous = lines
            .next()
            .map(Self::parse)
            .transpose()
            .with_context(bad)?;
        if lines.next().is_some() {
            bail!("{}", bad());
        }
        Ok((current, previous))
    }

    fn parse(hex: &str) -> Result<ClusterKey> {
        if hex.len() != 2 * LEN || !hex.is_ascii() {
            bail!("wrong length");
        }
        let mut bytes = [0u8; LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("not hex")?;
        }
        Ok(ClusterKey(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_keys_load_and_open_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("hpk-overlay-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("overlay.key");
        let key = ClusterKey::generate().unwrap();
        key.write(&path).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap().0, key.0);
        assert_ne!(ClusterKey::generate().unwrap().0, key.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", ClusterKey::load(&path).unwrap_err());
        assert!(e.contains("open to other users"), "{e}");
        std::fs::write(&path, "abcd\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = format!("{:#}", ClusterKey::load(&path).unwrap_err());
        assert!(e.contains("no overlay key"), "{e}");
        assert!(format!("{key:?}").contains(".."), "never printed");
        let next = ClusterKey::generate().unwrap();
        next.write_rotated(&key, &path).unwrap();
        let (current, previous) = ClusterKey::load_with_previous(&path).unwrap();
        assert_eq!((current.0, previous.map(|k| k.0)), (next.0, Some(key.0)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
