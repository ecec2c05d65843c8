//! `bench --preload`: a ledger of years before the timed phases, written straight into the database
//! with a few `INSERT … SELECT` statements (not through the API), so that the bench measures the
//! write path on a file or database the size of a coalition's, not on an empty one.
//!
//! The shape, for `members` N and `transactions` M (defaults 1M and 10M):
//! - **frequent members** (`bench-member-0` … `bench-member-{F-1}`, F = N / 200): 1,000 earns each,
//!   all still open — the members who hold the most lots, and the ones `--members F` or fewer hits;
//! - **the rest**: the remaining transactions round-robin, in rounds of four: three earns, then a
//!   burn that spends the whole lot of the round's first earn (one allocation), so that about a
//!   third of their lots are closed and every burn has its allocation;
//! - ids grow with time over the last 700 days, so lots expire (730 days) spread over the next two
//!   years; partners skyways, freshmart and bistro in turn; cycle totals and the gross matrix as the
//!   writer would have kept them; each member's row with its first earn.
//!
//! 1 % of members with 1,000 lots would take every one of 10M transactions; F is 0.5 %.
//! Secondary indexes are dropped for the load and built again after it (faster than random
//! inserts). A cache keeps one generated ledger per (N, M) and copies it for each run: a file copy
//! on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL.

use anyhow::Context as _;
use sqlx::Connection;
use std::path::Path;
use std::time::Instant;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Members.
    pub members: u64,
    /// Transactions.
    pub transactions: u64,
}

impl Shape {
    /// Frequent members.
    fn frequent(&self) -> u64 {
        (self.members / 200).max(1)
    }
    /// Earns of each frequent member: 1,000, or fewer if they would take more than half of the
    /// transactions.
    fn lots_each(&self) -> u64 {
        1000.min(self.transactions / 2 / self.frequent()).max(1)
    }
    fn name(&self) -> String {
        format!("preload_v6_{}_{}", self.members, self.transactions)
    }
}

/// The numbers every statement shares, inlined (integers only).
struct Numbers {
    m: u64,
    b: u64,
    f: u64,
    r: u64,
    t0: i64,
    step: i64,
}

fn numbers(s: Shape, now: i64) -> anyhow::Result<Numbers> {
    let f = s.frequent();
    let b = f * s.lots_each();
    anyhow::ensure!(
        s.members > f && s.transactions > b,
        "--preload-members {} and --preload-transactions {} leave no room for the other members",
        s.members,
        s.transactions
    );
    let span: i64 = 700 * 86_400 * 1_000_000;
    Ok(Numbers {
        m: s.transactions,
        b,
        f,
        r: s.members - f,
        t0: now - span,
        step: span / s.transactions as i64,
    })
}

