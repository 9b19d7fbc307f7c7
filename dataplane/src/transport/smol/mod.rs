//! A userspace TCP transport on smoltcp 0.14 over a [`Port`] of IP packets (TUN, mem) or
//! Ethernet frames (TAP).
//!
//! smoltcp scans every socket of a `SocketSet` per packet, so this module gives each connection
//! its own tiny `Interface` and a `SocketSet` holding only that connection's socket, and puts an
//! O(1) demux in front:
//! - ingress: a burst is read from the port, each packet's IP + TCP ports are peeked at and
//!   looked up in a hash map 4-tuple → slot (std SipHash: keyed, so not floodable); packets are
//!   grouped per slot (sorted by slot, then arrival) and each group is polled through its
//!   connection's interface only;
//! - connections touched by the API (send/recv/close/abort/connect) are polled once per
//!   [`poll`](Transport::poll); connections whose `poll_at` is due come off a binary heap of
//!   `(poll_at, slot, generation)` whose stale entries are skipped; connections that could not
//!   transmit because the outgoing queue was full wait in a ready queue;
//! - egress goes into one bounded outgoing queue drained to the port in bursts. When it is full,
//!   smoltcp's `transmit` gets `None` (data stays in the socket) and no new burst is read.
//!
//! So a packet costs the same with 10,000 idle connections as with one.
//!
//! Choices:
//! - Nagle off and delayed ACK off by default (throughput, and IKE/ESP records are latency
//!   sensitive); Cubic (the crate feature) is selected explicitly; window scaling follows from
//!   the rx buffer size; checksums are computed in software unless `checksum_offload` says the
//!   port does them.
//! - Every interface gets its own `random_seed` from getrandom, so ISNs are not predictable, and
//!   ephemeral ports start at a random point of 49152..=65535.
//! - smoltcp time is microseconds since a `std::time::Instant` taken at construction.
//! - `DeviceCapabilities::max_burst_size = burst`: smoltcp clamps the advertised window to
//!   `burst * mss`; with the defaults (64 × 1460 > 65535) it changes nothing.
//! - Segments that match no connection are answered with an RST (as a TCP host does) when they
//!   are addressed to one of our addresses, are well-formed and are not RSTs themselves; SYNs to
//!   a listener while the table is full are dropped silently so the peer retries. Everything
//!   else that is not a plain (unfragmented, no IPv6 extension header) TCP segment is dropped.
//! - Accepting (RFC 9329 §10: a Responder is open to SYN floods). A SYN gets no socket: it gets
//!   an entry in a SYN cache (`accept.rs`, a few hundred bytes) and a SYN-ACK made by a spare
//!   socket configured like an accepted one. Only the ACK that completes the handshake (with our
//!   ISN, so the source address is real) builds the connection with its full buffers, by
//!   replaying the SYN into a socket whose interface has the same random seed. Half-open entries
//!   are capped per listener and per source (`half_open_per_*`), connections the engine has not
//!   yet called [`mark_trusted`](Transport::mark_trusted) on are capped likewise
//!   (`untrusted_per_*`); a SYN or handshake ACK over a cap is dropped and counted, never
//!   answered. Why not "small buffers that grow once trusted": see `accept.rs` (the window scale
//!   is fixed at the SYN-ACK and smoltcp ties it to the buffer it was built with).
//! - A half-open accept or an unanswered connect gives up after `handshake_timeout`. A closed or
//!   aborted connection lingers invisibly (its `ConnId` is dead once `Down` is out) until smoltcp
//!   finishes FIN/TIME-WAIT (10 s) or `linger` passes; data arriving after a local close resets
//!   it (as Linux does). A peer's FIN closes our side once the received bytes are read, then
//!   `Down { Fin }`.
//! - Ethernet (TAP) ports get a thin layer in front (`eth.rs`): header strip/add, ARP for IPv4
//!   (answering for `local_addrs` and listening addresses, resolving destinations or `gateway`),
//!   neighbors learned from received frames. No NDP: IPv6 over Ethernet only answers peers
//!   that already know our MAC, and `connect` to IPv6 is refused there.

mod accept;
mod demux;
mod device;
mod eth;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{DeviceCapabilities, Medium as SmolMedium};
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{ETHERNET_HEADER_LEN, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use self::accept::{Due, SynCache, Tally};
use self::demux::{Key, Seg, SynInfo};
use self::device::{CapsOnly, Dev};
use super::{CloseReason, ConnId, Refusals, TcpRole, Transport, TransportEvent, source_group};
use crate::port::{DEFAULT_BUF_SIZE, HEADROOM, Medium, Packet, PacketPool, Port};

/// Smallest and largest IP MTU accepted (smoltcp subtracts headers from it unchecked).
const MIN_MTU: usize = 576;
const MAX_MTU: usize = 65535;
/// smoltcp panics on receive buffers above 1 GiB.
const MAX_BUFFER: usize = 1 << 30;
/// Listening endpoints are few (port 4500 on a handful of addresses).
const MAX_LISTENERS: usize = 256;
/// IANA dynamic port range.
const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: u32 = 16384;

/// Settings of a [`SmolTransport`]. MTU and MSS come from the port.
#[derive(Clone, Debug)]
pub struct SmolConfig {
    /// Our addresses: the default source for `connect`, and the addresses a wildcard `listen`
    /// accepts on and RSTs are sent from.
    pub local_addrs: Vec<IpAddr>,
    /// Receive buffer per connection (bytes, at most 1 GiB); sets the window scale. Accepted
    /// connections get it only once their handshake completes; one more of this size (never
    /// written) answers SYNs once something listens.
    pub rx_buffer: usize,
    /// Send buffer per connection (bytes).
    pub tx_buffer: usize,
    /// Connection slots, including lingering closed connections; half-open accepts (SYN-cache
    /// entries) reserve one each.
    pub max_connections: usize,
    /// Half-open accepts (SYN answered, no ACK yet) per listening endpoint. Each costs a SYN-cache
    /// entry (248 bytes, about 500 with hash map slack; no socket, no buffers), so the cap bounds
    /// SYN-ACK work and reserved slots more than memory; past it a SYN flood is dropped while
    /// established connections carry on.
    pub half_open_per_listener: usize,
    /// Half-open accepts per source (IPv4 address, IPv6 /64), so one flooding source cannot take
    /// a listener's whole half-open budget.
    pub half_open_per_source: usize,
    /// Accepted connections past the handshake that are not yet trusted
    /// ([`Transport::mark_trusted`]), per listening endpoint. Each holds `rx_buffer + tx_buffer`
    /// bytes, so this caps what peers that merely completed a handshake can make us allocate:
    /// `untrusted_per_listener × (rx_buffer + tx_buffer)` per listener.
    pub untrusted_per_listener: usize,
    /// Untrusted accepted connections per source (IPv4 address, IPv6 /64).
    pub untrusted_per_source: usize,
    /// Packets read from the port per poll, and smoltcp's `max_burst_size`.
    pub burst: usize,
    /// Outgoing queue bound (packets) before smoltcp is refused; reading pauses above it.
    pub out_queue: usize,
    /// Nagle's algorithm.
    pub nagle: bool,
    /// Delayed ACK.
    pub ack_delay: Option<Duration>,
    /// Keep-alive interval on established connections.
    pub keepalive: Option<Duration>,
    /// Abort an established connection after this long without hearing from the peer (keep it
    /// above `keepalive`, or idle connections die).
    pub timeout: Option<Duration>,
    /// Give up a connect or a half-open accept after this long.
    pub handshake_timeout: Duration,
    /// Longest a locally closed connection lingers (FIN exchange) before it is reset.
    pub linger: Duration,
    /// Ethernet ports: our MAC (random locally administered if `None`).
    pub mac: Option<[u8; 6]>,
    /// Ethernet ports: IPv4 next hop for destinations we have not heard from (`None`: ARP for
    /// the destination itself, i.e. every peer is on-link).
    pub gateway: Option<Ipv4Addr>,
    /// The port checks and fills IP/TCP checksums itself (a NIC with checksum offload, or an
    /// in-memory link that cannot corrupt packets): smoltcp neither computes nor verifies them.
    /// Off by default; never turn it on for TUN/TAP or anything that crosses a real wire.
    pub checksum_offload: bool,
    /// Set when the port is shared by several workers through a steering splitter: connections
    /// this transport opens get an ephemeral port whose 4-tuple hashes to this worker, so the
    /// replies are steered back to it.
    pub steer: Option<crate::port::steer::Steer>,
}

impl Default for SmolConfig {
    fn default() -> Self {
        SmolConfig {
            local_addrs: Vec::new(),
            rx_buffer: 1 << 20,
            tx_buffer: 1 << 20,
            max_connections: 65536,
            // A legitimate client needs one half-open connection for about one RTT; 1024 per
            // listener absorbs a reconnect storm of that many clients, 64 per address covers a
            // NAT with many clients reconnecting at once.
            half_open_per_listener: 1024,
            half_open_per_source: 64,
            // 2 MiB each with the default buffers: at most 512 MiB per listener, 64 MiB per
            // address, held by peers that have not yet sent a valid prefix and frame (the engine
            // trusts a connection about one RTT after it is up).
            untrusted_per_listener: 256,
            untrusted_per_source: 32,
            burst: 64,
            out_queue: 256,
            nagle: false,
            ack_delay: None,
            keepalive: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(120)),
            handshake_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(60),
            mac: None,
            gateway: None,
            checksum_offload: false,
            steer: None,
        }
    }
}

