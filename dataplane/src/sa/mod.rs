//! Security associations of the packet path: ESP encapsulation and decapsulation (RFC 4303) in place
//! in a caller's buffer, sequence numbers, the anti-replay window.
//!
//! An SA has exactly one owner (the worker of its connection), so nothing here is shared or locked.

mod inbound;
mod outbound;
pub mod replay;
mod transport;

use core::fmt;
use std::net::IpAddr;

pub use inbound::{DecapError, Decapped, InboundSa};
pub use outbound::{EncapError, OutboundSa};
pub use transport::TRANSPORT_DECAP_HEADROOM;

use crate::crypto::{Backend, CryptoError, Keymat};
use crate::wire::esp::MIN_SPI;
use replay::{BadWindowSize, DEFAULT_WINDOW};

/// ESP mode (RFC 4301 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The whole inner IP packet is protected; Next Header 4 or 41.
    Tunnel,
    /// Only the upper-layer payload is protected; the receiver rebuilds the IP header from these
    /// addresses (the SA's traffic endpoints as seen by the receiver: `src` = peer, `dst` = us).
    Transport {
        /// Source address of the rebuilt packet (the peer's inner address).
        src: IpAddr,
        /// Destination address of the rebuilt packet (our inner address).
        dst: IpAddr,
        /// Recompute TCP/UDP checksums after rebuilding: needed when a NAT rewrote the addresses the
        /// sender used (RFC 3948 §3.1.2, which RFC 9329 §6.5 keeps for TCP encapsulation).
        fix_checksums: bool,
    },
}

/// Everything needed to build one direction of an ESP SA.
#[derive(Clone, Debug)]
pub struct SaParams {
    /// SPI (never 0, RFC 9329 §3.2; 1-255 reserved, RFC 4303 §2.1).
    pub spi: u32,
    /// Key and salt, cut from KEYMAT.
    pub keymat: Keymat,
    /// Which AEAD implementation to run.
    pub backend: Backend,
    /// Extended (64-bit) sequence numbers (RFC 4303 §2.2.1).
    pub esn: bool,
    /// Tunnel or transport.
    pub mode: Mode,
    /// Anti-replay window size in packets (inbound only).
    pub replay_window: u32,
}

impl SaParams {
    /// Parameters with the default replay window, tunnel mode and no ESN.
    pub fn new(spi: u32, keymat: Keymat, backend: Backend) -> Self {
        SaParams {
            spi,
            keymat,
            backend,
            esn: false,
            mode: Mode::Tunnel,
            replay_window: DEFAULT_WINDOW,
        }
    }
}

/// Why an SA could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaError {
    /// SPI 0 (RFC 9329 §3.2) or a reserved SPI 1-255 (RFC 4303 §2.1).
    ReservedSpi(u32),
    /// Key material does not fit the suite.
    Crypto(CryptoError),
    /// Replay window size out of range.
    Window(BadWindowSize),
}

impl fmt::Display for SaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaError::ReservedSpi(s) => write!(f, "SPI {s} is reserved"),
            SaError::Crypto(e) => write!(f, "{e}"),
            SaError::Window(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SaError {}

fn check_spi(spi: u32) -> Result<(), SaError> {
    // RFC 9329 §3.2: a zero SPI would be read as the non-ESP marker; RFC 4303 §2.1 reserves 1-255.
    if spi < MIN_SPI {
        return Err(SaError::ReservedSpi(spi));
    }
    Ok(())
}

/// Associated data: SPI ‖ seq (8 bytes), or SPI ‖ seq-high ‖ seq-low with ESN (12 bytes)
/// (RFC 4106 §5, RFC 7634 §2.1, RFC 4303 §2.2.1).
#[inline]
fn aad(spi: u32, seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        a[4..].copy_from_slice(&seq.to_be_bytes());
        (a, 12)
    } else {
        // Non-ESN sequence numbers never exceed u32::MAX (the sender stops there).
        a[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        (a, 8)
    }
}

#[cfg(test)]
mod tests;
