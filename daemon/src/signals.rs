//! What the writer and the scheduler report about themselves, and health reads: the one small
//! type the write path and the server meet through (neither imports the other).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// How long a failed batch keeps the partner service NOT_SERVING when nothing is written after it
/// (with no traffic, nothing else would tell that the writer recovered).
const WRITER_FAILURE_HOLDS: Duration = Duration::from_secs(5);

/// Batches' events kept for followers that fall behind the tail before they read the database.
const TAIL_BATCHES: usize = 1024;

/// A committed batch's events, numbered, in each partner's order.
pub type Told = std::sync::Arc<Vec<crate::events::Event>>;

/// What the writer and the scheduler report, read by the health loop (wall-clock micros, 0: never);
/// and for the readers of partners' event feeds, a wake-up whenever this daemon commits and the
/// tail of the writer's batches' events (so a follower in step reads nothing from the database).
#[derive(Debug)]
pub struct Signals {
    writer_failed_at: AtomicI64,
    writer_ok_at: AtomicI64,
    clearing_failing_since: AtomicI64,
    committed: tokio::sync::watch::Sender<u64>,
    committed_aside: tokio::sync::watch::Sender<u64>,
    tail: tokio::sync::broadcast::Sender<Told>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            writer_failed_at: AtomicI64::new(0),
            writer_ok_at: AtomicI64::new(0),
            clearing_failing_since: AtomicI64::new(0),
            committed: tokio::sync::watch::Sender::new(0),
            committed_aside: tokio::sync::watch::Sender::new(0),
            tail: tokio::sync::broadcast::Sender::new(TAIL_BATCHES),
        }
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Signals {
    /// The writer committed a batch (its events, if anyone follows, went to [`Signals::tell`]
    /// first).
    pub fn writer_ok(&self) {
        self.writer_ok_at.store(now_micros(), Ordering::Relaxed);
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Something outside the writer that may have written events committed (holds given back,
    /// a clearing run, an answer): the feeds' readers look in the database at once.
    pub fn committed(&self) {
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
        self.committed_aside.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever this daemon commits anything.
    pub fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// A receiver that changes whenever [`Signals::committed`] is called (commits whose events
    /// are not on the tail).
    pub fn watch_commits_aside(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed_aside.subscribe()
    }

    /// Whether any follower listens to the tail (the writer keeps batches' events only then).
    pub fn tail_followed(&self) -> bool {
        self.tail.receiver_count() > 0
    }

    /// Hands a committed batch's events to the tail's followers.
    pub fn tell(&self, told: Vec<crate::events::Event>) {
        if !told.is_empty() {
            let _ = self.tail.send(std::sync::Arc::new(told));
        }
    }

    /// Follows the tail: every batch's events from now on, until it lags [`TAIL_BATCHES`] behind.
    pub fn follow_tail(&self) -> tokio::sync::broadcast::Receiver<Told> {
        self.tail.subscribe()
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
