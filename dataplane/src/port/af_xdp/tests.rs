use super::*;
use crate::port::tun::testutil::in_fresh_netns;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

const OURS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const MAC: [u8; 6] = [0x02, 0, 0x5e, 0, 0x53, 2];

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

const OURS6: &str = "fd00:5e::2";

/// Opens the port on `xb`, or says why not.
fn open_on_xb() -> Option<XskPort> {
    let mut cfg = XskConfig::new("xb", 1514);
    cfg.steal.ipv4 = Some(OURS);
    cfg.steal.ipv6 = OURS6.parse().ok();
    cfg.frames = 256;
    match XskPort::open(&cfg) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("SKIP: cannot open an AF_XDP port: {e}");
            None
        }
    }
}

/// A veth pair with `queues` queues each way: `xa` (the kernel, 198.51.100.1, fd00:5e::1) and
/// `xb` (198.51.100.3 and fd00:5e::3 for the kernel; the port answers for 198.51.100.2 on it).
fn veth_pair(queues: u32) -> bool {
    let q = queues.to_string();
    let qs = ["numtxqueues", &q, "numrxqueues", &q];
    let mut add = vec!["link", "add", "xa"];
    add.extend(qs);
    add.extend(["type", "veth", "peer", "name", "xb"]);
    add.extend(qs);
    ip(&["link", "set", "lo", "up"])
        && ip(&add)
        && ip(&["addr", "add", "198.51.100.1/24", "dev", "xa"])
        && ip(&["addr", "add", "198.51.100.3/24", "dev", "xb"])
        && ip(&["addr", "add", "fd00:5e::1/64", "dev", "xa", "nodad"])
        && ip(&["addr", "add", "fd00:5e::3/64", "dev", "xb", "nodad"])
        && ip(&["link", "set", "xa", "up"])
        && ip(&["link", "set", "xb", "up"])
}

/// The answer of a tiny host at OURS: ARP replies and ICMP echo replies.
fn answer(frame: &[u8]) -> Option<Vec<u8>> {
    let eth_src = frame.get(6..12)?;
    match frame.get(12..14)? {
        [0x08, 0x06] => {
            let arp = frame.get(14..42)?;
            if arp[6..8] != [0, 1] || arp[24..28] != OURS.octets() {
                return None;
            }
            let mut r = Vec::with_capacity(42);
            r.extend_from_slice(eth_src);
            r.extend_from_slice(&MAC);
            r.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&MAC);
            r.extend_from_slice(&OURS.octets());
            r.extend_from_slice(&arp[8..18]);
            Some(r)
        }
        [0x08, 0x00] => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]));
            let ipv4 = frame.get(14..14 + total)?;
            if ipv4[9] != 1 || ipv4.get(ihl)? != &8 || ipv4[16..20] != OURS.octets() {
                return None;
            }
            let mut r = Vec::with_capacity(14 + total);
            r.extend_from_slice(eth_src);
            r.extend_from_slice(&MAC);
            r.extend_from_slice(&[0x08, 0x00]);
            let mut ip = ipv4.to_vec();
            ip.copy_within(12..16, 16);
            ip[12..16].copy_from_slice(&ipv4[16..20]);
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&ip[..ihl]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ip[ihl] = 0; // echo reply
            ip[ihl + 2..ihl + 4].copy_from_slice(&[0, 0]);
            let c = checksum(&ip[ihl..]);
            ip[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
            r.extend_from_slice(&ip);
            Some(r)
        }
        _ => None,
    }
}

/// Frames received on `xa`, as this thread's namespace counts them (sysfs would show the
/// process's namespace).
fn xa_rx_packets() -> u64 {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with("xa:"))
        .unwrap();
    line.split_whitespace()
        .nth(2)
        .unwrap()
        .parse::<u64>()
        .unwrap()
}

