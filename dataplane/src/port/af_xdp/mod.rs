//! AF_XDP: the ciphertext side on a NIC (or veth) driven from userspace, Ethernet frames
//! ([`Medium::Ethernet`]) for the smoltcp transport. The XDP program ([`program`]) steals the
//! frames of the userspace stack's addresses on every receive queue of the interface and passes
//! the rest to the kernel, which keeps the host's own traffic. Each queue has its own AF_XDP
//! socket and UMEM (the `xdp` crate: rings and UMEM in Rust, no libxdp).
//!
//! Frames are copied between the UMEM and the worker's packet pool once each way: the engine's
//! buffers are pool [`Packet`]s. In copy mode (veth, and any driver without AF_XDP zero-copy)
//! the kernel copies into the UMEM as well; on a zero-copy NIC the kernel's copy goes away.

mod mesh;
pub mod program;

use std::collections::VecDeque;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use xdp::slab::{HeapSlab, Slab};
use xdp::socket::{XdpSocket, XdpSocketBuilder};
use xdp::umem::{FrameSize, UmemCfgBuilder};
use xdp::{CompletionRing, FillRing, RingConfigBuilder, RxRing, TxRing, Umem};

use super::{LinkCounters, Medium, Packet, PacketPool, Port};
pub use program::{AttachMode, Steal, SteerProgram};

/// Bytes of a 4 KiB UMEM frame the kernel keeps in front of the data (`XDP_PACKET_HEADROOM`).
const XDP_HEADROOM: usize = 256;
/// UMEM frame size.
const FRAME: usize = 4096;
/// Largest frame a queue carries: what a 4 KiB UMEM frame holds after the kernel's headroom
/// (no multi-buffer frames).
pub const MAX_FRAME: usize = FRAME - XDP_HEADROOM;
/// Frames moved per ring operation.
const BURST: usize = 64;

/// How to open an AF_XDP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// The interface (a NIC, or a veth in the lab).
    pub interface: String,
    /// What the XDP program steals for us.
    pub steal: Steal,
    /// How the XDP program is attached.
    pub attach: AttachMode,
    /// UMEM frames per queue (a power of two, 64..=65536): half for receiving, half for sending.
    pub frames: u32,
    /// Largest Ethernet frame (no FCS), at most [`MAX_FRAME`].
    pub mtu: usize,
    /// Bind in copy mode even where the driver offers zero-copy.
    pub force_copy: bool,
}

impl XskConfig {
    /// Defaults for `interface`: what the XDP program steals must still be set.
    pub fn new(interface: &str, mtu: usize) -> Self {
        XskConfig {
            interface: interface.to_owned(),
            steal: Steal::default(),
            attach: AttachMode::Auto,
            frames: 4096,
            mtu,
            force_copy: false,
        }
    }
}

/// Why an AF_XDP port could not be opened.
#[derive(Debug)]
pub enum XskError {
    /// The configuration cannot work (frame size, frame count, names).
    Config(String),
    /// No such interface.
    NoInterface(String),
    /// The XDP program.
    Program(program::ProgramError),
    /// The socket, its UMEM or its rings.
    Socket { queue: u32, error: String },
}

impl fmt::Display for XskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XskError::Config(e) => write!(f, "AF_XDP configuration: {e}"),
            XskError::NoInterface(i) => write!(f, "AF_XDP: no interface {i:?}"),
            XskError::Program(e) => write!(f, "AF_XDP: {e}"),
            XskError::Socket { queue, error } => {
                write!(f, "AF_XDP socket on queue {queue}: {error}")
            }
        }
    }
}

impl std::error::Error for XskError {}

impl From<XskError> for io::Error {
    fn from(e: XskError) -> Self {
        match e {
            XskError::NoInterface(_) => io::Error::new(io::ErrorKind::NotFound, e),
            _ => io::Error::other(e),
        }
    }
}

