//! The driver over the life of an established IKE SA: reconnects by the TCP Originator only,
//! liveness checks that delete a dead peer, hostile IKE messages, connection clean-up.
//!
//! Most tests are sans IO: the driver's commands are read from the worker's queue and the peer
//! is a [`Session`] run by hand, with time passed explicitly. The last ones run real workers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::Suite;
use iketcp_dataplane::transport::TcpRole;
use iketcp_dataplane::worker::handle::{Command, WorkerChannels, channels};

use super::fixtures::{INITIATOR_ADDR, RESPONDER_ADDR, configs};
use super::tests::{Rig, Traffic, conn, down, poll_until, pump_until, start_pair, up};
use super::*;

/// One driver endpoint with its IKE SA established against a session run by hand.
pub(super) struct Hand {
    pub(super) d: Driver,
    pub(super) sides: Vec<WorkerChannels>,
    /// The peer.
    pub(super) peer: Session,
    pub(super) ike_sa: IkeSaId,
    /// The driver's connection.
    pub(super) conn: Conn,
    pub(super) t0: Instant,
}

impl Hand {
    pub(super) fn cmds(&self) -> Vec<Command> {
        self.sides[0].commands.try_iter().collect()
    }

    /// Runs the driver's timers at `t`; returns its commands.
    pub(super) fn at(&mut self, t: Instant) -> Vec<Command> {
        self.d.handle_timeout(t).unwrap();
        self.cmds()
    }

    pub(super) fn ack_all(&mut self, cmds: &[Command]) {
        ack_all(&mut self.d, cmds, self.t0);
    }

    /// Delivers `msg` to the driver on its connection at `now`; returns its commands.
    pub(super) fn deliver(&mut self, msg: Vec<u8>, now: Instant) -> Vec<Command> {
        self.d
            .handle_event(
                Event::IkeMessage {
                    conn: self.conn,
                    msg: msg.into(),
                },
                now,
            )
            .unwrap();
        let cmds = self.cmds();
        self.ack_all(&cmds);
        let mut all = cmds;
        all.extend(self.cmds());
        all
    }

    /// The peer handles what the driver sent; returns the peer's messages.
    pub(super) fn peer_handles(&mut self, cmds: &[Command], now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for c in cmds {
            if let Command::SendIke { msg, .. } = c {
                for o in self.peer.handle(msg, now).unwrap() {
                    if let Output::Send(m) = o {
                        out.push(m);
                    }
                }
            }
        }
        out
    }
}

/// Acknowledges, as worker 0 would, every command in `cmds` that asks for an ack.
pub(super) fn ack_all(d: &mut Driver, cmds: &[Command], now: Instant) {
    for c in cmds {
        let ack = match c {
            Command::InstallInbound { ack, .. }
            | Command::InstallOutbound { ack, .. }
            | Command::DeleteSa { ack, .. }
            | Command::Listen { ack, .. } => *ack,
            _ => continue,
        };
        d.handle_event(
            Event::Ack {
                worker: 0,
                ack,
                result: Ok(()),
            },
            now,
        )
        .unwrap();
    }
}

pub(super) fn sent(cmds: &[Command]) -> Vec<Vec<u8>> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::SendIke { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn ike_sa_up(events: &[DriverEvent]) -> IkeSaId {
    events
        .iter()
        .find_map(|e| match e {
            DriverEvent::IkeSaUp { ike_sa, .. } => Some(*ike_sa),
            _ => None,
        })
        .expect("IKE SA up")
}

/// A TCP Originator endpoint (IKE initiator) whose first connection just came up, its
/// IKE_SA_INIT request waiting in the worker's queue; the peer is a responder session.
fn originator_connected(timers: Timers) -> (Hand, EndpointId) {
    originator_connected_with(timers, |_| {})
}

fn originator_connected_with(timers: Timers, f: impl FnOnce(&mut Endpoint)) -> (Hand, EndpointId) {
    let (h, sides) = channels(1);
    let (ci, cr) = configs(Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let remote = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(
        0,
        EndpointRole::Originator {
            remote,
            local: None,
        },
        ci,
    );
    ep.timers = timers;
    f(&mut ep);
    let e = d.add(ep).unwrap();
    let t0 = Instant::now();
    let peer = Session::responder(cr, remote, SocketAddr::from((INITIATOR_ADDR, 40001)));
    let mut hand = Hand {
        d,
        sides,
        peer,
        ike_sa: IkeSaId(0),
        conn: conn(1),
        t0,
    };
    assert!(matches!(hand.cmds()[..], [Command::Connect { .. }]));
    up(&mut hand.d, conn(1), TcpRole::Originator, Some(e.token()));
    (hand, e)
}

/// A TCP Originator endpoint (IKE initiator) established against a responder session.
pub(super) fn originator(timers: Timers) -> Hand {
    originator_setup(timers, |_| {})
}

fn originator_setup(timers: Timers, f: impl FnOnce(&mut Endpoint)) -> Hand {
    let (mut hand, _) = originator_connected_with(timers, f);
    let t0 = hand.t0;
    let mut cmds = hand.cmds();
    // IKE_SA_INIT, IKE_AUTH.
    for _ in 0..2 {
        let answers = hand.peer_handles(&cmds, t0);
        assert_eq!(answers.len(), 1);
        cmds = hand.deliver(answers[0].clone(), t0);
    }
    assert!(hand.peer.is_established());
    hand.ike_sa = ike_sa_up(&hand.d.take_events());
    assert_eq!(hand.d.installed(), 1);
    hand
}

/// A TCP Responder endpoint with connection 1 up from an initiator session run by hand, and
/// that session's IKE_SA_INIT request (not delivered yet).
fn responder_connected(timers: Timers) -> (Hand, Vec<u8>) {
    let (h, sides) = channels(1);
    let (ci, cr) = configs(Suite::ChaCha20Poly1305, true).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    ep.timers = timers;
    d.add(ep).unwrap();
    let t0 = Instant::now();
    let (peer, first) =
        Session::initiator(ci, SocketAddr::from((INITIATOR_ADDR, 40001)), listen, t0).unwrap();
    let mut hand = Hand {
        d,
        sides,
        peer,
        ike_sa: IkeSaId(0),
        conn: conn(1),
        t0,
    };
    let cmds = hand.cmds();
    hand.ack_all(&cmds);
    up(&mut hand.d, conn(1), TcpRole::Responder, None);
    (hand, first)
}

/// A TCP Responder endpoint established by an initiator session run by hand.
pub(super) fn responder(timers: Timers) -> Hand {
    let (mut hand, first) = responder_connected(timers);
    let t0 = hand.t0;
    let mut msg = first;
    for _ in 0..2 {
        let cmds = hand.deliver(msg, t0);
        let answers = hand.peer_handles(&cmds, t0);
        if hand.peer.is_established() {
            break;
        }
        msg = answers[0].clone();
    }
    assert!(hand.peer.is_established());
    hand.ike_sa = ike_sa_up(&hand.d.take_events());
    assert_eq!(hand.d.installed(), 1);
    hand
}

pub(super) fn quick() -> Timers {
    Timers {
        dpd_interval: Duration::from_secs(10),
        exchange_timeout: Duration::from_secs(5),
        half_open: Duration::from_secs(8),
        orphan: Duration::from_secs(3),
    }
}

#[test]
fn r_6_1_g_r_6_1_k_r_6_1_f_r_6_1_m_originator_reconnects_an_idle_established_ike_sa() {
    let mut h = originator(quick());
    let token = Some(0);
    // The connection breaks with nothing outstanding: the SAs stay (R-6.1-f) and the TCP
    // Originator dials again at once (R-6.1-g); the worker sends the stream prefix first on
    // every Originator connection (R-6.1-k, tested in the data plane).
    down(&mut h.d, conn(1), token);
    let cmds = h.cmds();
    assert!(matches!(cmds[..], [Command::Connect { token: 0, .. }]));
    assert_eq!(h.d.installed(), 1);
    up(&mut h.d, conn(2), TcpRole::Originator, token);
    // The IKE SA and its Child SAs move to the new connection, and with nothing to re-send
    // an empty INFORMATIONAL request goes out on it at once, so the Responder hears an
    // authenticated message on the new path (RFC 9329 §6.1).
    let cmds = h.cmds();
    assert!(
        matches!(&cmds[..], [Command::BindIkeSa { ike_sa, conn: c }, Command::SendIke { conn: s, .. }]
            if *ike_sa == h.ike_sa && *c == conn(2).id && *s == conn(2).id),
        "{cmds:?}"
    );
    h.conn = conn(2);
    // No new handshake: the same IKE SA answers it on the new connection.
    let now = h.t0;
    let probe = sent(&cmds);
    assert_eq!(probe.len(), 1);
    let answer = h.peer.handle(&probe[0], now).unwrap();
    let Some(Output::Send(resp)) = answer.into_iter().next() else {
        panic!("peer did not answer");
    };
    h.deliver(resp, now);
    assert!(
        !h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaUp { .. } | DriverEvent::Failed { .. }))
    );
}

