//! Tap to socket: read a frame (or a TSO frame of 64 KiB), look up the VtepMAC, cut it
//! into datagrams, seal them for a sealing peer, one `sendmsg` with UDP GSO per batch.
//!
//! The tap is read without blocking by whichever thread gets there first: the transmit
//! thread when the tap wakes it, and the receive thread right after it wrote frames into
//! the tap. A reply the kernel makes at once (an ICMP echo, a TCP ACK) is then on its way
//! before the transmit thread would even have woken up: one wake-up less per round trip.

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
use tracing::warn;

use super::auth::keys::Keys;
use super::auth::next_session;
use super::auth::seal::{Protection, Sealer, OVERHEAD};
use super::datapath::{bump, Path};
use super::gso::{segment, Unsendable, VnetHdr};
use super::header;
use crate::sys::tap::MAX_FRAME;

/// UDP GSO limits per send: the IP datagram's 64 KiB, and the kernel's segment count.
const GSO_MAX_BYTES: usize = 65000;
const GSO_MAX_SEGMENTS: usize = 64;
/// Frames the transmit thread sends before it lets the receive thread have a go.
const DRAIN_BUDGET: usize = 64;

/// The cluster's key at work: the transmit thread seals, the receive thread opens.
pub struct Sealing {
    pub keys: Arc<Keys>,
    pub protection: Protection,
    /// Our public address: part of every key we seal with.
    pub own: Ipv4Addr,
    /// Where the last session number is remembered (see [`next_session`]).
    pub session_file: PathBuf,
}

/// How long a new cluster key is only opened before we seal with it: every peer notices
/// the file change within a second (keys::watch), so none is sent what it cannot open yet.
const ROTATION_GRACE: Duration = Duration::from_secs(3);

/// The transmit thread's sealer, made anew (new session) when the cluster's key changes.
struct Sending {
    sealing: Sealing,
    generation: u64,
    sealer: Sealer,
    /// A newer key's generation, and when we noticed it.
    pending: Option<(u64, Instant)>,
}

impl Sending {
    fn new(sealing: Sealing) -> Sending {
        let generation = sealing.keys.generation();
        let sealer = Self::sealer(&sealing);
        Sending {
            sealing,
            generation,
            sealer,
            pending: None,
        }
    }

    fn sealer(s: &Sealing) -> Sealer {
        let session = next_session(&s.session_file);
        Sealer::new(&s.keys.current(), s.own, session, s.protection)
    }

    fn current(&mut self) -> &mut Sealer {
        let generation = self.sealing.keys.generation();
        if generation != self.generation {
            match self.pending {
                Some((g, since)) if g == generation => {
                    if since.elapsed() >= ROTATION_GRACE {
                        self.sealer = Self::sealer(&self.sealing);
                        self.generation = generation;
                        self.pending = None;
                    }
                }
                _ => self.pending = Some((generation, Instant::now())),
            }
        }
        &mut self.sealer
    }
}

/// Everything the tap-to-socket direction keeps between frames; whichever thread holds
/// it reads the tap.
pub struct Transmit {
    prefix: [u8; header::LEN],
    buf: Vec<u8>,
    out: Vec<u8>,
    sealed: Vec<u8>,
    sending: Option<Sending>,
    gso: bool,
}

impl Transmit {
    pub fn new(vni: u32, gso: bool, sealing: Option<Sealing>) -> Transmit {
        Transmit {
            prefix: header::encode(vni),
            buf: vec![0u8; VnetHdr::LEN + MAX_FRAME],
            out: Vec::with_capacity(2 * MAX_FRAME),
            sealed: Vec::with_capacity(2 * MAX_FRAME),
            sending: sealing.map(Sending::new),
            gso,
        }
    }

