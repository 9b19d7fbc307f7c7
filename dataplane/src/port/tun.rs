//! Linux TUN device: the plaintext side, raw IP packets ([`Medium::Ip`]).
//!
//! [`TunTapFd`] is the part TUN and TAP share (open, burst read/write, counters); [`Tun`] and
//! [`Tap`](super::tap::Tap) only pick the device kind and the medium. Opening a device neither sets
//! addresses nor brings the link up: the operator (or a test) does that with `ip`. A device that was
//! not made persistent disappears when its last descriptor closes, i.e. when the port is dropped.
//!
//! One `read`/`write` per packet, or, with [`TunConfig::offload`], `IFF_VNET_HDR` with TSO and
//! checksum offload: the kernel hands over TCP super-packets of up to 64 KiB per `read`, which are
//! cut into segments here, and consecutive segments of a flow go back as one super-packet per
//! `writev` ([`offload`](super::offload)).

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::offload::{self, MAX_RUN, MAX_SUPER, Run, Segment, VNET_HDR_LEN, VnetHdr};
use super::{Medium, Packet, PacketPool};
use std::collections::VecDeque;

/// The clone device that creates TUN/TAP interfaces.
pub const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

/// How to open a TUN (or TAP) device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name, at most 15 bytes; empty lets the kernel pick (`tun%d`, `tap%d`).
    pub name: String,
    /// What [`Port::mtu`] reports: the largest IP packet (TUN) or Ethernet frame without FCS
    /// (TAP). Not applied to the interface, whose MTU is set with `ip link set … mtu`.
    pub mtu: usize,
    /// `IFF_MULTI_QUEUE`: open the same name once per worker, each open attaching one more queue
    /// of the same interface; the kernel spreads packets it sends over the queues by flow. Every
    /// open of a name must agree on this flag.
    pub multi_queue: bool,
    /// `IFF_VNET_HDR` with TSO and checksum offload (TUN only): super-packets in, segments joined
    /// on the way out. Every open of a name must agree on this flag too.
    pub offload: bool,
}

impl TunConfig {
    /// A single-queue device without offload.
    pub fn new(name: &str, mtu: usize) -> Self {
        TunConfig {
            name: name.to_owned(),
            mtu,
            multi_queue: false,
            offload: false,
        }
    }
}

/// Counters of a TUN/TAP port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunTapStats {
    /// Packets read.
    pub rx_packets: u64,
    /// Packets read that did not fit a pool buffer (dropped).
    pub rx_truncated: u64,
    /// Packets written.
    pub tx_packets: u64,
    /// Packets the kernel refused (`EINVAL`, `EMSGSIZE`, `EIO` on a down link…), dropped.
    pub tx_dropped: u64,
    /// Offload: TCP super-packets read (each cut into segments, counted in `rx_packets`).
    pub rx_super: u64,
    /// Offload: packets read that could not be cut (malformed, or not TCP), dropped.
    pub rx_offload_errors: u64,
    /// Offload: writes that joined two or more segments (each counted in `tx_packets`).
    pub tx_joined: u64,
}

/// Which device `TUNSETIFF` creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Tun,
    Tap,
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name and the flags member of the union, padded to
/// the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> io::Result<Self> {
        let bytes = name.as_bytes();
        // The kernel needs room for the terminating NUL.
        if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "interface name must be under 16 bytes, without NUL",
            ));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        for (dst, &b) in req.name.iter_mut().zip(bytes) {
            *dst = b as libc::c_char;
        }
        Ok(req)
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// An open, non-blocking TUN or TAP queue; closed on drop.
#[derive(Debug)]
pub struct TunTapFd {
    file: File,
    name: String,
    mtu: usize,
    stats: TunTapStats,
    /// The read buffer for super-packets, when opened with offload.
    vnet: Option<Vec<u8>>,
    /// The packets of the run being joined (offload writes), kept between calls.
    run: Vec<Packet>,
}

