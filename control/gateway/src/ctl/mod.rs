//! The control socket: a Unix stream socket (mode 0600, root's or the daemon user's only) that
//! carries one JSON request line and one JSON response line per connection. Versioned: a
//! request names [`PROTOCOL_VERSION`]; the daemon refuses any other with
//! [`ErrorKind::UnsupportedVersion`], so an old `iketcp` binary never misreads a new daemon.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::status::StatusReport;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request or response line, newline included. A status of thousands of IKE SAs fits;
/// anything longer is refused rather than buffered without bound.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest request line the daemon reads (requests are small).
pub const MAX_REQUEST: usize = 4096;

/// What the operator asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Every connection with its IKE and Child SAs, and the data plane's counters.
    Status,
    /// Start a connection: add it back if it was taken down; an initiator dials.
    Up {
        /// The connection's name in the config.
        name: String,
    },
    /// Stop a connection: Delete its IKE SAs; it stays down until `up` or a reload.
    Down {
        /// The connection's name.
        name: String,
    },
    /// Rekey a connection's Child SAs (or its IKE SAs with `ike`, or the one Child SA whose
    /// inbound SPI is `spi`).
    Rekey {
        /// The connection's name.
        name: String,
        /// The IKE SAs instead of the Child SAs.
        #[serde(default)]
        ike: bool,
        /// Only the Child SA with this inbound SPI.
        #[serde(default)]
        spi: Option<u32>,
    },
    /// A liveness check (empty INFORMATIONAL) on each of a connection's IKE SAs.
    Liveness {
        /// The connection's name.
        name: String,
    },
    /// One more Child SA on each of a connection's IKE SAs.
    AddChild {
        /// The connection's name.
        name: String,
    },
    /// Delete one Child SA (by its inbound SPI); the IKE SA stays.
    DeleteChild {
        /// The connection's name.
        name: String,
        /// Its inbound SPI.
        spi: u32,
    },
    /// Read the config file again and apply the difference.
    Reload,
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// What to do.
    pub command: Command,
}

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The daemon's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// Success with its reply, or an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done.
    Ok(Reply),
    /// Not done, and why.
    Error(ErrorReply),
}

/// What a successful command returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// For `status`.
    Status(Box<StatusReport>),
    /// For `up`, `down`, `rekey`: what was done, for the operator.
    Done {
        /// One line.
        message: String,
    },
    /// For `reload`: connection names by what happened to them.
    Reloaded(ReloadSummary),
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    /// New connections, started.
    pub added: Vec<String>,
    /// Connections no longer in the file, deleted.
    pub removed: Vec<String>,
    /// Connections whose settings changed: deleted and started again with the new ones.
    pub replaced: Vec<String>,
    /// Connections left alone.
    pub unchanged: Vec<String>,
}

/// Why a command was not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The class of error.
    pub kind: ErrorKind,
    /// For the operator.
    pub message: String,
}

/// Classes of control errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request named another protocol version.
    UnsupportedVersion,
    /// The request line was not a valid request.
    BadRequest,
    /// No connection of that name.
    UnknownConnection,
    /// The new config file is invalid; nothing was changed.
    Config,
    /// The daemon could not take the request in time.
    Busy,
    /// The daemon failed to do it.
    Internal,
}

impl Response {
    /// A success.
    pub fn ok(reply: Reply) -> Self {
        Response {
            version: PROTOCOL_VERSION,
            outcome: Outcome::Ok(reply),
        }
    }

    /// A failure.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response {
            version: PROTOCOL_VERSION,
            outcome: Outcome::Error(ErrorReply {
                kind,
                message: message.into(),
            }),
        }
    }
}

/// Parses a request line; the error response says what is wrong.
pub fn parse_request(line: &[u8]) -> Result<Command, Response> {
    // The version first, so a future request shape still gets the right refusal.
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<u32>,
    }
    let v: Versioned = serde_json::from_slice(line)
        .map_err(|e| Response::error(ErrorKind::BadRequest, format!("not a request: {e}")))?;
    match v.version {
        Some(PROTOCOL_VERSION) => {}
        Some(other) => {
            return Err(Response::error(
                ErrorKind::UnsupportedVersion,
                format!(
                    "protocol version {other} is not supported (this daemon speaks {PROTOCOL_VERSION})"
                ),
            ));
        }
        None => return Err(Response::error(ErrorKind::BadRequest, "no version")),
    }
    serde_json::from_slice::<Request>(line)
        .map(|r| r.command)
        .map_err(|e| Response::error(ErrorKind::BadRequest, format!("bad request: {e}")))
}

#[cfg(test)]
mod tests;
