//! Parsers for the value syntaxes of the file: durations, sizes, addresses, CIDRs, traffic
//! selectors, identities, MACs and names. Each returns why a value is wrong as a sentence; the
//! validator wraps it with the value's position.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use iketcp_control::ike::wire::{Identity, TrafficSelector, TsRange};

use super::raw::NumOrStr;

/// `"30s"`, `"5m"`, `"4h"`, `"1d"`, a sum such as `"4h24m"`, `"30"` or an integer: seconds.
pub(super) fn duration(v: &NumOrStr) -> Result<Duration, String> {
    let s = match v {
        NumOrStr::Int(n) => {
            let secs = u64::try_from(*n).map_err(|_| "a duration is not negative".to_owned())?;
            return Ok(Duration::from_secs(secs));
        }
        NumOrStr::Str(s) => s.as_str(),
    };
    let (digits, unit) = split_number(s);
    if unit.is_empty() {
        return number(digits).map(Duration::from_secs);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let (digits, after) = split_number(rest);
        let unit_len = after
            .bytes()
            .position(|b| b.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let mult: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?}: use s, m, h or d (e.g. \"30s\", \"4h\", \"1h30m\")"
                ));
            }
        };
        total = number(digits)?
            .checked_mul(mult)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| "too long".to_owned())?;
        rest = after;
    }
    Ok(Duration::from_secs(total))
}

/// An integer, or a number with `k`, `M`, `G` or `T` (powers of 1024, as strongSwan reads them;
/// either case).
pub(super) fn size(v: &NumOrStr) -> Result<u64, String> {
    match v {
        NumOrStr::Int(n) => u64::try_from(*n).map_err(|_| "a size is not negative".to_owned()),
        NumOrStr::Str(s) => {
            let (digits, unit) = split_number(s);
            let shift = match unit {
                "" => 0,
                "k" | "K" => 10,
                "m" | "M" => 20,
                "g" | "G" => 30,
                "t" | "T" => 40,
                _ => {
                    return Err(format!(
                        "unknown unit {unit:?}: use k, M, G or T (e.g. \"500M\")"
                    ));
                }
            };
            let n = number(digits)?;
            n.checked_mul(1u64 << shift)
                .ok_or_else(|| "too large".to_owned())
        }
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn number(digits: &str) -> Result<u64, String> {
    if digits.is_empty() {
        return Err("expected a number first".to_owned());
    }
    digits
        .parse::<u64>()
        .map_err(|_| "number too large".to_owned())
}

/// An IPv4 or IPv6 address.
pub(super) fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| "not an IPv4 or IPv6 address".to_owned())
}

/// `address/prefix`. With `network`, host bits must be clear (a selector names a network; the
/// TUN's `addresses` name an address on one, so there they are allowed).
pub(super) fn cidr(s: &str, network: bool) -> Result<(IpAddr, u8), String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err("expected address/prefix, e.g. \"192.0.2.1/24\"".to_owned());
    };
    let addr = ip(addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len.parse() {
        Ok(l) if l <= max && len.bytes().all(|b| b.is_ascii_digit()) => l,
        _ => return Err(format!("prefix length must be 0..={max}")),
    };
    if network {
        let (start, _) = range(addr, len);
        if start != addr {
            return Err(format!("host bits are set (did you mean {start}/{len}?)"));
        }
    }
    Ok((addr, len))
}

/// First and last address of `addr/len`.
fn range(addr: IpAddr, len: u8) -> (IpAddr, IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            let a = u32::from(a);
            (
                IpAddr::V4(Ipv4Addr::from(a & !host)),
                IpAddr::V4(Ipv4Addr::from(a | host)),
            )
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            let a = u128::from(a);
            (
                IpAddr::V6(Ipv6Addr::from(a & !host)),
                IpAddr::V6(Ipv6Addr::from(a | host)),
            )
        }
    }
}

/// Why a traffic selector was refused: its address part or its `[protocol/port]` part.
#[derive(Debug)]
pub(super) enum TsError {
    Cidr(String),
    Selector(String),
}

