//! Socket mode: frames between a tap and a UNIX stream socket.
//!
//! The default framing is the original tool's (4-byte big-endian length, Ethernet frame).
//! Two of our daemons can agree on an extended framing that also carries the virtio-net
//! header, so GSO frames of up to 64 KiB cross the socket as they do tap-to-tap: a client
//! opens with a HELLO frame (a valid original frame with the IEEE local-experimental
//! ethertype, which an original server just forwards and never answers), our server
//! answers ACK, and from then on both directions carry the header. Without an ACK within
//! a moment the client stays with the original framing.
//!
//! One thread reads the tap for the daemon's whole life and sends to whichever peer is
//! connected now (frames are dropped while none is); each connection gets a thread that
//! reads the socket and writes whole frames to the tap. A bad stream ends only that
//! connection: the server goes back to accepting, the client reconnects.

pub(crate) mod negotiation;
mod pump;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{info, warn};

use self::negotiation::{
    control_frame, is_control, send_original, timed_out, Framing, ACK, ACK_WAIT, HELLO, HELLO_WAIT,
};
use self::pump::{carry, spawn_tap_reader, Peer};
use crate::datapath::framing::FrameReader;
use crate::datapath::PumpStopped;
use crate::sys::tap::Tap;

/// One server connection: negotiate, then carry frames until it ends.
fn serve_one(
    stream: Arc<UnixStream>,
    tap: &Tap,
    peer: &Peer,
    extended: bool,
) -> std::result::Result<(), PumpStopped> {
    let mut reader = FrameReader::new(&*stream);
    let _ = stream.set_read_timeout(Some(HELLO_WAIT));
    let mut first_frame = None;
    let framing = match reader.next_frame() {
        Ok(Some(f)) if is_control(f, HELLO) => {
            if extended && send_original(&stream, &control_frame(ACK)).is_ok() {
                Framing::Extended
            } else {
                Framing::Original
            }
        }
        Ok(Some(f)) => {
            first_frame = Some(f.to_vec());
            Framing::Original
        }
        Ok(None) => return Ok(()),
        Err(e) if timed_out(&e) => Framing::Original,
        Err(e) => {
            warn!(error = %e, "dropping peer connection");
            return Ok(());
        }
    };
    let _ = stream.set_read_timeout(None);
    carry(&stream, reader, tap, peer, framing, first_frame)
}

/// Serves one peer at a time on `listener`; a new peer replaces the old one.
/// Returns only when the tap fails. `extended`: accept the extended framing.
pub fn serve(
    tap: Arc<Tap>,
    listener: UnixListener,
    extended: bool,
    on_stop: impl Fn(PumpStopped) + Send + Sync + 'static,
) -> Result<()> {
    let peer = Arc::new(Peer::default());
    let on_stop = Arc::new(on_stop);
    spawn_tap_reader(tap.clone(), peer.clone(), on_stop.clone())?;
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (tap, peer, on_stop) = (tap.clone(), peer.clone(), on_stop.clone());
        std::thread::Builder::new()
            .name("peer>tap".into())
            .spawn(move || {
                if let Err(stopped) = serve_one(stream, &tap, &peer, extended) {
                    on_stop(stopped);
                }
            })
            .context("cannot spawn a connection thread")?;
    }
    Ok(())
}

/// One client connection: offer the extended framing, then carry frames until it ends.
fn client_one(
    stream: Arc<UnixStream>,
    tap: &Tap,
    peer: &Peer,
    extended: bool,
) -> std::result::Result<(), PumpStopped> {
    let mut reader = FrameReader::new(&*stream);
    let mut framing = Framing::Original;
    let mut first_frame = None;
    if extended {
        if send_original(&stream, &control_frame(HELLO)).is_err() {
            return Ok(());
        }
        let _ = stream.set_read_timeout(Some(ACK_WAIT));
        match reader.next_frame() {
            Ok(Some(f)) if is_control(f, ACK) => framing = Framing::Extended,
            Ok(Some(f)) => first_frame = Some(f.to_vec()),
            Ok(None) => return Ok(()),
            Err(e) if timed_out(&e) => {}
            Err(e) => {
                warn!(error = %e, "dropping the connection to the server");
                return Ok(());
            }
        }
        let _ = stream.set_read_timeout(None);
    }
    carry(&stream, reader, tap, peer, framing, first_frame)
}

/// Connects to the server at `path`, reconnecting whenever the connection ends.
/// `extended`: offer the extended framing.
pub fn run_client(
    tap: Arc<Tap>,
    path: PathBuf,
    extended: bool,
    on_stop: impl Fn(PumpStopped) + Send + Sync + 'static,
) -> Result<()> {
    let peer = Arc::new(Peer::default());
    let on_stop = Arc::new(on_stop);
    spawn_tap_reader(tap.clone(), peer.clone(), on_stop.clone())?;
    let mut backoff = Duration::from_millis(50);
    let mut announced = false;
    loop {
        match UnixStream::connect(&path) {
            Ok(stream) => {
                info!(socket = %path.display(), "connected to server");
                backoff = Duration::from_millis(50);
                announced = false;
                if let Err(stopped) = client_one(Arc::new(stream), &tap, &peer, extended) {
                    on_stop(stopped);
                    return Ok(());
                }
            }
            Err(e) => {
                if !announced {
                    info!(socket = %path.display(), error = %e, "server not reachable yet, retrying");
                    announced = true;
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
