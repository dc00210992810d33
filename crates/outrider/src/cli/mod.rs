//! The operator CLI: `outrider <resource> <verb>` over the manager's REST API.
//!
//! Tables by default, `-o json` for scripts. Every verb takes the connection flags
//! ([`ConnectArgs`]) after it. Errors come back as `Err`: API errors display as
//! `<code>: <message>`, so the caller should print `error: {err:#}` and exit non-zero.

mod commands;
mod input;
mod render;
#[cfg(test)]
mod tests;
mod wait;
mod watch;

use anyhow::Context;
use futures::StreamExt;
pub use outrider_client::{ConnectArgs, OutputFormat};
use outrider_client::{EventQuery, InstanceFilter, PlanAction};
use outrider_model::{BindingChange, NewFreeze, NewToken, NewVersion, NewWebhook, Service, ServiceUpdate, Sidecar};

pub use commands::{
    BindingCommand, EventCommand, FreezeCommand, InstanceCommand, PlanActionArgs, PlanCommand, ResourceCommand,
    ServiceCommand, SidecarCommand, TenantCommand, TokenCommand, VersionCommand, WaitCommand, WebhookCommand,
};
use input::read_json;
use render::{emit, emit_text, print_line};

/// Runs one `outrider <resource> <verb>` command.
pub async fn run(cmd: ResourceCommand) -> anyhow::Result<()> {
    match cmd {
        ResourceCommand::Tenant(c) => tenant(*c).await,
        ResourceCommand::Sidecar(c) => sidecar(*c).await,
        ResourceCommand::Version(c) => version(*c).await,
        ResourceCommand::Service(c) => service(*c).await,
        ResourceCommand::Binding(c) => binding(*c).await,
        ResourceCommand::Instance(c) => instance(*c).await,
        ResourceCommand::Event(c) => event(*c).await,
        ResourceCommand::Plan(c) => plan(*c).await,
        ResourceCommand::Freeze(c) => freeze(*c).await,
        ResourceCommand::Webhook(c) => webhook(*c).await,
        ResourceCommand::Token(c) => token(*c).await,
        ResourceCommand::Wait(c) => wait(*c).await,
    }
}

async fn tenant(cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::List { conn } => {
            let tenants = conn.client()?.list_tenants().await?;
            emit(conn.output, &tenants, |t| render::tenants(t))
        }
        TenantCommand::Create { name, conn } => {
            let tenant = conn.client()?.create_tenant(&name).await?;
            emit(conn.output, &tenant, |t| render::tenants(std::slice::from_ref(t)))
        }
    }
}

async fn sidecar(cmd: SidecarCommand) -> anyhow::Result<()> {
    match cmd {
        SidecarCommand::Create { file, name, owner, description, conn } => {
            let body: Sidecar = match file {
                Some(file) => read_json(&file, "sidecar").await?,
                None => input::sidecar_from_flags(name.context("give -f FILE or --name")?, owner, description)?,
            };
            let created = conn.client()?.create_sidecar(&conn.tenant, &body).await?;
            emit(conn.output, &created, render::sidecar)
        }
        SidecarCommand::List { conn } => {
            let sidecars = conn.client()?.list_sidecars(&conn.tenant).await?;
            emit(conn.output, &sidecars, |s| render::sidecars(s))
        }
        SidecarCommand::Get { name, conn } => {
            let sidecar = conn.client()?.get_sidecar(&conn.tenant, &name).await?;
            emit(conn.output, &sidecar, render::sidecar)
        }
    }
}

async fn version(cmd: VersionCommand) -> anyhow::Result<()> {
    match cmd {
        VersionCommand::Create { sidecar, file, conn } => {
            let body: NewVersion = read_json(&file, "version").await?;
            let created = conn.client()?.create_version(&conn.tenant, &sidecar, &body).await?;
            emit(conn.output, &created, render::version)
        }
        VersionCommand::List { sidecar, conn } => {
            let versions = conn.client()?.list_versions(&conn.tenant, &sidecar).await?;
            emit(conn.output, &versions, |v| render::versions(v))
        }
        VersionCommand::Get { sidecar, version, conn } => {
            let v = conn.client()?.get_version(&conn.tenant, &sidecar, &version).await?;
            emit(conn.output, &v, render::version)
        }
        VersionCommand::Admit { sidecar, version, evidence, conn } => {
            let evidence = input::evidence(evidence);
            let v = conn.client()?.admit_version(&conn.tenant, &sidecar, &version, &evidence).await?;
            emit(conn.output, &v, render::version)
        }
        VersionCommand::Defective { sidecar, version, reason, conn } => {
            let v = conn.client()?.mark_defective(&conn.tenant, &sidecar, &version, &reason).await?;
            emit(conn.output, &v, render::version)
        }
        VersionCommand::Distribution { sidecar, conn } => {
            let d = conn.client()?.distribution(&conn.tenant, &sidecar).await?;
            emit(conn.output, &d, render::distribution)
        }
    }
}

