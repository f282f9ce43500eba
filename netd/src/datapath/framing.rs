//! The original tool's stream framing: a 4-byte big-endian length, then one Ethernet frame.
//!
//! Reading is buffered so that one `read` on the socket usually yields many frames; a
//! frame is only ever handed out whole, so a tap never sees part of one.

use std::io::{self, Read};

use thiserror::Error;

use crate::sys::tap::MAX_FRAME;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Shortest valid frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Bytes the reader asks the socket for at once.
const READ_BUFFER: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("invalid frame length {0} (valid: {1} to {2} bytes); the stream is garbled or not in hpk-net-daemon framing")]
    BadLength(u32, usize, usize),
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("read from stream: {0}")]
    Io(#[from] io::Error),
}

/// Appends `frame` with its length prefix to `out`.
pub fn encode_into(out: &mut Vec<u8>, frame: &[u8]) {
    debug_assert!((MIN_FRAME..=MAX_FRAME).contains(&frame.len()));
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// Splits a byte stream into frames.
pub struct FrameReader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    min: usize,
    max: usize,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: vec![0u8; READ_BUFFER + LEN_PREFIX + crate::sys::tap::VNET_HDR_LEN + MAX_FRAME]
                .into_boxed_slice(),
            start: 0,
            end: 0,
            min: MIN_FRAME,
            max: MAX_FRAME,
        }
    }

    /// Changes the valid frame sizes (e.g. when frames start carrying a header).
    pub fn set_limits(&mut self, min: usize, max: usize) {
        self.min = min;
        self.max = max;
    }

    /// The length of the frame at the head of the buffer, once its prefix is complete.
    fn head_len(&self) -> Result<Option<usize>, FrameError> {
        if self.end - self.start < LEN_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(&self.buf[self.start..self.start + LEN_PREFIX]);
        let len = u32::from_be_bytes(prefix);
        if (len as usize) < self.min || len as usize > self.max {
            return Err(FrameError::BadLength(len, self.min, self.max));
        }
        Ok(Some(len as usize))
    }

    /// Returns the next whole frame, `Ok(None)` on a clean end of stream between frames.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            if let Some(len) = self.head_len()? {
                let total = LEN_PREFIX + len;
                if self.end - self.start >= total {
                    let frame = self.start + LEN_PREFIX..self.start + total;
                    self.start += total;
                    return Ok(Some(&self.buf[frame]));
                }
            }
            // Need more bytes: move the partial frame to the front if the tail is short.
            if self.buf.len() - self.start < LEN_PREFIX + self.max {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                let got = self.end - self.start;
                return if got == 0 {
                    Ok(None)
                } else {
                    let want = match self.head_len()? {
                        Some(len) => LEN_PREFIX + len,
                        None => LEN_PREFIX,
                    };
                    Err(FrameError::Truncated { got, want })
                };
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in fixed pieces, to split frames across reads.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl Read for Chunked {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn frame(fill: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
    }

    fn read_all(data: Vec<u8>, chunk: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut reader = FrameReader::new(Chunked {
            data,
            pos: 0,
            chunk,
        });
        let mut frames = Vec::new();
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    /// The golden stream: bytes as the original tool puts them on the wire.
    fn golden() -> (Vec<u8>, Vec<Vec<u8>>) {
        let frames = vec![
            frame(1, 60),
            frame(7, 1514),
            frame(9, 14),
            frame(3, MAX_FRAME),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
            wire.extend_from_slice(f);
        }
        (wire, frames)
    }

    #[test]
    fn encoder_writes_the_original_byte_format() {
        let f = frame(0xaa, 60);
        let mut out = Vec::new();
        encode_into(&mut out, &f);
        assert_eq!(&out[..4], &[0, 0, 0, 60]);
        assert_eq!(&out[4..], &f[..]);
        let (wire, frames) = golden();
        let mut ours = Vec::new();
        for f in &frames {
            encode_into(&mut ours, f);
        }
        assert_eq!(ours, wire);
    }

    #[test]
    fn back_to_back_frames_in_one_read() {
        let (wire, frames) = golden();
        let (got, err) = read_all(wire, usize::MAX);
        assert!(err.is_none());
        assert_eq!(got, frames);
    }

    #[test]
    fn frames_split_across_reads() {
        for chunk in [1, 3, 4, 5, 1000, 65539] {
            let (wire, frames) = golden();
            let (got, err) = read_all(wire, chunk);
            assert!(err.is_none(), "chunk {chunk}: {err:?}");
            assert_eq!(got, frames, "chunk {chunk}");
        }
    }

    #[test]
    fn many_frames_wrap_the_buffer() {
        let mut wire = Vec::new();
        let mut frames = Vec::new();
        for i in 0..400 {
            let f = frame(i as u8, 1000 + i * 37);
            encode_into(&mut wire, &f);
            frames.push(f);
        }
        let (got, err) = read_all(wire, 70_001);
        assert!(err.is_none());
        assert_eq!(got, frames);
    }

    #[test]
    fn zero_length_is_rejected() {
        let (wire, frames) = golden();
        let mut data = wire[..4 + 60].to_vec();
        data.extend_from_slice(&[0, 0, 0, 0]);
        data.extend_from_slice(&wire);
        let (got, err) = read_all(data, 7);
        assert_eq!(got, frames[..1]);
        assert!(
            matches!(err, Some(FrameError::BadLength(0, _, _))),
            "{err:?}"
        );
    }

    #[test]
    fn oversize_and_garbled_lengths_are_rejected() {
        for prefix in [[0, 1, 0, 0], [0xde, 0xad, 0xbe, 0xef], [0, 0, 0, 13]] {
            let mut data = prefix.to_vec();
            data.extend_from_slice(&frame(0, 100));
            let (got, err) = read_all(data, 64);
            assert!(got.is_empty());
            assert!(matches!(err, Some(FrameError::BadLength(..))), "{err:?}");
        }
    }

    #[test]
    fn truncated_frame_is_not_delivered() {
        let (wire, frames) = golden();
        let cut = 4 + 60 + 4 + 700;
        let (got, err) = read_all(wire[..cut].to_vec(), 100);
        assert_eq!(got, frames[..1]);
        match err {
            Some(FrameError::Truncated { got, want }) => {
                assert_eq!((got, want), (704, 1518));
            }
            other => panic!("expected truncation, got {other:?}"),
        }
        let (got, err) = read_all(wire[..4 + 60 + 2].to_vec(), 100);
        assert_eq!(got.len(), 1);
        assert!(matches!(
            err,
            Some(FrameError::Truncated { got: 2, want: 4 })
        ));
    }
}
