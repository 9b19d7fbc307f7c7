//! The configured connections: each becomes a driver endpoint; `up`, `down`, `rekey`, reload
//! and the automatic restart of `start = "initiate"` connections (strongSwan's
//! `start_action = start` with `close_action`/`dpd_action = restart`).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use iketcp_control::driver::{
    DriverEvent, Endpoint, EndpointId, EndpointRole, Failure, Refusal, TimeLimits, Timers,
};
use iketcp_control::ike::cookie::CookiePolicy;
use iketcp_control::ike::session::{Config as IkeConfig, PskAuth, SpiPool};
use iketcp_dataplane::worker::handle::Lifetime;

use super::{Daemon, GatewayError};
use crate::config::{Auth, ConnectionConfig, GatewayConfig, RemoteAddrs, StartAction};
use crate::ctl::{ErrorKind, ReloadSummary, Reply, Response};

/// One `[[connection]]` and where it is in the driver.
#[derive(Debug)]
pub(super) struct ConnEntry {
    pub(super) cfg: ConnectionConfig,
    /// Its endpoint, while it is up.
    pub(super) endpoint: Option<EndpointId>,
    /// Taken down by the operator: not restarted until `up` or a reload that changes it.
    pub(super) admin_down: bool,
    /// When an initiator whose IKE SA ended is started again.
    pub(super) restart_at: Option<Instant>,
    /// Restarts in a row without an IKE SA coming up (for the backoff).
    pub(super) restarts: u32,
    /// When the current dial or handshake began (handshake latency).
    pub(super) started: Option<Instant>,
}

impl ConnEntry {
    /// The peer's configured outer addresses (never routed into the tunnel).
    pub(super) fn cfg_peer_addrs(&self) -> Vec<IpAddr> {
        match &self.cfg.remote_addrs {
            RemoteAddrs::Any => Vec::new(),
            RemoteAddrs::Addrs(v) => v.clone(),
        }
    }
}

/// Refuses what this build cannot tell apart: listening connections share an address and port
/// (the responder picks one by the peer's IDi at IKE_AUTH), so two of them on one address must
/// expect different peer IDs.
pub(super) fn check_supported(cfg: &GatewayConfig) -> Result<(), GatewayError> {
    let mut listening: Vec<(SocketAddr, &ConnectionConfig)> = Vec::new();
    for c in &cfg.connections {
        if c.start == StartAction::Listen {
            let a = listen_addr(cfg, c);
            if let Some((_, other)) = listening
                .iter()
                .find(|(x, o)| *x == a && o.remote_id == c.remote_id)
            {
                return Err(GatewayError::Unsupported(format!(
                    "connections {:?} and {:?} both listen on {a} for the same remote_id: the peer's ID is what tells them apart",
                    other.name, c.name
                )));
            }
            listening.push((a, c));
        }
    }
    Ok(())
}

fn listen_addr(cfg: &GatewayConfig, c: &ConnectionConfig) -> SocketAddr {
    let ip = c
        .local_addrs
        .first()
        .or(cfg.gateway.listen.first())
        .copied()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    SocketAddr::new(ip, cfg.gateway.port)
}

/// Stable worker choice for a connection: spreads initiators over the workers; a listener's
/// home is worker 0, and every worker listens for it.
fn worker_of(cfg: &GatewayConfig, c: &ConnectionConfig) -> u16 {
    if c.start == StartAction::Listen {
        return 0;
    }
    // FNV-1a of the name.
    let h = c.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % cfg.gateway.workers.max(1) as u64) as u16
}

