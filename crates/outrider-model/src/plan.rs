//! Upgrade plans: the body operators send (`PlanSpec`) and the plan the manager keeps and
//! answers (`Plan`, with phases, batches, cells, verdicts, incidents).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    HumanDuration, UpgradeMode, ValidationError,
    analysis::{AnalysisSpec, BatchAnalysis, Comparison, Effect, Side},
    validate_name, validate_version,
};

/// Which services and instances a plan covers. Empty lists mean "all".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Only these services.
    #[serde(default)]
    pub services: Vec<String>,
    /// Only services with all of these traits.
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    /// Only these regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Only these envs.
    #[serde(default)]
    pub envs: Vec<String>,
}

/// How feature services (representatives that go first) are chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureServices {
    /// For each trait value in scope, pick this many services (deterministically).
    #[serde(default = "FeatureServices::default_per_value")]
    pub per_trait_value: u32,
    /// Services named to go first in any case.
    #[serde(default)]
    pub services: Vec<String>,
}

impl FeatureServices {
    fn default_per_value() -> u32 {
        1
    }
}

impl Default for FeatureServices {
    fn default() -> Self {
        Self { per_trait_value: Self::default_per_value(), services: Vec::new() }
    }
}

/// Allowed change hours: `days` such as `mon-fri` or `mon,wed,sat`, `from`/`to` as `HH:MM`
/// in the IANA time zone `tz` (default UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeWindow {
    /// Days of the week.
    #[serde(default = "ChangeWindow::every_day")]
    pub days: String,
    /// Start time of day.
    pub from: String,
    /// End time of day (exclusive; may be before `from` for windows over midnight).
    pub to: String,
    /// Time zone.
    #[serde(default = "ChangeWindow::utc")]
    pub tz: String,
}

impl ChangeWindow {
    fn every_day() -> String {
        "mon-sun".into()
    }
    fn utc() -> String {
        "UTC".into()
    }
}

/// How a phase cuts its ordered cells into batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Batching {
    /// `start`, `start·factor`, `start·factor²` … cells per batch.
    Exponential {
        /// Cells in the first batch.
        #[serde(default = "one")]
        start: u64,
        /// Growth factor.
        #[serde(default = "two")]
        factor: u64,
    },
    /// `size` cells per batch.
    Linear {
        /// Cells per batch.
        size: u64,
    },
}

fn one() -> u64 {
    1
}
fn two() -> u64 {
    2
}

impl Default for Batching {
    fn default() -> Self {
        Self::Exponential { start: 1, factor: 2 }
    }
}

/// Caps in cells and instances (absent: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// At most this many cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<u64>,
    /// At most this many instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
}

/// One phase of a plan body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// `gray`, `full`, `converge`…
    pub name: String,
    /// Instances of this stage only (`canary`, `single-dc`, `full`), or `all`.
    #[serde(default = "PhaseSpec::all")]
    pub stage: String,
    /// Upgrade mode applied to the phase's instances.
    #[serde(default = "PhaseSpec::restart")]
    pub mode: UpgradeMode,
    /// Batch sizes.
    #[serde(default)]
    pub batching: Batching,
    /// Cap of one batch.
    #[serde(default)]
    pub max_per_batch: Caps,
    /// Cap of one (UTC) day.
    #[serde(default)]
    pub max_per_day: Caps,
    /// Wait after each batch while analysis runs.
    #[serde(default = "PhaseSpec::default_bake")]
    pub bake: HumanDuration,
    /// Regions advanced side by side.
    #[serde(default = "PhaseSpec::one_region")]
    pub region_parallelism: u32,
    /// Time a batch may take to report the target version before it fails.
    #[serde(default = "PhaseSpec::default_timeout")]
    pub batch_timeout: HumanDuration,
    /// `on-deploy` phases only: how long a batch waits for its instances to deploy onto the
    /// target before it is done anyway (a later `converge` phase then forces the rest).
    /// Absent: it waits for every deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<HumanDuration>,
}

