//! Ethernet in front of the per-connection `Medium::Ip` interfaces, for TAP ports: strips and adds
//! Ethernet headers, answers and sends ARP for IPv4, and keeps one small neighbor table for all
//! connections (smoltcp's per-interface neighbor caches would each need their own ARP).
//!
//! Neighbors are learned from ARP aimed at us and from the source MAC of IP frames sent to us (so
//! a Responder answers through whatever router delivered the SYN). IPv4 destinations without an
//! entry are resolved by ARP (for `gateway` if set, else the destination itself), holding a few
//! packets meanwhile. IPv6 has no NDP here: IPv6 frames are only sent to neighbors learned from
//! received frames.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, Ipv4Packet, Ipv6Packet,
};

use crate::port::{Packet, PacketPool};

/// Neighbor entries (bounded: a flood of sources must not grow it).
const MAX_NEIGHBORS: usize = 4096;
/// IP packets held while their neighbor is resolved.
const MAX_PENDING: usize = 64;
/// An entry is trusted this long after it was last confirmed by traffic from the neighbor.
const NEIGHBOR_TTL: Duration = Duration::from_secs(60);
/// At most one ARP request per target per this interval (as smoltcp and Linux do).
const ARP_INTERVAL: Duration = Duration::from_secs(1);
/// Held packets give up after this long (TCP retransmits them anyway).
const PENDING_TTL: Duration = Duration::from_secs(3);
/// Shortest Ethernet frame without FCS; ARP frames are padded to it.
const MIN_FRAME: usize = 60;

#[derive(Clone, Copy)]
struct Neighbor {
    mac: Option<EthernetAddress>,
    expires: Instant,
    asked: Option<Instant>,
}

/// Counters of the Ethernet layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct EthStats {
    /// ARP requests we sent.
    pub arp_requests: u64,
    /// ARP replies we sent.
    pub arp_replies: u64,
    /// Frames dropped on input (not for us, unknown type, malformed).
    pub frames_dropped: u64,
    /// IP packets dropped on output for lack of a neighbor (or a full hold queue).
    pub no_neighbor: u64,
}

pub(super) struct Eth {
    mac: EthernetAddress,
    /// Addresses we answer ARP for.
    answer: Vec<Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
    neighbors: HashMap<IpAddr, Neighbor>,
    pending: VecDeque<(Ipv4Addr, Instant, Packet)>,
    /// Frames ready for the port.
    pub framed: VecDeque<Packet>,
    pub stats: EthStats,
}

fn ipv4_src_dst(ip: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let p = Ipv4Packet::new_checked(ip).ok()?;
    Some((p.src_addr(), p.dst_addr()))
}

