//! Engine tests against a scripted transport: the test plays the peer byte by byte, so every
//! RFC 9329 §6.1 connection rule can be exercised exactly.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::engine::{Engine, EngineConfig};
use super::handle::{
    Command, CommandError, DataplaneHandle, Direction, Event, ExpiryCause, IkeSaId, Lifetime,
    VerifyFailure, channels, channels_with,
};
use super::spd::{Selectors, TrafficSelector};
use crate::crypto::{Backend, Keymat, Suite};
use crate::port::PacketPool;
use crate::sa::{Decapped, InboundSa, OutboundSa, SaParams};
use crate::transport::{CloseReason, ConnId, TcpRole, Transport, TransportEvent};
use crate::wire::frame::{
    FrameDecoder, FrameKind, FrameRef, STREAM_PREFIX, TcpRole as Role, encode_esp, encode_ike,
};

mod forward;

#[derive(Default)]
struct FakeConn {
    /// Bytes the engine will read.
    rx: VecDeque<u8>,
    /// Bytes the engine wrote.
    tx: Vec<u8>,
    closed: Option<bool>,
    /// Bytes TCP would still take (`None`: any number); `Some(0)` is a peer's zero window.
    window: Option<usize>,
}

struct FakeTransport {
    conns: HashMap<ConnId, FakeConn>,
    /// `send_in_place` lends at most this many contiguous bytes (within the window), as a ring
    /// near its wrap would; `None`: it lends nothing (a kernel socket).
    lend: Option<usize>,
    /// Calls of `send_in_place` that took bytes.
    in_place_sends: usize,
    events: Vec<TransportEvent>,
    next: u32,
    /// Connections the engine marked trusted, in order.
    trusted: Vec<ConnId>,
    /// Addresses `listen` was called for, in order.
    listens: Vec<SocketAddr>,
}

impl Default for FakeTransport {
    fn default() -> Self {
        FakeTransport {
            conns: HashMap::new(),
            lend: Some(usize::MAX),
            in_place_sends: 0,
            events: Vec::new(),
            next: 0,
            trusted: Vec::new(),
            listens: Vec::new(),
        }
    }
}

impl FakeTransport {
    fn open(&mut self, role: TcpRole, peer: SocketAddr) -> ConnId {
        let id = ConnId {
            slot: self.next,
            generation: 1,
        };
        self.next += 1;
        self.conns.insert(id, FakeConn::default());
        let local: SocketAddr = "192.0.2.1:4500".parse().expect("addr");
        self.events.push(TransportEvent::Up {
            conn: id,
            local,
            peer,
            role,
        });
        id
    }
    fn feed(&mut self, id: ConnId, bytes: &[u8]) {
        self.conns.get_mut(&id).expect("conn").rx.extend(bytes);
    }
    fn take_tx(&mut self, id: ConnId) -> Vec<u8> {
        std::mem::take(&mut self.conns.get_mut(&id).expect("conn").tx)
    }
    fn closed(&self, id: ConnId) -> Option<bool> {
        self.conns.get(&id).and_then(|c| c.closed)
    }
    fn set_window(&mut self, id: ConnId, window: Option<usize>) {
        self.conns.get_mut(&id).expect("conn").window = window;
    }
    fn drop_conn(&mut self, id: ConnId, reason: CloseReason) {
        self.events.push(TransportEvent::Down { conn: id, reason });
    }
}

impl Transport for FakeTransport {
    fn mark_trusted(&mut self, conn: ConnId) {
        self.trusted.push(conn);
    }
    fn poll(&mut self, _now: Instant, events: &mut Vec<TransportEvent>) -> io::Result<()> {
        events.append(&mut self.events);
        Ok(())
    }
    fn listen(&mut self, local: SocketAddr) -> io::Result<()> {
        if self.listens.contains(&local) {
            // As a kernel socket would: the address is in use.
            return Err(io::ErrorKind::AddrInUse.into());
        }
        self.listens.push(local);
        Ok(())
    }
    fn connect(&mut self, _local: Option<SocketAddr>, remote: SocketAddr) -> io::Result<ConnId> {
        Ok(self.open(TcpRole::Originator, remote))
    }
    fn readable(&mut self, out: &mut Vec<ConnId>) {
        let mut ids: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.rx.is_empty() && c.closed.is_none())
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        out.extend(ids);
    }
    fn recv<F: FnOnce(&mut [u8]) -> usize>(&mut self, conn: ConnId, f: F) -> io::Result<usize> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(0);
        };
        if c.rx.is_empty() {
            return Ok(0);
        }
        let n = f(c.rx.make_contiguous());
        c.rx.drain(..n);
        Ok(n)
    }
    fn send_capacity(&self, _conn: ConnId) -> usize {
        usize::MAX
    }
    fn send(&mut self, conn: ConnId, data: &[u8]) -> io::Result<usize> {
        match self.conns.get_mut(&conn) {
            Some(c) if c.closed.is_none() => {
                let n = c.window.map_or(data.len(), |w| w.min(data.len()));
                if let Some(w) = &mut c.window {
                    *w -= n;
                }
                c.tx.extend_from_slice(&data[..n]);
                Ok(n)
            }
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn send_in_place<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        conn: ConnId,
        f: F,
    ) -> io::Result<usize> {
        let Some(lend) = self.lend else {
            return Ok(0);
        };
        match self.conns.get_mut(&conn) {
            Some(c) if c.closed.is_none() => {
                // Stale bytes, as a ring buffer's free part holds.
                let mut ring = vec![0xa5u8; c.window.unwrap_or(lend).min(lend).min(1 << 17)];
                let n = f(&mut ring).min(ring.len());
                if let Some(w) = &mut c.window {
                    *w -= n;
                }
                c.tx.extend_from_slice(&ring[..n]);
                if n > 0 {
                    self.in_place_sends += 1;
                }
                Ok(n)
            }
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closed = Some(false);
        }
    }
    fn abort(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closed = Some(true);
        }
    }
    fn connections(&self) -> usize {
        self.conns.len()
    }
}

