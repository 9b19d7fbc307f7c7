//! Plaintext packets for another worker's SAs.
//!
//! An SA lives on the worker that owns its TCP connection, but a multi-queue TUN hands each
//! inner packet to a worker by its own flow hash. So every worker also keeps the policies of the
//! other workers' outbound SAs in its SPD, as "forward to worker j" entries, and passes a packet
//! that matches one into worker j's inbox; j encapsulates it like its own plaintext.
//!
//! The owning worker tells the others itself, when it installs or deletes an outbound SA
//! ([`PolicyUpdate`] on each worker's update channel): control stays unchanged, every change
//! of a worker's outbound table reaches the others in the order it happened, and the SPD on the
//! packet path stays each worker's own (no lock, no shared line). A worker drains its updates
//! with its commands, once per loop.
//!
//! Forwarding stays within a gateway: the workers serving one plaintext side (the queues of one
//! multi-queue TUN). One data plane may host several gateways (two ends of a tunnel in a test
//! or the demo), whose policies overlap without meaning the same traffic, so the workers are
//! grouped at creation ([`gateway_channels`](super::handle::gateway_channels)); plain
//! [`channels`](super::handle::channels) makes every worker a gateway of its own, as before.
//!
//! Each inbox is a bounded lock-free ring; a full ring drops (`fwd_dropped`), never blocks. A
//! flow hashes to one TUN queue and the ring is FIFO, so one flow's packets stay in order. Empty
//! buffers travel back on a small second ring, so a steady stream from worker k to worker j
//! does not allocate on k and free on j for every packet.

use std::ops::Range;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use crossbeam_channel::{Receiver, Sender};

use super::spd::Selectors;
use crate::port::Packet;

/// Packets each worker's inbox holds (at most this many buffers of the pool's size wait there).
pub const INBOX_SLOTS: usize = 4096;
/// Empty buffers waiting to go back to the workers that forward to this one.
const SPARE_SLOTS: usize = 256;

/// A change of one worker's outbound SAs, for the other workers' SPDs.
#[derive(Debug)]
pub(crate) enum PolicyUpdate {
    /// `owner` installed outbound SA `spi` with these selectors (in front: the newest wins).
    Install {
        owner: u16,
        spi: u32,
        selectors: Selectors,
    },
    /// `owner` deleted outbound SA `spi`.
    Remove { owner: u16, spi: u32 },
}

#[derive(Debug)]
struct Inbox {
    packets: ArrayQueue<Packet>,
    spare: ArrayQueue<Packet>,
}

/// One worker's links to the other workers of a data plane: their inboxes and update channels,
/// and its own. Made by [`channels`](super::handle::channels) with the rest of a worker's side.
#[derive(Debug)]
pub struct Mesh {
    index: u16,
    /// The other workers of this worker's gateway: the only ones it tells or forwards to.
    peers: Vec<u16>,
    inboxes: Arc<[Inbox]>,
    /// Update channel of each worker, by index (this worker's own is never used to send).
    updates: Arc<[Sender<PolicyUpdate>]>,
    received: Receiver<PolicyUpdate>,
}

impl Mesh {
    /// The meshes of the workers of `gateways` (how many consecutive workers each has), by
    /// worker index; at most `u16::MAX` workers in all.
    pub(crate) fn create(gateways: &[u16]) -> Vec<Mesh> {
        // Each worker's gateway, as the range of its workers' indices.
        let mut gateway_of: Vec<Range<u16>> = Vec::new();
        let mut start = 0u16;
        for &n in gateways {
            let end = start.saturating_add(n);
            gateway_of.extend((start..end).map(|_| start..end));
            start = end;
        }
        let workers = start;
        // A worker alone in its gateway is never forwarded to: no slots to reserve.
        let inboxes: Arc<[Inbox]> = gateway_of
            .iter()
            .map(|g| {
                let slots = |full| if g.len() > 1 { full } else { 1 };
                Inbox {
                    packets: ArrayQueue::new(slots(INBOX_SLOTS)),
                    spare: ArrayQueue::new(slots(SPARE_SLOTS)),
                }
            })
            .collect();
        // Unbounded, yet bounded by what caused them: one update per other worker for each
        // outbound install or delete the owner applied, and each worker drains all of its
        // updates every loop. A full bounded channel would have to drop a policy change.
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
        let updates: Arc<[Sender<PolicyUpdate>]> = txs.into();
        rxs.into_iter()
            .zip(0..workers)
            .zip(gateway_of)
            .map(|((received, index), gateway)| {
                let peers = gateway.filter(|&w| w != index).collect();
                Mesh {
                    index,
                    peers,
                    inboxes: inboxes.clone(),
                    updates: updates.clone(),
                    received,
                }
            })
            .collect()
    }

