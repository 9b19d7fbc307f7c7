//! Loopback tests: two transports in one thread, polled alternately.

use super::*;

/// Fails a broken test instead of hanging it; never a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `step` until it returns true, yielding the CPU now and then.
fn spin(mut step: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut rounds = 0u64;
    while !step() {
        rounds += 1;
        if rounds.is_multiple_of(256) {
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(start.elapsed() < HANG_GUARD, "no progress");
    }
}

fn poll(t: &mut KernelTransport, log: &mut Vec<TransportEvent>) {
    t.poll(Instant::now(), log).unwrap();
}

fn downs(log: &[TransportEvent], conn: ConnId) -> Vec<CloseReason> {
    log.iter()
        .filter_map(|e| match *e {
            TransportEvent::Down { conn: c, reason } if c == conn => Some(reason),
            _ => None,
        })
        .collect()
}

/// Feeds every readable connection's bytes to `sink` (consuming all of them).
fn drain(t: &mut KernelTransport, mut sink: impl FnMut(ConnId, &[u8])) {
    let mut list = Vec::new();
    t.readable(&mut list);
    for c in list {
        while t
            .recv(c, |b| {
                sink(c, b);
                b.len()
            })
            .unwrap_or(0)
            > 0
        {}
    }
}

struct Pair {
    orig: KernelTransport,
    resp: KernelTransport,
    oc: ConnId,
    rc: ConnId,
    olog: Vec<TransportEvent>,
    rlog: Vec<TransportEvent>,
}

/// A responder listening on `addr` and an originator connected to it, both `Up`.
fn pair(ocfg: KernelConfig, rcfg: KernelConfig, addr: SocketAddr) -> Pair {
    let mut resp = KernelTransport::new(rcfg).unwrap();
    let bound = resp.listen_bound(addr).unwrap();
    assert_eq!(resp.listen_addrs(), vec![bound]);
    let mut orig = KernelTransport::new(ocfg).unwrap();
    let oc = orig.connect(None, bound).unwrap();
    let (mut olog, mut rlog) = (Vec::new(), Vec::new());
    let (mut oup, mut rup) = (None, None);
    spin(|| {
        poll(&mut orig, &mut olog);
        poll(&mut resp, &mut rlog);
        for e in olog.drain(..) {
            match e {
                TransportEvent::Up {
                    conn,
                    local,
                    peer,
                    role,
                } => {
                    assert_eq!((conn, peer, role), (oc, bound, TcpRole::Originator));
                    oup = Some(local);
                }
                TransportEvent::Down { .. } => panic!("originator down: {e:?}"),
            }
        }
        for e in rlog.drain(..) {
            match e {
                TransportEvent::Up {
                    conn,
                    local,
                    peer,
                    role,
                } => {
                    assert_eq!((local, role), (bound, TcpRole::Responder));
                    rup = Some((conn, peer));
                }
                TransportEvent::Down { .. } => panic!("responder down: {e:?}"),
            }
        }
        oup.is_some() && rup.is_some()
    });
    let (rc, rpeer) = rup.unwrap();
    assert_eq!(Some(rpeer), oup, "each side sees the other's address");
    assert_eq!((orig.connections(), resp.connections()), (1, 1));
    Pair {
        orig,
        resp,
        oc,
        rc,
        olog,
        rlog,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(u64::from(seed)) as u8
        })
        .collect()
}

/// One direction of a transfer: what to send, how far it got, what arrived.
struct Flow {
    data: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
}

impl Flow {
    fn new(seed: u8, len: usize) -> Self {
        Self {
            data: pattern(seed, len),
            sent: 0,
            got: Vec::with_capacity(len),
        }
    }

    fn push(&mut self, t: &mut KernelTransport, c: ConnId) {
        let cap = t.send_capacity(c);
        if cap > 0 && self.sent < self.data.len() {
            let end = (self.sent + cap).min(self.data.len());
            self.sent += t.send(c, &self.data[self.sent..end]).unwrap();
        }
    }
}

/// Reads `c` with a consumer that takes `take(len)` bytes per call.
fn pull(t: &mut KernelTransport, got: &mut Vec<u8>, mut take: impl FnMut(usize) -> usize) {
    let mut list = Vec::new();
    t.readable(&mut list);
    for c in list {
        for _ in 0..8 {
            let n = t
                .recv(c, |b| {
                    let n = take(b.len()).min(b.len());
                    got.extend_from_slice(&b[..n]);
                    // Over-claiming must be clamped, not trusted.
                    if n == b.len() { n + 5 } else { n }
                })
                .unwrap();
            if n == 0 {
                break;
            }
        }
    }
}

