//! The RFC 9329 dissector (`tools/wireshark/iketcp.lua`) on a hand-made stream: a prefix split
//! over two segments (§4), a NAT-keepalive (§6.6) and an empty frame (§3), an ESP packet split
//! over two segments (§3.2), a body too short for anything, and a fatal Length 1 (§3.2), all
//! by the TCP Originator. tshark must show each frame with its kind and flag the bad ones.

use iketcp_tests::tshark;

/// A LINKTYPE_RAW pcap of IPv4/TCP segments (PSH|ACK unless `syn`), 192.0.2.2:40000 to
/// 192.0.2.1:4500, sequence numbers from an ISN of 1000.
fn tcp_pcap(segments: &[&[u8]]) -> Vec<u8> {
    let mut f = Vec::new();
    for x in [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4]] {
        f.extend_from_slice(&x);
    }
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&101u32.to_le_bytes());
    let mut seq = 1000u32;
    let syn: &[u8] = &[];
    for (i, payload) in std::iter::once(syn)
        .chain(segments.iter().copied())
        .enumerate()
    {
        let total = 40 + payload.len();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1]);
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&4500u16.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&[
            0x50,
            if i == 0 { 0x02 } else { 0x18 },
            0xff,
            0xff,
            0,
            0,
            0,
            0,
        ]);
        p.extend_from_slice(payload);
        seq = seq.wrapping_add(if i == 0 { 1 } else { payload.len() as u32 });
        f.extend_from_slice(&(i as u32).to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&p);
    }
    f
}

#[test]
fn plugin_frames_keepalives_and_malformed_lengths() {
    tshark::require();
    let tmp = std::env::temp_dir().join(format!("iketcp-plugin-frames-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // No keys: nothing here decrypts, the framing is what is checked.
    std::fs::write(tmp.join("ikev2_decryption_table"), "").unwrap();
    std::fs::write(tmp.join("esp_sa"), "").unwrap();
    // An ESP packet of 28 octets (SPI, sequence number, 20 octets), framed with Length 30.
    let mut esp = vec![0, 30, 0x11, 0x11, 0x11, 0x11, 0, 0, 0, 1];
    esp.extend_from_slice(&[0xab; 20]);
    let mut seg2 = b"TCP".to_vec();
    seg2.extend_from_slice(&[0, 3, 0xff, 0, 2]);
    seg2.extend_from_slice(&esp[..12]);
    let mut seg3 = esp[12..].to_vec();
    seg3.extend_from_slice(&[0, 4, 1, 2, 0, 1, 9, 9]);
    let pcap = tmp.join("frames.pcap");
    std::fs::write(&pcap, tcp_pcap(&[b"IKE", &seg2, &seg3])).unwrap();

    let packets = tshark::dissect(&pcap, &tmp, true);
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(packets.len(), 4, "{packets:?}");
    // The SYN and the first part of the prefix: nothing dissected yet.
    assert!(packets[0].kinds.is_empty() && !packets[0].prefix);
    assert!(
        packets[1].kinds.is_empty() && !packets[1].prefix,
        "{:?}",
        packets[1]
    );
    // The prefix reassembled, a keepalive and an empty frame (both noted).
    let p = &packets[2];
    assert!(p.prefix, "{p:?}");
    assert_eq!(p.kinds, [3, 4], "{p:?}");
    assert_eq!(
        p.experts,
        ["iketcp.keepalive.seen", "iketcp.empty"],
        "{p:?}"
    );
    // The ESP packet reassembled, then a 2-octet body and the fatal Length 1.
    let p = &packets[3];
    assert_eq!(p.kinds, [2, 5, 5], "{p:?}");
    assert_eq!(p.esp.len(), 1, "{p:?}");
    assert_eq!(p.esp[0].spi, "0x11111111", "{p:?}");
    assert_eq!(
        p.experts,
        [
            "iketcp.body.short",
            "iketcp.length.fatal",
            "iketcp.framing_lost"
        ],
        "{p:?}"
    );
}
