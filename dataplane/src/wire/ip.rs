//! Just enough of the inner IPv4/IPv6 headers for ESP: version, lengths, protocol.

/// IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// An inner packet's IP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What the ESP path needs to know about an inner IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// Version nibble.
    pub version: IpVersion,
    /// Length of the fixed header (IPv4: IHL × 4; IPv6: 40, extension headers not included).
    pub header_len: usize,
    /// Total length the header claims (IPv4 Total Length; IPv6 40 + Payload Length).
    pub total_len: usize,
    /// IPv4 Protocol or IPv6 Next Header.
    pub protocol: u8,
}

/// Parses the fixed header of the IP packet at the start of `pkt`. `None` if it is not a
/// well-formed IPv4/IPv6 header or claims more bytes than `pkt` holds.
#[inline]
pub fn parse(pkt: &[u8]) -> Option<IpInfo> {
    let first = *pkt.first()?;
    let info = match first >> 4 {
        4 => {
            let h = pkt.get(..IPV4_MIN_HEADER_LEN)?;
            let header_len = usize::from(first & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len {
                return None;
            }
            IpInfo {
                version: IpVersion::V4,
                header_len,
                total_len,
                protocol: h[9],
            }
        }
        6 => {
            let h = pkt.get(..IPV6_HEADER_LEN)?;
            let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            IpInfo {
                version: IpVersion::V6,
                header_len: IPV6_HEADER_LEN,
                total_len: IPV6_HEADER_LEN + payload_len,
                protocol: h[6],
            }
        }
        _ => return None,
    };
    if info.total_len > pkt.len() {
        return None;
    }
    Some(info)
}

/// The Internet checksum (RFC 1071) of `data`, folded, not yet complemented, added to `sum`.
pub fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it.
pub fn checksum_finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[3] = 28;
        v4[9] = 17;
        let i = parse(&v4).expect("v4");
        assert_eq!((i.header_len, i.total_len, i.protocol), (20, 28, 17));
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[6] = 6;
        let i = parse(&v6).expect("v6");
        assert_eq!((i.header_len, i.total_len, i.protocol), (40, 48, 6));
        // Claims more than it has, bad IHL, bad version.
        v4[3] = 29;
        assert_eq!(parse(&v4), None);
        v4[3] = 28;
        v4[0] = 0x44;
        assert_eq!(parse(&v4), None);
        assert_eq!(parse(&[0x50; 40]), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn rfc1071_checksum_example() {
        // RFC 1071 §3 example bytes: 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 before complement.
        let s = checksum_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(checksum_finish(s), !0xddf2);
    }
}
