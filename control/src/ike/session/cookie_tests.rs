//! The initiator's side of cookies and puzzles (RFC 7296 §2.6, RFC 8019 §7.1.2), and a whole
//! exchange through the responder's stateless screen (`crate::ike::cookie`), in memory with a
//! fake clock. Addresses are from the documentation ranges.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::ike::cookie::{
    CookieJar, CookiePolicy, MAX_SOLVE_DIFFICULTY, Puzzle, ReplyKind, Screen, ScreenDrop,
    SolveError, verify_solution,
};
use crate::ike::crypto::EncrAlg;
use crate::ike::wire::{PuzzleData, TsRange};

/// The initiator's first connection, its retry connection (another port, R-6.3-c), and the
/// responder.
const I_FIRST: ([u8; 4], u16) = ([192, 0, 2, 1], 40000);
const I_RETRY: ([u8; 4], u16) = ([192, 0, 2, 1], 40001);
const R_ADDR: ([u8; 4], u16) = ([198, 51, 100, 1], 4500);

fn sock((ip, port): ([u8; 4], u16)) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

fn ts4(a: [u8; 4], b: [u8; 4]) -> TrafficSelector {
    TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start_addr: Ipv4Addr::from(a),
        end_addr: Ipv4Addr::from(b),
    })
}

fn configs() -> (Config, Config) {
    let suite = IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Curve25519,
    )
    .unwrap();
    let i = Config {
        local_id: Identity::Fqdn(b"initiator.example".to_vec()),
        remote_id: Identity::Fqdn(b"responder.example".to_vec()),
        auth: PskAuth::shared(b"correct horse battery staple"),
        ike_proposals: vec![suite],
        esp_proposals: vec![(EspSuite::AesGcm16_128, false)],
        ts_local: vec![ts4([203, 0, 113, 0], [203, 0, 113, 127])],
        ts_remote: vec![ts4([203, 0, 113, 128], [203, 0, 113, 255])],
        spi_pool: SpiPool::new(),
    };
    let r = Config {
        local_id: i.remote_id.clone(),
        remote_id: i.local_id.clone(),
        ts_local: i.ts_remote.clone(),
        ts_remote: i.ts_local.clone(),
        ..i.clone()
    };
    (i, r)
}

fn initiator(now: Instant) -> (Session, Vec<u8>) {
    let (ci, _) = configs();
    Session::initiator(ci, sock(I_FIRST), sock(R_ADDR), now).unwrap()
}

fn split(out: Vec<Output>) -> (Vec<Vec<u8>>, Vec<SessionEvent>) {
    let mut sends = Vec::new();
    let mut events = Vec::new();
    for o in out {
        match o {
            Output::Send(b) => sends.push(b),
            Output::Event(e) => events.push(e),
            Output::Sa(e) => panic!("no lifecycle events before IKE_AUTH: {e:?}"),
            Output::SolvePuzzle(j) => panic!("unexpected puzzle job {j:?}"),
        }
    }
    (sends, events)
}

/// The puzzle job that is all a call returned.
fn job_of(out: Vec<Output>) -> PuzzleJob {
    match <[Output; 1]>::try_from(out) {
        Ok([Output::SolvePuzzle(job)]) => job,
        other => panic!("expected one puzzle job, got {other:?}"),
    }
}

/// Solves on another thread, as a caller does (RFC 8019 §7.1.2: not on the session's).
fn solve_elsewhere(job: PuzzleJob) -> PuzzleAnswer {
    std::thread::spawn(move || job.solve()).join().unwrap()
}

/// The initiator's answer to a cookie reply, with a puzzle job (if it hands one out) solved on
/// another thread and the answer given back.
fn answer_reply(i: &mut Session, reply: &[u8], now: Instant) -> Vec<Output> {
    match <[Output; 1]>::try_from(i.handle(reply, now).unwrap()) {
        Ok([Output::SolvePuzzle(job)]) => i.puzzle_solved(solve_elsewhere(job), now).unwrap(),
        Ok(one) => Vec::from(one),
        Err(out) => out,
    }
}

fn failed(events: &[SessionEvent]) -> Option<FailReason> {
    events.iter().find_map(|e| match e {
        SessionEvent::Failed(f) => Some(*f),
        _ => None,
    })
}

fn child(events: &[SessionEvent]) -> Option<&ChildSa> {
    events.iter().find_map(|e| match e {
        SessionEvent::ChildSaUp(c) => Some(c),
        _ => None,
    })
}

/// A responder's IKE_SA_INIT answer to `first` with these payloads.
fn response_to(first: &[u8], payloads: Vec<Payload>) -> Vec<u8> {
    let h = Header::parse(first).unwrap().header;
    Message {
        header: Header {
            flags: Flags {
                initiator: false,
                version: false,
                response: true,
            },
            ..h
        },
        payloads,
    }
    .to_bytes()
    .unwrap()
}

