//! The two threads of userspace vxlan: tap to socket ([`super::transmit`]) and socket to
//! tap (`recvmmsg` with UDP GRO, check sender, port and seal, then the VNI, MAC and
//! source, join TCP segments, one tap write per joined frame, then any reply waiting).

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn,
};
use tracing::{error, info, warn};

use super::auth::seal::{Opener, Refused};
use super::forwarding::{Counters, PeerTable, Sender};
use super::gso::Coalescer;
use super::header;
pub use super::transmit::Sealing;
use super::transmit::{self, SharedTransmit, Transmit};
use crate::datapath::frame_lost;
use crate::sys::tap::Tap;

/// Datagrams received per `recvmmsg`.
const RX_BATCH: usize = 8;
/// Room for one GRO batch (at most 64 KiB of UDP payload).
const RX_BUF: usize = 65536;
/// How long the receive thread keeps looking for the next datagram and for replies at the
/// tap before it sleeps: a wake-up costs tens of microseconds on a VM's idle vCPU, several
/// per round trip; the forwarders' hub does the same (`busy_poll_us`).
const POLL_AFTER_TRAFFIC: Duration = Duration::from_micros(100);
/// Frames the receive thread picks up from the tap after its writes (replies).
const REPLY_BUDGET: usize = 8;
/// Socket buffers asked for; the kernel caps them at net.core.[rw]mem_max.
const SOCKET_BUFFER: usize = 8 << 20;

/// Everything both directions need.
pub struct Path {
    pub tap: Tap,
    pub socket: UdpSocket,
    pub vni: u32,
    /// The network's vxlan port, where peers listen.
    pub port: u16,
    pub peers: Arc<PeerTable>,
    pub counters: Arc<Counters>,
    /// The tap's MTU: a longer frame from a peer goes in as a GSO frame.
    pub mtu: usize,
    /// Our VtepMAC: the only destination of frames from peers (flannel's neighbours are
    /// static, nothing is flooded).
    pub mac: [u8; 6],
}

/// Sizes the socket's buffers and turns on UDP GRO; says what the kernel granted.
/// Returns whether UDP GSO is available.
fn tune(socket: &UdpSocket) -> bool {
    let _ = setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER));
    let _ = setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER));
    let gro = setsockopt(socket, sockopt::UdpGroSegment, &true).is_ok();
    let gso = setsockopt(socket, sockopt::UdpGsoSegment, &0).is_ok();
    let rcv = nix::sys::socket::getsockopt(socket, sockopt::RcvBuf).unwrap_or(0);
    let snd = nix::sys::socket::getsockopt(socket, sockopt::SndBuf).unwrap_or(0);
    info!(
        receive_buffer = rcv,
        send_buffer = snd,
        udp_gro = gro,
        udp_gso = gso,
        "underlay socket tuned"
    );
    if rcv < SOCKET_BUFFER {
        warn!(
            "the underlay socket's receive buffer is {rcv} bytes (asked for {SOCKET_BUFFER}); \
             bursts may be dropped: raise net.core.rmem_max on the hosts"
        );
    }
    gso
}

/// Starts both directions. A thread that fails for good (the tap or the socket is gone)
/// ends hpk-netd so that its supervisor starts it again.
pub fn spawn(path: Path, sealing: Option<Sealing>) -> io::Result<()> {
    let gso = tune(&path.socket);
    path.tap.set_nonblocking(true)?;
    let path = Arc::new(path);
    let tx_path = path.clone();
    let mut opener = sealing.as_ref().map(|s| Opener::new(s.keys.clone()));
    let transmit: SharedTransmit = Arc::new(Mutex::new(Transmit::new(path.vni, gso, sealing)));
    let tx = transmit.clone();
    std::thread::Builder::new()
        .name("vxlan-tx".into())
        .spawn(move || fatal("tap to socket", transmit::run(&tx_path, &tx)))?;
    std::thread::Builder::new()
        .name("vxlan-rx".into())
        .spawn(move || fatal("socket to tap", to_tap(&path, opener.as_mut(), &transmit)))?;
    Ok(())
}

fn fatal(direction: &str, e: io::Error) {
    error!(direction, error = %e, "the vxlan data path stopped; exiting so that hpk-netd is restarted");
    std::process::exit(1);
}

pub(super) fn bump(counter: &AtomicU64, n: usize) {
    Counters::add(counter, n as u64);
}

