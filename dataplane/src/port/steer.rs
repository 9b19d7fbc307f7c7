//! Steering: when several workers share one port, each packet goes to the worker that owns its
//! TCP connection, chosen by a symmetric hash of the 4-tuple, so a connection always lands on the
//! same worker in both directions. A worker that opens a connection picks its ephemeral port so
//! that the connection hashes to itself (see `SmolConfig::steer`).

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::mem::{MemConfig, MemPort, pair};
use super::{Medium, Packet, PacketPool, Port, SharedLinkCounters};

/// This worker's share of a steered port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steer {
    /// Index of the worker.
    pub index: u16,
    /// Number of workers sharing the port.
    pub count: u16,
}

impl Steer {
    /// Does a connection with this 4-tuple belong to this worker?
    pub fn owns(&self, a: IpAddr, a_port: u16, b: IpAddr, b_port: u16) -> bool {
        self.count <= 1
            || tuple_hash(a, a_port, b, b_port) % u32::from(self.count) == u32::from(self.index)
    }
}

/// A hash of a TCP/UDP 4-tuple that is the same for both directions: the two endpoints are put
/// in a fixed order before hashing (FNV-1a over the bytes, then a final mix).
pub fn tuple_hash(a: IpAddr, a_port: u16, b: IpAddr, b_port: u16) -> u32 {
    let ka = (addr_bytes(a), a_port);
    let kb = (addr_bytes(b), b_port);
    let (lo, hi) = if ka <= kb { (ka, kb) } else { (kb, ka) };
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for x in bytes {
            h = (h ^ u32::from(*x)).wrapping_mul(0x0100_0193);
        }
    };
    eat(&lo.0);
    eat(&lo.1.to_be_bytes());
    eat(&hi.0);
    eat(&hi.1.to_be_bytes());
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^ (h >> 13)
}

fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The symmetric flow hash of a packet (IPv4/IPv6 with TCP or UDP; after the Ethernet header on
/// an Ethernet port). `None` for anything else (ARP, fragments, other protocols).
pub fn flow_hash(pkt: &[u8], medium: Medium) -> Option<u32> {
    let ip = match medium {
        Medium::Ip => pkt,
        Medium::Ethernet => {
            let ethertype = u16::from_be_bytes([*pkt.get(12)?, *pkt.get(13)?]);
            if ethertype != 0x0800 && ethertype != 0x86dd {
                return None;
            }
            pkt.get(14..)?
        }
    };
    let info = crate::wire::ip::parse(ip)?;
    let (src, dst) = match info.version {
        crate::wire::ip::IpVersion::V4 => {
            // A non-first fragment carries no ports.
            if u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff != 0 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d))
        }
        crate::wire::ip::IpVersion::V6 => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d))
        }
    };
    if !matches!(info.protocol, 6 | 17) {
        return None;
    }
    let l4 = ip.get(info.header_len..info.header_len + 4)?;
    let sp = u16::from_be_bytes([l4[0], l4[1]]);
    let dp = u16::from_be_bytes([l4[2], l4[3]]);
    Some(tuple_hash(src, sp, dst, dp))
}

/// Shares one port among `n` workers: each worker gets a [`MemPort`]; the splitter moves packets
/// between the shared port and those by flow hash. Packets without a flow (ARP, ...) go to every
/// worker, so each can answer or learn from them.
#[derive(Debug)]
pub struct Splitter<P: Port> {
    port: P,
    ends: Vec<MemPort>,
    pool: PacketPool,
    burst: Vec<Packet>,
    queues: Vec<VecDeque<Packet>>,
    out: VecDeque<Packet>,
    /// The shared port's link counters, for worker 0's end to report (once, not `n` times).
    link: Arc<SharedLinkCounters>,
    steps: u32,
}

