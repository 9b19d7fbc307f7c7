//! `driver`: the sans-IO driver core's event rate with few and with many established IKE SAs,
//! in one run, no threads.
//!
//! Per row, one Responder endpoint gets `n` IKE SAs established by initiator sessions run here,
//! answered by a fake worker that acknowledges commands at once. Then, for the time budget,
//! round robin over `active` of the IKE SAs (10 by default, the others idle; a second row with
//! all of them active shows what memory, not the core's algorithms, costs at that size): the initiator sends a liveness check (an INFORMATIONAL
//! request) that the core answers; every 16th IKE SA instead rekeys its Child SA (the
//! CREATE_CHILD_SA exchange and the old SA's Delete, SA installs and deletes with their acks and
//! removed SAs); each round also reports authentic ESP for the IKE SA (a stats event)
//! and runs the core's timers. Only the time spent inside the core is counted; the initiators
//! and the fake worker run outside the clock. A core whose work per event grew with the number
//! of IKE SAs (scans of every session, connection or Child SA) shows as a lower rate in the
//! large row.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde::Serialize;

use iketcp_control::driver::{Core, Endpoint, EndpointRole, Timers};
use iketcp_control::ike::session::{Output, Session};
use iketcp_dataplane::crypto::Suite;
use iketcp_dataplane::transport::{ConnId, TcpRole};
use iketcp_dataplane::worker::handle::{
    Command, Conn, Direction, Event, IkeBytes, IkeSaId, RemovedSa,
};

use crate::report::Machine;

const LISTEN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEERS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Established IKE SAs per row, in order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 10_000])]
    ike_sas: Vec<usize>,
    /// Seconds of measured events per row.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// IKE SAs the events go to, round robin (the rest stay idle); 0: all of them. Each row
    /// runs with this many active and, when it has more IKE SAs, once more with all active.
    #[arg(long, default_value_t = 10)]
    active: usize,
}

#[derive(Debug, Serialize)]
struct Row {
    ike_sas: usize,
    /// IKE SAs the events went to (round robin).
    active: usize,
    events: u64,
    core_seconds: f64,
    events_per_s: f64,
    ike_messages: u64,
    acks: u64,
    timer_runs: u64,
    child_rekeys: u64,
    /// Entries in the core's timer heap at the end (live and stale).
    timer_entries: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    seconds_per_row: f64,
    results: Vec<Row>,
}

pub fn run(a: &Args) -> Result<(), String> {
    if !a.seconds.is_finite() || a.seconds <= 0.0 || a.seconds > 3600.0 {
        return Err("seconds must be in (0, 3600]".into());
    }
    if a.ike_sas.iter().any(|&n| n == 0 || n > 1_000_000) {
        return Err("ike-sas must be in 1..=1000000".into());
    }
    let machine = Machine::detect();
    crate::report::pin_first_core();
    let mut results = Vec::new();
    let budget = Duration::from_secs_f64(a.seconds);
    for &n in &a.ike_sas {
        let active = if a.active == 0 { n } else { a.active.min(n) };
        results.push(measure(n, active, budget)?);
        if active < n {
            results.push(measure(n, n, budget)?);
        }
    }
    let r = Report {
        bench: "driver",
        machine,
        seconds_per_row: a.seconds,
        results,
    };
    crate::report::print(a.json, &r, |r| {
        println!("{}", r.machine);
        println!(
            "{:>9} {:>7} {:>12} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "ike_sas", "active", "events/s", "events", "ike msgs", "acks", "timers", "rekeys"
        );
        let base = r.results.first().map_or(1.0, |x| x.events_per_s);
        for x in &r.results {
            println!(
                "{:>9} {:>7} {:>12.0} {:>10} {:>10} {:>8} {:>8} {:>8}   {:.2}x the first row",
                x.ike_sas,
                x.active,
                x.events_per_s,
                x.events,
                x.ike_messages,
                x.acks,
                x.timer_runs,
                x.child_rekeys,
                x.events_per_s / base
            );
        }
    })
}

/// A worker that applies commands at once: acknowledges them and hands deleted SAs back.
#[derive(Default)]
struct FakeWorker {
    sas: HashMap<(u32, Direction), RemovedSa>,
}

