use super::*;

/// A quiet, unpinned run of `duration` seconds with 200-byte packets at `rate` per second each
/// way on each tunnel.
fn small(duration: f64, rate: u64) -> DemoArgs {
    DemoArgs {
        duration,
        rate: Some(rate),
        size: 200,
        quiet: true,
        no_pin: true,
        ..DemoArgs::default()
    }
}

#[test]
fn one_second_demo_carries_traffic_both_ways() {
    let args = DemoArgs {
        duration: 1.0,
        quiet: true,
        no_pin: true,
        ..DemoArgs::default()
    };
    let s = run(&args).unwrap();
    assert_eq!(s.directions.len(), 2);
    for d in &s.directions {
        assert!(d.packets_received > 0, "{d:?}");
        assert!(d.packets_received <= d.packets_sent, "{d:?}");
    }
    assert_eq!(s.icv_failures, 0);
    assert!(s.handshake_ms > 0.0);
    let v = serde_json::to_value(&s).unwrap();
    for k in [
        "handshake_ms",
        "duration_s",
        "directions",
        "child_rekeys",
        "ike_rekeys",
        "drops",
    ] {
        assert!(v.get(k).is_some(), "{k}");
    }
    assert!(v.get("icv_failures").is_none());
}

#[test]
fn two_second_demo_rekeys_child_and_ike_sa_without_loss() {
    // Rate-limited: at full speed the data plane may drop an IKE message when a
    // connection's queue is full (`queue_full`), and a lost request stalls the rekey.
    let args = small(2.0, 2000);
    let s = run(&args).unwrap();
    assert!(s.child_rekeys >= 1, "{s:?}");
    assert!(s.ike_rekeys >= 1, "{s:?}");
    assert_eq!(s.icv_failures, 0);
    for d in &s.directions {
        assert!(d.packets_received > 0, "{d:?}");
        // A handful at most: the old inbound SA outlives the switch by a grace period.
        assert!(d.packets_received + 8 >= d.packets_sent, "{d:?}");
    }
    let v = serde_json::to_value(&s).unwrap();
    assert!(v["child_rekeys"].as_u64().unwrap() >= 1);
    assert!(v["ike_rekeys"].as_u64().unwrap() >= 1);
}

#[test]
fn rate_limit_holds() {
    let args = small(1.0, 2000);
    let s = run(&args).unwrap();
    for d in &s.directions {
        assert!(d.packets_sent <= 2400, "{d:?}");
        assert!(d.packets_received > 1000, "{d:?}");
    }
}

/// The fields of a key log line (strings quoted, byte fields bare; no field holds a comma).
fn fields(line: &str) -> Vec<&str> {
    line.split(',').map(|f| f.trim_matches('"')).collect()
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn keylog_writes_wireshark_tables() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("iketcp-keylog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let args = DemoArgs {
        keylog: Some(dir.clone()),
        ..small(1.0, 1000)
    };
    let s = run(&args).unwrap();
    let read = |name: &str| {
        let p = dir.join(name);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        std::fs::read_to_string(p).unwrap()
    };
    let ike = read("ikev2_decryption_table");
    let esp = read("esp_sa");
    let _ = std::fs::remove_dir_all(&dir);

    let ike: Vec<_> = ike.lines().collect();
    assert!(!ike.is_empty());
    assert_eq!(ike.len() as u64, 1 + s.ike_rekeys, "{ike:?}");
    for l in &ike {
        let f = fields(l);
        assert_eq!(f.len(), 8, "{l}");
        assert!(f[0].len() == 16 && is_hex(f[0]), "{l}");
        assert!(f[1].len() == 16 && is_hex(f[1]), "{l}");
        assert!(is_hex(f[2]) && is_hex(f[3]), "{l}");
        assert!(f[4].contains("with 16 octet ICV [RFC5282]") || f[4].contains("RFC7634"));
        if f[7] == "NONE [RFC4306]" {
            assert!(f[5].is_empty() && f[6].is_empty(), "{l}");
        }
    }

    let esp: Vec<_> = esp.lines().collect();
    assert!(esp.len() >= 2, "{esp:?}");
    assert_eq!(esp.len() as u64, 2 * (1 + s.child_rekeys), "{esp:?}");
    let mut spis = std::collections::HashSet::new();
    let (mut i_to_r, mut r_to_i) = (0, 0);
    for l in &esp {
        let f = fields(l);
        assert_eq!(f.len(), 8, "{l}");
        assert_eq!(f[0], "IPv4");
        match (f[1], f[2]) {
            ("192.0.2.2", "192.0.2.1") => i_to_r += 1,
            ("192.0.2.1", "192.0.2.2") => r_to_i += 1,
            other => panic!("addresses {other:?}"),
        }
        let spi = f[3].strip_prefix("0x").unwrap();
        assert!(spi.len() == 8 && is_hex(spi), "{l}");
        assert!(spis.insert(spi.to_owned()), "SPI twice: {l}");
        assert_eq!(f[4], "AES-GCM with 16 octet ICV [RFC4106]");
        let key = f[5].strip_prefix("0x").unwrap();
        // AES-256-GCM KEYMAT: 32-byte key and 4-byte salt.
        assert!(key.len() == 72 && is_hex(key), "{l}");
        assert_eq!((f[6], f[7]), ("NULL", ""));
    }
    assert_eq!(i_to_r, r_to_i);
}

