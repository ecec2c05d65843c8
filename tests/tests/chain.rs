//! The ledger's hash chain (issue 14): rows changed, deleted or inserted with SQL behind the
//! daemon's back are caught by `audit --verify-chain`, which names the batch; an untouched
//! ledger passes; each settlement pins the chain's head. On both backends, over mTLS.

use coalition_tests::*;
use coalitiond::cmd::{Cli, run};

fn no_scheduler(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
}

/// The link (batch number) that holds the transaction the partner calls `txn`.
async fn link_of(t: &TestDaemon, txn: &str) -> i64 {
    t.query_i64(&format!(
        "SELECT c.seq FROM ledger_chain c JOIN transactions t ON t.batch_id = c.batch_id \
         WHERE t.partner_txn_id = '{txn}'"
    ))
    .await
}

/// `coalitiond audit --verify-chain` on the test's database: Ok, or the error it ends with.
async fn verify_cli(t: &TestDaemon) -> Result<(), String> {
    let path = t.dir.path().join("coalition.toml");
    run(<Cli as clap::Parser>::parse_from([
        "coalitiond",
        "audit",
        "--config",
        path.to_str().unwrap(),
        "--verify-chain",
    ]))
    .await
    .map_err(|e| e.to_string())
}

/// Checks that the chain fails at batch `seq`, by the store and by the CLI.
async fn fails_at(t: &TestDaemon, seq: i64, what: &str) {
    let r = t.daemon().store.verify_chain().await.unwrap();
    assert_eq!(r.first_bad, Some(seq), "{what}: {:?}", r.violations);
    let e = verify_cli(t).await.unwrap_err();
    assert!(e.contains(&format!("batch #{seq}")), "{what}: {e}");
    assert!(!t.audit().await.ok(), "{what}: the full audit fails too");
}

async fn holds(t: &TestDaemon) {
    let r = t.daemon().store.verify_chain().await.unwrap();
    assert!(r.ok(), "{:?}", r.violations);
    verify_cli(t).await.unwrap();
}

backends!(rows_changed_deleted_or_inserted_with_sql_name_their_batch);

async fn rows_changed_deleted_or_inserted_with_sql_name_their_batch(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("e1", "m1", 500)).await.receipt();
    air.earn(earn_purchase("e2", "m2", "40.00")).await.receipt();
    food.burn(burn("b1", "m1", 200)).await.receipt();
    air.earn(earn_bonus("e3", "m3", 70)).await.receipt();
    food.reverse_burn(reverse_burn("rb1", "b1", 50))
        .await
        .receipt();

    // Untouched: every link recomputes from its rows.
    let r = t.daemon().store.verify_chain().await.unwrap();
    assert_eq!((r.links, r.first_bad), (5, None), "{:?}", r.violations);
    holds(&t).await;
    let e2 = link_of(&t, "e2").await;
    let b1 = link_of(&t, "b1").await;
    let e3 = link_of(&t, "e3").await;
    assert!(e2 < b1 && b1 < e3, "links in commit order");

    // A lot's points changed.
    let lot = "(SELECT id FROM transactions WHERE partner_txn_id = 'e2')";
    t.execute_sql(&format!(
        "UPDATE lots SET points = points + 1000 WHERE id = {lot}"
    ))
    .await;
    fails_at(&t, e2, "a lot's points changed").await;
    t.execute_sql(&format!(
        "UPDATE lots SET points = points - 1000 WHERE id = {lot}"
    ))
    .await;
    holds(&t).await;

    // An allocation deleted.
    let txn = "(SELECT id FROM transactions WHERE partner_txn_id = 'b1')";
    t.execute_sql(&format!(
        "CREATE TABLE saved AS SELECT * FROM allocations WHERE txn_id = {txn}"
    ))
    .await;
    assert_eq!(
        t.execute_sql(&format!("DELETE FROM allocations WHERE txn_id = {txn}"))
            .await,
        1
    );
    fails_at(&t, b1, "an allocation deleted").await;
    t.execute_sql("INSERT INTO allocations SELECT * FROM saved")
        .await;
    holds(&t).await;

    // A rate changed on an allocation: the money it moves.
    t.execute_sql(&format!(
        "UPDATE allocations SET rate = rate * 2 WHERE txn_id = {txn}"
    ))
    .await;
    fails_at(&t, b1, "an allocation's rate changed").await;
    t.execute_sql(&format!(
        "UPDATE allocations SET rate = rate / 2 WHERE txn_id = {txn}"
    ))
    .await;
    holds(&t).await;

    // A transaction inserted outside any batch: named after the last batch before it.
    let columns = "partner_id, kind, member_id, points, reversed_points, request_hash, \
                   balance_after, slices, debt_created, debt_repaid, accepted_at, cycle";
    t.execute_sql(&format!(
        "INSERT INTO transactions (id, partner_txn_id, {columns}) SELECT id + 1000000, 'forged', \
         {columns} FROM transactions WHERE partner_txn_id = 'e3'"
    ))
    .await;
    let last = t.query_i64("SELECT MAX(seq) FROM ledger_chain").await;
    fails_at(&t, last + 1, "a transaction inserted").await;
    let r = t.daemon().store.verify_chain().await.unwrap();
    assert!(
        r.violations[0].contains("\"forged\"") && r.violations[0].contains("no batch"),
        "{:?}",
        r.violations
    );
    // …and one slipped into an existing batch.
    t.execute_sql("UPDATE transactions SET batch_id = (SELECT batch_id FROM transactions WHERE partner_txn_id = 'e2') WHERE partner_txn_id = 'forged'")
        .await;
    fails_at(&t, e2, "a transaction inserted into a batch").await;
    t.execute_sql("DELETE FROM transactions WHERE partner_txn_id = 'forged'")
        .await;
    holds(&t).await;

    // A link deleted, or the head rewound: the cut is named.
    t.execute_sql(&format!(
        "CREATE TABLE saved_link AS SELECT * FROM ledger_chain WHERE seq = {e3}"
    ))
    .await;
    t.execute_sql(&format!("DELETE FROM ledger_chain WHERE seq = {e3}"))
        .await;
    fails_at(&t, e3, "a link deleted").await;
    t.execute_sql("INSERT INTO ledger_chain SELECT * FROM saved_link")
        .await;
    holds(&t).await;
}

