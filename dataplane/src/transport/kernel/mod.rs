//! [`Transport`] on the kernel's TCP sockets: non-blocking sockets and one epoll instance.
//!
//! Design:
//! - Readiness. Connections are registered once, edge-triggered, for `IN | OUT | RDHUP`, so a
//!   busy-polling worker's `epoll_wait(0)` only returns sockets with news and no `EPOLL_CTL_MOD`
//!   is ever needed. Because edges do not repeat, each connection keeps two flags: `kernel_readable`
//!   (set by `EPOLLIN`, cleared by `EAGAIN`, or by a short read unless the peer's FIN was
//!   signalled) and `writable` (set by `EPOLLOUT`, cleared only by `EAGAIN`, which also arms the
//!   kernel's next `EPOLLOUT` edge). Listeners are level-triggered so a bounded accept batch
//!   ([`ACCEPT_BATCH`] per listener per poll) never strands queued connections.
//! - Receiving. Each connection has a userspace buffer, allocated on its first read at
//!   [`RECV_BUFFER_MIN`] bytes, doubled whenever a read fills it, up to `recv_buffer` (up to
//!   [`UNTRUSTED_RECV_BUFFER`] until the connection is trusted), and freed with the slot: a flood
//!   of connections that send a prefix and stop holds a few KiB each, not `recv_buffer`. `recv`
//!   does at most one `read()` into the free tail, then hands `f` everything buffered. The buffer
//!   is compacted when the read position passes half or the tail is full, so `f` can always see
//!   up to the buffer's size in contiguous bytes.
//! - Send capacity. [`Transport::send_capacity`] is [`SEND_CAPACITY_HINT`] while the socket is
//!   writable and 0 from an `EAGAIN` until the next `EPOLLOUT`. It is a hint, not a promise:
//!   `send` may take fewer bytes. It never reports 0 without a pending `EPOLLOUT`, so a sender
//!   waiting on it cannot stall.
//! - Errors. `recv`/`send` return `Err` only for a dead or unknown [`ConnId`] (`NotFound`). A
//!   failure of the connection itself (RST, timeout, peer FIN) makes them return `Ok(0)` and
//!   queues a `Down` for the next `poll`; the id is dead at once.
//! - Peer FIN: `Down { Fin }` once the bytes buffered before the FIN were handed to `f` (all
//!   consumed, or `f` consumed none of them: a frame cut off by the FIN, which RFC 9329 §6.1
//!   discards). Our side is then closed, flushing what the kernel still has to send.
//! - RST or socket error: `Down { Reset }` (or `Timeout` for ETIMEDOUT / unreachable) at once;
//!   bytes still buffered in userspace are dropped.
//! - `close`: `Down { Local }` and the id is dead at once; the socket is shut down for writing and
//!   kept (not counted in [`Transport::connections`]) until the peer's FIN, reading and discarding
//!   what arrives, or until `close_timeout`. Closing a socket that still has unread bytes would
//!   make the kernel send RST instead of FIN and could cut off our last bytes.
//! - `abort`: `SO_LINGER {on, 0}` then close, so the kernel sends RST; `Down { Local }`.
//! - Unproven peers: an accepted connection counts as untrusted until
//!   [`Transport::mark_trusted`]; past `untrusted_total` of them, or `untrusted_per_source` from
//!   one source (IPv4 address, IPv6 /64), a new one is reset at once (`SO_LINGER` 0: no
//!   TIME_WAIT, no file descriptor held), so one source that opens connections as fast as they
//!   are closed cannot starve others of descriptors or slots.
//! - Bounds: at most `max_connections` connecting or open connections, at most as many closing
//!   ones, [`MAX_LISTENERS`] listeners; pending events and the ready and draining lists are bounded
//!   by the slot table (a slot has at most one `Up`, one `Down` and one entry per list; `connect`
//!   refuses while a slot table's worth of events awaits a `poll`). A closing socket discards at
//!   most 256 KiB per wake-up and continues on later polls.

mod sys;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use libc::c_int;

use super::{CloseReason, ConnId, Refusals, TcpRole, Transport, TransportEvent, source_group};

/// Connections accepted per listener per `poll`; the rest wait for the next one.
pub const ACCEPT_BATCH: usize = 64;
/// Listening sockets one transport may hold.
pub const MAX_LISTENERS: usize = 64;
/// First size of a connection's receive buffer.
pub const RECV_BUFFER_MIN: usize = 4 * 1024;
/// Largest receive buffer of an untrusted connection: the prefix and one frame of the longest
/// Length (RFC 9329 §3: 65535 bytes), so its consumer still sees a whole frame.
pub const UNTRUSTED_RECV_BUFFER: usize = 6 + 65535 + 1;
/// What `send_capacity` reports while the socket has not said `EAGAIN`.
pub const SEND_CAPACITY_HINT: usize = 64 * 1024;
/// The epoll token reserved for a worker's wake-up fd (see [`KernelTransport::add_waker`]).
pub const WAKER_TOKEN: u64 = u64::MAX;

