//! Named API tokens: who may do what, in which tenant (PRODUCT.md §8 `outrider token …`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ValidationError, validate_name};

/// What a caller may do. `Viewer < Operator < Admin`; `Agent` is apart: the sync stream only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, plans, freezes, bindings, actions.
    Operator,
    /// Everything, tokens included.
    Admin,
    /// The agent sync stream only, for instances of its tenant.
    Agent,
}

impl Role {
    /// Every role, in the order of [`Role::as_str`]'s documentation.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Admin, Role::Agent];

    /// The contract spelling (`viewer`, `operator`, `admin`, `agent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
            Self::Agent => "agent",
        }
    }

    /// Whether this role may do what needs `needed` on the REST API (an agent may do nothing
    /// there; a higher role may do what a lower one may).
    pub fn covers(self, needed: Role) -> bool {
        let rank = |r: Role| match r {
            Self::Agent => None,
            Self::Viewer => Some(0),
            Self::Operator => Some(1),
            Self::Admin => Some(2),
        };
        match (rank(self), rank(needed)) {
            (Some(have), Some(need)) => have >= need,
            _ => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ValidationError::new("role", format!("{s:?} is not one of viewer, operator, admin, agent")))
    }
}

/// The body of `POST /tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Unique name; the actor of the events its holder causes.
    pub name: String,
    /// The one tenant it may see; `null`: every tenant. Required, so that leaving it out
    /// never makes an all-tenant token.
    #[serde(deserialize_with = "Option::deserialize")]
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
}

impl NewToken {
    /// Checks the name and the tenant's name.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if let Some(t) = &self.tenant {
            validate_name("tenant", t)?;
        }
        Ok(())
    }
}

/// A token as listed (never its secret nor its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Unique name.
    pub name: String,
    /// The one tenant it may see; none (`null`): every tenant.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The answer of `POST /tokens`: the token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The token.
    #[serde(flatten)]
    pub info: Token,
    /// The secret to send as `Authorization: Bearer <token>`; never shown again.
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_cover_the_ones_below_them_and_agents_nothing() {
        use Role::*;
        let cases = [
            (Viewer, Viewer, true),
            (Viewer, Operator, false),
            (Operator, Viewer, true),
            (Operator, Operator, true),
            (Operator, Admin, false),
            (Admin, Admin, true),
            (Admin, Viewer, true),
            (Agent, Viewer, false),
            (Agent, Agent, false),
            (Admin, Agent, false),
        ];
        for (have, need, expected) in cases {
            assert_eq!(have.covers(need), expected, "{have} covers {need}");
        }
    }

    #[test]
    fn roles_parse_their_spelling_only() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_new_token_refuses_unknown_fields_and_bad_names() {
        let ok: NewToken = serde_json::from_str(r#"{"name":"ci","tenant":null,"role":"viewer"}"#).unwrap();
        assert!(ok.validate().is_ok());
        let scoped: NewToken = serde_json::from_str(r#"{"name":"ci","tenant":"a","role":"viewer"}"#).unwrap();
        assert_eq!(scoped.tenant.as_deref(), Some("a"));
        assert!(serde_json::from_str::<NewToken>(r#"{"name":"ci","role":"viewer"}"#).is_err(), "tenant left out");
        assert!(serde_json::from_str::<NewToken>(r#"{"name":"ci","tenant":null,"role":"viewer","x":1}"#).is_err());
        assert!(serde_json::from_str::<NewToken>(r#"{"name":"ci","tenant":null,"role":"root"}"#).is_err());
        let bad = NewToken { name: "Bad Name".into(), tenant: None, role: Role::Admin };
        assert!(bad.validate().is_err());
    }
}
