//! What the judge compares on metrics, per service of a batch: the canaries' samples during the
//! bake, the same service's not-upgraded instances over the same time (in the canaries'
//! regions and envs when there are enough of them there), and the canaries' own samples before
//! their upgrade. Left out, because they would mislead: baselines whose instance deployed
//! during the window and a canary's samples until one bake after its own deploy (a business
//! deploy is not the sidecar's fault), baselines that changed version meanwhile, instances
//! whose agent is away, and samples of another version.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use outrider_analysis::{BatchSamples, InstanceSamples, MetricSamples, ServiceSamples};
use outrider_model::{Instance, Judging, Override, RSS_GROWTH, UpgradeMode};
use time::OffsetDateTime;

use super::{View, is_present};

/// Baseline instances of the canaries' own regions and envs below which the whole service's
/// not-upgraded instances are the baseline instead.
const LOCAL_BASELINE: usize = 3;

/// The metric [`RSS_GROWTH`] is derived from.
const RSS: &str = "rss_mib";

/// One canary of the batch: its instance and the plan's record of it.
pub(super) struct Canary<'a> {
    pub service: &'a str,
    pub id: &'a str,
    pub record: &'a Override,
}

/// The time span and references of one batch's comparison.
pub(super) struct Window<'a> {
    /// The plan's sidecar and target.
    pub sidecar: &'a str,
    pub target: &'a str,
    pub mode: UpgradeMode,
    /// When the batch started applying: samples before are the "before" reference.
    pub started: OffsetDateTime,
    /// When the canaries' samples start counting (the bake's start plus the warm-up).
    pub from: OffsetDateTime,
    /// Now.
    pub to: OffsetDateTime,
    /// How far back the "before" reference reaches, and how long after a business deploy a
    /// canary's samples do not count (one bake).
    pub lookback: time::Duration,
}

/// The samples of every service of the batch, for the metrics of `judging`.
pub(super) fn gather(view: &dyn View, judging: &Judging, w: &Window<'_>, canaries: &[Canary<'_>]) -> BatchSamples {
    let mut by_service: BTreeMap<&str, Vec<&Canary<'_>>> = BTreeMap::new();
    for c in canaries {
        by_service.entry(c.service).or_default().push(c);
    }
    let metrics: Vec<&str> = judging.policy.metrics.iter().map(|m| m.metric.as_str()).collect();
    let services =
        by_service.into_iter().map(|(service, canaries)| gather_service(view, &metrics, w, service, &canaries));
    BatchSamples { services: services.collect() }
}

fn gather_service(
    view: &dyn View,
    metrics: &[&str],
    w: &Window<'_>,
    service: &str,
    canaries: &[&Canary<'_>],
) -> ServiceSamples {
    let deployed_in_window = |id: &str| view.deployed_at(id).is_some_and(|t| t > w.from && t <= w.to);
    // Canaries run the target now; members of the batch that do not (an on-deploy batch's
    // instances awaiting their deploy) are not upgraded and may be baselines.
    let members: BTreeSet<&str> = canaries.iter().map(|c| c.id).collect();
    let mut on_target: BTreeSet<String> = BTreeSet::new();
    let mut cells: BTreeSet<(String, String)> = BTreeSet::new();
    let mut candidates: Vec<(String, String)> = Vec::new();
    view.for_each_instance(service, &mut |i: &Instance| {
        if !is_present(i) {
            return;
        }
        let Some(st) = i.sidecars.iter().find(|s| s.name == w.sidecar) else { return };
        if st.version == w.target {
            if members.contains(i.id.as_str()) {
                on_target.insert(i.id.clone());
                cells.insert((i.labels.region.clone(), i.labels.env.clone()));
            }
        } else {
            candidates.push((i.id.clone(), st.version.clone()));
        }
    });
    // A business deploy during the bake is not the sidecar's fault: a canary that deployed
    // counts only with its samples from one bake after the deploy (none yet: it is left out),
    // so that an extended bake can still gather its evidence.
    let canaries: Vec<(&&Canary<'_>, OffsetDateTime)> = canaries
        .iter()
        .filter(|c| on_target.contains(c.id))
        .filter_map(|c| {
            let from = match view.deployed_at(c.id) {
                Some(t) if t > w.from && t <= w.to => t + w.lookback,
                _ => w.from,
            };
            (from < w.to).then_some((c, from))
        })
        .collect();
    // A baseline ran one version, not the target, over the whole window, and did not deploy
    // (an instance of a later batch, or awaiting its deploy, is one).
    let baseline: Vec<(String, String)> = candidates
        .into_iter()
        .filter(|(id, version)| {
            let mut steady = true;
            view.versions(id, w.sidecar, w.from, w.to, &mut |_, v| steady &= v == version);
            steady && !deployed_in_window(id)
        })
        .collect();
    let local = local_baseline(view, service, &cells, &baseline);
    let baseline: Vec<&(String, String)> =
        if local.len() >= LOCAL_BASELINE { local } else { baseline.iter().collect() };

    let metrics = metrics
        .iter()
        .map(|&metric| {
            let canary = canaries
                .iter()
                .map(|&(c, from)| InstanceSamples {
                    instance: c.id.to_owned(),
                    values: values(view, w.sidecar, c.id, metric, from, w.to, w.target),
                })
                .collect();
            let before_from = w.started - w.lookback;
            let before = canaries
                .iter()
                .filter(|_| w.mode != UpgradeMode::OnDeploy)
                .map(|(c, _)| InstanceSamples {
                    instance: c.id.to_owned(),
                    values: values(view, w.sidecar, c.id, metric, before_from, w.started, &c.record.previous),
                })
                .collect();
            let baseline = baseline
                .iter()
                .map(|(id, version)| InstanceSamples {
                    instance: id.clone(),
                    values: values(view, w.sidecar, id, metric, w.from, w.to, version),
                })
                .collect();
            MetricSamples { metric: metric.to_owned(), canary, baseline, before }
        })
        .collect();
    ServiceSamples { service: service.to_owned(), metrics }
}

/// The baselines in the canaries' own (region, env) cells.
fn local_baseline<'b>(
    view: &dyn View,
    service: &str,
    cells: &BTreeSet<(String, String)>,
    baseline: &'b [(String, String)],
) -> Vec<&'b (String, String)> {
    let mut cell_of: HashMap<String, (String, String)> = HashMap::new();
    view.for_each_instance(service, &mut |i| {
        cell_of.insert(i.id.clone(), (i.labels.region.clone(), i.labels.env.clone()));
    });
    baseline.iter().filter(|(id, _)| cell_of.get(id).is_some_and(|c| cells.contains(c))).collect()
}

/// The values of `metric` on `instance` between `from` and `to` while it ran `version`.
/// [`RSS_GROWTH`] is derived: the growth of `rss_mib` from one report to the next, per second.
fn values(
    view: &dyn View,
    sidecar: &str,
    instance: &str,
    metric: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    version: &str,
) -> Vec<f64> {
    let mut out = Vec::new();
    if metric == RSS_GROWTH {
        let mut last: Option<(OffsetDateTime, f64)> = None;
        view.samples(instance, sidecar, RSS, from, to, &mut |at, v, value| {
            if v != version {
                last = None;
                return;
            }
            if let Some((t0, v0)) = last {
                let dt = (at - t0).as_seconds_f64();
                if dt > 0.0 {
                    out.push((value - v0) / dt);
                }
            }
            last = Some((at, value));
        });
    } else {
        view.samples(instance, sidecar, metric, from, to, &mut |_, v, value| {
            if v == version || v.is_empty() {
                out.push(value);
            }
        });
    }
    out
}
