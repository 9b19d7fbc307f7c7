//! Replays a `driver_events` input with a trace of every op, event and command on stderr:
//! `cargo run --example replay_driver -- FILE`.

use iketcp_fuzz::driver::{Harness, Op};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: replay_driver FILE");
        std::process::exit(2);
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let Some(mut h) = Harness::new() else {
        eprintln!("no harness");
        std::process::exit(1);
    };
    h.trace = true;
    for op in Op::parse_all(&data, 64) {
        h.step(&op);
        eprintln!("  -> {:?}, stray {}", h.core.counts(), h.stray);
    }
}
