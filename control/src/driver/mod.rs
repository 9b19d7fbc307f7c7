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
mod admin_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod life_tests;
#[cfg(test)]
mod path_tests;
#[cfg(test)]
mod peers_tests;
#[cfg(test)]
mod tests;

mod child;
mod conn;
mod keyfile;
mod lifetime;
mod list;
mod migrate;
mod reap;
mod runtime;
mod slab;
mod timers;

use crate::ike::crypto::{DhGroup, IkeSuite};
pub use keyfile::{KEYLOG_ESP_FILE, KEYLOG_IKE_FILE, KeyLine};
pub use lifetime::{JITTER_PERCENT, TimeLimits};
pub use list::{ChildSaInfo, ChildSaState, ChildTraffic, EndpointInfo, IkeSaInfo, IkeSaState};
pub use runtime::Driver;
pub use slab::Key;
pub use timers::ACK_TIMEOUT;
use timers::{DeadlineQueue, Timer, TimerHeap};

use slab::{Handle, Slab, handle};

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat};
use iketcp_dataplane::sa::{InboundSa, Mode, OutboundSa, SaError, SaParams};
use iketcp_dataplane::transport::{CloseReason, TcpRole};
use iketcp_dataplane::worker::handle::{
    Command, CommandError, Conn, Direction, Event, IkeSaId, Lifetime, RemovedSa, SaCounter,
    VerifyFailure,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector as SpdSelector};

use crate::ike::cookie::{CookieError, CookieJar, CookiePolicy, ReplyKind, Screen};
use crate::ike::crypto::EspSuite;
use crate::ike::session::{
    ChildSa, Config, FailReason, Output, PeerConfigs, PuzzleAnswer, PuzzleJob, Role, SaEvent,
    Session, SessionError, SessionEvent, SpiPool, Verdict,
};
use crate::ike::wire::NotifyType;
use crate::ike::wire::TrafficSelector;

/// Reconnects of a TCP Originator with a request outstanding before it gives up.
const MAX_RECONNECTS: u8 = 3;
/// Sources the IKE_SA_INIT rate table holds in one second (see `Core::init_rate_ok`).
const INIT_RATE_SOURCES: usize = 16_384;
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
    /// Anti-replay window of the inbound ESP SAs, in packets (RFC 4303 §3.4.3).
    pub replay_window: u32,
    /// A Responder: further workers that listen on the same address (their transports share
    /// the port: kernel sockets with SO_REUSEPORT, or smoltcp stacks behind a steering
    /// splitter); a connection accepted on any of them is this endpoint's, and its SAs live on
    /// that worker.
    pub also_listen_on: Vec<u16>,
    /// What a TCP Originator sends first on a new connection after a reconnect.
    pub reconnect_probe: ReconnectProbe,
    /// The PFS group every Child SA created or rekeyed by CREATE_CHILD_SA must use (our
    /// requests carry a KE payload of it; a peer's request without one is refused), or none:
    /// see [`Session::set_child_pfs`].
    pub child_pfs: Option<DhGroup>,
}

/// The first request after a TCP Originator reconnected an established IKE SA with no request
/// of its own waiting: it tells the Responder the new path (RFC 9329 §6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReconnectProbe {
    /// An empty INFORMATIONAL (a liveness check), as RFC 9329 §6.1 advises. If the peer
    /// closes the new connection without answering it, the next connection gets an IKE SA
    /// rekey instead (see `ProbeAbandoned`).
    #[default]
    Liveness,
    /// An IKE SA rekey (CREATE_CHILD_SA), for peers that move an IKE SA to a new connection
    /// only for IKE_SA_INIT, IKE_AUTH and CREATE_CHILD_SA (libreswan 4.x, which may even
    /// crash on a liveness check there).
    IkeRekey,
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
            replay_window: iketcp_dataplane::sa::replay::DEFAULT_WINDOW,
            also_listen_on: Vec::new(),
            reconnect_probe: ReconnectProbe::Liveness,
            child_pfs: None,
        }
    }
}

