//! The clearing scheduler: after each cut-off (plus a grace period) it expires lots and clears the
//! cycle just closed, and on start it catches up every cycle it missed, in order. With several
//! daemons on one database only one clears at a time (an advisory lock); the others skip the tick.
//!
//! Where clearing starts: the coalition's first cycle (the earlier of `clearing.first_cycle` and
//! the cycle of the first accepted transaction), or the day after the last settlement if later.
//! A catch-up clears one cycle per transaction and looks for shutdown between cycles, so SIGTERM
//! stops it within a cycle; the next start goes on where it stopped. A catch-up longer than
//! `clearing.max_catch_up_cycles` waits for an operator (`coalitiond ops confirm-catch-up`).

use crate::services::clearing::plan;
use crate::services::shared::Shared;
use chrono::NaiveDate;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_millis(500);
/// How often a long catch-up logs its progress, and a blocked one repeats its warning.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const BLOCKED_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The longest wait between two attempts while clearing keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// While clearing keeps failing, its warning is repeated at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// A run of failed attempts: how many, when to try again, when last logged.
#[derive(Debug, Default)]
struct Failing {
    consecutive: u32,
    retry_at: Option<Instant>,
    logged_at: Option<Instant>,
}

/// What kind of failure an attempt met, as the metric's `cause` label (bounded).
fn cause(e: &anyhow::Error) -> &'static str {
    use crate::store::StoreError;
    use crate::store::clearing::ClearingError;
    let store = |s: &StoreError| match s {
        StoreError::Unavailable(_) | StoreError::ShuttingDown => "database",
        StoreError::Refused(_) => "refused",
        StoreError::Corrupt(_) => "corrupt",
    };
    if let Some(c) = e.downcast_ref::<ClearingError>() {
        return match c {
            ClearingError::Store(s) => store(s),
            ClearingError::Settle(..) => "settlement",
            ClearingError::OutOfOrder { .. } | ClearingError::ChainedDraftWouldChange { .. } => {
                "order"
            }
            _ => "other",
        };
    }
    match e.downcast_ref::<StoreError>() {
        Some(s) => store(s),
        None => "other",
    }
}

/// Runs until `stop` turns true. A failing attempt is retried with capped exponential backoff
/// (0.5 s, 1 s, 2 s … 60 s), counted by cause, logged when clearing starts failing and then at
/// most once a minute, and once more when it recovers.
pub async fn run(shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<Instant> = None;
    let mut failing = Failing::default();
    let mut last_success: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Some(at) = last_success {
            metrics::gauge!("coalition_clearing_seconds_since_success")
                .set(at.elapsed().as_secs_f64());
        }
        if failing.retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let attempt = catch_up(&shared, &stop).await;
        if attempt.is_ok() {
            if failing.consecutive > 0 {
                tracing::warn!(
                    failures = failing.consecutive,
                    "scheduled clearing recovered"
                );
            }
            failing = Failing::default();
            shared.health.clearing_ok();
            last_success = Some(Instant::now());
            metrics::gauge!("coalition_clearing_failing").set(0.0);
            metrics::gauge!("coalition_clearing_seconds_since_success").set(0.0);
            metrics::gauge!("coalition_clearing_last_success_timestamp_seconds")
                .set(chrono::Utc::now().timestamp() as f64);
        }
        match attempt {
            Ok(Progress::Blocked {
                from,
                through,
                cycles,
            }) => {
                metrics::gauge!("coalition_clearing_catch_up_blocked_cycles").set(cycles as f64);
                if warned.is_none_or(|w| w.elapsed() >= BLOCKED_WARNING_EVERY) {
                    warned = Some(Instant::now());
                    tracing::error!(
                        %from, %through, cycles, bound = shared.config.clearing.max_catch_up_cycles,
                        "clearing waits: the catch-up is longer than clearing.max_catch_up_cycles; confirm it with \
                         `coalitiond ops confirm-catch-up --through {through}` if these cycles are right"
                    );
                }
            }
            Ok(_) => {
                metrics::gauge!("coalition_clearing_catch_up_blocked_cycles").set(0.0);
                warned = None;
            }
            Err(e) => {
                failing.consecutive = failing.consecutive.saturating_add(1);
                let backoff = TICK
                    .saturating_mul(1u32 << failing.consecutive.saturating_sub(1).min(16))
                    .min(MAX_BACKOFF);
                failing.retry_at = Some(Instant::now() + backoff);
                let cause = cause(&e);
                metrics::counter!("coalition_clearing_failures_total", "cause" => cause)
                    .increment(1);
                metrics::gauge!("coalition_clearing_failing").set(1.0);
                shared.health.clearing_failed();
                if failing
                    .logged_at
                    .is_none_or(|at| at.elapsed() >= FAILURE_LOG_EVERY)
                {
                    failing.logged_at = Some(Instant::now());
                    tracing::warn!(
                        error = %e, cause, failures = failing.consecutive,
                        retry_in_ms = backoff.as_millis() as u64,
                        "scheduled clearing failed; retrying with backoff (logged again at most once a minute)"
                    );
                }
            }
        }
    }
}

