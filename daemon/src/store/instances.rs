//! The daemons of one database (`daemon_instances`): SQL once for both backends.

use super::error::StoreError;
use crate::ledger::Micros;

/// See [`super::seam::Store::heartbeat`].
pub async fn heartbeat<DB>(
    conn: &mut DB::Connection,
    id: &str,
    now: Micros,
    traffic: &str,
    live_after: Micros,
) -> Result<Vec<(String, String)>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    (String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    sqlx::query(
        "INSERT INTO daemon_instances (id, heartbeat_at, traffic) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, traffic = excluded.traffic",
    )
    .bind(id.to_string())
    .bind(now)
    .bind(traffic.to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM daemon_instances WHERE heartbeat_at < $1")
        .bind(now - 3_600_000_000)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as(
        "SELECT id, traffic FROM daemon_instances WHERE heartbeat_at > $1 ORDER BY id",
    )
    .bind(live_after)
    .fetch_all(&mut *conn)
    .await?)
}

/// See [`super::seam::Store::leave`].
pub async fn leave<DB>(conn: &mut DB::Connection, id: &str) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    String: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
{
    sqlx::query("DELETE FROM daemon_instances WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
