//! Parsing of the command line, and what the tables show.

use clap::{CommandFactory, Parser};
use outrider_client::{Distribution, VersionCount};
use outrider_model::{Instance, Priority, UpgradeMode};

use super::{input, render, *};

/// The resource commands as a whole program, the way `main` mounts them.
#[derive(Parser, Debug)]
#[command(name = "outrider")]
struct Cli {
    #[command(subcommand)]
    cmd: ResourceCommand,
}

fn parse(line: &str) -> Result<ResourceCommand, clap::Error> {
    Cli::try_parse_from(std::iter::once("outrider").chain(line.split_whitespace())).map(|c| c.cmd)
}

/// The verb of `line`, which must parse as resource `$variant`.
macro_rules! verb {
    ($line:expr, $variant:ident) => {
        match parse($line).unwrap() {
            ResourceCommand::$variant(verb) => *verb,
            other => panic!("{:?} parsed as {other:?}", $line),
        }
    };
}

#[test]
fn command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn binding_set_takes_flags_after_the_verb() {
    let BindingCommand::Set { service, sidecar, version, mode, disable, force, reason, conn } =
        verb!("binding set checkout mesh --version 1.2.0 --mode hot -o json", Binding)
    else {
        panic!("not binding set");
    };
    assert_eq!((service.as_str(), sidecar.as_str(), version.as_str()), ("checkout", "mesh", "1.2.0"));
    assert_eq!(mode, UpgradeMode::Hot);
    assert!(!disable && !force && reason.is_none());
    assert_eq!(conn.output, OutputFormat::Json);
}

#[test]
fn binding_set_force_needs_a_reason() {
    let BindingCommand::Set { force, reason, .. } =
        verb!("binding set checkout mesh --version 1.2.0 --force --reason hotfix", Binding)
    else {
        panic!("not binding set");
    };
    assert!(force);
    assert_eq!(reason.as_deref(), Some("hotfix"));
}

#[test]
fn connection_flags_have_defaults_and_overrides() {
    let BindingCommand::Set { mode, disable, conn, .. } =
        verb!("binding set checkout mesh --version 1.2.0 --disable", Binding)
    else {
        panic!("not binding set");
    };
    assert_eq!(mode, UpgradeMode::Restart);
    assert!(disable);
    assert_eq!(conn.output, OutputFormat::Table);
    assert_eq!(conn.manager, "http://127.0.0.1:7070");
    assert_eq!(conn.tenant, "default");
    assert_eq!(conn.token_file, None);

    let SidecarCommand::List { conn } =
        verb!("sidecar list --manager http://m:1 --tenant payments --token-file /t --output json", Sidecar)
    else {
        panic!("not sidecar list");
    };
    assert_eq!(conn.manager, "http://m:1");
    assert_eq!(conn.tenant, "payments");
    assert_eq!(conn.token_file.as_deref(), Some(std::path::Path::new("/t")));
    assert_eq!(conn.output, OutputFormat::Json);
}

