//! Security Association payload: proposals, transforms, attributes (RFC 7296 §3.3).

use super::macros::registry;
use super::reader::{Reader, count_u8, patch_len16};
use super::{Error, MAX_ATTRIBUTES, MAX_PROPOSALS, MAX_TRANSFORMS, Part, Spi};

registry! {
    /// Protocol ID (RFC 7296 §3.3.1; also in Notify §3.10 and Delete §3.11).
    pub struct ProtocolId(u8) {
        IKE = 1,
        AH = 2,
        ESP = 3,
    }
}

registry! {
    /// Transform Type (RFC 7296 §3.3.2).
    pub struct TransformType(u8) {
        /// Encryption Algorithm (ENCR).
        ENCR = 1,
        /// Pseudorandom Function (PRF).
        PRF = 2,
        /// Integrity Algorithm (INTEG).
        INTEG = 3,
        /// Diffie-Hellman group (D-H).
        DH = 4,
        /// Extended Sequence Numbers (ESN).
        ESN = 5,
    }
}

/// Transform IDs for [`TransformType::ENCR`] (RFC 7296 §3.3.2, RFC 5282, RFC 7634).
pub mod encr {
    /// ENCR_3DES.
    pub const DES3: u16 = 3;
    /// ENCR_NULL.
    pub const NULL: u16 = 11;
    /// ENCR_AES_CBC (Key Length attribute required).
    pub const AES_CBC: u16 = 12;
    /// ENCR_AES_CTR.
    pub const AES_CTR: u16 = 13;
    /// ENCR_AES_GCM_8 (RFC 5282).
    pub const AES_GCM_8: u16 = 18;
    /// ENCR_AES_GCM_12 (RFC 5282).
    pub const AES_GCM_12: u16 = 19;
    /// ENCR_AES_GCM_16 (RFC 5282).
    pub const AES_GCM_16: u16 = 20;
    /// ENCR_CHACHA20_POLY1305 (RFC 7634).
    pub const CHACHA20_POLY1305: u16 = 28;
}

/// Transform IDs for [`TransformType::PRF`] (RFC 7296 §3.3.2, RFC 4868).
pub mod prf {
    /// PRF_HMAC_MD5.
    pub const HMAC_MD5: u16 = 1;
    /// PRF_HMAC_SHA1.
    pub const HMAC_SHA1: u16 = 2;
    /// PRF_AES128_XCBC.
    pub const AES128_XCBC: u16 = 4;
    /// PRF_HMAC_SHA2_256.
    pub const HMAC_SHA2_256: u16 = 5;
    /// PRF_HMAC_SHA2_384.
    pub const HMAC_SHA2_384: u16 = 6;
    /// PRF_HMAC_SHA2_512.
    pub const HMAC_SHA2_512: u16 = 7;
}

/// Transform IDs for [`TransformType::INTEG`] (RFC 7296 §3.3.2, RFC 4868).
pub mod integ {
    /// NONE (with AEAD ciphers).
    pub const NONE: u16 = 0;
    /// AUTH_HMAC_MD5_96.
    pub const HMAC_MD5_96: u16 = 1;
    /// AUTH_HMAC_SHA1_96.
    pub const HMAC_SHA1_96: u16 = 2;
    /// AUTH_AES_XCBC_96.
    pub const AES_XCBC_96: u16 = 5;
    /// AUTH_HMAC_SHA2_256_128.
    pub const HMAC_SHA2_256_128: u16 = 12;
    /// AUTH_HMAC_SHA2_384_192.
    pub const HMAC_SHA2_384_192: u16 = 13;
    /// AUTH_HMAC_SHA2_512_256.
    pub const HMAC_SHA2_512_256: u16 = 14;
}

/// Transform IDs for [`TransformType::DH`] (RFC 7296 §3.3.2, RFC 5903, RFC 8031).
pub mod dh {
    /// NONE.
    pub const NONE: u16 = 0;
    /// 2048-bit MODP Group.
    pub const MODP_2048: u16 = 14;
    /// 3072-bit MODP Group.
    pub const MODP_3072: u16 = 15;
    /// 256-bit random ECP group (P-256).
    pub const ECP_256: u16 = 19;
    /// 384-bit random ECP group (P-384).
    pub const ECP_384: u16 = 20;
    /// 521-bit random ECP group (P-521).
    pub const ECP_521: u16 = 21;
    /// Curve25519 (RFC 8031).
    pub const CURVE25519: u16 = 31;
    /// Curve448 (RFC 8031).
    pub const CURVE448: u16 = 32;
}

/// Transform IDs for [`TransformType::ESN`] (RFC 7296 §3.3.2).
pub mod esn {
    /// No Extended Sequence Numbers.
    pub const NO: u16 = 0;
    /// Extended Sequence Numbers.
    pub const YES: u16 = 1;
}

