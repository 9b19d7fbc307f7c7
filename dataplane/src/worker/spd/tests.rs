//! SPD tests: matching rules, and the indexed lookup against the linear list it replaced.

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

/// The list the SPD used to be: first match in order wins. The reference model.
#[derive(Default)]
struct Linear {
    entries: Vec<(Selectors, u32)>,
}

impl Linear {
    fn push(&mut self, sel: Selectors, key: u32) {
        self.entries.push((sel, key));
    }
    fn insert_front(&mut self, sel: Selectors, key: u32) {
        self.entries.insert(0, (sel, key));
    }
    fn remove(&mut self, key: u32) {
        self.entries.retain(|(_, k)| *k != key);
    }
    fn lookup(&self, k: &FlowKey) -> Option<u32> {
        self.entries
            .iter()
            .find(|(s, _)| s.matches(k))
            .map(|(_, key)| *key)
    }
}

/// SplitMix64: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// An address of a small universe (so random selectors and packets meet): the low 12 bits
/// vary, plus one high bit so some ranges span far.
fn addr(r: &mut Rng, v6: bool) -> u128 {
    let low = u128::from(r.below(4096));
    let high = if r.chance(10) { 1u128 << 20 } else { 0 };
    let base: u128 = if v6 {
        0x2001_0db8_0000_0000_0000_0000_0000_0000
    } else {
        0x0a00_0000
    };
    base | high | low
}

fn ip(a: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(a.into())
    } else {
        IpAddr::V4((a as u32).into())
    }
}

/// A random range: a single address, a prefix, an arbitrary range, or everything.
fn range(r: &mut Rng, v6: bool) -> TrafficSelector {
    let mut ts = match r.below(10) {
        0 => TrafficSelector::any(v6),
        1..=3 => {
            let bits = if v6 { 128 } else { 32 };
            let len = bits - r.below(13) as u8;
            TrafficSelector::prefix(ip(addr(r, v6), v6), len)
        }
        _ => {
            let s = addr(r, v6);
            let e = match r.below(4) {
                0 => s,
                1 => s + u128::from(r.below(8)),
                2 => s + u128::from(r.below(2048)),
                // Empty (start > end): matches nothing.
                _ => s.saturating_sub(1 + u128::from(r.below(4))),
            };
            TrafficSelector {
                start: ip(s, v6),
                end: ip(e, v6),
                ..TrafficSelector::any(v6)
            }
        }
    };
    if r.chance(30) {
        ts.protocol = [6, 17, 1][r.below(3) as usize];
    }
    if r.chance(30) {
        let a = r.below(8) as u16;
        ts.start_port = a;
        ts.end_port = a + r.below(4) as u16;
    }
    ts
}

fn selectors(r: &mut Rng) -> Selectors {
    let v6 = r.chance(40);
    // Now and then a selector list mixing both families.
    let other = r.chance(10);
    let side = |r: &mut Rng| {
        (0..1 + r.below(3))
            .map(|_| {
                let family = v6 ^ (other && r.chance(50));
                range(r, family)
            })
            .collect()
    };
    Selectors {
        local: side(r),
        remote: side(r),
    }
}

fn flow(r: &mut Rng) -> FlowKey {
    let v6 = r.chance(40);
    let protocol = [6, 17, 1, 50][r.below(4) as usize];
    let ports = matches!(protocol, 6 | 17) && r.chance(90);
    let port = |r: &mut Rng| ports.then(|| r.below(12) as u16);
    FlowKey {
        src: ip(addr(r, v6), v6),
        dst: ip(addr(r, v6), v6),
        protocol,
        src_port: port(r),
        dst_port: port(r),
    }
}