impl PhaseSpec {
    fn all() -> String {
        "all".into()
    }
    fn restart() -> UpgradeMode {
        UpgradeMode::Restart
    }
    fn default_bake() -> HumanDuration {
        HumanDuration::from_secs(600)
    }
    fn one_region() -> u32 {
        1
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration::from_secs(600)
    }

    /// A phase `name` over every stage in `mode`, cut by `batching`, with the body's defaults
    /// for the rest (no caps, bake 10m, one region at a time, batch timeout 10m, no deadline).
    pub fn new(name: impl Into<String>, mode: UpgradeMode, batching: Batching) -> Self {
        Self {
            name: name.into(),
            stage: Self::all(),
            mode,
            batching,
            max_per_batch: Caps::default(),
            max_per_day: Caps::default(),
            bake: Self::default_bake(),
            region_parallelism: Self::one_region(),
            batch_timeout: Self::default_timeout(),
            deadline: None,
        }
    }

    /// The default phases: `gray` (canary instances, hot, exponential 1·2ⁿ, bake 10m), then
    /// `full` (all instances, on-deploy, 100 cells a batch, bake 30m, 3 regions side by side).
    pub fn defaults() -> Vec<Self> {
        vec![
            Self {
                name: "gray".into(),
                stage: "canary".into(),
                mode: UpgradeMode::Hot,
                batching: Batching::Exponential { start: 1, factor: 2 },
                max_per_batch: Caps { cells: Some(50), instances: Some(500) },
                max_per_day: Caps::default(),
                bake: HumanDuration::from_secs(600),
                region_parallelism: 1,
                batch_timeout: Self::default_timeout(),
                deadline: None,
            },
            Self {
                name: "full".into(),
                stage: "all".into(),
                mode: UpgradeMode::OnDeploy,
                batching: Batching::Linear { size: 100 },
                max_per_batch: Caps::default(),
                max_per_day: Caps::default(),
                bake: HumanDuration::from_secs(1800),
                region_parallelism: 3,
                batch_timeout: Self::default_timeout(),
                deadline: None,
            },
        ]
    }
}

impl PhaseSpec {
    /// Checks the phase's numbers and durations against [`limits`] (`field` names a field).
    fn validate_bounds(&self, field: &dyn Fn(&str) -> String) -> Result<(), ValidationError> {
        match self.batching {
            Batching::Exponential { start, factor } => {
                at_most(field("batching.start"), start, limits::CELLS)?;
                at_most(field("batching.factor"), factor, limits::FACTOR)?;
            }
            Batching::Linear { size } => at_most(field("batching.size"), size, limits::CELLS)?,
        }
        for (caps, f) in [(self.max_per_batch, "max_per_batch"), (self.max_per_day, "max_per_day")] {
            at_most(field(&format!("{f}.cells")), caps.cells.unwrap_or(0), limits::CELLS)?;
            at_most(field(&format!("{f}.instances")), caps.instances.unwrap_or(0), limits::INSTANCES)?;
        }
        at_most(field("region_parallelism"), self.region_parallelism, limits::REGION_PARALLELISM)?;
        at_most(field("bake"), self.bake, HumanDuration(limits::BAKE))?;
        at_most(field("batch_timeout"), self.batch_timeout, HumanDuration(limits::MAX_BATCH_TIMEOUT))?;
        if let Some(deadline) = self.deadline {
            at_most(field("deadline"), deadline, HumanDuration(limits::MAX_DEADLINE))?;
        }
        if self.batch_timeout.0 < limits::MIN_BATCH_TIMEOUT {
            return Err(ValidationError::new(field("batch_timeout"), "must be at least 1s"));
        }
        Ok(())
    }
}