/// The driver endpoint of connection `c`.
pub(super) fn endpoint(
    cfg: &GatewayConfig,
    c: &ConnectionConfig,
) -> Result<Endpoint, GatewayError> {
    let Auth::Psk(psk) = &c.auth;
    let ike = IkeConfig {
        local_id: c.local_id.clone(),
        remote_id: c.remote_id.clone(),
        auth: PskAuth::shared(psk.as_bytes()),
        ike_proposals: c.ike_proposals.clone(),
        esp_proposals: c.esp_proposals.clone(),
        ts_local: c.local_ts.clone(),
        ts_remote: c.remote_ts.clone(),
        // The driver hands every endpoint its own shared pool.
        spi_pool: SpiPool::new(),
    };
    let role = match (&c.start, &c.remote_addrs) {
        (StartAction::Initiate, RemoteAddrs::Addrs(peers)) => {
            let Some(&peer) = peers.first() else {
                return Err(GatewayError::Unsupported(format!(
                    "connection {:?} initiates but has no remote_addrs",
                    c.name
                )));
            };
            EndpointRole::Originator {
                remote: SocketAddr::new(peer, c.remote_port),
                local: c.local_addrs.first().map(|&a| SocketAddr::new(a, 0)),
            }
        }
        (StartAction::Initiate, RemoteAddrs::Any) => {
            return Err(GatewayError::Unsupported(format!(
                "connection {:?} cannot initiate to %any",
                c.name
            )));
        }
        (StartAction::Listen, _) => EndpointRole::Responder {
            listen: listen_addr(cfg, c),
        },
    };
    let mut ep = Endpoint::new(worker_of(cfg, c), role, ike);
    if c.start == StartAction::Listen {
        // Every worker listens: the kernel (SO_REUSEPORT) or the TAP's steering splitter hands
        // a new connection to any of them.
        let n = u16::try_from(cfg.gateway.workers).unwrap_or(u16::MAX);
        ep.also_listen_on = (1..n).collect();
    }
    ep.timers = Timers {
        dpd_interval: c.dpd_delay,
        half_open: cfg.limits.half_open_timeout,
        orphan: cfg.limits.idle_connection_timeout,
        ..Timers::default()
    };
    ep.cookies = CookiePolicy {
        half_open_threshold: cfg.limits.cookie_threshold,
        puzzle_difficulty: cfg.limits.puzzle_difficulty,
        init_rate_per_source: cfg.limits.ike_sa_init_per_source,
        ..CookiePolicy::tcp()
    };
    ep.limits = TimeLimits {
        child_soft: Some(c.child_rekey_time),
        child_hard: Some(c.child_life_time),
        ike_soft: Some(c.rekey_time),
        ike_hard: Some(c.life_time),
        pfs: c.pfs,
    };
    ep.replay_window = c.replay_window;
    ep.reconnect_probe = c.reconnect_probe;
    ep.child_pfs = c.child_dh;
    ep.lifetime = Lifetime {
        soft_packets: c.rekey_packets.unwrap_or(u64::MAX),
        hard_packets: c.life_packets.unwrap_or(u64::MAX),
        soft_bytes: c.rekey_bytes.unwrap_or(u64::MAX),
        hard_bytes: c.life_bytes.unwrap_or(u64::MAX),
    };
    Ok(ep)
}

impl Daemon {
    /// Adds a connection from the config and starts it.
    pub(super) fn add_connection(
        &mut self,
        c: ConnectionConfig,
        now: Instant,
    ) -> Result<(), GatewayError> {
        let name = c.name.clone();
        self.metrics.entry(name.clone()).or_default();
        self.conns.insert(
            name.clone(),
            ConnEntry {
                cfg: c,
                endpoint: None,
                admin_down: false,
                restart_at: None,
                restarts: 0,
                started: None,
            },
        );
        self.start_connection(&name, now)
    }

    /// Gives connection `name` a driver endpoint (listen or dial).
    fn start_connection(&mut self, name: &str, now: Instant) -> Result<(), GatewayError> {
        let Some(e) = self.conns.get(name) else {
            return Ok(());
        };
        let ep = endpoint(&self.cfg, &e.cfg)?;
        let id = self.driver.add(ep)?;
        tracing::info!(connection = %name, "connection started");
        self.by_endpoint.insert(id, name.to_owned());
        if let Some(e) = self.conns.get_mut(name) {
            e.endpoint = Some(id);
            e.restart_at = None;
            // Handshake latency is an initiator's: from its dial to its IKE SA.
            e.started = (e.cfg.start == StartAction::Initiate).then_some(now);
        }
        Ok(())
    }

