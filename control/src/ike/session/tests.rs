//! Both ends of a session in memory, with a fake clock.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat, Suite};
use iketcp_dataplane::sa::{Decapped, InboundSa, OutboundSa, SaParams};
use proptest::prelude::*;
use sha1::{Digest, Sha1};

use super::*;
use crate::ike::crypto::{EncrAlg, IntegAlg};
use crate::ike::wire::{AuthMethod, ProtocolId, Spi, TsRange};

fn gcm_x25519() -> IkeSuite {
    IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Curve25519,
    )
    .unwrap()
}

fn chacha_p256() -> IkeSuite {
    IkeSuite::new(
        EncrAlg::ChaCha20Poly1305,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Ecp256,
    )
    .unwrap()
}

fn cbc_modp() -> IkeSuite {
    IkeSuite::new(
        EncrAlg::AesCbc256,
        PrfAlg::HmacSha256,
        Some(IntegAlg::HmacSha256_128),
        DhGroup::Modp2048,
    )
    .unwrap()
}

pub(super) fn ts4(a: [u8; 4], b: [u8; 4]) -> TrafficSelector {
    TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start_addr: Ipv4Addr::from(a),
        end_addr: Ipv4Addr::from(b),
    })
}

pub(super) const I_ADDR: ([u8; 4], u16) = ([192, 0, 2, 2], 40000);
pub(super) const R_ADDR: ([u8; 4], u16) = ([192, 0, 2, 1], 4500);

pub(super) fn sock((ip, port): ([u8; 4], u16)) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

/// The pre-shared key of [`configs`].
const PSK: &[u8] = b"correct horse battery staple";

pub(super) fn configs(ike: IkeSuite, esp: (EspSuite, bool)) -> (Config, Config) {
    let i = Config {
        local_id: Identity::Fqdn(b"initiator.example".to_vec()),
        remote_id: Identity::Fqdn(b"responder.example".to_vec()),
        auth: PskAuth::shared(PSK),
        ike_proposals: vec![ike],
        esp_proposals: vec![esp],
        ts_local: vec![ts4([198, 51, 100, 0], [198, 51, 100, 255])],
        ts_remote: vec![ts4([203, 0, 113, 0], [203, 0, 113, 255])],
        spi_pool: SpiPool::new(),
    };
    let r = Config {
        local_id: i.remote_id.clone(),
        remote_id: i.local_id.clone(),
        ts_local: i.ts_remote.clone(),
        ts_remote: i.ts_local.clone(),
        ..i.clone()
    };
    (i, r)
}

/// A session as the tests drive it: [`Peer::handle`] and [`Peer::handle_timeout`] return the
/// session's outputs unchanged and also keep the lifecycle events among them ([`Output::Sa`]),
/// for [`Peer::take_sa_events`]; everything else goes to the session.
#[derive(Debug)]
pub(super) struct Peer {
    s: Session,
    sa: Vec<SaEvent>,
}

impl core::ops::Deref for Peer {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.s
    }
}

impl core::ops::DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.s
    }
}

impl Peer {
    pub(super) fn new(s: Session) -> Peer {
        Peer { s, sa: Vec::new() }
    }

    fn keep(&mut self, out: &[Output]) {
        self.sa.extend(out.iter().filter_map(|o| match o {
            Output::Sa(e) => Some(e.clone()),
            _ => None,
        }));
    }

    pub(super) fn handle(&mut self, msg: &[u8], now: Instant) -> Result<Vec<Output>, SessionError> {
        let out = self.s.handle(msg, now)?;
        self.keep(&out);
        Ok(out)
    }

    pub(super) fn handle_verified(
        &mut self,
        msg: &[u8],
        now: Instant,
    ) -> Result<(Vec<Output>, Verdict), SessionError> {
        let (out, v) = self.s.handle_verified(msg, now)?;
        self.keep(&out);
        Ok((out, v))
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let out = self.s.handle_timeout(now);
        self.keep(&out);
        out
    }

    /// The lifecycle events the session returned since the last call, in order.
    pub(super) fn take_sa_events(&mut self) -> Vec<SaEvent> {
        core::mem::take(&mut self.sa)
    }
}

/// Both sessions of one TCP connection without NAT.
pub(super) fn pair(ci: Config, cr: Config, now: Instant) -> (Peer, Peer, Vec<u8>) {
    let (i, first) = Session::initiator(ci, sock(I_ADDR), sock(R_ADDR), now).unwrap();
    let r = Session::responder(cr, sock(R_ADDR), sock(I_ADDR));
    (Peer::new(i), Peer::new(r), first)
}

/// The messages and session events of some outputs. Lifecycle events are left out: a [`Peer`]
/// keeps them.
pub(super) fn split(out: Vec<Output>) -> (Vec<Vec<u8>>, Vec<SessionEvent>) {
    let mut sends = Vec::new();
    let mut events = Vec::new();
    for o in out {
        match o {
            Output::Send(b) => sends.push(b),
            Output::Event(e) => events.push(e),
            Output::Sa(_) => {}
            Output::SolvePuzzle(j) => panic!("unexpected puzzle job {j:?}"),
        }
    }
    (sends, events)
}

/// Delivers messages back and forth until nobody sends; returns (initiator, responder) events.
pub(super) fn pump(
    i: &mut Peer,
    r: &mut Peer,
    first: Vec<u8>,
    now: Instant,
) -> (Vec<SessionEvent>, Vec<SessionEvent>) {
    let (mut ie, mut re) = (Vec::new(), Vec::new());
    let mut to_r = vec![first];
    let mut to_i: Vec<Vec<u8>> = Vec::new();
    loop {
        if let Some(m) = to_r.pop() {
            let (s, e) = split(r.handle(&m, now).unwrap());
            to_i.extend(s);
            re.extend(e);
        } else if let Some(m) = to_i.pop() {
            let (s, e) = split(i.handle(&m, now).unwrap());
            to_r.extend(s);
            ie.extend(e);
        } else {
            return (ie, re);
        }
    }
}

pub(super) fn child(events: &[SessionEvent]) -> Option<&ChildSa> {
    events.iter().find_map(|e| match e {
        SessionEvent::ChildSaUp(c) => Some(c),
        _ => None,
    })
}

pub(super) fn ike_up(events: &[SessionEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, SessionEvent::IkeSaUp { .. }))
}

pub(super) fn failed(events: &[SessionEvent]) -> Option<FailReason> {
    events.iter().find_map(|e| match e {
        SessionEvent::Failed(r) => Some(*r),
        _ => None,
    })
}

fn ipv4_packet(body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + body.len()).unwrap();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 51, 100, 1]);
    p[16..20].copy_from_slice(&[203, 0, 113, 1]);
    p.extend_from_slice(body);
    p
}

/// The data plane's AEAD for a negotiated suite (the test cross-checks the KEYMAT with the real
/// ESP implementation; the session itself does not know the data plane).
fn dataplane_suite(s: EspSuite) -> Suite {
    match s {
        EspSuite::AesGcm16_128 => Suite::Aes128Gcm16,
        EspSuite::AesGcm16_256 => Suite::Aes256Gcm16,
        EspSuite::ChaCha20Poly1305 => Suite::ChaCha20Poly1305,
    }
}

/// An ESP packet sealed with `from`'s outbound KEYMAT opens with `to`'s inbound KEYMAT.
pub(super) fn esp_roundtrip(from: &ChildSa, to: &ChildSa) {
    let out_params = SaParams {
        esn: from.esn,
        ..SaParams::new(
            from.spi_out,
            Keymat::new(dataplane_suite(from.suite), from.keymat_out.expose()).unwrap(),
            Backend::RustCrypto,
        )
    };
    let in_params = SaParams {
        esn: to.esn,
        ..SaParams::new(
            to.spi_in,
            Keymat::new(dataplane_suite(to.suite), to.keymat_in.expose()).unwrap(),
            Backend::RustCrypto,
        )
    };
    let mut o = OutboundSa::new(&out_params).unwrap();
    let mut inb = InboundSa::new(&in_params).unwrap();
    let pkt = ipv4_packet(b"hello through the tunnel");
    let head = OutboundSa::HEADROOM;
    let mut buf = vec![0u8; head + pkt.len() + OutboundSa::TAILROOM];
    buf[head..head + pkt.len()].copy_from_slice(&pkt);
    let r = o.encap(&mut buf, head..head + pkt.len()).unwrap();
    match inb.decap(&mut buf, r).unwrap() {
        Decapped::Packet { range, .. } => assert_eq!(&buf[range], &pkt[..]),
        other => panic!("unexpected {other:?}"),
    }
}

fn full_handshake(ike: IkeSuite, esp: (EspSuite, bool)) {
    let now = Instant::now();
    let (ci, cr) = configs(ike, esp);
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now + Duration::from_millis(5));
    assert!(ike_up(&ie) && ike_up(&re), "{ie:?} {re:?}");
    assert!(i.is_established() && r.is_established());
    assert_eq!(i.spis(), r.spis());
    assert_eq!(i.suite(), Some(ike));
    assert_eq!(r.suite(), Some(ike));
    let ic = child(&ie).unwrap();
    let rc = child(&re).unwrap();
    assert_eq!((ic.suite, ic.esn), esp);
    assert_eq!((rc.suite, rc.esn), esp);
    assert_eq!(ic.spi_out, rc.spi_in);
    assert_eq!(ic.spi_in, rc.spi_out);
    assert_eq!(ic.keymat_out, rc.keymat_in);
    assert_eq!(ic.keymat_in, rc.keymat_out);
    assert_ne!(ic.keymat_in, ic.keymat_out);
    assert_eq!(ic.keymat_out.len(), esp.0.keymat_len());
    assert_eq!(ic.ts_local, rc.ts_remote);
    assert_eq!(ic.ts_remote, rc.ts_local);
    esp_roundtrip(ic, rc);
    esp_roundtrip(rc, ic);
}

#[test]
fn handshake_every_esp_suite_over_gcm_x25519() {
    for suite in EspSuite::ALL {
        for esn in [false, true] {
            full_handshake(gcm_x25519(), (suite, esn));
        }
    }
}

#[test]
fn handshake_every_esp_suite_over_chacha_p256() {
    for suite in EspSuite::ALL {
        for esn in [false, true] {
            full_handshake(chacha_p256(), (suite, esn));
        }
    }
}

#[test]
fn handshake_cbc_hmac_modp2048() {
    full_handshake(cbc_modp(), (EspSuite::AesGcm16_256, true));
}

#[test]
fn r_6_4_b_invalid_ke_retry_same_connection() {
    let now = Instant::now();
    let (mut ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let g19 = IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Ecp256,
    )
    .unwrap();
    ci.ike_proposals = vec![gcm_x25519(), g19];
    cr.ike_proposals = vec![g19];
    let (mut i, mut r, first) = pair(ci, cr, now);
    // The responder asks for group 19 and keeps no state.
    let (sends, events) = split(r.handle(&first, now).unwrap());
    assert!(events.is_empty());
    let m = Message::parse(&sends[0]).unwrap();
    let n = find_notify(&m.payloads, NotifyType::INVALID_KE_PAYLOAD).unwrap();
    assert_eq!(n.data, 19u16.to_be_bytes());
    assert_eq!(m.header.spi_r, 0);
    // The initiator retries at once on the same connection with a KE for group 19.
    let (retry, events) = split(i.handle(&sends[0], now).unwrap());
    assert!(events.is_empty());
    let m = Message::parse(&retry[0]).unwrap();
    let ke = m
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::Ke(k) => Some(k),
            _ => None,
        })
        .unwrap();
    assert_eq!(ke.group, 19);
    assert_eq!(m.header.message_id, 0);
    let (ie, re) = pump(&mut i, &mut r, retry[0].clone(), now);
    assert!(ike_up(&ie) && ike_up(&re));
    assert_eq!(i.suite(), Some(g19));
    esp_roundtrip(child(&ie).unwrap(), child(&re).unwrap());
}

#[test]
fn r_6_4_a_no_proposal_chosen_fails_immediately() {
    let now = Instant::now();
    let (ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    cr.ike_proposals = vec![chacha_p256()];
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    assert!(re.is_empty());
    assert_eq!(
        failed(&ie),
        Some(FailReason::PeerError(NotifyType::NO_PROPOSAL_CHOSEN))
    );
    assert!(i.is_failed());
    assert_eq!(i.handle(&[0u8; 28], now).unwrap_err(), SessionError::Closed);
}

#[test]
fn r_6_4_a_invalid_ke_for_unoffered_group_fails_immediately() {
    let now = Instant::now();
    let (ci, _) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, first) = Session::initiator(ci, sock(I_ADDR), sock(R_ADDR), now).unwrap();
    let h = Header::parse(&first).unwrap().header;
    let resp = Message {
        header: Header {
            flags: Flags {
                initiator: false,
                version: false,
                response: true,
            },
            ..h
        },
        payloads: vec![notify(NotifyType::INVALID_KE_PAYLOAD, vec![0, 14])],
    }
    .to_bytes()
    .unwrap();
    let (sends, events) = split(i.handle(&resp, now).unwrap());
    assert!(sends.is_empty());
    assert_eq!(
        failed(&events),
        Some(FailReason::PeerError(NotifyType::INVALID_KE_PAYLOAD))
    );
}

fn independent_sha1(spi_i: u64, spi_r: u64, ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&spi_i.to_be_bytes());
    bytes.extend_from_slice(&spi_r.to_be_bytes());
    bytes.extend_from_slice(&ip);
    bytes.extend_from_slice(&port.to_be_bytes());
    Sha1::digest(&bytes).to_vec()
}