fn puzzle_notify(prf: u16, difficulty: u8) -> Payload {
    notify(
        NotifyType::PUZZLE,
        PuzzleData { prf, difficulty }.to_bytes().to_vec(),
    )
}

/// R-6.3-d: the initiator behaves per RFC 7296 §2.6 and RFC 8019 §7.1.2 over TCP. Its first
/// request meets a responder under load, which answers statelessly with COOKIE and PUZZLE; the
/// initiator solves the puzzle and retries (here over a new connection from another port,
/// R-6.3-c) with N(COOKIE), PS, SA, KE, Ni; the screen accepts, and the responder session created
/// only then completes IKE_SA_INIT and IKE_AUTH.
#[test]
fn r_6_3_d_full_exchange_through_cookie_and_puzzle() {
    let now = Instant::now();
    let policy = CookiePolicy {
        half_open_threshold: 4,
        puzzle_difficulty: 8,
        ..CookiePolicy::tcp()
    };
    let jar = CookieJar::new(policy, now).unwrap();
    let (mut i, first) = initiator(now);
    let half_open = 4;

    // Under load: a stateless reply, no session (R-6.3-a: with a puzzle).
    let Screen::Reply(reply) = jar.screen(&first, sock(I_FIRST).ip(), half_open) else {
        panic!("expected a cookie reply");
    };
    assert!(matches!(
        reply.kind,
        ReplyKind::CookieAndPuzzle(Puzzle { difficulty: 8, .. })
    ));

    // RFC 8019 §7.1.2: the initiator hands the puzzle out instead of solving it in `handle`
    // (nothing is sent yet, and no exchange timeout runs while it is solved) ...
    let later = now + Duration::from_millis(20);
    let job = job_of(i.handle(&reply.message, later).unwrap());
    assert_eq!(
        job.puzzle(),
        Puzzle {
            prf: PrfAlg::HmacSha256,
            difficulty: 8
        }
    );
    assert_eq!(job.spi_i(), i.spis().0);
    assert_eq!(i.poll_timeout(), None);
    // ... and with the answer retries; nothing else changes (RFC 7296 §2.6).
    let answer = solve_elsewhere(job);
    let (sends, events) = split(i.puzzle_solved(answer, later).unwrap());
    assert!(events.is_empty(), "{events:?}");
    let [retry] = sends.as_slice() else {
        panic!("expected one retry, got {}", sends.len());
    };
    let a = Message::parse(&first).unwrap();
    let b = Message::parse(retry).unwrap();
    let Payload::Notify(cookie) = &b.payloads[0] else {
        panic!("cookie not first");
    };
    assert_eq!(cookie.kind, NotifyType::COOKIE);
    let Payload::Ps(ps) = &b.payloads[1] else {
        panic!("PS not after the cookie");
    };
    assert_eq!(
        &b.payloads[2..],
        &a.payloads[..],
        "other payloads unchanged"
    );
    assert_eq!(b.header, a.header);
    let p = Puzzle {
        prf: PrfAlg::HmacSha256,
        difficulty: 8,
    };
    assert!(verify_solution(p, &cookie.data, ps).unwrap() >= 8);

    // The retry comes from another TCP port of the same address, still under load.
    assert_eq!(
        jar.screen(retry, sock(I_RETRY).ip(), half_open + 100),
        Screen::Accept
    );
    let (_, cr) = configs();
    let mut r = Session::responder(cr, sock(R_ADDR), sock(I_RETRY));
    let (mut ie, mut re) = (Vec::new(), Vec::new());
    let mut to_r = vec![retry.clone()];
    let mut to_i: Vec<Vec<u8>> = Vec::new();
    loop {
        if let Some(m) = to_r.pop() {
            let (s, e) = split(r.handle(&m, later).unwrap());
            to_i.extend(s);
            re.extend(e);
        } else if let Some(m) = to_i.pop() {
            let (s, e) = split(i.handle(&m, later).unwrap());
            to_r.extend(s);
            ie.extend(e);
        } else {
            break;
        }
    }
    assert!(i.is_established() && r.is_established(), "{ie:?} {re:?}");
    assert_eq!(i.spis(), r.spis());
    // The first Child SA is keyed alike on both ends.
    let (ci, cr) = (child(&ie).unwrap(), child(&re).unwrap());
    assert_eq!((ci.spi_in, ci.spi_out), (cr.spi_out, cr.spi_in));
    assert_eq!(ci.keymat_in, cr.keymat_out);
    assert_eq!(ci.keymat_out, cr.keymat_in);
}

