//! The file as TOML gives it: every key optional where the schema has a default, values kept
//! with their byte spans so that validation can say where a bad one is. Unknown keys are refused
//! here (`deny_unknown_fields`), so a misspelt key never silently becomes a default.

use core::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;
use zeroize::Zeroizing;

use super::{LogFormat, LogLevel};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    pub smoltcp: Option<Spanned<RawSmoltcp>>,
    #[serde(default)]
    pub tun: RawTun,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub connection: Vec<Spanned<RawConnection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_connections: Option<Spanned<i64>>,
    pub untrusted_connections: Option<Spanned<i64>>,
    pub untrusted_per_source: Option<Spanned<i64>>,
    pub idle_connection_timeout: Option<Spanned<NumOrStr>>,
    pub half_open_timeout: Option<Spanned<NumOrStr>>,
    pub cookie_threshold: Option<Spanned<i64>>,
    pub puzzle_difficulty: Option<Spanned<i64>>,
    pub ike_sa_init_per_source: Option<Spanned<i64>>,
    pub queued_bytes_per_connection: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub workers: Option<Spanned<i64>>,
    pub transport: Option<Spanned<String>>,
    pub listen: Option<Spanned<StrList>>,
    pub port: Option<Spanned<i64>>,
    pub control_socket: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub keylog_dir: Option<Spanned<String>>,
    pub redial_initial: Option<Spanned<NumOrStr>>,
    pub redial_max: Option<Spanned<NumOrStr>>,
    pub redial_attempts: Option<Spanned<i64>>,
    pub mark: Option<Spanned<i64>>,
    pub tcp_nodelay: Option<bool>,
    pub tcp_send_buffer: Option<Spanned<i64>>,
    pub tcp_notsent_lowat: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmoltcp {
    pub port: Option<Spanned<String>>,
    pub tap: Option<Spanned<String>>,
    pub interface: Option<Spanned<String>>,
    pub xdp_mode: Option<Spanned<String>>,
    pub xdp_copy: Option<bool>,
    pub address: Spanned<String>,
    pub mac: Option<Spanned<String>>,
    pub next_hop: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTun {
    pub name: Option<Spanned<String>>,
    pub addresses: Option<Spanned<StrList>>,
    pub mtu: Option<Spanned<i64>>,
    pub mss_clamp: Option<bool>,
    pub offload: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnection {
    pub name: Spanned<String>,
    pub local_addrs: Option<Spanned<StrList>>,
    pub remote_addrs: Option<Spanned<StrList>>,
    pub remote_port: Option<Spanned<i64>>,
    pub local_id: Option<Spanned<String>>,
    pub remote_id: Option<Spanned<String>>,
    pub auth: Option<Spanned<String>>,
    pub psk: Option<Spanned<RawSecret>>,
    pub psk_file: Option<Spanned<String>>,
    #[serde(alias = "ike_proposals")]
    pub proposals: Option<Spanned<StrList>>,
    pub esp_proposals: Option<Spanned<StrList>>,
    pub local_ts: Option<Spanned<StrList>>,
    pub remote_ts: Option<Spanned<StrList>>,
    pub start: Option<Spanned<String>>,
    pub dpd_delay: Option<Spanned<NumOrStr>>,
    pub rekey_time: Option<Spanned<NumOrStr>>,
    pub life_time: Option<Spanned<NumOrStr>>,
    pub child_rekey_time: Option<Spanned<NumOrStr>>,
    pub child_life_time: Option<Spanned<NumOrStr>>,
    pub rekey_bytes: Option<Spanned<NumOrStr>>,
    pub life_bytes: Option<Spanned<NumOrStr>>,
    pub rekey_packets: Option<Spanned<NumOrStr>>,
    pub life_packets: Option<Spanned<NumOrStr>>,
    pub esn: Option<Spanned<BoolOrStr>>,
    pub replay_window: Option<Spanned<i64>>,
    pub mode: Option<Spanned<String>>,
    pub reconnect_probe: Option<Spanned<String>>,
}

/// An inline secret, wiped when the raw tree is dropped.
pub(super) struct RawSecret(pub Zeroizing<String>);

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| RawSecret(Zeroizing::new(s)))
    }
}

/// A string or an array of strings. A lone string takes the span of the whole value (the
/// enclosing `Spanned`); array elements carry their own.
#[derive(Debug)]
pub(super) enum StrList {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StrList, E> {
                Ok(StrList::One(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(StrList::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer or a string with a unit (durations, sizes): checked in validation.
#[derive(Debug)]
pub(super) enum NumOrStr {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for NumOrStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumOrStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string with a unit such as \"30s\" or \"1G\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<NumOrStr, E> {
                Ok(NumOrStr::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<NumOrStr, E> {
                i64::try_from(n)
                    .map(NumOrStr::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NumOrStr, E> {
                Ok(NumOrStr::Str(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for NumOrStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumOrStr::Int(n) => write!(f, "{n}"),
            NumOrStr::Str(s) => f.write_str(s),
        }
    }
}

/// `true`/`false` or a word (`esn = "both"`).
#[derive(Debug)]
pub(super) enum BoolOrStr {
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for BoolOrStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BoolOrStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, \"yes\", \"no\" or \"both\"")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Bool(b))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<BoolOrStr, E> {
                Ok(BoolOrStr::Str(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}
