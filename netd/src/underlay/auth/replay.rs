//! The receive window against replayed datagrams (RFC 6479's idea, as WireGuard keeps it):
//! the highest counter seen and a bitmap of the [`WINDOW`] counters below it. A counter
//! is accepted once; anything older than the window is refused, so a datagram captured
//! and sent again later never passes twice.

/// Counters remembered below the highest; reordering deeper than this is dropped.
pub const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest counter accepted, and whether any was.
    top: Option<u64>,
    bits: Box<[u64; WORDS]>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: None,
            bits: Box::new([0; WORDS]),
        }
    }
}

impl ReplayWindow {
    /// Whether `n` may still be accepted (call before the costly authentication).
    pub fn fresh(&self, n: u64) -> bool {
        match self.top {
            None => true,
            Some(top) if n > top => true,
            Some(top) if top - n >= WINDOW => false,
            Some(_) => !self.bit(n),
        }
    }

    /// Marks `n` as seen (call once it is authenticated); false if it was already.
    pub fn accept(&mut self, n: u64) -> bool {
        if !self.fresh(n) {
            return false;
        }
        match self.top {
            Some(top) if n <= top => {}
            Some(top) if n - top < WINDOW => {
                for c in top + 1..n {
                    self.clear(c);
                }
                self.top = Some(n);
            }
            _ => {
                self.bits.fill(0);
                self.top = Some(n);
            }
        }
        self.set(n);
        true
    }

    fn slot(n: u64) -> (usize, u64) {
        (((n / 64) as usize) % WORDS, 1 << (n % 64))
    }

    fn bit(&self, n: u64) -> bool {
        let (w, m) = Self::slot(n);
        self.bits[w] & m != 0
    }

    fn set(&mut self, n: u64) {
        let (w, m) = Self::slot(n);
        self.bits[w] |= m;
    }

    fn clear(&mut self, n: u64) {
        let (w, m) = Self::slot(n);
        self.bits[w] &= !m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::default();
        for n in [5, 3, 4, 9, 6, 0, 1, 2, 8, 7] {
            assert!(w.accept(n), "{n}");
        }
        for n in 0..10 {
            assert!(!w.fresh(n) && !w.accept(n), "{n} twice");
        }
        assert!(w.accept(10));
    }

    #[test]
    fn old_counters_are_refused_and_jumps_forget_the_past() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(100));
        assert!(w.accept(100 + WINDOW - 1));
        assert!(!w.accept(100), "seen");
        assert!(w.accept(101), "still inside the window");
        assert!(w.accept(100 + WINDOW));
        assert!(!w.accept(100), "now below the window");
        // A jump past the whole window: the slots of old counters are clear again but
        // those counters are below the window, so they stay refused.
        let far = 100 + 10 * WINDOW;
        assert!(w.accept(far));
        assert!(!w.accept(far - WINDOW));
        assert!(w.accept(far - 1));
        assert!(!w.accept(far - 1));
    }

    #[test]
    fn slots_reused_after_a_step_are_cleared() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        // `WINDOW` shares slot 0 with counter 0: moving there must clear it, not see a replay.
        assert!(w.accept(WINDOW));
        assert!(w.accept(WINDOW + 64));
        assert!(w.accept(WINDOW + 1), "its slot was cleared by the step");
    }
}