const IKE: IkeSaId = IkeSaId(7);
const SPI_IN: u32 = 0x1111_0001; // ours: the peer encrypts with it
const SPI_OUT: u32 = 0x2222_0001; // the peer's: we encrypt with it

fn params(spi: u32, seed: u8) -> SaParams {
    let km: Vec<u8> = (0..36u8).map(|i| i.wrapping_mul(seed)).collect();
    SaParams::new(
        spi,
        Keymat::new(Suite::Aes256Gcm16, &km).expect("km"),
        Backend::AwsLc,
    )
}

fn inner(n: u32) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x45;
    p[3] = 48;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 51, 100, 1]);
    p[16..20].copy_from_slice(&[203, 0, 113, 1]);
    p[28..32].copy_from_slice(&n.to_be_bytes());
    p
}

/// The test's peer: the other end of both SAs.
struct Peer {
    out: OutboundSa, // encrypts with SPI_IN
    inb: InboundSa,  // decrypts SPI_OUT
}

impl Peer {
    fn new() -> Self {
        Peer {
            out: OutboundSa::new(&params(SPI_IN, 3)).expect("sa"),
            inb: InboundSa::new(&params(SPI_OUT, 5)).expect("sa"),
        }
    }
    /// One RFC 9329 ESP frame carrying inner packet `n`.
    fn esp_frame(&mut self, n: u32) -> Vec<u8> {
        let pkt = inner(n);
        let mut buf = vec![0u8; 64 + pkt.len() + 32];
        buf[64..64 + pkt.len()].copy_from_slice(&pkt);
        let r = self.out.encap(&mut buf, 64..64 + pkt.len()).expect("encap");
        let mut frame = vec![0u8; r.len() + 2];
        let n = encode_esp(&buf[r], &mut frame).expect("frame");
        frame.truncate(n);
        frame
    }
    /// Decrypts every ESP frame in `bytes` (a Responder-side stream: no prefix) into inner numbers.
    fn read(&mut self, bytes: &[u8], role_of_sender: Role) -> (Vec<u32>, Vec<Vec<u8>>) {
        let mut dec = FrameDecoder::new(match role_of_sender {
            Role::Originator => Role::Responder,
            Role::Responder => Role::Originator,
        });
        let mut frames: Vec<FrameRef> = Vec::new();
        dec.decode(bytes, &mut frames).expect("stream");
        let (mut nums, mut ikes) = (Vec::new(), Vec::new());
        for f in frames {
            let mut b = bytes[f.range.clone()].to_vec();
            match f.kind {
                FrameKind::Esp => {
                    let n = b.len();
                    if let Ok(Decapped::Packet { range, .. }) = self.inb.decap(&mut b, 0..n) {
                        nums.push(u32::from_be_bytes(
                            b[range.start + 28..range.start + 32].try_into().expect("4"),
                        ));
                    }
                }
                FrameKind::Ike => ikes.push(b),
                FrameKind::Unparseable => {}
            }
        }
        (nums, ikes)
    }
}

struct Rig {
    engine: Engine,
    t: FakeTransport,
    handle: DataplaneHandle,
    peer: Peer,
    ack: u64,
}

impl Rig {
    fn new(cfg: EngineConfig) -> Self {
        Self::with_events(cfg, crate::worker::handle::EVENT_QUEUE)
    }
    fn with_events(cfg: EngineConfig, slots: usize) -> Self {
        let (handle, mut sides) = channels_with(1, slots);
        let engine = Engine::new(sides.remove(0), cfg, PacketPool::new(4096, 64));
        let mut rig = Rig {
            engine,
            t: FakeTransport::default(),
            handle,
            peer: Peer::new(),
            ack: 0,
        };
        rig.install(Lifetime::UNLIMITED);
        rig
    }
    fn cmd(&mut self, c: Command) {
        self.handle.send(0, c).expect("send");
        self.step();
    }
    fn install(&mut self, lifetime: Lifetime) {
        self.ack += 1;
        let ack = self.ack;
        let inb = Box::new(InboundSa::new(&params(SPI_IN, 3)).expect("sa"));
        self.cmd(Command::InstallInbound {
            sa: inb,
            ike_sa: IKE,
            lifetime,
            ack,
        });
        let out = Box::new(OutboundSa::new(&params(SPI_OUT, 5)).expect("sa"));
        let sel = Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector::any(false)],
        };
        self.cmd(Command::InstallOutbound {
            sa: out,
            ike_sa: IKE,
            selectors: sel,
            lifetime,
            ack: ack + 1000,
        });
        let acks: Vec<_> = self
            .events()
            .into_iter()
            .filter(|e| matches!(e, Event::Ack { result: Ok(()), .. }))
            .collect();
        assert_eq!(acks.len(), 2, "both installs acknowledged");
    }
    fn step(&mut self) {
        assert!(self.engine.handle_commands(&mut self.t));
        let mut ev = Vec::new();
        self.t.poll(Instant::now(), &mut ev).expect("poll");
        self.engine.on_transport_events(&mut self.t, &mut ev);
        self.engine.receive(&mut self.t);
        self.engine.flush(&mut self.t);
        let mut ev = Vec::new();
        self.t.poll(Instant::now(), &mut ev).expect("poll");
        self.engine.on_transport_events(&mut self.t, &mut ev);
    }
    fn events(&self) -> Vec<Event> {
        self.handle.events().try_iter().collect()
    }
    /// Inner packet numbers the engine delivered to the plaintext side.
    fn delivered(&mut self) -> Vec<u32> {
        let (q, pool) = self.engine.plain_out_and_pool();
        let v = q
            .iter()
            .map(|p| u32::from_be_bytes(p.data()[28..32].try_into().expect("4")))
            .collect();
        for p in q.drain(..) {
            pool.put(p);
        }
        v
    }
    /// Sends plaintext packet `n` through the engine.
    fn send_plain(&mut self, n: u32) {
        let mut p = self.engine.pool_mut().get();
        assert!(p.fill_from(&inner(n)));
        let mut burst = vec![p];
        self.engine.send_plain(&mut self.t, &mut burst);
    }
    /// A Responder connection that carried packet 1 of the tunnel (the IKE SA's path).
    fn carrying_conn(&mut self) -> ConnId {
        let a = self.responder_conn("192.0.2.10:40000");
        let f = self.peer.esp_frame(1);
        self.t.feed(a, &f);
        self.step();
        assert_eq!(self.delivered(), vec![1]);
        a
    }
    fn responder_conn(&mut self, peer: &str) -> ConnId {
        let id = self.t.open(TcpRole::Responder, peer.parse().expect("addr"));
        self.t.feed(id, &STREAM_PREFIX);
        self.step();
        id
    }
}

