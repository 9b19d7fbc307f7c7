//! The gateway process: config in, workers and driver running, the TUN device and its routes
//! kept in step with the Child SAs, the control socket and metrics served, signals obeyed.
//!
//! One thread (this one) owns the driver and everything that changes state; the control socket
//! and the metrics listener run on their own threads and hand requests over bounded channels,
//! so a slow client never stalls IKE.

mod conns;
mod report;
pub mod routes;
mod workers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use iketcp_control::driver::{Driver, DriverError, EndpointId};
use iketcp_dataplane::worker::handle::Command as WorkerCommand;

use crate::config::{self, ConfigError, GatewayConfig};
use crate::ctl::server::{self as ctl_server, ControlServer, Job};
use crate::ctl::{Command, ErrorKind, Reply, Response};
use crate::metrics::{self, Histogram, MetricsServer, Scrape};
use crate::net::{Netlink, NetlinkError, Route, RouteSet};
use routes::Prefix;

/// How long a clean shutdown waits for the peers to acknowledge the Deletes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How often Child SA traffic counters are collected from the workers.
const COUNTER_INTERVAL: Duration = Duration::from_secs(1);
/// Refusals by the transports' limits are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A counter's line is due when it grew and the last line (`logged`: the count then, and when)
/// is [`REFUSAL_LOG_INTERVAL`] old: returns the growth since and records this line.
fn log_due(logged: &mut (u64, Instant), count: u64, now: Instant) -> Option<u64> {
    let (last, at) = *logged;
    if count > last && now.duration_since(at) >= REFUSAL_LOG_INTERVAL {
        *logged = (count, now);
        Some(count - last)
    } else {
        None
    }
}