/// `n` numbered broadcast frames of the local experimental EtherType.
fn broadcasts(pool: &mut PacketPool, n: u16) -> VecDeque<Packet> {
    (0..n)
        .map(|i| {
            let mut p = pool.get();
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&MAC);
            f.extend_from_slice(&[0x88, 0xb5]);
            f.extend_from_slice(&i.to_be_bytes());
            f.resize(60, 0);
            assert!(p.fill_from(&f));
            p
        })
        .collect()
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Serves ARP and ping on the port while `ping` runs against `target`; returns whether ping
/// got its answers and the frames the port saw.
fn ping_through(port: &mut XskPort, target: &str) -> (bool, Vec<Vec<u8>>) {
    let mut child = Command::new("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", "-q", target])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    let mut pool = PacketPool::default();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        let mut burst = Vec::new();
        port.recv_burst(&mut pool, &mut burst, 32).unwrap();
        let mut out = VecDeque::new();
        for p in burst {
            seen.push(p.data().to_vec());
            if let Some(r) = answer(p.data()) {
                let mut q = pool.get();
                assert!(q.fill_from(&r));
                out.push_back(q);
            }
            pool.put(p);
        }
        while !out.is_empty() {
            port.send_burst(&mut pool, &mut out).unwrap();
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    (ok, seen)
}

#[test]
fn bad_configs_are_refused_before_anything_is_attached() {
    let mut cfg = XskConfig::new("lo", MAX_FRAME + 1);
    assert!(matches!(XskPort::open(&cfg), Err(XskError::Config(_))));
    cfg.mtu = 1514;
    cfg.frames = 1000;
    assert!(matches!(XskPort::open(&cfg), Err(XskError::Config(_))));
    cfg.frames = 4096;
    cfg.interface = "a\0b".into();
    assert!(matches!(XskPort::open(&cfg), Err(XskError::Config(_))));
    cfg.interface = "no-such-if0".into();
    let e = XskPort::open(&cfg).unwrap_err();
    assert!(matches!(e, XskError::NoInterface(_)), "{e}");
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
}

/// A real veth with the program attached: the kernel on the other end resolves and pings the
/// port's address, answered through the AF_XDP socket; the kernel's own address on the same
/// interface is still the kernel's (the program passes it); dropping the port detaches the
/// program.
#[test]
fn an_xsk_port_gets_its_own_frames_and_leaves_the_rest_to_the_kernel() {
    in_fresh_netns(|| {
        if !veth_pair(1) {
            println!("SKIP: cannot create a veth pair");
            return;
        }
        let Some(mut port) = open_on_xb() else { return };
        assert_eq!(port.medium(), Medium::Ethernet);
        assert_eq!(port.queues(), 1);
        assert_eq!(
            port.attach_mode(),
            AttachMode::Native,
            "veth has native XDP"
        );
        assert!(!port.zero_copy(), "veth has no zero-copy AF_XDP");

        let (ok, seen) = ping_through(&mut port, "198.51.100.2");
        assert!(
            ok,
            "ping through the AF_XDP port failed; saw {} frames",
            seen.len()
        );
        assert!(
            seen.iter().any(|f| f.get(12..14) == Some(&[0x08, 0x06])),
            "no ARP"
        );
        let s = port.stats();
        assert!(s.rx_packets >= 4 && s.tx_packets >= 4, "{s:?}");
        assert_eq!(s.tx_too_big + s.rx_too_big + s.tx_kick_errors, 0, "{s:?}");

        // The kernel's own address on the same interface: the program passes it.
        let (ok, seen) = ping_through(&mut port, "198.51.100.3");
        assert!(
            ok,
            "the kernel's address on the XDP interface stopped working"
        );
        let stolen = seen
            .iter()
            .filter(|f| f.get(30..34) == Some(&[198, 51, 100, 3]))
            .count();
        assert_eq!(
            stolen, 0,
            "frames for the kernel's address reached the port"
        );

        // A frame larger than the MTU is dropped and counted, not sent.
        let mut pool = PacketPool::default();
        let mut big = pool.get();
        big.prepare(1515);
        let mut q = VecDeque::from([big]);
        assert_eq!(port.send_burst(&mut pool, &mut q).unwrap(), 1);
        assert_eq!(port.stats().tx_too_big, 1);

        // One burst of 300 frames leaves in that one call: the kernel sends 32 per kick in copy
        // mode, so the port kicks until it has taken them all.
        let before = xa_rx_packets();
        let mut q = broadcasts(&mut pool, 300);
        assert_eq!(port.send_burst(&mut pool, &mut q).unwrap(), 300);
        let deadline = Instant::now() + Duration::from_secs(2);
        while xa_rx_packets() < before + 300 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            xa_rx_packets() - before,
            300,
            "frames left in the TX ring: {:?}",
            port.stats()
        );

        drop(port);
        let out = Command::new("ip")
            .args(["link", "show", "xb"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("prog/xdp"),
            "the program is still attached: {text}"
        );
    });
}

