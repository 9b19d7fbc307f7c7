//! The gateway configuration file (TOML).
//!
//! [`load`] reads a file, [`parse`] takes its text; both give a [`GatewayConfig`] whose values
//! are checked and typed (addresses, proposals as [`IkeSuite`] / [`EspSuite`], identities,
//! traffic selectors, secrets), or a [`ConfigError`] that names the file, line and column of the
//! value at fault and what is wrong with it. Names follow strongSwan's `swanctl.conf` where the
//! meaning is the same (`local_addrs`, `remote_addrs`, `proposals`, `esp_proposals`, `local_ts`,
//! `rekey_time`, `dpd_delay`, ...), so an operator who knows one knows the other.
//!
//! ```toml
//! [gateway]
//! listen = ["192.0.2.1"]
//!
//! [tun]
//! addresses = ["198.51.100.1/24"]
//!
//! [[connection]]
//! name = "site-b"
//! remote_addrs = ["192.0.2.2"]
//! local_id = "@a.example"
//! remote_id = "@b.example"
//! psk_file = "psk.secret"
//! local_ts = ["198.51.100.0/24"]
//! remote_ts = ["203.0.113.0/24"]
//! ```
//!
//! `docs/examples/` has a commented pair of files for a site-to-site tunnel.
//!
//! Keys that take a list also take a single string (`remote_addrs = "%any"`). Durations are
//! `"30s"`, `"5m"`, `"4h"`, `"1d"`, sums such as `"1h30m"`, or an integer of seconds; sizes and
//! packet counts are integers or `"10k"`, `"500M"`, `"1G"` (powers of 1024, as strongSwan).
//!
//! The TOML is read into raw structs (`raw`) that refuse unknown keys and keep each value's
//! byte span, then checked into the types below (`validate`).

mod error;
mod proposal;
mod raw;
mod validate;
mod values;

/// A unicast MAC address like `02:00:00:00:00:01` (as `[smoltcp] mac` and sysfs write them).
pub(crate) use values::mac as parse_mac;

#[cfg(test)]
mod tests;

use core::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

pub use self::error::{ConfigError, ConfigErrorKind};
pub use iketcp_control::ReconnectProbe;
pub use iketcp_control::ike::crypto::{DhGroup, EspSuite, IkeSuite};
pub use iketcp_control::ike::wire::{Identity, TrafficSelector};

/// Reads and checks the configuration file at `path`. Beyond [`parse`], refuses an inline
/// `psk` unless the file itself is private to its owner (mode 0600 or stricter).
///
/// # Errors
/// The file cannot be read, or any [`ConfigErrorKind`].
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| error::io_error(path, &e))?);
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            // Point at the first byte that is not UTF-8.
            let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
            let prefix = String::from_utf8_lossy(valid);
            let src = error::Source {
                text: &prefix,
                path,
            };
            return Err(src.error(
                &(prefix.len()..prefix.len()),
                ConfigErrorKind::Syntax {
                    message: "the file is not UTF-8 text".to_owned(),
                },
            ));
        }
    };
    let (config, inline_psk) = validate::validate(text, path)?;
    if let Some(span) = inline_psk {
        let meta = std::fs::metadata(path).map_err(|e| error::io_error(path, &e))?;
        let mode = file_mode(&meta);
        if mode & 0o077 != 0 {
            let src = error::Source { text, path };
            return Err(src.error(
                &span,
                ConfigErrorKind::SecretPermissions {
                    path: path.to_path_buf(),
                    mode,
                },
            ));
        }
    }
    Ok(config)
}

/// Checks configuration text. `path` names the file in errors, and relative `psk_file` and
/// `keylog_dir` paths are resolved against its directory; `psk_file`s are read (and their
/// permissions checked) here. An inline `psk` is accepted whatever the file's mode: [`load`]
/// checks that.
///
/// # Errors
/// Any [`ConfigErrorKind`] but `Io`.
pub fn parse(text: &str, path: &Path) -> Result<GatewayConfig, ConfigError> {
    validate::validate(text, path).map(|(config, _)| config)
}

fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// The whole file, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `[gateway]`: the process, its sockets and its outer transport.
    pub gateway: GatewaySection,
    /// `[tun]`: the inner-side device.
    pub tun: TunSection,
    /// `[limits]`: what unauthenticated peers may make the gateway hold.
    pub limits: Limits,
    /// `[[connection]]`: the tunnels, in file order; names are unique.
    pub connections: Vec<ConnectionConfig>,
}

/// `[limits]`: bounds on what peers that have not authenticated may make the gateway hold
/// (see `docs/security.md`). Per worker where it says so; every key has a safe default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `max_connections`: open TCP connections per worker (default 65536).
    pub max_connections: usize,
    /// `untrusted_connections`: accepted connections per worker that have not yet carried an
    /// authenticated IKE SA or authentic ESP (default 1024); more are reset at once.
    pub untrusted_connections: usize,
    /// `untrusted_per_source`: the same per source address (IPv6: per /64), default 32.
    pub untrusted_per_source: usize,
    /// `idle_connection_timeout`: an accepted connection that carries no live IKE SA (no valid
    /// prefix and IKE_SA_INIT yet, or its IKE SAs ended) is closed after this (default 5s,
    /// RFC 9329 §6.1 "a few seconds").
    pub idle_connection_timeout: Duration,
    /// `half_open_timeout`: an IKE SA whose IKE_AUTH has not completed is dropped after this
    /// (default 30s).
    pub half_open_timeout: Duration,
    /// `cookie_threshold`: half-open IKE SAs of a listener from which IKE_SA_INIT requests
    /// must solve a puzzle (RFC 8019; default 1024).
    pub cookie_threshold: usize,
    /// `puzzle_difficulty`: trailing zero bits of a puzzle (RFC 8019 §7.1.1.1), 8..=24,
    /// default 16.
    pub puzzle_difficulty: u8,
    /// `ike_sa_init_per_source`: IKE_SA_INIT requests per second processed from one source
    /// address (IPv6: /64); more are dropped unanswered. Default 50; 0: no limit.
    pub ike_sa_init_per_source: u32,
    /// `queued_bytes_per_connection`: bytes of frames a connection may have waiting for TCP
    /// send space (beyond what the kernel's or smoltcp's socket buffer holds) before its worker
    /// stops reading plaintext for it; 64 KiB..=64 MiB, default 1 MiB. With the frame bound
    /// (512) it caps what a peer with a zero window costs, and keeps the outer queue short.
    pub queued_bytes_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 65536,
            untrusted_connections: 1024,
            untrusted_per_source: 32,
            idle_connection_timeout: Duration::from_secs(5),
            half_open_timeout: Duration::from_secs(30),
            cookie_threshold: 1024,
            puzzle_difficulty: 16,
            ike_sa_init_per_source: 50,
            queued_bytes_per_connection: 1 << 20,
        }
    }
}

