//! The cluster's key as the data path holds it. A restarted controller writes a new key
//! (rotation); every hpk-netd notices the file change within a second ([`watch`]), seals
//! with the new key from then on, and still opens datagrams sealed with the previous one,
//! so that peers that have not noticed yet are not cut off meanwhile.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{info, warn};

use super::key::ClusterKey;

/// How often the key file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Keys {
    /// Bumped at each replacement: the sending side re-keys when it changes.
    generation: AtomicU64,
    held: RwLock<Held>,
}

#[derive(Debug)]
struct Held {
    current: ClusterKey,
    previous: Option<ClusterKey>,
}

impl Keys {
    pub fn new(key: ClusterKey) -> Arc<Keys> {
        Self::with_previous(key, None)
    }

    /// The keys of a rotated key file: `previous` still opens.
    pub fn with_previous(key: ClusterKey, previous: Option<ClusterKey>) -> Arc<Keys> {
        Arc::new(Keys {
            generation: AtomicU64::new(0),
            held: RwLock::new(Held {
                current: key,
                previous,
            }),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key to seal with.
    pub fn current(&self) -> ClusterKey {
        self.held.read().unwrap().current.clone()
    }

    /// The keys a new session of a peer may be sealed with, newest first.
    pub fn to_open(&self) -> Vec<ClusterKey> {
        let held = self.held.read().unwrap();
        std::iter::once(held.current.clone())
            .chain(held.previous.clone())
            .collect()
    }

    /// Makes `key` the current one (the current one becomes the previous, unless the file
    /// names another); false if it already is.
    pub fn replace(&self, key: ClusterKey, previous: Option<ClusterKey>) -> bool {
        let mut held = self.held.write().unwrap();
        if held.current.as_bytes() == key.as_bytes() {
            return false;
        }
        let old = std::mem::replace(&mut held.current, key);
        held.previous = Some(previous.unwrap_or(old));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// Reloads `path` into `keys` whenever its content changes; a file that cannot be read
/// for a moment (being replaced) keeps the key in use.
pub async fn watch(path: PathBuf, keys: Arc<Keys>) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let p = path.clone();
        match tokio::task::spawn_blocking(move || ClusterKey::load_with_previous(&p)).await {
            Ok(Ok((key, previous))) => {
                last_error.clear();
                if keys.replace(key, previous) {
                    info!(path = %path.display(), "the overlay key changed: sealing with the new one, still opening the previous");
                }
            }
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                if e != last_error {
                    warn!(error = %e, "cannot reload the overlay key; keeping the one in use");
                    last_error = e;
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_key_is_current_and_the_old_one_still_opens() {
        let a = ClusterKey::from_bytes([1; 32]);
        let b = ClusterKey::from_bytes([2; 32]);
        let keys = Keys::new(a.clone());
        assert!(!keys.replace(a.clone(), None), "the same key is no change");
        assert_eq!(keys.generation(), 0);
        assert!(keys.replace(b.clone(), None));
        assert_eq!(keys.generation(), 1);
        assert_eq!(keys.current().as_bytes(), b.as_bytes());
        let open: Vec<_> = keys.to_open().iter().map(|k| *k.as_bytes()).collect();
        assert_eq!(open, vec![*b.as_bytes(), *a.as_bytes()]);
    }
}
