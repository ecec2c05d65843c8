//! PostgreSQL: for production and for several daemons sharing one database. Each daemon has its own
//! writer (group commit, as on SQLite); between daemons, a batch locks the members it touches
//! (sorted, so batches never deadlock each other) and reads their lots only after the lock.
//! Serialization failures, deadlocks and unique-key races (two daemons taking the same new member or
//! the same retried transaction id) roll the batch back and run it again, inside the daemon.

use super::batch::LedgerTx;
use super::error::StoreError;
use super::model::{Rejection, Request, TxnRecord, Writes};
use super::seam::{BatchBackend, Store};
use super::{audit, batch, clearing};
use crate::ledger::{Allocation, Lot, MemberLedger, Micros, Receipt, Reversible};
use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use std::str::FromStr;
use std::time::Duration;

/// How often a batch that lost a race is run again before its callers get `UNAVAILABLE`.
const MAX_ATTEMPTS: u32 = 10;

/// Reads and audits on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// One daemon's writer on PostgreSQL.
pub struct PgBackend {
    pool: PgPool,
}

fn options(url: &str, application: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?.application_name(application))
}

/// Connects, migrates, and returns the reader and the future that opens the writer.
pub async fn open(
    url: &str,
) -> Result<
    (
        PgStore,
        impl std::future::Future<Output = Result<PgBackend, StoreError>> + Send + 'static,
    ),
    StoreError,
> {
    let read = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(url, "coalitiond-reader")?)
        .await?;
    // Several daemons may start at once: the migrator takes an advisory lock of its own.
    sqlx::migrate!("./migrations/postgres").run(&read).await?;
    let write_options = options(url, "coalitiond-writer")?;
    let writer = async move {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(true)
            .connect_with(write_options)
            .await?;
        Ok(PgBackend { pool })
    };
    Ok((PgStore { pool: read }, writer))
}

/// Whether a failed batch lost a race that running it again resolves.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("40001" | "40P01" | "23505"))
        }
        _ => false,
    }
}

/// Why one attempt at a batch failed: a database error (whose SQLSTATE decides a retry), or a
/// failure of the shared logic itself (a row that does not decode, say).
enum AttemptError {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for AttemptError {
    fn from(e: sqlx::Error) -> Self {
        AttemptError::Sql(e)
    }
}

impl PgBackend {
    async fn attempt(
        &self,
        requests: &[Request],
        ctx: &batch::Context,
    ) -> Result<Vec<Result<Receipt, Rejection>>, AttemptError> {
        let mut conn = self.pool.acquire().await?;
        // The guard rolls back when dropped (an error, a panic): nothing half-done is committed.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let out = {
            let mut ledger_tx = PgTx {
                conn: &mut tx,
                error: None,
            };
            match batch::apply(&mut ledger_tx, requests, ctx).await {
                Ok(out) => out,
                Err(e) => {
                    return Err(match ledger_tx.error.take() {
                        Some(sql) => AttemptError::Sql(sql),
                        None => AttemptError::Store(e),
                    });
                }
            }
        };
        if let Some(pause) = ctx.pause_before_commit {
            tokio::time::sleep(pause).await;
        }
        tx.commit().await?;
        Ok(out)
    }
}

#[async_trait]
impl BatchBackend for PgBackend {
    async fn apply_batch(
        &mut self,
        requests: &[Request],
        ctx: &batch::Context,
    ) -> Result<Vec<Result<Receipt, Rejection>>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(requests, ctx).await {
                Ok(out) => return Ok(out),
                Err(AttemptError::Sql(e)) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "batch lost a race, running it again");
                    tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                }
                Err(AttemptError::Sql(e)) => return Err(e.into()),
                Err(AttemptError::Store(e)) => return Err(e),
            }
        }
    }
}

/// The batch's transaction. The shared logic sees `StoreError`; the original sqlx error is kept
/// so that the retry decision can read its SQLSTATE.
struct PgTx<'c> {
    conn: &'c mut PgConnection,
    error: Option<sqlx::Error>,
}