/// One receive queue's socket, UMEM and rings.
struct Queue {
    // Field order is drop order: the rings and the socket go before the UMEM they map.
    fill: FillRing,
    rx: RxRing,
    completion: CompletionRing,
    tx: TxRing,
    socket: XdpSocket,
    umem: Umem,
    rx_slab: HeapSlab,
    /// Frames written but not yet taken by the TX ring (it was full).
    tx_slab: HeapSlab,
    /// Frames on the receive side (fill ring, kernel, RX ring), at most `frames / 2`.
    rx_side: usize,
    /// Frames handed to the TX ring and not yet back through the completion ring.
    tx_in_flight: usize,
    zero_copy: bool,
}

/// Counters of an AF_XDP port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames sent (handed to the TX ring).
    pub tx_packets: u64,
    /// Frames received that do not fit a pool packet, dropped.
    pub rx_too_big: u64,
    /// Frames to send larger than the MTU, dropped.
    pub tx_too_big: u64,
    /// TX kicks (`sendto`) the kernel refused for a reason other than a full ring.
    pub tx_kick_errors: u64,
    /// The kernel's drops (`XDP_STATISTICS`): RX ring full, fill ring empty, other, invalid
    /// descriptors; summed over the queues.
    pub kernel_dropped: u64,
    /// A shared part ([`XskPort::share`]): frames passed to the worker their flow belongs to.
    pub shared_forwarded: u64,
    /// A shared part: frames dropped because another part's ring (or the TX ring, for a part
    /// without queues) was full.
    pub shared_dropped: u64,
}

/// An AF_XDP port over every receive queue of one interface, with the XDP program attached for
/// as long as it lives.
pub struct XskPort {
    // Dropped first: the program stops redirecting before the sockets close. After
    // [`share`](Self::share), worker 0's part holds it.
    program: Option<SteerProgram>,
    mode: AttachMode,
    queues: Vec<Queue>,
    /// After [`share`](Self::share): the rings to the other workers' parts.
    mesh: Option<mesh::Mesh>,
    mtu: usize,
    /// Queue to read first next time (round robin, so no queue starves the others).
    next: usize,
    stats: XskStats,
}

// SAFETY: the rings hold raw pointers into memory mapped for this port's sockets, and the UMEM
// hands out packets pointing into its own mapping; nothing of it is shared with another thread
// of this process (the kernel side is synchronized by the rings' atomics). Moving the whole port
// to the worker thread that then is its only user is sound; it is not `Sync`.
unsafe impl Send for XskPort {}

impl fmt::Debug for XskPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskPort")
            .field("program", &self.program)
            .field("queues", &self.queues.len())
            .field("mtu", &self.mtu)
            .field("stats", &self.stats)
            .finish()
    }
}

impl XskPort {
    /// Attaches the XDP program to `cfg.interface` and binds a socket to each of its receive
    /// queues.
    pub fn open(cfg: &XskConfig) -> Result<XskPort, XskError> {
        if cfg.mtu > MAX_FRAME || cfg.mtu < 64 {
            return Err(XskError::Config(format!(
                "frame size {} is outside 64..={MAX_FRAME} (one 4 KiB UMEM frame)",
                cfg.mtu
            )));
        }
        if !cfg.frames.is_power_of_two() || !(64..=65536).contains(&cfg.frames) {
            return Err(XskError::Config(format!(
                "frames {} is not a power of two in 64..=65536",
                cfg.frames
            )));
        }
        let name = CString::new(cfg.interface.as_bytes())
            .map_err(|_| XskError::Config("interface name has a NUL byte".into()))?;
        let nic = xdp::nic::NicIndex::lookup_by_name(&name)
            .map_err(|e| XskError::Config(format!("{}: {e}", cfg.interface)))?
            .ok_or_else(|| XskError::NoInterface(cfg.interface.clone()))?;
        let count = rx_queue_count(&cfg.interface).min(program::MAX_QUEUES);
        let mut program =
            SteerProgram::attach(nic.0, cfg.steal, cfg.attach).map_err(XskError::Program)?;
        let mut queues = Vec::with_capacity(count as usize);
        for index in 0..count {
            let q = Queue::open(nic, index, cfg)?;
            program
                .register(index, &q.socket)
                .map_err(XskError::Program)?;
            queues.push(q);
        }
        Ok(XskPort {
            mode: program.mode(),
            program: Some(program),
            queues,
            mesh: None,
            mtu: cfg.mtu,
            next: 0,
            stats: XskStats::default(),
        })
    }

