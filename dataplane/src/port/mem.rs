//! A pair of endpoints joined by two bounded lock-free rings (`crossbeam::queue::ArrayQueue`), one
//! per direction. Packets move without a copy: the [`Packet`] itself travels, and the receiver's
//! pool recycles its buffer.
//!
//! For tests a direction can be impaired (loss, delay, reordering; [`Impairments`]), and a link made
//! with [`pair_with_control`] can forge TCP RSTs for every flow it has seen ([`MemLink::inject_reset`]),
//! as a middlebox would. Impairments and resets are applied on the *sending* side: an endpoint must be
//! polled (`send_burst`, `recv_burst` or [`MemPort::flush_due`]) for its delayed or held-back packets,
//! and its forged RSTs, to move onto the ring.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::{HEADROOM, Medium, Packet, PacketPool, Port};

/// Default packets per direction.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Default bound of a sender's delay queue.
pub const DEFAULT_DELAY_LIMIT: usize = 65536;
/// Default bound of a sender's TCP flow table (reset injection).
pub const DEFAULT_FLOW_LIMIT: usize = 65536;
/// A held-back (reordered) packet goes out after the next one, or on a poll once it has waited this
/// long, so that the last packet of a burst is not stuck until traffic resumes.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(1);
/// Delays are clamped to this, so `Instant + delay` cannot overflow.
const MAX_DELAY: Duration = Duration::from_secs(3600);
const ETH_HEADER_LEN: usize = 14;

/// Impairments of one direction, applied by its sender. All zero (the default) is a perfect link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairments {
    /// Probability that a packet is lost (its buffer goes back to the sender's pool).
    pub loss: f64,
    /// Time a packet waits on the sender's side before it enters the ring.
    pub delay: Duration,
    /// Probability that a packet is held back and sent after the next one.
    pub reorder: f64,
    /// Seed of the direction's deterministic PRNG.
    pub seed: u64,
}

impl Impairments {
    fn is_none(&self) -> bool {
        self.loss <= 0.0 && self.reorder <= 0.0 && self.delay.is_zero()
    }
}

/// Configuration of a [`pair`].
#[derive(Clone, Debug)]
pub struct MemConfig {
    /// Packets each ring holds (at least 1).
    pub capacity: usize,
    /// What the packets start with.
    pub medium: Medium,
    /// What [`Port::mtu`] reports (not enforced).
    pub mtu: usize,
    /// Impairments of the first endpoint's sending direction.
    pub a_to_b: Impairments,
    /// Impairments of the second endpoint's sending direction.
    pub b_to_a: Impairments,
    /// Bound of each sender's delay queue; packets beyond it are dropped and counted.
    pub delay_limit: usize,
    /// Bound of each sender's TCP flow table; the oldest flow is evicted beyond it.
    pub flow_limit: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            capacity: DEFAULT_CAPACITY,
            medium: Medium::Ip,
            mtu: 1500,
            a_to_b: Impairments::default(),
            b_to_a: Impairments::default(),
            delay_limit: DEFAULT_DELAY_LIMIT,
            flow_limit: DEFAULT_FLOW_LIMIT,
        }
    }
}

/// Counters of one endpoint: its receiving, and its sending direction's impairments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Packets taken by `send_burst` (including lost, delayed and held-back ones).
    pub sent: u64,
    /// Packets returned by `recv_burst`.
    pub received: u64,
    /// Packets dropped by the loss impairment.
    pub lost: u64,
    /// Packets put on the delay queue.
    pub delayed: u64,
    /// Packets that went out after the packet following them.
    pub reordered: u64,
    /// Times the ring was full: a send stopped early, or a packet had to wait in the delay queue.
    pub ring_full: u64,
    /// Packets dropped because the delay queue was full.
    pub delay_full: u64,
    /// TCP RST segments forged by reset injection.
    pub resets_injected: u64,
}

/// State shared by both endpoints and the control handles.
#[derive(Debug)]
struct Shared {
    /// `rings[0]` carries a → b, `rings[1]` b → a.
    rings: [ArrayQueue<Packet>; 2],
    /// `returns[d]` carries empty buffers back to the sender of `rings[d]`: packets flow one way
    /// in bulk, so without this the sender allocates (and zeroes) a buffer per packet while the
    /// receiver's pool overflows and frees them.
    returns: [ArrayQueue<Packet>; 2],
    /// Per direction: forge RSTs at the sender's next poll.
    reset: [AtomicBool; 2],
    /// Set by [`MemLink::cut`]: everything sent is lost (a dead peer or a cut cable).
    cut: AtomicBool,
}

/// Control handle of a link made by [`pair_with_control`]: cloneable, usable from any thread.
#[derive(Clone, Debug)]
pub struct MemLink {
    shared: Arc<Shared>,
}

impl MemLink {
    /// Makes each endpoint, at its next poll, forge a TCP RST for every TCP flow (IPv4 or IPv6) it
    /// has sent on, with the next sequence number of that flow's sender and, if that sender has
    /// acknowledged anything, its latest acknowledgment. Both directions of a flow are reset once
    /// both endpoints have been polled; a direction that has carried no segment yet (whose sequence
    /// numbers are unknown) gets none. The flow tables are cleared afterwards.
    pub fn inject_reset(&self) {
        for flag in &self.shared.reset {
            flag.store(true, Ordering::Release);
        }
    }