impl FakeWorker {
    fn apply(&mut self, cmd: Command, out: &mut Vec<Event>, sent: &mut Vec<(Conn, Vec<u8>)>) {
        let ack = |ack| Event::Ack {
            worker: 0,
            ack,
            result: Ok(()),
        };
        match cmd {
            Command::Listen { ack: a, .. } | Command::Barrier { ack: a } => out.push(ack(a)),
            Command::InstallInbound { sa, ack: a, .. } => {
                self.sas
                    .insert((sa.spi(), Direction::Inbound), RemovedSa::Inbound(sa));
                out.push(ack(a));
            }
            Command::InstallOutbound { sa, ack: a, .. } => {
                self.sas
                    .insert((sa.spi(), Direction::Outbound), RemovedSa::Outbound(sa));
                out.push(ack(a));
            }
            Command::DeleteSa { spi, dir, ack: a } => {
                if let Some(sa) = self.sas.remove(&(spi, dir)) {
                    out.push(Event::SaRemoved(sa));
                }
                out.push(ack(a));
            }
            Command::SendIke { conn, msg } => sent.push((
                Conn {
                    worker: 0,
                    id: conn,
                },
                msg,
            )),
            _ => {}
        }
    }
}

/// One row's state: the core, its fake worker, the initiators and counters.
struct Rig {
    core: Core,
    worker: FakeWorker,
    /// Initiator sessions by the connection their IKE SA uses.
    peers: Vec<(Conn, Session)>,
    core_time: Duration,
    row: Row,
}

impl Rig {
    /// Hands `ev` to the core (timed), then runs its commands through the fake worker and
    /// feeds the acks back (timed too) until nothing is left; returns the IKE messages sent.
    fn event(&mut self, ev: Event, now: Instant) -> Result<Vec<(Conn, Vec<u8>)>, String> {
        let mut queue = vec![ev];
        let mut sent = Vec::new();
        while let Some(ev) = queue.pop() {
            match &ev {
                Event::Ack { .. } => self.row.acks += 1,
                Event::IkeMessage { .. } => self.row.ike_messages += 1,
                _ => {}
            }
            let t = Instant::now();
            self.core.handle_event(ev, now).map_err(|e| e.to_string())?;
            let cmds: Vec<(u16, Command)> =
                std::iter::from_fn(|| self.core.poll_command()).collect();
            self.core_time += t.elapsed();
            self.row.events += 1;
            for (_, cmd) in cmds {
                self.worker.apply(cmd, &mut queue, &mut sent);
            }
        }
        Ok(sent)
    }

    fn timers(&mut self, now: Instant) -> Result<(), String> {
        let t = Instant::now();
        self.core.handle_timeout(now).map_err(|e| e.to_string())?;
        let cmds: Vec<(u16, Command)> = std::iter::from_fn(|| self.core.poll_command()).collect();
        self.core_time += t.elapsed();
        self.row.events += 1;
        self.row.timer_runs += 1;
        let (mut q, mut sent) = (Vec::new(), Vec::new());
        for (_, cmd) in cmds {
            self.worker.apply(cmd, &mut q, &mut sent);
        }
        for ev in q {
            self.event(ev, now)?;
        }
        Ok(())
    }

    /// Runs an exchange the initiator of peer `k` starts with `req` to its end (both ways).
    fn exchange(&mut self, k: usize, req: Vec<u8>, now: Instant) -> Result<(), String> {
        let mut to_core = vec![req];
        let mut rounds = 0;
        while let Some(msg) = to_core.pop() {
            rounds += 1;
            if rounds > 16 {
                return Err("an exchange did not settle".into());
            }
            let conn = self.peers[k].0;
            let ev = Event::IkeMessage {
                conn,
                msg: IkeBytes::from(msg),
            };
            for (_, answer) in self.event(ev, now)? {
                let outs = self.peers[k]
                    .1
                    .handle(&answer, now)
                    .map_err(|e| format!("initiator: {e:?}"))?;
                for o in outs {
                    if let Output::Send(m) = o {
                        to_core.push(m);
                    }
                }
            }
        }
        Ok(())
    }
}

