//! The established IKE SA: INFORMATIONAL (liveness checks and Delete, RFC 7296 §1.4),
//! CREATE_CHILD_SA (new Child SAs, Child SA and IKE SA rekeying, §1.3) and sans-IO timeouts.
//!
//! Message IDs: one outstanding request per direction (window size 1, §2.3); our requests count
//! from `own_next_id`, the peer's from `peer_next_id`, and the last response we sent is cached
//! for a retransmitted request ([`Session::retransmission`], R-6.2-c).
//!
//! Over TCP nothing is retransmitted (RFC 9329 §6.2): a request without an answer within the
//! exchange timeout deletes the IKE SA (R-6.2-a). Liveness is checked with an empty
//! INFORMATIONAL request after a period of inbound silence (R-6.7-a); silence is measured from
//! authenticated IKE messages and inbound ESP reported by the caller, never from TCP activity
//! (R-6.7-c).
//!
//! Lifecycle changes of the IKE SA and its Child SAs are queued as [`SaEvent`]s while a call
//! runs and returned at its end as [`Output::Sa`], ahead of the call's messages.

use super::*;
use crate::ike::wire::{DeletePayload, ProtocolId, Spi};

/// Default for both the exchange timeout and the liveness-check interval.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A lifecycle change of an established IKE SA or its Child SAs.
#[derive(Clone, Debug)]
pub enum SaEvent {
    /// An additional Child SA was created by CREATE_CHILD_SA (RFC 7296 §1.3.1).
    ChildSaCreated(ChildSa),
    /// A Child SA was rekeyed (§1.3.3): install `new`; the old one stays usable for inbound
    /// traffic until its [`SaEvent::ChildSaDeleted`].
    ChildSaRekeyed {
        /// Inbound SPI of the Child SA being replaced.
        old_spi_in: u32,
        /// Outbound SPI of the Child SA being replaced.
        old_spi_out: u32,
        /// The new Child SA.
        new: ChildSa,
        /// Whether we sent the CREATE_CHILD_SA request (the peer then has the new inbound SA
        /// already); `false` when we answered the peer's, even while our own rekey of the same
        /// SA is outstanding (a collision, §2.8.1).
        initiator: bool,
    },
    /// A Child SA was deleted (§1.4.1), by us or by the peer.
    ChildSaDeleted {
        /// Our inbound SPI.
        spi_in: u32,
        /// Our outbound SPI.
        spi_out: u32,
    },
    /// The peer refused our CREATE_CHILD_SA request for a Child SA with this notification
    /// (e.g. TEMPORARY_FAILURE during a collision, §2.25); nothing changed.
    ChildSaRefused(NotifyType),
    /// The IKE SA was rekeyed (§1.3.2): these are the SPIs of the new IKE SA. The Child SAs
    /// move to it; the TCP roles do not change (RFC 9329 R-1.2-a).
    IkeSaRekeyed {
        /// SPI of the new IKE SA's initiator (the rekeying exchange's initiator).
        spi_i: u64,
        /// SPI of the new IKE SA's responder.
        spi_r: u64,
    },
    /// An IKE SA other than the current one has been deleted: the one replaced by a rekey,
    /// or after simultaneous rekeys (§2.8.2) the redundant new one.
    OldIkeSaDeleted {
        /// Its initiator SPI.
        spi_i: u64,
        /// Its responder SPI.
        spi_r: u64,
    },
    /// The peer refused our IKE SA rekey with this notification; the IKE SA is unchanged.
    IkeRekeyRefused(NotifyType),
    /// The IKE SA (and with it every Child SA) is gone: deleted by either side or timed out.
    IkeSaDeleted,
}

/// What our outstanding request is.
#[derive(Debug)]
enum Pending {
    /// Empty INFORMATIONAL: liveness check.
    Dpd,
    /// Delete of the Child SA with this inbound SPI.
    DeleteChild(u32),
    /// Delete of the IKE SA.
    DeleteIke,
    /// CREATE_CHILD_SA for a Child SA: new, or rekeying the one with inbound SPI `rekey`.
    /// `retried`: this is already the retry after INVALID_KE_PAYLOAD (RFC 7296 §1.3).
    Child {
        rekey: Option<u32>,
        spi_in: u32,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        retried: bool,
    },
    /// CREATE_CHILD_SA rekeying the IKE SA, with our new SPI; `retried` as for `Child`.
    IkeRekey {
        spi: u64,
        ni: Vec<u8>,
        ke: KeyExchange,
        retried: bool,
    },
}

impl Pending {
    fn exchange(&self) -> ExchangeType {
        match self {
            Pending::Dpd | Pending::DeleteChild(_) | Pending::DeleteIke => {
                ExchangeType::INFORMATIONAL
            }
            Pending::Child { .. } | Pending::IkeRekey { .. } => ExchangeType::CREATE_CHILD_SA,
        }
    }
}

#[derive(Debug)]
struct Outstanding {
    message_id: u32,
    sent: Instant,
    pending: Pending,
}

/// We answered the peer's rekey of a Child SA that we are rekeying too (RFC 7296 §2.8.1).
#[derive(Debug)]
struct Collision {
    old_spi_in: u32,
    /// The lower nonce of the peer's exchange.
    their_min_nonce: Vec<u8>,
}

/// The IKE SA replaced by a rekey, until its Delete exchange is done.
#[derive(Debug)]
struct OldIke {
    spi_i: u64,
    spi_r: u64,
    role: Role,
    prot: Protection,
    /// Message ID of our Delete request and when it was sent, if we sent one.
    delete_id: Option<u32>,
    sent: Option<Instant>,
    peer_next_id: u32,
}

/// Per-session state of the established IKE SA.
#[derive(Debug)]
pub(super) struct Life {
    pub(super) own_next_id: u32,
    pub(super) peer_next_id: u32,
    outstanding: Option<Outstanding>,
    last_inbound: Option<Instant>,
    last_tcp: Option<Instant>,
    exchange_timeout: Duration,
    dpd_interval: Duration,
    children: Vec<ChildSa>,
    /// Outputs of the current call in the order they happened: lifecycle changes, and the
    /// messages made before them ([`Session::queue`]). Returned at its end ([`Session::emit`]).
    out: Vec<Output>,
    collision: Option<Collision>,
    /// IKE SAs other than the current one, each until its Delete exchange is done: the one
    /// replaced by a rekey, and after simultaneous rekeys the redundant one (§2.8.2).
    side: Vec<OldIke>,
    /// The IKE SA created by the peer's rekey that collided with ours (§2.8.2), until ours
    /// completes and the nonces decide which one survives.
    ike_collision: Option<IkeCandidate>,
    /// Inbound SPIs of Child SAs the peer rekeyed (we answered) and will delete: not ours to
    /// rekey again (§2.8.1: only a rekey that crosses ours is a collision; one started after
    /// we answered would fork the Child SA into two lineages).
    replaced: Vec<u32>,
    /// PFS policy for Child SAs made by CREATE_CHILD_SA: the DH group we require, if any.
    pfs: Option<DhGroup>,
}

/// An IKE SA negotiated but not in use yet.
#[derive(Debug)]
struct IkeCandidate {
    keys: IkeSaKeys,
    suite: IkeSuite,
    spis: (u64, u64),
    /// The lower nonce of its exchange.
    min_nonce: Vec<u8>,
}

