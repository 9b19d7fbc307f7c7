//! End to end: inner packets through two gateways with static SAs over RFC 9329 TCP, over smoltcp
//! on an impaired mem link and over kernel TCP on loopback. Every inner packet arrives exactly once
//! and in order, through loss, reordering and a reset with reconnect, and no SA is lost.

use iketcp_dataplane::crypto::Backend;
use iketcp_dataplane::port::mem::{Impairments, MemConfig};
use iketcp_dataplane::worker::handle::Command;
use iketcp_tests::{A, B, Tunnel, Wire};

fn impaired() -> MemConfig {
    MemConfig {
        a_to_b: Impairments {
            loss: 0.01,
            reorder: 0.01,
            seed: 11,
            ..Impairments::default()
        },
        b_to_a: Impairments {
            loss: 0.01,
            reorder: 0.01,
            seed: 12,
            ..Impairments::default()
        },
        ..MemConfig::default()
    }
}

fn exactly(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

/// Both directions, 1% loss and 1% reordering on the outer link, then an injected RST mid-transfer
/// (R-6.1-f: the SAs survive), the Originator reconnects (R-6.1-g/k), the Responder accepts the
/// new connection for the existing SAs (R-6.1-h) and traffic continues on the same SAs.
#[test]
fn r_6_1_f_mem_link_loss_reorder_reset_reconnect() {
    for backend in [Backend::AwsLc, Backend::RustCrypto] {
        let mut t = Tunnel::start(Wire::Mem(impaired()), backend);
        // A speaks first: B learns its send path from the first authentic ESP (R-6.1-t).
        t.send(A, 0..1000);
        assert_eq!(t.received(B, 1000), exactly(0..1000));
        t.send(B, 0..1000);
        assert_eq!(t.received(A, 1000), exactly(0..1000));
        // Reset in the middle of the transfer, once everything sent has arrived.
        t.link
            .as_ref()
            .unwrap_or_else(|| panic!("mem link"))
            .inject_reset();
        t.send(A, 1000..1001); // any packet makes the link forge the RSTs
        t.reconnect_after_down();
        // Packet 1000 made the link forge the RSTs; it may die with the old connection.
        let lost_at_reset = 1001
            - t.received_within(B, 1001, std::time::Duration::from_secs(2))
                .len() as u32;
        assert!(lost_at_reset <= 1);
        t.send(A, 1001..3000);
        let got_b = t.received(B, 3000 - lost_at_reset as usize);
        t.send(B, 1000..3000);
        let got_a = t.received(A, 3000);
        // Exactly once, in order; only the packet that triggered the reset may be missing.
        let mut want_b = exactly(0..3000);
        if lost_at_reset == 1 {
            want_b.retain(|n| *n != 1000);
        }
        assert_eq!(got_b, want_b, "{backend}");
        assert_eq!(got_a, exactly(0..3000), "{backend}");
        let (sa, sb) = (t.stats(A), t.stats(B));
        assert_eq!(sa.icv_failures + sb.icv_failures, 0);
        assert_eq!(sa.replays + sb.replays, 0);
        assert!(
            sa.conns_down >= 1 && sb.conns_down >= 1,
            "both saw the reset"
        );
        t.stop();
    }
}

/// The same through the kernel-TCP transport on loopback; the reset is an abortive close by A.
#[test]
fn r_6_1_f_kernel_transport_reset_reconnect() {
    let mut t = Tunnel::start(Wire::Kernel, Backend::AwsLc);
    t.send(A, 0..2000);
    assert_eq!(t.received(B, 2000), exactly(0..2000));
    t.send(B, 0..2000);
    assert_eq!(t.received(A, 2000), exactly(0..2000));
    let conn = t.conn_a.unwrap_or_else(|| panic!("conn"));
    t.cmd(
        A,
        Command::Close {
            conn: conn.id,
            abort: true,
        },
    );
    t.reconnect_after_down();
    t.send(A, 2000..4000);
    let got_b = t.received(B, 4000);
    // The TCP Responder cannot dial (R-6.1-g): B has no path until A's first authentic ESP on
    // the new connection arrived (R-6.1-t), and what B sends before that is dropped
    // (`no_connection`). B sends once A's packets are in.
    t.send(B, 2000..4000);
    let got_a = t.received(A, 4000);
    if got_b.len() != 4000 || got_a.len() != 4000 {
        eprintln!("A: {:?}\nB: {:?}", t.stats(A), t.stats(B));
    }
    assert_eq!(got_b, exactly(0..4000));
    assert_eq!(got_a, exactly(0..4000));
    assert_eq!(t.stats(A).icv_failures + t.stats(B).icv_failures, 0);
    t.stop();
}
