//! Sealing and opening datagrams between hpk-netd VTEPs.
//!
//! A sealed datagram is flannel's VXLAN header, then ours, then the inner frame (in the
//! clear or encrypted), then the AEAD tag:
//!
//! ```text
//! | VXLAN 8 | mode 1 | 0 0 0 | session 8 | counter 8 | frame ... | tag 16 |
//! ```
//!
//! The key is AES-256-GCM, derived with HKDF-SHA256 from the cluster's key, the sender's
//! public address, its session (a number that grows with every start of the sender) and
//! the mode, so that no two senders, starts or modes ever share a key; the nonce is the
//! counter, which never repeats within a session. Authenticating only (the default) puts
//! everything into the associated data: the frame stays readable on the wire but cannot be
//! forged or altered. The receiver keeps, per peer, the newest session it authenticated
//! and a replay window of its counters.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf::{Salt, HKDF_SHA256};

use super::key::ClusterKey;
use super::keys::Keys;
use super::replay::ReplayWindow;
use crate::underlay::header;

/// Our header after flannel's.
pub const HEADER_LEN: usize = 20;
pub const TAG_LEN: usize = 16;
/// What sealing adds to each datagram.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// What a sealed datagram protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    /// Tagged: nobody without the key can forge, alter or replay a frame.
    Authenticate,
    /// Tagged and encrypted: nobody without the key can read the frames either.
    Encrypt,
}

impl Protection {
    fn mode(self) -> u8 {
        match self {
            Protection::Authenticate => 1,
            Protection::Encrypt => 2,
        }
    }

    fn from_mode(mode: u8) -> Option<Protection> {
        match mode {
            1 => Some(Protection::Authenticate),
            2 => Some(Protection::Encrypt),
            _ => None,
        }
    }
}

fn derive(cluster: &ClusterKey, sender: Ipv4Addr, session: u64, mode: u8) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, b"hpktainer overlay v1").extract(cluster.as_bytes());
    let sender = sender.octets();
    let session = session.to_be_bytes();
    let info: [&[u8]; 3] = [&sender, &session, &[mode]];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("32 bytes is within HKDF's output");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sending side: one per VTEP, owned by its transmit thread.
pub struct Sealer {
    key: LessSafeKey,
    protection: Protection,
    session: u64,
    counter: u64,
}

impl Sealer {
    /// `session` must be larger than any earlier start of this sender used.
    pub fn new(
        cluster: &ClusterKey,
        own: Ipv4Addr,
        session: u64,
        protection: Protection,
    ) -> Sealer {
        Sealer {
            key: derive(cluster, own, session, protection.mode()),
            protection,
            session,
            counter: 0,
        }
    }

    /// Appends `datagram` (VXLAN header and frame), sealed, to `out`.
    pub fn seal(&mut self, datagram: &[u8], out: &mut Vec<u8>) {
        let (vxlan, frame) = datagram.split_at(header::LEN);
        let counter = self.counter;
        self.counter += 1;
        let start = out.len();
        out.extend_from_slice(vxlan);
        out.extend_from_slice(&[self.protection.mode(), 0, 0, 0]);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        let body = out.len();
        out.extend_from_slice(frame);
        let tag = match self.protection {
            Protection::Authenticate => {
                let (aad, rest) = out[start..].split_at_mut(body - start + frame.len());
                self.key.seal_in_place_separate_tag(
                    nonce(counter),
                    Aad::from(&*aad),
                    &mut rest[..0],
                )
            }
            Protection::Encrypt => {
                let (aad, text) = out[start..].split_at_mut(body - start);
                self.key
                    .seal_in_place_separate_tag(nonce(counter), Aad::from(&*aad), text)
            }
        }
        .expect("a datagram is far below GCM's message limit");
        out.extend_from_slice(tag.as_ref());
    }
}

/// Why a sealed datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too short, or an unknown mode: not a sealed datagram.
    Malformed,
    /// The tag does not match: forged, altered, or sealed with another cluster's key.
    Forged,
    /// Authentic, but seen before, or from an older session of its sender.
    Replayed,
}

/// A peer's newest authenticated session.
struct Session {
    number: u64,
    mode: u8,
    key: LessSafeKey,
    window: ReplayWindow,
}

/// The receiving side: one per VTEP, owned by its receive thread.
pub struct Opener {
    keys: std::sync::Arc<Keys>,
    peers: HashMap<Ipv4Addr, Session>,
}