#[test]
fn four_mib_each_way_intact_and_in_order() {
    let cfg = KernelConfig {
        keepalive: Some(Duration::from_secs(30)),
        so_rcvbuf: Some(256 * 1024),
        so_sndbuf: Some(256 * 1024),
        // A short unsent queue: sends stop early and resume on EPOLLOUT, nothing lost.
        notsent_lowat: Some(16 * 1024),
        ..KernelConfig::default()
    };
    let mut p = pair(cfg.clone(), cfg, v4());
    for (t, c) in [(&p.orig, p.oc), (&p.resp, p.rc)] {
        let fd = t.slots[c.slot as usize]
            .stream
            .as_ref()
            .unwrap()
            .as_raw_fd();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket, writing one int into `v` (its size in `len`).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        assert_eq!(
            (rc, v),
            (0, 16 * 1024),
            "TCP_NOTSENT_LOWAT set on both ends"
        );
    }
    // Lazily allocated: nothing read yet, no buffer.
    assert!(p.orig.slots[p.oc.slot as usize].rbuf.is_none());
    const LEN: usize = 4 << 20;
    let mut up = Flow::new(1, LEN);
    let mut down = Flow::new(2, LEN);
    let mut chunk = 0usize;
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        assert!(
            p.olog.is_empty() && p.rlog.is_empty(),
            "no events mid-transfer"
        );
        up.push(&mut p.orig, p.oc);
        down.push(&mut p.resp, p.rc);
        // Responder takes everything; originator takes odd-sized pieces (compaction, leftovers).
        pull(&mut p.resp, &mut up.got, |n| n);
        pull(&mut p.orig, &mut down.got, |n| {
            chunk = chunk.wrapping_add(7919) % 40_000;
            n.min(chunk + 1)
        });
        up.got.len() == LEN && down.got.len() == LEN
    });
    assert!(up.got == up.data, "originator -> responder corrupted");
    assert!(down.got == down.data, "responder -> originator corrupted");
    let s = p.orig.stats();
    assert_eq!((s.bytes_out, s.bytes_in), (LEN as u64, LEN as u64));
    let rbuf = p.orig.slots[p.oc.slot as usize].rbuf.as_ref().unwrap();
    assert_eq!(rbuf.len(), KernelConfig::default().recv_buffer);
}

#[test]
fn abort_resets_the_peer() {
    let mut p = pair(KernelConfig::default(), KernelConfig::default(), v4());
    p.orig.abort(p.oc);
    p.orig.abort(p.oc); // second call: stale, ignored
    poll(&mut p.orig, &mut p.olog);
    assert_eq!(downs(&p.olog, p.oc), vec![CloseReason::Local]);
    assert_eq!(p.orig.connections(), 0);
    spin(|| {
        poll(&mut p.resp, &mut p.rlog);
        drain(&mut p.resp, |_, _| {});
        !downs(&p.rlog, p.rc).is_empty()
    });
    assert_eq!(downs(&p.rlog, p.rc), vec![CloseReason::Reset]);
    assert_eq!(p.resp.connections(), 0);
    assert_eq!(
        p.resp.send(p.rc, b"x").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn close_delivers_everything_then_fin() {
    let mut p = pair(KernelConfig::default(), KernelConfig::default(), v4());
    const LEN: usize = 1 << 20;
    let mut up = Flow::new(3, LEN);
    let mut closed = false;
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        if !closed {
            up.push(&mut p.orig, p.oc);
            if up.sent == LEN {
                p.orig.close(p.oc);
                closed = true;
            }
        }
        pull(&mut p.resp, &mut up.got, |n| n);
        let d = downs(&p.rlog, p.rc);
        if !d.is_empty() {
            assert_eq!(up.got.len(), LEN, "Down before all bytes were delivered");
        }
        !d.is_empty()
    });
    assert!(up.got == up.data);
    assert_eq!(downs(&p.rlog, p.rc), vec![CloseReason::Fin]);
    assert_eq!(downs(&p.olog, p.oc), vec![CloseReason::Local]);
    assert_eq!(p.orig.connections(), 0);
    // The responder closed its side on the FIN; the originator's lingering socket sees it.
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        p.orig.closing() == 0
    });
    assert_eq!(
        p.orig
            .slots
            .iter()
            .filter(|s| s.state != State::Free)
            .count(),
        0
    );
}

