//! Arbitrary bytes from an unauthenticated peer, as they reach a TCP Responder: first the
//! stateless cookie screen (always "under load", with a puzzle), then a fresh responder session
//! and, if it answered, a second message to the same session. Nothing may panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use iketcp_control::ike::cookie::{CookieJar, CookiePolicy};
use iketcp_control::ike::session::Session;
use iketcp_dataplane::crypto::Suite;
use iketcp_lab::demo::configs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let policy = CookiePolicy {
        half_open_threshold: 0,
        puzzle_difficulty: 8,
        ..CookiePolicy::tcp()
    };
    if let Ok(jar) = CookieJar::new(policy, now) {
        let _ = jar.screen(data, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 0);
    }
    let Ok((_, cr)) = configs(Suite::Aes256Gcm16, false) else {
        return;
    };
    let local = SocketAddr::from(([192, 0, 2, 1], 4500));
    let remote = SocketAddr::from(([192, 0, 2, 9], 40000));
    let mut s = Session::responder(cr, local, remote);
    let (first, second) = data.split_at(data.len() / 2);
    if s.handle(first, now).is_ok() {
        let _ = s.handle(second, now);
    }
    let _ = s.handle(data, now);
});