#[test]
fn indexed_lookup_agrees_with_the_linear_list() {
    let mut hits = 0;
    for seed in 0..40u64 {
        let mut r = Rng(seed);
        let (mut spd, mut model) = (Spd::default(), Linear::default());
        let mut keys: Vec<u32> = Vec::new();
        for step in 0..600 {
            match r.below(10) {
                0..=3 => {
                    let (sel, key) = (selectors(&mut r), r.below(200) as u32);
                    keys.push(key);
                    spd.push(sel.clone(), key);
                    model.push(sel, key);
                }
                4..=6 => {
                    let (sel, key) = (selectors(&mut r), r.below(200) as u32);
                    keys.push(key);
                    spd.insert_front(sel.clone(), key);
                    model.insert_front(sel, key);
                }
                _ => {
                    // A key that is there (all its entries go), or one that is not.
                    let key = if keys.is_empty() || r.chance(10) {
                        1000
                    } else {
                        keys.swap_remove(r.below(keys.len() as u64) as usize)
                    };
                    keys.retain(|k| *k != key);
                    spd.remove(key);
                    model.remove(key);
                }
            }
            assert_eq!(spd.len(), model.entries.len(), "seed {seed} step {step}");
            for _ in 0..20 {
                let k = flow(&mut r);
                let want = model.lookup(&k);
                hits += usize::from(want.is_some());
                assert_eq!(spd.lookup(&k), want, "seed {seed} step {step} {k:?}");
            }
        }
        // Emptied, the index is back to its two roots.
        for key in keys.drain(..).chain([1000]) {
            spd.remove(key);
        }
        spd.entries.iter().for_each(|e| assert!(e.is_none()));
        assert!(spd.is_empty());
        assert_eq!(spd.index_nodes(), 2, "seed {seed}");
    }
    // The random universe is small enough that lookups do hit.
    assert!(hits > 10_000, "{hits}");
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn key(src: IpAddr, dst: IpAddr) -> FlowKey {
    FlowKey {
        src,
        dst,
        protocol: 17,
        src_port: Some(1000),
        dst_port: Some(53),
    }
}

#[test]
fn ranges_that_are_not_prefixes_match_exactly_their_addresses() {
    // 203.0.113.7 – 203.0.113.200 (RFC 7296 §3.13.1: start and end address, inclusive).
    let sel = Selectors {
        local: vec![TrafficSelector::any(false)],
        remote: vec![TrafficSelector {
            start: v4([203, 0, 113, 7]),
            end: v4([203, 0, 113, 200]),
            ..TrafficSelector::any(false)
        }],
    };
    let mut spd = Spd::default();
    spd.push(sel, 1u32);
    let src = v4([198, 51, 100, 1]);
    for (last, hit) in [
        (6, false),
        (7, true),
        (8, true),
        (128, true),
        (200, true),
        (201, false),
    ] {
        let k = key(src, v4([203, 0, 113, last]));
        assert_eq!(spd.lookup(&k), hit.then_some(1), ".{last}");
    }
    // IPv6: 2001:db8::ff – 2001:db8::1:0.
    let s6: IpAddr = "2001:db8::ff".parse().expect("v6");
    let e6: IpAddr = "2001:db8::1:0".parse().expect("v6");
    spd.insert_front(
        Selectors {
            local: vec![TrafficSelector::any(true)],
            remote: vec![TrafficSelector {
                start: s6,
                end: e6,
                ..TrafficSelector::any(true)
            }],
        },
        2,
    );
    let src6: IpAddr = "2001:db8:1::1".parse().expect("v6");
    for (d, hit) in [
        ("2001:db8::fe", false),
        ("2001:db8::ff", true),
        ("2001:db8::8000", true),
        ("2001:db8::1:0", true),
        ("2001:db8::1:1", false),
    ] {
        let k = key(src6, d.parse().expect("v6"));
        assert_eq!(spd.lookup(&k), hit.then_some(2), "{d}");
    }
    // Families never cross: the IPv4 entry still answers IPv4 only.
    assert_eq!(spd.lookup(&key(src, v4([203, 0, 113, 9]))), Some(1));
    spd.remove(1);
    assert_eq!(spd.lookup(&key(src, v4([203, 0, 113, 9]))), None);
    assert_eq!(spd.lookup(&key(src6, s6)), Some(2));
}

#[test]
fn first_match_wins_across_prefix_lengths_and_removal_uncovers_the_next() {
    let src = v4([198, 51, 100, 1]);
    let remote = |a: [u8; 4], len: u8| Selectors {
        local: vec![TrafficSelector::any(false)],
        remote: vec![TrafficSelector::prefix(v4(a), len)],
    };
    let mut spd = Spd::default();
    // Order, not specificity, decides (RFC 4301 §4.4.1): the broad entry first wins.
    spd.push(remote([10, 0, 0, 0], 8), 1u32);
    spd.push(remote([10, 1, 2, 0], 24), 2);
    let k = key(src, v4([10, 1, 2, 3]));
    assert_eq!(spd.lookup(&k), Some(1));
    // A rekeyed SA goes in front of both.
    spd.insert_front(remote([10, 1, 2, 3], 32), 3);
    assert_eq!(spd.lookup(&k), Some(3));
    spd.remove(3);
    assert_eq!(spd.lookup(&k), Some(1));
    spd.remove(1);
    assert_eq!(spd.lookup(&k), Some(2));
    assert_eq!(spd.lookup(&key(src, v4([10, 9, 9, 9]))), None);
    // A source that no local selector covers misses even with the destination indexed.
    let narrow = Selectors {
        local: vec![TrafficSelector::prefix(v4([192, 0, 2, 0]), 24)],
        remote: vec![TrafficSelector::prefix(v4([10, 1, 2, 0]), 24)],
    };
    spd.insert_front(narrow, 4);
    assert_eq!(spd.lookup(&k), Some(2));
    assert_eq!(
        spd.lookup(&key(v4([192, 0, 2, 5]), v4([10, 1, 2, 3]))),
        Some(4)
    );
}

#[test]
fn ten_thousand_selectors_keep_the_index_small() {
    let mut spd = Spd::default();
    for i in 0..10_000u32 {
        let a = 0x0a00_0000 | (i << 8);
        let sel = Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector::prefix(IpAddr::V4(a.into()), 24)],
        };
        spd.push(sel, i);
    }
    let k = key(
        v4([198, 51, 100, 1]),
        IpAddr::V4((0x0a00_0000u32 | (4321 << 8) | 9).into()),
    );
    assert_eq!(spd.lookup(&k), Some(4321));
    // A path-compressed trie: fewer than two nodes per prefix (plus the two roots).
    assert!(spd.index_nodes() < 2 * 10_000 + 2, "{}", spd.index_nodes());
    for i in 0..10_000u32 {
        spd.remove(i);
    }
    assert_eq!(spd.index_nodes(), 2);
}

