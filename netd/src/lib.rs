//! hpk-netd: the network side of an hpktainer bubble.
//!
//! This crate holds the per-container data path (`hpk-net-daemon`): taps with the
//! virtio-net header, tap-to-tap forwarding, and the original tool's socket framing.

pub mod forward;
pub mod framing;
pub mod link;
pub mod logging;
pub mod netns;
pub mod pidwatch;
pub mod socket_mode;
pub mod tap;
