//! Lab capture: two `iketcp gateway` processes (`tests/lab/two-gateways.sh`, one worker each,
//! kernel TCP) with a key log, gwA's outer link recorded by tcpdump from before the gateways
//! start until after they stop. Pings both ways, a Child SA rekey and an IKE SA rekey, pings
//! again, SIGTERM to both (Deletes sent). tshark with the RFC 9329 plugin
//! (`tools/wireshark/iketcp.lua`) and gwA's key log must then decrypt every IKE message after
//! IKE_SA_INIT with a correct ICV and every ESP packet with a good ICV, and count as many of
//! each as the capture holds.
//!
//! Needs root, `/dev/net/tun`, `ip`, `ping`, `tcpdump` and `tshark` (`.ci/run` installs them);
//! skips only without root or a TUN device, and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Lab, need, unavailable};
use iketcp_tests::{capture, tshark};

/// The installed Child SAs' inbound SPIs of gwA.
fn children(lab: &Lab) -> Vec<String> {
    let s = lab.status("gwA").unwrap();
    s["connections"][0]["ike_sas"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|sa| sa["child_sas"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["state"] == "INSTALLED")
        .map(|c| c["spi_in"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits for a process (not our child) to exit or to be a zombie nobody reaps.
fn wait_gone(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        if !alive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pid} did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gateway_capture_decrypts_in_tshark() {
    if let Some(why) = unavailable() {
        println!("SKIP gateway capture: {why}");
        return;
    }
    for t in ["ip", "ping", "tcpdump"] {
        need(t);
    }
    tshark::require();
    // Its own namespace names ("itw…"), so it runs beside gateway_lab.rs's labs.
    let mut lab = Lab::with_env(
        "itw",
        "kernel",
        &[
            ("WORKERS", "1"),
            // tshark 4.0 builds the GCM AAD without the ESN high half: no ESN, whatever the
            // default.
            ("ESP_PROPOSALS", "aes256gcm16-noesn"),
        ],
    );
    let keys = lab.dir.join("keys");
    lab.env
        .push(("KEYLOG_DIR".into(), keys.to_string_lossy().into_owned()));
    let t0 = Instant::now();
    lab.ok(&["net"]);

    // tcpdump on gwA's outer veth (ga1) before any gateway runs, so the SYN and the prefix are
    // in the file; -U writes every packet as it comes.
    let pcap = lab.dir.join("gwA-outer.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    let dump = lab.spawn(
        "gwA",
        &["tcpdump", "-i", "ga1", "-n", "-U", "-w", &pcap_s, "tcp"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pcap.exists() {
        assert!(Instant::now() < deadline, "tcpdump did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    lab.ok(&["start", "gwB"]);
    lab.ok(&["start", "gwA"]);
    let spis = lab.established(Duration::from_secs(20));
    println!("[capture {:?}] up, ping", t0.elapsed());
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(10));
    assert!(lab.ping("hostA", "203.0.113.10"), "{}", lab.logs());
    assert!(lab.ping("hostB", "198.51.100.10"), "{}", lab.logs());

    println!("[capture {:?}] Child SA rekey", t0.elapsed());
    let old = children(&lab);
    assert_eq!(old.len(), 1, "{old:?}");
    let out = lab.ctl("gwA", &["rekey", "site-b"]);
    assert!(out.contains("1 Child SA rekey(s) started"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = children(&lab);
        if now.len() == 1 && now != old {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Child SA rekey of {old:?}: {now:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.ping_within("hostA", "203.0.113.10", Duration::from_secs(10));

    println!("[capture {:?}] IKE SA rekey", t0.elapsed());
    let out = lab.ctl("gwA", &["rekey", "site-b", "--ike"]);
    assert!(out.contains("1 IKE SA rekey(s) started"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.established(Duration::from_secs(10)) == spis {
        assert!(
            Instant::now() < deadline,
            "IKE SA not rekeyed\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.ping("hostA", "203.0.113.10"), "{}", lab.logs());
    assert!(lab.ping("hostB", "198.51.100.10"), "{}", lab.logs());

    println!("[capture {:?}] SIGTERM", t0.elapsed());
    // gwA first: its Delete reaches gwB, which logs it; then gwB.
    let pid = lab.pid("gwA");
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_gone(pid, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(lab.dir.join("gwB.log"))
        .unwrap_or_default()
        .contains("IKE SA deleted")
    {
        assert!(Instant::now() < deadline, "gwB never saw the Delete");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.ok(&["stop", "gwB"]);
    // The FINs and last ACKs, then tcpdump ends and reports its counts.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill takes no pointers; the pid is our own child (ip netns exec execs tcpdump).
    unsafe { libc::kill(dump.id() as i32, libc::SIGTERM) };
    let out = dump.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.trim() == "0 packets dropped by kernel"),
        "{stderr}"
    );

    let file = std::fs::read(&pcap).unwrap();
    let want = capture::capture_frames(&file, 4500);
    let t1 = Instant::now();
    let packets = tshark::dissect(&pcap, &keys.join("gwA"), true);
    let got = tshark::check_all_decrypted(&packets);
    println!(
        "[capture {:?}] tshark ({:?}): {} IKE messages ({} decrypted), {} ESP packets ({} \
         decrypted); the capture holds {} and {} ({} ESP SPIs)",
        t0.elapsed(),
        t1.elapsed(),
        got.ike,
        got.ike_decrypted,
        got.esp,
        got.esp_decrypted,
        want.ike,
        want.esp,
        want.spis.len()
    );
    assert_eq!(got.prefixes, 1, "one connection, one prefix");
    assert_eq!((got.ike, got.esp), (want.ike, want.esp), "{got:?}");
    assert_eq!(got.ike - got.ike_decrypted, 2, "only IKE_SA_INIT is clear");
    assert_eq!(got.esp_decrypted, got.esp);
    // The first and the rekeyed Child SA, both ways; at least 6 + 6 pings each way.
    assert!(want.spis.len() >= 4, "{want:?}");
    assert!(got.esp >= 24, "{got:?}");
    // IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA (both rekeys) and INFORMATIONAL (Deletes).
    let exchanges: BTreeSet<u32> = packets
        .iter()
        .flat_map(|p| p.ike.iter().map(|i| i.exchange))
        .collect();
    assert_eq!(
        exchanges,
        BTreeSet::from([34, 35, 36, 37]),
        "{}",
        lab.logs()
    );
}
