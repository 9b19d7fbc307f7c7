//! Raw TOML values to the checked types of `super`, with the position of whatever is wrong.

use core::ops::Range;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use zeroize::Zeroizing;

use super::error::Source;
use super::raw::{
    BoolOrStr, NumOrStr, RawConfig, RawConnection, RawGateway, RawLimits, RawSmoltcp, RawTun,
    StrList,
};
use super::{
    Auth, ConfigError, ConfigErrorKind, ConnectionConfig, DhGroup, EspSuite, GatewayConfig,
    GatewaySection, IkeSuite, Limits, LogFormat, LogLevel, Mode, NicPort, OuterTcp, OuterTransport,
    PskSecret, ReconnectProbe, RedialPolicy, RemoteAddrs, SmolNic, StartAction, TrafficSelector,
    TunSection, XdpMode, default_tun_mtu, proposal, values,
};
use iketcp_control::ike::wire::MAX_SELECTORS;
use iketcp_dataplane::port::af_xdp::MAX_FRAME;
use iketcp_dataplane::sa::replay::{MAX_WINDOW, MIN_WINDOW};

/// Defaults that are not computed.
const DEFAULT_PORT: u16 = 4500;
const DEFAULT_CONTROL_SOCKET: &str = "/run/iketcp/iketcp.sock";
const DEFAULT_TAP: &str = "iketcp-tap0";
const DEFAULT_TUN: &str = "iketcp0";
const DEFAULT_LINK_MTU: u16 = 1500;
const MAX_WORKERS: i64 = 64;
const DEFAULT_DPD_DELAY: Duration = Duration::from_secs(30);
const DEFAULT_REKEY_TIME: Duration = Duration::from_secs(4 * 3600);
const DEFAULT_CHILD_REKEY_TIME: Duration = Duration::from_secs(3600);
const DEFAULT_REDIAL_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_REDIAL_MAX: Duration = Duration::from_secs(60);
const DEFAULT_REPLAY_WINDOW: u32 = iketcp_dataplane::sa::replay::DEFAULT_WINDOW;
/// The anti-replay windows the data plane implements (RFC 4303 §3.4.3, RFC 6479): 64..=4096.
const REPLAY_WINDOWS: core::ops::RangeInclusive<i64> = MIN_WINDOW as i64..=MAX_WINDOW as i64;
/// Link MTUs accepted: IPv4's minimum datagram (RFC 791) to jumbo frames; IPv6 needs 1280
/// (RFC 8200 §5).
const MTU_MIN: i64 = 576;
const MTU_MIN_V6: i64 = 1280;
const MTU_MAX: i64 = 9000;

/// The checked configuration, and where an inline `psk` is (for [`super::load`]'s check of
/// the file's mode).
pub(super) fn validate(
    text: &str,
    path: &Path,
) -> Result<(GatewayConfig, Option<Range<usize>>), ConfigError> {
    let src = Source { text, path };
    let raw: RawConfig = toml::from_str(text).map_err(|e| syntax(&src, &e))?;
    let v = Validator {
        src,
        dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
    };
    v.config(&raw)
}

fn syntax(src: &Source<'_>, e: &toml::de::Error) -> ConfigError {
    // serde's words for a struct are "field" and "i64"; a TOML file has keys and integers.
    let message = e
        .message()
        .replacen("unknown field `", "unknown key `", 1)
        .replacen("missing field `", "missing key `", 1)
        .replace("expected i64", "expected an integer");
    let kind = ConfigErrorKind::Syntax { message };
    match e.span() {
        Some(span) => src.error(&span, kind),
        None => ConfigError {
            file: src.path.to_path_buf(),
            line: 0,
            column: 0,
            kind,
        },
    }
}

/// Each element of a string-or-list with its span.
fn items(list: &Spanned<StrList>) -> Vec<(&str, Range<usize>)> {
    match list.get_ref() {
        StrList::One(s) => vec![(s.as_str(), list.span())],
        StrList::Many(v) => v.iter().map(|s| (s.get_ref().as_str(), s.span())).collect(),
    }
}

/// ESP suites with their ESN choice, and the PFS group of Child SA rekeys.
type EspOffer = (Vec<(EspSuite, bool)>, Option<DhGroup>);

struct Validator<'a> {
    src: Source<'a>,
    /// The configuration file's directory, for relative paths.
    dir: PathBuf,
}