impl Opener {
    pub fn new(keys: std::sync::Arc<Keys>) -> Opener {
        Opener {
            keys,
            peers: HashMap::new(),
        }
    }

    /// Checks `datagram` from `from` and opens it in place; returns the range of
    /// `datagram` that now holds the VXLAN header and the frame, ready for
    /// [`header::decode`].
    pub fn open(
        &mut self,
        from: Ipv4Addr,
        datagram: &mut [u8],
    ) -> Result<std::ops::Range<usize>, Refused> {
        let pre = header::LEN + HEADER_LEN;
        if datagram.len() < pre + TAG_LEN {
            return Err(Refused::Malformed);
        }
        let ours = &datagram[header::LEN..pre];
        let protection = Protection::from_mode(ours[0]).ok_or(Refused::Malformed)?;
        let mode = protection.mode();
        let number = u64::from_be_bytes(ours[4..12].try_into().expect("8 bytes"));
        let counter = u64::from_be_bytes(ours[12..20].try_into().expect("8 bytes"));
        // A session seen before is checked against its window before any crypto; a newer
        // one gets its key derived (from the cluster's key, or the previous one while a
        // rotation goes round), kept only once a datagram of it is authentic.
        let end = datagram.len() - TAG_LEN;
        let candidates = match self.peers.get(&from) {
            Some(s) if s.number == number && s.mode == mode => {
                if !s.window.fresh(counter) {
                    return Err(Refused::Replayed);
                }
                if !open_with(&s.key, protection, counter, datagram, pre) {
                    return Err(Refused::Forged);
                }
                Vec::new()
            }
            Some(s) if number <= s.number => return Err(Refused::Replayed),
            _ => self.keys.to_open(),
        };
        if !candidates.is_empty() {
            // A failed open may leave the bytes scrambled: try each key on a copy but the last.
            let original = (candidates.len() > 1).then(|| datagram.to_vec());
            let mut opened = None;
            for (i, cluster) in candidates.iter().enumerate() {
                let key = derive(cluster, from, number, mode);
                if i > 0 {
                    datagram.copy_from_slice(original.as_deref().expect("kept"));
                }
                if open_with(&key, protection, counter, datagram, pre) {
                    opened = Some(key);
                    break;
                }
            }
            let key = opened.ok_or(Refused::Forged)?;
            // A newer start of the sender (or its new key): its older sessions are over.
            let window = ReplayWindow::default();
            self.peers.insert(
                from,
                Session {
                    number,
                    mode,
                    key,
                    window,
                },
            );
        }
        let session = self.peers.get_mut(&from).expect("inserted above");
        if !session.window.accept(counter) {
            return Err(Refused::Replayed);
        }
        // flannel's header goes right before the frame: one slice for the decoder.
        datagram.copy_within(..header::LEN, HEADER_LEN);
        Ok(HEADER_LEN..end)
    }
}

