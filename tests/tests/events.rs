//! Partners' event feeds (issue 33), on both backends over real mTLS: every event type told by its
//! fact and by nothing else (retries and refusals tell nothing), numbered per partner without
//! gaps, followed live; a batch that fails to commit tells nothing; another partner's events never
//! show; bad cursors, unknown types and other roles get clear statuses; retention; forgotten
//! members; two daemons on one PostgreSQL database tell the same feed.

use coalition_certs::Role;
use coalition_tests::*;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;

/// UTC days, no scheduler, stamp cards (every 3rd purchase of 10.00, a voucher) and a tier ladder
/// (silver from 1,000 qualifying points).
fn programme(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
        .replace("time_zone = \"Europe/Amsterdam\"", "time_zone = \"UTC\"")
        .replace(
            "max_bonus_points = 5000",
            "max_bonus_points = 5000\nstamps = { every = 3, min_purchase = \"10.00\", within_days = 30, voucher = \"a free dessert\", voucher_days = 10 }",
        )
        + "\n[programme]\ntier_bonus_funder = \"partner\"\n\
           [[programme.tiers]]\nname = \"bronze\"\nthreshold = 0\nmultiplier = \"1\"\n\
           [[programme.tiers]]\nname = \"silver\"\nthreshold = 1000\nmultiplier = \"1\"\n"
}

