//! Shared helpers for iketcp end-to-end tests: two gateways (worker 0 = "A", the TCP Originator;
//! worker 1 = "B", the TCP Responder) with static SAs, joined by a mem link over smoltcp or by
//! kernel TCP on loopback. The test thread plays control and both plaintext hosts.
//! `capture` reads pcap files into RFC 9329 frames; `tshark` runs tshark with the RFC 9329
//! plugin and a key log and checks what it decrypted.

pub mod capture;
pub mod tshark;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat, Suite};
use iketcp_dataplane::port::mem::{MemConfig, MemLink, MemPort, pair, pair_with_control};
use iketcp_dataplane::port::{Packet, PacketPool, Port};
use iketcp_dataplane::sa::{InboundSa, OutboundSa, SaParams};
use iketcp_dataplane::transport::kernel::{KernelConfig, KernelTransport};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::worker::handle::{
    Command, Conn, DataplaneHandle, Event, IkeSaId, Lifetime, channels,
};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector};
use iketcp_dataplane::worker::stats::StatsSnapshot;
use iketcp_dataplane::worker::{WorkerConfig, spawn};

/// Worker index of gateway A (TCP Originator).
pub const A: u16 = 0;
/// Worker index of gateway B (TCP Responder).
pub const B: u16 = 1;
const IKE: IkeSaId = IkeSaId(1);
const SPI_AB: u32 = 0x0000_a001;
const SPI_BA: u32 = 0x0000_b001;
const B_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Which ciphertext transport joins the gateways.
#[derive(Debug)]
pub enum Wire {
    /// smoltcp on both sides over a mem link with these settings (RST injection available).
    Mem(MemConfig),
    /// Kernel TCP on 127.0.0.1.
    Kernel,
}

/// Two gateways and the test's ends of their plaintext ports.
#[derive(Debug)]
pub struct Tunnel {
    /// Control's handle on both workers.
    pub handle: DataplaneHandle,
    joins: Vec<JoinHandle<io::Result<()>>>,
    plain: [MemPort; 2],
    pool: PacketPool,
    /// The ciphertext link, for RST injection (mem only).
    pub link: Option<MemLink>,
    remote: SocketAddr,
    token: u64,
    /// A's current connection.
    pub conn_a: Option<Conn>,
    /// Events seen while waiting for others.
    pub log: Vec<Event>,
    /// Every packet received per side, as (direction, number).
    inbox: [VecDeque<u32>; 2],
}

/// An IPv4/UDP packet numbered `n`, from the host behind `from` to the host behind the other.
pub fn inner(from: u16, n: u32) -> Vec<u8> {
    let mut p = vec![0u8; 200];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&200u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    let (s, d) = if from == A {
        ([198, 51, 100, 1], [203, 0, 113, 1])
    } else {
        ([203, 0, 113, 1], [198, 51, 100, 1])
    };
    p[12..16].copy_from_slice(&s);
    p[16..20].copy_from_slice(&d);
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&180u16.to_be_bytes());
    p[28..32].copy_from_slice(&n.to_be_bytes());
    for (i, b) in p[32..].iter_mut().enumerate() {
        *b = (n as usize + i) as u8;
    }
    p
}

fn number(p: &[u8]) -> Option<u32> {
    // Check the whole payload so corruption cannot pass as delivery.
    let n = u32::from_be_bytes(p.get(28..32)?.try_into().ok()?);
    let ok = p.len() == 200
        && p[32..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (n as usize + i) as u8);
    ok.then_some(n)
}

fn keymat(seed: u8) -> Keymat {
    let km: Vec<u8> = (0..36u8)
        .map(|i| i.wrapping_mul(seed).wrapping_add(1))
        .collect();
    Keymat::new(Suite::Aes256Gcm16, &km).unwrap_or_else(|e| panic!("keymat: {e}"))
}

