//! Soak: many tunnels between two `iketcp gateway` processes (`TUNNELS=N` in
//! `tests/lab/two-gateways.sh`: one connection, IKE SA and Child SA per host address pair),
//! Child SA rekeys every 10 s and IKE SA rekeys every minute (with jitter), the TCP connection of
//! a random tunnel reset every 5 s, and UDP traffic through every tunnel throughout. Every
//! sample interval it prints both gateways' RSS and descriptors, the SA counts and the loss; it
//! fails if memory or descriptors grow without bound, the SAs pile up, or a tunnel does not
//! recover.
//!
//! CI runs the short version (100 tunnels, 2 minutes). The long one is `tests/soak/soak.sh`
//! (1,000 tunnels, an hour, release build). Environment: SOAK_TUNNELS, SOAK_SECS,
//! SOAK_SAMPLE_SECS.
//!
//! Needs root and `/dev/net/tun`; skips only without them, and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LAB_LOCK, Lab, unavailable};
use serde_json::Value;

const PORT: u16 = 7777;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The host addresses of tunnel `i` (as the lab script's `tunnel_a` / `tunnel_b`).
fn tunnel_a(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + (i / 250) as u8)
}
fn tunnel_b(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 2 + (i % 250) as u8)
}

/// Runs `f` on a thread that entered namespace `ns` (only that thread moves).
fn in_ns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: `file` is an open namespace file for the call; CLONE_NEWNET moves only this
        // thread, which ends when `f` returns.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0);
        f()
    })
}

