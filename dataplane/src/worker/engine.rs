//! The transport-independent heart of a worker: RFC 9329 framing per connection, the SA tables,
//! the SPD, the IKE-SA-to-connection binding, and the RFC 9329 §6.1 connection rules. The same
//! engine runs over smoltcp and over kernel sockets.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::directory::SpiDirectory;
use super::forward::{Mesh, PolicyUpdate};
use super::handle::{
    Command, CommandError, Conn, Direction, Event, ExpiryCause, IkeBytes, IkeSaId, Lifetime,
    RemovedSa, SaCounter, VerifyFailure, WorkerChannels,
};
use super::send_queue::SendQueue;
use super::spd::{FlowKey, Spd};
use super::stats::{WorkerStats, bump};
use crate::crypto::ICV_LEN;
use crate::port::{HEADROOM, Packet, PacketPool};
use crate::sa::{DecapError, Decapped, EncapError, InboundSa, OutboundSa};
use crate::transport::{CloseReason, ConnId, TcpRole, Transport, TransportEvent};
use crate::wire::esp::{ESP_PREFIX_LEN, parse_header};
use crate::wire::frame::{
    FrameDecoder, FrameEncoder, FrameKind, FrameLoc, FrameRef, LENGTH_FIELD_LEN,
    MAX_IKE_MESSAGE_LEN, NON_ESP_MARKER, StreamError, encode_esp_in_place,
};

/// A connection's run of ESP for another worker's SPIs is reported at its first frame and then
/// every this many frames (a lost report or a forged first frame does not stall a move).
const FOREIGN_REPORT_EVERY: u32 = 64;
/// Frames handed to the transport per send call.
const FLUSH_BURST: usize = 64;
/// Received bytes deframed per transport call.
const RECV_CHUNK: usize = 64 * 1024;
/// Packets taken from the inbox (other workers' plaintext) per `send_plain`: more than one
/// worker's plaintext burst, so an inbox fed by a few workers keeps up.
const INBOX_BURST: usize = 256;

/// Where the SPD sends a packet: an outbound SA of this worker, or one of another worker (the
/// packet goes to that worker's inbox, see [`forward`](super::forward)). Outbound SPIs are the
/// peers' choice, unique only per worker, so a remote policy is named by worker and SPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Route {
    Local(u32),
    Forward { worker: u16, spi: u32 },
}

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Consecutive ESP frames with unknown SPIs tolerated before the connection is closed as
    /// corrupt. A few are normal around rekeys (RFC 9329 §6.1, R-6.1-p); many mean a desynchronised
    /// or injected stream (R-6.1-o, R-10-a).
    pub unknown_spi_limit: u32,
    /// Consecutive frames that are neither IKE nor ESP before the connection is closed (R-6.1-o).
    pub unparseable_limit: u32,
    /// Frames queued per connection waiting for TCP send space; past it the worker stops reading
    /// plaintext (backpressure) instead of dropping.
    pub conn_queue: usize,
    /// Bytes queued per connection (frames not yet taken by TCP) past which the same
    /// backpressure applies, whichever bound comes first: a peer with a zero window holds at
    /// most this much (RFC 9329 §9: a short outer queue).
    pub conn_queue_bytes: usize,
    /// Frames of IKE waiting per connection beyond `conn_queue` before IKE messages are dropped.
    pub ike_queue: usize,
    /// Bytes of IKE allowed beyond `conn_queue_bytes`, likewise.
    pub ike_queue_bytes: usize,
    /// How long a connection's queue may stay full with TCP taking nothing before its peer
    /// counts as stalled (a zero window, a dead path): its packets are then dropped
    /// (`queue_full`) instead of held, so one stalled peer holds the plaintext of the worker's
    /// other tunnels this long at most. Any byte TCP takes ends it. Time, not loop tries: a
    /// busy-polling worker spins through thousands of tries within one round trip.
    pub stall_after: Duration,
    /// Decrypted packets waiting for the plaintext port; past it the worker stops reading TCP.
    pub plain_queue: usize,
    /// IKE bytes of one connection handed to control and not yet consumed; past it the worker
    /// stops reading that connection (TCP's window then pushes back on the peer).
    pub ike_bytes_per_conn: usize,
    /// The same for all connections of the worker together.
    pub ike_bytes_total: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            unknown_spi_limit: 16,
            unparseable_limit: 4,
            conn_queue: 512,
            conn_queue_bytes: 1 << 20,
            ike_queue: 64,
            ike_queue_bytes: 512 * 1024,
            // A few milliseconds of the worker's loop: far longer than a busy connection waits
            // for its next ACK, far shorter than a retransmission timeout.
            stall_after: Duration::from_millis(100),
            plain_queue: 1024,
            ike_bytes_per_conn: 256 * 1024,
            ike_bytes_total: 8 * 1024 * 1024,
        }
    }
}

/// Hasher for SPIs and ids we chose ourselves (random, so no attacker controls the distribution
/// of stored keys): one multiply instead of SipHash on the per-packet lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// One TCP connection as the engine sees it.
#[derive(Debug)]
struct ConnState {
    role: TcpRole,
    token: Option<u64>,
    decoder: FrameDecoder,
    /// Frames (and the prefix) waiting for send space.
    out: SendQueue,
    /// IKE SAs bound to this connection (one, two during an IKE SA rekey; RFC 9329 §6.1).
    ike_sas: Vec<IkeSaId>,
    health: Health,
    /// Listed in `Engine::backlog` (its queue was not empty after the last write).
    in_backlog: bool,
    /// Bytes of its IKE messages that control has not consumed yet (see [`IkeBytes`]).
    ike_bytes: Arc<AtomicUsize>,
    /// The transport was told this Responder connection proved itself (`mark_trusted`).
    trusted: bool,
}

/// RFC 9329 §6.1 corruption tracking of one connection.
#[derive(Debug, Default)]
struct Health {
    unknown_spi_run: u32,
    unparseable_run: u32,
    /// ESP frames in a row for SPIs of another worker (see `SpiDirectory`); the first and every
    /// [`FOREIGN_REPORT_EVERY`]th are reported.
    foreign_run: u32,
    /// Set when the connection must be closed (`Some(true)`: with RST); acted on after the
    /// current receive.
    doomed: Option<bool>,
}

#[derive(Debug)]
struct InEntry {
    sa: Box<InboundSa>,
    ike_sa: IkeSaId,
    lifetime: Lifetime,
    soft_sent: bool,
    dead: bool,
}

