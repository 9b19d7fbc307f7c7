//! Nothing unauthenticated moves an IKE SA (RFC 9329 §6.1, R-6.1-t; §10, R-10-e), and a bad
//! message closes the connection it came on, not the IKE SA's (R-6.1-o).

use std::time::Duration;

use iketcp_dataplane::transport::{ConnId, TcpRole};
use iketcp_dataplane::worker::handle::Command;

use super::life_tests::{Hand, quick, responder, sent};
use super::tests::{conn, up};
use super::*;

/// Commands that move an IKE SA or its SAs, or re-send IKE on a connection.
fn moves(cmds: &[Command]) -> Vec<&Command> {
    cmds.iter()
        .filter(|c| {
            matches!(
                c,
                Command::BindIkeSa { .. }
                    | Command::DeleteSa { .. }
                    | Command::InstallInbound { .. }
                    | Command::InstallOutbound { .. }
                    | Command::ForgetIkeSa { .. }
                    | Command::SendIke { .. }
            )
        })
        .collect()
}

/// The connections of the commands `pick` selects, in order.
fn conns_of(cmds: &[Command], pick: impl Fn(&Command) -> Option<ConnId>) -> Vec<ConnId> {
    cmds.iter().filter_map(pick).collect()
}

fn closes(cmds: &[Command]) -> Vec<ConnId> {
    conns_of(cmds, |c| match c {
        Command::Close { conn, .. } => Some(*conn),
        _ => None,
    })
}

fn on(h: &mut Hand, c: Conn, msg: Vec<u8>, now: Instant) -> Vec<Command> {
    let keep = h.conn;
    h.conn = c;
    let cmds = h.deliver(msg, now);
    h.conn = keep;
    cmds
}

#[test]
fn r_6_1_t_r_10_e_forged_ike_on_a_new_connection_moves_nothing() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let genuine = h.peer.start_dpd(now).unwrap();
    // What an attacker who saw only the SPIs sends on a new connection: the two SPIs and 40
    // bytes of garbage, then a message with a valid header whose ICV is wrong.
    let evil = conn(9);
    up(&mut h.d, evil, TcpRole::Responder, None);
    let garbage = [genuine[..16].to_vec(), vec![0x5a; 40]].concat();
    let cmds = on(&mut h, evil, garbage, now);
    assert!(moves(&cmds).is_empty(), "{cmds:?}");
    let mut forged = genuine.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let cmds = on(&mut h, evil, forged, now);
    assert!(moves(&cmds).is_empty(), "{cmds:?}");
    // The forged ICV is corruption of the connection it came on (R-6.1-o): that one closes.
    assert_eq!(closes(&cmds), vec![evil.id]);
    assert!(
        matches!(
            cmds.iter().find(|c| matches!(c, Command::Close { .. })),
            Some(Command::Close { abort: true, .. })
        ),
        "with RST"
    );
    assert_eq!(
        h.d.sessions.nth(0).1.conn,
        Some(conn(1)),
        "the IKE SA stays"
    );
    assert_eq!(h.d.installed(), 1);
    // The genuine peer's liveness check on the genuine connection is answered there.
    let cmds = h.deliver(genuine, now);
    let answers = conns_of(&cmds, |c| match c {
        Command::SendIke { conn, .. } => Some(*conn),
        _ => None,
    });
    assert_eq!(answers, vec![conn(1).id]);
    assert!(
        h.peer_handles(&cmds, now).is_empty(),
        "the peer took the answer"
    );
    assert!(!h.d.take_events().iter().any(|e| matches!(
        e,
        DriverEvent::IkeSaDeleted { .. } | DriverEvent::Failed { .. }
    )));
}

#[test]
fn r_6_1_t_replayed_request_on_a_new_connection_is_answered_there_and_moves_nothing() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let req = h.peer.start_dpd(now).unwrap();
    let first = h.deliver(req.clone(), now);
    assert_eq!(sent(&first).len(), 1);
    // Captured and replayed on another connection: the cached response goes back where the
    // request came from (R-6.2-c), but the IKE SA stays where it is.
    let other = conn(5);
    up(&mut h.d, other, TcpRole::Responder, None);
    let cmds = on(&mut h, other, req, now);
    assert!(
        matches!(&cmds[..], [Command::SendIke { conn: c, msg }] if *c == other.id && *msg == sent(&first)[0]),
        "{cmds:?}"
    );
    assert_eq!(h.d.sessions.nth(0).1.conn, Some(conn(1)));
}

#[test]
fn r_6_1_t_fresh_authentic_request_on_a_new_connection_moves_the_ike_sa() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let next = conn(2);
    up(&mut h.d, next, TcpRole::Responder, None);
    let req = h.peer.start_dpd(now).unwrap();
    let cmds = on(&mut h, next, req, now);
    let binds = conns_of(&cmds, |c| match c {
        Command::BindIkeSa { conn, .. } => Some(*conn),
        _ => None,
    });
    assert_eq!(binds, vec![next.id]);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::SendIke { conn: c, .. } if *c == next.id))
    );
    assert_eq!(h.d.sessions.nth(0).1.conn, Some(next));
}

#[test]
fn r_6_1_o_forged_message_on_an_old_connection_closes_that_one_not_the_current() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    // The peer moved to connection 2 with an authentic request; connection 1 stays open
    // (R-6.1-u).
    let next = conn(2);
    up(&mut h.d, next, TcpRole::Responder, None);
    let req = h.peer.start_dpd(now).unwrap();
    let cmds = on(&mut h, next, req, now);
    assert!(h.peer_handles(&cmds, now).is_empty());
    assert_eq!(h.d.sessions.nth(0).1.conn, Some(next));
    // A forged message arrives on the old connection.
    let mut forged = h.peer.start_dpd(now).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let cmds = h.deliver(forged, now);
    assert_eq!(closes(&cmds), vec![conn(1).id], "the connection it came on");
    assert_eq!(h.d.sessions.nth(0).1.conn, Some(next));
}

/// Issue 8, item 6: an SPI whose inbound SA a worker refused (for example as a duplicate) goes
/// back to the pool once the Child SA is forgotten; one that was installed goes back when the
/// worker hands the SA back.
#[test]
fn refused_inbound_install_returns_its_spi() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let spi_in = h.d.children.nth(0).1.spi_in;
    let req = h
        .peer
        .rekey_child(h.peer.child_sas()[0].spi_in, false, now)
        .unwrap();
    // Deliver without acking: refuse the new inbound install.
    let keep = h.conn;
    h.d.handle_event(
        Event::IkeMessage {
            conn: keep,
            msg: req.into(),
        },
        now,
    )
    .unwrap();
    let cmds = h.cmds();
    let Some((ack, new_spi)) = cmds.iter().find_map(|c| match c {
        Command::InstallInbound { ack, sa, .. } => Some((*ack, sa.spi())),
        _ => None,
    }) else {
        panic!("no install: {cmds:?}");
    };
    assert_ne!(new_spi, spi_in);
    assert!(h.d.spi_pool.contains(new_spi));
    h.d.handle_event(
        Event::Ack {
            worker: 0,
            ack,
            result: Err(CommandError::DuplicateSpi {
                spi: new_spi,
                dir: Direction::Inbound,
            }),
        },
        now,
    )
    .unwrap();
    assert!(
        sent(&h.cmds()).is_empty(),
        "no response without the inbound SA"
    );
    h.d.core_mut().reap();
    assert!(!h.d.spi_pool.contains(new_spi), "released");
    assert!(h.d.spi_pool.contains(spi_in), "the live SA keeps its SPI");
}