impl Default for Life {
    fn default() -> Self {
        Life {
            own_next_id: 0,
            peer_next_id: 0,
            outstanding: None,
            last_inbound: None,
            last_tcp: None,
            exchange_timeout: DEFAULT_TIMEOUT,
            dpd_interval: DEFAULT_TIMEOUT,
            children: Vec::new(),
            out: Vec::new(),
            collision: None,
            side: Vec::new(),
            ike_collision: None,
            replaced: Vec::new(),
            pfs: None,
        }
    }
}

fn delete_payload(protocol: ProtocolId, spis: Vec<u32>) -> Payload {
    Payload::Delete(DeletePayload { protocol, spis })
}

fn find<T>(payloads: &[Payload], f: impl Fn(&Payload) -> Option<&T>) -> Option<&T> {
    payloads.iter().find_map(f)
}

fn protection(keys: IkeSaKeys, role: Role) -> Result<Protection, SessionError> {
    let (out, inb) = keys
        .sk_ciphers(role)
        .map_err(|_| SessionError::Internal("SK keys"))?;
    Ok(Protection { keys, out, inb })
}

/// Child SAs remembered as rekeyed by the peer (a bound: each leaves with its Delete).
const MAX_REPLACED: usize = 1024;

fn min_nonce<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    if a <= b { a } else { b }
}

impl Session {
    /// Our role on the TCP connection: the TCP Originator is the initiator of the first IKE SA
    /// and stays so across IKE SA rekeys (RFC 9329 R-1.2-a), while [`Session::role`] follows
    /// the current IKE SA.
    pub fn tcp_role(&self) -> Role {
        self.tcp_role
    }

    /// How long a request may stay unanswered before the IKE SA is deleted (default 30 s,
    /// RFC 9329 §6.2, R-6.2-a).
    pub fn set_exchange_timeout(&mut self, timeout: Duration) {
        self.life.exchange_timeout = timeout;
    }

    /// Inbound silence after which a liveness check is sent (default 30 s, R-6.7-a).
    pub fn set_dpd_interval(&mut self, interval: Duration) {
        self.life.dpd_interval = interval;
    }

    /// Requires PFS with `group` for every Child SA created or rekeyed by CREATE_CHILD_SA
    /// (`None`, the default: PFS only when a request asks for it). Our own requests then
    /// always carry a KE payload of `group`; a peer's request without one, or with another
    /// group, is answered with INVALID_KE_PAYLOAD naming `group` (RFC 7296 §1.3, §3.10.1).
    pub fn set_child_pfs(&mut self, group: Option<DhGroup>) {
        self.life.pfs = group;
    }

    /// The caller saw authentic inbound ESP on one of our Child SAs: that proves liveness.
    pub fn note_inbound_esp(&mut self, now: Instant) {
        if self.is_established() && self.life.last_inbound.is_none_or(|t| t < now) {
            self.life.last_inbound = Some(now);
        }
    }

    /// The caller saw TCP activity (e.g. a keepalive). Recorded for diagnostics only: it never
    /// counts as liveness of the IKE SA (RFC 9329 §6.7, R-6.7-c).
    pub fn note_tcp_activity(&mut self, now: Instant) {
        self.life.last_tcp = Some(now);
    }

    /// The last TCP activity reported with [`Session::note_tcp_activity`].
    pub fn last_tcp_activity(&self) -> Option<Instant> {
        self.life.last_tcp
    }

    /// When the peer last proved to be alive: the last authenticated IKE message or reported
    /// inbound ESP since the IKE SA came up.
    pub fn last_inbound(&self) -> Option<Instant> {
        self.life.last_inbound
    }

    /// The Child SAs of the IKE SA (including ones being replaced by a rekey).
    pub fn child_sas(&self) -> &[ChildSa] {
        &self.life.children
    }

    /// A lifecycle change, in its place among the outputs of the current call.
    fn sa_event(&mut self, e: SaEvent) {
        self.life.out.push(Output::Sa(e));
    }

    /// Outputs made before a lifecycle change that follows in the same call: they go first.
    fn queue(&mut self, out: Vec<Output>) {
        self.life.out.extend(out);
    }

    /// The outputs of an entry-point call in the order they happened: what was queued while it
    /// ran, then what it returned (see [`Output`]). Settles the inbound SPIs.
    pub(super) fn emit(&mut self, out: Vec<Output>) -> Vec<Output> {
        let all = if self.life.out.is_empty() {
            out
        } else {
            let mut all = core::mem::take(&mut self.life.out);
            all.extend(out);
            all
        };
        self.settle_spis(&all);
        all
    }

    /// An inbound SPI from the pool, ours until handed out in a [`ChildSa`].
    pub(super) fn alloc_spi(&mut self) -> Result<u32, SessionError> {
        let spi = self.cfg.spi_pool.allocate()?;
        self.owned_spis.push(spi);
        Ok(spi)
    }

    /// After a call: SPIs now in a [`ChildSa`] the caller has (`out`) or will get (queued, or
    /// recorded) are the caller's; those still offered in an exchange in progress stay ours;
    /// the rest were for exchanges that made no Child SA (refused, failed, timed out,
    /// superseded) and go back to the pool.
    pub(super) fn settle_spis(&mut self, out: &[Output]) {
        if self.owned_spis.is_empty() {
            return;
        }
        let child_spi = |o: &Output| match o {
            Output::Event(SessionEvent::ChildSaUp(c))
            | Output::Sa(SaEvent::ChildSaCreated(c) | SaEvent::ChildSaRekeyed { new: c, .. }) => {
                Some(c.spi_in)
            }
            _ => None,
        };
        let handed: Vec<u32> = out
            .iter()
            .chain(&self.life.out)
            .filter_map(child_spi)
            .chain(self.life.children.iter().map(|c| c.spi_in))
            .collect();
        let first_pending = matches!(
            self.state,
            State::InitSent { .. } | State::Solving { .. } | State::AuthSent | State::InitDone
        );
        let offered = match &self.life.outstanding {
            Some(Outstanding {
                pending: Pending::Child { spi_in, .. },
                ..
            }) => Some(*spi_in),
            _ => None,
        };
        let first = first_pending.then_some(self.child_spi_in);
        let pool = self.cfg.spi_pool.clone();
        self.owned_spis.retain(|spi| {
            if handed.contains(spi) {
                return false;
            }
            if first == Some(*spi) || offered == Some(*spi) {
                return true;
            }
            pool.release(*spi);
            false
        });
    }

    /// Whether a request of ours is waiting for its response.
    pub fn has_outstanding(&self) -> bool {
        self.life.outstanding.is_some()
    }

    /// Whether the IKE SA has been deleted (by a Delete exchange or a timeout).
    pub fn is_deleted(&self) -> bool {
        matches!(self.state, State::Deleted)
    }

    /// Called once when IKE_AUTH completes: Message IDs continue after the initial exchanges
    /// (RFC 7296 §2.2) and the first Child SA is recorded.
    pub(super) fn enter_established(&mut self, out: &[Output], now: Instant) {
        let (own, peer) = match self.role {
            Role::Initiator => (2, 0),
            Role::Responder => (0, 2),
        };
        self.life.own_next_id = own;
        self.life.peer_next_id = peer;
        self.life.last_inbound = Some(now);
        for o in out {
            if let Output::Event(SessionEvent::ChildSaUp(c)) = o {
                self.life.children.push(c.clone());
            }
        }
    }

    fn ready(&self) -> Result<(), SessionError> {
        if !self.is_established() {
            return Err(SessionError::NotEstablished);
        }
        if self.life.outstanding.is_some() {
            return Err(SessionError::Busy);
        }
        Ok(())
    }

