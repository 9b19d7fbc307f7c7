//! IKEv2 control plane (RFC 7296) over RFC 9329 TCP encapsulation. In progress: the wire codec
//! and the cryptographic core come first; sessions, the driver and `iketcp demo` follow.

pub mod driver;
pub mod ike;
