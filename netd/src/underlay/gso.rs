//! Large frames in and out of the vxlan tap: the virtio-net header, TCP segmentation
//! before frames go on the wire (what a NIC's TSO would do), and the reverse on the way in
//! (what GRO does), so that the tap is read and written once per 64 KiB, not per packet.
//!
//! Only IPv4 TCP is segmented and coalesced: the overlay is IPv4, the tap offers the
//! kernel TSO for IPv4 only, and every other frame passes whole.

use super::checksum;

/// `struct virtio_net_hdr` without `num_buffers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// The checksum from `csum_start` on is still to be computed.
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksums were checked already.
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_ECN: u8 = 0x80;

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Largest IPv4 packet a tap frame can carry (65535 bytes of frame).
const MAX_IP_LEN: usize = 65535 - ETH_LEN;

impl VnetHdr {
    pub const LEN: usize = 10;

    /// Reads the header in the host's byte order (what tun uses unless told otherwise).
    pub fn parse(b: &[u8; Self::LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a frame from the tap could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsendable {
    /// A GSO kind the tap was not offered (it never should see one).
    UnsupportedGso(u8),
    /// Headers that do not add up.
    Malformed,
}

/// Where the datagrams of one frame lie in the output buffer: `count` of `stride` bytes
/// each, the last possibly shorter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagrams {
    pub count: usize,
    pub stride: usize,
}

/// Offsets of the IPv4 and TCP headers of a frame, and where the payload starts.
#[derive(Clone, Copy, Debug)]
struct Tcp4 {
    ip: usize,
    tcp: usize,
    payload: usize,
    /// End of the IP packet (the frame may carry Ethernet padding after it).
    end: usize,
}

impl Tcp4 {
    fn parse(frame: &[u8]) -> Option<Tcp4> {
        if frame.len() < ETH_LEN + 40 || frame[12..14] != ETHERTYPE_IPV4 {
            return None;
        }
        let ip = ETH_LEN;
        let ihl = (frame[ip] & 0x0f) as usize * 4;
        if frame[ip] >> 4 != 4 || ihl < 20 || frame[ip + 9] != PROTO_TCP {
            return None;
        }
        let tcp = ip + ihl;
        let end = ip + u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
        if frame.len() < tcp + 20 {
            return None;
        }
        let payload = tcp + (frame[tcp + 12] >> 4) as usize * 4;
        (payload >= tcp + 20 && payload <= end && end <= frame.len()).then_some(Tcp4 {
            ip,
            tcp,
            payload,
            end,
        })
    }

    /// Whether the IPv4 header says this is a fragment.
    fn fragmented(&self, frame: &[u8]) -> bool {
        u16::from_be_bytes([frame[self.ip + 6], frame[self.ip + 7]]) & 0x3fff != 0
    }

    fn tcp_checksum(&self, frame: &[u8]) -> u64 {
        let ip = &frame[self.ip..];
        let len = self.end - self.tcp;
        checksum::add(
            checksum::pseudo_header(&ip[12..16], &ip[16..20], PROTO_TCP, len),
            &frame[self.tcp..self.end],
        )
    }
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Where the checksum of `frame`'s TCP or UDP segment is still to be computed, when it
/// holds only the pseudo-header's sum: a kernel vxlan peer on a link that offloads
/// checksums (a veth, virtio between VMs of one host) sends inner segments so, and its
/// own receiver keeps that state with the packet. Such a frame is legal here and must
/// reach the container intact: the tap is told (`F_NEEDS_CSUM`, as a partial checksum),
/// and the kernel completes it if the frame leaves again. `(csum_start, csum_offset)`.
pub fn partial_checksum(frame: &[u8]) -> Option<(u16, u16)> {
    const PROTO_UDP: u8 = 17;
    if frame.len() < ETH_LEN + 20 || frame[12..14] != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ETH_LEN;
    let ihl = (frame[ip] & 0x0f) as usize * 4;
    let proto = frame[ip + 9];
    let offset = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return None,
    };
    let end = ip + u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let l4 = ip + ihl;
    let fragment = u16::from_be_bytes([frame[ip + 6], frame[ip + 7]]) & 0x3fff != 0;
    if frame[ip] >> 4 != 4 || ihl < 20 || fragment || end > frame.len() || l4 + offset + 2 > end {
        return None;
    }
    let field = u16::from_be_bytes([frame[l4 + offset], frame[l4 + offset + 1]]);
    let pseudo = checksum::pseudo_header(
        &frame[ip + 12..ip + 16],
        &frame[ip + 16..ip + 20],
        proto,
        end - l4,
    );
    // (A UDP checksum of zero means none at all: nothing to complete.)
    let partial = field == checksum::fold(pseudo) && !(proto == PROTO_UDP && field == 0);
    // A complete checksum that happens to equal the pseudo-header's sum stays complete.
    (partial && !checksum::verifies(checksum::add(pseudo, &frame[l4..end])))
        .then_some((l4 as u16, offset as u16))
}

/// The header for a frame that passes whole (a partial checksum said so, else nothing);
/// one TCP segment longer than the tap's MTU goes in as a GSO frame of segments that fit,
/// its checksum field made partial: a kernel peer whose link offloads segmentation (a
/// veth) can deliver such a segment whole, and the kernel would refuse to forward it.
fn whole_frame_header(frame: &mut [u8], mtu: usize) -> VnetHdr {
    if frame.len() > ETH_LEN + mtu {
        if let Some(hdr) = resegmentable(frame, mtu) {
            return hdr;
        }
    }
    match partial_checksum(frame) {
        Some((csum_start, csum_offset)) => VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start,
            csum_offset,
            ..VnetHdr::default()
        },
        None => VnetHdr::default(),
    }
}

/// The GSO header that lets the kernel cut an oversized TCP segment into `mtu`-sized ones;
/// `None` for anything else (or a checksum neither complete nor partial).
fn resegmentable(frame: &mut [u8], mtu: usize) -> Option<VnetHdr> {
    let t = Tcp4::parse(frame)?;
    let headers = t.payload - t.ip;
    if t.fragmented(frame) || t.end != frame.len() || mtu <= headers {
        return None;
    }
    if partial_checksum(frame).is_none() {
        if !checksum::verifies(t.tcp_checksum(frame)) {
            return None;
        }
        let ip = &frame[t.ip..];
        let pseudo = checksum::pseudo_header(&ip[12..16], &ip[16..20], PROTO_TCP, t.end - t.tcp);
        put_u16(frame, t.tcp + 16, checksum::fold(pseudo));
    }
    let ecn = if frame[t.tcp + 13] & TCP_CWR != 0 {
        GSO_ECN
    } else {
        0
    };
    Some(VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4 | ecn,
        hdr_len: t.payload as u16,
        gso_size: (mtu - headers) as u16,
        csum_start: t.tcp as u16,
        csum_offset: 16,
    })
}