impl Validator<'_> {
    fn config(
        &self,
        raw: &RawConfig,
    ) -> Result<(GatewayConfig, Option<Range<usize>>), ConfigError> {
        let gateway = self.gateway(&raw.gateway, raw.smoltcp.as_ref())?;
        let mut connections: Vec<ConnectionConfig> = Vec::with_capacity(raw.connection.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut inline_psk = None;
        for c in &raw.connection {
            let name = &c.get_ref().name;
            if let Some(&first) = names.get(name.get_ref()) {
                return Err(self.src.error(
                    &name.span(),
                    ConfigErrorKind::DuplicateName {
                        name: name.get_ref().clone(),
                        first_line: self.src.line(first),
                    },
                ));
            }
            names.insert(name.get_ref().clone(), name.span().start);
            let (conn, psk_span) = self.connection(c)?;
            inline_psk = inline_psk.or(psk_span);
            connections.push(conn);
        }
        let ipv6_outer = gateway.listen.iter().any(IpAddr::is_ipv6)
            || matches!(&gateway.transport, OuterTransport::Smoltcp(n) if n.address.is_ipv6())
            || connections.iter().any(|c| {
                c.local_addrs.iter().any(IpAddr::is_ipv6)
                    || matches!(&c.remote_addrs, RemoteAddrs::Addrs(a) if a.iter().any(IpAddr::is_ipv6))
            });
        let tun = self.tun(&raw.tun, ipv6_outer)?;
        Ok((
            GatewayConfig {
                gateway,
                tun,
                limits: self.limits_section(&raw.limits)?,
                connections,
            },
            inline_psk,
        ))
    }

    fn limits_section(&self, l: &RawLimits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let count = |v: &Option<Spanned<i64>>, key: &str, default: usize| match v {
            None => Ok(default),
            Some(v) => self.int(v, key, 1..=1 << 24),
        };
        let time = |v: &Option<Spanned<NumOrStr>>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(v) => {
                let t = self.duration(v, key)?;
                if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
                    return Err(self.invalid(&v.span(), format!("{key} must be 1s..1h")));
                }
                Ok(t)
            }
        };
        let max_connections = count(&l.max_connections, "max_connections", d.max_connections)?;
        let untrusted_connections = count(
            &l.untrusted_connections,
            "untrusted_connections",
            d.untrusted_connections,
        )?;
        if untrusted_connections > max_connections
            && let Some(v) = &l.untrusted_connections
        {
            return Err(self.invalid(
                &v.span(),
                format!("untrusted_connections is above max_connections ({max_connections})"),
            ));
        }
        Ok(Limits {
            max_connections,
            untrusted_connections,
            untrusted_per_source: count(
                &l.untrusted_per_source,
                "untrusted_per_source",
                d.untrusted_per_source,
            )?,
            idle_connection_timeout: time(
                &l.idle_connection_timeout,
                "idle_connection_timeout",
                d.idle_connection_timeout,
            )?,
            half_open_timeout: time(
                &l.half_open_timeout,
                "half_open_timeout",
                d.half_open_timeout,
            )?,
            cookie_threshold: match &l.cookie_threshold {
                None => d.cookie_threshold,
                Some(v) => self.int(v, "cookie_threshold", 0..=1 << 24)?,
            },
            puzzle_difficulty: match &l.puzzle_difficulty {
                None => d.puzzle_difficulty,
                Some(v) => self.int(v, "puzzle_difficulty", 8..=24)?,
            },
            ike_sa_init_per_source: match &l.ike_sa_init_per_source {
                None => d.ike_sa_init_per_source,
                Some(v) => self.int(v, "ike_sa_init_per_source", 0..=1 << 20)?,
            },
            queued_bytes_per_connection: match &l.queued_bytes_per_connection {
                None => d.queued_bytes_per_connection,
                Some(v) => self.int(v, "queued_bytes_per_connection", 1 << 16..=1 << 26)?,
            },
        })
    }

    fn invalid(&self, span: &Range<usize>, what: impl Into<String>) -> ConfigError {
        self.src.invalid(span, what)
    }

    /// An integer in `range`, as `T`.
    fn int<T: TryFrom<i64>>(
        &self,
        v: &Spanned<i64>,
        key: &str,
        range: core::ops::RangeInclusive<i64>,
    ) -> Result<T, ConfigError> {
        let n = *v.get_ref();
        let bad = || {
            self.invalid(
                &v.span(),
                format!(
                    "{key} = {n} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            )
        };
        if !range.contains(&n) {
            return Err(bad());
        }
        T::try_from(n).map_err(|_| bad())
    }

    fn duration(&self, v: &Spanned<NumOrStr>, key: &str) -> Result<Duration, ConfigError> {
        values::duration(v.get_ref()).map_err(|reason| {
            self.src.error(
                &v.span(),
                ConfigErrorKind::BadDuration {
                    value: v.get_ref().to_string(),
                    reason: format!("{key}: {reason}"),
                },
            )
        })
    }

    /// A duration that must not be zero, or `default`.
    fn positive_duration(
        &self,
        v: Option<&Spanned<NumOrStr>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let d = self.duration(v, key)?;
        if d.is_zero() {
            return Err(self.invalid(&v.span(), format!("{key} must be at least 1s")));
        }
        Ok(d)
    }

    fn size(&self, v: Option<&Spanned<NumOrStr>>, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let n = values::size(v.get_ref()).map_err(|reason| {
            self.src.error(
                &v.span(),
                ConfigErrorKind::BadSize {
                    value: v.get_ref().to_string(),
                    reason: format!("{key}: {reason}"),
                },
            )
        })?;
        if n == 0 {
            return Err(self.invalid(
                &v.span(),
                format!("{key} must be positive (leave it out for no limit)"),
            ));
        }
        Ok(Some(n))
    }

    fn ip(&self, s: &str, span: &Range<usize>, key: &str) -> Result<IpAddr, ConfigError> {
        values::ip(s).map_err(|reason| {
            self.src.error(
                span,
                ConfigErrorKind::BadAddress {
                    value: s.to_owned(),
                    reason: format!("{key}: {reason}"),
                },
            )
        })
    }

    fn ips(&self, list: &Spanned<StrList>, key: &str) -> Result<Vec<IpAddr>, ConfigError> {
        items(list)
            .iter()
            .map(|(s, span)| self.ip(s, span, key))
            .collect()
    }

    fn cidr(
        &self,
        s: &str,
        span: &Range<usize>,
        key: &str,
        network: bool,
    ) -> Result<(IpAddr, u8), ConfigError> {
        values::cidr(s, network).map_err(|reason| {
            self.src.error(
                span,
                ConfigErrorKind::BadCidr {
                    value: s.to_owned(),
                    reason: format!("{key}: {reason}"),
                },
            )
        })
    }

    /// A path relative to the configuration file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// A link MTU: 576..=9000, 1280 at least with IPv6 on the link.
    fn mtu(&self, v: &Spanned<i64>, key: &str, ipv6: bool) -> Result<u16, ConfigError> {
        let min = if ipv6 { MTU_MIN_V6 } else { MTU_MIN };
        if ipv6 && *v.get_ref() < MTU_MIN_V6 && *v.get_ref() >= MTU_MIN {
            return Err(self.invalid(
                &v.span(),
                format!(
                    "{key} = {} is below 1280, the minimum for IPv6 (RFC 8200 §5)",
                    v.get_ref()
                ),
            ));
        }
        self.int(v, key, min..=MTU_MAX)
    }

    fn gateway(
        &self,
        g: &RawGateway,
        smoltcp: Option<&Spanned<RawSmoltcp>>,
    ) -> Result<GatewaySection, ConfigError> {
        let workers = match &g.workers {
            Some(w) => self.int(w, "workers", 1..=MAX_WORKERS)?,
            None => std::thread::available_parallelism()
                .map_or(1, usize::from)
                .clamp(1, 64),
        };
        let transport = match (&g.transport, smoltcp) {
            (Some(t), Some(s)) if t.get_ref() == "smoltcp" => {
                OuterTransport::Smoltcp(self.smoltcp(s.get_ref())?)
            }
            (Some(t), None) if t.get_ref() == "smoltcp" => {
                return Err(self.invalid(
                    &t.span(),
                    "transport = \"smoltcp\" needs a [smoltcp] table (tap, address)",
                ));
            }
            (Some(t), _) if t.get_ref() != "kernel" => {
                return Err(self.invalid(
                    &t.span(),
                    format!(
                        "transport = {:?}: use \"kernel\" or \"smoltcp\"",
                        t.get_ref()
                    ),
                ));
            }
            (_, Some(s)) => {
                return Err(self.invalid(
                    &s.span(),
                    "a [smoltcp] table is only used with transport = \"smoltcp\" in [gateway]",
                ));
            }
            (_, None) => OuterTransport::Kernel,
        };
        let listen = match &g.listen {
            Some(l) => {
                let a = self.ips(l, "listen")?;
                if a.is_empty() {
                    return Err(self.invalid(&l.span(), "listen needs at least one address"));
                }
                a
            }
            None => vec![IpAddr::from([0, 0, 0, 0])],
        };
        let port = match &g.port {
            Some(p) => self.int(p, "port", 1..=i64::from(u16::MAX))?,
            None => DEFAULT_PORT,
        };
        let control_socket = match &g.control_socket {
            Some(p) => {
                let path = PathBuf::from(p.get_ref());
                if !path.is_absolute() {
                    return Err(self.invalid(
                        &p.span(),
                        format!("control_socket {:?} must be an absolute path", p.get_ref()),
                    ));
                }
                path
            }
            None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        };
        let metrics = match &g.metrics {
            Some(m) => {
                let a: SocketAddr = m.get_ref().parse().map_err(|_| {
                    self.src.error(
                        &m.span(),
                        ConfigErrorKind::BadAddress {
                            value: m.get_ref().clone(),
                            reason: "metrics: expected address:port, e.g. \"127.0.0.1:9469\" \
                                     or \"[::1]:9469\""
                                .to_owned(),
                        },
                    )
                })?;
                if a.port() == 0 {
                    return Err(self.invalid(&m.span(), "metrics needs a port other than 0"));
                }
                Some(a)
            }
            None => None,
        };
        let keylog_dir = match &g.keylog_dir {
            Some(d) if d.get_ref().is_empty() => {
                return Err(self.invalid(&d.span(), "keylog_dir is empty"));
            }
            Some(d) => Some(self.resolve(d.get_ref())),
            None => None,
        };
        let initial = self.positive_duration(
            g.redial_initial.as_ref(),
            "redial_initial",
            DEFAULT_REDIAL_INITIAL,
        )?;
        let max =
            self.positive_duration(g.redial_max.as_ref(), "redial_max", DEFAULT_REDIAL_MAX)?;
        if max < initial {
            let span = g
                .redial_max
                .as_ref()
                .or(g.redial_initial.as_ref())
                .map_or(0..0, Spanned::span);
            return Err(self.invalid(
                &span,
                format!(
                    "redial_max ({}s) is shorter than redial_initial ({}s)",
                    max.as_secs(),
                    initial.as_secs()
                ),
            ));
        }
        let attempts = match &g.redial_attempts {
            Some(a) => self.int(a, "redial_attempts", 0..=i64::from(u32::MAX))?,
            None => 0,
        };
        let mark = match &g.mark {
            Some(m) => Some(self.int(m, "mark", 1..=i64::from(u32::MAX))?),
            None => None,
        };
        let d = OuterTcp::default();
        let tcp = OuterTcp {
            nodelay: g.tcp_nodelay.unwrap_or(d.nodelay),
            send_buffer: match &g.tcp_send_buffer {
                Some(v) => Some(self.int(v, "tcp_send_buffer", 4096..=1 << 30)?),
                None => d.send_buffer,
            },
            notsent_lowat: match &g.tcp_notsent_lowat {
                Some(v) => match self.int::<u32>(v, "tcp_notsent_lowat", 0..=1 << 30)? {
                    0 => None,
                    n => Some(n),
                },
                None => d.notsent_lowat,
            },
        };
        Ok(GatewaySection {
            workers,
            mark,
            tcp,
            transport,
            listen,
            port,
            control_socket,
            metrics,
            log_level: g.log_level.unwrap_or(LogLevel::Info),
            log_format: g.log_format.unwrap_or(LogFormat::Text),
            keylog_dir,
            redial: RedialPolicy {
                initial,
                max,
                attempts,
            },
        })
    }

    fn smoltcp(&self, s: &RawSmoltcp) -> Result<SmolNic, ConfigError> {
        let name = |t: &Spanned<String>, key: &str| {
            values::interface_name(t.get_ref())
                .map_err(|e| self.invalid(&t.span(), format!("{key} {:?}: {e}", t.get_ref())))
                .map(|()| t.get_ref().clone())
        };
        let kind = s.port.as_ref().map_or("tap", |p| p.get_ref().as_str());
        let port = match kind {
            "tap" => {
                if let Some(i) = &s.interface {
                    return Err(self.invalid(
                        &i.span(),
                        "interface is for port = \"af_xdp\"; a TAP port is named by tap",
                    ));
                }
                for (key, v) in [("xdp_mode", s.xdp_mode.as_ref().map(|m| m.span()))] {
                    if let Some(span) = v {
                        return Err(self.invalid(&span, format!("{key} is for port = \"af_xdp\"")));
                    }
                }
                NicPort::Tap(match &s.tap {
                    Some(t) => name(t, "tap")?,
                    None => DEFAULT_TAP.to_owned(),
                })
            }
            "af_xdp" => {
                if let Some(t) = &s.tap {
                    return Err(self.invalid(
                        &t.span(),
                        "tap is for port = \"tap\"; AF_XDP runs on an interface",
                    ));
                }
                let interface = match &s.interface {
                    Some(i) => name(i, "interface")?,
                    None => {
                        let span = s.port.as_ref().map(|p| p.span()).unwrap_or_default();
                        return Err(
                            self.invalid(&span, "port = \"af_xdp\" needs interface (the NIC)")
                        );
                    }
                };
                let mode = match s
                    .xdp_mode
                    .as_ref()
                    .map(|m| (m.get_ref().as_str(), m.span()))
                {
                    None | Some(("auto", _)) => XdpMode::Auto,
                    Some(("native", _)) => XdpMode::Native,
                    Some(("generic", _)) => XdpMode::Generic,
                    Some((other, span)) => {
                        return Err(self.invalid(
                            &span,
                            format!(
                                "xdp_mode = {other:?}: use \"auto\", \"native\" or \"generic\""
                            ),
                        ));
                    }
                };
                NicPort::AfXdp {
                    interface,
                    mode,
                    force_copy: s.xdp_copy.unwrap_or(false),
                }
            }
            other => {
                let span = s.port.as_ref().map(|p| p.span()).unwrap_or_default();
                return Err(self.invalid(
                    &span,
                    format!("port = {other:?}: use \"tap\" or \"af_xdp\""),
                ));
            }
        };
        let (address, prefix_len) =
            self.cidr(s.address.get_ref(), &s.address.span(), "address", false)?;
        let mac = match &s.mac {
            Some(m) => Some(
                values::mac(m.get_ref())
                    .map_err(|e| self.invalid(&m.span(), format!("mac {:?}: {e}", m.get_ref())))?,
            ),
            None if matches!(port, NicPort::AfXdp { .. }) => None,
            None => Some(values::default_mac(address)),
        };
        let next_hop = match &s.next_hop {
            Some(h) => {
                let a = self.ip(h.get_ref(), &h.span(), "next_hop")?;
                if a.is_ipv4() != address.is_ipv4() {
                    return Err(self.invalid(
                        &h.span(),
                        "next_hop is not of the same address family as address",
                    ));
                }
                Some(a)
            }
            None => None,
        };
        let mtu = match &s.mtu {
            Some(m) => self.mtu(m, "mtu", address.is_ipv6())?,
            None => DEFAULT_LINK_MTU,
        };
        if matches!(port, NicPort::AfXdp { .. }) && usize::from(mtu) + 14 > MAX_FRAME {
            let span = s.mtu.as_ref().map(|m| m.span()).unwrap_or_default();
            return Err(self.invalid(
                &span,
                format!(
                    "mtu {mtu} is above {} on an AF_XDP port (one 4 KiB UMEM frame)",
                    MAX_FRAME - 14
                ),
            ));
        }
        Ok(SmolNic {
            port,
            address,
            prefix_len,
            mac,
            next_hop,
            mtu,
        })
    }

    fn tun(&self, t: &RawTun, ipv6_outer: bool) -> Result<TunSection, ConfigError> {
        let name = match &t.name {
            Some(n) => {
                values::interface_name(n.get_ref()).map_err(|e| {
                    self.invalid(&n.span(), format!("tun name {:?}: {e}", n.get_ref()))
                })?;
                n.get_ref().clone()
            }
            None => DEFAULT_TUN.to_owned(),
        };
        let addresses = match &t.addresses {
            Some(a) => items(a)
                .iter()
                .map(|(s, span)| self.cidr(s, span, "addresses", false))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let ipv6 = addresses.iter().any(|(a, _)| a.is_ipv6());
        let mtu = match &t.mtu {
            Some(m) => self.mtu(m, "mtu", ipv6)?,
            None => default_tun_mtu(ipv6_outer),
        };
        Ok(TunSection {
            name,
            addresses,
            mtu,
            mss_clamp: t.mss_clamp.unwrap_or(false),
            offload: t.offload.unwrap_or(true),
        })
    }

    fn connection(
        &self,
        c: &Spanned<RawConnection>,
    ) -> Result<(ConnectionConfig, Option<Range<usize>>), ConfigError> {
        let table = c.span();
        let c = c.get_ref();
        let name = c.name.get_ref().clone();
        values::connection_name(&name)
            .map_err(|e| self.invalid(&c.name.span(), format!("connection name {name:?}: {e}")))?;
        let local_addrs = match &c.local_addrs {
            Some(l) => self.ips(l, "local_addrs")?,
            None => Vec::new(),
        };
        let remote_addrs = match &c.remote_addrs {
            None => RemoteAddrs::Any,
            Some(r) => {
                let list = items(r);
                match list.as_slice() {
                    [] => {
                        return Err(self.invalid(
                            &r.span(),
                            "remote_addrs is empty: use \"%any\" to accept any peer",
                        ));
                    }
                    [("%any", _)] => RemoteAddrs::Any,
                    _ => {
                        if let Some((_, span)) = list.iter().find(|(s, _)| *s == "%any") {
                            return Err(self.invalid(
                                span,
                                "\"%any\" cannot be combined with addresses in remote_addrs",
                            ));
                        }
                        RemoteAddrs::Addrs(self.ips(r, "remote_addrs")?)
                    }
                }
            }
        };
        let remote_port = match &c.remote_port {
            Some(p) => self.int(p, "remote_port", 1..=i64::from(u16::MAX))?,
            None => DEFAULT_PORT,
        };
        let identity = |v: &Spanned<String>| {
            values::identity(v.get_ref()).map_err(|reason| {
                self.src.error(
                    &v.span(),
                    ConfigErrorKind::BadIdentity {
                        value: v.get_ref().clone(),
                        reason,
                    },
                )
            })
        };
        let local_id = match (&c.local_id, local_addrs.first()) {
            (Some(id), _) => identity(id)?,
            (None, Some(&a)) => values::ip_identity(a),
            (None, None) => {
                return Err(self.invalid(
                    &table,
                    format!(
                        "connection {name:?}: local_id is required (or local_addrs, whose first \
                         address is the default)"
                    ),
                ));
            }
        };
        let remote_id = match (&c.remote_id, &remote_addrs) {
            (Some(id), _) => identity(id)?,
            (None, RemoteAddrs::Addrs(a)) if a.len() == 1 => values::ip_identity(a[0]),
            (None, _) => {
                return Err(self.invalid(
                    &table,
                    format!(
                        "connection {name:?}: remote_id is required (the default is remote_addrs \
                         when it is a single address)"
                    ),
                ));
            }
        };
        if let Some(a) = &c.auth
            && a.get_ref() != "psk"
        {
            return Err(self.invalid(
                &a.span(),
                format!("auth = {:?}: only psk is supported", a.get_ref()),
            ));
        }
        let (psk, inline_span) = match (&c.psk, &c.psk_file) {
            (Some(_), Some(f)) => {
                return Err(self.invalid(
                    &f.span(),
                    "psk and psk_file are exclusive: keep one (psk_file is safer)",
                ));
            }
            (None, None) => {
                return Err(self
                    .src
                    .error(&table, ConfigErrorKind::MissingSecret { connection: name }));
            }
            (Some(p), None) => (self.inline_psk(p)?, Some(p.span())),
            (None, Some(f)) => (self.psk_file(f)?, None),
        };
        let ike_proposals = match &c.proposals {
            Some(p) => self.ike_proposals(p)?,
            None => proposal::default_ike(),
        };
        let esn_choice = match &c.esn {
            None => vec![false],
            Some(e) => match e.get_ref() {
                BoolOrStr::Bool(b) => vec![*b],
                BoolOrStr::Str(s) => match s.as_str() {
                    "yes" => vec![true],
                    "no" => vec![false],
                    "both" => vec![true, false],
                    _ => {
                        return Err(self.invalid(
                            &e.span(),
                            format!("esn = {s:?}: use true, false, \"yes\", \"no\" or \"both\""),
                        ));
                    }
                },
            },
        };
        let esn = esn_choice.first().copied().unwrap_or(false);
        let (esp_proposals, child_dh) = match &c.esp_proposals {
            Some(p) => self.esp_proposals(p, &esn_choice)?,
            None => (
                proposal::DEFAULT_ESP
                    .iter()
                    .flat_map(|&s| esn_choice.iter().map(move |&e| (s, e)))
                    .collect(),
                None,
            ),
        };
        let local_ts = self.selectors(c.local_ts.as_ref(), "local_ts", &table, &name)?;
        let remote_ts = self.selectors(c.remote_ts.as_ref(), "remote_ts", &table, &name)?;
        let start = match &c.start {
            None => match remote_addrs {
                RemoteAddrs::Any => StartAction::Listen,
                RemoteAddrs::Addrs(_) => StartAction::Initiate,
            },
            Some(s) => match s.get_ref().as_str() {
                "initiate" if remote_addrs == RemoteAddrs::Any => {
                    return Err(self.invalid(
                        &s.span(),
                        "start = \"initiate\" needs remote_addrs naming the peer to dial, \
                         not %any",
                    ));
                }
                "initiate" => StartAction::Initiate,
                "listen" => StartAction::Listen,
                other => {
                    return Err(self.invalid(
                        &s.span(),
                        format!("start = {other:?}: use \"initiate\" or \"listen\""),
                    ));
                }
            },
        };
        let dpd_delay =
            self.positive_duration(c.dpd_delay.as_ref(), "dpd_delay", DEFAULT_DPD_DELAY)?;
        let (rekey_time, life_time) = self.lifetimes(
            c.rekey_time.as_ref(),
            c.life_time.as_ref(),
            ("rekey_time", "life_time"),
            DEFAULT_REKEY_TIME,
        )?;
        let (child_rekey_time, child_life_time) = self.lifetimes(
            c.child_rekey_time.as_ref(),
            c.child_life_time.as_ref(),
            ("child_rekey_time", "child_life_time"),
            DEFAULT_CHILD_REKEY_TIME,
        )?;
        let (rekey_bytes, life_bytes) = self.limits(
            c.rekey_bytes.as_ref(),
            c.life_bytes.as_ref(),
            ("rekey_bytes", "life_bytes"),
        )?;
        let (rekey_packets, life_packets) = self.limits(
            c.rekey_packets.as_ref(),
            c.life_packets.as_ref(),
            ("rekey_packets", "life_packets"),
        )?;
        let replay_window = match &c.replay_window {
            None => DEFAULT_REPLAY_WINDOW,
            Some(w) if !REPLAY_WINDOWS.contains(w.get_ref()) => {
                return Err(self.invalid(
                    &w.span(),
                    format!(
                        "replay_window = {}: use 64..=4096 packets (the data plane always checks replays)",
                        w.get_ref()
                    ),
                ));
            }
            Some(w) => self.int(w, "replay_window", REPLAY_WINDOWS)?,
        };
        let mode = match &c.mode {
            None => Mode::Tunnel,
            Some(m) => match m.get_ref().as_str() {
                "tunnel" => Mode::Tunnel,
                "transport" => {
                    return Err(self.invalid(
                        &m.span(),
                        "mode = \"transport\" is not supported by the gateway: only \"tunnel\"",
                    ));
                }
                other => {
                    return Err(self.invalid(
                        &m.span(),
                        format!("mode = {other:?}: only \"tunnel\" is supported"),
                    ));
                }
            },
        };
        let reconnect_probe = match &c.reconnect_probe {
            None => ReconnectProbe::Liveness,
            Some(m) => match m.get_ref().as_str() {
                "liveness" => ReconnectProbe::Liveness,
                "rekey" => ReconnectProbe::IkeRekey,
                other => {
                    return Err(self.invalid(
                        &m.span(),
                        format!("reconnect_probe = {other:?}: use \"liveness\" or \"rekey\""),
                    ));
                }
            },
        };
        Ok((
            ConnectionConfig {
                name,
                local_addrs,
                remote_addrs,
                remote_port,
                local_id,
                remote_id,
                auth: Auth::Psk(psk),
                ike_proposals,
                esp_proposals,
                local_ts,
                remote_ts,
                start,
                dpd_delay,
                rekey_time,
                life_time,
                child_rekey_time,
                child_life_time,
                rekey_bytes,
                life_bytes,
                rekey_packets,
                life_packets,
                esn,
                replay_window,
                mode,
                reconnect_probe,
                pfs: child_dh.is_some(),
                child_dh,
            },
            inline_span,
        ))
    }

    /// `psk = "secret"` or `psk = "0x..."` (hex).
    fn inline_psk(&self, p: &Spanned<super::raw::RawSecret>) -> Result<PskSecret, ConfigError> {
        let s: &str = &p.get_ref().0;
        let key = match s.strip_prefix("0x") {
            Some(h) => values::hex(h)
                .map(Zeroizing::new)
                .map_err(|e| self.invalid(&p.span(), format!("psk starting with 0x: {e}")))?,
            None => Zeroizing::new(s.as_bytes().to_vec()),
        };
        if key.is_empty() {
            return Err(self.invalid(&p.span(), "psk is empty"));
        }
        Ok(PskSecret(key))
    }

    /// The file's contents less one trailing newline; refused when others may read it.
    fn psk_file(&self, f: &Spanned<String>) -> Result<PskSecret, ConfigError> {
        let path = self.resolve(f.get_ref());
        let file_error = |error: String| {
            self.src.error(
                &f.span(),
                ConfigErrorKind::SecretFile {
                    path: path.clone(),
                    error,
                },
            )
        };
        if f.get_ref().is_empty() {
            return Err(file_error("psk_file is empty".to_owned()));
        }
        let meta = std::fs::metadata(&path).map_err(|e| file_error(e.to_string()))?;
        if !meta.is_file() {
            return Err(file_error("not a regular file".to_owned()));
        }
        let mode = super::file_mode(&meta);
        if mode & 0o077 != 0 {
            return Err(self.src.error(
                &f.span(),
                ConfigErrorKind::SecretPermissions {
                    path: path.clone(),
                    mode,
                },
            ));
        }
        let mut key = Zeroizing::new(std::fs::read(&path).map_err(|e| file_error(e.to_string()))?);
        if key.last() == Some(&b'\n') {
            key.pop();
            if key.last() == Some(&b'\r') {
                key.pop();
            }
        }
        if key.is_empty() {
            return Err(file_error("the file is empty".to_owned()));
        }
        Ok(PskSecret(key))
    }

    /// Where in the file byte `offset` of a string value is: exact when the literal is the
    /// value between quotes (no escapes), else the literal's start.
    fn in_string(&self, value: &str, span: &Range<usize>, offset: usize) -> Range<usize> {
        let inner = span.start.saturating_add(1)..span.end.saturating_sub(1);
        match self.src.text.get(inner) {
            Some(lit) if lit == value => {
                let at = span.start + 1 + offset;
                at..at
            }
            _ => span.clone(),
        }
    }

    fn proposal_error(
        &self,
        s: &str,
        span: &Range<usize>,
        e: proposal::ProposalError,
    ) -> ConfigError {
        self.src.error(
            &self.in_string(s, span, e.offset),
            ConfigErrorKind::BadProposal {
                proposal: s.to_owned(),
                reason: e.reason,
            },
        )
    }

    fn ike_proposals(&self, p: &Spanned<StrList>) -> Result<Vec<IkeSuite>, ConfigError> {
        let list = items(p);
        if list.is_empty() {
            return Err(self.invalid(
                &p.span(),
                "proposals is empty (leave it out for the defaults)",
            ));
        }
        let mut out: Vec<IkeSuite> = Vec::new();
        for (s, span) in list {
            let suites = if s == "default" {
                proposal::default_ike()
            } else {
                proposal::ike(s).map_err(|e| self.proposal_error(s, &span, e))?
            };
            for suite in suites {
                if !out.contains(&suite) {
                    out.push(suite);
                }
            }
        }
        Ok(out)
    }

    /// ESP suites with ESN choices, and the PFS group: one for all proposals, or none.
    fn esp_proposals(&self, p: &Spanned<StrList>, esn: &[bool]) -> Result<EspOffer, ConfigError> {
        let list = items(p);
        if list.is_empty() {
            return Err(self.invalid(
                &p.span(),
                "esp_proposals is empty (leave it out for the defaults)",
            ));
        }
        let mut out: Vec<(EspSuite, bool)> = Vec::new();
        // The group of the first proposal, which every other must repeat.
        let mut group: Option<Option<DhGroup>> = None;
        for (s, span) in list {
            let parsed = if s == "default" {
                proposal::EspProposal {
                    suites: proposal::DEFAULT_ESP.to_vec(),
                    esn: Vec::new(),
                    dh: Vec::new(),
                }
            } else {
                proposal::esp(s).map_err(|e| self.proposal_error(s, &span, e))?
            };
            if let Some(&(at, _)) = parsed.dh.get(1) {
                return Err(self.proposal_error(
                    s,
                    &span,
                    proposal::ProposalError {
                        offset: at,
                        reason: "one PFS group per proposal: Child SA rekeys use a single group"
                            .to_owned(),
                    },
                ));
            }
            let this = parsed.dh.first().map(|&(_, g)| g);
            match group {
                None => group = Some(this),
                Some(g) if g != this => {
                    return Err(self.proposal_error(
                        s,
                        &span,
                        proposal::ProposalError {
                            offset: 0,
                            reason: "all esp_proposals must name the same DH group (or none): \
                                     the gateway rekeys Child SAs with one PFS group"
                                .to_owned(),
                        },
                    ));
                }
                Some(_) => {}
            }
            let esns = if parsed.esn.is_empty() {
                esn
            } else {
                &parsed.esn
            };
            for &suite in &parsed.suites {
                for &e in esns {
                    if !out.contains(&(suite, e)) {
                        out.push((suite, e));
                    }
                }
            }
        }
        Ok((out, group.flatten()))
    }

    fn selectors(
        &self,
        list: Option<&Spanned<StrList>>,
        key: &str,
        table: &Range<usize>,
        name: &str,
    ) -> Result<Vec<TrafficSelector>, ConfigError> {
        let Some(list) = list else {
            return Err(self.invalid(
                table,
                format!(
                    "connection {name:?}: {key} is required: the networks on that side of the \
                     tunnel, e.g. [\"198.51.100.0/24\"]"
                ),
            ));
        };
        let entries = items(list);
        if entries.is_empty() {
            return Err(self.invalid(&list.span(), format!("{key} is empty")));
        }
        if entries.len() > MAX_SELECTORS {
            return Err(self.invalid(
                &list.span(),
                format!("{key} has more than {MAX_SELECTORS} selectors"),
            ));
        }
        entries
            .iter()
            .map(|(s, span)| {
                values::traffic_selector(s).map_err(|e| match e {
                    values::TsError::Cidr(reason) => self.src.error(
                        span,
                        ConfigErrorKind::BadCidr {
                            value: (*s).to_owned(),
                            reason: format!("{key}: {reason}"),
                        },
                    ),
                    values::TsError::Selector(reason) => self.src.error(
                        span,
                        ConfigErrorKind::BadTrafficSelector {
                            value: (*s).to_owned(),
                            reason: format!("{key}: {reason}"),
                        },
                    ),
                })
            })
            .collect()
    }

    /// Soft and hard lifetimes: hard defaults to soft + 10 % (at least 1 s more) and must be
    /// longer than soft.
    fn lifetimes(
        &self,
        soft: Option<&Spanned<NumOrStr>>,
        hard: Option<&Spanned<NumOrStr>>,
        (soft_key, hard_key): (&str, &str),
        default: Duration,
    ) -> Result<(Duration, Duration), ConfigError> {
        let rekey = self.positive_duration(soft, soft_key, default)?;
        let life = match hard {
            None => rekey.saturating_add((rekey / 10).max(Duration::from_secs(1))),
            Some(h) => {
                let life = self.duration(h, hard_key)?;
                if life <= rekey {
                    return Err(self.invalid(
                        &h.span(),
                        format!(
                            "{hard_key} ({}s) must be longer than {soft_key} ({}s)",
                            life.as_secs(),
                            rekey.as_secs()
                        ),
                    ));
                }
                life
            }
        };
        Ok((rekey, life))
    }

    /// Soft and hard byte or packet limits: soft below hard when both are set.
    fn limits(
        &self,
        soft: Option<&Spanned<NumOrStr>>,
        hard: Option<&Spanned<NumOrStr>>,
        (soft_key, hard_key): (&str, &str),
    ) -> Result<(Option<u64>, Option<u64>), ConfigError> {
        let s = self.size(soft, soft_key)?;
        let h = self.size(hard, hard_key)?;
        if let (Some(sv), Some(hv), Some(span)) = (s, h, soft.map(Spanned::span))
            && sv >= hv
        {
            return Err(self.invalid(
                &span,
                format!("{soft_key} ({sv}) must be less than {hard_key} ({hv})"),
            ));
        }
        Ok((s, h))
    }
}
