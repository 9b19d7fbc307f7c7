//! The libreswan interop lab: `tests/interop/libreswan-lab.sh` (namespaces, pluto with the
//! espintcp shim, the `iketcp gateway` binary) driven from Rust, and the checks the scenarios
//! share: both peers derived the same ESP keys, and ESP made with pluto's keys crosses iketcp
//! and comes back.

pub mod esp;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use esp::PlutoSa;

pub use crate::common::{BIN, LAB_LOCK, unavailable};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/libreswan-lab.sh")
}

/// Panics unless libreswan and a C compiler are installed: CI installs them, so their absence
/// is a failure there, never a silent pass.
pub fn need_tools() {
    for tool in ["ipsec", "cc", "ss", "ip"] {
        crate::common::need(tool);
    }
    assert!(
        Path::new("/usr/libexec/ipsec/pluto").exists(),
        "/usr/libexec/ipsec/pluto is missing (.ci/run installs libreswan)"
    );
}

/// Which side starts the IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    Iketcp,
    Pluto,
}

/// One lab: two namespaces, pluto and the gateway, configured through the script's environment.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Lab {
    pub fn new(name: &str, initiator: Initiator, env: &[(&str, &str)]) -> Lab {
        let name = format!("{name}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(&name);
        let mut e: BTreeMap<String, String> = BTreeMap::new();
        let (gw, pl) = match initiator {
            Initiator::Iketcp => ("initiate", "add"),
            Initiator::Pluto => ("listen", "add"),
        };
        e.insert("GW_START".into(), gw.into());
        e.insert("PLUTO_AUTO".into(), pl.into());
        for (k, v) in env {
            e.insert((*k).into(), (*v).into());
        }
        let lab = Lab { name, dir, env: e };
        lab.ok(&["up"]);
        lab
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("LAB", &self.name)
            .env("LAB_DIR", &self.dir)
            .env("BIN", BIN)
            .envs(&self.env)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.script(args);
        assert!(
            o.status.success(),
            "libreswan-lab.sh {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ipsec whack` against this lab's pluto; its output.
    pub fn whack(&self, args: &[&str]) -> String {
        let mut a = vec!["whack"];
        a.extend_from_slice(args);
        let o = self.script(&a);
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
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

    fn tail(path: &Path, n: usize, filter: impl Fn(&str) -> bool) -> String {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| filter(l)).collect();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n") + "\n"
    }

    /// The end of each log (pluto's without its debug lines), for a failure's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        s += "--- gw.log\n";
        s += &Self::tail(&self.dir.join("gw.log"), 40, |_| true);
        s += "--- pluto.log (no debug lines)\n";
        s += &Self::tail(&self.dir.join("pluto.log"), 60, |l| !l.contains(": | "));
        s += "--- pluto.out\n";
        s += &Self::tail(&self.dir.join("pluto.out"), 20, |_| true);
        s += "--- shim.log\n";
        s += &Self::tail(&self.dir.join("shim.log"), 30, |l| !l.contains("rx-esp"));
        s
    }

    pub fn pluto_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pluto.log")).unwrap_or_default()
    }

    pub fn shim_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shim.log")).unwrap_or_default()
    }

    pub fn gw_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gw.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Option<Value> {
        let o = Command::new(BIN)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join("gw.sock"))
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// An `iketcp` control command against the gateway; its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let o = Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(self.dir.join("gw.sock"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "iketcp {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Polls `f` every 100 ms until it gives a value; panics with the logs after `timeout`.
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\nstatus: {:#}\n{}",
                self.status().unwrap_or(Value::Null),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gateway's established IKE SA and its installed Child SA.
    pub fn tunnel(&self) -> Option<Tunnel> {
        let s = self.status()?;
        let c = s["connections"].as_array()?.first()?.clone();
        for sa in c["ike_sas"].as_array()? {
            if sa["state"] != "ESTABLISHED" {
                continue;
            }
            let children: Vec<&Value> = sa["child_sas"]
                .as_array()?
                .iter()
                .filter(|ch| ch["state"] == "INSTALLED")
                .collect();
            let ch = children.last()?;
            let spi = |v: &Value| u32::from_str_radix(v.as_str().unwrap_or(""), 16).ok();
            return Some(Tunnel {
                spi_i: sa["spi_i"].as_str()?.to_owned(),
                spi_r: sa["spi_r"].as_str()?.to_owned(),
                local: sa["local"].as_str().unwrap_or("").to_owned(),
                spi_in: spi(&ch["spi_in"])?,
                spi_out: spi(&ch["spi_out"])?,
                esn: ch["esn"].as_bool()?,
                installed: children.len(),
            });
        }
        None
    }

    /// The suite of the gateway's established IKE SA ("AesGcm16_256/HmacSha256/Curve25519").
    pub fn ike_suite(&self) -> String {
        let s = self.status().unwrap_or(Value::Null);
        s["connections"][0]["ike_sas"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|sa| sa["state"] == "ESTABLISHED")
            .and_then(|sa| sa["suite"].as_str())
            .unwrap_or_else(|| panic!("no established IKE SA: {s:#}"))
            .to_owned()
    }

    pub fn wait_tunnel(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Tunnel) -> bool,
    ) -> Tunnel {
        self.wait(what, timeout, || self.tunnel().filter(|t| ok(t)))
    }

    /// The ESP SAs pluto installed (the shim's `sa-add` lines), by SPI; the newest wins.
    pub fn pluto_sas(&self) -> BTreeMap<u32, PlutoSa> {
        let mut m = BTreeMap::new();
        for l in self.shim_log().lines() {
            if !l.contains(" sa-add ") {
                continue;
            }
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(k))
                    .unwrap_or("")
                    .to_owned()
            };
            let spi = u32::from_str_radix(&field("spi="), 16).unwrap();
            m.insert(
                spi,
                PlutoSa {
                    spi,
                    src: field("src="),
                    dst: field("dst="),
                    esn: field("esn=") == "1",
                    key: esp::unhex(&field("key=")),
                },
            );
        }
        m
    }

    /// SPIs pluto deleted (the shim's `sa-del` lines).
    pub fn pluto_deleted(&self) -> Vec<u32> {
        self.shim_log()
            .lines()
            .filter_map(|l| l.split(" sa-del spi=").nth(1))
            .filter_map(|r| u32::from_str_radix(r.get(..8)?, 16).ok())
            .collect()
    }

    /// The ESP keys iketcp wrote to its Wireshark key log (`keys/esp_sa`), by SPI.
    pub fn iketcp_esp_keys(&self) -> BTreeMap<u32, Vec<u8>> {
        let text = std::fs::read_to_string(self.dir.join("keys/esp_sa")).unwrap_or_default();
        let mut m = BTreeMap::new();
        for l in text.lines() {
            let f: Vec<&str> = l.split(',').map(|f| f.trim_matches('"')).collect();
            if f.len() < 6 {
                continue;
            }
            let spi = u32::from_str_radix(f[3].trim_start_matches("0x"), 16).unwrap();
            m.insert(spi, esp::unhex(f[5].trim_start_matches("0x")));
        }
        m
    }

    /// Both peers hold the Child SA's two ESP SAs with the same keys, in the right directions.
    pub fn check_keys(&self, t: &Tunnel) -> (PlutoSa, PlutoSa) {
        let (sas, keys) = self.wait(
            "pluto's and iketcp's keys of the Child SA",
            Duration::from_secs(10),
            || {
                let sas = self.pluto_sas();
                let keys = self.iketcp_esp_keys();
                let all = [t.spi_in, t.spi_out]
                    .iter()
                    .all(|s| sas.contains_key(s) && keys.contains_key(s));
                all.then_some((sas, keys))
            },
        );
        let (to_gw, to_pluto) = (&sas[&t.spi_in], &sas[&t.spi_out]);
        assert_eq!(
            (to_gw.src.as_str(), to_gw.dst.as_str()),
            ("192.0.2.2", "192.0.2.1")
        );
        assert_eq!(
            (to_pluto.src.as_str(), to_pluto.dst.as_str()),
            ("192.0.2.1", "192.0.2.2")
        );
        assert_eq!(
            to_gw.key, keys[&t.spi_in],
            "keys of SPI {:08x} differ",
            t.spi_in
        );
        assert_eq!(
            to_pluto.key, keys[&t.spi_out],
            "keys of SPI {:08x} differ",
            t.spi_out
        );
        assert_eq!((to_gw.esn, to_pluto.esn), (t.esn, t.esn), "ESN agreed");
        (to_gw.clone(), to_pluto.clone())
    }

    /// ESP sealed with pluto's outbound key goes into pluto's live TCP connection (as its
    /// kernel would send it); iketcp must open it and hand the ping to its kernel, whose reply
    /// must come back sealed for pluto's inbound SA. Checks the keys first.
    pub fn esp_round_trip(&self, t: &Tunnel, seq: u16) {
        let (to_gw, to_pluto) = self.check_keys(t);
        let before = self.shim_log().len();
        let ping = esp::echo_request([203, 0, 113, 10], [198, 51, 100, 1], 0x4954, seq);
        let pkt = esp::seal(&to_gw, u64::from(seq), &ping);
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.dir.join("inject.fifo"))
            .expect("pluto's shim holds the FIFO open");
        fifo.write_all(format!("{}\n", esp::hex(&pkt)).as_bytes())
            .unwrap();
        self.wait(
            &format!("the echo reply {seq} in ESP of SPI {:08x}", t.spi_out),
            Duration::from_secs(10),
            || {
                let log = self.shim_log();
                log.get(before..)?.lines().find_map(|l| {
                    let h = l.split(" rx-esp ").nth(1)?.split(' ').nth(1)?;
                    let inner = esp::open(&to_pluto, &esp::unhex(h))?;
                    let r = esp::echo_reply(&inner)?;
                    (r == ([198, 51, 100, 1], [203, 0, 113, 10], 0x4954, seq)).then_some(())
                })
            },
        );
    }

    /// pluto's newest IKE SA serial (from its log: established or made by a rekey).
    pub fn pluto_ike_serial(&self) -> u32 {
        self.pluto_log()
            .lines()
            .filter(|l| l.contains("established IKE SA") || l.contains("rekeyed IKE SA"))
            .filter_map(|l| {
                let r = l.split(" #").nth(1)?;
                r.split(':').next()?.parse().ok()
            })
            .next_back()
            .expect("pluto logged an established IKE SA")
    }

    /// Counts of the shim's log lines of a kind ("rx-ike", "tx-ike", ...).
    pub fn shim_count(&self, what: &str) -> usize {
        let pat = format!(" {what} ");
        self.shim_log().lines().filter(|l| l.contains(&pat)).count()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.script(&["down"]);
    }
}

/// The gateway's view of the tunnel.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub spi_i: String,
    pub spi_r: String,
    /// The gateway's end of the TCP connection (address:port).
    pub local: String,
    pub spi_in: u32,
    pub spi_out: u32,
    pub esn: bool,
    /// Installed Child SAs of the IKE SA.
    pub installed: usize,
}
