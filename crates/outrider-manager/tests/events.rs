//! The event log over HTTP: paged reads by sequence, plan and time, a stream that follows,
//! and bounded retention that tells a cursor older than the log.

use std::{path::Path, sync::Arc, time::Duration};

use futures::StreamExt;
use outrider_manager::{ManagerConfig, RunningManager, Tuning, executor::SystemClock, start_with};
use serde_json::{Value, json};

async fn boot(dir: &Path, tuning: Tuning) -> (RunningManager, String) {
    let config = ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap());
    let m = start_with(config, Arc::new(SystemClock), tuning).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    (m, token)
}

#[tokio::test]
async fn reads_by_sequence_time_and_limit_and_a_stream_that_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (m, token) = boot(dir.path(), Tuning::default()).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}/api/v1/tenants/default{p}", m.addr);
    let get = |q: String| {
        let req = http.get(url(&format!("/events{q}"))).bearer_auth(&token);
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{q}: {}", r.status());
            r.json::<Vec<Value>>().await.unwrap()
        }
    };
    for i in 0..6 {
        let r = http.post(url("/services")).bearer_auth(&token).json(&json!({"name": format!("s{i}")})).send().await;
        assert!(r.unwrap().status().is_success());
    }
    let all = get(String::new()).await;
    assert_eq!(all.len(), 7, "the tenant's creation and six services: {all:?}");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let page = get(format!("?since={}&limit=2", seqs[2])).await;
    assert_eq!(page.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), seqs[3..5]);
    let from = all[4]["time"].as_str().unwrap();
    let from_time = get(format!("?from={from}")).await;
    assert_eq!(from_time.first().map(|e| e["seq"].clone()), Some(all[4]["seq"].clone()), "{from_time:?}");
    assert!(get("?from=2999-01-01T00:00:00Z".into()).await.is_empty());
    assert!(get("?plan=p-none".into()).await.is_empty());
    let bad = http.get(url("/events?from=yesterday")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    // A stream: the backlog after the cursor, then what is committed later.
    let stream = http.get(url(&format!("/events?follow=true&since={}", seqs[5]))).bearer_auth(&token).send().await;
    let mut body = stream.unwrap().bytes_stream();
    let r = http.post(url("/services")).bearer_auth(&token).json(&json!({"name": "late"})).send().await;
    assert!(r.unwrap().status().is_success());
    let mut text = String::new();
    while text.lines().count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["seq"], all[6]["seq"]);
    assert_eq!(lines[1]["object"], "service/late");
    m.shutdown().await;
}

#[tokio::test]
async fn the_event_log_keeps_the_newest_events_and_since_cursors_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let retention = outrider_manager::Retention { events_per_tenant: 5, every: Duration::from_millis(200) };
    let (m, token) = boot(dir.path(), Tuning { retention, ..Tuning::default() }).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}/api/v1/tenants/default{p}", m.addr);
    for i in 0..12 {
        let body = serde_json::json!({"name": format!("svc{i}")});
        let r = http.post(url("/services")).bearer_auth(&token).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
    }
    let events = |q: String| {
        let req = http.get(url(&format!("/events{q}"))).bearer_auth(&token);
        async move { req.send().await.unwrap().json::<Vec<serde_json::Value>>().await.unwrap() }
    };
    let mut kept = events(String::new()).await;
    for _ in 0..50 {
        if kept.len() <= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        kept = events(String::new()).await;
    }
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert_eq!(kept[4]["object"], "service/svc11", "the newest stay");
    let since = kept[1]["seq"].as_u64().unwrap();
    let after: Vec<u64> = events(format!("?since={since}")).await.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = kept[2..].iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(after, expected);
    assert_eq!(events("?since=1".into()).await.len(), 5, "a cursor older than the log still works");
    let trimmed = |q: &'static str| {
        let req = http.get(url(&format!("/events{q}"))).bearer_auth(&token);
        async move {
            let r = req.send().await.unwrap();
            r.headers().get("outrider-events-trimmed").map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
        }
    };
    let oldest = kept[0]["seq"].as_u64().unwrap();
    let told = trimmed("?since=1").await.expect("a cursor older than the log is told");
    assert!(told > 1 && told < oldest, "{told} vs the oldest kept {oldest}");
    assert_eq!(trimmed("?since=1&follow=false").await, Some(told));
    let current = format!("?since={since}");
    let req = http.get(url(&format!("/events{current}"))).bearer_auth(&token);
    assert!(req.send().await.unwrap().headers().get("outrider-events-trimmed").is_none(), "a current cursor is not");
    m.shutdown().await;
}
