//! Outrider's domain model.
//!
//! Architecture invariant: this crate performs no I/O. It defines the objects the manager
//! stores and the agent runs (sidecars, versions, services, instances, bindings, desired
//! state, events), how they are validated, and how desired state is derived from them.

mod analysis;
mod binding;
mod desired;
mod duration;
mod error;
mod event;
mod instance;
mod lifecycle;
mod name;
mod overrides;
mod placeholder;
mod plan;
mod scrape;
mod service;
mod sidecar;
mod tenant;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod token;
mod version;
mod webhook;

pub use analysis::{
    AnalysisSpec, BatchAnalysis, BatchVerdict, Center, Comparison, Direction, Effect, EffectFloor, Evidence, Judging,
    MetricPolicy, MetricQuery, MetricVerdict, Minimums, Outcome, Policy, RSS_GROWTH, Side, Test, default_metrics,
};
pub use binding::{Binding, BindingChange};
pub use desired::{DesiredSidecar, DesiredState, desired_for_service};
pub use duration::HumanDuration;
pub use error::ValidationError;
pub use event::Event;
pub use instance::{Instance, InstanceFilter, InstanceLabels, SidecarState, SidecarStatus};
pub use lifecycle::{Action, DEFAULT_MIN_READY, Handover, Lifecycle, ListenSocket, MAX_MIN_READY, SIGNALS, Warm};
pub use name::{validate_name, validate_text};
pub use overrides::{CellTarget, Override};
pub use placeholder::{PlaceholderContext, PlaceholderError, expand};
pub use plan::{
    Batch, BatchState, Batching, Caps, Cell, ChangeWindow, Counts, FeatureServices, Freeze, Incident, NewFreeze,
    OnFail, Phase, PhaseSpec, Plan, PlanSpec, PlanState, Selector, Simulation, Verdict, VersionMatch,
    limits as plan_limits,
};
pub use scrape::{Derivation, MetricRef, Quantile, Ratio, Scrape, Series, limits as scrape_limits};
pub use service::{Priority, ProtectedPeriod, Service, ServiceUpdate};
pub use sidecar::{Probe, ProbeCheck, Sidecar, UpgradeMode};
pub use tenant::Tenant;
pub use token::{IssuedToken, NewToken, Role, Token};
pub use version::{Artifact, NewVersion, Version, VersionState, validate_version};
pub use webhook::{DeliveryAttempt, NewWebhook, WEBHOOK_EVENTS, Webhook, WebhookDetail, limits as webhook_limits};

/// The tenant every fresh installation starts with.
pub const DEFAULT_TENANT: &str = "default";
