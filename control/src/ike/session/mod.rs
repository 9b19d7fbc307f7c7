//! The sans-IO IKEv2 session: IKE_SA_INIT and IKE_AUTH (RFC 7296 §1.2), authenticated by the
//! configured [`Authenticator`] (a pre-shared key so far), as spoken over an RFC 9329 TCP
//! connection.
//!
//! The session owns no socket, timer or thread. The caller feeds it whole IKE messages (the
//! RFC 9329 Length field already removed) with [`Session::handle`] and gets back messages to
//! send (unframed: the data plane adds the TCP framing) and events. Time is passed in.
//!
//! Over TCP there are no retransmissions by the initiator (RFC 9329 §6.2), so an initiator acts
//! on the first answer it gets, error notifications included (R-6.4-a); the responder still
//! answers a retransmitted request with its cached response bit for bit (R-6.2-c).
//!
//! Once the IKE SA is up, the `life` submodule adds INFORMATIONAL (liveness checks, Delete),
//! CREATE_CHILD_SA (new Child SAs, Child SA and IKE SA rekeying) and sans-IO timeouts; their
//! lifecycle events come as [`Output::Sa`] in the same output list as everything else.
//!
//! IKE fragmentation (RFC 9329 §7.5): the session never sends SKF payloads nor offers
//! IKEV2_FRAGMENTATION_SUPPORTED over TCP (R-7.5-a), but reassembles SKF fragments a peer sends
//! under the established keys (R-7.5-b); see the `frag` submodule.
//!
//! An initiator answers COOKIE (RFC 7296 §2.6) and has PUZZLEs solved off the caller's thread
//! (RFC 8019 §7.1.2, [`PuzzleJob`]); the responder's stateless cookie and puzzle screen is
//! `crate::ike::cookie`, in front of the session. Not covered yet: certificates and EAP.

mod auth;
mod frag;
pub mod keylog;
mod life;
mod proposal;
mod puzzle;
mod spi;
mod ts;

#[cfg(test)]
mod cookie_tests;
#[cfg(test)]
mod matrix_tests;
#[cfg(test)]
pub(crate) mod tests;

use core::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use zeroize::Zeroizing;

pub use self::auth::{AuthError, Authenticator, PskAuth, SignedOctets};
pub use self::life::SaEvent;
pub use self::puzzle::{PuzzleAnswer, PuzzleJob};
pub use self::spi::SpiPool;
use crate::ike::cookie;
pub use crate::ike::crypto::Role;
use crate::ike::crypto::{
    ChildKeyLengths, DhGroup, EspSuite, IkeSaKeys, IkeSuite, KeyExchange, PrfAlg, SecretBytes,
    SkCipher, SkError,
};
use crate::ike::wire::{
    AuthPayload, ExchangeType, Flags, Header, Identity, KePayload, Message, NotifyPayload,
    NotifyType, Payload, PayloadIter, PayloadType, SaPayload, SkPayload, TrafficSelector,
    TsPayload, emit_chain, locate_encrypted, parse_chain,
};

/// Length of the nonces we send (RFC 7296 §2.10: at least half the PRF key size, 16..=256).
pub const NONCE_LEN: usize = 32;

/// Bound on IKE_SA_INIT requests per session (INVALID_KE_PAYLOAD and COOKIE retries).
const MAX_INIT_ATTEMPTS: u8 = 4;

/// What one end of an IKE SA is configured with.
#[derive(Clone)]
pub struct Config {
    /// Our identity (IDi as initiator, IDr as responder).
    pub local_id: Identity,
    /// The identity the peer must prove.
    pub remote_id: Identity,
    /// How we authenticate and check the peer (RFC 7296 §2.15), e.g. `PskAuth::shared(psk)`.
    /// A trait object, so other methods (RFC 7427 signatures, EAP) can live outside the
    /// protocol code.
    pub auth: Arc<dyn Authenticator>,
    /// IKE SA suites, most preferred first. The initiator's first KE uses the first one's group.
    pub ike_proposals: Vec<IkeSuite>,
    /// ESP suites with the ESN choice, most preferred first.
    pub esp_proposals: Vec<(EspSuite, bool)>,
    /// Our side of the Child SA's traffic (TSi as initiator, TSr as responder).
    pub ts_local: Vec<TrafficSelector>,
    /// The peer's side of the Child SA's traffic.
    pub ts_remote: Vec<TrafficSelector>,
    /// Where our inbound ESP SPIs come from: one pool per data plane, shared by all its
    /// sessions, so no two inbound SAs get the same SPI (RFC 4303 §2.1). `SpiPool::new()` for
    /// a session on its own.
    pub spi_pool: SpiPool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("auth", &self.auth)
            .field("ike_proposals", &self.ike_proposals)
            .field("esp_proposals", &self.esp_proposals)
            .field("ts_local", &self.ts_local)
            .field("ts_remote", &self.ts_remote)
            .field("spi_pool", &self.spi_pool)
            .finish()
    }
}

/// Tagged peer configurations of one listener (see [`Session::set_peer_configs`]), shared.
pub type PeerConfigs = Arc<[(u64, Config)]>;

/// What a session call ([`Session::handle`], [`Session::handle_timeout`], ...) asks the caller
/// to do: one list per call, in the order things happened (an answer before the IKE SA it
/// deletes is gone, R-6.1-q; a rekey before the Delete of what it replaced, RFC 7296 §1.3.2).
///
/// A response that creates a Child SA ([`SessionEvent::ChildSaUp`], [`SaEvent::ChildSaCreated`],
/// [`SaEvent::ChildSaRekeyed`]) comes before the event: hold the call's messages until the new
/// inbound SA is installed, so the peer never uses an SA that cannot decrypt yet.
#[derive(Debug)]
pub enum Output {
    /// Send this IKE message to the peer (without RFC 9329 framing).
    Send(Vec<u8>),
    /// Something happened.
    Event(SessionEvent),
    /// A lifecycle change of the established IKE SA or its Child SAs.
    Sa(SaEvent),
    /// Run [`PuzzleJob::solve`] (off this thread: it may take seconds) and give the answer to
    /// [`Session::puzzle_solved`]; until then the session waits (RFC 8019 §7.1.2).
    SolvePuzzle(PuzzleJob),
}

/// Why a message was dropped without any change to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed IKEv2 message, or (unauthenticated) missing required payloads.
    Malformed,
    /// A Message ID that is neither the expected one nor a retransmission (RFC 7296 §2.2).
    UnexpectedMessageId,
    /// Wrong SPIs, flags or exchange type for the current state.
    Unexpected,
}

/// Why the session gave up. After this, [`Session::handle`] only re-sends a cached response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The peer answered with this error notification (R-6.4-a: acted on immediately).
    PeerError(NotifyType),
    /// We found this error and (as responder) told the peer.
    LocalError(NotifyType),
    /// A request got no answer within the exchange timeout (RFC 9329 §6.2, R-6.2-a); the IKE
    /// SA is deleted.
    Timeout,
    /// The responder asked for a puzzle of this difficulty, harder than we solve (above
    /// `cookie::MAX_SOLVE_DIFFICULTY`) or not solved within the work bound (RFC 8019 §7.1.2).
    PuzzleRefused(u8),
}

/// A Child SA ready for the data plane. Keys are wiped on drop and redacted in `Debug`.
#[derive(Clone, Debug)]
pub struct ChildSa {
    /// SPI of our inbound SA, from [`Config::spi_pool`]: from now on the caller's, to release
    /// to the pool when the inbound SA is gone.
    pub spi_in: u32,
    /// SPI of our outbound SA (chosen by the peer).
    pub spi_out: u32,
    /// The negotiated ESP transform.
    pub suite: EspSuite,
    /// Extended sequence numbers.
    pub esn: bool,
    /// KEYMAT of the inbound SA: `suite.keymat_len()` bytes, key ‖ salt (RFC 7296 §2.17).
    pub keymat_in: SecretBytes,
    /// KEYMAT of the outbound SA.
    pub keymat_out: SecretBytes,
    /// Our side of the traffic, as narrowed by the responder.
    pub ts_local: Vec<TrafficSelector>,
    /// The peer's side of the traffic.
    pub ts_remote: Vec<TrafficSelector>,
}