/// The body of `POST /plans` and `POST /plans/simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// Sidecar to upgrade.
    pub sidecar: String,
    /// Version to move to (must be active and admitted).
    pub target_version: String,
    /// Only instances running one of these: exact versions (`1.0.0`) or requirements
    /// (`<1.2.0`). Empty: any version other than the target.
    #[serde(default)]
    pub from_versions: Vec<String>,
    /// Scope.
    #[serde(default)]
    pub selector: Selector,
    /// Region order (default: `boe` first, then the others by name).
    #[serde(default)]
    pub region_order: Vec<String>,
    /// Feature services.
    #[serde(default)]
    pub feature_services: FeatureServices,
    /// Allowed change hours (empty: any time).
    #[serde(default)]
    pub windows: Vec<ChangeWindow>,
    /// Phases (default: gray, then full).
    #[serde(default = "PhaseSpec::defaults")]
    pub phases: Vec<PhaseSpec>,
    /// How batches are judged, over the sidecar's `analysis` (absent: the sidecar's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Fix-forward: the id of a `blocked` plan of the same sidecar that this plan takes over
    /// (that plan ends `aborted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    /// What a failed verdict does (default `block`: wait for an operator).
    #[serde(default, skip_serializing_if = "OnFail::is_block")]
    pub on_fail: OnFail,
}

/// What a plan does when a batch's verdict is `fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Block and wait for an operator to approve or roll back.
    #[default]
    Block,
    /// Roll back by itself (unattended), as the operator's rollback would.
    Rollback,
}

impl OnFail {
    fn is_block(&self) -> bool {
        *self == Self::Block
    }
}

/// One `from_versions` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionMatch {
    /// Exactly this version.
    Exact(semver::Version),
    /// Any version meeting the requirement.
    Req(semver::VersionReq),
}

impl VersionMatch {
    /// Parses `1.0.0` (exact) or `<1.2.0`, `>=1.0.0, <2.0.0` (requirement).
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if let Ok(v) = semver::Version::parse(s) {
            return Ok(Self::Exact(v));
        }
        semver::VersionReq::parse(s).map(Self::Req).map_err(|e| {
            ValidationError::new("from_versions", format!("{s:?} is neither a version nor a requirement: {e}"))
        })
    }

    /// Whether `version` matches.
    pub fn matches(&self, version: &str) -> bool {
        let Ok(v) = semver::Version::parse(version) else { return false };
        match self {
            Self::Exact(e) => *e == v,
            Self::Req(r) => r.matches(&v),
        }
    }
}

/// Bounds of a plan body, far above any real fleet's needs and low enough that no body can
/// make the planner, the store or the executor do unbounded work.
pub mod limits {
    use std::time::Duration;

    /// Phases in a plan.
    pub const PHASES: usize = 32;
    /// Entries in each list of a plan body (services, regions, versions, windows).
    pub const LIST: usize = 1_000;
    /// Bytes of a plan's name.
    pub const NAME: usize = 200;
    /// Cells in a batch (`start`, `size`, `max_per_batch.cells`, `max_per_day.cells`).
    pub const CELLS: u64 = 1_000_000;
    /// Instances in a cap.
    pub const INSTANCES: u64 = 1_000_000_000;
    /// Growth factor of exponential batching.
    pub const FACTOR: u64 = 1_000;
    /// Regions advanced side by side.
    pub const REGION_PARALLELISM: u32 = 1_000;
    /// Feature services per trait value.
    pub const PER_TRAIT_VALUE: u32 = 1_000;
    /// Longest bake (30 days).
    pub const BAKE: Duration = Duration::from_secs(30 * 86_400);
    /// Shortest batch timeout.
    pub const MIN_BATCH_TIMEOUT: Duration = Duration::from_secs(1);
    /// Years a freeze may start and end in.
    pub const FREEZE_YEARS: std::ops::RangeInclusive<i32> = 2000..=2200;
    /// Longest batch timeout (30 days).
    pub const MAX_BATCH_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);
    /// Longest wait of an on-deploy batch for its deploys (365 days).
    pub const MAX_DEADLINE: Duration = Duration::from_secs(365 * 86_400);
}

