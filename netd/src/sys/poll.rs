//! `poll(2)` on a few fds, retried when a signal interrupts it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Waits until one of `fds` is readable or `timeout_ms` passes (-1: forever); returns
/// whether one is readable.
pub fn readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds.iter().map(|&fd| pollin(fd)).collect();
    poll(&mut pfds, timeout_ms)
}

/// Like [`readable`] for a fixed set, saying which of them are readable (or hung up).
pub fn which_readable<const N: usize>(fds: [RawFd; N], timeout_ms: i32) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(pollin);
    poll(&mut pfds, timeout_ms)?;
    Ok(pfds.map(|p| p.revents != 0))
}

fn pollin(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn poll(pfds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<bool> {
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds for the whole call.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Blocks until `fd` is readable.
pub fn wait_readable(fd: &impl AsRawFd) -> io::Result<()> {
    readable(&[fd.as_raw_fd()], -1).map(|_| ())
}
