//! Steering: two gateways with two workers each, every gateway sharing ONE ciphertext port among
//! its workers through a splitter. Each A worker opens a connection (its ephemeral port chosen so
//! the flow hashes back to it); B accepts each on the worker the hash picks. Static SAs are
//! installed where the connections landed, and traffic on every connection arrives intact.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use iketcp_dataplane::crypto::{Backend, Keymat, Suite};
use iketcp_dataplane::port::mem::{MemConfig, MemPort, pair};
use iketcp_dataplane::port::steer::{Steer, split, tuple_hash};
use iketcp_dataplane::port::{Packet, PacketPool, Port};
use iketcp_dataplane::sa::{InboundSa, OutboundSa, SaParams};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::worker::handle::{Command, Event, IkeSaId, Lifetime, channels};
use iketcp_dataplane::worker::spd::{Selectors, TrafficSelector};
use iketcp_dataplane::worker::{WorkerConfig, spawn};
use iketcp_tests::inner;

const B_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn params(spi: u32) -> SaParams {
    let km: Vec<u8> = (0..36u8).map(|i| i ^ (spi as u8)).collect();
    SaParams::new(
        spi,
        Keymat::new(Suite::Aes128Gcm16, &km[..20]).unwrap_or_else(|e| panic!("{e}")),
        Backend::AwsLc,
    )
}

