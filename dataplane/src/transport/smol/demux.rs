//! Header peeking for the 4-tuple demux, and RSTs for segments that match no connection.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, IpVersion, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};

use crate::port::Packet;

/// A connection's 4-tuple, from our side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Key {
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
}

/// What the demux needs from a segment.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seg {
    pub key: Key,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when `ack`).
    pub ack_no: u32,
}

/// What a SYN-ACK depends on from the peer's SYN: enough to replay the SYN later into a fresh
/// socket (the SYN cache keeps this instead of a socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SynInfo {
    pub seq: u32,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack: bool,
}

/// Source, destination and IP payload of an unfragmented IPv4/IPv6 packet carrying TCP. IPv6
/// extension headers are not followed (TCP must be the first next header).
fn ip_tcp(data: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    if data.is_empty() {
        return None; // `IpVersion::of_packet` indexes byte 0.
    }
    match IpVersion::of_packet(data).ok()? {
        IpVersion::Ipv4 => {
            let ip = Ipv4Packet::new_checked(data).ok()?;
            if ip.more_frags() || ip.frag_offset() != 0 || ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            Some((ip.src_addr().into(), ip.dst_addr().into(), ip.payload()))
        }
        IpVersion::Ipv6 => {
            let ip = Ipv6Packet::new_checked(data).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            Some((ip.src_addr().into(), ip.dst_addr().into(), ip.payload()))
        }
    }
}

/// Reads addresses, ports and flags; checksums are left to smoltcp (or [`rst_reply`]).
pub(super) fn parse(data: &[u8]) -> Option<Seg> {
    let (src, dst, payload) = ip_tcp(data)?;
    let tcp = TcpPacket::new_checked(payload).ok()?;
    if tcp.src_port() == 0 || tcp.dst_port() == 0 {
        return None;
    }
    Some(Seg {
        key: Key {
            local: dst,
            lport: tcp.dst_port(),
            remote: src,
            rport: tcp.src_port(),
        },
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        seq: tcp.seq_number().0 as u32,
        ack_no: tcp.ack_number().0 as u32,
    })
}

/// The fully parsed TCP segment of `data` (checksum verified unless `caps` says the port does it).
fn tcp_repr<'a>(data: &'a [u8], caps: &ChecksumCapabilities) -> Option<TcpRepr<'a>> {
    let (src, dst, payload) = ip_tcp(data)?;
    let tcp = TcpPacket::new_checked(payload).ok()?;
    TcpRepr::parse(&tcp, &src.into(), &dst.into(), caps).ok()
}

/// True if `data` is a well-formed TCP segment whose checksum holds (or is the port's job).
pub(super) fn well_formed(data: &[u8], caps: &ChecksumCapabilities) -> bool {
    tcp_repr(data, caps).is_some()
}

/// The options of a SYN (not a SYN-ACK), checksum verified as [`well_formed`] does.
pub(super) fn syn_info(data: &[u8], caps: &ChecksumCapabilities) -> Option<SynInfo> {
    let tcp = tcp_repr(data, caps)?;
    if tcp.control != TcpControl::Syn || tcp.ack_number.is_some() {
        return None;
    }
    Some(SynInfo {
        seq: tcp.seq_number.0 as u32,
        window: tcp.window_len,
        mss: tcp.max_seg_size,
        wscale: tcp.window_scale,
        sack: tcp.sack_permitted,
    })
}

/// Our sequence number in a SYN-ACK we sent (`data` is one of our own packets).
pub(super) fn synack_seq(data: &[u8]) -> Option<u32> {
    let (_, _, payload) = ip_tcp(data)?;
    let tcp = TcpPacket::new_checked(payload).ok()?;
    (tcp.syn() && tcp.ack() && !tcp.rst()).then(|| tcp.seq_number().0 as u32)
}

/// Writes into `out` the SYN `syn` describes, from the peer of `key` to us, without payload
/// (data in a SYN is not acknowledged by our SYN-ACK, so the peer sends it again).
pub(super) fn emit_syn(key: &Key, syn: &SynInfo, out: &mut Packet) -> bool {
    let (src, dst) = (IpAddress::from(key.remote), IpAddress::from(key.local));
    let repr = TcpRepr {
        src_port: key.rport,
        dst_port: key.lport,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(syn.seq as i32),
        ack_number: None,
        window_len: syn.window,
        window_scale: syn.wscale,
        max_seg_size: syn.mss,
        sack_permitted: syn.sack,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip = IpRepr::new(src, dst, IpProtocol::Tcp, repr.buffer_len(), 64);
    let (total, hdr) = (ip.buffer_len(), ip.header_len());
    // Always with checksums: the socket verifies them unless the port is trusted to.
    let caps = ChecksumCapabilities::default();
    let buf = out.prepare(total);
    if buf.len() < total {
        return false;
    }
    ip.emit(&mut *buf, &caps);
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[hdr..]),
        &src,
        &dst,
        &caps,
    );
    true
}

/// Writes into `out` the RST answering `data` (RFC 9293 §3.10.7.1: seq from the ACK field, or
/// seq 0 with ACK = SEG.SEQ + SEG.LEN). Returns false, writing nothing useful, if `data` is not a
/// well-formed TCP segment with a valid checksum, or is itself an RST.
pub(super) fn rst_reply(data: &[u8], out: &mut Packet) -> bool {
    let Some((src, dst, payload)) = ip_tcp(data) else {
        return false;
    };
    let Ok(tcp) = TcpPacket::new_checked(payload) else {
        return false;
    };
    let (src, dst) = (IpAddress::from(src), IpAddress::from(dst));
    let caps = ChecksumCapabilities::default();
    let Ok(seg) = TcpRepr::parse(&tcp, &src, &dst, &caps) else {
        return false;
    };
    if seg.control == TcpControl::Rst {
        return false;
    }
    let reply = TcpRepr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        control: TcpControl::Rst,
        seq_number: seg.ack_number.unwrap_or_default(),
        ack_number: match seg.ack_number {
            Some(_) => None,
            None => Some(seg.seq_number + seg.segment_len()),
        },
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip = IpRepr::new(dst, src, IpProtocol::Tcp, reply.buffer_len(), 64);
    let total = ip.buffer_len();
    let hdr = ip.header_len();
    let buf = out.prepare(total);
    if buf.len() < total {
        return false;
    }
    ip.emit(&mut *buf, &caps);
    reply.emit(
        &mut TcpPacket::new_unchecked(&mut buf[hdr..]),
        &dst,
        &src,
        &caps,
    );
    true
}
