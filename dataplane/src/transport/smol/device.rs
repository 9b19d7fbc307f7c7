//! The smoltcp `Device` shared by every per-connection interface. An interface only keeps a copy
//! of the capabilities, so one device borrowed for the duration of each poll is enough: its rx
//! queue holds the packets demultiplexed to the connection being polled, and its tx tokens append
//! straight to the transport's outgoing queue. No per-connection queues, no copies between them.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::port::{HEADROOM, Packet, PacketPool};

/// The device for one poll of one connection's interface.
pub(super) struct Dev<'a> {
    /// Packets for this connection, in arrival order.
    pub rx: &'a mut VecDeque<Packet>,
    /// Consumed rx packets, returned to the pool after the poll (the pool is lent to tx tokens).
    pub spent: &'a mut Vec<Packet>,
    /// The transport's outgoing queue.
    pub out: &'a mut VecDeque<Packet>,
    pub pool: &'a mut PacketPool,
    /// `transmit` refuses once `out` holds this many packets: smoltcp then keeps the data queued
    /// in the socket, which is the backpressure we want.
    pub out_limit: usize,
    pub caps: &'a DeviceCapabilities,
}

pub(super) struct RxTok<'a> {
    pkt: Packet,
    spent: &'a mut Vec<Packet>,
}

pub(super) struct TxTok<'a> {
    out: &'a mut VecDeque<Packet>,
    pool: &'a mut PacketPool,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let RxTok { pkt, spent } = self;
        let r = f(pkt.data());
        spent.push(pkt);
        r
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut pkt = self.pool.get();
        if pkt.max_len() < len {
            // Cannot happen with the pool sized from the MTU; smoltcp must get `len` bytes anyway.
            pkt = Packet::with_size(HEADROOM + len);
        }
        let r = f(pkt.prepare(len));
        self.out.push_back(pkt);
        r
    }
}

impl phy::Device for Dev<'_> {
    type RxToken<'a>
        = RxTok<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        // The reply token is always granted: at most one reply per received packet, and the
        // transport only reads a burst when the outgoing queue has room for a burst of replies.
        let pkt = self.rx.pop_front()?;
        Some((
            RxTok {
                pkt,
                spent: &mut *self.spent,
            },
            TxTok {
                out: &mut *self.out,
                pool: &mut *self.pool,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        if self.out.len() >= self.out_limit {
            return None;
        }
        Some(TxTok {
            out: &mut *self.out,
            pool: &mut *self.pool,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// A device that only reports capabilities, for `Interface::new`.
pub(super) struct CapsOnly<'a>(pub &'a DeviceCapabilities);

impl phy::Device for CapsOnly<'_> {
    type RxToken<'a>
        = RxTok<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        None
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        None
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.0.clone()
    }
}
