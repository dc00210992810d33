//! `outrider`: the manager (`server`), the per-instance `agent`, the simulated fleet (`sim`),
//! the one-command `demo`, benchmarks (`bench`) and the operator CLI over the REST API.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the manager holds many small per-stream allocations that glibc's allocator
/// fragments and spends CPU on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs the sidecars of a service fleet and upgrades them safely.
#[derive(Parser, Debug)]
#[command(name = "outrider", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The manager: REST API, agent sync over gRPC, the store.
    Server(cmd::server::ServerArgs),
    /// Runs on every instance: registers it and supervises its sidecars.
    Agent(Box<cmd::agent::AgentArgs>),
    /// A lab CA and the server and agent certificates it signs, for TLS and mTLS.
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// A simulated fleet: N in-process agents speaking the real protocol to a real server.
    Sim(cmd::sim::SimArgs),
    /// The whole loop on one machine: server, local agents, the demo sidecar, an upgrade.
    Demo(outrider_devtools::demo::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(outrider_devtools::bench::BenchCommand),
    #[command(flatten)]
    Resource(cli::ResourceCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTRIDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    // The one crypto provider of every TLS path (server, agent, CLI, artifacts, webhooks).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => cmd::server::run(args).await,
            Command::Agent(args) => cmd::agent::run(*args).await,
            Command::Sim(args) => cmd::sim::run(args).await,
            Command::Cert(c) => cmd::cert::run(c),
            Command::Demo(args) => outrider_devtools::demo::run(args).await,
            Command::Bench(b) => cmd::print_stdout(&outrider_devtools::bench::run(b).await?),
            Command::Resource(r) => cli::run(r).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
