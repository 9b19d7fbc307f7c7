//! What the daemon tells: the status report and the metrics text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iketcp_control::driver::{ChildSaInfo, ChildSaState, EndpointRole, IkeSaInfo, IkeSaState};
use iketcp_control::ike::crypto::IkeSuite;
use iketcp_control::ike::wire::Identity;
use iketcp_dataplane::worker::spd::TrafficSelector;

use super::Daemon;
use super::routes::range_prefixes;
use crate::config::{OuterTransport, StartAction};
use crate::metrics::Exposition;
use crate::status::{ChildSaStatus, ConnStatus, IkeSaStatus, StatusReport};

fn secs(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_secs())
}

/// An identity as strongSwan prints it.
pub(crate) fn identity(id: &Identity) -> String {
    match id {
        Identity::Ipv4(a) => a.to_string(),
        Identity::Ipv6(a) => a.to_string(),
        Identity::Fqdn(b) => format!("@{}", String::from_utf8_lossy(b)),
        Identity::Rfc822(b) => String::from_utf8_lossy(b).into_owned(),
        Identity::KeyId(b) => format!(
            "@#{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        other => format!("{other:?}"),
    }
}

pub(super) fn ike_suite(s: &IkeSuite) -> String {
    let integ = s.integ().map(|i| format!("/{i:?}")).unwrap_or_default();
    format!("{:?}{integ}/{:?}/{:?}", s.encr(), s.prf(), s.dh())
}

/// A selector as CIDRs (with protocol and ports when narrowed).
pub(super) fn selector(ts: &TrafficSelector) -> String {
    let nets: Vec<String> = range_prefixes(ts.start, ts.end)
        .iter()
        .map(ToString::to_string)
        .collect();
    let nets = if nets.is_empty() {
        format!("{}-{}", ts.start, ts.end)
    } else {
        nets.join(",")
    };
    let all_ports = ts.start_port == 0 && ts.end_port == u16::MAX;
    match (ts.protocol, all_ports) {
        (0, true) => nets,
        (p, true) => format!("{nets}[{p}]"),
        (p, false) if ts.start_port == ts.end_port => format!("{nets}[{p}/{}]", ts.start_port),
        (p, false) => format!("{nets}[{p}/{}-{}]", ts.start_port, ts.end_port),
    }
}

fn ike_state(s: IkeSaState) -> &'static str {
    match s {
        IkeSaState::Connecting => "CONNECTING",
        IkeSaState::Established => "ESTABLISHED",
        IkeSaState::Reconnecting => "RECONNECTING",
        IkeSaState::Gone => "GONE",
    }
}

fn child_state(s: ChildSaState) -> &'static str {
    match s {
        ChildSaState::Installing => "INSTALLING",
        ChildSaState::Installed => "INSTALLED",
        ChildSaState::Retiring => "RETIRING",
        ChildSaState::Moving => "MOVING",
        ChildSaState::Gone => "GONE",
    }
}

fn child(c: &ChildSaInfo) -> ChildSaStatus {
    let t = c.traffic.map(|t| t.0);
    ChildSaStatus {
        state: child_state(c.state).into(),
        spi_in: format!("{:08x}", c.spi_in),
        spi_out: format!("{:08x}", c.spi_out),
        suite: format!("{:?}", c.suite),
        esn: c.esn,
        worker: c.worker,
        local_ts: c.selectors.local.iter().map(selector).collect(),
        remote_ts: c.selectors.remote.iter().map(selector).collect(),
        packets_in: t.map_or(0, |t| t.packets_in),
        bytes_in: t.map_or(0, |t| t.bytes_in),
        packets_out: t.map_or(0, |t| t.packets_out),
        bytes_out: t.map_or(0, |t| t.bytes_out),
        age_s: c.age.as_secs(),
        rekey_in_s: secs(c.rekey_in),
        expires_in_s: secs(c.expires_in),
    }
}

fn ike(s: &IkeSaInfo) -> IkeSaStatus {
    let addr = |a: &SocketAddr| a.to_string();
    IkeSaStatus {
        id: s.id.0,
        state: ike_state(s.state).into(),
        initiator: s.initiator,
        tcp_role: if s.tcp_originator {
            "originator"
        } else {
            "responder"
        }
        .into(),
        spi_i: format!("{:016x}", s.spi_i),
        spi_r: format!("{:016x}", s.spi_r),
        suite: s.suite.as_ref().map(ike_suite),
        local_id: identity(&s.local_id),
        remote_id: identity(&s.remote_id),
        local: s.conn.as_ref().map(|c| addr(&c.1)),
        remote: s.conn.as_ref().map(|c| addr(&c.2)),
        tcp: s
            .conn
            .as_ref()
            .map(|c| format!("{}/{}.{}", c.0.worker, c.0.id.slot, c.0.id.generation)),
        age_s: s.age.as_secs(),
        rekey_in_s: secs(s.rekey_in),
        expires_in_s: secs(s.expires_in),
        child_sas: s.child_sas.iter().map(child).collect(),
    }
}

