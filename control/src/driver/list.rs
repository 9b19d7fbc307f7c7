//! What the core holds, for `iketcp status` and the control socket, and endpoints added,
//! replaced and removed at run time (a configuration reload) without disturbing the others.

use super::*;
use crate::ike::crypto::IkeSuite;
use crate::ike::wire::Identity;

/// One endpoint (a connection's configuration).
#[derive(Clone, Debug)]
pub struct EndpointInfo {
    /// Its handle.
    pub id: EndpointId,
    /// The worker it listens or dials on.
    pub worker: u16,
    /// Originator or Responder, with its addresses.
    pub role: EndpointRole,
    /// Our identity and the one expected of the peer.
    pub local_id: Identity,
    /// See `local_id`.
    pub remote_id: Identity,
    /// IKE SAs of it the core holds (live or finished and not yet forgotten).
    pub ike_sas: usize,
    /// Removed: it takes no new connections and goes once its IKE SAs are gone.
    pub removing: bool,
}

/// The state of an IKE SA, as an operator reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IkeSaState {
    /// IKE_SA_INIT or IKE_AUTH in progress (a responder's is half-open).
    Connecting,
    /// Authenticated.
    Established,
    /// Established, waiting for a new connection (TCP Originator reconnecting).
    Reconnecting,
    /// Deleted, failed or dropped; forgotten soon.
    Gone,
}

/// One IKE SA (session).
#[derive(Clone, Debug)]
pub struct IkeSaInfo {
    /// Its handle (and the data plane's name for it).
    pub id: IkeSaId,
    /// Its endpoint.
    pub endpoint: EndpointId,
    /// The state.
    pub state: IkeSaState,
    /// Whether we are the IKE SA's original initiator.
    pub initiator: bool,
    /// Whether we opened the TCP connection (RFC 9329 §1.2).
    pub tcp_originator: bool,
    /// Initiator and responder SPIs (SPIr 0 before the IKE_SA_INIT response).
    pub spi_i: u64,
    /// See `spi_i`.
    pub spi_r: u64,
    /// Negotiated algorithms, once known.
    pub suite: Option<IkeSuite>,
    /// Identities.
    pub local_id: Identity,
    /// See `local_id`.
    pub remote_id: Identity,
    /// The connection it uses now, with both ends.
    pub conn: Option<(Conn, SocketAddr, SocketAddr)>,
    /// Since it was created.
    pub age: Duration,
    /// Until its rekey and its hard lifetime (time limits), if set.
    pub rekey_in: Option<Duration>,
    /// See `rekey_in`.
    pub expires_in: Option<Duration>,
    /// Its Child SAs.
    pub child_sas: Vec<ChildSaInfo>,
}

/// The state of a Child SA in the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildSaState {
    /// Its SAs are being installed.
    Installing,
    /// Both SAs carry traffic.
    Installed,
    /// Replaced by a rekey: only its inbound SA is left, for a grace period.
    Retiring,
    /// On its way to another worker.
    Moving,
    /// Deleted.
    Gone,
}

/// One Child SA.
#[derive(Clone, Debug)]
pub struct ChildSaInfo {
    /// Its handle.
    pub id: ChildSaId,
    /// Our inbound and outbound SPIs.
    pub spi_in: u32,
    /// See `spi_in`.
    pub spi_out: u32,
    /// The ESP transform and whether ESN is on.
    pub suite: EspSuite,
    /// See `suite`.
    pub esn: bool,
    /// The worker that holds its SAs.
    pub worker: u16,
    /// The state.
    pub state: ChildSaState,
    /// Its outbound traffic selectors (local, remote).
    pub selectors: Selectors,
    /// Since it was created.
    pub age: Duration,
    /// Until its rekey and its hard lifetime, if set.
    pub rekey_in: Option<Duration>,
    /// See `rekey_in`.
    pub expires_in: Option<Duration>,
    /// Its traffic as last reported (after [`Core::refresh_counters`]), and how long ago.
    pub traffic: Option<(ChildTraffic, Duration)>,
}