/// Every event of `partner`'s feed from `from` until none comes for a while.
async fn feed_from(client: &mut PartnerClient, from: i64, types: &[&str]) -> Vec<v1::PartnerEvent> {
    let mut stream = client
        .watch_events(v1::WatchEventsRequest {
            from_sequence: from,
            types: types.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(1200), stream.message()).await
    {
        out.push(e);
    }
    out
}

async fn feed(t: &TestDaemon, partner: &str) -> Vec<v1::PartnerEvent> {
    feed_from(&mut t.partner(partner).await, 0, &[]).await
}

fn types_of(events: &[v1::PartnerEvent]) -> Vec<&str> {
    events.iter().map(|e| e.r#type.as_str()).collect()
}

/// Each feed is numbered 1, 2, 3, … with ids from its partner and sequence.
fn numbered(partner: &str, events: &[v1::PartnerEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as i64 + 1, "{partner}: {events:?}");
        assert_eq!(e.event_id, format!("evt_{partner}_{}", e.sequence));
    }
}

fn receipt_of(e: &v1::PartnerEvent) -> v1::Receipt {
    match &e.payload {
        Some(v1::partner_event::Payload::Transaction(t)) => t.receipt.clone().unwrap(),
        Some(v1::partner_event::Payload::Hold(h)) => h.receipt.clone().unwrap_or_default(),
        other => panic!("no receipt in {other:?}"),
    }
}

fn hold(id: &str, member: &str, points: i64, seconds: i64) -> v1::AuthorizeBurnRequest {
    v1::AuthorizeBurnRequest {
        transaction_id: id.into(),
        member_id: member.into(),
        points,
        hold_seconds: seconds,
    }
}

backends!(
    each_fact_tells_its_event_and_nothing_else,
    a_watch_follows_live_and_refuses_what_it_cannot_serve,
    a_batch_that_fails_to_commit_tells_nothing,
    events_past_retention_are_gone_and_an_older_cursor_is_refused,
    a_forgotten_members_events_name_its_pseudonym,
    live_followers_get_every_event_once_in_order_whatever_commits_it,
);

async fn each_fact_tells_its_event_and_nothing_else(b: Backend) {
    let t = TestDaemon::start_with(b, programme).await;
    let (mut air, mut food, mut shop) = (
        t.partner("skyways").await,
        t.partner("bistro").await,
        t.partner("freshmart").await,
    );
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    // Transactions: an earn (its retry and a refused earn tell nothing), a burn, its partial
    // return, a partial reversal of the earn.
    let a1 = air.earn(earn_bonus("a1", "m1", 500)).await.receipt();
    assert_eq!(air.earn(earn_bonus("a1", "m1", 500)).await.receipt(), a1);
    // Above bistro's max_bonus_points (5,000): refused, so told nowhere.
    food.earn(earn_bonus("a-big", "m1", 6_000))
        .await
        .unwrap_err();
    let f1 = food.burn(burn("f1", "m1", 100)).await.receipt();
    let f1r = food
        .reverse_burn(reverse_burn("f1r", "f1", 40))
        .await
        .receipt();
    let a1r = air
        .reverse_earn(reverse_earn("a1r", "a1", 50))
        .await
        .receipt();
    // Holds: captured in part, voided, and one that runs out.
    shop.authorize_burn(hold("h1", "m1", 30, 0)).await.unwrap();
    shop.capture_burn(v1::CaptureBurnRequest {
        transaction_id: "h1c".into(),
        authorization_id: "h1".into(),
        points: 20,
    })
    .await
    .unwrap();
    shop.authorize_burn(hold("h2", "m1", 10, 0)).await.unwrap();
    shop.void_burn(v1::VoidBurnRequest {
        transaction_id: "h2v".into(),
        authorization_id: "h2".into(),
    })
    .await
    .unwrap();
    shop.authorize_burn(hold("h3", "m1", 10, 1)).await.unwrap();
    t.advance_to(t.clock.now() + 2 * SECOND);
    // Given back by the daemon's own round within seconds, with nothing else touching m1.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !types_of(&feed(&t, "freshmart").await).contains(&"hold.expired") {
        assert!(std::time::Instant::now() < deadline, "no hold.expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A stamp card completed by the third purchase, its voucher, redeemed.
    for i in 1..=3 {
        food.earn(earn_purchase(&format!("s{i}"), "m2", "12.00"))
            .await
            .receipt();
    }
    let voucher = food
        .get_member(v1::GetMemberRequest {
            member_id: "m2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .vouchers[0]
        .voucher_id
        .clone();
    food.redeem_voucher(v1::RedeemVoucherRequest {
        transaction_id: "r1".into(),
        voucher_id: voucher.clone(),
    })
    .await
    .unwrap();
    // Tier changes: told to a partner whose marketing consent the member gave, not otherwise.
    shop.set_consent(v1::SetConsentRequest {
        transaction_id: "c1".into(),
        member_id: "m3".into(),
        purpose: "marketing".into(),
        granted: true,
    })
    .await
    .unwrap();
    shop.earn(earn_bonus("t1", "m3", 1_200)).await.receipt();
    air.earn(earn_bonus("t2", "m4", 1_200)).await.receipt();

    // The day cleared: every partner in it has its statement ready.
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600 * SECOND);
    let s = t.clear(day).await.unwrap();
    let in_settlement = |p: &str| s.positions.iter().any(|x| x.participant == p);
    // Reconciliation: bistro's file misses its burn; finance resolves the break.
    let mut fin = t.finance().await;
    let r = food
        .submit_partner_records(tokio_stream::iter(vec![v1::PartnerRecords {
            cycle: day.to_string(),
            records: vec![],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.open_breaks > 0);
    let first = r.breaks[0].id;
    fin.resolve_break(v1::ResolveBreakRequest {
        cycle: day.to_string(),
        partner: "bistro".into(),
        break_id: first,
        note: "test file".into(),
    })
    .await
    .unwrap();
    fin.finalize_settlement(v1::FinalizeSettlementRequest {
        cycle: day.to_string(),
        accept_breaks: true,
        reason: "a test".into(),
    })
    .await
    .unwrap();
    let ask = |reason: &str| v1::SettlementAnswerRequest {
        cycle: day.to_string(),
        reason: reason.into(),
    };
    food.acknowledge_settlement(ask("")).await.unwrap();
    food.acknowledge_settlement(ask("")).await.unwrap(); // a repeat tells nothing
    air.dispute_settlement(ask("our tills show 2 earns"))
        .await
        .unwrap();

    let statement = |p: &str| -> Vec<&'static str> {
        if in_settlement(p) {
            vec!["statement.ready"]
        } else {
            vec![]
        }
    };
    let finalized = |p: &str| -> Vec<&'static str> {
        if in_settlement(p) {
            vec!["settlement.finalized"]
        } else {
            vec![]
        }
    };
    let air_feed = feed(&t, "skyways").await;
    let mut want = vec![
        "transaction.earned",
        "transaction.earn_reversed",
        "transaction.earned",
    ];
    want.extend(statement("skyways"));
    want.extend(finalized("skyways"));
    want.push("settlement.disputed");
    assert_eq!(types_of(&air_feed), want);
    numbered("skyways", &air_feed);
    assert_eq!(receipt_of(&air_feed[0]), a1, "the receipt as answered");
    assert_eq!(receipt_of(&air_feed[1]), a1r);
    assert_eq!(air_feed[0].member_id, "m1");

    let food_feed = feed(&t, "bistro").await;
    let breaks = r.breaks.len();
    let mut want = vec!["transaction.burned", "transaction.burn_reversed"];
    want.extend(["transaction.earned"; 2]);
    want.extend([
        "transaction.earned",
        "stamp_card.completed",
        "voucher.issued",
        "voucher.redeemed",
    ]);
    want.extend(statement("bistro"));
    want.extend(vec!["reconciliation.break_found"; breaks]);
    want.push("reconciliation.break_resolved");
    want.extend(finalized("bistro"));
    want.push("settlement.acknowledged");
    assert_eq!(types_of(&food_feed), want);
    numbered("bistro", &food_feed);
    assert_eq!(receipt_of(&food_feed[0]), f1);
    assert_eq!(receipt_of(&food_feed[1]), f1r);
    match &food_feed[7].payload {
        Some(v1::partner_event::Payload::Voucher(v)) => {
            assert_eq!(v.voucher.as_ref().unwrap().voucher_id, voucher);
            assert_eq!(v.redemption_id, "r1");
        }
        other => panic!("{other:?}"),
    }

    let shop_feed = feed(&t, "freshmart").await;
    let mut want = vec![
        "hold.authorized",
        "hold.captured",
        "hold.authorized",
        "hold.voided",
        "hold.authorized",
        "hold.expired",
        "transaction.earned",
        "member.tier_changed",
    ];
    want.extend(statement("freshmart"));
    want.extend(finalized("freshmart"));
    assert_eq!(types_of(&shop_feed), want);
    numbered("freshmart", &shop_feed);
    match &shop_feed[7].payload {
        Some(v1::partner_event::Payload::Tier(tier)) => {
            assert_eq!(
                (tier.from_tier.as_str(), tier.to_tier.as_str()),
                ("bronze", "silver")
            );
            assert_eq!(tier.transaction_id, "t1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(shop_feed[7].member_id, "m3");
    // Every event is its partner's own.
    for (p, f) in [
        ("skyways", &air_feed),
        ("bistro", &food_feed),
        ("freshmart", &shop_feed),
    ] {
        assert!(
            f.iter()
                .all(|e| e.event_id.starts_with(&format!("evt_{p}_")))
        );
    }
    t.assert_invariants().await;
}

async fn a_watch_follows_live_and_refuses_what_it_cannot_serve(b: Backend) {
    let t = TestDaemon::start_with(b, programme).await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("e1", "m1", 10)).await.receipt();
    let mut stream = t
        .partner("skyways")
        .await
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 1);
    // Live: each new earn arrives on the open stream, in order.
    for i in 2..=20 {
        air.earn(earn_bonus(&format!("e{i}"), "m1", 10))
            .await
            .receipt();
        let e = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a live event within seconds")
            .unwrap()
            .unwrap();
        assert_eq!((e.sequence, e.r#type.as_str()), (i, "transaction.earned"));
    }
    // Resuming after the 15th gives 16..=20; a filter keeps its types only.
    let rest = feed_from(&mut air, 16, &[]).await;
    assert_eq!(
        rest.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (16..=20).collect::<Vec<_>>()
    );
    air.burn(burn("b1", "m1", 5)).await.receipt();
    let burns = feed_from(&mut air, 0, &["transaction.burned"]).await;
    assert_eq!(
        burns.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![21]
    );
    // Another partner sees none of it.
    assert!(feed(&t, "bistro").await.is_empty());
    // What cannot be served, and why.
    let refused = |r: Result<
        tonic::Response<tonic::Streaming<v1::PartnerEvent>>,
        tonic::Status,
    >| { r.map(|_| ()).unwrap_err() };
    let e = refused(
        air.watch_events(v1::WatchEventsRequest {
            from_sequence: 23,
            types: vec![],
        })
        .await,
    );
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "CURSOR_AHEAD")
    );
    // The next one (22) is fine: the stream waits for it.
    air.watch_events(v1::WatchEventsRequest {
        from_sequence: 22,
        types: vec![],
    })
    .await
    .unwrap();
    let e = refused(
        air.watch_events(v1::WatchEventsRequest {
            from_sequence: 0,
            types: vec!["transaction.exploded".into()],
        })
        .await,
    );
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "UNKNOWN_EVENT_TYPE")
    );
    assert!(
        e.message().contains("transaction.earned"),
        "{}",
        e.message()
    );
    let pem = t.issue(Role::Finance, "finance", 30);
    let mut as_finance = v1::partner_service_client::PartnerServiceClient::new(
        coalitiond::client::connect(&t.addr, &pem).await.unwrap(),
    );
    let e = refused(
        as_finance
            .watch_events(v1::WatchEventsRequest::default())
            .await,
    );
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

async fn a_batch_that_fails_to_commit_tells_nothing(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        programme(toml).replace(
            "queue_depth = 16384",
            "queue_depth = 16384\npanic_on_member = \"boom\"",
        )
    })
    .await;
    let air = t.partner("skyways").await;
    let mut calls = Vec::new();
    for i in 0..60 {
        let mut c = air.clone();
        let member = if i % 10 == 0 {
            "boom".to_string()
        } else {
            format!("m{i}")
        };
        calls.push(tokio::spawn(async move {
            c.earn(earn_bonus(&format!("e{i}"), &member, 10 + i))
                .await
                .map(|r| r.into_inner().receipt.unwrap())
        }));
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => ok.push(r),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                failed += 1;
            }
        }
    }
    assert!(failed >= 6, "the batches with boom failed: {failed}");
    let events = feed(&t, "skyways").await;
    numbered("skyways", &events);
    let told: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| receipt_of(e).transaction_id)
        .collect();
    let committed: std::collections::BTreeSet<String> =
        ok.iter().map(|r| r.transaction_id.clone()).collect();
    assert_eq!(
        told, committed,
        "an event for each committed earn, and only for them"
    );
    assert_eq!(t.transactions().await, ok.len() as i64);
}

