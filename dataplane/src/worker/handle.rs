//! The control interface of the data plane: commands to each worker and events back, over bounded
//! crossbeam channels. Workers drain commands once per loop iteration and never block on control;
//! control never touches a socket.

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::directory::SpiDirectory;
use super::forward::Mesh;
use super::spd::Selectors;
use super::stats::{StatsSnapshot, WorkerStats};
use crate::sa::{InboundSa, OutboundSa};
use crate::transport::{CloseReason, ConnId, TcpRole};

/// A connection anywhere in the data plane: the worker that owns it and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    /// Worker index.
    pub worker: u16,
    /// Id within that worker's transport.
    pub id: ConnId,
}

/// Control's name for an IKE SA. All Child SAs of one IKE SA share its connection (RFC 9329 §6.1,
/// §6.8); the worker tracks which connection that currently is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub u64);

/// Direction of an ESP SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We decrypt with it.
    Inbound,
    /// We encrypt with it.
    Outbound,
}

/// Soft and hard limits of a Child SA by traffic (RFC 7296 §2.8; time limits are control's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Packets after which the soft expiry event fires (rekey time).
    pub soft_packets: u64,
    /// Packets after which the SA stops working.
    pub hard_packets: u64,
    /// Inner bytes, soft.
    pub soft_bytes: u64,
    /// Inner bytes, hard.
    pub hard_bytes: u64,
}

impl Lifetime {
    /// No traffic limits (sequence-number exhaustion still applies).
    pub const UNLIMITED: Lifetime = Lifetime {
        soft_packets: u64::MAX,
        hard_packets: u64::MAX,
        soft_bytes: u64::MAX,
        hard_bytes: u64::MAX,
    };
}

/// What a worker is told to do.
#[derive(Debug)]
pub enum Command {
    /// Accept RFC 9329 connections on this address (TCP Responder).
    Listen {
        /// Local address and port (4500 by default, RFC 9329 §2).
        local: SocketAddr,
        /// Answered with [`Event::Ack`].
        ack: u64,
    },
    /// Open a connection (TCP Originator); `Event::ConnUp` carries `token`.
    Connect {
        /// Local address, or any.
        local: Option<SocketAddr>,
        /// The peer's address and port.
        remote: SocketAddr,
        /// Correlates the resulting `ConnUp`/`ConnDown`.
        token: u64,
    },
    /// Acknowledged when reached: commands are applied in order, so its ack says every command
    /// sent before it to this worker is in effect (e.g. a `BindIkeSa`, which has no ack).
    Barrier {
        /// Answered with [`Event::Ack`].
        ack: u64,
    },
    /// Close a connection (`abort` = RST). The SAs stay (RFC 9329 §6.1).
    Close {
        /// The connection.
        conn: ConnId,
        /// Send RST instead of FIN.
        abort: bool,
    },
    /// Install an inbound SA. Acknowledged once installed, so control can send the IKE response
    /// that lets the peer use it.
    InstallInbound {
        /// The SA, key schedule already expanded.
        sa: Box<InboundSa>,
        /// The IKE SA it belongs to.
        ike_sa: IkeSaId,
        /// Traffic limits.
        lifetime: Lifetime,
        /// Answered with [`Event::Ack`].
        ack: u64,
    },
    /// Install an outbound SA with its selectors, bound to a connection of its IKE SA.
    InstallOutbound {
        /// The SA, key schedule already expanded.
        sa: Box<OutboundSa>,
        /// The IKE SA it belongs to.
        ike_sa: IkeSaId,
        /// Packets matching these use this SA; it takes precedence over older SAs with the same
        /// selectors (the new SA of a rekey).
        selectors: Selectors,
        /// Traffic limits.
        lifetime: Lifetime,
        /// Answered with [`Event::Ack`].
        ack: u64,
    },
    /// Bind an IKE SA to a connection (the one its IKE messages arrived on or were sent on).
    /// Used by control after an authenticated IKE message (RFC 9329 §6.1, R-6.1-t).
    BindIkeSa {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Its connection on this worker.
        conn: ConnId,
    },
    /// Delete an SA; the removed SA goes back to control in [`Event::SaRemoved`] (so its key is
    /// freed and zeroized off the worker).
    DeleteSa {
        /// SPI of the SA.
        spi: u32,
        /// Which table.
        dir: Direction,
        /// Answered with [`Event::Ack`].
        ack: u64,
    },
    /// Check an ESP packet that arrived on another worker's connection with the inbound SA of
    /// `spi`: ICV, then the replay check and window update (RFC 4303 §3.4.3). Acknowledged with
    /// `Ok` only if it passed; its inner packet is then delivered like any other. Control moves
    /// an IKE SA's SAs to a new connection only after this (RFC 9329 §6.1, R-6.1-t, R-10-e).
    VerifyEsp {
        /// SPI of the inbound SA.
        spi: u32,
        /// The ESP packet (no Length field).
        frame: Vec<u8>,
        /// Answered with [`Event::Ack`].
        ack: u64,
    },
    /// Report the traffic counters of every SA of this worker ([`Event::SaCounters`]).
    ReportSas {
        /// Carried by the answer.
        ack: u64,
    },
    /// Forget an IKE SA's connection binding (after its Child SAs were deleted).
    ForgetIkeSa {
        /// The IKE SA.
        ike_sa: IkeSaId,
    },
    /// Send an IKE message (without the non-ESP marker) on a connection.
    SendIke {
        /// The connection.
        conn: ConnId,
        /// The IKE message.
        msg: Vec<u8>,
    },
    /// Stop the worker loop.
    Shutdown,
}