/// What the driver reports to its owner.
#[derive(Debug)]
pub enum DriverEvent {
    /// A Responder endpoint is listening.
    Listening {
        /// Endpoint index.
        endpoint: EndpointId,
    },
    /// A connection of an endpoint is up.
    ConnUp {
        /// Endpoint index.
        endpoint: EndpointId,
        /// The connection.
        conn: Conn,
    },
    /// A connection of an endpoint is gone (its SAs stay).
    ConnDown {
        /// Endpoint index.
        endpoint: EndpointId,
        /// The connection.
        conn: Conn,
        /// Why.
        reason: CloseReason,
    },
    /// The IKE SA of a connection is authenticated.
    IkeSaUp {
        /// Endpoint index.
        endpoint: EndpointId,
        /// Its name in the data plane.
        ike_sa: IkeSaId,
        /// Initiator and responder SPIs.
        spi_i: u64,
        /// See `spi_i`.
        spi_r: u64,
        /// Negotiated algorithms.
        suite: IkeSuite,
        /// NAT detected in front of us and in front of the peer (RFC 7296 §2.23).
        nat: (bool, bool),
    },
    /// Both ESP SAs of a Child SA are installed (acknowledged by the worker).
    ChildSaInstalled {
        /// Endpoint index.
        endpoint: EndpointId,
        /// Inbound SPI.
        spi_in: u32,
        /// Outbound SPI.
        spi_out: u32,
        /// ESP transform and whether ESN is on.
        suite: EspSuite,
        /// See `suite`.
        esn: bool,
        /// The selectors as narrowed in the exchange (RFC 7296 §2.9).
        selectors: Selectors,
    },
    /// A Child SA was rekeyed: the new one's SAs are being installed (see
    /// [`DriverEvent::ChildSaInstalled`]), the old ones go.
    ChildSaRekeyed {
        /// Endpoint index.
        endpoint: EndpointId,
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
        endpoint: EndpointId,
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
        endpoint: EndpointId,
        /// Its name in the data plane.
        ike_sa: IkeSaId,
    },
    /// An Originator endpoint's connect failed; it dials again after `retry_in`.
    ConnectFailed {
        /// Endpoint index.
        endpoint: EndpointId,
        /// The backoff before the next dial.
        retry_in: Duration,
    },
    /// A stateless IKE_SA_INIT response asked for a cookie (and a puzzle) before any state
    /// was kept (RFC 7296 §2.6, RFC 8019 §7.1.1).
    CookieSent {
        /// Endpoint index.
        endpoint: EndpointId,
        /// What was asked.
        kind: ReplyKind,
    },
    /// The responder asked an Originator's session for a puzzle (RFC 8019 §7.1.2): run
    /// [`PuzzleJob::solve`] off the driver's thread and hand the answer to
    /// [`Driver::puzzle_solved`]; the session waits until then.
    SolvePuzzle {
        /// Endpoint.
        endpoint: EndpointId,
        /// The IKE SA (session) waiting for the answer.
        ike_sa: IkeSaId,
        /// The work.
        job: PuzzleJob,
    },
    /// An IKE_SA_INIT request was dropped before any state was kept (not an initial request,
    /// malformed, or under load without a valid cookie and puzzle solution).
    InitDropped {
        /// Endpoint index.
        endpoint: EndpointId,
    },
    /// An IKE SA's ESP SAs moved to the worker of its new connection.
    Migrated {
        /// Endpoint index.
        endpoint: EndpointId,
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
        endpoint: EndpointId,
        /// Where it arrived.
        conn: Conn,
        /// The SPI it named.
        spi: u32,
    },
    /// After a reconnect the peer took our liveness check and answered it elsewhere (the
    /// connection ended without an answer): it was given up and the IKE SA is rekeyed on the
    /// new connection instead, which moves it there (a libreswan 4.10 fault, see `conn.rs`).
    ProbeAbandoned {
        /// Endpoint index.
        endpoint: EndpointId,
        /// The IKE SA.
        ike_sa: IkeSaId,
    },
    /// An encrypted IKE message failed its integrity check.
    IntegrityFailure {
        /// Endpoint index.
        endpoint: EndpointId,
    },
    /// A worker did not acknowledge a command within [`ACK_TIMEOUT`]; what waited for it
    /// was given up.
    AckTimedOut {
        /// The command's ack number.
        ack: u64,
        /// The endpoint it was for, if any.
        endpoint: Option<EndpointId>,
    },
    /// The peer refused one of our CREATE_CHILD_SA requests (a Child SA, its rekey, or the
    /// IKE SA's rekey) with this notification; the SAs are unchanged (RFC 7296 §1.3, §2.25).
    Refused {
        /// Endpoint.
        endpoint: EndpointId,
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Which request.
        what: Refusal,
        /// The peer's Notify (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, TEMPORARY_FAILURE, ...).
        notify: NotifyType,
    },
    /// Something failed for good (session, install, connect).
    Failed {
        /// Endpoint.
        endpoint: EndpointId,
        /// What.
        reason: Failure,
    },
}