impl Daemon {
    pub(super) fn status(&self, now: Instant) -> StatusReport {
        let endpoints = self.driver.list_endpoints();
        let connections = self
            .conns
            .iter()
            .map(|(name, e)| {
                let ep = e
                    .endpoint
                    .and_then(|id| endpoints.iter().find(|x| x.id == id));
                let remote = match ep.map(|x| x.role) {
                    Some(EndpointRole::Originator { remote, .. }) => format!("to {remote}"),
                    Some(EndpointRole::Responder { listen }) => format!("on {listen}"),
                    None => "-".into(),
                };
                ConnStatus {
                    name: name.clone(),
                    start: match e.cfg.start {
                        StartAction::Initiate => "initiate",
                        StartAction::Listen => "listen",
                    }
                    .into(),
                    admin: if e.admin_down {
                        "down".into()
                    } else if e.endpoint.is_some() {
                        "up".into()
                    } else {
                        "restarting".into()
                    },
                    remote,
                    worker: ep.map(|x| x.worker),
                    ike_sas: e
                        .endpoint
                        .map(|id| self.driver.list_ike_sas(Some(id), now))
                        .unwrap_or_default()
                        .iter()
                        .map(ike)
                        .collect(),
                }
            })
            .collect();
        let workers = (0..self.workers.joins.len())
            .map(|w| {
                self.workers
                    .handle
                    .worker_stats(w as u16)
                    .map(|s| {
                        s.fields()
                            .into_iter()
                            .map(|(k, _, v)| (k.to_owned(), v))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: now.duration_since(self.started).as_secs(),
            config: self.path.display().to_string(),
            transport: match self.cfg.gateway.transport {
                OuterTransport::Kernel => "kernel",
                OuterTransport::Smoltcp(_) => "smoltcp",
            }
            .into(),
            connections,
            routes: self
                .routes
                .routes()
                .iter()
                .map(|r| format!("{}/{} dev {}", r.dst, r.prefix_len, self.workers.tun_name))
                .collect(),
            workers,
        }
    }

    pub(super) fn render_metrics(&self) -> String {
        let now = Instant::now();
        let mut x = Exposition::default();
        x.sample(
            "iketcp_up_seconds",
            "gauge",
            "Seconds since the gateway started.",
            &[],
            now.duration_since(self.started).as_secs_f64(),
        );
        for (result, n) in [("ok", self.reloads.0), ("refused", self.reloads.1)] {
            x.sample(
                "iketcp_reloads_total",
                "counter",
                "Config reloads by result.",
                &[("result", result)],
                n as f64,
            );
        }
        x.sample(
            "iketcp_routes",
            "gauge",
            "Routes installed into the TUN device.",
            &[],
            self.routes.len() as f64,
        );
        let rs = self.routes.stats();
        for (result, n) in [
            ("installed", rs.installed),
            ("removed", rs.removed),
            ("failed", rs.failed),
        ] {
            x.sample(
                "iketcp_route_changes_total",
                "counter",
                "Route changes in the TUN device by result.",
                &[("result", result)],
                n as f64,
            );
        }
        for (name, m) in &self.metrics {
            for (ev, n) in &m.events {
                x.sample(
                    "iketcp_connection_events_total",
                    "counter",
                    "IKE and TCP events per connection: tcp_up, tcp_down, connect_failed, ike_sa_up (IKE_SA_INIT and IKE_AUTH done), ike_sa_rekeyed and child_sa_rekeyed (CREATE_CHILD_SA), ike_sa_deleted, child_sa_installed, restarts, cookie_sent, init_dropped, migrated, forged_esp, ike_integrity_failure, ack_timed_out, child_sa_refused, ike_rekey_refused.",
                    &[("connection", name), ("event", ev)],
                    *n as f64,
                );
            }
            for (kind, n) in &m.failures {
                x.sample(
                    "iketcp_connection_failures_total",
                    "counter",
                    "Failures per connection by kind.",
                    &[("connection", name), ("kind", kind)],
                    *n as f64,
                );
            }
            x.histogram(
                "iketcp_handshake_seconds",
                "From the start of a connection (dial or listen) to its IKE SA being established.",
                &[("connection", name)],
                &m.handshake,
            );
        }
        // Traffic of the current Child SAs per connection (as last reported by the workers).
        for (name, e) in &self.conns {
            let Some(id) = e.endpoint else { continue };
            let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
            let mut established = 0u64;
            let mut children = 0u64;
            for s in self.driver.list_ike_sas(Some(id), now) {
                if s.state == IkeSaState::Established {
                    established += 1;
                }
                for c in &s.child_sas {
                    if c.state == ChildSaState::Installed {
                        children += 1;
                    }
                    if let Some((t, _)) = c.traffic {
                        *sums.entry("packets_in").or_default() += t.packets_in;
                        *sums.entry("packets_out").or_default() += t.packets_out;
                        *sums.entry("bytes_in").or_default() += t.bytes_in;
                        *sums.entry("bytes_out").or_default() += t.bytes_out;
                    }
                }
            }
            x.sample(
                "iketcp_ike_sas",
                "gauge",
                "Established IKE SAs per connection.",
                &[("connection", name)],
                established as f64,
            );
            x.sample(
                "iketcp_child_sas",
                "gauge",
                "Installed Child SAs per connection.",
                &[("connection", name)],
                children as f64,
            );
            for (k, v) in sums {
                x.sample(
                    "iketcp_child_sa_traffic",
                    "gauge",
                    "Packets and inner bytes of the connection's current Child SAs (they restart at zero with each rekey).",
                    &[("connection", name), ("counter", k)],
                    v as f64,
                );
            }
        }
        for w in 0..self.workers.joins.len() {
            let Some(s) = self.workers.handle.worker_stats(w as u16) else {
                continue;
            };
            let worker = w.to_string();
            for (k, doc, v) in s.fields() {
                x.sample(
                    &format!("iketcp_worker_{k}_total"),
                    "counter",
                    doc.trim(),
                    &[("worker", &worker)],
                    v as f64,
                );
            }
        }
        x.finish()
    }
}
