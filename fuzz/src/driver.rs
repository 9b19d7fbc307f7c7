//! The `driver_events` harness: a sans-IO driver [`Core`] with a TCP Responder endpoint
//! (worker 0) and a TCP Originator endpoint (worker 1), fed a sequence of data-plane events
//! decoded from the input ([`Op`]). The peers are our own sessions run by the harness: an
//! initiator facing the Responder endpoint and a responder facing the Originator; what the
//! driver sends them is answered into their outboxes, and [`Op::Peer`] delivers the next answer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iketcp_control::driver::{Core, Endpoint, EndpointRole, Timers};
use iketcp_control::fuzzing::set_deterministic_rng;
use iketcp_control::ike::session::Session;
use iketcp_dataplane::crypto::Suite;
use iketcp_dataplane::transport::{CloseReason, ConnId, TcpRole};
use iketcp_dataplane::worker::handle::{
    Command, CommandError, Conn, Direction, Event, ExpiryCause, IkeSaId,
};
use iketcp_lab::demo::configs;

use crate::{Action, SEED, sends, t0};

/// The Responder endpoint's address.
pub const LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    4500,
);

/// Connection slots per worker.
const SLOTS: u32 = 4;

/// One step of a `driver_events` input. Encoding: an opcode octet (modulo 12) and the
/// arguments listed, each one octet unless said otherwise; a missing octet reads as 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// 0, slot: the Responder endpoint's worker accepts a connection.
    Accept(u8),
    /// 1, slot: the Originator endpoint's last `Connect` comes up on this slot.
    Connected(u8),
    /// 2, worker/slot (bit 2 worker), reason: a connection goes down.
    Down(u8, u8),
    /// 3, worker/slot, length (2 octets), bytes: raw bytes as an IKE message.
    Raw(u8, Vec<u8>),
    /// 4, worker/slot: the next message of that worker's peer (started if it has none).
    Peer(u8),
    /// 5, worker/slot, position (2 octets), mask: the same with one octet changed.
    PeerMutated(u8, u16, u8),
    /// 6, seconds: time passes and the timers run.
    Advance(u8),
    /// 7, ok: every awaited acknowledgement arrives, successful or (0) failed.
    AckAll(u8),
    /// 8: the workers report authentic inbound ESP on every IKE SA.
    Stats,
    /// 9, index, flags: an installed SA reaches a limit (bit 0 outbound, bit 1 hard).
    Expire(u8, u8),
    /// 10, which: the operator rekeys Child SAs (0), IKE SAs (1), deletes IKE SAs (2),
    /// refreshes counters (3), deletes all SAs (4).
    Admin(u8),
    /// 11, worker, action: that worker's peer starts an exchange ([`Action`]).
    PeerAction(u8, u8),
}

impl Op {
    /// Decodes the ops of an input (at most `max`).
    pub fn parse_all(data: &[u8], max: usize) -> Vec<Op> {
        let mut r = Cursor(data);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(op) = r.next() else { break };
            out.push(match op % 12 {
                0 => Op::Accept(r.byte()),
                1 => Op::Connected(r.byte()),
                2 => Op::Down(r.byte(), r.byte()),
                3 => {
                    let ws = r.byte();
                    let len = usize::from(u16::from_be_bytes([r.byte(), r.byte()]));
                    Op::Raw(ws, r.take(len).to_vec())
                }
                4 => Op::Peer(r.byte()),
                5 => Op::PeerMutated(r.byte(), u16::from_be_bytes([r.byte(), r.byte()]), r.byte()),
                6 => Op::Advance(r.byte()),
                7 => Op::AckAll(r.byte()),
                8 => Op::Stats,
                9 => Op::Expire(r.byte(), r.byte()),
                10 => Op::Admin(r.byte()),
                _ => Op::PeerAction(r.byte(), r.byte()),
            });
        }
        out
    }

    /// The encoding parsed by [`Op::parse_all`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Accept(s) => out.extend([0, *s]),
            Op::Connected(s) => out.extend([1, *s]),
            Op::Down(s, r) => out.extend([2, *s, *r]),
            Op::Raw(s, b) => {
                let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
                out.extend([3, *s]);
                out.extend(len.to_be_bytes());
                out.extend(&b[..usize::from(len)]);
            }
            Op::Peer(s) => out.extend([4, *s]),
            Op::PeerMutated(s, p, m) => {
                out.extend([5, *s]);
                out.extend(p.to_be_bytes());
                out.push(*m);
            }
            Op::Advance(t) => out.extend([6, *t]),
            Op::AckAll(ok) => out.extend([7, *ok]),
            Op::Stats => out.push(8),
            Op::Expire(i, f) => out.extend([9, *i, *f]),
            Op::Admin(w) => out.extend([10, *w]),
            Op::PeerAction(w, a) => out.extend([11, *w, *a]),
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A peer session and what it has to send.
#[derive(Default)]
struct Peer {
    session: Option<Session>,
    outbox: VecDeque<Vec<u8>>,
}

