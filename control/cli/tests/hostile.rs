//! The hostile battery, first part: an unauthenticated attacker against a running `iketcp
//! gateway` (gwB, the TCP Responder, kernel transport) while an established tunnel carries a
//! steady ping from hostA to hostB. The attacker is a namespace of its own with 62 addresses
//! (`ATTACKER=1` in `tests/lab/two-gateways.sh`); this file is its client.
//!
//! For every attack: the reaction (reset at once, closed after the idle timeout, closed as
//! corrupt), the counter that shows it, the gateway's RSS and open descriptors against a stated
//! bound, and the tunnel's IKE and Child SAs untouched with the ping going on. The figures are
//! printed (`cargo test -- --nocapture` shows them).
//!
//! Needs root and `/dev/net/tun`; skips only without them, and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

mod common;
#[path = "hostile_ike/skf.rs"]
mod skf;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use common::{LAB_LOCK, Lab, unavailable};
use serde_json::Value;

const GW_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 4500);
/// The gateway's defaults (`[limits]`), which the bounds below follow.
const UNTRUSTED_TOTAL: usize = 1024;
const UNTRUSTED_PER_SOURCE: usize = 32;
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The attacker's `i`th address (0..62).
fn attacker(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 65 + (i % 62) as u8)
}

/// Runs `f` on a thread that entered namespace `ns` (only that thread moves).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: `file` is an open namespace file for the call; CLONE_NEWNET moves only this
        // thread, which ends when `f` returns.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0);
        f()
    })
    .join()
    .unwrap()
}

/// A blocking TCP connection from `src` (any port) to `dst`.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns; `sockaddr_in` values are
    // fully initialised, their sizes passed with them; the descriptor goes into a TcpStream
    // (which closes it) or is closed here on error.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sa = |a: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(a).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(src, 0);
        let remote = sa(*dst.ip(), dst.port());
        if libc::bind(fd, (&raw const local).cast(), len) != 0
            || libc::connect(fd, (&raw const remote).cast(), len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Whether the gateway closed `s` (EOF or reset) within `within`.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

/// gwB's resident memory (KiB) and open descriptors.
fn footprint(lab: &Lab) -> (u64, usize) {
    let pid = lab.pid("gwB");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// gwB's data-plane counter `name`, summed over its workers.
fn counter(lab: &Lab, name: &str) -> u64 {
    lab.worker_counter("gwB", name).unwrap()
}

/// gwB's IKE SA and Child SA SPIs.
fn sas(lab: &Lab) -> Vec<String> {
    let s = lab.status("gwB").unwrap_or(Value::Null);
    let mut v = Vec::new();
    for c in s["connections"].as_array().into_iter().flatten() {
        for sa in c["ike_sas"].as_array().into_iter().flatten() {
            if sa["state"] != "ESTABLISHED" {
                continue;
            }
            v.push(format!("ike {} {}", sa["spi_i"], sa["spi_r"]));
            for ch in sa["child_sas"].as_array().into_iter().flatten() {
                if ch["state"] == "INSTALLED" {
                    v.push(format!("child {} {}", ch["spi_in"], ch["spi_out"]));
                }
            }
        }
    }
    v
}

/// Opens `n` connections from the attacker's addresses in turn, each sending `first` (if not
/// empty), and holds them; returns them and how many connects failed outright.
fn flood(lab: &Lab, n: usize, first: &'static [u8]) -> (Vec<TcpStream>, usize) {
    in_ns(&lab.ns("atk"), move || {
        let mut held = Vec::with_capacity(n);
        let mut failed = 0;
        for i in 0..n {
            match connect_from(attacker(i), GW_B) {
                Ok(mut s) => {
                    if !first.is_empty() {
                        let _ = s.write_all(first);
                    }
                    held.push(s);
                }
                Err(_) => failed += 1,
            }
        }
        (held, failed)
    })
}

/// How many of `conns` the gateway has closed (non-blocking check).
fn count_closed(conns: &mut [TcpStream]) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 64];
    for s in conns {
        s.set_nonblocking(true).unwrap();
        match s.read(&mut buf) {
            Ok(0) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => n += 1,
            Ok(_) => {}
        }
    }
    n
}

struct Figures {
    name: &'static str,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    fds_before: usize,
    fds_peak: usize,
    fds_after: usize,
    refused: u64,
    closed_idle: usize,
    held: usize,
}

impl Figures {
    fn print(&self) {
        println!(
            "[hostile] {}: RSS {} -> {} (peak) -> {} KiB; fds {} -> {} -> {}; refused by limits {}; {} of {} closed by the gateway (reset at once, or after the idle timeout)",
            self.name,
            self.rss_before_kib,
            self.rss_peak_kib,
            self.rss_after_kib,
            self.fds_before,
            self.fds_peak,
            self.fds_after,
            self.refused,
            self.closed_idle,
            self.held
        );
    }
}

/// 10,000 connections from 62 addresses that send `first` and then nothing: past the limits
/// they are reset at once; the accepted ones are closed after the idle timeout; descriptors
/// and memory stay bounded and come back.
fn connection_flood(lab: &Lab, name: &'static str, first: &'static [u8]) -> Figures {
    let (rss0, fds0) = footprint(lab);
    let refused0 = counter(lab, "tcp_refused");
    let (mut conns, failed) = flood(lab, 10_000, first);
    // Let the gateway accept (or refuse) the backlog.
    std::thread::sleep(Duration::from_millis(1500));
    let (rss1, fds1) = footprint(lab);
    assert!(
        fds1 <= fds0 + UNTRUSTED_TOTAL + 64,
        "{name}: {fds1} descriptors open (from {fds0}): the untrusted cap is {UNTRUSTED_TOTAL}"
    );
    // Past the idle timeout every accepted one is closed; refusals were resets already.
    std::thread::sleep(IDLE_TIMEOUT + Duration::from_secs(3));
    let closed = count_closed(&mut conns);
    let held = conns.len();
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    let (rss2, fds2) = footprint(lab);
    let refused = counter(lab, "tcp_refused") - refused0;
    assert!(
        refused as usize >= 10_000 - failed - UNTRUSTED_TOTAL,
        "{name}: only {refused} refused"
    );
    assert_eq!(
        closed, held,
        "{name}: every connection closed by the gateway"
    );
    assert!(
        fds2 <= fds0 + 8,
        "{name}: descriptors back to {fds2} (from {fds0})"
    );
    // Bounded: at most the untrusted connections' receive buffers (4 KiB each while they sent
    // less), plus allocator slack; 256 KiB each would be 256 MiB.
    assert!(
        rss1 <= rss0 + 64 * 1024,
        "{name}: RSS grew from {rss0} to {rss1} KiB"
    );
    Figures {
        name,
        rss_before_kib: rss0,
        rss_peak_kib: rss1,
        rss_after_kib: rss2,
        fds_before: fds0,
        fds_peak: fds1,
        fds_after: fds2,
        refused,
        closed_idle: closed,
        held,
    }
}

