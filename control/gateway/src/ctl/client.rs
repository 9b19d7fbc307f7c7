//! The `iketcp` side of the control socket: one request, one response.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Command, ErrorReply, MAX_LINE, Outcome, PROTOCOL_VERSION, Reply, Request, Response};

/// Why a control request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached or the exchange broke off.
    Io(io::Error),
    /// The daemon's answer was not a response.
    Malformed(serde_json::Error),
    /// The answer was longer than [`MAX_LINE`].
    TooLong,
    /// The daemon speaks another protocol version.
    Version(u32),
    /// The daemon refused or failed the command.
    Refused(ErrorReply),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "control socket: {e}"),
            ClientError::Malformed(e) => write!(f, "malformed answer from the daemon: {e}"),
            ClientError::TooLong => {
                write!(f, "answer from the daemon longer than {MAX_LINE} bytes")
            }
            ClientError::Version(v) => write!(
                f,
                "the daemon speaks control protocol {v}, this binary {PROTOCOL_VERSION}"
            ),
            ClientError::Refused(e) => f.write_str(&e.message),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends `command` to the daemon at `socket` and returns its reply.
///
/// # Errors
/// See [`ClientError`].
pub fn call(socket: &Path, command: Command, timeout: Duration) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(socket).map_err(ClientError::Io)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(ClientError::Io)?;
    let mut line = serde_json::to_vec(&Request {
        version: PROTOCOL_VERSION,
        command,
    })
    .map_err(ClientError::Malformed)?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(ClientError::Io)?;
    let mut answer = Vec::new();
    let n = BufReader::new((&stream).take(MAX_LINE as u64 + 1))
        .read_until(b'\n', &mut answer)
        .map_err(ClientError::Io)?;
    if n > MAX_LINE {
        return Err(ClientError::TooLong);
    }
    let r: Response = serde_json::from_slice(&answer).map_err(ClientError::Malformed)?;
    if r.version != PROTOCOL_VERSION {
        return Err(ClientError::Version(r.version));
    }
    match r.outcome {
        Outcome::Ok(reply) => Ok(reply),
        Outcome::Error(e) => Err(ClientError::Refused(e)),
    }
}
