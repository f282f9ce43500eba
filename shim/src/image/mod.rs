//! Images: a reference in, an unpacked root filesystem and the image's defaults out.

pub mod cache;
pub mod reference;
pub mod skopeo;
pub mod umoci;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;
use tracing::{debug, info};

use crate::cli::PullPolicy;
use cache::Cache;
pub use reference::Source;

/// What the image says a container runs, unless the user says otherwise.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

/// An image ready to run.
#[derive(Clone, Debug)]
pub struct Image {
    /// The root filesystem (shared between runs: never written to).
    pub rootfs: PathBuf,
    /// From a cache (read-only, shared) or the user's own directory.
    pub cached: bool,
    pub defaults: Defaults,
    /// `sha256:...` of the manifest, for cached images.
    pub digest: Option<String>,
}

pub struct Options<'a> {
    pub pull: PullPolicy,
    pub insecure: &'a [String],
    pub rootless: bool,
}

/// Resolves `text` to a root filesystem, pulling and unpacking into the cache as needed.
pub fn resolve(text: &str, cache_dir: &Path, opts: &Options) -> Result<Image> {
    let source = Source::parse(text)?;
    let (key, insecure) = match &source {
        Source::Dir(dir) => {
            return Ok(Image {
                rootfs: dir.clone(),
                cached: false,
                defaults: Defaults::default(),
                digest: None,
            })
        }
        Source::Docker(r) => {
            let registry = reference::registry_of(r);
            (
                text.to_string(),
                reference::is_insecure(registry, opts.insecure),
            )
        }
        // A local source changes in place: its key carries its size and mtime.
        Source::Local { path, .. } => {
            let m = std::fs::metadata(path.join("index.json"))
                .or_else(|_| std::fs::metadata(path))
                .with_context(|| format!("cannot read {}", path.display()))?;
            (
                format!(
                    "{text}|{}|{}",
                    m.size(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                ),
                false,
            )
        }
    };
    let cache = Cache::new(cache_dir);
    // Cached images need no lock: lookups only read, and pulls write with rename.
    let cached = || {
        (opts.pull != PullPolicy::Always)
            .then(|| cache.lookup(&key))
            .flatten()
    };
    let digest = match cached() {
        Some(d) => {
            debug!(image = text, digest = %d, "image in the cache: not pulling");
            d
        }
        None => {
            // A miss: one pull or unpack at a time; another run may have just made it.
            let _lock = cache.lock()?;
            match (cached(), opts.pull) {
                (Some(d), _) => {
                    debug!(image = text, digest = %d, "image in the cache (another run pulled it meanwhile): not pulling");
                    d
                }
                (None, PullPolicy::Never) => {
                    bail!("image {text} is not in the cache and --pull never forbids pulling it")
                }
                (None, _) => pull(text, &source, &key, &cache, insecure, opts)?,
            }
        }
    };
    let dir = cache.rootfs_dir(&digest);
    Ok(Image {
        rootfs: dir.join("rootfs"),
        cached: true,
        defaults: defaults_from(&dir.join("config.json"))?,
        digest: Some(digest),
    })
}

/// Copies the image into the cache's layout and unpacks it; under the cache lock.
fn pull(
    text: &str,
    source: &Source,
    key: &str,
    cache: &Cache,
    insecure: bool,
    opts: &Options,
) -> Result<String> {
    let tag = Cache::tag(key);
    info!(image = text, "pulling");
    let overrides = skopeo::Overrides::for_cache(&cache.dir, opts.rootless)?;
    skopeo::copy(
        &source.skopeo_name(text),
        &cache.layout(),
        &tag,
        insecure,
        &overrides,
    )?;
    let d = cache.digest_of_tag(&tag)?;
    debug!(image = text, digest = %d, "pulled");
    unpack_once(cache, &tag, &d, opts.rootless)?;
    cache.remember(key, &d)?;
    Ok(d)
}

/// Unpacks into a temporary directory renamed into place: a crash never leaves a
/// half-unpacked rootfs that looks complete.
fn unpack_once(cache: &Cache, tag: &str, digest: &str, rootless: bool) -> Result<()> {
    let dest = cache.rootfs_dir(digest);
    if dest.join("config.json").exists() {
        debug!(digest, "already unpacked");
        return Ok(());
    }
    let tmp = dest.with_file_name(format!(
        ".tmp-{}-{}",
        dest.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    // Left by an unpack that was interrupted (we hold the cache lock: nobody else unpacks).
    let parent = dest.parent().expect("rootfs/<digest>");
    let entries =
        std::fs::read_dir(parent).with_context(|| format!("cannot read {}", parent.display()))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let result = umoci::unpack(&cache.layout(), tag, &tmp, rootless).and_then(|()| {
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).context("cannot move the unpacked image into the cache")
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// umoci writes the image's config as a runtime spec; take the process part of it.
fn defaults_from(config: &Path) -> Result<Defaults> {
    let spec = Spec::load(config).with_context(|| format!("cannot read {}", config.display()))?;
    let Some(p) = spec.process() else {
        return Ok(Defaults::default());
    };
    Ok(Defaults {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: Some(p.cwd().display().to_string()).filter(|c| !c.is_empty()),
        uid: p.user().uid(),
        gid: p.user().gid(),
    })
}
