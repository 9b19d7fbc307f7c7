#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;

use iketcp_control::ike::crypto::{EncrAlg, IntegAlg, PrfAlg};
use iketcp_control::ike::wire::TsRange;
use tempfile::TempDir;

use super::*;

/// A directory with `psk.secret` (mode 0600) in it; configurations are "in" it as `gw.toml`.
fn dir() -> TempDir {
    let d = tempfile::tempdir().unwrap();
    write_mode(&d.path().join("psk.secret"), b"shared secret\n", 0o600);
    d
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn gw(d: &TempDir) -> PathBuf {
    d.path().join("gw.toml")
}

/// The error `parse` gives for `text`, checked to be at `line:col` and to display as
/// `FILE:LINE:COL: ...` containing `needle`.
fn parse_err(text: &str, line: usize, col: usize, needle: &str) -> ConfigError {
    let d = dir();
    let path = gw(&d);
    let e = match parse(text, &path) {
        Ok(c) => panic!("expected an error containing {needle:?}, got {c:?}"),
        Err(e) => e,
    };
    check_err(&e, &path, line, col, needle);
    e
}

fn check_err(e: &ConfigError, path: &Path, line: usize, col: usize, needle: &str) {
    let shown = e.to_string();
    let at = format!("{}:{line}:{col}: ", path.display());
    assert!(
        shown.starts_with(&at),
        "{shown:?} does not start with {at:?}"
    );
    assert!(shown.contains(needle), "{shown:?} does not name {needle:?}");
    assert_eq!((e.line, e.column), (line, col), "{shown}");
}

/// A valid connection of 8 lines; tests append or replace lines.
const BASE: &str = "\
[[connection]]
name = \"a\"
remote_addrs = [\"192.0.2.2\"]
local_id = \"@a.example\"
remote_id = \"@b.example\"
psk_file = \"psk.secret\"
local_ts = [\"198.51.100.0/24\"]
remote_ts = [\"203.0.113.0/24\"]
";

/// Every key, most with a value other than its default.
const FULL: &str = r#"# A comment.
[gateway]
workers = 4
transport = "smoltcp"
listen = ["192.0.2.1", "2001:db8::1"]
port = 4501
control_socket = "/run/test/iketcp.sock"
metrics = "127.0.0.1:9469"
log_level = "debug"
log_format = "json"
keylog_dir = "keys"
redial_initial = "2s"
redial_max = "5m"
redial_attempts = 10

[smoltcp]
tap = "tap7"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"
mtu = 9000

[tun]
name = "tun-test"
addresses = ["198.51.100.1/32", "2001:db8:1::1/64"]
mtu = 1400
mss_clamp = true
offload = false

[limits]
max_connections = 4096
untrusted_connections = 512
untrusted_per_source = 8
idle_connection_timeout = "3s"
half_open_timeout = "20s"
cookie_threshold = 0
puzzle_difficulty = 20
ike_sa_init_per_source = 10
queued_bytes_per_connection = 262144

[[connection]]
name = "site-b"
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2", "192.0.2.3"]
remote_port = 4600
local_id = "@a.example"
remote_id = "admin@b.example"
auth = "psk"
psk_file = "psk.secret"
proposals = ["aes128gcm16-aes256gcm16-prfsha256-x25519-ecp256", "aes256-sha384-modp2048"]
esp_proposals = ["aes256gcm16-x25519", "chacha20poly1305-x25519-esn"]
esn = "both"
local_ts = ["198.51.100.0/24", "10.0.0.0/8[tcp/443]"]
remote_ts = ["203.0.113.0/24[udp/1000-2000]", "2001:db8:2::/48[ipv6-icmp/128]"]
start = "initiate"
dpd_delay = 10
rekey_time = "1h"
life_time = "1h30m"
child_rekey_time = "20m"
child_life_time = "1d"
rekey_bytes = "1G"
life_bytes = 2000000000
rekey_packets = "10k"
life_packets = "1M"
replay_window = 4096
reconnect_probe = "rekey"
mode = "tunnel"

[[connection]]
name = "road.warrior_1"
remote_addrs = "%any"
local_id = "192.0.2.1"
remote_id = "@#0a0B"
psk = "inline secret"
local_ts = ["0.0.0.0/0"]
remote_ts = ["192.0.2.77"]
"#;

fn v4_ts(start: [u8; 4], end: [u8; 4], proto: u8, ports: (u16, u16)) -> TrafficSelector {
    TrafficSelector::Ipv4(TsRange {
        ip_protocol: proto,
        start_port: ports.0,
        end_port: ports.1,
        start_addr: Ipv4Addr::from(start),
        end_addr: Ipv4Addr::from(end),
    })
}

fn ike(e: EncrAlg, p: PrfAlg, i: Option<IntegAlg>, d: DhGroup) -> IkeSuite {
    IkeSuite::new(e, p, i, d).unwrap()
}

#[test]
fn full_example_parses_to_the_expected_values() {
    let d = dir();
    let c = parse(FULL, &gw(&d)).unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 4096,
            untrusted_connections: 512,
            untrusted_per_source: 8,
            idle_connection_timeout: Duration::from_secs(3),
            half_open_timeout: Duration::from_secs(20),
            cookie_threshold: 0,
            puzzle_difficulty: 20,
            ike_sa_init_per_source: 10,
            queued_bytes_per_connection: 262_144,
        }
    );
    let g = &c.gateway;
    assert_eq!(g.workers, 4);
    assert_eq!(
        g.transport,
        OuterTransport::Smoltcp(SmolNic {
            port: NicPort::Tap("tap7".into()),
            address: "192.0.2.1".parse().unwrap(),
            prefix_len: 24,
            mac: Some([0x02, 0x00, 192, 0, 2, 1]),
            next_hop: Some("192.0.2.254".parse().unwrap()),
            mtu: 9000,
        })
    );
    assert_eq!(
        g.listen,
        [
            IpAddr::from([192, 0, 2, 1]),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        ]
    );
    assert_eq!(g.port, 4501);
    assert_eq!(g.control_socket, Path::new("/run/test/iketcp.sock"));
    assert_eq!(g.metrics, Some("127.0.0.1:9469".parse().unwrap()));
    assert_eq!(g.log_level, LogLevel::Debug);
    assert_eq!(g.log_format, LogFormat::Json);
    assert_eq!(g.keylog_dir, Some(d.path().join("keys")));
    assert_eq!(
        g.redial,
        RedialPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(300),
            attempts: 10
        }
    );
    assert_eq!(
        c.tun,
        TunSection {
            name: "tun-test".into(),
            addresses: vec![
                ("198.51.100.1".parse().unwrap(), 32),
                ("2001:db8:1::1".parse().unwrap(), 64)
            ],
            mtu: 1400,
            mss_clamp: true,
            offload: false,
        }
    );

    assert_eq!(c.connections.len(), 2);
    let a = c.connection("site-b").unwrap();
    assert_eq!(a.local_addrs, [IpAddr::from([192, 0, 2, 1])]);
    assert_eq!(
        a.remote_addrs,
        RemoteAddrs::Addrs(vec![
            IpAddr::from([192, 0, 2, 2]),
            IpAddr::from([192, 0, 2, 3])
        ])
    );
    assert_eq!(a.remote_port, 4600);
    assert_eq!(a.local_id, Identity::Fqdn(b"a.example".to_vec()));
    assert_eq!(a.remote_id, Identity::Rfc822(b"admin@b.example".to_vec()));
    assert_eq!(a.auth, Auth::Psk(PskSecret::new(b"shared secret".to_vec())));
    use DhGroup::{Curve25519, Ecp256, Modp2048};
    use EncrAlg::{AesCbc256, AesGcm16_128, AesGcm16_256};
    let sha256 = PrfAlg::HmacSha256;
    // The cartesian product in the order written, then the CBC proposal with the PRF of its
    // integrity algorithm.
    assert_eq!(
        a.ike_proposals,
        [
            ike(AesGcm16_128, sha256, None, Curve25519),
            ike(AesGcm16_128, sha256, None, Ecp256),
            ike(AesGcm16_256, sha256, None, Curve25519),
            ike(AesGcm16_256, sha256, None, Ecp256),
            ike(
                AesCbc256,
                PrfAlg::HmacSha384,
                Some(IntegAlg::HmacSha384_192),
                Modp2048
            ),
        ]
    );
    // esn = "both" offers ESN first; the `esn` token of the second proposal overrides it.
    assert_eq!(
        a.esp_proposals,
        [
            (EspSuite::AesGcm16_256, true),
            (EspSuite::AesGcm16_256, false),
            (EspSuite::ChaCha20Poly1305, true),
        ]
    );
    assert!(a.esn);
    assert!(a.pfs);
    assert_eq!(a.child_dh, Some(Curve25519));
    assert_eq!(
        a.local_ts,
        [
            v4_ts([198, 51, 100, 0], [198, 51, 100, 255], 0, (0, 65535)),
            v4_ts([10, 0, 0, 0], [10, 255, 255, 255], 6, (443, 443)),
        ]
    );
    assert_eq!(
        a.remote_ts,
        [
            v4_ts([203, 0, 113, 0], [203, 0, 113, 255], 17, (1000, 2000)),
            // ICMPv6 type 128 (echo request), any code: RFC 7296 §3.13.1 puts the type in the
            // high octet of the port fields.
            TrafficSelector::Ipv6(TsRange {
                ip_protocol: 58,
                start_port: 0x8000,
                end_port: 0x80ff,
                start_addr: "2001:db8:2::".parse().unwrap(),
                end_addr: "2001:db8:2:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            }),
        ]
    );
    assert_eq!(a.start, StartAction::Initiate);
    assert_eq!(a.dpd_delay, Duration::from_secs(10));
    assert_eq!(a.rekey_time, Duration::from_secs(3600));
    assert_eq!(a.life_time, Duration::from_secs(5400));
    assert_eq!(a.child_rekey_time, Duration::from_secs(1200));
    assert_eq!(a.child_life_time, Duration::from_secs(86_400));
    assert_eq!(a.rekey_bytes, Some(1 << 30));
    assert_eq!(a.life_bytes, Some(2_000_000_000));
    assert_eq!(a.rekey_packets, Some(10 << 10));
    assert_eq!(a.life_packets, Some(1 << 20));
    assert_eq!(a.replay_window, 4096);
    assert_eq!(a.mode, Mode::Tunnel);
    assert_eq!(a.reconnect_probe, ReconnectProbe::IkeRekey);

    let b = c.connection("road.warrior_1").unwrap();
    assert_eq!(b.remote_addrs, RemoteAddrs::Any);
    assert_eq!(b.start, StartAction::Listen);
    assert_eq!(b.local_id, Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(b.remote_id, Identity::KeyId(vec![0x0a, 0x0b]));
    assert_eq!(b.auth, Auth::Psk(PskSecret::new(b"inline secret".to_vec())));
    assert_eq!(
        b.remote_ts,
        [v4_ts([192, 0, 2, 77], [192, 0, 2, 77], 0, (0, 65535))]
    );
    assert!(c.connection("nope").is_none());
}

#[test]
fn defaults() {
    let d = dir();
    let text = BASE.replace(
        "remote_id = \"@b.example\"\n",
        "local_addrs = [\"192.0.2.1\"]\n",
    );
    let text = text.replace("local_id = \"@a.example\"\n", "");
    let c = parse(&text, &gw(&d)).unwrap();
    assert_eq!(c.limits, Limits::default());
    let g = &c.gateway;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(g.workers, cpus.clamp(1, 64));
    assert_eq!(g.transport, OuterTransport::Kernel);
    assert_eq!(g.listen, [IpAddr::from([0, 0, 0, 0])]);
    assert_eq!(g.port, 4500);
    assert_eq!(g.control_socket, Path::new("/run/iketcp/iketcp.sock"));
    assert_eq!(g.metrics, None);
    assert_eq!(g.log_level, LogLevel::Info);
    assert_eq!(g.log_format, LogFormat::Text);
    assert_eq!(g.keylog_dir, None);
    assert_eq!(
        g.redial,
        RedialPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: 0
        }
    );
    assert_eq!(
        c.tun,
        TunSection {
            name: "iketcp0".into(),
            addresses: vec![],
            mtu: 1408,
            mss_clamp: false,
            offload: true,
        }
    );
    let a = &c.connections[0];
    assert_eq!(a.local_id, Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(a.remote_id, Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 2)));
    assert_eq!(a.remote_port, 4500);
    use DhGroup::{Curve25519, Ecp256, Ecp384, Modp2048};
    use EncrAlg::{AesGcm16_128, AesGcm16_256, ChaCha20Poly1305};
    assert_eq!(
        a.ike_proposals,
        [
            ike(AesGcm16_256, PrfAlg::HmacSha256, None, Curve25519),
            ike(AesGcm16_256, PrfAlg::HmacSha384, None, Ecp384),
            ike(ChaCha20Poly1305, PrfAlg::HmacSha256, None, Curve25519),
            ike(AesGcm16_128, PrfAlg::HmacSha256, None, Ecp256),
            ike(AesGcm16_256, PrfAlg::HmacSha256, None, Modp2048),
        ]
    );
    assert_eq!(
        a.esp_proposals,
        [
            (EspSuite::AesGcm16_256, false),
            (EspSuite::ChaCha20Poly1305, false),
            (EspSuite::AesGcm16_128, false),
        ]
    );
    assert!(!a.esn && !a.pfs);
    assert_eq!(a.child_dh, None);
    assert_eq!(a.start, StartAction::Initiate);
    assert_eq!(a.dpd_delay, Duration::from_secs(30));
    assert_eq!(a.rekey_time, Duration::from_secs(4 * 3600));
    assert_eq!(a.life_time, Duration::from_secs(4 * 3600 + 1440));
    assert_eq!(a.child_rekey_time, Duration::from_secs(3600));
    assert_eq!(a.child_life_time, Duration::from_secs(3960));
    assert_eq!(
        (a.rekey_bytes, a.life_bytes, a.rekey_packets, a.life_packets),
        (None, None, None, None)
    );
    assert_eq!(a.replay_window, 1024);
    assert_eq!(a.mode, Mode::Tunnel);
    assert_eq!(a.reconnect_probe, ReconnectProbe::Liveness);

    // An empty gateway is fine (connections come with a reload).
    let empty = parse("", &gw(&d)).unwrap();
    assert!(empty.connections.is_empty());
    // An IPv6 outer address lowers the default TUN MTU.
    let v6 = parse("[gateway]\nlisten = [\"::\"]\n", &gw(&d)).unwrap();
    assert_eq!(v6.tun.mtu, 1388);
}

#[test]
fn default_tun_mtu_fits_a_1500_byte_outer_packet() {
    // 1500 - 20 - 32 - 2 - 8 - 8 - 5 - 16 = 1409, rounded down to 1408; IPv6 1389 -> 1388.
    assert_eq!(default_tun_mtu(false), 1408);
    assert_eq!(default_tun_mtu(true), 1388);
    const { assert!(default_tun_mtu(false).is_multiple_of(4)) };
}

#[test]
fn unknown_key_at_top_level() {
    let e = parse_err("[gatway]\nport = 1\n", 1, 2, "unknown key `gatway`");
    assert!(matches!(e.kind, ConfigErrorKind::Syntax { .. }));
    parse_err(
        "[gateway]\nport = 4500\nbogus = 1\n",
        3,
        1,
        "unknown key `bogus`",
    );
}

#[test]
fn unknown_key_in_a_connection() {
    let text = format!("{BASE}rekey = \"1h\"\n");
    let e = parse_err(&text, 9, 1, "unknown key `rekey`");
    assert!(e.to_string().contains("rekey_time"), "{e}");
}

#[test]
fn bad_ip_address() {
    let e = parse_err(
        "[gateway]\nlisten = [\"192.0.2.1\", \"192.0.2.300\"]\n",
        2,
        24,
        "bad address \"192.0.2.300\"",
    );
    assert!(matches!(e.kind, ConfigErrorKind::BadAddress { .. }));
    let text = BASE.replace("[\"192.0.2.2\"]", "[\"b.example\"]");
    parse_err(&text, 3, 17, "remote_addrs");
    parse_err(
        "[gateway]\nmetrics = \"127.0.0.1\"\n",
        2,
        11,
        "address:port",
    );
}

#[test]
fn bad_cidr() {
    let text = BASE.replace("198.51.100.0/24", "198.51.100.0/33");
    let e = parse_err(&text, 7, 13, "bad CIDR \"198.51.100.0/33\"");
    assert!(matches!(e.kind, ConfigErrorKind::BadCidr { .. }));
    let text = BASE.replace("198.51.100.0/24", "198.51.100.1/24");
    parse_err(&text, 7, 13, "did you mean 198.51.100.0/24");
    parse_err(
        "[tun]\naddresses = [\"10.0.0.1\"]\n",
        2,
        14,
        "address/prefix",
    );
}

#[test]
fn bad_traffic_selector() {
    let text = BASE.replace("203.0.113.0/24", "203.0.113.0/24[tcp/80-70]");
    let e = parse_err(&text, 8, 14, "empty");
    assert!(matches!(e.kind, ConfigErrorKind::BadTrafficSelector { .. }));
    let text = BASE.replace("203.0.113.0/24", "203.0.113.0/24[gre/1]");
    parse_err(&text, 8, 14, "unknown protocol \"gre\"");
    let text = BASE.replace("203.0.113.0/24", "203.0.113.0/24[0/53]");
    parse_err(&text, 8, 14, "a port needs a protocol");
}

#[test]
fn bad_proposal_token() {
    let text = format!("{BASE}proposals = [\"aes256gcm16-prfsha256-x25520\"]\n");
    // Column of `x25520` inside the string: `proposals = ["` is 14 characters, the token
    // starts 22 bytes into the proposal.
    let e = parse_err(&text, 9, 37, "\"x25520\"");
    match &e.kind {
        ConfigErrorKind::BadProposal { proposal, reason } => {
            assert_eq!(proposal, "aes256gcm16-prfsha256-x25520");
            assert!(reason.contains("algorithm 3"), "{reason}");
        }
        k => panic!("{k:?}"),
    }
    let text = format!("{BASE}proposals = [\"aes256gcm16-x25519\"]\n");
    parse_err(&text, 9, 15, "needs a PRF");
    let text = format!("{BASE}esp_proposals = [\"aes256gcm16-sha256\"]\n");
    parse_err(&text, 9, 31, "integrity");
    let text = format!("{BASE}esp_proposals = [\"aes256gcm16-x25519\", \"aes128gcm16\"]\n");
    parse_err(&text, 9, 41, "same DH group");
}

#[test]
fn bad_duration() {
    let text = format!("{BASE}rekey_time = \"4x\"\n");
    let e = parse_err(&text, 9, 14, "bad duration \"4x\"");
    assert!(matches!(e.kind, ConfigErrorKind::BadDuration { .. }));
    let text = format!("{BASE}dpd_delay = -5\n");
    parse_err(&text, 9, 13, "negative");
    let text = format!("{BASE}rekey_time = \"1h\"\nlife_time = \"1h\"\n");
    parse_err(
        &text,
        10,
        13,
        "life_time (3600s) must be longer than rekey_time",
    );
    let text = format!("{BASE}rekey_bytes = \"2G\"\nlife_bytes = \"1G\"\n");
    parse_err(&text, 9, 15, "must be less than life_bytes");
    let text = format!("{BASE}life_packets = \"5q\"\n");
    parse_err(&text, 9, 16, "bad size \"5q\"");
}

#[test]
fn missing_secret() {
    let text = format!(
        "[gateway]\nport = 4500\n\n{}",
        BASE.replace("psk_file = \"psk.secret\"\n", "")
    );
    let e = parse_err(&text, 4, 1, "connection \"a\" has no secret");
    assert_eq!(
        e.kind,
        ConfigErrorKind::MissingSecret {
            connection: "a".into()
        }
    );
    let text = format!("{BASE}psk = \"x\"\n");
    parse_err(&text, 6, 12, "exclusive");
}

#[test]
fn psk_file_readable_by_others_is_refused() {
    let d = dir();
    let secret = d.path().join("psk.secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let e = parse(BASE, &gw(&d)).unwrap_err();
    check_err(&e, &gw(&d), 6, 12, "mode 0644");
    assert_eq!(
        e.kind,
        ConfigErrorKind::SecretPermissions {
            path: secret.clone(),
            mode: 0o644
        }
    );
    // load() checks it too.
    fs::write(gw(&d), BASE).unwrap();
    assert_eq!(load(&gw(&d)).unwrap_err(), e);
    // A missing or empty file.
    fs::remove_file(&secret).unwrap();
    let e = parse(BASE, &gw(&d)).unwrap_err();
    check_err(&e, &gw(&d), 6, 12, "psk_file");
    assert!(matches!(e.kind, ConfigErrorKind::SecretFile { .. }));
    write_mode(&secret, b"\n", 0o600);
    let e = parse(BASE, &gw(&d)).unwrap_err();
    check_err(&e, &gw(&d), 6, 12, "empty");
}

#[test]
fn inline_psk_in_a_file_others_can_read_is_refused_by_load() {
    let d = dir();
    let text = BASE.replace("psk_file = \"psk.secret\"", "psk = \"inline\"");
    write_mode(&gw(&d), text.as_bytes(), 0o644);
    // parse() does not know the file's mode.
    assert!(parse(&text, &gw(&d)).is_ok());
    let e = load(&gw(&d)).unwrap_err();
    check_err(&e, &gw(&d), 6, 7, "mode 0644");
    assert!(matches!(
        e.kind,
        ConfigErrorKind::SecretPermissions { mode: 0o644, .. }
    ));
    fs::set_permissions(gw(&d), fs::Permissions::from_mode(0o600)).unwrap();
    let c = load(&gw(&d)).unwrap();
    assert_eq!(
        c.connections[0].auth,
        Auth::Psk(PskSecret::new(b"inline".to_vec()))
    );
    // Hex.
    let text = BASE.replace("psk_file = \"psk.secret\"", "psk = \"0x00ff\"");
    let c = parse(&text, &gw(&d)).unwrap();
    assert_eq!(
        c.connections[0].auth,
        Auth::Psk(PskSecret::new(vec![0, 0xff]))
    );
}

#[test]
fn duplicate_name_points_at_the_second() {
    let text = format!("{BASE}\n{BASE}");
    let e = parse_err(
        &text,
        11,
        8,
        "duplicate connection name \"a\" (first used on line 2)",
    );
    assert!(matches!(
        e.kind,
        ConfigErrorKind::DuplicateName { first_line: 2, .. }
    ));
}

#[test]
fn initiate_with_any_is_refused() {
    let text = BASE.replace("[\"192.0.2.2\"]", "\"%any\"");
    let text = format!("{text}start = \"initiate\"\n");
    let e = parse_err(&text, 9, 9, "start = \"initiate\" needs remote_addrs");
    assert!(matches!(e.kind, ConfigErrorKind::Invalid { .. }));
}

#[test]
fn smoltcp_needs_its_table_and_the_table_needs_smoltcp() {
    parse_err(
        "[gateway]\ntransport = \"smoltcp\"\n",
        2,
        13,
        "needs a [smoltcp] table",
    );
    parse_err(
        "[gateway]\nport = 4500\n\n[smoltcp]\naddress = \"192.0.2.1/24\"\n",
        4,
        1,
        "only used with transport = \"smoltcp\"",
    );
    parse_err(
        "[gateway]\ntransport = \"dpdk\"\n",
        2,
        13,
        "use \"kernel\" or \"smoltcp\"",
    );
}

#[test]
fn smoltcp_on_af_xdp() {
    let d = dir();
    let head = "[gateway]\ntransport = \"smoltcp\"\n\n[smoltcp]\naddress = \"192.0.2.2/24\"\n";
    let ok = format!(
        "{head}port = \"af_xdp\"\ninterface = \"eth1\"\nxdp_mode = \"native\"\nxdp_copy = true\n"
    );
    let c = parse(&ok, &gw(&d)).unwrap();
    let OuterTransport::Smoltcp(nic) = &c.gateway.transport else {
        panic!("{:?}", c.gateway.transport)
    };
    assert_eq!(
        nic.port,
        NicPort::AfXdp {
            interface: "eth1".into(),
            mode: XdpMode::Native,
            force_copy: true,
        }
    );
    let c = parse(
        &format!("{head}port = \"af_xdp\"\ninterface = \"eth1\"\nmtu = 3826\n"),
        &gw(&d),
    )
    .unwrap();
    let OuterTransport::Smoltcp(nic) = &c.gateway.transport else {
        panic!()
    };
    assert!(matches!(
        nic.port,
        NicPort::AfXdp {
            mode: XdpMode::Auto,
            force_copy: false,
            ..
        }
    ));
    parse_err(
        &format!("{head}port = \"af_xdp\"\n"),
        6,
        8,
        "needs interface",
    );
    parse_err(
        &format!("{head}port = \"dpdk\"\n"),
        6,
        8,
        "use \"tap\" or \"af_xdp\"",
    );
    parse_err(
        &format!("{head}port = \"af_xdp\"\ninterface = \"eth1\"\ntap = \"t0\"\n"),
        8,
        7,
        "tap is for port = \"tap\"",
    );
    parse_err(
        &format!("{head}interface = \"eth1\"\n"),
        6,
        13,
        "interface is for port = \"af_xdp\"",
    );
    parse_err(
        &format!("{head}xdp_mode = \"native\"\n"),
        6,
        12,
        "xdp_mode is for port",
    );
    parse_err(
        &format!("{head}port = \"af_xdp\"\ninterface = \"eth1\"\nxdp_mode = \"hw\"\n"),
        8,
        12,
        "use \"auto\"",
    );
    parse_err(
        &format!("{head}port = \"af_xdp\"\ninterface = \"eth1\"\nmtu = 3827\n"),
        8,
        7,
        "above 3826",
    );
    parse_err(
        &format!("{head}port = \"af_xdp\"\ninterface = \"eth1/x\"\n"),
        7,
        13,
        "interface",
    );
}

#[test]
fn syntax_error() {
    let e = parse_err("[gateway]\nport = = 4500\n", 2, 8, "");
    assert!(matches!(e.kind, ConfigErrorKind::Syntax { .. }));
    parse_err("[gateway]\nport = \"4500\"\n", 2, 8, "expected an integer");
    parse_err("[gateway]\nlog_level = \"verbose\"\n", 2, 13, "`verbose`");
    parse_err(
        "[[connection]]\npsk_file = \"x\"\n",
        1,
        1,
        "missing key `name`",
    );
}

#[test]
fn other_invalid_values() {
    parse_err("[gateway]\nworkers = 65\n", 2, 11, "workers = 65");
    parse_err("[gateway]\nport = 0\n", 2, 8, "port = 0");
    parse_err(
        "[gateway]\ncontrol_socket = \"iketcp.sock\"\n",
        2,
        18,
        "absolute",
    );
    parse_err(
        "[gateway]\nredial_initial = \"2m\"\n",
        2,
        18,
        "redial_max (60s) is shorter",
    );
    parse_err("[tun]\nname = \"a/b\"\n", 2, 8, "tun name");
    parse_err(
        "[tun]\nname = \"sixteen-bytes-xx\"\n",
        2,
        8,
        "1 to 15 bytes",
    );
    parse_err("[tun]\nmtu = 500\n", 2, 7, "mtu = 500");
    parse_err(
        "[tun]\naddresses = [\"2001:db8::1/64\"]\nmtu = 1279\n",
        3,
        7,
        "1280",
    );
    parse_err(
        &format!("{BASE}mode = \"transport\"\n"),
        9,
        8,
        "not supported by the gateway",
    );
    parse_err(
        &format!("{BASE}replay_window = 32\n"),
        9,
        17,
        "use 64..=4096 packets",
    );
    parse_err(
        &format!("{BASE}replay_window = 0\n"),
        9,
        17,
        "use 64..=4096 packets",
    );
    parse_err(
        &format!("{BASE}auth = \"pubkey\"\n"),
        9,
        8,
        "only psk is supported",
    );
    parse_err(&format!("{BASE}esn = \"maybe\"\n"), 9, 7, "esn = \"maybe\"");
    parse_err(
        "[limits]\npuzzle_difficulty = 4\n",
        2,
        21,
        "puzzle_difficulty",
    );
    parse_err(
        "[limits]\nidle_connection_timeout = \"2h\"\n",
        2,
        27,
        "1s..1h",
    );
    parse_err(
        "[limits]\nmax_connections = 10\nuntrusted_connections = 20\n",
        3,
        25,
        "above max_connections",
    );
    parse_err("[limits]\nmax_fds = 10\n", 2, 1, "unknown key `max_fds`");
    parse_err(
        &format!("{BASE}reconnect_probe = \"update\"\n"),
        9,
        19,
        "use \"liveness\" or \"rekey\"",
    );
    parse_err(&BASE.replace("\"a\"", "\"a b\""), 2, 8, "letters, digits");
    parse_err(
        &BASE.replace("local_id = \"@a.example\"\n", ""),
        1,
        1,
        "local_id is required",
    );
    parse_err(
        &BASE
            .replace("remote_id = \"@b.example\"\n", "")
            .replace("[\"192.0.2.2\"]", "\"%any\""),
        1,
        1,
        "remote_id is required",
    );
    parse_err(
        &BASE.replace("local_ts = [\"198.51.100.0/24\"]\n", ""),
        1,
        1,
        "local_ts is required",
    );
    parse_err(
        &BASE.replace("\"@b.example\"", "\"%any\""),
        5,
        13,
        "bad identity \"%any\"",
    );
    parse_err(
        &BASE.replace("\"@b.example\"", "\"@#abc\""),
        5,
        13,
        "odd number of hex digits",
    );
}

#[test]
fn value_syntaxes() {
    use super::raw::NumOrStr;
    let dur = |s: &str| values::duration(&NumOrStr::Str(s.into()));
    assert_eq!(dur("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(dur("30"), Ok(Duration::from_secs(30)));
    assert_eq!(dur("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(dur("1d"), Ok(Duration::from_secs(86_400)));
    assert_eq!(dur("1h30m5s"), Ok(Duration::from_secs(5405)));
    for bad in ["", "s", "5 m", "1.5h", "h1", "99999999999999999999d", "1é"] {
        assert!(dur(bad).is_err(), "{bad}");
    }
    let size = |s: &str| values::size(&NumOrStr::Str(s.into()));
    assert_eq!(size("10k"), Ok(10_240));
    assert_eq!(size("500M"), Ok(500 << 20));
    assert_eq!(size("1G"), Ok(1 << 30));
    assert_eq!(size("7"), Ok(7));
    assert!(size("1P").is_err() && size("k").is_err() && size("99999999T").is_err());

    let id = values::identity;
    assert_eq!(
        id("@host.example"),
        Ok(Identity::Fqdn(b"host.example".to_vec()))
    );
    assert_eq!(
        id("host.example"),
        Ok(Identity::Fqdn(b"host.example".to_vec()))
    );
    assert_eq!(id("user@host"), Ok(Identity::Rfc822(b"user@host".to_vec())));
    assert_eq!(
        id("@@user@host"),
        Ok(Identity::Rfc822(b"user@host".to_vec()))
    );
    assert_eq!(id("@#01:02"), Ok(Identity::KeyId(vec![1, 2])));
    assert_eq!(
        id("2001:db8::1"),
        Ok(Identity::Ipv6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 1
        )))
    );
    for bad in ["", "@", "@#", "@#zz", "a b", "%any", "hôte"] {
        assert!(id(bad).is_err(), "{bad}");
    }

    assert_eq!(values::mac("02:00:00:00:00:01"), Ok([2, 0, 0, 0, 0, 1]));
    assert!(values::mac("01:00:5e:00:00:01").is_err());
    assert!(values::mac("02:00:00:00:00").is_err());
    assert!(values::mac("02:00:00:00:00:0g").is_err());
}

#[test]
fn psk_debug_is_redacted() {
    let d = dir();
    let c = parse(FULL, &gw(&d)).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("shared secret") && !shown.contains("inline secret"));
    assert!(shown.contains("<redacted>"));
}

#[test]
fn io_errors_have_no_position() {
    let d = dir();
    let missing = d.path().join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(matches!(e.kind, ConfigErrorKind::Io { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read", missing.display()))
    );
    // Not UTF-8: the position of the first bad byte.
    fs::write(gw(&d), b"[gateway]\nport = \xff\n").unwrap();
    let e = load(&gw(&d)).unwrap_err();
    check_err(&e, &gw(&d), 2, 8, "not UTF-8");
}

#[test]
fn positions_count_characters() {
    // `é` is two bytes, one column.
    let e = parse_err("# é\n[gateway]\nlisten = [\"é\"]\n", 3, 11, "bad address");
    assert!(matches!(e.kind, ConfigErrorKind::BadAddress { .. }));
}

#[test]
fn default_proposals_are_all_valid() {
    assert_eq!(proposal::default_ike().len(), proposal::DEFAULT_IKE.len());
    for s in proposal::DEFAULT_IKE {
        assert_eq!(proposal::ike(s).map(|v| v.len()).ok(), Some(1), "{s}");
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

#[test]
fn example_files_load() {
    let d = dir();
    for (file, name) in [
        ("site-a-initiator.toml", "site-b"),
        ("site-b-responder.toml", "site-a"),
    ] {
        let text = fs::read_to_string(examples_dir().join(file)).unwrap();
        let path = d.path().join(file);
        fs::write(&path, &text).unwrap();
        let parsed = parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, loaded);
        let c = loaded.connection(name).unwrap();
        assert_eq!(c.auth, Auth::Psk(PskSecret::new(b"shared secret".to_vec())));
        assert!(c.pfs);
    }
    let a = load(&d.path().join("site-a-initiator.toml")).unwrap();
    let b = load(&d.path().join("site-b-responder.toml")).unwrap();
    let (ca, cb) = (&a.connections[0], &b.connections[0]);
    // The two ends mirror each other.
    assert_eq!(ca.local_id, cb.remote_id);
    assert_eq!(ca.remote_id, cb.local_id);
    assert_eq!(ca.local_ts, cb.remote_ts);
    assert_eq!(ca.remote_ts, cb.local_ts);
    assert_eq!(ca.ike_proposals, cb.ike_proposals);
    assert_eq!(ca.esp_proposals, cb.esp_proposals);
    assert_eq!(ca.start, StartAction::Initiate);
    assert_eq!(cb.start, StartAction::Listen);
    assert_eq!(
        ca.remote_addrs,
        RemoteAddrs::Addrs(vec![IpAddr::from([192, 0, 2, 2])])
    );
    assert_eq!(cb.remote_addrs, RemoteAddrs::Any);
    assert_eq!(a.gateway.listen, [IpAddr::from([192, 0, 2, 1])]);
    assert_eq!(b.gateway.listen, [IpAddr::from([192, 0, 2, 2])]);
}

/// The error quoted in docs/examples/README.md is the one the gateway gives.
#[test]
fn readme_error_example_is_current() {
    let d = dir();
    let file = "site-a-initiator.toml";
    let text = fs::read_to_string(examples_dir().join(file))
        .unwrap()
        .replace(
            "remote_addrs = [\"192.0.2.2\"]",
            "remote_addrs = [\"192.0.2.300\"]",
        );
    let e = parse(&text, &d.path().join(file)).unwrap_err();
    let quoted = format!("{file}:{}:{}: {}", e.line, e.column, e.kind);
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = fs::read_to_string(examples_dir().join("README.md")).unwrap();
    assert!(
        words(&readme).contains(&format!("`{}`", words(&quoted))),
        "README.md should quote {quoted:?}"
    );
}

/// Every truncation of the examples and many byte mutations: `parse` returns, it never panics.
#[test]
fn no_input_panics() {
    let d = dir();
    let path = gw(&d);
    let site_a = fs::read_to_string(examples_dir().join("site-a-initiator.toml")).unwrap();
    let mut inputs = 0usize;
    for text in [FULL, site_a.as_str(), BASE] {
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = parse(&text[..end], &path);
            let _ = parse(&text[end..], &path);
            inputs += 2;
        }
        // Deterministic mutations (a 64-bit LCG): replace, insert or delete a byte, with bytes
        // that matter to TOML and to the value syntaxes.
        const BYTES: &[u8] = b"[]{}\"'=#\n\\.,-/:@%0123456789abcdefxsmhdkMG \t\x00\xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for _ in 0..2000 {
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() % (bytes.len() + 1);
                let b = BYTES[next() % BYTES.len()];
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.push(b),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text, &path);
            inputs += 1;
        }
    }
    assert!(inputs > 6000);
}

#[test]
fn mark_is_a_positive_32_bit_number() {
    let d = dir();
    let path = gw(&d);
    let c = parse("[gateway]\nmark = 42\n", &path).unwrap();
    assert_eq!(c.gateway.mark, Some(42));
    assert_eq!(parse("", &path).unwrap().gateway.mark, None);
    parse_err("[gateway]\nmark = 0\n", 2, 8, "mark");
    parse_err("[gateway]\nmark = 4294967296\n", 2, 8, "mark");
}

#[test]
fn outer_tcp_options_default_and_parse() {
    let d = dir();
    let path = gw(&d);
    let c = parse("", &path).unwrap();
    assert_eq!(c.gateway.tcp, OuterTcp::default());
    assert_eq!(c.gateway.tcp.notsent_lowat, Some(131_072));
    let c = parse(
        "[gateway]\ntcp_nodelay = false\ntcp_send_buffer = 262144\ntcp_notsent_lowat = 0\n",
        &path,
    )
    .unwrap();
    assert_eq!(
        c.gateway.tcp,
        OuterTcp {
            nodelay: false,
            send_buffer: Some(262_144),
            notsent_lowat: None,
        }
    );
    parse_err(
        "[gateway]\ntcp_send_buffer = 10\n",
        2,
        19,
        "tcp_send_buffer",
    );
}
