//! `outrider sim`: a simulated fleet of in-process agents speaking the real protocol to a
//! real manager (PRODUCT.md §5).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use outrider_model::HumanDuration;
use outrider_sim::{
    Defect, FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, seed_catalog,
};
use serde::Serialize;

use super::print_stdout;
use crate::cli::{ConnectArgs, OutputFormat};

/// Flags of `outrider sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Services to generate (and create in the tenant; existing ones are kept).
    #[arg(long, value_name = "N")]
    pub services: usize,
    /// Instances to simulate, one agent each (at least one per service).
    #[arg(long, value_name = "M")]
    pub instances: usize,
    /// Seed of the fleet generator: the same seed gives the same fleet.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub seed: u64,
    /// Bind every generated service to this sidecar version (created if missing).
    #[arg(long, value_name = "NAME@VERSION")]
    pub sidecar: Option<SidecarRef>,
    /// Make the instances a defect selects misbehave once they run its version (repeatable):
    /// `version=1.3.0,effect=crash`, optionally narrowed by `trait=KEY:VALUE` (repeatable),
    /// `service=NAME`, `region=R` and `sidecar=NAME`. Effects, with optional sizes: crash,
    /// errors:RATIO (added share of failed requests, bare 0.3), latency:FACTOR (bare 10),
    /// cpu:POINTS (added CPU points, bare 85), memory:MIB_PER_S (leak, bare 10).
    #[arg(long = "defect", value_name = "SPEC")]
    pub defects: Vec<Defect>,
    /// Stop by itself after this long (`30s`, `5m`); without it, run until Ctrl-C.
    #[arg(long)]
    pub duration: Option<HumanDuration>,
    /// Agents sharing one HTTP/2 connection (the manager allows 200 streams per connection).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub agents_per_connection: u16,
    /// Each agent reports its status on change and at least this often.
    #[arg(long, default_value = "30s")]
    pub report_interval: HumanDuration,
    /// Simulated time an upgrade takes (± 40 %).
    #[arg(long, default_value = "50ms")]
    pub apply_delay: HumanDuration,
    /// Deploys per minute across the fleet: an instance picked at random registers again with
    /// a new deploy id, as when its service is deployed (on-deploy targets then take effect).
    #[arg(long, value_name = "PER_MINUTE", default_value_t = 0.0, value_parser = deploy_rate)]
    pub deploy_rate: f64,
    /// Serve the simulated instances' metrics for Prometheus at http://ADDR/metrics
    /// (`127.0.0.1:0`: a free port; the address is printed): the figures of each agent's last
    /// report, refreshed every --report-interval.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The managers the agents sync with, `URL,URL,…` (several managers of one store: the
    /// agents are spread over them and move to the next when one fails); default: --manager.
    #[arg(long, value_name = "URLS")]
    pub sync: Option<String>,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// What `outrider sim` prints on standard output when it stops.
#[derive(Debug, Serialize)]
struct Summary {
    services: usize,
    instances: usize,
    seed: u64,
    services_created: usize,
    defects: Vec<String>,
    connections: usize,
    connected_at_stop: usize,
    ran_s: f64,
}

/// The API token, which agents need (no anonymous sync).
fn token(conn: &ConnectArgs) -> anyhow::Result<String> {
    conn.token()?.context("agents need a token: give --token-file FILE (or set OUTRIDER_TOKEN)")
}

/// Waits for Ctrl-C or SIGTERM, or for `duration` when given.
async fn stop_signal(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = super::server::shutdown_signal() => {}
        },
        None => super::server::shutdown_signal().await,
    }
}

/// Prints "N/M agents connected" to stderr whenever the count changes (at most once a
/// second), until every agent is connected.
async fn report_connections(fleet: &SimFleet) {
    let total = fleet.agents().len();
    let mut last = usize::MAX;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let connected = fleet.connected();
        if connected != last {
            eprintln!("{connected}/{total} agents connected");
            last = connected;
        }
        if connected == total {
            return;
        }
    }
}

/// Each defect of `options` with the number of instances of `spec` it selects.
fn selected_by_defect<'a>(spec: &FleetSpec, options: &'a SimFleetOptions) -> Vec<(&'a Defect, usize)> {
    let no_traits = Default::default();
    options
        .defects
        .iter()
        .map(|d| {
            let selected = spec
                .instances
                .iter()
                .filter(|i| d.selects(i, options.service_traits.get(&i.service).unwrap_or(&no_traits)))
                .count();
            (d, selected)
        })
        .collect()
}

/// A deploy rate: a finite number of deploys per minute, 0 to 60,000.
fn deploy_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=60_000.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a rate between 0 and 60000 deploys per minute")),
    }
}

