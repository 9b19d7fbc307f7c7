//! Two workers in one process: plaintext for an SA of the other worker is forwarded through its
//! inbox and leaves encrypted on that worker's connection (see `worker::forward`).

use std::collections::VecDeque;
use std::time::Instant;

use super::*;
use crate::port::Port;
use crate::port::mem::{MemConfig, pair};
use crate::worker::forward::INBOX_SLOTS;
use crate::worker::handle::{EVENT_QUEUE, WorkerChannels, gateway_channels};
use crate::worker::stats::StatsSnapshot;
use crate::worker::{Worker, WorkerConfig};

/// What `inner()` packets match: 198.51.100.0/24 → 203.0.113.0 – 203.0.113.99 (a range).
fn sel() -> Selectors {
    Selectors {
        local: vec![TrafficSelector::prefix(
            Ipv4Addr::new(198, 51, 100, 0).into(),
            24,
        )],
        remote: vec![TrafficSelector {
            start: Ipv4Addr::new(203, 0, 113, 0).into(),
            end: Ipv4Addr::new(203, 0, 113, 99).into(),
            ..TrafficSelector::any(false)
        }],
    }
}

/// Two engines with their own scripted transports, one peer.
struct Pair {
    engines: Vec<Engine>,
    t: Vec<FakeTransport>,
    handle: DataplaneHandle,
    peer: Peer,
    ack: u64,
}

impl Pair {
    fn new() -> Self {
        Self::with(gateway_channels(&[2], EVENT_QUEUE))
    }
    /// Two workers that are gateways of their own (plain `channels`).
    fn apart() -> Self {
        Self::with(channels(2))
    }
    fn with((handle, sides): (DataplaneHandle, Vec<WorkerChannels>)) -> Self {
        let engines = sides
            .into_iter()
            .map(|ch| Engine::new(ch, EngineConfig::default(), PacketPool::new(4096, 64)))
            .collect();
        Pair {
            engines,
            t: vec![FakeTransport::default(), FakeTransport::default()],
            handle,
            peer: Peer::new(),
            ack: 0,
        }
    }
    fn step(&mut self, w: usize) {
        let (e, t) = (&mut self.engines[w], &mut self.t[w]);
        assert!(e.handle_commands(t));
        let mut ev = Vec::new();
        t.poll(Instant::now(), &mut ev).expect("poll");
        e.on_transport_events(t, &mut ev);
        e.receive(t);
        e.flush(t);
    }
    fn cmd(&mut self, w: usize, c: Command) {
        self.handle.send(w as u16, c).expect("send");
        self.step(w);
    }
    /// An accepted connection on worker `w` bound to `IKE`.
    fn conn(&mut self, w: usize) -> ConnId {
        let id = self.t[w].open(TcpRole::Responder, "192.0.2.10:40000".parse().expect("a"));
        self.t[w].feed(id, &STREAM_PREFIX);
        self.step(w);
        self.cmd(
            w,
            Command::BindIkeSa {
                ike_sa: IKE,
                conn: id,
            },
        );
        id
    }
    fn install(&mut self, w: usize, spi: u32) {
        self.ack += 1;
        let sa = Box::new(OutboundSa::new(&params(spi, 5)).expect("sa"));
        let ack = self.ack;
        self.cmd(
            w,
            Command::InstallOutbound {
                sa,
                ike_sa: IKE,
                selectors: sel(),
                lifetime: Lifetime::UNLIMITED,
                ack,
            },
        );
    }
    fn delete(&mut self, w: usize, spi: u32) {
        self.ack += 1;
        let ack = self.ack;
        let dir = Direction::Outbound;
        self.cmd(w, Command::DeleteSa { spi, dir, ack });
    }
    /// Plaintext packet `n` read by worker `w`.
    fn plain(&mut self, w: usize, n: u32) {
        let e = &mut self.engines[w];
        let mut p = e.pool_mut().get();
        assert!(p.fill_from(&inner(n)));
        e.send_plain(&mut self.t[w], &mut vec![p]);
    }
    /// Worker `w`'s turn at its inbox (nothing read from its port).
    fn drain(&mut self, w: usize) {
        self.engines[w].send_plain(&mut self.t[w], &mut Vec::new());
    }
    fn stats(&self, w: usize) -> StatsSnapshot {
        self.engines[w].stats().snapshot()
    }
    /// Inner packet numbers the peer decrypts from what worker `w` sent on `c`.
    fn sent(&mut self, w: usize, c: ConnId) -> Vec<u32> {
        let bytes = self.t[w].take_tx(c);
        self.peer.read(&bytes, Role::Responder).0
    }
}

