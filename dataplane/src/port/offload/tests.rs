use super::*;

const SRC4: [u8; 4] = [198, 51, 100, 10];
const DST4: [u8; 4] = [203, 0, 113, 10];

/// A TCP/IPv4 packet with a 12-byte option block (timestamps), `payload` bytes and `flags`.
fn tcp4(seq: u32, id: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let hdr = 20 + 32;
    let mut p = vec![0u8; hdr + payload.len()];
    p[0] = 0x45;
    p[1] = 0x02; // ECT(0)
    put16(&mut p, 2, (hdr + payload.len()) as u16);
    put16(&mut p, 4, id);
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = TCP;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    let t = 20;
    put16(&mut p, t, 40000);
    put16(&mut p, t + 2, 5201);
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    p[t + 12] = 8 << 4;
    p[t + 13] = flags;
    put16(&mut p, t + 14, 502);
    p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
    p[hdr..].copy_from_slice(payload);
    let l = tcp_layout(&p).unwrap();
    let n = p.len();
    set_ip_len(&mut p, &l, n);
    set_tcp_checksum(&mut p, &l);
    p
}

/// The same over IPv6 (no options).
fn tcp6(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let hdr = 40 + 20;
    let mut p = vec![0u8; hdr + payload.len()];
    p[0] = 0x60;
    put16(&mut p, 4, (20 + payload.len()) as u16);
    p[6] = TCP;
    p[7] = 64;
    p[8] = 0xfd;
    p[23] = 1;
    p[24] = 0xfd;
    p[39] = 2;
    let t = 40;
    put16(&mut p, t, 40000);
    put16(&mut p, t + 2, 5201);
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 12] = 5 << 4;
    p[t + 13] = flags;
    put16(&mut p, t + 14, 502);
    p[hdr..].copy_from_slice(payload);
    let l = tcp_layout(&p).unwrap();
    set_tcp_checksum(&mut p, &l);
    p
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The TCP checksum of a whole segment verifies (sum 0).
fn tcp_ok(p: &[u8]) -> bool {
    let l = tcp_layout(p).unwrap();
    let sum = pseudo_sum(p, &l, p.len() - l.ip_len);
    checksum_finish(checksum_add(sum, &p[l.ip_len..])) == 0
}

fn ipv4_ok(p: &[u8]) -> bool {
    checksum_finish(checksum_add(0, &p[..20])) == 0
}

/// What the kernel hands over with TSO: the super-packet with only the pseudo-header sum in
/// its checksum field.
fn as_read(mut p: Vec<u8>, mss: u16) -> (VnetHdr, Vec<u8>) {
    let l = tcp_layout(&p).unwrap();
    let sum = pseudo_sum(&p, &l, p.len() - l.ip_len);
    put16(&mut p, l.ip_len + 16, !checksum_finish(sum));
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if l.v6 { GSO_TCPV6 } else { GSO_TCPV4 | GSO_ECN },
        hdr_len: l.hdr_len as u16,
        gso_size: mss,
        csum_start: l.ip_len as u16,
        csum_offset: 16,
    };
    (h, p)
}

#[test]
fn vnet_header_bytes_round_trip() {
    let h = VnetHdr {
        flags: 1,
        gso_type: 4,
        hdr_len: 60,
        gso_size: 1348,
        csum_start: 40,
        csum_offset: 16,
    };
    assert_eq!(VnetHdr::parse(&h.to_bytes()), Some(h));
    assert_eq!(VnetHdr::parse(&[0; 9]), None);
}

