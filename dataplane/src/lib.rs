//! The iketcp packet path.
pub mod crypto;
pub mod port;
pub mod sa;
pub mod transport;
pub mod wire;
pub mod worker;
