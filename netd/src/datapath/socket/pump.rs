//! Moving frames once the framing is settled: one thread reads the tap and sends to the
//! current peer; each connection's thread writes what the peer sends to the tap.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tracing::{debug, info, warn};

use super::negotiation::Framing;
use crate::datapath::framing::{FrameError, FrameReader, LEN_PREFIX, MIN_FRAME};
use crate::datapath::{frame_lost, PumpStopped};
use crate::sys::poll::wait_readable;
use crate::sys::tap::{Tap, MAX_FRAME, VNET_HDR_LEN};

/// Bytes gathered from the tap before one write to the socket.
const BATCH: usize = 256 * 1024;

/// A zeroed virtio-net header: a whole frame with a complete checksum.
const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// The connection frames from the tap go to, with its framing; replaced when a new peer
/// connects. Stream and framing are taken together, so a batch never goes out in the
/// wrong format.
#[derive(Default)]
pub(crate) struct Peer(Mutex<Option<(Arc<UnixStream>, Framing)>>);

impl Peer {
    fn get(&self) -> Option<(Arc<UnixStream>, Framing)> {
        self.0.lock().unwrap().clone()
    }

    /// Installs `stream`, closing the one it replaces.
    fn set(&self, stream: Arc<UnixStream>, framing: Framing) {
        if let Some((old, _)) = self.0.lock().unwrap().replace((stream, framing)) {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forgets `stream` if it is still the current peer.
    fn clear(&self, stream: &Arc<UnixStream>) {
        let mut slot = self.0.lock().unwrap();
        if slot.as_ref().is_some_and(|(s, _)| Arc::ptr_eq(s, stream)) {
            *slot = None;
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads the tap forever, sending framed batches to the current peer.
fn tap_to_peer(tap: &Tap, peer: &Peer) -> PumpStopped {
    let stopped = |error| PumpStopped {
        tap: tap.name().to_owned(),
        error,
    };
    if let Err(e) = tap.set_nonblocking(true) {
        return stopped(e);
    }
    let slot = LEN_PREFIX + VNET_HDR_LEN + MAX_FRAME;
    let mut buf = vec![0u8; BATCH + slot];
    loop {
        if let Err(e) = wait_readable(tap) {
            return stopped(e);
        }
        let current = peer.get();
        let framing = current.as_ref().map_or(Framing::Original, |(_, f)| *f);
        // Drain what the tap has queued, up to one batch; each frame lands at `len` as
        // length, header, frame, and loses its header again in the original framing.
        let mut len = 0;
        while len < BATCH {
            let n = match tap.read_frame(&mut buf[len + LEN_PREFIX..len + slot]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return stopped(e),
            };
            let start = len + LEN_PREFIX;
            let size = match framing {
                Framing::Extended => n,
                Framing::Original => {
                    // virtio_net_hdr: flags (bit 0: checksum still to do), gso_type, ...
                    // DATA_VALID (bit 1) is fine: the frame is whole and checksummed.
                    let (flags, gso_type) = (buf[start], buf[start + 1]);
                    if gso_type != 0 || flags & 1 != 0 {
                        // Left from an extended peer: the original framing cannot carry a
                        // GSO frame or a partial checksum. TCP resends it as plain segments.
                        debug!("dropping a GSO frame the original framing cannot carry");
                        continue;
                    }
                    buf.copy_within(start + VNET_HDR_LEN..start + n, start);
                    n - VNET_HDR_LEN
                }
            };
            buf[len..start].copy_from_slice(&(size as u32).to_be_bytes());
            len = start + size;
        }
        if len == 0 {
            continue;
        }
        if let Some((stream, _)) = current {
            if let Err(e) = (&*stream).write_all(&buf[..len]) {
                info!(error = %e, "peer connection lost while sending");
                peer.clear(&stream);
            }
        }
    }
}

/// Writes one frame received in `framing` to the tap; `Err` only when the tap failed.
fn deliver(tap: &Tap, framing: Framing, frame: &[u8]) -> std::result::Result<(), PumpStopped> {
    let written = match framing {
        Framing::Extended => tap.write_frame(frame),
        Framing::Original => tap.write_frame_with_header(&PLAIN_HEADER, frame),
    };
    match written {
        Ok(_) => Ok(()),
        Err(e) if frame_lost(&e) => Ok(()),
        Err(error) => Err(PumpStopped {
            tap: tap.name().to_owned(),
            error,
        }),
    }
}

/// Reads frames from the peer into the tap until the stream ends or goes bad.
/// Returns `Err` only when the tap itself failed.
fn peer_to_tap(
    reader: &mut FrameReader<&UnixStream>,
    tap: &Tap,
    framing: Framing,
) -> std::result::Result<(), PumpStopped> {
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => deliver(tap, framing, frame)?,
            Ok(None) => {
                info!("peer disconnected");
                return Ok(());
            }
            Err(FrameError::Io(e)) => {
                info!(error = %e, "peer connection lost");
                return Ok(());
            }
            Err(e) => {
                warn!(error = %e, "dropping peer connection");
                return Ok(());
            }
        }
    }
}

/// After negotiation: make `stream` the peer, deliver a frame read while negotiating,
/// and carry frames from the peer until the connection ends.
pub(crate) fn carry(
    stream: &Arc<UnixStream>,
    mut reader: FrameReader<&UnixStream>,
    tap: &Tap,
    peer: &Peer,
    framing: Framing,
    first_frame: Option<Vec<u8>>,
) -> std::result::Result<(), PumpStopped> {
    adopt(tap, &mut reader, framing);
    // The peer first: the answer to the first frame may come back at once.
    peer.set(stream.clone(), framing);
    let result = match first_frame {
        Some(f) => deliver(tap, framing, &f).and_then(|()| peer_to_tap(&mut reader, tap, framing)),
        None => peer_to_tap(&mut reader, tap, framing),
    };
    peer.clear(stream);
    result
}

/// Settles the framing: sets the tap's offloads and the reader's limits to match.
fn adopt(tap: &Tap, reader: &mut FrameReader<&UnixStream>, framing: Framing) {
    if let Err(e) = tap.set_offloads(framing == Framing::Extended) {
        warn!(error = %e, "cannot change the tap's offloads");
    }
    if framing == Framing::Extended {
        reader.set_limits(VNET_HDR_LEN + MIN_FRAME, VNET_HDR_LEN + MAX_FRAME);
    }
    info!(framing = framing.describe(), "peer connected");
}

pub(crate) fn spawn_tap_reader(
    tap: Arc<Tap>,
    peer: Arc<Peer>,
    on_stop: Arc<impl Fn(PumpStopped) + Send + Sync + 'static>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("tap>peer".into())
        .spawn(move || on_stop(tap_to_peer(&tap, &peer)))
        .context("cannot spawn the tap reader")?;
    Ok(())
}
