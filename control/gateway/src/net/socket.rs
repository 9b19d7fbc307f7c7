//! The NETLINK_ROUTE socket: sending one request and collecting its answer.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// How long one receive may wait for the kernel before the call gives up with
/// [`NetlinkError::Timeout`].
const RECV_TIMEOUT_SECS: libc::time_t = 2;

/// Receive buffer for one datagram. The kernel sizes dump datagrams to fit the reader's buffer
/// up to 32 KiB; twice that leaves room, and a longer datagram is reported, not cut.
const RECV_BUF: usize = 64 * 1024;

/// Why a netlink call failed.
#[derive(Debug)]
pub enum NetlinkError {
    /// The socket itself failed (open, bind, send or receive).
    Io(io::Error),
    /// The kernel refused the request `op` with this errno (positive, e.g. `libc::ENODEV`).
    Kernel { op: &'static str, errno: i32 },
    /// No link has this name.
    NoSuchLink(String),
    /// The kernel did not answer `op` within the receive timeout.
    Timeout { op: &'static str },
    /// The kernel's answer to `op` could not be parsed or made no sense.
    Malformed { op: &'static str },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetlinkError::Io(e) => write!(f, "netlink socket: {e}"),
            NetlinkError::Kernel { op, errno } => {
                // io::Error renders an errno as the C library's strerror text plus the number.
                let text = io::Error::from_raw_os_error(*errno);
                write!(f, "{op}: the kernel refused: {text}")
            }
            NetlinkError::NoSuchLink(name) => write!(f, "no network link named {name:?}"),
            NetlinkError::Timeout { op } => write!(
                f,
                "{op}: no answer from the kernel within {RECV_TIMEOUT_SECS} s"
            ),
            NetlinkError::Malformed { op } => write!(f, "{op}: malformed answer from the kernel"),
        }
    }
}

impl std::error::Error for NetlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetlinkError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for NetlinkError {
    fn from(e: io::Error) -> Self {
        NetlinkError::Io(e)
    }
}

/// A synchronous rtnetlink client: one NETLINK_ROUTE socket, one request at a time.
///
/// Every request carries a fresh sequence number; answers with another number (late answers to
/// a request that timed out) are skipped. No call waits longer than the receive timeout (2 s)
/// for any one datagram.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.socket.as_raw_fd())
            .field("seq", &self.seq)
            .finish()
    }
}

impl Netlink {
    /// Opens and binds a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        set_recv_timeout(&socket)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends `message` with `flags` (besides `NLM_F_REQUEST`) and returns the kernel's answers.
    ///
    /// A dump (`NLM_F_DUMP` in `flags`) collects messages until `NLMSG_DONE`. Anything else is
    /// sent with `NLM_F_ACK` and collects messages until the acknowledgement. An error from the
    /// kernel becomes [`NetlinkError::Kernel`] with `op` in it.
    pub(super) fn request(
        &mut self,
        op: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let seq = self.send(message, flags | if dump { 0 } else { NLM_F_ACK })?;
        self.answers(op, seq, dump)
    }

    /// Sends `message` with `NLM_F_REQUEST | flags` and a fresh sequence number, which it returns.
    pub(super) fn send(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let sent = self.socket.send(&bytes, 0)?;
        if sent != bytes.len() {
            return Err(NetlinkError::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the netlink socket",
            )));
        }
        Ok(self.seq)
    }

    /// Receives the answers to request `seq` up to its acknowledgement or, for a `dump`, its
    /// `NLMSG_DONE`, skipping messages for other sequence numbers.
    pub(super) fn answers(
        &mut self,
        op: &'static str,
        seq: u32,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut answers = Vec::new();
        loop {
            self.recv_datagram(op)?;
            let mut rest = &self.buf[..];
            while !rest.is_empty() {
                let (len, parsed) = parse_one(rest, seq).ok_or(NetlinkError::Malformed { op })?;
                rest = rest.get(len..).unwrap_or_default();
                let Some(payload) = parsed else { continue };
                match payload {
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(answers),
                        None => {}
                        Some(code) => {
                            return Err(NetlinkError::Kernel {
                                op,
                                errno: code.get().saturating_abs(),
                            });
                        }
                    },
                    NetlinkPayload::Done(d) if d.code != 0 => {
                        return Err(NetlinkError::Kernel {
                            op,
                            errno: d.code.saturating_abs(),
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Noop => {}
                    _ => return Err(NetlinkError::Malformed { op }),
                }
            }
        }
    }

    /// Receives one datagram into `self.buf`, mapping a receive timeout to `Timeout`.
    fn recv_datagram(&mut self, op: &'static str) -> Result<(), NetlinkError> {
        loop {
            self.buf.clear();
            // MSG_TRUNC makes recv return the datagram's real length, so a cut one shows.
            match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => return Err(NetlinkError::Malformed { op }),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NetlinkError::Timeout { op });
                }
                Err(e) => return Err(NetlinkError::Io(e)),
            }
        }
    }
}

/// Parses the first netlink message in `bytes`: its length including alignment padding, and its
/// payload if its sequence number is `seq` (`None` for a message to skip). `None` overall when
/// the bytes are not a netlink message.
pub(super) fn parse_one(
    bytes: &[u8],
    seq: u32,
) -> Option<(usize, Option<NetlinkPayload<RouteNetlinkMessage>>)> {
    let buffer = NetlinkBuffer::new_checked(bytes).ok()?;
    let len = usize::try_from(buffer.length()).ok()?;
    let padded = len.checked_add(3)? & !3;
    if buffer.sequence_number() != seq {
        return Some((padded, None));
    }
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes.get(..len)?).ok()?;
    Some((padded, Some(message.payload)))
}

/// Sets SO_RCVTIMEO so that a receive returns EAGAIN instead of waiting forever.
fn set_recv_timeout(socket: &Socket) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT_SECS,
        tv_usec: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the fd is the socket's own, open for the socket's lifetime; `tv` is a valid
    // timeval that outlives the call, and `len` is its size, as SO_RCVTIMEO expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
