//! What the CLI prints about plans, simulations and freezes.

use comfy_table::Table;
use outrider_model::{Batch, BatchState, Cell, Event, Freeze, HumanDuration, Incident, Phase, Plan, Simulation};
use time::{OffsetDateTime, macros::format_description};

use super::{fields, or_dash, spelled, table, timestamp};

/// Cells named in a batch's row before the rest is cut.
const CELLS_SHOWN: usize = 2;
/// Instances named in an incident's row before the rest is cut.
const INSTANCES_SHOWN: usize = 3;

/// The cells of a batch in a few words: `checkout/boe/prod`, or
/// `3 cells: checkout/boe/prod, cart/boe/prod, …`.
fn cells(cells: &[Cell]) -> String {
    let name = |c: &Cell| format!("{}/{}/{}", c.service, c.region, c.env);
    match cells {
        [] => "-".to_owned(),
        [one] => name(one),
        _ => {
            let shown: Vec<String> = cells.iter().take(CELLS_SHOWN).map(name).collect();
            let more = if cells.len() > CELLS_SHOWN { ", …" } else { "" };
            format!("{} cells: {}{more}", cells.len(), shown.join(", "))
        }
    }
}

/// A figure without needless decimals: `3`, `0.3`, `0.0012`.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "0" || s == "-0" { format!("{v:.2e}") } else { s.to_owned() }
}

/// A time to the second (RFC 3339, without the fraction).
fn seconds(t: OffsetDateTime) -> String {
    timestamp(t.replace_nanosecond(0).unwrap_or(t))
}

/// `-` or the time to the second.
fn maybe_seconds(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "-".to_owned(), seconds)
}

/// One event of a watched plan on one line: `06:52:39Z  batch.state  batch 0 of gray: …`.
pub(in crate::cli) fn watch_event_line(e: &Event) -> String {
    let t = e.time.to_offset(time::UtcOffset::UTC);
    let clock = t.format(format_description!("[hour]:[minute]:[second]Z")).unwrap_or_else(|_| timestamp(t));
    if e.reason.is_empty() { format!("{clock}  {}", e.kind) } else { format!("{clock}  {}  {}", e.kind, e.reason) }
}

/// `done/total`.
fn done_of_total(plan: &Plan) -> String {
    format!("{}/{}", plan.counts.done, plan.counts.total)
}

/// A plan's state, with the reason it is in it.
fn state_and_reason(plan: &Plan) -> String {
    if plan.reason.is_empty() { plan.state.to_string() } else { format!("{} ({})", plan.state, plan.reason) }
}

/// The plans, one row each.
pub(in crate::cli) fn plans(plans: &[Plan]) -> Table {
    let mut t = table(&["ID", "NAME", "SIDECAR", "TARGET", "STATE", "DONE/TOTAL", "BLAST RADIUS"]);
    for p in plans {
        t.add_row(vec![
            p.id.clone(),
            or_dash(p.name.clone()),
            p.sidecar.clone(),
            p.target_version.clone(),
            p.state.to_string(),
            done_of_total(p),
            p.blast_radius.to_string(),
        ]);
    }
    t
}

/// The instances in scope a plan does not wait for, by reason (`2 gone, 1 protected service`).
fn accounted(plan: &Plan) -> String {
    or_dash(plan.accounted.iter().map(|(why, n)| format!("{n} {why}")).collect::<Vec<_>>().join(", "))
}

/// One line about a plan: what it moves, where it is, how big it is.
pub(in crate::cli) fn plan_summary(plan: &Plan) -> String {
    let batches: usize = plan.phases.iter().map(|p| p.batches.len()).sum();
    let name = if plan.name.is_empty() { String::new() } else { format!(" ({})", plan.name) };
    format!(
        "plan {}{name}: {} → {}, {}; {} phases, {batches} batches, {} instances done of {}, blast radius {}",
        plan.id,
        plan.sidecar,
        plan.target_version,
        state_and_reason(plan),
        plan.phases.len(),
        plan.counts.done,
        plan.counts.total,
        plan.blast_radius
    )
}

fn batch_row(b: &Batch) -> Vec<String> {
    vec![
        b.index.to_string(),
        b.lane.to_string(),
        cells(&b.cells),
        b.instance_count().to_string(),
        spelled(&b.state),
        b.verdict.as_ref().map_or_else(|| "-".to_owned(), spelled),
        maybe_seconds(b.started_at),
    ]
}

