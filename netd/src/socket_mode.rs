//! Socket mode: frames between a tap and a UNIX stream socket, in the original framing.
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
use tracing::{info, warn};

use crate::forward::PumpStopped;
use crate::framing::{FrameError, FrameReader, LEN_PREFIX};
use crate::tap::{Tap, MAX_FRAME};

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

/// The connection frames from the tap go to; replaced when a new peer connects.
#[derive(Default)]
struct Peer(Mutex<Option<Arc<UnixStream>>>);

impl Peer {
    fn get(&self) -> Option<Arc<UnixStream>> {
        self.0.lock().unwrap().clone()
    }

    /// Installs `stream`, closing the one it replaces.
    fn set(&self, stream: Arc<UnixStream>) {
        if let Some(old) = self.0.lock().unwrap().replace(stream) {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forgets `stream` if it is still the current peer.
    fn clear(&self, stream: &Arc<UnixStream>) {
        let mut slot = self.0.lock().unwrap();
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, stream)) {
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
    let mut buf = vec![0u8; BATCH + LEN_PREFIX + MAX_FRAME];
    loop {
        if let Err(e) = wait_readable(tap) {
            return stopped(e);
        }
        // Drain what the tap has queued, up to one batch.
        let mut len = 0;
        while len < BATCH {
            match tap.read_frame(&mut buf[len + LEN_PREFIX..len + LEN_PREFIX + MAX_FRAME]) {
                Ok(n) => {
                    buf[len..len + LEN_PREFIX].copy_from_slice(&(n as u32).to_be_bytes());
                    len += LEN_PREFIX + n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return stopped(e),
            }
        }
        if len == 0 {
            continue;
        }
        if let Some(stream) = peer.get() {
            if let Err(e) = (&*stream).write_all(&buf[..len]) {
                info!(error = %e, "peer connection lost while sending");
                peer.clear(&stream);
            }
        }
    }
}

/// Reads frames from `stream` into the tap until the stream ends or goes bad.
/// Returns `Err` only when the tap itself failed.
fn peer_to_tap(stream: &Arc<UnixStream>, tap: &Tap) -> std::result::Result<(), PumpStopped> {
    let mut reader = FrameReader::new(&**stream);
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                if let Err(error) = tap.write_frame(frame) {
                    match error.raw_os_error() {
                        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOBUFS) => continue,
                        _ => {
                            return Err(PumpStopped {
                                tap: tap.name().to_owned(),
                                error,
                            })
                        }
                    }
                }
            }
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

/// Serves one peer at a time on `listener`; a new peer replaces the old one.
/// Returns only when the tap fails.
pub fn serve(
    tap: Arc<Tap>,
    listener: UnixListener,
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
        info!("peer connected");
        peer.set(stream.clone());
        let (tap, peer, on_stop) = (tap.clone(), peer.clone(), on_stop.clone());
        std::thread::Builder::new()
            .name("peer>tap".into())
            .spawn(move || {
                let result = peer_to_tap(&stream, &tap);
                peer.clear(&stream);
                if let Err(stopped) = result {
                    on_stop(stopped);
                }
            })
            .context("cannot spawn a connection thread")?;
    }
    Ok(())
}

/// Connects to the server at `path`, reconnecting whenever the connection ends.
pub fn run_client(
    tap: Arc<Tap>,
    path: PathBuf,
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
                let stream = Arc::new(stream);
                peer.set(stream.clone());
                let result = peer_to_tap(&stream, &tap);
                peer.clear(&stream);
                if let Err(stopped) = result {
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
    fn owners_parse() {
        let o: Owner = "1000:100".parse().unwrap();
        assert_eq!(o.uid, Uid::from_raw(1000));
        assert_eq!(o.gid, Some(Gid::from_raw(100)));
        let root: Owner = "root".parse().unwrap();
        assert_eq!(root.uid, Uid::from_raw(0));
        assert!("no-such-user-hpk".parse::<Owner>().is_err());
    }
}
