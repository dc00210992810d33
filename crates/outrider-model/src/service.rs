use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ValidationError, validate_name, validate_text};

/// Traits of one service.
const MAX_TRAITS: usize = 64;
/// Protected periods of one service.
const MAX_PERIODS: usize = 256;
/// Bytes of a reason.
pub(crate) const MAX_REASON: usize = 1_000;

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
    #[serde(default, deserialize_with = "crate::name::unique_keys")]
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
    /// Importance (required: a replace states it).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Traits.
    #[serde(default, deserialize_with = "crate::name::unique_keys")]
    pub traits: BTreeMap<String, String>,
    /// Service admission (required: a replace states it).
    #[serde(default)]
    pub protected: Option<bool>,
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
        let (Some(priority), Some(protected)) = (self.priority, self.protected) else {
            return Err(ValidationError::new(
                "priority",
                "priority and protected are required: PUT replaces the whole service",
            ));
        };
        let s = Service {
            name: name.to_owned(),
            priority,
            traits: self.traits,
            protected,
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
        if self.traits.len() > MAX_TRAITS {
            return Err(ValidationError::new("traits", format!("at most {MAX_TRAITS} traits")));
        }
        for (k, v) in &self.traits {
            let ok = |s: &str| !s.is_empty() && s.len() <= 128 && !s.contains(['=', ',', '\n']);
            if !ok(k) || !ok(v) {
                return Err(ValidationError::new("traits", format!("{k:?}={v:?} is not a valid trait")));
            }
            validate_text("traits", k, 128, false)?;
            validate_text("traits", v, 128, false)?;
        }
        if self.protected_periods.len() > MAX_PERIODS {
            return Err(ValidationError::new("protected_periods", format!("at most {MAX_PERIODS} periods")));
        }
        for p in &self.protected_periods {
            if p.to <= p.from {
                return Err(ValidationError::new("protected_periods", "each period must end after it starts"));
            }
            validate_text("protected_periods.reason", &p.reason, MAX_REASON, false)?;
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
    fn update_must_state_priority_and_protection() {
        for body in ["{}", r#"{"priority":"P0"}"#, r#"{"protected":false}"#] {
            let u: ServiceUpdate = serde_json::from_str(body).unwrap();
            assert_eq!(u.into_service("a").unwrap_err().field, "priority", "{body}");
        }
        let u: ServiceUpdate = serde_json::from_str(r#"{"priority":"P0","protected":true}"#).unwrap();
        let s = u.into_service("a").unwrap();
        assert!(s.protected && s.priority == Priority::P0);
    }

    #[test]
    fn traits_refuse_duplicates_hidden_characters_and_excess() {
        assert!(serde_json::from_str::<Service>(r#"{"name":"a","traits":{"k":"1","k":"2"}}"#).is_err());
        for traits in [r#"{"k":"a\u0000b"}"#, r#"{"k":"a\u202eb"}"#, r#"{"k\r":"v"}"#] {
            let s: Service = serde_json::from_str(&format!(r#"{{"name":"a","traits":{traits}}}"#)).unwrap();
            assert_eq!(s.validate().unwrap_err().field, "traits", "{traits}");
        }
        let many: Vec<String> = (0..65).map(|i| format!(r#""k{i}":"v""#)).collect();
        let s: Service = serde_json::from_str(&format!(r#"{{"name":"a","traits":{{{}}}}}"#, many.join(","))).unwrap();
        assert_eq!(s.validate().unwrap_err().field, "traits");
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
        let u: ServiceUpdate =
            serde_json::from_str(&format!(r#"{{"priority":"P2","protected":false,"windows":{period}}}"#)).unwrap();
        assert_eq!(u.into_service("a").unwrap(), old);
    }
}