/// epoll events fetched per `poll`; more stay queued in the kernel for the next one.
const EVENT_BATCH: usize = 256;
/// Reads per wake-up a closing socket spends discarding; a peer sending more is cut off.
const CLOSE_DRAIN_READS: usize = 16;
/// Scratch size for those discarding reads.
const DRAIN_CHUNK: usize = 16 * 1024;
/// Tokens with this bit name a listener (index in the low bits); others a connection slot.
const LISTENER_TAG: u64 = 1 << 63;

const EV_IN: u32 = libc::EPOLLIN as u32;
const EV_OUT: u32 = libc::EPOLLOUT as u32;
const EV_ERR: u32 = libc::EPOLLERR as u32;
const EV_HUP: u32 = libc::EPOLLHUP as u32;
const EV_RDHUP: u32 = libc::EPOLLRDHUP as u32;
const EV_ET: u32 = libc::EPOLLET as u32;
const CONN_EVENTS: u32 = EV_IN | EV_OUT | EV_RDHUP | EV_ET;

/// Settings of a [`KernelTransport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Userspace receive buffer per connection, allocated on first use. Should hold at least one
    /// whole RFC 9329 frame (64 KiB) so a consumer that waits for whole frames never stalls.
    pub recv_buffer: usize,
    /// Connecting plus open connections; more accepted ones are closed at once, more `connect`s
    /// fail.
    pub max_connections: usize,
    /// TCP_NODELAY on every connection.
    pub nodelay: bool,
    /// SO_RCVBUF (set on listeners before `listen`, so accepted sockets inherit the window scale).
    pub so_rcvbuf: Option<usize>,
    /// SO_SNDBUF.
    pub so_sndbuf: Option<usize>,
    /// TCP_NOTSENT_LOWAT: the most unsent bytes the socket takes; `send` stops (and `EPOLLOUT`
    /// waits) above it, so the outer queue stays short while the window still fills.
    pub notsent_lowat: Option<u32>,
    /// SO_KEEPALIVE with this idle time; probes every third of it, three of them.
    pub keepalive: Option<Duration>,
    /// Gives up a connect that is not up after this long (`Down { Timeout }`); `None` leaves it to
    /// the kernel's SYN retries. Measured on the `now` of `poll`.
    pub connect_timeout: Option<Duration>,
    /// How long a closed connection waits for the peer's FIN before its socket is dropped.
    pub close_timeout: Duration,
    /// `listen()` backlog.
    pub listen_backlog: u32,
    /// SO_MARK on every socket (listeners, dialled and accepted connections), for policy
    /// routing of the outer traffic (`ip rule add fwmark ...`); needs CAP_NET_ADMIN.
    pub mark: Option<u32>,
    /// Accepted connections not yet trusted ([`Transport::mark_trusted`]), in all; more are
    /// reset at once.
    pub untrusted_total: usize,
    /// Untrusted accepted connections per source (IPv4 address, IPv6 /64).
    pub untrusted_per_source: usize,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            recv_buffer: 256 * 1024,
            max_connections: 65536,
            nodelay: true,
            so_rcvbuf: None,
            so_sndbuf: None,
            notsent_lowat: None,
            keepalive: None,
            connect_timeout: None,
            close_timeout: Duration::from_secs(5),
            listen_backlog: 1024,
            mark: None,
            // As the smoltcp transport's per-listener and per-source caps: a peer proves itself
            // within about one RTT of its first IKE message (control binds its IKE SA) or ESP.
            untrusted_total: 1024,
            untrusted_per_source: 32,
        }
    }
}

/// Counters of a [`KernelTransport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Connections accepted and reported `Up`.
    pub accepted: u64,
    /// Connections accepted and closed at once because `max_connections` were in use.
    pub refused_full: u64,
    /// Accepted and reset at once: `untrusted_total` untrusted connections were open.
    pub refused_untrusted: u64,
    /// Accepted and reset at once: their source had `untrusted_per_source` untrusted ones.
    pub refused_source: u64,
    /// `accept()` or set-up failures of accepted sockets (EMFILE, ...).
    pub accept_errors: u64,
    /// Connects that came up.
    pub connected: u64,
    /// Connects that failed or timed out.
    pub connect_failed: u64,
    /// Bytes read from sockets of open connections.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read and discarded by closing connections.
    pub discarded: u64,
    /// Reads that found nothing (EAGAIN).
    pub read_eagain: u64,
    /// Writes refused because the socket buffer was full (EAGAIN).
    pub write_eagain: u64,
    /// `Down` events by reason.
    pub down_fin: u64,
    /// See `down_fin`.
    pub down_reset: u64,
    /// See `down_fin`.
    pub down_timeout: u64,
    /// See `down_fin`.
    pub down_local: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Connecting,
    Open,
    /// Closed by us, id dead, waiting for the peer's FIN.
    Closing,
}

struct Slot {
    generation: u32,
    state: State,
    /// The epoll token the socket is registered with; events with another token are stale.
    token: u64,
    stream: Option<TcpStream>,
    /// The remote of a connect, for its `Up`.
    remote: Option<SocketAddr>,
    rbuf: Option<Box<[u8]>>,
    rpos: usize,
    rlen: usize,
    kernel_readable: bool,
    /// The peer's FIN (or a hang-up) was signalled: a short read no longer means drained.
    rdhup: bool,
    writable: bool,
    /// A read returned 0.
    eof: bool,
    /// `f` took none of the buffered bytes and none arrived since: `wait` need not wake for them.
    stalled: bool,
    /// An accepted connection not yet trusted: the source group it counts against
    /// ([`source_group`]).
    untrusted: Option<IpAddr>,
    /// The last read filled the buffer's whole free tail.
    read_filled: bool,
    /// Listed in `ready`; survives slot reuse together with the list entry.
    in_ready: bool,
    /// Listed in `draining`; likewise.
    in_drain: bool,
}