#[derive(Debug)]
struct OutEntry {
    sa: Box<OutboundSa>,
    ike_sa: IkeSaId,
    lifetime: Lifetime,
    soft_sent: bool,
    dead: bool,
}

/// Which connection an IKE SA and its Child SAs use now.
#[derive(Debug, Default)]
struct Group {
    /// Where outbound traffic goes: the connection that most recently carried a valid message
    /// (RFC 9329 §6.1, R-6.1-t), or the one control bound.
    active: Option<ConnId>,
    /// Authentic inbound ESP arrived since the last stats report: proof of the peer's liveness
    /// for control's dead-peer detection (RFC 7296 §2.4).
    inbound_seen: bool,
}

/// Why `encap_one` did not produce a frame.
enum Encap<'a> {
    /// The target connection's queue is full; the packet is untouched.
    Full(ConnId),
    /// The SA is on that worker; the packet is untouched.
    Forward(u16),
    /// Dropped; bump this counter.
    Drop(Option<&'a std::sync::atomic::AtomicU64>),
}

/// Per-worker state and logic; see the module docs.
#[derive(Debug)]
pub struct Engine {
    index: u16,
    cfg: EngineConfig,
    commands: Receiver<Command>,
    events: Sender<Event>,
    stats: Arc<WorkerStats>,
    directory: SpiDirectory,
    conns: FastMap<ConnId, ConnState>,
    inbound: FastMap<u32, InEntry>,
    outbound: FastMap<u32, OutEntry>,
    spd: Spd<Route>,
    mesh: Mesh,
    groups: FastMap<IkeSaId, Group>,
    connect_tokens: FastMap<ConnId, u64>,
    /// Addresses listened on: a second `Listen` of one (an endpoint removed and added again,
    /// a reload) succeeds without a second socket.
    listening: Vec<SocketAddr>,
    /// Decrypted inner packets for the plaintext port.
    pub(crate) plain_out: VecDeque<Packet>,
    /// Buffers of this worker.
    pub(crate) pool: PacketPool,
    /// Plaintext packets read but not yet sent because a connection queue was full, each with
    /// whether another worker forwarded it.
    held: VecDeque<(Packet, bool)>,
    frames: Vec<FrameRef>,
    readable: Vec<ConnId>,
    to_close: Vec<(ConnId, bool)>,
    /// Responder connections that carried authentic ESP, to be marked trusted after the receive.
    to_trust: Vec<ConnId>,
    /// Connections whose queues TCP did not take in full.
    backlog: Vec<ConnId>,
    /// Reliable events that found the channel full, oldest first (see [`Event`]).
    outbox: VecDeque<Event>,
    /// IKE bytes of all connections handed to control and not yet consumed.
    ike_total: Arc<AtomicUsize>,
    /// The worker's clock at the start of this iteration ([`set_now`](Self::set_now)).
    now: Instant,
}

