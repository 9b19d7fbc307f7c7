//! In-thread traffic ends for the pipeline bench: a generator port on the sending worker and a sink
//! port on the receiving worker, so the bench needs no extra threads (two cores, two workers).
//!
//! Each generated inner packet is an IPv4/UDP packet carrying a sequence number and the time it was
//! made (nanoseconds since a shared origin); the sink checks the order, counts, and records latency.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use iketcp_dataplane::port::{Medium, Packet, PacketPool, Port};

/// Offsets in the inner packet: IPv4 (20) + UDP (8), then seq (8) and timestamp (8).
const SEQ_AT: usize = 28;
const TS_AT: usize = 36;
/// Smallest inner packet the generator makes (headers and both stamps).
pub const MIN_SIZE: usize = 44;

/// Deliveries counted in one measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub packets: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Window {
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }

    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.seconds / 1e6
    }
}

/// Shared between the bench driver and the ports.
#[derive(Debug)]
pub struct Shared {
    /// Common time origin of both ends.
    pub origin: Instant,
    /// Generator runs while true.
    pub running: AtomicBool,
    /// Packets generated.
    pub generated: AtomicU64,
    /// Packets received by the sink.
    pub received: AtomicU64,
    /// Bytes received by the sink.
    pub received_bytes: AtomicU64,
    /// Packets that arrived out of order or twice (per flow).
    pub misordered: AtomicU64,
    /// The sink records latency while true.
    pub measuring: AtomicBool,
    /// Latency in nanoseconds, from generation to the sink.
    pub hist: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new() -> Result<Arc<Self>, String> {
        let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
        Ok(Arc::new(Shared {
            measuring: AtomicBool::new(false),
            hist: Mutex::new(hist),
            origin: Instant::now(),
            running: AtomicBool::new(true),
            generated: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            misordered: AtomicU64::new(0),
        }))
    }

    /// Warms up for a quarter of `seconds`, then counts deliveries for `seconds` while the sink
    /// records latency, then stops the generator. `sample` is read at both edges of the window.
    pub fn measure<T>(&self, seconds: f64, sample: impl Fn() -> T) -> (Window, T, T) {
        let counts = || {
            (
                self.received.load(Ordering::Relaxed),
                self.received_bytes.load(Ordering::Relaxed),
            )
        };
        self.running.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs_f64(seconds / 4.0));
        let (p0, b0) = counts();
        self.measuring.store(true, Ordering::Relaxed);
        let s0 = sample();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let s1 = sample();
        let (p1, b1) = counts();
        let secs = t0.elapsed().as_secs_f64();
        self.measuring.store(false, Ordering::Relaxed);
        self.running.store(false, Ordering::Relaxed);
        let w = Window {
            packets: p1 - p0,
            bytes: b1 - b0,
            seconds: secs,
        };
        (w, s0, s1)
    }

    /// p50, p99 and p99.9 latency in microseconds (None if nothing was recorded).
    pub fn percentiles(&self) -> Result<[Option<f64>; 3], String> {
        let hist = self.hist.lock().map_err(|_| "histogram lock poisoned")?;
        Ok([0.5, 0.99, 0.999]
            .map(|q| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64 / 1000.0)))
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// Produces inner packets of `size` bytes, spread over `flows` UDP destination ports.
#[derive(Debug)]
pub struct Generator {
    shared: Arc<Shared>,
    template: Vec<u8>,
    flows: u16,
    seq: u64,
}

impl Generator {
    pub fn new(shared: Arc<Shared>, size: usize, flows: u16) -> Self {
        let size = size.max(MIN_SIZE);
        let mut t = vec![0u8; size];
        t[0] = 0x45;
        t[2..4].copy_from_slice(&(size as u16).to_be_bytes());
        t[8] = 64;
        t[9] = 17;
        t[12..16].copy_from_slice(&[198, 51, 100, 1]);
        t[16..20].copy_from_slice(&[203, 0, 113, 1]);
        t[20..22].copy_from_slice(&40000u16.to_be_bytes());
        t[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
        Generator {
            shared,
            template: t,
            flows: flows.max(1),
            seq: 0,
        }
    }
}

impl Port for Generator {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        if !self.shared.running.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let now = self.shared.now_ns();
        let size = self.template.len();
        for _ in 0..max {
            let mut p = pool.get();
            if p.max_len() < size {
                return Err(io::Error::other(
                    "packet buffer too small for the bench size",
                ));
            }
            // Like a packet generator, rewrite only the headers and stamps of a recycled buffer;
            // the payload bytes are whatever the buffer held (their content does not matter).
            let d = p.prepare(size);
            d[..MIN_SIZE].copy_from_slice(&self.template[..MIN_SIZE]);
            let flow = (self.seq % u64::from(self.flows)) as u16;
            d[22..24].copy_from_slice(&(5000 + flow).to_be_bytes());
            d[SEQ_AT..SEQ_AT + 8].copy_from_slice(&self.seq.to_be_bytes());
            d[TS_AT..TS_AT + 8].copy_from_slice(&now.to_be_bytes());
            self.seq += 1;
            out.push(p);
        }
        self.shared
            .generated
            .fetch_add(max as u64, Ordering::Relaxed);
        Ok(max)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        let n = pkts.len();
        for p in pkts.drain(..) {
            pool.put(p);
        }
        Ok(n)
    }

    fn medium(&self) -> Medium {
        Medium::Ip
    }

    fn mtu(&self) -> usize {
        65535
    }
}

/// Consumes inner packets: counts them, checks per-flow order, records latency.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    last_seq: Vec<Option<u64>>,
    flows: u16,
}

impl Sink {
    pub fn new(shared: Arc<Shared>, flows: u16) -> Self {
        Sink {
            shared,
            last_seq: vec![None; usize::from(flows.max(1))],
            flows: flows.max(1),
        }
    }
}

impl Port for Sink {
    fn recv_burst(
        &mut self,
        _pool: &mut PacketPool,
        _out: &mut Vec<Packet>,
        _max: usize,
    ) -> io::Result<usize> {
        Ok(0)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        let now = self.shared.now_ns();
        let n = pkts.len();
        let mut bytes = 0u64;
        let measuring = self.shared.measuring.load(Ordering::Relaxed);
        // One uncontended lock per burst; the driver only reads it after the run.
        let mut hist = self
            .shared
            .hist
            .lock()
            .map_err(|_| io::Error::other("histogram lock poisoned"))?;
        for p in pkts.drain(..) {
            let d = p.data();
            if let (Some(s), Some(t), Some(port)) = (
                d.get(SEQ_AT..SEQ_AT + 8),
                d.get(TS_AT..TS_AT + 8),
                d.get(22..24),
            ) {
                let seq = u64::from_be_bytes(s.try_into().unwrap_or([0; 8]));
                let ts = u64::from_be_bytes(t.try_into().unwrap_or([0; 8]));
                let flow = usize::from(
                    u16::from_be_bytes([port[0], port[1]]).wrapping_sub(5000) % self.flows,
                );
                if let Some(last) = self.last_seq.get_mut(flow) {
                    if last.is_some_and(|l| seq <= l) {
                        self.shared.misordered.fetch_add(1, Ordering::Relaxed);
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
        self.shared.received.fetch_add(n as u64, Ordering::Relaxed);
        self.shared
            .received_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        Ok(n)
    }

    fn medium(&self) -> Medium {
        Medium::Ip
    }

    fn mtu(&self) -> usize {
        65535
    }
}
