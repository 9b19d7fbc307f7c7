//! `pipeline`: the packet path end to end, with its baselines in the same run.
//!
//! - `crypto-only`: the same suite decrypting the same packets, no TCP (the crypto bench's `decap`).
//! - `tcp-only`: RFC 9329 framing over smoltcp over the mem port, no crypto: a sender thread frames
//!   ESP-sized bodies, a receiver thread deframes them.
//! - `pipeline`: a sender worker (core 0: SPD, encap, frame, smoltcp) and a receiver worker (core 1:
//!   smoltcp, deframe, decrypt, replay check) over the mem port with static SAs.
//! - `kernel`: the same two workers over the kernel-TCP transport on loopback.
//!
//! Gbit/s counts inner payload delivered; latency is per packet from generation (just before encap)
//! to delivery (just after decap), as hdrhistogram percentiles.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use iketcp_dataplane::crypto::{Backend, Keymat, Suite};
use iketcp_dataplane::port::mem::{MemConfig, pair};
use iketcp_dataplane::sa::{InboundSa, OutboundSa, SaParams};
use iketcp_dataplane::transport::kernel::{KernelConfig, KernelTransport};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::transport::{TcpRole, Transport};
use iketcp_dataplane::wire::frame::{FrameDecoder, STREAM_PREFIX};
use iketcp_dataplane::worker::handle::{
    Command, DataplaneHandle, Event, IkeSaId, Lifetime, channels,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector};
use iketcp_dataplane::worker::{WorkerConfig, spawn};
use iketcp_lab::traffic::{Flow, MAX_SIZE, MIN_SIZE, PacketSpec, TrafficPort};
use serde::Serialize;

use crate::report::Machine;

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Inner packet sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 512, 1400])]
    sizes: Vec<usize>,
    /// Backends (default: both).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<Backend>,
    /// ESP suite.
    #[arg(long, default_value = "aes-256-gcm")]
    suite: Suite,
    /// Scenarios to run (default: all four).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Measured seconds per run (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Spread the load over this many connections (one IKE SA and SA pair each).
    #[arg(long, default_value_t = 1)]
    connections: u16,
    /// Extra open but idle connections on the receiver.
    #[arg(long, default_value_t = 0)]
    idle_connections: u32,
    /// MTU of the mem link (the outer IP packets).
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Treat the mem link like a NIC with checksum offload: smoltcp skips IP/TCP checksums
    /// (tcp-only and pipeline alike).
    #[arg(long)]
    checksum_offload: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    backend: String,
    suite: String,
    size: usize,
    gbps: f64,
    mpps: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    packets: u64,
    misordered: u64,
    /// Share of wall time the sending worker spent in iterations that did work.
    tx_load: Option<f64>,
    /// Same for the receiving worker: Gbit/s ÷ rx_load is what the receiving core would carry
    /// if the sender could feed it.
    rx_load: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    seconds: f64,
    connections: u16,
    idle_connections: u32,
    mtu: usize,
    checksum_offload: bool,
    results: Vec<Row>,
}

const SCENARIOS: [&str; 4] = ["crypto-only", "tcp-only", "pipeline", "kernel"];
const RECEIVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SENDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Inner packets go from a host behind the sender to one behind the receiver.
const INNER_SRC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INNER_DST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

pub fn run(a: &Args) -> Result<(), String> {
    let backends = if a.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        a.backends.clone()
    };
    let scenarios: Vec<&'static str> = if a.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        a.scenarios
            .iter()
            .map(|s| {
                SCENARIOS
                    .iter()
                    .copied()
                    .find(|x| x == s)
                    .ok_or_else(|| format!("unknown scenario {s:?}"))
            })
            .collect::<Result<_, _>>()?
    };
    if let Some(bad) = a.sizes.iter().find(|s| !(MIN_SIZE..=MAX_SIZE).contains(*s)) {
        return Err(format!("size {bad} outside {MIN_SIZE}..={MAX_SIZE}"));
    }
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let mut rows = Vec::new();
    for &size in &a.sizes {
        for &scenario in &scenarios {
            // tcp-only has no crypto: one row, not one per backend.
            let backends_here: &[Backend] = if scenario == "tcp-only" {
                &backends[..1]
            } else {
                &backends
            };
            for &backend in backends_here {
                eprintln!("pipeline: {scenario} {backend} {size} bytes ...");
                let row = match scenario {
                    "crypto-only" => crypto_only(a, backend, size)?,
                    "tcp-only" => tcp_only(a, size)?,
                    "pipeline" => workers(a, backend, size, false)?,
                    _ => workers(a, backend, size, true)?,
                };
                rows.push(row);
            }
        }
    }
    let report = Report {
        bench: "pipeline",
        machine: Machine::detect(),
        seconds: a.seconds,
        connections: a.connections,
        idle_connections: a.idle_connections,
        mtu: a.mtu,
        checksum_offload: a.checksum_offload,
        results: rows,
    };
    crate::report::print(a.json, &report, print_table)
}

