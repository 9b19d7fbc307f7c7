//! TCP segmentation and coalescing for a TUN device opened with `IFF_VNET_HDR` (the
//! `virtio_net_hdr` in front of every packet, as Linux's `tun` speaks it). With TSO enabled on the
//! device the kernel hands over inner TCP super-packets of up to 64 KiB in one `read`; the worker
//! cuts them into segments of the flow's MSS, each one an ordinary packet for ESP (what a NIC with
//! TSO does in hardware). Decrypted segments of one TCP flow that follow each other are written
//! back as one super-packet with one `writev` (what GRO does), and the kernel segments them again
//! only if the next hop needs it. wireguard-go does the same on its TUN device.
//!
//! Pure functions on bytes: no I/O, so every rule is tested here.

use super::{Packet, PacketPool};
use crate::wire::ip::{checksum_add, checksum_finish};

/// `sizeof(struct virtio_net_hdr)`: the header without `num_buffers`, set with `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` on is still to be computed.
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the type when the flow uses ECN.
const GSO_ECN: u8 = 0x80;
/// Largest IP packet a super-packet may be (the IPv4 Total Length, the IPv6 Payload Length).
pub const MAX_SUPER: usize = 65535;
/// Segments joined into one write at most.
pub const MAX_RUN: usize = 64;

const TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`; multi-byte fields in the host's byte order (legacy virtio, which is
/// what `tun` uses unless told `TUNSETVNETLE`/`BE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (IP and TCP); a hint, never trusted here.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the transport header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet read from the device could not be turned into segments (it is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Headers that do not add up, or a checksum position outside the packet.
    Malformed,
    /// A GSO type other than TCP (never enabled), IP options or IPv6 extension headers under
    /// TSO, or a segment larger than a buffer.
    Unsupported,
}

/// The IP and TCP layout of a TCP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpLayout {
    v6: bool,
    ip_len: usize,
    /// IP header plus TCP header.
    hdr_len: usize,
}

fn tcp_layout(p: &[u8]) -> Option<TcpLayout> {
    let v6 = match p.first()? >> 4 {
        4 => false,
        6 => true,
        _ => return None,
    };
    let ip_len = if v6 {
        if *p.get(6)? != TCP {
            return None;
        }
        40
    } else {
        if *p.get(9)? != TCP {
            return None;
        }
        usize::from(p[0] & 0x0f) * 4
    };
    let doff = usize::from(p.get(ip_len + 12)? >> 4) * 4;
    if ip_len < 20 || doff < 20 || p.len() < ip_len + doff {
        return None;
    }
    Some(TcpLayout {
        v6,
        ip_len,
        hdr_len: ip_len + doff,
    })
}

/// The pseudo-header sum (RFC 793 §3.1, RFC 8200 §8.1) for a TCP segment of `tcp_len` bytes.
fn pseudo_sum(p: &[u8], l: &TcpLayout, tcp_len: usize) -> u32 {
    let (src, dst) = if l.v6 {
        (&p[8..24], &p[24..40])
    } else {
        (&p[12..16], &p[16..20])
    };
    let sum = checksum_add(checksum_add(0, src), dst);
    let len = tcp_len as u32;
    sum + u32::from(TCP) + (len >> 16) + (len & 0xffff)
}

fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn get32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// Sets the IP length fields of a packet of `total` bytes and, for IPv4, its header checksum.
fn set_ip_len(p: &mut [u8], l: &TcpLayout, total: usize) {
    if l.v6 {
        put16(p, 4, (total - 40) as u16);
    } else {
        put16(p, 2, total as u16);
        put16(p, 10, 0);
        let c = checksum_finish(checksum_add(0, &p[..l.ip_len]));
        put16(p, 10, c);
    }
}

/// Computes and stores the TCP checksum of the whole segment `p`.
fn set_tcp_checksum(p: &mut [u8], l: &TcpLayout) {
    let at = l.ip_len + 16;
    put16(p, at, 0);
    let sum = pseudo_sum(p, l, p.len() - l.ip_len);
    let c = checksum_finish(checksum_add(sum, &p[l.ip_len..]));
    put16(p, at, c);
}