impl Tunnel {
    /// Starts both gateways, connects A to B and installs the SAs.
    pub fn start(wire: Wire, backend: Backend) -> Tunnel {
        let (handle, mut sides) = channels(2);
        let side_b = sides.pop().unwrap_or_else(|| panic!("channels"));
        let side_a = sides.pop().unwrap_or_else(|| panic!("channels"));
        let (plain_a_worker, plain_a_test) = pair(MemConfig::default());
        let (plain_b_worker, plain_b_test) = pair(MemConfig::default());
        let cfg = WorkerConfig {
            idle_spins: 64,
            ..WorkerConfig::default()
        };
        let (remote, link, joins) = match wire {
            Wire::Mem(mc) => {
                let (ca, cb, link) = pair_with_control(mc);
                let sa = SmolConfig {
                    local_addrs: vec![IpAddr::V4(A_ADDR)],
                    ..SmolConfig::default()
                };
                let sb = SmolConfig {
                    local_addrs: vec![IpAddr::V4(B_ADDR)],
                    ..SmolConfig::default()
                };
                let ja = spawn(side_a, cfg.clone(), move || {
                    Ok((SmolTransport::new(ca, sa)?, plain_a_worker))
                });
                let jb = spawn(side_b, cfg, move || {
                    Ok((SmolTransport::new(cb, sb)?, plain_b_worker))
                });
                (SocketAddr::from((B_ADDR, 4500)), Some(link), vec![ja, jb])
            }
            Wire::Kernel => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .unwrap_or_else(|e| panic!("port: {e}"));
                let ja = spawn(side_a, cfg.clone(), move || {
                    Ok((
                        KernelTransport::new(KernelConfig::default())?,
                        plain_a_worker,
                    ))
                });
                let jb = spawn(side_b, cfg, move || {
                    Ok((
                        KernelTransport::new(KernelConfig::default())?,
                        plain_b_worker,
                    ))
                });
                (
                    SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    None,
                    vec![ja, jb],
                )
            }
        };
        let joins = joins
            .into_iter()
            .map(|j| j.unwrap_or_else(|e| panic!("spawn: {e}")))
            .collect();
        let mut t = Tunnel {
            handle,
            joins,
            plain: [plain_a_test, plain_b_test],
            pool: PacketPool::default(),
            link,
            remote,
            token: 0,
            conn_a: None,
            log: Vec::new(),
            inbox: [VecDeque::new(), VecDeque::new()],
        };
        t.cmd(
            B,
            Command::Listen {
                local: remote,
                ack: 1,
            },
        );
        t.wait(|e| {
            matches!(
                e,
                Event::Ack {
                    ack: 1,
                    result: Ok(()),
                    ..
                }
            )
        });
        let any = Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector::any(false)],
        };
        let mk = |spi, seed| {
            let mut p = SaParams::new(spi, keymat(seed), backend);
            p.esn = true;
            p
        };
        let (ab, ba) = (mk(SPI_AB, 3), mk(SPI_BA, 5));
        let sa = |r: Result<OutboundSa, _>| Box::new(r.unwrap_or_else(|e| panic!("sa: {e}")));
        let si = |r: Result<InboundSa, _>| Box::new(r.unwrap_or_else(|e| panic!("sa: {e}")));
        t.cmd(
            B,
            Command::InstallInbound {
                sa: si(InboundSa::new(&ab)),
                ike_sa: IKE,
                lifetime: Lifetime::UNLIMITED,
                ack: 10,
            },
        );
        t.cmd(
            A,
            Command::InstallInbound {
                sa: si(InboundSa::new(&ba)),
                ike_sa: IKE,
                lifetime: Lifetime::UNLIMITED,
                ack: 11,
            },
        );
        t.cmd(
            A,
            Command::InstallOutbound {
                sa: sa(OutboundSa::new(&ab)),
                ike_sa: IKE,
                selectors: any.clone(),
                lifetime: Lifetime::UNLIMITED,
                ack: 12,
            },
        );
        t.cmd(
            B,
            Command::InstallOutbound {
                sa: sa(OutboundSa::new(&ba)),
                ike_sa: IKE,
                selectors: any,
                lifetime: Lifetime::UNLIMITED,
                ack: 13,
            },
        );
        for ack in 10..=13 {
            t.wait(|e| matches!(e, Event::Ack { ack: a, result: Ok(()), .. } if *a == ack));
        }
        t.connect();
        t
    }

    /// Sends a command, panicking if the queue is full (tests never fill it).
    pub fn cmd(&self, worker: u16, c: Command) {
        self.handle
            .send(worker, c)
            .unwrap_or_else(|e| panic!("command: {e:?}"));
    }

    /// Waits up to 20 s for an event matching `f` (keeping the others in `log`).
    pub fn wait(&mut self, mut f: impl FnMut(&Event) -> bool) -> Event {
        if let Some(i) = self.log.iter().position(&mut f) {
            return self.log.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.pump();
            match self.handle.events().recv_timeout(Duration::from_millis(5)) {
                Ok(e) if f(&e) => return e,
                Ok(e) => self.log.push(e),
                Err(_) => {}
            }
        }
        let acks: Vec<_> = self
            .log
            .iter()
            .filter(|e| !matches!(e, Event::Stats { .. }))
            .collect();
        panic!("timed out waiting for an event; other events: {acks:?}");
    }

    /// A (the TCP Originator, RFC 9329 §6.1) opens a connection and binds the IKE SA to it.
    pub fn connect(&mut self) {
        self.token += 1;
        let token = self.token;
        self.cmd(
            A,
            Command::Connect {
                local: None,
                remote: self.remote,
                token,
            },
        );
        let ev = self.wait(|e| matches!(e, Event::ConnUp { token: Some(t), .. } | Event::ConnDown { token: Some(t), .. } if *t == token));
        let Event::ConnUp { conn, .. } = ev else {
            panic!("connect failed: {ev:?}")
        };
        self.cmd(
            A,
            Command::BindIkeSa {
                ike_sa: IKE,
                conn: conn.id,
            },
        );
        // Packets sent before the worker applies the bind have no connection: wait for it.
        let ack = 1000 + token;
        self.cmd(A, Command::Barrier { ack });
        self.wait(|e| matches!(e, Event::Ack { ack: a, .. } if *a == ack));
        self.conn_a = Some(conn);
    }

    /// Waits for A's connection to go down (after a reset), then reconnects.
    pub fn reconnect_after_down(&mut self) {
        let Some(old) = self.conn_a else {
            panic!("no connection")
        };
        self.wait(|e| matches!(e, Event::ConnDown { conn, .. } if *conn == old));
        self.connect();
    }

    /// Moves packets between the test's plaintext ends and its inboxes.
    pub fn pump(&mut self) {
        let mut got = Vec::new();
        for side in 0..2 {
            got.clear();
            let _ = self.plain[side].recv_burst(&mut self.pool, &mut got, 256);
            for p in got.drain(..) {
                match number(p.data()) {
                    Some(n) => self.inbox[side].push_back(n),
                    None => panic!("corrupt inner packet delivered at {side}"),
                }
                self.pool.put(p);
            }
        }
    }

    /// Sends packets `nums` from the host behind `from`, waiting for ring space.
    pub fn send(&mut self, from: u16, nums: impl IntoIterator<Item = u32>) {
        let mut q: VecDeque<Packet> = VecDeque::new();
        for n in nums {
            let mut p = self.pool.get();
            assert!(p.fill_from(&inner(from, n)));
            q.push_back(p);
            if q.len() >= 64 {
                self.flush(from, &mut q);
            }
        }
        self.flush(from, &mut q);
    }

    fn flush(&mut self, from: u16, q: &mut VecDeque<Packet>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !q.is_empty() {
            let _ = self.plain[usize::from(from)].send_burst(&mut self.pool, q);
            self.pump();
            assert!(Instant::now() < deadline, "plaintext ring stuck");
        }
    }

    /// Waits until `count` packets have arrived at `at` (or 20 s), then returns all received there.
    pub fn received(&mut self, at: u16, count: usize) -> Vec<u32> {
        self.received_within(at, count, Duration::from_secs(20))
    }

    /// Like [`received`](Self::received) with a shorter wait, for counts that may not be reached.
    pub fn received_within(&mut self, at: u16, count: usize, wait: Duration) -> Vec<u32> {
        let deadline = Instant::now() + wait;
        while self.inbox[usize::from(at)].len() < count && Instant::now() < deadline {
            self.pump();
            std::thread::sleep(Duration::from_micros(200));
        }
        self.inbox[usize::from(at)].iter().copied().collect()
    }

    /// Counters of one worker.
    pub fn stats(&self, w: u16) -> StatsSnapshot {
        self.handle.worker_stats(w).unwrap_or_default()
    }

    /// Stops both workers and checks they ended cleanly.
    pub fn stop(mut self) {
        let _ = self.handle.send(A, Command::Shutdown);
        let _ = self.handle.send(B, Command::Shutdown);
        for j in self.joins.drain(..) {
            match j.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("worker failed: {e}"),
                Err(_) => panic!("worker panicked"),
            }
        }
    }
}
