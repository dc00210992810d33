//! The command-line flags of a program that talks to a manager (feature `clap`): shared by the
//! operator CLI, `outrider sim` and `outrider bench propagation`.

use std::path::PathBuf;

use crate::{Client, ClientError};

/// How to reach the manager, and how to print its answers.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Manager URL.
    #[arg(long, env = "OUTRIDER_MANAGER", default_value = "http://127.0.0.1:7070")]
    pub manager: String,
    /// File holding the API token (the server writes `<data-dir>/admin.token` on first
    /// start). Without it the token is taken from the environment variable OUTRIDER_TOKEN.
    #[arg(long, env = "OUTRIDER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Tenant to work in.
    #[arg(long, env = "OUTRIDER_TENANT", default_value = outrider_model::DEFAULT_TENANT)]
    pub tenant: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How answers are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// The JSON answer, pretty-printed (one compact object per line when following events).
    Json,
}

impl ConnectArgs {
    /// The API token from `--token-file`, or else from `OUTRIDER_TOKEN`.
    pub fn token(&self) -> Result<Option<String>, ClientError> {
        Client::token_from(self.token_file.as_deref(), std::env::var("OUTRIDER_TOKEN").ok())
    }

    /// A client of the manager, with the token from [`ConnectArgs::token`].
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(&self.manager, self.token()?)
    }
}
