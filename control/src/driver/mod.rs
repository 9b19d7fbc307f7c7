//! The driver: owns IKE sessions and connects them to the data plane through a
//! [`DataplaneHandle`]. It is sans threads: the caller feeds it data-plane events with
//! [`Driver::handle_event`] (or lets [`Driver::poll`] read them from the handle) and collects what
//! happened with [`Driver::take_events`].
//!
//! - TCP Originator endpoints send `Connect`; on `ConnUp` with their token the initiator session
//!   starts and its IKE_SA_INIT request goes out with `SendIke`.
//! - TCP Responder endpoints send `Listen`; a connection they accept gets a responder session with
//!   its first IKE message.
//! - On `ChildSaUp` both ESP SAs are built (AWS-LC backend, tunnel mode) and installed on the
//!   worker that owns the connection, and the IKE SA is bound to that connection. The messages the
//!   session produced in the same call (the responder's IKE_AUTH response) are held until the
//!   inbound SA's install is acknowledged, so the peer never uses an SA we cannot decrypt with yet.
//!
//! - Connections (`conn.rs`): the SAs outlive their connection (RFC 9329 §6.1). Only the TCP
//!   Originator dials again, after any unexpected close (R-6.1-g), at most three times in a row
//!   without an answer; the IKE SA is bound to the new connection and a request still waiting
//!   for its response is re-sent bit for bit (R-6.2-b). A Responder continues a session whose
//!   message or ESP arrives on a new connection. An IKE integrity failure closes the connection
//!   (R-6.1-o); the Originator closes it once the IKE SA is deleted (R-6.1-d); a Responder
//!   closes connections without a live IKE SA after [`Timers::orphan`] (R-6.1-e) and drops
//!   half-open sessions after [`Timers::half_open`].
//! - Liveness: workers report which IKE SAs received authentic ESP; with that and authentic IKE
//!   messages the session checks liveness after silence and deletes the IKE SA when the check
//!   goes unanswered (RFC 7296 §2.4, RFC 9329 §6.7).
//! - Lifetimes (`lifetime.rs`): rekeys at soft limits (time with jitter, or traffic limits the
//!   workers report), deletes at hard limits.
//! - Moves (`migrate.rs`): a connection that lands on another worker than the IKE SA's SAs
//!   takes them along.
//! - Reaping (`reap.rs`): finished sessions and Child SAs are forgotten.
//!
//! - After every session call the driver acts on the session's [`SaEvent`]s (`Output::Sa`). A Child SA created by
//!   CREATE_CHILD_SA is installed like the first one. A rekeyed Child SA: the new inbound SA is
//!   installed before any response leaves; the rekey initiator installs the new outbound SA at
//!   once (it takes precedence in the SPD) and deletes the old outbound SA, while the rekey
//!   responder switches only when the old SA's Delete arrives (or after [`SWITCH_FALLBACK`]), so
//!   the peer has the new inbound SA before traffic uses it. The old inbound SA is deleted
//!   [`OLD_INBOUND_GRACE`] later, so packets in flight with the old SPI still decrypt
//!   (RFC 7296 §2.8). An IKE SA rekey keeps the Child SAs; a deleted IKE SA takes its SAs along.
//! - [`Driver::poll`] also runs the timers: session timeouts (liveness checks, exchange
//!   timeouts), deferred deletes and switches.
//!
//! - Simultaneous rekeys of one Child SA (RFC 7296 §2.8.1) defer the switch until a Delete shows
//!   which new SA survives; a deleted Child SA's inbound SA also gets the grace period, and an
//!   SA deleted while its install is unacknowledged is removed when the ack comes. Such a
//!   collision still loses a burst of packets (4–12 of ~550 each way in the test).

#[cfg(test)]
mod life_tests;
#[cfg(test)]
mod path_tests;
#[cfg(test)]
mod tests;

mod child;
mod conn;
mod keyfile;
mod lifetime;
mod migrate;
mod reap;

pub use keyfile::{KEYLOG_ESP_FILE, KEYLOG_IKE_FILE};
pub use lifetime::{JITTER_PERCENT, TimeLimits};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat};
use iketcp_dataplane::sa::{InboundSa, Mode, OutboundSa, SaParams};
use iketcp_dataplane::transport::{CloseReason, TcpRole};
use iketcp_dataplane::worker::handle::{
    Command, CommandError, Conn, DataplaneHandle, Direction, Event, IkeSaId, Lifetime, RemovedSa,
    SendError, VerifyFailure,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector as SpdSelector};

