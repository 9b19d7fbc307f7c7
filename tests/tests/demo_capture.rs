//! R-5-c (RFC 9329 §5, MUST): once an IKE SA uses TCP, all its IKE messages and all ESP packets
//! of its Child SAs travel over TCP until the IKE SA is deleted.
//!
//! A short `iketcp demo` (library API) with two tunnels, a Child SA and an IKE SA rekey on each
//! and every SA deleted at the end, records the initiators' outer links with `--pcap`. The
//! capture is parsed here: every IP packet in it is TCP (none UDP, none raw ESP), each
//! connection's stream from the initiator starts with `IKETCP`, and both streams carry nothing
//! but RFC 9329 frames, IKE messages and ESP packets of every SA (the rekeyed ones too). `tshark`
//! (`.ci/run` installs it; the tests fail without it) must read the file and see TCP only, and
//! with the RFC 9329 plugin (`tools/wireshark/iketcp.lua`) and the key log it must decrypt
//! every IKE message and ESP packet of a run.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use iketcp_lab::demo::{DemoArgs, OnOff, run};
use iketcp_tests::capture::{
    FourTuple, capture_frames, frame_bodies, frames, ip, pcap_records, reassemble, tcp_segments,
};
use iketcp_tests::tshark;

#[test]
fn r_5_c_demo_ike_and_esp_stay_on_tcp_until_deleted() {
    let path = std::env::temp_dir().join(format!("iketcp-r-5-c-{}.pcap", std::process::id()));
    let args = DemoArgs {
        duration: 2.5,
        workers: 2,
        rate: Some(1000),
        size: 200,
        pcap: Some(path.clone()),
        quiet: true,
        no_pin: true,
        ..DemoArgs::default()
    };
    let s = run(&args).unwrap();
    let file = std::fs::read(&path).unwrap();
    let tshark = tshark_protocols(&path);
    let _ = std::fs::remove_file(&path);

    // The run did what the rule is about: rekeys on every tunnel, every SA deleted at the end.
    assert_eq!(s.tunnels.len(), 2);
    for t in &s.tunnels {
        assert!(t.child_rekeys >= 1 && t.ike_rekeys >= 1, "{t:?}");
        assert!(t.sas_deleted >= 4, "{t:?}");
    }
    let stats = s.pcap.unwrap();
    assert_eq!((stats.dropped, stats.write_errors), (0, 0));
    assert_eq!(stats.bytes, file.len() as u64);

    let records = pcap_records(&file);
    assert_eq!(records.len() as u64, stats.records);
    for p in &records {
        let (proto, ..) = ip(p);
        assert_ne!(proto, 17, "UDP in the capture");
        assert_ne!(proto, 50, "raw ESP in the capture");
        assert_eq!(proto, 6, "only TCP in the capture");
    }
    let conns = tcp_segments(&records);
    assert_eq!(tshark.len(), records.len(), "tshark read every packet");
    assert!(tshark.iter().all(|p| p == "6"), "tshark: {tshark:?}");

    // One connection per tunnel, initiator → responder port 4500, and its reverse.
    let outbound: Vec<&FourTuple> = conns.keys().filter(|k| k.3 == 4500).collect();
    assert_eq!(outbound.len(), 2, "{outbound:?}");
    let mut all_spis = BTreeSet::new();
    for k in outbound {
        let back = (k.2.clone(), k.3, k.0.clone(), k.1);
        let i_to_r = reassemble(&conns[k]);
        let r_to_i = reassemble(conns.get(&back).expect("the responder's direction"));
        assert_eq!(&i_to_r[..6], b"IKETCP", "the stream starts with the prefix");
        let fi = frames(&i_to_r[6..]);
        let fr = frames(&r_to_i);
        // IKE_SA_INIT, IKE_AUTH, the Child SA rekey, the IKE SA rekey, and the Deletes of the old
        // SAs: all IKE messages of the IKE SA, both ways, inside the TCP stream.
        assert!(fi.ike >= 4, "{fi:?}");
        assert!(fr.ike >= 4, "{fr:?}");
        // ESP of the first and of the rekeyed Child SA, both ways.
        assert!(fi.esp > 0 && fi.spis.len() >= 2, "{fi:?}");
        assert!(fr.esp > 0 && fr.spis.len() >= 2, "{fr:?}");
        all_spis.extend(fi.spis);
        all_spis.extend(fr.spis);
    }
    assert!(
        all_spis.len() >= 8,
        "two tunnels' SAs are distinct: {all_spis:?}"
    );
}

