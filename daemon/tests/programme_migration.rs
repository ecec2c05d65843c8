//! Migration 0012 moves members' programme state from its four tables (tiers, qualifying days,
//! campaign grants, stamp cards) into `members.programme`, on both backends: a database at
//! migration 0011 with state in every table reads back the same after the migration.

use coalitiond::programme::Ladder;
use coalitiond::store::programme::state_of;
use sqlx::migrate::Migrator;
use std::borrow::Cow;

mod common;

const DAY: i64 = 86_400_000_000;
/// 2026-06-01T00:00:00Z, day 20605.
const T0: i64 = 1_780_272_000_000_000;

/// The migrator cut at `version`.
fn up_to(mut m: Migrator, version: i64) -> Migrator {
    m.migrations = Cow::Owned(
        m.migrations
            .iter()
            .filter(|x| x.version <= version)
            .cloned()
            .collect(),
    );
    m
}

/// State in every old table: `gold` with two qualifying days (one zero), a grant, two cards;
/// `card-only` with a card; `plain` with nothing.
const OLD_STATE: &[&str] = &[
    "INSERT INTO members (member_id, first_seen) VALUES ('gold', 1), ('card-only', 1), ('plain', 1)",
    "INSERT INTO member_tiers (member_id, tier, since, review_at) VALUES ('gold', 'gold', 1780272000000000, 1811808000000000)",
    "INSERT INTO qualifying (member_id, day, points) VALUES ('gold', 20605, 6000), ('gold', 20606, 0), ('gold', 20600, 250)",
    "INSERT INTO campaign_grants (campaign_id, member_id, points) VALUES ('double', 'gold', 400), ('gone', 'gold', 0)",
    "INSERT INTO stamp_cards (member_id, partner_id, stamps, started_at) VALUES ('gold', 'bistro', 3, 5), ('gold', 'cafe', -1, 6), ('card-only', 'bistro', 9, 7)",
];

async fn check<DB>(pool: &sqlx::Pool<DB>)
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    (String, Option<String>): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT member_id, programme FROM members ORDER BY member_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let text = |m: &str| rows.iter().find(|r| r.0 == m).unwrap().1.clone();
    assert_eq!(text("plain"), None, "a member without state keeps none");
    let ladder = Ladder::default_ladder();
    let now = T0 + DAY;
    let gold = state_of(text("gold").as_deref(), Some(&ladder), now).unwrap();
    assert_eq!(ladder.tiers[gold.tier_index()].name, "gold");
    let t = gold.tier.clone().unwrap();
    assert_eq!(
        (t.since, t.review_at),
        (1_780_272_000_000_000, 1_811_808_000_000_000)
    );
    assert_eq!(
        gold.days.iter().map(|(d, p)| (*d, *p)).collect::<Vec<_>>(),
        vec![(20600, 250), (20605, 6000)]
    );
    assert_eq!(gold.qualifying_at(&ladder, now), 6250);
    assert_eq!(gold.granted.get("double"), Some(&400));
    assert_eq!(gold.granted.len(), 1, "zero grants are not carried");
    assert_eq!(
        gold.cards
            .iter()
            .map(|(p, c)| (p.as_str(), c.stamps, c.started_at))
            .collect::<Vec<_>>(),
        vec![("bistro", 3, 5), ("cafe", -1, 6)]
    );
    let card = state_of(text("card-only").as_deref(), Some(&ladder), now).unwrap();
    assert_eq!(card.tier, None);
    assert_eq!(card.cards["bistro"].stamps, 9);
    for table in [
        "member_tiers",
        "qualifying",
        "campaign_grants",
        "stamp_cards",
    ] {
        assert!(
            sqlx::query(&format!("SELECT 1 FROM {table}"))
                .fetch_all(pool)
                .await
                .is_err(),
            "{table} is dropped"
        );
    }
}

#[tokio::test]
async fn programme_state_moves_to_the_member_row_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("coalition-mig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.db");
    let _ = std::fs::remove_file(&path);
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    up_to(sqlx::migrate!("./migrations/sqlite"), 11)
        .run(&pool)
        .await
        .unwrap();
    for sql in OLD_STATE {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .unwrap();
    check(&pool).await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn programme_state_moves_to_the_member_row_on_postgres() {
    let name = format!("coalition_mig_{}", std::process::id());
    let Some((url, mut c)) = common::postgres_database(&name).await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    up_to(sqlx::migrate!("./migrations/postgres"), 11)
        .run(&pool)
        .await
        .unwrap();
    for sql in OLD_STATE {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .unwrap();
    check(&pool).await;
    pool.close().await;
    common::drop_database(&mut c, &name).await;
}