/// Events reported by the session.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// The IKE SA is authenticated (both AUTH payloads verified on our side).
    IkeSaUp {
        /// Initiator's SPI.
        spi_i: u64,
        /// Responder's SPI.
        spi_r: u64,
        /// Negotiated algorithms.
        suite: IkeSuite,
        /// NAT detected in front of us (RFC 7296 §2.23, computed over TCP ports, R-6.5-b).
        nat_local: bool,
        /// NAT detected in front of the peer.
        nat_remote: bool,
    },
    /// The first Child SA, created with the IKE SA.
    ChildSaUp(ChildSa),
    /// The IKE SA is up but the Child SA was refused with this notification.
    ChildSaFailed(NotifyType),
    /// An encrypted message failed its integrity check and was dropped without any change to
    /// the session; the data plane may count it as corruption (R-6.1-o).
    IntegrityFailure,
    /// A message was dropped without any change to the session.
    Dropped(DropReason),
    /// The session failed for good.
    Failed(FailReason),
}

/// Errors that leave the session unusable or that no message caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The session has failed before; nothing more is processed.
    Closed,
    /// The configuration cannot be used (e.g. no IKE proposal).
    Config(&'static str),
    /// The system random number generator failed.
    Rng,
    /// A local encoding or cryptographic step failed (should not happen).
    Internal(&'static str),
    /// The IKE SA is not (or no longer) established.
    NotEstablished,
    /// A request of ours is still unanswered (window size 1, RFC 7296 §2.3).
    Busy,
    /// No Child SA with this inbound SPI.
    UnknownChildSa,
    /// No free inbound SPI found in the [`SpiPool`].
    SpiExhausted,
    /// Our authenticator could not make the AUTH payload.
    Auth(AuthError),
    /// A [`PuzzleAnswer`] for another session, or for a job this session no longer waits for;
    /// it was ignored.
    StalePuzzle,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Closed => f.write_str("session has failed"),
            SessionError::Config(s) => write!(f, "bad configuration: {s}"),
            SessionError::Rng => f.write_str("random number generator failed"),
            SessionError::Internal(s) => write!(f, "internal error: {s}"),
            SessionError::NotEstablished => f.write_str("IKE SA not established"),
            SessionError::Busy => f.write_str("a request is outstanding"),
            SessionError::UnknownChildSa => f.write_str("no such Child SA"),
            SessionError::SpiExhausted => f.write_str("no free inbound SPI"),
            SessionError::Auth(e) => write!(f, "{e}"),
            SessionError::StalePuzzle => f.write_str("puzzle answer not for the current attempt"),
        }
    }
}

impl std::error::Error for SessionError {}

#[derive(Debug)]
enum State {
    /// Initiator: IKE_SA_INIT request sent with this key exchange.
    InitSent { ke: KeyExchange },
    /// Initiator: answered with a cookie and a puzzle; waiting for the caller to solve it
    /// (RFC 8019 §7.1.2), with the key exchange for the retry.
    Solving { ke: KeyExchange },
    /// Initiator: IKE_AUTH request sent.
    AuthSent,
    /// Responder: waiting for IKE_SA_INIT.
    Idle,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    InitDone,
    /// Both AUTHs verified.
    Established,
    /// The IKE SA was deleted (Delete exchange or timeout).
    Deleted,
    /// Gave up.
    Failed,
}

/// The responder's last response, for retransmitted requests (RFC 7296 §2.1, R-6.2-c).
#[derive(Debug)]
struct Cached {
    message_id: u32,
    request: Vec<u8>,
    response: Vec<u8>,
}

/// Keys and SK payload protection of an IKE SA.
#[derive(Debug)]
struct Protection {
    keys: IkeSaKeys,
    out: SkCipher,
    inb: SkCipher,
}

/// One IKEv2 session on one TCP connection. See the module documentation.
#[derive(Debug)]
pub struct Session {
    cfg: Config,
    role: Role,
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    spi_i: u64,
    spi_r: u64,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// RealMessage1: the IKE_SA_INIT request as sent or received.
    init_request: Vec<u8>,
    /// RealMessage2: the IKE_SA_INIT response as sent or received.
    init_response: Vec<u8>,
    suite: Option<IkeSuite>,
    prot: Option<Protection>,
    /// Initiator: Message ID of the outstanding request. Responder: the next expected one.
    message_id: u32,
    cached: Option<Cached>,
    /// Our inbound SPI for the first Child SA (0 until a responder has one).
    child_spi_in: u32,
    /// Inbound SPIs we allocated and have not handed out in a [`ChildSa`] (see [`SpiPool`]).
    owned_spis: Vec<u32>,
    nat: (bool, bool),
    last_activity: Option<Instant>,
    /// Initiator: our KE public value (kept for a COOKIE retry, RFC 7296 §2.6).
    ke_public: Vec<u8>,
    /// Initiator: the responder's cookie, sent first in every further IKE_SA_INIT request.
    cookie: Option<Vec<u8>>,
    /// Initiator: our solution to the responder's puzzle, sent after the cookie (RFC 8019
    /// §7.1.2).
    puzzle_solution: Option<Vec<u8>>,
    /// Initiator: groups already sent in a KE payload (no INVALID_KE_PAYLOAD ping-pong).
    tried_groups: Vec<DhGroup>,
    /// Initiator: IKE_SA_INIT requests sent so far.
    init_attempts: u8,
    /// Initiator: puzzle jobs handed out so far; an answer must name the latest.
    puzzle_attempt: u32,
    /// Our role on the TCP connection (RFC 9329 R-1.2-a): fixed, unlike `role`, which follows
    /// IKE SA rekeys.
    tcp_role: Role,
    /// State of the established IKE SA (requests, Child SAs, timers).
    life: life::Life,
    /// IKE fragments (RFC 7383) of one message being reassembled (R-7.5-b).
    frags: Option<frag::Reassembly>,
    /// While a reassembled SKF message is processed: its first inner payload type and its
    /// authenticated, decrypted chain, which [`Session::open`] hands out instead of decrypting.
    reassembled: Option<(PayloadType, Zeroizing<Vec<u8>>)>,
    /// Set when an SK payload passed its integrity check during the current `handle` call
    /// (see [`Verdict`]).
    verified: std::cell::Cell<bool>,
    /// Set when the current `handle` call answered from the response cache.
    retransmitted: bool,
    /// Responder: the configurations of the same listener, with the caller's tags; IKE_AUTH
    /// picks one by the peer's IDi (see [`Session::set_peer_configs`]).
    peers: PeerConfigs,
    /// The tag of the configuration IKE_AUTH switched to, if it did.
    chosen: Option<u64>,
}

/// Inbound SPIs allocated and never handed out in a [`ChildSa`] go back to the pool; those
/// handed out are the caller's (see [`SpiPool`]).
impl Drop for Session {
    fn drop(&mut self) {
        for spi in self.owned_spis.drain(..) {
            self.cfg.spi_pool.release(spi);
        }
    }
}

/// What a received message proved, for the caller's path decisions: only a fresh, authentic
/// message may move an IKE SA to the connection it came on (RFC 9329 §6.1, R-6.1-t; §10,
/// R-10-e: validation includes decryption, authentication and the replay check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Decrypted and authenticated, and new: the expected response, or a request with the
    /// expected Message ID.
    Fresh,
    /// A retransmitted request answered from the response cache (R-6.2-c): it proves nothing
    /// about the connection it came on (anyone can replay captured bytes).
    Retransmit,
    /// Not authenticated: dropped, failed its integrity check, unencrypted (IKE_SA_INIT), or a
    /// fragment of a message still incomplete.
    Unverified,
}

