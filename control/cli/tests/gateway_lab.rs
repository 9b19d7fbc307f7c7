//! Lab: two `iketcp gateway` processes (the built binary) between two hosts, each in its own
//! network namespace (`tests/lab/two-gateways.sh` builds the topology): ping both ways, iperf3
//! through the tunnel, the outer TCP connection killed with `ss -K` (the Originator reconnects,
//! the IKE SA keeps its SPIs, iperf3 keeps going), `kill -9` and a restart of the responder (the
//! tunnel comes back by itself), a reload that changes one connection, metrics over HTTP, and
//! SIGTERM (the peer logs the Delete; routes and device are gone). Once with gwB on kernel TCP,
//! once on smoltcp over a TAP device, once on smoltcp over AF_XDP sockets on its link.
//!
//! Needs root, `/dev/net/tun`, `ip`, `ss`, `ping` and `iperf3` (`.ci/run` installs them); skips
//! only without root or a TUN device, and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

mod common;

use std::time::{Duration, Instant};

use common::{LAB_LOCK, Lab, metric, need, unavailable};

/// `port_b`: gwB's `[smoltcp] port` (`tap` or `af_xdp`) when it runs on smoltcp.
fn two_gateways(name: &str, transport_b: &'static str, port_b: &str) {
    if let Some(why) = unavailable() {
        println!("SKIP gateway lab ({transport_b}): {why}");
        return;
    }
    for t in ["ip", "ss", "ping", "iperf3"] {
        need(t);
    }
    let af_xdp = port_b == "af_xdp";
    if af_xdp {
        // smoltcp checks checksums and veth leaves them to the receiver unless told otherwise.
        need("ethtool");
    }
    let _one = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Two workers per gateway: multi-queue TUN and forwarding between workers (and on smoltcp,
    // the steering splitter over the one TAP or AF_XDP port).
    let lab = Lab::with_env(name, transport_b, &[("WORKERS", "2"), ("PORT_B", port_b)]);
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
    // The TUN offload at work (`[tun] offload`, on by default): gwA read the inner TCP as
    // super-packets and cut them, gwB joined the decrypted segments on the way out.
    let worker_sum = |g: &str, name: &str| lab.worker_counter(g, name).unwrap_or(0);
    let (cut, joined) = lab.wait_for("offload counters", Duration::from_secs(5), || {
        let f = (
            worker_sum("gwA", "tun_super_in"),
            worker_sum("gwB", "tun_joined_out"),
        );
        (f.0 > 0 && f.1 > 0).then_some(f)
    });
    println!("TUN offload: gwA cut {cut} super-packets, gwB joined {joined} writes");
    assert_eq!(worker_sum("gwA", "tun_offload_errors"), 0);
    if af_xdp {
        // gwB's frames came and went through its AF_XDP sockets on gb1, with the program on it.
        let o = lab.exec("gwB", &["ip", "link", "show", "gb1"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(text.contains("prog/xdp"), "no XDP program on gb1: {text}");
        let (rx, tx) = lab.wait_for("AF_XDP link counters", Duration::from_secs(5), || {
            let f = (worker_sum("gwB", "link_rx"), worker_sum("gwB", "link_tx"));
            // iperf3 runs hostA to hostB: gwB receives the data and sends the ACKs.
            (f.0 > 10_000 && f.1 > 0).then_some(f)
        });
        println!("AF_XDP: gwB received {rx} and sent {tx} frames on gb1");
    }

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
    if af_xdp {
        // gwB stopped: its XDP program goes with it, and gb1 is the kernel's again.
        lab.ok(&["stop", "gwB"]);
        let o = lab.exec("gwB", &["ip", "link", "show", "gb1"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            !text.contains("prog/xdp"),
            "XDP program left on gb1: {text}"
        );
    }
}

#[test]
fn two_gateways_kernel_tcp() {
    two_gateways("itk", "kernel", "tap");
}

#[test]
fn two_gateways_responder_on_smoltcp() {
    two_gateways("its", "smoltcp", "tap");
}

/// gwB's smoltcp on AF_XDP sockets on its link (copy mode on veth), the XDP program attached.
#[test]
fn two_gateways_responder_on_smoltcp_over_af_xdp() {
    two_gateways("itx", "smoltcp", "af_xdp");
}
