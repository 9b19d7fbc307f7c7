//! Connections and IKE messages: sessions created, continued and reconnected.

use super::*;

impl Driver {
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

    pub(super) fn new_session(&mut self, endpoint: usize, session: Session, conn: Conn) -> usize {
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

    pub(super) fn on_conn_down(
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
    pub(super) fn find_responder_session(&self, endpoint: usize, msg: &[u8]) -> Option<usize> {
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

    pub(super) fn on_ike(&mut self, conn: Conn, msg: &[u8], now: Instant) -> Result<(), DriverError> {
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
    pub(super) fn finish(
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
}