impl Slot {
    fn new() -> Self {
        Self {
            generation: 0,
            state: State::Free,
            token: 0,
            stream: None,
            remote: None,
            rbuf: None,
            rpos: 0,
            rlen: 0,
            kernel_readable: false,
            rdhup: false,
            writable: false,
            eof: false,
            stalled: false,
            untrusted: None,
            read_filled: false,
            in_ready: false,
            in_drain: false,
        }
    }

    fn buffered(&self) -> usize {
        self.rlen - self.rpos
    }

    fn live(&self) -> bool {
        matches!(self.state, State::Connecting | State::Open)
    }

    /// Forgets the connection (closing its socket) but keeps generation and list flags.
    fn clear(&mut self) {
        self.state = State::Free;
        self.stream = None;
        self.remote = None;
        self.rbuf = None;
        self.rpos = 0;
        self.rlen = 0;
        self.kernel_readable = false;
        self.rdhup = false;
        self.writable = false;
        self.eof = false;
        self.stalled = false;
        self.untrusted = None;
        self.read_filled = false;
    }

    /// One `read()` into the buffer's free tail, allocating, compacting and growing it (up to
    /// `cap` bytes) as needed.
    fn fill(&mut self, cap: usize) -> Fill {
        let Some(stream) = self.stream.as_ref() else {
            return Fill::Full;
        };
        let cap = if self.untrusted.is_some() {
            cap.min(UNTRUSTED_RECV_BUFFER)
        } else {
            cap
        };
        let buf = self
            .rbuf
            .get_or_insert_with(|| vec![0u8; cap.min(RECV_BUFFER_MIN)].into_boxed_slice());
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
        } else if self.rpos > buf.len() / 2 || (self.rlen == buf.len() && self.rpos > 0) {
            buf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        // Full of unconsumed bytes, or the last read filled all the room it had (more is
        // likely waiting: bulk data reads in ever larger pieces).
        if (self.rlen == buf.len() || self.read_filled) && buf.len() < cap {
            let mut bigger = vec![0u8; (buf.len() * 2).min(cap)].into_boxed_slice();
            if let (Some(to), Some(from)) = (bigger.get_mut(..self.rlen), buf.get(..self.rlen)) {
                to.copy_from_slice(from);
            }
            *buf = bigger;
        }
        let Some(tail) = buf.get_mut(self.rlen..) else {
            return Fill::Full;
        };
        if tail.is_empty() {
            return Fill::Full;
        }
        let room = tail.len();
        let mut reader = stream;
        match reader.read(tail) {
            Ok(0) => {
                self.eof = true;
                self.kernel_readable = false;
                Fill::Eof
            }
            Ok(n) => {
                let n = n.min(room);
                self.read_filled = n == room;
                self.rlen += n;
                self.stalled = false;
                if n < room && !self.rdhup {
                    self.kernel_readable = false;
                }
                Fill::Data(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.kernel_readable = false;
                Fill::Again
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Fill::Full,
            Err(e) => Fill::Failed(e),
        }
    }
}

/// What discarding a closing socket's input found.
enum Drain {
    /// FIN, error, or nothing left to wait for: drop the socket.
    Done,
    /// Nothing more for now; the next edge brings more.
    Idle,
    /// The per-call budget ran out with bytes left: continue on the next poll.
    More,
}

enum Fill {
    Data(usize),
    Eof,
    Again,
    /// No read attempted (no room) or interrupted.
    Full,
    Failed(io::Error),
}

/// A deadline of one slot occupancy (slot and generation).
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    slot: u32,
    generation: u32,
}

impl Deadline {
    fn holds(&self, slots: &[Slot], state: State) -> bool {
        slots
            .get(self.slot as usize)
            .is_some_and(|s| s.state == state && s.generation == self.generation)
    }
}

/// Queues `d` unless `q` is full of entries still in force; deadlines are pushed in time order.
fn push_deadline(
    q: &mut VecDeque<Deadline>,
    cap: usize,
    slots: &[Slot],
    state: State,
    d: Deadline,
) -> bool {
    if q.len() >= cap {
        q.retain(|e| e.holds(slots, state));
    }
    if q.len() >= cap {
        return false;
    }
    q.push_back(d);
    true
}

fn reason_of(e: &io::Error) -> CloseReason {
    match e.raw_os_error() {
        Some(
            libc::ETIMEDOUT
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN,
        ) => CloseReason::Timeout,
        _ => CloseReason::Reset,
    }
}

fn stale() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such connection")
}