async fn events_past_retention_are_gone_and_an_older_cursor_is_refused(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        programme(toml).replace(
            "retention_check_seconds = 3600",
            "retention_check_seconds = 1",
        ) + "\n[events]\nretention_days = 30\n"
    })
    .await;
    let mut air = t.partner("skyways").await;
    for i in 1..=5 {
        air.earn(earn_bonus(&format!("old{i}"), "m1", 10))
            .await
            .receipt();
    }
    t.advance_to(t.clock.now() + 31 * DAY);
    air.earn(earn_bonus("new1", "m1", 10)).await.receipt();
    // The daemon's retention round removes what is past 30 days.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let e = loop {
        match air
            .watch_events(v1::WatchEventsRequest {
                from_sequence: 2,
                types: vec![],
            })
            .await
        {
            Err(e) => break e,
            Ok(_) => {
                assert!(std::time::Instant::now() < deadline, "nothing was removed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "CURSOR_EXPIRED")
    );
    let info = e.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("oldest_sequence").map(String::as_str),
        Some("6")
    );
    assert!(e.message().contains("resume from 6"), "{}", e.message());
    // From the oldest kept (0: wherever that is), numbering goes on.
    let kept = feed_from(&mut air, 0, &[]).await;
    assert_eq!(kept.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![6]);
    air.earn(earn_bonus("new2", "m1", 10)).await.receipt();
    assert_eq!(
        feed_from(&mut air, 6, &[])
            .await
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        vec![6, 7]
    );
}

