use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, IpRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use super::*;
use crate::port::{Medium, Packet, PacketPool, Port};

type Queue = Arc<Mutex<VecDeque<Packet>>>;

/// One end of an in-memory wire: reads `rx`, writes `tx` (at most `tx_cap` queued). Buffers
/// flow one way with the packets, so each received packet sends one spare buffer back through
/// `spare` to the sender's pool, keeping both pools balanced as a real port would.
struct TestPort {
    rx: Queue,
    tx: Queue,
    spare: Arc<Mutex<Vec<Packet>>>,
    tx_cap: usize,
    mtu: usize,
    medium: Medium,
}

impl Port for TestPort {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        let mut q = self.rx.lock().unwrap();
        let n = max.min(q.len());
        out.extend(q.drain(..n));
        let mut spare = self.spare.lock().unwrap();
        if spare.len() < 1024 {
            spare.extend((0..n).map(|_| pool.get()));
        }
        Ok(n)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        let mut q = self.tx.lock().unwrap();
        let mut spare = self.spare.lock().unwrap();
        let mut n = 0;
        while q.len() < self.tx_cap {
            let Some(p) = pkts.pop_front() else { break };
            assert!(
                p.len() <= self.mtu,
                "{} byte packet on a {} MTU port",
                p.len(),
                self.mtu
            );
            q.push_back(p);
            if let Some(b) = spare.pop() {
                pool.put(b);
            }
            n += 1;
        }
        Ok(n)
    }

    fn medium(&self) -> Medium {
        self.medium
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}

/// Two ports wired to each other, and the queues into each (for injecting/stealing packets).
fn link(tx_cap: usize) -> (TestPort, TestPort, Queue, Queue) {
    let to_a: Queue = Arc::default();
    let to_b: Queue = Arc::default();
    let spare = Arc::default();
    let a = TestPort {
        rx: to_a.clone(),
        tx: to_b.clone(),
        spare: Arc::clone(&spare),
        tx_cap,
        mtu: 1500,
        medium: Medium::Ip,
    };
    let b = TestPort {
        rx: to_b.clone(),
        tx: to_a.clone(),
        spare,
        tx_cap,
        mtu: 1500,
        medium: Medium::Ip,
    };
    (a, b, to_a, to_b)
}

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
const C: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Caps high enough for the many connections from one source that most tests open; the
/// admission tests set their own.
fn cfg(local: IpAddr, buf: usize) -> SmolConfig {
    SmolConfig {
        local_addrs: vec![local],
        rx_buffer: buf,
        tx_buffer: buf,
        half_open_per_listener: 1 << 16,
        half_open_per_source: 1 << 16,
        untrusted_per_listener: 1 << 16,
        untrusted_per_source: 1 << 16,
        ..SmolConfig::default()
    }
}

/// Responder `a` and originator `b` on one wire, with a simulated clock.
struct Net {
    a: SmolTransport<TestPort>,
    b: SmolTransport<TestPort>,
    ea: Vec<TransportEvent>,
    eb: Vec<TransportEvent>,
    to_a: Queue,
    now: Instant,
}

impl Net {
    fn new(ca: SmolConfig, cb: SmolConfig, tx_cap: usize) -> Net {
        let (pa, pb, to_a, _) = link(tx_cap);
        Net {
            a: SmolTransport::new(pa, ca).unwrap(),
            b: SmolTransport::new(pb, cb).unwrap(),
            ea: Vec::new(),
            eb: Vec::new(),
            to_a,
            now: Instant::now(),
        }
    }

    /// Both sides poll once; the clock moves a little (no RTO fires in normal pumping).
    fn step(&mut self) {
        self.now += Duration::from_micros(50);
        self.a.poll(self.now, &mut self.ea).unwrap();
        self.b.poll(self.now, &mut self.eb).unwrap();
        let bound = self.a.cfg.out_queue + self.a.cfg.burst;
        assert!(self.a.out.len() <= bound && self.b.out.len() <= bound);
    }

    /// Steps until nothing is in flight or queued anywhere.
    fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..10_000 {
            self.step();
            let idle = |t: &SmolTransport<TestPort>| {
                t.out.is_empty() && t.ready.is_empty() && t.port.rx.lock().unwrap().is_empty()
            };
            quiet = if idle(&self.a) && idle(&self.b) {
                quiet + 1
            } else {
                0
            };
            if quiet == 3 {
                return;
            }
        }
        panic!("never settled");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.step();
    }

    /// Pumps until `n` Up events on each side; returns and clears them.
    fn until_up(&mut self, n: usize) -> (Vec<TransportEvent>, Vec<TransportEvent>) {
        let count = |ev: &Vec<TransportEvent>| {
            ev.iter()
                .filter(|e| matches!(e, TransportEvent::Up { .. }))
                .count()
        };
        for _ in 0..100_000 {
            if count(&self.ea) >= n && count(&self.eb) >= n {
                break;
            }
            self.step();
        }
        assert_eq!(count(&self.ea), n, "responder Ups: {:?}", self.a.stats());
        assert_eq!(count(&self.eb), n, "originator Ups: {:?}", self.b.stats());
        (std::mem::take(&mut self.ea), std::mem::take(&mut self.eb))
    }
}

fn up_conn(ev: &TransportEvent) -> (ConnId, SocketAddr, SocketAddr, TcpRole) {
    match *ev {
        TransportEvent::Up {
            conn,
            local,
            peer,
            role,
        } => (conn, local, peer, role),
        TransportEvent::Down { .. } => panic!("expected Up, got {ev:?}"),
    }
}

fn downs(ev: &[TransportEvent]) -> Vec<(ConnId, CloseReason)> {
    ev.iter()
        .filter_map(|e| match *e {
            TransportEvent::Down { conn, reason } => Some((conn, reason)),
            TransportEvent::Up { .. } => None,
        })
        .collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 8) as u8)
        })
        .collect()
}

/// Reads everything waiting on `t` into `sink[conn]`.
fn drain(t: &mut SmolTransport<TestPort>, sink: &mut HashMap<ConnId, Vec<u8>>) {
    let mut ids = Vec::new();
    t.readable(&mut ids);
    for id in ids {
        let got = sink.entry(id).or_default();
        while t
            .recv(id, |buf| {
                got.extend_from_slice(buf);
                buf.len()
            })
            .unwrap()
            > 0
        {}
    }
}

/// Sends `len` pattern bytes each way on one connection and checks them.
fn transfer(n: &mut Net, ida: ConnId, idb: ConnId, len: usize) {
    let (ab, ba) = (pattern(len, 1), pattern(len, 2));
    let (mut sent_ab, mut sent_ba) = (0, 0);
    let (mut got_a, mut got_b) = (HashMap::new(), HashMap::new());
    for _ in 0..1_000_000 {
        if sent_ab < len {
            sent_ab += n.a.send(ida, &ab[sent_ab..]).unwrap();
        }
        if sent_ba < len {
            sent_ba += n.b.send(idb, &ba[sent_ba..]).unwrap();
        }
        n.step();
        drain(&mut n.a, &mut got_a);
        drain(&mut n.b, &mut got_b);
        let ga = got_a.get(&ida).map_or(0, Vec::len);
        let gb = got_b.get(&idb).map_or(0, Vec::len);
        if ga == len && gb == len {
            break;
        }
    }
    assert!(got_b.get(&idb) == Some(&ab), "a→b bytes differ");
    assert!(got_a.get(&ida) == Some(&ba), "b→a bytes differ");
}