    /// Takes connection `name`'s endpoint out of the driver (its IKE SAs are deleted).
    fn stop_connection(&mut self, name: &str, now: Instant) -> Result<(), GatewayError> {
        let Some(id) = self.conns.get_mut(name).and_then(|e| e.endpoint.take()) else {
            return Ok(());
        };
        self.driver.remove_endpoint(id, now)?;
        // Events of its last IKE SAs still name it until they are gone.
        self.routes_dirty = true;
        Ok(())
    }

    pub(super) fn up(&mut self, name: &str, now: Instant) -> Response {
        let Some(e) = self.conns.get_mut(name) else {
            return unknown(name);
        };
        e.admin_down = false;
        if e.endpoint.is_some() {
            return Response::ok(Reply::Done {
                message: format!("{name} is up"),
            });
        }
        e.restarts = 0;
        match self.start_connection(name, now) {
            Ok(()) => Response::ok(Reply::Done {
                message: format!("{name} started"),
            }),
            Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
        }
    }

    pub(super) fn down(&mut self, name: &str, now: Instant) -> Response {
        let Some(e) = self.conns.get_mut(name) else {
            return unknown(name);
        };
        e.admin_down = true;
        e.restart_at = None;
        match self.stop_connection(name, now) {
            Ok(()) => {
                tracing::info!(connection = %name, "connection taken down");
                Response::ok(Reply::Done {
                    message: format!("{name} down: its IKE SAs are being deleted"),
                })
            }
            Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
        }
    }

    pub(super) fn rekey(
        &mut self,
        name: &str,
        ike: bool,
        spi: Option<u32>,
        now: Instant,
    ) -> Response {
        let id = match self.endpoint_of(name) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let r = match (ike, spi) {
            (_, Some(spi)) => self.driver.rekey_child_sa(id, spi, now).map(usize::from),
            (true, None) => self.driver.rekey_ike_sas_of(id, now),
            (false, None) => self.driver.rekey_child_sas_of(id, now),
        };
        match r {
            Ok(0) if spi.is_some() => Response::error(
                ErrorKind::Internal,
                format!(
                    "{name}: no installed Child SA with inbound SPI {:08x}, or its IKE SA is busy",
                    spi.unwrap_or(0)
                ),
            ),
            Ok(n) => Response::ok(Reply::Done {
                message: format!(
                    "{name}: {n} {} rekey(s) started",
                    if ike { "IKE SA" } else { "Child SA" }
                ),
            }),
            Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
        }
    }

    /// The endpoint of connection `name`, or the answer saying why there is none.
    fn endpoint_of(&self, name: &str) -> Result<EndpointId, Response> {
        let Some(e) = self.conns.get(name) else {
            return Err(unknown(name));
        };
        e.endpoint
            .ok_or_else(|| Response::error(ErrorKind::Internal, format!("{name} is down")))
    }

    /// `liveness`, `add-child`, `delete-child`.
    pub(super) fn per_sa(&mut self, name: &str, op: PerSa, now: Instant) -> Response {
        let id = match self.endpoint_of(name) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let r = match op {
            PerSa::Liveness => self.driver.check_liveness(id, now),
            PerSa::AddChild => self.driver.create_child_sas(id, now),
            PerSa::DeleteChild(spi) => self.driver.delete_child_sa(id, spi, now).map(usize::from),
        };
        let what = match op {
            PerSa::Liveness => "liveness check(s)",
            PerSa::AddChild => "Child SA request(s)",
            PerSa::DeleteChild(_) => "Child SA Delete(s)",
        };
        match r {
            Ok(0) => Response::error(
                ErrorKind::Internal,
                format!(
                    "{name}: nothing sent (no such SA, or its IKE SA is busy or not connected)"
                ),
            ),
            Ok(n) => Response::ok(Reply::Done {
                message: format!("{name}: {n} {what} sent"),
            }),
            Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
        }
    }