/// Sends a reliable event: behind those already waiting, and kept in `outbox` if the channel is
/// full. Never drops and never blocks. (A free function so callers can hold other fields.)
fn send_reliable(
    events: &Sender<Event>,
    outbox: &mut VecDeque<Event>,
    stats: &WorkerStats,
    ev: Event,
) {
    if !outbox.is_empty() {
        outbox.push_back(ev);
        return;
    }
    match events.try_send(ev) {
        Ok(()) => {}
        Err(TrySendError::Full(ev)) => {
            bump(&stats.events_deferred, 1);
            outbox.push_back(ev);
        }
        // Control is gone; the worker stops when its command channel closes.
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Sends a hint (stats, SPI reports): dropped and counted if the channel is full. Returns the
/// event it could not send.
fn send_lossy(events: &Sender<Event>, stats: &WorkerStats, ev: Event) -> Option<Event> {
    match events.try_send(ev) {
        Ok(()) => None,
        Err(TrySendError::Full(ev) | TrySendError::Disconnected(ev)) => {
            bump(&stats.events_dropped, 1);
            Some(ev)
        }
    }
}

impl Engine {
    /// An engine for the worker whose channels these are.
    pub fn new(ch: WorkerChannels, cfg: EngineConfig, pool: PacketPool) -> Self {
        Engine {
            index: ch.index,
            cfg,
            commands: ch.commands,
            events: ch.events,
            stats: ch.stats,
            directory: ch.directory,
            conns: FastMap::default(),
            inbound: FastMap::default(),
            outbound: FastMap::default(),
            spd: Spd::default(),
            mesh: ch.mesh,
            groups: FastMap::default(),
            connect_tokens: FastMap::default(),
            listening: Vec::new(),
            plain_out: VecDeque::new(),
            pool,
            held: VecDeque::new(),
            frames: Vec::with_capacity(256),
            readable: Vec::with_capacity(256),
            to_close: Vec::new(),
            to_trust: Vec::new(),
            backlog: Vec::new(),
            outbox: VecDeque::new(),
            ike_total: Arc::new(AtomicUsize::new(0)),
            now: Instant::now(),
        }
    }

    /// The worker's monotonic clock for this iteration (the engine reads none itself).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Worker index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The live counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    fn conn(&self, id: ConnId) -> Conn {
        Conn {
            worker: self.index,
            id,
        }
    }

    /// Sends a reliable event (see [`send_reliable`]).
    fn emit(&mut self, ev: Event) {
        send_reliable(&self.events, &mut self.outbox, &self.stats, ev);
    }

    /// Moves events waiting in the outbox into the channel as far as it has room.
    pub fn flush_events(&mut self) {
        while let Some(ev) = self.outbox.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => {
                    self.outbox.push_front(ev);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    /// Reliable events waiting for room in the channel.
    pub fn events_waiting(&self) -> usize {
        self.outbox.len()
    }

    fn ack(&mut self, ack: u64, result: Result<(), CommandError>) {
        self.emit(Event::Ack {
            worker: self.index,
            ack,
            result,
        });
    }

    /// Plaintext packets are held back (a connection queue is full): do not read more.
    pub fn backpressured(&self) -> bool {
        !self.held.is_empty()
    }

    /// Emits a stats snapshot event, with the IKE SAs that received authentic ESP since the
    /// last report.
    pub fn report_stats(&mut self) {
        let mut inbound_esp = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            if std::mem::take(&mut g.inbound_seen) {
                inbound_esp.push(*id);
            }
        }
        let ev = Event::Stats {
            worker: self.index,
            stats: Box::new(self.stats.snapshot()),
            inbound_esp,
        };
        // Dropped when control lags; the liveness marks then wait for the next report.
        if let Some(Event::Stats { inbound_esp, .. }) = send_lossy(&self.events, &self.stats, ev) {
            for id in inbound_esp {
                if let Some(g) = self.groups.get_mut(&id) {
                    g.inbound_seen = true;
                }
            }
        }
    }

    /// Applies every queued command. Returns false on `Shutdown`.
    pub fn handle_commands<T: Transport>(&mut self, t: &mut T) -> bool {
        self.flush_events();
        self.apply_policy_updates();
        while let Ok(cmd) = self.commands.try_recv() {
            bump(&self.stats.commands, 1);
            if !self.apply(t, cmd) {
                return false;
            }
        }
        true
    }

    /// Other workers' outbound SAs come and go in this worker's SPD as forward entries, in the
    /// order their owners changed them; the newest in front, as for local SAs.
    fn apply_policy_updates(&mut self) {
        while let Some(u) = self.mesh.next_update() {
            match u {
                PolicyUpdate::Install {
                    owner,
                    spi,
                    selectors,
                } => {
                    let route = Route::Forward { worker: owner, spi };
                    self.spd.insert_front(selectors, route);
                }
                PolicyUpdate::Remove { owner, spi } => {
                    self.spd.remove(Route::Forward { worker: owner, spi });
                }
            }
        }
    }

    fn apply<T: Transport>(&mut self, t: &mut T, cmd: Command) -> bool {
        match cmd {
            Command::Listen { local, ack } => {
                let r = if self.listening.contains(&local) {
                    Ok(())
                } else {
                    t.listen(local)
                        .map(|()| self.listening.push(local))
                        .map_err(|e| CommandError::Listen {
                            local,
                            kind: e.kind(),
                        })
                };
                self.ack(ack, r);
            }
            Command::Connect {
                local,
                remote,
                token,
            } => match t.connect(local, remote) {
                Ok(id) => {
                    self.connect_tokens.insert(id, token);
                }
                Err(_) => {
                    let conn = self.conn(ConnId {
                        slot: u32::MAX,
                        generation: 0,
                    });
                    self.emit(Event::ConnDown {
                        conn,
                        reason: CloseReason::Local,
                        token: Some(token),
                    });
                }
            },
            Command::Close { conn, abort } => {
                if self.conns.contains_key(&conn) {
                    self.flush_conn(t, conn);
                    if abort { t.abort(conn) } else { t.close(conn) }
                }
            }
            Command::InstallInbound {
                sa,
                ike_sa,
                lifetime,
                ack,
            } => {
                let spi = sa.spi();
                if self.inbound.contains_key(&spi) {
                    // Never overwrite a live SA (its keys and replay window would be lost).
                    let dir = Direction::Inbound;
                    self.ack(ack, Err(CommandError::DuplicateSpi { spi, dir }));
                    return true;
                }
                self.groups.entry(ike_sa).or_default();
                self.directory.insert(spi, self.index);
                self.inbound.insert(
                    spi,
                    InEntry {
                        sa,
                        ike_sa,
                        lifetime,
                        soft_sent: false,
                        dead: false,
                    },
                );
                self.ack(ack, Ok(()));
            }
            Command::InstallOutbound {
                sa,
                ike_sa,
                selectors,
                lifetime,
                ack,
            } => {
                let spi = sa.spi();
                if self.outbound.contains_key(&spi) {
                    // The peer chose an SPI another SA of this worker sends with: refused, so
                    // one peer's SA never replaces another's.
                    let dir = Direction::Outbound;
                    self.ack(ack, Err(CommandError::DuplicateSpi { spi, dir }));
                    return true;
                }
                self.groups.entry(ike_sa).or_default();
                self.outbound.insert(
                    spi,
                    OutEntry {
                        sa,
                        ike_sa,
                        lifetime,
                        soft_sent: false,
                        dead: false,
                    },
                );
                // The other workers forward what matches to this one.
                let owner = self.index;
                self.mesh.announce(|| PolicyUpdate::Install {
                    owner,
                    spi,
                    selectors: selectors.clone(),
                });
                // The newest SA for these selectors wins (rekey: RFC 7296 §2.8).
                self.spd.insert_front(selectors, Route::Local(spi));
                self.ack(ack, Ok(()));
            }
            Command::BindIkeSa { ike_sa, conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    // Control binds only after the IKE SA authenticated (R-6.1-t).
                    if c.role == TcpRole::Responder && !c.trusted {
                        c.trusted = true;
                        t.mark_trusted(conn);
                    }
                    if !c.ike_sas.contains(&ike_sa) {
                        c.ike_sas.push(ike_sa);
                    }
                    self.groups.entry(ike_sa).or_default().active = Some(conn);
                }
            }
            Command::DeleteSa { spi, dir, ack } => {
                let removed = match dir {
                    Direction::Inbound => {
                        self.directory.remove(spi, self.index);
                        self.inbound.remove(&spi).map(|e| RemovedSa::Inbound(e.sa))
                    }
                    Direction::Outbound => {
                        self.spd.remove(Route::Local(spi));
                        let removed = self.outbound.remove(&spi);
                        if removed.is_some() {
                            let owner = self.index;
                            self.mesh.announce(|| PolicyUpdate::Remove { owner, spi });
                        }
                        removed.map(|e| RemovedSa::Outbound(e.sa))
                    }
                };
                match removed {
                    Some(r) => {
                        self.emit(Event::SaRemoved(r));
                        self.ack(ack, Ok(()));
                    }
                    None => self.ack(ack, Err(CommandError::NoSuchSa { spi, dir })),
                }
            }
            Command::VerifyEsp {
                spi,
                mut frame,
                ack,
            } => {
                let r = self.verify_esp(spi, &mut frame);
                let counter = match r {
                    Ok(()) => &self.stats.verify_ok,
                    Err(_) => &self.stats.verify_failed,
                };
                bump(counter, 1);
                self.ack(
                    ack,
                    r.map_err(|failure| CommandError::Verify { spi, failure }),
                );
            }
            Command::ForgetIkeSa { ike_sa } => {
                self.groups.remove(&ike_sa);
                for c in self.conns.values_mut() {
                    c.ike_sas.retain(|x| *x != ike_sa);
                }
            }
            Command::SendIke { conn, msg } => self.queue_ike(t, conn, &msg),
            Command::Barrier { ack } => self.ack(ack, Ok(())),
            Command::ReportSas { ack } => {
                let inbound = self.inbound.iter().map(|(&spi, e)| {
                    let (packets, bytes) = e.sa.counters();
                    SaCounter {
                        spi,
                        dir: Direction::Inbound,
                        packets,
                        bytes,
                    }
                });
                let outbound = self.outbound.iter().map(|(&spi, e)| {
                    let (packets, bytes) = e.sa.counters();
                    SaCounter {
                        spi,
                        dir: Direction::Outbound,
                        packets,
                        bytes,
                    }
                });
                let sas = inbound.chain(outbound).collect();
                let worker = self.index;
                self.emit(Event::SaCounters { worker, ack, sas });
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn queue_ike<T: Transport>(&mut self, t: &mut T, conn: ConnId, msg: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if msg.is_empty()
            || msg.len() > MAX_IKE_MESSAGE_LEN
            || c.out.reached(
                self.cfg.conn_queue + self.cfg.ike_queue,
                self.cfg.conn_queue_bytes + self.cfg.ike_queue_bytes,
            )
        {
            bump(&self.stats.queue_full, 1);
            return;
        }
        // RFC 9329 §3.1: Length ‖ non-ESP marker ‖ IKE message.
        let need = HEADROOM + LENGTH_FIELD_LEN + NON_ESP_MARKER.len() + msg.len();
        let mut p = if need <= self.pool.buf_size() {
            self.pool.get()
        } else {
            Packet::with_size(need + 64)
        };
        let body = LENGTH_FIELD_LEN + NON_ESP_MARKER.len() + msg.len();
        let out = p.prepare(body);
        if crate::wire::frame::encode_ike(msg, out).is_err() {
            return;
        }
        c.out.push(p);
        bump(&self.stats.ike_out, 1);
        self.flush_conn(t, conn);
    }

    /// Handles connection events from the transport.
    pub fn on_transport_events<T: Transport>(
        &mut self,
        t: &mut T,
        events: &mut Vec<TransportEvent>,
    ) {
        for ev in events.drain(..) {
            match ev {
                TransportEvent::Up {
                    conn,
                    local,
                    peer,
                    role,
                } => self.conn_up(t, conn, local, peer, role),
                TransportEvent::Down { conn, reason } => self.conn_down(conn, reason),
            }
        }
    }

    fn conn_up<T: Transport>(
        &mut self,
        t: &mut T,
        id: ConnId,
        local: SocketAddr,
        peer: SocketAddr,
        role: TcpRole,
    ) {
        bump(&self.stats.conns_up, 1);
        let token = self.connect_tokens.remove(&id);
        let mut st = ConnState {
            role,
            token,
            decoder: FrameDecoder::new(role),
            out: SendQueue::default(),
            ike_sas: Vec::new(),
            health: Health::default(),
            in_backlog: false,
            ike_bytes: Arc::new(AtomicUsize::new(0)),
            trusted: false,
        };
        // RFC 9329 §4, §6.1: an Originator's stream starts with the prefix, on every connection.
        let mut enc = FrameEncoder::new(role);
        let prefix = enc.pending_prefix();
        if !prefix.is_empty() {
            let mut p = self.pool.get();
            if p.fill_from(prefix) {
                st.out.push(p);
            }
            enc.mark_prefix_sent();
        }
        self.conns.insert(id, st);
        self.flush_conn(t, id);
        self.emit(Event::ConnUp {
            conn: self.conn(id),
            local,
            peer,
            role,
            token,
        });
    }

    fn conn_down(&mut self, id: ConnId, reason: CloseReason) {
        let token = self.connect_tokens.remove(&id);
        if let Some(mut st) = self.conns.remove(&id) {
            bump(&self.stats.conns_down, 1);
            // A frame cut off by the end of the stream is discarded (RFC 9329 §6.1).
            st.decoder.finish();
            st.out.clear(&mut self.pool);
            // The SAs stay (RFC 9329 §6.1, R-6.1-f); only the path is gone until a new
            // connection carries a valid message or control binds one.
            for g in self.groups.values_mut() {
                if g.active == Some(id) {
                    g.active = None;
                }
            }
            self.emit(Event::ConnDown {
                conn: self.conn(id),
                reason,
                token: st.token.or(token),
            });
        } else if token.is_some() {
            self.emit(Event::ConnDown {
                conn: self.conn(id),
                reason,
                token,
            });
        }
    }

    /// Reads every readable connection, deframes, decapsulates ESP into `plain_out`, passes IKE to
    /// control, and enforces the corruption rules.
    pub fn receive<T: Transport>(&mut self, t: &mut T) {
        self.readable.clear();
        t.readable(&mut self.readable);
        let mut readable = std::mem::take(&mut self.readable);
        'conns: for &id in &readable {
            // IKE messages control has not consumed yet: past the budget the connection is not
            // read (its bytes wait in TCP) rather than any message being dropped.
            if self.ike_over_budget(id) {
                bump(&self.stats.ike_paused, 1);
                continue;
            }
            // Bounded per connection per loop so one busy peer cannot starve the others.
            for _ in 0..64 {
                // Decrypted packets wait for the plaintext port: stop reading when that queue is
                // full and leave the bytes in TCP (its window then pushes back on the peer).
                if self.plain_out.len() >= self.cfg.plain_queue {
                    break 'conns;
                }
                let got = t.recv(id, |buf| {
                    // At most RECV_CHUNK bytes per call bound the packets one call can produce;
                    // a frame cut at the boundary is carried by the decoder.
                    let n = buf.len().min(RECV_CHUNK);
                    if let Some(chunk) = buf.get_mut(..n) {
                        self.process_rx(id, chunk);
                    }
                    n
                });
                match got {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.health.doomed.is_some())
                    || self.ike_over_budget(id)
                {
                    break;
                }
            }
        }
        readable.clear();
        self.readable = readable;
        for (id, abort) in std::mem::take(&mut self.to_close) {
            if abort { t.abort(id) } else { t.close(id) }
        }
        for id in std::mem::take(&mut self.to_trust) {
            t.mark_trusted(id);
        }
    }

    /// Whether `id`'s IKE messages, or all of the worker's, waiting for control reached their
    /// budget (see [`EngineConfig::ike_bytes_per_conn`]).
    fn ike_over_budget(&self, id: ConnId) -> bool {
        self.ike_total.load(Ordering::Relaxed) >= self.cfg.ike_bytes_total
            || self
                .conns
                .get(&id)
                .is_some_and(|c| c.ike_bytes.load(Ordering::Relaxed) >= self.cfg.ike_bytes_per_conn)
    }

    /// Deframes one received chunk, then handles its frames in order; each run of consecutive
    /// ESP frames for one SA is decrypted as a batch (see [`rx_esp_run`](Self::rx_esp_run)).
    fn process_rx(&mut self, id: ConnId, buf: &mut [u8]) {
        // Out of the map while its frames are handled, so the frame bytes (which may live in the
        // decoder's carry buffer) and the rest of the engine can be borrowed together.
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        if c.health.doomed.is_none() {
            let keepalives = c.decoder.stats().keepalive;
            self.frames.clear();
            let res = c.decoder.decode(buf, &mut self.frames);
            let frames = std::mem::take(&mut self.frames);
            let mut i = 0;
            while let Some(f) = frames.get(i) {
                if c.health.doomed.is_some() {
                    break;
                }
                let ConnState {
                    role,
                    decoder,
                    health,
                    ike_sas,
                    trusted,
                    ike_bytes,
                    ..
                } = &mut c;
                let mut src = FrameSource {
                    buf: &mut *buf,
                    carry: decoder.carry_mut(),
                };
                match f.kind {
                    FrameKind::Ike => {
                        health.unparseable_run = 0;
                        if let Some(bytes) = src.get(f) {
                            bump(&self.stats.ike_in, 1);
                            let msg = IkeBytes::charged(bytes.to_vec(), ike_bytes, &self.ike_total);
                            let conn = self.conn(id);
                            self.emit(Event::IkeMessage { conn, msg });
                        }
                    }
                    FrameKind::Esp => {
                        health.unparseable_run = 0;
                        let rx = (health, ike_sas, trusted);
                        // At least the first frame; the frames it took are done.
                        i += self
                            .rx_esp_run(id, *role, &frames[i..], &mut src, rx)
                            .max(1);
                        continue;
                    }
                    FrameKind::Unparseable => {
                        bump(&self.stats.frames_unparseable, 1);
                        health.unparseable_run += 1;
                        // RFC 9329 §6.1 (R-6.1-o): too many consecutive frames that are neither
                        // IKE nor ESP mean the stream is corrupt.
                        if health.unparseable_run >= self.cfg.unparseable_limit {
                            bump(&self.stats.closed_corrupt, 1);
                            health.doomed = Some(true);
                        }
                    }
                }
                i += 1;
            }
            self.frames = frames;
            // RFC 9329 §6.6: keepalives are dropped silently; only counted.
            bump(
                &self.stats.keepalives_in,
                c.decoder.stats().keepalive - keepalives,
            );
            if let Err(e) = res {
                // RFC 9329 §3.1/§3.2 (Length 0 or 1) and §6.1 (no prefix, R-6.1-n): close the
                // connection; the SAs survive (R-6.1-f).
                bump(&self.stats.closed_stream_error, 1);
                c.health.doomed = Some(matches!(e, StreamError::BadPrefix));
            }
            if let Some(abort) = c.health.doomed {
                self.to_close.push((id, abort));
            }
        }
        self.conns.insert(id, c);
    }

    /// Handles the ESP frame `frames[0]` and the ESP frames right behind it for the same SPI:
    /// one SA lookup for the run, each packet decrypted straight out of the receive buffer into
    /// a pool packet (`decap_into`: the ring is read once and nothing is copied after), checked
    /// and delivered in order. Stops after a frame that dooms the connection or kills the SA, so
    /// what follows is judged as it would be alone. Returns how many frames it handled.
    #[inline]
    fn rx_esp_run(
        &mut self,
        id: ConnId,
        role: TcpRole,
        frames: &[FrameRef],
        src: &mut FrameSource<'_>,
        (health, ike_sas, trusted): (&mut Health, &mut Vec<IkeSaId>, &mut bool),
    ) -> usize {
        let Some(first) = frames.first().and_then(|f| src.get(f)) else {
            return 1;
        };
        let spi = parse_header(first).map_or(0, |h| h.0);
        let conn = self.conn(id);
        let Some(e) = self.inbound.get_mut(&spi).filter(|e| !e.dead) else {
            bump(&self.stats.unknown_spi, 1);
            if self.directory.owner(spi).is_some_and(|w| w != self.index) {
                // Another worker holds it: not corruption (R-6.1-p). Control asks the owner to
                // verify the packet before anything moves (R-6.1-t, R-10-e).
                if health.foreign_run.is_multiple_of(FOREIGN_REPORT_EVERY) {
                    let frame = first.to_vec();
                    let ev = Event::ForeignEsp { conn, spi, frame };
                    let _ = send_lossy(&self.events, &self.stats, ev);
                }
                health.foreign_run = health.foreign_run.wrapping_add(1);
                return 1;
            }
            health.unknown_spi_run += 1;
            if health.unknown_spi_run == 1 {
                let _ = send_lossy(&self.events, &self.stats, Event::UnknownSpi { conn, spi });
            }
            // A few unknown SPIs are tolerated (R-6.1-p); a run of them means the stream is
            // corrupt or injected (R-6.1-o, R-10-a).
            if health.unknown_spi_run >= self.cfg.unknown_spi_limit {
                bump(&self.stats.closed_corrupt, 1);
                health.doomed = Some(true);
            }
            return 1;
        };
        // What a pool packet holds behind its headroom: the plaintext of a longer packet is
        // decrypted in place in the receive buffer instead (and then does not fit, as before).
        let room = self.pool.buf_size().saturating_sub(HEADROOM);
        let mut done = 0;
        for f in frames {
            if f.kind != FrameKind::Esp {
                break;
            }
            let Some(bytes) = src.get_mut(f) else {
                done += 1;
                continue;
            };
            if parse_header(bytes).map_or(0, |h| h.0) != spi {
                break;
            }
            done += 1;
            let ct_len = bytes.len().saturating_sub(ESP_PREFIX_LEN + ICV_LEN);
            let mut out = (ct_len <= room).then(|| self.pool.get());
            let res = match &mut out {
                Some(p) => e.sa.decap_into(bytes, p.buffer_mut().0, HEADROOM),
                None => {
                    let len = bytes.len();
                    e.sa.decap(bytes, 0..len)
                }
            };
            match res {
                Ok(d) => {
                    health.unknown_spi_run = 0;
                    health.foreign_run = 0;
                    if role == TcpRole::Responder && !*trusted {
                        *trusted = true;
                        self.to_trust.push(id);
                    }
                    // Authentic and not a replay: on the Responder this connection is now the
                    // IKE SA's path (RFC 9329 §6.1, R-6.1-t; validated as §10 asks, R-10-e).
                    // The Originator keeps the connection it chose, unless it has none.
                    let g = self.groups.entry(e.ike_sa).or_default();
                    if g.active != Some(id) && (role == TcpRole::Responder || g.active.is_none()) {
                        g.active = Some(id);
                        if !ike_sas.contains(&e.ike_sa) {
                            ike_sas.push(e.ike_sa);
                        }
                        // Control learns which connection carries the IKE SA now (a
                        // reconnected Originator may send only ESP on it).
                        let ev = Event::PathMoved {
                            ike_sa: e.ike_sa,
                            conn,
                        };
                        send_reliable(&self.events, &mut self.outbox, &self.stats, ev);
                    }
                    let inner = match out {
                        Some(p) => Inner::Packet(p),
                        None => Inner::At(bytes),
                    };
                    accepted!(self).accept(spi, e, inner, d);
                    if e.dead {
                        // A hard limit was reached: the rest of the run is for a dead SA.
                        break;
                    }
                    continue;
                }
                Err(DecapError::Authentication) => {
                    // RFC 9329 §6.1 (R-6.1-o): a failed ICV on a known SPI means corruption:
                    // close. The frames behind it are not looked at.
                    bump(&self.stats.icv_failures, 1);
                    bump(&self.stats.closed_corrupt, 1);
                    health.doomed = Some(true);
                }
                Err(DecapError::Replay(_)) => {
                    health.unknown_spi_run = 0;
                    bump(&self.stats.replays, 1);
                }
                Err(_) => {
                    // Too short to be ESP, or authentic but unusable (padding, Next Header,
                    // inner packet): dropped, not corruption of the stream.
                    bump(&self.stats.bad_payload, 1);
                }
            }
            if let Some(p) = out {
                self.pool.put(p);
            }
            if health.doomed.is_some() {
                break;
            }
        }
        done
    }

    /// `Command::VerifyEsp`: a packet that arrived on another worker's connection, checked with
    /// this worker's SA. It changes nothing here but the replay window (after the ICV, as for
    /// any packet) and is delivered if it passes.
    fn verify_esp(&mut self, spi: u32, frame: &mut [u8]) -> Result<(), VerifyFailure> {
        let Some(e) = self.inbound.get_mut(&spi).filter(|e| !e.dead) else {
            return Err(VerifyFailure::NoSa);
        };
        let len = frame.len();
        match e.sa.decap(frame, 0..len) {
            Ok(d) => {
                accepted!(self).accept(spi, e, Inner::At(frame), d);
                Ok(())
            }
            Err(DecapError::Authentication) => {
                bump(&self.stats.icv_failures, 1);
                Err(VerifyFailure::Integrity)
            }
            Err(DecapError::Replay(_)) => {
                bump(&self.stats.replays, 1);
                Err(VerifyFailure::Replay)
            }
            Err(_) => {
                bump(&self.stats.bad_payload, 1);
                Err(VerifyFailure::Malformed)
            }
        }
    }

    /// Encapsulates plaintext packets (SPD → SA → ESP → frame) into their connections' queues:
    /// those held back before, then those other workers forwarded here (unless still held
    /// back), then `burst`. Packets for another worker's SA go to its inbox. Packets that do
    /// not fit a full queue are held; call [`backpressured`](Self::backpressured).
    pub fn send_plain<T: Transport>(&mut self, t: &mut T, burst: &mut Vec<Packet>) {
        let mut pending = std::mem::take(&mut self.held);
        if pending.is_empty() {
            self.take_forwarded(&mut pending);
        }
        pending.extend(burst.drain(..).map(|p| (p, false)));
        let mut touched: Vec<ConnId> = Vec::new();
        while let Some((mut p, forwarded)) = pending.pop_front() {
            match self.encap_one(t, &mut p, forwarded) {
                // Sealed straight into TCP's send buffer: the plaintext buffer is free again.
                Ok(None) => self.pool.put(p),
                Ok(Some(conn)) => {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        self.pool.put(p);
                        continue;
                    };
                    c.out.push(p);
                    if !touched.contains(&conn) {
                        touched.push(conn);
                    }
                }
                Err(Encap::Full(conn)) => {
                    // The connection's queue is full: try to write it out; if TCP takes nothing,
                    // keep this packet (not yet encapsulated) and the rest for the next loop,
                    // unless the peer has stalled: then drop it and go on with the rest.
                    // Checking before encapsulation keeps the queue at `conn_queue` frames, so
                    // IKE messages always find room behind it.
                    self.flush_conn(t, conn);
                    let now = self.now;
                    let blocked = match self.conns.get_mut(&conn) {
                        Some(c)
                            if c.out
                                .reached(self.cfg.conn_queue, self.cfg.conn_queue_bytes) =>
                        {
                            Some(c.out.note_blocked(now))
                        }
                        _ => None,
                    };
                    if blocked.is_some_and(|b| b.for_ >= self.cfg.stall_after) {
                        if !forwarded {
                            bump(&self.stats.plain_in, 1);
                        }
                        bump(&self.stats.queue_full, 1);
                        self.pool.put(p);
                        continue;
                    }
                    if let Some(b) = blocked {
                        if b.first {
                            bump(&self.stats.queue_held, 1);
                        }
                        pending.push_front((p, forwarded));
                        self.held = pending;
                        break;
                    }
                    pending.push_front((p, forwarded));
                }
                Err(Encap::Forward(worker)) => self.forward(worker, p),
                Err(Encap::Drop(counter)) => {
                    if let Some(c) = counter {
                        bump(c, 1);
                    }
                    self.pool.put(p);
                }
            }
        }
        for id in touched {
            self.flush_conn(t, id);
        }
    }

    /// Moves up to [`INBOX_BURST`] packets from the inbox to `pending`, and offers as many
    /// spare buffers back to the workers that forward here.
    fn take_forwarded(&mut self, pending: &mut VecDeque<(Packet, bool)>) {
        for _ in 0..INBOX_BURST {
            let Some(p) = self.mesh.take_forwarded() else {
                break;
            };
            bump(&self.stats.fwd_in, 1);
            pending.push_back((p, true));
            if let Some(spare) = self.pool.take_spare()
                && let Err(spare) = self.mesh.give_spare(spare)
            {
                self.pool.put(spare);
            }
        }
    }

    /// Passes a packet to the worker holding its SA; a full inbox drops it (never blocks).
    fn forward(&mut self, worker: u16, p: Packet) {
        match self.mesh.forward(worker, p) {
            Ok(spare) => {
                bump(&self.stats.fwd_out, 1);
                if let Some(spare) = spare {
                    self.pool.put(spare);
                }
            }
            Err(p) => {
                bump(&self.stats.fwd_dropped, 1);
                self.pool.put(p);
            }
        }
    }

    /// Packets other workers forwarded here wait (`send_plain` takes them).
    pub fn forwarded_waiting(&self) -> bool {
        self.mesh.inbox_len() > 0
    }

    /// SPD lookup and ESP encapsulation of one packet into an RFC 9329 frame. Where the
    /// connection's queue is empty the frame is sealed straight into TCP's send buffer
    /// (`Ok(None)`, the packet untouched); otherwise, or where the buffer has no contiguous room
    /// for it, in place in the packet, which then holds the frame (`Ok(Some(conn))`, to be
    /// queued behind the frames waiting). `Full` (packet untouched) if that connection's queue
    /// is full; `Forward` (untouched) if another worker holds its SA; or the counter to bump
    /// for a dropped packet. A packet `forwarded` here was counted in `fwd_in`, not `plain_in`.
    fn encap_one<T: Transport>(
        &mut self,
        t: &mut T,
        p: &mut Packet,
        forwarded: bool,
    ) -> Result<Option<ConnId>, Encap<'_>> {
        let count_in = |stats: &WorkerStats| {
            if !forwarded {
                bump(&stats.plain_in, 1);
            }
        };
        let Some(key) = FlowKey::parse(p.data()) else {
            count_in(&self.stats);
            return Err(Encap::Drop(Some(&self.stats.encap_errors)));
        };
        let spi = match self.spd.lookup(&key) {
            Some(Route::Local(spi)) => Some(spi),
            Some(Route::Forward { worker, .. }) if !forwarded => {
                count_in(&self.stats);
                return Err(Encap::Forward(worker));
            }
            // A forwarded packet is never passed on again: while two workers' views of each
            // other's SAs differ (an SA moving between them) it would bounce. It has no SA here.
            Some(Route::Forward { .. }) | None => None,
        };
        let route = spi.and_then(|spi| {
            let e = self.outbound.get(&spi).filter(|e| !e.dead)?;
            Some((spi, self.groups.get(&e.ike_sa).and_then(|g| g.active)))
        });
        let Some((spi, conn)) = route else {
            count_in(&self.stats);
            return Err(Encap::Drop(Some(&self.stats.no_sa)));
        };
        let Some(conn) = conn else {
            count_in(&self.stats);
            return Err(Encap::Drop(Some(&self.stats.no_connection)));
        };
        // One lookup for both: is the queue full (then nothing is encapsulated), is it empty
        // (then the frame may go straight to TCP, in order).
        let (full, empty) = self.conns.get(&conn).map_or((false, false), |c| {
            (
                c.out
                    .reached(self.cfg.conn_queue, self.cfg.conn_queue_bytes),
                c.out.is_empty(),
            )
        });
        if full {
            return Err(Encap::Full(conn));
        }
        count_in(&self.stats);
        let Some(e) = self.outbound.get_mut(&spi) else {
            return Err(Encap::Drop(Some(&self.stats.no_sa)));
        };
        let inner_len = p.len() as u64;
        let (buf, range) = p.buffer_mut();
        let mut direct_err = None;
        let direct = empty
            && t.send_in_place(conn, |ring| {
                let Some(body) = ring.get_mut(LENGTH_FIELD_LEN..) else {
                    return 0;
                };
                match e.sa.encap_into(buf, range.clone(), body) {
                    // RFC 9329 §3.2: Length in front of the ESP packet.
                    Ok(n) => {
                        match encode_esp_in_place(ring, LENGTH_FIELD_LEN..LENGTH_FIELD_LEN + n) {
                            Ok(frame) => frame.len(),
                            Err(_) => {
                                direct_err = Some(EncapError::NoRoom);
                                0
                            }
                        }
                    }
                    // No contiguous room for the frame (the ring wraps, or is nearly full):
                    // sealed in place below and queued instead.
                    Err(EncapError::NoRoom) => 0,
                    Err(err) => {
                        direct_err = Some(err);
                        0
                    }
                }
            })
            .is_ok_and(|n| n > 0);
        let res = match direct_err {
            Some(err) => Err(err),
            None if direct => Ok(None),
            // RFC 9329 §3.2: Length in front of the ESP packet, in the headroom.
            None => e.sa.encap(buf, range).and_then(|esp| {
                encode_esp_in_place(buf, esp)
                    .map(Some)
                    .map_err(|_| EncapError::NoRoom)
            }),
        };
        let frame = match res {
            Ok(frame) => frame,
            Err(EncapError::SequenceExhausted) => {
                e.dead = true;
                self.emit_expiry(spi, Direction::Outbound, true, ExpiryCause::Sequence);
                return Err(Encap::Drop(Some(&self.stats.encap_errors)));
            }
            Err(_) => return Err(Encap::Drop(Some(&self.stats.encap_errors))),
        };
        let queued = frame.map(|frame| {
            p.set_range(frame);
            conn
        });
        bump(&self.stats.esp_out, 1);
        bump(&self.stats.bytes_encap, inner_len);
        let (packets, bytes) = e.sa.counters();
        let seq_soft = e.sa.seq_remaining() < e.sa.seq_max() / 8;
        let mut fired = Vec::new();
        check_lifetime(
            e.lifetime,
            packets,
            bytes,
            &mut e.soft_sent,
            &mut e.dead,
            |hard, cause| fired.push((hard, cause)),
        );
        if seq_soft && !e.soft_sent {
            e.soft_sent = true;
            fired.push((false, ExpiryCause::Sequence));
        }
        for (hard, cause) in fired {
            self.emit_expiry(spi, Direction::Outbound, hard, cause);
        }
        Ok(queued)
    }

    fn emit_expiry(&mut self, spi: u32, dir: Direction, hard: bool, cause: ExpiryCause) {
        self.emit(Event::SaExpired {
            worker: self.index,
            spi,
            dir,
            hard,
            cause,
        });
    }

    /// Writes queued frames of the connections that still have some (only those: with 10,000
    /// idle connections this must not scan them all).
    pub fn flush<T: Transport>(&mut self, t: &mut T) {
        let mut ids = std::mem::take(&mut self.backlog);
        for &id in &ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.in_backlog = false;
            }
        }
        for &id in &ids {
            self.flush_conn(t, id);
        }
        ids.clear();
        if self.backlog.is_empty() {
            self.backlog = ids;
        }
    }

    /// Writes as much of the connection's queue as TCP takes, up to 64 frames per call (one
    /// syscall per burst on the kernel transport).
    fn flush_conn<T: Transport>(&mut self, t: &mut T, id: ConnId) {
        self.write_queue(t, id);
        if let Some(c) = self.conns.get_mut(&id)
            && !c.out.is_empty()
            && !c.in_backlog
        {
            c.in_backlog = true;
            self.backlog.push(id);
        }
    }

    fn write_queue<T: Transport>(&mut self, t: &mut T, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        loop {
            let iov = c.out.slices(FLUSH_BURST);
            if iov.is_empty() {
                return;
            }
            let total: usize = iov.iter().map(|s| s.len()).sum();
            let sent = match t.send_vectored(id, &iov) {
                Ok(n) => n,
                Err(_) => return,
            };
            drop(iov);
            c.out.consume(sent, &mut self.pool);
            if sent < total {
                return;
            }
        }
    }

    /// Plaintext packets waiting to be written, and the pool, for the worker loop.
    pub fn plain_out_and_pool(&mut self) -> (&mut VecDeque<Packet>, &mut PacketPool) {
        (&mut self.plain_out, &mut self.pool)
    }

    /// The pool (for reading plaintext bursts).
    pub fn pool_mut(&mut self) -> &mut PacketPool {
        &mut self.pool
    }

    /// Open connections the engine tracks.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The connection an IKE SA's traffic uses now (for tests and diagnostics).
    pub fn active_conn(&self, ike_sa: IkeSaId) -> Option<ConnId> {
        self.groups.get(&ike_sa).and_then(|g| g.active)
    }
}

