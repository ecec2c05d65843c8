//! The clearing scheduler: after each cut-off (plus a grace period) it expires lots and clears the
//! cycle just closed, and on start it catches up every cycle it missed, in order. With several
//! daemons on one database only one clears at a time (an advisory lock); the others skip the tick.

use crate::api::Shared;
use crate::api::finance::plan;
use std::time::Duration;
use tokio::sync::watch;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true.
pub async fn run(shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = catch_up(&shared).await {
            tracing::warn!(error = %e, "scheduled clearing failed; will retry");
        }
    }
}

/// Clears every closed cycle (past the grace period) that has no settlement yet, oldest first.
pub async fn catch_up(shared: &Shared) -> anyhow::Result<()> {
    let now = shared.clock.now();
    let grace = shared.config.clearing.grace.as_micros() as i64;
    let target = shared.config.cycles().last_closed(now - grace)?;
    let (latest, first) = shared.store.clearing_frontier().await?;
    let mut cycle = match (latest, first) {
        (Some(l), _) => coalition_clearing::next_day(l)?,
        (None, Some(f)) => f,
        (None, None) => return Ok(()),
    };
    while cycle <= target {
        let started = std::time::Instant::now();
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
                tracing::info!(%cycle, digest = %s.settlement.digest, "cycle cleared")
            }
            None => return Ok(()), // another daemon is clearing
        }
        cycle = coalition_clearing::next_day(cycle)?;
    }
    Ok(())
}
