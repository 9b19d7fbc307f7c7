//! Packet capture to a pcap file. [`Capture`] wraps any [`Port`] and writes every packet it receives
//! and sends to a classic libpcap file ([`PcapWriter`]): raw IP packets (`LINKTYPE_RAW`, 101) for
//! [`Medium::Ip`], Ethernet frames (`LINKTYPE_ETHERNET`, 1) for [`Medium::Ethernet`].
//!
//! The file is little-endian: global header (magic `0xa1b2c3d4` for microsecond or `0xa1b23c4d` for
//! nanosecond timestamps, version 2.4, snaplen, link type), then per packet a 16-byte record header
//! (seconds, micro- or nanoseconds, included length, original length) and the packet's bytes.
//! Timestamps are wall-clock ([`SystemTime`]), as pcap readers expect.
//!
//! Several wrappers (both directions of several workers, say) may share one writer through a
//! [`SharedPcap`]. **Wrap only one end of a link**: both ends see the same packets (one sends what
//! the other receives), so wrapping both would record every packet twice.
//!
//! Capture never fails the data path: a write error is counted and stops the capture, and once the
//! file reaches its byte limit (default [`DEFAULT_BYTE_LIMIT`]) further packets are counted as
//! dropped instead of written. Call [`PcapWriter::flush`] (or drop the last handle) to write out
//! what is buffered.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iketcp_dataplane::port::{Medium, Packet, PacketPool, Port};

/// Magic of a file with microsecond timestamps.
pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Magic of a file with nanosecond timestamps.
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_RAW`: packets start with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// `LINKTYPE_ETHERNET`: Ethernet II frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Largest number of bytes recorded per packet (longer packets are truncated, their original
/// length kept in the record header).
pub const SNAPLEN: u32 = 65535;
/// Default bound of a capture file: 1 GiB.
pub const DEFAULT_BYTE_LIMIT: u64 = 1 << 30;
/// Length of the global header.
pub const GLOBAL_HEADER_LEN: usize = 24;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// Packets staged per inner `send_burst` call (see [`Capture`]'s `send_burst`).
const SEND_CHUNK: usize = 64;

/// Timestamp resolution of a capture file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Microseconds (magic `0xa1b2c3d4`), readable by every pcap tool.
    #[default]
    Micros,
    /// Nanoseconds (magic `0xa1b23c4d`).
    Nanos,
}

/// Options of a [`PcapWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapConfig {
    /// Timestamp resolution.
    pub precision: Precision,
    /// The file (headers included) never grows beyond this many bytes.
    pub byte_limit: u64,
}

impl Default for PcapConfig {
    fn default() -> Self {
        PcapConfig {
            precision: Precision::Micros,
            byte_limit: DEFAULT_BYTE_LIMIT,
        }
    }
}

/// Counters of a [`PcapWriter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Packets written.
    pub records: u64,
    /// Bytes written, headers included.
    pub bytes: u64,
    /// Packets not written: the byte limit was reached or a write failed.
    pub dropped: u64,
    /// Write errors (the first one stops the capture).
    pub write_errors: u64,
}

/// A classic pcap file being written.
#[derive(Debug)]
pub struct PcapWriter {
    out: BufWriter<File>,
    medium: Medium,
    precision: Precision,
    byte_limit: u64,
    stopped: bool,
    stats: CaptureStats,
}

/// A writer shared by several [`Capture`] wrappers.
pub type SharedPcap = Arc<Mutex<PcapWriter>>;

