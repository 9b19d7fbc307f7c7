//! The iketcp packet path.
pub mod crypto;
pub mod sa;
pub mod wire;
