//! Tests for the rtnetlink client.
//!
//! The kernel tests each run on a thread moved into a new, empty network namespace, where they
//! make a TUN link and check what [`Netlink`] did with `ip -j`. Without root, `ip` or
//! a namespace they print why and pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-only file: its helpers, like its tests, fail by panicking"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use netlink_packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_DUMP, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use serde_json::Value;

use super::socket::parse_one;
use super::{MAIN_TABLE, Netlink, NetlinkError, Route, RouteSet, RouteSetStats};

const CLONE_NEWNET: i32 = 0x4000_0000;

unsafe extern "C" {
    /// unshare(2) from the C library std already links.
    fn unshare(flags: i32) -> i32;
}

const V4_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const V6_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const V4_NET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
const V6_NET: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0);

/// Why the kernel tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("not root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `ip` command".into()),
    }
}

/// Runs `f` on a thread in a fresh network namespace; skips when that is not possible.
fn lab(test: &str, f: impl FnOnce() + Send + 'static) {
    if let Some(why) = unavailable() {
        println!("SKIP {test}: {why}");
        return;
    }
    let test = test.to_owned();
    let joined = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread (namespaces are
        // per task; `ip` children inherit it) into a new namespace that dies with the thread.
        if unsafe { unshare(CLONE_NEWNET) } != 0 {
            println!(
                "SKIP {test}: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        f();
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip_json(args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let text = ip(&all);
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap()
}

/// Makes the link `d0` and returns a client and the link's index. It is a persistent TUN device
/// that no process has open (kernels without the dummy driver are common in CI VMs), so it has
/// no carrier: set up, its flags say UP and its operstate DOWN, and IPv6 gives it no link-local
/// address.
fn test_link() -> (Netlink, u32) {
    ip(&["tuntap", "add", "dev", "d0", "mode", "tun"]);
    let mut nl = Netlink::open().unwrap();
    let index = nl.link_index("d0").unwrap();
    (nl, index)
}

/// `test_link()`, set up.
fn test_link_up() -> (Netlink, u32) {
    let (mut nl, index) = test_link();
    nl.set_link_up(index, None).unwrap();
    (nl, index)
}

fn link_json(name: &str) -> Value {
    ip_json(&["link", "show", "dev", name])[0].clone()
}

fn link_flags(name: &str) -> Vec<String> {
    link_json(name)["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

/// The `local/prefixlen` addresses `ip` shows on the link.
fn addresses(name: &str) -> Vec<String> {
    ip_json(&["addr", "show", "dev", name])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The destinations `ip` shows for the link's routes in the main table, IPv4 then IPv6, except
/// the link-local `fe80::/64` that a link with a carrier has.
fn ip_routes(name: &str) -> Vec<String> {
    let mut dsts = Vec::new();
    for family in ["-4", "-6"] {
        let routes = ip_json(&[family, "route", "show", "dev", name]);
        for r in routes.as_array().unwrap() {
            let dst = r["dst"].as_str().unwrap();
            if dst != "fe80::/64" {
                dsts.push(dst.to_owned());
            }
        }
    }
    dsts
}

fn v4_route(oif: u32) -> Route {
    Route::new(V4_NET.into(), 24, oif)
}

fn v6_route(oif: u32) -> Route {
    Route::new(V6_NET.into(), 64, oif)
}

/// `(dst, prefix_len)` of every route in `routes`.
fn dsts(routes: &[Route]) -> Vec<(IpAddr, u8)> {
    routes.iter().map(|r| (r.dst, r.prefix_len)).collect()
}

#[test]
fn link_index_finds_the_link_and_an_unknown_name_is_no_such_link() {
    lab("link_index", || {
        let (mut nl, index) = test_link();
        let shown = link_json("d0")["ifindex"].as_u64().unwrap();
        assert_eq!(u64::from(index), shown);
        assert_eq!(nl.link_index("lo").unwrap(), 1);

        for name in ["nosuch0", "", "a-name-far-too-long-for-linux", "d\0"] {
            match nl.link_index(name) {
                Err(NetlinkError::NoSuchLink(n)) => assert_eq!(n, name),
                other => panic!("link_index({name:?}) = {other:?}"),
            }
        }
        let text = NetlinkError::NoSuchLink("nosuch0".into()).to_string();
        assert!(text.contains("nosuch0"), "{text}");
    });
}

#[test]
fn set_link_up_with_mtu_then_down() {
    lab("set_link_up", || {
        let (mut nl, index) = test_link();
        assert!(!link_flags("d0").contains(&"UP".to_owned()));

        nl.set_link_up(index, Some(1400)).unwrap();
        let link = link_json("d0");
        assert_eq!(link["mtu"], 1400);
        assert!(link_flags("d0").contains(&"UP".to_owned()), "{link}");

        // Up again without an MTU leaves the MTU alone.
        nl.set_link_up(index, None).unwrap();
        assert_eq!(link_json("d0")["mtu"], 1400);

        nl.set_link_down(index).unwrap();
        assert!(!link_flags("d0").contains(&"UP".to_owned()));
        assert_eq!(link_json("d0")["operstate"], "DOWN");
        nl.set_link_down(index).unwrap();
    });
}

#[test]
fn add_address_v4_and_v6_twice_is_fine() {
    lab("add_address", || {
        let (mut nl, index) = test_link_up();
        for _ in 0..2 {
            nl.add_address(index, V4_ADDR.into(), 24).unwrap();
            nl.add_address(index, V6_ADDR.into(), 64).unwrap();
        }
        let addrs = addresses("d0");
        assert!(addrs.contains(&"198.51.100.1/24".to_owned()), "{addrs:?}");
        assert!(addrs.contains(&"fd00:1::1/64".to_owned()), "{addrs:?}");
        assert_eq!(addrs.iter().filter(|a| a.starts_with("198.")).count(), 1);
        assert_eq!(addrs.iter().filter(|a| a.starts_with("fd00:")).count(), 1);
    });
}

#[test]
fn add_route_twice_list_and_delete_twice() {
    lab("routes", || {
        let (mut nl, index) = test_link_up();
        let (v4, v6) = (v4_route(index), v6_route(index));
        for _ in 0..2 {
            nl.add_route(&v4).unwrap();
            nl.add_route(&v6).unwrap();
        }
        let shown = ip_routes("d0");
        assert!(shown.contains(&"203.0.113.0/24".to_owned()), "{shown:?}");
        assert!(shown.contains(&"fd00:2::/64".to_owned()), "{shown:?}");
        assert_eq!(shown.iter().filter(|d| d.starts_with("203.")).count(), 1);
        assert_eq!(shown.iter().filter(|d| d.starts_with("fd00:2")).count(), 1);
        let v4_json = &ip_json(&["-4", "route", "show", "dev", "d0"])[0];
        assert_eq!(v4_json["scope"], "link", "{v4_json}");
        assert_eq!(v4_json["protocol"], "static", "{v4_json}");

        let listed = nl.routes(index).unwrap();
        let listed_dsts = dsts(&listed);
        assert!(listed_dsts.contains(&(v4.dst, 24)), "{listed:?}");
        assert!(listed_dsts.contains(&(v6.dst, 64)), "{listed:?}");
        assert!(
            listed
                .iter()
                .all(|r| r.oif == index && r.table == MAIN_TABLE)
        );
        // IPv4 reports no metric when it is 0; IPv6 always has one.
        assert!(listed.contains(&v4), "{listed:?}");
        let listed_v6 = listed.iter().find(|r| r.dst == v6.dst).unwrap();
        assert_eq!(listed_v6.metric, Some(1024));
        // The lo routes are not d0's.
        assert!(nl.routes(1).unwrap().iter().all(|r| r.oif == 1));

        for _ in 0..2 {
            nl.del_route(&v4).unwrap();
            nl.del_route(&v6).unwrap();
        }
        let shown = ip_routes("d0");
        assert!(
            !shown
                .iter()
                .any(|d| d.starts_with("203.") || d.starts_with("fd00:2"))
        );
        let listed = dsts(&nl.routes(index).unwrap());
        assert!(!listed.contains(&(v4.dst, 24)) && !listed.contains(&(v6.dst, 64)));
    });
}

#[test]
fn route_with_source_and_metric_round_trips() {
    lab("route_attributes", || {
        let (mut nl, index) = test_link_up();
        nl.add_address(index, V4_ADDR.into(), 24).unwrap();
        nl.add_address(index, V6_ADDR.into(), 64).unwrap();
        let v4 = Route {
            src: Some(V4_ADDR.into()),
            metric: Some(50),
            ..v4_route(index)
        };
        let v6 = Route {
            metric: Some(60),
            ..v6_route(index)
        };
        nl.add_route(&v4).unwrap();
        nl.add_route(&v6).unwrap();

        let listed = nl.routes(index).unwrap();
        assert!(listed.contains(&v4), "{listed:?}");
        assert!(listed.contains(&v6), "{listed:?}");
        // The address's own prefix, which the kernel added, is listed too.
        let prefix = (IpAddr::from(Ipv4Addr::new(198, 51, 100, 0)), 24);
        assert!(dsts(&listed).contains(&prefix), "{listed:?}");
        let v4_json = &ip_json(&["-4", "route", "show", "203.0.113.0/24"])[0];
        assert_eq!(v4_json["prefsrc"], "198.51.100.1", "{v4_json}");
        assert_eq!(v4_json["metric"], 50, "{v4_json}");

        // Another metric is another route, beside the first.
        let v4_other = Route {
            metric: Some(70),
            ..v4.clone()
        };
        nl.add_route(&v4_other).unwrap();
        let listed = nl.routes(index).unwrap();
        assert!(
            listed.contains(&v4) && listed.contains(&v4_other),
            "{listed:?}"
        );
        nl.del_route(&v4).unwrap();
        let listed = nl.routes(index).unwrap();
        assert!(
            !listed.contains(&v4) && listed.contains(&v4_other),
            "{listed:?}"
        );
    });
}

#[test]
fn route_set_removes_one_and_clears_the_rest() {
    lab("route_set", || {
        let (mut nl, index) = test_link_up();
        let other = Route::new(Ipv4Addr::new(192, 0, 2, 0).into(), 25, index);
        let mut set = RouteSet::new();
        set.install(&mut nl, v4_route(index)).unwrap();
        set.install(&mut nl, v6_route(index)).unwrap();
        set.install(&mut nl, other.clone()).unwrap();
        set.install(&mut nl, v4_route(index)).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.routes()[0], v4_route(index));
        assert_eq!(ip_routes("d0").len(), 3);

        assert!(set.remove(&mut nl, &other).unwrap());
        assert!(!set.remove(&mut nl, &other).unwrap(), "no longer the set's");
        assert!(!ip_routes("d0").contains(&"192.0.2.0/25".to_owned()));
        assert_eq!(set.len(), 2);

        // A route that vanished behind the set's back is removed all the same.
        nl.del_route(&v6_route(index)).unwrap();
        set.clear(&mut nl).unwrap();
        assert!(set.is_empty());
        assert!(ip_routes("d0").is_empty());
        let want = RouteSetStats {
            installed: 4,
            removed: 3,
            failed: 0,
        };
        assert_eq!(set.stats(), want);

        // A failed install is counted and not remembered.
        let bad = Route::new(V4_NET.into(), 24, 999_999);
        assert!(set.install(&mut nl, bad).is_err());
        assert!(set.is_empty());
        assert_eq!(set.stats().failed, 1);
    });
}

#[test]
fn route_set_clear_after_the_link_is_gone() {
    lab("route_set_link_gone", || {
        let (mut nl, index) = test_link_up();
        let mut set = RouteSet::new();
        set.install(&mut nl, v4_route(index)).unwrap();
        set.install(&mut nl, v6_route(index)).unwrap();
        ip(&["link", "del", "d0"]);
        set.clear(&mut nl).unwrap();
        assert!(set.is_empty());
        assert_eq!(set.stats().removed, 2);
    });
}

#[test]
fn kernel_refusals_are_errors_with_errno_and_text() {
    lab("kernel_errors", || {
        let (mut nl, index) = test_link();
        let missing = Route::new(V4_NET.into(), 24, 999_999);
        let err = nl.add_route(&missing).unwrap_err();
        assert!(
            matches!(err, NetlinkError::Kernel { op: "add route", errno } if errno == libc::ENODEV),
            "{err:?}"
        );
        assert_eq!(err.errno(), Some(libc::ENODEV));
        let text = err.to_string();
        assert!(text.starts_with("add route: "), "{text}");
        assert!(text.contains("No such device"), "{text}");

        let err = nl
            .add_route(&Route::new(V6_NET.into(), 64, 999_999))
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err:?}");

        // IPv4 routes need the link up.
        let err = nl.add_route(&v4_route(index)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETDOWN), "{err:?}");
        // Host bits under an IPv4 prefix, and prefixes longer than the address.
        nl.set_link_up(index, None).unwrap();
        let host_bits = Route::new(Ipv4Addr::new(203, 0, 113, 5).into(), 24, index);
        assert_eq!(
            nl.add_route(&host_bits).unwrap_err().errno(),
            Some(libc::EINVAL)
        );
        let too_long = Route::new(V4_NET.into(), 33, index);
        assert_eq!(
            nl.add_route(&too_long).unwrap_err().errno(),
            Some(libc::EINVAL)
        );
        let err = nl.add_address(index, V6_ADDR.into(), 129).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err:?}");

        for e in [
            nl.set_link_up(999_999, Some(1400)),
            nl.set_link_down(999_999),
            nl.add_address(999_999, V4_ADDR.into(), 24),
        ] {
            assert_eq!(e.unwrap_err().errno(), Some(libc::ENODEV));
        }
        // A tiny MTU is refused.
        let err = nl.set_link_up(index, Some(10)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err:?}");

        // Deleting a route that never was, even on a missing link, is fine.
        nl.del_route(&missing).unwrap();
        nl.del_route(&v6_route(index)).unwrap();

        // The socket stays usable after refusals.
        nl.add_route(&v4_route(index)).unwrap();
        assert_eq!(nl.link_index("d0").unwrap(), index);
    });
}

#[test]
fn answers_to_other_requests_are_skipped() {
    lab("stale_answers", || {
        let (mut nl, index) = test_link();
        // Two requests in flight: the answers to the first (a dump of both links, and its
        // NLMSG_DONE) arrive before the ack of the second, and waiting for the second skips them.
        let first = nl
            .send(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .unwrap();
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        let second = nl
            .send(RouteNetlinkMessage::SetLink(up), NLM_F_ACK)
            .unwrap();
        assert_ne!(first, second);
        assert!(nl.answers("set link up", second, false).unwrap().is_empty());
        assert!(link_flags("d0").contains(&"UP".to_owned()));
        // And the next request skips nothing it needs.
        assert_eq!(nl.link_index("d0").unwrap(), index);
    });
}

#[test]
fn no_answer_is_a_timeout() {
    lab("timeout", || {
        let mut nl = Netlink::open().unwrap();
        let start = std::time::Instant::now();
        // Nothing was sent with this sequence number, so nothing answers it.
        match nl.answers("get link", 12345, false) {
            Err(NetlinkError::Timeout { op: "get link" }) => {}
            other => panic!("{other:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(1900),
            "{waited:?}"
        );
        assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
        // The socket still works afterwards.
        assert_eq!(nl.link_index("lo").unwrap(), 1);
    });
}

#[test]
fn tun_device_is_configured() {
    lab("tun", || {
        if !std::path::Path::new("/dev/net/tun").exists() {
            println!("SKIP tun: no /dev/net/tun");
            return;
        }
        let tun = iketcp_dataplane::port::tun::Tun::open("gwtun0", 1400).unwrap();
        let mut nl = Netlink::open().unwrap();
        let index = nl.link_index(tun.name()).unwrap();
        nl.set_link_up(index, Some(1400)).unwrap();
        nl.add_address(index, Ipv4Addr::new(192, 0, 2, 1).into(), 32)
            .unwrap();
        nl.add_address(index, V6_ADDR.into(), 128).unwrap();
        let mut set = RouteSet::new();
        set.install(&mut nl, v4_route(index)).unwrap();
        set.install(&mut nl, v6_route(index)).unwrap();

        let link = link_json("gwtun0");
        assert_eq!(link["mtu"], 1400);
        assert!(link_flags("gwtun0").contains(&"UP".to_owned()), "{link}");
        let shown = ip_routes("gwtun0");
        assert!(shown.contains(&"203.0.113.0/24".to_owned()), "{shown:?}");
        assert!(shown.contains(&"fd00:2::/64".to_owned()), "{shown:?}");

        set.clear(&mut nl).unwrap();
        let shown = ip_routes("gwtun0");
        assert!(
            !shown
                .iter()
                .any(|d| d.starts_with("203.") || d.starts_with("fd00:2"))
        );
        drop(tun);
    });
}

// Parsing without a kernel.

fn emit(seq: u32, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    let mut bytes = vec![0; msg.buffer_len()];
    msg.serialize(&mut bytes);
    bytes
}

#[test]
fn parse_one_skips_other_sequence_numbers_and_rejects_garbage() {
    let ack = emit(7, NetlinkPayload::Error(ErrorMessage::default()));
    let (len, payload) = parse_one(&ack, 7).unwrap();
    assert_eq!(len, ack.len());
    assert!(matches!(payload, Some(NetlinkPayload::Error(e)) if e.code.is_none()));

    let (len, payload) = parse_one(&ack, 8).unwrap();
    assert_eq!(len, ack.len());
    assert!(payload.is_none());

    // Too short for a header; a length past the end; a length shorter than a header.
    assert!(parse_one(&ack[..10], 7).is_none());
    let mut long = ack.clone();
    long[0] = 200;
    assert!(parse_one(&long, 7).is_none());
    let mut short = ack.clone();
    short[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(parse_one(&short, 7).is_none());
    // An NLMSG_ERROR too short for its error code.
    let mut cut = ack[..16].to_vec();
    cut[..4].copy_from_slice(&16u32.to_ne_bytes());
    assert!(parse_one(&cut, 7).is_none());
    // A route message whose body is cut short.
    let mut bad_route = ack[..20].to_vec();
    bad_route[4..6].copy_from_slice(&24u16.to_ne_bytes()); // RTM_NEWROUTE
    assert!(parse_one(&bad_route, 7).is_none());
    assert!(parse_one(&[], 7).is_none());
}

#[test]
fn errors_display_their_operation() {
    let kernel = NetlinkError::Kernel {
        op: "add route",
        errno: libc::EPERM,
    };
    assert!(kernel.to_string().contains("Operation not permitted"));
    assert!(
        NetlinkError::Timeout { op: "dump routes" }
            .to_string()
            .starts_with("dump routes: ")
    );
    assert!(
        NetlinkError::Malformed { op: "get link" }
            .to_string()
            .contains("malformed")
    );
    let io = NetlinkError::from(std::io::Error::from_raw_os_error(libc::EACCES));
    assert!(std::error::Error::source(&io).is_some());
    assert_eq!(io.errno(), None);
}
