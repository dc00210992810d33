//! The key layout of the manager's data in the store. Every key is built here.

/// `tenants/{tenant}`
pub fn tenant(t: &str) -> String {
    format!("tenants/{t}")
}

/// Prefix of all tenants.
pub const TENANTS: &str = "tenants/";

/// Prefix of everything that shapes desired state (sidecars, versions, services, bindings).
pub const CATALOG: &str = "catalog/";

/// `catalog/{tenant}/sidecars/{sidecar}`
pub fn sidecar(t: &str, s: &str) -> String {
    format!("catalog/{t}/sidecars/{s}")
}

/// Prefix of a tenant's sidecars.
pub fn sidecars(t: &str) -> String {
    format!("catalog/{t}/sidecars/")
}

/// `catalog/{tenant}/versions/{sidecar}/{version}`
pub fn version(t: &str, s: &str, v: &str) -> String {
    format!("catalog/{t}/versions/{s}/{v}")
}

/// Prefix of a sidecar's versions.
pub fn versions(t: &str, s: &str) -> String {
    format!("catalog/{t}/versions/{s}/")
}

/// `catalog/{tenant}/services/{service}`
pub fn service(t: &str, s: &str) -> String {
    format!("catalog/{t}/services/{s}")
}

/// Prefix of a tenant's services.
pub fn services(t: &str) -> String {
    format!("catalog/{t}/services/")
}

/// `catalog/{tenant}/bindings/{service}/{sidecar}`
pub fn binding(t: &str, svc: &str, s: &str) -> String {
    format!("catalog/{t}/bindings/{svc}/{s}")
}

/// Prefix of a service's bindings.
pub fn bindings(t: &str, svc: &str) -> String {
    format!("catalog/{t}/bindings/{svc}/")
}

/// `catalog/{tenant}/overrides/{service}/{instance}/{sidecar}`: a plan's per-instance change.
pub fn override_key(t: &str, svc: &str, instance: &str, s: &str) -> String {
    format!("catalog/{t}/overrides/{svc}/{instance}/{s}")
}

/// Prefix of a tenant's overrides.
pub fn overrides(t: &str) -> String {
    format!("catalog/{t}/overrides/")
}

/// Prefix of a tenant's cell targets.
pub fn targets(t: &str) -> String {
    format!("catalog/{t}/targets/")
}

/// `catalog/{tenant}/targets/{service}/{sidecar}/{region}/{env}/{stage}`: a plan's target for
/// one cell (`stage` is the phase's stage filter, `all` included).
pub fn target_key(t: &str, svc: &str, sidecar: &str, region: &str, env: &str, stage: &str) -> String {
    format!("catalog/{t}/targets/{svc}/{sidecar}/{region}/{env}/{stage}")
}

/// `plans/{tenant}/{id}`
pub fn plan(t: &str, id: &str) -> String {
    format!("plans/{t}/{id}")
}

/// Prefix of a tenant's plans.
pub fn plans(t: &str) -> String {
    format!("plans/{t}/")
}

/// Prefix of every plan.
pub const PLANS: &str = "plans/";

/// `plans-live/{tenant}/{id}`: a plan that is not done yet (the executor's and admission's
/// index; done plans are not in it).
pub fn live_plan(t: &str, id: &str) -> String {
    format!("plans-live/{t}/{id}")
}

/// Prefix of the live-plan index of a tenant.
pub fn live_plans(t: &str) -> String {
    format!("plans-live/{t}/")
}

/// Prefix of the whole live-plan index.
pub const LIVE_PLANS: &str = "plans-live/";

/// `writes/{tenant}/plans/{id}`: the intent of a write of plan `id` longer than one store
/// transaction (a step, a rollback), while it is being applied (see `chunked.rs`). Writers of
/// the plan compare it absent.
pub fn plan_write(t: &str, id: &str) -> String {
    format!("writes/{t}/plans/{id}")
}

