//! Partners' event feeds and webhooks: SQL once for both backends. Events are appended inside the
//! transaction of their fact ([`FeedSql::append`]); the feed is read by sequence; each partner's
//! webhook row says where its events go, how far they were delivered and which daemon delivers
//! them (a lease).

use super::bulk::insert;
use super::dialect::Dialect;
use super::error::StoreError;
use crate::events::{Event, EventType, NewEvent, Payload};
use crate::ledger::Micros;
use std::collections::BTreeMap;

/// A partner's webhook as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRow {
    /// The partner.
    pub partner: String,
    /// Where events are posted.
    pub url: String,
    /// The signing secret (`whsec_` and base64).
    pub secret: String,
    /// When it was last set, and by whom (`config` or the operator).
    pub set_at: Micros,
    /// Who set it.
    pub set_by: String,
    /// The last sequence delivered (acknowledged by the receiver).
    pub delivered_seq: i64,
    /// The daemon delivering, and until when its lease runs.
    pub lease: Option<(String, Micros)>,
    /// Since when deliveries fail, and how many failed in a row.
    pub failing_since: Option<Micros>,
    /// Failures in a row.
    pub failures: i64,
    /// When deliveries were paused (after failing for too long); an operator resumes them.
    pub paused_at: Option<Micros>,
    /// The last failure, as a person reads it.
    pub last_error: Option<String>,
}

/// A read or a change of the feed.
#[derive(Debug, Clone)]
pub enum FeedCall {
    /// The feed's bounds now, and up to `limit` events of `partner` from sequence `from` up to
    /// its last, of these types (all if empty): one read of one connection per page.
    Page {
        /// The partner.
        partner: String,
        /// The first sequence wanted.
        from: i64,
        /// Only these types (empty: all).
        types: Vec<EventType>,
        /// At most this many.
        limit: i64,
    },
    /// The oldest sequence still kept of `partner`'s feed (none if none is), and its last.
    Bounds {
        /// The partner.
        partner: String,
    },
    /// Removes events that committed before `before` (retention).
    Prune {
        /// The cut.
        before: Micros,
    },
    /// Every partner's webhook.
    Webhooks,
    /// Sets a partner's webhook (a new one delivers from the feed's head on; a changed one
    /// keeps its progress). From the config it only replaces one the config set.
    SetWebhook {
        /// The partner.
        partner: String,
        /// Where events are posted.
        url: String,
        /// The signing secret.
        secret: String,
        /// When.
        at: Micros,
        /// Who (`config` or `operator/<name>`).
        by: String,
    },
    /// Resumes a paused webhook: deliveries start again from where they stopped.
    ResumeWebhook {
        /// The partner.
        partner: String,
    },
    /// Takes (or renews) the lease of `partner`'s deliveries for `holder` until `until`, if no
    /// other daemon holds a lease running at `now`.
    Lease {
        /// The partner.
        partner: String,
        /// The daemon.
        holder: String,
        /// Now.
        now: Micros,
        /// Until.
        until: Micros,
    },
    /// Records that `holder` delivered up to `seq`.
    Delivered {
        /// The partner.
        partner: String,
        /// The daemon.
        holder: String,
        /// The last sequence delivered.
        seq: i64,
    },
    /// Records a failed delivery; `pause` when it has failed for too long.
    Failed {
        /// The partner.
        partner: String,
        /// The daemon.
        holder: String,
        /// When.
        now: Micros,
        /// What went wrong.
        error: String,
        /// Pause deliveries.
        pause: bool,
    },
}

