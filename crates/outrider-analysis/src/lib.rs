//! Canary analysis for Outrider's plan judge (PRODUCT.md §2 "Analysis / anomaly detection").
//!
//! [`analyze`] compares, per service of a batch and per metric of a [`Policy`], the upgraded
//! (canary) instances against two references the caller supplies in [`MetricSamples`]: the
//! same service's not-upgraded instances (`baseline`) and the canaries' own values before
//! the upgrade (`before`). Each comparison is a one-sided Mann-Whitney U test in the
//! metric's bad [`Direction`] together with an [`EffectFloor`]: a significant shift below the
//! floor passes, a shift above the floor that is not significant is `inconclusive`, and so is
//! a comparison with fewer samples or instances than its [`Minimums`]. The one-sided
//! p-values of every service are then pooled per metric (Stouffer's weighted Z), so that a
//! regression spread thinly over many small services still fails the batch.
//!
//! **Exclusions are the caller's:** instances whose own service deployed during the window,
//! baselines that changed version meanwhile, and instances outside the region or env of the
//! comparison are left out of the samples before calling [`analyze`].
//!
//! The crate does no I/O and reads no clock: the same samples give the same verdict.

mod effect;
mod mann_whitney;
mod normal;
mod policy;
mod verdict;

pub use effect::{Center, Effect};
pub use mann_whitney::{Alternative, MannWhitney, Method, mann_whitney_u};
pub use policy::{Direction, EffectFloor, MetricPolicy, Minimums, Policy};
pub use verdict::{
    BatchSamples, BatchVerdict, Comparison, InstanceSamples, MetricSamples, MetricVerdict, Outcome, ServiceSamples,
    ServiceVerdict, Side, Test, analyze,
};

/// Why a statistic cannot be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// A sample has no values.
    #[error("a sample is empty")]
    EmptySample,
    /// A value is NaN or infinite.
    #[error("a sample holds a value that is NaN or infinite")]
    NotFinite,
}

/// Why a [`Policy`] is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A significance level outside (0, 1).
    #[error("{name} is {value}: use a level between 0 and 1, such as 0.01")]
    Alpha {
        /// `alpha` or `pooled_alpha`.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The same metric twice.
    #[error("metric {0:?} is given twice: give each metric one policy")]
    DuplicateMetric(String),
    /// A negative or non-finite floor, or a dominance floor above 1.
    #[error("metric {0:?} has a bad effect floor: floors are finite and ≥ 0, dominance at most 1")]
    Floor(String),
}
