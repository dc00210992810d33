//! Webhooks: a tenant's owners are told of plans that block, wait, complete or roll back, of
//! incidents and of defective versions, by signed JSON POSTs to a URL of theirs.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ValidationError, validate_text};

/// The event kinds a webhook can ask for (contract).
pub const WEBHOOK_EVENTS: [&str; 6] =
    ["plan.blocked", "plan.waiting", "plan.completed", "plan.rolled_back", "incident.opened", "version.defective"];

/// Bounds of a webhook.
pub mod limits {
    /// Longest URL in bytes.
    pub const URL: usize = 2_048;
    /// Longest secret in bytes.
    pub const SECRET: usize = 256;
    /// Shortest secret in bytes.
    pub const MIN_SECRET: usize = 8;
}

/// The body of `POST /webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where deliveries are POSTed (`http://` or `https://`, with a host).
    pub url: String,
    /// The kinds to deliver (see [`WEBHOOK_EVENTS`]).
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of the `X-Outrider-Signature` header; never shown again.
    pub secret: String,
}

impl NewWebhook {
    /// Checks the URL, the kinds and the secret.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_url(&self.url)?;
        if self.events.is_empty() {
            return Err(ValidationError::new("events", format!("name at least one of {}", WEBHOOK_EVENTS.join(", "))));
        }
        for e in &self.events {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(ValidationError::new(
                    "events",
                    format!("unknown kind {e:?}; known: {}", WEBHOOK_EVENTS.join(", ")),
                ));
            }
        }
        if self.secret.len() < limits::MIN_SECRET {
            return Err(ValidationError::new("secret", format!("must be at least {} bytes long", limits::MIN_SECRET)));
        }
        validate_text("secret", &self.secret, limits::SECRET, false)
    }
}

/// Checks that `url` is `http://` or `https://` with a host, without spaces or hidden
/// characters, and not too long.
fn validate_url(url: &str) -> Result<(), ValidationError> {
    validate_text("url", url, limits::URL, false)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ValidationError::new("url", "must start with http:// or https://"))?;
    if url.chars().any(char::is_whitespace) {
        return Err(ValidationError::new("url", "must not contain spaces"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(ValidationError::new("url", "must not carry credentials; sign with the secret instead"));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(ValidationError::new("url", "must name a host"));
    }
    Ok(())
}

/// A webhook as the API shows it (its secret never).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The kinds delivered.
    pub events: Vec<String>,
    /// A secret signs every delivery (always true; the secret itself is never shown).
    pub secret_set: bool,
    /// Who created it.
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One attempt to deliver an event to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The delivery's id (`X-Outrider-Delivery`): the event's `{seq}-{n}`.
    pub delivery: String,
    /// The event's sequence number in the log.
    pub seq: u64,
    /// The webhook kind (`plan.blocked`…).
    pub kind: String,
    /// 1 for the first try; 0 when the delivery was dropped before any (queue full).
    pub attempt: u32,
    /// When the attempt started.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    /// Whether it succeeded (a 2xx answer).
    pub ok: bool,
}

/// A webhook with its most recent delivery attempts (`GET /webhooks/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDetail {
    /// The webhook.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// Its latest attempts, oldest first (a bounded window, kept in memory by the manager).
    pub attempts: Vec<DeliveryAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str, events: &[&str], secret: &str) -> NewWebhook {
        NewWebhook { url: url.into(), events: events.iter().map(|e| (*e).to_owned()).collect(), secret: secret.into() }
    }

    #[test]
    fn good_webhooks_pass() {
        hook("http://127.0.0.1:8080/hook", &["plan.blocked"], "s3cret-key").validate().unwrap();
        hook("https://hooks.example.com", &WEBHOOK_EVENTS, "s3cret-key").validate().unwrap();
        hook("http://[::1]:9/x?y=1", &["version.defective"], "s3cret-key").validate().unwrap();
    }

    #[test]
    fn bad_webhooks_are_refused_with_the_field() {
        let cases = [
            (hook("ftp://example.com", &["plan.blocked"], "s3cret-key"), "url"),
            (hook("http://", &["plan.blocked"], "s3cret-key"), "url"),
            (hook("http://:80/x", &["plan.blocked"], "s3cret-key"), "url"),
            (hook("http://a b/", &["plan.blocked"], "s3cret-key"), "url"),
            (hook("http://user:pw@host/", &["plan.blocked"], "s3cret-key"), "url"),
            (hook(&format!("http://h/{}", "x".repeat(limits::URL)), &["plan.blocked"], "s3cret-key"), "url"),
            (hook("http://h/", &[], "s3cret-key"), "events"),
            (hook("http://h/", &["plan.created"], "s3cret-key"), "events"),
            (hook("http://h/", &["plan.blocked"], "short"), "secret"),
            (hook("http://h/", &["plan.blocked"], &"k".repeat(limits::SECRET + 1)), "secret"),
        ];
        for (h, field) in cases {
            let err = h.validate().expect_err(&format!("{h:?} accepted"));
            assert!(err.to_string().starts_with(field), "{h:?}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body = r#"{"url": "http://h/", "events": ["plan.blocked"], "secret": "s3cret-key", "colour": 1}"#;
        assert!(serde_json::from_str::<NewWebhook>(body).is_err());
    }
}