/// One established connection: (a's id, b's id).
fn one_conn(n: &mut Net) -> (ConnId, ConnId) {
    n.a.listen(sa(A, 4500)).unwrap();
    let idb = n.b.connect(None, sa(A, 4500)).unwrap();
    let (ua, ub) = n.until_up(1);
    let (ida, ..) = up_conn(&ua[0]);
    assert_eq!(up_conn(&ub[0]).0, idb);
    (ida, idb)
}

/// An IPv4/IPv6 TCP segment with a correct checksum.
fn segment(
    src: SocketAddr,
    dst: SocketAddr,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Packet {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 1024,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    };
    let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
    let ip = IpRepr::new(s, d, IpProtocol::Tcp, tcp.buffer_len(), 64);
    let caps = ChecksumCapabilities::default();
    let mut p = Packet::with_size(crate::port::DEFAULT_BUF_SIZE);
    let buf = p.prepare(ip.buffer_len());
    ip.emit(&mut *buf, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[ip.header_len()..]),
        &s,
        &d,
        &caps,
    );
    p
}

fn tcp_of(p: &Packet) -> TcpRepr<'_> {
    let seg = demux::parse(p.data()).unwrap();
    let payload = &p.data()[20..];
    let tcp = TcpPacket::new_checked(payload).unwrap();
    TcpRepr::parse(
        &tcp,
        &seg.key.remote.into(),
        &seg.key.local.into(),
        &ChecksumCapabilities::default(),
    )
    .unwrap()
}

fn inject(q: &Queue, p: Packet) {
    q.lock().unwrap().push_back(p);
}

#[test]
fn handshake_and_mib_both_ways() {
    let mut n = Net::new(cfg(A, 1 << 20), cfg(B, 1 << 20), 1024);
    n.a.listen(sa(A, 4500)).unwrap();
    let idb = n.b.connect(None, sa(A, 4500)).unwrap();
    assert_eq!(n.b.connections(), 1);
    let (ua, ub) = n.until_up(1);
    let (ida, a_local, a_peer, a_role) = up_conn(&ua[0]);
    let (idb2, b_local, b_peer, b_role) = up_conn(&ub[0]);
    assert_eq!(idb2, idb);
    assert_eq!(a_role, TcpRole::Responder);
    assert_eq!(b_role, TcpRole::Originator);
    assert_eq!(a_local, sa(A, 4500));
    assert_eq!(b_peer, sa(A, 4500));
    assert_eq!(b_local.ip(), B);
    assert!(b_local.port() >= EPHEMERAL_FIRST);
    assert_eq!(a_peer, b_local);
    assert_eq!((n.a.connections(), n.b.connections()), (1, 1));
    transfer(&mut n, ida, idb, 1 << 20);
    assert_eq!(n.a.stats().malformed + n.b.stats().malformed, 0);
}

#[test]
fn bulk_through_a_congested_port() {
    // The port takes 4 packets at a time: the outgoing queue fills, smoltcp is refused, and
    // everything still arrives.
    let mut n = Net::new(cfg(A, 64 << 10), cfg(B, 64 << 10), 4);
    let (ida, idb) = one_conn(&mut n);
    transfer(&mut n, ida, idb, 256 << 10);
    assert!(n.a.stats().port_backpressure > 0 && n.b.stats().port_backpressure > 0);
}

#[test]
fn ipv6_connection() {
    let a6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let b6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
    let mut ca = cfg(A, 64 << 10);
    ca.local_addrs.push(a6);
    let mut cb = cfg(B, 64 << 10);
    cb.local_addrs.push(b6);
    let mut n = Net::new(ca, cb, 1024);
    n.a.listen(sa(Ipv6Addr::UNSPECIFIED.into(), 4500)).unwrap();
    let idb = n.b.connect(None, sa(a6, 4500)).unwrap();
    let (ua, ub) = n.until_up(1);
    let (ida, a_local, ..) = up_conn(&ua[0]);
    assert_eq!(a_local, sa(a6, 4500));
    assert_eq!(up_conn(&ub[0]).1.ip(), b6);
    transfer(&mut n, ida, idb, 100_000);
}

#[test]
fn many_connections_close_and_abort() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    n.a.listen(sa(A, 4500)).unwrap();
    let ids: Vec<ConnId> = (0..200)
        .map(|_| n.b.connect(None, sa(A, 4500)).unwrap())
        .collect();
    let (ua, ub) = n.until_up(200);
    assert_eq!((n.a.tuples(), n.b.tuples()), (200, 200));
    assert_eq!((n.a.connections(), n.b.connections()), (200, 200));
    // Responder conn by the originator's port.
    let a_by_port: HashMap<u16, ConnId> = ua
        .iter()
        .map(|e| {
            let (id, _, peer, role) = up_conn(e);
            assert_eq!(role, TcpRole::Responder);
            (peer.port(), id)
        })
        .collect();
    let b_port: HashMap<ConnId, u16> = ub
        .iter()
        .map(|e| {
            let (id, local, ..) = up_conn(e);
            (id, local.port())
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let msg = format!("hello {i}");
        assert_eq!(n.b.send(*id, msg.as_bytes()).unwrap(), msg.len());
    }
    let mut got = HashMap::new();
    for _ in 0..1000 {
        n.step();
        drain(&mut n.a, &mut got);
    }
    for (i, id) in ids.iter().enumerate() {
        let aid = a_by_port[&b_port[id]];
        assert_eq!(got[&aid], format!("hello {i}").into_bytes());
    }
    // Even: graceful close; odd: abort.
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            n.b.close(*id);
        } else {
            n.b.abort(*id);
        }
    }
    for _ in 0..1000 {
        n.step();
    }
    let db = downs(&n.eb);
    assert_eq!(db.len(), 200);
    assert!(db.iter().all(|&(_, r)| r == CloseReason::Local));
    let da: HashMap<ConnId, CloseReason> = downs(&n.ea).into_iter().collect();
    assert_eq!(da.len(), 200);
    for (i, id) in ids.iter().enumerate() {
        let want = if i % 2 == 0 {
            CloseReason::Fin
        } else {
            CloseReason::Reset
        };
        assert_eq!(da[&a_by_port[&b_port[id]]], want, "conn {i}");
    }
    assert_eq!((n.a.connections(), n.b.connections()), (0, 0));
    // The closers sit in TIME-WAIT (10 s in smoltcp) until the clock passes it.
    assert_eq!(n.a.tuples(), 0);
    assert_eq!(n.b.tuples(), 100);
    n.advance(Duration::from_secs(11));
    n.step();
    assert_eq!((n.a.tuples(), n.b.tuples()), (0, 0));
    assert_eq!((n.a.in_use, n.b.in_use), (0, 0));
    assert_eq!(
        n.b.send(ids[0], b"x").unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
}

#[test]
fn abort_resets_the_peer() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    let (ida, idb) = one_conn(&mut n);
    n.a.abort(ida);
    for _ in 0..10 {
        n.step();
    }
    assert_eq!(downs(&n.ea), vec![(ida, CloseReason::Local)]);
    assert_eq!(downs(&n.eb), vec![(idb, CloseReason::Reset)]);
    assert_eq!((n.a.tuples(), n.b.tuples()), (0, 0));
}