impl TunTapFd {
    /// Opens `/dev/net/tun` and attaches it to the interface `cfg.name` (created if needed) with
    /// `IFF_NO_PI`.
    pub(crate) fn open(cfg: &TunConfig, kind: Kind) -> io::Result<Self> {
        let mut flags = libc::IFF_NO_PI
            | match kind {
                Kind::Tun => libc::IFF_TUN,
                Kind::Tap => libc::IFF_TAP,
            };
        if cfg.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let offload = cfg.offload && kind == Kind::Tun;
        if offload {
            flags |= libc::IFF_VNET_HDR;
        }
        let flags = libc::c_short::try_from(flags)
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "TUN flags out of range"))?;
        let mut req = IfReq::new(&cfg.name, flags)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_CLONE_DEVICE)?;
        // SAFETY: `file` is an open descriptor of /dev/net/tun; TUNSETIFF reads and writes one
        // `struct ifreq` (40 bytes), which `req` is, laid out as the kernel expects (`repr(C)`, name
        // then the flags member of the union), and it lives until the call returns.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if offload {
            enable_offload(&file)?;
        }
        Ok(TunTapFd {
            file,
            name: req.name(),
            mtu: cfg.mtu,
            stats: TunTapStats::default(),
            vnet: offload.then(|| vec![0u8; VNET_HDR_LEN + MAX_SUPER]),
            run: Vec::with_capacity(if offload { MAX_RUN } else { 0 }),
        })
    }

    /// Whether the device was opened with offload.
    pub fn offload(&self) -> bool {
        self.vnet.is_some()
    }

    /// The interface's name (the kernel's choice if the config left it empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What [`Port::mtu`] reports.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TunTapStats {
        self.stats
    }

    /// Reads up to `max` packets until the kernel has none. With offload the segments of the
    /// last super-packet may take the count past `max`.
    pub(crate) fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        if self.vnet.is_some() {
            return self.recv_burst_vnet(pool, out, max);
        }
        let mut n = 0;
        // Bounded by attempts, so EINTR or truncated packets cannot keep us here.
        for _ in 0..max {
            let mut p = pool.get();
            let cap = p.max_len();
            match (&self.file).read(p.prepare(cap)) {
                // The kernel returns a packet's full length even when it only copied `cap` bytes.
                Ok(len) if len > cap => {
                    self.stats.rx_truncated += 1;
                    pool.put(p);
                }
                Ok(0) => {
                    pool.put(p);
                    break;
                }
                Ok(len) => {
                    p.truncate(len);
                    out.push(p);
                    n += 1;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => pool.put(p),
                Err(e) => {
                    pool.put(p);
                    if e.kind() == ErrorKind::WouldBlock || n > 0 {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        self.stats.rx_packets += n as u64;
        Ok(n)
    }

    fn recv_burst_vnet(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        let Some(buf) = self.vnet.as_mut() else {
            return Ok(0);
        };
        let start = out.len();
        for _ in 0..max {
            if out.len() - start >= max {
                break;
            }
            let len = match (&self.file).read(buf) {
                Ok(0) => break,
                // Larger than a super-packet can be (the device's GSO limit is 64 KiB): cut off.
                Ok(len) if len > buf.len() => {
                    self.stats.rx_truncated += 1;
                    continue;
                }
                Ok(len) => len,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() == ErrorKind::WouldBlock || out.len() > start {
                        break;
                    }
                    return Err(e);
                }
            };
            let Some(h) = VnetHdr::parse(&buf[..len]) else {
                self.stats.rx_offload_errors += 1;
                continue;
            };
            match offload::split(&h, &mut buf[VNET_HDR_LEN..len], pool, out) {
                Ok(n) if n > 1 || h.gso_type != 0 => self.stats.rx_super += 1,
                Ok(_) => {}
                Err(_) => self.stats.rx_offload_errors += 1,
            }
        }
        let n = out.len() - start;
        self.stats.rx_packets += n as u64;
        Ok(n)
    }

    /// Offload: writes `pkts` as runs of joined segments, one `writev` each. The kernel's `tun`
    /// takes every write at once (it never pushes back), so a failed write is a refused packet:
    /// dropped and counted.
    fn send_burst_vnet(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        let mut run_pkts = std::mem::take(&mut self.run);
        let mut next_seg = pkts.front().and_then(|p| Segment::parse(p.data()));
        while let Some(first) = pkts.pop_front() {
            let seg = next_seg.take();
            run_pkts.push(first);
            let hdr = match seg {
                Some(seg) => {
                    let mut run = Run::new(seg);
                    while let Some(p) = pkts.front() {
                        let s = Segment::parse(p.data());
                        match s {
                            Some(s) if run.accepts(run_pkts[0].data(), &s, p.data()) => {
                                run.push(s);
                                if let Some(p) = pkts.pop_front() {
                                    run_pkts.push(p);
                                }
                            }
                            _ => {
                                next_seg = s;
                                break;
                            }
                        }
                    }
                    run.finish(run_pkts[0].data_mut())
                }
                None => {
                    next_seg = pkts.front().and_then(|p| Segment::parse(p.data()));
                    VnetHdr::default()
                }
            };
            let hdr_bytes = hdr.to_bytes();
            let skip = usize::from(hdr.hdr_len);
            let mut iov: Vec<io::IoSlice<'_>> = Vec::with_capacity(run_pkts.len() + 1);
            iov.push(io::IoSlice::new(&hdr_bytes));
            for (i, p) in run_pkts.iter().enumerate() {
                let d = p.data();
                iov.push(io::IoSlice::new(if i == 0 {
                    d
                } else {
                    d.get(skip..).unwrap_or(&[])
                }));
            }
            let n = run_pkts.len();
            let wrote = loop {
                match (&self.file).write_vectored(&iov) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    r => break r.is_ok(),
                }
            };
            drop(iov);
            if wrote {
                sent += n;
                if n > 1 {
                    self.stats.tx_joined += 1;
                }
            } else {
                self.stats.tx_dropped += n as u64;
            }
            for p in run_pkts.drain(..) {
                pool.put(p);
            }
        }
        self.run = run_pkts;
        self.stats.tx_packets += sent as u64;
        Ok(sent)
    }

    /// Writes packets from the front of `pkts` until the kernel pushes back; refused packets are
    /// dropped and counted. Returns how many were written.
    pub(crate) fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        if self.vnet.is_some() {
            return self.send_burst_vnet(pool, pkts);
        }
        let mut sent = 0;
        while let Some(p) = pkts.pop_front() {
            match (&self.file).write(p.data()) {
                Ok(_) => {
                    sent += 1;
                    pool.put(p);
                }
                // Full, or interrupted: leave the rest for the next call.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    pkts.push_front(p);
                    break;
                }
                Err(_) => {
                    self.stats.tx_dropped += 1;
                    pool.put(p);
                }
            }
        }
        self.stats.tx_packets += sent as u64;
        Ok(sent)
    }
}