/// The exchange type of an IKE message (byte 18 of the header, RFC 7296 §3.1).
fn exchange_of(msg: &[u8]) -> u8 {
    msg[18]
}

const INFORMATIONAL: u8 = 37;
const CREATE_CHILD_SA: u8 = 36;

#[test]
fn reconnect_probe_answered_elsewhere_is_given_up_for_an_ike_sa_rekey() {
    // libreswan 4.10 as TCP Responder: it processes the liveness check that follows a
    // reconnect, answers it on the dead connection and closes the new one.
    let mut h = originator(quick());
    let token = Some(0);
    down(&mut h.d, conn(1), token);
    let _ = h.cmds();
    up(&mut h.d, conn(2), TcpRole::Originator, token);
    let probe = sent(&h.cmds());
    assert_eq!(probe.len(), 1);
    assert_eq!(exchange_of(&probe[0]), INFORMATIONAL);
    let now = h.t0;
    let answer = h.peer.handle(&probe[0], now).unwrap();
    assert!(
        matches!(answer.first(), Some(Output::Send(_))),
        "the peer took it"
    );
    // Its answer goes elsewhere; the new connection closes without anything authentic on it.
    down(&mut h.d, conn(2), token);
    assert!(h.cmds().is_empty(), "the second attempt waits");
    assert!(matches!(
        h.at(now + Duration::from_secs(2))[..],
        [Command::Connect { .. }]
    ));
    up(&mut h.d, conn(3), TcpRole::Originator, token);
    let cmds = h.cmds();
    let first = sent(&cmds);
    // Not the same liveness check again (the peer would answer it elsewhere again) but an
    // IKE SA rekey, which such a peer follows to the new connection.
    assert_eq!(first.len(), 1, "{cmds:?}");
    assert_eq!(exchange_of(&first[0]), CREATE_CHILD_SA);
    assert!(
        h.d.take_events().iter().any(
            |e| matches!(e, DriverEvent::ProbeAbandoned { ike_sa, .. } if *ike_sa == h.ike_sa)
        )
    );
    h.conn = conn(3);
    let answers = h.peer_handles(&cmds, now);
    assert_eq!(answers.len(), 1, "the peer takes the next Message ID");
    h.deliver(answers[0].clone(), now);
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaRekeyed { .. }))
    );
    assert_eq!(h.d.installed(), 1, "the Child SA carries on");
}

#[test]
fn reconnect_probe_rekey_sends_an_ike_sa_rekey_first() {
    let mut h = originator_setup(quick(), |e| e.reconnect_probe = ReconnectProbe::IkeRekey);
    let token = Some(0);
    down(&mut h.d, conn(1), token);
    let _ = h.cmds();
    up(&mut h.d, conn(2), TcpRole::Originator, token);
    let cmds = h.cmds();
    let first = sent(&cmds);
    assert_eq!(first.len(), 1, "{cmds:?}");
    assert_eq!(exchange_of(&first[0]), CREATE_CHILD_SA);
    h.conn = conn(2);
    let answers = h.peer_handles(&cmds, h.t0);
    h.deliver(answers[0].clone(), h.t0);
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaRekeyed { .. }))
    );
}

#[test]
fn a_configured_pfs_group_goes_into_new_child_sas_too() {
    // esp_proposals = ["aes256gcm16-x25519"]: a Child SA added to the IKE SA later gets its
    // own key exchange, as one rekeyed does (libreswan with pfs=yes refuses it otherwise).
    let mut h = originator_setup(quick(), |e| e.child_pfs = Some(DhGroup::Curve25519));
    // The peer insists on PFS: a request without a KE payload would get INVALID_KE_PAYLOAD.
    h.peer.set_child_pfs(Some(DhGroup::Curve25519));
    let now = h.t0 + Duration::from_secs(1);
    assert_eq!(
        h.d.create_child_sas(EndpointId::from_token(0), now)
            .unwrap(),
        1
    );
    let cmds = h.cmds();
    let answers = h.peer_handles(&cmds, now);
    assert_eq!(answers.len(), 1);
    h.deliver(answers[0].clone(), now);
    assert_eq!(h.d.installed(), 2, "{:?}", h.d.take_events());
}

#[test]
fn r_6_2_b_established_request_resent_bit_for_bit_on_the_new_connection() {
    let mut h = originator(quick());
    let token = Some(0);
    let now = h.t0 + Duration::from_secs(1);
    assert_eq!(h.d.rekey_child_sas(now).unwrap(), 1);
    let req = sent(&h.cmds());
    assert_eq!(req.len(), 1);
    // Lost with the connection, and the first reconnect fails.
    down(&mut h.d, conn(1), token);
    assert!(matches!(h.cmds()[..], [Command::Connect { .. }]));
    down(&mut h.d, conn(9), token);
    // The second attempt waits a second.
    assert!(h.cmds().is_empty());
    assert!(matches!(
        h.at(now + Duration::from_secs(2))[..],
        [Command::Connect { .. }]
    ));
    up(&mut h.d, conn(2), TcpRole::Originator, token);
    let cmds = h.cmds();
    assert!(matches!(cmds[0], Command::BindIkeSa { .. }));
    assert_eq!(sent(&cmds), req, "re-sent bit for bit");
    // The exchange completes on the new connection.
    h.conn = conn(2);
    let answers = h.peer_handles(&cmds, now);
    h.deliver(answers[0].clone(), now);
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::ChildSaRekeyed { .. }))
    );
    assert_eq!(h.d.child_rekeys(), 1);
}

/// Found by the `driver_events` fuzz target: the IKE_AUTH response held until the inbound SA's
/// install is acknowledged went out on the connection its request came on even when that
/// connection had gone down meanwhile. It is dropped instead; the initiator re-sends the
/// request on its next connection and gets the cached response (RFC 9329 §6.2, R-6.2-b,
/// R-6.2-c).
#[test]
fn held_ike_auth_response_is_not_sent_on_a_connection_that_went_down() {
    let (mut hand, first) = responder_connected(Timers::default());
    let t0 = hand.t0;
    let cmds = hand.deliver(first, t0);
    let auth = hand.peer_handles(&cmds, t0);
    assert_eq!(auth.len(), 1);
    // IKE_AUTH: the SAs are installed, the response waits for the inbound SA's ack.
    hand.d
        .handle_event(
            Event::IkeMessage {
                conn: conn(1),
                msg: auth[0].clone().into(),
            },
            t0,
        )
        .unwrap();
    let cmds = hand.cmds();
    assert!(sent(&cmds).is_empty());
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::InstallInbound { .. }))
    );
    down(&mut hand.d, conn(1), None);
    let _ = hand.cmds();
    hand.ack_all(&cmds);
    let after = hand.cmds();
    assert!(
        !after
            .iter()
            .any(|c| matches!(c, Command::SendIke { conn: id, .. } if *id == conn(1).id)),
        "{after:?}"
    );
}

#[test]
fn r_6_1_g_responder_never_dials() {
    let mut h = responder(quick());
    down(&mut h.d, conn(1), None);
    // Its own liveness check finds no connection: it waits for the Originator.
    let now = h.t0 + Duration::from_secs(11);
    let cmds = h.at(now);
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::Connect { .. } | Command::SendIke { .. })),
        "{cmds:?}"
    );
    // The Originator comes back on a new connection: the waiting request goes out there
    // (RFC 9329 §6.2, R-6.2-b, as exchange initiator) and the IKE SA follows.
    up(&mut h.d, conn(2), TcpRole::Responder, None);
    h.conn = conn(2);
    let probe = h.peer.start_dpd(now).unwrap();
    let cmds = h.deliver(probe, now);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::BindIkeSa { conn: c, .. } if *c == conn(2).id))
    );
    // Our DPD request (re-sent) and the answer to the peer's.
    assert_eq!(sent(&cmds).len(), 2, "{cmds:?}");
    assert_eq!(h.d.installed(), 1);
}

#[test]
fn r_6_7_a_liveness_check_deletes_a_dead_peer() {
    let mut h = originator(quick());
    let ike_sa = h.ike_sa;
    // Inbound ESP reported by the worker proves liveness: no check yet.
    let t = h.t0 + Duration::from_secs(9);
    h.d.handle_event(
        Event::Stats {
            worker: 0,
            stats: Default::default(),
            inbound_esp: vec![ike_sa],
        },
        t,
    )
    .unwrap();
    assert!(sent(&h.at(h.t0 + Duration::from_secs(11))).is_empty());
    // Silence: a liveness check at 19 s ...
    let t = h.t0 + Duration::from_secs(19);
    h.d.handle_timeout(t).unwrap();
    assert_eq!(sent(&h.cmds()).len(), 1);
    // ... unanswered for the exchange timeout: the IKE SA and its SAs go, and the TCP
    // Originator closes its connection (R-6.1-d).
    let cmds = h.at(t + Duration::from_secs(5));
    let deletes = cmds
        .iter()
        .filter(|c| matches!(c, Command::DeleteSa { .. }))
        .count();
    assert_eq!(deletes, 2, "{cmds:?}");
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::ForgetIkeSa { ike_sa: x } if *x == ike_sa))
    );
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Close { abort: false, .. }))
    );
    h.ack_all(&cmds);
    assert_eq!(h.d.installed(), 0);
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaDeleted { .. }))
    );
}

