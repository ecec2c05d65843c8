//! Retention: a member inactive longer than the retention period has its id replaced by a random
//! pseudonym in every table of the ledger, so the books stay exact (balances, breakage, every
//! settlement digest: settlements hold no member ids) while nothing links them to the id any more.
//! The same id arriving again is a new member. Written once for both backends.

use super::error::StoreError;
use crate::ledger::Micros;

/// Most members pseudonymized in one run (the next run takes the rest).
pub const MAX_PER_RUN: i64 = 1_000;

/// Tables that hold a member id, and its column. (The programme state is on the member row.)
const TABLES: &[&str] = &[
    "members",
    "transactions",
    "lots",
    "allocations",
    "debts",
    "breakage",
    "consents",
    "consent_events",
    "vouchers",
    "holds",
    "partner_events",
];

/// SQL, the same on both backends.
pub mod sql {
    /// Members with no transaction since $1 that are not already pseudonyms, sorted, at most $2.
    /// (A scan of the transactions grouped by member: cheap enough for an hourly job, and no index
    /// or column the write path would have to keep.)
    pub const INACTIVE: &str = "SELECT t.member_id FROM transactions t \
        WHERE NOT EXISTS (SELECT 1 FROM pseudonyms p WHERE p.pseudonym = t.member_id) \
        GROUP BY t.member_id HAVING MAX(t.accepted_at) < $1 ORDER BY t.member_id LIMIT $2";
    /// Records a pseudonym.
    pub const RECORD: &str = "INSERT INTO pseudonyms (pseudonym, at) VALUES ($1, $2)";
}

/// A fresh random pseudonym: `~` and 32 hex digits.
pub fn pseudonym() -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Unavailable("no randomness for a pseudonym".into()))?;
    Ok(format!("~{}", hex::encode(bytes)))
}

/// The members due, inside the caller's write transaction.
pub async fn inactive<DB>(
    conn: &mut DB::Connection,
    cutoff: Micros,
) -> Result<Vec<String>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    Ok(sqlx::query_scalar(sql::INACTIVE)
        .bind(cutoff)
        .bind(MAX_PER_RUN)
        .fetch_all(&mut *conn)
        .await?)
}

/// Replaces `member` by a fresh pseudonym everywhere, inside the caller's write transaction (which
/// holds the member: SQLite's write lock, or PostgreSQL's row lock on `members`).
pub async fn pseudonymize<DB>(
    conn: &mut DB::Connection,
    member: &str,
    now: Micros,
) -> Result<String, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
{
    let p = pseudonym()?;
    rename::<DB>(conn, member, &p, now).await?;
    Ok(p)
}