/// `TUNSETVNETHDRSZ` to the 10-byte `virtio_net_hdr`, then `TUNSETOFFLOAD` with checksum offload
/// and TSO for IPv4 and IPv6 (never UFO/USO: only TCP is cut here).
fn enable_offload(file: &File) -> io::Result<()> {
    let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: `file` is an open TUN descriptor; TUNSETVNETHDRSZ reads one `int` through the
    // pointer, which points at `size`, alive for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &raw const size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    // SAFETY: TUNSETOFFLOAD takes the feature bits as the argument value itself, no pointer.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            features as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsFd for TunTapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TunTapFd {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A TUN queue: IP packets without any header (`IFF_TUN | IFF_NO_PI`).
#[derive(Debug)]
pub struct Tun {
    dev: TunTapFd,
}

impl Tun {
    /// Opens (creating if needed) the single-queue TUN interface `name`; `mtu` is what
    /// [`Port::mtu`] reports.
    pub fn open(name: &str, mtu: usize) -> io::Result<Tun> {
        Tun::open_with(&TunConfig::new(name, mtu))
    }

    /// Opens a TUN queue as `cfg` says (e.g. one of several `multi_queue` queues).
    pub fn open_with(cfg: &TunConfig) -> io::Result<Tun> {
        Ok(Tun {
            dev: TunTapFd::open(cfg, Kind::Tun)?,
        })
    }
}

/// The parts of [`Tun`] and [`Tap`](super::tap::Tap) that only delegate to [`TunTapFd`]: name,
/// counters, fd access and the [`Port`] impl.
macro_rules! tun_tap_port {
    ($ty:ident, $medium:expr) => {
        impl $ty {
            /// The interface's name.
            pub fn name(&self) -> &str {
                self.dev.name()
            }

            /// A snapshot of the counters.
            pub fn stats(&self) -> $crate::port::tun::TunTapStats {
                self.dev.stats()
            }
        }

        impl std::os::fd::AsFd for $ty {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&self.dev)
            }
        }

        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(&self.dev)
            }
        }

        impl $crate::port::Port for $ty {
            fn recv_burst(
                &mut self,
                pool: &mut $crate::port::PacketPool,
                out: &mut Vec<$crate::port::Packet>,
                max: usize,
            ) -> std::io::Result<usize> {
                self.dev.recv_burst(pool, out, max)
            }

            fn send_burst(
                &mut self,
                pool: &mut $crate::port::PacketPool,
                pkts: &mut std::collections::VecDeque<$crate::port::Packet>,
            ) -> std::io::Result<usize> {
                self.dev.send_burst(pool, pkts)
            }

            fn medium(&self) -> $crate::port::Medium {
                $medium
            }

            fn mtu(&self) -> usize {
                self.dev.mtu()
            }

            fn offload_counters(&self) -> $crate::port::OffloadCounters {
                let s = self.dev.stats();
                $crate::port::OffloadCounters {
                    super_in: s.rx_super,
                    joined_out: s.tx_joined,
                    errors: s.rx_offload_errors,
                }
            }
        }
    };
}
pub(crate) use tun_tap_port;

