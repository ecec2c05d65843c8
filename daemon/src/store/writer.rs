//! Group commit. Every mutation goes through one queue to one writer task, which takes whatever is
//! queued (up to `max_batch`), applies it in one database transaction, commits once, and only then
//! answers each caller. Under load many calls share one fsync; when idle a call commits alone.

use super::{BatchBackend, OpenBackend, Rejection, Request, StoreError, batch};
use crate::clock::Clock;
use crate::ledger::{Micros, Receipt};
use tokio::sync::{mpsc, oneshot};

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
}

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most requests in one commit.
    pub max_batch: usize,
    /// Requests queued before submitters wait.
    pub queue_depth: usize,
    /// Lifetime of new lots.
    pub expire_after: Option<Micros>,
    /// Test hook: pause between writing a batch and committing it.
    pub pause_before_commit: Option<std::time::Duration>,
    /// The cycle calendar.
    pub cycles: coalition_clearing::Cycles,
}

async fn run(
    mut backend: Box<dyn BatchBackend>,
    mut rx: mpsc::Receiver<Job>,
    config: WriterConfig,
    clock: Clock,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(config.max_batch);
    while rx.recv_many(&mut jobs, config.max_batch).await > 0 {
        let requests: Vec<Request> = jobs.iter().map(|j| j.request.clone()).collect();
        let ctx = batch::Context {
            now: clock.now(),
            expire_after: config.expire_after,
            pause_before_commit: config.pause_before_commit,
            cycles: config.cycles,
        };
        let started = std::time::Instant::now();
        let result = backend.apply_batch(&requests, &ctx).await;
        metrics::histogram!("coalition_write_batch_size").record(requests.len() as f64);
        metrics::histogram!("coalition_commit_seconds", "ok" => if result.is_ok() { "true" } else { "false" })
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(
            size = requests.len(),
            micros = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "batch"
        );
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
                        ..ctx
                    };
                    let answer = backend
                        .apply_batch(std::slice::from_ref(&job.request), &ctx)
                        .await;
                    let answer = answer.map(|mut a| a.pop().expect("one answer per request"));
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
    /// queued.
    pub async fn spawn(
        open: OpenBackend,
        config: WriterConfig,
        clock: Clock,
    ) -> Result<(Writer, tokio::task::JoinHandle<()>), StoreError> {
        assert!(config.max_batch >= 1 && config.queue_depth >= 1);
        let (queue, rx) = mpsc::channel::<Job>(config.queue_depth);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("writer runtime");
                rt.block_on(async move {
                    match open.await {
                        Ok(backend) => {
                            let _ = ready_tx.send(Ok(()));
                            run(backend, rx, config, clock).await;
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
            let _ = done_rx.await;
        });
        Ok((Writer { queue }, task))
    }

    /// Queues a request and waits until its batch is durable (or failed).
    pub async fn submit(&self, request: Request) -> Answer {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }
}