/// Refuses `n` over `max` with the limit in the message.
fn at_most<T: PartialOrd + fmt::Display>(field: impl Into<String>, n: T, max: T) -> Result<(), ValidationError> {
    if n > max { Err(ValidationError::new(field, format!("{n} is over the limit of {max}"))) } else { Ok(()) }
}

impl PlanSpec {
    /// Checks every field that can be checked without the fleet, and the bounds of [`limits`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate_text("name", &self.name, limits::NAME, false)?;
        let lists = [
            ("from_versions", self.from_versions.len()),
            ("selector.services", self.selector.services.len()),
            ("selector.traits", self.selector.traits.len()),
            ("selector.regions", self.selector.regions.len()),
            ("selector.envs", self.selector.envs.len()),
            ("region_order", self.region_order.len()),
            ("feature_services.services", self.feature_services.services.len()),
            ("windows", self.windows.len()),
        ];
        for (field, len) in lists {
            at_most(field, len, limits::LIST)?;
        }
        at_most("phases", self.phases.len(), limits::PHASES)?;
        at_most("feature_services.per_trait_value", self.feature_services.per_trait_value, limits::PER_TRAIT_VALUE)?;
        for (k, v) in &self.selector.traits {
            validate_name("selector.traits", k)?;
            crate::validate_text("selector.traits", v, limits::NAME, false)?;
        }
        validate_name("sidecar", &self.sidecar)?;
        validate_version(&self.target_version).map_err(|e| ValidationError::new("target_version", e.message))?;
        for v in &self.from_versions {
            VersionMatch::parse(v)?;
        }
        for s in self.selector.services.iter().chain(&self.feature_services.services) {
            validate_name("selector.services", s)?;
        }
        for r in self.selector.regions.iter().chain(&self.region_order) {
            validate_name("regions", r)?;
        }
        for e in &self.selector.envs {
            if !matches!(e.as_str(), "preview" | "prod") {
                return Err(ValidationError::new("selector.envs", format!("{e:?} must be preview or prod")));
            }
        }
        if self.phases.is_empty() {
            return Err(ValidationError::new("phases", "a plan needs at least one phase"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.phases.iter().enumerate() {
            let field = |f: &str| format!("phases[{i}].{f}");
            validate_name(&field("name"), &p.name)?;
            if !names.insert(&p.name) {
                return Err(ValidationError::new(field("name"), format!("phase {:?} appears twice", p.name)));
            }
            if !matches!(p.stage.as_str(), "all" | "canary" | "single-dc" | "full") {
                return Err(ValidationError::new(field("stage"), "must be all, canary, single-dc or full"));
            }
            match p.batching {
                Batching::Exponential { start, factor } if start == 0 || factor == 0 => {
                    return Err(ValidationError::new(field("batching"), "start and factor must be at least 1"));
                }
                Batching::Linear { size: 0 } => {
                    return Err(ValidationError::new(field("batching"), "size must be at least 1"));
                }
                _ => {}
            }
            for (caps, f) in [(p.max_per_batch, "max_per_batch"), (p.max_per_day, "max_per_day")] {
                if caps.cells == Some(0) || caps.instances == Some(0) {
                    return Err(ValidationError::new(field(f), "a cap of 0 would never let the plan move"));
                }
            }
            if p.region_parallelism == 0 {
                return Err(ValidationError::new(field("region_parallelism"), "must be at least 1"));
            }
            if p.deadline.is_some() && p.mode != UpgradeMode::OnDeploy {
                return Err(ValidationError::new(field("deadline"), "only on-deploy phases wait for deploys"));
            }
            p.validate_bounds(&field)?;
        }
        if let Some(a) = &self.analysis {
            a.validate("analysis")?;
        }
        if let Some(id) = &self.supersedes {
            validate_name("supersedes", id)?;
        }
        Ok(())
    }

    /// The parsed `from_versions`.
    pub fn from_matches(&self) -> Result<Vec<VersionMatch>, ValidationError> {
        self.from_versions.iter().map(|v| VersionMatch::parse(v)).collect()
    }
}

/// Plan states (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Created, not started.
    Pending,
    /// Moving.
    Running,
    /// Outside a window, in a freeze, or over a cap; resumes by itself.
    Waiting,
    /// Stopped by an operator.
    Paused,
    /// Stopped by analysis; an operator approves or rolls back.
    Blocked,
    /// Every batch passed.
    Completed,
    /// Stopped for good; what was done stays.
    Aborted,
    /// Every changed instance returned to its previous version.
    RolledBack,
    /// Could not go on (admission refused mid-way, rollback failed).
    Failed,
}

impl PlanState {
    /// Whether the plan can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted | Self::RolledBack | Self::Failed)
    }
}