backends!(a_settlement_pins_the_chain_head_at_its_seal);

async fn a_settlement_pins_the_chain_head_at_its_seal(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("e1", "m1", 500)).await.receipt();
    air.earn(earn_bonus("e2", "m2", 300)).await.receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    air.earn(earn_bonus("next-day", "m1", 10)).await.receipt();
    let head_before = t
        .query_i64("SELECT seq FROM ledger_chain_head WHERE id = 1")
        .await;
    let s = t.clear(day).await.unwrap();
    let hash_at_seal = t
        .query_i64(&format!(
            "SELECT COUNT(*) FROM ledger_chain WHERE seq = {head_before} AND hash = '{}'",
            s.ledger_head
        ))
        .await;
    assert_eq!(hash_at_seal, 1, "the settlement pins the head at its seal");
    // Later batches move the head; a re-run of the draft keeps the pinned head and its digest.
    air.earn(earn_bonus("later", "m3", 10)).await.receipt();
    let again = t.clear(day).await.unwrap();
    assert_eq!(
        (again.ledger_head.as_str(), again.digest.as_str()),
        (s.ledger_head.as_str(), s.digest.as_str())
    );
    assert!(t.audit().await.ok());
    // A settlement whose pinned head was edited fails both its seal and the chain.
    t.execute_sql(&format!(
        "UPDATE settlements SET content = REPLACE(content, '{}', '{}')",
        s.ledger_head,
        "f".repeat(64)
    ))
    .await;
    let r = t.daemon().store.verify_chain().await.unwrap();
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("no link of the chain")),
        "{:?}",
        r.violations
    );
    let report = t.audit().await;
    assert!(
        report.to_string().contains("do not give its seal"),
        "{report}"
    );
}

backends!(an_operator_funded_lot_is_in_its_batch_link);

async fn an_operator_funded_lot_is_in_its_batch_link(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let now = t.clock.now();
    let campaign = v1::Campaign {
        campaign_id: "op-bonus".into(),
        name: "ten points from the coalition".into(),
        starts: coalitiond::clock::rfc3339(now),
        ends: coalitiond::clock::rfc3339(now + 30 * 86_400_000_000),
        effect: Some(v1::campaign::Effect::BonusPoints(10)),
        funder: "operator".into(),
        ..Default::default()
    };
    t.programme().await.create_campaign(campaign).await.unwrap();
    let mut food = t.partner("bistro").await;
    food.earn(earn_purchase("op1", "m1", "20.00"))
        .await
        .receipt();
    let operator_lot = "-(SELECT id FROM transactions WHERE partner_txn_id = 'op1')";
    assert_eq!(
        t.query_i64(&format!(
            "SELECT points FROM lots WHERE id = {operator_lot}"
        ))
        .await,
        10,
        "the operator's lot of the earn"
    );
    holds(&t).await;
    let op1 = link_of(&t, "op1").await;
    t.execute_sql(&format!(
        "UPDATE lots SET points = points + 5 WHERE id = {operator_lot}"
    ))
    .await;
    fails_at(&t, op1, "the operator's lot's points changed").await;
}
