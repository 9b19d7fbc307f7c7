//! Notify and Delete payloads (RFC 7296 §3.10, §3.11), and the SPI field they share with
//! proposals (§3.3.1).

use super::macros::registry;
use super::reader::Reader;
use super::{Error, Part, ProtocolId};

registry! {
    /// Notify Message Type (RFC 7296 §3.10.1; RFC 4555 §6; RFC 7383 §2.3; RFC 7427 §4;
    /// RFC 8019 §8.1).
    /// Below 16384: errors; from 16384 on: status.
    pub struct NotifyType(u16) {
        UNSUPPORTED_CRITICAL_PAYLOAD = 1,
        INVALID_IKE_SPI = 4,
        INVALID_MAJOR_VERSION = 5,
        INVALID_SYNTAX = 7,
        INVALID_MESSAGE_ID = 9,
        INVALID_SPI = 11,
        NO_PROPOSAL_CHOSEN = 14,
        INVALID_KE_PAYLOAD = 17,
        AUTHENTICATION_FAILED = 24,
        SINGLE_PAIR_REQUIRED = 34,
        NO_ADDITIONAL_SAS = 35,
        INTERNAL_ADDRESS_FAILURE = 36,
        FAILED_CP_REQUIRED = 37,
        TS_UNACCEPTABLE = 38,
        INVALID_SELECTORS = 39,
        /// RFC 4555 (MOBIKE).
        UNACCEPTABLE_ADDRESSES = 40,
        /// RFC 4555 (MOBIKE).
        UNEXPECTED_NAT_DETECTED = 41,
        TEMPORARY_FAILURE = 43,
        CHILD_SA_NOT_FOUND = 44,
        INITIAL_CONTACT = 16384,
        SET_WINDOW_SIZE = 16385,
        ADDITIONAL_TS_POSSIBLE = 16386,
        IPCOMP_SUPPORTED = 16387,
        NAT_DETECTION_SOURCE_IP = 16388,
        NAT_DETECTION_DESTINATION_IP = 16389,
        COOKIE = 16390,
        USE_TRANSPORT_MODE = 16391,
        HTTP_CERT_LOOKUP_SUPPORTED = 16392,
        REKEY_SA = 16393,
        ESP_TFC_PADDING_NOT_SUPPORTED = 16394,
        NON_FIRST_FRAGMENTS_ALSO = 16395,
        /// RFC 4555 (MOBIKE).
        MOBIKE_SUPPORTED = 16396,
        /// RFC 4555 (MOBIKE).
        ADDITIONAL_IP4_ADDRESS = 16397,
        /// RFC 4555 (MOBIKE).
        ADDITIONAL_IP6_ADDRESS = 16398,
        /// RFC 4555 (MOBIKE).
        NO_ADDITIONAL_ADDRESSES = 16399,
        /// RFC 4555 (MOBIKE).
        UPDATE_SA_ADDRESSES = 16400,
        /// RFC 4555 (MOBIKE).
        COOKIE2 = 16401,
        /// RFC 4555 (MOBIKE).
        NO_NATS_ALLOWED = 16402,
        /// RFC 7383 §2.3.
        IKEV2_FRAGMENTATION_SUPPORTED = 16430,
        /// RFC 7427 §4.
        SIGNATURE_HASH_ALGORITHMS = 16431,
        /// RFC 8019 §8.1: a puzzle to solve, with the COOKIE it is computed over.
        PUZZLE = 16434,
    }
}

impl NotifyType {
    /// RFC 7296 §3.10.1: types 0-16383 report errors.
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

/// The Notification Data of a PUZZLE notification (RFC 8019 §8.1): the PRF to solve the
/// puzzle with and the difficulty (the least number of trailing zero bits, ZBC; 0 lets the
/// initiator choose, RFC 8019 §7.1.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PuzzleData {
    /// PRF transform ID (RFC 7296 §3.3.2, Transform Type 2).
    pub prf: u16,
    /// Difficulty level: the least number of trailing zero bits of each PRF result.
    pub difficulty: u8,
}

impl PuzzleData {
    /// Size of the data: PRF (2 octets) and Difficulty (1 octet).
    pub const LEN: usize = 3;

    /// Reads PUZZLE Notification Data; anything but exactly 3 octets is malformed.
    pub fn parse(data: &[u8]) -> Result<PuzzleData, Error> {
        let mut r = Reader::new(data);
        let prf = r.u16()?;
        let difficulty = r.u8()?;
        if !r.is_empty() {
            return Err(Error::BadLength(Part::Payload));
        }
        Ok(PuzzleData { prf, difficulty })
    }

    /// The 3 octets of Notification Data.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let [a, b] = self.prf.to_be_bytes();
        [a, b, self.difficulty]
    }
}

