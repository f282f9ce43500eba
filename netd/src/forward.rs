//! Tap-to-tap forwarding: one thread per direction, one read and one write per frame.
//!
//! With the virtio-net header on both taps a "frame" may be a 64 KiB GSO super-frame, and
//! the header is passed through untouched, so the receiving tap segments (or not) exactly
//! as the sending stack asked.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::debug;

use crate::tap::{Tap, MAX_FRAME, VNET_HDR_LEN};

/// Frames and bytes moved in one direction, and frames the receiving tap refused.
#[derive(Debug, Default)]
pub struct Counters {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// Why a pump stopped: a tap went away or failed for good.
#[derive(Debug)]
pub struct PumpStopped {
    pub tap: String,
    pub error: io::Error,
}

impl std::fmt::Display for PumpStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error.raw_os_error() {
            Some(libc::EBADFD) | Some(libc::ENXIO) => write!(
                f,
                "tap {} was removed (its network namespace is gone: the container has exited)",
                self.tap
            ),
            _ => write!(f, "tap {}: {}", self.tap, self.error),
        }
    }
}

/// Errors on write that lose one frame but leave the tap usable: the interface is down
/// (EIO), the kernel rejected this frame's header (EINVAL), or memory was short.
fn frame_lost(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Copies frames from `from` to `to` until a tap fails; returns why it stopped.
pub fn pump(from: &Tap, to: &Tap, counters: &Counters) -> PumpStopped {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    loop {
        let n = match from.read_frame(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return PumpStopped {
                    tap: from.name().to_owned(),
                    error,
                }
            }
        };
        match to.write_frame(&buf[..n]) {
            Ok(_) => {
                counters.frames.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if frame_lost(&e) || e.kind() == io::ErrorKind::Interrupted => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                debug!(from = from.name(), to = to.name(), error = %e, "frame dropped");
            }
            Err(error) => {
                return PumpStopped {
                    tap: to.name().to_owned(),
                    error,
                }
            }
        }
    }
}

/// Starts both directions between `a` and `b`; `on_stop` is called once per direction
/// that ends.
pub fn spawn_pair<F>(a: Arc<Tap>, b: Arc<Tap>, on_stop: F) -> io::Result<[Arc<Counters>; 2]>
where
    F: Fn(PumpStopped) + Send + Sync + 'static,
{
    let on_stop = Arc::new(on_stop);
    let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
    for (from, to, c) in [
        (a.clone(), b.clone(), counters[0].clone()),
        (b, a, counters[1].clone()),
    ] {
        let on_stop = on_stop.clone();
        std::thread::Builder::new()
            .name(format!("{}>{}", from.name(), to.name()))
            .spawn(move || on_stop(pump(&from, &to, &c)))?;
    }
    Ok(counters)
}