#[test]
fn r_6_1_c_r_6_1_d_peer_delete_closes_the_originators_connection() {
    let mut h = originator(quick());
    let now = h.t0 + Duration::from_secs(1);
    let del = h.peer.delete_ike(now).unwrap();
    let cmds = h.deliver(del, now);
    // The Delete response goes out first, then the FIN.
    let last_send = cmds
        .iter()
        .rposition(|c| matches!(c, Command::SendIke { .. }))
        .unwrap();
    let close = cmds
        .iter()
        .position(|c| matches!(c, Command::Close { abort: false, .. }))
        .unwrap();
    assert!(last_send < close);
    assert_eq!(h.d.installed(), 0);
}

#[test]
fn r_6_1_o_hostile_ike_messages_leave_the_ike_sa_alone() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let good = h.peer.start_dpd(now).unwrap();
    let spis = good[..16].to_vec();
    let mut hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0; 3],
        good[..27].to_vec(),
        // Only the SPIs of the IKE SA, then garbage.
        [spis.clone(), vec![0xff; 40]].concat(),
    ];
    // A wrong Length field.
    let mut m = good.clone();
    m[24..28].copy_from_slice(&(good.len() as u32 + 9).to_be_bytes());
    hostile.push(m);
    // A broken payload chain: the first payload claims more than the message holds.
    let mut m = good.clone();
    m[30..32].copy_from_slice(&0xfff0u16.to_be_bytes());
    hostile.push(m);
    // Unknown SPIs.
    let mut m = good.clone();
    m[0] ^= 1;
    hostile.push(m);
    for (k, msg) in hostile.into_iter().enumerate() {
        let cmds = h.deliver(msg, now);
        assert!(
            cmds.iter().all(|c| matches!(c, Command::SendIke { .. })),
            "hostile message {k}: {cmds:?}"
        );
        assert_eq!(h.d.installed(), 1, "hostile message {k}");
    }
    // A forged ICV: the connection is corrupt and closed with RST (R-6.1-o); SAs stay.
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    let cmds = h.deliver(forged, now);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Close { abort: true, .. })),
        "{cmds:?}"
    );
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IntegrityFailure { .. }))
    );
    assert_eq!(h.d.installed(), 1);
    // The peer reconnects; the genuine request is answered, a replay gets the cached answer,
    // and an old request (Message ID of IKE_AUTH) gets nothing.
    up(&mut h.d, conn(2), TcpRole::Responder, None);
    h.conn = conn(2);
    let a = sent(&h.deliver(good.clone(), now));
    let b = sent(&h.deliver(good, now));
    assert_eq!(a.len(), 1);
    assert_eq!(a, b, "a replayed request gets the cached response");
    assert!(h.peer.handle(&a[0], now).is_ok());
    assert_eq!(h.d.installed(), 1);
    assert!(
        !h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaDeleted { .. }))
    );
}

#[test]
fn half_open_responder_sessions_and_orphan_connections_go_r_6_1_e() {
    let (h, sides) = channels(1);
    let (ci, cr) = configs(Suite::Aes256Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    ep.timers = quick();
    d.add(ep).unwrap();
    let cmds = &sides[0].commands;
    assert!(matches!(cmds.try_recv(), Ok(Command::Listen { .. })));
    let t0 = Instant::now();
    // Connection 1 never sends anything; connection 2 stops after IKE_SA_INIT.
    up(&mut d, conn(1), TcpRole::Responder, None);
    up(&mut d, conn(2), TcpRole::Responder, None);
    let (_init, first) =
        Session::initiator(ci, SocketAddr::from((INITIATOR_ADDR, 40002)), listen, t0).unwrap();
    d.handle_event(
        Event::IkeMessage {
            conn: conn(2),
            msg: first.into(),
        },
        t0,
    )
    .unwrap();
    assert!(matches!(cmds.try_recv(), Ok(Command::SendIke { .. })));
    let closes = |d: &mut Driver, t: Instant| {
        d.handle_timeout(t).unwrap();
        cmds.try_iter()
            .filter_map(|c| match c {
                Command::Close { conn, .. } => Some(conn.slot),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(d.poll_timeout().is_some());
    assert_eq!(
        closes(&mut d, t0 + Duration::from_secs(2)),
        Vec::<u32>::new()
    );
    assert_eq!(closes(&mut d, t0 + Duration::from_secs(4)), vec![1]);
    // The half-open session goes at 8 s; its connection after the orphan grace (3 s).
    assert!(closes(&mut d, t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(closes(&mut d, t0 + Duration::from_secs(12)), vec![2]);
    assert!(d.take_events().iter().any(|e| matches!(
        e,
        DriverEvent::Failed {
            reason: Failure::HalfOpenTimeout,
            ..
        }
    )));
    // Closed once only.
    assert!(closes(&mut d, t0 + Duration::from_secs(20)).is_empty());
}

/// Real workers: a reset TCP connection, the TCP Originator reconnects, the same SAs carry
/// traffic again (R-6.1-f, R-6.1-g, R-6.1-k, R-6.2-b).
#[test]
fn r_6_1_f_r_6_1_g_reset_connection_sas_survive_originator_reconnects() {
    let rig = Rig::new();
    let (ci, cr) = configs(Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(rig.h.clone());
    let (_, i, mut events) = start_pair(&mut d, ci, cr, Timers::default());
    let mut t = Traffic { next: [0, 0] };
    pump_until(&mut d, &rig, &mut t, &mut events, "traffic", |_, _| {
        Traffic::delivered(&rig, 0).len() > 20 && Traffic::delivered(&rig, 1).len() > 20
    });
    events.clear();
    rig.link.inject_reset();
    pump_until(
        &mut d,
        &rig,
        &mut t,
        &mut events,
        "the reconnect",
        |_, ev| {
            ev.iter()
                .any(|e| matches!(e, DriverEvent::ConnUp { endpoint, .. } if *endpoint == i))
        },
    );
    // Packets sent while there was no connection are lost; then traffic crosses both ways
    // again on the same SAs.
    let before = [
        Traffic::delivered(&rig, 0).len(),
        Traffic::delivered(&rig, 1).len(),
    ];
    pump_until(
        &mut d,
        &rig,
        &mut t,
        &mut events,
        "traffic after the reconnect",
        |_, _| {
            Traffic::delivered(&rig, 0).len() > before[0] + 20
                && Traffic::delivered(&rig, 1).len() > before[1] + 20
        },
    );
    for k in 0..2 {
        let got = Traffic::delivered(&rig, k);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
    }
    assert!(
        !events.iter().any(|e| matches!(
            e,
            DriverEvent::IkeSaUp { .. }
                | DriverEvent::ChildSaInstalled { .. }
                | DriverEvent::Failed { .. }
                | DriverEvent::IkeSaDeleted { .. }
        )),
        "{events:?}"
    );
    assert_eq!(d.installed(), 2);
    assert_eq!(rig.h.stats().icv_failures, 0);
    d.delete_all().unwrap();
    poll_until(&mut d, "the deletes", |d| !d.has_pending());
    rig.stop();
}

/// Real workers: the link dies; both sides' liveness checks go unanswered and each deletes
/// the IKE SA with its SAs (RFC 7296 §2.4, RFC 9329 §6.2 and §6.7).
#[test]
fn r_6_7_a_dead_peer_deleted_end_to_end() {
    let rig = Rig::new();
    let (ci, cr) = configs(Suite::Aes256Gcm16, false).unwrap();
    let mut d = Driver::new(rig.h.clone());
    let timers = Timers {
        dpd_interval: Duration::from_millis(500),
        // Generous: the handshake runs under the same timeout, on a loaded machine too.
        exchange_timeout: Duration::from_secs(3),
        ..Timers::default()
    };
    let (_, _, mut events) = start_pair(&mut d, ci, cr, timers);
    // Alive: liveness checks are answered for a while.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        d.poll(Duration::from_millis(20)).unwrap();
    }
    events.extend(d.take_events());
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaDeleted { .. })),
        "{events:?}"
    );
    rig.link.cut(true);
    poll_until(&mut d, "both IKE SAs deleted", |d| {
        events.extend(d.take_events());
        events
            .iter()
            .filter(|e| matches!(e, DriverEvent::IkeSaDeleted { .. }))
            .count()
            == 2
    });
    poll_until(&mut d, "the deletes", |d| !d.has_pending());
    assert_eq!(d.installed(), 0);
    rig.stop();
}

fn calm() -> Timers {
    Timers {
        dpd_interval: Duration::from_secs(1000),
        exchange_timeout: Duration::from_secs(30),
        ..Timers::default()
    }
}

fn originator_with(limits: TimeLimits) -> Hand {
    // The limits apply to SAs created after they are set: build the endpoint with them.
    let mut h = originator(calm());
    let core = h.d.core_mut();
    core.endpoints.nth_mut(0).1.limits = limits;
    let now = h.t0;
    // Restart the IKE SA's and the first Child SA's clocks under the new limits.
    let ike = core.sessions.nth(0).0;
    core.ike_sa_born(ike, now);
    let (soft, hard) = (limits.child_soft, limits.child_hard);
    let (r, e) = lifetime::deadlines(now, soft, hard);
    let (child, state) = core.children.nth_mut(0);
    state.rekey_at = r;
    state.expire_at = e;
    core.arm(super::timers::Timer::ChildLife(child));
    h
}

fn has_request(cmds: &[Command]) -> bool {
    sent(cmds).iter().any(|m| is_request(m))
}

#[test]
fn child_sa_rekeyed_at_its_soft_time_limit_with_jitter() {
    let mut h = originator_with(TimeLimits {
        child_soft: Some(Duration::from_secs(100)),
        child_hard: Some(Duration::from_secs(120)),
        ..TimeLimits::default()
    });
    let due = h.d.poll_timeout().unwrap();
    // Jitter cuts at most 10 % off the soft limit.
    assert!(due >= h.t0 + Duration::from_secs(90) && due <= h.t0 + Duration::from_secs(100));
    assert!(!has_request(&h.at(h.t0 + Duration::from_secs(89))));
    let now = h.t0 + Duration::from_secs(100);
    let cmds = h.at(now);
    assert!(has_request(&cmds));
    let answers = h.peer_handles(&cmds, now);
    h.deliver(answers[0].clone(), now);
    assert_eq!(h.d.child_rekeys(), 1);
    // The new Child SA runs under fresh limits: at the old one's hard limit only the old
    // inbound SA (kept for a grace period) goes, and no Delete request is sent.
    let new_in = h.d.children.nth(1).1.spi_in;
    let cmds = h.at(h.t0 + Duration::from_secs(121));
    assert!(!has_request(&cmds), "{cmds:?}");
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::DeleteSa { spi, .. } if *spi == new_in)),
        "{cmds:?}"
    );
    assert_eq!(h.d.installed(), 1);
}

