//! IKEv2: the message codec (`wire`) and the cryptographic core (`crypto`).

pub mod crypto;
pub mod session;
pub mod wire;