tun_tap_port!(Tun, Medium::Ip);

/// Helpers for tests that need a TUN/TAP device: they run in a fresh network namespace, so they
/// touch nothing on the host, and skip when the machine does not allow it.
#[cfg(test)]
pub(crate) mod testutil {
    /// Runs `f` on a new thread moved into a new, empty network namespace; returns None (after
    /// printing why) when that or `/dev/net/tun` is not available.
    pub(crate) fn in_fresh_netns<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if !std::path::Path::new(super::TUN_CLONE_DEVICE).exists() {
            println!("SKIP: no {}", super::TUN_CLONE_DEVICE);
            return None;
        }
        std::thread::spawn(move || {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread (namespaces
            // are per task) into a new namespace, which ends with the thread and its descriptors.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            if rc != 0 {
                println!(
                    "SKIP: cannot create a network namespace: {}",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            Some(f())
        })
        .join()
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::in_fresh_netns;
    use super::*;
    use crate::port::Port;

    #[test]
    fn rejects_bad_names_before_any_syscall() {
        for name in ["sixteen-bytes-xx", "a\0b"] {
            let err = Tun::open(name, 1500).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn opens_reads_nothing_and_drops_refused_writes() {
        in_fresh_netns(|| {
            let mut tun = match Tun::open("", 1400) {
                Ok(t) => t,
                Err(e) => {
                    println!("SKIP: cannot open a TUN device: {e}");
                    return;
                }
            };
            assert!(tun.name().starts_with("tun"), "{}", tun.name());
            assert_eq!(tun.medium(), Medium::Ip);
            assert_eq!(tun.mtu(), 1400);
            assert!(tun.as_raw_fd() >= 0);
            let mut pool = PacketPool::default();
            let mut out = Vec::new();
            assert_eq!(tun.recv_burst(&mut pool, &mut out, 8).unwrap(), 0);
            assert_eq!(tun.recv_burst(&mut pool, &mut out, 0).unwrap(), 0);
            // The link is down: the kernel refuses what we write, and we drop it.
            let mut garbage = pool.get();
            assert!(garbage.fill_from(&[0xff; 3]));
            let mut q = VecDeque::from([garbage, pool.get()]);
            tun.send_burst(&mut pool, &mut q).unwrap();
            let s = tun.stats();
            assert!(q.is_empty());
            assert_eq!(s.tx_packets + s.tx_dropped, 2, "{s:?}");
        });
    }

    #[test]
    fn multi_queue_attaches_several_queues() {
        in_fresh_netns(|| {
            let cfg = TunConfig {
                multi_queue: true,
                ..TunConfig::new("ikmq0", 1500)
            };
            let q0 = match Tun::open_with(&cfg) {
                Ok(t) => t,
                Err(e) => {
                    println!("SKIP: cannot open a TUN device: {e}");
                    return;
                }
            };
            let q1 = Tun::open_with(&cfg).unwrap();
            assert_eq!(q0.name(), "ikmq0");
            assert_eq!(q1.name(), "ikmq0");
            assert_ne!(q0.as_raw_fd(), q1.as_raw_fd());
            // A single-queue open of a multi-queue device is refused.
            assert!(Tun::open("ikmq0", 1500).is_err());
        });
    }

    /// One namespace of the offload pair: a thread in a new network namespace with an offload
    /// TUN `name` at `addr`/24 (up), which hands the device to the caller and then runs `f`.
    fn offload_side<T: Send + 'static>(
        name: &'static str,
        addr: &'static str,
        tx: std::sync::mpsc::Sender<Option<Tun>>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Option<T>> {
        std::thread::spawn(move || {
            // SAFETY: as in `in_fresh_netns`: only this thread moves to the new namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                println!("SKIP: no network namespace: {}", io::Error::last_os_error());
                let _ = tx.send(None);
                return None;
            }
            let cfg = TunConfig {
                offload: true,
                ..TunConfig::new(name, 1400)
            };
            let tun = match Tun::open_with(&cfg) {
                Ok(t) => t,
                Err(e) => {
                    println!("SKIP: no offload TUN device: {e}");
                    let _ = tx.send(None);
                    return None;
                }
            };
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "ip {args:?}");
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["link", "set", name, "mtu", "1400", "up"]);
            ip(&["addr", "add", &format!("{addr}/24"), "dev", name]);
            let _ = tx.send(Some(tun));
            Some(f())
        })
    }

    /// Two namespaces joined by two offload TUN devices and a relay that moves packets between
    /// them through `recv_burst` and `send_burst` (cut on the way in, joined on the way out). A
    /// kernel TCP connection across them carries 16 MiB each way intact: the kernel's TSO
    /// super-packets, this code's segments and its joined writes all agree with the kernel.
    #[test]
    fn an_offload_tun_pair_carries_kernel_tcp_intact() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, mpsc};
        use std::time::{Duration, Instant};

