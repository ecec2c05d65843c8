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
