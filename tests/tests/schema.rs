//! The two backends' migrations build the same schema: the same tables, the same columns in each,
//! and the same indexes on the same columns. Migrations stay one folder per backend (their SQL
//! types differ); this test keeps them from drifting apart.

use coalition_tests::*;
use sqlx::Connection;
use std::collections::BTreeSet;

/// (table, column) pairs, and (table, index name, its columns in order), of one schema.
#[derive(Debug, Default)]
struct Schema {
    columns: BTreeSet<(String, String)>,
    indexes: BTreeSet<(String, String, String)>,
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let mut s = Schema::default();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for t in &tables {
        let cols: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
            .bind(t)
            .fetch_all(&mut c)
            .await
            .unwrap();
        s.columns
            .extend(cols.into_iter().map(|col| (t.clone(), col)));
    }
    // Indexes made by CREATE INDEX (not those SQLite makes for a key or UNIQUE constraint).
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for (t, i) in indexes {
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT COALESCE(name, '<expression>') FROM pragma_index_info(?) ORDER BY seqno",
        )
        .bind(&i)
        .fetch_all(&mut c)
        .await
        .unwrap();
        s.indexes.insert((t, i, cols.join(",")));
    }
    s
}

async fn postgres_schema(url: &str) -> Schema {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let mut s = Schema::default();
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    s.columns.extend(cols);
    // Indexes made by CREATE INDEX (not those behind a key or UNIQUE constraint), with their
    // key columns in order (an expression as `<expression>`, as on SQLite).
    let indexes: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, \
         string_agg(COALESCE(a.attname::text, '<expression>'), ',' ORDER BY k.ord) \
         FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public' \
         CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) \
         LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
         WHERE NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) \
         AND t.relname NOT LIKE '_sqlx%' \
         GROUP BY t.relname, i.relname",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    s.indexes.extend(indexes);
    s
}

/// What `a` has that `b` has not.
fn only<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> Vec<T> {
    a.difference(b).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_migrate_to_the_same_tables_columns_and_indexes() {
    if !postgres_available("schema::both_backends_migrate_to_the_same_tables_columns_and_indexes")
        .await
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("schema.db").display());
    coalitiond::store::migrate(&sqlite_url).await.unwrap();
    let pg = PgDatabase::create().await;
    coalitiond::store::migrate(&pg.url).await.unwrap();
    let (lite, post) = (
        sqlite_schema(&sqlite_url).await,
        postgres_schema(&pg.url).await,
    );
    assert!(lite.columns.len() > 100, "{} columns", lite.columns.len());
    assert!(lite.indexes.len() > 10, "{} indexes", lite.indexes.len());
    assert_eq!(
        (
            only(&lite.columns, &post.columns),
            only(&post.columns, &lite.columns)
        ),
        (vec![], vec![]),
        "columns only on SQLite, only on PostgreSQL"
    );
    assert_eq!(
        (
            only(&lite.indexes, &post.indexes),
            only(&post.indexes, &lite.indexes)
        ),
        (vec![], vec![]),
        "indexes (table, name, columns) only on SQLite, only on PostgreSQL"
    );
}
