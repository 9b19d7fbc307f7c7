//! Inbound ESP: replay pre-check, ICV, window update, trailer and inner-packet checks.

use core::fmt;
use core::ops::Range;

use super::replay::{ReplayError, ReplayWindow};
use super::transport;
use super::{Mode, SaError, SaParams, aad, check_spi};
use crate::crypto::{ICV_LEN, IV_LEN, KeyedAead, NONCE_LEN};
use crate::wire::esp::{
    ESP_HEADER_LEN, ESP_MIN_LEN, ESP_PREFIX_LEN, TrailerError, next_header, parse_header,
    parse_trailer,
};
use crate::wire::ip::{self, IpVersion};

/// Why an ESP packet was dropped. Only [`DecapError::Authentication`] counts as corruption of the
/// stream in the RFC 9329 §6.1 sense; everything after it concerns an authentic packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapError {
    /// Shorter than header, IV, trailer and ICV, or range outside the buffer.
    TooShort,
    /// The SPI is not this SA's.
    WrongSpi(u32),
    /// Anti-replay refused the sequence number (RFC 4303 §3.4.3).
    Replay(ReplayError),
    /// The ICV did not verify (RFC 4303 §3.4.4).
    Authentication,
    /// Pad Length or padding bytes are wrong (RFC 4303 §2.4).
    Trailer(TrailerError),
    /// Tunnel mode got a Next Header other than 4/41/59, or transport mode got 4/41.
    UnexpectedNextHeader(u8),
    /// Tunnel mode: the inner packet is not a well-formed IP packet of the Next Header's version.
    BadInnerPacket,
    /// Transport mode: no room in front of the payload to rebuild the IP header.
    NoHeadroom,
}

impl fmt::Display for DecapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecapError::TooShort => f.write_str("ESP packet too short"),
            DecapError::WrongSpi(s) => write!(f, "SPI {s:#010x} is not this SA's"),
            DecapError::Replay(e) => write!(f, "{e}"),
            DecapError::Authentication => f.write_str("ICV check failed"),
            DecapError::Trailer(TrailerError::Truncated) => f.write_str("bad Pad Length"),
            DecapError::Trailer(TrailerError::BadPadding) => f.write_str("bad padding bytes"),
            DecapError::UnexpectedNextHeader(n) => write!(f, "unexpected Next Header {n}"),
            DecapError::BadInnerPacket => f.write_str("inner packet malformed"),
            DecapError::NoHeadroom => f.write_str("no headroom to rebuild the IP header"),
        }
    }
}

impl std::error::Error for DecapError {}

/// An authentic packet, decrypted in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decapped {
    /// An inner IP packet at this range of the buffer (TFC padding removed; in transport mode with
    /// the IP header rebuilt in front of the payload).
    Packet {
        /// Where the inner packet is.
        range: Range<usize>,
        /// The ESP Next Header.
        next_header: u8,
        /// Full 64-bit sequence number.
        seq: u64,
    },
    /// A dummy packet (Next Header 59): authentic, counted, and dropped silently (RFC 4303 §2.6).
    Dummy {
        /// Full 64-bit sequence number.
        seq: u64,
    },
}

/// The receiving half of an ESP SA.
#[derive(Debug)]
pub struct InboundSa {
    spi: u32,
    esn: bool,
    mode: Mode,
    key: KeyedAead,
    window: ReplayWindow,
    packets: u64,
    bytes: u64,
}

impl InboundSa {
    /// Builds the SA; expands the key schedule (do this off the worker).
    pub fn new(p: &SaParams) -> Result<Self, SaError> {
        check_spi(p.spi)?;
        Ok(InboundSa {
            spi: p.spi,
            esn: p.esn,
            mode: p.mode,
            key: p.keymat.build(p.backend).map_err(SaError::Crypto)?,
            window: ReplayWindow::new(p.replay_window).map_err(SaError::Window)?,
            packets: 0,
            bytes: 0,
        })
    }

