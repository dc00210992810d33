//! Service metrics from Prometheus for the judge: before a step that judges a batch, the
//! plan's PromQL queries run for each service of the batch over the bake (and the bake before
//! it, the "before" reference), and their series, one per instance, are handed to the step's
//! view beside the agents' own samples.

use std::{collections::HashMap, time::Duration};

use futures::{StreamExt, stream};
use outrider_model::{Judging, MetricQuery, Plan};
use outrider_prometheus::{Client, Vars, expand};
use time::OffsetDateTime;

use crate::fleet::Fleet;

/// Queries run at once.
const PARALLEL: usize = 8;
/// Points a range query asks for at most (Prometheus allows 11,000).
const POINTS: u64 = 2_000;

/// What the plan's queries returned for one step.
#[derive(Debug, Default)]
pub struct Fetched {
    /// (instance, metric) → (time, value), oldest first.
    pub samples: HashMap<(String, String), Vec<(OffsetDateTime, f64)>>,
    /// metric → why it could not be read.
    pub errors: HashMap<String, String>,
}

/// Runs `judging`'s queries for the services of `batches` of `plan`; `None` when it has none.
pub async fn fetch(
    prometheus: Option<&Client>,
    fleet: &Fleet,
    tenant: &str,
    plan: &Plan,
    judging: &Judging,
    batches: &[(usize, usize)],
    now: OffsetDateTime,
) -> Option<Fetched> {
    if judging.queries.is_empty() {
        return None;
    }
    let mut out = Fetched::default();
    let Some(client) = prometheus else {
        for q in &judging.queries {
            out.errors.insert(q.metric.clone(), "no Prometheus server: start the manager with --prometheus URL".into());
        }
        return Some(out);
    };
    let mut jobs = Vec::new();
    for &(pi, bi) in batches {
        let (Some(phase), Some(batch)) = (plan.phases.get(pi), plan.phases.get(pi).and_then(|p| p.batches.get(bi)))
        else {
            continue;
        };
        let bake = phase.bake.0.saturating_mul(batch.extensions.saturating_add(1));
        let started = batch.started_at.unwrap_or(now);
        let start = started - time::Duration::try_from(phase.bake.0).unwrap_or(time::Duration::ZERO);
        let mut services: Vec<&str> = batch.cells.iter().map(|c| c.service.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        for service in services {
            let mut instances = Vec::new();
            fleet.for_each_of_service(tenant, service, &mut |i| instances.push(i.id.clone()));
            let vars = Vars {
                service: Some(service.to_owned()),
                sidecar: Some(plan.sidecar.clone()),
                version: Some(plan.target_version.clone()),
                instance: None,
                plan: Some(plan.id.clone()),
                window: Some(bake),
                instances,
            };
            for q in &judging.queries {
                jobs.push((q.clone(), vars.clone(), start));
            }
        }
    }
    let results: Vec<_> = stream::iter(jobs)
        .map(|(q, vars, start)| {
            let client = client.clone();
            async move {
                let result = run(&client, &q, &vars, start, now).await;
                (q, result)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (q, result) in results {
        match result {
            Ok(series) => {
                for (instance, points) in series {
                    out.samples.entry((instance, q.metric.clone())).or_default().extend(points);
                }
            }
            Err(e) => {
                tracing::warn!(plan = %plan.id, metric = %q.metric, error = %e, "analysis query failed");
                out.errors.insert(q.metric.clone(), e.to_string());
            }
        }
    }
    for points in out.samples.values_mut() {
        points.sort_by_key(|(t, _)| *t);
        points.dedup_by_key(|(t, _)| *t);
    }
    Some(out)
}

/// One query over `[start, end]`: its series by instance.
async fn run(
    client: &Client,
    q: &MetricQuery,
    vars: &Vars,
    start: OffsetDateTime,
    end: OffsetDateTime,
) -> Result<Vec<(String, Vec<(OffsetDateTime, f64)>)>, outrider_prometheus::Error> {
    let query = expand(&q.query, vars)?;
    let range = Duration::try_from(end - start).unwrap_or(Duration::ZERO);
    let step = Duration::from_secs((range.as_secs() / POINTS).max(1));
    let series = client.query_range(&query, start, end, step).await?;
    Ok(series
        .into_iter()
        .filter_map(|s| {
            let instance = s.labels.get(&q.instance_label)?.clone();
            Some((instance, s.points.into_iter().filter(|(_, v)| v.is_finite()).collect()))
        })
        .collect())
}
