//! iketcp benchmarks. Every scenario runs with its baseline in the same process and run, so the
//! ratios mean something on a noisy machine; absolute numbers only with the machine named.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crypto;
mod driver;
mod ike;
mod pipeline;
mod plot;
mod report;

#[derive(Parser, Debug)]
#[command(
    name = "iketcp-bench",
    about = "iketcp benchmarks (release builds only give real numbers)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bare AEAD seal/open and full ESP encap/decap per backend, suite and size.
    Crypto(crypto::Args),
    /// Complete IKE_SA_INIT + IKE_AUTH (PSK) + first Child SA handshakes per DH group, in memory.
    Ike(ike::Args),
    /// The sans-IO driver core's event rate with 10 and 10,000 established IKE SAs.
    Driver(driver::Args),
    /// The packet path end to end (crypto-only, tcp-only, pipeline, kernel) in one run.
    Pipeline(pipeline::Args),
    /// Draws the tunnel comparison (`bench/tunnels/compare.sh`) as a PNG bar chart.
    Plot(plot::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Crypto(a) => crypto::run(&a),
        Cmd::Ike(a) => ike::run(&a),
        Cmd::Driver(a) => driver::run(&a),
        Cmd::Pipeline(a) => pipeline::run(&a),
        Cmd::Plot(a) => plot::run(&a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iketcp-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
