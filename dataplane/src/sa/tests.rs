//! ESP tests: published vectors on both backends, round trips, tampering, replay, sequence limits.

use super::*;
use crate::crypto::{Backend, Keymat, Suite};
use crate::sa::replay::ReplayError;
use crate::wire::esp::{ESP_PREFIX_LEN, next_header};
use proptest::prelude::*;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};

const HEAD: usize = 64;

pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn suite_for_bits(bits: u64) -> Option<Suite> {
    match bits {
        128 => Some(Suite::Aes128Gcm16),
        256 => Some(Suite::Aes256Gcm16),
        _ => None, // AES-192 is not offered (RFC 8221 lists only 128/256 as MUST).
    }
}

fn params(
    spi: u32,
    keymat: &[u8],
    suite: Suite,
    backend: Backend,
    esn: bool,
    mode: Mode,
) -> SaParams {
    SaParams {
        spi,
        keymat: Keymat::new(suite, keymat).expect("keymat"),
        backend,
        esn,
        mode,
        replay_window: replay::DEFAULT_WINDOW,
    }
}

fn transport_v4() -> Mode {
    Mode::Transport {
        src: Ipv4Addr::new(192, 0, 2, 1).into(),
        dst: Ipv4Addr::new(192, 0, 2, 2).into(),
        fix_checksums: false,
    }
}

/// draft-mcgrew-gcm-test-01 §4 (copied into testdata/ with its source): every AES-128/256-GCM case
/// decapsulates on both backends, and encapsulation with the case's IV reproduces the packet byte
/// for byte. The cases carry Next Header 1, so they run as transport mode.
#[test]
fn mcgrew_gcm_esp_vectors_both_backends() {
    let v: Value =
        serde_json::from_str(include_str!("../../testdata/esp-aes-gcm-mcgrew.json")).expect("json");
    let mut ran = 0;
    for case in v["cases"].as_array().expect("cases") {
        if case["algorithm"] != "AES-GCM-ESP" {
            continue;
        }
        let Some(suite) = suite_for_bits(case["aes_key_bits"].as_u64().expect("bits")) else {
            continue;
        };
        let keymat = hex(case["keymat_rfc4106"].as_str().expect("keymat"));
        let spi = u32::from_be_bytes(
            hex(case["spi"].as_str().expect("spi"))
                .try_into()
                .expect("4"),
        );
        let esn = case["esn"].as_bool().expect("esn");
        let seq_bytes = hex(case["seq"].as_str().expect("seq"));
        let seq = seq_bytes.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        let packet = hex(case["packet"].as_str().expect("packet"));
        let payload = hex(case["inner_payload"].as_str().expect("payload"));
        let nh = case["inner_next_header"].as_u64().expect("nh") as u8;
        let iv: [u8; 8] = hex(case["iv"].as_str().expect("iv"))
            .try_into()
            .expect("iv8");
        for backend in Backend::ALL {
            // The bare AEAD reproduces ciphertext ‖ ICV from nonce, AAD and plaintext.
            let km = Keymat::new(suite, &keymat).expect("keymat");
            let key = km.build(backend).expect("key");
            let mut pt = hex(case["plaintext"].as_str().expect("pt"));
            let aad = hex(case["aad"].as_str().expect("aad"));
            let icv = key
                .aead()
                .seal(&key.nonce(&iv), &aad, &mut pt)
                .expect("seal");
            pt.extend_from_slice(&icv);
            assert_eq!(
                pt,
                hex(case["ctext_tag"].as_str().expect("ct")),
                "case {}",
                case["id"]
            );
            ran += 1;
            let p = params(spi, &keymat, suite, backend, esn, transport_v4());
            if spi < crate::wire::esp::MIN_SPI {
                // Case 4 uses SPI 0, which RFC 9329 §3.2 (R-3.2-a) forbids on TCP: refused.
                assert_eq!(InboundSa::new(&p).err(), Some(SaError::ReservedSpi(spi)));
                continue;
            }
            // Decapsulation.
            let mut inb = InboundSa::new(&p).expect("sa");
            if seq > 1 {
                inb.set_window_top_for_test(seq - 1);
            }
            let mut buf = vec![0u8; HEAD];
            buf.extend_from_slice(&packet);
            let end = buf.len();
            let got = inb.decap(&mut buf, HEAD..end);
            let Ok(Decapped::Packet {
                range,
                next_header,
                seq: s,
            }) = got
            else {
                panic!("case {} {backend}: {got:?}", case["id"]);
            };
            assert_eq!(next_header, nh);
            assert_eq!(s, seq, "case {}", case["id"]);
            assert_eq!(
                &buf[range.start + 20..range.end],
                &payload[..],
                "case {}",
                case["id"]
            );
            // Encapsulation with the vector's IV gives the same bytes.
            let mut out = OutboundSa::new(&p).expect("sa");
            out.set_seq_for_test(seq - 1);
            let mut buf = vec![0u8; HEAD + payload.len() + OutboundSa::TAILROOM];
            buf[HEAD..HEAD + payload.len()].copy_from_slice(&payload);
            let r = out
                .encap_payload_with_iv(&mut buf, HEAD..HEAD + payload.len(), nh, iv)
                .expect("encap");
            assert_eq!(&buf[r], &packet[..], "case {} {backend}", case["id"]);
            ran += 1;
        }
    }
    // 15 AES-128/256 GCM cases (AEAD level), 14 of them with a usable SPI (ESP level), two backends.
    assert_eq!(ran, 2 * (15 + 14));
}

