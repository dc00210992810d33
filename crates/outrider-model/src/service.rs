use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ValidationError, validate_name};

/// How important a service is: `P0` is the most important and is changed last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Priority {
    /// Most important.
    P0,
    /// Important.
    P1,
    /// Least important (changed first).
    #[default]
    P2,
}

/// A period during which a service must not be changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedPeriod {
    /// Start (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End (RFC 3339), exclusive.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Why (a promotion, an event).
    #[serde(default)]
    pub reason: String,
}

/// A service of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique name within the tenant.
    pub name: String,
    /// Importance.
    #[serde(default)]
    pub priority: Priority,
    /// `key=value` facts (`lang=go`, `protocol=http`) used to pick feature services.
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    /// Service admission: never upgraded by plans.
    #[serde(default)]
    pub protected: bool,
    /// Periods in which the service must not be changed (unlike a plan's change windows,
    /// in which it may). Accepted as `windows` too, the field's earlier name.
    #[serde(default, alias = "windows")]
    pub protected_periods: Vec<ProtectedPeriod>,
}

/// The body of `PUT /services/{service}`: replaces everything but the name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    /// Must equal the path's name when given.
    #[serde(default)]
    pub name: Option<String>,
    /// Importance.
    #[serde(default)]
    pub priority: Priority,
    /// Traits.
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    /// Service admission.
    #[serde(default)]
    pub protected: bool,
    /// Protected periods (also accepted as `windows`).
    #[serde(default, alias = "windows")]
    pub protected_periods: Vec<ProtectedPeriod>,
}

impl ServiceUpdate {
    /// The service named `name` with this update's fields.
    pub fn into_service(self, name: &str) -> Result<Service, ValidationError> {
        if let Some(n) = &self.name
            && n != name
        {
            return Err(ValidationError::new("name", format!("body names {n:?} but the path names {name:?}")));
        }
        let s = Service {
            name: name.to_owned(),
            priority: self.priority,
            traits: self.traits,
            protected: self.protected,
            protected_periods: self.protected_periods,
        };
        s.validate()?;
        Ok(s)
    }
}

impl Service {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        for (k, v) in &self.traits {
            let ok = |s: &str| !s.is_empty() && s.len() <= 128 && !s.contains(['=', ',', '\n']);
            if !ok(k) || !ok(v) {
                return Err(ValidationError::new("traits", format!("{k:?}={v:?} is not a valid trait")));
            }
        }
        for p in &self.protected_periods {
            if p.to <= p.from {
                return Err(ValidationError::new("protected_periods", "each period must end after it starts"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_orders_p0_first() {
        assert!(Priority::P0 < Priority::P1 && Priority::P1 < Priority::P2);
        assert!(serde_json::from_str::<Priority>(r#""P3""#).is_err());
    }

    #[test]
    fn update_cannot_rename() {
        let u: ServiceUpdate = serde_json::from_str(r#"{"name":"b","priority":"P0"}"#).unwrap();
        assert_eq!(u.into_service("a").unwrap_err().field, "name");
    }

    #[test]
    fn reversed_window_is_refused() {
        let s: Service = serde_json::from_str(
            r#"{"name":"a","windows":[{"from":"2026-01-02T00:00:00Z","to":"2026-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "protected_periods");
    }

    #[test]
    fn protected_periods_are_written_under_their_name_and_read_under_both() {
        let period = r#"[{"from":"2026-01-01T00:00:00Z","to":"2026-01-02T00:00:00Z","reason":"sale"}]"#;
        let old: Service = serde_json::from_str(&format!(r#"{{"name":"a","windows":{period}}}"#)).unwrap();
        let new: Service = serde_json::from_str(&format!(r#"{{"name":"a","protected_periods":{period}}}"#)).unwrap();
        assert_eq!(old, new);
        assert_eq!(old.protected_periods.len(), 1);
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("windows").is_none() && json["protected_periods"][0]["reason"] == "sale", "{json}");
        let u: ServiceUpdate = serde_json::from_str(&format!(r#"{{"windows":{period}}}"#)).unwrap();
        assert_eq!(u.into_service("a").unwrap(), old);
    }
}
