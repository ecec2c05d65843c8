//! Holds at their expiry: every view reads a hold as of now (EXPIRED from its `expires_at`), and
//! what is told once — the `hold.expired` event and the expired-holds metric — is written when the
//! hold is given back. So the daemon gives each hold back at its instant, and anything that tells
//! or counts it (a look at the metrics, the feed) gives back what is due before it looks.

use super::shared::Shared;
use crate::ledger::Micros;
use crate::store::StoreError;
use std::time::Duration;

/// The longest the round sleeps without looking at the soonest expiry again: a hold authorized
/// meanwhile (on this daemon or another of the database) runs at least a second (the shortest
/// `hold_seconds`), so the round has seen it before its instant.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Gives back every hold that ran out by now, if any did (one index entry read when none did),
/// and wakes the feed's followers when some were. Returns the soonest expiry still ahead.
pub async fn release_due(shared: &Shared) -> Result<Option<Micros>, StoreError> {
    let now = shared.clock.now();
    match shared.store.soonest_hold_expiry().await? {
        Some(at) if at <= now => {
            if shared.store.expire_holds(now).await? > 0 {
                shared.writer.signals().committed();
            }
            shared.store.soonest_hold_expiry().await
        }
        ahead => Ok(ahead),
    }
}

/// The least pause between two rounds: holds running out one after another are given back
/// together, at most this late, in at most one write transaction per pause (the views read them
/// expired from their instant regardless).
pub const GATHER: Duration = Duration::from_millis(20);

/// How long the round sleeps before it looks again: until the soonest expiry, at least
/// [`GATHER`] and at most [`LOOK_EVERY`].
pub fn until(soonest: Option<Micros>, now: Micros) -> Duration {
    match soonest {
        Some(at) if at > now => Duration::from_micros((at - now) as u64).clamp(GATHER, LOOK_EVERY),
        Some(_) => GATHER,
        None => LOOK_EVERY,
    }
}
