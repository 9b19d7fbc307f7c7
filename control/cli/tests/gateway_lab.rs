//! Lab: two `iketcp gateway` processes (the built binary) between two hosts, each in its own
//! network namespace (`tests/lab/two-gateways.sh` builds the topology): ping both ways, iperf3
//! through the tunnel, the outer TCP connection killed with `ss -K` (the Originator reconnects,
//! the IKE SA keeps its SPIs, iperf3 keeps going), `kill -9` and a restart of the responder (the
//! tunnel comes back by itself), a reload that changes one connection, metrics over HTTP, and
//! SIGTERM (the peer logs the Delete; routes and device are gone). Once with gwB on kernel TCP,
//! once on smoltcp over a TAP device.
//!
//! Needs root, `/dev/net/tun`, `ip`, `ss`, `ping` and `iperf3` (`.ci/run` installs them); skips
//! only without root or a TUN device, and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One lab at a time: they share the CPU and iperf3 numbers would mean nothing in parallel.
static LAB_LOCK: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_iketcp");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/lab/two-gateways.sh")
}

fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is missing (.ci/run installs it)");
}

struct Lab {
    name: String,
    dir: PathBuf,
    transport_b: &'static str,
}

impl Lab {
    fn new(name: &str, transport_b: &'static str) -> Lab {
        let name = format!("{name}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(&name);
        let lab = Lab {
            name,
            dir,
            transport_b,
        };
        lab.script(&["down"]);
        lab
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("LAB", &self.name)
            .env("LAB_DIR", &self.dir)
            .env("BIN", BIN)
            .env("TRANSPORT_B", self.transport_b)
            .env("DPD_A", "3s")
            // Two workers per gateway: multi-queue TUN and forwarding between workers.
            .env("WORKERS", "2")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let o = self.script(args);
        assert!(
            o.status.success(),
            "two-gateways.sh {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.name)
    }

    fn exec(&self, n: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(cmd)
            .output()
            .unwrap()
    }

    fn spawn(&self, n: &str, cmd: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for g in ["gwA", "gwB"] {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{g}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s += &format!("--- {g}.log (last lines)\n");
            for l in tail.into_iter().rev() {
                s += l;
                s += "\n";
            }
        }
        s
    }

    fn status(&self, g: &str) -> Option<Value> {
        let o = Command::new(BIN)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join(format!("{g}.sock")))
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    fn ctl(&self, g: &str, args: &[&str]) -> String {
        let o = Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(self.dir.join(format!("{g}.sock")))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "iketcp {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The SPIs of gwA's established IKE SA with an installed Child SA, once there is one.
    fn established(&self, timeout: Duration) -> (String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status("gwA") {
                for c in s["connections"].as_array().into_iter().flatten() {
                    for sa in c["ike_sas"].as_array().into_iter().flatten() {
                        let installed = sa["child_sas"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|ch| ch["state"] == "INSTALLED");
                        if sa["state"] == "ESTABLISHED" && installed {
                            return (
                                sa["spi_i"].as_str().unwrap().to_owned(),
                                sa["spi_r"].as_str().unwrap().to_owned(),
                            );
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no established tunnel after {timeout:?}\n{:#?}\n{}",
                self.status("gwA"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        self.exec(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", to])
            .status
            .success()
    }

    fn ping_within(&self, from: &str, to: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .exec(from, &["ping", "-c", "1", "-W", "1", to])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{from} cannot ping {to}\n{}",
                self.logs()
            );
        }
    }

    /// iperf3 from hostA to hostB for `secs`; returns the receiver's bit/s.
    fn iperf(&self, secs: u32, streams: u32, during: impl FnOnce()) -> f64 {
        let mut server = self.spawn("hostB", &["iperf3", "-s", "-1"]);
        std::thread::sleep(Duration::from_millis(500));
        let secs = secs.to_string();
        let streams = streams.to_string();
        let client = self.spawn(
            "hostA",
            &[
                "iperf3",
                "-c",
                "203.0.113.10",
                "-t",
                &secs,
                "-P",
                &streams,
                "-J",
            ],
        );
        during();
        let out = client.wait_with_output().unwrap();
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            out.status.success(),
            "iperf3: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let j: Value = serde_json::from_slice(&out.stdout).unwrap();
        j["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap()
    }

    /// GET /metrics from inside gwA's namespace.
    fn metrics(&self) -> String {
        let ns = format!("/run/netns/{}", self.ns("gwA"));
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: `f` is an open namespace file for the duration of the call; CLONE_NEWNET
            // moves only this thread, which ends right after the scrape.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let mut c = TcpStream::connect("127.0.0.1:9469").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        })
        .join()
        .unwrap()
    }

    fn pid(&self, g: &str) -> i32 {
        std::fs::read_to_string(self.dir.join(format!("{g}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.script(&["down"]);
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn two_gateways(name: &str, transport_b: &'static str) {
    if let Some(why) = unavailable() {
        println!("SKIP gateway lab ({transport_b}): {why}");
        return;
    }
    for t in ["ip", "ss", "ping", "iperf3"] {
        need(t);
    }
    let _one = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(name, transport_b);
    let t0 = Instant::now();
    lab.ok(&["up"]);
    let spis = lab.established(Duration::from_secs(20));

    println!("[lab {:?}] ping", t0.elapsed());
    // Ping both ways through the tunnel.
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(10));
    assert!(lab.ping("hostA", "203.0.113.10"), "{}", lab.logs());
    assert!(lab.ping("hostB", "198.51.100.10"), "{}", lab.logs());
    let text = lab.ctl("gwA", &["status"]);
    assert!(
        text.contains("ESTABLISHED") && text.contains("203.0.113.0/24"),
        "{text}"
    );

    println!("[lab {:?}] iperf3", t0.elapsed());
    // iperf3 for 5 s.
    let bps = lab.iperf(5, 1, || {});
    println!(
        "iperf3 through the tunnel (gwB on {transport_b}): {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 0.0);

    println!("[lab {:?}] ss -K", t0.elapsed());
    // The outer TCP connection killed under traffic: the Originator reconnects, same IKE SA.
    let bps = lab.iperf(6, 1, || {
        std::thread::sleep(Duration::from_secs(2));
        let o = lab.exec(
            "gwA",
            &["ss", "-K", "-t", "dst", "192.0.2.2", "dport", "=", "4500"],
        );
        assert!(
            o.status.success(),
            "ss -K: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
    assert!(bps > 0.0);
    assert_eq!(
        lab.established(Duration::from_secs(10)),
        spis,
        "same IKE SA after the reconnect"
    );
    let s = lab.status("gwA").unwrap();
    assert!(s.to_string().contains("\"tcp_role\":\"originator\""));
    assert!(lab.ping("hostA", "203.0.113.10"), "{}", lab.logs());

    println!("[lab {:?}] kill -9 gwB", t0.elapsed());
    // kill -9 of the responder and a restart: the tunnel comes back by itself.
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(lab.pid("gwB"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    lab.ok(&["start", "gwB"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = lab.established(Duration::from_secs(60));
        if now != spis {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old IKE SA never went\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(20));

    println!("[lab {:?}] reload", t0.elapsed());
    // A reload that changes one connection: it is replaced and comes back with new SPIs.
    let before = lab.established(Duration::from_secs(5));
    let cfg = lab.dir.join("gwA.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("dpd_delay = \"3s\"", "dpd_delay = \"4s\""),
    )
    .unwrap();
    let out = lab.ctl("gwA", &["reload"]);
    assert!(out.contains("replaced [\"site-b\"]"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.established(Duration::from_secs(30)) == before {
        assert!(Instant::now() < deadline, "not replaced\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(10));

    println!("[lab {:?}] per-SA operations", t0.elapsed());
    let out = lab.ctl("gwA", &["liveness", "site-b"]);
    assert!(out.contains("1 liveness check(s) sent"), "{out}");
    let children = |lab: &Lab| -> Vec<String> {
        let s = lab.status("gwA").unwrap();
        s["connections"][0]["ike_sas"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|sa| sa["child_sas"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["state"] == "INSTALLED")
            .map(|c| c["spi_in"].as_str().unwrap().to_owned())
            .collect()
    };
    let old = children(&lab);
    assert_eq!(old.len(), 1, "{old:?}");
    let out = lab.ctl("gwA", &["rekey", "site-b", "--spi", &old[0]]);
    assert!(out.contains("1 Child SA rekey(s) started"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = children(&lab);
        if now.len() == 1 && now != old {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rekey of {old:?}: {now:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(10));
    println!("[lab {:?}] metrics", t0.elapsed());
    // Metrics over HTTP.
    let m = lab.metrics();
    assert!(m.starts_with("HTTP/1.0 200 OK"), "{m}");
    assert!(
        metric(&m, "iketcp_ike_sas{connection=\"site-b\"}") >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "iketcp_worker_plain_in_total") > 0.0, "{m}");
    assert!(metric(&m, "iketcp_handshake_seconds_count") >= 1.0, "{m}");
    assert!(m.contains("event=\"tcp_down\""), "{m}");
    assert!(
        metric(&m, "iketcp_reloads_total{result=\"ok\"}") == 1.0,
        "{m}"
    );

    println!("[lab {:?}] SIGTERM", t0.elapsed());
    // SIGTERM: Deletes go out, routes and device go, exit 0 within 2 s.
    let pid = lab.pid("gwA");
    let t_term = Instant::now();
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    loop {
        // Gone, or a zombie nobody reaps (its parent, the script, has exited).
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        if !alive {
            break;
        }
        assert!(
            t_term.elapsed() < Duration::from_secs(2),
            "gwA did not exit within 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log_a = std::fs::read_to_string(lab.dir.join("gwA.log")).unwrap();
    assert!(log_a.contains("stopped"), "{log_a}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log_b = std::fs::read_to_string(lab.dir.join("gwB.log")).unwrap();
        if log_b.contains("IKE SA deleted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gwB never saw the Delete\n{log_b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = lab.exec("gwA", &["ip", "link", "show", "iketcp0"]);
    assert!(!o.status.success(), "TUN device left behind");
    let o = lab.exec("gwA", &["ip", "route", "show", "203.0.113.0/24"]);
    assert!(o.stdout.is_empty(), "route left behind");
}

#[test]
fn two_gateways_kernel_tcp() {
    two_gateways("itk", "kernel");
}

#[test]
fn two_gateways_responder_on_smoltcp() {
    two_gateways("its", "smoltcp");
}