use crate::ike::cookie::{CookieJar, CookiePolicy, ReplyKind, Screen};
use crate::ike::session::{
    ChildSa, Config, Output, PuzzleAnswer, PuzzleJob, Role, SaEvent, Session, SessionError,
    SessionEvent, SpiPool, Verdict,
};
use crate::ike::wire::TrafficSelector;

/// How long a command may wait for room in a worker's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnects of a TCP Originator with a request outstanding before it gives up.
const MAX_RECONNECTS: u8 = 3;
/// First delay before an Originator endpoint dials again after a failed connect.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay between dials.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the old inbound SA of a rekeyed Child SA stays after traffic moved to the new one.
pub const OLD_INBOUND_GRACE: Duration = Duration::from_secs(1);
/// How long a rekey responder waits for the old Child SA's Delete before it switches its
/// outbound traffic to the new SA anyway.
pub const SWITCH_FALLBACK: Duration = Duration::from_secs(1);

/// Which end of the TCP connection an endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointRole {
    /// Opens the connection and initiates IKE.
    Originator {
        /// The peer's address and port (4500 by default, RFC 9329 §2).
        remote: SocketAddr,
        /// Our address, or any.
        local: Option<SocketAddr>,
    },
    /// Accepts connections and responds.
    Responder {
        /// Where to listen.
        listen: SocketAddr,
    },
}

/// One gateway's IKE configuration and where it runs in the data plane.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The worker that listens or connects.
    pub worker: u16,
    /// Originator or Responder.
    pub role: EndpointRole,
    /// The IKE session configuration.
    pub ike: Config,
    /// AEAD implementation of the ESP SAs.
    pub backend: Backend,
    /// Traffic limits of the Child SAs.
    pub lifetime: Lifetime,
    /// Liveness and exchange timers of its sessions.
    pub timers: Timers,
    /// Time limits of its IKE and Child SAs.
    pub limits: TimeLimits,
    /// When a TCP Responder asks for cookies and puzzles (RFC 7296 §2.6, RFC 8019, RFC 9329
    /// §6.3); endpoints listening on one address share the first one's.
    pub cookies: CookiePolicy,
}

/// Timers of an endpoint's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Inbound silence (no authentic IKE message or ESP packet) after which a liveness check
    /// is sent (RFC 7296 §2.4, RFC 9329 §6.7).
    pub dpd_interval: Duration,
    /// How long a request may go unanswered before the IKE SA is deleted; nothing is
    /// retransmitted over TCP (RFC 9329 §6.2).
    pub exchange_timeout: Duration,
    /// How long a responder session may stay unauthenticated before it is dropped (half-open
    /// IKE SAs are what a flood of IKE_SA_INIT requests leaves behind, RFC 7296 §2.6).
    pub half_open: Duration,
    /// How long a TCP Responder keeps a connection that carries no live IKE SA before it
    /// closes it (RFC 9329 §6.1 suggests a few seconds, R-6.1-e).
    pub orphan: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            dpd_interval: Duration::from_secs(30),
            exchange_timeout: Duration::from_secs(30),
            half_open: Duration::from_secs(30),
            orphan: Duration::from_secs(5),
        }
    }
}

impl Endpoint {
    /// An endpoint with the AWS-LC backend and no traffic limits.
    pub fn new(worker: u16, role: EndpointRole, ike: Config) -> Self {
        Endpoint {
            worker,
            role,
            ike,
            backend: Backend::AwsLc,
            lifetime: Lifetime::UNLIMITED,
            timers: Timers::default(),
            limits: TimeLimits::default(),
            cookies: CookiePolicy::tcp(),
        }
    }
}