impl PgTx<'_> {
    fn fail(&mut self, e: sqlx::Error) -> StoreError {
        let s = StoreError::from(&e);
        self.error = Some(e);
        s
    }
}

fn lot_from(row: &PgRow) -> Result<Lot, sqlx::Error> {
    super::rows::Rows::<sqlx::Postgres>::lot(row)
}

fn allocation_from(row: &PgRow) -> Result<Allocation, sqlx::Error> {
    super::rows::Rows::<sqlx::Postgres>::allocation(row)
}

fn txn_from(row: &PgRow) -> Result<TxnRecord, StoreError> {
    super::rows::Rows::<sqlx::Postgres>::txn(row)
}

#[async_trait]
impl LedgerTx for PgTx<'_> {
    async fn open_cycle(
        &mut self,
        now_cycle: chrono::NaiveDate,
    ) -> Result<chrono::NaiveDate, StoreError> {
        // Shared: batches do not wait for each other, a clearing run (exclusive) waits for them.
        let r = sqlx::query_scalar::<_, Option<String>>(
            "SELECT sealed_through FROM clearing_state WHERE id = 1 FOR SHARE",
        )
        .fetch_one(&mut *self.conn)
        .await;
        let sealed = r.map_err(|e| self.fail(e))?;
        super::model::first_open_cycle(now_cycle, sealed.as_deref())
    }

    async fn lock_members(&mut self, members: &[String]) -> Result<(), StoreError> {
        let r = lock_members(&mut *self.conn, members).await;
        r.map_err(|e| self.fail(e))
    }

    async fn find_transactions(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<TxnRecord>, StoreError> {
        let (partners, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
        let r = sqlx::query(
            "SELECT t.* FROM UNNEST($1::text[], $2::text[]) AS k(partner_id, partner_txn_id) \
             JOIN transactions t ON t.partner_id = k.partner_id AND t.partner_txn_id = k.partner_txn_id",
        )
        .bind(partners)
        .bind(ids)
        .fetch_all(&mut *self.conn)
        .await;
        r.map_err(|e| self.fail(e))?.iter().map(txn_from).collect()
    }

    async fn load_members(
        &mut self,
        members: &[(String, i64)],
        now: Micros,
    ) -> Result<Vec<MemberLedger>, StoreError> {
        let r = super::lots::LotsSql::<sqlx::Postgres>::load_members(&mut *self.conn, members, now)
            .await;
        r.map_err(|e| self.fail(e))
    }

    async fn load_lots(&mut self, ids: &[i64]) -> Result<Vec<Lot>, StoreError> {
        let r = sqlx::query("SELECT * FROM lots WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *self.conn)
            .await;
        let rows = r.map_err(|e| self.fail(e))?;
        Ok(rows.iter().map(lot_from).collect::<Result<_, _>>()?)
    }

    async fn load_burn_slices(&mut self, burn_txns: &[i64]) -> Result<Vec<Reversible>, StoreError> {
        let r = sqlx::query(
            "SELECT a.*, a.points + COALESCE((SELECT SUM(r.points) FROM allocations r \
             WHERE r.reverses_txn = a.txn_id AND r.reverses_seq = a.seq), 0)::BIGINT AS remaining \
             FROM allocations a WHERE a.reverses_txn IS NULL AND a.txn_id = ANY($1) ORDER BY a.txn_id, a.seq",
        )
        .bind(burn_txns)
        .fetch_all(&mut *self.conn)
        .await;
        let rows = r.map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| {
                Ok(Reversible {
                    allocation: allocation_from(row)?,
                    remaining: row.try_get("remaining")?,
                })
            })
            .collect()
    }

    async fn live_campaigns(
        &mut self,
        now: Micros,
    ) -> Result<Vec<crate::programme::Campaign>, StoreError> {
        super::programme::ProgrammeSql::<sqlx::Postgres>::live_campaigns(&mut *self.conn, now).await
    }

    async fn load_programme(
        &mut self,
        members: &[String],
    ) -> Result<std::collections::HashMap<String, Option<String>>, StoreError> {
        super::programme::ProgrammeSql::<sqlx::Postgres>::load(&mut *self.conn, members).await
    }

    async fn find_holds(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<super::holds::HoldRecord>, StoreError> {
        super::holds::HoldsSql::<sqlx::Postgres>::find(&mut *self.conn, keys).await
    }

    async fn holds_of(
        &mut self,
        keys: &[(String, String)],
        members: &[String],
    ) -> Result<Vec<super::holds::HoldRecord>, StoreError> {
        super::holds::HoldsSql::<sqlx::Postgres>::named_or_open(&mut *self.conn, keys, members)
            .await
    }

    async fn earned_before(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        super::programme::ProgrammeSql::<sqlx::Postgres>::earned_before(&mut *self.conn, pairs)
            .await
    }

    async fn forgotten(
        &mut self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        super::retention::forgotten::<sqlx::Postgres>(&mut *self.conn, pseudonyms).await
    }

    async fn reserve_txn_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        let r = sqlx::query_scalar("SELECT nextval('transaction_ids') FROM generate_series(1, $1)")
            .bind(n as i64)
            .fetch_all(&mut *self.conn)
            .await;
        r.map_err(|e| self.fail(e))
    }

    async fn write(&mut self, w: &Writes) -> Result<(), StoreError> {
        let r = write(self.conn, w).await;
        r.map_err(|e| self.fail(e))?;
        if !w.programme.is_empty() {
            let r =
                super::programme::ProgrammeSql::<sqlx::Postgres>::write(self.conn, &w.programme)
                    .await;
            r.map_err(|e| self.fail(e))?;
        }
        let r = super::holds::HoldsSql::<sqlx::Postgres>::write(self.conn, &w.holds).await;
        r.map_err(|e| self.fail(e))?;
        let r =
            super::matrix::MatrixSql::<sqlx::Postgres>::add(self.conn, w.cycle, &w.matrix).await;
        r.map_err(|e| self.fail(e))?;
        // Last, so that the head is held only until the commit: the daemons' batches append
        // one chain in commit order.
        let r = super::chain::append::<sqlx::Postgres>(
            self.conn,
            w,
            "SELECT seq, hash FROM ledger_chain_head WHERE id = 1 FOR UPDATE",
        )
        .await;
        r.map_err(|e| self.fail(e))?;
        Ok(())
    }
}

/// Writes a batch with one statement per table: arrays bound once, unnested by the server.
async fn write(conn: &mut PgConnection, w: &Writes) -> Result<(), sqlx::Error> {
    super::lots::LotsSql::<sqlx::Postgres>::write_members(&mut *conn, &w.members).await?;
    if !w.cycle_totals.is_empty() {
        let c = &w.cycle_totals;
        sqlx::query(
            "INSERT INTO cycle_totals (cycle, partner_id, kind, transactions, points) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
             ON CONFLICT (cycle, partner_id, kind) DO UPDATE SET transactions = cycle_totals.transactions + \
             excluded.transactions, points = cycle_totals.points + excluded.points",
        )
        .bind(w.cycle.to_string())
        .bind(c.iter().map(|x| x.0.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.1.to_string()).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.2).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.3).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !w.new_txns.is_empty() {
        let t = &w.new_txns;
        let amount: Vec<Option<Decimal>> = t
            .iter()
            .map(|t| {
                t.purchase
                    .as_ref()
                    .map(|(a, _)| Decimal::from_str(a))
                    .transpose()
                    .map_err(|e| sqlx::Error::Encode(Box::new(e)))
            })
            .collect::<Result<_, _>>()?;
        sqlx::query(
            "INSERT INTO transactions (id, partner_id, partner_txn_id, kind, member_id, points, reversed_points, \
             original_id, original_txn_id, purchase_amount, purchase_currency, request_hash, balance_after, slices, \
             debt_created, debt_repaid, accepted_at, parts, parts_reversed, tier, cycle, batch_id) \
             SELECT *, $21, $22 FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
             $7::bigint[], $8::bigint[], $9::text[], $10::numeric[], $11::text[], $12::bytea[], $13::bigint[], \
             $14::text[], $15::bigint[], $16::bigint[], $17::bigint[], $18::text[], $19::text[], $20::text[])",
        )
        .bind(t.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.partner.clone()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.partner_txn_id.clone()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.kind.as_str().to_string()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.member.clone()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.points).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.reversed_points).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.original_id).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.receipt.original_transaction_id.clone()).collect::<Vec<_>>())
        .bind(amount)
        .bind(t.iter().map(|t| t.purchase.as_ref().map(|(_, c)| c.clone())).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.request_hash.clone()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.receipt.balance_after).collect::<Vec<_>>())
        .bind(t.iter().map(|t| super::model::encode_slices(&t.receipt.slices)).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.receipt.debt_created).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.receipt.debt_repaid).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.accepted_at).collect::<Vec<_>>())
        .bind(t.iter().map(|t| crate::ledger::parts::encode(&t.receipt.parts)).collect::<Vec<_>>())
        .bind(t.iter().map(super::model::encode_parts_reversed).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.receipt.tier.clone()).collect::<Vec<_>>())
        .bind(w.cycle.to_string())
        .bind(super::chain::batch_id(w))
        .execute(&mut *conn)
        .await?;
    }
    if !w.reversed.is_empty() {
        sqlx::query(
            "UPDATE transactions t SET reversed_points = v.reversed, parts_reversed = v.parts \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[]) AS v(id, reversed, parts) WHERE t.id = v.id",
        )
        .bind(w.reversed.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(w.reversed.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(w.reversed.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !w.lots.is_empty() {
        let l = &w.lots;
        sqlx::query(
            "INSERT INTO lots (id, member_id, issuer, points, points_left, reversed, expired, earned_at, expires_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], \
             $7::bigint[], $8::bigint[], $9::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET points_left = excluded.points_left, reversed = excluded.reversed, \
             expired = excluded.expired",
        )
        .bind(l.iter().map(|l| l.id).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.member.clone()).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.issuer.clone()).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.points).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.points_left).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.reversed).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.expired).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.earned_at).collect::<Vec<_>>())
        .bind(l.iter().map(|l| l.expires_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !w.issuance.is_empty() {
        let i = &w.issuance;
        sqlx::query(
            "INSERT INTO issuance (txn_id, cycle, issuer, fee_rate, points) \
             SELECT t, $2, s, f, p FROM UNNEST($1::bigint[], $3::text[], $4::text[], $5::bigint[]) AS x(t, s, f, p)",
        )
        .bind(i.iter().map(|i| i.txn).collect::<Vec<_>>())
        .bind(w.cycle.to_string())
        .bind(i.iter().map(|i| i.issuer.clone()).collect::<Vec<_>>())
        .bind(i.iter().map(|i| i.fee_rate.normalize().to_string()).collect::<Vec<_>>())
        .bind(i.iter().map(|i| i.points).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !w.breakage.is_empty() {
        let b = &w.breakage;
        sqlx::query(
            "INSERT INTO breakage (lot_id, member_id, issuer, cycle, points, txn_id) \
             SELECT l, m, i, $4, p, t FROM UNNEST($1::bigint[], $2::text[], $3::text[], $5::bigint[], $6::bigint[]) \
             AS f(l, m, i, p, t)",
        )
        .bind(b.iter().map(|f| f.lot).collect::<Vec<_>>())
        .bind(b.iter().map(|f| f.member.clone()).collect::<Vec<_>>())
        .bind(b.iter().map(|f| f.issuer.clone()).collect::<Vec<_>>())
        .bind(w.cycle.to_string())
        .bind(b.iter().map(|f| f.points).collect::<Vec<_>>())
        .bind(b.iter().map(|f| f.txn).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !w.allocations.is_empty() {
        let a = &w.allocations;
        sqlx::query(
            "INSERT INTO allocations (txn_id, seq, lot_id, member_id, issuer, redeemer, points, rate, reverses_txn, \
             reverses_seq, accepted_at, cycle) \
             SELECT *, $12 FROM UNNEST($1::bigint[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
             $7::bigint[], $8::numeric[], $9::bigint[], $10::int[], $11::bigint[])",
        )
        .bind(a.iter().map(|a| a.txn).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.seq).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.lot).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.member.clone()).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.issuer.clone()).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.redeemer.clone()).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.points).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.rate).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.reverses.map(|r| r.0)).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.reverses.map(|r| r.1)).collect::<Vec<_>>())
        .bind(a.iter().map(|a| a.accepted_at).collect::<Vec<_>>())
        .bind(w.cycle.to_string())
        .execute(&mut *conn)
        .await?;
    }
    if !w.debts.is_empty() {
        let d = &w.debts;
        sqlx::query(
            "INSERT INTO debts (txn_id, member_id, owed_to, points, points_left, rate, created_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::numeric[], \
             $7::bigint[]) ON CONFLICT (txn_id) DO UPDATE SET points_left = excluded.points_left",
        )
        .bind(d.iter().map(|d| d.txn).collect::<Vec<_>>())
        .bind(d.iter().map(|d| d.member.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|d| d.owed_to.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|d| d.points).collect::<Vec<_>>())
        .bind(d.iter().map(|d| d.points_left).collect::<Vec<_>>())
        .bind(d.iter().map(|d| d.rate).collect::<Vec<_>>())
        .bind(d.iter().map(|d| d.created_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn member(&self, member: &str) -> Result<Option<MemberLedger>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(super::lots::LotsSql::<sqlx::Postgres>::member_whole(&mut conn, member).await?)
    }

    async fn member_at(
        &self,
        member: &str,
        now: Micros,
    ) -> Result<Option<MemberLedger>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(super::lots::LotsSql::<sqlx::Postgres>::member_at(&mut conn, member, now).await?)
    }

    async fn transaction(
        &self,
        partner: &str,
        partner_txn_id: &str,
    ) -> Result<Option<TxnRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::rows::TxnReads::<sqlx::Postgres>::transaction(&mut c, partner, partner_txn_id).await
    }

    async fn activity(
        &self,
        partner: &str,
        member: &str,
        before: Option<(Micros, i64)>,
        limit: i64,
    ) -> Result<Vec<TxnRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::rows::TxnReads::<sqlx::Postgres>::activity(&mut c, partner, member, before, limit)
            .await
    }

    async fn heartbeat(
        &self,
        id: &str,
        now: Micros,
        traffic: &str,
        live_after: Micros,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::instances::heartbeat::<sqlx::Postgres>(&mut c, id, now, traffic, live_after).await
    }

    async fn leave(&self, id: &str) -> Result<(), StoreError> {
        let mut c = self.pool.acquire().await?;
        super::instances::leave::<sqlx::Postgres>(&mut c, id).await
    }

    fn pool_connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn verify_chain(&self) -> Result<super::chain::ChainReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let report = super::chain::verify::<sqlx::Postgres>(&mut tx).await?;
        tx.rollback().await?;
        Ok(report)
    }

    async fn audit(
        &self,
        now: Micros,
        rules: &clearing::Rules,
    ) -> Result<audit::Report, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One snapshot for every figure.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut report = audit::run::<sqlx::Postgres>(&mut tx, now).await?;
        let mut all =
            clearing::SharedSql::<sqlx::Postgres>::settlements(&mut tx, None, i64::MAX).await?;
        all.reverse();
        report
            .violations
            .extend(clearing::verify(&mut PgClearing { conn: &mut tx }, rules, &all).await?);
        report.settlements = all.len() as i64;
        let chain = super::chain::verify::<sqlx::Postgres>(&mut tx).await?;
        report.chain_links = chain.links;
        report.before_chain = chain.before_chain;
        report.violations.extend(chain.violations);
        report
            .violations
            .extend(super::access::verify::<sqlx::Postgres>(&mut tx).await?);
        report
            .violations
            .extend(super::registry::RegistrySql::<sqlx::Postgres>::verify_prices(&mut tx).await?);
        tx.rollback().await?;
        Ok(report)
    }

    async fn transaction_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM transactions")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn run_clearing(
        &self,
        plan: &clearing::Plan,
    ) -> Result<Option<clearing::Stored>, clearing::ClearingError> {
        self.clearing_run(plan).await
    }

    async fn settlement(
        &self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::settlement(&mut c, cycle).await
    }

    async fn settlements(
        &self,
        before: Option<chrono::NaiveDate>,
        limit: i64,
    ) -> Result<Vec<clearing::Stored>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::settlements(&mut c, before, limit).await
    }

    async fn reconciliation(
        &self,
        call: super::reconciliation::ReconCall,
    ) -> Result<super::reconciliation::ReconReply, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Submissions, resolutions and finalizations of every daemon are serialised (rare
        // writes; reads of the ledger are not blocked), so a finalization sees every break.
        sqlx::query("LOCK TABLE reconciliation_breaks IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let out = super::reconciliation::ReconSql::<sqlx::Postgres>::run(&mut tx, call).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn statement_lines(
        &self,
        cycle: chrono::NaiveDate,
        partner: &str,
    ) -> Result<Vec<coalition_clearing::export::StatementLine>, StoreError> {
        let rows = sqlx::query(clearing::sql::STATEMENT)
            .bind(cycle.to_string())
            .bind(partner)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(super::rows::Rows::<sqlx::Postgres>::statement_line)
            .collect::<Result<_, _>>()?)
    }

    async fn lot_fates(&self, as_of: Micros) -> Result<Vec<clearing::LotFate>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::lot_fates(&mut c, as_of).await
    }

    async fn forgotten(
        &self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::retention::forgotten::<sqlx::Postgres>(&mut c, pseudonyms).await
    }

    async fn forget_member(
        &self,
        f: &super::retention::Forget,
    ) -> Result<super::retention::Forgotten, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Hold out every batch (they lock member rows: ROW SHARE) and every access-log append
        // until the member is gone: none can write the old id after this commits.
        sqlx::query("LOCK TABLE members IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        sqlx::query("LOCK TABLE access_log IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let out = super::retention::forget::<sqlx::Postgres>(&mut tx, f).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn answer_settlement(
        &self,
        a: &super::responses::Answer,
    ) -> Result<super::responses::Answer, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Answers of every daemon are serialised (rare writes; reads are not blocked).
        sqlx::query("LOCK TABLE settlement_responses IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let out = super::responses::answer::<sqlx::Postgres>(&mut tx, a).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn settlement_answers(
        &self,
        cycle: &str,
    ) -> Result<Vec<super::responses::Answer>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::responses::states::<sqlx::Postgres>(&mut c, cycle).await
    }

    async fn kpi_facts(
        &self,
        q: &super::report::KpiQuery,
    ) -> Result<crate::report::KpiFacts, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::report::ReportSql::<sqlx::Postgres>::kpi_facts(
            &mut c,
            q,
            super::report::POSTGRES_TIER,
        )
        .await
    }

    async fn cohort_cells(
        &self,
        q: &super::report::KpiQuery,
    ) -> Result<Vec<(crate::report::Month, i64, i64)>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::report::ReportSql::<sqlx::Postgres>::cohort_cells(&mut c, q).await
    }

    async fn log_access(&self, entry: &super::access::AccessEntry) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Appends from every daemon are serialised; readers are not blocked.
        sqlx::query("LOCK TABLE access_log IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        super::access::append::<sqlx::Postgres>(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_consent(
        &self,
        change: &super::consent::ConsentChange,
    ) -> Result<super::consent::ConsentOutcome, StoreError> {
        // Two daemons racing on one request id: the loser's insert fails on the key; running it
        // again finds the winner's event and answers as a retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await?;
            match super::consent::record::<sqlx::Postgres>(&mut tx, change).await {
                Ok(out) => {
                    tx.commit().await?;
                    return Ok(out);
                }
                Err(StoreError::Refused(_)) if attempt < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn consents(
        &self,
        member: &str,
    ) -> Result<Vec<super::consent::ConsentRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::consent::list::<sqlx::Postgres>(&mut c, member).await
    }

    async fn pseudonymize_inactive(
        &self,
        cutoff: Micros,
        now: Micros,
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let due = super::retention::inactive::<sqlx::Postgres>(&mut tx, cutoff).await?;
        // Lock them as batches do (sorted), then check again: one may have come back meanwhile.
        lock_members(&mut tx, &due).await?;
        let still: Vec<String> = super::retention::inactive::<sqlx::Postgres>(&mut tx, cutoff)
            .await?
            .into_iter()
            .filter(|m| due.contains(m))
            .collect();
        for m in &still {
            super::retention::pseudonymize::<sqlx::Postgres>(&mut tx, m, now).await?;
        }
        tx.commit().await?;
        Ok(still.len())
    }

    async fn prune_access_log(&self, cutoff: Micros) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE access_log IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let n = super::access::prune::<sqlx::Postgres>(&mut tx, cutoff).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn partner_overrides(&self) -> Result<Vec<super::model::PartnerOverride>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::overrides(&mut c).await
    }

    async fn save_partner_override(
        &self,
        o: &super::model::PartnerOverride,
    ) -> Result<(), StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::save_override(&mut c, o).await
    }

    async fn clearing_frontier(&self) -> Result<clearing::Frontier, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::frontier(&mut c).await
    }

    async fn confirm_catch_up(&self, through: chrono::NaiveDate) -> Result<(), StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Postgres>::confirm_catch_up(&mut c, through).await
    }

    async fn sync_registry(
        &self,
        sync: &crate::prices::Sync,
    ) -> Result<crate::prices::Synced, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = super::registry::RegistrySql::<sqlx::Postgres>::sync(&mut tx, sync).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn partners(&self) -> Result<Vec<crate::prices::PartnerRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::registry::RegistrySql::<sqlx::Postgres>::partners(&mut c).await
    }

    async fn programme(
        &self,
        call: super::programme::ProgrammeCall,
    ) -> Result<super::programme::ProgrammeReply, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::programme::ProgrammeSql::<sqlx::Postgres>::call(&mut c, call).await
    }

    async fn holds(
        &self,
        call: super::holds::HoldsCall,
    ) -> Result<super::holds::HoldsReply, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::holds::HoldsSql::<sqlx::Postgres>::call(&mut c, call).await
    }

    async fn price_versions(&self) -> Result<Vec<crate::prices::PriceVersion>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::registry::RegistrySql::<sqlx::Postgres>::price_versions(&mut c).await
    }

    async fn add_price(
        &self,
        v: &crate::prices::PriceVersion,
    ) -> Result<crate::prices::PriceVersion, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stored = super::registry::RegistrySql::<sqlx::Postgres>::add_price(&mut tx, v).await?;
        tx.commit().await?;
        Ok(stored)
    }
}

