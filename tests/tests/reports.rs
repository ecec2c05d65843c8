//! Programme reports (issue 13): every KPI of a small hand-made ledger over three months, worked
//! out by hand below, read through the finance API, the partner API and the CLI's CSV, JSON and
//! HTML — which must say the same. On both backends, over mTLS.

use chrono::{Datelike, NaiveDate, TimeZone};
use clap::Parser;
use coalition_tests::*;
use coalitiond::cmd::{Cli, run};
use std::collections::BTreeMap;

/// A key for members' pseudonyms (tests only).
pub const MEMBER_KEY: &str = "test-member-key-0123456789abcdef0123456789";

fn config(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
        .replace("time_zone = \"Europe/Amsterdam\"", "time_zone = \"UTC\"")
        .replace(
            "access_log_days = 365",
            &format!("access_log_days = 365\nmember_key = \"{MEMBER_KEY}\""),
        )
        + "\n[programme]\ntier_bonus_funder = \"operator\"\n\
           [[programme.tiers]]\nname = \"bronze\"\nthreshold = 0\nmultiplier = \"1\"\n\
           [[programme.tiers]]\nname = \"silver\"\nthreshold = 200\nmultiplier = \"1\"\n"
}

/// The three months of the example: M1 is the month after the one the test starts in.
struct Months {
    first: NaiveDate,
}