#[test]
fn close_with_unread_bytes_still_sends_fin() {
    // Large buffers so that (where the sysctls allow) more is unread at the close than one drain
    // call discards, which exercises the continued draining on later polls.
    let ocfg = KernelConfig {
        so_rcvbuf: Some(2 << 20),
        ..KernelConfig::default()
    };
    let rcfg = KernelConfig {
        so_sndbuf: Some(2 << 20),
        ..KernelConfig::default()
    };
    let mut p = pair(ocfg, rcfg, v4());
    // The originator never reads these; closing must not turn into RST.
    let data = pattern(4, 1 << 20);
    let mut sent = 0;
    spin(|| {
        poll(&mut p.resp, &mut p.rlog);
        sent += p.resp.send(p.rc, &data[sent..]).unwrap();
        sent == data.len() || p.resp.send_capacity(p.rc) == 0
    });
    p.orig.close(p.oc);
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        drain(&mut p.resp, |_, _| {});
        !downs(&p.rlog, p.rc).is_empty()
    });
    assert_eq!(downs(&p.rlog, p.rc), vec![CloseReason::Fin]);
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        p.orig.closing() == 0
    });
    // Everything the responder sent was read and discarded before the socket was dropped.
    assert_eq!(p.orig.stats().discarded, p.resp.stats().bytes_out);
    assert_eq!(p.orig.stats().bytes_in, 0);
    assert!(p.orig.draining.is_empty());
}

#[test]
fn peer_fin_with_cut_off_bytes_left_unconsumed() {
    let mut p = pair(KernelConfig::default(), KernelConfig::default(), v4());
    let mut sent = 0;
    spin(|| {
        sent += p.orig.send(p.oc, &b"0123456789"[sent..]).unwrap();
        sent == 10
    });
    p.orig.close(p.oc);
    // A consumer that never takes the last 3 bytes (a cut-off frame) must not stall the Down.
    let mut got = Vec::new();
    spin(|| {
        poll(&mut p.resp, &mut p.rlog);
        pull(&mut p.resp, &mut got, |n| n.saturating_sub(3));
        !downs(&p.rlog, p.rc).is_empty()
    });
    assert_eq!(got, b"0123456");
    assert_eq!(downs(&p.rlog, p.rc), vec![CloseReason::Fin]);
}

#[test]
fn connect_to_closed_port_is_reset() {
    let port = std::net::TcpListener::bind(v4())
        .unwrap()
        .local_addr()
        .unwrap();
    let mut t = KernelTransport::new(KernelConfig::default()).unwrap();
    let c = t.connect(None, port).unwrap();
    let mut log = Vec::new();
    spin(|| {
        poll(&mut t, &mut log);
        !downs(&log, c).is_empty()
    });
    assert_eq!(downs(&log, c), vec![CloseReason::Reset]);
    assert_eq!(t.connections(), 0);
    assert_eq!(t.stats().connect_failed, 1);
    assert!(t.recv(c, |b| b.len()).is_err());
}

#[test]
fn connect_timeout_gives_timeout() {
    // A listener with backlog 0 that never accepts: once one connection fills its accept queue,
    // Linux drops further SYNs, so the next connect stays in SYN-SENT.
    let mut full = KernelTransport::new(KernelConfig {
        listen_backlog: 0,
        ..KernelConfig::default()
    })
    .unwrap();
    let addr = full.listen_bound(v4()).unwrap();
    let _filler = std::net::TcpStream::connect(addr).unwrap();
    let cfg = KernelConfig {
        connect_timeout: Some(Duration::from_secs(3)),
        ..KernelConfig::default()
    };
    let mut t = KernelTransport::new(cfg).unwrap();
    let c = t.connect(None, addr).unwrap();
    let mut log = Vec::new();
    poll(&mut t, &mut log);
    assert!(log.is_empty(), "the SYN is dropped: {log:?}");
    // A clock past the deadline (the transport measures on the `now` it is given).
    t.poll(Instant::now() + Duration::from_secs(4), &mut log)
        .unwrap();
    assert_eq!(downs(&log, c), vec![CloseReason::Timeout]);
    assert_eq!(t.connections(), 0);
    assert_eq!(t.stats().connect_failed, 1);
}

