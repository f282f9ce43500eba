//! The hub's answers to hpk-netd's requests.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{accept4, setsockopt, sockopt, SockFlag};
use nix::sys::time::{TimeVal, TimeValLike};
use tracing::{debug, warn};

use super::pairs::Hub;
use super::protocol::{receive_message, send_message, HubReply, HubRequest};

impl Hub {
    fn answer(&mut self, request: &[u8], fds: Vec<OwnedFd>) -> HubReply {
        let request: HubRequest = match serde_json::from_slice(request) {
            Ok(r) => r,
            Err(e) => {
                return HubReply::Error {
                    message: format!("not a hub request: {e}"),
                }
            }
        };
        match request {
            HubRequest::Add {
                id,
                pid,
                start,
                identity,
            } => match self.add(id.clone(), pid, start, identity, fds) {
                Ok(()) => HubReply::Done,
                Err(e) => HubReply::Error {
                    message: format!("{id}: {e:#}"),
                },
            },
            HubRequest::Remove { id } => {
                if self.remove(&id) {
                    debug!(id, "removed");
                }
                HubReply::Done
            }
            HubRequest::List => HubReply::Ids {
                ids: self.by_id.keys().cloned().collect(),
            },
            HubRequest::Counters => HubReply::Counters {
                endpoints: self
                    .slots
                    .iter()
                    .flatten()
                    .map(|p| (p.id.clone(), p.shortcut.get()))
                    .collect(),
            },
        }
    }

    /// Answers every pending connection: one request each.
    pub(super) fn serve_control(&mut self) {
        loop {
            let conn = match accept4(self.control.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just returned this fd.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    warn!(error = %e, "control socket");
                    return;
                }
            };
            // A client that connects and says nothing must not stall the frames.
            let _ = setsockopt(&conn, sockopt::ReceiveTimeout, &TimeVal::seconds(1));
            let reply = match receive_message(conn.as_fd()) {
                Ok((request, fds)) => self.answer(&request, fds),
                Err(e) => HubReply::Error {
                    message: format!("cannot read the request: {e}"),
                },
            };
            let text = serde_json::to_vec(&reply).expect("replies serialize");
            let _ = send_message(conn.as_fd(), &text, &[]);
        }
    }
}