#[test]
fn r_6_1_h_r_6_1_t_new_connection_from_new_address_takes_over() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let f = r.peer.esp_frame(1);
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.delivered(), vec![1]);
    assert_eq!(r.engine.active_conn(IKE), Some(a));
    // The Originator reconnects from another address and port (NAT rebinding): accepted (R-6.1-h).
    let b = r.responder_conn("198.51.100.77:51234");
    let f = r.peer.esp_frame(2);
    r.t.feed(b, &f);
    r.step();
    assert_eq!(r.delivered(), vec![2]);
    // The Responder now sends on the connection with the latest valid message (R-6.1-t).
    assert_eq!(r.engine.active_conn(IKE), Some(b));
    r.send_plain(100);
    r.step();
    assert!(r.t.take_tx(a).is_empty());
    assert_eq!(r.peer.read(&r.t.take_tx(b), Role::Responder).0, vec![100]);
}

#[test]
fn r_6_1_u_old_connection_still_accepted_until_closed() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let b = r.responder_conn("192.0.2.10:40001");
    let (f1, f2, f3) = (
        r.peer.esp_frame(1),
        r.peer.esp_frame(2),
        r.peer.esp_frame(3),
    );
    r.t.feed(b, &f1);
    r.step();
    r.t.feed(a, &f2);
    r.step();
    r.t.feed(b, &f3);
    r.step();
    assert_eq!(
        r.delivered(),
        vec![1, 2, 3],
        "ESP accepted on old and new connections"
    );
    // IKE on the old one too.
    let mut ike = vec![0u8; 40];
    let n = encode_ike(&[0x42; 28], &mut ike).expect("ike");
    r.t.feed(a, &ike[..n]);
    r.step();
    assert!(r.events().iter().any(
        |e| matches!(e, Event::IkeMessage { conn, msg } if conn.id == a && msg.as_slice() == [0x42; 28])
    ));
    assert_eq!(r.t.closed(a), None);
}

#[test]
fn r_10_e_replay_or_forgery_does_not_move_the_send_path() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let b = r.responder_conn("192.0.2.10:40001");
    let f1 = r.peer.esp_frame(1);
    r.t.feed(a, &f1);
    r.step();
    // A replay of packet 1 on b: dropped, path stays on a.
    r.t.feed(b, &f1);
    r.step();
    assert_eq!(r.delivered(), vec![1]);
    assert_eq!(r.engine.active_conn(IKE), Some(a));
    assert_eq!(r.engine.stats().snapshot().replays, 1);
    assert_eq!(r.t.closed(b), None, "a replay is not corruption");
}

#[test]
fn r_6_1_p_a_few_unknown_spis_tolerated() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    for i in 0..3u32 {
        let mut bogus = r.peer.esp_frame(i + 10);
        bogus[2..6].copy_from_slice(&0x0bad_0000u32.to_be_bytes());
        r.t.feed(a, &bogus);
    }
    let f = r.peer.esp_frame(13);
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.t.closed(a), None);
    assert_eq!(r.delivered(), vec![13]);
    let s = r.engine.stats().snapshot();
    assert_eq!(s.unknown_spi, 3);
    assert!(r.events().iter().any(|e| matches!(
        e,
        Event::UnknownSpi {
            spi: 0x0bad_0000,
            ..
        }
    )));
}

#[test]
fn r_6_1_p_spis_of_another_worker_never_close_and_are_reported_with_the_frame() {
    let mut r = Rig::new(EngineConfig {
        unknown_spi_limit: 8,
        ..EngineConfig::default()
    });
    // Worker 3 holds this SPI (a connection landed on the wrong worker, e.g. after a NAT change).
    r.handle.directory().insert(0x0bad_0000, 3);
    let a = r.responder_conn("192.0.2.10:40000");
    let mut foreign = r.peer.esp_frame(1);
    foreign[2..6].copy_from_slice(&0x0bad_0000u32.to_be_bytes());
    for _ in 0..70 {
        r.t.feed(a, &foreign);
    }
    r.step();
    assert_eq!(r.t.closed(a), None, "not corruption");
    // The first frame and the 65th go to control, whole, so the owner can verify them.
    let reports: Vec<Vec<u8>> = r
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ForeignEsp {
                spi: 0x0bad_0000,
                frame,
                ..
            } => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(reports, vec![foreign[2..].to_vec(); 2]);
    // Our own SPIs are in the directory too, under this worker.
    assert_eq!(r.handle.directory().owner(SPI_IN), Some(0));
}

fn verify(r: &mut Rig, frame: Vec<u8>) -> Result<(), CommandError> {
    r.ack += 1;
    let ack = r.ack;
    r.cmd(Command::VerifyEsp {
        spi: SPI_IN,
        frame,
        ack,
    });
    r.events()
        .into_iter()
        .find_map(|e| match e {
            Event::Ack { ack: a, result, .. } if a == ack => Some(result),
            _ => None,
        })
        .expect("an ack")
}

