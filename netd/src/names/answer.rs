//! What the bubble's DNS server says to one query: an answer from the names directory, or
//! "ask upstream". Pure (bytes in, bytes out), so that it is unit tested and fuzzed; the
//! wire format is hickory-proto's, as in aardvark-dns.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::directory::Directory;

/// How long resolvers may keep our answers: names move when containers restart, and a
/// stopped container's name should not linger in a cache.
pub const NAME_TTL: u32 = 5;

/// The UDP payload we answer within (the EDNS size recommended by DNS Flag Day 2020).
pub const UDP_PAYLOAD: u16 = 1232;

/// What to do with one query.
#[derive(Debug)]
pub enum Verdict {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: ask the upstream resolvers (the parsed query).
    Forward(Box<Message>),
    /// Not a query at all (too short, or a response): say nothing.
    Ignore,
}

/// The zone the names live in, and the reverse zone of the overlay.
pub struct Zone {
    /// `hpk.internal.`: `web` and `web.hpk.internal.` both answer.
    pub domain: Name,
}

impl Zone {
    pub fn new(domain: &str) -> Result<Zone, String> {
        let mut name = Name::from_ascii(domain)
            .map_err(|e| format!("names domain {domain:?} is not a DNS name: {e}"))?;
        if name.is_root() {
            return Err("names domain must not be the root".into());
        }
        name.set_fqdn(true);
        Ok(Zone {
            domain: name.to_lowercase(),
        })
    }

    /// The container name a query name asks for, if it is ours to answer: `web.` or
    /// `web.<domain>.`.
    fn label_of(&self, qname: &Name) -> Option<String> {
        let lower = qname.to_lowercase();
        let first = || {
            lower
                .iter()
                .next()
                .map(|l| String::from_utf8_lossy(l).into_owned())
        };
        if lower.num_labels() == 1 {
            return first();
        }
        if lower.num_labels() == self.domain.num_labels() + 1 && self.domain.zone_of(&lower) {
            return first();
        }
        None
    }

    /// Whether `qname` is inside our domain (where we are the authority).
    fn owns(&self, qname: &Name) -> bool {
        self.domain.zone_of(&qname.to_lowercase())
    }
}

/// Answers `query` from `names` or says to forward it.
pub fn answer(query: &[u8], names: &Directory, zone: &Zone) -> Verdict {
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return format_error(query),
    };
    if request.metadata.message_type != MessageType::Query {
        return Verdict::Ignore;
    }
    if request.metadata.op_code != OpCode::Query {
        return reply(&request, ResponseCode::NotImp, Vec::new(), false);
    }
    let [q] = request.queries.as_slice() else {
        return reply(&request, ResponseCode::FormErr, Vec::new(), false);
    };
    if q.query_class() != DNSClass::IN {
        return Verdict::Forward(Box::new(request));
    }
    if let Some(label) = zone.label_of(q.name()) {
        if let Some(entry) = names.get(&label) {
            let answers = match q.query_type() {
                RecordType::A | RecordType::ANY => {
                    vec![Record::from_rdata(
                        q.name().clone(),
                        NAME_TTL,
                        RData::A(A(entry.address)),
                    )]
                }
                // The name exists, without records of this type (no IPv6 on the overlay).
                _ => Vec::new(),
            };
            return reply(&request, ResponseCode::NoError, answers, true);
        }
        if zone.owns(q.name()) {
            return reply(&request, ResponseCode::NXDomain, Vec::new(), true);
        }
    } else if zone.owns(q.name()) {
        // `a.b.hpk.internal.`: nothing lives that deep.
        return reply(&request, ResponseCode::NXDomain, Vec::new(), true);
    }
    if q.query_type() == RecordType::PTR {
        if let Some(address) = reverse_address(q.name()) {
            if let Some(name) = names.name_of(address) {
                if let Ok(target) =
                    Name::from_ascii(name).and_then(|n| n.append_domain(&zone.domain))
                {
                    let record =
                        Record::from_rdata(q.name().clone(), NAME_TTL, RData::PTR(PTR(target)));
                    return reply(&request, ResponseCode::NoError, vec![record], true);
                }
            }
        }
    }
    Verdict::Forward(Box::new(request))
}

/// The address a `d.c.b.a.in-addr.arpa.` name stands for.
fn reverse_address(name: &Name) -> Option<Ipv4Addr> {
    let net = name.parse_arpa_name().ok()?;
    match net {
        ipnet::IpNet::V4(v4) if v4.prefix_len() == 32 => Some(v4.addr()),
        _ => None,
    }
}

