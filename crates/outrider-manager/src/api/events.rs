//! The event log: `GET /events?since=N&plan=ID`, and `follow=true` for an NDJSON stream.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use outrider_model::Event;
use outrider_store::{KeyValue, StoreError, WatchEvent};
use serde::Deserialize;

use super::{
    AppState,
    extract::{ApiPath, ApiQuery},
    require_tenant,
};
use crate::{Error, keys, repo::decode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    since: u64,
    /// Only events of this plan.
    plan: Option<String>,
    /// Keep the answer open and stream new events as NDJSON.
    #[serde(default)]
    follow: bool,
    /// About this many events (default 1000, at most 10000) in a list answer; the events of
    /// the last transaction are never split.
    limit: Option<usize>,
}

fn to_event(kv: &KeyValue) -> Result<Event, Error> {
    let mut e: Event = decode(&kv.key, &kv.value)?;
    e.seq = kv.mod_revision;
    Ok(e)
}

pub async fn list(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, Error> {
    require_tenant(&s.repo, &tenant).await?;
    let prefix = keys::events(&tenant);
    let range = s.repo.store().range(&prefix).await?;
    let wanted = |e: &Event| e.seq > q.since && q.plan.as_ref().is_none_or(|p| e.plan.as_ref() == Some(p));
    let mut backlog: Vec<Event> = range.kvs.iter().map(to_event).collect::<Result<Vec<_>, _>>()?;
    backlog.retain(wanted);
    backlog.sort_by_key(|e| e.seq);
    if !q.follow {
        // Cut at the limit, but never inside one transaction's events (they share a seq),
        // so that `since=<last seq>` resumes without losing any.
        let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
        if backlog.len() > limit {
            let last = backlog[limit - 1].seq;
            let end = backlog.iter().position(|e| e.seq > last).unwrap_or(backlog.len());
            backlog.truncate(end);
        }
        return Ok(Json(backlog).into_response());
    }
    let watch = s.repo.store().watch(&prefix, range.revision + 1).await?;
    let plan = q.plan.clone();
    let live = watch
        .flat_map(|batch| {
            let items: Vec<Result<Event, StoreError>> = match batch {
                Err(e) => vec![Err(e)],
                Ok(b) => b
                    .events
                    .into_iter()
                    .filter_map(|e| match e {
                        WatchEvent::Put(kv) => to_event(&kv).ok().map(Ok),
                        WatchEvent::Delete { .. } => None,
                    })
                    .collect(),
            };
            futures::stream::iter(items)
        })
        .filter(move |e| futures::future::ready(e.as_ref().map_or(true, |e| plan.is_none() || e.plan == plan)));
    let lines = futures::stream::iter(backlog.into_iter().map(Ok)).chain(live).map(|e| match e {
        Ok(e) => {
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::io::Error>(line)
        }
        Err(err) => Err(std::io::Error::other(err.to_string())),
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}
