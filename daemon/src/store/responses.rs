//! Partners' answers to final settlements — acknowledged, or disputed with a reason — every one
//! kept in order, a partner's state being its last. SQL once for both backends; the API checks
//! that the settlement is final and that the caller answers only for itself.

use super::error::StoreError;
use crate::ledger::Micros;

/// One answer of a partner to a cycle's settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The cycle, `YYYY-MM-DD`.
    pub cycle: String,
    /// The partner answering.
    pub partner: String,
    /// `acknowledged` or `disputed`.
    pub state: String,
    /// Why.
    pub reason: String,
    /// The certificate that answered (`role/name`).
    pub by: String,
    /// The digest of the settlement answered.
    pub digest: String,
    /// When.
    pub at: Micros,
}

const COLUMNS: &str = "cycle, partner_id, state, reason, answered_by, digest, answered_at";

fn answer_of<DB>(r: &DB::Row) -> Result<Answer, sqlx::Error>
where
    DB: sqlx::Database,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    Ok(Answer {
        cycle: r.try_get(0)?,
        partner: r.try_get(1)?,
        state: r.try_get(2)?,
        reason: r.try_get(3)?,
        by: r.try_get(4)?,
        digest: r.try_get(5)?,
        at: r.try_get(6)?,
    })
}

/// Records `a` inside the caller's write transaction (which holds the table), unless it repeats
/// the partner's last answer (same state and reason): then that answer, unchanged, is the reply.
pub async fn answer<DB>(conn: &mut DB::Connection, a: &Answer) -> Result<Answer, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let last = sqlx::query(&format!(
        "SELECT {COLUMNS}, seq FROM settlement_responses WHERE cycle = $1 AND partner_id = $2 \
         ORDER BY seq DESC LIMIT 1"
    ))
    .bind(a.cycle.clone())
    .bind(a.partner.clone())
    .fetch_optional(&mut *conn)
    .await?;
    let seq = match &last {
        Some(r) => {
            let prev = answer_of::<DB>(r)?;
            if prev.state == a.state && prev.reason == a.reason {
                return Ok(prev);
            }
            r.try_get::<i64, _>(7)? + 1
        }
        None => 1,
    };
    sqlx::query(&format!(
        "INSERT INTO settlement_responses ({COLUMNS}, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(a.cycle.clone())
    .bind(a.partner.clone())
    .bind(a.state.clone())
    .bind(a.reason.clone())
    .bind(a.by.clone())
    .bind(a.digest.clone())
    .bind(a.at)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(a.clone())
}

/// Each partner's state for `cycle` (its last answer), by partner.
pub async fn states<DB>(conn: &mut DB::Connection, cycle: &str) -> Result<Vec<Answer>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM settlement_responses r WHERE cycle = $1 AND seq = \
         (SELECT MAX(x.seq) FROM settlement_responses x WHERE x.cycle = r.cycle AND x.partner_id = r.partner_id) \
         ORDER BY partner_id"
    ))
    .bind(cycle.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| answer_of::<DB>(r).map_err(StoreError::from))
        .collect()
}
