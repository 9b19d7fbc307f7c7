//! One AF_XDP port shared by several workers without a steering thread
//! ([`XskPort::share`]): each worker's part reads its own receive queues and passes a frame to
//! the worker its flow belongs to over a bounded ring. The NIC spreads flows over its queues by
//! its own hash (RSS), and an Originator's replies must reach the worker that chose its port by
//! [`Steer`](crate::port::steer::Steer)'s hash, so the queue a frame arrives on does not decide
//! its worker. The XDP program cannot fix that itself: a socket only takes frames from the queue
//! it is bound to.

use std::collections::VecDeque;
use std::io;

use super::{Queue, XskPort, XskStats};
use crate::port::mem::{MemConfig, MemPort, pair};
use crate::port::steer::flow_hash;
use crate::port::{Medium, Packet, PacketPool, Port};

/// Frames each ring between two parts holds.
const RING: usize = 1024;

/// A part's rings to the others.
pub(super) struct Mesh {
    index: usize,
    count: usize,
    /// The ring to each other part (`None` at this part's own index).
    peers: Vec<Option<MemPort>>,
    /// Which parts have receive queues. A part without any sends through `transmitter`; what
    /// arrives from such a part is to be sent, not received.
    has_queue: Vec<bool>,
    transmitter: usize,
    /// Frames for each other part, gathered during one burst.
    outgoing: Vec<VecDeque<Packet>>,
    scratch: Vec<Packet>,
    relay: VecDeque<Packet>,
    /// Frames passed to other parts.
    pub(super) forwarded: u64,
    /// Frames that found the ring to another part, or the TX ring, full: dropped.
    pub(super) dropped: u64,
}

pub(super) fn share(port: XskPort, n: u16) -> Vec<XskPort> {
    let n = usize::from(n.max(1));
    if n == 1 || port.mesh.is_some() {
        return vec![port];
    }
    let XskPort {
        program,
        mode,
        queues,
        mesh: _,
        mtu,
        next: _,
        stats,
    } = port;
    let nq = queues.len().max(1);
    let mut parts: Vec<Vec<Queue>> = (0..n).map(|_| Vec::new()).collect();
    for (i, q) in queues.into_iter().enumerate() {
        if let Some(p) = parts.get_mut(i % n) {
            p.push(q);
        }
    }
    let has_queue: Vec<bool> = parts.iter().map(|p| !p.is_empty()).collect();
    let mut rings: Vec<Vec<Option<MemPort>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = pair(MemConfig {
                capacity: RING,
                medium: Medium::Ethernet,
                mtu,
                ..MemConfig::default()
            });
            if let Some(slot) = rings.get_mut(i).and_then(|r| r.get_mut(j)) {
                *slot = Some(a);
            }
            if let Some(slot) = rings.get_mut(j).and_then(|r| r.get_mut(i)) {
                *slot = Some(b);
            }
        }
    }
    let mut program = program;
    let mut stats = Some(stats);
    parts
        .into_iter()
        .zip(rings)
        .enumerate()
        .map(|(index, (queues, peers))| XskPort {
            program: if index == 0 { program.take() } else { None },
            mode,
            queues,
            mtu,
            next: 0,
            stats: if index == 0 {
                stats.take().unwrap_or_default()
            } else {
                XskStats::default()
            },
            mesh: Some(Mesh {
                index,
                count: n,
                peers,
                has_queue: has_queue.clone(),
                transmitter: index % nq,
                outgoing: (0..n).map(|_| VecDeque::new()).collect(),
                scratch: Vec::with_capacity(64),
                relay: VecDeque::with_capacity(64),
                forwarded: 0,
                dropped: 0,
            }),
        })
        .collect()
}

/// A shared part's `recv_burst`: frames the other parts passed here, then its own queues' frames
/// sorted by flow. Frames a queue-less part hands over are sent on the way.
pub(super) fn receive(
    port: &mut XskPort,
    pool: &mut PacketPool,
    out: &mut Vec<Packet>,
    max: usize,
) -> usize {
    let Some(mut m) = port.mesh.take() else {
        return 0;
    };
    let mut got = 0;
    for j in 0..m.count {
        let from_receiver = m.has_queue.get(j).copied().unwrap_or(false);
        let Some(Some(peer)) = m.peers.get_mut(j) else {
            continue;
        };
        if from_receiver {
            if got < max {
                got += peer.recv_burst(pool, out, max - got).unwrap_or(0);
            }
        } else {
            m.scratch.clear();
            let _ = peer.recv_burst(pool, &mut m.scratch, 64);
            m.relay.extend(m.scratch.drain(..));
            port.transmit(pool, &mut m.relay);
            for p in m.relay.drain(..) {
                m.dropped += 1;
                pool.put(p);
            }
        }
    }
    let room = max.saturating_sub(got);
    m.scratch.clear();
    if room > 0 {
        port.receive_own(pool, &mut m.scratch, room);
    }
    for p in m.scratch.drain(..) {
        match flow_hash(p.data(), Medium::Ethernet) {
            Some(h) => {
                let owner = h as usize % m.count;
                match m.outgoing.get_mut(owner) {
                    Some(o) if owner != m.index => o.push_back(p),
                    _ => {
                        out.push(p);
                        got += 1;
                    }
                }
            }
            None => {
                // ARP, neighbour discovery: every worker's stack learns from it or answers.
                for (j, o) in m.outgoing.iter_mut().enumerate() {
                    if j != m.index {
                        let mut c = pool.get();
                        if c.fill_from(p.data()) {
                            o.push_back(c);
                        } else {
                            pool.put(c);
                        }
                    }
                }
                out.push(p);
                got += 1;
            }
        }
    }
    for (peer, o) in m.peers.iter_mut().zip(m.outgoing.iter_mut()) {
        if o.is_empty() {
            continue;
        }
        if let Some(peer) = peer {
            m.forwarded += peer.send_burst(pool, o).unwrap_or(0) as u64;
        }
        // The other worker is behind: TCP will send these again.
        for p in o.drain(..) {
            m.dropped += 1;
            pool.put(p);
        }
    }
    port.mesh = Some(m);
    got
}

impl Mesh {
    /// A queue-less part's `send_burst`: through the ring to its transmitter (what does not fit
    /// stays in `pkts`).
    pub(super) fn send_via_transmitter(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        match self.peers.get_mut(self.transmitter) {
            Some(Some(peer)) => peer.send_burst(pool, pkts),
            _ => Ok(0),
        }
    }
}
