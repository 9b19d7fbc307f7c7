//! SA payloads of the initial exchanges: building our proposals, choosing one as responder
//! (RFC 7296 §2.7, §3.3), and checking the responder's choice as initiator.

use crate::ike::crypto::{DhGroup, EncrAlg, EspSuite, IkeSuite, IntegAlg, PrfAlg};
use crate::ike::wire::{Proposal, ProtocolId, SaPayload, Spi, Transform, TransformType, esn};

/// One transform of an IKE suite's ENCR type, with its Key Length attribute.
fn encr_transform(alg: EncrAlg) -> Transform {
    match alg.key_length_attr() {
        Some(bits) => Transform::with_key_length(TransformType::ENCR, alg.transform_id(), bits),
        None => Transform::new(TransformType::ENCR, alg.transform_id()),
    }
}

fn esp_encr_transform(suite: EspSuite) -> Transform {
    match suite.key_length_attr() {
        Some(bits) => Transform::with_key_length(TransformType::ENCR, suite.transform_id(), bits),
        None => Transform::new(TransformType::ENCR, suite.transform_id()),
    }
}

fn ike_transforms(s: &IkeSuite) -> Vec<Transform> {
    let mut t = vec![
        encr_transform(s.encr()),
        Transform::new(TransformType::PRF, s.prf().transform_id()),
    ];
    if let Some(i) = s.integ() {
        t.push(Transform::new(TransformType::INTEG, i.transform_id()));
    }
    t.push(Transform::new(TransformType::DH, s.dh().transform_id()));
    t
}

/// The initiator's IKE SA payload: one proposal per suite, numbered from 1, in preference order.
pub(super) fn ike_offer(suites: &[IkeSuite]) -> SaPayload {
    SaPayload {
        proposals: suites
            .iter()
            .zip(1u8..)
            .map(|(s, number)| Proposal {
                number,
                protocol: ProtocolId::IKE,
                spi: Spi::None,
                transforms: ike_transforms(s),
            })
            .collect(),
    }
}

/// The responder's answer: exactly one proposal with one transform of each type, under the
/// number of the initiator's proposal it accepts (RFC 7296 §2.7).
pub(super) fn ike_answer(number: u8, suite: &IkeSuite) -> SaPayload {
    SaPayload {
        proposals: vec![Proposal {
            number,
            protocol: ProtocolId::IKE,
            spi: Spi::None,
            transforms: ike_transforms(suite),
        }],
    }
}

/// A transform with attributes other than Key Length is not understood (RFC 7296 §3.3.6).
fn plain(t: &Transform) -> bool {
    t.attributes.is_empty()
}

fn has(p: &Proposal, kind: TransformType, id: u16, key_length: Option<u16>) -> bool {
    p.transforms
        .iter()
        .any(|t| t.kind == kind && t.id == id && t.key_length == key_length && plain(t))
}

/// Whether an IKE proposal offers everything `s` needs and nothing of an unknown type. In
/// IKE_SA_INIT proposals carry no SPI; in an IKE SA rekey each carries the sender's new SPI.
fn ike_accepts(p: &Proposal, s: &IkeSuite, rekey: bool) -> bool {
    let spi_ok = if rekey {
        matches!(p.spi, Spi::U64(v) if v != 0)
    } else {
        p.spi == Spi::None
    };
    if p.protocol != ProtocolId::IKE || !spi_ok {
        return false;
    }
    let known = p.transforms.iter().all(|t| {
        matches!(
            t.kind,
            TransformType::ENCR | TransformType::PRF | TransformType::INTEG | TransformType::DH
        )
    });
    let integ_ok = match s.integ() {
        Some(i) => has(p, TransformType::INTEG, i.transform_id(), None),
        // An AEAD proposal carries no INTEG transform, or only NONE (RFC 5282 §8).
        None => p
            .transforms
            .iter()
            .filter(|t| t.kind == TransformType::INTEG)
            .all(|t| t.id == 0),
    };
    known
        && integ_ok
        && has(
            p,
            TransformType::ENCR,
            s.encr().transform_id(),
            s.encr().key_length_attr(),
        )
        && has(p, TransformType::PRF, s.prf().transform_id(), None)
        && has(p, TransformType::DH, s.dh().transform_id(), None)
}

/// Responder side of RFC 7296 §2.7: the first initiator proposal we accept, with the suite (our
/// preference among those it allows) and its proposal number.
pub(super) fn ike_select(offer: &SaPayload, ours: &[IkeSuite]) -> Option<(u8, IkeSuite)> {
    offer.proposals.iter().find_map(|p| {
        ours.iter()
            .find(|s| ike_accepts(p, s, false))
            .map(|s| (p.number, *s))
    })
}