/// Borrows an engine's [`Accepted`] parts while its SA table is borrowed elsewhere.
macro_rules! accepted {
    ($e:expr) => {
        Accepted {
            index: $e.index,
            stats: &$e.stats,
            events: &$e.events,
            outbox: &mut $e.outbox,
            groups: &mut $e.groups,
            pool: &mut $e.pool,
            plain_out: &mut $e.plain_out,
        }
    };
}
use accepted;

/// The parts of an engine that an authentic inbound ESP packet touches, borrowed apart from
/// the SA table that holds the SA (`accepted!(engine)` borrows them).
struct Accepted<'a> {
    index: u16,
    stats: &'a WorkerStats,
    events: &'a Sender<Event>,
    outbox: &'a mut VecDeque<Event>,
    groups: &'a mut FastMap<IkeSaId, Group>,
    pool: &'a mut PacketPool,
    plain_out: &'a mut VecDeque<Packet>,
}

impl Accepted<'_> {
    /// Counts an authentic, non-replayed packet of `e`, marks its IKE SA alive, delivers the
    /// inner packet and checks the SA's traffic limits.
    fn accept(&mut self, spi: u32, e: &mut InEntry, inner: Inner<'_>, d: Decapped) {
        bump(&self.stats.esp_in, 1);
        self.groups.entry(e.ike_sa).or_default().inbound_seen = true;
        match (d, inner) {
            (Decapped::Packet { range, .. }, Inner::Packet(mut p)) => {
                if p.set_range(range) {
                    bump(&self.stats.bytes_decap, p.len() as u64);
                    self.plain_out.push_back(p);
                } else {
                    bump(&self.stats.bad_payload, 1);
                    self.pool.put(p);
                }
            }
            (Decapped::Packet { range, .. }, Inner::At(bytes)) => {
                let mut p = self.pool.get();
                if bytes.get(range).is_some_and(|inner| p.fill_from(inner)) {
                    bump(&self.stats.bytes_decap, p.len() as u64);
                    self.plain_out.push_back(p);
                } else {
                    bump(&self.stats.bad_payload, 1);
                    self.pool.put(p);
                }
            }
            (Decapped::Dummy { .. }, inner) => {
                bump(&self.stats.dummies, 1);
                if let Inner::Packet(p) = inner {
                    self.pool.put(p);
                }
            }
        }
        let (packets, bytes) = e.sa.counters();
        let index = self.index;
        let (events, outbox, stats) = (self.events, &mut *self.outbox, self.stats);
        check_lifetime(
            e.lifetime,
            packets,
            bytes,
            &mut e.soft_sent,
            &mut e.dead,
            |hard, cause| {
                let ev = Event::SaExpired {
                    worker: index,
                    spi,
                    dir: Direction::Inbound,
                    hard,
                    cause,
                };
                send_reliable(events, outbox, stats, ev);
            },
        );
    }
}

