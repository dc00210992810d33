//! What the CLI prints about webhooks and their delivery attempts.

use comfy_table::Table;
use outrider_model::{Webhook, WebhookDetail};

use super::{fields, or_dash, table, timestamp};

/// The webhooks, one row each.
pub(in crate::cli) fn webhooks(webhooks: &[Webhook]) -> Table {
    let mut t = table(&["ID", "URL", "EVENTS", "CREATED"]);
    for w in webhooks {
        t.add_row(vec![w.id.clone(), w.url.clone(), w.events.join(","), timestamp(w.created_at)]);
    }
    t
}

/// One webhook and its latest attempts, oldest first.
pub(in crate::cli) fn webhook(d: &WebhookDetail) -> String {
    let w = &d.webhook;
    let head = fields(vec![
        ("id", w.id.clone()),
        ("url", w.url.clone()),
        ("events", w.events.join(", ")),
        ("created", format!("{} by {}", timestamp(w.created_at), w.created_by)),
    ]);
    if d.attempts.is_empty() {
        return format!("{}\n\nno delivery attempts yet", head.trim_fmt());
    }
    let mut t = table(&["TIME", "DELIVERY", "KIND", "ATTEMPT", "STATUS", "MS", "ERROR"]);
    for a in &d.attempts {
        t.add_row(vec![
            timestamp(a.time),
            a.delivery.clone(),
            a.kind.clone(),
            a.attempt.to_string(),
            a.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            a.duration_ms.to_string(),
            or_dash(a.error.clone().unwrap_or_default()),
        ]);
    }
    format!("{}\n\n{}", head.trim_fmt(), t.trim_fmt())
}
