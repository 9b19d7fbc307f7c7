//! `iketcp status`: what the daemon reports, as JSON on the control socket and as text for the
//! operator (in the spirit of `swanctl --list-sas`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The config file in use.
    pub config: String,
    /// Outer transport (`kernel` or `smoltcp`).
    pub transport: String,
    /// Every configured connection.
    pub connections: Vec<ConnStatus>,
    /// Routes the gateway installed for its Child SAs.
    pub routes: Vec<String>,
    /// Data-plane counters per worker, by name.
    pub workers: Vec<BTreeMap<String, u64>>,
}

/// One `[[connection]]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnStatus {
    /// Its name.
    pub name: String,
    /// `initiate` or `listen`.
    pub start: String,
    /// `up` (configured in the driver) or `down` (taken down with `iketcp down`).
    pub admin: String,
    /// Where it dials or listens.
    pub remote: String,
    /// The worker it dials or listens on.
    pub worker: Option<u16>,
    /// Its IKE SAs.
    pub ike_sas: Vec<IkeSaStatus>,
}

/// One IKE SA.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IkeSaStatus {
    /// The driver's handle.
    pub id: u64,
    /// CONNECTING, ESTABLISHED, RECONNECTING or GONE.
    pub state: String,
    /// Original initiator of the IKE SA.
    pub initiator: bool,
    /// `originator` or `responder` of the TCP connection (RFC 9329 §1.2).
    pub tcp_role: String,
    /// SPIi, 16 hex digits.
    pub spi_i: String,
    /// SPIr, 16 hex digits.
    pub spi_r: String,
    /// Negotiated algorithms, once known.
    pub suite: Option<String>,
    /// Our ID.
    pub local_id: String,
    /// The peer's ID.
    pub remote_id: String,
    /// Local address and port of its TCP connection.
    pub local: Option<String>,
    /// Peer address and port of its TCP connection.
    pub remote: Option<String>,
    /// The connection: `worker/slot.generation`.
    pub tcp: Option<String>,
    /// Seconds since it was created.
    pub age_s: u64,
    /// Seconds to its rekey.
    pub rekey_in_s: Option<u64>,
    /// Seconds to its hard lifetime.
    pub expires_in_s: Option<u64>,
    /// Its Child SAs.
    pub child_sas: Vec<ChildSaStatus>,
}

/// One Child SA.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildSaStatus {
    /// INSTALLING, INSTALLED, RETIRING, MOVING or GONE.
    pub state: String,
    /// Inbound SPI, 8 hex digits.
    pub spi_in: String,
    /// Outbound SPI, 8 hex digits.
    pub spi_out: String,
    /// ESP transform.
    pub suite: String,
    /// Extended sequence numbers.
    pub esn: bool,
    /// The worker that holds it.
    pub worker: u16,
    /// Our traffic selectors.
    pub local_ts: Vec<String>,
    /// The peer's traffic selectors.
    pub remote_ts: Vec<String>,
    /// Inbound packets and inner bytes.
    pub packets_in: u64,
    /// See `packets_in`.
    pub bytes_in: u64,
    /// Outbound packets and inner bytes.
    pub packets_out: u64,
    /// See `packets_out`.
    pub bytes_out: u64,
    /// Seconds since it was created.
    pub age_s: u64,
    /// Seconds to its rekey.
    pub rekey_in_s: Option<u64>,
    /// Seconds to its hard lifetime.
    pub expires_in_s: Option<u64>,
}

fn secs(label: &str, v: Option<u64>) -> String {
    v.map(|s| format!(", {label} in {s}s")).unwrap_or_default()
}

/// The report as text, one block per connection.
pub fn render(r: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "iketcp {} up {}s, config {}, transport {}",
        r.version, r.uptime_s, r.config, r.transport
    );
    for c in &r.connections {
        let _ = writeln!(
            o,
            "{}: {}, {} ({}), {} IKE SA(s)",
            c.name,
            c.admin,
            c.start,
            c.remote,
            c.ike_sas.len()
        );
        for s in &c.ike_sas {
            let _ = writeln!(
                o,
                "  #{}: {}, IKEv2, SPIs {}_i {}_r, {}, TCP {}{}",
                s.id,
                s.state,
                s.spi_i,
                s.spi_r,
                if s.initiator {
                    "initiator"
                } else {
                    "responder"
                },
                s.tcp_role,
                s.tcp.as_ref().map(|t| format!(" {t}")).unwrap_or_default()
            );
            let _ = writeln!(
                o,
                "    local  '{}' @ {}",
                s.local_id,
                s.local.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                o,
                "    remote '{}' @ {}",
                s.remote_id,
                s.remote.as_deref().unwrap_or("-")
            );
            if let Some(suite) = &s.suite {
                let _ = writeln!(o, "    {suite}");
            }
            let _ = writeln!(
                o,
                "    created {}s ago{}{}",
                s.age_s,
                secs("rekey", s.rekey_in_s),
                secs("expires", s.expires_in_s)
            );
            for ch in &s.child_sas {
                let _ = writeln!(
                    o,
                    "    child: {}, TUNNEL, ESP SPIs {}_i {}_o, worker {}",
                    ch.state, ch.spi_in, ch.spi_out, ch.worker
                );
                let _ = writeln!(
                    o,
                    "      {}, ESN {}, created {}s ago{}{}",
                    ch.suite,
                    if ch.esn { "on" } else { "off" },
                    ch.age_s,
                    secs("rekey", ch.rekey_in_s),
                    secs("expires", ch.expires_in_s)
                );
                let _ = writeln!(
                    o,
                    "      in  {} bytes, {} packets; out {} bytes, {} packets",
                    ch.bytes_in, ch.packets_in, ch.bytes_out, ch.packets_out
                );
                let _ = writeln!(o, "      local  {}", ch.local_ts.join(" "));
                let _ = writeln!(o, "      remote {}", ch.remote_ts.join(" "));
            }
        }
    }
    if !r.routes.is_empty() {
        let _ = writeln!(o, "routes:");
        for rt in &r.routes {
            let _ = writeln!(o, "  {rt}");
        }
    }
    let mut total: BTreeMap<&str, u64> = BTreeMap::new();
    for w in &r.workers {
        for (k, v) in w {
            *total.entry(k).or_default() += v;
        }
    }
    let nonzero: Vec<String> = total
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        o,
        "data plane ({} workers): {}",
        r.workers.len(),
        nonzero.join(" ")
    );
    o
}
