//! Workers: one thread per core, pinned, each owning its TCP connections, their SAs, sequence
//! numbers and replay windows. Nothing on the packet path is locked; the one thing workers share
//! there is each other's lock-free inbox of forwarded plaintext (see [`forward`]).

mod directory;
mod engine;
mod forward;
pub mod handle;
mod send_queue;
pub mod spd;
pub mod stats;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use directory::SpiDirectory;
pub use engine::{Engine, EngineConfig};
pub use forward::{INBOX_SLOTS, Mesh};
use handle::WorkerChannels;

use crate::port::{Packet, PacketPool, Port};
use crate::transport::{Transport, TransportEvent};
use crate::wire::mss;

/// Settings of one worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Core to pin the thread to (`None`: not pinned).
    pub core: Option<core_affinity::CoreId>,
    /// Plaintext packets read per burst.
    pub burst: usize,
    /// How often counters are reported as an event.
    pub stats_interval: Duration,
    /// Engine tunables.
    pub engine: EngineConfig,
    /// Packet buffers kept free.
    pub pool_size: usize,
    /// Sleep after this many loops without work (0: never sleep, pure busy polling).
    pub idle_spins: u32,
    /// Clamp the MSS of inner TCP SYNs, both ways, to what fits this tunnel MTU.
    pub mss_clamp: Option<u16>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            core: None,
            burst: 64,
            stats_interval: Duration::from_secs(1),
            engine: EngineConfig::default(),
            pool_size: 8192,
            idle_spins: 4096,
            mss_clamp: None,
        }
    }
}

/// One worker: its engine, its ciphertext transport and its plaintext port.
#[derive(Debug)]
pub struct Worker<T: Transport, P: Port> {
    engine: Engine,
    transport: T,
    plain: P,
    cfg: WorkerConfig,
    events: Vec<TransportEvent>,
    burst: Vec<Packet>,
}

impl<T: Transport, P: Port> Worker<T, P> {
    /// Builds a worker; nothing runs until [`run`](Self::run) or [`step`](Self::step).
    pub fn new(ch: WorkerChannels, transport: T, plain: P, cfg: WorkerConfig) -> Self {
        let pool = PacketPool::new(crate::port::DEFAULT_BUF_SIZE, cfg.pool_size);
        let engine = Engine::new(ch, cfg.engine.clone(), pool);
        let burst = Vec::with_capacity(cfg.burst);
        Worker {
            engine,
            transport,
            plain,
            cfg,
            events: Vec::new(),
            burst,
        }
    }

    /// The engine (tests look at its state).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// One loop iteration. Returns Ok(false) when told to shut down, and whether work was done.
    pub fn step(&mut self, now: Instant) -> io::Result<(bool, bool)> {
        let e = &mut self.engine;
        e.set_now(now);
        stats::bump(&e.stats().loops, 1);
        let before = e.stats().activity();
        if !e.handle_commands(&mut self.transport) {
            return Ok((false, false));
        }
        self.transport.poll(now, &mut self.events)?;
        e.on_transport_events(&mut self.transport, &mut self.events);
        // Ciphertext in: deframe, decrypt, queue inner packets.
        e.receive(&mut self.transport);
        let (plain_out, pool) = e.plain_out_and_pool();
        if let Some(mtu) = self.cfg.mss_clamp {
            for p in plain_out.iter_mut() {
                mss::clamp(p.data_mut(), mtu);
            }
        }
        if !plain_out.is_empty() {
            let n = self.plain.send_burst(pool, plain_out)?;
            stats::bump(&e.stats().plain_out, n as u64);
        }
        // Plaintext in: unless a connection queue is full (backpressure), read a burst.
        if !e.backpressured() {
            self.plain
                .recv_burst(e.pool_mut(), &mut self.burst, self.cfg.burst)?;
            if let Some(mtu) = self.cfg.mss_clamp {
                for p in &mut self.burst {
                    mss::clamp(p.data_mut(), mtu);
                }
            }
        }
        // Other workers' plaintext for this worker's SAs waits in its inbox (see `forward`).
        if !self.burst.is_empty() || e.backpressured() || e.forwarded_waiting() {
            e.send_plain(&mut self.transport, &mut self.burst);
        }
        e.flush(&mut self.transport);
        // Transmit what was just queued without waiting for the next iteration.
        self.transport.poll(now, &mut self.events)?;
        e.on_transport_events(&mut self.transport, &mut self.events);
        Ok((true, e.stats().activity() != before))
    }

    /// Runs until `Shutdown`, an I/O error on a port, or the command channel closing.
    pub fn run(mut self) -> io::Result<()> {
        let mut last_stats = Instant::now();
        let mut idle = 0u32;
        loop {
            let now = Instant::now();
            let (go, busy) = self.step(now)?;
            if !go {
                self.engine.report_stats();
                return Ok(());
            }
            if now.duration_since(last_stats) >= self.cfg.stats_interval {
                let r = self.transport.refusals();
                let st = self.engine.stats();
                st.tcp_refused.store(r.refused, Ordering::Relaxed);
                st.tcp_untrusted.store(r.untrusted, Ordering::Relaxed);
                let o = self.plain.offload_counters();
                st.tun_super_in.store(o.super_in, Ordering::Relaxed);
                st.tun_joined_out.store(o.joined_out, Ordering::Relaxed);
                st.tun_offload_errors.store(o.errors, Ordering::Relaxed);
                let l = self.transport.link_counters();
                st.link_rx.store(l.rx_packets, Ordering::Relaxed);
                st.link_tx.store(l.tx_packets, Ordering::Relaxed);
                st.link_dropped.store(l.dropped, Ordering::Relaxed);
                self.engine.report_stats();
                last_stats = now;
            }
            if busy {
                stats::bump(
                    &self.engine.stats().busy_ns,
                    now.elapsed().as_nanos() as u64,
                );
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                if self.cfg.idle_spins > 0 && idle >= self.cfg.idle_spins {
                    // Idle: give the core away briefly; commands are still drained every 50 µs.
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
}

/// Starts a worker on its own thread, pinned to `cfg.core` if given. The transport and port are
/// built on that thread by `make` (some are not `Send`).
pub fn spawn<T, P, F>(
    ch: WorkerChannels,
    cfg: WorkerConfig,
    make: F,
) -> io::Result<JoinHandle<io::Result<()>>>
where
    T: Transport + 'static,
    P: Port + 'static,
    F: FnOnce() -> io::Result<(T, P)> + Send + 'static,
{
    let name = format!("iketcp-worker-{}", ch.index);
    std::thread::Builder::new().name(name).spawn(move || {
        if let Some(core) = cfg.core
            && !core_affinity::set_for_current(core)
        {
            return Err(io::Error::other(format!("cannot pin to core {}", core.id)));
        }
        let (t, p) = make()?;
        Worker::new(ch, t, p, cfg).run()
    })
}