/// Why an SA expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryCause {
    /// Packet count.
    Packets,
    /// Byte count.
    Bytes,
    /// The sequence number space ran out (RFC 4303 §3.3.3) or is about to.
    Sequence,
}

/// Why a command with an `ack` failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The transport could not listen on this address.
    Listen {
        /// The address.
        local: SocketAddr,
        /// What the OS (or the transport) said.
        kind: io::ErrorKind,
    },
    /// No SA with this SPI in this direction (`DeleteSa`).
    NoSuchSa {
        /// SPI.
        spi: u32,
        /// Direction.
        dir: Direction,
    },
    /// An SA with this SPI is installed already; the new one was refused (and dropped).
    DuplicateSpi {
        /// SPI.
        spi: u32,
        /// Direction.
        dir: Direction,
    },
    /// `VerifyEsp` failed: the packet moves nothing.
    Verify {
        /// SPI.
        spi: u32,
        /// Why.
        failure: VerifyFailure,
    },
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Listen { local, kind } => write!(f, "listen on {local}: {kind}"),
            CommandError::NoSuchSa { spi, dir } => write!(f, "no {dir:?} SA with SPI {spi:#010x}"),
            CommandError::DuplicateSpi { spi, dir } => {
                write!(f, "an {dir:?} SA with SPI {spi:#010x} exists already")
            }
            CommandError::Verify { spi, failure } => {
                write!(f, "ESP for SPI {spi:#010x} not verified: {failure:?}")
            }
        }
    }
}

impl std::error::Error for CommandError {}

/// Why an ESP packet did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyFailure {
    /// No live inbound SA with that SPI on this worker.
    NoSa,
    /// The ICV failed: forged or corrupt (RFC 9329 §6.1, R-6.1-o).
    Integrity,
    /// Authentic but a replay or too old (RFC 4303 §3.4.3).
    Replay,
    /// Too short to be ESP, or authentic but unusable.
    Malformed,
}

/// An IKE message handed to control. It holds a share of the worker's IKE byte budget (per
/// connection and in total) until it is dropped: a worker reads no more from a connection
/// whose messages control has not consumed yet beyond the budget, so a peer cannot queue
/// unbounded bytes while control lags.
#[derive(Debug, Default)]
pub struct IkeBytes {
    msg: Vec<u8>,
    credit: Option<IkeCredit>,
}

#[derive(Debug)]
struct IkeCredit {
    conn: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl IkeBytes {
    /// A message charged to these two counters until dropped.
    pub(crate) fn charged(msg: Vec<u8>, conn: &Arc<AtomicUsize>, total: &Arc<AtomicUsize>) -> Self {
        conn.fetch_add(msg.len(), Ordering::Relaxed);
        total.fetch_add(msg.len(), Ordering::Relaxed);
        IkeBytes {
            credit: Some(IkeCredit {
                conn: conn.clone(),
                total: total.clone(),
            }),
            msg,
        }
    }

    /// The message bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.msg
    }
}

impl From<Vec<u8>> for IkeBytes {
    /// An uncharged message (tests, injected messages).
    fn from(msg: Vec<u8>) -> Self {
        IkeBytes { msg, credit: None }
    }
}

impl Deref for IkeBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.msg
    }
}

