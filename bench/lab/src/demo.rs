//! `iketcp demo`: two gateways in one process. Each gateway runs `--workers N` pinned data-plane
//! workers (default 1), and the gateways are joined by N tunnels, one per worker pair: tunnel `k`
//! is a responder worker (`2k + 1`, outer address 192.0.2.(2k + 1)) and an initiator worker (`2k`,
//! 192.0.2.(2k + 2)), each with smoltcp over one end of the tunnel's own mem link. Every tunnel
//! negotiates its own IKE SA and Child SA over its own TCP connection with a built-in PSK through
//! one [`Driver`]; its traffic selectors are its share of the inner networks (198.51.100.0/24 ↔
//! 203.0.113.0/24 split in N equal ranges), so the SPD sends each tunnel's flow through its own
//! SA. Then a generator and sink on each worker's plaintext side send inner traffic both ways
//! for the duration, and the SAs are deleted and the workers stopped before the summary, which adds
//! up the tunnels (Gbit/s and Mpps per direction; latency percentiles over all packets). The
//! initiators rekey their Child SA at 40 % of the duration and their IKE SA at 70 %, under
//! traffic.
//!
//! With `--pcap FILE` the initiators' outer links (the mem ports under their smoltcp) are recorded
//! into one file: real IPv4 and TCP headers (smoltcp computes the checksums) of the connections to
//! port 4500, whose streams start with `IKETCP`. Only that end of each link is wrapped, so each
//! packet is recorded once.
//!
//! With `--keylog DIR` the keys of every IKE SA and ESP SA of the run (rekeyed ones included) are
//! appended to `DIR/ikev2_decryption_table` and `DIR/esp_sa` (mode 0600), in the format of
//! Wireshark's UAT files of those names, so the capture can be decrypted. Keys are written nowhere
//! else.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::capture::{Capture, CaptureStats, PcapConfig, PcapWriter, SharedPcap};
use crate::traffic::{Flow, PacketSpec, TrafficPort, Window, percentiles_of};
use clap::{Args, ValueEnum};
use iketcp_dataplane::crypto::Suite;
use iketcp_dataplane::port::Port;
use iketcp_dataplane::port::mem::{MemConfig, pair};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::worker::handle::{Command, DataplaneHandle, WorkerChannels, channels};
use iketcp_dataplane::worker::stats::StatsSnapshot;
use iketcp_dataplane::worker::{WorkerConfig, spawn};
use serde::Serialize;

use iketcp_control::driver::{Driver, DriverEvent, Endpoint, EndpointId, EndpointRole};
use iketcp_control::ike::crypto::{DhGroup, EncrAlg, IkeSuite, PrfAlg};
use iketcp_control::ike::session::{Config, PskAuth, SpiPool};
use iketcp_control::ike::wire::{Identity, TrafficSelector, TsRange};

pub use crate::traffic::{MAX_SIZE, MIN_SIZE};

/// The responder gateway's outer address (tunnel 0; see [`responder_addr`]).
pub const RESPONDER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The initiator gateway's outer address (tunnel 0; see [`initiator_addr`]).
pub const INITIATOR_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The network behind the initiator.
pub const INITIATOR_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
/// The network behind the responder.
pub const RESPONDER_NET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
/// Most workers per gateway (`--workers`): each is a thread, and the demo's tunnels share one
/// /24 of documentation addresses.
pub const MAX_WORKERS: usize = 32;
/// The demo's built-in pre-shared key (it is a demo: not a secret).
const PSK: &[u8] = b"iketcp demo pre-shared key, not for real use";
/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Options of `iketcp demo`.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Seconds of traffic after the handshake.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// ESP suite (aes-128-gcm, aes-256-gcm, chacha20-poly1305).
    #[arg(long, default_value = "aes-256-gcm")]
    pub suite: Suite,
    /// Inner packet size in bytes.
    #[arg(long, default_value_t = 1400)]
    pub size: usize,
    /// Packets per second each way on each tunnel (default: as fast as it goes).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Extended sequence numbers.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub esn: OnOff,
    /// Print one JSON object instead of a table (and no progress line).
    #[arg(long)]
    pub json: bool,
    /// Pinned data-plane workers per gateway, one tunnel (TCP connection, IKE SA, Child SA) per
    /// worker pair (1 to 32).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Record the initiators' outer IP packets (TCP to port 4500) to this pcap file (at most
    /// 1 GiB).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Append the keys of the run to DIR/ikev2_decryption_table and DIR/esp_sa (Wireshark UAT
    /// files; secrets, created with mode 0600).
    #[arg(long, value_name = "DIR")]
    pub keylog: Option<PathBuf>,
    /// No progress line (for tests).
    #[arg(skip)]
    pub quiet: bool,
    /// Do not pin the workers to cores (for tests).
    #[arg(skip)]
    pub no_pin: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            duration: 10.0,
            suite: Suite::Aes256Gcm16,
            size: 1400,
            rate: None,
            workers: 1,
            esn: OnOff::Off,
            json: false,
            pcap: None,
            keylog: None,
            quiet: false,
            no_pin: false,
        }
    }
}

