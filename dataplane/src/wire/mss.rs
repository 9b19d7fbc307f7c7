//! TCP MSS clamping of inner packets: a SYN whose MSS option promises segments larger than fit
//! the tunnel's MTU gets a smaller MSS, so inner TCP never sends segments the TUN device would
//! have to drop or fragment (the tunnel MTU of RFC 9329 §3 is below the LAN's 1500 bytes). The
//! checksum is updated incrementally (RFC 1624 eqn. 3).

use super::ip::{IpVersion, parse};

const TCP: u8 = 6;
const SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// The largest MSS for a tunnel MTU: MTU minus the IP header and the 20-byte TCP header.
pub fn mss_for_mtu(mtu: u16, version: IpVersion) -> u16 {
    let ip = match version {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    mtu.saturating_sub(ip + 20)
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) in the IP packet `pkt` to what fits `mtu`.
/// Returns whether the packet was changed. Anything that is not a well-formed TCP SYN with an
/// MSS option (fragments, IPv6 extension headers, truncated options) is left alone.
pub fn clamp(pkt: &mut [u8], mtu: u16) -> bool {
    let Some(ip) = parse(pkt) else { return false };
    if ip.protocol != TCP {
        return false;
    }
    if ip.version == IpVersion::V4 {
        // Only the first fragment has the TCP header; a later one has a non-zero offset.
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
        if frag != 0 {
            return false;
        }
    }
    let max = mss_for_mtu(mtu, ip.version);
    let tcp = ip.header_len;
    let Some(h) = pkt.get(tcp..ip.total_len) else {
        return false;
    };
    if h.len() < 20 || h[13] & SYN == 0 {
        return false;
    }
    let data_off = usize::from(h[12] >> 4) * 4;
    if data_off < 20 || data_off > h.len() {
        return false;
    }
    let mut i = 20;
    while i < data_off {
        match h[i] {
            OPT_END => return false,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = h.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > data_off {
                    return false;
                }
                if kind == OPT_MSS && len == 4 {
                    let at = tcp + i + 2;
                    let old = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
                    if old <= max {
                        return false;
                    }
                    pkt[at..at + 2].copy_from_slice(&max.to_be_bytes());
                    let c = tcp + 16;
                    let sum = u16::from_be_bytes([pkt[c], pkt[c + 1]]);
                    pkt[c..c + 2].copy_from_slice(&update(sum, old, max).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
fn update(sum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::super::ip::{checksum_add, checksum_finish};
    use super::*;

    /// An IPv4 TCP SYN with MSS `mss` (and a NOP, a window scale) and a correct checksum.
    fn syn_v4(mss: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(48u16).to_be_bytes());
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[198, 51, 100, 10]);
        p[16..20].copy_from_slice(&[203, 0, 113, 10]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[12] = 7 << 4;
        t[13] = flags;
        t[20..24].copy_from_slice(&[OPT_MSS, 4, (mss >> 8) as u8, mss as u8]);
        t[24..28].copy_from_slice(&[OPT_NOP, 3, 3, 7]);
        let c = tcp_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_checksum(p: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, TCP]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        let mut seg = p[20..].to_vec();
        seg[16] = 0;
        seg[17] = 0;
        checksum_finish(checksum_add(checksum_add(0, &pseudo), &seg))
    }

    fn mss(p: &[u8]) -> u16 {
        u16::from_be_bytes([p[42], p[43]])
    }

    #[test]
    fn a_large_mss_is_lowered_and_the_checksum_stays_valid() {
        let mut p = syn_v4(1460, SYN);
        assert!(clamp(&mut p, 1408));
        assert_eq!(mss(&p), 1368);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum(&p));
        // A SYN-ACK too.
        let mut p = syn_v4(1460, SYN | 0x10);
        assert!(clamp(&mut p, 1408));
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum(&p));
    }

    #[test]
    fn small_mss_non_syn_and_malformed_packets_are_left_alone() {
        let mut p = syn_v4(1200, SYN);
        let before = p.clone();
        assert!(!clamp(&mut p, 1408));
        assert_eq!(p, before);
        let mut p = syn_v4(1460, 0x10);
        assert!(!clamp(&mut p, 1408));
        // A non-first fragment.
        let mut p = syn_v4(1460, SYN);
        p[7] = 1;
        assert!(!clamp(&mut p, 1408));
        // Every truncation and an option length running past the header.
        let good = syn_v4(1460, SYN);
        for n in 0..good.len() {
            let mut t = good[..n].to_vec();
            let _ = clamp(&mut t, 1408);
        }
        let mut p = syn_v4(1460, SYN);
        p[41] = 40;
        assert!(!clamp(&mut p, 1408));
        assert_eq!(mss_for_mtu(1388, IpVersion::V6), 1328);
    }
}