impl Drop for IkeBytes {
    fn drop(&mut self) {
        if let Some(c) = &self.credit {
            c.conn.fetch_sub(self.msg.len(), Ordering::Relaxed);
            c.total.fetch_sub(self.msg.len(), Ordering::Relaxed);
        }
    }
}

/// What a worker reports. Every variant but [`Event::Stats`], [`Event::UnknownSpi`] and
/// [`Event::ForeignEsp`] is reliable: never dropped (a worker holds it until the channel has
/// room), and bounded by what is in flight (acks by commands, connection events by connections,
/// IKE messages by the byte budget). The three hints are dropped when the channel is full, and
/// each drop is counted (`events_dropped`).
#[derive(Debug)]
pub enum Event {
    /// A command with an `ack` number was applied (or failed, with the reason).
    Ack {
        /// Worker index.
        worker: u16,
        /// The command's `ack`.
        ack: u64,
        /// Ok, or why not.
        result: Result<(), CommandError>,
    },
    /// An IKE message arrived (marker stripped).
    IkeMessage {
        /// Where.
        conn: Conn,
        /// The message.
        msg: IkeBytes,
    },
    /// A connection is up.
    ConnUp {
        /// The connection.
        conn: Conn,
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        peer: SocketAddr,
        /// Who opened it.
        role: TcpRole,
        /// The `Connect` token for an Originator connection.
        token: Option<u64>,
    },
    /// A connection is gone. SAs survive (RFC 9329 §6.1).
    ConnDown {
        /// The connection.
        conn: Conn,
        /// Why.
        reason: CloseReason,
        /// The `Connect` token, if we opened it.
        token: Option<u64>,
    },
    /// An SA passed its soft limit (rekey now) or hard limit (it no longer works).
    SaExpired {
        /// Worker index.
        worker: u16,
        /// SPI.
        spi: u32,
        /// Direction.
        dir: Direction,
        /// Hard (true) or soft.
        hard: bool,
        /// Why.
        cause: ExpiryCause,
    },
    /// ESP arrived for an SPI that another worker holds (see
    /// [`SpiDirectory`](super::directory::SpiDirectory)): a candidate for moving that IKE SA's
    /// SAs here, once [`Command::VerifyEsp`] on the owner proved the packet authentic. The first
    /// such packet of a connection and every 64th after it are reported.
    ForeignEsp {
        /// Where it arrived.
        conn: Conn,
        /// The SPI.
        spi: u32,
        /// The ESP packet (no Length field).
        frame: Vec<u8>,
    },
    /// ESP arrived for an SPI no worker has (gone, or never ours). Rate-limited per connection.
    UnknownSpi {
        /// Where.
        conn: Conn,
        /// The SPI.
        spi: u32,
    },
    /// Authentic ESP of an IKE SA arrived on another connection than the one it used, which
    /// now carries its outbound traffic (RFC 9329 §6.1, R-6.1-t).
    PathMoved {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Its connection now.
        conn: Conn,
    },
    /// The answer to `ReportSas`: each SA's packets and inner bytes so far.
    SaCounters {
        /// Worker index.
        worker: u16,
        /// The command's `ack`.
        ack: u64,
        /// One entry per SA.
        sas: Vec<SaCounter>,
    },
    /// An SA removed by `DeleteSa`, handed back to be dropped off the worker.
    SaRemoved(RemovedSa),
    /// Periodic counters.
    Stats {
        /// Worker index.
        worker: u16,
        /// The counters (boxed: they would make every event as large as this one).
        stats: Box<StatsSnapshot>,
        /// IKE SAs whose Child SAs received authentic ESP since the last report (liveness).
        inbound_esp: Vec<IkeSaId>,
    },
}

/// The traffic of one SA (see [`Event::SaCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaCounter {
    /// SPI.
    pub spi: u32,
    /// Direction.
    pub dir: Direction,
    /// Packets encapsulated or authentically decapsulated.
    pub packets: u64,
    /// Their inner bytes.
    pub bytes: u64,
}

/// A removed SA, dropped (and its key zeroized) by whoever receives it.
#[derive(Debug)]
pub enum RemovedSa {
    /// Inbound.
    Inbound(Box<InboundSa>),
    /// Outbound.
    Outbound(Box<OutboundSa>),
}

/// Capacity of each worker's command channel: enough for a rekey storm.
pub const COMMAND_QUEUE: usize = 4096;
/// Capacity of the shared event channel.
pub const EVENT_QUEUE: usize = 65536;