/// `ip.proto` of every packet as tshark reads the file (tshark must be installed).
fn tshark_protocols(path: &std::path::Path) -> Vec<String> {
    tshark::require();
    let o = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-T", "fields", "-e", "ip.proto"])
        .output()
        .unwrap_or_else(|e| panic!("tshark: {e}"));
    assert!(
        o.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A LINKTYPE_RAW pcap of IPv4/UDP packets from `src` to `dst`, port 4500 both ways.
fn udp_pcap(packets: &[(Vec<u8>, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut f = Vec::new();
    for x in [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4]] {
        f.extend_from_slice(&x);
    }
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&101u32.to_le_bytes());
    for (src, dst, body) in packets {
        let udp_len = 8 + body.len();
        let total = 20 + udp_len;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(src);
        p.extend_from_slice(dst);
        p.extend_from_slice(&4500u16.to_be_bytes());
        p.extend_from_slice(&4500u16.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(body);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&p);
    }
    f
}

/// `--keylog` writes lines Wireshark loads and decrypts with: every IKE message after
/// IKE_SA_INIT and every ESP packet of a demo run (rekeyed SAs included). tshark 4.0 has no RFC
/// 8229/9329 dissector (its `tcpencap` is Cisco's format), so the frames are carried over into a
/// UDP-encapsulation capture first: a check of the key log independent of the plugin (the test
/// below reads the TCP capture itself with it). Fails without tshark.
#[test]
fn keylog_lines_decrypt_in_tshark() {
    tshark::require();
    let tmp = std::env::temp_dir().join(format!("iketcp-keylog-tshark-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let cfg = tmp.join("cfg").join("wireshark");
    std::fs::create_dir_all(&cfg).unwrap();
    let args = DemoArgs {
        duration: 1.5,
        rate: Some(50),
        size: 200,
        pcap: Some(tmp.join("tcp.pcap")),
        keylog: Some(cfg.clone()),
        quiet: true,
        no_pin: true,
        ..DemoArgs::default()
    };
    let s = run(&args).unwrap();
    assert!(s.child_rekeys >= 1 && s.ike_rekeys >= 1);
    let file = std::fs::read(tmp.join("tcp.pcap")).unwrap();
    let mut packets = Vec::new();
    for (k, segs) in &tcp_segments(&pcap_records(&file)) {
        let stream = reassemble(segs);
        let body = stream.strip_prefix(b"IKETCP").unwrap_or(&stream);
        // RFC 9329 §3: Length 0 and 1 are fatal; 2 (empty) and 3 (keepalive) may occur.
        for b in frame_bodies(body, 2) {
            packets.push((k.0.clone(), k.2.clone(), b.to_vec()));
        }
    }
    std::fs::write(tmp.join("udp.pcap"), udp_pcap(&packets)).unwrap();
    let out = Command::new("tshark")
        .env("XDG_CONFIG_HOME", tmp.join("cfg"))
        .args(["-n", "-r"])
        .arg(tmp.join("udp.pcap"))
        .args(["-o", "esp.enable_encryption_decode:TRUE", "-T", "fields"])
        .args(["-e", "esp.spi", "-e", "ip.src", "-e", "isakmp.exchangetype"])
        .args(["-e", "isakmp.enc.decrypted"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut esp, mut ike) = (0, 0);
    for row in text.lines() {
        let f: Vec<&str> = row.split('\t').collect();
        if !f[0].is_empty() {
            // The inner packet's addresses follow the outer ones once the ESP is decrypted.
            assert_eq!(f[1].split(',').count(), 2, "ESP not decrypted: {row}");
            esp += 1;
        } else if f[2] != "34" {
            assert!(!f[3].is_empty(), "IKE not decrypted: {row}");
            ike += 1;
        }
    }
    assert!(esp > 20 && ike >= 6, "{esp} ESP, {ike} IKE");
}

/// The RFC 9329 dissector (`tools/wireshark/iketcp.lua`) on a demo capture, with the run's key
/// log: every TCP payload is iketcp (never Wireshark's `tcpencap`), each connection's prefix is
/// shown, every IKE message after IKE_SA_INIT decrypts with a correct ICV, every ESP packet
/// decrypts with a good ICV into an inner IP packet, and tshark counts as many IKE messages and
/// ESP packets as the capture holds (parsed here). Without the plugin none of it shows, so the
/// check cannot pass vacuously. ESN off: tshark 4.0 leaves the ESN high half out of the GCM AAD.
#[test]
fn wireshark_plugin_decrypts_every_ike_message_and_esp_packet() {
    tshark::require();
    let tmp = std::env::temp_dir().join(format!("iketcp-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let keylog = tmp.join("keys");
    std::fs::create_dir_all(&keylog).unwrap();
    let pcap = tmp.join("demo.pcap");
    let args = DemoArgs {
        duration: 1.5,
        workers: 2,
        rate: Some(500),
        size: 200,
        esn: OnOff::Off,
        pcap: Some(pcap.clone()),
        keylog: Some(keylog.clone()),
        quiet: true,
        no_pin: true,
        ..DemoArgs::default()
    };
    let s = run(&args).unwrap();
    for t in &s.tunnels {
        assert!(t.child_rekeys >= 1 && t.ike_rekeys >= 1, "{t:?}");
    }
    let file = std::fs::read(&pcap).unwrap();
    let want = capture_frames(&file, 4500);

    let t0 = Instant::now();
    let packets = tshark::dissect(&pcap, &keylog, true);
    let got = tshark::check_all_decrypted(&packets);
    let took = t0.elapsed();
    let bare = tshark::dissect(&pcap, &keylog, false);
    let _ = std::fs::remove_dir_all(&tmp);

    println!(
        "tshark with the plugin ({took:?}): {} IKE messages ({} decrypted), {} ESP packets \
         ({} decrypted); the capture holds {} and {}; {} segments with several frames",
        got.ike,
        got.ike_decrypted,
        got.esp,
        got.esp_decrypted,
        want.ike,
        want.esp,
        packets.iter().filter(|p| p.kinds.len() > 1).count()
    );
    assert_eq!(got.prefixes, s.tunnels.len(), "one prefix per connection");
    assert_eq!((got.ike, got.esp), (want.ike, want.esp), "{got:?}");
    // IKE_SA_INIT request and response of each tunnel are the only messages in the clear.
    assert_eq!(got.ike - got.ike_decrypted, 2 * s.tunnels.len(), "{got:?}");
    assert_eq!(got.esp_decrypted, got.esp);
    assert!(got.esp > 100 && got.ike >= 8 * s.tunnels.len(), "{got:?}");

    // Without the plugin tshark sees bare TCP: no frames, no IKE, no ESP.
    assert_eq!(bare.len(), packets.len());
    for p in &bare {
        assert!(
            p.kinds.is_empty() && p.ike.is_empty() && p.esp.is_empty() && !p.prefix,
            "frame {} without the plugin: {p:?}",
            p.number
        );
    }
}

/// The outer TCP of a demo run: the Originator connects to port 4500 (R-2-a, R-11-a), its SYN
/// negotiates an MSS (R-9.4-a), and every outer packet carries the same DSCP (R-9.3-a) and is
/// not ECN-capable, as RFC 6040's compatibility mode asks of the tunnel ingress (R-9.5-a).
#[test]
fn r_2_a_r_11_a_r_9_4_a_r_9_3_a_r_9_5_a_outer_tcp_of_a_run() {
    let path = std::env::temp_dir().join(format!("iketcp-outer-{}.pcap", std::process::id()));
    let args = DemoArgs {
        duration: 1.0,
        rate: Some(200),
        size: 400,
        pcap: Some(path.clone()),
        quiet: true,
        no_pin: true,
        ..DemoArgs::default()
    };
    run(&args).unwrap();
    let file = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let records = pcap_records(&file);
    assert!(records.len() > 100);
    let mut syns = 0;
    let mut tos = BTreeSet::new();
    for p in &records {
        assert_eq!(p[0] >> 4, 4, "the demo's outer addresses are IPv4");
        tos.insert(p[1]);
        let (_, _, _, l4) = ip(p);
        let flags = l4[13];
        if flags & 0x12 == 0x02 {
            // The Originator's SYN goes to 4500 and carries an MSS option (kind 2, length 4).
            syns += 1;
            assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), 4500);
            let opts = &l4[20..usize::from(l4[12] >> 4) * 4];
            let mut i = 0;
            let mut mss = None;
            while i < opts.len() {
                match opts[i] {
                    0 => break,
                    1 => i += 1,
                    kind => {
                        let len = usize::from(*opts.get(i + 1).unwrap_or(&2)).max(2);
                        if kind == 2 && len == 4 {
                            mss = Some(u16::from_be_bytes([opts[i + 2], opts[i + 3]]));
                        }
                        i += len;
                    }
                }
            }
            let mss = mss.expect("MSS option in the SYN");
            assert!((536..=1460).contains(&mss), "MSS {mss}");
        }
    }
    assert!(syns >= 1);
    // One DSCP for the whole connection, and ECN bits 00 (Not-ECT) on every outer packet.
    assert_eq!(tos.len(), 1, "{tos:?}");
    assert!(tos.iter().all(|t| t & 0x03 == 0), "{tos:?}");
}
