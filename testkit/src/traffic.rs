//! TCP transfers between namespaces, checked end to end with SHA-256.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{spawn_in, Netns};

/// Deterministic pseudo-random bytes (xorshift), so both ends can be checked.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Sends `bytes` over TCP from `client` to `server_addr` in `server`, and asserts that the
/// SHA-256 computed by the receiver equals the sender's.
pub fn tcp_transfer(server: &Netns, client: &Netns, server_addr: Ipv4Addr, bytes: usize) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    tcp_stream(&server.path(), &client.path(), server_addr, bytes, done).check();
}

/// A running checked TCP transfer; see [`tcp_stream`].
pub struct Transfer {
    receiver: JoinHandle<(usize, Vec<u8>)>,
    sender: JoinHandle<(usize, Vec<u8>, Vec<u8>)>,
}

impl Transfer {
    /// Waits for both ends and asserts that every byte arrived intact.
    pub fn check(self) -> usize {
        let (sent, sent_digest, echoed) = self.sender.join().expect("sender thread");
        let (received, digest) = self.receiver.join().expect("receiver thread");
        assert_eq!(received, sent, "receiver got {received} of {sent} bytes");
        assert_eq!(digest, sent_digest, "checksum differs between ends");
        assert_eq!(
            echoed, sent_digest,
            "receiver's checksum did not come back intact"
        );
        sent
    }
}

/// Starts sending at least `min_bytes` from the namespace at `client` to `server_addr`
/// in the namespace at `server`, and keeps sending until `done` is set.
pub fn tcp_stream(
    server: &Path,
    client: &Path,
    server_addr: Ipv4Addr,
    min_bytes: usize,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Transfer {
    use std::sync::atomic::Ordering;
    let (port_tx, port_rx) = mpsc::channel();
    let receiver = spawn_in(server, move || {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = conn.read(&mut buf).expect("receive");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        let digest = hash.finalize();
        conn.write_all(&digest).unwrap();
        (total, digest.to_vec())
    });
    let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let sender = spawn_in(client, move || {
        let addr = SocketAddr::from((server_addr, port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut hash = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < min_bytes || !done.load(Ordering::SeqCst) {
            let n = buf.len().min(min_bytes.saturating_sub(sent).max(4096));
            fill(&mut buf[..n], &mut state);
            conn.write_all(&buf[..n]).expect("send");
            hash.update(&buf[..n]);
            sent += n;
        }
        conn.shutdown(Shutdown::Write).unwrap();
        let mut echoed = Vec::new();
        conn.read_to_end(&mut echoed).unwrap();
        (sent, hash.finalize().to_vec(), echoed)
    });
    Transfer { receiver, sender }
}
