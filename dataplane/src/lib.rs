//! The iketcp packet path: ESP (RFC 4303) in RFC 9329 TCP streams, run by pinned per-core
//! workers. The types most users need are re-exported here; the modules hold the rest of the
//! public API (ports, transports, the stream codec), and everything else is private.
pub mod crypto;
pub mod port;
pub mod sa;
pub mod transport;
pub mod wire;
pub mod worker;

pub use crypto::{Backend, Keymat, Suite};
pub use port::{Medium, Packet, PacketPool, Port};
pub use sa::{InboundSa, Mode, OutboundSa, SaError, SaParams};
pub use transport::{CloseReason, ConnId, TcpRole, Transport};
pub use worker::handle::{
    Command, CommandError, Conn, DataplaneHandle, Direction, Event, IkeSaId, Lifetime,
    WorkerChannels, channels, gateway_channels,
};
pub use worker::spd::{Selectors, TrafficSelector};
pub use worker::stats::StatsSnapshot;
pub use worker::{Worker, WorkerConfig, spawn};
