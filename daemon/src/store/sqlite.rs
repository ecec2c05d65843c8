//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk before any caller of its batch is answered. One connection writes batches (owned by the
//! writer task, so there is never a second batch writer to wait for), one more the rare writes
//! outside batches (the file's write lock serialises the two), a small pool reads. What SQLite
//! keeps of its own is here: its connection options, its WAL and the checkpoints that bound it.

use super::body::{SqlBackend, SqlStore};
use super::error::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection};
use std::str::FromStr;
use std::time::Duration;

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
        // Statement journals (every multi-row statement keeps one, to undo itself alone) in
        // memory, not in a temporary file written and synced beside the ledger.
        .pragma("temp_store", "MEMORY")
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

/// Opens (creating and migrating if needed) a SQLite ledger: the store now, and the future that
/// opens the writer's backend (awaited on the writer's own thread).
pub async fn open(
    url: &str,
) -> Result<
    (
        SqlStore<Sqlite>,
        impl std::future::Future<Output = Result<SqlBackend<Sqlite>, StoreError>> + Send + 'static,
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
    conn.close().await?;
    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone().read_only(true))
        .await?;
    // Rare writes (clearing runs, forgets, answers…): one connection, so that they queue here
    // rather than on the file's lock.
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(opts.clone())
        .await?;
    let mut wal = opts.get_filename().as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    let writer = async move {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // Its own file does not go away: no ping before each batch.
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // In frames, which are pages: the same bytes whatever the file's page size.
                    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                        .fetch_one(&mut *conn)
                        .await?;
                    let frames = WAL_RESTART_BYTES / page.max(512) as u64;
                    sqlx::query(&format!("PRAGMA wal_autocheckpoint = {frames}"))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(
                opts.clone()
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string()),
            )
            .await?;
        let checkpointer = SqliteConnection::connect_with(&opts).await?;
        tokio::spawn(checkpoint_loop(checkpointer, wal));
        Ok(SqlBackend::new(pool))
    };
    Ok((SqlStore::new(read, write), writer))
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
