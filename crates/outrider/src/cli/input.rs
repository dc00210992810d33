//! What the CLI reads: JSON files, `key=value` flags, priorities, evidence.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use outrider_model::{Priority, Service, Sidecar};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// Reads a `what` (`sidecar`, `version`…) from the JSON file `file`, or standard input for `-`.
pub(super) async fn read_json<T: DeserializeOwned>(file: &Path, what: &str) -> anyhow::Result<T> {
    let (text, source) = if file == Path::new("-") {
        let mut text = String::new();
        tokio::io::stdin().read_to_string(&mut text).await.context("cannot read standard input")?;
        (text, "standard input".to_owned())
    } else {
        let text = tokio::fs::read_to_string(file).await.with_context(|| format!("cannot read {}", file.display()))?;
        (text, file.display().to_string())
    };
    parse_json(&text, &source, what)
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
    Ok(Service { name, priority: priority.unwrap_or_default(), traits: map, protected, windows: Vec::new() })
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

/// The evidence of `version admit --evidence TEXT`: the JSON value TEXT holds, or else TEXT as
/// a string; a note that an operator admitted it by hand when not given.
pub(super) fn evidence(text: Option<String>) -> Value {
    match text {
        Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        None => Value::String("admitted by hand with the outrider CLI".to_owned()),
    }
}