        const BYTES: usize = 16 << 20;
        let data: Arc<Vec<u8>> = Arc::new((0..BYTES).map(|i| (i * 31 + i / 1021) as u8).collect());
        let (tx_a, rx_a) = mpsc::channel();
        let (tx_b, rx_b) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let d = data.clone();
        let server = offload_side("ikoffb", "10.77.0.2", tx_b, move || {
            let l = TcpListener::bind("10.77.0.2:5001").unwrap();
            ready_tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = vec![0u8; BYTES];
            s.read_exact(&mut got).unwrap();
            assert!(got == *d, "client to server: the bytes differ");
            s.write_all(&d).unwrap();
        });
        let Some(mut b) = rx_b.recv().unwrap() else {
            return;
        };
        let client = offload_side("ikoffa", "10.77.0.1", tx_a, move || {
            ready_rx.recv().unwrap();
            let mut s = TcpStream::connect("10.77.0.2:5001").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let w = {
                let mut s = s.try_clone().unwrap();
                let d = data.clone();
                std::thread::spawn(move || s.write_all(&d).unwrap())
            };
            let mut got = vec![0u8; BYTES];
            s.read_exact(&mut got).unwrap();
            w.join().unwrap();
            assert!(got == *data, "server to client: the bytes differ");
        });
        let Some(mut a) = rx_a.recv().unwrap() else {
            return;
        };
        let done = Arc::new(AtomicBool::new(false));
        let relay = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut pool = PacketPool::default();
                let (mut burst, mut q) = (Vec::new(), VecDeque::new());
                let t0 = Instant::now();
                while !done.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                    a.recv_burst(&mut pool, &mut burst, 64).unwrap();
                    q.extend(burst.drain(..));
                    b.send_burst(&mut pool, &mut q).unwrap();
                    b.recv_burst(&mut pool, &mut burst, 64).unwrap();
                    q.extend(burst.drain(..));
                    a.send_burst(&mut pool, &mut q).unwrap();
                    std::thread::sleep(Duration::from_micros(20));
                }
                (a.stats(), b.stats())
            })
        };
        let c = client.join();
        let s = server.join();
        done.store(true, Ordering::Relaxed);
        let (sa, sb) = relay.join().unwrap();
        println!("offload pair: a {sa:?}, b {sb:?}");
        c.unwrap();
        s.unwrap();
        assert!(
            sa.rx_super > 0 && sb.rx_super > 0,
            "the kernel handed over super-packets"
        );
        assert!(sa.tx_joined > 0 && sb.tx_joined > 0, "segments were joined");
        assert_eq!(sa.rx_offload_errors + sb.rx_offload_errors, 0);
        assert_eq!(
            sa.tx_dropped + sb.tx_dropped,
            0,
            "the kernel took every write"
        );
    }
}
