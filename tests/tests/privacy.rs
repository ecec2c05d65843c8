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

backends!(consent_is_recorded_read_withdrawn_and_kept_apart_between_partners);

async fn consent_is_recorded_read_withdrawn_and_kept_apart_between_partners(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    let set = |id: &str, purpose: &str, granted: bool| v1::SetConsentRequest {
        transaction_id: id.into(),
        member_id: "ALICE".into(),
        purpose: purpose.into(),
        granted,
    };
    let get = || v1::GetConsentRequest {
        member_id: "ALICE".into(),
    };
    let first = air
        .set_consent(set("c1", "marketing", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            first.purpose.as_str(),
            first.partner.as_str(),
            first.granted,
            first.captured_by.as_str()
        ),
        ("marketing", "skyways", true, "partner/skyways")
    );
    // A retry answers the same; the same id with other content is refused.
    t.clock.advance(std::time::Duration::from_secs(5));
    let again = air
        .set_consent(set("c1", "marketing", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let err = air
        .set_consent(set("c1", "marketing", false))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::AlreadyExists, "REQUEST_ID_REUSED")
    );
    // A purpose that does not exist.
    let err = air
        .set_consent(set("c2", "telepathy", true))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "UNKNOWN_PURPOSE")
    );
    // Coalition-wide analytics, captured at bistro.
    food.set_consent(set("k1", "analytics", true))
        .await
        .unwrap();
    // bistro cannot read skyways' marketing consent, and its own marketing change is its own.
    let seen = food.get_consent(get()).await.unwrap().into_inner();
    let purposes: Vec<(String, String)> = seen
        .consents
        .iter()
        .map(|c| (c.purpose.clone(), c.partner.clone()))
        .collect();
    assert_eq!(purposes, vec![("analytics".into(), String::new())]);
    food.set_consent(set("k2", "marketing", false))
        .await
        .unwrap();
    let own = air.get_consent(get()).await.unwrap().into_inner();
    let mk: Vec<(&str, bool)> = own
        .consents
        .iter()
        .filter(|c| c.purpose == "marketing")
        .map(|c| (c.partner.as_str(), c.granted))
        .collect();
    assert_eq!(
        mk,
        vec![("skyways", true)],
        "bistro's change did not touch skyways' consent"
    );
    // Withdrawal takes effect at once, for everyone reading after it.
    air.set_consent(set("c3", "analytics", false))
        .await
        .unwrap();
    for c in [&mut air, &mut food] {
        let now = c.get_consent(get()).await.unwrap().into_inner();
        let analytics = now
            .consents
            .iter()
            .find(|c| c.purpose == "analytics")
            .unwrap();
        assert!(!analytics.granted);
        assert_eq!(analytics.captured_by, "partner/skyways");
    }
    // The operator records on the member's behalf, and reads everything (logged).
    let mut ops = t.operator().await;
    ops.set_member_consent(v1::SetMemberConsentRequest {
        member_id: "ALICE".into(),
        purpose: "sharing".into(),
        partner: String::new(),
        granted: true,
        reason: "letter of 2026-11-30".into(),
    })
    .await
    .unwrap();
    let everything = ops
        .get_member_consent(v1::MemberBalanceRequest {
            member_id: "ALICE".into(),
            reason: "audit".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.consents.len(), 4, "{:?}", everything.consents);
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
    // A consent changed by hand no longer follows its recorded changes: the audit says so.
    t.execute_sql("UPDATE consents SET granted = NOT granted WHERE purpose = 'sharing'")
        .await;
    let text = t.audit().await.to_string();
    assert!(
        text.contains("each consent is the last change recorded"),
        "{text}"
    );
}

backends!(a_member_inactive_past_retention_is_pseudonymized_and_the_books_stay_exact);