#[test]
fn peer_fin_after_data() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    let (ida, idb) = one_conn(&mut n);
    n.b.send(idb, b"last words").unwrap();
    n.b.close(idb);
    let mut got = HashMap::new();
    for _ in 0..20 {
        n.step();
    }
    // The FIN is in, but the bytes are unread: still up.
    assert!(downs(&n.ea).is_empty());
    drain(&mut n.a, &mut got);
    assert_eq!(got[&ida], b"last words");
    for _ in 0..20 {
        n.step();
    }
    assert_eq!(downs(&n.ea), vec![(ida, CloseReason::Fin)]);
    assert_eq!(n.a.tuples(), 0);
}

#[test]
fn keepalive_holds_idle_connection_and_dead_peer_times_out() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    let (ida, idb) = one_conn(&mut n);
    n.settle();
    // Four keep-alive periods of silence: probes and their ACKs keep it up.
    for _ in 0..4 {
        n.advance(Duration::from_secs(31));
        n.settle();
    }
    assert!(downs(&n.ea).is_empty() && downs(&n.eb).is_empty());
    // The wire goes dark: both sides' probes go unanswered until the 120 s timeout.
    for _ in 0..130 {
        n.now += Duration::from_secs(1);
        n.a.poll(n.now, &mut n.ea).unwrap();
        n.b.port.rx.lock().unwrap().clear();
        n.b.poll(n.now, &mut n.eb).unwrap();
        n.to_a.lock().unwrap().clear();
    }
    assert_eq!(downs(&n.ea), vec![(ida, CloseReason::Timeout)]);
    assert_eq!(downs(&n.eb), vec![(idb, CloseReason::Timeout)]);
}

#[test]
fn connect_times_out() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    let idb = n.b.connect(None, sa(A, 4500)).unwrap();
    for _ in 0..40 {
        n.to_a.lock().unwrap().clear(); // black hole
        n.advance(Duration::from_secs(1));
    }
    assert_eq!(downs(&n.eb), vec![(idb, CloseReason::Timeout)]);
    n.to_a.lock().unwrap().clear();
    n.step();
    assert_eq!(n.b.tuples(), 0);
}

#[test]
fn refused_connect_is_reset() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    let idb = n.b.connect(None, sa(A, 4500)).unwrap(); // nobody listens
    for _ in 0..10 {
        n.step();
    }
    assert_eq!(downs(&n.eb), vec![(idb, CloseReason::Reset)]);
    assert_eq!(n.a.stats().syn_no_listener, 1);
    assert_eq!(n.a.stats().rst_sent, 1);
}

#[test]
fn strays_and_full_table_are_counted() {
    let mut ca = cfg(A, 16 << 10);
    ca.max_connections = 3;
    let (pa, _pb, to_a, to_b) = link(1024);
    let mut a = SmolTransport::new(pa, ca).unwrap();
    a.listen(sa(A, 4500)).unwrap();
    let mut ev = Vec::new();
    let now = Instant::now();
    for port in 1000..1010 {
        inject(
            &to_a,
            segment(sa(C, port), sa(A, 4500), TcpControl::Syn, 7, None, &[]),
        );
    }
    a.poll(now, &mut ev).unwrap();
    assert_eq!(a.tuples(), 3);
    assert_eq!(a.stats().syn_dropped_full, 7);
    assert_eq!(to_b.lock().unwrap().len(), 3, "three SYN-ACKs");
    to_b.lock().unwrap().clear();

    // A stray ACK: answered with an RST taking its sequence number from the ACK field.
    inject(
        &to_a,
        segment(
            sa(C, 2000),
            sa(A, 4500),
            TcpControl::None,
            5,
            Some(99),
            b"x",
        ),
    );
    // A SYN to a closed port: RST|ACK acknowledging the SYN.
    inject(
        &to_a,
        segment(sa(C, 2001), sa(A, 9999), TcpControl::Syn, 41, None, &[]),
    );
    // An RST and a segment for someone else's address: no answer.
    inject(
        &to_a,
        segment(sa(C, 2002), sa(A, 4500), TcpControl::Rst, 5, None, &[]),
    );
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    inject(
        &to_a,
        segment(
            sa(C, 2003),
            sa(other, 80),
            TcpControl::None,
            5,
            Some(1),
            &[],
        ),
    );
    // Garbage.
    for junk in [&[][..], &[0x45][..], &[0x60; 40][..], &[0xff; 100][..]] {
        let mut p = Packet::with_size(crate::port::DEFAULT_BUF_SIZE);
        assert!(p.fill_from(junk));
        inject(&to_a, p);
    }
    a.poll(now, &mut ev).unwrap();
    let s = a.stats();
    assert_eq!((s.no_conn, s.syn_no_listener, s.rst_sent), (3, 1, 2));
    assert_eq!(s.malformed, 4);
    let out: Vec<Packet> = to_b.lock().unwrap().drain(..).collect();
    assert_eq!(out.len(), 2);
    let r0 = tcp_of(&out[0]);
    assert_eq!(
        (r0.control, r0.seq_number, r0.ack_number),
        (TcpControl::Rst, TcpSeqNumber(99), None)
    );
    assert_eq!(r0.dst_port, 2000);
    let r1 = tcp_of(&out[1]);
    assert_eq!(
        (r1.control, r1.ack_number),
        (TcpControl::Rst, Some(TcpSeqNumber(42)))
    );
    assert!(ev.is_empty());
}

#[test]
fn stale_conn_id_is_rejected() {
    let mut n = Net::new(cfg(A, 16 << 10), cfg(B, 16 << 10), 1024);
    n.a.listen(sa(A, 4500)).unwrap();
    let old = n.b.connect(None, sa(A, 4500)).unwrap();
    n.b.abort(old);
    for _ in 0..5 {
        n.step();
    }
    assert_eq!(n.b.tuples(), 0);
    let new = n.b.connect(None, sa(A, 4500)).unwrap();
    assert_eq!(new.slot, old.slot);
    assert_ne!(new.generation, old.generation);
    let (_, ub) = n.until_up(1);
    let up: Vec<_> = ub
        .iter()
        .filter(|e| matches!(e, TransportEvent::Up { .. }))
        .collect();
    assert_eq!(up_conn(up[0]).0, new);
    assert!(n.b.send(old, b"nope").is_err());
    assert!(n.b.recv(old, |b| b.len()).is_err());
    assert_eq!(n.b.send_capacity(old), 0);
    n.b.close(old);
    n.b.abort(old);
    n.step();
    assert_eq!(n.b.connections(), 1);
    assert!(n.b.send_capacity(new) > 0);
    assert_eq!(n.b.send(new, b"yes").unwrap(), 3);
    assert!(downs(&n.eb).iter().all(|&(id, _)| id == old));
}

