//! Clearing as a service: the plan of a run under this daemon's config, a run as finance asks
//! for it (waiting for a run in progress), and a stored settlement or `UNKNOWN_SETTLEMENT`.

use super::error::ServiceError;
use super::shared::Shared;
use crate::store::clearing::{Plan, Stored};
use chrono::NaiveDate;

/// The clearing plan for `cycle` under this daemon's config.
pub fn plan(shared: &Shared, cycle: NaiveDate, skip_if_busy: bool) -> Plan {
    shared
        .config
        .clearing_rules()
        .plan(cycle, shared.clock.now(), skip_if_busy)
}

/// The stored settlement of `cycle`, or NOT_FOUND.
pub async fn stored(shared: &Shared, cycle: NaiveDate) -> Result<Stored, ServiceError> {
    shared
        .store
        .settlement(cycle)
        .await?
        .ok_or_else(|| ServiceError::NotFound {
            reason: "UNKNOWN_SETTLEMENT",
            message: format!("cycle {cycle} has no settlement yet; run clearing for it first"),
        })
}

/// Runs the clearing of one cycle (finance's way: waits for a run in progress).
pub async fn run(shared: &Shared, cycle: NaiveDate) -> Result<Stored, ServiceError> {
    let s = shared
        .store
        .run_clearing(&plan(shared, cycle, false))
        .await?;
    // A run that may wait is never skipped; if a backend ever did, say so rather than panic.
    s.ok_or_else(|| {
        ServiceError::Store(crate::store::StoreError::Unavailable(
            "another daemon is clearing; try again".into(),
        ))
    })
}