#[test]
fn shared_ports_steer_each_connection_to_its_worker() {
    let (handle, sides) = channels(4);
    let (link_a, link_b) = pair(MemConfig::default());
    let (split_a, ports_a) = split(link_a, 2, 4096);
    let (split_b, ports_b) = split(link_b, 2, 4096);
    let stop = Arc::new(AtomicBool::new(false));
    let joins_split = [split_a.spawn(stop.clone()), split_b.spawn(stop.clone())];
    // Plaintext: the test holds the other end of each worker's plaintext port.
    let mut plain_test: Vec<MemPort> = Vec::new();
    let mut joins = Vec::new();
    let mut cipher_ports: Vec<Option<MemPort>> =
        ports_a.into_iter().chain(ports_b).map(Some).collect();
    for (w, side) in sides.into_iter().enumerate() {
        let (pw, pt) = pair(MemConfig::default());
        plain_test.push(pt);
        let port = cipher_ports[w].take().unwrap_or_else(|| panic!("port"));
        let addr = if w < 2 { A_ADDR } else { B_ADDR };
        let steer = Some(Steer {
            index: (w % 2) as u16,
            count: 2,
        });
        let cfg = SmolConfig {
            local_addrs: vec![IpAddr::V4(addr)],
            steer,
            ..SmolConfig::default()
        };
        let wc = WorkerConfig {
            idle_spins: 64,
            ..WorkerConfig::default()
        };
        joins.push(
            spawn(side, wc, move || Ok((SmolTransport::new(port, cfg)?, pw)))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let listen = SocketAddr::from((B_ADDR, 4500));
    for w in [2u16, 3] {
        handle
            .send(
                w,
                Command::Listen {
                    local: listen,
                    ack: u64::from(w),
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    // Each A worker opens one connection.
    for w in [0u16, 1] {
        handle
            .send(
                w,
                Command::Connect {
                    local: None,
                    remote: listen,
                    token: u64::from(w),
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    // Collect Up events on both sides: A's by token, B's by peer port.
    let mut a_up = HashMap::new(); // token -> (conn, local port)
    let mut b_up = HashMap::new(); // peer port -> conn
    let deadline = Instant::now() + Duration::from_secs(20);
    while (a_up.len() < 2 || b_up.len() < 2) && Instant::now() < deadline {
        if let Ok(Event::ConnUp {
            conn,
            local,
            peer,
            token,
            ..
        }) = handle.events().recv_timeout(Duration::from_millis(20))
        {
            match token {
                Some(t) => {
                    assert_eq!(
                        u64::from(conn.worker),
                        t,
                        "A's connection is owned by the worker that opened it"
                    );
                    a_up.insert(t, (conn, local.port()));
                }
                None => {
                    b_up.insert(peer.port(), conn);
                }
            }
        }
    }
    assert_eq!(
        (a_up.len(), b_up.len()),
        (2, 2),
        "all connections up through the splitters"
    );
    // Static SAs: IKE SA i rides connection i; A sends on it, B decrypts on the worker holding it.
    let mut b_worker_of = HashMap::new();
    for (t, (a_conn, lport)) in &a_up {
        let b_conn = b_up[lport];
        // Both ends agree on the flow's hash: A picked a port that hashes to itself, B's splitter
        // delivered the connection to the worker with the same index.
        let h = tuple_hash(IpAddr::V4(A_ADDR), *lport, IpAddr::V4(B_ADDR), 4500);
        assert_eq!(u32::from(a_conn.worker), h % 2);
        assert_eq!(u32::from(b_conn.worker), 2 + h % 2);
        let ike = IkeSaId(*t + 1);
        let spi = 0x1000 + *t as u32;
        let sel = Selectors {
            local: vec![TrafficSelector::any(false)],
            remote: vec![TrafficSelector {
                protocol: 17,
                start_port: 5000 + *t as u16,
                end_port: 5000 + *t as u16,
                ..TrafficSelector::any(false)
            }],
        };
        let out = Box::new(OutboundSa::new(&params(spi)).unwrap_or_else(|e| panic!("{e}")));
        let inb = Box::new(InboundSa::new(&params(spi)).unwrap_or_else(|e| panic!("{e}")));
        handle
            .send(
                b_conn.worker,
                Command::InstallInbound {
                    sa: inb,
                    ike_sa: ike,
                    lifetime: Lifetime::UNLIMITED,
                    ack: 100 + t,
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        // Bound before the outbound install, so that install's ack says the bind is in effect
        // (a packet read before it would have no connection).
        handle
            .send(
                a_conn.worker,
                Command::BindIkeSa {
                    ike_sa: ike,
                    conn: a_conn.id,
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        handle
            .send(
                a_conn.worker,
                Command::InstallOutbound {
                    sa: out,
                    ike_sa: ike,
                    selectors: sel,
                    lifetime: Lifetime::UNLIMITED,
                    ack: 200 + t,
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        b_worker_of.insert(*t, b_conn.worker);
    }
    let mut acks = 0;
    while acks < 4 && Instant::now() < deadline {
        if let Ok(Event::Ack { result, .. }) =
            handle.events().recv_timeout(Duration::from_millis(20))
        {
            assert!(result.is_ok());
            acks += 1;
        }
    }
    assert_eq!(acks, 4);
    // 200 packets per connection from the host behind each A worker.
    let mut pool = PacketPool::default();
    for t in 0..2u16 {
        let mut q: VecDeque<Packet> = VecDeque::new();
        for n in 0..200u32 {
            let mut pkt = inner(0, n);
            pkt[22..24].copy_from_slice(&(5000 + t).to_be_bytes());
            let mut p = pool.get();
            assert!(p.fill_from(&pkt));
            q.push_back(p);
        }
        while !q.is_empty() {
            plain_test[usize::from(t)]
                .send_burst(&mut pool, &mut q)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut got: HashMap<u16, Vec<u32>> = HashMap::new();
    while got.values().map(Vec::len).sum::<usize>() < 400 && Instant::now() < deadline {
        for w in [2usize, 3] {
            let mut v = Vec::new();
            let _ = plain_test[w].recv_burst(&mut pool, &mut v, 64);
            for p in v {
                let d = p.data();
                let port = u16::from_be_bytes([d[22], d[23]]);
                assert_eq!(
                    u64::from(b_worker_of[&u64::from(port - 5000)]),
                    w as u64,
                    "decrypted on the connection's worker"
                );
                got.entry(port)
                    .or_default()
                    .push(u32::from_be_bytes([d[28], d[29], d[30], d[31]]));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for port in [5000u16, 5001] {
        assert_eq!(
            got.get(&port).cloned().unwrap_or_default(),
            (0..200).collect::<Vec<u32>>(),
            "flow {port}"
        );
    }
    for w in 0..4u16 {
        let _ = handle.send_timeout(w, Command::Shutdown, Duration::from_secs(5));
    }
    for j in joins {
        assert!(matches!(j.join(), Ok(Ok(()))));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for j in joins_split {
        let j = j.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(j.join(), Ok(Ok(()))));
    }
}