#[test]
fn idle_connections_are_not_polled() {
    const IDLE: usize = 2000;
    let mut n = Net::new(cfg(A, 8 << 10), cfg(B, 8 << 10), 4096);
    n.a.listen(sa(A, 4500)).unwrap();
    for _ in 0..IDLE {
        n.b.connect(None, sa(A, 4500)).unwrap();
    }
    let busy_b = n.b.connect(None, sa(A, 4500)).unwrap();
    let (ua, ub) = n.until_up(IDLE + 1);
    let busy_port = ub
        .iter()
        .map(up_conn)
        .find(|u| u.0 == busy_b)
        .unwrap()
        .1
        .port();
    let busy_a = ua
        .iter()
        .map(up_conn)
        .find(|u| u.2.port() == busy_port)
        .unwrap()
        .0;
    n.settle();
    let idle_polls = |t: &SmolTransport<TestPort>, busy: ConnId| -> Vec<u64> {
        (0..t.slots.len() as u32)
            .filter(|&s| s != busy.slot)
            .map(|s| t.polls_of(s))
            .collect()
    };
    let (before_a, before_b) = (idle_polls(&n.a, busy_a), idle_polls(&n.b, busy_b));
    let (sa0, sb0) = (n.a.stats(), n.b.stats());

    let data = pattern(256 << 10, 3);
    let mut sent = 0;
    let mut got = HashMap::new();
    for _ in 0..100_000 {
        if sent < data.len() {
            sent += n.b.send(busy_b, &data[sent..]).unwrap();
        }
        n.step();
        drain(&mut n.a, &mut got);
        if got.get(&busy_a).map_or(0, Vec::len) == data.len() {
            break;
        }
    }
    assert!(got[&busy_a] == data);
    // Not one poll of any of the 2,000 idle interfaces on either side.
    assert!(idle_polls(&n.a, busy_a) == before_a);
    assert!(idle_polls(&n.b, busy_b) == before_b);
    let (sa1, sb1) = (n.a.stats(), n.b.stats());
    let (polls, pkts) = (
        sa1.iface_polls - sa0.iface_polls,
        sa1.packets_in - sa0.packets_in,
    );
    // At most one ingress poll per burst plus one after the worker's recv.
    assert!(
        pkts > 100 && polls <= 2 * pkts,
        "{polls} polls for {pkts} packets"
    );
    let (polls, pkts) = (
        sb1.iface_polls - sb0.iface_polls,
        sb1.packets_in - sb0.packets_in,
    );
    assert!(polls <= 2 * pkts + 8, "{polls} polls for {pkts} packets");
}

/// A pair of Ethernet (TAP-like) ports, MTU 1514 (1500 bytes of IP).
fn eth_net(ca: SmolConfig, cb: SmolConfig) -> Net {
    let (mut pa, mut pb, to_a, _) = link(1024);
    for p in [&mut pa, &mut pb] {
        p.medium = Medium::Ethernet;
        p.mtu = 1514;
    }
    Net {
        a: SmolTransport::new(pa, ca).unwrap(),
        b: SmolTransport::new(pb, cb).unwrap(),
        ea: Vec::new(),
        eb: Vec::new(),
        to_a,
        now: Instant::now(),
    }
}

#[test]
fn ethernet_arp_then_bulk() {
    let mut n = eth_net(cfg(A, 64 << 10), cfg(B, 64 << 10));
    let (ma, mb) = (n.a.mac().unwrap(), n.b.mac().unwrap());
    assert!(ma != mb && ma[0] & 3 == 2 && mb[0] & 3 == 2);
    let (ida, idb) = one_conn(&mut n);
    transfer(&mut n, ida, idb, 200_000);
    let (st_a, st_b) = (n.a.stats(), n.b.stats());
    // b asked once; a learned b from the request and never had to ask.
    assert_eq!((st_b.arp_requests, st_a.arp_replies), (1, 1));
    assert_eq!((st_a.arp_requests, st_b.arp_replies), (0, 0));
    assert_eq!(
        st_a.frames_dropped + st_b.frames_dropped + st_a.no_neighbor + st_b.no_neighbor,
        0
    );
    assert_eq!(
        n.b.connect(None, sa(Ipv6Addr::LOCALHOST.into(), 4500))
            .unwrap_err()
            .kind(),
        io::ErrorKind::Unsupported
    );
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Packet {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&dst);
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&ethertype.to_be_bytes());
    bytes.extend_from_slice(payload);
    let mut p = Packet::with_size(crate::port::DEFAULT_BUF_SIZE);
    assert!(p.fill_from(&bytes));
    p
}

