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
//! Not yet: rekeys, INFORMATIONAL exchanges (DPD, Delete), reconnects after the IKE SA is up,
//! SA migration between workers, reaping half-open responder sessions.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat};
use iketcp_dataplane::sa::{InboundSa, Mode, OutboundSa, SaParams};
use iketcp_dataplane::transport::{CloseReason, TcpRole};
use iketcp_dataplane::worker::handle::{
    Command, Conn, DataplaneHandle, Direction, Event, IkeSaId, Lifetime, SendError,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector as SpdSelector};

use crate::ike::session::{ChildSa, Config, Output, Role, Session, SessionEvent};
use crate::ike::wire::TrafficSelector;

/// How long a command may wait for room in a worker's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnects of a TCP Originator with a request outstanding before it gives up.
const MAX_RECONNECTS: u8 = 3;

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
        let first = match self.handle.events().recv_timeout(timeout) {
            Ok(ev) => ev,
            Err(_) => return Ok(false),
        };
        self.handle_event(first, Instant::now())?;
        while let Ok(ev) = self.handle.events().try_recv() {
            self.handle_event(ev, Instant::now())?;
        }
        Ok(true)
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
            Event::SaRemoved(_)
            | Event::Stats { .. }
            | Event::SaExpired { .. }
            | Event::UnknownSpi { .. } => Ok(()),
        }
    }

    /// Deletes every installed SA (both directions) and forgets the IKE SAs' connections. Wait for
    /// [`has_pending`](Self::has_pending) to turn false to know the workers applied it.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn delete_all(&mut self) -> Result<(), DriverError> {
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
                && s.session.role() == Role::Responder
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
        let ike_sa = st.ike_sa;
        let ep = &self.endpoints[endpoint];
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
        let (backend, lifetime) = (ep.backend, ep.lifetime);
        let answered = !matches!(
            outputs.as_slice(),
            [Output::Event(
                SessionEvent::Dropped(_) | SessionEvent::IntegrityFailure
            )]
        );
        if st.session.role() == Role::Initiator && answered {
            // The response arrived; the next request (if any) is the outstanding one.
            st.outstanding = outputs.iter().rev().find_map(|o| match o {
                Output::Send(m) => Some(m.clone()),
                Output::Event(_) => None,
            });
        }
        let mut sends = Vec::new();
        let mut child = None;
        for o in outputs {
            match o {
                Output::Send(m) => sends.push(m),
                Output::Event(SessionEvent::IkeSaUp { .. }) => {
                    self.events.push(DriverEvent::IkeSaUp { endpoint, ike_sa });
                }
                Output::Event(SessionEvent::ChildSaUp(c)) => child = Some(c),
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
        let Some(c) = child else {
            for msg in sends {
                self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
            }
            return Ok(());
        };
        // Install both SAs; the messages of this call wait for the inbound SA's ack.
        let built = sa_params(c.spi_in, &c, c.keymat_in.expose(), backend)
            .and_then(|p| InboundSa::new(&p).map_err(|e| e.to_string()))
            .and_then(|i| {
                let p = sa_params(c.spi_out, &c, c.keymat_out.expose(), backend)?;
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
                return Ok(());
            }
        };
        let index = self.children.len();
        self.children.push(ChildState {
            endpoint,
            worker: conn.worker,
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            inbound_ok: false,
            outbound_ok: false,
        });
        let (ack_in, ack_out) = (self.ack(), self.ack());
        self.pending.insert(
            ack_in,
            Pending::Inbound {
                child: index,
                conn,
                held: sends,
            },
        );
        self.pending
            .insert(ack_out, Pending::Outbound { child: index });
        let selectors = Selectors {
            local: to_spd(&c.ts_local),
            remote: to_spd(&c.ts_remote),
        };
        let w = conn.worker;
        self.send(
            w,
            Command::InstallInbound {
                sa: Box::new(inb),
                ike_sa,
                lifetime,
                ack: ack_in,
            },
        )?;
        self.send(
            w,
            Command::InstallOutbound {
                sa: Box::new(out),
                ike_sa,
                selectors,
                lifetime,
                ack: ack_out,
            },
        )?;
        self.send(
            w,
            Command::BindIkeSa {
                ike_sa,
                conn: conn.id,
            },
        )
    }
}
