//! The driver against the real data plane: two workers (smoltcp over a mem link), a handshake
//! through the driver, then an inner packet crossing each way.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iketcp_dataplane::port::mem::{MemConfig, MemLink, pair_with_control};
use iketcp_dataplane::port::{Medium, Packet, PacketPool, Port};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::worker::handle::{Command, DataplaneHandle, channels};
use iketcp_dataplane::worker::{WorkerConfig, spawn};

use super::fixtures::{INITIATOR_ADDR, RESPONDER_ADDR, configs};
use super::*;

pub(super) type Queue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// A plaintext port: packets pushed to `inject` go into the worker, what it delivers lands in
/// `delivered`.
#[derive(Debug)]
struct Probe {
    inject: Queue,
    delivered: Queue,
}

impl Port for Probe {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        let mut q = self.inject.lock().map_err(|_| io::Error::other("lock"))?;
        let mut n = 0;
        while n < max {
            let Some(bytes) = q.pop_front() else { break };
            let mut p = pool.get();
            if !p.fill_from(&bytes) {
                return Err(io::Error::other("packet too large"));
            }
            out.push(p);
            n += 1;
        }
        Ok(n)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        let mut q = self
            .delivered
            .lock()
            .map_err(|_| io::Error::other("lock"))?;
        let n = pkts.len();
        for p in pkts.drain(..) {
            q.push_back(p.data().to_vec());
            pool.put(p);
        }
        Ok(n)
    }

    fn medium(&self) -> Medium {
        Medium::Ip
    }

    fn mtu(&self) -> usize {
        1500
    }
}

pub(super) struct Rig {
    pub(super) h: DataplaneHandle,
    joins: Vec<JoinHandle<io::Result<()>>>,
    /// (inject, delivered) of the initiator (worker 0) and the responder (worker 1).
    pub(super) ports: [(Queue, Queue); 2],
    /// Control of the mem link between the two workers (resets, cuts).
    pub(super) link: MemLink,
}

impl Rig {
    pub(super) fn new() -> Rig {
        let (h, mut sides) = channels(2);
        let r_side = sides.pop().unwrap();
        let i_side = sides.pop().unwrap();
        let (pa, pb, link) = pair_with_control(MemConfig::default());
        let ports: [(Queue, Queue); 2] = Default::default();
        let mut joins = Vec::new();
        for (side, port, addr, (inject, delivered)) in [
            (i_side, pa, INITIATOR_ADDR, ports[0].clone()),
            (r_side, pb, RESPONDER_ADDR, ports[1].clone()),
        ] {
            let cfg = SmolConfig {
                local_addrs: vec![IpAddr::V4(addr)],
                ..SmolConfig::default()
            };
            let j = spawn(side, WorkerConfig::default(), move || {
                Ok((SmolTransport::new(port, cfg)?, Probe { inject, delivered }))
            })
            .unwrap();
            joins.push(j);
        }
        Rig {
            h,
            joins,
            ports,
            link,
        }
    }

    pub(super) fn stop(self) {
        for w in [0, 1] {
            self.h
                .send_timeout(w, Command::Shutdown, Duration::from_secs(5))
                .unwrap();
        }
        for j in self.joins {
            j.join().unwrap().unwrap();
        }
    }
}

/// An IPv4/UDP packet with a recognisable payload.
pub(super) fn udp(src: [u8; 4], dst: [u8; 4], tag: u8) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&40u16.to_be_bytes());
    for b in &mut p[28..] {
        *b = tag;
    }
    p
}

pub(super) fn poll_until(d: &mut Driver, what: &str, mut f: impl FnMut(&mut Driver) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f(d) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        d.poll(Duration::from_millis(20)).unwrap();
    }
}

