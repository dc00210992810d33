//! What the CLI prints: tables for people, JSON for scripts.

mod plan;
mod token;
mod webhook;

use std::io::{ErrorKind, Write};

use anyhow::Context;
use comfy_table::{ContentArrangement, Table, presets};
use outrider_client::Distribution;
use outrider_model::{
    Binding, Event, Instance, Probe, ProbeCheck, Scrape, Service, Sidecar, SidecarStatus, Tenant, Version,
};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

pub(super) use self::plan::{
    freezes, incidents, phase_progress, plan, plan_summary, plans, progress_line, simulation, watch_event_line,
};
pub(super) use self::token::{issued, tokens};
pub(super) use self::webhook::{webhook, webhooks};
use super::OutputFormat;

/// Prints `value` as pretty JSON, or as the table `table` makes of it.
pub(super) fn emit<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)?,
        OutputFormat::Table => table(value).trim_fmt(),
    };
    print_line(&text)?;
    Ok(())
}

/// Prints `value` as pretty JSON, or as the text `text` makes of it.
pub(super) fn emit_text<T: Serialize>(
    format: OutputFormat,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)?,
        OutputFormat::Table => text(value),
    };
    print_line(&text)?;
    Ok(())
}

/// Writes `text` and a newline to standard output and flushes. `Ok(false)` when the reader
/// has gone away (a closed pipe), which is not an error for a CLI.
pub(super) fn print_line(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

/// A borderless table with these column headers (kubectl style).
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(header.to_vec());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t
}

