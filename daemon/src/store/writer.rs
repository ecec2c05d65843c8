//! Group commit. Every mutation goes through a queue to a writer task, which takes whatever is
//! queued (up to `max_batch`), applies it in one database transaction, commits once, and only then
//! answers each caller. Under load many calls share one fsync; when idle a call commits alone.
//!
//! A writer has one *lane* or several: each a queue, a thread and a connection of its own, so
//! that on PostgreSQL several batches are read, decided and written at once (a SQLite file has
//! one writer, so one lane). A request goes to the lane of its member (or of the transaction it
//! names), so one member's calls mostly meet in one lane; what two lanes share is serialised by
//! the database's own locks, exactly as between two daemons: members locked in order, and at the
//! end of each batch the cycle's totals, its gross matrix and the chain's head, held until the
//! commit. Requests queued in order under one key ([`Writer::enqueue`]) are decided in order.

use super::batch;
use super::error::StoreError;
use super::model::{Rejection, Request};
use super::seam::{Applied, BatchBackend, OpenBackend};
use crate::clock::Clock;
use crate::ledger::{Micros, Receipt};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot};

/// Applies a batch; a panic inside it (a bug) becomes an error for this batch's callers instead of
/// the end of the writer. The backend's transaction guard was dropped by the unwinding, so nothing
/// of the batch is applied; the backend then recovers (rolls back, reloads its counters).
async fn apply_guarded(
    backend: &mut Box<dyn BatchBackend>,
    requests: &[Request],
    ctx: &batch::Context,
) -> Result<Applied, StoreError> {
    match AssertUnwindSafe(backend.apply_batch(requests, ctx))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, size = requests.len(), "a batch panicked; nothing of it was applied");
            metrics::counter!("coalition_writer_panics_total").increment(1);
            if let Err(e) = backend.recover().await {
                tracing::error!(error = %e, "the writer could not recover after a panic");
            }
            Err(StoreError::Unavailable(
                "internal error while applying the batch; nothing was applied, retry".into(),
            ))
        }
    }
}

/// What a caller gets back: the receipt, a refusal, or a storage failure (nothing applied).
pub type Answer = Result<Result<Receipt, Rejection>, StoreError>;

struct Job {
    request: Request,
    reply: oneshot::Sender<Answer>,
    /// A line of a day file (`IngestBatch`): batched by [`BULK_BATCH`], not `max_batch`.
    bulk: bool,
}

/// The most requests of one batch that ends in lines of a day file: a file is applied in
/// batches larger than single calls', fewer commits for as many lines (single calls keep
/// `max_batch`, so that their latency stays bounded).
pub const BULK_BATCH: usize = 4096;

/// The handle callers submit through. Cloning it is cheap.
#[derive(Clone)]
pub struct Writer {
    lanes: std::sync::Arc<[mpsc::Sender<Job>]>,
    signals: std::sync::Arc<crate::signals::Signals>,
}

/// The lane a key's requests go to (FNV-1a: stable, and the same in every daemon).
fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes.max(1) as u64) as usize
}

/// What a request's lane is chosen by: its member, or the transaction or hold it names.
fn lane_key(r: &Request) -> String {
    match &r.op {
        super::model::Op::Earn { member, .. }
        | super::model::Op::Burn { member, .. }
        | super::model::Op::Authorize { member, .. } => member.clone(),
        super::model::Op::ReverseEarn { original, .. }
        | super::model::Op::ReverseBurn { original, .. } => format!("{}\n{original}", r.partner),
        super::model::Op::Capture { authorization, .. }
        | super::model::Op::Void { authorization } => format!("{}\n{authorization}", r.partner),
    }
}

