//! The ESP anti-replay window (RFC 4303 §3.4.3) as a ring of 64-bit words (RFC 6479): O(1) per
//! packet whatever the window size, because advancing the window clears whole words.

use core::fmt;

/// Smallest window accepted (RFC 4303 §3.4.3: a minimum of 32, 64 recommended).
pub const MIN_WINDOW: u32 = 64;
/// Largest window accepted.
pub const MAX_WINDOW: u32 = 4096;
/// Default window: wide enough for a burst of reordering at 10 Gbit/s.
pub const DEFAULT_WINDOW: u32 = 1024;

/// Why a sequence number is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Left of the window.
    TooOld,
    /// Already received inside the window.
    Duplicate,
    /// Sequence number 0 is never sent (RFC 4303 §3.3.3: the first packet carries 1).
    Zero,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayError::TooOld => "sequence number left of the replay window",
            ReplayError::Duplicate => "duplicate sequence number",
            ReplayError::Zero => "sequence number 0",
        })
    }
}

/// A window size outside [`MIN_WINDOW`]..=[`MAX_WINDOW`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadWindowSize(pub u32);

impl fmt::Display for BadWindowSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay window {} outside {MIN_WINDOW}..={MAX_WINDOW}",
            self.0
        )
    }
}

impl std::error::Error for BadWindowSize {}

/// Anti-replay state of one inbound SA. Works on full 64-bit sequence numbers (ESN or not).
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest authenticated sequence number; 0 before the first packet.
    top: u64,
    size: u64,
    /// Ring of words; the word for `seq` is `(seq / 64) & mask`. One word more than the window
    /// needs, so the word being cleared on advance is never one still inside the window.
    bits: Box<[u64]>,
    mask: u64,
}

impl ReplayWindow {
    /// A window accepting the `size` highest sequence numbers seen.
    pub fn new(size: u32) -> Result<Self, BadWindowSize> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&size) {
            return Err(BadWindowSize(size));
        }
        let words = (size as usize)
            .div_ceil(64)
            .saturating_add(1)
            .next_power_of_two();
        Ok(ReplayWindow {
            top: 0,
            size: u64::from(size),
            bits: vec![0u64; words].into_boxed_slice(),
            mask: words as u64 - 1,
        })
    }

    /// Window size in packets.
    pub fn size(&self) -> u32 {
        // size came from a u32.
        self.size as u32
    }

    /// Highest sequence number accepted so far (0 if none).
    pub fn top(&self) -> u64 {
        self.top
    }

    #[inline]
    fn slot(&self, seq: u64) -> (usize, u64) {
        // mask < bits.len() ≤ usize::MAX, so the cast is lossless.
        (((seq >> 6) & self.mask) as usize, 1u64 << (seq & 63))
    }

    /// Would `seq` be accepted? Called before the ICV check to drop replays cheaply; the window
    /// itself changes only in [`update`](Self::update), after the ICV verified (RFC 4303 §3.4.3).
    #[inline]
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        let (w, b) = self.slot(seq);
        match self.bits.get(w) {
            Some(word) if word & b == 0 => Ok(()),
            _ => Err(ReplayError::Duplicate),
        }
    }

    /// Checks `seq` again and records it. Call only for packets whose ICV verified.
    #[inline]
    pub fn update(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            let old_word = self.top >> 6;
            let new_word = seq >> 6;
            // Clear the words the window slides over; never more than the whole ring.
            let clear = (new_word - old_word).min(self.mask + 1);
            for i in 1..=clear {
                let w = ((old_word + i) & self.mask) as usize;
                if let Some(word) = self.bits.get_mut(w) {
                    *word = 0;
                }
            }
            self.top = seq;
        }
        let (w, b) = self.slot(seq);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(ReplayWindow::new(63).err(), Some(BadWindowSize(63)));
        assert_eq!(ReplayWindow::new(4097).err(), Some(BadWindowSize(4097)));
        assert!(ReplayWindow::new(64).is_ok());
        assert!(ReplayWindow::new(4096).is_ok());
        assert!(ReplayWindow::new(100).is_ok());
    }

    #[test]
    fn basic_sequence() {
        let mut w = ReplayWindow::new(64).expect("window");
        assert_eq!(w.check(0), Err(ReplayError::Zero));
        for s in 1..=200 {
            w.update(s).expect("fresh");
            assert_eq!(w.check(s), Err(ReplayError::Duplicate));
        }
        assert_eq!(w.check(200 - 63), Err(ReplayError::Duplicate));
        assert_eq!(w.check(200 - 64), Err(ReplayError::TooOld));
        // A jump far ahead clears everything in between.
        w.update(1_000_000).expect("jump");
        assert_eq!(w.check(999_999), Ok(()));
        assert_eq!(w.check(1_000_000 - 64), Err(ReplayError::TooOld));
    }

    #[test]
    fn works_near_u64_max() {
        let mut w = ReplayWindow::new(128).expect("window");
        w.update(u64::MAX - 5).expect("a");
        w.update(u64::MAX).expect("b");
        assert_eq!(w.check(u64::MAX - 5), Err(ReplayError::Duplicate));
        assert_eq!(w.check(u64::MAX - 4), Ok(()));
    }

    proptest! {
        /// Matches a naive model: accept iff not seen and within `size` of the highest seen.
        #[test]
        fn matches_model(size in prop::sample::select(vec![64u32, 100, 128, 1024, 4096]),
                         seqs in prop::collection::vec(1u64..6000, 1..400)) {
            let mut w = ReplayWindow::new(size).expect("window");
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for s in seqs {
                let model_ok = !seen.contains(&s) && (s > top || top - s < u64::from(size));
                prop_assert_eq!(w.check(s).is_ok(), model_ok, "seq {} top {}", s, top);
                if model_ok {
                    w.update(s).expect("accepted");
                    seen.insert(s);
                    top = top.max(s);
                }
            }
        }
    }
}
