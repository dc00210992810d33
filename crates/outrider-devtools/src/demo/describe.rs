//! How the demo says what it saw: batch states, verdicts and their evidence, incidents, the
//! load on the sidecars and the closing summary.

use super::*;

/// A state (of a batch, a verdict) as the API spells it: `applying`, `rolled_back`.
pub(super) fn spelled<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `1 instance (checkout/boe/prod)`.
pub(super) fn describe_batch(b: &Batch) -> String {
    let n = b.instance_count();
    let cells: Vec<String> = b.cells.iter().map(|c| format!("{}/{}/{}", c.service, c.region, c.env)).collect();
    format!("{n} instance{} ({})", if n == 1 { "" } else { "s" }, cells.join(", "))
}

/// Whether the instance is one of the batch's (in a phase of `stage`).
pub(super) fn holds(b: &Batch, stage: &str, spec: &InstanceSpec) -> bool {
    (stage == "all" || stage == spec.stage)
        && b.cells.iter().any(|c| c.service == SERVICE && c.region == spec.region && c.env == spec.env)
}

/// What the judge compared in a batch, a line per deciding comparison:
/// `error_ratio      canary 0.09     vs baseline 0        (5 vs 10 samples, p 1.8e-4): fail`.
pub(super) fn describe_analysis(a: &BatchAnalysis) -> Vec<String> {
    a.metrics
        .iter()
        .map(|e| &e.verdict)
        .filter(|v| v.decides)
        .map(|v| {
            let value = |s: &Side| s.value.map_or_else(|| "none".to_owned(), significant);
            let noun = match v.comparison {
                Comparison::Baseline => "baseline",
                Comparison::Before => "before  ",
            };
            let p = v.p_value.map(|p| format!(", p {p:.1e}")).unwrap_or_default();
            format!(
                "          {:<16} canary {:<8} vs {noun} {:<8} ({} vs {} samples{p}): {}",
                v.metric,
                value(&v.canary),
                value(&v.baseline),
                v.canary.samples,
                v.baseline.samples,
                spelled(&v.outcome)
            )
        })
        .collect()
}

/// An incident in a few lines: what failed where, then for a metric the evidence — each
/// side's value with its samples and instances, the test, its p-value and the effect.
pub(super) fn describe_incident(i: &Incident) -> Vec<String> {
    let service = i.service.as_deref().map(|s| format!(", service {s}")).unwrap_or_default();
    let head = format!("incident: {} on {} ({} batch {}{service})", i.metric, i.instances.join(", "), i.phase, i.batch);
    let pad = "          ";
    let (Some(comparison), Some(canary), Some(reference)) = (i.comparison, i.canary, i.baseline) else {
        return vec![
            format!("{head}: {}", i.summary),
            format!("{pad}upgraded {} vs baseline {}; test: {}", i.canary_value, i.baseline_value, i.test),
        ];
    };
    // The judge's sentence follows as the plan's reason for blocking.
    let mut lines = vec![head];
    let side = |s: &Side| {
        let value = s.value.map_or_else(|| "none".to_owned(), significant);
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!("{value:<8} ({} from {})", plural(s.samples, "sample"), plural(s.instances, "instance"))
    };
    let (noun, what) = match comparison {
        Comparison::Baseline => ("baseline", "the same service's instances not upgraded"),
        Comparison::Before => ("before  ", "the same instances before their upgrade"),
    };
    lines.push(format!("{pad}canary   {}: {} on {}", side(&canary), i.metric, i.instances.join(", ")));
    lines.push(format!("{pad}{noun} {}: {what}", side(&reference)));
    let p = i.p_value.map_or_else(|| "none".to_owned(), |p| format!("{p:.2e}"));
    let effect = i.effect.map_or_else(
        || "none".to_owned(),
        |e| {
            let relative = e.relative.map(|r| format!(", {:+.0} %", r * 100.0)).unwrap_or_default();
            let sign = if e.absolute > 0.0 { "+" } else { "" };
            format!("{sign}{}{relative}, Cliff's delta {:+.2}", significant(e.absolute), e.cliffs_delta)
        },
    );
    lines.push(format!("{pad}test: {}; p-value {p}; effect {effect}", i.test));
    lines
}

/// A number to four significant digits, without trailing zeros: `0.1012`, `1.5`, `0`.
pub(super) fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
}