    /// Applies a new config: connections added, removed, changed (deleted and started again)
    /// or left alone. Settings of `[gateway]`, `[tun]` and `[limits]` need a restart; a change
    /// to them is logged and otherwise ignored.
    pub(super) fn apply(
        &mut self,
        new: GatewayConfig,
        now: Instant,
    ) -> Result<ReloadSummary, GatewayError> {
        if new.gateway != self.cfg.gateway
            || new.tun != self.cfg.tun
            || new.limits != self.cfg.limits
        {
            tracing::warn!("[gateway], [tun] and [limits] changes take effect at the next start");
        }
        let mut s = ReloadSummary::default();
        let old_names: Vec<String> = self.conns.keys().cloned().collect();
        for name in old_names {
            if new.connection(&name).is_none() {
                self.stop_connection(&name, now)?;
                self.conns.remove(&name);
                self.metrics.remove(&name);
                s.removed.push(name);
            }
        }
        for c in new.connections {
            let name = c.name.clone();
            match self.conns.get(&name) {
                None => {
                    self.add_connection(c, now)?;
                    s.added.push(name);
                }
                Some(e) if e.cfg == c => s.unchanged.push(name),
                Some(_) => {
                    self.stop_connection(&name, now)?;
                    self.conns.remove(&name);
                    self.add_connection(c, now)?;
                    s.replaced.push(name);
                }
            }
        }
        Ok(s)
    }

