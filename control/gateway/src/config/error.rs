//! What can be wrong with a configuration file, and where.

use core::fmt;
use core::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration error: the file, the 1-based line and column of the offending value (or key,
/// or table), and what is wrong. `Display` gives `FILE:LINE:COL: message`, the form editors and
/// compilers use; an error without a position (the file could not be read) has line and column 0
/// and displays as `FILE: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file (as given to `load` or `parse`).
    pub file: PathBuf,
    /// 1-based line; 0 when the error has no position in the file.
    pub line: usize,
    /// 1-based column in characters; 0 when the error has no position in the file.
    pub column: usize,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

/// What is wrong. Values are quoted as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The configuration file could not be read.
    Io {
        /// The operating system's message.
        error: String,
    },
    /// Not TOML, or TOML that does not fit the schema: an unknown key (named in the message), a
    /// missing required key, a value of the wrong type.
    Syntax {
        /// The TOML parser's message.
        message: String,
    },
    /// Not an IP address (or `address:port` where a socket address is expected).
    BadAddress {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// Not an `address/prefix` (or a bad prefix length, or host bits set where a network is
    /// expected).
    BadCidr {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// A traffic selector whose `[protocol/port]` part is wrong.
    BadTrafficSelector {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// An identity (`local_id`, `remote_id`) that cannot be used.
    BadIdentity {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// A proposal string with an unknown token or an unusable combination.
    BadProposal {
        /// The proposal as written.
        proposal: String,
        /// Why, naming the token.
        reason: String,
    },
    /// Not a duration (`"30s"`, `"5m"`, `"4h"`, `"1d"` or an integer of seconds).
    BadDuration {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// Not a size or count (an integer, or `"10k"`, `"500M"`, `"1G"`).
    BadSize {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// A connection with neither `psk` nor `psk_file`.
    MissingSecret {
        /// The connection's name.
        connection: String,
    },
    /// A file holding a secret (a `psk_file`, or the configuration file itself when it holds an
    /// inline `psk`) that other users can read or write.
    SecretPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// A `psk_file` that cannot be read or is empty.
    SecretFile {
        /// The file, resolved against the configuration file's directory.
        path: PathBuf,
        /// The operating system's message, or what is wrong with the contents.
        error: String,
    },
    /// A second connection with a name already used.
    DuplicateName {
        /// The name.
        name: String,
        /// Line of the first connection with this name.
        first_line: usize,
    },
    /// Any other value out of range or combination of keys that does not work.
    Invalid {
        /// What is wrong, naming the key.
        what: String,
    },
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { error } => write!(f, "cannot read the configuration: {error}"),
            Self::Syntax { message } => f.write_str(message.trim_end()),
            Self::BadAddress { value, reason } => {
                write!(f, "bad address {value:?}: {reason}")
            }
            Self::BadCidr { value, reason } => write!(f, "bad CIDR {value:?}: {reason}"),
            Self::BadTrafficSelector { value, reason } => {
                write!(f, "bad traffic selector {value:?}: {reason}")
            }
            Self::BadIdentity { value, reason } => write!(f, "bad identity {value:?}: {reason}"),
            Self::BadProposal { proposal, reason } => {
                write!(f, "bad proposal {proposal:?}: {reason}")
            }
            Self::BadDuration { value, reason } => write!(f, "bad duration {value:?}: {reason}"),
            Self::BadSize { value, reason } => write!(f, "bad size {value:?}: {reason}"),
            Self::MissingSecret { connection } => write!(
                f,
                "connection {connection:?} has no secret: set psk_file = \"path\" (or psk)"
            ),
            Self::SecretPermissions { path, mode } => write!(
                f,
                "{} holds a secret but has mode {mode:04o}: other users may read it \
                 (chmod 600 {})",
                path.display(),
                path.display()
            ),
            Self::SecretFile { path, error } => {
                write!(f, "psk_file {}: {error}", path.display())
            }
            Self::DuplicateName { name, first_line } => write!(
                f,
                "duplicate connection name {name:?} (first used on line {first_line})"
            ),
            Self::Invalid { what } => f.write_str(what),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.kind)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.kind
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Maps byte offsets of one file's text to lines and columns, and builds errors for it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub path: &'a Path,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`; past the end means the end.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let bytes = self.text.as_bytes();
        let before = &bytes[..offset.min(bytes.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        // Count characters, not bytes: skip UTF-8 continuation bytes.
        let column = 1 + before[line_start..]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count();
        (line, column)
    }

    /// An error at the start of `span`.
    pub fn error(&self, span: &Range<usize>, kind: ConfigErrorKind) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            kind,
        }
    }

    /// [`ConfigErrorKind::Invalid`] at the start of `span`.
    pub fn invalid(&self, span: &Range<usize>, what: impl Into<String>) -> ConfigError {
        self.error(span, ConfigErrorKind::Invalid { what: what.into() })
    }

    /// Line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }
}

/// An error that is not about a place in the file.
pub(super) fn io_error(path: &Path, error: &std::io::Error) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        kind: ConfigErrorKind::Io {
            error: error.to_string(),
        },
    }
}
