//! Settlements finance can pay from (issue 9), on both backends over real mTLS: prices change with
//! history and never rewrite a cycle already past; a reversal refunds the fee charged at issue;
//! a partner joins, one retires and then leaves the config, and every cycle before and after
//! clears and chains; statements add up to the payment; payment files only from final
//! settlements; the pay-in listing; no `-0.00` anywhere; the liability report at a past month-end;
//! a retry matched by id before today's rules.

use coalition_clearing::csv_writer::has_negative_zero;
use coalition_clearing::export::element_texts;
use coalition_tests::*;
use rust_decimal::Decimal;
use std::str::FromStr;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|_| panic!("{s:?} is a decimal"))
}

fn no_scheduler(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
}

/// The business date of the daemon's clock.
fn today(t: &TestDaemon) -> chrono::NaiveDate {
    t.config.cycles().cycle_of(t.clock.now()).unwrap()
}

/// Moves the clock to `hours` after the opening of the cycle `days` after `from`.
fn go_to(t: &TestDaemon, from: chrono::NaiveDate, days: i64, hours: i64) -> chrono::NaiveDate {
    let d = from + chrono::Duration::days(days);
    t.advance_to(t.config.cycles().open(d).unwrap() + hours * 3_600_000_000);
    assert_eq!(today(t), d);
    d
}

async fn export(
    t: &TestDaemon,
    cycle: chrono::NaiveDate,
    format: v1::ExportFormat,
) -> Result<String, tonic::Status> {
    t.finance()
        .await
        .export_settlement(v1::ExportRequest {
            cycle: cycle.to_string(),
            format: format as i32,
        })
        .await
        .map(|f| String::from_utf8(f.into_inner().content).unwrap())
}

