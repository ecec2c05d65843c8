//! Reconciliation as stored: a partner's submission for a cycle matched against the ledger's
//! transactions (`coalition_clearing::reconcile` decides the breaks), its breaks worked by
//! finance, and the finalization that refuses open breaks unless finance accepts them. SQL once
//! for both backends; each backend runs these inside one write transaction that holds the
//! reconciliation tables (and, for `finalize`, the settlement).

use super::clearing::Stored;
use super::error::StoreError;
use crate::ledger::Micros;
use coalition_clearing::reconcile::{self, Acceptance, AcceptedBreak, Record, WorkedBreak};

/// What a call to [`crate::store::Store::reconciliation`] asks.
#[derive(Debug, Clone)]
pub enum ReconCall {
    /// Match a partner's records (or its file's) for a cycle and store the report.
    Submit(Submission),
    /// The stored reports of a cycle: every partner's, or one's.
    List {
        /// The cycle.
        cycle: String,
        /// One partner, or every one.
        partner: Option<String>,
    },
    /// Marks a break resolved (a resolved break keeps its first resolution).
    Resolve {
        /// The cycle.
        cycle: String,
        /// The partner.
        partner: String,
        /// The break's number.
        id: i64,
        /// Finance's note.
        note: String,
        /// Who (`role/name`).
        by: String,
        /// When.
        at: Micros,
    },
    /// Finalizes a draft settlement unless breaks of its cycle are open; with `accept`, finalizes
    /// anyway and keeps the open breaks and the reason with the settlement.
    Finalize {
        /// The cycle.
        cycle: chrono::NaiveDate,
        /// When.
        now: Micros,
        /// Finance's reason and identity, if it accepts the open breaks.
        accept: Option<(String, String)>,
    },
}

/// A partner's records for a cycle, read and checked.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The cycle.
    pub cycle: String,
    /// The partner.
    pub partner: String,
    /// `partner` (SubmitPartnerRecords) or `file` (finance loaded the partner's CSV).
    pub source: &'static str,
    /// Who (`role/name`).
    pub by: String,
    /// When.
    pub at: Micros,
    /// The records with their line (or position) numbers.
    pub records: Vec<(u64, Record)>,
    /// Lines (or records) that could not be read.
    pub malformed: Vec<reconcile::LineError>,
    /// The configured first cycle (`clearing.first_cycle`): with the cycle of the first accepted
    /// transaction, the first cycle records can be of (as for a clearing run).
    pub first_cycle: Option<chrono::NaiveDate>,
}

/// One partner's stored reconciliation of a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The cycle.
    pub cycle: String,
    /// The partner.
    pub partner: String,
    /// `partner` or `file`.
    pub source: String,
    /// Who submitted.
    pub by: String,
    /// When.
    pub at: Micros,
    /// Records (or lines) the partner sent, malformed ones included.
    pub records: i64,
    /// The ledger's transactions of the partner in the cycle.
    pub ledger_records: i64,
    /// Matched in every field.
    pub matched: i64,
    /// Every break, open or resolved, by number.
    pub breaks: Vec<WorkedBreak>,
}

/// Most breaks one reconciliation stores: a file that differs more is the wrong file or the
/// wrong cycle, and is refused whole.
pub const MAX_BREAKS: usize = 100_000;

/// What a [`ReconCall`] answers.
#[derive(Debug, Clone)]
pub enum ReconReply {
    /// Nothing stored: the submission has this many breaks, more than [`MAX_BREAKS`].
    TooManyBreaks(usize),
    /// Nothing stored: the cycle precedes the coalition's first (given, if known).
    BeforeFirstCycle(Option<chrono::NaiveDate>),
    /// The stored reports.
    Reports(Vec<Report>),
    /// The break as it now stands; `None` if there is no such break.
    Resolved(Option<WorkedBreak>),
    /// The finalization.
    Finalized(Finalized),
}

/// The outcome of a finalization.
#[derive(Debug, Clone)]
pub enum Finalized {
    /// Final now (or already).
    Done(Box<Stored>),
    /// Refused: these breaks are open and finance did not accept them.
    OpenBreaks(Vec<AcceptedBreak>),
    /// The cycle has no settlement.
    NoSettlement,
}