/// A [`Transport`] on kernel TCP sockets. See the module documentation for its behaviour.
pub struct KernelTransport {
    cfg: KernelConfig,
    epoll: OwnedFd,
    listeners: Vec<TcpListener>,
    slots: Vec<Slot>,
    /// Free slot indices, reused last-freed first.
    free: Vec<u32>,
    /// Slots the table may grow to: live plus closing connections.
    max_slots: usize,
    /// Connecting plus open connections.
    live: usize,
    closing: usize,
    /// Slots that may have bytes to read (entries are checked and dropped in `readable`).
    ready: Vec<u32>,
    /// Closing slots with more input to discard than one call reads.
    draining: Vec<u32>,
    pending: Vec<TransportEvent>,
    connect_deadlines: VecDeque<Deadline>,
    close_deadlines: VecDeque<Deadline>,
    ev_buf: Vec<libc::epoll_event>,
    /// The `now` of the last `poll`.
    now: Instant,
    stats: KernelStats,
    /// Untrusted accepted connections, in all and per source (entries removed at zero, so the
    /// map holds at most `untrusted_total` entries).
    untrusted: usize,
    untrusted_by_source: HashMap<IpAddr, u32>,
}

impl fmt::Debug for KernelTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelTransport")
            .field("epoll", &self.epoll)
            .field("listeners", &self.listeners.len())
            .field("live", &self.live)
            .field("closing", &self.closing)
            .field("slots", &self.slots.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AsRawFd for KernelTransport {
    /// The epoll fd: readable when `poll` has something to do.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl AsFd for KernelTransport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl KernelTransport {
    /// One send syscall on an open, writable connection, with the shared error handling:
    /// EAGAIN marks it unwritable until EPOLLOUT, a hard error fails the connection.
    fn send_with(
        &mut self,
        conn: ConnId,
        op: impl FnOnce(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let idx = self.slot_of(conn).ok_or_else(stale)?;
        let Some(slot) = self.slots.get_mut(idx) else {
            return Err(stale());
        };
        if slot.state != State::Open || !slot.writable {
            return Ok(0);
        }
        let Some(stream) = slot.stream.as_ref() else {
            return Ok(0);
        };
        match op(stream.as_fd()) {
            Ok(n) => {
                self.stats.bytes_out += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                slot.writable = false;
                self.stats.write_eagain += 1;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => {
                self.fail(idx, reason_of(&e));
                Ok(0)
            }
        }
    }

    /// Creates the epoll instance. Fails on a zero `recv_buffer` or `max_connections`.
    pub fn new(cfg: KernelConfig) -> io::Result<Self> {
        if cfg.recv_buffer == 0 || cfg.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffer and max_connections must be positive",
            ));
        }
        // Slot indices and token bits are u32; closing connections may double the table.
        let max_connections = cfg.max_connections.min(u32::MAX as usize / 2);
        let epoll = sys::epoll_create()?;
        Ok(Self {
            cfg: KernelConfig {
                max_connections,
                ..cfg
            },
            epoll,
            listeners: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            max_slots: max_connections * 2,
            live: 0,
            closing: 0,
            ready: Vec::new(),
            draining: Vec::new(),
            pending: Vec::new(),
            connect_deadlines: VecDeque::new(),
            close_deadlines: VecDeque::new(),
            ev_buf: vec![libc::epoll_event { events: 0, u64: 0 }; EVENT_BATCH],
            now: Instant::now(),
            stats: KernelStats::default(),
            untrusted: 0,
            untrusted_by_source: HashMap::new(),
        })
    }

    /// The size of `conn`'s receive buffer (0 before its first read), for tests.
    #[cfg(test)]
    fn rbuf_len(&self, conn: ConnId) -> usize {
        self.slot_of(conn)
            .and_then(|i| self.slots.get(i))
            .and_then(|s| s.rbuf.as_ref())
            .map_or(0, |b| b.len())
    }

    /// Like [`Transport::listen`], returning the bound address (so port 0 can be used).
    pub fn listen_bound(&mut self, local: SocketAddr) -> io::Result<SocketAddr> {
        if self.listeners.len() >= MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                "too many listeners",
            ));
        }
        let fd = sys::tcp_socket(&local)?;
        sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        // Every worker of a gateway may listen on the same address: the kernel spreads the
        // accepted connections over them.
        sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        if local.is_ipv6() {
            // Explicit per family, so [::]:p and 0.0.0.0:p can both be listened on.
            sys::set_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        self.set_socket_options(fd.as_fd())?;
        sys::bind(fd.as_fd(), &local)?;
        sys::listen(fd.as_fd(), self.cfg.listen_backlog)?;
        let listener = TcpListener::from(fd);
        let bound = listener.local_addr()?;
        let token = LISTENER_TAG | self.listeners.len() as u64;
        // Level-triggered: see the module documentation.
        sys::epoll_add(self.epoll.as_fd(), listener.as_fd(), EV_IN, token)?;
        self.listeners.push(listener);
        Ok(bound)
    }

    /// The addresses being listened on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Sleeps until a socket has news, a deadline is due, or `timeout` passed; returns at once if
    /// events or received bytes are already waiting. Consumes nothing: call `poll` next.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.pending.is_empty() || self.has_buffered_work() {
            return Ok(());
        }
        let now = Instant::now();
        let mut timeout = timeout;
        for q in [&self.connect_deadlines, &self.close_deadlines] {
            if let Some(d) = q.front() {
                timeout = timeout.min(d.at.saturating_duration_since(now));
            }
        }
        // Round up so a sub-millisecond remainder sleeps instead of spinning.
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        let ms = c_int::try_from(ms).unwrap_or(c_int::MAX);
        sys::wait_readable(self.epoll.as_fd(), ms)
    }

    /// Adds a worker's wake-up fd (e.g. an eventfd) to the epoll set, edge-triggered for
    /// `EPOLLIN` with [`WAKER_TOKEN`]: it ends a [`wait`](Self::wait); `poll` ignores it. The
    /// caller keeps it open (closing it removes it) and drains it itself.
    pub fn add_waker(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::epoll_add(self.epoll.as_fd(), fd, EV_IN | EV_ET, WAKER_TOKEN)
    }

    /// Removes a fd added with [`add_waker`](Self::add_waker).
    pub fn remove_waker(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::epoll_del(self.epoll.as_fd(), fd)
    }

    /// The counters.
    pub fn stats(&self) -> KernelStats {
        self.stats
    }

    /// The settings in force (`max_connections` capped to what slot ids can address).
    pub fn config(&self) -> &KernelConfig {
        &self.cfg
    }

    /// Closed connections still waiting for the peer's FIN.
    pub fn closing(&self) -> usize {
        self.closing
    }

    fn id(&self, idx: usize) -> ConnId {
        ConnId {
            slot: idx as u32,
            generation: self.slots.get(idx).map_or(0, |s| s.generation),
        }
    }

    /// The slot of a connecting or open connection.
    fn slot_of(&self, conn: ConnId) -> Option<usize> {
        let idx = conn.slot as usize;
        let s = self.slots.get(idx)?;
        (s.live() && s.generation == conn.generation).then_some(idx)
    }

    fn has_buffered_work(&self) -> bool {
        self.ready.iter().any(|&i| {
            self.slots.get(i as usize).is_some_and(|s| {
                s.state == State::Open && (s.kernel_readable || (s.buffered() > 0 && !s.stalled))
            })
        }) || !self.draining.is_empty()
    }

    /// Takes a free slot with a new generation and token; the caller fills it or returns it.
    fn alloc(&mut self) -> Option<usize> {
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None if self.slots.len() < self.max_slots => {
                self.slots.push(Slot::new());
                self.slots.len() - 1
            }
            None => return None,
        };
        let slot = self.slots.get_mut(idx)?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.token = idx as u64 | (u64::from(slot.generation & 0x7FFF_FFFF) << 32);
        Some(idx)
    }

    /// SO_MARK and buffer sizes, on listeners and on connections.
    fn set_socket_options(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if let Some(mark) = self.cfg.mark {
            sys::set_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as c_int)?;
        }
        let size = |n: usize| c_int::try_from(n).unwrap_or(c_int::MAX);
        if let Some(n) = self.cfg.so_rcvbuf {
            sys::set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size(n))?;
        }
        if let Some(n) = self.cfg.so_sndbuf {
            sys::set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size(n))?;
        }
        Ok(())
    }

    fn set_options(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.cfg.nodelay {
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        }
        if let Some(n) = self.cfg.notsent_lowat {
            let n = c_int::try_from(n).unwrap_or(c_int::MAX);
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, n)?;
        }
        self.set_socket_options(fd)?;
        if let Some(idle) = self.cfg.keepalive {
            // Linux rejects (EINVAL) idle times and intervals above 32767 s.
            let secs = idle.as_secs().clamp(1, 32767) as c_int;
            sys::set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs)?;
            sys::set_int(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                (secs / 3).max(1),
            )?;
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
        }
        Ok(())
    }

    /// Drops the slot's socket (deregistered first) and frees it. No event.
    fn release(&mut self, idx: usize) {
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        match slot.state {
            State::Free => return,
            State::Connecting | State::Open => self.live -= 1,
            State::Closing => self.closing -= 1,
        }
        if let Some(s) = slot.stream.as_ref() {
            let _ = sys::epoll_del(self.epoll.as_fd(), s.as_fd());
        }
        let untrusted = slot.untrusted.take();
        slot.clear();
        self.free.push(idx as u32);
        if let Some(src) = untrusted {
            self.forget_untrusted(src);
        }
    }

    fn forget_untrusted(&mut self, src: IpAddr) {
        self.untrusted = self.untrusted.saturating_sub(1);
        if let Some(n) = self.untrusted_by_source.get_mut(&src) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.untrusted_by_source.remove(&src);
            }
        }
    }

    /// Whether one more untrusted connection from `src` may be accepted; counts the refusal if
    /// not.
    fn untrusted_room(&mut self, src: IpAddr) -> bool {
        if self.untrusted >= self.cfg.untrusted_total {
            self.stats.refused_untrusted += 1;
            return false;
        }
        let from_src = self.untrusted_by_source.get(&src).copied().unwrap_or(0);
        if from_src as usize >= self.cfg.untrusted_per_source {
            self.stats.refused_source += 1;
            return false;
        }
        true
    }

    fn emit_down(&mut self, idx: usize, reason: CloseReason) {
        match reason {
            CloseReason::Fin => self.stats.down_fin += 1,
            CloseReason::Reset => self.stats.down_reset += 1,
            CloseReason::Timeout => self.stats.down_timeout += 1,
            CloseReason::Local => self.stats.down_local += 1,
        }
        let conn = self.id(idx);
        self.pending.push(TransportEvent::Down { conn, reason });
    }

    /// The connection ended for `reason`: `Down`, and the slot is freed.
    fn fail(&mut self, idx: usize, reason: CloseReason) {
        if self
            .slots
            .get(idx)
            .is_some_and(|s| s.state == State::Connecting)
        {
            self.stats.connect_failed += 1;
        }
        self.emit_down(idx, reason);
        self.release(idx);
    }

    fn mark_readable(&mut self, idx: usize) {
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        slot.kernel_readable = true;
        if !slot.in_ready {
            slot.in_ready = true;
            self.ready.push(idx as u32);
        }
    }

    fn on_event(&mut self, bits: u32, token: u64) {
        if token == WAKER_TOKEN {
            return;
        }
        if token & LISTENER_TAG != 0 {
            self.accept_from((token & !LISTENER_TAG) as usize);
            return;
        }
        let idx = (token & 0xFFFF_FFFF) as usize;
        let Some(slot) = self.slots.get(idx) else {
            return;
        };
        if slot.token != token {
            return;
        }
        match slot.state {
            State::Free => {}
            State::Connecting => self.on_connecting(idx, bits),
            State::Open => self.on_open(idx, bits),
            State::Closing => {
                if bits & (EV_IN | EV_RDHUP | EV_HUP | EV_ERR) != 0 {
                    self.drained(idx);
                }
            }
        }
    }

    fn on_connecting(&mut self, idx: usize, bits: u32) {
        if bits & (EV_OUT | EV_ERR | EV_HUP) == 0 {
            return;
        }
        let Some(stream) = self.slots.get(idx).and_then(|s| s.stream.as_ref()) else {
            return;
        };
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return self.fail(idx, reason_of(&e)),
        }
        if bits & EV_OUT == 0 {
            // Hung up without an error code: treat it as refused.
            return self.fail(idx, CloseReason::Reset);
        }
        let (local, peer) = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(l), Ok(p)) => (l, p),
            // ENOTCONN: it died between the event and now.
            _ => return self.fail(idx, CloseReason::Reset),
        };
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        slot.state = State::Open;
        slot.writable = true;
        slot.remote = None;
        if bits & (EV_RDHUP | EV_HUP) != 0 {
            slot.rdhup = true;
        }
        self.stats.connected += 1;
        let conn = self.id(idx);
        self.pending.push(TransportEvent::Up {
            conn,
            local,
            peer,
            role: TcpRole::Originator,
        });
        if bits & (EV_IN | EV_RDHUP | EV_HUP) != 0 {
            self.mark_readable(idx);
        }
    }

    fn on_open(&mut self, idx: usize, bits: u32) {
        if bits & EV_ERR != 0 {
            let err = self
                .slots
                .get(idx)
                .and_then(|s| s.stream.as_ref())
                .map(TcpStream::take_error);
            // Without an error code, a read finds out what happened.
            if let Some(Ok(Some(e)) | Err(e)) = err {
                return self.fail(idx, reason_of(&e));
            }
        }
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if bits & EV_OUT != 0 {
            slot.writable = true;
        }
        if bits & (EV_RDHUP | EV_HUP | EV_ERR) != 0 {
            slot.rdhup = true;
        }
        if bits & (EV_IN | EV_RDHUP | EV_HUP | EV_ERR) != 0 {
            self.mark_readable(idx);
        }
    }

    fn accept_from(&mut self, li: usize) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listeners.get(li) else {
                return;
            };
            match sys::accept(listener.as_fd()) {
                Ok(fd) => self.adopt(fd),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                    // EMFILE, ENOBUFS, ...: try again on the next poll.
                    _ => {
                        self.stats.accept_errors += 1;
                        return;
                    }
                },
            }
        }
    }

    /// Takes an accepted socket into a slot, or closes it when full.
    fn adopt(&mut self, fd: OwnedFd) {
        if self.live >= self.cfg.max_connections {
            self.stats.refused_full += 1;
            return;
        }
        if self.set_options(fd.as_fd()).is_err() {
            self.stats.accept_errors += 1;
            return;
        }
        let stream = TcpStream::from(fd);
        let (local, peer) = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(l), Ok(p)) => (l, p),
            _ => {
                self.stats.accept_errors += 1;
                return;
            }
        };
        let src = source_group(peer.ip());
        if !self.untrusted_room(src) {
            // A reset, not a FIN: no TIME_WAIT here, and the peer learns at once.
            let _ = sys::set_linger_zero(stream.as_fd());
            return;
        }
        let Some(idx) = self.alloc() else {
            self.stats.refused_full += 1;
            return;
        };
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        // Registering reports data that arrived before it, so no readiness is lost.
        if sys::epoll_add(self.epoll.as_fd(), stream.as_fd(), CONN_EVENTS, slot.token).is_err() {
            self.free.push(idx as u32);
            self.stats.accept_errors += 1;
            return;
        }
        slot.stream = Some(stream);
        slot.state = State::Open;
        slot.writable = true;
        slot.untrusted = Some(src);
        self.untrusted += 1;
        *self.untrusted_by_source.entry(src).or_insert(0) += 1;
        self.live += 1;
        self.stats.accepted += 1;
        let conn = self.id(idx);
        self.pending.push(TransportEvent::Up {
            conn,
            local,
            peer,
            role: TcpRole::Responder,
        });
    }

    /// Reads and discards what a closing socket received, up to a budget per call.
    fn drain_closing(&mut self, idx: usize) -> Drain {
        let Some(stream) = self.slots.get(idx).and_then(|s| s.stream.as_ref()) else {
            return Drain::Done;
        };
        let mut scratch = [0u8; DRAIN_CHUNK];
        let mut reader = stream;
        for _ in 0..CLOSE_DRAIN_READS {
            match reader.read(&mut scratch) {
                Ok(0) => return Drain::Done,
                Ok(n) => self.stats.discarded += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drain::Idle,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Drain::Done,
            }
        }
        Drain::More
    }

    /// Drains a closing slot once and acts on the outcome.
    fn drained(&mut self, idx: usize) {
        match self.drain_closing(idx) {
            Drain::Done => self.release(idx),
            Drain::Idle => {}
            Drain::More => {
                if let Some(slot) = self.slots.get_mut(idx)
                    && !slot.in_drain
                {
                    slot.in_drain = true;
                    self.draining.push(idx as u32);
                }
            }
        }
    }

    /// Continues draining sockets whose budget ran out (no new edge would come for them).
    fn run_drains(&mut self) {
        let mut i = 0;
        while let Some(&s) = self.draining.get(i) {
            let idx = s as usize;
            let closing = self
                .slots
                .get(idx)
                .is_some_and(|slot| slot.state == State::Closing);
            let outcome = if closing {
                self.drain_closing(idx)
            } else {
                Drain::Idle
            };
            match outcome {
                Drain::More => {
                    i += 1;
                    continue;
                }
                Drain::Done => self.release(idx),
                Drain::Idle => {}
            }
            if let Some(slot) = self.slots.get_mut(idx) {
                slot.in_drain = false;
            }
            self.draining.swap_remove(i);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(d) = self.connect_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.connect_deadlines.pop_front();
            if d.holds(&self.slots, State::Connecting) {
                self.fail(d.slot as usize, CloseReason::Timeout);
            }
        }
        while let Some(d) = self.close_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.close_deadlines.pop_front();
            if d.holds(&self.slots, State::Closing) {
                self.release(d.slot as usize);
            }
        }
    }
}

