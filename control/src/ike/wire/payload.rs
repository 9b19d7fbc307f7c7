//! Generic payload header, payload chain walking, and the typed [`Payload`] (RFC 7296 §3.2).

use core::ops::Range;

use super::macros::registry;
use super::reader::{Reader, patch_len16};
use super::{
    AuthPayload, CertPayload, CpPayload, DeletePayload, Error, Identity, KePayload, MAX_PAYLOADS,
    NONCE_LEN_MAX, NONCE_LEN_MIN, NotifyPayload, Part, SaPayload, SkPayload, SkfPayload, TsPayload,
};

registry! {
    /// Payload type, as found in Next Payload fields (RFC 7296 §3.2; SKF: RFC 7383 §2.5;
    /// PS: RFC 8019 §8.2).
    pub struct PayloadType(u8) {
        /// No Next Payload: end of chain.
        NONE = 0,
        SA = 33,
        KE = 34,
        IDI = 35,
        IDR = 36,
        CERT = 37,
        CERTREQ = 38,
        AUTH = 39,
        NONCE = 40,
        NOTIFY = 41,
        DELETE = 42,
        VENDOR_ID = 43,
        TSI = 44,
        TSR = 45,
        SK = 46,
        CP = 47,
        EAP = 48,
        SKF = 53,
        /// Puzzle Solution (RFC 8019 §8.2).
        PS = 54,
    }
}

impl PayloadType {
    /// A payload type this codec parses into a typed variant.
    pub fn is_known(self) -> bool {
        self != Self::NONE && self.name().is_some()
    }

    /// SK or SKF: the chain ends with it and its Next Payload names the first inner payload.
    pub fn is_encrypted(self) -> bool {
        self == Self::SK || self == Self::SKF
    }
}

/// Generic payload header size (RFC 7296 §3.2).
const GENERIC_HEADER_LEN: usize = 4;
/// Critical bit in the second octet of the generic header (RFC 7296 §3.2).
const CRITICAL: u8 = 0x80;

/// One payload, typed by the Next Payload field that announced it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Security Association (RFC 7296 §3.3).
    Sa(SaPayload),
    /// Key Exchange (§3.4).
    Ke(KePayload),
    /// Identification - Initiator (§3.5).
    IdI(Identity),
    /// Identification - Responder (§3.5).
    IdR(Identity),
    /// Certificate (§3.6).
    Cert(CertPayload),
    /// Certificate Request (§3.7).
    CertReq(CertPayload),
    /// Authentication (§3.8).
    Auth(AuthPayload),
    /// Nonce Data, 16..=256 bytes (§3.9).
    Nonce(Vec<u8>),
    /// Notify (§3.10).
    Notify(NotifyPayload),
    /// Delete (§3.11).
    Delete(DeletePayload),
    /// Vendor ID (§3.12).
    VendorId(Vec<u8>),
    /// Traffic Selector - Initiator (§3.13).
    TsI(TsPayload),
    /// Traffic Selector - Responder (§3.13).
    TsR(TsPayload),
    /// Encrypted and Authenticated (§3.14); must be last.
    Sk(SkPayload),
    /// Configuration (§3.15).
    Cp(CpPayload),
    /// EAP message, raw (§3.16).
    Eap(Vec<u8>),
    /// Encrypted and Authenticated Fragment (RFC 7383 §2.5); must be last.
    Skf(SkfPayload),
    /// Puzzle Solution (RFC 8019 §8.2): four equal-sized PRF keys, kept raw here. Its rules
    /// (not empty, a multiple of 4 octets) are checked by the puzzle code, not the codec, so
    /// that a responder that asked for no puzzle can ignore a malformed one (RFC 8019 §7.1.4).
    Ps(Vec<u8>),
    /// A payload type this codec does not know, with the critical bit clear (RFC 7296 §2.5:
    /// skipped; kept so that re-emission is exact). Parsing never yields `critical: true`:
    /// that is [`Error::UnsupportedCriticalPayload`]. Emit refuses known types and type 0.
    Unknown {
        /// Its payload type.
        kind: PayloadType,
        /// The critical bit.
        critical: bool,
        /// Everything after the generic header.
        body: Vec<u8>,
    },
}

