//! What the writer and the scheduler report about themselves, and health reads: the one small
//! type the write path and the server meet through (neither imports the other).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// How long a failed batch keeps the partner service NOT_SERVING when nothing is written after it
/// (with no traffic, nothing else would tell that the writer recovered).
const WRITER_FAILURE_HOLDS: Duration = Duration::from_secs(5);

/// What the writer and the scheduler report, read by the health loop (wall-clock micros, 0: never);
/// and a wake-up for the readers of partners' event feeds, given whenever this daemon commits.
#[derive(Debug)]
pub struct Signals {
    writer_failed_at: AtomicI64,
    writer_ok_at: AtomicI64,
    clearing_failing_since: AtomicI64,
    committed: tokio::sync::watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            writer_failed_at: AtomicI64::new(0),
            writer_ok_at: AtomicI64::new(0),
            clearing_failing_since: AtomicI64::new(0),
            committed: tokio::sync::watch::Sender::new(0),
        }
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Signals {
    /// The writer committed a batch.
    pub fn writer_ok(&self) {
        self.writer_ok_at.store(now_micros(), Ordering::Relaxed);
        self.committed();
    }

    /// Something that may have written events committed (a batch, a clearing run, an answer):
    /// the feeds' readers look again at once.
    pub fn committed(&self) {
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever [`Signals::committed`] is called.
    pub fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
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