impl GatewayConfig {
    /// The connection named `name`.
    #[must_use]
    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySection {
    /// Data-plane workers, 1..=64. Default: the available parallelism (at most 64).
    pub workers: usize,
    /// How outer TCP is carried: `transport = "kernel"` (default) or `"smoltcp"` with a
    /// `[smoltcp]` table.
    pub transport: OuterTransport,
    /// `listen`: addresses to accept RFC 9329 connections on. Default `["0.0.0.0"]`.
    pub listen: Vec<IpAddr>,
    /// `port`: the TCP port to listen on. Default 4500 (RFC 9329 §4 has no fixed port; 4500
    /// is the common choice).
    pub port: u16,
    /// `control_socket`: the Unix socket `iketcp status|up|down|rekey|reload` talk to; an
    /// absolute path. Default `/run/iketcp/iketcp.sock`.
    pub control_socket: PathBuf,
    /// `metrics = "127.0.0.1:9469"`: where to serve Prometheus metrics. Off by default.
    pub metrics: Option<SocketAddr>,
    /// `log_level`: error, warn, info (default), debug, trace.
    pub log_level: LogLevel,
    /// `log_format`: text (default) or json.
    pub log_format: LogFormat,
    /// `keylog_dir`: where to write Wireshark key tables (relative to the file's directory).
    /// Off by default.
    pub keylog_dir: Option<PathBuf>,
    /// How a `start = "initiate"` connection whose IKE SA ended is started again.
    pub redial: RedialPolicy,
    /// `mark`: SO_MARK on the outer TCP sockets (kernel transport), for policy routing. Off by
    /// default.
    pub mark: Option<u32>,
    /// How the kernel transport's outer TCP sockets are tuned.
    pub tcp: OuterTcp,
}

/// `tcp_nodelay`, `tcp_send_buffer`, `tcp_notsent_lowat` in `[gateway]` (kernel transport).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OuterTcp {
    /// `tcp_nodelay`: TCP_NODELAY. Default true: each frame is a whole packet of the tunnel,
    /// and Nagle's algorithm only delays the ones behind an unacknowledged small one (an ACK of
    /// inner TCP, an IKE message) without saving anything.
    pub nodelay: bool,
    /// `tcp_send_buffer`: SO_SNDBUF in bytes; default unset (the kernel's autotuning).
    pub send_buffer: Option<usize>,
    /// `tcp_notsent_lowat`: TCP_NOTSENT_LOWAT in bytes, the most data the kernel holds that it
    /// has not sent yet: the outer queue stays about one window long instead of the whole send
    /// buffer (RFC 9329 §9: a long outer queue only adds delay to the inner flows). Default
    /// 131072; 0 leaves it unset.
    pub notsent_lowat: Option<u32>,
}

impl Default for OuterTcp {
    fn default() -> Self {
        OuterTcp {
            nodelay: true,
            send_buffer: None,
            notsent_lowat: Some(128 * 1024),
        }
    }
}

/// The outer TCP transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OuterTransport {
    /// The kernel's TCP (epoll sockets).
    Kernel,
    /// smoltcp in the workers, on a TAP device of its own or on a NIC through AF_XDP.
    Smoltcp(SmolNic),
}

/// `[smoltcp] port`: where smoltcp's Ethernet frames come from and go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicPort {
    /// `port = "tap"` (default): `tap`, a TAP device of its own (default `iketcp-tap0`), which the
    /// host bridges or routes.
    Tap(String),
    /// `port = "af_xdp"`: AF_XDP sockets on every receive queue of `interface`, with an XDP
    /// program that steals only the frames of `address` (ARP, IP) and leaves the rest to the
    /// kernel.
    AfXdp {
        /// `interface`: the NIC (required).
        interface: String,
        /// `xdp_mode`: `"auto"` (default: native, else generic), `"native"` or `"generic"`.
        mode: XdpMode,
        /// `xdp_copy`: bind in copy mode even where the driver offers zero-copy. Default false.
        force_copy: bool,
    },
}

/// `[smoltcp] xdp_mode`: how the AF_XDP port attaches its XDP program (the data plane's own
/// type: `Auto`, `Native`, `Generic`).
pub use iketcp_dataplane::port::af_xdp::AttachMode as XdpMode;

/// `[smoltcp]`: the port and the address smoltcp's interface has on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmolNic {
    /// `port`, `tap`, `interface`, `xdp_mode`, `xdp_copy`.
    pub port: NicPort,
    /// `address = "192.0.2.1/24"`: the interface address ...
    pub address: IpAddr,
    /// ... and its prefix length.
    pub prefix_len: u8,
    /// `mac`: smoltcp's MAC. Default on a TAP: 02:00 followed by the last four octets of
    /// `address` (locally administered, unicast). Default on AF_XDP: `None`, the NIC's own MAC
    /// (read at start), which the NIC's filter accepts.
    pub mac: Option<[u8; 6]>,
    /// `next_hop`: the router for destinations off the link, if any.
    pub next_hop: Option<IpAddr>,
    /// `mtu` of the link, 576..=9000 (1280 minimum for IPv6; at most 3826 on AF_XDP, one
    /// 4 KiB UMEM frame). Default 1500.
    pub mtu: u16,
}

