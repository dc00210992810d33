//! `outrider bench storm`: a reconnect storm. A manager started here (embedded store, loopback
//! port) takes N simulated agents (in child processes); it is killed (`kill -9`) and started
//! again on the same data dir and port, and every agent reconnects with its jittered
//! backoff. Figures: the time until every agent is synced again (a desired state arrived on
//! its new stream), and the API's latency meanwhile, probed at a fixed rate.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use outrider_client::{Client, OutputFormat};
use outrider_model::HumanDuration;
use outrider_sim::stats::LatencySummary;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    hosts::{AgentHosts, HostSpec},
    ms, prepare, run_name, server_rss, wait_counts,
};
use crate::harness::{Child, PROCESS_GRACE, free_ports, spawn_manager, wait_manager_ready};

/// Flags of `outrider bench storm`.
#[derive(clap::Args, Debug)]
pub struct StormArgs {
    /// Simulated agents.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub agents: u32,
    /// Processes the agents run in.
    #[arg(long, value_name = "P", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: u32,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub agents_per_connection: u16,
    /// How long the agents may take to connect, and to resync after the restart.
    #[arg(long, default_value = "180s")]
    pub timeout: HumanDuration,
    /// Time between two API probes during the storm.
    #[arg(long, default_value = "20ms")]
    pub probe_every: HumanDuration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The result of `outrider bench storm`.
#[derive(Debug, Serialize)]
struct StormResult {
    agents: usize,
    processes: usize,
    connections: usize,
    /// Until every agent first held its desired state.
    connect_s: f64,
    /// The manager's resident memory per connected agent (over the memory before they came).
    server_rss_per_agent_bytes: u64,
    /// From the kill until the new manager answered `/readyz`.
    restart_s: f64,
    /// From the kill until every agent was synced again.
    resync_s: f64,
    /// API probes (`GET` of the service) from the restart until every agent was synced.
    api_probes: usize,
    /// Probes that failed or took over 5 s.
    api_errors: usize,
    api_p50_ms: f64,
    api_p99_ms: f64,
    api_max_ms: f64,
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

/// The manager of the storm, and what starting it again takes.
struct Manager {
    exe: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    url: String,
    logs: std::path::PathBuf,
    child: Child,
    starts: u32,
}

impl Manager {
    /// Starts `outrider server` on a free loopback port in `root`; returns it, a client of
    /// its API and the admin token.
    async fn start(root: &std::path::Path) -> anyhow::Result<(Self, Client, String)> {
        let exe = std::env::current_exe().context("cannot find the outrider executable")?;
        let dir = root.join("manager");
        std::fs::create_dir_all(&dir)?;
        let port = free_ports(1)?[0];
        let url = format!("http://127.0.0.1:{port}");
        let mut child = spawn_manager(&exe, &dir, port, root.join("manager-1.log"))?;
        let (client, token) = wait_manager_ready(&mut child, &url, &dir, Duration::from_secs(30)).await?;
        let token = token.context("the manager wrote no admin token")?;
        Ok((Self { exe, dir, port, url, logs: root.to_owned(), child, starts: 1 }, client, token))
    }

    /// `kill -9`, then a new manager on the same data dir and port, until it is ready.
    async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().await;
        self.starts += 1;
        let log = self.logs.join(format!("manager-{}.log", self.starts));
        self.child = spawn_manager(&self.exe, &self.dir, self.port, log)?;
        wait_manager_ready(&mut self.child, &self.url, &self.dir, Duration::from_secs(60)).await?;
        Ok(())
    }
}

/// Runs the storm.
pub async fn run(args: StormArgs) -> anyhow::Result<String> {
    let root = tempfile::Builder::new().prefix("outrider-storm-").tempdir()?;
    let (mut manager, client, token) = Manager::start(root.path()).await?;
    let outcome = storm(&args, &mut manager, &client, &token).await;
    manager.child.stop(PROCESS_GRACE).await;
    let result = outcome?;
    Ok(match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => format!(
            "reconnect storm of {} agents ({} connections from {} processes): after kill -9 and restart the \
             manager was ready in {:.2} s and every agent synced again {:.2} s after the kill; API meanwhile: \
             p50 {} ms, p99 {} ms, max {} ms over {} probes ({} failed); server RSS {:.1} KiB per agent",
            result.agents,
            result.connections,
            result.processes,
            result.restart_s,
            result.resync_s,
            result.api_p50_ms,
            result.api_p99_ms,
            result.api_max_ms,
            result.api_probes,
            result.api_errors,
            result.server_rss_per_agent_bytes as f64 / 1024.0,
        ),
    })
}