/// RFC 7634 Appendix A: the ChaCha20-Poly1305 ESP tunnel-mode example, on both backends.
#[test]
fn rfc7634_appendix_a_esp_both_backends() {
    let v: Value = serde_json::from_str(include_str!("../../testdata/esp-chacha20-rfc7634.json"))
        .expect("json");
    let e = &v["esp_example"];
    let keymat = hex(e["keymat"].as_str().expect("keymat"));
    let expected = hex(e["esp_packet_from_spi"].as_str().expect("packet"));
    let source = hex(e["source_packet"].as_str().expect("source"));
    let iv: [u8; 8] = hex(e["iv"].as_str().expect("iv")).try_into().expect("iv8");
    for backend in Backend::ALL {
        let p = params(
            0x0102_0304,
            &keymat,
            Suite::ChaCha20Poly1305,
            backend,
            false,
            Mode::Tunnel,
        );
        let mut out = OutboundSa::new(&p).expect("sa");
        out.set_seq_for_test(4);
        let mut buf = vec![0u8; HEAD + source.len() + OutboundSa::TAILROOM];
        buf[HEAD..HEAD + source.len()].copy_from_slice(&source);
        let r = out
            .encap_payload_with_iv(&mut buf, HEAD..HEAD + source.len(), next_header::IPV4, iv)
            .expect("encap");
        assert_eq!(&buf[r.clone()], &expected[..], "{backend}");
        let mut inb = InboundSa::new(&p).expect("sa");
        let got = inb.decap(&mut buf, r).expect("decap");
        let Decapped::Packet {
            range,
            next_header,
            seq,
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!((next_header, seq), (4, 5));
        assert_eq!(&buf[range], &source[..]);
    }
}

fn ipv4_packet(body: &[u8]) -> Vec<u8> {
    let total = 20 + body.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 51, 100, 1]);
    p[16..20].copy_from_slice(&[203, 0, 113, 1]);
    p.extend_from_slice(body);
    p
}

fn ipv6_packet(body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
    p[24..40].copy_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
    p.extend_from_slice(body);
    p
}

fn keymat_for(suite: Suite, seed: u8) -> Vec<u8> {
    (0..suite.keymat_len())
        .map(|i| seed.wrapping_add(i as u8 * 7))
        .collect()
}

