//! Ctrl-C and SIGTERM reach the container: hpktainer blocks them in every thread and one
//! thread waits for them and passes each on to the runtime it runs in the foreground
//! (see [`crate::commands::run_in_foreground`]), which passes it on to the container.
//! Children start with an empty signal mask (std's Command resets it).

use std::thread;

use nix::sys::signal::{SigSet, Signal};

/// The signals passed on to the container.
pub const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(sig);
    }
    s
}

/// Blocks the forwarded signals in this thread (and every thread started after).
pub fn block() {
    let _ = set().thread_block();
}

/// Starts the thread that calls `on_signal` for each forwarded signal.
pub fn forward(on_signal: impl Fn(Signal) + Send + 'static) {
    thread::spawn(move || loop {
        if let Ok(sig) = set().wait() {
            on_signal(sig);
        }
    });
}