/// Where an authentic packet's plaintext is: decrypted into a pool packet (`decap_into`), or in
/// place in the bytes it arrived in (`decap`), to be copied out.
enum Inner<'a> {
    Packet(Packet),
    At(&'a [u8]),
}

/// The bytes one received chunk's frames live in: the chunk, or the decoder's carry buffer
/// for a frame that began in an earlier chunk.
struct FrameSource<'a> {
    buf: &'a mut [u8],
    carry: &'a mut [u8],
}

impl FrameSource<'_> {
    fn get(&self, f: &FrameRef) -> Option<&[u8]> {
        match f.loc {
            FrameLoc::Input => self.buf.get(f.range.clone()),
            FrameLoc::Carry => self.carry.get(f.range.clone()),
        }
    }

    fn get_mut(&mut self, f: &FrameRef) -> Option<&mut [u8]> {
        match f.loc {
            FrameLoc::Input => self.buf.get_mut(f.range.clone()),
            FrameLoc::Carry => self.carry.get_mut(f.range.clone()),
        }
    }
}

/// Soft/hard traffic limits; `fire(hard, cause)` once per crossing.
#[inline]
fn check_lifetime(
    l: Lifetime,
    packets: u64,
    bytes: u64,
    soft_sent: &mut bool,
    dead: &mut bool,
    mut fire: impl FnMut(bool, ExpiryCause),
) {
    if *dead {
        return;
    }
    if packets >= l.hard_packets || bytes >= l.hard_bytes {
        *dead = true;
        fire(
            true,
            if packets >= l.hard_packets {
                ExpiryCause::Packets
            } else {
                ExpiryCause::Bytes
            },
        );
    } else if !*soft_sent && (packets >= l.soft_packets || bytes >= l.soft_bytes) {
        *soft_sent = true;
        fire(
            false,
            if packets >= l.soft_packets {
                ExpiryCause::Packets
            } else {
                ExpiryCause::Bytes
            },
        );
    }
}
