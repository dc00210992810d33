//! The command line of `outrider <resource> <verb>`.

use std::path::PathBuf;

use outrider_model::{HumanDuration, Priority, Role, SidecarState, UpgradeMode};
use time::OffsetDateTime;

use super::{
    ConnectArgs,
    input::{parse_priority, parse_role, parse_state, parse_time, parse_trait},
};

/// A resource of the manager's REST API and what to do with it.
// The verbs are boxed to keep this enum small inside the binary's top-level command enum.
#[derive(clap::Subcommand, Debug)]
pub enum ResourceCommand {
    /// Tenants: isolation boundaries (business lines).
    #[command(subcommand)]
    Tenant(Box<TenantCommand>),
    /// Sidecars: kinds of auxiliary process.
    #[command(subcommand)]
    Sidecar(Box<SidecarCommand>),
    /// Versions of a sidecar: create, admit, mark defective, see their distribution.
    #[command(subcommand)]
    Version(Box<VersionCommand>),
    /// Services of the fleet.
    #[command(subcommand)]
    Service(Box<ServiceCommand>),
    /// Bindings: which sidecar version a service runs.
    #[command(subcommand)]
    Binding(Box<BindingCommand>),
    /// Instances and the sidecars they run.
    #[command(subcommand)]
    Instance(Box<InstanceCommand>),
    /// The event log.
    #[command(subcommand)]
    Event(Box<EventCommand>),
    /// Upgrade plans: create, simulate, watch, and steer them.
    #[command(subcommand)]
    Plan(Box<PlanCommand>),
    /// Change freezes: periods when no plan changes anything in scope.
    #[command(subcommand)]
    Freeze(Box<FreezeCommand>),
    /// Webhooks: signed HTTP calls when plans block, wait, complete or roll back, incidents
    /// open or versions are marked defective.
    #[command(subcommand)]
    Webhook(Box<WebhookCommand>),
    /// API tokens: named, with a role (viewer, operator, admin, agent), for one tenant or all.
    #[command(subcommand)]
    Token(Box<TokenCommand>),
    /// Wait until the manager, or an instance's sidecar, is ready (for scripts); fails after
    /// --timeout with what it saw last.
    #[command(subcommand)]
    Wait(Box<WaitCommand>),
}

