//! Signals as file descriptor events: the termination signals and SIGCHLD are blocked
//! and read from a signalfd, so waiting on children, pipes and signals is one `poll`.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals that end a bubble.
pub const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the stop signals and SIGCHLD for this process and reads them from a
    /// signalfd. Children get an empty mask back (see [`crate::child::die_with_parent`]).
    pub fn block() -> Result<Signals> {
        let mut set = SigSet::empty();
        for s in STOP {
            set.add(s);
        }
        set.add(Signal::SIGCHLD);
        set.thread_block().context("cannot block signals")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("cannot create a signalfd")?;
        Ok(Signals { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Waits up to `timeout` for a signal; returns every pending one.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Signal>> {
        hpk_netd::sys::poll::readable(&[self.raw_fd()], timeout.as_millis() as i32)
            .context("poll")?;
        self.pending()
    }

    /// The signals delivered so far, without waiting.
    pub fn pending(&mut self) -> Result<Vec<Signal>> {
        let mut got = Vec::new();
        while let Some(info) = self.fd.read_signal().context("reading the signalfd")? {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                got.push(sig);
            }
        }
        Ok(got)
    }
}

/// Whether `signals` holds one that asks us to stop.
pub fn wants_stop(signals: &[Signal]) -> Option<Signal> {
    signals.iter().copied().find(|s| STOP.contains(s))
}
