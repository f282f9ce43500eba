//! The per-user image cache:
//!
//! ```text
//! images/layout/           one OCI layout shared by every image (blobs stored once)
//! images/refs/<key>.json   reference -> manifest digest (key: sha256 of the reference)
//! images/rootfs/<digest>/  rootfs/ + config.json, unpacked once, shared by every run
//! images/lock              held while pulling or unpacking
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub struct Cache {
    pub dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    digest: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    pub fn layout(&self) -> PathBuf {
        self.dir.join("layout")
    }

    /// Exclusive while pulling and unpacking: two runs of one image unpack it once.
    pub fn lock(&self) -> Result<Flock<File>> {
        for sub in ["refs", "rootfs"] {
            let d = self.dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        let f = File::create(self.dir.join("lock"))
            .with_context(|| format!("cannot open {}", self.dir.join("lock").display()))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("cannot lock the image cache: {e}"))
    }

    /// A tag for `key` in the shared layout (tags are limited to 128 characters).
    pub fn tag(key: &str) -> String {
        format!("hpk-{}", &sha256_hex(key.as_bytes())[..40])
    }

    fn ref_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("refs")
            .join(format!("{}.json", &sha256_hex(key.as_bytes())[..40]))
    }

    /// The digest `key` resolved to last time, if its rootfs is still there. Safe without
    /// the lock: refs and rootfs directories appear whole, by rename.
    pub fn lookup(&self, key: &str) -> Option<String> {
        let text = std::fs::read(self.ref_path(key)).ok()?;
        let rec: RefRecord = serde_json::from_slice(&text).ok()?;
        (rec.reference == key && self.rootfs_dir(&rec.digest).join("config.json").exists())
            .then_some(rec.digest)
    }

    pub fn remember(&self, key: &str, digest: &str) -> Result<()> {
        let rec = RefRecord {
            reference: key.to_string(),
            digest: digest.to_string(),
        };
        let path = self.ref_path(key);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&rec)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// `images/rootfs/<hex>` for `sha256:<hex>`.
    pub fn rootfs_dir(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("rootfs").join(hex)
    }

    /// The manifest digest the layout's index holds for `tag`.
    pub fn digest_of_tag(&self, tag: &str) -> Result<String> {
        let path = self.layout().join("index.json");
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", path.display()))?;
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .and_then(|m| m["digest"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the image cache has no tag {tag} after the copy"))
    }
}
