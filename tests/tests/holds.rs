//! Holds at the till (issue 11), on both backends over real mTLS: authorize then capture all,
//! capture part (the rest goes back), void, a hold that runs out, captures after it ran out,
//! above the hold or by another partner refused, burns and holds competing for the same points,
//! retries, clearing of captured points in the capture's cycle, and many concurrent calls.

use coalition_tests::*;
use tonic::Code;

backends!(
    a_hold_is_captured_in_full_or_in_part_or_voided,
    a_hold_that_runs_out_gives_its_points_back,
    captured_points_are_cleared_in_the_capture_cycle,
    holds_and_burns_compete_for_the_same_points,
    concurrent_captures_of_one_hold_apply_once,
    the_audit_finds_holds_changed_behind_its_back
);

fn authorize(txn: &str, member: &str, points: i64, seconds: i64) -> v1::AuthorizeBurnRequest {
    v1::AuthorizeBurnRequest {
        transaction_id: txn.into(),
        member_id: member.into(),
        points,
        hold_seconds: seconds,
    }
}

fn capture(txn: &str, authorization: &str, points: i64) -> v1::CaptureBurnRequest {
    v1::CaptureBurnRequest {
        transaction_id: txn.into(),
        authorization_id: authorization.into(),
        points,
    }
}

fn void(txn: &str, authorization: &str) -> v1::VoidBurnRequest {
    v1::VoidBurnRequest {
        transaction_id: txn.into(),
        authorization_id: authorization.into(),
    }
}

