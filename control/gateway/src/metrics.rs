//! Prometheus text exposition (format 0.0.4) on `metrics = "ADDR:PORT"`: the daemon's own
//! counters per connection, the handshake latency histogram, per-Child-SA traffic and every
//! data-plane counter per worker. A small HTTP/1.0 server thread answers `GET /metrics` by
//! asking the daemon's loop for the text.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

/// Upper bounds (seconds) of the handshake latency buckets.
pub const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; HANDSHAKE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, secs: f64) {
        for (c, b) in self.counts.iter_mut().zip(HANDSHAKE_BUCKETS) {
            if secs <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Builds an exposition: each family's HELP and TYPE once, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    seen: BTreeSet<String>,
}

impl Exposition {
    /// Declares family `name` (once) and adds one sample with `labels`.
    pub fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        if self.seen.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.out, " {v}");
    }

    /// Adds histogram `name` with `labels`.
    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        if self.seen.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} histogram");
        }
        let base: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\",", label(v)))
            .collect();
        let base = base.concat();
        for (c, b) in h.counts.iter().zip(HANDSHAKE_BUCKETS) {
            let _ = writeln!(self.out, "{name}_bucket{{{base}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(self.out, "{name}_bucket{{{base}le=\"+Inf\"}} {}", h.count);
        let trimmed = base.trim_end_matches(',');
        let braces = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{{{trimmed}}}")
        };
        let _ = writeln!(self.out, "{name}_sum{braces} {}", h.sum);
        let _ = writeln!(self.out, "{name}_count{braces} {}", h.count);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A scrape waiting for the daemon's loop to render the text.
#[derive(Debug)]
pub struct Scrape {
    /// Where the text goes.
    pub reply: Sender<String>,
}

/// The running metrics listener; dropping it stops the thread.
#[derive(Debug)]
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `addr`; scrapes arrive on the returned receiver.
///
/// # Errors
/// Binding fails.
pub fn start(addr: SocketAddr) -> io::Result<(MetricsServer, Receiver<Scrape>)> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = bounded(4);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("iketcp-metrics".into())
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &tx) {
                            tracing::debug!(error = %e, "metrics client");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok((
        MetricsServer {
            stop,
            thread: Some(thread),
            addr,
        },
        rx,
    ))
}

fn answer(mut stream: TcpStream, scrapes: &Sender<Scrape>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // The request line and headers; the body (there is none for GET) is not read.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?")
    {
        let (tx, rx) = bounded(1);
        let text = scrapes
            .send_timeout(Scrape { reply: tx }, Duration::from_secs(2))
            .ok()
            .and_then(|()| rx.recv_timeout(Duration::from_secs(5)).ok());
        match text {
            Some(t) => ("200 OK", t),
            None => ("503 Service Unavailable", "busy\n".to_owned()),
        }
    } else {
        ("404 Not Found", "try /metrics\n".to_owned())
    };
    let msg = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail by panicking")]
    use super::*;

    #[test]
    fn exposition_declares_each_family_once_and_escapes_labels() {
        let mut e = Exposition::default();
        e.sample("x_total", "counter", "X.", &[("connection", "a\"b")], 1.0);
        e.sample("x_total", "counter", "X.", &[("connection", "c")], 2.0);
        let mut h = Histogram::default();
        h.observe(0.02);
        h.observe(3.0);
        e.histogram("lat_seconds", "Latency.", &[], &h);
        let t = e.finish();
        assert_eq!(t.matches("# TYPE x_total counter").count(), 1);
        assert!(t.contains("x_total{connection=\"a\\\"b\"} 1"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"0.01\"} 0"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"0.025\"} 1"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"+Inf\"} 2"), "{t}");
        assert!(t.contains("lat_seconds_count 2"), "{t}");
    }

    #[test]
    fn http_scrape_is_answered_from_the_loop() {
        let (server, scrapes) = start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.addr();
        let loop_ = std::thread::spawn(move || {
            let s = scrapes.recv_timeout(Duration::from_secs(5)).unwrap();
            s.reply.send("up 1\n".into()).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.0 200 OK"), "{got}");
        assert!(got.ends_with("\r\n\r\nup 1\n"), "{got}");
        loop_.join().unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.0 404"), "{got}");
    }
}