pub(super) fn wait_delivered(q: &Queue, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if q.lock().unwrap().iter().any(|p| p.as_slice() == want) {
            return;
        }
        assert!(Instant::now() < deadline, "inner packet did not cross");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Adds a Responder on worker 1 and, once it listens, an Originator on worker 0 (both with
/// `timers`), and waits for both Child SAs. Returns the Responder's and the Originator's
/// endpoint indexes and the events so far.
pub(super) fn start_pair(
    d: &mut Driver,
    ci: Config,
    cr: Config,
    timers: Timers,
) -> (EndpointId, EndpointId, Vec<DriverEvent>) {
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut r = Endpoint::new(1, EndpointRole::Responder { listen }, cr);
    r.timers = timers;
    let r = d.add(r).unwrap();
    let mut events = Vec::new();
    poll_until(d, "listen", |d| {
        events.extend(d.take_events());
        events
            .iter()
            .any(|e| matches!(e, DriverEvent::Listening { endpoint } if *endpoint == r))
    });
    let mut o = Endpoint::new(
        0,
        EndpointRole::Originator {
            remote: listen,
            local: None,
        },
        ci,
    );
    o.timers = timers;
    let i = d.add(o).unwrap();
    poll_until(d, "both Child SAs", |d| {
        events.extend(d.take_events());
        d.installed() == 2
    });
    (r, i, events)
}

#[test]
fn handshake_installs_sas_and_packets_cross() {
    let rig = Rig::new();
    let (ci, cr) = configs(iketcp_dataplane::crypto::Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(rig.h.clone());
    let (r, i, events) = start_pair(&mut d, ci, cr, Timers::default());
    assert!(!events.iter().any(|e| matches!(
        e,
        DriverEvent::Failed { .. } | DriverEvent::IntegrityFailure { .. }
    )));
    let installed: Vec<(EndpointId, u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            DriverEvent::ChildSaInstalled {
                endpoint,
                spi_in,
                spi_out,
                ..
            } => Some((*endpoint, *spi_in, *spi_out)),
            _ => None,
        })
        .collect();
    assert_eq!(installed.len(), 2);
    let (_, i_in, i_out) = *installed.iter().find(|x| x.0 == i).unwrap();
    let (_, r_in, r_out) = *installed.iter().find(|x| x.0 == r).unwrap();
    assert_eq!((i_in, i_out), (r_out, r_in));
    for ep in [i, r] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, DriverEvent::IkeSaUp { endpoint, .. } if *endpoint == ep))
        );
    }

    // Initiator → responder and back.
    let there = udp([198, 51, 100, 7], [203, 0, 113, 9], 0xa5);
    rig.ports[0].0.lock().unwrap().push_back(there.clone());
    wait_delivered(&rig.ports[1].1, &there);
    let back = udp([203, 0, 113, 9], [198, 51, 100, 7], 0x5a);
    rig.ports[1].0.lock().unwrap().push_back(back.clone());
    wait_delivered(&rig.ports[0].1, &back);
    // R-9.5-a (RFC 6040): the tunnel leaves the inner header alone, so a CE mark (and the DSCP)
    // arrives as sent; the outer TCP is Not-ECT (tests/tests/demo_capture.rs).
    let mut marked = udp([198, 51, 100, 7], [203, 0, 113, 9], 0xce);
    marked[1] = 0xb8 | 0x03;
    rig.ports[0].0.lock().unwrap().push_back(marked.clone());
    wait_delivered(&rig.ports[1].1, &marked);
    // Outside the selectors: not sent.
    let stray = udp([10, 0, 0, 1], [203, 0, 113, 9], 0x11);
    rig.ports[0].0.lock().unwrap().push_back(stray);

    let s = rig.h.stats();
    assert_eq!(s.icv_failures, 0);
    assert!(s.esp_in >= 2);

    d.delete_all().unwrap();
    poll_until(&mut d, "the deletes", |d| !d.has_pending());
    assert_eq!(d.installed(), 0);
    rig.stop();
}

/// Inner packets carrying a sequence number, injected on both sides while the driver runs.
pub(super) struct Traffic {
    /// Next sequence number per direction: initiator → responder, responder → initiator.
    pub(super) next: [u64; 2],
}