/// How the gateway must react to a malformed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reaction {
    /// Closed as soon as the bytes are read (RFC 9329 §3.1/§3.2 Length 0 or 1, §6.1 no prefix
    /// R-6.1-n, corruption R-6.1-o, a cut-off frame discarded with the connection R-6.1-j).
    AtOnce,
    /// Merely incomplete: closed by the idle timeout (R-6.1-e).
    IdleTimeout,
}

/// One attacker connection gets `bytes` (then, if `fin`, our FIN); the gateway must close it
/// as `reaction` says. Returns how long that took.
fn garbage(lab: &Lab, what: &str, bytes: Vec<u8>, fin: bool, reaction: Reaction) -> Duration {
    let within = IDLE_TIMEOUT + Duration::from_secs(5);
    let src = attacker(61);
    let t = in_ns(&lab.ns("atk"), move || {
        let mut s = connect_from(src, GW_B).unwrap();
        // The gateway may close before all is written (a reset ends the write early).
        let _ = s.write_all(&bytes);
        if fin {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        closed_by_peer(&mut s, within)
    });
    let t = t.unwrap_or_else(|| panic!("{what}: the gateway kept the connection\n{}", lab.logs()));
    println!("[hostile] {what}: closed after {t:?} ({reaction:?})");
    // Which reaction it was, not how fast: the idle timeout is 5 s, an immediate close is
    // microseconds.
    match reaction {
        Reaction::AtOnce => assert!(t < IDLE_TIMEOUT, "{what}: not closed at once"),
        Reaction::IdleTimeout => assert!(
            t >= IDLE_TIMEOUT - Duration::from_millis(500),
            "{what}: closed before the idle timeout"
        ),
    }
    t
}

/// An RFC 9329 frame around `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 2) as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn hostile_battery_kernel_transport() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP hostile battery: {why}");
        return;
    }
    let lab = Lab::with_env(
        "ith",
        "kernel",
        &[("WORKERS", "1"), ("ATTACKER", "1"), ("DPD_A", "3s")],
    );
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));
    let before = sas(&lab);
    assert!(before.len() >= 2, "{before:?}");
    // The steady inner flow: 5 pings a second for the whole battery.
    let ping = lab.spawn(
        "hostA",
        &["ping", "-i", "0.2", "-w", "600", "-q", "203.0.113.10"],
    );

    let figures = [
        connection_flood(&lab, "10,000 connections that send nothing", b""),
        connection_flood(
            &lab,
            "10,000 connections that send only the prefix",
            b"IKETCP",
        ),
    ];
    for f in &figures {
        f.print();
    }

    // One source opening connections as fast as they are closed, while the genuine peer's
    // connection breaks: the churn is refused past its per-source cap, and gwA (another address)
    // reconnects and carries on.
    let churn = {
        let ns = lab.ns("atk");
        std::thread::spawn(move || {
            in_ns(&ns, || {
                let t0 = Instant::now();
                let mut n = 0u64;
                let mut held = std::collections::VecDeque::new();
                while t0.elapsed() < Duration::from_secs(8) {
                    if let Ok(s) = connect_from(attacker(0), GW_B) {
                        held.push_back(s);
                        n += 1;
                    }
                    if held.len() > 2 * UNTRUSTED_PER_SOURCE {
                        held.pop_front();
                    }
                }
                n
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let killed = lab.exec(
        "gwA",
        &["ss", "-K", "dst", "192.0.2.2", "dport", "=", ":4500"],
    );
    assert!(killed.status.success());
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(15));
    let back = t0.elapsed();
    let connects = churn.join().unwrap();
    println!(
        "[hostile] churn from one source: {connects} connections in 8 s; the genuine peer's tunnel carried a ping again {back:?} after its connection was reset"
    );

    // Malformed streams, each on a connection of its own: closed at once, or after the idle
    // timeout where the bytes are merely incomplete.
    garbage(
        &lab,
        "no prefix (an HTTP request)",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        false,
        Reaction::AtOnce,
    );
    garbage(
        &lab,
        "a wrong prefix",
        b"IKETCQ".to_vec(),
        false,
        Reaction::AtOnce,
    );
    garbage(
        &lab,
        "a valid prefix, then nothing",
        b"IKETCP".to_vec(),
        false,
        Reaction::IdleTimeout,
    );
    let mut l0 = b"IKETCP".to_vec();
    l0.extend_from_slice(&[0, 0]);
    garbage(&lab, "Length 0", l0, false, Reaction::AtOnce);
    let mut l1 = b"IKETCP".to_vec();
    l1.extend_from_slice(&[0, 1]);
    garbage(&lab, "Length 1", l1, false, Reaction::AtOnce);
    let mut big = b"IKETCP".to_vec();
    big.extend_from_slice(&[0xff, 0xff]);
    big.extend(pseudo_random(1000, 7));
    garbage(
        &lab,
        "Length 65535 with 1,000 bytes of it",
        big,
        false,
        Reaction::IdleTimeout,
    );
    let mut cut = b"IKETCP".to_vec();
    cut.extend_from_slice(&[0x01, 0x00]);
    cut.extend(pseudo_random(100, 9));
    garbage(&lab, "a frame cut off by FIN", cut, true, Reaction::AtOnce);
    let mut random = b"IKETCP".to_vec();
    random.extend(pseudo_random(4 << 20, 11));
    let closed_corrupt0 = counter(&lab, "closed_corrupt");
    garbage(
        &lab,
        "4 MiB of random bytes after a valid prefix",
        random,
        false,
        Reaction::AtOnce,
    );
    // ESP for the tunnel's live inbound SPI with a bad ICV, on a new connection: dropped, the
    // connection closed, the SA untouched (RFC 9329 §6.1, R-6.1-o; §10, R-10-e).
    let spi_in = before
        .iter()
        .find_map(|s| s.strip_prefix("child "))
        .and_then(|s| s.split(' ').next())
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap();
    let spi = u32::from_str_radix(&spi_in, 16).unwrap();
    let mut esp = spi.to_be_bytes().to_vec();
    // A sequence number ahead of the window, so the ICV is checked (an old one is dropped as a
    // replay first, RFC 4303 §3.4.3, which is no sign of corruption).
    esp.extend_from_slice(&1_000_000u32.to_be_bytes());
    esp.extend(pseudo_random(120, 13));
    let mut forged = b"IKETCP".to_vec();
    forged.extend(frame(&esp));
    garbage(
        &lab,
        "ESP with the live SPI and a bad ICV on a new connection",
        forged,
        false,
        Reaction::AtOnce,
    );
    // 20 ESP frames with SPIs nobody has: closed after 16 in a row (R-6.1-o; a few are
    // tolerated around rekeys, R-6.1-p).
    let mut unknown = b"IKETCP".to_vec();
    for i in 0..20u32 {
        let mut e = (0x5eed_0000 + i).to_be_bytes().to_vec();
        e.extend_from_slice(&1u32.to_be_bytes());
        e.extend(pseudo_random(60, u64::from(i)));
        unknown.extend(frame(&e));
    }
    garbage(
        &lab,
        "20 ESP frames with unknown SPIs",
        unknown,
        false,
        Reaction::AtOnce,
    );
    // INFORMATIONAL requests with the tunnel's IKE SPIs whose SK payloads do not verify, on a
    // new connection, with Message IDs 0..64: those outside the window are dropped unread (RFC
    // 7296 §2.3); the one the IKE SA expects next, or the last one it answered (a
    // retransmission must be authentic), fails its integrity check, and that closes the
    // connection (R-6.1-o); the IKE SA stays.
    let (spi_i, spi_r) = before
        .iter()
        .find_map(|s| s.strip_prefix("ike "))
        .and_then(|s| s.split_once(' '))
        .map(|(a, b)| {
            (
                a.trim_matches('"').to_owned(),
                b.trim_matches('"').to_owned(),
            )
        })
        .unwrap();
    let (spi_i, spi_r) = (
        u64::from_str_radix(&spi_i, 16).unwrap(),
        u64::from_str_radix(&spi_r, 16).unwrap(),
    );
    let mut bad_ike = b"IKETCP".to_vec();
    for id in 0..64u32 {
        let mut ike = spi_i.to_be_bytes().to_vec();
        ike.extend_from_slice(&spi_r.to_be_bytes());
        // Next payload SK (46), version 2.0, INFORMATIONAL (37), Initiator flag.
        ike.extend_from_slice(&[46, 0x20, 37, 0x08]);
        ike.extend_from_slice(&id.to_be_bytes());
        let sk_len: u16 = 4 + 8 + 32 + 16;
        ike.extend_from_slice(&(28 + u32::from(sk_len)).to_be_bytes());
        ike.extend_from_slice(&[0, 0]);
        ike.extend_from_slice(&sk_len.to_be_bytes());
        ike.extend(pseudo_random(usize::from(sk_len) - 4, 17 + u64::from(id)));
        let mut body = vec![0u8; 4];
        body.extend(ike);
        bad_ike.extend(frame(&body));
    }
    garbage(
        &lab,
        "IKE with the tunnel's IKE SPIs and a bad ICV on a new connection",
        bad_ike,
        false,
        Reaction::AtOnce,
    );
    // A payload-chain bomb: an IKE_SA_INIT of 16,000 empty Vendor ID payloads (64 KiB). Parsed
    // in bounded time and dropped (a malformed unauthenticated message gets no answer, RFC 7296
    // §2.21.1); the connection, carrying no IKE SA, goes with the idle timeout.
    let mut bomb = vec![0u8; 4];
    bomb.extend(pseudo_random(8, 21)); // SPIi
    bomb.extend_from_slice(&[0; 8]); // SPIr
    bomb.extend_from_slice(&[43, 0x20, 34, 0x08, 0, 0, 0, 0]); // Vendor ID, IKE_SA_INIT
    let payloads = 16_000usize;
    bomb.extend_from_slice(&((28 + 4 * payloads) as u32).to_be_bytes());
    for i in 0..payloads {
        let next = if i + 1 == payloads { 0 } else { 43 };
        bomb.extend_from_slice(&[next, 0, 0, 4]);
    }
    let mut bomb_stream = b"IKETCP".to_vec();
    bomb_stream.extend(frame(&bomb));
    garbage(
        &lab,
        "an IKE_SA_INIT of 16,000 empty payloads",
        bomb_stream,
        false,
        Reaction::IdleTimeout,
    );
    let corrupt = counter(&lab, "closed_corrupt") - closed_corrupt0;
    println!("[hostile] connections closed as corrupt: {corrupt}");
    assert!(
        corrupt >= 3,
        "the random stream, the forged ESP and the unknown SPIs count as corrupt"
    );

    // The refusals are logged, rate-limited: a few lines, not one per connection.
    let log = std::fs::read_to_string(lab.dir.join("gwB.log")).unwrap_or_default();
    let lines = log.matches("connections refused by [limits]").count();
    println!("[hostile] gwB logged the refusals in {lines} line(s)");
    assert!(
        (1..=20).contains(&lines),
        "{lines} log lines about refusals"
    );

    // The tunnel: same SAs, the ping went on.
    assert_eq!(
        sas(&lab),
        before,
        "the established tunnel's SAs are untouched"
    );
    assert!(
        lab.ping("hostA", "203.0.113.10"),
        "the tunnel carries traffic\n{}",
        lab.logs()
    );
    // SIGINT: ping prints its summary (`ip netns exec` became ping, same pid).
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let loss = text
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or("no summary");
    println!("[hostile] the tunnel's ping during the battery: {loss}");
    println!(
        "[hostile] counters of gwB: tcp_refused {}, closed_corrupt {}, frames_unparseable {}, icv_failures {}, unknown_spi {}",
        counter(&lab, "tcp_refused"),
        counter(&lab, "closed_corrupt"),
        counter(&lab, "frames_unparseable"),
        counter(&lab, "icv_failures"),
        counter(&lab, "unknown_spi")
    );
}

/// The notify types of an IKE message (its unencrypted payload chain).
fn notifies(msg: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let (Some(&first), true) = (msg.get(16), msg.len() >= 28) else {
        return out;
    };
    let (mut next, mut at) = (first, 28);
    while next != 0 && at + 4 <= msg.len() {
        let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
        if len < 4 || at + len > msg.len() {
            break;
        }
        if next == 41 && len >= 8 {
            out.push(u16::from_be_bytes([msg[at + 6], msg[at + 7]]));
        }
        next = msg[at];
        at += len;
    }
    out
}

/// Reads one RFC 9329 frame's body from `s`.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let n = usize::from(u16::from_be_bytes(len)).checked_sub(2)?;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// An IKE initiator of the attacker's, with its own identity and the wrong key: it can do
/// IKE_SA_INIT (no credentials needed) and build the IKE_AUTH request that would follow.
fn attacker_initiator(
    id: String,
    src: Ipv4Addr,
) -> Option<(iketcp_control::ike::session::Session, Vec<u8>)> {
    use iketcp_control::ike::crypto::{DhGroup, EncrAlg, EspSuite, IkeSuite, PrfAlg};
    use iketcp_control::ike::session::{Config, PskAuth, Session, SpiPool};
    use iketcp_control::ike::wire::{Identity, TrafficSelector, TsRange};

    let suite = IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Curve25519,
    )
    .ok()?;
    // An IKE_AUTH request carries traffic selectors (RFC 7296 §3.13: at least one).
    let any = TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start_addr: Ipv4Addr::UNSPECIFIED,
        end_addr: Ipv4Addr::BROADCAST,
    });
    let cfg = Config {
        local_id: Identity::Fqdn(id.into_bytes()),
        remote_id: Identity::Fqdn(b"b.example".to_vec()),
        auth: PskAuth::shared(b"not the key"),
        ike_proposals: vec![suite],
        esp_proposals: vec![(EspSuite::AesGcm16_256, false)],
        ts_local: vec![any.clone()],
        ts_remote: vec![any],
        spi_pool: SpiPool::new(),
    };
    let local = std::net::SocketAddr::V4(SocketAddrV4::new(src, 0));
    Session::initiator(cfg, local, std::net::SocketAddr::V4(GW_B), Instant::now()).ok()
}