#[test]
fn a_tcpv4_super_packet_is_cut_like_the_kernels_tso() {
    let data = bytes(3 * 1000 + 500);
    let sup = tcp4(1_000_000, 77, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, &data);
    let (h, mut pkt) = as_read(sup, 1000);
    let mut pool = PacketPool::new(4096, 8);
    let mut out = Vec::new();
    assert_eq!(split(&h, &mut pkt, &mut pool, &mut out), Ok(4));
    let mut joined = Vec::new();
    for (i, p) in out.iter().enumerate() {
        let d = p.data();
        assert!(ipv4_ok(d) && tcp_ok(d), "segment {i} checksums");
        assert_eq!(usize::from(get16(d, 2)), d.len());
        assert_eq!(get16(d, 4), 77 + i as u16, "IPv4 Identification counts up");
        assert_eq!(get32(d, 24), 1_000_000 + 1000 * i as u32);
        let flags = d[33];
        assert_eq!(
            flags & (TCP_FIN | TCP_PSH) != 0,
            i == 3,
            "FIN and PSH on the last"
        );
        assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first");
        assert_eq!(d[1], 0x02, "ECN bits kept");
        joined.extend_from_slice(&d[52..]);
    }
    assert_eq!(joined, data);
    assert_eq!(out[3].len(), 52 + 500);
}

#[test]
fn a_tcpv6_super_packet_is_cut_too() {
    let data = bytes(2 * 1200 + 1);
    let (h, mut pkt) = as_read(tcp6(5, TCP_ACK, &data), 1200);
    let mut pool = PacketPool::new(4096, 8);
    let mut out = Vec::new();
    assert_eq!(split(&h, &mut pkt, &mut pool, &mut out), Ok(3));
    for (i, p) in out.iter().enumerate() {
        let d = p.data();
        assert!(tcp_ok(d), "segment {i}");
        assert_eq!(usize::from(get16(d, 4)) + 40, d.len());
        assert_eq!(get32(d, 44), 5 + 1200 * i as u32);
    }
}

#[test]
fn a_partial_checksum_without_gso_is_completed() {
    // UDP from a local socket with checksum offload: the field holds the pseudo-header sum.
    let mut p = vec![0u8; 28 + 11];
    p[0] = 0x45;
    let n = p.len() as u16;
    put16(&mut p, 2, n);
    p[9] = 17;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    put16(&mut p, 20, 5000);
    put16(&mut p, 22, 53);
    put16(&mut p, 24, 19);
    p[28..].copy_from_slice(b"hello world");
    let mut pseudo = checksum_add(checksum_add(0, &SRC4), &DST4);
    pseudo += 17 + 19;
    put16(&mut p, 26, !checksum_finish(pseudo));
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let mut pool = PacketPool::new(4096, 8);
    let mut out = Vec::new();
    assert_eq!(split(&h, &mut p, &mut pool, &mut out), Ok(1));
    let d = out[0].data();
    assert_eq!(
        checksum_finish(checksum_add(pseudo, &d[20..])),
        0,
        "UDP checksum valid"
    );
    // A checksum position past the end is refused.
    let bad = VnetHdr {
        csum_offset: 60,
        ..h
    };
    assert_eq!(
        split(&bad, &mut p, &mut pool, &mut out),
        Err(SplitError::Malformed)
    );
}

#[test]
fn bad_super_packets_are_refused_and_leave_nothing_behind() {
    let mut pool = PacketPool::new(4096, 8);
    let mut out = Vec::new();
    let (h, pkt) = as_read(tcp4(1, 1, TCP_ACK, &bytes(3000)), 1000);
    let cases: Vec<(VnetHdr, Vec<u8>)> = vec![
        (VnetHdr { gso_size: 0, ..h }, pkt.clone()),
        (
            VnetHdr {
                gso_type: GSO_TCPV6,
                ..h
            },
            pkt.clone(),
        ),
        (VnetHdr { gso_type: 3, ..h }, pkt.clone()), // UFO, never enabled
        (h, pkt[..30].to_vec()),
        (h, {
            let mut p = pkt.clone();
            p[9] = 17;
            p
        }),
        // Segments larger than a buffer.
        (
            VnetHdr {
                gso_size: 8000,
                ..h
            },
            as_read(tcp4(1, 1, TCP_ACK, &bytes(9000)), 8000).1,
        ),
    ];
    for (i, (h, mut p)) in cases.into_iter().enumerate() {
        assert!(split(&h, &mut p, &mut pool, &mut out).is_err(), "case {i}");
        assert!(out.is_empty(), "case {i}: no partial output");
    }
}