fn arp_request(src_mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Packet {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&src_mac);
    arp.extend_from_slice(&src.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    frame([0xff; 6], src_mac, 0x0806, &arp)
}

#[test]
fn ethernet_answers_only_for_itself() {
    let (mut pa, _pb, to_a, to_b) = link(1024);
    pa.medium = Medium::Ethernet;
    pa.mtu = 1514;
    let mut a = SmolTransport::new(pa, cfg(A, 4096)).unwrap();
    let ma = a.mac().unwrap();
    let peer = [2, 0, 0, 0, 0, 9];
    let mut ev = Vec::new();
    let c4 = Ipv4Addr::new(192, 0, 2, 9);
    inject(&to_a, arp_request(peer, c4, Ipv4Addr::new(192, 0, 2, 200))); // not ours
    inject(
        &to_a,
        arp_request([0xff; 6], c4, Ipv4Addr::new(192, 0, 2, 1)),
    ); // bad sender
    inject(&to_a, frame([2, 9, 9, 9, 9, 9], peer, 0x0800, &[0x45; 40])); // another MAC
    inject(&to_a, frame(ma, peer, 0x86dd, &[])); // empty IPv6
    inject(&to_a, frame(ma, peer, 0x1234, &[1, 2, 3])); // unknown type
    a.poll(Instant::now(), &mut ev).unwrap();
    assert!(to_b.lock().unwrap().is_empty());
    assert_eq!(a.stats().arp_replies, 0);
    // Broadcast source, foreign MAC, unknown type; the empty IPv6 packet reaches the demux.
    assert_eq!((a.stats().frames_dropped, a.stats().malformed), (3, 1));
    inject(&to_a, arp_request(peer, c4, Ipv4Addr::new(192, 0, 2, 1)));
    a.poll(Instant::now(), &mut ev).unwrap();
    let reply = to_b.lock().unwrap().pop_front().unwrap();
    let d = reply.data();
    assert_eq!(
        (&d[0..6], &d[6..12], &d[12..14]),
        (&peer[..], &ma[..], &[8u8, 6][..])
    );
    assert_eq!(&d[20..22], &[0, 2]); // reply
    assert_eq!(&d[22..28], &ma[..]);
}

#[test]
fn ethernet_unresolved_neighbor() {
    let (_pa, mut pb, ..) = link(1024);
    pb.medium = Medium::Ethernet;
    pb.mtu = 1514;
    let mut b = SmolTransport::new(pb, cfg(B, 4096)).unwrap();
    let id = b.connect(None, sa(A, 4500)).unwrap();
    let mut ev = Vec::new();
    let mut now = Instant::now();
    for _ in 0..80 {
        now += Duration::from_millis(500);
        b.poll(now, &mut ev).unwrap();
    }
    let s = b.stats();
    // At most one ARP request per second of (simulated) time; held SYNs give up.
    assert!(s.arp_requests >= 10 && s.arp_requests <= 41, "{s:?}");
    assert!(s.no_neighbor > 0);
    assert_eq!(downs(&ev), vec![(id, CloseReason::Timeout)]);
}

#[test]
fn bad_config_is_refused() {
    let bad = [
        SmolConfig {
            rx_buffer: 0,
            ..cfg(A, 4096)
        },
        SmolConfig {
            max_connections: 0,
            ..cfg(A, 4096)
        },
        SmolConfig {
            local_addrs: vec![IpAddr::V4(Ipv4Addr::BROADCAST)],
            ..cfg(A, 4096)
        },
        SmolConfig {
            half_open_per_source: 0,
            ..cfg(A, 4096)
        },
        SmolConfig {
            untrusted_per_listener: 0,
            ..cfg(A, 4096)
        },
    ];
    for c in bad {
        let (pa, ..) = link(16);
        assert!(SmolTransport::new(pa, c).is_err());
    }
    let (mut pa, ..) = link(16);
    pa.mtu = 100;
    assert!(SmolTransport::new(pa, cfg(A, 4096)).is_err());
}

#[test]
fn transport_is_send_and_small_per_connection() {
    fn is_send<T: Send>() {}
    is_send::<SmolTransport<TestPort>>();
    // Fixed cost per connection besides its two buffers (reported, not asserted).
    println!(
        "Conn {} B (Interface {} B, socket storage {} B), slot {} B, half-open entry {} B",
        std::mem::size_of::<Conn>(),
        std::mem::size_of::<Interface>(),
        std::mem::size_of::<smoltcp::iface::SocketStorage<'static>>(),
        std::mem::size_of::<Slot>(),
        std::mem::size_of::<(Key, accept::HalfOpen)>(),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_panics(pkts in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..1600), 1..16)) {
        let (pa, _pb, to_a, _to_b) = link(1024);
        let mut a = SmolTransport::new(pa, cfg(A, 4096)).unwrap();
        a.listen(sa(A, 4500)).unwrap();
        for bytes in &pkts {
            let mut p = Packet::with_size(crate::port::DEFAULT_BUF_SIZE);
            p.fill_from(bytes);
            inject(&to_a, p);
        }
        let mut ev = Vec::new();
        a.poll(Instant::now(), &mut ev).unwrap();
        prop_assert_eq!(a.stats().packets_in, pkts.len() as u64);
    }

    #[test]
    fn garbage_frames_never_panic(frames in proptest::collection::vec(
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..16)) {
        let (mut pa, _pb, to_a, _to_b) = link(1024);
        pa.medium = Medium::Ethernet;
        pa.mtu = 1514;
        let mut a = SmolTransport::new(pa, cfg(A, 4096)).unwrap();
        a.listen(sa(A, 4500)).unwrap();
        let ma = a.mac().unwrap();
        for (to_us, bytes) in &frames {
            // Half addressed to us with a plausible header, so ARP/IP parsing is reached.
            let p = if *to_us {
                let ethertype = if bytes.first().is_some_and(|b| b & 1 == 1) { 0x0806 } else { 0x0800 };
                frame(ma, [2, 0, 0, 0, 0, 7], ethertype, bytes)
            } else {
                let mut p = Packet::with_size(crate::port::DEFAULT_BUF_SIZE);
                p.fill_from(bytes);
                p
            };
            inject(&to_a, p);
        }
        let mut ev = Vec::new();
        a.poll(Instant::now(), &mut ev).unwrap();
        prop_assert_eq!(a.stats().packets_in, frames.len() as u64);
    }

    /// Well-formed segments with arbitrary flags, numbers and payloads thrown at an established
    /// connection and at the listener never panic, and the transport stays consistent.
    #[test]
    fn hostile_segments_never_panic(segs in proptest::collection::vec(
        (0u8..6, any::<u32>(), proptest::option::of(any::<u32>()),
         proptest::collection::vec(any::<u8>(), 0..64), any::<bool>()), 1..24)) {
        let mut n = Net::new(cfg(A, 4096), cfg(B, 4096), 1024);
        let (_ida, idb) = one_conn(&mut n);
        let b_local = n.b.slots[idb.slot as usize].conn.as_ref().unwrap().key;
        let from = sa(b_local.local, b_local.lport);
        for (ctl, seq, ack, payload, to_listener) in &segs {
            let control = [TcpControl::None, TcpControl::Psh, TcpControl::Syn,
                TcpControl::Fin, TcpControl::Rst, TcpControl::None][*ctl as usize];
            let src = if *to_listener { sa(C, 3333) } else { from };
            inject(&n.to_a, segment(src, sa(A, 4500), control, *seq, *ack, payload));
        }
        for _ in 0..4 {
            n.step();
        }
        n.advance(Duration::from_secs(31));
        n.advance(Duration::from_secs(61));
        prop_assert!(n.a.in_use <= n.a.cfg.max_connections);
        prop_assert_eq!(n.a.map.len(), n.a.in_use);
    }
}

/// Rough single-connection throughput through the in-memory wire, one thread for both ends.
/// Run with `cargo test --release -- --ignored throughput --nocapture`; prints, never asserts.
#[test]
#[ignore]
fn throughput_report() {
    let mut n = Net::new(cfg(A, 1 << 20), cfg(B, 1 << 20), 1024);
    let (ida, idb) = one_conn(&mut n);
    let chunk = vec![7u8; 64 << 10];
    let total = 1usize << 30;
    let (mut sent, mut got) = (0, 0);
    let start = Instant::now();
    while got < total {
        if sent < total {
            sent += n.b.send(idb, &chunk).unwrap();
        }
        n.now = Instant::now();
        n.a.poll(n.now, &mut n.ea).unwrap();
        n.b.poll(n.now, &mut n.eb).unwrap();
        while let Ok(k) = n.a.recv(ida, |b| b.len())
            && k > 0
        {
            got += k;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.2} Gbit/s ({} packets in at a)",
        total as f64 * 8.0 / secs / 1e9,
        n.a.stats().packets_in
    );
}

/// The shipped caps, with our address and buffer size.
fn cfg_default_caps(local: IpAddr, buf: usize) -> SmolConfig {
    SmolConfig {
        local_addrs: vec![local],
        rx_buffer: buf,
        tx_buffer: buf,
        ..SmolConfig::default()
    }
}

/// The `n`th flooding address, 198.51.100.0/24 then onwards (never A, B or C).
fn flooder(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 51, 100, 0)) + n,
    ))
}

fn syn_from(src: SocketAddr) -> Packet {
    segment(src, sa(A, 4500), TcpControl::Syn, 7, None, &[])
}

/// Polls `a` until the injected packets are read, dropping what it sends.
fn poll_all(a: &mut SmolTransport<TestPort>, to_a: &Queue, to_b: &Queue, now: Instant) {
    let mut ev = Vec::new();
    while !to_a.lock().unwrap().is_empty() {
        a.poll(now, &mut ev).unwrap();
        to_b.lock().unwrap().clear();
    }
    a.poll(now, &mut ev).unwrap();
    to_b.lock().unwrap().clear();
    assert!(ev.is_empty(), "a flood made connections: {ev:?}");
}