/// Responder side of an IKE SA rekey (RFC 7296 §1.3.2): as [`ike_select`], with the
/// initiator's new SPI of the accepted proposal.
pub(super) fn ike_select_rekey(
    offer: &SaPayload,
    ours: &[IkeSuite],
) -> Option<(u8, IkeSuite, u64)> {
    offer.proposals.iter().find_map(|p| {
        let Spi::U64(spi) = p.spi else { return None };
        ours.iter()
            .find(|s| ike_accepts(p, s, true))
            .map(|s| (p.number, *s, spi))
    })
}

/// An IKE SA payload whose proposals all carry `spi` (an IKE SA rekey, RFC 7296 §3.3.1).
pub(super) fn with_ike_spi(mut sa: SaPayload, spi: u64) -> SaPayload {
    for p in &mut sa.proposals {
        p.spi = Spi::U64(spi);
    }
    sa
}

/// The single transform of `kind` in a chosen proposal; `None` if absent or repeated.
fn only(p: &Proposal, kind: TransformType) -> Option<Option<&Transform>> {
    let mut it = p.transforms.iter().filter(|t| t.kind == kind);
    let first = it.next();
    if it.next().is_some() {
        return None;
    }
    Some(first)
}

/// Initiator side: the responder's SA payload must hold exactly one proposal with one transform
/// of each type, naming one of the suites we offered (RFC 7296 §2.7).
pub(super) fn ike_chosen(answer: &SaPayload, offered: &[IkeSuite]) -> Option<IkeSuite> {
    let [p] = answer.proposals.as_slice() else {
        return None;
    };
    if p.protocol != ProtocolId::IKE || p.transforms.iter().any(|t| !plain(t)) {
        return None;
    }
    let e = only(p, TransformType::ENCR)??;
    let encr = EncrAlg::from_transform(e.id, e.key_length).ok()?;
    let prf = PrfAlg::from_transform(only(p, TransformType::PRF)??.id).ok()?;
    let integ = match only(p, TransformType::INTEG)? {
        None => None,
        Some(t) if t.id == 0 => None,
        Some(t) => Some(IntegAlg::from_transform(t.id).ok()?),
    };
    let dh = DhGroup::from_transform(only(p, TransformType::DH)??.id).ok()?;
    if p.transforms.len() != 3 + usize::from(only(p, TransformType::INTEG)?.is_some()) {
        return None;
    }
    let suite = IkeSuite::new(encr, prf, integ, dh).ok()?;
    offered.contains(&suite).then_some(suite)
}

fn esp_transforms(suite: EspSuite, with_esn: bool, pfs: Option<DhGroup>) -> Vec<Transform> {
    let mut t = vec![
        esp_encr_transform(suite),
        Transform::new(
            TransformType::ESN,
            if with_esn { esn::YES } else { esn::NO },
        ),
    ];
    if let Some(g) = pfs {
        t.push(Transform::new(TransformType::DH, g.transform_id()));
    }
    t
}

/// The initiator's ESP SA payload: one proposal per (suite, ESN), all with our inbound SPI.
pub(super) fn esp_offer(suites: &[(EspSuite, bool)], spi: u32) -> SaPayload {
    esp_offer_pfs(suites, spi, None)
}

/// As [`esp_offer`], each proposal with the DH group `pfs` if given (CREATE_CHILD_SA with a
/// KE payload, RFC 7296 §1.3.1).
pub(super) fn esp_offer_pfs(
    suites: &[(EspSuite, bool)],
    spi: u32,
    pfs: Option<DhGroup>,
) -> SaPayload {
    SaPayload {
        proposals: suites
            .iter()
            .zip(1u8..)
            .map(|(&(s, e), number)| Proposal {
                number,
                protocol: ProtocolId::ESP,
                spi: Spi::U32(spi),
                transforms: esp_transforms(s, e, pfs),
            })
            .collect(),
    }
}

/// The responder's ESP answer: one proposal with our inbound SPI.
pub(super) fn esp_answer(number: u8, suite: EspSuite, with_esn: bool, spi: u32) -> SaPayload {
    esp_answer_pfs(number, suite, with_esn, spi, None)
}

/// As [`esp_answer`], with the DH group of the exchange's KE payloads if any.
pub(super) fn esp_answer_pfs(
    number: u8,
    suite: EspSuite,
    with_esn: bool,
    spi: u32,
    pfs: Option<DhGroup>,
) -> SaPayload {
    SaPayload {
        proposals: vec![Proposal {
            number,
            protocol: ProtocolId::ESP,
            spi: Spi::U32(spi),
            transforms: esp_transforms(suite, with_esn, pfs),
        }],
    }
}

