//! The gate in front of every batch: the target still active and admitted, the plan's change
//! windows, freezes, the services' protected periods, the phase's daily cap.

use outrider_model::{Batch, Plan, PlanState, VersionState};
use time::{OffsetDateTime, Time};

use super::View;
use crate::{Windows, blocked_until};

/// Why a batch may not start now.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hold {
    /// The state the plan takes meanwhile.
    pub state: PlanState,
    /// Why.
    pub reason: String,
    /// When the reason lifts by itself (None: it needs a change of the inputs).
    pub until: Option<OffsetDateTime>,
}

fn hold(state: PlanState, reason: String, until: Option<OffsetDateTime>) -> Option<Hold> {
    Some(Hold { state, reason, until })
}

/// Why batch `batch` of phase `pi` may not start at `now`, if it may not.
pub(super) fn check(view: &dyn View, plan: &Plan, pi: usize, batch: &Batch, now: OffsetDateTime) -> Option<Hold> {
    match view.version(&plan.sidecar, &plan.target_version) {
        None => return hold(PlanState::Failed, "the target version no longer exists".into(), None),
        Some(v) if v.state == VersionState::Defective => {
            let reason = format!("{} {} was marked defective", plan.sidecar, plan.target_version);
            return hold(PlanState::Blocked, reason, None);
        }
        Some(v) if v.state != VersionState::Active || !v.admitted => {
            let reason = format!("{} {} is not active and admitted", plan.sidecar, plan.target_version);
            return hold(PlanState::Blocked, reason, None);
        }
        Some(_) => {}
    }
    match Windows::new(&plan.spec.windows) {
        // Refused when the plan is created; a stored plan with unreadable windows never runs.
        Err(e) => return hold(PlanState::Failed, format!("unreadable change windows: {e}"), None),
        Ok(windows) if !windows.allows(now) => {
            let next = windows.next_open(now);
            let text = next.map_or("never".into(), |t| t.to_string());
            return hold(PlanState::Waiting, format!("outside the change windows; next opens {text}"), next);
        }
        Ok(_) => {}
    }
    for cell in &batch.cells {
        let periods = view.service(&cell.service).map_or(&[][..], |s| &s.protected_periods[..]);
        if let Some(f) = view.freezes().iter().find(|f| f.covers(now, &cell.service)) {
            let until = blocked_until(now, &cell.service, view.freezes(), periods);
            return hold(PlanState::Waiting, format!("freeze {} until {}: {}", f.id, f.to, f.reason), until);
        }
        if let Some(p) = periods.iter().find(|p| p.from <= now && now < p.to) {
            let until = blocked_until(now, &cell.service, view.freezes(), periods);
            let reason = format!("service {} is protected until {}: {}", cell.service, p.to, p.reason);
            return hold(PlanState::Waiting, reason, until);
        }
    }
    let caps = plan.spec.phases.get(pi).map(|p| p.max_per_day).unwrap_or_default();
    if caps.cells.is_some() || caps.instances.is_some() {
        let today = now.date();
        let started_today = plan.phases[pi].batches.iter().filter(|b| b.started_at.is_some_and(|t| t.date() == today));
        let (cells, instances) =
            started_today.fold((0u64, 0u64), |(c, i), b| (c + b.cells.len() as u64, i + b.instance_count()));
        let over = |cap: Option<u64>, used: u64, add: u64| cap.is_some_and(|cap| used > 0 && used + add > cap);
        if over(caps.cells, cells, batch.cells.len() as u64) || over(caps.instances, instances, batch.instance_count())
        {
            let midnight = today.next_day().map(|d| d.with_time(Time::MIDNIGHT).assume_offset(now.offset()));
            let reason = "the phase's daily cap is reached; resumes after 00:00 UTC".into();
            return hold(PlanState::Waiting, reason, midnight);
        }
    }
    None
}