/// Decrypted segments joined into runs the way `send_burst` does.
fn runs(pkts: &mut [Vec<u8>]) -> Vec<(Run, usize)> {
    let mut v: Vec<(Run, usize)> = Vec::new();
    for i in 0..pkts.len() {
        let seg = Segment::parse(&pkts[i]);
        if let (Some(seg), Some((run, start))) = (seg, v.last_mut())
            && run.accepts(&pkts[*start], &seg, &pkts[i])
        {
            run.push(seg);
            continue;
        }
        match seg {
            Some(seg) => v.push((Run::new(seg), i)),
            None => v.push((
                Run::new(Segment {
                    payload: 0,
                    ..dummy()
                }),
                i,
            )),
        }
    }
    v
}

fn dummy() -> Segment {
    Segment {
        layout_v6: false,
        ip_len: 20,
        hdr_len: 40,
        seq: 0,
        payload: 0,
        id: 0,
        flags: 0,
    }
}

#[test]
fn consecutive_segments_of_a_flow_join_and_the_kernel_would_cut_them_back() {
    for v6 in [false, true] {
        let data = bytes(5 * 1000 + 300);
        let sup = if v6 {
            tcp6(9, TCP_ACK | TCP_PSH, &data)
        } else {
            tcp4(9, 300, TCP_ACK | TCP_PSH, &data)
        };
        let (h, mut pkt) = as_read(sup.clone(), 1000);
        let mut pool = PacketPool::new(4096, 16);
        let mut out = Vec::new();
        split(&h, &mut pkt, &mut pool, &mut out).unwrap();
        let mut segs: Vec<Vec<u8>> = out.iter().map(|p| p.data().to_vec()).collect();
        let r = runs(&mut segs);
        assert_eq!(r.len(), 1, "v6 {v6}: one run");
        let (run, _) = r[0];
        assert_eq!(run.count(), 6);
        let hdr_len = Segment::parse(&segs[0]).unwrap().hdr_len();
        let mut first = segs[0].clone();
        let vh = run.finish(&mut first);
        assert_eq!(vh.gso_size, 1000);
        assert_eq!(usize::from(vh.hdr_len), hdr_len);
        // The joined packet as the kernel will see it: first packet, then the others' payloads.
        let mut joined = first[..hdr_len].to_vec();
        joined.extend_from_slice(&first[hdr_len..]);
        for s in &segs[1..] {
            joined.extend_from_slice(&s[hdr_len..]);
        }
        assert_eq!(joined.len(), sup.len());
        // Equal to the original super-packet as read (partial checksum), and cut the same way.
        let (_, as_read_sup) = as_read(sup, 1000);
        assert!(
            joined == as_read_sup,
            "v6 {v6}: not the super-packet as read"
        );
        let mut again = Vec::new();
        split(&vh, &mut joined, &mut pool, &mut again).unwrap();
        let again: Vec<Vec<u8>> = again.iter().map(|p| p.data().to_vec()).collect();
        assert!(again == segs, "v6 {v6}: not the same segments");
    }
}