impl Traffic {
    const NETS: [([u8; 4], [u8; 4]); 2] = [
        ([198, 51, 100, 7], [203, 0, 113, 9]),
        ([203, 0, 113, 9], [198, 51, 100, 7]),
    ];

    /// Injects `n` packets each way.
    pub(super) fn pump(&mut self, rig: &Rig, n: u64) {
        for (k, (src, dst)) in Self::NETS.into_iter().enumerate() {
            let mut q = rig.ports[k].0.lock().unwrap();
            for _ in 0..n {
                let mut p = udp(src, dst, 0x77);
                p[28..36].copy_from_slice(&self.next[k].to_be_bytes());
                self.next[k] += 1;
                q.push_back(p);
            }
        }
    }

    /// Sequence numbers delivered in direction `k`.
    pub(super) fn delivered(rig: &Rig, k: usize) -> Vec<u64> {
        rig.ports[1 - k]
            .1
            .lock()
            .unwrap()
            .iter()
            .map(|p| u64::from_be_bytes(p[28..36].try_into().unwrap()))
            .collect()
    }
}

/// Polls the driver and injects traffic until `f` holds.
pub(super) fn pump_until(
    d: &mut Driver,
    rig: &Rig,
    t: &mut Traffic,
    events: &mut Vec<DriverEvent>,
    what: &str,
    mut f: impl FnMut(&Driver, &[DriverEvent]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        events.extend(d.take_events());
        if f(d, events) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        t.pump(rig, 4);
        d.poll(Duration::from_millis(5)).unwrap();
    }
}

#[test]
fn rekeys_under_traffic_lose_no_packet() {
    let rig = Rig::new();
    let (ci, cr) = configs(iketcp_dataplane::crypto::Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(rig.h.clone());
    let (r, i, mut events) = start_pair(&mut d, ci, cr, Timers::default());
    let (i_in, i_out) = events
        .iter()
        .find_map(|e| match e {
            DriverEvent::ChildSaInstalled {
                endpoint,
                spi_in,
                spi_out,
                ..
            } if *endpoint == i => Some((*spi_in, *spi_out)),
            _ => None,
        })
        .unwrap();
    events.clear();
    let mut t = Traffic { next: [0; 2] };
    let start = Instant::now();
    pump_until(&mut d, &rig, &mut t, &mut events, "traffic", |_, _| {
        start.elapsed() > Duration::from_millis(100)
    });

    // Child SA rekey from the initiator, under traffic.
    assert_eq!(d.rekey_child_sas_of(i, Instant::now()).unwrap(), 1);
    let old = [
        (i_in, Direction::Inbound),
        (i_out, Direction::Outbound),
        (i_out, Direction::Inbound),
        (i_in, Direction::Outbound),
    ];
    pump_until(
        &mut d,
        &rig,
        &mut t,
        &mut events,
        "the old SAs to go",
        |d, ev| {
            d.child_rekeys() == 1
                && old.iter().all(|(s, dir)| {
                    ev.iter().any(
                    |e| matches!(e, DriverEvent::SaRemoved { spi, dir: x } if spi == s && x == dir),
                )
                })
        },
    );
    let rekeyed: Vec<(EndpointId, u32, u32, u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            DriverEvent::ChildSaRekeyed {
                endpoint,
                old_spi_in,
                old_spi_out,
                spi_in,
                spi_out,
            } => Some((*endpoint, *old_spi_in, *old_spi_out, *spi_in, *spi_out)),
            _ => None,
        })
        .collect();
    assert_eq!(rekeyed.len(), 2, "{rekeyed:?}");
    let (_, oi, oo, ni, no) = *rekeyed.iter().find(|x| x.0 == i).unwrap();
    assert_eq!((oi, oo), (i_in, i_out));
    assert!(ni != i_in && no != i_out);
    let (_, _, _, r_ni, r_no) = *rekeyed.iter().find(|x| x.0 == r).unwrap();
    assert_eq!((r_ni, r_no), (no, ni));
    // Only the new Child SA is left, in both directions on both sides.
    assert_eq!(d.installed(), 2);
    for ep in [i, r] {
        assert!(events.iter().any(|e| matches!(
            e,
            DriverEvent::ChildSaInstalled { endpoint, spi_in, .. }
                if *endpoint == ep && (*spi_in == ni || *spi_in == no)
        )));
    }

    // IKE SA rekey from the initiator, under traffic; the Child SA stays.
    let removed_before = events
        .iter()
        .filter(|e| matches!(e, DriverEvent::SaRemoved { .. }))
        .count();
    assert_eq!(d.rekey_ike_sas_of(i, Instant::now()).unwrap(), 1);
    pump_until(
        &mut d,
        &rig,
        &mut t,
        &mut events,
        "the IKE SA rekey",
        |d, ev| {
            d.ike_rekeys() == 1
                && ev
                    .iter()
                    .filter(|e| matches!(e, DriverEvent::IkeSaRekeyed { .. }))
                    .count()
                    == 2
        },
    );
    let settle = Instant::now();
    pump_until(&mut d, &rig, &mut t, &mut events, "more traffic", |_, _| {
        settle.elapsed() > Duration::from_millis(200)
    });
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, DriverEvent::SaRemoved { .. }))
            .count(),
        removed_before,
        "the IKE SA rekey deleted an ESP SA"
    );
    assert!(!events.iter().any(|e| matches!(
        e,
        DriverEvent::Failed { .. } | DriverEvent::IntegrityFailure { .. }
    )));

    // Everything arrives, once, in order.
    let sent = t.next;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..2).any(|k| Traffic::delivered(&rig, k).len() < sent[k] as usize) {
        assert!(Instant::now() < deadline, "packets lost: sent {sent:?}");
        d.poll(Duration::from_millis(10)).unwrap();
    }
    for (k, n) in sent.into_iter().enumerate() {
        let got = Traffic::delivered(&rig, k);
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "direction {k}");
        assert!(n > 100, "direction {k}: only {n} packets");
    }
    let s = rig.h.stats();
    assert_eq!((s.no_sa, s.icv_failures, s.replays), (0, 0, 0), "{s:?}");

    d.delete_all().unwrap();
    poll_until(&mut d, "the deletes", |d| !d.has_pending());
    assert_eq!(d.installed(), 0);
    rig.stop();
}

