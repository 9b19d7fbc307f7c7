//! Lab: real kernel traffic through the TUN and TAP ports.
//!
//! Each test runs on a thread moved into a new, empty network namespace, so the devices, addresses
//! and routes it makes touch nothing on the host and vanish with the thread. The tests skip (print
//! a line and pass) without root, `ip` or `/dev/net/tun`.
#![allow(
    clippy::unwrap_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use iketcp_dataplane::port::tap::Tap;
use iketcp_dataplane::port::tun::Tun;
use iketcp_dataplane::port::{Medium, Packet, PacketPool, Port};

const CLONE_NEWNET: i32 = 0x4000_0000;

unsafe extern "C" {
    /// unshare(2) from the C library std already links.
    fn unshare(flags: i32) -> i32;
}

/// Why the lab cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("not root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `ip` command".into()),
    }
}

/// Runs `f` on a thread in a fresh network namespace; skips when that is not possible.
fn lab(test: &str, f: impl FnOnce() + Send + 'static) {
    if let Some(why) = unavailable() {
        println!("SKIP {test}: {why}");
        return;
    }
    let test = test.to_owned();
    let joined = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread (namespaces are
        // per task; `ip` children inherit it) into a new namespace that dies with the thread.
        if unsafe { unshare(CLONE_NEWNET) } != 0 {
            println!(
                "SKIP {test}: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        f();
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Polls `port` until a packet satisfies `want` (others are dropped), with a generous deadline.
fn recv_matching(
    port: &mut dyn Port,
    pool: &mut PacketPool,
    want: impl Fn(&[u8]) -> bool,
) -> Packet {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        port.recv_burst(pool, &mut out, 32).unwrap();
        let mut found = None;
        for p in out.drain(..) {
            if found.is_none() && want(p.data()) {
                found = Some(p);
            } else {
                pool.put(p);
            }
        }
        if let Some(p) = found {
            return p;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no matching packet before the deadline");
}

fn send_one(port: &mut dyn Port, pool: &mut PacketPool, bytes: &[u8]) {
    let mut p = pool.get();
    assert!(p.fill_from(bytes));
    let mut q = VecDeque::from([p]);
    assert_eq!(port.send_burst(pool, &mut q).unwrap(), 1);
    assert!(q.is_empty());
}

// Internet checksum.

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        _ => unreachable!(),
    };
    acc + u32::from(proto) + len as u32
}

/// An IPv4 or IPv6 packet carrying a UDP datagram, all checksums filled.
fn build_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = fold(sum16(
        pseudo_header_sum(src.ip(), dst.ip(), 17, udp_len),
        &udp,
    ));
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut pkt = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pkt.extend_from_slice(&[0x45, 0]);
            pkt.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            pkt.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            pkt.extend_from_slice(&s.octets());
            pkt.extend_from_slice(&d.octets());
            let c = fold(sum16(0, &pkt));
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pkt.extend_from_slice(&[0x60, 0, 0, 0]);
            pkt.extend_from_slice(&(udp_len as u16).to_be_bytes());
            pkt.extend_from_slice(&[17, 64]);
            pkt.extend_from_slice(&s.octets());
            pkt.extend_from_slice(&d.octets());
        }
        _ => unreachable!(),
    }
    pkt.extend_from_slice(&udp);
    pkt
}

/// A parsed IP/UDP packet whose checksums verified.
#[derive(Debug, PartialEq, Eq)]
struct Udp {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// Parses an IPv4 (no options) or IPv6 (no extension headers) UDP packet, checking checksums and
/// lengths; None for anything else.
fn parse_udp(pkt: &[u8]) -> Option<Udp> {
    let (src, dst, udp) = match pkt.first()? >> 4 {
        4 => {
            let hdr = pkt.get(..20)?;
            if hdr[0] != 0x45 || hdr[9] != 17 || fold(sum16(0, hdr)) != 0 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
            let s: [u8; 4] = hdr[12..16].try_into().ok()?;
            let d: [u8; 4] = hdr[16..20].try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), pkt.get(20..total)?)
        }
        6 => {
            let hdr = pkt.get(..40)?;
            if hdr[6] != 17 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
            let s: [u8; 16] = hdr[8..24].try_into().ok()?;
            let d: [u8; 16] = hdr[24..40].try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), pkt.get(40..40 + len)?)
        }
        _ => return None,
    };
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if udp_len != udp.len() || fold(sum16(pseudo_header_sum(src, dst, 17, udp_len), udp)) != 0 {
        return None;
    }
    Some(Udp {
        src: SocketAddr::new(src, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
    })
}

/// Sends a datagram from a socket on the kernel side, reads it from `port` (`parse` checks the link
/// header and parses the rest), writes a reply made by `raise` and receives it on the socket.
fn udp_round_trip(
    port: &mut dyn Port,
    pool: &mut PacketPool,
    local: SocketAddr,
    remote: SocketAddr,
    parse: impl Fn(&[u8]) -> Option<Udp>,
    raise: impl Fn(&[u8]) -> Vec<u8>,
) {
    let sock = UdpSocket::bind(local).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = sock.local_addr().unwrap();
    let ping = format!("ping {local} -> {remote}");
    sock.send_to(ping.as_bytes(), remote).unwrap();

    let pkt = recv_matching(port, pool, |d| {
        parse(d).is_some_and(|u| u.src == local && u.dst == remote)
    });
    assert!(pkt.len() <= port.mtu());
    let udp = parse(pkt.data()).unwrap();
    assert_eq!(udp.payload, ping.as_bytes());
    pool.put(pkt);

    let pong = format!("pong {remote} -> {local}");
    send_one(
        port,
        pool,
        &raise(&build_udp(remote, local, pong.as_bytes())),
    );
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, remote);
    assert_eq!(&buf[..n], pong.as_bytes());
}