fn print_table(r: &Report) {
    println!(
        "pipeline bench on {}, {} connection(s), {} idle, MTU {}, checksum offload {}",
        r.machine, r.connections, r.idle_connections, r.mtu, r.checksum_offload
    );
    println!(
        "{:<12} {:<11} {:<12} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "scenario",
        "backend",
        "suite",
        "size",
        "Gbit/s",
        "Mpps",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "tx load",
        "rx load"
    );
    let f = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for x in &r.results {
        println!(
            "{:<12} {:<11} {:<12} {:>6} {:>8.2} {:>8.3} {:>9} {:>9} {:>9} {:>7} {:>7}",
            x.scenario,
            x.backend,
            x.suite,
            x.size,
            x.gbps,
            x.mpps,
            f(x.p50_us),
            f(x.p99_us),
            f(x.p999_us),
            load(x.tx_load),
            load(x.rx_load)
        );
    }
}

fn load(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

fn crypto_only(a: &Args, backend: Backend, size: usize) -> Result<Row, String> {
    let (packets, gbps) =
        crate::crypto::decap_only(backend, a.suite, size, Duration::from_secs_f64(a.seconds))?;
    Ok(Row {
        scenario: "crypto-only",
        backend: backend.name().into(),
        suite: a.suite.name().into(),
        size,
        gbps,
        mpps: gbps * 1e9 / (size as f64 * 8.0) / 1e6,
        p50_us: None,
        p99_us: None,
        p999_us: None,
        packets,
        misordered: 0,
        tx_load: None,
        rx_load: None,
    })
}

fn keymat(suite: Suite, i: u16) -> Result<Keymat, String> {
    let km: Vec<u8> = (0..suite.keymat_len())
        .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
        .collect();
    Keymat::new(suite, &km).map_err(|e| e.to_string())
}

/// Waits for an event matching `f`, up to `timeout`; other events are dropped.
fn wait_for<T>(
    h: &DataplaneHandle,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match h.events().recv_timeout(left) {
            Ok(ev) => {
                if let Some(t) = f(&ev) {
                    return Ok(t);
                }
                if !matches!(ev, Event::Stats { .. }) && seen.len() < 8 {
                    seen.push(format!("{ev:?}"));
                }
            }
            Err(_) => {
                return Err(format!(
                    "timed out waiting for {what} (other events: {})",
                    seen.join("; ")
                ));
            }
        }
    }
}

fn send(h: &DataplaneHandle, worker: u16, cmd: Command) -> Result<(), String> {
    h.send(worker, cmd)
        .map_err(|e| format!("command to worker {worker}: {e:?}"))
}

fn cores() -> (Option<core_affinity::CoreId>, Option<core_affinity::CoreId>) {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    (ids.first().copied(), ids.get(1).copied())
}

