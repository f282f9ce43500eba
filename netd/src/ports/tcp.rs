//! A published TCP port: connections accepted on the host's listening socket are joined to
//! the container's port. With transparency the connection to the container leaves from the
//! client's own address (IP_TRANSPARENT), so the container sees who connected.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

/// Accepts on `listener` and forwards each connection to `target` until aborted.
pub async fn serve(
    listener: std::net::TcpListener,
    target: SocketAddrV4,
    transparent: bool,
    forwarded: Arc<AtomicU64>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "published port: cannot serve the listening socket");
            return;
        }
    };
    // The connections' tasks: aborted with this one (the port closed).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (client, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                debug!(error = %e, "published port: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        forwarded.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            let from = transparent.then_some(peer);
            match connect(target, from).await {
                Ok(upstream) => join(client, upstream).await,
                Err(e) => debug!(%peer, %target, error = %e, "published port: container refused"),
            }
        });
    }
}

/// Connects to `target`, from the client's address `from` when given.
async fn connect(target: SocketAddrV4, from: Option<SocketAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(SocketAddr::V4(from)) = from {
        setsockopt(&socket, sockopt::IpTransparent, &true)?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::V4(from))?;
    }
    socket.connect(SocketAddr::V4(target)).await
}

/// Moves bytes both ways until both sides are done: a thread per direction, each
/// splicing socket to pipe to socket, so the bytes never enter user space (half the CPU of
/// copying them, which is what a published port's throughput is bound by here).
async fn join(client: TcpStream, upstream: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client), Ok(upstream)) = (blocking(client), blocking(upstream)) else {
        return;
    };
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let there = std::thread::spawn(move || pump(&client, &upstream));
    let back = std::thread::spawn(move || pump(&upstream2, &client2));
    let _ = tokio::task::spawn_blocking(move || {
        let _ = there.join();
        let _ = back.join();
    })
    .await;
}

fn blocking(stream: TcpStream) -> std::io::Result<std::net::TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// `from` to `to` until `from` ends (then `to` is told so) or either fails.
fn pump(from: &std::net::TcpStream, to: &std::net::TcpStream) {
    use nix::fcntl::{splice, OFlag, SpliceFFlags};
    const CHUNK: usize = 1 << 20;
    let Ok((pipe_out, pipe_in)) = nix::unistd::pipe2(OFlag::O_CLOEXEC) else {
        return;
    };
    // A larger pipe moves more per call (the default holds 64 KiB).
    let _ = nix::fcntl::fcntl(&pipe_in, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    loop {
        let n = match splice(
            from,
            None,
            &pipe_in,
            None,
            CHUNK,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match splice(&pipe_out, None, to, None, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) | Err(_) => {
                    let _ = from.shutdown(std::net::Shutdown::Read);
                    return;
                }
                Ok(m) => left -= m,
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