/// Counters of a [`SmolTransport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmolStats {
    /// Packets read from the port.
    pub packets_in: u64,
    /// Packets the port took.
    pub packets_out: u64,
    /// Packets that were not an unfragmented TCP segment (or were garbage).
    pub malformed: u64,
    /// Non-SYN segments matching no connection.
    pub no_conn: u64,
    /// SYNs to an address/port nobody listens on.
    pub syn_no_listener: u64,
    /// SYNs to a listener dropped because `max_connections` slots were in use (half-open accepts
    /// included).
    pub syn_dropped_full: u64,
    /// SYNs dropped because their listener had `half_open_per_listener` half-open accepts.
    pub half_open_refused_listener: u64,
    /// SYNs dropped because their source had `half_open_per_source` half-open accepts.
    pub half_open_refused_source: u64,
    /// SYNs and handshake ACKs dropped because the listener had `untrusted_per_listener`
    /// untrusted connections (a dropped ACK leaves the half-open entry: the peer's next segment
    /// tries again).
    pub untrusted_refused_listener: u64,
    /// The same for `untrusted_per_source`.
    pub untrusted_refused_source: u64,
    /// SYN-ACKs sent again for half-open accepts (timer or retransmitted SYN).
    pub synack_retransmits: u64,
    /// ACKs to a half-open accept that did not acknowledge our SYN-ACK (answered with an RST,
    /// RFC 9293 §3.10.7.4).
    pub handshake_bad_ack: u64,
    /// Handshakes abandoned because replaying the SYN gave another initial sequence number than
    /// the SYN-ACK we sent (smoltcp changed how it draws it; stays 0).
    pub synack_mismatch: u64,
    /// RSTs we generated for segments without a connection.
    pub rst_sent: u64,
    /// `Up` events.
    pub conns_opened: u64,
    /// `Down` events.
    pub conns_closed: u64,
    /// Half-open accepts that died before `Up` (RST, timeout, bad SYN).
    pub embryonic_dropped: u64,
    /// Flushes that left packets queued because the port was full.
    pub port_backpressure: u64,
    /// Per-connection interface polls.
    pub iface_polls: u64,
    /// Ethernet: ARP requests sent.
    pub arp_requests: u64,
    /// Ethernet: ARP replies sent.
    pub arp_replies: u64,
    /// Ethernet: frames dropped on input (not for us, unknown type, malformed).
    pub frames_dropped: u64,
    /// Ethernet: IP packets dropped on output for lack of a neighbor.
    pub no_neighbor: u64,
}

/// What accepted connections hold now ([`SmolTransport::load`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmolLoad {
    /// SYNs answered whose handshake has not completed (SYN-cache entries, no buffers).
    pub half_open: usize,
    /// Accepted connections past the handshake not yet marked trusted, until their slot is free.
    pub untrusted: usize,
    /// Bytes of TCP socket buffers allocated: every connection's `rx_buffer + tx_buffer`, and
    /// the SYN answerer's receive buffer once something listened.
    pub buffer_bytes: usize,
    /// Bytes held by the SYN cache (entries and timers; hash map overhead aside).
    pub half_open_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepted: the SYN was replayed into its socket and the handshake ACK is on its way to
    /// it; no `ConnId` handed out yet.
    Embryonic,
    /// `connect` called, `Up` not yet emitted.
    Connecting,
    /// `Up` emitted.
    Up,
    /// `Down` emitted; finishing FIN/RST/TIME-WAIT before the slot is freed.
    Zombie,
}

struct Conn {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    key: Key,
    role: TcpRole,
    phase: Phase,
    /// Time (µs) of this connection's live heap entry.
    timer_at: Option<i64>,
    /// Queued in `dirty` / `ready` / `readable` (avoids duplicates).
    dirty: bool,
    ready: bool,
    readable: bool,
    /// An RST was fed since the last poll: tells a reset from a timeout.
    saw_rst: bool,
    /// Accepted and not yet trusted: the listener and source group it is counted under.
    untrusted: Option<((IpAddr, u16), IpAddr)>,
    /// Socket buffer bytes (rx + tx capacity).
    buf_bytes: usize,
    polls: u64,
}

impl Conn {
    fn sock(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(self.handle)
    }

    fn sock_ref(&self) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket<'static>>(self.handle)
    }

    fn visible(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Up)
    }
}

struct Slot {
    generation: u32,
    conn: Option<Box<Conn>>,
}