/// Which of our requests the peer refused (see [`DriverEvent::Refused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A new Child SA or a Child SA rekey.
    ChildSa,
    /// The IKE SA rekey.
    IkeRekey,
}

/// What failed for good (see [`DriverEvent::Failed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The initiator session could not be created.
    Initiator(SessionError),
    /// A session call failed (a local fault, or the session was closed).
    Session(SessionError),
    /// The peer refused the Child SA of IKE_AUTH with this notification.
    ChildSaRefused(NotifyType),
    /// The IKE SA failed.
    IkeSa(FailReason),
    /// The ESP SAs of a Child SA could not be built from its keys.
    BuildSa(SaError),
    /// A worker refused the listen.
    Listen(CommandError),
    /// A worker refused an SA install (inbound or outbound) or a move.
    Install {
        /// Which.
        dir: Direction,
        /// Why.
        error: CommandError,
    },
    /// Moving an SA to another worker failed.
    Move(CommandError),
    /// The TCP Originator could not reconnect this many times in a row.
    NoConnection {
        /// Attempts.
        reconnects: u8,
    },
    /// A Child SA reached its hard lifetime before a rekey replaced it.
    HardLifetime {
        /// Its inbound SPI.
        spi_in: u32,
    },
    /// A responder session stayed unauthenticated too long (RFC 7296 §2.6).
    HalfOpenTimeout,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Initiator(e) => write!(f, "initiator: {e:?}"),
            Failure::Session(e) => write!(f, "session: {e:?}"),
            Failure::ChildSaRefused(n) => write!(f, "Child SA refused: {n:?}"),
            Failure::IkeSa(r) => write!(f, "IKE SA failed: {r:?}"),
            Failure::BuildSa(e) => write!(f, "building SAs: {e}"),
            Failure::Listen(e) => write!(f, "listen: {e}"),
            Failure::Install { dir, error } => write!(f, "{dir:?} SA install: {error}"),
            Failure::Move(e) => write!(f, "moving an SA: {e}"),
            Failure::NoConnection { reconnects } => {
                write!(f, "no connection after {reconnects} reconnects")
            }
            Failure::HardLifetime { spi_in } => write!(
                f,
                "Child SA {spi_in:#010x} reached its hard lifetime before a rekey"
            ),
            Failure::HalfOpenTimeout => f.write_str("half-open IKE SA timed out"),
        }
    }
}