/// An IKE_SA_INIT flood from 62 addresses: past `cookie_threshold` half-open IKE SAs the
/// gateway answers with COOKIE and PUZZLE (RFC 8019; no bare cookie over TCP, RFC 9329 §6.3)
/// and keeps no state; a genuine initiator that starts meanwhile solves its puzzle and gets its
/// IKE SA.
#[test]
fn ike_sa_init_flood_brings_in_puzzles() {
    const COOKIE: u16 = 16390;
    const PUZZLE: u16 = 16434;
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP IKE_SA_INIT flood: {why}");
        return;
    }
    let lab = Lab::with_env(
        "itp",
        "kernel",
        &[
            ("WORKERS", "1"),
            ("ATTACKER", "1"),
            ("LIMITS_B", "cookie_threshold = 64\\npuzzle_difficulty = 8"),
        ],
    );
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));

    let (answers, cookies, held) = in_ns(&lab.ns("atk"), move || {
        let mut held = Vec::new();
        let (mut answers, mut cookies) = (0usize, 0usize);
        for i in 0..400 {
            let Ok(mut s) = connect_from(attacker(i), GW_B) else {
                continue;
            };
            let (_session, msg) =
                attacker_initiator(format!("flood{i}.example"), attacker(i)).unwrap();
            let mut body = vec![0u8; 4];
            body.extend(msg);
            let mut out = b"IKETCP".to_vec();
            out.extend(frame(&body));
            if s.write_all(&out).is_err() {
                continue;
            }
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if let Some(resp) = read_frame(&mut s) {
                let n = notifies(resp.get(4..).unwrap_or(&[]));
                if n.contains(&COOKIE) {
                    assert!(n.contains(&PUZZLE), "a cookie over TCP comes with a puzzle");
                    cookies += 1;
                } else {
                    answers += 1;
                }
            }
            // Held open, so the half-open IKE SAs stay until their timeout.
            held.push(s);
        }
        (answers, cookies, held)
    });
    println!(
        "[hostile] IKE_SA_INIT flood of 400 from 62 addresses: {answers} answered, {cookies} sent COOKIE + PUZZLE"
    );
    assert!(
        (64..=80).contains(&answers),
        "{answers} answered before the threshold of 64"
    );
    assert!(cookies >= 300, "{cookies} puzzles");
    // The genuine initiator starts over meanwhile (its daemon restarted): it gets a puzzle,
    // solves it and gets its IKE SA.
    lab.ok(&["stop", "gwA", "KILL"]);
    lab.ok(&["start", "gwA"]);
    lab.established(Duration::from_secs(30));
    assert!(lab.ping("hostA", "203.0.113.10"), "{}", lab.logs());
    let log = std::fs::read_to_string(lab.dir.join("gwA.log")).unwrap_or_default();
    println!(
        "[hostile] the genuine initiator saw {} puzzle line(s) in its log and has its IKE SA",
        log.matches("puzzle").count()
    );
    drop(held);
}

