//! `IngestBatch`: a partner's day file, line by line, through the same checks and the same writer
//! queue as the single calls. Lines are queued to the writer in the order they arrive (so they
//! are decided in that order, several to a batch) and answered in that order as each becomes
//! durable; at most [`WINDOW`] lines of one stream are in flight, so a slow reader of results
//! slows the file, never the daemon's memory.

use super::error::code_name;
use super::wire::{
    burn_op, earn_canonical, earn_op, receipt_to_pb, reverse_burn_op, reverse_earn_op,
};
use crate::config::Partner;
use crate::ledger::Receipt;
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::services::writes;
use coalition_proto::v1 as pb;
use futures::stream::{FuturesOrdered, StreamExt};
use std::pin::Pin;
use tonic::{Status, Streaming};

/// The results of one `IngestBatch` stream.
pub type IngestStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::IngestResult, Status>> + Send + 'static>>;

/// Lines of one stream queued to the writer and not yet answered.
pub const WINDOW: usize = 4096;

type Pending = Pin<Box<dyn std::future::Future<Output = pb::IngestResult> + Send + 'static>>;

/// The answer to line `line` of transaction `id`.
fn answer(
    line: u64,
    id: String,
    partner: &str,
    r: Result<Receipt, ServiceError>,
) -> pb::IngestResult {
    match r {
        Ok(receipt) => pb::IngestResult {
            line,
            transaction_id: id,
            status: "OK".into(),
            reason: String::new(),
            message: String::new(),
            receipt: Some(receipt_to_pb(&receipt, partner)),
        },
        Err(e) => {
            let (code, reason) = e.code_and_reason();
            pb::IngestResult {
                line,
                transaction_id: id,
                status: code_name(code).into(),
                reason: reason.into(),
                message: e.to_string(),
                receipt: None,
            }
        }
    }
}

fn ready(result: pb::IngestResult) -> Pending {
    Box::pin(std::future::ready(result))
}

/// Serves one `IngestBatch` stream of `partner`.
pub fn ingest(
    shared: Shared,
    partner: Partner,
    mut inbound: Streaming<pb::IngestLine>,
) -> IngestStream {
    let (out, rx) = tokio::sync::mpsc::channel::<Result<pb::IngestResult, Status>>(1024);
    tokio::spawn(async move {
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                Some(result) = pending.next(), if !pending.is_empty() => {
                    if out.send(Ok(result)).await.is_err() {
                        return; // the client went away; what was queued still applies
                    }
                }
                line = inbound.message(), if reading && pending.len() < WINDOW => match line {
                    Ok(Some(line)) => pending.push_back(line_of(&shared, &partner, line).await),
                    Ok(None) => reading = false,
                    Err(status) => {
                        // A broken stream: lines answered so far are durable; the rest of
                        // the file is sent again (its applied lines answer as retries).
                        let _ = out.send(Err(status)).await;
                        return;
                    }
                },
                else => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Checks one line and queues it to the writer (after taking one call of the partner's rate
/// limit, waiting for it if need be); returns what resolves to its answer.
async fn line_of(shared: &Shared, partner: &Partner, line: pb::IngestLine) -> Pending {
    use pb::ingest_line::Operation;
    let n = line.line;
    let p = partner.id.clone();
    let (id, prepared) = match line.operation {
        Some(Operation::Earn(r)) => match earn_op(shared.config.currency, partner, &r) {
            Ok(x) => (r.transaction_id.clone(), Ok(x)),
            Err(refused) => {
                // As the single call: a retry of an earn that today's rules refuse is
                // answered by its stored receipt.
                let shared = shared.clone();
                let partner = partner.clone();
                return Box::pin(async move {
                    let id = r.transaction_id.clone();
                    let r =
                        writes::replay(&shared, &partner, &id, earn_canonical(&r), refused).await;
                    answer(n, id, &partner.id, r)
                });
            }
        },
        Some(Operation::Burn(r)) => (r.transaction_id.clone(), burn_op(&r)),
        Some(Operation::ReverseEarn(r)) => (r.transaction_id.clone(), reverse_earn_op(&r)),
        Some(Operation::ReverseBurn(r)) => (r.transaction_id.clone(), reverse_burn_op(&r)),
        None => (
            String::new(),
            Err(ServiceError::field(
                "operation",
                "MISSING_OPERATION",
                "set one of earn, burn, reverse_earn, reverse_burn",
            )),
        ),
    };
    let (op, canonical) = match prepared {
        Ok(x) => x,
        Err(e) => return ready(answer(n, id, &p, Err(e))),
    };
    loop {
        match shared.limits.check(&p) {
            Ok(()) => break,
            Err(crate::ops::limits::Denied::Throttled(wait)) => tokio::time::sleep(wait).await,
            Err(_) => {
                let e = ServiceError::PermissionDenied(format!("partner {p} is suspended"));
                return ready(answer(n, id, &p, Err(e)));
            }
        }
    }
    let request = writes::request(&p, &id, op, &canonical);
    // One stream's lines keep their order: all in the lane of its partner.
    match shared.writer.enqueue(request, &p).await {
        Ok(reply) => Box::pin(async move {
            let r = match reply.await {
                Ok(Ok(receipt)) => Ok(receipt),
                Ok(Err(rejection)) => Err(ServiceError::from(rejection)),
                Err(e) => Err(ServiceError::from(e)),
            };
            answer(n, id, &p, r)
        }),
        Err(e) => ready(answer(n, id, &p, Err(e.into()))),
    }
}