/// Splits `port` among `n` workers; returns the splitter and one port per worker (worker `i`
/// gets `ports[i]` and must use `Steer { index: i, count: n }` when it opens connections).
pub fn split<P: Port>(port: P, n: u16, ring: usize) -> (Splitter<P>, Vec<MemPort>) {
    let n = n.max(1);
    let mut ends = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..n {
        let (mine, theirs) = pair(MemConfig {
            capacity: ring.max(64),
            medium: port.medium(),
            mtu: port.mtu(),
            ..MemConfig::default()
        });
        ends.push(mine);
        workers.push(theirs);
    }
    let queues = (0..n).map(|_| VecDeque::new()).collect();
    let link = Arc::new(SharedLinkCounters::default());
    link.store(port.link_counters());
    if let Some(w) = workers.first_mut() {
        w.report_link(link.clone());
    }
    let s = Splitter {
        port,
        ends,
        pool: PacketPool::default(),
        burst: Vec::with_capacity(64),
        queues,
        out: VecDeque::new(),
        link,
        steps: 0,
    };
    (s, workers)
}

impl<P: Port> Splitter<P> {
    /// One round: shared port → workers, workers → shared port. Returns packets moved.
    pub fn step(&mut self) -> io::Result<usize> {
        let medium = self.port.medium();
        let n = self.ends.len();
        let mut moved = 0;
        // Ingress, unless a worker's queue is backed up (then the port's own buffer holds on).
        if self.queues.iter().all(|q| q.len() < 1024) {
            self.burst.clear();
            moved += self.port.recv_burst(&mut self.pool, &mut self.burst, 64)?;
            for p in self.burst.drain(..) {
                match flow_hash(p.data(), medium) {
                    Some(h) => {
                        if let Some(q) = self.queues.get_mut(h as usize % n) {
                            q.push_back(p);
                        }
                    }
                    None => {
                        for q in self.queues.iter_mut().skip(1) {
                            let mut c = self.pool.get();
                            if c.fill_from(p.data()) {
                                q.push_back(c);
                            }
                        }
                        if let Some(q) = self.queues.first_mut() {
                            q.push_back(p);
                        }
                    }
                }
            }
        }
        for (end, q) in self.ends.iter_mut().zip(self.queues.iter_mut()) {
            if !q.is_empty() {
                end.send_burst(&mut self.pool, q)?;
            }
        }
        // Egress.
        if self.out.len() < 1024 {
            for end in &mut self.ends {
                self.burst.clear();
                moved += end.recv_burst(&mut self.pool, &mut self.burst, 64)?;
                self.out.extend(self.burst.drain(..));
            }
        }
        if !self.out.is_empty() {
            self.port.send_burst(&mut self.pool, &mut self.out)?;
        }
        // Now and then, not every round: reading them may be a syscall (AF_XDP statistics).
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(4096) {
            self.link.store(self.port.link_counters());
        }
        Ok(moved)
    }