/// `writes/{tenant}/versions/{sidecar}/{version}`: the intent of a long write of a version (a
/// defective mark with its withdrawal).
pub fn version_write(t: &str, s: &str, v: &str) -> String {
    format!("writes/{t}/versions/{s}/{v}")
}

/// Prefix of every intent of a long write.
pub const WRITES: &str = "writes/";

/// `write-parts/{nonce}/{index:06}`: one transaction's worth of the data of the long write
/// whose intent names `nonce`.
pub fn write_part(nonce: &str, index: usize) -> String {
    format!("write-parts/{nonce}/{index:06}")
}

/// Prefix of the parts of the long write whose intent names `nonce`.
pub fn write_parts(nonce: &str) -> String {
    format!("write-parts/{nonce}/")
}

/// `freezes/{tenant}/{id}`
pub fn freeze(t: &str, id: &str) -> String {
    format!("freezes/{t}/{id}")
}

/// Prefix of every freeze.
pub const FREEZES: &str = "freezes/";

/// The tenant and id of a freeze key.
pub fn parse_freeze(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(FREEZES)?.split_once('/')
}

/// Prefix of a tenant's freezes.
pub fn freezes(t: &str) -> String {
    format!("freezes/{t}/")
}

/// `webhooks/{tenant}/{id}`
pub fn webhook(t: &str, id: &str) -> String {
    format!("webhooks/{t}/{id}")
}

/// Prefix of a tenant's webhooks.
pub fn webhooks(t: &str) -> String {
    format!("webhooks/{t}/")
}

/// Prefix of every webhook.
pub const WEBHOOKS: &str = "webhooks/";

/// The tenant and id of a webhook key.
pub fn parse_webhook(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(WEBHOOKS)?.split_once('/')
}

/// Prefix of every tenant's event log.
pub const EVENTS: &str = "events/";

/// The tenant and the `{seq}-{n}` suffix of a key of the event log by sequence.
pub fn parse_event_by_seq(key: &str) -> Option<(&str, &str)> {
    let (tenant, rest) = key.strip_prefix(EVENTS)?.split_once('/')?;
    Some((tenant, rest.strip_prefix("seq/")?))
}

/// `instances/{tenant}/{id}`
pub fn instance(t: &str, id: &str) -> String {
    format!("instances/{t}/{id}")
}

/// Prefix of every instance record.
pub const INSTANCES: &str = "instances/";

/// The tenant and id of an instance record's key.
pub fn parse_instance(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(INSTANCES)?.split_once('/')
}

/// Prefix of a tenant's event log (its indexes and, from older versions, events keyed by
/// time directly under it).
pub fn events(t: &str) -> String {
    format!("events/{t}/")
}

/// Prefix of a tenant's events by sequence: `events/{t}/seq/{seq:020}-{n:010}` → the event.
pub fn events_by_seq(t: &str) -> String {
    format!("events/{t}/seq/")
}

/// Prefix of a plan's events: `events/{t}/plan/{plan}/{seq:020}-{n:010}` → the event (a copy).
pub fn events_by_plan(t: &str, plan: &str) -> String {
    format!("events/{t}/plan/{plan}/")
}

/// Prefix of a tenant's events by time: `events/{t}/time/{unix nanos:020}-{seq:020}-{n:010}`
/// → nothing (where a time starts in the sequence).
pub fn events_by_time(t: &str) -> String {
    format!("events/{t}/time/")
}

/// `events/{t}/trimmed`: the newest sequence number retention deleted.
pub fn events_trimmed(t: &str) -> String {
    format!("events/{t}/trimmed")
}

/// `auth/tokens/{sha256 of the token}`
pub fn token(hash: &str) -> String {
    format!("auth/tokens/{hash}")
}

/// Prefix of the token hashes.
pub const TOKENS: &str = "auth/tokens/";

/// `auth/token-names/{name}` → the hash of the token of that name (names are unique).
pub fn token_name(name: &str) -> String {
    format!("auth/token-names/{name}")
}

