//! Several peers on one listener: the responder picks the connection configuration by the
//! peer's IDi at IKE_AUTH, each with its own key, selectors and timers.

use std::net::SocketAddr;
use std::time::Instant;

use iketcp_dataplane::crypto::Suite;
use iketcp_dataplane::transport::TcpRole;
use iketcp_dataplane::worker::handle::{Command, WorkerChannels, channels};

use super::fixtures::{INITIATOR_ADDR, RESPONDER_ADDR, configs};
use super::life_tests::{ack_all, sent};
use super::tests::{conn, up};
use super::*;
use crate::ike::session::PskAuth;
use crate::ike::wire::Identity;

/// A responder driver with two endpoints on one address: "alpha" and "beta", each with its
/// peer ID and key. Returns the driver, both endpoints and the initiator configs that match.
fn two_peers() -> (Driver, WorkerChannels, EndpointId, EndpointId, [Config; 2]) {
    let (h, mut sides) = channels(1);
    let side = sides.remove(0);
    let mut d = Driver::new(h);
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let mut ids = Vec::new();
    let mut inits = Vec::new();
    for name in ["alpha", "beta"] {
        let (mut ci, mut cr) = configs(Suite::Aes128Gcm16, false).unwrap();
        let id = Identity::Fqdn(format!("{name}.iketcp.test").into_bytes());
        let key = PskAuth::shared(format!("key of {name}").as_bytes());
        ci.local_id = id.clone();
        ci.auth = key.clone();
        cr.remote_id = id;
        cr.auth = key;
        ids.push(
            d.add(Endpoint::new(0, EndpointRole::Responder { listen }, cr))
                .unwrap(),
        );
        inits.push(ci);
    }
    let [a, b] = ids[..] else { unreachable!() };
    let [ia, ib] = <[Config; 2]>::try_from(inits).unwrap();
    (d, side, a, b, [ia, ib])
}

/// Runs IKE_SA_INIT and IKE_AUTH of `ci` against the driver on connection `k`; returns the
/// driver's events.
fn handshake(d: &mut Driver, side: &WorkerChannels, ci: Config, k: u32) -> Vec<DriverEvent> {
    let listen = SocketAddr::from((RESPONDER_ADDR, 4500));
    let t0 = Instant::now();
    let (mut peer, first) = Session::initiator(
        ci,
        SocketAddr::from((INITIATOR_ADDR, 40000 + k as u16)),
        listen,
        t0,
    )
    .unwrap();
    up(d, conn(k), TcpRole::Responder, None);
    let mut msg = first;
    let mut events = Vec::new();
    for _ in 0..2 {
        d.handle_event(
            Event::IkeMessage {
                conn: conn(k),
                msg: msg.clone().into(),
            },
            t0,
        )
        .unwrap();
        // Acknowledge what the driver asked the worker for, so held responses go out.
        let mut cmds: Vec<Command> = side.commands.try_iter().collect();
        ack_all(d, &cmds, t0);
        cmds.extend(side.commands.try_iter());
        events.extend(d.take_events());
        let answers = sent(&cmds);
        let Some(answer) = answers.last() else { break };
        let out = peer.handle(answer, t0).unwrap();
        match out.into_iter().find_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        }) {
            Some(m) => msg = m,
            None => break,
        }
    }
    events
}

fn up_on(events: &[DriverEvent]) -> Option<EndpointId> {
    events.iter().find_map(|e| match e {
        DriverEvent::IkeSaUp { endpoint, .. } => Some(*endpoint),
        _ => None,
    })
}

#[test]
fn the_responder_picks_the_peer_configuration_by_idi() {
    let (mut d, side, a, b, [ia, ib]) = two_peers();
    // The connection lands on the first endpoint of the address; "beta" is chosen by its IDi.
    let ev = handshake(&mut d, &side, ib, 1);
    assert_eq!(up_on(&ev), Some(b), "{ev:?}");
    let now = Instant::now();
    assert_eq!(d.list_ike_sas(Some(b), now).len(), 1);
    assert!(d.list_ike_sas(Some(a), now).is_empty());
    let sa = &d.list_ike_sas(Some(b), now)[0];
    assert_eq!(sa.remote_id, Identity::Fqdn(b"beta.iketcp.test".to_vec()));
    assert_eq!(sa.child_sas.len(), 1);
    // The events carry what a log line or a route needs.
    let up = ev.iter().find_map(|e| match e {
        DriverEvent::IkeSaUp { spi_i, spi_r, .. } => Some((*spi_i, *spi_r)),
        _ => None,
    });
    assert_eq!(up, Some((sa.spi_i, sa.spi_r)));
    let installed = ev.iter().find_map(|e| match e {
        DriverEvent::ChildSaInstalled {
            spi_in, selectors, ..
        } => Some((*spi_in, selectors)),
        _ => None,
    });
    assert_eq!(
        installed,
        Some((sa.child_sas[0].spi_in, &sa.child_sas[0].selectors))
    );
    // "alpha" still gets its own.
    let ev = handshake(&mut d, &side, ia, 2);
    assert_eq!(up_on(&ev), Some(a), "{ev:?}");
}

#[test]
fn an_unknown_idi_or_another_peers_key_is_refused() {
    let (mut d, side, _, _, [ia, ib]) = two_peers();
    let mut stranger = ib.clone();
    stranger.local_id = Identity::Fqdn(b"gamma.iketcp.test".to_vec());
    assert_eq!(up_on(&handshake(&mut d, &side, stranger, 1)), None);
    // beta's ID with alpha's key proves nothing.
    let mut wrong = ib;
    wrong.auth = ia.auth.clone();
    assert_eq!(up_on(&handshake(&mut d, &side, wrong, 2)), None);
    assert!(
        d.list_ike_sas(None, Instant::now())
            .iter()
            .all(|s| s.state != IkeSaState::Established)
    );
}
