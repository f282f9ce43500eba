//! A container's endpoint: what it is (the spec, persisted as its record), how it is
//! built, the forwarder that carries its frames, the records on disk, and the table of
//! endpoints with their supervision and adoption after a restart.

pub mod build;
pub mod forwarder;
pub mod hub;
pub mod store;
pub mod table;

mod adopt;
mod supervise;
#[cfg(test)]
mod table_tests;

use std::path::PathBuf;

use anyhow::{bail, Result};
use hpk_hook::proto::Attachment;
use serde::{Deserialize, Serialize};

/// Everything needed to (re)build one endpoint; persisted as the endpoint's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// What the container got, as the hook hears it (id, address, taps, ...).
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The container's process and its start time (guards against PID reuse).
    pub pid: i32,
    pub pid_start: u64,
    pub bridge: String,
}

impl EndpointSpec {
    pub fn id(&self) -> &str {
        &self.attachment.id
    }

    pub fn netns(&self) -> PathBuf {
        netns_of(self.pid)
    }
}

pub fn netns_of(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The longest file name Linux file systems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// The longest container id: every file named after it (`<id>.json.tmp` the longest)
/// must still be a valid file name.
pub const MAX_ID_LEN: usize = NAME_MAX - store::LONGEST_SUFFIX;

/// Container ids become file names and log fields: keep them to what runtimes allow.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if !ok {
        bail!(
            "invalid container id {id:?}: 1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ + - . (not starting with '.')"
        );
    }
    Ok(())
}

/// The bridge-side tap's name: `hpk` and 12 hex digits of a hash of the id, so that ids
/// with a common prefix never collide within the 15-byte limit.
pub fn bubble_tap_name(id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("hpk{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["c1", "4f2a-b_c.d+e", &"x".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "a b", "../x", &"x".repeat(300)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    /// At the limit, every file made from the id can be created (the record saved and
    /// read back); one byte more is refused.
    #[test]
    fn the_longest_id_names_files_that_can_be_made() {
        let longest = "x".repeat(MAX_ID_LEN);
        validate_id(&longest).unwrap();
        let err = validate_id(&format!("{longest}x")).unwrap_err().to_string();
        assert!(err.contains(&format!("1 to {MAX_ID_LEN}")), "{err}");

        let dir = std::env::temp_dir().join(format!("hpk-ids-{}", std::process::id()));
        let tried = std::panic::catch_unwind(|| {
            let store = store::Store::open(&dir).unwrap();
            let record: store::Record = serde_json::from_value(serde_json::json!({
                "spec": {"id": longest, "address": "10.244.3.2", "prefix_len": 24,
                         "gateway": "10.244.3.1", "mtu": 1450, "tap": "tap0",
                         "bubble_tap": bubble_tap_name(&longest), "kind": "veth",
                         "pid": 4242, "pid_start": 1, "bridge": "hpk-bridge"},
                "forwarder": null
            }))
            .unwrap();
            store
                .save(&record)
                .expect("the record of the longest id is saved");
            assert_eq!(store.load_all().records, [record]);
            for name in store::file_names(&longest) {
                std::fs::write(dir.join("endpoints").join(&name), b"")
                    .unwrap_or_else(|e| panic!("a file name of {} bytes: {e}", name.len()));
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(panic) = tried {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn bubble_tap_names_fit_and_differ() {
        let a = bubble_tap_name("job-000001");
        let b = bubble_tap_name("job-000002");
        assert_eq!(a.len(), 15);
        assert_ne!(a, b);
        assert_eq!(a, bubble_tap_name("job-000001"));
    }
}