/// Key Length attribute type (RFC 7296 §3.3.5); always TV format.
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Attribute Format bit (RFC 7296 §3.3.5): set for TV, clear for TLV.
const AF_TV: u16 = 0x8000;
/// Proposal and transform substructure header size.
const SUBSTRUCT_HEADER_LEN: usize = 4;
/// RFC 7296 §3.3.1: Last Substruc of a proposal with more to follow.
const MORE_PROPOSALS: u8 = 2;
/// RFC 7296 §3.3.2: Last Substruc of a transform with more to follow.
const MORE_TRANSFORMS: u8 = 3;

/// SA payload (RFC 7296 §3.3): one or more proposals, most preferred first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SaPayload {
    /// The proposals (1..=[`MAX_PROPOSALS`]).
    pub proposals: Vec<Proposal>,
}

/// Proposal substructure (RFC 7296 §3.3.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proposal {
    /// Proposal Num (1, 2, ... in an offer; the chosen one's number in an answer).
    pub number: u8,
    /// IKE, AH or ESP.
    pub protocol: ProtocolId,
    /// The sender's SPI: none in IKE_SA_INIT, 8 bytes for an IKE rekey, 4 for AH/ESP.
    pub spi: Spi,
    /// The transforms (1..=[`MAX_TRANSFORMS`]).
    pub transforms: Vec<Transform>,
}

/// Transform substructure (RFC 7296 §3.3.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transform {
    /// Transform Type.
    pub kind: TransformType,
    /// Transform ID (see [`encr`], [`prf`], [`integ`], [`dh`], [`esn`]).
    pub id: u16,
    /// The Key Length attribute in bits, if present (emitted first).
    pub key_length: Option<u16>,
    /// Other attributes, kept as received (none are defined besides Key Length).
    pub attributes: Vec<Attribute>,
}

/// A transform attribute other than Key Length (RFC 7296 §3.3.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// Type/Value format (AF = 1), two-byte value.
    Tv {
        /// Attribute Type (15 bits, not [`ATTR_KEY_LENGTH`]).
        kind: u16,
        /// Value.
        value: u16,
    },
    /// Type/Length/Value format (AF = 0).
    Tlv {
        /// Attribute Type (15 bits, not [`ATTR_KEY_LENGTH`]).
        kind: u16,
        /// Value (at most 65535 bytes).
        value: Vec<u8>,
    },
}

impl Transform {
    /// A transform without attributes.
    pub fn new(kind: TransformType, id: u16) -> Self {
        Transform {
            kind,
            id,
            key_length: None,
            attributes: Vec::new(),
        }
    }

    /// A transform with a Key Length attribute (e.g. AES: 128, 192, 256).
    pub fn with_key_length(kind: TransformType, id: u16, bits: u16) -> Self {
        Transform {
            key_length: Some(bits),
            ..Transform::new(kind, id)
        }
    }
}

impl SaPayload {
    /// Parses the body of an SA payload (after the generic header).
    pub fn parse(body: &[u8]) -> Result<SaPayload, Error> {
        let mut r = Reader::new(body);
        let mut proposals = Vec::new();
        loop {
            if proposals.len() >= MAX_PROPOSALS {
                return Err(Error::TooMany(Part::Proposal));
            }
            // RFC 7296 §3.3.1: Last Substruc, RESERVED, Proposal Length.
            let last = r.u8()?;
            let _reserved = r.u8()?;
            let len = r.u16()?;
            let inner = r.sub(
                len,
                SUBSTRUCT_HEADER_LEN + 4,
                Error::BadLength(Part::Proposal),
            )?;
            proposals.push(Proposal::parse(inner)?);
            match (last, r.is_empty()) {
                (0, true) => break,
                (MORE_PROPOSALS, false) => continue,
                // "Unnecessary" per the RFC, but a mismatch means the lengths are not to be trusted.
                _ => return Err(Error::BadSubstructure),
            }
        }
        Ok(SaPayload { proposals })
    }

    /// Appends the body of an SA payload.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let n = self.proposals.len();
        if n == 0 {
            return Err(Error::BadCount(Part::Proposal));
        }
        count_u8(n, MAX_PROPOSALS, Part::Proposal)?;
        for (i, p) in self.proposals.iter().enumerate() {
            let last = if i + 1 == n { 0 } else { MORE_PROPOSALS };
            p.emit(last, out)?;
        }
        Ok(())
    }
}

