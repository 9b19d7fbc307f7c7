//! IKEv2 message codec (RFC 7296 §3, RFC 7383 §2.5), in the smoltcp style: `parse` functions
//! read byte slices into owned `Repr`-like structs, `emit` functions append to a caller's `Vec`.
//!
//! - [`Message::parse`] / [`Message::emit`]: a whole message (header and the outer payload chain).
//! - [`parse_chain`] / [`emit_chain`]: a bare payload chain, e.g. the decrypted content of an SK
//!   payload (after the crypto layer has removed IV, padding, Pad Length and ICV).
//! - [`PayloadIter`]: zero-copy walk over a chain, giving each payload's raw bytes and offsets
//!   (AUTH needs the received IDi/IDr body bytes as they were sent, RFC 7296 §2.15).
//! - [`locate_encrypted`]: where the SK/SKF payload sits in a message, for the AEAD associated
//!   data (RFC 5282 §5.1) and the in-place encryption of an emitted message.
//!
//! Nothing from the network can make this module panic, and everything is bounded: a message is
//! at most [`MAX_MESSAGE_LEN`] bytes, and the number of payloads, proposals, transforms,
//! attributes and selectors is capped ([`MAX_PAYLOADS`] and friends). `emit` checks the same rules
//! as `parse`, so anything it accepts parses back to an equal value.
//!
//! Unknown payload types (RFC 7296 §2.5, §3.2): with the critical bit clear they are kept as
//! [`Payload::Unknown`] (so that re-emission is byte-exact and callers can just ignore them);
//! with the critical bit set, parsing fails with [`Error::UnsupportedCriticalPayload`].
//!
//! Typical receive path: [`Header::parse`] first (it only needs 28 bytes, and its fields are
//! what any error answer is built from), then [`Message::parse`]; on error,
//! [`Error::to_notify`] gives the Notify to answer with, if any.

mod cp;
mod error;
mod header;
mod id;
mod macros;
mod message;
mod notify;
mod payload;
mod reader;
mod sa;
mod sk;
mod ts;

#[cfg(test)]
mod tests;

pub use cp::{CfgAttribute, CfgType, CpPayload, cfg_attr};
pub use error::{Error, Part};
pub use header::{ExchangeType, Flags, HEADER_LEN, Header, HeaderInfo};
pub use id::{AuthMethod, AuthPayload, CertEncoding, CertPayload, Identity, KePayload, id_type};
pub use message::{Message, emit_chain, parse_chain};
pub use notify::{DeletePayload, NotifyPayload, NotifyType, PuzzleData, Spi};
pub use payload::{Payload, PayloadIter, PayloadType, RawPayload};
pub use sa::{
    ATTR_KEY_LENGTH, Attribute, Proposal, ProtocolId, SaPayload, Transform, TransformType, dh,
    encr, esn, integ, prf,
};
pub use sk::{EncryptedLayout, SkPayload, SkfPayload, locate_encrypted};
pub use ts::{TrafficSelector, TsPayload, TsRange, ts_type};

/// Largest IKE message accepted or emitted: the TCP encapsulation's 16-bit Length (RFC 9329 §3).
pub const MAX_MESSAGE_LEN: usize = 65535;
/// Most payloads in one chain (outer or decrypted); real messages carry a dozen or so.
pub const MAX_PAYLOADS: usize = 64;
/// Most proposals in one SA payload (RFC 7296 §3.3).
pub const MAX_PROPOSALS: usize = 64;
/// Most transforms in one proposal (RFC 7296 §3.3.1).
pub const MAX_TRANSFORMS: usize = 64;
/// Most attributes in one transform (RFC 7296 §3.3.5).
pub const MAX_ATTRIBUTES: usize = 64;
/// Most traffic selectors in one TS payload (RFC 7296 §3.13).
pub const MAX_SELECTORS: usize = 64;
/// Most configuration attributes in one CP payload (RFC 7296 §3.15.1).
pub const MAX_CFG_ATTRIBUTES: usize = 64;
/// Nonce Data length bounds (RFC 7296 §3.9).
pub const NONCE_LEN_MIN: usize = 16;
/// Nonce Data length bounds (RFC 7296 §3.9).
pub const NONCE_LEN_MAX: usize = 256;