#[test]
fn tun_port_carries_ipv4_and_ipv6_udp_both_ways() {
    lab("tun_port_carries_ipv4_and_ipv6_udp_both_ways", || {
        let mut tun = Tun::open("iklabtun0", 1500).unwrap();
        let name = tun.name().to_owned();
        assert_eq!(name, "iklabtun0");
        assert_eq!(tun.medium(), Medium::Ip);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &name]);
        ip(&[
            "-6",
            "addr",
            "add",
            "fd00:5100::1/64",
            "dev",
            &name,
            "nodad",
        ]);
        ip(&["link", "set", "dev", &name, "up"]);
        let mut pool = PacketPool::default();

        let local = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 1).into(), 0);
        let remote = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 2).into(), 9);
        udp_round_trip(
            &mut tun,
            &mut pool,
            local,
            remote,
            parse_udp,
            <[u8]>::to_vec,
        );

        let v6 = |last| Ipv6Addr::new(0xfd00, 0x5100, 0, 0, 0, 0, 0, last);
        let local = SocketAddr::new(v6(1).into(), 0);
        let remote = SocketAddr::new(v6(2).into(), 9);
        udp_round_trip(
            &mut tun,
            &mut pool,
            local,
            remote,
            parse_udp,
            <[u8]>::to_vec,
        );

        let s = tun.stats();
        assert!(s.rx_packets >= 2 && s.tx_packets == 2, "{s:?}");
        assert_eq!(s.tx_dropped, 0);
        drop(tun);
        assert!(!link_exists(&name), "dropping the port removes the device");
    });
}

const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x02];
const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_ARP: [u8; 2] = [0x08, 0x06];

fn eth_header(dst: [u8; 6], src: [u8; 6], ethertype: [u8; 2]) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype[..]].concat()
}

/// The sender's MAC if `frame` is an ARP request from `sender` for `target`.
fn arp_request(frame: &[u8], sender: Ipv4Addr, target: Ipv4Addr) -> Option<[u8; 6]> {
    let arp = frame.get(14..42)?;
    let fixed_ok = frame[12..14] == ETH_ARP && arp[..8] == [0, 1, 8, 0, 6, 4, 0, 1];
    (fixed_ok && arp[14..18] == sender.octets() && arp[24..28] == target.octets())
        .then(|| arp[8..14].try_into().ok())
        .flatten()
}

#[test]
fn tap_port_answers_arp_and_carries_udp_both_ways() {
    lab("tap_port_answers_arp_and_carries_udp_both_ways", || {
        let mut tap = Tap::open("iklabtap0", 1514).unwrap();
        let name = tap.name().to_owned();
        assert_eq!(tap.medium(), Medium::Ethernet);
        // No IPv6 chatter (router solicitations, MLD) on this link.
        ip(&["link", "set", "dev", &name, "addrgenmode", "none"]);
        ip(&["addr", "add", "203.0.113.1/24", "dev", &name]);
        ip(&["link", "set", "dev", &name, "up"]);
        let mut pool = PacketPool::default();
        let (ours, peer) = (Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2));

        let sock = UdpSocket::bind((ours, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let local = sock.local_addr().unwrap();
        let remote = SocketAddr::new(peer.into(), 9);
        sock.send_to(b"ping over tap", remote).unwrap();

        // The kernel resolves the peer first: answer its ARP request.
        let req = recv_matching(&mut tap, &mut pool, |f| {
            arp_request(f, ours, peer).is_some()
        });
        let kernel_mac = arp_request(req.data(), ours, peer).unwrap();
        assert_eq!(req.data()[..6], [0xff; 6], "ARP request is broadcast");
        assert_eq!(req.data()[6..12], kernel_mac);
        pool.put(req);
        let mut reply = eth_header(kernel_mac, PEER_MAC, ETH_ARP);
        reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&PEER_MAC);
        reply.extend_from_slice(&peer.octets());
        reply.extend_from_slice(&kernel_mac);
        reply.extend_from_slice(&ours.octets());
        send_one(&mut tap, &mut pool, &reply);

        // Then the queued datagram comes, addressed to the MAC we gave.
        let parse = |f: &[u8]| {
            let to_peer = f.len() > 14
                && f[..6] == PEER_MAC
                && f[6..12] == kernel_mac
                && f[12..14] == ETH_IPV4;
            if to_peer { parse_udp(&f[14..]) } else { None }
        };
        let frame = recv_matching(&mut tap, &mut pool, |f| {
            parse(f).is_some_and(|u| u.src == local && u.dst == remote)
        });
        assert!(frame.len() <= tap.mtu());
        let udp = parse(frame.data()).unwrap();
        assert_eq!(udp.payload, b"ping over tap");
        pool.put(frame);

        let mut pong = eth_header(kernel_mac, PEER_MAC, ETH_IPV4);
        pong.extend_from_slice(&build_udp(remote, local, b"pong over tap"));
        send_one(&mut tap, &mut pool, &pong);
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, remote);
        assert_eq!(&buf[..n], b"pong over tap");

        // The round trip helper works on frames too, now that the peer is resolved.
        let raise =
            |ipkt: &[u8]| [eth_header(kernel_mac, PEER_MAC, ETH_IPV4), ipkt.to_vec()].concat();
        udp_round_trip(
            &mut tap,
            &mut pool,
            SocketAddr::new(ours.into(), 0),
            SocketAddr::new(peer.into(), 7),
            parse,
            raise,
        );

        let s = tap.stats();
        assert_eq!((s.tx_packets, s.tx_dropped), (3, 0), "{s:?}");
        drop(tap);
        assert!(!link_exists(&name), "dropping the port removes the device");
    });
}