/// Worker 1 holds the SA and its connection; worker 0 has only learnt the policy.
fn sa_on_worker_1() -> (Pair, ConnId) {
    let mut p = Pair::new();
    let c = p.conn(1);
    p.install(1, SPI_OUT);
    p.step(0);
    (p, c)
}

#[test]
fn plaintext_for_another_workers_sa_leaves_encrypted_on_its_connection() {
    let (mut p, c) = sa_on_worker_1();
    for n in 1..=3 {
        p.plain(0, n);
    }
    let s0 = p.stats(0);
    assert_eq!(
        (s0.plain_in, s0.fwd_out, s0.no_sa, s0.esp_out),
        (3, 3, 0, 0)
    );
    assert!(p.engines[1].forwarded_waiting());
    assert!(p.sent(1, c).is_empty(), "not before worker 1 runs");
    p.drain(1);
    assert_eq!(
        p.sent(1, c),
        vec![1, 2, 3],
        "in order, and decrypted by the peer"
    );
    let s1 = p.stats(1);
    assert_eq!((s1.fwd_in, s1.esp_out, s1.plain_in, s1.no_sa), (3, 3, 0, 0));
    assert!(!p.engines[1].forwarded_waiting());
    // Worker 1's own plaintext takes the same SA (same sequence space, so the peer's replay
    // window sees one stream).
    p.plain(1, 4);
    assert_eq!(p.sent(1, c), vec![4]);
    // Packets the policy does not cover are no one's: dropped where they were read.
    let mut other = inner(5);
    other[19] = 100; // 203.0.113.100: just past the range
    let mut pk = p.engines[0].pool_mut().get();
    assert!(pk.fill_from(&other));
    p.engines[0].send_plain(&mut p.t[0], &mut vec![pk]);
    assert_eq!((p.stats(0).no_sa, p.stats(0).fwd_out), (1, 3));
}

#[test]
fn workers_of_different_gateways_never_forward() {
    // Two ends of a tunnel in one data plane (as the tests and the demo run them): the same
    // selectors on both mean different traffic.
    let mut p = Pair::apart();
    let c = p.conn(1);
    p.install(1, SPI_OUT);
    p.step(0);
    p.plain(0, 1);
    let s0 = p.stats(0);
    assert_eq!((s0.plain_in, s0.fwd_out, s0.no_sa), (1, 0, 1));
    assert!(!p.engines[1].forwarded_waiting());
    p.drain(1);
    assert!(p.sent(1, c).is_empty());
}

#[test]
fn a_full_inbox_drops_and_counts_without_blocking() {
    let (mut p, c) = sa_on_worker_1();
    let extra = 5;
    for n in 0..(INBOX_SLOTS + extra) as u32 {
        p.plain(0, n);
    }
    let s0 = p.stats(0);
    assert_eq!(s0.plain_in, (INBOX_SLOTS + extra) as u64);
    assert_eq!(
        (s0.fwd_out, s0.fwd_dropped),
        (INBOX_SLOTS as u64, extra as u64)
    );
    let mut got = Vec::new();
    while p.engines[1].forwarded_waiting() {
        p.drain(1);
        got.extend(p.sent(1, c));
    }
    assert_eq!(got, (0..INBOX_SLOTS as u32).collect::<Vec<_>>());
    assert_eq!(p.stats(1).fwd_in, INBOX_SLOTS as u64);
    // Worker 1 handed empty buffers back: worker 0 reuses them instead of allocating.
    let before = p.engines[0].pool_mut().allocated();
    for n in 0..64 {
        p.plain(0, n);
    }
    assert!(p.engines[0].pool_mut().allocated() - before < 64);
}

#[test]
fn deleting_the_sa_removes_the_forward_entry() {
    let (mut p, c) = sa_on_worker_1();
    p.plain(0, 1);
    p.drain(1);
    assert_eq!(p.sent(1, c), vec![1]);
    p.delete(1, SPI_OUT);
    p.step(0);
    p.plain(0, 2);
    let s0 = p.stats(0);
    assert_eq!(
        (s0.fwd_out, s0.no_sa),
        (1, 1),
        "no SA anywhere: dropped on worker 0"
    );
    assert!(!p.engines[1].forwarded_waiting());
    // Installed again (e.g. moved back): forwarded again.
    p.install(1, SPI_OUT);
    p.step(0);
    p.plain(0, 3);
    assert_eq!(p.stats(0).fwd_out, 2);
}

