//! Passing the host's UDP socket into a bubble. A socket keeps the network namespace it
//! was opened in: the launcher opens it on the host and serves it on a UNIX socket; each
//! hpk-netd start (first or restart, under `unshare` or in an Apptainer instance)
//! fetches it with SCM_RIGHTS.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{getsockopt, sockopt, SockType, SockaddrStorage};
use tracing::{debug, warn};

use crate::sys::fd_passing;
use crate::sys::unix_socket::OwnUidServer;

/// The one byte sent along with the descriptor.
const TAG: &[u8] = b"U";

/// Serves `socket` on `listener` to processes of our own uid until dropped.
pub struct Server {
    /// Serves until dropped.
    _serving: OwnUidServer,
}

impl Server {
    pub fn spawn(listener: UnixListener, socket: UdpSocket) -> Result<Server> {
        OwnUidServer::spawn(
            listener,
            "underlay-handover",
            Duration::from_millis(100),
            move |stream| send(&stream, &socket),
        )
        .map(|serving| Server { _serving: serving })
    }
}

fn send(stream: &UnixStream, socket: &UdpSocket) {
    match fd_passing::send(stream.as_fd(), TAG, &[socket.as_raw_fd()]) {
        Ok(()) => debug!("underlay socket handed over"),
        Err(e) => warn!(error = %e, "underlay handover: send failed"),
    }
}

/// Fetches the UDP socket served at `path`, waiting up to `wait` for the server.
pub fn receive(path: &Path, wait: Duration) -> Result<UdpSocket> {
    let deadline = Instant::now() + wait;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                debug!(error = %e, "underlay socket not served yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "nothing serves the host UDP socket at {} (the bubble's launcher does; \
                         without one, use --underlay kernel)",
                        path.display()
                    )
                })
            }
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (_, mut fds) = fd_passing::receive(stream.as_fd(), 16)
        .with_context(|| format!("cannot receive the host UDP socket from {}", path.display()))?;
    let fd = fds
        .pop()
        .ok_or_else(|| anyhow!("{} answered without a socket", path.display()))?;
    check(fd)
}

/// Makes sure `fd` is a bound IPv4 UDP socket.
pub fn check(fd: OwnedFd) -> Result<UdpSocket> {
    let kind = getsockopt(&fd, sockopt::SockType).context("not a socket")?;
    let inet = nix::sys::socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .is_ok_and(|a| a.as_sockaddr_in().is_some());
    if kind != SockType::Datagram || !inet {
        bail!("the handed-over descriptor is not an IPv4 UDP socket");
    }
    let socket = UdpSocket::from(fd);
    let local = local_addr(&socket)?;
    if local.port() == 0 {
        bail!("the handed-over UDP socket is not bound to a port");
    }
    socket.set_nonblocking(false)?;
    Ok(socket)
}

pub fn local_addr(socket: &UdpSocket) -> Result<SocketAddrV4> {
    match socket.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        other => bail!("the underlay socket is bound to {other}, not IPv4"),
    }
}