fn random<const N: usize>() -> Result<[u8; N], SessionError> {
    let mut b = [0u8; N];
    crate::rng::fill(&mut b).map_err(|_| SessionError::Rng)?;
    Ok(b)
}

fn random_ike_spi() -> Result<u64, SessionError> {
    loop {
        let v = u64::from_be_bytes(random()?);
        if v != 0 {
            return Ok(v);
        }
    }
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP address | port), RFC 7296 §2.23, with the
/// TCP address and port of the connection (R-6.5-a, R-6.5-b).
pub fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(addr.port().to_be_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(&h.finalize());
    out
}

fn notify(kind: NotifyType, data: Vec<u8>) -> Payload {
    Payload::Notify(NotifyPayload::new(kind, data))
}

/// The SA, KE and Nonce payloads every IKE_SA_INIT message carries (RFC 7296 §1.2).
fn init_payloads(payloads: &[Payload]) -> Option<(&SaPayload, &KePayload, &Vec<u8>)> {
    let sa = payloads.iter().find_map(|p| match p {
        Payload::Sa(s) => Some(s),
        _ => None,
    })?;
    let ke = payloads.iter().find_map(|p| match p {
        Payload::Ke(k) => Some(k),
        _ => None,
    })?;
    let nonce = payloads.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n),
        _ => None,
    })?;
    Some((sa, ke, nonce))
}

fn first_error(payloads: &[Payload]) -> Option<&NotifyPayload> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind.is_error() => Some(n),
        _ => None,
    })
}

fn find_notify(payloads: &[Payload], kind: NotifyType) -> Option<&NotifyPayload> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind == kind => Some(n),
        _ => None,
    })
}

fn dropped(r: DropReason) -> Vec<Output> {
    vec![Output::Event(SessionEvent::Dropped(r))]
}

/// What a message whose SK payload did not open yields: an integrity failure, with no state
/// change (the caller may count it as corruption, R-6.1-o), or a drop as malformed.
fn not_opened(e: OpenError) -> Vec<Output> {
    match e {
        OpenError::Integrity => vec![Output::Event(SessionEvent::IntegrityFailure)],
        OpenError::Malformed => dropped(DropReason::Malformed),
    }
}

fn emit_err<E>(_: E) -> SessionError {
    SessionError::Internal("encoding")
}

fn id_body(id: &Identity) -> Result<Vec<u8>, SessionError> {
    let mut v = Vec::new();
    id.emit(&mut v).map_err(emit_err)?;
    Ok(v)
}

/// The raw body of the first payload of type `kind` in a decrypted chain (RFC 7296 §2.15 signs
/// the ID payload as received).
fn raw_body(chain: &[u8], first: PayloadType, kind: PayloadType) -> Option<Vec<u8>> {
    PayloadIter::new(chain, 0, first)
        .map_while(Result::ok)
        .find(|r| r.kind == kind)
        .map(|r| r.body.to_vec())
}

/// An opened SK payload: the decrypted chain, its first payload type, and the typed payloads
/// (`Err` if the chain does not parse).
struct Opened {
    plain: Zeroizing<Vec<u8>>,
    first: PayloadType,
    payloads: Result<Vec<Payload>, crate::ike::wire::Error>,
}

enum OpenError {
    Integrity,
    Malformed,
}

