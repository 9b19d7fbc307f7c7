//! Outbound ESP: sequence numbers, IVs, padding, encryption in place.

use core::fmt;
use core::ops::Range;

use super::{Mode, SaError, SaParams, aad, check_spi};
use crate::crypto::{CryptoError, ICV_LEN, KeyedAead};
use crate::wire::esp::{
    ESP_PREFIX_LEN, ESP_TRAILER_LEN, next_header, pad_len_for, write_padding_and_trailer,
};
use crate::wire::frame::MAX_BODY_LEN;
use crate::wire::ip::{self, IpVersion};

/// Why a packet could not be encapsulated. None of these changes the SA's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapError {
    /// The sequence number space is used up; the SA must be rekeyed (RFC 4303 §3.3.3: never cycle).
    SequenceExhausted,
    /// Not a well-formed IPv4/IPv6 packet (tunnel and transport mode both take an IP packet).
    NotIp,
    /// Transport mode protects whole datagrams only, and this one has a fragment or routing header,
    /// or is an IPv4 fragment (RFC 4303 §3.1).
    UnsupportedForTransport,
    /// Inner packet's address family differs from the transport SA's.
    AddressFamily,
    /// Too little room in front of or behind the packet in the buffer.
    NoRoom,
    /// The ESP packet would not fit in one RFC 9329 frame (65533 bytes).
    TooLong,
    /// The AEAD refused (cannot happen with a valid key; kept so nothing panics).
    Crypto(CryptoError),
}