    /// Cuts (`true`) or restores the link: while cut, every packet either endpoint sends is
    /// counted as lost and freed, silently, as with a peer that died or a cable that was pulled.
    pub fn cut(&self, cut: bool) {
        self.shared.cut.store(cut, Ordering::Release);
    }
}

/// One endpoint of a [`pair`]. See the [module docs](self) for how impairments are driven.
#[derive(Debug)]
pub struct MemPort {
    shared: Arc<Shared>,
    /// Index of the ring this endpoint sends on; it receives on the other.
    dir: usize,
    medium: Medium,
    mtu: usize,
    imp: Impairments,
    rng: SplitMix64,
    /// A packet held back by reordering, and when.
    held: Option<(Instant, Packet)>,
    /// Packets waiting to enter the ring, in due order.
    pending: VecDeque<(Instant, Packet)>,
    delay_limit: usize,
    /// TCP flows sent on; only links with a control handle track them.
    flows: Option<FlowTable>,
    stats: MemStats,
    /// The link counters of the port behind the other end, if it publishes them (a splitter).
    link: Option<Arc<super::SharedLinkCounters>>,
}

/// Two connected endpoints without a control handle (no TCP flow tracking, so no per-packet parsing).
pub fn pair(cfg: MemConfig) -> (MemPort, MemPort) {
    let (a, b, _) = build(cfg, false);
    (a, b)
}

/// Two connected endpoints and a control handle for [`MemLink::inject_reset`]. Both endpoints
/// track the TCP flows they send (a parse per packet), which plain [`pair`] does not.
pub fn pair_with_control(cfg: MemConfig) -> (MemPort, MemPort, MemLink) {
    build(cfg, true)
}

fn build(cfg: MemConfig, track: bool) -> (MemPort, MemPort, MemLink) {
    let cap = cfg.capacity.max(1);
    let shared = Arc::new(Shared {
        rings: [ArrayQueue::new(cap), ArrayQueue::new(cap)],
        returns: [ArrayQueue::new(cap), ArrayQueue::new(cap)],
        reset: [AtomicBool::new(false), AtomicBool::new(false)],
        cut: AtomicBool::new(false),
    });
    let end = |dir: usize, mut imp: Impairments| {
        imp.delay = imp.delay.min(MAX_DELAY);
        MemPort {
            shared: Arc::clone(&shared),
            dir,
            medium: cfg.medium,
            mtu: cfg.mtu,
            imp,
            rng: SplitMix64(imp.seed),
            held: None,
            pending: VecDeque::new(),
            delay_limit: cfg.delay_limit,
            flows: track.then(|| FlowTable::new(cfg.flow_limit)),
            stats: MemStats::default(),
            link: None,
        }
    };
    let a = end(0, cfg.a_to_b);
    let b = end(1, cfg.b_to_a);
    (
        a,
        b,
        MemLink {
            shared: Arc::clone(&shared),
        },
    )
}

impl MemPort {
    /// Moves due delayed packets and an overdue held-back packet onto the ring, and forges
    /// requested RSTs. `send_burst` and `recv_burst` do this too.
    pub fn flush_due(&mut self) {
        if self.flows.is_some()
            && self.shared.reset[self.dir].load(Ordering::Relaxed)
            && self.shared.reset[self.dir].swap(false, Ordering::AcqRel)
        {
            self.forge_resets();
        }
        if self.held.is_none() && self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        if let Some((since, _)) = &self.held
            && now.saturating_duration_since(*since) >= REORDER_MAX_HOLD
            && let Some((_, p)) = self.held.take()
        {
            self.deliver(p, now);
        }
        self.drain_pending(now);
    }

