//! Moving an IKE SA's ESP SAs to the worker that owns its new connection.
//!
//! With several workers behind one port, a reconnecting Originator's new 4-tuple (a NAT may
//! have changed its address or port, RFC 9329 §6.1, R-6.1-h) can hash to another worker than
//! the one holding the SAs. That worker reports the SPI (it knows from the shared
//! [`SpiDirectory`](iketcp_dataplane::worker::SpiDirectory) that the SPI is not
//! corruption), or an IKE message of the IKE SA arrives there. The driver then takes each live
//! SA out of the old worker (`DeleteSa` hands back the SA object, sequence numbers and replay
//! window included), installs the same object on the new worker, and binds the IKE SA to the
//! new connection once all are there. Packets that arrive meanwhile are dropped, never
//! decrypted twice.

use super::*;

/// One IKE SA's SAs on their way to another worker.
#[derive(Debug)]
pub(super) struct Migration {
    session: IkeSaId,
    from: u16,
    to: Conn,
    /// SAs still to come back from the old worker: (SPI, direction, child).
    waiting: Vec<(u32, Direction, ChildSaId)>,
}

impl Migration {
    /// Child SAs on the move.
    pub(super) fn children(&self) -> impl Iterator<Item = ChildSaId> + '_ {
        self.waiting.iter().map(|w| w.2)
    }

    /// The session moving.
    pub(super) fn session(&self) -> IkeSaId {
        self.session
    }
}

impl Core {
    /// Starts moving session `i`'s live Child SAs to `to`'s worker; returns false if all of
    /// them are there already.
    pub(super) fn migrate(&mut self, i: IkeSaId, to: Conn) -> Result<bool, DriverError> {
        if let Some(m) = self.migrations.iter_mut().find(|m| m.session == i) {
            m.to = to;
            return Ok(true);
        }
        let moving: Vec<ChildSaId> = self.sessions[i]
            .children
            .iter()
            .filter_map(|&c| self.children.get(c).map(|ch| (c, ch)))
            .filter(|&(c, ch)| {
                ch.session == i
                    && ch.inbound_ok
                    && ch.outbound_ok
                    && ch.worker != to.worker
                    && !self.retiring.contains(c)
            })
            .map(|(c, _)| c)
            .collect();
        let Some(&first) = moving.first() else {
            return Ok(false);
        };
        let from = self.children[first].worker;
        let mut waiting = Vec::new();
        for c in moving {
            let ch = &mut self.children[c];
            ch.inbound_ok = false;
            ch.outbound_ok = false;
            let (worker, spi_in, spi_out) = (ch.worker, ch.spi_in, ch.spi_out);
            waiting.push((spi_in, Direction::Inbound, c));
            waiting.push((spi_out, Direction::Outbound, c));
            self.delete_sa(worker, spi_in, Direction::Inbound)?;
            self.delete_sa(worker, spi_out, Direction::Outbound)?;
        }
        self.migrations.push(Migration {
            session: i,
            from,
            to,
            waiting,
        });
        Ok(true)
    }