impl Payload {
    /// The payload type that announces this payload in the previous Next Payload field.
    pub fn kind(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Cert(_) => PayloadType::CERT,
            Payload::CertReq(_) => PayloadType::CERTREQ,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Sk(_) => PayloadType::SK,
            Payload::Cp(_) => PayloadType::CP,
            Payload::Eap(_) => PayloadType::EAP,
            Payload::Skf(_) => PayloadType::SKF,
            Payload::Ps(_) => PayloadType::PS,
            Payload::Unknown { kind, .. } => *kind,
        }
    }

    /// Types a raw payload by the type that announced it. The critical bit is ignored for
    /// known types (RFC 7296 §3.2: "MUST be ignored ... if the recipient understands").
    pub fn parse(raw: &RawPayload<'_>) -> Result<Payload, Error> {
        let body = raw.body;
        Ok(match raw.kind {
            PayloadType::SA => Payload::Sa(SaPayload::parse(body)?),
            PayloadType::KE => Payload::Ke(KePayload::parse(body)?),
            PayloadType::IDI => Payload::IdI(Identity::parse(body)?),
            PayloadType::IDR => Payload::IdR(Identity::parse(body)?),
            PayloadType::CERT => Payload::Cert(CertPayload::parse(body)?),
            PayloadType::CERTREQ => Payload::CertReq(CertPayload::parse(body)?),
            PayloadType::AUTH => Payload::Auth(AuthPayload::parse(body)?),
            PayloadType::NONCE => Payload::Nonce(parse_nonce(body)?),
            PayloadType::NOTIFY => Payload::Notify(NotifyPayload::parse(body)?),
            PayloadType::DELETE => Payload::Delete(DeletePayload::parse(body)?),
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsI(TsPayload::parse(body)?),
            PayloadType::TSR => Payload::TsR(TsPayload::parse(body)?),
            PayloadType::SK => Payload::Sk(SkPayload {
                first_payload: raw.next,
                body: body.to_vec(),
            }),
            PayloadType::CP => Payload::Cp(CpPayload::parse(body)?),
            PayloadType::EAP => Payload::Eap(body.to_vec()),
            PayloadType::SKF => Payload::Skf(SkfPayload::parse(raw.next, body)?),
            PayloadType::PS => Payload::Ps(body.to_vec()),
            // RFC 7296 §2.5: reject the whole message if an unknown payload is critical.
            kind if raw.critical => return Err(Error::UnsupportedCriticalPayload(kind)),
            kind => Payload::Unknown {
                kind,
                critical: false,
                body: body.to_vec(),
            },
        })
    }

    /// Appends this payload (generic header and body) with the given Next Payload field; for
    /// SK/SKF `next` is ignored and their first inner payload type is written instead.
    pub fn emit(&self, next: PayloadType, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        let (next, critical) = match self {
            Payload::Sk(sk) => (sk.first_payload, false),
            Payload::Skf(skf) => (skf.first_payload, false),
            Payload::Unknown { kind, critical, .. } => {
                if kind.is_known() || *kind == PayloadType::NONE {
                    return Err(Error::Unrepresentable);
                }
                (next, *critical)
            }
            _ => (next, false),
        };
        // RFC 7296 §3.2: Next Payload, C + RESERVED, Payload Length (patched below).
        out.extend_from_slice(&[next.0, if critical { CRITICAL } else { 0 }, 0, 0]);
        match self {
            Payload::Sa(p) => p.emit(out)?,
            Payload::Ke(p) => p.emit(out),
            Payload::IdI(p) | Payload::IdR(p) => p.emit(out)?,
            Payload::Cert(p) | Payload::CertReq(p) => p.emit(out),
            Payload::Auth(p) => p.emit(out),
            Payload::Nonce(n) => {
                check_nonce(n)?;
                out.extend_from_slice(n);
            }
            Payload::Notify(p) => p.emit(out),
            Payload::Delete(p) => p.emit(out)?,
            Payload::TsI(p) | Payload::TsR(p) => p.emit(out)?,
            Payload::Sk(p) => out.extend_from_slice(&p.body),
            Payload::Cp(p) => p.emit(out)?,
            Payload::Skf(p) => p.emit(out)?,
            Payload::VendorId(b)
            | Payload::Eap(b)
            | Payload::Ps(b)
            | Payload::Unknown { body: b, .. } => out.extend_from_slice(b),
        }
        patch_len16(out, start)
    }
}