    /// Sends what the tap holds, `budget` frames at most; returns how many it read. The
    /// tap is non-blocking: an empty tap ends the round.
    pub fn drain(&mut self, p: &Path, budget: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < budget {
            let len = match p.tap.read_frame(&mut self.buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            n += 1;
            self.frame(p, len);
        }
        Ok(n)
    }

    /// One frame of `len` bytes (with its virtio-net header) in `buf`, out to its peer.
    fn frame(&mut self, p: &Path, n: usize) {
        let c = &p.counters;
        if n < VnetHdr::LEN + 14 {
            return;
        }
        bump(&c.tx_frames, 1);
        let hdr = VnetHdr::parse(self.buf[..VnetHdr::LEN].try_into().expect("10 bytes"));
        let frame = &self.buf[VnetHdr::LEN..n];
        let Some((dest, seal)) = p.peers.destination(&frame[..6]) else {
            bump(&c.drop_no_peer, 1);
            return;
        };
        self.out.clear();
        let datagrams = match segment(&hdr, frame, &self.prefix, &mut self.out) {
            Ok(d) => d,
            Err(why) => {
                if let Unsendable::UnsupportedGso(kind) = why {
                    warn!(gso_type = kind, "frame of an unexpected GSO kind dropped");
                }
                bump(&c.drop_unsendable, 1);
                return;
            }
        };
        let (wire, stride) = if seal {
            let Some(sealer) = self.sending.as_mut().map(Sending::current) else {
                bump(&c.drop_no_key, datagrams.count);
                return;
            };
            self.sealed.clear();
            for d in self.out.chunks(datagrams.stride) {
                sealer.seal(d, &mut self.sealed);
            }
            bump(&c.tx_sealed, datagrams.count);
            (&self.sealed, datagrams.stride + OVERHEAD)
        } else {
            (&self.out, datagrams.stride)
        };
        let to = SockaddrIn::from(SocketAddrV4::new(dest, p.port));
        match send(&p.socket, wire, stride, &to, self.gso) {
            Ok(sent) => {
                bump(&c.tx_datagrams, sent);
                bump(&c.tx_bytes, wire.len());
            }
            // The host's network is busy or unreachable for a moment: TCP resends.
            Err(_) => bump(&c.drop_send_error, datagrams.count),
        }
    }
}

/// The transmit thread: waits for the tap, then drains it under the lock.
pub fn run(p: &Path, tx: &Mutex<Transmit>) -> io::Error {
    loop {
        let mut fds = [PollFd::new(p.tap.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return e.into(),
        }
        loop {
            let mut t = tx.lock().unwrap();
            match t.drain(p, DRAIN_BUDGET) {
                Ok(n) if n == DRAIN_BUDGET => continue,
                Ok(_) => break,
                Err(e) => return e,
            }
        }
    }
}

/// Shared by both threads.
pub type SharedTransmit = Arc<Mutex<Transmit>>;

/// Sends `data` (datagrams of `stride` bytes, the last possibly shorter) to `to`.
fn send(
    socket: &UdpSocket,
    data: &[u8],
    stride: usize,
    to: &SockaddrIn,
    gso: bool,
) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    if data.len() <= stride {
        return sendmsg(fd, &[IoSlice::new(data)], &[], MsgFlags::empty(), Some(to))
            .map(|_| 1)
            .map_err(io::Error::from);
    }
    if !gso {
        for d in data.chunks(stride) {
            sendmsg(fd, &[IoSlice::new(d)], &[], MsgFlags::empty(), Some(to))?;
        }
        return Ok(data.len().div_ceil(stride));
    }
    let per_send = (GSO_MAX_BYTES / stride).clamp(1, GSO_MAX_SEGMENTS) * stride;
    let size = stride as u16;
    for batch in data.chunks(per_send) {
        let cmsg = [ControlMessage::UdpGsoSegments(&size)];
        let cmsgs: &[ControlMessage] = if batch.len() > stride { &cmsg } else { &[] };
        sendmsg(
            fd,
            &[IoSlice::new(batch)],
            cmsgs,
            MsgFlags::empty(),
            Some(to),
        )?;
    }
    Ok(data.len().div_ceil(stride))
}
