//! `iketcp gateway`: the deployable site-to-site gateway. A TOML file configures it
//! ([`config`]); it creates the TUN device and its routes ([`net`]), runs the data-plane workers
//! and the control driver ([`daemon`]), answers `iketcp status`, `up`, `down`, `rekey` and
//! `reload` on a Unix socket ([`ctl`]) and serves Prometheus metrics ([`metrics`]). The main
//! types are re-exported here.

pub mod config;
pub mod ctl;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod status;

pub use config::{ConfigError, ConfigErrorKind, ConnectionConfig, GatewayConfig, load, parse};
pub use ctl::client::{ClientError, call};
pub use ctl::{Command, ErrorKind, PROTOCOL_VERSION, Reply, Request, Response};
pub use daemon::{GatewayError, Options, run};
pub use status::{StatusReport, render};