/// What the driver reports to its owner.
#[derive(Debug)]
pub enum DriverEvent {
    /// A Responder endpoint is listening.
    Listening {
        /// Endpoint index.
        endpoint: usize,
    },
    /// A connection of an endpoint is up.
    ConnUp {
        /// Endpoint index.
        endpoint: usize,
        /// The connection.
        conn: Conn,
    },
    /// A connection of an endpoint is gone (its SAs stay).
    ConnDown {
        /// Endpoint index.
        endpoint: usize,
        /// The connection.
        conn: Conn,
        /// Why.
        reason: CloseReason,
    },
    /// The IKE SA of a connection is authenticated.
    IkeSaUp {
        /// Endpoint index.
        endpoint: usize,
        /// Its name in the data plane.
        ike_sa: IkeSaId,
    },
    /// Both ESP SAs of a Child SA are installed (acknowledged by the worker).
    ChildSaInstalled {
        /// Endpoint index.
        endpoint: usize,
        /// Inbound SPI.
        spi_in: u32,
        /// Outbound SPI.
        spi_out: u32,
    },
    /// A Child SA was rekeyed: the new one's SAs are being installed (see
    /// [`DriverEvent::ChildSaInstalled`]), the old ones go.
    ChildSaRekeyed {
        /// Endpoint index.
        endpoint: usize,
        /// Old inbound SPI.
        old_spi_in: u32,
        /// Old outbound SPI.
        old_spi_out: u32,
        /// New inbound SPI.
        spi_in: u32,
        /// New outbound SPI.
        spi_out: u32,
    },
    /// The IKE SA was rekeyed; its Child SAs stay.
    IkeSaRekeyed {
        /// Endpoint index.
        endpoint: usize,
        /// Its name in the data plane (unchanged).
        ike_sa: IkeSaId,
        /// Initiator SPI of the new IKE SA.
        spi_i: u64,
        /// Responder SPI of the new IKE SA.
        spi_r: u64,
    },
    /// The IKE SA is gone (deleted or timed out) and its SAs were deleted.
    IkeSaDeleted {
        /// Endpoint index.
        endpoint: usize,
        /// Its name in the data plane.
        ike_sa: IkeSaId,
    },
    /// An Originator endpoint's connect failed; it dials again after `retry_in`.
    ConnectFailed {
        /// Endpoint index.
        endpoint: usize,
        /// The backoff before the next dial.
        retry_in: Duration,
    },
    /// A stateless IKE_SA_INIT response asked for a cookie (and a puzzle) before any state
    /// was kept (RFC 7296 §2.6, RFC 8019 §7.1.1).
    CookieSent {
        /// Endpoint index.
        endpoint: usize,
        /// What was asked.
        kind: ReplyKind,
    },
    /// The responder asked an Originator's session for a puzzle (RFC 8019 §7.1.2): run
    /// [`PuzzleJob::solve`] off the driver's thread and hand the answer to
    /// [`Driver::puzzle_solved`]; the session waits until then.
    SolvePuzzle {
        /// Endpoint index.
        endpoint: usize,
        /// The work.
        job: PuzzleJob,
    },
    /// An IKE_SA_INIT request was dropped before any state was kept (not an initial request,
    /// malformed, or under load without a valid cookie and puzzle solution).
    InitDropped {
        /// Endpoint index.
        endpoint: usize,
    },
    /// An IKE SA's ESP SAs moved to the worker of its new connection.
    Migrated {
        /// Endpoint index.
        endpoint: usize,
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// The worker that held them.
        from: u16,
        /// The worker that holds them now.
        to: u16,
    },
    /// A worker removed an ESP SA (answer to `DeleteSa`).
    SaRemoved {
        /// SPI.
        spi: u32,
        /// Direction.
        dir: Direction,
    },
    /// ESP that arrived on another worker's connection for a live SPI failed its ICV at the
    /// SA's owner: nothing moved, and the connection was closed (RFC 9329 §6.1, R-6.1-o).
    ForgedEsp {
        /// Endpoint index.
        endpoint: usize,
        /// Where it arrived.
        conn: Conn,
        /// The SPI it named.
        spi: u32,
    },
    /// An encrypted IKE message failed its integrity check.
    IntegrityFailure {
        /// Endpoint index.
        endpoint: usize,
    },
    /// Something failed for good (session, install, connect).
    Failed {
        /// Endpoint index.
        endpoint: usize,
        /// What.
        reason: String,
    },
}

/// A local fault of the driver (not a peer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError(pub String);

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DriverError {}