impl Proposal {
    /// Parses what follows the proposal's 4-byte header.
    fn parse(inner: &[u8]) -> Result<Proposal, Error> {
        let mut r = Reader::new(inner);
        let number = r.u8()?;
        let protocol = ProtocolId(r.u8()?);
        let spi_size = r.u8()?;
        let num_transforms = r.u8()?;
        let spi = Spi::parse(spi_size, &mut r)?;
        let n = usize::from(num_transforms);
        if n == 0 {
            // RFC 7296 §3.3.1: "One or more transform substructures".
            return Err(Error::BadCount(Part::Transform));
        }
        if n > MAX_TRANSFORMS {
            return Err(Error::TooMany(Part::Transform));
        }
        let mut transforms = Vec::with_capacity(n);
        for i in 0..n {
            // RFC 7296 §3.3.2: Last Substruc, RESERVED, Transform Length.
            let last = r.u8().map_err(|_| Error::BadCount(Part::Transform))?;
            let _reserved = r.u8()?;
            let len = r.u16()?;
            let expected = if i + 1 == n { 0 } else { MORE_TRANSFORMS };
            if last != expected {
                return Err(Error::BadSubstructure);
            }
            let t = r.sub(
                len,
                SUBSTRUCT_HEADER_LEN + 4,
                Error::BadLength(Part::Transform),
            )?;
            transforms.push(Transform::parse(t)?);
        }
        if !r.is_empty() {
            // Bytes after the announced transforms: Num Transforms and the lengths disagree.
            return Err(Error::BadCount(Part::Transform));
        }
        Ok(Proposal {
            number,
            protocol,
            spi,
            transforms,
        })
    }

    fn emit(&self, last: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        let n = self.transforms.len();
        if n == 0 {
            return Err(Error::BadCount(Part::Transform));
        }
        let num = count_u8(n, MAX_TRANSFORMS, Part::Transform)?;
        let start = out.len();
        out.extend_from_slice(&[last, 0, 0, 0]);
        out.extend_from_slice(&[self.number, self.protocol.0, self.spi.size(), num]);
        self.spi.emit(out);
        for (i, t) in self.transforms.iter().enumerate() {
            let last = if i + 1 == n { 0 } else { MORE_TRANSFORMS };
            t.emit(last, out)?;
        }
        patch_len16(out, start)
    }
}

impl Transform {
    /// Parses what follows the transform's 4-byte header.
    fn parse(inner: &[u8]) -> Result<Transform, Error> {
        let mut r = Reader::new(inner);
        let kind = TransformType(r.u8()?);
        let _reserved = r.u8()?;
        let id = r.u16()?;
        let mut key_length = None;
        let mut attributes = Vec::new();
        let mut count = 0;
        while !r.is_empty() {
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(Error::TooMany(Part::Attribute));
            }
            // RFC 7296 §3.3.5: AF bit + Attribute Type, then a value (TV) or a length (TLV).
            let word = r.u16().map_err(|_| Error::BadAttribute)?;
            let second = r.u16().map_err(|_| Error::BadAttribute)?;
            let attr_kind = word & !AF_TV;
            if word & AF_TV != 0 {
                if attr_kind == ATTR_KEY_LENGTH {
                    if key_length.replace(second).is_some() {
                        return Err(Error::BadAttribute);
                    }
                } else {
                    attributes.push(Attribute::Tv {
                        kind: attr_kind,
                        value: second,
                    });
                }
            } else {
                // Key Length is a fixed-length attribute: TLV form is not allowed for it.
                if attr_kind == ATTR_KEY_LENGTH {
                    return Err(Error::BadAttribute);
                }
                let value = r
                    .take(usize::from(second))
                    .map_err(|_| Error::BadAttribute)?;
                attributes.push(Attribute::Tlv {
                    kind: attr_kind,
                    value: value.to_vec(),
                });
            }
        }
        Ok(Transform {
            kind,
            id,
            key_length,
            attributes,
        })
    }

    fn emit(&self, last: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        let n = self.attributes.len() + usize::from(self.key_length.is_some());
        if n > MAX_ATTRIBUTES {
            return Err(Error::TooMany(Part::Attribute));
        }
        let start = out.len();
        out.extend_from_slice(&[last, 0, 0, 0, self.kind.0, 0]);
        out.extend_from_slice(&self.id.to_be_bytes());
        if let Some(bits) = self.key_length {
            out.extend_from_slice(&(AF_TV | ATTR_KEY_LENGTH).to_be_bytes());
            out.extend_from_slice(&bits.to_be_bytes());
        }
        for a in &self.attributes {
            a.emit(out)?;
        }
        patch_len16(out, start)
    }
}

impl Attribute {
    fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let kind = match self {
            Attribute::Tv { kind, .. } | Attribute::Tlv { kind, .. } => *kind,
        };
        if kind & AF_TV != 0 || kind == ATTR_KEY_LENGTH {
            return Err(Error::Unrepresentable);
        }
        match self {
            Attribute::Tv { value, .. } => {
                out.extend_from_slice(&(AF_TV | kind).to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
            }
            Attribute::Tlv { value, .. } => {
                let len = u16::try_from(value.len()).map_err(|_| Error::TooLong)?;
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(value);
            }
        }
        Ok(())
    }
}