/// R-10-e: the owner of an SA verifies a packet that arrived on another worker's connection
/// with the SA's key and replay window before control moves anything.
#[test]
fn r_10_e_verify_esp_passes_only_authentic_new_packets() {
    let mut r = Rig::new(EngineConfig::default());
    let good = r.peer.esp_frame(7)[2..].to_vec();
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let failure = |f| {
        Err(CommandError::Verify {
            spi: SPI_IN,
            failure: f,
        })
    };
    assert_eq!(verify(&mut r, forged), failure(VerifyFailure::Integrity));
    assert_eq!(r.delivered(), Vec::<u32>::new());
    assert_eq!(verify(&mut r, good.clone()), Ok(()));
    assert_eq!(r.delivered(), vec![7], "an authentic packet is not lost");
    assert_eq!(verify(&mut r, good), failure(VerifyFailure::Replay));
    let s = r.engine.stats().snapshot();
    assert_eq!((s.verify_ok, s.verify_failed), (1, 2));
}

/// Issue 6: an SPI is never installed twice on a worker; the live SA keeps its state.
/// An endpoint removed and added again (`iketcp down` then `up`, a reload) listens on the
/// same address again: the worker keeps its one socket and says yes.
#[test]
fn listening_twice_on_one_address_is_ok_with_one_socket() {
    let mut r = Rig::new(EngineConfig::default());
    let local: SocketAddr = "192.0.2.1:4500".parse().expect("addr");
    for ack in [101, 102] {
        r.cmd(Command::Listen { local, ack });
        let ok = r
            .events()
            .into_iter()
            .any(|e| matches!(e, Event::Ack { ack: x, result: Ok(()), .. } if x == ack));
        assert!(ok, "listen {ack}");
    }
    assert_eq!(r.t.listens, vec![local]);
}

#[test]
fn duplicate_spi_installs_are_refused() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let f = r.peer.esp_frame(1);
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.delivered(), vec![1]);
    r.ack += 1;
    let ack = r.ack;
    r.cmd(Command::InstallInbound {
        sa: Box::new(InboundSa::new(&params(SPI_IN, 9)).expect("sa")),
        ike_sa: IKE,
        lifetime: Lifetime::UNLIMITED,
        ack,
    });
    let refused = r.events().into_iter().any(|e| {
        matches!(e, Event::Ack { ack: x, result: Err(CommandError::DuplicateSpi { spi: SPI_IN, dir: Direction::Inbound }), .. } if x == ack)
    });
    assert!(refused);
    // The old SA (key 3, its replay window) still decrypts the next packet and rejects a replay.
    let f2 = r.peer.esp_frame(2);
    r.t.feed(a, &f2);
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.delivered(), vec![2]);
    assert_eq!(r.engine.stats().snapshot().replays, 1);
    r.ack += 1;
    let ack = r.ack;
    r.cmd(Command::InstallOutbound {
        sa: Box::new(OutboundSa::new(&params(SPI_OUT, 9)).expect("sa")),
        ike_sa: IKE,
        selectors: Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector::any(false)],
        },
        lifetime: Lifetime::UNLIMITED,
        ack,
    });
    assert!(r.events().into_iter().any(|e| matches!(
        e,
        Event::Ack {
            result: Err(CommandError::DuplicateSpi {
                dir: Direction::Outbound,
                ..
            }),
            ..
        }
    )));
}

#[test]
fn r_6_1_o_r_10_a_many_unknown_spis_close_the_connection_sas_survive() {
    let mut r = Rig::new(EngineConfig {
        unknown_spi_limit: 8,
        ..EngineConfig::default()
    });
    let a = r.responder_conn("192.0.2.10:40000");
    let mut bogus = r.peer.esp_frame(1);
    bogus[2..6].copy_from_slice(&0x0bad_0000u32.to_be_bytes());
    for _ in 0..8 {
        r.t.feed(a, &bogus);
    }
    r.step();
    assert_eq!(r.t.closed(a), Some(true));
    assert_eq!(r.engine.stats().snapshot().closed_corrupt, 1);
    // SA state is intact: a new connection carries the next packet.
    r.t.drop_conn(a, CloseReason::Local);
    let b = r.responder_conn("192.0.2.10:40001");
    let f = r.peer.esp_frame(2);
    r.t.feed(b, &f);
    r.step();
    assert_eq!(r.delivered(), vec![2]);
}

#[test]
fn r_6_1_o_bad_icv_on_known_spi_closes() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let mut f = r.peer.esp_frame(1);
    let last = f.len() - 1;
    f[last] ^= 1;
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.t.closed(a), Some(true));
    let s = r.engine.stats().snapshot();
    assert_eq!((s.icv_failures, s.closed_corrupt), (1, 1));
    assert!(r.delivered().is_empty());
}

#[test]
fn r_6_1_o_unparseable_frames_close_at_the_limit() {
    let mut r = Rig::new(EngineConfig {
        unparseable_limit: 3,
        ..EngineConfig::default()
    });
    let a = r.responder_conn("192.0.2.10:40000");
    r.t.feed(a, &[0, 4, 1, 2, 0, 4, 1, 2]);
    r.step();
    assert_eq!(r.t.closed(a), None, "two garbage frames tolerated");
    r.t.feed(a, &[0, 4, 1, 2]);
    r.step();
    assert_eq!(r.t.closed(a), Some(true));
}

#[test]
fn r_3_1_b_r_3_2_c_length_0_or_1_closes_connection_sas_survive() {
    for bad in [[0u8, 0], [0, 1]] {
        let mut r = Rig::new(EngineConfig::default());
        let a = r.responder_conn("192.0.2.10:40000");
        let f = r.peer.esp_frame(1);
        r.t.feed(a, &f);
        r.t.feed(a, &bad);
        r.step();
        assert_eq!(
            r.delivered(),
            vec![1],
            "frames before the fault still count"
        );
        assert!(r.t.closed(a).is_some());
        assert_eq!(r.engine.stats().snapshot().closed_stream_error, 1);
        r.t.drop_conn(a, CloseReason::Local);
        let b = r.responder_conn("192.0.2.10:40001");
        let f = r.peer.esp_frame(2);
        r.t.feed(b, &f);
        r.step();
        assert_eq!(r.delivered(), vec![2]);
    }
}