#[derive(Debug)]
struct ConnState {
    endpoint: usize,
    local: SocketAddr,
    peer: SocketAddr,
    /// Index into `Driver::sessions`, once the connection carries an IKE SA.
    session: Option<usize>,
    /// When it came up.
    since: Instant,
    /// Since when it carries no live IKE SA (stamped by the timers; `None` while it does).
    orphan_since: Option<Instant>,
    /// A stateless cookie reply went out on it: closed at this time unless the repeated
    /// request came (RFC 9329 §6.3, R-6.3-b).
    cookie_wait: Option<Instant>,
    /// A `Close` was sent.
    closing: bool,
}

#[derive(Debug)]
struct SessionState {
    endpoint: usize,
    session: Session,
    ike_sa: IkeSaId,
    /// The connection it currently uses (`None` while an Originator reconnects).
    conn: Option<Conn>,
    /// Our request still waiting for its response, re-sent bit for bit on a new connection
    /// (RFC 9329 §6.2).
    outstanding: Option<Vec<u8>>,
    /// Consecutive reconnects without an authentic answer.
    reconnects: u8,
    /// A TCP Originator's `Connect` for this session is under way.
    connecting: bool,
    /// When the session was created (half-open responder sessions are dropped after
    /// [`Timers::half_open`]).
    born: Instant,
    /// Dropped by the driver (a half-open responder session that timed out).
    dropped: bool,
    /// When the current IKE SA is rekeyed and when it is deleted (time limits).
    ike_rekey_at: Option<Instant>,
    ike_expire_at: Option<Instant>,
}

#[derive(Debug)]
struct ChildState {
    endpoint: usize,
    session: usize,
    worker: u16,
    spi_in: u32,
    spi_out: u32,
    inbound_ok: bool,
    outbound_ok: bool,
    /// When it is rekeyed and when it is deleted (time limits, or traffic limits reported by
    /// the worker).
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    /// Its outbound traffic selectors (for a reinstall on another worker).
    selectors: Selectors,
    /// Deleted while its install was still unacknowledged: the ack deletes it (inbound,
    /// outbound).
    unwanted: (bool, bool),
}

#[derive(Debug)]
enum Pending {
    Listen {
        endpoint: usize,
    },
    Inbound {
        child: usize,
        conn: Conn,
        held: Vec<Vec<u8>>,
    },
    Outbound {
        child: usize,
    },
    /// An SA moved to another worker.
    Moved {
        child: usize,
        dir: Direction,
    },
    /// The owner of `spi` checks an ESP packet that arrived on `conn` (another worker's).
    Verify {
        conn: Conn,
        spi: u32,
    },
    Delete,
}

/// A rekey responder's new outbound SA, installed when the old Child SA's Delete arrives.
#[derive(Debug)]
struct Switch {
    session: usize,
    old: usize,
    new: usize,
    sa: Box<OutboundSa>,
    selectors: Selectors,
    due: Instant,
}

/// Sessions, connections and SAs of a set of endpoints on one data plane. See the module docs.
#[derive(Debug)]
pub struct Driver {
    handle: DataplaneHandle,
    endpoints: Vec<Endpoint>,
    conns: HashMap<Conn, ConnState>,
    sessions: Vec<SessionState>,
    children: Vec<ChildState>,
    pending: HashMap<u64, Pending>,
    events: Vec<DriverEvent>,
    next_ack: u64,
    next_ike_sa: u64,
    /// Old inbound SAs (child index) to delete at the given time.
    retiring: Vec<(Instant, usize)>,
    /// Deferred outbound switches of rekeys we answered.
    switches: Vec<Switch>,
    /// Child SA rekeys we started: (session, old inbound SPI).
    child_rekeying: Vec<(usize, u32)>,
    /// Sessions whose IKE SA rekey we started.
    ike_rekeying: Vec<usize>,
    child_rekeys: u64,
    ike_rekeys: u64,
    /// Directory of the Wireshark key log (`--keylog`), `None` when keys must not be written.
    keylog: Option<PathBuf>,
    /// Key log lines already written, by SA name (both sides of a run may report the same SA).
    keylog_seen: HashSet<String>,
    /// Session of each IKE SA name the workers use.
    by_ike_sa: HashMap<IkeSaId, usize>,
    /// IKE SAs whose SAs are moving to another worker.
    migrations: Vec<migrate::Migration>,
    /// Cookie secrets per listening address.
    jars: HashMap<SocketAddr, CookieJar>,
    /// Originator endpoints to dial again, and when.
    dials: Vec<(Instant, usize)>,
    /// Failed connects in a row per Originator endpoint.
    dial_failures: HashMap<usize, u32>,
    /// Inbound SPIs of this data plane, shared by every session (RFC 4303 §2.1).
    spi_pool: SpiPool,
}