/// Sizes of the core's tables (see [`Core::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Endpoints.
    pub endpoints: usize,
    /// IKE SAs, live or finished and not yet forgotten.
    pub ike_sas: usize,
    /// Child SAs, live or finished and not yet forgotten.
    pub child_sas: usize,
    /// Connections.
    pub connections: usize,
    /// Commands whose acknowledgement is awaited.
    pub pending_acks: usize,
}

/// A local fault of the driver (not a peer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// The system's random number generator failed (cookie secrets).
    Rng(CookieError),
    /// A worker's command channel is closed, or there is no such worker.
    WorkerGone {
        /// The worker.
        worker: u16,
    },
    /// A worker stopped taking commands: this many wait for room in its queue.
    WorkerStuck {
        /// The worker.
        worker: u16,
        /// Commands waiting.
        queued: usize,
    },
    /// The key log could not be written.
    KeyLog {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        kind: std::io::ErrorKind,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Rng(e) => write!(f, "random number generator: {e:?}"),
            DriverError::WorkerGone { worker } => write!(f, "worker {worker} is gone"),
            DriverError::WorkerStuck { worker, queued } => {
                write!(f, "worker {worker} takes no commands ({queued} waiting)")
            }
            DriverError::KeyLog { path, kind } => {
                write!(f, "key log {}: {kind}", path.display())
            }
        }
    }
}

impl std::error::Error for DriverError {}

handle!(
    /// An endpoint (a connection's configuration) of the driver: stable while it exists,
    /// never reused for another.
    EndpointId
);

handle!(
    /// A Child SA of the driver (its two ESP SAs), stable while it exists.
    ChildSaId
);

impl EndpointId {
    /// The token of its `Connect` commands.
    pub fn token(self) -> u64 {
        self.0.to_u64()
    }

    /// The endpoint a `Connect` token names.
    pub fn from_token(t: u64) -> EndpointId {
        EndpointId(Key::from_u64(t))
    }
}

/// Sessions are addressed by the name the data plane knows their IKE SA by: a generational
/// handle too.
impl Handle for IkeSaId {
    fn from_key(k: Key) -> Self {
        IkeSaId(k.to_u64())
    }
    fn key(self) -> Key {
        Key::from_u64(self.0)
    }
}

#[derive(Debug)]
struct ConnState {
    endpoint: EndpointId,
    local: SocketAddr,
    peer: SocketAddr,
    /// The IKE SA it carries (or carried).
    session: Option<IkeSaId>,
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
    endpoint: EndpointId,
    session: Session,
    /// The connection it currently uses (`None` while an Originator reconnects).
    conn: Option<Conn>,
    /// Our request still waiting for its response, re-sent bit for bit on a new connection
    /// (RFC 9329 §6.2).
    outstanding: Option<Vec<u8>>,
    /// Consecutive reconnects without an authentic answer.
    reconnects: u8,
    /// An authentic message arrived on the current connection (false from a reconnect until
    /// the first one).
    answered_here: bool,
    /// Consecutive reconnected connections that ended before anything authentic arrived on
    /// them.
    unanswered_paths: u8,
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
    /// Its Child SAs (live or finished and not yet forgotten).
    children: Vec<ChildSaId>,
    /// The SPIs it is found by in `Core::responders`.
    indexed_spis: Option<(u64, u64)>,
    /// The listener whose half-open count it is in.
    half_open_at: Option<SocketAddr>,
    /// Its end was counted toward reaping.
    dead_noted: bool,
}

#[derive(Debug)]
struct ChildState {
    endpoint: EndpointId,
    session: IkeSaId,
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
    /// Its inbound SA was installed once: its SPI goes back to the pool when the worker hands
    /// the SA back; otherwise when the Child SA is forgotten.
    installed_once: bool,
    /// The negotiated ESP transform and extended sequence numbers.
    suite: EspSuite,
    esn: bool,
    /// When it was created.
    created: Instant,
    /// Its traffic as the worker last reported it (see `Core::refresh_counters`).
    traffic: Option<ChildTraffic>,
}