/// One direction of traffic in the summary, all tunnels together.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionSummary {
    /// Sending gateway: "initiator" or "responder".
    pub from: &'static str,
    /// Inner Gbit/s delivered (sum over the tunnels).
    pub gbps: f64,
    /// Inner Mpackets/s delivered (sum over the tunnels).
    pub mpps: f64,
    /// Latency percentiles (generation to delivery) over the packets of all tunnels,
    /// microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Inner packets generated.
    pub packets_sent: u64,
    /// Inner packets delivered to the other side.
    pub packets_received: u64,
}

/// What happened to one tunnel's SAs (the summary's per-tunnel detail).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelSummary {
    /// Child SA rekeys of this tunnel that completed.
    pub child_rekeys: u64,
    /// IKE SA rekeys of this tunnel that completed.
    pub ike_rekeys: u64,
    /// ESP SAs of this tunnel (both gateways) that the workers removed after the final delete.
    pub sas_deleted: u64,
    /// Inner packets delivered: initiator → responder, responder → initiator.
    pub packets_received: [u64; 2],
}

/// What the demo prints at the end.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// From the first `Connect` to every tunnel's Child SA installed on both gateways.
    pub handshake_ms: f64,
    /// Measured seconds of traffic.
    pub duration_s: f64,
    /// Initiator → responder, then responder → initiator.
    pub directions: Vec<DirectionSummary>,
    /// Completed Child SA rekeys (started by the initiators at 40 % of the run).
    pub child_rekeys: u64,
    /// Completed IKE SA rekeys (started by the initiators at 70 % of the run).
    pub ike_rekeys: u64,
    /// Sum of the data plane's drop counters.
    pub drops: u64,
    /// Workers per gateway (= tunnels).
    pub workers: usize,
    /// Per tunnel.
    #[serde(skip)]
    pub tunnels: Vec<TunnelSummary>,
    /// ESP ICV failures (part of `drops`).
    #[serde(skip)]
    pub icv_failures: u64,
    /// ESP suite.
    #[serde(skip)]
    pub suite: &'static str,
    /// Inner packet size.
    #[serde(skip)]
    pub size: usize,
    /// Counters of the `--pcap` capture.
    #[serde(skip)]
    pub pcap: Option<CaptureStats>,
}

/// The responder's outer address on tunnel `k`: 192.0.2.(2k + 1).
pub fn responder_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(RESPONDER_ADDR) + 2 * k as u32)
}

/// The initiator's outer address on tunnel `k`: 192.0.2.(2k + 2).
pub fn initiator_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(INITIATOR_ADDR) + 2 * k as u32)
}

/// Tunnel `k`'s share of the /24 `net` when `n` tunnels split it: (first, last) address.
fn share(net: Ipv4Addr, k: usize, n: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(net) & 0xffff_ff00;
    let n = n.max(1) as u32;
    let k = k as u32;
    (
        Ipv4Addr::from(base + k * 256 / n),
        Ipv4Addr::from(base + (k + 1) * 256 / n - 1),
    )
}

/// The inner host of tunnel `k` of `n` in `net`: the second address of its share.
fn host(net: Ipv4Addr, k: usize, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(share(net, k, n).0) + 1)
}