/// Whether an IKE message is a request (the Response flag is clear, RFC 7296 §3.1).
fn is_request(msg: &[u8]) -> bool {
    msg.get(19).is_some_and(|f| f & 0x20 == 0)
}

/// Whether an IKE message is an IKE_SA_INIT request: no responder SPI, exchange type 34, the
/// Response flag clear (RFC 7296 §3.1).
fn is_init_request(msg: &[u8]) -> bool {
    msg.get(8..16).is_some_and(|r| r.iter().all(|b| *b == 0))
        && msg.get(18) == Some(&34)
        && is_request(msg)
}

impl SessionState {
    /// Neither failed, deleted nor dropped: it may still send and receive.
    fn alive(&self) -> bool {
        !self.dropped && !self.session.is_failed() && !self.session.is_deleted()
    }
}

impl Driver {
    /// A driver with no endpoints yet. Seeds the key-exchange RNG once, so the first handshake
    /// does not pay for it.
    pub fn new(handle: DataplaneHandle) -> Self {
        crate::ike::crypto::dh::warm_up();
        Driver {
            handle,
            endpoints: Vec::new(),
            conns: HashMap::new(),
            sessions: Vec::new(),
            children: Vec::new(),
            pending: HashMap::new(),
            events: Vec::new(),
            next_ack: 1,
            next_ike_sa: 1,
            retiring: Vec::new(),
            switches: Vec::new(),
            child_rekeying: Vec::new(),
            ike_rekeying: Vec::new(),
            child_rekeys: 0,
            ike_rekeys: 0,
            keylog: None,
            keylog_seen: HashSet::new(),
            by_ike_sa: HashMap::new(),
            migrations: Vec::new(),
            jars: HashMap::new(),
            dials: Vec::new(),
            dial_failures: HashMap::new(),
            spi_pool: SpiPool::new(),
        }
    }

    /// The data plane handle.
    pub fn handle(&self) -> &DataplaneHandle {
        &self.handle
    }

    /// Adds an endpoint and starts it (`Listen` or `Connect`); returns its index.
    ///
    /// # Errors
    /// The worker's command queue stayed full or the worker is gone.
    pub fn add(&mut self, mut ep: Endpoint) -> Result<usize, DriverError> {
        // One SPI space per data plane: every session draws from the driver's pool.
        ep.ike.spi_pool = self.spi_pool.clone();
        let index = self.endpoints.len();
        let (worker, role, policy) = (ep.worker, ep.role, ep.cookies);
        if let EndpointRole::Responder { listen } = role
            && let std::collections::hash_map::Entry::Vacant(v) = self.jars.entry(listen)
        {
            let jar = CookieJar::new(policy, Instant::now())
                .map_err(|e| DriverError(format!("cookie secret: {e:?}")))?;
            v.insert(jar);
        }
        self.endpoints.push(ep);
        let EndpointRole::Responder { listen } = role else {
            self.dial(index)?;
            return Ok(index);
        };
        let ack = self.ack();
        self.pending
            .insert(ack, Pending::Listen { endpoint: index });
        self.send(worker, Command::Listen { local: listen, ack })?;
        Ok(index)
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<DriverEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether commands with acknowledgements are still outstanding.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Number of Child SAs with both directions installed.
    pub fn installed(&self) -> usize {
        self.children
            .iter()
            .filter(|c| c.inbound_ok && c.outbound_ok)
            .count()
    }

    /// Waits up to `timeout` for one data-plane event and handles it, then handles whatever else
    /// is already queued. Returns whether an event was handled.
    ///
    /// # Errors
    /// See [`handle_event`](Self::handle_event).
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, DriverError> {
        let now = Instant::now();
        self.handle_timers(now)?;
        let wait = match self.next_timer() {
            Some(t) => timeout.min(t.saturating_duration_since(now)),
            None => timeout,
        };
        let first = match self.handle.events().recv_timeout(wait) {
            Ok(ev) => ev,
            Err(_) => {
                self.handle_timers(Instant::now())?;
                return Ok(false);
            }
        };
        self.handle_event(first, Instant::now())?;
        while let Ok(ev) = self.handle.events().try_recv() {
            self.handle_event(ev, Instant::now())?;
        }
        self.handle_timers(Instant::now())?;
        Ok(true)
    }

    /// Child SA rekeys started by this driver that completed.
    pub fn child_rekeys(&self) -> u64 {
        self.child_rekeys
    }

    /// IKE SA rekeys started by this driver that completed.
    pub fn ike_rekeys(&self) -> u64 {
        self.ike_rekeys
    }

    /// The earliest time [`handle_timers`](Self::handle_timers) has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        let sessions = self
            .sessions
            .iter()
            .filter_map(|s| s.session.poll_timeout());
        let retiring = self.retiring.iter().map(|r| r.0);
        let switches = self.switches.iter().map(|w| w.due);
        let half_open = self.sessions.iter().filter_map(|s| self.half_open_due(s));
        let closes = self.conns.iter().filter_map(|(k, c)| self.close_due(*k, c));
        sessions
            .chain(retiring)
            .chain(switches)
            .chain(half_open)
            .chain(closes)
            .chain(self.dials.iter().map(|d| d.0))
            .chain(self.next_lifetime_timer())
            .min()
    }

