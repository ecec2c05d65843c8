//! Retention: a member inactive longer than the retention period has its id replaced by a random
//! pseudonym in every table of the ledger, so the books stay exact (balances, breakage, every
//! settlement digest: settlements hold no member ids) while nothing links them to the id any more.
//! The same id arriving again is a new member. Written once for both backends.

use super::StoreError;
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
    for table in TABLES {
        sqlx::query(&format!(
            "UPDATE {table} SET member_id = $1 WHERE member_id = $2"
        ))
        .bind(p.clone())
        .bind(member.to_string())
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(sql::RECORD)
        .bind(p.clone())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(p)
}
