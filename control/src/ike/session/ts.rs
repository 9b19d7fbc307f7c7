//! Traffic selector narrowing (RFC 7296 §2.9): the responder answers with the intersection of
//! what the initiator proposed and what its own policy allows.

use crate::ike::wire::{TrafficSelector, TsRange};

fn range_meet<A: Ord + Copy>(a: &TsRange<A>, b: &TsRange<A>) -> Option<TsRange<A>> {
    // IP protocol 0 means any (RFC 7296 §3.13.1).
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    let start_addr = a.start_addr.max(b.start_addr);
    let end_addr = a.end_addr.min(b.end_addr);
    (start_port <= end_port && start_addr <= end_addr).then_some(TsRange {
        ip_protocol,
        start_port,
        end_port,
        start_addr,
        end_addr,
    })
}

/// The intersection of two selectors; `None` if empty or of different (or unknown) types.
pub(super) fn meet(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    match (a, b) {
        (TrafficSelector::Ipv4(x), TrafficSelector::Ipv4(y)) => {
            range_meet(x, y).map(TrafficSelector::Ipv4)
        }
        (TrafficSelector::Ipv6(x), TrafficSelector::Ipv6(y)) => {
            range_meet(x, y).map(TrafficSelector::Ipv6)
        }
        _ => None,
    }
}

/// Every non-empty pairwise intersection of `proposed` with `allowed`, without duplicates,
/// in the order of the proposal.
pub(super) fn narrow(
    proposed: &[TrafficSelector],
    allowed: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for p in proposed {
        for a in allowed {
            if let Some(m) = meet(p, a)
                && !out.contains(&m)
            {
                out.push(m);
            }
        }
    }
    out
}

/// Whether every selector of `narrowed` lies within one of `proposed` (initiator's check that the
/// responder only narrowed, RFC 7296 §2.9).
pub(super) fn within(narrowed: &[TrafficSelector], proposed: &[TrafficSelector]) -> bool {
    narrowed
        .iter()
        .all(|n| proposed.iter().any(|p| meet(n, p).as_ref() == Some(n)))
}