#[test]
fn responder_holds_auth_response_until_inbound_sa_acked() {
    // Sans IO: feed the driver events by hand and look at the commands it sends.
    let (h, sides) = channels(1);
    let (ci, cr) = configs(iketcp_dataplane::crypto::Suite::Aes256Gcm16, true).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    d.add(Endpoint::new(0, EndpointRole::Responder { listen }, cr))
        .unwrap();
    let cmds = &sides[0].commands;
    let Ok(Command::Listen { ack, .. }) = cmds.try_recv() else {
        panic!("no Listen");
    };
    let now = Instant::now();
    d.handle_event(
        Event::Ack {
            worker: 0,
            ack,
            result: Ok(()),
        },
        now,
    )
    .unwrap();
    let conn = Conn {
        worker: 0,
        id: iketcp_dataplane::transport::ConnId {
            slot: 7,
            generation: 0,
        },
    };
    let peer = SocketAddr::from((INITIATOR_ADDR, 40000));
    d.handle_event(
        Event::ConnUp {
            conn,
            local: listen,
            peer,
            role: TcpRole::Responder,
            token: None,
        },
        now,
    )
    .unwrap();
    // The initiator session runs here by hand.
    let (mut init, first) = Session::initiator(ci, peer, listen, now).unwrap();
    d.handle_event(
        Event::IkeMessage {
            conn,
            msg: first.into(),
        },
        now,
    )
    .unwrap();
    let Ok(Command::SendIke { msg: resp1, .. }) = cmds.try_recv() else {
        panic!("no IKE_SA_INIT response");
    };
    let auth = init
        .handle(&resp1, now)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .unwrap();
    d.handle_event(
        Event::IkeMessage {
            conn,
            msg: auth.into(),
        },
        now,
    )
    .unwrap();
    let Ok(Command::InstallInbound {
        ack: ack_in, sa, ..
    }) = cmds.try_recv()
    else {
        panic!("no InstallInbound");
    };
    assert!(sa.spi() > 255);
    assert!(matches!(cmds.try_recv(), Ok(Command::BindIkeSa { .. })));
    let Ok(Command::InstallOutbound {
        ack: ack_out,
        selectors,
        ..
    }) = cmds.try_recv()
    else {
        panic!("no InstallOutbound");
    };
    assert_eq!(selectors.local.len(), 1);
    // Nothing is sent before the inbound SA is acknowledged ...
    assert!(cmds.try_recv().is_err());
    d.handle_event(
        Event::Ack {
            worker: 0,
            ack: ack_out,
            result: Ok(()),
        },
        now,
    )
    .unwrap();
    assert!(cmds.try_recv().is_err());
    // ... and then the IKE_AUTH response goes out.
    d.handle_event(
        Event::Ack {
            worker: 0,
            ack: ack_in,
            result: Ok(()),
        },
        now,
    )
    .unwrap();
    let Ok(Command::SendIke { msg: resp2, .. }) = cmds.try_recv() else {
        panic!("IKE_AUTH response not released");
    };
    let evs = init.handle(&resp2, now).unwrap();
    assert!(
        evs.iter()
            .any(|o| matches!(o, Output::Event(SessionEvent::ChildSaUp(_))))
    );
    assert_eq!(d.installed(), 1);
}