#[derive(Debug)]
enum Pending {
    Listen {
        endpoint: EndpointId,
    },
    Inbound {
        child: ChildSaId,
        conn: Conn,
        held: Vec<Vec<u8>>,
    },
    Outbound {
        child: ChildSaId,
    },
    /// An SA moved to another worker.
    Moved {
        child: ChildSaId,
        dir: Direction,
    },
    /// A worker reports its SAs' counters.
    Counters,
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
    session: IkeSaId,
    old: ChildSaId,
    new: ChildSaId,
    sa: Box<OutboundSa>,
    selectors: Selectors,
    due: Instant,
}

/// The sans-IO driver core: sessions, connections and SAs of a set of endpoints on one data
/// plane. It takes data-plane events and the time ([`Core::handle_event`],
/// [`Core::handle_timeout`]) and gives commands for the workers ([`Core::poll_command`]), key log
/// lines ([`Core::poll_keylog`]) and events ([`Core::take_events`]); it owns no channel, clock
/// or file. [`Driver`] is the runtime that pumps it. See the module docs.
#[derive(Debug)]
pub struct Core {
    /// The time of the latest call.
    now: Instant,
    /// Deadlines.
    timers: TimerHeap,
    /// When each awaited acknowledgement times out.
    ack_due: DeadlineQueue<u64>,
    /// Child SAs and sessions that may be finished (see `reap`).
    reap_children: Vec<ChildSaId>,
    reap_sessions: Vec<IkeSaId>,
    /// Candidates kept by the last reap (not finished yet).
    reap_floor: usize,
    /// Responder sessions by their IKE SPIs.
    responders: HashMap<(u64, u64), IkeSaId>,
    /// Child SAs by inbound SPI (unique: we chose them).
    child_by_spi_in: HashMap<u32, ChildSaId>,
    /// Child SAs by outbound SPI (chosen by peers: several may share one).
    child_by_spi_out: HashMap<u32, Vec<ChildSaId>>,
    /// Sessions of each endpoint.
    ep_sessions: HashMap<EndpointId, HashSet<IkeSaId>>,
    /// Half-open responder sessions per listening address (RFC 7296 §2.6).
    half_open_n: HashMap<SocketAddr, usize>,
    /// IKE_SA_INIT requests per source in the current one-second window (see
    /// [`CookiePolicy::init_rate_per_source`]), and when the window began.
    init_rate: (Instant, HashMap<IpAddr, u32>),
    /// Endpoints removed, waiting for their IKE SAs to go.
    removing: HashSet<EndpointId>,
    /// Commands for the workers, in order.
    commands: VecDeque<(u16, Command)>,
    /// Key log lines to write (only while `keylog` is on).
    keylines: VecDeque<KeyLine>,
    endpoints: Slab<EndpointId, Endpoint>,
    conns: HashMap<Conn, ConnState>,
    sessions: Slab<IkeSaId, SessionState>,
    children: Slab<ChildSaId, ChildState>,
    pending: HashMap<u64, Pending>,
    events: VecDeque<DriverEvent>,
    next_ack: u64,
    /// Old inbound SAs to delete at the given time.
    retiring: DeadlineQueue<ChildSaId>,
    /// Deferred outbound switches of rekeys we answered.
    switches: Vec<Switch>,
    /// Child SA rekeys we started: (session, old inbound SPI).
    child_rekeying: Vec<(IkeSaId, u32)>,
    /// Sessions whose IKE SA rekey we started.
    ike_rekeying: Vec<IkeSaId>,
    child_rekeys: u64,
    ike_rekeys: u64,
    /// Whether key log lines are produced (`--keylog`); off, no key is ever formatted.
    keylog: bool,
    /// IKE SAs whose SAs are moving to another worker.
    migrations: Vec<migrate::Migration>,
    /// Cookie secrets per listening address.
    jars: HashMap<SocketAddr, CookieJar>,
    /// Per listen address, the configurations of the Responder endpoints there, shared by the
    /// responder sessions it creates (IKE_AUTH picks one by IDi); cleared when endpoints change.
    listener_configs: HashMap<SocketAddr, PeerConfigs>,
    /// Originator endpoints to dial again, and when.
    dials: Vec<(Instant, EndpointId)>,
    /// Failed connects in a row per Originator endpoint.
    dial_failures: HashMap<EndpointId, u32>,
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

impl Core {
    /// A driver with no endpoints yet. Seeds the key-exchange RNG once, so the first handshake
    /// does not pay for it.
    pub fn new(now: Instant) -> Self {
        crate::ike::crypto::dh::warm_up();
        Core {
            now,
            timers: TimerHeap::default(),
            ack_due: DeadlineQueue::default(),
            reap_children: Vec::new(),
            reap_sessions: Vec::new(),
            reap_floor: 0,
            responders: HashMap::new(),
            child_by_spi_in: HashMap::new(),
            child_by_spi_out: HashMap::new(),
            ep_sessions: HashMap::new(),
            half_open_n: HashMap::new(),
            init_rate: (Instant::now(), HashMap::new()),
            removing: HashSet::new(),
            commands: VecDeque::new(),
            keylines: VecDeque::new(),
            endpoints: Slab::default(),
            conns: HashMap::new(),
            sessions: Slab::default(),
            children: Slab::default(),
            pending: HashMap::new(),
            events: VecDeque::new(),
            next_ack: 1,
            retiring: DeadlineQueue::default(),
            switches: Vec::new(),
            child_rekeying: Vec::new(),
            ike_rekeying: Vec::new(),
            child_rekeys: 0,
            ike_rekeys: 0,
            keylog: false,
            migrations: Vec::new(),
            jars: HashMap::new(),
            listener_configs: HashMap::new(),
            dials: Vec::new(),
            dial_failures: HashMap::new(),
            spi_pool: SpiPool::new(),
        }
    }

