//! The event log: `GET /events?since=N&from=TIME&plan=ID&limit=N`, and `follow=true` for an
//! NDJSON stream. Reads go through the log's indexes (`event_log`), a page at a time. When
//! retention has deleted events the cursor asks for, the answer says so in the
//! `outrider-events-trimmed` header (the newest trimmed sequence number).

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Body,
    extract::State,
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use outrider_model::Event;
use outrider_store::{Store, StoreError, WatchEvent, WatchStream};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{
    AppState,
    extract::{ApiPath, ApiQuery},
    require_tenant,
};
use crate::{
    Error,
    auth::Principal,
    event_log::{self, Query},
};

/// The answer header naming the newest sequence number retention deleted, when the cursor
/// is older: events between the cursor and the log's start are gone.
const TRIMMED: HeaderName = HeaderName::from_static("outrider-events-trimmed");

/// Events read per page of a stream's backlog.
const STREAM_PAGE: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    since: u64,
    /// Only events from the first one at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    /// Only events of this plan.
    plan: Option<String>,
    /// Keep the answer open and stream new events as NDJSON.
    #[serde(default)]
    follow: bool,
    /// About this many events (default 1000, at most 10000) in a list answer; the events of
    /// the last transaction are never split.
    limit: Option<usize>,
}

pub async fn list(
    State(s): State<AppState>,
    Extension(by): Extension<Principal>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, Error> {
    require_tenant(&s.repo, &tenant).await?;
    if let Some(plan) = &q.plan {
        outrider_model::validate_name("plan", plan)?;
    }
    let store = s.repo.store().clone();
    let query = Query { since: q.since, from: q.from, plan: q.plan.clone() };
    let prefix = event_log::prefix(&tenant, &query);
    let after = event_log::start_after(store.as_ref(), &tenant, &query).await?;
    let trimmed = event_log::trimmed(store.as_ref(), &tenant).await?.filter(|&t| t > q.since);
    let mut resp = if q.follow {
        // The stream ends once its token is revoked: nothing more reaches its holder.
        let (auth, issued) = (s.auth.clone(), s.auth.issued_at(&by.name));
        let valid = move |_: &_| futures::future::ready(auth.issued_at(&by.name) == issued);
        let lines = follow(store, prefix, after).take_while(valid).map(|batch| match batch {
            Ok(events) => {
                let mut chunk = Vec::new();
                for e in &events {
                    chunk.extend(serde_json::to_vec(e).unwrap_or_default());
                    chunk.push(b'\n');
                }
                Ok::<_, std::io::Error>(chunk)
            }
            Err(err) => Err(std::io::Error::other(err.to_string())),
        });
        ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
    } else {
        let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
        Json(event_log::page(store.as_ref(), &prefix, &after, limit).await?.events).into_response()
    };
    if let Some(t) = trimmed {
        resp.headers_mut().insert(TRIMMED, HeaderValue::from(t));
    }
    Ok(resp)
}

/// Where a stream is.
enum Phase {
    /// Reading the backlog, a page at a time, after this key.
    Backlog(String),
    /// The backlog is read (at this revision): watch from there.
    Watch(u64),
    /// Following new events.
    Live(WatchStream),
    Done,
}

/// The events of `prefix` after the key `after`, then new ones as they are committed, in
/// batches. A watch that falls behind goes back to reading pages after the last event sent.
fn follow(
    store: Arc<dyn Store>,
    prefix: String,
    after: String,
) -> impl futures::Stream<Item = Result<Vec<Event>, Error>> + Send {
    let state = (Phase::Backlog(after.clone()), after);
    futures::stream::unfold(state, move |(phase, mut last)| {
        let (store, prefix) = (store.clone(), prefix.clone());
        async move {
            let mut phase = phase;
            loop {
                match phase {
                    Phase::Done => return None,
                    Phase::Backlog(after) => {
                        let page = match event_log::page(store.as_ref(), &prefix, &after, STREAM_PAGE).await {
                            Ok(p) => p,
                            Err(e) => return Some((Err(e), (Phase::Done, last))),
                        };
                        let more = page.events.len() >= STREAM_PAGE;
                        if let Some(next) = page.next {
                            last = next;
                        }
                        let next = if more { Phase::Backlog(last.clone()) } else { Phase::Watch(page.revision) };
                        if page.events.is_empty() {
                            phase = next;
                            continue;
                        }
                        return Some((Ok(page.events), (next, last)));
                    }
                    Phase::Watch(revision) => match store.watch(&prefix, revision + 1).await {
                        Ok(w) => phase = Phase::Live(w),
                        Err(StoreError::Compacted { .. }) => phase = Phase::Backlog(last.clone()),
                        Err(e) => return Some((Err(e.into()), (Phase::Done, last))),
                    },
                    Phase::Live(mut w) => match w.next().await {
                        None => return None,
                        Some(Err(StoreError::Compacted { .. })) => phase = Phase::Backlog(last.clone()),
                        Some(Err(e)) => return Some((Err(e.into()), (Phase::Done, last))),
                        Some(Ok(batch)) => {
                            let mut events = Vec::new();
                            for e in batch.events {
                                if let WatchEvent::Put(kv) = e
                                    && kv.key > last
                                    && let Some(event) = event_log::watched(&kv)
                                {
                                    last = kv.key;
                                    events.push(event);
                                }
                            }
                            if !events.is_empty() {
                                return Some((Ok(events), (Phase::Live(w), last)));
                            }
                            phase = Phase::Live(w);
                        }
                    },
                }
            }
        }
    })
}