/// R-6.3-d with a cookie-only reply (the R-6.3-a exception): no PS payload in the retry.
#[test]
fn r_6_3_d_cookie_only_retry_has_no_ps() {
    let now = Instant::now();
    let policy = CookiePolicy {
        half_open_threshold: 0,
        puzzle_difficulty: 0,
        cookie_without_puzzle: true,
        ..CookiePolicy::tcp()
    };
    let jar = CookieJar::new(policy, now).unwrap();
    let (mut i, first) = initiator(now);
    let Screen::Reply(reply) = jar.screen(&first, sock(I_FIRST).ip(), 0) else {
        panic!("expected a cookie reply");
    };
    assert_eq!(reply.kind, ReplyKind::Cookie);
    let (sends, _) = split(i.handle(&reply.message, now).unwrap());
    let b = Message::parse(&sends[0]).unwrap();
    assert!(!b.payloads.iter().any(|p| matches!(p, Payload::Ps(_))));
    assert_eq!(jar.screen(&sends[0], sock(I_RETRY).ip(), 0), Screen::Accept);
}

/// An absurd difficulty ends the session cleanly, without a retry and without the work.
#[test]
fn puzzle_too_hard_fails_the_session() {
    let now = Instant::now();
    for d in [MAX_SOLVE_DIFFICULTY + 1, 40, 255] {
        let (mut i, first) = initiator(now);
        let resp = response_to(
            &first,
            vec![
                notify(NotifyType::COOKIE, vec![0xc0; 16]),
                puzzle_notify(5, d),
            ],
        );
        let (sends, events) = split(i.handle(&resp, now).unwrap());
        assert!(sends.is_empty());
        assert_eq!(failed(&events), Some(FailReason::PuzzleRefused(d)));
        assert!(i.is_failed());
    }
}

/// RFC 8019 §7.1.2: PUZZLE without COOKIE is malformed: ignored, the initiator keeps waiting and
/// still answers a proper cookie request afterwards.
#[test]
fn puzzle_without_cookie_is_ignored() {
    let now = Instant::now();
    let (mut i, first) = initiator(now);
    let resp = response_to(&first, vec![puzzle_notify(5, 8)]);
    let (sends, events) = split(i.handle(&resp, now).unwrap());
    assert!(sends.is_empty());
    assert!(matches!(
        events.as_slice(),
        [SessionEvent::Dropped(DropReason::Malformed)]
    ));
    assert!(!i.is_failed());
    let cookie = vec![0xc0; 16];
    let resp = response_to(
        &first,
        vec![
            notify(NotifyType::COOKIE, cookie.clone()),
            puzzle_notify(2, 8),
        ],
    );
    let (sends, _) = split(answer_reply(&mut i, &resp, now));
    let b = Message::parse(&sends[0]).unwrap();
    let Payload::Ps(ps) = &b.payloads[1] else {
        panic!("no PS");
    };
    let p = Puzzle {
        prf: PrfAlg::HmacSha1,
        difficulty: 8,
    };
    assert!(verify_solution(p, &cookie, ps).is_ok());
}

/// RFC 8019 §7.1.2: a PUZZLE naming a PRF we do not implement, or malformed, is ignored like an
/// unknown status notification: the retry carries the cookie alone.
#[test]
fn unusable_puzzle_gets_a_cookie_only_retry() {
    let now = Instant::now();
    for data in [vec![0, 99, 8], vec![0, 5], vec![0, 5, 8, 1], Vec::new()] {
        let (mut i, first) = initiator(now);
        let resp = response_to(
            &first,
            vec![
                notify(NotifyType::COOKIE, vec![0xc0; 16]),
                notify(NotifyType::PUZZLE, data),
            ],
        );
        let (sends, events) = split(i.handle(&resp, now).unwrap());
        assert!(events.is_empty(), "{events:?}");
        let b = Message::parse(&sends[0]).unwrap();
        assert_eq!(b.payloads[0], notify(NotifyType::COOKIE, vec![0xc0; 16]));
        assert!(!b.payloads.iter().any(|p| matches!(p, Payload::Ps(_))));
    }
}

/// Under load, a retry whose solution was stripped is dropped by the screen (RFC 8019 §7.1.4).
#[test]
fn retry_without_solution_is_dropped_under_load() {
    let now = Instant::now();
    let policy = CookiePolicy {
        half_open_threshold: 1,
        puzzle_difficulty: 8,
        ..CookiePolicy::tcp()
    };
    let jar = CookieJar::new(policy, now).unwrap();
    let (mut i, first) = initiator(now);
    let Screen::Reply(reply) = jar.screen(&first, sock(I_FIRST).ip(), 1) else {
        panic!("expected a cookie reply");
    };
    let (sends, _) = split(answer_reply(&mut i, &reply.message, now));
    let mut m = Message::parse(&sends[0]).unwrap();
    m.payloads.retain(|p| !matches!(p, Payload::Ps(_)));
    let stripped = m.to_bytes().unwrap();
    assert_eq!(
        jar.screen(&stripped, sock(I_RETRY).ip(), 1),
        Screen::Drop(ScreenDrop::PuzzleMissing)
    );
    assert_eq!(jar.screen(&sends[0], sock(I_RETRY).ip(), 1), Screen::Accept);
}

