//! The Internet checksum (RFC 1071) as IPv4 and TCP use it.

/// Adds `data` to a running one's-complement sum. Summing 32-bit big-endian words and
/// folding later gives the same result as 16-bit words (2^16 = 1 modulo 2^16 - 1), with
/// half the additions.
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u32::from_be_bytes(tail) as u64
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 pseudo-header of a TCP or UDP segment of `len` bytes.
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    add(add(0, src), dst) + proto as u64 + len as u64
}

/// The checksum field's value for `data` whose own field is zero (or holds a partial sum
/// already counted in `sum`). A result of zero is sent as 0xffff, as the kernel does.
pub fn finish(sum: u64) -> u16 {
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether `data`, checksum field included, sums to all ones: it arrived intact.
pub fn verifies(sum: u64) -> bool {
    fold(sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_and_odd_lengths() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(fold(add(0, &data[..7])), fold(add(0, &data[..6]) + 0xf600));
    }

    #[test]
    fn an_ipv4_header_verifies_after_finishing() {
        let mut hdr = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = finish(add(0, &hdr));
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(add(0, &hdr)));
        hdr[15] ^= 1;
        assert!(!verifies(add(0, &hdr)));
    }
}
