//! Names that are not the cluster's go to the bubble's own resolvers (those in its
//! `/etc/resolv.conf`, what the bubble itself uses), and their answers are kept for their
//! TTL so that a chatty container does not send every query out through the uplink.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets before the next is asked.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Answers kept at most (the oldest are dropped first when full).
const CACHE_ENTRIES: usize = 10_000;
/// Negative answers without an SOA are kept this long; no answer longer than a day.
const NEGATIVE_TTL: u32 = 30;
const MAX_TTL: u32 = 86_400;

/// The `nameserver` lines of a resolv.conf, without `exclude` (our own server: asking
/// ourselves would loop) and without loopback addresses (they name the bubble's own
/// namespace, where nothing else answers).
pub fn resolvers(resolv_conf: &str, exclude: Ipv4Addr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !a.is_loopback() && *a != IpAddr::V4(exclude))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// Parses `ADDR` or `ADDR:PORT` (configured upstreams).
pub fn parse_server(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| anyhow!("names upstream {text:?} is not ADDRESS or ADDRESS:PORT"))
}

type Key = (Name, RecordType, DNSClass);

struct Cached {
    response: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Upstream {
    servers: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Cached>>,
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>) -> Upstream {
        Upstream {
            servers,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The answer to `request` (bytes with its id), from the cache or the upstreams;
    /// whether it came from the cache.
    pub async fn resolve(&self, request: &Message, over_tcp: bool) -> Result<(Vec<u8>, bool)> {
        let key = key_of(request).ok_or_else(|| anyhow!("no question"))?;
        if let Some(bytes) = self.cached(&key, request) {
            return Ok((bytes, true));
        }
        if self.servers.is_empty() {
            bail!("no upstream resolver (the bubble's resolv.conf names none)");
        }
        let mut query = request.clone();
        query.metadata.id = rand::random();
        let wire = query.to_vec()?;
        let mut last = anyhow!("no upstream answered");
        for server in &self.servers {
            let attempt = if over_tcp {
                ask_tcp(*server, &wire).await
            } else {
                match ask_udp(*server, &wire).await {
                    Ok(m) if m.metadata.truncation => ask_tcp(*server, &wire).await,
                    other => other,
                }
            };
            match attempt {
                Ok(mut response) if response.metadata.id == query.metadata.id => {
                    self.store(key, &response);
                    response.metadata.id = request.metadata.id;
                    let limit = if over_tcp {
                        u16::MAX
                    } else {
                        request.max_payload()
                    };
                    return Ok((fit(response, limit)?, false));
                }
                Ok(_) => last = anyhow!("{server} answered another query"),
                Err(e) => last = e.context(format!("upstream {server}")),
            }
        }
        Err(last)
    }

    fn cached(&self, key: &Key, request: &Message) -> Option<Vec<u8>> {
        let mut cache = self.cache.lock().unwrap();
        let hit = cache.get(key)?;
        let age = hit.stored.elapsed().as_secs() as u32;
        if age >= hit.ttl {
            cache.remove(key);
            return None;
        }
        let mut response = hit.response.clone();
        drop(cache);
        response.metadata.id = request.metadata.id;
        for r in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        fit(response, request.max_payload()).ok()
    }

    fn store(&self, key: Key, response: &Message) {
        let Some(ttl) = cache_ttl(response) else {
            return;
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < c.ttl as u64);
            if cache.len() >= CACHE_ENTRIES {
                if let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, c)| c.stored)
                    .map(|(k, _)| k.clone())
                {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(
            key,
            Cached {
                response: response.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

fn key_of(m: &Message) -> Option<Key> {
    let q = m.queries.first()?;
    Some((q.name().to_lowercase(), q.query_type(), q.query_class()))
}

/// How long `response` may be kept: its records' smallest TTL, the SOA's minimum for a
/// negative answer; nothing for failures and truncated answers.
fn cache_ttl(response: &Message) -> Option<u32> {
    if response.metadata.message_type != MessageType::Response || response.metadata.truncation {
        return None;
    }
    let code = response.metadata.response_code;
    if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
        return None;
    }
    let ttl = if response.answers.is_empty() {
        response
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL)
    } else {
        response.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    (ttl > 0).then_some(ttl.min(MAX_TTL))
}

/// `response` as bytes within `limit`, truncated (TC set, sections dropped) if larger.
fn fit(response: Message, limit: u16) -> Result<Vec<u8>> {
    let bytes = response.to_vec()?;
    if bytes.len() <= limit.max(512) as usize {
        return Ok(bytes);
    }
    Ok(response.truncate().to_vec()?)
}

async fn ask_udp(server: SocketAddr, wire: &[u8]) -> Result<Message> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(wire).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))??;
    Message::from_vec(&buf[..n]).context("malformed answer")
}

async fn ask_tcp(server: SocketAddr, wire: &[u8]) -> Result<Message> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(wire);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer over TCP within {TIMEOUT:?}"))??;
    Message::from_vec(&buf).context("malformed answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_come_from_resolv_conf_without_us_and_loopback() {
        let text = "# comment\nsearch example\nnameserver 10.0.2.3\nnameserver 127.0.0.53\n\
                    nameserver 10.244.3.1\nnameserver fd00::3\noptions ndots:1\nnameserver bad\n";
        let got = resolvers(text, Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(
            got,
            vec![
                "10.0.2.3:53".parse::<SocketAddr>().unwrap(),
                "[fd00::3]:53".parse().unwrap()
            ]
        );
        assert_eq!(parse_server("198.51.100.2").unwrap().port(), 53);
        assert_eq!(parse_server("198.51.100.2:5353").unwrap().port(), 5353);
        assert!(parse_server("dns.example").is_err());
    }

    #[test]
    fn answers_are_kept_for_their_ttl_and_failures_not_at_all() {
        use hickory_proto::op::OpCode;
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::Record;
        let name = Name::from_ascii("outside.example.").unwrap();
        let mut ok = Message::response(1, OpCode::Query);
        ok.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A::new(1, 2, 3, 4)),
        ));
        ok.add_answer(Record::from_rdata(name, 60, RData::A(A::new(1, 2, 3, 5))));
        assert_eq!(cache_ttl(&ok), Some(60));
        let mut fail = Message::response(1, OpCode::Query);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&fail), None);
        let mut nx = Message::response(1, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(cache_ttl(&nx), Some(NEGATIVE_TTL));
        let mut cut = ok.clone();
        cut.metadata.truncation = true;
        assert_eq!(cache_ttl(&cut), None);
    }
}
