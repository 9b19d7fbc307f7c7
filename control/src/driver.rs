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
//! - If a TCP Originator's connection goes down while its request is outstanding, it reconnects
//!   (at most three times) and re-sends that request bit for bit on the new connection (RFC 9329
//!   §6.2, R-6.2-b). A Responder continues a session whose request arrives on a new connection
//!   (matched by both IKE SPIs) and, once established, binds the IKE SA to it.
//!
//! - After every session call the driver takes the session's [`SaEvent`]s. A Child SA created by
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
//!   which new SA survives; a deleted Child SA's inbound SA also gets the grace period. This path
//!   still loses a few packets (unknown SPI at the peer) and has no test yet.
//!
//! Not yet: reconnects after the IKE SA is up, SA migration between workers, rekeys triggered
//! by lifetimes, reaping half-open responder sessions.

#[cfg(test)]
mod tests;

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
    Command, Conn, DataplaneHandle, Direction, Event, IkeSaId, Lifetime, RemovedSa, SendError,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector as SpdSelector};

use crate::ike::session::keylog;
use crate::ike::session::{ChildSa, Config, Output, Role, SaEvent, Session, SessionEvent};
use crate::ike::wire::TrafficSelector;

/// How long a command may wait for room in a worker's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnects of a TCP Originator with a request outstanding before it gives up.
const MAX_RECONNECTS: u8 = 3;
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
    /// A worker removed an ESP SA (answer to `DeleteSa`).
    SaRemoved {
        /// SPI.
        spi: u32,
        /// Direction.
        dir: Direction,
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
}

#[derive(Debug)]
struct SessionState {
    endpoint: usize,
    session: Session,
    ike_sa: IkeSaId,
    /// The connection it currently uses (`None` while an Originator reconnects).
    conn: Option<Conn>,
    /// Initiator: the request still waiting for its response, re-sent bit for bit on a new
    /// connection (RFC 9329 §6.2).
    outstanding: Option<Vec<u8>>,
    /// Reconnects so far.
    reconnects: u8,
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
}

/// Wireshark UAT file of IKE SA keys.
pub const KEYLOG_IKE_FILE: &str = "ikev2_decryption_table";
/// Wireshark UAT file of ESP SA keys.
pub const KEYLOG_ESP_FILE: &str = "esp_sa";

/// Appends `line` to `file`, creating it with mode 0600.
fn append_secret(file: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    writeln!(f, "{line}")
}

fn to_spd(ts: &[TrafficSelector]) -> Vec<SpdSelector> {
    ts.iter()
        .filter_map(|t| match t {
            TrafficSelector::Ipv4(r) => Some(SpdSelector {
                start: IpAddr::V4(r.start_addr),
                end: IpAddr::V4(r.end_addr),
                protocol: r.ip_protocol,
                start_port: r.start_port,
                end_port: r.end_port,
            }),
            TrafficSelector::Ipv6(r) => Some(SpdSelector {
                start: IpAddr::V6(r.start_addr),
                end: IpAddr::V6(r.end_addr),
                protocol: r.ip_protocol,
                start_port: r.start_port,
                end_port: r.end_port,
            }),
            TrafficSelector::Other { .. } => None,
        })
        .collect()
}

fn sa_params(
    spi: u32,
    child: &ChildSa,
    keymat: &[u8],
    backend: Backend,
) -> Result<SaParams, String> {
    let km = Keymat::new(child.suite, keymat).map_err(|e| e.to_string())?;
    let mut p = SaParams::new(spi, km, backend);
    p.esn = child.esn;
    p.mode = Mode::Tunnel;
    Ok(p)
}