pub(super) fn conn(slot: u32) -> Conn {
    Conn {
        worker: 0,
        id: iketcp_dataplane::transport::ConnId {
            slot,
            generation: 0,
        },
    }
}

pub(super) fn up(d: &mut Driver, c: Conn, role: TcpRole, token: Option<u64>) {
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let peer = SocketAddr::from((INITIATOR_ADDR, 40000 + c.id.slot as u16));
    let (local, peer) = match role {
        TcpRole::Originator => (peer, listen),
        TcpRole::Responder => (listen, peer),
    };
    d.handle_event(
        Event::ConnUp {
            conn: c,
            local,
            peer,
            role,
            token,
        },
        Instant::now(),
    )
    .unwrap();
}

pub(super) fn down(d: &mut Driver, c: Conn, token: Option<u64>) {
    d.handle_event(
        Event::ConnDown {
            conn: c,
            reason: CloseReason::Reset,
            token,
        },
        Instant::now(),
    )
    .unwrap();
}

#[test]
fn r_6_2_b_r_6_1_k_originator_resends_outstanding_request_after_reconnect() {
    let (h, sides) = channels(1);
    let (ci, _) = configs(iketcp_dataplane::crypto::Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let remote = SocketAddr::from((RESPONDER_ADDR, 4500));
    let ep = d
        .add(Endpoint::new(
            0,
            EndpointRole::Originator {
                remote,
                local: None,
            },
            ci,
        ))
        .unwrap();
    let cmds = &sides[0].commands;
    let token = Some(ep.token());
    assert!(matches!(
        cmds.try_recv(),
        Ok(Command::Connect { token: 0, .. })
    ));
    up(&mut d, conn(1), TcpRole::Originator, token);
    let Ok(Command::SendIke { conn: c1, msg: m1 }) = cmds.try_recv() else {
        panic!("no IKE_SA_INIT");
    };
    assert_eq!(c1, conn(1).id);
    let t0 = Instant::now();
    for n in 2..=4 {
        down(&mut d, conn(n - 1), token);
        // At once, then after 1 s and 2 s.
        d.handle_timeout(t0 + Duration::from_secs(3 * u64::from(n)))
            .unwrap();
        assert!(matches!(
            cmds.try_recv(),
            Ok(Command::Connect { token: 0, .. })
        ));
        up(&mut d, conn(n), TcpRole::Originator, token);
        let Ok(Command::SendIke { conn: c, msg }) = cmds.try_recv() else {
            panic!("request not re-sent");
        };
        assert_eq!(c, conn(n).id);
        assert_eq!(msg, m1, "re-sent bit for bit");
    }
    // Bounded: after the last reconnect it gives up.
    down(&mut d, conn(4), token);
    assert!(cmds.try_recv().is_err());
    assert!(
        d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::Failed { .. }))
    );
}