/// The closing lines: what was measured.
pub(super) fn print_summary(report: &Report, clock: Clock) {
    let total = INSTANCES.len();
    let probe_of =
        |id: &str| report.probes.iter().find(|(p, _)| *p == id).map(|(_, p)| describe_probe(p)).unwrap_or_default();
    let move_of = |id: &str| report.moves.iter().find(|m| m.id == id);
    println!();
    match &report.rollback {
        None => {
            let phases: Vec<&str> = report.plan.phases.iter().map(|p| p.name.as_str()).collect();
            println!(
                "summary: plan {} moved {} of {total} instances of {SERVICE} from {SIDECAR} {OLD} to {} in {} phases ({}), \
                 {:.1} s from its creation to its completion; blast radius {}.",
                report.plan.id,
                report.moves.len(),
                report.target,
                phases.len(),
                phases.join(", then "),
                report.took.as_secs_f64(),
                report.plan.blast_radius
            );
            for spec in &INSTANCES {
                let Some(m) = move_of(spec.id) else { continue };
                println!(
                    "  {:<4} pid {} -> {}, running {} {} ms after its batch started; {}",
                    m.id,
                    m.old_pid,
                    m.new_pid,
                    report.target,
                    m.took.as_millis(),
                    probe_of(m.id)
                );
            }
        }
        Some((back, took)) => {
            println!(
                "summary: the defective version reached {} of {total} instances before the plan stopped itself; \
                 rolled back in {} ms.",
                report.plan.blast_radius,
                took.as_millis()
            );
            let why = report
                .plan
                .incidents
                .first()
                .map_or_else(|| report.plan.reason.clone(), |i| format!("{} on {}", i.metric, i.instances.join(", ")));
            let untouched: Vec<&str> = report.untouched.iter().map(|(id, _)| *id).collect();
            println!(
                "  the plan blocked itself {:.1} s after its creation ({why}); {} never touched (the same {OLD} processes throughout).",
                report.took.as_secs_f64(),
                if untouched.is_empty() { "no instance was".to_owned() } else { untouched.join(" and ") + " were" },
            );
            for spec in &INSTANCES {
                let id = spec.id;
                if let Some((_, pid)) = report.untouched.iter().find(|(u, _)| *u == id) {
                    println!("  {id:<4} untouched (pid {pid}); {}", probe_of(id));
                    continue;
                }
                let there = move_of(id).map_or_else(
                    || format!("never seen running {}", report.target),
                    |m| {
                        format!(
                            "pid {} -> {} ({}) after {} ms",
                            m.old_pid,
                            m.new_pid,
                            report.target,
                            m.took.as_millis()
                        )
                    },
                );
                let home = back.iter().find(|m| m.id == id).map_or_else(
                    || format!("not seen back on {OLD}"),
                    |m| format!("back on {OLD} (pid {}) {} ms after the rollback", m.new_pid, m.took.as_millis()),
                );
                println!("  {id:<4} {there}, {home}; {}", probe_of(id));
            }
        }
    }
    let (ok, errors, failed) =
        report.probes.iter().fold((0, 0, 0), |(o, e, f), (_, p)| (o + p.ok, e + p.errors, f + p.failed));
    let five = if errors > 0 { format!(", {errors} answered with a 5xx") } else { String::new() };
    println!(
        "  requests to the sidecars while the plan ran (one every {} ms each): {ok} answered{five}, {failed} failed",
        PROBE_EVERY.as_millis()
    );
    if errors > 0 {
        println!("  (the 5xx answers are the errors {} injects, on the instances that ran it)", report.target);
    }
    if let Some(line) = expected_outcome(report) {
        println!("{line}");
    }
    if failed > 0 {
        if report.defect == Some(Defect::Crash) {
            println!(
                "  (they failed while {} crashed and restarted, and during the restarts of the moves)",
                report.target
            );
        } else if report.rollback.is_some() {
            println!("  (they failed during the restarts of the moves)");
        } else {
            println!("  (the restart mode of the full phase stops the old process before it starts the new one)");
        }
    }
    println!("done in {:.1} s.", clock.0.elapsed().as_secs_f64());
}

/// With `--defect`: that the demo went as it should, in a sentence (the demo fails otherwise).
pub(super) fn expected_outcome(report: &Report) -> Option<String> {
    let defect = report.defect?;
    let (Some((back, _)), Some(i)) = (&report.rollback, report.plan.incidents.first()) else { return None };
    Some(format!(
        "as expected: {SIDECAR} {} ({}) stopped itself in batch {} of {} on {}, reached {} of {} instances, and the {} \
         it changed {} {OLD} again.",
        report.target,
        defect.what(),
        i.batch,
        i.phase,
        i.metric,
        report.plan.blast_radius,
        INSTANCES.len(),
        if back.len() == 1 { "instance".to_owned() } else { format!("{} instances", back.len()) },
        if back.len() == 1 { "runs" } else { "run" },
    ))
}

/// `answered 40 (versions seen: 1.0.0 -> 1.1.0), 5xx 4, failed 3, longest gap 45 ms`.
pub(super) fn describe_probe(p: &LoadStats) -> String {
    let gap = if p.failed > 0 { format!(", longest gap {} ms", p.longest_gap.as_millis()) } else { String::new() };
    let errors = if p.errors > 0 { format!(", 5xx {}", p.errors) } else { String::new() };
    let stopped = if p.timed_out { " (stopped at its time limit)" } else { "" };
    format!("answered {} (versions seen: {}){errors}, failed {}{gap}{stopped}", p.ok, p.versions.join(" -> "), p.failed)
}
