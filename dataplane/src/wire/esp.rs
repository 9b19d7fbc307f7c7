//! ESP packet layout (RFC 4303 §2) for the AEAD transforms used here (8-byte explicit IV, 16-byte ICV).
//!
//! ```text
//! SPI (4) | Sequence Number (4) | IV (8) | payload | padding (0-255) | Pad Length | Next Header | ICV (16)
//!                                        |<------------- encrypted (ciphertext) ----------------->|
//! ```

use crate::crypto::{ICV_LEN, IV_LEN};

/// SPI and Sequence Number (RFC 4303 §2.1, §2.2).
pub const ESP_HEADER_LEN: usize = 8;
/// Bytes in front of the payload: header and explicit IV.
pub const ESP_PREFIX_LEN: usize = ESP_HEADER_LEN + IV_LEN;
/// Pad Length and Next Header (RFC 4303 §2.5, §2.6).
pub const ESP_TRAILER_LEN: usize = 2;
/// Most bytes encapsulation appends after the payload: padding to a 4-byte boundary, trailer, ICV.
pub const ESP_MAX_TAIL_LEN: usize = 3 + ESP_TRAILER_LEN + ICV_LEN;
/// The shortest packet that can be valid: header, IV, trailer, ICV (empty payload).
pub const ESP_MIN_LEN: usize = ESP_PREFIX_LEN + ESP_TRAILER_LEN + ICV_LEN;
/// Smallest SPI a peer may use: 0 is reserved, 1-255 are reserved by IANA (RFC 4303 §2.1).
pub const MIN_SPI: u32 = 256;

/// Next Header values the packet path knows (IANA protocol numbers).
pub mod next_header {
    /// IPv4 in tunnel mode (RFC 4303 §2.6).
    pub const IPV4: u8 = 4;
    /// IPv6 in tunnel mode.
    pub const IPV6: u8 = 41;
    /// "No next header": a dummy packet, dropped silently by the receiver (RFC 4303 §2.6).
    pub const NO_NEXT_HEADER: u8 = 59;
    /// TCP (transport mode).
    pub const TCP: u8 = 6;
    /// UDP (transport mode).
    pub const UDP: u8 = 17;
}

/// Reads SPI and the low 32 bits of the sequence number; `None` if `pkt` is shorter than the header.
#[inline]
pub fn parse_header(pkt: &[u8]) -> Option<(u32, u32)> {
    let h: &[u8; ESP_HEADER_LEN] = pkt.get(..ESP_HEADER_LEN)?.try_into().ok()?;
    let spi = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    Some((spi, seq))
}

/// Padding so that payload ‖ padding ‖ trailer ends on a 4-byte boundary (RFC 4303 §2.4; the
/// AEAD ciphers here have a block size of 1, so only the 4-byte alignment applies).
#[inline]
pub const fn pad_len_for(payload_len: usize) -> usize {
    (4 - (payload_len + ESP_TRAILER_LEN) % 4) % 4
}

/// Writes the monotonic padding 1, 2, 3, ... (RFC 4303 §2.4) and the trailer at `tail[..pad + 2]`.
#[inline]
pub fn write_padding_and_trailer(tail: &mut [u8], pad_len: u8, next_header: u8) {
    let pad = usize::from(pad_len);
    for (i, b) in tail.iter_mut().take(pad).enumerate() {
        // pad ≤ 255, so i + 1 fits in u8.
        *b = (i + 1) as u8;
    }
    if let Some(t) = tail.get_mut(pad..pad + ESP_TRAILER_LEN) {
        t[0] = pad_len;
        t[1] = next_header;
    }
}

/// Why a decrypted ESP payload has an unusable trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailerError {
    /// Fewer than two bytes of plaintext, or Pad Length larger than what precedes the trailer.
    Truncated,
    /// Padding bytes are not 1, 2, 3, ... (RFC 4303 §2.4: the receiver checks them).
    BadPadding,
}

/// Checks the trailer of a decrypted payload; returns (payload length without padding, Next Header).
#[inline]
pub fn parse_trailer(plaintext: &[u8]) -> Result<(usize, u8), TrailerError> {
    let n = plaintext.len();
    if n < ESP_TRAILER_LEN {
        return Err(TrailerError::Truncated);
    }
    let pad = usize::from(plaintext[n - 2]);
    let next_header = plaintext[n - 1];
    let payload_len = (n - ESP_TRAILER_LEN)
        .checked_sub(pad)
        .ok_or(TrailerError::Truncated)?;
    let padding = &plaintext[payload_len..n - ESP_TRAILER_LEN];
    // RFC 4303 §2.4: default padding is 1, 2, 3, ...; a mismatch means the packet is dropped.
    let mut ok = true;
    for (i, b) in padding.iter().enumerate() {
        ok &= usize::from(*b) == i + 1;
    }
    if !ok {
        return Err(TrailerError::BadPadding);
    }
    Ok((payload_len, next_header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_aligns_to_four_bytes() {
        for len in 0..64 {
            let p = pad_len_for(len);
            assert!(p < 4);
            assert_eq!((len + p + ESP_TRAILER_LEN) % 4, 0);
        }
    }

    #[test]
    fn trailer_round_trip_and_bad_padding() {
        for pad in 0u8..=255 {
            let mut buf = vec![0xAAu8; 10 + usize::from(pad) + 2];
            write_padding_and_trailer(&mut buf[10..], pad, next_header::IPV4);
            assert_eq!(parse_trailer(&buf), Ok((10, next_header::IPV4)));
            if pad > 0 {
                buf[10] ^= 0x80;
                assert_eq!(parse_trailer(&buf), Err(TrailerError::BadPadding));
            }
        }
        assert_eq!(parse_trailer(&[1]), Err(TrailerError::Truncated));
        assert_eq!(parse_trailer(&[0, 5, 4]), Err(TrailerError::Truncated));
    }

    #[test]
    fn header_parse_bounds() {
        assert_eq!(parse_header(&[0; 7]), None);
        assert_eq!(parse_header(&[0, 0, 1, 0, 0, 0, 0, 9, 1]), Some((256, 9)));
    }
}