impl fmt::Display for PlanState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(v.as_str().unwrap_or_default())
    }
}

/// Batch states (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Not started.
    Pending,
    /// Desired state written; waiting for the instances to report the target.
    Applying,
    /// Target reached; bake time with analysis running.
    Baking,
    /// Analysis passed.
    Passed,
    /// Analysis failed or the target never arrived.
    Failed,
    /// Not applied (plan aborted or cells no longer in scope).
    Skipped,
    /// Returned to the previous version.
    RolledBack,
}

/// A batch's verdict (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No harm seen.
    Pass,
    /// Harm seen: the plan blocks.
    Fail,
    /// Not enough data to say.
    Inconclusive,
}

/// One service's instances in one region and env, restricted to the phase's stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Service.
    pub service: String,
    /// Region.
    pub region: String,
    /// Env.
    pub env: String,
    /// Instances in the cell when it was planned (the executor resolves them when it applies
    /// the batch, so instances that come and go in between are not lost).
    pub instances: u64,
}

/// A batch of cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Position in the phase (0-based).
    pub index: u32,
    /// Region lane it belongs to (with `region_parallelism` > 1 several lanes advance together).
    #[serde(default)]
    pub lane: u32,
    /// Cells.
    pub cells: Vec<Cell>,
    /// State.
    pub state: BatchState,
    /// Verdict once judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// When it started applying.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<OffsetDateTime>,
    /// When its instances reported the target (bake starts).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<OffsetDateTime>,
    /// When it was judged.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<OffsetDateTime>,
    /// How many times its bake was extended for want of evidence.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extensions: u32,
    /// The judge's evidence on its metrics, once judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BatchAnalysis>,
    /// Predicted start (simulation only).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub predicted_start: Option<OffsetDateTime>,
}

impl Batch {
    /// Instances in the batch.
    pub fn instance_count(&self) -> u64 {
        self.cells.iter().map(|c| c.instances).sum()
    }
}

/// A planned phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Name.
    pub name: String,
    /// Stage filter.
    pub stage: String,
    /// Upgrade mode.
    pub mode: UpgradeMode,
    /// Bake time.
    pub bake: HumanDuration,
    /// Batches in execution order.
    pub batches: Vec<Batch>,
}

/// Progress counts in instances (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Counts {
    /// Instances in the plan.
    pub total: u64,
    /// Instances in passed batches.
    pub done: u64,
    /// Instances in failed batches.
    pub failed: u64,
    /// Instances not yet applied.
    pub pending: u64,
    /// Instances of applied `on-deploy` batches that have not deployed onto the target yet.
    #[serde(default)]
    pub awaiting_deploy: u64,
}

/// Evidence of harm found by analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// When it was opened.
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Phase and batch it concerns.
    pub phase: String,
    /// Batch index.
    pub batch: u32,
    /// The failing metric (`sidecar_exits`, `crash_loop`, `version_missing`…).
    pub metric: String,
    /// Instances that showed it.
    pub instances: Vec<String>,
    /// Value on the upgraded instances.
    pub canary_value: f64,
    /// Value on the baseline (not-yet-upgraded instances, or the same before).
    pub baseline_value: f64,
    /// The test used.
    pub test: String,
    /// In words.
    pub summary: String,
    /// The service whose comparison failed (none: the evidence pooled over the batch, or a
    /// process signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What the canaries were compared with (none: a process signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// The test's p-value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The effect size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
    /// The canaries' side: instances, samples, value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Side>,
    /// The reference's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Side>,
}