    /// The SPI we chose for this SA.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The anti-replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Authentic packets and inner bytes received (for lifetimes).
    pub fn counters(&self) -> (u64, u64) {
        (self.packets, self.bytes)
    }

    /// Moves the window's right edge to `seq` as if it had been received (test vectors with ESN
    /// need the high-order half of the sequence number to be inferable).
    #[doc(hidden)]
    pub fn set_window_top_for_test(&mut self, seq: u64) {
        let _ = self.window.update(seq);
    }

    /// Reconstructs the full sequence number from its low 32 bits (RFC 4303 Appendix A2.2).
    /// Without ESN the low bits are the whole number.
    #[inline]
    pub fn infer_seq(&self, seq_low: u32) -> u64 {
        if !self.esn {
            return u64::from(seq_low);
        }
        let top = self.window.top();
        let tl = top as u32;
        let th = (top >> 32) as u32;
        let w1 = self.window.size() - 1;
        let high = if tl >= w1 {
            // Case A: the window lies within one 2^32 subspace.
            if seq_low >= tl - w1 {
                th
            } else {
                th.wrapping_add(1)
            }
        } else if seq_low >= tl.wrapping_sub(w1) && th > 0 {
            // Case B: the window spans two subspaces and seq_low is in the lower one.
            th - 1
        } else {
            th
        };
        (u64::from(high) << 32) | u64::from(seq_low)
    }

    /// Decapsulates the ESP packet at `buf[esp]` in place.
    ///
    /// Order per RFC 4303 §3.4.3: a cheap replay check first, then the ICV, and only then the window
    /// update, so forged packets cannot move the window. A failed check leaves the SA unchanged.
    pub fn decap(&mut self, buf: &mut [u8], esp: Range<usize>) -> Result<Decapped, DecapError> {
        let pkt = buf.get(esp.clone()).ok_or(DecapError::TooShort)?;
        let h = self.check(pkt)?;
        let ct = esp.start + ESP_PREFIX_LEN..esp.end - ICV_LEN;
        let (a, alen) = aad(self.spi, h.seq, self.esn);
        self.key
            .aead()
            .open(&h.nonce, &a[..alen], &mut buf[ct.clone()], &h.icv)
            .map_err(|_| DecapError::Authentication)?;
        self.accept(buf, ct, h.seq)
    }

    /// Decapsulates the ESP packet `esp` into `out` instead of in place: the plaintext is
    /// decrypted in one pass to `out[at..]` and `esp` is not written (the receiver opens straight
    /// out of the TCP receive buffer into a packet buffer this way). The result's range is in
    /// `out`; transport mode rebuilds the IP header in front of `at`, so leave
    /// [`TRANSPORT_DECAP_HEADROOM`](super::TRANSPORT_DECAP_HEADROOM) bytes there.
    ///
    /// The same order and guarantees as [`decap`](Self::decap): replay pre-check, ICV, then the
    /// window (RFC 4303 §3.4.3); a failed check leaves the SA unchanged. `NoHeadroom` if `out`
    /// has no room for the plaintext at `at`, checked before anything else is.
    pub fn decap_into(
        &mut self,
        esp: &[u8],
        out: &mut [u8],
        at: usize,
    ) -> Result<Decapped, DecapError> {
        let ct_len = esp.len().saturating_sub(ESP_PREFIX_LEN + ICV_LEN);
        let ct = at..at.checked_add(ct_len).ok_or(DecapError::NoHeadroom)?;
        if ct.end > out.len() {
            return Err(DecapError::NoHeadroom);
        }
        let h = self.check(esp)?;
        let (a, alen) = aad(self.spi, h.seq, self.esn);
        let input = &esp[ESP_PREFIX_LEN..esp.len() - ICV_LEN];
        self.key
            .aead()
            .open_into(&h.nonce, &a[..alen], input, &mut out[ct.clone()], &h.icv)
            .map_err(|_| DecapError::Authentication)?;
        self.accept(out, ct, h.seq)
    }