#[test]
fn child_sa_deleted_at_its_hard_time_limit() {
    let mut h = originator_with(TimeLimits {
        child_hard: Some(Duration::from_secs(50)),
        ..TimeLimits::default()
    });
    let now = h.t0 + Duration::from_secs(50);
    let cmds = h.at(now);
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, Command::DeleteSa { .. }))
            .count(),
        2
    );
    // The peer is told (RFC 7296 §1.4.1) and agrees.
    assert!(has_request(&cmds));
    let answers = h.peer_handles(&cmds, now);
    assert!(h.peer.child_sas().is_empty());
    h.deliver(answers[0].clone(), now);
    assert_eq!(h.d.installed(), 0);
}

#[test]
fn worker_traffic_limits_rekey_on_soft_and_delete_on_hard() {
    let mut h = originator(calm());
    let spi_out = h.d.children.nth(0).1.spi_out;
    let now = h.t0 + Duration::from_secs(1);
    h.d.handle_event(
        Event::SaExpired {
            worker: 0,
            spi: spi_out,
            dir: Direction::Outbound,
            hard: false,
            cause: iketcp_dataplane::worker::handle::ExpiryCause::Packets,
        },
        now,
    )
    .unwrap();
    let cmds = h.cmds();
    assert!(has_request(&cmds), "soft limit starts a rekey: {cmds:?}");
    // Before the answer, the old SA hits its hard limit: it goes.
    h.d.handle_event(
        Event::SaExpired {
            worker: 0,
            spi: spi_out,
            dir: Direction::Outbound,
            hard: true,
            cause: iketcp_dataplane::worker::handle::ExpiryCause::Sequence,
        },
        now,
    )
    .unwrap();
    let cmds2 = h.cmds();
    assert_eq!(
        cmds2
            .iter()
            .filter(|c| matches!(c, Command::DeleteSa { .. }))
            .count(),
        2,
        "{cmds2:?}"
    );
    // The rekey still completes and the new Child SA carries on.
    let answers = h.peer_handles(&cmds, now);
    h.deliver(answers[0].clone(), now);
    assert_eq!(h.d.installed(), 1);
}

#[test]
fn ike_sa_rekeyed_at_its_soft_time_limit() {
    let mut h = originator_with(TimeLimits {
        ike_soft: Some(Duration::from_secs(100)),
        ..TimeLimits::default()
    });
    assert!(!has_request(&h.at(h.t0 + Duration::from_secs(89))));
    let now = h.t0 + Duration::from_secs(100);
    let cmds = h.at(now);
    assert!(has_request(&cmds));
    let answers = h.peer_handles(&cmds, now);
    // The response completes the rekey; the old IKE SA's Delete exchange follows.
    let cmds = h.deliver(answers[0].clone(), now);
    assert_eq!(h.d.ike_rekeys(), 1);
    let answers = h.peer_handles(&cmds, now);
    assert_eq!(answers.len(), 1);
    h.deliver(answers[0].clone(), now);
    // The new IKE SA's clock starts at the rekey.
    assert!(!has_request(&h.at(now + Duration::from_secs(89))));
    assert!(has_request(&h.at(now + Duration::from_secs(100))));
    assert_eq!(h.d.installed(), 1);
}

#[test]
fn ike_sa_deleted_at_its_hard_time_limit() {
    let mut h = originator_with(TimeLimits {
        ike_hard: Some(Duration::from_secs(200)),
        ..TimeLimits::default()
    });
    assert!(!has_request(&h.at(h.t0 + Duration::from_secs(199))));
    // Deleted with a Delete exchange (RFC 7296 §1.4.1), its Child SAs along.
    let end = h.t0 + Duration::from_secs(200);
    let cmds = h.at(end);
    let answers = h.peer_handles(&cmds, end);
    assert!(h.peer.is_deleted());
    h.deliver(answers[0].clone(), end);
    assert_eq!(h.d.installed(), 0);
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaDeleted { .. }))
    );
}

/// Real workers: both IKE SAs deleted with a Delete exchange, their SAs removed, and the TCP
/// Originator closes the connection (R-6.1-c, R-6.1-d).
#[test]
fn r_6_1_c_r_6_1_d_graceful_delete_end_to_end() {
    let rig = Rig::new();
    let (ci, cr) = configs(Suite::ChaCha20Poly1305, true).unwrap();
    let mut d = Driver::new(rig.h.clone());
    let (_, i, mut events) = start_pair(&mut d, ci, cr, Timers::default());
    assert_eq!(d.ike_sas(), 2);
    events.clear();
    // The Originator's side deletes; the Responder learns it from the Delete.
    assert_eq!(d.delete_ike_sas(Instant::now()).unwrap(), 2);
    poll_until(&mut d, "both IKE SAs deleted, the connection closed", |d| {
        events.extend(d.take_events());
        d.ike_sas() == 0
            && !d.has_pending()
            && events
                .iter()
                .any(|e| matches!(e, DriverEvent::ConnDown { endpoint, .. } if *endpoint == i))
    });
    assert_eq!(d.installed(), 0);
    let removed = events
        .iter()
        .filter(|e| matches!(e, DriverEvent::SaRemoved { .. }))
        .count();
    assert_eq!(removed, 4, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, DriverEvent::Failed { .. })),
        "{events:?}"
    );
    rig.stop();
}

/// Real workers: the initiator's first guess of the DH group is wrong; the responder answers
/// INVALID_KE_PAYLOAD without keeping state or closing the connection, and the retry on the
/// same connection succeeds (RFC 9329 §6.4, R-6.4-b).
#[test]
fn r_6_4_b_invalid_ke_payload_retry_on_the_same_connection() {
    use crate::ike::crypto::{DhGroup, EncrAlg, IkeSuite, PrfAlg};
    let rig = Rig::new();
    let (mut ci, mut cr) = configs(Suite::Aes128Gcm16, false).unwrap();
    let suite = |g| IkeSuite::new(EncrAlg::AesGcm16_128, PrfAlg::HmacSha256, None, g).unwrap();
    ci.ike_proposals = vec![suite(DhGroup::Ecp256), suite(DhGroup::Curve25519)];
    cr.ike_proposals = vec![suite(DhGroup::Curve25519)];
    let mut d = Driver::new(rig.h.clone());
    let (_, _, events) = start_pair(&mut d, ci, cr, Timers::default());
    let ups = events
        .iter()
        .filter(|e| matches!(e, DriverEvent::ConnUp { .. }))
        .count();
    assert_eq!(ups, 2, "one connection, seen from both ends: {events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, DriverEvent::ConnDown { .. } | DriverEvent::Failed { .. })),
        "{events:?}"
    );
    // IKE_SA_INIT, INVALID_KE_PAYLOAD, IKE_SA_INIT again and its response, IKE_AUTH both
    // ways: six IKE messages received, all on the one connection.
    assert_eq!(rig.h.stats().ike_in, 6);
    d.delete_all().unwrap();
    poll_until(&mut d, "the deletes", |d| !d.has_pending());
    rig.stop();
}

