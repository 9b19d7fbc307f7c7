//! SA lifetimes (RFC 7296 §2.8, RFC 4301 §4.4.2.1): Child SAs and IKE SAs are rekeyed when
//! their soft lifetime ends — by time, or by the packet, byte or sequence-number counters the
//! workers report — and deleted at their hard lifetime if still there.
//!
//! Both ends usually run the same lifetimes, so each soft time limit is cut by a random share of
//! up to [`JITTER_PERCENT`] (RFC 7296 §2.8: "the node [...] SHOULD [...] randomize"), which makes
//! simultaneous rekeys (§2.8.1) rare; when they do happen the rekey code resolves them.

use super::*;

/// Largest random share cut off a soft time limit.
pub const JITTER_PERCENT: u64 = 10;

/// Retry delay of a rekey that found the IKE SA busy with another exchange (window size 1).
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// Time limits of an endpoint's SAs; `None` means no time limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeLimits {
    /// A Child SA is rekeyed after this (minus jitter).
    pub child_soft: Option<Duration>,
    /// A Child SA still there after this is deleted.
    pub child_hard: Option<Duration>,
    /// The IKE SA is rekeyed after this (minus jitter).
    pub ike_soft: Option<Duration>,
    /// An IKE SA still there after this is deleted.
    pub ike_hard: Option<Duration>,
    /// Child SA rekeys use a fresh Diffie-Hellman exchange (PFS, RFC 7296 §1.3.1).
    pub pfs: bool,
}

/// `limit` minus a random share of up to [`JITTER_PERCENT`].
fn jittered(limit: Duration) -> Duration {
    let mut b = [0u8; 8];
    // Without randomness the limit is used as is: only collisions become likelier.
    let r = crate::rng::fill(&mut b).map_or(0, |()| u64::from_le_bytes(b));
    let cut_ppm = r % (JITTER_PERCENT * 10_000);
    limit.saturating_sub(limit.mul_f64(cut_ppm as f64 / 1_000_000.0))
}

/// When an SA created at `now` is rekeyed and when it expires under `soft`/`hard`.
pub(super) fn deadlines(
    now: Instant,
    soft: Option<Duration>,
    hard: Option<Duration>,
) -> (Option<Instant>, Option<Instant>) {
    (
        soft.and_then(|s| now.checked_add(jittered(s))),
        hard.and_then(|h| now.checked_add(h)),
    )
}

impl Core {
    /// Session `index` has a new IKE SA (IKE_AUTH or a rekey): its time limits start.
    pub(super) fn ike_sa_born(&mut self, index: IkeSaId, now: Instant) {
        let limits = self.endpoints[self.sessions[index].endpoint].limits;
        let (rekey, expire) = deadlines(now, limits.ike_soft, limits.ike_hard);
        let st = &mut self.sessions[index];
        st.ike_rekey_at = rekey;
        st.ike_expire_at = expire;
        self.arm(Timer::IkeLife(index));
    }

