//! The gRPC side of agent sync (see `outrider-proto/proto/sync.proto` for the message order).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use outrider_model::SidecarStatus;
use outrider_proto::{
    server::{Encoded, SyncHandler},
    v1::{self, AgentMessage, agent_message::Body},
};
use tokio_stream::wrappers::WatchStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    Error,
    auth::{self, Principal},
    fleet::{Heard, Intake, Registration, Said, StoredInstance},
    keys,
    serve::tls::ClientCert,
    state::AppState,
};

/// How long an agent may take to send `Register` after opening the stream.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest instance claim an agent may send, in bytes.
const MAX_CLAIM: usize = 256;

/// The `AgentSync` service.
pub struct SyncService {
    state: AppState,
    /// Where the streams queue what their agents say.
    intake: Intake,
}

impl SyncService {
    /// A service over the manager's state, queueing what agents say on `intake`.
    pub fn new(state: AppState, intake: Intake) -> Self {
        Self { state, intake }
    }

    /// The claim hash recorded in the store for an instance (by any manager).
    async fn stored_claim(&self, tenant: &str, instance: &str) -> Result<Option<String>, Error> {
        outrider_model::validate_name("tenant", tenant)?;
        outrider_model::validate_name("instance", instance)?;
        let stored = self.state.repo.get::<StoredInstance>(&keys::instance(tenant, instance)).await?;
        Ok(stored.and_then(|(s, _)| s.claim))
    }
}

fn statuses(list: Vec<v1::SidecarStatus>) -> Result<Vec<SidecarStatus>, Status> {
    list.into_iter().map(|s| SidecarStatus::try_from(s).map_err(|e| Status::invalid_argument(e.to_string()))).collect()
}

/// The gRPC status that answers `e`.
fn grpc_status(e: &Error) -> Status {
    let code = match e {
        Error::InvalidArgument(_)
        | Error::MalformedJson(_)
        | Error::UnexpectedJson(_)
        | Error::PayloadTooLarge(_)
        | Error::UnsupportedMediaType(_)
        | Error::UriTooLong(_)
        | Error::HeadersTooLarge(_) => Code::InvalidArgument,
        Error::NotFound(_) | Error::NoSuchPath => Code::NotFound,
        Error::MethodNotAllowed => Code::Unimplemented,
        Error::Conflict(_) => Code::Aborted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::Forbidden(_) => Code::PermissionDenied,
        Error::Unavailable(_) => Code::Unavailable,
        Error::RequestTimeout(_) => Code::DeadlineExceeded,
        Error::Internal(_) => Code::Internal,
    };
    Status::new(code, format!("{}: {e}", e.code()))
}

/// Who opens a sync stream: on a port with a client CA, the agent named by its verified
/// client certificate (a token alone is refused); otherwise the token's holder.
fn caller<T>(state: &AppState, request: &Request<T>) -> Result<Principal, Status> {
    match request.extensions().get::<ClientCert>() {
        Some(ClientCert::Agent(p)) => Ok(p.clone()),
        Some(ClientCert::Missing) => {
            Err(Status::unauthenticated("this manager requires an agent client certificate for sync (--cert, --key)"))
        }
        Some(ClientCert::Unnamed) => Err(Status::unauthenticated(
            "the client certificate names no agent (a SAN URI outrider://tenant/<T>/agent/<NAME>)",
        )),
        None => {
            let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
            state.auth.check(header).map_err(|e| grpc_status(&e))
        }
    }
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<Encoded, Status>> + Send>>;

impl SyncHandler for SyncService {
    type Stream = DesiredStream;

    async fn sync(
        self: Arc<Self>,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<DesiredStream>, Status> {
        let principal = caller(&self.state, &request)?;
        let issued = self.state.auth.issued_at(&principal.name);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message in time"))??;
        let Some(AgentMessage { body: Some(Body::Register(reg)) }) = first else {
            return Err(Status::invalid_argument("the first message must be Register"));
        };
        principal.may_register(&reg.tenant).map_err(|e| grpc_status(&e))?;
        let claim = match reg.claim.as_deref() {
            None => None,
            Some(c) if c.is_empty() || c.len() > MAX_CLAIM => {
                return Err(Status::invalid_argument(format!("the claim must be 1 to {MAX_CLAIM} bytes long")));
            }
            Some(c) => Some(auth::hash(c)),
        };
        // An instance this manager has not seen may be held through another manager.
        let stored_claim = if self.state.fleet.knows(&reg.tenant, &reg.instance_id) {
            None
        } else {
            self.stored_claim(&reg.tenant, &reg.instance_id).await.map_err(|e| grpc_status(&e))?
        };
        let registration = Registration {
            labels: reg.instance_labels(),
            tenant: reg.tenant,
            instance: reg.instance_id,
            service: reg.service,
            deploy_id: reg.deploy_id,
            sidecars: statuses(reg.sidecars)?,
            claim,
            stored_claim,
            opened_by: principal.name.clone(),
        };
        let (tenant, instance) = (registration.tenant.clone(), registration.instance.clone());
        let conn = {
            let catalog = self.state.catalog.read().unwrap_or_else(|p| p.into_inner());
            self.state.fleet.connect(registration, &catalog).map_err(|e| grpc_status(&e))?
        };
        // Revoked while registering: its revocation closed the streams it knew of, not this one.
        if self.state.auth.issued_at(&principal.name) != issued {
            self.state.fleet.close_opened_by(&principal.name);
            return Err(Status::unauthenticated("unauthenticated: the token was revoked"));
        }
        tracing::debug!(%tenant, %instance, deploy = conn.deploy, "agent connected");
        let intake = self.intake.clone();
        let conn_id = conn.id;
        let (tenant, instance): (Arc<str>, Arc<str>) = (tenant.into(), instance.into());
        tokio::spawn(async move {
            let heard = |said| Heard { tenant: tenant.clone(), instance: instance.clone(), conn: conn_id, said };
            loop {
                let said = match inbound.message().await {
                    Ok(Some(AgentMessage { body: Some(Body::Ack(a)) })) => Said::Ack(a.revision),
                    Ok(Some(AgentMessage { body: Some(Body::Report(r)) })) => match statuses(r.sidecars) {
                        Ok(s) => Said::Report(s),
                        Err(e) => {
                            tracing::warn!(%instance, error = %e, "bad report ignored");
                            continue;
                        }
                    },
                    Ok(Some(_)) => {
                        tracing::warn!(%instance, "unexpected message ignored");
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%instance, error = %e, "sync stream ended");
                        break;
                    }
                };
                if !intake.send(heard(said)).await {
                    return;
                }
            }
            intake.send(heard(Said::Ended)).await;
        });
        // Every stream told the same snapshot sends the one encoding of it.
        let out = WatchStream::new(conn.desired).map(|told| Ok(told.wire()));
        Ok(Response::new(Box::pin(out)))
    }
}