impl Session {
    /// Starts an IKE SA as initiator on the TCP connection `local` → `remote`, returning the
    /// IKE_SA_INIT request. Its KE payload uses the group of the first IKE proposal.
    ///
    /// # Errors
    /// [`SessionError::Config`] without IKE or ESP proposals, [`SessionError::Rng`].
    pub fn initiator(
        cfg: Config,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> Result<(Session, Vec<u8>), SessionError> {
        let group = cfg
            .ike_proposals
            .first()
            .ok_or(SessionError::Config("no IKE proposal"))?
            .dh();
        if cfg.esp_proposals.is_empty() {
            return Err(SessionError::Config("no ESP proposal"));
        }
        let spi_i = random_ike_spi()?;
        let child_spi_in = cfg.spi_pool.allocate()?;
        // From here on, dropping the session releases the SPI.
        let mut s = Session {
            cfg,
            role: Role::Initiator,
            local,
            remote,
            state: State::Idle,
            spi_i,
            spi_r: 0,
            ni: Vec::new(),
            nr: Vec::new(),
            init_request: Vec::new(),
            init_response: Vec::new(),
            suite: None,
            prot: None,
            message_id: 0,
            cached: None,
            child_spi_in,
            owned_spis: vec![child_spi_in],
            nat: (false, false),
            ke_public: Vec::new(),
            cookie: None,
            puzzle_solution: None,
            verified: std::cell::Cell::new(false),
            retransmitted: false,
            tried_groups: Vec::new(),
            init_attempts: 0,
            puzzle_attempt: 0,
            last_activity: Some(now),
            tcp_role: Role::Initiator,
            life: life::Life::default(),
            peers: PeerConfigs::default(),
            chosen: None,
            frags: None,
            reassembled: None,
        };
        let msg = s.start_init(group)?;
        Ok((s, msg))
    }

    /// A responder waiting for the IKE_SA_INIT request on the TCP connection `local` ← `remote`.
    pub fn responder(cfg: Config, local: SocketAddr, remote: SocketAddr) -> Session {
        Session {
            cfg,
            role: Role::Responder,
            local,
            remote,
            state: State::Idle,
            spi_i: 0,
            spi_r: 0,
            ni: Vec::new(),
            nr: Vec::new(),
            init_request: Vec::new(),
            init_response: Vec::new(),
            suite: None,
            prot: None,
            message_id: 0,
            cached: None,
            child_spi_in: 0,
            owned_spis: Vec::new(),
            nat: (false, false),
            ke_public: Vec::new(),
            cookie: None,
            puzzle_solution: None,
            verified: std::cell::Cell::new(false),
            retransmitted: false,
            tried_groups: Vec::new(),
            init_attempts: 0,
            puzzle_attempt: 0,
            last_activity: None,
            tcp_role: Role::Responder,
            life: life::Life::default(),
            peers: PeerConfigs::default(),
            chosen: None,
            frags: None,
            reassembled: None,
        }
    }

    /// Our role in the IKE SA.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether both AUTH payloads have been verified.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Whether the session has failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Responder: the peer configurations that share this listener, each with a tag of the
    /// caller's (shared by all the listener's sessions; this session's own may be among them). At IKE_AUTH, when the peer's IDi is not this session's `remote_id`, the one
    /// whose `remote_id` is the IDi (and whose `local_id` is the IDr the peer asked for, if it
    /// asked) takes over before AUTH is checked, so its key proves the peer and signs our
    /// AUTH, and its selectors and ESP proposals make the Child SA (RFC 7296 §2.15: the
    /// responder learns who the peer claims to be from IDi). The IKE SA's own algorithms were
    /// chosen at IKE_SA_INIT with this session's proposals.
    pub fn set_peer_configs(&mut self, peers: PeerConfigs) {
        self.peers = peers;
    }

    /// The tag of the peer configuration IKE_AUTH chose, if it chose one of
    /// [`Session::set_peer_configs`]'s.
    pub fn chosen_peer(&self) -> Option<u64> {
        self.chosen
    }

    /// The configuration the session runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// (SPIi, SPIr); SPIr is 0 until the IKE_SA_INIT response.
    pub fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    /// The IKE SA suite, once negotiated.
    pub fn suite(&self) -> Option<IkeSuite> {
        self.suite
    }

    /// When the last message that was not dropped arrived (for an initiator, initially its
    /// creation time). Dropped messages and integrity failures leave it alone.
    pub fn last_activity(&self) -> Option<Instant> {
        self.last_activity
    }

    /// Handles one whole IKE message received from the peer. The outputs include the lifecycle
    /// changes it caused ([`Output::Sa`]); if it fails with an error, those come with the next
    /// call.
    ///
    /// # Errors
    /// [`SessionError::Closed`] after a failure (except that a retransmitted request still gets
    /// the cached response); [`SessionError::Rng`] / [`SessionError::Internal`] for local faults.
    pub fn handle(&mut self, msg: &[u8], now: Instant) -> Result<Vec<Output>, SessionError> {
        self.handle_verified(msg, now).map(|(out, _)| out)
    }

    /// [`handle`](Self::handle), and what the message proved ([`Verdict`]).
    ///
    /// # Errors
    /// As [`handle`](Self::handle).
    pub fn handle_verified(
        &mut self,
        msg: &[u8],
        now: Instant,
    ) -> Result<(Vec<Output>, Verdict), SessionError> {
        self.verified.set(false);
        self.retransmitted = false;
        // Lifecycle changes of a call that failed with an error stay queued for the next call.
        let out = match self.handle_counted(msg, now) {
            Ok(out) => out,
            Err(e) => {
                self.settle_spis(&[]);
                return Err(e);
            }
        };
        let ignored = matches!(
            out.as_slice(),
            [Output::Event(
                SessionEvent::Dropped(_) | SessionEvent::IntegrityFailure
            )]
        );
        let verdict = if self.retransmitted {
            Verdict::Retransmit
        } else if self.verified.get() && !ignored {
            Verdict::Fresh
        } else {
            Verdict::Unverified
        };
        Ok((self.emit(out), verdict))
    }

    fn handle_counted(&mut self, msg: &[u8], now: Instant) -> Result<Vec<Output>, SessionError> {
        let was_up = self.is_established();
        let out = self.handle_inner(msg, now)?;
        if !was_up && self.is_established() {
            self.enter_established(&out, now);
        }
        let ignored = matches!(
            out.as_slice(),
            [Output::Event(
                SessionEvent::Dropped(_) | SessionEvent::IntegrityFailure
            )]
        );
        if !ignored {
            self.last_activity = Some(now);
        }
        Ok(out)
    }

    fn handle_inner(&mut self, msg: &[u8], now: Instant) -> Result<Vec<Output>, SessionError> {
        if matches!(self.state, State::Failed | State::Deleted) && self.cached.is_none() {
            return Err(SessionError::Closed);
        }
        let Ok(info) = Header::parse(msg) else {
            return Ok(dropped(DropReason::Malformed));
        };
        if let Err(e) = info.check(msg.len()) {
            if let crate::ike::wire::Error::UnsupportedMajorVersion(_) = e
                && let Some(answer) = self.invalid_major_version(&info.header)
            {
                return Ok(vec![Output::Send(answer?)]);
            }
            return Ok(dropped(DropReason::Malformed));
        }
        let h = info.header;
        if let Some(out) = self.on_fragment(msg, &h, now) {
            return out;
        }
        if let Some(out) = self.retransmission(msg, &h) {
            self.retransmitted = matches!(out.as_slice(), [Output::Send(_)]);
            return Ok(out);
        }
        if matches!(self.state, State::Failed | State::Deleted) {
            return Err(SessionError::Closed);
        }
        if matches!(self.state, State::Established) {
            return self.on_established(msg, &h, now);
        }
        // RFC 7296 §3.1: the I flag says who sent it; the R flag whether it is a response.
        let from_initiator = self.role == Role::Responder;
        if h.flags.initiator != from_initiator || h.flags.response != (self.role == Role::Initiator)
        {
            return Ok(dropped(DropReason::Unexpected));
        }
        match self.state {
            State::InitSent { .. } => self.on_init_response(msg, &h),
            // Our request was answered; nothing else is expected while the puzzle is solved.
            State::Solving { .. } => Ok(dropped(DropReason::Unexpected)),
            State::AuthSent => self.on_auth_response(msg, &h),
            State::Idle => self.on_init_request(msg, &h),
            State::InitDone => self.on_auth_request(msg, &h),
            State::Established | State::Failed | State::Deleted => {
                Ok(dropped(DropReason::Unexpected))
            }
        }
    }

    /// RFC 7296 §2.5, §1.5: a responder without state answers a first request of a higher
    /// major version with an unprotected N(INVALID_MAJOR_VERSION) in a version 2.0 header
    /// (SPIs, Message ID and Exchange Type copied, no data) and keeps no state. `None`: drop.
    fn invalid_major_version(&self, h: &Header) -> Option<Result<Vec<u8>, SessionError>> {
        let first_request = self.role == Role::Responder
            && matches!(self.state, State::Idle)
            && !h.flags.response
            && h.spi_i != 0
            && h.spi_r == 0
            && h.message_id == 0;
        if !first_request {
            return None;
        }
        let answer = Message {
            header: Header {
                flags: Flags {
                    initiator: false,
                    version: false,
                    response: true,
                },
                ..*h
            },
            payloads: vec![notify(NotifyType::INVALID_MAJOR_VERSION, Vec::new())],
        }
        .to_bytes()
        .map_err(emit_err);
        Some(answer)
    }

    /// R-7.5-b: an SKF message is authenticated with the established keys (IKE_AUTH and later)
    /// and buffered; the completed set is processed like an unfragmented SK message. `None` if
    /// `msg` is not a fragment.
    fn on_fragment(
        &mut self,
        msg: &[u8],
        h: &Header,
        now: Instant,
    ) -> Option<Result<Vec<Output>, SessionError>> {
        let layout = locate_encrypted(msg).ok().flatten()?;
        if layout.kind != PayloadType::SKF {
            return None;
        }
        let Some(prot) = self.prot.as_ref() else {
            return Some(Ok(dropped(DropReason::Unexpected)));
        };
        if h.spi_i != self.spi_i || h.spi_r != self.spi_r || h.exchange == ExchangeType::IKE_SA_INIT
        {
            return Some(Ok(dropped(DropReason::Unexpected)));
        }
        let f = match frag::open_fragment(&prot.keys, self.role, msg) {
            Ok(f) => f,
            Err(frag::FragError::Integrity) => {
                return Some(Ok(vec![Output::Event(SessionEvent::IntegrityFailure)]));
            }
            Err(frag::FragError::Malformed) => return Some(Ok(dropped(DropReason::Malformed))),
        };
        match frag::Reassembly::add(&mut self.frags, f, now) {
            frag::Added::Pending => Some(Ok(Vec::new())),
            frag::Added::Dropped => Some(Ok(dropped(DropReason::Unexpected))),
            frag::Added::Complete(header, first, plain) => {
                // Every fragment was verified and decrypted on arrival: the chain goes to the
                // normal processing as the content of an SK message whose body stays empty,
                // so nothing is encrypted again (RFC 7383 §2.6: processed as if unfragmented).
                let Ok(skeleton) = (Message {
                    header,
                    payloads: vec![Payload::Sk(SkPayload {
                        first_payload: first,
                        body: Vec::new(),
                    })],
                })
                .to_bytes() else {
                    return Some(Ok(dropped(DropReason::Malformed)));
                };
                self.reassembled = Some((first, plain));
                let out = self.handle_inner(&skeleton, now);
                self.reassembled = None;
                Some(out)
            }
        }
    }

    /// R-6.2-c: a request with the Message ID of the last response gets that response again,
    /// bit for bit, and changes nothing.
    fn retransmission(&self, msg: &[u8], h: &Header) -> Option<Vec<Output>> {
        let c = self.cached.as_ref()?;
        if h.flags.response
            || h.message_id != c.message_id
            || h.spi_i != self.spi_i
            || (h.spi_r != 0 && h.spi_r != self.spi_r)
        {
            return None;
        }
        if msg == c.request.as_slice() {
            return Some(vec![Output::Send(c.response.clone())]);
        }
        // Same Message ID but other bytes: only an authentic message counts as a retransmission.
        match self.open(msg) {
            Ok(_) => Some(vec![Output::Send(c.response.clone())]),
            Err(OpenError::Integrity) => Some(vec![Output::Event(SessionEvent::IntegrityFailure)]),
            Err(OpenError::Malformed) => Some(dropped(DropReason::UnexpectedMessageId)),
        }
    }

    fn header(&self, exchange: ExchangeType, response: bool, message_id: u32) -> Header {
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            exchange,
            flags: Flags {
                initiator: self.role == Role::Initiator,
                version: false,
                response,
            },
            message_id,
        }
    }

