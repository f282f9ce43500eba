//! Passing descriptors over UNIX sockets (SCM_RIGHTS): one message and its fds. The one
//! place that checks what the kernel can silently drop: fds that could not be installed
//! (MSG_CTRUNC) and a message longer than the buffer (MSG_TRUNC).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The most fds one message carries.
pub const MAX_FDS: usize = 4;

/// Sends `message` with `fds` attached.
pub fn send(socket: BorrowedFd, message: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(message)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one message of at most `max_len` bytes and the fds attached to it (at most
/// [`MAX_FDS`]). `EMSGSIZE`: the message was longer; `EMFILE`: fds were dropped (out of
/// descriptors, or more than [`MAX_FDS`]).
pub fn receive(socket: BorrowedFd, max_len: usize) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max_len];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these fds for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let (len, flags) = (msg.bytes, msg.flags);
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(nix::errno::Errno::EMFILE);
    }
    buf.truncate(len);
    Ok((buf, fds))
}