    /// A responder session still unauthenticated.
    fn half_open(&self, s: &SessionState) -> bool {
        s.session.tcp_role() == Role::Responder && s.alive() && !s.session.is_established()
    }

    /// When a half-open responder session is dropped (RFC 7296 §2.6).
    fn half_open_due(&self, s: &SessionState) -> Option<Instant> {
        self.half_open(s)
            .then(|| s.born + self.endpoints[s.endpoint].timers.half_open)
    }

    /// When a TCP Responder closes connection `k`: a cookie reply that no repeated request
    /// followed (RFC 9329 §6.3.1, R-6.3-b), or no live IKE SA on it for the orphan grace period
    /// (R-6.1-e; superseded by a newer connection of its IKE SA, R-6.1-v). The grace counts from
    /// `orphan_since`, stamped by the timers, or for a connection that never carried an IKE SA
    /// from when it came up.
    fn close_due(&self, k: Conn, c: &ConnState) -> Option<Instant> {
        if c.closing || (c.session.is_some() && c.cookie_wait.is_some()) {
            return None;
        }
        if let Some(t) = c.cookie_wait {
            return Some(t);
        }
        self.orphan(k, c)
            .then(|| c.orphan_since.unwrap_or(c.since) + self.endpoints[c.endpoint].timers.orphan)
    }

    /// A TCP Responder's connection that carries no live IKE SA (R-6.1-e).
    fn orphan(&self, k: Conn, c: &ConnState) -> bool {
        !c.closing
            && c.cookie_wait.is_none()
            && matches!(
                self.endpoints[c.endpoint].role,
                EndpointRole::Responder { .. }
            )
            && c.session
                .is_none_or(|i| !self.sessions[i].alive() || self.sessions[i].conn != Some(k))
    }