/// An inbound SA the worker removed for good gives its SPI back to the driver's pool, which
/// every session of the driver draws from.
#[test]
fn removed_inbound_sa_releases_its_spi() {
    let (h, _sides) = channels(1);
    let mut d = Driver::new(h);
    let spi = d.spi_pool.allocate().unwrap();
    let km = Keymat::new(Suite::Aes128Gcm16, &[7; 20]).unwrap();
    let sa = InboundSa::new(&SaParams::new(spi, km, Backend::RustCrypto)).unwrap();
    d.handle_event(
        Event::SaRemoved(RemovedSa::Inbound(Box::new(sa))),
        Instant::now(),
    )
    .unwrap();
    assert!(!d.spi_pool.contains(spi));
}

/// A Responder listening on two workers: the Originator's new connection lands on the other
/// worker (a NAT changed its port, R-6.1-h). The worker reports the SPI it does not hold; the
/// driver moves the SA objects (sequence numbers and replay windows with them) and binds the
/// IKE SA to the new connection.
#[test]
fn r_6_1_h_sas_follow_the_connection_to_another_worker() {
    use iketcp_dataplane::worker::handle::RemovedSa;
    let (h, sides) = channels(2);
    let (ci, cr) = configs(Suite::Aes256Gcm16, true).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    for w in [0, 1] {
        d.add(Endpoint::new(
            w,
            EndpointRole::Responder { listen },
            cr.clone(),
        ))
        .unwrap();
    }
    let t0 = Instant::now();
    let ack = |d: &mut Driver, worker: u16, ack: u64| {
        d.handle_event(
            Event::Ack {
                worker,
                ack,
                result: Ok(()),
            },
            t0,
        )
        .unwrap();
    };
    for w in [0u16, 1] {
        for c in sides[usize::from(w)].commands.try_iter() {
            if let Command::Listen { ack: a, .. } = c {
                ack(&mut d, w, a);
            }
        }
    }
    let peer = SocketAddr::from((INITIATOR_ADDR, 40001));
    let (mut init, first) = Session::initiator(ci, peer, listen, t0).unwrap();
    let on = |worker: u16, slot: u32| Conn {
        worker,
        id: iketcp_dataplane::transport::ConnId {
            slot,
            generation: 0,
        },
    };
    let (c0, c1) = (on(0, 1), on(1, 2));
    let conn_up = |d: &mut Driver, c: Conn, port: u16| {
        d.handle_event(
            Event::ConnUp {
                conn: c,
                local: listen,
                peer: SocketAddr::from((INITIATOR_ADDR, port)),
                role: TcpRole::Responder,
                token: None,
            },
            t0,
        )
        .unwrap();
    };
    conn_up(&mut d, c0, 40001);
    let mut msg = first;
    let mut sas = (None, None, None);
    while !init.is_established() {
        d.handle_event(
            Event::IkeMessage {
                conn: c0,
                msg: msg.into(),
            },
            t0,
        )
        .unwrap();
        let mut reply = None;
        for _ in 0..2 {
            for c in sides[0].commands.try_iter().collect::<Vec<_>>() {
                match c {
                    Command::InstallInbound { sa, ack: a, .. } => {
                        sas.0 = Some(sa);
                        ack(&mut d, 0, a);
                    }
                    Command::InstallOutbound {
                        sa,
                        ack: a,
                        selectors,
                        ..
                    } => {
                        sas.1 = Some(sa);
                        sas.2 = Some(selectors);
                        ack(&mut d, 0, a);
                    }
                    Command::SendIke { msg, .. } => reply = Some(msg),
                    _ => {}
                }
            }
        }
        let out = init.handle(&reply.expect("a response"), t0).unwrap();
        msg = match out.into_iter().find_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        }) {
            Some(m) => m,
            None => break,
        };
    }
    let (Some(inb), Some(out), Some(selectors)) = sas else {
        panic!("SAs not installed")
    };
    let (spi_in, spi_out) = (inb.spi(), out.spi());
    assert_eq!(d.installed(), 1);
    // The connection breaks; the new one lands on worker 1, whose first ESP is unknown there.
    down(&mut d, c0, None);
    conn_up(&mut d, c1, 40999);
    // R-6.1-t, R-10-e: a forged frame with the live SPI on an attacker's connection to worker
    // 1 is checked by worker 0, fails its ICV there, and moves nothing; only the attacker's
    // connection is closed (R-6.1-o).
    let evil = on(1, 7);
    conn_up(&mut d, evil, 50000);
    d.handle_event(
        Event::ForeignEsp {
            conn: evil,
            spi: spi_in,
            frame: vec![0xee; 60],
        },
        t0,
    )
    .unwrap();
    let verify: Vec<Command> = sides[0].commands.try_iter().collect();
    let [Command::VerifyEsp { ack: a, .. }] = verify.as_slice() else {
        panic!("expected one VerifyEsp, got {verify:?}");
    };
    d.handle_event(
        Event::Ack {
            worker: 0,
            ack: *a,
            result: Err(CommandError::Verify {
                spi: spi_in,
                failure: VerifyFailure::Integrity,
            }),
        },
        t0,
    )
    .unwrap();
    assert!(
        sides[0].commands.try_iter().next().is_none(),
        "no SA leaves worker 0"
    );
    let w1: Vec<Command> = sides[1].commands.try_iter().collect();
    assert!(
        matches!(&w1[..], [Command::Close { conn: c, abort: true }] if *c == evil.id),
        "{w1:?}"
    );
    assert_eq!(d.installed(), 1);
    assert!(d.migrations.is_empty());
    assert!(
        d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::ForgedEsp { conn, .. } if *conn == evil))
    );
    // Nothing moves on the report alone: the owner verifies the packet first (R-10-e).
    d.handle_event(
        Event::ForeignEsp {
            conn: c1,
            spi: spi_in,
            frame: vec![0; 40],
        },
        t0,
    )
    .unwrap();
    let verify: Vec<Command> = sides[0].commands.try_iter().collect();
    let [Command::VerifyEsp { spi, ack: a, .. }] = verify.as_slice() else {
        panic!("expected one VerifyEsp, got {verify:?}");
    };
    assert_eq!(*spi, spi_in);
    assert!(sides[1].commands.try_iter().next().is_none());
    ack(&mut d, 0, *a);
    let w0: Vec<Command> = sides[0].commands.try_iter().collect();
    let deletes: Vec<(u32, Direction)> = w0
        .iter()
        .filter_map(|c| match c {
            Command::DeleteSa { spi, dir, .. } => Some((*spi, *dir)),
            _ => None,
        })
        .collect();
    assert_eq!(
        deletes,
        vec![(spi_in, Direction::Inbound), (spi_out, Direction::Outbound)]
    );
    assert_eq!(d.installed(), 0, "in transit");
    // Worker 0 hands the SA objects back; they go to worker 1 as they are.
    assert!(d.spi_pool.contains(spi_in));
    d.handle_event(Event::SaRemoved(RemovedSa::Inbound(inb)), t0)
        .unwrap();
    d.handle_event(Event::SaRemoved(RemovedSa::Outbound(out)), t0)
        .unwrap();
    assert!(d.spi_pool.contains(spi_in), "a moving SA keeps its SPI");
    let w1: Vec<Command> = sides[1].commands.try_iter().collect();
    let mut acks = Vec::new();
    for c in &w1 {
        match c {
            Command::InstallInbound { sa, ack, .. } => {
                assert_eq!(sa.spi(), spi_in);
                acks.push(*ack);
            }
            Command::InstallOutbound {
                sa,
                ack,
                selectors: s,
                ..
            } => {
                assert_eq!(sa.spi(), spi_out);
                assert_eq!(s, &selectors);
                acks.push(*ack);
            }
            _ => {}
        }
    }
    assert_eq!(acks.len(), 2, "{w1:?}");
    assert!(matches!(w1.last(), Some(Command::BindIkeSa { conn, .. }) if *conn == c1.id));
    assert!(
        sides[0]
            .commands
            .try_iter()
            .any(|c| matches!(c, Command::ForgetIkeSa { .. }))
    );
    for a in acks {
        ack(&mut d, 1, a);
    }
    assert_eq!(d.installed(), 1);
    let events = d.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DriverEvent::Migrated { from: 0, to: 1, .. })),
        "{events:?}"
    );
    // The same session answers on the new connection.
    let probe = init.start_dpd(t0).unwrap();
    d.handle_event(
        Event::IkeMessage {
            conn: c1,
            msg: probe.into(),
        },
        t0,
    )
    .unwrap();
    let answered = sides[1]
        .commands
        .try_iter()
        .any(|c| matches!(c, Command::SendIke { conn, .. } if conn == c1.id));
    assert!(answered);
}

