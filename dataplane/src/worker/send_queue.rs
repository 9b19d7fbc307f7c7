//! The frames of one connection waiting for TCP send space, bounded by count and by bytes: a
//! peer that stops reading (zero window) holds at most this much of the worker's memory, and the
//! outer TCP's queue stays short (RFC 9329 §9: a long queue under inner TCP only adds delay).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::port::{Packet, PacketPool};

/// Frames in order; `sent` bytes of the front one are already with TCP.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    frames: VecDeque<Packet>,
    /// Bytes not yet handed to TCP (all frames, less `sent`).
    bytes: usize,
    sent: usize,
    /// Since when tries to add to the full queue find TCP taking nothing.
    blocked_since: Option<Instant>,
}

/// What [`SendQueue::note_blocked`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// The first try since TCP last took bytes.
    pub first: bool,
    /// How long tries have found it so.
    pub for_: Duration,
}

impl SendQueue {
    pub(crate) fn push(&mut self, p: Packet) {
        self.bytes += p.len();
        self.frames.push_back(p);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True when either bound is reached: no more frames may join.
    pub(crate) fn reached(&self, frames: usize, bytes: usize) -> bool {
        self.frames.len() >= frames || self.bytes >= bytes
    }

    /// The unsent bytes of the first `max` frames, in order, for one vectored send.
    pub(crate) fn slices(&self, max: usize) -> Vec<IoSlice<'_>> {
        self.frames
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, p)| {
                let d = if i == 0 {
                    p.data().get(self.sent..).unwrap_or(&[])
                } else {
                    p.data()
                };
                IoSlice::new(d)
            })
            .collect()
    }

    /// A packet found the queue full even after a write, at `now`: whether it is the first
    /// since TCP last took bytes, and for how long tries have found it so.
    pub(crate) fn note_blocked(&mut self, now: Instant) -> Blocked {
        match self.blocked_since {
            Some(since) => Blocked {
                first: false,
                for_: now.saturating_duration_since(since),
            },
            None => {
                self.blocked_since = Some(now);
                Blocked {
                    first: true,
                    for_: Duration::ZERO,
                }
            }
        }
    }

    /// TCP took `n` bytes: whole frames go back to the pool.
    pub(crate) fn consume(&mut self, mut n: usize, pool: &mut PacketPool) {
        if n > 0 {
            self.blocked_since = None;
        }
        self.bytes = self.bytes.saturating_sub(n);
        while let Some(front) = self.frames.front() {
            let rest = front.len().saturating_sub(self.sent);
            if n < rest {
                self.sent += n;
                return;
            }
            n -= rest;
            self.sent = 0;
            if let Some(p) = self.frames.pop_front() {
                pool.put(p);
            }
        }
    }

    /// The connection is gone: every buffer back to the pool.
    pub(crate) fn clear(&mut self, pool: &mut PacketPool) {
        for p in self.frames.drain(..) {
            pool.put(p);
        }
        self.bytes = 0;
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pool: &mut PacketPool, n: usize) -> Packet {
        let mut p = pool.get();
        assert!(p.fill_from(&vec![7u8; n]));
        p
    }

    #[test]
    fn bytes_follow_pushes_and_partial_sends() {
        let mut pool = PacketPool::new(2048, 8);
        let mut q = SendQueue::default();
        q.push(frame(&mut pool, 1000));
        q.push(frame(&mut pool, 500));
        assert_eq!(q.bytes, 1500);
        assert!(q.reached(2, usize::MAX));
        assert!(q.reached(8, 1500));
        assert!(!q.reached(8, 1501));
        q.consume(300, &mut pool);
        assert_eq!(q.bytes, 1200);
        assert_eq!(q.slices(8)[0].len(), 700, "the front frame's unsent part");
        q.consume(700, &mut pool);
        assert_eq!(q.frames.len(), 1);
        assert_eq!(q.slices(8)[0].len(), 500);
        q.consume(500, &mut pool);
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn blocked_time_runs_until_tcp_takes_bytes() {
        let mut pool = PacketPool::new(2048, 8);
        let mut q = SendQueue::default();
        q.push(frame(&mut pool, 100));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let b = |first, for_| Blocked { first, for_ };
        assert_eq!(q.note_blocked(t0), b(true, ms(0)));
        q.consume(0, &mut pool);
        assert_eq!(
            q.note_blocked(t0 + ms(30)),
            b(false, ms(30)),
            "nothing taken: still blocked"
        );
        q.consume(1, &mut pool);
        assert_eq!(q.note_blocked(t0 + ms(40)), b(true, ms(0)));
        assert_eq!(q.note_blocked(t0 + ms(45)), b(false, ms(5)));
    }

    #[test]
    fn clear_returns_everything() {
        let mut pool = PacketPool::new(2048, 8);
        let mut q = SendQueue::default();
        q.push(frame(&mut pool, 100));
        q.consume(10, &mut pool);
        q.clear(&mut pool);
        assert!(q.is_empty() && q.bytes == 0 && q.sent == 0);
        assert!(!q.reached(1, 1));
    }
}