#[test]
fn what_must_not_be_joined_is_not() {
    let seg = |seq: u32, id: u16, flags: u8, n: usize| tcp4(seq, id, flags, &bytes(n));
    let count = |mut pkts: Vec<Vec<u8>>| {
        runs(&mut pkts)
            .into_iter()
            .map(|(r, _)| r.count())
            .collect::<Vec<_>>()
    };
    // The reference: three full segments join.
    assert_eq!(
        count(vec![
            seg(0, 1, TCP_ACK, 100),
            seg(100, 2, TCP_ACK, 100),
            seg(200, 3, TCP_ACK, 100)
        ]),
        [3]
    );
    // A gap in the sequence numbers.
    assert_eq!(
        count(vec![seg(0, 1, TCP_ACK, 100), seg(101, 2, TCP_ACK, 100)]),
        [1, 1]
    );
    // IPv4 Identification not the next one.
    assert_eq!(
        count(vec![seg(0, 1, TCP_ACK, 100), seg(100, 9, TCP_ACK, 100)]),
        [1, 1]
    );
    // PSH ends a run; a short segment ends it too.
    assert_eq!(
        count(vec![
            seg(0, 1, TCP_ACK | TCP_PSH, 100),
            seg(100, 2, TCP_ACK, 100)
        ]),
        [1, 1]
    );
    assert_eq!(
        count(vec![
            seg(0, 1, TCP_ACK, 100),
            seg(100, 2, TCP_ACK, 50),
            seg(150, 3, TCP_ACK, 50)
        ]),
        [2, 1]
    );
    // A larger segment after the first.
    assert_eq!(
        count(vec![seg(0, 1, TCP_ACK, 100), seg(100, 2, TCP_ACK, 200)]),
        [1, 1]
    );
    // Other flags, no payload, a bad checksum: not even a candidate.
    assert!(Segment::parse(&seg(0, 1, TCP_ACK | TCP_FIN, 100)).is_none());
    assert!(Segment::parse(&seg(0, 1, TCP_ACK, 0)).is_none());
    assert!(Segment::parse(&seg(0, 1, 0x02, 100)).is_none());
    let mut bad = seg(0, 1, TCP_ACK, 100);
    bad[60] ^= 1;
    assert!(
        Segment::parse(&bad).is_none(),
        "a corrupted segment is never joined"
    );
    // Different headers: another port, another window, other options, another TTL.
    for (at, v) in [(21, 1u8), (35, 7), (47, 3), (8, 63)] {
        let mut b = seg(100, 2, TCP_ACK, 100);
        b[at] = v;
        let l = tcp_layout(&b).unwrap();
        let n = b.len();
        set_ip_len(&mut b, &l, n);
        set_tcp_checksum(&mut b, &l);
        assert_eq!(count(vec![seg(0, 1, TCP_ACK, 100), b]), [1, 1], "byte {at}");
    }
    // Never past 64 KiB.
    let pkts: Vec<Vec<u8>> = (0..50u32)
        .map(|i| seg(i * 1400, i as u16, TCP_ACK, 1400))
        .collect();
    let c = count(pkts);
    assert!(c.iter().all(|&n| n * 1400 + 52 <= MAX_SUPER), "{c:?}");
    assert_eq!(c.iter().sum::<usize>(), 50);
}

#[test]
fn a_run_of_one_is_written_as_it_is() {
    let mut p = tcp4(0, 1, TCP_ACK, &bytes(100));
    let before = p.clone();
    let run = Run::new(Segment::parse(&p).unwrap());
    assert_eq!(run.finish(&mut p), VnetHdr::default());
    assert_eq!(p, before);
}

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the device hands over, cutting it never panics, and every segment it makes
        /// fits a buffer; whatever was decrypted, joining never panics either.
        #[test]
        fn split_and_join_never_panic(
            flags in 0u8..4, gso_type in prop::sample::select(vec![0u8, 1, 3, 4, 0x81, 0x84, 5]),
            gso_size in 0u16..3000, csum_start in 0u16..200, csum_offset in 0u16..40,
            mut bytes in prop::collection::vec(any::<u8>(), 0..6000),
            tcp in any::<bool>(),
        ) {
            if tcp && bytes.len() >= 60 {
                // Often a plausible TCP header, so the cutting code runs.
                bytes[0] = 0x45;
                bytes[9] = TCP;
                bytes[32] = 0x50;
            }
            let h = VnetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
            let mut pool = PacketPool::new(4096, 8);
            let mut out = Vec::new();
            if let Ok(n) = split(&h, &mut bytes, &mut pool, &mut out) {
                prop_assert_eq!(n, out.len());
            }
            let segs: Vec<Vec<u8>> = out.iter().map(|p| p.data().to_vec()).collect();
            if let Some(first) = segs.first()
                && let Some(s) = Segment::parse(first)
            {
                let mut run = Run::new(s);
                for p in &segs[1..] {
                    if let Some(n) = Segment::parse(p)
                        && run.accepts(first, &n, p)
                    {
                        run.push(n);
                    }
                }
                let mut f = first.clone();
                let _ = run.finish(&mut f);
            }
        }
    }
}