fn measure(n: usize, active: usize, budget: Duration) -> Result<Row, String> {
    let (ci, cr) = iketcp_lab::demo::configs(Suite::Aes128Gcm16, false)?;
    let t0 = Instant::now();
    let listen = SocketAddr::from((LISTEN, 4500));
    let mut ep = Endpoint::new(0, EndpointRole::Responder { listen }, cr);
    // Nothing times out during the run: the timers run, but only rekeys are due.
    ep.timers = Timers {
        dpd_interval: Duration::from_secs(3600),
        exchange_timeout: Duration::from_secs(3600),
        half_open: Duration::from_secs(3600),
        orphan: Duration::from_secs(3600),
    };
    let mut rig = Rig {
        core: Core::new(t0),
        worker: FakeWorker::default(),
        peers: Vec::with_capacity(n),
        core_time: Duration::ZERO,
        row: Row {
            ike_sas: n,
            active,
            events: 0,
            core_seconds: 0.0,
            events_per_s: 0.0,
            ike_messages: 0,
            acks: 0,
            timer_runs: 0,
            child_rekeys: 0,
            timer_entries: 0,
        },
    };
    rig.core.add(ep, t0).map_err(|e| e.to_string())?;
    let cmds: Vec<(u16, Command)> = std::iter::from_fn(|| rig.core.poll_command()).collect();
    let (mut q, mut sent) = (Vec::new(), Vec::new());
    for (_, c) in cmds {
        rig.worker.apply(c, &mut q, &mut sent);
    }
    for ev in q {
        rig.event(ev, t0)?;
    }
    // Establish the IKE SAs.
    for k in 0..n {
        let conn = Conn {
            worker: 0,
            id: ConnId {
                slot: u32::try_from(k).map_err(|e| e.to_string())?,
                generation: 0,
            },
        };
        let octets = PEERS.octets();
        let peer = SocketAddr::from((
            Ipv4Addr::new(octets[0], octets[1], octets[2], (k % 250) as u8 + 1),
            u16::try_from(1024 + k % 60_000).map_err(|e| e.to_string())?,
        ));
        rig.event(
            Event::ConnUp {
                conn,
                local: listen,
                peer,
                role: TcpRole::Responder,
                token: None,
            },
            t0,
        )?;
        let (init, first) =
            Session::initiator(ci.clone(), peer, listen, t0).map_err(|e| format!("{e:?}"))?;
        rig.peers.push((conn, init));
        rig.exchange(k, first, t0)?;
        if !rig.peers[k].1.is_established() {
            return Err(format!("IKE SA {k} not established"));
        }
    }
    // Only the measured part counts.
    rig.core_time = Duration::ZERO;
    rig.row.events = 0;
    rig.row.ike_messages = 0;
    rig.row.acks = 0;
    rig.row.timer_runs = 0;
    let ids: Vec<IkeSaId> = rig.core.ike_sa_ids();
    let start = Instant::now();
    let mut k = 0usize;
    while start.elapsed() < budget {
        let now = t0 + start.elapsed();
        let i = k % active;
        let spi_in = rig.peers[i].1.child_sas().first().map(|c| c.spi_in);
        let req = match spi_in {
            Some(spi) if k % 16 == 15 => {
                rig.row.child_rekeys += 1;
                rig.peers[i]
                    .1
                    .rekey_child(spi, false, now)
                    .map_err(|e| format!("rekey: {e:?}"))?
            }
            _ => rig.peers[i]
                .1
                .start_dpd(now)
                .map_err(|e| format!("dpd: {e:?}"))?,
        };
        rig.exchange(i, req, now)?;
        if let Some(&id) = ids.get(i) {
            rig.event(
                Event::Stats {
                    worker: 0,
                    stats: Default::default(),
                    inbound_esp: vec![id],
                },
                now,
            )?;
        }
        rig.timers(now)?;
        k += 1;
    }
    let secs = rig.core_time.as_secs_f64();
    rig.row.core_seconds = secs;
    rig.row.events_per_s = if secs > 0.0 {
        rig.row.events as f64 / secs
    } else {
        0.0
    };
    rig.row.timer_entries = rig.core.timer_entries();
    Ok(rig.row)
}
