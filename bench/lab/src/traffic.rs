//! Inner test traffic for `iketcp demo` and the benches: a [`TrafficPort`] sits on a worker's
//! plaintext side and generates IPv4/UDP packets, sinks the packets the worker delivers, or both,
//! so a run needs no traffic threads besides the workers.
//!
//! Each generated packet carries a sequence number and the time it was made (nanoseconds since the
//! [`Flow`]'s origin, shared by both ends); the sink counts deliveries, checks the order per UDP
//! flow and records latency in the flow's histogram. The counters of one direction live in one
//! [`Flow`], shared by the generator of one worker and the sink of another.

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use iketcp_dataplane::port::{Medium, Packet, PacketPool, Port};
use iketcp_dataplane::wire::ip::{checksum_add, checksum_finish};

/// Offset of the sequence number in a generated packet: after IPv4 (20) and UDP (8).
pub const SEQ_AT: usize = 28;
/// Offset of the timestamp (nanoseconds since the flow's origin).
pub const TS_AT: usize = 36;
/// Smallest packet the generator makes: headers and both stamps.
pub const MIN_SIZE: usize = 44;
/// Largest packet the workers' buffers take.
pub const MAX_SIZE: usize = 9000;
/// UDP destination port of flow 0; flow `k` goes to `BASE_PORT + k`.
pub const BASE_PORT: u16 = 5000;
/// UDP source port of every generated packet.
pub const SRC_PORT: u16 = 40000;
/// Largest latency the histograms hold: 60 s in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Deliveries counted in one measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Packets delivered.
    pub packets: u64,
    /// Inner bytes delivered.
    pub bytes: u64,
    /// Length of the window.
    pub seconds: f64,
}

impl Window {
    /// Inner Gbit/s delivered.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }

    /// Inner Mpackets/s delivered.
    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.seconds / 1e6
    }
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).map_err(|e| e.to_string())
}

fn quantiles(h: &Histogram<u64>) -> [Option<f64>; 3] {
    [0.5, 0.99, 0.999].map(|q| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0))
}

/// Counters of one direction, shared by a generator and a sink (and whoever reports them).
#[derive(Debug)]
pub struct Flow {
    origin: Instant,
    running: AtomicBool,
    measuring: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
    misordered: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl Flow {
    /// A stopped flow that does not record latency yet; timestamps count from `origin`.
    ///
    /// # Errors
    /// The histogram cannot be built (should not happen).
    pub fn new(origin: Instant) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Flow {
            origin,
            running: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            misordered: AtomicU64::new(0),
            hist: Mutex::new(histogram()?),
        }))
    }

    /// Starts or stops the generator.
    pub fn set_running(&self, on: bool) {
        self.running.store(on, Ordering::Relaxed);
    }

    /// Whether the generator runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Starts or stops recording latency at the sink.
    pub fn set_measuring(&self, on: bool) {
        self.measuring.store(on, Ordering::Relaxed);
    }

    /// Whether the sink records latency.
    pub fn is_measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Packets generated so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Packets delivered so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Inner bytes delivered so far.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Packets that arrived out of order or twice (per UDP flow).
    pub fn misordered(&self) -> u64 {
        self.misordered.load(Ordering::Relaxed)
    }

    /// Counts deliveries made outside a [`TrafficPort`] (a bench's own receiver).
    pub fn add_received(&self, packets: u64, bytes: u64) {
        self.received.fetch_add(packets, Ordering::Relaxed);
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Nanoseconds since the origin: the timestamp a generator writes now.
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The latency histogram (nanoseconds), for a receiver outside a [`TrafficPort`]. Lock it
    /// once per burst: the sink is its only writer while traffic runs.
    ///
    /// # Errors
    /// The lock was poisoned.
    pub fn histogram(&self) -> io::Result<MutexGuard<'_, Histogram<u64>>> {
        self.hist
            .lock()
            .map_err(|_| io::Error::other("histogram lock poisoned"))
    }

    /// p50, p99 and p99.9 latency in microseconds (`None` if nothing was recorded).
    ///
    /// # Errors
    /// The lock was poisoned.
    pub fn percentiles(&self) -> Result<[Option<f64>; 3], String> {
        let h = self.histogram().map_err(|e| e.to_string())?;
        Ok(quantiles(&h))
    }

    /// Warms up for a quarter of `seconds`, then counts deliveries for `seconds` while the sink
    /// records latency, then stops the generator. `sample` is read at both edges of the window.
    pub fn measure<T>(&self, seconds: f64, sample: impl Fn() -> T) -> (Window, T, T) {
        let counts = || (self.received(), self.received_bytes());
        self.set_running(true);
        std::thread::sleep(Duration::from_secs_f64(seconds / 4.0));
        let (p0, b0) = counts();
        self.set_measuring(true);
        let s0 = sample();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let s1 = sample();
        let (p1, b1) = counts();
        let secs = t0.elapsed().as_secs_f64();
        self.set_measuring(false);
        self.set_running(false);
        let w = Window {
            packets: p1 - p0,
            bytes: b1 - b0,
            seconds: secs,
        };
        (w, s0, s1)
    }
}