/// RFC 7296 §3.9: Nonce Data is 16..=256 octets.
fn check_nonce(n: &[u8]) -> Result<(), Error> {
    if (NONCE_LEN_MIN..=NONCE_LEN_MAX).contains(&n.len()) {
        Ok(())
    } else {
        Err(Error::BadNonceLength(n.len()))
    }
}

fn parse_nonce(body: &[u8]) -> Result<Vec<u8>, Error> {
    check_nonce(body)?;
    Ok(body.to_vec())
}

/// One payload as it sits in the input, before typing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPayload<'a> {
    /// Its type: the Next Payload field of whatever preceded it.
    pub kind: PayloadType,
    /// Its own Next Payload field (for SK/SKF: the first inner payload type).
    pub next: PayloadType,
    /// The critical bit.
    pub critical: bool,
    /// Where the whole payload (generic header included) sits in the walked buffer.
    pub range: Range<usize>,
    /// Everything after the generic header.
    pub body: &'a [u8],
}

/// Walks a payload chain by Next Payload (RFC 7296 §3.2) without copying or typing.
///
/// Yields `Err` once and then stops if a length lies, more than [`MAX_PAYLOADS`] payloads come,
/// bytes are left after the last payload, or anything follows an SK/SKF payload (which ends the
/// chain: its Next Payload field names the first *inner* payload, RFC 7296 §3.14).
#[derive(Clone, Debug)]
pub struct PayloadIter<'a> {
    buf: &'a [u8],
    pos: usize,
    next: PayloadType,
    count: usize,
    after_encrypted: bool,
    done: bool,
}

impl<'a> PayloadIter<'a> {
    /// Walks `buf[start..]` (which must end exactly with the chain) from a first payload of
    /// type `first`. Ranges are offsets into `buf`, so a whole message can be passed with
    /// `start = HEADER_LEN`.
    pub fn new(buf: &'a [u8], start: usize, first: PayloadType) -> Self {
        PayloadIter {
            buf,
            pos: start,
            next: first,
            count: 0,
            after_encrypted: false,
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<RawPayload<'a>>, Error> {
        let rest = self.buf.get(self.pos..).ok_or(Error::Truncated)?;
        if self.next == PayloadType::NONE {
            return match (rest.is_empty(), self.after_encrypted) {
                (true, _) => Ok(None),
                (false, true) => Err(Error::MisplacedEncrypted),
                (false, false) => Err(Error::BadLength(Part::Message)),
            };
        }
        if self.count >= MAX_PAYLOADS {
            return Err(Error::TooMany(Part::Payload));
        }
        let mut r = Reader::new(rest);
        let next = PayloadType(r.u8()?);
        let critical = r.u8()? & CRITICAL != 0;
        let len = r.u16()?;
        let body = r.sub(len, GENERIC_HEADER_LEN, Error::BadLength(Part::Payload))?;
        let kind = self.next;
        let start = self.pos;
        self.pos += usize::from(len);
        self.count += 1;
        if kind.is_encrypted() {
            self.next = PayloadType::NONE;
            self.after_encrypted = true;
        } else {
            self.next = next;
        }
        Ok(Some(RawPayload {
            kind,
            next,
            critical,
            range: start..self.pos,
            body,
        }))
    }
}

impl<'a> Iterator for PayloadIter<'a> {
    type Item = Result<RawPayload<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl core::iter::FusedIterator for PayloadIter<'_> {}
