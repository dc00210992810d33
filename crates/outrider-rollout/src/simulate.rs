//! The predicted schedule of a plan, on a virtual clock: what `POST /plans/simulate` answers.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    time::Duration,
};

use outrider_model::{Batch, Caps, Counts, Freeze, PlanSpec, Simulation, UpgradeMode};
use time::{OffsetDateTime, UtcOffset};

use crate::{
    planner::Planned,
    window::{Blockers, Windows},
};

/// What the simulator assumes about the fleet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimAssumptions {
    /// Time from a batch's start to its instances running the target (then the bake starts).
    pub apply_time: Duration,
    /// How often an instance is deployed, on average, per day (its service's deploys): an
    /// `on-deploy` batch is done when every instance of it has deployed (the expected last of
    /// n deploys at this rate: H(n) / rate days), or at its phase's deadline.
    pub deploys_per_day: f64,
}

impl Default for SimAssumptions {
    /// Two minutes a batch; each instance deployed every five days on average.
    fn default() -> Self {
        Self { apply_time: Duration::from_secs(120), deploys_per_day: 0.2 }
    }
}

impl SimAssumptions {
    /// The expected time until all of `n` instances have deployed (the largest of n
    /// exponential waits at `deploys_per_day`), capped by `deadline`; `None` when it never
    /// ends (no deploys and no deadline).
    fn all_deployed(&self, n: u64, deadline: Option<Duration>) -> Option<time::Duration> {
        let harmonic: f64 = (1..=n.min(10_000_000)).map(|k| 1.0 / k as f64).sum();
        let days = harmonic / self.deploys_per_day;
        let expected = (days.is_finite() && days < 36_500.0).then(|| Duration::from_secs_f64(days * 86_400.0));
        match (expected, deadline) {
            (Some(e), Some(d)) => Some(to_time(e.min(d))),
            (Some(e), None) => Some(to_time(e)),
            (None, d) => d.map(to_time),
        }
    }
}

/// Predicts when each batch of `planned` starts and when the plan ends, from `start`, without
/// changing anything.
///
/// Phases run one after another; the lanes of a phase advance side by side, each batch after
/// its lane's previous one has baked, the lanes served in the order they become ready. A batch
/// starts at the first instant when a window of `windows` allows it, no freeze of `freezes`
/// (tenant-wide or naming one of its services) nor protected period of one of its services
/// ([`Planned::protected_periods`]) is in force, and its phase's `max_per_day`
/// (of `spec`, cells and instances started per UTC day) has room — a batch over the daily cap
/// on its own runs alone on a day. It then takes `apply_time` and its phase's bake.
pub fn simulate(
    planned: &Planned,
    spec: &PlanSpec,
    windows: &Windows,
    freezes: &[Freeze],
    start: OffsetDateTime,
    assumptions: SimAssumptions,
) -> Simulation {
    let blockers = Blockers::new(freezes, &planned.protected_periods);
    let mut phases = planned.phases.clone();
    let mut notes = vec![format!(
        "assumes {} to apply a batch ({} deploys per instance and day for on-deploy phases, up to their deadline), \
         then its phase's bake; lanes advance side by side, phases one after another",
        outrider_model::HumanDuration(assumptions.apply_time),
        assumptions.deploys_per_day
    )];
    let mut clock = start;
    for phase in &mut phases {
        let phase_spec = spec.phases.iter().find(|p| p.name == phase.name);
        let cap = phase_spec.map(|p| p.max_per_day).unwrap_or_default();
        let deadline = phase_spec.and_then(|p| p.deadline).map(|d| d.0);
        let (mode, bake) = (phase.mode, to_time(phase.bake.0));
        let took = |b: &Batch| match mode {
            UpgradeMode::OnDeploy => assumptions.all_deployed(b.instance_count(), deadline)?.checked_add(bake),
            _ => to_time(assumptions.apply_time).checked_add(bake),
        };
        let mut stats = Stats::default();
        let outcome =
            run_phase(&mut phase.batches, clock, &took, Rules { windows, blockers: &blockers, cap }, &mut stats);
        stats.describe(&phase.name, phase.batches.is_empty(), &mut notes);
        match outcome {
            Some(end) => clock = end,
            None => {
                notes.push(format!(
                    "phase {}: cannot go on (no change window opens, or the clock runs out); later batches have no start",
                    phase.name
                ));
                break;
            }
        }
    }
    let total = planned.instance_count();
    Simulation {
        feature_services: planned.feature_services.clone(),
        phases,
        counts: Counts { total, done: 0, failed: 0, pending: total, awaiting_deploy: 0 },
        start,
        finish: clock,
        days: (clock - start).as_seconds_f64() / 86_400.0,
        notes,
    }
}

/// What decides when a batch may start.
#[derive(Clone, Copy)]
struct Rules<'r, 'a> {
    windows: &'r Windows,
    blockers: &'r Blockers<'a>,
    cap: Caps,
}

