//! `crypto`: the bare AEAD (`seal`/`open`) against the full ESP operations (`encap`/`decap`, with
//! sequence numbers, padding, anti-replay and trailer checks) on the same packets, in one run.
//!
//! Every op works on a pool of packets (`--pool-kib`, batches of [`BATCH`] for the ESP ops); only
//! the crypto calls are timed. Restoring the input between passes happens outside the timed region,
//! the same way for all four ops. The ops run interleaved, pass by pass, and each reports the
//! throughput of its median pass.

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use std::ops::Range;

use iketcp_dataplane::crypto::{Backend, ICV_LEN, IV_LEN, KeyedAead, Keymat, NONCE_LEN, Suite};
use iketcp_dataplane::sa::{Decapped, InboundSa, OutboundSa, SaParams};
use serde::Serialize;

use crate::report::Machine;

/// Packets per batch call.
const BATCH: usize = 32;
/// Headroom in front of each inner packet (ESP header and IV).
const HEAD: usize = OutboundSa::HEADROOM;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Inner payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 512, 1400, 8192])]
    sizes: Vec<usize>,
    /// Timed milliseconds per op and point (the four ops run interleaved).
    #[arg(long, default_value_t = 300)]
    millis: u64,
    /// Bytes of packets each op cycles through, in KiB (smaller stays in cache).
    #[arg(long, default_value_t = 256)]
    pool_kib: usize,
    /// Backends to run (default: both).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<Backend>,
    /// Suites to run (default: all).
    #[arg(long, value_delimiter = ',')]
    suites: Vec<Suite>,
}

#[derive(Debug, Serialize)]
struct Row {
    backend: String,
    suite: String,
    op: &'static str,
    size: usize,
    gbps: f64,
    packets: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    millis_per_point: u64,
    results: Vec<Row>,
}

pub fn run(a: &Args) -> Result<(), String> {
    let backends = if a.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        a.backends.clone()
    };
    let suites = if a.suites.is_empty() {
        Suite::ALL.to_vec()
    } else {
        a.suites.clone()
    };
    if a.sizes.iter().any(|s| !(20..=65000).contains(s)) {
        return Err("sizes must be 20..=65000 bytes (an inner IPv4 packet)".into());
    }
    let budget = Duration::from_millis(a.millis.max(1));
    let mut rows = Vec::new();
    for &backend in &backends {
        for &suite in &suites {
            for &size in &a.sizes {
                let b = Bench::new(backend, suite, size, a.pool_kib.max(1) * 1024)?;
                for (op, packets, gbps) in b.measure(budget, &OPS)? {
                    rows.push(Row {
                        backend: backend.name().into(),
                        suite: suite.name().into(),
                        op,
                        size,
                        gbps,
                        packets,
                    });
                }
            }
        }
    }
    let report = Report {
        bench: "crypto",
        machine: Machine::detect(),
        millis_per_point: a.millis,
        results: rows,
    };
    crate::report::print(a.json, &report, print_table)
}

fn print_table(r: &Report) {
    println!(
        "crypto bench on {} ({} cores, {} build), Gbit/s of inner payload, one thread",
        r.machine.cpu, r.machine.cores, r.machine.profile
    );
    println!(
        "{:<11} {:<18} {:>6} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "backend", "suite", "size", "seal", "open", "encap", "decap", "decap/open"
    );
    for chunk in r.results.chunks(4) {
        let g = |op: &str| chunk.iter().find(|x| x.op == op).map_or(0.0, |x| x.gbps);
        let first = &chunk[0];
        println!(
            "{:<11} {:<18} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>11.1}%",
            first.backend,
            first.suite,
            first.size,
            g("seal"),
            g("open"),
            g("encap"),
            g("decap"),
            100.0 * g("decap") / g("open").max(f64::MIN_POSITIVE)
        );
    }
}

/// One (backend, suite, size) point: the pool of inner packets and the SA parameters.
struct Bench {
    params: SaParams,
    key: KeyedAead,
    size: usize,
    /// Each slot: HEAD bytes, the inner IPv4 packet, tailroom.
    inner: Vec<Vec<u8>>,
}

/// Buffer and range of the packet in it, as the batch APIs take them.
type Slot = (Vec<u8>, Range<usize>);