#[test]
fn accepts_beyond_max_connections_are_refused() {
    let mut resp = KernelTransport::new(KernelConfig {
        max_connections: 2,
        ..KernelConfig::default()
    })
    .unwrap();
    let addr = resp.listen_bound(v4()).unwrap();
    let mut orig = KernelTransport::new(KernelConfig::default()).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ids: Vec<ConnId> = (0..3)
        .map(|_| orig.connect(Some(local), addr).unwrap())
        .collect();
    let (mut olog, mut rlog) = (Vec::new(), Vec::new());
    spin(|| {
        poll(&mut orig, &mut olog);
        poll(&mut resp, &mut rlog);
        let s = resp.stats();
        s.accepted + s.refused_full == 3
    });
    let s = resp.stats();
    assert_eq!((s.accepted, s.refused_full), (2, 1));
    assert_eq!(resp.connections(), 2);
    let ups = rlog
        .iter()
        .filter(|e| matches!(e, TransportEvent::Up { .. }))
        .count();
    assert_eq!(ups, 2);
    // The refused one ends on the originator side, the other two stay up.
    spin(|| {
        poll(&mut orig, &mut olog);
        drain(&mut orig, |_, _| {});
        ids.iter().any(|&c| !downs(&olog, c).is_empty())
    });
    let ended: Vec<_> = ids.iter().flat_map(|&c| downs(&olog, c)).collect();
    assert_eq!(ended.len(), 1);
    assert!(matches!(ended[0], CloseReason::Fin | CloseReason::Reset));
    assert_eq!(orig.connections(), 2);
    // Connect-side limit: a transport with max 2 refuses a third connect outright.
    let mut small = KernelTransport::new(KernelConfig {
        max_connections: 2,
        ..KernelConfig::default()
    })
    .unwrap();
    small.connect(None, addr).unwrap();
    small.connect(None, addr).unwrap();
    assert!(small.connect(None, addr).is_err());
}

#[test]
fn stale_conn_id_rejected_after_slot_reuse() {
    let one = KernelConfig {
        max_connections: 1,
        ..KernelConfig::default()
    };
    let mut p = pair(one.clone(), one, v4());
    let (old_o, old_r) = (p.oc, p.rc);
    p.orig.abort(old_o);
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        drain(&mut p.resp, |_, _| {});
        !downs(&p.rlog, old_r).is_empty()
    });
    let addr = p.resp.listen_addrs()[0];
    let new_o = p.orig.connect(None, addr).unwrap();
    let mut new_r = None;
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        for e in p.rlog.drain(..) {
            if let TransportEvent::Up { conn, .. } = e {
                new_r = Some(conn);
            }
        }
        new_r.is_some()
    });
    let new_r = new_r.unwrap();
    for (t, old, new) in [(&mut p.orig, old_o, new_o), (&mut p.resp, old_r, new_r)] {
        assert_eq!(old.slot, new.slot, "slot reused");
        assert_ne!(old.generation, new.generation);
        assert_eq!(
            t.recv(old, |b| b.len()).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            t.send(old, b"x").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(t.send_capacity(old), 0);
        t.close(old);
        t.abort(old);
        assert_eq!(t.connections(), 1, "the new connection is untouched");
        let mut log = Vec::new();
        poll(t, &mut log);
        assert!(downs(&log, new).is_empty() && downs(&log, old).is_empty());
        assert!(t.send_capacity(new) > 0);
    }
    // And the new pair still carries bytes.
    let mut sent = 0;
    let mut got = Vec::new();
    spin(|| {
        if sent < 5 {
            sent += p.orig.send(new_o, &b"hello"[sent..]).unwrap();
        }
        poll(&mut p.resp, &mut p.rlog);
        pull(&mut p.resp, &mut got, |n| n);
        got.len() == 5
    });
    assert_eq!(got, b"hello");
}

#[test]
fn ipv6_loopback() {
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::TcpListener::bind(addr).is_err() {
        eprintln!("::1 unavailable, skipped");
        return;
    }
    let mut p = pair(KernelConfig::default(), KernelConfig::default(), addr);
    const LEN: usize = 200_000;
    let mut up = Flow::new(5, LEN);
    let mut down = Flow::new(6, LEN);
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        up.push(&mut p.orig, p.oc);
        down.push(&mut p.resp, p.rc);
        pull(&mut p.resp, &mut up.got, |n| n);
        pull(&mut p.orig, &mut down.got, |n| n);
        up.got.len() == LEN && down.got.len() == LEN
    });
    assert!(up.got == up.data && down.got == down.data);
}

