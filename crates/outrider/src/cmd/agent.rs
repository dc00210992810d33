//! `outrider agent`: registers an instance and supervises its sidecars.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use outrider_agent::agent::AgentConfig;
use outrider_model::{HumanDuration, InstanceLabels};
use tokio_util::sync::CancellationToken;

/// Flags of `outrider agent` (PRODUCT.md §4).
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Manager URL; several managers of one store as `URL,URL,…` (the agent moves to the
    /// next when one fails).
    #[arg(long, env = "OUTRIDER_MANAGER", default_value = "http://127.0.0.1:7070")]
    pub manager: String,
    /// File holding the token.
    #[arg(long, env = "OUTRIDER_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Data dir: last desired state, sidecar records, artifact cache, sidecar logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Tenant of the instance.
    #[arg(long, env = "OUTRIDER_TENANT", default_value = outrider_model::DEFAULT_TENANT)]
    pub tenant: String,
    /// Service the instance belongs to.
    #[arg(long)]
    pub service: String,
    /// Instance id (unique within the tenant).
    #[arg(long)]
    pub instance: String,
    /// Region (`boe` is the offline region).
    #[arg(long)]
    pub region: String,
    /// `preview` or `prod`.
    #[arg(long)]
    pub env: String,
    /// `canary`, `single-dc` or `full`.
    #[arg(long)]
    pub stage: String,
    /// `blue` or `green`.
    #[arg(long)]
    pub color: Option<String>,
    /// Traffic lane.
    #[arg(long)]
    pub lane: Option<String>,
    /// Extra label `key=value` (repeatable); `${label.key}` in commands expands to it.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Deploy id; a new one is a deploy (on-deploy targets take effect).
    #[arg(long, default_value = "")]
    pub deploy_id: String,
    /// The agent's own HTTP endpoint (`/metrics`, `/healthz`, `/status`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The agent reports its sidecars' status on change and at least this often (100ms to
    /// 10m); each report is a sample for the rollout judge (`outrider demo` uses 1s).
    #[arg(long, default_value = "5s", value_parser = report_interval)]
    pub report_interval: HumanDuration,
}

/// `--report-interval`: a duration between [`MIN_REPORT_INTERVAL`] and
/// [`MAX_REPORT_INTERVAL`].
fn report_interval(s: &str) -> Result<HumanDuration, String> {
    let d: HumanDuration = s.parse()?;
    if d.0 < MIN_REPORT_INTERVAL || d.0 > MAX_REPORT_INTERVAL {
        return Err(format!("{s} must be between 100ms and 10m"));
    }
    Ok(d)
}

/// Bounds of `--report-interval`: faster floods the manager, slower starves the judge.
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);
const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(600);

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Runs the agent until SIGINT or SIGTERM; sidecars keep running after it exits.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read the token file {}", args.token_file.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(!token.is_empty(), "the token file {} is empty", args.token_file.display());
    let labels = InstanceLabels {
        region: args.region,
        env: args.env,
        stage: args.stage,
        color: args.color,
        lane: args.lane,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    labels.validate().map_err(|e| anyhow::anyhow!("invalid label {e}"))?;
    outrider_model::validate_name("instance", &args.instance).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = AgentConfig {
        manager: args.manager,
        token,
        data_dir: args.data_dir,
        tenant: args.tenant,
        service: args.service,
        instance: args.instance,
        labels,
        deploy_id: args.deploy_id,
        listen: args.listen,
        report_interval: args.report_interval.0,
    };
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        super::server::shutdown_signal().await;
        stop.cancel();
    });
    Ok(outrider_agent::agent::run(config, cancel).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_interval_is_bounded() {
        assert_eq!(report_interval("1s"), Ok(HumanDuration::from_secs(1)));
        assert_eq!(report_interval("100ms"), Ok(HumanDuration::from_millis(100)));
        assert_eq!(report_interval("10m"), Ok(HumanDuration::from_secs(600)));
        for bad in ["50ms", "11m", "0s", "soon", ""] {
            assert!(report_interval(bad).is_err(), "{bad:?} accepted");
        }
    }
}
