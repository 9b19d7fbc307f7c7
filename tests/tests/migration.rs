//! R-6.1-h with several workers: the Originator reconnects and the new connection lands on
//! another worker of the Responder than the one holding the SA. That worker reports the foreign
//! frame; the owner verifies it (R-10-e); control moves the SA (DeleteSa returns it with its replay window, InstallInbound puts it on
//! the new worker) and traffic continues on the same SA with no replay or ICV failure.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat, Suite};
use iketcp_dataplane::port::mem::{MemConfig, MemPort, pair};
use iketcp_dataplane::port::steer::{Steer, split};
use iketcp_dataplane::port::{Packet, PacketPool, Port};
use iketcp_dataplane::sa::{InboundSa, OutboundSa, SaParams};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::worker::handle::{
    Command, CommandError, Conn, DataplaneHandle, Direction, Event, IkeSaId, Lifetime, RemovedSa,
    VerifyFailure, channels,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector};
use iketcp_dataplane::worker::{WorkerConfig, spawn};
use iketcp_tests::inner;

const B_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SPI: u32 = 0x0000_c001;
const IKE: IkeSaId = IkeSaId(9);

fn params() -> SaParams {
    let km: Vec<u8> = (0..36u8).collect();
    let mut p = SaParams::new(
        SPI,
        Keymat::new(Suite::Aes256Gcm16, &km).unwrap_or_else(|e| panic!("{e}")),
        Backend::AwsLc,
    );
    p.esn = true;
    p
}

struct Rig {
    h: DataplaneHandle,
    plain: Vec<MemPort>,
    pool: PacketPool,
    log: Vec<Event>,
}

impl Rig {
    /// Panics where it was called (the step that timed out).
    #[track_caller]
    fn wait(&mut self, f: impl FnMut(&Event) -> bool) -> Event {
        match self.wait_for(f, Duration::from_secs(20)) {
            Some(e) => e,
            None => panic!("timed out; other events: {:?}", self.log),
        }
    }

    fn wait_for(&mut self, mut f: impl FnMut(&Event) -> bool, limit: Duration) -> Option<Event> {
        if let Some(i) = self.log.iter().position(&mut f) {
            return Some(self.log.remove(i));
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.h.events().recv_timeout(Duration::from_millis(10)) {
                Ok(e) if f(&e) => return Some(e),
                Ok(Event::Stats { .. }) | Err(_) => {}
                Ok(e) => self.log.push(e),
            }
        }
        None
    }