#[test]
fn small_recv_buffer_with_erratic_consumer() {
    let cfg = KernelConfig {
        recv_buffer: 1000,
        ..KernelConfig::default()
    };
    let mut p = pair(KernelConfig::default(), cfg, v4());
    const LEN: usize = 300_000;
    let mut up = Flow::new(7, LEN);
    let mut x = 0x2545_f491u32;
    spin(|| {
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        up.push(&mut p.orig, p.oc);
        pull(&mut p.resp, &mut up.got, |n| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Sometimes nothing, sometimes a little, sometimes all.
            match x % 4 {
                0 => 0,
                1 => n.min(x as usize % 300),
                _ => n,
            }
        });
        let slot = &p.resp.slots[p.rc.slot as usize];
        assert!(slot.rbuf.as_ref().is_none_or(|b| b.len() == 1000));
        assert!(slot.rlen <= 1000 && slot.rpos <= slot.rlen);
        up.got.len() == LEN
    });
    assert!(up.got == up.data);
}

#[test]
fn wait_and_waker() {
    let mut t = KernelTransport::new(KernelConfig::default()).unwrap();
    assert!(t.as_raw_fd() >= 0);
    // SAFETY: eventfd with integer arguments; the result is checked and owned at once.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh, open descriptor nobody else owns.
    let efd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    t.add_waker(efd.as_fd()).unwrap();
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array to an open eventfd.
    let w = unsafe { libc::write(efd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    assert_eq!(w, 8);
    // Returns because the waker is set (a bug would just make this take the full timeout).
    t.wait(Duration::from_secs(5)).unwrap();
    let mut log = Vec::new();
    poll(&mut t, &mut log);
    assert!(log.is_empty(), "the waker token produces no events");
    t.remove_waker(efd.as_fd()).unwrap();
    t.wait(Duration::from_millis(1)).unwrap();
}

#[test]
fn config_is_checked() {
    for cfg in [
        KernelConfig {
            recv_buffer: 0,
            ..KernelConfig::default()
        },
        KernelConfig {
            max_connections: 0,
            ..KernelConfig::default()
        },
    ] {
        assert!(KernelTransport::new(cfg).is_err());
    }
    let mut t = KernelTransport::new(KernelConfig::default()).unwrap();
    let v6: SocketAddr = "[::1]:1".parse().unwrap();
    assert!(t.connect(Some(v4()), v6).is_err(), "mixed families");
    // Keep-alive times beyond the kernel's limit are clamped, not refused.
    let addr = t.listen_bound(v4()).unwrap();
    let mut k = KernelTransport::new(KernelConfig {
        keepalive: Some(Duration::from_secs(1_000_000)),
        ..KernelConfig::default()
    })
    .unwrap();
    assert!(k.connect(None, addr).is_ok());
}

/// `mark` puts SO_MARK on the sockets (so `ip rule ... fwmark` can route the outer traffic);
/// `ss -e` shows it. Needs CAP_NET_ADMIN: without it the listen fails, and the test says so.
#[test]
fn mark_is_set_on_listeners_and_connections() {
    let mut t = KernelTransport::new(KernelConfig {
        mark: Some(0x2a),
        ..KernelConfig::default()
    })
    .unwrap();
    let local = match t.listen_bound("127.0.0.1:0".parse().unwrap()) {
        Ok(a) => a,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            println!("SKIP mark_is_set_on_listeners_and_connections: {e}");
            return;
        }
        Err(e) => panic!("listen: {e}"),
    };
    t.connect(None, local).unwrap();
    let out = std::process::Command::new("ss")
        .args(["-tanHe", "sport", "=", &format!(":{}", local.port())])
        .output();
    let Ok(out) = out else {
        println!("SKIP mark_is_set_on_listeners_and_connections: no ss");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fwmark:0x2a"), "{text}");
}

/// Accepted connections with their ids, once `n` came up.
fn accept_n(
    orig: &mut KernelTransport,
    resp: &mut KernelTransport,
    from: SocketAddr,
    to: SocketAddr,
    n: usize,
) -> Vec<ConnId> {
    for _ in 0..n {
        orig.connect(Some(from), to).unwrap();
    }
    let (mut olog, mut rlog) = (Vec::new(), Vec::new());
    let before = {
        let s = resp.stats();
        s.accepted + s.refused_source + s.refused_untrusted
    };
    spin(|| {
        poll(orig, &mut olog);
        poll(resp, &mut rlog);
        let s = resp.stats();
        s.accepted + s.refused_source + s.refused_untrusted == before + n as u64
    });
    rlog.iter()
        .filter_map(|e| match *e {
            TransportEvent::Up { conn, .. } => Some(conn),
            _ => None,
        })
        .collect()
}

#[test]
fn untrusted_connections_are_capped_per_source_and_in_all() {
    let mut resp = KernelTransport::new(KernelConfig {
        untrusted_per_source: 2,
        untrusted_total: 3,
        ..KernelConfig::default()
    })
    .unwrap();
    let addr = resp.listen_bound(v4()).unwrap();
    let mut orig = KernelTransport::new(KernelConfig::default()).unwrap();
    let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let c: SocketAddr = "127.0.0.3:0".parse().unwrap();
    // A third untrusted connection from one source is reset at once, counted.
    let from_a = accept_n(&mut orig, &mut resp, a, addr, 3);
    assert_eq!(from_a.len(), 2);
    assert_eq!(resp.stats().refused_source, 1);
    assert_eq!(
        resp.refusals(),
        Refusals {
            refused: 1,
            untrusted: 2
        }
    );
    // Another source still gets in, up to the total.
    assert_eq!(accept_n(&mut orig, &mut resp, b, addr, 1).len(), 1);
    assert_eq!(accept_n(&mut orig, &mut resp, c, addr, 1).len(), 0);
    assert_eq!(resp.stats().refused_untrusted, 1);
    // A connection that proved itself no longer counts: room for one more, also from `a`.
    resp.mark_trusted(from_a[0]);
    resp.mark_trusted(from_a[0]);
    assert_eq!(resp.refusals().untrusted, 2);
    assert_eq!(accept_n(&mut orig, &mut resp, a, addr, 1).len(), 1);
    // Closing one frees its place.
    resp.close(from_a[1]);
    assert_eq!(
        accept_n(&mut orig, &mut resp, c, addr, 1).len(),
        0,
        "closing still counts"
    );
    let mut log = Vec::new();
    spin(|| {
        poll(&mut orig, &mut log);
        poll(&mut resp, &mut log);
        resp.closing() == 0
    });
    assert_eq!(accept_n(&mut orig, &mut resp, c, addr, 1).len(), 1);
    assert_eq!(resp.refusals().untrusted, 3);
}

#[test]
fn receive_buffer_starts_small_and_grows_to_a_whole_frame() {
    let mut p = pair(KernelConfig::default(), KernelConfig::default(), v4());
    // Nothing read yet: nothing allocated.
    assert_eq!(p.resp.rbuf_len(p.rc), 0);
    // The prefix and then a 60,000-byte frame; the consumer takes only the prefix, then only
    // the whole frame.
    let mut data = b"IKETCP".to_vec();
    data.extend(pattern(3, 60_000));
    let (mut sent, mut got) = (0, 0);
    let mut sizes = Vec::new();
    spin(|| {
        if sent < data.len() {
            sent += p.orig.send(p.oc, &data[sent..]).unwrap();
        }
        poll(&mut p.orig, &mut p.olog);
        poll(&mut p.resp, &mut p.rlog);
        let mut list = Vec::new();
        p.resp.readable(&mut list);
        for c in list {
            let want = if got == 0 { 6 } else { 60_000 };
            let _ = p.resp.recv(c, |b| {
                if b.len() >= want {
                    got += want;
                    want
                } else {
                    0
                }
            });
        }
        sizes.push(p.resp.rbuf_len(p.rc));
        got == data.len()
    });
    assert_eq!(
        sizes.iter().find(|&&n| n > 0),
        Some(&RECV_BUFFER_MIN),
        "{sizes:?}"
    );
    let top = sizes.iter().max().copied().unwrap_or(0);
    assert!((60_000..=UNTRUSTED_RECV_BUFFER).contains(&top), "{top}");
    // A trusted connection may grow to `recv_buffer`.
    p.resp.mark_trusted(p.rc);
    assert_eq!(p.resp.refusals().untrusted, 0);
}
