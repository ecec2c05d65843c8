//! Several daemons on one PostgreSQL database, and a database connection cut mid-batch.

use coalition_tests::*;
use coalitiond::client::connect;
use sqlx::Connection;
use std::time::Duration;
use tonic::Code;

async fn client_of(t: &TestDaemon, addr: &str, partner: &str) -> PartnerClient {
    PartnerClient::new(
        connect(addr, &t.partner_pem(partner))
            .await
            .expect("connect"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_never_overdraw_and_apply_retries_once() {
    if !postgres_available("two_daemons_never_overdraw_and_apply_retries_once").await {
        return;
    }
    let t = TestDaemon::start(Backend::Postgres).await;
    let second = t.start_another().await;
    let (a, b) = (t.addr.clone(), second.addr.to_string());
    let mut seed = client_of(&t, &a, "skyways").await;
    for i in 0..5 {
        seed.earn(earn_bonus(&format!("seed{i}"), "m1", 1_000))
            .await
            .unwrap();
    }
    let clients = [
        client_of(&t, &a, "bistro").await,
        client_of(&t, &b, "bistro").await,
        client_of(&t, &a, "freshmart").await,
        client_of(&t, &b, "freshmart").await,
    ];
    let mut tasks = Vec::new();
    for i in 0..1_000i64 {
        let mut c = clients[(i % 4) as usize].clone();
        let points = 1 + (i * 7919) % 19;
        tasks.push(tokio::spawn(async move {
            (points, c.burn(burn(&format!("b{i}"), "m1", points)).await)
        }));
    }
    let (mut applied, mut ok) = (0i64, 0i64);
    for task in tasks {
        let (points, result) = task.await.unwrap();
        match result {
            Ok(_) => {
                applied += points;
                ok += 1;
            }
            Err(e) => assert_eq!(reason(&e), "INSUFFICIENT_POINTS", "{e:?}"),
        }
    }
    let (balance, _) = t.balance("m1").await;
    assert!(balance >= 0, "overdrawn through two daemons: {balance}");
    assert_eq!(5_000 - balance, applied);
    assert!(ok > 0 && balance < 19);

    // 50 retries of one earn, split across both daemons, apply once.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = if i % 2 == 0 {
            client_of(&t, &a, "skyways").await
        } else {
            client_of(&t, &b, "skyways").await
        };
        tasks.push(tokio::spawn(async move {
            c.earn(earn_purchase("once", "m2", "50.00")).await
        }));
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(
            task.await
                .unwrap()
                .expect("a retry never fails")
                .into_inner()
                .receipt
                .unwrap(),
        );
    }
    assert!(
        receipts.windows(2).all(|w| w[0] == w[1]),
        "every retry gets the first answer"
    );
    assert_eq!(t.balance("m2").await, (50, 0));
    assert_eq!(t.transactions().await, 5 + ok + 1);
    second.shutdown().await.unwrap();
    t.assert_invariants().await;

    // Both daemons appended to one hash chain: every link follows the one before it, every
    // transaction is in exactly one link.
    let chain = t.daemon().store.verify_chain().await.unwrap();
    assert!(chain.ok(), "{:?}", chain.violations);
    assert_eq!(
        t.query_i64("SELECT CAST(SUM(transactions) AS BIGINT) FROM ledger_chain")
            .await,
        t.transactions().await
    );
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM transactions WHERE batch_id IS NULL")
            .await,
        0
    );
    assert_eq!(
        chain.links,
        t.query_i64("SELECT COUNT(*) FROM ledger_chain").await
    );
    // How many links depends on how the two writers batched (fewer under a loaded machine): at
    // least the two daemons' own.
    assert!(chain.links >= 2, "{} links", chain.links);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_batch_applies_nothing_of_it() {
    if !postgres_available("a_connection_killed_mid_batch_applies_nothing_of_it").await {
        return;
    }
    let mut t = TestDaemon::start(Backend::Postgres).await;
    // Restart with a pause between writing a batch and committing it, to cut the connection there.
    let path = t.dir.path().join("coalition.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "queue_depth = 16384",
        "queue_depth = 16384\npause_before_commit_ms = 400",
    );
    std::fs::write(&path, text).unwrap();
    t.config = coalitiond::config::Config::load(&path).unwrap();
    t.restart().await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("warm", "m1", 10)).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = air.clone();
        tasks.push(tokio::spawn(async move {
            (i, c.earn(earn_bonus(&format!("e{i}"), "m1", 1 + i)).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let db = t.pg.as_ref().unwrap();
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        // The lane whose batch is paused before its commit (the other lanes' connections idle).
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 \
         AND application_name = 'coalitiond-writer' AND state = 'idle in transaction'",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, vec![true], "one writer connection to cut");

    let (mut failed, mut succeeded) = (Vec::new(), Vec::new());
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match result {
            Ok(_) => succeeded.push(i),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert_eq!(reason(&e), "STORAGE_UNAVAILABLE");
                failed.push(i);
            }
        }
    }
    assert!(!failed.is_empty(), "the cut batch must fail");
    // Nothing of a failed call reached the ledger; everything of a successful one did.
    for &i in &failed {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM transactions WHERE partner_txn_id = $1")
                .bind(format!("e{i}"))
                .fetch_one(&mut sqlx::PgConnection::connect(&db.url).await.unwrap())
                .await
                .unwrap();
        assert_eq!(n, 0, "failed call e{i} was applied");
    }
    assert_eq!(t.transactions().await, 1 + succeeded.len() as i64);
    // Retrying the failed calls (same ids) applies each exactly once; retrying all changes nothing more.
    for round in 0..2 {
        let retries = (0..20).map(|i| {
            let mut c = air.clone();
            async move {
                c.earn(earn_bonus(&format!("e{i}"), "m1", 1 + i))
                    .await
                    .map_err(|e| (i, e))
            }
        });
        for r in futures::future::join_all(retries).await {
            r.unwrap_or_else(|(i, e)| panic!("round {round} e{i}: {e:?}"));
        }
    }
    assert_eq!(t.transactions().await, 21);
    assert_eq!(t.balance("m1").await, (10 + (1..=20).sum::<i64>(), 0));
    t.assert_invariants().await;
}

/// Calls of skyways spread evenly over `addrs` for `secs`: how many got through.
async fn flood(t: &TestDaemon, addrs: &[String], secs: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..(addrs.len() * 4) {
        let mut c = client_of(t, &addrs[i % addrs.len()], "skyways").await;
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while std::time::Instant::now() < deadline {
                match c
                    .get_balance(v1::GetBalanceRequest {
                        member_id: "m1".into(),
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

/// skyways' limit and traffic as `ops limits` shows them.
async fn skyways_limits(t: &TestDaemon) -> v1::LimitState {
    t.operator()
        .await
        .get_limits(v1::GetLimitsRequest {
            partner: "skyways".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .limits
        .remove(0)
}

/// Waits until the first daemon's `ops limits` view counts `n` live daemons.
async fn daemons_are(t: &TestDaemon, n: u32) {
    let started = std::time::Instant::now();
    loop {
        let l = skyways_limits(t).await;
        if l.daemons == n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not {n} daemons: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_limit_holds_across_three_daemons() {
    if !postgres_available("a_partners_limit_holds_across_three_daemons").await {
        return;
    }
    let t = TestDaemon::start_with(Backend::Postgres, |toml| {
        toml.replacen(
            "rate_limit = { per_second = 5000, burst = 10000 }",
            "rate_limit = { per_second = 20, burst = 20 }",
            1,
        )
    })
    .await;
    let second = t.start_another().await;
    let third = t.start_another().await;
    daemons_are(&t, 3).await;
    let addrs = [
        t.addr.clone(),
        second.addr.to_string(),
        third.addr.to_string(),
    ];
    // 20/s with a burst of 20 over 3 s lets through at most 20 + 3 × 20 = 80 (plus 20 %).
    let through = flood(&t, &addrs, 3).await;
    eprintln!("three daemons: {through} calls through in 3 s");
    assert!(
        (40..=96).contains(&through),
        "{through} calls in 3 s through three daemons, limit 20/s burst 20"
    );
    // ops limits sums the traffic of every daemon, as each publishes it on its next heartbeat
    // (a loaded machine may delay a heartbeat: wait for the sum, bounded).
    let started = std::time::Instant::now();
    loop {
        let allowed = skyways_limits(&t).await.allowed_1m;
        if allowed >= through {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ops limits sums the daemons' traffic: {allowed} < {through}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One daemon stops: the two left share the limit between them.
    third.shutdown().await.unwrap();
    daemons_are(&t, 2).await;
    let through = flood(&t, &addrs[..2], 3).await;
    eprintln!("two daemons: {through} calls through in 3 s");
    assert!(
        (40..=96).contains(&through),
        "{through} calls in 3 s through two daemons, limit 20/s burst 20"
    );
    second.shutdown().await.unwrap();
}

/// Issue 31, point 5: daemons that join while load is already flowing hold the shared limit from
/// their first call — each knows its peers from the database before it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_started_together_share_the_limit_from_their_first_second() {
    if !postgres_available("daemons_started_together_share_the_limit_from_their_first_second").await
    {
        return;
    }
    let t = TestDaemon::start_with(Backend::Postgres, |toml| {
        toml.replacen(
            "rate_limit = { per_second = 5000, burst = 10000 }",
            "rate_limit = { per_second = 20, burst = 20 }",
            1,
        )
    })
    .await;
    // Two more started at the same instant; the load goes to all three the moment they listen.
    let (second, third) = tokio::join!(t.start_another(), t.start_another());
    let addrs = [
        t.addr.clone(),
        second.addr.to_string(),
        third.addr.to_string(),
    ];
    let through = flood(&t, &addrs, 3).await;
    eprintln!("three daemons from their start: {through} calls through in 3 s");
    // One shared limit: 20 + 3 × 20 = 80 in 3 s (plus 20 %); a daemon granting the whole limit
    // before hearing its peers let 123 through.
    assert!(
        (40..=96).contains(&through),
        "{through} calls in the first 3 s of three daemons, limit 20/s burst 20"
    );
    // A rolling restart: one stops, a new one starts and serves at once.
    third.shutdown().await.unwrap();
    daemons_are(&t, 2).await;
    let fourth = t.start_another().await;
    let addrs = [
        t.addr.clone(),
        second.addr.to_string(),
        fourth.addr.to_string(),
    ];
    let through = flood(&t, &addrs, 3).await;
    eprintln!("after a restart: {through} calls through in 3 s");
    assert!(
        (40..=96).contains(&through),
        "{through} calls in 3 s after a rolling restart, limit 20/s burst 20"
    );
    second.shutdown().await.unwrap();
    fourth.shutdown().await.unwrap();
}

/// A daemon stopped in order has left the database's daemons when its `shutdown` returns: its
/// peers stop sharing a partner's limit with it at once, not when its heartbeat ages out. Its
/// announcement used to be removed by a task that nothing waited for: a process that ended right
/// after `shutdown` could stay counted for three more seconds, and a test daemon's removal ran
/// into the test's `DROP DATABASE`. Here the table is held locked while the daemon stops, so that
/// its removal cannot have finished early by luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_in_order_has_left_when_its_shutdown_returns() {
    if !postgres_available("a_daemon_stopped_in_order_has_left_when_its_shutdown_returns").await {
        return;
    }
    let t = TestDaemon::start(Backend::Postgres).await;
    let second = t.start_another().await;
    daemons_are(&t, 2).await;
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM daemon_instances").await,
        2
    );
    // Writes to the table wait (reads do not) until the lock is let go, 1.5 s from now.
    let mut lock = sqlx::PgConnection::connect(&t.config.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE daemon_instances IN EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    });
    second.shutdown().await.unwrap();
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM daemon_instances").await,
        1,
        "the stopped daemon left before its shutdown returned"
    );
    release.await.unwrap();
    daemons_are(&t, 1).await;
}