#[test]
fn r_6_1_n_no_prefix_no_service() {
    let mut r = Rig::new(EngineConfig::default());
    let id = r.t.open(
        TcpRole::Responder,
        "192.0.2.10:40000".parse().expect("addr"),
    );
    r.step();
    let f = r.peer.esp_frame(1);
    r.t.feed(id, &f);
    r.step();
    assert!(
        r.delivered().is_empty(),
        "valid ESP for a live SPI refused without the prefix"
    );
    assert_eq!(r.t.closed(id), Some(true));
    assert_eq!(r.engine.stats().snapshot().esp_in, 0);
}

#[test]
fn r_6_6_b_keepalives_dropped_silently() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    r.t.feed(a, &[0, 3, 0xff, 0, 2, 0, 3, 0xff]);
    let f = r.peer.esp_frame(1);
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.delivered(), vec![1]);
    assert_eq!(r.engine.stats().snapshot().keepalives_in, 2);
    assert_eq!(r.t.closed(a), None);
}

#[test]
fn r_6_1_f_r_10_d_fin_or_rst_keeps_sas_and_sequence_numbers() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let f = r.peer.esp_frame(1);
    r.t.feed(a, &f);
    r.step();
    assert_eq!(r.delivered(), vec![1]);
    r.send_plain(1);
    r.step();
    assert_eq!(r.peer.read(&r.t.take_tx(a), Role::Responder).0, vec![1]);
    r.t.drop_conn(a, CloseReason::Reset);
    r.step();
    // No connection: outbound traffic is dropped and counted, nothing panics, SAs stay.
    r.send_plain(2);
    assert_eq!(r.engine.stats().snapshot().no_connection, 1);
    let b = r.responder_conn("192.0.2.10:40001");
    let f = r.peer.esp_frame(2);
    r.t.feed(b, &f);
    r.step();
    assert_eq!(r.delivered(), vec![2]);
    r.send_plain(3);
    r.step();
    // The peer's inbound SA accepts it: the sequence number continued (2), no SA was lost.
    assert_eq!(r.peer.read(&r.t.take_tx(b), Role::Responder).0, vec![3]);
    assert_eq!(r.peer.inb.window().top(), 2);
}

#[test]
fn r_6_1_a_r_6_1_k_originator_sends_prefix_first_on_every_connection() {
    let mut r = Rig::new(EngineConfig::default());
    for port in [4500u16, 4501] {
        r.cmd(Command::Connect {
            local: None,
            remote: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 5), port)),
            token: u64::from(port),
        });
        r.step();
        let up = r.events().into_iter().find_map(|e| match e {
            Event::ConnUp {
                conn,
                role: TcpRole::Originator,
                token: Some(t),
                ..
            } if t == u64::from(port) => Some(conn.id),
            _ => None,
        });
        let id = up.expect("ConnUp with token");
        r.cmd(Command::BindIkeSa {
            ike_sa: IKE,
            conn: id,
        });
        r.send_plain(9);
        r.step();
        let tx = r.t.take_tx(id);
        assert_eq!(&tx[..6], b"IKETCP");
        assert_eq!(r.peer.read(&tx, Role::Originator).0, vec![9]);
        r.t.drop_conn(id, CloseReason::Reset);
        r.step();
    }
}

#[test]
fn ike_messages_both_ways() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    r.cmd(Command::SendIke {
        conn: a,
        msg: vec![0x77; 60],
    });
    let (esp, ikes) = r.peer.read(&r.t.take_tx(a), Role::Responder);
    assert!(esp.is_empty());
    assert_eq!(ikes, vec![vec![0x77; 60]]);
    assert_eq!(r.engine.stats().snapshot().ike_out, 1);
}

#[test]
fn delete_returns_sa_and_stops_traffic() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    r.cmd(Command::DeleteSa {
        spi: SPI_IN,
        dir: Direction::Inbound,
        ack: 99,
    });
    let ev = r.events();
    assert!(ev.iter().any(|e| matches!(e, Event::SaRemoved(_))));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Ack {
            ack: 99,
            result: Ok(()),
            ..
        }
    )));
    let f = r.peer.esp_frame(1);
    r.t.feed(a, &f);
    r.step();
    assert!(r.delivered().is_empty());
    assert_eq!(r.engine.stats().snapshot().unknown_spi, 1);
    r.cmd(Command::DeleteSa {
        spi: SPI_IN,
        dir: Direction::Inbound,
        ack: 100,
    });
    assert!(r.events().iter().any(|e| matches!(
        e,
        Event::Ack {
            ack: 100,
            result: Err(_),
            ..
        }
    )));
}

#[test]
fn lifetimes_fire_soft_then_hard() {
    let mut r = rig_with_lifetime(Lifetime {
        soft_packets: 2,
        hard_packets: 3,
        soft_bytes: u64::MAX,
        hard_bytes: u64::MAX,
    });
    let a = r.responder_conn("192.0.2.10:40000");
    let f = r.peer.esp_frame(0);
    r.t.feed(a, &f);
    r.step();
    for n in 1..=4 {
        r.send_plain(n);
    }
    r.step();
    let ev = r.events();
    let exp: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::SaExpired {
                dir: Direction::Outbound,
                hard,
                cause: ExpiryCause::Packets,
                ..
            } => Some(*hard),
            _ => None,
        })
        .collect();
    assert_eq!(exp, vec![false, true]);
    assert_eq!(
        r.peer.read(&r.t.take_tx(a), Role::Responder).0,
        vec![1, 2, 3],
        "nothing after the hard limit"
    );
}