/// The core, its peers and what the harness knows of the workers.
pub struct Harness {
    /// The driver core under test.
    pub core: Core,
    now: Instant,
    /// The initiator facing worker 0, the responder facing worker 1.
    peers: [Peer; 2],
    /// Connections up, as the workers see them, with their `Connect` token.
    up: HashMap<Conn, Option<u64>>,
    /// Connections the core closed: their `ConnDown` comes after its commands.
    closed: Vec<(Conn, Option<u64>)>,
    /// Next generation per (worker, slot).
    generation: [[u32; SLOTS as usize]; 2],
    /// The token of the Originator's last `Connect`.
    connect_token: Option<u64>,
    /// Awaited acknowledgements: (worker, ack).
    acks: Vec<(u16, u64)>,
    /// SAs installed, for [`Op::Expire`]: (worker, SPI, direction).
    installed: Vec<(u16, u32, Direction)>,
    /// Commands that named a connection that was not up.
    pub stray: usize,
    /// Print every op, event and command to stderr (for triage of a crashing input).
    pub trace: bool,
}

fn conn(worker: u16, slot: u32, generation: u32) -> Conn {
    Conn {
        worker,
        id: ConnId { slot, generation },
    }
}

fn peer_addr(slot: u32) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 2], 40000 + u16::try_from(slot).unwrap_or(0)))
}

impl Harness {
    /// The core with both endpoints added, deterministic (seeded RNG, fixed clock).
    pub fn new() -> Option<Harness> {
        set_deterministic_rng(Some(SEED));
        let now = t0();
        let (ci, cr) = configs(Suite::Aes256Gcm16, false).ok()?;
        let mut core = Core::new(now);
        let timers = Timers {
            dpd_interval: Duration::from_secs(20),
            exchange_timeout: Duration::from_secs(10),
            half_open: Duration::from_secs(10),
            orphan: Duration::from_secs(3),
        };
        let mut r = Endpoint::new(0, EndpointRole::Responder { listen: LISTEN }, cr);
        r.timers = timers;
        core.add(r, now).ok()?;
        let mut o = Endpoint::new(
            1,
            EndpointRole::Originator {
                remote: LISTEN,
                local: None,
            },
            ci,
        );
        o.timers = timers;
        core.add(o, now).ok()?;
        let mut h = Harness {
            core,
            now,
            peers: Default::default(),
            up: HashMap::new(),
            closed: Vec::new(),
            generation: [[0; SLOTS as usize]; 2],
            connect_token: None,
            acks: Vec::new(),
            installed: Vec::new(),
            stray: 0,
            trace: false,
        };
        h.settle();
        Some(h)
    }

    /// The current connection of (worker, slot) from a worker/slot octet.
    fn current(&self, ws: u8) -> Conn {
        let worker = u16::from(ws >> 2 & 1);
        let slot = u32::from(ws) % SLOTS;
        let g = self.generation[usize::from(worker)][slot as usize];
        conn(worker, slot, g.saturating_sub(1))
    }

