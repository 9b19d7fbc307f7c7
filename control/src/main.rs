//! The `iketcp` binary. The IKEv2 gateway and `iketcp demo` arrive with the control plane; until
//! then this says so and points at what runs today, instead of silently doing nothing.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1);
    match cmd.as_deref() {
        Some("--version" | "-V") => {
            println!("iketcp {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "iketcp {}: the IKEv2 control plane (gateway, `demo`) is not built yet.\n\
                 What runs today: `cargo run --release -p iketcp-bench -- crypto|pipeline` \
                 and `cargo test --workspace`.",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
    }
}