/// Places `inner` in a buffer with head- and tailroom; returns the buffer and the inner range.
fn framed(inner: &[u8]) -> (Vec<u8>, core::ops::Range<usize>) {
    let mut buf = vec![0u8; HEAD + inner.len() + OutboundSa::TAILROOM];
    buf[HEAD..HEAD + inner.len()].copy_from_slice(inner);
    (buf, HEAD..HEAD + inner.len())
}

fn pair(suite: Suite, backend: Backend, esn: bool, mode: Mode) -> (OutboundSa, InboundSa) {
    let p = params(0x1000, &keymat_for(suite, 3), suite, backend, esn, mode);
    (
        OutboundSa::new(&p).expect("out"),
        InboundSa::new(&p).expect("in"),
    )
}

#[test]
fn r_3_2_a_reserved_spis_refused() {
    let km = keymat_for(Suite::Aes128Gcm16, 1);
    for spi in [0, 1, 255] {
        let p = params(
            spi,
            &km,
            Suite::Aes128Gcm16,
            Backend::RustCrypto,
            false,
            Mode::Tunnel,
        );
        assert_eq!(OutboundSa::new(&p).err(), Some(SaError::ReservedSpi(spi)));
        assert_eq!(InboundSa::new(&p).err(), Some(SaError::ReservedSpi(spi)));
    }
}

#[test]
fn sequence_exhaustion_32_bit_never_wraps() {
    let (mut out, _) = pair(Suite::Aes128Gcm16, Backend::AwsLc, false, Mode::Tunnel);
    out.set_seq_for_test(u64::from(u32::MAX) - 1);
    let inner = ipv4_packet(&[1, 2, 3]);
    let (mut buf, r) = framed(&inner);
    out.encap(&mut buf, r.clone())
        .expect("last sequence number");
    assert_eq!(out.seq(), u64::from(u32::MAX));
    assert_eq!(out.seq_remaining(), 0);
    let (mut buf, r) = framed(&inner);
    assert_eq!(out.encap(&mut buf, r), Err(EncapError::SequenceExhausted));
    assert_eq!(out.seq(), u64::from(u32::MAX), "counter did not cycle");
}

#[test]
fn esn_crosses_32_bit_boundary_and_exhausts_at_u64_max() {
    for backend in Backend::ALL {
        let (mut out, mut inb) = pair(Suite::Aes256Gcm16, backend, true, Mode::Tunnel);
        let inner = ipv4_packet(&[9; 100]);
        // Receive across the 2^32 boundary: the high half is inferred (RFC 4303 App. A2.2).
        let start = u64::from(u32::MAX) - 3;
        out.set_seq_for_test(start);
        inb.set_window_top_for_test(start);
        for _ in 0..8 {
            let (mut buf, r) = framed(&inner);
            let r = out.encap(&mut buf, r).expect("encap");
            let got = inb.decap(&mut buf, r).expect("decap");
            let Decapped::Packet { seq, .. } = got else {
                panic!()
            };
            assert_eq!(seq, out.seq());
        }
        assert!(out.seq() > u64::from(u32::MAX));
        out.set_seq_for_test(u64::MAX - 1);
        let (mut buf, r) = framed(&inner);
        out.encap(&mut buf, r).expect("last");
        let (mut buf, r) = framed(&inner);
        assert_eq!(out.encap(&mut buf, r), Err(EncapError::SequenceExhausted));
    }
}

