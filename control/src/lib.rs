//! IKEv2 (RFC 7296) over RFC 9329 TCP encapsulation: the protocol (`ike`: message codec,
//! cryptographic core, cookies and puzzles, sans-IO sessions) and the `driver` that runs
//! sessions against the data plane. The types most users need are re-exported here; the rest of
//! the public API is in those modules, and everything else is private.

pub mod driver;
pub mod ike;
mod rng;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use rng::fuzzing;

pub use driver::{
    ChildSaInfo, ChildSaState, Core, Driver, DriverError, DriverEvent, Endpoint, EndpointId,
    EndpointInfo, EndpointRole, Failure, IkeSaInfo, IkeSaState, ReconnectProbe, Refusal,
    TimeLimits, Timers,
};
pub use ike::crypto::{DhGroup, EncrAlg, EspSuite, IkeSuite, IntegAlg, PrfAlg};
pub use ike::session::{Authenticator, Config, PskAuth, Session, SessionError, SpiPool};
pub use ike::wire::{Identity, NotifyType, TrafficSelector, TsRange};