/// The socket that answers SYNs for the SYN cache. Built like an accepted connection's (same
/// receive capacity, so the same window scale and window in the SYN-ACK), it only ever sees
/// payload-free SYNs, so its buffers are never written.
struct Answerer {
    sockets: SocketSet<'static>,
    handle: SocketHandle,
}

/// Random bytes from getrandom, fetched 256 at a time.
struct Entropy {
    buf: [u8; 256],
    pos: usize,
}

impl Entropy {
    fn new() -> io::Result<Self> {
        let mut e = Entropy {
            buf: [0; 256],
            pos: 0,
        };
        e.refill()?;
        Ok(e)
    }

    fn refill(&mut self) -> io::Result<()> {
        getrandom::fill(&mut self.buf).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
        self.pos = 0;
        Ok(())
    }

    fn u64(&mut self) -> io::Result<u64> {
        if self.pos + 8 > self.buf.len() {
            self.refill()?;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
        self.pos += 8;
        Ok(u64::from_le_bytes(b))
    }
}

fn smol_duration(d: Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn unicast(ip: IpAddr) -> bool {
    IpAddress::from(ip).is_unicast()
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("smol transport: {msg}"),
    )
}

fn dead() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "smol transport: no such connection",
    )
}

/// TCP over smoltcp with one interface per connection behind an O(1) 4-tuple demux.
pub struct SmolTransport<P: Port> {
    port: P,
    pool: PacketPool,
    cfg: SmolConfig,
    caps: DeviceCapabilities,
    base: Instant,
    now: SmolInstant,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_use: usize,
    visible: usize,
    map: HashMap<Key, u32>,
    listeners: HashSet<(IpAddr, u16)>,
    timers: BinaryHeap<Reverse<(i64, u32, u32)>>,
    dirty: Vec<(u32, u32)>,
    ready: VecDeque<(u32, u32)>,
    readable: Vec<(u32, u32)>,
    events: Vec<TransportEvent>,
    out: VecDeque<Packet>,
    batch: Vec<Packet>,
    staged: Vec<(u32, u32, Packet)>,
    dev_rx: VecDeque<Packet>,
    spent: Vec<Packet>,
    entropy: Entropy,
    stats: SmolStats,
    eth: Option<eth::Eth>,
    syn_cache: SynCache,
    untrusted: Tally,
    buffer_bytes: usize,
    answerer: Option<Answerer>,
}