#[test]
fn garbage_streams_never_panic() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..600), |bytes| {
            let mut r = Rig::new(EngineConfig::default());
            let a = r.responder_conn("192.0.2.10:40000");
            r.t.feed(a, &bytes);
            r.step();
            let _ = r.delivered();
            Ok(())
        })
        .expect("no panic");
}

#[test]
fn r_6_6_a_worker_never_sends_nat_keepalives() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let f = r.peer.esp_frame(1);
    r.t.feed(a, &f);
    r.step();
    r.send_plain(1);
    // Many idle iterations: a UDP-style keepalive timer would fire here.
    for _ in 0..200 {
        r.step();
    }
    let tx = r.t.take_tx(a);
    let mut dec = FrameDecoder::new(Role::Originator);
    let mut frames = Vec::new();
    dec.decode(&tx, &mut frames).expect("stream");
    assert_eq!(dec.stats().keepalive, 0);
    assert_eq!(dec.stats().esp, 1);
}

#[test]
fn barrier_is_acknowledged_after_the_commands_before_it() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    r.handle
        .send(
            0,
            Command::BindIkeSa {
                ike_sa: IKE,
                conn: a,
            },
        )
        .expect("send");
    r.cmd(Command::Barrier { ack: 77 });
    assert!(r.events().iter().any(|e| matches!(
        e,
        Event::Ack {
            ack: 77,
            result: Ok(()),
            ..
        }
    )));
    assert_eq!(r.engine.active_conn(IKE), Some(a));
}

fn ike_frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 2 + 4 + len];
    let total = u16::try_from(f.len()).expect("fits");
    f[..2].copy_from_slice(&total.to_be_bytes());
    f[6..].fill(tag);
    f
}

/// Issue 8, item 4: events control depends on are never dropped when the channel is full; they
/// wait in the worker, in order, and hints are dropped and counted instead.
#[test]
fn reliable_events_wait_for_room_and_hints_are_counted_when_dropped() {
    let mut r = Rig::with_events(EngineConfig::default(), 4);
    let a = r.responder_conn("192.0.2.10:40000");
    let _ = r.events();
    for tag in 1..=10u8 {
        r.t.feed(a, &ike_frame(tag, 40));
    }
    r.step();
    r.engine.report_stats();
    assert_eq!(
        r.engine.events_waiting(),
        6,
        "four fit the channel, six wait"
    );
    let s = r.engine.stats().snapshot();
    assert_eq!(s.events_deferred, 1, "counted once when the channel filled");
    assert_eq!(
        s.events_dropped, 1,
        "the stats report is a hint: dropped, counted"
    );
    let mut got = Vec::new();
    for _ in 0..5 {
        for e in r.events() {
            if let Event::IkeMessage { msg, .. } = e {
                got.push(msg[0]);
            }
        }
        r.step();
    }
    assert_eq!(got, (1..=10).collect::<Vec<u8>>(), "all of them, in order");
    assert_eq!(r.engine.events_waiting(), 0);
}

/// Issue 8, item 4: IKE bytes waiting for control are bounded per connection: past the budget
/// the connection is not read (its bytes wait in TCP) until control consumes what it has.
#[test]
fn ike_bytes_waiting_for_control_are_bounded_per_connection() {
    let mut r = Rig::new(EngineConfig {
        ike_bytes_per_conn: 1000,
        ..EngineConfig::default()
    });
    let a = r.responder_conn("192.0.2.10:40000");
    let b = r.responder_conn("192.0.2.11:40000");
    let _ = r.events();
    for tag in 1..=3u8 {
        r.t.feed(a, &ike_frame(tag, 400));
    }
    r.step();
    // Not consumed yet: the next frames on `a` stay unread; `b` is read as usual.
    let held: Vec<Event> = r.events();
    assert_eq!(held.len(), 3);
    r.t.feed(a, &ike_frame(4, 400));
    r.t.feed(b, &ike_frame(9, 400));
    r.step();
    let next = r.events();
    assert!(
        matches!(&next[..], [Event::IkeMessage { conn, .. }] if conn.id == b),
        "{next:?}"
    );
    assert!(r.engine.stats().snapshot().ike_paused >= 1);
    drop(next);
    // Control consumed the first three: `a` is read again, nothing was lost.
    drop(held);
    r.step();
    let rest = r.events();
    assert!(
        matches!(&rest[..], [Event::IkeMessage { conn, msg }] if conn.id == a && msg[0] == 4),
        "{rest:?}"
    );
}

/// A Responder connection earns the transport's trust (full buffers, no unproven-peer cap) only
/// with authentic ESP or control's bind after IKE authentication: never with the prefix, an
/// IKE frame or a forged ESP frame.
#[test]
fn only_authenticated_traffic_marks_a_connection_trusted() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    r.t.feed(a, &ike_frame(1, 40));
    let mut forged = r.peer.esp_frame(1);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    r.t.feed(a, &forged);
    r.step();
    assert!(
        r.t.trusted.is_empty(),
        "prefix, IKE and a forged frame earn nothing"
    );
    let b = r.responder_conn("192.0.2.11:40000");
    let good = r.peer.esp_frame(2);
    r.t.feed(b, &good);
    let good = r.peer.esp_frame(3);
    r.t.feed(b, &good);
    r.step();
    assert_eq!(r.t.trusted, vec![b], "authentic ESP, once");
    let c = r.responder_conn("192.0.2.12:40000");
    r.cmd(Command::BindIkeSa {
        ike_sa: IKE,
        conn: c,
    });
    assert_eq!(r.t.trusted, vec![b, c]);
}