#[test]
fn r_6_5_a_r_6_5_b_nat_detection_uses_tcp_ports() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (i, first) = Session::initiator(ci, sock(I_ADDR), sock(R_ADDR), now).unwrap();
    let mut i = Peer::new(i);
    // A NAPT that keeps the address but rewrites the TCP source port.
    let mapped = (I_ADDR.0, 61000);
    let mut r = Peer::new(Session::responder(cr, sock(R_ADDR), sock(mapped)));

    // R-6.5-a: the request carries both notifies, SPIr = 0, over the TCP ports (R-6.5-b).
    let m = Message::parse(&first).unwrap();
    let spi_i = m.header.spi_i;
    let src = find_notify(&m.payloads, NotifyType::NAT_DETECTION_SOURCE_IP).unwrap();
    let dst = find_notify(&m.payloads, NotifyType::NAT_DETECTION_DESTINATION_IP).unwrap();
    assert_eq!(src.data, independent_sha1(spi_i, 0, I_ADDR.0, I_ADDR.1));
    assert_eq!(dst.data, independent_sha1(spi_i, 0, R_ADDR.0, R_ADDR.1));

    let (sends, _) = split(r.handle(&first, now).unwrap());
    let m = Message::parse(&sends[0]).unwrap();
    let spi_r = m.header.spi_r;
    assert_ne!(spi_r, 0);
    let src = find_notify(&m.payloads, NotifyType::NAT_DETECTION_SOURCE_IP).unwrap();
    let dst = find_notify(&m.payloads, NotifyType::NAT_DETECTION_DESTINATION_IP).unwrap();
    assert_eq!(src.data, independent_sha1(spi_i, spi_r, R_ADDR.0, R_ADDR.1));
    assert_eq!(dst.data, independent_sha1(spi_i, spi_r, mapped.0, mapped.1));

    let (ie, re) = pump(&mut i, &mut r, first, now);
    let nat = |ev: &[SessionEvent]| {
        ev.iter().find_map(|e| match e {
            SessionEvent::IkeSaUp {
                nat_local,
                nat_remote,
                ..
            } => Some((*nat_local, *nat_remote)),
            _ => None,
        })
    };
    // A port change alone is a NAT: the initiator is behind it, seen from both ends.
    assert_eq!(nat(&ie), Some((true, false)));
    assert_eq!(nat(&re), Some((false, true)));
}

#[test]
fn nat_not_detected_without_translation() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, _) = pump(&mut i, &mut r, first, now);
    assert!(ie.iter().any(|e| matches!(
        e,
        SessionEvent::IkeSaUp {
            nat_local: false,
            nat_remote: false,
            ..
        }
    )));
}