#[test]
fn finished_sessions_and_child_sas_are_forgotten() {
    // Many rekeys: each leaves a finished Child SA behind.
    let mut h = originator(calm());
    let mut now = h.t0;
    for _ in 0..80 {
        now += Duration::from_secs(2);
        assert_eq!(h.d.rekey_child_sas(now).unwrap(), 1);
        let cmds = h.cmds();
        let answers = h.peer_handles(&cmds, now);
        let cmds = h.deliver(answers[0].clone(), now);
        // The old Child SA's Delete exchange.
        for m in h.peer_handles(&cmds, now) {
            h.deliver(m, now);
        }
        // The old inbound SA's grace period ends; its delete is acknowledged.
        let cmds = h.at(now + OLD_INBOUND_GRACE);
        h.ack_all(&cmds);
    }
    assert_eq!(h.d.child_rekeys(), 80);
    assert_eq!(h.d.installed(), 1);
    assert!(
        h.d.children.len() < 70,
        "{} Child SAs kept",
        h.d.children.len()
    );
    // Still coherent: the live Child SA rekeys once more.
    now += Duration::from_secs(2);
    assert_eq!(h.d.rekey_child_sas(now).unwrap(), 1);
    let cmds = h.cmds();
    let answers = h.peer_handles(&cmds, now);
    h.deliver(answers[0].clone(), now);
    assert_eq!(h.d.child_rekeys(), 81);

    // A flood of half-open IKE SAs on a Responder.
    let (hd, sides) = channels(1);
    let (ci, cr) = configs(Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(hd);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    ep.timers = quick();
    // All from one address: this is about reaping, not the per-source rate.
    ep.cookies.init_rate_per_source = 0;
    d.add(ep).unwrap();
    let t0 = Instant::now();
    for k in 0..100u32 {
        up(&mut d, conn(k + 10), TcpRole::Responder, None);
        let (_, first) = Session::initiator(
            ci.clone(),
            SocketAddr::from((INITIATOR_ADDR, 20000 + k as u16)),
            listen,
            t0,
        )
        .unwrap();
        d.handle_event(
            Event::IkeMessage {
                conn: conn(k + 10),
                msg: first.into(),
            },
            t0,
        )
        .unwrap();
    }
    assert_eq!(d.sessions.len(), 100);
    d.handle_timeout(t0 + Duration::from_secs(9)).unwrap();
    assert!(d.sessions.len() == 0, "{} sessions kept", d.sessions.len());
    assert!(d.conns.values().all(|c| c.session.is_none()));
    drop(sides);
}

/// Under load a TCP Responder answers IKE_SA_INIT with a cookie and a puzzle, never a cookie
/// alone (R-6.3-a), keeps no state, and closes the connection when no repeated request comes
/// (R-6.3-b); the repeated request may come from another TCP port (R-6.3-c) and then the
/// handshake completes.
#[test]
fn r_6_3_a_r_6_3_b_r_6_3_c_cookies_and_puzzles_through_the_driver() {
    use crate::ike::cookie::CookiePolicy;
    let (h, sides) = channels(1);
    let (ci, cr) = configs(Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    // Always "under load", with an easy puzzle.
    ep.cookies = CookiePolicy {
        half_open_threshold: 0,
        puzzle_difficulty: 8,
        ..CookiePolicy::tcp()
    };
    d.add(ep).unwrap();
    let cmds = &sides[0].commands;
    let Ok(Command::Listen { ack, .. }) = cmds.try_recv() else {
        panic!("no Listen")
    };
    let t0 = Instant::now();
    d.handle_event(
        Event::Ack {
            worker: 0,
            ack,
            result: Ok(()),
        },
        t0,
    )
    .unwrap();
    let sent_on = |c: Conn| -> Vec<Vec<u8>> {
        cmds.try_iter()
            .filter_map(|x| match x {
                Command::SendIke { conn, msg } if conn == c.id => Some(msg),
                _ => None,
            })
            .collect()
    };
    // A first attempt that never comes back: the connection is closed after the wait.
    up(&mut d, conn(1), TcpRole::Responder, None);
    let (_, first) = Session::initiator(
        ci.clone(),
        SocketAddr::from((INITIATOR_ADDR, 40001)),
        listen,
        t0,
    )
    .unwrap();
    d.handle_event(
        Event::IkeMessage {
            conn: conn(1),
            msg: first.into(),
        },
        t0,
    )
    .unwrap();
    assert_eq!(sent_on(conn(1)).len(), 1);
    assert!(d.sessions.len() == 0, "no state for a cookie reply");
    assert!(d.take_events().iter().any(|e| matches!(
        e,
        DriverEvent::CookieSent {
            kind: crate::ike::cookie::ReplyKind::CookieAndPuzzle(_),
            ..
        }
    )));
    // Not closed as an orphan before the retry wait ...
    d.handle_timeout(t0 + Duration::from_secs(9)).unwrap();
    assert!(!cmds.try_iter().any(|c| matches!(c, Command::Close { .. })));
    // ... but at its end.
    d.handle_timeout(t0 + Duration::from_secs(10)).unwrap();
    assert!(
        cmds.try_iter()
            .any(|c| matches!(c, Command::Close { conn: c, .. } if c == conn(1).id))
    );

    // A second initiator solves the puzzle and retries from another port.
    up(&mut d, conn(2), TcpRole::Responder, None);
    let (mut init, first) =
        Session::initiator(ci, SocketAddr::from((INITIATOR_ADDR, 40002)), listen, t0).unwrap();
    d.handle_event(
        Event::IkeMessage {
            conn: conn(2),
            msg: first.into(),
        },
        t0,
    )
    .unwrap();
    let reply = sent_on(conn(2));
    // RFC 8019 §7.1.2: the session hands out the puzzle instead of solving it in `handle`;
    // the job runs on another thread and its answer brings the retry.
    let out = init.handle(&reply[0], t0).unwrap();
    let [Output::SolvePuzzle(job)] = <[Output; 1]>::try_from(out).unwrap() else {
        panic!("expected one puzzle job");
    };
    let answer = std::thread::spawn(move || job.solve()).join().unwrap();
    let retry = init
        .puzzle_solved(answer, t0)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .expect("retry with cookie and solution");
    down(&mut d, conn(2), None);
    up(&mut d, conn(3), TcpRole::Responder, None);
    d.handle_event(
        Event::IkeMessage {
            conn: conn(3),
            msg: retry.into(),
        },
        t0,
    )
    .unwrap();
    assert_eq!(d.sessions.len(), 1, "accepted");
    let resp = sent_on(conn(3));
    let auth = init
        .handle(&resp[0], t0)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .expect("IKE_AUTH");
    d.handle_event(
        Event::IkeMessage {
            conn: conn(3),
            msg: auth.into(),
        },
        t0,
    )
    .unwrap();
    for c in cmds.try_iter().collect::<Vec<_>>() {
        if let Command::InstallInbound { ack, .. } | Command::InstallOutbound { ack, .. } = c {
            d.handle_event(
                Event::Ack {
                    worker: 0,
                    ack,
                    result: Ok(()),
                },
                t0,
            )
            .unwrap();
        }
    }
    let resp2 = sent_on(conn(3));
    assert!(
        init.handle(&resp2[0], t0)
            .unwrap()
            .iter()
            .any(|o| matches!(o, Output::Event(SessionEvent::ChildSaUp(_))))
    );
    assert_eq!(d.installed(), 1);
}

/// RFC 8019 §7.1.2 through the driver, on the Originator side: a cookie and puzzle reply makes
/// the driver hand the puzzle to its owner ([`DriverEvent::SolvePuzzle`]) without sending
/// anything; the owner solves it on another thread, and [`Driver::puzzle_solved`] sends the
/// retry with N(COOKIE) and PS, which the screen accepts and the handshake completes.
#[test]
fn originator_hands_out_the_puzzle_and_retries_with_the_answer() {
    use crate::ike::cookie::{CookieJar, CookiePolicy, Screen};
    let (mut hand, e) = originator_connected(Timers::default());
    let t0 = hand.t0;
    let first = sent(&hand.cmds());
    let policy = CookiePolicy {
        half_open_threshold: 0,
        puzzle_difficulty: 8,
        ..CookiePolicy::tcp()
    };
    let jar = CookieJar::new(policy, t0).unwrap();
    let ip = std::net::IpAddr::V4(INITIATOR_ADDR);
    let Screen::Reply(reply) = jar.screen(&first[0], ip, 0) else {
        panic!("expected a cookie reply");
    };
    let cmds = hand.deliver(reply.message, t0);
    assert!(sent(&cmds).is_empty(), "nothing sent before the answer");
    let (ike_sa, job) = hand
        .d
        .take_events()
        .into_iter()
        .find_map(|ev| match ev {
            DriverEvent::SolvePuzzle {
                endpoint,
                ike_sa,
                job,
            } if endpoint == e => Some((ike_sa, job)),
            _ => None,
        })
        .expect("a puzzle job");
    let answer = std::thread::spawn(move || job.solve()).join().unwrap();
    hand.d.puzzle_solved(ike_sa, answer, t0).unwrap();
    let mut cmds = hand.cmds();
    let retry = sent(&cmds);
    assert_eq!(retry.len(), 1);
    assert_eq!(jar.screen(&retry[0], ip, 0), Screen::Accept);
    // IKE_SA_INIT, IKE_AUTH.
    for _ in 0..2 {
        let answers = hand.peer_handles(&cmds, t0);
        assert_eq!(answers.len(), 1);
        cmds = hand.deliver(answers[0].clone(), t0);
    }
    assert!(hand.peer.is_established());
    assert_eq!(hand.d.installed(), 1);
}

/// R-6.1-q through the driver: an authenticated request with a malformed payload is answered
/// with INVALID_SYNTAX first; then the IKE SA and its SAs are deleted. The receiver does not
/// close the connection as its reaction (the Originator closes it afterwards, R-6.1-d).
#[test]
fn r_6_1_q_invalid_syntax_answered_then_ike_sa_deleted() {
    // The Responder receives it: answer, delete, connection left to the Originator.
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let bad = crate::ike::session::tests::malformed_request(&mut h.peer, now);
    let cmds = h.deliver(bad, now);
    assert_eq!(sent(&cmds).len(), 1, "{cmds:?}");
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, Command::DeleteSa { .. }))
            .count(),
        2
    );
    assert!(!cmds.iter().any(|c| matches!(c, Command::Close { .. })));
    assert_eq!(h.d.installed(), 0);
    // The peer learns it from the answer and deletes its IKE SA too.
    let answers = h.peer_handles(&cmds, now);
    assert!(answers.is_empty());
    assert!(h.peer.is_deleted());

    // The Originator receives it: answer first, then the deletes, then its FIN.
    let mut h = originator(quick());
    let bad = crate::ike::session::tests::malformed_request(&mut h.peer, now);
    let cmds = h.deliver(bad, now);
    let send = cmds
        .iter()
        .position(|c| matches!(c, Command::SendIke { .. }))
        .unwrap();
    let close = cmds
        .iter()
        .position(|c| matches!(c, Command::Close { abort: false, .. }))
        .unwrap();
    assert!(send < close, "{cmds:?}");
    assert_eq!(h.d.installed(), 0);
}