#[test]
fn workers_out_of_range_are_refused() {
    for workers in [0, MAX_WORKERS + 1, usize::MAX] {
        let args = DemoArgs {
            workers,
            quiet: true,
            no_pin: true,
            ..DemoArgs::default()
        };
        let e = run(&args).unwrap_err();
        assert!(e.contains("--workers must be in 1..=32"), "{e}");
    }
}

#[test]
fn tunnels_split_the_inner_networks() {
    assert_eq!(
        share(INITIATOR_NET, 0, 1),
        (INITIATOR_NET, Ipv4Addr::new(198, 51, 100, 255))
    );
    assert_eq!(
        share(RESPONDER_NET, 1, 2),
        (
            Ipv4Addr::new(203, 0, 113, 128),
            Ipv4Addr::new(203, 0, 113, 255)
        )
    );
    let n = MAX_WORKERS;
    let mut next = u32::from(INITIATOR_NET);
    for k in 0..n {
        let (a, b) = share(INITIATOR_NET, k, n);
        assert_eq!(
            u32::from(a),
            next,
            "tunnel {k} starts where {} ended",
            k.max(1) - 1
        );
        let h = host(INITIATOR_NET, k, n);
        assert!(a < h && h <= b, "{k}");
        next = u32::from(b) + 1;
    }
    assert_eq!(next, u32::from(INITIATOR_NET) + 256);
    assert_eq!(
        responder_addr(MAX_WORKERS - 1),
        Ipv4Addr::new(192, 0, 2, 63)
    );
    assert_eq!(
        initiator_addr(MAX_WORKERS - 1),
        Ipv4Addr::new(192, 0, 2, 64)
    );
}

#[test]
fn two_workers_carry_two_tunnels_with_rekeys_and_deletes() {
    let args = DemoArgs {
        workers: 2,
        ..small(2.0, 2000)
    };
    let s = run(&args).unwrap();
    assert_eq!(s.workers, 2);
    assert_eq!(s.tunnels.len(), 2);
    for (k, t) in s.tunnels.iter().enumerate() {
        assert!(t.child_rekeys >= 1, "tunnel {k}: {t:?}");
        assert!(t.ike_rekeys >= 1, "tunnel {k}: {t:?}");
        // Both ESP SAs on both gateways, at least.
        assert!(t.sas_deleted >= 4, "tunnel {k}: {t:?}");
        assert!(
            t.packets_received.iter().all(|&p| p > 0),
            "tunnel {k}: {t:?}"
        );
    }
    assert!(s.child_rekeys >= 2 && s.ike_rekeys >= 2, "{s:?}");
    assert_eq!(s.icv_failures, 0);
    for (i, d) in s.directions.iter().enumerate() {
        let per_tunnel: u64 = s.tunnels.iter().map(|t| t.packets_received[i]).sum();
        assert_eq!(d.packets_received, per_tunnel, "{d:?}");
        // A handful per tunnel at most (see the one-tunnel rekey test).
        assert!(d.packets_received + 16 >= d.packets_sent, "{d:?}");
    }
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["workers"], 2);
}