/// An on-path attacker's view of one direction of the outer TCP connection: the next
/// sequence number and the acknowledgement it carries, read off the wire.
struct Wire {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    next_seq: u32,
    ack: u32,
    /// The segment's payload.
    payload: Vec<u8>,
}

/// Reads frames on interface `ifname` (AF_PACKET, in the current namespace) until a TCP
/// segment from `src` to `dst` with a payload goes by; its end is where the receiver expects
/// the next byte (RFC 5961: only an RST at exactly that sequence number resets).
fn sniff(ifname: &str, src: Ipv4Addr, dst: Ipv4Addr, within: Duration) -> Option<Wire> {
    sniff_where(ifname, src, dst, within, |_| true)
}

/// As [`sniff`], for the first segment whose payload `keep` accepts.
fn sniff_where(
    ifname: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    within: Duration,
    keep: impl Fn(&[u8]) -> bool,
) -> Option<Wire> {
    // SAFETY: a raw packet socket this function owns and closes; `if_nametoindex` reads a
    // NUL-terminated string; `sockaddr_ll` is fully initialised and its size passed with it;
    // `recv` writes at most `buf.len()` bytes into `buf`.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            // ETH_P_ALL: outgoing packets reach only such taps.
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(ifname).unwrap();
        let mut ll: libc::sockaddr_ll = std::mem::zeroed();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        ll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const ll).cast(), len), 0);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let t0 = Instant::now();
        let mut buf = [0u8; 65536];
        let mut found = None;
        while found.is_none() && t0.elapsed() < within {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 40 {
                continue;
            }
            let p = &buf[..n as usize];
            if p[0] >> 4 != 4 {
                continue;
            }
            let ihl = usize::from(p[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let a = |i: usize| Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
            if p[9] != 6 || a(12) != src || a(16) != dst || total > p.len() {
                continue;
            }
            let t = &p[ihl..total];
            let off = usize::from(t[12] >> 4) * 4;
            let payload = t.get(off..).unwrap_or(&[]);
            if payload.is_empty() || !keep(payload) {
                continue;
            }
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            found = Some(Wire {
                src,
                dst,
                sport: u16::from_be_bytes([t[0], t[1]]),
                dport: u16::from_be_bytes([t[2], t[3]]),
                next_seq: seq.wrapping_add(payload.len() as u32),
                ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                payload: payload.to_vec(),
            });
        }
        libc::close(fd);
        found
    }
}

