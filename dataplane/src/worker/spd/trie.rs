//! A path-compressed binary trie of address prefixes, the SPD's index on the destination
//! address. Each node holds a bucket of (rank, entry) pairs sorted by rank; a lookup walks the
//! nodes whose prefixes contain the address, at most one per prefix length.
//!
//! IKEv2 selectors are address ranges (RFC 7296 §3.13.1); [`cover`] splits a range into the
//! prefixes that tile it exactly (at most 2·(bits−1)), so a range is found through the trie
//! like a prefix.

/// No child.
const NONE: u32 = u32::MAX;
/// The root (prefix of length 0) is node 0 and never freed.
const ROOT: u32 = 0;

/// The top `len` bits of `bits`, left-aligned in 128 bits (IPv4 in the top 32), the rest zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Prefix {
    bits: u128,
    len: u8,
}

#[inline]
fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// Bit `i` (0 = most significant) of `key`; `i` < 128.
#[inline]
fn bit(key: u128, i: u8) -> usize {
    ((key >> (127 - u32::from(i))) & 1) as usize
}

impl Prefix {
    /// A prefix of `len` bits of `bits` (left-aligned); bits past `len` are cleared.
    pub(super) fn new(bits: u128, len: u8) -> Self {
        let len = len.min(128);
        Prefix {
            bits: bits & mask(len),
            len,
        }
    }

    #[inline]
    fn contains(&self, key: u128) -> bool {
        key & mask(self.len) == self.bits
    }

    /// Length of the longest prefix both share.
    fn common(&self, o: &Prefix) -> u8 {
        let same = (self.bits ^ o.bits).leading_zeros().min(128) as u8;
        same.min(self.len).min(o.len)
    }
}

/// Appends the prefixes that tile `[start, end]` exactly, for addresses of `width` bits (32 or
/// 128) given right-aligned; nothing if `start > end`. Greedy from the left: each step takes the
/// largest aligned block that starts at `start` and ends at or before `end`.
pub(super) fn cover(mut start: u128, end: u128, width: u8, out: &mut Vec<Prefix>) {
    let width = width.min(128);
    let shift = 128 - u32::from(width);
    if start > end {
        return;
    }
    loop {
        let span = end - start;
        // The largest k with 2^k ≤ span + 1, without computing span + 1 (it overflows for the
        // whole IPv6 space).
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let align = start.trailing_zeros().min(u32::from(width));
        let k = fit.min(align);
        out.push(Prefix::new(start << shift, width - k as u8));
        let last = if k >= 128 {
            u128::MAX
        } else {
            start | ((1u128 << k) - 1)
        };
        if last >= end {
            return;
        }
        start = last + 1;
    }
}

#[derive(Debug)]
struct Node {
    prefix: Prefix,
    child: [u32; 2],
    /// Entries whose selectors cover this prefix: (rank, entry id), ascending rank.
    bucket: Vec<(i64, u32)>,
}

impl Node {
    fn new(prefix: Prefix) -> Self {
        Node {
            prefix,
            child: [NONE; 2],
            bucket: Vec::new(),
        }
    }
}

/// The trie of one address family.
#[derive(Debug)]
pub(super) struct Trie {
    nodes: Vec<Node>,
    free: Vec<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(Prefix::new(0, 0))],
            free: Vec::new(),
        }
    }
}

impl Trie {
    fn alloc(&mut self, n: Node) -> u32 {
        match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.nodes.get_mut(i as usize) {
                    *slot = n;
                }
                i
            }
            None => {
                self.nodes.push(n);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(i as usize)
    }

    fn node_mut(&mut self, i: u32) -> Option<&mut Node> {
        self.nodes.get_mut(i as usize)
    }

    /// Adds entry `id` with `rank` to the node of `p`, creating (and splitting) nodes as needed.
    pub(super) fn insert(&mut self, p: Prefix, rank: i64, id: u32) {
        let at = self.find_or_make(p);
        if let Some(n) = self.node_mut(at)
            && !n.bucket.iter().any(|&(_, e)| e == id)
        {
            let pos = n.bucket.partition_point(|&(r, _)| r < rank);
            n.bucket.insert(pos, (rank, id));
        }
    }

