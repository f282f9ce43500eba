//! The data path of containers: frames between a container's tap and the bubble, tap to
//! tap (one forwarder per container, or the bubble's shared hub) or over a UNIX socket in
//! the original tool's framing, and the command line of the forwarder process that runs it.

pub mod args;
pub mod framing;
pub mod hub;
pub mod run;
pub mod shortcut;
pub mod socket;
pub mod tap_pump;

use std::io;

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

/// Errors on a tap write that lose this one frame but leave the tap usable: the
/// interface is down (EIO), the kernel rejected this frame's header (EINVAL), memory was
/// short (ENOBUFS, ENOMEM), or a signal came first (EINTR). Every pump drops the frame and
/// goes on; TCP resends it.
pub(crate) fn frame_lost(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOBUFS | libc::ENOMEM | libc::EINTR)
    )
}
