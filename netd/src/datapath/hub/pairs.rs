//! The endpoints the hub serves: each a pair of taps and its container's pidfd, in a
//! slot; added and removed.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tracing::{debug, warn};

use super::token::{Token, CONTROL, ROLE_BUBBLE, ROLE_CONTAINER, ROLE_EXIT};
use crate::datapath::shortcut::{Identity, ShortcutCounters};
use crate::sys::pidwatch::PidWatch;
use crate::sys::process::ProcId;
use crate::sys::tap::Tap;

/// One endpoint the hub serves.
pub(super) struct Pair {
    pub(super) id: String,
    pub(super) container: Tap,
    pub(super) bubble: Tap,
    pub(super) watch: PidWatch,
    pub(super) identity: Option<Identity>,
    pub(super) shortcut: Cell<ShortcutCounters>,
    /// Which of the pairs that held this slot it is (see [`Token`]).
    pub(super) generation: u32,
}

pub(super) struct Hub {
    pub(super) epoll: Epoll,
    pub(super) control: OwnedFd,
    pub(super) slots: Vec<Option<Pair>>,
    pub(super) by_id: HashMap<String, usize>,
    /// Slots of the endpoints with an identity, by their container's MAC.
    pub(super) by_mac: HashMap<[u8; 6], usize>,
    /// Pairs added so far: the next one's generation.
    pub(super) added: u32,
}

impl Hub {
    /// A hub with no endpoint yet, answering requests on `control`.
    pub(super) fn new(control: OwnedFd) -> Result<Hub> {
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

    pub(super) fn add(
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
    pub(super) fn remove(&mut self, id: &str) -> bool {
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
}
