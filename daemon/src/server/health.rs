//! Health that tells the truth (`grpc.health.v1`): every second the daemon asks its database
//! (a `SELECT 1` on the read pool, bounded by a timeout) and looks at its writer's last batch and
//! at scheduled clearing, and sets each service's status — the partner service NOT_SERVING while
//! the database does not answer or the writer's batches fail, the finance service NOT_SERVING
//! while clearing has failed for longer than `clearing.unhealthy_after_seconds` — and back to
//! SERVING by itself. Each change is logged once and shown as `coalition_health_serving{service}`.

use crate::services::shared::Shared;
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::ServingStatus;

/// How often health is judged.
const EVERY: Duration = Duration::from_secs(1);
/// The longest a database probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The services whose health is judged (the partner service first, finance second: `watch`
/// judges them by their place).
pub const SERVICES: [&str; 4] = [
    "coalition.v1.PartnerService",
    "coalition.v1.FinanceService",
    "coalition.v1.OperatorService",
    "coalition.v1.ProgrammeService",
];

/// Sets every service's status every second until `stop`.
pub async fn watch(
    shared: Shared,
    tls: std::sync::Arc<crate::server::tls::TlsState>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: [Option<bool>; 4] = [None; 4];
    let mut ticks: u64 = 0;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Certificates and the CRL, once a minute (and at once).
        if ticks.is_multiple_of(60) {
            for (what, at) in crate::server::tls::expiries(tls.files()) {
                metrics::gauge!("coalition_tls_expiry_timestamp_seconds", "what" => what)
                    .set(at as f64);
            }
        }
        ticks += 1;
        let database = match tokio::time::timeout(PROBE_TIMEOUT, shared.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        let (open, idle) = shared.store.pool_connections();
        metrics::gauge!("coalition_db_pool_connections", "state" => "in_use")
            .set(f64::from(open).max(idle as f64) - idle as f64);
        metrics::gauge!("coalition_db_pool_connections", "state" => "idle").set(idle as f64);
        let signals = &shared.health;
        let writer = !signals.writer_failing();
        let clearing = signals
            .clearing_failing_for()
            .is_none_or(|d| d < shared.config.clearing.unhealthy_after);
        for (i, service) in SERVICES.iter().enumerate() {
            let serving = match i {
                0 => database.is_ok() && writer,
                1 => database.is_ok() && clearing,
                _ => database.is_ok(),
            };
            metrics::gauge!("coalition_health_serving", "service" => *service).set(if serving {
                1.0
            } else {
                0.0
            });
            if last[i] == Some(serving) {
                continue;
            }
            let why = match (&database, writer, clearing) {
                (Err(e), _, _) => format!("the database does not answer: {e}"),
                (Ok(()), false, _) if i == 0 => "the writer's batches fail".to_string(),
                (Ok(()), _, false) if i == 1 => format!(
                    "scheduled clearing has failed for longer than {:?}",
                    shared.config.clearing.unhealthy_after
                ),
                _ => String::new(),
            };
            if serving {
                if last[i].is_some() {
                    tracing::warn!(service, "health: SERVING again");
                }
                reporter
                    .set_service_status(*service, ServingStatus::Serving)
                    .await;
            } else {
                tracing::error!(service, reason = %why, "health: NOT_SERVING");
                reporter
                    .set_service_status(*service, ServingStatus::NotServing)
                    .await;
            }
            last[i] = Some(serving);
        }
    }
}
