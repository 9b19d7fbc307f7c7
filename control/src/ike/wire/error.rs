//! The codec's one error type, and the Notify a receiver answers it with (RFC 7296 §2.5).

use core::fmt;

use super::{NotifyPayload, NotifyType, PayloadType, ProtocolId, Spi};

/// Which structure a length or count error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// The message as a whole (header Length, bytes after the last payload).
    Message,
    /// A payload's generic header (RFC 7296 §3.2).
    Payload,
    /// A proposal substructure (§3.3.1).
    Proposal,
    /// A transform substructure (§3.3.2).
    Transform,
    /// A transform attribute (§3.3.5).
    Attribute,
    /// An individual traffic selector (§3.13.1).
    TrafficSelector,
    /// A configuration attribute (§3.15.1).
    CfgAttribute,
    /// SPIs of a Delete payload (§3.11).
    Spi,
}

/// Why a message, chain or payload could not be parsed (or, for `emit`, represented).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The input ends inside a fixed-size field.
    Truncated,
    /// More than [`super::MAX_MESSAGE_LEN`] bytes, or (emit) a length that does not fit its field.
    TooLong,
    /// The header's Length field is not the size of the message (RFC 7296 §3.1).
    LengthMismatch {
        /// The Length field.
        header: u32,
        /// The bytes actually given.
        actual: usize,
    },
    /// A length field inside the message is below its minimum, runs past its enclosing
    /// structure, or leaves bytes over.
    BadLength(Part),
    /// A count field (Num Transforms, Number of TSs, Num of SPIs) disagrees with the content,
    /// or is zero where the RFC asks for one or more.
    BadCount(Part),
    /// More items than this codec accepts (see the `MAX_*` constants).
    TooMany(Part),
    /// Major version above 2: answer INVALID_MAJOR_VERSION (RFC 7296 §2.5).
    UnsupportedMajorVersion(u8),
    /// Major version below 2 (IKEv1 or garbage): not an IKEv2 message, drop it.
    ObsoleteMajorVersion(u8),
    /// An unknown payload type with the critical bit set (RFC 7296 §2.5): answer
    /// UNSUPPORTED_CRITICAL_PAYLOAD with this type as data.
    UnsupportedCriticalPayload(PayloadType),
    /// Last Substruc is neither 0 on the last nor 2/3 on the others (RFC 7296 §3.3.1, §3.3.2).
    BadSubstructure,
    /// A transform attribute is malformed: cut short, Key Length in TLV form or twice.
    BadAttribute,
    /// An SPI Size this codec does not accept (0, 4 or 8; Delete: 0 or 4).
    BadSpiSize(u8),
    /// Nonce Data outside 16..=256 bytes (RFC 7296 §3.9); the length found.
    BadNonceLength(usize),
    /// Identification Data of the wrong size for its type (RFC 7296 §3.5).
    BadIdentification,
    /// A traffic selector of type 7 or 8 whose length does not match (RFC 7296 §3.13.1).
    BadTrafficSelector,
    /// An SK/SKF payload that is not last, or one inside a decrypted chain (RFC 7296 §3.14).
    MisplacedEncrypted,
    /// SKF Fragment Number zero or above Total Fragments (RFC 7383 §2.5).
    BadFragmentNumber,
    /// Emit only: a value the wire cannot carry (an `Unknown` payload with a known or zero
    /// type, an attribute type above 15 bits or equal to Key Length, ...).
    Unrepresentable,
}

impl Error {
    /// The Notify type a responder answers this error with, or `None` when the message should
    /// just be dropped (not IKEv2; or an emit-side error that parsing never returns).
    ///
    /// Whether to answer at all is the session's call: RFC 7296 §2.21 limits error answers
    /// to requests, and unauthenticated ones to the IKE_SA_INIT exchange.
    pub fn notify_type(&self) -> Option<NotifyType> {
        match self {
            Error::UnsupportedMajorVersion(_) => Some(NotifyType::INVALID_MAJOR_VERSION),
            Error::UnsupportedCriticalPayload(_) => Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD),
            Error::ObsoleteMajorVersion(_) | Error::Unrepresentable => None,
            _ => Some(NotifyType::INVALID_SYNTAX),
        }
    }

    /// The Notify payload to answer with (RFC 7296 §3.10.1): no SPI; for
    /// UNSUPPORTED_CRITICAL_PAYLOAD the data is the one-octet payload type.
    pub fn to_notify(&self) -> Option<NotifyPayload> {
        let kind = self.notify_type()?;
        let data = match self {
            Error::UnsupportedCriticalPayload(t) => vec![t.0],
            _ => Vec::new(),
        };
        Some(NotifyPayload {
            protocol: ProtocolId(0),
            spi: Spi::None,
            kind,
            data,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("input ends inside a field"),
            Error::TooLong => f.write_str("message or length field too long"),
            Error::LengthMismatch { header, actual } => {
                write!(f, "header length {header} but message is {actual} bytes")
            }
            Error::BadLength(p) => write!(f, "bad length in {p:?}"),
            Error::BadCount(p) => write!(f, "count disagrees with content in {p:?}"),
            Error::TooMany(p) => write!(f, "too many items: {p:?}"),
            Error::UnsupportedMajorVersion(v) => write!(f, "unsupported major version {v}"),
            Error::ObsoleteMajorVersion(v) => write!(f, "obsolete major version {v}"),
            Error::UnsupportedCriticalPayload(t) => {
                write!(f, "unsupported critical payload type {}", t.0)
            }
            Error::BadSubstructure => f.write_str("bad Last Substruc value"),
            Error::BadAttribute => f.write_str("malformed transform attribute"),
            Error::BadSpiSize(n) => write!(f, "bad SPI size {n}"),
            Error::BadNonceLength(n) => write!(f, "nonce of {n} bytes"),
            Error::BadIdentification => f.write_str("identification data does not fit its type"),
            Error::BadTrafficSelector => f.write_str("malformed traffic selector"),
            Error::MisplacedEncrypted => f.write_str("encrypted payload not last, or nested"),
            Error::BadFragmentNumber => f.write_str("bad fragment number"),
            Error::Unrepresentable => f.write_str("value cannot be encoded"),
        }
    }
}

impl std::error::Error for Error {}