/// The answer to a [`FeedCall`].
#[derive(Debug, Clone)]
pub enum FeedReply {
    /// A page: the oldest sequence kept (none if none is), the last, and the events asked for
    /// (by sequence, none beyond `last`).
    Page {
        /// The oldest sequence kept.
        oldest: Option<i64>,
        /// The feed's last sequence when the page was read.
        last: i64,
        /// The events.
        events: Vec<Event>,
    },
    /// (oldest kept, last).
    Bounds(Option<i64>, i64),
    /// Rows removed.
    Pruned(u64),
    /// Webhooks.
    Webhooks(Vec<WebhookRow>),
    /// Whether the change took (a lease taken, a webhook changed).
    Done(bool),
}

const WEBHOOK_COLUMNS: &str = "partner_id, url, secret, set_at, set_by, delivered_seq, lease_holder, \
    lease_until, failing_since, failures, paused_at, last_error";

/// The feed's SQL, generic over the sqlx database.
pub struct FeedSql<DB>(std::marker::PhantomData<DB>);

/// An event as a read of the feed gives it: its stored payload (without member ids) with its
/// member's id put back.
fn as_read(
    partner: &str,
    seq: i64,
    event_type: EventType,
    at: Micros,
    member: Option<String>,
    stored: Payload,
) -> Event {
    let payload = match &member {
        Some(m) => stored.with_member(m),
        None => stored,
    };
    Event {
        partner: partner.to_string(),
        seq,
        event_type,
        at,
        member,
        payload,
    }
}