    fn find_or_make(&mut self, p: Prefix) -> u32 {
        let mut at = ROOT;
        loop {
            // Invariant: the prefix of `at` is a prefix of `p`.
            let Some(n) = self.node(at) else {
                return ROOT;
            };
            if n.prefix.len >= p.len {
                return at;
            }
            let side = bit(p.bits, n.prefix.len);
            let c = n.child[side];
            let Some(cn) = self.node(c) else {
                let leaf = self.alloc(Node::new(p));
                self.link(at, side, leaf);
                return leaf;
            };
            let cp = cn.prefix;
            let common = cp.common(&p);
            if common == cp.len {
                at = c;
                continue;
            }
            // `c` leaves `p`'s path below bit `common`: a node at `common` takes its place,
            // with `c` under it (and `p` as its other child unless `p` is that node).
            let mid = self.alloc(Node::new(Prefix::new(p.bits, common)));
            self.link(mid, bit(cp.bits, common), c);
            self.link(at, side, mid);
            if common == p.len {
                return mid;
            }
            let leaf = self.alloc(Node::new(p));
            self.link(mid, bit(p.bits, common), leaf);
            return leaf;
        }
    }

    fn link(&mut self, parent: u32, side: usize, child: u32) {
        if let Some(slot) = self.node_mut(parent).and_then(|n| n.child.get_mut(side)) {
            *slot = child;
        }
    }

    /// Removes entry `id` from the node of `p`, then frees nodes left without entries and
    /// splices out those left with one child, so the trie stays as small as its prefixes.
    pub(super) fn remove(&mut self, p: Prefix, id: u32) {
        let mut path: Vec<(u32, usize)> = Vec::new();
        let mut at = ROOT;
        loop {
            let Some(n) = self.node(at) else {
                return;
            };
            if n.prefix.len == p.len {
                if n.prefix != p {
                    return;
                }
                break;
            }
            if n.prefix.len > p.len || !n.prefix.contains(p.bits) {
                return;
            }
            let side = bit(p.bits, n.prefix.len);
            path.push((at, side));
            at = n.child[side];
        }
        if let Some(n) = self.node_mut(at) {
            n.bucket.retain(|&(_, e)| e != id);
        }
        while at != ROOT {
            let Some(n) = self.node(at) else {
                return;
            };
            if !n.bucket.is_empty() {
                return;
            }
            let kids: Vec<u32> = n.child.iter().copied().filter(|&c| c != NONE).collect();
            let Some((parent, side)) = path.pop() else {
                return;
            };
            match kids.as_slice() {
                [] => {
                    self.link(parent, side, NONE);
                    self.release(at);
                    at = parent;
                }
                [only] => {
                    self.link(parent, side, *only);
                    self.release(at);
                    return;
                }
                _ => return,
            }
        }
    }

    fn release(&mut self, i: u32) {
        if let Some(n) = self.node_mut(i) {
            n.bucket = Vec::new();
            n.child = [NONE; 2];
        }
        self.free.push(i);
    }

    /// Calls `visit` with the bucket of every node whose prefix contains `key`, shortest prefix
    /// first; stops when `visit` returns false.
    #[inline]
    pub(super) fn walk(&self, key: u128, mut visit: impl FnMut(&[(i64, u32)]) -> bool) {
        let mut at = ROOT;
        while let Some(n) = self.node(at) {
            if !n.prefix.contains(key) {
                return;
            }
            if !n.bucket.is_empty() && !visit(&n.bucket) {
                return;
            }
            if n.prefix.len >= 128 {
                return;
            }
            at = n.child[bit(key, n.prefix.len)];
        }
    }

    /// Nodes in use (the root included).
    pub(super) fn nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cover4(s: u32, e: u32) -> Vec<(u32, u8)> {
        let mut v = Vec::new();
        cover(u128::from(s), u128::from(e), 32, &mut v);
        v.iter().map(|p| ((p.bits >> 96) as u32, p.len)).collect()
    }