/// Per-op state; `round` processes the whole pool once and returns the time spent in timed calls.
enum Op {
    Seal {
        bufs: Vec<Vec<u8>>,
        counter: u64,
    },
    Open {
        pristine: Vec<Vec<u8>>,
        icvs: Vec<[u8; ICV_LEN]>,
        bufs: Vec<Vec<u8>>,
    },
    Encap {
        sa: OutboundSa,
        batch: Vec<Slot>,
    },
    Decap {
        pristine: Vec<Slot>,
        batch: Vec<Slot>,
    },
}

impl Bench {
    fn new(backend: Backend, suite: Suite, size: usize, pool_bytes: usize) -> Result<Self, String> {
        let keymat: Vec<u8> = (0..suite.keymat_len())
            .map(|i| (i * 13 + 1) as u8)
            .collect();
        let keymat = Keymat::new(suite, &keymat).map_err(|e| e.to_string())?;
        let key = keymat.build(backend).map_err(|e| e.to_string())?;
        let params = SaParams::new(SPI, keymat, backend);
        let pool = (pool_bytes / size).clamp(BATCH * 2, 4096) / BATCH * BATCH;
        let inner = (0..pool).map(|i| inner_slot(size, i)).collect();
        Ok(Bench {
            params,
            key,
            size,
            inner,
        })
    }

    fn range(&self) -> Range<usize> {
        HEAD..HEAD + self.size
    }

    fn pool(&self) -> u64 {
        self.inner.len() as u64
    }

    fn op(&self, name: &str) -> Result<Op, String> {
        let range = self.range();
        Ok(match name {
            "seal" => Op::Seal {
                bufs: self.inner.clone(),
                counter: 0,
            },
            "open" => {
                // Ciphertexts of the pool under distinct nonces, opened again every round.
                let mut pristine = self.inner.clone();
                let mut icvs = Vec::with_capacity(pristine.len());
                for (i, b) in pristine.iter_mut().enumerate() {
                    let n = i as u64 + 1;
                    let icv =
                        self.key
                            .aead()
                            .seal(&nonce(&self.key, n), &aad8(n), &mut b[range.clone()]);
                    icvs.push(icv.map_err(|e| e.to_string())?);
                }
                Op::Open {
                    bufs: pristine.clone(),
                    pristine,
                    icvs,
                }
            }
            "encap" => Op::Encap {
                sa: OutboundSa::new(&self.params).map_err(|e| e.to_string())?,
                batch: self
                    .inner
                    .iter()
                    .map(|b| (b.clone(), range.clone()))
                    .collect(),
            },
            _ => {
                // The pool encapsulated once (sequence numbers 1..=pool); every round decapsulates
                // those same packets with a fresh replay window.
                let mut enc = OutboundSa::new(&self.params).map_err(|e| e.to_string())?;
                let mut pristine = Vec::with_capacity(self.inner.len());
                for src in &self.inner {
                    let mut b = src.clone();
                    let r = enc
                        .encap(&mut b, range.clone())
                        .map_err(|e| e.to_string())?;
                    pristine.push((b, r));
                }
                Op::Decap {
                    batch: pristine.clone(),
                    pristine,
                }
            }
        })
    }

    /// One pass over the pool. Restoring inputs is untimed; failures are errors, not numbers.
    fn round(
        &self,
        op: &mut Op,
        out_e: &mut Vec<EncapResult>,
        out_d: &mut Vec<DecapResult>,
    ) -> Result<Duration, String> {
        let range = self.range();
        match op {
            Op::Seal { bufs, counter } => {
                let t = Instant::now();
                for b in bufs.iter_mut() {
                    *counter += 1;
                    let n = *counter;
                    self.key
                        .aead()
                        .seal(&nonce(&self.key, n), &aad8(n), &mut b[range.clone()])
                        .map_err(|e| e.to_string())?;
                }
                Ok(t.elapsed())
            }
            Op::Open {
                pristine,
                icvs,
                bufs,
            } => {
                for (b, p) in bufs.iter_mut().zip(pristine.iter()) {
                    b.copy_from_slice(p);
                }
                let mut failures = 0u32;
                let t = Instant::now();
                for (i, (b, icv)) in bufs.iter_mut().zip(icvs.iter()).enumerate() {
                    let n = i as u64 + 1;
                    let r = self.key.aead().open(
                        &nonce(&self.key, n),
                        &aad8(n),
                        &mut b[range.clone()],
                        icv,
                    );
                    failures += u32::from(r.is_err());
                }
                let d = t.elapsed();
                if failures > 0 {
                    return Err(format!("open: {failures} authentication failures"));
                }
                Ok(d)
            }
            Op::Encap { sa, batch } => {
                for ((b, _), src) in batch.iter_mut().zip(&self.inner) {
                    b.copy_from_slice(src);
                }
                let mut failures = 0usize;
                let t = Instant::now();
                for chunk in batch.chunks_mut(BATCH) {
                    sa.encap_batch(chunk, out_e);
                    failures += out_e.iter().filter(|r| r.is_err()).count();
                }
                let d = t.elapsed();
                if failures > 0 {
                    return Err(format!("encap: {failures} failures"));
                }
                Ok(d)
            }
            Op::Decap { pristine, batch } => {
                for ((b, _), (src, _)) in batch.iter_mut().zip(pristine.iter()) {
                    b.copy_from_slice(src);
                }
                let mut sa = InboundSa::new(&self.params).map_err(|e| e.to_string())?;
                let mut delivered = 0usize;
                let t = Instant::now();
                for chunk in batch.chunks_mut(BATCH) {
                    sa.decap_batch(chunk, out_d);
                    delivered += out_d
                        .iter()
                        .filter(|r| matches!(r, Ok(Decapped::Packet { .. })))
                        .count();
                }
                let d = t.elapsed();
                if delivered != batch.len() {
                    return Err(format!(
                        "decap delivered {delivered} of {} packets",
                        batch.len()
                    ));
                }
                Ok(d)
            }
        }
    }

