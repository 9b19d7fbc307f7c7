//! The gateway configuration file (TOML).