/// p50, p99 and p99.9 latency in microseconds over the histograms of all `flows` together.
///
/// # Errors
/// A lock was poisoned or the histograms do not merge (they always have the same bounds).
pub fn percentiles_of(flows: &[Arc<Flow>]) -> Result<[Option<f64>; 3], String> {
    let mut all = histogram()?;
    for f in flows {
        let h = f.histogram().map_err(|e| e.to_string())?;
        all.add(&*h).map_err(|e| format!("{e:?}"))?;
    }
    Ok(quantiles(&all))
}

/// The packets a generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    /// IPv4 source address.
    pub src: Ipv4Addr,
    /// IPv4 destination address.
    pub dst: Ipv4Addr,
    /// Total length, clamped to `MIN_SIZE..=MAX_SIZE`.
    pub size: usize,
    /// UDP flows (destination ports `BASE_PORT..BASE_PORT + flows`), used in turn.
    pub flows: u16,
}

impl PacketSpec {
    /// The first [`MIN_SIZE`] bytes of every packet: IPv4 header with its checksum, UDP header
    /// (checksum 0) to flow 0, zero stamps.
    fn template(&self) -> [u8; MIN_SIZE] {
        let size = self.size.clamp(MIN_SIZE, MAX_SIZE);
        let mut t = [0u8; MIN_SIZE];
        t[0] = 0x45;
        t[2..4].copy_from_slice(&(size as u16).to_be_bytes());
        t[8] = 64;
        t[9] = 17;
        t[12..16].copy_from_slice(&self.src.octets());
        t[16..20].copy_from_slice(&self.dst.octets());
        let sum = checksum_finish(checksum_add(0, &t[..20]));
        t[10..12].copy_from_slice(&sum.to_be_bytes());
        t[20..22].copy_from_slice(&SRC_PORT.to_be_bytes());
        t[22..24].copy_from_slice(&BASE_PORT.to_be_bytes());
        t[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
        t
    }
}

#[derive(Debug)]
struct Generator {
    flow: Arc<Flow>,
    template: [u8; MIN_SIZE],
    size: usize,
    flows: u16,
    rate: Option<u64>,
    started: Option<Instant>,
    seq: u64,
}

impl Generator {
    fn generate(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        if !self.flow.is_running() {
            self.started = None;
            return Ok(0);
        }
        let mut n = max;
        if let Some(rate) = self.rate {
            let start = *self.started.get_or_insert_with(Instant::now);
            let allowed = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            n = n.min(allowed.saturating_sub(self.seq) as usize);
        }
        let now = self.flow.now_ns();
        for _ in 0..n {
            let mut p = pool.get();
            if p.max_len() < self.size {
                return Err(io::Error::other(
                    "packet buffer too small for the packet size",
                ));
            }
            // Like a packet generator, rewrite only the headers and stamps of a recycled buffer;
            // the payload bytes are whatever the buffer held (their content does not matter).
            let d = p.prepare(self.size);
            d[..MIN_SIZE].copy_from_slice(&self.template);
            let flow = (self.seq % u64::from(self.flows)) as u16;
            d[22..24].copy_from_slice(&(BASE_PORT + flow).to_be_bytes());
            d[SEQ_AT..SEQ_AT + 8].copy_from_slice(&self.seq.to_be_bytes());
            d[TS_AT..TS_AT + 8].copy_from_slice(&now.to_be_bytes());
            self.seq += 1;
            out.push(p);
        }
        self.flow.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[derive(Debug)]
struct Sink {
    flow: Arc<Flow>,
    last_seq: Vec<Option<u64>>,
}

impl Sink {
    fn consume(&mut self, pool: &mut PacketPool, pkts: &mut VecDeque<Packet>) -> io::Result<usize> {
        let flow = &self.flow;
        let now = flow.now_ns();
        let n = pkts.len();
        let mut bytes = 0u64;
        let measuring = flow.is_measuring();
        let flows = self.last_seq.len() as u16;
        // One uncontended lock per burst: only this sink writes while traffic runs.
        let mut hist = flow.histogram()?;
        for p in pkts.drain(..) {
            let d = p.data();
            if let (Some(s), Some(t), Some(port)) = (
                d.get(SEQ_AT..SEQ_AT + 8),
                d.get(TS_AT..TS_AT + 8),
                d.get(22..24),
            ) {
                let seq = u64::from_be_bytes(s.try_into().unwrap_or([0; 8]));
                let ts = u64::from_be_bytes(t.try_into().unwrap_or([0; 8]));
                let k = u16::from_be_bytes([port[0], port[1]]).wrapping_sub(BASE_PORT) % flows;
                if let Some(last) = self.last_seq.get_mut(usize::from(k)) {
                    if last.is_some_and(|l| seq <= l) {
                        flow.misordered.fetch_add(1, Ordering::Relaxed);
                    }
                    *last = Some(seq);
                }
                if measuring {
                    let _ = hist.record(now.saturating_sub(ts).max(1));
                }
            }
            bytes += d.len() as u64;
            pool.put(p);
        }
        drop(hist);
        flow.add_received(n as u64, bytes);
        Ok(n)
    }
}

/// A plaintext-side port: a generator of packets for one [`Flow`], a sink of another, or both
/// (a gateway of the demo). Without a sink, delivered packets are recycled uncounted; without a
/// generator, nothing is read.
#[derive(Debug)]
pub struct TrafficPort {
    tx: Option<Generator>,
    rx: Option<Sink>,
}

impl TrafficPort {
    /// Generates packets as `spec` says while `flow` runs, as fast as the worker takes them.
    pub fn generator(flow: Arc<Flow>, spec: PacketSpec) -> Self {
        TrafficPort {
            tx: Some(Generator {
                flow,
                template: spec.template(),
                size: spec.size.clamp(MIN_SIZE, MAX_SIZE),
                flows: spec.flows.max(1),
                rate: None,
                started: None,
                seq: 0,
            }),
            rx: None,
        }
    }

    /// Sinks packets into `flow`, checking the order of `flows` UDP flows.
    pub fn sink(flow: Arc<Flow>, flows: u16) -> Self {
        TrafficPort {
            tx: None,
            rx: Some(Sink {
                flow,
                last_seq: vec![None; usize::from(flows.max(1))],
            }),
        }
    }

    /// Also sinks packets into `flow` (see [`sink`](Self::sink)).
    #[must_use]
    pub fn with_sink(self, flow: Arc<Flow>, flows: u16) -> Self {
        TrafficPort {
            rx: TrafficPort::sink(flow, flows).rx,
            ..self
        }
    }

    /// Generates at most `rate` packets per second, if given (counted from when the flow starts
    /// running).
    #[must_use]
    pub fn with_rate(mut self, rate: Option<u64>) -> Self {
        if let Some(g) = &mut self.tx {
            g.rate = rate;
        }
        self
    }
}

impl Port for TrafficPort {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        match &mut self.tx {
            Some(g) => g.generate(pool, out, max),
            None => Ok(0),
        }
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        match &mut self.rx {
            Some(s) => s.consume(pool, pkts),
            None => {
                let n = pkts.len();
                for p in pkts.drain(..) {
                    pool.put(p);
                }
                Ok(n)
            }
        }
    }

    fn medium(&self) -> Medium {
        Medium::Ip
    }

    fn mtu(&self) -> usize {
        65535
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize, flows: u16) -> PacketSpec {
        PacketSpec {
            src: Ipv4Addr::new(198, 51, 100, 1),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            size,
            flows,
        }
    }

    #[test]
    fn generated_packets_reach_a_sink_in_order_with_latency() {
        let origin = Instant::now();
        let flow = Flow::new(origin).unwrap();
        let mut pool = PacketPool::new(iketcp_dataplane::port::DEFAULT_BUF_SIZE, 64);
        let mut g = TrafficPort::generator(flow.clone(), spec(100, 3));
        let mut s = TrafficPort::sink(flow.clone(), 3);
        let mut out = Vec::new();
        assert_eq!(g.recv_burst(&mut pool, &mut out, 8).unwrap(), 0, "stopped");
        flow.set_running(true);
        flow.set_measuring(true);
        assert_eq!(g.recv_burst(&mut pool, &mut out, 8).unwrap(), 8);
        let p = &out[0];
        assert_eq!(p.len(), 100);
        let d = p.data();
        assert!(iketcp_dataplane::wire::ip::parse(d).is_some());
        assert_eq!(
            checksum_finish(checksum_add(0, &d[..20])),
            0,
            "IPv4 checksum"
        );
        assert_eq!(&d[22..24], &BASE_PORT.to_be_bytes());
        assert_eq!(&out[1].data()[22..24], &(BASE_PORT + 1).to_be_bytes());
        let mut q: VecDeque<Packet> = out.drain(..).collect();
        assert_eq!(s.send_burst(&mut pool, &mut q).unwrap(), 8);
        assert_eq!((flow.sent(), flow.received()), (8, 8));
        assert_eq!(flow.received_bytes(), 800);
        assert_eq!(flow.misordered(), 0);
        let [p50, p99, p999] = flow.percentiles().unwrap();
        assert!(p50.is_some() && p99.is_some() && p999.is_some());
        assert_eq!(
            percentiles_of(&[flow.clone(), flow.clone()]).unwrap()[0],
            p50
        );
    }

    #[test]
    fn sink_counts_replayed_packets_as_misordered() {
        let flow = Flow::new(Instant::now()).unwrap();
        flow.set_running(true);
        let mut pool = PacketPool::new(iketcp_dataplane::port::DEFAULT_BUF_SIZE, 64);
        let mut g = TrafficPort::generator(flow.clone(), spec(64, 1));
        let mut s = TrafficPort::sink(flow.clone(), 1);
        let mut out = Vec::new();
        g.recv_burst(&mut pool, &mut out, 2).unwrap();
        let again = out[0].data().to_vec();
        let mut q: VecDeque<Packet> = out.drain(..).collect();
        let mut p = pool.get();
        p.prepare(again.len()).copy_from_slice(&again);
        q.push_back(p);
        s.send_burst(&mut pool, &mut q).unwrap();
        assert_eq!(flow.misordered(), 1);
        assert_eq!(flow.percentiles().unwrap(), [None; 3], "not measuring");
    }

    #[test]
    fn rate_limits_generation() {
        let flow = Flow::new(Instant::now()).unwrap();
        flow.set_running(true);
        let mut pool = PacketPool::new(iketcp_dataplane::port::DEFAULT_BUF_SIZE, 64);
        let mut g = TrafficPort::generator(flow.clone(), spec(64, 1)).with_rate(Some(10));
        let mut out = Vec::new();
        let n = g.recv_burst(&mut pool, &mut out, 64).unwrap();
        assert!(n <= 1, "{n}");
    }
}