    /// Runs the four ops interleaved, one pool pass each in turn, so drift on a shared machine
    /// hits them alike; each op's rate is its median pass.
    fn measure(
        &self,
        budget: Duration,
        names: &[&'static str],
    ) -> Result<Vec<(&'static str, u64, f64)>, String> {
        let mut ops = Vec::new();
        for &name in names {
            ops.push((name, self.op(name)?, Vec::<Duration>::new()));
        }
        let (mut out_e, mut out_d) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        let wall = Instant::now();
        let mut spent = Duration::ZERO;
        while spent < budget * names.len() as u32 || ops.iter().any(|o| o.2.len() < 5) {
            for (_, op, times) in ops.iter_mut() {
                let d = self.round(op, &mut out_e, &mut out_d)?;
                spent += d;
                times.push(d);
            }
            if wall.elapsed() > budget * 20 {
                break;
            }
        }
        let bits = self.pool() as f64 * self.size as f64 * 8.0;
        Ok(ops
            .into_iter()
            .map(|(name, _, mut times)| {
                times.sort_unstable();
                let median = times[times.len() / 2].as_secs_f64().max(1e-12);
                (name, self.pool() * times.len() as u64, bits / median / 1e9)
            })
            .collect())
    }
}

/// Throughput of ESP decapsulation alone (the pipeline bench's `crypto-only` ceiling).
pub fn decap_only(
    backend: Backend,
    suite: Suite,
    size: usize,
    budget: Duration,
) -> Result<(u64, f64), String> {
    let b = Bench::new(backend, suite, size, 256 * 1024)?;
    let r = b.measure(budget, &["decap"])?;
    r.first()
        .map(|x| (x.1, x.2))
        .ok_or_else(|| "no measurement".to_owned())
}

type EncapResult = Result<Range<usize>, iketcp_dataplane::sa::EncapError>;
type DecapResult = Result<Decapped, iketcp_dataplane::sa::DecapError>;

const OPS: [&str; 4] = ["seal", "open", "encap", "decap"];
const SPI: u32 = 0x1000_0001;

fn nonce(key: &KeyedAead, n: u64) -> [u8; NONCE_LEN] {
    let iv: [u8; IV_LEN] = n.to_be_bytes();
    key.nonce(&iv)
}

/// SPI ‖ 32-bit sequence number, as ESP without ESN authenticates.
fn aad8(n: u64) -> [u8; 8] {
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&SPI.to_be_bytes());
    a[4..].copy_from_slice(&(n as u32).to_be_bytes());
    a
}

/// Headroom, an IPv4/UDP packet of `size` bytes with varied content, tailroom.
fn inner_slot(size: usize, i: usize) -> Vec<u8> {
    let mut b = vec![0u8; HEAD + size + OutboundSa::TAILROOM];
    let p = &mut b[HEAD..HEAD + size];
    for (j, x) in p.iter_mut().enumerate() {
        *x = (i.wrapping_mul(31) ^ j) as u8;
    }
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[6] = 0;
    p[7] = 0;
    p[8] = 64;
    p[9] = 17;
    b
}