#[test]
fn syn_flood_from_one_source_is_capped_and_allocates_nothing() {
    const BUF: usize = 1 << 20;
    let ca = cfg_default_caps(A, BUF);
    let cap = ca.half_open_per_source;
    let mut n = Net::new(ca, cfg(B, BUF), 4096);
    n.a.listen(sa(A, 4500)).unwrap();
    let to_b = Arc::clone(&n.b.port.rx);
    for port in 0..2000u16 {
        inject(&n.to_a, syn_from(sa(C, 10_000 + port)));
    }
    // Count the SYN-ACKs before anything else reads them.
    let mut synacks = 0;
    let mut ev = Vec::new();
    while !n.to_a.lock().unwrap().is_empty() {
        n.a.poll(n.now, &mut ev).unwrap();
        synacks += to_b.lock().unwrap().drain(..).count();
    }
    let load = n.a.load();
    assert_eq!(load.half_open, cap);
    assert_eq!(synacks, cap);
    assert_eq!(n.a.stats().half_open_refused_source, 2000 - cap as u64);
    assert_eq!(n.a.stats().half_open_refused_listener, 0);
    // No connection, so no socket buffers: only the one SYN answerer's receive buffer.
    assert_eq!(load.untrusted, 0);
    assert_eq!(load.buffer_bytes, BUF + 1);
    assert!(
        load.half_open_bytes <= cap * 1024,
        "{} bytes for {cap} entries",
        load.half_open_bytes
    );
    assert_eq!(n.a.in_use, 0);

    // Another source gets through while C sits at its cap, and carries data.
    let (ida, idb) = one_conn(&mut n);
    assert_eq!(n.a.load().half_open, cap);
    assert_eq!(n.a.load().untrusted, 1);
    assert_eq!(n.a.load().buffer_bytes, 3 * BUF + 1);
    transfer(&mut n, ida, idb, 100_000);
    assert_eq!(n.a.stats().synack_mismatch, 0);

    // The flood's entries go after handshake_timeout; the connection stays.
    n.advance(Duration::from_secs(31));
    n.step();
    assert_eq!(n.a.load().half_open, 0);
    assert_eq!(n.a.stats().embryonic_dropped, cap as u64);
    assert_eq!(n.a.connections(), 1);
}

#[test]
fn syn_flood_from_many_sources_fills_only_the_listener_cap() {
    const BUF: usize = 256 << 10;
    let mut ca = cfg_default_caps(A, BUF);
    ca.handshake_timeout = Duration::from_secs(5);
    let (per_listener, per_source) = (ca.half_open_per_listener, ca.half_open_per_source);
    let mut cb = cfg(B, BUF);
    cb.handshake_timeout = Duration::from_secs(60);
    let mut n = Net::new(ca, cb, 4096);
    n.a.listen(sa(A, 4500)).unwrap();
    let to_b = Arc::clone(&n.b.port.rx);
    // 40 sources × 100 SYNs: each source over its own cap, all of them over the listener's.
    let sources = 40u32;
    for i in 0..sources {
        for port in 0..100u16 {
            inject(&n.to_a, syn_from(sa(flooder(i), 20_000 + port)));
        }
    }
    poll_all(&mut n.a, &n.to_a, &to_b, n.now);
    let load = n.a.load();
    assert_eq!(load.half_open, per_listener);
    let s = n.a.stats();
    assert_eq!(
        s.half_open_refused_source + s.half_open_refused_listener,
        4000 - per_listener as u64
    );
    // Sources 0..16 filled it, 64 each; the first 15 also hit their own cap (36 each), the
    // 16th's rest and every later source found the listener full.
    let full_sources = (per_listener / per_source) as u64;
    assert_eq!(
        s.half_open_refused_source,
        (full_sources - 1) * (100 - per_source as u64)
    );
    assert_eq!(load.buffer_bytes, BUF + 1);
    assert!(load.half_open_bytes <= per_listener * 1024);

    // A genuine SYN now is refused too (the listener is full) ...
    let idb = n.b.connect(None, sa(A, 4500)).unwrap();
    n.step(); // b sends its SYN
    n.step(); // a reads it
    assert_eq!(
        n.a.stats().half_open_refused_listener,
        s.half_open_refused_listener + 1
    );
    assert!(downs(&n.eb).is_empty());
    // ... until the flood's entries time out; then B's retransmitted SYN gets in.
    n.a.port.rx.lock().unwrap().clear();
    for _ in 0..12 {
        n.advance(Duration::from_secs(1));
    }
    let (ua, ub) = n.until_up(1);
    assert_eq!(up_conn(&ub[0]).0, idb);
    assert_eq!(up_conn(&ua[0]).2.ip(), B);
    assert_eq!(n.a.load().half_open, 0);
}

#[test]
fn untrusted_cap_per_source_until_marked_trusted() {
    let mut ca = cfg_default_caps(A, 16 << 10);
    ca.untrusted_per_source = 2;
    let mut n = Net::new(ca, cfg(B, 16 << 10), 1024);
    n.a.listen(sa(A, 4500)).unwrap();
    // Two get in and count as untrusted.
    n.b.connect(None, sa(A, 4500)).unwrap();
    n.b.connect(None, sa(A, 4500)).unwrap();
    let (ua, _) = n.until_up(2);
    assert_eq!(n.a.load().untrusted, 2);
    // The third SYN is dropped unanswered while B holds two untrusted connections.
    let third = n.b.connect(None, sa(A, 4500)).unwrap();
    for _ in 0..20 {
        n.step();
    }
    assert_eq!(n.a.stats().untrusted_refused_source, 1);
    assert_eq!(n.a.load().half_open, 0);
    assert!(n.ea.is_empty() && n.eb.is_empty());
    // Trusting one frees a place: B's SYN retransmission (1 s RTO) completes.
    let first = up_conn(&ua[0]).0;
    n.a.mark_trusted(first);
    n.a.mark_trusted(first); // twice is once
    assert_eq!(n.a.load().untrusted, 1);
    n.advance(Duration::from_millis(1100));
    let (_, ub) = n.until_up(1);
    assert_eq!(up_conn(&ub[0]).0, third);
    assert_eq!(n.a.load().untrusted, 2);
    // Originator connections never count.
    assert_eq!(n.b.load().untrusted, 0);
    // Closing an untrusted connection gives its place back once its slot is free.
    let second = up_conn(&ua[1]).0;
    n.a.abort(second);
    for _ in 0..10 {
        n.step();
    }
    assert_eq!(n.a.load().untrusted, 1);
}

#[test]
fn handshake_ack_over_the_untrusted_cap_waits_for_a_place() {
    let mut ca = cfg_default_caps(A, 16 << 10);
    ca.untrusted_per_source = 1;
    let mut n = Net::new(ca, cfg(B, 16 << 10), 1024);
    n.a.listen(sa(A, 4500)).unwrap();
    // Both SYNs are answered (nothing is untrusted yet); only the first ACK can be taken.
    let b1 = n.b.connect(None, sa(A, 4500)).unwrap();
    let b2 = n.b.connect(None, sa(A, 4500)).unwrap();
    for _ in 0..20 {
        n.step();
    }
    let ups = |ev: &[TransportEvent]| {
        ev.iter()
            .filter(|e| matches!(e, TransportEvent::Up { .. }))
            .map(up_conn)
            .collect::<Vec<_>>()
    };
    assert_eq!(ups(&n.eb).len(), 2, "b believes both are up");
    let ua = ups(&n.ea);
    assert_eq!(ua.len(), 1);
    assert_eq!(n.a.stats().untrusted_refused_source, 1);
    assert_eq!((n.a.load().half_open, n.a.load().untrusted), (1, 1));
    // Trusted, the first leaves the cap; b's first data on the second completes its handshake.
    n.a.mark_trusted(ua[0].0);
    let b_waiting = if ua[0].2 == up_conn(&n.eb[0]).1 {
        b2
    } else {
        b1
    };
    n.b.send(b_waiting, b"IKETCP").unwrap();
    for _ in 0..20 {
        n.step();
    }
    let ua2 = ups(&n.ea);
    assert_eq!(ua2.len(), 2);
    let mut got = HashMap::new();
    drain(&mut n.a, &mut got);
    assert_eq!(got.get(&ua2[1].0).map(Vec::as_slice), Some(&b"IKETCP"[..]));
    assert_eq!((n.a.load().half_open, n.a.load().untrusted), (0, 1));
}