    /// Deletes every established IKE SA with a Delete exchange (RFC 7296 §1.4.1; RFC 9329
    /// §6.1, R-6.1-c); each one's Child SAs go with it when the peer answers or the exchange
    /// times out, and the TCP Originator then closes the connection (R-6.1-d). Returns how many
    /// were started; one busy with another exchange follows shortly.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn delete_ike_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        self.delete_ikes(None, now)
    }

    /// As [`delete_ike_sas`](Self::delete_ike_sas), for the IKE SAs of one endpoint only.
    ///
    /// # Errors
    /// A worker's queue stayed full or the worker is gone.
    pub fn delete_ike_sas_of(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.delete_ikes(Some(endpoint), now)
    }

    fn delete_ikes(
        &mut self,
        endpoint: Option<EndpointId>,
        now: Instant,
    ) -> Result<usize, DriverError> {
        self.now = now;
        let marked: Vec<IkeSaId> = self
            .sessions
            .iter()
            .filter(|(_, st)| {
                endpoint.is_none_or(|e| e == st.endpoint)
                    && st.alive()
                    && st.session.is_established()
            })
            .map(|(i, _)| i)
            .collect();
        for &i in &marked {
            self.expire_ike_now(i, now)?;
        }
        Ok(marked.len())
    }

    /// The IKE SA of session `i` reaches its hard lifetime now: its Delete exchange starts
    /// (or is retried shortly if the IKE SA is busy).
    pub(super) fn expire_ike_now(&mut self, i: IkeSaId, now: Instant) -> Result<(), DriverError> {
        self.sessions[i].ike_expire_at = Some(now);
        self.ike_life(i, now)?;
        self.arm(Timer::IkeLife(i));
        Ok(())
    }

    /// Established IKE SAs.
    pub fn ike_sas(&self) -> usize {
        self.sessions
            .iter()
            .filter(|(_, s)| s.alive() && s.session.is_established())
            .count()
    }

    /// A worker reports an SA's traffic limit: soft starts a rekey of its Child SA, hard (the
    /// worker stopped using the SA) deletes the Child SA.
    pub(super) fn on_expired(
        &mut self,
        worker: u16,
        spi: u32,
        dir: Direction,
        hard: bool,
        now: Instant,
    ) -> Result<(), DriverError> {
        let candidates = match dir {
            Direction::Inbound => self
                .child_by_spi_in
                .get(&spi)
                .copied()
                .into_iter()
                .collect(),
            Direction::Outbound => self.child_by_spi_out.get(&spi).cloned().unwrap_or_default(),
        };
        let Some(c) = candidates.into_iter().find(|&k| {
            self.children.get(k).is_some_and(|c| {
                c.worker == worker
                    && match dir {
                        Direction::Inbound => c.inbound_ok,
                        Direction::Outbound => c.outbound_ok,
                    }
            })
        }) else {
            return Ok(());
        };
        let ch = &mut self.children[c];
        if hard {
            ch.expire_at = Some(now);
        } else if ch.rekey_at.is_none_or(|t| t > now) {
            ch.rekey_at = Some(now);
        }
        if self.child_life_due(c).is_some_and(|t| t <= now) {
            self.child_life(c, now)?;
        }
        self.arm(Timer::ChildLife(c));
        Ok(())
    }

    /// When Child SA `c` is rekeyed or deleted: only while both its SAs are installed, it is
    /// not retiring, its IKE SA lives, and no rekey of it we started is under way.
    pub(super) fn child_life_due(&self, c: ChildSaId) -> Option<Instant> {
        let ch = self.children.get(c)?;
        if !(ch.inbound_ok && ch.outbound_ok) || self.retiring.contains(c) {
            return None;
        }
        if !self.sessions.get(ch.session)?.alive() {
            return None;
        }
        let rekey = ch
            .rekey_at
            .filter(|_| !self.child_rekeying.contains(&(ch.session, ch.spi_in)));
        [ch.expire_at, rekey].into_iter().flatten().min()
    }

    /// When the IKE SA of session `i` is rekeyed or deleted (established and alive only; a
    /// rekey we started is not started again).
    pub(super) fn ike_life_due(&self, i: IkeSaId) -> Option<Instant> {
        let st = self.sessions.get(i)?;
        if !st.alive() || !st.session.is_established() {
            return None;
        }
        let rekey = st.ike_rekey_at.filter(|_| !self.ike_rekeying.contains(&i));
        [st.ike_expire_at, rekey].into_iter().flatten().min()
    }

    /// Rekeys or deletes Child SA `c` if its time came (see [`child_life_due`](Self::child_life_due)).
    pub(super) fn child_life(&mut self, c: ChildSaId, now: Instant) -> Result<(), DriverError> {
        if self.child_life_due(c).is_none_or(|t| t > now) {
            return Ok(());
        }
        let ch = &self.children[c];
        let (index, spi_in) = (ch.session, ch.spi_in);
        if ch.expire_at.is_some_and(|t| t <= now) {
            return self.expire_child(c, now);
        }
        let pfs = self
            .endpoints
            .get(ch.endpoint)
            .is_some_and(|e| e.limits.pfs);
        self.children[c].rekey_at = match self.start_child_rekey(index, spi_in, pfs, now)? {
            Err(SessionError::Busy) => Some(now + BUSY_RETRY),
            Ok(()) | Err(_) => None,
        };
        Ok(())
    }

    /// Rekeys or deletes the IKE SA of session `i` if its time came.
    pub(super) fn ike_life(&mut self, i: IkeSaId, now: Instant) -> Result<(), DriverError> {
        if self.ike_life_due(i).is_none_or(|t| t > now) {
            return Ok(());
        }
        let st = &self.sessions[i];
        if st.ike_expire_at.is_some_and(|t| t <= now) {
            self.sessions[i].ike_expire_at = None;
            // Deleting the IKE SA takes its Child SAs along (RFC 7296 §1.4.1).
            match self.sessions[i].session.delete_ike(now) {
                Ok(msg) => self.finish(i, vec![Output::Send(msg)], None, now)?,
                Err(SessionError::Busy) => {
                    self.sessions[i].ike_expire_at = Some(now + BUSY_RETRY);
                }
                Err(_) => {}
            }
        } else {
            self.sessions[i].ike_rekey_at = match self.start_ike_rekey(i, now)? {
                Err(SessionError::Busy) => Some(now + BUSY_RETRY),
                Ok(()) | Err(_) => None,
            };
        }
        Ok(())
    }

    /// A Child SA reached its hard lifetime: its SAs go at once (they must not carry traffic
    /// any longer) and the peer is told with a Delete (RFC 7296 §1.4.1).
    fn expire_child(&mut self, c: ChildSaId, now: Instant) -> Result<(), DriverError> {
        let (index, spi_in, endpoint) = {
            let ch = &mut self.children[c];
            ch.expire_at = None;
            (ch.session, ch.spi_in, ch.endpoint)
        };
        self.delete_outbound(c)?;
        self.delete_inbound(c)?;
        self.events.push_back(DriverEvent::Failed {
            endpoint,
            reason: Failure::HardLifetime { spi_in },
        });
        match self.sessions[index].session.delete_child(spi_in, now) {
            Ok(msg) => self.finish(index, vec![Output::Send(msg)], None, now),
            // Busy: the peer learns of it from the next Delete or its own lifetime.
            Err(_) => Ok(()),
        }
    }
}