    /// Reads the core's commands: messages go to the peers, acks and SAs are noted.
    fn drain(&mut self) {
        while let Some((worker, cmd)) = self.core.poll_command() {
            if self.trace {
                eprintln!("  command to {worker}: {}", short(&cmd));
            }
            match cmd {
                Command::Listen { ack, .. }
                | Command::Barrier { ack }
                | Command::DeleteSa { ack, .. }
                | Command::VerifyEsp { ack, .. }
                | Command::ReportSas { ack } => self.acks.push((worker, ack)),
                Command::InstallInbound { sa, ack, .. } => {
                    self.installed.push((worker, sa.spi(), Direction::Inbound));
                    self.acks.push((worker, ack));
                }
                Command::InstallOutbound { sa, ack, .. } => {
                    self.installed.push((worker, sa.spi(), Direction::Outbound));
                    self.acks.push((worker, ack));
                }
                Command::Connect { token, .. } => self.connect_token = Some(token),
                Command::Close { conn: id, .. } => match self.up.remove(&Conn { worker, id }) {
                    Some(token) => self.closed.push((Conn { worker, id }, token)),
                    None => self.stray += 1,
                },
                Command::SendIke { conn: id, msg } => {
                    if !self.up.contains_key(&Conn { worker, id }) {
                        self.stray += 1;
                    }
                    self.peer_receives(worker, &msg);
                }
                Command::BindIkeSa { .. } | Command::ForgetIkeSa { .. } | Command::Shutdown => {}
            }
        }
        let _ = self.core.take_events();
        while self.core.poll_keylog().is_some() {}
    }

    /// [`Harness::drain`], then the `ConnDown` of what the core closed, until quiet.
    fn settle(&mut self) {
        self.drain();
        for _ in 0..8 {
            if self.closed.is_empty() {
                break;
            }
            for (c, token) in std::mem::take(&mut self.closed) {
                self.event(Event::ConnDown {
                    conn: c,
                    reason: CloseReason::Local,
                    token,
                });
            }
            self.drain();
        }
    }

    /// A message of the core reaches the peer of `worker`.
    fn peer_receives(&mut self, worker: u16, msg: &[u8]) {
        let now = self.now;
        let p = &mut self.peers[usize::from(worker & 1)];
        if worker == 1 && msg.get(8..16).is_some_and(|r| r.iter().all(|b| *b == 0)) {
            // A new IKE_SA_INIT: a new responder (the Originator's peer).
            let Ok((_, cr)) = configs(Suite::Aes256Gcm16, false) else {
                return;
            };
            p.session = Some(Session::responder(cr, LISTEN, peer_addr(0)));
        }
        if let Some(s) = p.session.as_mut()
            && let Ok(out) = s.handle(msg, now)
        {
            p.outbox.extend(sends(&out));
        }
    }

    /// The next message of the peer of `worker`; an initiator peer is started if there is none.
    fn peer_sends(&mut self, worker: u16) -> Option<Vec<u8>> {
        let p = &mut self.peers[usize::from(worker & 1)];
        if worker == 0 && p.session.is_none() {
            let (ci, _) = configs(Suite::Aes256Gcm16, false).ok()?;
            let (s, m) = Session::initiator(ci, peer_addr(0), LISTEN, self.now).ok()?;
            p.session = Some(s);
            p.outbox.push_back(m);
        }
        p.outbox.pop_front()
    }

    fn event(&mut self, ev: Event) {
        if self.trace {
            eprintln!("  event: {}", short(&ev));
        }
        let _ = self.core.handle_event(ev, self.now);
    }

    fn conn_up(&mut self, worker: u16, slot: u8, token: Option<u64>) {
        let slot = u32::from(slot) % SLOTS;
        // A worker reuses a slot only once its connection is gone.
        let old = self.current(u8::try_from(slot).unwrap_or(0) | (u8::from(worker == 1) << 2));
        if let Some(t) = self.up.remove(&old) {
            self.event(Event::ConnDown {
                conn: old,
                reason: CloseReason::Reset,
                token: t,
            });
            self.drain();
        }
        let g = &mut self.generation[usize::from(worker)][slot as usize];
        let c = conn(worker, slot, *g);
        *g += 1;
        self.up.insert(c, token);
        let (local, peer, role) = if worker == 0 {
            (LISTEN, peer_addr(slot), TcpRole::Responder)
        } else {
            (peer_addr(slot), LISTEN, TcpRole::Originator)
        };
        self.event(Event::ConnUp {
            conn: c,
            local,
            peer,
            role,
            token,
        });
    }

