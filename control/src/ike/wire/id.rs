//! KE, ID, CERT, CERTREQ and AUTH payloads (RFC 7296 §3.4-§3.8).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Error;
use super::macros::registry;
use super::reader::Reader;

/// Key Exchange payload (RFC 7296 §3.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KePayload {
    /// Diffie-Hellman Group Num (see [`super::dh`]).
    pub group: u16,
    /// Key Exchange Data: the public value.
    pub data: Vec<u8>,
}

impl KePayload {
    /// Parses the body of a KE payload.
    pub fn parse(body: &[u8]) -> Result<KePayload, Error> {
        let mut r = Reader::new(body);
        let group = r.u16()?;
        let _reserved = r.u16()?;
        Ok(KePayload {
            group,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the body of a KE payload.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.data);
    }
}

/// ID Type values (RFC 7296 §3.5).
pub mod id_type {
    /// A single four-octet IPv4 address.
    pub const IPV4_ADDR: u8 = 1;
    /// A fully-qualified domain name.
    pub const FQDN: u8 = 2;
    /// An RFC 822 email address (or NAI with realm).
    pub const RFC822_ADDR: u8 = 3;
    /// A single sixteen-octet IPv6 address.
    pub const IPV6_ADDR: u8 = 5;
    /// DER-encoded ASN.1 X.500 Distinguished Name.
    pub const DER_ASN1_DN: u8 = 9;
    /// DER-encoded ASN.1 X.509 GeneralName.
    pub const DER_ASN1_GN: u8 = 10;
    /// An opaque octet string.
    pub const KEY_ID: u8 = 11;
}

/// Identification payload body, IDi or IDr (RFC 7296 §3.5). Strings are kept as bytes so
/// that re-emission is exact (AUTH signs these bytes, §2.15).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_FQDN (ASCII, no terminator).
    Fqdn(Vec<u8>),
    /// ID_RFC822_ADDR (UTF-8, no terminator).
    Rfc822(Vec<u8>),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_KEY_ID.
    KeyId(Vec<u8>),
    /// Any other ID Type (DER DN, GN, ...), raw. Emit refuses the types above.
    Other {
        /// ID Type.
        id_type: u8,
        /// Identification Data.
        data: Vec<u8>,
    },
}

impl Identity {
    /// Its ID Type octet.
    pub fn id_type(&self) -> u8 {
        match self {
            Identity::Ipv4(_) => id_type::IPV4_ADDR,
            Identity::Fqdn(_) => id_type::FQDN,
            Identity::Rfc822(_) => id_type::RFC822_ADDR,
            Identity::Ipv6(_) => id_type::IPV6_ADDR,
            Identity::KeyId(_) => id_type::KEY_ID,
            Identity::Other { id_type, .. } => *id_type,
        }
    }

    /// Parses the body of an IDi/IDr payload. RESERVED is ignored (RFC 7296 §3.5); note that
    /// AUTH covers the received bytes, so verify against [`super::RawPayload::body`].
    pub fn parse(body: &[u8]) -> Result<Identity, Error> {
        let mut r = Reader::new(body);
        let kind = r.u8()?;
        let _reserved = r.take(3)?;
        let data = r.rest();
        Ok(match kind {
            id_type::IPV4_ADDR => {
                let a: [u8; 4] = data.try_into().map_err(|_| Error::BadIdentification)?;
                Identity::Ipv4(Ipv4Addr::from(a))
            }
            id_type::IPV6_ADDR => {
                let a: [u8; 16] = data.try_into().map_err(|_| Error::BadIdentification)?;
                Identity::Ipv6(Ipv6Addr::from(a))
            }
            id_type::FQDN => Identity::Fqdn(data.to_vec()),
            id_type::RFC822_ADDR => Identity::Rfc822(data.to_vec()),
            id_type::KEY_ID => Identity::KeyId(data.to_vec()),
            id_type => Identity::Other {
                id_type,
                data: data.to_vec(),
            },
        })
    }

    /// Appends the body of an IDi/IDr payload (ID Type, RESERVED, data): the
    /// "RestOfInitIDPayload" that AUTH covers (RFC 7296 §2.15).
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(&[self.id_type(), 0, 0, 0]);
        match self {
            Identity::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Identity::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Identity::Fqdn(d) | Identity::Rfc822(d) | Identity::KeyId(d) => {
                out.extend_from_slice(d)
            }
            Identity::Other { id_type, data } => {
                // A typed variant exists for these; `Other` would not parse back equal.
                if matches!(
                    *id_type,
                    id_type::IPV4_ADDR
                        | id_type::FQDN
                        | id_type::RFC822_ADDR
                        | id_type::IPV6_ADDR
                        | id_type::KEY_ID
                ) {
                    return Err(Error::Unrepresentable);
                }
                out.extend_from_slice(data)
            }
        }
        Ok(())
    }
}

registry! {
    /// Certificate Encoding (RFC 7296 §3.6).
    pub struct CertEncoding(u8) {
        PKCS7_X509 = 1,
        PGP = 2,
        DNS_SIGNED_KEY = 3,
        X509_SIGNATURE = 4,
        KERBEROS_TOKEN = 6,
        CRL = 7,
        ARL = 8,
        SPKI = 9,
        X509_ATTRIBUTE = 10,
        RAW_RSA_KEY = 11,
        HASH_URL_X509 = 12,
        HASH_URL_X509_BUNDLE = 13,
    }
}

/// Certificate (§3.6) or Certificate Request (§3.7) payload, passed through as is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertPayload {
    /// Cert Encoding.
    pub encoding: CertEncoding,
    /// Certificate Data, or for CERTREQ the Certification Authority field.
    pub data: Vec<u8>,
}

impl CertPayload {
    /// Parses the body of a CERT or CERTREQ payload.
    pub fn parse(body: &[u8]) -> Result<CertPayload, Error> {
        let mut r = Reader::new(body);
        let encoding = CertEncoding(r.u8()?);
        Ok(CertPayload {
            encoding,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the body of a CERT or CERTREQ payload.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.encoding.0);
        out.extend_from_slice(&self.data);
    }
}

registry! {
    /// Auth Method (RFC 7296 §3.8; RFC 4754; RFC 7427).
    pub struct AuthMethod(u8) {
        RSA_SIG = 1,
        SHARED_KEY_MIC = 2,
        DSS_SIG = 3,
        /// RFC 4754.
        ECDSA_SHA256_P256 = 9,
        /// RFC 4754.
        ECDSA_SHA384_P384 = 10,
        /// RFC 4754.
        ECDSA_SHA512_P521 = 11,
        /// RFC 7427.
        DIGITAL_SIGNATURE = 14,
    }
}

/// Authentication payload (RFC 7296 §3.8).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthPayload {
    /// Auth Method.
    pub method: AuthMethod,
    /// Authentication Data.
    pub data: Vec<u8>,
}

impl AuthPayload {
    /// Parses the body of an AUTH payload.
    pub fn parse(body: &[u8]) -> Result<AuthPayload, Error> {
        let mut r = Reader::new(body);
        let method = AuthMethod(r.u8()?);
        let _reserved = r.take(3)?;
        Ok(AuthPayload {
            method,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the body of an AUTH payload.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.method.0, 0, 0, 0]);
        out.extend_from_slice(&self.data);
    }
}