/// Two workers (sender on core 0, receiver on core 1) with static SAs, over smoltcp + mem port or
/// over kernel TCP on loopback.
fn workers(a: &Args, backend: Backend, size: usize, kernel: bool) -> Result<Row, String> {
    let offload = a.checksum_offload;
    let shared = Flow::new(Instant::now())?;
    let (h, mut sides) = channels(2);
    let rx_side = sides.pop().ok_or("no channel")?;
    let tx_side = sides.pop().ok_or("no channel")?;
    let (c0, c1) = cores();
    let flows = a.connections;
    let spec = PacketSpec {
        src: INNER_SRC,
        dst: INNER_DST,
        size,
        flows,
    };
    let wcfg = |core| WorkerConfig {
        core,
        idle_spins: 0,
        ..WorkerConfig::default()
    };
    let (listen, joins): (SocketAddr, Vec<JoinHandle<std::io::Result<()>>>) = if kernel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let kcfg = KernelConfig::default();
        let (s1, s2) = (shared.clone(), shared.clone());
        let k1 = kcfg.clone();
        let j1 = spawn(rx_side, wcfg(c1), move || {
            Ok((KernelTransport::new(k1)?, TrafficPort::sink(s1, flows)))
        })
        .map_err(|e| e.to_string())?;
        let j0 = spawn(tx_side, wcfg(c0), move || {
            Ok((
                KernelTransport::new(kcfg)?,
                TrafficPort::generator(s2, spec),
            ))
        })
        .map_err(|e| e.to_string())?;
        (SocketAddr::from((Ipv4Addr::LOCALHOST, port)), vec![j0, j1])
    } else {
        let (pa, pb) = pair(MemConfig {
            mtu: a.mtu,
            capacity: 8192,
            ..MemConfig::default()
        });
        let (s1, s2) = (shared.clone(), shared.clone());
        // The idle connections all come from the sender's one address and never send ESP: a
        // gateway's caps on unproven peers would refuse them, and they are what is measured.
        let caps = a.idle_connections as usize + 64;
        let cfg_r = SmolConfig {
            local_addrs: vec![IpAddr::V4(RECEIVER)],
            checksum_offload: offload,
            half_open_per_listener: caps,
            half_open_per_source: caps,
            untrusted_per_listener: caps,
            untrusted_per_source: caps,
            ..SmolConfig::default()
        };
        let cfg_s = SmolConfig {
            local_addrs: vec![IpAddr::V4(SENDER)],
            checksum_offload: offload,
            ..SmolConfig::default()
        };
        let j1 = spawn(rx_side, wcfg(c1), move || {
            Ok((SmolTransport::new(pb, cfg_r)?, TrafficPort::sink(s1, flows)))
        })
        .map_err(|e| e.to_string())?;
        let j0 = spawn(tx_side, wcfg(c0), move || {
            Ok((
                SmolTransport::new(pa, cfg_s)?,
                TrafficPort::generator(s2, spec),
            ))
        })
        .map_err(|e| e.to_string())?;
        (SocketAddr::from((RECEIVER, 4500)), vec![j0, j1])
    };
    let result = drive(a, &h, &shared, backend, size, listen, kernel);
    for w in [0, 1] {
        let _ = h.send_timeout(w, Command::Shutdown, Duration::from_secs(10));
    }
    for j in joins {
        match j.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("worker failed: {e}")),
            Err(_) => return Err("worker panicked".into()),
        }
    }
    result
}

