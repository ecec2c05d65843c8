//! Opening a store by its URL: SQLite for `sqlite:` and a path, PostgreSQL for `postgres:`.

use super::error::StoreError;
use super::seam::{BatchBackend, OpenBackend, Store};
use super::{postgres, sqlite};

/// Creates (if needed) and migrates the database at `url`, then closes every connection to it
/// (the bench's preload writes into it straight, and PostgreSQL copies it as a template).
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut c = sqlx::PgConnection::connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&mut c).await?;
        c.close().await?;
    } else {
        let mut c = sqlx::SqliteConnection::connect_with(&sqlite::options(url)?).await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut c).await?;
        c.close().await?;
    }
    Ok(())
}

/// Opens the store a database URL names: the reader shared by calls, and an opener per lane of
/// the writer (`lanes` on PostgreSQL; one on SQLite, whose file has one writer).
pub async fn open(
    url: &str,
    lanes: usize,
) -> Result<(std::sync::Arc<dyn Store>, Vec<OpenBackend>), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (store, lane) = postgres::open(url).await?;
        let writers = (0..lanes.max(1))
            .map(|_| {
                let open = lane.clone();
                Box::pin(async move { Ok(Box::new(open().await?) as Box<dyn BatchBackend>) })
                    as OpenBackend
            })
            .collect();
        return Ok((std::sync::Arc::new(store), writers));
    }
    let (store, writer) = sqlite::open(url).await?;
    let writer: OpenBackend =
        Box::pin(async move { Ok(Box::new(writer.await?) as Box<dyn BatchBackend>) });
    Ok((std::sync::Arc::new(store), vec![writer]))
}