/// `log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    Info,
    /// For debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level as written (and as `tracing` filters spell it).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `log_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// Redialing a lost outer connection: waits start at `initial` and double up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedialPolicy {
    /// `redial_initial`: the first wait. Default 1 s.
    pub initial: Duration,
    /// `redial_max`: the longest wait, at least `initial`. Default 60 s.
    pub max: Duration,
    /// `redial_attempts`: attempts before giving up; 0 (the default) never gives up.
    pub attempts: u32,
}

/// `[tun]`: the device inner packets come from and go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunSection {
    /// `name`: the device name. Default `iketcp0`.
    pub name: String,
    /// `addresses = ["198.51.100.1/24"]`: addresses to put on the device.
    pub addresses: Vec<(IpAddr, u8)>,
    /// `mtu`, 576..=9000 (1280 minimum with an IPv6 address). Default
    /// [`default_tun_mtu`] for the outer address family.
    pub mtu: u16,
    /// `mss_clamp`: clamp the MSS of inner TCP SYNs to fit `mtu`. Default false.
    pub mss_clamp: bool,
    /// `offload`: open the device with `IFF_VNET_HDR`, TSO and checksum offload, so inner TCP
    /// comes in 64 KiB super-packets (cut into segments by the worker) and leaves as joined
    /// ones. Default true.
    pub offload: bool,
}

/// The default TUN MTU: the largest inner packet whose ESP packet, with its RFC 9329 framing,
/// fits one 1500-byte outer TCP/IP packet. RFC 9329 §3 (R-3-a) asks to cap encapsulated
/// messages at the sizes one would use for UDP-encapsulated ESP, and that cap is the tunnel MTU;
/// this one counts TCP's overhead instead of UDP's, which is larger, so it is within that cap and
/// an inner packet never costs two outer segments.
#[must_use]
pub const fn default_tun_mtu(ipv6_outer: bool) -> u16 {
    let path = 1500; // The outer link's MTU (Ethernet).
    let ip = if ipv6_outer { 40 } else { 20 }; // Outer IPv6 or IPv4 header, no options.
    let tcp = 20 + 12; // TCP header plus the timestamp option (RFC 7323) Linux sends.
    let length = 2; // RFC 9329 §3: the 16-bit Length before each ESP packet.
    let esp_header = 8; // SPI and sequence number (RFC 4303 §2).
    let iv = 8; // AES-GCM (RFC 4106 §3.1) and ChaCha20-Poly1305 (RFC 7634 §2) IV.
    let trailer = 3 + 1 + 1; // At most 3 octets of padding, Pad Length, Next Header.
    let icv = 16; // AES-GCM-16 and Poly1305 tags.
    let fits = path - ip - tcp - length - esp_header - iv - trailer - icv;
    fits / 4 * 4 // Round down to a multiple of 4.
}