fn ts_share(net: Ipv4Addr, k: usize, n: usize) -> TrafficSelector {
    let (start_addr, end_addr) = share(net, k, n);
    TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start_addr,
        end_addr,
    })
}

/// The built-in IKE configurations of a single tunnel (whole inner networks): (initiator,
/// responder).
///
/// # Errors
/// Never with the built-in suite; kept fallible for the suite check.
pub fn configs(suite: Suite, esn: bool) -> Result<(Config, Config), String> {
    tunnel_configs(suite, esn, 0, 1)
}

/// The built-in IKE configurations of tunnel `k` of `n`: the same identities and PSK for every
/// tunnel, traffic selectors covering the tunnel's share of each inner network.
///
/// # Errors
/// Never with the built-in suite; kept fallible for the suite check.
pub fn tunnel_configs(
    suite: Suite,
    esn: bool,
    k: usize,
    n: usize,
) -> Result<(Config, Config), String> {
    let ike = IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Curve25519,
    )
    .map_err(|e| format!("{e:?}"))?;
    let i = Config {
        local_id: Identity::Fqdn(b"initiator.iketcp.test".to_vec()),
        remote_id: Identity::Fqdn(b"responder.iketcp.test".to_vec()),
        auth: PskAuth::shared(PSK),
        ike_proposals: vec![ike],
        esp_proposals: vec![(suite.into(), esn)],
        ts_local: vec![ts_share(INITIATOR_NET, k, n)],
        ts_remote: vec![ts_share(RESPONDER_NET, k, n)],
        spi_pool: SpiPool::new(),
    };
    let r = Config {
        local_id: i.remote_id.clone(),
        remote_id: i.local_id.clone(),
        ts_local: i.ts_remote.clone(),
        ts_remote: i.ts_local.clone(),
        ..i.clone()
    };
    Ok((i, r))
}

/// Every tunnel's outer link.
fn link() -> MemConfig {
    MemConfig {
        capacity: 8192,
        ..MemConfig::default()
    }
}

/// Sum of the data plane's drop counters.
pub fn drops(s: &StatsSnapshot) -> u64 {
    s.no_sa
        + s.no_connection
        + s.replays
        + s.icv_failures
        + s.bad_payload
        + s.encap_errors
        + s.queue_full
}

/// The two directions of one tunnel.
#[derive(Debug)]
struct Tunnel {
    i_to_r: Arc<Flow>,
    r_to_i: Arc<Flow>,
}

/// The data-plane worker of tunnel `k`'s initiator; its responder's is the next one.
fn initiator_worker(k: usize) -> u16 {
    (2 * k) as u16
}

/// Checks the options.
fn check(args: &DemoArgs) -> Result<(), String> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&args.size) {
        return Err(format!("--size must be in {MIN_SIZE}..={MAX_SIZE}"));
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err("--duration must be positive".into());
    }
    if args.rate == Some(0) {
        return Err("--rate must be at least 1".into());
    }
    if !(1..=MAX_WORKERS).contains(&args.workers) {
        return Err(format!(
            "--workers must be in 1..={MAX_WORKERS} (got {})",
            args.workers
        ));
    }
    Ok(())
}

