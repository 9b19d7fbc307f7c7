//! Seed corpus from the project's own initiator and responder: IKE_SA_INIT, IKE_AUTH, then on a
//! fresh deterministic pair per scenario each exchange either side can start (liveness check,
//! new Child SA, Child SA rekey with and without PFS, IKE SA rekey, Child SA and IKE SA
//! deletes), every message both sides send until the exchange is done, and the requests again
//! as SKF fragments. Writes `corpus/<target>/gen-*` for the targets that take IKE messages.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus [-- OUT_DIR]` (default `corpus`).

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use iketcp_control::ike::wire::{ExchangeType, Header};
use iketcp_dataplane::wire::frame::{STREAM_PREFIX, encode_ike};
use iketcp_fuzz::driver::{Harness, Op};
use iketcp_fuzz::{Action, Pair, Record, at, established, sends};

/// One message of a scenario: who sent it, its bytes, and its inner chain as its receiver
/// decrypted it (first payload type, chain).
struct Logged {
    from_initiator: bool,
    msg: Vec<u8>,
    inner: Option<(u8, Vec<u8>)>,
}

/// Delivers `req` from one side and everything sent in answer, back and forth, until quiet.
fn run(pair: &mut Pair, from_initiator: bool, req: Vec<u8>) -> Vec<Logged> {
    let mut log = Vec::new();
    let mut queue = VecDeque::from([(from_initiator, req)]);
    while let Some((fi, msg)) = queue.pop_front() {
        if log.len() >= 16 {
            break;
        }
        let receiver = if fi { &mut pair.r } else { &mut pair.i };
        let inner = receiver.fuzz_open(&msg).map(|(f, p)| (f.0, p));
        let out = receiver.handle(&msg, at(2)).unwrap_or_default();
        for m in sends(&out) {
            queue.push_back((!fi, m));
        }
        log.push(Logged {
            from_initiator: fi,
            msg,
            inner,
        });
    }
    log
}

fn exchange_code(e: ExchangeType) -> u8 {
    match e {
        ExchangeType::INFORMATIONAL => 0,
        ExchangeType::CREATE_CHILD_SA => 1,
        ExchangeType::IKE_AUTH => 2,
        other => other.0,
    }
}

/// The `ike_established` record of a logged message.
fn record(l: &Logged, action: Action, frags: u8) -> Option<Record> {
    let h = Header::parse(&l.msg).ok()?.header;
    let (first, plain) = l.inner.clone()?;
    Some(Record {
        ctl: Record::ctl_for(l.from_initiator, h.flags.response, frags),
        action: action as u8,
        exchange: exchange_code(h.exchange),
        first,
        plain,
    })
}

struct Out {
    root: PathBuf,
    /// RFC 9329 streams as each side sends them.
    from_i: Vec<u8>,
    from_r: Vec<u8>,
}

impl Out {
    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        let ok = fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join(name), bytes));
        if let Err(e) = ok {
            eprintln!("{}: {e}", dir.display());
        }
    }

    /// A raw message: for `ike_message` whole and as a chain, framed into a stream.
    fn message(&mut self, name: &str, from_initiator: bool, l: &Logged) {
        self.write("ike_message", name, &l.msg);
        if let Some((first, plain)) = &l.inner {
            let mut v = vec![*first];
            v.extend_from_slice(plain);
            self.write("ike_message", &format!("{name}-chain"), &v);
        }
        let mut buf = vec![0u8; l.msg.len() + 8];
        if let Ok(n) = encode_ike(&l.msg, &mut buf) {
            let s = if from_initiator {
                &mut self.from_i
            } else {
                &mut self.from_r
            };
            s.extend_from_slice(&buf[..n]);
        }
    }
}

fn scenario(out: &mut Out, name: &str, by_initiator: bool, action: Action) {
    let Some(mut pair) = established() else {
        eprintln!("{name}: no IKE SA");
        return;
    };
    let s = if by_initiator {
        &mut pair.i
    } else {
        &mut pair.r
    };
    let Some(req) = action.run(s, at(2)) else {
        eprintln!("{name}: no request");
        return;
    };
    let log = run(&mut pair, by_initiator, req);
    let mut flow = Vec::new();
    for (k, l) in log.iter().enumerate() {
        out.message(&format!("gen-{name}-{k}"), l.from_initiator, l);
        // The request as it comes; an answer to the receiver's own request (the first
        // response answers `action`, done by the receiver first).
        let act = if k == 1 { action } else { Action::None };
        if let Some(rec) = record(l, act, 1) {
            let mut one = Vec::new();
            rec.encode(&mut one);
            out.write("ike_established", &format!("gen-{name}-{k}"), &one);
            rec.encode(&mut flow);
        }
    }
    out.write("ike_established", &format!("gen-{name}-flow"), &flow);
    // The request again in three SKF fragments (RFC 7383), which the session reassembles.
    if let Some(rec) = log.first().and_then(|l| record(l, Action::None, 3)) {
        let mut v = Vec::new();
        rec.encode(&mut v);
        out.write("ike_established", &format!("gen-{name}-frag"), &v);
    }
}