/// One `[[connection]]`: a tunnel to a peer gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// `name`: unique in the file, `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// `local_addrs`: our addresses for this connection; an initiator dials from the first.
    /// Empty when not given.
    pub local_addrs: Vec<IpAddr>,
    /// `remote_addrs`: the peer's addresses, or `"%any"` (the default) to accept any peer.
    pub remote_addrs: RemoteAddrs,
    /// `remote_port`: the peer's TCP port. Default 4500.
    pub remote_port: u16,
    /// `local_id`: our identity (strongSwan syntax). Default: the first of `local_addrs`.
    pub local_id: Identity,
    /// `remote_id`: the identity the peer must prove. Default: `remote_addrs` when it is one
    /// address.
    pub remote_id: Identity,
    /// `auth = "psk"` with `psk_file` (or an inline `psk`).
    pub auth: Auth,
    /// `proposals`: IKE SA suites, most preferred first.
    pub ike_proposals: Vec<IkeSuite>,
    /// `esp_proposals`: Child SA suites with their ESN choice, most preferred first.
    pub esp_proposals: Vec<(EspSuite, bool)>,
    /// `local_ts`: the traffic on our side (required).
    pub local_ts: Vec<TrafficSelector>,
    /// `remote_ts`: the traffic on the peer's side (required).
    pub remote_ts: Vec<TrafficSelector>,
    /// `start`: dial the peer or wait for it. Default: initiate when `remote_addrs` lists
    /// addresses, listen when it is `%any`.
    pub start: StartAction,
    /// `dpd_delay`: how long the peer may stay silent before a liveness check. Default 30 s.
    pub dpd_delay: Duration,
    /// `rekey_time`: when to rekey the IKE SA. Default 4 h.
    pub rekey_time: Duration,
    /// `life_time`: when the IKE SA expires, longer than `rekey_time`. Default `rekey_time`
    /// + 10 %.
    pub life_time: Duration,
    /// `child_rekey_time`: when to rekey a Child SA. Default 1 h.
    pub child_rekey_time: Duration,
    /// `child_life_time`: when a Child SA expires, longer than `child_rekey_time`. Default
    /// `child_rekey_time` + 10 %.
    pub child_life_time: Duration,
    /// `rekey_bytes`: rekey a Child SA after this many bytes. Off by default.
    pub rekey_bytes: Option<u64>,
    /// `life_bytes`: a Child SA expires after this many bytes (more than `rekey_bytes`).
    pub life_bytes: Option<u64>,
    /// `rekey_packets`: rekey a Child SA after this many packets.
    pub rekey_packets: Option<u64>,
    /// `life_packets`: a Child SA expires after this many packets (more than
    /// `rekey_packets`).
    pub life_packets: Option<u64>,
    /// `esn`: extended sequence numbers offered first (`true`, `"yes"`, `"both"`) or not
    /// (`false`, `"no"`, the default). `esp_proposals` carries the exact offer.
    pub esn: bool,
    /// `replay_window`: anti-replay window in packets, 64..=4096. Default 1024 (the data
    /// plane's).
    pub replay_window: u32,
    /// `mode`: only `"tunnel"`.
    pub mode: Mode,
    /// `reconnect_probe`: what goes first on a new TCP connection after a reconnect:
    /// `"liveness"` (an empty INFORMATIONAL, RFC 9329 §6.1; the default) or `"rekey"` (an IKE
    /// SA rekey, for libreswan 4.x peers; see `docs/interop.md`).
    pub reconnect_probe: ReconnectProbe,
    /// An ESP proposal names a DH group: Child SA rekeys use PFS with [`Self::child_dh`].
    pub pfs: bool,
    /// The PFS group of Child SA rekeys (`aes256gcm16-x25519`), if any.
    pub child_dh: Option<DhGroup>,
}

/// `remote_addrs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAddrs {
    /// `"%any"`: any peer that authenticates (a responder only).
    Any,
    /// These addresses; an initiator dials the first.
    Addrs(Vec<IpAddr>),
}

/// `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAction {
    /// Dial the peer when the gateway starts (and redial it).
    Initiate,
    /// Wait for the peer.
    Listen,
}

/// `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tunnel mode (RFC 4303 §3.1.2).
    Tunnel,
}

/// How the peers authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// A pre-shared key (RFC 7296 §2.15).
    Psk(PskSecret),
}

/// A pre-shared key: wiped on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PskSecret(Zeroizing<Vec<u8>>);

impl PskSecret {
    /// Wraps key bytes.
    #[must_use]
    pub fn new(key: Vec<u8>) -> PskSecret {
        PskSecret(Zeroizing::new(key))
    }

    /// The key.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PskSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