    /// The next command for a worker.
    pub fn poll_command(&mut self) -> Option<(u16, Command)> {
        self.commands.pop_front()
    }

    /// The next key log line to write.
    pub fn poll_keylog(&mut self) -> Option<KeyLine> {
        self.keylines.pop_front()
    }

    /// Adds an endpoint and starts it (`Listen` or `Connect`); returns its handle.
    ///
    /// # Errors
    /// The random number generator failed (cookie secret).
    pub fn add(&mut self, mut ep: Endpoint, now: Instant) -> Result<EndpointId, DriverError> {
        // One SPI space per data plane: every session draws from the driver's pool.
        ep.ike.spi_pool = self.spi_pool.clone();
        let (worker, role, policy) = (ep.worker, ep.role, ep.cookies);
        let mut listeners = vec![worker];
        listeners.extend(ep.also_listen_on.iter().filter(|&&w| w != worker));
        if let EndpointRole::Responder { listen } = role
            && let std::collections::hash_map::Entry::Vacant(v) = self.jars.entry(listen)
        {
            let jar = CookieJar::new(policy, now).map_err(DriverError::Rng)?;
            v.insert(jar);
        }
        let index = self.endpoints.insert(ep);
        self.listener_configs.clear();
        let EndpointRole::Responder { listen } = role else {
            self.dial(index)?;
            return Ok(index);
        };
        self.now = now;
        for w in listeners {
            let ack = self.ack();
            self.expect_ack(ack, Pending::Listen { endpoint: index });
            self.send(w, Command::Listen { local: listen, ack })?;
        }
        Ok(index)
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<DriverEvent> {
        self.events.drain(..).collect()
    }

    /// The next event, oldest first (the one-at-a-time form of
    /// [`take_events`](Self::take_events)).
    pub fn poll_event(&mut self) -> Option<DriverEvent> {
        self.events.pop_front()
    }

    /// Whether commands with acknowledgements are still outstanding.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many endpoints, IKE SAs (sessions, finished ones not yet forgotten included),
    /// Child SAs and connections the core holds.
    pub fn counts(&self) -> Counts {
        Counts {
            endpoints: self.endpoints.len(),
            ike_sas: self.sessions.len(),
            child_sas: self.children.len(),
            connections: self.conns.len(),
            pending_acks: self.pending.len(),
        }
    }

    /// The IKE SAs (sessions) the core holds, live or finished and not yet forgotten.
    pub fn ike_sa_ids(&self) -> Vec<IkeSaId> {
        self.sessions.handles()
    }

    /// Number of Child SAs with both directions installed.
    pub fn installed(&self) -> usize {
        self.children
            .iter()
            .filter(|(_, c)| c.inbound_ok && c.outbound_ok)
            .count()
    }

    /// Child SA rekeys started by this driver that completed.
    pub fn child_rekeys(&self) -> u64 {
        self.child_rekeys
    }

    /// IKE SA rekeys started by this driver that completed.
    pub fn ike_rekeys(&self) -> u64 {
        self.ike_rekeys
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
        let grace = self.endpoints.get(c.endpoint)?.timers.orphan;
        self.orphan(k, c)
            .then(|| c.orphan_since.unwrap_or(c.since) + grace)
    }

    /// A TCP Responder's connection that carries no live IKE SA (R-6.1-e).
    fn orphan(&self, k: Conn, c: &ConnState) -> bool {
        !c.closing
            && c.cookie_wait.is_none()
            && self
                .endpoints
                .get(c.endpoint)
                .is_some_and(|e| matches!(e.role, EndpointRole::Responder { .. }))
            && c.session.is_none_or(|i| {
                self.sessions
                    .get(i)
                    .is_none_or(|s| !s.alive() || s.conn != Some(k))
            })
    }

    /// Handles one data-plane event.
    ///
    /// # Errors
    /// Local faults only (a worker gone, the RNG failing); a peer's misbehaviour is reported as a
    /// [`DriverEvent`].
    pub fn handle_event(&mut self, ev: Event, now: Instant) -> Result<(), DriverError> {
        self.now = now;
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
                self.events.push_back(DriverEvent::SaRemoved { spi, dir });
                Ok(())
            }
            // Authentic inbound ESP proves the peer alive (RFC 7296 §2.4): no liveness check
            // while traffic flows.
            Event::Stats { inbound_esp, .. } => {
                for id in inbound_esp {
                    if let Some(s) = self.sessions.get_mut(id) {
                        s.session.note_inbound_esp(now);
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
            Event::SaCounters {
                worker, ack, sas, ..
            } => {
                self.on_counters(worker, ack, &sas, now);
                Ok(())
            }
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
        for k in self.children.handles() {
            let Some(c) = self.children.get(k) else {
                continue;
            };
            let worker = c.worker;
            let sas = [
                (c.spi_in, Direction::Inbound, c.inbound_ok),
                (c.spi_out, Direction::Outbound, c.outbound_ok),
            ];
            for (spi, dir, ok) in sas {
                if ok {
                    let ack = self.ack();
                    self.expect_ack(ack, Pending::Delete);
                    self.send(worker, Command::DeleteSa { spi, dir, ack })?;
                }
            }
            self.forget_child(k);
        }
        let bound: Vec<(u16, IkeSaId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.session.is_established())
            .filter_map(|(i, s)| s.conn.map(|c| (c.worker, i)))
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
    fn bind(&mut self, ike_sa: IkeSaId, conn: Conn) -> Result<(), DriverError> {
        self.send(
            conn.worker,
            Command::BindIkeSa {
                ike_sa,
                conn: conn.id,
            },
        )
    }

    /// Closes a connection the core does not track (no endpoint takes it).
    fn send_close(&mut self, conn: Conn) -> Result<(), DriverError> {
        self.send(
            conn.worker,
            Command::Close {
                conn: conn.id,
                abort: false,
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
    fn dial(&mut self, endpoint: EndpointId) -> Result<(), DriverError> {
        let Some(ep) = self.endpoints.get(endpoint) else {
            return Ok(());
        };
        if self.removing.contains(&endpoint) {
            return Ok(());
        }
        let EndpointRole::Originator { remote, local } = ep.role else {
            return Ok(());
        };
        self.send(
            ep.worker,
            Command::Connect {
                local,
                remote,
                token: endpoint.token(),
            },
        )
    }

    /// Queues a command for `worker` (see [`poll_command`](Self::poll_command)).
    fn send(&mut self, worker: u16, cmd: Command) -> Result<(), DriverError> {
        self.commands.push_back((worker, cmd));
        Ok(())
    }

    fn on_ack(&mut self, ack: u64, result: Result<(), CommandError>) -> Result<(), DriverError> {
        self.acked(ack);
        let Some(p) = self.pending.remove(&ack) else {
            return Ok(());
        };
        match p {
            Pending::Listen { endpoint } => self.events.push_back(match result {
                Ok(()) => DriverEvent::Listening { endpoint },
                Err(e) => DriverEvent::Failed {
                    endpoint,
                    reason: Failure::Listen(e),
                },
            }),
            Pending::Inbound { child, conn, held } => {
                if !self.children.contains(child) {
                    // Forgotten by `delete_all` meanwhile.
                    return Ok(());
                }
                if let Err(e) = result {
                    // Without the inbound SA the response must not go out.
                    let endpoint = self.children[child].endpoint;
                    self.events.push_back(DriverEvent::Failed {
                        endpoint,
                        reason: Failure::Install {
                            dir: Direction::Inbound,
                            error: e,
                        },
                    });
                    // Never installed: the Child SA is finished (its outbound SA, if it was
                    // installed meanwhile, goes too), and its SPI returns to the pool.
                    self.switches.retain(|w| w.new != child);
                    self.delete_outbound(child)?;
                    self.reap_child_later(child);
                    return Ok(());
                }
                self.children[child].inbound_ok = true;
                self.children[child].installed_once = true;
                // Responses go back where the request came from (RFC 7296 §2.11). If that
                // connection went down meanwhile they are dropped: the initiator re-sends the
                // request on its next connection and gets the cached response (RFC 9329 §6.2,
                // R-6.2-b, R-6.2-c).
                if self.conns.contains_key(&conn) {
                    for msg in held {
                        self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
                    }
                }
                if self.children[child].unwanted.0 {
                    return self.delete_inbound(child);
                }
                self.child_done(child);
            }
            Pending::Outbound { child } if !self.children.contains(child) => {}
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
                    self.events.push_back(DriverEvent::Failed {
                        endpoint,
                        reason: Failure::Install {
                            dir: Direction::Outbound,
                            error: e,
                        },
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
                    self.arm(Timer::ChildLife(child));
                }
                Err(e) => {
                    if let Some(endpoint) = self.children.get(child).map(|c| c.endpoint) {
                        self.events.push_back(DriverEvent::Failed {
                            endpoint,
                            reason: Failure::Move(e),
                        });
                    }
                }
            },
            Pending::Verify { conn, spi } => return self.on_verified(conn, spi, result),
            // Answered with `SaCounters`, not an ack.
            Pending::Delete | Pending::Counters => {}
        }
        Ok(())
    }

    fn child_done(&mut self, child: ChildSaId) {
        self.arm(Timer::ChildLife(child));
        let c = &self.children[child];
        if c.inbound_ok && c.outbound_ok {
            self.events.push_back(DriverEvent::ChildSaInstalled {
                endpoint: c.endpoint,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                suite: c.suite,
                esn: c.esn,
                selectors: c.selectors.clone(),
            });
        }
    }
}