/// `cargo test -p iketcp-dataplane --release -- --ignored --nocapture spd_lookup_rate`
#[test]
#[ignore = "a measurement, not a check"]
fn spd_lookup_rate() {
    for n in [10u32, 10_000] {
        let mut spd = Spd::default();
        for i in 0..n {
            let a = 0x0a00_0000 | (i << 8);
            let sel = Selectors {
                local: vec![TrafficSelector::any(false)],
                remote: vec![TrafficSelector::prefix(IpAddr::V4(a.into()), 24)],
            };
            spd.push(sel, i);
        }
        let mut model = Linear::default();
        for e in spd.entries.iter().flatten() {
            model.push(e.sel.clone(), e.key);
        }
        let keys: Vec<FlowKey> = (0..1024u32)
            .map(|j| {
                let dst = 0x0a00_0000 | ((j.wrapping_mul(2_654_435_761) % n) << 8) | 1;
                key(v4([198, 51, 100, 1]), IpAddr::V4(dst.into()))
            })
            .collect();
        let rate = |rounds: u64, f: &dyn Fn(&FlowKey) -> Option<u32>| {
            let t = std::time::Instant::now();
            let mut found = 0u64;
            for _ in 0..rounds {
                for k in &keys {
                    found += u64::from(f(std::hint::black_box(k)).is_some());
                }
            }
            assert_eq!(found, rounds * keys.len() as u64);
            (rounds * keys.len() as u64) as f64 / t.elapsed().as_secs_f64()
        };
        let trie = rate(2000, &|k| spd.lookup(k));
        let linear = rate((200_000 / u64::from(n)).max(2), &|k| model.lookup(k));
        println!(
            "spd {n:>6} selectors: trie {trie:>12.0} lookups/s, linear {linear:>12.0} lookups/s"
        );
    }
}