/// The generated transactions, as a SELECT over `n(i)` (1..=M), in either dialect.
fn transactions_select(n: &Numbers, postgres: bool) -> String {
    let Numbers {
        b, f, r, t0, step, ..
    } = *n;
    let burn = format!("(i > {b} AND ((i - {b} - 1) / {r}) % 4 = 3)");
    let cycle = if postgres {
        format!(
            "to_char(to_timestamp(({t0} + {step} * i) / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        )
    } else {
        format!("date(({t0} + {step} * i) / 1000000, 'unixepoch')")
    };
    let hash = if postgres { "'\\x00'::bytea" } else { "x'00'" };
    format!(
        "SELECT i, CASE i % 3 WHEN 0 THEN 'skyways' WHEN 1 THEN 'freshmart' ELSE 'bistro' END, \
         'preload-' || i, CASE WHEN {burn} THEN 'burn' ELSE 'earn' END, \
         'bench-member-' || CASE WHEN i <= {b} THEN (i - 1) % {f} ELSE {f} + (i - {b} - 1) % {r} END, \
         CASE WHEN {burn} THEN 10 + ((i - 3 * {r}) % 90) ELSE 10 + i % 90 END, 0, {hash}, 0, '', 0, 0, \
         {t0} + {step} * i, {cycle}"
    )
}

const TXN_COLUMNS: &str = "id, partner_id, partner_txn_id, kind, member_id, points, reversed_points, request_hash, \
    balance_after, slices, debt_created, debt_repaid, accepted_at, cycle";

/// The statements after the transactions: lots, allocations, issuance, members, totals, matrix.
fn rest(n: &Numbers, postgres: bool) -> Vec<String> {
    let Numbers { m, b, r, .. } = *n;
    let expiry: i64 = 730 * 86_400 * 1_000_000;
    vec![
        format!(
            "INSERT INTO lots (id, member_id, issuer, points, points_left, reversed, expired, earned_at, expires_at) \
             SELECT id, member_id, partner_id, points, \
             CASE WHEN id > {b} AND ((id - {b} - 1) / {r}) % 4 = 0 AND id + 3 * {r} <= {m} THEN 0 ELSE points END, \
             0, 0, accepted_at, accepted_at + {expiry} FROM transactions WHERE kind = 'earn'"
        ),
        format!(
            "INSERT INTO allocations (txn_id, seq, lot_id, member_id, issuer, redeemer, points, rate, accepted_at, cycle) \
             SELECT t.id, 0, t.id - 3 * {r}, t.member_id, l.issuer, t.partner_id, t.points, \
             CASE t.partner_id WHEN 'skyways' THEN 0.010 WHEN 'freshmart' THEN 0.008 ELSE 0.012 END, t.accepted_at, t.cycle \
             FROM transactions t JOIN lots l ON l.id = t.id - 3 * {r} WHERE t.kind = 'burn'"
        ),
        // The dev setup's fees: skyways 0.0005 per point issued, the others none.
        format!(
            "INSERT INTO issuance (txn_id, cycle, issuer, fee_rate, points) \
             SELECT id, cycle, partner_id, CASE partner_id WHEN 'skyways' THEN {} ELSE {} END, points \
             FROM transactions WHERE kind = 'earn'",
            if postgres { "0.0005" } else { "'0.0005'" },
            if postgres { "0" } else { "'0'" },
        ),
        "INSERT INTO members (member_id, first_seen, open_points) \
         SELECT member_id, MIN(earned_at), SUM(points_left) FROM lots GROUP BY member_id"
            .to_string(),
        // Each member's kept activity, as the writer keeps it.
        crate::store::report::BACKFILL[0].to_string(),
        crate::store::report::BACKFILL[1].to_string(),
        crate::store::report::BACKFILL[2].to_string(),
        crate::store::report::BACKFILL[3].to_string(),
        // Nine members in ten agreed to analytics (programme reports count only those).
        format!(
            "INSERT INTO consents (member_id, purpose, scope, granted, captured_by, captured_at) \
             SELECT member_id, 'analytics', '', {}, 'bench', first_seen FROM members \
             WHERE substr(member_id, length(member_id), 1) <> '7'",
            if postgres { "true" } else { "1" },
        ),
        "INSERT INTO cycle_totals (cycle, partner_id, kind, transactions, points) \
         SELECT cycle, partner_id, kind, COUNT(*), SUM(points) FROM transactions GROUP BY cycle, partner_id, kind"
            .to_string(),
        "INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations) \
         SELECT cycle, issuer, redeemer, CAST(rate AS TEXT), SUM(points), COUNT(*) FROM allocations \
         GROUP BY cycle, issuer, redeemer, CAST(rate AS TEXT)"
            .to_string(),
        // The history is loaded, not committed by batches: it predates the hash chain.
        "UPDATE ledger_chain_head SET before_chain_through = (SELECT COALESCE(MAX(id), 0) FROM transactions) \
         WHERE id = 1"
            .to_string(),
    ]
}

const TABLES: &str = "'transactions', 'lots', 'allocations', 'members'";

/// Generates the ledger into the migrated, empty SQLite file at `url`.
async fn generate_sqlite(url: &str, n: &Numbers) -> anyhow::Result<()> {
    let mut c = sqlx::SqliteConnection::connect(url).await?;
    // One transaction of gigabytes: a rollback journal keeps only the pages it overwrites (few,
    // in an empty file), where the WAL would take a copy of every page written.
    for p in [
        "PRAGMA journal_mode = DELETE",
        "PRAGMA synchronous = OFF",
        "PRAGMA cache_size = -1048576",
    ] {
        sqlx::query(p).execute(&mut c).await?;
    }
    let indexes: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({TABLES})"
    ))
    .fetch_all(&mut c)
    .await?;
    let mut tx = c.begin().await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {name}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
         INSERT INTO transactions ({TXN_COLUMNS}) {} FROM n",
        n.m,
        transactions_select(n, false)
    ))
    .execute(&mut *tx)
    .await?;
    for s in rest(n, false) {
        sqlx::query(&s).execute(&mut *tx).await?;
    }
    for (_, sql) in &indexes {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(&mut c).await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut c)
        .await?;
    c.close().await?;
    Ok(())
}