/// A clearing run's transaction on PostgreSQL.
struct PgClearing<'c> {
    conn: &'c mut PgConnection,
}

/// The class of the advisory locks that serialise a member's state across daemons ("MEMB").
const MEMBER_LOCK_CLASS: i32 = 0x4d45_4d42;

/// Locks `members` for the rest of the transaction, as every writer of a member's state does
/// (batches, the clearing sweep, retention). A row lock alone would miss a member who has no row
/// yet: two daemons would both decide its first earns and the last to commit would overwrite the
/// other's programme state and kept values. So each member is first locked by an advisory
/// transaction lock on a hash of its id (in key order: batches never wait on each other in a
/// circle, and a collision only serialises two members more than needed), then its row, if any,
/// `FOR UPDATE` — which also takes the table's ROW SHARE lock a forget waits on.
async fn lock_members(conn: &mut PgConnection, members: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock($2, k) FROM \
         (SELECT DISTINCT hashtext(m) AS k FROM UNNEST($1::text[]) AS m ORDER BY k) s",
    )
    .bind(members)
    .bind(MEMBER_LOCK_CLASS)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "SELECT member_id FROM members WHERE member_id = ANY($1) ORDER BY member_id FOR UPDATE",
    )
    .bind(members)
    .fetch_all(&mut *conn)
    .await?;
    Ok(())
}