/// Why the gateway could not start or stopped with an error.
#[derive(Debug)]
pub enum GatewayError {
    /// The config file is invalid.
    Config(ConfigError),
    /// A device, socket or thread could not be set up.
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// Configuring the TUN device failed.
    Netlink(NetlinkError),
    /// The driver failed (a local fault).
    Driver(DriverError),
    /// The configuration cannot run in this build.
    Unsupported(String),
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Config(e) => write!(f, "{e}"),
            GatewayError::Setup { what, error } => write!(f, "{what}: {error}"),
            GatewayError::Netlink(e) => write!(f, "configuring the TUN device: {e}"),
            GatewayError::Driver(e) => write!(f, "control driver: {e}"),
            GatewayError::Unsupported(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for GatewayError {}

impl From<DriverError> for GatewayError {
    fn from(e: DriverError) -> Self {
        GatewayError::Driver(e)
    }
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> GatewayError {
    move |error| GatewayError::Setup { what, error }
}

/// How `iketcp gateway` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// Pin the workers to cores.
    pub pin: bool,
}

/// Daemon counters of one connection (by config name).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnMetrics {
    pub(crate) events: BTreeMap<&'static str, u64>,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) handshake: Histogram,
}

impl ConnMetrics {
    pub(crate) fn count(&mut self, event: &'static str) {
        *self.events.entry(event).or_default() += 1;
    }
}

/// The running gateway.
pub struct Daemon {
    path: PathBuf,
    /// The `[gateway]` and `[tun]` sections in use (its connections are in `conns`).
    cfg: GatewayConfig,
    driver: Driver,
    workers: workers::Workers,
    netlink: Netlink,
    tun_index: u32,
    conns: BTreeMap<String, conns::ConnEntry>,
    by_endpoint: HashMap<EndpointId, String>,
    /// The routes installed for Child SAs (removed again exactly, at the latest at exit).
    routes: RouteSet,
    routes_dirty: bool,
    metrics: BTreeMap<String, ConnMetrics>,
    started: Instant,
    last_counters: Instant,
    /// The transports' refusal count at the last log line about them, and when it was.
    refusals_logged: (u64, Instant),
    /// The same for the workers' `queue_held` count.
    queue_holds_logged: (u64, Instant),
    reloads: (u64, u64),
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn prefix_of(r: &Route) -> Prefix {
    Prefix {
        addr: r.dst,
        len: r.prefix_len,
    }
}

/// Signals, as flags the loop polls.
struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals, GatewayError> {
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // A second SIGTERM/SIGINT while the first is being handled exits at once: the
            // conditional handler is registered first, so it sees the flag of the first signal.
            signal_hook::flag::register_conditional_shutdown(sig, 1, term.clone())
                .map_err(setup("signal handler"))?;
            signal_hook::flag::register(sig, term.clone()).map_err(setup("signal handler"))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
            .map_err(setup("signal handler"))?;
        Ok(Signals { term, hup })
    }
}

/// Runs the gateway with `cfg` (loaded from `opts.config`) until SIGTERM or SIGINT; then
/// deletes every IKE SA, removes the routes and the device, and returns.
///
/// # Errors
/// See [`GatewayError`].
pub fn run(opts: &Options, cfg: GatewayConfig) -> Result<(), GatewayError> {
    let signals = Signals::install()?;
    let (mut daemon, _control, jobs, metrics) = Daemon::start(&opts.config, cfg, opts.pin)?;
    let scrapes = metrics.as_ref().map(|m| m.1.clone());
    tracing::info!(
        config = %opts.config.display(),
        workers = daemon.cfg.gateway.workers,
        tun = %daemon.workers.tun_name,
        connections = daemon.conns.len(),
        "gateway started"
    );
    loop {
        if signals.term.load(Ordering::Relaxed) {
            tracing::info!("shutting down");
            break;
        }
        if signals.hup.swap(false, Ordering::Relaxed) {
            let r = daemon.reload();
            tracing::info!(outcome = ?r.outcome, "reload on SIGHUP");
        }
        if let Err(e) = daemon.step() {
            // A local fault (a worker gone or stuck): still delete what can be deleted and
            // take the routes down before reporting it.
            tracing::error!(error = %e, "stopping after a fault");
            drop(metrics);
            daemon.shutdown();
            return Err(e);
        }
        while let Ok(Job { command, reply }) = jobs.try_recv() {
            let r = daemon.command(command);
            let _ = reply.send(r);
        }
        if let Some(s) = &scrapes {
            while let Ok(Scrape { reply }) = s.try_recv() {
                let _ = reply.send(daemon.render_metrics());
            }
        }
    }
    drop(metrics);
    daemon.shutdown();
    Ok(())
}

type MetricsParts = Option<(MetricsServer, crossbeam_channel::Receiver<Scrape>)>;

impl Daemon {
    /// Starts the workers, configures the TUN device, opens the control socket and the metrics
    /// listener, and adds the connections.
    fn start(
        path: &Path,
        cfg: GatewayConfig,
        pin: bool,
    ) -> Result<
        (
            Daemon,
            ControlServer,
            crossbeam_channel::Receiver<Job>,
            MetricsParts,
        ),
        GatewayError,
    > {
        conns::check_supported(&cfg)?;
        let (control, jobs) =
            ctl_server::start(&cfg.gateway.control_socket).map_err(setup("control socket"))?;
        let metrics = match cfg.gateway.metrics {
            Some(a) => Some(metrics::start(a).map_err(setup("metrics listener"))?),
            None => None,
        };
        let workers = workers::start(&cfg, pin).map_err(setup("data-plane workers"))?;
        let mut netlink = Netlink::open().map_err(GatewayError::Netlink)?;
        let tun_index = netlink
            .link_index(&workers.tun_name)
            .map_err(GatewayError::Netlink)?;
        netlink
            .set_link_up(tun_index, Some(u32::from(cfg.tun.mtu)))
            .map_err(GatewayError::Netlink)?;
        for &(a, len) in &cfg.tun.addresses {
            netlink
                .add_address(tun_index, a, len)
                .map_err(GatewayError::Netlink)?;
        }
        let mut driver = Driver::new(workers.handle.clone());
        if let Some(dir) = &cfg.gateway.keylog_dir {
            driver.set_keylog(dir)?;
        }
        let now = Instant::now();
        let mut d = Daemon {
            path: path.to_owned(),
            cfg,
            driver,
            workers,
            netlink,
            tun_index,
            conns: BTreeMap::new(),
            by_endpoint: HashMap::new(),
            routes: RouteSet::new(),
            routes_dirty: false,
            metrics: BTreeMap::new(),
            started: now,
            last_counters: now,
            refusals_logged: (0, now),
            queue_holds_logged: (0, now),
            reloads: (0, 0),
        };
        // The connections live in `conns` from here on.
        for c in std::mem::take(&mut d.cfg.connections) {
            d.add_connection(c, now)?;
        }
        Ok((d, control, jobs, metrics))
    }