async fn statement(t: &TestDaemon, cycle: chrono::NaiveDate, partner: &str) -> v1::Statement {
    t.finance()
        .await
        .get_statement(v1::StatementRequest {
            cycle: cycle.to_string(),
            partner: partner.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every participant's statement adds up: Σ lines = its net = its payment = the CSV's TOTAL.
async fn statements_add_up(t: &TestDaemon, s: &v1::Settlement) {
    let cycle: chrono::NaiveDate = s.cycle.parse().unwrap();
    for p in &s.positions {
        let st = statement(t, cycle, &p.participant).await;
        let sum: Decimal = st.lines.iter().map(|l| dec(&l.signed_value)).sum();
        let paid = s
            .payments
            .iter()
            .find(|x| x.participant == p.participant)
            .map_or(Decimal::ZERO, |x| match x.direction.as_str() {
                "paid_out" => dec(&x.amount),
                _ => -dec(&x.amount),
            });
        assert_eq!(
            sum,
            dec(&p.net),
            "{cycle} {}: lines {:?}",
            p.participant,
            st.lines
        );
        assert_eq!(dec(&st.net), dec(&p.net));
        assert_eq!(paid, dec(&p.net), "{cycle} {}: payment", p.participant);
        let kinds: Vec<&str> = st.lines.iter().map(|l| l.kind.as_str()).collect();
        let first_fee = kinds.iter().position(|k| *k != "allocation").unwrap();
        assert!(
            kinds[first_fee..].iter().all(|k| *k != "allocation"),
            "allocations first: {kinds:?}"
        );
        assert_eq!(kinds.last(), Some(&"rounding"), "rounding last: {kinds:?}");
        let total = st
            .csv
            .lines()
            .last()
            .unwrap()
            .split(',')
            .nth(12)
            .unwrap()
            .to_string();
        assert_eq!(dec(&total), dec(&p.net), "CSV TOTAL of {}", p.participant);
        assert!(!has_negative_zero(&st.csv), "{}", st.csv);
    }
}

backends!(prices_change_and_partners_join_and_leave);

async fn prices_change_and_partners_join_and_leave(b: Backend) {
    let mut t = TestDaemon::start_with(b, no_scheduler).await;
    let d0 = today(&t);
    let (mut sky, mut fresh, mut bistro) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    // Cycle 0, at the config's prices: skyways' fee 0.0005, freshmart's rate 0.008, skyways' 0.010.
    sky.earn(earn_bonus("s-e1", "ann", 1003)).await.receipt(); // fee 0.5015
    fresh.burn(burn("f-b1", "ann", 401)).await.receipt(); // skyways owes freshmart 3.208
    bistro.earn(earn_bonus("b-e1", "cid", 500)).await.receipt();
    sky.burn(burn("s-b1", "cid", 200)).await.receipt(); // bistro owes skyways 2.00

    // An operator changes prices; by default from the next cycle's opening.
    let mut ops = t.operator().await;
    let too_soon = ops
        .set_prices(v1::SetPricesRequest {
            partner: "freshmart".into(),
            redemption_rate: "0.5".into(),
            effective_from: coalitiond::clock::rfc3339(t.clock.now() + 10_000_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_soon.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&too_soon), "PRICE_CHANGE_TOO_SOON");
    let v = ops
        .set_prices(v1::SetPricesRequest {
            partner: "freshmart".into(),
            redemption_rate: "0.009".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.in_force);
    assert_eq!(
        (v.redemption_rate.as_str(), v.issuance_fee.as_str()),
        ("0.009", "0")
    );
    let d1_opens = coalitiond::clock::rfc3339(t.config.cycles().close(d0).unwrap());
    assert_eq!(v.effective_from, d1_opens);
    ops.set_prices(v1::SetPricesRequest {
        partner: "skyways".into(),
        issuance_fee: "0.001".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Still cycle 0: the old prices hold until the instant chosen.
    fresh.burn(burn("f-b2", "ann", 1)).await.receipt(); // 0.008

    // Cycle 1: the new prices. A reversal of cycle 0's earn refunds the fee charged then.
    let d1 = go_to(&t, d0, 1, 9);
    let s0 = t.clear(d0).await.unwrap();
    let mut sky = t.partner("skyways").await;
    let mut fresh = t.partner("freshmart").await;
    sky.earn(earn_bonus("s-e2", "bob", 1000)).await.receipt(); // fee 1.000
    fresh.burn(burn("f-b3", "bob", 400)).await.receipt(); // 400 × 0.009 = 3.60
    sky.reverse_earn(reverse_earn("s-r1", "s-e1", 100))
        .await
        .receipt(); // refund 100 × 0.0005
    let listed = t.price_versions("freshmart").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[1].in_force && !listed[0].in_force && listed[0].set_by == "config");

    // A partner joins; bistro retires from today (config), and skyways' rate changes in the config.
    t.reconfigure(|toml| {
        toml.replace(
            "id = \"bistro\"",
            &format!("id = \"bistro\"\nretired_from = \"{d1}\""),
        )
        .replace("redemption_rate = \"0.010\"", "redemption_rate = \"0.011\"")
            + "\n[[partners]]\nid = \"newco\"\nname = \"NewCo Cafés\"\nkind = \"restaurant\"\nearn_rate = \"1\"\n\
               redemption_rate = \"0.02\"\nrate_limit = { per_second = 100, burst = 100 }\n\
               iban = \"NL91ABNA0417164300\"\nbic = \"ABNANL2A\"\n"
    })
    .await;
    let mut bistro = t.partner("bistro").await;
    let retired = bistro
        .earn(earn_bonus("b-e2", "cid", 10))
        .await
        .unwrap_err();
    assert_eq!(retired.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&retired), "PARTNER_RETIRED");
    // Its members' points stay valid: cid spends bistro's 300 points at the newcomer.
    let mut newco = t.partner_as("newco").await;
    newco.earn(earn_bonus("n-e1", "cid", 50)).await.receipt();
    let r = newco.burn(burn("n-b1", "cid", 300)).await.receipt();
    assert_eq!(r.balance_after, 50);
    let sky_versions = t.price_versions("skyways").await;
    let from_config = sky_versions.last().unwrap();
    assert_eq!(
        (
            from_config.redemption_rate.as_str(),
            from_config.issuance_fee.as_str(),
            from_config.set_by.as_str()
        ),
        ("0.011", "0.001", "config"),
        "a config change is a new version of what changed, from the next cycle: {sky_versions:?}"
    );
    assert_eq!(
        from_config.effective_from,
        coalitiond::clock::rfc3339(t.config.cycles().close(d1).unwrap())
    );

    // Bistro leaves the config altogether; cycle 1 still clears with it as a payer.
    t.reconfigure(|toml| {
        let start = toml.find("[[partners]]\nid = \"bistro\"").unwrap();
        let end = toml[start + 1..]
            .find("[[partners]]")
            .map_or(toml.len(), |e| start + 1 + e);
        format!("{}{}", &toml[..start], &toml[end..])
    })
    .await;
    assert!(!t.config.partners.contains_key("bistro"));
    let listed = t
        .operator()
        .await
        .list_partners(v1::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner()
        .partners;
    let status = |id: &str| {
        listed
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.status.clone())
            .unwrap_or_default()
    };
    assert_eq!(status("bistro"), "left (not in the config)");
    assert_eq!(status("newco"), "active");
    go_to(&t, d0, 2, 1);
    let s1 = t.clear(d1).await.unwrap();
    assert_eq!(s1.previous_digest, s0.digest);
    let parts: Vec<&str> = s1
        .positions
        .iter()
        .map(|p| p.participant.as_str())
        .collect();
    assert_eq!(
        parts,
        ["bistro", "freshmart", "newco", "operator", "skyways"]
    );
    let net = |s: &v1::Settlement, p: &str| {
        dec(&s
            .positions
            .iter()
            .find(|x| x.participant == p)
            .unwrap()
            .net_exact)
    };
    // bistro owes newco 300 × 0.02; skyways owes freshmart 400 × 0.009 and the operator
    // 1000 × 0.001 − 100 × 0.0005 (the refund at the fee charged in cycle 0).
    assert_eq!(net(&s1, "bistro"), dec("-6"));
    assert_eq!(net(&s1, "newco"), dec("6"));
    assert_eq!(net(&s1, "freshmart"), dec("3.6"));
    assert_eq!(net(&s1, "operator"), dec("0.95"));
    assert_eq!(net(&s1, "skyways"), dec("-4.55"));
    // Cycle 0 at the old prices: 401 × 0.008 + 1 × 0.008; fee 1003 × 0.0005.
    assert_eq!(net(&s0, "freshmart"), dec("3.216"));
    assert_eq!(net(&s0, "operator"), dec("0.5015"));
    assert_eq!(net(&s0, "bistro"), dec("-2"));
    let fee_lines: Vec<(&str, i64, &str, &str)> = s1
        .fees
        .iter()
        .map(|f| {
            (
                f.issuer.as_str(),
                f.points,
                f.fee_rate.as_str(),
                f.value.as_str(),
            )
        })
        .collect();
    assert_eq!(
        fee_lines,
        [
            ("skyways", -100, "0.0005", "-0.05"),
            ("skyways", 1000, "0.001", "1")
        ]
    );
    let sky1 = statement(&t, d1, "skyways").await;
    let fees: Vec<(i64, String)> = sky1
        .lines
        .iter()
        .filter(|l| l.kind == "fee")
        .map(|l| (l.points, l.rate.clone()))
        .collect();
    assert_eq!(
        fees,
        [(-100, "0.0005".to_string()), (1000, "0.001".to_string())]
    );
    let d2 = go_to(&t, d0, 3, 1) - chrono::Duration::days(1);
    let s2 = t.clear(d2).await.unwrap();
    assert_eq!(s2.previous_digest, s1.digest);
    statements_add_up(&t, &s0).await;
    statements_add_up(&t, &s1).await;
    // A partner quiet in a cycle has an empty statement at 0.00; a name never seen is NOT_FOUND.
    let quiet = statement(&t, d2, "freshmart").await;
    assert_eq!((quiet.net.as_str(), quiet.lines.len()), ("0.00", 1));
    let unknown = t
        .finance()
        .await
        .get_statement(v1::StatementRequest {
            cycle: d2.to_string(),
            partner: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&unknown), "UNKNOWN_PARTNER");

    // Every draft again, after two price changes and two config changes: the same digests.
    for s in [&s0, &s1, &s2] {
        let again = t.clear(s.cycle.parse().unwrap()).await.unwrap();
        assert_eq!(again.digest, s.digest, "cycle {}", s.cycle);
    }
    t.assert_invariants().await;

    // The audit recomputes prices from their history: a rate edited in the ledger shows.
    t.execute_sql("UPDATE issuance SET fee_rate = '0.002' WHERE fee_rate = '0.001'")
        .await;
    let report = t.audit().await;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("issuance fee 0.002")),
        "{report}"
    );
}

backends!(payment_files_only_from_final_settlements);

async fn payment_files_only_from_final_settlements(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let d0 = today(&t);
    let (mut sky, mut fresh, mut bistro) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    sky.earn(earn_bonus("e1", "ann", 1003)).await.receipt();
    fresh.burn(burn("b1", "ann", 333)).await.receipt(); // skyways owes freshmart 2.664
    bistro.earn(earn_bonus("e2", "bea", 77)).await.receipt(); // silent: no fee, nothing redeemed
    go_to(&t, d0, 1, 1);
    let s = t.clear(d0).await.unwrap();
    let silent = s
        .positions
        .iter()
        .find(|p| p.participant == "bistro")
        .unwrap();
    assert_eq!(
        (
            silent.net.as_str(),
            silent.net_exact.as_str(),
            silent.fees.as_str()
        ),
        ("0.00", "0", "0")
    );
    let draft = export(&t, d0, v1::ExportFormat::Pain001).await.unwrap_err();
    assert_eq!(draft.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&draft), "SETTLEMENT_NOT_FINAL");
    t.finance()
        .await
        .finalize_settlement(v1::FinalizeSettlementRequest {
            cycle: d0.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let xml = export(&t, d0, v1::ExportFormat::Pain001).await.unwrap();
    if let Some(errors) = xmllint_pain001(&xml) {
        assert!(errors.is_empty(), "{errors}");
    }
    // Created in the coalition's time zone (Amsterdam: +01:00 in winter), executed on the first
    // weekday after the cycle and not before today.
    let created = &element_texts(&xml, "CreDtTm").unwrap()[0];
    assert!(
        created.ends_with("+01:00") || created.ends_with("+02:00"),
        "{created}"
    );
    let executed: chrono::NaiveDate = element_texts(&xml, "Dt").unwrap()[0].parse().unwrap();
    let mut expected = (d0 + chrono::Duration::days(1)).max(today(&t));
    while chrono::Datelike::weekday(&expected).number_from_monday() > 5 {
        expected += chrono::Duration::days(1);
    }
    assert_eq!(executed, expected);

    // Pay-ins: who pays in, how much, by when, with a reference; they add up to the payouts.
    let payins = export(&t, d0, v1::ExportFormat::Payins).await.unwrap();
    let mut r = csv::Reader::from_reader(payins.as_bytes());
    let header = r.headers().unwrap().clone();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let (total, payers) = rows.split_last().unwrap();
    let payers_expected: Vec<&str> = s
        .payments
        .iter()
        .filter(|p| p.direction == "pays_in")
        .map(|p| p.participant.as_str())
        .collect();
    assert_eq!(
        payers.iter().map(|r| &r[col("payer")]).collect::<Vec<_>>(),
        payers_expected
    );
    let sum: Decimal = payers.iter().map(|r| dec(&r[col("amount")])).sum();
    let ctrl = dec(&element_texts(&xml, "CtrlSum").unwrap()[0]);
    assert_eq!(sum, ctrl, "pay-ins = payouts");
    assert_eq!(dec(&total[col("amount")]), sum);
    assert_eq!(&total[col("record_count")], payers.len().to_string());
    for p in payers {
        assert_eq!(
            p[col("due_date")].parse::<chrono::NaiveDate>().unwrap(),
            executed
        );
        assert!(p[col("reference")].starts_with(&format!("CLR-{}-", d0.format("%Y%m%d"))));
        assert!(p[col("reference")].ends_with(&p[col("payer")]));
        assert_eq!(&p[col("pay_to_iban")], "NL91ABNA0417164300");
    }
    // Zero is never written -0.00, in any output of a cycle with a silent participant.
    let mut outputs = vec![
        xml,
        payins,
        export(&t, d0, v1::ExportFormat::Csv).await.unwrap(),
        export(&t, d0, v1::ExportFormat::Json).await.unwrap(),
    ];
    for p in &s.positions {
        outputs.push(statement(&t, d0, &p.participant).await.csv);
    }
    for o in &outputs {
        assert!(!has_negative_zero(o), "{o}");
    }
    statements_add_up(&t, &s).await;
}

backends!(liability_at_a_past_month_end);

/// A worked example, computed by hand. Points expire 10 days after they were earned. Day 0 is
/// the first day of the month after the test starts (month M), every event at 10:00.
///
/// - day 0: skyways issues 1000 to ann (lot L1); freshmart redeems 300 of them.
/// - day 5: skyways takes back 100 of its earn; freshmart redeems 50 more (from L1).
/// - day 10: L1 expires with 550 left.
/// - day 25: bistro issues 200 to ann (lot L2, expires on day 35).
/// - day 33 (in the next month): freshmart redeems 100 (from L2): after the cut, not in it.
///
/// As of M's last day: skyways/M issued 1000, redeemed 350, reversed 100, expired 550,
/// outstanding 0; bistro/M issued 200, outstanding 200 × 0.0095 = 1.90.
/// As of day 0: skyways/M issued 1000, redeemed 300, outstanding 700 × 0.009 = 6.30 (skyways'
/// `liability_value` in the example config; bistro's is set to 0.0095 here).
async fn liability_at_a_past_month_end(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        no_scheduler(toml)
            .replace(
                "points_expire_after_days = 730",
                "points_expire_after_days = 10",
            )
            .replace(
                "redemption_rate = \"0.012\"",
                "redemption_rate = \"0.012\"\nliability_value = \"0.0095\"",
            )
    })
    .await;
    use chrono::Datelike;
    let now = today(&t);
    let first = |y: i32, m: u32| chrono::NaiveDate::from_ymd_opt(y, m, 1).unwrap();
    let start = if now.month() == 12 {
        first(now.year() + 1, 1)
    } else {
        first(now.year(), now.month() + 1)
    };
    let month_end = if start.month() == 12 {
        first(start.year() + 1, 1)
    } else {
        first(start.year(), start.month() + 1)
    }
    .pred_opt()
    .unwrap();
    let month = start.format("%Y-%m").to_string();
    go_to(&t, start, 0, 10);
    let (mut sky, mut fresh) = (t.partner("skyways").await, t.partner("freshmart").await);
    sky.earn(earn_bonus("l1", "ann", 1000)).await.receipt();
    fresh.burn(burn("r1", "ann", 300)).await.receipt();
    go_to(&t, start, 5, 10);
    let mut sky = t.partner("skyways").await;
    let mut fresh = t.partner("freshmart").await;
    sky.reverse_earn(reverse_earn("x1", "l1", 100))
        .await
        .receipt();
    fresh.burn(burn("r2", "ann", 50)).await.receipt();
    go_to(&t, start, 25, 10);
    let mut bistro = t.partner("bistro").await;
    bistro.earn(earn_bonus("l2", "ann", 200)).await.receipt();
    go_to(&t, start, 33, 10);
    let mut fresh = t.partner("freshmart").await;
    fresh.burn(burn("r3", "ann", 100)).await.receipt();

    let report = |as_of: &str| {
        let as_of = as_of.to_string();
        let t = &t;
        async move {
            t.finance()
                .await
                .get_liability_report(v1::LiabilityReportRequest { as_of })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let row = |r: &v1::LiabilityReport, issuer: &str, month: &str| {
        let x = r
            .rows
            .iter()
            .find(|x| x.issuer == issuer && x.month == month)
            .unwrap_or_else(|| panic!("no row {issuer} {month}: {r:?}"));
        (
            x.issued,
            x.redeemed,
            x.reversed,
            x.expired,
            x.outstanding,
            x.value_per_point.clone(),
            x.outstanding_value.clone(),
        )
    };
    let end = report(&month_end.to_string()).await;
    assert_eq!(
        row(&end, "skyways", &month),
        (1000, 350, 100, 550, 0, "0.009".into(), "0".into())
    );
    assert_eq!(
        row(&end, "bistro", &month),
        (200, 0, 0, 0, 200, "0.0095".into(), "1.9".into())
    );
    assert_eq!(end.rows.len(), 2);
    assert_eq!(
        (end.total_outstanding_value.as_str(), end.currency.as_str()),
        ("1.9", "EUR")
    );
    assert_eq!(
        end.as_of,
        coalitiond::clock::rfc3339(t.config.cycles().close(month_end).unwrap())
    );
    let day0 = report(&start.to_string()).await;
    assert_eq!(
        row(&day0, "skyways", &month),
        (1000, 300, 0, 0, 700, "0.009".into(), "6.3".into())
    );
    assert_eq!(day0.rows.len(), 1);
    // Now: bistro's lot gave 100 to the burn after the cut.
    let now = report("").await;
    assert_eq!(row(&now, "bistro", &month).1, 100);
    let future = t
        .finance()
        .await
        .get_liability_report(v1::LiabilityReportRequest {
            as_of: (today(&t) + chrono::Duration::days(1)).to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&future), "CUT_IN_THE_FUTURE");
    t.assert_invariants().await;
}

backends!(a_retry_is_matched_before_todays_rules);

async fn a_retry_is_matched_before_todays_rules(b: Backend) {
    let mut t = TestDaemon::start_with(b, no_scheduler).await;
    let mut bistro = t.partner("bistro").await;
    let first = bistro.earn(earn_bonus("big", "ann", 4000)).await.receipt();
    t.reconfigure(|toml| toml.replace("max_bonus_points = 5000", "max_bonus_points = 1000"))
        .await;
    let mut bistro = t.partner("bistro").await;
    // The retry returns its stored receipt although today's cap would refuse it…
    let again = bistro.earn(earn_bonus("big", "ann", 4000)).await.receipt();
    assert_eq!(again, first);
    // …while the same content under a new id, or other content under this id, is judged today.
    for (id, points) in [("big2", 4000), ("big", 3000)] {
        let e = bistro
            .earn(earn_bonus(id, "ann", points))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{id} {points}");
    }
    assert_eq!(t.balance("ann").await.0, 4000);
    t.assert_invariants().await;
}

backends!(a_night_audit_cutoff_names_the_day_it_opens);

/// With a 04:00 cut-off, the business day that opens at 04:00 on D is cycle D: a purchase at 03:59
/// the next morning still belongs to it, one at 04:00 to the next.
async fn a_night_audit_cutoff_names_the_day_it_opens(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        no_scheduler(toml).replace("cutoff = \"00:00\"", "cutoff = \"04:00\"")
    })
    .await;
    let cycles = t.config.cycles();
    let d = today(&t);
    let opens = cycles.open(d).unwrap();
    let local = |at: i64| {
        chrono::DateTime::from_timestamp_micros(at)
            .unwrap()
            .with_timezone(&t.config.time_zone)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    assert_eq!(local(opens), format!("{d} 04:00"));
    let mut sky = t.partner("skyways").await;
    sky.earn(earn_bonus("evening", "ann", 10)).await.receipt();
    let next_opens = cycles.close(d).unwrap();
    t.advance_to(next_opens - 60_000_000);
    assert_eq!(local(t.clock.now()).get(11..), Some("03:59"));
    sky.earn(earn_bonus("before-four", "ann", 20))
        .await
        .receipt();
    t.advance_to(next_opens);
    sky.earn(earn_bonus("at-four", "ann", 40)).await.receipt();
    t.advance_to(cycles.close(d + chrono::Duration::days(1)).unwrap());
    let s = t.clear(d).await.unwrap();
    let totals = s.totals.unwrap();
    assert_eq!((totals.transactions, totals.earned), (2, 30), "cycle {d}");
    let next = t
        .clear(d + chrono::Duration::days(1))
        .await
        .unwrap()
        .totals
        .unwrap();
    assert_eq!((next.transactions, next.earned), (1, 40));
}

backends!(retirement_takes_effect_at_its_instant);

/// A partner retired from tomorrow: a call accepted a second before tomorrow opens is applied, one
/// at the opening is refused, and a retry of the earlier call still gets its receipt.
async fn retirement_takes_effect_at_its_instant(b: Backend) {
    let mut t = TestDaemon::start_with(b, no_scheduler).await;
    let tomorrow = today(&t) + chrono::Duration::days(1);
    t.reconfigure(|toml| {
        toml.replace(
            "id = \"bistro\"",
            &format!("id = \"bistro\"\nretired_from = \"{tomorrow}\""),
        )
    })
    .await;
    let opens = t.config.cycles().open(tomorrow).unwrap();
    t.advance_to(opens - 1_000_000);
    let mut bistro = t.partner("bistro").await;
    let last = bistro.earn(earn_bonus("last", "ann", 30)).await.receipt();
    t.advance_to(opens);
    let refused = bistro
        .earn(earn_bonus("late", "ann", 30))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (tonic::Code::PermissionDenied, "PARTNER_RETIRED")
    );
    let burn_refused = bistro.burn(burn("late-burn", "ann", 1)).await.unwrap_err();
    assert_eq!(reason(&burn_refused), "PARTNER_RETIRED");
    assert_eq!(
        bistro.earn(earn_bonus("last", "ann", 30)).await.receipt(),
        last
    );
    // Its points are still spendable elsewhere; its reads still work.
    let mut sky = t.partner("skyways").await;
    sky.burn(burn("spend", "ann", 30)).await.receipt();
    bistro
        .get_transaction(v1::GetTransactionRequest {
            transaction_id: "last".into(),
        })
        .await
        .unwrap();
    t.assert_invariants().await;
}

backends!(an_upgraded_ledger_gets_its_issuance_back);

/// A ledger from before prices had history has no issuance rows: the next start gives every earn
/// and earn reversal its row at the fee then in force, and the settlement is unchanged.
async fn an_upgraded_ledger_gets_its_issuance_back(b: Backend) {
    let mut t = TestDaemon::start_with(b, no_scheduler).await;
    let d0 = today(&t);
    let mut sky = t.partner("skyways").await;
    sky.earn(earn_bonus("e1", "ann", 1003)).await.receipt();
    sky.reverse_earn(reverse_earn("r1", "e1", 3))
        .await
        .receipt();
    t.partner("bistro")
        .await
        .earn(earn_bonus("e2", "bob", 10))
        .await
        .receipt();
    go_to(&t, d0, 1, 1);
    let s = t.clear(d0).await.unwrap();
    assert_eq!(s.totals.as_ref().unwrap().fees, "0.5");
    assert_eq!(t.execute_sql("DELETE FROM issuance").await, 3);
    assert!(!t.audit().await.ok(), "the audit misses the rows");
    t.restart().await;
    t.assert_invariants().await;
    let again = t.clear(d0).await.unwrap();
    assert_eq!(again.digest, s.digest);
}

backends!(a_retired_partners_points_taken_over_by_the_operator);

/// bistro retires with `points_taken_over`: from its retirement the operator owes for bistro's
/// points redeemed anywhere, while a reversal of a burn made before gives the money back to bistro.
async fn a_retired_partners_points_taken_over_by_the_operator(b: Backend) {
    let mut t = TestDaemon::start_with(b, no_scheduler).await;
    let d0 = today(&t);
    t.partner("bistro")
        .await
        .earn(earn_bonus("b1", "ann", 500))
        .await
        .receipt();
    let mut sky = t.partner("skyways").await;
    sky.burn(burn("s1", "ann", 100)).await.receipt(); // bistro owes skyways 100 × 0.010
    let d1 = d0 + chrono::Duration::days(1);
    t.reconfigure(|toml| {
        toml.replace(
            "id = \"bistro\"",
            &format!("id = \"bistro\"\nretired_from = \"{d1}\"\npoints_taken_over = true"),
        )
    })
    .await;
    go_to(&t, d0, 1, 2);
    let r = t
        .partner("freshmart")
        .await
        .burn(burn("f1", "ann", 200))
        .await
        .receipt();
    assert_eq!(slices(&r), [("operator".to_string(), 200)]);
    t.partner("skyways")
        .await
        .reverse_burn(reverse_burn("s1-back", "s1", 0))
        .await
        .receipt();
    go_to(&t, d0, 2, 1);
    let s0 = t.clear(d0).await.unwrap();
    let s1 = t.clear(d1).await.unwrap();
    let net = |s: &v1::Settlement, p: &str| {
        s.positions
            .iter()
            .find(|x| x.participant == p)
            .map(|x| dec(&x.net_exact))
    };
    assert_eq!(net(&s0, "bistro"), Some(dec("-1")));
    // Cycle 1: the operator owes freshmart 200 × 0.008; skyways gives bistro its 1.00 back.
    assert_eq!(net(&s1, "operator"), Some(dec("-1.6")));
    assert_eq!(net(&s1, "freshmart"), Some(dec("1.6")));
    assert_eq!(net(&s1, "bistro"), Some(dec("1")));
    assert_eq!(net(&s1, "skyways"), Some(dec("-1")));
    assert_eq!(t.balance("ann").await.0, 300);
    t.assert_invariants().await;
    let again = t.clear(d1).await.unwrap();
    assert_eq!(again.digest, s1.digest);
    // Before the takeover, the operator owed nothing for bistro's points: an edit saying so shows.
    t.execute_sql(
        "UPDATE allocations SET issuer = 'operator' WHERE txn_id = \
         (SELECT id FROM transactions WHERE partner_txn_id = 's1')",
    )
    .await;
    let report = t.audit().await;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.starts_with("every allocation points at a real lot")),
        "{report}"
    );
}
