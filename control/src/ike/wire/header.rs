//! The IKE header (RFC 7296 §3.1).

use super::macros::registry;
use super::reader::Reader;
use super::{Error, PayloadType};

/// Size of the fixed IKE header.
pub const HEADER_LEN: usize = 28;

registry! {
    /// Exchange Type (RFC 7296 §3.1); other values are kept as numbers.
    pub struct ExchangeType(u8) {
        IKE_SA_INIT = 34,
        IKE_AUTH = 35,
        CREATE_CHILD_SA = 36,
        INFORMATIONAL = 37,
    }
}

/// The header flags (RFC 7296 §3.1); the X bits are ignored on receipt and sent as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// I: sent by the original initiator of the IKE SA.
    pub initiator: bool,
    /// V: sender speaks a higher major version (IKEv2 sends it clear and ignores it).
    pub version: bool,
    /// R: this message is a response.
    pub response: bool,
}

impl Flags {
    const I: u8 = 0x08;
    const V: u8 = 0x10;
    const R: u8 = 0x20;

    /// Reads the flags octet, dropping the X bits.
    pub fn from_byte(b: u8) -> Self {
        Flags {
            initiator: b & Self::I != 0,
            version: b & Self::V != 0,
            response: b & Self::R != 0,
        }
    }

    /// The flags octet.
    pub fn to_byte(self) -> u8 {
        (if self.initiator { Self::I } else { 0 })
            | (if self.version { Self::V } else { 0 })
            | (if self.response { Self::R } else { 0 })
    }
}

/// The header fields that are not derived from the payloads. Next Payload and Length are
/// computed by [`super::Message::emit`]; the version is always sent as 2.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// IKE SA Initiator's SPI.
    pub spi_i: u64,
    /// IKE SA Responder's SPI (zero in the first IKE_SA_INIT message).
    pub spi_r: u64,
    /// Exchange Type.
    pub exchange: ExchangeType,
    /// I, V, R flags.
    pub flags: Flags,
    /// Message ID.
    pub message_id: u32,
}

/// A parsed header with the fields that [`Header`] leaves to the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeaderInfo {
    /// The header fields proper.
    pub header: Header,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// Major version (4 bits).
    pub major_version: u8,
    /// Minor version (4 bits); ignored on receipt (RFC 7296 §3.1).
    pub minor_version: u8,
    /// The Length field: total message size claimed by the sender.
    pub length: u32,
}

impl Header {
    /// Reads the first 28 bytes of `bytes` (RFC 7296 §3.1). Only a short input is an error:
    /// the version and length are checked by [`HeaderInfo::check`], so that a caller can still
    /// learn the SPIs and Message ID of a message it must answer with an error.
    pub fn parse(bytes: &[u8]) -> Result<HeaderInfo, Error> {
        let mut r = Reader::new(bytes);
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = PayloadType(r.u8()?);
        let version = r.u8()?;
        let exchange = ExchangeType(r.u8()?);
        let flags = Flags::from_byte(r.u8()?);
        let message_id = r.u32()?;
        let length = r.u32()?;
        Ok(HeaderInfo {
            header: Header {
                spi_i,
                spi_r,
                exchange,
                flags,
                message_id,
            },
            next_payload,
            major_version: version >> 4,
            minor_version: version & 0x0f,
            length,
        })
    }

    /// Appends the 28-byte header with version 2.0 and the given Next Payload and Length.
    pub fn emit(&self, next_payload: PayloadType, length: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(next_payload.0);
        out.push(0x20); // RFC 7296 §3.1: MjVer 2, MnVer 0
        out.push(self.exchange.0);
        out.push(self.flags.to_byte());
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    }
}

impl HeaderInfo {
    /// The major version must be 2 (RFC 7296 §3.1, §2.5): higher is
    /// `UnsupportedMajorVersion` (answer INVALID_MAJOR_VERSION), lower is not IKEv2 at all.
    pub fn check_version(&self) -> Result<(), Error> {
        match self.major_version {
            2 => Ok(()),
            v if v > 2 => Err(Error::UnsupportedMajorVersion(v)),
            v => Err(Error::ObsoleteMajorVersion(v)),
        }
    }

    /// Version, and the Length field against the `actual` size of the message.
    pub fn check(&self, actual: usize) -> Result<(), Error> {
        self.check_version()?;
        if usize::try_from(self.length).ok() != Some(actual) {
            return Err(Error::LengthMismatch {
                header: self.length,
                actual,
            });
        }
        Ok(())
    }
}