/// Sets the IPv4 header checksum of the packet at `ip`.
fn fix_ip_checksum(buf: &mut [u8], ip: usize) {
    let ihl = (buf[ip] & 0x0f) as usize * 4;
    put_u16(buf, ip + 10, 0);
    let c = checksum::finish(checksum::add(0, &buf[ip..ip + ihl]));
    put_u16(buf, ip + 10, c);
}

/// Appends `frame` (read from the tap with header `hdr`) to `out` as VXLAN datagrams,
/// each `prefix` followed by one wire-ready Ethernet frame: TSO frames are cut into
/// `gso_size` segments with their own headers and checksums, a partial checksum is
/// completed. All datagrams but the last have the same size, as UDP GSO needs.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> Result<Datagrams, Unsendable> {
    // A runt (a container can write any length to its tap) is nobody's frame; peers
    // would drop it anyway.
    if frame.len() < ETH_LEN {
        return Err(Unsendable::Malformed);
    }
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            let start = out.len() + prefix.len();
            out.extend_from_slice(prefix);
            out.extend_from_slice(frame);
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(hdr, &mut out[start..])?;
            }
            Ok(Datagrams {
                count: 1,
                stride: prefix.len() + frame.len(),
            })
        }
        GSO_TCPV4 => segment_tcp4(hdr, frame, prefix, out),
        other => Err(Unsendable::UnsupportedGso(other)),
    }
}