    /// Length, SPI and the replay pre-check of the ESP packet `pkt`; its nonce and ICV. Changes
    /// nothing.
    #[inline]
    fn check(&self, pkt: &[u8]) -> Result<Checked, DecapError> {
        if pkt.len() < ESP_MIN_LEN {
            return Err(DecapError::TooShort);
        }
        let (spi, seq_low) = parse_header(pkt).ok_or(DecapError::TooShort)?;
        if spi != self.spi {
            return Err(DecapError::WrongSpi(spi));
        }
        let seq = self.infer_seq(seq_low);
        self.window.check(seq).map_err(DecapError::Replay)?;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&pkt[ESP_HEADER_LEN..ESP_PREFIX_LEN]);
        let mut icv = [0u8; ICV_LEN];
        icv.copy_from_slice(&pkt[pkt.len() - ICV_LEN..]);
        Ok(Checked {
            seq,
            nonce: self.key.nonce(&iv),
            icv,
        })
    }

    /// The packet with sequence number `seq`, decrypted at `buf[ct]`, passed its ICV: records it
    /// in the window, then checks the trailer and the inner packet.
    #[inline]
    fn accept(
        &mut self,
        buf: &mut [u8],
        ct: Range<usize>,
        seq: u64,
    ) -> Result<Decapped, DecapError> {
        // Authentic from here on: record it (RFC 4303 §3.4.3).
        self.window.update(seq).map_err(DecapError::Replay)?;

        let (payload_len, nh) = parse_trailer(&buf[ct.clone()]).map_err(DecapError::Trailer)?;
        let payload = ct.start..ct.start + payload_len;
        if nh == next_header::NO_NEXT_HEADER {
            self.packets += 1;
            return Ok(Decapped::Dummy { seq });
        }
        let range = match self.mode {
            Mode::Tunnel => tunnel_inner(&buf[payload.clone()], nh)
                .map(|len| payload.start..payload.start + len)?,
            Mode::Transport {
                src,
                dst,
                fix_checksums,
            } => {
                if nh == next_header::IPV4 || nh == next_header::IPV6 {
                    return Err(DecapError::UnexpectedNextHeader(nh));
                }
                transport::rebuild(buf, payload, src, dst, nh, fix_checksums)?
            }
        };
        self.packets += 1;
        self.bytes += range.len() as u64;
        Ok(Decapped::Packet {
            range,
            next_header: nh,
            seq,
        })
    }

    /// Decapsulates a batch: `pkts[i]` is a buffer and the range of its ESP packet; `out[i]`
    /// receives the result for it (`out` is cleared and reused: no allocation once warm).
    pub fn decap_batch<B: AsMut<[u8]>>(
        &mut self,
        pkts: &mut [(B, Range<usize>)],
        out: &mut Vec<Result<Decapped, DecapError>>,
    ) {
        out.clear();
        for (buf, esp) in pkts.iter_mut() {
            out.push(self.decap(buf.as_mut(), esp.clone()));
        }
    }
}

/// What [`InboundSa::check`] found: the packet may be opened.
struct Checked {
    seq: u64,
    nonce: [u8; NONCE_LEN],
    icv: [u8; ICV_LEN],
}

/// Length of the tunnelled IP packet; anything after it is TFC padding (RFC 4303 §2.4, §2.7),
/// which is tolerated and cut off.
fn tunnel_inner(payload: &[u8], nh: u8) -> Result<usize, DecapError> {
    let want = match nh {
        next_header::IPV4 => IpVersion::V4,
        next_header::IPV6 => IpVersion::V6,
        other => return Err(DecapError::UnexpectedNextHeader(other)),
    };
    match ip::parse(payload) {
        Some(info) if info.version == want => Ok(info.total_len),
        _ => Err(DecapError::BadInnerPacket),
    }
}