/// Turns one packet read from the device (`pkt`, after its header `h`) into packets for the
/// engine, appended to `out`: the packet itself with its checksum completed, or the segments of
/// a TCP super-packet. Returns how many.
pub fn split(
    h: &VnetHdr,
    pkt: &mut [u8],
    pool: &mut PacketPool,
    out: &mut Vec<Packet>,
) -> Result<usize, SplitError> {
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {
            if h.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(h, pkt)?;
            }
            let mut p = pool.get();
            if !p.fill_from(pkt) {
                pool.put(p);
                return Err(SplitError::Unsupported);
            }
            out.push(p);
            Ok(1)
        }
        GSO_TCPV4 | GSO_TCPV6 => segment(h, pkt, pool, out),
        _ => Err(SplitError::Unsupported),
    }
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` without GSO: the field holds the pseudo-header sum; the sum over
/// everything from `csum_start` completes it (as `skb_checksum_help` does).
fn complete_checksum(h: &VnetHdr, pkt: &mut [u8]) -> Result<(), SplitError> {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > pkt.len() || start > pkt.len() {
        return Err(SplitError::Malformed);
    }
    let mut c = checksum_finish(checksum_add(0, &pkt[start..]));
    // UDP sends a zero result as all ones (RFC 768); TCP's 0 and 0xffff are equal in one's
    // complement, so this is right for both.
    if c == 0 {
        c = 0xffff;
    }
    put16(pkt, at, c);
    Ok(())
}

fn segment(
    h: &VnetHdr,
    pkt: &mut [u8],
    pool: &mut PacketPool,
    out: &mut Vec<Packet>,
) -> Result<usize, SplitError> {
    let l = tcp_layout(pkt).ok_or(SplitError::Malformed)?;
    let v6_type = h.gso_type & !GSO_ECN == GSO_TCPV6;
    if l.v6 != v6_type {
        return Err(SplitError::Malformed);
    }
    if (!l.v6 && l.ip_len != 20) || h.gso_size == 0 {
        return Err(SplitError::Unsupported);
    }
    let mss = usize::from(h.gso_size);
    let hdr_len = l.hdr_len;
    let payload_len = pkt.len() - hdr_len;
    if payload_len == 0 {
        // Nothing to cut: one packet, its checksum completed.
        let mut p = pool.get();
        if !p.fill_from(pkt) {
            pool.put(p);
            return Err(SplitError::Unsupported);
        }
        set_tcp_checksum(p.data_mut(), &l);
        out.push(p);
        return Ok(1);
    }
    let (seq0, id0, flags0) = (
        get32(pkt, l.ip_len + 4),
        if l.v6 { 0 } else { get16(pkt, 4) },
        pkt[l.ip_len + 13],
    );
    let count = payload_len.div_ceil(mss);
    let first_out = out.len();
    for i in 0..count {
        let off = i * mss;
        let chunk = &pkt[hdr_len + off..hdr_len + (off + mss).min(payload_len)];
        let mut p = pool.get();
        let total = hdr_len + chunk.len();
        if p.max_len() < total {
            pool.put(p);
            for p in out.drain(first_out..) {
                pool.put(p);
            }
            return Err(SplitError::Unsupported);
        }
        let d = p.prepare(total);
        d[..hdr_len].copy_from_slice(&pkt[..hdr_len]);
        d[hdr_len..].copy_from_slice(chunk);
        if !l.v6 {
            put16(d, 4, id0.wrapping_add(i as u16));
        }
        set_ip_len(d, &l, total);
        d[l.ip_len + 4..l.ip_len + 8].copy_from_slice(&seq0.wrapping_add(off as u32).to_be_bytes());
        // As the kernel's own TSO: FIN and PSH only on the last segment, CWR only on the first.
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        d[l.ip_len + 13] = flags;
        set_tcp_checksum(d, &l);
        out.push(p);
    }
    Ok(count)
}

/// A decrypted TCP segment that may be joined with the ones after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    layout_v6: bool,
    ip_len: usize,
    hdr_len: usize,
    seq: u32,
    payload: usize,
    /// IPv4 Identification (0 for IPv6).
    id: u16,
    flags: u8,
}

impl Segment {
    /// `p` as a segment that may take part in coalescing: plain TCP carrying data, with ACK and
    /// at most PSH set, no IPv4 options or fragments, lengths that add up and a valid checksum
    /// (GRO checks it too: a joined packet gets a fresh one, which must not hide corruption).
    pub fn parse(p: &[u8]) -> Option<Segment> {
        let l = tcp_layout(p)?;
        let total = if l.v6 {
            40 + usize::from(get16(p, 4))
        } else {
            if l.ip_len != 20 || get16(p, 6) & 0x3fff != 0 {
                return None;
            }
            usize::from(get16(p, 2))
        };
        let flags = p[l.ip_len + 13];
        if total != p.len()
            || total <= l.hdr_len
            || flags & !(TCP_ACK | TCP_PSH) != 0
            || flags & TCP_ACK == 0
        {
            return None;
        }
        let sum = pseudo_sum(p, &l, total - l.ip_len);
        if checksum_finish(checksum_add(sum, &p[l.ip_len..])) != 0 {
            return None;
        }
        Some(Segment {
            layout_v6: l.v6,
            ip_len: l.ip_len,
            hdr_len: l.hdr_len,
            seq: get32(p, l.ip_len + 4),
            payload: total - l.hdr_len,
            id: if l.v6 { 0 } else { get16(p, 4) },
            flags,
        })
    }

    /// Payload bytes.
    pub fn payload(&self) -> usize {
        self.payload
    }

    /// Header bytes (IP and TCP).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }
}

/// A run of segments being joined: its first segment's layout and the running totals.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    first: Segment,
    last: Segment,
    count: usize,
    total: usize,
}

impl Run {
    /// A run of one.
    pub fn new(first: Segment) -> Run {
        Run {
            first,
            last: first,
            count: 1,
            total: first.hdr_len + first.payload,
        }
    }

    /// Segments in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether `next` (whose bytes are `next_pkt`) continues the run whose first packet is
    /// `first_pkt`: the same flow and headers (but for lengths, IPv4 Identification, checksums,
    /// sequence number and PSH), the next sequence number and Identification, every segment but
    /// the last exactly the first's size, no PSH before the end, and room under 64 KiB.
    pub fn accepts(&self, first_pkt: &[u8], next: &Segment, next_pkt: &[u8]) -> bool {
        let (f, last) = (&self.first, &self.last);
        if self.count >= MAX_RUN
            || next.layout_v6 != f.layout_v6
            || next.hdr_len != f.hdr_len
            || last.flags & TCP_PSH != 0
            || last.payload != f.payload
            || next.payload > f.payload
            || next.seq != last.seq.wrapping_add(last.payload as u32)
            || self.total + next.payload > MAX_SUPER
        {
            return false;
        }
        if !f.layout_v6 && next.id != last.id.wrapping_add(1) {
            return false;
        }
        same_headers(first_pkt, next_pkt, f)
    }

    /// Adds `next` (checked with [`accepts`](Self::accepts)).
    pub fn push(&mut self, next: Segment) {
        self.last = next;
        self.count += 1;
        self.total += next.payload;
    }

    /// Rewrites the first packet's headers for the joined packet and returns the header to
    /// write before it; the other segments' payloads follow it in the same write.
    pub fn finish(&self, first_pkt: &mut [u8]) -> VnetHdr {
        let f = &self.first;
        if self.count == 1 {
            // Complete as it is: no offload asked for.
            return VnetHdr::default();
        }
        let l = TcpLayout {
            v6: f.layout_v6,
            ip_len: f.ip_len,
            hdr_len: f.hdr_len,
        };
        set_ip_len(first_pkt, &l, self.total);
        // The joined packet carries the last segment's PSH, as the original super-packet did.
        first_pkt[f.ip_len + 13] = f.flags | (self.last.flags & TCP_PSH);
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, folded, not complemented.
        let sum = pseudo_sum(first_pkt, &l, self.total - f.ip_len);
        put16(first_pkt, f.ip_len + 16, !checksum_finish(sum));
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if f.layout_v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: f.hdr_len as u16,
            gso_size: f.payload as u16,
            csum_start: f.ip_len as u16,
            csum_offset: 16,
        }
    }
}

/// Headers equal but for what differs between segments of one super-packet: IP lengths, IPv4
/// Identification and header checksum, TCP sequence number, flags (PSH) and checksum.
fn same_headers(a: &[u8], b: &[u8], s: &Segment) -> bool {
    let ip = s.ip_len;
    let ip_same = if s.layout_v6 {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    } else {
        a[..2] == b[..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20]
    };
    // TCP: ports; acknowledgment, offset, window (skipping seq, flags, checksum); urgent and options.
    ip_same
        && a[ip..ip + 4] == b[ip..ip + 4]
        && a[ip + 8..ip + 13] == b[ip + 8..ip + 13]
        && a[ip + 14..ip + 16] == b[ip + 14..ip + 16]
        && a[ip + 18..s.hdr_len] == b[ip + 18..s.hdr_len]
}

#[cfg(test)]
mod tests;