    fn send_a(&mut self, nums: std::ops::Range<u32>) {
        let mut q: VecDeque<Packet> = VecDeque::new();
        for n in nums {
            let mut p = self.pool.get();
            assert!(p.fill_from(&inner(0, n)));
            q.push_back(p);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !q.is_empty() && Instant::now() < deadline {
            let _ = self.plain[0].send_burst(&mut self.pool, &mut q);
        }
    }

    /// Packet numbers delivered by B worker `w` (1 or 2), waiting until `count` arrived.
    fn recv_b(&mut self, w: usize, count: usize) -> Vec<u32> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < count && Instant::now() < deadline {
            let mut v = Vec::new();
            let _ = self.plain[w].recv_burst(&mut self.pool, &mut v, 64);
            for p in v {
                got.push(u32::from_be_bytes(
                    p.data()[28..32].try_into().unwrap_or([0; 4]),
                ));
                self.pool.put(p);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        got
    }

    /// A connects; returns A's connection and the B worker that accepted it.
    fn connect(&mut self, token: u64) -> (Conn, u16) {
        let listen = SocketAddr::from((B_ADDR, 4500));
        self.h
            .send(
                0,
                Command::Connect {
                    local: None,
                    remote: listen,
                    token,
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        let Event::ConnUp { conn, local, .. } =
            self.wait(|e| matches!(e, Event::ConnUp { token: Some(t), .. } if *t == token))
        else {
            unreachable!()
        };
        let port = local.port();
        let Event::ConnUp { conn: b, .. } = self
            .wait(|e| matches!(e, Event::ConnUp { token: None, peer, .. } if peer.port() == port))
        else {
            unreachable!()
        };
        self.h
            .send(
                0,
                Command::BindIkeSa {
                    ike_sa: IKE,
                    conn: conn.id,
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        (conn, b.worker)
    }
}

#[test]
fn r_6_1_h_sa_follows_a_reconnect_to_another_worker() {
    let (h, sides) = channels(3);
    let (link_a, link_b) = pair(MemConfig::default());
    let (split_b, ports_b) = split(link_b, 2, 4096);
    let stop = Arc::new(AtomicBool::new(false));
    let split_join = split_b
        .spawn(stop.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cipher: Vec<Option<MemPort>> =
        std::iter::once(link_a).chain(ports_b).map(Some).collect();
    let mut plain = Vec::new();
    let mut joins = Vec::new();
    for (w, side) in sides.into_iter().enumerate() {
        let (pw, pt) = pair(MemConfig::default());
        plain.push(pt);
        let port = cipher[w].take().unwrap_or_else(|| panic!("port"));
        let (addr, steer) = if w == 0 {
            (A_ADDR, None)
        } else {
            (
                B_ADDR,
                Some(Steer {
                    index: (w - 1) as u16,
                    count: 2,
                }),
            )
        };
        let cfg = SmolConfig {
            local_addrs: vec![IpAddr::V4(addr)],
            steer,
            ..SmolConfig::default()
        };
        let wc = WorkerConfig {
            idle_spins: 64,
            ..WorkerConfig::default()
        };
        joins.push(
            spawn(side, wc, move || Ok((SmolTransport::new(port, cfg)?, pw)))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let mut r = Rig {
        h,
        plain,
        pool: PacketPool::default(),
        log: Vec::new(),
    };
    for w in [1u16, 2] {
        r.h.send(
            w,
            Command::Listen {
                local: SocketAddr::from((B_ADDR, 4500)),
                ack: 1,
            },
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
    }
    let (mut a_conn, first) = r.connect(1);
    // The SA lives where the first connection landed.
    let any = Selectors {
        local: vec![TrafficSelector::any(false)],
        remote: vec![TrafficSelector::any(false)],
    };
    let out = Box::new(OutboundSa::new(&params()).unwrap_or_else(|e| panic!("{e}")));
    let inb = Box::new(InboundSa::new(&params()).unwrap_or_else(|e| panic!("{e}")));
    r.h.send(
        first,
        Command::InstallInbound {
            sa: inb,
            ike_sa: IKE,
            lifetime: Lifetime::UNLIMITED,
            ack: 10,
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    r.h.send(
        0,
        Command::InstallOutbound {
            sa: out,
            ike_sa: IKE,
            selectors: any,
            lifetime: Lifetime::UNLIMITED,
            ack: 11,
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    r.wait(|e| {
        matches!(
            e,
            Event::Ack {
                ack: 10,
                result: Ok(()),
                ..
            }
        )
    });
    r.wait(|e| {
        matches!(
            e,
            Event::Ack {
                ack: 11,
                result: Ok(()),
                ..
            }
        )
    });
    r.send_a(0..100);
    assert_eq!(
        r.recv_b(usize::from(first), 100),
        (0..100).collect::<Vec<_>>()
    );
    // Reconnect (as after a reset) until the new connection lands on B's other worker.
    let other = 3 - first;
    let mut token = 1;
    loop {
        r.h.send(
            0,
            Command::Close {
                conn: a_conn.id,
                abort: true,
            },
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let old = a_conn;
        r.wait(|e| matches!(e, Event::ConnDown { conn, .. } if *conn == old));
        token += 1;
        assert!(token < 40, "never landed on the other worker");
        let (c, w) = r.connect(token);
        a_conn = c;
        if w == other {
            break;
        }
    }
    // The other worker does not hold the SPI: it reports the frame (the packet is dropped
    // there). A packet sent before A's worker applied the rebind goes nowhere, so send until
    // the report comes.
    let mut report = None;
    for _ in 0..200 {
        r.send_a(100..101);
        report = r.wait_for(
            |e| matches!(e, Event::ForeignEsp { .. }),
            Duration::from_millis(50),
        );
        if report.is_some() {
            break;
        }
    }
    let Some(Event::ForeignEsp { conn, spi, frame }) = report else {
        panic!("no ForeignEsp; other events: {:?}", r.log)
    };
    assert_eq!((conn.worker, spi), (other, SPI));
    // R-10-e: nothing moves before the owner verified the packet with the SA. A forged copy
    // fails there; the genuine one passes (and is delivered), and a second copy is a replay.
    let verify = |r: &mut Rig, frame: Vec<u8>, ack: u64| {
        r.h.send(first, Command::VerifyEsp { spi, frame, ack })
            .unwrap_or_else(|e| panic!("{e:?}"));
        let Event::Ack { result, .. } =
            r.wait(|e| matches!(e, Event::Ack { ack: a, .. } if *a == ack))
        else {
            unreachable!()
        };
        result
    };
    let mut forged = frame.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let fail = |failure| Err(CommandError::Verify { spi, failure });
    assert_eq!(verify(&mut r, forged, 15), fail(VerifyFailure::Integrity));
    assert_eq!(verify(&mut r, frame.clone(), 16), Ok(()));
    assert_eq!(r.recv_b(usize::from(first), 1), vec![100]);
    assert_eq!(
        verify(&mut r, frame.clone(), 17),
        fail(VerifyFailure::Replay)
    );
    // Control moves the SA with its state: out of the old worker, into the new one.
    r.h.send(
        first,
        Command::DeleteSa {
            spi: SPI,
            dir: Direction::Inbound,
            ack: 20,
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let Event::SaRemoved(RemovedSa::Inbound(sa)) =
        r.wait(|e| matches!(e, Event::SaRemoved(RemovedSa::Inbound(_))))
    else {
        unreachable!()
    };
    let seq = u64::from(u32::from_be_bytes(frame[4..8].try_into().unwrap_or([0; 4])));
    assert_eq!(
        sa.window().top(),
        seq,
        "the replay window travels with the SA"
    );
    r.h.send(
        other,
        Command::InstallInbound {
            sa,
            ike_sa: IKE,
            lifetime: Lifetime::UNLIMITED,
            ack: 21,
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    r.wait(|e| {
        matches!(
            e,
            Event::Ack {
                ack: 21,
                result: Ok(()),
                ..
            }
        )
    });
    r.send_a(101..200);
    assert_eq!(
        r.recv_b(usize::from(other), 99),
        (101..200).collect::<Vec<_>>()
    );
    let s = r.h.worker_stats(other).unwrap_or_default();
    assert_eq!((s.replays, s.icv_failures, s.closed_corrupt), (0, 0, 0));
    for w in 0..3u16 {
        let _ =
            r.h.send_timeout(w, Command::Shutdown, Duration::from_secs(5));
    }
    for j in joins {
        assert!(matches!(j.join(), Ok(Ok(()))));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(split_join.join(), Ok(Ok(()))));
}