/// The worker reports each SA's packets and bytes on request (for `iketcp status`).
#[test]
fn report_sas_gives_each_sas_counters() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    for n in 0..3 {
        let f = r.peer.esp_frame(n);
        r.t.feed(a, &f);
    }
    r.step();
    assert_eq!(r.delivered(), vec![0, 1, 2]);
    let _ = r.events();
    r.cmd(Command::ReportSas { ack: 77 });
    let got = r.events().into_iter().find_map(|e| match e {
        Event::SaCounters { ack: 77, sas, .. } => Some(sas),
        _ => None,
    });
    let Some(sas) = got else {
        panic!("no SaCounters")
    };
    let inbound = sas
        .iter()
        .find(|c| c.spi == SPI_IN && c.dir == Direction::Inbound)
        .copied();
    assert_eq!(inbound.map(|c| c.packets), Some(3));
    assert!(inbound.is_some_and(|c| c.bytes > 0));
    assert!(
        sas.iter()
            .any(|c| c.spi == SPI_OUT && c.dir == Direction::Outbound && c.packets == 0)
    );
}

/// Plaintext sent while a peer's window is closed, until the engine holds back; then the
/// window opens and everything queued and held goes out in order. Returns how many packets were
/// queued before the hold and the length of one frame.
fn queued_until_held(cfg: EngineConfig) -> (usize, usize) {
    let mut r = Rig::new(cfg);
    let a = r.carrying_conn();
    r.t.set_window(a, Some(0));
    let mut sent = 0u32;
    while !r.engine.backpressured() && sent < 2000 {
        r.send_plain(sent);
        r.step();
        sent += 1;
    }
    assert!(
        r.engine.backpressured(),
        "a closed window stops the plaintext side"
    );
    assert!(r.t.take_tx(a).is_empty());
    assert_eq!(r.engine.stats().snapshot().queue_held, 1);
    r.t.set_window(a, None);
    r.step();
    r.engine.send_plain(&mut r.t, &mut Vec::new());
    r.step();
    assert!(!r.engine.backpressured());
    let tx = r.t.take_tx(a);
    let (nums, _) = r.peer.read(&tx, Role::Responder);
    assert_eq!(
        nums,
        (0..sent).collect::<Vec<_>>(),
        "nothing lost, in order"
    );
    let queued = sent as usize - 1;
    (queued, tx.len() / sent as usize)
}

#[test]
fn a_zero_window_peer_holds_at_most_the_queue_byte_bound() {
    let bound = 2000;
    let (queued, frame) = queued_until_held(EngineConfig {
        conn_queue_bytes: bound,
        ..EngineConfig::default()
    });
    assert!(
        queued * frame >= bound && (queued - 1) * frame < bound,
        "{queued} frames of {frame} B queued for a {bound} B bound"
    );
    // The frame bound alone (the byte bound out of reach) lets `conn_queue` frames wait.
    let (queued, _) = queued_until_held(EngineConfig {
        conn_queue: 40,
        conn_queue_bytes: usize::MAX / 2,
        ..EngineConfig::default()
    });
    assert_eq!(queued, 40);
}

#[test]
fn a_stalled_peer_gets_drops_not_a_hold_on_the_whole_worker() {
    let mut r = Rig::new(EngineConfig {
        conn_queue: 4,
        stall_after: Duration::from_millis(100),
        ..EngineConfig::default()
    });
    let t0 = Instant::now();
    r.engine.set_now(t0);
    let a = r.carrying_conn();
    r.t.set_window(a, Some(0));
    for n in 0..5 {
        r.send_plain(n);
    }
    assert!(
        r.engine.backpressured(),
        "held at first: a full queue may drain at once"
    );
    // Many more tries within 100 ms find TCP taking nothing: still held (a busy loop spins
    // through thousands of tries in one round trip of a healthy peer).
    for _ in 0..10_000 {
        r.engine.send_plain(&mut r.t, &mut Vec::new());
    }
    r.engine.set_now(t0 + Duration::from_millis(99));
    r.engine.send_plain(&mut r.t, &mut Vec::new());
    assert!(r.engine.backpressured());
    // 100 ms without a byte taken: the peer counts as stalled.
    r.engine.set_now(t0 + Duration::from_millis(100));
    r.engine.send_plain(&mut r.t, &mut Vec::new());
    assert!(
        !r.engine.backpressured(),
        "the stalled peer's packet is dropped"
    );
    for n in 5..10 {
        r.send_plain(n);
        assert!(
            !r.engine.backpressured(),
            "plaintext keeps flowing for other peers"
        );
    }
    let s = r.engine.stats().snapshot();
    assert_eq!((s.queue_full, s.queue_held), (6, 1));
    // The window opens: the queue drains and the connection is no longer stalled.
    r.t.set_window(a, None);
    r.step();
    r.send_plain(10);
    r.step();
    let (nums, _) = r.peer.read(&r.t.take_tx(a), Role::Responder);
    assert_eq!(nums, vec![0, 1, 2, 3, 10]);
}

/// A rig with these traffic limits on both SAs (and no others installed).
fn rig_with_lifetime(lifetime: Lifetime) -> Rig {
    let (handle, mut sides) = channels(1);
    let engine = Engine::new(
        sides.remove(0),
        EngineConfig::default(),
        PacketPool::new(4096, 64),
    );
    let mut r = Rig {
        engine,
        t: FakeTransport::default(),
        handle,
        peer: Peer::new(),
        ack: 0,
    };
    r.install(lifetime);
    r
}

#[test]
fn frames_are_sealed_straight_into_the_send_buffer_when_nothing_waits() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.carrying_conn();
    for n in 0..5 {
        r.send_plain(n);
    }
    assert_eq!(r.t.in_place_sends, 5, "one frame per lend, no queue");
    let (nums, _) = r.peer.read(&r.t.take_tx(a), Role::Responder);
    assert_eq!(nums, vec![0, 1, 2, 3, 4]);
    let s = r.engine.stats().snapshot();
    assert_eq!((s.esp_out, s.encap_errors), (5, 0));
    // The same through a transport that lends nothing (kernel sockets): the queue path.
    r.t.lend = None;
    for n in 5..8 {
        r.send_plain(n);
    }
    assert_eq!(r.t.in_place_sends, 5);
    let (nums, _) = r.peer.read(&r.t.take_tx(a), Role::Responder);
    assert_eq!(nums, vec![5, 6, 7]);
}

