//! Which webhook kind an event of the log is, if any.

use outrider_model::Event;

/// The webhook kind of `e` (`plan.blocked`…), or `None` when no webhook can ask for it. Plan
/// transitions are `plan.state` (a step) or `plan.action` (an operator) events whose
/// `detail.to` is the new state.
pub fn of(e: &Event) -> Option<&'static str> {
    match e.kind.as_str() {
        "plan.state" | "plan.action" => match e.detail.get("to")?.as_str()? {
            "blocked" => Some("plan.blocked"),
            "waiting" => Some("plan.waiting"),
            "completed" => Some("plan.completed"),
            "rolled_back" => Some("plan.rolled_back"),
            _ => None,
        },
        "incident.opened" => Some("incident.opened"),
        "version.defective" => Some("version.defective"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, detail: serde_json::Value) -> Event {
        Event {
            seq: 1,
            time: time::OffsetDateTime::UNIX_EPOCH,
            tenant: "t".into(),
            kind: kind.into(),
            actor: "executor".into(),
            object: "plan/p1".into(),
            reason: String::new(),
            plan: Some("p1".into()),
            detail,
        }
    }

    #[test]
    fn plan_transitions_map_by_their_new_state() {
        let to = |kind, to| of(&event(kind, json!({"from": "running", "to": to})));
        assert_eq!(to("plan.state", "blocked"), Some("plan.blocked"));
        assert_eq!(to("plan.state", "waiting"), Some("plan.waiting"));
        assert_eq!(to("plan.state", "completed"), Some("plan.completed"));
        assert_eq!(to("plan.state", "rolled_back"), Some("plan.rolled_back"));
        assert_eq!(to("plan.action", "blocked"), Some("plan.blocked"));
        assert_eq!(to("plan.state", "running"), None);
        assert_eq!(to("plan.action", "paused"), None);
        assert_eq!(of(&event("plan.state", json!(null))), None);
    }

    #[test]
    fn incidents_and_defects_map_to_themselves_and_the_rest_to_nothing() {
        assert_eq!(of(&event("incident.opened", json!({}))), Some("incident.opened"));
        assert_eq!(of(&event("version.defective", json!(null))), Some("version.defective"));
        assert_eq!(of(&event("plan.created", json!({"to": "blocked"}))), None);
        assert_eq!(of(&event("batch.state", json!({"to": "completed"}))), None);
    }
}