/// Control's side: one command sender per worker, the shared event receiver, the live counters.
#[derive(Debug, Clone)]
pub struct DataplaneHandle {
    commands: Vec<Sender<Command>>,
    events: Receiver<Event>,
    stats: Vec<Arc<WorkerStats>>,
    directory: SpiDirectory,
}

/// A worker's side of the channels.
#[derive(Debug)]
pub struct WorkerChannels {
    /// Worker index.
    pub index: u16,
    /// Commands for it.
    pub commands: Receiver<Command>,
    /// Where it reports.
    pub events: Sender<Event>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Which worker holds each inbound SPI (shared by all workers).
    pub directory: SpiDirectory,
    /// Its links to the other workers: plaintext inboxes and outbound policy updates (see
    /// [`forward`](super::forward)).
    pub mesh: Mesh,
}

/// Creates the channels for `workers` workers, each a gateway of its own: none forwards
/// plaintext to another (see [`gateway_channels`]).
pub fn channels(workers: u16) -> (DataplaneHandle, Vec<WorkerChannels>) {
    channels_with(workers, EVENT_QUEUE)
}

/// As [`channels`], with an event channel of `events` slots (at least 1). Reliable events
/// that find it full wait in their worker (see [`Event`]).
pub fn channels_with(workers: u16, events: usize) -> (DataplaneHandle, Vec<WorkerChannels>) {
    gateway_channels(&vec![1; usize::from(workers)], events)
}

/// Creates the channels of one or more gateways: `gateways[g]` consecutive workers for gateway
/// `g` (at most `u16::MAX` in all), with an event channel of `events` slots. The workers of a
/// gateway serve one plaintext side (the queues of one multi-queue TUN), so each passes
/// plaintext for another's outbound SA to that worker (see [`forward`](super::forward));
/// workers of different gateways never do, even where their selectors overlap.
pub fn gateway_channels(gateways: &[u16], events: usize) -> (DataplaneHandle, Vec<WorkerChannels>) {
    let (ev_tx, ev_rx) = crossbeam_channel::bounded(events.max(1));
    let mut commands = Vec::new();
    let mut stats = Vec::new();
    let mut sides = Vec::new();
    let directory = SpiDirectory::default();
    for (index, mesh) in (0..).zip(Mesh::create(gateways)) {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let st = Arc::new(WorkerStats::default());
        commands.push(tx);
        stats.push(st.clone());
        sides.push(WorkerChannels {
            index,
            commands: rx,
            events: ev_tx.clone(),
            stats: st,
            directory: directory.clone(),
            mesh,
        });
    }
    (
        DataplaneHandle {
            commands,
            events: ev_rx,
            stats,
            directory,
        },
        sides,
    )
}

/// Sending a command failed: the worker's queue is full (try later) or the worker is gone.
#[derive(Debug)]
pub enum SendError {
    /// Queue full; the command comes back.
    Full(Box<Command>),
    /// No such worker, or it has stopped.
    Gone,
}

impl DataplaneHandle {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.commands.len()
    }

    /// Sends a command without blocking (control must never stall on a busy worker).
    pub fn send(&self, worker: u16, cmd: Command) -> Result<(), SendError> {
        let tx = self
            .commands
            .get(usize::from(worker))
            .ok_or(SendError::Gone)?;
        tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(c) => SendError::Full(Box::new(c)),
            TrySendError::Disconnected(_) => SendError::Gone,
        })
    }

    /// Sends a command, waiting up to `timeout` for room (for rare commands such as `Shutdown`
    /// that must not be lost to a momentarily full queue).
    pub fn send_timeout(
        &self,
        worker: u16,
        cmd: Command,
        timeout: std::time::Duration,
    ) -> Result<(), SendError> {
        let tx = self
            .commands
            .get(usize::from(worker))
            .ok_or(SendError::Gone)?;
        tx.send_timeout(cmd, timeout).map_err(|e| match e {
            crossbeam_channel::SendTimeoutError::Timeout(c) => SendError::Full(Box::new(c)),
            crossbeam_channel::SendTimeoutError::Disconnected(_) => SendError::Gone,
        })
    }

    /// The event stream of all workers.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Sums the counters of all workers (read without stopping them).
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = StatsSnapshot::default();
        for w in &self.stats {
            s.add(&w.snapshot());
        }
        s
    }

    /// One worker's counters.
    pub fn worker_stats(&self, worker: u16) -> Option<StatsSnapshot> {
        self.stats.get(usize::from(worker)).map(|s| s.snapshot())
    }

    /// Which worker holds each inbound SPI.
    pub fn directory(&self) -> &SpiDirectory {
        &self.directory
    }
}