async fn a_member_inactive_past_retention_is_pseudonymized_and_the_books_stay_exact(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        toml.replace("points_expire_after_days = 730\n", "")
            .replace("scheduler = true", "scheduler = false")
            .replace(
                "retention_check_seconds = 3600",
                "retention_check_seconds = 1",
            )
    })
    .await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("a1", "ALICE", 700)).await.receipt();
    food.burn(burn("f1", "ALICE", 200)).await.receipt();
    air.earn(earn_bonus("a2", "BOB", 50)).await.receipt();
    food.set_consent(v1::SetConsentRequest {
        transaction_id: "c1".into(),
        member_id: "ALICE".into(),
        purpose: "marketing".into(),
        granted: true,
    })
    .await
    .unwrap();
    let cycles = t.config.cycles();
    let d0 = cycles.cycle_of(t.clock.now()).unwrap();
    t.advance_to(cycles.close(d0).unwrap() + 1_000_000);
    let s0 = t.clear(d0).await.unwrap();
    let before = t.audit().await;
    // Three years and a day later BOB is active again, ALICE is not.
    t.clock
        .advance(std::time::Duration::from_secs(1095 * 86_400 - 3_600));
    air.earn(earn_bonus("a3", "BOB", 1)).await.receipt();
    t.clock.advance(std::time::Duration::from_secs(2 * 86_400));
    let started = std::time::Instant::now();
    while t.balance("ALICE").await != (0, 0) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "ALICE was not pseudonymized"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        t.balance("BOB").await,
        (51, 0),
        "an active member keeps its id"
    );
    // The books: the same balances in sum, the same settlement digest, every invariant.
    let after = t.audit().await;
    assert!(after.ok(), "{after}");
    assert_eq!(
        (after.balances, after.members, after.transactions),
        (before.balances + 1, before.members, before.transactions + 1)
    );
    let again = t.clear(d0).await.unwrap();
    assert_eq!(again.digest, s0.digest);
    // ALICE's id is nowhere in the ledger; her points sit under a pseudonym.
    for table in [
        "members",
        "transactions",
        "lots",
        "allocations",
        "consents",
        "consent_events",
    ] {
        assert_eq!(
            t.execute_sql(&format!(
                "UPDATE {table} SET member_id = member_id WHERE member_id = 'ALICE'"
            ))
            .await,
            0,
            "{table} still names ALICE"
        );
    }
    assert_eq!(
        t.execute_sql("UPDATE members SET member_id = member_id WHERE member_id LIKE '~%'")
            .await,
        1
    );
    // The partner's own transaction is still there, under the pseudonym.
    let tx = air
        .get_transaction(v1::GetTransactionRequest {
            transaction_id: "a1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tx.receipt.unwrap().member_id.starts_with('~'));
    // The same id arriving again is a new member.
    air.earn(earn_bonus("a4", "ALICE", 5)).await.receipt();
    assert_eq!(t.balance("ALICE").await, (5, 0));
    t.assert_invariants().await;
}

backends!(the_access_log_keeps_entries_for_its_period_and_stays_verifiable);

async fn the_access_log_keeps_entries_for_its_period_and_stays_verifiable(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        toml.replace(
            "retention_check_seconds = 3600",
            "retention_check_seconds = 1",
        )
        .replace("access_log_days = 365", "access_log_days = 30")
    })
    .await;
    let read = |m: &str| v1::MemberBalanceRequest {
        member_id: m.into(),
        reason: String::new(),
    };
    let mut fin = t.finance().await;
    fin.get_member_balance(read("OLD1")).await.unwrap();
    fin.get_member_balance(read("OLD2")).await.unwrap();
    t.clock.advance(std::time::Duration::from_secs(31 * 86_400));
    fin.get_member_balance(read("NEW1")).await.unwrap();
    fin.get_member_balance(read("NEW2")).await.unwrap();
    let started = std::time::Instant::now();
    while t
        .execute_sql("UPDATE access_log SET seq = seq WHERE member_id LIKE 'OLD%'")
        .await
        > 0
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "old entries not removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let report = t.audit().await;
    assert!(
        report.ok(),
        "the chain is checked from where it was cut: {report}"
    );
    // A removal inside the kept period still shows.
    t.execute_sql("DELETE FROM access_log WHERE member_id = 'NEW1'")
        .await;
    let text = t.audit().await.to_string();
    assert!(text.contains("access log: entry 4"), "{text}");
}

backends!(consents_follow_a_model_over_random_changes);

/// A property over random consent changes by two partners (retries and reused ids among them):
/// what each partner reads is what a plain model of "last change per member, purpose and scope"
/// says, filtered to what that partner may see, and the audit agrees with the stored state.
async fn consents_follow_a_model_over_random_changes(b: Backend) {
    use std::collections::BTreeMap;
    let t = TestDaemon::start(b).await;
    let partners = ["skyways", "bistro"];
    let mut clients = [t.partner(partners[0]).await, t.partner(partners[1]).await];
    let purposes = ["marketing", "analytics", "sharing"];
    // A small deterministic generator (xorshift), several seeds: no flakiness, many orders.
    for seed in 1..=4u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let member = format!("M{seed}");
        let mut model: BTreeMap<(String, String), bool> = BTreeMap::new();
        let mut sent: Vec<(usize, v1::SetConsentRequest)> = Vec::new();
        for i in 0..40 {
            let p = next(2) as usize;
            let req = if next(5) == 0 && !sent.is_empty() {
                // A retry of an earlier change by the same partner, or its id with other content.
                let (q, old) = sent[next(sent.len() as u64) as usize].clone();
                let mut r = old;
                if next(2) == 0 {
                    r.granted = !r.granted;
                    let err = clients[q].set_consent(r).await.unwrap_err();
                    assert_eq!(reason(&err), "REQUEST_ID_REUSED");
                } else {
                    clients[q].set_consent(r).await.unwrap();
                }
                continue;
            } else {
                v1::SetConsentRequest {
                    transaction_id: format!("s{seed}-{i}"),
                    member_id: member.clone(),
                    purpose: purposes[next(3) as usize].into(),
                    granted: next(2) == 0,
                }
            };
            let scope = if req.purpose == "marketing" {
                partners[p]
            } else {
                ""
            };
            model.insert((req.purpose.clone(), scope.to_string()), req.granted);
            let answer = clients[p]
                .set_consent(req.clone())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (answer.partner.as_str(), answer.granted),
                (scope, req.granted)
            );
            sent.push((p, req));
        }
        for (p, c) in clients.iter_mut().enumerate() {
            let got: BTreeMap<(String, String), bool> = c
                .get_consent(v1::GetConsentRequest {
                    member_id: member.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .consents
                .into_iter()
                .map(|c| ((c.purpose, c.partner), c.granted))
                .collect();
            let want: BTreeMap<(String, String), bool> = model
                .iter()
                .filter(|((_, scope), _)| scope.is_empty() || scope == partners[p])
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            assert_eq!(got, want, "seed {seed}, as {}", partners[p]);
        }
    }
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
}