    /// Sends a request with the next Message ID and makes it the outstanding one.
    fn request(
        &mut self,
        pending: Pending,
        inner: &[Payload],
        now: Instant,
    ) -> Result<Vec<u8>, SessionError> {
        self.ready()?;
        let id = self.life.own_next_id;
        let msg = self.seal(self.header(pending.exchange(), false, id), inner)?;
        self.life.own_next_id = id.wrapping_add(1);
        self.life.outstanding = Some(Outstanding {
            message_id: id,
            sent: now,
            pending,
        });
        Ok(msg)
    }

    /// An empty INFORMATIONAL request: liveness check (RFC 7296 §2.4, R-6.7-a).
    ///
    /// # Errors
    /// [`SessionError::NotEstablished`], [`SessionError::Busy`], local faults.
    pub fn start_dpd(&mut self, now: Instant) -> Result<Vec<u8>, SessionError> {
        self.request(Pending::Dpd, &[], now)
    }

    /// Gives up our outstanding liveness check without its response; false (and nothing
    /// changes) if the outstanding request is anything else or there is none. Its Message ID
    /// stays used: the next request takes the one after it. Only for a peer known to have
    /// processed the check and answered where we cannot hear it (an empty INFORMATIONAL
    /// changes nothing in either peer, so no state is lost); see the driver's reconnects.
    pub fn abandon_liveness_check(&mut self) -> bool {
        if !matches!(
            self.life.outstanding,
            Some(Outstanding {
                pending: Pending::Dpd,
                ..
            })
        ) {
            return false;
        }
        self.life.outstanding = None;
        true
    }

    /// A Delete request for the Child SA with inbound SPI `spi_in` (RFC 7296 §1.4.1).
    ///
    /// # Errors
    /// As [`Session::start_dpd`]; [`SessionError::UnknownChildSa`].
    pub fn delete_child(&mut self, spi_in: u32, now: Instant) -> Result<Vec<u8>, SessionError> {
        self.ready()?;
        if !self.life.children.iter().any(|c| c.spi_in == spi_in) {
            return Err(SessionError::UnknownChildSa);
        }
        let del = delete_payload(ProtocolId::ESP, vec![spi_in]);
        self.request(Pending::DeleteChild(spi_in), &[del], now)
    }

    /// A Delete request for the IKE SA and all its Child SAs (RFC 7296 §1.4.1).
    ///
    /// # Errors
    /// As [`Session::start_dpd`].
    pub fn delete_ike(&mut self, now: Instant) -> Result<Vec<u8>, SessionError> {
        let del = delete_payload(ProtocolId::IKE, Vec::new());
        self.request(Pending::DeleteIke, &[del], now)
    }

    /// A CREATE_CHILD_SA request for an additional Child SA with the configured proposals and
    /// traffic selectors (RFC 7296 §1.3.1), without PFS unless [`Session::set_child_pfs`]
    /// requires it.
    ///
    /// # Errors
    /// As [`Session::start_dpd`].
    pub fn create_child(&mut self, now: Instant) -> Result<Vec<u8>, SessionError> {
        self.ready()?;
        let r = self.child_request(None, self.life.pfs, false, now);
        self.settled(r)
    }

    /// A CREATE_CHILD_SA request rekeying the Child SA with inbound SPI `spi_in` (RFC 7296
    /// §1.3.3), with a KE payload for PFS if `pfs` (of the group set with
    /// [`Session::set_child_pfs`], else of the IKE SA's group; that policy also makes PFS
    /// mandatory).
    ///
    /// # Errors
    /// As [`Session::delete_child`].
    pub fn rekey_child(
        &mut self,
        spi_in: u32,
        pfs: bool,
        now: Instant,
    ) -> Result<Vec<u8>, SessionError> {
        self.ready()?;
        if self.life.replaced.contains(&spi_in) {
            // The peer rekeyed it already; its Delete of it is coming.
            return Err(SessionError::UnknownChildSa);
        }
        let group = match (self.life.pfs, pfs) {
            (Some(g), _) => Some(g),
            (None, true) => Some(self.suite.ok_or(SessionError::Internal("no suite"))?.dh()),
            (None, false) => None,
        };
        let r = self.child_request(Some(spi_in), group, false, now);
        self.settled(r)
    }

    /// A call's result; after an error the SPI it may have taken goes back to the pool.
    fn settled<T>(&mut self, r: Result<T, SessionError>) -> Result<T, SessionError> {
        if r.is_err() {
            self.settle_spis(&[]);
        }
        r
    }

    /// Sends a CREATE_CHILD_SA request for a new Child SA or, with `rekey`, for rekeying the
    /// Child SA with that inbound SPI; with a KE payload of `group` if given (PFS).
    fn child_request(
        &mut self,
        rekey: Option<u32>,
        group: Option<DhGroup>,
        retried: bool,
        now: Instant,
    ) -> Result<Vec<u8>, SessionError> {
        let (ts_local, ts_remote) = match rekey {
            None => (self.cfg.ts_local.clone(), self.cfg.ts_remote.clone()),
            Some(old_in) => {
                let old = self
                    .life
                    .children
                    .iter()
                    .find(|c| c.spi_in == old_in)
                    .ok_or(SessionError::UnknownChildSa)?;
                (old.ts_local.clone(), old.ts_remote.clone())
            }
        };
        let new_spi = self.alloc_spi()?;
        let ni = random::<NONCE_LEN>()?.to_vec();
        let mut inner = Vec::new();
        if let Some(old_in) = rekey {
            let mut n = NotifyPayload::new(NotifyType::REKEY_SA, Vec::new());
            n.protocol = ProtocolId::ESP;
            n.spi = Spi::U32(old_in);
            inner.push(Payload::Notify(n));
        }
        inner.push(Payload::Sa(proposal::esp_offer_pfs(
            &self.cfg.esp_proposals,
            new_spi,
            group,
        )));
        inner.push(Payload::Nonce(ni.clone()));
        let ke = match group {
            Some(g) => {
                let (ke, public) = KeyExchange::generate(g).map_err(|_| SessionError::Rng)?;
                inner.push(Payload::Ke(KePayload {
                    group: g.transform_id(),
                    data: public,
                }));
                Some(ke)
            }
            None => None,
        };
        inner.push(Payload::TsI(TsPayload {
            selectors: ts_local,
        }));
        inner.push(Payload::TsR(TsPayload {
            selectors: ts_remote,
        }));
        let pending = Pending::Child {
            rekey,
            spi_in: new_spi,
            ni,
            ke,
            retried,
        };
        self.request(pending, &inner, now)
    }

    /// DH groups we accept for a Child SA's PFS, most preferred first: the required one if
    /// [`Session::set_child_pfs`] set it, else the IKE SA's group and those of our IKE proposals.
    fn pfs_groups(&self) -> Vec<DhGroup> {
        if let Some(g) = self.life.pfs {
            return vec![g];
        }
        let mut groups: Vec<DhGroup> = self.suite.map(|s| s.dh()).into_iter().collect();
        for s in &self.cfg.ike_proposals {
            if !groups.contains(&s.dh()) {
                groups.push(s.dh());
            }
        }
        groups
    }

