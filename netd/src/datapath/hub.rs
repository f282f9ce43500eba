//! The bubble's shared tap forwarder: one thread moves the frames of every tap endpoint of
//! the bubble, so a frame that crosses the bridge from one endpoint to another is read by
//! the same thread that just wrote it, without a wake-up of another process. On a VM a
//! wake-up costs about as much as a whole round trip over a veth pair; a per-container
//! forwarder pays two per round trip that the hub does not.
//!
//! hpk-netd hands each endpoint over on the hub's control socket (SOCK_SEQPACKET, the two
//! tap fds attached with SCM_RIGHTS); the hub forwards until the container exits (a pidfd
//! per endpoint), hpk-netd removes the endpoint, or one of its taps fails. A failing
//! endpoint is dropped alone. The hub exits once it has had no endpoint for [`LINGER`],
//! counted from its start too (a hub whose first endpoint never came does not stay);
//! hpk-netd starts a new one for the next.
//!
//! A frame from one of its containers to another that the bridge would only forward, the
//! hub hands over itself ([`super::shortcut`]), and counts it: the bridge never sees it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{accept4, setsockopt, sockopt, SockFlag};
use nix::sys::time::{TimeVal, TimeValLike};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::shortcut::{self, Identity, ShortcutCounters};
use super::tap_pump::{drain, drain_with, write_or_drop, BusyPoll};
use super::PumpStopped;
use crate::sys::fd_passing;
use crate::sys::pidwatch::PidWatch;
use crate::sys::process::ProcId;
use crate::sys::tap::{Tap, MAX_FRAME, VNET_HDR_LEN};

/// Largest control message (JSON).
const MAX_REQUEST: usize = 4096;

/// How long the hub stays once its last endpoint is gone: containers started one after
/// another then find it running instead of waiting for a new one to start (~2 ms).
pub const LINGER: Duration = Duration::from_secs(5);

/// A request on the hub's control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HubRequest {
    /// Serve the two taps attached (container side, then bubble side) for endpoint `id`,
    /// until process `pid` (started at `start`, in clock ticks after boot) exits. With
    /// the container's `identity`, frames between it and the hub's other containers
    /// skip the bridge.
    Add {
        id: String,
        pid: i32,
        start: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<Identity>,
    },
    /// Stop serving `id`: its taps are closed, which removes them.
    Remove { id: String },
    /// The endpoints served.
    List,
    /// What each endpoint moved past the bridge.
    Counters,
}

/// The hub's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HubReply {
    Done,
    Ids {
        ids: Vec<String>,
    },
    Counters {
        endpoints: BTreeMap<String, ShortcutCounters>,
    },
    Error {
        message: String,
    },
}

/// Sends one message with `fds` attached on a SOCK_SEQPACKET socket.
pub fn send_message(socket: BorrowedFd, message: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    fd_passing::send(socket, message, fds)
}

/// Receives one request or reply and the fds attached to it.
pub fn receive_message(socket: BorrowedFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    fd_passing::receive(socket, MAX_REQUEST)
}

// Per-endpoint events are logged at debug: the hub's log lives as long as the bubble.

/// One endpoint the hub serves.
struct Pair {
    id: String,
    container: Tap,
    bubble: Tap,
    watch: PidWatch,
    identity: Option<Identity>,
    shortcut: Cell<ShortcutCounters>,
    /// Which of the pairs that held this slot it is (see [`Token`]).
    generation: u32,
}

const ROLE_CONTAINER: u64 = 0;
const ROLE_BUBBLE: u64 = 1;
const ROLE_EXIT: u64 = 2;
const CONTROL: u64 = u64::MAX;

/// What an epoll event is about: the role (bits 0-1), the slot (2-31), and the generation
/// of the pair in the slot (32-63). epoll returns a batch of events in no particular
/// order: a slot freed and taken again while the batch is handled must not get the old
/// pair's events (an old pair's exit would remove the new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Token {
    slot: usize,
    generation: u32,
    role: u64,
}

impl Token {
    fn encode(self) -> u64 {
        (u64::from(self.generation) << 32) | ((self.slot as u64) << 2) | self.role
    }

