//! The command line: the demo runs to the end, and `coalitiond audit` checks a database file and
//! fails on a tampered one.

use clap::Parser;
use coalition_tests::*;
use coalitiond::cli::{run, Cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::parse_from(["coalitiond", "demo", "--dir", dir.path().to_str().unwrap()]);
    run(cli).await.expect("demo finishes with its invariants holding");
    assert!(dir.path().join("coalition.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_command_checks_a_database_file() {
    let mut t = TestDaemon::start(Backend::Sqlite).await;
    let mut air = t.partner("skyways").await;
    let mut food = t.partner("bistro").await;
    air.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    food.burn(burn("f1", "m1", 40)).await.unwrap();
    t.stop().await;
    let config = t.dir.path().join("coalition.toml");
    let audit = || Cli::parse_from(["coalitiond", "audit", "--config", config.to_str().unwrap()]);
    run(audit()).await.expect("a consistent ledger passes");

    // Tamper with one lot behind the daemon's back: the audit must notice.
    let url = t.config.database_url.clone();
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("UPDATE lots SET points_left = points_left + 1").execute(&mut conn).await.unwrap();
    drop(conn);
    let err = run(audit()).await.expect_err("a tampered ledger fails the audit");
    assert!(err.to_string().contains("invariants"), "{err}");
}
