//! Listening UNIX sockets: stale-socket handling, mode and owner; a server thread that
//! answers processes of our own uid only (the launcher's hand-overs to hpk-netd).

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};
use tracing::warn;

/// Binds the server socket: refuses a live one, replaces a stale one, sets mode and owner.
pub fn bind(path: &Path, mode: u32, uid: Option<Uid>, gid: Option<Gid>) -> Result<UnixListener> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "socket {} is in use by another server; stop it or choose another path",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    let cleanup_on_err = |e: anyhow::Error| {
        let _ = fs::remove_file(path);
        e
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))
        .map_err(cleanup_on_err)?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid)
            .with_context(|| format!("cannot give {} to uid {uid:?} gid {gid:?}", path.display()))
            .map_err(cleanup_on_err)?;
    }
    Ok(listener)
}

/// Serves connections of processes of our own uid (or any, when we are root) on a
/// listener, one at a time on a thread of its own, until dropped.
pub struct OwnUidServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnUidServer {
    /// `name` names the thread and the log lines; `poll`: how often the stop flag is
    /// looked at while nobody connects.
    pub fn spawn(
        listener: UnixListener,
        name: &'static str,
        poll: Duration,
        handle: impl Fn(UnixStream) + Send + 'static,
    ) -> Result<OwnUidServer> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(&listener, name, poll, &flag, handle))?;
        Ok(OwnUidServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for OwnUidServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: &UnixListener,
    name: &str,
    poll: Duration,
    stop: &AtomicBool,
    handle: impl Fn(UnixStream),
) {
    let me = nix::unistd::geteuid().as_raw();
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(poll);
                continue;
            }
            Err(e) => {
                warn!(error = %e, "{name}: accept failed");
                std::thread::sleep(poll);
                continue;
            }
        };
        match getsockopt(&stream, sockopt::PeerCredentials) {
            Ok(cred) if cred.uid() == me || me == 0 => handle(stream),
            Ok(cred) => warn!(uid = cred.uid(), "{name}: refused a foreign uid"),
            Err(e) => warn!(error = %e, "{name}: no peer credentials"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_refuses_a_regular_file_and_replaces_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("hpk-bind-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        fs::write(&file, b"keep me").unwrap();
        let err = bind(&file, 0o600, None, None).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"keep me");

        let sock = dir.join("sock");
        drop(UnixListener::bind(&sock).unwrap()); // leaves a stale socket file
        let live = bind(&sock, 0o600, None, None).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&sock, 0o600, None, None).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);
        fs::remove_dir_all(&dir).unwrap();
    }
}