    /// Sends `make()` to the other workers of this worker's gateway.
    pub(crate) fn announce(&self, make: impl Fn() -> PolicyUpdate) {
        for &w in &self.peers {
            if let Some(tx) = self.updates.get(usize::from(w)) {
                // A worker that has stopped needs no policies.
                let _ = tx.send(make());
            }
        }
    }

    /// The next policy change another worker announced.
    pub(crate) fn next_update(&self) -> Option<PolicyUpdate> {
        self.received.try_recv().ok()
    }

    /// Puts `p` into worker `to`'s inbox. Gives back an empty buffer from there if one waits
    /// (`Ok`), or `p` itself if the inbox is full or `to` is not of this gateway (`Err`).
    pub(crate) fn forward(&self, to: u16, p: Packet) -> Result<Option<Packet>, Packet> {
        let Some(inbox) = self
            .peers
            .contains(&to)
            .then(|| self.inboxes.get(usize::from(to)))
            .flatten()
        else {
            return Err(p);
        };
        inbox.packets.push(p)?;
        Ok(inbox.spare.pop())
    }

    /// The oldest packet another worker forwarded here.
    pub(crate) fn take_forwarded(&self) -> Option<Packet> {
        self.inboxes.get(usize::from(self.index))?.packets.pop()
    }

    /// Offers an empty buffer back to the workers that forward here; `Err` gives it back when
    /// enough wait already.
    pub(crate) fn give_spare(&self, p: Packet) -> Result<(), Packet> {
        match self.inboxes.get(usize::from(self.index)) {
            Some(inbox) => inbox.spare.push(p),
            None => Err(p),
        }
    }

    /// Packets waiting in this worker's inbox.
    pub fn inbox_len(&self) -> usize {
        self.inboxes
            .get(usize::from(self.index))
            .map_or(0, |i| i.packets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inboxes_are_bounded_fifo_and_updates_skip_the_sender() {
        let m = Mesh::create(&[3]);
        let pkt = |n: u8| {
            let mut p = Packet::with_size(256);
            assert!(p.fill_from(&[n]));
            p
        };
        for n in 0..INBOX_SLOTS {
            assert!(m[0].forward(1, pkt(n as u8)).is_ok());
        }
        let back = m[0].forward(1, pkt(9)).expect_err("full");
        assert_eq!(back.data(), &[9]);
        assert!(m[0].forward(7, pkt(1)).is_err(), "no such worker");
        assert_eq!(m[1].inbox_len(), INBOX_SLOTS);
        assert_eq!(m[1].take_forwarded().map(|p| p.data()[0]), Some(0));
        assert_eq!(m[1].take_forwarded().map(|p| p.data()[0]), Some(1));
        // A spare buffer given by 1 goes back to whoever forwards to 1 next.
        assert!(m[1].give_spare(pkt(42)).is_ok());
        assert_eq!(
            m[2].forward(1, pkt(3)).expect("room").map(|p| p.data()[0]),
            Some(42)
        );
        m[1].announce(|| PolicyUpdate::Remove { owner: 1, spi: 5 });
        assert!(matches!(
            m[0].next_update(),
            Some(PolicyUpdate::Remove { owner: 1, spi: 5 })
        ));
        assert!(m[2].next_update().is_some());
        assert!(m[1].next_update().is_none(), "not to itself");
    }

    #[test]
    fn gateways_keep_to_themselves() {
        let m = Mesh::create(&[2, 1, 2]);
        assert_eq!(m.len(), 5);
        let peers: Vec<Vec<u16>> = m.iter().map(|m| m.peers.clone()).collect();
        assert_eq!(peers, vec![vec![1], vec![0], vec![], vec![4], vec![3]]);
        m[3].announce(|| PolicyUpdate::Remove { owner: 3, spi: 1 });
        assert!(m[4].next_update().is_some());
        assert!((0..3).all(|w| m[w].next_update().is_none()));
        // Not across gateways, even by mistake.
        assert!(m[0].forward(3, Packet::with_size(256)).is_err());
        assert!(m[0].forward(1, Packet::with_size(256)).is_ok());
    }
}
