//! The bugs found from outside (issue 8): a panic inside an open transaction, malformed cycles,
//! breakage booked twice, and an earn reversal after its lot expired. Each on both backends.

use chrono::NaiveDate;
use coalition_tests::*;
use tonic::Code;

/// Clearing by hand only, so that each test decides when a cycle is cleared.
fn by_hand(days: u32) -> impl FnOnce(String) -> String {
    move |toml: String| {
        toml.replace(
            "points_expire_after_days = 730",
            &format!("points_expire_after_days = {days}"),
        )
        .replace("scheduler = true", "scheduler = false")
        .replace("time_zone = \"Europe/Amsterdam\"", "time_zone = \"UTC\"")
    }
}

const SECOND: i64 = 1_000_000;
const HOUR: i64 = 3_600 * SECOND;

/// Moves the clock to the start of the next business day (plus `plus`) and returns that day.
fn next_day_start(t: &TestDaemon, plus: i64) -> NaiveDate {
    let c = t.config.cycles();
    let today = c.cycle_of(t.clock.now()).unwrap();
    t.advance_to(c.close(today).unwrap() + plus);
    today.succ_opt().unwrap()
}

/// `at` into business day `d`.
fn into_day(t: &TestDaemon, d: NaiveDate, at: i64) {
    t.advance_to(t.config.cycles().open(d).unwrap() + at);
}

backends!(malformed_cycles_are_refused_and_writes_go_on);

async fn malformed_cycles_are_refused_and_writes_go_on(b: Backend) {
    let t = TestDaemon::start_with(b, by_hand(730)).await;
    let mut air = t.partner("skyways").await;
    let mut fin = t.finance().await;
    for (i, cycle) in [
        "+262142-12-31",
        "-0001-01-01",
        "0000-01-01",
        "9999-12-31",
        "2026-02-30",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        let err = fin
            .run_clearing(v1::CycleRequest {
                cycle: cycle.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "MALFORMED_CYCLE"),
            "{cycle:?}: {err:?}"
        );
        assert!(err.message().contains("business date"), "{}", err.message());
        // The very next write goes through: nothing was left open.
        air.earn(earn_bonus(&format!("after-{i}"), "m1", 10))
            .await
            .receipt();
    }
    // And clearing itself still works.
    let today = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    next_day_start(&t, SECOND);
    let s = t.clear(today).await.expect("clearing runs");
    assert_eq!(s.totals.unwrap().earned, 60);
    t.assert_invariants().await;
}

backends!(a_panic_inside_a_batch_leaves_no_transaction_open);

async fn a_panic_inside_a_batch_leaves_no_transaction_open(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        by_hand(730)(toml).replace(
            "queue_depth = 16384",
            "queue_depth = 16384\npanic_on_member = \"boom\"",
        )
    })
    .await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("e1", "m1", 10)).await.receipt();
    for i in 0..3 {
        let err = air
            .earn(earn_bonus(&format!("boom-{i}"), "boom", 10))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        // Every partner's writes go on at once (on SQLite a dangling transaction would lock the
        // file: "database is locked").
        air.earn(earn_bonus(&format!("ok-{i}"), "m1", 10))
            .await
            .receipt();
        air.burn(burn(&format!("b-{i}"), "m1", 5)).await.receipt();
    }
    // Nothing of the panicked batches was applied.
    assert_eq!(t.transactions().await, 1 + 3 + 3);
    assert_eq!(t.balance("boom").await, (0, 0));
    // Clearing starts its own transaction on the same file without complaint.
    let today = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    next_day_start(&t, SECOND);
    t.clear(today)
        .await
        .expect("clearing runs after the panics");
    t.assert_invariants().await;
}

backends!(each_cycle_books_its_own_breakage_and_reruns_keep_their_digest);

