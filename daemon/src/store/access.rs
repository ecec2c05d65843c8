//! The access log: who read which member's data, when and why — append-only, each entry chained
//! to the one before by SHA-256, written once for both backends and checked by the audit.

use super::error::StoreError;
use crate::ledger::Micros;
use sha2::{Digest, Sha256};

/// One read of a member's data by a finance or operator identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// When.
    pub at: Micros,
    /// `finance` or `operator`.
    pub role: String,
    /// The certificate's name.
    pub who: String,
    /// The member read.
    pub member: String,
    /// What was read (the RPC).
    pub action: String,
    /// Why, as given by the caller (may be empty).
    pub reason: String,
}

/// The hash of entry `seq` chained to `previous`: SHA-256 over an unambiguous JSON encoding.
pub fn chain_hash(seq: i64, e: &AccessEntry, previous: &str) -> String {
    let canonical = serde_json::json!([
        seq, e.at, e.role, e.who, e.member, e.action, e.reason, previous
    ])
    .to_string();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// SQL of the access log (the same on both backends).
pub mod sql {
    /// The last entry.
    pub const LAST: &str = "SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1";
    /// Appends one.
    pub const APPEND: &str = "INSERT INTO access_log (seq, at, role, who, member_id, action, reason, previous_hash, hash) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    /// Every entry, in order.
    pub const ALL: &str = "SELECT seq, at, role, who, member_id, action, reason, previous_hash, hash \
        FROM access_log ORDER BY seq";
    /// Where the chain starts.
    pub const ANCHOR: &str = "SELECT pruned_through, hash FROM access_log_anchor WHERE id = 1";
    /// The newest entry older than $1 (the last one a prune removes).
    pub const LAST_OLDER: &str =
        "SELECT seq, hash FROM access_log WHERE at < $1 ORDER BY seq DESC LIMIT 1";
    /// Removes entries up to $1.
    pub const PRUNE: &str = "DELETE FROM access_log WHERE seq <= $1";
    /// Moves the anchor.
    pub const MOVE_ANCHOR: &str =
        "UPDATE access_log_anchor SET pruned_through = $1, hash = $2 WHERE id = 1";
}

/// Removes entries older than `cutoff` (the log is kept for a configured period), inside the
/// caller's write transaction, and moves the anchor the chain is checked from. Returns how many.
pub async fn prune<DB>(conn: &mut DB::Connection, cutoff: Micros) -> Result<u64, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let Some(last) = sqlx::query(sql::LAST_OLDER)
        .bind(cutoff)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(0);
    };
    let (seq, hash): (i64, String) = (last.try_get(0)?, last.try_get(1)?);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_log WHERE seq <= $1")
        .bind(seq)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(sql::PRUNE)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    sqlx::query(sql::MOVE_ANCHOR)
        .bind(seq)
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(n as u64)
}

/// Appends `e` inside the caller's write transaction (which must hold the log exclusively).
pub async fn append<DB>(conn: &mut DB::Connection, e: &AccessEntry) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let last = sqlx::query(sql::LAST).fetch_optional(&mut *conn).await?;
    let (seq, previous) = match last {
        Some(r) => (r.try_get::<i64, _>(0)? + 1, r.try_get::<String, _>(1)?),
        // Empty (or pruned to nothing): go on from the anchor.
        None => {
            let a = sqlx::query(sql::ANCHOR).fetch_one(&mut *conn).await?;
            (a.try_get::<i64, _>(0)? + 1, a.try_get::<String, _>(1)?)
        }
    };
    let hash = chain_hash(seq, e, &previous);
    sqlx::query(sql::APPEND)
        .bind(seq)
        .bind(e.at)
        .bind(e.role.clone())
        .bind(e.who.clone())
        .bind(e.member.clone())
        .bind(e.action.clone())
        .bind(e.reason.clone())
        .bind(previous)
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Recomputes the chain: every entry follows the one before it, numbered without gaps. Returns
/// what does not hold.
pub async fn verify<DB>(conn: &mut DB::Connection) -> Result<Vec<String>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let mut violations = Vec::new();
    let anchor = sqlx::query(sql::ANCHOR).fetch_one(&mut *conn).await?;
    let mut expected_seq = anchor.try_get::<i64, _>(0)? + 1;
    let mut previous: String = anchor.try_get(1)?;
    for r in sqlx::query(sql::ALL).fetch_all(&mut *conn).await? {
        let seq: i64 = r.try_get(0)?;
        let e = entry_of::<DB>(&r)?;
        let stored_previous: String = r.try_get(7)?;
        let hash: String = r.try_get(8)?;
        if seq != expected_seq {
            violations.push(format!(
                "access log: entry {seq} follows entry {} (an entry is missing)",
                expected_seq - 1
            ));
        }
        if stored_previous != previous || chain_hash(seq, &e, &stored_previous) != hash {
            violations.push(format!(
                "access log: entry {seq} does not follow the chain (changed or reordered)"
            ));
        }
        previous = hash;
        expected_seq = seq + 1;
    }
    Ok(violations)
}

/// Replaces `old` by `new` in the log's entries (a member forgotten on request) and re-chains
/// every entry from the first one changed, inside the caller's write transaction (which holds the
/// log exclusively). The entries before it keep their hashes; returns the first sequence number
/// re-chained, if any.
pub async fn rename_member<DB>(
    conn: &mut DB::Connection,
    old: &str,
    new: &str,
) -> Result<Option<i64>, StoreError>
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
    let first: Option<i64> =
        sqlx::query_scalar("SELECT MIN(seq) FROM access_log WHERE member_id = $1")
            .bind(old.to_string())
            .fetch_one(&mut *conn)
            .await?;
    let Some(first) = first else {
        return Ok(None);
    };
    sqlx::query("UPDATE access_log SET member_id = $1 WHERE member_id = $2")
        .bind(new.to_string())
        .bind(old.to_string())
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query(
        "SELECT seq, at, role, who, member_id, action, reason, previous_hash FROM access_log \
         WHERE seq >= $1 ORDER BY seq",
    )
    .bind(first)
    .fetch_all(&mut *conn)
    .await?;
    let mut previous: Option<String> = None;
    for r in rows {
        let seq: i64 = r.try_get(0)?;
        let e = entry_of::<DB>(&r)?;
        // The first entry re-chained follows its unchanged predecessor.
        let prev = match previous.take() {
            Some(p) => p,
            None => r.try_get(7)?,
        };
        let hash = chain_hash(seq, &e, &prev);
        sqlx::query("UPDATE access_log SET previous_hash = $1, hash = $2 WHERE seq = $3")
            .bind(prev)
            .bind(hash.clone())
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        previous = Some(hash);
    }
    Ok(Some(first))
}

/// An entry from a row whose columns 1 to 6 are `at, role, who, member_id, action, reason`.
fn entry_of<DB>(r: &DB::Row) -> Result<AccessEntry, sqlx::Error>
where
    DB: sqlx::Database,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    Ok(AccessEntry {
        at: r.try_get(1)?,
        role: r.try_get(2)?,
        who: r.try_get(3)?,
        member: r.try_get(4)?,
        action: r.try_get(5)?,
        reason: r.try_get(6)?,
    })
}