/// A phase's heading: `phase gray: stage canary, hot, bake 10m, 4 batches`.
fn phase_heading(p: &Phase, current: bool) -> String {
    let current = if current { " (current)" } else { "" };
    format!("phase {}{current}: stage {}, {}, bake {}, {} batches", p.name, p.stage, p.mode, p.bake, p.batches.len())
}

/// The incidents, one row each.
pub(in crate::cli) fn incidents(incidents: &[Incident]) -> Table {
    let mut t = table(&["OPENED", "PHASE", "BATCH", "METRIC", "INSTANCES", "CANARY", "BASELINE", "TEST", "SUMMARY"]);
    for i in incidents {
        let mut instances = i.instances.iter().take(INSTANCES_SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if i.instances.len() > INSTANCES_SHOWN {
            instances.push_str(&format!(" (+{})", i.instances.len() - INSTANCES_SHOWN));
        }
        t.add_row(vec![
            seconds(i.opened_at),
            i.phase.clone(),
            i.batch.to_string(),
            i.metric.clone(),
            or_dash(instances),
            number(i.canary_value),
            number(i.baseline_value),
            or_dash(i.test.clone()),
            or_dash(i.summary.clone()),
        ]);
    }
    t
}

/// A whole plan: its fields, a table of batches per phase, and its incidents.
pub(in crate::cli) fn plan(plan: &Plan) -> String {
    let counts = &plan.counts;
    let mut out = fields(vec![
        ("id", plan.id.clone()),
        ("name", or_dash(plan.name.clone())),
        ("sidecar", plan.sidecar.clone()),
        ("target", plan.target_version.clone()),
        ("state", state_and_reason(plan)),
        ("feature services", or_dash(plan.feature_services.join(", "))),
        (
            "instances",
            format!(
                "{} done of {} ({} failed, {} pending{})",
                counts.done,
                counts.total,
                counts.failed,
                counts.pending,
                match counts.awaiting_deploy {
                    0 => String::new(),
                    n => format!(", {n} awaiting a deploy"),
                }
            ),
        ),
        ("not waited for", accounted(plan)),
        ("blast radius", plan.blast_radius.to_string()),
        ("created", seconds(plan.created_at)),
        ("updated", seconds(plan.updated_at)),
    ])
    .trim_fmt();
    for (i, p) in plan.phases.iter().enumerate() {
        let current = !plan.state.is_terminal() && usize::try_from(plan.cursor_phase).is_ok_and(|c| c == i);
        let mut t = table(&["INDEX", "LANE", "CELLS", "INSTANCES", "STATE", "VERDICT", "STARTED"]);
        for b in &p.batches {
            t.add_row(batch_row(b));
        }
        out.push_str(&format!("\n\n{}\n{}", phase_heading(p, current), t.trim_fmt()));
    }
    if !plan.incidents.is_empty() {
        out.push_str(&format!("\n\nincidents:\n{}", incidents(&plan.incidents).trim_fmt()));
    }
    out
}

/// A simulation: every batch with its predicted start, then when it would finish.
pub(in crate::cli) fn simulation(sim: &Simulation) -> String {
    let mut t = table(&["PHASE", "BATCH", "LANE", "CELLS", "INSTANCES", "PREDICTED START"]);
    for p in &sim.phases {
        for b in &p.batches {
            t.add_row(vec![
                p.name.clone(),
                b.index.to_string(),
                b.lane.to_string(),
                cells(&b.cells),
                b.instance_count().to_string(),
                maybe_seconds(b.predicted_start),
            ]);
        }
    }
    let batches: usize = sim.phases.iter().map(|p| p.batches.len()).sum();
    let summary = fields(vec![
        ("feature services", or_dash(sim.feature_services.join(", "))),
        ("batches", batches.to_string()),
        ("instances", sim.counts.total.to_string()),
        ("start", seconds(sim.start)),
        ("finish", seconds(sim.finish)),
        ("days", format!("{:.2} ({})", sim.days, took(sim.finish - sim.start))),
        ("notes", or_dash(sim.notes.join("\n"))),
    ]);
    format!("{}\n\n{}", t.trim_fmt(), summary.trim_fmt())
}

/// A span to the minute (to the second under an hour): `3d4h10m`, `12m30s`.
fn took(span: time::Duration) -> String {
    let secs = u64::try_from(span.whole_seconds()).unwrap_or(0);
    let secs = if secs >= 3600 { secs / 60 * 60 } else { secs };
    HumanDuration::from_secs(secs).to_string()
}

/// Instances done and in all in a phase (skipped batches left out), and what it is doing.
pub(in crate::cli) fn phase_progress(p: &Phase) -> (u64, u64, String) {
    let counted = p.batches.iter().filter(|b| b.state != BatchState::Skipped);
    let total: u64 = counted.clone().map(Batch::instance_count).sum();
    let done: u64 = counted.clone().filter(|b| b.state == BatchState::Passed).map(Batch::instance_count).sum();
    let n = counted.clone().count();
    let passed = counted.clone().filter(|b| b.state == BatchState::Passed).count();
    let active: Vec<&Batch> =
        counted.clone().filter(|b| matches!(b.state, BatchState::Applying | BatchState::Baking)).collect();
    let status = if let Some(first) = active.first() {
        let more = if active.len() > 1 { format!(" (+{} more)", active.len() - 1) } else { String::new() };
        format!("batch {} {}{more}, {passed}/{n} passed", first.index, spelled(&first.state))
    } else if let Some(b) = counted.clone().find(|b| matches!(b.state, BatchState::Failed | BatchState::RolledBack)) {
        format!("batch {} {}, {passed}/{n} passed", b.index, spelled(&b.state))
    } else if n == 0 {
        if p.batches.is_empty() { "no batch" } else { "skipped" }.to_owned()
    } else if passed == n {
        "done".to_owned()
    } else {
        format!("{passed}/{n} batches passed")
    };
    (done, total, status)
}

/// One line of progress: `plan p-1 running: gray 3/10, full 0/90 instances, blast radius 3`.
pub(in crate::cli) fn progress_line(plan: &Plan) -> String {
    let phases: Vec<String> = plan
        .phases
        .iter()
        .map(|p| {
            let (done, total, status) = phase_progress(p);
            format!("{} {done}/{total} ({status})", p.name)
        })
        .collect();
    format!(
        "plan {} {}: {} instances, blast radius {}",
        plan.id,
        state_and_reason(plan),
        phases.join(", "),
        plan.blast_radius
    )
}

/// The freezes, one row each.
pub(in crate::cli) fn freezes(freezes: &[Freeze]) -> Table {
    let mut t = table(&["ID", "FROM", "TO", "SERVICES", "REASON"]);
    for f in freezes {
        let services = if f.services.is_empty() { "(all)".to_owned() } else { f.services.join(",") };
        t.add_row(vec![f.id.clone(), timestamp(f.from), timestamp(f.to), services, f.reason.clone()]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_cells_read_well() {
        assert_eq!(cells(&[]), "-");
        let cell = |s: &str| Cell { service: s.into(), region: "sg".into(), env: "preview".into(), instances: 1 };
        assert_eq!(cells(&[cell("a"), cell("b")]), "2 cells: a/sg/preview, b/sg/preview");
        assert_eq!(cells(&[cell("a"), cell("b"), cell("c")]), "3 cells: a/sg/preview, b/sg/preview, …");
        let shown: Vec<String> = [3.0, 0.3, 0.0012, 12.34567, 0.00001].into_iter().map(number).collect();
        assert_eq!(shown, ["3", "0.3", "0.0012", "12.3457", "1.00e-5"]);
    }

    #[test]
    fn a_phase_whose_batches_were_all_skipped_says_so() {
        let batch = |state: &str| {
            serde_json::json!({"index": 0, "cells": [{"service": "a", "region": "boe", "env": "prod", "instances": 2}],
                               "state": state})
        };
        let phase = |batches: Vec<serde_json::Value>| -> Phase {
            serde_json::from_value(
                serde_json::json!({"name": "full", "stage": "all", "mode": "restart", "bake": "1m", "batches": batches}),
            )
            .unwrap()
        };
        assert_eq!(phase_progress(&phase(vec![batch("skipped"), batch("skipped")])), (0, 0, "skipped".to_owned()));
        assert_eq!(phase_progress(&phase(vec![])), (0, 0, "no batch".to_owned()));
        assert_eq!(phase_progress(&phase(vec![batch("passed"), batch("skipped")])), (2, 2, "done".to_owned()));
        let rolled_back = phase(vec![batch("rolled_back"), batch("skipped")]);
        assert_eq!(phase_progress(&rolled_back), (0, 2, "batch 0 rolled_back, 0/1 passed".to_owned()));
    }
}