async fn a_forgotten_members_events_name_its_pseudonym(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        programme(toml).replace(
            "access_log_days = 365",
            "access_log_days = 365\nmember_key = \"test-member-key-0123456789abcdef0123456789\"",
        )
    })
    .await;
    let old = "zoe-forget-events-1";
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("e1", old, 100)).await.receipt();
    air.burn(burn("b1", old, 10)).await.receipt();
    let f = t
        .operator()
        .await
        .forget_member(v1::ForgetMemberRequest {
            member_id: old.into(),
            reason: "member's request".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let events = feed(&t, "skyways").await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e.member_id, f.pseudonym);
        assert_eq!(receipt_of(e).member_id, f.pseudonym);
        assert!(!format!("{e:?}").contains(old), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgresql_database_tell_the_same_feeds() {
    if !postgres_available("events::two_daemons_on_one_postgresql_database_tell_the_same_feeds")
        .await
    {
        return;
    }
    let t = TestDaemon::start_with(Backend::Postgres, programme).await;
    let second = t.start_another().await;
    let other = second.addr.to_string();
    let client = |addr: String, p: &'static str| {
        let pem = t.partner_pem(p);
        async move {
            v1::partner_service_client::PartnerServiceClient::new(
                coalitiond::client::connect(&addr, &pem).await.unwrap(),
            )
        }
    };
    let mut calls = Vec::new();
    for i in 0..90 {
        let p = ["skyways", "bistro", "freshmart"][i % 3];
        let addr = if i % 2 == 0 {
            t.addr.clone()
        } else {
            other.clone()
        };
        let mut c = client(addr, p).await;
        calls.push(tokio::spawn(async move {
            c.earn(earn_bonus(&format!("e{i}"), &format!("m{}", i % 7), 10))
                .await
                .unwrap();
            if i % 3 == 0 {
                c.burn(burn(&format!("b{i}"), &format!("m{}", i % 7), 5))
                    .await
                    .unwrap();
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    for p in ["skyways", "bistro", "freshmart"] {
        let here = feed_from(&mut client(t.addr.clone(), p).await, 0, &[]).await;
        let there = feed_from(&mut client(other.clone(), p).await, 0, &[]).await;
        assert!(here.len() >= 30, "{p}: {}", here.len());
        numbered(p, &here);
        assert_eq!(here, there, "{p}: the same feed from either daemon");
    }
    second.shutdown().await.unwrap();
}

/// Collects `partner`'s events from `from` (of `types`) as they come, live.
fn collect_live(
    mut client: PartnerClient,
    from: i64,
    types: &[&str],
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<v1::PartnerEvent>>>,
    tokio::task::JoinHandle<()>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let theirs = got.clone();
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    let task = tokio::spawn(async move {
        let mut stream = client
            .watch_events(v1::WatchEventsRequest {
                from_sequence: from,
                types,
            })
            .await
            .expect("watch")
            .into_inner();
        while let Ok(Some(e)) = stream.message().await {
            theirs.lock().unwrap().push(e);
        }
    });
    (got, task)
}

/// Followers watching before the traffic (one of every type, one filtered, one per daemon on
/// PostgreSQL) get what a replay from the start gets, once each and in order, whether a batch of
/// the writer (its events handed over after its commit), a hold given back by the round, or
/// another daemon committed it, with writes from concurrent lanes interleaved.
async fn live_followers_get_every_event_once_in_order_whatever_commits_it(b: Backend) {
    let t = TestDaemon::start_with(b, programme).await;
    let second = match b {
        Backend::Postgres => Some(t.start_another().await),
        Backend::Sqlite => None,
    };
    let mut addrs = vec![t.addr.clone()];
    addrs.extend(second.iter().map(|d| d.addr.to_string()));
    let client = |addr: String| {
        let pem = t.partner_pem("skyways");
        async move { PartnerClient::new(coalitiond::client::connect(&addr, &pem).await.unwrap()) }
    };
    let mut all = Vec::new();
    for addr in &addrs {
        all.push(collect_live(client(addr.clone()).await, 0, &[]));
    }
    let filtered = collect_live(
        client(t.addr.clone()).await,
        0,
        &["hold.expired", "transaction.burned"],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut calls = Vec::new();
    for i in 0..80usize {
        let mut c = client(addrs[i % addrs.len()].clone()).await;
        calls.push(tokio::spawn(async move {
            let m = format!("m{}", i % 9);
            c.earn(earn_bonus(&format!("e{i}"), &m, 50)).await.unwrap();
            match i % 4 {
                0 => {
                    c.burn(burn(&format!("b{i}"), &m, 20)).await.unwrap();
                }
                1 => {
                    // Runs out within two seconds: given back by a round, not a batch.
                    c.authorize_burn(hold(&format!("h{i}"), &m, 10, 1 + (i as i64 % 2)))
                        .await
                        .unwrap();
                }
                2 => {
                    c.authorize_burn(hold(&format!("h{i}"), &m, 10, 600))
                        .await
                        .unwrap();
                    c.void_burn(v1::VoidBurnRequest {
                        transaction_id: format!("v{i}"),
                        authorization_id: format!("h{i}"),
                    })
                    .await
                    .unwrap();
                }
                _ => {}
            }
        }));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for c in calls {
        c.await.unwrap();
    }
    // Every short hold runs out and is given back.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let head = t
        .query_i64("SELECT last_seq FROM partner_event_heads WHERE partner_id = 'skyways'")
        .await;
    let replay = feed_from(&mut client(t.addr.clone()).await, 0, &[]).await;
    assert_eq!(replay.len() as i64, head);
    numbered("skyways", &replay);
    let expired = replay.iter().filter(|e| e.r#type == "hold.expired").count();
    assert_eq!(expired, 20, "every short hold told once");
    let kept: Vec<v1::PartnerEvent> = replay
        .iter()
        .filter(|e| e.r#type == "hold.expired" || e.r#type == "transaction.burned")
        .cloned()
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wanted = all
        .iter()
        .map(|(got, _)| (got, replay.len()))
        .chain(std::iter::once((&filtered.0, kept.len())));
    for (got, want) in wanted {
        while got.lock().unwrap().len() < want && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, (got, _)) in all.iter().enumerate() {
        assert_eq!(
            *got.lock().unwrap(),
            replay,
            "the live follower of daemon {i} got what the replay gets"
        );
    }
    assert_eq!(*filtered.0.lock().unwrap(), kept, "the filtered follower");
    for (_, task) in all.into_iter().chain(std::iter::once(filtered)) {
        task.abort();
    }
    if let Some(d) = second {
        d.shutdown().await.unwrap();
    }
}
