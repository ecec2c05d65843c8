//! The daemon's clock: wall time in microseconds, with an offset that tests move forward to make
//! points expire or a cut-off pass without waiting.

use crate::ledger::Micros;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A clock shared by every part of one daemon.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    /// Wall time now plus the offset, unix microseconds.
    pub fn now(&self) -> Micros {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros() as i64;
        wall + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock forward (tests only have a reason to).
    pub fn advance(&self, by: std::time::Duration) {
        self.offset
            .fetch_add(by.as_micros() as i64, Ordering::Relaxed);
    }
}

/// Formats an instant as RFC 3339 UTC with microseconds.
pub fn rfc3339(at: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}