#[test]
fn half_open_entry_follows_rfc_9293_syn_received() {
    let mut ca = cfg_default_caps(A, 16 << 10);
    ca.handshake_timeout = Duration::from_secs(10);
    let (pa, _pb, to_a, to_b) = link(1024);
    let mut a = SmolTransport::new(pa, ca).unwrap();
    a.listen(sa(A, 4500)).unwrap();
    let mut ev = Vec::new();
    let mut now = Instant::now();
    let peer = sa(C, 1000);
    inject(
        &to_a,
        segment(peer, sa(A, 4500), TcpControl::Syn, 41, None, &[]),
    );
    a.poll(now, &mut ev).unwrap();
    let synack = to_b.lock().unwrap().pop_front().unwrap();
    let first = synack.data().to_vec();
    let r = tcp_of(&synack);
    assert_eq!(r.control, TcpControl::Syn);
    assert_eq!(r.ack_number, Some(TcpSeqNumber(42)));
    // The peer offered no window scaling, so none is offered back.
    assert_eq!(r.window_scale, None);
    let isn = r.seq_number.0 as u32;
    assert_eq!(a.load().half_open, 1);

    // A retransmitted SYN: the same SYN-ACK again.
    inject(
        &to_a,
        segment(peer, sa(A, 4500), TcpControl::Syn, 41, None, &[]),
    );
    a.poll(now, &mut ev).unwrap();
    assert_eq!(to_b.lock().unwrap().pop_front().unwrap().data(), &first[..]);
    // An RST off by one and an ACK without... the ACK bit: ignored.
    inject(
        &to_a,
        segment(peer, sa(A, 4500), TcpControl::Rst, 43, None, &[]),
    );
    inject(
        &to_a,
        segment(peer, sa(A, 4500), TcpControl::None, 42, None, b"x"),
    );
    a.poll(now, &mut ev).unwrap();
    assert!(to_b.lock().unwrap().is_empty());
    assert_eq!(a.load().half_open, 1);
    // An ACK of something we never sent: RST with its ACK as sequence number; entry kept.
    inject(
        &to_a,
        segment(
            peer,
            sa(A, 4500),
            TcpControl::None,
            42,
            Some(isn.wrapping_add(7)),
            &[],
        ),
    );
    a.poll(now, &mut ev).unwrap();
    let rst = to_b.lock().unwrap().pop_front().unwrap();
    let r = tcp_of(&rst);
    assert_eq!(
        (r.control, r.seq_number),
        (TcpControl::Rst, TcpSeqNumber(isn.wrapping_add(7) as i32))
    );
    assert_eq!((a.stats().handshake_bad_ack, a.load().half_open), (1, 1));
    assert_eq!(a.in_use, 0);

    // The timer retransmits after 1 s, then 2 s more, then gives up at 10 s.
    now += Duration::from_millis(1001);
    a.poll(now, &mut ev).unwrap();
    assert_eq!(to_b.lock().unwrap().pop_front().unwrap().data(), &first[..]);
    now += Duration::from_millis(1500);
    a.poll(now, &mut ev).unwrap();
    assert!(to_b.lock().unwrap().is_empty());
    now += Duration::from_millis(600);
    a.poll(now, &mut ev).unwrap();
    assert_eq!(to_b.lock().unwrap().drain(..).count(), 1);
    assert_eq!(a.stats().synack_retransmits, 3);

    // The right ACK, carrying data, makes the connection: Up, and the data is there.
    inject(
        &to_a,
        segment(
            peer,
            sa(A, 4500),
            TcpControl::Psh,
            42,
            Some(isn.wrapping_add(1)),
            b"IKETCP",
        ),
    );
    a.poll(now, &mut ev).unwrap();
    let (id, local, remote, role) = up_conn(&ev[0]);
    assert_eq!(
        (local, remote, role),
        (sa(A, 4500), peer, TcpRole::Responder)
    );
    let mut got = Vec::new();
    a.recv(id, |b| {
        got.extend_from_slice(b);
        b.len()
    })
    .unwrap();
    assert_eq!(got, b"IKETCP");
    assert_eq!((a.load().half_open, a.load().untrusted), (0, 1));
    assert_eq!(a.stats().synack_mismatch, 0);
    // Only the ACK of the data went out: the replayed SYN's SYN-ACK never left.
    let out: Vec<Packet> = to_b.lock().unwrap().drain(..).collect();
    assert!(
        out.iter().all(|p| tcp_of(p).control != TcpControl::Syn),
        "no second SYN-ACK"
    );

    // A second half-open entry, reset at exactly the expected sequence number: gone.
    let peer2 = sa(C, 1001);
    inject(
        &to_a,
        segment(peer2, sa(A, 4500), TcpControl::Syn, 500, None, &[]),
    );
    a.poll(now, &mut ev).unwrap();
    to_b.lock().unwrap().clear();
    inject(
        &to_a,
        segment(peer2, sa(A, 4500), TcpControl::Rst, 501, None, &[]),
    );
    a.poll(now, &mut ev).unwrap();
    assert_eq!(a.load().half_open, 0);
    assert_eq!(a.stats().embryonic_dropped, 1);
    // And a third one that is never answered times out.
    let peer3 = sa(C, 1002);
    inject(
        &to_a,
        segment(peer3, sa(A, 4500), TcpControl::Syn, 900, None, &[]),
    );
    a.poll(now, &mut ev).unwrap();
    assert_eq!(a.load().half_open, 1);
    for _ in 0..12 {
        now += Duration::from_secs(1);
        a.poll(now, &mut ev).unwrap();
    }
    assert_eq!(a.load().half_open, 0);
    assert_eq!(a.stats().embryonic_dropped, 2);
    assert_eq!(a.tuples(), 1);
}

/// Steps `n`, giving `sniff` every packet a sends before b reads it.
fn step_sniffing(n: &mut Net, sniff: &mut impl FnMut(&Packet)) {
    n.now += Duration::from_micros(50);
    n.a.poll(n.now, &mut n.ea).unwrap();
    for p in n.b.port.rx.lock().unwrap().iter() {
        sniff(p);
    }
    n.b.poll(n.now, &mut n.eb).unwrap();
}