/// `198.51.100.0/24`, `10.0.0.0/8[tcp/443]`, `2001:db8::/32[udp/1000-2000]`, `192.0.2.7[icmp/8]`
/// (a bare address is one host). For ICMP and ICMPv6 the port is the message type, which RFC 7296
/// §3.13.1 carries as the high octet of the port fields (any code).
pub(super) fn traffic_selector(s: &str) -> Result<TrafficSelector, TsError> {
    let (net, sel) = match s.split_once('[') {
        Some((net, rest)) => {
            let Some(sel) = rest.strip_suffix(']') else {
                return Err(TsError::Selector(
                    "expected [protocol] or [protocol/port] at the end".to_owned(),
                ));
            };
            (net, Some(sel))
        }
        None => (s, None),
    };
    let (addr, len) = if net.contains('/') {
        cidr(net, true).map_err(TsError::Cidr)?
    } else {
        let a = ip(net).map_err(TsError::Cidr)?;
        (a, if a.is_ipv4() { 32 } else { 128 })
    };
    let (proto, start_port, end_port) = match sel {
        None => (0, 0, u16::MAX),
        Some(sel) => protocol_ports(sel).map_err(TsError::Selector)?,
    };
    Ok(match range(addr, len) {
        (IpAddr::V4(start_addr), IpAddr::V4(end_addr)) => TrafficSelector::Ipv4(TsRange {
            ip_protocol: proto,
            start_port,
            end_port,
            start_addr,
            end_addr,
        }),
        (IpAddr::V6(start_addr), IpAddr::V6(end_addr)) => TrafficSelector::Ipv6(TsRange {
            ip_protocol: proto,
            start_port,
            end_port,
            start_addr,
            end_addr,
        }),
        // `range` keeps the family.
        _ => return Err(TsError::Cidr("mixed address families".to_owned())),
    })
}

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn protocol_ports(sel: &str) -> Result<(u8, u16, u16), String> {
    let (proto, port) = match sel.split_once('/') {
        Some((p, port)) => (p, Some(port)),
        None => (sel, None),
    };
    let proto: u8 = match proto {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => ICMP,
        "ipv6-icmp" | "icmpv6" => ICMPV6,
        "sctp" => 132,
        p => match p.parse::<u8>() {
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "unknown protocol {p:?}: use tcp, udp, icmp, ipv6-icmp, sctp or a number 0..=255"
                ));
            }
        },
    };
    let Some(port) = port else {
        return Ok((proto, 0, u16::MAX));
    };
    if proto == 0 {
        return Err("a port needs a protocol, e.g. [tcp/443]".to_owned());
    }
    let (lo, hi) = match port.split_once('-') {
        Some((lo, hi)) => (port_number(lo)?, port_number(hi)?),
        None => {
            let p = port_number(port)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {lo}-{hi} is empty"));
    }
    if proto == ICMP || proto == ICMPV6 {
        let (Ok(lo), Ok(hi)) = (u8::try_from(lo), u8::try_from(hi)) else {
            return Err("an ICMP type is 0..=255".to_owned());
        };
        let lo = u16::from(lo) << 8;
        let hi = (u16::from(hi) << 8) | 0xff;
        return Ok((proto, lo, hi));
    }
    Ok((proto, lo, hi))
}

fn port_number(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!(
            "bad port {s:?}: a number 0..=65535 or a range like 1000-2000"
        )),
    }
}

/// strongSwan's identity syntax: an IP address is ID_IPV4_ADDR / ID_IPV6_ADDR; `@#hex` is
/// ID_KEY_ID; `@@user@host` or `user@host` is ID_RFC822_ADDR; `@host.example` or
/// `host.example` is ID_FQDN.
pub(super) fn identity(s: &str) -> Result<Identity, String> {
    if s.is_empty() {
        return Err("empty".to_owned());
    }
    if s.starts_with('%') {
        return Err("wildcards such as %any are not supported: name the identity".to_owned());
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(match a {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        });
    }
    if let Some(h) = s.strip_prefix("@#") {
        let key = hex(h).map_err(|e| format!("key ID after @#: {e}"))?;
        if key.is_empty() {
            return Err("empty key ID after @#".to_owned());
        }
        return Ok(Identity::KeyId(key));
    }
    let text_id = |t: &str| -> Result<Vec<u8>, String> {
        if t.is_empty() {
            Err("nothing after @".to_owned())
        } else if !t.bytes().all(|b| b.is_ascii_graphic()) {
            Err("only printable ASCII without spaces".to_owned())
        } else {
            Ok(t.as_bytes().to_vec())
        }
    };
    if let Some(mail) = s.strip_prefix("@@") {
        return text_id(mail).map(Identity::Rfc822);
    }
    if let Some(host) = s.strip_prefix('@') {
        return text_id(host).map(Identity::Fqdn);
    }
    if s.contains('@') {
        return text_id(s).map(Identity::Rfc822);
    }
    text_id(s).map(Identity::Fqdn)
}

/// The identity an address stands for when no `*_id` is given.
pub(super) fn ip_identity(a: IpAddr) -> Identity {
    match a {
        IpAddr::V4(a) => Identity::Ipv4(a),
        IpAddr::V6(a) => Identity::Ipv6(a),
    }
}

/// Hex digits, in pairs, optionally separated by `:`.
pub(super) fn hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let d = |b: u8| (b as char).to_digit(16);
            match (d(pair[0]), d(pair[1])) {
                (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
                _ => Err("not a hex digit".to_owned()),
            }
        })
        .collect()
}

/// `02:00:00:00:00:01` (or with `-`); a unicast address.
pub(crate) fn mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut out = [0u8; 6];
    if parts.len() != out.len() {
        return Err("expected six hex octets like 02:00:00:00:00:01".to_owned());
    }
    for (o, p) in out.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err("expected six hex octets like 02:00:00:00:00:01".to_owned());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("{p:?} is not a hex octet"))?;
    }
    if out[0] & 1 != 0 {
        return Err("a multicast address cannot be an interface's address".to_owned());
    }
    Ok(out)
}

/// A locally administered unicast MAC (02:00 then the last four octets of the address), so two
/// gateways with different addresses differ and the same address always gives the same MAC.
pub(super) fn default_mac(addr: IpAddr) -> [u8; 6] {
    let tail = match addr {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0x00, tail[0], tail[1], tail[2], tail[3]]
}

/// A Linux interface name (the kernel's `dev_valid_name`): 1 to 15 bytes, not `.` or `..`, no
/// `/`, `:`, whitespace or NUL.
pub(super) fn interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("an interface name has 1 to 15 bytes".to_owned());
    }
    if s == "." || s == ".." {
        return Err("an interface name cannot be . or ..".to_owned());
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err("an interface name has no '/', ':', whitespace or NUL".to_owned());
    }
    Ok(())
}

/// A connection name: `[A-Za-z0-9._-]{1,64}` (it appears in commands, logs and metrics labels).
pub(super) fn connection_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("a connection name has 1 to 64 characters".to_owned());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a connection name has only letters, digits, '.', '_' and '-'".to_owned());
    }
    Ok(())
}