#[test]
fn esn_inference_cases() {
    let (_, mut inb) = pair(Suite::Aes128Gcm16, Backend::RustCrypto, true, Mode::Tunnel);
    // Fresh window (top 0): low values map to subspace 0.
    assert_eq!(inb.infer_seq(5), 5);
    // Case A: window within one subspace.
    inb.set_window_top_for_test((7 << 32) | 5000);
    assert_eq!(inb.infer_seq(4500), (7 << 32) | 4500);
    assert_eq!(
        inb.infer_seq(3000),
        (8 << 32) | 3000,
        "below the window: next subspace"
    );
    // Case B: window straddles a boundary.
    let (_, mut inb) = pair(Suite::Aes128Gcm16, Backend::RustCrypto, true, Mode::Tunnel);
    inb.set_window_top_for_test((9 << 32) | 10);
    assert_eq!(
        inb.infer_seq(u32::MAX - 5),
        (8 << 32) | u64::from(u32::MAX - 5)
    );
    assert_eq!(inb.infer_seq(200), (9 << 32) | 200);
}

#[test]
fn replay_and_window_checked_after_icv() {
    let (mut out, mut inb) = pair(Suite::Aes128Gcm16, Backend::AwsLc, false, Mode::Tunnel);
    let inner = ipv4_packet(&[7; 40]);
    let (mut buf, r) = framed(&inner);
    let r = out.encap(&mut buf, r).expect("encap");
    let pristine = buf.clone();
    inb.decap(&mut buf, r.clone()).expect("first");
    let mut again = pristine.clone();
    assert_eq!(
        inb.decap(&mut again, r.clone()),
        Err(DecapError::Replay(ReplayError::Duplicate))
    );
    // A forged packet far ahead must not move the window: its ICV fails first.
    let mut forged = pristine.clone();
    forged[r.start + 4..r.start + 8].copy_from_slice(&5000u32.to_be_bytes());
    assert_eq!(
        inb.decap(&mut forged, r.clone()),
        Err(DecapError::Authentication)
    );
    assert_eq!(inb.window().top(), 1);
}

#[test]
fn dummy_packets_dropped_silently() {
    for backend in Backend::ALL {
        let (mut out, mut inb) = pair(Suite::ChaCha20Poly1305, backend, false, Mode::Tunnel);
        let mut buf = vec![0u8; HEAD + 50 + OutboundSa::TAILROOM];
        let r = out.encap_dummy(&mut buf, HEAD, 50).expect("dummy");
        assert_eq!(inb.decap(&mut buf, r), Ok(Decapped::Dummy { seq: 1 }));
        assert_eq!(inb.counters().1, 0, "no inner bytes delivered");
    }
}

#[test]
fn tfc_padding_tolerated_on_receive() {
    for backend in Backend::ALL {
        let (mut out, mut inb) = pair(Suite::Aes256Gcm16, backend, false, Mode::Tunnel);
        let inner = ipv4_packet(&[0x5a; 33]);
        // Inner packet followed by 64 bytes of TFC padding, all inside the ESP payload.
        let mut padded = inner.clone();
        padded.extend_from_slice(&[0u8; 64]);
        let (mut buf, r) = framed(&padded);
        let r = out
            .encap_payload(&mut buf, r, next_header::IPV4)
            .expect("encap");
        let Decapped::Packet { range, .. } = inb.decap(&mut buf, r).expect("decap") else {
            panic!()
        };
        assert_eq!(&buf[range], &inner[..]);
    }
}

