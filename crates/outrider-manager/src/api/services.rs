use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{
    Binding, BindingChange, Freeze, Service, ServiceUpdate, Sidecar, Version, VersionState, validate_name,
    validate_version,
};
use outrider_store::{Compare, Op};

use super::{
    Actor, AppState,
    extract::{ApiJson, ApiPath},
    require_tenant,
};
use crate::{
    Error, binding_admission, keys,
    repo::{NewEvent, encode},
};

fn service_event(tenant: &str, kind: &'static str, actor: &str, svc: &Service) -> NewEvent {
    NewEvent::new(tenant, kind, actor, format!("service/{}", svc.name))
        .detail(serde_json::to_value(svc).unwrap_or_default())
}

pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<Service>,
) -> Result<(StatusCode, Json<Service>), Error> {
    require_tenant(&s.repo, &tenant).await?;
    body.validate()?;
    let ev = service_event(&tenant, "service.created", &actor, &body);
    let parents = [(keys::tenant(&tenant), format!("tenant {tenant:?}"))];
    let what = format!("service {:?}", body.name);
    s.repo.create(&keys::service(&tenant, &body.name), &body, &parents, &what, vec![ev]).await?;
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(s): State<AppState>, ApiPath(tenant): ApiPath<String>) -> Result<Json<Vec<Service>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(s.repo.list(&keys::services(&tenant)).await?))
}

async fn service_key(s: &AppState, tenant: &str, service: &str) -> Result<String, Error> {
    require_tenant(&s.repo, tenant).await?;
    validate_name("service", service)?;
    Ok(keys::service(tenant, service))
}

pub async fn get_one(
    State(s): State<AppState>,
    ApiPath((tenant, service)): ApiPath<(String, String)>,
) -> Result<Json<Service>, Error> {
    let key = service_key(&s, &tenant, &service).await?;
    let (v, _) = s.repo.get(&key).await?.ok_or_else(|| Error::not_found(format!("service {service:?}")))?;
    Ok(Json(v))
}

pub async fn replace(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, service)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ServiceUpdate>,
) -> Result<Json<Service>, Error> {
    let key = service_key(&s, &tenant, &service).await?;
    let new = body.into_service(&service)?;
    let what = format!("service {service:?}");
    let v = s
        .repo
        .update(&key, &what, |v: &mut Service| {
            *v = new.clone();
            Ok(vec![service_event(&tenant, "service.updated", &actor, v)])
        })
        .await?;
    Ok(Json(v))
}

pub async fn list_bindings(
    State(s): State<AppState>,
    ApiPath((tenant, service)): ApiPath<(String, String)>,
) -> Result<Json<Vec<Binding>>, Error> {
    let key = service_key(&s, &tenant, &service).await?;
    if !s.repo.exists(&key).await? {
        return Err(Error::not_found(format!("service {service:?}")));
    }
    Ok(Json(s.repo.list(&keys::bindings(&tenant, &service)).await?))
}

/// `PUT /services/{service}/sidecars/{sidecar}`: sets the binding. A change that breaks
/// binding admission (`binding_admission.rs`) is refused naming every broken check,
/// unless the body says `"force": true` with a `"reason"`; the event records both. A version
/// that is not active is never bound. Re-putting the stored binding changes nothing.
pub async fn bind(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, service, sidecar)): ApiPath<(String, String, String)>,
    ApiJson(change): ApiJson<BindingChange>,
) -> Result<Json<Binding>, Error> {
    let service_key = service_key(&s, &tenant, &service).await?;
    validate_name("sidecar", &sidecar)?;
    if !change.sidecar.is_empty() && change.sidecar != sidecar {
        return Err(Error::invalid(format!("sidecar: body names {:?} but the path names {sidecar:?}", change.sidecar)));
    }
    change.validate()?;
    let mut body = change.binding();
    body.sidecar = sidecar.clone();
    validate_version(&body.version)?;
    let sidecar_key = keys::sidecar(&tenant, &sidecar);
    let version_key = keys::version(&tenant, &sidecar, &body.version);
    let binding_key = keys::binding(&tenant, &service, &sidecar);
    for _ in 0..5 {
        let (svc, svc_rev) = s
            .repo
            .get::<Service>(&service_key)
            .await?
            .ok_or_else(|| Error::not_found(format!("service {service:?}")))?;
        let (sc, sc_rev) = s
            .repo
            .get::<Sidecar>(&sidecar_key)
            .await?
            .ok_or_else(|| Error::not_found(format!("sidecar {sidecar:?}")))?;
        let (ver, ver_rev) = s
            .repo
            .get::<Version>(&version_key)
            .await?
            .ok_or_else(|| Error::not_found(format!("version {} of sidecar {sidecar:?}", body.version)))?;
        if ver.state != VersionState::Active {
            return Err(Error::precondition(format!(
                "version {} of sidecar {sidecar:?} is {:?} and cannot be bound, not even with force",
                body.version, ver.state
            )));
        }
        if !sc.upgrade_modes.contains(&body.mode) {
            return Err(Error::invalid(format!(
                "mode: sidecar {sidecar:?} does not support {} (it supports {:?})",
                body.mode, sc.upgrade_modes
            )));
        }
        let old = s.repo.get::<Binding>(&binding_key).await?;
        if old.as_ref().is_some_and(|(b, _)| *b == body) {
            return Ok(Json(body));
        }
        let freezes: Vec<Freeze> = s.repo.list(&keys::freezes(&tenant)).await?;
        let old_binding = old.as_ref().map(|(b, _)| b);
        let broken = binding_admission::violations(old_binding, &body, &ver, &svc, &freezes, s.clock.now());
        if !broken.is_empty() && !change.force {
            return Err(Error::precondition(format!(
                "binding refused by admission: {}; to change it anyway send \"force\": true with a \"reason\" (outrider binding set … --force --reason …)",
                binding_admission::describe(&broken)
            )));
        }
        let old_rev = old.as_ref().map_or(0, |(_, r)| *r);
        let ev = NewEvent::new(&tenant, "binding.updated", &actor, format!("service/{service}/sidecar/{sidecar}"))
            .reason(change.reason.clone())
            .detail(serde_json::json!({
                "from": old_binding,
                "to": &body,
                "forced": change.force,
                "reason": &change.reason,
                "overridden": &broken,
            }));
        let compare = vec![
            Compare::unchanged(&service_key, svc_rev),
            Compare::unchanged(&sidecar_key, sc_rev),
            Compare::unchanged(&version_key, ver_rev),
            Compare::unchanged(&binding_key, old_rev),
        ];
        let r = s.repo.commit(compare, vec![Op::put(&binding_key, encode(&body)?)], vec![ev]).await?;
        if r.succeeded {
            return Ok(Json(body));
        }
    }
    Err(Error::conflict("the binding's service, sidecar or version is being changed concurrently; retry"))
}