#[test]
fn trusted_connection_uses_the_full_window() {
    const BUF: usize = 1 << 20;
    let mut n = Net::new(cfg_default_caps(A, BUF), cfg(B, BUF), 4096);
    n.a.listen(sa(A, 4500)).unwrap();
    let idb = n.b.connect(None, sa(A, 4500)).unwrap();
    // The SYN-ACK (made by the answerer, not by the connection's socket) offers the shift the
    // full 1 MiB buffer needs: log2(2^20) + 1 - 16 = 5.
    let mut wscale = None;
    let mut ida = None;
    for _ in 0..100 {
        step_sniffing(&mut n, &mut |p| {
            let r = tcp_of(p);
            if r.control == TcpControl::Syn {
                wscale = Some(r.window_scale);
            }
        });
        if let Some(e) = n.ea.first() {
            ida = Some(up_conn(e).0);
            break;
        }
    }
    let ida = ida.unwrap();
    assert_eq!(wscale, Some(Some(5)));
    assert_eq!(n.a.load().untrusted, 1);
    n.a.mark_trusted(ida);
    assert_eq!(n.a.load().untrusted, 0);
    assert_eq!(n.a.load().buffer_bytes, 2 * BUF + BUF + 1);

    // 8 MiB b → a, read at once: a's advertised window reaches (nearly) the whole buffer, far
    // past the 64 KiB an unscaled window could say, and b gets more than 64 KiB in flight.
    let len = 8 << 20;
    let data = pattern(len, 9);
    let (mut sent, mut got) = (0, Vec::with_capacity(len));
    let (mut max_window, mut max_flight) = (0usize, 0usize);
    for _ in 0..1_000_000 {
        if sent < len {
            sent += n.b.send(idb, &data[sent..]).unwrap();
        }
        let mut acked = 0u32;
        step_sniffing(&mut n, &mut |p| {
            let r = tcp_of(p);
            max_window = max_window.max(usize::from(r.window_len) << 5);
            if let Some(a) = r.ack_number {
                acked = acked.max(a.0 as u32);
            }
        });
        let flight =
            n.a.port
                .rx
                .lock()
                .unwrap()
                .iter()
                .map(|p| tcp_of(p).payload.len())
                .sum();
        max_flight = max_flight.max(flight);
        while n
            .a
            .recv(ida, |b| {
                got.extend_from_slice(b);
                b.len()
            })
            .unwrap()
            > 0
        {}
        if got.len() == len {
            break;
        }
    }
    assert!(got == data, "{} of {len} bytes", got.len());
    assert!(max_window >= BUF - (64 << 10), "window {max_window}");
    assert!(max_flight > 64 << 10, "in flight {max_flight}");
}

fn proc_kib(field: &str) -> Option<i64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RSS and address space a flood of 2,000 half-open accepts costs, three rounds (each round's
/// entries time out before the next, as a long flood's would). Linux only; prints, never
/// asserts. Alone, or other tests' memory shows up:
/// `cargo test -p iketcp-dataplane --lib rss_report -- --ignored --nocapture --test-threads=1`.
///
/// Before the SYN cache (a socket with 1 MiB + 1 MiB per SYN; glibc 2.36, test thread arena)
/// the same flood printed: round 0 RSS +35 MiB, VmSize +3.9 GiB (calloc: lazily mapped zero
/// pages); round 1 RSS +102 MiB; round 2 RSS +385 MiB, 323 MiB of it still resident once every
/// connection was freed (freed buffers raise glibc's dynamic mmap threshold, so later ones come
/// from the heap and are memset; a run that left connections over reached +2.5 GiB). With the
/// SYN cache: round 0 RSS +17 MiB (the test's own packet buffers), VmSize +1 MiB (the SYN
/// answerer's buffer); rounds 1 and 2 RSS +1.8 MiB and 0, VmSize 0; `buffer_bytes` 1 MiB + 1.
#[test]
#[ignore]
fn rss_report() {
    const SYNS: u16 = 2000;
    let (pa, _pb, to_a, to_b) = link(1 << 20);
    let mut a = SmolTransport::new(pa, cfg(A, 1 << 20)).unwrap();
    a.listen(sa(A, 4500)).unwrap();
    let mut now = Instant::now();
    for round in 0..3u16 {
        let (rss0, vm0) = (proc_kib("VmRSS:"), proc_kib("VmSize:"));
        for port in 0..SYNS {
            inject(&to_a, syn_from(sa(C, 1000 + round * SYNS + port)));
        }
        poll_all(&mut a, &to_a, &to_b, now);
        let (rss1, vm1) = (proc_kib("VmRSS:"), proc_kib("VmSize:"));
        let delta = |x: Option<i64>, y: Option<i64>| y.zip(x).map(|(y, x)| y - x);
        println!(
            "round {round}: {:?}: RSS {:?} KiB, VmSize {:?} KiB",
            a.load(),
            delta(rss0, rss1),
            delta(vm0, vm1),
        );
        now += Duration::from_secs(31);
        for _ in 0..100 {
            poll_all(&mut a, &to_a, &to_b, now);
            if a.load().half_open == 0 {
                break;
            }
        }
        assert_eq!(a.load().half_open, 0);
    }
}

#[test]
fn ipv6_sources_are_counted_per_64() {
    let a6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let mut ca = cfg_default_caps(a6, 16 << 10);
    ca.half_open_per_source = 2;
    let (pa, _pb, to_a, to_b) = link(1024);
    let mut a = SmolTransport::new(pa, ca).unwrap();
    a.listen(sa(a6, 4500)).unwrap();
    let host = |net: u16, h: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, h));
    // Three hosts of one /64: the third is over the cap; a host of the next /64 is not.
    for src in [host(7, 1), host(7, 2), host(7, 3), host(8, 1)] {
        inject(
            &to_a,
            segment(sa(src, 5000), sa(a6, 4500), TcpControl::Syn, 1, None, &[]),
        );
    }
    poll_all(&mut a, &to_a, &to_b, Instant::now());
    assert_eq!(a.load().half_open, 3);
    assert_eq!(a.stats().half_open_refused_source, 1);
}

/// `send_in_place` lends the contiguous free part of the socket's send ring: what the closure
/// writes at its front is sent, in order with `send`; where the ring wraps it lends only the part
/// up to the end, so a caller needing more gets less than `send_capacity` and must fall back to
/// `send`; a dead id lends nothing.
#[test]
fn send_in_place_lends_the_contiguous_ring_and_sends_what_was_written() {
    let buf = 4096;
    let mut n = Net::new(cfg(A, buf), cfg(B, buf), 64);
    let (ida, idb) = one_conn(&mut n);
    let data = pattern(3000, 7);
    let mut lent = 0;
    let wrote =
        n.b.send_in_place(idb, |ring| {
            lent = ring.len();
            ring[..1000].copy_from_slice(&data[..1000]);
            1000
        })
        .unwrap();
    assert_eq!(
        (wrote, lent),
        (1000, buf),
        "an empty ring lends all of itself"
    );
    assert_eq!(n.b.send(idb, &data[1000..3000]).unwrap(), 2000);
    let mut got = HashMap::new();
    for _ in 0..100 {
        n.step();
        drain(&mut n.a, &mut got);
    }
    assert_eq!(got.get(&ida).map(Vec::as_slice), Some(&data[..]));
    // A wrapped ring: `a` stops reading, `b` fills `a`'s window, queues 3000 more (at the
    // ring's start) and gets 2000 of them acknowledged once `a` reads 2000: 1000 bytes wait at
    // 2000..3000, so 1096 are free behind them and 2000 in front.
    let fill = pattern(buf, 3);
    assert_eq!(n.b.send(idb, &fill).unwrap(), buf);
    n.settle();
    assert_eq!(n.b.send(idb, &data).unwrap(), 3000);
    n.settle();
    let mut read = 0;
    while read < 2000 {
        read += n.a.recv(ida, |b| b.len().min(2000 - read)).unwrap();
    }
    n.settle();
    assert_eq!(n.b.send_capacity(idb), buf - 1000);
    let mut lent = 0;
    let wrote =
        n.b.send_in_place(idb, |ring| {
            lent = ring.len();
            0
        })
        .unwrap();
    assert_eq!(
        (wrote, lent),
        (0, buf - 3000),
        "only the part up to the ring's end"
    );
    n.b.abort(idb);
    assert!(n.b.send_in_place(idb, |_| unreachable!()).is_err());
}
