use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{NewVersion, Sidecar, Version, VersionState, validate_name, validate_text, validate_version};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Actor, AppState, MAX_REASON,
    extract::{ApiJson, ApiPath, OptionalJson},
    require_tenant,
};
use crate::{Error, keys, repo::NewEvent};

fn event(tenant: &str, kind: &'static str, actor: &str, object: String, reason: String) -> NewEvent {
    NewEvent::new(tenant, kind, actor, object).reason(reason)
}

pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<Sidecar>,
) -> Result<(StatusCode, Json<Sidecar>), Error> {
    require_tenant(&s.repo, &tenant).await?;
    body.validate()?;
    let ev = event(&tenant, "sidecar.created", &actor, format!("sidecar/{}", body.name), String::new());
    let parents = [(keys::tenant(&tenant), format!("tenant {tenant:?}"))];
    let what = format!("sidecar {:?}", body.name);
    s.repo.create(&keys::sidecar(&tenant, &body.name), &body, &parents, &what, vec![ev]).await?;
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(s): State<AppState>, ApiPath(tenant): ApiPath<String>) -> Result<Json<Vec<Sidecar>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(s.repo.list(&keys::sidecars(&tenant)).await?))
}

pub async fn get_one(
    State(s): State<AppState>,
    ApiPath((tenant, sidecar)): ApiPath<(String, String)>,
) -> Result<Json<Sidecar>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("sidecar", &sidecar)?;
    let (v, _) = s.repo.get(&keys::sidecar(&tenant, &sidecar)).await?.ok_or_else(|| not_found_sidecar(&sidecar))?;
    Ok(Json(v))
}

fn not_found_sidecar(sidecar: &str) -> Error {
    Error::not_found(format!("sidecar {sidecar:?}"))
}

pub async fn create_version(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, sidecar)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<NewVersion>,
) -> Result<(StatusCode, Json<Version>), Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("sidecar", &sidecar)?;
    body.validate()?;
    let v = Version::new(&sidecar, body, OffsetDateTime::now_utc());
    let ev =
        event(&tenant, "version.created", &actor, format!("sidecar/{sidecar}/version/{}", v.version), v.notes.clone());
    let parents = [(keys::sidecar(&tenant, &sidecar), format!("sidecar {sidecar:?}"))];
    let what = format!("version {} of sidecar {sidecar:?}", v.version);
    s.repo.create(&keys::version(&tenant, &sidecar, &v.version), &v, &parents, &what, vec![ev]).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn list_versions(
    State(s): State<AppState>,
    ApiPath((tenant, sidecar)): ApiPath<(String, String)>,
) -> Result<Json<Vec<Version>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("sidecar", &sidecar)?;
    if !s.repo.exists(&keys::sidecar(&tenant, &sidecar)).await? {
        return Err(not_found_sidecar(&sidecar));
    }
    let mut versions: Vec<Version> = s.repo.list(&keys::versions(&tenant, &sidecar)).await?;
    versions.sort_by(|a, b| semver::Version::parse(&b.version).ok().cmp(&semver::Version::parse(&a.version).ok()));
    Ok(Json(versions))
}

async fn version_key(s: &AppState, tenant: &str, sidecar: &str, version: &str) -> Result<String, Error> {
    require_tenant(&s.repo, tenant).await?;
    validate_name("sidecar", sidecar)?;
    validate_version(version)?;
    Ok(keys::version(tenant, sidecar, version))
}

pub async fn get_version(
    State(s): State<AppState>,
    ApiPath((tenant, sidecar, version)): ApiPath<(String, String, String)>,
) -> Result<Json<Version>, Error> {
    let key = version_key(&s, &tenant, &sidecar, &version).await?;
    let (v, _) =
        s.repo.get(&key).await?.ok_or_else(|| Error::not_found(format!("version {version} of sidecar {sidecar:?}")))?;
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdmitBody {
    #[serde(default)]
    evidence: serde_json::Value,
}

pub async fn admit(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, sidecar, version)): ApiPath<(String, String, String)>,
    OptionalJson(body): OptionalJson<AdmitBody>,
) -> Result<Json<Version>, Error> {
    let key = version_key(&s, &tenant, &sidecar, &version).await?;
    let what = format!("version {version} of sidecar {sidecar:?}");
    let v = s
        .repo
        .update(&key, &what, |v: &mut Version| {
            if v.state != VersionState::Active {
                return Err(Error::precondition(format!(
                    "{what} is {:?}; only active versions can be admitted",
                    v.state
                )));
            }
            v.admitted = true;
            v.admission_evidence = body.evidence.clone();
            let mut ev = event(
                &tenant,
                "version.admitted",
                &actor,
                format!("sidecar/{sidecar}/version/{version}"),
                String::new(),
            );
            ev.detail = serde_json::json!({"evidence": body.evidence});
            Ok(vec![ev])
        })
        .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefectBody {
    reason: String,
}

pub async fn defective(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, sidecar, version)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<DefectBody>,
) -> Result<Json<Version>, Error> {
    if body.reason.trim().is_empty() {
        return Err(Error::invalid("reason: say why the version is defective"));
    }
    validate_text("reason", &body.reason, MAX_REASON, false)?;
    // Checks the tenant and the names; a version that does not exist is a 404.
    version_key(&s, &tenant, &sidecar, &version).await?;
    // Marking a defective version again changes nothing and drafts no second recall.
    let v = crate::plans::mark_defective(&s, &tenant, &sidecar, &version, &body.reason, &actor).await?;
    Ok(Json(v))
}

/// Instances per running version of one sidecar.
#[derive(Debug, Serialize)]
pub struct Distribution {
    sidecar: String,
    total: u64,
    versions: Vec<VersionCount>,
}

#[derive(Debug, Serialize)]
struct VersionCount {
    version: String,
    instances: u64,
}

pub async fn distribution(
    State(s): State<AppState>,
    ApiPath((tenant, sidecar)): ApiPath<(String, String)>,
) -> Result<Json<Distribution>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("sidecar", &sidecar)?;
    if !s.repo.exists(&keys::sidecar(&tenant, &sidecar)).await? {
        return Err(not_found_sidecar(&sidecar));
    }
    let versions: Vec<VersionCount> = s
        .fleet
        .distribution(&tenant, &sidecar)
        .into_iter()
        .map(|(version, instances)| VersionCount { version, instances })
        .collect();
    Ok(Json(Distribution { total: versions.iter().map(|v| v.instances).sum(), sidecar, versions }))
}