/// A two-column `field: value` table, for one object.
fn fields(rows: Vec<(&str, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t
}

/// The JSON spelling of a unit enum (`P2`, `active`, `on-deploy`).
fn spelled<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `-` for an empty value.
fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// A command line, with the arguments that need it quoted.
fn command_line(args: &[String]) -> String {
    let quote = |a: &String| {
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '\\')) {
            format!("{a:?}")
        } else {
            a.clone()
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn probe(p: Option<&Probe>) -> String {
    let Some(p) = p else { return "-".to_owned() };
    let check = match p.check() {
        Some(ProbeCheck::Tcp(addr)) => format!("tcp {addr}"),
        Some(ProbeCheck::Http(url)) => format!("http {url}"),
        Some(ProbeCheck::Exec(cmd)) => format!("exec {}", command_line(cmd)),
        None => "invalid".to_owned(),
    };
    format!(
        "{check} (every {}, timeout {}, deadline {}, {} failures)",
        p.period, p.timeout, p.deadline, p.failure_threshold
    )
}

fn pairs<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>, sep: &str) -> String {
    or_dash(map.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(sep))
}

pub(super) fn tenants(tenants: &[Tenant]) -> Table {
    let mut t = table(&["NAME", "CREATED"]);
    for tenant in tenants {
        t.add_row(vec![tenant.name.clone(), timestamp(tenant.created_at)]);
    }
    t
}

fn modes(s: &Sidecar) -> String {
    s.upgrade_modes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub(super) fn sidecars(sidecars: &[Sidecar]) -> Table {
    let mut t = table(&["NAME", "OWNER", "MODES", "DRAIN", "METRICS", "DESCRIPTION"]);
    for s in sidecars {
        t.add_row(vec![
            s.name.clone(),
            or_dash(s.owner.clone()),
            modes(s),
            s.lifecycle.drain_time.to_string(),
            or_dash(s.metrics.join(",")),
            or_dash(s.description.clone()),
        ]);
    }
    t
}

pub(super) fn sidecar(s: &Sidecar) -> Table {
    fields(vec![
        ("name", s.name.clone()),
        ("owner", or_dash(s.owner.clone())),
        ("description", or_dash(s.description.clone())),
        ("upgrade modes", modes(s)),
        ("drain time", s.lifecycle.drain_time.to_string()),
        ("min ready", s.lifecycle.min_ready.to_string()),
        ("startup probe", probe(s.lifecycle.startup_probe.as_ref())),
        ("liveness probe", probe(s.lifecycle.liveness_probe.as_ref())),
        ("metrics", or_dash(s.metrics.join(", "))),
        ("scraped", scrape(s.lifecycle.scrape.as_ref())),
    ])
}

/// `http://…/metrics every 5s: error_ratio, rps`.
fn scrape(s: Option<&Scrape>) -> String {
    let Some(s) = s else { return "-".to_owned() };
    let series = s.series.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ");
    format!("{} every {}: {series}", s.url, s.interval)
}

pub(super) fn versions(versions: &[Version]) -> Table {
    let mut t = table(&["VERSION", "STATE", "ADMITTED", "CREATED", "ARTIFACT"]);
    for v in versions {
        t.add_row(vec![
            v.version.clone(),
            spelled(&v.state),
            yes_no(v.admitted),
            timestamp(v.created_at),
            v.artifact.url.clone(),
        ]);
    }
    t
}

pub(super) fn version(v: &Version) -> Table {
    let evidence = match &v.admission_evidence {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    fields(vec![
        ("sidecar", v.sidecar.clone()),
        ("version", v.version.clone()),
        ("state", spelled(&v.state)),
        ("admitted", yes_no(v.admitted)),
        ("evidence", evidence),
        ("defect reason", v.defect_reason.clone().unwrap_or_else(|| "-".to_owned())),
        ("recall to", v.recall_to.clone().or_else(|| v.recall_skipped.clone()).unwrap_or_else(|| "-".to_owned())),
        ("completed plan", v.completed_plan.clone().unwrap_or_else(|| "-".to_owned())),
        ("artifact", v.artifact.url.clone()),
        ("sha256", v.artifact.sha256.clone()),
        ("command", command_line(&v.command)),
        ("env", pairs(&v.env, "\n")),
        ("notes", or_dash(v.notes.clone())),
        ("created", timestamp(v.created_at)),
    ])
}

pub(super) fn distribution(d: &Distribution) -> Table {
    let share = |n: u64| {
        if d.total == 0 { "-".to_owned() } else { format!("{:.1}%", n as f64 * 100.0 / d.total as f64) }
    };
    let mut t = table(&["VERSION", "INSTANCES", "SHARE"]);
    for v in &d.versions {
        t.add_row(vec![v.version.clone(), v.instances.to_string(), share(v.instances)]);
    }
    t.add_row(vec!["total".to_owned(), d.total.to_string(), share(d.total)]);
    t
}

pub(super) fn services(services: &[Service]) -> Table {
    let mut t = table(&["NAME", "PRIORITY", "PROTECTED", "TRAITS", "PROTECTED PERIODS"]);
    for s in services {
        t.add_row(vec![
            s.name.clone(),
            spelled(&s.priority),
            yes_no(s.protected),
            pairs(&s.traits, ","),
            s.protected_periods.len().to_string(),
        ]);
    }
    t
}

pub(super) fn service(s: &Service) -> Table {
    let periods = s
        .protected_periods
        .iter()
        .map(|w| {
            let reason = if w.reason.is_empty() { String::new() } else { format!(" ({})", w.reason) };
            format!("{} to {}{reason}", timestamp(w.from), timestamp(w.to))
        })
        .collect::<Vec<_>>()
        .join("\n");
    fields(vec![
        ("name", s.name.clone()),
        ("priority", spelled(&s.priority)),
        ("protected", yes_no(s.protected)),
        ("traits", pairs(&s.traits, "\n")),
        ("protected periods", or_dash(periods)),
    ])
}

pub(super) fn bindings(bindings: &[Binding]) -> Table {
    let mut t = table(&["SIDECAR", "VERSION", "MODE", "ENABLED"]);
    for b in bindings {
        t.add_row(vec![b.sidecar.clone(), b.version.clone(), b.mode.to_string(), yes_no(b.enabled)]);
    }
    t
}

/// One sidecar on an instance: `mesh@1.2.0 running pid=42 restarts=1`, then its scraped
/// series (`error_ratio=0.012`).
pub(super) fn sidecar_status(s: &SidecarStatus) -> String {
    let pid = s.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let mut line = format!("{}@{} {} pid={pid} restarts={}", s.name, s.version, s.state, s.restarts);
    for (name, value) in &s.metrics {
        line.push_str(&format!(" {name}={value:.3}"));
    }
    line
}

pub(super) fn instances(instances: &[Instance]) -> Table {
    let mut t = table(&["ID", "SERVICE", "REGION", "ENV", "STAGE", "CONNECTED", "SIDECARS"]);
    for i in instances {
        let sidecars = i.sidecars.iter().map(sidecar_status).collect::<Vec<_>>().join("\n");
        t.add_row(vec![
            i.id.clone(),
            i.service.clone(),
            i.labels.region.clone(),
            i.labels.env.clone(),
            i.labels.stage.clone(),
            yes_no(i.connected),
            or_dash(sidecars),
        ]);
    }
    t
}

pub(super) fn events(events: &[Event]) -> Table {
    let mut t = table(&["SEQ", "TIME", "KIND", "ACTOR", "OBJECT", "PLAN", "REASON"]);
    for e in events {
        t.add_row(vec![
            e.seq.to_string(),
            timestamp(e.time),
            e.kind.clone(),
            e.actor.clone(),
            e.object.clone(),
            e.plan.clone().unwrap_or_else(|| "-".to_owned()),
            or_dash(e.reason.clone()),
        ]);
    }
    t
}

/// One event on one line, for `event follow`.
pub(super) fn event_line(e: &Event) -> String {
    let plan = e.plan.as_deref().map(|p| format!("  plan={p}")).unwrap_or_default();
    let reason = if e.reason.is_empty() { String::new() } else { format!("  {}", e.reason) };
    format!("{}  {}  {}  {}  {}{plan}{reason}", e.seq, timestamp(e.time), e.kind, e.actor, e.object)
}