/// `outrider tenant …`
#[derive(clap::Subcommand, Debug)]
pub enum TenantCommand {
    /// List the tenants.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Create a tenant.
    Create {
        /// Tenant name.
        name: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider sidecar …`
#[derive(clap::Subcommand, Debug)]
pub enum SidecarCommand {
    /// Create a sidecar from a JSON file, or from flags.
    Create {
        /// JSON file with the sidecar (`-` reads standard input).
        #[arg(
            short = 'f',
            long,
            value_name = "FILE",
            required_unless_present = "name",
            conflicts_with_all = ["name", "owner", "description"]
        )]
        file: Option<PathBuf>,
        /// Sidecar name (other fields take their defaults).
        #[arg(long)]
        name: Option<String>,
        /// Owning team or person.
        #[arg(long)]
        owner: Option<String>,
        /// What it does.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the sidecars.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Show one sidecar.
    Get {
        /// Sidecar name.
        name: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider version …`
#[derive(clap::Subcommand, Debug)]
pub enum VersionCommand {
    /// Create a version of a sidecar from a JSON file (`version`, `artifact`, `command`, `env`,
    /// `notes`).
    Create {
        /// Sidecar name.
        sidecar: String,
        /// JSON file with the version (`-` reads standard input).
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the versions of a sidecar.
    List {
        /// Sidecar name.
        sidecar: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Show one version.
    Get {
        /// Sidecar name.
        sidecar: String,
        /// Version.
        version: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Admit a tested version, so that plans may target it.
    Admit {
        /// Sidecar name.
        sidecar: String,
        /// Version.
        version: String,
        /// Evidence of the tests: JSON, or else taken as text.
        #[arg(long, value_name = "TEXT")]
        evidence: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Mark a version defective: it may never again be a target, it reaches no instance
    /// that does not run it, and a paused recall plan to the last known good version is drafted.
    Defective {
        /// Sidecar name.
        sidecar: String,
        /// Version.
        version: String,
        /// Why.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Instances per running version of a sidecar (the long tail).
    Distribution {
        /// Sidecar name.
        sidecar: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider service …`
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service from a JSON file, or from flags.
    Create {
        /// JSON file with the service (`-` reads standard input).
        #[arg(
            short = 'f',
            long,
            value_name = "FILE",
            required_unless_present = "name",
            conflicts_with_all = ["name", "priority", "traits", "protected"]
        )]
        file: Option<PathBuf>,
        /// Service name.
        #[arg(long)]
        name: Option<String>,
        /// Priority: P0 (most important), P1 or P2 [default: P2].
        #[arg(long, value_parser = parse_priority)]
        priority: Option<Priority>,
        /// A trait of the service (repeatable): `lang=go`, `protocol=http`…
        #[arg(long = "trait", value_name = "KEY=VALUE", value_parser = parse_trait)]
        traits: Vec<(String, String)>,
        /// Service admission: never upgraded by plans.
        #[arg(long)]
        protected: bool,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the services.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Show one service.
    Get {
        /// Service name.
        name: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Replace a service's priority, traits, `protected` flag and protected periods from a JSON file.
    Update {
        /// Service name.
        name: String,
        /// JSON file with the new fields (`-` reads standard input).
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider binding …`
#[derive(clap::Subcommand, Debug)]
pub enum BindingCommand {
    /// Enable (or disable) a sidecar for a service at a version.
    Set {
        /// Service name.
        service: String,
        /// Sidecar name.
        sidecar: String,
        /// Version the service's instances must run.
        #[arg(long)]
        version: String,
        /// How instances move to it: restart, hot, warm or on-deploy.
        #[arg(long, default_value = "restart")]
        mode: UpgradeMode,
        /// Disable the sidecar for the service instead.
        #[arg(long)]
        disable: bool,
        /// Make the change although admission refuses it (version not admitted, freeze,
        /// protected period or service); needs --reason.
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why the change is made (kept in the event log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the sidecars a service runs.
    List {
        /// Service name.
        service: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider instance …`
#[derive(clap::Subcommand, Debug)]
pub enum InstanceCommand {
    /// List instances with their running sidecars.
    List {
        /// Only instances of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only instances running this sidecar.
        #[arg(long)]
        sidecar: Option<String>,
        /// Only instances running this version (of --sidecar).
        #[arg(long)]
        version: Option<String>,
        /// Only instances in this region.
        #[arg(long)]
        region: Option<String>,
        /// Only instances in this env (preview, prod).
        #[arg(long)]
        env: Option<String>,
        /// Only instances in this stage (canary, single-dc, full).
        #[arg(long)]
        stage: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Remove an instance whose agent is gone (a returning agent registers it again).
    Delete {
        /// Instance id.
        id: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider event …`
#[derive(clap::Subcommand, Debug)]
pub enum EventCommand {
    /// List the event log.
    List {
        /// Only events after this sequence number.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Only events of this plan.
        #[arg(long, value_name = "ID")]
        plan: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Print events as they happen, until interrupted.
    Follow {
        /// Start after this sequence number.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Only events of this plan.
        #[arg(long, value_name = "ID")]
        plan: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider plan …`
#[derive(clap::Subcommand, Debug)]
pub enum PlanCommand {
    /// Create a plan from a JSON file (the plan body of the REST API); it starts by itself.
    Create {
        /// JSON file with the plan body (`-` reads standard input; a `.yaml` file is accepted
        /// only when it holds JSON).
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Predict a plan's schedule without changing anything.
    Simulate {
        /// JSON file with the plan body (`-` reads standard input).
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// Deploys per instance and day assumed for on-deploy phases (default: the manager's,
        /// 0.2: every five days).
        #[arg(long, value_name = "RATE")]
        deploys_per_day: Option<f64>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the plans, newest first.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Show a plan: its phases, batches and incidents.
    Show {
        /// Plan id.
        id: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Follow a plan live: progress per phase and its events, until it ends. Exits non-zero
    /// when the plan does not complete. With `-o json`, prints only the events, one JSON
    /// object per line.
    Watch {
        /// Plan id.
        id: String,
        /// Print the plan's events after this sequence number [default: all of them].
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Stop a moving plan where it is.
    Pause(PlanActionArgs),
    /// Let a paused plan move again.
    Resume(PlanActionArgs),
    /// Stop a plan for good; what was done stays.
    Abort(PlanActionArgs),
    /// Return every instance the plan changed to its previous version.
    Rollback(PlanActionArgs),
    /// Let a blocked plan go on: the incident was a false alarm.
    Approve(PlanActionArgs),
}

/// The arguments of an operator action on a plan.
#[derive(clap::Args, Debug)]
pub struct PlanActionArgs {
    /// Plan id.
    pub id: String,
    /// Why (recorded in the event log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// `outrider freeze …`
#[derive(clap::Subcommand, Debug)]
pub enum FreezeCommand {
    /// Freeze changes for a period.
    Create {
        /// Start (RFC 3339, e.g. 2026-02-01T00:00:00Z).
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        from: OffsetDateTime,
        /// End, exclusive (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        to: OffsetDateTime,
        /// Why changes are frozen.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Only this service (repeatable) [default: the whole tenant].
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the freezes.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Delete a freeze.
    Delete {
        /// Freeze id.
        id: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider webhook …`
#[derive(clap::Subcommand, Debug)]
pub enum WebhookCommand {
    /// Call a URL on these events, signed with a secret.
    Create {
        /// Where to POST (http://HOST[:PORT]/PATH).
        #[arg(long, value_name = "URL")]
        url: String,
        /// An event kind to deliver (repeatable): plan.blocked, plan.waiting, plan.completed,
        /// plan.rolled_back, incident.opened, version.defective.
        #[arg(long = "event", value_name = "KIND", required = true)]
        events: Vec<String>,
        /// The signing secret (prefer --secret-file: arguments show in process lists).
        #[arg(long, value_name = "TEXT", conflicts_with = "secret_file", required_unless_present = "secret_file")]
        secret: Option<String>,
        /// A file holding the signing secret (trailing whitespace ignored).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the webhooks.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Show a webhook and its latest delivery attempts.
    Get {
        /// Webhook id.
        id: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Delete a webhook.
    Delete {
        /// Webhook id.
        id: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider token …`
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token for the tenant of --tenant (default: `default`), or with --all-tenants
    /// for every tenant; its secret is printed this once.
    Create {
        /// Token name: the actor of the events its holder causes.
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (plans, freezes, bindings, actions), admin (everything,
        /// tokens), agent (the agent sync stream only).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A token for every tenant instead of the one of --tenant.
        #[arg(long, conflicts_with = "tenant")]
        all_tenants: bool,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// List the tokens (never their secrets).
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Revoke a token: its holder is refused at once, its agent streams end.
    Revoke {
        /// Token name.
        name: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `outrider wait …`
#[derive(clap::Subcommand, Debug)]
pub enum WaitCommand {
    /// Wait until the manager answers /readyz and the token file (--token-file) can be read.
    Manager {
        /// Give up after this long.
        #[arg(long, default_value = "30s")]
        timeout: HumanDuration,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Wait until an instance is registered, its agent connected, and its sidecar reports the
    /// state (without --sidecar: every sidecar it reports, at least one).
    Instance {
        /// Instance id.
        id: String,
        /// The sidecar to wait for.
        #[arg(long)]
        sidecar: Option<String>,
        /// Also wait until the sidecar runs this version.
        #[arg(long)]
        version: Option<String>,
        /// The state to wait for: starting, running, upgrading, draining, stopped, crash_loop
        /// or failed.
        #[arg(long, default_value = "running", value_parser = parse_state)]
        state: SidecarState,
        /// Give up after this long.
        #[arg(long, default_value = "60s")]
        timeout: HumanDuration,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}
