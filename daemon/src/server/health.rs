//! Health that tells the truth (`grpc.health.v1`): every second the daemon asks its database
//! (a `SELECT 1` on the read pool, bounded by a timeout) and looks at its writer's last batch and
//! at scheduled clearing, and sets each service's status — the partner service NOT_SERVING while
//! the database does not answer or the writer's batches fail, the finance service NOT_SERVING
//! while clearing has failed for longer than `clearing.unhealthy_after_seconds` — and back to
//! SERVING by itself. Each change is logged once and shown as `coalition_health_serving{service}`.

use crate::api::Shared;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::ServingStatus;

/// How often health is judged.
const EVERY: Duration = Duration::from_secs(1);
/// The longest a database probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed batch keeps the partner service NOT_SERVING when nothing is written after it
/// (with no traffic, nothing else would tell that the writer recovered).
const WRITER_FAILURE_HOLDS: Duration = Duration::from_secs(5);

/// What the writer and the scheduler report, read by the health loop (wall-clock micros, 0: never).
#[derive(Debug, Default)]
pub struct Signals {
    writer_failed_at: AtomicI64,
    writer_ok_at: AtomicI64,
    clearing_failing_since: AtomicI64,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Signals {
    /// The writer committed a batch.
    pub fn writer_ok(&self) {
        self.writer_ok_at.store(now_micros(), Ordering::Relaxed);
    }

    /// A batch failed for want of the database (nothing of it applied).
    pub fn writer_failed(&self) {
        self.writer_failed_at.store(now_micros(), Ordering::Relaxed);
    }

    /// Scheduled clearing failed (the first failure of a run of them starts the clock).
    pub fn clearing_failed(&self) {
        let _ = self.clearing_failing_since.compare_exchange(
            0,
            now_micros(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Scheduled clearing succeeded (or had nothing to do).
    pub fn clearing_ok(&self) {
        self.clearing_failing_since.store(0, Ordering::Relaxed);
    }

    /// Whether the writer's last batch failed, recently, with no commit since.
    pub fn writer_failing(&self) -> bool {
        let (failed, ok) = (
            self.writer_failed_at.load(Ordering::Relaxed),
            self.writer_ok_at.load(Ordering::Relaxed),
        );
        failed > ok && now_micros() - failed < WRITER_FAILURE_HOLDS.as_micros() as i64
    }

    /// How long scheduled clearing has kept failing.
    pub fn clearing_failing_for(&self) -> Option<Duration> {
        match self.clearing_failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_micros((now_micros() - since).max(0) as u64)),
        }
    }
}

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
            for (what, at) in crate::server::tls::expiries(shared.tls.files()) {
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
