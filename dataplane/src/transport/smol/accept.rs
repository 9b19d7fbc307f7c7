//! Admission of accepted connections: the SYN cache that stands in for a socket until the
//! handshake completes, and the per-listener / per-source tallies behind the caps.
//!
//! Why a SYN cache (RFC 4987 §3.3) and not small sockets that grow: the window scale is sent
//! once, in the SYN-ACK, and holds for the connection's life (RFC 7323 §2.2). smoltcp 0.14
//! derives it from the receive buffer's capacity (`Socket::new`/`reset`), has no way to set it
//! separately, and cannot swap a socket's buffers; so a socket that starts small keeps a small
//! window forever. And a 1 MiB `vec![0; n]` is not free either: calloc hands out lazily mapped
//! zero pages only while glibc still serves that size with mmap; once connections have been
//! freed its dynamic mmap threshold rises, the buffers come from the heap and are memset. So a
//! SYN gets an entry here (a few hundred bytes, no socket, no buffers) and a SYN-ACK produced by
//! a real smoltcp socket (see `SmolTransport::answer_syn`); the full-size socket is built only
//! when the peer's ACK proves its address (RFC 9329 §6.3: by then "the Initiator's IP address has
//! been verified"), by replaying the SYN into a socket whose interface has the same random seed,
//! so it picks the same initial sequence number.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;

use super::demux::{Key, SynInfo};
use crate::transport::source_group;

/// Longest SYN-ACK we store: IPv6 header plus the largest TCP header.
pub(super) const SYNACK_MAX: usize = 40 + 60;

/// Counts per listener and per source group, entries dropped at zero (so the maps never hold
/// more keys than there are counted connections).
#[derive(Debug, Default)]
pub(super) struct Tally {
    listeners: HashMap<(IpAddr, u16), usize>,
    sources: HashMap<IpAddr, usize>,
    total: usize,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn listener(&self, l: (IpAddr, u16)) -> usize {
        self.listeners.get(&l).copied().unwrap_or(0)
    }

    pub fn source(&self, group: IpAddr) -> usize {
        self.sources.get(&group).copied().unwrap_or(0)
    }

    pub fn add(&mut self, l: (IpAddr, u16), group: IpAddr) {
        *self.listeners.entry(l).or_insert(0) += 1;
        *self.sources.entry(group).or_insert(0) += 1;
        self.total += 1;
    }

    pub fn remove(&mut self, l: (IpAddr, u16), group: IpAddr) {
        fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
            if let Some(n) = m.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
        dec(&mut self.listeners, l);
        dec(&mut self.sources, group);
        self.total = self.total.saturating_sub(1);
    }
}

/// A SYN we answered and whose ACK has not come yet.
#[derive(Debug)]
pub(super) struct HalfOpen {
    /// The listener it came to and its source group (for the tallies).
    pub listener: (IpAddr, u16),
    pub group: IpAddr,
    /// The peer's SYN, to replay into the real socket.
    pub syn: SynInfo,
    /// Random seed of the interface that made the SYN-ACK (the real one gets the same).
    pub seed: u64,
    /// Our initial sequence number, from that SYN-ACK.
    pub isn: u32,
    synack: [u8; SYNACK_MAX],
    synack_len: usize,
    /// Give up at this time (µs); retransmit the SYN-ACK at `due`, then wait `rto` longer.
    expires: i64,
    due: i64,
    rto: i64,
    serial: u64,
}

impl HalfOpen {
    /// The SYN-ACK as sent (IP packet).
    pub fn synack(&self) -> &[u8] {
        &self.synack[..self.synack_len]
    }
}

/// What a due timer asks for.
pub(super) enum Due {
    /// Send the SYN-ACK again.
    Retransmit(Key),
    /// The entry timed out and is gone.
    Expired,
}

/// Half-open accepts by 4-tuple, with their tallies and SYN-ACK timers.
#[derive(Debug, Default)]
pub(super) struct SynCache {
    entries: HashMap<Key, HalfOpen>,
    tally: Tally,
    /// (due µs, key, serial); entries whose serial or due moved are stale and skipped.
    timers: BinaryHeap<Reverse<(i64, Key, u64)>>,
    serial: u64,
}

/// The first SYN-ACK retransmission waits 1 s (RFC 6298 §2.1 initial RTO), then doubles.
const FIRST_RTO_US: i64 = 1_000_000;

impl SynCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    pub fn get(&self, key: &Key) -> Option<&HalfOpen> {
        self.entries.get(key)
    }

    /// Bytes this cache holds: entries, their keys and the timer heap (hash map overhead aside).
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * (size_of::<Key>() + size_of::<HalfOpen>())
            + self.timers.capacity() * size_of::<Reverse<(i64, Key, u64)>>()
    }

    /// Adds (or replaces) the entry for `key`. `synack` longer than [`SYNACK_MAX`] is refused.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    pub fn insert(
        &mut self,
        key: Key,
        listener: (IpAddr, u16),
        syn: SynInfo,
        seed: u64,
        isn: u32,
        synack: &[u8],
        now: i64,
        lifetime: i64,
    ) -> bool {
        if synack.len() > SYNACK_MAX {
            return false;
        }
        self.remove(&key);
        let mut buf = [0u8; SYNACK_MAX];
        buf[..synack.len()].copy_from_slice(synack);
        self.serial += 1;
        let group = source_group(key.remote);
        let expires = now.saturating_add(lifetime);
        let due = now.saturating_add(FIRST_RTO_US).min(expires);
        self.entries.insert(
            key,
            HalfOpen {
                listener,
                group,
                syn,
                seed,
                isn,
                synack: buf,
                synack_len: synack.len(),
                expires,
                due,
                rto: FIRST_RTO_US,
                serial: self.serial,
            },
        );
        self.tally.add(listener, group);
        self.timers.push(Reverse((due, key, self.serial)));
        true
    }

    pub fn remove(&mut self, key: &Key) -> Option<HalfOpen> {
        let e = self.entries.remove(key)?;
        self.tally.remove(e.listener, e.group);
        Some(e)
    }

    /// The next entry whose timer is due at `now`, if any. A `Retransmit` must be followed by
    /// [`rearm`](Self::rearm) once the SYN-ACK is queued.
    pub fn next_due(&mut self, now: i64) -> Option<Due> {
        while let Some(&Reverse((t, key, serial))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let live = self
                .entries
                .get(&key)
                .is_some_and(|e| e.serial == serial && e.due == t);
            if !live {
                continue;
            }
            let expired = self.entries.get(&key).is_some_and(|e| e.expires <= now);
            if expired {
                self.remove(&key);
                return Some(Due::Expired);
            }
            return Some(Due::Retransmit(key));
        }
        // A flood's entries are gone: give their memory back (amortised O(1), like the timers).
        if self.entries.capacity() > 4 * self.entries.len() + 1024 {
            self.entries.shrink_to(2 * self.entries.len());
        }
        // Stale entries (replaced or removed ones) are dropped in bulk; amortised O(1).
        if self.timers.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.timers.retain(|&Reverse((t, key, serial))| {
                entries
                    .get(&key)
                    .is_some_and(|e| e.serial == serial && e.due == t)
            });
            self.timers.shrink_to(2 * self.timers.len());
        }
        None
    }

    /// Schedules the next retransmission of `key` (the RTO doubles), or its expiry.
    pub fn rearm(&mut self, key: &Key, now: i64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.rto = e.rto.saturating_mul(2);
            e.due = now.saturating_add(e.rto).min(e.expires);
            self.timers.push(Reverse((e.due, *key, e.serial)));
        }
    }
}
