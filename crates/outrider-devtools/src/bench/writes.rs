//! `outrider bench writes`: API write throughput of one manager — services created through
//! `POST /services` (each a store transaction with its event) by concurrent clients.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use outrider_client::{ConnectArgs, OutputFormat};
use outrider_model::{Priority, Service};
use outrider_sim::stats::LatencySummary;
use serde::Serialize;

/// Flags of `outrider bench writes`.
#[derive(clap::Args, Debug)]
pub struct WritesArgs {
    /// Writes in all.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub writes: u32,
    /// Writers at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// The figures of `outrider bench writes`.
#[derive(Debug, Serialize)]
struct WritesResult {
    writes: u32,
    concurrency: u32,
    writes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs the benchmark.
pub async fn run(args: WritesArgs) -> anyhow::Result<String> {
    let client = args.conn.client()?;
    let tenant = args.conn.tenant.clone();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let prefix = format!("bench-w-{:08x}", nanos ^ std::process::id().rotate_left(16));
    let started = Instant::now();
    let writers = (0..args.concurrency).map(|w| {
        let (client, tenant, prefix) = (client.clone(), tenant.clone(), prefix.clone());
        let mine = (w..args.writes).step_by(args.concurrency as usize);
        tokio::spawn(async move {
            let mut took = Vec::new();
            for i in mine {
                let service = Service {
                    name: format!("{prefix}-{i:07}"),
                    priority: Priority::P2,
                    traits: Default::default(),
                    protected: false,
                    protected_periods: Vec::new(),
                };
                let t = Instant::now();
                client.create_service(&tenant, &service).await.with_context(|| format!("write {i}"))?;
                took.push(t.elapsed());
            }
            anyhow::Ok(took)
        })
    });
    let mut samples = Vec::new();
    for w in futures::future::join_all(writers).await {
        samples.extend(w.context("a writer panicked")??);
    }
    let elapsed = started.elapsed();
    let summary = LatencySummary::of(samples).context("no writes")?;
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let result = WritesResult {
        writes: args.writes,
        concurrency: args.concurrency,
        writes_per_s: (f64::from(args.writes) / elapsed.as_secs_f64()).round(),
        p50_ms: ms(summary.p50),
        p99_ms: ms(summary.p99),
        max_ms: ms(summary.max),
    };
    Ok(match args.conn.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => format!(
            "{} writes by {} writers: {} writes/s, latency p50 {} ms, p99 {} ms, max {} ms\n",
            result.writes, result.concurrency, result.writes_per_s, result.p50_ms, result.p99_ms, result.max_ms
        ),
    })
}
