//! tshark with the RFC 9329 dissector (`tools/wireshark/iketcp.lua`) and a key log: what it
//! made of every packet of a capture, read from its PDML output.
//!
//! Test helpers: a missing tshark or a failing run fails the test by panicking.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Lua plugin in the repository.
pub fn plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/wireshark/iketcp.lua")
}

/// Panics unless tshark runs: the tests that use it are not skipped (`.ci/run` installs it).
pub fn require() {
    match Command::new("tshark").arg("-v").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "tshark -v failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "tshark is needed for this test and is missing ({e}); .ci/run installs it \
             (apt-get install tshark)"
        ),
    }
}

/// One IKE message as the `isakmp` dissector showed it.
#[derive(Debug, Default, Clone)]
pub struct Ike {
    /// `isakmp.exchangetype` (34 is IKE_SA_INIT, sent in the clear).
    pub exchange: u32,
    /// An Encrypted payload was decrypted (`isakmp.enc.decrypted`).
    pub decrypted: bool,
    /// Its Integrity Checksum Data (for AEAD the ICV, RFC 5282) was checked `[correct]`.
    pub checksum_ok: bool,
    /// Its Integrity Checksum Data was present.
    pub checksum: bool,
}

/// One ESP packet as the `esp` dissector showed it.
#[derive(Debug, Default, Clone)]
pub struct Esp {
    /// `esp.spi`.
    pub spi: String,
    /// `esp.icv_good` is true.
    pub icv_good: bool,
    /// `esp.decrypted_data` present.
    pub decrypted: bool,
    /// The next protocol after it is an inner IP packet.
    pub inner_ip: bool,
}

/// What tshark made of one packet.
#[derive(Debug, Default, Clone)]
pub struct Packet {
    /// `frame.number`.
    pub number: u64,
    /// `frame.protocols`.
    pub protocols: String,
    /// The RFC 9329 prefix was shown.
    pub prefix: bool,
    /// `iketcp.kind` of each frame dissected here (1 IKE, 2 ESP, 3 keepalive, 4 empty, 5 bad).
    pub kinds: Vec<u32>,
    /// The IKE messages dissected in the packet.
    pub ike: Vec<Ike>,
    /// The ESP packets dissected in the packet.
    pub esp: Vec<Esp>,
    /// Expert infos of the iketcp dissector.
    pub experts: Vec<String>,
    /// The TCP segment has a payload (`tcp.len` above 0).
    pub tcp_payload: bool,
    /// TCP shows the payload as part of a PDU reassembled in a later frame (`tcp.reassembled_in`).
    pub reassembled_later: bool,
}

/// The plugin's expert infos (`ProtoExpert` abbreviations in iketcp.lua).
const EXPERTS: [&str; 7] = [
    "iketcp.length.fatal",
    "iketcp.body.short",
    "iketcp.keepalive.bad",
    "iketcp.keepalive.seen",
    "iketcp.empty",
    "iketcp.framing_lost",
    "iketcp.subdissector_error",
];

/// The value of attribute `name` in a PDML line.
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = line.find(&key)? + key.len();
    let end = line[at..].find('"')?;
    Some(&line[at..at + end])
}

/// Packets from PDML text.
pub fn parse_pdml(text: &str) -> Vec<Packet> {
    let mut out: Vec<Packet> = Vec::new();
    // The protocol of the last `<proto>` opened, to tell an ESP packet's inner IP.
    let mut last_proto = String::new();
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("<packet>") {
            out.push(Packet::default());
            last_proto.clear();
            continue;
        }
        let Some(p) = out.last_mut() else { continue };
        if l.starts_with("<proto ") {
            let name = attr(l, "name").unwrap_or_default();
            match name {
                "isakmp" => p.ike.push(Ike::default()),
                "esp" => p.esp.push(Esp::default()),
                "ip" | "ipv6" if last_proto == "esp" => {
                    if let Some(e) = p.esp.last_mut() {
                        e.inner_ip = true;
                    }
                }
                _ => {}
            }
            if name != "fake-field-wrapper" {
                last_proto = name.to_owned();
            }
            continue;
        }
        if !l.starts_with("<field ") {
            continue;
        }
        let name = attr(l, "name").unwrap_or_default();
        let show = attr(l, "show").unwrap_or_default();
        let showname = attr(l, "showname").unwrap_or_default();
        match name {
            "frame.number" => p.number = show.parse().unwrap_or_default(),
            "frame.protocols" => p.protocols = show.to_owned(),
            "iketcp.prefix" => p.prefix = show == "IKETCP",
            "tcp.len" => p.tcp_payload |= show != "0",
            "tcp.reassembled_in" => p.reassembled_later = true,
            "iketcp.kind" => p.kinds.push(show.parse().unwrap_or_default()),
            n if EXPERTS.contains(&n) => p.experts.push(n.to_owned()),
            _ => {}
        }
        if let Some(ike) = p.ike.last_mut().filter(|_| name.starts_with("isakmp.")) {
            match name {
                "isakmp.exchangetype" => ike.exchange = show.parse().unwrap_or_default(),
                "isakmp.enc.decrypted" => ike.decrypted = true,
                "isakmp.enc.icd" => {
                    ike.checksum = true;
                    ike.checksum_ok = showname.ends_with("[correct]");
                }
                _ => {}
            }
        }
        if let Some(esp) = p.esp.last_mut().filter(|_| name.starts_with("esp.")) {
            match name {
                "esp.spi" => esp.spi = show.to_owned(),
                "esp.icv_good" => esp.icv_good = show == "1",
                "esp.decrypted_data" => esp.decrypted = true,
                _ => {}
            }
        }
    }
    out
}