fn drive(
    a: &Args,
    h: &DataplaneHandle,
    shared: &Arc<Flow>,
    backend: Backend,
    size: usize,
    listen: SocketAddr,
    kernel: bool,
) -> Result<Row, String> {
    let t = Duration::from_secs(10);
    send(
        h,
        1,
        Command::Listen {
            local: listen,
            ack: 1,
        },
    )?;
    wait_for(h, "the listen ack", t, |e| match e {
        Event::Ack {
            worker: 1,
            ack: 1,
            result,
        } => Some(result.clone().map_err(|e| e.to_string())),
        _ => None,
    })??;
    let local = None;
    // Active connections, one IKE SA and SA pair each, flows split by destination port.
    for i in 0..a.connections {
        send(
            h,
            0,
            Command::Connect {
                local,
                remote: listen,
                token: u64::from(i),
            },
        )?;
        let conn = wait_for(h, "a connection", t, |e| match e {
            Event::ConnUp {
                conn,
                token: Some(tok),
                ..
            } if *tok == u64::from(i) => Some(Ok(*conn)),
            Event::ConnDown {
                token: Some(tok),
                reason,
                ..
            } if *tok == u64::from(i) => Some(Err(format!("connection {i} failed: {reason:?}"))),
            _ => None,
        })??;
        let ike = IkeSaId(u64::from(i) + 1);
        let spi = 0x1000_0000 + u32::from(i);
        let mut p = SaParams::new(spi, keymat(a.suite, i)?, backend);
        p.replay_window = 1024;
        let out = OutboundSa::new(&p).map_err(|e| e.to_string())?;
        let inb = InboundSa::new(&p).map_err(|e| e.to_string())?;
        let port = 5000 + i;
        let sel = Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector {
                protocol: 17,
                start_port: port,
                end_port: port,
                ..TrafficSelector::any(false)
            }],
        };
        let ack = 100 + u64::from(i) * 2;
        send(
            h,
            1,
            Command::InstallInbound {
                sa: Box::new(inb),
                ike_sa: ike,
                lifetime: Lifetime::UNLIMITED,
                ack,
            },
        )?;
        send(
            h,
            0,
            Command::InstallOutbound {
                sa: Box::new(out),
                ike_sa: ike,
                selectors: sel,
                lifetime: Lifetime::UNLIMITED,
                ack: ack + 1,
            },
        )?;
        send(
            h,
            0,
            Command::BindIkeSa {
                ike_sa: ike,
                conn: conn.id,
            },
        )?;
        // Both acks, in whichever order the two workers answer.
        let mut missing = vec![ack, ack + 1];
        while !missing.is_empty() {
            wait_for(h, "SA install acks", t, |e| match e {
                Event::Ack { ack, result, .. } if missing.contains(ack) => {
                    missing.retain(|x| x != ack);
                    Some(result.clone().map_err(|e| e.to_string()))
                }
                _ => None,
            })??;
        }
    }
    // Idle connections: open, prefixed, never used. At most 512 connects outstanding, so the
    // command queue never fills; the ones that failed are counted and reported.
    let idle = a.idle_connections;
    let (mut issued, mut done, mut failed) = (0u32, 0u32, 0u32);
    while done < idle {
        while issued < idle && issued - done < 512 {
            let token = 1_000_000 + u64::from(issued);
            send(
                h,
                0,
                Command::Connect {
                    local,
                    remote: listen,
                    token,
                },
            )?;
            issued += 1;
        }
        let ok = wait_for(
            h,
            "idle connections",
            Duration::from_secs(60),
            |e| match e {
                Event::ConnUp {
                    token: Some(tok), ..
                } if *tok >= 1_000_000 => Some(true),
                Event::ConnDown {
                    token: Some(tok), ..
                } if *tok >= 1_000_000 => Some(false),
                _ => None,
            },
        )?;
        failed += u32::from(!ok);
        done += 1;
    }
    if failed > 0 {
        return Err(format!("{failed} of {idle} idle connections failed"));
    }
    let busy = |w: u16| h.worker_stats(w).map_or(0, |s| s.busy_ns);
    let (win, (tx0, rx0), (tx1, rx1)) = shared.measure(a.seconds, || (busy(0), busy(1)));
    if std::env::var_os("IKETCP_BENCH_DEBUG").is_some() {
        eprintln!(
            "sender: {:?}\nreceiver: {:?}",
            h.worker_stats(0),
            h.worker_stats(1)
        );
    }
    let [p50_us, p99_us, p999_us] = shared.percentiles()?;
    Ok(Row {
        scenario: if kernel { "kernel" } else { "pipeline" },
        backend: backend.name().into(),
        suite: a.suite.name().into(),
        size,
        gbps: win.gbps(),
        mpps: win.mpps(),
        p50_us,
        p99_us,
        p999_us,
        packets: win.packets,
        misordered: shared.misordered(),
        tx_load: Some((tx1 - tx0) as f64 / win.seconds / 1e9),
        rx_load: Some((rx1 - rx0) as f64 / win.seconds / 1e9),
    })
}