impl<P: Port> fmt::Debug for SmolTransport<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmolTransport")
            .field("slots_in_use", &self.in_use)
            .field("connections", &self.visible)
            .field("listeners", &self.listeners.len())
            .field("out_queued", &self.out.len())
            .field("load", &self.load())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: Port> SmolTransport<P> {
    /// A transport on `port` (IP packets, or Ethernet frames with ARP for IPv4).
    pub fn new(port: P, cfg: SmolConfig) -> io::Result<Self> {
        let mut entropy = Entropy::new()?;
        let (mtu, eth) = match port.medium() {
            Medium::Ip => (port.mtu(), None),
            Medium::Ethernet => {
                let mac = match cfg.mac {
                    Some(mac) => mac,
                    None => {
                        let r = entropy.u64()?.to_le_bytes();
                        // Locally administered, unicast.
                        [(r[0] & 0xfe) | 0x02, r[1], r[2], r[3], r[4], r[5]]
                    }
                };
                if mac[0] & 1 != 0 {
                    return Err(invalid("MAC address is not unicast"));
                }
                let v4 = cfg
                    .local_addrs
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                let eth = eth::Eth::new(mac, v4, cfg.gateway);
                (port.mtu().saturating_sub(ETHERNET_HEADER_LEN), Some(eth))
            }
        };
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(invalid("IP MTU outside 576..=65535"));
        }
        if cfg.rx_buffer == 0 || cfg.rx_buffer > MAX_BUFFER || cfg.tx_buffer == 0 {
            return Err(invalid(
                "rx_buffer must be 1..=1 GiB and tx_buffer non-zero",
            ));
        }
        if cfg.max_connections == 0 || u32::try_from(cfg.max_connections).is_err() {
            return Err(invalid("max_connections must be 1..=u32::MAX"));
        }
        if cfg.burst == 0 || cfg.out_queue == 0 {
            return Err(invalid("burst and out_queue must be non-zero"));
        }
        if cfg.half_open_per_listener == 0
            || cfg.half_open_per_source == 0
            || cfg.untrusted_per_listener == 0
            || cfg.untrusted_per_source == 0
        {
            return Err(invalid("half-open and untrusted caps must be non-zero"));
        }
        if let Some(ip) = cfg.local_addrs.iter().find(|ip| !unicast(**ip)) {
            return Err(invalid(&format!("local address {ip} is not unicast")));
        }
        let mut caps = DeviceCapabilities::default();
        caps.medium = SmolMedium::Ip;
        caps.max_transmission_unit = mtu;
        caps.max_burst_size = Some(cfg.burst);
        if cfg.checksum_offload {
            caps.checksum = smoltcp::phy::ChecksumCapabilities::ignored();
        }
        let buf_size = DEFAULT_BUF_SIZE.max(HEADROOM + mtu + 64);
        let pool = PacketPool::new(buf_size, cfg.out_queue + 2 * cfg.burst);
        Ok(SmolTransport {
            port,
            pool,
            caps,
            base: Instant::now(),
            now: SmolInstant::ZERO,
            slots: Vec::new(),
            free: Vec::new(),
            in_use: 0,
            visible: 0,
            map: HashMap::new(),
            listeners: HashSet::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            ready: VecDeque::new(),
            readable: Vec::new(),
            events: Vec::new(),
            out: VecDeque::with_capacity(cfg.out_queue + cfg.burst),
            batch: Vec::with_capacity(cfg.burst),
            staged: Vec::with_capacity(cfg.burst),
            dev_rx: VecDeque::with_capacity(cfg.burst),
            spent: Vec::with_capacity(cfg.burst),
            entropy,
            stats: SmolStats::default(),
            eth,
            syn_cache: SynCache::default(),
            untrusted: Tally::default(),
            buffer_bytes: 0,
            answerer: None,
            cfg,
        })
    }

    /// Half-open and untrusted accepts and the buffer memory they and everything else hold.
    pub fn load(&self) -> SmolLoad {
        SmolLoad {
            half_open: self.syn_cache.len(),
            untrusted: self.untrusted.total(),
            buffer_bytes: self.buffer_bytes,
            half_open_bytes: self.syn_cache.bytes(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SmolStats {
        let mut s = self.stats;
        if let Some(eth) = &self.eth {
            s.arp_requests = eth.stats.arp_requests;
            s.arp_replies = eth.stats.arp_replies;
            s.frames_dropped = eth.stats.frames_dropped;
            s.no_neighbor = eth.stats.no_neighbor;
        }
        s
    }

    /// Our MAC address on an Ethernet port.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.eth.as_ref().map(eth::Eth::mac)
    }

    /// 4-tuples in use: every occupied slot (lingering ones included) and half-open accept.
    pub fn tuples(&self) -> usize {
        self.map.len() + self.syn_cache.len()
    }

    /// The port.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// The port, mutable.
    pub fn port_mut(&mut self) -> &mut P {
        &mut self.port
    }

    fn smol_now(&self, now: Instant) -> SmolInstant {
        let us = now.saturating_duration_since(self.base).as_micros();
        let t = SmolInstant::from_micros(i64::try_from(us).unwrap_or(i64::MAX));
        // smoltcp's timers assume time never goes backwards.
        t.max(self.now)
    }

    fn conn_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize)?.conn.as_deref_mut()
    }

    /// The connection `id` names, if it is still the caller's (not stale, no `Down` yet).
    fn live(&self, id: ConnId) -> Option<&Conn> {
        let s = self.slots.get(id.slot as usize)?;
        let c = s.conn.as_deref()?;
        (s.generation == id.generation && c.visible()).then_some(c)
    }

    fn live_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let c = s.conn.as_deref_mut()?;
        if c.visible() { Some(c) } else { None }
    }

    fn mark_dirty(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = s.generation;
        if let Some(c) = s.conn.as_deref_mut()
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push((slot, generation));
        }
    }

    fn is_local(&self, ip: IpAddr, port: u16) -> bool {
        self.cfg.local_addrs.contains(&ip) || self.listeners.contains(&(ip, port))
    }

    /// The listener a SYN to `ip:port` belongs to: the one on that address, else a wildcard one
    /// if `ip` is ours.
    fn listener_of(&self, ip: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        if self.listeners.contains(&(ip, port)) {
            return Some((ip, port));
        }
        let any = match ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        (self.listeners.contains(&(any, port)) && self.cfg.local_addrs.contains(&ip))
            .then_some((any, port))
    }

    /// An interface for one connection from `local`, drawing ISNs from `seed`.
    fn make_iface(
        caps: &DeviceCapabilities,
        now: SmolInstant,
        local: IpAddr,
        seed: u64,
    ) -> Interface {
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut CapsOnly(caps), now);
        // Prefix 0: every destination is on-link, so no route is needed on Medium::Ip.
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(local.into(), 0));
        });
        iface
    }

    /// A socket with our options and buffers of `rx` and `tx` bytes (`rx` sets the window scale).
    fn make_socket(cfg: &SmolConfig, rx: usize, tx: usize) -> tcp::Socket<'static> {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; rx]),
            tcp::SocketBuffer::new(vec![0u8; tx]),
        );
        sock.set_nagle_enabled(cfg.nagle);
        sock.set_ack_delay(cfg.ack_delay.map(smol_duration));
        sock.set_congestion_control(CongestionControl::Cubic);
        sock.set_timeout(Some(smol_duration(cfg.handshake_timeout)));
        // Set before listen/connect: set on an idle established socket it fires at once.
        sock.set_keep_alive(cfg.keepalive.map(smol_duration));
        sock
    }

    /// Takes a free slot and builds its interface and socket. The caller starts the socket.
    /// `seed` is the interface's random seed (a fresh one if `None`).
    fn new_conn(
        &mut self,
        key: Key,
        role: TcpRole,
        phase: Phase,
        seed: Option<u64>,
    ) -> io::Result<u32> {
        if self.in_use >= self.cfg.max_connections {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "smol transport: max_connections reached",
            ));
        }
        let seed = match seed {
            Some(seed) => seed,
            None => self.entropy.u64()?,
        };
        let iface = Self::make_iface(&self.caps, self.now, key.local, seed);
        let sock = Self::make_socket(&self.cfg, self.cfg.rx_buffer, self.cfg.tx_buffer);
        let buf_bytes = self.cfg.rx_buffer + self.cfg.tx_buffer;
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        let conn = Box::new(Conn {
            iface,
            sockets,
            handle,
            key,
            role,
            phase,
            timer_at: None,
            dirty: false,
            ready: false,
            readable: false,
            saw_rst: false,
            untrusted: None,
            buf_bytes,
            polls: 0,
        });
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                // In range: max_connections fits in u32.
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                slot
            }
        };
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.conn = Some(conn);
        }
        self.map.insert(key, slot);
        self.in_use += 1;
        self.buffer_bytes += buf_bytes;
        Ok(slot)
    }

    fn free_slot(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if let Some(conn) = s.conn.take() {
            self.map.remove(&conn.key);
            s.generation = s.generation.wrapping_add(1);
            self.free.push(slot);
            self.in_use = self.in_use.saturating_sub(1);
            self.buffer_bytes = self.buffer_bytes.saturating_sub(conn.buf_bytes);
            if let Some((listener, group)) = conn.untrusted {
                self.untrusted.remove(listener, group);
            }
        }
        // Freed connections leave stale entries behind; a worker that never calls `readable`,
        // or a port that stays full, must not let them pile up.
        let limit = 2 * self.in_use + 64;
        if self.readable.len() > limit || self.ready.len() > limit {
            let slots = &self.slots;
            let valid = |&(slot, generation): &(u32, u32)| {
                slots
                    .get(slot as usize)
                    .is_some_and(|s| s.generation == generation && s.conn.is_some())
            };
            self.readable.retain(valid);
            self.ready.retain(valid);
        }
    }

    /// A connection or a half-open accept has this 4-tuple.
    fn tuple_in_use(&self, key: &Key) -> bool {
        self.map.contains_key(key) || self.syn_cache.get(key).is_some()
    }

    fn pick_port(&mut self, local: IpAddr, remote: IpAddr, rport: u16) -> io::Result<u16> {
        let start = (self.entropy.u64()? % u64::from(EPHEMERAL_COUNT)) as u32;
        for i in 0..EPHEMERAL_COUNT {
            // < 16384, so the sum stays a u16.
            let lport = EPHEMERAL_FIRST + ((start + i) % EPHEMERAL_COUNT) as u16;
            let key = Key {
                local,
                lport,
                remote,
                rport,
            };
            let ours = self
                .cfg
                .steer
                .is_none_or(|s| s.owns(local, lport, remote, rport));
            if ours && !self.tuple_in_use(&key) {
                return Ok(lport);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "smol transport: no free ephemeral port",
        ))
    }

    /// Sends what the port takes. A port error leaves the queue intact.
    fn flush(&mut self) -> io::Result<()> {
        let queue = match &mut self.eth {
            Some(eth) => {
                let cap = self.cfg.out_queue + self.cfg.burst;
                eth.egress(&mut self.out, &mut self.pool, cap, self.now);
                &mut eth.framed
            }
            None => &mut self.out,
        };
        if queue.is_empty() {
            return Ok(());
        }
        let sent = self.port.send_burst(&mut self.pool, queue)?;
        self.stats.packets_out += sent as u64;
        if !queue.is_empty() {
            self.stats.port_backpressure += 1;
        }
        Ok(())
    }

    /// Reads one burst, demultiplexes it and polls the connections it touched.
    fn ingress(&mut self) -> io::Result<()> {
        // Room for one reply per packet read, so reply tokens never overrun the bound.
        let framed = self.eth.as_ref().map_or(0, |e| e.framed.len());
        if self.out.len() > self.cfg.out_queue || framed > self.cfg.out_queue {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let res = self
            .port
            .recv_burst(&mut self.pool, &mut batch, self.cfg.burst);
        self.stats.packets_in += batch.len() as u64;
        let mut staged = std::mem::take(&mut self.staged);
        // Bulk bursts are mostly one connection: remember the last lookup (no slot is freed
        // during demux, so it stays valid for the burst).
        let mut last = None;
        for (i, pkt) in batch.drain(..).enumerate() {
            let pkt = match &mut self.eth {
                Some(eth) => match eth.ingress(pkt, &mut self.pool, self.now) {
                    Some(ip) => ip,
                    None => continue,
                },
                None => pkt,
            };
            // Bursts are far below 2^32 packets.
            self.demux(i as u32, pkt, &mut staged, &mut last);
        }
        self.batch = batch;
        // By slot, then arrival: each connection sees its packets in order.
        staged.sort_unstable_by_key(|&(slot, idx, _)| (slot, idx));
        let mut it = staged.drain(..).peekable();
        while let Some((slot, _, pkt)) = it.next() {
            self.dev_rx.push_back(pkt);
            while let Some((_, _, pkt)) = it.next_if(|next| next.0 == slot) {
                self.dev_rx.push_back(pkt);
            }
            self.poll_conn(slot);
        }
        drop(it);
        self.staged = staged;
        res.map(|_| ())
    }

    fn demux(
        &mut self,
        idx: u32,
        pkt: Packet,
        staged: &mut Vec<(u32, u32, Packet)>,
        last: &mut Option<(Key, u32)>,
    ) {
        let Some(seg) = demux::parse(pkt.data()) else {
            self.stats.malformed += 1;
            self.pool.put(pkt);
            return;
        };
        let found = match *last {
            Some((key, slot)) if key == seg.key => Some(slot),
            _ => self.map.get(&seg.key).copied(),
        };
        if let Some(slot) = found {
            *last = Some((seg.key, slot));
            if let Some(c) = self.conn_mut(slot) {
                c.saw_rst |= seg.rst;
            }
            staged.push((slot, idx, pkt));
            return;
        }
        let key = seg.key;
        if let Some(listener) = self.syn_cache.get(&key).map(|e| e.listener) {
            self.half_open_segment(idx, pkt, &seg, listener, staged);
            return;
        }
        if seg.syn && !seg.ack && !seg.rst {
            if let Some(listener) = self.listener_of(key.local, key.lport)
                && unicast(key.local)
                && unicast(key.remote)
            {
                self.on_syn(key, listener, pkt);
                return;
            }
            self.stats.syn_no_listener += 1;
        } else {
            self.stats.no_conn += 1;
        }
        if !seg.rst && unicast(key.remote) && self.is_local(key.local, key.lport) {
            self.send_rst(&pkt);
        }
        self.pool.put(pkt);
    }

    /// Queues the RST answering `pkt` (if it deserves one, see [`demux::rst_reply`]).
    fn send_rst(&mut self, pkt: &Packet) {
        let mut reply = self.pool.get();
        if demux::rst_reply(pkt.data(), &mut reply) {
            self.out.push_back(reply);
            self.stats.rst_sent += 1;
        } else {
            self.pool.put(reply);
        }
    }

    /// A SYN to `listener` with no connection or half-open entry: within the caps it gets a
    /// SYN-cache entry and a SYN-ACK, no socket.
    fn on_syn(&mut self, key: Key, listener: (IpAddr, u16), pkt: Packet) {
        let group = source_group(key.remote);
        let (half, untrusted, cfg) = (self.syn_cache.tally(), &self.untrusted, &self.cfg);
        let refused = if self.in_use + self.syn_cache.len() >= cfg.max_connections {
            Some(&mut self.stats.syn_dropped_full)
        } else if half.listener(listener) >= cfg.half_open_per_listener {
            Some(&mut self.stats.half_open_refused_listener)
        } else if half.source(group) >= cfg.half_open_per_source {
            Some(&mut self.stats.half_open_refused_source)
        } else if untrusted.listener(listener) >= cfg.untrusted_per_listener {
            // Its ACK could not be taken anyway: do not even answer.
            Some(&mut self.stats.untrusted_refused_listener)
        } else if untrusted.source(group) >= cfg.untrusted_per_source {
            Some(&mut self.stats.untrusted_refused_source)
        } else {
            None
        };
        if let Some(counter) = refused {
            // Dropped, not reset: the peer retries, and an RST would only help a flooder.
            *counter += 1;
            self.pool.put(pkt);
            return;
        }
        let syn = demux::syn_info(pkt.data(), &self.caps.checksum);
        self.pool.put(pkt);
        let Some(syn) = syn else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(seed) = self.entropy.u64() else {
            self.stats.embryonic_dropped += 1;
            return;
        };
        let mut answerer = match self.answerer.take() {
            Some(a) => a,
            None => {
                // Made on first use, kept: a transport that never accepts never pays for it.
                let sock = Self::make_socket(&self.cfg, self.cfg.rx_buffer, 1);
                self.buffer_bytes += self.cfg.rx_buffer + 1;
                let mut sockets = SocketSet::new(Vec::with_capacity(1));
                let handle = sockets.add(sock);
                Answerer { sockets, handle }
            }
        };
        let mut iface = Self::make_iface(&self.caps, self.now, key.local, seed);
        let sock = answerer
            .sockets
            .get_mut::<tcp::Socket<'static>>(answerer.handle);
        // Drop what the last SYN left (SYN-RECEIVED) so `listen` accepts it again; `listen`
        // also clears the tuple, so the RST an aborted socket owes is never sent.
        sock.abort();
        let answer = Self::answer_syn(
            &mut iface,
            &mut answerer.sockets,
            answerer.handle,
            &mut self.pool,
            &self.caps,
            self.now,
            &key,
            &syn,
        );
        self.answerer = Some(answerer);
        let Some((synack, isn)) = answer else {
            self.stats.embryonic_dropped += 1;
            return;
        };
        let lifetime = i64::try_from(self.cfg.handshake_timeout.as_micros()).unwrap_or(i64::MAX);
        let now = self.now.total_micros();
        if self
            .syn_cache
            .insert(key, listener, syn, seed, isn, synack.data(), now, lifetime)
        {
            self.out.push_back(synack);
        } else {
            self.stats.embryonic_dropped += 1;
            self.pool.put(synack);
        }
    }

    /// Puts socket `handle` (closed or fresh) into LISTEN for `key`, feeds it the SYN `syn`
    /// through `iface`, and returns the SYN-ACK it sent with our ISN in it. Nothing else is
    /// sent: the only other thing a SYN-RECEIVED socket could send is a later retransmission.
    #[allow(clippy::too_many_arguments)] // split borrows of the transport
    fn answer_syn(
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        handle: SocketHandle,
        pool: &mut PacketPool,
        caps: &DeviceCapabilities,
        now: SmolInstant,
        key: &Key,
        syn: &SynInfo,
    ) -> Option<(Packet, u32)> {
        let ep = IpListenEndpoint {
            addr: Some(key.local.into()),
            port: key.lport,
        };
        sockets
            .get_mut::<tcp::Socket<'static>>(handle)
            .listen(ep)
            .ok()?;
        let mut pkt = pool.get();
        if !demux::emit_syn(key, syn, &mut pkt) {
            pool.put(pkt);
            return None;
        }
        let (mut rx, mut spent, mut sent) = (VecDeque::from([pkt]), Vec::new(), VecDeque::new());
        let mut dev = Dev {
            rx: &mut rx,
            spent: &mut spent,
            out: &mut sent,
            pool,
            out_limit: 4,
            caps,
        };
        iface.poll(now, &mut dev, sockets);
        let mut answer = None;
        for p in rx.drain(..).chain(spent.drain(..)).chain(sent.drain(..)) {
            match demux::synack_seq(p.data()) {
                Some(isn) if answer.is_none() => answer = Some((p, isn)),
                _ => pool.put(p),
            }
        }
        answer
    }

    /// A segment for a half-open accept (RFC 9293 §3.10.7.4, SYN-RECEIVED).
    fn half_open_segment(
        &mut self,
        idx: u32,
        pkt: Packet,
        seg: &Seg,
        listener: (IpAddr, u16),
        staged: &mut Vec<(u32, u32, Packet)>,
    ) {
        let key = seg.key;
        let Some(e) = self.syn_cache.get(&key) else {
            self.pool.put(pkt);
            return;
        };
        let (peer_next, isn) = (e.syn.seq.wrapping_add(1), e.isn);
        let (syn, seed) = (e.syn, e.seed);
        if seg.rst {
            // RFC 5961 §3.2: only an RST at exactly the next sequence number resets; a blind
            // attacker would have to guess it.
            if seg.seq == peer_next && demux::well_formed(pkt.data(), &self.caps.checksum) {
                self.syn_cache.remove(&key);
                self.stats.embryonic_dropped += 1;
            }
            self.pool.put(pkt);
            return;
        }
        if seg.syn && !seg.ack {
            if seg.seq == syn.seq {
                // The peer did not get our SYN-ACK: the same again.
                let mut p = self.pool.get();
                if p.fill_from(e.synack()) {
                    self.out.push_back(p);
                    self.stats.synack_retransmits += 1;
                } else {
                    self.pool.put(p);
                }
                self.pool.put(pkt);
            } else {
                // Another ISN on the same 4-tuple: the peer started over.
                self.syn_cache.remove(&key);
                self.on_syn(key, listener, pkt);
            }
            return;
        }
        if !seg.ack {
            // Step 5 of SEGMENT ARRIVES: no ACK bit, drop.
            self.pool.put(pkt);
            return;
        }
        if seg.syn || seg.ack_no != isn.wrapping_add(1) {
            // An unacceptable ACK in SYN-RECEIVED: <SEQ=SEG.ACK><CTL=RST>.
            self.stats.handshake_bad_ack += 1;
            self.send_rst(&pkt);
            self.pool.put(pkt);
            return;
        }
        // Data may precede a lost pure ACK; anything starting past our window is not this peer's.
        let ahead = seg.seq.wrapping_sub(peer_next) as usize;
        if ahead >= self.cfg.rx_buffer || !demux::well_formed(pkt.data(), &self.caps.checksum) {
            self.stats.malformed += 1;
            self.pool.put(pkt);
            return;
        }
        let group = source_group(key.remote);
        let refused = if self.untrusted.listener(listener) >= self.cfg.untrusted_per_listener {
            Some(&mut self.stats.untrusted_refused_listener)
        } else if self.untrusted.source(group) >= self.cfg.untrusted_per_source {
            Some(&mut self.stats.untrusted_refused_source)
        } else {
            None
        };
        if let Some(counter) = refused {
            // The entry stays: the peer's next segment (its first data, or a retransmission)
            // completes the handshake once a place is free, or the entry times out.
            *counter += 1;
            self.pool.put(pkt);
            return;
        }
        self.syn_cache.remove(&key);
        // Half-open entries reserve their slot, so this only fails if `connect` took it since.
        let Ok(slot) = self.new_conn(key, TcpRole::Responder, Phase::Embryonic, Some(seed)) else {
            self.stats.syn_dropped_full += 1;
            self.send_rst(&pkt);
            self.pool.put(pkt);
            return;
        };
        let replayed = match self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_deref_mut())
        {
            Some(c) => Self::answer_syn(
                &mut c.iface,
                &mut c.sockets,
                c.handle,
                &mut self.pool,
                &self.caps,
                self.now,
                &key,
                &syn,
            ),
            None => None,
        };
        // Same seed, same first draw: the socket must have picked the ISN the peer is acking.
        // Its own SYN-ACK is a duplicate of ours; the peer never sees it.
        match replayed {
            Some((p, replayed_isn)) if replayed_isn == isn => self.pool.put(p),
            other => {
                if let Some((p, _)) = other {
                    self.pool.put(p);
                }
                self.stats.synack_mismatch += 1;
                self.free_slot(slot);
                self.send_rst(&pkt);
                self.pool.put(pkt);
                return;
            }
        }
        if let Some(c) = self.conn_mut(slot) {
            c.untrusted = Some((listener, group));
        }
        self.untrusted.add(listener, group);
        staged.push((slot, idx, pkt));
    }

    /// SYN-ACK retransmissions and expiry of half-open accepts, while the out queue has room.
    fn run_syn_timers(&mut self) {
        let now = self.now.total_micros();
        while self.out.len() < self.cfg.out_queue {
            match self.syn_cache.next_due(now) {
                None => break,
                Some(Due::Expired) => self.stats.embryonic_dropped += 1,
                Some(Due::Retransmit(key)) => {
                    if let Some(e) = self.syn_cache.get(&key) {
                        let mut p = self.pool.get();
                        if p.fill_from(e.synack()) {
                            self.out.push_back(p);
                            self.stats.synack_retransmits += 1;
                        } else {
                            self.pool.put(p);
                        }
                    }
                    self.syn_cache.rearm(&key, now);
                }
            }
        }
    }

    /// Polls one connection's interface with whatever sits in `dev_rx`, then updates its state.
    fn poll_conn(&mut self, slot: u32) {
        let now = self.now;
        let SmolTransport {
            slots,
            dev_rx,
            spent,
            out,
            pool,
            caps,
            cfg,
            stats,
            ..
        } = self;
        if let Some(conn) = slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_deref_mut())
        {
            let mut dev = Dev {
                rx: dev_rx,
                spent,
                out,
                pool,
                out_limit: cfg.out_queue,
                caps,
            };
            conn.iface.poll(now, &mut dev, &mut conn.sockets);
            conn.polls += 1;
            stats.iface_polls += 1;
        }
        for p in dev_rx.drain(..).chain(spent.drain(..)) {
            pool.put(p);
        }
        self.after_poll(slot);
    }

    /// Turns socket state changes into events, frees finished slots, schedules the next poll.
    fn after_poll(&mut self, slot: u32) {
        let now = self.now;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = s.generation;
        let Some(conn) = s.conn.as_deref_mut() else {
            return;
        };
        let id = ConnId { slot, generation };
        let saw_rst = std::mem::take(&mut conn.saw_rst);
        let lost = if saw_rst {
            CloseReason::Reset
        } else {
            CloseReason::Timeout
        };
        let mut free = false;

        if matches!(conn.phase, Phase::Embryonic | Phase::Connecting) {
            match conn.sock().state() {
                State::SynSent | State::SynReceived => {}
                State::Listen | State::Closed | State::TimeWait => {
                    if conn.phase == Phase::Embryonic {
                        self.stats.embryonic_dropped += 1;
                        free = true;
                    } else {
                        conn.phase = Phase::Zombie;
                        self.visible = self.visible.saturating_sub(1);
                        self.stats.conns_closed += 1;
                        self.events.push(TransportEvent::Down {
                            conn: id,
                            reason: lost,
                        });
                    }
                }
                _ => {
                    let timeout = self.cfg.timeout.map(smol_duration);
                    conn.sock().set_timeout(timeout);
                    if conn.phase == Phase::Embryonic {
                        self.visible += 1;
                    }
                    conn.phase = Phase::Up;
                    self.stats.conns_opened += 1;
                    self.events.push(TransportEvent::Up {
                        conn: id,
                        local: SocketAddr::new(conn.key.local, conn.key.lport),
                        peer: SocketAddr::new(conn.key.remote, conn.key.rport),
                        role: conn.role,
                    });
                }
            }
        }

        if conn.phase == Phase::Up {
            let linger = smol_duration(self.cfg.linger);
            let sock = conn.sock();
            let reason = match sock.state() {
                State::Established | State::FinWait1 | State::FinWait2 => None,
                // The peer is done sending; close our side once its bytes are read.
                State::CloseWait | State::Closing | State::LastAck | State::TimeWait => {
                    if sock.recv_queue() == 0 {
                        sock.close();
                        sock.set_timeout(Some(linger));
                        Some(CloseReason::Fin)
                    } else {
                        None
                    }
                }
                State::Closed | State::Listen | State::SynSent | State::SynReceived => Some(lost),
            };
            if let Some(reason) = reason {
                conn.phase = Phase::Zombie;
                self.visible = self.visible.saturating_sub(1);
                self.stats.conns_closed += 1;
                self.events.push(TransportEvent::Down { conn: id, reason });
            } else if !conn.readable && conn.sock_ref().recv_queue() > 0 {
                conn.readable = true;
                self.readable.push((slot, generation));
            }
        }

        if conn.phase == Phase::Zombie {
            let sock = conn.sock();
            if sock.recv_queue() > 0 {
                // Nobody will read it: like Linux on data after close, reset.
                sock.abort();
            }
            free |= sock.state() == State::Closed && sock.remote_endpoint().is_none();
        }

        if free {
            self.free_slot(slot);
            return;
        }

        match conn.iface.poll_at(now, &conn.sockets) {
            None => conn.timer_at = None,
            Some(t) if t <= now => {
                // It wants to send but the outgoing queue was full.
                if !conn.ready {
                    conn.ready = true;
                    self.ready.push_back((slot, generation));
                }
            }
            Some(t) => {
                let t = t.total_micros();
                // A moved deadline gets a new entry; the old one turns stale (skipped, and
                // dropped by the periodic compaction), so idle connections wake only when due.
                if conn.timer_at != Some(t) {
                    conn.timer_at = Some(t);
                    self.timers.push(Reverse((t, slot, generation)));
                }
            }
        }
    }

    fn run_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &(slot, generation) in &dirty {
            if let Some(s) = self.slots.get_mut(slot as usize)
                && s.generation == generation
                && let Some(c) = s.conn.as_deref_mut()
            {
                c.dirty = false;
                self.poll_conn(slot);
            }
        }
        dirty.clear();
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    fn run_ready(&mut self) {
        // Each waiting connection at most once per poll: one that still cannot send requeues.
        for _ in 0..self.ready.len() {
            if self.out.len() >= self.cfg.out_queue {
                break;
            }
            let Some((slot, generation)) = self.ready.pop_front() else {
                break;
            };
            if let Some(s) = self.slots.get_mut(slot as usize)
                && s.generation == generation
                && let Some(c) = s.conn.as_deref_mut()
            {
                c.ready = false;
                self.poll_conn(slot);
            }
        }
    }

    fn run_timers(&mut self) {
        let now = self.now.total_micros();
        while self.out.len() < self.cfg.out_queue {
            let Some(&Reverse((t, slot, generation))) = self.timers.peek() else {
                break;
            };
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(s) = self.slots.get_mut(slot as usize)
                && s.generation == generation
                && let Some(c) = s.conn.as_deref_mut()
                && c.timer_at == Some(t)
            {
                c.timer_at = None;
                self.poll_conn(slot);
            }
        }
        // Bounds the heap to about twice the connections; amortised O(1) per push.
        if self.timers.len() > 2 * self.in_use + 1024 {
            let slots = &self.slots;
            self.timers.retain(|&Reverse((t, slot, generation))| {
                slots.get(slot as usize).is_some_and(|s| {
                    s.generation == generation
                        && s.conn.as_deref().is_some_and(|c| c.timer_at == Some(t))
                })
            });
        }
    }

    /// Ends a connection from our side: `Down { Local }` now, the socket lingers until done.
    fn end_local(&mut self, id: ConnId, abort: bool) {
        let linger = smol_duration(self.cfg.linger);
        let Some(conn) = self.live_mut(id) else {
            return;
        };
        conn.phase = Phase::Zombie;
        let sock = conn.sock();
        if abort {
            sock.abort();
        } else {
            // Unread bytes are dropped (the id dies), so they do not count as late data.
            while sock.recv(|b| (b.len(), b.len())).unwrap_or(0) > 0 {}
            sock.close();
            sock.set_timeout(Some(linger));
        }
        self.visible = self.visible.saturating_sub(1);
        self.stats.conns_closed += 1;
        self.events.push(TransportEvent::Down {
            conn: id,
            reason: CloseReason::Local,
        });
        self.mark_dirty(id.slot);
    }

    fn poll_inner(&mut self) -> io::Result<()> {
        self.flush()?;
        self.ingress()?;
        self.run_dirty();
        self.run_ready();
        self.run_timers();
        self.run_syn_timers();
        self.flush()
    }

    #[cfg(test)]
    fn polls_of(&self, slot: u32) -> u64 {
        self.slots
            .get(slot as usize)
            .and_then(|s| s.conn.as_deref())
            .map_or(0, |c| c.polls)
    }
}