impl Transport for KernelTransport {
    fn poll(&mut self, now: Instant, events: &mut Vec<TransportEvent>) -> io::Result<()> {
        self.now = now;
        let n = sys::epoll_wait(self.epoll.as_fd(), &mut self.ev_buf, 0)?;
        for i in 0..n {
            let Some(ev) = self.ev_buf.get(i).copied() else {
                break;
            };
            // By-value copies: the struct is packed on x86_64.
            let (bits, token) = (ev.events, ev.u64);
            self.on_event(bits, token);
        }
        self.run_drains();
        self.expire(now);
        events.append(&mut self.pending);
        Ok(())
    }

    fn listen(&mut self, local: SocketAddr) -> io::Result<()> {
        self.listen_bound(local).map(drop)
    }

    fn connect(&mut self, local: Option<SocketAddr>, remote: SocketAddr) -> io::Result<ConnId> {
        // The pending check bounds the events queued by connect/abort cycles without a poll.
        if self.live >= self.cfg.max_connections || self.pending.len() >= self.max_slots {
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                "max_connections reached",
            ));
        }
        if local.is_some_and(|l| l.is_ipv4() != remote.is_ipv4()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "local and remote address families differ",
            ));
        }
        let fd = sys::tcp_socket(&remote)?;
        self.set_options(fd.as_fd())?;
        if let Some(l) = local {
            sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            sys::bind(fd.as_fd(), &l)?;
        }
        let started = sys::connect(fd.as_fd(), &remote);
        let idx = self
            .alloc()
            .ok_or_else(|| io::Error::new(io::ErrorKind::QuotaExceeded, "connection table full"))?;
        if let Err(e) = started {
            // Refused or unreachable at once (it happens on loopback): report it like a late
            // failure. The slot stays free; its new generation keeps the id unique.
            if matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::ETIMEDOUT | libc::EHOSTUNREACH)
            ) {
                self.free.push(idx as u32);
                self.stats.connect_failed += 1;
                self.emit_down(idx, reason_of(&e));
                return Ok(self.id(idx));
            }
            self.free.push(idx as u32);
            return Err(e);
        }
        let Some(slot) = self.slots.get_mut(idx) else {
            return Err(stale());
        };
        if let Err(e) = sys::epoll_add(self.epoll.as_fd(), fd.as_fd(), CONN_EVENTS, slot.token) {
            self.free.push(idx as u32);
            return Err(e);
        }
        slot.stream = Some(TcpStream::from(fd));
        slot.remote = Some(remote);
        slot.state = State::Connecting;
        self.live += 1;
        let generation = slot.generation;
        // No deadline if it lies beyond what Instant can represent.
        if let Some(at) = self
            .cfg
            .connect_timeout
            .and_then(|t| self.now.checked_add(t))
        {
            let d = Deadline {
                at,
                slot: idx as u32,
                generation,
            };
            // If the queue is full the kernel's own SYN timeout still applies.
            push_deadline(
                &mut self.connect_deadlines,
                self.cfg.max_connections,
                &self.slots,
                State::Connecting,
                d,
            );
        }
        Ok(self.id(idx))
    }

    fn readable(&mut self, out: &mut Vec<ConnId>) {
        let mut i = 0;
        while let Some(&s) = self.ready.get(i) {
            let idx = s as usize;
            let keep = self.slots.get(idx).is_some_and(|slot| {
                slot.state == State::Open && (slot.buffered() > 0 || slot.kernel_readable)
            });
            if keep {
                out.push(self.id(idx));
                i += 1;
            } else {
                if let Some(slot) = self.slots.get_mut(idx) {
                    slot.in_ready = false;
                }
                self.ready.swap_remove(i);
            }
        }
    }

    fn recv<F: FnOnce(&mut [u8]) -> usize>(&mut self, conn: ConnId, f: F) -> io::Result<usize> {
        let idx = self.slot_of(conn).ok_or_else(stale)?;
        let cap = self.cfg.recv_buffer;
        let Some(slot) = self.slots.get_mut(idx) else {
            return Err(stale());
        };
        if slot.state != State::Open {
            return Ok(0);
        }
        if slot.kernel_readable && !slot.eof {
            match slot.fill(cap) {
                Fill::Data(n) => self.stats.bytes_in += n as u64,
                Fill::Again => self.stats.read_eagain += 1,
                Fill::Eof | Fill::Full => {}
                Fill::Failed(e) => {
                    self.fail(idx, reason_of(&e));
                    return Ok(0);
                }
            }
        }
        let Some(slot) = self.slots.get_mut(idx) else {
            return Err(stale());
        };
        let avail = slot.buffered();
        let mut consumed = 0;
        if avail > 0
            && let Some(bytes) = slot
                .rbuf
                .as_mut()
                .and_then(|b| b.get_mut(slot.rpos..slot.rlen))
        {
            consumed = f(bytes).min(avail);
            slot.stalled = consumed == 0;
            slot.rpos += consumed;
            if slot.rpos == slot.rlen {
                slot.rpos = 0;
                slot.rlen = 0;
            }
        }
        // After the FIN: done once everything was taken or `f` could take nothing more.
        if slot.eof && (slot.buffered() == 0 || consumed == 0) {
            self.fail(idx, CloseReason::Fin);
        }
        Ok(consumed)
    }

    fn send_capacity(&self, conn: ConnId) -> usize {
        match self.slot_of(conn).and_then(|i| self.slots.get(i)) {
            Some(s) if s.state == State::Open && s.writable => SEND_CAPACITY_HINT,
            _ => 0,
        }
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.send_with(conn, |fd| sys::send(fd, data))
    }

    fn send_vectored(&mut self, conn: ConnId, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.send_with(conn, |fd| sys::send_vectored(fd, bufs))
    }

    fn close(&mut self, conn: ConnId) {
        let Some(idx) = self.slot_of(conn) else {
            return;
        };
        self.emit_down(idx, CloseReason::Local);
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        // Not yet connected, or the peer already finished: nothing to wait for.
        if slot.state == State::Connecting || slot.eof || self.closing >= self.cfg.max_connections {
            return self.release(idx);
        }
        if let Some(s) = slot.stream.as_ref() {
            let _ = s.shutdown(Shutdown::Write);
        }
        slot.state = State::Closing;
        slot.rbuf = None;
        slot.rpos = 0;
        slot.rlen = 0;
        let generation = slot.generation;
        self.live -= 1;
        self.closing += 1;
        // A timeout beyond what Instant can represent means waiting for the FIN only.
        let queued = self
            .now
            .checked_add(self.cfg.close_timeout)
            .is_none_or(|at| {
                let d = Deadline {
                    at,
                    slot: idx as u32,
                    generation,
                };
                push_deadline(
                    &mut self.close_deadlines,
                    self.cfg.max_connections,
                    &self.slots,
                    State::Closing,
                    d,
                )
            });
        if !queued {
            return self.release(idx);
        }
        // Bytes that arrived before the close raise no new edge: drain them now.
        self.drained(idx);
    }

    fn abort(&mut self, conn: ConnId) {
        let Some(idx) = self.slot_of(conn) else {
            return;
        };
        if let Some(s) = self.slots.get(idx).and_then(|s| s.stream.as_ref()) {
            let _ = sys::set_linger_zero(s.as_fd());
        }
        self.emit_down(idx, CloseReason::Local);
        self.release(idx);
    }

    fn connections(&self) -> usize {
        self.live
    }

    /// The connection no longer counts against `untrusted_total` and `untrusted_per_source`,
    /// and its receive buffer may grow to `recv_buffer`.
    fn mark_trusted(&mut self, conn: ConnId) {
        let Some(idx) = self.slot_of(conn) else {
            return;
        };
        let Some(src) = self.slots.get_mut(idx).and_then(|s| s.untrusted.take()) else {
            return;
        };
        self.forget_untrusted(src);
    }

    fn refusals(&self) -> Refusals {
        Refusals {
            refused: self.stats.refused_full
                + self.stats.refused_untrusted
                + self.stats.refused_source,
            untrusted: self.untrusted as u64,
        }
    }
}