/// A failed connect (the peer is not listening yet) is dialled again with a doubling backoff;
/// a connection that comes up resets it.
#[test]
fn failed_connects_are_retried_with_backoff() {
    let (h, sides) = channels(1);
    let (ci, _) = configs(Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let remote = SocketAddr::from((RESPONDER_ADDR, 4500));
    d.add(Endpoint::new(
        0,
        EndpointRole::Originator {
            remote,
            local: None,
        },
        ci,
    ))
    .unwrap();
    let cmds = &sides[0].commands;
    let connects = || {
        cmds.try_iter()
            .filter(|c| matches!(c, Command::Connect { .. }))
            .count()
    };
    assert_eq!(connects(), 1);
    let t0 = Instant::now();
    let fail = |d: &mut Driver, slot: u32, t: Instant| {
        d.handle_event(
            Event::ConnDown {
                conn: conn(slot),
                reason: CloseReason::Reset,
                token: Some(0),
            },
            t,
        )
        .unwrap();
    };
    fail(&mut d, 1, t0);
    assert_eq!(connects(), 0, "not at once");
    d.handle_timeout(t0 + Duration::from_millis(999)).unwrap();
    assert_eq!(connects(), 0);
    d.handle_timeout(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(connects(), 1);
    let t1 = t0 + Duration::from_secs(1);
    fail(&mut d, 2, t1);
    d.handle_timeout(t1 + Duration::from_millis(1999)).unwrap();
    assert_eq!(connects(), 0, "doubled");
    d.handle_timeout(t1 + Duration::from_secs(2)).unwrap();
    assert_eq!(connects(), 1);
    assert!(
        d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::ConnectFailed { retry_in, .. } if *retry_in == Duration::from_secs(2)))
    );
    // Success resets the backoff; the handshake starts.
    up(&mut d, conn(3), TcpRole::Originator, Some(0));
    assert!(matches!(cmds.try_recv(), Ok(Command::SendIke { .. })));
    assert!(d.dial_failures.is_empty());
}

/// Both ends rekey the same Child SA and the peer's request arrives while ours is outstanding
/// (RFC 7296 §2.8.1). Answering it must not move our traffic onto the new SA: the peer installs
/// that SA's inbound side only when our response arrives, and which new SA survives shows only
/// with the Deletes. Traffic moves once, onto the survivor, which the peer still has.
#[test]
fn answering_the_peers_colliding_rekey_moves_no_traffic_before_the_deletes() {
    let mut h = originator(calm());
    let t = h.t0;
    let old_in = h.peer.child_sas()[0].spi_in;
    assert_eq!(h.d.rekey_child_sas(t).unwrap(), 1);
    let ours = h.cmds();
    assert!(has_request(&ours));
    let theirs = h.peer.rekey_child(old_in, false, t).unwrap();
    let answered = h.deliver(theirs, t);
    let outbound = |cmds: &[Command]| {
        cmds.iter()
            .filter(|c| matches!(c, Command::InstallOutbound { .. }))
            .count()
    };
    assert_eq!(outbound(&answered), 0, "{answered:?}");
    // The crossing messages meet, then the Deletes and their answers go back and forth.
    let mut to_peer = answered;
    to_peer.extend(ours);
    let mut all = Vec::new();
    for _ in 0..8 {
        let msgs = h.peer_handles(&to_peer, t);
        all.append(&mut to_peer);
        for m in msgs {
            to_peer.extend(h.deliver(m, t));
        }
    }
    all.extend(h.cmds());
    assert_eq!(outbound(&all), 1, "{all:?}");
    let live: Vec<_> = h.d.children.iter().filter(|(_, c)| c.outbound_ok).collect();
    assert_eq!(live.len(), 1);
    let peer_children = h.peer.child_sas();
    assert_eq!(peer_children.len(), 1, "{peer_children:?}");
    assert_eq!(live[0].1.spi_out, peer_children[0].spi_in);
    assert_eq!(live[0].1.spi_in, peer_children[0].spi_out);
    assert!(h.d.switches.is_empty() && h.d.child_rekeying.is_empty());
}

/// Real workers: both ends rekey the same Child SA at once (RFC 7296 §2.8.1). One new Child SA
/// survives on each side, the others are deleted, and traffic keeps flowing: in order, never
/// duplicated, and everything sent after the dust settles arrives.
#[test]
fn simultaneous_child_sa_rekeys_settle_under_traffic() {
    let rig = Rig::new();
    let (ci, cr) = configs(Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(rig.h.clone());
    let (_, _, mut events) = start_pair(&mut d, ci, cr, Timers::default());
    let mut t = Traffic { next: [0, 0] };
    pump_until(&mut d, &rig, &mut t, &mut events, "traffic", |_, _| {
        Traffic::delivered(&rig, 0).len() > 20 && Traffic::delivered(&rig, 1).len() > 20
    });
    events.clear();
    // Both ends start a rekey of their Child SA before either request arrives.
    assert_eq!(d.rekey_child_sas(Instant::now()).unwrap(), 2);
    pump_until(
        &mut d,
        &rig,
        &mut t,
        &mut events,
        "the rekeys to settle",
        |d, _| {
            // One Child SA per side, nothing half-installed, waiting or retiring.
            d.installed() == 2
                && d.children
                    .iter()
                    .filter(|(_, c)| c.inbound_ok || c.outbound_ok)
                    .count()
                    == 2
                && d.retiring.is_empty()
                && d.switches.is_empty()
                && d.child_rekeying.is_empty()
                && !d.has_pending()
        },
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, DriverEvent::Failed { .. })),
        "{events:?}"
    );
    let before = [
        Traffic::delivered(&rig, 0).len(),
        Traffic::delivered(&rig, 1).len(),
    ];
    let next = t.next;
    pump_until(
        &mut d,
        &rig,
        &mut t,
        &mut events,
        "traffic afterwards",
        |_, _| {
            Traffic::delivered(&rig, 0).len() > before[0] + 40
                && Traffic::delivered(&rig, 1).len() > before[1] + 40
        },
    );
    for (k, first) in next.into_iter().enumerate() {
        let got = Traffic::delivered(&rig, k);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
        // Everything sent after the rekeys settled arrived.
        let late: Vec<u64> = got.iter().copied().filter(|n| *n >= first).collect();
        assert_eq!(late.first(), Some(&first), "direction {k}");
        assert!(late.windows(2).all(|w| w[1] == w[0] + 1), "direction {k}");
    }
    let s = rig.h.stats();
    assert_eq!((s.icv_failures, s.replays), (0, 0));
    // Let what is in flight arrive, then report the loss around the collision.
    let quiet = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet {
        d.poll(Duration::from_millis(5)).unwrap();
    }
    eprintln!(
        "simultaneous rekeys: lost {} and {} of {} and {} packets",
        t.next[0] - Traffic::delivered(&rig, 0).len() as u64,
        t.next[1] - Traffic::delivered(&rig, 1).len() as u64,
        t.next[0],
        t.next[1]
    );
    rig.stop();
}

