//! What the CLI reads: JSON files, `key=value` flags, priorities, evidence, times.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use outrider_model::{PlanSpec, Priority, Role, Service, Sidecar, SidecarState};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::io::AsyncReadExt;

/// The text of `file`, or of standard input for `-`, and how to name it in messages.
async fn read_text(file: &Path) -> anyhow::Result<(String, String)> {
    if file == Path::new("-") {
        let mut text = String::new();
        tokio::io::stdin().read_to_string(&mut text).await.context("cannot read standard input")?;
        Ok((text, "standard input".to_owned()))
    } else {
        let text = tokio::fs::read_to_string(file).await.with_context(|| format!("cannot read {}", file.display()))?;
        Ok((text, file.display().to_string()))
    }
}

/// Reads a `what` (`sidecar`, `version`…) from the JSON file `file`, or standard input for `-`.
pub(super) async fn read_json<T: DeserializeOwned>(file: &Path, what: &str) -> anyhow::Result<T> {
    let (text, source) = read_text(file).await?;
    parse_json(&text, &source, what)
}

/// Reads a plan body from `file` (JSON; standard input for `-`) and checks it as the manager
/// would, so that a bad file is refused before anything is sent.
pub(super) async fn read_plan(file: &Path) -> anyhow::Result<PlanSpec> {
    let (text, source) = read_text(file).await?;
    parse_plan(&text, &source, file)
}

/// Parses and checks the plan body `text`, read from `source` (the file `file`). A `.yaml` or
/// `.yml` file is accepted only when it holds JSON (which is also YAML): there is no YAML
/// parser.
pub(super) fn parse_plan(text: &str, source: &str, file: &Path) -> anyhow::Result<PlanSpec> {
    let yaml = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if yaml && serde_json::from_str::<Value>(text).is_err() {
        anyhow::bail!(
            "{source}: YAML is not supported; write the plan body as JSON (a .yaml file is accepted only when it \
             holds JSON)"
        );
    }
    let spec: PlanSpec = parse_json(text, source, "plan body")?;
    spec.validate().with_context(|| format!("{source} holds an invalid plan body"))?;
    Ok(spec)
}

/// Parses an RFC 3339 time (`2026-02-01T00:00:00Z`, `2026-02-01T08:00:00+08:00`).
pub(super) fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-02-01T00:00:00Z: {e}"))
}

/// Parses `text` (read from `source`) as a `what`.
pub(super) fn parse_json<T: DeserializeOwned>(text: &str, source: &str, what: &str) -> anyhow::Result<T> {
    serde_json::from_str(text)
        .with_context(|| format!("{source} does not hold a valid {what} (a JSON object is expected)"))
}

/// A sidecar named `name`, every field not given taking the model's default.
pub(super) fn sidecar_from_flags(
    name: String,
    owner: Option<String>,
    description: Option<String>,
) -> anyhow::Result<Sidecar> {
    let body = json!({
        "name": name,
        "owner": owner.unwrap_or_default(),
        "description": description.unwrap_or_default(),
    });
    serde_json::from_value(body).context("cannot build the sidecar from the flags")
}

/// A service from `--name`, `--priority`, `--trait` and `--protected`.
pub(super) fn service_from_flags(
    name: String,
    priority: Option<Priority>,
    traits: Vec<(String, String)>,
    protected: bool,
) -> anyhow::Result<Service> {
    let mut map = BTreeMap::new();
    for (k, v) in traits {
        if map.insert(k.clone(), v).is_some() {
            anyhow::bail!("--trait {k} is given twice");
        }
    }
    Ok(Service { name, priority: priority.unwrap_or_default(), traits: map, protected, protected_periods: Vec::new() })
}

/// Parses `--trait KEY=VALUE`.
pub(super) fn parse_trait(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Parses `--priority` (`P0`, `P1`, `P2`, any case).
pub(super) fn parse_priority(s: &str) -> Result<Priority, String> {
    match s.to_ascii_uppercase().as_str() {
        "P0" => Ok(Priority::P0),
        "P1" => Ok(Priority::P1),
        "P2" => Ok(Priority::P2),
        _ => Err(format!("{s:?} is not a priority: use P0, P1 or P2")),
    }
}

/// Parses a sidecar state (`running`, `crash_loop`…).
pub(super) fn parse_state(s: &str) -> Result<SidecarState, String> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
        format!(
            "{s:?} is not a sidecar state: use starting, running, upgrading, draining, stopped, crash_loop or failed"
        )
    })
}

pub(super) fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|_| format!("{s:?} is not a role: use viewer, operator, admin or agent"))
}

/// The evidence of `version admit --evidence TEXT`: the JSON value TEXT holds, or else TEXT as
/// a string; a note that an operator admitted it by hand when not given.
pub(super) fn evidence(text: Option<String>) -> Value {
    match text {
        Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        None => Value::String("admitted by hand with the outrider CLI".to_owned()),
    }
}