/// Replaces `member` by `p` in every ledger table and records `p` as a pseudonym.
async fn rename<DB>(
    conn: &mut DB::Connection,
    member: &str,
    p: &str,
    now: Micros,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
{
    for table in TABLES {
        sqlx::query(&format!(
            "UPDATE {table} SET member_id = $1 WHERE member_id = $2"
        ))
        .bind(p.to_string())
        .bind(member.to_string())
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(sql::RECORD)
        .bind(p.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A request to forget a member.
#[derive(Debug, Clone)]
pub struct Forget {
    /// The member's id.
    pub member: String,
    /// Its keyed pseudonym (`privacy::MemberKey::pseudonym`).
    pub pseudonym: String,
    /// The instant of the forget: the member's points expire at it.
    pub now: Micros,
    /// Who asked (`role/name` of the certificate).
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// What a forget did (or, on a retry, had done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The pseudonym.
    pub pseudonym: String,
    /// Points that expire at the forget (breakage of their issuers at the next clearing).
    pub points_forfeited: i64,
    /// When the member was forgotten.
    pub at: Micros,
    /// False when the member had been forgotten before.
    pub newly: bool,
}

/// Forgets a member inside the caller's write transaction, which must hold out every batch
/// (SQLite: the write lock; PostgreSQL: `members` and `access_log` locked EXCLUSIVE). Its
/// points — in lots and in holds still held — expire at `now`, so the next clearing run sweeps
/// them as breakage of their issuers; its id becomes the pseudonym in every table and in the
/// access log (re-chained from the first entry changed); the forget is recorded.
pub async fn forget<DB>(conn: &mut DB::Connection, f: &Forget) -> Result<Forgotten, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    if let Some(r) = sqlx::query(
        "SELECT forgotten_at, points_forfeited FROM forgotten_members WHERE pseudonym = $1",
    )
    .bind(f.pseudonym.clone())
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok(Forgotten {
            pseudonym: f.pseudonym.clone(),
            at: r.try_get(0)?,
            points_forfeited: r.try_get(1)?,
            newly: false,
        });
    }
    // The forget takes effect after every call of the member applied before it: a batch decided
    // while the forget waited for its lock (on another daemon, or this one's writer) may carry a
    // later instant than the request's, and nothing of the member may come after its forget.
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(at) FROM (SELECT MAX(accepted_at) AS at FROM transactions \
         WHERE member_id = $1 AND kind IN ('earn', 'burn') \
         UNION ALL SELECT MAX(authorized_at) FROM holds WHERE member_id = $1) m",
    )
    .bind(f.member.clone())
    .fetch_one(&mut *conn)
    .await?;
    let f = &Forget {
        now: last.map_or(f.now, |l| l.max(f.now)),
        ..f.clone()
    };
    let in_lots: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(points_left) AS BIGINT) FROM lots WHERE member_id = $1 AND points_left > 0 \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(f.member.clone())
    .bind(f.now)
    .fetch_one(&mut *conn)
    .await?;
    // Held points count as every view counts them: a hold past its expires_at that the daemon
    // has not yet given back holds the member's points again (those of its lots still running).
    let held = sqlx::query(super::holds::MEMBER_HELD)
        .bind(f.member.clone())
        .bind(f.now)
        .fetch_one(&mut *conn)
        .await?;
    let (running, given_back): (i64, i64) = (held.try_get(0)?, held.try_get(1)?);
    let forfeited = in_lots
        .unwrap_or(0)
        .checked_add(running)
        .and_then(|p| p.checked_add(given_back))
        .ok_or_else(|| StoreError::Corrupt("a member's points overflow".into()))?;
    // Every lot (one with its points in a hold too: they come back to it expired), and every
    // hold still held, runs out now.
    sqlx::query(
        "UPDATE lots SET expires_at = $1 WHERE member_id = $2 AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(f.now)
    .bind(f.member.clone())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE holds SET expires_at = $1 WHERE member_id = $2 AND state = 'held' AND expires_at > $1",
    )
    .bind(f.now)
    .bind(f.member.clone())
    .execute(&mut *conn)
    .await?;
    rename::<DB>(conn, &f.member, &f.pseudonym, f.now).await?;
    super::access::rename_member::<DB>(conn, &f.member, &f.pseudonym).await?;
    sqlx::query(
        "INSERT INTO forgotten_members (pseudonym, forgotten_at, actor, reason, points_forfeited) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(f.pseudonym.clone())
    .bind(f.now)
    .bind(f.actor.clone())
    .bind(f.reason.clone())
    .bind(forfeited)
    .execute(&mut *conn)
    .await?;
    Ok(Forgotten {
        pseudonym: f.pseudonym.clone(),
        points_forfeited: forfeited,
        at: f.now,
        newly: true,
    })
}

/// Of `pseudonyms`, those of forgotten members.
pub async fn forgotten<DB>(
    conn: &mut DB::Connection,
    pseudonyms: &[String],
) -> Result<std::collections::HashSet<String>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut out = std::collections::HashSet::new();
    for chunk in pseudonyms.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(super::dialect::mark::<DB>).collect();
        let marks = marks.join(", ");
        let sql = format!("SELECT pseudonym FROM forgotten_members WHERE pseudonym IN ({marks})");
        let mut q = sqlx::query_scalar::<DB, String>(&sql);
        for p in chunk {
            q = q.bind(p.clone());
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}