#[test]
fn bad_padding_and_next_header_rejected() {
    use crate::crypto::ICV_LEN;
    for backend in Backend::ALL {
        let suite = Suite::Aes128Gcm16;
        let km = Keymat::new(suite, &keymat_for(suite, 3)).expect("km");
        let key = km.build(backend).expect("key");
        let p = params(
            0x1000,
            &keymat_for(suite, 3),
            suite,
            backend,
            false,
            Mode::Tunnel,
        );
        // Hand-built authentic packets with a given plaintext (payload ‖ padding ‖ trailer).
        let seal = |seq: u32, pt: &[u8]| {
            let mut pkt = Vec::new();
            pkt.extend_from_slice(&0x1000u32.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            let iv = u64::from(seq).to_be_bytes();
            pkt.extend_from_slice(&iv);
            let mut ct = pt.to_vec();
            let mut a = [0u8; 8];
            a[..4].copy_from_slice(&0x1000u32.to_be_bytes());
            a[4..].copy_from_slice(&seq.to_be_bytes());
            let icv = key.aead().seal(&key.nonce(&iv), &a, &mut ct).expect("seal");
            pkt.extend_from_slice(&ct);
            pkt.extend_from_slice(&icv);
            assert_eq!(pkt.len(), ESP_PREFIX_LEN + pt.len() + ICV_LEN);
            pkt
        };
        let mut inb = InboundSa::new(&p).expect("sa");
        let inner = ipv4_packet(&[1, 2]);
        let mut pt = inner.clone();
        pt.extend_from_slice(&[1, 3, 2, 4]); // padding 1,3 is not 1,2
        let mut pkt = seal(1, &pt);
        let n = pkt.len();
        assert_eq!(
            inb.decap(&mut pkt, 0..n),
            Err(DecapError::Trailer(
                crate::wire::esp::TrailerError::BadPadding
            ))
        );
        let mut pt = inner.clone();
        pt.extend_from_slice(&[200, 4]); // Pad Length beyond the payload
        let mut pkt = seal(2, &pt[..]);
        let n = pkt.len();
        let mut short = pkt[..].to_vec();
        short.truncate(n);
        let _ = &mut pkt;
        assert!(matches!(
            inb.decap(&mut short, 0..n),
            Err(DecapError::Trailer(
                crate::wire::esp::TrailerError::Truncated
            ))
        ));
        let mut pt = inner.clone();
        pt.extend_from_slice(&[0, 6]); // TCP in a tunnel-mode SA
        let mut pkt = seal(3, &pt);
        let n = pkt.len();
        assert_eq!(
            inb.decap(&mut pkt, 0..n),
            Err(DecapError::UnexpectedNextHeader(6))
        );
        let mut pt = ipv6_packet(&[1, 2]);
        pt.extend_from_slice(&[0, 4]); // IPv6 packet labelled as IPv4
        let mut pkt = seal(4, &pt);
        let n = pkt.len();
        assert_eq!(inb.decap(&mut pkt, 0..n), Err(DecapError::BadInnerPacket));
    }
}

#[test]
fn transport_mode_rebuilds_header_and_fixes_checksum() {
    // A UDP datagram whose checksum was computed with addresses a NAT later rewrote.
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5678u16.to_be_bytes());
    udp[4..6].copy_from_slice(&12u16.to_be_bytes());
    udp[6..8].copy_from_slice(&0xbeefu16.to_be_bytes());
    udp.extend_from_slice(b"ping");
    let inner = ipv4_packet(&udp);
    let peer = Ipv4Addr::new(203, 0, 113, 9);
    let me = Ipv4Addr::new(192, 0, 2, 7);
    for backend in Backend::ALL {
        let mode = Mode::Transport {
            src: peer.into(),
            dst: me.into(),
            fix_checksums: true,
        };
        let (mut out, mut inb) = pair(Suite::Aes128Gcm16, backend, false, mode);
        let (mut buf, r) = framed(&inner);
        let r = out.encap(&mut buf, r).expect("encap");
        let got = inb.decap(&mut buf, r).expect("decap");
        let Decapped::Packet {
            range, next_header, ..
        } = got
        else {
            panic!()
        };
        assert_eq!(next_header, 17);
        let pkt = &buf[range];
        let info = crate::wire::ip::parse(pkt).expect("ip");
        assert_eq!(info.total_len, 20 + udp.len());
        assert_eq!(&pkt[12..16], &peer.octets());
        assert_eq!(&pkt[16..20], &me.octets());
        assert_eq!(
            crate::wire::ip::checksum_finish(crate::wire::ip::checksum_add(0, &pkt[..20])),
            0
        );
        // UDP checksum over the pseudo-header verifies.
        let mut s = crate::wire::ip::checksum_add(0, &pkt[12..20]);
        s += 17 + udp.len() as u32;
        s = crate::wire::ip::checksum_add(s, &pkt[20..]);
        assert_eq!(crate::wire::ip::checksum_finish(s), 0);
        assert_eq!(&pkt[28..], b"ping");
    }
}

