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

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::unistd::{Gid, Group, Uid, User};
use tracing::{debug, info, warn};

use crate::forward::PumpStopped;
use crate::framing::{encode_into, FrameError, FrameReader, LEN_PREFIX, MIN_FRAME};
use crate::tap::{Tap, MAX_FRAME, VNET_HDR_LEN};

/// Bytes gathered from the tap before one write to the socket.
const BATCH: usize = 256 * 1024;

/// Who owns the server's socket file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: Uid,
    pub gid: Option<Gid>,
}

impl std::str::FromStr for Owner {
    type Err = anyhow::Error;

    /// `UID[:GID]`, each a number or a name.
    fn from_str(s: &str) -> Result<Owner> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid = match user.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(user)?
                    .ok_or_else(|| anyhow!("no user named {user:?}"))?
                    .uid
            }
        };
        let gid = match group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(n) => Gid::from_raw(n),
                Err(_) => {
                    Group::from_name(g)?
                        .ok_or_else(|| anyhow!("no group named {g:?}"))?
                        .gid
                }
            }),
        };
        Ok(Owner { uid, gid })
    }
}

/// How frames are laid out on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The original tool's: length, Ethernet frame.
    Original,
    /// Ours, when both ends agree: length, virtio-net header, Ethernet frame.
    Extended,
}

impl Framing {
    fn describe(self) -> &'static str {
        match self {
            Framing::Original => "original",
            Framing::Extended => "extended (virtio-net header, offloads on)",
        }
    }
}

/// How long a client waits for the server's ACK before settling for the original framing.
const ACK_WAIT: Duration = Duration::from_millis(300);
/// How long a server waits for a client's first frame (HELLO or not).
const HELLO_WAIT: Duration = Duration::from_secs(1);

const NEGOTIATION_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const HELLO: &[u8] = b"hpk-net-daemon vnet-hdr v1 hello";
const ACK: &[u8] = b"hpk-net-daemon vnet-hdr v1 ok";
/// A zeroed virtio-net header: a whole frame with a complete checksum.
const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// A negotiation frame: locally administered MACs, experimental ethertype, padded to 60.
fn control_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x68, 0x70, 0x6b, 0x00, 0x01, 0x02, 0x68, 0x70, 0x6b, 0x00, 0x02,
    ];
    f.extend_from_slice(&NEGOTIATION_ETHERTYPE);
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn is_control(frame: &[u8], payload: &[u8]) -> bool {
    frame.len() >= 14 + payload.len()
        && frame[12..14] == NEGOTIATION_ETHERTYPE
        && &frame[14..14 + payload.len()] == payload
}

/// The connection frames from the tap go to, with its framing; replaced when a new peer
/// connects. Stream and framing are taken together, so a batch never goes out in the
/// wrong format.
#[derive(Default)]
struct Peer(Mutex<Option<(Arc<UnixStream>, Framing)>>);

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

/// Waits until `tap` is readable.
fn wait_readable(tap: &Tap) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: tap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
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
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOBUFS)
            ) =>
        {
            Ok(())
        }
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

/// Sends one frame in the original framing (negotiation happens in it).
fn send_original(stream: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(LEN_PREFIX + frame.len());
    encode_into(&mut out, frame);
    (&*stream).write_all(&out)
}

/// After negotiation: make `stream` the peer, deliver a frame read while negotiating,
/// and carry frames from the peer until the connection ends.
fn carry(
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

fn timed_out(e: &FrameError) -> bool {
    matches!(e, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

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

fn spawn_tap_reader(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_frames_are_valid_ethernet() {
        let hello = control_frame(HELLO);
        assert_eq!(hello.len(), 60);
        assert!(is_control(&hello, HELLO) && !is_control(&hello, ACK));
        assert!(is_control(&control_frame(ACK), ACK));
        assert_eq!(
            hello[0] & 0x03,
            0x02,
            "locally administered unicast destination"
        );
    }

    #[test]
    fn owners_parse() {
        let o: Owner = "1000:100".parse().unwrap();
        assert_eq!(o.uid, Uid::from_raw(1000));
        assert_eq!(o.gid, Some(Gid::from_raw(100)));
        let root: Owner = "root".parse().unwrap();
        assert_eq!(root.uid, Uid::from_raw(0));
        assert!("no-such-user-hpk".parse::<Owner>().is_err());
    }
}
