//! TCP transports for the ciphertext side. A transport owns TCP connections and moves their bytes;
//! it knows nothing of RFC 9329 framing or ESP, which the worker's engine does the same way for
//! every transport:
//! - [`smol`]: a userspace TCP stack (smoltcp) over a [`Port`](crate::port::Port), one small
//!   interface per connection behind an O(1) 4-tuple table;
//! - [`kernel`]: the kernel's TCP sockets (non-blocking, epoll), for hosts that cannot give a NIC to
//!   userspace, and as the bench's baseline.

pub mod kernel;
pub mod smol;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A connection of one transport. Slot index and generation, so a stale id never names a newer
/// connection that reused the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Slot in the transport's table.
    pub slot: u32,
    /// Bumped each time the slot is reused.
    pub generation: u32,
}

/// Which end opened the connection (RFC 9329 §1.2).
pub use crate::wire::frame::TcpRole;

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (FIN) and we closed ours.
    Fin,
    /// The peer reset the connection.
    Reset,
    /// Retransmissions or the connect timed out.
    Timeout,
    /// We closed or aborted it.
    Local,
}

/// What happened to connections during a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// A connection is established (an accepted one for a Responder, a completed connect for an
    /// Originator).
    Up {
        /// The connection.
        conn: ConnId,
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        peer: SocketAddr,
        /// Who opened it.
        role: TcpRole,
    },
    /// The connection is gone; its id is dead.
    Down {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// The operations the worker needs from a TCP transport. Never blocks.
pub trait Transport {
    /// Moves packets or syscalls forward: receive from the wire, run TCP, transmit. Appends
    /// connection events. `now` is the worker's monotonic clock.
    fn poll(&mut self, now: Instant, events: &mut Vec<TransportEvent>) -> io::Result<()>;

    /// Accepts connections on `local` (a Responder; RFC 9329 §2 port 4500 by default).
    fn listen(&mut self, local: SocketAddr) -> io::Result<()>;

    /// Opens a connection to `remote` (an Originator). The id is valid at once; `Up` or `Down` follows.
    fn connect(&mut self, local: Option<SocketAddr>, remote: SocketAddr) -> io::Result<ConnId>;

    /// Appends the connections that have received bytes waiting.
    fn readable(&mut self, out: &mut Vec<ConnId>);

    /// Hands the received bytes of `conn` that lie contiguous in the receive buffer to `f`, which
    /// returns how many it consumed; returns that number (0 if nothing is waiting).
    fn recv<F: FnOnce(&mut [u8]) -> usize>(&mut self, conn: ConnId, f: F) -> io::Result<usize>;

    /// Bytes `send` would accept now.
    fn send_capacity(&self, conn: ConnId) -> usize;

    /// Queues bytes for sending; returns how many were taken (may be fewer than `data.len()`).
    fn send(&mut self, conn: ConnId, data: &[u8]) -> io::Result<usize>;

    /// Lends `f` the free part of `conn`'s send buffer that lies contiguous behind the bytes
    /// already queued (it may be shorter than [`send_capacity`](Self::send_capacity) where the
    /// buffer wraps); `f` writes into its front and returns how many bytes it wrote, which are
    /// then queued for sending. Returns that number. The sender seals ESP straight into the
    /// send buffer this way, without a copy. Transports without a buffer of their own to lend
    /// (kernel sockets) keep this default: 0, without calling `f`; so do connections that
    /// cannot send now.
    fn send_in_place<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        conn: ConnId,
        f: F,
    ) -> io::Result<usize> {
        let _ = (conn, f);
        Ok(0)
    }

    /// Queues the buffers in order, as one stream of bytes; returns how many bytes were taken.
    /// Transports with a syscall per send override this to send a burst of frames at once.
    fn send_vectored(&mut self, conn: ConnId, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs {
            let n = self.send(conn, b)?;
            total += n;
            if n < b.len() {
                break;
            }
        }
        Ok(total)
    }

    /// Graceful close (FIN).
    fn close(&mut self, conn: ConnId);

    /// Abortive close (RST).
    fn abort(&mut self, conn: ConnId);

    /// Number of open connections.
    fn connections(&self) -> usize;

    /// Tells the transport that an accepted connection has proven itself: the engine calls it
    /// when the connection carried authentic ESP (ICV and replay check passed) or control bound
    /// an authenticated IKE SA to it (RFC 9329 §6.1, §10: nothing unauthenticated earns more). Until then a transport may count the connection against
    /// caps for unproven peers (the smoltcp transport does: `SmolConfig::untrusted_per_*`, and
    /// refuses new accepts past them). Stale ids, Originator connections and repeated calls are
    /// ignored. Transports without such caps (kernel sockets) keep this no-op.
    fn mark_trusted(&mut self, conn: ConnId) {
        let _ = conn;
    }

    /// What the transport's limits on peers did so far (for the worker's counters).
    fn refusals(&self) -> Refusals {
        Refusals::default()
    }

    /// What the link under a userspace stack did so far (its port's
    /// [`link_counters`](crate::port::Port::link_counters); zeros for kernel sockets).
    fn link_counters(&self) -> crate::port::LinkCounters {
        crate::port::LinkCounters::default()
    }
}

/// The group a source address is counted in by per-source limits: the address for IPv4 (also
/// when it comes IPv4-mapped from a dual-stack socket), its /64 for IPv6 (one subscriber
/// usually holds a whole /64, RFC 6177).
pub fn source_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// A transport's limits on peers, for the worker's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Connections (or SYNs) refused by a limit so far: connection slots, untrusted
    /// connections in all or per source, half-open accepts.
    pub refused: u64,
    /// Untrusted accepted connections open now.
    pub untrusted: u64,
}

#[cfg(test)]
mod source_group_tests {
    use super::source_group;
    use std::net::IpAddr;

    #[test]
    fn ipv4_alone_ipv4_mapped_as_ipv4_ipv6_by_its_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_group(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_group(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_group(ip("fd00:1:2:3:4:5:6:7")), ip("fd00:1:2:3::"));
        assert_ne!(source_group(ip("fd00:1:2:4::1")), ip("fd00:1:2:3::"));
    }
}
