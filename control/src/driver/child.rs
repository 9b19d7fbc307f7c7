//! SA lifecycle: installs, rekeys, switches and deletes of ESP SAs in the workers.

use super::*;
use crate::ike::crypto::EspSuite;
use iketcp_dataplane::crypto::Suite;

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

/// The data plane's AEAD for a negotiated ESP transform: the protocol side has its own type,
/// so `ike/` does not depend on the data plane.
impl From<EspSuite> for Suite {
    fn from(s: EspSuite) -> Suite {
        match s {
            EspSuite::AesGcm16_128 => Suite::Aes128Gcm16,
            EspSuite::AesGcm16_256 => Suite::Aes256Gcm16,
            EspSuite::ChaCha20Poly1305 => Suite::ChaCha20Poly1305,
        }
    }
}

/// The ESP transform to propose for a data-plane AEAD (the demo's `--suite`).
impl From<Suite> for EspSuite {
    fn from(s: Suite) -> EspSuite {
        match s {
            Suite::Aes128Gcm16 => EspSuite::AesGcm16_128,
            Suite::Aes256Gcm16 => EspSuite::AesGcm16_256,
            Suite::ChaCha20Poly1305 => EspSuite::ChaCha20Poly1305,
        }
    }
}

fn sa_params(
    spi: u32,
    child: &ChildSa,
    keymat: &[u8],
    (backend, replay_window): (Backend, u32),
) -> Result<SaParams, SaError> {
    let km = Keymat::new(child.suite.into(), keymat).map_err(SaError::Crypto)?;
    let mut p = SaParams::new(spi, km, backend);
    p.esn = child.esn;
    p.replay_window = replay_window;
    p.mode = Mode::Tunnel;
    Ok(p)
}

