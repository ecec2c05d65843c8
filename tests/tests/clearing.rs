//! Clearing end to end over mTLS: a day of traffic, the cut-off passes, the scheduler clears the
//! cycle; the settlement matches figures worked by hand; late traffic lands in the next cycle;
//! re-runs give the same digest; a final settlement does not move; partners cannot use finance.

use coalition_tests::*;
use std::time::Duration;
use tonic::Code;

backends!(a_day_is_cleared_to_the_cent);

/// Expiry after one day, clearing as soon as a cycle closes.
fn fast_clearing(toml: String) -> String {
    toml.replace(
        "points_expire_after_days = 730",
        "points_expire_after_days = 1",
    )
    .replace("grace_seconds = 300", "grace_seconds = 0")
}

async fn wait_for_settlement(fin: &mut FinanceClient, cycle: &str) -> v1::Settlement {
    for _ in 0..100 {
        if let Ok(s) = fin
            .get_settlement(v1::CycleRequest {
                cycle: cycle.into(),
            })
            .await
        {
            return s.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the scheduler did not clear {cycle}");
}

fn position(s: &v1::Settlement, p: &str) -> (String, String) {
    let p = s
        .positions
        .iter()
        .find(|x| x.participant == p)
        .unwrap_or_else(|| panic!("no position {p}"));
    (p.net_exact.clone(), p.net.clone())
}

async fn a_day_is_cleared_to_the_cent(b: Backend) {
    let t = TestDaemon::start_with(b, fast_clearing).await;
    let cycles = t.config.cycles();
    let d0 = cycles.cycle_of(t.clock.now()).unwrap();
    let (mut air, mut shop, mut food) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    let mut fin = t.finance().await;

    // The day (rates: skyways 0.010 + fee 0.0005, freshmart 0.008, bistro 0.012 per point).
    air.earn(earn_purchase("a1", "m1", "420.00")).await.unwrap(); // lot A: 420
    shop.earn(earn_purchase("s1", "m1", "85.40")).await.unwrap(); // lot S: 170
    food.earn(earn_bonus("f1", "m1", 250)).await.unwrap(); // lot F: 250
    let r = air.burn(burn("a2", "m1", 30)).await.receipt();
    assert_eq!(
        slices(&r),
        vec![("skyways".into(), 30)],
        "a self-redemption"
    );
    let r = food.burn(burn("f2", "m1", 500)).await.receipt();
    assert_eq!(
        slices(&r),
        vec![("skyways".into(), 390), ("freshmart".into(), 110)]
    );
    // freshmart takes 100 back: 60 from its lot, 40 short taken from bistro's lot, redeemed at freshmart.
    let r = shop
        .reverse_earn(reverse_earn("s2", "s1", 100))
        .await
        .receipt();
    assert_eq!(
        slices(&r),
        vec![("freshmart".into(), 60), ("bistro".into(), 40)]
    );
    // bistro refunds 200 of the dinner: freshmart's 110 first, then 90 of skyways'.
    food.reverse_burn(reverse_burn("f3", "f2", 200))
        .await
        .unwrap();

    // The points liability per issuer and month of issue.
    let report = fin
        .get_liability_report(v1::LiabilityReportRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.issuer.clone(),
                r.issued,
                r.redeemed,
                r.reversed,
                r.expired,
                r.outstanding,
            )
        })
        .collect();
    // skyways: 420 issued, 30 + 390 − 90 = 330 redeemed, 90 left; freshmart: 170, 110 − 110 = 0 redeemed,
    // 60 taken back, 110 left; bistro: 250, 40 redeemed (the shortfall), 210 left.
    assert_eq!(
        rows,
        vec![
            ("bistro".into(), 250, 40, 0, 0, 210),
            ("freshmart".into(), 170, 0, 60, 0, 110),
            ("skyways".into(), 420, 330, 0, 0, 90)
        ]
    );
    assert!(
        report
            .rows
            .iter()
            .all(|r| r.month == d0.format("%Y-%m").to_string())
    );

    // Not closed yet: finance cannot clear it.
    let err = fin
        .run_clearing(v1::CycleRequest {
            cycle: d0.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "CYCLE_NOT_CLOSED")
    );

    // The cut-off passes; a late transaction lands in the next cycle.
    let close = cycles.close(d0).unwrap();
    t.clock.advance(Duration::from_micros(
        (close - t.clock.now() + 1_000_000) as u64,
    ));
    air.earn(earn_bonus("late", "m2", 7)).await.unwrap();
    let s = wait_for_settlement(&mut fin, &d0.to_string()).await;

    // G[skyways][bistro] = (390 − 90) × 0.012 = 3.60; G[freshmart][bistro] = (110 − 110) × 0.012 = 0;
    // G[bistro][freshmart] = 40 × 0.008 = 0.32; self-redemption skyways 30 × 0.010 = 0.30 (no money).
    let g: Vec<(String, String, i64, String)> = s
        .gross
        .iter()
        .map(|c| {
            (
                c.issuer.clone(),
                c.redeemer.clone(),
                c.points,
                c.value.clone(),
            )
        })
        .collect();
    assert_eq!(
        g,
        vec![
            ("bistro".into(), "freshmart".into(), 40, "0.32".into()),
            ("freshmart".into(), "bistro".into(), 0, "0".into()),
            ("skyways".into(), "bistro".into(), 300, "3.6".into()),
        ]
    );
    assert_eq!(s.self_redemptions.len(), 1);
    assert_eq!(
        (
            s.self_redemptions[0].points,
            s.self_redemptions[0].value.as_str()
        ),
        (30, "0.3")
    );
    // Fee: skyways issued 420 × 0.0005 = 0.21. Nets: skyways −3.60 − 0.21 = −3.81; bistro 3.60 − 0.32 = 3.28;
    // freshmart 0.32; operator 0.21.
    assert_eq!(position(&s, "skyways"), ("-3.81".into(), "-3.81".into()));
    assert_eq!(position(&s, "bistro"), ("3.28".into(), "3.28".into()));
    assert_eq!(position(&s, "freshmart"), ("0.32".into(), "0.32".into()));
    assert_eq!(position(&s, "operator"), ("0.21".into(), "0.21".into()));
    let totals = s.totals.clone().unwrap();
    assert_eq!(
        (
            totals.transactions,
            totals.earned,
            totals.burned,
            totals.earns_reversed,
            totals.burns_reversed,
            totals.expired
        ),
        (7, 840, 530, 100, 200, 0)
    );
    assert_eq!((totals.settled.as_str(), totals.allocations), ("3.81", 6));
    assert_eq!(s.status, v1::SettlementStatus::Draft as i32);

    // Re-running gives the same digest; the partner sees its own statement; finance exports.
    let again = fin
        .run_clearing(v1::CycleRequest {
            cycle: d0.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.digest, s.digest);
    let st = food
        .get_statement(v1::PartnerStatementRequest {
            cycle: d0.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.position.unwrap().net, "3.28");
    assert_eq!(
        st.lines.iter().filter(|l| l.kind == "allocation").count(),
        5,
        "bistro is in 5 allocations: 2 of the burn, 2 of the refund, 1 of the shortfall"
    );
    // Then its rounding (bistro pays no fee), and the lines add up to its net.
    assert_eq!(st.lines.last().unwrap().kind, "rounding");
    assert_eq!(st.lines.len(), 6);
    let sum: rust_decimal::Decimal = st
        .lines
        .iter()
        .map(|l| l.signed_value.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(sum.to_string(), st.net);
    assert!(
        st.lines
            .iter()
            .filter(|l| l.redeemer == "bistro")
            .all(|l| !l.transaction_id.is_empty())
    );
    assert!(
        st.lines
            .iter()
            .any(|l| l.redeemer == "freshmart" && l.transaction_id.is_empty()),
        "no other partner's ids"
    );
    let csv = fin
        .export_settlement(v1::ExportRequest {
            cycle: d0.to_string(),
            format: v1::ExportFormat::Csv as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        String::from_utf8(csv.content)
            .unwrap()
            .starts_with("cycle,participant,")
    );
    let pain = |fin: &mut FinanceClient| {
        let mut fin = fin.clone();
        async move {
            fin.export_settlement(v1::ExportRequest {
                cycle: d0.to_string(),
                format: v1::ExportFormat::Pain001 as i32,
            })
            .await
        }
    };
    // No payment file from a draft.
    let draft = pain(&mut fin).await.unwrap_err();
    assert_eq!(
        (draft.code(), reason(&draft).as_str()),
        (Code::FailedPrecondition, "SETTLEMENT_NOT_FINAL")
    );

    // A partner certificate cannot use the finance API.
    let mut as_partner = coalition_proto::v1::finance_service_client::FinanceServiceClient::new(
        coalitiond::client::connect(&t.addr, &t.partner_pem("skyways"))
            .await
            .unwrap(),
    );
    for err in [
        as_partner
            .run_clearing(v1::CycleRequest {
                cycle: d0.to_string(),
            })
            .await
            .unwrap_err(),
        as_partner
            .get_settlement(v1::CycleRequest {
                cycle: d0.to_string(),
            })
            .await
            .unwrap_err(),
        as_partner
            .get_statement(v1::StatementRequest {
                cycle: d0.to_string(),
                partner: "bistro".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    // Finalized, it does not move: later traffic and re-runs leave it as it is.
    let fin_s = fin
        .finalize_settlement(v1::FinalizeSettlementRequest {
            cycle: d0.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let xml = String::from_utf8(pain(&mut fin).await.unwrap().into_inner().content).unwrap();
    assert!(
        xml.contains("<NbOfTxs>3</NbOfTxs>") && xml.contains("<CtrlSum>3.81</CtrlSum>"),
        "{xml}"
    );
    assert_eq!(
        (fin_s.status, fin_s.digest.clone()),
        (v1::SettlementStatus::Final as i32, s.digest.clone())
    );
    food.burn(burn("f4", "m1", 5)).await.unwrap();
    food.reverse_burn(reverse_burn("f5", "f2", 10))
        .await
        .unwrap();
    let after = fin
        .run_clearing(v1::CycleRequest {
            cycle: d0.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, fin_s);

    // The next day: what was left of the day's lots expires as breakage in it, and it chains to d0.
    let d1 = d0.succ_opt().unwrap();
    t.clock.advance(Duration::from_micros(
        (cycles.close(d1).unwrap() - t.clock.now() + 1_000_000) as u64,
    ));
    let s1 = wait_for_settlement(&mut fin, &d1.to_string()).await;
    assert_eq!(s1.previous_digest, s.digest);
    let t1 = s1.totals.unwrap();
    // Lots left: A 420−30−390+90+10 = 100, S 170−110−60+110 = 110, F 250−40−5 = 205; the late lot
    // expires after d1 closes.
    assert_eq!(t1.expired, 100 + 110 + 205);
    assert_eq!(t1.transactions, 3, "late, f4, f5");
    t.assert_invariants().await;
}

backends!(a_restarted_daemon_clears_the_cycles_it_missed_in_order);

async fn a_restarted_daemon_clears_the_cycles_it_missed_in_order(b: Backend) {
    let mut t = TestDaemon::start_with(b, fast_clearing).await;
    let cycles = t.config.cycles();
    let d0 = cycles.cycle_of(t.clock.now()).unwrap();
    let mut air = t.partner("skyways").await;
    let mut food = t.partner("bistro").await;
    air.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    food.burn(burn("f1", "m1", 40)).await.unwrap();
    t.stop().await;
    // Down for two cut-offs.
    let d1 = d0.succ_opt().unwrap();
    t.clock.advance(Duration::from_micros(
        (cycles.close(d1).unwrap() - t.clock.now() + 1_000_000) as u64,
    ));
    t.restart().await;
    let mut fin = t.finance().await;
    let s0 = wait_for_settlement(&mut fin, &d0.to_string()).await;
    let s1 = wait_for_settlement(&mut fin, &d1.to_string()).await;
    assert_eq!(s1.previous_digest, s0.digest, "cleared in order, chained");
    assert_eq!(position(&s0, "bistro").1, "0.48", "40 points × 0.012");
    assert_eq!(
        s1.totals.unwrap().expired,
        60,
        "the rest of the lot expired in the next cycle"
    );
    let list = fin
        .list_settlements(v1::ListSettlementsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let cycles_listed: Vec<String> = list.settlements.iter().map(|s| s.cycle.clone()).collect();
    assert_eq!(cycles_listed, vec![d1.to_string(), d0.to_string()]);
    t.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_clear_each_cycle_once() {
    if !postgres_available("two_daemons_clear_each_cycle_once").await {
        return;
    }
    let t = TestDaemon::start_with(Backend::Postgres, fast_clearing).await;
    let second = t.start_another().await;
    let cycles = t.config.cycles();
    let d0 = cycles.cycle_of(t.clock.now()).unwrap();
    let mut a = t.partner("skyways").await;
    let mut b = PartnerClient::new(
        coalitiond::client::connect(&second.addr.to_string(), &t.partner_pem("bistro"))
            .await
            .unwrap(),
    );
    a.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    b.burn(burn("b1", "m1", 10)).await.unwrap();
    // Both daemons see the cut-off pass at once (one shared clock) and both schedulers race.
    t.clock.advance(Duration::from_micros(
        (cycles.close(d0).unwrap() - t.clock.now() + 1_000_000) as u64,
    ));
    let mut fin = t.finance().await;
    let s = wait_for_settlement(&mut fin, &d0.to_string()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // several more scheduler ticks on both
    let db = t.pg.as_ref().unwrap();
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT cycle, digest FROM settlements")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(d0.to_string(), s.digest.clone())],
        "exactly one settlement for the cycle"
    );
    second.shutdown().await.unwrap();
    t.assert_invariants().await;
}

backends!(the_audit_recomputes_the_gross_matrix_clearing_reads);

/// Clearing reads each cycle's gross matrix as the writer kept it, not the allocations: the audit
/// recomputes every cell from the allocations and fails on any difference made behind the
/// daemon's back.
async fn the_audit_recomputes_the_gross_matrix_clearing_reads(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("a1", "m1", 400)).await.unwrap();
    food.earn(earn_bonus("f1", "m1", 100)).await.unwrap();
    // 400 of skyways' then 50 of bistro's, redeemed at bistro; 120 given back; a self-redemption.
    food.burn(burn("f2", "m1", 450)).await.receipt();
    food.reverse_burn(reverse_burn("f3", "f2", 120))
        .await
        .receipt();
    air.burn(burn("a2", "m1", 10)).await.receipt();
    t.assert_invariants().await;
    for change in [
        // One point more in a cell.
        "UPDATE cycle_matrix SET points = points + 1 WHERE issuer = 'skyways' AND redeemer = 'bistro'",
        // One allocation fewer counted.
        "UPDATE cycle_matrix SET allocations = allocations - 1 WHERE issuer = 'skyways' AND redeemer = 'bistro'",
        // A cell lost.
        "DELETE FROM cycle_matrix WHERE issuer = 'bistro' AND redeemer = 'bistro'",
        // A cell invented.
        "INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations) \
         SELECT cycle, 'freshmart', redeemer, rate, 5, 1 FROM cycle_matrix LIMIT 1",
    ] {
        assert_eq!(t.execute_sql(change).await, 1, "{change}");
        let report = t.audit().await;
        assert!(!report.ok(), "the audit missed: {change}\n{report}");
        // Put the matrix back as the writer would have kept it.
        t.execute_sql("DELETE FROM cycle_matrix").await;
        t.execute_sql(
            "INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations) \
             SELECT cycle, issuer, redeemer, CAST(rate AS TEXT), SUM(points), COUNT(*) FROM allocations \
             GROUP BY cycle, issuer, redeemer, CAST(rate AS TEXT)",
        )
        .await;
        t.assert_invariants().await;
    }
}