    /// Runs [`step`](Self::step) on its own thread until `stop` is set; sleeps briefly when idle.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<io::Result<()>>>
    where
        P: 'static,
    {
        std::thread::Builder::new()
            .name("iketcp-steer".into())
            .spawn(move || {
                let mut idle = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if self.step()? == 0 {
                        idle = idle.saturating_add(1);
                        if idle == 1024 {
                            // Going idle: the counters are current while nothing moves.
                            self.link.store(self.port.link_counters());
                        }
                        if idle > 1024 {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    } else {
                        idle = 0;
                    }
                }
                Ok(())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn tcp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[3] = 40;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p
    }

    #[test]
    fn hash_is_symmetric_and_matches_tuple_hash() {
        let a = tcp([192, 0, 2, 1], 4500, [198, 51, 100, 7], 50123);
        let b = tcp([198, 51, 100, 7], 50123, [192, 0, 2, 1], 4500);
        let ha = flow_hash(&a, Medium::Ip).expect("tcp");
        assert_eq!(Some(ha), flow_hash(&b, Medium::Ip));
        let t = tuple_hash(
            Ipv4Addr::new(192, 0, 2, 1).into(),
            4500,
            Ipv4Addr::new(198, 51, 100, 7).into(),
            50123,
        );
        assert_eq!(ha, t);
        let mut eth = vec![0u8; 14];
        eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        eth.extend_from_slice(&a);
        assert_eq!(flow_hash(&eth, Medium::Ethernet), Some(ha));
        eth[12] = 0x08;
        eth[13] = 0x06; // ARP
        assert_eq!(flow_hash(&eth, Medium::Ethernet), None);
        assert_eq!(flow_hash(&[0x45, 0, 0], Medium::Ip), None);
    }

    #[test]
    fn ports_spread_over_workers_and_steer_owns_agrees() {
        let local = IpAddr::from(Ipv4Addr::new(192, 0, 2, 2));
        let remote = IpAddr::from(Ipv4Addr::new(192, 0, 2, 1));
        let mut counts = [0u32; 4];
        for port in 49152..53248u16 {
            let h = tuple_hash(local, port, remote, 4500);
            counts[(h % 4) as usize] += 1;
            let owner = Steer {
                index: (h % 4) as u16,
                count: 4,
            };
            assert!(owner.owns(remote, 4500, local, port));
        }
        for c in counts {
            assert!((800..=1250).contains(&c), "uneven spread {counts:?}");
        }
    }

    /// A port that only counts, as an AF_XDP port's link would.
    struct Counting(u64);

    impl Port for Counting {
        fn recv_burst(
            &mut self,
            _: &mut PacketPool,
            _: &mut Vec<Packet>,
            _: usize,
        ) -> io::Result<usize> {
            self.0 += 1;
            Ok(0)
        }
        fn send_burst(
            &mut self,
            _: &mut PacketPool,
            _: &mut VecDeque<Packet>,
        ) -> io::Result<usize> {
            Ok(0)
        }
        fn medium(&self) -> Medium {
            Medium::Ethernet
        }
        fn mtu(&self) -> usize {
            1514
        }
        fn link_counters(&self) -> super::super::LinkCounters {
            super::super::LinkCounters {
                rx_packets: self.0,
                tx_packets: 7,
                dropped: 1,
            }
        }
    }

    #[test]
    fn a_shared_ports_link_counters_are_reported_by_worker_0_only() {
        let (mut split, workers) = split(Counting(0), 2, 64);
        assert_eq!(
            workers[0].link_counters().tx_packets,
            7,
            "published at the split"
        );
        for _ in 0..4096 {
            split.step().unwrap();
        }
        let c = workers[0].link_counters();
        assert_eq!((c.rx_packets, c.tx_packets, c.dropped), (4096, 7, 1));
        assert_eq!(workers[1].link_counters(), Default::default());
    }

    #[test]
    fn splitter_delivers_each_flow_to_its_worker_and_merges_egress() {
        let (outside, shared) = pair(MemConfig::default());
        let (mut split, mut workers) = split(shared, 3, 1024);
        let mut outside = outside;
        let mut pool = PacketPool::default();
        let mut q = VecDeque::new();
        let flows: Vec<Vec<u8>> = (0..30u16)
            .map(|i| tcp([198, 51, 100, 7], 40000 + i, [192, 0, 2, 1], 4500))
            .collect();
        for f in &flows {
            let mut p = pool.get();
            assert!(p.fill_from(f));
            q.push_back(p);
        }
        outside.send_burst(&mut pool, &mut q).expect("send");
        for _ in 0..4 {
            split.step().expect("step");
        }
        let mut got = 0;
        for (i, w) in workers.iter_mut().enumerate() {
            let mut v = Vec::new();
            w.recv_burst(&mut pool, &mut v, 64).expect("recv");
            for p in &v {
                let h = flow_hash(p.data(), Medium::Ip).expect("flow");
                assert_eq!(h as usize % 3, i, "packet landed on the wrong worker");
            }
            got += v.len();
            // Each worker answers; everything comes out of the shared port.
            let mut back: VecDeque<Packet> = v.into_iter().collect();
            w.send_burst(&mut pool, &mut back).expect("send");
        }
        assert_eq!(got, 30);
        for _ in 0..4 {
            split.step().expect("step");
        }
        let mut out = Vec::new();
        outside.recv_burst(&mut pool, &mut out, 64).expect("recv");
        assert_eq!(out.len(), 30);
    }
}