    /// Packets this endpoint has taken but not yet put on the ring (delayed or held back).
    pub fn in_flight(&self) -> usize {
        self.pending.len() + usize::from(self.held.is_some())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MemStats {
        self.stats
    }

    /// Puts `p` on the ring, noting the TCP flow; gives it back if the ring is full.
    fn push_ring(&mut self, p: Packet) -> Result<(), Packet> {
        let ring = &self.shared.rings[self.dir];
        // This endpoint is the ring's only producer, so a ring not full now accepts the push.
        if ring.is_full() {
            return Err(p);
        }
        if let Some(flows) = &mut self.flows {
            flows.observe(self.medium, p.data());
        }
        ring.push(p)
    }

    /// Sends a packet that passed loss and reordering: through the delay queue, or straight to the
    /// ring when there is no delay and nothing ahead of it.
    fn deliver(&mut self, p: Packet, now: Instant) {
        let p = if self.imp.delay.is_zero() && self.pending.is_empty() {
            match self.push_ring(p) {
                Ok(()) => return,
                Err(p) => {
                    self.stats.ring_full += 1;
                    p
                }
            }
        } else {
            if !self.imp.delay.is_zero() {
                self.stats.delayed += 1;
            }
            p
        };
        if self.pending.len() >= self.delay_limit {
            self.stats.delay_full += 1;
            return;
        }
        self.pending.push_back((now + self.imp.delay, p));
    }

    fn drain_pending(&mut self, now: Instant) {
        while let Some((due, _)) = self.pending.front() {
            if *due > now {
                break;
            }
            let Some((due, p)) = self.pending.pop_front() else {
                break;
            };
            if let Err(p) = self.push_ring(p) {
                self.stats.ring_full += 1;
                self.pending.push_front((due, p));
                break;
            }
        }
    }

    /// Forges one RST per tracked flow and sends it ahead of anything still waiting.
    fn forge_resets(&mut self) {
        let Some(flows) = &mut self.flows else {
            return;
        };
        let forged: Vec<Packet> = flows
            .map
            .drain()
            .filter_map(|(key, st)| build_rst(self.medium, &key, &st))
            .collect();
        flows.order.clear();
        let now = Instant::now();
        for p in forged {
            self.stats.resets_injected += 1;
            let ring = &self.shared.rings[self.dir];
            let p = if self.pending.is_empty() {
                match ring.push(p) {
                    Ok(()) => continue,
                    Err(p) => p,
                }
            } else {
                p
            };
            if self.pending.len() >= self.delay_limit {
                self.stats.delay_full += 1;
            } else {
                self.pending.push_front((now, p));
            }
        }
    }
}

impl MemPort {
    /// Makes [`link_counters`](Port::link_counters) report what `link` publishes.
    pub fn report_link(&mut self, link: Arc<super::SharedLinkCounters>) {
        self.link = Some(link);
    }
}

impl Port for MemPort {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        self.flush_due();
        let ring = &self.shared.rings[1 - self.dir];
        let mut n = 0;
        while n < max {
            match ring.pop() {
                Some(p) => {
                    out.push(p);
                    n += 1;
                }
                None => break,
            }
        }
        self.stats.received += n as u64;
        // Give the sender as many spare buffers as it gave us packets, if we have them.
        let back = &self.shared.returns[1 - self.dir];
        for _ in 0..n {
            match pool.take_spare() {
                Some(b) => {
                    if let Err(b) = back.push(b) {
                        pool.put(b);
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        self.flush_due();
        // Take back empty buffers the receiver returned, so our pool need not allocate.
        let returned = &self.shared.returns[self.dir];
        for _ in 0..pkts.len() {
            match returned.pop() {
                Some(b) => pool.put(b),
                None => break,
            }
        }
        if self.shared.cut.load(Ordering::Acquire) {
            let n = pkts.len();
            self.stats.lost += n as u64;
            for p in pkts.drain(..) {
                pool.put(p);
            }
            return Ok(n);
        }
        let impaired = !self.imp.is_none();
        // The clock is read only when impairments need it.
        let now = impaired.then(Instant::now);
        let mut sent = 0;
        while !pkts.is_empty() {
            // Without delay the ring is the link's only buffer: backpressure when it (or the queue
            // ahead of it) is full.
            if self.imp.delay.is_zero()
                && (!self.pending.is_empty() || self.shared.rings[self.dir].is_full())
            {
                self.stats.ring_full += 1;
                break;
            }
            let Some(p) = pkts.pop_front() else {
                break;
            };
            let Some(now) = now else {
                // The ring had room (checked above, and this endpoint is its only producer).
                if let Err(p) = self.push_ring(p) {
                    self.stats.ring_full += 1;
                    pkts.push_front(p);
                    break;
                }
                sent += 1;
                continue;
            };
            sent += 1;
            if self.imp.loss > 0.0 && self.rng.chance(self.imp.loss) {
                self.stats.lost += 1;
                pool.put(p);
                continue;
            }
            if let Some((_, h)) = self.held.take() {
                self.deliver(p, now);
                self.deliver(h, now);
                self.stats.reordered += 1;
            } else if self.imp.reorder > 0.0 && self.rng.chance(self.imp.reorder) {
                self.held = Some((now, p));
            } else {
                self.deliver(p, now);
            }
        }
        self.stats.sent += sent as u64;
        Ok(sent)
    }

    fn medium(&self) -> Medium {
        self.medium
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn link_counters(&self) -> super::LinkCounters {
        self.link.as_ref().map(|l| l.load()).unwrap_or_default()
    }
}

/// SplitMix64: tiny, deterministic, good enough to draw impairments.
#[derive(Clone, Copy, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p` (always for `p >= 1`).
    fn chance(&mut self, p: f64) -> bool {
        if p >= 1.0 {
            return true;
        }
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

/// One direction of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

#[derive(Clone, Copy, Debug)]
struct FlowState {
    /// Sequence number the sender uses next (highest seq + length seen).
    next_seq: u32,
    /// Latest acknowledgment the sender sent.
    ack: Option<u32>,
    /// The Ethernet header of the flow's frames (Ethernet medium).
    eth: Option<[u8; ETH_HEADER_LEN]>,
}

/// Flows seen by one sender; bounded, evicting the oldest.
#[derive(Debug)]
struct FlowTable {
    map: HashMap<FlowKey, FlowState>,
    order: VecDeque<FlowKey>,
    limit: usize,
}

/// What one TCP segment tells about its flow.
#[derive(Debug)]
struct Segment {
    key: FlowKey,
    end: u32,
    ack: Option<u32>,
    syn: bool,
    rst: bool,
    eth: Option<[u8; ETH_HEADER_LEN]>,
}

/// `a` is after `b` in sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() > 0
}

impl FlowTable {
    fn new(limit: usize) -> Self {
        FlowTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            limit,
        }
    }

    fn observe(&mut self, medium: Medium, data: &[u8]) {
        let Some(seg) = parse_segment(medium, data) else {
            return;
        };
        // An RST consumes no sequence space and ends the flow; forging another is harmless.
        if seg.rst || self.limit == 0 {
            return;
        }
        if let Some(st) = self.map.get_mut(&seg.key) {
            // A SYN starts a new connection on a reused 4-tuple: forget the old numbers.
            if seg.syn || seq_after(seg.end, st.next_seq) {
                st.next_seq = seg.end;
            }
            if let Some(a) = seg.ack {
                match st.ack {
                    Some(old) if !seg.syn && !seq_after(a, old) => {}
                    _ => st.ack = Some(a),
                }
            } else if seg.syn {
                st.ack = None;
            }
            st.eth = seg.eth;
            return;
        }
        if self.map.len() >= self.limit
            && let Some(oldest) = self.order.pop_front()
        {
            self.map.remove(&oldest);
        }
        self.map.insert(
            seg.key,
            FlowState {
                next_seq: seg.end,
                ack: seg.ack,
                eth: seg.eth,
            },
        );
        self.order.push_back(seg.key);
    }
}

/// Parses an unfragmented IPv4 or IPv6 (no extension headers) TCP segment; None for anything else.
fn parse_segment(medium: Medium, data: &[u8]) -> Option<Segment> {
    let (eth, ip) = match medium {
        Medium::Ip => (None, data),
        Medium::Ethernet => {
            let hdr: [u8; ETH_HEADER_LEN] = data.get(..ETH_HEADER_LEN)?.try_into().ok()?;
            if !matches!([hdr[12], hdr[13]], [0x08, 0x00] | [0x86, 0xdd]) {
                return None;
            }
            (Some(hdr), data.get(ETH_HEADER_LEN..)?)
        }
    };
    let (src, dst, l4) = match ip.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            if p.next_header() != IpProtocol::Tcp || p.more_frags() || p.frag_offset() != 0 {
                return None;
            }
            let l4 = ip.get(usize::from(p.header_len())..usize::from(p.total_len()))?;
            (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()), l4)
        }
        6 => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            if p.next_header() != IpProtocol::Tcp {
                return None;
            }
            let l4 = ip.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(p.payload_len()))?;
            (IpAddr::V6(p.src_addr()), IpAddr::V6(p.dst_addr()), l4)
        }
        _ => return None,
    };
    let t = TcpPacket::new_checked(l4).ok()?;
    let len = t.payload().len() + usize::from(t.syn()) + usize::from(t.fin());
    let seq = t.seq_number().0.cast_unsigned();
    Some(Segment {
        key: FlowKey {
            src,
            dst,
            sport: t.src_port(),
            dport: t.dst_port(),
        },
        end: seq.wrapping_add(u32::try_from(len).ok()?),
        ack: t.ack().then(|| t.ack_number().0.cast_unsigned()),
        syn: t.syn(),
        rst: t.rst(),
        eth,
    })
}