    /// One turn of the loop: driver events, restarts, counters, routes.
    fn step(&mut self) -> Result<(), GatewayError> {
        self.driver.poll(Duration::from_millis(20))?;
        let now = Instant::now();
        for ev in self.driver.take_events() {
            self.on_event(ev, now)?;
        }
        self.restarts(now)?;
        if now.duration_since(self.last_counters) >= COUNTER_INTERVAL {
            self.last_counters = now;
            self.driver.refresh_counters(now)?;
            self.note_refusals(now);
            // Endpoints the driver has forgotten (removed, their IKE SAs gone) need no name.
            let live: std::collections::HashSet<EndpointId> =
                self.driver.list_endpoints().iter().map(|e| e.id).collect();
            self.by_endpoint.retain(|id, _| live.contains(id));
        }
        if self.routes_dirty {
            self.routes_dirty = false;
            self.sync_routes(now);
        }
        Ok(())
    }

    /// Logs, at most once per [`REFUSAL_LOG_INTERVAL`] each, how many connections the
    /// transports refused by a limit, and how often a connection's send queue reached its bound,
    /// since the last such line: one line for a flood, not one per SYN.
    fn note_refusals(&mut self, now: Instant) {
        let (refused, untrusted, held) = (0..self.cfg.gateway.workers)
            .filter_map(|w| self.workers.handle.worker_stats(w as u16))
            .fold((0, 0, 0), |(r, u, h), s| {
                (r + s.tcp_refused, u + s.tcp_untrusted, h + s.queue_held)
            });
        if let Some(times) = log_due(&mut self.queue_holds_logged, held, now) {
            // Info, not a warning: under a bulk transfer this is TCP's ordinary backpressure.
            tracing::info!(
                times,
                "a connection's send queue reached [limits] queued_bytes_per_connection or 512 frames; plaintext for it waited (a slow path, or a peer not reading)"
            );
        }
        if let Some(refused) = log_due(&mut self.refusals_logged, refused, now) {
            tracing::warn!(
                refused,
                untrusted_open = untrusted,
                "connections refused by [limits] (untrusted connections in all or per source, connection slots, half-open accepts)"
            );
        }
    }

    /// A control request.
    fn command(&mut self, c: Command) -> Response {
        let now = Instant::now();
        match c {
            Command::Status => Response::ok(Reply::Status(Box::new(self.status(now)))),
            Command::Reload => self.reload(),
            Command::Up { name } => self.up(&name, now),
            Command::Down { name } => self.down(&name, now),
            Command::Rekey { name, ike, spi } => self.rekey(&name, ike, spi, now),
            Command::Liveness { name } => self.per_sa(&name, conns::PerSa::Liveness, now),
            Command::AddChild { name } => self.per_sa(&name, conns::PerSa::AddChild, now),
            Command::DeleteChild { name, spi } => {
                self.per_sa(&name, conns::PerSa::DeleteChild(spi), now)
            }
        }
    }

