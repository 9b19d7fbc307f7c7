//! RFC 9329 stream codec: framing of IKE and ESP over one direction of one TCP connection.
//!
//! Sans-IO and allocation-free per frame. [`FrameDecoder`] hands out ranges into the caller's input
//! for frames that lie wholly inside it; only a frame split across `decode` calls is copied, into a
//! bounded per-connection carry buffer. The encoders write into caller-provided buffers.
//!
//! Wire format (RFC 9329 §3): `Length (u16, big endian, counts itself) ‖ body`, where a body that
//! starts with four zero bytes is an IKE message behind the non-ESP marker and any other body is an
//! ESP packet. The TCP Originator's stream starts with the 6-byte prefix `IKETCP` (§4).

use core::fmt;
use core::ops::Range;

/// The stream prefix the TCP Originator sends once, first, on every connection (RFC 9329 §4).
pub const STREAM_PREFIX: [u8; 6] = *b"IKETCP";
/// Four zero bytes in front of every IKE message (RFC 9329 §3.1).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// Size of the Length field (RFC 9329 §3).
pub const LENGTH_FIELD_LEN: usize = 2;
/// Largest body a 16-bit Length that counts itself can describe (RFC 9329 §3).
pub const MAX_BODY_LEN: usize = 65533;
/// Largest frame on the wire: Length field plus the largest body (Length = 65535).
pub const MAX_FRAME_LEN: usize = LENGTH_FIELD_LEN + MAX_BODY_LEN;
/// Largest IKE message that fits behind the non-ESP marker.
pub const MAX_IKE_MESSAGE_LEN: usize = MAX_BODY_LEN - NON_ESP_MARKER.len();
/// Smallest ESP packet accepted as such: SPI and sequence number (RFC 4303 §2).
pub const MIN_ESP_LEN: usize = 8;
/// The one-byte body of a NAT-keepalive (RFC 9329 §6.6).
pub const KEEPALIVE_BYTE: u8 = 0xFF;

/// TCP role of the local end of a connection (RFC 9329 §1.2). It never changes for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpRole {
    /// Opened the connection; sends the stream prefix.
    Originator,
    /// Accepted the connection; expects the stream prefix from the peer.
    Responder,
}

/// What a decoded frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An IKE message (the non-ESP marker is stripped).
    Ike,
    /// An ESP packet starting with its non-zero SPI.
    Esp,
    /// A body that is neither IKE nor ESP: one byte other than `FF`, two or three bytes, or an ESP
    /// body shorter than SPI + sequence number. Handed out so that the connection can count
    /// consecutive garbage frames (RFC 9329 §6.1).
    Unparseable,
}

/// Where the bytes of a decoded frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLoc {
    /// In the `input` slice given to that [`FrameDecoder::decode`] call.
    Input,
    /// In [`FrameDecoder::carry`] / [`FrameDecoder::carry_mut`], until the next `decode` call.
    Carry,
}

/// One decoded frame: a range into the caller's input or into the decoder's carry buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRef {
    pub kind: FrameKind,
    pub loc: FrameLoc,
    /// `Ike`: the IKE message only. `Esp`: from the SPI to the end. `Unparseable`: the whole body.
    pub range: Range<usize>,
}

impl FrameRef {
    /// Resolves the frame against the `input` of the `decode` call that produced it and the
    /// decoder's current `carry()`. `None` only if given the wrong slices.
    pub fn bytes<'a>(&self, input: &'a [u8], carry: &'a [u8]) -> Option<&'a [u8]> {
        match self.loc {
            FrameLoc::Input => input.get(self.range.clone()),
            FrameLoc::Carry => carry.get(self.range.clone()),
        }
    }
}

/// Fatal stream conditions: the TCP connection must be closed (the SAs survive, RFC 9329 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The connection did not start with `IKETCP` (RFC 9329 §4, §6.1).
    BadPrefix,
    /// Length field 0 or 1 (RFC 9329 §3.1, §3.2).
    InvalidLength(u16),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPrefix => f.write_str("TCP stream does not start with the IKETCP prefix"),
            Self::InvalidLength(len) => {
                write!(f, "invalid frame Length {len} (must be at least 2)")
            }
        }
    }
}

impl std::error::Error for StreamError {}

/// Counters of one decoder (one direction of one connection).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecoderStats {
    /// Stream bytes consumed, prefix included; on a fatal error, up to the offending byte.
    pub bytes: u64,
    pub ike: u64,
    pub esp: u64,
    pub keepalive: u64,
    pub empty: u64,
    pub unparseable: u64,
}

/// Receiving side of one TCP connection. Create one per connection (RFC 9329 §6.1).
pub struct FrameDecoder {
    role: TcpRole,
    /// Prefix bytes matched so far; starts complete for an Originator, which never receives one.
    prefix_seen: usize,
    /// A frame cut by the end of the previous input, starting at its Length field.
    pending: Vec<u8>,
    /// The frame last completed from `pending`, backing `FrameLoc::Carry` ranges.
    ready: Vec<u8>,
    failed: Option<StreamError>,
    stats: DecoderStats,
}

impl fmt::Debug for FrameDecoder {
    // Buffers can hold 64 KiB each: show their sizes, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("role", &self.role)
            .field("prefix_seen", &self.prefix_seen)
            .field("pending_len", &self.pending.len())
            .field("carry_len", &self.ready.len())
            .field("failed", &self.failed)
            .field("stats", &self.stats)
            .finish()
    }
}

impl FrameDecoder {
    /// `role` is the role of the LOCAL end: a Responder expects the prefix from the peer.
    pub fn new(role: TcpRole) -> Self {
        Self {
            role,
            prefix_seen: Self::initial_prefix_seen(role),
            pending: Vec::new(),
            ready: Vec::new(),
            failed: None,
            stats: DecoderStats::default(),
        }
    }

    fn initial_prefix_seen(role: TcpRole) -> usize {
        match role {
            // RFC 9329 §4: the Responder never sends a prefix, so the Originator expects none.
            TcpRole::Originator => STREAM_PREFIX.len(),
            TcpRole::Responder => 0,
        }
    }

    /// The local role given to [`FrameDecoder::new`].
    pub fn role(&self) -> TcpRole {
        self.role
    }

