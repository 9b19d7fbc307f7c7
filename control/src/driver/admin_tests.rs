//! Listing what the core holds, and endpoints replaced and removed at run time.

use std::time::Duration;

use iketcp_dataplane::transport::TcpRole;
use iketcp_dataplane::worker::handle::Command;

use super::life_tests::{quick, responder, sent};
use super::tests::{conn, up};
use super::*;

#[test]
fn listing_shows_endpoints_ike_sas_and_child_sas() {
    let h = responder(quick());
    let now = h.t0 + Duration::from_secs(5);
    let eps = h.d.list_endpoints();
    assert_eq!(eps.len(), 1);
    assert_eq!((eps[0].ike_sas, eps[0].removing), (1, false));
    let sas = h.d.list_ike_sas(None, now);
    let [sa] = sas.as_slice() else {
        panic!("{sas:?}")
    };
    assert_eq!(sa.state, IkeSaState::Established);
    assert!(!sa.initiator && !sa.tcp_originator);
    assert_eq!((sa.spi_i, sa.spi_r), h.peer.spis());
    assert_eq!(sa.conn.map(|c| c.0), Some(h.conn));
    assert_eq!(sa.age, Duration::from_secs(5));
    let [child] = sa.child_sas.as_slice() else {
        panic!("{:?}", sa.child_sas)
    };
    assert_eq!(child.state, ChildSaState::Installed);
    let peer_child = &h.peer.child_sas()[0];
    assert_eq!(
        (child.spi_in, child.spi_out),
        (peer_child.spi_out, peer_child.spi_in)
    );
    assert_eq!(child.suite, peer_child.suite);
    assert!(h.d.list_ike_sas(Some(eps[0].id), now).len() == 1);
}

#[test]
fn replacing_an_endpoint_keeps_its_ike_sas_and_refuses_a_new_role() {
    let mut h = responder(quick());
    let ep = h.d.list_endpoints()[0].clone();
    let (_, cr) =
        super::fixtures::configs(iketcp_dataplane::crypto::Suite::Aes256Gcm16, true).unwrap();
    let EndpointRole::Responder { listen } = ep.role else {
        panic!("responder")
    };
    let mut new = Endpoint::new(0, EndpointRole::Responder { listen }, cr.clone());
    new.timers = quick();
    assert!(h.d.replace_endpoint(ep.id, new));
    assert!(h.cmds().is_empty(), "nothing happens to the running IKE SA");
    assert_eq!(h.d.installed(), 1);
    let moved = Endpoint::new(1, EndpointRole::Responder { listen }, cr);
    assert!(
        !h.d.replace_endpoint(ep.id, moved),
        "another worker is a remove and an add"
    );
}

#[test]
fn removing_an_endpoint_deletes_its_ike_sas_and_refuses_new_connections() {
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(1);
    let id = h.d.list_endpoints()[0].id;
    assert!(h.d.remove_endpoint(id, now).unwrap());
    // A Delete of the IKE SA goes to the peer (RFC 7296 §1.4.1).
    let cmds = h.cmds();
    let del = sent(&cmds);
    assert_eq!(del.len(), 1, "{cmds:?}");
    let answers = h.peer_handles(&cmds, now);
    assert!(h.peer.is_deleted());
    for a in answers {
        h.deliver(a, now);
    }
    assert_eq!(h.d.installed(), 0, "the Child SAs went with it");
    // A new connection to the listener is closed at once.
    up(&mut h.d, conn(7), TcpRole::Responder, None);
    assert!(
        h.cmds()
            .iter()
            .any(|c| matches!(c, Command::Close { conn: c, .. } if *c == conn(7).id))
    );
    // Once its IKE SA is forgotten, the endpoint leaves the table.
    h.d.core_mut().reap();
    assert!(h.d.list_endpoints().is_empty());
    assert!(!h.d.remove_endpoint(id, now).unwrap());
}

#[test]
fn listing_shows_child_sa_traffic_the_workers_report() {
    use iketcp_dataplane::worker::handle::{Direction, SaCounter};
    let mut h = responder(quick());
    let now = h.t0 + Duration::from_secs(2);
    let child = h.d.list_ike_sas(None, now)[0].child_sas[0].clone();
    assert!(child.traffic.is_none(), "nothing reported yet");
    h.d.refresh_counters(now).unwrap();
    let cmds = h.cmds();
    let [Command::ReportSas { ack }] = cmds.as_slice() else {
        panic!("{cmds:?}")
    };
    let sas = vec![
        SaCounter {
            spi: child.spi_in,
            dir: Direction::Inbound,
            packets: 5,
            bytes: 700,
        },
        SaCounter {
            spi: child.spi_out,
            dir: Direction::Outbound,
            packets: 3,
            bytes: 420,
        },
    ];
    h.d.handle_event(
        Event::SaCounters {
            worker: 0,
            ack: *ack,
            sas,
        },
        now,
    )
    .unwrap();
    let later = now + Duration::from_secs(1);
    let listed = h.d.list_ike_sas(None, later)[0].child_sas[0].clone();
    let Some((t, ago)) = listed.traffic else {
        panic!("no traffic")
    };
    assert_eq!(
        (t.packets_in, t.bytes_in, t.packets_out, t.bytes_out),
        (5, 700, 3, 420)
    );
    assert_eq!(ago, Duration::from_secs(1));
    assert!(!h.d.has_pending(), "the answer settled the request");
}