    /// The group of our KE in an IKE SA rekey (`group`, by default the current IKE SA's) and
    /// the suites offered: every configured one, those of that group first, so the peer may
    /// pick another group and ask for it with INVALID_KE_PAYLOAD (RFC 7296 §1.3.2, §1.2).
    fn ike_rekey_offer(
        &self,
        group: Option<DhGroup>,
    ) -> Result<(DhGroup, Vec<IkeSuite>), SessionError> {
        let group = match group {
            Some(g) => g,
            None => self.suite.ok_or(SessionError::Internal("no suite"))?.dh(),
        };
        let mut offer = self.cfg.ike_proposals.clone();
        offer.sort_by_key(|s| s.dh() != group);
        Ok((group, offer))
    }

    /// A CREATE_CHILD_SA request rekeying the IKE SA (RFC 7296 §1.3.2). When it completes we
    /// are the initiator of the new IKE SA, but the TCP roles stay (R-1.2-a).
    ///
    /// # Errors
    /// As [`Session::start_dpd`].
    pub fn rekey_ike(&mut self, now: Instant) -> Result<Vec<u8>, SessionError> {
        self.ready()?;
        self.ike_rekey_request(None, false, now)
    }

    /// An IKE SA rekey request with a KE of `group` (default: the current one).
    fn ike_rekey_request(
        &mut self,
        group: Option<DhGroup>,
        retried: bool,
        now: Instant,
    ) -> Result<Vec<u8>, SessionError> {
        let (group, offer) = self.ike_rekey_offer(group)?;
        let spi = random_ike_spi()?;
        let ni = random::<NONCE_LEN>()?.to_vec();
        let (ke, public) = KeyExchange::generate(group).map_err(|_| SessionError::Rng)?;
        let inner = [
            Payload::Sa(proposal::with_ike_spi(proposal::ike_offer(&offer), spi)),
            Payload::Nonce(ni.clone()),
            Payload::Ke(KePayload {
                group: group.transform_id(),
                data: public,
            }),
        ];
        self.request(
            Pending::IkeRekey {
                spi,
                ni,
                ke,
                retried,
            },
            &inner,
            now,
        )
    }

    /// When [`Session::handle_timeout`] wants to be called: the exchange timeout of the
    /// outstanding request, else the end of the liveness interval (or earlier, the exchange
    /// timeout of a Delete sent on an IKE SA replaced by a rekey).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let side = self
            .life
            .side
            .iter()
            .filter_map(|o| o.sent?.checked_add(self.life.exchange_timeout))
            .min();
        match (self.main_timeout(), side) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn main_timeout(&self) -> Option<Instant> {
        let l = &self.life;
        match self.state {
            State::InitSent { .. } | State::AuthSent => self
                .last_activity
                .and_then(|t| t.checked_add(l.exchange_timeout)),
            State::Established => match &l.outstanding {
                Some(o) => o.sent.checked_add(l.exchange_timeout),
                None => l.last_inbound.and_then(|t| t.checked_add(l.dpd_interval)),
            },
            _ => None,
        }
    }

