//! The core's timers: one binary heap of deadlines, so finding and running what is due costs
//! O(log n) per timer, not a scan of every session, connection and Child SA.
//!
//! Each [`Timer`] names one object and one kind of deadline; [`Core::deadline`] computes it from
//! the object's state when asked. Code that changes a deadline calls [`Core::arm`]; a heap entry
//! that turns out early (the deadline moved later) or stale (the object is gone) is skipped when
//! it comes up, and the timer is armed again for its real deadline. At most one live entry per
//! timer is kept (`armed` holds its time), so the heap stays the size of the objects plus the
//! entries that went stale.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;

/// How long a command may go unacknowledged before the driver gives up on it (workers apply
/// commands within microseconds; this only fires for a stuck or broken worker).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One deadline of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The session's own timer (liveness check, exchange timeout).
    Session(IkeSaId),
    /// A responder session still unauthenticated (RFC 7296 §2.6).
    HalfOpen(IkeSaId),
    /// The IKE SA's rekey or hard lifetime.
    IkeLife(IkeSaId),
    /// The Child SA's rekey or hard lifetime.
    ChildLife(ChildSaId),
    /// A connection's close: cookie wait, orphan grace (R-6.1-e, R-6.1-v).
    Conn(Conn),
    /// The old inbound SAs waiting for their grace period to end.
    Retiring,
    /// Deferred outbound switches of rekeys we answered.
    Switches,
    /// Originator endpoints to dial again.
    Dials,
    /// Acknowledgements awaited (their timeouts, oldest first).
    Acks,
}

/// Deadlines that are mostly set in time order (now + a constant), each for one key: a queue
/// with O(1) push and pop, and a map that makes cancelled or replaced entries stale.
#[derive(Debug)]
pub(super) struct DeadlineQueue<K> {
    queue: std::collections::VecDeque<(Instant, K)>,
    live: HashMap<K, Instant>,
}

impl<K> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            queue: std::collections::VecDeque::new(),
            live: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> DeadlineQueue<K> {
    /// `k` is due at `at` (replacing an earlier deadline of `k`).
    pub(super) fn push(&mut self, at: Instant, k: K) {
        self.live.insert(k, at);
        // Out of order only when a caller's clock went back: keep the queue sorted.
        let pos = self.queue.partition_point(|(t, _)| *t <= at);
        self.queue.insert(pos, (at, k));
    }

    /// Whether `k` waits.
    pub(super) fn contains(&self, k: K) -> bool {
        self.live.contains_key(&k)
    }

    /// `k` no longer waits. Cancelled entries at the front go at once, so
    /// [`front`](Self::front) is exact (those further back go when they reach it).
    pub(super) fn cancel(&mut self, k: K) {
        self.live.remove(&k);
        while let Some(&(at, k)) = self.queue.front() {
            if self.live.get(&k) == Some(&at) {
                break;
            }
            self.queue.pop_front();
        }
    }

    /// The earliest deadline (exact, but for cancelled entries behind the front).
    pub(super) fn front(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }

    /// Takes what is due at `now` (cancelled entries are dropped on the way).
    pub(super) fn pop_due(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(&(at, k)) = self.queue.front() {
            if at > now {
                break;
            }
            self.queue.pop_front();
            if self.live.get(&k) == Some(&at) {
                self.live.remove(&k);
                due.push(k);
            }
        }
        // Only cancelled entries left: forget them.
        if self.live.is_empty() {
            self.queue.clear();
        }
        due
    }

    /// The keys that wait.
    pub(super) fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.live.keys().copied()
    }

    /// Whether nothing waits.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Forgets everything.
    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.live.clear();
    }
}

/// The heap.
#[derive(Debug, Default)]
pub(super) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// The time of each timer's live entry.
    armed: HashMap<Timer, Instant>,
}

impl TimerHeap {
    /// Makes sure `t` comes up no later than `at`.
    fn schedule(&mut self, t: Timer, at: Instant) {
        if self.armed.get(&t).is_some_and(|a| *a <= at) {
            return;
        }
        self.armed.insert(t, at);
        self.heap.push(Reverse((at, t)));
    }

