//! The bubble's DNS server on the bridge's gateway, UDP and TCP port 53: names from
//! memory at once, everything else through the upstream resolvers. A container that floods
//! it gets REFUSED for what it would send upstream beyond its share, so that the others'
//! queries still go out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::answer::Verdict;
use super::Names;

/// Queries one client may have with the upstreams at once; more are refused.
const PER_CLIENT_FORWARDS: usize = 64;

/// Queries with the upstreams at once, all clients together.
const FORWARDS: usize = 1024;
/// Tasks receiving UDP queries (hpk-netd runs two worker threads).
const UDP_TASKS: usize = 2;
/// TCP connections served at once, and how long one may stay idle.
const TCP_CONNECTIONS: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the server did, for status.
#[derive(Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub forwarded: AtomicU64,
    pub cached: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub ignored: AtomicU64,
    /// Dropped for a client's rate.
    pub limited: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("answered", &self.answered),
            ("forwarded", &self.forwarded),
            ("cached", &self.cached),
            ("refused", &self.refused),
            ("failed", &self.failed),
            ("ignored", &self.ignored),
            ("limited", &self.limited),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect()
    }
}

/// Each client's queries out with the upstreams.
#[derive(Default)]
struct Shares(Mutex<HashMap<IpAddr, usize>>);

impl Shares {
    fn take(&self, client: IpAddr) -> bool {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(client).or_default();
        if *n >= PER_CLIENT_FORWARDS {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, client: IpAddr) {
        let mut m = self.0.lock().unwrap();
        if let Some(n) = m.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&client);
            }
        }
    }
}

/// Each client's token bucket: `rate` queries a second, as many at once. Beyond that
/// queries are dropped unread, which costs the server next to nothing, so a flood cannot
/// keep the socket's queue full for the other containers.
struct Rates {
    rate: f64,
    clients: HashMap<IpAddr, (f64, Instant)>,
}

impl Rates {
    fn new(rate: u32) -> Rates {
        Rates {
            rate: rate as f64,
            clients: HashMap::new(),
        }
    }

    fn allow(&mut self, client: IpAddr) -> bool {
        let rate = self.rate;
        let now = Instant::now();
        if self.clients.len() > 4096 {
            // Forget clients quiet for a second (their buckets are full again anyway).
            self.clients
                .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(1));
        }
        let (tokens, last) = self.clients.entry(client).or_insert((rate, now));
        let refill = now.duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// Binds UDP and TCP on `at` and serves until the runtime ends.
pub async fn serve(names: Arc<Names>, at: SocketAddr) -> Result<()> {
    let udp = UdpSocket::bind(at).await.with_context(|| {
        format!("cannot serve DNS on udp {at} (names.enabled = false runs without)")
    })?;
    // Room for bursts of many containers at once (the kernel caps it at rmem_max).
    let _ = nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
    let tcp = TcpListener::bind(at).await.with_context(|| {
        format!("cannot serve DNS on tcp {at} (names.enabled = false runs without)")
    })?;
    tokio::spawn(serve_tcp(names.clone(), tcp));
    // One receiving task per worker thread: answers are cheap, the socket is the queue.
    let (udp, rates) = (
        Arc::new(udp),
        Arc::new(Mutex::new(Rates::new(names.client_qps))),
    );
    let shares = Arc::new(Shares::default());
    for _ in 0..UDP_TASKS {
        tokio::spawn(serve_udp(
            names.clone(),
            udp.clone(),
            rates.clone(),
            shares.clone(),
        ));
    }
    Ok(())
}

async fn serve_udp(
    names: Arc<Names>,
    socket: Arc<UdpSocket>,
    rates: Arc<Mutex<Rates>>,
    shares: Arc<Shares>,
) {
    let forwards = Arc::new(Semaphore::new(FORWARDS));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(error = %e, "DNS: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !rates.lock().unwrap().allow(client.ip()) {
            names.counters.limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let verdict = names.answer(&buf[..n]);
        let request = match verdict {
            Verdict::Reply(bytes) => {
                let _ = socket.send_to(&bytes, client).await;
                continue;
            }
            Verdict::Ignore => continue,
            Verdict::Forward(request) => request,
        };
        let permit = forwards.clone().try_acquire_owned().ok();
        if permit.is_none() || !shares.take(client.ip()) {
            names.counters.refused.fetch_add(1, Ordering::Relaxed);
            let _ = socket
                .send_to(&error_reply(&request, ResponseCode::Refused), client)
                .await;
            continue;
        }
        let (names, socket, shares) = (names.clone(), socket.clone(), shares.clone());
        tokio::spawn(async move {
            let bytes = forward(&names, &request, false).await;
            let _ = socket.send_to(&bytes, client).await;
            shares.give_back(client.ip());
            drop(permit);
        });
    }
}

/// The upstreams' answer, or SERVFAIL.
async fn forward(names: &Names, request: &Message, over_tcp: bool) -> Vec<u8> {
    match names.upstream.resolve(request, over_tcp).await {
        Ok((bytes, cached)) => {
            let counter = if cached {
                &names.counters.cached
            } else {
                &names.counters.forwarded
            };
            counter.fetch_add(1, Ordering::Relaxed);
            bytes
        }
        Err(e) => {
            names.counters.failed.fetch_add(1, Ordering::Relaxed);
            debug!(error = format!("{e:#}"), "DNS: upstream failed");
            error_reply(request, ResponseCode::ServFail)
        }
    }
}

fn error_reply(request: &Message, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(request.queries.iter().cloned());
    m.to_vec().unwrap_or_default()
}

async fn serve_tcp(names: Arc<Names>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                warn!(error = %e, "DNS: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Beyond the limit the connection is closed at once: clients retry.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            names.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let names = names.clone();
        tokio::spawn(async move {
            let _ = serve_connection(&names, stream).await;
            drop(slot);
        });
    }
}

/// Length-prefixed queries (RFC 1035 4.2.2) until the client closes or idles.
async fn serve_connection(names: &Names, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            _ => return Ok(()),
        };
        let mut query = vec![0u8; len];
        if tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .is_err()
        {
            return Ok(());
        }
        let bytes = match names.answer(&query) {
            Verdict::Reply(bytes) => bytes,
            Verdict::Ignore => return Ok(()),
            Verdict::Forward(request) => forward(names, &request, true).await,
        };
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
    }
}
