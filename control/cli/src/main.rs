//! The `iketcp` binary. Today it runs `iketcp demo`: two gateways in one process negotiating
//! IKEv2 over TCP and carrying traffic both ways. The standalone gateway comes later.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iketcp_lab::demo::{self, DemoArgs};

#[derive(Parser, Debug)]
#[command(name = "iketcp", version, about = "IKEv2 and ESP over TCP (RFC 9329)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A responder and an initiator gateway in one process: handshake, traffic, summary.
    Demo(DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Demo(args) => match demo::run(&args) {
            Ok(s) => {
                if args.json {
                    match serde_json::to_string(&s) {
                        Ok(j) => println!("{j}"),
                        Err(e) => {
                            eprintln!("iketcp demo: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    demo::print_table(&s);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("iketcp demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
