//! Reading the captures of tests: pcap records (LINKTYPE_RAW or Ethernet), TCP streams
//! reassembled per direction, and the RFC 9329 frames in them.
//!
//! Test helpers: malformed input fails the test by panicking, with a message.

use std::collections::{BTreeMap, BTreeSet};

/// One TCP segment of a connection direction: sequence number, SYN flag, payload.
#[derive(Debug)]
pub struct Segment {
    /// The segment's sequence number.
    pub seq: u32,
    /// SYN set.
    pub syn: bool,
    /// The TCP payload.
    pub payload: Vec<u8>,
}

/// (source address, source port, destination address, destination port).
pub type FourTuple = (Vec<u8>, u16, Vec<u8>, u16);

/// A big-endian u32 at the start of `b`.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;

/// The IP packets of a little-endian, microsecond pcap file (LINKTYPE_RAW, or Ethernet as
/// tcpdump writes it on a veth; non-IP frames such as ARP are left out).
pub fn pcap_records(file: &[u8]) -> Vec<&[u8]> {
    let le32 = |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    assert_eq!(le32(0), 0xa1b2_c3d4, "pcap magic");
    assert_eq!(&file[4..8], &[2, 0, 4, 0], "version 2.4");
    let linktype = le32(20);
    assert!(
        linktype == LINKTYPE_RAW || linktype == LINKTYPE_ETHERNET,
        "link type {linktype}"
    );
    let mut v = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let incl = le32(at + 8) as usize;
        assert_eq!(incl, le32(at + 12) as usize, "nothing truncated");
        let rec = &file[at + 16..at + 16 + incl];
        at += 16 + incl;
        if linktype == LINKTYPE_RAW {
            v.push(rec);
        } else if matches!(u16::from_be_bytes([rec[12], rec[13]]), 0x0800 | 0x86dd) {
            v.push(&rec[14..]);
        }
    }
    assert_eq!(at, file.len(), "whole records");
    v
}

/// The IP protocol (IPv4) or next header (IPv6), the addresses and the IP payload of a packet.
pub fn ip(p: &[u8]) -> (u8, Vec<u8>, Vec<u8>, &[u8]) {
    match p[0] >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            (p[9], p[12..16].to_vec(), p[16..20].to_vec(), &p[ihl..total])
        }
        6 => {
            let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
            (
                p[6],
                p[8..24].to_vec(),
                p[24..40].to_vec(),
                &p[40..40 + len],
            )
        }
        v => panic!("IP version {v} in the capture"),
    }
}

/// A direction's byte stream from its segments (retransmissions and reordering allowed, no
/// gaps: the capture loses nothing). Segments the capture saw after the last byte that made it
/// across are all the stream may lack.
pub fn reassemble(segs: &[Segment]) -> Vec<u8> {
    let Some(syn) = segs.iter().find(|s| s.syn) else {
        panic!("no SYN in the direction");
    };
    let first = syn.seq.wrapping_add(1);
    let mut parts: Vec<(u32, &[u8])> = segs
        .iter()
        .filter(|s| !s.payload.is_empty())
        .map(|s| (s.seq.wrapping_sub(first), &s.payload[..]))
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut stream = Vec::new();
    for (rel, data) in parts {
        let rel = rel as usize;
        assert!(
            rel <= stream.len(),
            "a gap in the TCP stream at {}",
            stream.len()
        );
        if rel + data.len() > stream.len() {
            stream.extend_from_slice(&data[stream.len() - rel..]);
        }
    }
    stream
}

/// What an RFC 9329 frame stream carried.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frames {
    /// IKE messages (behind a zero Non-ESP marker).
    pub ike: usize,
    /// ESP packets.
    pub esp: usize,
    /// The ESP packets' SPIs.
    pub spis: BTreeSet<u32>,
}

/// The TCP segments of a capture's packets (TCP only), by connection direction.
pub fn tcp_segments(records: &[&[u8]]) -> BTreeMap<FourTuple, Vec<Segment>> {
    let mut conns: BTreeMap<FourTuple, Vec<Segment>> = BTreeMap::new();
    for p in records {
        let (proto, src, dst, l4) = ip(p);
        if proto != 6 {
            continue;
        }
        let sport = u16::from_be_bytes([l4[0], l4[1]]);
        let dport = u16::from_be_bytes([l4[2], l4[3]]);
        let off = usize::from(l4[12] >> 4) * 4;
        conns
            .entry((src, sport, dst, dport))
            .or_default()
            .push(Segment {
                seq: be32(&l4[4..]),
                syn: l4[13] & 0x02 != 0,
                payload: l4[off..].to_vec(),
            });
    }
    conns
}

/// The bodies of a stream's RFC 9329 frames (2-byte Length including itself; IKE behind a zero
/// Non-ESP marker, ESP starting with its SPI). A frame cut off at the end (the capture
/// stopped) is left out; every Length read, that one's too, must be at least `min_len`.
pub fn frame_bodies(mut s: &[u8], min_len: usize) -> Vec<&[u8]> {
    let mut v = Vec::new();
    while s.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([s[0], s[1]]));
        assert!(len >= min_len, "Length {len} below {min_len}");
        if s.len() < len {
            break;
        }
        v.push(&s[2..len]);
        s = &s[len..];
    }
    v
}

/// Counts the IKE messages and ESP packets (and SPIs) of a stream's frames.
pub fn frames(s: &[u8]) -> Frames {
    let mut f = Frames::default();
    // No keepalives or empty frames expected here: every Length is at least 6.
    for body in frame_bodies(s, 6) {
        let spi = be32(body);
        if spi == 0 {
            f.ike += 1;
        } else {
            f.esp += 1;
            f.spis.insert(spi);
        }
    }
    f
}

/// The IKE messages and ESP packets of every TCP connection to `port` in a capture, both
/// directions; the Originator's stream must start with the `IKETCP` prefix (RFC 9329 §4).
pub fn capture_frames(file: &[u8], port: u16) -> Frames {
    let conns = tcp_segments(&pcap_records(file));
    let mut all = Frames::default();
    for (k, segs) in &conns {
        let stream = reassemble(segs);
        let body = if k.3 == port {
            assert_eq!(
                stream.get(..6),
                Some(&b"IKETCP"[..]),
                "the Originator's stream starts with the prefix: {k:?}"
            );
            &stream[6..]
        } else {
            assert_eq!(k.1, port, "a connection not to port {port}: {k:?}");
            &stream[..]
        };
        let f = frames(body);
        all.ike += f.ike;
        all.esp += f.esp;
        all.spis.extend(f.spis);
    }
    all
}