/// Runs the demo and returns its summary (printing only the progress line, unless `json` or
/// `quiet`).
///
/// # Errors
/// Bad options, a failed handshake, a worker that failed.
pub fn run(args: &DemoArgs) -> Result<Summary, String> {
    check(args)?;
    let n = args.workers;
    let origin = Instant::now();
    let mut tunnels = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Tunnel {
            i_to_r: Flow::new(origin)?,
            r_to_i: Flow::new(origin)?,
        };
        // The demo records the latency of every packet, the ones in flight at the end included.
        t.i_to_r.set_measuring(true);
        t.r_to_i.set_measuring(true);
        tunnels.push(t);
    }
    let (h, sides) = channels((2 * n) as u16);
    let ids = if args.no_pin {
        Vec::new()
    } else {
        core_affinity::get_core_ids().unwrap_or_default()
    };
    // Worker w on core w (mod the cores): with one tunnel on two cores, initiator and responder
    // each get a core; more tunnels than that share the cores.
    let core = |w: usize| (!ids.is_empty()).then(|| ids[w % ids.len()]);
    let pcap = match &args.pcap {
        Some(path) => Some(
            PcapWriter::create(path, link().medium, PcapConfig::default())
                .map_err(|e| format!("--pcap {}: {e}", path.display()))?
                .shared(),
        ),
        None => None,
    };
    let mut joins: Vec<(u16, JoinHandle<io::Result<()>>)> = Vec::new();
    let mut sides = sides.into_iter();
    let mut spawned = Ok(());
    for (k, t) in tunnels.iter().enumerate() {
        let (Some(i_side), Some(r_side)) = (sides.next(), sides.next()) else {
            spawned = Err("no channel".to_owned());
            break;
        };
        match spawn_tunnel(args, k, t, (i_side, r_side), core, pcap.as_ref()) {
            Ok(js) => joins.extend(js),
            Err((js, e)) => {
                joins.extend(js);
                spawned = Err(e);
                break;
            }
        }
    }
    let result = spawned.and_then(|()| drive(args, &h, &tunnels));
    for t in &tunnels {
        t.i_to_r.set_running(false);
        t.r_to_i.set_running(false);
    }
    for (w, _) in &joins {
        let _ = h.send_timeout(*w, Command::Shutdown, Duration::from_secs(5));
    }
    let mut worker_err = None;
    for (_, j) in joins {
        match j.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => worker_err = Some(format!("worker failed: {e}")),
            Err(_) => worker_err = Some("worker panicked".into()),
        }
    }
    let pcap = pcap.map(|w| finish_pcap(&w));
    let mut summary = result?;
    if let Some(e) = worker_err {
        return Err(e);
    }
    summary.pcap = pcap;
    let stats = h.stats();
    summary.drops = drops(&stats);
    summary.icv_failures = stats.icv_failures;
    Ok(summary)
}

type Spawned = Vec<(u16, JoinHandle<io::Result<()>>)>;

/// Spawns tunnel `k`'s two workers over a mem link of their own, the initiator's end recorded to
/// `pcap` if given. Returns the workers started, with an error if one could not be.
fn spawn_tunnel(
    args: &DemoArgs,
    k: usize,
    t: &Tunnel,
    (i_side, r_side): (WorkerChannels, WorkerChannels),
    core: impl Fn(usize) -> Option<core_affinity::CoreId>,
    pcap: Option<&SharedPcap>,
) -> Result<Spawned, (Spawned, String)> {
    let (wi, wr) = (initiator_worker(k), initiator_worker(k) + 1);
    let wcfg = |w: u16| WorkerConfig {
        core: core(usize::from(w)),
        ..WorkerConfig::default()
    };
    let (pa, pb) = pair(link());
    let smol = |addr: Ipv4Addr| SmolConfig {
        local_addrs: vec![IpAddr::V4(addr)],
        ..SmolConfig::default()
    };
    let n = args.workers;
    let spec = |src: Ipv4Addr, dst: Ipv4Addr| PacketSpec {
        src,
        dst,
        size: args.size,
        flows: 1,
    };
    let (i_host, r_host) = (host(INITIATOR_NET, k, n), host(RESPONDER_NET, k, n));
    let i_port = TrafficPort::generator(t.i_to_r.clone(), spec(i_host, r_host))
        .with_rate(args.rate)
        .with_sink(t.r_to_i.clone(), 1);
    let r_port = TrafficPort::generator(t.r_to_i.clone(), spec(r_host, i_host))
        .with_rate(args.rate)
        .with_sink(t.i_to_r.clone(), 1);
    let (ci, cr) = (smol(initiator_addr(k)), smol(responder_addr(k)));
    let i_cfg = wcfg(wi);
    let j0 = match pcap {
        Some(w) => match Capture::new(pa, w.clone()) {
            Ok(port) => spawn_gateway(i_side, i_cfg, port, ci, i_port),
            Err(e) => return Err((Vec::new(), e.to_string())),
        },
        None => spawn_gateway(i_side, i_cfg, pa, ci, i_port),
    };
    let mut joins = Vec::new();
    match j0 {
        Ok(j) => joins.push((wi, j)),
        Err(e) => return Err((joins, e.to_string())),
    }
    match spawn_gateway(r_side, wcfg(wr), pb, cr, r_port) {
        Ok(j) => joins.push((wr, j)),
        Err(e) => return Err((joins, e.to_string())),
    }
    Ok(joins)
}

