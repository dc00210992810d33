//! Where the manager reads the time: the executor's steps and the samples the judge compares
//! share one clock, so that tests can run plans on a clock of their own.

use time::OffsetDateTime;

/// Where the manager reads the time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}
