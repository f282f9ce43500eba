//! Who may write into the overlay.
//!
//! A UDP port on a shared host is open to every user of that host: anyone could send
//! VXLAN to a VTEP with forged inner addresses. hpk-netd VTEPs therefore say so in their
//! lease (flanneld ignores the extra field), and from such a peer a datagram is taken only
//! from the peer's VTEP port (bound by its launcher for the job's life, so no other user
//! can send from it) and only sealed with the cluster's key ([`key`], [`seal`]), fresh
//! ([`replay`]). Kernel flannel peers cannot seal: they stay plain, as flannel is.

pub mod key;
pub mod keys;
pub mod replay;
pub mod seal;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A session number for this start of the VTEP: larger than any earlier start's (the
/// clock's nanoseconds, or one more than the number remembered in `file` if the clock went
/// back), so that no key and nonce are ever used twice and peers can tell a restart from a
/// replay. Remembered best-effort: without the file, the clock alone decides.
pub fn next_session(file: &Path) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let last = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let session = last.map_or(now, |l| now.max(l + 1));
    if let Err(e) =
        crate::sys::fs::write_atomically(file, format!("{session}\n").as_bytes(), 0o600, true)
    {
        tracing::warn!(error = %format!("{e:#}"), "cannot remember the overlay session number");
    }
    session
}

#[cfg(test)]
mod tests {
    #[test]
    fn sessions_grow_even_when_the_clock_is_behind() {
        let dir = std::env::temp_dir().join(format!("hpk-session-{}", std::process::id()));
        let file = dir.join("vtep.session");
        let a = super::next_session(&file);
        let b = super::next_session(&file);
        assert!(b > a);
        std::fs::write(&file, format!("{}\n", u64::MAX - 10)).unwrap();
        assert_eq!(
            super::next_session(&file),
            u64::MAX - 9,
            "ahead of the clock"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