/// R-6.1-l: a connection carries one IKE SA. A second IKE_SA_INIT on the connection of a live
/// IKE SA creates no second session; during an IKE SA rekey old and new IKE SA share it.
#[test]
fn r_6_1_l_one_ike_sa_per_connection() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let (ci, _) = configs(Suite::Aes128Gcm16, false).unwrap();
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let (_, other) =
        Session::initiator(ci, SocketAddr::from((INITIATOR_ADDR, 40001)), listen, now).unwrap();
    let cmds = h.deliver(other, now);
    assert!(cmds.is_empty(), "{cmds:?}");
    assert_eq!(h.d.sessions.len(), 1);
    // The peer rekeys the IKE SA on the same connection: still one session, same connection.
    let req = h.peer.rekey_ike(now).unwrap();
    let cmds = h.deliver(req, now);
    assert!(
        cmds.iter()
            .all(|c| !matches!(c, Command::SendIke { conn, .. } if *conn != h.conn.id))
    );
    for m in h.peer_handles(&cmds, now) {
        let cmds = h.deliver(m, now);
        h.peer_handles(&cmds, now);
    }
    assert_eq!(h.d.sessions.len(), 1);
    assert_eq!(h.d.sessions.nth(0).1.conn, Some(h.conn));
    assert!(
        h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::IkeSaRekeyed { .. }))
    );
}

/// R-6.1-r: the TCP Originator carries all of an IKE SA's IKE and ESP traffic on one
/// connection: the SAs are bound to the IKE SA's connection, and rekeys open no other.
#[test]
fn r_6_1_r_originator_uses_one_connection_per_ike_sa() {
    let mut h = originator(calm());
    let mut now = h.t0;
    for _ in 0..2 {
        now += Duration::from_secs(1);
        h.d.rekey_child_sas(now).unwrap();
        let cmds = h.cmds();
        for m in h.peer_handles(&cmds, now) {
            let cmds = h.deliver(m, now);
            for m in h.peer_handles(&cmds, now) {
                h.deliver(m, now);
            }
        }
        now += Duration::from_secs(1);
        h.d.rekey_ike_sas(now).unwrap();
        let cmds = h.cmds();
        for m in h.peer_handles(&cmds, now) {
            let cmds = h.deliver(m, now);
            for m in h.peer_handles(&cmds, now) {
                h.deliver(m, now);
            }
        }
    }
    assert_eq!((h.d.child_rekeys(), h.d.ike_rekeys()), (2, 2));
    let all = h.cmds();
    assert!(!all.iter().any(|c| matches!(c, Command::Connect { .. })));
    assert_eq!(h.d.conns.len(), 1);
    assert_eq!(h.d.sessions.nth(0).1.conn, Some(h.conn));
}

/// R-6.1-v: the Originator came back on a new connection while the old one never closed; the
/// Responder closes the superseded one after the orphan grace period, counted from when its
/// IKE SA moved (packets in flight on it are still accepted meanwhile, R-6.1-u).
#[test]
fn r_6_1_v_superseded_connection_closed_after_a_grace_period() {
    let mut h = responder(quick());
    // Long after the first connection came up, the peer continues on a second one.
    let now = h.t0 + Duration::from_secs(60);
    up(&mut h.d, conn(2), TcpRole::Responder, None);
    h.conn = conn(2);
    let probe = h.peer.start_dpd(now).unwrap();
    let cmds = h.deliver(probe, now);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::SendIke { conn: x, .. } if *x == conn(2).id))
    );
    let closed = |cmds: &[Command]| {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Close { conn: x, .. } => Some(x.slot),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(closed(&h.at(now)).is_empty(), "not at once");
    assert!(closed(&h.at(now + Duration::from_millis(2900))).is_empty());
    assert_eq!(closed(&h.at(now + Duration::from_secs(3))), vec![1]);
    assert_eq!(h.d.installed(), 1);
}

/// A Child SA rekey the peer refuses (here: it is deleting that Child SA itself, RFC 7296
/// §2.25) surfaces as a `Refused` event with the peer's Notify; nothing changes.
#[test]
fn a_refused_child_rekey_is_reported_with_the_notify() {
    let mut h = originator(calm());
    let t = h.t0;
    let theirs = h.peer.child_sas()[0].spi_in;
    let _delete = h.peer.delete_child(theirs, t).unwrap();
    assert_eq!(h.d.rekey_child_sas(t).unwrap(), 1);
    let cmds = h.cmds();
    let answers = h.peer_handles(&cmds, t);
    assert_eq!(answers.len(), 1);
    h.deliver(answers[0].clone(), t);
    let events = h.d.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            DriverEvent::Refused {
                what: Refusal::ChildSa,
                notify: NotifyType::TEMPORARY_FAILURE,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(h.d.installed(), 1);
    assert!(h.d.child_rekeying.is_empty());
}

#[test]
fn an_ike_sa_init_the_responder_cannot_answer_leaves_no_state() {
    let (h, sides) = channels(1);
    let (_, cr) = configs(Suite::Aes256Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    ep.timers = quick();
    d.add(ep).unwrap();
    let cmds = &sides[0].commands;
    let _ = cmds.try_iter().count();
    let t0 = Instant::now();
    up(&mut d, conn(1), TcpRole::Responder, None);
    // IKE_SA_INIT with nothing but an empty Vendor ID payload: no SA, KE or nonce.
    let mut msg = vec![7u8; 8];
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&[43, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 32]);
    msg.extend_from_slice(&[0, 0, 0, 4]);
    d.handle_event(
        Event::IkeMessage {
            conn: conn(1),
            msg: msg.into(),
        },
        t0,
    )
    .unwrap();
    assert!(
        !cmds
            .try_iter()
            .any(|c| matches!(c, Command::SendIke { .. })),
        "no answer"
    );
    assert!(
        d.list_ike_sas(None, t0)
            .iter()
            .all(|s| s.state == IkeSaState::Gone),
        "no half-open IKE SA kept"
    );
    assert!(
        d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::InitDropped { .. }))
    );
    // The connection, carrying nothing, goes after the orphan grace (3 s), not the half-open
    // timeout (8 s).
    d.handle_timeout(t0 + Duration::from_secs(4)).unwrap();
    assert!(
        cmds.try_iter()
            .any(|c| matches!(c, Command::Close { conn: c, .. } if c == conn(1).id))
    );
}

#[test]
fn ike_sa_init_requests_past_the_per_source_rate_are_dropped_unanswered() {
    let (h, sides) = channels(1);
    let (ci, cr) = configs(Suite::Aes256Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    ep.cookies.init_rate_per_source = 5;
    d.add(ep).unwrap();
    let cmds = &sides[0].commands;
    let _ = cmds.try_iter().count();
    let t0 = Instant::now();
    // Eight connections from one address, each with a fresh IKE_SA_INIT, within a second.
    let offer = |d: &mut Driver, slot: u32, at: Instant| {
        let c = conn(slot);
        up(d, c, TcpRole::Responder, None);
        let (_, first) = Session::initiator(
            ci.clone(),
            SocketAddr::from((INITIATOR_ADDR, 40000)),
            listen,
            at,
        )
        .unwrap();
        d.handle_event(
            Event::IkeMessage {
                conn: c,
                msg: first.into(),
            },
            at,
        )
        .unwrap();
        cmds.try_iter()
            .any(|x| matches!(x, Command::SendIke { conn, .. } if conn == c.id))
    };
    let answered: Vec<bool> = (1..=8).map(|s| offer(&mut d, s, t0)).collect();
    assert_eq!(
        answered,
        [true, true, true, true, true, false, false, false]
    );
    let dropped = d
        .take_events()
        .iter()
        .filter(|e| matches!(e, DriverEvent::InitDropped { .. }))
        .count();
    assert_eq!(dropped, 3);
    // The next second has room again.
    assert!(offer(&mut d, 9, t0 + Duration::from_millis(1100)));
}