/// `managers/{name}`: present while that manager lives (held with a lease).
pub fn manager(name: &str) -> String {
    format!("{MANAGERS}{name}")
}

/// Prefix of the live managers.
pub const MANAGERS: &str = "managers/";

/// The leader's election key: held by the manager whose executor runs.
pub const LEADER: &str = "election/leader";

/// The services the leader's live plans judge (their agents' managers write every sample).
pub const WATCHED: &str = "fleet/watched";

/// A parsed catalog key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogKey<'a> {
    /// A sidecar.
    Sidecar { tenant: &'a str, sidecar: &'a str },
    /// A version.
    Version { tenant: &'a str, sidecar: &'a str, version: &'a str },
    /// A service.
    Service { tenant: &'a str, service: &'a str },
    /// A binding.
    Binding { tenant: &'a str, service: &'a str, sidecar: &'a str },
    /// A plan's override for one instance.
    Override { tenant: &'a str, service: &'a str, instance: &'a str, sidecar: &'a str },
    /// A plan's target for one cell.
    Target { tenant: &'a str, service: &'a str, cell: TargetCell<'a> },
}

/// Which instances of a service a cell target covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetCell<'a> {
    /// Sidecar.
    pub sidecar: &'a str,
    /// Region.
    pub region: &'a str,
    /// Env.
    pub env: &'a str,
    /// Stage filter (`all` or a stage).
    pub stage: &'a str,
}

/// Parses a key under [`CATALOG`].
pub fn parse_catalog(key: &str) -> Option<CatalogKey<'_>> {
    let rest = key.strip_prefix(CATALOG)?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [tenant, "sidecars", sidecar] => Some(CatalogKey::Sidecar { tenant, sidecar }),
        [tenant, "versions", sidecar, version] => Some(CatalogKey::Version { tenant, sidecar, version }),
        [tenant, "services", service] => Some(CatalogKey::Service { tenant, service }),
        [tenant, "bindings", service, sidecar] => Some(CatalogKey::Binding { tenant, service, sidecar }),
        [tenant, "overrides", service, instance, sidecar] => {
            Some(CatalogKey::Override { tenant, service, instance, sidecar })
        }
        [tenant, "targets", service, sidecar, region, env, stage] => {
            Some(CatalogKey::Target { tenant, service, cell: TargetCell { sidecar, region, env, stage } })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_keys_round_trip() {
        assert_eq!(
            parse_catalog(&binding("t", "checkout", "mesh")),
            Some(CatalogKey::Binding { tenant: "t", service: "checkout", sidecar: "mesh" })
        );
        assert_eq!(
            parse_catalog(&version("t", "mesh", "1.0.0")),
            Some(CatalogKey::Version { tenant: "t", sidecar: "mesh", version: "1.0.0" })
        );
        assert_eq!(
            parse_catalog(&override_key("t", "checkout", "i-1", "mesh")),
            Some(CatalogKey::Override { tenant: "t", service: "checkout", instance: "i-1", sidecar: "mesh" })
        );
        assert_eq!(
            parse_catalog(&target_key("t", "checkout", "mesh", "boe", "prod", "canary")),
            Some(CatalogKey::Target {
                tenant: "t",
                service: "checkout",
                cell: TargetCell { sidecar: "mesh", region: "boe", env: "prod", stage: "canary" }
            })
        );
        assert_eq!(parse_catalog("catalog/t/unknown/x"), None);
        assert_eq!(parse_freeze(&freeze("t", "f1")), Some(("t", "f1")));
        assert_eq!(parse_webhook(&webhook("t", "w1")), Some(("t", "w1")));
        let seq_key = format!("{}{:020}-{:010}", events_by_seq("t"), 7, 1);
        assert_eq!(parse_event_by_seq(&seq_key), Some(("t", "00000000000000000007-0000000001")));
        assert_eq!(parse_event_by_seq(&format!("{}x", events_by_plan("t", "p"))), None);
    }
}