/// The send buffer lends less than a frame (its ring wraps there): that frame is sealed in the
/// packet and queued, TCP takes part of it, and what comes behind it waits behind it; once the
/// queue is empty, frames go straight into the buffer again. The stream stays whole and in order
/// and no sequence number is lost or used twice.
#[test]
fn a_frame_the_lent_space_cannot_hold_is_queued_and_written_in_part() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.carrying_conn();
    r.send_plain(0);
    let frame = r.t.conns[&a].tx.len();
    assert_eq!(r.t.in_place_sends, 1);
    r.t.lend = Some(frame - 1);
    r.t.set_window(a, Some(frame / 2));
    r.send_plain(1);
    assert_eq!(
        r.t.in_place_sends, 1,
        "no room for the whole frame: not sealed there"
    );
    assert_eq!(
        r.t.conns[&a].tx.len(),
        frame + frame / 2,
        "half the frame taken"
    );
    // Room again (ACKs came in) while the rest of frame 1 still waits in the queue.
    r.t.lend = Some(usize::MAX);
    r.t.set_window(a, None);
    r.send_plain(2);
    assert_eq!(
        r.t.in_place_sends, 1,
        "frames behind a waiting one wait behind it"
    );
    r.step();
    r.send_plain(3);
    assert_eq!(
        r.t.in_place_sends, 2,
        "the queue drained: straight in again"
    );
    let (nums, _) = r.peer.read(&r.t.take_tx(a), Role::Responder);
    assert_eq!(nums, vec![0, 1, 2, 3]);
    r.cmd(Command::ReportSas { ack: 9 });
    let out = r.events().into_iter().find_map(|e| match e {
        Event::SaCounters { sas, .. } => sas
            .into_iter()
            .find(|c| c.dir == Direction::Outbound)
            .map(|c| c.packets),
        _ => None,
    });
    assert_eq!(out, Some(4), "one sequence number per frame");
    assert_eq!(
        r.peer.out.seq(),
        1,
        "(the peer sent packet 1 of the tunnel only)"
    );
    assert_eq!(
        r.peer.inb.window().top(),
        4,
        "sequence numbers 1..=4, none skipped"
    );
}

/// RFC 9329 §6.1 (R-6.1-o) within one received chunk: the frames before a forged one are
/// delivered; the forged one is counted and closes the connection; the frames behind it are not
/// decrypted, so neither it nor they moved the replay window (RFC 4303 §3.4.3): on a new
/// connection the genuine packet and the one after it still get through.
#[test]
fn r_6_1_o_a_bad_frame_in_a_batch_delivers_those_before_it_and_closes() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let f3 = {
        let mut chunk = Vec::new();
        chunk.extend(r.peer.esp_frame(1));
        chunk.extend(r.peer.esp_frame(2));
        let f3 = r.peer.esp_frame(3);
        let mut bad = f3.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        chunk.extend(bad);
        let f4 = r.peer.esp_frame(4);
        chunk.extend(&f4);
        r.t.feed(a, &chunk);
        let mut good = f3;
        good.extend(f4);
        good
    };
    r.step();
    assert_eq!(r.delivered(), vec![1, 2]);
    assert_eq!(r.t.closed(a), Some(true), "closed with RST");
    let s = r.engine.stats().snapshot();
    assert_eq!((s.esp_in, s.icv_failures, s.closed_corrupt), (2, 1, 1));
    let b = r.responder_conn("192.0.2.10:40001");
    r.t.feed(b, &f3);
    r.step();
    assert_eq!(r.delivered(), vec![3, 4], "3 and 4 were never recorded");
    assert_eq!(r.engine.stats().snapshot().replays, 0);
}

/// A run of frames for one SA stops where the SA reaches its hard limit: the frames behind it
/// are for a dead SA, as they would be one at a time.
#[test]
fn a_batch_stops_at_the_hard_limit_of_its_sa() {
    let mut r = rig_with_lifetime(Lifetime {
        soft_packets: u64::MAX,
        hard_packets: 2,
        soft_bytes: u64::MAX,
        hard_bytes: u64::MAX,
    });
    let a = r.responder_conn("192.0.2.10:40000");
    let mut chunk = Vec::new();
    for n in 1..=4 {
        chunk.extend(r.peer.esp_frame(n));
    }
    r.t.feed(a, &chunk);
    r.step();
    assert_eq!(r.delivered(), vec![1, 2]);
    let s = r.engine.stats().snapshot();
    assert_eq!((s.esp_in, s.unknown_spi), (2, 2));
    assert_eq!(
        r.t.closed(a),
        None,
        "a few unknown SPIs are tolerated (R-6.1-p)"
    );
}

/// ESP whose plaintext would not fit a pool packet is decrypted in place in the receive buffer,
/// authenticated and counted as before, and dropped as unusable (`bad_payload`), not delivered
/// cut short.
#[test]
fn esp_longer_than_a_pool_packet_is_opened_in_place_and_dropped() {
    let mut r = Rig::new(EngineConfig::default());
    let a = r.responder_conn("192.0.2.10:40000");
    let big = 5000;
    let mut pkt = inner(9);
    pkt.resize(big, 0);
    pkt[2..4].copy_from_slice(&(big as u16).to_be_bytes());
    let mut buf = vec![0u8; 64 + big + 32];
    buf[64..64 + big].copy_from_slice(&pkt);
    let esp = r.peer.out.encap(&mut buf, 64..64 + big).expect("encap");
    let mut frame = vec![0u8; esp.len() + 2];
    let n = encode_esp(&buf[esp], &mut frame).expect("frame");
    frame.truncate(n);
    frame.extend(r.peer.esp_frame(10));
    r.t.feed(a, &frame);
    r.step();
    assert_eq!(r.delivered(), vec![10]);
    let s = r.engine.stats().snapshot();
    assert_eq!((s.esp_in, s.bad_payload, s.icv_failures), (2, 1, 0));
    assert_eq!(r.t.closed(a), None);
}