async fn service(cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create { file, name, priority, traits, protected, conn } => {
            let body: Service = match file {
                Some(file) => read_json(&file, "service").await?,
                None => {
                    input::service_from_flags(name.context("give -f FILE or --name")?, priority, traits, protected)?
                }
            };
            let created = conn.client()?.create_service(&conn.tenant, &body).await?;
            emit(conn.output, &created, render::service)
        }
        ServiceCommand::List { conn } => {
            let services = conn.client()?.list_services(&conn.tenant).await?;
            emit(conn.output, &services, |s| render::services(s))
        }
        ServiceCommand::Get { name, conn } => {
            let service = conn.client()?.get_service(&conn.tenant, &name).await?;
            emit(conn.output, &service, render::service)
        }
        ServiceCommand::Update { name, file, conn } => {
            let body: ServiceUpdate = read_json(&file, "service update").await?;
            let updated = conn.client()?.update_service(&conn.tenant, &name, &body).await?;
            emit(conn.output, &updated, render::service)
        }
    }
}

async fn binding(cmd: BindingCommand) -> anyhow::Result<()> {
    match cmd {
        BindingCommand::Set { service, sidecar, version, mode, disable, force, reason, conn } => {
            let reason = reason.unwrap_or_default();
            let body = BindingChange { sidecar, enabled: !disable, version, mode, force, reason };
            let set = conn.client()?.change_binding(&conn.tenant, &service, &body).await?;
            emit(conn.output, &set, |b| render::bindings(std::slice::from_ref(b)))
        }
        BindingCommand::List { service, conn } => {
            let bindings = conn.client()?.list_bindings(&conn.tenant, &service).await?;
            emit(conn.output, &bindings, |b| render::bindings(b))
        }
    }
}

async fn instance(cmd: InstanceCommand) -> anyhow::Result<()> {
    match cmd {
        InstanceCommand::List { service, sidecar, version, region, env, stage, conn } => {
            let filter = InstanceFilter { service, sidecar, version, region, env, stage };
            let instances = conn.client()?.list_instances(&conn.tenant, &filter).await?;
            emit(conn.output, &instances, |i| render::instances(i))
        }
        InstanceCommand::Delete { id, conn } => {
            let removed = conn.client()?.delete_instance(&conn.tenant, &id).await?;
            emit_text(conn.output, &removed, |i| format!("instance {} of {} deleted", i.id, i.service))
        }
    }
}

async fn event(cmd: EventCommand) -> anyhow::Result<()> {
    match cmd {
        EventCommand::List { since, plan, conn } => {
            let events = conn.client()?.list_events(&conn.tenant, &EventQuery { since, plan }).await?;
            emit(conn.output, &events, |e| render::events(e))
        }
        EventCommand::Follow { since, plan, conn } => {
            let mut stream = conn.client()?.follow_events(&conn.tenant, &EventQuery { since, plan }).await?;
            while let Some(event) = stream.next().await {
                let event = event?;
                let line = match conn.output {
                    OutputFormat::Json => serde_json::to_string(&event)?,
                    OutputFormat::Table => render::event_line(&event),
                };
                if !print_line(&line)? {
                    // The reader went away (`| head`): nothing more to do.
                    return Ok(());
                }
            }
            anyhow::bail!("the manager closed the event stream")
        }
    }
}

async fn plan(cmd: PlanCommand) -> anyhow::Result<()> {
    match cmd {
        PlanCommand::Create { file, conn } => {
            let spec = input::read_plan(&file).await?;
            let plan = conn.client()?.create_plan(&conn.tenant, &spec).await?;
            emit_text(conn.output, &plan, |p| {
                let tenant = if conn.tenant == outrider_model::DEFAULT_TENANT {
                    String::new()
                } else {
                    format!(" --tenant {}", conn.tenant)
                };
                format!("{}\nfollow it with: outrider plan watch {}{tenant}", render::plan_summary(p), p.id)
            })
        }
        PlanCommand::Simulate { file, deploys_per_day, conn } => {
            let spec = input::read_plan(&file).await?;
            let sim = conn.client()?.simulate_plan_with(&conn.tenant, &spec, deploys_per_day).await?;
            emit_text(conn.output, &sim, render::simulation)
        }
        PlanCommand::List { conn } => {
            let plans = conn.client()?.list_plans(&conn.tenant).await?;
            emit(conn.output, &plans, |p| render::plans(p))
        }
        PlanCommand::Show { id, conn } => {
            let plan = conn.client()?.get_plan(&conn.tenant, &id).await?;
            emit_text(conn.output, &plan, render::plan)
        }
        PlanCommand::Watch { id, since, conn } => {
            let client = conn.client()?;
            let options = watch::WatchOptions::new(conn.output);
            watch::watch(&client, &conn.tenant, &id, since, options, &mut std::io::stdout()).await
        }
        PlanCommand::Pause(args) => plan_action(PlanAction::Pause, args).await,
        PlanCommand::Resume(args) => plan_action(PlanAction::Resume, args).await,
        PlanCommand::Abort(args) => plan_action(PlanAction::Abort, args).await,
        PlanCommand::Rollback(args) => plan_action(PlanAction::Rollback, args).await,
        PlanCommand::Approve(args) => plan_action(PlanAction::Approve, args).await,
    }
}