/// `pfs`: the DH group the proposal must offer (CREATE_CHILD_SA with KE); without it only
/// NONE is allowed as DH transform.
fn esp_accepts(p: &Proposal, suite: EspSuite, with_esn: bool, pfs: Option<DhGroup>) -> bool {
    if p.protocol != ProtocolId::ESP || !matches!(p.spi, Spi::U32(_)) {
        return false;
    }
    let pfs_id = pfs.map(DhGroup::transform_id);
    let known = p.transforms.iter().all(|t| match t.kind {
        TransformType::ENCR | TransformType::ESN => true,
        // No separate integrity with an AEAD: only NONE.
        TransformType::INTEG => t.id == 0,
        // No PFS in IKE_AUTH; with a KE payload, its group (other offered groups are fine).
        TransformType::DH => t.id == 0 || pfs.is_some(),
        _ => false,
    });
    let dh_ok = match pfs_id {
        Some(g) => has(p, TransformType::DH, g, None),
        None => true,
    };
    let esn_id = if with_esn { esn::YES } else { esn::NO };
    let esn_ok = if p.transforms.iter().any(|t| t.kind == TransformType::ESN) {
        has(p, TransformType::ESN, esn_id, None)
    } else {
        !with_esn
    };
    known
        && esn_ok
        && dh_ok
        && has(
            p,
            TransformType::ENCR,
            suite.transform_id(),
            suite.key_length_attr(),
        )
}

/// Responder: first initiator ESP proposal we accept → (number, peer SPI, suite, ESN).
pub(super) fn esp_select(
    offer: &SaPayload,
    ours: &[(EspSuite, bool)],
) -> Option<(u8, u32, EspSuite, bool)> {
    esp_select_pfs(offer, ours, None)
}

/// As [`esp_select`], requiring the DH group `pfs` in the accepted proposal if given.
pub(super) fn esp_select_pfs(
    offer: &SaPayload,
    ours: &[(EspSuite, bool)],
    pfs: Option<DhGroup>,
) -> Option<(u8, u32, EspSuite, bool)> {
    offer.proposals.iter().find_map(|p| {
        let Spi::U32(spi) = p.spi else { return None };
        ours.iter()
            .find(|&&(s, e)| esp_accepts(p, s, e, pfs))
            .map(|&(s, e)| (p.number, spi, s, e))
    })
}

/// Responder of CREATE_CHILD_SA (RFC 7296 §1.3, §2.7): the first initiator ESP proposal
/// whose cipher and ESN we accept → (number, peer SPI, suite, ESN, DH group). The group is
/// `None` if the proposal offers none (no PFS); else the group `ke` of the initiator's KE
/// payload if the proposal offers it and it is in `groups` (ours, most preferred first), else
/// our most preferred group the proposal offers, else our most preferred group at all (for
/// the caller to ask for with INVALID_KE_PAYLOAD, §3.10.1).
pub(super) fn esp_select_child(
    offer: &SaPayload,
    ours: &[(EspSuite, bool)],
    groups: &[DhGroup],
    ke: Option<u16>,
) -> Option<(u8, u32, EspSuite, bool, Option<DhGroup>)> {
    offer.proposals.iter().find_map(|p| {
        let Spi::U32(spi) = p.spi else { return None };
        let offered: Vec<u16> = p
            .transforms
            .iter()
            .filter(|t| t.kind == TransformType::DH && t.id != 0)
            .map(|t| t.id)
            .collect();
        let group = if offered.is_empty() {
            None
        } else {
            let is_offered = |g: &&DhGroup| offered.contains(&g.transform_id());
            let by_ke = groups
                .iter()
                .filter(is_offered)
                .find(|g| Some(g.transform_id()) == ke);
            Some(
                *by_ke
                    .or_else(|| groups.iter().find(is_offered))
                    .or_else(|| groups.first())?,
            )
        };
        // The DH choice is made above; the rest of the proposal must suit us.
        let mut rest = p.clone();
        rest.transforms.retain(|t| t.kind != TransformType::DH);
        ours.iter()
            .find(|&&(s, e)| esp_accepts(&rest, s, e, None))
            .map(|&(s, e)| (p.number, spi, s, e, group))
    })
}

/// Initiator: the responder's single ESP proposal → (peer SPI, suite, ESN), if it is one of ours.
pub(super) fn esp_chosen(
    answer: &SaPayload,
    offered: &[(EspSuite, bool)],
) -> Option<(u32, EspSuite, bool)> {
    esp_chosen_pfs(answer, offered, None)
}

/// As [`esp_chosen`]; with `pfs` the answer must hold exactly that DH transform.
pub(super) fn esp_chosen_pfs(
    answer: &SaPayload,
    offered: &[(EspSuite, bool)],
    pfs: Option<DhGroup>,
) -> Option<(u32, EspSuite, bool)> {
    let [p] = answer.proposals.as_slice() else {
        return None;
    };
    let Spi::U32(spi) = p.spi else { return None };
    if only(p, TransformType::ENCR)?.is_none() || only(p, TransformType::ESN)?.is_none() {
        return None;
    }
    if pfs.is_some() && only(p, TransformType::DH)?.is_none() {
        return None;
    }
    offered
        .iter()
        .find(|&&(s, e)| esp_accepts(p, s, e, pfs))
        .map(|&(s, e)| (spi, s, e))
}
