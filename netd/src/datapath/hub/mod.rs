//! The bubble's shared tap forwarder: one thread moves the frames of every tap endpoint of
//! the bubble, so a frame that crosses the bridge from one endpoint to another is read by
//! the same thread that just wrote it, without a wake-up of another process. On a VM a
//! wake-up costs about as much as a whole round trip over a veth pair; a per-container
//! forwarder pays two per round trip that the hub does not.
//!
//! hpk-netd hands each endpoint over on the hub's control socket (SOCK_SEQPACKET, the two
//! tap fds attached with SCM_RIGHTS); the hub forwards until the container exits (a pidfd
//! per endpoint), hpk-netd removes the endpoint, or one of its taps fails. A failing
//! endpoint is dropped alone. The hub exits once it has had no endpoint for [`LINGER`],
//! counted from its start too (a hub whose first endpoint never came does not stay);
//! hpk-netd starts a new one for the next.
//!
//! A frame from one of its containers to another that the bridge would only forward, the
//! hub hands over itself ([`super::shortcut`]), and counts it: the bridge never sees it.
//!
//! The rooms: [`protocol`] (requests, replies, the messages that carry them), [`token`]
//! (what an epoll event is about), [`pairs`] (the endpoints served, added and removed),
//! [`control`] (answering requests), [`forward`] (moving frames, past the bridge where it
//! may); the event loop is here.

mod control;
mod forward;
mod pairs;
mod protocol;
#[cfg(test)]
mod tests;
mod token;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::epoll::{EpollEvent, EpollTimeout};
use tracing::info;

use self::pairs::Hub;
use self::token::{Token, CONTROL};
use super::tap_pump::BusyPoll;
use crate::sys::tap::{MAX_FRAME, VNET_HDR_LEN};

pub use self::protocol::{receive_message, send_message, HubReply, HubRequest};

/// How long the hub stays once its last endpoint is gone: containers started one after
/// another then find it running instead of waiting for a new one to start (~2 ms).
pub const LINGER: Duration = Duration::from_secs(5);

/// Serves endpoints handed over on `control` (a listening SOCK_SEQPACKET socket) until
/// it has had none for `linger` ([`LINGER`] in hpk-net-daemon). After traffic it polls
/// for `busy_poll` ([`BusyPoll`]) before it sleeps.
pub fn serve(control: OwnedFd, busy_poll: Duration, linger: Duration) -> Result<()> {
    let mut hub = Hub::new(control)?;
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    let mut answer_buf = buf.clone();
    let mut events = vec![EpollEvent::empty(); 64];
    let mut polling = BusyPoll::new(busy_poll);
    let mut empty_since = Some(Instant::now());
    loop {
        let spinning = polling.spinning();
        let timeout = match (spinning, empty_since) {
            (true, _) => EpollTimeout::ZERO,
            (false, Some(since)) => EpollTimeout::try_from(linger.saturating_sub(since.elapsed()))
                .unwrap_or(EpollTimeout::ZERO),
            (false, None) => EpollTimeout::NONE,
        };
        let n = match hub.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("epoll: {e}"),
        };
        let mut moved = 0;
        for event in &events[..n] {
            match event.data() {
                CONTROL => hub.serve_control(),
                t => moved += hub.forward(Token::decode(t), &mut buf, &mut answer_buf),
            }
        }
        if hub.by_id.is_empty() {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= linger {
                info!("no endpoint left; exiting");
                return Ok(());
            }
        } else {
            empty_since = None;
        }
        polling.after(moved, spinning);
    }
}