/// Completes the checksum the kernel left partial: it put the pseudo-header's sum in the
/// field; the sum of everything from `csum_start` goes on top.
fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), Unsendable> {
    let start = hdr.csum_start as usize;
    let field = start + hdr.csum_offset as usize;
    if field + 2 > frame.len() {
        return Err(Unsendable::Malformed);
    }
    let c = checksum::finish(checksum::add(0, &frame[start..]));
    put_u16(frame, field, c);
    Ok(())
}

fn segment_tcp4(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> Result<Datagrams, Unsendable> {
    let t = Tcp4::parse(frame).ok_or(Unsendable::Malformed)?;
    let mss = hdr.gso_size as usize;
    // A TSO frame's IP length field is not reliable (it may exceed 16 bits): the
    // payload is whatever follows the headers.
    let payload = &frame[t.payload..];
    if mss == 0 || payload.is_empty() {
        return Err(Unsendable::Malformed);
    }
    let headers = &frame[..t.payload];
    let count = payload.len().div_ceil(mss);
    let stride = prefix.len() + headers.len() + mss;
    let (ip_id, seq) = (
        u16::from_be_bytes([frame[t.ip + 4], frame[t.ip + 5]]),
        u32_at(frame, t.tcp + 4),
    );
    let flags = frame[t.tcp + 13];
    out.reserve(count * stride);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        out.extend_from_slice(prefix);
        let at = out.len();
        out.extend_from_slice(headers);
        out.extend_from_slice(chunk);
        let seg = &mut out[at..];
        let (ip, tcp) = (t.ip, t.tcp);
        put_u16(seg, ip + 2, (t.payload - ip + chunk.len()) as u16);
        put_u16(seg, ip + 4, ip_id.wrapping_add(i as u16));
        fix_ip_checksum(seg, ip);
        put_u32(seg, tcp + 4, seq.wrapping_add((i * mss) as u32));
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[tcp + 13] = f;
        put_u16(seg, tcp + 16, 0);
        let end = t.payload + chunk.len();
        let sum = checksum::add(
            checksum::pseudo_header(
                &seg[ip + 12..ip + 16],
                &seg[ip + 16..ip + 20],
                PROTO_TCP,
                end - tcp,
            ),
            &seg[tcp..end],
        );
        put_u16(seg, tcp + 16, checksum::finish(sum));
    }
    Ok(Datagrams { count, stride })
}

/// The TCP segment being built up by [`Coalescer`].
#[derive(Debug)]
struct Run {
    t: Tcp4,
    /// Payload size of the first segment: every later one but the last matches it.
    mss: usize,
    segments: usize,
    next_seq: u32,
    /// A shorter segment or PSH ended it: nothing more joins.
    closed: bool,
}

/// Joins consecutive TCP segments of one flow into one large frame with a virtio-net
/// header (GSO TCPv4, partial checksum), as GRO would; every other frame passes whole.
/// Each segment's checksums are checked before it joins, since the joined frame is
/// handed to the kernel as already verified.
pub struct Coalescer {
    /// Virtio-net header and frame of what is pending.
    buf: Vec<u8>,
    run: Option<Run>,
    /// Segments with a partial checksum seen since the last [`Coalescer::take_partial`].
    partial: u64,
    /// The tap's MTU.
    mtu: usize,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: Vec::with_capacity(VnetHdr::LEN + 65535),
            run: None,
            partial: 0,
            mtu: 1500,
        }
    }
}

impl Coalescer {
    /// A coalescer for a tap of `mtu`.
    pub fn with_mtu(mtu: usize) -> Coalescer {
        Coalescer {
            mtu,
            ..Coalescer::default()
        }
    }

    /// Takes one frame from the wire; `emit` gets each frame (with its virtio-net header)
    /// that is complete.
    pub fn push(&mut self, frame: &[u8], emit: &mut impl FnMut(&[u8])) {
        // (A segment longer than the tap passes on its own, to be cut again.)
        let seg =
            Tcp4::parse(frame).filter(|t| frame.len() <= ETH_LEN + self.mtu && joinable(frame, t));
        let Some(t) = seg else {
            self.flush(emit);
            self.buf.extend_from_slice(&[0; VnetHdr::LEN]);
            self.buf.extend_from_slice(frame);
            let hdr = whole_frame_header(&mut self.buf[VnetHdr::LEN..], self.mtu);
            self.partial += u64::from(hdr.flags == F_NEEDS_CSUM);
            self.buf[..VnetHdr::LEN].copy_from_slice(&hdr.bytes());
            emit(&self.buf);
            self.buf.clear();
            return;
        };
        if !self.extends(frame, &t) {
            self.flush(emit);
            self.start(frame, t);
        }
    }

