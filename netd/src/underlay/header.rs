//! The VXLAN header (RFC 7348) as flannel's kernel device writes and reads it.

/// Bytes of the header in front of the inner Ethernet frame.
pub const LEN: usize = 8;

/// Flag "the VNI is valid", the only one set.
const FLAG_VNI: u8 = 0x08;

/// Shortest inner frame worth passing on: an Ethernet header.
const MIN_FRAME: usize = 14;

/// The header for `vni`: flags, 24 reserved bits, the VNI, 8 reserved bits.
pub fn encode(vni: u32) -> [u8; LEN] {
    let v = vni.to_be_bytes();
    [FLAG_VNI, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Shorter than a header and an Ethernet header.
    Truncated,
    /// The VNI flag is missing: not VXLAN.
    NotVxlan,
    /// Another network's VNI.
    WrongVni(u32),
}

/// The inner frame of `datagram` if it belongs to network `vni`. Like the kernel, only the
/// I flag and the VNI are looked at; reserved bits are ignored on receipt.
pub fn decode(datagram: &[u8], vni: u32) -> Result<&[u8], Rejected> {
    if datagram.len() < LEN + MIN_FRAME {
        return Err(Rejected::Truncated);
    }
    if datagram[0] & FLAG_VNI == 0 {
        return Err(Rejected::NotVxlan);
    }
    let got = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
    if got != vni {
        return Err(Rejected::WrongVni(got));
    }
    Ok(&datagram[LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_rfc7348() {
        assert_eq!(encode(1), [0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(encode(0x0a0b0c), [0x08, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0]);
    }

    #[test]
    fn only_our_network_passes() {
        let mut d = encode(1).to_vec();
        d.extend_from_slice(&[0xee; 14]);
        assert_eq!(decode(&d, 1), Ok(&[0xee; 14][..]));
        assert_eq!(decode(&d, 2), Err(Rejected::WrongVni(1)));
        assert_eq!(decode(&d[..20], 1), Err(Rejected::Truncated));
        d[0] = 0;
        assert_eq!(decode(&d, 1), Err(Rejected::NotVxlan));
    }
}
