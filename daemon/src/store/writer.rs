//! Group commit. Every mutation goes through one queue to one writer task, which takes whatever is
//! queued (up to `max_batch`), applies it in one database transaction, commits once, and only then
//! answers each caller. Under load many calls share one fsync; when idle a call commits alone.

use super::batch;
use super::error::StoreError;
use super::model::{Rejection, Request};
use super::seam::{BatchBackend, OpenBackend};
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
) -> Result<Vec<Result<Receipt, Rejection>>, StoreError> {
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
}

/// The handle callers submit through. Cloning it is cheap.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    signals: std::sync::Arc<crate::signals::Signals>,
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
    mut backend: Box<dyn BatchBackend>,
    mut rx: mpsc::Receiver<Job>,
    config: WriterConfig,
    clock: Clock,
    signals: std::sync::Arc<crate::signals::Signals>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(config.max_batch);
    while rx.recv_many(&mut jobs, config.max_batch).await > 0 {
        metrics::gauge!("coalition_writer_queue_depth").set(rx.len() as f64);
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
                    let answer = answer.and_then(|mut a| {
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
    /// Starts the writer on a thread of its own (its chain of statements must not wait in a queue
    /// behind hundreds of request tasks), opening its backend there. Returns once the backend is
    /// open. The writer ends when every [`Writer`] handle is dropped, after answering everything
    /// queued; the returned task then ends with `Ok`. If the writer thread dies instead, the task
    /// ends with an error, and the daemon must stop: a daemon that cannot write must not look alive.
    pub async fn spawn(
        open: OpenBackend,
        config: WriterConfig,
        clock: Clock,
    ) -> Result<(Writer, tokio::task::JoinHandle<Result<(), StoreError>>), StoreError> {
        assert!(config.max_batch >= 1 && config.queue_depth >= 1);
        let (queue, rx) = mpsc::channel::<Job>(config.queue_depth);
        let signals = std::sync::Arc::new(crate::signals::Signals::default());
        let theirs = signals.clone();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-writer".into())
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
                            run(backend, rx, config, clock, theirs).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        ready_rx.await.map_err(|_| StoreError::ShuttingDown)??;
        let task = tokio::spawn(async move {
            // The thread sends on `done_tx` only when it ends normally; a panic drops it unsent.
            done_rx.await.map_err(|_| {
                tracing::error!("the ledger writer died; the daemon cannot write and stops");
                StoreError::Unavailable("the ledger writer died".into())
            })
        });
        Ok((Writer { queue, signals }, task))
    }

    /// What the writer reports for health; the scheduler reports into the same.
    pub fn signals(&self) -> std::sync::Arc<crate::signals::Signals> {
        self.signals.clone()
    }

    /// Queues a request and waits until its batch is durable (or failed).
    pub async fn submit(&self, request: Request) -> Answer {
        self.enqueue(request).await?.await
    }

    /// Queues a request (waiting only for room in the queue) and returns what resolves to its
    /// answer: requests queued one after another are decided in that order, so a caller can keep
    /// many in flight and still have them applied in its order (bulk ingestion).
    pub async fn enqueue(
        &self,
        request: Request,
    ) -> Result<impl std::future::Future<Output = Answer> + Send + 'static, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(async move { rx.await.map_err(|_| StoreError::ShuttingDown)? })
    }
}