/// Runs tshark on `pcap` (with the plugin when `plugin` is set, and the key tables
/// `ikev2_decryption_table` and `esp_sa` of `keylog` as `-o uat:` records) and returns its
/// packets. HOME and XDG_CONFIG_HOME point into a fresh directory, so no personal profile or
/// installed plugin takes part.
pub fn dissect(pcap: &Path, keylog: &Path, plugin: bool) -> Vec<Packet> {
    let home = std::env::temp_dir().join(format!(
        "iketcp-tshark-home-{}-{}",
        std::process::id(),
        pcap.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("{}: {e}", home.display()));
    let mut cmd = Command::new("tshark");
    cmd.env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(["-n", "-r"])
        .arg(pcap);
    if plugin {
        cmd.arg("-X")
            .arg(format!("lua_script:{}", self::plugin().display()));
    }
    for (table, file) in [
        ("ikev2_decryption_table", "ikev2_decryption_table"),
        ("esp_sa", "esp_sa"),
    ] {
        let path = keylog.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("key log {}: {e}", path.display()));
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            cmd.arg("-o").arg(format!("uat:{table}:{line}"));
        }
    }
    cmd.args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-o", "esp.enable_authentication_check:TRUE"])
        .args(["-T", "pdml"]);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("tshark: {e} (.ci/run installs it)"));
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {stderr}");
    // A Lua error (the plugin failing to load or to run) is reported on stderr, not by the
    // exit status.
    assert!(
        !stderr.contains("Lua") && !stderr.contains("lua_script"),
        "tshark: {stderr}"
    );
    let pdml = String::from_utf8_lossy(&out.stdout);
    assert!(!pdml.contains("Lua Error"), "the plugin failed in a packet");
    parse_pdml(&pdml)
}

/// What tshark decoded of a capture, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// IKE messages (IKE_SA_INIT included).
    pub ike: usize,
    /// IKE messages with an Encrypted payload, decrypted and with a correct checksum.
    pub ike_decrypted: usize,
    /// ESP packets.
    pub esp: usize,
    /// ESP packets decrypted with a good ICV and an inner IP packet.
    pub esp_decrypted: usize,
    /// Packets showing the `IKETCP` prefix.
    pub prefixes: usize,
}

/// Checks that tshark (with the plugin) dissected every TCP payload as RFC 9329, decrypted
/// every IKE message after IKE_SA_INIT with a correct checksum and every ESP packet with a good
/// ICV, and returns the counts. Panics on the first packet that breaks a rule.
pub fn check_all_decrypted(packets: &[Packet]) -> Decoded {
    let mut d = Decoded::default();
    for p in packets {
        if p.protocols.contains("tcpencap") {
            panic!("frame {}: Wireshark's tcpencap took it: {p:?}", p.number);
        }
        // Every TCP payload goes through the plugin, except the middle of a PDU that TCP
        // reassembles without calling it.
        assert!(
            !p.tcp_payload || p.protocols.contains(":tcp:iketcp") || p.reassembled_later,
            "frame {}: a TCP payload the plugin did not see: {p:?}",
            p.number
        );
        if p.kinds.is_empty() && !p.prefix {
            continue;
        }
        assert!(
            p.protocols.contains(":iketcp"),
            "frame {}: not iketcp: {p:?}",
            p.number
        );
        assert!(p.experts.is_empty(), "frame {}: {:?}", p.number, p.experts);
        d.prefixes += usize::from(p.prefix);
        let ike_frames = p.kinds.iter().filter(|k| **k == 1).count();
        let esp_frames = p.kinds.iter().filter(|k| **k == 2).count();
        assert_eq!(
            ike_frames + esp_frames,
            p.kinds.len(),
            "frame {}: only IKE and ESP frames: {p:?}",
            p.number
        );
        assert_eq!(ike_frames, p.ike.len(), "frame {}: {p:?}", p.number);
        assert_eq!(esp_frames, p.esp.len(), "frame {}: {p:?}", p.number);
        for ike in &p.ike {
            d.ike += 1;
            if ike.exchange == 34 {
                continue;
            }
            assert!(
                ike.decrypted && ike.checksum && ike.checksum_ok,
                "frame {}: IKE message not decrypted with a correct checksum: {ike:?}",
                p.number
            );
            d.ike_decrypted += 1;
        }
        for esp in &p.esp {
            d.esp += 1;
            assert!(
                esp.decrypted && esp.icv_good && esp.inner_ip,
                "frame {}: ESP packet not decrypted with a good ICV: {esp:?}",
                p.number
            );
            d.esp_decrypted += 1;
        }
    }
    d
}