    /// Runs one op, then hands the core's commands out.
    pub fn step(&mut self, op: &Op) {
        if self.trace {
            eprintln!("{op:?}");
        }
        match op {
            Op::Accept(s) => self.conn_up(0, *s, None),
            Op::Connected(s) => {
                let token = self.connect_token.take();
                self.conn_up(1, *s, token);
            }
            Op::Down(ws, why) => {
                let reason = match why % 4 {
                    0 => CloseReason::Fin,
                    1 => CloseReason::Reset,
                    2 => CloseReason::Timeout,
                    _ => CloseReason::Local,
                };
                let c = self.current(*ws);
                if let Some(token) = self.up.remove(&c) {
                    self.event(Event::ConnDown {
                        conn: c,
                        reason,
                        token,
                    });
                } else if c.worker == 1
                    && let Some(token) = self.connect_token.take()
                {
                    // The Originator's dial failed.
                    let slot = u32::from(*ws) % SLOTS;
                    let g = &mut self.generation[1][slot as usize];
                    let failed = conn(1, slot, *g);
                    *g += 1;
                    self.event(Event::ConnDown {
                        conn: failed,
                        reason,
                        token: Some(token),
                    });
                }
            }
            // A worker reports messages only on connections that are up.
            Op::Raw(ws, b) if self.up.contains_key(&self.current(*ws)) => {
                let c = self.current(*ws);
                self.event(Event::IkeMessage {
                    conn: c,
                    msg: b.clone().into(),
                });
            }
            Op::Peer(ws) | Op::PeerMutated(ws, ..) if self.up.contains_key(&self.current(*ws)) => {
                let c = self.current(*ws);
                if let Some(mut m) = self.peer_sends(c.worker) {
                    if let Op::PeerMutated(_, pos, mask) = op
                        && !m.is_empty()
                    {
                        let at = usize::from(*pos) % m.len();
                        m[at] ^= mask | 1;
                    }
                    self.event(Event::IkeMessage {
                        conn: c,
                        msg: m.into(),
                    });
                }
            }
            Op::Raw(..) | Op::Peer(_) | Op::PeerMutated(..) => {}
            Op::Advance(secs) => {
                self.now += Duration::from_secs(u64::from(*secs));
                let _ = self.core.handle_timeout(self.now);
            }
            Op::AckAll(ok) => {
                for (worker, ack) in std::mem::take(&mut self.acks) {
                    let result = if *ok == 0 {
                        Err(CommandError::NoSuchSa {
                            spi: 0,
                            dir: Direction::Inbound,
                        })
                    } else {
                        Ok(())
                    };
                    self.event(Event::Ack {
                        worker,
                        ack,
                        result,
                    });
                }
            }
            Op::Stats => {
                let ids: Vec<IkeSaId> = self.core.ike_sa_ids();
                for worker in [0, 1] {
                    self.event(Event::Stats {
                        worker,
                        stats: Box::default(),
                        inbound_esp: ids.clone(),
                    });
                }
            }
            Op::Expire(i, flags) => {
                if !self.installed.is_empty() {
                    let (worker, spi, _) = self.installed[usize::from(*i) % self.installed.len()];
                    self.event(Event::SaExpired {
                        worker,
                        spi,
                        dir: if flags & 1 == 0 {
                            Direction::Inbound
                        } else {
                            Direction::Outbound
                        },
                        hard: flags & 2 != 0,
                        cause: ExpiryCause::Packets,
                    });
                }
            }
            Op::Admin(which) => {
                let now = self.now;
                let _ = match which % 5 {
                    0 => self.core.rekey_child_sas(now).map(|_| ()),
                    1 => self.core.rekey_ike_sas(now).map(|_| ()),
                    2 => self.core.delete_ike_sas(now).map(|_| ()),
                    3 => self.core.refresh_counters(now),
                    _ => self.core.delete_all(),
                };
            }
            Op::PeerAction(w, a) => {
                let now = self.now;
                let p = &mut self.peers[usize::from(w & 1)];
                if let Some(s) = p.session.as_mut()
                    && let Some(m) = Action::from_octet(*a).run(s, now)
                {
                    p.outbox.push_back(m);
                }
            }
        }
        self.settle();
    }
}

/// The first line of a value's `Debug`, cut short.
fn short(v: &impl std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    s.chars().take(160).collect()
}
