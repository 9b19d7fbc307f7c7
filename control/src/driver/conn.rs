//! Connections and IKE messages: sessions created, continued and reconnected.

use super::*;

impl Core {
    pub(super) fn on_conn_up(
        &mut self,
        conn: Conn,
        local: SocketAddr,
        peer: SocketAddr,
        role: TcpRole,
        token: Option<u64>,
        now: Instant,
    ) -> Result<(), DriverError> {
        let endpoint = match (role, token) {
            (TcpRole::Originator, Some(t)) => EndpointId::from_token(t),
            (TcpRole::Responder, _) => {
                // The Responder endpoint listening on this worker (or on several) and port.
                let found = self.endpoints.iter().find(|(i, e)| {
                    (e.worker == conn.worker || e.also_listen_on.contains(&conn.worker))
                        && !self.removing.contains(i)
                        && matches!(e.role, EndpointRole::Responder { listen }
                            if listen.port() == local.port()
                                && (listen.ip().is_unspecified() || listen.ip() == local.ip()))
                });
                match found {
                    Some((i, _)) => i,
                    // No endpoint (any longer) takes it: nothing may hold it open.
                    None => return self.send_close(conn),
                }
            }
            _ => return self.send_close(conn),
        };
        if !self.endpoints.contains(endpoint) || self.removing.contains(&endpoint) {
            return self.send_close(conn);
        }
        self.conns.insert(
            conn,
            ConnState {
                endpoint,
                local,
                peer,
                session: None,
                since: now,
                orphan_since: None,
                closing: false,
                cookie_wait: None,
            },
        );
        // A Responder's connection that carries no IKE SA is closed after a grace period.
        self.conn_changed(conn);
        self.events
            .push_back(DriverEvent::ConnUp { endpoint, conn });
        if role != TcpRole::Originator {
            return Ok(());
        }
        self.dial_failures.remove(&endpoint);
        // A reconnect: the session waiting for it takes the new connection (RFC 9329 §6.1).
        let waiting = self.endpoint_sessions(endpoint).find(|&i| {
            let s = &self.sessions[i];
            s.connecting && s.alive()
        });
        if let Some(i) = waiting {
            let st = &mut self.sessions[i];
            st.connecting = false;
            st.answered_here = false;
            // The last reconnected connection ended without an answer while our liveness
            // check was outstanding: the peer took it and answered elsewhere (libreswan 4.10
            // as TCP Responder moves an IKE SA to a new connection only for IKE_SA_INIT,
            // IKE_AUTH and CREATE_CHILD_SA, answers the INFORMATIONAL on the dead one, then
            // closes the new connection), and re-sending it would only repeat that. The check
            // carries nothing, so it is given up; an IKE SA rekey, which such a peer follows,
            // moves the IKE SA to the new connection instead.
            let unanswered = st.unanswered_paths > 0;
            if unanswered && st.session.abandon_liveness_check() {
                st.outstanding = None;
                self.events.push_back(DriverEvent::ProbeAbandoned {
                    endpoint,
                    ike_sa: i,
                });
            }
            let rekey =
                unanswered || self.endpoints[endpoint].reconnect_probe == ReconnectProbe::IkeRekey;
            let waits = self.sessions[i].session.has_outstanding();
            self.adopt(i, conn, true)?;
            if rekey && !waits {
                return self.start_ike_rekey(i, now).map(drop);
            }
            return self.probe_new_path(i, now);
        }
        let cfg = self.endpoints[endpoint].ike.clone();
        match Session::initiator(cfg, local, peer, now) {
            Ok((session, msg)) => {
                let i = self.new_session(endpoint, session, conn, now);
                self.sessions[i].outstanding = Some(msg.clone());
                self.send(conn.worker, Command::SendIke { conn: conn.id, msg })?;
            }
            Err(e) => self.events.push_back(DriverEvent::Failed {
                endpoint,
                reason: Failure::Initiator(e),
            }),
        }
        Ok(())
    }