    #[test]
    fn ranges_split_into_the_prefixes_that_tile_them() {
        assert_eq!(cover4(0, u32::MAX), vec![(0, 0)]);
        assert_eq!(cover4(0x0a00_0000, 0x0aff_ffff), vec![(0x0a00_0000, 8)]);
        assert_eq!(cover4(5, 5), vec![(5, 32)]);
        // 10.0.0.1 – 10.0.0.6: .1/32, .2/31, .4/31, .6/32.
        let base = 0x0a00_0000;
        assert_eq!(
            cover4(base + 1, base + 6),
            vec![
                (base + 1, 32),
                (base + 2, 31),
                (base + 4, 31),
                (base + 6, 32)
            ]
        );
        assert!(cover4(9, 8).is_empty());
        // The worst case: 1 .. MAX−1 needs 2·(32−1) prefixes.
        assert_eq!(cover4(1, u32::MAX - 1).len(), 62);
        let mut v = Vec::new();
        cover(0, u128::MAX, 128, &mut v);
        assert_eq!(v, vec![Prefix::new(0, 0)]);
        v.clear();
        cover(1, u128::MAX, 128, &mut v);
        assert_eq!(v.len(), 128);
        assert_eq!(v.last(), Some(&Prefix::new(1u128 << 127, 1)));
    }

    #[test]
    fn random_ranges_are_tiled_exactly_by_aligned_prefixes() {
        let mut x: u64 = 7;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..4000 {
            let width = if round % 2 == 0 { 32u8 } else { 128 };
            let top = if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            let draw = |r: u64| {
                let v = (u128::from(r) << 64) | u128::from(r.rotate_left(17));
                // Mostly small spans, sometimes anything.
                v & top
            };
            let a = draw(next());
            let span = if round % 3 == 0 {
                draw(next())
            } else {
                u128::from(next() % 5000)
            };
            let (s, e) = (a, a.saturating_add(span).min(top));
            let mut v = Vec::new();
            cover(s, e, width, &mut v);
            assert!(
                v.len() <= 2 * (usize::from(width) - 1) || v.len() == 1,
                "{s}-{e}"
            );
            let shift = 128 - u32::from(width);
            let mut at = s;
            for (i, p) in v.iter().enumerate() {
                assert!(p.len <= width);
                let host = u32::from(width - p.len);
                let first = p.bits >> shift;
                assert_eq!(first, at, "contiguous, in order");
                let last = if host >= 128 {
                    u128::MAX
                } else {
                    first | ((1u128 << host) - 1)
                };
                assert!(host >= 128 || first & ((1u128 << host) - 1) == 0, "aligned");
                if i + 1 == v.len() {
                    assert_eq!(last, e, "ends at the end");
                } else {
                    at = last + 1;
                }
            }
        }
    }

    #[test]
    fn walk_visits_exactly_the_covering_prefixes_and_removal_shrinks() {
        let mut t = Trie::default();
        let p = |s: &str, len: u8| {
            let a: std::net::Ipv4Addr = s.parse().expect("addr");
            Prefix::new(u128::from(u32::from(a)) << 96, len)
        };
        let key =
            |s: &str| u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().expect("a"))) << 96;
        t.insert(p("10.0.0.0", 8), 3, 1);
        t.insert(p("10.1.0.0", 16), 1, 2);
        t.insert(p("10.1.2.0", 24), 2, 3);
        t.insert(p("10.2.0.0", 16), 0, 4);
        t.insert(p("0.0.0.0", 0), 9, 5);
        let seen = |t: &Trie, k: u128| {
            let mut v = Vec::new();
            t.walk(k, |b| {
                v.extend(b.iter().map(|x| x.1));
                true
            });
            v
        };
        assert_eq!(seen(&t, key("10.1.2.3")), vec![5, 1, 2, 3]);
        assert_eq!(seen(&t, key("10.1.3.3")), vec![5, 1, 2]);
        assert_eq!(seen(&t, key("10.2.0.1")), vec![5, 1, 4]);
        assert_eq!(seen(&t, key("11.0.0.0")), vec![5]);
        for (pre, id) in [(p("10.1.2.0", 24), 3), (p("10.1.0.0", 16), 2)] {
            t.remove(pre, id);
        }
        assert_eq!(seen(&t, key("10.1.2.3")), vec![5, 1]);
        t.remove(p("10.2.0.0", 16), 4);
        t.remove(p("10.0.0.0", 8), 1);
        assert_eq!(t.nodes(), 1, "only the root is left");
        assert_eq!(seen(&t, key("10.1.2.3")), vec![5]);
        // Removing what is not there changes nothing.
        t.remove(p("10.0.0.0", 8), 1);
        t.remove(p("0.0.0.0", 0), 77);
        assert_eq!(seen(&t, key("1.2.3.4")), vec![5]);
    }
}
