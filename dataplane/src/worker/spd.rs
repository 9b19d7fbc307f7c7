//! Security Policy Database of a worker: traffic selectors → outbound SA (RFC 4301 §4.4.1, with
//! IKEv2 traffic-selector ranges, RFC 7296 §3.13.1).

use std::net::IpAddr;

/// One IKEv2 traffic selector: an address range, a protocol (0 = any) and a port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSelector {
    /// First address (inclusive).
    pub start: IpAddr,
    /// Last address (inclusive); same family as `start`.
    pub end: IpAddr,
    /// IP protocol, 0 for any.
    pub protocol: u8,
    /// First port (inclusive).
    pub start_port: u16,
    /// Last port (inclusive).
    pub end_port: u16,
}

impl TrafficSelector {
    /// Everything of one address family.
    pub fn any(v6: bool) -> Self {
        if v6 {
            TrafficSelector {
                start: IpAddr::V6(0.into()),
                end: IpAddr::V6(u128::MAX.into()),
                protocol: 0,
                start_port: 0,
                end_port: u16::MAX,
            }
        } else {
            TrafficSelector {
                start: IpAddr::V4(0.into()),
                end: IpAddr::V4(u32::MAX.into()),
                protocol: 0,
                start_port: 0,
                end_port: u16::MAX,
            }
        }
    }

    /// One address prefix, any protocol and port.
    pub fn prefix(addr: IpAddr, len: u8) -> Self {
        let (start, end) = match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len.min(32)))
                };
                (
                    IpAddr::V4((a & mask).into()),
                    IpAddr::V4((a | !mask).into()),
                )
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len.min(128)))
                };
                (
                    IpAddr::V6((a & mask).into()),
                    IpAddr::V6((a | !mask).into()),
                )
            }
        };
        TrafficSelector {
            start,
            end,
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
        }
    }

    #[inline]
    fn contains(&self, addr: IpAddr, protocol: u8, port: Option<u16>) -> bool {
        let in_range = match (self.start, self.end, addr) {
            (IpAddr::V4(s), IpAddr::V4(e), IpAddr::V4(a)) => s <= a && a <= e,
            (IpAddr::V6(s), IpAddr::V6(e), IpAddr::V6(a)) => s <= a && a <= e,
            _ => false,
        };
        if !in_range || (self.protocol != 0 && self.protocol != protocol) {
            return false;
        }
        // Packets without ports (ICMP, fragments) match only selectors covering every port.
        match port {
            Some(p) => self.start_port <= p && p <= self.end_port,
            None => self.start_port == 0 && self.end_port == u16::MAX,
        }
    }
}

/// The selectors of one Child SA, from our side: packets from `local` to `remote` use it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Our side (TSi for the initiator, TSr for the responder).
    pub local: Vec<TrafficSelector>,
    /// The peer's side.
    pub remote: Vec<TrafficSelector>,
}

/// The fields of an inner packet that selectors look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (IPv6: the fixed header's Next Header).
    pub protocol: u8,
    /// TCP/UDP/SCTP source port, if the packet is not a later fragment.
    pub src_port: Option<u16>,
    /// Destination port.
    pub dst_port: Option<u16>,
}

impl FlowKey {
    /// Reads the flow key of an IPv4/IPv6 packet; `None` if it is not one.
    pub fn parse(pkt: &[u8]) -> Option<FlowKey> {
        let info = crate::wire::ip::parse(pkt)?;
        let (src, dst, l4_ok) = match info.version {
            crate::wire::ip::IpVersion::V4 => {
                let s: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
                let d: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
                // Only the first fragment carries ports.
                let frag_off = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
                (IpAddr::from(s), IpAddr::from(d), frag_off == 0)
            }
            crate::wire::ip::IpVersion::V6 => {
                let s: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
                let d: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
                (IpAddr::from(s), IpAddr::from(d), true)
            }
        };
        let ports = if l4_ok && matches!(info.protocol, 6 | 17 | 132) {
            pkt.get(info.header_len..info.header_len + 4).map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                )
            })
        } else {
            None
        };
        Some(FlowKey {
            src,
            dst,
            protocol: info.protocol,
            src_port: ports.map(|p| p.0),
            dst_port: ports.map(|p| p.1),
        })
    }
}

impl Selectors {
    /// Does a packet with this flow key belong to the SA?
    #[inline]
    pub fn matches(&self, k: &FlowKey) -> bool {
        self.local
            .iter()
            .any(|t| t.contains(k.src, k.protocol, k.src_port))
            && self
                .remote
                .iter()
                .any(|t| t.contains(k.dst, k.protocol, k.dst_port))
    }
}

/// Ordered policy entries; the first match wins. Per-packet cost is linear in the number of
/// outbound SAs of the worker (no cache, no index yet).
#[derive(Debug, Default)]
pub struct Spd<K: Copy + PartialEq> {
    entries: Vec<(Selectors, K)>,
}

impl<K: Copy + PartialEq> Spd<K> {
    /// Appends a policy; newer entries for the same selectors shadow nothing (first match wins),
    /// so rekeyed SAs are inserted in front with [`Spd::insert_front`].
    pub fn push(&mut self, sel: Selectors, key: K) {
        self.entries.push((sel, key));
    }

    /// Inserts a policy that takes precedence over existing ones (the new SA of a rekey).
    pub fn insert_front(&mut self, sel: Selectors, key: K) {
        self.entries.insert(0, (sel, key));
    }

    /// Removes every policy pointing at `key`.
    pub fn remove(&mut self, key: K) {
        self.entries.retain(|(_, k)| *k != key);
    }

    /// First SA whose selectors match.
    #[inline]
    pub fn lookup(&self, k: &FlowKey) -> Option<K> {
        self.entries
            .iter()
            .find(|(s, _)| s.matches(k))
            .map(|(_, key)| *key)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No policies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn udp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p
    }

    #[test]
    fn prefix_and_port_matching() {
        let sel = Selectors {
            local: vec![TrafficSelector::prefix(
                Ipv4Addr::new(198, 51, 100, 0).into(),
                24,
            )],
            remote: vec![TrafficSelector {
                protocol: 17,
                start_port: 53,
                end_port: 53,
                ..TrafficSelector::prefix(Ipv4Addr::new(203, 0, 113, 0).into(), 24)
            }],
        };
        let mut spd = Spd::default();
        spd.push(sel, 7u32);
        let hit = FlowKey::parse(&udp([198, 51, 100, 9], [203, 0, 113, 1], 4000, 53)).expect("ip");
        assert_eq!(spd.lookup(&hit), Some(7));
        let wrong_port =
            FlowKey::parse(&udp([198, 51, 100, 9], [203, 0, 113, 1], 4000, 54)).expect("ip");
        assert_eq!(spd.lookup(&wrong_port), None);
        let wrong_src =
            FlowKey::parse(&udp([198, 51, 101, 9], [203, 0, 113, 1], 4000, 53)).expect("ip");
        assert_eq!(spd.lookup(&wrong_src), None);
        spd.remove(7);
        assert!(spd.is_empty());
    }

    #[test]
    fn any_selectors_and_family() {
        let sel = Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector::any(false)],
        };
        let k = FlowKey::parse(&udp([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)).expect("ip");
        assert!(sel.matches(&k));
        let v6 = Selectors {
            local: vec![TrafficSelector::any(true)],
            remote: vec![TrafficSelector::any(true)],
        };
        assert!(!v6.matches(&k));
        assert_eq!(
            TrafficSelector::prefix(Ipv4Addr::new(192, 0, 2, 3).into(), 0),
            TrafficSelector::any(false)
        );
    }
}
