//! `outrider bench analysis`: how well the judge tells bad versions from good ones. A
//! labelled corpus of plans (healthy target versions, and each effect at several magnitudes
//! on a random trait subset of services) runs through the real manager — REST API, store,
//! planner, executor, reconciler and judge — against a simulated fleet with its noise
//! (per-service levels, daily load, spikes, business deploys), on tokio's paused clock, so
//! that hours of bakes pass in seconds. Printed per effect and magnitude: recall, detection
//! delay in bakes and blast radius; over every batch without an affected instance: the rate
//! of false blocks and of blocks for want of evidence; each next to its target.

mod corpus;
mod trial;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use outrider_client::OutputFormat;
use outrider_model::{HumanDuration, Verdict};
use serde::Serialize;

pub use corpus::{Case, EFFECTS, Kind, Shape, generate, in_target, label};
pub use trial::{BatchResult, End, Setup, Trial};

/// Most plans one run may hold.
pub const MAX_PLANS: u32 = 5_000;
/// Most services and instances of one plan's fleet.
pub const MAX_SERVICES: u32 = 1_000;
/// Most instances of one plan's fleet.
pub const MAX_INSTANCES: u32 = 5_000;

/// The judge's targets.
const RECALL_TARGET: f64 = 0.95;
const FALSE_BLOCK_TARGET: f64 = 0.01;
const DELAY_TARGET_BAKES: f64 = 2.0;
const BLAST_TARGET_PERCENT: f64 = 0.5;

/// Flags of `outrider bench analysis`.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalysisArgs {
    /// Plans in the corpus: every fourth is healthy, the others go through the effects and
    /// magnitudes in turn (14 of them), so 56 plans give each magnitude three defective plans.
    #[arg(long, value_name = "N", default_value_t = 28, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PLANS)))]
    pub plans: u32,
    /// Services of each plan's simulated fleet.
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=i64::from(MAX_SERVICES)))]
    pub services: u32,
    /// Instances of each plan's simulated fleet (at least one per service).
    #[arg(long, value_name = "M", default_value_t = 300, value_parser = clap::value_parser!(u32).range(2..=i64::from(MAX_INSTANCES)))]
    pub instances: u32,
    /// Seed of the corpus (which effects where, the fleets, their noise).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub seed: u64,
    /// Bake of every batch (plan time), 1m to 1h.
    #[arg(long, default_value = "5m")]
    pub bake: HumanDuration,
    /// How often each simulated agent reports (plan time); at least 8 reports must fit in a
    /// bake.
    #[arg(long, default_value = "15s")]
    pub report_interval: HumanDuration,
    /// Business deploys per instance and day (each restarts the business process cold).
    #[arg(long, value_name = "N", default_value_t = 2.0)]
    pub deploys_per_day: f64,
    /// Plans run side by side, each with its own manager and fleet on its own thread.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub workers: u16,
    /// Also print every plan's outcome and batches (JSON only).
    #[arg(long)]
    pub trials: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl AnalysisArgs {
    /// The corpus's fleet shape and trial setup, or why the flags cannot be used.
    pub fn setup(&self) -> anyhow::Result<Setup> {
        anyhow::ensure!(
            self.instances >= self.services,
            "--instances {} is fewer than --services {}: every service needs an instance",
            self.instances,
            self.services
        );
        let (bake, every) = (self.bake.0, self.report_interval.0);
        anyhow::ensure!(
            (Duration::from_secs(60)..=Duration::from_secs(3600)).contains(&bake),
            "--bake {} must be between 1m and 1h",
            self.bake
        );
        anyhow::ensure!(
            every >= Duration::from_secs(1) && every * 8 <= bake,
            "--report-interval {} must be at least 1s and fit 8 times in the bake ({})",
            self.report_interval,
            self.bake
        );
        anyhow::ensure!(
            self.deploys_per_day.is_finite() && (0.0..=48.0).contains(&self.deploys_per_day),
            "--deploys-per-day {} must be between 0 and 48",
            self.deploys_per_day
        );
        Ok(Setup {
            shape: Shape { services: self.services as usize, instances: self.instances as usize },
            bake,
            report_interval: every,
            deploys_per_day: self.deploys_per_day,
        })
    }
}