    /// Counters, with the kernel's drops read now.
    pub fn stats(&self) -> XskStats {
        let mut s = self.stats;
        s.kernel_dropped = self
            .queues
            .iter()
            .filter_map(|q| q.socket.statistics().ok())
            .map(|k| {
                k.rx_dropped
                    + k.rx_invalid_descs
                    + k.tx_invalid_descs
                    + k.rx_ring_full
                    + k.rx_fill_ring_empty_descs
            })
            .sum();
        if let Some(m) = &self.mesh {
            s.shared_forwarded = m.forwarded;
            s.shared_dropped = m.dropped;
        }
        s
    }

    /// Receive queues with a socket.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Whether every socket is bound in zero-copy mode (the driver supports it and
    /// `force_copy` is off).
    pub fn zero_copy(&self) -> bool {
        !self.queues.is_empty() && self.queues.iter().all(|q| q.zero_copy)
    }

    /// How the XDP program is attached.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Writes packets from the front of `pkts` into this part's first queue's TX ring.
    fn transmit(&mut self, pool: &mut PacketPool, pkts: &mut VecDeque<Packet>) -> usize {
        let mut sent = 0;
        let mtu = self.mtu;
        // Any queue can transmit; the first one does.
        let Some(q) = self.queues.first_mut() else {
            return 0;
        };
        q.reap();
        q.push_tx(&mut self.stats);
        while !pkts.is_empty() {
            if q.tx_slab.available() == 0 {
                q.push_tx(&mut self.stats);
                if q.tx_slab.available() == 0 {
                    break;
                }
            }
            let Some(p) = pkts.front() else { break };
            if p.len() > mtu {
                self.stats.tx_too_big += 1;
            } else {
                // SAFETY: the frame is `q.umem`'s and goes to its TX ring (or back to it on
                // error); the queue keeps the UMEM for as long as the rings.
                let Some(mut frame) = (unsafe { q.umem.alloc() }) else {
                    // Every sending frame is in flight: the rest waits for completions.
                    break;
                };
                if frame.append(p.data()).is_err() {
                    q.umem.free_packet(frame);
                    self.stats.tx_too_big += 1;
                } else if let Some(frame) = q.tx_slab.push_front(frame) {
                    q.umem.free_packet(frame);
                    break;
                }
            }
            if let Some(p) = pkts.pop_front() {
                pool.put(p);
                sent += 1;
            }
        }
        q.push_tx(&mut self.stats);
        sent
    }

    /// Reads up to `max` frames from this part's own queues into `out`.
    fn receive_own(&mut self, pool: &mut PacketPool, out: &mut Vec<Packet>, max: usize) -> usize {
        let mut got = 0;
        let n = self.queues.len();
        for k in 0..n {
            let Some(q) = self.queues.get_mut((self.next + k) % n) else {
                break;
            };
            q.reap();
            q.kick_if_pending(&mut self.stats);
            while got < max {
                // SAFETY: the frames the RX ring names are `q.umem`'s; each is copied out and
                // freed back to it below, so none outlives the UMEM.
                let r = unsafe { q.rx.recv(&q.umem, &mut q.rx_slab) };
                if r == 0 {
                    break;
                }
                q.rx_side = q.rx_side.saturating_sub(r);
                while let Some(frame) = q.rx_slab.pop_back() {
                    let mut p = pool.get();
                    if p.fill_from(&frame) {
                        out.push(p);
                        got += 1;
                        self.stats.rx_packets += 1;
                    } else {
                        self.stats.rx_too_big += 1;
                        pool.put(p);
                    }
                    q.umem.free_packet(frame);
                }
            }
            q.refill();
            if got >= max {
                self.next = (self.next + k + 1) % n;
                return got;
            }
        }
        got
    }