    /// Parses `input` (the next bytes of the stream, any chunk size, even 1 byte). Appends one
    /// [`FrameRef`] per complete IKE/ESP/Unparseable frame to `out`; keepalives and empty frames are
    /// only counted. Frames wholly inside `input` get [`FrameLoc::Input`] and a range into `input`.
    /// At most one frame per call is [`FrameLoc::Carry`]: the one completed from bytes carried over
    /// from earlier calls; its range indexes [`carry`](Self::carry) until the next call. A trailing
    /// partial frame is copied into the carry buffer (at most [`MAX_FRAME_LEN`] bytes).
    ///
    /// On a fatal condition returns `Err`, and keeps returning it on every later call: the
    /// connection is to be closed. Frames completed before the error in the same call are in `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<FrameRef>) -> Result<(), StreamError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        // The previous Carry frame's range expires now; `complete_pending` relies on this.
        self.ready.clear();
        match self.decode_inner(input, out) {
            Ok(()) => {
                self.stats.bytes += input.len() as u64;
                Ok(())
            }
            Err((err, consumed)) => {
                self.stats.bytes += consumed as u64;
                self.failed = Some(err);
                self.pending.clear();
                Err(err)
            }
        }
    }

    /// On error also returns how many bytes of `input` were consumed up to the fault.
    fn decode_inner(
        &mut self,
        input: &[u8],
        out: &mut Vec<FrameRef>,
    ) -> Result<(), (StreamError, usize)> {
        let mut pos = self.take_prefix(input)?;
        // RFC 9329 §6.1: no frame parsing before all six prefix bytes are in.
        if !self.prefix_done() {
            return Ok(());
        }

        if !self.pending.is_empty() {
            let rest = input.get(pos..).unwrap_or_default();
            let used = self
                .complete_pending(rest, out)
                .map_err(|(err, used)| (err, pos + used))?;
            pos += used;
            if !self.pending.is_empty() {
                // Input exhausted inside the carried frame.
                return Ok(());
            }
        }

        // Hot path: whole frames straight out of `input`, no copy.
        while let Some(rest) = input.get(pos..) {
            let Some(&hdr) = rest.first_chunk::<LENGTH_FIELD_LEN>() else {
                break;
            };
            let len = u16::from_be_bytes(hdr);
            let total = usize::from(len);
            // RFC 9329 §3.1, §3.2: Length 0 or 1 is fatal; the connection must be closed.
            if total < LENGTH_FIELD_LEN {
                return Err((StreamError::InvalidLength(len), pos + LENGTH_FIELD_LEN));
            }
            let Some(body) = rest.get(LENGTH_FIELD_LEN..total) else {
                break;
            };
            record(
                &mut self.stats,
                out,
                body,
                pos + LENGTH_FIELD_LEN,
                FrameLoc::Input,
            );
            pos += total;
        }

        let tail = input.get(pos..).unwrap_or_default();
        if !tail.is_empty() {
            self.start_pending(tail);
        }
        Ok(())
    }

    /// RFC 9329 §4, §6.1: a Responder consumes and checks the prefix before any frame; the first
    /// wrong byte refuses the stream. Returns the number of prefix bytes taken from `input`.
    fn take_prefix(&mut self, input: &[u8]) -> Result<usize, (StreamError, usize)> {
        let expected = STREAM_PREFIX.get(self.prefix_seen..).unwrap_or_default();
        for (i, (got, want)) in input.iter().zip(expected).enumerate() {
            if got != want {
                return Err((StreamError::BadPrefix, i + 1));
            }
        }
        let taken = expected.len().min(input.len());
        self.prefix_seen += taken;
        Ok(taken)
    }

    /// Continues the carried frame with bytes from `rest`; returns how many were used.
    fn complete_pending(
        &mut self,
        rest: &[u8],
        out: &mut Vec<FrameRef>,
    ) -> Result<usize, (StreamError, usize)> {
        let mut used = 0;
        if self.pending.len() < LENGTH_FIELD_LEN {
            used = (LENGTH_FIELD_LEN - self.pending.len()).min(rest.len());
            self.pending
                .extend_from_slice(rest.get(..used).unwrap_or_default());
        }
        let Some(&hdr) = self.pending.first_chunk::<LENGTH_FIELD_LEN>() else {
            return Ok(used);
        };
        let len = u16::from_be_bytes(hdr);
        let total = usize::from(len);
        // RFC 9329 §3.1, §3.2: fatal Length, also when its two bytes arrived in different calls.
        if total < LENGTH_FIELD_LEN {
            return Err((StreamError::InvalidLength(len), used));
        }
        let missing = total.saturating_sub(self.pending.len());
        let avail = rest.get(used..).unwrap_or_default();
        let take = missing.min(avail.len());
        // Capacity ends at exactly `total` <= MAX_FRAME_LEN, and only grows once per size.
        self.pending.reserve_exact(missing);
        self.pending
            .extend_from_slice(avail.get(..take).unwrap_or_default());
        used += take;

        if self.pending.len() == total {
            // `ready` was cleared by `decode`, so `pending` comes back empty with its capacity.
            core::mem::swap(&mut self.pending, &mut self.ready);
            let body = self.ready.get(LENGTH_FIELD_LEN..).unwrap_or_default();
            record(
                &mut self.stats,
                out,
                body,
                LENGTH_FIELD_LEN,
                FrameLoc::Carry,
            );
        }
        Ok(used)
    }

    /// Copies a trailing partial frame (shorter than its Length) into the empty `pending`.
    fn start_pending(&mut self, tail: &[u8]) {
        let want = tail
            .first_chunk::<LENGTH_FIELD_LEN>()
            .map_or(LENGTH_FIELD_LEN, |hdr| {
                usize::from(u16::from_be_bytes(*hdr))
            });
        self.pending.reserve_exact(want);
        self.pending.extend_from_slice(tail);
    }

    /// Bytes of the frame completed from carried-over bytes by the last `decode` call.
    pub fn carry(&self) -> &[u8] {
        &self.ready
    }

    /// Mutable view of [`carry`](Self::carry), so the caller can decrypt ESP in place.
    pub fn carry_mut(&mut self) -> &mut [u8] {
        &mut self.ready
    }

    /// End of stream. Discards a cut-off frame or partial prefix and returns its byte count
    /// (RFC 9329 §6.1: a partial message is never stitched to another connection's bytes). The
    /// decoder is rewound to the start-of-stream state (a Responder expects the prefix again); a
    /// failed decoder stays failed and returns 0.
    pub fn finish(&mut self) -> usize {
        let discarded = if self.failed.is_some() {
            0
        } else if self.prefix_done() {
            self.pending.len()
        } else {
            self.prefix_seen
        };
        self.pending.clear();
        self.ready.clear();
        if self.failed.is_none() {
            self.prefix_seen = Self::initial_prefix_seen(self.role);
        }
        discarded
    }

    /// True once frames may be parsed: the whole prefix was received (always true for an
    /// Originator, which receives no prefix).
    pub fn prefix_done(&self) -> bool {
        self.prefix_seen >= STREAM_PREFIX.len()
    }

    pub fn stats(&self) -> &DecoderStats {
        &self.stats
    }
}