    fn decode(data: u64) -> Token {
        Token {
            slot: ((data & 0xffff_ffff) >> 2) as usize,
            generation: (data >> 32) as u32,
            role: data & 3,
        }
    }
}

struct Hub {
    epoll: Epoll,
    control: OwnedFd,
    slots: Vec<Option<Pair>>,
    by_id: HashMap<String, usize>,
    /// Slots of the endpoints with an identity, by their container's MAC.
    by_mac: HashMap<[u8; 6], usize>,
    /// Pairs added so far: the next one's generation.
    added: u32,
}

impl Hub {
    /// A hub with no endpoint yet, answering requests on `control`.
    fn new(control: OwnedFd) -> Result<Hub> {
        nix::fcntl::fcntl(
            &control,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("control socket")?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
        epoll
            .add(&control, EpollEvent::new(EpollFlags::EPOLLIN, CONTROL))
            .context("epoll")?;
        Ok(Hub {
            epoll,
            control,
            slots: Vec::new(),
            by_id: HashMap::new(),
            by_mac: HashMap::new(),
            added: 0,
        })
    }

    fn watch(&self, fd: BorrowedFd, token: u64) -> nix::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
    }

    fn add(
        &mut self,
        id: String,
        pid: i32,
        start: u64,
        identity: Option<Identity>,
        fds: Vec<OwnedFd>,
    ) -> Result<()> {
        let [container, bubble]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|fds: Vec<OwnedFd>| anyhow!("add needs two tap fds, got {}", fds.len()))?;
        let container = Tap::from_fd(container).context("container-side fd")?;
        let bubble = Tap::from_fd(bubble).context("bubble-side fd")?;
        if container.vnet_hdr() != bubble.vnet_hdr() {
            bail!("the taps disagree on the virtio-net header");
        }
        let watch = ProcId { pid, start }
            .watch()
            .map_err(|e| anyhow!("cannot watch container process {pid}: {e}"))?
            .ok_or_else(|| {
                anyhow!("container process {pid} has exited (the container stopped while it was being attached)")
            })?;
        for tap in [&container, &bubble] {
            tap.set_nonblocking(true)?;
        }
        self.remove(&id);
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let generation = self.added;
        self.added = self.added.wrapping_add(1);
        let token = |role| {
            Token {
                slot,
                generation,
                role,
            }
            .encode()
        };
        let registered = self
            .watch(container.as_fd(), token(ROLE_CONTAINER))
            .and_then(|_| self.watch(bubble.as_fd(), token(ROLE_BUBBLE)))
            .and_then(|_| self.watch(watch.as_fd(), token(ROLE_EXIT)));
        if let Err(e) = registered {
            for fd in [container.as_fd(), bubble.as_fd(), watch.as_fd()] {
                let _ = self.epoll.delete(fd);
            }
            bail!("cannot watch the taps and the container process: {e}");
        }
        debug!(
            id,
            container = container.name(),
            bubble = bubble.name(),
            pid,
            "serving"
        );
        self.by_id.insert(id.clone(), slot);
        if let Some(identity) = identity {
            if let Some(other) = self.by_mac.insert(identity.mac, slot) {
                warn!(
                    id,
                    other, "two endpoints claim one MAC; the newer gets its frames"
                );
            }
        }
        self.slots[slot] = Some(Pair {
            id,
            container,
            bubble,
            watch,
            identity,
            shortcut: Cell::default(),
            generation,
        });
        Ok(())
    }

    /// Stops serving `id`; its taps close with the pair.
    fn remove(&mut self, id: &str) -> bool {
        let Some(slot) = self.by_id.remove(id) else {
            return false;
        };
        if let Some(pair) = self.slots[slot].take() {
            if let Some(identity) = pair.identity {
                if self.by_mac.get(&identity.mac) == Some(&slot) {
                    self.by_mac.remove(&identity.mac);
                }
            }
            for fd in [
                pair.container.as_fd(),
                pair.bubble.as_fd(),
                pair.watch.as_fd(),
            ] {
                let _ = self.epoll.delete(fd);
            }
            // Closing a tap unregisters its device, which waits for the kernel (RCU, tens
            // of milliseconds on a VM): not on the thread that moves everyone's frames.
            // Taps closed at once are also unregistered in one batch. (Should the thread
            // not start, the pair is dropped, and its taps closed, right here.)
            let closer = std::thread::Builder::new().name("close".into());
            if let Err(e) = closer.spawn(move || drop(pair)) {
                warn!(error = %e, "cannot start a thread to close the taps");
            }
        }
        true
    }

    fn answer(&mut self, request: &[u8], fds: Vec<OwnedFd>) -> HubReply {
        let request: HubRequest = match serde_json::from_slice(request) {
            Ok(r) => r,
            Err(e) => {
                return HubReply::Error {
                    message: format!("not a hub request: {e}"),
                }
            }
        };
        match request {
            HubRequest::Add {
                id,
                pid,
                start,
                identity,
            } => match self.add(id.clone(), pid, start, identity, fds) {
                Ok(()) => HubReply::Done,
                Err(e) => HubReply::Error {
                    message: format!("{id}: {e:#}"),
                },
            },
            HubRequest::Remove { id } => {
                if self.remove(&id) {
                    debug!(id, "removed");
                }
                HubReply::Done
            }
            HubRequest::List => HubReply::Ids {
                ids: self.by_id.keys().cloned().collect(),
            },
            HubRequest::Counters => HubReply::Counters {
                endpoints: self
                    .slots
                    .iter()
                    .flatten()
                    .map(|p| (p.id.clone(), p.shortcut.get()))
                    .collect(),
            },
        }
    }

    /// Answers every pending connection: one request each.
    fn serve_control(&mut self) {
        loop {
            let conn = match accept4(self.control.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just returned this fd.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    warn!(error = %e, "control socket");
                    return;
                }
            };
            // A client that connects and says nothing must not stall the frames.
            let _ = setsockopt(&conn, sockopt::ReceiveTimeout, &TimeVal::seconds(1));
            let reply = match receive_message(conn.as_fd()) {
                Ok((request, fds)) => self.answer(&request, fds),
                Err(e) => HubReply::Error {
                    message: format!("cannot read the request: {e}"),
                },
            };
            let text = serde_json::to_vec(&reply).expect("replies serialize");
            let _ = send_message(conn.as_fd(), &text, &[]);
        }
    }

    /// Moves the frames queued on one side of the event's pair; drops the endpoint if a
    /// tap failed, or when its container exited.
    fn forward(&mut self, event: Token, buf: &mut [u8], answer_buf: &mut [u8]) -> usize {
        let slot = event.slot;
        let Some(pair) = self
            .slots
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|p| p.generation == event.generation)
        else {
            return 0;
        };
        let moved = match event.role {
            ROLE_CONTAINER => self.forward_from_container(slot, pair, buf, answer_buf),
            ROLE_BUBBLE => drain(&pair.bubble, &pair.container, buf),
            _ => {
                let id = pair.id.clone();
                debug!(
                    id,
                    pid = pair.watch.pid(),
                    "container exited; removing its taps"
                );
                self.remove(&id);
                return 0;
            }
        };
        match moved {
            Ok(n) => n,
            Err(stopped) => {
                let id = pair.id.clone();
                warn!(id, "{stopped}; dropping the endpoint");
                self.remove(&id);
                0
            }
        }
    }

    /// Moves the frames queued on `pair`'s container tap: to another container of the
    /// hub's straight where [`shortcut`] allows, then that container's answer
    /// ([`Hub::pass_answer`]); otherwise into the bridge.
    fn forward_from_container(
        &self,
        slot: usize,
        pair: &Pair,
        buf: &mut [u8],
        answer_buf: &mut [u8],
    ) -> Result<usize, PumpStopped> {
        drain_with(&pair.container, buf, |frame| {
            if let Some(to) = self.deliver(slot, pair, frame)? {
                self.pass_answer(to, answer_buf);
            }
            Ok(())
        })
    }

    /// Writes `frame`, read from `pair`'s container (at `slot`), where it goes; returns
    /// the slot of the container it went to straight, if it did.
    fn deliver(
        &self,
        slot: usize,
        pair: &Pair,
        frame: &[u8],
    ) -> Result<Option<usize>, PumpStopped> {
        let header = if pair.container.vnet_hdr() {
            VNET_HDR_LEN
        } else {
            0
        };
        let Some((to_slot, to)) =
            self.shortcut_to(slot, pair, frame.get(header..).unwrap_or_default())
        else {
            write_or_drop(pair.container.name(), &pair.bubble, frame)?;
            return Ok(None);
        };
        // A destination that fails is its own pair's to notice; the frame is lost as the
        // bridge would lose it.
        match to.container.write_frame(frame) {
            Ok(_) => {
                let bytes = (frame.len() - header) as u64;
                count(&pair.shortcut, |c| {
                    c.from_container_frames += 1;
                    c.from_container_bytes += bytes;
                });
                count(&to.shortcut, |c| {
                    c.to_container_frames += 1;
                    c.to_container_bytes += bytes;
                });
                Ok(Some(to_slot))
            }
            Err(e) => {
                debug!(to = to.id, error = %e, "frame dropped");
                Ok(None)
            }
        }
    }

    /// Writing a frame into a container's tap runs that container's stack on the hub's
    /// thread: a ping's reply or a TCP acknowledgement is queued on the way back before
    /// the write returns. Passing that answer on at once, one frame, saves the read that
    /// finds the sender's queue empty and an epoll round before the sender gets it.
    /// Anything else, and a tap that fails, the event loop finds as usual. (Not after a
    /// frame into the bridge: an answer from beyond it rarely comes that fast, and the
    /// read that finds none cost bulk traffic ~8 %.)
    fn pass_answer(&self, slot: usize, buf: &mut [u8]) {
        let Some(pair) = self.slots.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if let Ok(n) = pair.container.read_frame(buf) {
            let _ = self.deliver(slot, pair, &buf[..n]);
        }
    }

    /// The other endpoint of the hub's that `frame` from `pair` (at `slot`) may go to
    /// straight, with the same virtio-net header.
    fn shortcut_to(&self, slot: usize, pair: &Pair, frame: &[u8]) -> Option<(usize, &Pair)> {
        let mac = shortcut::destination(frame, pair.identity.as_ref()?)?;
        let to_slot = *self.by_mac.get(&mac)?;
        let to = self
            .slots
            .get(to_slot)?
            .as_ref()
            .filter(|_| to_slot != slot)?;
        (to.container.vnet_hdr() == pair.container.vnet_hdr()).then_some((to_slot, to))
    }
}