/// What delayed the batches of one phase.
#[derive(Debug, Default)]
struct Stats {
    window: usize,
    blocked: usize,
    daily_cap: usize,
    alone_over_cap: usize,
}

impl Stats {
    fn describe(&self, phase: &str, empty: bool, notes: &mut Vec<String>) {
        if empty {
            notes.push(format!("phase {phase}: nothing in scope, no batch"));
        }
        let counted = [
            (self.window, "waited for a change window"),
            (self.blocked, "waited for a freeze or a protected period to end"),
            (self.daily_cap, "waited for the next UTC day (max_per_day reached)"),
            (self.alone_over_cap, "exceed max_per_day on their own and ran alone on their day"),
        ];
        for (n, what) in counted.into_iter().filter(|(n, _)| *n > 0) {
            notes.push(format!("phase {phase}: {n} batch(es) {what}"));
        }
    }
}

/// Schedules the batches of one phase from `from`; each takes `took` of it. Returns the end
/// of the last bake, `None` if a batch can never start or end.
fn run_phase(
    batches: &mut [Batch],
    from: OffsetDateTime,
    took: &dyn Fn(&Batch) -> Option<time::Duration>,
    rules: Rules<'_, '_>,
    stats: &mut Stats,
) -> Option<OffsetDateTime> {
    let lanes = batches.iter().map(|b| b.lane as usize + 1).max().unwrap_or(0);
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); lanes];
    for (i, b) in batches.iter().enumerate().rev() {
        queues[b.lane as usize].push(i);
    }
    let mut ready: BinaryHeap<Reverse<(OffsetDateTime, usize)>> =
        (0..lanes).filter(|&l| !queues[l].is_empty()).map(|l| Reverse((from, l))).collect();
    let mut day = DayUse::default();
    let mut end = from;
    while let Some(Reverse((t, lane))) = ready.pop() {
        let Some(i) = queues[lane].pop() else { continue };
        let batch = &mut batches[i];
        let (cells, instances) = (batch.cells.len() as u64, batch.instance_count());
        let start = earliest_start(t, batch, rules, &day, stats)?;
        if day.add(start, cells, instances) && !fits(rules.cap, cells, instances) {
            stats.alone_over_cap += 1;
        }
        batch.predicted_start = Some(start);
        let done = start.checked_add(took(batch)?)?;
        end = end.max(done);
        if !queues[lane].is_empty() {
            ready.push(Reverse((done, lane)));
        }
    }
    Some(end)
}

/// The first instant at or after `t` when `batch` may start; `None` if never.
fn earliest_start(
    mut t: OffsetDateTime,
    batch: &Batch,
    rules: Rules<'_, '_>,
    day: &DayUse,
    stats: &mut Stats,
) -> Option<OffsetDateTime> {
    let (cells, instances) = (batch.cells.len() as u64, batch.instance_count());
    let services = batch.cells.iter().map(|c| c.service.as_str());
    let (mut waited_window, mut blocked, mut capped) = (false, false, false);
    // Every round moves `t` forward or returns: windows open within days, blockers end, and a
    // new day always has room.
    loop {
        let open = rules.windows.next_open(t)?;
        if open > t {
            (t, waited_window) = (open, true);
        } else if let Some(until) = rules.blockers.blocked_until(t, services.clone()) {
            (t, blocked) = (until, true);
        } else if !day.has_room(t, rules.cap, cells, instances) {
            (t, capped) = (utc_date(t).next_day()?.midnight().assume_utc(), true);
        } else {
            break;
        }
    }
    stats.window += usize::from(waited_window);
    stats.blocked += usize::from(blocked);
    stats.daily_cap += usize::from(capped);
    Some(t)
}

/// Cells and instances started per UTC day (lanes are scheduled one after the other, so a
/// lane may still start a batch on a day another lane has already left).
#[derive(Debug, Default)]
struct DayUse {
    days: BTreeMap<time::Date, (u64, u64)>,
}

impl DayUse {
    /// Whether a batch of `cells` and `instances` may start at `t` under `cap`: when the day's
    /// use stays within the cap, or when nothing started yet that day.
    fn has_room(&self, t: OffsetDateTime, cap: Caps, cells: u64, instances: u64) -> bool {
        self.days.get(&utc_date(t)).is_none_or(|&(c, i)| fits(cap, c + cells, i + instances))
    }

    /// Counts a batch started at `t`; returns whether it is the first of its day.
    fn add(&mut self, t: OffsetDateTime, cells: u64, instances: u64) -> bool {
        let day = self.days.entry(utc_date(t)).or_default();
        let first = *day == (0, 0);
        *day = (day.0 + cells, day.1 + instances);
        first
    }
}

fn utc_date(t: OffsetDateTime) -> time::Date {
    t.to_offset(UtcOffset::UTC).date()
}

/// Whether `cells` and `instances` stay within `cap`.
fn fits(cap: Caps, cells: u64, instances: u64) -> bool {
    cap.cells.is_none_or(|c| cells <= c) && cap.instances.is_none_or(|c| instances <= c)
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

#[cfg(test)]
mod tests;