impl<P: Port> Transport for SmolTransport<P> {
    fn poll(&mut self, now: Instant, events: &mut Vec<TransportEvent>) -> io::Result<()> {
        self.now = self.smol_now(now);
        let res = self.poll_inner();
        events.append(&mut self.events);
        res
    }

    fn listen(&mut self, local: SocketAddr) -> io::Result<()> {
        if local.port() == 0 {
            return Err(invalid("listen port 0"));
        }
        if !local.ip().is_unspecified() && !unicast(local.ip()) {
            return Err(invalid("listen address is not unicast"));
        }
        if self.listeners.len() >= MAX_LISTENERS
            && !self.listeners.contains(&(local.ip(), local.port()))
        {
            return Err(invalid("too many listeners"));
        }
        self.listeners.insert((local.ip(), local.port()));
        if let (Some(eth), IpAddr::V4(v4)) = (&mut self.eth, local.ip())
            && !v4.is_unspecified()
        {
            eth.add_address(v4);
        }
        Ok(())
    }

    fn connect(&mut self, local: Option<SocketAddr>, remote: SocketAddr) -> io::Result<ConnId> {
        let rip = remote.ip();
        if remote.port() == 0 || !unicast(rip) {
            return Err(invalid("remote must be a unicast address with a port"));
        }
        if self.eth.is_some() && rip.is_ipv6() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "smol transport: no IPv6 neighbor discovery on Ethernet ports",
            ));
        }
        let lip = match local.map(|l| l.ip()).filter(|ip| !ip.is_unspecified()) {
            Some(ip) if ip.is_ipv4() == rip.is_ipv4() && unicast(ip) => ip,
            Some(_) => return Err(invalid("local address is not unicast or of another family")),
            None => self
                .cfg
                .local_addrs
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == rip.is_ipv4())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        "smol transport: no local address of the remote's family",
                    )
                })?,
        };
        let lport = match local.map_or(0, |l| l.port()) {
            0 => self.pick_port(lip, rip, remote.port())?,
            p => p,
        };
        let key = Key {
            local: lip,
            lport,
            remote: rip,
            rport: remote.port(),
        };
        if self.tuple_in_use(&key) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "smol transport: 4-tuple in use",
            ));
        }
        let slot = self.new_conn(key, TcpRole::Originator, Phase::Connecting, None)?;
        let res = match self.conn_mut(slot) {
            Some(conn) => {
                let handle = conn.handle;
                let sock = conn.sockets.get_mut::<tcp::Socket<'static>>(handle);
                sock.connect(
                    conn.iface.context(),
                    (IpAddress::from(rip), remote.port()),
                    (IpAddress::from(lip), lport),
                )
                .map_err(|e| invalid(&format!("connect: {e}")))
            }
            None => Err(dead()),
        };
        if let Err(e) = res {
            self.free_slot(slot);
            return Err(e);
        }
        self.visible += 1;
        self.mark_dirty(slot);
        let generation = self.slots.get(slot as usize).map_or(0, |s| s.generation);
        Ok(ConnId { slot, generation })
    }

    fn readable(&mut self, out: &mut Vec<ConnId>) {
        let mut i = 0;
        while let Some(&(slot, generation)) = self.readable.get(i) {
            let id = ConnId { slot, generation };
            let waiting = self.live(id).is_some_and(|c| c.sock_ref().recv_queue() > 0);
            if waiting {
                out.push(id);
                i += 1;
            } else {
                if let Some(s) = self.slots.get_mut(slot as usize)
                    && s.generation == generation
                    && let Some(c) = s.conn.as_deref_mut()
                {
                    c.readable = false;
                }
                self.readable.swap_remove(i);
            }
        }
    }

    fn recv<F: FnOnce(&mut [u8]) -> usize>(&mut self, conn: ConnId, f: F) -> io::Result<usize> {
        let c = self.live_mut(conn).ok_or_else(dead)?;
        let sock = c.sock();
        if sock.recv_queue() == 0 {
            return Ok(0);
        }
        let n = sock
            .recv(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0);
        if n > 0 {
            // The window opened: the next poll may owe the peer an update.
            self.mark_dirty(conn.slot);
        }
        Ok(n)
    }

    fn send_capacity(&self, conn: ConnId) -> usize {
        self.live(conn).map_or(0, |c| {
            let sock = c.sock_ref();
            if sock.may_send() {
                sock.send_capacity() - sock.send_queue()
            } else {
                0
            }
        })
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> io::Result<usize> {
        let c = self.live_mut(conn).ok_or_else(dead)?;
        // Not yet (or no longer) sendable: nothing taken.
        let n = c.sock().send_slice(data).unwrap_or(0);
        if n > 0 {
            self.mark_dirty(conn.slot);
        }
        Ok(n)
    }

    fn send_in_place<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        conn: ConnId,
        f: F,
    ) -> io::Result<usize> {
        let c = self.live_mut(conn).ok_or_else(dead)?;
        // smoltcp lends the contiguous free window of its ring and takes what `f` wrote (never
        // more than the window: it asserts that). Not yet (or no longer) sendable: nothing.
        let n = c
            .sock()
            .send(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0);
        if n > 0 {
            self.mark_dirty(conn.slot);
        }
        Ok(n)
    }

    fn send_vectored(&mut self, conn: ConnId, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // One slot lookup for the whole burst of frames.
        let c = self.live_mut(conn).ok_or_else(dead)?;
        let sock = c.sock();
        let mut total = 0;
        for b in bufs {
            let n = sock.send_slice(b).unwrap_or(0);
            total += n;
            if n < b.len() {
                break;
            }
        }
        if total > 0 {
            self.mark_dirty(conn.slot);
        }
        Ok(total)
    }

    fn close(&mut self, conn: ConnId) {
        self.end_local(conn, false);
    }

    fn abort(&mut self, conn: ConnId) {
        self.end_local(conn, true);
    }

    fn connections(&self) -> usize {
        self.visible
    }

    /// Moves an accepted connection out of the untrusted caps (`untrusted_per_*`). Its buffers
    /// are already full size: they cannot grow later (see `accept.rs`), so what "untrusted"
    /// bounds is how many full-size connections unproven peers hold.
    fn mark_trusted(&mut self, conn: ConnId) {
        let Some(c) = self.live_mut(conn) else {
            return;
        };
        if let Some((listener, group)) = c.untrusted.take() {
            self.untrusted.remove(listener, group);
        }
    }

    fn refusals(&self) -> Refusals {
        let s = &self.stats;
        Refusals {
            refused: s.syn_dropped_full
                + s.half_open_refused_listener
                + s.half_open_refused_source
                + s.untrusted_refused_listener
                + s.untrusted_refused_source,
            untrusted: self.untrusted.total() as u64,
        }
    }

    fn link_counters(&self) -> crate::port::LinkCounters {
        self.port.link_counters()
    }
}