    /// Session `i` continues on `conn`, a new connection: an established IKE SA and its Child
    /// SAs move there (RFC 9329 §6.1), and (if `resend`) a request still waiting for its
    /// response is re-sent bit for bit (RFC 9329 §6.2, R-6.2-b). Only for a connection the
    /// driver dialled itself or one that carried a fresh, authentic message (R-6.1-t, R-10-e).
    pub(super) fn adopt(
        &mut self,
        i: IkeSaId,
        conn: Conn,
        resend: bool,
    ) -> Result<(), DriverError> {
        self.attach(i, conn);
        let (ike_sa, established) = (i, self.sessions[i].session.is_established());
        // SAs on another worker move there first, then the IKE SA is bound (an Originator
        // always reconnects from the same worker; a Responder's new connection may land on
        // another one).
        if established && !self.migrate(i, conn)? {
            self.bind(ike_sa, conn)?;
        }
        if resend { self.resend(i, conn) } else { Ok(()) }
    }

    /// Session `i` now uses `conn`, and `conn` carries session `i`. The connection it used
    /// before may now be an orphan: its timer looks.
    pub(super) fn attach(&mut self, i: IkeSaId, conn: Conn) {
        let old = self.sessions[i].conn.replace(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(i);
        }
        if let Some(old) = old.filter(|o| *o != conn) {
            self.conn_changed(old);
        }
        self.conn_changed(conn);
    }