/// How the writer batches.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Price versions (refreshed by the daemon; read at each batch's instant).
    pub prices: std::sync::Arc<crate::prices::PriceBook>,
    /// Retired partners and the instant they retired.
    pub retired: std::sync::Arc<std::collections::BTreeMap<String, Micros>>,
    /// Retired partners whose points the operator took over, and from when.
    pub taken_over: std::sync::Arc<std::collections::BTreeMap<String, Micros>>,
    /// Most requests in one commit.
    pub max_batch: usize,
    /// Requests queued before submitters wait.
    pub queue_depth: usize,
    /// Lifetime of new lots.
    pub expire_after: Option<Micros>,
    /// Test hook: pause between writing a batch and committing it.
    pub pause_before_commit: Option<std::time::Duration>,
    /// Test hook: panic inside the batch transaction for this member.
    pub panic_on_member: Option<&'static str>,
    /// The cycle calendar.
    pub cycles: coalition_clearing::Cycles,
    /// The tier ladder, when the coalition runs tiers.
    pub ladder: Option<std::sync::Arc<crate::programme::Ladder>>,
    /// Each partner's kind (campaign scopes).
    pub partner_kinds: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// The partners' stamp card rules.
    pub stamp_rules:
        std::sync::Arc<std::collections::BTreeMap<String, crate::programme::StampRule>>,
    /// The members' key (forgotten members are refused by their pseudonym).
    pub member_key: Option<crate::privacy::MemberKey>,
    /// Append each batch's link to the ledger's hash chain.
    pub chain: bool,
}