/// A Child SA's traffic: packets and inner bytes each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildTraffic {
    /// Received and authentic.
    pub packets_in: u64,
    /// See `packets_in`.
    pub bytes_in: u64,
    /// Sent.
    pub packets_out: u64,
    /// See `packets_out`.
    pub bytes_out: u64,
    /// When the worker reported it.
    pub at: Instant,
}

impl Core {
    /// Asks every worker that holds SAs for their counters; the answers update the listing.
    ///
    /// # Errors
    /// Local faults only.
    pub fn refresh_counters(&mut self, now: Instant) -> Result<(), DriverError> {
        self.now = now;
        let mut workers: Vec<u16> = self.children.iter().map(|(_, c)| c.worker).collect();
        workers.sort_unstable();
        workers.dedup();
        for w in workers {
            let ack = self.ack();
            self.expect_ack(ack, Pending::Counters);
            self.send(w, Command::ReportSas { ack })?;
        }
        Ok(())
    }

    /// A worker's counters arrived.
    pub(super) fn on_counters(&mut self, worker: u16, ack: u64, sas: &[SaCounter], now: Instant) {
        self.acked(ack);
        if !matches!(self.pending.remove(&ack), Some(Pending::Counters)) {
            return;
        }
        for s in sas {
            let child = match s.dir {
                Direction::Inbound => self.child_by_spi_in.get(&s.spi).copied(),
                Direction::Outbound => self.child_by_spi_out.get(&s.spi).and_then(|v| {
                    v.iter()
                        .copied()
                        .find(|&c| self.children.get(c).is_some_and(|x| x.worker == worker))
                }),
            };
            let Some(ch) = child.and_then(|c| self.children.get_mut(c)) else {
                continue;
            };
            let t = ch.traffic.get_or_insert(ChildTraffic {
                packets_in: 0,
                bytes_in: 0,
                packets_out: 0,
                bytes_out: 0,
                at: now,
            });
            t.at = now;
            match s.dir {
                Direction::Inbound => (t.packets_in, t.bytes_in) = (s.packets, s.bytes),
                Direction::Outbound => (t.packets_out, t.bytes_out) = (s.packets, s.bytes),
            }
        }
    }

    /// The endpoints.
    pub fn list_endpoints(&self) -> Vec<EndpointInfo> {
        self.endpoints
            .iter()
            .map(|(id, e)| EndpointInfo {
                id,
                worker: e.worker,
                role: e.role,
                local_id: e.ike.local_id.clone(),
                remote_id: e.ike.remote_id.clone(),
                ike_sas: self.ep_sessions.get(&id).map_or(0, HashSet::len),
                removing: self.removing.contains(&id),
            })
            .collect()
    }

