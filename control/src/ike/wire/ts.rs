//! Traffic Selector payloads (RFC 7296 §3.13).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::reader::{Reader, count_u8, patch_len16};
use super::{Error, MAX_SELECTORS, Part};

/// TS Type values (RFC 7296 §3.13.1).
pub mod ts_type {
    /// A range of IPv4 addresses.
    pub const IPV4_ADDR_RANGE: u8 = 7;
    /// A range of IPv6 addresses.
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

/// Selector header: TS Type, IP Protocol ID, Selector Length.
const TS_HEADER_LEN: usize = 4;
/// Full selector lengths for the two address-range types (header, ports, two addresses).
const TS_IPV4_LEN: usize = TS_HEADER_LEN + 4 + 2 * 4;
const TS_IPV6_LEN: usize = TS_HEADER_LEN + 4 + 2 * 16;

/// TSi or TSr payload (RFC 7296 §3.13).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TsPayload {
    /// The selectors (1..=[`MAX_SELECTORS`]); a packet matches if any one matches.
    pub selectors: Vec<TrafficSelector>,
}

/// The fields of TS types 7 and 8 (RFC 7296 §3.13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TsRange<A> {
    /// IP Protocol ID; 0 for any.
    pub ip_protocol: u8,
    /// Start Port (0 for any).
    pub start_port: u16,
    /// End Port (65535 for any).
    pub end_port: u16,
    /// Starting Address, inclusive.
    pub start_addr: A,
    /// Ending Address, inclusive.
    pub end_addr: A,
}

/// One traffic selector (RFC 7296 §3.13.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TrafficSelector {
    /// TS_IPV4_ADDR_RANGE.
    Ipv4(TsRange<Ipv4Addr>),
    /// TS_IPV6_ADDR_RANGE.
    Ipv6(TsRange<Ipv6Addr>),
    /// Any other TS Type, raw; emit refuses types 7 and 8 here.
    Other {
        /// TS Type.
        ts_type: u8,
        /// The octet after TS Type (IP Protocol ID for 7/8; type-specific otherwise).
        octet1: u8,
        /// Everything after Selector Length.
        data: Vec<u8>,
    },
}

impl TsPayload {
    /// Parses the body of a TSi/TSr payload.
    pub fn parse(body: &[u8]) -> Result<TsPayload, Error> {
        let mut r = Reader::new(body);
        let n = usize::from(r.u8()?);
        let _reserved = r.take(3)?;
        if n == 0 {
            // RFC 7296 §3.13: "One or more individual Traffic Selectors".
            return Err(Error::BadCount(Part::TrafficSelector));
        }
        if n > MAX_SELECTORS {
            return Err(Error::TooMany(Part::TrafficSelector));
        }
        let mut selectors = Vec::with_capacity(n);
        for _ in 0..n {
            let ts_type = r.u8().map_err(|_| Error::BadCount(Part::TrafficSelector))?;
            let octet1 = r.u8()?;
            let len = r.u16()?;
            let inner = r.sub(len, TS_HEADER_LEN, Error::BadLength(Part::TrafficSelector))?;
            selectors.push(TrafficSelector::parse(
                ts_type,
                octet1,
                usize::from(len),
                inner,
            )?);
        }
        if !r.is_empty() {
            return Err(Error::BadCount(Part::TrafficSelector));
        }
        Ok(TsPayload { selectors })
    }

    /// Appends the body of a TSi/TSr payload.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let n = count_u8(self.selectors.len(), MAX_SELECTORS, Part::TrafficSelector)?;
        if n == 0 {
            return Err(Error::BadCount(Part::TrafficSelector));
        }
        out.extend_from_slice(&[n, 0, 0, 0]);
        for ts in &self.selectors {
            ts.emit(out)?;
        }
        Ok(())
    }
}

impl TrafficSelector {
    /// `inner` is what follows the 4-byte selector header; `len` the Selector Length.
    fn parse(ts_type: u8, octet1: u8, len: usize, inner: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(inner);
        Ok(match ts_type {
            ts_type::IPV4_ADDR_RANGE | ts_type::IPV6_ADDR_RANGE => {
                let v4 = ts_type == ts_type::IPV4_ADDR_RANGE;
                if len != if v4 { TS_IPV4_LEN } else { TS_IPV6_LEN } {
                    return Err(Error::BadTrafficSelector);
                }
                let start_port = r.u16()?;
                let end_port = r.u16()?;
                if v4 {
                    TrafficSelector::Ipv4(TsRange {
                        ip_protocol: octet1,
                        start_port,
                        end_port,
                        start_addr: Ipv4Addr::from(r.array::<4>()?),
                        end_addr: Ipv4Addr::from(r.array::<4>()?),
                    })
                } else {
                    TrafficSelector::Ipv6(TsRange {
                        ip_protocol: octet1,
                        start_port,
                        end_port,
                        start_addr: Ipv6Addr::from(r.array::<16>()?),
                        end_addr: Ipv6Addr::from(r.array::<16>()?),
                    })
                }
            }
            ts_type => TrafficSelector::Other {
                ts_type,
                octet1,
                data: r.rest().to_vec(),
            },
        })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        match self {
            TrafficSelector::Ipv4(t) => {
                out.extend_from_slice(&[ts_type::IPV4_ADDR_RANGE, t.ip_protocol, 0, 0]);
                out.extend_from_slice(&t.start_port.to_be_bytes());
                out.extend_from_slice(&t.end_port.to_be_bytes());
                out.extend_from_slice(&t.start_addr.octets());
                out.extend_from_slice(&t.end_addr.octets());
            }
            TrafficSelector::Ipv6(t) => {
                out.extend_from_slice(&[ts_type::IPV6_ADDR_RANGE, t.ip_protocol, 0, 0]);
                out.extend_from_slice(&t.start_port.to_be_bytes());
                out.extend_from_slice(&t.end_port.to_be_bytes());
                out.extend_from_slice(&t.start_addr.octets());
                out.extend_from_slice(&t.end_addr.octets());
            }
            TrafficSelector::Other {
                ts_type,
                octet1,
                data,
            } => {
                if matches!(
                    *ts_type,
                    ts_type::IPV4_ADDR_RANGE | ts_type::IPV6_ADDR_RANGE
                ) {
                    return Err(Error::Unrepresentable);
                }
                out.extend_from_slice(&[*ts_type, *octet1, 0, 0]);
                out.extend_from_slice(data);
            }
        }
        patch_len16(out, start)
    }
}