impl fmt::Display for EncapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncapError::SequenceExhausted => {
                f.write_str("sequence numbers exhausted, rekey needed")
            }
            EncapError::NotIp => f.write_str("inner packet is not IPv4/IPv6"),
            EncapError::UnsupportedForTransport => {
                f.write_str("packet cannot be sent in transport mode")
            }
            EncapError::AddressFamily => f.write_str("address family differs from the SA's"),
            EncapError::NoRoom => f.write_str("buffer lacks head- or tailroom"),
            EncapError::TooLong => f.write_str("ESP packet exceeds the RFC 9329 frame limit"),
            EncapError::Crypto(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EncapError {}

/// The sending half of an ESP SA.
#[derive(Debug)]
pub struct OutboundSa {
    spi: u32,
    esn: bool,
    mode: Mode,
    key: KeyedAead,
    /// Last sequence number sent; 0 before the first packet (RFC 4303 §3.3.3).
    seq: u64,
    packets: u64,
    bytes: u64,
}

impl OutboundSa {
    /// Builds the SA; expands the key schedule (do this off the worker).
    pub fn new(p: &SaParams) -> Result<Self, SaError> {
        check_spi(p.spi)?;
        Ok(OutboundSa {
            spi: p.spi,
            esn: p.esn,
            mode: p.mode,
            key: p.keymat.build(p.backend).map_err(SaError::Crypto)?,
            seq: 0,
            packets: 0,
            bytes: 0,
        })
    }

    /// The SPI the peer chose for this SA.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Last sequence number used (0 = none yet).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Highest sequence number this SA may send: 2^32-1, or 2^64-1 with ESN.
    pub fn seq_max(&self) -> u64 {
        if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// Sequence numbers left before the SA must be replaced.
    pub fn seq_remaining(&self) -> u64 {
        self.seq_max() - self.seq
    }

    /// Packets and inner bytes sent (for lifetimes).
    pub fn counters(&self) -> (u64, u64) {
        (self.packets, self.bytes)
    }

    /// Starts the counter at `seq` (tests of exhaustion and ESN wrap use it).
    #[doc(hidden)]
    pub fn set_seq_for_test(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Bytes of space encapsulation needs in front of the inner packet (tunnel mode; transport
    /// mode needs less, since the IP header's room is reused).
    pub const HEADROOM: usize = ESP_PREFIX_LEN;

    /// Most bytes encapsulation adds after the inner packet.
    pub const TAILROOM: usize = 3 + ESP_TRAILER_LEN + ICV_LEN;

    /// Encapsulates the IP packet at `buf[inner]` in place and returns the range of the ESP packet.
    ///
    /// Tunnel mode protects the whole packet; transport mode drops the IP header and protects the
    /// rest with the header's protocol as Next Header. `buf` needs [`Self::HEADROOM`] bytes in front
    /// of `inner` and [`Self::TAILROOM`] after it. On error nothing is consumed: the sequence
    /// number only advances for a packet that was sealed.
    pub fn encap(
        &mut self,
        buf: &mut [u8],
        inner: Range<usize>,
    ) -> Result<Range<usize>, EncapError> {
        let (payload, nh) = self.payload_of(buf, inner)?;
        self.encap_payload(buf, payload, nh)
    }

    /// Encapsulates the IP packet at `buf[inner]` into `out` instead of in place: the ESP packet
    /// is written to `out[..n]` and `n` returned, encrypted in one pass from `buf` (the sender
    /// seals straight into the TCP send buffer this way). `buf` needs [`Self::TAILROOM`] bytes
    /// after `inner` (padding and trailer are written there, RFC 4303 §2.4) but no headroom.
    /// `NoRoom` if `out` is too short. On error the sequence number does not advance, and every
    /// error but `Crypto` (which a valid key never gives) is found before `out` is written.
    pub fn encap_into(
        &mut self,
        buf: &mut [u8],
        inner: Range<usize>,
        out: &mut [u8],
    ) -> Result<usize, EncapError> {
        let (payload, nh) = self.payload_of(buf, inner)?;
        // The ICV goes to `out`, so `buf` only needs room for the trailer.
        let l = self.layout(buf.len() + ICV_LEN, &payload)?;
        let len = l.len;
        let Some(out) = out.get_mut(..len) else {
            return Err(EncapError::NoRoom);
        };
        let (hdr, rest) = out.split_at_mut(ESP_PREFIX_LEN);
        let (ct, icv_out) = rest.split_at_mut(l.ct_end - payload.start);
        let iv = self.header(hdr, l.seq, None);
        // RFC 4303 §2.4: the trailer follows the payload inside the encrypted part; it is
        // built behind the plaintext and encrypted with it.
        write_padding_and_trailer(&mut buf[payload.end..l.ct_end], l.pad as u8, nh);
        let (a, alen) = aad(self.spi, l.seq, self.esn);
        let nonce = self.key.nonce(&iv);
        let icv = self
            .key
            .aead()
            .seal_into(&nonce, &a[..alen], &buf[payload.start..l.ct_end], ct)
            .map_err(EncapError::Crypto)?;
        icv_out.copy_from_slice(&icv);
        self.commit(l.seq, payload.len());
        Ok(len)
    }

    /// Where in `buf[inner]` the protected payload is, and its Next Header.
    #[inline]
    fn payload_of(
        &self,
        buf: &[u8],
        inner: Range<usize>,
    ) -> Result<(Range<usize>, u8), EncapError> {
        let pkt = buf.get(inner.clone()).ok_or(EncapError::NoRoom)?;
        let info = ip::parse(pkt).ok_or(EncapError::NotIp)?;
        let (payload, nh) = match self.mode {
            // RFC 4303 §2.6: Next Header 4 for IPv4, 41 for IPv6 in tunnel mode.
            Mode::Tunnel => {
                let nh = match info.version {
                    IpVersion::V4 => next_header::IPV4,
                    IpVersion::V6 => next_header::IPV6,
                };
                (inner.start..inner.start + info.total_len, nh)
            }
            Mode::Transport { src, .. } => {
                if src.is_ipv4() != (info.version == IpVersion::V4) {
                    return Err(EncapError::AddressFamily);
                }
                transport_payload(pkt, &info)?;
                (
                    inner.start + info.header_len..inner.start + info.total_len,
                    info.protocol,
                )
            }
        };
        Ok((payload, nh))
    }

    /// Sends a dummy packet (Next Header 59, RFC 4303 §2.6) with `len` bytes of filler at
    /// `buf[at..]`; the receiver drops it silently. Used for traffic flow confidentiality.
    pub fn encap_dummy(
        &mut self,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Result<Range<usize>, EncapError> {
        let end = at.checked_add(len).ok_or(EncapError::NoRoom)?;
        buf.get_mut(at..end).ok_or(EncapError::NoRoom)?.fill(0);
        self.encap_payload(buf, at..end, next_header::NO_NEXT_HEADER)
    }

    /// Encrypts `buf[payload]` with Next Header `nh`; the ESP header goes in front of it.
    #[inline]
    pub fn encap_payload(
        &mut self,
        buf: &mut [u8],
        payload: Range<usize>,
        nh: u8,
    ) -> Result<Range<usize>, EncapError> {
        self.seal(buf, payload, nh, None)
    }

    /// Like [`encap_payload`](Self::encap_payload) with an explicit IV instead of the sequence
    /// number. Only for reproducing published test vectors: the caller must never repeat an IV
    /// under one key.
    #[doc(hidden)]
    pub fn encap_payload_with_iv(
        &mut self,
        buf: &mut [u8],
        payload: Range<usize>,
        nh: u8,
        iv: [u8; 8],
    ) -> Result<Range<usize>, EncapError> {
        self.seal(buf, payload, nh, Some(iv))
    }

    /// Checks that a packet with `payload` fits (trailer and ICV behind it within `buf_len`
    /// bytes, the whole ESP packet within one RFC 9329 frame) and that a sequence number is
    /// left, and returns where everything goes. Changes nothing.
    #[inline]
    fn layout(&self, buf_len: usize, payload: &Range<usize>) -> Result<Layout, EncapError> {
        let pad = pad_len_for(payload.len());
        let ct_end = payload.end + pad + ESP_TRAILER_LEN;
        let end = ct_end + ICV_LEN;
        if end > buf_len || payload.start > payload.end {
            return Err(EncapError::NoRoom);
        }
        let len = ESP_PREFIX_LEN + (end - payload.start);
        if len > MAX_BODY_LEN {
            return Err(EncapError::TooLong);
        }
        // RFC 4303 §3.3.3: the counter never cycles; stop and let control rekey.
        if self.seq >= self.seq_max() {
            return Err(EncapError::SequenceExhausted);
        }
        Ok(Layout {
            len,
            ct_end,
            end,
            pad,
            seq: self.seq + 1,
        })
    }

    /// Writes the ESP header (SPI, low 32 bits of `seq`, IV) into `hdr` and returns the IV.
    #[inline]
    fn header(&self, hdr: &mut [u8], seq: u64, iv: Option<[u8; 8]>) -> [u8; 8] {
        hdr[..4].copy_from_slice(&self.spi.to_be_bytes());
        // Only the low 32 bits travel (RFC 4303 §2.2.1).
        hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        // The IV is the 64-bit sequence number: unique under this key because the counter never
        // repeats or wraps (RFC 4106 §3.1, RFC 7634 §2).
        let iv = iv.unwrap_or(seq.to_be_bytes());
        hdr[8..16].copy_from_slice(&iv);
        iv
    }

    /// A packet with sequence number `seq` was sealed: the counter moves (RFC 4303 §3.3.3).
    #[inline]
    fn commit(&mut self, seq: u64, payload_len: usize) {
        self.seq = seq;
        self.packets += 1;
        self.bytes += payload_len as u64;
    }

    #[inline]
    fn seal(
        &mut self,
        buf: &mut [u8],
        payload: Range<usize>,
        nh: u8,
        iv: Option<[u8; 8]>,
    ) -> Result<Range<usize>, EncapError> {
        let start = payload
            .start
            .checked_sub(ESP_PREFIX_LEN)
            .ok_or(EncapError::NoRoom)?;
        let l = self.layout(buf.len(), &payload)?;
        // pad < 4 by construction.
        write_padding_and_trailer(&mut buf[payload.end..l.ct_end], l.pad as u8, nh);
        let iv = self.header(&mut buf[start..payload.start], l.seq, iv);
        let (a, alen) = aad(self.spi, l.seq, self.esn);
        let nonce = self.key.nonce(&iv);
        let icv = self
            .key
            .aead()
            .seal(&nonce, &a[..alen], &mut buf[payload.start..l.ct_end])
            .map_err(EncapError::Crypto)?;
        buf[l.ct_end..l.end].copy_from_slice(&icv);
        self.commit(l.seq, payload.len());
        Ok(start..l.end)
    }

    /// Encapsulates a batch: `pkts[i]` is a buffer and the range of its inner packet; `out[i]`
    /// receives the result for it. One virtual call per packet, no allocation (`out` is reused).
    pub fn encap_batch<B: AsMut<[u8]>>(
        &mut self,
        pkts: &mut [(B, Range<usize>)],
        out: &mut Vec<Result<Range<usize>, EncapError>>,
    ) {
        out.clear();
        for (buf, inner) in pkts.iter_mut() {
            out.push(self.encap(buf.as_mut(), inner.clone()));
        }
    }
}

/// Where the parts of one ESP packet go in the buffer of its payload (see `OutboundSa::layout`).
struct Layout {
    /// Bytes of the whole ESP packet.
    len: usize,
    /// End of payload, padding and trailer (the encrypted part).
    ct_end: usize,
    /// End of the ICV.
    end: usize,
    /// Padding bytes (< 4).
    pad: usize,
    /// The sequence number the packet gets.
    seq: u64,
}

/// Transport mode carries whole datagrams only (RFC 4303 §3.1): no IPv4 fragments, and no IPv6
/// extension headers that must stay outside ESP (hop-by-hop 0, routing 43, fragment 44).
fn transport_payload(pkt: &[u8], info: &ip::IpInfo) -> Result<(), EncapError> {
    match info.version {
        IpVersion::V4 => {
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            if frag & 0x3fff != 0 {
                return Err(EncapError::UnsupportedForTransport);
            }
        }
        IpVersion::V6 => {
            if matches!(info.protocol, 0 | 43 | 44) {
                return Err(EncapError::UnsupportedForTransport);
            }
        }
    }
    Ok(())
}