/// Framing and smoltcp over the mem port, no crypto: frames the size of the ESP packets the
/// pipeline would send (inner + 16 header/IV + padding/trailer + 16 ICV), each carrying a sequence
/// number and timestamp, from a sender thread (core 0) to a receiver thread (core 1).
fn tcp_only(a: &Args, size: usize) -> Result<Row, String> {
    let offload = a.checksum_offload;
    let shared = Flow::new(Instant::now())?;
    // The threads below run while the flow does; `measure` stops it.
    shared.set_running(true);
    let (c0, c1) = cores();
    let (pa, pb) = pair(MemConfig {
        mtu: a.mtu,
        capacity: 8192,
        ..MemConfig::default()
    });
    let body = 16 + size + iketcp_dataplane::wire::esp::pad_len_for(size) + 2 + 16;
    let listen = SocketAddr::from((RECEIVER, 4500));
    let rx_shared = shared.clone();
    let rx = std::thread::spawn(move || -> Result<(), String> {
        pin(c1);
        let cfg = SmolConfig {
            local_addrs: vec![IpAddr::V4(RECEIVER)],
            checksum_offload: offload,
            ..SmolConfig::default()
        };
        let mut t = SmolTransport::new(pb, cfg).map_err(|e| e.to_string())?;
        t.listen(listen).map_err(|e| e.to_string())?;
        let mut dec = FrameDecoder::new(TcpRole::Responder);
        let (mut events, mut readable, mut frames) = (Vec::new(), Vec::new(), Vec::new());
        while rx_shared.is_running() {
            t.poll(Instant::now(), &mut events)
                .map_err(|e| e.to_string())?;
            events.clear();
            readable.clear();
            t.readable(&mut readable);
            for &c in &readable {
                loop {
                    let n = t
                        .recv(c, |buf| {
                            frames.clear();
                            let _ = dec.decode(buf, &mut frames);
                            let now = rx_shared.now_ns();
                            let measuring = rx_shared.is_measuring();
                            let mut h = rx_shared.histogram().ok();
                            for f in &frames {
                                let Some(b) = f.bytes(buf, dec.carry()) else {
                                    continue;
                                };
                                if let (true, Some(h), Some(ts)) =
                                    (measuring, h.as_mut(), b.get(8..16))
                                {
                                    let ts = u64::from_be_bytes(ts.try_into().unwrap_or([0; 8]));
                                    let _ = h.record(now.saturating_sub(ts).max(1));
                                }
                            }
                            rx_shared
                                .add_received(frames.len() as u64, (frames.len() * size) as u64);
                            buf.len()
                        })
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        Ok(())
    });
    let tx_shared = shared.clone();
    let tx = std::thread::spawn(move || -> Result<(), String> {
        pin(c0);
        let cfg = SmolConfig {
            local_addrs: vec![IpAddr::V4(SENDER)],
            checksum_offload: offload,
            ..SmolConfig::default()
        };
        let mut t = SmolTransport::new(pa, cfg).map_err(|e| e.to_string())?;
        let conn = t.connect(None, listen).map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        let mut up = false;
        let mut frame = vec![0u8; body + 2];
        frame[..2].copy_from_slice(&((body + 2) as u16).to_be_bytes());
        frame[2..6].copy_from_slice(&0x1000_0000u32.to_be_bytes());
        let mut seq = 0u64;
        let mut off = 0usize;
        while tx_shared.is_running() {
            t.poll(Instant::now(), &mut events)
                .map_err(|e| e.to_string())?;
            for e in events.drain(..) {
                if let iketcp_dataplane::transport::TransportEvent::Up { .. } = e {
                    up = true;
                    let mut sent = 0;
                    while sent < STREAM_PREFIX.len() {
                        sent += t
                            .send(conn, &STREAM_PREFIX[sent..])
                            .map_err(|e| e.to_string())?;
                        t.poll(Instant::now(), &mut Vec::new())
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            if !up {
                continue;
            }
            // As many whole frames as the send buffer takes; a partial one is finished first.
            for _ in 0..64 {
                if off == 0 {
                    seq += 1;
                    let now = tx_shared.now_ns();
                    frame[6..10].copy_from_slice(&(seq as u32).to_be_bytes());
                    frame[10..18].copy_from_slice(&now.to_be_bytes());
                }
                let n = t.send(conn, &frame[off..]).map_err(|e| e.to_string())?;
                off += n;
                if off < frame.len() {
                    break;
                }
                off = 0;
            }
        }
        Ok(())
    });
    let (win, (), ()) = shared.measure(a.seconds, || ());
    for j in [tx, rx] {
        j.join()
            .map_err(|_| "tcp-only thread panicked".to_owned())??;
    }
    let [p50_us, p99_us, p999_us] = shared.percentiles()?;
    Ok(Row {
        scenario: "tcp-only",
        backend: "-".into(),
        suite: "-".into(),
        size,
        gbps: win.gbps(),
        mpps: win.mpps(),
        p50_us,
        p99_us,
        p999_us,
        packets: win.packets,
        misordered: 0,
        tx_load: None,
        rx_load: None,
    })
}

fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(c) = core {
        let _ = core_affinity::set_for_current(c);
    }
}
