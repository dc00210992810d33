//! The body of a delivery and its signature.

use hmac::{Hmac, Mac};
use outrider_model::Event;
use serde_json::json;
use sha2::Sha256;

/// The JSON body delivered for `e` as `kind`, with `id` its delivery id (`{seq}-{n}`).
pub fn body(id: &str, kind: &str, e: &Event) -> Vec<u8> {
    let time = e.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let v = json!({
        "id": id,
        "seq": e.seq,
        "kind": kind,
        "tenant": e.tenant,
        "time": time,
        "actor": e.actor,
        "target": e.object,
        "plan": e.plan,
        "reason": e.reason,
        "event": e.kind,
        "detail": e.detail,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The `X-Outrider-Signature` value of `body`: `sha256=` and the hex HMAC-SHA256 of its
/// bytes keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delivery id of the event at the log key suffix `{seq:020}-{n:010}`: `{seq}-{n}`.
pub fn delivery_id(suffix: &str) -> Option<String> {
    let (seq, n) = suffix.split_once('-')?;
    Some(format!("{}-{}", seq.parse::<u64>().ok()?, n.parse::<u32>().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(
            signature("other", b"what do ya want for nothing?"),
            signature("Jefe", b"what do ya want for nothing?")
        );
    }

    #[test]
    fn body_carries_the_event_fields() {
        let e = Event {
            seq: 42,
            time: time::macros::datetime!(2026-03-01 12:00 UTC),
            tenant: "t".into(),
            kind: "plan.state".into(),
            actor: "executor".into(),
            object: "plan/p1".into(),
            reason: "crash loop".into(),
            plan: Some("p1".into()),
            detail: json!({"from": "running", "to": "blocked"}),
        };
        let v: serde_json::Value = serde_json::from_slice(&body("42-3", "plan.blocked", &e)).unwrap();
        assert_eq!(
            v,
            json!({"id": "42-3", "seq": 42, "kind": "plan.blocked", "tenant": "t", "time": "2026-03-01T12:00:00Z",
                   "actor": "executor", "target": "plan/p1", "plan": "p1", "reason": "crash loop",
                   "event": "plan.state", "detail": {"from": "running", "to": "blocked"}})
        );
    }

    #[test]
    fn delivery_ids_drop_the_padding() {
        assert_eq!(delivery_id("00000000000000000042-0000000003").as_deref(), Some("42-3"));
        assert_eq!(delivery_id("x-1"), None);
        assert_eq!(delivery_id("42"), None);
    }
}