/// The operator's per-SA requests: liveness check, one Child SA rekeyed, one added, one
/// deleted; each is one exchange with the peer and leaves the IKE SA established.
#[test]
fn per_sa_operations_liveness_rekey_add_and_delete() {
    let mut h = super::life_tests::originator(super::life_tests::quick());
    let t = h.t0;
    let ep = h.d.list_endpoints()[0].id;
    let exchange = |h: &mut super::life_tests::Hand, cmds: Vec<Command>| {
        let answers = h.peer_handles(&cmds, t);
        assert_eq!(answers.len(), 1, "{cmds:?}");
        let more = h.deliver(answers[0].clone(), t);
        // A rekey's initiator deletes the old Child SA: let that exchange finish too.
        let answers = h.peer_handles(&more, t);
        for a in answers {
            h.deliver(a, t);
        }
    };
    assert_eq!(h.d.check_liveness(ep, t).unwrap(), 1);
    let cmds = h.cmds();
    assert_eq!(sent(&cmds).len(), 1);
    exchange(&mut h, cmds);

    let spi = h.d.list_ike_sas(Some(ep), t)[0].child_sas[0].spi_in;
    assert!(
        !h.d.rekey_child_sa(ep, spi ^ 1, t).unwrap(),
        "no such Child SA"
    );
    assert!(h.d.rekey_child_sa(ep, spi, t).unwrap());
    let cmds = h.cmds();
    exchange(&mut h, cmds);
    assert_eq!(h.d.child_rekeys(), 1);

    assert_eq!(h.d.create_child_sas(ep, t).unwrap(), 1);
    let cmds = h.cmds();
    exchange(&mut h, cmds);
    let installed = |h: &super::life_tests::Hand| {
        h.d.list_ike_sas(Some(ep), t)[0]
            .child_sas
            .iter()
            .filter(|c| c.state == ChildSaState::Installed)
            .map(|c| c.spi_in)
            .collect::<Vec<_>>()
    };
    let two = installed(&h);
    assert_eq!(two.len(), 2, "{two:?}");

    assert!(h.d.delete_child_sa(ep, two[0], t).unwrap());
    let cmds = h.cmds();
    exchange(&mut h, cmds);
    assert_eq!(installed(&h), vec![two[1]]);
    assert_eq!(h.peer.child_sas().len(), 1);
    let sa = &h.d.list_ike_sas(Some(ep), t)[0];
    assert_eq!(sa.state, IkeSaState::Established);
    assert!(
        !h.d.take_events()
            .iter()
            .any(|e| matches!(e, DriverEvent::Failed { .. } | DriverEvent::Refused { .. }))
    );
}

/// A Responder that listens on several workers: each gets the Listen, and a connection
/// accepted on any of them is the endpoint's (not closed as nobody's).
#[test]
fn a_responder_listens_on_every_worker_it_names() {
    let (h, sides) = iketcp_dataplane::worker::handle::channels(2);
    let (_, cr) =
        super::fixtures::configs(iketcp_dataplane::crypto::Suite::Aes128Gcm16, false).unwrap();
    let mut d = Driver::new(h);
    let listen = std::net::SocketAddr::from((super::fixtures::RESPONDER_ADDR, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    ep.also_listen_on = vec![1];
    let id = d.add(ep).unwrap();
    for side in &sides {
        let cmds: Vec<Command> = side.commands.try_iter().collect();
        assert!(
            matches!(&cmds[..], [Command::Listen { local, .. }] if *local == listen),
            "{cmds:?}"
        );
    }
    let on_1 = Conn {
        worker: 1,
        ..conn(3)
    };
    up(&mut d, on_1, TcpRole::Responder, None);
    let ev = d.take_events();
    assert!(
        ev.iter()
            .any(|e| matches!(e, DriverEvent::ConnUp { endpoint, conn } if *endpoint == id && *conn == on_1)),
        "{ev:?}"
    );
    let closes: Vec<Command> = sides[1].commands.try_iter().collect();
    assert!(
        !closes.iter().any(|c| matches!(c, Command::Close { .. })),
        "{closes:?}"
    );
}