    /// The IKE SAs with their Child SAs, as of `now` (of `endpoint`, if given).
    pub fn list_ike_sas(&self, endpoint: Option<EndpointId>, now: Instant) -> Vec<IkeSaInfo> {
        let left = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now));
        let ids: Vec<IkeSaId> = match endpoint {
            Some(e) => self.endpoint_sessions(e).collect(),
            None => self.sessions.handles(),
        };
        ids.into_iter()
            .filter_map(|i| {
                let st = self.sessions.get(i)?;
                let s = &st.session;
                let state = if !st.alive() {
                    IkeSaState::Gone
                } else if !s.is_established() {
                    IkeSaState::Connecting
                } else if st.conn.is_none() {
                    IkeSaState::Reconnecting
                } else {
                    IkeSaState::Established
                };
                let (spi_i, spi_r) = s.spis();
                let conn = st.conn.and_then(|k| {
                    let c = self.conns.get(&k)?;
                    Some((k, c.local, c.peer))
                });
                let child_sas = st
                    .children
                    .iter()
                    .filter_map(|&c| self.child_info(c, now))
                    .collect();
                Some(IkeSaInfo {
                    id: i,
                    endpoint: st.endpoint,
                    state,
                    initiator: s.role() == Role::Initiator,
                    tcp_originator: s.tcp_role() == Role::Initiator,
                    spi_i,
                    spi_r,
                    suite: s.suite(),
                    local_id: s.config().local_id.clone(),
                    remote_id: s.config().remote_id.clone(),
                    conn,
                    age: now.saturating_duration_since(st.born),
                    rekey_in: left(st.ike_rekey_at),
                    expires_in: left(st.ike_expire_at),
                    child_sas,
                })
            })
            .collect()
    }

    fn child_info(&self, c: ChildSaId, now: Instant) -> Option<ChildSaInfo> {
        let ch = self.children.get(c)?;
        let moving = self.migrations.iter().any(|m| m.children().any(|x| x == c));
        let state = if moving {
            ChildSaState::Moving
        } else if self.retiring.contains(c) {
            ChildSaState::Retiring
        } else if ch.inbound_ok && ch.outbound_ok {
            ChildSaState::Installed
        } else if ch.unwanted != (false, false) || ch.installed_once {
            ChildSaState::Gone
        } else {
            ChildSaState::Installing
        };
        let left = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now));
        Some(ChildSaInfo {
            id: c,
            spi_in: ch.spi_in,
            spi_out: ch.spi_out,
            suite: ch.suite,
            esn: ch.esn,
            worker: ch.worker,
            state,
            selectors: ch.selectors.clone(),
            age: now.saturating_duration_since(ch.created),
            rekey_in: left(ch.rekey_at),
            expires_in: left(ch.expire_at),
            traffic: ch.traffic.map(|t| (t, now.saturating_duration_since(t.at))),
        })
    }

    /// Replaces endpoint `id`'s configuration: IKE SAs created from now on use `ep`; those that
    /// exist keep theirs until they end (as strongSwan's `swanctl --load-conns` does with a
    /// changed connection). The worker and role must stay (moving a listener or a dialling
    /// endpoint is a remove and an add). Returns false if there is no such endpoint or the
    /// worker or role changed.
    pub fn replace_endpoint(&mut self, id: EndpointId, mut ep: Endpoint) -> bool {
        let Some(old) = self.endpoints.get_mut(id) else {
            return false;
        };
        if old.worker != ep.worker || old.role != ep.role {
            return false;
        }
        ep.ike.spi_pool = self.spi_pool.clone();
        *old = ep;
        self.listener_configs.clear();
        true
    }

    /// Removes endpoint `id`: its established IKE SAs are deleted with Delete exchanges (their
    /// Child SAs go with them, RFC 7296 §1.4.1), half-open ones are dropped, an Originator stops
    /// dialling, and new connections to it are refused; it leaves the table once its IKE SAs
    /// are gone. Returns false if there is no such endpoint.
    ///
    /// # Errors
    /// Local faults only.
    pub fn remove_endpoint(&mut self, id: EndpointId, now: Instant) -> Result<bool, DriverError> {
        self.now = now;
        if !self.endpoints.contains(id) {
            return Ok(false);
        }
        self.removing.insert(id);
        self.listener_configs.clear();
        self.dials.retain(|d| d.1 != id);
        self.dial_failures.remove(&id);
        let sessions: Vec<IkeSaId> = self.endpoint_sessions(id).collect();
        for &i in &sessions {
            let st = &mut self.sessions[i];
            if !st.alive() {
                continue;
            }
            if st.session.is_established() {
                self.expire_ike_now(i, now)?;
            } else {
                st.dropped = true;
                let conn = st.conn;
                self.session_changed(i);
                if let Some(c) = conn {
                    self.close(c, false)?;
                }
            }
        }
        self.forget_removed_endpoints();
        Ok(true)
    }

    /// Removed endpoints whose IKE SAs are all gone leave the table.
    pub(super) fn forget_removed_endpoints(&mut self) {
        let done: Vec<EndpointId> = self
            .removing
            .iter()
            .copied()
            .filter(|&e| self.endpoint_sessions(e).next().is_none())
            .collect();
        for e in done {
            self.removing.remove(&e);
            self.endpoints.remove(e);
            self.listener_configs.clear();
            // Its connections have nothing to carry: they close (a rare, O(connections) walk).
            let conns: Vec<Conn> = self
                .conns
                .iter()
                .filter(|(_, c)| c.endpoint == e && !c.closing)
                .map(|(k, _)| *k)
                .collect();
            for k in conns {
                let _ = self.close(k, false);
            }
        }
    }
}