    /// How many segments with a partial checksum went through since the last call.
    pub fn take_partial(&mut self) -> u64 {
        std::mem::take(&mut self.partial)
    }

    fn start(&mut self, frame: &[u8], t: Tcp4) {
        self.buf.extend_from_slice(&VnetHdr::default().bytes());
        self.buf.extend_from_slice(&frame[..t.end]);
        let mss = t.end - t.payload;
        self.run = Some(Run {
            t,
            mss,
            segments: 1,
            next_seq: u32_at(frame, t.tcp + 4).wrapping_add(mss as u32),
            closed: frame[t.tcp + 13] & TCP_PSH != 0,
        });
    }

    /// Appends `frame` to the pending run if it is the flow's next segment.
    fn extends(&mut self, frame: &[u8], t: &Tcp4) -> bool {
        let Some(run) = &mut self.run else {
            return false;
        };
        let base = &self.buf[VnetHdr::LEN..];
        let len = t.end - t.payload;
        let same_headers = t.payload == run.t.payload
            && frame[..t.ip] == base[..t.ip]
            // version, header length, TOS; flags and fragment offset, TTL, protocol; addresses
            && frame[t.ip..t.ip + 2] == base[t.ip..t.ip + 2]
            && frame[t.ip + 6..t.ip + 10] == base[t.ip + 6..t.ip + 10]
            && frame[t.ip + 12..t.tcp] == base[t.ip + 12..t.tcp]
            // ports; acknowledgement; header length, flags but PSH; window; urgent, options
            && frame[t.tcp..t.tcp + 4] == base[t.tcp..t.tcp + 4]
            && frame[t.tcp + 8..t.tcp + 13] == base[t.tcp + 8..t.tcp + 13]
            && (frame[t.tcp + 13] | TCP_PSH) == (base[t.tcp + 13] | TCP_PSH)
            && frame[t.tcp + 14..t.tcp + 16] == base[t.tcp + 14..t.tcp + 16]
            && frame[t.tcp + 18..t.payload] == base[t.tcp + 18..t.payload];
        let fits = !run.closed
            && len <= run.mss
            && u32_at(frame, t.tcp + 4) == run.next_seq
            && self.buf.len() - VnetHdr::LEN - ETH_LEN + len <= MAX_IP_LEN;
        if !(same_headers && fits) {
            return false;
        }
        self.buf.extend_from_slice(&frame[t.payload..t.end]);
        run.segments += 1;
        run.next_seq = run.next_seq.wrapping_add(len as u32);
        let psh = frame[t.tcp + 13] & TCP_PSH;
        if psh != 0 || len < run.mss {
            run.closed = true;
            let tcp = VnetHdr::LEN + run.t.tcp;
            self.buf[tcp + 13] |= psh;
        }
        true
    }

    /// Hands over what is pending.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        let Some(run) = self.run.take() else {
            return;
        };
        if run.segments == 1 {
            self.buf[..VnetHdr::LEN].copy_from_slice(
                &VnetHdr {
                    flags: F_DATA_VALID,
                    ..VnetHdr::default()
                }
                .bytes(),
            );
        } else {
            let frame = &mut self.buf[VnetHdr::LEN..];
            let (ip, tcp) = (run.t.ip, run.t.tcp);
            let ip_len = frame.len() - ip;
            put_u16(frame, ip + 2, ip_len as u16);
            fix_ip_checksum(frame, ip);
            // A partial checksum holds the pseudo-header's sum, as the kernel's own TSO
            // frames do.
            let pseudo = checksum::pseudo_header(
                &frame[ip + 12..ip + 16],
                &frame[ip + 16..ip + 20],
                PROTO_TCP,
                frame.len() - tcp,
            );
            put_u16(frame, tcp + 16, checksum::fold(pseudo));
            let ecn = if frame[tcp + 13] & TCP_CWR != 0 {
                GSO_ECN
            } else {
                0
            };
            self.buf[..VnetHdr::LEN].copy_from_slice(
                &VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_TCPV4 | ecn,
                    hdr_len: run.t.payload as u16,
                    gso_size: run.mss as u16,
                    csum_start: tcp as u16,
                    csum_offset: 16,
                }
                .bytes(),
            );
        }
        emit(&self.buf);
        self.buf.clear();
    }
}