/// Classifies one frame body at `at` and appends it to `out` unless it is dropped silently.
#[inline]
fn record(
    stats: &mut DecoderStats,
    out: &mut Vec<FrameRef>,
    body: &[u8],
    at: usize,
    loc: FrameLoc,
) {
    let (kind, skip) = match body {
        // RFC 9329 §3: an empty message is silently ignored.
        [] => {
            stats.empty += 1;
            return;
        }
        // RFC 9329 §6.6: a NAT-keepalive is dropped silently and is not an error.
        [KEEPALIVE_BYTE] => {
            stats.keepalive += 1;
            return;
        }
        // RFC 9329 §3, §3.1: non-ESP marker => IKE message behind it (possibly empty).
        [0, 0, 0, 0, ..] => {
            stats.ike += 1;
            (FrameKind::Ike, NON_ESP_MARKER.len())
        }
        // RFC 9329 §3.2: anything else with room for SPI + sequence number is ESP.
        [_, _, _, _, _, _, _, _, ..] => {
            stats.esp += 1;
            (FrameKind::Esp, 0)
        }
        // Neither: handed out for the corruption heuristic of RFC 9329 §6.1.
        _ => {
            stats.unparseable += 1;
            (FrameKind::Unparseable, 0)
        }
    };
    out.push(FrameRef {
        kind,
        loc,
        range: at + skip..at + body.len(),
    });
}

/// Rejected encoder input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer must be at least this long.
    BufferTooSmall { needed: usize },
    /// An IKE message must not be empty.
    Empty,
    /// The message (of this length) does not fit a 16-bit Length (RFC 9329 §3).
    TooLong(usize),
    /// ESP SPI 0 is forbidden (RFC 9329 §3.2).
    ZeroSpi,
    /// ESP packet (of this length) shorter than SPI + sequence number.
    EspTooShort(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
            Self::Empty => f.write_str("empty IKE message"),
            Self::TooLong(len) => write!(f, "message of {len} bytes too long for a TCP frame"),
            Self::ZeroSpi => f.write_str("ESP SPI must not be zero"),
            Self::EspTooShort(len) => write!(f, "ESP packet of {len} bytes is too short"),
        }
    }
}

impl std::error::Error for EncodeError {}

// RFC 9329 §3.1, §3.2: every encoder below writes Length = 2 + body length with a non-empty body
// (IKE >= 1 + 4 bytes, ESP >= 8 bytes), so a Length of 0 or 1 can never be emitted.

/// Writes the stream prefix `IKETCP` into `out` and returns 6. Only an Originator sends it (§4).
pub fn encode_prefix(out: &mut [u8]) -> Result<usize, EncodeError> {
    let Some(dst) = out.first_chunk_mut::<6>() else {
        return Err(EncodeError::BufferTooSmall {
            needed: STREAM_PREFIX.len(),
        });
    };
    *dst = STREAM_PREFIX;
    Ok(STREAM_PREFIX.len())
}

/// Writes `Length ‖ 00000000 ‖ msg` (RFC 9329 §3.1) and returns the bytes written.
pub fn encode_ike(msg: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    if msg.is_empty() {
        return Err(EncodeError::Empty);
    }
    if msg.len() > MAX_IKE_MESSAGE_LEN {
        return Err(EncodeError::TooLong(msg.len()));
    }
    let total = LENGTH_FIELD_LEN + NON_ESP_MARKER.len() + msg.len();
    let len = u16::try_from(total).map_err(|_| EncodeError::TooLong(msg.len()))?;
    let Some(frame) = out.get_mut(..total) else {
        return Err(EncodeError::BufferTooSmall { needed: total });
    };
    let Some((hdr, rest)) = frame.split_first_chunk_mut::<LENGTH_FIELD_LEN>() else {
        return Err(EncodeError::BufferTooSmall { needed: total });
    };
    let Some((marker, body)) = rest.split_first_chunk_mut::<4>() else {
        return Err(EncodeError::BufferTooSmall { needed: total });
    };
    *hdr = len.to_be_bytes();
    *marker = NON_ESP_MARKER;
    // `body` is `total - 6 == msg.len()` bytes long by construction.
    body.copy_from_slice(msg);
    Ok(total)
}

/// Checks an ESP packet for framing and returns its Length field value.
fn esp_length(esp: &[u8]) -> Result<u16, EncodeError> {
    match esp {
        [0, 0, 0, 0, ..] if esp.len() >= MIN_ESP_LEN => Err(EncodeError::ZeroSpi),
        _ if esp.len() < MIN_ESP_LEN => Err(EncodeError::EspTooShort(esp.len())),
        _ if esp.len() > MAX_BODY_LEN => Err(EncodeError::TooLong(esp.len())),
        _ => {
            u16::try_from(LENGTH_FIELD_LEN + esp.len()).map_err(|_| EncodeError::TooLong(esp.len()))
        }
    }
}

/// Writes `Length ‖ esp` (RFC 9329 §3.2) and returns the bytes written.
pub fn encode_esp(esp: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let len = esp_length(esp)?;
    let total = usize::from(len);
    let Some(frame) = out.get_mut(..total) else {
        return Err(EncodeError::BufferTooSmall { needed: total });
    };
    let Some((hdr, body)) = frame.split_first_chunk_mut::<LENGTH_FIELD_LEN>() else {
        return Err(EncodeError::BufferTooSmall { needed: total });
    };
    *hdr = len.to_be_bytes();
    // `body` is `total - 2 == esp.len()` bytes long by construction.
    body.copy_from_slice(esp);
    Ok(total)
}

/// Zero-copy [`encode_esp`]: the ESP packet sits at `buf[esp]` and the two bytes before
/// `esp.start` are free. Writes the Length there and returns the range of the whole frame.
///
/// `BufferTooSmall { needed }` when `esp` ends past `buf` (`needed` = `esp.end`) or has no room for
/// the Length in front (`needed` = the size of `buf` with two more bytes of headroom).
pub fn encode_esp_in_place(buf: &mut [u8], esp: Range<usize>) -> Result<Range<usize>, EncodeError> {
    let Some(pkt) = buf.get(esp.clone()) else {
        return Err(if esp.start > esp.end {
            EncodeError::EspTooShort(0)
        } else {
            EncodeError::BufferTooSmall { needed: esp.end }
        });
    };
    let len = esp_length(pkt)?;
    let Some(start) = esp.start.checked_sub(LENGTH_FIELD_LEN) else {
        return Err(EncodeError::BufferTooSmall {
            needed: buf.len() + (LENGTH_FIELD_LEN - esp.start),
        });
    };
    let Some(hdr) = buf
        .get_mut(start..)
        .and_then(|s| s.first_chunk_mut::<LENGTH_FIELD_LEN>())
    else {
        return Err(EncodeError::BufferTooSmall { needed: esp.end });
    };
    *hdr = len.to_be_bytes();
    Ok(start..esp.end)
}