async fn plan_action(action: PlanAction, args: PlanActionArgs) -> anyhow::Result<()> {
    let PlanActionArgs { id, reason, conn } = args;
    let plan = conn.client()?.plan_action(&conn.tenant, &id, action, reason.as_deref()).await?;
    emit_text(conn.output, &plan, render::plan_summary)
}

async fn freeze(cmd: FreezeCommand) -> anyhow::Result<()> {
    match cmd {
        FreezeCommand::Create { from, to, reason, services, conn } => {
            let body = NewFreeze { from, to, reason, services };
            body.validate()?;
            let created = conn.client()?.create_freeze(&conn.tenant, &body).await?;
            emit(conn.output, &created, |f| render::freezes(std::slice::from_ref(f)))
        }
        FreezeCommand::List { conn } => {
            let freezes = conn.client()?.list_freezes(&conn.tenant).await?;
            emit(conn.output, &freezes, |f| render::freezes(f))
        }
        FreezeCommand::Delete { id, conn } => {
            conn.client()?.delete_freeze(&conn.tenant, &id).await?;
            let done = serde_json::json!({ "id": id, "deleted": true });
            emit_text(conn.output, &done, |_| format!("freeze {id} deleted"))
        }
    }
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { name, role, all_tenants, conn } => {
            let tenant = (!all_tenants).then(|| conn.tenant.clone());
            let issued = conn.client()?.create_token(&NewToken { name, tenant, role }).await?;
            emit_text(conn.output, &issued, render::issued)
        }
        TokenCommand::List { conn } => {
            let tokens = conn.client()?.list_tokens().await?;
            emit(conn.output, &tokens, |t| render::tokens(t))
        }
        TokenCommand::Revoke { name, conn } => {
            let revoked = conn.client()?.revoke_token(&name).await?;
            emit_text(conn.output, &revoked, |t| format!("token {} revoked", t.name))
        }
    }
}

async fn webhook(cmd: WebhookCommand) -> anyhow::Result<()> {
    match cmd {
        WebhookCommand::Create { url, events, secret, secret_file, conn } => {
            let secret = match (secret, secret_file) {
                (Some(s), _) => s,
                (None, Some(file)) => tokio::fs::read_to_string(&file)
                    .await
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .trim_end()
                    .to_owned(),
                (None, None) => anyhow::bail!("give --secret or --secret-file"),
            };
            let body = NewWebhook { url, events, secret };
            body.validate()?;
            let created = conn.client()?.create_webhook(&conn.tenant, &body).await?;
            emit(conn.output, &created, |w| render::webhooks(std::slice::from_ref(w)))
        }
        WebhookCommand::List { conn } => {
            let webhooks = conn.client()?.list_webhooks(&conn.tenant).await?;
            emit(conn.output, &webhooks, |w| render::webhooks(w))
        }
        WebhookCommand::Get { id, conn } => {
            let webhook = conn.client()?.get_webhook(&conn.tenant, &id).await?;
            emit_text(conn.output, &webhook, render::webhook)
        }
        WebhookCommand::Delete { id, conn } => {
            conn.client()?.delete_webhook(&conn.tenant, &id).await?;
            let done = serde_json::json!({ "id": id, "deleted": true });
            emit_text(conn.output, &done, |_| format!("webhook {id} deleted"))
        }
    }
}

async fn wait(cmd: WaitCommand) -> anyhow::Result<()> {
    match cmd {
        WaitCommand::Manager { timeout, conn } => {
            wait::manager(&conn, timeout.0).await?;
            let ready = serde_json::json!({ "manager": conn.manager, "ready": true });
            emit_text(conn.output, &ready, |_| format!("the manager at {} is ready", conn.manager))
        }
        WaitCommand::Instance { id, sidecar, version, state, timeout, conn } => {
            let goal = wait::InstanceGoal { id: &id, sidecar: sidecar.as_deref(), version: version.as_deref(), state };
            let instance = wait::instance(&conn, goal, timeout.0).await?;
            emit_text(conn.output, &instance, |i| {
                let sidecars: Vec<_> = i.sidecars.iter().map(render::sidecar_status).collect();
                format!("instance {}: {}", i.id, sidecars.join(", "))
            })
        }
    }
}