impl Core {
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
        endpoint: EndpointId,
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
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.rekey_ikes(Some(endpoint), now)
    }

    /// Starts a rekey of session `i`'s Child SA `spi_in` and sends the request. The inner error
    /// is the session's refusal (busy with another exchange, no such Child SA); the outer one a
    /// local fault.
    pub(super) fn start_child_rekey(
        &mut self,
        i: IkeSaId,
        spi_in: u32,
        pfs: bool,
        now: Instant,
    ) -> Result<Result<(), SessionError>, DriverError> {
        match self.sessions[i].session.rekey_child(spi_in, pfs, now) {
            Ok(msg) => {
                self.child_rekeying.push((i, spi_in));
                self.finish(i, vec![Output::Send(msg)], None, now)?;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Starts a rekey of session `i`'s IKE SA and sends the request; errors as for
    /// [`start_child_rekey`](Self::start_child_rekey).
    pub(super) fn start_ike_rekey(
        &mut self,
        i: IkeSaId,
        now: Instant,
    ) -> Result<Result<(), SessionError>, DriverError> {
        match self.sessions[i].session.rekey_ike(now) {
            Ok(msg) => {
                self.ike_rekeying.push(i);
                self.finish(i, vec![Output::Send(msg)], None, now)?;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Session `i` (of `endpoint`, if given) can start a rekey now: established, connected.
    fn rekeyable(&self, i: IkeSaId, endpoint: Option<EndpointId>) -> bool {
        let st = &self.sessions[i];
        endpoint.is_none_or(|e| e == st.endpoint)
            && st.alive()
            && st.session.is_established()
            && st.conn.is_some()
    }

    pub(super) fn rekey_children(
        &mut self,
        endpoint: Option<EndpointId>,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let mut started = 0;
        for i in self.sessions.handles() {
            if !self.rekeyable(i, endpoint) {
                continue;
            }
            let current: Vec<u32> = self.sessions[i]
                .children
                .iter()
                .filter(|&&k| !self.retiring.contains(k))
                .filter_map(|&k| self.children.get(k))
                .filter(|c| c.inbound_ok && c.outbound_ok)
                .map(|c| c.spi_in)
                .collect();
            // With PFS when the endpoint asks for it (a peer with libreswan's default
            // `pfs=yes` refuses a rekey without a KE payload).
            let pfs = self.pfs_of(i);
            for spi_in in current {
                match self.start_child_rekey(i, spi_in, pfs, now)? {
                    Ok(()) => started += 1,
                    // Window size 1: the others wait for the next call.
                    Err(_) => break,
                }
            }
        }
        Ok(started)
    }

    /// Whether Child SA rekeys of session `i` use PFS (its endpoint's time limits say).
    fn pfs_of(&self, i: IkeSaId) -> bool {
        self.endpoints
            .get(self.sessions[i].endpoint)
            .is_some_and(|e| e.limits.pfs)
    }

    /// The session of `endpoint` holding the live Child SA with inbound SPI `spi_in`, if it can
    /// start an exchange now.
    fn session_of_child(&self, endpoint: EndpointId, spi_in: u32) -> Option<IkeSaId> {
        let c = self.children.get(*self.child_by_spi_in.get(&spi_in)?)?;
        let i = c.session;
        (c.inbound_ok && c.outbound_ok && self.rekeyable(i, Some(endpoint))).then_some(i)
    }

    /// Starts a rekey of one Child SA of `endpoint` (our inbound SPI `spi_in`), with PFS if the
    /// endpoint asks for it. `Ok(false)`: no such installed Child SA, or its IKE SA is busy
    /// with another exchange (window size 1) or not connected.
    ///
    /// # Errors
    /// Local faults only.
    pub fn rekey_child_sa(
        &mut self,
        endpoint: EndpointId,
        spi_in: u32,
        now: Instant,
    ) -> Result<bool, DriverError> {
        let Some(i) = self.session_of_child(endpoint, spi_in) else {
            return Ok(false);
        };
        let pfs = self.pfs_of(i);
        Ok(self.start_child_rekey(i, spi_in, pfs, now)?.is_ok())
    }

    /// Deletes one Child SA of `endpoint` (our inbound SPI `spi_in`) with an INFORMATIONAL
    /// Delete (RFC 7296 §1.4.1); the IKE SA and its other Child SAs stay. `Ok(false)` as for
    /// [`rekey_child_sa`](Self::rekey_child_sa).
    ///
    /// # Errors
    /// Local faults only.
    pub fn delete_child_sa(
        &mut self,
        endpoint: EndpointId,
        spi_in: u32,
        now: Instant,
    ) -> Result<bool, DriverError> {
        let Some(i) = self.session_of_child(endpoint, spi_in) else {
            return Ok(false);
        };
        self.start_request(i, |s| s.delete_child(spi_in, now), now)
    }

    /// Asks each established IKE SA of `endpoint` for an additional Child SA with the
    /// configured proposals and selectors (RFC 7296 §1.3.1); returns how many requests went out.
    ///
    /// # Errors
    /// Local faults only.
    pub fn create_child_sas(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.request_each(endpoint, |s| s.create_child(now), now)
    }

    /// Sends a liveness check (an empty INFORMATIONAL request, RFC 7296 §2.4) on each
    /// established IKE SA of `endpoint` that has no request outstanding; returns how many.
    /// An IKE SA whose peer does not answer within the exchange timeout is deleted.
    ///
    /// # Errors
    /// Local faults only.
    pub fn check_liveness(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.request_each(endpoint, |s| s.start_dpd(now), now)
    }

    /// [`start_request`](Self::start_request) on each established, connected IKE SA of
    /// `endpoint`; returns how many requests went out.
    fn request_each(
        &mut self,
        endpoint: EndpointId,
        make: impl Fn(&mut Session) -> Result<Vec<u8>, SessionError>,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let mut n = 0;
        for i in self.sessions.handles() {
            if self.rekeyable(i, Some(endpoint)) && self.start_request(i, &make, now)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Builds a request with `make` on session `i` and sends it; `Ok(false)` if the session
    /// refused (busy, unknown Child SA).
    pub(super) fn start_request(
        &mut self,
        i: IkeSaId,
        make: impl FnOnce(&mut Session) -> Result<Vec<u8>, SessionError>,
        now: Instant,
    ) -> Result<bool, DriverError> {
        match make(&mut self.sessions[i].session) {
            Ok(msg) => {
                self.finish(i, vec![Output::Send(msg)], None, now)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Starts a rekey of the IKE SA of every established session and sends the requests;
    /// returns how many were started. Sessions with a request outstanding are skipped.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn rekey_ike_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        self.rekey_ikes(None, now)
    }

    pub(super) fn rekey_ikes(
        &mut self,
        endpoint: Option<EndpointId>,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let mut started = 0;
        for i in self.sessions.handles() {
            if !self.rekeyable(i, endpoint) {
                continue;
            }
            if self.start_ike_rekey(i, now)?.is_ok() {
                started += 1;
            }
        }
        Ok(started)
    }

    /// One lifecycle event of session `index`; returns the ack of an inbound SA it installed.
    pub(super) fn on_sa_event(
        &mut self,
        index: IkeSaId,
        ev: SaEvent,
        now: Instant,
    ) -> Result<Option<u64>, DriverError> {
        let endpoint = self.sessions[index].endpoint;
        let ike_sa = index;
        let conn = self.sessions[index].conn;
        match ev {
            SaEvent::ChildSaCreated(c) => {
                let Some(conn) = conn else { return Ok(None) };
                let Some((child, ack, out, selectors)) =
                    self.install_child(index, &c, conn, now)?
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
                initiator,
            } => {
                self.events.push_back(DriverEvent::ChildSaRekeyed {
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
                let Some((child, ack, out, selectors)) =
                    self.install_child(index, &new, conn, now)?
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
                let rekeying = self
                    .child_rekeying
                    .iter()
                    .position(|r| *r == (index, old_spi_in));
                // Both ends rekeyed the same Child SA (RFC 7296 §2.8.1): which new SA survives
                // shows when one of them (or the old one) is deleted; until then nothing moves.
                // Answering the peer's rekey while ours is outstanding is a collision too: our
                // own rekey's result is still to come.
                let collision = self.switches.iter().any(|x| x.old == old)
                    || (!initiator && rekeying.is_some());
                if let Some(k) = rekeying.filter(|_| initiator) {
                    self.child_rekeying.remove(k);
                    self.child_rekeys += 1;
                }
                if initiator && !collision {
                    // We started it: the peer has the new inbound SA already (its response
                    // left after the install), so traffic moves now.
                    self.switch(w, now)?;
                } else {
                    // The peer's rekey: it installs its inbound SA when our response arrives;
                    // switch when its Delete of the old SA comes.
                    self.switches.push(w);
                    self.arm(Timer::Switches);
                }
                Ok(Some(ack))
            }
            SaEvent::ChildSaDeleted { spi_in, .. } => {
                let Some(child) = self.find_child(index, spi_in) else {
                    return Ok(None);
                };
                let old_of = |d: &Self, c: ChildSaId| {
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
                if self.retiring.contains(child) {
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
                self.retire(child, now);
                Ok(None)
            }
            SaEvent::IkeSaRekeyed { spi_i, spi_r } => {
                if let Some(k) = self.ike_rekeying.iter().position(|s| *s == index) {
                    self.ike_rekeying.remove(k);
                    self.ike_rekeys += 1;
                }
                self.ike_sa_born(index, now);
                self.keylog_ike(index);
                self.events.push_back(DriverEvent::IkeSaRekeyed {
                    endpoint,
                    ike_sa,
                    spi_i,
                    spi_r,
                });
                Ok(None)
            }
            SaEvent::IkeRekeyRefused(notify) => {
                self.ike_rekeying.retain(|s| *s != index);
                self.events.push_back(DriverEvent::Refused {
                    endpoint,
                    ike_sa,
                    what: Refusal::IkeRekey,
                    notify,
                });
                Ok(None)
            }
            SaEvent::ChildSaRefused(notify) => {
                self.child_rekeying.retain(|r| r.0 != index);
                self.events.push_back(DriverEvent::Refused {
                    endpoint,
                    ike_sa,
                    what: Refusal::ChildSa,
                    notify,
                });
                Ok(None)
            }
            SaEvent::OldIkeSaDeleted { .. } => Ok(None),
            SaEvent::IkeSaDeleted => {
                self.switches.retain(|w| w.session != index);
                let mine = self.sessions[index].children.clone();
                for &c in &mine {
                    self.retiring.cancel(c);
                }
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
                    .push_back(DriverEvent::IkeSaDeleted { endpoint, ike_sa });
                Ok(None)
            }
        }
    }

    /// Whether `new` replaced `old` in a rekey we started (its outbound SA is in use already).
    pub(super) fn collided(&self, old: ChildSaId, new: ChildSaId) -> bool {
        self.retiring.contains(old) && self.children.get(new).is_some_and(|c| c.outbound_ok)
    }

    /// The live Child SA of session `index` with this inbound SPI.
    pub(super) fn find_child(&self, index: IkeSaId, spi_in: u32) -> Option<ChildSaId> {
        let c = *self.child_by_spi_in.get(&spi_in)?;
        (self.children.get(c)?.session == index).then_some(c)
    }

    /// Moves traffic from `w.old` to `w.new`: installs the new outbound SA (it takes
    /// precedence), deletes the old one, and deletes the old inbound SA after the grace period.
    pub(super) fn switch(&mut self, w: Switch, now: Instant) -> Result<(), DriverError> {
        self.install_outbound(w.new, w.sa, w.selectors)?;
        self.delete_outbound(w.old)?;
        if !self.retiring.contains(w.old) {
            self.retire(w.old, now);
        }
        Ok(())
    }

    /// Child SA `child`'s inbound SA goes after the grace period (packets in flight with its SPI
    /// still decrypt, RFC 7296 §2.8).
    fn retire(&mut self, child: ChildSaId, now: Instant) {
        self.retiring.push(now + OLD_INBOUND_GRACE, child);
        self.arm(Timer::Retiring);
    }

    pub(super) fn delete_sa(
        &mut self,
        worker: u16,
        spi: u32,
        dir: Direction,
    ) -> Result<(), DriverError> {
        let ack = self.ack();
        self.expect_ack(ack, Pending::Delete);
        self.send(worker, Command::DeleteSa { spi, dir, ack })
    }

    pub(super) fn delete_outbound(&mut self, child: ChildSaId) -> Result<(), DriverError> {
        let Some(c) = self.children.get_mut(child) else {
            return Ok(());
        };
        // An install still in flight is deleted when its ack comes.
        c.unwanted.1 = true;
        if !std::mem::take(&mut c.outbound_ok) {
            return Ok(());
        }
        let (worker, spi) = (c.worker, c.spi_out);
        self.reap_child_later(child);
        self.delete_sa(worker, spi, Direction::Outbound)
    }

    pub(super) fn delete_inbound(&mut self, child: ChildSaId) -> Result<(), DriverError> {
        let Some(c) = self.children.get_mut(child) else {
            return Ok(());
        };
        c.unwanted.0 = true;
        if !std::mem::take(&mut c.inbound_ok) {
            return Ok(());
        }
        let (worker, spi) = (c.worker, c.spi_in);
        self.reap_child_later(child);
        self.delete_sa(worker, spi, Direction::Inbound)
    }

    /// Builds both ESP SAs of `c`, records the Child SA and sends the inbound SA's install;
    /// returns the child index, the install's ack, and the outbound SA with its selectors.
    /// `None` (with a `Failed` event) if the SAs cannot be built.
    #[allow(clippy::type_complexity)]
    pub(super) fn install_child(
        &mut self,
        index: IkeSaId,
        c: &ChildSa,
        conn: Conn,
        now: Instant,
    ) -> Result<Option<(ChildSaId, u64, Box<OutboundSa>, Selectors)>, DriverError> {
        let endpoint = self.sessions[index].endpoint;
        let ike_sa = index;
        let ep = &self.endpoints[endpoint];
        let (sa, lifetime) = ((ep.backend, ep.replay_window), ep.lifetime);
        let built = sa_params(c.spi_in, c, c.keymat_in.expose(), sa)
            .and_then(|p| InboundSa::new(&p))
            .and_then(|i| {
                let p = sa_params(c.spi_out, c, c.keymat_out.expose(), sa)?;
                let o = OutboundSa::new(&p)?;
                Ok((i, o))
            });
        let (inb, out) = match built {
            Ok(x) => x,
            Err(e) => {
                self.events.push_back(DriverEvent::Failed {
                    endpoint,
                    reason: Failure::BuildSa(e),
                });
                return Ok(None);
            }
        };
        self.keylog_child(c, conn);
        let limits = self.endpoints[endpoint].limits;
        let (rekey_at, expire_at) = lifetime::deadlines(now, limits.child_soft, limits.child_hard);
        let selectors = Selectors {
            local: to_spd(&c.ts_local),
            remote: to_spd(&c.ts_remote),
        };
        let child = self.children.insert(ChildState {
            endpoint,
            session: index,
            worker: conn.worker,
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            inbound_ok: false,
            outbound_ok: false,
            rekey_at,
            expire_at,
            selectors: selectors.clone(),
            unwanted: (false, false),
            installed_once: false,
            suite: c.suite,
            esn: c.esn,
            created: now,
            traffic: None,
        });
        self.child_by_spi_in.insert(c.spi_in, child);
        self.child_by_spi_out
            .entry(c.spi_out)
            .or_default()
            .push(child);
        self.sessions[index].children.push(child);
        let ack = self.ack();
        self.expect_ack(
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
        Ok(Some((child, ack, Box::new(out), selectors)))
    }

    /// Sends the install of a Child SA's outbound SA.
    pub(super) fn install_outbound(
        &mut self,
        child: ChildSaId,
        sa: Box<OutboundSa>,
        selectors: Selectors,
    ) -> Result<(), DriverError> {
        let Some(c) = self.children.get(child) else {
            return Ok(());
        };
        let (worker, session) = (c.worker, c.session);
        let ike_sa = session;
        let lifetime = self.endpoints[self.sessions[session].endpoint].lifetime;
        let ack = self.ack();
        self.expect_ack(ack, Pending::Outbound { child });
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

#[cfg(test)]
mod suite_tests {
    use super::*;

    /// The two types name the same transforms: same IDs, same KEYMAT length, and back again.
    #[test]
    fn esp_suite_maps_to_the_same_dataplane_transform() {
        for s in EspSuite::ALL {
            let d = Suite::from(s);
            assert_eq!(d.transform_id(), s.transform_id());
            assert_eq!(d.key_length_attr(), s.key_length_attr());
            assert_eq!(d.keymat_len(), s.keymat_len());
            assert_eq!(EspSuite::from(d), s);
        }
    }
}