/// The figures of one effect at one magnitude.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `errors +0.01`, `latency x1.5`, …
    pub effect: String,
    /// Whether the targets cover this magnitude.
    pub in_target: bool,
    /// Defective plans run.
    pub plans: usize,
    /// Plans blocked by a failed batch holding an affected instance.
    pub detected: usize,
    /// `detected / plans`.
    pub recall: f64,
    /// Bakes from the first batch holding an affected instance to the block (detected plans).
    pub delay_bakes_median: Option<f64>,
    /// The largest such delay.
    pub delay_bakes_max: Option<f64>,
    /// Instances that had run the bad version when the plan blocked, in % of the fleet
    /// (detected plans).
    pub blast_radius_percent_median: Option<f64>,
    /// The largest blast radius.
    pub blast_radius_percent_max: Option<f64>,
    /// Plans with at least one block for want of evidence.
    pub inconclusive_plans: usize,
    /// The metrics that caught the defect, with how many plans each.
    pub caught_by: BTreeMap<String, usize>,
    /// Targets (`None` when the magnitude is below them): recall ≥ 95 %.
    pub recall_met: Option<bool>,
    /// Detection within 2 bakes (the largest delay).
    pub delay_met: Option<bool>,
    /// Blast radius ≤ 0.5 % of the fleet (the largest).
    pub blast_radius_met: Option<bool>,
}

/// The figures over batches without an affected instance (all batches of healthy plans, and
/// those of defective plans that hold no affected service).
#[derive(Debug, Clone, Serialize)]
pub struct Healthy {
    /// Healthy plans run.
    pub plans: usize,
    /// Of those, plans that completed without any block.
    pub plans_unblocked: usize,
    /// Judged batches without an affected instance.
    pub batches: usize,
    /// Of those, batches that failed (false blocks).
    pub false_blocks: usize,
    /// `false_blocks / batches`.
    pub false_block_rate: f64,
    /// Of those, batches that blocked for want of evidence.
    pub inconclusive_blocks: usize,
    /// `inconclusive_blocks / batches`.
    pub inconclusive_rate: f64,
    /// The metrics of the false blocks, with how many each.
    pub false_block_metrics: BTreeMap<String, usize>,
    /// False blocks ≤ 1 % of healthy batches.
    pub false_block_met: bool,
}

/// What `outrider bench analysis` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The corpus.
    pub seed: u64,
    /// Plans run.
    pub plans: usize,
    /// Services of each fleet.
    pub services: usize,
    /// Instances of each fleet.
    pub instances: usize,
    /// Bake of every batch, in seconds.
    pub bake_s: u64,
    /// Reports of every agent, in seconds.
    pub report_interval_s: u64,
    /// Business deploys per instance and day.
    pub deploys_per_day: f64,
    /// Per effect and magnitude.
    pub effects: Vec<Row>,
    /// Over batches without an affected instance.
    pub healthy: Healthy,
    /// Plans given up (too many false alarms, or too long).
    pub gave_up: usize,
    /// Plan time of the corpus, in hours.
    pub plan_hours: f64,
    /// Machine time of the run.
    pub wall_s: f64,
    /// Every plan's outcome (with `--trials`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trials: Option<Vec<Trial>>,
}

/// Runs `outrider bench analysis`.
pub async fn run(args: AnalysisArgs) -> anyhow::Result<String> {
    let setup = args.setup()?;
    let wall = Instant::now();
    let cases = generate(args.plans, args.seed, setup.shape)?;
    let workers = usize::from(args.workers);
    let trials = tokio::task::spawn_blocking(move || run_corpus(cases, setup, workers, true))
        .await
        .context("the benchmark's workers stopped")??;
    let mut figures = figures(&trials, &setup, args.seed);
    figures.wall_s = (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    if args.trials {
        figures.trials = Some(trials);
    }
    Ok(match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&figures)?,
        OutputFormat::Table => render(&figures),
    })
}

