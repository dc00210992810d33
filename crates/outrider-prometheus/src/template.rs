//! Query templates: PromQL with `${name}` placeholders, filled with escaped values.

use std::{fmt::Write, time::Duration};

use crate::Error;

/// The values of a template's placeholders; a placeholder used without a value is an error
/// ([`Error::MissingValue`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// `${service}`.
    pub service: Option<String>,
    /// `${sidecar}`.
    pub sidecar: Option<String>,
    /// `${version}`.
    pub version: Option<String>,
    /// `${instance}`.
    pub instance: Option<String>,
    /// `${plan}`.
    pub plan: Option<String>,
    /// `${window}`, written as a PromQL duration (`5m`, `90s`).
    pub window: Option<Duration>,
    /// `${instances}`: a regular expression matching exactly these ids (none: no value).
    pub instances: Vec<String>,
}

/// `template` with every `${name}` replaced by its value from `vars`. String values
/// (`service`, `sidecar`, `version`, `instance`, `plan`) and `${instances}` are escaped for
/// the inside of a PromQL double-quoted string, so a value can never end the string it is
/// put in; `${window}` is a duration, for a range (`[${window}]`). A `$` not followed by
/// `{` is kept as it is.
pub fn expand(template: &str, vars: &Vars) -> Result<String, Error> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(Error::Template(format!("unclosed \"${{\" at byte {}", template.len() - rest.len() + at)));
        };
        let name = &after[..end];
        let text = |v: &Option<String>, name: &'static str| v.as_deref().map(quoted).ok_or(Error::MissingValue(name));
        let value = match name {
            "service" => text(&vars.service, "service")?,
            "sidecar" => text(&vars.sidecar, "sidecar")?,
            "version" => text(&vars.version, "version")?,
            "instance" => text(&vars.instance, "instance")?,
            "plan" => text(&vars.plan, "plan")?,
            "window" => promql_duration(vars.window.ok_or(Error::MissingValue("window"))?)?,
            "instances" if vars.instances.is_empty() => return Err(Error::MissingValue("instances")),
            "instances" => {
                let alternation: Vec<String> = vars.instances.iter().map(|i| regex_escaped(i)).collect();
                quoted(&alternation.join("|"))
            }
            other => return Err(Error::UnknownPlaceholder(other.to_owned())),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `d` as a PromQL duration in its largest exact unit (`90s`, `5m`, `2h`, `1d`, `250ms`).
/// Zero and fractions of a millisecond are refused.
pub fn promql_duration(d: Duration) -> Result<String, Error> {
    if d.is_zero() || !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::Template(format!("{d:?} is not a positive whole number of milliseconds")));
    }
    let ms = d.as_millis();
    let units = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)];
    let (unit, size) = units.into_iter().find(|(_, size)| ms.is_multiple_of(*size)).unwrap_or(("ms", 1));
    Ok(format!("{}{unit}", ms / size))
}

/// `value` escaped for the inside of a PromQL double-quoted string: backslash, quote and
/// control characters are written as escapes.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// `value` as a regular expression (RE2, as Prometheus uses) that matches exactly it.
fn regex_escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            service: Some("payment.api".into()),
            sidecar: Some("mesh".into()),
            version: Some("1.3.0".into()),
            instance: Some("i-1".into()),
            plan: Some("p-7".into()),
            window: Some(Duration::from_secs(300)),
            instances: vec!["a.i0".into(), "b(1)".into()],
        }
    }

    #[test]
    fn fills_every_placeholder() {
        let t = r#"rate(x{service="${service}",sidecar="${sidecar}",version="${version}",instance=~"${instances}"}[${window}]) or y{instance="${instance}",plan="${plan}"}"#;
        assert_eq!(
            expand(t, &vars()).unwrap(),
            r#"rate(x{service="payment.api",sidecar="mesh",version="1.3.0",instance=~"a\\.i0|b\\(1\\)"}[5m]) or y{instance="i-1",plan="p-7"}"#
        );
        assert_eq!(expand("up $x ${service}$", &vars()).unwrap(), "up $x payment.api$");
        assert_eq!(expand("", &vars()).unwrap(), "");
    }

    #[test]
    fn a_value_cannot_leave_its_string() {
        let v = Vars { service: Some(r#"a"} or vector(1) or x{y="\"#.into()), ..Vars::default() };
        let q = expand(r#"up{service="${service}"}"#, &v).unwrap();
        assert_eq!(q, r#"up{service="a\"} or vector(1) or x{y=\"\\"}"#);
        let v = Vars { service: Some("a\nb\u{7}".into()), instances: vec![r#"x"\"#.into()], ..Vars::default() };
        assert_eq!(expand("${service} ${instances}", &v).unwrap(), r#"a\nb\u0007 x\"\\\\"#);
    }

    #[test]
    fn refuses_unknown_missing_and_unclosed_placeholders() {
        assert!(matches!(expand("${services}", &vars()), Err(Error::UnknownPlaceholder(n)) if n == "services"));
        assert!(matches!(expand("${}", &vars()), Err(Error::UnknownPlaceholder(n)) if n.is_empty()));
        assert!(matches!(expand("${plan}", &Vars::default()), Err(Error::MissingValue("plan"))));
        assert!(matches!(expand("${window}", &Vars::default()), Err(Error::MissingValue("window"))));
        assert!(matches!(expand("${instances}", &Vars::default()), Err(Error::MissingValue("instances"))));
        let err = expand("up ${service", &vars()).unwrap_err();
        assert_eq!(err.to_string(), "bad query template: unclosed \"${\" at byte 3");
        assert_eq!(Error::UnknownPlaceholder("x".into()).to_string(), "unknown placeholder ${x} in the query template");
    }

    #[test]
    fn durations_take_their_largest_exact_unit() {
        let d = |ms| promql_duration(Duration::from_millis(ms)).unwrap();
        assert_eq!(
            [d(90_000), d(300_000), d(7_200_000), d(86_400_000), d(250), d(1_500), d(1_000)],
            ["90s", "5m", "2h", "1d", "250ms", "1500ms", "1s"]
        );
        assert!(promql_duration(Duration::ZERO).is_err());
        assert!(promql_duration(Duration::from_micros(1_500)).is_err());
    }
}
