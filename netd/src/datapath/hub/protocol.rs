//! The hub's control protocol: one JSON request per SOCK_SEQPACKET message, tap fds
//! attached with SCM_RIGHTS, one reply.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use crate::datapath::shortcut::{Identity, ShortcutCounters};
use crate::sys::fd_passing;

/// Largest control message (JSON).
const MAX_REQUEST: usize = 4096;

/// A request on the hub's control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HubRequest {
    /// Serve the two taps attached (container side, then bubble side) for endpoint `id`,
    /// until process `pid` (started at `start`, in clock ticks after boot) exits. With
    /// the container's `identity`, frames between it and the hub's other containers
    /// skip the bridge.
    Add {
        id: String,
        pid: i32,
        start: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<Identity>,
    },
    /// Stop serving `id`: its taps are closed, which removes them.
    Remove { id: String },
    /// The endpoints served.
    List,
    /// What each endpoint moved past the bridge.
    Counters,
}

/// The hub's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HubReply {
    Done,
    Ids {
        ids: Vec<String>,
    },
    Counters {
        endpoints: BTreeMap<String, ShortcutCounters>,
    },
    Error {
        message: String,
    },
}

/// Sends one message with `fds` attached on a SOCK_SEQPACKET socket.
pub fn send_message(socket: BorrowedFd, message: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    fd_passing::send(socket, message, fds)
}

/// Receives one request or reply and the fds attached to it.
pub fn receive_message(socket: BorrowedFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    fd_passing::receive(socket, MAX_REQUEST)
}