#[test]
fn wrong_psk_authentication_failed() {
    let now = Instant::now();
    let (ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    cr.auth = PskAuth::shared(b"wrong");
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    assert_eq!(
        failed(&re),
        Some(FailReason::LocalError(NotifyType::AUTHENTICATION_FAILED))
    );
    assert_eq!(
        failed(&ie),
        Some(FailReason::PeerError(NotifyType::AUTHENTICATION_FAILED))
    );
    assert!(child(&ie).is_none() && child(&re).is_none());
    assert!(!ike_up(&ie) && !ike_up(&re));
    assert!(i.is_failed() && r.is_failed());
}

/// A stand-in for a signature method (RFC 7427): "signs" the concatenated octets and the
/// identity with a keyed PRF, under Auth Method 14. It shows that the session goes through
/// `Config::auth` alone, with the identity each AUTH proves.
#[derive(Debug)]
struct FakeSignature;

impl FakeSignature {
    fn tag(o: &SignedOctets<'_>) -> Vec<u8> {
        let id = id_body(o.id).unwrap();
        PrfAlg::HmacSha256
            .prf(b"fake signing key", &[&o.concat(), &id])
            .unwrap()
            .expose()
            .to_vec()
    }
}

impl Authenticator for FakeSignature {
    fn method(&self) -> AuthMethod {
        AuthMethod::DIGITAL_SIGNATURE
    }

    fn sign(&self, o: &SignedOctets<'_>) -> Result<Vec<u8>, AuthError> {
        Ok(Self::tag(o))
    }

    fn verify(&self, o: &SignedOctets<'_>, m: AuthMethod, data: &[u8]) -> Result<(), AuthError> {
        if m != AuthMethod::DIGITAL_SIGNATURE {
            return Err(AuthError::Method(m));
        }
        if Self::tag(o) == data {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

#[test]
fn authentication_goes_through_the_configured_authenticator() {
    let now = Instant::now();
    let (mut ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    ci.auth = Arc::new(FakeSignature);
    cr.auth = Arc::new(FakeSignature);
    let (mut i, mut r, first) = pair(ci.clone(), cr, now);
    let (init_resp, _) = split(r.handle(&first, now).unwrap());
    let (auth_req, _) = split(i.handle(&init_resp[0], now).unwrap());
    let auth = opened_payloads(&r, &auth_req[0])
        .into_iter()
        .find_map(|p| match p {
            Payload::Auth(a) => Some(a),
            _ => None,
        })
        .unwrap();
    assert_eq!(auth.method, AuthMethod::DIGITAL_SIGNATURE);
    let (auth_resp, re) = split(r.handle(&auth_req[0], now).unwrap());
    let (_, ie) = split(i.handle(&auth_resp[0], now).unwrap());
    assert!(ike_up(&ie) && ike_up(&re), "{ie:?} {re:?}");

    // A PSK responder does not accept that method: AUTHENTICATION_FAILED.
    let (_, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    assert_eq!(
        failed(&re),
        Some(FailReason::LocalError(NotifyType::AUTHENTICATION_FAILED))
    );
    assert_eq!(
        failed(&ie),
        Some(FailReason::PeerError(NotifyType::AUTHENTICATION_FAILED))
    );
}

#[test]
fn config_debug_does_not_show_the_psk() {
    let (ci, _) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let s = format!("{ci:?}");
    assert!(s.contains("PskAuth(<redacted>)"), "{s}");
    assert!(
        !s.contains("horse") && !s.contains(&format!("{PSK:?}")),
        "{s}"
    );
}

#[test]
fn wrong_identity_authentication_failed() {
    let now = Instant::now();
    let (ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    cr.remote_id = Identity::Fqdn(b"someone.else".to_vec());
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    assert_eq!(
        failed(&re),
        Some(FailReason::LocalError(NotifyType::AUTHENTICATION_FAILED))
    );
    assert!(child(&ie).is_none() && !ike_up(&re));
}

#[test]
fn traffic_selectors_narrowed_to_intersection() {
    let now = Instant::now();
    let (mut ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    ci.ts_local = vec![ts4([198, 51, 100, 0], [198, 51, 100, 255])];
    ci.ts_remote = vec![ts4([0, 0, 0, 0], [255, 255, 255, 255])];
    cr.ts_remote = vec![ts4([198, 51, 100, 32], [198, 51, 100, 63])];
    cr.ts_local = vec![
        ts4([203, 0, 113, 0], [203, 0, 113, 127]),
        ts4([203, 0, 113, 192], [203, 0, 113, 255]),
    ];
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    let ic = child(&ie).unwrap();
    let rc = child(&re).unwrap();
    assert_eq!(
        ic.ts_local,
        vec![ts4([198, 51, 100, 32], [198, 51, 100, 63])]
    );
    assert_eq!(
        ic.ts_remote,
        vec![
            ts4([203, 0, 113, 0], [203, 0, 113, 127]),
            ts4([203, 0, 113, 192], [203, 0, 113, 255])
        ]
    );
    assert_eq!(rc.ts_local, ic.ts_remote);
    assert_eq!(rc.ts_remote, ic.ts_local);
}

#[test]
fn narrowing_protocol_and_ports() {
    let a = TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start_addr: Ipv4Addr::new(198, 51, 100, 0),
        end_addr: Ipv4Addr::new(198, 51, 100, 127),
    });
    let b = TrafficSelector::Ipv4(TsRange {
        ip_protocol: 6,
        start_port: 443,
        end_port: 443,
        start_addr: Ipv4Addr::new(198, 51, 100, 7),
        end_addr: Ipv4Addr::new(198, 51, 100, 200),
    });
    let m = ts::meet(&a, &b).unwrap();
    assert_eq!(
        m,
        TrafficSelector::Ipv4(TsRange {
            ip_protocol: 6,
            start_port: 443,
            end_port: 443,
            start_addr: Ipv4Addr::new(198, 51, 100, 7),
            end_addr: Ipv4Addr::new(198, 51, 100, 127),
        })
    );
    let udp = TrafficSelector::Ipv4(TsRange {
        ip_protocol: 17,
        ..match &b {
            TrafficSelector::Ipv4(r) => *r,
            _ => unreachable!(),
        }
    });
    assert_eq!(ts::meet(&udp, &b), None);
    assert!(ts::within(
        std::slice::from_ref(&m),
        std::slice::from_ref(&a)
    ));
    assert!(!ts::within(&[a], &[m]));
    let other = TrafficSelector::Other {
        ts_type: 13,
        octet1: 0,
        data: vec![],
    };
    assert_eq!(ts::narrow(&[other], &[b]), vec![]);
}

#[test]
fn ts_unacceptable_keeps_ike_sa_without_child() {
    let now = Instant::now();
    let (ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    cr.ts_local = vec![ts4([192, 0, 2, 0], [192, 0, 2, 255])];
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    for ev in [&ie, &re] {
        assert!(ike_up(ev));
        assert!(child(ev).is_none());
        assert!(
            ev.iter()
                .any(|e| matches!(e, SessionEvent::ChildSaFailed(NotifyType::TS_UNACCEPTABLE)))
        );
    }
}

#[test]
fn esp_no_proposal_chosen_keeps_ike_sa_without_child() {
    let now = Instant::now();
    let (ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    cr.esp_proposals = vec![(EspSuite::AesGcm16_128, true)];
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    for ev in [&ie, &re] {
        assert!(ike_up(ev) && child(ev).is_none());
        assert!(ev.iter().any(|e| matches!(
            e,
            SessionEvent::ChildSaFailed(NotifyType::NO_PROPOSAL_CHOSEN)
        )));
    }
}

#[test]
fn responder_picks_first_acceptable_initiator_proposal() {
    let now = Instant::now();
    let (mut ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let gcm_p256 = IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Ecp256,
    )
    .unwrap();
    ci.ike_proposals = vec![gcm_x25519(), gcm_p256];
    ci.esp_proposals = vec![
        (EspSuite::ChaCha20Poly1305, false),
        (EspSuite::AesGcm16_256, true),
        (EspSuite::AesGcm16_128, false),
    ];
    // The responder prefers other things, but §2.7 follows the initiator's order.
    cr.ike_proposals = vec![gcm_p256, gcm_x25519()];
    cr.esp_proposals = vec![
        (EspSuite::AesGcm16_128, false),
        (EspSuite::AesGcm16_256, true),
    ];
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (sends, _) = split(r.handle(&first, now).unwrap());
    let m = Message::parse(&sends[0]).unwrap();
    let sa = m
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::Sa(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(sa.proposals.len(), 1);
    assert_eq!(sa.proposals[0].number, 1);
    assert_eq!(sa.proposals[0].transforms.len(), 3);
    let (auth, _) = split(i.handle(&sends[0], now).unwrap());
    let (ie, re) = pump(&mut i, &mut r, auth[0].clone(), now);
    assert_eq!(i.suite(), Some(gcm_x25519()));
    let ic = child(&ie).unwrap();
    assert_eq!((ic.suite, ic.esn), (EspSuite::AesGcm16_256, true));
    esp_roundtrip(ic, child(&re).unwrap());
}

/// Runs IKE_SA_INIT and returns the IKE_AUTH request, not yet delivered.
fn up_to_auth(now: Instant) -> (Peer, Peer, Vec<u8>, Vec<u8>) {
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (s, _) = split(r.handle(&first, now).unwrap());
    let (auth_req, _) = split(i.handle(&s[0], now).unwrap());
    (i, r, first, auth_req[0].clone())
}

#[test]
fn r_6_2_c_retransmitted_request_gets_identical_cached_response() {
    let now = Instant::now();
    let (mut i, mut r, first, auth_req) = up_to_auth(now);
    // IKE_SA_INIT retransmitted after it was answered: the same bytes again.
    let (again, ev) = split(r.handle(&first, now).unwrap());
    assert!(ev.is_empty());
    assert_eq!(again[0], r.init_response);
    let spis = r.spis();

    let (resp1, ev1) = split(r.handle(&auth_req, now).unwrap());
    assert!(ike_up(&ev1));
    let (resp2, ev2) = split(r.handle(&auth_req, now + Duration::from_secs(1)).unwrap());
    assert_eq!(resp1, resp2, "bit-for-bit identical");
    assert!(ev2.is_empty(), "no second IkeSaUp/ChildSaUp: {ev2:?}");
    assert_eq!(r.spis(), spis);
    assert!(r.is_established());
    let (_, ie) = split(i.handle(&resp1[0], now).unwrap());
    assert!(ike_up(&ie));
    // The initiator drops a duplicate response: nothing is outstanding.
    let (s, ie2) = split(i.handle(&resp1[0], now).unwrap());
    assert!(s.is_empty() && !ike_up(&ie2));
}

#[test]
fn unexpected_message_ids_dropped() {
    let now = Instant::now();
    let (_i, mut r, _first, auth_req) = up_to_auth(now);
    let mut bad = auth_req.clone();
    bad[20..24].copy_from_slice(&5u32.to_be_bytes());
    let (s, ev) = split(r.handle(&bad, now).unwrap());
    assert!(s.is_empty());
    assert!(matches!(
        ev[..],
        [SessionEvent::Dropped(DropReason::UnexpectedMessageId)]
    ));
    let (s, ev) = split(r.handle(&auth_req, now).unwrap());
    assert_eq!(s.len(), 1);
    assert!(ike_up(&ev));
}

#[test]
fn r_6_1_o_tampered_message_dropped_as_integrity_failure() {
    let now = Instant::now();
    let (mut i, mut r, _first, auth_req) = up_to_auth(now);
    let mut bad = auth_req.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let (s, ev) = split(r.handle(&bad, now).unwrap());
    assert!(s.is_empty());
    assert!(matches!(ev[..], [SessionEvent::IntegrityFailure]));
    assert!(!r.is_established() && !r.is_failed());
    assert_eq!(r.message_id, 1, "state unchanged");
    // The genuine message still works, and so does a tampered response on the initiator.
    let (resp, _) = split(r.handle(&auth_req, now).unwrap());
    let mut bad = resp[0].clone();
    let mid = bad.len() - 20;
    bad[mid] ^= 0x80;
    let (s, ev) = split(i.handle(&bad, now).unwrap());
    assert!(s.is_empty());
    assert!(matches!(ev[..], [SessionEvent::IntegrityFailure]));
    let (_, ev) = split(i.handle(&resp[0], now).unwrap());
    assert!(ike_up(&ev));
    // A tampered copy of an answered request is not a retransmission either.
    let mut bad = auth_req.clone();
    bad[last] ^= 0x01;
    let (s, ev) = split(r.handle(&bad, now).unwrap());
    assert!(s.is_empty());
    assert!(matches!(ev[..], [SessionEvent::IntegrityFailure]));
}

/// Seals an arbitrary plaintext chain as `from` would, for tests of the receive path.
fn seal_raw(from: &Session, header: Header, first: PayloadType, plain: &[u8]) -> Vec<u8> {
    let prot = from.prot.as_ref().unwrap();
    let body = vec![0u8; prot.out.sealed_body_len(plain.len())];
    let skel = Message {
        header,
        payloads: vec![Payload::Sk(SkPayload {
            first_payload: first,
            body,
        })],
    }
    .to_bytes()
    .unwrap();
    let layout = locate_encrypted(&skel).unwrap().unwrap();
    let mut out = Vec::new();
    prot.out
        .seal(&skel[..layout.header.end], plain, &mut out)
        .unwrap();
    out
}

#[test]
fn r_6_1_q_unparsable_encrypted_request_answered_invalid_syntax() {
    let now = Instant::now();
    let (i, mut r, _first, _auth_req) = up_to_auth(now);
    // An IDi payload whose length field runs past the chain.
    let plain = [0u8, 0, 0, 200, 2, 0, 0, 0];
    let msg = seal_raw(
        &i,
        i.header(ExchangeType::IKE_AUTH, false, 1),
        PayloadType::IDI,
        &plain,
    );
    let (s, ev) = split(r.handle(&msg, now).unwrap());
    assert_eq!(
        failed(&ev),
        Some(FailReason::LocalError(NotifyType::INVALID_SYNTAX))
    );
    let opened = i.open(&s[0]).ok().unwrap();
    let payloads = opened.payloads.unwrap();
    assert!(find_notify(&payloads, NotifyType::INVALID_SYNTAX).is_some());
    // The error answer is cached like any response.
    let (again, _) = split(r.handle(&msg, now).unwrap());
    assert_eq!(again, s);
}

#[test]
fn malformed_ike_sa_init_dropped_silently() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (_i, mut r, first) = pair(ci, cr, now);
    let mut bad = first.clone();
    // Corrupt the first payload's length.
    bad[30] = 0xff;
    let (s, ev) = split(r.handle(&bad, now).unwrap());
    assert!(s.is_empty());
    assert!(matches!(ev[..], [SessionEvent::Dropped(_)]));
    // Still willing to answer the genuine one.
    let (s, _) = split(r.handle(&first, now).unwrap());
    assert_eq!(s.len(), 1);
}

fn mutate(msg: &[u8], pos: usize, xor: u8) -> Vec<u8> {
    let mut m = msg.to_vec();
    let n = m.len();
    m[pos % n] ^= xor;
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let now = Instant::now();
        let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
        let (mut i, mut r, _first) = pair(ci, cr, now);
        let _ = r.handle(&bytes, now);
        let _ = i.handle(&bytes, now);
    }

    #[test]
    fn mutated_messages_never_panic(pos in any::<usize>(), xor in 1u8..=255) {
        let now = Instant::now();
        let (mut i, mut r, first, auth_req) = up_to_auth(now);
        let _ = r.handle(&mutate(&first, pos, xor), now);
        let _ = r.handle(&mutate(&auth_req, pos, xor), now);
        let (resp, _) = split(r.handle(&auth_req, now).unwrap());
        let _ = i.handle(&mutate(&resp[0], pos, xor), now);
        let _ = r.handle(&mutate(&auth_req, pos, xor), now);
    }
}

fn response_to(first: &[u8], payloads: Vec<Payload>) -> Vec<u8> {
    let h = Header::parse(first).unwrap().header;
    Message {
        header: Header {
            flags: Flags {
                initiator: false,
                version: false,
                response: true,
            },
            ..h
        },
        payloads,
    }
    .to_bytes()
    .unwrap()
}

fn nonce_of(msg: &[u8]) -> Vec<u8> {
    Message::parse(msg)
        .unwrap()
        .payloads
        .into_iter()
        .find_map(|p| match p {
            Payload::Nonce(n) => Some(n),
            _ => None,
        })
        .unwrap()
}

#[test]
fn cookie_retry_keeps_ke_and_nonce() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, mut r, first) = pair(ci, cr, now);
    let cookie = vec![0xc0; 16];
    let resp = response_to(&first, vec![notify(NotifyType::COOKIE, cookie.clone())]);
    let (retry, ev) = split(i.handle(&resp, now).unwrap());
    assert!(ev.is_empty());
    let a = Message::parse(&first).unwrap();
    let b = Message::parse(&retry[0]).unwrap();
    assert_eq!(b.payloads[0], notify(NotifyType::COOKIE, cookie));
    assert_eq!(
        &b.payloads[1..],
        &a.payloads[..],
        "all other payloads unchanged"
    );
    assert_eq!(b.header, a.header);
    let (ie, re) = pump(&mut i, &mut r, retry[0].clone(), now);
    assert!(ike_up(&ie) && ike_up(&re));
    esp_roundtrip(child(&ie).unwrap(), child(&re).unwrap());
}

#[test]
fn invalid_ke_ping_pong_is_bounded() {
    let now = Instant::now();
    let (mut ci, _) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    ci.ike_proposals.push(chacha_p256());
    let (mut i, first) = Session::initiator(ci, sock(I_ADDR), sock(R_ADDR), now).unwrap();
    let ask = |g: u16| {
        vec![notify(
            NotifyType::INVALID_KE_PAYLOAD,
            g.to_be_bytes().to_vec(),
        )]
    };
    let (retry, _) = split(i.handle(&response_to(&first, ask(19)), now).unwrap());
    assert_eq!(retry.len(), 1);
    // Asking again for the group we started with is not followed.
    let (s, ev) = split(i.handle(&response_to(&retry[0], ask(31)), now).unwrap());
    assert!(s.is_empty());
    assert_eq!(
        failed(&ev),
        Some(FailReason::PeerError(NotifyType::INVALID_KE_PAYLOAD))
    );
}

#[test]
fn unknown_critical_payload_in_encrypted_request() {
    let now = Instant::now();
    let (i, mut r, _first, _auth_req) = up_to_auth(now);
    // One payload of unknown type 200 with the critical bit set and an empty body.
    let plain = [0u8, 0x80, 0, 4];
    let msg = seal_raw(
        &i,
        i.header(ExchangeType::IKE_AUTH, false, 1),
        PayloadType(200),
        &plain,
    );
    let (s, ev) = split(r.handle(&msg, now).unwrap());
    assert_eq!(
        failed(&ev),
        Some(FailReason::LocalError(
            NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD
        ))
    );
    let payloads = i.open(&s[0]).ok().unwrap().payloads.unwrap();
    let n = find_notify(&payloads, NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD).unwrap();
    assert_eq!(n.data, vec![200]);
}

#[test]
fn psk_auth_matches_rfc7296_2_15_composition() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let psk = PSK;
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (init_resp, _) = split(r.handle(&first, now).unwrap());
    let (auth_req, _) = split(i.handle(&init_resp[0], now).unwrap());
    let keys = &r.prot.as_ref().unwrap().keys;
    let prf = PrfAlg::HmacSha256;
    let auth_of = |payloads: &[Payload]| {
        payloads
            .iter()
            .find_map(|p| match p {
                Payload::Auth(a) => Some(a.data.clone()),
                _ => None,
            })
            .unwrap()
    };
    let pad = prf.prf(psk, &[b"Key Pad for IKEv2"]).unwrap();

    // InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload).
    let rest_idi = [&[2u8, 0, 0, 0][..], b"initiator.example"].concat();
    let maced = prf.prf(keys.sk_pi(), &[&rest_idi]).unwrap();
    let signed = [&first[..], &nonce_of(&init_resp[0]), maced.expose()].concat();
    let expected = prf.prf(pad.expose(), &[&signed]).unwrap();
    let req = r.open(&auth_req[0]).ok().unwrap().payloads.unwrap();
    assert_eq!(auth_of(&req), expected.expose());

    // ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload).
    let (auth_resp, _) = split(r.handle(&auth_req[0], now).unwrap());
    let keys = &r.prot.as_ref().unwrap().keys;
    let rest_idr = [&[2u8, 0, 0, 0][..], b"responder.example"].concat();
    let maced = prf.prf(keys.sk_pr(), &[&rest_idr]).unwrap();
    let signed = [&init_resp[0][..], &nonce_of(&first), maced.expose()].concat();
    let expected = prf.prf(pad.expose(), &[&signed]).unwrap();
    let resp = i.open(&auth_resp[0]).ok().unwrap().payloads.unwrap();
    assert_eq!(auth_of(&resp), expected.expose());
}

#[test]
fn session_is_send_and_dropped_input_leaves_activity_alone() {
    fn check<T: Send>() {}
    check::<Session>();
    let t0 = Instant::now();
    let (_i, mut r, _first, auth_req) = up_to_auth(t0);
    let before = r.last_activity();
    let mut bad = auth_req.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let later = t0 + Duration::from_secs(30);
    let _ = r.handle(&bad, later).unwrap();
    let _ = r.handle(b"junk", later).unwrap();
    assert_eq!(r.last_activity(), before);
    let _ = r.handle(&auth_req, later).unwrap();
    assert_eq!(r.last_activity(), Some(later));
}

// ----- after IKE_AUTH: INFORMATIONAL, timeouts, CREATE_CHILD_SA -----

/// Both ends with the IKE SA and the first Child SA up at `t0`.
fn established() -> (Peer, Peer, ChildSa, ChildSa, Instant) {
    established_with(gcm_x25519(), (EspSuite::AesGcm16_128, false))
}

/// As [`established`], with these suites.
pub(super) fn established_with(
    ike: IkeSuite,
    esp: (EspSuite, bool),
) -> (Peer, Peer, ChildSa, ChildSa, Instant) {
    let t0 = Instant::now();
    let (ci, cr) = configs(ike, esp);
    let (mut i, mut r, first) = pair(ci, cr, t0);
    let (ie, re) = pump(&mut i, &mut r, first, t0);
    let (ic, rc) = (child(&ie).unwrap().clone(), child(&re).unwrap().clone());
    assert_eq!(i.child_sas().len(), 1);
    assert_eq!(r.child_sas().len(), 1);
    (i, r, ic, rc, t0)
}

/// Delivers one message, returning what the receiver sends.
pub(super) fn deliver(to: &mut Peer, msg: &[u8], now: Instant) -> Vec<Vec<u8>> {
    let (s, e) = split(to.handle(msg, now).unwrap());
    assert!(
        !e.iter().any(|e| matches!(
            e,
            SessionEvent::Dropped(_) | SessionEvent::IntegrityFailure | SessionEvent::Failed(_)
        )),
        "{e:?}"
    );
    s
}

/// Runs an exchange started by `a` with `req` to the end; returns the SA events of both.
pub(super) fn run(
    a: &mut Peer,
    b: &mut Peer,
    req: Vec<u8>,
    now: Instant,
) -> (Vec<SaEvent>, Vec<SaEvent>) {
    let (ae, be) = pump(a, b, req, now);
    assert!(
        failed(&ae).is_none() && failed(&be).is_none(),
        "{ae:?} {be:?}"
    );
    (a.take_sa_events(), b.take_sa_events())
}

pub(super) fn rekeyed(ev: &[SaEvent]) -> Option<(u32, u32, &ChildSa)> {
    ev.iter().find_map(|e| match e {
        SaEvent::ChildSaRekeyed {
            old_spi_in,
            old_spi_out,
            new,
            ..
        } => Some((*old_spi_in, *old_spi_out, new)),
        _ => None,
    })
}

pub(super) fn deleted(ev: &[SaEvent]) -> Vec<(u32, u32)> {
    ev.iter()
        .filter_map(|e| match e {
            SaEvent::ChildSaDeleted { spi_in, spi_out } => Some((*spi_in, *spi_out)),
            _ => None,
        })
        .collect()
}

pub(super) fn paired(a: &ChildSa, b: &ChildSa) {
    assert_eq!(a.spi_in, b.spi_out);
    assert_eq!(a.spi_out, b.spi_in);
    assert_eq!(a.keymat_in, b.keymat_out);
    assert_eq!(a.keymat_out, b.keymat_in);
    esp_roundtrip(a, b);
    esp_roundtrip(b, a);
}

pub(super) fn opened_payloads(by: &Session, msg: &[u8]) -> Vec<Payload> {
    by.open(msg).ok().unwrap().payloads.unwrap()
}

#[test]
fn r_6_7_a_liveness_check_both_directions() {
    let (mut i, mut r, _, _, t0) = established();
    let t = t0 + Duration::from_secs(1);
    dpd_roundtrip(&mut i, &mut r, t);
    dpd_roundtrip(&mut r, &mut i, t);
}

pub(super) fn dpd_roundtrip_raw(a: &mut Peer, b: &mut Peer, req: Vec<u8>, t: Instant) {
    let resp = deliver(b, &req, t);
    deliver(a, &resp[0], t);
    assert!(!a.has_outstanding());
}

pub(super) fn dpd_roundtrip(a: &mut Peer, b: &mut Peer, t: Instant) {
    let req = a.start_dpd(t).unwrap();
    assert!(a.has_outstanding());
    assert_eq!(a.start_dpd(t).unwrap_err(), SessionError::Busy, "window 1");
    assert!(opened_payloads(b, &req).is_empty(), "empty INFORMATIONAL");
    let resp = deliver(b, &req, t);
    assert_eq!(resp.len(), 1);
    assert!(opened_payloads(a, &resp[0]).is_empty(), "answered empty");
    assert!(deliver(a, &resp[0], t).is_empty());
    assert!(!a.has_outstanding());
    assert_eq!(a.last_inbound(), Some(t));
    assert_eq!(b.last_inbound(), Some(t));
    assert!(a.take_sa_events().is_empty() && b.take_sa_events().is_empty());
    assert!(a.is_established() && b.is_established());
}

#[test]
fn r_6_7_a_silence_triggers_liveness_check_via_timeout() {
    let (mut i, mut r, _, _, t0) = established();
    let due = t0 + Duration::from_secs(30);
    assert_eq!(i.poll_timeout(), Some(due));
    assert!(i.handle_timeout(due - Duration::from_millis(1)).is_empty());
    let (s, e) = split(i.handle_timeout(due));
    assert!(e.is_empty());
    assert_eq!(s.len(), 1);
    // The check is now outstanding: its exchange timeout is what counts.
    assert_eq!(i.poll_timeout(), Some(due + Duration::from_secs(30)));
    let resp = deliver(&mut r, &s[0], due);
    assert!(deliver(&mut i, &resp[0], due).is_empty());
    assert_eq!(i.poll_timeout(), Some(due + Duration::from_secs(30)));
    // Configurable interval.
    i.set_dpd_interval(Duration::from_secs(5));
    assert_eq!(i.poll_timeout(), Some(due + Duration::from_secs(5)));
}

/// One output list per call, in the order things happened (no separate event queue): a
/// timeout deletes the IKE SA, then reports the failure; a Child SA rekey is reported before the
/// Delete of the old SA it triggers; a CREATE_CHILD_SA answer comes before the new Child SA; an
/// INVALID_SYNTAX answer before the IKE SA is gone.
#[test]
fn lifecycle_events_come_in_the_call_outputs_in_order() {
    let (mut i, mut r, ic, _, t0) = established();
    let req = i.create_child(t0).unwrap();
    let out = r.s.handle(&req, t0).unwrap();
    assert!(
        matches!(
            &out[..],
            [Output::Send(_), Output::Sa(SaEvent::ChildSaCreated(_))]
        ),
        "{out:?}"
    );
    let Output::Send(resp) = &out[0] else {
        unreachable!()
    };
    let out = i.s.handle(resp, t0).unwrap();
    assert!(
        matches!(&out[..], [Output::Sa(SaEvent::ChildSaCreated(_))]),
        "{out:?}"
    );

    let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
    let resp = deliver(&mut r, &req, t0);
    let out = i.s.handle(&resp[0], t0).unwrap();
    assert!(
        matches!(
            &out[..],
            [Output::Sa(SaEvent::ChildSaRekeyed { old_spi_in, .. }), Output::Send(_)]
                if *old_spi_in == ic.spi_in
        ),
        "{out:?}"
    );

    let bad = malformed_request(&mut r, t0);
    let out = i.s.handle(&bad, t0).unwrap();
    assert!(
        matches!(
            &out[..],
            [
                Output::Send(_),
                Output::Sa(SaEvent::IkeSaDeleted),
                Output::Event(SessionEvent::Failed(FailReason::LocalError(
                    NotifyType::INVALID_SYNTAX
                )))
            ]
        ),
        "{out:?}"
    );

    // `r`'s request inside `malformed_request` goes unanswered.
    assert!(r.s.handle_timeout(t0).is_empty());
    let out = r.s.handle_timeout(t0 + Duration::from_secs(30));
    assert!(
        matches!(
            &out[..],
            [
                Output::Sa(SaEvent::IkeSaDeleted),
                Output::Event(SessionEvent::Failed(FailReason::Timeout))
            ]
        ),
        "{out:?}"
    );
    assert!(r.handle_timeout(t0 + Duration::from_secs(60)).is_empty());
}

#[test]
fn r_6_2_a_unanswered_request_deletes_ike_sa() {
    let (mut i, mut r, _, _, t0) = established();
    let t1 = t0 + Duration::from_secs(3);
    let _lost = i.start_dpd(t1).unwrap();
    assert_eq!(i.poll_timeout(), Some(t1 + Duration::from_secs(30)));
    assert!(
        i.handle_timeout(t1 + Duration::from_secs(29)).is_empty(),
        "no retransmission over TCP"
    );
    let (s, e) = split(i.handle_timeout(t1 + Duration::from_secs(30)));
    assert!(s.is_empty());
    assert_eq!(failed(&e), Some(FailReason::Timeout));
    assert!(matches!(i.take_sa_events()[..], [SaEvent::IkeSaDeleted]));
    assert!(i.is_deleted() && !i.is_established());
    assert!(i.child_sas().is_empty());
    assert_eq!(i.poll_timeout(), None);
    assert_eq!(i.start_dpd(t1).unwrap_err(), SessionError::NotEstablished);

    // A liveness check sent by the timer and never answered, with a shorter exchange timeout.
    r.set_exchange_timeout(Duration::from_secs(5));
    let due = t0 + Duration::from_secs(30);
    let (s, _) = split(r.handle_timeout(due));
    assert_eq!(s.len(), 1);
    assert_eq!(r.poll_timeout(), Some(due + Duration::from_secs(5)));
    let (_, e) = split(r.handle_timeout(due + Duration::from_secs(5)));
    assert_eq!(failed(&e), Some(FailReason::Timeout));
    assert!(r.is_deleted());
}

#[test]
fn handshake_request_times_out_too() {
    let t0 = Instant::now();
    let (ci, _) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, _first) = Session::initiator(ci, sock(I_ADDR), sock(R_ADDR), t0).unwrap();
    assert_eq!(i.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    let (_, e) = split(i.handle_timeout(t0 + Duration::from_secs(30)));
    assert_eq!(failed(&e), Some(FailReason::Timeout));
    assert!(i.is_failed());
}

#[test]
fn r_6_7_c_tcp_activity_and_unauthenticated_bytes_do_not_extend_liveness() {
    let (mut i, mut r, _, _, t0) = established();
    let due = t0 + Duration::from_secs(30);
    // TCP keepalives and other TCP activity reported by the caller: no effect on liveness.
    i.note_tcp_activity(t0 + Duration::from_secs(20));
    assert_eq!(i.last_tcp_activity(), Some(t0 + Duration::from_secs(20)));
    assert_eq!(i.poll_timeout(), Some(due));
    // Junk and forged IKE messages neither.
    let t = t0 + Duration::from_secs(25);
    let _ = i.handle(b"\0\0\0\0 keepalive-ish junk", t).unwrap();
    let mut forged = r.start_dpd(t).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (_, e) = split(i.handle(&forged, t).unwrap());
    assert!(matches!(e[..], [SessionEvent::IntegrityFailure]));
    assert_eq!(i.last_inbound(), Some(t0));
    assert_eq!(i.poll_timeout(), Some(due));
    let (s, _) = split(i.handle_timeout(due));
    assert_eq!(s.len(), 1, "liveness check sent despite TCP activity");
    // Inbound ESP reported by the caller does count.
    let (mut i, _, _, _, t0) = established();
    i.note_inbound_esp(t0 + Duration::from_secs(25));
    assert_eq!(i.poll_timeout(), Some(t0 + Duration::from_secs(55)));
    // And so does an authenticated IKE message.
    let (mut i, mut r, _, _, t0) = established();
    let t = t0 + Duration::from_secs(10);
    let req = r.start_dpd(t).unwrap();
    deliver(&mut i, &req, t);
    assert_eq!(i.poll_timeout(), Some(t + Duration::from_secs(30)));
}

#[test]
fn delete_child_both_directions() {
    for from_initiator in [true, false] {
        let (mut i, mut r, ic, rc, t0) = established();
        let (a, b, ac, bc) = if from_initiator {
            (&mut i, &mut r, &ic, &rc)
        } else {
            (&mut r, &mut i, &rc, &ic)
        };
        assert_eq!(
            a.delete_child(12345, t0).unwrap_err(),
            SessionError::UnknownChildSa
        );
        let req = a.delete_child(ac.spi_in, t0).unwrap();
        let p = opened_payloads(b, &req);
        assert!(matches!(&p[..], [Payload::Delete(d)] if d.spis == [ac.spi_in]));
        let resp = deliver(b, &req, t0);
        let p = opened_payloads(a, &resp[0]);
        assert!(
            matches!(&p[..], [Payload::Delete(d)] if d.spis == [bc.spi_in]),
            "answered with the paired SA"
        );
        deliver(a, &resp[0], t0);
        assert_eq!(deleted(&a.take_sa_events()), [(ac.spi_in, ac.spi_out)]);
        assert_eq!(deleted(&b.take_sa_events()), [(bc.spi_in, bc.spi_out)]);
        assert!(a.child_sas().is_empty() && b.child_sas().is_empty());
        assert!(a.is_established() && b.is_established());
    }
}

#[test]
fn delete_ike_both_directions() {
    for from_initiator in [true, false] {
        let (mut i, mut r, _, _, t0) = established();
        let (a, b) = if from_initiator {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        let req = a.delete_ike(t0).unwrap();
        let resp = deliver(b, &req, t0);
        assert!(opened_payloads(a, &resp[0]).is_empty(), "answered empty");
        assert!(b.is_deleted());
        deliver(a, &resp[0], t0);
        assert!(a.is_deleted());
        for s in [a, b] {
            assert!(matches!(s.take_sa_events()[..], [SaEvent::IkeSaDeleted]));
            assert_eq!(s.poll_timeout(), None);
            assert!(s.child_sas().is_empty());
        }
        // The cached answer still serves a retransmitted Delete; anything else is refused.
        let (again, _) = split(
            b_of(&mut i, &mut r, from_initiator)
                .handle(&req, t0)
                .unwrap(),
        );
        assert_eq!(again, resp);
    }
}

fn b_of<'a>(i: &'a mut Peer, r: &'a mut Peer, from_initiator: bool) -> &'a mut Peer {
    if from_initiator { r } else { i }
}

#[test]
fn child_rekey_with_and_without_pfs_from_each_side() {
    for (from_initiator, pfs) in [(true, false), (true, true), (false, false), (false, true)] {
        let (mut i, mut r, ic, rc, t0) = established();
        let (a, b, ac, bc) = if from_initiator {
            (&mut i, &mut r, &ic, &rc)
        } else {
            (&mut r, &mut i, &rc, &ic)
        };
        let req = a.rekey_child(ac.spi_in, pfs, t0).unwrap();
        let p = opened_payloads(b, &req);
        let rekey = find_notify(&p, NotifyType::REKEY_SA).unwrap();
        assert_eq!(rekey.spi, Spi::U32(ac.spi_in));
        assert_eq!(rekey.protocol, ProtocolId::ESP);
        assert_eq!(p.iter().any(|p| matches!(p, Payload::Ke(_))), pfs);
        let (ae, be) = run(a, b, req, t0);
        let (old_in, old_out, an) = rekeyed(&ae).unwrap();
        assert_eq!((old_in, old_out), (ac.spi_in, ac.spi_out));
        let (old_in, old_out, bn) = rekeyed(&be).unwrap();
        assert_eq!((old_in, old_out), (bc.spi_in, bc.spi_out));
        paired(an, bn);
        assert_ne!(an.keymat_in, ac.keymat_in);
        // The rekey initiator deleted the old pair.
        assert_eq!(deleted(&ae), [(ac.spi_in, ac.spi_out)]);
        assert_eq!(deleted(&be), [(bc.spi_in, bc.spi_out)]);
        assert_eq!(a.child_sas().len(), 1);
        assert_eq!(b.child_sas().len(), 1);
        assert_eq!(a.child_sas()[0].spi_in, an.spi_in);
    }
}

fn nonce_in(p: &[Payload]) -> Vec<u8> {
    p.iter()
        .find_map(|p| match p {
            Payload::Nonce(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn child_rekey_keymat_is_rfc7296_2_17_with_and_without_pfs() {
    for pfs in [false, true] {
        let (mut i, mut r, ic, _, t0) = established();
        let req = i.rekey_child(ic.spi_in, pfs, t0).unwrap();
        let ni = nonce_in(&opened_payloads(&r, &req));
        let resp = deliver(&mut r, &req, t0);
        let nr = nonce_in(&opened_payloads(&i, &resp[0]));
        deliver(&mut i, &resp[0], t0);
        let ev = i.take_sa_events();
        let (_, _, new) = rekeyed(&ev).unwrap();
        // KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS; the
        // rekeying exchange's initiator takes the initiator-to-responder keys first.
        let lengths = ChildKeyLengths {
            encr: new.suite.keymat_len(),
            integ: 0,
        };
        let keys = &i.prot.as_ref().unwrap().keys;
        let no_pfs = keys.child_sa_keys(None, &ni, &nr, lengths).unwrap();
        assert_eq!(
            new.keymat_out.expose() == no_pfs.encr_i_to_r(),
            !pfs,
            "pfs={pfs}"
        );
        assert_eq!(new.keymat_in.expose() == no_pfs.encr_r_to_i(), !pfs);
    }
}

#[test]
fn additional_child_sa() {
    let (mut i, mut r, ic, _, t0) = established();
    let req = r.create_child(t0).unwrap();
    let (re, ie) = run(&mut r, &mut i, req, t0);
    let created = |ev: &[SaEvent]| {
        ev.iter()
            .find_map(|e| match e {
                SaEvent::ChildSaCreated(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap()
    };
    let (rn, inew) = (created(&re), created(&ie));
    paired(&rn, &inew);
    assert_eq!(i.child_sas().len(), 2);
    assert_eq!(r.child_sas().len(), 2);
    assert_ne!(inew.spi_in, ic.spi_in);
}

/// The peer picks another group for the new IKE SA: it answers INVALID_KE_PAYLOAD naming it,
/// and the rekey is retried once with a KE of that group (RFC 7296 §1.3.2, §1.2).
#[test]
fn ike_rekey_invalid_ke_payload_retried_with_the_requested_group() {
    let (mut i, mut r, _, _, t0) = established();
    let suite = |g| IkeSuite::new(EncrAlg::AesGcm16_256, PrfAlg::HmacSha256, None, g).unwrap();
    i.cfg.ike_proposals = vec![suite(DhGroup::Curve25519), suite(DhGroup::Ecp256)];
    r.cfg.ike_proposals = vec![suite(DhGroup::Ecp256)];
    let req = i.rekey_ike(t0).unwrap();
    let answer = deliver(&mut r, &req, t0);
    assert!(r.take_sa_events().is_empty(), "nothing changes at the peer");
    let retry = deliver(&mut i, &answer[0], t0);
    assert_eq!(retry.len(), 1, "retried once");
    let (ie, re) = run(&mut i, &mut r, retry[0].clone(), t0);
    for ev in [&ie, &re] {
        assert!(
            ev.iter().any(|e| matches!(e, SaEvent::IkeSaRekeyed { .. })),
            "{ev:?}"
        );
    }
    assert_eq!(i.suite().map(|s| s.dh()), Some(DhGroup::Ecp256));
    assert_eq!(i.spis(), r.spis());

    // A group we do not have is not retried: the rekey is refused, the IKE SA stays.
    let (mut i, mut r, _, _, t0) = established();
    r.cfg.ike_proposals = vec![suite(DhGroup::Ecp384)];
    i.cfg.ike_proposals.push(suite(DhGroup::Ecp384));
    let req = i.rekey_ike(t0).unwrap();
    let answer = deliver(&mut r, &req, t0);
    i.cfg.ike_proposals.retain(|s| s.dh() != DhGroup::Ecp384);
    assert!(deliver(&mut i, &answer[0], t0).is_empty());
    assert!(matches!(
        i.take_sa_events()[..],
        [SaEvent::IkeRekeyRefused(NotifyType::INVALID_KE_PAYLOAD)]
    ));
    assert!(i.is_established());
}

#[test]
fn r_1_2_a_ike_rekey_by_responder_keeps_tcp_roles() {
    let (mut i, mut r, ic, _, t0) = established();
    let old_spis = i.spis();
    let old_dpd = i.start_dpd(t0).unwrap();
    let old_resp = deliver(&mut r, &old_dpd, t0);
    deliver(&mut i, &old_resp[0], t0);

    let req = r.rekey_ike(t0).unwrap();
    let (re, ie) = run(&mut r, &mut i, req, t0);
    let new_spis = r.spis();
    assert_eq!(i.spis(), new_spis);
    assert_ne!(new_spis.0, old_spis.0);
    assert_ne!(new_spis.1, old_spis.1);
    for ev in [&re, &ie] {
        assert!(
            ev.iter()
                .any(|e| matches!(e, SaEvent::IkeSaRekeyed { spi_i, spi_r }
                if (*spi_i, *spi_r) == new_spis)),
            "{ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| matches!(e, SaEvent::OldIkeSaDeleted { spi_i, spi_r }
                if (*spi_i, *spi_r) == old_spis)),
            "{ev:?}"
        );
    }
    // The rekeying responder is the new IKE SA's initiator; the TCP roles stay (R-1.2-a).
    assert_eq!(r.role(), Role::Initiator);
    assert_eq!(i.role(), Role::Responder);
    assert_eq!(r.tcp_role(), Role::Responder);
    assert_eq!(i.tcp_role(), Role::Initiator);
    // INFORMATIONAL works on the new IKE SA, both ways, from Message ID 0.
    for from_i in [true, false] {
        let (a, b) = if from_i {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        let req = a.start_dpd(t0).unwrap();
        assert_eq!(&req[20..24], &0u32.to_be_bytes());
        assert_eq!(
            u64::from_be_bytes(req[0..8].try_into().unwrap()),
            new_spis.0
        );
        dpd_roundtrip_raw(a, b, req, t0);
    }
    // The old IKE SA is gone: a message on it is dropped.
    let (s, e) = split(r.handle(&old_dpd, t0).unwrap());
    assert!(s.is_empty());
    assert!(matches!(e[..], [SessionEvent::Dropped(_)]));
    // Child SAs survive and rekey with the new IKE SA's SK_d.
    let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
    let (ie, re) = run(&mut i, &mut r, req, t0);
    paired(rekeyed(&ie).unwrap().2, rekeyed(&re).unwrap().2);
}

#[test]
fn simultaneous_child_rekey_leaves_exactly_one_new_sa() {
    // The nonces are random: several rounds see both sides win.
    for pfs in [false, true, false, true, false, true] {
        let (mut i, mut r, ic, rc, t0) = established();
        let a = i.rekey_child(ic.spi_in, pfs, t0).unwrap();
        let b = r.rekey_child(rc.spi_in, pfs, t0).unwrap();
        // Both requests cross; each side answers the other's before its own answer arrives.
        let resp_a = deliver(&mut r, &a, t0);
        let resp_b = deliver(&mut i, &b, t0);
        let del_i = deliver(&mut i, &resp_a[0], t0);
        let del_r = deliver(&mut r, &resp_b[0], t0);
        assert_eq!((del_i.len(), del_r.len()), (1, 1));
        let ans_r = deliver(&mut r, &del_i[0], t0);
        let ans_i = deliver(&mut i, &del_r[0], t0);
        deliver(&mut i, &ans_r[0], t0);
        deliver(&mut r, &ans_i[0], t0);
        assert!(!i.has_outstanding() && !r.has_outstanding());
        assert_eq!(i.child_sas().len(), 1, "{:?}", i.child_sas());
        assert_eq!(r.child_sas().len(), 1, "{:?}", r.child_sas());
        let (ni, nr) = (&i.child_sas()[0], &r.child_sas()[0]);
        assert_ne!(ni.spi_in, ic.spi_in);
        paired(ni, nr);
    }
}

#[test]
fn simultaneous_child_rekey_with_a_delete_ahead_of_the_response_leaves_one_new_sa() {
    // As above, but the side that answered first sends its Delete before that answer leaves
    // (a responder's answer waits for its SA install, a request does not): the other side
    // learns the old SA is gone before its own rekey completes. The nonces must still decide,
    // or both new SAs survive and the Child SA forks into two (seen in the soak).
    let mut outcomes = [false, false];
    for round in 0..32 {
        let (mut a, mut b, ac, bc, t0) = established();
        let req_a = a.rekey_child(ac.spi_in, false, t0).unwrap();
        let req_b = b.rekey_child(bc.spi_in, false, t0).unwrap();
        // A answers B's request; that answer is held back.
        let resp_b = deliver(&mut a, &req_b, t0);
        // B answers A's request (a collision at B too); A's rekey completes.
        let resp_a = deliver(&mut b, &req_a, t0);
        let del_a = deliver(&mut a, &resp_a[0], t0);
        assert_eq!(del_a.len(), 1);
        let own_a = a
            .take_sa_events()
            .into_iter()
            .find_map(|e| match e {
                SaEvent::ChildSaRekeyed {
                    new,
                    initiator: true,
                    ..
                } => Some(new.spi_in),
                _ => None,
            })
            .unwrap();
        // A's Delete reaches B before A's held answer.
        let ans = deliver(&mut b, &del_a[0], t0);
        deliver(&mut a, &ans[0], t0);
        // Now B's rekey completes.
        let del_b = deliver(&mut b, &resp_b[0], t0);
        for d in del_b {
            let ans = deliver(&mut a, &d, t0);
            deliver(&mut b, &ans[0], t0);
        }
        assert!(
            !a.has_outstanding() && !b.has_outstanding(),
            "round {round}"
        );
        assert_eq!(a.child_sas().len(), 1, "round {round}: {:?}", a.child_sas());
        assert_eq!(b.child_sas().len(), 1, "round {round}: {:?}", b.child_sas());
        let (na, nb) = (&a.child_sas()[0], &b.child_sas()[0]);
        assert_ne!(na.spi_in, ac.spi_in);
        paired(na, nb);
        // Which side's new SA survived (both cases must come up across the rounds).
        outcomes[usize::from(na.spi_in == own_a)] = true;
    }
    assert_eq!(outcomes, [true, true], "both nonce orders were seen");
}

#[test]
fn rekey_colliding_with_ike_rekey_gets_temporary_failure() {
    let (mut i, mut r, ic, _, t0) = established();
    let _ike = r.rekey_ike(t0).unwrap();
    let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
    let resp = deliver(&mut r, &req, t0);
    assert!(
        find_notify(
            &opened_payloads(&i, &resp[0]),
            NotifyType::TEMPORARY_FAILURE
        )
        .is_some()
    );
    deliver(&mut i, &resp[0], t0);
    assert!(matches!(
        i.take_sa_events()[..],
        [SaEvent::ChildSaRefused(NotifyType::TEMPORARY_FAILURE)]
    ));
    assert_eq!(i.child_sas().len(), 1);
    assert!(i.is_established());
}

#[test]
fn rekey_colliding_with_delete_temporary_failure_or_child_sa_not_found() {
    // §2.25.1: the Child SA is being deleted by the responder: TEMPORARY_FAILURE.
    let (mut i, mut r, ic, _, t0) = established();
    let spi = r.child_sas()[0].spi_in;
    let _del = r.delete_child(spi, t0).unwrap();
    let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
    let resp = deliver(&mut r, &req, t0);
    let p = opened_payloads(&i, &resp[0]);
    assert!(find_notify(&p, NotifyType::TEMPORARY_FAILURE).is_some());

    // The Delete completed before the rekey request arrived: CHILD_SA_NOT_FOUND.
    let (mut i, mut r, ic, _, t0) = established();
    let spi = r.child_sas()[0].spi_in;
    let del = r.delete_child(spi, t0).unwrap();
    let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
    let ans = deliver(&mut i, &del, t0);
    deliver(&mut r, &ans[0], t0);
    let resp = deliver(&mut r, &req, t0);
    let p = opened_payloads(&i, &resp[0]);
    assert!(find_notify(&p, NotifyType::CHILD_SA_NOT_FOUND).is_some());
    deliver(&mut i, &resp[0], t0);
    assert!(i.child_sas().is_empty() && r.child_sas().is_empty());
    assert!(
        i.take_sa_events()
            .iter()
            .any(|e| matches!(e, SaEvent::ChildSaRefused(NotifyType::CHILD_SA_NOT_FOUND)))
    );
}

#[test]
fn established_replayed_and_old_message_ids_dropped() {
    let (mut i, mut r, _, _, t0) = established();
    let first = i.start_dpd(t0).unwrap();
    let first_resp = deliver(&mut r, &first, t0);
    deliver(&mut i, &first_resp[0], t0);
    let second = i.start_dpd(t0).unwrap();
    let second_resp = deliver(&mut r, &second, t0);
    deliver(&mut i, &second_resp[0], t0);
    // The last request again: a retransmission, answered from the cache bit for bit.
    let (again, e) = split(r.handle(&second, t0).unwrap());
    assert_eq!(again, second_resp);
    assert!(e.is_empty());
    // An older one: dropped.
    let (s, e) = split(r.handle(&first, t0).unwrap());
    assert!(s.is_empty());
    assert!(matches!(
        e[..],
        [SessionEvent::Dropped(DropReason::UnexpectedMessageId)]
    ));
    // A replayed response with nothing outstanding: dropped.
    let (s, e) = split(i.handle(&second_resp[0], t0).unwrap());
    assert!(s.is_empty());
    assert!(matches!(
        e[..],
        [SessionEvent::Dropped(DropReason::UnexpectedMessageId)]
    ));
    // The Message IDs continue normally.
    let third = i.start_dpd(t0).unwrap();
    assert_eq!(&third[20..24], &4u32.to_be_bytes());
    deliver(&mut r, &third, t0);
}

#[test]
fn established_tampered_messages_dropped_without_state_change() {
    let (mut i, mut r, ic, _, t0) = established();
    let req = i.delete_child(ic.spi_in, t0).unwrap();
    let mut bad = req.clone();
    let mid = bad.len() - 10;
    bad[mid] ^= 0x04;
    let (s, e) = split(r.handle(&bad, t0 + Duration::from_secs(9)).unwrap());
    assert!(s.is_empty());
    assert!(matches!(e[..], [SessionEvent::IntegrityFailure]));
    assert_eq!(r.child_sas().len(), 1);
    assert_eq!(r.last_inbound(), Some(t0));
    assert!(r.take_sa_events().is_empty());
    let resp = deliver(&mut r, &req, t0);
    let mut bad = resp[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    let (s, e) = split(i.handle(&bad, t0).unwrap());
    assert!(s.is_empty());
    assert!(matches!(e[..], [SessionEvent::IntegrityFailure]));
    assert!(i.has_outstanding());
    assert_eq!(i.child_sas().len(), 1);
    deliver(&mut i, &resp[0], t0);
    assert!(i.child_sas().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn established_garbage_and_mutations_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        pos in any::<usize>(),
        xor in 1u8..=255,
        pick in 0u8..4,
    ) {
        let (mut i, mut r, ic, _, t0) = established();
        let _ = r.handle(&bytes, t0);
        let _ = i.handle(&bytes, t0);
        let req = match pick {
            0 => i.start_dpd(t0),
            1 => i.rekey_child(ic.spi_in, true, t0),
            2 => i.rekey_ike(t0),
            _ => i.delete_child(ic.spi_in, t0),
        }
        .unwrap();
        let _ = r.handle(&mutate(&req, pos, xor), t0);
        let resp = r.handle(&req, t0).unwrap();
        for o in resp {
            if let Output::Send(m) = o {
                let _ = i.handle(&mutate(&m, pos, xor), t0);
                let _ = i.handle(&m, t0);
            }
        }
        let _ = i.handle_timeout(t0 + Duration::from_secs(3600));
    }
}

#[test]
fn ike_rekey_by_original_initiator_then_child_rekey_and_delete() {
    let (mut i, mut r, ic, rc, t0) = established();
    let old = i.spis();
    let req = i.rekey_ike(t0).unwrap();
    let (ie, re) = run(&mut i, &mut r, req, t0);
    assert!(
        ie.iter()
            .any(|e| matches!(e, SaEvent::OldIkeSaDeleted { .. }))
    );
    assert!(
        re.iter()
            .any(|e| matches!(e, SaEvent::OldIkeSaDeleted { .. }))
    );
    assert_ne!(i.spis(), old);
    assert_eq!(i.spis(), r.spis());
    assert_eq!((i.role(), r.role()), (Role::Initiator, Role::Responder));
    assert_eq!(
        (i.tcp_role(), r.tcp_role()),
        (Role::Initiator, Role::Responder)
    );
    let req = r.rekey_child(rc.spi_in, true, t0).unwrap();
    let (re, ie) = run(&mut r, &mut i, req, t0);
    paired(rekeyed(&re).unwrap().2, rekeyed(&ie).unwrap().2);
    assert_eq!(deleted(&ie), [(ic.spi_in, ic.spi_out)]);
    let req = i.delete_ike(t0).unwrap();
    run(&mut i, &mut r, req, t0);
    assert!(i.is_deleted() && r.is_deleted());
}

#[test]
fn simultaneous_ike_rekey_nonces_decide_one_survivor() {
    // The nonces are random: several rounds see both sides win.
    for _ in 0..6 {
        let (mut i, mut r, ic, _, t0) = established();
        let old = i.spis();
        let a = i.rekey_ike(t0).unwrap();
        let b = r.rekey_ike(t0).unwrap();
        let resp_a = deliver(&mut r, &a, t0);
        let resp_b = deliver(&mut i, &b, t0);
        let del_i = deliver(&mut i, &resp_a[0], t0);
        let del_r = deliver(&mut r, &resp_b[0], t0);
        assert_eq!((del_i.len(), del_r.len()), (1, 1));
        let ans_r = deliver(&mut r, &del_i[0], t0);
        let ans_i = deliver(&mut i, &del_r[0], t0);
        deliver(&mut i, &ans_r[0], t0);
        deliver(&mut r, &ans_i[0], t0);
        assert_eq!(i.spis(), r.spis());
        assert_ne!(i.spis(), old);
        assert_ne!(i.role(), r.role());
        assert_eq!(
            (i.tcp_role(), r.tcp_role()),
            (Role::Initiator, Role::Responder)
        );
        for s in [&mut i, &mut r] {
            let ev = s.take_sa_events();
            let gone = ev
                .iter()
                .filter(|e| matches!(e, SaEvent::OldIkeSaDeleted { .. }))
                .count();
            assert_eq!(gone, 2, "old and redundant IKE SA deleted: {ev:?}");
            assert!(ev.iter().any(|e| matches!(e, SaEvent::IkeSaRekeyed { .. })));
        }
        dpd_roundtrip(&mut i, &mut r, t0);
        dpd_roundtrip(&mut r, &mut i, t0);
        let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
        let (ie, re) = run(&mut i, &mut r, req, t0);
        paired(rekeyed(&ie).unwrap().2, rekeyed(&re).unwrap().2);
    }
}

#[test]
fn unanswered_delete_of_replaced_ike_sa_times_out_alone() {
    let (mut i, mut r, _, _, t0) = established();
    let req = r.rekey_ike(t0).unwrap();
    let resp = deliver(&mut i, &req, t0);
    let del = deliver(&mut r, &resp[0], t0);
    assert_eq!(del.len(), 1, "Delete of the old IKE SA, lost");
    r.take_sa_events();
    let due = t0 + Duration::from_secs(30);
    assert_eq!(r.poll_timeout(), Some(due));
    let (s, e) = split(r.handle_timeout(due));
    // The new IKE SA's liveness check is due at the same time; the old SA is just dropped.
    assert_eq!(s.len(), 1);
    assert!(failed(&e).is_none());
    assert!(matches!(
        r.take_sa_events()[..],
        [SaEvent::OldIkeSaDeleted { .. }]
    ));
    assert!(r.is_established());
    dpd_roundtrip_raw(&mut r, &mut i, s[0].clone(), due);
}

/// R-7.5-a: every message of a handshake is one unfragmented SK (or plain IKE_SA_INIT) message,
/// even an IKE_AUTH request well over 1,500 octets, and nobody offers IKE fragmentation.
#[test]
fn r_7_5_a_large_ike_auth_sent_as_one_sk_message_never_fragmented() {
    let now = Instant::now();
    let (mut ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    // 2 × 64 selectors (the codec's bound per payload): well over 1,500 octets.
    ci.ts_local = (0..64u8)
        .map(|k| ts4([198, 51, 100, 4 * k], [198, 51, 100, 4 * k + 3]))
        .collect();
    ci.ts_remote = (0..64u8)
        .map(|k| ts4([203, 0, 113, 4 * k], [203, 0, 113, 4 * k + 3]))
        .collect();
    cr.ts_local = ci.ts_remote.clone();
    cr.ts_remote = ci.ts_local.clone();
    let (mut i, mut r, first) = pair(ci, cr, now);
    let mut seen = Vec::new();
    let no_frag_support = |m: &[u8]| {
        if let Ok(msg) = Message::parse(m) {
            assert!(
                find_notify(&msg.payloads, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_none()
            );
        }
    };
    no_frag_support(&first);
    let (s, _) = split(r.handle(&first, now).unwrap());
    no_frag_support(&s[0]);
    let (auth, _) = split(i.handle(&s[0], now).unwrap());
    assert_eq!(auth.len(), 1, "one IKE_AUTH request");
    assert!(auth[0].len() > 1500, "{} octets", auth[0].len());
    seen.push(auth[0].clone());
    let (resp, re) = split(r.handle(&auth[0], now).unwrap());
    assert!(ike_up(&re));
    seen.extend(resp.iter().cloned());
    let (_, ie) = split(i.handle(&resp[0], now).unwrap());
    assert!(ike_up(&ie));
    for m in &seen {
        let l = locate_encrypted(m).unwrap().unwrap();
        assert_eq!(l.kind, PayloadType::SK, "never SKF");
        let opened = match r.open(m) {
            Ok(o) => o,
            Err(_) => i.open(m).ok().unwrap(),
        };
        let payloads = opened.payloads.unwrap();
        assert!(find_notify(&payloads, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_none());
    }
}

/// The IKE_AUTH request of `auth_req` split into `n` SKF fragments sealed with `i`'s keys.
fn fragments(i: &Session, r: &Session, auth_req: &[u8], n: u16) -> Vec<Vec<u8>> {
    let opened = r.open(auth_req).ok().unwrap();
    let header = Header::parse(auth_req).unwrap().header;
    let plain = opened.plain.to_vec();
    let chunk = plain.len().div_ceil(usize::from(n));
    let keys = &i.prot.as_ref().unwrap().keys;
    plain
        .chunks(chunk)
        .enumerate()
        .map(|(k, c)| {
            let num = u16::try_from(k + 1).unwrap();
            let first = if num == 1 {
                opened.first
            } else {
                PayloadType(0)
            };
            frag::seal_fragment(keys, Role::Initiator, header, first, num, n, c).unwrap()
        })
        .collect()
}

fn deliver_frag(r: &mut Peer, m: &[u8], now: Instant) -> (Vec<Vec<u8>>, Vec<SessionEvent>) {
    split(r.handle(m, now).unwrap())
}

fn is_dropped(ev: &[SessionEvent]) -> bool {
    matches!(ev, [SessionEvent::Dropped(_)])
}

/// R-7.5-b: an IKE_AUTH request arriving as 3 SKF fragments, in any order, completes the
/// handshake; duplicate, inconsistent, oversized, late or forged fragments change nothing.
#[test]
fn r_7_5_b_fragmented_ike_auth_reassembled_in_any_order() {
    for (ike, order) in [
        (gcm_x25519(), [0usize, 1, 2]),
        (gcm_x25519(), [2, 0, 1]),
        (chacha_p256(), [1, 2, 0]),
        (cbc_modp(), [2, 1, 0]),
    ] {
        let now = Instant::now();
        let (ci, cr) = configs(ike, (EspSuite::AesGcm16_128, false));
        let (mut i, mut r, first) = pair(ci, cr, now);
        let (s, _) = split(r.handle(&first, now).unwrap());
        let (auth, _) = split(i.handle(&s[0], now).unwrap());
        let frags = fragments(&i, &r, &auth[0], 3);
        assert_eq!(frags.len(), 3);
        for (k, &n) in order.iter().enumerate() {
            let (s, ev) = deliver_frag(&mut r, &frags[n], now);
            if k < 2 {
                assert!(s.is_empty() && ev.is_empty(), "{ev:?}");
                assert!(!r.is_established());
                // A duplicate is dropped.
                let (s, ev) = deliver_frag(&mut r, &frags[n], now);
                assert!(s.is_empty() && is_dropped(&ev), "{ev:?}");
            } else {
                assert_eq!(s.len(), 1);
                assert!(ike_up(&ev), "{ev:?}");
                let (_, ie) = split(i.handle(&s[0], now).unwrap());
                assert!(ike_up(&ie));
                // The response is one SK message (R-7.5-a).
                assert_eq!(
                    locate_encrypted(&s[0]).unwrap().unwrap().kind,
                    PayloadType::SK
                );
            }
        }
    }
}

#[test]
fn r_7_5_b_bad_fragment_sets_dropped_without_state_change() {
    let now = Instant::now();
    let (i, mut r, _first, auth_req) = up_to_auth(now);
    let keys = &i.prot.as_ref().unwrap().keys;
    let header = Header::parse(&auth_req).unwrap().header;
    let frags = fragments(&i, &r, &auth_req, 3);
    let unchanged = |r: &Session| {
        assert!(!r.is_established() && !r.is_failed());
        assert_eq!(r.message_id, 1);
    };
    // Too many fragments, fragment number out of range, Next Payload rules.
    for (first, num, total) in [
        (PayloadType::IDI, 1u16, 65u16),
        (PayloadType(0), 4, 3),
        (PayloadType(0), 0, 3),
        (PayloadType(0), 1, 3),
        (PayloadType::IDI, 2, 3),
    ] {
        let m =
            frag::seal_fragment(keys, Role::Initiator, header, first, num, total, b"xyz").unwrap();
        let (s, ev) = deliver_frag(&mut r, &m, now);
        assert!(s.is_empty() && is_dropped(&ev), "{num}/{total}: {ev:?}");
        unchanged(&r);
    }
    // Inconsistent Total Fragments within one set.
    let (_, ev) = deliver_frag(&mut r, &frags[0], now);
    assert!(ev.is_empty());
    let m =
        frag::seal_fragment(keys, Role::Initiator, header, PayloadType(0), 2, 4, b"xyz").unwrap();
    let (s, ev) = deliver_frag(&mut r, &m, now);
    assert!(s.is_empty() && is_dropped(&ev));
    // A forged fragment fails integrity.
    let mut bad = frags[1].clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (s, ev) = deliver_frag(&mut r, &bad, now);
    assert!(s.is_empty() && matches!(ev[..], [SessionEvent::IntegrityFailure]));
    unchanged(&r);
    // The genuine set still completes.
    let (_, ev) = deliver_frag(&mut r, &frags[2], now);
    assert!(ev.is_empty());
    let (s, ev) = deliver_frag(&mut r, &frags[1], now);
    assert_eq!(s.len(), 1);
    assert!(ike_up(&ev));
}

#[test]
fn r_7_5_b_oversized_late_and_early_fragments_dropped() {
    let now = Instant::now();
    let (i, mut r, _first, auth_req) = up_to_auth(now);
    let keys = &i.prot.as_ref().unwrap().keys;
    let header = Header::parse(&auth_req).unwrap().header;
    // More than 64 KiB of reassembled data: the set is discarded.
    let big = vec![0u8; 40_000];
    let m1 =
        frag::seal_fragment(keys, Role::Initiator, header, PayloadType::IDI, 1, 3, &big).unwrap();
    let m2 =
        frag::seal_fragment(keys, Role::Initiator, header, PayloadType(0), 2, 3, &big).unwrap();
    let (_, ev) = deliver_frag(&mut r, &m1, now);
    assert!(ev.is_empty());
    let (s, ev) = deliver_frag(&mut r, &m2, now);
    assert!(s.is_empty() && is_dropped(&ev));
    assert!(r.frags.is_none());
    assert!(!r.is_established() && !r.is_failed());
    // An incomplete set times out: late fragments start a new set instead of completing it.
    let frags = fragments(&i, &r, &auth_req, 3);
    deliver_frag(&mut r, &frags[0], now);
    deliver_frag(&mut r, &frags[1], now);
    let later = now + frag::REASSEMBLY_TIMEOUT + Duration::from_secs(1);
    let (s, ev) = deliver_frag(&mut r, &frags[2], later);
    assert!(s.is_empty() && ev.is_empty());
    assert!(!r.is_established());
    deliver_frag(&mut r, &frags[0], later);
    let (s, ev) = deliver_frag(&mut r, &frags[1], later);
    assert_eq!(s.len(), 1);
    assert!(ike_up(&ev));
    // No fragments before the IKE SA keys exist (IKE_SA_INIT is never fragmented).
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (_i2, mut fresh, _) = pair(ci, cr, now);
    let (s, ev) = deliver_frag(&mut fresh, &frags[0], now);
    assert!(s.is_empty() && is_dropped(&ev));
}

// ----- R-6.1-q after IKE_AUTH: INVALID_SYNTAX is fatal in both peers (RFC 7296 §2.21.3) -----

/// An inner chain whose first payload's length runs past the chain.
const BAD_CHAIN: [u8; 8] = [0u8, 0, 0, 200, 2, 0, 0, 0];

/// For tests elsewhere in the crate: an authenticated INFORMATIONAL request from `from` (under
/// its next Message ID) whose inner payload chain is malformed (R-6.1-q).
pub(crate) fn malformed_request(from: &mut Session, now: Instant) -> Vec<u8> {
    let _genuine = from.start_dpd(now).unwrap();
    let id = from.life.own_next_id - 1;
    seal_raw(
        from,
        from.header(ExchangeType::INFORMATIONAL, false, id),
        PayloadType::IDI,
        &BAD_CHAIN,
    )
}

fn ike_deleted_event(s: &mut Peer) -> bool {
    matches!(s.take_sa_events()[..], [SaEvent::IkeSaDeleted])
}

/// R-6.1-q: an authenticated request whose payloads do not parse is answered with an encrypted
/// N(INVALID_SYNTAX) (the answer comes first, it is not a TCP close), then the answering side
/// deletes the IKE SA; the requester deletes it when that answer arrives. Both directions.
#[test]
fn r_6_1_q_authenticated_malformed_request_invalid_syntax_then_ike_sa_deleted() {
    for from_initiator in [true, false] {
        let (mut i, mut r, _, _, t0) = established();
        let (a, b) = if from_initiator {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        // `a` has a request outstanding; what reaches `b` under its Message ID is malformed.
        let _genuine = a.start_dpd(t0).unwrap();
        let id = a.life.own_next_id - 1;
        let bad = seal_raw(
            a,
            a.header(ExchangeType::INFORMATIONAL, false, id),
            PayloadType::IDI,
            &BAD_CHAIN,
        );
        let out = b.handle(&bad, t0).unwrap();
        assert!(matches!(out.first(), Some(Output::Send(_))), "answer first");
        let (s, ev) = split(out);
        assert_eq!(s.len(), 1);
        assert_eq!(
            failed(&ev),
            Some(FailReason::LocalError(NotifyType::INVALID_SYNTAX))
        );
        assert!(ike_deleted_event(b));
        assert!(b.is_deleted() && b.child_sas().is_empty());
        assert_eq!(b.poll_timeout(), None);
        // The answer is encrypted under the IKE SA and carries INVALID_SYNTAX.
        assert_eq!(
            locate_encrypted(&s[0]).unwrap().unwrap().kind,
            PayloadType::SK
        );
        let p = opened_payloads(a, &s[0]);
        assert!(find_notify(&p, NotifyType::INVALID_SYNTAX).is_some());
        // A retransmission still gets the cached answer; anything new is refused.
        let (again, _) = split(b.handle(&bad, t0).unwrap());
        assert_eq!(again, s);
        // The requester deletes the IKE SA too, without a Delete exchange.
        let (sends, ev) = split(a.handle(&s[0], t0).unwrap());
        assert!(sends.is_empty());
        assert_eq!(
            failed(&ev),
            Some(FailReason::PeerError(NotifyType::INVALID_SYNTAX))
        );
        assert!(ike_deleted_event(a));
        assert!(a.is_deleted() && a.child_sas().is_empty());
    }
}

/// R-6.1-q: a CREATE_CHILD_SA request without its required Nonce is a syntax error too.
#[test]
fn r_6_1_q_create_child_sa_missing_payloads_invalid_syntax() {
    let (i, mut r, _, _, t0) = established();
    let id = i.life.own_next_id;
    let mut plain = Vec::new();
    let first = emit_chain(
        &[Payload::Sa(proposal::esp_offer(
            &[(EspSuite::AesGcm16_128, false)],
            0x1234,
        ))],
        &mut plain,
    )
    .unwrap();
    let bad = seal_raw(
        &i,
        i.header(ExchangeType::CREATE_CHILD_SA, false, id),
        first,
        &plain,
    );
    let (s, ev) = split(r.handle(&bad, t0).unwrap());
    assert_eq!(s.len(), 1);
    assert_eq!(
        failed(&ev),
        Some(FailReason::LocalError(NotifyType::INVALID_SYNTAX))
    );
    assert!(ike_deleted_event(&mut r));
    let p = opened_payloads(&i, &s[0]);
    assert!(find_notify(&p, NotifyType::INVALID_SYNTAX).is_some());
}

/// An unknown critical payload after IKE_AUTH is refused (RFC 7296 §2.5) but not fatal.
#[test]
fn r_6_1_q_unknown_critical_payload_after_auth_keeps_ike_sa() {
    let (mut i, mut r, _, _, t0) = established();
    let _genuine = i.start_dpd(t0).unwrap();
    let id = i.life.own_next_id - 1;
    let bad = seal_raw(
        &i,
        i.header(ExchangeType::INFORMATIONAL, false, id),
        PayloadType(200),
        &[0u8, 0x80, 0, 4],
    );
    let (s, ev) = split(r.handle(&bad, t0).unwrap());
    assert!(ev.is_empty(), "{ev:?}");
    let p = opened_payloads(&i, &s[0]);
    let n = find_notify(&p, NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD).unwrap();
    assert_eq!(n.data, vec![200]);
    assert!(r.is_established());
    assert!(r.take_sa_events().is_empty());
    // The requester takes the error answer as the end of its exchange; nothing else changes.
    assert!(deliver(&mut i, &s[0], t0).is_empty());
    assert!(i.is_established() && i.take_sa_events().is_empty());
    dpd_roundtrip(&mut i, &mut r, t0);
}

/// RFC 7296 §2.21 / §2.21.2: an authenticated response that does not parse is not answered,
/// but the IKE SA is deleted. Both directions, for each kind of outstanding request.
#[test]
fn r_6_1_q_authenticated_malformed_response_deletes_ike_sa() {
    for (from_initiator, kind) in [(true, 0), (false, 0), (true, 1), (false, 2)] {
        let (mut i, mut r, ic, rc, t0) = established();
        let (a, b, ac) = if from_initiator {
            (&mut i, &mut r, &ic)
        } else {
            (&mut r, &mut i, &rc)
        };
        let req = match kind {
            0 => a.start_dpd(t0).unwrap(),
            1 => a.rekey_child(ac.spi_in, true, t0).unwrap(),
            _ => a.rekey_ike(t0).unwrap(),
        };
        let h = Header::parse(&req).unwrap().header;
        let bad = seal_raw(
            b,
            b.header(h.exchange, true, h.message_id),
            PayloadType::IDI,
            &BAD_CHAIN,
        );
        let (s, ev) = split(a.handle(&bad, t0).unwrap());
        assert!(s.is_empty(), "no answer to a response");
        assert_eq!(
            failed(&ev),
            Some(FailReason::LocalError(NotifyType::INVALID_SYNTAX))
        );
        assert!(ike_deleted_event(a));
        assert!(a.is_deleted() && a.child_sas().is_empty());
    }
}

// ----- CREATE_CHILD_SA with PFS: INVALID_KE_PAYLOAD (RFC 7296 §1.3, §2.7, §3.10.1) -----

fn gcm_p256() -> IkeSuite {
    IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Ecp256,
    )
    .unwrap()
}

/// Established over X25519; the initiator also accepts group 19 (one of its IKE proposals).
fn established_two_groups() -> (Peer, Peer, ChildSa, ChildSa, Instant) {
    let t0 = Instant::now();
    let (mut ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    ci.ike_proposals.push(gcm_p256());
    let (mut i, mut r, first) = pair(ci, cr, t0);
    let (ie, re) = pump(&mut i, &mut r, first, t0);
    let (ic, rc) = (child(&ie).unwrap().clone(), child(&re).unwrap().clone());
    (i, r, ic, rc, t0)
}

fn ke_group(p: &[Payload]) -> Option<u16> {
    p.iter().find_map(|p| match p {
        Payload::Ke(k) => Some(k.group),
        _ => None,
    })
}

/// The responder's answer is N(INVALID_KE_PAYLOAD) with `group`; it changed nothing.
fn assert_invalid_ke(i: &Session, r: &mut Peer, resp: &[u8], group: u16, children: usize) {
    let p = opened_payloads(i, resp);
    let n = find_notify(&p, NotifyType::INVALID_KE_PAYLOAD).unwrap();
    assert_eq!(n.data, group.to_be_bytes());
    assert!(r.take_sa_events().is_empty());
    assert_eq!(r.child_sas().len(), children);
    assert!(r.is_established());
}

#[test]
fn child_rekey_pfs_invalid_ke_payload_retried_once_with_requested_group() {
    let (mut i, mut r, ic, rc, t0) = established_two_groups();
    r.set_child_pfs(Some(DhGroup::Ecp256));
    let req = i.rekey_child(ic.spi_in, true, t0).unwrap();
    assert_eq!(ke_group(&opened_payloads(&r, &req)), Some(31));
    let resp = deliver(&mut r, &req, t0);
    assert_invalid_ke(&i, &mut r, &resp[0], 19, 1);
    // The initiator retries at once with a KE of group 19, under a new Message ID.
    let retry = deliver(&mut i, &resp[0], t0);
    assert_eq!(retry.len(), 1);
    assert!(i.take_sa_events().is_empty(), "nothing changed yet");
    assert_eq!(i.child_sas().len(), 1);
    let (h0, h1) = (
        Header::parse(&req).unwrap().header,
        Header::parse(&retry[0]).unwrap().header,
    );
    assert_eq!(h1.message_id, h0.message_id + 1);
    let p = opened_payloads(&r, &retry[0]);
    assert_eq!(ke_group(&p), Some(19));
    assert_eq!(
        find_notify(&p, NotifyType::REKEY_SA).unwrap().spi,
        Spi::U32(ic.spi_in)
    );
    let (ie, re) = run(&mut i, &mut r, retry[0].clone(), t0);
    let (old_in, _, inew) = rekeyed(&ie).unwrap();
    assert_eq!(old_in, ic.spi_in);
    let (old_in, _, rnew) = rekeyed(&re).unwrap();
    assert_eq!(old_in, rc.spi_in);
    paired(inew, rnew);
}

#[test]
fn new_child_without_ke_when_responder_requires_pfs_gets_invalid_ke_then_succeeds() {
    let (mut i, mut r, _, _, t0) = established_two_groups();
    r.set_child_pfs(Some(DhGroup::Curve25519));
    let req = i.create_child(t0).unwrap();
    assert_eq!(ke_group(&opened_payloads(&r, &req)), None);
    let resp = deliver(&mut r, &req, t0);
    assert_invalid_ke(&i, &mut r, &resp[0], 31, 1);
    let retry = deliver(&mut i, &resp[0], t0);
    assert_eq!(ke_group(&opened_payloads(&r, &retry[0])), Some(31));
    let (ie, re) = run(&mut i, &mut r, retry[0].clone(), t0);
    let created = |ev: &[SaEvent]| {
        ev.iter()
            .find_map(|e| match e {
                SaEvent::ChildSaCreated(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap()
    };
    paired(&created(&ie), &created(&re));
    assert_eq!((i.child_sas().len(), r.child_sas().len()), (2, 2));
}

#[test]
fn invalid_ke_payload_for_unsupported_group_refuses_child_without_change() {
    let (mut i, mut r, ic, _, t0) = established();
    r.set_child_pfs(Some(DhGroup::Ecp384));
    let req = i.rekey_child(ic.spi_in, true, t0).unwrap();
    let resp = deliver(&mut r, &req, t0);
    assert_invalid_ke(&i, &mut r, &resp[0], 20, 1);
    assert!(deliver(&mut i, &resp[0], t0).is_empty(), "no retry");
    assert!(matches!(
        i.take_sa_events()[..],
        [SaEvent::ChildSaRefused(NotifyType::INVALID_KE_PAYLOAD)]
    ));
    assert_eq!(i.child_sas().len(), 1);
    assert_eq!(i.child_sas()[0].spi_in, ic.spi_in);
    assert!(i.is_established() && !i.has_outstanding());
    dpd_roundtrip(&mut i, &mut r, t0);
}

#[test]
fn invalid_ke_payload_retry_happens_only_once() {
    let (mut i, mut r, ic, _, t0) = established_two_groups();
    r.set_child_pfs(Some(DhGroup::Ecp256));
    let req = i.rekey_child(ic.spi_in, true, t0).unwrap();
    let resp = deliver(&mut r, &req, t0);
    let retry = deliver(&mut i, &resp[0], t0);
    // The responder changes its mind: the second INVALID_KE_PAYLOAD ends the attempt.
    r.set_child_pfs(Some(DhGroup::Curve25519));
    let resp = deliver(&mut r, &retry[0], t0);
    assert_invalid_ke(&i, &mut r, &resp[0], 31, 1);
    assert!(deliver(&mut i, &resp[0], t0).is_empty());
    assert!(matches!(
        i.take_sa_events()[..],
        [SaEvent::ChildSaRefused(NotifyType::INVALID_KE_PAYLOAD)]
    ));
    assert_eq!(i.child_sas().len(), 1);
}

/// With PFS required on both ends, our own rekeys use that group even when asked without.
#[test]
fn required_pfs_group_used_by_own_requests() {
    let (mut i, mut r, ic, _, t0) = established_two_groups();
    i.set_child_pfs(Some(DhGroup::Ecp256));
    r.set_child_pfs(Some(DhGroup::Ecp256));
    let req = i.rekey_child(ic.spi_in, false, t0).unwrap();
    assert_eq!(ke_group(&opened_payloads(&r, &req)), Some(19));
    let (ie, re) = run(&mut i, &mut r, req, t0);
    paired(rekeyed(&ie).unwrap().2, rekeyed(&re).unwrap().2);
}

// ----- INVALID_MAJOR_VERSION (RFC 7296 §1.5, §2.5) -----

fn with_major_version(msg: &[u8], version: u8) -> Vec<u8> {
    let mut m = msg.to_vec();
    m[17] = version;
    m
}

#[test]
fn higher_major_version_answered_invalid_major_version_without_state() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, mut r, first) = pair(ci, cr, now);
    let v3 = with_major_version(&first, 0x31);
    let (s, ev) = split(r.handle(&v3, now).unwrap());
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(s.len(), 1);
    let info = Header::parse(&s[0]).unwrap();
    assert_eq!((info.major_version, info.minor_version), (2, 0));
    let req = Header::parse(&first).unwrap().header;
    assert_eq!(info.header.spi_i, req.spi_i);
    assert_eq!(info.header.spi_r, 0);
    assert_eq!(info.header.message_id, 0);
    assert_eq!(info.header.exchange, ExchangeType::IKE_SA_INIT);
    assert!(info.header.flags.response && !info.header.flags.initiator);
    let m = Message::parse(&s[0]).unwrap();
    assert_eq!(
        m.payloads,
        vec![notify(NotifyType::INVALID_MAJOR_VERSION, Vec::new())]
    );
    // No state: still waiting for IKE_SA_INIT, and the version 2 request works.
    assert_eq!(r.spis(), (0, 0));
    assert!(r.cached.is_none() && r.prot.is_none());
    // Lower versions and higher-version responses are dropped without an answer.
    for bad in [
        with_major_version(&first, 0x10),
        with_major_version(&response_to(&first, Vec::new()), 0x30),
    ] {
        let (s, ev) = split(r.handle(&bad, now).unwrap());
        assert!(s.is_empty() && matches!(ev[..], [SessionEvent::Dropped(_)]));
    }
    // The initiator has no other version to offer: it gives up (R-6.4-a).
    let (_, ie) = split(i.handle(&s[0], now).unwrap());
    assert_eq!(
        failed(&ie),
        Some(FailReason::PeerError(NotifyType::INVALID_MAJOR_VERSION))
    );
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let (mut i, _, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    assert!(ike_up(&ie) && ike_up(&re));
}

#[test]
fn higher_major_version_after_init_is_dropped() {
    let (mut i, mut r, _, _, t0) = established();
    let req = i.start_dpd(t0).unwrap();
    let (s, ev) = split(r.handle(&with_major_version(&req, 0x30), t0).unwrap());
    assert!(s.is_empty() && matches!(ev[..], [SessionEvent::Dropped(_)]));
    assert!(r.is_established());
}

/// R-7.5-b after IKE_AUTH: a Delete request arriving as SKF fragments is processed from the
/// reassembled chain (nothing is encrypted again), and the same fragments again get the cached
/// response (R-6.2-c).
#[test]
fn r_7_5_b_fragmented_informational_request_and_its_retransmission() {
    let (mut i, mut r, ic, rc, t0) = established();
    let req = i.delete_child(ic.spi_in, t0).unwrap();
    let opened = r.open(&req).ok().unwrap();
    let header = Header::parse(&req).unwrap().header;
    let keys = &i.prot.as_ref().unwrap().keys;
    let plain = opened.plain.to_vec();
    let half = plain.len() / 2;
    let frags = [
        frag::seal_fragment(
            keys,
            Role::Initiator,
            header,
            opened.first,
            1,
            2,
            &plain[..half],
        )
        .unwrap(),
        frag::seal_fragment(
            keys,
            Role::Initiator,
            header,
            PayloadType(0),
            2,
            2,
            &plain[half..],
        )
        .unwrap(),
    ];
    let (s, ev) = deliver_frag(&mut r, &frags[1], t0);
    assert!(s.is_empty() && ev.is_empty());
    let (resp, ev) = deliver_frag(&mut r, &frags[0], t0);
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(resp.len(), 1);
    assert!(r.reassembled.is_none());
    assert_eq!(deleted(&r.take_sa_events()), [(rc.spi_in, rc.spi_out)]);
    let mut again = Vec::new();
    for f in &frags {
        again = deliver_frag(&mut r, f, t0).0;
    }
    assert_eq!(again, resp, "the cached answer again");
    deliver(&mut i, &resp[0], t0);
    assert_eq!(deleted(&i.take_sa_events()), [(ic.spi_in, ic.spi_out)]);
    assert!(i.child_sas().is_empty() && r.child_sas().is_empty());
}

// ----- error notifications in CREATE_CHILD_SA / INFORMATIONAL responses (RFC 7296 §2.21.3) -----

/// `r`'s encrypted response to `req` carrying only N(`kind`).
fn error_response(r: &Session, req: &[u8], kind: NotifyType) -> Vec<u8> {
    let h = Header::parse(req).unwrap().header;
    let mut plain = Vec::new();
    let first = emit_chain(&[notify(kind, Vec::new())], &mut plain).unwrap();
    seal_raw(r, r.header(h.exchange, true, h.message_id), first, &plain)
}

#[test]
fn child_error_notifications_refuse_the_child_sa_only() {
    for kind in [
        NotifyType::NO_PROPOSAL_CHOSEN,
        NotifyType::TS_UNACCEPTABLE,
        NotifyType::TEMPORARY_FAILURE,
        NotifyType::NO_ADDITIONAL_SAS,
        NotifyType::INVALID_KE_PAYLOAD,
        NotifyType::CHILD_SA_NOT_FOUND,
    ] {
        for rekey in [false, true] {
            let (mut i, mut r, ic, _, t0) = established();
            let spis = i.spis();
            let req = if rekey {
                i.rekey_child(ic.spi_in, false, t0).unwrap()
            } else {
                i.create_child(t0).unwrap()
            };
            let resp = error_response(&r, &req, kind);
            assert!(deliver(&mut i, &resp, t0).is_empty(), "{kind:?}");
            let ev = i.take_sa_events();
            if rekey && kind == NotifyType::CHILD_SA_NOT_FOUND {
                // §2.25: the Child SA is gone on the peer: deleted silently here too.
                assert!(
                    matches!(&ev[..], [
                        SaEvent::ChildSaDeleted { spi_in, .. },
                        SaEvent::ChildSaRefused(k),
                    ] if *spi_in == ic.spi_in && *k == kind),
                    "{ev:?}"
                );
                assert!(i.child_sas().is_empty());
            } else {
                assert!(
                    matches!(&ev[..], [SaEvent::ChildSaRefused(k)] if *k == kind),
                    "{kind:?} {ev:?}"
                );
                assert_eq!(i.child_sas().len(), 1);
            }
            assert!(i.is_established() && !i.has_outstanding());
            assert_eq!(i.spis(), spis);
            // The IKE SA keeps working (Message IDs included).
            r.life.peer_next_id += 1;
            dpd_roundtrip(&mut i, &mut r, t0);
        }
    }
}

#[test]
fn error_notification_in_informational_response_changes_nothing() {
    let (mut i, mut r, _, _, t0) = established();
    let req = i.start_dpd(t0).unwrap();
    let resp = error_response(&r, &req, NotifyType::TEMPORARY_FAILURE);
    assert!(deliver(&mut i, &resp, t0).is_empty());
    assert!(i.take_sa_events().is_empty());
    assert!(i.is_established() && !i.has_outstanding());
    assert_eq!(i.child_sas().len(), 1);
    r.life.peer_next_id += 1;
    dpd_roundtrip(&mut i, &mut r, t0);
}

/// R-6.1-t, R-10-e: only a fresh, authentic message counts as one that may move the path; a
/// retransmission, a tampered copy and an unencrypted message do not.
#[test]
fn r_6_1_t_r_10_e_verdict_fresh_only_for_new_authentic_messages() {
    let (mut i, mut r, _ic, _rc, t0) = established();
    let req = i.start_dpd(t0).unwrap();
    let mut bad = req.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let (_, v) = r.handle_verified(&bad, t0).unwrap();
    assert_eq!(v, Verdict::Unverified, "bad ICV");
    let (out, v) = r.handle_verified(&req, t0).unwrap();
    assert_eq!(v, Verdict::Fresh, "new request");
    let (resp, _) = split(out);
    let (_, v) = r.handle_verified(&req, t0).unwrap();
    assert_eq!(v, Verdict::Retransmit, "answered from the cache");
    let (_, v) = r.handle_verified(&bad, t0).unwrap();
    assert_eq!(
        v,
        Verdict::Unverified,
        "tampered copy of an answered request"
    );
    let mut bad_resp = resp[0].clone();
    let last = bad_resp.len() - 1;
    bad_resp[last] ^= 0x01;
    let (_, v) = i.handle_verified(&bad_resp, t0).unwrap();
    assert_eq!(v, Verdict::Unverified, "tampered response");
    let (_, v) = i.handle_verified(&resp[0], t0).unwrap();
    assert_eq!(v, Verdict::Fresh, "the expected response");
    let (_, v) = i.handle_verified(&resp[0], t0).unwrap();
    assert_eq!(
        v,
        Verdict::Unverified,
        "a duplicate response answers nothing"
    );
    // Garbage with the IKE SA's SPIs (what a forged frame on a new connection carries).
    let mut forged = req[..28].to_vec();
    forged.extend_from_slice(&[0u8; 40]);
    let len = forged.len() as u32;
    forged[24..28].copy_from_slice(&len.to_be_bytes());
    let (_, v) = r.handle_verified(&forged, t0).unwrap();
    assert_eq!(v, Verdict::Unverified, "forged");
}

// ----- inbound SPIs from the shared pool (RFC 4303 §2.1) -----

/// The inbound SPI offered in a CREATE_CHILD_SA request.
fn offered_spi(r: &Session, req: &[u8]) -> u32 {
    opened_payloads(r, req)
        .iter()
        .find_map(|p| match p {
            Payload::Sa(sa) => match sa.proposals.first()?.spi {
                Spi::U32(s) => Some(s),
                _ => None,
            },
            _ => None,
        })
        .unwrap()
}

/// Both ends draw from the same pool here (as on one data plane): the first Child SAs' SPIs
/// are in it and stay (they are the caller's); the SPI offered in a CREATE_CHILD_SA the peer
/// refuses goes back, as does one superseded by the INVALID_KE_PAYLOAD retry and one whose
/// request timed out.
#[test]
fn spis_of_exchanges_without_a_child_sa_go_back_to_the_pool() {
    let (mut i, mut r, ic, rc, t0) = established_two_groups();
    let pool = i.cfg.spi_pool.clone();
    assert!(pool.contains(ic.spi_in) && pool.contains(rc.spi_in));
    assert_eq!(pool.in_use(), 2);

    // Refused: no ESP proposal in common.
    let esp = r.cfg.esp_proposals.clone();
    r.cfg.esp_proposals = vec![(EspSuite::ChaCha20Poly1305, true)];
    let req = i.create_child(t0).unwrap();
    let offered = offered_spi(&r, &req);
    assert!(pool.contains(offered));
    let resp = deliver(&mut r, &req, t0);
    deliver(&mut i, &resp[0], t0);
    assert!(matches!(
        i.take_sa_events()[..],
        [SaEvent::ChildSaRefused(NotifyType::NO_PROPOSAL_CHOSEN)]
    ));
    assert!(!pool.contains(offered));
    assert_eq!(pool.in_use(), 2);
    r.cfg.esp_proposals = esp;

    // Superseded: the retry after INVALID_KE_PAYLOAD offers a new SPI; the first goes back.
    r.set_child_pfs(Some(DhGroup::Ecp256));
    let req = i.rekey_child(ic.spi_in, true, t0).unwrap();
    let first = offered_spi(&r, &req);
    let resp = deliver(&mut r, &req, t0);
    let retry = deliver(&mut i, &resp[0], t0);
    let second = offered_spi(&r, &retry[0]);
    assert!(!pool.contains(first) && pool.contains(second));
    assert_eq!(pool.in_use(), 3);
    // It succeeds: the new Child SA's SPIs are the caller's now.
    let (ie, re) = run(&mut i, &mut r, retry[0].clone(), t0);
    let (_, _, inew) = rekeyed(&ie).unwrap();
    let (_, _, rnew) = rekeyed(&re).unwrap();
    assert_eq!(inew.spi_in, second);
    assert!(pool.contains(rnew.spi_in));
    assert_eq!(pool.in_use(), 4);

    // Timed out: the IKE SA is deleted and the offered SPI goes back; the Child SAs handed
    // out stay in the pool until their owner releases them.
    let t1 = t0 + Duration::from_secs(1);
    let req = r.create_child(t1).unwrap();
    let offered = offered_spi(&i, &req);
    assert_eq!(pool.in_use(), 5);
    let _ = r.handle_timeout(t1 + Duration::from_secs(30));
    assert!(r.is_deleted());
    assert!(!pool.contains(offered));
    assert_eq!(pool.in_use(), 4);
}

/// The first Child SA refused in IKE_AUTH: both ends give its SPI back.
#[test]
fn spis_of_a_refused_first_child_sa_go_back_to_the_pool() {
    let now = Instant::now();
    let (ci, mut cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    cr.ts_local = vec![ts4([192, 0, 2, 0], [192, 0, 2, 255])];
    let pool = ci.spi_pool.clone();
    let (mut i, mut r, first) = pair(ci, cr, now);
    let (init_resp, _) = split(r.handle(&first, now).unwrap());
    assert_eq!(pool.in_use(), 2, "one offered by each end");
    let (auth_req, _) = split(i.handle(&init_resp[0], now).unwrap());
    let (auth_resp, re) = split(r.handle(&auth_req[0], now).unwrap());
    assert!(child(&re).is_none());
    assert_eq!(pool.in_use(), 1);
    let (_, ie) = split(i.handle(&auth_resp[0], now).unwrap());
    assert!(ike_up(&ie) && child(&ie).is_none());
    assert_eq!(pool.in_use(), 0);
}

/// A session dropped before its Child SA exists gives its SPIs back; the SPIs of Child SAs it
/// handed out stay with their owner.
#[test]
fn dropped_sessions_release_only_spis_they_did_not_hand_out() {
    let now = Instant::now();
    let (ci, cr) = configs(gcm_x25519(), (EspSuite::AesGcm16_128, false));
    let pool = ci.spi_pool.clone();
    let (i, mut r, first) = pair(ci.clone(), cr.clone(), now);
    assert_eq!(pool.in_use(), 1, "the initiator's offer");
    r.handle(&first, now).unwrap();
    assert_eq!(pool.in_use(), 2, "and the responder's");
    drop(r);
    assert_eq!(pool.in_use(), 1);
    drop(i);
    assert_eq!(pool.in_use(), 0);

    let (mut i, mut r, first) = pair(ci, cr, now);
    let (ie, re) = pump(&mut i, &mut r, first, now);
    let (ic, rc) = (child(&ie).unwrap().clone(), child(&re).unwrap().clone());
    let req = i.create_child(now).unwrap();
    let offered = offered_spi(&r, &req);
    assert_eq!(pool.in_use(), 3);
    drop((i, r));
    assert!(!pool.contains(offered), "offered, never handed out");
    assert!(pool.contains(ic.spi_in) && pool.contains(rc.spi_in));
    assert_eq!(pool.in_use(), 2);
}

#[test]
fn simultaneous_child_rekeys_converge_in_any_delivery_order() {
    // Both ends rekey the one Child SA at once. Messages cross in every order the transport
    // allows: each direction is FIFO (TCP), but an answer may leave after requests the same end
    // made later (a responder's answer waits for its SA install, a request does not), and the
    // second end may start its own rekey before or after the first one's request reaches it.
    // Whatever happens, both end with the same single Child SA.
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..600 {
        let (mut a, mut b, ac, bc, t0) = established();
        // Per end: the wire towards the other end (FIFO) and answers held back.
        let mut wire: [std::collections::VecDeque<Vec<u8>>; 2] = Default::default();
        let mut held: [Vec<Vec<u8>>; 2] = Default::default();
        let mut trace = Vec::new();
        wire[0].push_back(a.rekey_child(ac.spi_in, false, t0).unwrap());
        let mut b_started = false;
        if next() % 2 == 0 {
            wire[1].push_back(b.rekey_child(bc.spi_in, false, t0).unwrap());
            b_started = true;
        }
        for _ in 0..128 {
            // Release a held answer now and then.
            for side in 0..2 {
                if !held[side].is_empty() && next() % 2 == 0 {
                    let m = held[side].remove(0);
                    wire[side].push_back(m);
                }
            }
            let ready: Vec<usize> = (0..2).filter(|&s| !wire[s].is_empty()).collect();
            if ready.is_empty() {
                if held.iter().all(Vec::is_empty) {
                    break;
                }
                continue;
            }
            let from = ready[(next() % ready.len() as u64) as usize];
            let msg = wire[from].pop_front().unwrap();
            let (peer, name) = if from == 0 {
                (&mut b, "b")
            } else {
                (&mut a, "a")
            };
            let (sends, ev) = split(peer.handle(&msg, t0).unwrap());
            trace.push(format!(
                "{name} <- exch {} resp {}: {} out, {ev:?}",
                msg[18],
                msg[19] & 0x20 != 0,
                sends.len()
            ));
            let to = 1 - from;
            for m in sends {
                if m[19] & 0x20 != 0 && next() % 2 == 0 {
                    held[to].push(m);
                } else {
                    wire[to].push_back(m);
                }
            }
            if !b_started && next() % 3 == 0 && !b.has_outstanding() {
                let spi = b.child_sas().first().map_or(0, |c| c.spi_in);
                if let Ok(m) = b.rekey_child(spi, false, t0) {
                    wire[1].push_back(m);
                }
                b_started = true;
            }
        }
        let ok = a.child_sas().len() == 1 && b.child_sas().len() == 1;
        assert!(
            ok && !a.has_outstanding() && !b.has_outstanding(),
            "round {round}: a {} b {} children\n{}",
            a.child_sas().len(),
            b.child_sas().len(),
            trace.join("\n")
        );
        paired(&a.child_sas()[0], &b.child_sas()[0]);
    }
}