impl Eth {
    pub fn new(mac: [u8; 6], answer: Vec<Ipv4Addr>, gateway: Option<Ipv4Addr>) -> Self {
        Eth {
            mac: EthernetAddress(mac),
            answer,
            gateway,
            neighbors: HashMap::new(),
            pending: VecDeque::new(),
            framed: VecDeque::new(),
            stats: EthStats::default(),
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac.0
    }

    /// Also answers ARP for `ip` (a listening address).
    pub fn add_address(&mut self, ip: Ipv4Addr) {
        if !self.answer.contains(&ip) {
            self.answer.push(ip);
        }
    }

    /// Takes a received frame; returns the IP packet in it, or `None` if it was consumed (ARP)
    /// or dropped (its buffer back in `pool`).
    pub fn ingress(
        &mut self,
        mut pkt: Packet,
        pool: &mut PacketPool,
        now: Instant,
    ) -> Option<Packet> {
        let Ok(frame) = EthernetFrame::new_checked(pkt.data()) else {
            return self.drop_frame(pkt, pool);
        };
        let (dst, src, ethertype) = (frame.dst_addr(), frame.src_addr(), frame.ethertype());
        if !src.is_unicast() || (dst != self.mac && !dst.is_broadcast()) {
            return self.drop_frame(pkt, pool);
        }
        match ethertype {
            EthernetProtocol::Arp => {
                let payload = frame.payload();
                self.arp(payload, pool, now);
                pool.put(pkt);
                None
            }
            EthernetProtocol::Ipv4 | EthernetProtocol::Ipv6 if dst == self.mac => {
                let payload = frame.payload();
                let from = match payload.first().map(|b| b >> 4) {
                    Some(4) => ipv4_src_dst(payload).map(|(s, _)| IpAddr::V4(s)),
                    Some(6) => Ipv6Packet::new_checked(payload)
                        .ok()
                        .map(|p| IpAddr::V6(p.src_addr())),
                    _ => None,
                };
                if let Some(ip) = from.filter(|ip| super::unicast(*ip)) {
                    self.learn(ip, src, now);
                }
                let r = pkt.range();
                pkt.set_range(r.start + ETHERNET_HEADER_LEN..r.end);
                Some(pkt)
            }
            _ => self.drop_frame(pkt, pool),
        }
    }

    fn drop_frame(&mut self, pkt: Packet, pool: &mut PacketPool) -> Option<Packet> {
        self.stats.frames_dropped += 1;
        pool.put(pkt);
        None
    }

    fn arp(&mut self, payload: &[u8], pool: &mut PacketPool, now: Instant) {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            self.stats.frames_dropped += 1;
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            self.stats.frames_dropped += 1;
            return;
        };
        // Only ARP about us, from a sane unicast sender (no cache poisoning by bystanders).
        if !self.answer.contains(&target_protocol_addr)
            || !source_hardware_addr.is_unicast()
            || !super::unicast(source_protocol_addr.into())
        {
            return;
        }
        self.learn(source_protocol_addr.into(), source_hardware_addr, now);
        if operation == ArpOperation::Request {
            let reply = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: self.mac,
                source_protocol_addr: target_protocol_addr,
                target_hardware_addr: source_hardware_addr,
                target_protocol_addr: source_protocol_addr,
            };
            self.push_arp(reply, source_hardware_addr, pool);
            self.stats.arp_replies += 1;
        }
    }

    fn push_arp(&mut self, arp: ArpRepr, to: EthernetAddress, pool: &mut PacketPool) {
        let mut pkt = pool.get();
        let buf = pkt.prepare(MIN_FRAME);
        buf.fill(0);
        EthernetRepr {
            src_addr: self.mac,
            dst_addr: to,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut *buf));
        arp.emit(&mut ArpPacket::new_unchecked(
            &mut buf[ETHERNET_HEADER_LEN..],
        ));
        self.framed.push_back(pkt);
    }

    fn learn(&mut self, ip: IpAddr, mac: EthernetAddress, now: Instant) {
        if !self.neighbors.contains_key(&ip) && self.neighbors.len() >= MAX_NEIGHBORS {
            self.neighbors.retain(|_, n| n.expires > now);
            if self.neighbors.len() >= MAX_NEIGHBORS {
                return;
            }
        }
        self.neighbors.insert(
            ip,
            Neighbor {
                mac: Some(mac),
                expires: now + NEIGHBOR_TTL,
                asked: None,
            },
        );
    }

    fn lookup(&self, ip: IpAddr, now: Instant) -> Option<EthernetAddress> {
        let fresh = |ip: &IpAddr| {
            self.neighbors
                .get(ip)
                .filter(|n| n.expires > now)
                .and_then(|n| n.mac)
        };
        fresh(&ip).or_else(|| self.gateway.and_then(|gw| fresh(&IpAddr::V4(gw))))
    }

    /// ARP for `target` unless asked within the last interval.
    fn solicit(&mut self, target: Ipv4Addr, from: Ipv4Addr, pool: &mut PacketPool, now: Instant) {
        let key = IpAddr::V4(target);
        if let Some(n) = self.neighbors.get(&key)
            && n.asked.is_some_and(|t| now < t + ARP_INTERVAL)
        {
            return;
        }
        if !self.neighbors.contains_key(&key) && self.neighbors.len() >= MAX_NEIGHBORS {
            self.neighbors
                .retain(|_, n| n.expires > now || n.asked.is_some());
            if self.neighbors.len() >= MAX_NEIGHBORS {
                return;
            }
        }
        let entry = self.neighbors.entry(key).or_insert(Neighbor {
            mac: None,
            expires: now,
            asked: None,
        });
        entry.asked = Some(now);
        let req = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: self.mac,
            source_protocol_addr: from,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        self.push_arp(req, EthernetAddress::BROADCAST, pool);
        self.stats.arp_requests += 1;
    }

    fn prepend(
        &self,
        mut pkt: Packet,
        to: EthernetAddress,
        ethertype: EthernetProtocol,
    ) -> Option<Packet> {
        let r = pkt.range();
        let start = r.start.checked_sub(ETHERNET_HEADER_LEN)?;
        if !pkt.set_range(start..r.end) {
            return None;
        }
        let mut frame = EthernetFrame::new_unchecked(pkt.data_mut());
        frame.set_dst_addr(to);
        frame.set_src_addr(self.mac);
        frame.set_ethertype(ethertype);
        Some(pkt)
    }

    /// Frames IP packets from `out` into `framed` while it holds fewer than `cap`.
    pub fn egress(
        &mut self,
        out: &mut VecDeque<Packet>,
        pool: &mut PacketPool,
        cap: usize,
        now: Instant,
    ) {
        self.retry_pending(pool, cap, now);
        while self.framed.len() < cap {
            let Some(pkt) = out.pop_front() else {
                break;
            };
            self.send_ip(pkt, pool, now);
        }
    }

    fn send_ip(&mut self, pkt: Packet, pool: &mut PacketPool, now: Instant) {
        let data = pkt.data();
        let (dst, ethertype) = match data.first().map(|b| b >> 4) {
            Some(4) => match ipv4_src_dst(data) {
                Some((_, d)) => (IpAddr::V4(d), EthernetProtocol::Ipv4),
                None => return self.no_neighbor(pkt, pool),
            },
            Some(6) => match Ipv6Packet::new_checked(data) {
                Ok(p) => (IpAddr::V6(p.dst_addr()), EthernetProtocol::Ipv6),
                Err(_) => return self.no_neighbor(pkt, pool),
            },
            _ => return self.no_neighbor(pkt, pool),
        };
        if let Some(mac) = self.lookup(dst, now) {
            match self.prepend(pkt, mac, ethertype) {
                Some(f) => self.framed.push_back(f),
                None => self.stats.no_neighbor += 1,
            }
            return;
        }
        let (IpAddr::V4(dst4), Some((src4, _))) = (dst, ipv4_src_dst(pkt.data())) else {
            return self.no_neighbor(pkt, pool); // IPv6: no NDP
        };
        if self.pending.len() >= MAX_PENDING {
            return self.no_neighbor(pkt, pool);
        }
        self.solicit(self.gateway.unwrap_or(dst4), src4, pool, now);
        self.pending.push_back((dst4, now, pkt));
    }

    fn no_neighbor(&mut self, pkt: Packet, pool: &mut PacketPool) {
        self.stats.no_neighbor += 1;
        pool.put(pkt);
    }

    fn retry_pending(&mut self, pool: &mut PacketPool, cap: usize, now: Instant) {
        for _ in 0..self.pending.len() {
            let Some((dst, since, pkt)) = self.pending.pop_front() else {
                break;
            };
            match self.lookup(IpAddr::V4(dst), now) {
                Some(mac) if self.framed.len() < cap => {
                    match self.prepend(pkt, mac, EthernetProtocol::Ipv4) {
                        Some(f) => self.framed.push_back(f),
                        None => self.stats.no_neighbor += 1,
                    }
                }
                Some(_) => self.pending.push_back((dst, since, pkt)),
                None if now >= since + PENDING_TTL => self.no_neighbor(pkt, pool),
                None => {
                    if let Some((src, _)) = ipv4_src_dst(pkt.data()) {
                        self.solicit(self.gateway.unwrap_or(dst), src, pool, now);
                    }
                    self.pending.push_back((dst, since, pkt));
                }
            }
        }
    }
}
