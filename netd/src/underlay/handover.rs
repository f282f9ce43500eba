//! Passing the host's UDP socket into a bubble. A socket keeps the network namespace it
//! was opened in: the launcher opens it on the host and serves it on a UNIX socket; each
//! hpk-netd start (first or restart, under `unshare` or in an Apptainer instance)
//! fetches it with SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockType,
    SockaddrStorage,
};
use tracing::{debug, warn};

/// The one byte sent along with the descriptor.
const TAG: &[u8] = b"U";

/// Serves `socket` on `listener` to processes of our own uid until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn spawn(listener: UnixListener, socket: UdpSocket) -> Result<Server> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("underlay-handover".into())
            .spawn(move || serve(&listener, &socket, &flag))?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &UnixListener, socket: &UdpSocket, stop: &AtomicBool) {
    let me = nix::unistd::geteuid().as_raw();
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => {
                warn!(error = %e, "underlay handover: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match getsockopt(&stream, sockopt::PeerCredentials) {
            Ok(cred) if cred.uid() == me || me == 0 => {}
            Ok(cred) => {
                warn!(uid = cred.uid(), "underlay handover: refused a foreign uid");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "underlay handover: no peer credentials");
                continue;
            }
        }
        let fds = [socket.as_raw_fd()];
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(TAG)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => debug!("underlay socket handed over"),
            Err(e) => warn!(error = %e, "underlay handover: send failed"),
        }
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
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .with_context(|| format!("cannot receive the host UDP socket from {}", path.display()))?;
    let fd = msg
        .cmsgs()?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{} answered without a socket", path.display()))?;
    // SAFETY: the descriptor was just received and belongs to nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
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