    /// The live (not yet forgotten) sessions of `endpoint`.
    pub(super) fn endpoint_sessions(
        &self,
        endpoint: EndpointId,
    ) -> impl Iterator<Item = IkeSaId> + '_ {
        self.ep_sessions
            .get(&endpoint)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| self.sessions.contains(i))
    }

    /// Session `i` changed (a call into it, a drop): its timers, its place in the SPI index
    /// and the half-open counts follow.
    pub(super) fn session_changed(&mut self, i: IkeSaId) {
        let Some(st) = self.sessions.get(i) else {
            return;
        };
        let responder = st.session.tcp_role() == Role::Responder;
        let spis = (responder && st.alive()).then(|| st.session.spis());
        let listen = match self.endpoints.get(st.endpoint).map(|e| e.role) {
            Some(EndpointRole::Responder { listen }) if self.half_open(st) => Some(listen),
            _ => None,
        };
        let (old_spis, old_listen, dead) = (st.indexed_spis, st.half_open_at, !st.alive());
        if old_spis != spis {
            if let Some(k) = old_spis
                && self.responders.get(&k) == Some(&i)
            {
                self.responders.remove(&k);
            }
            // Only a session with both SPIs can be continued on another connection.
            if let Some(k) = spis.filter(|k| k.1 != 0) {
                self.responders.insert(k, i);
            }
        }
        if old_listen != listen {
            if let Some(l) = old_listen
                && let Some(n) = self.half_open_n.get_mut(&l)
            {
                *n = n.saturating_sub(1);
            }
            if let Some(l) = listen {
                *self.half_open_n.entry(l).or_insert(0) += 1;
            }
        }
        let st = &mut self.sessions[i];
        st.indexed_spis = spis.filter(|k| k.1 != 0);
        st.half_open_at = listen;
        if dead && !std::mem::replace(&mut st.dead_noted, true) {
            self.reap_session_later(i);
        }
        self.arm_session(i);
    }

    /// The configurations of the Responder endpoints listening where `endpoint` listens (its
    /// own among them), tagged with their handles: the peer configurations a new responder
    /// session may switch to at IKE_AUTH (by IDi). Built once per address and shared.
    fn listener_peers(&mut self, endpoint: EndpointId) -> PeerConfigs {
        let EndpointRole::Responder { listen } = self.endpoints[endpoint].role else {
            return PeerConfigs::default();
        };
        if let Some(p) = self.listener_configs.get(&listen) {
            return p.clone();
        }
        let peers: PeerConfigs = self
            .endpoints
            .iter()
            .filter(|(id, e)| {
                !self.removing.contains(id) && e.role == EndpointRole::Responder { listen }
            })
            .map(|(id, e)| (id.token(), e.ike.clone()))
            .collect::<Vec<_>>()
            .into();
        self.listener_configs.insert(listen, peers.clone());
        peers
    }

    /// Session `i` belongs to endpoint `to` from now on (IKE_AUTH chose its configuration):
    /// the indices, the connection and the session's timers follow.
    fn rehome(&mut self, i: IkeSaId, to: EndpointId, conn: Conn) {
        let Some(ep) = self.endpoints.get(to) else {
            return;
        };
        let (timers, child_pfs) = (ep.timers, ep.child_pfs);
        let st = &mut self.sessions[i];
        let from = std::mem::replace(&mut st.endpoint, to);
        st.session.set_dpd_interval(timers.dpd_interval);
        st.session.set_exchange_timeout(timers.exchange_timeout);
        st.session.set_child_pfs(child_pfs);
        if let Some(set) = self.ep_sessions.get_mut(&from) {
            set.remove(&i);
        }
        self.ep_sessions.entry(to).or_default().insert(i);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.endpoint = to;
        }
        self.session_changed(i);
    }

    /// After a reconnect with no request of ours waiting, an empty INFORMATIONAL request (a
    /// liveness check) goes out at once on the new connection: RFC 9329 §6.1 suggests it, so
    /// the Responder learns the new path from an authenticated message (it keeps using the
    /// dead connection until one arrives), and some Responders close a new connection that
    /// carries no message within seconds (libreswan 4.10: 5 s).
    fn probe_new_path(&mut self, i: IkeSaId, now: Instant) -> Result<(), DriverError> {
        // A re-sent request keeps the session busy (window size 1): then it is that message.
        self.start_request(i, |s| s.start_dpd(now), now).map(drop)
    }

    /// Re-sends session `i`'s request still waiting for its response on `conn`, bit for bit
    /// (RFC 9329 §6.2, R-6.2-b).
    fn resend(&mut self, i: IkeSaId, conn: Conn) -> Result<(), DriverError> {
        match self.sessions[i].outstanding.clone() {
            Some(msg) => self.send(conn.worker, Command::SendIke { conn: conn.id, msg }),
            None => Ok(()),
        }
    }

    pub(super) fn new_session(
        &mut self,
        endpoint: EndpointId,
        mut session: Session,
        conn: Conn,
        now: Instant,
    ) -> IkeSaId {
        let timers = self.endpoints[endpoint].timers;
        session.set_dpd_interval(timers.dpd_interval);
        session.set_exchange_timeout(timers.exchange_timeout);
        session.set_child_pfs(self.endpoints[endpoint].child_pfs);
        let i = self.sessions.insert(SessionState {
            endpoint,
            session,
            conn: Some(conn),
            outstanding: None,
            reconnects: 0,
            answered_here: true,
            unanswered_paths: 0,
            connecting: false,
            born: now,
            dropped: false,
            ike_rekey_at: None,
            ike_expire_at: None,
            children: Vec::new(),
            indexed_spis: None,
            half_open_at: None,
            dead_noted: false,
        });
        self.ep_sessions.entry(endpoint).or_default().insert(i);
        self.attach(i, conn);
        self.session_changed(i);
        i
    }

    pub(super) fn on_conn_down(
        &mut self,
        conn: Conn,
        reason: CloseReason,
        token: Option<u64>,
        now: Instant,
    ) -> Result<(), DriverError> {
        let (endpoint, session, was_up) = match self.conns.remove(&conn) {
            // A session reaped meanwhile is stale: nothing to continue.
            Some(c) => (
                c.endpoint,
                c.session.filter(|&i| self.sessions.contains(i)),
                true,
            ),
            None => match token {
                Some(t) => (EndpointId::from_token(t), None, false),
                None => return Ok(()),
            },
        };
        self.events.push_back(DriverEvent::ConnDown {
            endpoint,
            conn,
            reason,
        });
        let session = session.or_else(|| {
            // A failed reconnect: the session still waiting for its connection.
            token.and_then(|_| {
                self.endpoint_sessions(endpoint)
                    .find(|&i| self.sessions[i].connecting)
            })
        });
        let Some(i) = session else {
            if !was_up && self.is_originator(endpoint) {
                // The first connect failed (the peer is not there yet): dial again later.
                self.schedule_dial(endpoint, now);
            }
            return Ok(());
        };
        let st = &mut self.sessions[i];
        if st.conn == Some(conn) {
            st.conn = None;
            if !st.answered_here && st.session.is_established() {
                st.unanswered_paths = st.unanswered_paths.saturating_add(1);
            }
        }
        st.connecting = false;
        // The session moved to another connection already, or has nothing left to carry.
        if st.conn.is_some()
            || !st.alive()
            || (!st.session.is_established() && st.outstanding.is_none())
        {
            return Ok(());
        }
        // The SAs stay (RFC 9329 §6.1, R-6.1-f); the TCP Originator brings the connection back
        // "if it is torn down for any unexpected reason" (R-6.1-g), the Responder waits.
        self.reconnect(i, now)
    }

    /// An Originator endpoint whose connect failed dials again after a backoff that doubles
    /// from [`DIAL_BACKOFF_MIN`] up to [`DIAL_BACKOFF_MAX`], without end: a gateway that comes
    /// up before its peer keeps trying.
    fn schedule_dial(&mut self, endpoint: EndpointId, now: Instant) {
        let failures = self.dial_failures.entry(endpoint).or_insert(0);
        *failures = failures.saturating_add(1);
        let delay = DIAL_BACKOFF_MIN
            .saturating_mul(1 << (*failures - 1).min(16))
            .min(DIAL_BACKOFF_MAX);
        self.dials.push((now + delay, endpoint));
        self.arm(Timer::Dials);
        self.events.push_back(DriverEvent::ConnectFailed {
            endpoint,
            retry_in: delay,
        });
    }

    /// Dials what is due.
    pub(super) fn dial_timers(&mut self, now: Instant) -> Result<(), DriverError> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.dials)
            .into_iter()
            .partition(|d| d.0 <= now);
        self.dials = later;
        for (_, endpoint) in due {
            self.dial(endpoint)?;
        }
        Ok(())
    }

    /// A TCP Originator's session without a connection dials again, at most
    /// [`MAX_RECONNECTS`] times in a row without an authentic answer. A TCP Responder never
    /// dials (RFC 9329 §6.1, R-6.1-g).
    pub(super) fn reconnect(&mut self, i: IkeSaId, now: Instant) -> Result<(), DriverError> {
        let endpoint = self.sessions[i].endpoint;
        if !self.is_originator(endpoint) {
            return Ok(());
        }
        let st = &mut self.sessions[i];
        if st.connecting {
            return Ok(());
        }
        if st.reconnects >= MAX_RECONNECTS {
            // An established IKE SA stays: its next request (a liveness check at the latest)
            // dials again, and its exchange timeout deletes it if the peer is gone.
            if !st.session.is_established() {
                st.outstanding = None;
            }
            self.events.push_back(DriverEvent::Failed {
                endpoint,
                reason: Failure::NoConnection {
                    reconnects: MAX_RECONNECTS,
                },
            });
            return Ok(());
        }
        st.reconnects += 1;
        st.connecting = true;
        // The first attempt at once, then after 1 s and 2 s: a peer that just restarted gets
        // time to listen again.
        match st.reconnects {
            1 => self.dial(endpoint),
            n => {
                let delay = DIAL_BACKOFF_MIN.saturating_mul(1 << (n - 2).min(16));
                self.dials.push((now + delay, endpoint));
                self.arm(Timer::Dials);
                Ok(())
            }
        }
    }

    /// The worker moved an IKE SA's traffic to `conn` (authentic ESP arrived there, R-6.1-t):
    /// the session follows, and a request of ours still waiting is re-sent there (R-6.2-b).
    pub(super) fn on_path_moved(&mut self, ike_sa: IkeSaId, conn: Conn) -> Result<(), DriverError> {
        let i = ike_sa;
        let Some(st) = self.sessions.get_mut(i) else {
            return Ok(());
        };
        if st.conn == Some(conn) || !st.alive() || !self.conns.contains_key(&conn) {
            return Ok(());
        }
        st.connecting = false;
        self.attach(i, conn);
        self.resend(i, conn)
    }

    /// A responder session of `endpoint` that `msg` (a request with both IKE SPIs) continues.
    pub(super) fn find_responder_session(
        &self,
        endpoint: EndpointId,
        msg: &[u8],
    ) -> Option<IkeSaId> {
        let spi_i = u64::from_be_bytes(msg.get(0..8)?.try_into().ok()?);
        let spi_r = u64::from_be_bytes(msg.get(8..16)?.try_into().ok()?);
        if spi_r == 0 {
            return None;
        }
        let i = *self.responders.get(&(spi_i, spi_r))?;
        let s = self.sessions.get(i)?;
        (self.same_listener(s.endpoint, endpoint)
            && s.alive()
            && s.session.tcp_role() == Role::Responder
            && s.session.spis() == (spi_i, spi_r))
            .then_some(i)
    }

    pub(super) fn on_ike(
        &mut self,
        conn: Conn,
        msg: &[u8],
        now: Instant,
    ) -> Result<(), DriverError> {
        let Some(state) = self.conns.get(&conn) else {
            return Ok(());
        };
        let endpoint = state.endpoint;
        let responder = !self.is_originator(endpoint);
        let carried = state
            .session
            .and_then(|i| Some((i, self.sessions.get(i)?.alive())));
        let mut fresh = false;
        let index = match carried {
            Some((i, alive)) if alive || !responder || !is_init_request(msg) => i,
            _ => {
                let (local, peer) = (state.local, state.peer);
                match self.find_responder_session(endpoint, msg) {
                    // The peer may have reconnected and continue (or retransmit) here; nothing
                    // moves before the session has verified the message (below).
                    Some(i) => i,
                    // Only an IKE_SA_INIT request creates state (RFC 7296 §2.6), and under
                    // load only one that brings a valid cookie and puzzle solution.
                    None if responder && is_init_request(msg) => {
                        if !self.screen(endpoint, conn, peer, msg, now)? {
                            return Ok(());
                        }
                        let cfg = self.endpoints[endpoint].ike.clone();
                        let mut session = Session::responder(cfg, local, peer);
                        session.set_peer_configs(self.listener_peers(endpoint));
                        fresh = true;
                        self.new_session(endpoint, session, conn, now)
                    }
                    None => return Ok(()),
                }
            }
        };
        let st = &mut self.sessions[index];
        if !st.alive() {
            // Deleted or failed: late messages (the peer's own Delete after ours, RFC 7296
            // §1.4.1) are dropped.
            return Ok(());
        }
        let was_established = st.session.is_established();
        let (outputs, verdict) = match st.session.handle_verified(msg, now) {
            Ok(o) => o,
            Err(e) => {
                self.events.push_back(DriverEvent::Failed {
                    endpoint,
                    reason: Failure::Session(e),
                });
                return Ok(());
            }
        };
        // An IKE_SA_INIT the new session could not answer (malformed: no SA, KE or nonce, a
        // broken payload chain) leaves no state behind (RFC 7296 §2.6, §2.21.1): without this
        // the session would hold its connection, and a half-open slot, until the half-open
        // timeout.
        if fresh && !outputs.iter().any(|o| matches!(o, Output::Send(_))) {
            st.dropped = true;
            self.events.push_back(DriverEvent::InitDropped { endpoint });
            self.session_changed(index);
            return Ok(());
        }
        // IKE_AUTH may have chosen another peer configuration of this listener by IDi.
        if let Some(chosen) = st.session.chosen_peer().map(EndpointId::from_token)
            && chosen != st.endpoint
        {
            self.rehome(index, chosen, conn);
        }
        let st = &mut self.sessions[index];
        let answered = !matches!(
            outputs.as_slice(),
            [Output::Event(
                SessionEvent::Dropped(_) | SessionEvent::IntegrityFailure
            )]
        );
        if answered {
            // The peer answers: reconnecting works.
            st.reconnects = 0;
            if st.conn == Some(conn) {
                st.answered_here = true;
                st.unanswered_paths = 0;
            }
        }
        // RFC 9329 §6.1 (R-6.1-t) and §10 (R-10-e): the Responder moves an IKE SA to the
        // connection of the most recent message that was decrypted, authenticated and not a
        // retransmission; anything else on another connection (forged, replayed, corrupt)
        // moves nothing. Our own request waiting for its answer follows unless this message
        // was that answer.
        if verdict == Verdict::Fresh && responder && st.conn != Some(conn) {
            if was_established {
                self.adopt(index, conn, is_request(msg))?;
            } else {
                // IKE_AUTH on a new connection: `finish` binds the new IKE SA there.
                self.attach(index, conn);
            }
        }
        self.finish(index, outputs, Some(conn), now)
    }

    /// Continues the session that handed out the puzzle job of `answer` (see
    /// [`DriverEvent::SolvePuzzle`]): its IKE_SA_INIT retry goes out. An answer no live session
    /// waits for is ignored.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn puzzle_solved(
        &mut self,
        ike_sa: IkeSaId,
        answer: PuzzleAnswer,
        now: Instant,
    ) -> Result<(), DriverError> {
        self.now = now;
        let i = ike_sa;
        let Some(st) = self.sessions.get_mut(i).filter(|s| s.alive()) else {
            return Ok(());
        };
        match st.session.puzzle_solved(answer, now) {
            Ok(outputs) => self.finish(i, outputs, None, now),
            Err(_) => Ok(()),
        }
    }

    /// Acts on what a session call produced: its events, its lifecycle events (installing and
    /// deleting SAs) and its messages, which wait for the ack of an inbound SA installed here.
    /// `arrived` is the connection of the message the call handled: responses go back on it
    /// (a retransmitted request on a new connection is answered there without moving the
    /// path), and an integrity failure closes it, never another connection (R-6.1-o).
    pub(super) fn finish(
        &mut self,
        index: IkeSaId,
        outputs: Vec<Output>,
        arrived: Option<Conn>,
        now: Instant,
    ) -> Result<(), DriverError> {
        let r = self.act(index, outputs, arrived, now);
        self.session_changed(index);
        if let Some(a) = arrived {
            self.conn_changed(a);
        }
        r
    }

    fn act(
        &mut self,
        index: IkeSaId,
        outputs: Vec<Output>,
        arrived: Option<Conn>,
        now: Instant,
    ) -> Result<(), DriverError> {
        let endpoint = self.sessions[index].endpoint;
        let ike_sa = index;
        let conn = self.sessions[index].conn;
        let mut sends: Vec<Vec<u8>> = Vec::new();
        let mut first = None;
        let mut close = false;
        let mut sa_events = Vec::new();
        for o in outputs {
            match o {
                Output::Send(m) => sends.push(m),
                Output::Sa(ev) => sa_events.push(ev),
                // RFC 8019 §7.1.2: solved by the owner, off the driver's thread.
                Output::SolvePuzzle(job) => {
                    self.events.push_back(DriverEvent::SolvePuzzle {
                        endpoint,
                        ike_sa,
                        job,
                    });
                }
                Output::Event(SessionEvent::IkeSaUp {
                    spi_i,
                    spi_r,
                    suite,
                    nat_local,
                    nat_remote,
                }) => {
                    self.ike_sa_born(index, now);
                    self.keylog_ike(index);
                    self.events.push_back(DriverEvent::IkeSaUp {
                        endpoint,
                        ike_sa,
                        spi_i,
                        spi_r,
                        suite,
                        nat: (nat_local, nat_remote),
                    });
                }
                Output::Event(SessionEvent::ChildSaUp(c)) => first = Some(c),
                Output::Event(SessionEvent::ChildSaFailed(n)) => {
                    self.events.push_back(DriverEvent::Failed {
                        endpoint,
                        reason: Failure::ChildSaRefused(n),
                    });
                }
                Output::Event(SessionEvent::Failed(r)) => {
                    self.events.push_back(DriverEvent::Failed {
                        endpoint,
                        reason: Failure::IkeSa(r),
                    });
                }
                Output::Event(SessionEvent::IntegrityFailure) => {
                    // An IKE message with this connection's SPIs failed its integrity check:
                    // the stream is corrupt or injected (RFC 9329 §6.1, R-6.1-o). The SAs stay.
                    self.events
                        .push_back(DriverEvent::IntegrityFailure { endpoint });
                    close = true;
                }
                Output::Event(SessionEvent::Dropped(_)) => {}
            }
        }
        // The ack of the last inbound SA installed here: the messages wait for it.
        let mut hold = None;
        if let (Some(c), Some(conn)) = (first, conn)
            && let Some((child, ack, out, selectors)) = self.install_child(index, &c, conn, now)?
        {
            hold = Some(ack);
            // Bound first: the outbound SA's ack (and `ChildSaInstalled`) then means traffic
            // has a connection.
            self.bind(ike_sa, conn)?;
            self.install_outbound(child, out, selectors)?;
        }
        for ev in sa_events {
            if let Some(ack) = self.on_sa_event(index, ev, now)? {
                hold = Some(ack);
            }
        }
        // Our request waiting for its response, to re-send on a new connection (R-6.2-b).
        let st = &mut self.sessions[index];
        if let Some(req) = sends.iter().rev().find(|m| is_request(m)) {
            st.outstanding = Some(req.clone());
        } else if st.session.is_established() && !st.session.has_outstanding() {
            st.outstanding = None;
        }
        if close && let Some(bad) = arrived.or(conn) {
            // An IKE message failed its integrity check on `bad`: the stream is corrupt or
            // injected (RFC 9329 §6.1, R-6.1-o). That connection closes; the SAs stay.
            self.close(bad, true)?;
        }
        let held = match hold.and_then(|a| self.pending.get_mut(&a)) {
            Some(Pending::Inbound { held, .. }) => Some(held),
            _ => None,
        };
        let mut unsent = false;
        if let Some(held) = held {
            held.extend(sends);
        } else {
            for msg in sends {
                // Requests go on the IKE SA's connection, responses back where the request
                // came from (RFC 7296 §2.11; RFC 9329 §6.1).
                let to = if is_request(&msg) {
                    conn
                } else {
                    arrived.or(conn)
                };
                match to {
                    Some(to) => self.send(to.worker, Command::SendIke { conn: to.id, msg })?,
                    None => unsent = true,
                }
            }
        }
        let st = &mut self.sessions[index];
        let Some(conn) = conn else {
            // A request and no connection: a TCP Originator dials (a Responder waits).
            if unsent && st.alive() && !st.connecting {
                st.reconnects = 0;
                self.reconnect(index, now)?;
            }
            return Ok(());
        };
        let dead = !st.alive();
        if !close && dead && self.is_originator(endpoint) && !self.conn_in_use(conn, index) {
            // The IKE SA is gone: the TCP Originator closes its connection (RFC 9329 §6.1,
            // R-6.1-d) after the last message (a Delete response) went out.
            self.close(conn, false)?;
        }
        Ok(())
    }

    /// Screens an IKE_SA_INIT request before a responder session is created for it: whether
    /// to go on. A stateless cookie (and puzzle) reply goes out here, and the connection is
    /// closed if no repeated request follows (RFC 9329 §6.3, R-6.3-a/b).
    fn screen(
        &mut self,
        endpoint: EndpointId,
        conn: Conn,
        peer: SocketAddr,
        msg: &[u8],
        now: Instant,
    ) -> Result<bool, DriverError> {
        let EndpointRole::Responder { listen } = self.endpoints[endpoint].role else {
            return Ok(false);
        };
        if !self.init_rate_ok(endpoint, peer, now) {
            self.events.push_back(DriverEvent::InitDropped { endpoint });
            return Ok(false);
        }
        let half_open = self.half_open_n.get(&listen).copied().unwrap_or(0);
        let Some(jar) = self.jars.get_mut(&listen) else {
            return Ok(true);
        };
        jar.rotate_if_due(now).map_err(DriverError::Rng)?;
        let retry_wait = jar.policy().retry_wait;
        match jar.screen(msg, peer.ip(), half_open) {
            Screen::Accept => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.cookie_wait = None;
                }
                Ok(true)
            }
            Screen::Reply(r) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.cookie_wait = Some(now + retry_wait);
                }
                self.conn_changed(conn);
                self.events.push_back(DriverEvent::CookieSent {
                    endpoint,
                    kind: r.kind,
                });
                self.send(
                    conn.worker,
                    Command::SendIke {
                        conn: conn.id,
                        msg: r.message,
                    },
                )?;
                Ok(false)
            }
            Screen::Drop(_) => {
                self.events.push_back(DriverEvent::InitDropped { endpoint });
                Ok(false)
            }
        }
    }

    /// Endpoints `a` and `b` are the same Responder listening on several workers (one endpoint
    /// per worker, one address): a session of one may continue on a connection of the other.
    /// Whether one more IKE_SA_INIT from `peer` fits its source's rate this second. The table
    /// is cleared every second and holds at most [`INIT_RATE_SOURCES`] sources; past that, new
    /// sources wait for the next second.
    fn init_rate_ok(&mut self, endpoint: EndpointId, peer: SocketAddr, now: Instant) -> bool {
        let limit = self.endpoints[endpoint].cookies.init_rate_per_source;
        if limit == 0 {
            return true;
        }
        let (start, counts) = &mut self.init_rate;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            counts.clear();
        }
        let source = iketcp_dataplane::transport::source_group(peer.ip());
        let known = counts.contains_key(&source);
        if !known && counts.len() >= INIT_RATE_SOURCES {
            return false;
        }
        let n = counts.entry(source).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub(super) fn same_listener(&self, a: EndpointId, b: EndpointId) -> bool {
        if a == b {
            return true;
        }
        match (
            self.endpoints.get(a).map(|e| e.role),
            self.endpoints.get(b).map(|e| e.role),
        ) {
            (
                Some(EndpointRole::Responder { listen: x }),
                Some(EndpointRole::Responder { listen: y }),
            ) => x == y,
            _ => false,
        }
    }

    fn is_originator(&self, endpoint: EndpointId) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|e| matches!(e.role, EndpointRole::Originator { .. }))
    }

    /// Whether a live session other than `except` uses `conn` (a connection carries one IKE
    /// SA, R-6.1-l: the one it names).
    fn conn_in_use(&self, conn: Conn, except: IkeSaId) -> bool {
        self.conns
            .get(&conn)
            .and_then(|c| c.session)
            .filter(|&i| i != except)
            .and_then(|i| self.sessions.get(i))
            .is_some_and(|s| s.conn == Some(conn) && s.alive())
    }
}