/// Spawns a gateway worker: smoltcp with `cfg` over `outer`, `inner` on the plaintext side.
fn spawn_gateway<P: Port + 'static>(
    side: WorkerChannels,
    wcfg: WorkerConfig,
    outer: P,
    cfg: SmolConfig,
    inner: TrafficPort,
) -> io::Result<JoinHandle<io::Result<()>>> {
    spawn(side, wcfg, move || {
        Ok((SmolTransport::new(outer, cfg)?, inner))
    })
}

/// Writes out what the capture buffered (a failed flush is counted, not fatal) and returns its
/// counters.
fn finish_pcap(w: &SharedPcap) -> CaptureStats {
    let mut g = w.lock().unwrap_or_else(|e| e.into_inner());
    let _ = g.flush();
    g.stats()
}

/// Per-tunnel bookkeeping from the driver's events.
#[derive(Debug)]
struct Tally {
    /// Each endpoint's tunnel, and whether it is the tunnel's initiator.
    endpoints: HashMap<EndpointId, (usize, bool)>,
    tunnels: Vec<TunnelSummary>,
    /// Which tunnel an SPI belongs to.
    spis: HashMap<u32, usize>,
    /// Counting removed SAs (only after the final delete).
    deleting: bool,
}

impl Tally {
    fn new(n: usize) -> Self {
        Tally {
            endpoints: HashMap::new(),
            tunnels: vec![TunnelSummary::default(); n],
            spis: HashMap::new(),
            deleting: false,
        }
    }