    /// Runs what is due at `now`: session timeouts, deletes of old inbound SAs after their grace
    /// period, deferred outbound switches.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn handle_timers(&mut self, now: Instant) -> Result<(), DriverError> {
        for i in 0..self.sessions.len() {
            if self.sessions[i]
                .session
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                let outputs = self.sessions[i].session.handle_timeout(now);
                self.finish(i, outputs, None, now)?;
            }
        }
        self.lifetime_timers(now)?;
        self.dial_timers(now)?;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|r| r.0 <= now);
        self.retiring = later;
        for (_, child) in due {
            self.delete_inbound(child)?;
        }
        // Half-open responder sessions go (RFC 7296 §2.6), and so do their connections.
        for i in 0..self.sessions.len() {
            let st = &self.sessions[i];
            if self.half_open_due(st).is_some_and(|t| t <= now) {
                let endpoint = st.endpoint;
                self.sessions[i].dropped = true;
                self.events.push(DriverEvent::Failed {
                    endpoint,
                    reason: "half-open IKE SA timed out".into(),
                });
            }
        }
        // Connections a TCP Responder no longer needs: first stamp when each lost its IKE SA,
        // then close those whose time is up (see `close_due`).
        let orphaned: Vec<(Conn, bool)> = self
            .conns
            .iter()
            .map(|(k, c)| (*k, self.orphan(*k, c)))
            .collect();
        for (k, orphan) in orphaned {
            if let Some(c) = self.conns.get_mut(&k) {
                // One that never carried an IKE SA has been an orphan since it came up.
                let from = if c.session.is_none() { c.since } else { now };
                c.orphan_since = if orphan {
                    c.orphan_since.or(Some(from))
                } else {
                    None
                };
            }
        }
        let due: Vec<Conn> = self
            .conns
            .iter()
            .filter(|(k, c)| self.close_due(**k, c).is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for conn in due {
            self.close(conn, false)?;
        }
        while let Some(k) = self.switches.iter().position(|w| w.due <= now) {
            let w = self.switches.remove(k);
            // An unresolved collision: the first new SA wins here; the other stays inbound
            // until the peer deletes it.
            self.switches.retain(|x| x.old != w.old);
            self.switch(w, now)?;
        }
        self.maybe_reap();
        Ok(())
    }

    /// Handles one data-plane event.
    ///
    /// # Errors
    /// Local faults only (a worker gone, the RNG failing); a peer's misbehaviour is reported as a
    /// [`DriverEvent`].
    pub fn handle_event(&mut self, ev: Event, now: Instant) -> Result<(), DriverError> {
        match ev {
            Event::Ack { ack, result, .. } => self.on_ack(ack, result),
            Event::ConnUp {
                conn,
                local,
                peer,
                role,
                token,
            } => self.on_conn_up(conn, local, peer, role, token, now),
            Event::ConnDown {
                conn,
                reason,
                token,
            } => self.on_conn_down(conn, reason, token, now),
            Event::IkeMessage { conn, msg } => self.on_ike(conn, &msg, now),
            // Removed SAs are dropped here (their keys are zeroized), off the worker.
            Event::SaRemoved(sa) => {
                let Some(sa) = self.on_removed(sa)? else {
                    return Ok(());
                };
                let (spi, dir) = match &sa {
                    RemovedSa::Inbound(i) => (i.spi(), Direction::Inbound),
                    RemovedSa::Outbound(o) => (o.spi(), Direction::Outbound),
                };
                drop(sa);
                // The inbound SA is gone: its SPI may be used again (see `SpiPool`).
                if dir == Direction::Inbound {
                    self.spi_pool.release(spi);
                }
                self.events.push(DriverEvent::SaRemoved { spi, dir });
                Ok(())
            }
            // Authentic inbound ESP proves the peer alive (RFC 7296 §2.4): no liveness check
            // while traffic flows.
            Event::Stats { inbound_esp, .. } => {
                for id in inbound_esp {
                    if let Some(&i) = self.by_ike_sa.get(&id) {
                        self.sessions[i].session.note_inbound_esp(now);
                    }
                }
                Ok(())
            }
            Event::PathMoved { ike_sa, conn } => self.on_path_moved(ike_sa, conn),
            Event::SaExpired {
                worker,
                spi,
                dir,
                hard,
                ..
            } => self.on_expired(worker, spi, dir, hard, now),
            Event::ForeignEsp { conn, spi, frame } => self.on_foreign_esp(conn, spi, frame),
            // An SPI no worker holds: counted by the worker, nothing to move.
            Event::UnknownSpi { .. } => Ok(()),
        }
    }

    /// Deletes every installed SA (both directions) and forgets the IKE SAs' connections. Wait for
    /// [`has_pending`](Self::has_pending) to turn false to know the workers applied it.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn delete_all(&mut self) -> Result<(), DriverError> {
        self.retiring.clear();
        self.switches.clear();
        let children = std::mem::take(&mut self.children);
        for c in &children {
            for (spi, dir, ok) in [
                (c.spi_in, Direction::Inbound, c.inbound_ok),
                (c.spi_out, Direction::Outbound, c.outbound_ok),
            ] {
                if ok {
                    let ack = self.ack();
                    self.pending.insert(ack, Pending::Delete);
                    self.send(c.worker, Command::DeleteSa { spi, dir, ack })?;
                }
            }
        }
        let bound: Vec<(u16, IkeSaId)> = self
            .sessions
            .iter()
            .filter(|s| s.session.is_established())
            .filter_map(|s| s.conn.map(|c| (c.worker, s.ike_sa)))
            .collect();
        for (worker, ike_sa) in bound {
            self.send(worker, Command::ForgetIkeSa { ike_sa })?;
        }
        Ok(())
    }

    fn ack(&mut self) -> u64 {
        let a = self.next_ack;
        self.next_ack += 1;
        a
    }

    /// Points an IKE SA's traffic at `conn` (on the worker that holds its SAs).
    fn bind(&self, ike_sa: IkeSaId, conn: Conn) -> Result<(), DriverError> {
        self.send(
            conn.worker,
            Command::BindIkeSa {
                ike_sa,
                conn: conn.id,
            },
        )
    }

    /// Closes `conn` (with RST if `abort`), once.
    fn close(&mut self, conn: Conn, abort: bool) -> Result<(), DriverError> {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.closing {
                return Ok(());
            }
            c.closing = true;
        }
        self.send(
            conn.worker,
            Command::Close {
                conn: conn.id,
                abort,
            },
        )
    }

    /// An Originator endpoint opens a connection.
    fn dial(&self, endpoint: usize) -> Result<(), DriverError> {
        let Some(ep) = self.endpoints.get(endpoint) else {
            return Ok(());
        };
        let EndpointRole::Originator { remote, local } = ep.role else {
            return Ok(());
        };
        self.send(
            ep.worker,
            Command::Connect {
                local,
                remote,
                token: endpoint as u64,
            },
        )
    }

    fn send(&self, worker: u16, cmd: Command) -> Result<(), DriverError> {
        self.handle
            .send_timeout(worker, cmd, SEND_TIMEOUT)
            .map_err(|e| match e {
                SendError::Full(_) => DriverError(format!("worker {worker}: command queue full")),
                SendError::Gone => DriverError(format!("worker {worker} is gone")),
            })
    }

    fn on_ack(&mut self, ack: u64, result: Result<(), CommandError>) -> Result<(), DriverError> {
        let Some(p) = self.pending.remove(&ack) else {
            return Ok(());
        };
        match p {
            Pending::Listen { endpoint } => self.events.push(match result {
                Ok(()) => DriverEvent::Listening { endpoint },
                Err(e) => DriverEvent::Failed {
                    endpoint,
                    reason: format!("listen: {e}"),
                },
            }),
            Pending::Inbound { child, conn, held } => {
                if child >= self.children.len() {
                    // Forgotten by `delete_all` meanwhile.
                    return Ok(());
                }
                if let Err(e) = result {
                    // Without the inbound SA the response must not go out.
                    let endpoint = self.children[child].endpoint;
                    self.events.push(DriverEvent::Failed {
                        endpoint,
                        reason: format!("inbound SA install: {e}"),
                    });
                    return Ok(());
                }
                self.children[child].inbound_ok = true;
                for msg in held {
                    self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
                }
                if self.children[child].unwanted.0 {
                    return self.delete_inbound(child);
                }
                self.child_done(child);
            }
            Pending::Outbound { child } if child >= self.children.len() => {}
            Pending::Outbound { child } => match result {
                Ok(()) => {
                    self.children[child].outbound_ok = true;
                    if self.children[child].unwanted.1 {
                        return self.delete_outbound(child);
                    }
                    self.child_done(child);
                }
                Err(e) => {
                    let endpoint = self.children[child].endpoint;
                    self.events.push(DriverEvent::Failed {
                        endpoint,
                        reason: format!("outbound SA install: {e}"),
                    });
                }
            },
            Pending::Moved { child, dir } => match result {
                Ok(()) => {
                    if let Some(c) = self.children.get_mut(child) {
                        match dir {
                            Direction::Inbound => c.inbound_ok = true,
                            Direction::Outbound => c.outbound_ok = true,
                        }
                    }
                }
                Err(e) => {
                    let endpoint = self.children.get(child).map_or(0, |c| c.endpoint);
                    self.events.push(DriverEvent::Failed {
                        endpoint,
                        reason: format!("moving an SA: {e}"),
                    });
                }
            },
            Pending::Verify { conn, spi } => return self.on_verified(conn, spi, result),
            Pending::Delete => {}
        }
        Ok(())
    }

    fn child_done(&mut self, child: usize) {
        let c = &self.children[child];
        if c.inbound_ok && c.outbound_ok {
            self.events.push(DriverEvent::ChildSaInstalled {
                endpoint: c.endpoint,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
    }
}