/// An RST from `key.src` to `key.dst` at the flow's next sequence number, checksums filled.
fn build_rst(medium: Medium, key: &FlowKey, st: &FlowState) -> Option<Packet> {
    let tcp = TcpRepr {
        src_port: key.sport,
        dst_port: key.dport,
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(st.next_seq.cast_signed()),
        ack_number: st.ack.map(|a| TcpSeqNumber(a.cast_signed())),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let l2 = match medium {
        Medium::Ip => 0,
        Medium::Ethernet => ETH_HEADER_LEN,
    };
    let l3 = match key.src {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    };
    let total = l2 + l3 + tcp.buffer_len();
    // A small buffer of its own: forging is rare, and the receiver's pool drops odd-sized buffers.
    let mut pkt = Packet::with_size(HEADROOM + total);
    let buf = pkt.prepare(total);
    if medium == Medium::Ethernet {
        buf.get_mut(..ETH_HEADER_LEN)?.copy_from_slice(&st.eth?);
    }
    let ip_buf = buf.get_mut(l2..)?;
    let caps = ChecksumCapabilities::default();
    match (key.src, key.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let repr = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            let mut ip = Ipv4Packet::new_unchecked(ip_buf);
            repr.emit(&mut ip, &caps);
            let mut seg = TcpPacket::new_unchecked(ip.payload_mut());
            tcp.emit(
                &mut seg,
                &IpAddress::Ipv4(src),
                &IpAddress::Ipv4(dst),
                &caps,
            );
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let repr = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            let mut ip = Ipv6Packet::new_unchecked(ip_buf);
            repr.emit(&mut ip);
            let mut seg = TcpPacket::new_unchecked(ip.payload_mut());
            tcp.emit(
                &mut seg,
                &IpAddress::Ipv6(src),
                &IpAddress::Ipv6(dst),
                &caps,
            );
        }
        _ => return None,
    }
    Some(pkt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn numbered(pool: &mut PacketPool, n: u32) -> VecDeque<Packet> {
        (0..n)
            .map(|i| {
                let mut p = pool.get();
                assert!(p.fill_from(&i.to_be_bytes()));
                p
            })
            .collect()
    }

    fn number(p: &Packet) -> u32 {
        u32::from_be_bytes(p.data().try_into().unwrap())
    }

    /// Polls both ends until `want` packets reached `rx` or a generous deadline passes.
    fn collect(tx: &mut MemPort, rx: &mut MemPort, pool: &mut PacketPool, want: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            tx.flush_due();
            rx.recv_burst(pool, &mut out, 64).unwrap();
            got.extend(out.drain(..).map(|p| number(&p)));
            std::thread::yield_now();
        }
        got
    }

    #[test]
    fn endpoints_and_handles_cross_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<MemPort>();
        send_sync::<MemLink>();
        let (a, b, link) = pair_with_control(MemConfig::default());
        let t = std::thread::spawn(move || {
            link.inject_reset();
            (a, b)
        });
        let _ = t.join().unwrap();
    }

    #[test]
    fn crosses_both_ways_in_order() {
        let (mut a, mut b) = pair(MemConfig::default());
        assert_eq!(a.medium(), Medium::Ip);
        assert_eq!(b.mtu(), 1500);
        let mut pool = PacketPool::default();
        let one_way = |tx: &mut MemPort, rx: &mut MemPort, pool: &mut PacketPool| {
            let mut q = numbered(pool, 100);
            assert_eq!(tx.send_burst(pool, &mut q).unwrap(), 100);
            assert!(q.is_empty());
            let mut out = Vec::new();
            assert_eq!(rx.recv_burst(pool, &mut out, 1000).unwrap(), 100);
            assert_eq!(
                out.iter().map(number).collect::<Vec<_>>(),
                (0..100).collect::<Vec<_>>()
            );
            out.into_iter().for_each(|p| pool.put(p));
        };
        one_way(&mut a, &mut b, &mut pool);
        one_way(&mut b, &mut a, &mut pool);
        assert_eq!(a.stats().sent, 100);
        assert_eq!(a.stats().received, 100);
        let mut out = Vec::new();
        assert_eq!(a.recv_burst(&mut pool, &mut out, 10).unwrap(), 0);
    }

    #[test]
    fn a_cut_link_loses_everything_until_restored() {
        let (mut a, mut b, link) = pair_with_control(MemConfig::default());
        let mut pool = PacketPool::default();
        let mut out = Vec::new();
        link.cut(true);
        let mut q = numbered(&mut pool, 10);
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 10);
        assert!(q.is_empty());
        assert_eq!(b.recv_burst(&mut pool, &mut out, 100).unwrap(), 0);
        assert_eq!(a.stats().lost, 10);
        link.cut(false);
        let mut q = numbered(&mut pool, 3);
        a.send_burst(&mut pool, &mut q).unwrap();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 100).unwrap(), 3);
    }

    #[test]
    fn recv_burst_honours_max() {
        let (mut a, mut b) = pair(MemConfig::default());
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 10);
        a.send_burst(&mut pool, &mut q).unwrap();
        let mut out = Vec::new();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 4).unwrap(), 4);
        assert_eq!(b.recv_burst(&mut pool, &mut out, 100).unwrap(), 6);
        assert_eq!(
            out.iter().map(number).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn full_ring_leaves_the_rest_queued() {
        let cfg = MemConfig {
            capacity: 8,
            ..MemConfig::default()
        };
        let (mut a, mut b) = pair(cfg);
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 20);
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 8);
        assert_eq!(q.len(), 12);
        assert_eq!(number(&q[0]), 8);
        assert!(a.stats().ring_full >= 1);
        // Still full: nothing moves.
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 0);
        let mut out = Vec::new();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 100).unwrap(), 8);
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 8);
        assert_eq!(b.recv_burst(&mut pool, &mut out, 100).unwrap(), 8);
        assert_eq!(
            out.iter().map(number).collect::<Vec<_>>(),
            (0..16).collect::<Vec<_>>()
        );
    }

    #[test]
    fn full_loss_delivers_nothing_and_recycles() {
        let mut cfg = MemConfig::default();
        cfg.a_to_b.loss = 1.0;
        let (mut a, mut b) = pair(cfg);
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 50);
        let allocated = pool.allocated();
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 50);
        let mut out = Vec::new();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 100).unwrap(), 0);
        assert_eq!(a.stats().lost, 50);
        // The lost buffers are back in the sender's pool.
        let mut reuse: Vec<Packet> = (0..50).map(|_| pool.get()).collect();
        assert_eq!(pool.allocated(), allocated);
        reuse.clear();
    }

    #[test]
    fn zero_loss_delivers_everything() {
        let mut cfg = MemConfig::default();
        cfg.a_to_b.loss = 0.0;
        cfg.a_to_b.seed = 7;
        let (mut a, mut b) = pair(cfg);
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 500);
        a.send_burst(&mut pool, &mut q).unwrap();
        let mut out = Vec::new();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 1000).unwrap(), 500);
        assert_eq!(a.stats().lost, 0);
    }

    #[test]
    fn partial_loss_is_deterministic_per_seed() {
        let run = |seed| {
            let mut cfg = MemConfig::default();
            cfg.a_to_b.loss = 0.3;
            cfg.a_to_b.seed = seed;
            let (mut a, mut b) = pair(cfg);
            let mut pool = PacketPool::default();
            let mut q = numbered(&mut pool, 1000);
            a.send_burst(&mut pool, &mut q).unwrap();
            let mut out = Vec::new();
            b.recv_burst(&mut pool, &mut out, 2000).unwrap();
            out.iter().map(number).collect::<Vec<_>>()
        };
        let first = run(42);
        assert_eq!(first, run(42));
        assert!(first.len() > 500 && first.len() < 900, "{}", first.len());
        assert!(first.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn reorder_permutes_but_delivers_each_once() {
        let mut cfg = MemConfig::default();
        cfg.a_to_b.reorder = 0.3;
        cfg.a_to_b.seed = 1;
        let (mut a, mut b) = pair(cfg);
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 200);
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 200);
        let got = collect(&mut a, &mut b, &mut pool, 200);
        assert_eq!(got.len(), 200);
        assert_ne!(got, (0..200).collect::<Vec<_>>());
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
        assert!(a.stats().reordered > 0);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn delay_holds_packets_until_due() {
        let delay = Duration::from_millis(5);
        let mut cfg = MemConfig::default();
        cfg.a_to_b.delay = delay;
        let (mut a, mut b) = pair(cfg);
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 10);
        let before_send = Instant::now();
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 10);
        assert_eq!(a.stats().delayed, 10);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < 10 && Instant::now() < deadline {
            a.flush_due();
            b.recv_burst(&mut pool, &mut out, 64).unwrap();
            if !out.is_empty() {
                assert!(
                    Instant::now() >= before_send + delay,
                    "delivered before due"
                );
            }
            got.extend(out.drain(..).map(|p| number(&p)));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn delay_queue_is_bounded() {
        let mut cfg = MemConfig {
            delay_limit: 4,
            ..MemConfig::default()
        };
        cfg.a_to_b.delay = Duration::from_secs(60);
        let (mut a, _b) = pair(cfg);
        let mut pool = PacketPool::default();
        let mut q = numbered(&mut pool, 10);
        assert_eq!(a.send_burst(&mut pool, &mut q).unwrap(), 10);
        assert_eq!(a.in_flight(), 4);
        assert_eq!(a.stats().delay_full, 6);
    }

    struct Seg<'a> {
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        control: TcpControl,
        seq: u32,
        ack: Option<u32>,
        payload: &'a [u8],
    }

    fn build_segment(s: &Seg<'_>) -> Packet {
        let tcp = TcpRepr {
            src_port: s.sport,
            dst_port: s.dport,
            control: s.control,
            seq_number: TcpSeqNumber(s.seq.cast_signed()),
            ack_number: s.ack.map(|a| TcpSeqNumber(a.cast_signed())),
            window_len: 64000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: s.payload,
        };
        let caps = ChecksumCapabilities::default();
        let mut pkt = Packet::with_size(2048);
        match (s.src, s.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let buf = pkt.prepare(IPV4_HEADER_LEN + tcp.buffer_len());
                let mut ip = Ipv4Packet::new_unchecked(buf);
                Ipv4Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                }
                .emit(&mut ip, &caps);
                let mut t = TcpPacket::new_unchecked(ip.payload_mut());
                tcp.emit(&mut t, &src.into(), &dst.into(), &caps);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let buf = pkt.prepare(IPV6_HEADER_LEN + tcp.buffer_len());
                let mut ip = Ipv6Packet::new_unchecked(buf);
                Ipv6Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                }
                .emit(&mut ip);
                let mut t = TcpPacket::new_unchecked(ip.payload_mut());
                tcp.emit(&mut t, &src.into(), &dst.into(), &caps);
            }
            _ => unreachable!(),
        }
        pkt
    }

    /// Parses an RST with verified checksums: (src, dst, sport, dport, seq, ack).
    fn parse_rst(data: &[u8]) -> (IpAddr, IpAddr, u16, u16, u32, Option<u32>) {
        let caps = ChecksumCapabilities::default();
        let (src, dst, l4): (IpAddress, IpAddress, &[u8]) = if data[0] >> 4 == 4 {
            let ip = Ipv4Packet::new_checked(data).unwrap();
            let repr = Ipv4Repr::parse(&ip, &caps).unwrap();
            assert_eq!(repr.next_header, IpProtocol::Tcp);
            (repr.src_addr.into(), repr.dst_addr.into(), ip.payload())
        } else {
            let ip = Ipv6Packet::new_checked(data).unwrap();
            let repr = Ipv6Repr::parse(&ip).unwrap();
            assert_eq!(repr.next_header, IpProtocol::Tcp);
            (repr.src_addr.into(), repr.dst_addr.into(), ip.payload())
        };
        let t = TcpPacket::new_checked(l4).unwrap();
        assert!(t.verify_checksum(&src, &dst));
        let repr = TcpRepr::parse(&t, &src, &dst, &caps).unwrap();
        assert_eq!(repr.control, TcpControl::Rst);
        assert!(repr.payload.is_empty());
        (
            src.into(),
            dst.into(),
            repr.src_port,
            repr.dst_port,
            repr.seq_number.0.cast_unsigned(),
            repr.ack_number.map(|a| a.0.cast_unsigned()),
        )
    }

    fn forged_rsts_for(client: IpAddr, server: IpAddr) {
        let (mut a, mut b, link) = pair_with_control(MemConfig::default());
        let mut pool = PacketPool::default();
        let mut out = Vec::new();
        let (cport, sport) = (40000, 4500);
        let c_isn = 0xffff_fff0_u32; // wraps while the data goes through
        let s_isn = 5000_u32;
        let seg = |from_client: bool, control, seq, ack, payload| {
            let (src, dst, sp, dp) = if from_client {
                (client, server, cport, sport)
            } else {
                (server, client, sport, cport)
            };
            build_segment(&Seg {
                src,
                dst,
                sport: sp,
                dport: dp,
                control,
                seq,
                ack,
                payload,
            })
        };
        let syn = seg(true, TcpControl::Syn, c_isn, None, &[]);
        let syn_ack = seg(
            false,
            TcpControl::Syn,
            s_isn,
            Some(c_isn.wrapping_add(1)),
            &[],
        );
        let data = seg(
            true,
            TcpControl::Psh,
            c_isn.wrapping_add(1),
            Some(s_isn + 1),
            &[7u8; 100],
        );
        // A retransmission of older data must not move the next sequence number back.
        let old = seg(
            true,
            TcpControl::None,
            c_isn.wrapping_add(1),
            Some(s_isn + 1),
            &[7u8; 10],
        );
        let reply = seg(
            false,
            TcpControl::None,
            s_isn + 1,
            Some(c_isn.wrapping_add(101)),
            b"ok",
        );
        a.send_burst(&mut pool, &mut VecDeque::from([syn])).unwrap();
        b.send_burst(&mut pool, &mut VecDeque::from([syn_ack]))
            .unwrap();
        a.send_burst(&mut pool, &mut VecDeque::from([data, old]))
            .unwrap();
        b.send_burst(&mut pool, &mut VecDeque::from([reply]))
            .unwrap();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 10).unwrap(), 3);
        assert_eq!(a.recv_burst(&mut pool, &mut out, 10).unwrap(), 2);
        out.clear();

        link.inject_reset();
        a.flush_due();
        b.flush_due();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 10).unwrap(), 1);
        let to_server = parse_rst(out[0].data());
        assert_eq!(
            to_server,
            (
                client,
                server,
                cport,
                sport,
                c_isn.wrapping_add(101),
                Some(s_isn + 1)
            )
        );
        out.clear();
        assert_eq!(a.recv_burst(&mut pool, &mut out, 10).unwrap(), 1);
        let to_client = parse_rst(out[0].data());
        assert_eq!(
            to_client,
            (
                server,
                client,
                sport,
                cport,
                s_isn + 3,
                Some(c_isn.wrapping_add(101))
            )
        );
        assert_eq!(a.stats().resets_injected, 1);
        assert_eq!(b.stats().resets_injected, 1);
        // Forged once: the tables were cleared.
        out.clear();
        a.flush_due();
        b.flush_due();
        assert_eq!(b.recv_burst(&mut pool, &mut out, 10).unwrap(), 0);
    }

    #[test]
    fn forged_rst_ipv4() {
        forged_rsts_for(
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(192, 0, 2, 2).into(),
        );
    }

    #[test]
    fn forged_rst_ipv6() {
        forged_rsts_for(
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
        );
    }

    #[test]
    fn forged_rst_over_ethernet_keeps_the_mac_header() {
        let cfg = MemConfig {
            medium: Medium::Ethernet,
            ..MemConfig::default()
        };
        let (mut a, mut b, link) = pair_with_control(cfg);
        let mut pool = PacketPool::default();
        let ip = build_segment(&Seg {
            src: Ipv4Addr::new(203, 0, 113, 1).into(),
            dst: Ipv4Addr::new(203, 0, 113, 2).into(),
            sport: 1000,
            dport: 2000,
            control: TcpControl::Syn,
            seq: 77,
            ack: None,
            payload: &[],
        });
        let eth: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let mut frame = pool.get();
        assert!(frame.fill_from(&[&eth[..], ip.data()].concat()));
        a.send_burst(&mut pool, &mut VecDeque::from([frame]))
            .unwrap();
        let mut out = Vec::new();
        b.recv_burst(&mut pool, &mut out, 10).unwrap();
        out.clear();
        link.inject_reset();
        b.recv_burst(&mut pool, &mut out, 10).unwrap();
        assert!(out.is_empty(), "b sent nothing, so it forges nothing");
        a.flush_due();
        b.recv_burst(&mut pool, &mut out, 10).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data()[..14], eth);
        let (.., seq, ack) = parse_rst(&out[0].data()[14..]);
        assert_eq!((seq, ack), (78, None));
    }

    #[test]
    fn flow_table_is_bounded() {
        let cfg = MemConfig {
            flow_limit: 3,
            ..MemConfig::default()
        };
        let (mut a, mut b, link) = pair_with_control(cfg);
        let mut pool = PacketPool::default();
        let mut q: VecDeque<Packet> = (0..10u16)
            .map(|i| {
                build_segment(&Seg {
                    src: Ipv4Addr::new(192, 0, 2, 1).into(),
                    dst: Ipv4Addr::new(192, 0, 2, 2).into(),
                    sport: 1000 + i,
                    dport: 80,
                    control: TcpControl::Syn,
                    seq: 1,
                    ack: None,
                    payload: &[],
                })
            })
            .collect();
        a.send_burst(&mut pool, &mut q).unwrap();
        let mut out = Vec::new();
        b.recv_burst(&mut pool, &mut out, 100).unwrap();
        out.clear();
        link.inject_reset();
        a.flush_due();
        b.recv_burst(&mut pool, &mut out, 100).unwrap();
        let mut ports: Vec<u16> = out.iter().map(|p| parse_rst(p.data()).2).collect();
        ports.sort_unstable();
        assert_eq!(ports, [1007, 1008, 1009]);
    }

    /// A minimal smoltcp device over a byte queue the test shuttles through a MemPort.
    #[derive(Default)]
    struct Dev {
        rx: VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
    }

    struct RxTok(Vec<u8>);
    struct TxTok<'a>(&'a mut Vec<Vec<u8>>);

    impl smoltcp::phy::RxToken for RxTok {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    impl smoltcp::phy::TxToken for TxTok<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut buf = vec![0; len];
            let r = f(&mut buf);
            self.0.push(buf);
            r
        }
    }

    impl smoltcp::phy::Device for Dev {
        type RxToken<'a> = RxTok;
        type TxToken<'a> = TxTok<'a>;

        fn receive(
            &mut self,
            _: smoltcp::time::Instant,
        ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            let p = self.rx.pop_front()?;
            Some((RxTok(p), TxTok(&mut self.tx)))
        }

        fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
            Some(TxTok(&mut self.tx))
        }

        fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
            let mut caps = smoltcp::phy::DeviceCapabilities::default();
            caps.medium = smoltcp::phy::Medium::Ip;
            caps.max_transmission_unit = 1500;
            caps
        }
    }

    struct Host {
        dev: Dev,
        iface: smoltcp::iface::Interface,
        sockets: smoltcp::iface::SocketSet<'static>,
        tcp: smoltcp::iface::SocketHandle,
        port: MemPort,
    }

    impl Host {
        fn new(port: MemPort, addr: Ipv4Addr) -> Self {
            use smoltcp::iface::{Config, Interface, SocketSet};
            use smoltcp::socket::tcp;
            use smoltcp::wire::{HardwareAddress, IpCidr};
            let mut dev = Dev::default();
            let mut iface = Interface::new(
                Config::new(HardwareAddress::Ip),
                &mut dev,
                smoltcp::time::Instant::now(),
            );
            iface.update_ip_addrs(|a| a.push(IpCidr::new(addr.into(), 24)).unwrap());
            let sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 8192]),
                tcp::SocketBuffer::new(vec![0; 8192]),
            );
            let mut sockets = SocketSet::new(Vec::new());
            let tcp = sockets.add(sock);
            Host {
                dev,
                iface,
                sockets,
                tcp,
                port,
            }
        }

        fn socket(&mut self) -> &mut smoltcp::socket::tcp::Socket<'static> {
            self.sockets.get_mut(self.tcp)
        }

        fn poll(&mut self, pool: &mut PacketPool) {
            let mut out = Vec::new();
            self.port.recv_burst(pool, &mut out, 64).unwrap();
            for p in out {
                self.dev.rx.push_back(p.data().to_vec());
                pool.put(p);
            }
            self.iface.poll(
                smoltcp::time::Instant::now(),
                &mut self.dev,
                &mut self.sockets,
            );
            let mut q: VecDeque<Packet> = self
                .dev
                .tx
                .drain(..)
                .map(|b| {
                    let mut p = pool.get();
                    assert!(p.fill_from(&b));
                    p
                })
                .collect();
            self.port.send_burst(pool, &mut q).unwrap();
            assert!(q.is_empty());
        }
    }

    #[test]
    fn injected_reset_closes_real_tcp_connections() {
        use smoltcp::socket::tcp::State;
        let (a, b, link) = pair_with_control(MemConfig::default());
        let mut pool = PacketPool::default();
        let mut client = Host::new(a, Ipv4Addr::new(192, 0, 2, 1));
        let mut server = Host::new(b, Ipv4Addr::new(192, 0, 2, 2));
        server.socket().listen(4500).unwrap();
        let cx = client.iface.context();
        client
            .sockets
            .get_mut::<smoltcp::socket::tcp::Socket>(client.tcp)
            .connect(cx, (Ipv4Addr::new(192, 0, 2, 2), 4500), 40000)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = false;
        let mut received = 0;
        while received < 5 && Instant::now() < deadline {
            client.poll(&mut pool);
            server.poll(&mut pool);
            if !sent && client.socket().may_send() {
                assert_eq!(client.socket().send_slice(b"hello").unwrap(), 5);
                sent = true;
            }
            if server.socket().can_recv() {
                received += server.socket().recv(|b| (b.len(), b.len())).unwrap();
            }
        }
        assert_eq!(received, 5);
        assert_eq!(client.socket().state(), State::Established);
        assert_eq!(server.socket().state(), State::Established);

        link.inject_reset();
        while (client.socket().is_open() || server.socket().is_open()) && Instant::now() < deadline
        {
            client.poll(&mut pool);
            server.poll(&mut pool);
        }
        assert_eq!(client.socket().state(), State::Closed);
        assert_eq!(server.socket().state(), State::Closed);
        assert!(client.port.stats().resets_injected >= 1);
        assert!(server.port.stats().resets_injected >= 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever bytes pass a tracking link, nothing panics and they arrive unchanged.
        #[test]
        fn arbitrary_bytes_pass_a_tracking_link(
            first in prop_oneof![Just(0x45u8), Just(0x60u8), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..120),
            ethernet in any::<bool>(),
        ) {
            let medium = if ethernet { Medium::Ethernet } else { Medium::Ip };
            let (mut a, mut b, link) =
                pair_with_control(MemConfig { medium, ..MemConfig::default() });
            let mut pool = PacketPool::default();
            let mut bytes = vec![first];
            bytes.extend_from_slice(&rest);
            let mut p = pool.get();
            prop_assert!(p.fill_from(&bytes));
            a.send_burst(&mut pool, &mut VecDeque::from([p])).unwrap();
            let mut out = Vec::new();
            prop_assert_eq!(b.recv_burst(&mut pool, &mut out, 4).unwrap(), 1);
            prop_assert_eq!(out[0].data(), &bytes[..]);
            link.inject_reset();
            a.flush_due();
            out.clear();
            b.recv_burst(&mut pool, &mut out, 4).unwrap();
        }
    }
}