/// Sends an RST forged from `w.src` at exactly `w.next_seq` (a raw IPv4 socket in the current
/// namespace).
fn forge_rst(w: &Wire) {
    forge(w, 0x14, &[]); // RST+ACK
}

/// Sends a TCP segment forged from `w.src` at exactly `w.next_seq`, with `flags` and `payload`.
fn forge(w: &Wire, flags: u8, payload: &[u8]) {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&w.sport.to_be_bytes());
    tcp.extend_from_slice(&w.dport.to_be_bytes());
    tcp.extend_from_slice(&w.next_seq.to_be_bytes());
    tcp.extend_from_slice(&w.ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]); // a 20-byte header
    tcp.extend_from_slice(payload);
    let mut pseudo = w.src.octets().to_vec();
    pseudo.extend_from_slice(&w.dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let mut sum: u32 = 0;
    for c in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // SAFETY: a raw socket this function owns and closes; the kernel fills the IP header
    // (IPPROTO_TCP without IP_HDRINCL) but we bind the forged source first; `sockaddr_in` is
    // fully initialised and its size passed with it.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        );
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        // The forged source is the namespace's own address; IP_FREEBIND lets the bind work
        // for a foreign one too.
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = |a: Ipv4Addr| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(a).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(w.src);
        libc::bind(fd, (&raw const local).cast(), len);
        let to = sa(w.dst);
        let n = libc::sendto(
            fd,
            tcp.as_ptr().cast(),
            tcp.len(),
            0,
            (&raw const to).cast(),
            len,
        );
        assert_eq!(
            n as usize,
            tcp.len(),
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// On-path forged RSTs with the right sequence numbers, against each side in turn: the
/// connection dies, the SAs do not (RFC 9329 §6.1, R-6.1-f; §10, R-10-d); the Originator (gwA)
/// reconnects and the same IKE SA and Child SA carry the tunnel's ping again.
#[test]
fn on_path_forged_rst_against_each_side() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP forged RST: {why}");
        return;
    }
    let lab = Lab::with_env("itr", "kernel", &[("WORKERS", "1"), ("DPD_A", "3s")]);
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));
    let before = sas(&lab);
    // Traffic both ways, so segments to read sequence numbers off go by all the time.
    let ping = lab.spawn(
        "hostA",
        &["ping", "-i", "0.05", "-w", "120", "-q", "203.0.113.10"],
    );
    let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    // The RST goes out on the wire from the namespace whose address it forges (the kernel's
    // raw socket will not send a packet to a local address from a foreign one).
    for (victim, from, to, forger) in [("gwB", a, b, "gwA"), ("gwA", b, a, "gwB")] {
        let downs = |lab: &Lab| {
            std::fs::read_to_string(lab.dir.join("gwA.log"))
                .unwrap_or_default()
                .matches("TCP connection down")
                .count()
        };
        let before_downs = downs(&lab);
        let t0 = Instant::now();
        let mut tries = 0;
        // The ping keeps the sequence numbers moving: a try can miss by a segment in flight.
        while downs(&lab) == before_downs && tries < 50 {
            tries += 1;
            let w = in_ns(&lab.ns("gwA"), move || {
                sniff("ga1", from, to, Duration::from_secs(2))
            });
            let w = w.unwrap_or_else(|| panic!("no segment {from} -> {to} seen"));
            in_ns(&lab.ns(forger), move || forge_rst(&w));
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(
            downs(&lab) > before_downs,
            "the forged RST against {victim} took no effect in {tries} tries\n{}",
            lab.logs()
        );
        lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(15));
        println!(
            "[hostile] forged RST against {victim}: the connection reset after {tries} tries; the tunnel carried a ping again {:?} after the first try",
            t0.elapsed()
        );
        assert_eq!(
            sas(&lab),
            before,
            "the SAs survive the forged RST against {victim}"
        );
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "[hostile] ping during the forged RSTs: {}",
        text.lines()
            .find(|l| l.contains("packet loss"))
            .unwrap_or("no summary")
    );
}

/// A TCP SYN from `src:sport` to `dst:dport`, with its IPv4 header (for IPPROTO_RAW).
fn syn_packet(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, seq: u32) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let fold = |mut sum: u32| {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    };
    let words = |b: &[u8]| -> u32 {
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    };
    let mut pseudo = src.octets().to_vec();
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = fold(words(&pseudo) + words(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.ip().octets());
    let c = fold(words(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(tcp);
    ip
}

/// A SYN flood against the smoltcp transport (gwB on its own TCP stack behind a TAP): 100,000
/// SYNs from 61 addresses nobody answers ARP for (so no RST ever frees a half-open entry) and
/// random ports. The SYN cache stays within its caps (per listener, per source), the refusals
/// are counted, memory stays bounded, and the established tunnel carries on.
#[test]
fn syn_flood_against_the_smoltcp_transport() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP SYN flood: {why}");
        return;
    }
    let lab = Lab::with_env("ity", "smoltcp", &[("WORKERS", "1"), ("ATTACKER", "1")]);
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(30));
    let before = sas(&lab);
    let (rss0, fds0) = footprint(&lab);
    let refused0 = counter(&lab, "tcp_refused");
    let ping = lab.spawn(
        "hostA",
        &["ping", "-i", "0.2", "-w", "120", "-q", "203.0.113.10"],
    );
    let sent = in_ns(&lab.ns("atk"), || {
        // SAFETY: a raw socket this function owns and closes; each packet is a complete IPv4
        // datagram (IPPROTO_RAW implies IP_HDRINCL); `sockaddr_in` is fully initialised.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            );
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let to = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*GW_B.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let mut sent = 0u32;
            for i in 0..100_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // 192.0.2.130-190: on gwB's link, but no host there answers ARP.
                let src = Ipv4Addr::new(192, 0, 2, 130 + (i % 61) as u8);
                let p = syn_packet(src, 1024 + (x as u16 % 60000), GW_B, x as u32);
                if libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&raw const to).cast(),
                    len,
                ) == 40
                {
                    sent += 1;
                }
                if i % 1000 == 999 {
                    // Let the TAP and the worker keep up a little (the flood is still ~20k/s).
                    std::thread::sleep(Duration::from_millis(40));
                }
            }
            libc::close(fd);
            sent
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let (rss1, fds1) = footprint(&lab);
    let refused = counter(&lab, "tcp_refused") - refused0;
    println!(
        "[hostile] SYN flood of {sent} against smoltcp: refused by the SYN-cache caps {refused}; RSS {rss0} -> {rss1} KiB; fds {fds0} -> {fds1}"
    );
    assert!(sent > 90_000, "{sent} SYNs sent");
    assert!(refused > 50_000, "the caps refused {refused}");
    assert!(rss1 <= rss0 + 64 * 1024, "RSS {rss0} -> {rss1} KiB");
    assert!(
        fds1 <= fds0 + 4,
        "a SYN costs no descriptor: {fds0} -> {fds1}"
    );
    assert!(
        lab.ping("hostA", "203.0.113.10"),
        "the tunnel carries traffic\n{}",
        lab.logs()
    );
    assert_eq!(sas(&lab), before, "the SAs are untouched");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "[hostile] ping during the SYN flood: {}",
        text.lines()
            .find(|l| l.contains("packet loss"))
            .unwrap_or("no summary")
    );
}