/// A puzzle answer counts only for the session and the job it came from: one for another
/// session, a second copy, or one for an earlier job is refused with `StalePuzzle` and changes
/// nothing. While the puzzle is solved the initiator expects no message.
#[test]
fn stale_or_foreign_puzzle_answers_are_refused() {
    let now = Instant::now();
    let reply = |first: &[u8], cookie: u8| {
        response_to(
            first,
            vec![
                notify(NotifyType::COOKIE, vec![cookie; 16]),
                puzzle_notify(5, 8),
            ],
        )
    };
    let (mut i, first) = initiator(now);
    let (mut other, other_first) = initiator(now);
    let job = job_of(i.handle(&reply(&first, 1), now).unwrap());
    let foreign = solve_elsewhere(job_of(other.handle(&reply(&other_first, 2), now).unwrap()));
    assert_eq!(
        i.puzzle_solved(foreign, now).unwrap_err(),
        SessionError::StalePuzzle
    );
    // Still waiting: another reply is not expected now.
    let (sends, events) = split(i.handle(&reply(&first, 3), now).unwrap());
    assert!(sends.is_empty());
    assert!(matches!(
        events[..],
        [SessionEvent::Dropped(DropReason::Unexpected)]
    ));

    let answer = solve_elsewhere(job);
    let (sends, _) = split(i.puzzle_solved(answer.clone(), now).unwrap());
    let [retry] = sends.as_slice() else {
        panic!("expected the retry");
    };
    assert!(
        Message::parse(retry).unwrap().payloads[1] == Payload::Ps(answer.result.clone().unwrap())
    );
    assert_eq!(
        i.puzzle_solved(answer.clone(), now).unwrap_err(),
        SessionError::StalePuzzle,
        "a second copy"
    );
    // The responder asks again (a new cookie): the answer to the first job does not fit.
    let job2 = job_of(i.handle(&reply(&first, 4), now).unwrap());
    assert_eq!(
        i.puzzle_solved(answer, now).unwrap_err(),
        SessionError::StalePuzzle,
        "an earlier job"
    );
    let (sends, _) = split(i.puzzle_solved(solve_elsewhere(job2), now).unwrap());
    assert_eq!(sends.len(), 1);
    let b = Message::parse(&sends[0]).unwrap();
    assert_eq!(b.payloads[0], notify(NotifyType::COOKIE, vec![4; 16]));
}

/// A job whose work was given up (RFC 8019 §7.1.2 lets the initiator decline) fails the
/// session with `PuzzleRefused`, without a retry.
#[test]
fn given_up_puzzle_fails_the_session() {
    let now = Instant::now();
    let (mut i, first) = initiator(now);
    let resp = response_to(
        &first,
        vec![
            notify(NotifyType::COOKIE, vec![0xc0; 16]),
            puzzle_notify(5, 20),
        ],
    );
    let job = job_of(i.handle(&resp, now).unwrap());
    let gave_up = PuzzleAnswer {
        spi_i: job.spi_i(),
        attempt: job.attempt,
        result: Err(SolveError::GaveUp(20)),
    };
    let (sends, events) = split(i.puzzle_solved(gave_up, now).unwrap());
    assert!(sends.is_empty());
    assert_eq!(failed(&events), Some(FailReason::PuzzleRefused(20)));
    assert!(i.is_failed());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Hostile IKE_SA_INIT responses with COOKIE and PUZZLE: whatever the data, the initiator
    /// retries, fails cleanly or drops the message, and never panics.
    #[test]
    fn prop_hostile_puzzle_replies_never_panic(
        cookie in proptest::collection::vec(any::<u8>(), 0..80),
        puzzle in proptest::collection::vec(any::<u8>(), 0..6),
        prf in prop::sample::select(vec![2u16, 5, 6, 7, 0, 99]),
        difficulty in prop_oneof![0u8..=8, 24u8..],
        structured in any::<bool>(),
    ) {
        let now = Instant::now();
        let (mut i, first) = initiator(now);
        let puzzle = if structured {
            PuzzleData { prf, difficulty }.to_bytes().to_vec()
        } else {
            puzzle
        };
        let resp = response_to(
            &first,
            vec![notify(NotifyType::COOKIE, cookie), notify(NotifyType::PUZZLE, puzzle)],
        );
        let (sends, events) = split(answer_reply(&mut i, &resp, now));
        prop_assert!(sends.len() <= 1);
        prop_assert!(sends.len() == 1 || !events.is_empty());
    }
}
