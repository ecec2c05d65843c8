//! A partner's event feed as a service: where a watch may start (a cursor checked against what is
//! kept), then every event from there on, in order and live, paced by its reader.

use super::error::ServiceError;
use super::shared::Shared;
use crate::events::{Event, EventType};
use crate::store::feed::{FeedCall, FeedReply};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events read from the store at a time.
pub const PAGE: i64 = 500;
/// The least time between two reads of one follower: what commits meanwhile is read in one page
/// (the lag from commit to delivery grows by at most this much).
pub const GATHER: Duration = Duration::from_millis(20);
/// How often a follower with nothing new looks again for what another daemon committed (this
/// daemon's own commits wake it at once).
pub const POLL: Duration = Duration::from_millis(200);

/// The types a watch keeps (empty: all), or `UNKNOWN_EVENT_TYPE` naming the first unknown.
pub fn types(names: &[String]) -> Result<Vec<EventType>, ServiceError> {
    names
        .iter()
        .map(|n| {
            EventType::parse(n).ok_or_else(|| {
                ServiceError::field(
                    "types",
                    "UNKNOWN_EVENT_TYPE",
                    format!(
                        "{n:?} is no event type; use one of {}",
                        EventType::ALL
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// The oldest sequence still kept of `partner`'s feed and its last (the oldest is the next one
/// to come when none is kept).
async fn bounds(shared: &Shared, partner: &str) -> Result<(i64, i64), ServiceError> {
    match shared
        .store
        .feed(FeedCall::Bounds {
            partner: partner.to_string(),
        })
        .await?
    {
        FeedReply::Bounds(oldest, last) => Ok((oldest.unwrap_or(last + 1), last)),
        _ => Err(ServiceError::mismatched()),
    }
}

/// Where a watch of `partner` from `from` starts: `from` itself (0 or 1: the oldest kept), or
/// `CURSOR_EXPIRED` when events from there are no longer kept, `CURSOR_AHEAD` when `from` is
/// beyond the next event.
pub async fn start(shared: &Shared, partner: &str, from: i64) -> Result<i64, ServiceError> {
    // Holds that ran out are told before the watch begins, whether or not a round has run
    // (the round gives each back at its instant while the watch follows).
    super::holds::release_due(shared).await?;
    let (oldest, last) = bounds(shared, partner).await?;
    if from < 0 {
        return Err(ServiceError::field(
            "from_sequence",
            "CURSOR_AHEAD",
            "a sequence number is 0 (from the oldest kept) or more",
        ));
    }
    let from = if from <= 1 { oldest.max(1) } else { from };
    if from < oldest {
        return Err(ServiceError::CursorExpired {
            oldest,
            days: shared.config.events_retention_days,
        });
    }
    if from > last + 1 {
        return Err(ServiceError::field(
            "from_sequence",
            "CURSOR_AHEAD",
            format!(
                "the feed's last event is {last}: resume from at most {}",
                last + 1
            ),
        ));
    }
    Ok(from)
}

/// Follows `partner`'s feed from `from` into `out` until `out` closes: pages of events read from
/// the store until it has caught up, then the events of this daemon's batches as the writer hands
/// them over after each commit (the tail), reading nothing while they follow on without a gap.
/// It reads the store again when the tail skips a number for [`GATHER`] (another daemon, holds
/// given back, a clearing run wrote in between; another lane's events come on the tail within
/// it), when it lags, when something outside the writer committed, and at least every [`POLL`]
/// (another daemon's events). The reader paces it (a full
/// `out` waits), and nothing is dropped; if retention removes events this reader has not reached,
/// it is told so (`CURSOR_EXPIRED`) and the stream ends. Reads are at least [`GATHER`] apart, so
/// that a busy writer's commits are read a page at a time, not one read per commit per follower.
pub async fn follow(
    shared: Shared,
    partner: String,
    mut from: i64,
    types: Vec<EventType>,
    out: mpsc::Sender<Result<Event, ServiceError>>,
) {
    let signals = shared.writer.signals();
    let mut aside = signals.watch_commits_aside();
    // Followed before the first read: whatever commits after it is on the tail or in the read.
    let mut tail = signals.follow_tail();
    // Events of the tail beyond the cursor, waiting for those before them.
    let mut ahead: std::collections::BTreeMap<i64, Event> = std::collections::BTreeMap::new();
    loop {
        let read_at = tokio::time::Instant::now();
        // The bounds and the page in one read: every event up to `last` is visible (the head
        // moves in the transaction that inserts them), so the reader may skip to `last` past
        // filtered ones.
        let (oldest, last, page) = match shared
            .store
            .feed(FeedCall::Page {
                partner: partner.clone(),
                from,
                types: types.clone(),
                limit: PAGE,
            })
            .await
        {
            Ok(FeedReply::Page {
                oldest,
                last,
                events,
            }) => (oldest.unwrap_or(last + 1), last, events),
            Ok(_) => {
                let _ = out.send(Err(ServiceError::mismatched())).await;
                return;
            }
            Err(e) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
        };
        if oldest > from {
            // Retention removed events this reader had not reached.
            let _ = out
                .send(Err(ServiceError::CursorExpired {
                    oldest,
                    days: shared.config.events_retention_days,
                }))
                .await;
            return;
        }
        if from <= last {
            let full = page.len() as i64 == PAGE;
            let mut next = last + 1;
            for e in page {
                next = e.seq + 1;
                if out.send(Ok(e)).await.is_err() {
                    return; // the reader went away
                }
            }
            from = if full { next } else { last + 1 };
            if full {
                continue;
            }
        }
        // In step: follow the tail until the store must be read again. Lanes commit in one
        // numbering but hand their events over in their own order: what comes early waits in
        // `ahead` for at most GATHER, then the store fills the gap (another daemon's events).
        ahead.retain(|seq, _| *seq >= from);
        let poll_at = tokio::time::Instant::now() + POLL;
        let mut gap_since = None;
        loop {
            let wake =
                gap_since.map_or(poll_at, |t: tokio::time::Instant| (t + GATHER).min(poll_at));
            tokio::select! {
                told = tail.recv() => match told {
                    Ok(told) => {
                        for e in told.iter().filter(|e| e.partner == partner && e.seq >= from) {
                            ahead.insert(e.seq, e.clone());
                        }
                        while let Some(e) = ahead.remove(&from) {
                            from += 1;
                            if (types.is_empty() || types.contains(&e.event_type))
                                && out.send(Ok(e)).await.is_err()
                            {
                                return; // the reader went away
                            }
                        }
                        gap_since = match (ahead.is_empty(), gap_since) {
                            (true, _) => None,
                            (false, None) => Some(tokio::time::Instant::now()),
                            (false, since) => since,
                        };
                    }
                    // Lagged behind the tail, or the writer stopped: the store has it all.
                    Err(_) => {
                        tail = tail.resubscribe();
                        break;
                    }
                },
                _ = aside.changed() => break,
                _ = tokio::time::sleep_until(wake) => break,
                _ = out.closed() => return,
            }
        }
        tokio::time::sleep_until(read_at + GATHER).await;
    }
}