    fn nat_notifies(&self) -> [Payload; 2] {
        [
            notify(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                nat_hash(self.spi_i, self.spi_r, self.local).to_vec(),
            ),
            notify(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_hash(self.spi_i, self.spi_r, self.remote).to_vec(),
            ),
        ]
    }

    /// RFC 7296 §2.23: (NAT in front of us, NAT in front of the peer). `spi_r` is the one the
    /// sender used (0 in the request).
    fn nat_detect(&self, payloads: &[Payload], spi_r: u64) -> (bool, bool) {
        // Several SOURCE notifies may come (one per address of a multihomed sender); a NAT is
        // detected when some come and none matches.
        let differs = |kind, addr| {
            let expected = nat_hash(self.spi_i, spi_r, addr);
            let mut seen = payloads.iter().filter_map(|p| match p {
                Payload::Notify(n) if n.kind == kind => Some(n.data.as_slice()),
                _ => None,
            });
            let first = seen.next();
            first.is_some() && first.into_iter().chain(seen).all(|d| d != expected)
        };
        (
            differs(NotifyType::NAT_DETECTION_DESTINATION_IP, self.local),
            differs(NotifyType::NAT_DETECTION_SOURCE_IP, self.remote),
        )
    }

    /// Builds (or rebuilds, after INVALID_KE_PAYLOAD) the IKE_SA_INIT request with a new key
    /// exchange for `group` and a new nonce.
    fn start_init(&mut self, group: DhGroup) -> Result<Vec<u8>, SessionError> {
        let (ke, public) = KeyExchange::generate(group).map_err(|_| SessionError::Rng)?;
        self.ni = random::<NONCE_LEN>()?.to_vec();
        self.ke_public = public;
        self.tried_groups.push(group);
        self.state = State::InitSent { ke };
        self.init_message(group)
    }

    /// The IKE_SA_INIT request from the current KE and nonce, with the cookie first if we have
    /// one (RFC 7296 §2.6). It becomes RealMessage1.
    fn init_message(&mut self, group: DhGroup) -> Result<Vec<u8>, SessionError> {
        let mut payloads = Vec::new();
        if let Some(c) = &self.cookie {
            payloads.push(notify(NotifyType::COOKIE, c.clone()));
            // RFC 8019 §7.1.2: HDR, N(COOKIE), [PS,] SA, KE, Ni.
            if let Some(ps) = &self.puzzle_solution {
                payloads.push(Payload::Ps(ps.clone()));
            }
        }
        payloads.extend([
            Payload::Sa(proposal::ike_offer(&self.cfg.ike_proposals)),
            Payload::Ke(KePayload {
                group: group.transform_id(),
                data: self.ke_public.clone(),
            }),
            Payload::Nonce(self.ni.clone()),
        ]);
        payloads.extend(self.nat_notifies());
        let msg = Message {
            header: self.header(ExchangeType::IKE_SA_INIT, false, 0),
            payloads,
        }
        .to_bytes()
        .map_err(emit_err)?;
        self.init_request = msg.clone();
        self.message_id = 0;
        self.init_attempts = self.init_attempts.saturating_add(1);
        Ok(msg)
    }

    fn fail(&mut self, reason: FailReason, mut out: Vec<Output>) -> Vec<Output> {
        self.state = State::Failed;
        out.push(Output::Event(SessionEvent::Failed(reason)));
        out
    }

    fn install_keys(
        &mut self,
        suite: IkeSuite,
        ke: &KeyExchange,
        peer: &[u8],
    ) -> Result<(), SessionError> {
        let g_ir = ke
            .agree(peer)
            .map_err(|_| SessionError::Internal("key exchange"))?;
        let keys = IkeSaKeys::initial(
            &suite,
            g_ir.expose(),
            &self.ni,
            &self.nr,
            &self.spi_i.to_be_bytes(),
            &self.spi_r.to_be_bytes(),
        )
        .map_err(|_| SessionError::Internal("key derivation"))?;
        let (out, inb) = keys
            .sk_ciphers(self.role)
            .map_err(|_| SessionError::Internal("SK keys"))?;
        self.suite = Some(suite);
        self.prot = Some(Protection { keys, out, inb });
        Ok(())
    }

    // ----- initiator -----

    fn on_init_response(&mut self, msg: &[u8], h: &Header) -> Result<Vec<Output>, SessionError> {
        if h.exchange != ExchangeType::IKE_SA_INIT || h.message_id != 0 || h.spi_i != self.spi_i {
            return Ok(dropped(DropReason::Unexpected));
        }
        let Ok(m) = Message::parse(msg) else {
            return Ok(dropped(DropReason::Malformed));
        };
        let State::InitSent { ke } = &self.state else {
            return Ok(dropped(DropReason::Unexpected));
        };
        let current = ke.group();
        let retry_ok = self.init_attempts < MAX_INIT_ATTEMPTS;
        let puzzle_n = find_notify(&m.payloads, NotifyType::PUZZLE);
        let cookie_n = find_notify(&m.payloads, NotifyType::COOKIE);
        // RFC 8019 §7.1.2: a PUZZLE without a COOKIE is malformed: ignore it, keep waiting.
        if puzzle_n.is_some() && cookie_n.is_none() {
            return Ok(dropped(DropReason::Malformed));
        }
        // RFC 7296 §2.6: retry with the cookie first and everything else unchanged.
        if let Some(c) = cookie_n
            && retry_ok
            && (1..=64).contains(&c.data.len())
        {
            // RFC 8019 §7.1.2: a puzzle over the cookie is solved by the caller, off this
            // thread; one we cannot use is ignored like an unknown status notification.
            if let Some(p) = puzzle_n.and_then(|p| cookie::parse_puzzle(&p.data)) {
                return self.start_puzzle(p, c.data.clone());
            }
            self.puzzle_solution = None;
            self.cookie = Some(c.data.clone());
            return Ok(vec![Output::Send(self.init_message(current)?)]);
        }
        if let Some(n) = first_error(&m.payloads) {
            // R-6.4-b: a corrective error is acted on at once, on the same connection.
            if n.kind == NotifyType::INVALID_KE_PAYLOAD
                && retry_ok
                && let Ok(b) = <[u8; 2]>::try_from(n.data.as_slice())
                && let Ok(group) = DhGroup::from_transform(u16::from_be_bytes(b))
                && !self.tried_groups.contains(&group)
                && self.cfg.ike_proposals.iter().any(|s| s.dh() == group)
            {
                return Ok(vec![Output::Send(self.start_init(group)?)]);
            }
            // R-6.4-a: over TCP there is no retransmission to wait for: fail now.
            return Ok(self.fail(FailReason::PeerError(n.kind), Vec::new()));
        }
        let Some((sa, ke_p, nonce)) = init_payloads(&m.payloads) else {
            return Ok(self.fail(
                FailReason::LocalError(NotifyType::INVALID_SYNTAX),
                Vec::new(),
            ));
        };
        let chosen = proposal::ike_chosen(sa, &self.cfg.ike_proposals);
        let Some(suite) =
            chosen.filter(|s| s.dh() == current && ke_p.group == s.dh().transform_id())
        else {
            return Ok(self.fail(
                FailReason::LocalError(NotifyType::NO_PROPOSAL_CHOSEN),
                Vec::new(),
            ));
        };
        if h.spi_r == 0 {
            return Ok(self.fail(
                FailReason::LocalError(NotifyType::INVALID_SYNTAX),
                Vec::new(),
            ));
        }
        self.spi_r = h.spi_r;
        self.nr = nonce.clone();
        self.nat = self.nat_detect(&m.payloads, self.spi_r);
        let State::InitSent { ke } = core::mem::replace(&mut self.state, State::Failed) else {
            return Ok(dropped(DropReason::Unexpected));
        };
        if self.install_keys(suite, &ke, &ke_p.data).is_err() {
            return Ok(self.fail(
                FailReason::LocalError(NotifyType::INVALID_SYNTAX),
                Vec::new(),
            ));
        }
        self.init_response = msg.to_vec();
        let req = self.auth_request()?;
        self.message_id = 1;
        self.state = State::AuthSent;
        Ok(vec![Output::Send(req)])
    }

