//! Every exchange for every suite: for each IKE suite the configuration can offer and each ESP
//! suite, IKE_SA_INIT and IKE_AUTH (first Child SA, RFC 7296 §1.2), then, started once by the
//! IKE SA's initiator and once by its responder (RFC 7296 §1.3, §1.4, §2.8): an INFORMATIONAL
//! liveness check, CREATE_CHILD_SA for a new Child SA, Child SA rekeys without and with PFS, an
//! IKE SA rekey (then a liveness check and a Child SA rekey under the new IKE SA), Delete of a
//! Child SA and Delete of the IKE SA. Child SA keys must pair up (our inbound KEYMAT is the
//! peer's outbound and ESP sealed by one end opens at the other) and SPIs and events must agree.
//!
//! Not the full cross product: every SK cipher, PRF, integrity algorithm and DH group appears
//! at least once, each with every ESP suite, except MODP-2048 (slow in debug builds), which
//! runs with a single ESP suite.

use std::time::{Duration, Instant};

use super::tests::{
    Peer, deleted, dpd_roundtrip, established_with, opened_payloads, paired, rekeyed, run,
};
use super::*;
use crate::ike::crypto::{EncrAlg, IntegAlg};
use crate::ike::wire::ProtocolId;

fn suite(encr: EncrAlg, prf: PrfAlg, integ: Option<IntegAlg>, dh: DhGroup) -> IkeSuite {
    IkeSuite::new(encr, prf, integ, dh).unwrap()
}

/// Every ESP suite with and without ESN.
fn esp_suites() -> Vec<(EspSuite, bool)> {
    EspSuite::ALL
        .into_iter()
        .flat_map(|s| [(s, false), (s, true)])
        .collect()
}

