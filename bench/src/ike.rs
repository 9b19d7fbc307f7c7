//! `ike`: complete IKE_SA_INIT + IKE_AUTH (PSK) exchanges with the first Child SA, both ends in
//! this process on one pinned core, messages handed from one session to the other (no TCP).
//!
//! Per DH group, handshakes run back to back until the time budget is spent. Each one is timed
//! from creating the initiator to the last message handled; it counts only if both sides report
//! the IKE SA and the Child SA up with matching SPIs and suite. Anything else stops the bench.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use serde::Serialize;

use iketcp_control::ike::crypto::{DhGroup, EncrAlg, EspSuite, IkeSuite, PrfAlg};
use iketcp_control::ike::session::{ChildSa, Config, Output, Session, SessionEvent};
use iketcp_dataplane::crypto::Suite;

use crate::report::Machine;

/// Messages one handshake may exchange before it is declared stuck (it needs four).
const MAX_MESSAGES: usize = 16;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// DH groups (IANA transform IDs) to run, in order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![31u16, 19, 20, 14])]
    groups: Vec<u16>,
    /// Seconds of handshakes per group.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct Row {
    group: u16,
    handshakes: u64,
    handshakes_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    seconds_per_group: f64,
    ike_suite: &'static str,
    esp_suite: &'static str,
    results: Vec<Row>,
}

pub fn run(a: &Args) -> Result<(), String> {
    if !a.seconds.is_finite() || a.seconds <= 0.0 || a.seconds > 3600.0 {
        return Err("seconds must be in (0, 3600]".into());
    }
    let groups = a
        .groups
        .iter()
        .map(|&id| DhGroup::from_transform(id).map_err(|_| format!("unsupported DH group {id}")))
        .collect::<Result<Vec<_>, _>>()?;
    // Read before pinning: once pinned, the thread sees one core.
    let machine = Machine::detect();
    crate::report::pin_first_core();
    let budget = Duration::from_secs_f64(a.seconds);
    let mut rows = Vec::new();
    for group in groups {
        rows.push(measure(group, budget)?);
    }
    let report = Report {
        bench: "ike",
        machine,
        seconds_per_group: a.seconds,
        ike_suite: "aes-gcm-16-256/prf-hmac-sha2-256",
        esp_suite: Suite::Aes256Gcm16.name(),
        results: rows,
    };
    crate::report::print(a.json, &report, print_table)
}

fn print_table(r: &Report) {
    println!(
        "ike bench on {} ({} cores, {} build), IKE {} + ESP {}, PSK, both ends on one core",
        r.machine.cpu, r.machine.cores, r.machine.profile, r.ike_suite, r.esp_suite
    );
    println!(
        "{:>6} {:>11} {:>13} {:>10} {:>10}",
        "group", "handshakes", "handshakes/s", "p50 us", "p99 us"
    );
    for row in &r.results {
        println!(
            "{:>6} {:>11} {:>13.1} {:>10} {:>10}",
            row.group, row.handshakes, row.handshakes_per_s, row.p50_us, row.p99_us
        );
    }
}

/// Runs handshakes with `group` for `budget` and summarises them.
fn measure(group: DhGroup, budget: Duration) -> Result<Row, String> {
    let id = group.transform_id();
    let suite = IkeSuite::new(EncrAlg::AesGcm16_256, PrfAlg::HmacSha256, None, group)
        .map_err(|e| format!("group {id}: suite: {e:?}"))?;
    let (ci, cr) = configs(suite)?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut count = 0u64;
    while count == 0 || start.elapsed() < budget {
        let t0 = Instant::now();
        handshake(&ci, &cr).map_err(|e| format!("group {id}, handshake {}: {e}", count + 1))?;
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.record(us.max(1)).map_err(|e| e.to_string())?;
        count += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Row {
        group: id,
        handshakes: count,
        handshakes_per_s: count as f64 / wall,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
    })
}

/// The demo's built-in configurations (PSK, FQDN identities, documentation-range selectors,
/// ESP AES-256-GCM) with `suite` as the only IKE proposal.
fn configs(suite: IkeSuite) -> Result<(Config, Config), String> {
    let (mut i, mut r) = iketcp_lab::demo::configs(Suite::Aes256Gcm16, false)?;
    i.ike_proposals = vec![suite];
    r.ike_proposals = vec![suite];
    Ok((i, r))
}

/// One complete exchange between fresh sessions; `Err` unless both Child SAs are up and agree.
fn handshake(ci: &Config, cr: &Config) -> Result<(), String> {
    let i_addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 40000));
    let r_addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 4500));
    let (mut ini, first) = Session::initiator(ci.clone(), i_addr, r_addr, Instant::now())
        .map_err(|e| format!("initiator: {e}"))?;
    let mut res = Session::responder(cr.clone(), r_addr, i_addr);
    let (mut i_child, mut r_child) = (None, None);
    // The exchanges are strictly request/response: one message is in flight at a time.
    let mut in_flight = Some((first, true));
    let mut messages = 0;
    while let Some((msg, to_responder)) = in_flight.take() {
        messages += 1;
        if messages > MAX_MESSAGES {
            return Err(format!("no end after {MAX_MESSAGES} messages"));
        }
        let (session, child, side) = if to_responder {
            (&mut res, &mut r_child, "responder")
        } else {
            (&mut ini, &mut i_child, "initiator")
        };
        let out = session
            .handle(&msg, Instant::now())
            .map_err(|e| format!("{side}: {e}"))?;
        for o in out {
            match o {
                Output::Send(m) => {
                    if in_flight.is_some() {
                        return Err(format!("{side} sent two messages at once"));
                    }
                    in_flight = Some((m, !to_responder));
                }
                Output::Event(SessionEvent::ChildSaUp(c)) => *child = Some(c),
                Output::Event(SessionEvent::IkeSaUp { .. }) => {}
                Output::Event(e) => return Err(format!("{side}: {e:?}")),
                Output::Sa(e) => return Err(format!("{side}: {e:?}")),
                Output::SolvePuzzle(j) => return Err(format!("{side}: {j:?}")),
            }
        }
    }
    if !ini.is_established() || !res.is_established() {
        return Err("IKE SA not established on both sides".into());
    }
    let i_child = i_child.ok_or("initiator: no ChildSaUp")?;
    let r_child = r_child.ok_or("responder: no ChildSaUp")?;
    check_children(&i_child, &r_child)
}

fn check_children(i: &ChildSa, r: &ChildSa) -> Result<(), String> {
    if i.spi_in != r.spi_out || i.spi_out != r.spi_in {
        return Err(format!(
            "Child SA SPIs differ: initiator in {:#x} out {:#x}, responder in {:#x} out {:#x}",
            i.spi_in, i.spi_out, r.spi_in, r.spi_out
        ));
    }
    if i.suite != EspSuite::AesGcm16_256 || r.suite != i.suite || i.esn != r.esn {
        return Err(format!(
            "Child SA transforms differ: initiator {:?} esn {}, responder {:?} esn {}",
            i.suite, i.esn, r.suite, r.esn
        ));
    }
    Ok(())
}
