use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An isolation boundary (a business line). Every other object belongs to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Unique name.
    pub name: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}
