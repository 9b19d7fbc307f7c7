//! Packet I/O in bursts. A port moves whole packets (IP, or Ethernet frames for TAP and AF_XDP)
//! between a worker and something else: another worker (`mem`), the kernel (`tun`, `tap`), a NIC
//! driven from userspace (`af_xdp`). Ports never allocate per packet on their own: buffers come
//! from the worker's [`PacketPool`].

pub mod af_xdp;
pub mod mem;
pub mod offload;
pub mod steer;
pub mod tap;
pub mod tun;

use std::collections::VecDeque;
use std::io;
use std::ops::Range;

/// Free bytes kept in front of a packet's data, so ESP (16), the RFC 9329 Length (2) and a rebuilt
/// IP header fit without moving the packet.
pub const HEADROOM: usize = 128;
/// Default buffer size: headroom, a 9000-byte jumbo packet and ESP's tail.
pub const DEFAULT_BUF_SIZE: usize = HEADROOM + 9000 + 64;

/// What a port's packets start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    /// Raw IPv4/IPv6 packets (mem, TUN).
    Ip,
    /// Ethernet II frames (TAP).
    Ethernet,
}

/// A port's offload figures, for the worker's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCounters {
    /// Super-packets read and cut into segments.
    pub super_in: u64,
    /// Writes that joined two or more segments.
    pub joined_out: u64,
    /// Packets read that could not be cut, dropped.
    pub errors: u64,
}

/// A port's link figures, for the worker's counters (an AF_XDP port; zeros elsewhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames received from the link.
    pub rx_packets: u64,
    /// Frames handed to the link.
    pub tx_packets: u64,
    /// Frames dropped by the port or by the kernel's rings.
    pub dropped: u64,
}

/// [`LinkCounters`] published by the thread that owns a port for another to read (the steering
/// splitter's shared port, read through worker 0's end).
#[derive(Debug, Default)]
pub struct SharedLinkCounters {
    rx_packets: std::sync::atomic::AtomicU64,
    tx_packets: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl SharedLinkCounters {
    /// Publishes `c`.
    pub fn store(&self, c: LinkCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        self.rx_packets.store(c.rx_packets, Relaxed);
        self.tx_packets.store(c.tx_packets, Relaxed);
        self.dropped.store(c.dropped, Relaxed);
    }

    /// The last published figures.
    pub fn load(&self) -> LinkCounters {
        use std::sync::atomic::Ordering::Relaxed;
        LinkCounters {
            rx_packets: self.rx_packets.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }
}

/// One packet in a buffer with headroom: the data is `buf[start..end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Packet {
    /// An empty packet with a zeroed buffer of `size` bytes, data starting at [`HEADROOM`].
    pub fn with_size(size: usize) -> Self {
        let size = size.max(HEADROOM + 64);
        Packet {
            buf: vec![0; size],
            start: HEADROOM,
            end: HEADROOM,
        }
    }

    /// The packet's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The packet's bytes, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Length of the data.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// No data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The whole buffer and the data's range in it (for in-place ESP that grows the packet).
    #[inline]
    pub fn buffer_mut(&mut self) -> (&mut [u8], Range<usize>) {
        (&mut self.buf, self.start..self.end)
    }

    /// The data's range in the buffer.
    #[inline]
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Makes `r` (a range of the buffer) the data. Returns false, changing nothing, if `r` is not
    /// inside the buffer.
    #[inline]
    pub fn set_range(&mut self, r: Range<usize>) -> bool {
        if r.start <= r.end && r.end <= self.buf.len() {
            self.start = r.start;
            self.end = r.end;
            true
        } else {
            false
        }
    }

    /// Bytes the data may grow to at [`HEADROOM`] (buffer size minus headroom).
    #[inline]
    pub fn max_len(&self) -> usize {
        self.buf.len().saturating_sub(HEADROOM)
    }

    /// Replaces the data with `src` at [`HEADROOM`]. Returns false (data emptied) if it does not fit.
    #[inline]
    pub fn fill_from(&mut self, src: &[u8]) -> bool {
        self.start = HEADROOM;
        match self.buf.get_mut(HEADROOM..HEADROOM + src.len()) {
            Some(dst) => {
                dst.copy_from_slice(src);
                self.end = HEADROOM + src.len();
                true
            }
            None => {
                self.end = HEADROOM;
                false
            }
        }
    }

    /// Sets the data to `len` bytes at [`HEADROOM`] and returns them for filling (e.g. by `read`).
    /// `len` is clamped to [`max_len`](Self::max_len).
    #[inline]
    pub fn prepare(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(self.max_len());
        self.start = HEADROOM;
        self.end = HEADROOM + len;
        &mut self.buf[self.start..self.end]
    }

    /// Shortens the data to `len` bytes (no-op if already shorter).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }
}

/// A worker's free packet buffers. Bounded: buffers beyond `max_free` are dropped, so a pool that
/// receives more than it hands out (the receiving end of a mem ring) cannot grow without limit.
#[derive(Debug)]
pub struct PacketPool {
    free: Vec<Packet>,
    buf_size: usize,
    max_free: usize,
    allocated: u64,
}

impl PacketPool {
    /// A pool of buffers of `buf_size` bytes keeping at most `max_free` spare ones.
    pub fn new(buf_size: usize, max_free: usize) -> Self {
        PacketPool {
            free: Vec::with_capacity(max_free.min(1 << 16)),
            buf_size,
            max_free,
            allocated: 0,
        }
    }

    /// Buffer size of new packets.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// An empty packet (data at [`HEADROOM`]); reuses a free buffer when there is one.
    #[inline]
    pub fn get(&mut self) -> Packet {
        match self.free.pop() {
            Some(mut p) => {
                p.start = HEADROOM;
                p.end = HEADROOM;
                p
            }
            None => {
                self.allocated += 1;
                Packet::with_size(self.buf_size)
            }
        }
    }

    /// Returns a packet's buffer to the pool (dropped if the pool is full or the size differs).
    #[inline]
    pub fn put(&mut self, p: Packet) {
        if self.free.len() < self.max_free && p.buf.len() == self.buf_size {
            self.free.push(p);
        }
    }

    /// A free buffer if the pool has one; never allocates (for handing buffers back to the
    /// endpoint that sends to us, see `mem`).
    #[inline]
    pub fn take_spare(&mut self) -> Option<Packet> {
        self.free.pop()
    }

    /// Free buffers held.
    #[inline]
    pub fn spare(&self) -> usize {
        self.free.len()
    }

    /// Buffers allocated so far (a steady state allocates none).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

impl Default for PacketPool {
    fn default() -> Self {
        PacketPool::new(DEFAULT_BUF_SIZE, 4096)
    }
}

/// A batch-oriented packet port.
pub trait Port: Send {
    /// Receives up to `max` packets, appending them to `out`; returns how many. Never blocks.
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize>;

    /// Sends packets from the front of `pkts`, removing those sent (their buffers go back to `pool`
    /// or on to the other side); stops early when the port is full, leaving the rest queued for a
    /// later call. Returns how many were sent. Never blocks.
    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize>;

    /// What the packets start with.
    fn medium(&self) -> Medium;

    /// Largest packet (IP packet, or Ethernet frame without FCS) the port carries.
    fn mtu(&self) -> usize;

    /// What segmentation offload did so far (a TUN device with `offload`; zeros elsewhere).
    fn offload_counters(&self) -> OffloadCounters {
        OffloadCounters::default()
    }

    /// What the link did so far (an AF_XDP port; zeros elsewhere).
    fn link_counters(&self) -> LinkCounters {
        LinkCounters::default()
    }
}
