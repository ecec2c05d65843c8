//! Many calls at once on one member: no overdraft, no double application.

use coalition_tests::*;
use tonic::Code;

backends!(
    concurrent_burns_never_overdraw,
    concurrent_retries_apply_once
);

async fn concurrent_burns_never_overdraw(b: Backend) {
    let t = TestDaemon::start(b).await;
    let mut air = t.partner("skyways").await;
    for i in 0..5 {
        air.earn(earn_bonus(&format!("a{i}"), "m1", 1_000))
            .await
            .unwrap();
    }
    let clients = [
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    ];
    let mut tasks = Vec::new();
    for i in 0..1_000i64 {
        let mut c = clients[(i % 3) as usize].clone();
        let points = 1 + (i * 7919) % 19; // 1..=19, about 10 on average: ~10,000 asked of 5,000
        tasks.push(tokio::spawn(async move {
            (points, c.burn(burn(&format!("b{i}"), "m1", points)).await)
        }));
    }
    let (mut applied, mut ok, mut refused) = (0i64, 0, 0);
    for task in tasks {
        let (points, result) = task.await.unwrap();
        match result {
            Ok(r) => {
                let r = r.into_inner().receipt.unwrap();
                assert!(r.balance_after >= 0, "overdrawn: {r:?}");
                applied += points;
                ok += 1;
            }
            Err(e) => {
                assert_eq!(
                    (e.code(), reason(&e).as_str()),
                    (Code::FailedPrecondition, "INSUFFICIENT_POINTS"),
                    "{e:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        ok > 0 && refused > 0,
        "the test must both drain and overdraw-attempt: ok {ok}, refused {refused}"
    );
    let (balance, debt) = t.balance("m1").await;
    assert_eq!(debt, 0);
    assert!(balance >= 0);
    assert_eq!(
        5_000 - balance,
        applied,
        "the balance dropped by exactly the burns that were applied"
    );
    assert!(
        balance < 19,
        "burns were refused while {balance} points were left"
    );
    assert_eq!(t.transactions().await, 5 + ok);
    t.assert_invariants().await;
}

async fn concurrent_retries_apply_once(b: Backend) {
    let t = TestDaemon::start(b).await;
    let clients = [t.partner("skyways").await, t.partner("skyways").await];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = clients[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            c.earn(earn_purchase("once", "m1", "123.45")).await
        }));
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(
            task.await
                .unwrap()
                .expect("every retry succeeds")
                .into_inner()
                .receipt
                .unwrap(),
        );
    }
    assert!(
        receipts.windows(2).all(|w| w[0] == w[1]),
        "every retry gets the first answer"
    );
    assert_eq!(receipts[0].points, 123);
    assert_eq!(t.balance("m1").await, (123, 0));
    assert_eq!(t.transactions().await, 1);
    t.assert_invariants().await;
}

backends!(a_request_the_database_refuses_does_not_fail_its_batch);

/// A trigger makes the database refuse one member's transactions; requests that share its batch
/// still succeed, and only the refused one fails (UNAVAILABLE, nothing applied).
async fn a_request_the_database_refuses_does_not_fail_its_batch(b: Backend) {
    use sqlx::Connection;
    let t = TestDaemon::start(b).await;
    match b {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&t.config.database_url)
                .await
                .unwrap();
            sqlx::query(
                "CREATE TRIGGER poison BEFORE INSERT ON transactions WHEN NEW.member_id = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END",
            )
            .execute(&mut c)
            .await
            .unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&t.pg.as_ref().unwrap().url)
                .await
                .unwrap();
            sqlx::query(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
                 IF EXISTS (SELECT 1 FROM new_rows WHERE member_id = 'poison') THEN RAISE EXCEPTION 'poisoned by the test'; END IF; \
                 RETURN NULL; END $$ LANGUAGE plpgsql",
            )
            .execute(&mut c)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER poison AFTER INSERT ON transactions REFERENCING NEW TABLE AS new_rows \
                 FOR EACH STATEMENT EXECUTE FUNCTION poison()",
            )
            .execute(&mut c)
            .await
            .unwrap();
        }
    }
    let air = t.partner("skyways").await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut c = air.clone();
        let member = if i == 30 {
            "poison".to_string()
        } else {
            format!("m{i}")
        };
        tasks.push(tokio::spawn(async move {
            (i, c.earn(earn_bonus(&format!("e{i}"), &member, 10)).await)
        }));
    }
    for task in tasks {
        let (i, r) = task.await.unwrap();
        if i == 30 {
            let e = r.unwrap_err();
            assert_eq!(
                (e.code(), reason(&e).as_str()),
                (tonic::Code::Unavailable, "STORAGE_UNAVAILABLE")
            );
        } else {
            r.unwrap_or_else(|e| panic!("e{i} failed beside the refused request: {e:?}"));
        }
    }
    assert_eq!(t.transactions().await, 59);
    t.assert_invariants().await;
}
