//! Listening sockets of the host for published ports. A socket keeps the network namespace
//! it was opened in: the bubble's launcher, on the host as the job's user, binds a port when
//! hpk-netd asks and hands the socket over (SCM_RIGHTS), keeping no copy, so the port is
//! released when hpk-netd closes it (the container's stop) or dies (the bubble's end).
//! Where hpk-netd runs in the host's namespace itself (no bubble), it binds the port there.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hpk_hook::ports::Protocol;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::sys::fd_passing;
use crate::sys::unix_socket::OwnUidServer;

/// What hpk-netd asks the launcher for: a listening socket on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenRequest {
    pub protocol: Protocol,
    /// `0.0.0.0`: every address of the host.
    pub address: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum ListenReply {
    /// The socket comes with this message.
    Bound {
        listening: String,
    },
    Error {
        message: String,
    },
}

/// A bound socket of either kind.
pub enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Udp(u) => u.local_addr(),
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Udp(u) => u.as_fd(),
        }
    }
}

/// Binds what `req` asks for, here; the error says what to do.
pub fn bind(req: &ListenRequest) -> Result<Listener> {
    let at = SocketAddrV4::new(req.address, req.port);
    let bound = match req.protocol {
        Protocol::Tcp => TcpListener::bind(at).map(Listener::Tcp),
        Protocol::Udp => UdpSocket::bind(at).map(Listener::Udp),
    };
    bound.map_err(|e| {
        let what = format!("{at}/{}", req.protocol);
        match e.raw_os_error() {
            Some(libc::EADDRINUSE) => anyhow!(
                "host port {what} is in use (by another program or container): choose another \
                 host port"
            ),
            Some(libc::EACCES) => anyhow!(
                "host port {what} needs privileges the job's user does not have: choose 1024 or above"
            ),
            Some(libc::EADDRNOTAVAIL) => {
                anyhow!("the host has no address {}: publish on one of its own, or on all", req.address)
            }
            _ => anyhow!("cannot listen on host port {what}: {e}"),
        }
    })
}

/// Serves listening sockets on `listener` to processes of our own uid until dropped.
pub struct Server {
    /// Serves until dropped.
    _serving: OwnUidServer,
}

impl Server {
    pub fn spawn(listener: UnixListener) -> Result<Server> {
        OwnUidServer::spawn(
            listener,
            "ports-handover",
            Duration::from_millis(20),
            |stream| {
                if let Err(e) = answer(stream) {
                    warn!(error = format!("{e:#}"), "ports handover: request failed");
                }
            },
        )
        .map(|serving| Server { _serving: serving })
    }
}

/// Reads one request, binds, and sends the socket (then closes our copy of it).
fn answer(stream: UnixStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One line, bounded: a request is well under 1 KiB.
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, 4096)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<ListenRequest>(&line) {
        Err(e) => Err(anyhow!("malformed request: {e}")),
        Ok(req) => bind(&req),
    };
    let (text, listener) = match reply {
        Ok(l) => {
            let listening = l.local_addr()?.to_string();
            debug!(listening, "ports handover: bound");
            (
                serde_json::to_vec(&ListenReply::Bound { listening })?,
                Some(l),
            )
        }
        Err(e) => (
            serde_json::to_vec(&ListenReply::Error {
                message: format!("{e:#}"),
            })?,
            None,
        ),
    };
    let fds: Vec<_> = listener.iter().map(|l| l.fd().as_raw_fd()).collect();
    fd_passing::send(stream.as_fd(), &text, &fds).context("send")?;
    Ok(())
}

/// Asks the launcher serving at `path` for a listening socket.
pub fn request(path: &Path, req: &ListenRequest) -> Result<Listener> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "nothing serves host ports at {} (the bubble's launcher does)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = serde_json::to_vec(req)?;
    text.push(b'\n');
    stream.write_all(&text)?;
    let (answer, mut fds) = fd_passing::receive(stream.as_fd(), 4096)
        .with_context(|| format!("no answer from the launcher at {}", path.display()))?;
    match serde_json::from_slice::<ListenReply>(&answer)
        .with_context(|| format!("the launcher at {} answered garbage", path.display()))?
    {
        ListenReply::Error { message } => bail!("{message}"),
        ListenReply::Bound { .. } => {
            let fd: OwnedFd = fds
                .pop()
                .ok_or_else(|| anyhow!("the launcher answered without a socket"))?;
            Ok(match req.protocol {
                Protocol::Tcp => Listener::Tcp(TcpListener::from(fd)),
                Protocol::Udp => Listener::Udp(UdpSocket::from(fd)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_hands_over_a_bound_port_and_says_why_not() {
        let dir = std::env::temp_dir().join(format!("hpk-ports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ports.sock");
        let _server = Server::spawn(UnixListener::bind(&path).unwrap()).unwrap();
        let req = ListenRequest {
            protocol: Protocol::Tcp,
            address: Ipv4Addr::LOCALHOST,
            port: 0,
        };
        let Listener::Tcp(l) = request(&path, &req).unwrap() else {
            panic!("not tcp")
        };
        let at = l.local_addr().unwrap();
        assert!(std::net::TcpStream::connect(at).is_ok(), "not listening");
        // The same port again: in use, said so.
        let again = ListenRequest {
            port: at.port(),
            ..req
        };
        let err = request(&path, &again).err().unwrap().to_string();
        assert!(err.contains("is in use"), "{err}");
        let udp = ListenRequest {
            protocol: Protocol::Udp,
            ..req
        };
        assert!(matches!(request(&path, &udp).unwrap(), Listener::Udp(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