fn created(ev: &[SaEvent]) -> Vec<&ChildSa> {
    ev.iter()
        .filter_map(|e| match e {
            SaEvent::ChildSaCreated(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// The local view of the Child SAs of both ends agrees, SA by SA.
fn children_agree(a: &Session, b: &Session) {
    assert_eq!(a.child_sas().len(), b.child_sas().len());
    for c in a.child_sas() {
        let peer = b
            .child_sas()
            .iter()
            .find(|p| p.spi_in == c.spi_out)
            .unwrap_or_else(|| panic!("no peer half for {:#x}", c.spi_out));
        assert_eq!(peer.spi_out, c.spi_in);
        assert_eq!(peer.keymat_in, c.keymat_out);
        assert_eq!(peer.keymat_out, c.keymat_in);
        assert_eq!((peer.suite, peer.esn), (c.suite, c.esn));
        assert_eq!(peer.ts_local, c.ts_remote);
        assert_eq!(peer.ts_remote, c.ts_local);
    }
}

/// A Child SA rekey started by `a` for its Child SA `old` (inbound SPI); returns `a`'s new one.
fn rekey_child(
    a: &mut Peer,
    b: &mut Peer,
    old: &ChildSa,
    pfs: bool,
    esp: (EspSuite, bool),
    t: Instant,
) -> ChildSa {
    let group = a.suite().unwrap().dh();
    let req = a.rekey_child(old.spi_in, pfs, t).unwrap();
    let p = opened_payloads(b, &req);
    let ke = p.iter().find_map(|p| match p {
        Payload::Ke(k) => Some(k.group),
        _ => None,
    });
    // RFC 7296 §1.3.3: with PFS a KE payload of the IKE SA's group, without none.
    assert_eq!(ke, pfs.then(|| group.transform_id()));
    let (ae, be) = run(a, b, req, t);
    let (a_old_in, a_old_out, an) = rekeyed(&ae).unwrap();
    let (b_old_in, b_old_out, bn) = rekeyed(&be).unwrap();
    assert_eq!((a_old_in, a_old_out), (old.spi_in, old.spi_out));
    assert_eq!((b_old_in, b_old_out), (old.spi_out, old.spi_in));
    assert_eq!((an.suite, an.esn), esp);
    paired(an, bn);
    assert_ne!(an.keymat_in, old.keymat_in);
    assert_ne!(an.spi_in, old.spi_in);
    // The rekey initiator deletes the old pair (§1.3.3); nothing else happens.
    assert_eq!(deleted(&ae), [(old.spi_in, old.spi_out)]);
    assert_eq!(deleted(&be), [(old.spi_out, old.spi_in)]);
    assert_eq!((ae.len(), be.len()), (2, 2), "{ae:?} {be:?}");
    an.clone()
}

/// All exchanges for one pair of suites, started by the IKE initiator or the IKE responder.
fn exercise(ike: IkeSuite, esp: (EspSuite, bool), by_initiator: bool) {
    // IKE_SA_INIT and IKE_AUTH with the first Child SA.
    let (mut i, mut r, ic, rc, t0) = established_with(ike, esp);
    assert_eq!(i.suite(), Some(ike));
    assert_eq!(r.suite(), Some(ike));
    assert_eq!(i.spis(), r.spis());
    assert_eq!((ic.suite, ic.esn), esp);
    assert_eq!(ic.keymat_out.len(), esp.0.keymat_len());
    paired(&ic, &rc);
    children_agree(&i, &r);
    let (a, b, first) = if by_initiator {
        (&mut i, &mut r, ic)
    } else {
        (&mut r, &mut i, rc)
    };
    let t = t0 + Duration::from_secs(1);

    // INFORMATIONAL liveness check (§1.4, R-6.7-a).
    dpd_roundtrip(a, b, t);

    // CREATE_CHILD_SA: an additional Child SA (§1.3.1).
    let req = a.create_child(t).unwrap();
    let (ae, be) = run(a, b, req, t);
    let (an, bn) = match (&created(&ae)[..], &created(&be)[..]) {
        ([an], [bn]) => ((*an).clone(), (*bn).clone()),
        _ => panic!("{ae:?} {be:?}"),
    };
    assert_eq!((ae.len(), be.len()), (1, 1));
    assert_eq!((an.suite, an.esn), esp);
    paired(&an, &bn);
    assert_ne!(an.spi_in, first.spi_in);
    assert_eq!(a.child_sas().len(), 2);
    children_agree(a, b);

    // Child SA rekeys (§1.3.3): the first without PFS, the additional one with PFS.
    let first = rekey_child(a, b, &first, false, esp, t);
    let second = rekey_child(a, b, &an, true, esp, t);
    assert_eq!(a.child_sas().len(), 2);
    children_agree(a, b);

    // IKE SA rekey (§1.3.2): the rekey's initiator becomes the new IKE SA's initiator, the
    // TCP roles stay (R-1.2-a), the Child SAs move over.
    let old_spis = a.spis();
    let tcp = (a.tcp_role(), b.tcp_role());
    let req = a.rekey_ike(t).unwrap();
    let (ae, be) = run(a, b, req, t);
    let new_spis = a.spis();
    assert_eq!(b.spis(), new_spis);
    assert_ne!(new_spis.0, old_spis.0);
    assert_ne!(new_spis.1, old_spis.1);
    for ev in [&ae, &be] {
        assert!(
            matches!(&ev[..], [
                SaEvent::IkeSaRekeyed { spi_i, spi_r },
                SaEvent::OldIkeSaDeleted { spi_i: oi, spi_r: or },
            ] if (*spi_i, *spi_r) == new_spis && (*oi, *or) == old_spis),
            "{ev:?}"
        );
    }
    assert_eq!((a.role(), b.role()), (Role::Initiator, Role::Responder));
    assert_eq!((a.tcp_role(), b.tcp_role()), tcp);
    assert_eq!(a.suite(), Some(ike));
    assert_eq!(b.suite(), Some(ike));
    assert_eq!(a.child_sas().len(), 2);
    children_agree(a, b);

    // The new IKE SA carries INFORMATIONAL both ways and derives Child SA keys from its SK_d.
    dpd_roundtrip(a, b, t);
    dpd_roundtrip(b, a, t);
    let first = rekey_child(a, b, &first, true, esp, t);
    children_agree(a, b);

    // Delete of a Child SA (§1.4.1): the peer answers with its half of the pair.
    let req = a.delete_child(second.spi_in, t).unwrap();
    let p = opened_payloads(b, &req);
    assert!(matches!(&p[..], [Payload::Delete(d)]
            if d.protocol == ProtocolId::ESP && d.spis == [second.spi_in]));
    let (ae, be) = run(a, b, req, t);
    assert_eq!(deleted(&ae), [(second.spi_in, second.spi_out)]);
    assert_eq!(deleted(&be), [(second.spi_out, second.spi_in)]);
    assert_eq!((ae.len(), be.len()), (1, 1));
    assert_eq!(a.child_sas().len(), 1);
    assert_eq!(a.child_sas()[0].spi_in, first.spi_in);
    children_agree(a, b);

    // Delete of the IKE SA (§1.4.1): both ends drop it with every Child SA.
    let req = a.delete_ike(t).unwrap();
    let (ae, be) = run(a, b, req, t);
    for (s, ev) in [(&*a, &ae), (&*b, &be)] {
        assert!(matches!(ev[..], [SaEvent::IkeSaDeleted]), "{ev:?}");
        assert!(s.is_deleted() && !s.is_established());
        assert!(s.child_sas().is_empty());
        assert_eq!(s.poll_timeout(), None);
    }
}

fn exercise_all_esp(ike: IkeSuite) {
    for esp in esp_suites() {
        for by_initiator in [true, false] {
            exercise(ike, esp, by_initiator);
        }
    }
}

#[test]
fn every_exchange_gcm128_sha256_x25519() {
    exercise_all_esp(suite(
        EncrAlg::AesGcm16_128,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Curve25519,
    ));
}

#[test]
fn every_exchange_gcm256_sha384_p256() {
    exercise_all_esp(suite(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha384,
        None,
        DhGroup::Ecp256,
    ));
}

#[test]
fn every_exchange_chacha_sha512_p384() {
    exercise_all_esp(suite(
        EncrAlg::ChaCha20Poly1305,
        PrfAlg::HmacSha512,
        None,
        DhGroup::Ecp384,
    ));
}

#[test]
fn every_exchange_cbc128_hmac256_sha256_p256() {
    exercise_all_esp(suite(
        EncrAlg::AesCbc128,
        PrfAlg::HmacSha256,
        Some(IntegAlg::HmacSha256_128),
        DhGroup::Ecp256,
    ));
}

#[test]
fn every_exchange_cbc256_hmac256_sha512_x25519() {
    exercise_all_esp(suite(
        EncrAlg::AesCbc256,
        PrfAlg::HmacSha512,
        Some(IntegAlg::HmacSha256_128),
        DhGroup::Curve25519,
    ));
}

/// MODP-2048 is slow in debug builds: one ESP suite, both starters.
#[test]
fn every_exchange_gcm256_sha256_modp2048() {
    let ike = suite(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Modp2048,
    );
    for by_initiator in [true, false] {
        exercise(ike, (EspSuite::ChaCha20Poly1305, true), by_initiator);
    }
}
