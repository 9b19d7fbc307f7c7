//! The data plane of the gateway: one pinned worker per configured core, each with its own
//! TUN queue (multi-queue TUN, so the kernel spreads inner flows over the workers) and its own
//! outer TCP stack: kernel sockets, or smoltcp over the gateway's NIC: a TAP device, or AF_XDP
//! sockets on a real interface (shared by the workers through a steering splitter when there are
//! several).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use iketcp_dataplane::port::Port;
use iketcp_dataplane::port::af_xdp::{Steal, XskConfig, XskPort};
use iketcp_dataplane::port::steer::{Steer, split};
use iketcp_dataplane::port::tap::Tap;
use iketcp_dataplane::port::tun::{Tun, TunConfig};
use iketcp_dataplane::transport::kernel::{KernelConfig, KernelTransport};
use iketcp_dataplane::transport::smol::{SmolConfig, SmolTransport};
use iketcp_dataplane::worker::handle::{
    DataplaneHandle, EVENT_QUEUE, WorkerChannels, gateway_channels,
};
use iketcp_dataplane::worker::{EngineConfig, WorkerConfig, spawn};

use crate::config::{GatewayConfig, NicPort, OuterTransport, parse_mac};

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    /// Control's side of their channels.
    pub handle: DataplaneHandle,
    /// Their threads.
    pub joins: Vec<JoinHandle<io::Result<()>>>,
    /// The steering thread of a shared TAP, if any.
    pub splitter: Splitter,
    /// The TUN device's name.
    pub tun_name: String,
}

/// Opens the TUN queues (and the TAP) and starts the workers.
///
/// # Errors
/// A device cannot be opened or a thread cannot start.
pub fn start(cfg: &GatewayConfig, pin: bool) -> io::Result<Workers> {
    let n = cfg.gateway.workers.max(1);
    let count = u16::try_from(n).map_err(|_| io::Error::other("too many workers"))?;
    // One gateway: a worker hands plaintext for an SA another worker holds to that worker.
    let (handle, sides) = gateway_channels(&[count], EVENT_QUEUE);
    let tun_cfg = TunConfig {
        name: cfg.tun.name.clone(),
        mtu: usize::from(cfg.tun.mtu),
        multi_queue: n > 1,
        offload: cfg.tun.offload,
    };
    // Every queue is opened here, so the device exists (and can be configured) before any
    // worker runs, and an error stops the start-up cleanly.
    let mut tuns = Vec::with_capacity(n);
    for _ in 0..n {
        tuns.push(Tun::open_with(&tun_cfg)?);
    }
    let tun_name = tuns
        .first()
        .map(|t| t.name().to_owned())
        .unwrap_or_default();
    let cores = if pin { core_affinity_ids() } else { Vec::new() };
    let wcfg = |i: usize| WorkerConfig {
        core: cores.get(i % cores.len().max(1)).copied().flatten(),
        mss_clamp: cfg.tun.mss_clamp.then_some(cfg.tun.mtu),
        engine: EngineConfig {
            conn_queue_bytes: cfg.limits.queued_bytes_per_connection,
            ..EngineConfig::default()
        },
        ..WorkerConfig::default()
    };
    let mut joins = Vec::with_capacity(n);
    let mut splitter = None;
    match &cfg.gateway.transport {
        OuterTransport::Kernel => {
            let kc = KernelConfig {
                mark: cfg.gateway.mark,
                nodelay: cfg.gateway.tcp.nodelay,
                so_sndbuf: cfg.gateway.tcp.send_buffer,
                notsent_lowat: cfg.gateway.tcp.notsent_lowat,
                max_connections: cfg.limits.max_connections,
                untrusted_total: cfg.limits.untrusted_connections,
                untrusted_per_source: cfg.limits.untrusted_per_source,
                ..KernelConfig::default()
            };
            for (i, (side, tun)) in sides.into_iter().zip(tuns).enumerate() {
                let kc = kc.clone();
                joins.push(spawn(side, wcfg(i), move || {
                    Ok((KernelTransport::new(kc)?, tun))
                })?);
            }
        }
        OuterTransport::Smoltcp(nic) => {
            let gateway = match nic.next_hop {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            };
            let mac = match (&nic.mac, &nic.port) {
                (Some(m), _) => *m,
                (None, NicPort::AfXdp { interface, .. }) => interface_mac(interface)?,
                (None, NicPort::Tap(_)) => return Err(io::Error::other("no MAC for the TAP port")),
            };
            let smol = SmolConfig {
                local_addrs: vec![nic.address],
                mac: Some(mac),
                gateway,
                max_connections: cfg.limits.max_connections,
                untrusted_per_listener: cfg.limits.untrusted_connections,
                untrusted_per_source: cfg.limits.untrusted_per_source,
                ..SmolConfig::default()
            };
            let frame = usize::from(nic.mtu) + 14;
            let sides: Vec<_> = sides.into_iter().zip(tuns).collect();
            splitter = match &nic.port {
                NicPort::Tap(name) => {
                    spawn_smol(Tap::open(name, frame)?, sides, &smol, &wcfg, &mut joins)?
                }
                NicPort::AfXdp {
                    interface,
                    mode,
                    force_copy,
                } => {
                    let mut xc = XskConfig::new(interface, frame);
                    xc.steal = match nic.address {
                        IpAddr::V4(a) => Steal {
                            ipv4: Some(a),
                            ipv6: None,
                        },
                        IpAddr::V6(a) => Steal {
                            ipv4: None,
                            ipv6: Some(a),
                        },
                    };
                    xc.attach = *mode;
                    xc.force_copy = *force_copy;
                    let port = XskPort::open(&xc)?;
                    tracing::info!(
                        interface = %interface,
                        queues = port.queues(),
                        xdp = ?port.attach_mode(),
                        zero_copy = port.zero_copy(),
                        "AF_XDP port open"
                    );
                    if sides.len() > 1 {
                        // Each worker reads its own queues; no steering thread (see
                        // `XskPort::share`).
                        let parts = port.share(count);
                        spawn_steered(parts, sides, &smol, &wcfg, &mut joins)?;
                        None
                    } else {
                        spawn_smol(port, sides, &smol, &wcfg, &mut joins)?
                    }
                }
            };
        }
    }
    Ok(Workers {
        handle,
        joins,
        splitter,
        tun_name,
    })
}