impl Incident {
    /// An incident opened at `at` with nothing else said yet, to fill in with struct update
    /// syntax (`Incident { metric, instances, .., ..Incident::opened(at) }`).
    pub fn opened(at: OffsetDateTime) -> Self {
        Self {
            opened_at: at,
            phase: String::new(),
            batch: 0,
            metric: String::new(),
            instances: Vec::new(),
            canary_value: 0.0,
            baseline_value: 0.0,
            test: String::new(),
            summary: String::new(),
            service: None,
            comparison: None,
            p_value: None,
            effect: None,
            canary: None,
            baseline: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A plan as the manager keeps and answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Sidecar.
    pub sidecar: String,
    /// Target version.
    pub target_version: String,
    /// State.
    pub state: PlanState,
    /// Why it is in that state (waiting for a window, blocked by an incident…).
    #[serde(default)]
    pub reason: String,
    /// Feature services chosen.
    pub feature_services: Vec<String>,
    /// Phases with their batches.
    pub phases: Vec<Phase>,
    /// Progress.
    pub counts: Counts,
    /// Instances that have run the target version under this plan.
    pub blast_radius: u64,
    /// Incidents.
    pub incidents: Vec<Incident>,
    /// Position: phase index.
    pub cursor_phase: u32,
    /// Instances in scope that the plan does not wait for, by reason (`gone`, `protected
    /// service`, `not in from_versions`, `disconnected`), as of the last look.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accounted: BTreeMap<String, u64>,
    /// A rollback is under way: the plan becomes `rolled_back` once every instance it changed
    /// runs its previous version again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling_back: bool,
    /// The blocked plan this one took over (fix-forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    /// The plan that took this one over (it ended `aborted` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The body it was created from.
    pub spec: PlanSpec,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Plan {
    /// A `pending` plan made from `spec` and the planner's phases, named after the body or,
    /// when it has no name, after its sidecar and target.
    pub fn new(
        id: String,
        spec: PlanSpec,
        feature_services: Vec<String>,
        phases: Vec<Phase>,
        now: OffsetDateTime,
    ) -> Self {
        let name = if spec.name.is_empty() {
            format!("{} to {}", spec.sidecar, spec.target_version)
        } else {
            spec.name.clone()
        };
        let mut plan = Self {
            id,
            name,
            sidecar: spec.sidecar.clone(),
            target_version: spec.target_version.clone(),
            state: PlanState::Pending,
            reason: "created".into(),
            feature_services,
            phases,
            counts: Counts::default(),
            blast_radius: 0,
            incidents: Vec::new(),
            cursor_phase: 0,
            accounted: BTreeMap::new(),
            rolling_back: false,
            supersedes: spec.supersedes.clone(),
            superseded_by: None,
            spec,
            created_at: now,
            updated_at: now,
        };
        plan.recount();
        plan
    }

    /// Recomputes `counts` from the batches.
    pub fn recount(&mut self) {
        // Observed, not derived from the batches: the reconciler sets it.
        let mut c = Counts { awaiting_deploy: self.counts.awaiting_deploy, ..Counts::default() };
        for b in self.phases.iter().flat_map(|p| &p.batches) {
            let n = b.instance_count();
            c.total += n;
            match b.state {
                BatchState::Passed => c.done += n,
                BatchState::Failed => c.failed += n,
                BatchState::Pending | BatchState::Applying | BatchState::Baking => c.pending += n,
                BatchState::Skipped | BatchState::RolledBack => {}
            }
        }
        self.counts = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_parses_and_validates() {
        let body = r#"{
          "name": "mesh-proxy to 1.1.0", "sidecar": "mesh-proxy", "target_version": "1.1.0",
          "from_versions": ["1.0.0"],
          "selector": {"services": ["checkout"], "traits": {"protocol": "http"},
                       "regions": ["boe", "cn-north"], "envs": ["preview", "prod"]},
          "region_order": ["boe", "cn-north", "sg"],
          "feature_services": {"per_trait_value": 2},
          "windows": [{"days": "mon-fri", "from": "10:00", "to": "17:00", "tz": "Asia/Shanghai"}],
          "phases": [
            {"name": "gray", "stage": "canary", "mode": "hot",
             "batching": {"strategy": "exponential", "start": 1, "factor": 2},
             "max_per_batch": {"cells": 50, "instances": 500},
             "max_per_day": {"cells": 2000, "instances": 200000},
             "bake": "10m", "region_parallelism": 1},
            {"name": "full", "stage": "all", "mode": "on-deploy",
             "batching": {"strategy": "linear", "size": 100}, "bake": "30m", "region_parallelism": 3}
          ]}"#;
        let spec: PlanSpec = serde_json::from_str(body).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.phases[1].mode, UpgradeMode::OnDeploy);
    }

    #[test]
    fn minimal_body_gets_default_phases() {
        let spec: PlanSpec = serde_json::from_str(r#"{"sidecar":"mesh","target_version":"1.1.0"}"#).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["gray", "full"]);
    }

    #[test]
    fn bad_bodies_are_refused_with_the_field() {
        let bad = |b: &str| -> String {
            match serde_json::from_str::<PlanSpec>(b) {
                Err(e) => format!("json: {e}"),
                Ok(s) => s.validate().map(|()| "ok".into()).unwrap_or_else(|e| e.field),
            }
        };
        assert_eq!(bad(r#"{"sidecar":"m","target_version":"1.1"}"#), "target_version");
        assert_eq!(bad(r#"{"sidecar":"m","target_version":"1.1.0","phases":[]}"#), "phases");
        assert_eq!(bad(r#"{"sidecar":"m","target_version":"1.1.0","from_versions":["banana"]}"#), "from_versions");
        assert_eq!(
            bad(r#"{"sidecar":"m","target_version":"1.1.0","phases":[{"name":"g","deadline":"1d"}]}"#),
            "phases[0].deadline",
            "a deadline only for on-deploy phases"
        );
        assert_eq!(
            bad(
                r#"{"sidecar":"m","target_version":"1.1.0","phases":[{"name":"g","mode":"on-deploy","deadline":"9999d"}]}"#
            ),
            "phases[0].deadline"
        );
        assert_eq!(
            bad(
                r#"{"sidecar":"m","target_version":"1.1.0","phases":[{"name":"g","batching":{"strategy":"linear","size":0}}]}"#
            ),
            "phases[0].batching"
        );
        assert!(bad(r#"{"sidecar":"m","target_version":"1.1.0","colour":1}"#).starts_with("json"));
    }

    #[test]
    fn absurd_numbers_are_refused_with_the_limit() {
        let phase =
            |extra: &str| format!(r#"{{"sidecar":"mesh","target_version":"1.1.0","phases":[{{"name":"p"{extra}}}]}}"#);
        for (extra, field, limit) in [
            (r#","region_parallelism":4294967295"#, "phases[0].region_parallelism", "1000"),
            (
                r#","batching":{"strategy":"exponential","start":1,"factor":18446744073709551615}"#,
                "phases[0].batching.factor",
                "1000",
            ),
            (r#","batching":{"strategy":"linear","size":100000000}"#, "phases[0].batching.size", "1000000"),
            (
                r#","max_per_batch":{"instances":18446744073709551615}"#,
                "phases[0].max_per_batch.instances",
                "1000000000",
            ),
            (r#","bake":"9999999999d""#, "phases[0].bake", "30d"),
            (r#","batch_timeout":"0s""#, "phases[0].batch_timeout", "1s"),
        ] {
            let spec: PlanSpec = serde_json::from_str(&phase(extra)).unwrap();
            let e = spec.validate().unwrap_err();
            assert_eq!(e.field, field, "{extra}");
            assert!(e.message.contains(limit), "{extra}: {e}");
        }
        let many: Vec<String> = (0..33).map(|i| format!(r#"{{"name":"p{i}"}}"#)).collect();
        let body = format!(r#"{{"sidecar":"mesh","target_version":"1.1.0","phases":[{}]}}"#, many.join(","));
        assert_eq!(serde_json::from_str::<PlanSpec>(&body).unwrap().validate().unwrap_err().field, "phases");
        let bidi = r#"{"sidecar":"mesh","target_version":"1.1.0","name":"a\u202eb"}"#;
        assert_eq!(serde_json::from_str::<PlanSpec>(bidi).unwrap().validate().unwrap_err().field, "name");
    }

    #[test]
    fn freezes_refuse_absurd_years_and_hidden_characters() {
        let freeze = |from: &str, to: &str, reason: &str| {
            serde_json::from_str::<NewFreeze>(&format!(r#"{{"from":"{from}","to":"{to}","reason":"{reason}"}}"#))
                .unwrap()
                .validate()
        };
        freeze("2026-11-27T00:00:00Z", "2026-11-30T00:00:00Z", "sale").unwrap();
        assert_eq!(freeze("0000-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "x").unwrap_err().field, "from");
        assert_eq!(freeze("2026-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "x").unwrap_err().field, "to");
        assert_eq!(freeze("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "a\\r\\nb").unwrap_err().field, "reason");
    }

    #[test]
    fn version_matches_exact_and_ranges() {
        assert!(VersionMatch::parse("1.0.0").unwrap().matches("1.0.0"));
        assert!(!VersionMatch::parse("1.0.0").unwrap().matches("1.0.1"), "exact, not caret");
        let floor = VersionMatch::parse("<1.2.0").unwrap();
        assert!(floor.matches("1.1.9") && !floor.matches("1.2.0"));
    }
}

/// The answer of `POST /plans/simulate`: the predicted schedule on a virtual clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Simulation {
    /// Feature services chosen.
    pub feature_services: Vec<String>,
    /// Phases with batches carrying `predicted_start`.
    pub phases: Vec<Phase>,
    /// Instances per state (all pending).
    pub counts: Counts,
    /// When the simulation starts (now).
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Predicted end of the last batch's bake.
    #[serde(with = "time::serde::rfc3339")]
    pub finish: OffsetDateTime,
    /// `finish - start` in days.
    pub days: f64,
    /// Assumptions and things worth knowing (e.g. "no window before …").
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A change freeze: no plan changes anything in scope between `from` and `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// Id.
    pub id: String,
    /// Start (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End (RFC 3339), exclusive.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Why.
    pub reason: String,
    /// Only these services (empty: the whole tenant).
    #[serde(default)]
    pub services: Vec<String>,
}

/// The body of `POST /freezes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFreeze {
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Why (required).
    pub reason: String,
    /// Only these services.
    #[serde(default)]
    pub services: Vec<String>,
}

impl NewFreeze {
    /// Checks the period, the reason and the service names.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.to <= self.from {
            return Err(ValidationError::new("to", "a freeze must end after it starts"));
        }
        if self.reason.trim().is_empty() {
            return Err(ValidationError::new("reason", "say why changes are frozen"));
        }
        crate::validate_text("reason", &self.reason, crate::service::MAX_REASON, false)?;
        for (t, field) in [(self.from, "from"), (self.to, "to")] {
            if !limits::FREEZE_YEARS.contains(&t.year()) {
                let (a, b) = (limits::FREEZE_YEARS.start(), limits::FREEZE_YEARS.end());
                return Err(ValidationError::new(field, format!("must be between the years {a} and {b}")));
            }
        }
        at_most("services", self.services.len(), limits::LIST)?;
        for s in &self.services {
            validate_name("services", s)?;
        }
        Ok(())
    }
}

impl Freeze {
    /// Whether the freeze is in force at `t` for `service`.
    pub fn covers(&self, t: OffsetDateTime, service: &str) -> bool {
        self.from <= t && t < self.to && (self.services.is_empty() || self.services.iter().any(|s| s == service))
    }
}