/// A segment that may join others: data with plain ACK (PSH allowed), not a fragment,
/// checksums intact. (One left partial by a kernel peer passes whole, marked so: see
/// [`partial_checksum`].)
fn joinable(frame: &[u8], t: &Tcp4) -> bool {
    let flags = frame[t.tcp + 13];
    t.end > t.payload
        && flags & !TCP_PSH == TCP_ACK
        && !t.fragmented(frame)
        && checksum::verifies(checksum::add(0, &frame[t.ip..t.tcp]))
        && checksum::verifies(t.tcp_checksum(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with correct checksums and a timestamp option.
    fn tcp_frame(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_LEN + 20 + 32];
        f[0..6].copy_from_slice(&[0x0e, 1, 2, 3, 4, 5]);
        f[6..12].copy_from_slice(&[0x0e, 6, 7, 8, 9, 10]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        let ip = ETH_LEN;
        f[ip] = 0x45;
        f[ip + 6] = 0x40; // DF
        f[ip + 8] = 64;
        f[ip + 9] = PROTO_TCP;
        f[ip + 12..ip + 16].copy_from_slice(&[10, 244, 1, 2]);
        f[ip + 16..ip + 20].copy_from_slice(&[10, 244, 2, 2]);
        let tcp = ip + 20;
        put_u16(&mut f, tcp, 40000);
        put_u16(&mut f, tcp + 2, 5201);
        put_u32(&mut f, tcp + 4, seq);
        put_u32(&mut f, tcp + 8, 777);
        f[tcp + 12] = 8 << 4;
        f[tcp + 13] = flags;
        put_u16(&mut f, tcp + 14, 502);
        f[tcp + 20..tcp + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        f.extend_from_slice(payload);
        let ip_len = (f.len() - ip) as u16;
        put_u16(&mut f, ip + 2, ip_len);
        fix_ip_checksum(&mut f, ip);
        let t = Tcp4::parse(&f).unwrap();
        let c = checksum::finish(t.tcp_checksum(&f));
        put_u16(&mut f, tcp + 16, c);
        f
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_tso_frame_becomes_wire_segments_with_good_checksums() {
        let data = payload(4000);
        let mut big = tcp_frame(1000, TCP_ACK | TCP_PSH, &data);
        // The kernel leaves the pseudo-header sum in the field of a TSO frame.
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        put_u16(&mut big, 34 + 16, 0x1234);
        let mut out = Vec::new();
        let d = segment(&hdr, &big, &[0xaa; 8], &mut out).unwrap();
        assert_eq!(
            d,
            Datagrams {
                count: 3,
                stride: 8 + 66 + 1448
            }
        );
        assert_eq!(out.len(), 2 * d.stride + 8 + 66 + 4000 - 2 * 1448);
        let mut rebuilt = Vec::new();
        for (i, dgram) in out.chunks(d.stride).enumerate() {
            assert_eq!(&dgram[..8], &[0xaa; 8]);
            let f = &dgram[8..];
            let t = Tcp4::parse(f).unwrap();
            assert!(joinable(f, &t), "segment {i} does not verify");
            assert!(checksum::verifies(t.tcp_checksum(f)));
            assert_eq!(u32_at(f, t.tcp + 4), 1000 + (i * 1448) as u32);
            let psh = f[t.tcp + 13] & TCP_PSH != 0;
            assert_eq!(psh, i == 2, "PSH only on the last segment");
            rebuilt.extend_from_slice(&f[t.payload..t.end]);
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let mut f = tcp_frame(5, TCP_ACK, &payload(100));
        let good = f.clone();
        let t = Tcp4::parse(&f).unwrap();
        let pseudo = checksum::pseudo_header(&f[26..30], &f[30..34], PROTO_TCP, t.end - t.tcp);
        put_u16(&mut f, t.tcp + 16, checksum::fold(pseudo));
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: t.tcp as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        segment(&hdr, &f, &[], &mut out).unwrap();
        assert_eq!(out, good);
    }

    #[test]
    fn consecutive_segments_join_and_others_pass_whole() {
        let data = payload(3 * 1448 + 100);
        let segs: Vec<Vec<u8>> = data
            .chunks(1448)
            .enumerate()
            .map(|(i, c)| tcp_frame(50 + (i * 1448) as u32, TCP_ACK, c))
            .collect();
        let other = tcp_frame(9, TCP_ACK | 0x02, &[]); // SYN: never joined
        let mut corrupt = tcp_frame(50 + 4 * 1448 + 100, TCP_ACK, &payload(10));
        *corrupt.last_mut().unwrap() ^= 0xff;
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut c = Coalescer::default();
        let mut emit = |f: &[u8]| got.push(f.to_vec());
        for s in &segs {
            c.push(s, &mut emit);
        }
        c.push(&other, &mut emit);
        c.push(&corrupt, &mut emit);
        c.flush(&mut emit);
        assert_eq!(got.len(), 3);
        let hdr = VnetHdr::parse(got[0][..10].try_into().unwrap());
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        assert_eq!((hdr.gso_size, hdr.hdr_len, hdr.csum_start), (1448, 66, 34));
        let big = &got[0][10..];
        assert_eq!(&big[66..], &data[..]);
        assert_eq!(
            u16::from_be_bytes([big[16], big[17]]) as usize,
            big.len() - 14
        );
        assert!(checksum::verifies(checksum::add(0, &big[14..34])));
        // Cut again, the joined frame gives back the very segments that came in.
        let mut out = Vec::new();
        let d = segment(&hdr, big, &[], &mut out).unwrap();
        let again: Vec<&[u8]> = out.chunks(d.stride).collect();
        assert_eq!(again.len(), segs.len());
        for (a, s) in again.iter().zip(&segs) {
            // IP ids are renumbered from the first; everything else matches.
            assert_eq!(&a[34..], &s[34..]);
        }
        assert_eq!(&got[1][10..], &other[..]);
        assert_eq!(
            &got[2][10..],
            &corrupt[..],
            "a corrupt segment passes unjoined"
        );
        assert_eq!(
            VnetHdr::parse(got[2][..10].try_into().unwrap()),
            VnetHdr::default()
        );
    }

    /// `frame` as a kernel peer on a checksum-offloading link sends it: the TCP field
    /// holds only the pseudo-header's sum.
    fn left_partial(mut frame: Vec<u8>) -> Vec<u8> {
        let t = Tcp4::parse(&frame).unwrap();
        let pseudo =
            checksum::pseudo_header(&frame[26..30], &frame[30..34], PROTO_TCP, t.end - t.tcp);
        put_u16(&mut frame, t.tcp + 16, checksum::fold(pseudo));
        frame
    }

    fn emitted(frames: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut take = |f: &[u8]| {
            out.push((
                VnetHdr::parse(f[..VnetHdr::LEN].try_into().unwrap()),
                f[VnetHdr::LEN..].to_vec(),
            ))
        };
        for f in frames {
            c.push(f, &mut take);
        }
        c.flush(&mut take);
        out
    }

    #[test]
    fn segments_with_a_partial_checksum_reach_the_tap_marked_so() {
        // A lone segment (a SYN-ACK, an ACK, data with PSH): whole, "checksum partial",
        // which the receiving kernel accepts and completes if the frame leaves again.
        for flags in [TCP_ACK | 0x02, TCP_ACK, TCP_ACK | TCP_PSH] {
            let body = if flags == TCP_ACK {
                vec![]
            } else {
                payload(100)
            };
            let frame = left_partial(tcp_frame(1, flags, &body));
            let out = emitted(std::slice::from_ref(&frame));
            assert_eq!(out.len(), 1);
            let (hdr, f) = &out[0];
            assert_eq!(f, &frame, "the frame is passed unchanged");
            assert_eq!(hdr.flags, F_NEEDS_CSUM, "flags {flags:#x}");
            assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
        }
        // Consecutive partial segments pass one by one.
        let (a, b) = (payload(1000), payload(1000));
        let out = emitted(&[
            left_partial(tcp_frame(1, TCP_ACK, &a)),
            left_partial(tcp_frame(1001, TCP_ACK | TCP_PSH, &b)),
        ]);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|(h, _)| h.flags == F_NEEDS_CSUM && h.gso_type == GSO_NONE));
        // A complete checksum is still told apart: verified, not partial.
        let out = emitted(&[tcp_frame(1, TCP_ACK | TCP_PSH, &a)]);
        assert_eq!(out[0].0.flags, F_DATA_VALID);
        // A corrupted segment is neither: passed without a word, for the kernel to drop.
        let mut bad = tcp_frame(1, TCP_ACK | TCP_PSH, &a);
        bad[80] ^= 0x40;
        let out = emitted(&[bad]);
        assert_eq!(out[0].0, VnetHdr::default());
    }

    #[test]
    fn a_segment_longer_than_the_tap_goes_in_as_gso() {
        let data = payload(2796);
        for frame in [
            left_partial(tcp_frame(1, TCP_ACK | TCP_PSH, &data)),
            tcp_frame(1, TCP_ACK | TCP_PSH, &data),
        ] {
            let mut c = Coalescer::with_mtu(1450);
            let mut out = Vec::new();
            c.push(&frame, &mut |f| out.push(f.to_vec()));
            c.flush(&mut |f| out.push(f.to_vec()));
            assert_eq!(out.len(), 1);
            let hdr = VnetHdr::parse(out[0][..VnetHdr::LEN].try_into().unwrap());
            assert_eq!(hdr.gso_type, GSO_TCPV4);
            assert_eq!(hdr.gso_size as usize, 1450 - 20 - 32);
            assert_eq!(hdr.flags, F_NEEDS_CSUM);
            // Cut again as a NIC would, every segment's checksum holds.
            let mut wire = Vec::new();
            let d = segment(&hdr, &out[0][VnetHdr::LEN..], &[], &mut wire).unwrap();
            assert_eq!(d.count, 2);
            for seg in wire.chunks(d.stride) {
                let t = Tcp4::parse(seg).unwrap();
                assert!(checksum::verifies(t.tcp_checksum(seg)));
            }
        }
    }

    #[test]
    fn a_udp_datagram_with_a_partial_checksum_is_marked_and_one_without_is_not() {
        let mut f = tcp_frame(1, TCP_ACK, &payload(40));
        // Rewrite as UDP: protocol, header (ports, length, checksum), IP checksum.
        f[ETH_LEN + 9] = 17;
        let (l4, end) = (ETH_LEN + 20, f.len());
        put_u16(&mut f, l4 + 4, (end - l4) as u16);
        fix_ip_checksum(&mut f, ETH_LEN);
        let pseudo = checksum::pseudo_header(&f[26..30], &f[30..34], 17, end - l4);
        put_u16(&mut f, l4 + 6, checksum::fold(pseudo));
        assert_eq!(partial_checksum(&f), Some((34, 6)));
        put_u16(&mut f, l4 + 6, 0);
        assert_eq!(partial_checksum(&f), None, "zero: no checksum at all");
    }

    #[test]
    fn a_gap_in_sequence_starts_a_new_frame() {
        let a = tcp_frame(100, TCP_ACK, &payload(1000));
        let b = tcp_frame(100 + 2000, TCP_ACK, &payload(1000));
        let mut n = 0;
        let mut c = Coalescer::default();
        let mut emit = |_: &[u8]| n += 1;
        c.push(&a, &mut emit);
        c.push(&b, &mut emit);
        c.flush(&mut emit);
        assert_eq!(n, 2);
    }

    #[test]
    fn garbage_never_panics() {
        let mut c = Coalescer::default();
        let mut emit = |_: &[u8]| {};
        let good = tcp_frame(1, TCP_ACK, &payload(300));
        for cut in 0..good.len() {
            c.push(&good[..cut], &mut emit);
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                gso_size: 100,
                csum_start: 2000,
                csum_offset: 16,
                hdr_len: 0,
            };
            let _ = segment(&hdr, &good[..cut], &[], &mut Vec::new());
            let _ = segment(
                &VnetHdr {
                    gso_type: GSO_NONE,
                    ..hdr
                },
                &good[..cut],
                &[],
                &mut Vec::new(),
            );
        }
        c.flush(&mut emit);
    }
}