    /// A worker reports ESP for an SPI another worker holds: the owner verifies the packet
    /// (ICV and replay check with the SA's key) before anything moves (RFC 9329 §6.1, R-6.1-t;
    /// §10, R-10-e). One check per connection at a time.
    pub(super) fn on_foreign_esp(
        &mut self,
        conn: Conn,
        spi: u32,
        frame: Vec<u8>,
    ) -> Result<(), DriverError> {
        let Some(endpoint) = self.conns.get(&conn).map(|c| c.endpoint) else {
            return Ok(());
        };
        let Some(c) = self.moving_candidate(conn, endpoint, spi) else {
            return Ok(());
        };
        if self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Verify { conn: x, .. } if *x == conn))
        {
            return Ok(());
        }
        let owner = self.children[c].worker;
        let ack = self.ack();
        self.expect_ack(ack, Pending::Verify { conn, spi });
        self.send(owner, Command::VerifyEsp { spi, frame, ack })
    }

    /// The live Child SA with inbound `spi` held by another worker than `conn`'s, of the same
    /// listener, whose IKE SA is alive.
    fn moving_candidate(&self, conn: Conn, endpoint: EndpointId, spi: u32) -> Option<ChildSaId> {
        let c = *self.child_by_spi_in.get(&spi)?;
        let ch = self.children.get(c)?;
        let ok =
            ch.inbound_ok && ch.worker != conn.worker && self.same_listener(ch.endpoint, endpoint);
        if !ok {
            return None;
        }
        self.sessions[self.children[c].session].alive().then_some(c)
    }

    /// The owner answered a `VerifyEsp`: an authentic packet moves its IKE SA's SAs to `conn`'s
    /// worker; a forged one changes nothing but closes `conn`, which carried it (R-6.1-o).
    pub(super) fn on_verified(
        &mut self,
        conn: Conn,
        spi: u32,
        result: Result<(), CommandError>,
    ) -> Result<(), DriverError> {
        match result {
            Ok(()) => {
                let Some(endpoint) = self.conns.get(&conn).map(|c| c.endpoint) else {
                    return Ok(());
                };
                let Some(c) = self.moving_candidate(conn, endpoint, spi) else {
                    return Ok(());
                };
                let i = self.children[c].session;
                self.attach(i, conn);
                self.migrate(i, conn).map(|_| ())
            }
            Err(CommandError::Verify {
                failure: VerifyFailure::Integrity,
                ..
            }) => {
                if let Some(endpoint) = self.conns.get(&conn).map(|c| c.endpoint) {
                    self.events.push_back(DriverEvent::ForgedEsp {
                        endpoint,
                        conn,
                        spi,
                    });
                }
                self.close(conn, true)
            }
            // A replay or an SA gone meanwhile: nothing moves.
            Err(_) => Ok(()),
        }
    }

    /// An SA came back from a worker: if it is moving, it goes to its new worker (and `None`
    /// is returned); otherwise it is handed back to be dropped.
    pub(super) fn on_removed(&mut self, sa: RemovedSa) -> Result<Option<RemovedSa>, DriverError> {
        let (spi, dir) = match &sa {
            RemovedSa::Inbound(s) => (s.spi(), Direction::Inbound),
            RemovedSa::Outbound(s) => (s.spi(), Direction::Outbound),
        };
        let Some((m, k)) = self.migrations.iter().enumerate().find_map(|(m, mig)| {
            mig.waiting
                .iter()
                .position(|w| w.0 == spi && w.1 == dir)
                .map(|k| (m, k))
        }) else {
            return Ok(Some(sa));
        };
        let (_, _, child) = self.migrations[m].waiting.remove(k);
        let to = self.migrations[m].to;
        let session = self.migrations[m].session;
        let ike_sa = session;
        let lifetime = self.endpoints[self.sessions[session].endpoint].lifetime;
        self.children[child].worker = to.worker;
        let ack = self.ack();
        self.expect_ack(ack, Pending::Moved { child, dir });
        let cmd = match sa {
            RemovedSa::Inbound(sa) => Command::InstallInbound {
                sa,
                ike_sa,
                lifetime,
                ack,
            },
            RemovedSa::Outbound(sa) => Command::InstallOutbound {
                sa,
                ike_sa,
                selectors: self.children[child].selectors.clone(),
                lifetime,
                ack,
            },
        };
        self.send(to.worker, cmd)?;
        if self.migrations[m].waiting.is_empty() {
            let done = self.migrations.remove(m);
            // Traffic of the IKE SA now goes out on the new connection (RFC 9329 §6.1).
            self.send(done.from, Command::ForgetIkeSa { ike_sa })?;
            self.bind(ike_sa, to)?;
            let endpoint = self.sessions[session].endpoint;
            self.events.push_back(DriverEvent::Migrated {
                endpoint,
                ike_sa,
                from: done.from,
                to: to.worker,
            });
        }
        Ok(None)
    }
}