fn to_tap(p: &Path, mut opener: Option<&mut Opener>, transmit: &SharedTransmit) -> io::Error {
    let c = &p.counters;
    let mut bufs = vec![vec![0u8; RX_BUF]; RX_BATCH];
    let mut coalescer = Coalescer::with_mtu(p.mtu);
    let mut received: Vec<(usize, Option<SocketAddrV4>, usize, bool)> =
        Vec::with_capacity(RX_BATCH);
    let mut write_errors: Option<io::Error> = None;
    // After traffic the thread keeps looking, without sleeping, for `POLL_AFTER_TRAFFIC`:
    // at the next datagram and at the tap (a reply a process makes within that time).
    let mut polling_until: Option<Instant> = None;
    loop {
        received.clear();
        let polling = polling_until.is_some_and(|t| Instant::now() < t);
        let flags = if polling {
            MsgFlags::MSG_WAITFORONE | MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_WAITFORONE
        };
        {
            // Fresh headers per call: the kernel shrinks each header's control length to
            // what it wrote, and nix does not reset it, so reused headers would lose the
            // GRO segment size after the first plain datagram.
            let mut headers =
                MultiHeaders::<SockaddrIn>::preallocate(RX_BATCH, Some(nix::cmsg_space!(i32)));
            let mut iovs: Vec<[IoSliceMut; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let msgs = match recvmmsg(
                p.socket.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                flags,
                None,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => {
                    if let Ok(mut t) = transmit.try_lock() {
                        if let Err(e) = t.drain(p, REPLY_BUDGET) {
                            return e;
                        }
                    }
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => return e.into(),
            };
            for m in msgs {
                let seg = m
                    .cmsgs()
                    .ok()
                    .and_then(|mut cs| {
                        cs.find_map(|c| match c {
                            ControlMessageOwned::UdpGroSegments(s) => Some(s as usize),
                            _ => None,
                        })
                    })
                    .unwrap_or(m.bytes);
                let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
                received.push((m.bytes, m.address.map(SocketAddrV4::from), seg, truncated));
            }
        }
        for (buf, (len, from, seg, truncated)) in bufs.iter_mut().zip(&received) {
            let data = &mut buf[..*len];
            let count = data.len().div_ceil((*seg).max(1));
            bump(&c.rx_datagrams, count);
            bump(&c.rx_bytes, data.len());
            if *truncated {
                bump(&c.drop_malformed, count);
                continue;
            }
            let Some((from, sender)) = from.and_then(|a| Some((a, p.peers.sender(*a.ip())?)))
            else {
                bump(&c.drop_unknown_sender, count);
                continue;
            };
            if sender.port.is_some_and(|port| port != from.port()) {
                bump(&c.drop_wrong_port, count);
                continue;
            }
            for datagram in data.chunks_mut((*seg).max(1)) {
                let datagram: &[u8] = if !sender.sealed {
                    datagram
                } else {
                    let Some(opener) = opener.as_deref_mut() else {
                        bump(&c.drop_no_key, 1);
                        continue;
                    };
                    match opener.open(*from.ip(), datagram) {
                        Ok(opened) => {
                            bump(&c.rx_authenticated, 1);
                            &datagram[opened]
                        }
                        Err(Refused::Replayed) => {
                            bump(&c.drop_replayed, 1);
                            continue;
                        }
                        Err(_) => {
                            bump(&c.drop_unauthenticated, 1);
                            continue;
                        }
                    }
                };
                match header::decode(datagram, p.vni) {
                    Ok(frame) if frame[..6] != p.mac => bump(&c.drop_not_for_us, 1),
                    Ok(frame) if !from_lease(frame, &sender) => bump(&c.drop_foreign_source, 1),
                    Ok(frame) => coalescer.push(frame, &mut |f| write(p, f, &mut write_errors)),
                    Err(header::Rejected::WrongVni(_)) => bump(&c.drop_wrong_vni, 1),
                    Err(_) => bump(&c.drop_malformed, 1),
                }
            }
        }
        coalescer.flush(&mut |f| write(p, f, &mut write_errors));
        polling_until = Some(Instant::now() + POLL_AFTER_TRAFFIC);
        // What we wrote may have been answered at once (an echo, an ACK): send that now,
        // unless the transmit thread is at it already.
        if let Ok(mut t) = transmit.try_lock() {
            if let Err(e) = t.drain(p, REPLY_BUDGET) {
                write_errors.get_or_insert(e);
            }
        }
        bump(&c.rx_partial_checksum, coalescer.take_partial() as usize);
        if let Some(e) = write_errors.take() {
            return e;
        }
    }
}

/// Whether an inner IPv4 packet's source lies in the sender's lease (other frames pass:
/// ARP is answered by our own static neighbours, and flannel carries IPv4 only).
fn from_lease(frame: &[u8], sender: &Sender) -> bool {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return true;
    }
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    sender.subnet.contains(&src)
}

/// Writes one frame to the tap; a lost frame is counted, a dead tap remembered.
fn write(p: &Path, frame: &[u8], fatal: &mut Option<io::Error>) {
    match p.tap.write_frame(frame) {
        Ok(_) => bump(&p.counters.rx_frames, 1),
        Err(e) if frame_lost(&e) => bump(&p.counters.drop_tap_write, 1),
        Err(e) => {
            fatal.get_or_insert(e);
        }
    }
}
