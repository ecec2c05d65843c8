//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk before any caller of its batch is answered. One connection writes (owned by the writer
//! task, so there is never a second writer to wait for); a small pool reads.

use super::batch::LedgerTx;
use super::error::StoreError;
use super::model::{Rejection, Request, TxnRecord, Writes};
use super::seam::{BatchBackend, Store};
use super::{audit, batch, clearing};
use crate::ledger::{Allocation, Lot, MemberLedger, Micros, Receipt, Reversible};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// SQLite allows 32,766 bound parameters per statement; stay under it.
const MAX_BINDS: usize = 30_000;

/// Reads and audits on a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The connection clearing runs and finalizations write through.
    clearing: std::sync::Arc<tokio::sync::Mutex<SqliteConnection>>,
}

/// The single writer of a SQLite file.
pub struct SqliteBackend {
    conn: SqliteConnection,
    ids: Counters,
}

/// The next transaction id, owned by the one writer.
#[derive(Debug, Default)]
struct Counters {
    txn: i64,
}

/// The page size of a new ledger file. A call dirties a handful of random B-tree leaves (its
/// member, its lots, its idempotency key, its activity entry), each written to the WAL and again
/// by the checkpoint: on a ledger of years the bytes written follow the page size, not the rows.
/// 1 KiB pages wrote 2.5× fewer bytes per call and gave 15 % more calls per second than 4 KiB on
/// the preloaded bench (BENCHMARKS.md). A file keeps the page size it was created with.
pub const PAGE_SIZE: u32 = 1024;

/// The WAL's size at which the writer finishes a checkpoint itself, so that its next
/// transaction starts the WAL over (see [`checkpoint_loop`]). Below `WAL_SIZE_LIMIT`, so the
/// file is reused in place, never cut and grown again.
const WAL_RESTART_BYTES: u64 = 32 << 20;

/// What the WAL file is cut back to when it has grown past it (`journal_size_limit`).
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// How often the background checkpointer copies committed WAL pages into the main file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The connection options of every connection to a ledger file.
pub(crate) fn options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        // Only takes effect on a new, empty file (sqlx sets it before the journal mode).
        .page_size(PAGE_SIZE)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-131072")
        // Every byte SQLite frees (a row rewritten, an index entry moved by a page split, a page
        // put on the free list) is overwritten with zeros at once: a forgotten member's id
        // leaves no remains in the free space of the file's pages, whatever its history.
        .pragma("secure_delete", "ON"))
}

/// Rewrites the ledger file at `url` whole (`VACUUM`) and empties its WAL: every page written
/// anew, nothing left in free space from before `secure_delete`. The daemon must be stopped (the
/// rewrite takes the file's write lock for as long as it runs). Returns the file's size before
/// and after.
pub async fn compact(url: &str) -> Result<(u64, u64), StoreError> {
    if !url.starts_with("sqlite:") {
        return Err(StoreError::Unavailable(
            "compact rewrites a SQLite file; on PostgreSQL run VACUUM FULL".into(),
        ));
    }
    let opts = options(url)?.create_if_missing(false);
    let path = opts.get_filename().to_path_buf();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let before = size(&path);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    sqlx::query("VACUUM").execute(&mut conn).await?;
    let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    if busy != 0 {
        return Err(StoreError::Unavailable(
            "the WAL could not be emptied: is a daemon still running on this file?".into(),
        ));
    }
    Ok((before, size(&path)))
}

/// Opens (creating and migrating if needed) a SQLite ledger: the reader now, and the future that
/// opens the writer (awaited on the writer's own thread).
pub async fn open(
    url: &str,
) -> Result<
    (
        SqliteStore,
        impl std::future::Future<Output = Result<SqliteBackend, StoreError>> + Send + 'static,
    ),
    StoreError,
> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let opts = options(url)?;
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
    let clearing = std::sync::Arc::new(tokio::sync::Mutex::new(conn));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone().read_only(true))
        .await?;
    let mut wal = opts.get_filename().as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    let writer = async move {
        let mut conn = SqliteConnection::connect_with(
            &opts
                .clone()
                .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string()),
        )
        .await?;
        // In frames, which are pages: the same bytes whatever the file's page size.
        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await?;
        let frames = WAL_RESTART_BYTES / page.max(512) as u64;
        sqlx::query(&format!("PRAGMA wal_autocheckpoint = {frames}"))
            .execute(&mut conn)
            .await?;
        let checkpointer = SqliteConnection::connect_with(&opts).await?;
        tokio::spawn(checkpoint_loop(checkpointer, wal));
        let mut backend = SqliteBackend {
            conn,
            ids: Counters::default(),
        };
        backend.reload_counters().await?;
        Ok(backend)
    };
    Ok((SqliteStore { pool, clearing }, writer))
}

/// Copies committed WAL pages into the main file four times a second (PASSIVE: never blocks
/// the writer), and reports the WAL's size (`coalition_sqlite_wal_bytes`).
///
/// The WAL only starts over from its beginning when a writer's transaction begins with every
/// frame copied. Under a steady load on a large file this checkpoint never catches up with
/// the writer, so on its own the WAL grew without bound (past 1.8 GB in a minute of the
/// preloaded bench), every frame extending the file (ext4 allocating and zeroing blocks: a
/// fifth of the daemon's CPU). So the writer also checkpoints, on its own connection right after
/// the commit that takes the WAL past [`WAL_RESTART_BYTES`] (`wal_autocheckpoint`; that batch's
/// callers wait for it): only the frames this task has not yet copied, after which the next
/// batch starts the WAL over.
async fn checkpoint_loop(mut conn: SqliteConnection, wal: std::path::PathBuf) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            tracing::debug!(error = %e, "checkpoint stopped");
            return;
        }
        if let Ok(size) = std::fs::metadata(&wal) {
            metrics::gauge!("coalition_sqlite_wal_bytes").set(size.len() as f64);
        }
    }
}

impl SqliteBackend {
    async fn reload_counters(&mut self) -> Result<(), StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM transactions")
            .fetch_one(&mut self.conn)
            .await?;
        self.ids = Counters { txn: row.get(0) };
        Ok(())
    }
}

#[async_trait]
impl BatchBackend for SqliteBackend {
    async fn apply_batch(
        &mut self,
        requests: &[Request],
        ctx: &batch::Context,
    ) -> Result<Vec<Result<Receipt, Rejection>>, StoreError> {
        // IMMEDIATE: take the write lock up front, never fail half-way with SQLITE_BUSY. The
        // transaction guard rolls back if it is dropped, including by a panic unwinding.
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let result = {
            let mut ledger = SqliteTx {
                conn: &mut tx,
                ids: &mut self.ids,
            };
            batch::apply(&mut ledger, requests, ctx).await
        };
        if let (Ok(_), Some(pause)) = (&result, ctx.pause_before_commit) {
            tokio::time::sleep(pause).await;
        }
        let decided = std::time::Instant::now();
        let result = match result {
            Ok(out) => match tx.commit().await {
                Ok(()) => {
                    tracing::trace!(
                        commit_micros = decided.elapsed().as_micros() as u64,
                        "sqlite commit"
                    );
                    Ok(out)
                }
                Err(e) => Err(StoreError::from(e)),
            },
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        if result.is_err() {
            // ids handed out in the failed batch may or may not exist now: ask the file.
            self.reload_counters().await?;
        }
        result
    }

    async fn recover(&mut self) -> Result<(), StoreError> {
        // A panic dropped the transaction guard, which queued a rollback; the next statement on
        // the connection runs after it. The id counter may have moved: read it again.
        self.reload_counters().await
    }
}

struct SqliteTx<'c> {
    conn: &'c mut SqliteConnection,
    ids: &'c mut Counters,
}

fn in_list<'a, T>(qb: &mut QueryBuilder<'a, Sqlite>, items: &'a [T])
where
    T: 'a + sqlx::Encode<'a, Sqlite> + sqlx::Type<Sqlite> + Send + Sync,
{
    qb.push("(");
    let mut sep = qb.separated(", ");
    for it in items {
        sep.push_bind(it);
    }
    qb.push(")");
}

