//! The command-line flags of a program that talks to a manager (feature `clap`): shared by the
//! operator CLI, `outrider sim` and `outrider bench propagation`.

use std::path::PathBuf;

use crate::{Client, ClientError};

/// How to reach the manager, and how to print its answers.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Manager URL (`https://…` for a manager with TLS).
    #[arg(long, env = "OUTRIDER_MANAGER", default_value = "http://127.0.0.1:7070")]
    pub manager: String,
    /// A CA (PEM) trusted besides the system's for an `https://` manager (`outrider cert ca`
    /// makes a lab one).
    #[arg(long, env = "OUTRIDER_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
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

    /// A client of the manager, with the token from [`ConnectArgs::token`] and the CA of
    /// `--ca-file`.
    pub fn client(&self) -> Result<Client, ClientError> {
        self.client_with(self.token()?)
    }

    /// A client of the manager sending `token`, with the CA of `--ca-file`.
    pub fn client_with(&self, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_ca(&self.manager, token, self.ca()?.as_deref())
    }

    /// The content of `--ca-file`, if given.
    pub fn ca(&self) -> Result<Option<Vec<u8>>, ClientError> {
        let Some(path) = &self.ca_file else { return Ok(None) };
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::InvalidInput(format!("cannot read the CA file {}: {e}", path.display())))?;
        Ok(Some(pem))
    }
}
