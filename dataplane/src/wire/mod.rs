//! Wire formats of the packet path: views over byte buffers, no I/O.

pub mod esp;
pub mod frame;
pub mod ip;
pub(crate) mod mss;