    /// Starts again the initiators whose IKE SA ended, once their backoff has passed.
    pub(super) fn restarts(&mut self, now: Instant) -> Result<(), GatewayError> {
        let due: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, e)| e.restart_at.is_some_and(|t| t <= now) && !e.admin_down)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            tracing::info!(connection = %name, "restarting");
            self.metric(&name, "restarts");
            self.start_connection(&name, now)?;
        }
        Ok(())
    }

    fn metric(&mut self, name: &str, event: &'static str) {
        self.metrics
            .entry(name.to_owned())
            .or_default()
            .count(event);
    }

    /// An initiator without a live IKE SA: its endpoint goes, and it starts again after the
    /// backoff (unless the operator took it down or the attempts are used up).
    fn schedule_restart(&mut self, name: &str, now: Instant) -> Result<(), GatewayError> {
        let redial = self.cfg.gateway.redial;
        let Some(e) = self.conns.get_mut(name) else {
            return Ok(());
        };
        if e.cfg.start != StartAction::Initiate || e.admin_down || e.restart_at.is_some() {
            return Ok(());
        }
        if redial.attempts != 0 && e.restarts >= redial.attempts {
            tracing::warn!(connection = %name, attempts = e.restarts, "giving up: restart attempts used up");
            return self.stop_connection(name, now);
        }
        let backoff = redial
            .initial
            .saturating_mul(1u32 << e.restarts.min(16))
            .min(redial.max);
        e.restarts += 1;
        e.restart_at = Some(now + backoff);
        tracing::info!(connection = %name, in_s = backoff.as_secs_f64(), "restart scheduled");
        self.stop_connection(name, now)
    }

    /// Logs, counts and reacts to one driver event.
    pub(super) fn on_event(&mut self, ev: DriverEvent, now: Instant) -> Result<(), GatewayError> {
        let name = |d: &Self, e: &EndpointId| d.by_endpoint.get(e).cloned().unwrap_or_default();
        match ev {
            DriverEvent::Listening { endpoint } => {
                tracing::info!(connection = %name(self, &endpoint), "listening");
            }
            DriverEvent::ConnUp { endpoint, conn } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, worker = conn.worker, "TCP connection up");
                self.metric(&n, "tcp_up");
            }
            DriverEvent::ConnDown {
                endpoint,
                conn,
                reason,
            } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, worker = conn.worker, ?reason, "TCP connection down");
                self.metric(&n, "tcp_down");
            }
            DriverEvent::IkeSaUp {
                endpoint,
                ike_sa,
                spi_i,
                spi_r,
                suite,
                nat,
            } => {
                let n = name(self, &endpoint);
                tracing::info!(
                    connection = %n,
                    ike_sa = ike_sa.0,
                    spi_i = %format!("{spi_i:016x}"),
                    spi_r = %format!("{spi_r:016x}"),
                    suite = %super::report::ike_suite(&suite),
                    nat_local = nat.0,
                    nat_remote = nat.1,
                    "IKE SA established"
                );
                if let Some(e) = self.conns.get_mut(&n) {
                    e.restarts = 0;
                    if let Some(t) = e.started.take() {
                        let m = self.metrics.entry(n.clone()).or_default();
                        m.handshake.observe(now.duration_since(t).as_secs_f64());
                    }
                }
                self.metric(&n, "ike_sa_up");
            }
            DriverEvent::ChildSaInstalled {
                endpoint,
                spi_in,
                spi_out,
                suite,
                esn,
                selectors,
            } => {
                let n = name(self, &endpoint);
                let ts = |v: &[iketcp_dataplane::worker::spd::TrafficSelector]| {
                    v.iter()
                        .map(super::report::selector)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                tracing::info!(
                    connection = %n,
                    spi_in = %format!("{spi_in:08x}"),
                    spi_out = %format!("{spi_out:08x}"),
                    suite = ?suite,
                    esn,
                    local_ts = %ts(&selectors.local),
                    remote_ts = %ts(&selectors.remote),
                    "Child SA installed"
                );
                self.metric(&n, "child_sa_installed");
                self.routes_dirty = true;
            }
            DriverEvent::ChildSaRekeyed {
                endpoint,
                old_spi_in,
                old_spi_out,
                spi_in,
                spi_out,
            } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, old_spi_in = %format!("{old_spi_in:08x}"), old_spi_out = %format!("{old_spi_out:08x}"), spi_in = %format!("{spi_in:08x}"), spi_out = %format!("{spi_out:08x}"), "Child SA rekeyed");
                self.metric(&n, "child_sa_rekeyed");
            }
            DriverEvent::IkeSaRekeyed {
                endpoint,
                ike_sa,
                spi_i,
                spi_r,
            } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, ike_sa = ike_sa.0, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"), "IKE SA rekeyed");
                self.metric(&n, "ike_sa_rekeyed");
            }
            DriverEvent::IkeSaDeleted { endpoint, ike_sa } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, ike_sa = ike_sa.0, "IKE SA deleted");
                self.metric(&n, "ike_sa_deleted");
                self.routes_dirty = true;
                if self.conns.get(&n).and_then(|e| e.endpoint) == Some(endpoint) {
                    self.schedule_restart(&n, now)?;
                }
            }
            DriverEvent::ConnectFailed { endpoint, retry_in } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, retry_in_s = retry_in.as_secs_f64(), "connect failed");
                self.metric(&n, "connect_failed");
            }
            DriverEvent::CookieSent { endpoint, kind } => {
                let n = name(self, &endpoint);
                tracing::debug!(connection = %n, ?kind, "cookie sent");
                self.metric(&n, "cookie_sent");
            }
            DriverEvent::SolvePuzzle {
                endpoint,
                ike_sa,
                job,
            } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, "solving a puzzle");
                // Puzzles are rare and bounded by the peer's difficulty; solved here, the loop
                // pauses for that long.
                let answer = job.solve();
                self.driver.puzzle_solved(ike_sa, answer, Instant::now())?;
            }
            DriverEvent::InitDropped { endpoint } => {
                let n = name(self, &endpoint);
                self.metric(&n, "init_dropped");
            }
            DriverEvent::Migrated {
                endpoint,
                ike_sa,
                from,
                to,
            } => {
                let n = name(self, &endpoint);
                tracing::info!(connection = %n, ike_sa = ike_sa.0, from, to, "SAs moved to another worker");
                self.metric(&n, "migrated");
            }
            DriverEvent::SaRemoved { .. } => {
                self.routes_dirty = true;
            }
            DriverEvent::ForgedEsp {
                endpoint,
                conn,
                spi,
            } => {
                let n = name(self, &endpoint);
                tracing::warn!(connection = %n, worker = conn.worker, spi = %format!("{spi:08x}"), "forged ESP on a new connection: closed");
                self.metric(&n, "forged_esp");
            }
            DriverEvent::ProbeAbandoned { endpoint, ike_sa } => {
                let n = name(self, &endpoint);
                tracing::warn!(connection = %n, ike_sa = ike_sa.0, "the peer answered the liveness check after a reconnect on the old connection: rekeying the IKE SA on the new one");
                self.metric(&n, "reconnect_probe_abandoned");
            }
            DriverEvent::IntegrityFailure { endpoint } => {
                let n = name(self, &endpoint);
                tracing::warn!(connection = %n, "IKE message failed its integrity check");
                self.metric(&n, "ike_integrity_failure");
            }
            DriverEvent::AckTimedOut { ack, endpoint } => {
                let n = endpoint.map(|e| name(self, &e)).unwrap_or_default();
                tracing::error!(connection = %n, ack, "a worker did not answer in time");
                self.metric(&n, "ack_timed_out");
            }
            DriverEvent::Refused {
                endpoint,
                ike_sa,
                what,
                notify,
            } => {
                let n = name(self, &endpoint);
                tracing::warn!(connection = %n, ike_sa = ike_sa.0, ?what, ?notify, "the peer refused our request");
                let label = match what {
                    Refusal::ChildSa => "child_sa_refused",
                    Refusal::IkeRekey => "ike_rekey_refused",
                };
                self.metric(&n, label);
            }
            DriverEvent::Failed { endpoint, reason } => {
                let n = name(self, &endpoint);
                tracing::warn!(connection = %n, reason = %reason, "failed");
                *self
                    .metrics
                    .entry(n.clone())
                    .or_default()
                    .failures
                    .entry(failure_kind(&reason).to_owned())
                    .or_default() += 1;
                let ends_ike_sa = matches!(
                    reason,
                    Failure::NoConnection { .. }
                        | Failure::IkeSa(_)
                        | Failure::Initiator(_)
                        | Failure::ChildSaRefused(_)
                );
                if ends_ike_sa && self.conns.get(&n).and_then(|e| e.endpoint) == Some(endpoint) {
                    self.schedule_restart(&n, now)?;
                }
            }
        }
        Ok(())
    }
}

/// An operation on the SAs of one connection.
#[derive(Clone, Copy, Debug)]
pub(super) enum PerSa {
    /// An empty INFORMATIONAL on each IKE SA.
    Liveness,
    /// One more Child SA on each IKE SA.
    AddChild,
    /// Delete the Child SA with this inbound SPI.
    DeleteChild(u32),
}

/// A stable label for a failure.
fn failure_kind(f: &Failure) -> &'static str {
    match f {
        Failure::Initiator(_) => "initiator",
        Failure::Session(_) => "session",
        Failure::ChildSaRefused(_) => "child_sa_refused",
        Failure::IkeSa(_) => "ike_sa",
        Failure::BuildSa(_) => "build_sa",
        Failure::Listen(_) => "listen",
        Failure::Install { .. } => "install",
        Failure::Move(_) => "move",
        Failure::NoConnection { .. } => "no_connection",
        Failure::HardLifetime { .. } => "hard_lifetime",
        Failure::HalfOpenTimeout => "half_open_timeout",
    }
}

fn unknown(name: &str) -> Response {
    Response::error(
        ErrorKind::UnknownConnection,
        format!("no connection {name:?}"),
    )
}