    /// Splits the port into `n` parts, one per worker, without a steering thread. The receive
    /// queues are dealt out round robin; each part reads its own and hands a frame whose flow
    /// hashes to another worker (`steer::flow_hash`, the hash [`Steer`](super::steer::Steer)
    /// picks ports by) to that worker over a bounded ring, and a frame without a flow (ARP,
    /// neighbour discovery) to every worker. A part without a queue (fewer queues than workers)
    /// sends through a part that has one. Worker 0's part keeps the XDP program.
    pub fn share(self, n: u16) -> Vec<XskPort> {
        mesh::share(self, n)
    }
}

impl Queue {
    fn open(nic: xdp::nic::NicIndex, index: u32, cfg: &XskConfig) -> Result<Queue, XskError> {
        let err = |e: &dyn fmt::Display| XskError::Socket {
            queue: index,
            error: e.to_string(),
        };
        let umem_cfg = UmemCfgBuilder {
            frame_size: FrameSize::FourK,
            frame_count: cfg.frames,
            ..UmemCfgBuilder::default()
        }
        .build()
        .map_err(|e| err(&e))?;
        let mut umem = Umem::map(umem_cfg).map_err(|e| err(&e))?;
        let ring = cfg.frames / 2;
        let rings = RingConfigBuilder {
            rx_count: ring,
            tx_count: ring,
            fill_count: ring,
            completion_count: ring,
        }
        .build()
        .map_err(|e| err(&e))?;
        let mut builder = XdpSocketBuilder::new().map_err(|e| err(&e))?;
        let (rings, mut flags) = builder.build_rings(&umem, rings).map_err(|e| err(&e))?;
        if cfg.force_copy {
            flags.force_copy();
        }
        let socket = builder.bind(nic, index, flags).map_err(|e| err(&e))?;
        let (Some(rx), Some(tx)) = (rings.rx_ring, rings.tx_ring) else {
            return Err(err(&"the kernel made no RX or TX ring"));
        };
        let mut fill = rings.fill_ring;
        // SAFETY: the frames handed to the kernel belong to `umem`, which the queue keeps (and
        // drops after the rings and the socket).
        let rx_side = unsafe { fill.enqueue(&mut umem, ring as usize) };
        let zero_copy = bound_zero_copy(&socket);
        Ok(Queue {
            fill,
            rx,
            completion: rings.completion_ring,
            tx,
            socket,
            umem,
            rx_slab: HeapSlab::with_capacity(BURST),
            tx_slab: HeapSlab::with_capacity(BURST),
            rx_side,
            tx_in_flight: 0,
            zero_copy,
        })
    }

    /// Frames the kernel finished sending go back to the UMEM.
    fn reap(&mut self) {
        loop {
            let n = self.completion.dequeue(&mut self.umem, BURST);
            self.tx_in_flight = self.tx_in_flight.saturating_sub(n);
            if n < BURST {
                break;
            }
        }
    }

    /// Gives the kernel free frames to receive into, keeping half of the UMEM for sending.
    fn refill(&mut self) {
        let half = self.umem.capacity() / 2;
        let want = half.saturating_sub(self.rx_side);
        if want > 0 {
            // SAFETY: as in `open`: the frames are `self.umem`'s.
            self.rx_side += unsafe { self.fill.enqueue(&mut self.umem, want) };
        }
    }

    /// Hands written frames to the TX ring and wakes the kernel to send them (copy mode and
    /// most drivers transmit from `sendto`).
    fn push_tx(&mut self, stats: &mut XskStats) {
        if self.tx_slab.is_empty() {
            return;
        }
        // SAFETY: the frames in the slab were allocated from `self.umem` and are returned to it
        // through the completion ring.
        let sent = unsafe { self.tx.send(&mut self.tx_slab) };
        stats.tx_packets += sent as u64;
        self.tx_in_flight += sent;
        if sent > 0 {
            self.kick(stats);
        }
    }