#[test]
fn r_6_1_h_responder_continues_session_on_new_connection() {
    let (h, sides) = channels(1);
    let (ci, cr) = configs(iketcp_dataplane::crypto::Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    d.add(Endpoint::new(0, EndpointRole::Responder { listen }, cr))
        .unwrap();
    let cmds = &sides[0].commands;
    assert!(matches!(cmds.try_recv(), Ok(Command::Listen { .. })));
    let now = Instant::now();
    let peer = SocketAddr::from((INITIATOR_ADDR, 40001));
    let (mut init, first) = Session::initiator(ci, peer, listen, now).unwrap();
    up(&mut d, conn(1), TcpRole::Responder, None);
    d.handle_event(
        Event::IkeMessage {
            conn: conn(1),
            msg: first.into(),
        },
        now,
    )
    .unwrap();
    let Ok(Command::SendIke { msg: resp1, .. }) = cmds.try_recv() else {
        panic!("no IKE_SA_INIT response");
    };
    let auth = init
        .handle(&resp1, now)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .unwrap();
    // The connection breaks; IKE_AUTH arrives on a new one.
    down(&mut d, conn(1), None);
    up(&mut d, conn(2), TcpRole::Responder, None);
    d.handle_event(
        Event::IkeMessage {
            conn: conn(2),
            msg: auth.clone().into(),
        },
        now,
    )
    .unwrap();
    let Ok(Command::InstallInbound { ack, .. }) = cmds.try_recv() else {
        panic!("IKE_AUTH on the new connection not handled by the old session");
    };
    assert!(matches!(
        cmds.try_recv(),
        Ok(Command::BindIkeSa { conn: c, .. }) if c == conn(2).id
    ));
    assert!(matches!(
        cmds.try_recv(),
        Ok(Command::InstallOutbound { .. })
    ));
    d.handle_event(
        Event::Ack {
            worker: 0,
            ack,
            result: Ok(()),
        },
        now,
    )
    .unwrap();
    let Ok(Command::SendIke {
        conn: c,
        msg: resp2,
    }) = cmds.try_recv()
    else {
        panic!("no IKE_AUTH response");
    };
    assert_eq!(c, conn(2).id);
    // Lost again: the initiator re-sends on a third connection and gets the same response
    // there. A retransmission proves nothing about the connection (R-6.1-t): the IKE SA is not
    // bound to it until authentic ESP arrives there (the worker's PathMoved).
    down(&mut d, conn(2), None);
    up(&mut d, conn(3), TcpRole::Responder, None);
    d.handle_event(
        Event::IkeMessage {
            conn: conn(3),
            msg: auth.into(),
        },
        now,
    )
    .unwrap();
    let Ok(Command::SendIke {
        conn: c,
        msg: again,
    }) = cmds.try_recv()
    else {
        panic!("no cached response");
    };
    assert_eq!((c, &again), (conn(3).id, &resp2));
    assert!(cmds.try_recv().is_err(), "a retransmission moves nothing");
    assert!(
        init.handle(&again, now)
            .unwrap()
            .iter()
            .any(|o| matches!(o, Output::Event(SessionEvent::ChildSaUp(_))))
    );
    let ike_sa = d.sessions.nth(0).0;
    d.handle_event(
        Event::PathMoved {
            ike_sa,
            conn: conn(3),
        },
        now,
    )
    .unwrap();
    assert_eq!(d.sessions.nth(0).1.conn, Some(conn(3)));
}
