//! The long-running roles. The operator CLI lives in `crate::cli`; the demo and the
//! benchmarks in `outrider-devtools`.

use std::io::Write;

use anyhow::Context;

pub mod agent;
pub mod cert;
pub mod server;
pub mod sim;

/// Writes `text` and a newline to standard output; a closed pipe is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to standard output"),
        _ => Ok(()),
    }
}