    /// The earliest live entry (stale entries on top are dropped on the way).
    fn peek_live(&mut self) -> Option<(Instant, Timer)> {
        while let Some(Reverse((at, t))) = self.heap.peek().copied() {
            if self.armed.get(&t) == Some(&at) {
                return Some((at, t));
            }
            self.heap.pop();
        }
        None
    }

    /// Forgets `t`'s entry (its object is gone or no longer waits).
    fn disarm(&mut self, t: Timer) {
        self.armed.remove(&t);
    }

    /// Takes the next live entry due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        while let Some(Reverse((at, t))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.armed.get(&t) == Some(&at) {
                self.armed.remove(&t);
                return Some(t);
            }
        }
        None
    }

    /// Entries in the heap (live and stale).
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

impl Core {
    /// When `t` is due, if it is.
    pub(super) fn deadline(&self, t: Timer) -> Option<Instant> {
        match t {
            Timer::Session(i) => self.sessions.get(i)?.session.poll_timeout(),
            Timer::HalfOpen(i) => self.half_open_due(self.sessions.get(i)?),
            Timer::IkeLife(i) => self.ike_life_due(i),
            Timer::ChildLife(c) => self.child_life_due(c),
            Timer::Conn(k) => self.close_due(k, self.conns.get(&k)?),
            Timer::Retiring => self.retiring.front(),
            Timer::Switches => self.switches.iter().map(|w| w.due).min(),
            Timer::Dials => self.dials.iter().map(|d| d.0).min(),
            Timer::Acks => self.ack_due.front(),
        }
    }

    /// (Re)arms `t` for its current deadline.
    pub(super) fn arm(&mut self, t: Timer) {
        if let Some(at) = self.deadline(t) {
            self.timers.schedule(t, at);
        }
    }

    /// Arms the timers of session `i` (after anything changed it).
    pub(super) fn arm_session(&mut self, i: IkeSaId) {
        self.arm(Timer::Session(i));
        self.arm(Timer::HalfOpen(i));
        self.arm(Timer::IkeLife(i));
        if let Some(conn) = self.sessions.get(i).and_then(|s| s.conn) {
            self.conn_changed(conn);
        }
    }

