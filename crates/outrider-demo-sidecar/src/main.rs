//! `outrider-demo-sidecar`: the reference sidecar (see the crate docs for its environment).
//!
//! Exit status: 0 after a graceful shutdown, 1 when it fails or a fault ends it, 2 when the
//! configuration (environment) is invalid.

use std::{io::IsTerminal, process::ExitCode};

use outrider_demo_sidecar::{Config, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();

    // Before the runtime starts: taking over an inherited socket edits the environment,
    // which is only done while the process is single-threaded.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("outrider-demo-sidecar: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outrider-demo-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes on one line.
            eprintln!("outrider-demo-sidecar: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}