fn lock(w: &SharedPcap) -> MutexGuard<'_, PcapWriter> {
    // The writer's state stays consistent even if a holder panicked: keep capturing.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Time since the Unix epoch (zero if the clock is before it).
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl PcapWriter {
    /// Creates (truncates) `path` and writes the global header for packets of `medium`.
    ///
    /// # Errors
    /// The file cannot be created or the header written.
    pub fn create(path: impl AsRef<Path>, medium: Medium, cfg: PcapConfig) -> io::Result<Self> {
        Self::from_file(File::create(path)?, medium, cfg)
    }

    /// Writes the global header to `file` (at its current position) for packets of `medium`.
    ///
    /// # Errors
    /// The header cannot be written.
    pub fn from_file(file: File, medium: Medium, cfg: PcapConfig) -> io::Result<Self> {
        let mut out = BufWriter::new(file);
        let magic = match cfg.precision {
            Precision::Micros => MAGIC_MICROS,
            Precision::Nanos => MAGIC_NANOS,
        };
        let linktype = match medium {
            Medium::Ip => LINKTYPE_RAW,
            Medium::Ethernet => LINKTYPE_ETHERNET,
        };
        let mut h = [0u8; GLOBAL_HEADER_LEN];
        h[0..4].copy_from_slice(&magic.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone (8..12) and sigfigs (12..16) stay zero.
        h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        h[20..24].copy_from_slice(&linktype.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter {
            out,
            medium,
            precision: cfg.precision,
            byte_limit: cfg.byte_limit,
            stopped: false,
            stats: CaptureStats {
                bytes: GLOBAL_HEADER_LEN as u64,
                ..CaptureStats::default()
            },
        })
    }

    /// This writer behind an `Arc<Mutex<..>>`, for one or more [`Capture`] wrappers.
    pub fn shared(self) -> SharedPcap {
        Arc::new(Mutex::new(self))
    }

    /// What the recorded packets start with.
    pub fn medium(&self) -> Medium {
        self.medium
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Whether packets are still being written (no write error, byte limit not reached).
    pub fn is_capturing(&self) -> bool {
        !self.stopped
    }

    /// Writes out buffered records.
    ///
    /// # Errors
    /// The write failed (also counted, and the capture stopped).
    pub fn flush(&mut self) -> io::Result<()> {
        let r = self.out.flush();
        if r.is_err() {
            self.stats.write_errors += 1;
            self.stopped = true;
        }
        r
    }

    /// Records one packet taken at `ts` (since the Unix epoch). Never fails: a packet that cannot
    /// be written is counted as dropped.
    pub fn write_packet(&mut self, ts: Duration, data: &[u8]) {
        let mut h = [0u8; RECORD_HEADER_LEN];
        let incl = record_header(&mut h, self.precision, ts, data.len());
        self.write_record(&h, &data[..incl]);
    }

    /// Writes a record whose header is already built (see [`record_header`]).
    fn write_record(&mut self, header: &[u8; RECORD_HEADER_LEN], body: &[u8]) {
        let len = (RECORD_HEADER_LEN + body.len()) as u64;
        if self.stopped || self.stats.bytes + len > self.byte_limit {
            self.stopped = true;
            self.stats.dropped += 1;
            return;
        }
        match self
            .out
            .write_all(header)
            .and_then(|()| self.out.write_all(body))
        {
            Ok(()) => {
                self.stats.records += 1;
                self.stats.bytes += len;
            }
            Err(_) => {
                self.stats.write_errors += 1;
                self.stats.dropped += 1;
                self.stopped = true;
            }
        }
    }
}

/// Fills a record header for a packet of `len` bytes taken at `ts`; returns the included length.
fn record_header(
    h: &mut [u8; RECORD_HEADER_LEN],
    precision: Precision,
    ts: Duration,
    len: usize,
) -> usize {
    let frac = match precision {
        Precision::Micros => ts.subsec_micros(),
        Precision::Nanos => ts.subsec_nanos(),
    };
    let incl = len.min(SNAPLEN as usize);
    // Classic pcap has 32-bit seconds (good until 2106).
    h[0..4].copy_from_slice(&(ts.as_secs() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&frac.to_le_bytes());
    h[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(u32::try_from(len).unwrap_or(u32::MAX)).to_le_bytes());
    incl
}

/// A port that records every packet it receives and sends to a pcap file, passing them through
/// unchanged. Wrap only one end of a link (see the module documentation).
#[derive(Debug)]
pub struct Capture<P: Port> {
    inner: P,
    out: SharedPcap,
    /// Packets handed to the inner port in one chunk, with their record headers and bodies staged
    /// in `scratch` (ends in `marks`): only those the port took are written.
    staged: VecDeque<Packet>,
    scratch: Vec<u8>,
    marks: Vec<usize>,
}

impl<P: Port> Capture<P> {
    /// Records `inner`'s packets to `out`.
    ///
    /// # Errors
    /// `out` was made for another medium than `inner`'s (its link type would be wrong).
    pub fn new(inner: P, out: SharedPcap) -> io::Result<Self> {
        let medium = lock(&out).medium();
        if medium != inner.medium() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "capture file is for {medium:?}, port carries {:?}",
                    inner.medium()
                ),
            ));
        }
        Ok(Capture {
            inner,
            out,
            staged: VecDeque::with_capacity(SEND_CHUNK),
            scratch: Vec::new(),
            marks: Vec::with_capacity(SEND_CHUNK),
        })
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped port, mutable.
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// The writer.
    pub fn writer(&self) -> &SharedPcap {
        &self.out
    }

    /// The wrapped port, capture ended (the writer flushes when its last handle goes).
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P: Port> Port for Capture<P> {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        let before = out.len();
        let n = self.inner.recv_burst(pool, out, max)?;
        if n > 0 {
            let ts = wall_clock();
            let mut w = lock(&self.out);
            for p in out.iter().skip(before) {
                w.write_packet(ts, p.data());
            }
        }
        Ok(n)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        if pkts.is_empty() {
            return self.inner.send_burst(pool, pkts);
        }
        let (capturing, precision) = {
            let w = lock(&self.out);
            (w.is_capturing(), w.precision)
        };
        if !capturing {
            let n = self.inner.send_burst(pool, pkts)?;
            lock(&self.out).stats.dropped += n as u64;
            return Ok(n);
        }
        // Which packets the inner port takes is known only afterwards, when they are gone: stage a
        // chunk, copy it aside, and write the records of those sent.
        let mut sent = 0;
        loop {
            let take = pkts.len().min(SEND_CHUNK);
            if take == 0 {
                break;
            }
            self.staged.extend(pkts.drain(..take));
            let ts = wall_clock();
            self.scratch.clear();
            self.marks.clear();
            for p in &self.staged {
                let mut h = [0u8; RECORD_HEADER_LEN];
                let incl = record_header(&mut h, precision, ts, p.len());
                self.scratch.extend_from_slice(&h);
                self.scratch.extend_from_slice(&p.data()[..incl]);
                self.marks.push(self.scratch.len());
            }
            let r = self.inner.send_burst(pool, &mut self.staged);
            // Unsent packets go back to the front, in order, whatever happened.
            while let Some(p) = self.staged.pop_back() {
                pkts.push_front(p);
            }
            let n = r?;
            let mut w = lock(&self.out);
            let mut at = 0;
            for &end in self.marks.iter().take(n) {
                let rec = &self.scratch[at..end];
                let (h, body) = rec.split_at(RECORD_HEADER_LEN);
                let mut header = [0u8; RECORD_HEADER_LEN];
                header.copy_from_slice(h);
                w.write_record(&header, body);
                at = end;
            }
            drop(w);
            sent += n;
            if n < take {
                break;
            }
        }
        Ok(sent)
    }

    fn medium(&self) -> Medium {
        self.inner.medium()
    }

    fn mtu(&self) -> usize {
        self.inner.mtu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A port that yields `rx` on receive and takes at most `room` packets per send.
    #[derive(Debug)]
    struct Fake {
        rx: Vec<Vec<u8>>,
        sent: Vec<Vec<u8>>,
        room: usize,
    }

    impl Port for Fake {
        fn recv_burst(
            &mut self,
            pool: &mut PacketPool,
            out: &mut Vec<Packet>,
            max: usize,
        ) -> io::Result<usize> {
            let n = self.rx.len().min(max);
            for d in self.rx.drain(..n) {
                let mut p = pool.get();
                assert!(p.fill_from(&d));
                out.push(p);
            }
            Ok(n)
        }

        fn send_burst(
            &mut self,
            pool: &mut PacketPool,
            pkts: &mut VecDeque<Packet>,
        ) -> io::Result<usize> {
            let n = pkts.len().min(self.room);
            for p in pkts.drain(..n) {
                self.sent.push(p.data().to_vec());
                pool.put(p);
            }
            self.room -= n;
            Ok(n)
        }

        fn medium(&self) -> Medium {
            Medium::Ip
        }

        fn mtu(&self) -> usize {
            1500
        }
    }

    fn ipv4(id: u16, payload: usize) -> Vec<u8> {
        let len = 20 + payload;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[192, 0, 2, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = (i as u8) ^ (id as u8);
        }
        p
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "iketcp-capture-{}-{name}-{}.pcap",
            std::process::id(),
            wall_clock().as_nanos()
        ))
    }

    fn read_all(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Splits a file into its records: (ts_sec, ts_frac, orig_len, data).
    fn records(file: &[u8]) -> Vec<(u32, u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut at = GLOBAL_HEADER_LEN;
        while at < file.len() {
            let incl = le32(file, at + 8) as usize;
            let body = file[at + 16..at + 16 + incl].to_vec();
            v.push((
                le32(file, at),
                le32(file, at + 4),
                le32(file, at + 12),
                body,
            ));
            at += RECORD_HEADER_LEN + incl;
        }
        assert_eq!(at, file.len());
        v
    }

    #[test]
    fn records_received_and_sent_packets_byte_for_byte() {
        let path = temp_path("rw");
        let w = PcapWriter::create(&path, Medium::Ip, PcapConfig::default())
            .unwrap()
            .shared();
        let rx = vec![ipv4(1, 10), ipv4(2, 100)];
        let tx = vec![ipv4(3, 0), ipv4(4, 1000), ipv4(5, 7)];
        let mut cap = Capture::new(
            Fake {
                rx: rx.clone(),
                sent: Vec::new(),
                room: 2,
            },
            w.clone(),
        )
        .unwrap();
        let mut pool = PacketPool::default();
        let t0 = wall_clock();
        let mut got = Vec::new();
        assert_eq!(cap.recv_burst(&mut pool, &mut got, 16).unwrap(), 2);
        let got: Vec<Vec<u8>> = got.iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(got, rx, "received packets pass through unchanged");

        let mut q: VecDeque<Packet> = tx
            .iter()
            .map(|d| {
                let mut p = pool.get();
                assert!(p.fill_from(d));
                p
            })
            .collect();
        // The port takes two; the third stays queued, unrecorded.
        assert_eq!(cap.send_burst(&mut pool, &mut q).unwrap(), 2);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].data(), &tx[2][..]);
        cap.inner_mut().room = 5;
        assert_eq!(cap.send_burst(&mut pool, &mut q).unwrap(), 1);
        assert!(q.is_empty());
        assert_eq!(cap.inner().sent, tx, "sent packets pass through unchanged");
        let t1 = wall_clock();

        let stats = {
            let mut g = w.lock().unwrap();
            g.flush().unwrap();
            g.stats()
        };
        let file = read_all(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            &file[..GLOBAL_HEADER_LEN],
            &[
                0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101,
                0, 0, 0
            ]
        );
        let recs = records(&file);
        let want: Vec<&Vec<u8>> = rx.iter().chain(tx.iter()).collect();
        assert_eq!(recs.len(), want.len());
        for ((sec, usec, orig, body), w) in recs.iter().zip(want) {
            assert_eq!(body, w);
            assert_eq!(*orig as usize, w.len());
            assert!(*usec < 1_000_000);
            let ts = Duration::new(u64::from(*sec), usec * 1000);
            assert!(ts + Duration::from_micros(1) >= t0 && ts <= t1, "{ts:?}");
        }
        assert_eq!(
            stats,
            CaptureStats {
                records: 5,
                bytes: file.len() as u64,
                dropped: 0,
                write_errors: 0,
            }
        );
    }

    #[test]
    fn nanosecond_header_and_record_layout() {
        let path = temp_path("ns");
        let mut w = PcapWriter::create(
            &path,
            Medium::Ethernet,
            PcapConfig {
                precision: Precision::Nanos,
                ..PcapConfig::default()
            },
        )
        .unwrap();
        let pkt = ipv4(9, 3);
        w.write_packet(Duration::new(0x0102_0304, 123_456_789), &pkt);
        w.flush().unwrap();
        drop(w);
        let file = read_all(&path);
        let _ = std::fs::remove_file(&path);
        let mut want = vec![0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0];
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        want.extend_from_slice(&[4, 3, 2, 1]);
        want.extend_from_slice(&123_456_789u32.to_le_bytes());
        want.extend_from_slice(&[23, 0, 0, 0, 23, 0, 0, 0]);
        want.extend_from_slice(&pkt);
        assert_eq!(file, want);
    }

    #[test]
    fn byte_limit_stops_the_capture_but_not_the_traffic() {
        let path = temp_path("limit");
        // Room for the header and two 16 + 40 byte records, not a third.
        let w = PcapWriter::create(
            &path,
            Medium::Ip,
            PcapConfig {
                byte_limit: (GLOBAL_HEADER_LEN + 2 * 56 + 10) as u64,
                ..PcapConfig::default()
            },
        )
        .unwrap()
        .shared();
        let rx: Vec<Vec<u8>> = (0..5).map(|i| ipv4(i, 20)).collect();
        let mut cap = Capture::new(
            Fake {
                rx: rx.clone(),
                sent: Vec::new(),
                room: 10,
            },
            w.clone(),
        )
        .unwrap();
        let mut pool = PacketPool::default();
        let mut got = Vec::new();
        assert_eq!(cap.recv_burst(&mut pool, &mut got, 16).unwrap(), 5);
        let mut q: VecDeque<Packet> = got.into_iter().collect();
        assert_eq!(cap.send_burst(&mut pool, &mut q).unwrap(), 5);
        assert_eq!(cap.inner().sent, rx);
        let mut g = w.lock().unwrap();
        g.flush().unwrap();
        let s = g.stats();
        assert!(!g.is_capturing());
        drop(g);
        assert_eq!(s.records, 2);
        assert_eq!(s.dropped, 8);
        assert_eq!(s.write_errors, 0);
        let file = read_all(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(file.len(), GLOBAL_HEADER_LEN + 2 * 56);
        let recs = records(&file);
        assert_eq!(recs[0].3, rx[0]);
        assert_eq!(recs[1].3, rx[1]);
    }

    #[test]
    fn write_errors_are_counted_and_stop_the_capture() {
        let path = temp_path("err");
        std::fs::write(&path, b"").unwrap();
        // A read-only handle: every write fails once the buffer is flushed.
        let ro = File::open(&path).unwrap();
        let w = PcapWriter {
            out: BufWriter::with_capacity(8, ro),
            medium: Medium::Ip,
            precision: Precision::Micros,
            byte_limit: DEFAULT_BYTE_LIMIT,
            stopped: false,
            stats: CaptureStats::default(),
        }
        .shared();
        let mut cap = Capture::new(
            Fake {
                rx: vec![ipv4(1, 40), ipv4(2, 40)],
                sent: Vec::new(),
                room: 10,
            },
            w.clone(),
        )
        .unwrap();
        let mut pool = PacketPool::default();
        let mut got = Vec::new();
        assert_eq!(cap.recv_burst(&mut pool, &mut got, 16).unwrap(), 2);
        assert_eq!(got.len(), 2);
        let s = w.lock().unwrap().stats();
        let _ = std::fs::remove_file(&path);
        assert_eq!(s.write_errors, 1);
        assert_eq!(s.records, 0);
        assert_eq!(s.dropped, 2);
        assert!(!w.lock().unwrap().is_capturing());
    }

    #[test]
    fn medium_mismatch_is_refused() {
        let path = temp_path("medium");
        let w = PcapWriter::create(&path, Medium::Ethernet, PcapConfig::default())
            .unwrap()
            .shared();
        let fake = Fake {
            rx: Vec::new(),
            sent: Vec::new(),
            room: 0,
        };
        assert!(Capture::new(fake, w).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
