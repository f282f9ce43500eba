//! A published UDP port: each client (address and port) gets a flow, a socket connected to
//! the container's port (from the client's own address with transparency); the container's
//! answers go back to that client through the host's socket. Idle flows end.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// A flow without traffic this long ends.
const IDLE: Duration = Duration::from_secs(60);
/// Flows of one published port at once; datagrams of new clients beyond it are dropped.
const MAX_FLOWS: usize = 1024;

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>;

pub async fn serve(
    socket: std::net::UdpSocket,
    target: SocketAddrV4,
    transparent: bool,
    forwarded: Arc<AtomicU64>,
) {
    let host = match socket
        .set_nonblocking(true)
        .and_then(|()| UdpSocket::from_std(socket))
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "published port: cannot serve the UDP socket");
            return;
        }
    };
    let flows: Flows = Arc::default();
    // The flows' tasks: aborted with this one (the port closed), with their sockets.
    let mut answering = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        while answering.try_join_next().is_some() {}
        let (n, client) = match host.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                debug!(error = %e, "published port: receive failed");
                continue;
            }
        };
        let flow = flows.lock().unwrap().get(&client).cloned();
        let flow = match flow {
            Some(f) => f,
            None => {
                if flows.lock().unwrap().len() >= MAX_FLOWS {
                    continue;
                }
                match open_flow(target, transparent.then_some(client)).await {
                    Ok(f) => {
                        forwarded.fetch_add(1, Ordering::Relaxed);
                        let f = Arc::new(f);
                        flows.lock().unwrap().insert(client, f.clone());
                        answering.spawn(answers(f.clone(), host.clone(), client, flows.clone()));
                        f
                    }
                    Err(e) => {
                        debug!(%client, error = %e, "published port: no flow");
                        continue;
                    }
                }
            }
        };
        let _ = flow.send(&buf[..n]).await;
    }
}

/// A socket connected to the container, bound to the client's address when given.
async fn open_flow(target: SocketAddrV4, from: Option<SocketAddr>) -> std::io::Result<UdpSocket> {
    let bind = match from {
        Some(from) => {
            let socket = std::net::UdpSocket::from(nix_socket()?);
            setsockopt(&socket, sockopt::IpTransparent, &true)?;
            setsockopt(&socket, sockopt::ReuseAddr, &true)?;
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                &nix::sys::socket::SockaddrIn::from(match from {
                    SocketAddr::V4(v4) => v4,
                    SocketAddr::V6(_) => return Err(std::io::ErrorKind::Unsupported.into()),
                }),
            )?;
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)?
        }
        None => UdpSocket::bind("0.0.0.0:0").await?,
    };
    bind.connect(SocketAddr::V4(target)).await?;
    Ok(bind)
}

fn nix_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    Ok(socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// The container's answers on `flow`, sent to `client` from the host's socket.
async fn answers(flow: Arc<UdpSocket>, host: Arc<UdpSocket>, client: SocketAddr, flows: Flows) {
    let mut buf = vec![0u8; 65535];
    while let Ok(Ok(n)) = tokio::time::timeout(IDLE, flow.recv(&mut buf)).await {
        let _ = host.send_to(&buf[..n], client).await;
    }
    flows.lock().unwrap().remove(&client);
}
