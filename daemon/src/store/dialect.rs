//! What differs between SQLite and PostgreSQL, named in one place: bind placeholders, how money
//! is stored, the locks several daemons need, and the few statements each dialect spells its way.

/// The `n`-th (1-based) bind placeholder of a statement for `DB`: `?` on SQLite, `$n` elsewhere.
/// (sqlx resolves each `$n` on SQLite by scanning the statement's parameter names: quadratic in a
/// multi-row statement of thousands of binds. A `?` is taken in order.) Binds must then come in
/// placeholder order, each placeholder used once.
pub fn mark<DB: sqlx::Database>(n: usize) -> String {
    if DB::NAME == "SQLite" {
        "?".to_string()
    } else {
        format!("${n}")
    }
}

/// `(m, m, …), (…)`: placeholders for `rows` rows of `cols` columns (see [`mark`]).
pub fn rows_of_marks<DB: sqlx::Database>(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=cols).map(|c| mark::<DB>(r * cols + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::Row;
use std::str::FromStr;

/// The most bound parameters one statement takes here (SQLite allows 32,766, PostgreSQL 65,535).
pub const MAX_BINDS: usize = 30_000;

/// What differs between the two databases the store runs on. Every query of the store is written
/// once over sqlx's database; where the two spell a thing differently, or one needs a lock the
/// other does not (several daemons share a PostgreSQL database; one writer owns a SQLite file),
/// the query asks its dialect.
#[async_trait]
pub trait Dialect: sqlx::Database {
    /// How a decimal is bound: text on SQLite, `NUMERIC` on PostgreSQL.
    type Decimal: for<'q> sqlx::Encode<'q, Self> + sqlx::Type<Self> + Send + Sync + 'static;
    /// How a decimal that may be NULL is bound.
    type MaybeDecimal: for<'q> sqlx::Encode<'q, Self> + sqlx::Type<Self> + Send + Sync + 'static;
    /// Whether several daemons may share one database (each announces itself, locks members).
    const SHARED: bool;
    /// What a write transaction outside the batch writer begins with: SQLite takes the file's
    /// write lock at once, so it never fails half-way on a busy file.
    const BEGIN_WRITE: &'static str;
    /// The row lock a batch takes on the clearing state (held off by a clearing run).
    const FOR_SHARE: &'static str;
    /// The row lock a clearing run, or the chain's head, takes.
    const FOR_UPDATE: &'static str;
    /// A join whose order the planner keeps: one index probe per key, never a scan.
    const PINNED_JOIN: &'static str;
    /// A member's stored tier, read from the programme text of its `members` row (reports).
    const PROGRAMME_TIER: &'static str;

    /// `d` as this dialect binds it.
    fn decimal_param(d: Decimal) -> Self::Decimal;
    /// `d`, or NULL, as this dialect binds it.
    fn maybe_decimal_param(d: Option<Decimal>) -> Self::MaybeDecimal;
    /// A decimal column (`None` for NULL).
    fn decimal(row: &Self::Row, col: &str) -> Result<Option<Decimal>, sqlx::Error>;
    /// `FROM members m` joined to each member's first `limit` open lots in spending order
    /// (`order`), as `l`.
    fn first_lots_join(order: &str, limit: usize) -> String;
    /// Whether a batch that failed so lost a race with another daemon, which running it again
    /// resolves (serialization failure, deadlock, a unique key taken meanwhile).
    fn lost_race(e: &sqlx::Error) -> bool;

    /// Locks these members for the rest of the transaction, as every writer of a member's state
    /// does (batches, the clearing sweep, retention), sorted so that no two ever wait in a circle.
    async fn lock_members(
        conn: &mut Self::Connection,
        members: &[String],
    ) -> Result<(), sqlx::Error>;
    /// Serialises this transaction with the others that write `table` (rare writes: answers,
    /// reconciliation, the access log), without blocking its readers.
    async fn serialize_writes(conn: &mut Self::Connection, table: &str) -> Result<(), sqlx::Error>;
    /// Holds out every batch and access-log append until this transaction ends (a forget).
    async fn hold_out_writers(conn: &mut Self::Connection) -> Result<(), sqlx::Error>;
    /// Makes this read transaction one snapshot for every figure it reads (the audit).
    async fn snapshot(conn: &mut Self::Connection) -> Result<(), sqlx::Error>;
    /// Takes the clearing lock if no other daemon holds it; `false` if one does.
    async fn try_clearing_lock(conn: &mut Self::Connection) -> Result<bool, sqlx::Error>;
    /// `n` fresh transaction ids, increasing, inside the batch's transaction.
    async fn reserve_txn_ids(
        conn: &mut Self::Connection,
        n: usize,
    ) -> Result<Vec<i64>, sqlx::Error>;
    /// After a forget commits: what the database keeps of the old bytes outside its tables goes
    /// (SQLite's WAL is emptied). `false` if a long read held it up (a repeat forget tries again).
    async fn scrub(conn: &mut Self::Connection) -> Result<bool, sqlx::Error>;
}

#[async_trait]
impl Dialect for sqlx::Sqlite {
    type Decimal = String;
    type MaybeDecimal = Option<String>;
    const SHARED: bool = false;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const FOR_SHARE: &'static str = "";
    const FOR_UPDATE: &'static str = "";
    const PINNED_JOIN: &'static str = "CROSS JOIN";
    const PROGRAMME_TIER: &'static str = "json_extract(programme, '$.t[0]')";

    fn decimal_param(d: Decimal) -> String {
        d.to_string()
    }

    fn maybe_decimal_param(d: Option<Decimal>) -> Option<String> {
        d.map(|d| d.to_string())
    }

    fn decimal(row: &Self::Row, col: &str) -> Result<Option<Decimal>, sqlx::Error> {
        let s: Option<String> = row.try_get(col)?;
        s.map(|s| Decimal::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .transpose()
    }

    fn first_lots_join(order: &str, limit: usize) -> String {
        format!(
            "FROM members m LEFT JOIN lots l ON l.id IN (SELECT x.id FROM lots x \
             WHERE x.member_id = m.member_id AND x.points_left > 0 ORDER BY {order} LIMIT {limit})"
        )
    }

    fn lost_race(_: &sqlx::Error) -> bool {
        // One writer owns the file: there is no other daemon to lose a race to.
        false
    }

    async fn lock_members(_: &mut Self::Connection, _: &[String]) -> Result<(), sqlx::Error> {
        Ok(()) // the one writer holds the file's write lock for the whole transaction
    }

    async fn serialize_writes(_: &mut Self::Connection, _: &str) -> Result<(), sqlx::Error> {
        Ok(()) // BEGIN IMMEDIATE holds the file's write lock
    }

    async fn hold_out_writers(_: &mut Self::Connection) -> Result<(), sqlx::Error> {
        Ok(()) // BEGIN IMMEDIATE holds the file's write lock
    }

    async fn snapshot(_: &mut Self::Connection) -> Result<(), sqlx::Error> {
        Ok(()) // a read transaction in WAL mode reads one snapshot
    }

    async fn try_clearing_lock(_: &mut Self::Connection) -> Result<bool, sqlx::Error> {
        Ok(true) // one daemon per file
    }

    async fn reserve_txn_ids(
        conn: &mut Self::Connection,
        n: usize,
    ) -> Result<Vec<i64>, sqlx::Error> {
        // Inside the batch's write transaction, which holds the file: nobody else takes ids.
        // Transactions and holds draw from one sequence of ledger ids.
        let last: i64 = sqlx::query_scalar(
            "SELECT MAX(m) FROM (SELECT COALESCE(MAX(id), 0) AS m FROM transactions \
             UNION ALL SELECT COALESCE(MAX(id), 0) FROM holds)",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok((last + 1..=last + n as i64).collect())
    }

    async fn scrub(conn: &mut Self::Connection) -> Result<bool, sqlx::Error> {
        // The WAL still holds the pages as they were: copy the new ones into the file and empty
        // it. Readers in the middle of a read and the writer's batches hold this up (the busy
        // timeout waits for them); another checkpoint running at that instant (the daemon's
        // checkpointer, four times a second, or the writer's after a large commit) makes it
        // give up at once. Either way it is tried again until `SCRUB_WITHIN` has passed (a read
        // longer than the busy timeout ends it after one wait).
        let started = std::time::Instant::now();
        loop {
            let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *conn)
                .await?;
            if busy == 0 {
                return Ok(true);
            }
            if started.elapsed() >= SCRUB_WITHIN {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// How long a forget keeps trying to empty SQLite's WAL while other checkpoints run.
const SCRUB_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The class of the advisory locks that serialise a member's state across daemons ("MEMB").
const MEMBER_LOCK_CLASS: i32 = 0x4d45_4d42;
/// The advisory lock key of clearing runs ("CLR" + 1).
const CLEARING_LOCK: i64 = 0x434c_5201;

#[async_trait]
impl Dialect for sqlx::Postgres {
    type Decimal = Decimal;
    type MaybeDecimal = Option<Decimal>;
    const SHARED: bool = true;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const PINNED_JOIN: &'static str = "JOIN";
    const PROGRAMME_TIER: &'static str = "(CAST(programme AS json) -> 't' ->> 0)";

    fn decimal_param(d: Decimal) -> Decimal {
        d
    }

    fn maybe_decimal_param(d: Option<Decimal>) -> Option<Decimal> {
        d
    }

    fn decimal(row: &Self::Row, col: &str) -> Result<Option<Decimal>, sqlx::Error> {
        row.try_get(col)
    }

    fn first_lots_join(order: &str, limit: usize) -> String {
        format!(
            "FROM members m LEFT JOIN LATERAL (SELECT * FROM lots x WHERE x.member_id = m.member_id \
             AND x.points_left > 0 ORDER BY {order} LIMIT {limit}) l ON true"
        )
    }

    fn lost_race(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Database(d) => {
                matches!(d.code().as_deref(), Some("40001" | "40P01" | "23505"))
            }
            _ => false,
        }
    }

    /// A row lock alone would miss a member who has no row yet: two daemons would both decide
    /// its first earns and the last to commit would overwrite the other's programme state and
    /// kept values. So each member is first locked by an advisory transaction lock on a hash of
    /// its id (in key order; a collision only serialises two members more than needed), then its
    /// row, if any, `FOR UPDATE` — which also takes the table's ROW SHARE lock a forget waits on.
    async fn lock_members(
        conn: &mut Self::Connection,
        members: &[String],
    ) -> Result<(), sqlx::Error> {
        if members.is_empty() {
            return Ok(());
        }
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

    async fn serialize_writes(conn: &mut Self::Connection, table: &str) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn hold_out_writers(conn: &mut Self::Connection) -> Result<(), sqlx::Error> {
        // Batches lock member rows (ROW SHARE on the table); appends lock the access log.
        sqlx::query("LOCK TABLE members IN EXCLUSIVE MODE")
            .execute(&mut *conn)
            .await?;
        sqlx::query("LOCK TABLE access_log IN EXCLUSIVE MODE")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn snapshot(conn: &mut Self::Connection) -> Result<(), sqlx::Error> {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn try_clearing_lock(conn: &mut Self::Connection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CLEARING_LOCK)
            .fetch_one(&mut *conn)
            .await
    }

    async fn reserve_txn_ids(
        conn: &mut Self::Connection,
        n: usize,
    ) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT nextval('transaction_ids') FROM generate_series(1, $1)")
            .bind(n as i64)
            .fetch_all(&mut *conn)
            .await
    }

    async fn scrub(_: &mut Self::Connection) -> Result<bool, sqlx::Error> {
        Ok(true) // old row versions go with PostgreSQL's own vacuum
    }
}