/// An SPI field whose size is given by a preceding SPI Size octet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Spi {
    /// SPI Size 0.
    #[default]
    None,
    /// SPI Size 4: AH or ESP.
    U32(u32),
    /// SPI Size 8: IKE (proposals of an IKE SA rekey).
    U64(u64),
}

impl Spi {
    /// The SPI Size octet.
    pub fn size(self) -> u8 {
        match self {
            Spi::None => 0,
            Spi::U32(_) => 4,
            Spi::U64(_) => 8,
        }
    }

    /// Reads an SPI of `size` bytes; sizes other than 0, 4, 8 are `BadSpiSize`.
    pub(crate) fn parse(size: u8, r: &mut Reader<'_>) -> Result<Spi, Error> {
        match size {
            0 => Ok(Spi::None),
            4 => Ok(Spi::U32(r.u32()?)),
            8 => Ok(Spi::U64(r.u64()?)),
            n => Err(Error::BadSpiSize(n)),
        }
    }

    pub(crate) fn emit(self, out: &mut Vec<u8>) {
        match self {
            Spi::None => {}
            Spi::U32(v) => out.extend_from_slice(&v.to_be_bytes()),
            Spi::U64(v) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
}

/// Notify payload (RFC 7296 §3.10).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NotifyPayload {
    /// Protocol of the SA the SPI names; 0 when there is no SPI.
    pub protocol: ProtocolId,
    /// The SPI, if the notification concerns a Child SA (or, in old peers, the IKE SA).
    pub spi: Spi,
    /// Notify Message Type.
    pub kind: NotifyType,
    /// Notification Data.
    pub data: Vec<u8>,
}

impl NotifyPayload {
    /// A notification about the IKE SA: protocol 0, no SPI.
    pub fn new(kind: NotifyType, data: Vec<u8>) -> Self {
        NotifyPayload {
            protocol: ProtocolId(0),
            spi: Spi::None,
            kind,
            data,
        }
    }

    /// Parses the body of a Notify payload.
    pub fn parse(body: &[u8]) -> Result<NotifyPayload, Error> {
        let mut r = Reader::new(body);
        // RFC 7296 §3.10: Protocol ID, SPI Size, Notify Message Type, SPI, data.
        let protocol = ProtocolId(r.u8()?);
        let spi_size = r.u8()?;
        let kind = NotifyType(r.u16()?);
        let spi = Spi::parse(spi_size, &mut r)?;
        Ok(NotifyPayload {
            protocol,
            spi,
            kind,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the body of a Notify payload.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.protocol.0, self.spi.size()]);
        out.extend_from_slice(&self.kind.0.to_be_bytes());
        self.spi.emit(out);
        out.extend_from_slice(&self.data);
    }
}

/// Delete payload (RFC 7296 §3.11). The SPI Size is derived: 0 when `spis` is empty (the IKE
/// SA, whose SPIs are in the header), 4 otherwise (AH/ESP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeletePayload {
    /// IKE, AH or ESP.
    pub protocol: ProtocolId,
    /// The inbound SPIs of the Child SAs to delete; empty to delete the IKE SA.
    pub spis: Vec<u32>,
}

impl DeletePayload {
    /// Parses the body of a Delete payload.
    pub fn parse(body: &[u8]) -> Result<DeletePayload, Error> {
        let mut r = Reader::new(body);
        let protocol = ProtocolId(r.u8()?);
        let spi_size = r.u8()?;
        let num = usize::from(r.u16()?);
        let spis = match spi_size {
            // The IKE SA: no SPIs may follow.
            0 if num == 0 => Vec::new(),
            0 => return Err(Error::BadCount(Part::Spi)),
            4 => {
                // Num of SPIs must account for exactly the bytes that are there.
                if num.checked_mul(4) != Some(r.remaining()) {
                    return Err(Error::BadCount(Part::Spi));
                }
                let mut spis = Vec::with_capacity(num);
                while !r.is_empty() {
                    spis.push(r.u32()?);
                }
                spis
            }
            n => return Err(Error::BadSpiSize(n)),
        };
        if !r.is_empty() {
            return Err(Error::BadLength(Part::Spi));
        }
        Ok(DeletePayload { protocol, spis })
    }

    /// Appends the body of a Delete payload.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let num = u16::try_from(self.spis.len()).map_err(|_| Error::TooLong)?;
        let size = if self.spis.is_empty() { 0 } else { 4 };
        out.extend_from_slice(&[self.protocol.0, size]);
        out.extend_from_slice(&num.to_be_bytes());
        for spi in &self.spis {
            out.extend_from_slice(&spi.to_be_bytes());
        }
        Ok(())
    }
}
