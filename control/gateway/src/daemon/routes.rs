//! Routes into the TUN device for the remote traffic selectors of installed Child SAs: added
//! when a Child SA comes up, removed when the last Child SA needing them goes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use iketcp_dataplane::worker::spd::TrafficSelector;

/// One route the gateway wants: a destination prefix through the TUN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// Whether `a` is inside.
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let shift = 32 - u32::from(self.len.min(32));
                u64::from(u32::from(n)) >> shift == u64::from(u32::from(a)) >> shift
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let shift = 128 - u32::from(self.len.min(128));
                if shift == 128 {
                    return true;
                }
                u128::from(n) >> shift == u128::from(a) >> shift
            }
            _ => false,
        }
    }
}

/// The smallest set of prefixes that covers the address range `start..=end` exactly (at most
/// 2 × bits of them); empty if the range is reversed or mixes families.
pub fn range_prefixes(start: IpAddr, end: IpAddr) -> Vec<Prefix> {
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            cover(u128::from(u32::from(s)), u128::from(u32::from(e)), 32)
                .into_iter()
                .map(|(a, len)| Prefix {
                    addr: IpAddr::V4((a as u32).into()),
                    len,
                })
                .collect()
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => cover(u128::from(s), u128::from(e), 128)
            .into_iter()
            .map(|(a, len)| Prefix {
                addr: IpAddr::V6(a.into()),
                len,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Greedy cover: from `lo`, the largest aligned block that stays within `hi`, repeatedly.
fn cover(mut lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    loop {
        // Largest block size 2^k with lo aligned to it and lo + 2^k - 1 <= hi.
        let align = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        let mut k = align;
        while k > 0 {
            let last = if k >= 128 {
                u128::MAX
            } else {
                lo | ((1u128 << k) - 1)
            };
            if last <= hi {
                break;
            }
            k -= 1;
        }
        out.push((lo, (bits - k) as u8));
        let last = if k >= 128 {
            u128::MAX
        } else {
            lo | ((1u128 << k) - 1)
        };
        if last >= hi {
            return out;
        }
        lo = last + 1;
    }
}

/// The prefixes for a Child SA's remote selectors; those that would cover `avoid` (the outer
/// peer address: routing it into the tunnel would cut the tunnel's own TCP connection) are
/// left out and returned separately.
pub fn wanted(remote: &[TrafficSelector], avoid: &[IpAddr]) -> (BTreeSet<Prefix>, Vec<Prefix>) {
    let mut want = BTreeSet::new();
    let mut refused = Vec::new();
    for ts in remote {
        for p in range_prefixes(ts.start, ts.end) {
            if avoid.iter().any(|a| p.contains(*a)) {
                refused.push(p);
            } else {
                want.insert(p);
            }
        }
    }
    (want, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn ranges_become_exact_prefix_covers() {
        let p = |s, e| {
            range_prefixes(v4(s), v4(e))
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(p("203.0.113.0", "203.0.113.255"), ["203.0.113.0/24"]);
        assert_eq!(p("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(p("10.0.0.1", "10.0.0.1"), ["10.0.0.1/32"]);
        assert_eq!(
            p("10.0.0.1", "10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert!(p("10.0.0.2", "10.0.0.1").is_empty());
        let v6 = range_prefixes(v4("::"), v4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].len, 0);
        let v6 = range_prefixes(v4("fd00::"), v4("fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(v6[0].to_string(), "fd00::/64");
    }

    #[test]
    fn a_prefix_covering_the_peer_is_refused() {
        let all = TrafficSelector::any(false);
        let net = TrafficSelector::prefix(v4("203.0.113.0"), 24);
        let (want, refused) = wanted(&[all, net], &[v4("192.0.2.2")]);
        assert_eq!(
            want.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["203.0.113.0/24"]
        );
        assert_eq!(refused.len(), 1);
        assert!(
            Prefix {
                addr: v4("192.0.2.0"),
                len: 24
            }
            .contains(v4("192.0.2.200"))
        );
        assert!(
            !Prefix {
                addr: v4("192.0.2.0"),
                len: 24
            }
            .contains(v4("192.0.3.1"))
        );
    }
}