#[test]
fn transport_mode_refuses_fragments() {
    let (mut out, _) = pair(
        Suite::Aes128Gcm16,
        Backend::RustCrypto,
        false,
        transport_v4(),
    );
    let mut inner = ipv4_packet(&[0; 16]);
    inner[6] = 0x20; // More Fragments
    let (mut buf, r) = framed(&inner);
    assert_eq!(
        out.encap(&mut buf, r),
        Err(EncapError::UnsupportedForTransport)
    );
    assert_eq!(out.seq(), 0);
}

/// A corrupted ICV, opened out of place: `Authentication`, and neither the replay window nor the
/// counters move; a replay is refused before any decryption; an output too short for the
/// plaintext is refused before anything else (`NoHeadroom`).
#[test]
fn decap_into_checks_icv_before_the_window_and_replay_after() {
    for backend in Backend::ALL {
        let (mut out, mut inb) = pair(Suite::Aes256Gcm16, backend, false, Mode::Tunnel);
        let inner = ipv4_packet(&[9; 100]);
        let (mut buf, r) = framed(&inner);
        let r = out.encap(&mut buf, r).expect("encap");
        let esp = buf[r].to_vec();
        let mut bad = esp.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        let mut plain = vec![0u8; HEAD + esp.len()];
        assert_eq!(
            inb.decap_into(&bad, &mut plain, HEAD),
            Err(DecapError::Authentication)
        );
        assert_eq!((inb.window().top(), inb.counters()), (0, (0, 0)));
        let mut short = vec![0u8; HEAD + esp.len() - 40];
        assert_eq!(
            inb.decap_into(&esp, &mut short, HEAD),
            Err(DecapError::NoHeadroom)
        );
        assert_eq!(inb.window().top(), 0);
        let got = inb.decap_into(&esp, &mut plain, HEAD).expect("genuine");
        assert!(
            matches!(got, Decapped::Packet { ref range, seq: 1, .. } if plain[range.clone()] == inner[..])
        );
        assert_eq!(inb.counters(), (1, inner.len() as u64));
        assert_eq!(
            inb.decap_into(&esp, &mut plain, HEAD),
            Err(DecapError::Replay(ReplayError::Duplicate))
        );
    }
}

/// `encap_into` with an output too short for the packet: `NoRoom`, nothing written, and the
/// sequence number is not used up.
#[test]
fn encap_into_needs_room_and_keeps_the_sequence_number() {
    let (mut out, _) = pair(Suite::Aes128Gcm16, Backend::AwsLc, false, Mode::Tunnel);
    let inner = ipv4_packet(&[1; 60]);
    let (mut buf, r) = framed(&inner);
    let need = ESP_PREFIX_LEN + inner.len() + 4 + 16;
    let mut esp = vec![0x77u8; need - 1];
    assert_eq!(
        out.encap_into(&mut buf, r.clone(), &mut esp),
        Err(EncapError::NoRoom)
    );
    assert!(esp.iter().all(|&b| b == 0x77));
    assert_eq!(out.seq(), 0);
    let mut esp = vec![0u8; need];
    assert_eq!(out.encap_into(&mut buf, r, &mut esp), Ok(need));
    assert_eq!(out.seq(), 1);
}

#[test]
fn encap_needs_room_and_ip() {
    let (mut out, _) = pair(Suite::Aes128Gcm16, Backend::RustCrypto, false, Mode::Tunnel);
    let inner = ipv4_packet(&[0; 16]);
    let mut buf = inner.clone();
    let n = buf.len();
    assert_eq!(out.encap(&mut buf, 0..n), Err(EncapError::NoRoom));
    let (mut buf, r) = framed(&[0x12; 30]);
    assert_eq!(out.encap(&mut buf, r), Err(EncapError::NotIp));
    assert_eq!(out.seq(), 0);
}