/// The advisory lock key of clearing runs ("CLR" + 1).
const CLEARING_LOCK: i64 = 0x434c_5201;

#[async_trait]
impl clearing::ClearingTx for PgClearing<'_> {
    async fn lock_state(&mut self) -> Result<Option<chrono::NaiveDate>, StoreError> {
        // Exclusive: waits for batches in flight (they hold it shared), holds off new ones.
        let s: Option<String> =
            sqlx::query_scalar("SELECT sealed_through FROM clearing_state WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *self.conn)
                .await?;
        super::model::parse_date("clearing_state.sealed_through", s.as_deref())
    }

    async fn try_exclusive(&mut self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CLEARING_LOCK)
            .fetch_one(&mut *self.conn)
            .await?)
    }

    async fn settlement(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::settlement(self.conn, cycle).await
    }

    async fn latest_before(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::latest_before(self.conn, cycle).await
    }

    async fn first_activity(
        &mut self,
        after: Option<chrono::NaiveDate>,
        before: chrono::NaiveDate,
    ) -> Result<Option<chrono::NaiveDate>, StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::first_activity(self.conn, after, before).await
    }

    async fn sweep(&mut self, before: Micros, cycle: chrono::NaiveDate) -> Result<i64, StoreError> {
        // Lock the members concerned, in order, as batches do: no batch holds one of their lots
        // half-way through a decision while the sweep empties it.
        let members: Vec<String> = sqlx::query_scalar(clearing::sql::EXPIRING_MEMBERS)
            .bind(before)
            .fetch_all(&mut *self.conn)
            .await?;
        if members.is_empty() {
            return Ok(0);
        }
        lock_members(&mut *self.conn, &members).await?;
        clearing::SharedSql::<sqlx::Postgres>::sweep(self.conn, before, cycle).await
    }

    async fn chain_head(&mut self) -> Result<String, StoreError> {
        super::chain::head::<sqlx::Postgres>(&mut *self.conn).await
    }

    async fn first_after(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<chrono::NaiveDate>, StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::first_after(self.conn, cycle).await
    }

    async fn first_transaction_cycle(&mut self) -> Result<Option<chrono::NaiveDate>, StoreError> {
        Ok(clearing::SharedSql::<sqlx::Postgres>::frontier(self.conn)
            .await?
            .first_transaction)
    }

    async fn slices(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Vec<coalition_clearing::Slice>, StoreError> {
        super::matrix::MatrixSql::<sqlx::Postgres>::slices(&mut *self.conn, cycle).await
    }

    async fn issuance(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Vec<coalition_clearing::Issuance>, StoreError> {
        super::registry::RegistrySql::<sqlx::Postgres>::cycle_issuance(self.conn, cycle).await
    }

    async fn counts(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<coalition_clearing::Counts, StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::counts(self.conn, cycle).await
    }

    async fn save(&mut self, s: &clearing::Stored) -> Result<(), StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::save(self.conn, s).await
    }

    async fn seal(&mut self, cycle: chrono::NaiveDate) -> Result<(), StoreError> {
        clearing::SharedSql::<sqlx::Postgres>::seal(self.conn, cycle).await
    }
}

impl PgStore {
    /// Clearing runs, finalizations and the rest, on the reader pool (these are rare writes).
    async fn clearing_run(
        &self,
        plan: &clearing::Plan,
    ) -> Result<Option<clearing::Stored>, clearing::ClearingError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let result = clearing::run(&mut PgClearing { conn: &mut tx }, plan).await;
        match result {
            Ok(out) => {
                tx.commit().await.map_err(StoreError::from)?;
                Ok(out)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}
