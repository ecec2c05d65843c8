//! Operators' controls: per-partner rate limits and suspension, live and persisted.

pub mod limits;

use crate::prices::PriceBook;
use crate::store::{Store, StoreError};
use limits::Limits;
use std::sync::Arc;
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
pub async fn refresh_loop(
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
    prices: Arc<PriceBook>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = apply_overrides(&*store, &limits).await {
            tracing::warn!(error = %e, "could not refresh partner overrides");
        }
        // Each partner's limit, beside its call and throttle counters (dashboards, alerts).
        for s in limits.snapshot() {
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
        match store.price_versions().await {
            Ok(v) => prices.replace(v),
            Err(e) => tracing::warn!(error = %e, "could not refresh price versions"),
        }
    }
}

/// How often a daemon announces itself, and how long one unheard of counts as gone.
const HEARTBEAT: Duration = Duration::from_secs(1);
const GONE_AFTER: Duration = Duration::from_secs(3);

/// Announces this daemon in the database every second with its traffic, counts the live daemons
/// and shares every partner's limit among them (re-balanced within `GONE_AFTER` of a daemon
/// joining or leaving), and keeps the others' traffic for `ops limits`. Removes its announcement
/// when it stops.
pub async fn instances_loop(
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
    id: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            if let Err(e) = store.leave(&id).await {
                tracing::warn!(error = %e, "could not remove this daemon's announcement");
            }
            return;
        }
        announce(&*store, &limits, &id).await;
    }
}

/// Joins the database's daemons before this one serves a partner call, and returns its id: it
/// announces itself and, when other daemons may share the database, waits one heartbeat and
/// announces again, so that its limits are already its share of what the live daemons grant
/// (each announces every `HEARTBEAT`). Without this, a daemon started beside others, or in a
/// rolling restart, granted the whole limit until it first heard them.
pub async fn join(store: &dyn Store, limits: &Limits, shared_database: bool) -> String {
    let id = format!(
        "{}-{}-{:x}",
        hostname(),
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    announce(store, limits, &id).await;
    if shared_database {
        tokio::time::sleep(HEARTBEAT + Duration::from_millis(100)).await;
        announce(store, limits, &id).await;
    }
    id
}

/// One announcement: this daemon's traffic in, the live daemons and their traffic out, and each
/// partner's limit re-shared among them.
async fn announce(store: &dyn Store, limits: &Limits, id: &str) {
    let own = limits.own_traffic();
    let traffic = serde_json::to_string(&own).unwrap_or_default();
    let now = chrono::Utc::now().timestamp_micros();
    let live = match store
        .heartbeat(id, now, &traffic, now - GONE_AFTER.as_micros() as i64)
        .await
    {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "could not announce this daemon; limits stay as they are");
            return;
        }
    };
    let mut others: std::collections::HashMap<String, [u64; 6]> = Default::default();
    for (other, t) in live.iter().filter(|(i, _)| *i != id) {
        match serde_json::from_str::<std::collections::HashMap<String, [u64; 6]>>(t) {
            Ok(t) => {
                for (p, v) in t {
                    let sum = others.entry(p).or_default();
                    for (s, x) in sum.iter_mut().zip(v) {
                        *s += x;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(daemon = %other, error = %e, "unreadable traffic of another daemon")
            }
        }
    }
    limits.set_others(others);
    let daemons = live.len().max(1) as u32;
    metrics::gauge!("coalition_daemons_live").set(f64::from(daemons));
    if limits.set_daemons(daemons) {
        tracing::info!(daemons, "partners' limits shared among the live daemons");
    }
}

/// This machine's name, for telling daemons apart in the database.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}