fn footprint(lab: &Lab, g: &str) -> (u64, usize) {
    let pid = lab.pid(g);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// Per connection name: whether its IKE SA is established with an installed Child SA, its
/// local TCP port, and how many Child SA entries it lists (any state).
fn tunnels(s: &Value) -> Vec<(String, bool, Option<u16>, usize)> {
    let mut v = Vec::new();
    for c in s["connections"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("").to_owned();
        let (mut up, mut port, mut children) = (false, None, 0);
        for sa in c["ike_sas"].as_array().into_iter().flatten() {
            let ch = sa["child_sas"].as_array().map_or(0, Vec::len);
            children += ch;
            let installed = sa["child_sas"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["state"] == "INSTALLED");
            if sa["state"] == "ESTABLISHED" && installed {
                up = true;
                port = sa["local"]
                    .as_str()
                    .and_then(|l| l.rsplit(':').next()?.parse().ok());
            }
        }
        v.push((name, up, port, children));
    }
    v
}

struct Traffic {
    sent: Arc<Vec<AtomicU64>>,
    got: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// One datagram per tunnel per second from hostA's address to hostB's, spread over the second,
/// counted at both ends.
fn traffic(lab: &Lab, n: usize) -> Traffic {
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let got: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    {
        let (got, stop) = (got.clone(), stop.clone());
        threads.push(in_ns(lab.ns("hostB"), move || {
            let sock = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(len) = sock.recv(&mut buf)
                    && len >= 4
                {
                    let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if let Some(c) = got.get(i) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    {
        let (sent, stop) = (sent.clone(), stop.clone());
        threads.push(in_ns(lab.ns("hostA"), move || {
            let socks: Vec<UdpSocket> = (0..n.div_ceil(250))
                .map(|k| UdpSocket::bind(SocketAddrV4::new(tunnel_a(k * 250), 0)).unwrap())
                .collect();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                for i in 0..n {
                    // Spread over the second: a burst of 1,000 would overflow the TUN device's
                    // queue (500 packets) before the worker drains it, and measure that instead.
                    let due = Duration::from_secs(1) * i as u32 / n as u32;
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let mut p = (i as u32).to_be_bytes().to_vec();
                    p.extend_from_slice(&seq.to_be_bytes());
                    if socks[i / 250]
                        .send_to(&p, SocketAddrV4::new(tunnel_b(i), PORT))
                        .is_ok()
                    {
                        sent[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
                seq = seq.wrapping_add(1);
                std::thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
            }
        }));
    }
    Traffic {
        sent,
        got,
        stop,
        threads,
    }
}

fn total(v: &[AtomicU64]) -> u64 {
    v.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

struct Sample {
    at_s: u64,
    rss_a: u64,
    rss_b: u64,
    fds_a: usize,
    fds_b: usize,
    up: usize,
    child_entries: usize,
}

#[test]
fn soak_many_tunnels_with_rekeys_resets_and_traffic() {
    let _g = LAB_LOCK.lock();
    if let Some(why) = unavailable() {
        println!("SKIP soak: {why}");
        return;
    }
    let n = env_or("SOAK_TUNNELS", 100).clamp(1, 1000) as usize;
    let secs = env_or("SOAK_SECS", 120);
    let every = Duration::from_secs(env_or("SOAK_SAMPLE_SECS", 20));
    let tunnels_env = n.to_string();
    let lab = Lab::with_env(
        "its",
        "kernel",
        &[
            ("WORKERS", "1"),
            ("TUNNELS", tunnels_env.as_str()),
            ("CHILD_REKEY_TIME", "10s"),
            ("REKEY_TIME", "60s"),
            ("DPD_A", "10s"),
        ],
    );
    lab.ok(&["up"]);
    let t_up = Instant::now();
    let all_up = |lab: &Lab, timeout: Duration| {
        lab.wait_for(&format!("{n} tunnels up"), timeout, || {
            let s = lab.status("gwA")?;
            let t = tunnels(&s);
            (t.len() == n && t.iter().all(|x| x.1)).then_some(())
        });
    };
    all_up(&lab, Duration::from_secs(60 + n as u64 / 10));
    println!("[soak] {n} tunnels up in {:?}", t_up.elapsed());

    let tr = traffic(&lab, n);
    let t0 = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut resets = 0;
    let mut next_reset = t0 + Duration::from_secs(5);
    let mut next_sample = t0 + every;
    let mut samples: Vec<Sample> = Vec::new();
    let (mut last_sent, mut last_got) = (0, 0);
    while t0.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if now >= next_reset {
            next_reset += Duration::from_secs(5);
            if let Some(s) = lab.status("gwA") {
                let t = tunnels(&s);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if let Some((_, _, Some(port), _)) = t.get(rng as usize % t.len().max(1)) {
                    let sport = format!(":{port}");
                    let o = lab.exec(
                        "gwA",
                        &["ss", "-K", "src", "192.0.2.1", "sport", "=", &sport],
                    );
                    assert!(o.status.success());
                    resets += 1;
                }
            }
        }
        if now >= next_sample {
            next_sample += every;
            let s = lab.status("gwA").unwrap_or(Value::Null);
            let t = tunnels(&s);
            let (rss_a, fds_a) = footprint(&lab, "gwA");
            let (rss_b, fds_b) = footprint(&lab, "gwB");
            let (sent, got) = (total(&tr.sent), total(&tr.got));
            let sample = Sample {
                at_s: t0.elapsed().as_secs(),
                rss_a,
                rss_b,
                fds_a,
                fds_b,
                up: t.iter().filter(|x| x.1).count(),
                child_entries: t.iter().map(|x| x.3).sum(),
            };
            let (ds, dg) = (sent - last_sent, got - last_got);
            (last_sent, last_got) = (sent, got);
            println!(
                "[soak] t={}s gwA rss {} KiB fds {}, gwB rss {} KiB fds {}; {} of {n} tunnels up, {} Child SA entries; datagrams {} sent, {} received ({:.2} % lost) in the interval; {resets} resets so far",
                sample.at_s,
                sample.rss_a,
                sample.fds_a,
                sample.rss_b,
                sample.fds_b,
                sample.up,
                sample.child_entries,
                ds,
                dg,
                if ds == 0 {
                    0.0
                } else {
                    100.0 * (ds.saturating_sub(dg)) as f64 / ds as f64
                }
            );
            samples.push(sample);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every tunnel comes back and carries traffic again.
    all_up(&lab, Duration::from_secs(30));
    let before: Vec<u64> = tr.got.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    lab.wait_for(
        "every tunnel carries traffic at the end",
        Duration::from_secs(30),
        || {
            tr.got
                .iter()
                .zip(&before)
                .all(|(c, b)| c.load(Ordering::Relaxed) > *b)
                .then_some(())
        },
    );
    tr.stop.store(true, Ordering::Relaxed);
    for t in tr.threads {
        t.join().unwrap();
    }
    let log = std::fs::read_to_string(lab.dir.join("gwA.log")).unwrap_or_default();
    let (child_rekeys, ike_rekeys) = (
        log.matches("Child SA rekeyed").count(),
        log.matches("IKE SA rekeyed").count(),
    );
    let (sent, got) = (total(&tr.sent), total(&tr.got));
    println!(
        "[soak] {secs} s, {n} tunnels: {child_rekeys} Child SA rekeys, {ike_rekeys} IKE SA rekeys, {resets} resets; {sent} datagrams sent, {got} received ({:.2} % lost)",
        100.0 * sent.saturating_sub(got) as f64 / sent.max(1) as f64
    );
    assert!(child_rekeys >= n, "Child SAs were rekeyed: {child_rekeys}");
    assert!(resets >= 1);

    // Nothing grows without bound: after the first interval (warm-up), memory stays within a
    // fixed allowance of its first sample, descriptors within a few, and the Child SA entries
    // (live plus not yet reaped) within a small multiple of the tunnels.
    if let Some(first) = samples.first() {
        for s in &samples[1..] {
            for (what, now, base) in [("gwA", s.rss_a, first.rss_a), ("gwB", s.rss_b, first.rss_b)]
            {
                assert!(
                    now <= base + base / 2 + 16 * 1024,
                    "{what} RSS {now} KiB at {}s, {base} KiB at {}s",
                    s.at_s,
                    first.at_s
                );
            }
            assert!(
                s.fds_a <= first.fds_a + 16 && s.fds_b <= first.fds_b + 16,
                "descriptors grew: {} / {} from {} / {}",
                s.fds_a,
                s.fds_b,
                first.fds_a,
                first.fds_b
            );
            assert!(
                s.child_entries <= 4 * n + 64,
                "{} Child SA entries for {n} tunnels",
                s.child_entries
            );
        }
    }
}