async fn storm(args: &StormArgs, manager: &mut Manager, client: &Client, token: &str) -> anyhow::Result<StormResult> {
    let tenant = outrider_model::DEFAULT_TENANT;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let name = run_name("bench-storm");
    let version = prepare(client, tenant, &name, 0).await?.remove(0);
    let url = manager.url.clone();
    let rss_before = server_rss(&http, &url).await?;
    let spec = HostSpec {
        sync: url.clone(),
        token: token.to_owned(),
        tenant: tenant.to_owned(),
        service: name.clone(),
        agents: args.agents,
        agents_per_connection: args.agents_per_connection,
        apply_delay: Duration::from_millis(50),
        ca_file: None,
    };
    let total = args.agents as usize;
    let started = Instant::now();
    let mut hosts = AgentHosts::spawn(&spec, args.processes)?;
    let (connections, processes) = (hosts.connections, hosts.processes());
    eprintln!("starting {total} agents in {processes} processes over {connections} connections…");
    let outcome = async {
        wait_counts(&mut hosts, total, &name, &version, args.timeout.0, |c| c.synced == total && c.holding == total)
            .await?;
        let connect = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = server_rss(&http, &url).await?;

        eprintln!("kill -9 of the manager, then a restart on the same data dir and port…");
        let killed = Instant::now();
        manager.kill_and_restart().await?;
        let restart = killed.elapsed();
        let stop = CancellationToken::new();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let prober =
            tokio::spawn(probe(client.clone(), name.clone(), args.probe_every.0, probes.clone(), stop.clone()));
        let resynced = wait_counts(&mut hosts, total, &name, &version, args.timeout.0, |c| c.synced == total)
            .await
            .map(|_| killed.elapsed());
        stop.cancel();
        let _ = prober.await;
        let probes = std::mem::take(&mut *probes.lock().unwrap_or_else(|p| p.into_inner()));
        anyhow::Ok((connect, rss, restart, resynced?, probes))
    }
    .await;
    hosts.shutdown().await;
    let (connect, rss, restart, resync, probes) = outcome?;
    let errors = probes.iter().filter(|p| p.is_none()).count();
    let latencies: Vec<Duration> = probes.iter().flatten().copied().collect();
    let api = LatencySummary::of(latencies).context("no API probe answered during the storm")?;
    Ok(StormResult {
        agents: total,
        processes,
        connections,
        connect_s: seconds(connect),
        server_rss_per_agent_bytes: rss.saturating_sub(rss_before) / total as u64,
        restart_s: seconds(restart),
        resync_s: seconds(resync),
        api_probes: probes.len(),
        api_errors: errors,
        api_p50_ms: ms(api.p50),
        api_p99_ms: ms(api.p99),
        api_max_ms: ms(api.max),
    })
}

/// `GET`s the service every `every` until `stop`, one at a time; a probe that fails or takes
/// over 5 s is `None`.
async fn probe(
    client: Client,
    service: String,
    every: Duration,
    out: Arc<Mutex<Vec<Option<Duration>>>>,
    stop: CancellationToken,
) {
    let tenant = outrider_model::DEFAULT_TENANT;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), client.get_service(tenant, &service)).await;
        let sample = matches!(answer, Ok(Ok(_))).then(|| t.elapsed());
        out.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
    }
}