/// `driver_events` inputs: handshakes through both endpoints, then exchanges, timers,
/// reconnects and operator commands. Each is run here once and its end state printed.
fn driver_seeds(out: &Out) {
    use Op::*;
    // Worker 0 (Responder endpoint) on slot 0; worker 1 (Originator) is worker/slot octet 4.
    let resp = vec![AckAll(1), Accept(0), Peer(0), Peer(0), AckAll(1)];
    let orig = vec![Connected(0), Peer(4), Peer(4), AckAll(1)];
    let both: Vec<Op> = resp.iter().chain(&orig).cloned().collect();
    let more = |tail: Vec<Op>| -> Vec<Op> { both.iter().cloned().chain(tail).collect() };
    let seeds = [
        ("resp", resp.clone()),
        ("orig", orig.clone()),
        ("both", both.clone()),
        (
            "peer-exchanges",
            more(vec![
                PeerAction(0, Action::CreateChild as u8),
                Peer(0),
                AckAll(1),
                PeerAction(0, Action::RekeyChild as u8),
                Peer(0),
                AckAll(1),
                PeerAction(1, Action::RekeyIke as u8),
                Peer(4),
                AckAll(1),
                PeerAction(1, Action::Dpd as u8),
                Peer(4),
                PeerAction(0, Action::DeleteChild as u8),
                Peer(0),
                AckAll(1),
            ]),
        ),
        (
            "admin",
            more(vec![
                Admin(0),
                Peer(0),
                Peer(4),
                AckAll(1),
                Peer(0),
                Peer(4),
                AckAll(1),
                Admin(1),
                Peer(0),
                Peer(4),
                Admin(3),
                AckAll(1),
                Admin(2),
                Peer(0),
                Peer(4),
                AckAll(1),
            ]),
        ),
        (
            "timers",
            more(vec![
                Advance(21),
                Peer(0),
                Peer(4),
                Stats,
                Advance(21),
                Advance(11),
                Expire(0, 0),
                Expire(1, 3),
                AckAll(1),
                Advance(60),
            ]),
        ),
        (
            "reconnect",
            more(vec![
                Down(4, 1),
                Advance(1),
                Connected(1),
                Peer(4),
                Down(0, 0),
                Accept(1),
                PeerAction(0, Action::Dpd as u8),
                Peer(1),
                Advance(5),
                Down(5, 2),
                Advance(3),
                Down(5, 2),
                Advance(10),
            ]),
        ),
        (
            "mutated",
            vec![
                AckAll(1),
                Accept(0),
                PeerMutated(0, 40, 4),
                Peer(0),
                Raw(0, vec![0; 28]),
                AckAll(0),
            ],
        ),
    ];
    for (name, ops) in seeds {
        let mut v = Vec::new();
        for op in &ops {
            op.encode(&mut v);
        }
        out.write("driver_events", &format!("gen-{name}"), &v);
        if let Some(mut h) = Harness::new() {
            for op in &Op::parse_all(&v, usize::MAX) {
                h.step(op);
            }
            println!(
                "driver_events gen-{name}: {:?}, installed {}, stray {}",
                h.core.counts(),
                h.core.installed(),
                h.stray
            );
        }
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("corpus"), PathBuf::from);
    let mut out = Out {
        root,
        from_i: STREAM_PREFIX.to_vec(),
        from_r: Vec::new(),
    };
    let Some(pair) = established() else {
        eprintln!("no IKE SA");
        std::process::exit(1);
    };
    for (k, m) in pair.handshake.iter().enumerate() {
        let l = Logged {
            from_initiator: k % 2 == 0,
            msg: m.clone(),
            inner: None,
        };
        out.message(&format!("gen-handshake-{k}"), k % 2 == 0, &l);
    }
    // The unauthenticated screen and responder see the IKE_SA_INIT request, then IKE_AUTH.
    out.write("ike_responder", "gen-init", &pair.handshake[0]);
    let mut both = pair.handshake[0].clone();
    both.extend_from_slice(&pair.handshake[2]);
    out.write("ike_responder", "gen-init-auth", &both);
    let scenarios = [
        ("dpd", Action::Dpd),
        ("create-child", Action::CreateChild),
        ("rekey-child", Action::RekeyChild),
        ("rekey-child-pfs", Action::RekeyChildPfs),
        ("rekey-ike", Action::RekeyIke),
        ("delete-child", Action::DeleteChild),
        ("delete-ike", Action::DeleteIke),
    ];
    for (name, action) in scenarios {
        scenario(&mut out, &format!("i-{name}"), true, action);
        scenario(&mut out, &format!("r-{name}"), false, action);
    }
    // stream_decoder: control octet (bit 0 role, 0x80 whole input at once), then the stream.
    let mut s = vec![0x80];
    s.extend_from_slice(&out.from_i);
    out.write("stream_decoder", "gen-from-initiator", &s);
    let mut s = vec![0x81];
    s.extend_from_slice(&out.from_r);
    out.write("stream_decoder", "gen-from-responder", &s);
    let mut s = vec![0x0e];
    s.extend_from_slice(&out.from_i);
    out.write("stream_decoder", "gen-from-initiator-chunked", &s);
    driver_seeds(&out);
    let n = fs::read_dir(Path::new(&out.root).join("ike_established")).map_or(0, |d| d.count());
    println!("wrote the corpus under {}", out.root.display());
    println!("ike_established: {n} files");
}
