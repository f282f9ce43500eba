//! Listening UNIX sockets: stale-socket handling, mode and owner.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Uid};

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