/// Sending side of one TCP connection: the prefix is due exactly once, first, for an Originator
/// and never for a Responder (RFC 9329 §4, §6.1). Create one per connection.
#[derive(Debug, Clone)]
pub struct FrameEncoder {
    role: TcpRole,
    prefix_sent: bool,
}

impl FrameEncoder {
    pub fn new(role: TcpRole) -> Self {
        Self {
            role,
            prefix_sent: false,
        }
    }

    /// The local role given to [`FrameEncoder::new`].
    pub fn role(&self) -> TcpRole {
        self.role
    }

    /// Bytes to send before anything else on this connection: the prefix for an Originator until
    /// [`mark_prefix_sent`](Self::mark_prefix_sent), always empty for a Responder.
    pub fn pending_prefix(&self) -> &'static [u8] {
        match self.role {
            // RFC 9329 §4, §6.1: first bytes of every new Originator stream.
            TcpRole::Originator if !self.prefix_sent => &STREAM_PREFIX,
            // RFC 9329 §4: sent once, and only by the Originator.
            _ => &[],
        }
    }

    pub fn mark_prefix_sent(&mut self) {
        self.prefix_sent = true;
    }
}

#[cfg(test)]
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests report failures by panicking"
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Owned = (FrameKind, Vec<u8>);

    /// Everything observable about decoding one stream.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Outcome {
        frames: Vec<Owned>,
        error: Option<StreamError>,
        stats: DecoderStats,
        /// Returned by `finish()` at the end of the stream.
        discarded: usize,
    }

    /// Streams up to this size are split at every offset; longer ones at a handful.
    const EVERY_OFFSET_MAX: usize = 2048;

    fn assert_bounded(dec: &FrameDecoder) {
        assert!(dec.pending.len() <= MAX_FRAME_LEN, "{dec:?}");
        assert!(dec.ready.len() <= MAX_FRAME_LEN, "{dec:?}");
        assert!(dec.pending.capacity() <= MAX_FRAME_LEN, "{dec:?}");
        assert!(dec.ready.capacity() <= MAX_FRAME_LEN, "{dec:?}");
    }

    /// Decodes the chunks in order with one decoder, resolving every FrameRef right after its call.
    fn run_chunks<'a>(role: TcpRole, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut dec = FrameDecoder::new(role);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        let mut error = None;
        for chunk in chunks {
            out.clear();
            if let Some(err) = error {
                // A failed decoder stays failed, emits nothing and counts nothing.
                let before = *dec.stats();
                assert_eq!(dec.decode(chunk, &mut out), Err(err));
                assert!(out.is_empty());
                assert_eq!(*dec.stats(), before);
                continue;
            }
            let res = dec.decode(chunk, &mut out);
            assert!(out.iter().filter(|f| f.loc == FrameLoc::Carry).count() <= 1);
            for f in &out {
                let bytes = f.bytes(chunk, dec.carry()).expect("range resolves");
                frames.push((f.kind, bytes.to_vec()));
            }
            assert_bounded(&dec);
            if let Err(err) = res {
                error = Some(err);
                assert_eq!(dec.decode(&[], &mut out), Err(err), "sticky error");
            }
        }
        let stats = *dec.stats();
        let discarded = dec.finish();
        Outcome {
            frames,
            error,
            stats,
            discarded,
        }
    }

    /// Decodes `stream` in one call, split in two at every offset (a handful for long streams),
    /// and one byte at a time; all must agree. Returns the common outcome.
    fn check_splits(role: TcpRole, stream: &[u8]) -> Outcome {
        let whole = run_chunks(role, [stream]);
        let n = stream.len();
        let offsets: Vec<usize> = if n <= EVERY_OFFSET_MAX {
            (0..=n).collect()
        } else {
            (0..12)
                .chain([n / 3, n / 2])
                .chain(n.saturating_sub(12)..=n)
                .collect()
        };
        for k in offsets {
            let (a, b) = stream.split_at(k);
            assert_eq!(run_chunks(role, [a, b]), whole, "split at offset {k}");
        }
        assert_eq!(
            run_chunks(role, stream.chunks(1)),
            whole,
            "one byte at a time"
        );
        whole
    }

    fn ike(msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; msg.len() + 6];
        let n = encode_ike(msg, &mut buf).expect("valid IKE message");
        buf.truncate(n);
        buf
    }

    fn esp(pkt: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; pkt.len() + 2];
        let n = encode_esp(pkt, &mut buf).expect("valid ESP packet");
        buf.truncate(n);
        buf
    }

    fn esp_pkt(spi: u32, seq: u32, payload_len: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + payload_len);
        p.extend_from_slice(&spi.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend((0..payload_len).map(|i| (i % 251) as u8));
        p
    }

    fn with_prefix(parts: &[&[u8]]) -> Vec<u8> {
        let mut s = STREAM_PREFIX.to_vec();
        for p in parts {
            s.extend_from_slice(p);
        }
        s
    }

    const KEEPALIVE: [u8; 3] = [0x00, 0x03, 0xFF];
    const EMPTY: [u8; 2] = [0x00, 0x02];

    #[test]
    fn r_3_b_empty_frame_ignored() {
        let msg = b"an IKE message";
        let stream = with_prefix(&[&EMPTY, &ike(msg), &EMPTY, &EMPTY, &ike(msg), &EMPTY]);
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        assert_eq!(
            o.frames,
            vec![
                (FrameKind::Ike, msg.to_vec()),
                (FrameKind::Ike, msg.to_vec())
            ]
        );
        assert_eq!(o.stats.empty, 4);
        assert_eq!(o.stats.unparseable, 0);
        assert_eq!(o.discarded, 0);
    }

    #[test]
    fn r_3_c_keepalive_is_the_smallest_body() {
        let o = check_splits(TcpRole::Originator, &KEEPALIVE);
        assert_eq!(o.error, None);
        assert!(o.frames.is_empty());
        assert_eq!(o.stats.keepalive, 1);
        assert_eq!(o.stats.bytes, 3);
    }

    #[test]
    fn r_3_c_marker_only_is_ike_with_empty_message() {
        let stream = with_prefix(&[&[0x00, 0x06, 0, 0, 0, 0]]);
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        assert_eq!(o.frames, vec![(FrameKind::Ike, vec![])]);
    }

    #[test]
    fn r_3_c_first_four_bytes_select_ike_or_esp() {
        let ike_body = [0, 0, 0, 0, 0, 0, 0, 1, 9, 9];
        let esp_body = esp_pkt(1, 0, 2); // SPI 1: only the low byte is non-zero
        let stream = with_prefix(&[&[0x00, 0x0C], &ike_body, &esp(&esp_body)]);
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        assert_eq!(
            o.frames,
            vec![
                (FrameKind::Ike, ike_body[4..].to_vec()),
                (FrameKind::Esp, esp_body)
            ]
        );
    }

    #[test]
    fn r_3_c_short_bodies_are_unparseable() {
        let bodies: [&[u8]; 7] = [
            &[0x00],
            &[0xFE],
            &[0xFF, 0xFF],
            &[1, 2, 3],
            &[0, 0, 0],
            &[0, 0, 0, 1],
            &[9, 9, 9, 9, 1, 2, 3],
        ];
        let mut stream = STREAM_PREFIX.to_vec();
        for b in bodies {
            stream.extend_from_slice(&((b.len() + 2) as u16).to_be_bytes());
            stream.extend_from_slice(b);
        }
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        let expected: Vec<Owned> = bodies
            .iter()
            .map(|b| (FrameKind::Unparseable, b.to_vec()))
            .collect();
        assert_eq!(o.frames, expected);
        assert_eq!(o.stats.unparseable, 7);
        assert_eq!(o.stats.keepalive, 0);
    }

    #[test]
    fn r_3_c_max_body_65533_is_length_65535() {
        let big_esp = esp_pkt(0xC001_D00D, 7, MAX_BODY_LEN - 8);
        let esp_frame = esp(&big_esp);
        assert_eq!(esp_frame.len(), 65535);
        assert_eq!(esp_frame[..2], [0xFF, 0xFF]);

        let big_ike = vec![0x5A; MAX_IKE_MESSAGE_LEN];
        let ike_frame = ike(&big_ike);
        assert_eq!(ike_frame.len(), 65535);
        assert_eq!(ike_frame[..6], [0xFF, 0xFF, 0, 0, 0, 0]);

        let stream = with_prefix(&[&esp_frame, &KEEPALIVE, &ike_frame, &ike(b"x")]);
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        assert_eq!(
            o.frames,
            vec![
                (FrameKind::Esp, big_esp),
                (FrameKind::Ike, big_ike),
                (FrameKind::Ike, b"x".to_vec())
            ]
        );
    }

    #[test]
    fn r_3_c_encoders_reject_bodies_over_65533() {
        let mut buf = vec![0; 70_000];
        assert_eq!(
            encode_ike(&vec![1; MAX_IKE_MESSAGE_LEN + 1], &mut buf),
            Err(EncodeError::TooLong(65530))
        );
        let long_esp = esp_pkt(0x100, 1, MAX_BODY_LEN - 7);
        assert_eq!(
            encode_esp(&long_esp, &mut buf),
            Err(EncodeError::TooLong(65534))
        );
        buf[2..2 + long_esp.len()].copy_from_slice(&long_esp);
        assert_eq!(
            encode_esp_in_place(&mut buf, 2..2 + MAX_BODY_LEN + 1),
            Err(EncodeError::TooLong(65534))
        );
    }

    #[test]
    fn r_3_1_a_ike_encoder_never_writes_length_0_or_1() {
        let mut buf = vec![0; MAX_FRAME_LEN];
        assert_eq!(encode_ike(&[], &mut buf), Err(EncodeError::Empty));
        for len in (1..64).chain([MAX_IKE_MESSAGE_LEN - 1, MAX_IKE_MESSAGE_LEN]) {
            let n = encode_ike(&vec![0xAB; len], &mut buf).expect("valid");
            let length = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            assert_eq!(length, n);
            assert_eq!(length, len + 6);
            assert!(length >= 7);
        }
        let o = check_splits(TcpRole::Originator, &ike(&[0x42]));
        assert_eq!(o.frames, vec![(FrameKind::Ike, vec![0x42])]);
    }

    #[test]
    fn r_3_1_b_length_0_is_fatal() {
        let stream = with_prefix(&[&ike(b"first"), &[0x00, 0x00], &ike(b"never")]);
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, Some(StreamError::InvalidLength(0)));
        assert_eq!(o.frames, vec![(FrameKind::Ike, b"first".to_vec())]);
        assert_eq!(o.stats.bytes, 6 + 11 + 2);
        assert_eq!(o.discarded, 0);
    }

    #[test]
    fn r_3_1_b_length_1_is_fatal() {
        let stream = [&ike(b"first")[..], &[0x00, 0x01, 0, 0, 0, 0]].concat();
        let o = check_splits(TcpRole::Originator, &stream);
        assert_eq!(o.error, Some(StreamError::InvalidLength(1)));
        assert_eq!(o.frames, vec![(FrameKind::Ike, b"first".to_vec())]);
    }

    #[test]
    fn r_3_1_b_error_is_sticky() {
        let mut dec = FrameDecoder::new(TcpRole::Originator);
        let mut out = Vec::new();
        assert_eq!(
            dec.decode(&[0x00], &mut out),
            Ok(()),
            "half a Length is not an error yet"
        );
        assert_eq!(
            dec.decode(&[0x01], &mut out),
            Err(StreamError::InvalidLength(1))
        );
        assert_eq!(
            dec.decode(&ike(b"ok"), &mut out),
            Err(StreamError::InvalidLength(1))
        );
        assert!(out.is_empty());
        assert_eq!(dec.finish(), 0);
        assert_eq!(
            dec.decode(&ike(b"ok"), &mut out),
            Err(StreamError::InvalidLength(1))
        );
    }

    /// The IKE_SA_INIT request of the requirements digest (§2.2): 336 bytes, header Length 0x150.
    fn ike_sa_init_336() -> Vec<u8> {
        let mut m = vec![1, 2, 3, 4, 5, 6, 7, 8]; // SPIi
        m.extend_from_slice(&[0; 8]); // SPIr
        m.extend_from_slice(&[0x21, 0x20, 0x22, 0x08]); // SA, v2.0, IKE_SA_INIT, Initiator
        m.extend_from_slice(&[0; 4]); // Message ID
        m.extend_from_slice(&336u32.to_be_bytes());
        m.resize(336, 0xA5);
        m
    }

    #[test]
    fn r_3_1_c_golden_ike_sa_init_frame() {
        let msg = ike_sa_init_336();
        let frame = ike(&msg);
        assert_eq!(frame.len(), 342);
        #[rustfmt::skip]
        let head: [u8; 34] = [
            0x01, 0x56,             // Length 342 = 2 + 4 + 336
            0x00, 0x00, 0x00, 0x00, // non-ESP marker, also on IKE_SA_INIT
            1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0,
            0x21, 0x20, 0x22, 0x08, 0, 0, 0, 0, 0x00, 0x00, 0x01, 0x50,
        ];
        assert_eq!(frame[..34], head);
        assert_eq!(frame[6..], msg[..]);

        let mut enc = FrameEncoder::new(TcpRole::Originator);
        let stream = [enc.pending_prefix(), &frame].concat();
        enc.mark_prefix_sent();
        assert_eq!(
            stream[..12],
            [0x49, 0x4B, 0x45, 0x54, 0x43, 0x50, 0x01, 0x56, 0, 0, 0, 0]
        );
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        assert_eq!(o.frames, vec![(FrameKind::Ike, msg)]);
    }

    #[test]
    fn r_3_1_c_golden_esp_frame() {
        let pkt = esp_pkt(0xC001_D00D, 1, 112);
        let frame = esp(&pkt);
        assert_eq!(frame[..6], [0x00, 0x7A, 0xC0, 0x01, 0xD0, 0x0D]);
        assert_eq!(frame.len(), 122);
    }

    #[test]
    fn r_3_2_a_zero_spi_rejected_by_encoders() {
        let mut pkt = esp_pkt(0, 1, 16);
        let mut buf = vec![0; 64];
        assert_eq!(encode_esp(&pkt, &mut buf), Err(EncodeError::ZeroSpi));
        pkt.splice(0..0, [0, 0]);
        assert_eq!(
            encode_esp_in_place(&mut pkt, 2..26),
            Err(EncodeError::ZeroSpi)
        );
        assert!(encode_esp(&esp_pkt(1, 0, 0), &mut buf).is_ok());
    }

    #[test]
    fn r_3_2_a_zero_first_word_is_never_esp() {
        // A body starting with four zeros is IKE, whatever follows.
        let body = [0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 1];
        let stream = [&[0x00, 0x0E][..], &body].concat();
        let o = check_splits(TcpRole::Originator, &stream);
        assert_eq!(o.frames, vec![(FrameKind::Ike, body[4..].to_vec())]);
        assert_eq!(o.stats.esp, 0);
    }

    #[test]
    fn r_3_2_b_esp_encoders_never_write_length_0_or_1() {
        let mut buf = vec![0; 128];
        for len in 0..MIN_ESP_LEN {
            let pkt = vec![0xEE; len];
            assert_eq!(
                encode_esp(&pkt, &mut buf),
                Err(EncodeError::EspTooShort(len))
            );
            let mut b = [&[0, 0][..], &pkt].concat();
            assert_eq!(
                encode_esp_in_place(&mut b, 2..2 + len),
                Err(EncodeError::EspTooShort(len))
            );
        }
        for len in MIN_ESP_LEN..100 {
            let pkt = vec![0xEE; len];
            let n = encode_esp(&pkt, &mut buf).expect("valid");
            let length = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            assert_eq!(length, n);
            assert!(length >= 10);
        }
    }

    #[test]
    fn r_3_2_c_length_0_or_1_after_esp_is_fatal() {
        for bad in [0u8, 1] {
            let pkt = esp_pkt(0x4242_4242, 9, 20);
            let stream = with_prefix(&[&esp(&pkt), &[0x00, bad, 0xAA, 0xBB], &esp(&pkt)]);
            let o = check_splits(TcpRole::Responder, &stream);
            assert_eq!(o.error, Some(StreamError::InvalidLength(u16::from(bad))));
            assert_eq!(o.frames, vec![(FrameKind::Esp, pkt)]);
            assert_eq!(o.stats.bytes, 6 + 30 + 2);
        }
    }

    #[test]
    fn r_4_a_originator_sends_prefix_bytes() {
        let mut buf = [0u8; 8];
        assert_eq!(encode_prefix(&mut buf), Ok(6));
        assert_eq!(buf[..6], [0x49, 0x4B, 0x45, 0x54, 0x43, 0x50]);
        assert_eq!(
            encode_prefix(&mut buf[..5]),
            Err(EncodeError::BufferTooSmall { needed: 6 })
        );
        let enc = FrameEncoder::new(TcpRole::Originator);
        assert_eq!(enc.pending_prefix(), b"IKETCP");
    }

    #[test]
    fn r_4_b_prefix_sent_once_and_never_by_responder() {
        let mut enc = FrameEncoder::new(TcpRole::Originator);
        assert_eq!(enc.pending_prefix(), &STREAM_PREFIX);
        enc.mark_prefix_sent();
        assert!(enc.pending_prefix().is_empty());
        enc.mark_prefix_sent();
        assert!(enc.pending_prefix().is_empty());

        let mut resp = FrameEncoder::new(TcpRole::Responder);
        assert!(resp.pending_prefix().is_empty());
        resp.mark_prefix_sent();
        assert!(resp.pending_prefix().is_empty());
    }

    #[test]
    fn r_4_b_originator_decoder_reads_prefix_as_length_0x494b() {
        // Too short to complete a 0x494B-byte frame: buffered, then discarded at EOF.
        let stream = [&STREAM_PREFIX[..], &ike(b"hello")].concat();
        let o = check_splits(TcpRole::Originator, &stream);
        assert_eq!(o.error, None);
        assert!(o.frames.is_empty());
        assert_eq!(o.discarded, stream.len());

        // Completed: one garbage ESP frame with "SPI" `ETCP`, then framing goes on.
        let mut stream = [&STREAM_PREFIX[..], &ike(b"hello")].concat();
        stream.resize(0x494B, 0);
        stream.extend_from_slice(&ike(b"after"));
        let o = check_splits(TcpRole::Originator, &stream);
        assert_eq!(o.error, None);
        assert_eq!(
            o.frames,
            vec![
                (FrameKind::Esp, stream[2..0x494B].to_vec()),
                (FrameKind::Ike, b"after".to_vec())
            ]
        );
        assert_eq!(&o.frames[0].1[..4], b"ETCP");
    }

    #[test]
    fn r_6_1_a_originator_stream_starts_with_prefix() {
        let mut enc = FrameEncoder::new(TcpRole::Originator);
        let mut wire = Vec::new();
        wire.extend_from_slice(enc.pending_prefix());
        enc.mark_prefix_sent();
        let pkt = esp_pkt(0x0102_0304, 1, 24);
        for frame in [ike(b"IKE_SA_INIT"), ike(b"IKE_AUTH"), esp(&pkt)] {
            wire.extend_from_slice(enc.pending_prefix());
            wire.extend_from_slice(&frame);
        }
        assert_eq!(wire[..6], STREAM_PREFIX);
        let o = check_splits(TcpRole::Responder, &wire);
        assert_eq!(o.error, None);
        assert_eq!(
            o.frames,
            vec![
                (FrameKind::Ike, b"IKE_SA_INIT".to_vec()),
                (FrameKind::Ike, b"IKE_AUTH".to_vec()),
                (FrameKind::Esp, pkt)
            ]
        );
    }

    #[test]
    fn r_6_1_b_nothing_parsed_before_sixth_prefix_byte() {
        let pkt = esp_pkt(0x1000, 1, 16);
        let stream = with_prefix(&[&esp(&pkt)]);
        let mut dec = FrameDecoder::new(TcpRole::Responder);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            out.clear();
            dec.decode(core::slice::from_ref(b), &mut out)
                .expect("valid stream");
            assert_eq!(dec.prefix_done(), i >= 5, "after byte {}", i + 1);
            if i < 5 {
                assert!(out.is_empty());
                assert!(dec.pending.is_empty(), "prefix bytes are not frame bytes");
            }
            for f in &out {
                assert_eq!(f.loc, FrameLoc::Carry);
                frames.push((
                    f.kind,
                    f.bytes(&[], dec.carry()).expect("in carry").to_vec(),
                ));
            }
        }
        assert_eq!(frames, vec![(FrameKind::Esp, pkt.clone())]);

        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.frames, vec![(FrameKind::Esp, pkt)]);
    }

    #[test]
    fn r_6_1_b_partial_prefix_then_eof() {
        let o = check_splits(TcpRole::Responder, b"IKET");
        assert_eq!(o.error, None);
        assert!(o.frames.is_empty());
        assert_eq!(o.discarded, 4);
    }

    #[test]
    fn r_6_1_j_partial_frame_discarded_at_eof() {
        let msg = [0x11; 40];
        let frame = ike(&msg);
        let (first, second) = frame.split_at(frame.len() / 2);

        let o = check_splits(TcpRole::Responder, &with_prefix(&[first]));
        assert_eq!(o.error, None);
        assert!(o.frames.is_empty());
        assert_eq!(o.discarded, first.len());

        // The new connection gets a fresh decoder: the rest is not stitched to the first half.
        let o = check_splits(TcpRole::Responder, &with_prefix(&[second, &ike(b"next")]));
        assert!(!o.frames.contains(&(FrameKind::Ike, msg.to_vec())));

        // finish() also rewinds a reused decoder to start-of-stream.
        let mut dec = FrameDecoder::new(TcpRole::Responder);
        let mut out = Vec::new();
        dec.decode(&with_prefix(&[first]), &mut out).expect("valid");
        assert_eq!(dec.finish(), first.len());
        assert!(!dec.prefix_done());
        assert_eq!(dec.decode(second, &mut out), Err(StreamError::BadPrefix));
        assert!(out.is_empty());

        let mut dec = FrameDecoder::new(TcpRole::Originator);
        dec.decode(first, &mut out).expect("valid");
        assert_eq!(dec.finish(), first.len());
        dec.decode(second, &mut out)
            .expect("garbage, but not fatal");
        assert!(out.is_empty());
    }

    #[test]
    fn r_6_1_k_every_new_originator_connection_sends_prefix() {
        for _connection in 0..3 {
            let mut enc = FrameEncoder::new(TcpRole::Originator);
            assert_eq!(enc.pending_prefix(), b"IKETCP");
            enc.mark_prefix_sent();
            assert!(enc.pending_prefix().is_empty());
        }
        // The receiving side of a new connection demands it again.
        let o = check_splits(TcpRole::Responder, &with_prefix(&[&ike(b"a")]));
        assert_eq!(o.frames, vec![(FrameKind::Ike, b"a".to_vec())]);
        let o = check_splits(TcpRole::Responder, &ike(b"a"));
        assert_eq!(o.error, Some(StreamError::BadPrefix));
    }

    #[test]
    fn r_6_1_n_responder_refuses_stream_without_prefix() {
        let pkt = esp_pkt(0xABCD_0001, 1, 32);
        let o = check_splits(TcpRole::Responder, &esp(&pkt));
        assert_eq!(o.error, Some(StreamError::BadPrefix));
        assert!(o.frames.is_empty());
        assert_eq!(o.stats.bytes, 1);

        for bad in [&b"IKETCQ"[..], b"iketcp", b"XIKETCP", b"IKE"] {
            let stream = [bad, &esp(&pkt)].concat();
            let o = check_splits(TcpRole::Responder, &stream);
            assert_eq!(o.error, Some(StreamError::BadPrefix), "{bad:?}");
            assert!(o.frames.is_empty());
            assert_eq!(o.stats.esp, 0);
        }
    }

    #[test]
    fn r_6_6_b_keepalive_dropped_silently() {
        let pkt = esp_pkt(0x0000_1234, 77, 40);
        let stream = with_prefix(&[&KEEPALIVE, &esp(&pkt), &KEEPALIVE, &KEEPALIVE]);
        let o = check_splits(TcpRole::Responder, &stream);
        assert_eq!(o.error, None);
        assert_eq!(o.frames, vec![(FrameKind::Esp, pkt)]);
        assert_eq!(o.stats.keepalive, 3);
        assert_eq!(o.stats.unparseable, 0);
        assert_eq!(o.discarded, 0);
    }

    #[test]
    fn whole_frames_are_not_copied() {
        let a = esp_pkt(0x10, 1, 8);
        let stream = with_prefix(&[&esp(&a), &ike(b"one"), &esp(&a), &ike(b"tw")]);
        let mut dec = FrameDecoder::new(TcpRole::Responder);
        let mut out = Vec::new();
        dec.decode(&stream, &mut out).expect("valid");
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|f| f.loc == FrameLoc::Input));
        assert_eq!(out[0].range, 8..24);
        assert_eq!(out[1].range, 30..33);
        assert!(dec.carry().is_empty() && dec.pending.is_empty());
        assert_eq!(
            *dec.stats(),
            DecoderStats {
                bytes: stream.len() as u64,
                ike: 2,
                esp: 2,
                ..DecoderStats::default()
            }
        );
    }

    #[test]
    fn carried_frame_is_mutable_in_place() {
        let pkt = esp_pkt(0x7777_0000, 3, 12);
        let frame = esp(&pkt);
        let next = ike(b"z");
        let mut dec = FrameDecoder::new(TcpRole::Originator);
        let mut out = Vec::new();
        dec.decode(&frame[..5], &mut out).expect("valid");
        assert!(out.is_empty());
        let rest = [&frame[5..], &next[..], &frame[..3]].concat();
        dec.decode(&rest, &mut out).expect("valid");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].loc, FrameLoc::Carry);
        assert_eq!(out[0].range, 2..frame.len());
        assert_eq!(out[1].loc, FrameLoc::Input);
        let r = out[0].range.clone();
        dec.carry_mut()[r.clone()]
            .iter_mut()
            .for_each(|b| *b ^= 0xFF);
        let flipped: Vec<u8> = pkt.iter().map(|b| b ^ 0xFF).collect();
        assert_eq!(dec.carry()[r], flipped[..]);
        // The next call invalidates the carried frame and keeps the new partial one.
        out.clear();
        dec.decode(&[], &mut out).expect("valid");
        assert!(dec.carry().is_empty());
        assert_eq!(dec.finish(), 3);
    }

    #[test]
    fn encode_esp_in_place_writes_length_before_packet() {
        let pkt = esp_pkt(0xAAAA_BBBB, 5, 10);
        let mut buf = [&[9, 9, 9][..], &pkt, &[7]].concat();
        let range = encode_esp_in_place(&mut buf, 3..3 + pkt.len()).expect("valid");
        assert_eq!(range, 1..21);
        assert_eq!(buf[1..21], esp(&pkt)[..]);
        assert_eq!(buf[0], 9);
        assert_eq!(buf[21], 7);

        let mut tight = pkt.clone();
        assert_eq!(
            encode_esp_in_place(&mut tight, 0..18),
            Err(EncodeError::BufferTooSmall { needed: 20 })
        );
        let mut one = [&[0][..], &pkt].concat();
        assert_eq!(
            encode_esp_in_place(&mut one, 1..19),
            Err(EncodeError::BufferTooSmall { needed: 20 })
        );
        assert_eq!(
            encode_esp_in_place(&mut buf, 3..40),
            Err(EncodeError::BufferTooSmall { needed: 40 })
        );
        #[allow(clippy::reversed_empty_ranges, reason = "invalid input on purpose")]
        let reversed = 10..3;
        assert_eq!(
            encode_esp_in_place(&mut buf, reversed),
            Err(EncodeError::EspTooShort(0))
        );
    }

    #[test]
    fn encoders_report_small_buffers() {
        let mut buf = [0u8; 9];
        assert_eq!(
            encode_ike(b"four", &mut buf),
            Err(EncodeError::BufferTooSmall { needed: 10 })
        );
        assert_eq!(encode_ike(b"fou", &mut buf), Ok(9));
        assert_eq!(
            encode_esp(&esp_pkt(1, 1, 0), &mut buf),
            Err(EncodeError::BufferTooSmall { needed: 10 })
        );
        assert_eq!(encode_esp(&esp_pkt(1, 1, 0), &mut [0; 10]), Ok(10));
    }

    #[test]
    fn errors_display() {
        assert!(StreamError::BadPrefix.to_string().contains("IKETCP"));
        assert!(StreamError::InvalidLength(1).to_string().contains('1'));
        let e: &dyn std::error::Error = &EncodeError::TooLong(70_000);
        assert!(e.to_string().contains("70000"));
        assert!(format!("{:?}", FrameDecoder::new(TcpRole::Responder)).contains("Responder"));
    }

    #[derive(Debug, Clone)]
    enum Item {
        Ike(Vec<u8>),
        Esp(Vec<u8>),
        Keepalive,
        Empty,
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 1..300).prop_map(Item::Ike),
            4 => (1..=u32::MAX, prop::collection::vec(any::<u8>(), 4..300)).prop_map(
                |(spi, rest)| Item::Esp([&spi.to_be_bytes()[..], &rest].concat())
            ),
            1 => (1..=u32::MAX, prop::collection::vec(any::<u8>(), 2000..5000)).prop_map(
                |(spi, rest)| Item::Esp([&spi.to_be_bytes()[..], &rest].concat())
            ),
            1 => Just(Item::Keepalive),
            1 => Just(Item::Empty),
        ]
    }

    /// Cuts `stream` into consecutive chunks whose sizes cycle through `sizes` (all non-zero).
    fn chunked<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = stream;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(size.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        chunks
    }

    proptest! {
        #[test]
        fn prop_encoded_frames_roundtrip_in_random_chunks(
            items in prop::collection::vec(item(), 0..24),
            sizes in prop::collection::vec(1usize..700, 1..16),
            responder in any::<bool>(),
        ) {
            let role = if responder { TcpRole::Responder } else { TcpRole::Originator };
            let mut enc = FrameEncoder::new(if responder { TcpRole::Originator } else { TcpRole::Responder });
            let mut stream = enc.pending_prefix().to_vec();
            enc.mark_prefix_sent();
            let mut expected = Vec::new();
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            for it in &items {
                let n = match it {
                    Item::Ike(m) => {
                        expected.push((FrameKind::Ike, m.clone()));
                        encode_ike(m, &mut buf)?
                    }
                    Item::Esp(p) => {
                        expected.push((FrameKind::Esp, p.clone()));
                        encode_esp(p, &mut buf)?
                    }
                    Item::Keepalive => {
                        buf[..3].copy_from_slice(&KEEPALIVE);
                        3
                    }
                    Item::Empty => {
                        buf[..2].copy_from_slice(&EMPTY);
                        2
                    }
                };
                stream.extend_from_slice(&buf[..n]);
            }
            let o = run_chunks(role, chunked(&stream, &sizes));
            prop_assert_eq!(o.error, None);
            prop_assert_eq!(o.discarded, 0);
            prop_assert_eq!(o.stats.bytes, stream.len() as u64);
            prop_assert_eq!(o.stats.unparseable, 0);
            prop_assert_eq!(o.frames, expected);
        }

        #[test]
        fn prop_garbage_never_panics_and_carry_stays_bounded(
            head in prop::collection::vec(any::<u8>(), 0..2048),
            fill in (any::<u8>(), 0usize..70_000),
            sizes in prop::collection::vec(1usize..5000, 1..16),
            responder in any::<bool>(),
            prefixed in any::<bool>(),
        ) {
            let role = if responder { TcpRole::Responder } else { TcpRole::Originator };
            let mut stream = if prefixed { STREAM_PREFIX.to_vec() } else { Vec::new() };
            stream.extend_from_slice(&head);
            stream.resize(stream.len() + fill.1, fill.0);
            // run_chunks asserts the carry bounds and FrameRef validity after every call.
            let o = run_chunks(role, chunked(&stream, &sizes));
            prop_assert!(o.discarded < MAX_FRAME_LEN);
            if o.error.is_none() {
                prop_assert_eq!(o.stats.bytes, stream.len() as u64);
            }
        }
    }
}