/// Runs every case on `workers` threads, each trial on a fresh current-thread runtime whose
/// clock is paused; results in corpus order. With `progress`, one line per plan on stderr.
pub fn run_corpus(cases: Vec<Case>, setup: Setup, workers: usize, progress: bool) -> anyhow::Result<Vec<Trial>> {
    let total = cases.len();
    let cases = Arc::new(cases);
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, anyhow::Result<Trial>)>();
    let mut threads = Vec::new();
    for w in 0..workers.clamp(1, total.max(1)) {
        let (cases, next, stop, tx) = (cases.clone(), next.clone(), stop.clone(), tx.clone());
        let thread = std::thread::Builder::new().name(format!("bench-analysis-{w}")).spawn(move || {
            // The managers' and agents' logs would drown the progress lines: only with
            // OUTRIDER_LOG set do they go where the process's logs go.
            let _quiet = std::env::var_os("OUTRIDER_LOG")
                .is_none()
                .then(|| tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default()));
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { return };
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .context("cannot build a runtime")
                    .and_then(|rt| rt.block_on(trial::run(case, &setup)));
                if tx.send((i, result)).is_err() {
                    return;
                }
            }
        })?;
        threads.push(thread);
    }
    drop(tx);
    let mut results: Vec<Option<Trial>> = vec![None; total];
    let mut failure = None;
    let mut done = 0;
    for (i, result) in rx {
        match result {
            Ok(t) => {
                done += 1;
                if progress {
                    eprintln!("[{done:>4}/{total}] {}", describe(&t));
                }
                results[i] = Some(t);
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(e.context(format!("plan {i} of the corpus")));
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    results.into_iter().enumerate().map(|(i, t)| t.with_context(|| format!("plan {i} was not run"))).collect()
}

/// One line about a trial, for progress.
fn describe(t: &Trial) -> String {
    let on = if t.traits.is_empty() {
        String::new()
    } else {
        format!(" on {} ({} services, {} instances)", t.traits, t.affected_services, t.affected_instances)
    };
    let fail = t.batches.iter().filter(|b| !b.affected && b.verdict == Some(Verdict::Fail)).count();
    let what = match t.end {
        End::Detected => format!(
            "caught by {} after {} bakes, blast radius {} ({:.1} %)",
            t.caught_by.as_deref().unwrap_or("?"),
            t.delay_bakes.map_or_else(|| "?".to_owned(), |d| format!("{d:.2}")),
            t.blast_radius,
            percent(t.blast_radius, t.fleet_instances)
        ),
        End::Completed => format!("completed ({} batches)", t.batches.len()),
        End::GaveUp => "given up".to_owned(),
    };
    format!(
        "{}{on}: {what}; {fail} false blocks, {} approvals; {:.0} plan-min in {:.1} s",
        t.kind, t.approvals, t.plan_minutes, t.wall_s
    )
}

fn percent(part: u64, whole: usize) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

/// The median of `v` (the mean of the middle two for an even count), `None` when empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().max_by(f64::total_cmp)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The figures of `trials`.
pub fn figures(trials: &[Trial], setup: &Setup, seed: u64) -> Figures {
    let effects = EFFECTS
        .iter()
        .filter_map(|&e| {
            let name = Kind::Defect(e).to_string();
            let of: Vec<&Trial> = trials.iter().filter(|t| t.kind == name).collect();
            (!of.is_empty()).then(|| row(e, &of))
        })
        .collect();
    let healthy_plans: Vec<&Trial> = trials.iter().filter(|t| t.kind == Kind::Healthy.to_string()).collect();
    let clean = trials.iter().flat_map(|t| &t.batches).filter(|b| !b.affected && b.verdict.is_some());
    let (mut batches, mut false_blocks, mut inconclusive) = (0, 0, 0);
    let mut false_block_metrics = BTreeMap::new();
    for b in clean {
        batches += 1;
        match b.verdict {
            Some(Verdict::Fail) => {
                false_blocks += 1;
                *false_block_metrics.entry(b.metric.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
            }
            Some(Verdict::Inconclusive) => inconclusive += 1,
            _ => {}
        }
    }
    let rate = |n: usize| if batches == 0 { 0.0 } else { round(n as f64 / batches as f64, 4) };
    let healthy = Healthy {
        plans: healthy_plans.len(),
        plans_unblocked: healthy_plans.iter().filter(|t| t.end == End::Completed && t.approvals == 0).count(),
        batches,
        false_blocks,
        false_block_rate: rate(false_blocks),
        inconclusive_blocks: inconclusive,
        inconclusive_rate: rate(inconclusive),
        false_block_metrics,
        false_block_met: rate(false_blocks) <= FALSE_BLOCK_TARGET,
    };
    Figures {
        seed,
        plans: trials.len(),
        services: setup.shape.services,
        instances: setup.shape.instances,
        bake_s: setup.bake.as_secs(),
        report_interval_s: setup.report_interval.as_secs(),
        deploys_per_day: setup.deploys_per_day,
        effects,
        healthy,
        gave_up: trials.iter().filter(|t| t.end == End::GaveUp).count(),
        plan_hours: round(trials.iter().map(|t| t.plan_minutes).sum::<f64>() / 60.0, 1),
        wall_s: 0.0,
        trials: None,
    }
}

fn row(e: outrider_sim::Effect, of: &[&Trial]) -> Row {
    let detected: Vec<&&Trial> = of.iter().filter(|t| t.end == End::Detected).collect();
    let delays: Vec<f64> = detected.iter().filter_map(|t| t.delay_bakes).collect();
    let blast: Vec<f64> = detected.iter().map(|t| round(percent(t.blast_radius, t.fleet_instances), 2)).collect();
    let mut caught_by = BTreeMap::new();
    for t in &detected {
        *caught_by.entry(t.caught_by.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
    }
    let recall = round(detected.len() as f64 / of.len().max(1) as f64, 3);
    let target = in_target(e);
    let (delay_max, blast_max) = (max(&delays), max(&blast));
    Row {
        effect: label(e),
        in_target: target,
        plans: of.len(),
        detected: detected.len(),
        recall,
        delay_bakes_median: median(delays.clone()).map(|v| round(v, 2)),
        delay_bakes_max: delay_max,
        blast_radius_percent_median: median(blast.clone()).map(|v| round(v, 2)),
        blast_radius_percent_max: blast_max,
        inconclusive_plans: of
            .iter()
            .filter(|t| t.batches.iter().any(|b| b.verdict == Some(Verdict::Inconclusive)))
            .count(),
        caught_by,
        recall_met: target.then_some(recall >= RECALL_TARGET),
        delay_met: target.then_some(delay_max.is_some_and(|d| d <= DELAY_TARGET_BAKES)),
        blast_radius_met: target.then_some(blast_max.is_some_and(|b| b <= BLAST_TARGET_PERCENT)),
    }
}

/// The human table.
fn render(f: &Figures) -> String {
    use comfy_table::{ContentArrangement, Table, presets};
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(vec![
        "effect",
        "plans",
        "recall",
        "delay (bakes) med/max",
        "blast radius % med/max",
        "inconclusive",
        "caught by",
    ]);
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v}"));
    let met = |m: Option<bool>| match m {
        Some(true) => " met",
        Some(false) => " MISSED",
        None => "",
    };
    for r in &f.effects {
        t.add_row(vec![
            r.effect.clone(),
            r.plans.to_string(),
            format!("{:.0} %{}", r.recall * 100.0, met(r.recall_met)),
            format!("{}/{}{}", opt(r.delay_bakes_median), opt(r.delay_bakes_max), met(r.delay_met)),
            format!(
                "{}/{}{}",
                opt(r.blast_radius_percent_median),
                opt(r.blast_radius_percent_max),
                met(r.blast_radius_met)
            ),
            r.inconclusive_plans.to_string(),
            r.caught_by.iter().map(|(m, n)| format!("{m}:{n}")).collect::<Vec<_>>().join(" "),
        ]);
    }
    let h = &f.healthy;
    let false_metrics = h.false_block_metrics.iter().map(|(m, n)| format!("{m}:{n}")).collect::<Vec<_>>().join(" ");
    format!(
        "{t}\n\nhealthy batches (no affected instance): {} judged, {} false blocks{} ({:.2} %, target <= 1 %:{}), \
         {} blocked for want of evidence ({:.2} %)\nhealthy plans: {} of {} completed without a block\n\
         targets: recall >= 95 % for errors >= +0.01, latency >= x1.5, cpu >= +30, memory >= 2 MiB/s \
         (and crash); detection within 2 bakes; blast radius <= 0.5 % of the fleet\n\
         {} plans ({} gave up) on fleets of {} services / {} instances, bake {} s, reports every {} s, {} deploys per \
         instance and day, seed {}: {} plan-hours in {} s",
        h.batches,
        h.false_blocks,
        if false_metrics.is_empty() { String::new() } else { format!(" [{false_metrics}]") },
        h.false_block_rate * 100.0,
        met(Some(h.false_block_met)),
        h.inconclusive_blocks,
        h.inconclusive_rate * 100.0,
        h.plans_unblocked,
        h.plans,
        f.plans,
        f.gave_up,
        f.services,
        f.instances,
        f.bake_s,
        f.report_interval_s,
        f.deploys_per_day,
        f.seed,
        f.plan_hours,
        f.wall_s
    )
}