fn inner_strategy() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..1500)).prop_map(|(v6, body)| {
        if v6 {
            ipv6_packet(&body)
        } else {
            ipv4_packet(&body)
        }
    })
}

fn suite_strategy() -> impl Strategy<Value = Suite> {
    prop::sample::select(Suite::ALL.to_vec())
}

fn backend_strategy() -> impl Strategy<Value = Backend> {
    prop::sample::select(Backend::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// encap → decap gives back the inner packet, for every suite, backend and sequence mode.
    #[test]
    fn round_trip(suite in suite_strategy(), backend in backend_strategy(), esn: bool,
                  start in prop::sample::select(vec![0u64, 1000, u64::from(u32::MAX) - 2]),
                  inners in prop::collection::vec(inner_strategy(), 1..4)) {
        let (mut out, mut inb) = pair(suite, backend, esn, Mode::Tunnel);
        let start = if esn { start } else { start.min(1000) };
        out.set_seq_for_test(start);
        if start > 0 {
            inb.set_window_top_for_test(start);
        }
        for inner in &inners {
            let (mut buf, r) = framed(inner);
            let r = out.encap(&mut buf, r).expect("encap");
            prop_assert_eq!((r.end - r.start - ESP_PREFIX_LEN - 16) % 4, 0, "4-byte aligned");
            let got = inb.decap(&mut buf, r).expect("decap");
            let Decapped::Packet { range, next_header, seq } = got else { panic!() };
            prop_assert_eq!(seq, out.seq());
            prop_assert_eq!(next_header, if inner[0] >> 4 == 4 { 4 } else { 41 });
            prop_assert_eq!(&buf[range], &inner[..]);
        }
    }

    /// Changing any byte of an ESP packet makes decapsulation fail, and leaves the SA able to
    /// accept the genuine packet afterwards.
    #[test]
    fn tampering_fails(suite in suite_strategy(), backend in backend_strategy(), esn: bool,
                       inner in inner_strategy(), pos: prop::sample::Index, flip in 1u8..=255) {
        let (mut out, mut inb) = pair(suite, backend, esn, Mode::Tunnel);
        let (mut buf, r) = framed(&inner);
        let r = out.encap(&mut buf, r).expect("encap");
        let mut bad = buf.clone();
        let at = r.start + pos.index(r.len());
        bad[at] ^= flip;
        prop_assert!(inb.decap(&mut bad, r.clone()).is_err());
        prop_assert_eq!(inb.window().top(), 0);
        prop_assert!(inb.decap(&mut buf, r).is_ok());
    }

    /// Both backends produce the same bytes for the same inputs and open each other's packets.
    #[test]
    fn backends_agree(suite in suite_strategy(), esn: bool, inners in prop::collection::vec(inner_strategy(), 1..4)) {
        let (mut out_rc, mut in_rc) = pair(suite, Backend::RustCrypto, esn, Mode::Tunnel);
        let (mut out_lc, mut in_lc) = pair(suite, Backend::AwsLc, esn, Mode::Tunnel);
        for inner in &inners {
            let (mut a, r) = framed(inner);
            let (mut b, _) = framed(inner);
            let ra = out_rc.encap(&mut a, r.clone()).expect("rc");
            let rb = out_lc.encap(&mut b, r).expect("lc");
            prop_assert_eq!(&a[ra.clone()], &b[rb.clone()]);
            prop_assert!(in_lc.decap(&mut a, ra).is_ok());
            prop_assert!(in_rc.decap(&mut b, rb).is_ok());
        }
    }

    /// `encap_into` writes the very bytes `encap` makes in place (same suite, backend and
    /// sequence number), and `decap_into` opens them out of place to the same inner packet as
    /// `decap` does in place, leaving its input as it was; in tunnel and transport mode.
    #[test]
    fn out_of_place_matches_in_place(suite in suite_strategy(), backend in backend_strategy(),
                                     esn: bool, transport: bool,
                                     inners in prop::collection::vec(inner_strategy(), 1..4)) {
        let mode = if transport { transport_v4() } else { Mode::Tunnel };
        let (mut out_a, mut in_a) = pair(suite, backend, esn, mode);
        let (mut out_b, mut in_b) = pair(suite, backend, esn, mode);
        for inner in &inners {
            if transport && inner[0] >> 4 != 4 {
                continue;
            }
            let (mut a, r) = framed(inner);
            let ra = out_a.encap(&mut a, r.clone()).expect("in place");
            let (mut b, _) = framed(inner);
            let mut esp = vec![0x5a; ra.len() + 7];
            let n = out_b.encap_into(&mut b, r, &mut esp).expect("into");
            prop_assert_eq!(&esp[..n], &a[ra.clone()]);
            prop_assert_eq!(out_a.seq(), out_b.seq());
            esp.truncate(n);
            let sent = esp.clone();
            let mut plain = vec![0u8; HEAD + n];
            let got = in_b.decap_into(&esp, &mut plain, HEAD).expect("decap_into");
            prop_assert_eq!(&esp, &sent, "input untouched");
            let want = in_a.decap(&mut a, ra).expect("decap");
            let (Decapped::Packet { range: rg, .. }, Decapped::Packet { range: rw, .. }) =
                (got.clone(), want.clone()) else { panic!() };
            prop_assert_eq!(&plain[rg], &a[rw]);
            if !transport {
                prop_assert_eq!(&a[HEAD..HEAD + inner.len()], &inner[..]);
            }
            prop_assert_eq!(in_a.window().top(), in_b.window().top());
            prop_assert_eq!(in_a.counters(), in_b.counters());
        }
    }

    /// Out of place, a changed byte anywhere (the ICV included) fails before the SA changes:
    /// window and counters stay, the received bytes are not written, and the genuine packet is
    /// accepted afterwards (RFC 4303 §3.4.3: ICV first, then the window).
    #[test]
    fn out_of_place_tampering_leaves_the_sa_untouched(suite in suite_strategy(),
                                                      backend in backend_strategy(), esn: bool,
                                                      inner in inner_strategy(),
                                                      pos: prop::sample::Index, flip in 1u8..=255) {
        let (mut out, mut inb) = pair(suite, backend, esn, Mode::Tunnel);
        let (mut buf, r) = framed(&inner);
        let r = out.encap(&mut buf, r).expect("encap");
        let esp = buf[r].to_vec();
        let mut bad = esp.clone();
        bad[pos.index(esp.len())] ^= flip;
        let sent = bad.clone();
        let mut plain = vec![0u8; HEAD + esp.len()];
        prop_assert!(inb.decap_into(&bad, &mut plain, HEAD).is_err());
        prop_assert_eq!(&bad, &sent);
        prop_assert_eq!(inb.window().top(), 0);
        prop_assert_eq!(inb.counters(), (0, 0));
        prop_assert!(inb.decap_into(&esp, &mut plain, HEAD).is_ok());
        prop_assert_eq!(inb.window().top(), 1);
    }

    /// Arbitrary bytes never panic decapsulation and never change the window.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), esn: bool) {
        let (_, mut inb) = pair(Suite::ChaCha20Poly1305, Backend::RustCrypto, esn, transport_v4());
        let mut buf = bytes.clone();
        let n = buf.len();
        prop_assert!(inb.decap(&mut buf, 0..n).is_err());
        prop_assert!(inb.decap(&mut buf, n..n + 1).is_err());
        prop_assert_eq!(inb.window().top(), 0);
    }
}