/// IKE fragments that never complete (RFC 7383 §2.5): 200 initiators from the attacker's
/// addresses each do IKE_SA_INIT (which needs no credentials, so their fragments pass the
/// integrity check under keys of their own) and then send fragments 1..63 of a 64-fragment
/// IKE_AUTH, 1,000 bytes each, and never the last. Each half-open IKE SA holds at most one
/// reassembly of at most 64 fragments and 64 KiB (`cookie_threshold` × 64 KiB per listener at
/// most before puzzles); the half-open timeout drops them and the idle timeout closes the
/// connections. First, one initiator sends a complete two-fragment IKE_AUTH and must get an
/// answer: the fragments are really reassembled, not dropped as malformed. The tunnel's SAs
/// are untouched throughout.
#[test]
fn ike_fragments_that_never_complete() {
    use iketcp_control::ike::session::Output;

    const SESSIONS: usize = 200;
    const HALF_OPEN: Duration = Duration::from_secs(5);
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP IKE fragments: {why}");
        return;
    }
    let lab = Lab::with_env(
        "itf",
        "kernel",
        &[
            ("WORKERS", "1"),
            ("ATTACKER", "1"),
            ("LIMITS_B", "half_open_timeout = \"5s\""),
        ],
    );
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(20));
    let before = sas(&lab);
    let (rss0, fds0) = footprint(&lab);

    /// IKE_SA_INIT with gwB from attacker address `i`: the connection, the IKE_AUTH request
    /// the initiator would send next, and its key.
    fn half_open(i: usize) -> Option<(TcpStream, Vec<u8>, skf::InitiatorKey)> {
        let src = attacker(i % 62);
        let mut s = connect_from(src, GW_B).ok()?;
        let (mut session, init) = attacker_initiator(format!("frag{i}.example"), src)?;
        let mut out = b"IKETCP".to_vec();
        out.extend(frame(&[&[0u8; 4][..], &init].concat()));
        s.write_all(&out).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let resp = read_frame(&mut s)?;
        let auth = session
            .handle(resp.get(4..)?, Instant::now())
            .ok()?
            .into_iter()
            .find_map(|o| match o {
                Output::Send(m) => Some(m),
                _ => None,
            })?;
        let key = skf::InitiatorKey::from_keylog(&session.keylog_ike()?);
        Some((s, auth, key))
    }

    let (answered, mut conns, sent) = in_ns(&lab.ns("atk"), move || {
        // A complete IKE_AUTH in two fragments: answered (AUTHENTICATION_FAILED: the wrong key).
        let (mut s, auth, key) = half_open(SESSIONS).expect("IKE_SA_INIT with gwB");
        let (first, chain) = key.open(&auth);
        let half = chain.len() / 2;
        let mut out = Vec::new();
        for (n, part) in [(1u16, &chain[..half]), (2, &chain[half..])] {
            let f = key.fragment(&auth, first, n, 2, part);
            out.extend(frame(&[&[0u8; 4][..], &f].concat()));
        }
        s.write_all(&out).unwrap();
        let answered = read_frame(&mut s).is_some_and(|r| {
            // An IKE_AUTH response to our SPIs (header flags: the R bit).
            r.len() > 4 + 28 && r[4 + 18] == 35 && r[4 + 19] & 0x20 != 0
        });
        // The flood: fragments 1..63 of 64, never the 64th.
        let (mut conns, mut sent) = (Vec::new(), 0usize);
        for i in 0..SESSIONS {
            let Some((mut s, auth, key)) = half_open(i) else {
                continue;
            };
            let mut out = Vec::new();
            for n in 1..64u16 {
                let f = key.fragment(
                    &auth,
                    35,
                    n,
                    64,
                    &pseudo_random(1000, (i * 64) as u64 + u64::from(n)),
                );
                out.extend(frame(&[&[0u8; 4][..], &f].concat()));
            }
            if s.write_all(&out).is_ok() {
                sent += 1;
                conns.push(s);
            }
        }
        (answered, conns, sent)
    });
    assert!(
        answered,
        "a complete fragmented IKE_AUTH gets an answer\n{}",
        lab.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (rss1, fds1) = footprint(&lab);
    // Past the half-open timeout and the idle timeout every attacker connection is closed.
    let t0 = Instant::now();
    let mut closed = count_closed(&mut conns);
    while closed < conns.len() && t0.elapsed() < HALF_OPEN + IDLE_TIMEOUT + Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(500));
        closed = count_closed(&mut conns);
    }
    let held = conns.len();
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    let (rss2, fds2) = footprint(&lab);
    println!(
        "[hostile] {sent} half-open IKE SAs each holding 63 of 64 IKE fragments (63,000 bytes): gwB RSS {rss0} -> {rss1} -> {rss2} KiB, fds {fds0} -> {fds1} -> {fds2}; {closed} of {held} connections closed by gwB after the half-open and idle timeouts"
    );
    assert!(
        sent >= SESSIONS * 9 / 10,
        "only {sent} of {SESSIONS} half-open IKE SAs set up"
    );
    // The bound: 64 KiB per half-open IKE SA and its connection's buffers; twice that is slack
    // for the allocator, far below what an unbounded reassembly would hold.
    let bound = (SESSIONS as u64) * 2 * 64 + 16 * 1024;
    assert!(
        rss1 <= rss0 + bound,
        "gwB RSS {rss0} -> {rss1} KiB (bound +{bound})"
    );
    assert_eq!(closed, held, "every connection closed by gwB");
    assert!(fds2 <= fds0 + 8, "descriptors back to {fds2} (from {fds0})");
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(10));
    assert_eq!(sas(&lab), before, "the tunnel's SAs are untouched");
}

