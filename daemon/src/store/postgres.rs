//! PostgreSQL: for production and for several daemons sharing one database. Each daemon has its own
//! batch writer (group commit, as on SQLite); between daemons, a batch locks the members it touches
//! (sorted, so batches never deadlock each other) and reads their lots only after the lock
//! ([`super::dialect::Dialect::lock_members`]). Serialization failures, deadlocks and unique-key
//! races (two daemons taking the same new member or the same retried transaction id) roll the batch
//! back and run it again, inside the daemon. What PostgreSQL keeps of its own is here: its pools.

use super::body::{SqlBackend, SqlStore};
use super::error::StoreError;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

fn options(url: &str, application: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?.application_name(application))
}

/// What opens one lane of the writer: its own connection (a pool of one, so that a connection
/// lost is opened again).
pub type OpenLane = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<SqlBackend<Postgres>, StoreError>> + Send>,
        > + Send
        + Sync,
>;

/// Connects, migrates, and returns the store and what opens each lane of the writer.
pub async fn open(url: &str) -> Result<(SqlStore<Postgres>, OpenLane), StoreError> {
    let read = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(url, "coalitiond-reader")?)
        .await?;
    // Several daemons may start at once: the migrator takes an advisory lock of its own.
    sqlx::migrate!("./migrations/postgres").run(&read).await?;
    let write_options = options(url, "coalitiond-writer")?;
    let lane: OpenLane = std::sync::Arc::new(move || {
        let options = write_options.clone();
        Box::pin(async move {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .test_before_acquire(true)
                .connect_with(options)
                .await?;
            Ok(SqlBackend::new(pool))
        })
    });
    // Rare writes share the read pool: PostgreSQL serialises what must be, by its locks.
    Ok((SqlStore::new(read.clone(), read), lane))
}