fn micros_text(at: Micros) -> String {
    crate::clock::rfc3339(at)
}

/// A break about to be stored.
struct NewBreak {
    kind: String,
    transaction_id: String,
    fields: String,
    line: Option<u64>,
    detail: String,
}

/// Reconciliation's SQL, once for both backends (`Store::reconciliation` runs it in a write
/// transaction).
pub struct ReconSql<DB>(std::marker::PhantomData<DB>);

impl<DB> ReconSql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Runs `call` on a connection inside the caller's write transaction.
    pub async fn run(conn: &mut DB::Connection, call: ReconCall) -> Result<ReconReply, StoreError> {
        match call {
            ReconCall::Submit(s) => {
                // As a clearing run: a cycle before the coalition's first has no ledger side.
                let first_txn: Option<String> =
                    sqlx::query_scalar("SELECT MIN(cycle) FROM transactions")
                        .fetch_one(&mut *conn)
                        .await?;
                let first_txn =
                    super::model::parse_date("transactions.cycle", first_txn.as_deref())?;
                let first = super::clearing::first_cycle(s.first_cycle, first_txn);
                if first.is_none_or(|f| s.cycle < f.to_string()) {
                    return Ok(ReconReply::BeforeFirstCycle(first));
                }
                if let Err(n) = Self::submit(conn, &s).await? {
                    return Ok(ReconReply::TooManyBreaks(n));
                }
                Ok(ReconReply::Reports(
                    Self::list(conn, &s.cycle, Some(&s.partner)).await?,
                ))
            }
            ReconCall::List { cycle, partner } => Ok(ReconReply::Reports(
                Self::list(conn, &cycle, partner.as_deref()).await?,
            )),
            ReconCall::Resolve {
                cycle,
                partner,
                id,
                note,
                by,
                at,
            } => {
                sqlx::query(
                    "UPDATE reconciliation_breaks SET resolved_by = $4, resolved_at = $5, note = $6 \
                     WHERE cycle = $1 AND partner_id = $2 AND id = $3 AND resolved_at IS NULL",
                )
                .bind(cycle.clone())
                .bind(partner.clone())
                .bind(id)
                .bind(by)
                .bind(at)
                .bind(note)
                .execute(&mut *conn)
                .await?;
                let found = Self::breaks(conn, &cycle, Some(&partner), false)
                    .await?
                    .into_iter()
                    .find(|b| b.id == id);
                Ok(ReconReply::Resolved(found))
            }
            ReconCall::Finalize { cycle, now, accept } => Ok(ReconReply::Finalized(
                Self::finalize(conn, cycle, now, accept).await?,
            )),
        }
    }

    /// The ledger's records of a partner in a cycle.
    async fn ledger_records(
        conn: &mut DB::Connection,
        cycle: &str,
        partner: &str,
    ) -> Result<Vec<Record>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT partner_txn_id, kind, member_id, points, CAST(purchase_amount AS TEXT) \
             FROM transactions WHERE cycle = $1 AND partner_id = $2",
        )
        .bind(cycle.to_string())
        .bind(partner.to_string())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let amount: Option<String> = r.try_get(4)?;
                let purchase_amount = amount
                    .map(|a| {
                        a.parse().map_err(|_| {
                            StoreError::Corrupt(format!("transactions.purchase_amount holds {a:?}"))
                        })
                    })
                    .transpose()?;
                Ok(Record {
                    transaction_id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    member: r.try_get(2)?,
                    points: r.try_get(3)?,
                    purchase_amount,
                })
            })
            .collect()
    }

    async fn submit(
        conn: &mut DB::Connection,
        s: &Submission,
    ) -> Result<Result<(), usize>, StoreError> {
        let ledger = Self::ledger_records(conn, &s.cycle, &s.partner).await?;
        let matched = reconcile::reconcile(&ledger, &s.records);
        let mut new: Vec<NewBreak> = matched
            .breaks
            .iter()
            .map(|b| NewBreak {
                kind: b.kind.as_str().to_string(),
                transaction_id: b.transaction_id.clone(),
                fields: reconcile::fields(b),
                line: b.line,
                detail: reconcile::detail(b),
            })
            .collect();
        new.extend(s.malformed.iter().map(|e| NewBreak {
            kind: "malformed_line".into(),
            transaction_id: String::new(),
            fields: String::new(),
            line: Some(e.line),
            detail: e.message.clone(),
        }));
        if new.len() > MAX_BREAKS {
            return Ok(Err(new.len()));
        }
        // A break found again keeps its resolution: the same kind, id, fields and detail.
        let resolved = Self::resolutions(conn, &s.cycle, &s.partner).await?;
        sqlx::query("DELETE FROM reconciliation_breaks WHERE cycle = $1 AND partner_id = $2")
            .bind(s.cycle.clone())
            .bind(s.partner.clone())
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM reconciliations WHERE cycle = $1 AND partner_id = $2")
            .bind(s.cycle.clone())
            .bind(s.partner.clone())
            .execute(&mut *conn)
            .await?;
        let records = i64::try_from(s.records.len() + s.malformed.len())
            .map_err(|_| StoreError::Corrupt("too many records".into()))?;
        sqlx::query(
            "INSERT INTO reconciliations (cycle, partner_id, source, submitted_by, submitted_at, \
             records, ledger_records, matched) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.cycle.clone())
        .bind(s.partner.clone())
        .bind(s.source.to_string())
        .bind(s.by.clone())
        .bind(s.at)
        .bind(records)
        .bind(ledger.len() as i64)
        .bind(matched.matched as i64)
        .execute(&mut *conn)
        .await?;
        for (i, b) in new.iter().enumerate() {
            let kept = resolved.get(&key(&b.kind, &b.transaction_id, &b.fields, &b.detail));
            sqlx::query(
                "INSERT INTO reconciliation_breaks (cycle, partner_id, id, kind, transaction_id, \
                 fields, line, detail, resolved_by, resolved_at, note) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(s.cycle.clone())
            .bind(s.partner.clone())
            .bind(i as i64 + 1)
            .bind(b.kind.clone())
            .bind(b.transaction_id.clone())
            .bind(b.fields.clone())
            .bind(b.line.map(|l| l as i64))
            .bind(b.detail.clone())
            .bind(kept.map(|k| k.0.clone()))
            .bind(kept.map(|k| k.1))
            .bind(kept.map(|k| k.2.clone()))
            .execute(&mut *conn)
            .await?;
        }
        Ok(Ok(()))
    }

    /// A partner's resolved breaks of a cycle (who, when, note), by the key `submit` matches them with.
    async fn resolutions(
        conn: &mut DB::Connection,
        cycle: &str,
        partner: &str,
    ) -> Result<std::collections::HashMap<String, (String, Micros, String)>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT kind, transaction_id, fields, detail, resolved_by, resolved_at, note \
             FROM reconciliation_breaks WHERE cycle = $1 AND partner_id = $2 AND resolved_at IS NOT NULL",
        )
        .bind(cycle.to_string())
        .bind(partner.to_string())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let k = key(
                    &r.try_get::<String, _>(0)?,
                    &r.try_get::<String, _>(1)?,
                    &r.try_get::<String, _>(2)?,
                    &r.try_get::<String, _>(3)?,
                );
                let by: Option<String> = r.try_get(4)?;
                let at: Option<i64> = r.try_get(5)?;
                let note: Option<String> = r.try_get(6)?;
                Ok((
                    k,
                    (
                        by.unwrap_or_default(),
                        at.unwrap_or_default(),
                        note.unwrap_or_default(),
                    ),
                ))
            })
            .collect()
    }

    /// Breaks of a cycle (one partner's, or all), by partner and number; only open ones if asked.
    async fn breaks(
        conn: &mut DB::Connection,
        cycle: &str,
        partner: Option<&str>,
        only_open: bool,
    ) -> Result<Vec<WorkedBreak>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(&format!(
            "SELECT partner_id, id, kind, transaction_id, fields, line, detail, resolved_by, \
             resolved_at, note FROM reconciliation_breaks WHERE cycle = $1 AND ($2 = '' OR partner_id = $2) \
             {} ORDER BY partner_id, id",
            if only_open {
                "AND resolved_at IS NULL"
            } else {
                ""
            }
        ))
        .bind(cycle.to_string())
        .bind(partner.unwrap_or("").to_string())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkedBreak {
                    partner: r.try_get(0)?,
                    id: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    transaction_id: r.try_get(3)?,
                    fields: r.try_get(4)?,
                    line: r.try_get::<Option<i64>, _>(5)?.map(|l| l.max(0) as u64),
                    detail: r.try_get(6)?,
                    resolved_by: r.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
                    resolved_at: r
                        .try_get::<Option<i64>, _>(8)?
                        .map(micros_text)
                        .unwrap_or_default(),
                    note: r.try_get::<Option<String>, _>(9)?.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn list(
        conn: &mut DB::Connection,
        cycle: &str,
        partner: Option<&str>,
    ) -> Result<Vec<Report>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT partner_id, source, submitted_by, submitted_at, records, ledger_records, matched \
             FROM reconciliations WHERE cycle = $1 AND ($2 = '' OR partner_id = $2) ORDER BY partner_id",
        )
        .bind(cycle.to_string())
        .bind(partner.unwrap_or("").to_string())
        .fetch_all(&mut *conn)
        .await?;
        let mut all = Self::breaks(conn, cycle, partner, false).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let partner: String = r.try_get(0)?;
            let (mine, rest): (Vec<_>, Vec<_>) =
                all.into_iter().partition(|b| b.partner == partner);
            all = rest;
            out.push(Report {
                cycle: cycle.to_string(),
                partner,
                source: r.try_get(1)?,
                by: r.try_get(2)?,
                at: r.try_get(3)?,
                records: r.try_get(4)?,
                ledger_records: r.try_get(5)?,
                matched: r.try_get(6)?,
                breaks: mine,
            });
        }
        Ok(out)
    }

    async fn finalize(
        conn: &mut DB::Connection,
        cycle: chrono::NaiveDate,
        now: Micros,
        accept: Option<(String, String)>,
    ) -> Result<Finalized, StoreError> {
        type Sql<DB> = super::clearing::SharedSql<DB>;
        let Some(s) = Sql::<DB>::settlement(conn, cycle).await? else {
            return Ok(Finalized::NoSettlement);
        };
        if s.status == super::clearing::Status::Final {
            return Ok(Finalized::Done(Box::new(s)));
        }
        let open: Vec<AcceptedBreak> = Self::breaks(conn, &cycle.to_string(), None, true)
            .await?
            .into_iter()
            .map(|b| AcceptedBreak {
                partner: b.partner,
                id: b.id,
                kind: b.kind,
                transaction_id: b.transaction_id,
                detail: b.detail,
            })
            .collect();
        let acceptance = match (open.is_empty(), accept) {
            (true, _) => None,
            (false, None) => return Ok(Finalized::OpenBreaks(open)),
            (false, Some((reason, by))) => Some(Acceptance {
                reason,
                by,
                at: micros_text(now),
                breaks: open,
            }),
        };
        let text = acceptance
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("acceptance does not serialise: {e}")))?;
        sqlx::query(
            "UPDATE settlements SET status = 'final', finalized_at = $2, accepted_breaks = $3 \
             WHERE cycle = $1 AND status = 'draft'",
        )
        .bind(cycle.to_string())
        .bind(now)
        .bind(text)
        .execute(&mut *conn)
        .await?;
        match Sql::<DB>::settlement(conn, cycle).await? {
            Some(s) => Ok(Finalized::Done(Box::new(s))),
            None => Ok(Finalized::NoSettlement),
        }
    }
}

fn key(kind: &str, id: &str, fields: &str, detail: &str) -> String {
    format!("{kind}\u{1f}{id}\u{1f}{fields}\u{1f}{detail}")
}