/// A peer that stops reading for a minute while another peer's tunnel runs beside it: gwA is
/// stopped (SIGSTOP), so its kernel advertises a zero window once its receive buffer is full,
/// while hostB sends 10,000 UDP datagrams of 1300 bytes a second towards hostA through the tunnel. gwB's
/// queue for that connection fills to its bound (`queued_bytes_per_connection`), backpressure
/// holds briefly, then the stalled peer's packets are dropped (`queue_full`) so the worker
/// keeps reading plaintext: gwC's tunnel through the same worker keeps answering pings. gwB's
/// memory stays bounded; when gwA resumes, the same SAs carry its tunnel again.
///
/// gwB's liveness interval is 90 s here: with the default 30 s and the 30 s exchange timeout an
/// RFC 7296 peer rightly gives up on a peer silent for a minute, which is not what this tests.
#[test]
fn a_peer_that_stops_reading_for_a_minute_beside_another_tunnel() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP stalled peer: {why}");
        return;
    }
    let lab = Lab::with_env(
        "itw",
        "kernel",
        &[("WORKERS", "1"), ("PEER_C", "1"), ("DPD_B", "90s")],
    );
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));
    lab.ping_within("gwC", "203.0.113.10", Duration::from_secs(20));
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(20));
    let before = sas(&lab);
    assert_eq!(
        before.iter().filter(|s| s.starts_with("ike")).count(),
        2,
        "gwA's and gwC's IKE SAs: {before:?}"
    );
    let (rss0, fds0) = footprint(&lab);
    let (held0, dropped0) = (counter(&lab, "queue_held"), counter(&lab, "queue_full"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let ns = lab.ns("hostB");
        std::thread::spawn(move || {
            in_ns(&ns, move || {
                let s = std::net::UdpSocket::bind("203.0.113.10:0").unwrap();
                // 1300 bytes: one inner packet each, no fragments (the tunnel's MTU is 1408).
                let p = [0x5au8; 1300];
                let (mut n, t0) = (0u64, Instant::now());
                // 100 datagrams every 10 ms: 10,000 a second, 104 Mbit/s.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..100 {
                        if s.send_to(&p, "198.51.100.10:9").is_ok() {
                            n += 1;
                        }
                    }
                    let next = t0 + Duration::from_millis(10 * (n / 100 + 1));
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                n
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let pid_a = lab.pid("gwA");
    // SAFETY: kill(2) on the lab's gateway process.
    assert_eq!(unsafe { libc::kill(pid_a, libc::SIGSTOP) }, 0);
    let (mut peak, mut peak_fds) = (rss0, fds0);
    let (mut pings, mut answered) = (0, 0);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        // One ping a second or so from gwC's site to hostB, through gwB's one worker.
        pings += 1;
        if lab
            .exec("gwC", &["ping", "-c", "1", "-W", "1", "203.0.113.10"])
            .status
            .success()
        {
            answered += 1;
        }
        let (rss, fds) = footprint(&lab);
        peak = peak.max(rss);
        peak_fds = peak_fds.max(fds);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let held = counter(&lab, "queue_held") - held0;
    let dropped = counter(&lab, "queue_full") - dropped0;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid_a, libc::SIGCONT) }, 0);
    println!(
        "[hostile] gwA stopped for 60 s under {sent} datagrams towards it: gwB RSS {rss0} -> {peak} KiB (peak), fds {fds0} -> {peak_fds}; queue held {held} times, {dropped} packets for the stalled peer dropped; gwC's tunnel answered {answered} of {pings} pings meanwhile"
    );
    // The bound: 1 MiB of queue, the socket's send buffer and the decrypt/plain queues; 64 MiB
    // would mean something grows with the flood.
    assert!(peak <= rss0 + 64 * 1024, "gwB RSS {rss0} -> {peak} KiB");
    assert!(peak_fds <= fds0 + 2, "gwB fds {fds0} -> {peak_fds}");
    assert!(held >= 1 && dropped > 0, "held {held}, dropped {dropped}");
    // The other tunnel is unaffected: a lost ping or two is the flood's, not the stall's (before
    // the stall handling every one was lost).
    assert!(
        answered * 10 >= pings * 9,
        "gwC answered {answered} of {pings} pings while gwA was stopped"
    );
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(20));
    lab.ping_within("gwC", "203.0.113.10", Duration::from_secs(5));
    assert_eq!(
        sas(&lab),
        before,
        "the SAs of both tunnels survive the stall"
    );
}

