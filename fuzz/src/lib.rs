//! Shared by the fuzz targets and the corpus generator (`examples/gen_corpus.rs`): an IKE SA
//! established by the project's own initiator and responder, deterministic (seeded RNG of the
//! `fuzzing` feature, fixed clock), and the input encoding of the `ike_established` target.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iketcp_control::fuzzing::set_deterministic_rng;
use iketcp_control::ike::session::{Output, Session};
use iketcp_control::ike::wire::{ExchangeType, PayloadType};
use iketcp_dataplane::crypto::Suite;
use iketcp_lab::demo::configs;

pub mod driver;

/// The initiator's TCP address.
pub const I_ADDR: ([u8; 4], u16) = ([192, 0, 2, 2], 40000);
/// The responder's TCP address.
pub const R_ADDR: ([u8; 4], u16) = ([192, 0, 2, 1], 4500);
/// The RNG seed of every handshake.
pub const SEED: u64 = 0x1ce7_c0de;

/// The fixed start of the fake clock (one per process; only differences matter).
pub fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// `t0()` plus `secs`.
pub fn at(secs: u64) -> Instant {
    t0() + Duration::from_secs(secs)
}

/// The messages to send in a session call's outputs.
pub fn sends(out: &[Output]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// An initiator and a responder whose IKE SA and first Child SA are up.
#[derive(Debug)]
pub struct Pair {
    /// The initiator.
    pub i: Session,
    /// The responder.
    pub r: Session,
    /// The four messages of IKE_SA_INIT and IKE_AUTH, in order.
    pub handshake: Vec<Vec<u8>>,
}

/// Runs IKE_SA_INIT and IKE_AUTH with the demo configurations and the seeded RNG: the same
/// SPIs, nonces and keys every time. The RNG stays seeded on this thread afterwards.
pub fn established() -> Option<Pair> {
    set_deterministic_rng(Some(SEED));
    let (ci, cr) = configs(Suite::Aes256Gcm16, false).ok()?;
    let (ia, ra) = (SocketAddr::from(I_ADDR), SocketAddr::from(R_ADDR));
    let now = t0();
    let (mut i, m1) = Session::initiator(ci, ia, ra, now).ok()?;
    let mut r = Session::responder(cr, ra, ia);
    let m2 = sends(&r.handle(&m1, now).ok()?).pop()?;
    let m3 = sends(&i.handle(&m2, now).ok()?).pop()?;
    let m4 = sends(&r.handle(&m3, now).ok()?).pop()?;
    i.handle(&m4, now).ok()?;
    (i.is_established() && r.is_established()).then(|| Pair {
        i,
        r,
        handshake: vec![m1, m2, m3, m4],
    })
}

/// What the receiver of a [`Record`] does first, so that the record can answer its request
/// or collide with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    /// Nothing.
    None = 0,
    /// A liveness check.
    Dpd = 1,
    /// A new Child SA.
    CreateChild = 2,
    /// A rekey of its first Child SA, without PFS.
    RekeyChild = 3,
    /// A rekey of its first Child SA, with PFS.
    RekeyChildPfs = 4,
    /// A rekey of the IKE SA.
    RekeyIke = 5,
    /// A Delete of its first Child SA.
    DeleteChild = 6,
    /// A Delete of the IKE SA.
    DeleteIke = 7,
}

impl Action {
    /// From the record's octet (values above 7 are [`Action::None`]).
    pub fn from_octet(v: u8) -> Action {
        match v {
            1 => Action::Dpd,
            2 => Action::CreateChild,
            3 => Action::RekeyChild,
            4 => Action::RekeyChildPfs,
            5 => Action::RekeyIke,
            6 => Action::DeleteChild,
            7 => Action::DeleteIke,
            _ => Action::None,
        }
    }

    /// Runs it on `s`; returns the request, if one was made.
    pub fn run(self, s: &mut Session, now: Instant) -> Option<Vec<u8>> {
        let first = s.child_sas().first().map(|c| c.spi_in);
        let r = match (self, first) {
            (Action::Dpd, _) => s.start_dpd(now),
            (Action::CreateChild, _) => s.create_child(now),
            (Action::RekeyChild, Some(spi)) => s.rekey_child(spi, false, now),
            (Action::RekeyChildPfs, Some(spi)) => s.rekey_child(spi, true, now),
            (Action::RekeyIke, _) => s.rekey_ike(now),
            (Action::DeleteChild, Some(spi)) => s.delete_child(spi, now),
            (Action::DeleteIke, _) => s.delete_ike(now),
            _ => return None,
        };
        r.ok()
    }
}

