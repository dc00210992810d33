use thiserror::Error;

use crate::InstanceLabels;

/// Why a string cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlaceholderError {
    /// A `${` without its `}`; holds the whole string.
    #[error("unclosed placeholder in {0:?}")]
    Unclosed(String),
    /// `${label.KEY}` for a label the instance does not have; holds the key.
    #[error("instance has no label {0:?}")]
    MissingLabel(String),
    /// A placeholder name that is not one of the known ones; holds the name.
    #[error("unknown placeholder ${{{0}}}")]
    Unknown(String),
}

/// What placeholders expand to on one instance.
#[derive(Debug, Clone, Copy)]
pub struct PlaceholderContext<'a> {
    /// `${instance}`.
    pub instance: &'a str,
    /// `${service}`.
    pub service: &'a str,
    /// `${label.KEY}`.
    pub labels: &'a InstanceLabels,
    /// `${artifact}`: path of the fetched artifact.
    pub artifact: &'a str,
}

/// Expands `${instance}`, `${service}`, `${artifact}` and `${label.KEY}` in `s`. An unknown
/// placeholder or a missing label is an error naming it, so a sidecar never starts with a
/// half-expanded command line.
pub fn expand(s: &str, ctx: &PlaceholderContext<'_>) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| PlaceholderError::Unclosed(s.to_owned()))?;
        let name = &after[..end];
        let value = match name {
            "instance" => ctx.instance,
            "service" => ctx.service,
            "artifact" => ctx.artifact,
            _ => match name.strip_prefix("label.") {
                Some(key) => ctx.labels.get(key).ok_or_else(|| PlaceholderError::MissingLabel(key.to_owned()))?,
                None => return Err(PlaceholderError::Unknown(name.to_owned())),
            },
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> InstanceLabels {
        let mut l =
            InstanceLabels { region: "boe".into(), env: "prod".into(), stage: "canary".into(), ..Default::default() };
        l.labels.insert("port".into(), "8080".into());
        l
    }

    #[test]
    fn expands_all_kinds() {
        let l = labels();
        let ctx = PlaceholderContext { instance: "i-1", service: "checkout", labels: &l, artifact: "/cache/abc" };
        assert_eq!(
            expand("${artifact} --id=${instance}.${service} :${label.port} @${label.region}", &ctx).unwrap(),
            "/cache/abc --id=i-1.checkout :8080 @boe"
        );
        assert_eq!(expand("no placeholders $HOME", &ctx).unwrap(), "no placeholders $HOME");
    }

    #[test]
    fn unknown_or_missing_is_an_error() {
        let l = labels();
        let ctx = PlaceholderContext { instance: "i", service: "s", labels: &l, artifact: "a" };
        assert!(expand("${label.zone}", &ctx).unwrap_err().to_string().contains("zone"));
        assert!(expand("${nope}", &ctx).is_err());
        assert!(expand("${instance", &ctx).is_err());
        let messages = ["${label.zone}", "${nope}", "${instance"].map(|s| expand(s, &ctx).unwrap_err().to_string());
        assert_eq!(
            messages,
            ["instance has no label \"zone\"", "unknown placeholder ${nope}", "unclosed placeholder in \"${instance\""]
        );
    }
}