#[test]
fn a_newer_sa_on_this_worker_shadows_a_forward_entry_and_its_removal_uncovers_it() {
    let (mut p, c1) = sa_on_worker_1();
    // The peer's rekeyed SA lands on worker 0 (RFC 7296 §2.8: the new SA takes the traffic).
    let c0 = p.conn(0);
    p.install(0, SPI_OUT + 1);
    p.step(1);
    p.plain(0, 1);
    assert_eq!(p.stats(0).fwd_out, 0);
    assert!(
        !p.t[0].take_tx(c0).is_empty(),
        "sent on worker 0's own connection"
    );
    // Worker 1's plaintext goes to worker 0 now: its forward entry is newer than its own SA.
    p.plain(1, 2);
    assert_eq!(p.stats(1).fwd_out, 1);
    p.drain(0);
    assert!(!p.t[0].take_tx(c0).is_empty());
    assert!(p.sent(1, c1).is_empty());
    // Deleting the new SA on worker 0 leaves worker 1's older SA in charge on both workers.
    p.delete(0, SPI_OUT + 1);
    p.step(1);
    p.plain(0, 3);
    p.drain(1);
    assert_eq!(p.stats(0).fwd_out, 1);
    assert_eq!(p.sent(1, c1), vec![3]);
}

#[test]
fn a_forwarded_packet_is_never_forwarded_again() {
    let mut p = Pair::new();
    let _c0 = p.conn(0);
    let _c1 = p.conn(1);
    // Y on worker 0, then X on worker 1: worker 0 forwards to 1 (X is newest).
    p.install(0, SPI_OUT + 1);
    p.step(1);
    p.install(1, SPI_OUT);
    p.step(0);
    // X goes away on worker 1; worker 0 has not heard yet (a move in flight) and forwards.
    p.delete(1, SPI_OUT);
    p.plain(0, 1);
    assert_eq!(p.stats(0).fwd_out, 1);
    // Worker 1 would send it back to Y's worker: it drops it instead (no ping-pong).
    p.drain(1);
    let s1 = p.stats(1);
    assert_eq!((s1.fwd_in, s1.fwd_out, s1.no_sa), (1, 0, 1));
    assert!(!p.engines[0].forwarded_waiting());
}

#[test]
fn worker_loop_drains_its_inbox() {
    let (handle, sides) = gateway_channels(&[2], EVENT_QUEUE);
    let mut ports = Vec::new();
    let mut workers: Vec<Worker<FakeTransport, _>> = sides
        .into_iter()
        .map(|ch: WorkerChannels| {
            let (ours, host) = pair(MemConfig::default());
            ports.push(host);
            let cfg = WorkerConfig {
                pool_size: 64,
                ..WorkerConfig::default()
            };
            Worker::new(ch, FakeTransport::default(), ours, cfg)
        })
        .collect();
    let now = Instant::now();
    let run = |workers: &mut Vec<Worker<FakeTransport, _>>| {
        for w in workers.iter_mut() {
            assert!(w.step(now).expect("step").0);
        }
    };
    let t1 = workers[1].transport_mut();
    let c = t1.open(TcpRole::Responder, "192.0.2.10:40000".parse().expect("a"));
    t1.feed(c, &STREAM_PREFIX);
    run(&mut workers);
    let sa = Box::new(OutboundSa::new(&params(SPI_OUT, 5)).expect("sa"));
    let cmds = [
        Command::BindIkeSa {
            ike_sa: IKE,
            conn: c,
        },
        Command::InstallOutbound {
            sa,
            ike_sa: IKE,
            selectors: sel(),
            lifetime: Lifetime::UNLIMITED,
            ack: 1,
        },
    ];
    for cmd in cmds {
        handle.send(1, cmd).expect("send");
    }
    run(&mut workers);
    // The host writes into worker 0's plaintext port (the TUN queue the flow hashed to).
    let mut pool = PacketPool::new(4096, 64);
    let mut q: VecDeque<_> = (1..=2)
        .map(|n| {
            let mut pk = pool.get();
            assert!(pk.fill_from(&inner(n)));
            pk
        })
        .collect();
    assert_eq!(ports[0].send_burst(&mut pool, &mut q).expect("send"), 2);
    run(&mut workers);
    let mut peer = Peer::new();
    let bytes = workers[1].transport_mut().take_tx(c);
    assert_eq!(peer.read(&bytes, Role::Responder).0, vec![1, 2]);
    let (s0, s1) = (handle.worker_stats(0), handle.worker_stats(1));
    let s = |s: Option<StatsSnapshot>| s.map(|s| (s.fwd_out, s.fwd_in, s.esp_out));
    assert_eq!((s(s0), s(s1)), (Some((2, 0, 0)), Some((0, 2, 2))));
}