/// One message of an `ike_established` input, before sealing.
///
/// Encoding: `ctl`, `action`, `exchange`, `first`, `len` (2 octets, big endian), then `len`
/// octets of inner chain (the last record may be shorter: it takes what is left).
/// `ctl` bits: 0 sender (0: initiator → responder, 1: responder → initiator); 1 response flag;
/// 2-3 Message ID (0 expected, 1 previous, 2 next, 3 zero); 4-5 fragments (1, 2, 3 or 4 SKF
/// payloads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Control bits, see above.
    pub ctl: u8,
    /// What the receiver does first ([`Action::from_octet`]).
    pub action: u8,
    /// Exchange type: 0 INFORMATIONAL, 1 CREATE_CHILD_SA, 2 IKE_AUTH, else the value itself.
    pub exchange: u8,
    /// Type of the first inner payload.
    pub first: u8,
    /// The inner payload chain.
    pub plain: Vec<u8>,
}

impl Record {
    /// Parses the records of an input (at most `max`).
    pub fn parse_all(mut data: &[u8], max: usize) -> Vec<Record> {
        let mut out = Vec::new();
        while out.len() < max {
            let [ctl, action, exchange, first, a, b, rest @ ..] = data else {
                break;
            };
            let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
            let (plain, tail) = rest.split_at(len);
            out.push(Record {
                ctl: *ctl,
                action: *action,
                exchange: *exchange,
                first: *first,
                plain: plain.to_vec(),
            });
            data = tail;
        }
        out
    }

    /// The encoding parsed by [`Record::parse_all`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = u16::try_from(self.plain.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&[self.ctl, self.action, self.exchange, self.first]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.plain[..usize::from(len)]);
    }

    /// Whether the initiator sends this message (else the responder).
    pub fn from_initiator(&self) -> bool {
        self.ctl & 1 == 0
    }

    /// The exchange type.
    pub fn exchange_type(&self) -> ExchangeType {
        match self.exchange {
            0 => ExchangeType::INFORMATIONAL,
            1 => ExchangeType::CREATE_CHILD_SA,
            2 => ExchangeType::IKE_AUTH,
            x => ExchangeType(x),
        }
    }

    /// The control octet for these choices (Message ID "expected"; `frags` SKF payloads,
    /// 1..=4, or one SK payload for 1).
    pub fn ctl_for(from_initiator: bool, response: bool, frags: u8) -> u8 {
        u8::from(!from_initiator) | (u8::from(response) << 1) | ((frags.clamp(1, 4) - 1) << 4)
    }
}

/// Seals `rec` as its sender would and hands it to the receiver, after the receiver's action.
/// Returns the receiver's outputs of all calls (messages to the sender are not delivered).
pub fn deliver(pair: &mut Pair, rec: &Record, now: Instant) -> Vec<Output> {
    let (sender, receiver) = if rec.from_initiator() {
        (&pair.i, &mut pair.r)
    } else {
        (&pair.r, &mut pair.i)
    };
    // The receiver's own request goes nowhere: the record may answer it.
    let _ = Action::from_octet(rec.action).run(receiver, now);
    let response = rec.ctl & 2 != 0;
    let (own_next, peer_next) = receiver.fuzz_message_ids();
    let expected = if response {
        own_next.wrapping_sub(1)
    } else {
        peer_next
    };
    let id = match (rec.ctl >> 2) & 3 {
        0 => expected,
        1 => expected.wrapping_sub(1),
        2 => expected.wrapping_add(1),
        _ => 0,
    };
    let exchange = rec.exchange_type();
    let first = PayloadType(rec.first);
    let n = usize::from((rec.ctl >> 4) & 3) + 1;
    let msgs: Vec<Vec<u8>> = if n == 1 {
        sender
            .fuzz_seal(exchange, response, id, first, &rec.plain)
            .into_iter()
            .collect()
    } else {
        let chunk = rec.plain.len().div_ceil(n).max(1);
        let parts: Vec<&[u8]> = rec.plain.chunks(chunk).collect();
        let total = u16::try_from(parts.len().max(1)).unwrap_or(1);
        let mut v = Vec::new();
        for (k, p) in parts.iter().enumerate() {
            let number = u16::try_from(k + 1).unwrap_or(1);
            let f = if number == 1 { first } else { PayloadType(0) };
            if let Ok(m) = sender.fuzz_seal_fragment(exchange, response, id, f, number, total, p) {
                v.push(m);
            }
        }
        v
    };
    let mut out = Vec::new();
    for m in msgs {
        if let Ok(o) = receiver.handle(&m, now) {
            out.extend(o);
        }
    }
    out
}