impl Months {
    fn now() -> Months {
        let today = chrono::Utc::now().date_naive();
        let next = if today.month() == 12 {
            NaiveDate::from_ymd_opt(today.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(today.year(), today.month() + 1, 1)
        };
        Months {
            first: next.unwrap(),
        }
    }

    /// Day `day` of month `k` (0, 1, 2).
    fn day(&self, k: u32, day: u32) -> NaiveDate {
        let m0 = self.first.month0() + k;
        NaiveDate::from_ymd_opt(self.first.year() + (m0 / 12) as i32, m0 % 12 + 1, day).unwrap()
    }

    /// Noon UTC of that day, in microseconds.
    fn noon(&self, k: u32, day: u32) -> i64 {
        chrono::Utc
            .from_utc_datetime(&self.day(k, day).and_hms_opt(12, 0, 0).unwrap())
            .timestamp_micros()
    }

    fn name(&self, k: u32) -> String {
        self.day(k, 1).format("%Y-%m").to_string()
    }
}

async fn consent(p: &mut PartnerClient, id: &str, member: &str) {
    p.set_consent(v1::SetConsentRequest {
        transaction_id: id.into(),
        member_id: member.into(),
        purpose: "analytics".into(),
        granted: true,
    })
    .await
    .unwrap();
}

async fn tier_of(p: &mut PartnerClient, member: &str) -> String {
    p.get_member(v1::GetMemberRequest {
        member_id: member.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .tier
}

/// Runs the example; returns the daemon and the months.
async fn worked_example(b: Backend) -> (TestDaemon, Months) {
    let t = TestDaemon::start_with(b, config).await;
    let m = Months::now();
    let mut air = t.partner("skyways").await;
    let mut shop = t.partner("freshmart").await;
    let mut food = t.partner("bistro").await;
    // Analytics consent: ann, ben, cat, fay — not dan.
    for (i, who) in ["ann", "ben", "cat", "fay"].iter().enumerate() {
        consent(&mut shop, &format!("c{i}"), who).await;
    }
    // M1
    t.advance_to(m.noon(0, 5));
    air.earn(earn_purchase("s1", "ann", "100.00"))
        .await
        .receipt(); // 100 points
    shop.earn(earn_purchase("f1", "ben", "30.00"))
        .await
        .receipt(); // 60 points
    t.advance_to(m.noon(0, 10));
    food.earn(earn_bonus("b1", "cat", 200)).await.receipt();
    air.earn(earn_bonus("s2", "dan", 50)).await.receipt();
    t.advance_to(m.noon(0, 15));
    shop.burn(burn("f2", "ann", 40)).await.receipt(); // skyways → freshmart 40
    t.advance_to(m.noon(0, 20));
    air.earn(earn_purchase("s3", "cat", "50.00"))
        .await
        .receipt(); // 50 points
    // M2
    t.advance_to(m.noon(1, 10));
    shop.earn(earn_purchase("f3", "ann", "20.00"))
        .await
        .receipt(); // 40 points
    air.reverse_earn(reverse_earn("s4", "s3", 20))
        .await
        .receipt();
    t.advance_to(m.noon(1, 12));
    food.burn(burn("b2", "ben", 10)).await.receipt(); // freshmart → bistro 10
    shop.earn(earn_bonus("f4", "fay", 70)).await.receipt();
    // M3
    t.advance_to(m.noon(2, 3));
    food.reverse_burn(reverse_burn("b3", "b2", 4))
        .await
        .receipt();
    air.earn(earn_bonus("s5", "ann", 100)).await.receipt();
    (t, m)
}

/// Runs `coalitiond report kpi` for the example's three months against `t`, writing `out`.
async fn report_kpi(
    t: &TestDaemon,
    m: &Months,
    extra: &[&str],
    format: &str,
    out: &std::path::Path,
) {
    let path = t.dir.path().join("coalition.toml");
    let (from, to) = (m.name(0), m.name(2));
    let mut argv = vec![
        "coalitiond",
        "report",
        "kpi",
        "--config",
        path.to_str().unwrap(),
        "--addr",
        &t.addr,
        "--from",
        &from,
        "--to",
        &to,
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    run(Cli::parse_from(argv)).await.unwrap();
}

fn kpis(months: &[v1::MonthKpis]) -> BTreeMap<String, v1::MonthKpis> {
    months
        .iter()
        .map(|k| (k.month.clone(), k.clone()))
        .collect()
}

backends!(every_kpi_of_a_hand_made_ledger_and_the_formats_agree);

async fn every_kpi_of_a_hand_made_ledger_and_the_formats_agree(b: Backend) {
    let (t, m) = worked_example(b).await;
    let mut shop = t.partner("freshmart").await;
    // The tiers as the members' own reads tell them (cat is read before she is forgotten).
    let mut tiers: BTreeMap<String, i64> = BTreeMap::new();
    for who in ["ann", "ben", "cat", "fay"] {
        *tiers.entry(tier_of(&mut shop, who).await).or_default() += 1;
    }
    assert_eq!(tiers.values().sum::<i64>(), 4);

    // cat is forgotten in M3: her 230 points (bistro 200, skyways 30) expire at once and are swept
    // by the clearing of that day; she is counted in every KPI as before.
    t.advance_to(m.noon(2, 5));
    let f = t
        .operator()
        .await
        .forget_member(v1::ForgetMemberRequest {
            member_id: "cat".into(),
            reason: "ticket 77: member's request".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.points_forfeited, 230);
    t.advance_to(m.noon(2, 6));
    let mut day = m.day(0, 5);
    while day <= m.day(2, 5) {
        t.clear(day).await.unwrap();
        day = day.succ_opt().unwrap();
    }

    let req = |partner: &str| v1::ProgrammeReportRequest {
        from_month: m.name(0),
        to_month: m.name(2),
        partner: partner.into(),
    };
    let r = t
        .finance()
        .await
        .get_programme_report(req(""))
        .await
        .unwrap()
        .into_inner();
    let k = kpis(&r.months);
    let (m1, m2, m3) = (&k[&m.name(0)], &k[&m.name(1)], &k[&m.name(2)]);
    // M1: ann, ben, cat active (dan did not agree to analytics); all three new; ann (2nd after
    // 10 days) and cat (10 days) activated, ben (38+ days) not; nobody before them.
    assert_eq!(
        (
            m1.members_active,
            m1.new_members,
            m1.activated,
            m1.activation_rate.as_str()
        ),
        (3, 3, 2, "0.6667")
    );
    assert_eq!((m1.returning, m1.return_rate.as_str()), (0, ""));
    // Purchases s1, f1, s3: 180.00, 60.00 each; 100 + 60 + 200 + 50 + 50 issued, 40 redeemed.
    assert_eq!(
        (
            m1.purchases,
            m1.purchase_amount.as_str(),
            m1.average_purchase.as_str()
        ),
        (3, "180.00", "60.00")
    );
    assert_eq!(
        (m1.points_issued, m1.points_redeemed, m1.points_expired),
        (460, 40, 0)
    );
    assert_eq!((m1.points_reversed_earn, m1.points_reversed_burn), (0, 0));
    assert_eq!(
        (m1.redemption_rate.as_str(), m1.breakage_rate.as_str()),
        ("0.087", "0")
    );
    // M2: ann, cat (her earn reversed), ben, fay active; fay new, not activated; ann, cat, ben
    // came back: 3 of M1's 3.
    assert_eq!(
        (
            m2.members_active,
            m2.new_members,
            m2.activated,
            m2.activation_rate.as_str()
        ),
        (4, 1, 0, "0")
    );
    assert_eq!((m2.returning, m2.return_rate.as_str()), (3, "1"));
    assert_eq!(
        (
            m2.purchases,
            m2.purchase_amount.as_str(),
            m2.average_purchase.as_str()
        ),
        (1, "20.00", "20.00")
    );
    assert_eq!(
        (
            m2.points_issued,
            m2.points_redeemed,
            m2.points_reversed_earn
        ),
        (110, 10, 20)
    );
    assert_eq!(
        (m2.redemption_rate.as_str(), m2.breakage_rate.as_str()),
        ("0.0909", "0")
    );
    // M3: ben (burn reversed) and ann active, both back from M2's four: 2/4; cat's 230 points
    // expired against 100 issued.
    assert_eq!(
        (
            m3.members_active,
            m3.new_members,
            m3.activation_rate.as_str()
        ),
        (2, 0, "")
    );
    assert_eq!((m3.returning, m3.return_rate.as_str()), (2, "0.5"));
    assert_eq!(
        (
            m3.purchases,
            m3.purchase_amount.as_str(),
            m3.average_purchase.as_str()
        ),
        (0, "0.00", "")
    );
    assert_eq!(
        (m3.points_issued, m3.points_expired, m3.points_reversed_burn),
        (100, 230, 4)
    );
    assert_eq!(
        (m3.redemption_rate.as_str(), m3.breakage_rate.as_str()),
        ("0", "2.3")
    );
    // Flows over the three months: skyways → freshmart 40 at 0.008; freshmart → bistro 10 − 4 at
    // 0.012.
    let flows: Vec<(String, String, i64, String)> = r
        .flows
        .iter()
        .map(|f| {
            (
                f.issuer.clone(),
                f.redeemer.clone(),
                f.points,
                f.amount.clone(),
            )
        })
        .collect();
    assert_eq!(
        flows,
        vec![
            ("skyways".into(), "freshmart".into(), 40, "0.32".into()),
            ("freshmart".into(), "bistro".into(), 6, "0.072".into()),
        ]
    );
    let reported: BTreeMap<String, i64> = r
        .tiers
        .iter()
        .map(|t| (t.tier.clone(), t.members))
        .collect();
    assert_eq!(reported, tiers, "tiers as the members' reads said");

    // The coalition's member KPIs come from the members' kept activity; read from the
    // transactions instead (as for a span older than the rows keep) they are the same.
    let span = coalitiond::report::Span::parse(&m.name(0), &m.name(2)).unwrap();
    let cycles = t.config.cycles();
    let opens: Vec<i64> = (0..4)
        .map(|k| {
            cycles
                .open(
                    m.day(0, 1)
                        .checked_add_months(chrono::Months::new(k))
                        .unwrap(),
                )
                .unwrap()
        })
        .collect();
    let query = |now_month| coalitiond::store::report::KpiQuery {
        span,
        partner: None,
        minor_units: 2,
        tiers: true,
        opens: opens.clone(),
        now_month,
    };
    let store = &t.daemon().store;
    let kept = query(span.to);
    let scanned = query(span.to.plus(100));
    let (a, b) = (
        store.kpi_facts(&kept).await.unwrap(),
        store.kpi_facts(&scanned).await.unwrap(),
    );
    let nonzero = |v: &Vec<(coalitiond::report::Month, i64, i64)>| {
        let mut v: Vec<_> = v.iter().filter(|x| x.1 != 0 || x.2 != 0).cloned().collect();
        v.sort();
        v
    };
    assert_eq!(
        nonzero(&a.active),
        nonzero(&b.active),
        "active from rows = from transactions"
    );
    assert_eq!(
        nonzero(&a.new),
        nonzero(&b.new),
        "new from rows = from transactions"
    );
    let mut ca = store.cohort_cells(&kept).await.unwrap();
    let mut cb = store.cohort_cells(&scanned).await.unwrap();
    ca.retain(|c| c.2 != 0);
    cb.retain(|c| c.2 != 0);
    ca.sort();
    cb.sort();
    assert_eq!(ca, cb, "cohorts from rows = from transactions");

    // freshmart's own KPIs, through the partner API (the request's partner is ignored) and
    // through finance: the same.
    let own = shop
        .get_programme_report(req("skyways"))
        .await
        .unwrap()
        .into_inner();
    let by_finance = t
        .finance()
        .await
        .get_programme_report(req("freshmart"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.partner, "freshmart");
    assert_eq!(own.months, by_finance.months);
    let k = kpis(&own.months);
    let (p1, p2, p3) = (&k[&m.name(0)], &k[&m.name(1)], &k[&m.name(2)]);
    // M1 at freshmart: ben (f1) and ann (f2), both new there; ann's next freshmart call came
    // within 30 days (f3), ben never came back.
    assert_eq!(
        (
            p1.members_active,
            p1.new_members,
            p1.activated,
            p1.points_issued,
            p1.points_redeemed
        ),
        (2, 2, 1, 60, 40)
    );
    assert_eq!((p1.purchases, p1.purchase_amount.as_str()), (1, "30.00"));
    // M2: ann back, fay new; M3: nobody.
    assert_eq!(
        (
            p2.members_active,
            p2.new_members,
            p2.returning,
            p2.return_rate.as_str(),
            p2.points_issued
        ),
        (2, 1, 1, "0.5", 110)
    );
    assert_eq!((p3.members_active, p3.return_rate.as_str()), (0, "0"));
    assert_eq!(own.flows.len(), 2, "both flows touch freshmart");

    // Cohorts: M1's three (ann, ben, cat) — two of them in M2 besides... every one came back in
    // M2, ann in M3 (ben's M3 call was a burn reversal: a transaction, so active too).
    let c = t
        .finance()
        .await
        .get_cohorts(req(""))
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(String, i64, Vec<i64>)> = c
        .cohorts
        .iter()
        .map(|c| (c.month.clone(), c.members, c.active.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![(m.name(0), 3, vec![3, 3, 2]), (m.name(1), 1, vec![1, 0]),]
    );

    // The CLI's CSV, JSON and HTML say the same figures as the API.
    let out = |f: &str| t.dir.path().join(format!("kpi.{f}"));
    for format in ["csv", "json", "html"] {
        report_kpi(&t, &m, &[], format, &out(format)).await;
    }
    // With a partner's certificate the CLI reads that partner's own report.
    report_kpi(
        &t,
        &m,
        &["--identity", "partner-freshmart"],
        "json",
        &out("own.json"),
    )
    .await;
    let own_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out("own.json")).unwrap()).unwrap();
    assert_eq!(own_json["partner"], "freshmart");
    assert_eq!(own_json["months"][0]["points_issued"], 60);
    let api: BTreeMap<(String, String), String> = report_values(&r);
    let mut csv_values = BTreeMap::new();
    let mut reader = csv::Reader::from_path(out("csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    for row in reader.records() {
        let row = row.unwrap();
        for (i, key) in header.iter().enumerate().skip(1) {
            csv_values.insert((row[0].to_string(), key.clone()), row[i].to_string());
        }
    }
    assert_eq!(csv_values, api, "CSV = API");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out("json")).unwrap()).unwrap();
    let mut json_values = BTreeMap::new();
    for month in json["months"].as_array().unwrap() {
        let name = month["month"].as_str().unwrap().to_string();
        for (key, v) in month.as_object().unwrap() {
            if key == "month" {
                continue;
            }
            let text = match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            json_values.insert((name.clone(), key.clone()), text);
        }
    }
    assert_eq!(json_values, api, "JSON = API");
    let html = std::fs::read_to_string(out("html")).unwrap();
    for ((month, key), value) in &api {
        let cell = format!("data-month=\"{month}\" data-kpi=\"{key}\" data-value=\"{value}\"");
        assert!(html.contains(&cell), "HTML lacks {cell}");
    }
    for chart in coalitiond::report::KPIS
        .iter()
        .map(|k| k.key)
        .chain(["flows", "cohorts"])
    {
        assert!(
            html.contains(&format!("data-chart=\"{chart}\"")),
            "HTML lacks the chart {chart}"
        );
    }
    assert!(html.contains("data-flow=\"skyways→freshmart\">40<"));
    // Self-contained: nothing to run or fetch.
    for fetch in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(fetch), "HTML contains {fetch}");
    }
}

/// (month, KPI key) → the API's value as text.
fn report_values(r: &v1::ProgrammeReport) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for k in &r.months {
        let pairs: [(&str, String); 16] = [
            ("members_active", k.members_active.to_string()),
            ("new_members", k.new_members.to_string()),
            ("activated", k.activated.to_string()),
            ("activation_rate", k.activation_rate.clone()),
            ("returning", k.returning.to_string()),
            ("return_rate", k.return_rate.clone()),
            ("purchases", k.purchases.to_string()),
            ("purchase_amount", k.purchase_amount.clone()),
            ("average_purchase", k.average_purchase.clone()),
            ("points_issued", k.points_issued.to_string()),
            ("points_redeemed", k.points_redeemed.to_string()),
            ("points_expired", k.points_expired.to_string()),
            ("points_reversed_earn", k.points_reversed_earn.to_string()),
            ("points_reversed_burn", k.points_reversed_burn.to_string()),
            ("redemption_rate", k.redemption_rate.clone()),
            ("breakage_rate", k.breakage_rate.clone()),
        ];
        for (key, v) in pairs {
            out.insert((k.month.clone(), key.to_string()), v);
        }
    }
    out
}

backends!(a_report_names_its_mistakes);

async fn a_report_names_its_mistakes(b: Backend) {
    let t = TestDaemon::start_with(b, config).await;
    let mut fin = t.finance().await;
    let ask = |from: &str, to: &str, partner: &str| v1::ProgrammeReportRequest {
        from_month: from.into(),
        to_month: to.into(),
        partner: partner.into(),
    };
    for (r, code, why) in [
        (
            ask("2026-13", "2027-01", ""),
            tonic::Code::InvalidArgument,
            "INVALID_MONTHS",
        ),
        (
            ask("2027-03", "2027-01", ""),
            tonic::Code::InvalidArgument,
            "INVALID_MONTHS",
        ),
        (
            ask("2020-01", "2027-01", ""),
            tonic::Code::InvalidArgument,
            "INVALID_MONTHS",
        ),
        (
            ask("2027-01", "2027-02", "nobody"),
            tonic::Code::NotFound,
            "UNKNOWN_PARTNER",
        ),
    ] {
        let e = fin.get_programme_report(r).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{e:?}");
    }
    // An empty ledger: every month there, counts 0, rates undefined.
    let r = fin
        .get_programme_report(ask("2027-01", "2027-03", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.months.len(), 3);
    assert!(
        r.months
            .iter()
            .all(|k| k.members_active == 0 && k.redemption_rate.is_empty())
    );
}

/// The HTML report looks right in a real browser: headless Chromium renders it to a PNG of the
/// size asked, and the picture is not blank (charts, tiles and the heat map put ink on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_in_a_real_browser() {
    let (t, m) = worked_example(Backend::Sqlite).await;
    let html = t.dir.path().join("kpi.html");
    report_kpi(&t, &m, &[], "html", &html).await;
    let Some(png_bytes) = chromium_screenshot(&html, 1280, 2000) else {
        return;
    };
    // To look at it: COALITION_KEEP_SCREENSHOT=/some/file.png.
    if let Ok(keep) = std::env::var("COALITION_KEEP_SCREENSHOT") {
        std::fs::write(keep, &png_bytes).unwrap();
    }
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (1280, 2000),
        "the size asked for"
    );
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let total = (info.width * info.height) as usize;
    let mut inked = 0usize;
    let mut blue = 0usize;
    for px in pixels.chunks(channels) {
        let (r, g, b) = (px[0], px[1], px[2]);
        if r < 230 || g < 230 || b < 230 {
            inked += 1;
        }
        // The charts' line and the heat map's deepest cells.
        if b > 150 && r < 90 {
            blue += 1;
        }
    }
    assert!(
        inked * 100 > total,
        "under 1 % of the page has ink ({inked} of {total} pixels): blank?"
    );
    assert!(blue > 500, "no chart drawn in blue ({blue} pixels)");
}
