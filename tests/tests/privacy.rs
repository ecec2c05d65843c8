//! Privacy between partners (issue 18, in part): what a partner sees of a member, no member oracle,
//! and the access log of finance's and operators' reads. On both backends, over mTLS.

use coalition_tests::*;
use tonic::Code;

backends!(a_partner_sees_no_issuer_split_and_finance_and_operators_do);

async fn a_partner_sees_no_issuer_split_and_finance_and_operators_do(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("a1", "ALICE", 700)).await.receipt();
    // bistro, where ALICE never went: her balance, nothing about where it came from.
    let seen = food
        .get_balance(v1::GetBalanceRequest {
            member_id: "ALICE".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.points, 700);
    assert!(seen.by_issuer.is_empty(), "{:?}", seen.by_issuer);
    assert_eq!(seen.lots, 0);
    assert!(
        !seen.next_expiry.is_empty(),
        "the till may show the next expiry"
    );
    // Even the issuer itself sees no split (one view for every partner).
    let own = air
        .get_balance(v1::GetBalanceRequest {
            member_id: "ALICE".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own, seen);
    // Finance and operators see the split and the lots.
    let req = || v1::MemberBalanceRequest {
        member_id: "ALICE".into(),
        reason: "ticket 4711: member asks where her points came from".into(),
    };
    let fin = t
        .finance()
        .await
        .get_member_balance(req())
        .await
        .unwrap()
        .into_inner();
    let ops = t
        .operator()
        .await
        .get_member_balance(req())
        .await
        .unwrap()
        .into_inner();
    for full in [&fin, &ops] {
        let by: Vec<(String, i64)> = full
            .by_issuer
            .iter()
            .map(|s| (s.issuer.clone(), s.points))
            .collect();
        assert_eq!(by, vec![("skyways".to_string(), 700)]);
        assert_eq!((full.points, full.lots), (700, 1));
    }
    // A partner certificate cannot use the staff read.
    let partner_as_finance = coalitiond::client::connect(&t.addr, &t.partner_pem("bistro"))
        .await
        .unwrap();
    let err = v1::finance_service_client::FinanceServiceClient::new(partner_as_finance)
        .get_member_balance(req())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    t.assert_invariants().await;
}

backends!(an_unknown_member_is_indistinguishable_from_an_empty_one);

async fn an_unknown_member_is_indistinguishable_from_an_empty_one(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    // EMPTY earned once elsewhere and has nothing now; NOBODY never existed.
    air.earn(earn_bonus("a1", "EMPTY", 50)).await.receipt();
    air.reverse_earn(reverse_earn("a1-r", "a1", 0))
        .await
        .receipt();
    let balance = |m: &str| v1::GetBalanceRequest {
        member_id: m.into(),
    };
    let mut e = food
        .get_balance(balance("EMPTY"))
        .await
        .unwrap()
        .into_inner();
    let mut n = food
        .get_balance(balance("NOBODY"))
        .await
        .unwrap()
        .into_inner();
    (e.member_id, n.member_id) = (String::new(), String::new());
    assert_eq!(e, n);
    let e = food.burn(burn("b1", "EMPTY", 5)).await.unwrap_err();
    let n = food.burn(burn("b2", "NOBODY", 5)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e), e.message()),
        (n.code(), reason(&n), n.message())
    );
    assert_eq!(e.code(), Code::FailedPrecondition);
    let activity = |m: &str| v1::ListMemberActivityRequest {
        member_id: m.into(),
        ..Default::default()
    };
    let e = food
        .list_member_activity(activity("EMPTY"))
        .await
        .unwrap()
        .into_inner();
    let n = food
        .list_member_activity(activity("NOBODY"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e, n);
    assert_eq!(t.transactions().await, 2, "the refused burns left nothing");
}

backends!(staff_reads_are_in_an_append_only_access_log);

async fn staff_reads_are_in_an_append_only_access_log(b: Backend) {
    let t = TestDaemon::start(b).await;
    t.partner("skyways")
        .await
        .earn(earn_bonus("a1", "ALICE", 10))
        .await
        .receipt();
    let read = |m: &str, why: &str| v1::MemberBalanceRequest {
        member_id: m.into(),
        reason: why.into(),
    };
    t.finance()
        .await
        .get_member_balance(read("ALICE", "statement query"))
        .await
        .unwrap();
    t.operator()
        .await
        .get_member_balance(read("BOB", ""))
        .await
        .unwrap();
    assert!(t.audit().await.ok());
    // Who, when, which member, why: the rows as stored.
    let n = t
        .execute_sql(
            "UPDATE access_log SET reason = reason WHERE (seq = 1 AND role = 'finance' AND who = 'finance' \
             AND member_id = 'ALICE' AND reason = 'statement query' AND action = 'GetMemberBalance' AND at > 0) \
             OR (seq = 2 AND role = 'operator' AND who = 'oncall' AND member_id = 'BOB' AND reason = '')",
        )
        .await;
    assert_eq!(
        n, 2,
        "both reads are logged with who, when, which member and why"
    );
    // An entry changed by hand breaks the chain, and the audit says which.
    t.execute_sql("UPDATE access_log SET reason = 'nothing to see' WHERE seq = 1")
        .await;
    let text = t.audit().await.to_string();
    assert!(
        text.contains("access log: entry 1 does not follow the chain"),
        "{text}"
    );
    // So does a removed one.
    t.execute_sql("UPDATE access_log SET reason = 'statement query' WHERE seq = 1")
        .await;
    assert!(t.audit().await.ok());
    t.execute_sql("DELETE FROM access_log WHERE seq = 1").await;
    let text = t.audit().await.to_string();
    assert!(text.contains("access log: entry 2"), "{text}");
}