impl<DB> FeedSql<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    DB::QueryResult: super::registry::RowsAffected,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Appends `events` at `at`, inside the caller's transaction: each partner's next numbers are
    /// taken from its head row (locked until the commit, partners in order, so that events of
    /// every lane and daemon share one numbering without gaps), then the rows are inserted.
    pub async fn append(
        conn: &mut DB::Connection,
        at: Micros,
        events: &[NewEvent],
    ) -> Result<(), sqlx::Error> {
        Self::append_telling(conn, at, events, None).await
    }

    /// [`Self::append`], and into `told` each event as a read of the feed would give it back
    /// (numbered), for the writer to hand to the feed's followers once the transaction commits.
    pub async fn append_telling(
        conn: &mut DB::Connection,
        at: Micros,
        events: &[NewEvent],
        mut told: Option<&mut Vec<Event>>,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let mut by_partner: BTreeMap<&str, Vec<&NewEvent>> = BTreeMap::new();
        for e in events {
            by_partner.entry(&e.partner).or_default().push(e);
        }
        let mut rows: Vec<(String, i64, &'static str, Option<String>, String)> =
            Vec::with_capacity(events.len());
        for (partner, evs) in by_partner {
            let n = evs.len() as i64;
            let last: i64 = sqlx::query_scalar(
                "INSERT INTO partner_event_heads (partner_id, last_seq) VALUES ($1, $2) \
                 ON CONFLICT (partner_id) DO UPDATE SET last_seq = partner_event_heads.last_seq + excluded.last_seq \
                 RETURNING last_seq",
            )
            .bind(partner.to_string())
            .bind(n)
            .fetch_one(&mut *conn)
            .await?;
            for (i, e) in evs.into_iter().enumerate() {
                let stored = e.payload.clone().without_member();
                let payload = serde_json::to_string(&stored)
                    .map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
                let seq = last - n + 1 + i as i64;
                if let Some(told) = told.as_deref_mut() {
                    told.push(as_read(
                        partner,
                        seq,
                        e.event_type,
                        at,
                        e.member.clone(),
                        stored,
                    ));
                }
                rows.push((
                    partner.to_string(),
                    seq,
                    e.event_type.as_str(),
                    e.member.clone(),
                    payload,
                ));
            }
        }
        insert::<DB, _, _>(
            conn,
            "INSERT INTO partner_events (partner_id, seq, event_type, at, member_id, payload)",
            "",
            6,
            &rows,
            |q, (partner, seq, t, member, payload)| {
                q.bind(partner.clone())
                    .bind(*seq)
                    .bind(t.to_string())
                    .bind(at)
                    .bind(member.clone())
                    .bind(payload.clone())
            },
        )
        .await?;
        metrics::counter!("coalition_events_written_total").increment(events.len() as u64);
        Ok(())
    }

    /// The oldest sequence kept of `partner`'s feed (none if none is) and its last, in one query.
    async fn bounds(
        conn: &mut DB::Connection,
        partner: &str,
    ) -> Result<(Option<i64>, i64), StoreError> {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT (SELECT MIN(seq) FROM partner_events WHERE partner_id = $1), \
             (SELECT last_seq FROM partner_event_heads WHERE partner_id = $2)",
        )
        .bind(partner.to_string())
        .bind(partner.to_string())
        .fetch_one(&mut *conn)
        .await?;
        let oldest: Option<i64> = row.try_get(0)?;
        let last: Option<i64> = row.try_get(1)?;
        Ok((oldest, last.unwrap_or(0)))
    }

    /// Up to `limit` events of `partner` with sequences from `from` to `to`, of these types (all
    /// if empty), by sequence.
    async fn events(
        conn: &mut DB::Connection,
        partner: &str,
        from: i64,
        to: i64,
        types: &[EventType],
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        use sqlx::Row;
        let filter = if types.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..types.len())
                .map(|i| super::dialect::mark::<DB>(4 + i))
                .collect();
            format!(" AND event_type IN ({})", marks.join(", "))
        };
        let sql = format!(
            "SELECT seq, event_type, at, member_id, payload FROM partner_events \
             WHERE partner_id = {} AND seq >= {} AND seq <= {}{filter} ORDER BY seq LIMIT {}",
            super::dialect::mark::<DB>(1),
            super::dialect::mark::<DB>(2),
            super::dialect::mark::<DB>(3),
            limit.clamp(1, 10_000),
        );
        // Placeholders in order (SQLite's `?` are taken in order): the list comes last.
        let mut q = sqlx::query::<DB>(&sql)
            .bind(partner.to_string())
            .bind(from)
            .bind(to);
        for t in types {
            q = q.bind(t.as_str().to_string());
        }
        let rows = q.fetch_all(&mut *conn).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.try_get(1)?;
            let member: Option<String> = r.try_get(3)?;
            let text: String = r.try_get(4)?;
            let event_type = EventType::parse(&kind).ok_or_else(|| {
                StoreError::Corrupt(format!("partner_events.event_type holds {kind:?}"))
            })?;
            let payload: Payload = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("partner_events.payload: {e}")))?;
            out.push(as_read(
                partner,
                r.try_get(0)?,
                event_type,
                r.try_get(2)?,
                member,
                payload,
            ));
        }
        Ok(out)
    }

    /// Answers a feed call in the caller's connection or transaction.
    pub async fn call(conn: &mut DB::Connection, call: FeedCall) -> Result<FeedReply, StoreError> {
        use super::registry::RowsAffected;
        use sqlx::Row;
        Ok(match call {
            FeedCall::Page {
                partner,
                from,
                types,
                limit,
            } => {
                let (oldest, last) = Self::bounds(conn, &partner).await?;
                let events = if from <= last {
                    Self::events(conn, &partner, from, last, &types, limit).await?
                } else {
                    Vec::new()
                };
                FeedReply::Page {
                    oldest,
                    last,
                    events,
                }
            }
            FeedCall::Bounds { partner } => {
                let (oldest, last) = Self::bounds(conn, &partner).await?;
                FeedReply::Bounds(oldest, last)
            }
            FeedCall::Prune { before } => {
                let r = sqlx::query("DELETE FROM partner_events WHERE at < $1")
                    .bind(before)
                    .execute(&mut *conn)
                    .await?;
                FeedReply::Pruned(r.rows())
            }
            FeedCall::Webhooks => {
                let rows = sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM partner_webhooks ORDER BY partner_id"
                ))
                .fetch_all(&mut *conn)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let holder: Option<String> = r.try_get(6)?;
                    let until: Option<i64> = r.try_get(7)?;
                    out.push(WebhookRow {
                        partner: r.try_get(0)?,
                        url: r.try_get(1)?,
                        secret: r.try_get(2)?,
                        set_at: r.try_get(3)?,
                        set_by: r.try_get(4)?,
                        delivered_seq: r.try_get(5)?,
                        lease: holder.zip(until),
                        failing_since: r.try_get(8)?,
                        failures: r.try_get(9)?,
                        paused_at: r.try_get(10)?,
                        last_error: r.try_get(11)?,
                    });
                }
                FeedReply::Webhooks(out)
            }
            FeedCall::SetWebhook {
                partner,
                url,
                secret,
                at,
                by,
            } => {
                let from_config = by == crate::prices::SET_BY_CONFIG;
                // A new webhook delivers what happens from now on: its progress starts at the
                // feed's head. The config replaces only what the config set.
                let r = sqlx::query(&format!(
                    "INSERT INTO partner_webhooks (partner_id, url, secret, set_at, set_by, delivered_seq, failures) \
                     VALUES ($1, $2, $3, $4, $5, COALESCE((SELECT last_seq FROM partner_event_heads \
                     WHERE partner_id = $6), 0), 0) \
                     ON CONFLICT (partner_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, \
                     set_at = excluded.set_at, set_by = excluded.set_by{}",
                    if from_config {
                        " WHERE partner_webhooks.set_by = 'config' AND (partner_webhooks.url <> excluded.url \
                         OR partner_webhooks.secret <> excluded.secret)"
                    } else {
                        ""
                    }
                ))
                .bind(partner.clone())
                .bind(url)
                .bind(secret)
                .bind(at)
                .bind(by)
                .bind(partner)
                .execute(&mut *conn)
                .await?;
                FeedReply::Done(r.rows() > 0)
            }
            FeedCall::ResumeWebhook { partner } => {
                let r = sqlx::query(
                    "UPDATE partner_webhooks SET paused_at = NULL, failures = 0, failing_since = NULL \
                     WHERE partner_id = $1",
                )
                .bind(partner)
                .execute(&mut *conn)
                .await?;
                FeedReply::Done(r.rows() > 0)
            }
            FeedCall::Lease {
                partner,
                holder,
                now,
                until,
            } => {
                let r = sqlx::query(
                    "UPDATE partner_webhooks SET lease_holder = $1, lease_until = $2 WHERE partner_id = $3 \
                     AND paused_at IS NULL AND (lease_holder IS NULL OR lease_holder = $4 OR lease_until < $5)",
                )
                .bind(holder.clone())
                .bind(until)
                .bind(partner)
                .bind(holder)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                FeedReply::Done(r.rows() > 0)
            }
            FeedCall::Delivered {
                partner,
                holder,
                seq,
            } => {
                let r = sqlx::query(
                    "UPDATE partner_webhooks SET delivered_seq = $1, failures = 0, failing_since = NULL, \
                     last_error = NULL WHERE partner_id = $2 AND lease_holder = $3 AND delivered_seq < $4",
                )
                .bind(seq)
                .bind(partner)
                .bind(holder)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
                FeedReply::Done(r.rows() > 0)
            }
            FeedCall::Failed {
                partner,
                holder,
                now,
                error,
                pause,
            } => {
                // Paused by the failure that finds the webhook failing for too long.
                let paused = if pause { ", paused_at = $1" } else { "" };
                let r = sqlx::query(&format!(
                    "UPDATE partner_webhooks SET failures = failures + 1, \
                     failing_since = COALESCE(failing_since, $1), last_error = $2{paused} \
                     WHERE partner_id = $3 AND lease_holder = $4"
                ))
                .bind(now)
                .bind(error)
                .bind(partner)
                .bind(holder)
                .execute(&mut *conn)
                .await?;
                FeedReply::Done(r.rows() > 0)
            }
        })
    }
}