fn lot_from(row: &SqliteRow) -> Result<Lot, StoreError> {
    Ok(super::rows::Rows::<sqlx::Sqlite>::lot(row)?)
}

fn allocation_from(row: &SqliteRow) -> Result<Allocation, StoreError> {
    Ok(super::rows::Rows::<sqlx::Sqlite>::allocation(row)?)
}

fn txn_from(row: &SqliteRow) -> Result<TxnRecord, StoreError> {
    super::rows::Rows::<sqlx::Sqlite>::txn(row)
}

#[async_trait]
impl LedgerTx for SqliteTx<'_> {
    async fn find_transactions(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<TxnRecord>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(MAX_BINDS / 2) {
            // CROSS JOIN pins the join order: one unique-index probe per key, never a scan.
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT t.* FROM (VALUES ");
            let mut sep = qb.separated(", ");
            for (p, t) in chunk {
                sep.push("(");
                sep.push_bind_unseparated(p);
                sep.push_unseparated(", ");
                sep.push_bind_unseparated(t);
                sep.push_unseparated(")");
            }
            qb.push(
                ") AS k CROSS JOIN transactions t ON t.partner_id = k.column1 AND t.partner_txn_id = k.column2",
            );
            for row in qb.build().fetch_all(&mut *self.conn).await? {
                out.push(txn_from(&row)?);
            }
        }
        Ok(out)
    }

    async fn load_members(
        &mut self,
        members: &[(String, i64)],
        now: Micros,
    ) -> Result<Vec<MemberLedger>, StoreError> {
        // The writer is the only writer: no locks needed between read and write.
        Ok(super::lots::LotsSql::<Sqlite>::load_members(&mut *self.conn, members, now).await?)
    }

    async fn load_lots(&mut self, ids: &[i64]) -> Result<Vec<Lot>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT * FROM lots WHERE id IN ");
        in_list(&mut qb, ids);
        qb.build()
            .fetch_all(&mut *self.conn)
            .await?
            .iter()
            .map(lot_from)
            .collect()
    }

    async fn load_burn_slices(&mut self, burn_txns: &[i64]) -> Result<Vec<Reversible>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT a.*, a.points + COALESCE((SELECT SUM(r.points) FROM allocations r \
             WHERE r.reverses_txn = a.txn_id AND r.reverses_seq = a.seq), 0) AS remaining \
             FROM allocations a WHERE a.reverses_txn IS NULL AND a.txn_id IN ",
        );
        in_list(&mut qb, burn_txns);
        qb.push(" ORDER BY a.txn_id, a.seq");
        qb.build()
            .fetch_all(&mut *self.conn)
            .await?
            .iter()
            .map(|row| {
                Ok(Reversible {
                    allocation: allocation_from(row)?,
                    remaining: row.try_get("remaining")?,
                })
            })
            .collect()
    }

    async fn open_cycle(
        &mut self,
        now_cycle: chrono::NaiveDate,
    ) -> Result<chrono::NaiveDate, StoreError> {
        let sealed: Option<String> =
            sqlx::query_scalar("SELECT sealed_through FROM clearing_state WHERE id = 1")
                .fetch_one(&mut *self.conn)
                .await?;
        super::model::first_open_cycle(now_cycle, sealed.as_deref())
    }

    async fn lock_members(&mut self, _members: &[String]) -> Result<(), StoreError> {
        Ok(()) // the one writer holds the file's write lock for the whole batch
    }

    async fn live_campaigns(
        &mut self,
        now: Micros,
    ) -> Result<Vec<crate::programme::Campaign>, StoreError> {
        super::programme::ProgrammeSql::<sqlx::Sqlite>::live_campaigns(&mut *self.conn, now).await
    }

    async fn load_programme(
        &mut self,
        members: &[String],
    ) -> Result<std::collections::HashMap<String, Option<String>>, StoreError> {
        super::programme::ProgrammeSql::<sqlx::Sqlite>::load(&mut *self.conn, members).await
    }

    async fn find_holds(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<super::holds::HoldRecord>, StoreError> {
        super::holds::HoldsSql::<sqlx::Sqlite>::find(&mut *self.conn, keys).await
    }

    async fn holds_of(
        &mut self,
        keys: &[(String, String)],
        members: &[String],
    ) -> Result<Vec<super::holds::HoldRecord>, StoreError> {
        super::holds::HoldsSql::<sqlx::Sqlite>::named_or_open(&mut *self.conn, keys, members).await
    }

    async fn earned_before(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        super::programme::ProgrammeSql::<sqlx::Sqlite>::earned_before(&mut *self.conn, pairs).await
    }

    async fn forgotten(
        &mut self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        super::retention::forgotten::<sqlx::Sqlite>(&mut *self.conn, pseudonyms).await
    }

    async fn reserve_txn_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        let first = self.ids.txn + 1;
        self.ids.txn += n as i64;
        Ok((first..=self.ids.txn).collect())
    }

    async fn write(&mut self, w: &Writes) -> Result<(), StoreError> {
        let conn = &mut *self.conn;
        let batch_id = super::chain::batch_id(w);
        for chunk in w.new_txns.chunks(MAX_BINDS / 22) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO transactions (id, partner_id, partner_txn_id, kind, member_id, points, reversed_points, \
                 original_id, original_txn_id, purchase_amount, purchase_currency, request_hash, balance_after, slices, \
                 debt_created, debt_repaid, accepted_at, parts, parts_reversed, tier, cycle, batch_id) ",
            );
            qb.push_values(chunk, |mut b, t| {
                let (amount, currency) = t.purchase.clone().unzip();
                let r = &t.receipt;
                b.push_bind(t.id)
                    .push_bind(&t.partner)
                    .push_bind(&t.partner_txn_id)
                    .push_bind(t.kind.as_str())
                    .push_bind(&t.member)
                    .push_bind(t.points)
                    .push_bind(t.reversed_points)
                    .push_bind(t.original_id)
                    .push_bind(&r.original_transaction_id)
                    .push_bind(amount)
                    .push_bind(currency)
                    .push_bind(&t.request_hash)
                    .push_bind(r.balance_after)
                    .push_bind(super::model::encode_slices(&r.slices))
                    .push_bind(r.debt_created)
                    .push_bind(r.debt_repaid)
                    .push_bind(t.accepted_at)
                    .push_bind(crate::ledger::parts::encode(&r.parts))
                    .push_bind(super::model::encode_parts_reversed(t))
                    .push_bind(&r.tier)
                    .push_bind(w.cycle.to_string())
                    .push_bind(batch_id);
            });
            qb.build().execute(&mut *conn).await?;
        }
        for (id, reversed, parts) in &w.reversed {
            sqlx::query(
                "UPDATE transactions SET reversed_points = ?, parts_reversed = ? WHERE id = ?",
            )
            .bind(reversed)
            .bind(parts)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        for chunk in w.lots.chunks(MAX_BINDS / 9) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO lots (id, member_id, issuer, points, points_left, reversed, expired, earned_at, expires_at) ",
            );
            qb.push_values(chunk, |mut b, l| {
                b.push_bind(l.id)
                    .push_bind(&l.member)
                    .push_bind(&l.issuer)
                    .push_bind(l.points)
                    .push_bind(l.points_left)
                    .push_bind(l.reversed)
                    .push_bind(l.expired)
                    .push_bind(l.earned_at)
                    .push_bind(l.expires_at);
            });
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET points_left = excluded.points_left, reversed = excluded.reversed, \
                 expired = excluded.expired",
            );
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in w.issuance.chunks(MAX_BINDS / 5) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO issuance (txn_id, cycle, issuer, fee_rate, points) ",
            );
            qb.push_values(chunk, |mut b, i| {
                b.push_bind(i.txn)
                    .push_bind(w.cycle.to_string())
                    .push_bind(&i.issuer)
                    .push_bind(i.fee_rate.normalize().to_string())
                    .push_bind(i.points);
            });
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in w.breakage.chunks(MAX_BINDS / 6) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO breakage (lot_id, member_id, issuer, cycle, points, txn_id) ",
            );
            qb.push_values(chunk, |mut b, f| {
                b.push_bind(f.lot)
                    .push_bind(&f.member)
                    .push_bind(&f.issuer)
                    .push_bind(w.cycle.to_string())
                    .push_bind(f.points)
                    .push_bind(f.txn);
            });
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in w.allocations.chunks(MAX_BINDS / 12) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO allocations (txn_id, seq, lot_id, member_id, issuer, redeemer, points, rate, \
                 reverses_txn, reverses_seq, accepted_at, cycle) ",
            );
            qb.push_values(chunk, |mut b, a| {
                b.push_bind(a.txn)
                    .push_bind(a.seq)
                    .push_bind(a.lot)
                    .push_bind(&a.member)
                    .push_bind(&a.issuer)
                    .push_bind(&a.redeemer)
                    .push_bind(a.points)
                    .push_bind(a.rate.to_string())
                    .push_bind(a.reverses.map(|r| r.0))
                    .push_bind(a.reverses.map(|r| r.1))
                    .push_bind(a.accepted_at)
                    .push_bind(w.cycle.to_string());
            });
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in w.debts.chunks(MAX_BINDS / 8) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO debts (txn_id, member_id, owed_to, points, points_left, rate, created_at) ",
            );
            qb.push_values(chunk, |mut b, d| {
                b.push_bind(d.txn)
                    .push_bind(&d.member)
                    .push_bind(&d.owed_to)
                    .push_bind(d.points)
                    .push_bind(d.points_left)
                    .push_bind(d.rate.to_string())
                    .push_bind(d.created_at);
            });
            qb.push(" ON CONFLICT (txn_id) DO UPDATE SET points_left = excluded.points_left");
            qb.build().execute(&mut *conn).await?;
        }
        if !w.cycle_totals.is_empty() {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO cycle_totals (cycle, partner_id, kind, transactions, points) ",
            );
            qb.push_values(&w.cycle_totals, |mut b, (p, k, n, pts)| {
                b.push_bind(w.cycle.to_string())
                    .push_bind(p)
                    .push_bind(*k)
                    .push_bind(n)
                    .push_bind(pts);
            });
            qb.push(
                " ON CONFLICT (cycle, partner_id, kind) DO UPDATE SET transactions = cycle_totals.transactions + \
                 excluded.transactions, points = cycle_totals.points + excluded.points",
            );
            qb.build().execute(&mut *conn).await?;
        }
        super::lots::LotsSql::<Sqlite>::write_members(&mut *conn, &w.members).await?;
        if !w.programme.is_empty() {
            super::programme::ProgrammeSql::<Sqlite>::write(&mut *conn, &w.programme).await?;
        }
        super::holds::HoldsSql::<Sqlite>::write(&mut *conn, &w.holds).await?;
        super::matrix::MatrixSql::<Sqlite>::add(&mut *conn, w.cycle, &w.matrix).await?;
        super::chain::append::<Sqlite>(
            &mut *conn,
            w,
            "SELECT seq, hash FROM ledger_chain_head WHERE id = 1",
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn member(&self, member: &str) -> Result<Option<MemberLedger>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(super::lots::LotsSql::<Sqlite>::member_whole(&mut conn, member).await?)
    }

    async fn member_at(
        &self,
        member: &str,
        now: Micros,
    ) -> Result<Option<MemberLedger>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(super::lots::LotsSql::<sqlx::Sqlite>::member_at(&mut conn, member, now).await?)
    }

    async fn transaction(
        &self,
        partner: &str,
        partner_txn_id: &str,
    ) -> Result<Option<TxnRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::rows::TxnReads::<sqlx::Sqlite>::transaction(&mut c, partner, partner_txn_id).await
    }

    async fn activity(
        &self,
        partner: &str,
        member: &str,
        before: Option<(Micros, i64)>,
        limit: i64,
    ) -> Result<Vec<TxnRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::rows::TxnReads::<sqlx::Sqlite>::activity(&mut c, partner, member, before, limit)
            .await
    }

    async fn heartbeat(
        &self,
        id: &str,
        _now: Micros,
        traffic: &str,
        _live_after: Micros,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // One daemon serves a SQLite file (its writer holds the file's write lock): it is alone,
        // and its limits are whole. Nothing to write every second.
        Ok(vec![(id.to_string(), traffic.to_string())])
    }

    async fn leave(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn pool_connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn verify_chain(&self) -> Result<super::chain::ChainReport, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let report = super::chain::verify::<sqlx::Sqlite>(&mut tx).await?;
        tx.rollback().await?;
        Ok(report)
    }

    async fn audit(
        &self,
        now: Micros,
        rules: &clearing::Rules,
    ) -> Result<audit::Report, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // One read transaction: every figure comes from the same snapshot.
        let mut tx = conn.begin().await?;
        let mut report = audit::run::<sqlx::Sqlite>(&mut tx, now).await?;
        let mut all =
            clearing::SharedSql::<sqlx::Sqlite>::settlements(&mut tx, None, i64::MAX).await?;
        all.reverse();
        report
            .violations
            .extend(clearing::verify(&mut SqliteClearing { conn: &mut tx }, rules, &all).await?);
        report.settlements = all.len() as i64;
        let chain = super::chain::verify::<sqlx::Sqlite>(&mut tx).await?;
        report.chain_links = chain.links;
        report.before_chain = chain.before_chain;
        report.violations.extend(chain.violations);
        report
            .violations
            .extend(super::access::verify::<sqlx::Sqlite>(&mut tx).await?);
        report
            .violations
            .extend(super::registry::RegistrySql::<sqlx::Sqlite>::verify_prices(&mut tx).await?);
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
        let mut conn = self.clearing.lock().await;
        // The guard rolls back when dropped: an error, a panic or a cancelled call leaves nothing
        // open behind it.
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let result = clearing::run(&mut SqliteClearing { conn: &mut tx }, plan).await;
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

    async fn settlement(
        &self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Sqlite>::settlement(&mut c, cycle).await
    }

    async fn settlements(
        &self,
        before: Option<chrono::NaiveDate>,
        limit: i64,
    ) -> Result<Vec<clearing::Stored>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Sqlite>::settlements(&mut c, before, limit).await
    }

    async fn reconciliation(
        &self,
        call: super::reconciliation::ReconCall,
    ) -> Result<super::reconciliation::ReconReply, StoreError> {
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let out = super::reconciliation::ReconSql::<sqlx::Sqlite>::run(&mut tx, call).await?;
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
            .map(super::rows::Rows::<sqlx::Sqlite>::statement_line)
            .collect::<Result<_, _>>()?)
    }

    async fn lot_fates(&self, as_of: Micros) -> Result<Vec<clearing::LotFate>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Sqlite>::lot_fates(&mut c, as_of).await
    }

    async fn forgotten(
        &self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::retention::forgotten::<sqlx::Sqlite>(&mut c, pseudonyms).await
    }

    async fn forget_member(
        &self,
        f: &super::retention::Forget,
    ) -> Result<super::retention::Forgotten, StoreError> {
        // The write lock of the file: no batch is half-way through this member.
        let mut conn = self.clearing.lock().await;
        // What the forget deletes or moves is overwritten with zeros, as every connection's
        // frees are (`secure_delete`, in `options`).
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let out = super::retention::forget::<sqlx::Sqlite>(&mut tx, f).await?;
        tx.commit().await?;
        // The WAL still holds the pages as they were: copy the new ones into the file and empty
        // it, so that the old id is nowhere on disk. Readers in the middle of a read can hold
        // this up; then the next checkpoints finish it (logged, not an error: the forget stands).
        if out.newly {
            let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *conn)
                .await?;
            if busy != 0 {
                tracing::warn!(
                    "the WAL could not be emptied after a forget (readers busy); later checkpoints will"
                );
            }
        }
        Ok(out)
    }

    async fn answer_settlement(
        &self,
        a: &super::responses::Answer,
    ) -> Result<super::responses::Answer, StoreError> {
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let out = super::responses::answer::<sqlx::Sqlite>(&mut tx, a).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn settlement_answers(
        &self,
        cycle: &str,
    ) -> Result<Vec<super::responses::Answer>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::responses::states::<sqlx::Sqlite>(&mut c, cycle).await
    }

    async fn kpi_facts(
        &self,
        q: &super::report::KpiQuery,
    ) -> Result<crate::report::KpiFacts, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::report::ReportSql::<sqlx::Sqlite>::kpi_facts(&mut c, q, super::report::SQLITE_TIER)
            .await
    }

    async fn cohort_cells(
        &self,
        q: &super::report::KpiQuery,
    ) -> Result<Vec<(crate::report::Month, i64, i64)>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::report::ReportSql::<sqlx::Sqlite>::cohort_cells(&mut c, q).await
    }

    async fn log_access(&self, entry: &super::access::AccessEntry) -> Result<(), StoreError> {
        // The one write connection, IMMEDIATE: appends are serialised.
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        super::access::append::<sqlx::Sqlite>(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_consent(
        &self,
        change: &super::consent::ConsentChange,
    ) -> Result<super::consent::ConsentOutcome, StoreError> {
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let out = super::consent::record::<sqlx::Sqlite>(&mut tx, change).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn consents(
        &self,
        member: &str,
    ) -> Result<Vec<super::consent::ConsentRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::consent::list::<sqlx::Sqlite>(&mut c, member).await
    }

    async fn pseudonymize_inactive(
        &self,
        cutoff: Micros,
        now: Micros,
    ) -> Result<usize, StoreError> {
        // The write lock of the file: no batch is half-way through one of these members.
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let due = super::retention::inactive::<sqlx::Sqlite>(&mut tx, cutoff).await?;
        for m in &due {
            super::retention::pseudonymize::<sqlx::Sqlite>(&mut tx, m, now).await?;
        }
        tx.commit().await?;
        Ok(due.len())
    }

    async fn prune_access_log(&self, cutoff: Micros) -> Result<u64, StoreError> {
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let n = super::access::prune::<sqlx::Sqlite>(&mut tx, cutoff).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn partner_overrides(&self) -> Result<Vec<super::model::PartnerOverride>, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Sqlite>::overrides(&mut c).await
    }

    async fn save_partner_override(
        &self,
        o: &super::model::PartnerOverride,
    ) -> Result<(), StoreError> {
        let mut conn = self.clearing.lock().await;
        clearing::SharedSql::<sqlx::Sqlite>::save_override(&mut conn, o).await
    }

    async fn clearing_frontier(&self) -> Result<clearing::Frontier, StoreError> {
        let mut c = self.pool.acquire().await?;
        clearing::SharedSql::<sqlx::Sqlite>::frontier(&mut c).await
    }

    async fn confirm_catch_up(&self, through: chrono::NaiveDate) -> Result<(), StoreError> {
        let mut conn = self.clearing.lock().await;
        clearing::SharedSql::<sqlx::Sqlite>::confirm_catch_up(&mut conn, through).await
    }

    async fn sync_registry(
        &self,
        sync: &crate::prices::Sync,
    ) -> Result<crate::prices::Synced, StoreError> {
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let done = super::registry::RegistrySql::<sqlx::Sqlite>::sync(&mut tx, sync).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn partners(&self) -> Result<Vec<crate::prices::PartnerRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::registry::RegistrySql::<sqlx::Sqlite>::partners(&mut c).await
    }

    async fn programme(
        &self,
        call: super::programme::ProgrammeCall,
    ) -> Result<super::programme::ProgrammeReply, StoreError> {
        use super::programme::ProgrammeCall;
        if matches!(
            call,
            ProgrammeCall::Create(_) | ProgrammeCall::End { .. } | ProgrammeCall::Redeem { .. }
        ) {
            // Changes go through the one writable connection outside the writer.
            let mut conn = self.clearing.lock().await;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let out = super::programme::ProgrammeSql::<sqlx::Sqlite>::call(&mut tx, call).await?;
            tx.commit().await?;
            return Ok(out);
        }
        let mut c = self.pool.acquire().await?;
        super::programme::ProgrammeSql::<sqlx::Sqlite>::call(&mut c, call).await
    }

    async fn holds(
        &self,
        call: super::holds::HoldsCall,
    ) -> Result<super::holds::HoldsReply, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::holds::HoldsSql::<sqlx::Sqlite>::call(&mut c, call).await
    }

    async fn price_versions(&self) -> Result<Vec<crate::prices::PriceVersion>, StoreError> {
        let mut c = self.pool.acquire().await?;
        super::registry::RegistrySql::<sqlx::Sqlite>::price_versions(&mut c).await
    }

    async fn add_price(
        &self,
        v: &crate::prices::PriceVersion,
    ) -> Result<crate::prices::PriceVersion, StoreError> {
        let mut conn = self.clearing.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let stored = super::registry::RegistrySql::<sqlx::Sqlite>::add_price(&mut tx, v).await?;
        tx.commit().await?;
        Ok(stored)
    }
}

