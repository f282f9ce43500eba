//! Tap-to-tap forwarding: one thread for both directions, one read and one write per frame.
//!
//! With the virtio-net header on both taps a "frame" may be a 64 KiB GSO super-frame, and
//! the header is passed through untouched, so the receiving tap segments (or not) exactly
//! as the sending stack asked.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tracing::debug;

use super::{frame_lost, PumpStopped};
use crate::sys::poll;
use crate::sys::tap::{Tap, MAX_FRAME, VNET_HDR_LEN};

/// Frames moved in one direction before the other gets its turn.
const BURST: usize = 32;

/// Moves up to [`BURST`] queued frames from `from` to `to`; returns how many it read.
pub(super) fn drain(from: &Tap, to: &Tap, buf: &mut [u8]) -> Result<usize, PumpStopped> {
    drain_with(from, buf, |frame| write_or_drop(from.name(), to, frame))
}

/// Reads up to [`BURST`] queued frames from `from` and hands each to `deliver`; returns
/// how many it read.
pub(super) fn drain_with(
    from: &Tap,
    buf: &mut [u8],
    mut deliver: impl FnMut(&[u8]) -> Result<(), PumpStopped>,
) -> Result<usize, PumpStopped> {
    let mut moved = 0;
    while moved < BURST {
        let n = match from.read_frame(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(PumpStopped {
                    tap: from.name().to_owned(),
                    error,
                })
            }
        };
        moved += 1;
        deliver(&buf[..n])?;
    }
    Ok(moved)
}

/// Writes `frame` (read from `from`) to `to`; a frame the tap cannot take is dropped.
pub(super) fn write_or_drop(from: &str, to: &Tap, frame: &[u8]) -> Result<(), PumpStopped> {
    match to.write_frame(frame) {
        Ok(_) => Ok(()),
        Err(e) if frame_lost(&e) => {
            debug!(from, to = to.name(), error = %e, "frame dropped");
            Ok(())
        }
        Err(error) => Err(PumpStopped {
            tap: to.name().to_owned(),
            error,
        }),
    }
}

/// Polling after traffic, as every tap forwarder does it: for `window` after the last
/// frame it polls without sleeping, yielding the CPU on each empty poll, so a reply finds
/// it awake (a wake-up costs tens of microseconds on a VM); then it sleeps until a frame
/// comes. A zero window never polls.
pub(super) struct BusyPoll {
    window: Duration,
    last_frame: Instant,
}

impl BusyPoll {
    pub(super) fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            last_frame: Instant::now(),
        }
    }

    /// Whether the next poll should not sleep.
    pub(super) fn spinning(&self) -> bool {
        !self.window.is_zero() && self.last_frame.elapsed() < self.window
    }

    /// After a poll made while `spinning` that moved `moved` frames.
    pub(super) fn after(&mut self, moved: usize, spinning: bool) {
        if moved > 0 {
            self.last_frame = Instant::now();
        } else if spinning {
            std::thread::yield_now();
        }
    }
}

/// Forwards between `a` and `b` in both directions on the calling thread until a tap
/// fails. Each wake-up drains only the taps `poll` named, so a lone frame costs a poll, a
/// read, a write and the read that finds the queue empty. After traffic it polls for
/// `busy_poll` ([`BusyPoll`]) before it sleeps.
pub fn forward(a: &Tap, b: &Tap, busy_poll: Duration) -> PumpStopped {
    for tap in [a, b] {
        if let Err(error) = tap.set_nonblocking(true) {
            return PumpStopped {
                tap: tap.name().to_owned(),
                error,
            };
        }
    }
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    let mut polling = BusyPoll::new(busy_poll);
    loop {
        let spinning = polling.spinning();
        let ready = match poll::which_readable(
            [a.as_raw_fd(), b.as_raw_fd()],
            if spinning { 0 } else { -1 },
        ) {
            Ok(ready) => ready,
            Err(error) => {
                return PumpStopped {
                    tap: a.name().to_owned(),
                    error,
                }
            }
        };
        let mut moved = 0;
        for (from, to, go) in [(a, b, ready[0]), (b, a, ready[1])] {
            if go {
                match drain(from, to, &mut buf) {
                    Ok(n) => moved += n,
                    Err(stopped) => return stopped,
                }
            }
        }
        polling.after(moved, spinning);
    }
}

/// Starts forwarding between `a` and `b` on a thread of its own; `on_stop` gets the
/// reason when it ends. (Traffic counters: the taps' own statistics.)
pub fn spawn(
    a: Tap,
    b: Tap,
    busy_poll: Duration,
    on_stop: impl FnOnce(PumpStopped) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("forward".into())
        .spawn(move || on_stop(forward(&a, &b, busy_poll)))?;
    Ok(())
}