#[test]
fn bad_values_are_refused() {
    for line in [
        "binding set checkout mesh --version 1.2.0 --mode sideways",
        "binding set checkout mesh --version 1.2.0 --force",
        "binding set checkout mesh",
        "sidecar list -o yaml",
        "version defective mesh 1.0.0",
        "version create mesh",
        "event list --since -1",
        "service create --name a --priority P3",
        "service create --name a --trait lang",
        "service update a",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
}

#[test]
fn create_takes_a_file_or_flags_but_not_both() {
    let cmd = verb!("sidecar create -f -", Sidecar);
    assert!(matches!(&cmd, SidecarCommand::Create { file: Some(f), name: None, .. } if f.as_os_str() == "-"));
    let cmd = verb!("sidecar create --name mesh --owner team-net", Sidecar);
    assert!(
        matches!(&cmd, SidecarCommand::Create { file: None, name: Some(n), owner: Some(o), .. } if n == "mesh" && o == "team-net")
    );
    for line in [
        "sidecar create",
        "sidecar create --owner me",
        "sidecar create -f x.json --name mesh",
        "sidecar create -f x.json --owner me",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }

    let cmd = verb!(
        "service create --name checkout --priority p0 --trait lang=go --trait protocol=http --protected",
        Service
    );
    let ServiceCommand::Create { file: None, name: Some(name), priority, traits, protected, .. } = cmd else {
        panic!("parsed as {cmd:?}");
    };
    let service = input::service_from_flags(name, priority, traits, protected).unwrap();
    assert_eq!(service.priority, Priority::P0);
    assert_eq!(service.traits["protocol"], "http");
    assert!(service.protected);
    assert!(parse("service create -f svc.json").is_ok());
    for line in [
        "service create -f svc.json --priority P1",
        "service create -f svc.json --protected",
        "service create --protected",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
}

#[test]
fn other_verbs_parse() {
    let VersionCommand::Admit { evidence, .. } = verb!("version admit mesh 1.2.0 --evidence {\"ci\":42}", Version)
    else {
        panic!("not version admit");
    };
    assert_eq!(input::evidence(evidence), serde_json::json!({"ci": 42}));
    assert!(parse("version defective mesh 1.2.0 --reason crashes").is_ok());
    assert!(parse("version distribution mesh -o json").is_ok());
    assert!(parse("tenant create payments").is_ok());
    let InstanceCommand::List { service, region, stage, env, conn, .. } =
        verb!("instance list --service checkout --region boe --stage canary --tenant t", Instance)
    else {
        panic!("instance list parses as List");
    };
    assert_eq!(
        (service.as_deref(), region.as_deref(), stage.as_deref(), env),
        (Some("checkout"), Some("boe"), Some("canary"), None)
    );
    assert_eq!(conn.tenant, "t");
    let cmd = verb!("instance delete i-7 -o json", Instance);
    assert!(matches!(cmd, InstanceCommand::Delete { ref id, .. } if id == "i-7"));
    let cmd = verb!("event follow --since 5 -o json", Event);
    assert!(matches!(cmd, EventCommand::Follow { since: Some(5), plan: None, .. }));
}

#[test]
fn flags_build_bodies_with_model_defaults() {
    let s = input::sidecar_from_flags("mesh".into(), None, Some("proxy".into())).unwrap();
    assert_eq!(s.description, "proxy");
    assert!(!s.upgrade_modes.is_empty());
    let dup = vec![("lang".to_owned(), "go".to_owned()), ("lang".to_owned(), "rust".to_owned())];
    assert!(input::service_from_flags("a".into(), None, dup, false).is_err());
    assert_eq!(input::evidence(Some("manual test".into())), serde_json::json!("manual test"));
    assert!(input::evidence(None).is_string());
    let err = input::parse_json::<outrider_model::Sidecar>("name: x", "s.yaml", "sidecar").unwrap_err();
    assert!(format!("{err:#}").starts_with("s.yaml does not hold a valid sidecar"));
}

#[test]
fn instance_table_shows_each_sidecar() {
    let instances: Vec<Instance> = serde_json::from_value(serde_json::json!([{
        "id": "i-1", "service": "checkout", "region": "boe", "env": "prod", "stage": "canary",
        "connected": true, "last_seen": "2026-01-01T00:00:00Z",
        "sidecars": [
            {"name": "mesh", "version": "1.2.0", "state": "running", "pid": 42, "restarts": 1},
            {"name": "logs", "version": "0.9.0", "state": "crash_loop", "restarts": 7}
        ]
    }]))
    .unwrap();
    let text = render::instances(&instances).trim_fmt();
    assert!(text.starts_with("ID"), "{text}");
    for want in [
        "i-1",
        "checkout",
        "boe",
        "prod",
        "canary",
        "yes",
        "mesh@1.2.0 running pid=42 restarts=1",
        "logs@0.9.0 crash_loop pid=- restarts=7",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn distribution_table_shows_shares_and_total() {
    let d = Distribution {
        sidecar: "mesh".into(),
        total: 4,
        versions: vec![
            VersionCount { version: "1.0.0".into(), instances: 3 },
            VersionCount { version: "1.1.0".into(), instances: 1 },
        ],
    };
    let text = render::distribution(&d).trim_fmt();
    assert!(text.contains("75.0%") && text.contains("25.0%") && text.contains("total"), "{text}");
}

/// The verb of a plan action line.
fn plan_verb(line: &str) -> PlanCommand {
    verb!(line, Plan)
}

#[test]
fn plan_verbs_parse() {
    let PlanCommand::Create { file, conn } = plan_verb("plan create -f plan.json --tenant payments") else {
        panic!("not plan create");
    };
    assert_eq!((file.as_os_str(), conn.tenant.as_str()), ("plan.json".as_ref(), "payments"));
    assert!(
        matches!(plan_verb("plan simulate --file - -o json"), PlanCommand::Simulate { conn, .. } if conn.output == OutputFormat::Json)
    );
    assert!(matches!(plan_verb("plan list"), PlanCommand::List { .. }));
    assert!(matches!(plan_verb("plan show p-1"), PlanCommand::Show { id, .. } if id == "p-1"));
    assert!(
        matches!(plan_verb("plan watch p-1 --since 7"), PlanCommand::Watch { id, since: Some(7), .. } if id == "p-1")
    );

    let PlanCommand::Approve(PlanActionArgs { id, reason, .. }) = plan_verb("plan approve p-1 --reason noise") else {
        panic!("not plan approve");
    };
    assert_eq!((id.as_str(), reason.as_deref()), ("p-1", Some("noise")));
    for (line, action) in [
        ("plan pause p-1", "pause"),
        ("plan resume p-1", "resume"),
        ("plan abort p-1", "abort"),
        ("plan rollback p-1", "rollback"),
        ("plan approve p-1", "approve"),
    ] {
        let got = match plan_verb(line) {
            PlanCommand::Pause(a) => ("pause", a),
            PlanCommand::Resume(a) => ("resume", a),
            PlanCommand::Abort(a) => ("abort", a),
            PlanCommand::Rollback(a) => ("rollback", a),
            PlanCommand::Approve(a) => ("approve", a),
            other => panic!("{line:?} parsed as {other:?}"),
        };
        assert_eq!((got.0, got.1.id.as_str(), got.1.reason.as_deref()), (action, "p-1", None));
    }
}

#[test]
fn freeze_verbs_parse() {
    let cmd = verb!(
        "freeze create --from 2026-02-01T00:00:00Z --to 2026-02-08T08:00:00+08:00 --reason new-year --service a --service b",
        Freeze
    );
    let FreezeCommand::Create { from, to, reason, services, .. } = cmd else { panic!("parsed as {cmd:?}") };
    assert_eq!(from, time::macros::datetime!(2026-02-01 00:00 UTC));
    assert_eq!(to, time::macros::datetime!(2026-02-08 00:00 UTC));
    assert_eq!((reason.as_str(), services), ("new-year", vec!["a".to_owned(), "b".to_owned()]));
    assert!(matches!(verb!("freeze list -o json", Freeze), FreezeCommand::List { .. }));
    assert!(matches!(verb!("freeze delete f-1", Freeze), FreezeCommand::Delete { id, .. } if id == "f-1"));
}

#[test]
fn webhook_verbs_parse() {
    let cmd = verb!(
        "webhook create --url http://127.0.0.1:9/h --event plan.blocked --event incident.opened --secret-file s.txt",
        Webhook
    );
    let WebhookCommand::Create { url, events, secret, secret_file, .. } = cmd else { panic!("parsed as {cmd:?}") };
    assert_eq!(url, "http://127.0.0.1:9/h");
    assert_eq!(events, ["plan.blocked", "incident.opened"]);
    assert_eq!((secret, secret_file), (None, Some("s.txt".into())));
    assert!(matches!(verb!("webhook list -o json", Webhook), WebhookCommand::List { .. }));
    assert!(matches!(verb!("webhook get w-1", Webhook), WebhookCommand::Get { id, .. } if id == "w-1"));
    assert!(matches!(verb!("webhook delete w-1", Webhook), WebhookCommand::Delete { id, .. } if id == "w-1"));
    for line in [
        "webhook create --url http://h/ --secret s3cret-key",
        "webhook create --url http://h/ --event plan.blocked",
        "webhook create --url http://h/ --event plan.blocked --secret a --secret-file f",
        "webhook get",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
}

#[test]
fn bad_plan_and_freeze_lines_are_refused() {
    for line in [
        "plan create",
        "plan create plan.json",
        "plan show",
        "plan watch",
        "plan watch p-1 --since soon",
        "plan pause",
        "plan approve p-1 --reason",
        "plan explode p-1",
        "freeze create --from 2026-02-01T00:00:00Z --to 2026-02-08T00:00:00Z",
        "freeze create --from yesterday --to 2026-02-08T00:00:00Z --reason x",
        "freeze create --from 2026-02-01 --to 2026-02-08T00:00:00Z --reason x",
        "freeze delete",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
    let err = parse("freeze create --from yesterday --to 2026-02-08T00:00:00Z --reason x").unwrap_err().to_string();
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn plan_files_are_json_checked_before_sending() {
    let file = std::path::Path::new("plan.json");
    let spec = input::parse_plan(r#"{"sidecar": "mesh", "target_version": "1.1.0"}"#, "plan.json", file).unwrap();
    assert_eq!(spec.phases.len(), 2, "default phases");
    // JSON is YAML: a .yaml file holding JSON is fine; real YAML is refused clearly.
    let yaml = std::path::Path::new("plan.YAML");
    assert!(input::parse_plan(r#"{"sidecar": "mesh", "target_version": "1.1.0"}"#, "plan.YAML", yaml).is_ok());
    let err = input::parse_plan("sidecar: mesh\ntarget_version: 1.1.0\n", "plan.yml", "plan.yml".as_ref()).unwrap_err();
    assert!(format!("{err:#}").contains("YAML is not supported"), "{err:#}");
    // Not JSON in a .json file; a field the model refuses; a value the model refuses.
    let err = input::parse_plan("sidecar: mesh", "plan.json", file).unwrap_err();
    assert!(format!("{err:#}").starts_with("plan.json does not hold a valid plan body"), "{err:#}");
    let err = input::parse_plan(r#"{"sidecar": "mesh", "target_version": "1.1.0", "colour": 1}"#, "plan.json", file)
        .unwrap_err();
    assert!(format!("{err:#}").contains("colour"), "{err:#}");
    let err = input::parse_plan(r#"{"sidecar": "mesh", "target_version": "1.1"}"#, "plan.json", file).unwrap_err();
    assert!(format!("{err:#}").contains("invalid plan body: target_version"), "{err:#}");
}

/// A plan as the manager answers it: phase `gray` with a passed, a baking and a pending batch,
/// phase `full` with two pending batches; `state` and incidents as given.
fn sample_plan(state: &str, incidents: serde_json::Value) -> outrider_model::Plan {
    let cell = |s: &str, n: u64| serde_json::json!({"service": s, "region": "boe", "env": "prod", "instances": n});
    serde_json::from_value(serde_json::json!({
        "id": "p-1", "name": "mesh to 1.1.0", "sidecar": "mesh", "target_version": "1.1.0",
        "state": state, "reason": if state == "blocked" { "incident on gray batch 1" } else { "" },
        "feature_services": ["checkout", "cart"],
        "phases": [
            {"name": "gray", "stage": "canary", "mode": "hot", "bake": "10m", "batches": [
                {"index": 0, "lane": 0, "cells": [cell("checkout", 1)], "state": "passed", "verdict": "pass",
                 "started_at": "2026-01-01T10:00:00Z"},
                {"index": 1, "lane": 0, "cells": [cell("cart", 2), cell("search", 1), cell("feed", 1)],
                 "state": "baking", "started_at": "2026-01-01T10:11:00Z"},
                {"index": 2, "lane": 0, "cells": [cell("ads", 5)], "state": "pending"}
            ]},
            {"name": "full", "stage": "all", "mode": "on-deploy", "bake": "30m", "batches": [
                {"index": 0, "lane": 0, "cells": [cell("checkout", 10)], "state": "pending"},
                {"index": 1, "lane": 1, "cells": [cell("cart", 20)], "state": "skipped"}
            ]}
        ],
        "counts": {"total": 39, "done": 1, "failed": 0, "pending": 18},
        "blast_radius": 5, "incidents": incidents, "cursor_phase": 0,
        "spec": {"sidecar": "mesh", "target_version": "1.1.0"},
        "created_at": "2026-01-01T09:59:00Z", "updated_at": "2026-01-01T10:12:00Z"
    }))
    .unwrap()
}

fn sample_incident() -> serde_json::Value {
    serde_json::json!([{
        "opened_at": "2026-01-01T10:12:00Z", "phase": "gray", "batch": 1, "metric": "sidecar_exits",
        "instances": ["cart-i0", "cart-i1", "search-i0", "feed-i0"], "canary_value": 4.0, "baseline_value": 0.0,
        "test": "fisher_exact p=0.0012", "summary": "4 of 4 upgraded instances exited; 0 of 40 others"
    }])
}

#[test]
fn plan_tables_show_progress_batches_and_incidents() {
    let plan = sample_plan("blocked", sample_incident());
    let list = render::plans(std::slice::from_ref(&plan)).trim_fmt();
    for want in ["ID", "DONE/TOTAL", "BLAST RADIUS", "p-1", "mesh to 1.1.0", "1.1.0", "blocked", "1/39", "5"] {
        assert!(list.contains(want), "{want:?} missing from\n{list}");
    }

    let text = render::plan(&plan);
    for want in [
        "blocked (incident on gray batch 1)",
        "checkout, cart",
        "1 done of 39 (0 failed, 18 pending)",
        "phase gray (current): stage canary, hot, bake 10m, 3 batches",
        "phase full: stage all, on-deploy, bake 30m, 2 batches",
        "INDEX",
        "VERDICT",
        "checkout/boe/prod",
        "3 cells: cart/boe/prod, search/boe/prod, …",
        "baking",
        "pass",
        "2026-01-01T10:11:00Z",
        "incidents:",
        "sidecar_exits",
        "cart-i0, cart-i1, search-i0 (+1)",
        "fisher_exact p=0.0012",
        "4 of 4 upgraded instances exited",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
    assert!(!render::plan(&sample_plan("running", serde_json::json!([]))).contains("incidents:"));

    let (done, total, status) = render::phase_progress(&plan.phases[0]);
    assert_eq!((done, total, status.as_str()), (1, 10, "batch 1 baking, 1/3 passed"));
    let (done, total, status) = render::phase_progress(&plan.phases[1]);
    assert_eq!((done, total, status.as_str()), (0, 10, "0/1 batches passed"), "skipped batches do not count");
    assert_eq!(
        render::progress_line(&plan),
        "plan p-1 blocked (incident on gray batch 1): gray 1/10 (batch 1 baking, 1/3 passed), full 0/10 (0/1 batches passed) \
         instances, blast radius 5"
    );
    let summary = render::plan_summary(&plan);
    assert!(summary.starts_with("plan p-1 (mesh to 1.1.0): mesh → 1.1.0, blocked"), "{summary}");
}

#[test]
fn simulation_and_freeze_tables() {
    let sim: outrider_model::Simulation = serde_json::from_value(serde_json::json!({
        "feature_services": ["checkout"],
        "phases": [{"name": "gray", "stage": "canary", "mode": "hot", "bake": "10m", "batches": [
            {"index": 0, "lane": 0, "cells": [{"service": "checkout", "region": "boe", "env": "prod", "instances": 3}],
             "state": "pending", "predicted_start": "2026-01-02T10:00:00Z"}
        ]}],
        "counts": {"total": 3, "done": 0, "failed": 0, "pending": 3},
        "start": "2026-01-01T00:00:00Z", "finish": "2026-01-02T10:10:00.5Z", "days": 1.4236,
        "notes": ["no window before 2026-01-02T10:00:00Z"]
    }))
    .unwrap();
    let text = render::simulation(&sim);
    for want in [
        "PREDICTED START",
        "gray",
        "checkout/boe/prod",
        "2026-01-02T10:00:00Z",
        "finish:",
        "2026-01-02T10:10:00Z\n",
        "days:",
        "1.42 (1d10h10m)",
        "no window before",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }

    let freezes: Vec<outrider_model::Freeze> = serde_json::from_value(serde_json::json!([
        {"id": "f-1", "from": "2026-02-01T00:00:00Z", "to": "2026-02-08T00:00:00Z", "reason": "new year"},
        {"id": "f-2", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "reason": "sale",
         "services": ["checkout", "cart"]}
    ]))
    .unwrap();
    let text = render::freezes(&freezes).trim_fmt();
    for want in ["ID", "f-1", "2026-02-08T00:00:00Z", "(all)", "new year", "checkout,cart", "sale"] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

/// The target (path and query) of the HTTP/1.1 request on `sock`, once its head is read.
async fn read_target(sock: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;

    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or_default().to_owned())
}

/// Answers `status` (`200 OK`) with a JSON `body` on `sock`, and closes it.
async fn answer_json(sock: &mut tokio::net::TcpStream, status: &str, body: &str) {
    use tokio::io::AsyncWriteExt;

    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(answer.as_bytes()).await;
}

/// A tiny HTTP/1.1 server playing the manager for `plan watch` in tenant `default`: each GET
/// of plan `p-1` answers the next of `plans` (then the last again); the plan's event list
/// answers `events` after `since`, its event stream sends `events` and stays open; anything
/// else is a 404.
async fn fake_manager(plans: Vec<outrider_model::Plan>, events: Vec<serde_json::Value>) -> String {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Mutex::new(0usize));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (plans, events, served) = (plans.clone(), events.clone(), served.clone());
            tokio::spawn(async move {
                let Some(target) = read_target(&mut sock).await else { return };
                let events_of_p1 = target.starts_with("/api/v1/tenants/default/events?") && target.contains("plan=p-1");
                if events_of_p1 && !target.contains("follow=true") {
                    let since: u64 = target
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix("since="))
                        .map_or(0, |s| s.parse().unwrap());
                    let after: Vec<&serde_json::Value> =
                        events.iter().filter(|e| e["seq"].as_u64().unwrap() > since).collect();
                    answer_json(&mut sock, "200 OK", &serde_json::to_string(&after).unwrap()).await;
                    return;
                }
                if events_of_p1 {
                    let mut body = String::new();
                    for e in &events {
                        body.push_str(&format!("{e}\n"));
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{body}"
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                    // Stay open, like a live stream.
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    return;
                }
                if target == "/api/v1/tenants/default/plans/p-1" {
                    let body = {
                        let mut n = served.lock().unwrap();
                        let plan = &plans[(*n).min(plans.len() - 1)];
                        *n += 1;
                        serde_json::to_string(plan).unwrap()
                    };
                    answer_json(&mut sock, "200 OK", &body).await;
                } else {
                    let body = r#"{"error": {"code": "not_found", "message": "no such plan"}}"#;
                    answer_json(&mut sock, "404 Not Found", body).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

fn plan_event(seq: u64, kind: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({"seq": seq, "time": "2026-01-01T10:00:00Z", "tenant": "default", "kind": kind,
                       "actor": "executor", "object": "plan/p-1", "reason": reason, "plan": "p-1", "detail": {}})
}

/// Runs `plan watch p-1` against `manager` without bars; returns what it printed and how it
/// ended.
async fn run_watch(manager: &str, id: &str, format: OutputFormat) -> (String, anyhow::Result<()>) {
    let client = outrider_client::Client::new(manager, None).unwrap();
    let options = watch::WatchOptions {
        poll: std::time::Duration::from_millis(40),
        refresh: std::time::Duration::from_millis(40),
        bars: false,
        format,
    };
    let mut out = Vec::new();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        watch::watch(&client, "default", id, None, options, &mut out),
    )
    .await
    .expect("the watch did not end");
    (String::from_utf8(out).unwrap(), result)
}

#[tokio::test]
async fn watch_follows_a_plan_through_a_block_to_completion() {
    let mut completed = sample_plan("completed", sample_incident());
    for b in completed.phases.iter_mut().flat_map(|p| &mut p.batches) {
        if b.state != outrider_model::BatchState::Skipped {
            b.state = outrider_model::BatchState::Passed;
        }
    }
    let plans = vec![
        sample_plan("running", serde_json::json!([])),
        sample_plan("blocked", sample_incident()),
        sample_plan("blocked", sample_incident()),
        sample_plan("running", sample_incident()),
        completed,
    ];
    let events = vec![
        plan_event(3, "plan.created", ""),
        plan_event(4, "batch.verdict", "fail"),
        plan_event(5, "plan.state", "blocked"),
    ];
    let manager = fake_manager(plans, events).await;
    let (out, result) = run_watch(&manager, "p-1", OutputFormat::Table).await;
    result.unwrap();
    for want in [
        "plan p-1 running: gray 1/10 (batch 1 baking, 1/3 passed), full 0/10 (0/1 batches passed) instances, blast radius 5",
        "10:00:00Z  plan.state  blocked",
        "10:00:00Z  plan.created\n",
        "incident:",
        "sidecar_exits",
        "plan p-1 is blocked: incident on gray batch 1",
        "outrider plan approve p-1",
        "outrider plan rollback p-1",
        "gray 10/10 (done), full 10/10 (done)",
        "plan p-1 completed: 1 of 39 instances done, blast radius 5",
    ] {
        assert!(out.contains(want), "{want:?} missing from\n{out}");
    }
    // Told once each, although the plan was seen blocked twice.
    assert_eq!(out.matches("is blocked").count(), 1, "{out}");
    assert_eq!(out.matches("incident:").count(), 1, "{out}");
}

#[tokio::test]
async fn watch_fails_when_the_plan_does_not_complete() {
    let manager = fake_manager(
        vec![sample_plan("running", serde_json::json!([])), sample_plan("rolled_back", sample_incident())],
        vec![plan_event(9, "plan.state", "rolled_back")],
    )
    .await;
    let (out, result) = run_watch(&manager, "p-1", OutputFormat::Json).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.starts_with("plan p-1 did not complete: rolled_back: 1 of 39 instances done"), "{err}");
    // JSON lines only: the events, nothing else.
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["kind"], "plan.state");

    let (_, result) = run_watch(&manager, "p-9", OutputFormat::Table).await;
    assert!(format!("{:#}", result.unwrap_err()).contains("not_found"));
}

#[tokio::test]
async fn watching_a_plan_that_ended_tells_its_story() {
    let mut done = sample_plan("completed", serde_json::json!([]));
    done.reason = "every batch passed".into();
    let events = vec![plan_event(3, "plan.created", ""), plan_event(8, "plan.state", "every batch passed")];
    let manager = fake_manager(vec![done], events).await;
    let (out, result) = run_watch(&manager, "p-1", OutputFormat::Table).await;
    result.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "10:00:00Z  plan.created", "{out}");
    assert_eq!(lines[1], "10:00:00Z  plan.state  every batch passed", "{out}");
    assert!(lines[2].starts_with("plan p-1 completed (every batch passed): gray"), "{out}");
    assert_eq!(lines[3], "plan p-1 completed (every batch passed): 1 of 39 instances done, blast radius 5");
    assert_eq!(lines.len(), 4, "{out}");
}

#[test]
fn wait_verbs_parse() {
    let WaitCommand::Manager { timeout, conn } = verb!("wait manager", Wait) else { panic!("not wait manager") };
    assert_eq!((timeout.0, conn.token_file), (std::time::Duration::from_secs(30), None));
    let WaitCommand::Manager { timeout, conn } = verb!("wait manager --timeout 2s --token-file /t -o json", Wait)
    else {
        panic!("not wait manager");
    };
    assert_eq!(timeout.0, std::time::Duration::from_secs(2));
    assert_eq!((conn.token_file.as_deref(), conn.output), (Some(std::path::Path::new("/t")), OutputFormat::Json));

    let WaitCommand::Instance { id, sidecar, version, state, timeout, .. } = verb!("wait instance i-1", Wait) else {
        panic!("not wait instance");
    };
    assert_eq!((id.as_str(), sidecar, version), ("i-1", None, None));
    assert_eq!((state, timeout.0), (outrider_model::SidecarState::Running, std::time::Duration::from_secs(60)));
    let WaitCommand::Instance { sidecar, version, state, timeout, conn, .. } =
        verb!("wait instance i-1 --sidecar demo --version 1.1.0 --state crash_loop --timeout 1m30s --tenant t", Wait)
    else {
        panic!("not wait instance");
    };
    assert_eq!((sidecar.as_deref(), version.as_deref()), (Some("demo"), Some("1.1.0")));
    assert_eq!((state, timeout.0), (outrider_model::SidecarState::CrashLoop, std::time::Duration::from_secs(90)));
    assert_eq!(conn.tenant, "t");

    for line in
        ["wait", "wait instance", "wait manager i-1", "wait manager --timeout soon", "wait instance i-1 --state up"]
    {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
    let err = parse("wait instance i-1 --state up").unwrap_err().to_string();
    assert!(err.contains("is not a sidecar state: use starting, running"), "{err}");
}

/// Instance `id` as the manager lists it, with `sidecars` (`[name, version, state]`).
fn listed(id: &str, connected: bool, sidecars: &[[&str; 3]]) -> Instance {
    let sidecars: Vec<_> = sidecars
        .iter()
        .map(|[name, version, state]| {
            let error = (*state == "crash_loop").then_some("exited with status 1");
            serde_json::json!({"name": name, "version": version, "state": state, "pid": 7, "restarts": 2, "error": error})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "id": id, "service": "checkout", "region": "boe", "env": "prod", "stage": "canary",
        "connected": connected, "last_seen": "2026-01-01T00:00:00Z", "sidecars": sidecars
    }))
    .unwrap()
}

#[test]
fn an_instance_goal_needs_the_instance_connected_and_its_sidecars_in_the_state() {
    use outrider_model::SidecarState::{Running, Stopped};

    let demo = wait::InstanceGoal { id: "i-1", sidecar: Some("demo"), version: None, state: Running };
    let check = |goal: &wait::InstanceGoal<'_>, instances: &[Instance]| goal.check(instances).map(|i| i.id);
    assert_eq!(check(&demo, &[]), Err("instance i-1 is not registered".into()));
    assert_eq!(
        check(&demo, &[listed("i-1", false, &[["demo", "1.0.0", "running"]])]),
        Err("instance i-1 is registered but its agent is not connected".into())
    );
    assert_eq!(
        check(&demo, &[listed("i-1", true, &[["logs", "1.0.0", "running"]])]),
        Err("instance i-1 does not report sidecar demo".into())
    );
    assert_eq!(
        check(&demo, &[listed("i-1", true, &[["demo", "1.0.0", "crash_loop"]])]),
        Err("instance i-1: demo@1.0.0 crash_loop pid=7 restarts=2 (exited with status 1)".into())
    );
    let running =
        [listed("i-2", true, &[]), listed("i-1", true, &[["logs", "1.0.0", "failed"], ["demo", "1.0.0", "running"]])];
    assert_eq!(check(&demo, &running), Ok("i-1".into()), "only the named sidecar counts");

    let at_1_1 = wait::InstanceGoal { version: Some("1.1.0"), ..demo };
    assert_eq!(check(&at_1_1, &running), Err("instance i-1: demo@1.0.0 running pid=7 restarts=2".into()));

    let every = wait::InstanceGoal { sidecar: None, ..demo };
    assert_eq!(check(&every, &[listed("i-1", true, &[])]), Err("instance i-1 does not report any sidecar".into()));
    assert_eq!(
        check(&every, &running),
        Err("instance i-1: logs@1.0.0 failed pid=7 restarts=2, demo@1.0.0 running pid=7 restarts=2".into())
    );
    let both = [listed("i-1", true, &[["logs", "1.0.0", "stopped"], ["demo", "1.0.0", "stopped"]])];
    assert_eq!(check(&wait::InstanceGoal { state: Stopped, ..every }, &both), Ok("i-1".into()));
}

/// A tiny HTTP/1.1 server that answers GET `path` with the next of `answers` (status, JSON
/// body; then the last again) and anything else with a 404; returns its URL.
async fn fake_answers(path: &'static str, answers: Vec<(&'static str, String)>) -> String {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (answers, served) = (answers.clone(), served.clone());
            tokio::spawn(async move {
                let Some(target) = read_target(&mut sock).await else { return };
                if target == path {
                    let (status, body) = &answers[served.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1)];
                    answer_json(&mut sock, status, body).await;
                } else {
                    answer_json(&mut sock, "404 Not Found", r#"{"error": {"code": "not_found", "message": "?"}}"#)
                        .await;
                }
            });
        }
    });
    format!("http://{addr}")
}

fn conn_to(manager: &str, token_file: Option<std::path::PathBuf>) -> ConnectArgs {
    ConnectArgs {
        manager: manager.to_owned(),
        ca_file: None,
        token_file,
        tenant: "default".into(),
        output: OutputFormat::Table,
    }
}

const NOT_READY: &str = r#"{"error": {"code": "not_ready", "message": "store opening"}}"#;

#[tokio::test]
async fn wait_manager_waits_for_readyz_and_the_token_file() {
    let manager = fake_answers(
        "/readyz",
        vec![("503 Service Unavailable", NOT_READY.into()), ("200 OK", r#"{"status": "ready"}"#.into())],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    let write = {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            std::fs::write(&token, "otr_x\n").unwrap();
        })
    };
    let started = std::time::Instant::now();
    wait::manager(&conn_to(&manager, Some(token)), std::time::Duration::from_secs(10)).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(500), "ready before the token file was written");
    write.await.unwrap();
    // Without --token-file, /readyz is enough.
    wait::manager(&conn_to(&manager, None), std::time::Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn wait_manager_times_out_with_what_it_saw_last() {
    let timeout = std::time::Duration::from_millis(500);
    let manager = fake_answers("/readyz", vec![("200 OK", "{}".into())]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    let started = std::time::Instant::now();
    let err = wait::manager(&conn_to(&manager, Some(token.clone())), timeout).await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    let want = format!(
        "the manager at {manager} was not ready within 500ms; last seen: cannot read the token file {}: ",
        token.display()
    );
    assert!(format!("{err:#}").starts_with(&want), "{err:#}");

    let manager = fake_answers("/readyz", vec![("503 Service Unavailable", NOT_READY.into())]).await;
    let err = wait::manager(&conn_to(&manager, None), timeout).await.unwrap_err();
    assert!(format!("{err:#}").ends_with("last seen: /readyz: not_ready: store opening"), "{err:#}");

    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = wait::manager(&conn_to(&format!("http://127.0.0.1:{port}"), None), timeout).await.unwrap_err();
    assert!(format!("{err:#}").contains("last seen: /readyz: request to the manager failed"), "{err:#}");

    // It accepts connections but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let manager = format!("http://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let err = wait::manager(&conn_to(&manager, None), timeout).await.unwrap_err();
    assert!(format!("{err:#}").ends_with("within 500ms; last seen: no answer in time"), "{err:#}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}

const INSTANCES: &str = "/api/v1/tenants/default/instances";

fn instances_json(instances: &[Instance]) -> String {
    serde_json::to_string(instances).unwrap()
}

#[tokio::test]
async fn wait_instance_follows_the_instance_until_its_sidecar_runs() {
    let answers = vec![
        ("502 Bad Gateway", "{}".into()),
        ("200 OK", "[]".into()),
        ("200 OK", instances_json(&[listed("i-1", false, &[])])),
        ("200 OK", instances_json(&[listed("i-1", true, &[["demo", "1.0.0", "starting"]])])),
        ("200 OK", instances_json(&[listed("i-1", true, &[["demo", "1.0.0", "running"]])])),
    ];
    let manager = fake_answers(INSTANCES, answers).await;
    let goal = wait::InstanceGoal {
        id: "i-1",
        sidecar: Some("demo"),
        version: Some("1.0.0"),
        state: outrider_model::SidecarState::Running,
    };
    let instance = wait::instance(&conn_to(&manager, None), goal, std::time::Duration::from_secs(10)).await.unwrap();
    assert_eq!(render::sidecar_status(&instance.sidecars[0]), "demo@1.0.0 running pid=7 restarts=2");
}

#[tokio::test]
async fn wait_instance_times_out_with_the_last_state_or_fails_at_once_when_refused() {
    let crashing = instances_json(&[listed("i-1", true, &[["demo", "1.0.0", "crash_loop"]])]);
    let manager = fake_answers(INSTANCES, vec![("200 OK", crashing)]).await;
    let goal = wait::InstanceGoal {
        id: "i-1",
        sidecar: Some("demo"),
        version: None,
        state: outrider_model::SidecarState::Running,
    };
    let timeout = std::time::Duration::from_millis(500);
    let err = wait::instance(&conn_to(&manager, None), goal, timeout).await.unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "instance i-1 did not report sidecar demo running within 500ms; last seen: instance i-1: demo@1.0.0 crash_loop \
         pid=7 restarts=2 (exited with status 1)"
    );

    let refused = r#"{"error": {"code": "unauthenticated", "message": "unknown token"}}"#;
    let manager = fake_answers(INSTANCES, vec![("401 Unauthorized", refused.into())]).await;
    let started = std::time::Instant::now();
    let err = wait::instance(&conn_to(&manager, None), goal, std::time::Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(format!("{err:#}"), "unauthenticated: unknown token");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}