/// A clearing run's transaction on SQLite (on the store's own write connection; SQLite's write
/// lock serializes it with the batch writer).
struct SqliteClearing<'c> {
    conn: &'c mut SqliteConnection,
}

#[async_trait]
impl clearing::ClearingTx for SqliteClearing<'_> {
    async fn lock_state(&mut self) -> Result<Option<chrono::NaiveDate>, StoreError> {
        // BEGIN IMMEDIATE already holds the write lock.
        let s: Option<String> =
            sqlx::query_scalar("SELECT sealed_through FROM clearing_state WHERE id = 1")
                .fetch_one(&mut *self.conn)
                .await?;
        super::model::parse_date("clearing_state.sealed_through", s.as_deref())
    }

    async fn try_exclusive(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn settlement(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::settlement(self.conn, cycle).await
    }

    async fn latest_before(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::latest_before(self.conn, cycle).await
    }

    async fn first_activity(
        &mut self,
        after: Option<chrono::NaiveDate>,
        before: chrono::NaiveDate,
    ) -> Result<Option<chrono::NaiveDate>, StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::first_activity(self.conn, after, before).await
    }

    async fn sweep(&mut self, before: Micros, cycle: chrono::NaiveDate) -> Result<i64, StoreError> {
        // The one writer's lock is held: no batch is half-way through a member.
        clearing::SharedSql::<sqlx::Sqlite>::sweep(self.conn, before, cycle).await
    }

    async fn chain_head(&mut self) -> Result<String, StoreError> {
        super::chain::head::<sqlx::Sqlite>(&mut *self.conn).await
    }

    async fn first_after(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<chrono::NaiveDate>, StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::first_after(self.conn, cycle).await
    }

    async fn first_transaction_cycle(&mut self) -> Result<Option<chrono::NaiveDate>, StoreError> {
        Ok(clearing::SharedSql::<sqlx::Sqlite>::frontier(self.conn)
            .await?
            .first_transaction)
    }

    async fn slices(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Vec<coalition_clearing::Slice>, StoreError> {
        super::matrix::MatrixSql::<sqlx::Sqlite>::slices(&mut *self.conn, cycle).await
    }

    async fn issuance(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<Vec<coalition_clearing::Issuance>, StoreError> {
        super::registry::RegistrySql::<sqlx::Sqlite>::cycle_issuance(self.conn, cycle).await
    }

    async fn counts(
        &mut self,
        cycle: chrono::NaiveDate,
    ) -> Result<coalition_clearing::Counts, StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::counts(self.conn, cycle).await
    }

    async fn save(&mut self, s: &clearing::Stored) -> Result<(), StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::save(self.conn, s).await
    }

    async fn seal(&mut self, cycle: chrono::NaiveDate) -> Result<(), StoreError> {
        clearing::SharedSql::<sqlx::Sqlite>::seal(self.conn, cycle).await
    }
}
