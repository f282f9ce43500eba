//! Settling the framing of a connection: a client offers the extended framing with a
//! HELLO (a valid original frame with the IEEE local-experimental ethertype, which an
//! original server just forwards and never answers); our server answers ACK.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::datapath::framing::{encode_into, FrameError, LEN_PREFIX};

/// How frames are laid out on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The original tool's: length, Ethernet frame.
    Original,
    /// Ours, when both ends agree: length, virtio-net header, Ethernet frame.
    Extended,
}

impl Framing {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Framing::Original => "original",
            Framing::Extended => "extended (virtio-net header, offloads on)",
        }
    }
}

/// How long a client waits for the server's ACK before settling for the original framing.
pub(crate) const ACK_WAIT: Duration = Duration::from_millis(300);
/// How long a server waits for a client's first frame (HELLO or not).
pub(crate) const HELLO_WAIT: Duration = Duration::from_secs(1);

const NEGOTIATION_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
pub(crate) const HELLO: &[u8] = b"hpk-net-daemon vnet-hdr v1 hello";
pub(crate) const ACK: &[u8] = b"hpk-net-daemon vnet-hdr v1 ok";

/// A negotiation frame: locally administered MACs, experimental ethertype, padded to 60.
pub(crate) fn control_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x68, 0x70, 0x6b, 0x00, 0x01, 0x02, 0x68, 0x70, 0x6b, 0x00, 0x02,
    ];
    f.extend_from_slice(&NEGOTIATION_ETHERTYPE);
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

pub(crate) fn is_control(frame: &[u8], payload: &[u8]) -> bool {
    frame.len() >= 14 + payload.len()
        && frame[12..14] == NEGOTIATION_ETHERTYPE
        && &frame[14..14 + payload.len()] == payload
}

/// Sends one frame in the original framing (negotiation happens in it).
pub(crate) fn send_original(stream: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(LEN_PREFIX + frame.len());
    encode_into(&mut out, frame);
    (&*stream).write_all(&out)
}

/// Whether a read ended because nothing came in time.
pub(crate) fn timed_out(e: &FrameError) -> bool {
    matches!(e, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_frames_are_valid_ethernet() {
        let hello = control_frame(HELLO);
        assert_eq!(hello.len(), 60);
        assert!(is_control(&hello, HELLO) && !is_control(&hello, ACK));
        assert!(is_control(&control_frame(ACK), ACK));
        assert_eq!(
            hello[0] & 0x03,
            0x02,
            "locally administered unicast destination"
        );
    }
}
