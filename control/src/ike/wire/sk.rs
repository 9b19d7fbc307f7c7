//! Encrypted (SK, RFC 7296 §3.14) and Encrypted Fragment (SKF, RFC 7383 §2.5) payloads.
//! The codec only frames them; IV, ciphertext, padding and ICV are the crypto layer's.

use core::ops::Range;

use super::reader::Reader;
use super::{Error, HEADER_LEN, Header, MAX_MESSAGE_LEN, PayloadIter, PayloadType};

/// SK payload: the type of the first inner payload and the opaque IV ‖ ciphertext ‖ ICV.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SkPayload {
    /// Next Payload field of the SK header: the first payload inside (RFC 7296 §3.2).
    pub first_payload: PayloadType,
    /// Initialization Vector, encrypted payloads with padding and Pad Length, ICV.
    pub body: Vec<u8>,
}

/// SKF payload (RFC 7383 §2.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SkfPayload {
    /// First inner payload type in fragment 1, zero in the others.
    pub first_payload: PayloadType,
    /// Fragment Number, 1..=`total_fragments`.
    pub fragment_number: u16,
    /// Total Fragments, nonzero.
    pub total_fragments: u16,
    /// Initialization Vector, encrypted content with padding and Pad Length, ICV.
    pub body: Vec<u8>,
}

/// Fragment Number and Total Fragments.
const SKF_FIELDS_LEN: usize = 4;

impl SkfPayload {
    /// Parses the body of an SKF payload; `next` is its Next Payload field. Checks
    /// 1 <= Fragment Number <= Total Fragments (RFC 7383 §2.5); reassembly checks are the
    /// session's (§2.6).
    pub fn parse(next: PayloadType, body: &[u8]) -> Result<SkfPayload, Error> {
        let mut r = Reader::new(body);
        let fragment_number = r.u16()?;
        let total_fragments = r.u16()?;
        check_fragment(fragment_number, total_fragments)?;
        Ok(SkfPayload {
            first_payload: next,
            fragment_number,
            total_fragments,
            body: r.rest().to_vec(),
        })
    }

    /// Appends the body of an SKF payload.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        check_fragment(self.fragment_number, self.total_fragments)?;
        out.extend_from_slice(&self.fragment_number.to_be_bytes());
        out.extend_from_slice(&self.total_fragments.to_be_bytes());
        out.extend_from_slice(&self.body);
        Ok(())
    }
}

fn check_fragment(number: u16, total: u16) -> Result<(), Error> {
    if number == 0 || number > total {
        return Err(Error::BadFragmentNumber);
    }
    Ok(())
}

/// Where the SK or SKF payload sits in a message (offsets into the message bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedLayout {
    /// `SK` or `SKF`.
    pub kind: PayloadType,
    /// The payload's header: the 4-byte generic header, plus Fragment Number and Total
    /// Fragments for SKF. The AEAD associated data is `msg[..header.end]` (RFC 5282 §5.1:
    /// IKE header through the payload header; for SKF everything before the IV, as RFC 7383
    /// §2.5 leaves the processing as in RFC 7296 §3.14 and deployed peers do).
    pub header: Range<usize>,
    /// IV ‖ ciphertext (with padding and Pad Length) ‖ ICV, up to the end of the message.
    pub body: Range<usize>,
}

impl EncryptedLayout {
    /// The AEAD associated data of `msg` (RFC 5282 §5.1).
    pub fn aad<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        msg.get(..self.header.end).unwrap_or_default()
    }
}

/// Finds the SK/SKF payload of a whole message (header and outer chain checked as by
/// [`super::Message::parse`], payload bodies not typed). `None` if the message has none.
/// Use it on received bytes to build the AAD, and on a just-emitted message (whose SK body
/// holds placeholder bytes of the final size) to encrypt in place.
pub fn locate_encrypted(msg: &[u8]) -> Result<Option<EncryptedLayout>, Error> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(Error::TooLong);
    }
    let info = Header::parse(msg)?;
    info.check(msg.len())?;
    let mut found = None;
    for raw in PayloadIter::new(msg, HEADER_LEN, info.next_payload) {
        let raw = raw?;
        if raw.kind.is_encrypted() {
            let extra = if raw.kind == PayloadType::SKF {
                SKF_FIELDS_LEN
            } else {
                0
            };
            let header_end = raw.range.start + 4 + extra;
            if header_end > raw.range.end {
                return Err(Error::Truncated);
            }
            found = Some(EncryptedLayout {
                kind: raw.kind,
                header: raw.range.start..header_end,
                body: header_end..raw.range.end,
            });
        }
    }
    Ok(found)
}
