//! Issue 31, points 3, 6 and 8, on both backends: a hold past its expiry reads expired before
//! anything releases it, and is given back (counted, told) at its instant, once, over three
//! daemons too; a partial return keeps a stamp only while the purchase net of its
//! returns meets the card's minimum; reconciliation files at their edges and the ingest result
//! CSV.

use coalition_tests::*;
use coalitiond::client::connect;
use coalitiond::cmd::{Cli, run};
use std::time::Duration;
use tonic::Code;

const SECOND: i64 = 1_000_000;

fn no_scheduler(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
}

/// No scheduler, and no round giving holds back: only what reads or counts a hold moves it.
fn no_rounds(toml: String) -> String {
    no_scheduler(toml).replace(
        "queue_depth = 16384",
        "queue_depth = 16384\nholds_round_off = true",
    )
}

/// The metrics are one recorder per process: the tests that count expired holds take turns.
static COUNTING_HOLDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `coalition_holds_total{event="expired"}` as this process counts it.
async fn expired_holds_counted(t: &TestDaemon) -> u64 {
    let text = t.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("coalition_holds_total{event=\"expired\"} "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// A watch of the partner's `hold.expired` events from `from`.
async fn watch_expired(c: &mut PartnerClient, from: i64) -> tonic::Streaming<v1::PartnerEvent> {
    c.watch_events(v1::WatchEventsRequest {
        from_sequence: from,
        types: vec!["hold.expired".into()],
    })
    .await
    .expect("watch")
    .into_inner()
}

/// Every `hold.expired` event of the partner's feed from `from`, until none comes for a while.
async fn expired_events(c: &mut PartnerClient, from: i64, wait: Duration) -> Vec<v1::PartnerEvent> {
    let mut stream = watch_expired(c, from).await;
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(wait, stream.message()).await {
        out.push(e);
    }
    out
}

/// The liability report's rows, every figure of each.
async fn liability(fin: &mut FinanceClient) -> Vec<(String, String, i64, i64, i64, i64, i64)> {
    fin.get_liability_report(v1::LiabilityReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rows
        .into_iter()
        .map(|r| {
            (
                r.issuer,
                r.month,
                r.issued,
                r.redeemed,
                r.reversed,
                r.expired,
                r.outstanding,
            )
        })
        .collect()
}

fn rfc3339_micros(at: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(at)
        .expect("RFC 3339")
        .timestamp_micros()
}

backends!(
    an_expired_hold_reads_expired_before_any_release,
    a_hold_is_given_back_and_told_at_its_expiry,
    a_partial_return_keeps_the_stamp_only_while_the_purchase_meets_the_minimum,
    reconciliation_files_at_their_edges_are_refused_whole,
    the_ingest_result_file_neutralises_formula_cells,
);

async fn an_expired_hold_reads_expired_before_any_release(b: Backend) {
    let _turn = COUNTING_HOLDS.lock().await;
    let t = TestDaemon::start_with(b, no_rounds).await;
    let mut shop = t.partner("freshmart").await;
    shop.earn(earn_bonus("e1", "m1", 1_000)).await.receipt();
    shop.authorize_burn(v1::AuthorizeBurnRequest {
        transaction_id: "h1".into(),
        member_id: "m1".into(),
        points: 500,
        hold_seconds: 2,
    })
    .await
    .unwrap();
    let state = |t: v1::Transaction| t.hold.unwrap().state;
    let get = v1::GetTransactionRequest {
        transaction_id: "h1".into(),
    };
    let held = shop
        .get_transaction(get.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(held), v1::HoldState::Held as i32);
    // Past its expiry, nothing in between: the balance has the points back, and the hold says so.
    t.advance_to(t.clock.now() + 2 * SECOND);
    let b = shop
        .get_balance(v1::GetBalanceRequest {
            member_id: "m1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.points, b.held_points), (1_000, 0));
    let m = shop
        .get_member(v1::GetMemberRequest {
            member_id: "m1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (m.held_points, m.available_points),
        (0, 1_000),
        "GetMember agrees with the balance before any release"
    );
    let read = shop
        .get_transaction(get.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(read),
        v1::HoldState::Expired as i32,
        "a hold past its expiry reads expired before any release"
    );
    // The liability report before the release: the same figures as after it (below).
    let mut fin = t.finance().await;
    let before = liability(&mut fin).await;
    // Still stored as held (nothing released it): the view, not the row, says expired.
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM holds WHERE state = 'held'")
            .await,
        1
    );
    // A look at the metrics counts it, once: the hold is given back (with its event) before the
    // counter is read.
    let counted = expired_holds_counted(&t).await;
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM holds WHERE state = 'held'")
            .await,
        0,
        "the look at the metrics gave it back"
    );
    let told = expired_events(&mut shop, 0, Duration::from_millis(800)).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].member_id, "m1");
    let Some(v1::partner_event::Payload::Hold(h)) = &told[0].payload else {
        panic!("{told:?}")
    };
    let h = h.hold.clone().unwrap();
    assert_eq!(
        (h.authorization_id.as_str(), h.state, h.points),
        ("h1", v1::HoldState::Expired as i32, 500)
    );
    // A capture is refused as expired, and releasing it stores the same state.
    let e = shop
        .capture_burn(v1::CaptureBurnRequest {
            transaction_id: "c1".into(),
            authorization_id: "h1".into(),
            points: 100,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let read = shop.get_transaction(get).await.unwrap().into_inner();
    assert_eq!(state(read), v1::HoldState::Expired as i32);
    // Counted once and told once, however many looked or tried.
    assert_eq!(expired_holds_counted(&t).await, counted);
    assert_eq!(
        expired_events(&mut shop, 0, Duration::from_millis(800))
            .await
            .len(),
        1
    );
    let after = liability(&mut fin).await;
    assert_eq!(
        before, after,
        "the liability report agrees before and after the release"
    );
    t.assert_invariants().await;
}

/// With the daemon's round on and nothing else happening, a hold is given back at its instant:
/// its `hold.expired` event reaches a follower and the metric counts it within a second of its
/// `expires_at` (the round used to look every 5 s), once.
async fn a_hold_is_given_back_and_told_at_its_expiry(b: Backend) {
    let _turn = COUNTING_HOLDS.lock().await;
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let mut shop = t.partner("freshmart").await;
    shop.earn(earn_bonus("e1", "m1", 1_000)).await.receipt();
    let before = expired_holds_counted(&t).await;
    let mut stream = watch_expired(&mut t.partner("freshmart").await, 0).await;
    // Several short holds, authorized at different moments of the round.
    let mut expiries = Vec::new();
    for i in 0..3 {
        let r = shop
            .authorize_burn(v1::AuthorizeBurnRequest {
                transaction_id: format!("h{i}"),
                member_id: "m1".into(),
                points: 100,
                hold_seconds: 1 + i,
            })
            .await
            .unwrap()
            .into_inner();
        expiries.push(rfc3339_micros(&r.hold.unwrap().expires_at));
        tokio::time::sleep(Duration::from_millis(330)).await;
    }
    for (i, expires_at) in expiries.iter().enumerate() {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the hold is told within 10 s")
            .unwrap()
            .unwrap();
        let Some(v1::partner_event::Payload::Hold(h)) = &e.payload else {
            panic!("{e:?}")
        };
        assert_eq!(h.hold.as_ref().unwrap().authorization_id, format!("h{i}"));
        let late = rfc3339_micros(&e.occurred_at) - expires_at;
        assert!(
            (0..1_000_000).contains(&late),
            "h{i} given back {late} µs after its expiry"
        );
    }
    assert_eq!(expired_holds_counted(&t).await, before + 3);
    // Nothing more: each counted and told once.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), stream.message())
            .await
            .is_err()
    );
    assert_eq!(expired_holds_counted(&t).await, before + 3);
    t.assert_invariants().await;
}

/// Three daemons on one PostgreSQL database, each with its round: every hold, authorized on any
/// of them, is given back once — counted once (the metric is one recorder for the three daemons
/// of this process) and told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_give_each_hold_back_once() {
    let _turn = COUNTING_HOLDS.lock().await;
    let t = TestDaemon::start_with(Backend::Postgres, no_scheduler).await;
    let others = [t.start_another().await, t.start_another().await];
    let mut addrs = vec![t.addr.clone()];
    addrs.extend(others.iter().map(|d| d.addr.to_string()));
    let before = expired_holds_counted(&t).await;
    let mut shop = t.partner("freshmart").await;
    shop.earn(earn_bonus("e1", "m1", 1_000)).await.receipt();
    shop.earn(earn_bonus("e2", "m2", 1_000)).await.receipt();
    for i in 0..6 {
        let mut c = PartnerClient::new(
            connect(&addrs[i % 3], &t.partner_pem("freshmart"))
                .await
                .expect("connect"),
        );
        c.authorize_burn(v1::AuthorizeBurnRequest {
            transaction_id: format!("h{i}"),
            member_id: format!("m{}", 1 + i % 2),
            points: 100,
            hold_seconds: 1 + (i as i64 % 2),
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(expired_holds_counted(&t).await, before + 6);
    let told = expired_events(&mut shop, 0, Duration::from_millis(800)).await;
    let mut ids: Vec<String> = told
        .iter()
        .map(|e| match &e.payload {
            Some(v1::partner_event::Payload::Hold(h)) => {
                h.hold.as_ref().unwrap().authorization_id.clone()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..6).map(|i| format!("h{i}")).collect::<Vec<_>>());
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM holds WHERE state = 'expired'")
            .await,
        6
    );
    t.assert_invariants().await;
}

/// bistro: every 3rd purchase of at least 10.00 completes a voucher card.
fn with_stamps(toml: String) -> String {
    no_scheduler(toml).replace(
        "max_bonus_points = 5000",
        "max_bonus_points = 5000\nstamps = { every = 3, min_purchase = \"10.00\", within_days = 30, voucher = \"a free dessert\", voucher_days = 10 }",
    )
}

async fn stamps_of(c: &mut PartnerClient, m: &str) -> i64 {
    c.get_member(v1::GetMemberRequest {
        member_id: m.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stamp_cards
    .first()
    .map_or(0, |c| c.stamps)
}

async fn a_partial_return_keeps_the_stamp_only_while_the_purchase_meets_the_minimum(b: Backend) {
    let t = TestDaemon::start_with(b, with_stamps).await;
    let mut bistro = t.partner("bistro").await;
    // Ten items of 10.00: one stamp.
    let r = bistro
        .earn(earn_purchase("big", "s", "100.00"))
        .await
        .receipt();
    assert_eq!(stamps_of(&mut bistro, "s").await, 1);
    // Five returned: 50.00 is left, still past the minimum, the stamp stays.
    bistro
        .reverse_earn(reverse_earn("back1", "big", r.points / 2))
        .await
        .receipt();
    assert_eq!(stamps_of(&mut bistro, "s").await, 1);
    // Four more: 10.00 left, exactly the minimum.
    bistro
        .reverse_earn(reverse_earn("back2", "big", r.points * 4 / 10))
        .await
        .receipt();
    assert_eq!(stamps_of(&mut bistro, "s").await, 1);
    // One more point of it back: below the minimum, the stamp goes back once…
    bistro
        .reverse_earn(reverse_earn("back3", "big", 1))
        .await
        .receipt();
    assert_eq!(stamps_of(&mut bistro, "s").await, 0);
    // …and the rest returned takes nothing more.
    bistro
        .reverse_earn(reverse_earn("back4", "big", 0))
        .await
        .receipt();
    assert_eq!(stamps_of(&mut bistro, "s").await, 0);
    // A purchase that completed a card whose voucher was then used: returned past the minimum,
    // the card goes below zero as for a full return (the voucher is not taken back).
    for (i, amount) in ["12.00", "12.00", "100.00"].iter().enumerate() {
        bistro
            .earn(earn_purchase(&format!("p{i}"), "s", amount))
            .await
            .receipt();
    }
    assert_eq!(
        stamps_of(&mut bistro, "s").await,
        0,
        "completed, starts over"
    );
    let p2 = bistro
        .get_transaction(v1::GetTransactionRequest {
            transaction_id: "p2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    bistro
        .reverse_earn(reverse_earn("p2-back", "p2", p2.points * 95 / 100))
        .await
        .receipt();
    assert_eq!(stamps_of(&mut bistro, "s").await, -1);
    t.assert_invariants().await;
}

async fn reconciliation_files_at_their_edges_are_refused_whole(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        no_scheduler(toml).replace("[clearing]", "[clearing]\nfirst_cycle = \"2020-01-01\"")
    })
    .await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("a1", "m1", 500)).await.receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600 * SECOND);
    t.clear(day).await.unwrap();
    let mut fin = t.finance().await;
    let send = |cycle: String, data: &str| {
        tokio_stream::iter(vec![v1::PartnerFileChunk {
            cycle,
            partner: "skyways".into(),
            data: data.as_bytes().to_vec(),
        }])
    };
    let good = "transaction_id,kind,member_id,points,purchase_amount\na1,earn,m1,500,\n";
    let r = fin
        .reconcile_partner_file(send(day.to_string(), good))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.matched, r.open_breaks), (1, 0));
    for (data, why) in [
        ("", "EMPTY"),
        ("\n", "EMPTY"),
        ("id,what,who\na1,earn,m1\n", "BAD_HEADER"),
    ] {
        let e = fin
            .reconcile_partner_file(send(day.to_string(), data))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::InvalidArgument, why),
            "{data:?}: {e:?}"
        );
    }
    // The last report stands.
    let listed = fin
        .list_reconciliations(v1::ReconciliationsRequest {
            cycle: day.to_string(),
            partner: "skyways".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .reconciliations;
    assert_eq!((listed[0].matched, listed[0].open_breaks), (1, 0));
    // A cycle before the coalition's first, by the file and by the partner's own call.
    let e = fin
        .reconcile_partner_file(send("2019-01-01".into(), good))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "BEFORE_FIRST_CYCLE")
    );
    let e = air
        .submit_partner_records(tokio_stream::iter(vec![v1::PartnerRecords {
            cycle: "2019-01-01".into(),
            records: vec![],
        }]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "BEFORE_FIRST_CYCLE")
    );
    assert_eq!(
        t.query_i64("SELECT COUNT(*) FROM reconciliations WHERE cycle = '2019-01-01'")
            .await,
        0
    );
}

async fn the_ingest_result_file_neutralises_formula_cells(b: Backend) {
    let t = TestDaemon::start(b).await;
    let day = t.dir.path().join("day.csv");
    std::fs::write(
        &day,
        "kind,transaction_id,member_id,points\n\
         earn,\"=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",m1,10\n\
         earn,+plain,m1,10\n\
         earn,ok-1,m1,10\n\
         earn,ok-2,m\u{1}1,10\n",
    )
    .unwrap();
    let config = t.dir.path().join("coalition.toml");
    let out = t.dir.path().join("day.results.csv");
    run(<Cli as clap::Parser>::parse_from([
        "coalitiond",
        "partner",
        "ingest",
        "--config",
        config.to_str().unwrap(),
        "--addr",
        &t.addr,
        "--partner",
        "skyways",
        "--file",
        day.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    let ids: Vec<String> = rows
        .records()
        .map(|r| r.unwrap().get(1).unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec![
            "'=HYPERLINK(\"http://evil.example\",\"x\")".to_string(),
            "'+plain".to_string(),
            "ok-1".to_string(),
            String::new(),
        ],
        "{text}"
    );
    // A control character in a cell is refused on its line (as a line that is not CSV is),
    // naming the column; the line was never sent.
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("member_id: holds a control character"),
        "{text}"
    );
    assert_eq!(t.balance("m1").await.0, 30);
}
