//! Socket mode on the wire: byte streams in the original tool's framing, written and read
//! by hand against a real daemon and a real tap, and streams that are garbled.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::*;

const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const TAP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 1);
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 2);
const ICMP_ID: u16 = 0x4850;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + ICMP echo request from the peer to the tap.
fn echo_request(dst_mac: [u8; 6], seq: u16, payload_len: usize) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&ICMP_ID.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend((0..payload_len).map(|i| i as u8));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&PEER_ADDR.octets());
    ip.extend_from_slice(&TAP_ADDR.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// The original framing, written out by hand: 4-byte big-endian length, then the frame.
fn golden(frame: &[u8]) -> Vec<u8> {
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    out
}

/// Reads framed data until `want` echo replies of ours arrived; checks the framing of
/// every frame on the way.
fn read_echo_replies(stream: &mut UnixStream, want: usize) -> Vec<u16> {
    read_echo_replies_after(stream, want, 0)
}

/// Like `read_echo_replies`, for frames that carry a `header`-byte prefix after the length.
fn read_echo_replies_after(stream: &mut UnixStream, want: usize, header: usize) -> Vec<u16> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut data = Vec::new();
    let mut seqs = Vec::new();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while seqs.len() < want {
        assert!(
            Instant::now() < deadline,
            "got only echo replies {seqs:?} of {want}; frames seen (length, ethertype): {seen:?}"
        );
        if let Ok(n) = stream.read(&mut buf) {
            assert!(n > 0, "daemon closed the connection");
            data.extend_from_slice(&buf[..n]);
        }
        while data.len() >= 4 {
            let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            assert!(
                (14 + header..=65535 + header).contains(&len),
                "bad length prefix {len} from the daemon"
            );
            if data.len() < 4 + len {
                break;
            }
            let frame: Vec<u8> = data.drain(..4 + len).skip(4 + header).collect();
            seen.push((len, [frame[12], frame[13]]));
            let is_ipv4_icmp = frame[12..14] == [0x08, 0x00] && frame[23] == 1;
            if is_ipv4_icmp && frame[34] == 0 && frame[38..40] == ICMP_ID.to_be_bytes() {
                assert_eq!(frame[..6], PEER_MAC, "echo reply not addressed to the peer");
                seqs.push(u16::from_be_bytes([frame[40], frame[41]]));
            }
        }
    }
    seqs
}

/// A namespace whose tap (made by a daemon) knows the fake peer statically (no ARP).
fn tap_with_static_peer(ns: &Netns, tap: &str) -> [u8; 6] {
    wait_until("daemon tap up", Duration::from_secs(10), || ns.link_up(tap));
    ns.ip(&["addr", "add", &format!("{TAP_ADDR}/24"), "dev", tap]);
    let peer_mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&[
        "neigh",
        "replace",
        &PEER_ADDR.to_string(),
        "lladdr",
        &peer_mac,
        "dev",
        tap,
        "nud",
        "permanent",
    ]);
    let mac = ns.link_json(tap).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

fn disable_ipv6(ns: &Netns) {
    run(ns.cmd("sysctl").args([
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]));
}

fn connect(path: &str) -> UnixStream {
    let mut stream = None;
    wait_until("server socket", Duration::from_secs(10), || {
        stream = UnixStream::connect(path).ok();
        stream.is_some()
    });
    stream.unwrap()
}

/// Removes a file when the test ends, passed or failed.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A socket-mode server with its tap set up to answer a fake peer.
struct Server {
    ns: Netns,
    socket: String,
    tap: String,
    daemon: Proc,
    mac: [u8; 6],
}

impl Server {
    fn start(suffix: &str) -> Server {
        let p = prefix();
        let ns = Netns::new(format!("{p}-{suffix}"));
        disable_ipv6(&ns);
        let socket = format!("/tmp/{p}.sock");
        let tap = format!("{p}{suffix}");
        let daemon = Proc::spawn(
            "socket server",
            ns.cmd(DAEMON)
                .args(["--mode", "server", "--socket", &socket, "--tap", &tap]),
        );
        let mac = tap_with_static_peer(&ns, &tap);
        Server {
            ns,
            socket,
            tap,
            daemon,
            mac,
        }
    }
}

