//! Operators' controls: per-partner rate limits and suspension, live and persisted.

pub mod limits;

use crate::api::Shared;
use crate::store::{Store, StoreError};
use limits::Limits;
use std::time::Duration;
use tokio::sync::watch;

/// Applies the operators' stored overrides to the live limits.
pub async fn apply_overrides(store: &dyn Store, limits: &Limits) -> Result<(), StoreError> {
    for o in store.partner_overrides().await? {
        match limits.state(&o.partner) {
            Some(s) => {
                if (s.per_second, s.burst) != (o.per_second, o.burst) {
                    limits.set_quota(&o.partner, o.per_second, o.burst);
                }
                limits.set_suspended(&o.partner, o.suspended);
            }
            None => {
                tracing::warn!(partner = %o.partner, "override for a partner that is not configured")
            }
        }
    }
    Ok(())
}

/// Re-reads the overrides every two seconds, so that a change made through another daemon on the
/// same database takes effect here too.
pub async fn refresh_loop(shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = apply_overrides(&*shared.store, &shared.limits).await {
            tracing::warn!(error = %e, "could not refresh partner overrides");
        }
        // Each partner's limit, beside its call and throttle counters (dashboards, alerts).
        for s in shared.limits.snapshot() {
            let p = s.partner.clone();
            metrics::gauge!("coalition_partner_limit_per_second", "partner" => p.clone())
                .set(f64::from(s.per_second));
            metrics::gauge!("coalition_partner_limit_burst", "partner" => p.clone())
                .set(f64::from(s.burst));
            metrics::gauge!("coalition_partner_suspended", "partner" => p).set(if s.suspended {
                1.0
            } else {
                0.0
            });
        }
        match shared.store.price_versions().await {
            Ok(v) => shared.prices.replace(v),
            Err(e) => tracing::warn!(error = %e, "could not refresh price versions"),
        }
    }
}