/// Generates the ledger into the migrated, empty PostgreSQL database at `url`.
async fn generate_postgres(url: &str, n: &Numbers) -> anyhow::Result<()> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut c)
        .await?;
    sqlx::query("SET maintenance_work_mem = '512MB'")
        .execute(&mut c)
        .await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() \
         AND tablename IN ({TABLES}) AND indexname NOT IN (SELECT conname FROM pg_constraint)"
    ))
    .fetch_all(&mut c)
    .await?;
    let mut tx = c.begin().await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {name}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!(
        "INSERT INTO transactions ({TXN_COLUMNS}) {} FROM generate_series(1, {}::bigint) AS i",
        transactions_select(n, true),
        n.m
    ))
    .execute(&mut *tx)
    .await?;
    for s in rest(n, true) {
        sqlx::query(&s).execute(&mut *tx).await?;
    }
    for (_, sql) in &indexes {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    sqlx::query("VACUUM ANALYZE").execute(&mut c).await?;
    c.close().await?;
    Ok(())
}

/// Fills the bench's database `url` with the preloaded ledger of `shape`, from the cache folder
/// `cache` (SQLite) or a template database on the same server (PostgreSQL), generating it there
/// first if it is not yet there.
pub async fn preload(url: &str, shape: Shape, cache: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let now = crate::clock::Clock::default().now();
    let n = numbers(shape, now)?;
    let name = shape.name();
    let mut generated = false;
    if url.starts_with("postgres") {
        let (server, _) = url
            .rsplit_once('/')
            .context("a PostgreSQL URL ends in /<database>")?;
        let bench_db = url.rsplit('/').next().unwrap_or_default().to_string();
        let admin = format!("{server}/postgres");
        let mut a = sqlx::PgConnection::connect(&admin).await?;
        let cached: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut a)
                .await?;
        if cached.is_none() {
            // Generated under another name and renamed once complete, so that a run cut short
            // (or a full disk) never leaves a template that looks cached and holds nothing.
            let partial = format!("{name}_partial");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {partial} WITH (FORCE)"))
                .execute(&mut a)
                .await?;
            sqlx::query(&format!("CREATE DATABASE {partial}"))
                .execute(&mut a)
                .await?;
            let template = format!("{server}/{partial}");
            crate::store::migrate(&template).await?;
            generate_postgres(&template, &n).await?;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&partial)
            .execute(&mut a)
            .await?;
            sqlx::query(&format!("ALTER DATABASE {partial} RENAME TO {name}"))
                .execute(&mut a)
                .await?;
            generated = true;
        }
        sqlx::query(&format!("DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)"))
            .execute(&mut a)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {bench_db} TEMPLATE {name}"))
            .execute(&mut a)
            .await?;
        // The ids the writer hands out continue after the preloaded ones.
        let mut b = sqlx::PgConnection::connect(url).await?;
        sqlx::query("SELECT setval('transaction_ids', (SELECT MAX(id) FROM transactions))")
            .execute(&mut b)
            .await?;
        b.close().await?;
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .context("a SQLite URL starts with sqlite://")?;
        std::fs::create_dir_all(cache)?;
        let cached = cache.join(format!("{name}.db"));
        if !cached.exists() {
            let partial = cache.join(format!("{name}.partial.db"));
            let _ = std::fs::remove_file(&partial);
            let partial_url = format!("sqlite://{}", partial.display());
            crate::store::migrate(&partial_url).await?;
            generate_sqlite(&partial_url, &n).await?;
            std::fs::rename(&partial, &cached)?;
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{side}", partial.display()));
            }
            generated = true;
        }
        std::fs::copy(&cached, path)?;
    }
    println!(
        "preload: {} members ({} frequent with {} open lots each), {} transactions over 700 days; {} in {:.0} s",
        shape.members,
        n.f,
        shape.lots_each(),
        shape.transactions,
        if generated {
            "generated and copied"
        } else {
            "copied from the cache"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
