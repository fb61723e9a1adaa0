//! Sliding replay window over 64-bit packet counters (RFC 6479): a ring of bitmap words, so
//! advancing the window clears whole words instead of shifting bits. Any counter within
//! `WINDOW` of the highest one accepted is accepted once; older ones are refused.
//!
//! `check` reads only; `accept` records a counter and runs only after the packet
//! authenticated, so a forged packet cannot move the window.

/// Counters below the highest accepted by this many or more are refused.
pub const WINDOW: u64 = 2048;
const WORD_BITS: u64 = 64;
/// One word more than the window, so the word being filled never overlaps the oldest
/// counters still inside the window.
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted, None before the first.
    top: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: None,
            bits: [0; WORDS],
        }
    }
}

fn slot(counter: u64) -> (usize, u64) {
    let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
    (word, 1u64 << (counter % WORD_BITS))
}

impl ReplayWindow {
    /// Whether `counter` would be accepted (new, and not too old).
    pub fn check(&self, counter: u64) -> bool {
        let Some(top) = self.top else { return true };
        if counter > top {
            return true;
        }
        if top - counter >= WINDOW {
            return false;
        }
        let (w, b) = slot(counter);
        self.bits[w] & b == 0
    }

    /// Records `counter`; false (and nothing changes) if it was not acceptable.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.top {
            Some(top) if counter <= top => {}
            Some(top) => {
                // Clear the words the window slides over (at most all of them).
                let old_word = top / WORD_BITS;
                let new_word = counter / WORD_BITS;
                let steps = (new_word - old_word).min(WORDS as u64);
                for i in 1..=steps {
                    let (w, _) = slot((old_word + i) * WORD_BITS);
                    self.bits[w] = 0;
                }
                self.top = Some(counter);
            }
            None => {
                self.bits = [0; WORDS];
                self.top = Some(counter);
            }
        }
        let (w, b) = slot(counter);
        self.bits[w] |= b;
        true
    }

    pub fn highest(&self) -> Option<u64> {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn accepts_each_counter_once_and_refuses_old_ones() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3), "late but inside the window");
        assert!(!w.accept(3));
        assert!(w.accept(5000));
        assert!(!w.check(5000 - WINDOW), "exactly WINDOW behind");
        assert!(w.check(5000 - WINDOW + 1));
        assert!(!w.accept(5));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }

    /// The window agrees with a model that remembers every counter: accepted iff never seen
    /// and within WINDOW of the highest accepted so far.
    fn model_check(ops: Vec<u64>) -> Result<(), TestCaseError> {
        let mut w = ReplayWindow::default();
        let mut seen = BTreeSet::new();
        let mut top: Option<u64> = None;
        for c in ops {
            let expect = !seen.contains(&c) && top.is_none_or(|t| c > t || t - c < WINDOW);
            prop_assert_eq!(w.accept(c), expect, "counter {}", c);
            if expect {
                seen.insert(c);
                top = Some(top.map_or(c, |t| t.max(c)));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_a_model_near_the_edge(
            base in any::<u64>(),
            offsets in proptest::collection::vec(0u64..6000, 1..300),
        ) {
            let base = base.min(u64::MAX - 6000);
            model_check(offsets.into_iter().map(|o| base + o).collect())?;
        }

        #[test]
        fn matches_a_model_for_reordered_streams(
            swaps in proptest::collection::vec((0usize..3000, 0usize..3000), 0..200),
            dups in proptest::collection::vec(0usize..3000, 0..100),
        ) {
            let mut ops: Vec<u64> = (0..3000).collect();
            for (a, b) in swaps {
                ops.swap(a, b);
            }
            for d in dups {
                ops.insert(d, d as u64);
            }
            model_check(ops)?;
        }
    }
}