/// What one catch-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing was due.
    Idle,
    /// Cycles cleared (all that were due, or until shutdown or another daemon took over).
    Cleared(u64),
    /// More cycles are due than the bound allows without an operator's confirmation.
    Blocked {
        /// The first cycle due.
        from: NaiveDate,
        /// The last cycle due.
        through: NaiveDate,
        /// How many.
        cycles: u64,
    },
}

/// The cycles due now (from the first not yet cleared through the last closed, past the grace
/// period; `None` if nothing is due), and where clearing stands.
pub async fn due(
    shared: &Shared,
) -> anyhow::Result<(
    Option<(NaiveDate, NaiveDate)>,
    crate::store::clearing::Frontier,
)> {
    let now = shared.clock.now();
    let grace = shared.config.clearing.grace.as_micros() as i64;
    let target = shared.config.cycles().last_closed(now - grace)?;
    let f = shared.store.clearing_frontier().await?;
    let first = crate::store::clearing::first_cycle(
        shared.config.clearing.first_cycle,
        f.first_transaction,
    );
    let start = match (f.latest_settled, first) {
        (Some(l), Some(first)) => coalition_clearing::next_day(l)?.max(first),
        (Some(l), None) => coalition_clearing::next_day(l)?,
        (None, Some(first)) => first,
        (None, None) => return Ok((None, f)),
    };
    Ok(((start <= target).then_some((start, target)), f))
}

/// Clears every closed cycle (past the grace period) that has no settlement yet, oldest first,
/// one transaction each, stopping between cycles when `stop` turns true.
pub async fn catch_up(shared: &Shared, stop: &watch::Receiver<bool>) -> anyhow::Result<Progress> {
    let (Some((start, target)), frontier) = due(shared).await? else {
        return Ok(Progress::Idle);
    };
    let todo = (target - start).num_days() as u64 + 1;
    let confirmed = frontier.confirmed_through.is_some_and(|c| c >= target);
    if todo > u64::from(shared.config.clearing.max_catch_up_cycles) && !confirmed {
        return Ok(Progress::Blocked {
            from: start,
            through: target,
            cycles: todo,
        });
    }
    if todo > 1 {
        tracing::info!(from = %start, through = %target, cycles = todo, "catching up on clearing");
    }
    let mut cycle = start;
    let mut done = 0u64;
    let mut last_log = Instant::now();
    while cycle <= target {
        if *stop.borrow() {
            tracing::info!(done, left = todo - done, next = %cycle, "catch-up stopped for shutdown; the next start goes on");
            break;
        }
        let started = Instant::now();
        match shared
            .store
            .run_clearing(&plan(shared, cycle, true))
            .await?
        {
            Some(s) => {
                metrics::histogram!("coalition_clearing_run_seconds")
                    .record(started.elapsed().as_secs_f64());
                let day: u32 = cycle.format("%Y%m%d").to_string().parse().unwrap_or(0);
                metrics::gauge!("coalition_last_cleared_cycle").set(day as f64);
                done += 1;
                if todo == 1 {
                    tracing::info!(%cycle, digest = %s.settlement.digest, "cycle cleared");
                } else if last_log.elapsed() >= PROGRESS_EVERY || cycle == target {
                    last_log = Instant::now();
                    tracing::info!(done, of = todo, last = %cycle, "catch-up progress");
                }
            }
            None => break, // another daemon is clearing
        }
        cycle = coalition_clearing::next_day(cycle)?;
    }
    Ok(Progress::Cleared(done))
}