    /// Acts on an expired timeout: an unanswered request deletes the IKE SA (R-6.2-a, giving
    /// [`SaEvent::IkeSaDeleted`], then [`SessionEvent::Failed`] with [`FailReason::Timeout`]);
    /// inbound silence starts a liveness check (R-6.7-a), returned as a message to send.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let out = self.timeout_inner(now);
        self.emit(out)
    }

    fn timeout_inner(&mut self, now: Instant) -> Vec<Output> {
        // A replaced IKE SA whose Delete went unanswered is just dropped.
        let limit = self.life.exchange_timeout;
        let (expired, kept): (Vec<OldIke>, Vec<OldIke>) = core::mem::take(&mut self.life.side)
            .into_iter()
            .partition(|o| {
                o.sent
                    .and_then(|t| t.checked_add(limit))
                    .is_some_and(|t| t <= now)
            });
        self.life.side = kept;
        for o in expired {
            self.sa_event(SaEvent::OldIkeSaDeleted {
                spi_i: o.spi_i,
                spi_r: o.spi_r,
            });
        }
        let Some(at) = self.main_timeout() else {
            return Vec::new();
        };
        if now < at {
            return Vec::new();
        }
        if self.is_established() && self.life.outstanding.is_none() {
            return match self.start_dpd(now) {
                Ok(m) => vec![Output::Send(m)],
                Err(_) => Vec::new(),
            };
        }
        if self.is_established() {
            self.ike_deleted();
        } else {
            self.state = State::Failed;
        }
        vec![Output::Event(SessionEvent::Failed(FailReason::Timeout))]
    }

    fn ike_deleted(&mut self) {
        self.state = State::Deleted;
        self.life.outstanding = None;
        self.life.side.clear();
        self.life.ike_collision = None;
        self.life.collision = None;
        self.life.children.clear();
        self.life.replaced.clear();
        self.sa_event(SaEvent::IkeSaDeleted);
    }

    fn remove_child_in(&mut self, spi_in: u32) {
        self.life.replaced.retain(|&x| x != spi_in);
        if let Some(pos) = self.life.children.iter().position(|c| c.spi_in == spi_in) {
            let c = self.life.children.remove(pos);
            self.sa_event(SaEvent::ChildSaDeleted {
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
    }

    /// Answers the peer's request (cached for a retransmission) and expects the next one.
    fn answer(
        &mut self,
        msg: &[u8],
        h: &Header,
        inner: &[Payload],
    ) -> Result<Output, SessionError> {
        let out = self.respond(msg, h, inner)?;
        self.life.peer_next_id = h.message_id.wrapping_add(1);
        Ok(out)
    }

    fn answer_error(
        &mut self,
        msg: &[u8],
        h: &Header,
        kind: NotifyType,
        data: Vec<u8>,
    ) -> Result<Vec<Output>, SessionError> {
        self.answer_notify(msg, h, NotifyPayload::new(kind, data))
    }

    /// Answers the peer's request with this error notification. INVALID_SYNTAX is fatal in
    /// both peers (RFC 7296 §2.21.3, RFC 9329 §6.1 R-6.1-q): after answering, the IKE SA is
    /// deleted without a Delete payload; the answer stays cached for a retransmission.
    fn answer_notify(
        &mut self,
        msg: &[u8],
        h: &Header,
        n: NotifyPayload,
    ) -> Result<Vec<Output>, SessionError> {
        let kind = n.kind;
        let out = self.answer(msg, h, &[Payload::Notify(n)])?;
        if kind == NotifyType::INVALID_SYNTAX {
            return Ok(self.teardown(FailReason::LocalError(kind), vec![out]));
        }
        Ok(vec![out])
    }

    /// Deletes the IKE SA and its Child SAs without a Delete exchange (RFC 7296 §2.21: after
    /// INVALID_SYNTAX or an unusable authenticated message), reporting why.
    fn teardown(&mut self, reason: FailReason, out: Vec<Output>) -> Vec<Output> {
        self.queue(out);
        self.ike_deleted();
        vec![Output::Event(SessionEvent::Failed(reason))]
    }

    /// Any message while the IKE SA is established.
    pub(super) fn on_established(
        &mut self,
        msg: &[u8],
        h: &Header,
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        if let Some(idx) = self
            .life
            .side
            .iter()
            .position(|o| o.spi_i == h.spi_i && o.spi_r == h.spi_r)
        {
            return self.on_old_ike(idx, msg, h, now);
        }
        if h.spi_i != self.spi_i || h.spi_r != self.spi_r {
            return Ok(dropped(DropReason::Unexpected));
        }
        // RFC 7296 §3.1: the I flag marks messages from the IKE SA's original initiator.
        if h.flags.initiator != (self.role == Role::Responder) {
            return Ok(dropped(DropReason::Unexpected));
        }
        if h.flags.response {
            self.on_response(msg, h, now)
        } else {
            self.on_request(msg, h, now)
        }
    }

    fn on_response(
        &mut self,
        msg: &[u8],
        h: &Header,
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        let Some(o) = self.life.outstanding.as_ref() else {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        };
        if o.message_id != h.message_id {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        }
        if o.pending.exchange() != h.exchange {
            return Ok(dropped(DropReason::Unexpected));
        }
        let opened = match self.open(msg) {
            Ok(o) => o,
            Err(e) => return Ok(not_opened(e)),
        };
        let Some(o) = self.life.outstanding.take() else {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        };
        self.life.last_inbound = Some(now);
        // RFC 7296 §2.21 / §2.21.2: an authentic response we cannot parse is not answered
        // (responses never cause requests), but the IKE SA is cleaned up: deleted.
        let Ok(payloads) = opened.payloads else {
            return Ok(self.teardown(
                FailReason::LocalError(NotifyType::INVALID_SYNTAX),
                Vec::new(),
            ));
        };
        // §2.21.3: INVALID_SYNTAX sent by the peer is fatal in both peers.
        if find_notify(&payloads, NotifyType::INVALID_SYNTAX).is_some() {
            return Ok(self.teardown(
                FailReason::PeerError(NotifyType::INVALID_SYNTAX),
                Vec::new(),
            ));
        }
        match o.pending {
            Pending::Dpd => Ok(Vec::new()),
            Pending::DeleteChild(spi_in) => {
                self.remove_child_in(spi_in);
                Ok(Vec::new())
            }
            Pending::DeleteIke => {
                self.ike_deleted();
                Ok(Vec::new())
            }
            Pending::Child {
                rekey,
                spi_in,
                ni,
                ke,
                retried,
            } => self.on_child_response((rekey, spi_in, retried), &ni, ke, &payloads, now),
            Pending::IkeRekey {
                spi,
                ni,
                ke,
                retried,
            } => self.on_ike_rekey_response((spi, retried), &ni, &ke, &payloads, now),
        }
    }

    fn on_request(
        &mut self,
        msg: &[u8],
        h: &Header,
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        if h.message_id != self.life.peer_next_id {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        }
        if h.exchange != ExchangeType::INFORMATIONAL && h.exchange != ExchangeType::CREATE_CHILD_SA
        {
            return Ok(dropped(DropReason::Unexpected));
        }
        let opened = match self.open(msg) {
            Ok(o) => o,
            Err(e) => return Ok(not_opened(e)),
        };
        self.life.last_inbound = Some(now);
        // R-6.1-q: an authentic request with a syntax problem is answered at the IKE layer
        // with INVALID_SYNTAX (then the IKE SA is deleted, §2.21.3); an unknown critical
        // payload with UNSUPPORTED_CRITICAL_PAYLOAD (§2.5), which is not fatal.
        let payloads = match opened.payloads {
            Ok(p) => p,
            Err(e) => {
                let n = e
                    .to_notify()
                    .unwrap_or_else(|| NotifyPayload::new(NotifyType::INVALID_SYNTAX, Vec::new()));
                return self.answer_notify(msg, h, n);
            }
        };
        if h.exchange == ExchangeType::INFORMATIONAL {
            self.on_info_request(msg, h, &payloads)
        } else {
            self.on_ccsa_request(msg, h, &payloads, now)
        }
    }

    /// INFORMATIONAL request: empty is a liveness check; Delete payloads delete SAs (§1.4.1).
    fn on_info_request(
        &mut self,
        msg: &[u8],
        h: &Header,
        payloads: &[Payload],
    ) -> Result<Vec<Output>, SessionError> {
        let mut delete_ike = false;
        let mut ours = Vec::new();
        for p in payloads {
            let Payload::Delete(d) = p else { continue };
            if d.protocol == ProtocolId::IKE {
                delete_ike = true;
            } else if d.protocol == ProtocolId::ESP {
                for &spi in &d.spis {
                    let Some(pos) = self.life.children.iter().position(|c| c.spi_out == spi) else {
                        continue;
                    };
                    let c = self.life.children.remove(pos);
                    // §1.4.1: a pair we are deleting ourselves is not named in the answer.
                    let deleting = matches!(
                        &self.life.outstanding,
                        Some(Outstanding { pending: Pending::DeleteChild(x), .. }) if *x == c.spi_in
                    );
                    if !deleting {
                        ours.push(c.spi_in);
                    }
                    self.sa_event(SaEvent::ChildSaDeleted {
                        spi_in: c.spi_in,
                        spi_out: c.spi_out,
                    });
                }
            }
        }
        if delete_ike {
            // The answer, then the IKE SA is gone.
            let out = self.answer(msg, h, &[])?;
            self.queue(vec![out]);
            self.ike_deleted();
            return Ok(Vec::new());
        }
        let inner = if ours.is_empty() {
            Vec::new()
        } else {
            vec![delete_payload(ProtocolId::ESP, ours)]
        };
        Ok(vec![self.answer(msg, h, &inner)?])
    }

    /// CREATE_CHILD_SA request: a new or rekeyed Child SA, or an IKE SA rekey (§1.3).
    fn on_ccsa_request(
        &mut self,
        msg: &[u8],
        h: &Header,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        let sa = find(payloads, |p| match p {
            Payload::Sa(s) => Some(s),
            _ => None,
        });
        let nonce = find(payloads, |p| match p {
            Payload::Nonce(n) => Some(n),
            _ => None,
        });
        let ke = find(payloads, |p| match p {
            Payload::Ke(k) => Some(k),
            _ => None,
        });
        let (Some(sa), Some(nonce)) = (sa, nonce) else {
            return self.answer_error(msg, h, NotifyType::INVALID_SYNTAX, Vec::new());
        };
        if sa.proposals.iter().any(|p| p.protocol == ProtocolId::IKE) {
            return self.on_ike_rekey_request(msg, h, (sa, nonce, ke), now);
        }
        let tsi = find(payloads, |p| match p {
            Payload::TsI(t) => Some(&t.selectors),
            _ => None,
        });
        let tsr = find(payloads, |p| match p {
            Payload::TsR(t) => Some(&t.selectors),
            _ => None,
        });
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
            return self.answer_error(msg, h, NotifyType::INVALID_SYNTAX, Vec::new());
        };
        // §2.25: we do not create Child SAs while deleting or rekeying the IKE SA.
        if matches!(
            &self.life.outstanding,
            Some(Outstanding {
                pending: Pending::IkeRekey { .. } | Pending::DeleteIke,
                ..
            })
        ) {
            return self.answer_error(msg, h, NotifyType::TEMPORARY_FAILURE, Vec::new());
        }
        let old = match find_notify(payloads, NotifyType::REKEY_SA) {
            None => None,
            Some(n) => {
                let Spi::U32(spi) = n.spi else {
                    return self.answer_error(msg, h, NotifyType::INVALID_SYNTAX, Vec::new());
                };
                match self.life.children.iter().find(|c| c.spi_out == spi) {
                    Some(c) => Some((c.spi_in, c.spi_out)),
                    None => {
                        return self.answer_error(
                            msg,
                            h,
                            NotifyType::CHILD_SA_NOT_FOUND,
                            Vec::new(),
                        );
                    }
                }
            }
        };
        // §2.25: rekeying a Child SA we are deleting.
        if let Some((old_in, _)) = old
            && matches!(
                &self.life.outstanding,
                Some(Outstanding { pending: Pending::DeleteChild(x), .. }) if *x == old_in
            )
        {
            return self.answer_error(msg, h, NotifyType::TEMPORARY_FAILURE, Vec::new());
        }
        // §1.3, §2.7: we pick a proposal and, if it offers DH groups, the group. A KE payload
        // of another group, or none while the proposal or our policy needs one, is answered
        // with INVALID_KE_PAYLOAD naming the group we want (§3.10.1); nothing changes.
        let Some((number, spi_out, suite, esn, group)) = proposal::esp_select_child(
            sa,
            &self.cfg.esp_proposals,
            &self.pfs_groups(),
            ke.map(|k| k.group),
        ) else {
            return self.answer_error(msg, h, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new());
        };
        let pfs = match (group.or(self.life.pfs), ke) {
            (Some(g), Some(k)) if k.group == g.transform_id() => Some(g),
            (Some(g), _) => {
                let data = g.transform_id().to_be_bytes().to_vec();
                return self.answer_error(msg, h, NotifyType::INVALID_KE_PAYLOAD, data);
            }
            // A KE payload but no DH group in the proposal we accept.
            (None, Some(_)) => {
                return self.answer_error(msg, h, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new());
            }
            (None, None) => None,
        };
        let ts_i = ts::narrow(tsi, &self.cfg.ts_remote);
        let ts_r = ts::narrow(tsr, &self.cfg.ts_local);
        if ts_i.is_empty() || ts_r.is_empty() {
            return self.answer_error(msg, h, NotifyType::TS_UNACCEPTABLE, Vec::new());
        }
        let nr = random::<NONCE_LEN>()?.to_vec();
        let spi_in = self.alloc_spi()?;
        let (g_ir, ke_out) = match (pfs, ke) {
            (Some(g), Some(k)) => {
                let (x, public) = KeyExchange::generate(g).map_err(|_| SessionError::Rng)?;
                let Ok(shared) = x.agree(&k.data) else {
                    return self.answer_error(msg, h, NotifyType::INVALID_SYNTAX, Vec::new());
                };
                (
                    Some(shared),
                    Some(KePayload {
                        group: k.group,
                        data: public,
                    }),
                )
            }
            _ => (None, None),
        };
        let new = self.keyed_child(
            Role::Responder,
            g_ir.as_ref().map(|s| s.expose()),
            nonce,
            &nr,
            ChildSa {
                spi_in,
                spi_out,
                suite,
                esn,
                keymat_in: SecretBytes::from_slice(&[]),
                keymat_out: SecretBytes::from_slice(&[]),
                ts_local: ts_r.clone(),
                ts_remote: ts_i.clone(),
            },
        )?;
        let mut inner = vec![
            Payload::Sa(proposal::esp_answer_pfs(number, suite, esn, spi_in, pfs)),
            Payload::Nonce(nr.clone()),
        ];
        inner.extend(ke_out.map(Payload::Ke));
        inner.push(Payload::TsI(TsPayload { selectors: ts_i }));
        inner.push(Payload::TsR(TsPayload { selectors: ts_r }));
        let out = self.answer(msg, h, &inner)?;
        self.queue(vec![out]);
        self.life.children.push(new.clone());
        match old {
            Some((old_spi_in, old_spi_out)) => {
                if self.life.replaced.len() < MAX_REPLACED {
                    self.life.replaced.push(old_spi_in);
                }
                // §2.8.1: we are rekeying the same Child SA: remember the peer's nonces.
                if matches!(
                    &self.life.outstanding,
                    Some(Outstanding { pending: Pending::Child { rekey: Some(x), .. }, .. })
                        if *x == old_spi_in
                ) {
                    self.life.collision = Some(Collision {
                        old_spi_in,
                        their_min_nonce: min_nonce(nonce, &nr).to_vec(),
                    });
                }
                self.sa_event(SaEvent::ChildSaRekeyed {
                    old_spi_in,
                    old_spi_out,
                    new,
                    initiator: false,
                });
            }
            None => self.sa_event(SaEvent::ChildSaCreated(new)),
        }
        Ok(Vec::new())
    }

    /// Fills in the KEYMAT of `c` (RFC 7296 §2.17) for a CREATE_CHILD_SA exchange in which we
    /// had the role `exchange` and that used the nonces `ni`, `nr` and, with PFS, `g_ir`.
    fn keyed_child(
        &self,
        exchange: Role,
        g_ir: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        mut c: ChildSa,
    ) -> Result<ChildSa, SessionError> {
        let prot = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?;
        let lengths = ChildKeyLengths {
            encr: c.suite.keymat_len(),
            integ: 0,
        };
        let ck = prot
            .keys
            .child_sa_keys(g_ir, ni, nr, lengths)
            .map_err(|_| SessionError::Internal("KEYMAT"))?;
        c.keymat_in = SecretBytes::from_slice(ck.inbound(exchange).0);
        c.keymat_out = SecretBytes::from_slice(ck.outbound(exchange).0);
        Ok(c)
    }

    fn child_refused(&mut self, kind: NotifyType) -> Result<Vec<Output>, SessionError> {
        self.life.collision = None;
        self.sa_event(SaEvent::ChildSaRefused(kind));
        Ok(Vec::new())
    }

    fn on_child_response(
        &mut self,
        (rekey, spi_in, retried): (Option<u32>, u32, bool),
        ni: &[u8],
        ke: Option<KeyExchange>,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        if let Some(n) = first_error(payloads) {
            // §1.3: INVALID_KE_PAYLOAD names the group the responder wants: retry once with
            // it (a new request, new Message ID) if we accept that group; nothing changed.
            if n.kind == NotifyType::INVALID_KE_PAYLOAD
                && !retried
                && self.life.collision.is_none()
                && let Ok(b) = <[u8; 2]>::try_from(n.data.as_slice())
                && let Ok(group) = DhGroup::from_transform(u16::from_be_bytes(b))
                && ke.as_ref().map(KeyExchange::group) != Some(group)
                && self.pfs_groups().contains(&group)
            {
                return match self.child_request(rekey, Some(group), true, now) {
                    Ok(m) => Ok(vec![Output::Send(m)]),
                    // The Child SA to rekey is gone meanwhile.
                    Err(SessionError::UnknownChildSa) => self.child_refused(n.kind),
                    Err(e) => Err(e),
                };
            }
            // §2.25: the Child SA we tried to rekey does not exist on the peer: delete it
            // silently here too (a new one from scratch is the caller's decision).
            if n.kind == NotifyType::CHILD_SA_NOT_FOUND
                && let Some(old_in) = rekey
            {
                self.remove_child_in(old_in);
            }
            // §2.21.3: other errors (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, TEMPORARY_FAILURE,
            // NO_ADDITIONAL_SAS, ...) refuse this Child SA only; the IKE SA is untouched.
            return self.child_refused(n.kind);
        }
        let sa = find(payloads, |p| match p {
            Payload::Sa(s) => Some(s),
            _ => None,
        });
        let nr = find(payloads, |p| match p {
            Payload::Nonce(n) => Some(n),
            _ => None,
        });
        let ke_r = find(payloads, |p| match p {
            Payload::Ke(k) => Some(k),
            _ => None,
        });
        let tsi = find(payloads, |p| match p {
            Payload::TsI(t) => Some(&t.selectors),
            _ => None,
        });
        let tsr = find(payloads, |p| match p {
            Payload::TsR(t) => Some(&t.selectors),
            _ => None,
        });
        let pfs = ke.as_ref().map(KeyExchange::group);
        let chosen = sa.and_then(|sa| proposal::esp_chosen_pfs(sa, &self.cfg.esp_proposals, pfs));
        let (Some((spi_out, suite, esn)), Some(nr), Some(tsi), Some(tsr)) = (chosen, nr, tsi, tsr)
        else {
            return self.child_refused(NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let g_ir = match &ke {
            None => None,
            Some(k) => {
                let Some(kr) = ke_r.filter(|kr| kr.group == k.group().transform_id()) else {
                    return self.child_refused(NotifyType::INVALID_KE_PAYLOAD);
                };
                let Ok(shared) = k.agree(&kr.data) else {
                    return self.child_refused(NotifyType::INVALID_SYNTAX);
                };
                Some(shared)
            }
        };
        if !ts::within(tsi, &self.cfg.ts_local) || !ts::within(tsr, &self.cfg.ts_remote) {
            return self.child_refused(NotifyType::TS_UNACCEPTABLE);
        }
        let new = self.keyed_child(
            Role::Initiator,
            g_ir.as_ref().map(|s| s.expose()),
            ni,
            nr,
            ChildSa {
                spi_in,
                spi_out,
                suite,
                esn,
                keymat_in: SecretBytes::from_slice(&[]),
                keymat_out: SecretBytes::from_slice(&[]),
                ts_local: tsi.clone(),
                ts_remote: tsr.clone(),
            },
        )?;
        self.life.children.push(new.clone());
        let old = rekey.and_then(|old_in| {
            self.life
                .children
                .iter()
                .find(|c| c.spi_in == old_in)
                .map(|c| (c.spi_in, c.spi_out))
        });
        let Some((old_spi_in, old_spi_out)) = old else {
            // A new Child SA, or the old one was deleted by the peer meanwhile. If that Delete
            // came from a collision with the peer's rekey of it (its Delete can overtake its
            // answer to our request), the nonces still decide (§2.8.1): with the lowest one
            // ours is the redundant SA and goes, or both new SAs would live on.
            let lost = matches!(
                self.life.collision.take(),
                Some(c) if Some(c.old_spi_in) == rekey
                    && min_nonce(ni, nr) < c.their_min_nonce.as_slice()
            );
            let new_spi_in = new.spi_in;
            self.sa_event(SaEvent::ChildSaCreated(new));
            if !lost {
                return Ok(Vec::new());
            }
            let del = delete_payload(ProtocolId::ESP, vec![new_spi_in]);
            let msg = self.request(Pending::DeleteChild(new_spi_in), &[del], now)?;
            return Ok(vec![Output::Send(msg)]);
        };
        let new_spi_in = new.spi_in;
        self.sa_event(SaEvent::ChildSaRekeyed {
            old_spi_in,
            old_spi_out,
            new,
            initiator: true,
        });
        // §2.8.1: after a collision the SA created with the lowest of the four nonces is
        // deleted by its creator; the creator of the surviving one deletes the old SA.
        let ours = min_nonce(ni, nr);
        let victim = match self.life.collision.take() {
            Some(c) if c.old_spi_in == old_spi_in && ours < c.their_min_nonce.as_slice() => {
                new_spi_in
            }
            _ => old_spi_in,
        };
        let del = delete_payload(ProtocolId::ESP, vec![victim]);
        let msg = self.request(Pending::DeleteChild(victim), &[del], now)?;
        Ok(vec![Output::Send(msg)])
    }

    /// The peer rekeys the IKE SA (§1.3.2). If our own IKE SA rekey is outstanding, the new SA
    /// waits for it (§2.8.2); any other request of ours in flight, or an IKE SA still being
    /// deleted, makes us answer TEMPORARY_FAILURE (§2.25).
    fn on_ike_rekey_request(
        &mut self,
        msg: &[u8],
        h: &Header,
        (sa, nonce, ke): (&SaPayload, &[u8], Option<&KePayload>),
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        let colliding = matches!(
            &self.life.outstanding,
            Some(Outstanding {
                pending: Pending::IkeRekey { .. },
                ..
            })
        );
        if (self.life.outstanding.is_some() && !colliding)
            || !self.life.side.is_empty()
            || self.life.ike_collision.is_some()
        {
            return self.answer_error(msg, h, NotifyType::TEMPORARY_FAILURE, Vec::new());
        }
        let Some(ke) = ke else {
            return self.answer_error(msg, h, NotifyType::INVALID_SYNTAX, Vec::new());
        };
        let Some((number, suite, spi_i)) = proposal::ike_select_rekey(sa, &self.cfg.ike_proposals)
        else {
            return self.answer_error(msg, h, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new());
        };
        let group = suite.dh();
        if ke.group != group.transform_id() {
            let data = group.transform_id().to_be_bytes().to_vec();
            return self.answer_error(msg, h, NotifyType::INVALID_KE_PAYLOAD, data);
        }
        let (x, public) = KeyExchange::generate(group).map_err(|_| SessionError::Rng)?;
        let Ok(shared) = x.agree(&ke.data) else {
            return self.answer_error(msg, h, NotifyType::INVALID_SYNTAX, Vec::new());
        };
        let spi_r = random_ike_spi()?;
        let nr = random::<NONCE_LEN>()?.to_vec();
        let keys = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?
            .keys
            .rekeyed(
                &suite,
                shared.expose(),
                nonce,
                &nr,
                &spi_i.to_be_bytes(),
                &spi_r.to_be_bytes(),
            )
            .map_err(|_| SessionError::Internal("key derivation"))?;
        let inner = [
            Payload::Sa(proposal::with_ike_spi(
                proposal::ike_answer(number, &suite),
                spi_r,
            )),
            Payload::Nonce(nr.clone()),
            Payload::Ke(KePayload {
                group: group.transform_id(),
                data: public,
            }),
        ];
        let out = self.answer(msg, h, &inner)?;
        self.queue(vec![out]);
        if colliding {
            self.life.ike_collision = Some(IkeCandidate {
                keys,
                suite,
                spis: (spi_i, spi_r),
                min_nonce: min_nonce(nonce, &nr).to_vec(),
            });
        } else {
            self.switch_ike(keys, suite, (spi_i, spi_r), Role::Responder, None, now)?;
        }
        Ok(Vec::new())
    }

    fn on_ike_rekey_response(
        &mut self,
        (spi_i, retried): (u64, bool),
        ni: &[u8],
        ke: &KeyExchange,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        let refused = |s: &mut Self, kind| {
            s.sa_event(SaEvent::IkeRekeyRefused(kind));
            // Ours failed, so the peer's colliding rekey is the only one (§2.8.2).
            if let Some(c) = s.life.ike_collision.take() {
                s.switch_ike(c.keys, c.suite, c.spis, Role::Responder, None, now)?;
            }
            Ok(Vec::new())
        };
        if let Some(n) = first_error(payloads) {
            // §1.3 / §2.7: INVALID_KE_PAYLOAD names the group the responder wants: retry once
            // with it (new Message ID, new SPI and nonce) if we have suites of that group.
            if n.kind == NotifyType::INVALID_KE_PAYLOAD
                && !retried
                && self.life.ike_collision.is_none()
                && let Ok(b) = <[u8; 2]>::try_from(n.data.as_slice())
                && let Ok(group) = DhGroup::from_transform(u16::from_be_bytes(b))
                && group != ke.group()
                && self.cfg.ike_proposals.iter().any(|s| s.dh() == group)
            {
                let m = self.ike_rekey_request(Some(group), true, now)?;
                return Ok(vec![Output::Send(m)]);
            }
            return refused(self, n.kind);
        }
        let sa = find(payloads, |p| match p {
            Payload::Sa(s) => Some(s),
            _ => None,
        });
        let nr = find(payloads, |p| match p {
            Payload::Nonce(n) => Some(n),
            _ => None,
        });
        let ke_r = find(payloads, |p| match p {
            Payload::Ke(k) => Some(k),
            _ => None,
        });
        let (_, offer) = self.ike_rekey_offer(Some(ke.group()))?;
        let chosen = sa.and_then(|sa| {
            let suite = proposal::ike_chosen(sa, &offer)?;
            match sa.proposals.first()?.spi {
                Spi::U64(spi) if spi != 0 => Some((suite, spi)),
                _ => None,
            }
        });
        let (Some((suite, spi_r)), Some(nr), Some(ke_r)) = (chosen, nr, ke_r) else {
            return refused(self, NotifyType::NO_PROPOSAL_CHOSEN);
        };
        if ke_r.group != ke.group().transform_id() || suite.dh() != ke.group() {
            return refused(self, NotifyType::INVALID_KE_PAYLOAD);
        }
        let Ok(shared) = ke.agree(&ke_r.data) else {
            return refused(self, NotifyType::INVALID_SYNTAX);
        };
        let keys = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?
            .keys
            .rekeyed(
                &suite,
                shared.expose(),
                ni,
                nr,
                &spi_i.to_be_bytes(),
                &spi_r.to_be_bytes(),
            )
            .map_err(|_| SessionError::Internal("key derivation"))?;
        if let Some(c) = self.life.ike_collision.take() {
            let ours_min = min_nonce(ni, nr);
            return self.resolve_ike_collision(c, (keys, suite), (spi_i, spi_r), ours_min, now);
        }
        // §1.3.2: the rekey initiator deletes the old IKE SA, on the old IKE SA, after the new
        // one is in place (so the Delete follows the rekey event).
        let id = self.life.own_next_id;
        let del = self.seal(
            self.header(ExchangeType::INFORMATIONAL, false, id),
            &[delete_payload(ProtocolId::IKE, Vec::new())],
        )?;
        self.switch_ike(keys, suite, (spi_i, spi_r), Role::Initiator, Some(id), now)?;
        Ok(vec![Output::Send(del)])
    }

    /// §2.8.2: both ends rekeyed the IKE SA at once. The new IKE SA created with the lowest of
    /// the four nonces is deleted by its creator; the creator of the survivor deletes the old.
    fn resolve_ike_collision(
        &mut self,
        theirs: IkeCandidate,
        (keys, suite): (IkeSaKeys, IkeSuite),
        spis: (u64, u64),
        ours_min: &[u8],
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        if ours_min < theirs.min_nonce.as_slice() {
            // Ours is redundant: delete it, on itself, and move to the peer's.
            let prot = protection(keys, Role::Initiator)?;
            let header = Header {
                spi_i: spis.0,
                spi_r: spis.1,
                exchange: ExchangeType::INFORMATIONAL,
                flags: Flags {
                    initiator: true,
                    version: false,
                    response: false,
                },
                message_id: 0,
            };
            let del = seal_with(
                &prot,
                header,
                &[delete_payload(ProtocolId::IKE, Vec::new())],
            )?;
            self.switch_ike(
                theirs.keys,
                theirs.suite,
                theirs.spis,
                Role::Responder,
                None,
                now,
            )?;
            self.life.side.push(OldIke {
                spi_i: spis.0,
                spi_r: spis.1,
                role: Role::Initiator,
                prot,
                delete_id: Some(0),
                sent: Some(now),
                peer_next_id: 0,
            });
            return Ok(vec![Output::Send(del)]);
        }
        // Ours survives: delete the old IKE SA; the peer deletes its redundant one.
        let id = self.life.own_next_id;
        let del = self.seal(
            self.header(ExchangeType::INFORMATIONAL, false, id),
            &[delete_payload(ProtocolId::IKE, Vec::new())],
        )?;
        self.switch_ike(keys, suite, spis, Role::Initiator, Some(id), now)?;
        self.life.side.push(OldIke {
            spi_i: theirs.spis.0,
            spi_r: theirs.spis.1,
            role: Role::Responder,
            prot: protection(theirs.keys, Role::Responder)?,
            delete_id: None,
            sent: None,
            peer_next_id: 0,
        });
        Ok(vec![Output::Send(del)])
    }

    /// Moves to the new IKE SA, keeping the old one until its Delete exchange is done.
    fn switch_ike(
        &mut self,
        keys: IkeSaKeys,
        suite: IkeSuite,
        (spi_i, spi_r): (u64, u64),
        role: Role,
        delete_id: Option<u32>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let old = self
            .prot
            .replace(protection(keys, role)?)
            .ok_or(SessionError::Internal("no keys"))?;
        self.life.side.push(OldIke {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            role: self.role,
            prot: old,
            delete_id,
            sent: delete_id.map(|_| now),
            peer_next_id: self.life.peer_next_id,
        });
        self.spi_i = spi_i;
        self.spi_r = spi_r;
        self.role = role;
        self.suite = Some(suite);
        self.life.own_next_id = 0;
        self.life.peer_next_id = 0;
        self.life.outstanding = None;
        self.cached = None;
        self.sa_event(SaEvent::IkeSaRekeyed { spi_i, spi_r });
        Ok(())
    }

    /// A message on the IKE SA replaced by a rekey: the Delete exchange that ends it, or any
    /// other request still in flight on it (answered, CREATE_CHILD_SA with TEMPORARY_FAILURE).
    fn on_old_ike(
        &mut self,
        idx: usize,
        msg: &[u8],
        h: &Header,
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        let Some(old) = self.life.side.get(idx) else {
            return Ok(dropped(DropReason::Unexpected));
        };
        if h.flags.initiator != (old.role == Role::Responder) {
            return Ok(dropped(DropReason::Unexpected));
        }
        let expected = if h.flags.response {
            old.delete_id
        } else {
            Some(old.peer_next_id)
        };
        if expected != Some(h.message_id) {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        }
        let opened = match open_with(&old.prot, msg) {
            Ok(o) => o,
            Err(e) => return Ok(not_opened(e)),
        };
        self.verified.set(true);
        self.life.last_inbound = Some(now);
        let gone = SaEvent::OldIkeSaDeleted {
            spi_i: old.spi_i,
            spi_r: old.spi_r,
        };
        if h.flags.response {
            self.life.side.remove(idx);
            self.sa_event(gone);
            return Ok(Vec::new());
        }
        let payloads = opened.payloads.unwrap_or_default();
        let delete = payloads
            .iter()
            .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::IKE));
        let header = Header {
            spi_i: old.spi_i,
            spi_r: old.spi_r,
            exchange: h.exchange,
            flags: Flags {
                initiator: old.role == Role::Initiator,
                version: false,
                response: true,
            },
            message_id: h.message_id,
        };
        let inner = if h.exchange == ExchangeType::INFORMATIONAL {
            Vec::new()
        } else {
            vec![notify(NotifyType::TEMPORARY_FAILURE, Vec::new())]
        };
        let resp = seal_with(&old.prot, header, &inner)?;
        self.queue(vec![Output::Send(resp)]);
        if delete {
            self.life.side.remove(idx);
            self.sa_event(gone);
        } else if let Some(o) = self.life.side.get_mut(idx) {
            o.peer_next_id = h.message_id.wrapping_add(1);
        }
        Ok(Vec::new())
    }
}