    /// Runs `f` on `signer`'s SignedOctets (RFC 7296 §2.15): RealMessage | Nonce of the other
    /// side | prf(SK_p, RestOfIDPayload), the last from the ID payload body `id_body` of `id`.
    fn with_signed_octets<T>(
        &self,
        signer: Role,
        id: &Identity,
        id_body: &[u8],
        f: impl FnOnce(&SignedOctets<'_>) -> T,
    ) -> Result<T, SessionError> {
        let prot = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?;
        let prf: PrfAlg = prot.keys.suite().prf();
        let (real_message, nonce, sk_p) = match signer {
            Role::Initiator => (&self.init_request, &self.nr, prot.keys.sk_pi()),
            Role::Responder => (&self.init_response, &self.ni, prot.keys.sk_pr()),
        };
        let maced_id = prf
            .prf(sk_p, &[id_body])
            .map_err(|_| SessionError::Internal("prf"))?;
        Ok(f(&SignedOctets {
            prf,
            real_message,
            nonce,
            maced_id: maced_id.expose(),
            id,
        }))
    }

    /// Our AUTH payload, as `signer` (our role in the IKE SA), for our identity.
    fn sign_auth(&self, signer: Role) -> Result<AuthPayload, SessionError> {
        let id = &self.cfg.local_id;
        let data = self
            .with_signed_octets(signer, id, &id_body(id)?, |o| self.cfg.auth.sign(o))?
            .map_err(SessionError::Auth)?;
        Ok(AuthPayload {
            method: self.cfg.auth.method(),
            data,
        })
    }

    /// Whether the peer's AUTH payload proves `id`, whose ID payload body was `id_body` as
    /// received (RFC 7296 §2.15).
    fn verify_auth(&self, signer: Role, id_body: &[u8], id: &Identity, auth: &AuthPayload) -> bool {
        self.with_signed_octets(signer, id, id_body, |o| {
            self.cfg.auth.verify(o, auth.method, &auth.data)
        })
        .is_ok_and(|r| r.is_ok())
    }

    /// Encrypts `inner` into a message with this header (RFC 7296 §3.14: SK payload last).
    fn seal(&self, header: Header, inner: &[Payload]) -> Result<Vec<u8>, SessionError> {
        let prot = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?;
        seal_with(prot, header, inner)
    }

    /// Verifies and decrypts the SK payload of a received message.
    fn open(&self, msg: &[u8]) -> Result<Opened, OpenError> {
        if let Some((first, plain)) = &self.reassembled {
            // Every fragment passed its integrity check on arrival (RFC 7383 §2.6).
            self.verified.set(true);
            return Ok(Opened {
                plain: plain.clone(),
                first: *first,
                payloads: parse_chain(*first, plain),
            });
        }
        let opened = open_with(self.prot.as_ref().ok_or(OpenError::Malformed)?, msg);
        if opened.is_ok() {
            self.verified.set(true);
        }
        opened
    }

    fn auth_request(&self) -> Result<Vec<u8>, SessionError> {
        let auth = self.sign_auth(Role::Initiator)?;
        let inner = vec![
            Payload::IdI(self.cfg.local_id.clone()),
            Payload::IdR(self.cfg.remote_id.clone()),
            Payload::Auth(auth),
            Payload::Sa(proposal::esp_offer(
                &self.cfg.esp_proposals,
                self.child_spi_in,
            )),
            Payload::TsI(TsPayload {
                selectors: self.cfg.ts_local.clone(),
            }),
            Payload::TsR(TsPayload {
                selectors: self.cfg.ts_remote.clone(),
            }),
        ];
        self.seal(self.header(ExchangeType::IKE_AUTH, false, 1), &inner)
    }

    fn ike_sa_up(&self) -> Result<Output, SessionError> {
        let prot = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?;
        Ok(Output::Event(SessionEvent::IkeSaUp {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            suite: *prot.keys.suite(),
            nat_local: self.nat.0,
            nat_remote: self.nat.1,
        }))
    }

    /// KEYMAT for the first Child SA (RFC 7296 §2.17: no PFS, the IKE_SA_INIT nonces).
    fn child_sa(
        &self,
        spi_out: u32,
        suite: EspSuite,
        esn: bool,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
    ) -> Result<ChildSa, SessionError> {
        let prot = self
            .prot
            .as_ref()
            .ok_or(SessionError::Internal("no keys"))?;
        let lengths = ChildKeyLengths {
            encr: suite.keymat_len(),
            integ: 0,
        };
        let ck = prot
            .keys
            .child_sa_keys(None, &self.ni, &self.nr, lengths)
            .map_err(|_| SessionError::Internal("KEYMAT"))?;
        Ok(ChildSa {
            spi_in: self.child_spi_in,
            spi_out,
            suite,
            esn,
            keymat_in: SecretBytes::from_slice(ck.inbound(self.role).0),
            keymat_out: SecretBytes::from_slice(ck.outbound(self.role).0),
            ts_local,
            ts_remote,
        })
    }

    fn on_auth_response(&mut self, msg: &[u8], h: &Header) -> Result<Vec<Output>, SessionError> {
        if h.exchange != ExchangeType::IKE_AUTH || h.spi_i != self.spi_i || h.spi_r != self.spi_r {
            return Ok(dropped(DropReason::Unexpected));
        }
        if h.message_id != self.message_id {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        }
        let opened = match self.open(msg) {
            Ok(o) => o,
            Err(e) => return Ok(not_opened(e)),
        };
        let Ok(payloads) = opened.payloads else {
            return Ok(self.fail(
                FailReason::LocalError(NotifyType::INVALID_SYNTAX),
                Vec::new(),
            ));
        };
        let auth = payloads.iter().find_map(|p| match p {
            Payload::Auth(a) => Some(a),
            _ => None,
        });
        let idr = payloads.iter().find_map(|p| match p {
            Payload::IdR(i) => Some(i),
            _ => None,
        });
        let error = first_error(&payloads).map(|n| n.kind);
        let (Some(auth), Some(idr)) = (auth, idr) else {
            // No AUTH: the exchange failed as a whole (RFC 7296 §2.21.2).
            let kind = error.unwrap_or(NotifyType::INVALID_SYNTAX);
            let reason = if error.is_some() {
                FailReason::PeerError(kind)
            } else {
                FailReason::LocalError(kind)
            };
            return Ok(self.fail(reason, Vec::new()));
        };
        let idr_raw = raw_body(&opened.plain, opened.first, PayloadType::IDR).unwrap_or_default();
        if *idr != self.cfg.remote_id || !self.verify_auth(Role::Responder, &idr_raw, idr, auth) {
            return Ok(self.fail(
                FailReason::LocalError(NotifyType::AUTHENTICATION_FAILED),
                Vec::new(),
            ));
        }
        self.state = State::Established;
        let mut out = vec![self.ike_sa_up()?];
        if let Some(kind) = error {
            out.push(Output::Event(SessionEvent::ChildSaFailed(kind)));
            return Ok(out);
        }
        let sa = payloads.iter().find_map(|p| match p {
            Payload::Sa(s) => Some(s),
            _ => None,
        });
        let tsi = payloads.iter().find_map(|p| match p {
            Payload::TsI(t) => Some(&t.selectors),
            _ => None,
        });
        let tsr = payloads.iter().find_map(|p| match p {
            Payload::TsR(t) => Some(&t.selectors),
            _ => None,
        });
        let chosen = sa.and_then(|sa| proposal::esp_chosen(sa, &self.cfg.esp_proposals));
        let (Some((spi_out, suite, esn)), Some(tsi), Some(tsr)) = (chosen, tsi, tsr) else {
            out.push(Output::Event(SessionEvent::ChildSaFailed(
                NotifyType::NO_PROPOSAL_CHOSEN,
            )));
            return Ok(out);
        };
        if !ts::within(tsi, &self.cfg.ts_local) || !ts::within(tsr, &self.cfg.ts_remote) {
            out.push(Output::Event(SessionEvent::ChildSaFailed(
                NotifyType::TS_UNACCEPTABLE,
            )));
            return Ok(out);
        }
        let child = self.child_sa(spi_out, suite, esn, tsi.clone(), tsr.clone())?;
        out.push(Output::Event(SessionEvent::ChildSaUp(child)));
        Ok(out)
    }

    // ----- responder -----

    /// An unauthenticated error answer to IKE_SA_INIT; the responder keeps no state.
    fn init_error(
        &self,
        h: &Header,
        kind: NotifyType,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, SessionError> {
        Message {
            header: Header {
                spi_i: h.spi_i,
                spi_r: 0,
                exchange: ExchangeType::IKE_SA_INIT,
                flags: Flags {
                    initiator: false,
                    version: false,
                    response: true,
                },
                message_id: h.message_id,
            },
            payloads: vec![notify(kind, data)],
        }
        .to_bytes()
        .map_err(emit_err)
    }

    fn on_init_request(&mut self, msg: &[u8], h: &Header) -> Result<Vec<Output>, SessionError> {
        if h.exchange != ExchangeType::IKE_SA_INIT
            || h.message_id != 0
            || h.spi_r != 0
            || h.spi_i == 0
        {
            return Ok(dropped(DropReason::Unexpected));
        }
        // Unauthenticated and malformed: drop (RFC 7296 §2.21.1).
        let Ok(m) = Message::parse(msg) else {
            return Ok(dropped(DropReason::Malformed));
        };
        let Some((sa, ke_p, nonce)) = init_payloads(&m.payloads) else {
            return Ok(dropped(DropReason::Malformed));
        };
        let Some((number, suite)) = proposal::ike_select(sa, &self.cfg.ike_proposals) else {
            let r = self.init_error(h, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new())?;
            return Ok(vec![Output::Send(r)]);
        };
        let group = suite.dh();
        if ke_p.group != group.transform_id() {
            // RFC 7296 §1.2: tell the initiator which group we want.
            let data = group.transform_id().to_be_bytes().to_vec();
            let r = self.init_error(h, NotifyType::INVALID_KE_PAYLOAD, data)?;
            return Ok(vec![Output::Send(r)]);
        }
        let (ke, public) = KeyExchange::generate(group).map_err(|_| SessionError::Rng)?;
        if ke.agree(&ke_p.data).is_err() {
            // An invalid public value (RFC 6989): answer as for a syntax error.
            let r = self.init_error(h, NotifyType::INVALID_SYNTAX, Vec::new())?;
            return Ok(vec![Output::Send(r)]);
        }
        self.spi_i = h.spi_i;
        self.spi_r = random_ike_spi()?;
        self.ni = nonce.clone();
        self.nr = random::<NONCE_LEN>()?.to_vec();
        self.nat = self.nat_detect(&m.payloads, 0);
        self.install_keys(suite, &ke, &ke_p.data)?;
        let mut payloads = vec![
            Payload::Sa(proposal::ike_answer(number, &suite)),
            Payload::Ke(KePayload {
                group: group.transform_id(),
                data: public,
            }),
            Payload::Nonce(self.nr.clone()),
        ];
        payloads.extend(self.nat_notifies());
        let resp = Message {
            header: self.header(ExchangeType::IKE_SA_INIT, true, 0),
            payloads,
        }
        .to_bytes()
        .map_err(emit_err)?;
        self.init_request = msg.to_vec();
        self.init_response = resp.clone();
        self.child_spi_in = self.alloc_spi()?;
        self.cached = Some(Cached {
            message_id: 0,
            request: msg.to_vec(),
            response: resp.clone(),
        });
        self.message_id = 1;
        self.state = State::InitDone;
        Ok(vec![Output::Send(resp)])
    }

    /// Sends `inner` as the encrypted response to request `h`, caching it (R-6.2-c).
    fn respond(
        &mut self,
        msg: &[u8],
        h: &Header,
        inner: &[Payload],
    ) -> Result<Output, SessionError> {
        let resp = self.seal(self.header(h.exchange, true, h.message_id), inner)?;
        self.cached = Some(Cached {
            message_id: h.message_id,
            request: msg.to_vec(),
            response: resp.clone(),
        });
        self.message_id = h.message_id.wrapping_add(1);
        Ok(Output::Send(resp))
    }

    fn respond_error(
        &mut self,
        msg: &[u8],
        h: &Header,
        kind: NotifyType,
    ) -> Result<Vec<Output>, SessionError> {
        self.respond_notify(msg, h, NotifyPayload::new(kind, Vec::new()))
    }

    /// Answers the request with this error notification and gives up on the IKE SA.
    fn respond_notify(
        &mut self,
        msg: &[u8],
        h: &Header,
        n: NotifyPayload,
    ) -> Result<Vec<Output>, SessionError> {
        let kind = n.kind;
        let out = self.respond(msg, h, &[Payload::Notify(n)])?;
        Ok(self.fail(FailReason::LocalError(kind), vec![out]))
    }

    fn on_auth_request(&mut self, msg: &[u8], h: &Header) -> Result<Vec<Output>, SessionError> {
        if h.spi_i != self.spi_i || h.spi_r != self.spi_r {
            return Ok(dropped(DropReason::Unexpected));
        }
        if h.message_id != self.message_id {
            return Ok(dropped(DropReason::UnexpectedMessageId));
        }
        if h.exchange != ExchangeType::IKE_AUTH {
            return Ok(dropped(DropReason::Unexpected));
        }
        let opened = match self.open(msg) {
            Ok(o) => o,
            Err(e) => return Ok(not_opened(e)),
        };
        // R-6.1-q: authentic but unparsable → INVALID_SYNTAX at the IKE layer.
        let payloads = match opened.payloads {
            Ok(p) => p,
            // UNSUPPORTED_CRITICAL_PAYLOAD for an unknown critical payload, else INVALID_SYNTAX.
            Err(e) => {
                let n = e
                    .to_notify()
                    .unwrap_or_else(|| NotifyPayload::new(NotifyType::INVALID_SYNTAX, Vec::new()));
                return self.respond_notify(msg, h, n);
            }
        };
        let find = |k: PayloadType| payloads.iter().find(|p| p.kind() == k);
        let (
            Some(Payload::IdI(idi)),
            Some(Payload::Auth(auth)),
            Some(Payload::Sa(sa)),
            Some(Payload::TsI(tsi)),
            Some(Payload::TsR(tsr)),
        ) = (
            find(PayloadType::IDI),
            find(PayloadType::AUTH),
            find(PayloadType::SA),
            find(PayloadType::TSI),
            find(PayloadType::TSR),
        )
        else {
            return self.respond_error(msg, h, NotifyType::INVALID_SYNTAX);
        };
        let idi_raw = raw_body(&opened.plain, opened.first, PayloadType::IDI).unwrap_or_default();
        let asked_idr = match find(PayloadType::IDR) {
            Some(Payload::IdR(idr)) => Some(idr),
            _ => None,
        };
        if *idi != self.cfg.remote_id
            && let Some((tag, c)) = self
                .peers
                .iter()
                .find(|(_, c)| c.remote_id == *idi && asked_idr.is_none_or(|r| *r == c.local_id))
        {
            // Another peer of this listener: its configuration from now on (the SPI pool is
            // the data plane's, the same for all).
            let (tag, mut c) = (*tag, c.clone());
            c.spi_pool = self.cfg.spi_pool.clone();
            self.cfg = c;
            self.chosen = Some(tag);
        }
        let idr_ok = match find(PayloadType::IDR) {
            Some(Payload::IdR(idr)) => *idr == self.cfg.local_id,
            _ => true,
        };
        if *idi != self.cfg.remote_id
            || !idr_ok
            || !self.verify_auth(Role::Initiator, &idi_raw, idi, auth)
        {
            return self.respond_error(msg, h, NotifyType::AUTHENTICATION_FAILED);
        }
        let sa: &SaPayload = sa;
        let my_auth = self.sign_auth(Role::Responder)?;
        let mut inner = vec![
            Payload::IdR(self.cfg.local_id.clone()),
            Payload::Auth(my_auth),
        ];
        // RFC 7296 §2.9: answer with the intersection of the proposal and our policy.
        let ts_i = ts::narrow(&tsi.selectors, &self.cfg.ts_remote);
        let ts_r = ts::narrow(&tsr.selectors, &self.cfg.ts_local);
        let child = match proposal::esp_select(sa, &self.cfg.esp_proposals) {
            None => Err(NotifyType::NO_PROPOSAL_CHOSEN),
            Some(_) if ts_i.is_empty() || ts_r.is_empty() => Err(NotifyType::TS_UNACCEPTABLE),
            Some(c) => Ok(c),
        };
        let mut events = vec![self.ike_sa_up()?];
        match child {
            Ok((number, spi_out, suite, esn)) => {
                inner.push(Payload::Sa(proposal::esp_answer(
                    number,
                    suite,
                    esn,
                    self.child_spi_in,
                )));
                inner.push(Payload::TsI(TsPayload {
                    selectors: ts_i.clone(),
                }));
                inner.push(Payload::TsR(TsPayload {
                    selectors: ts_r.clone(),
                }));
                let c = self.child_sa(spi_out, suite, esn, ts_r, ts_i)?;
                events.push(Output::Event(SessionEvent::ChildSaUp(c)));
            }
            Err(kind) => {
                inner.push(notify(kind, Vec::new()));
                events.push(Output::Event(SessionEvent::ChildSaFailed(kind)));
            }
        }
        let send = self.respond(msg, h, &inner)?;
        self.state = State::Established;
        let mut out = vec![send];
        out.extend(events);
        Ok(out)
    }
}

/// Encrypts `inner` into a message with this header (RFC 7296 §3.14: SK payload last).
fn seal_with(
    prot: &Protection,
    header: Header,
    inner: &[Payload],
) -> Result<Vec<u8>, SessionError> {
    let mut plain = Zeroizing::new(Vec::new());
    let first = emit_chain(inner, &mut plain).map_err(emit_err)?;
    seal_plain(prot, header, first, &plain)
}

/// Encrypts the encoded chain `plain`, whose first payload is `first`, into a message.
fn seal_plain(
    prot: &Protection,
    header: Header,
    first: PayloadType,
    plain: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let body = vec![0u8; prot.out.sealed_body_len(plain.len())];
    let skel = Message {
        header,
        payloads: vec![Payload::Sk(SkPayload {
            first_payload: first,
            body,
        })],
    }
    .to_bytes()
    .map_err(emit_err)?;
    let layout = locate_encrypted(&skel)
        .map_err(emit_err)?
        .ok_or(SessionError::Internal("no SK payload"))?;
    let mut out = Vec::with_capacity(skel.len());
    prot.out
        .seal(&skel[..layout.header.end], plain, &mut out)
        .map_err(|e| match e {
            SkError::Rng => SessionError::Rng,
            _ => SessionError::Internal("seal"),
        })?;
    Ok(out)
}

/// Fuzzing hooks (feature `fuzzing`): messages as this session would send them but with any
/// inner payload chain, so that fuzz targets reach the code behind the integrity check.
#[cfg(feature = "fuzzing")]
impl Session {
    /// `plain`, a raw inner chain whose first payload is `first`, sealed in an SK payload
    /// under this session's header (SPIs, I flag) with `exchange`, `response`, `message_id`.
    ///
    /// # Errors
    /// [`SessionError::NotEstablished`] without keys; local faults.
    #[doc(hidden)]
    pub fn fuzz_seal(
        &self,
        exchange: ExchangeType,
        response: bool,
        message_id: u32,
        first: PayloadType,
        plain: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let prot = self.prot.as_ref().ok_or(SessionError::NotEstablished)?;
        seal_plain(
            prot,
            self.header(exchange, response, message_id),
            first,
            plain,
        )
    }

    /// As [`Session::fuzz_seal`], one SKF fragment `number` of `total` (RFC 7383 §2.5).
    ///
    /// # Errors
    /// [`SessionError::NotEstablished`] without keys; local faults.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn fuzz_seal_fragment(
        &self,
        exchange: ExchangeType,
        response: bool,
        message_id: u32,
        first: PayloadType,
        number: u16,
        total: u16,
        plain: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let prot = self.prot.as_ref().ok_or(SessionError::NotEstablished)?;
        let header = self.header(exchange, response, message_id);
        frag::seal_fragment(&prot.keys, self.role, header, first, number, total, plain)
            .ok_or(SessionError::Internal("fragment"))
    }

    /// The decrypted inner chain of a message sent to this session: (first payload, chain).
    #[doc(hidden)]
    pub fn fuzz_open(&self, msg: &[u8]) -> Option<(PayloadType, Vec<u8>)> {
        let o = open_with(self.prot.as_ref()?, msg).ok()?;
        Some((o.first, o.plain.to_vec()))
    }

    /// (Message ID of our next request, Message ID the peer's next request must have).
    #[doc(hidden)]
    pub fn fuzz_message_ids(&self) -> (u32, u32) {
        (self.life.own_next_id, self.life.peer_next_id)
    }
}

/// Verifies and decrypts the SK payload of a received message with these keys.
fn open_with(prot: &Protection, msg: &[u8]) -> Result<Opened, OpenError> {
    {
        let layout = locate_encrypted(msg)
            .ok()
            .flatten()
            .filter(|l| l.kind == PayloadType::SK)
            .ok_or(OpenError::Malformed)?;
        let first = PayloadType(*msg.get(layout.header.start).ok_or(OpenError::Malformed)?);
        let plain = match prot.inb.open(msg, layout.header.start) {
            Ok(p) => Zeroizing::new(p),
            Err(SkError::Integrity) => return Err(OpenError::Integrity),
            // Authentic, but the Pad Length does not fit: a syntax problem of an
            // integrity-verified message (R-6.1-q), not an unauthenticated one.
            Err(SkError::Padding) => {
                return Ok(Opened {
                    plain: Zeroizing::new(Vec::new()),
                    first,
                    payloads: Err(crate::ike::wire::Error::BadLength(
                        crate::ike::wire::Part::Message,
                    )),
                });
            }
            Err(_) => return Err(OpenError::Malformed),
        };
        let payloads = parse_chain(first, &plain);
        Ok(Opened {
            plain,
            first,
            payloads,
        })
    }
}