/// Bug 2: points given back into an expired lot are breakage of the cycle that sweeps them, and
/// the breakage of the earlier cycle stays what it was.
async fn each_cycle_books_its_own_breakage_and_reruns_keep_their_digest(b: Backend) {
    let t = TestDaemon::start_with(b, by_hand(1)).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    // Day 0, early: 100 at skyways, bistro burns 60 of them (the lot keeps 40).
    let d0 = next_day_start(&t, SECOND);
    air.earn(earn_bonus("e1", "m1", 100)).await.receipt();
    food.burn(burn("b1", "m1", 60)).await.receipt();
    // Day 1: the lot expired during it; clearing day 1 sweeps 40.
    let d1 = next_day_start(&t, SECOND);
    let s0 = t.clear(d0).await.unwrap();
    let d2 = next_day_start(&t, SECOND);
    let s1 = t.clear(d1).await.unwrap();
    assert_eq!(s1.totals.as_ref().unwrap().expired, 40);
    assert_eq!(s1.previous_digest, s0.digest);
    // Day 2: bistro reverses the burn; the 60 go back into the expired lot: breakage of day 2.
    into_day(&t, d2, HOUR);
    let r = food
        .reverse_burn(reverse_burn("b1-r", "b1", 0))
        .await
        .receipt();
    assert_eq!(r.balance_after, 0, "the points went back to an expired lot");
    next_day_start(&t, SECOND);
    let s2 = t.clear(d2).await.unwrap();
    assert_eq!(
        s2.totals.as_ref().unwrap().expired,
        60,
        "day 2 books 60, not 100"
    );
    assert_eq!(s2.previous_digest, s1.digest);
    // Day 1's draft run again after day 2 chains it: byte for byte the same.
    let again = t.clear(d1).await.unwrap();
    assert_eq!(again.totals.as_ref().unwrap().expired, 40);
    assert_eq!(again.digest, s1.digest);
    assert_eq!(again, s1);
    let again2 = t.clear(d2).await.unwrap();
    assert_eq!(again2.digest, s2.digest);
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.settlements, 3);
}

backends!(an_earn_reversal_after_its_lot_expired_takes_only_its_own_points);

/// Bug 3: a lot of skyways expires unspent and is swept; the member holds bistro's points;
/// skyways reverses the earn. The member keeps bistro's points, bistro is owed nothing, and the
/// swept breakage is undone in the reversal's cycle.
async fn an_earn_reversal_after_its_lot_expired_takes_only_its_own_points(b: Backend) {
    let t = TestDaemon::start_with(b, by_hand(2)).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    let d = next_day_start(&t, SECOND);
    air.earn(earn_bonus("e1", "m1", 100)).await.receipt(); // expires d+2 00:00:01
    let d1 = d.succ_opt().unwrap();
    let d2 = d1.succ_opt().unwrap();
    let d3 = d2.succ_opt().unwrap();
    into_day(&t, d2, 12 * HOUR);
    food.earn(earn_bonus("f1", "m1", 100)).await.receipt(); // expires d+4 12:00
    into_day(&t, d3, SECOND);
    for c in [d, d1, d2] {
        t.clear(c).await.unwrap();
    }
    let s2 = t.clear(d2).await.unwrap();
    assert_eq!(
        s2.totals.as_ref().unwrap().expired,
        100,
        "skyways' lot swept in d+2"
    );
    // Unswept points of a reversed lot leave it; swept ones undo their breakage.
    let r = air
        .reverse_earn(reverse_earn("e1-r", "e1", 0))
        .await
        .receipt();
    assert_eq!(slices(&r), vec![("skyways".to_string(), 100)]);
    assert_eq!((r.balance_after, r.debt_created), (100, 0));
    assert_eq!(
        t.balance("m1").await,
        (100, 0),
        "the member keeps bistro's points"
    );
    into_day(&t, d3.succ_opt().unwrap(), SECOND);
    let s3 = t.clear(d3).await.unwrap();
    let totals = s3.totals.as_ref().unwrap();
    assert_eq!((totals.expired, totals.earns_reversed), (-100, 100));
    assert!(s3.gross.is_empty(), "no money moves: {:?}", s3.gross);
    assert_eq!(t.balance("m1").await, (100, 0));
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
}

backends!(the_audit_recomputes_every_settlement_and_names_a_tampered_cycle);

/// A breakage fact changed by hand: the stored settlement no longer follows from the ledger, and
/// the audit names its cycle.
async fn the_audit_recomputes_every_settlement_and_names_a_tampered_cycle(b: Backend) {
    let t = TestDaemon::start_with(b, by_hand(1)).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    let d0 = next_day_start(&t, SECOND);
    air.earn(earn_bonus("e1", "m1", 100)).await.receipt();
    food.burn(burn("b1", "m1", 30)).await.receipt();
    let d1 = next_day_start(&t, SECOND);
    t.clear(d0).await.unwrap();
    next_day_start(&t, SECOND);
    let s1 = t.clear(d1).await.unwrap();
    assert_eq!(s1.totals.unwrap().expired, 70);
    assert!(t.audit().await.ok());
    // Move 5 points of the sweep's fact to 65, and the lot with it (so the lot checks still hold).
    let n = t
        .execute_sql(&format!(
            "UPDATE breakage SET points = 65 WHERE cycle = '{d1}'"
        ))
        .await;
    assert_eq!(n, 1);
    t.execute_sql("UPDATE lots SET expired = 65, points_left = 5")
        .await;
    let report = t.audit().await;
    assert!(!report.ok());
    let text = report.to_string();
    assert!(
        text.contains(&format!("settlement of {d1}: stored digest")),
        "{text}"
    );
    assert!(!text.contains(&format!("settlement of {d0}")), "{text}");
}