/// (available, held) of a member as a partner sees them.
async fn balance(c: &mut PartnerClient, member: &str) -> (i64, i64) {
    let b = c
        .get_balance(v1::GetBalanceRequest {
            member_id: member.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.points, b.available_points);
    (b.available_points, b.held_points)
}

async fn hold_of(c: &mut PartnerClient, id: &str) -> v1::Hold {
    c.get_transaction(v1::GetTransactionRequest {
        transaction_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .hold
    .expect("a hold")
}

fn state(h: &v1::Hold) -> v1::HoldState {
    v1::HoldState::try_from(h.state).unwrap()
}

async fn a_hold_is_captured_in_full_or_in_part_or_voided(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop, mut food) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    air.earn(earn_bonus("e1", "m1", 1_000)).await.unwrap();

    // Authorize: the points leave the available balance at once.
    let h = shop
        .authorize_burn(authorize("h1", "m1", 400, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.balance_after, 600);
    let hold = h.hold.unwrap();
    assert_eq!((state(&hold), hold.points), (v1::HoldState::Held, 400));
    assert_eq!(balance(&mut food, "m1").await, (600, 400));
    // A burn elsewhere cannot take held points; nor can another hold.
    let e = food.burn(burn("f1", "m1", 601)).await.unwrap_err();
    assert_eq!(reason(&e), "INSUFFICIENT_POINTS");
    let e = food
        .authorize_burn(authorize("fh", "m1", 601, 0))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INSUFFICIENT_POINTS");
    // A retry of the authorization is its first answer; its id with other content is refused.
    let again = shop
        .authorize_burn(authorize("h1", "m1", 400, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.hold, Some(hold.clone()));
    let e = shop
        .authorize_burn(authorize("h1", "m1", 300, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // Capture all (points 0): a burn at the capturing partner, from the issuer's lot.
    let c = shop.capture_burn(capture("c1", "h1", 0)).await.unwrap();
    let c = c.into_inner();
    let r = c.receipt.clone().unwrap();
    assert_eq!((r.points, r.balance_after), (400, 600));
    assert_eq!(slices(&r), vec![("skyways".into(), 400)]);
    let ch = c.hold.clone().unwrap();
    assert_eq!(
        (state(&ch), ch.captured_points, ch.closed_by.as_str()),
        (v1::HoldState::Captured, 400, "c1")
    );
    assert_eq!(balance(&mut food, "m1").await, (600, 0));
    // A retry of the capture is the first answer; a second capture or a void is refused.
    let retry = shop
        .capture_burn(capture("c1", "h1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, c);
    let e = shop.capture_burn(capture("c2", "h1", 0)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::FailedPrecondition, "HOLD_CAPTURED".into())
    );
    let e = shop.void_burn(void("v1", "h1")).await.unwrap_err();
    assert_eq!(reason(&e), "HOLD_CAPTURED");
    // An authorization's id is not free for a burn, nor a capture's for an authorization.
    let e = food.burn(burn("h1", "m1", 1)).await;
    assert!(
        e.is_ok(),
        "ids are per partner: bistro's h1 is not freshmart's"
    );
    let e = shop.burn(burn("h1", "m1", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    food.reverse_burn(reverse_burn("h1r", "h1", 0))
        .await
        .unwrap();
    let e = shop
        .authorize_burn(authorize("c1", "m1", 1, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // GetTransaction shows the hold by its id, and the capture as a burn with its hold.
    let h1 = hold_of(&mut shop, "h1").await;
    assert_eq!(
        (state(&h1), h1.captured_points),
        (v1::HoldState::Captured, 400)
    );
    let t1 = shop
        .get_transaction(v1::GetTransactionRequest {
            transaction_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t1.receipt.unwrap().points, 400);
    assert_eq!(t1.hold.unwrap().authorization_id, "h1");

    // Capture part: the rest goes back to the member.
    shop.authorize_burn(authorize("h2", "m1", 300, 0))
        .await
        .unwrap();
    assert_eq!(balance(&mut air, "m1").await, (300, 300));
    let r = shop.capture_burn(capture("c3", "h2", 100)).await.receipt();
    assert_eq!((r.points, r.balance_after), (100, 500));
    assert_eq!(balance(&mut air, "m1").await, (500, 0));
    // A captured burn is reversed like any burn.
    let r = shop
        .reverse_burn(reverse_burn("r3", "c3", 40))
        .await
        .receipt();
    assert_eq!(r.balance_after, 540);

    // Void: everything goes back; a retry is the same answer, another void or a capture refused.
    shop.authorize_burn(authorize("h3", "m1", 200, 0))
        .await
        .unwrap();
    let v = shop.void_burn(void("v3", "h3")).await.unwrap().into_inner();
    let vh = v.hold.clone().unwrap();
    assert_eq!(
        (state(&vh), vh.closed_by.as_str()),
        (v1::HoldState::Voided, "v3")
    );
    assert_eq!(v.balance_after, 540);
    let v_again = shop.void_burn(void("v3", "h3")).await.unwrap().into_inner();
    assert_eq!(v_again.hold, v.hold);
    let e = shop.void_burn(void("v4", "h3")).await.unwrap_err();
    assert_eq!(reason(&e), "HOLD_VOIDED");
    let e = shop.capture_burn(capture("c4", "h3", 0)).await.unwrap_err();
    assert_eq!(reason(&e), "HOLD_VOIDED");

    // Above the hold, and another partner's capture or void.
    shop.authorize_burn(authorize("h5", "m1", 250, 0))
        .await
        .unwrap();
    let e = shop
        .capture_burn(capture("c5", "h5", 251))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::FailedPrecondition, "CAPTURE_EXCEEDS_HOLD".into())
    );
    let e = air.capture_burn(capture("x5", "h5", 0)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::NotFound, "UNKNOWN_TRANSACTION".into())
    );
    let e = air.void_burn(void("x6", "h5")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        hold_of(&mut shop, "h5").await.state,
        v1::HoldState::Held as i32
    );
    // Bad input: a hold longer than the maximum, no points.
    let e = shop
        .authorize_burn(authorize("h6", "m1", 1, 10_000_000))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::InvalidArgument, "HOLD_TOO_LONG".into())
    );
    let e = shop
        .authorize_burn(authorize("h7", "m1", 0, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An unknown member is refused like an empty one.
    let e = shop
        .authorize_burn(authorize("h8", "nobody", 1, 0))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INSUFFICIENT_POINTS");
    t.assert_invariants().await;
}

async fn a_hold_that_runs_out_gives_its_points_back(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop) = (t.partner("skyways").await, t.partner("freshmart").await);
    air.earn(earn_bonus("e1", "m1", 1_000)).await.unwrap();
    shop.authorize_burn(authorize("h1", "m1", 300, 60))
        .await
        .unwrap();
    shop.authorize_burn(authorize("h2", "m1", 200, 60))
        .await
        .unwrap();
    // Captured within the hold: a retry after it ran out still gets the first answer.
    let first = shop
        .capture_burn(capture("c2", "h2", 150))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance(&mut air, "m1").await, (550, 300));
    t.clock.advance(std::time::Duration::from_secs(59));
    assert_eq!(balance(&mut air, "m1").await, (550, 300), "still held");
    t.clock.advance(std::time::Duration::from_secs(1));
    // Ran out: the points count again before any batch released them.
    assert_eq!(balance(&mut air, "m1").await, (850, 0));
    let e = shop.capture_burn(capture("c1", "h1", 0)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::FailedPrecondition, "HOLD_EXPIRED".into())
    );
    let h = hold_of(&mut shop, "h1").await;
    assert_eq!((state(&h), h.captured_points), (v1::HoldState::Expired, 0));
    let again = shop
        .capture_burn(capture("c2", "h2", 150))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    // Voiding a hold that ran out changes nothing and says so.
    let v = shop.void_burn(void("v1", "h1")).await.unwrap().into_inner();
    assert_eq!(state(&v.hold.unwrap()), v1::HoldState::Expired);
    // The released points are spendable.
    let r = air.burn(burn("b1", "m1", 850)).await.receipt();
    assert_eq!(r.balance_after, 0);
    t.assert_invariants().await;
}

/// Held points whose lot expires while held are still captured (the rest goes back to the
/// expired lot and is swept as breakage); held points are not cleared; captured points are
/// cleared in the cycle of the capture, not of the authorization.
async fn captured_points_are_cleared_in_the_capture_cycle(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        toml.replace("scheduler = true", "scheduler = false")
            .replace(
                "points_expire_after_days = 730",
                "points_expire_after_days = 1",
            )
            .replace("max_hold_seconds = 86400", "max_hold_seconds = 259200")
    })
    .await;
    let (mut air, mut shop) = (t.partner("skyways").await, t.partner("freshmart").await);
    air.earn(earn_bonus("e1", "m1", 1_000)).await.unwrap();
    let lot_expires = t.clock.now() + 86_400_000_000;
    shop.authorize_burn(authorize("h1", "m1", 600, 259_200))
        .await
        .unwrap();
    shop.authorize_burn(authorize("h2", "m1", 100, 259_200))
        .await
        .unwrap();
    shop.capture_burn(capture("c2", "h2", 100)).await.unwrap();
    let cycles = t.config.cycles();
    let day = cycles.cycle_of(t.clock.now()).unwrap();
    t.advance_to((cycles.close(day).unwrap() + 1).max(lot_expires + 1));
    // The lot has expired: the free 300 points are gone, the held 600 are not.
    assert_eq!(balance(&mut air, "m1").await, (0, 600));
    let capture_cycle = cycles.cycle_of(t.clock.now()).unwrap();
    let r = shop.capture_burn(capture("c1", "h1", 500)).await.receipt();
    assert_eq!((r.points, slices(&r)), (500, vec![("skyways".into(), 500)]));
    assert_eq!(
        balance(&mut air, "m1").await,
        (0, 0),
        "the rest went back to an expired lot"
    );
    let cell = |s: &v1::Settlement| {
        s.gross
            .iter()
            .filter(|c| c.issuer == "skyways" && c.redeemer == "freshmart")
            .map(|c| c.points)
            .sum::<i64>()
    };
    let first = t.clear(day).await.unwrap();
    assert_eq!(
        cell(&first),
        100,
        "only the capture of that day, not what was held"
    );
    t.assert_invariants().await;
    t.advance_to(cycles.close(capture_cycle).unwrap() + 1);
    let mut next = day.succ_opt().unwrap();
    while next <= capture_cycle {
        let s = t.clear(next).await.unwrap();
        let expected = if next == capture_cycle { 500 } else { 0 };
        assert_eq!(cell(&s), expected, "the capture, in its own cycle ({next})");
        next = next.succ_opt().unwrap();
    }
    t.assert_invariants().await;
}

/// 1,000 concurrent authorizations and burns on one member (over two daemons on PostgreSQL)
/// never reserve or spend more than the balance.
async fn holds_and_burns_compete_for_the_same_points(b: Backend) {
    let t = TestDaemon::start(b).await;
    let mut air = t.partner("skyways").await;
    for i in 0..5 {
        air.earn(earn_bonus(&format!("a{i}"), "m1", 1_000))
            .await
            .unwrap();
    }
    let mut clients = vec![t.partner("freshmart").await, t.partner("bistro").await];
    let _other;
    if b == Backend::Postgres {
        let other = t.start_another().await;
        for p in ["freshmart", "bistro"] {
            clients.push(PartnerClient::new(
                coalitiond::client::connect(&other.addr.to_string(), &t.partner_pem(p))
                    .await
                    .unwrap(),
            ));
        }
        _other = Some(other);
    } else {
        _other = None;
    }
    let mut tasks = Vec::new();
    for i in 0..1_000i64 {
        let mut c = clients[(i as usize) % clients.len()].clone();
        let points = 1 + (i * 7919) % 19;
        tasks.push(tokio::spawn(async move {
            let ok = if i % 2 == 0 {
                c.authorize_burn(authorize(&format!("h{i}"), "m1", points, 0))
                    .await
                    .map(|_| ())
            } else {
                c.burn(burn(&format!("b{i}"), "m1", points))
                    .await
                    .map(|_| ())
            };
            match ok {
                Ok(()) => (i, points),
                Err(e) => {
                    assert_eq!(reason(&e), "INSUFFICIENT_POINTS", "{e:?}");
                    (i, 0)
                }
            }
        }));
    }
    let (mut held, mut burned) = (0i64, 0i64);
    for task in tasks {
        let (i, p) = task.await.unwrap();
        if i % 2 == 0 {
            held += p;
        } else {
            burned += p;
        }
    }
    assert!(
        held + burned <= 5_000,
        "held {held} + burned {burned} > 5000"
    );
    assert!(held > 0 && burned > 0);
    assert_eq!(balance(&mut air, "m1").await, (5_000 - held - burned, held));
    t.assert_invariants().await;
}

/// 50 concurrent captures of one hold under one id apply once; under 50 ids, one wins.
async fn concurrent_captures_of_one_hold_apply_once(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, shop) = (t.partner("skyways").await, t.partner("freshmart").await);
    air.earn(earn_bonus("e1", "m1", 1_000)).await.unwrap();
    let mut s = shop.clone();
    s.authorize_burn(authorize("h1", "m1", 300, 0))
        .await
        .unwrap();
    s.authorize_burn(authorize("h2", "m1", 300, 0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = shop.clone();
        tasks.push(tokio::spawn(async move {
            let same = c.capture_burn(capture("c1", "h1", 0)).await;
            let other = c.capture_burn(capture(&format!("d{i}"), "h2", 0)).await;
            (same.map(|r| r.into_inner()), other.is_ok())
        }));
    }
    let mut answers = Vec::new();
    let mut won = 0;
    for task in tasks {
        let (same, other) = task.await.unwrap();
        answers.push(same.unwrap());
        won += usize::from(other);
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "one answer for one id"
    );
    assert_eq!(won, 1, "one capture of h2 wins");
    assert_eq!(balance(&mut air, "m1").await, (400, 0));
    assert_eq!(t.transactions().await, 3, "the earn and two captures");
    t.assert_invariants().await;
}

/// The count of `coalition_holds_total{event="…"}` on the daemon's metrics page.
async fn holds_metric(addr: std::net::SocketAddr, event: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let series = format!("coalition_holds_total{{event=\"{event}\"}} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Holds opened, captured, voided and expired are counted (the recorder is per process, so the
/// counts only ever grow by at least what this test did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_counted_by_what_became_of_them() {
    let t = TestDaemon::start(Backend::Sqlite).await;
    let (mut air, mut shop) = (t.partner("skyways").await, t.partner("freshmart").await);
    air.earn(earn_bonus("e1", "m1", 1_000)).await.unwrap();
    let events = ["opened", "captured", "voided", "expired"];
    let mut before = Vec::new();
    for e in events {
        before.push(holds_metric(t.metrics_addr(), e).await);
    }
    for (i, seconds) in [(1, 0), (2, 0), (3, 10)] {
        shop.authorize_burn(authorize(&format!("h{i}"), "m1", 10, seconds))
            .await
            .unwrap();
    }
    shop.capture_burn(capture("c1", "h1", 0)).await.unwrap();
    shop.void_burn(void("v2", "h2")).await.unwrap();
    t.clock.advance(std::time::Duration::from_secs(11));
    // The next batch that sees the member releases the hold that ran out.
    air.earn(earn_bonus("e2", "m1", 1)).await.unwrap();
    for (e, b) in events.iter().zip(before) {
        let after = holds_metric(t.metrics_addr(), e).await;
        let least = if *e == "opened" { 3.0 } else { 1.0 };
        assert!(after >= b + least, "{e}: {b} then {after}");
    }
    t.assert_invariants().await;
}

/// The audit recomputes holds from their slices, lots and captures: a hold's state, its slices or
/// its capture changed in the database is found.
async fn the_audit_finds_holds_changed_behind_its_back(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop) = (t.partner("skyways").await, t.partner("freshmart").await);
    air.earn(earn_bonus("e1", "m1", 1_000)).await.unwrap();
    shop.authorize_burn(authorize("h1", "m1", 300, 0))
        .await
        .unwrap();
    shop.authorize_burn(authorize("h2", "m1", 200, 0))
        .await
        .unwrap();
    shop.capture_burn(capture("c2", "h2", 150)).await.unwrap();
    t.assert_invariants().await;
    let tampered = [
        // A held hold marked voided while its points stay held.
        (
            "UPDATE holds SET state = 'voided', closed_by = 'x' WHERE partner_txn_id = 'h1'",
            "UPDATE holds SET state = 'held', closed_by = NULL WHERE partner_txn_id = 'h1'",
        ),
        // More held than the hold says (and than the lot gave).
        (
            "UPDATE hold_slices SET points = points + 50",
            "UPDATE hold_slices SET points = points - 50",
        ),
        // A capture that says it took more than its burn did.
        (
            "UPDATE holds SET captured = 160 WHERE partner_txn_id = 'h2'",
            "UPDATE holds SET captured = 150 WHERE partner_txn_id = 'h2'",
        ),
    ];
    for (change, undo) in tampered {
        assert_eq!(t.execute_sql(change).await, 1, "{change}");
        let report = t.audit().await;
        assert!(!report.ok(), "the audit missed: {change}\n{report}");
        t.execute_sql(undo).await;
        t.assert_invariants().await;
    }
}