/// A response to `request` with `code` and `answers`.
fn reply(
    request: &Message,
    code: ResponseCode,
    answers: Vec<Record>,
    authoritative: bool,
) -> Verdict {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = authoritative;
    response.metadata.response_code = code;
    response.add_queries(request.queries.iter().cloned());
    response.add_answers(answers);
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        response.set_edns(edns);
    }
    match response.to_vec() {
        Ok(bytes) => Verdict::Reply(bytes),
        Err(_) => server_failure(request.metadata.id, request.metadata.op_code),
    }
}

/// A bare header saying `code` (for what cannot be encoded otherwise).
fn server_failure(id: u16, op: OpCode) -> Verdict {
    let mut m = Message::error_msg(id, op, ResponseCode::ServFail);
    m.metadata.recursion_available = true;
    Verdict::Reply(m.to_vec().unwrap_or_default())
}

/// FORMERR for a message that does not parse but has a query header; nothing for less.
fn format_error(query: &[u8]) -> Verdict {
    // Header: ID (2), flags (2): QR is the top bit of byte 2.
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return Verdict::Ignore;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let op = OpCode::from_u8((query[2] >> 3) & 0x0f);
    let mut m = Message::error_msg(id, op, ResponseCode::FormErr);
    m.metadata.recursion_available = true;
    Verdict::Reply(m.to_vec().unwrap_or_default())
}

/// A query for `name` and `kind` (tests, benchmarks and the fuzz target's seeds).
pub fn query_bytes(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid name"),
        kind,
    ));
    m.to_vec().expect("queries encode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::directory::Entry;

    fn names() -> Directory {
        let mut d = Directory::default();
        d.insert(
            "web",
            Entry {
                address: Ipv4Addr::new(10, 244, 3, 5),
                container: "c1".into(),
                bubble: "192.0.2.13".into(),
            },
        );
        d
    }

    fn ask(name: &str, kind: RecordType) -> Message {
        let zone = Zone::new("hpk.internal").unwrap();
        match answer(&query_bytes(7, name, kind), &names(), &zone) {
            Verdict::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{name} {kind}: {other:?}"),
        }
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_answer_short_and_in_the_domain_in_any_case() {
        for name in ["web.", "web", "WEB.hpk.internal.", "web.hpk.internal"] {
            let m = ask(name, RecordType::A);
            assert_eq!(m.metadata.id, 7);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(addresses(&m), [Ipv4Addr::new(10, 244, 3, 5)], "{name}");
            assert_eq!(m.answers[0].ttl, NAME_TTL);
        }
        // The name exists, without IPv6: NOERROR and no data.
        let m = ask("web.hpk.internal.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_names_in_the_domain_do_not_exist_and_others_go_upstream() {
        for name in ["db.hpk.internal.", "a.web.hpk.internal."] {
            let m = ask(name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.metadata.authoritative);
        }
        let zone = Zone::new("hpk.internal").unwrap();
        for name in ["db.", "example.org.", "web.example.org."] {
            let v = answer(&query_bytes(1, name, RecordType::A), &names(), &zone);
            assert!(matches!(v, Verdict::Forward(_)), "{name}: {v:?}");
        }
    }

    #[test]
    fn reverse_lookups_name_the_container() {
        let m = ask("5.3.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        match &m.answers[0].data {
            RData::PTR(ptr) => assert_eq!(ptr.0.to_ascii(), "web.hpk.internal."),
            other => panic!("{other:?}"),
        }
        let zone = Zone::new("hpk.internal").unwrap();
        let v = answer(
            &query_bytes(1, "6.3.244.10.in-addr.arpa.", RecordType::PTR),
            &names(),
            &zone,
        );
        assert!(matches!(v, Verdict::Forward(_)));
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let zone = Zone::new("hpk.internal").unwrap();
        assert!(matches!(answer(b"", &names(), &zone), Verdict::Ignore));
        assert!(matches!(answer(&[0; 11], &names(), &zone), Verdict::Ignore));
        let mut bad = query_bytes(9, "web.", RecordType::A);
        bad.truncate(bad.len() - 3);
        match answer(&bad, &names(), &zone) {
            Verdict::Reply(bytes) => {
                let m = Message::from_vec(&bytes).unwrap();
                assert_eq!(m.metadata.id, 9);
                assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            }
            other => panic!("{other:?}"),
        }
        // A response sent to us is not answered (no reflection loops).
        let mut response = query_bytes(9, "web.", RecordType::A);
        response[2] |= 0x80;
        assert!(matches!(
            answer(&response, &names(), &zone),
            Verdict::Ignore
        ));
    }

    #[test]
    fn domains_are_checked() {
        assert!(Zone::new("hpk.internal").is_ok());
        assert!(Zone::new(".").is_err());
        assert!(Zone::new("a..b").is_err());
    }
}
