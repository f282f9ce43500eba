//! Noticing that a container's process has exited.
//!
//! A tap fd holds a reference on the network namespace it was created in, so a forwarder
//! never sees its container-side tap vanish: it has to watch the container's process.
//! A pidfd becomes readable when the process exits, and cannot be fooled by PID reuse.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// An open handle on a process that reports its exit.
pub struct PidWatch {
    pid: i32,
    fd: OwnedFd,
}

impl PidWatch {
    pub fn open(pid: i32) -> io::Result<PidWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidWatch { pid, fd })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> io::Result<()> {
        self.poll(-1).map(|_| ())
    }

    /// Waits up to `timeout`; true when the process has exited.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        self.poll(ms).unwrap_or(false)
    }

    fn poll(&self, timeout_ms: i32) -> io::Result<bool> {
        crate::sys::poll::readable(&[self.fd.as_raw_fd()], timeout_ms)
    }

    /// The pidfd, readable once the process has exited (for an async reactor).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for PidWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The PID in a `/proc/PID/ns/net` path, if it is one.
pub fn pid_of_netns_path(path: &Path) -> Option<i32> {
    let mut parts = path.strip_prefix("/proc").ok()?.components();
    let pid = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    (parts.as_path() == Path::new("ns/net")).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_from_proc_path() {
        assert_eq!(pid_of_netns_path(Path::new("/proc/42/ns/net")), Some(42));
        assert_eq!(pid_of_netns_path(Path::new("/run/netns/c1")), None);
        assert_eq!(pid_of_netns_path(Path::new("/proc/self/ns/net")), None);
        assert_eq!(pid_of_netns_path(Path::new("/proc/42/ns/mnt")), None);
    }

    #[test]
    fn exit_is_noticed() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        let watch = PidWatch::open(child.id() as i32).unwrap();
        child.wait().unwrap(); // reaped: the pidfd still reports the exit
        watch.wait().unwrap();
    }
}