type Splitter = Option<(Arc<AtomicBool>, JoinHandle<io::Result<()>>)>;

/// Starts the smoltcp workers on `port`: one worker owns it, or a steering splitter shares it
/// among several (returned, to be stopped at shutdown).
fn spawn_smol<P: Port + 'static>(
    port: P,
    sides: Vec<(WorkerChannels, Tun)>,
    smol: &SmolConfig,
    wcfg: &dyn Fn(usize) -> WorkerConfig,
    joins: &mut Vec<JoinHandle<io::Result<()>>>,
) -> io::Result<Splitter> {
    let count = u16::try_from(sides.len()).map_err(|_| io::Error::other("too many workers"))?;
    if count == 1 {
        let sc = smol.clone();
        let Some((side, tun)) = sides.into_iter().next() else {
            return Err(io::Error::other("no worker"));
        };
        joins.push(spawn(side, wcfg(0), move || {
            Ok((SmolTransport::new(port, sc)?, tun))
        })?);
        return Ok(None);
    }
    let (s, ports) = split(port, count, 4096);
    let stop = Arc::new(AtomicBool::new(false));
    let j = s.spawn(stop.clone())?;
    spawn_steered(ports, sides, smol, wcfg, joins)?;
    Ok(Some((stop, j)))
}

/// Starts one smoltcp worker on each of `ports`, the parts of one shared port: worker `i` opens
/// connections whose 4-tuple hashes to `i` (`Steer`), so their replies come back to it.
fn spawn_steered<P: Port + 'static>(
    ports: Vec<P>,
    sides: Vec<(WorkerChannels, Tun)>,
    smol: &SmolConfig,
    wcfg: &dyn Fn(usize) -> WorkerConfig,
    joins: &mut Vec<JoinHandle<io::Result<()>>>,
) -> io::Result<()> {
    let count = u16::try_from(sides.len()).map_err(|_| io::Error::other("too many workers"))?;
    for (i, ((side, tun), port)) in sides.into_iter().zip(ports).enumerate() {
        let sc = SmolConfig {
            steer: Some(Steer {
                index: i as u16,
                count,
            }),
            ..smol.clone()
        };
        joins.push(spawn(side, wcfg(i), move || {
            Ok((SmolTransport::new(port, sc)?, tun))
        })?);
    }
    Ok(())
}

/// The MAC address of `interface` (`/sys/class/net/IF/address`, in this process's namespace).
fn interface_mac(interface: &str) -> io::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    parse_mac(text.trim()).map_err(|e| io::Error::other(format!("{path}: {text:?}: {e}")))
}

/// The cores to pin to, in order.
fn core_affinity_ids() -> Vec<Option<core_affinity::CoreId>> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(Some)
        .collect()
}
