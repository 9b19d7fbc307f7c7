//! Security Policy Database of a worker: traffic selectors → outbound SA (RFC 4301 §4.4.1, with
//! IKEv2 traffic-selector ranges, RFC 7296 §3.13.1).

#[cfg(test)]
mod tests;
mod trie;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use trie::{Prefix, Trie};

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

/// Ordered policy entries; the first match wins (RFC 4301 §4.4.1: the SPD is ordered). Indexed
/// by the destination address (the peer's side, where the selectors of different SAs differ):
/// a lookup walks the prefixes containing the packet's destination in a [`trie::Trie`] per
/// family and checks only the entries found there, in policy order, against the full
/// selectors. Entries whose remote side covers everything (`0.0.0.0/0`) sit at the root and are
/// checked for every packet of their family.
#[derive(Debug)]
pub struct Spd<K: Copy + Eq + Hash> {
    /// Slots by entry id; `None` once removed (the id is reused).
    entries: Vec<Option<Entry<K>>>,
    free: Vec<u32>,
    by_key: HashMap<K, Vec<u32>>,
    v4: Trie,
    v6: Trie,
    /// Rank of the next `insert_front` (decreasing) and `push` (increasing): lower ranks come
    /// first, so ranks order entries exactly as the list they replace.
    front: i64,
    back: i64,
}

#[derive(Debug)]
struct Entry<K> {
    sel: Selectors,
    key: K,
}

impl<K: Copy + Eq + Hash> Default for Spd<K> {
    fn default() -> Self {
        Spd {
            entries: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            v4: Trie::default(),
            v6: Trie::default(),
            front: -1,
            back: 0,
        }
    }
}

/// The prefixes covering the remote ranges of `sel`, per family, deduplicated.
fn remote_prefixes(sel: &Selectors) -> (Vec<Prefix>, Vec<Prefix>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for t in &sel.remote {
        match (t.start, t.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => {
                trie::cover(u32::from(s).into(), u32::from(e).into(), 32, &mut v4);
            }
            (IpAddr::V6(s), IpAddr::V6(e)) => {
                trie::cover(u128::from(s), u128::from(e), 128, &mut v6);
            }
            // Mixed families match nothing (`TrafficSelector::contains`).
            _ => {}
        }
    }
    for v in [&mut v4, &mut v6] {
        v.sort_unstable();
        v.dedup();
    }
    (v4, v6)
}

impl<K: Copy + Eq + Hash> Spd<K> {
    /// Appends a policy; newer entries for the same selectors shadow nothing (first match wins),
    /// so rekeyed SAs are inserted in front with [`Spd::insert_front`].
    pub fn push(&mut self, sel: Selectors, key: K) {
        let rank = self.back;
        self.back += 1;
        self.add(sel, key, rank);
    }

    /// Inserts a policy that takes precedence over existing ones (the new SA of a rekey).
    pub fn insert_front(&mut self, sel: Selectors, key: K) {
        let rank = self.front;
        self.front -= 1;
        self.add(sel, key, rank);
    }

    fn add(&mut self, sel: Selectors, key: K, rank: i64) {
        let (v4, v6) = remote_prefixes(&sel);
        let entry = Entry { sel, key };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.entries.get_mut(id as usize) {
                    *slot = Some(entry);
                }
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as u32
            }
        };
        for p in v4 {
            self.v4.insert(p, rank, id);
        }
        for p in v6 {
            self.v6.insert(p, rank, id);
        }
        self.by_key.entry(key).or_default().push(id);
    }

    /// Removes every policy pointing at `key`.
    pub fn remove(&mut self, key: K) {
        for id in self.by_key.remove(&key).unwrap_or_default() {
            let Some(e) = self.entries.get_mut(id as usize).and_then(Option::take) else {
                continue;
            };
            let (v4, v6) = remote_prefixes(&e.sel);
            for p in v4 {
                self.v4.remove(p, id);
            }
            for p in v6 {
                self.v6.remove(p, id);
            }
            self.free.push(id);
        }
    }

    /// First policy (in order) whose selectors match.
    #[inline]
    pub fn lookup(&self, k: &FlowKey) -> Option<K> {
        let (trie, addr) = match k.dst {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a)) << 96),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        let mut best: Option<(i64, K)> = None;
        trie.walk(addr, |bucket| {
            for &(rank, id) in bucket {
                // Buckets are in policy order: nothing later in this one can win.
                if best.is_some_and(|(r, _)| rank >= r) {
                    break;
                }
                if let Some(Some(e)) = self.entries.get(id as usize)
                    && e.sel.matches(k)
                {
                    best = Some((rank, e.key));
                    break;
                }
            }
            true
        });
        best.map(|(_, key)| key)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// No policies.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Trie nodes in use, both families (memory diagnostics).
    pub fn index_nodes(&self) -> usize {
        self.v4.nodes() + self.v6.nodes()
    }
}