    /// Connection `k` may have gained or lost its IKE SA: when it lost it (or never had one)
    /// is stamped now, and its close timer follows (R-6.1-e, R-6.1-v).
    pub(super) fn conn_changed(&mut self, k: Conn) {
        let orphan = self.conns.get(&k).is_some_and(|c| self.orphan(k, c));
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&k) {
            c.orphan_since = match (orphan, c.orphan_since) {
                (false, _) => None,
                (true, Some(t)) => Some(t),
                // One that never carried an IKE SA has been an orphan since it came up.
                (true, None) if c.session.is_none() => Some(c.since),
                (true, None) => Some(now),
            };
        }
        self.arm(Timer::Conn(k));
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has something to do. Entries
    /// on top whose deadline moved later are moved to it first, so the time is exact.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        loop {
            let (at, t) = self.timers.peek_live()?;
            match self.deadline(t) {
                Some(d) if d == at => return Some(at),
                // Moved earlier without being armed: it goes in front.
                Some(d) if d < at => self.timers.schedule(t, d),
                d => {
                    self.timers.disarm(t);
                    if let Some(d) = d {
                        self.timers.schedule(t, d);
                    }
                }
            }
        }
    }

    /// Forgets the timeout of an acknowledged command.
    pub(super) fn acked(&mut self, ack: u64) {
        self.ack_due.cancel(ack);
    }

    /// Runs what is due at `now`: session timeouts, lifetimes, deletes of old inbound SAs after
    /// their grace period, deferred switches, dials, connection closes, ack timeouts.
    ///
    /// # Errors
    /// Local faults only.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DriverError> {
        self.now = now;
        // What one timer does can make another due at once (a dropped half-open session
        // orphans its connection): those run in the same call. A timer runs at most once per
        // call; one that is due again right after (no progress possible yet) waits for the next.
        // (A set that allocates only once something is due: thousands may be due at once.)
        let mut fired = std::collections::HashSet::new();
        let mut again = Vec::new();
        while let Some(t) = self.timers.pop_due(now) {
            if !fired.insert(t) {
                again.push(t);
                continue;
            }
            if self.deadline(t).is_some_and(|d| d <= now) {
                self.fire(t, now)?;
            }
            self.arm(t);
        }
        for t in again {
            self.arm(t);
        }
        self.maybe_reap();
        Ok(())
    }

    fn fire(&mut self, t: Timer, now: Instant) -> Result<(), DriverError> {
        match t {
            Timer::Session(i) => {
                let outputs = self.sessions[i].session.handle_timeout(now);
                self.finish(i, outputs, None, now)
            }
            Timer::HalfOpen(i) => {
                // Half-open responder sessions go (RFC 7296 §2.6), and so do their connections.
                let st = &mut self.sessions[i];
                st.dropped = true;
                let endpoint = st.endpoint;
                self.events.push_back(DriverEvent::Failed {
                    endpoint,
                    reason: Failure::HalfOpenTimeout,
                });
                self.session_changed(i);
                Ok(())
            }
            Timer::IkeLife(i) => self.ike_life(i, now),
            Timer::ChildLife(c) => self.child_life(c, now),
            Timer::Conn(k) => self.conn_timer(k, now),
            Timer::Retiring => {
                for child in self.retiring.pop_due(now) {
                    self.delete_inbound(child)?;
                }
                Ok(())
            }
            Timer::Switches => {
                while let Some(k) = self.switches.iter().position(|w| w.due <= now) {
                    let w = self.switches.remove(k);
                    // An unresolved collision: the first new SA wins here; the other stays
                    // inbound until the peer deletes it.
                    self.switches.retain(|x| x.old != w.old);
                    self.switch(w, now)?;
                }
                Ok(())
            }
            Timer::Dials => self.dial_timers(now),
            Timer::Acks => {
                for a in self.ack_due.pop_due(now) {
                    if let Some(p) = self.pending.remove(&a) {
                        self.ack_timed_out(a, p);
                    }
                }
                Ok(())
            }
        }
    }

    /// A connection's timer: a cookie reply that no repeated request followed (RFC 9329
    /// §6.3.1, R-6.3-b) closes it; so does the end of its orphan grace period (R-6.1-e,
    /// R-6.1-v; see [`conn_changed`](Self::conn_changed)).
    fn conn_timer(&mut self, k: Conn, now: Instant) -> Result<(), DriverError> {
        match self.conns.get(&k) {
            Some(c) if self.close_due(k, c).is_some_and(|t| t <= now) => self.close(k, false),
            _ => Ok(()),
        }
    }

    /// Records that command `ack` (to `worker`) is awaited as `p`, with a timeout.
    pub(super) fn expect_ack(&mut self, ack: u64, p: Pending) {
        self.pending.insert(ack, p);
        self.ack_due.push(self.now + ACK_TIMEOUT, ack);
        self.arm(Timer::Acks);
    }

    /// A worker never acknowledged `ack`: what waited for it is given up, with an event.
    fn ack_timed_out(&mut self, ack: u64, p: Pending) {
        let endpoint = match &p {
            Pending::Listen { endpoint } => Some(*endpoint),
            Pending::Inbound { child, .. }
            | Pending::Outbound { child }
            | Pending::Moved { child, .. } => self.children.get(*child).map(|c| c.endpoint),
            Pending::Verify { conn, .. } => self.conns.get(conn).map(|c| c.endpoint),
            Pending::Delete | Pending::Counters => None,
        };
        self.events
            .push_back(DriverEvent::AckTimedOut { ack, endpoint });
    }

    /// Heap entries (for the bench and tests).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}
