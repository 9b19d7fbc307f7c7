//! The `iketcp` binary: the gateway daemon (`iketcp gateway`), its config check, the operator
//! commands that talk to a running gateway over its control socket (`status`, `up`, `down`,
//! `rekey`, `reload`), and `iketcp demo` (two gateways in one process).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use iketcp_gateway::config;
use iketcp_gateway::ctl::client::call;
use iketcp_gateway::ctl::{Command, Reply};
use iketcp_gateway::daemon::{self, Options};
use iketcp_gateway::status::render;
use iketcp_lab::demo::{self, DemoArgs};

/// Where the control socket is when neither `--socket` nor `--config` says otherwise.
const DEFAULT_SOCKET: &str = "/run/iketcp/iketcp.sock";

#[derive(Parser, Debug)]
#[command(name = "iketcp", version, about = "IKEv2 and ESP over TCP (RFC 9329)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a client command finds the daemon.
#[derive(Args, Debug)]
struct Target {
    /// The control socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Read the control socket's path from this config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds to wait for the daemon.
    #[arg(long, default_value_t = 15)]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway configured in FILE until SIGTERM or SIGINT (SIGHUP reloads).
    Gateway {
        /// The config file (TOML).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Do not pin the workers to cores.
        #[arg(long)]
        no_pin: bool,
    },
    /// Check a config file and print what it configures.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Show the connections, their IKE and Child SAs, and the data plane's counters.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a connection (after `down`).
    Up {
        /// Connection name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a connection's IKE SAs and keep it down.
    Down {
        /// Connection name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Rekey a connection's Child SAs (or its IKE SAs, or one Child SA).
    Rekey {
        /// Connection name.
        name: String,
        /// Rekey the IKE SAs.
        #[arg(long, conflicts_with = "spi")]
        ike: bool,
        /// Only the Child SA with this inbound SPI (hex, as `status` shows it).
        #[arg(long, value_parser = parse_spi)]
        spi: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Send a liveness check (empty INFORMATIONAL) on a connection's IKE SAs.
    Liveness {
        /// Connection name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Ask for one more Child SA on a connection's IKE SAs.
    AddChild {
        /// Connection name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete one Child SA (by its inbound SPI, hex); the IKE SA stays.
    DeleteChild {
        /// Connection name.
        name: String,
        /// Inbound SPI (hex, as `status` shows it).
        #[arg(value_parser = parse_spi)]
        spi: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Read the daemon's config file again and apply the changes (as SIGHUP does).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// A responder and an initiator gateway in one process: handshake, traffic, summary.
    Demo(DemoArgs),
}

/// An SPI as `status` prints it: 8 hex digits, `0x` optional.
fn parse_spi(s: &str) -> Result<u32, String> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    u32::from_str_radix(h, 16).map_err(|e| format!("not a hex SPI: {e}"))
}

fn socket_of(t: &Target) -> Result<PathBuf, String> {
    if let Some(s) = &t.socket {
        return Ok(s.clone());
    }
    match &t.config {
        Some(c) => config::load(c)
            .map(|c| c.gateway.control_socket)
            .map_err(|e| e.to_string()),
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

fn client(t: &Target, command: Command) -> Result<Reply, String> {
    let socket = socket_of(t)?;
    call(&socket, command, Duration::from_secs(t.timeout))
        .map_err(|e| format!("{}: {e}", socket.display()))
}

fn check_config(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(c) => {
            println!(
                "{}: OK: {} connection(s), {} worker(s), TUN {} mtu {}",
                file.display(),
                c.connections.len(),
                c.gateway.workers,
                c.tun.name,
                c.tun.mtu
            );
            let l = &c.limits;
            println!(
                "  limits per worker: {} connections, {} untrusted ({} per source), idle connections closed after {:?}, half-open IKE SAs dropped after {:?}, puzzles ({} bits) from {} half-open, {} IKE_SA_INIT/s per source",
                l.max_connections,
                l.untrusted_connections,
                l.untrusted_per_source,
                l.idle_connection_timeout,
                l.half_open_timeout,
                l.puzzle_difficulty,
                l.cookie_threshold,
                l.ike_sa_init_per_source
            );
            for conn in &c.connections {
                println!(
                    "  {}: {:?}, {} IKE proposal(s), {} ESP proposal(s)",
                    conn.name,
                    conn.start,
                    conn.ike_proposals.len(),
                    conn.esp_proposals.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn done(r: Result<Reply, String>, json: bool) -> ExitCode {
    match r {
        Ok(Reply::Status(s)) if json => match serde_json::to_string_pretty(&s) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("iketcp: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Reply::Status(s)) => {
            print!("{}", render(&s));
            ExitCode::SUCCESS
        }
        Ok(Reply::Done { message }) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Ok(Reply::Reloaded(s)) => {
            println!(
                "reloaded: added {:?}, removed {:?}, replaced {:?}, unchanged {:?}",
                s.added, s.removed, s.replaced, s.unchanged
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iketcp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Gateway { config, no_pin } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            iketcp_gateway::logging::init(cfg.gateway.log_level, cfg.gateway.log_format);
            let opts = Options {
                config,
                pin: !no_pin,
            };
            match daemon::run(&opts, cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "gateway failed");
                    eprintln!("iketcp gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Status { target, json } => done(client(&target, Command::Status), json),
        Cmd::Up { name, target } => done(client(&target, Command::Up { name }), false),
        Cmd::Down { name, target } => done(client(&target, Command::Down { name }), false),
        Cmd::Rekey {
            name,
            ike,
            spi,
            target,
        } => done(client(&target, Command::Rekey { name, ike, spi }), false),
        Cmd::Liveness { name, target } => done(client(&target, Command::Liveness { name }), false),
        Cmd::AddChild { name, target } => done(client(&target, Command::AddChild { name }), false),
        Cmd::DeleteChild { name, spi, target } => {
            done(client(&target, Command::DeleteChild { name, spi }), false)
        }
        Cmd::Reload { target } => done(client(&target, Command::Reload), false),
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