async fn run(
    lane: usize,
    mut backend: Box<dyn BatchBackend>,
    mut rx: mpsc::Receiver<Job>,
    config: WriterConfig,
    clock: Clock,
    signals: std::sync::Arc<crate::signals::Signals>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(config.max_batch);
    while rx.recv_many(&mut jobs, config.max_batch).await > 0 {
        // A day file's lines: take more of what is queued, up to their own bound.
        while jobs.last().is_some_and(|j| j.bulk) && jobs.len() < BULK_BATCH.max(config.max_batch) {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics::gauge!("coalition_writer_queue_depth", "lane" => lane.to_string())
            .set(rx.len() as f64);
        let requests: Vec<Request> = jobs.iter().map(|j| j.request.clone()).collect();
        let ctx = batch::Context {
            prices: config.prices.clone(),
            retired: config.retired.clone(),
            taken_over: config.taken_over.clone(),
            now: clock.now(),
            expire_after: config.expire_after,
            pause_before_commit: config.pause_before_commit,
            cycles: config.cycles,
            panic_on_member: config.panic_on_member,
            ladder: config.ladder.clone(),
            partner_kinds: config.partner_kinds.clone(),
            stamp_rules: config.stamp_rules.clone(),
            member_key: config.member_key.clone(),
            chain: config.chain,
            tell: signals.tail_followed(),
        };
        let started = std::time::Instant::now();
        let result = apply_guarded(&mut backend, &requests, &ctx).await;
        metrics::histogram!("coalition_write_batch_size").record(requests.len() as f64);
        metrics::histogram!("coalition_commit_seconds", "ok" => if result.is_ok() { "true" } else { "false" })
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(
            size = requests.len(),
            micros = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "batch"
        );
        let result = result.map(|applied| {
            signals.tell(applied.told);
            applied.answers
        });
        match &result {
            Ok(_) => signals.writer_ok(),
            Err(StoreError::Refused(_)) => {}
            Err(_) => signals.writer_failed(),
        }
        match result {
            Ok(answers) => {
                assert_eq!(answers.len(), jobs.len(), "one answer per request");
                for (job, answer) in jobs.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(StoreError::Refused(e)) if jobs.len() > 1 => {
                // Something in the batch was refused: apply each request on its own, so that only
                // the one at fault fails.
                tracing::warn!(error = %e, size = jobs.len(), "batch refused; applying its requests one by one");
                for job in jobs.drain(..) {
                    let ctx = batch::Context {
                        now: clock.now(),
                        ..ctx.clone()
                    };
                    let answer =
                        apply_guarded(&mut backend, std::slice::from_ref(&job.request), &ctx).await;
                    let answer = answer.and_then(|applied| {
                        signals.tell(applied.told);
                        signals.writer_ok();
                        let mut a = applied.answers;
                        a.pop().ok_or_else(|| {
                            StoreError::Unavailable("the batch gave no answer".into())
                        })
                    });
                    if let Err(e) = &answer {
                        tracing::error!(error = %e, transaction = %job.request.transaction_id, partner = %job.request.partner, "request refused by storage");
                    }
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size = jobs.len(), "batch failed, nothing of it applied");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Writer {
    /// Starts the writer: one lane per opener in `open`, each on a thread of its own (its chain
    /// of statements must not wait in a queue behind hundreds of request tasks), opening its
    /// backend there. Returns once every backend is open. The writer ends when every [`Writer`]
    /// handle is dropped, after answering everything queued; the returned task then ends with
    /// `Ok`. If a lane's thread dies instead, the task ends with an error, and the daemon must
    /// stop: a daemon that cannot write must not look alive.
    pub async fn spawn(
        open: Vec<OpenBackend>,
        config: WriterConfig,
        clock: Clock,
    ) -> Result<(Writer, tokio::task::JoinHandle<Result<(), StoreError>>), StoreError> {
        assert!(config.max_batch >= 1 && config.queue_depth >= 1 && !open.is_empty());
        let signals = std::sync::Arc::new(crate::signals::Signals::default());
        let mut queues = Vec::with_capacity(open.len());
        let mut done = Vec::with_capacity(open.len());
        for (lane, open) in open.into_iter().enumerate() {
            let (queue, rx) = mpsc::channel::<Job>(config.queue_depth);
            let theirs = signals.clone();
            let config = config.clone();
            let clock = clock.clone();
            let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
            let (done_tx, done_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(if lane == 0 {
                    "ledger-writer".into()
                } else {
                    format!("ledger-writer-{lane}")
                })
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(StoreError::Unavailable(format!(
                                "cannot start the writer's runtime: {e}"
                            ))));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        match open.await {
                            Ok(backend) => {
                                let _ = ready_tx.send(Ok(()));
                                run(lane, backend, rx, config, clock, theirs).await;
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    });
                    let _ = done_tx.send(());
                })
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the writer thread: {e}"))
                })?;
            ready_rx.await.map_err(|_| StoreError::ShuttingDown)??;
            queues.push(queue);
            done.push(done_rx);
        }
        let task = tokio::spawn(async move {
            // A thread sends on its `done_tx` only when it ends normally; a panic drops it unsent.
            for d in done {
                d.await.map_err(|_| {
                    tracing::error!("a ledger writer died; the daemon cannot write and stops");
                    StoreError::Unavailable("the ledger writer died".into())
                })?;
            }
            Ok(())
        });
        Ok((
            Writer {
                lanes: queues.into(),
                signals,
            },
            task,
        ))
    }

    /// What the writer reports for health; the scheduler reports into the same.
    pub fn signals(&self) -> std::sync::Arc<crate::signals::Signals> {
        self.signals.clone()
    }

    /// Queues a request and waits until its batch is durable (or failed).
    pub async fn submit(&self, request: Request) -> Answer {
        let key = lane_key(&request);
        self.queue(request, &key, false).await?.await
    }

    /// Queues a line of a day file in the lane of `key` (waiting only for room in its queue)
    /// and returns what resolves to its answer: lines queued one after another under one key are
    /// decided in that order, so a caller can keep many in flight and still have them applied in
    /// its order; they are batched by [`BULK_BATCH`].
    pub async fn enqueue(
        &self,
        request: Request,
        key: &str,
    ) -> Result<impl std::future::Future<Output = Answer> + Send + 'static, StoreError> {
        self.queue(request, key, true).await
    }

    async fn queue(
        &self,
        request: Request,
        key: &str,
        bulk: bool,
    ) -> Result<impl std::future::Future<Output = Answer> + Send + 'static, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.lanes[lane_of(key, self.lanes.len())]
            .send(Job {
                request,
                reply,
                bulk,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(async move { rx.await.map_err(|_| StoreError::ShuttingDown)? })
    }
}