/// Checks (and, encrypted, decrypts) `datagram` in place; `pre` bytes are headers.
fn open_with(
    key: &LessSafeKey,
    protection: Protection,
    counter: u64,
    datagram: &mut [u8],
    pre: usize,
) -> bool {
    let end = datagram.len() - TAG_LEN;
    match protection {
        Protection::Authenticate => {
            let (aad, tag) = datagram.split_at_mut(end);
            key.open_in_place(nonce(counter), Aad::from(&*aad), tag)
                .is_ok()
        }
        Protection::Encrypt => {
            let (aad, rest) = datagram.split_at_mut(pre);
            key.open_in_place(nonce(counter), Aad::from(&*aad), rest)
                .is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let mut d = header::encode(1).to_vec();
        d.extend_from_slice(&[0xaa; 14]);
        d.extend_from_slice(payload);
        d
    }

    fn sealed(sealer: &mut Sealer, d: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(d, &mut out);
        out
    }

    fn open(opener: &mut Opener, from: Ipv4Addr, mut d: Vec<u8>) -> Result<Vec<u8>, Refused> {
        let r = opener.open(from, &mut d)?;
        Ok(d[r].to_vec())
    }

    #[test]
    fn both_modes_round_trip_and_only_encryption_hides_the_frame() {
        let key = ClusterKey::generate().unwrap();
        for protection in [Protection::Authenticate, Protection::Encrypt] {
            let mut s = Sealer::new(&key, A, 7, protection);
            let mut o = Opener::new(Keys::new(key.clone()));
            let d = datagram(b"the known payload");
            let wire = sealed(&mut s, &d);
            assert_eq!(wire.len(), d.len() + OVERHEAD);
            let visible = wire.windows(17).any(|w| w == b"the known payload");
            assert_eq!(visible, protection == Protection::Authenticate);
            assert_eq!(open(&mut o, A, wire).unwrap(), d);
        }
    }

    #[test]
    fn forged_altered_misaddressed_and_foreign_datagrams_are_refused() {
        let key = ClusterKey::generate().unwrap();
        let mut s = Sealer::new(&key, A, 1, Protection::Authenticate);
        let wire = sealed(&mut s, &datagram(b"payload"));
        let mut o = Opener::new(Keys::new(key.clone()));
        for at in [
            0,
            5,
            header::LEN,
            header::LEN + 4,
            header::LEN + 19,
            30,
            wire.len() - 1,
        ] {
            let mut bad = wire.clone();
            bad[at] ^= 1;
            assert!(open(&mut o, A, bad).is_err(), "bit flipped at {at}");
        }
        // Sealed by A, claimed by B: B's key differs.
        assert_eq!(open(&mut o, B, wire.clone()), Err(Refused::Forged));
        // Another cluster.
        let mut other = Opener::new(Keys::new(ClusterKey::generate().unwrap()));
        assert_eq!(open(&mut other, A, wire.clone()), Err(Refused::Forged));
        // A plain flannel datagram is no sealed one.
        assert!(open(&mut o, A, datagram(b"x")).is_err());
        assert!(open(&mut o, A, wire).is_ok(), "the original still opens");
    }

    #[test]
    fn replays_and_older_sessions_are_refused() {
        let key = ClusterKey::generate().unwrap();
        let mut o = Opener::new(Keys::new(key.clone()));
        let mut first = Sealer::new(&key, A, 10, Protection::Authenticate);
        let one = sealed(&mut first, &datagram(b"1"));
        let two = sealed(&mut first, &datagram(b"2"));
        assert!(open(&mut o, A, two.clone()).is_ok());
        assert!(
            open(&mut o, A, one.clone()).is_ok(),
            "reordered, not replayed"
        );
        assert_eq!(open(&mut o, A, one.clone()), Err(Refused::Replayed));
        assert_eq!(open(&mut o, A, two), Err(Refused::Replayed));
        // The sender starts again: a newer session replaces the old one for good.
        let mut second = Sealer::new(&key, A, 11, Protection::Encrypt);
        assert!(open(&mut o, A, sealed(&mut second, &datagram(b"3"))).is_ok());
        let three = sealed(&mut first, &datagram(b"late"));
        assert_eq!(open(&mut o, A, three), Err(Refused::Replayed));
        assert_eq!(open(&mut o, A, one), Err(Refused::Replayed));
    }

    #[test]
    fn after_a_rotation_both_keys_open_and_a_third_does_not() {
        let (a, b) = (
            ClusterKey::from_bytes([1; 32]),
            ClusterKey::from_bytes([2; 32]),
        );
        let keys = Keys::new(a.clone());
        let mut o = Opener::new(keys.clone());
        let mut old = Sealer::new(&a, A, 1, Protection::Encrypt);
        assert!(open(&mut o, A, sealed(&mut old, &datagram(b"1"))).is_ok());
        keys.replace(b.clone(), None);
        // A peer that has not noticed yet goes on, even with a new start.
        assert!(open(&mut o, A, sealed(&mut old, &datagram(b"2"))).is_ok());
        let mut restarted = Sealer::new(&a, A, 2, Protection::Encrypt);
        assert!(open(&mut o, A, sealed(&mut restarted, &datagram(b"3"))).is_ok());
        // One that has: a newer session with the new key.
        let mut new = Sealer::new(&b, A, 3, Protection::Encrypt);
        assert_eq!(
            open(&mut o, A, sealed(&mut new, &datagram(b"4"))).unwrap(),
            datagram(b"4")
        );
        let mut foreign = Sealer::new(&ClusterKey::from_bytes([3; 32]), B, 9, Protection::Encrypt);
        assert_eq!(
            open(&mut o, B, sealed(&mut foreign, &datagram(b"5"))),
            Err(Refused::Forged)
        );
    }
}