    /// Kicks until the kernel has taken the TX ring (at most [`MAX_KICKS`] times), draining the
    /// completion ring between kicks: the kernel sends no frame it has no completion slot for.
    fn kick(&mut self, stats: &mut XskStats) {
        for _ in 0..MAX_KICKS {
            if !kick_once(&self.socket, stats) {
                return;
            }
            self.reap();
        }
    }

    /// Frames in the TX ring the kernel has not sent yet get another kick: in copy mode one
    /// `sendto` sends at most 32 of them (the kernel's `TX_BATCH_SIZE`), and without a kick the
    /// rest would wait for the next packet to send.
    fn kick_if_pending(&mut self, stats: &mut XskStats) {
        if self.tx_in_flight > 0 {
            self.kick(stats);
        }
    }
}

/// Kicks per call at most: 32 frames each in copy mode, so this drains a 2048-frame TX ring.
/// Each one that says EAGAIN has sent its 32 frames, so none is wasted.
const MAX_KICKS: usize = 64;

/// `sendto(fd, NULL, 0, MSG_DONTWAIT)`: tells the kernel the TX ring has frames. Returns
/// whether to kick again: in copy mode the kernel sends up to 32 per call and says EAGAIN when
/// more are left (or when the completion ring is full until it is drained).
fn kick_once(socket: &XdpSocket, stats: &mut XskStats) -> bool {
    // SAFETY: a zero-length send with no buffer and no address; the kernel reads only the ring.
    let r = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if r >= 0 {
        return false;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => true,
        // The device queue is busy or full: the frames stay in the ring for the next kick.
        Some(libc::EBUSY | libc::ENOBUFS) => false,
        _ => {
            stats.tx_kick_errors += 1;
            false
        }
    }
}

/// Whether the socket was bound in zero-copy mode (`XDP_OPTIONS`).
fn bound_zero_copy(socket: &XdpSocket) -> bool {
    const SOL_XDP: libc::c_int = 283;
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `flags` is a valid u32 for the kernel to write `struct xdp_options` (one u32) into;
    // `len` says its size.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    r == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
}

/// Receive queues of `interface`: its current RX plus combined channels (`ETHTOOL_GCHANNELS`,
/// asked in the caller's network namespace), else the `rx-N` entries in sysfs, else 1.
fn rx_queue_count(interface: &str) -> u32 {
    channels(interface)
        .or_else(|| {
            let dir = format!("/sys/class/net/{interface}/queues");
            let n = std::fs::read_dir(dir)
                .ok()?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count();
            u32::try_from(n).ok()
        })
        .unwrap_or(1)
        .max(1)
}

/// `struct ethtool_channels` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn channels(interface: &str) -> Option<u32> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut ch as *mut EthtoolChannels).cast(),
        _pad: [0; 16],
    };
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    for (d, b) in ifr.name.iter_mut().zip(bytes) {
        *d = *b as libc::c_char;
    }
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `ifr` is a valid ifreq naming the interface, whose data pointer points at `ch`, a
    // valid ethtool_channels that outlives the call; the kernel writes only into `ch`.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut ifr as *mut IfreqData) };
    // SAFETY: `fd` is ours and not used after this.
    unsafe { libc::close(fd) };
    (r == 0).then(|| ch.rx_count + ch.combined_count)
}

impl Port for XskPort {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        if self.mesh.is_none() {
            return Ok(self.receive_own(pool, out, max));
        }
        Ok(mesh::receive(self, pool, out, max))
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        if self.queues.is_empty()
            && let Some(m) = &mut self.mesh
        {
            // No queue of its own: a part with one sends for it.
            return m.send_via_transmitter(pool, pkts);
        }
        Ok(self.transmit(pool, pkts))
    }

    fn medium(&self) -> Medium {
        Medium::Ethernet
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn link_counters(&self) -> LinkCounters {
        let s = self.stats();
        LinkCounters {
            rx_packets: s.rx_packets,
            tx_packets: s.tx_packets,
            dropped: s.rx_too_big + s.tx_too_big + s.kernel_dropped + s.shared_dropped,
        }
    }
}

#[cfg(test)]
mod tests;
