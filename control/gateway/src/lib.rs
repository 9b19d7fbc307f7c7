//! `iketcp gateway`: the deployable site-to-site gateway. A TOML file configures it
//! ([`config`]); it creates the TUN device and its routes ([`net`]), runs the data-plane workers
//! and the control driver ([`daemon`]), answers `iketcp status`, `up`, `down`, `rekey` and
//! `reload` on a Unix socket ([`ctl`]) and serves Prometheus metrics ([`metrics`]).

pub mod config;
pub mod ctl;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod status;