fn count(counters: &Cell<ShortcutCounters>, add: impl FnOnce(&mut ShortcutCounters)) {
    let mut c = counters.get();
    add(&mut c);
    counters.set(c);
}

/// Serves endpoints handed over on `control` (a listening SOCK_SEQPACKET socket) until
/// it has had none for `linger` ([`LINGER`] in hpk-net-daemon). After traffic it polls
/// for `busy_poll` ([`BusyPoll`]) before it sleeps.
pub fn serve(control: OwnedFd, busy_poll: Duration, linger: Duration) -> Result<()> {
    let mut hub = Hub::new(control)?;
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    let mut answer_buf = buf.clone();
    let mut events = vec![EpollEvent::empty(); 64];
    let mut polling = BusyPoll::new(busy_poll);
    let mut empty_since = Some(Instant::now());
    loop {
        let spinning = polling.spinning();
        let timeout = match (spinning, empty_since) {
            (true, _) => EpollTimeout::ZERO,
            (false, Some(since)) => EpollTimeout::try_from(linger.saturating_sub(since.elapsed()))
                .unwrap_or(EpollTimeout::ZERO),
            (false, None) => EpollTimeout::NONE,
        };
        let n = match hub.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("epoll: {e}"),
        };
        let mut moved = 0;
        for event in &events[..n] {
            match event.data() {
                CONTROL => hub.serve_control(),
                t => moved += hub.forward(Token::decode(t), &mut buf, &mut answer_buf),
            }
        }
        if hub.by_id.is_empty() {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= linger {
                info!("no endpoint left; exiting");
                return Ok(());
            }
        } else {
            empty_since = None;
        }
        polling.after(moved, spinning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::process::start_time;
    use crate::sys::tap::TapOptions;
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockType, UnixAddr,
    };

    fn call(path: &std::path::Path, request: &[u8], fds: &[RawFd]) -> HubReply {
        let conn = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(conn.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        send_message(conn.as_fd(), request, fds).unwrap();
        let (answer, _) = receive_message(conn.as_fd()).unwrap();
        serde_json::from_slice(&answer).unwrap()
    }

    /// A slot freed and taken again within one batch of events: the old pair's exit,
    /// handled after, leaves the new pair alone; the new pair's own exit removes it.
    #[test]
    fn an_old_pairs_exit_leaves_the_next_pair_in_its_slot_alone() {
        std::thread::spawn(|| {
            // Taps of the test's own, in a namespace of its own.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let (control, _) = nix::sys::socket::socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .unwrap();
            let mut hub = Hub::new(control).unwrap();
            let me = std::process::id() as i32;
            let start = start_time(me).unwrap();
            let taps = |name: &str| -> Vec<OwnedFd> {
                let opts = TapOptions { vnet_hdr: false };
                [format!("{name}c"), format!("{name}b")]
                    .iter()
                    .map(|n| Tap::create(n, opts).unwrap().into())
                    .collect()
            };
            let (mut buf, mut answer_buf) = (vec![0u8; 2048], vec![0u8; 2048]);
            hub.add("old".into(), me, start, None, taps("hgold"))
                .unwrap();
            assert!(hub.remove("old"));
            hub.add("new".into(), me, start, None, taps("hgnew"))
                .unwrap();
            let exit = |generation| Token {
                slot: 0,
                generation,
                role: ROLE_EXIT,
            };
            hub.forward(exit(0), &mut buf, &mut answer_buf);
            assert!(
                hub.by_id.contains_key("new"),
                "the old pair's exit removed the new one"
            );
            hub.forward(exit(1), &mut buf, &mut answer_buf);
            assert!(
                hub.by_id.is_empty(),
                "the new pair's exit did not remove it"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn tokens_round_trip() {
        let t = Token {
            slot: (1 << 30) - 1,
            generation: u32::MAX,
            role: ROLE_BUBBLE,
        };
        assert_eq!(Token::decode(t.encode()), t);
        assert_ne!(t.encode(), CONTROL);
    }

    /// Bad requests get an answer that says what is wrong, and the hub serves on; a hub
    /// that never got an endpoint exits after its linger all the same.
    #[test]
    fn bad_requests_are_answered_and_leave_the_hub_serving() {
        let dir = std::env::temp_dir().join(format!("hpk-hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.sock");
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&listener, Backlog::new(8).unwrap()).unwrap();
        let (exited, hub_exit) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = exited.send(serve(listener, Duration::ZERO, Duration::from_secs(2)));
        });

        let error = |reply: HubReply| match reply {
            HubReply::Error { message } => message,
            other => panic!("accepted: {other:?}"),
        };
        assert!(error(call(&path, b"{\"op\":\"fly\"}", &[])).contains("not a hub request"));
        assert!(error(call(&path, b"\xff\x00", &[])).contains("not a hub request"));
        let add = |pid: i32| {
            serde_json::to_vec(&HubRequest::Add {
                id: "c1".into(),
                pid,
                start: start_time(pid).unwrap_or(0),
                identity: None,
            })
            .unwrap()
        };
        let me = std::process::id() as i32;
        assert!(error(call(&path, &add(me), &[])).contains("needs two tap fds, got 0"));
        let (r, w) = nix::unistd::pipe().unwrap();
        let message = error(call(&path, &add(me), &[r.as_raw_fd(), w.as_raw_fd()]));
        assert!(message.contains("container-side fd"), "{message}");
        assert_eq!(
            call(&path, br#"{"op":"remove","id":"nobody"}"#, &[]),
            HubReply::Done
        );
        assert_eq!(
            call(&path, br#"{"op":"list"}"#, &[]),
            HubReply::Ids { ids: vec![] }
        );
        let exit = hub_exit.recv_timeout(Duration::from_secs(30));
        assert!(
            matches!(exit, Ok(Ok(()))),
            "a hub without endpoints stays: {exit:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
