//! The few socket and epoll calls std does not offer (non-blocking connect, options before
//! `listen`, `accept4`, `SO_LINGER`, `MSG_NOSIGNAL`, epoll), as thin safe wrappers.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::{c_int, c_void};

/// A socket address in the layout the kernel reads.
enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawAddr {
    fn new(addr: &SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => RawAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                // The octets are already in network order; keep them as they lie in memory.
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => RawAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn as_ptr(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            RawAddr::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            RawAddr::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// Turns a -1 return into the thread's errno.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor a successful syscall just returned.
fn owned(fd: c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just returned by a successful socket/accept4/epoll_create1 call, so it is
    // open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
pub(super) fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall with integer arguments.
    owned(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    })
}

pub(super) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(addr);
    let (ptr, len) = raw.as_ptr();
    // SAFETY: `ptr`/`len` describe `raw`, a sockaddr of the matching family that outlives the
    // call; `fd` is a valid borrowed descriptor.
    check(unsafe { libc::bind(fd.as_raw_fd(), ptr, len) }).map(drop)
}

pub(super) fn listen(fd: BorrowedFd<'_>, backlog: u32) -> io::Result<()> {
    let backlog = c_int::try_from(backlog).unwrap_or(c_int::MAX);
    // SAFETY: plain syscall on a valid borrowed descriptor.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// Starts a connect; `Ok` when it completed or is in progress (EINPROGRESS).
pub(super) fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(addr);
    let (ptr, len) = raw.as_ptr();
    // SAFETY: as in `bind`.
    match check(unsafe { libc::connect(fd.as_raw_fd(), ptr, len) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Accepts one connection as a non-blocking, close-on-exec socket.
pub(super) fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed (we read the addresses later with getsockname /
    // getpeername); `fd` is a valid borrowed descriptor.
    owned(unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of `size_of::<T>()` bytes for the whole call; the
    // kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub(super) fn set_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

/// SO_LINGER {on, 0}: the next close sends RST instead of FIN.
pub(super) fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// One non-blocking send; MSG_NOSIGNAL so a dead peer gives EPIPE, never SIGPIPE.
pub(super) fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid readable slice for the whole call.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast::<c_void>(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    // A negative count is the error case; any other fits usize.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One non-blocking gathering send of several buffers (a burst of frames in one syscall).
pub(super) fn send_vectored(
    fd: BorrowedFd<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> io::Result<usize> {
    // At most IOV_MAX (1024 on Linux) buffers per call; the rest go next time.
    let n = bufs.len().min(1024);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with struct iovec on Unix; the kernel only reads
    // through the pointer, and `bufs` outlives the call.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = n;
    // SAFETY: `msg` points at `n` valid iovecs describing readable memory for the whole call.
    let r = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

pub(super) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an integer flag.
    owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

fn epoll_ctl(
    ep: BorrowedFd<'_>,
    op: c_int,
    fd: BorrowedFd<'_>,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the call (ignored by EPOLL_CTL_DEL); both
    // descriptors are valid borrowed descriptors.
    check(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) }).map(drop)
}

pub(super) fn epoll_add(
    ep: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    events: u32,
    token: u64,
) -> io::Result<()> {
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, events, token)
}

pub(super) fn epoll_del(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, 0, 0)
}

/// Fills `buf` with ready events; returns how many. EINTR counts as none.
pub(super) fn epoll_wait(
    ep: BorrowedFd<'_>,
    buf: &mut [libc::epoll_event],
    timeout_ms: c_int,
) -> io::Result<usize> {
    let max = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
    // SAFETY: the kernel writes at most `max` <= `buf.len()` events into `buf`, which is valid
    // and exclusively borrowed for the call.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), buf.as_mut_ptr(), max, timeout_ms) };
    match check(n) {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Blocks until `fd` is readable or `timeout_ms` passed, without consuming anything (for an epoll
/// fd: leaves the events for the next `epoll_wait`). EINTR counts as a wake-up.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: c_int) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd, exclusively borrowed for the call.
    match check(unsafe { libc::poll(&mut p, 1, timeout_ms) }) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(e),
    }
}