/// Runs `outrider sim` until Ctrl-C, SIGTERM or `--duration`.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let spec =
        FleetSpec::generate(FleetParams { services: args.services, instances: args.instances, seed: args.seed })?;
    let client = args.conn.client()?;
    let token = token(&args.conn)?;
    let tenant = &args.conn.tenant;

    let started = Instant::now();
    let sidecar = args.sidecar.as_ref().map(|s| format!(" bound to {s}")).unwrap_or_default();
    eprintln!("seeding {} services{sidecar} in tenant {tenant}…", spec.services.len());
    let seeded = seed_catalog(&client, tenant, &spec, args.sidecar.as_ref()).await?;
    eprintln!(
        "{} services created, {} existed ({:.1}s)",
        seeded.services_created,
        seeded.services_existing,
        started.elapsed().as_secs_f64()
    );

    let options = SimFleetOptions {
        agents_per_connection: usize::from(args.agents_per_connection),
        report_interval: args.report_interval.0,
        runtime: SimRuntimeOptions { apply_delay: args.apply_delay.0, jitter: args.apply_delay.0 * 2 / 5 },
        defects: args.defects.clone(),
        service_traits: spec.service_traits(),
        deploy_rate: args.deploy_rate,
        seed: args.seed,
        ..SimFleetOptions::default()
    };
    for (defect, selected) in selected_by_defect(&spec, &options) {
        if selected == 0 {
            eprintln!("warning: defect {defect} selects no instance (check its service=, region= and trait=)");
        } else {
            let instances = if selected == 1 { "instance misbehaves" } else { "instances misbehave" };
            eprintln!("defect {defect}: {selected} {instances} once they run {}", defect.version);
        }
    }
    let managers = args.sync.as_deref().unwrap_or(client.base_url());
    let fleet = SimFleet::start(managers, &token, tenant, &spec.instances, &options)?;
    eprintln!("starting {} agents over {} connections…", fleet.agents().len(), fleet.connections());
    if let Some(addr) = args.metrics_listen {
        let bound = fleet.serve_metrics(addr).await?;
        eprintln!("metrics of the simulated instances at http://{bound}/metrics");
    }
    let running = Instant::now();
    let stop = stop_signal(args.duration.map(|d| d.0));
    tokio::pin!(stop);
    tokio::select! {
        () = report_connections(&fleet) => {
            eprintln!("all agents connected in {:.1}s; {}", running.elapsed().as_secs_f64(),
                if args.duration.is_some() { "running until --duration ends" } else { "Ctrl-C to stop" });
            (&mut stop).await;
        }
        () = &mut stop => {}
    }

    let summary = Summary {
        services: spec.services.len(),
        instances: spec.instances.len(),
        seed: args.seed,
        services_created: seeded.services_created,
        defects: args.defects.iter().map(ToString::to_string).collect(),
        connections: fleet.connections(),
        connected_at_stop: fleet.connected(),
        ran_s: running.elapsed().as_secs_f64(),
    };
    eprintln!("stopping {} agents…", fleet.agents().len());
    fleet.shutdown().await;
    let text = match args.conn.output {
        OutputFormat::Json => serde_json::to_string_pretty(&summary)?,
        OutputFormat::Table => format!(
            "simulated {} instances of {} services (seed {}) for {:.1}s; {} connected at stop",
            summary.instances, summary.services, summary.seed, summary.ran_s, summary.connected_at_stop
        ),
    };
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(line: &str) -> Result<SimArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("sim").chain(line.split_whitespace())).map(|c| c.sim)
    }

    #[test]
    fn defects_are_repeatable_and_parsed_strictly() {
        let args = parse(
            "--services 2 --instances 4 --defect version=1.3.0,trait=protocol:http,effect=crash \
             --defect version=1.3.0,effect=latency,region=boe",
        )
        .unwrap();
        assert_eq!(args.defects.len(), 2);
        assert_eq!(args.defects[0].to_string(), "version=1.3.0,effect=crash,trait=protocol:http");
        assert_eq!(args.defects[1].region.as_deref(), Some("boe"));
        assert!(parse("--services 2 --instances 4").unwrap().defects.is_empty());
        let args = parse("--services 2 --instances 4 --metrics-listen 127.0.0.1:0").unwrap();
        assert_eq!(args.metrics_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert!(parse("--services 2 --instances 4 --metrics-listen localhost").is_err());

        for (bad, says) in [
            ("version=1.3.0,effect=melt", "unknown effect \"melt\""),
            ("version=1.3.0,effect=crash,zone=a", "unknown key \"zone\""),
            ("effect=crash", "needs version="),
        ] {
            let err = parse(&format!("--services 2 --instances 4 --defect {bad}")).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn counts_the_instances_each_defect_selects() {
        let spec = FleetSpec::generate(FleetParams { services: 30, instances: 300, seed: 5 }).unwrap();
        let defect = |s: &str| s.parse::<Defect>().unwrap();
        let options = SimFleetOptions {
            defects: vec![
                defect("version=1.3.0,effect=crash"),
                defect("version=1.3.0,effect=crash,trait=protocol:http"),
                defect("version=1.3.0,effect=crash,region=boe"),
                defect("version=1.3.0,effect=crash,service=no-such-service"),
            ],
            service_traits: spec.service_traits(),
            ..SimFleetOptions::default()
        };
        let counts: Vec<usize> = selected_by_defect(&spec, &options).into_iter().map(|(_, n)| n).collect();
        let http = spec
            .instances
            .iter()
            .filter(|i| spec.services.iter().any(|s| s.name == i.service && s.traits["protocol"] == "http"))
            .count();
        let boe = spec.instances.iter().filter(|i| i.labels.region == "boe").count();
        assert_eq!(counts, [300, http, boe, 0]);
        assert!(http > 0 && http < 300 && boe > 0);
    }
}
