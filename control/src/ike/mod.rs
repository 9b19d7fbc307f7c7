//! IKEv2: the message codec (`wire`), the cryptographic core (`crypto`), sessions (`session`)
//! and the responder's stateless cookie and puzzle screen (`cookie`).

pub mod cookie;
pub mod crypto;
pub mod session;
pub mod wire;