/// IPv6: the neighbour solicitation for the port's address (to its solicited-node group) reaches
/// the port; the kernel's own IPv6 address on the interface still answers.
#[test]
fn an_xsk_port_gets_the_neighbour_solicitations_for_its_ipv6_address() {
    in_fresh_netns(|| {
        if !veth_pair(1) {
            println!("SKIP: cannot create a veth pair");
            return;
        }
        let Some(mut port) = open_on_xb() else { return };
        // Nobody answers for the port's address here: ping fails, but its solicitation came.
        let (_, seen) = ping_through(&mut port, OURS6);
        let group = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2];
        let ns = seen.iter().any(|f| {
            f.get(12..14) == Some(&[0x86, 0xdd])
                && f.get(38..54) == Some(&group[..])
                && f.get(54) == Some(&135)
        });
        assert!(
            ns,
            "no neighbour solicitation for {OURS6} among {} frames",
            seen.len()
        );
        let (ok, seen) = ping_through(&mut port, "fd00:5e::3");
        assert!(
            ok,
            "the kernel's IPv6 address on the XDP interface stopped working"
        );
        let mine = [0xfd, 0, 0, 0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        assert!(
            !seen.iter().any(|f| f.get(38..54) == Some(&mine[..])),
            "frames for the kernel's IPv6 address reached the port"
        );
    });
}

/// Two receive queues: a socket on each, and the port still answers (whichever queue the
/// kernel's frames arrive on).
#[test]
fn an_xsk_port_binds_every_receive_queue() {
    in_fresh_netns(|| {
        if !veth_pair(2) {
            println!("SKIP: cannot create a two-queue veth pair");
            return;
        }
        let Some(mut port) = open_on_xb() else { return };
        assert_eq!(port.queues(), 2);
        let (ok, seen) = ping_through(&mut port, "198.51.100.2");
        assert!(
            ok,
            "ping through a two-queue AF_XDP port failed; saw {} frames",
            seen.len()
        );
    });
}

/// Sends raw Ethernet frames out of `xa` (AF_PACKET, in this thread's namespace).
fn inject(frames: &[Vec<u8>]) {
    // SAFETY: plain socket calls on a descriptor this function owns; the address and the
    // buffers outlive each call.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        let name = CString::new("xa").unwrap();
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        sll.sll_halen = 6;
        for f in frames {
            let r = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, f.len() as isize, "{}", io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

/// Hostile and malformed frames: the program reads within bounds (the verifier holds it to
/// that) and steals only complete headers addressed to the stack; truncated ones go to the
/// kernel, which drops them. A well-formed frame sent after them arrives.
#[test]
fn truncated_frames_are_left_to_the_kernel() {
    in_fresh_netns(|| {
        if !veth_pair(1) {
            println!("SKIP: cannot create a veth pair");
            return;
        }
        let Some(mut port) = open_on_xb() else { return };
        let eth = |ty: [u8; 2], body: &[u8]| {
            let mut f = MAC.to_vec();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&ty);
            f.extend_from_slice(body);
            f
        };
        let mut ipv4 = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 1];
        ipv4.extend_from_slice(&OURS.octets());
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&[0; 16]);
        arp.extend_from_slice(&OURS.octets());
        let six: Vec<u8> = {
            let mut h = vec![0x60, 0, 0, 0, 0, 0, 58, 64];
            h.extend_from_slice(&[0; 16]);
            h.extend_from_slice(&OURS6.parse::<std::net::Ipv6Addr>().unwrap().octets());
            h
        };
        inject(&[
            eth([0x08, 0x00], &[]), // an Ethernet header and nothing else (shorter ones the kernel refuses to send)
            eth([0x08, 0x00], &ipv4[..19]), // IPv4 one byte short of its destination
            eth([0x08, 0x06], &arp[..27]), // ARP one byte short of its target
            eth([0x86, 0xdd], &six[..39]), // IPv6 one byte short of its destination
            eth([0x81, 0x00], &ipv4), // a VLAN tag: not ours to take
            eth([0x08, 0x00], &ipv4), // well-formed, to us: taken
        ]);
        let mut pool = PacketPool::default();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.is_empty() && Instant::now() < deadline {
            port.recv_burst(&mut pool, &mut got, 32).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        port.recv_burst(&mut pool, &mut got, 32).unwrap();
        let frames: Vec<&[u8]> = got
            .iter()
            .map(|p| p.data())
            .filter(|f| f.get(6..12) == Some(&[0x02, 0, 0, 0, 0, 1][..]))
            .collect();
        // veth pads short frames to 60 bytes: compare the part that was sent.
        assert_eq!(frames.len(), 1, "{frames:02x?}");
        assert_eq!(&frames[0][..34], &eth([0x08, 0x00], &ipv4)[..]);
    });
}

