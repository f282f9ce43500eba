//! Moving frames between each pair's taps, and from one of the hub's containers to
//! another straight where [`shortcut`] allows.

use std::cell::Cell;

use tracing::{debug, warn};

use super::pairs::{Hub, Pair};
use super::token::{Token, ROLE_BUBBLE, ROLE_CONTAINER};
use crate::datapath::shortcut::{self, ShortcutCounters};
use crate::datapath::tap_pump::{drain, drain_with, write_or_drop};
use crate::datapath::PumpStopped;
use crate::sys::tap::VNET_HDR_LEN;

impl Hub {
    /// Moves the frames queued on one side of the event's pair; drops the endpoint if a
    /// tap failed, or when its container exited.
    pub(super) fn forward(&mut self, event: Token, buf: &mut [u8], answer_buf: &mut [u8]) -> usize {
        let slot = event.slot;
        let Some(pair) = self
            .slots
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|p| p.generation == event.generation)
        else {
            return 0;
        };
        let moved = match event.role {
            ROLE_CONTAINER => self.forward_from_container(slot, pair, buf, answer_buf),
            ROLE_BUBBLE => drain(&pair.bubble, &pair.container, buf),
            _ => {
                let id = pair.id.clone();
                debug!(
                    id,
                    pid = pair.watch.pid(),
                    "container exited; removing its taps"
                );
                self.remove(&id);
                return 0;
            }
        };
        match moved {
            Ok(n) => n,
            Err(stopped) => {
                let id = pair.id.clone();
                warn!(id, "{stopped}; dropping the endpoint");
                self.remove(&id);
                0
            }
        }
    }

    /// Moves the frames queued on `pair`'s container tap: to another container of the
    /// hub's straight where [`shortcut`] allows, then that container's answer
    /// ([`Hub::pass_answer`]); otherwise into the bridge.
    fn forward_from_container(
        &self,
        slot: usize,
        pair: &Pair,
        buf: &mut [u8],
        answer_buf: &mut [u8],
    ) -> Result<usize, PumpStopped> {
        drain_with(&pair.container, buf, |frame| {
            if let Some(to) = self.deliver(slot, pair, frame)? {
                self.pass_answer(to, answer_buf);
            }
            Ok(())
        })
    }

    /// Writes `frame`, read from `pair`'s container (at `slot`), where it goes; returns
    /// the slot of the container it went to straight, if it did.
    fn deliver(
        &self,
        slot: usize,
        pair: &Pair,
        frame: &[u8],
    ) -> Result<Option<usize>, PumpStopped> {
        let header = if pair.container.vnet_hdr() {
            VNET_HDR_LEN
        } else {
            0
        };
        let Some((to_slot, to)) =
            self.shortcut_to(slot, pair, frame.get(header..).unwrap_or_default())
        else {
            write_or_drop(pair.container.name(), &pair.bubble, frame)?;
            return Ok(None);
        };
        // A destination that fails is its own pair's to notice; the frame is lost as the
        // bridge would lose it.
        match to.container.write_frame(frame) {
            Ok(_) => {
                let bytes = (frame.len() - header) as u64;
                count(&pair.shortcut, |c| {
                    c.from_container_frames += 1;
                    c.from_container_bytes += bytes;
                });
                count(&to.shortcut, |c| {
                    c.to_container_frames += 1;
                    c.to_container_bytes += bytes;
                });
                Ok(Some(to_slot))
            }
            Err(e) => {
                debug!(to = to.id, error = %e, "frame dropped");
                Ok(None)
            }
        }
    }

    /// Writing a frame into a container's tap runs that container's stack on the hub's
    /// thread: a ping's reply or a TCP acknowledgement is queued on the way back before
    /// the write returns. Passing that answer on at once, one frame, saves the read that
    /// finds the sender's queue empty and an epoll round before the sender gets it.
    /// Anything else, and a tap that fails, the event loop finds as usual. (Not after a
    /// frame into the bridge: an answer from beyond it rarely comes that fast, and the
    /// read that finds none cost bulk traffic ~8 %.)
    fn pass_answer(&self, slot: usize, buf: &mut [u8]) {
        let Some(pair) = self.slots.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if let Ok(n) = pair.container.read_frame(buf) {
            let _ = self.deliver(slot, pair, &buf[..n]);
        }
    }

    /// The other endpoint of the hub's that `frame` from `pair` (at `slot`) may go to
    /// straight, with the same virtio-net header.
    fn shortcut_to(&self, slot: usize, pair: &Pair, frame: &[u8]) -> Option<(usize, &Pair)> {
        let mac = shortcut::destination(frame, pair.identity.as_ref()?)?;
        let to_slot = *self.by_mac.get(&mac)?;
        let to = self
            .slots
            .get(to_slot)?
            .as_ref()
            .filter(|_| to_slot != slot)?;
        (to.container.vnet_hdr() == pair.container.vnet_hdr()).then_some((to_slot, to))
    }
}

fn count(counters: &Cell<ShortcutCounters>, add: impl FnOnce(&mut ShortcutCounters)) {
    let mut c = counters.get();
    add(&mut c);
    counters.set(c);
}
