//! Configuration payload (RFC 7296 §3.15).

use super::macros::registry;
use super::reader::Reader;
use super::{Error, MAX_CFG_ATTRIBUTES, Part};

registry! {
    /// CFG Type (RFC 7296 §3.15).
    pub struct CfgType(u8) {
        REQUEST = 1,
        REPLY = 2,
        SET = 3,
        ACK = 4,
    }
}

/// Configuration Attribute Types (RFC 7296 §3.15.1).
pub mod cfg_attr {
    /// 0 or 4 octets.
    pub const INTERNAL_IP4_ADDRESS: u16 = 1;
    /// 0 or 4 octets.
    pub const INTERNAL_IP4_NETMASK: u16 = 2;
    /// 0 or 4 octets.
    pub const INTERNAL_IP4_DNS: u16 = 3;
    /// 0 or 4 octets.
    pub const INTERNAL_IP4_NBNS: u16 = 4;
    /// 0 or 4 octets.
    pub const INTERNAL_IP4_DHCP: u16 = 6;
    /// 0 or more octets of printable ASCII.
    pub const APPLICATION_VERSION: u16 = 7;
    /// 0 or 17 octets (address and prefix length).
    pub const INTERNAL_IP6_ADDRESS: u16 = 8;
    /// 0 or 16 octets.
    pub const INTERNAL_IP6_DNS: u16 = 10;
    /// 0 or 16 octets.
    pub const INTERNAL_IP6_DHCP: u16 = 12;
    /// 0 or 8 octets (address and netmask).
    pub const INTERNAL_IP4_SUBNET: u16 = 13;
    /// A multiple of 2 octets.
    pub const SUPPORTED_ATTRIBUTES: u16 = 14;
    /// 17 octets (address and prefix length).
    pub const INTERNAL_IP6_SUBNET: u16 = 15;
}

/// The R bit in front of the attribute type (RFC 7296 §3.15.1): sent as zero, ignored.
const RESERVED_BIT: u16 = 0x8000;

/// Configuration payload (RFC 7296 §3.15).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CpPayload {
    /// CFG Type.
    pub cfg_type: CfgType,
    /// Attributes (0..=[`MAX_CFG_ATTRIBUTES`]); values are left raw: their meaning, and
    /// ignoring unknown ones (§3.15.1), is the session's business.
    pub attributes: Vec<CfgAttribute>,
}

/// One configuration attribute (RFC 7296 §3.15.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CfgAttribute {
    /// Attribute Type (15 bits; see [`cfg_attr`]).
    pub kind: u16,
    /// Value (0..=65535 octets).
    pub value: Vec<u8>,
}

impl CpPayload {
    /// Parses the body of a CP payload.
    pub fn parse(body: &[u8]) -> Result<CpPayload, Error> {
        let mut r = Reader::new(body);
        let cfg_type = CfgType(r.u8()?);
        let _reserved = r.take(3)?;
        let mut attributes = Vec::new();
        while !r.is_empty() {
            if attributes.len() >= MAX_CFG_ATTRIBUTES {
                return Err(Error::TooMany(Part::CfgAttribute));
            }
            let bad = Error::BadLength(Part::CfgAttribute);
            let kind = r.u16().map_err(|_| bad)? & !RESERVED_BIT;
            // RFC 7296 §3.15.1: Length counts the value only.
            let len = r.u16().map_err(|_| bad)?;
            let value = r.take(usize::from(len)).map_err(|_| bad)?;
            attributes.push(CfgAttribute {
                kind,
                value: value.to_vec(),
            });
        }
        Ok(CpPayload {
            cfg_type,
            attributes,
        })
    }

    /// Appends the body of a CP payload.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.attributes.len() > MAX_CFG_ATTRIBUTES {
            return Err(Error::TooMany(Part::CfgAttribute));
        }
        out.extend_from_slice(&[self.cfg_type.0, 0, 0, 0]);
        for a in &self.attributes {
            if a.kind & RESERVED_BIT != 0 {
                return Err(Error::Unrepresentable);
            }
            let len = u16::try_from(a.value.len()).map_err(|_| Error::TooLong)?;
            out.extend_from_slice(&a.kind.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&a.value);
        }
        Ok(())
    }
}