    /// Notes one event; a `Failed` event is an error.
    fn note(&mut self, ev: &DriverEvent) -> Result<(), String> {
        let tunnel = |e: &EndpointId| self.endpoints.get(e).copied();
        match *ev {
            DriverEvent::Failed {
                endpoint,
                ref reason,
            } => return Err(format!("endpoint {endpoint}: {reason}")),
            // Its responders never ask (far fewer half-open SAs than the threshold); fail
            // loudly rather than wait for an answer nobody computes.
            DriverEvent::SolvePuzzle { endpoint, .. } => {
                return Err(format!(
                    "endpoint {endpoint}: puzzle asked; the demo solves none"
                ));
            }
            DriverEvent::ChildSaInstalled {
                endpoint,
                spi_in,
                spi_out,
                ..
            } => {
                if let Some((k, _)) = tunnel(&endpoint) {
                    self.spis.insert(spi_in, k);
                    self.spis.insert(spi_out, k);
                }
            }
            DriverEvent::ChildSaRekeyed { endpoint, .. } => {
                if let Some((k, true)) = tunnel(&endpoint)
                    && let Some(t) = self.tunnels.get_mut(k)
                {
                    t.child_rekeys += 1;
                }
            }
            DriverEvent::IkeSaRekeyed { endpoint, .. } => {
                if let Some((k, true)) = tunnel(&endpoint)
                    && let Some(t) = self.tunnels.get_mut(k)
                {
                    t.ike_rekeys += 1;
                }
            }
            DriverEvent::SaRemoved { spi, .. } if self.deleting => {
                if let Some(t) = self.spis.get(&spi).and_then(|&k| self.tunnels.get_mut(k)) {
                    t.sas_deleted += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Polls the driver once (at most `timeout`) and notes its events.
    fn poll(&mut self, d: &mut Driver, timeout: Duration) -> Result<(), String> {
        d.poll(timeout).map_err(|e| e.to_string())?;
        for ev in d.take_events() {
            self.note(&ev)?;
        }
        Ok(())
    }

    /// Handles driver events until `done` or the deadline.
    fn wait(
        &mut self,
        d: &mut Driver,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Driver, &DriverEvent) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("timed out waiting for {what}"));
            }
            d.poll(left.min(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            for ev in d.take_events() {
                self.note(&ev)?;
                if done(d, &ev) {
                    return Ok(());
                }
            }
        }
    }
}

/// Sums of one direction over the tunnels.
fn totals(flows: &[Arc<Flow>]) -> (u64, u64) {
    flows.iter().fold((0, 0), |(p, b), f| {
        (p + f.received(), b + f.received_bytes())
    })
}

fn drive(args: &DemoArgs, h: &DataplaneHandle, tunnels: &[Tunnel]) -> Result<Summary, String> {
    let n = tunnels.len();
    let t = Duration::from_secs(10);
    let esn = args.esn == OnOff::On;
    let mut d = Driver::new(h.clone());
    if let Some(dir) = &args.keylog {
        d.set_keylog(dir)
            .map_err(|e| format!("--keylog {}: {e}", dir.display()))?;
    }
    let mut tally = Tally::new(n);
    let mut configs = Vec::with_capacity(n);
    for k in 0..n {
        let (ci, cr) = tunnel_configs(args.suite, esn, k, n)?;
        let listen = SocketAddr::from((responder_addr(k), 4500));
        let e = d
            .add(Endpoint::new(
                initiator_worker(k) + 1,
                EndpointRole::Responder { listen },
                cr,
            ))
            .map_err(|e| e.to_string())?;
        tally.endpoints.insert(e, (k, false));
        configs.push((ci, listen));
    }
    let mut listening = 0;
    tally.wait(&mut d, "the listeners", t, |_, e| {
        listening += usize::from(matches!(e, DriverEvent::Listening { .. }));
        listening == n
    })?;
    let start = Instant::now();
    let mut initiators = Vec::with_capacity(n);
    for (k, (ci, listen)) in configs.into_iter().enumerate() {
        let role = EndpointRole::Originator {
            remote: listen,
            local: None,
        };
        let e = d
            .add(Endpoint::new(initiator_worker(k), role, ci))
            .map_err(|e| e.to_string())?;
        tally.endpoints.insert(e, (k, true));
        initiators.push(e);
    }
    tally.wait(&mut d, "the handshakes", t, |d, _| d.installed() == 2 * n)?;
    let handshake = start.elapsed();

    let i_to_r: Vec<Arc<Flow>> = tunnels.iter().map(|t| t.i_to_r.clone()).collect();
    let r_to_i: Vec<Arc<Flow>> = tunnels.iter().map(|t| t.r_to_i.clone()).collect();
    let dirs = [&i_to_r, &r_to_i];
    let all = || i_to_r.iter().chain(&r_to_i);
    for f in all() {
        f.set_running(true);
    }
    let t0 = Instant::now();
    let run_for = Duration::from_secs_f64(args.duration);
    let mut last = (t0, dirs.map(|f| totals(f).1));
    let progress = !(args.json || args.quiet);
    // Rekeys from each initiator under traffic: the Child SA at 40 %, the IKE SA at 70 % (retried
    // while the previous exchange is still outstanding).
    let (child_at, ike_at) = (run_for.mul_f64(0.4), run_for.mul_f64(0.7));
    let (mut child_started, mut ike_started) = (vec![false; n], vec![false; n]);
    while t0.elapsed() < run_for {
        for (k, &e) in initiators.iter().enumerate() {
            if !child_started[k] && t0.elapsed() >= child_at {
                child_started[k] = d
                    .rekey_child_sas_of(e, Instant::now())
                    .map_err(|e| e.to_string())?
                    > 0;
            }
            if !ike_started[k] && t0.elapsed() >= ike_at {
                ike_started[k] = d
                    .rekey_ike_sas_of(e, Instant::now())
                    .map_err(|e| e.to_string())?
                    > 0;
            }
        }
        let left = run_for.saturating_sub(t0.elapsed());
        tally.poll(&mut d, left.min(Duration::from_millis(20)))?;
        let now = Instant::now();
        let dt = now.duration_since(last.0).as_secs_f64();
        if progress && dt >= 1.0 {
            let bytes = dirs.map(|f| totals(f).1);
            let g = |k: usize| (bytes[k] - last.1[k]) as f64 * 8.0 / dt / 1e9;
            eprint!(
                "\r[{:5.1} s] initiator→responder {:7.2} Gbit/s   responder→initiator {:7.2} Gbit/s ",
                t0.elapsed().as_secs_f64(),
                g(0),
                g(1)
            );
            last = (now, bytes);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let at_end = dirs.map(|f| totals(f));
    for f in all() {
        f.set_running(false);
    }
    if progress {
        eprintln!();
    }
    // Let what is in flight arrive before the SAs go: until every packet generated is delivered,
    // or nothing arrived for 250 ms (packets were lost), or 2 s at most. A loaded machine can
    // stall a worker for tens of milliseconds, so a short quiet spell proves nothing.
    let drain_end = Instant::now() + Duration::from_secs(2);
    let mut seen = (Instant::now(), dirs.map(|f| totals(f).0));
    loop {
        let sent = all().map(|f| f.sent()).sum::<u64>();
        let now = dirs.map(|f| totals(f).0);
        if now.iter().sum::<u64>() >= sent || Instant::now() >= drain_end {
            break;
        }
        if now != seen.1 {
            seen = (Instant::now(), now);
        } else if seen.0.elapsed() >= Duration::from_millis(250) {
            break;
        }
        tally.poll(&mut d, Duration::from_millis(10))?;
    }
    tally.poll(&mut d, Duration::ZERO)?;
    tally.deleting = true;
    // Each initiator deletes its IKE SA with a Delete exchange (RFC 9329 §6.1, R-6.1-c); the
    // Child SAs go with it on both sides and the TCP Originator closes its connection.
    let now = Instant::now();
    for &e in &initiators {
        d.delete_ike_sas_of(e, now).map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (d.ike_sas() > 0 || d.has_pending()) && Instant::now() < deadline {
        tally.poll(&mut d, Duration::from_millis(20))?;
    }
    if d.ike_sas() > 0 || d.has_pending() {
        return Err("timed out waiting for the IKE SAs' Delete exchanges".into());
    }
    let directions = ["initiator", "responder"]
        .into_iter()
        .zip(dirs.into_iter().zip(at_end))
        .map(|(from, (flows, (packets, bytes)))| {
            let w = Window {
                packets,
                bytes,
                seconds: secs,
            };
            let [p50_us, p99_us, p999_us] = percentiles_of(flows)?;
            Ok(DirectionSummary {
                from,
                gbps: w.gbps(),
                mpps: w.mpps(),
                p50_us,
                p99_us,
                p999_us,
                packets_sent: flows.iter().map(|f| f.sent()).sum(),
                packets_received: totals(flows).0,
            })
        })
        .collect::<Result<_, String>>()?;
    let mut per_tunnel = tally.tunnels;
    for (p, t) in per_tunnel.iter_mut().zip(tunnels) {
        p.packets_received = [t.i_to_r.received(), t.r_to_i.received()];
    }
    Ok(Summary {
        handshake_ms: handshake.as_secs_f64() * 1e3,
        duration_s: secs,
        directions,
        child_rekeys: d.child_rekeys(),
        ike_rekeys: d.ike_rekeys(),
        drops: 0,
        workers: n,
        tunnels: per_tunnel,
        icv_failures: 0,
        suite: args.suite.name(),
        size: args.size,
        pcap: None,
    })
}

/// Prints the summary as a table.
pub fn print_table(s: &Summary) {
    let workers = if s.workers > 1 {
        format!(", {} workers per gateway", s.workers)
    } else {
        String::new()
    };
    println!(
        "iketcp demo: {} inner bytes, ESP {}, handshake {:.2} ms, {:.2} s of traffic{workers}",
        s.size, s.suite, s.handshake_ms, s.duration_s
    );
    println!(
        "{:<11} {:>8} {:>8} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "from", "Gbit/s", "Mpps", "p50 us", "p99 us", "p99.9 us", "sent", "received"
    );
    let f = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for d in &s.directions {
        println!(
            "{:<11} {:>8.3} {:>8.3} {:>9} {:>9} {:>9} {:>12} {:>12}",
            d.from,
            d.gbps,
            d.mpps,
            f(d.p50_us),
            f(d.p99_us),
            f(d.p999_us),
            d.packets_sent,
            d.packets_received
        );
    }
    println!(
        "rekeys: {} child, {} IKE; drops: {}",
        s.child_rekeys, s.ike_rekeys, s.drops
    );
    if let Some(p) = &s.pcap {
        println!(
            "pcap: {} packets ({} bytes) written, {} not written, {} write errors",
            p.records, p.bytes, p.dropped, p.write_errors
        );
    }
}

#[cfg(test)]
mod tests;