impl Driver {
    /// A driver with no endpoints yet.
    pub fn new(handle: DataplaneHandle) -> Self {
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
        }
    }

    /// Writes the keys of every IKE SA (on IKE_AUTH and IKE SA rekeys) and Child SA (both ESP
    /// directions, rekeyed ones included) from now on to `dir`, in Wireshark's
    /// `ikev2_decryption_table` and `esp_sa` files (created with mode 0600, appended to).
    /// Keys are secrets: call this only when the operator asked for a key log.
    ///
    /// # Errors
    /// If the files cannot be created.
    pub fn set_keylog(&mut self, dir: &Path) -> Result<(), DriverError> {
        for name in [KEYLOG_IKE_FILE, KEYLOG_ESP_FILE] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join(name))
                .map_err(|e| DriverError(format!("key log {}: {e}", dir.join(name).display())))?;
        }
        self.keylog = Some(dir.to_path_buf());
        Ok(())
    }

    /// Appends a key log line unless it was written before under `key`.
    fn keylog_write(&mut self, endpoint: usize, file: &str, key: String, line: &str) {
        let Some(dir) = &self.keylog else {
            return;
        };
        if self.keylog_seen.contains(&key) {
            return;
        }
        match append_secret(&dir.join(file), line) {
            Ok(()) => {
                self.keylog_seen.insert(key);
            }
            Err(e) => self.events.push(DriverEvent::Failed {
                endpoint,
                reason: format!("key log {file}: {e}"),
            }),
        }
    }

    /// Key log of the current IKE SA of session `index`.
    fn keylog_ike(&mut self, index: usize) {
        if self.keylog.is_none() {
            return;
        }
        let s = &self.sessions[index];
        let endpoint = s.endpoint;
        let Some(line) = s.session.keylog_ike() else {
            return;
        };
        // The two SPIs lead the line.
        let key = format!("ike {}", line.get(..37).unwrap_or(&line));
        self.keylog_write(endpoint, KEYLOG_IKE_FILE, key, &line);
    }

    /// Key log of both ESP SAs of a Child SA carried on `conn`.
    fn keylog_child(&mut self, endpoint: usize, c: &ChildSa, conn: Conn) {
        if self.keylog.is_none() {
            return;
        }
        let (local, peer) = self
            .conns
            .get(&conn)
            .map_or((None, None), |cs| (Some(cs.local.ip()), Some(cs.peer.ip())));
        let inb = keylog::esp_line(peer, local, c.spi_in, c.suite, c.keymat_in.expose());
        let out = keylog::esp_line(local, peer, c.spi_out, c.suite, c.keymat_out.expose());
        let (kin, kout) = (
            format!("esp {peer:?} {local:?} {}", c.spi_in),
            format!("esp {local:?} {peer:?} {}", c.spi_out),
        );
        self.keylog_write(endpoint, KEYLOG_ESP_FILE, kin, &inb);
        self.keylog_write(endpoint, KEYLOG_ESP_FILE, kout, &out);
    }

    /// The data plane handle.
    pub fn handle(&self) -> &DataplaneHandle {
        &self.handle
    }

    /// Adds an endpoint and starts it (`Listen` or `Connect`); returns its index.
    ///
    /// # Errors
    /// The worker's command queue stayed full or the worker is gone.
    pub fn add(&mut self, ep: Endpoint) -> Result<usize, DriverError> {
        let index = self.endpoints.len();
        let cmd = match ep.role {
            EndpointRole::Originator { remote, local } => Command::Connect {
                local,
                remote,
                token: index as u64,
            },
            EndpointRole::Responder { listen } => {
                let ack = self.ack();
                self.pending
                    .insert(ack, Pending::Listen { endpoint: index });
                Command::Listen { local: listen, ack }
            }
        };
        let worker = ep.worker;
        self.endpoints.push(ep);
        self.send(worker, cmd)?;
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
        sessions.chain(retiring).chain(switches).min()
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
                self.finish(i, outputs, now)?;
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|r| r.0 <= now);
        self.retiring = later;
        for (_, child) in due {
            self.delete_inbound(child)?;
        }
        while let Some(k) = self.switches.iter().position(|w| w.due <= now) {
            let w = self.switches.remove(k);
            // An unresolved collision: the first new SA wins here; the other stays inbound
            // until the peer deletes it.
            self.switches.retain(|x| x.old != w.old);
            self.switch(w, now)?;
        }
        Ok(())
    }

    /// Starts a rekey of one Child SA on every established session (without PFS) and sends the
    /// requests; returns how many were started. A session with a request outstanding (window
    /// size 1, RFC 7296 §2.3) is skipped.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn rekey_child_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        self.rekey_children(None, now)
    }

    /// As [`rekey_child_sas`](Self::rekey_child_sas), for the sessions of one endpoint only (so
    /// a driver running both ends does not make them collide).
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn rekey_child_sas_of(
        &mut self,
        endpoint: usize,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.rekey_children(Some(endpoint), now)
    }

    /// As [`rekey_ike_sas`](Self::rekey_ike_sas), for the sessions of one endpoint only.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn rekey_ike_sas_of(
        &mut self,
        endpoint: usize,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.rekey_ikes(Some(endpoint), now)
    }

    fn rekey_children(
        &mut self,
        endpoint: Option<usize>,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let mut started = 0;
        for i in 0..self.sessions.len() {
            let st = &self.sessions[i];
            if endpoint.is_some_and(|e| e != st.endpoint)
                || !st.session.is_established()
                || st.conn.is_none()
            {
                continue;
            }
            let current: Vec<u32> = self
                .children
                .iter()
                .filter(|c| c.session == i && c.inbound_ok && c.outbound_ok)
                .filter(|c| {
                    !self
                        .retiring
                        .iter()
                        .any(|r| self.children[r.1].spi_in == c.spi_in)
                })
                .map(|c| c.spi_in)
                .collect();
            for spi_in in current {
                match self.sessions[i].session.rekey_child(spi_in, false, now) {
                    Ok(msg) => {
                        self.child_rekeying.push((i, spi_in));
                        started += 1;
                        self.finish(i, vec![Output::Send(msg)], now)?;
                    }
                    // Window size 1: the others wait for the next call.
                    Err(_) => break,
                }
            }
        }
        Ok(started)
    }

    /// Starts a rekey of the IKE SA of every established session and sends the requests;
    /// returns how many were started. Sessions with a request outstanding are skipped.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn rekey_ike_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        self.rekey_ikes(None, now)
    }

    fn rekey_ikes(&mut self, endpoint: Option<usize>, now: Instant) -> Result<usize, DriverError> {
        let mut started = 0;
        for i in 0..self.sessions.len() {
            let st = &self.sessions[i];
            if endpoint.is_some_and(|e| e != st.endpoint)
                || !st.session.is_established()
                || st.conn.is_none()
            {
                continue;
            }
            if let Ok(msg) = self.sessions[i].session.rekey_ike(now) {
                self.ike_rekeying.push(i);
                started += 1;
                self.finish(i, vec![Output::Send(msg)], now)?;
            }
        }
        Ok(started)
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
            } => self.on_conn_down(conn, reason, token),
            Event::IkeMessage { conn, msg } => self.on_ike(conn, &msg, now),
            // Removed SAs are dropped here (their keys are zeroized), off the worker.
            Event::SaRemoved(sa) => {
                let (spi, dir) = match &sa {
                    RemovedSa::Inbound(i) => (i.spi(), Direction::Inbound),
                    RemovedSa::Outbound(o) => (o.spi(), Direction::Outbound),
                };
                drop(sa);
                self.events.push(DriverEvent::SaRemoved { spi, dir });
                Ok(())
            }
            Event::Stats { .. } | Event::SaExpired { .. } | Event::UnknownSpi { .. } => Ok(()),
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

    fn send(&self, worker: u16, cmd: Command) -> Result<(), DriverError> {
        self.handle
            .send_timeout(worker, cmd, SEND_TIMEOUT)
            .map_err(|e| match e {
                SendError::Full(_) => DriverError(format!("worker {worker}: command queue full")),
                SendError::Gone => DriverError(format!("worker {worker} is gone")),
            })
    }

    fn on_ack(&mut self, ack: u64, result: Result<(), String>) -> Result<(), DriverError> {
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
                self.child_done(child);
            }
            Pending::Outbound { child } if child >= self.children.len() => {}
            Pending::Outbound { child } => match result {
                Ok(()) => {
                    self.children[child].outbound_ok = true;
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

    fn on_conn_up(
        &mut self,
        conn: Conn,
        local: SocketAddr,
        peer: SocketAddr,
        role: TcpRole,
        token: Option<u64>,
        now: Instant,
    ) -> Result<(), DriverError> {
        let endpoint = match (role, token) {
            (TcpRole::Originator, Some(t)) => t as usize,
            (TcpRole::Responder, _) => {
                // The Responder endpoint listening on this worker and port.
                match self.endpoints.iter().position(|e| {
                    e.worker == conn.worker
                        && matches!(e.role, EndpointRole::Responder { listen }
                            if listen.port() == local.port()
                                && (listen.ip().is_unspecified() || listen.ip() == local.ip()))
                }) {
                    Some(i) => i,
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        if endpoint >= self.endpoints.len() {
            return Ok(());
        }
        self.conns.insert(
            conn,
            ConnState {
                endpoint,
                local,
                peer,
                session: None,
            },
        );
        self.events.push(DriverEvent::ConnUp { endpoint, conn });
        if role != TcpRole::Originator {
            return Ok(());
        }
        // A reconnect: the session waiting for it takes the new connection and re-sends its
        // outstanding request bit for bit (RFC 9329 §6.2, R-6.2-b).
        if let Some(i) = self
            .sessions
            .iter()
            .position(|s| s.endpoint == endpoint && s.conn.is_none() && !s.session.is_failed())
        {
            let st = &mut self.sessions[i];
            st.conn = Some(conn);
            let again = st.outstanding.clone();
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = Some(i);
            }
            if let Some(msg) = again {
                self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
            }
            return Ok(());
        }
        let cfg = self.endpoints[endpoint].ike.clone();
        match Session::initiator(cfg, local, peer, now) {
            Ok((session, msg)) => {
                let i = self.new_session(endpoint, session, conn);
                self.sessions[i].outstanding = Some(msg.clone());
                self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
            }
            Err(e) => self.events.push(DriverEvent::Failed {
                endpoint,
                reason: format!("initiator: {e}"),
            }),
        }
        Ok(())
    }

    fn new_session(&mut self, endpoint: usize, session: Session, conn: Conn) -> usize {
        let ike_sa = IkeSaId(self.next_ike_sa);
        self.next_ike_sa += 1;
        let i = self.sessions.len();
        self.sessions.push(SessionState {
            endpoint,
            session,
            ike_sa,
            conn: Some(conn),
            outstanding: None,
            reconnects: 0,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(i);
        }
        i
    }

    fn on_conn_down(
        &mut self,
        conn: Conn,
        reason: CloseReason,
        token: Option<u64>,
    ) -> Result<(), DriverError> {
        let (endpoint, session) = match self.conns.remove(&conn) {
            Some(c) => (c.endpoint, c.session),
            None => match token {
                Some(t) => (t as usize, None),
                None => return Ok(()),
            },
        };
        self.events.push(DriverEvent::ConnDown {
            endpoint,
            conn,
            reason,
        });
        let session = session.or_else(|| {
            // A failed reconnect: the session still waiting for its connection.
            token.and_then(|_| {
                self.sessions
                    .iter()
                    .position(|s| s.endpoint == endpoint && s.conn.is_none())
            })
        });
        let Some(i) = session else {
            return Ok(());
        };
        let st = &mut self.sessions[i];
        if st.conn == Some(conn) {
            st.conn = None;
        }
        // Only the TCP Originator reconnects, and only with a request outstanding.
        if st.outstanding.is_none() || st.session.is_failed() {
            return Ok(());
        }
        let Some(ep) = self.endpoints.get(endpoint) else {
            return Ok(());
        };
        let EndpointRole::Originator { remote, local } = ep.role else {
            return Ok(());
        };
        if st.reconnects >= MAX_RECONNECTS {
            st.outstanding = None;
            self.events.push(DriverEvent::Failed {
                endpoint,
                reason: format!("no answer after {MAX_RECONNECTS} reconnects"),
            });
            return Ok(());
        }
        st.reconnects += 1;
        let worker = ep.worker;
        self.send(
            worker,
            Command::Connect {
                local,
                remote,
                token: endpoint as u64,
            },
        )
    }

    /// A responder session of `endpoint` that `msg` (a request with both IKE SPIs) continues.
    fn find_responder_session(&self, endpoint: usize, msg: &[u8]) -> Option<usize> {
        let spi_i = u64::from_be_bytes(msg.get(0..8)?.try_into().ok()?);
        let spi_r = u64::from_be_bytes(msg.get(8..16)?.try_into().ok()?);
        if spi_r == 0 {
            return None;
        }
        self.sessions.iter().position(|s| {
            s.endpoint == endpoint
                && s.session.tcp_role() == Role::Responder
                && s.session.spis() == (spi_i, spi_r)
        })
    }

    fn on_ike(&mut self, conn: Conn, msg: &[u8], now: Instant) -> Result<(), DriverError> {
        let Some(state) = self.conns.get(&conn) else {
            return Ok(());
        };
        let endpoint = state.endpoint;
        let index = match state.session {
            Some(i) => i,
            None => {
                let (local, peer) = (state.local, state.peer);
                match self.find_responder_session(endpoint, msg) {
                    // The peer reconnected and continues (or retransmits) on this connection.
                    Some(i) => {
                        self.sessions[i].conn = Some(conn);
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.session = Some(i);
                        }
                        let st = &self.sessions[i];
                        if st.session.is_established() {
                            // Its SAs now use this connection (RFC 9329 §6.1). An SA on another
                            // worker would have to move first: not done yet.
                            let ike_sa = st.ike_sa;
                            self.send(
                                conn.worker,
                                Command::BindIkeSa {
                                    ike_sa,
                                    conn: conn.id,
                                },
                            )?;
                        }
                        i
                    }
                    None => {
                        let cfg = self.endpoints[endpoint].ike.clone();
                        self.new_session(endpoint, Session::responder(cfg, local, peer), conn)
                    }
                }
            }
        };
        let st = &mut self.sessions[index];
        let was_established = st.session.is_established();
        let outputs = match st.session.handle(msg, now) {
            Ok(o) => o,
            Err(e) => {
                self.events.push(DriverEvent::Failed {
                    endpoint,
                    reason: format!("session: {e}"),
                });
                return Ok(());
            }
        };
        let answered = !matches!(
            outputs.as_slice(),
            [Output::Event(
                SessionEvent::Dropped(_) | SessionEvent::IntegrityFailure
            )]
        );
        if st.session.role() == Role::Initiator && answered && !was_established {
            // The response arrived; the next request (if any) is the outstanding one.
            st.outstanding = outputs.iter().rev().find_map(|o| match o {
                Output::Send(m) => Some(m.clone()),
                Output::Event(_) => None,
            });
        }
        self.finish(index, outputs, now)
    }

    /// Acts on what a session call produced: its events, its lifecycle events (installing and
    /// deleting SAs) and its messages, which wait for the ack of an inbound SA installed here.
    fn finish(
        &mut self,
        index: usize,
        outputs: Vec<Output>,
        now: Instant,
    ) -> Result<(), DriverError> {
        let endpoint = self.sessions[index].endpoint;
        let ike_sa = self.sessions[index].ike_sa;
        let conn = self.sessions[index].conn;
        let mut sends = Vec::new();
        let mut first = None;
        for o in outputs {
            match o {
                Output::Send(m) => sends.push(m),
                Output::Event(SessionEvent::IkeSaUp { .. }) => {
                    self.keylog_ike(index);
                    self.events.push(DriverEvent::IkeSaUp { endpoint, ike_sa });
                }
                Output::Event(SessionEvent::ChildSaUp(c)) => first = Some(c),
                Output::Event(SessionEvent::ChildSaFailed(n)) => {
                    self.events.push(DriverEvent::Failed {
                        endpoint,
                        reason: format!("Child SA refused: {n:?}"),
                    });
                }
                Output::Event(SessionEvent::Failed(r)) => {
                    self.events.push(DriverEvent::Failed {
                        endpoint,
                        reason: format!("IKE SA failed: {r:?}"),
                    });
                }
                Output::Event(SessionEvent::IntegrityFailure) => {
                    self.events.push(DriverEvent::IntegrityFailure { endpoint });
                }
                Output::Event(SessionEvent::Dropped(_)) => {}
            }
        }
        // The ack of the last inbound SA installed here: the messages wait for it.
        let mut hold = None;
        if let (Some(c), Some(conn)) = (first, conn)
            && let Some((child, ack, out, selectors)) = self.install_child(index, &c, conn)?
        {
            hold = Some(ack);
            self.install_outbound(child, out, selectors)?;
            self.send(
                conn.worker,
                Command::BindIkeSa {
                    ike_sa,
                    conn: conn.id,
                },
            )?;
        }
        let sa_events = self.sessions[index].session.take_sa_events();
        for ev in sa_events {
            if let Some(ack) = self.on_sa_event(index, ev, now)? {
                hold = Some(ack);
            }
        }
        let Some(conn) = conn else {
            return Ok(());
        };
        match hold.and_then(|a| self.pending.get_mut(&a)) {
            Some(Pending::Inbound { held, .. }) => held.extend(sends),
            _ => {
                for msg in sends {
                    self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
                }
            }
        }
        Ok(())
    }

    /// One lifecycle event of session `index`; returns the ack of an inbound SA it installed.
    fn on_sa_event(
        &mut self,
        index: usize,
        ev: SaEvent,
        now: Instant,
    ) -> Result<Option<u64>, DriverError> {
        let endpoint = self.sessions[index].endpoint;
        let ike_sa = self.sessions[index].ike_sa;
        let conn = self.sessions[index].conn;
        match ev {
            SaEvent::ChildSaCreated(c) => {
                let Some(conn) = conn else { return Ok(None) };
                let Some((child, ack, out, selectors)) = self.install_child(index, &c, conn)?
                else {
                    return Ok(None);
                };
                self.install_outbound(child, out, selectors)?;
                Ok(Some(ack))
            }
            SaEvent::ChildSaRekeyed {
                old_spi_in,
                old_spi_out,
                new,
            } => {
                self.events.push(DriverEvent::ChildSaRekeyed {
                    endpoint,
                    old_spi_in,
                    old_spi_out,
                    spi_in: new.spi_in,
                    spi_out: new.spi_out,
                });
                let Some(conn) = conn else { return Ok(None) };
                let Some(old) = self.find_child(index, old_spi_in) else {
                    return Ok(None);
                };
                let Some((child, ack, out, selectors)) = self.install_child(index, &new, conn)?
                else {
                    return Ok(None);
                };
                let w = Switch {
                    session: index,
                    old,
                    new: child,
                    sa: out,
                    selectors,
                    due: now + SWITCH_FALLBACK,
                };
                let ours = self
                    .child_rekeying
                    .iter()
                    .position(|r| *r == (index, old_spi_in));
                // Both ends rekeyed the same Child SA (RFC 7296 §2.8.1): which new SA survives
                // shows when one of them (or the old one) is deleted; until then nothing moves.
                let collision = self.switches.iter().any(|x| x.old == old)
                    || (ours.is_none() && self.child_rekeying.contains(&(index, old_spi_in)));
                if let Some(k) = ours {
                    self.child_rekeying.remove(k);
                    self.child_rekeys += 1;
                }
                if ours.is_some() && !collision {
                    // We started it: the peer has the new inbound SA already (its response
                    // left after the install), so traffic moves now.
                    self.switch(w, now)?;
                } else {
                    // The peer's rekey: it installs its inbound SA when our response arrives;
                    // switch when its Delete of the old SA comes.
                    self.switches.push(w);
                }
                Ok(Some(ack))
            }
            SaEvent::ChildSaDeleted { spi_in, .. } => {
                let Some(child) = self.find_child(index, spi_in) else {
                    return Ok(None);
                };
                let old_of = |d: &Self, c: usize| {
                    d.switches
                        .iter()
                        .filter(|w| w.session == index && w.old == c)
                        .count()
                };
                if old_of(self, child) > 0 {
                    // The peer deleted the SA it replaced: switch now, unless a collision still
                    // has to show which new SA survives.
                    if old_of(self, child) == 1
                        && let Some(k) = self.switches.iter().position(|w| w.old == child)
                    {
                        let w = self.switches.remove(k);
                        self.switch(w, now)?;
                    }
                    return Ok(None);
                }
                if self.retiring.iter().any(|r| r.1 == child) {
                    // Replaced already; its inbound SA goes after the grace period.
                    return Ok(None);
                }
                // A new SA that lost a collision has no outbound SA installed yet; the other
                // new SA of that collision takes over.
                let replaced = self.switches.iter().find(|w| w.new == child).map(|w| w.old);
                self.switches.retain(|w| w.new != child);
                // The survivor first, so outbound traffic always has an SA.
                let replaced = replaced.or_else(|| {
                    self.switches
                        .iter()
                        .find(|w| w.session == index && self.collided(w.old, child))
                        .map(|w| w.old)
                });
                if let Some(old) = replaced
                    && old_of(self, old) == 1
                    && let Some(k) = self.switches.iter().position(|w| w.old == old)
                {
                    let w = self.switches.remove(k);
                    self.switch(w, now)?;
                }
                // Packets the peer sent before its Delete may still be in flight: the inbound SA
                // goes after the grace period, as for a rekey.
                self.delete_outbound(child)?;
                self.retiring.push((now + OLD_INBOUND_GRACE, child));
                Ok(None)
            }
            SaEvent::IkeSaRekeyed { spi_i, spi_r } => {
                if let Some(k) = self.ike_rekeying.iter().position(|s| *s == index) {
                    self.ike_rekeying.remove(k);
                    self.ike_rekeys += 1;
                }
                self.keylog_ike(index);
                self.events.push(DriverEvent::IkeSaRekeyed {
                    endpoint,
                    ike_sa,
                    spi_i,
                    spi_r,
                });
                Ok(None)
            }
            SaEvent::IkeRekeyRefused(_) => {
                self.ike_rekeying.retain(|s| *s != index);
                Ok(None)
            }
            SaEvent::ChildSaRefused(_) => {
                self.child_rekeying.retain(|r| r.0 != index);
                Ok(None)
            }
            SaEvent::OldIkeSaDeleted { .. } => Ok(None),
            SaEvent::IkeSaDeleted => {
                self.switches.retain(|w| w.session != index);
                let mine: Vec<usize> = (0..self.children.len())
                    .filter(|&c| self.children[c].session == index)
                    .collect();
                self.retiring.retain(|r| !mine.contains(&r.1));
                for c in mine {
                    self.delete_outbound(c)?;
                    self.delete_inbound(c)?;
                }
                self.child_rekeying.retain(|r| r.0 != index);
                self.ike_rekeying.retain(|s| *s != index);
                if let Some(conn) = conn {
                    self.send(conn.worker, Command::ForgetIkeSa { ike_sa })?;
                }
                self.events
                    .push(DriverEvent::IkeSaDeleted { endpoint, ike_sa });
                Ok(None)
            }
        }
    }

    /// Whether `new` replaced `old` in a rekey we started (its outbound SA is in use already).
    fn collided(&self, old: usize, new: usize) -> bool {
        self.retiring.iter().any(|r| r.1 == old) && self.children[new].outbound_ok
    }

    /// The live Child SA of session `index` with this inbound SPI.
    fn find_child(&self, index: usize, spi_in: u32) -> Option<usize> {
        self.children
            .iter()
            .rposition(|c| c.session == index && c.spi_in == spi_in)
    }

    /// Moves traffic from `w.old` to `w.new`: installs the new outbound SA (it takes
    /// precedence), deletes the old one, and deletes the old inbound SA after the grace period.
    fn switch(&mut self, w: Switch, now: Instant) -> Result<(), DriverError> {
        self.install_outbound(w.new, w.sa, w.selectors)?;
        self.delete_outbound(w.old)?;
        if !self.retiring.iter().any(|r| r.1 == w.old) {
            self.retiring.push((now + OLD_INBOUND_GRACE, w.old));
        }
        Ok(())
    }

    fn delete_sa(&mut self, worker: u16, spi: u32, dir: Direction) -> Result<(), DriverError> {
        let ack = self.ack();
        self.pending.insert(ack, Pending::Delete);
        self.send(worker, Command::DeleteSa { spi, dir, ack })
    }

    fn delete_outbound(&mut self, child: usize) -> Result<(), DriverError> {
        let Some(c) = self.children.get_mut(child) else {
            return Ok(());
        };
        if !std::mem::take(&mut c.outbound_ok) {
            return Ok(());
        }
        let (worker, spi) = (c.worker, c.spi_out);
        self.delete_sa(worker, spi, Direction::Outbound)
    }

    fn delete_inbound(&mut self, child: usize) -> Result<(), DriverError> {
        let Some(c) = self.children.get_mut(child) else {
            return Ok(());
        };
        if !std::mem::take(&mut c.inbound_ok) {
            return Ok(());
        }
        let (worker, spi) = (c.worker, c.spi_in);
        self.delete_sa(worker, spi, Direction::Inbound)
    }

    /// Builds both ESP SAs of `c`, records the Child SA and sends the inbound SA's install;
    /// returns the child index, the install's ack, and the outbound SA with its selectors.
    /// `None` (with a `Failed` event) if the SAs cannot be built.
    #[allow(clippy::type_complexity)]
    fn install_child(
        &mut self,
        index: usize,
        c: &ChildSa,
        conn: Conn,
    ) -> Result<Option<(usize, u64, Box<OutboundSa>, Selectors)>, DriverError> {
        let endpoint = self.sessions[index].endpoint;
        let ike_sa = self.sessions[index].ike_sa;
        let ep = &self.endpoints[endpoint];
        let (backend, lifetime) = (ep.backend, ep.lifetime);
        let built = sa_params(c.spi_in, c, c.keymat_in.expose(), backend)
            .and_then(|p| InboundSa::new(&p).map_err(|e| e.to_string()))
            .and_then(|i| {
                let p = sa_params(c.spi_out, c, c.keymat_out.expose(), backend)?;
                let o = OutboundSa::new(&p).map_err(|e| e.to_string())?;
                Ok((i, o))
            });
        let (inb, out) = match built {
            Ok(x) => x,
            Err(e) => {
                self.events.push(DriverEvent::Failed {
                    endpoint,
                    reason: format!("building SAs: {e}"),
                });
                return Ok(None);
            }
        };
        self.keylog_child(endpoint, c, conn);
        let child = self.children.len();
        self.children.push(ChildState {
            endpoint,
            session: index,
            worker: conn.worker,
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            inbound_ok: false,
            outbound_ok: false,
        });
        let ack = self.ack();
        self.pending.insert(
            ack,
            Pending::Inbound {
                child,
                conn,
                held: Vec::new(),
            },
        );
        self.send(
            conn.worker,
            Command::InstallInbound {
                sa: Box::new(inb),
                ike_sa,
                lifetime,
                ack,
            },
        )?;
        let selectors = Selectors {
            local: to_spd(&c.ts_local),
            remote: to_spd(&c.ts_remote),
        };
        Ok(Some((child, ack, Box::new(out), selectors)))
    }

    /// Sends the install of a Child SA's outbound SA.
    fn install_outbound(
        &mut self,
        child: usize,
        sa: Box<OutboundSa>,
        selectors: Selectors,
    ) -> Result<(), DriverError> {
        let Some(c) = self.children.get(child) else {
            return Ok(());
        };
        let (worker, session) = (c.worker, c.session);
        let ike_sa = self.sessions[session].ike_sa;
        let lifetime = self.endpoints[self.sessions[session].endpoint].lifetime;
        let ack = self.ack();
        self.pending.insert(ack, Pending::Outbound { child });
        self.send(
            worker,
            Command::InstallOutbound {
                sa,
                ike_sa,
                selectors,
                lifetime,
                ack,
            },
        )
    }
}
