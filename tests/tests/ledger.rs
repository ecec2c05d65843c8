//! Earn, burn, reversals, debt, idempotency and pagination over mTLS, on every backend.

use coalition_tests::v1 as pb;
use coalition_tests::*;
use std::time::Duration;
use tonic::Code;

backends!(
    earn_then_burn_across_partners_takes_soonest_expiry_first,
    expired_points_stop_counting,
    burn_reversals_partial_then_full,
    earn_reversal_shortfall_and_debt_repaid_by_next_earn,
    retries_are_idempotent_and_reuse_conflicts,
    activity_pages_through_everything_once
);

async fn earn_then_burn_across_partners_takes_soonest_expiry_first(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop, mut food) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    let r = air
        .earn(earn_purchase("a1", "m1", "100.00"))
        .await
        .receipt();
    assert_eq!((r.points, r.balance_after), (100, 100));
    t.clock.advance(Duration::from_secs(86_400));
    let r = shop
        .earn(earn_purchase("s1", "m1", "30.25"))
        .await
        .receipt();
    assert_eq!(r.points, 60, "2 points per EUR, floored");
    t.clock.advance(Duration::from_secs(86_400));
    food.earn(earn_bonus("f1", "m1", 40)).await.unwrap();
    let bal = food
        .get_balance(v1::GetBalanceRequest {
            member_id: "m1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bal.points, 200);
    assert_eq!(bal.next_expiry_points, 100, "the airline lot expires first");
    // Burn at the restaurant: the airline's lot (soonest expiry) first, then the supermarket's.
    let r = food.burn(burn("f2", "m1", 130)).await.receipt();
    assert_eq!(
        slices(&r),
        vec![("skyways".into(), 100), ("freshmart".into(), 30)]
    );
    assert_eq!(r.balance_after, 70);
    // And at the airline: the rest of the supermarket's lot, then the restaurant's own.
    let r = air.burn(burn("a2", "m1", 50)).await.receipt();
    assert_eq!(
        slices(&r),
        vec![("freshmart".into(), 30), ("bistro".into(), 20)]
    );
    assert_eq!(t.balance("m1").await, (20, 0));
    t.assert_invariants().await;
}

async fn expired_points_stop_counting(b: Backend) {
    let t = TestDaemon::start(b).await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("a1", "m1", 500)).await.unwrap();
    t.clock.advance(Duration::from_secs(700 * 86_400));
    air.earn(earn_bonus("a2", "m1", 10)).await.unwrap();
    t.clock.advance(Duration::from_secs(31 * 86_400)); // the first lot is past its 730 days
    let bal = air
        .get_balance(v1::GetBalanceRequest {
            member_id: "m1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bal.points, 10);
    let err = air.burn(burn("a3", "m1", 11)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "INSUFFICIENT_POINTS");
    t.assert_invariants().await;
}

async fn burn_reversals_partial_then_full(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop, mut food) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    air.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    t.clock.advance(Duration::from_secs(60));
    shop.earn(earn_bonus("s1", "m1", 100)).await.unwrap();
    food.burn(burn("f1", "m1", 150)).await.unwrap(); // 100 from skyways, 50 from freshmart
    let rev = |id: &str, points| reverse_burn(id, "f1", points);
    let r = food.reverse_burn(rev("f2", 70)).await.receipt();
    assert_eq!(
        slices(&r),
        vec![("freshmart".into(), 50), ("skyways".into(), 20)],
        "latest slices go back first"
    );
    assert_eq!(r.balance_after, 120);
    let err = food.reverse_burn(rev("f3", 81)).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "REVERSAL_EXCEEDS_REMAINING")
    );
    let r = food.reverse_burn(rev("f4", 0)).await.receipt();
    assert_eq!(
        (r.points, r.balance_after),
        (80, 200),
        "0 reverses everything left"
    );
    let err = food.reverse_burn(rev("f5", 0)).await.unwrap_err();
    assert_eq!(reason(&err), "ALREADY_FULLY_REVERSED");
    let tx = food
        .get_transaction(v1::GetTransactionRequest {
            transaction_id: "f1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tx.reversed_points, 150);
    // The points went back to their own lots with their own expiry: both issuers hold 100 again
    // (finance sees the split; partners do not).
    let bal = t
        .finance()
        .await
        .get_member_balance(v1::MemberBalanceRequest {
            member_id: "m1".into(),
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by: Vec<(String, i64)> = bal
        .by_issuer
        .iter()
        .map(|s| (s.issuer.clone(), s.points))
        .collect();
    assert_eq!(by, vec![("freshmart".into(), 100), ("skyways".into(), 100)]);
    t.assert_invariants().await;
}

async fn earn_reversal_shortfall_and_debt_repaid_by_next_earn(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop, mut food) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    shop.earn(earn_bonus("s1", "m1", 100)).await.unwrap();
    air.earn(earn_bonus("a1", "m1", 30)).await.unwrap();
    food.burn(burn("f1", "m1", 90)).await.unwrap(); // freshmart's lot is older: 10 left there
    let rev = |id: &str, points| reverse_earn(id, "s1", points);
    // Partial: 5 from its own lot.
    let r = shop.reverse_earn(rev("s2", 5)).await.receipt();
    assert_eq!(
        (slices(&r), r.balance_after),
        (vec![("freshmart".into(), 5)], 35)
    );
    // Full: 5 more from its own lot, 30 from skyways' lot (redeemed at freshmart), 60 as debt.
    let r = shop.reverse_earn(rev("s3", 0)).await.receipt();
    assert_eq!(r.points, 95);
    assert_eq!(
        slices(&r),
        vec![("freshmart".into(), 5), ("skyways".into(), 30)]
    );
    assert_eq!((r.debt_created, r.balance_after), (60, -60));
    assert_eq!(t.balance("m1").await, (-60, 60));
    let err = food.burn(burn("f2", "m1", 1)).await.unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_POINTS");
    // The next earn pays the debt first.
    let r = food.earn(earn_bonus("f3", "m1", 100)).await.receipt();
    assert_eq!((r.debt_repaid, r.balance_after), (60, 40));
    assert_eq!(t.balance("m1").await, (40, 0));
    t.assert_invariants().await;
}

async fn retries_are_idempotent_and_reuse_conflicts(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    let first = air
        .earn(earn_purchase("a1", "m1", "10.00"))
        .await
        .unwrap()
        .into_inner();
    air.earn(earn_bonus("a2", "m1", 5)).await.unwrap();
    let again = air
        .earn(earn_purchase("a1", "m1", "10.0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first, again,
        "a retry returns the first answer, unchanged (balance_after too)"
    );
    let err = air
        .earn(earn_purchase("a1", "m1", "11.00"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::AlreadyExists, "REQUEST_ID_REUSED")
    );
    assert!(err.message().contains("a1"), "{}", err.message());
    // The same id at another partner is another transaction.
    food.earn(earn_purchase("a1", "m1", "10.00")).await.unwrap();
    // A reversal retried is applied once.
    food.burn(burn("f1", "m1", 20)).await.unwrap();
    let rev = reverse_burn("f2", "f1", 5);
    let r1 = food.reverse_burn(rev.clone()).await.unwrap().into_inner();
    let r2 = food.reverse_burn(rev).await.unwrap().into_inner();
    assert_eq!(r1, r2);
    assert_eq!(t.balance("m1").await, (10 + 5 + 15 - 20 + 5, 0));
    assert_eq!(t.transactions().await, 5);
    t.assert_invariants().await;
}

async fn activity_pages_through_everything_once(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop) = (t.partner("skyways").await, t.partner("freshmart").await);
    for i in 0..23 {
        air.earn(earn_bonus(&format!("a{i}"), "m1", 1 + i))
            .await
            .unwrap();
    }
    shop.earn(earn_bonus("s1", "m1", 7)).await.unwrap();
    air.earn(earn_bonus("other", "m2", 7)).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = air
            .list_member_activity(v1::ListMemberActivityRequest {
                member_id: "m1".into(),
                page_size: 5,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.transactions.len() <= 5);
        seen.extend(
            page.transactions
                .into_iter()
                .map(|t| t.receipt.unwrap().transaction_id),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 5);
    let expected: Vec<String> = (0..23).rev().map(|i| format!("a{i}")).collect();
    assert_eq!(
        seen, expected,
        "newest first, each once, only this partner's and this member's"
    );
    let err = air
        .list_member_activity(v1::ListMemberActivityRequest {
            member_id: "m1".into(),
            page_size: 5,
            page_token: "zz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    t.assert_invariants().await;
}

backends!(a_member_with_many_lots_is_decided_from_its_first_ones);

/// A frequent member: 40 lots, more than the 16 a batch reads first. Burns, holds and reversals
/// that stay within the first lots, and ones that reach past them (a reversal of a late earn, a
/// burn of most of the balance, a refund to lots far down the order), give the balances and
/// slices the whole ledger gives; the kept open points stay equal to the lots (the audit).
async fn a_member_with_many_lots_is_decided_from_its_first_ones(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    for i in 0..40 {
        let p = if i % 2 == 0 { &mut air } else { &mut food };
        p.earn(earn_bonus(&format!("e{i}"), "m", 10))
            .await
            .receipt();
        t.clock.advance(Duration::from_secs(3_600));
    }
    // Within the first lots: e0 (skyways), e1 (bistro), half of e2 (skyways).
    let r = food.burn(burn("b1", "m", 25)).await.receipt();
    let mut got = slices(&r);
    got.sort();
    assert_eq!(
        (got, r.balance_after),
        (vec![("bistro".into(), 10), ("skyways".into(), 15)], 375)
    );
    // A partner's balance read sees the first lots only, and says the same as the whole ledger:
    // the balance, and the next expiry with its points (what is left of e2).
    let b = food
        .get_balance(pb::GetBalanceRequest {
            member_id: "m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.points, b.next_expiry_points), (375, 5));
    let whole = t.daemon().store.member("m").await.unwrap();
    let want = coalitiond::api::views::balance(
        "m",
        whole.as_ref(),
        t.clock.now(),
        coalitiond::api::views::Audience::Partner,
        (0, 0),
    );
    assert_eq!(b, want, "the first lots give the whole ledger's view");
    // A late earn taken back: from its own lot, far past the first ones.
    let r = food
        .reverse_earn(reverse_earn("r1", "e39", 0))
        .await
        .receipt();
    assert_eq!((r.points, r.balance_after), (10, 365));
    // An authorization and a partial capture.
    food.authorize_burn(pb::AuthorizeBurnRequest {
        transaction_id: "h1".into(),
        member_id: "m".into(),
        points: 30,
        hold_seconds: 0,
    })
    .await
    .unwrap();
    let r = food
        .capture_burn(pb::CaptureBurnRequest {
            transaction_id: "c1".into(),
            authorization_id: "h1".into(),
            points: 20,
        })
        .await
        .receipt();
    assert_eq!(r.balance_after, 345);
    // Most of the balance: every lot is read; 5 + 10 × 32 = 325 from e2..e35 in order.
    let r = air.burn(burn("b2", "m", 325)).await.receipt();
    assert_eq!(r.balance_after, 20);
    assert_eq!(
        slices(&r).iter().map(|(_, p)| p).sum::<i64>(),
        325,
        "{:?}",
        slices(&r)
    );
    // A refund goes back to the very lots, the latest slices first (past the first 16).
    let r = air
        .reverse_burn(reverse_burn("r2", "b2", 100))
        .await
        .receipt();
    assert_eq!(r.balance_after, 120);
    // Too much: refused with the true balance.
    let e = food.burn(burn("b3", "m", 121)).await.unwrap_err();
    assert!(e.message().contains("member has 120 points"), "{e:?}");
    let r = food.burn(burn("b4", "m", 120)).await.receipt();
    assert_eq!(r.balance_after, 0);
    assert_eq!(t.balance("m").await.0, 0);
    t.assert_invariants().await;
    // The kept total changed behind the daemon's back: the audit recomputes it from the lots.
    let n = t
        .execute_sql("UPDATE members SET open_points = open_points + 1 WHERE member_id = 'm'")
        .await;
    assert_eq!(n, 1);
    let report = t.audit().await;
    assert!(
        !report.ok(),
        "the audit missed a changed open_points\n{report}"
    );
}