/// A UDP datagram from 198.51.100.1:`sport` to the port's address, as a frame.
fn udp_frame(sport: u16) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 1];
    ip.extend_from_slice(&OURS.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&[0, 9, 0, 12, 0, 0, 1, 2, 3, 4]);
    f.extend_from_slice(&ip);
    f
}

/// `share(2)` over `queues` receive queues: each frame of a flow reaches the part its flow
/// hashes to, exactly once; ARP reaches both; a part without a queue of its own sends through
/// the other.
fn shared_parts(queues: u32) {
    in_fresh_netns(move || {
        if !veth_pair(queues) {
            println!("SKIP: cannot create a veth pair");
            return;
        }
        let Some(port) = open_on_xb() else { return };
        let mut parts = port.share(2);
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts.iter().map(|p| p.queues()).sum::<usize>(),
            queues as usize
        );
        let mut frames: Vec<Vec<u8>> = (1000..1040).map(udp_frame).collect();
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 198, 51, 100, 1, 0, 0, 0, 0, 0, 0]);
        arp.extend_from_slice(&OURS.octets());
        frames.push(arp);
        inject(&frames);
        let mut pool = PacketPool::default();
        let mut seen: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        let deadline = Instant::now() + Duration::from_secs(3);
        while seen[0].len() + seen[1].len() < 42 && Instant::now() < deadline {
            for (i, part) in parts.iter_mut().enumerate() {
                let mut got = Vec::new();
                part.recv_burst(&mut pool, &mut got, 64).unwrap();
                seen[i].extend(got.iter().map(|p| p.data().to_vec()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for (k, f) in frames.iter().take(40).enumerate() {
            let owner = crate::port::steer::flow_hash(f, Medium::Ethernet).unwrap() as usize % 2;
            let at = |i: usize| {
                seen[i]
                    .iter()
                    .filter(|g| g.get(..f.len()) == Some(&f[..]))
                    .count()
            };
            assert_eq!(
                (at(owner), at(1 - owner)),
                (1, 0),
                "flow {k} (owner {owner})"
            );
        }
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(
                s.iter().filter(|g| g[12..14] == [0x08, 0x06]).count(),
                1,
                "ARP at part {i}"
            );
        }

        // Part 1 sends 100 frames; with one queue it has none and part 0 sends them for it.
        let before = xa_rx_packets();
        let mut q = broadcasts(&mut pool, 100);
        assert_eq!(parts[1].send_burst(&mut pool, &mut q).unwrap(), 100);
        let deadline = Instant::now() + Duration::from_secs(2);
        while xa_rx_packets() < before + 100 && Instant::now() < deadline {
            for part in parts.iter_mut() {
                part.recv_burst(&mut pool, &mut Vec::new(), 64).unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(xa_rx_packets() - before, 100);
        let dropped: u64 = parts.iter().map(|p| p.stats().shared_dropped).sum();
        assert_eq!(dropped, 0);
    });
}

#[test]
fn a_shared_port_with_one_queue_gives_each_worker_its_flows() {
    shared_parts(1);
}

#[test]
fn a_shared_port_with_a_queue_per_worker_gives_each_worker_its_flows() {
    shared_parts(2);
}