    /// Reads the config file again and applies the difference to the connections.
    fn reload(&mut self) -> Response {
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.reloads.1 += 1;
                tracing::warn!(error = %e, "reload refused: config invalid, nothing changed");
                return Response::error(ErrorKind::Config, e.to_string());
            }
        };
        if let Err(e) = conns::check_supported(&new) {
            self.reloads.1 += 1;
            return Response::error(ErrorKind::Config, e.to_string());
        }
        match self.apply(new, Instant::now()) {
            Ok(summary) => {
                self.reloads.0 += 1;
                tracing::info!(
                    added = ?summary.added,
                    removed = ?summary.removed,
                    replaced = ?summary.replaced,
                    "config reloaded"
                );
                Response::ok(Reply::Reloaded(summary))
            }
            Err(e) => {
                self.reloads.1 += 1;
                Response::error(ErrorKind::Internal, e.to_string())
            }
        }
    }

    /// Makes the kernel's routes through the TUN device match the installed Child SAs.
    fn sync_routes(&mut self, now: Instant) {
        let mut want = BTreeSet::new();
        for (name, e) in &self.conns {
            let Some(ep) = e.endpoint else { continue };
            let avoid: Vec<IpAddr> = e.cfg_peer_addrs();
            for sa in self.driver.list_ike_sas(Some(ep), now) {
                let mut avoid = avoid.clone();
                if let Some((_, _, peer)) = sa.conn {
                    avoid.push(peer.ip());
                }
                for ch in sa.child_sas {
                    if ch.state != iketcp_control::driver::ChildSaState::Installed {
                        continue;
                    }
                    let (w, refused) = routes::wanted(&ch.selectors.remote, &avoid);
                    for p in refused {
                        tracing::warn!(connection = %name, prefix = %p, "no route for a selector that covers the peer's outer address");
                    }
                    want.extend(w);
                }
            }
        }
        let have: BTreeSet<Prefix> = self.routes.routes().iter().map(prefix_of).collect();
        for p in have.difference(&want) {
            let r = self.route(*p);
            match self.routes.remove(&mut self.netlink, &r) {
                Ok(_) => tracing::info!(prefix = %p, dev = %self.workers.tun_name, "route removed"),
                Err(e) => {
                    tracing::warn!(prefix = %p, error = %e, "removing route");
                    self.routes_dirty = true;
                }
            }
        }
        for p in want.difference(&have) {
            let r = self.route(*p);
            match self.routes.install(&mut self.netlink, r) {
                Ok(()) => tracing::info!(prefix = %p, dev = %self.workers.tun_name, "route added"),
                Err(e) => tracing::warn!(prefix = %p, error = %e, "adding route"),
            }
        }
    }

    fn route(&self, p: Prefix) -> Route {
        // Traffic the gateway host itself sends into the tunnel leaves from its TUN address,
        // which is inside the local selectors.
        let src = self
            .cfg
            .tun
            .addresses
            .iter()
            .map(|a| a.0)
            .find(|a| a.is_ipv4() == p.addr.is_ipv4());
        Route {
            dst: p.addr,
            prefix_len: p.len,
            oif: self.tun_index,
            src,
            table: 254,
            metric: None,
        }
    }

    /// Deletes every IKE SA (waiting briefly for the peers), removes the routes, stops the
    /// workers; the TUN device goes with the workers' descriptors.
    fn shutdown(mut self) {
        let now = Instant::now();
        match self.driver.delete_ike_sas(now) {
            Ok(n) => tracing::info!(ike_sas = n, "deleting IKE SAs"),
            Err(e) => tracing::warn!(error = %e, "deleting IKE SAs"),
        }
        let deadline = now + SHUTDOWN_GRACE;
        while Instant::now() < deadline {
            let live = self
                .driver
                .list_ike_sas(None, Instant::now())
                .iter()
                .any(|s| s.state != iketcp_control::driver::IkeSaState::Gone);
            if !live {
                break;
            }
            if self.driver.poll(Duration::from_millis(10)).is_err() {
                break;
            }
            for ev in self.driver.take_events() {
                let _ = self.on_event(ev, Instant::now());
            }
        }
        if let Err(e) = self.routes.clear(&mut self.netlink) {
            tracing::warn!(error = %e, left = self.routes.len(), "removing routes");
        }
        for w in 0..self.workers.joins.len() {
            let _ = self.workers.handle.send_timeout(
                w as u16,
                WorkerCommand::Shutdown,
                Duration::from_millis(200),
            );
        }
        for j in self.workers.joins.drain(..) {
            match j.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "worker stopped with an error"),
                Err(_) => tracing::warn!("worker panicked"),
            }
        }
        if let Some((stop, j)) = self.workers.splitter.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = j.join();
        }
        tracing::info!("stopped");
    }
}