#[test]
fn server_reads_and_writes_the_original_byte_stream() {
    let Server {
        ns,
        socket,
        tap,
        mut daemon,
        mac,
        ..
    } = Server::start("s");
    let mut stream = connect(&socket);

    // Three back-to-back frames in one write, then one frame split across three writes.
    let mut burst = Vec::new();
    for seq in 1..=3 {
        burst.extend(golden(&echo_request(mac, seq, 56)));
    }
    stream.write_all(&burst).unwrap();
    let split = golden(&echo_request(mac, 4, 1400));
    for part in [&split[..2], &split[2..700], &split[700..]] {
        stream.write_all(part).unwrap();
        stream.flush().unwrap();
    }
    let mut seqs = read_echo_replies(&mut stream, 4);
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(
        ns.rx_packets(&tap),
        4,
        "tap did not receive exactly the 4 frames"
    );

    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    drop(stream);
    let (code, _) = daemon.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(!ns.has_link(&tap) && !std::path::Path::new(&socket).exists());
}

#[test]
fn client_speaks_the_original_byte_stream() {
    let p = prefix();
    let ns = Netns::new(format!("{p}-c"));
    disable_ipv6(&ns);
    let socket = format!("/tmp/{p}.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let _cleanup = RemoveOnDrop(std::path::PathBuf::from(&socket));
    let tap = format!("{p}c");
    let _daemon = Proc::spawn(
        "socket client",
        ns.cmd(DAEMON)
            .args(["--mode", "client", "--socket", &socket, "--tap", &tap]),
    );
    let (mut stream, _) = listener.accept().unwrap();
    let mac = tap_with_static_peer(&ns, &tap);
    stream
        .write_all(&golden(&echo_request(mac, 9, 100)))
        .unwrap();
    assert_eq!(read_echo_replies(&mut stream, 1), [9]);
}

/// Sends `bad` after one valid frame; the daemon must deliver the valid frame, drop the
/// connection, write nothing else to the tap, and keep serving new connections.
fn garbled(name: &str, bad: &[u8], close_after: bool) {
    let Server {
        ns,
        socket,
        tap,
        mut daemon,
        mac,
        ..
    } = Server::start("g");

    let mut stream = connect(&socket);
    let mut data = golden(&echo_request(mac, 1, 56));
    data.extend_from_slice(bad);
    stream.write_all(&data).unwrap();
    if close_after {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    // The daemon closes its end: our reads reach end of stream.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    assert_eq!(
        ns.rx_packets(&tap),
        1,
        "{name}: a partial or garbage frame reached the tap"
    );
    assert!(daemon.alive(), "{name}: the daemon died");

    let mut again = connect(&socket);
    again.write_all(&golden(&echo_request(mac, 2, 56))).unwrap();
    assert_eq!(
        read_echo_replies(&mut again, 1),
        [2],
        "{name}: no service after a bad stream"
    );
    drop(again);
    let (code, err) = daemon.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(
        err.contains("dropping peer connection"),
        "{name}: no log line: {err}"
    );
}

#[test]
fn zero_length_frame_drops_the_connection() {
    garbled("zero length", &[0, 0, 0, 0, 1, 2, 3], false);
}

#[test]
fn oversize_frame_drops_the_connection() {
    garbled("oversize", &[0, 1, 0, 0, 0xff, 0xff], false);
}

#[test]
fn garbage_drops_the_connection() {
    garbled("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
}

#[test]
fn truncated_frame_is_never_written() {
    let mut bad = golden(&[0xabu8; 1000]);
    bad.truncate(500);
    garbled("truncated", &bad, true);
}

/// Our negotiation frames, as the module documents them: experimental ethertype 0x88b5.
fn control(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x68, 0x70, 0x6b, 0x00, 0x01, 0x02, 0x68, 0x70, 0x6b, 0x00, 0x02, 0x88, 0xb5,
    ];
    f.extend_from_slice(payload);
    f.resize(60, 0);
    f
}

#[test]
fn extended_framing_is_negotiated_and_carries_the_header() {
    let Server {
        ns,
        socket,
        tap,
        mut daemon,
        mac,
        ..
    } = Server::start("x");
    let mut stream = connect(&socket);
    stream
        .write_all(&golden(&control(b"hpk-net-daemon vnet-hdr v1 hello")))
        .unwrap();
    let mut ack = [0u8; 64];
    stream.read_exact(&mut ack).unwrap();
    assert_eq!(
        ack[..4],
        [0, 0, 0, 60],
        "the ACK comes in the original framing"
    );
    assert_eq!(&ack[4..], &control(b"hpk-net-daemon vnet-hdr v1 ok")[..]);

    // From now on: length, 10-byte virtio-net header, frame; both ways.
    let mut frame = vec![0u8; 10];
    frame.extend(echo_request(mac, 5, 56));
    stream.write_all(&golden(&frame)).unwrap();
    assert_eq!(read_echo_replies_after(&mut stream, 1, 10), [5]);
    assert_eq!(ns.rx_packets(&tap), 1);
    drop(stream);
    let (code, err) = daemon.stop_with(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(err.contains("framing=\"extended"), "{err}");
}