/// Replays on a new connection of frames captured off the wire (gwA to gwB): an ESP packet of
/// the tunnel, dropped by the anti-replay window (RFC 4303 §3.4.3) and moving nothing (R-6.1-t,
/// R-10-e); gwA's last IKE request (a liveness check), answered again as a retransmission (RFC
/// 7296 §2.1) where it came from, with no state change. The tunnel stays where it was.
#[test]
fn captured_frames_replayed_on_a_new_connection() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP replays: {why}");
        return;
    }
    let lab = Lab::with_env("itq", "kernel", &[("WORKERS", "1"), ("ATTACKER", "1")]);
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));
    let before = sas(&lab);
    let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    // An ESP frame: ping through the tunnel while reading gwA's outer segments.
    let ping = lab.spawn(
        "hostA",
        &["ping", "-i", "0.1", "-c", "30", "-q", "203.0.113.10"],
    );
    let esp = in_ns(&lab.ns("gwA"), move || {
        // One whole frame whose body does not start with the zero Non-ESP marker.
        sniff_where("ga1", a, b, Duration::from_secs(5), |p| {
            p.len() > 6
                && usize::from(u16::from_be_bytes([p[0], p[1]])) == p.len()
                && p[2..6] != [0, 0, 0, 0]
        })
    })
    .expect("an ESP frame from gwA");
    let _ = ping.wait_with_output();
    // An IKE request: gwA's liveness check.
    let sniffer = {
        let ns = lab.ns("gwA");
        std::thread::spawn(move || {
            in_ns(&ns, move || {
                sniff_where("ga1", a, b, Duration::from_secs(10), |p| {
                    p.len() > 6 + 28
                        && usize::from(u16::from_be_bytes([p[0], p[1]])) == p.len()
                        && p[2..6] == [0, 0, 0, 0]
                        && p[6 + 19] & 0x20 == 0
                })
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.ctl("gwA", &["liveness", "site-b"]);
    assert!(out.contains("1 liveness"), "{out}");
    let ike = sniffer.join().unwrap().expect("gwA's IKE request");
    let replays0 = counter(&lab, "replays");
    let (esp_frame, ike_frame) = (esp.payload, ike.payload);
    let answer = in_ns(&lab.ns("atk"), move || {
        let mut s = connect_from(attacker(5), GW_B).unwrap();
        let mut out = b"IKETCP".to_vec();
        out.extend_from_slice(&esp_frame);
        out.extend_from_slice(&ike_frame);
        s.write_all(&out).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        read_frame(&mut s)
    });
    let replays = counter(&lab, "replays") - replays0;
    println!(
        "[hostile] replayed ESP: {replays} dropped as a replay; replayed IKE request: {}",
        match &answer {
            Some(r) => format!(
                "answered again with the cached response ({} bytes)",
                r.len()
            ),
            None => "not answered".to_owned(),
        }
    );
    assert_eq!(
        replays, 1,
        "the replayed ESP packet is dropped by the window"
    );
    assert!(
        lab.ping("hostA", "203.0.113.10"),
        "the tunnel stays where it was\n{}",
        lab.logs()
    );
    assert_eq!(sas(&lab), before, "nothing changed");
}

/// How a test sees that gwB reacted.
type Seen = dyn Fn(&Lab) -> usize;

/// Whether a segment's payload is whole RFC 9329 frames (so its end is a frame boundary).
fn whole_frames(mut p: &[u8]) -> bool {
    if p.starts_with(b"IKETCP") {
        p = &p[6..];
    }
    while p.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([p[0], p[1]]));
        if n < 2 || n > p.len() {
            return false;
        }
        p = &p[n..];
    }
    p.is_empty()
}

/// Frames injected on-path into the live connection (gwA to gwB, at exactly the next sequence
/// number, so gwB's kernel takes them into the stream): ESP for the tunnel's SPI with a bad ICV,
/// then (on the next connection) IKE with the tunnel's IKE SPIs and bad ICVs. Each is corruption
/// on a connection that started well (RFC 9329 §6.1, R-6.1-o): gwB closes it; the SAs stay and
/// gwA reconnects (R-6.1-f).
#[test]
fn on_path_injected_frames_with_bad_icvs() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP injection: {why}");
        return;
    }
    let lab = Lab::with_env("iti", "kernel", &[("WORKERS", "1"), ("DPD_A", "3s")]);
    lab.ok(&["up"]);
    lab.established(Duration::from_secs(20));
    let before = sas(&lab);
    let field = |kind: &str, n: usize| {
        before
            .iter()
            .find_map(|s| s.strip_prefix(kind))
            .and_then(|s| s.split(' ').nth(n))
            .map(|s| s.trim_matches('"').to_owned())
            .unwrap()
    };
    let spi = u32::from_str_radix(&field("child ", 0), 16).unwrap();
    let (spi_i, spi_r) = (
        u64::from_str_radix(&field("ike ", 0), 16).unwrap(),
        u64::from_str_radix(&field("ike ", 1), 16).unwrap(),
    );
    let mut esp = spi.to_be_bytes().to_vec();
    esp.extend_from_slice(&1_000_000u32.to_be_bytes());
    esp.extend(pseudo_random(120, 31));
    let esp_frame = frame(&esp);
    let mut ike_frames = Vec::new();
    for id in 0..64u32 {
        let mut ike = spi_i.to_be_bytes().to_vec();
        ike.extend_from_slice(&spi_r.to_be_bytes());
        ike.extend_from_slice(&[46, 0x20, 37, 0x08]);
        ike.extend_from_slice(&id.to_be_bytes());
        ike.extend_from_slice(&(28u32 + 60).to_be_bytes());
        ike.extend_from_slice(&[0, 0, 0, 60]);
        ike.extend(pseudo_random(56, 41 + u64::from(id)));
        let mut body = vec![0u8; 4];
        body.extend(ike);
        ike_frames.extend(frame(&body));
    }
    let ping = lab.spawn(
        "hostA",
        &["ping", "-i", "0.05", "-w", "120", "-q", "203.0.113.10"],
    );
    let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    // ESP: the worker closes the connection as corrupt (its counter); IKE: control sees the
    // integrity failure (its log line) and has the connection closed.
    let esp_seen = |lab: &Lab| counter(lab, "closed_corrupt") as usize;
    // (or, when the injected bytes also knock the stream out of step first, gwB closing the
    // connection for that: either way the connection goes and the SAs must not).
    let ike_seen = |lab: &Lab| {
        let log = std::fs::read_to_string(lab.dir.join("gwB.log")).unwrap_or_default();
        log.matches("failed its integrity check").count()
            + log.matches("TCP connection down").count()
    };
    let cases: [(&str, Vec<u8>, &Seen); 2] = [
        ("ESP with a bad ICV", esp_frame, &esp_seen),
        ("IKE with bad ICVs", ike_frames, &ike_seen),
    ];
    for (what, bytes, seen) in cases {
        let c0 = seen(&lab);
        let mut tries = 0;
        while seen(&lab) == c0 && tries < 20 {
            tries += 1;
            let bytes = bytes.clone();
            // The end of a whole frame from gwA: where the next frame must begin.
            // Under load a try may see no whole frame go by (a reconnect in progress): try again.
            let Some(w) = in_ns(&lab.ns("gwA"), move || {
                sniff_where("ga1", a, b, Duration::from_secs(5), whole_frames)
            }) else {
                continue;
            };
            in_ns(&lab.ns("gwA"), move || forge(&w, 0x18, &bytes)); // PSH+ACK
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(
            seen(&lab) > c0,
            "{what} injected: gwB did not close the connection in {tries} tries\n{}",
            lab.logs()
        );
        lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(15));
        println!(
            "[hostile] {what} injected into the live connection: gwB closed it after {tries} tries; gwA reconnected, the tunnel carries the ping"
        );
        assert_eq!(sas(&lab), before, "the SAs survive {what}");
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let _ = ping.wait_with_output();
}
