//! The lab of the gateway tests: `tests/lab/two-gateways.sh` driven from Rust (namespaces, the
//! two `iketcp gateway` processes, commands inside the namespaces, control-socket calls).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "test-only module shared by several test binaries, each using part of it"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One lab at a time: they share the CPU and iperf3 numbers would mean nothing in parallel.
pub static LAB_LOCK: Mutex<()> = Mutex::new(());

pub const BIN: &str = env!("CARGO_BIN_EXE_iketcp");

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/lab/two-gateways.sh")
}

pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is missing (.ci/run installs it)");
}

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub transport_b: &'static str,
    /// Extra environment of the script (WORKERS, KEYLOG_DIR, ESP_PROPOSALS, ...).
    pub env: Vec<(String, String)>,
}

impl Lab {
    pub fn new(name: &str, transport_b: &'static str) -> Lab {
        // Two workers per gateway: multi-queue TUN and forwarding between workers.
        Lab::with_env(name, transport_b, &[("WORKERS", "2")])
    }

    /// A lab whose script also sees `env` (a later entry wins over an earlier one).
    pub fn with_env(name: &str, transport_b: &'static str, env: &[(&str, &str)]) -> Lab {
        let name = format!("{name}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(&name);
        let lab = Lab {
            name,
            dir,
            transport_b,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        lab.script(&["down"]);
        lab
    }

    pub fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("LAB", &self.name)
            .env("LAB_DIR", &self.dir)
            .env("BIN", BIN)
            .env("TRANSPORT_B", self.transport_b)
            .env("DPD_A", "3s")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) {
        let o = self.script(args);
        assert!(
            o.status.success(),
            "two-gateways.sh {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
    }

    pub fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.name)
    }

    pub fn exec(&self, n: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(cmd)
            .output()
            .unwrap()
    }

    pub fn spawn(&self, n: &str, cmd: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn logs(&self) -> String {
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

    /// Gateway `g`'s data-plane counter `name`, summed over its workers (None: no status).
    pub fn worker_counter(&self, g: &str, name: &str) -> Option<u64> {
        let s = self.status(g)?;
        Some(
            s["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| w[name].as_u64().unwrap_or(0))
                .sum(),
        )
    }

    pub fn status(&self, g: &str) -> Option<Value> {
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

    pub fn ctl(&self, g: &str, args: &[&str]) -> String {
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
    pub fn established(&self, timeout: Duration) -> (String, String) {
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

    /// Polls `f` every 200 ms until it gives a value; panics with the logs after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.exec(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", to])
            .status
            .success()
    }

    pub fn ping_within(&self, from: &str, to: &str, timeout: Duration) {
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
    pub fn iperf(&self, secs: u32, streams: u32, during: impl FnOnce()) -> f64 {
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
    pub fn metrics(&self) -> String {
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

    pub fn pid(&self, g: &str) -> i32 {
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

pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
