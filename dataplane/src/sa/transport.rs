//! Transport mode on receive: the IP header is rebuilt from the SA's addresses in front of the
//! decrypted payload, and TCP/UDP checksums are recomputed where a NAT may have changed the
//! addresses the sender used (RFC 3948 §3.1.2, kept for TCP encapsulation by RFC 9329 §6.5).

use core::ops::Range;
use std::net::IpAddr;

use super::inbound::DecapError;
use crate::wire::esp::{ESP_PREFIX_LEN, next_header};
use crate::wire::ip::{IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, checksum_add, checksum_finish};

/// Bytes the buffer needs in front of the ESP packet so an IPv6 header fits where ESP header and IV
/// were (an IPv4 header needs 4).
pub const TRANSPORT_DECAP_HEADROOM: usize = IPV6_HEADER_LEN - ESP_PREFIX_LEN;

pub(super) fn rebuild(
    buf: &mut [u8],
    payload: Range<usize>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    fix_checksums: bool,
) -> Result<Range<usize>, DecapError> {
    let plen = payload.len();
    let end = payload.end;
    let (start, pseudo) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let start = payload
                .start
                .checked_sub(IPV4_MIN_HEADER_LEN)
                .ok_or(DecapError::NoHeadroom)?;
            let total = u16::try_from(plen + IPV4_MIN_HEADER_LEN)
                .map_err(|_| DecapError::BadInnerPacket)?;
            let h = &mut buf[start..payload.start];
            h.fill(0);
            h[0] = 0x45;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum_finish(checksum_add(0, h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let mut p = checksum_add(0, &s.octets());
            p = checksum_add(p, &d.octets());
            (start, p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let start = payload
                .start
                .checked_sub(IPV6_HEADER_LEN)
                .ok_or(DecapError::NoHeadroom)?;
            let plen16 = u16::try_from(plen).map_err(|_| DecapError::BadInnerPacket)?;
            let h = &mut buf[start..payload.start];
            h.fill(0);
            h[0] = 0x60;
            h[4..6].copy_from_slice(&plen16.to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            let mut p = checksum_add(0, &s.octets());
            p = checksum_add(p, &d.octets());
            (start, p)
        }
        _ => return Err(DecapError::BadInnerPacket),
    };
    if fix_checksums {
        fix_l4_checksum(&mut buf[payload], proto, pseudo);
    }
    Ok(start..end)
}

/// Recomputes the TCP or UDP checksum over the pseudo-header of the rebuilt packet. A UDP/IPv4
/// checksum of 0 means "none" and stays 0.
fn fix_l4_checksum(seg: &mut [u8], proto: u8, addr_sum: u32) {
    let off = match proto {
        next_header::TCP if seg.len() >= 20 => 16,
        next_header::UDP if seg.len() >= 8 => 6,
        _ => return,
    };
    if proto == next_header::UDP && seg[6] == 0 && seg[7] == 0 {
        return;
    }
    seg[off] = 0;
    seg[off + 1] = 0;
    let mut sum = addr_sum + u32::from(proto) + seg.len() as u32;
    sum = checksum_add(sum, seg);
    let mut c = checksum_finish(sum);
    if proto == next_header::UDP && c == 0 {
        c = 0xffff;
    }
    seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
}
