//! The programme (issue 10), on both backends over real mTLS: tiers by qualifying points (promotion
//! on the crossing earn, no demotion by a burn, one rung at most at a review, a rolling window,
//! reversals lowering qualifying points), the tier bonus funded by the partner or the operator
//! (the operator then an issuer in clearing), campaigns (window edges on a DST day in the
//! coalition's time zone, stacking, caps, welcome bonuses), earn parts taken back in proportion,
//! quotes that equal the earn, and who may manage campaigns.

use coalition_certs::Role;
use coalition_tests::*;
use rust_decimal::Decimal;
use std::str::FromStr;
use tonic_types::StatusExt;

const DAY: i64 = 86_400_000_000;

/// The config with the scheduler off (tests leap months) and a three-rung ladder.
fn ladder(funder: &'static str) -> impl FnOnce(String) -> String {
    move |toml| {
        toml.replace("scheduler = true", "scheduler = false")
            + &format!(
                "\n[programme]\ntier_bonus_funder = \"{funder}\"\n\
                 [[programme.tiers]]\nname = \"bronze\"\nthreshold = 0\nmultiplier = \"1\"\n\
                 [[programme.tiers]]\nname = \"silver\"\nthreshold = 1000\nmultiplier = \"1.5\"\n\
                 [[programme.tiers]]\nname = \"gold\"\nthreshold = 5000\nmultiplier = \"2\"\n"
            )
    }
}

fn no_scheduler(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
}

/// (kind, source, funder, points) of each part.
fn parts(r: &v1::Receipt) -> Vec<(String, String, String, i64)> {
    r.parts
        .iter()
        .map(|p| (p.kind.clone(), p.source.clone(), p.funder.clone(), p.points))
        .collect()
}

fn part(kind: &str, source: &str, funder: &str, points: i64) -> (String, String, String, i64) {
    (kind.into(), source.into(), funder.into(), points)
}

async fn member(c: &mut PartnerClient, m: &str) -> v1::Member {
    c.get_member(v1::GetMemberRequest {
        member_id: m.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The field a refusal names (`google.rpc.BadRequest`).
fn field(s: &tonic::Status) -> String {
    s.get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

fn bonus_campaign(id: &str, points: i64, starts: &str, ends: &str) -> v1::Campaign {
    v1::Campaign {
        campaign_id: id.into(),
        name: format!("campaign {id}"),
        starts: starts.into(),
        ends: ends.into(),
        effect: Some(v1::campaign::Effect::BonusPoints(points)),
        ..Default::default()
    }
}

fn rfc(at: i64) -> String {
    coalitiond::clock::rfc3339(at)
}

backends!(
    tiers_follow_qualifying_points_not_the_balance,
    the_operator_funds_the_tier_bonus_and_is_an_issuer_in_clearing,
    campaigns_stack_on_the_base_within_caps_and_welcome_once,
    campaign_windows_are_local_and_half_open_on_a_dst_day,
    only_the_programme_team_and_operators_manage_campaigns,
    the_audit_recomputes_qualifying_points,
);

async fn tiers_follow_qualifying_points_not_the_balance(b: Backend) {
    let t = TestDaemon::start_with(b, ladder("partner")).await;
    let mut bistro = t.partner("bistro").await;
    let mut sky = t.partner("skyways").await;
    let r = bistro.earn(earn_bonus("e1", "m", 600)).await.receipt();
    assert_eq!(
        (r.tier.as_str(), parts(&r)),
        ("bronze", vec![part("base", "", "bistro", 600)])
    );
    // The earn that crosses the threshold shows the new tier; its bonus is the tier before.
    let promoted_at = t.clock.now();
    let r = bistro.earn(earn_bonus("e2", "m", 500)).await.receipt();
    assert_eq!((r.tier.as_str(), r.points), ("silver", 500));
    let r = bistro.earn(earn_bonus("e3", "m", 100)).await.receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "bistro", 100),
            part("tier", "silver", "bistro", 50)
        ]
    );
    assert_eq!(r.points, 150);
    let m = member(&mut bistro, "m").await;
    assert_eq!(
        (
            m.tier.as_str(),
            m.qualifying_points,
            m.next_tier.as_str(),
            m.points_to_next_tier
        ),
        ("silver", 1250, "gold", 3750)
    );
    assert_eq!(m.tier_at_review_today, "silver");
    // A large burn spends the balance, not the tier.
    sky.burn(burn("b1", "m", 1200)).await.receipt();
    let m = member(&mut bistro, "m").await;
    assert_eq!(
        (m.tier.as_str(), m.qualifying_points, m.balance),
        ("silver", 1250, 50)
    );
    // An earn reversal lowers qualifying points; the tier waits for the review.
    let r = bistro
        .reverse_earn(reverse_earn("r2", "e2", 0))
        .await
        .receipt();
    assert_eq!(parts(&r), vec![part("base", "", "bistro", 500)]);
    let m = member(&mut bistro, "m").await;
    assert_eq!((m.tier.as_str(), m.qualifying_points), ("silver", 750));
    assert_eq!(
        m.tier_at_review_today, "bronze",
        "750 points would not keep silver"
    );
    // A second member reaches gold at once.
    let r = bistro.earn(earn_bonus("g1", "g", 5000)).await.receipt();
    assert_eq!(r.tier, "gold");
    t.assert_invariants().await;

    // The day before the review: the window still holds the points and the tier stands.
    let review: i64 = chrono::DateTime::parse_from_rfc3339(&m.next_review_at)
        .unwrap()
        .timestamp_micros();
    assert!(review >= promoted_at + 365 * DAY && review <= promoted_at + 366 * DAY);
    t.advance_to(review - DAY);
    let m = member(&mut bistro, "m").await;
    assert_eq!((m.tier.as_str(), m.qualifying_points), ("silver", 750));
    // After the review: the window dropped the year-old points; one rung down at most.
    t.advance_to(review + DAY);
    let m = member(&mut bistro, "m").await;
    assert_eq!((m.tier.as_str(), m.qualifying_points), ("bronze", 0));
    assert_eq!(
        m.next_review_at, "",
        "the lowest rung has nothing to review"
    );
    let g = member(&mut bistro, "g").await;
    assert_eq!(g.tier, "silver", "gold drops one rung, not to bronze");
    // An earn now sees the reviewed tier (silver: ×1.5) and stores it.
    let r = bistro.earn(earn_bonus("g2", "g", 100)).await.receipt();
    assert_eq!(
        (r.tier.as_str(), parts(&r)),
        (
            "silver",
            vec![
                part("base", "", "bistro", 100),
                part("tier", "silver", "bistro", 50)
            ]
        )
    );
    t.assert_invariants().await;
}

async fn the_operator_funds_the_tier_bonus_and_is_an_issuer_in_clearing(b: Backend) {
    let t = TestDaemon::start_with(b, ladder("operator")).await;
    let mut sky = t.partner("skyways").await;
    let mut bistro = t.partner("bistro").await;
    sky.earn(earn_purchase("o1", "o", "1000.00"))
        .await
        .receipt();
    let r = sky.earn(earn_purchase("o2", "o", "100.00")).await.receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "skyways", 100),
            part("tier", "silver", "operator", 50)
        ]
    );
    let r = bistro.burn(burn("ob", "o", 1150)).await.receipt();
    let mut s = slices(&r);
    s.sort();
    assert_eq!(
        s,
        vec![("operator".to_string(), 50), ("skyways".to_string(), 1100)]
    );
    // Half of o2 back: its parts give back in proportion; the member spent them all and owes
    // each funder its share.
    let r = sky
        .reverse_earn(reverse_earn("or", "o2", 75))
        .await
        .receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "skyways", 50),
            part("tier", "silver", "operator", 25)
        ]
    );
    assert_eq!(r.debt_created, 75);
    t.assert_invariants().await;
    let today = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(today).unwrap() + 1);
    let s = t.clear(today).await.unwrap();
    let cell = |issuer: &str, redeemer: &str| {
        s.gross
            .iter()
            .find(|c| c.issuer == issuer && c.redeemer == redeemer)
            .map(|c| (c.points, Decimal::from_str(&c.value).unwrap()))
    };
    assert_eq!(cell("operator", "bistro"), Some((50, Decimal::new(60, 2))));
    assert_eq!(
        cell("skyways", "bistro"),
        Some((1100, Decimal::new(1320, 2)))
    );
    // The operator is a participant; skyways pays the issuance fee only on the points it issued.
    assert!(s.positions.iter().any(|p| p.participant == "operator"));
    let fees: Vec<(String, i64)> = s
        .fees
        .iter()
        .map(|f| (f.issuer.clone(), f.points))
        .collect();
    assert_eq!(
        fees,
        vec![("skyways".to_string(), 1100 - 50)],
        "earned 1000 + 100, 50 of its own back"
    );
    let net: Decimal = s
        .positions
        .iter()
        .map(|p| Decimal::from_str(&p.net).unwrap())
        .sum();
    assert_eq!(net, Decimal::ZERO);
    t.assert_invariants().await;
}

async fn campaigns_stack_on_the_base_within_caps_and_welcome_once(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let mut prog = t.programme().await;
    let (now, month) = (t.clock.now(), t.clock.now() + 30 * DAY);
    let mut double = bonus_campaign("a-double", 0, &rfc(now), &rfc(month));
    double.effect = Some(v1::campaign::Effect::Multiplier("2".into()));
    double.cap_per_member = 150;
    prog.create_campaign(double.clone()).await.unwrap();
    // Creating it again is a retry; other terms under the same id are refused.
    prog.create_campaign(double.clone()).await.unwrap();
    let mut other = double.clone();
    other.cap_per_member = 10;
    let e = prog.create_campaign(other).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::AlreadyExists, "CAMPAIGN_EXISTS")
    );
    let mut dinner = bonus_campaign("b-dinner", 30, &rfc(now), &rfc(month));
    dinner.partners = vec!["bistro".into()];
    dinner.funder = "operator".into();
    prog.create_campaign(dinner).await.unwrap();
    let mut welcome = bonus_campaign("w-welcome", 100, &rfc(now), &rfc(month));
    welcome.partner_kinds = vec!["restaurant".into()];
    welcome.welcome = true;
    prog.create_campaign(welcome).await.unwrap();
    let listed = prog
        .list_campaigns(v1::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .campaigns;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|c| c.state == "live"));

    let mut bistro = t.partner("bistro").await;
    let mut sky = t.partner("skyways").await;
    // The quote is what the earn then gives: base 150 (100.00 × 1.5), ×2 → +150, +30, +100.
    let q = bistro
        .quote_earn(earn_purchase("", "c", "100.00"))
        .await
        .unwrap()
        .into_inner();
    let r = bistro
        .earn(earn_purchase("c1", "c", "100.00"))
        .await
        .receipt();
    let want = vec![
        part("base", "", "bistro", 150),
        part("campaign", "a-double", "bistro", 150),
        part("campaign", "b-dinner", "operator", 30),
        part("campaign", "w-welcome", "bistro", 100),
    ];
    assert_eq!(parts(&r), want);
    assert_eq!((q.points, r.points), (430, 430));
    assert_eq!(q.parts, r.parts);
    // The double is capped (150 used), the welcome was this member's first earn here only.
    let r = bistro
        .earn(earn_purchase("c2", "c", "100.00"))
        .await
        .receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "bistro", 150),
            part("campaign", "b-dinner", "operator", 30)
        ]
    );
    let r = sky.earn(earn_purchase("c3", "c", "100.00")).await.receipt();
    assert_eq!(parts(&r), vec![part("base", "", "skyways", 100)]);
    // Another member's first visit gets the welcome bonus too.
    let r = bistro.earn(earn_bonus("d1", "d", 10)).await.receipt();
    assert_eq!(r.points, 10 + 10 + 30 + 100);
    let uses = |m: &v1::Member| -> Vec<(String, i64)> {
        m.campaigns
            .iter()
            .map(|c| (c.campaign_id.clone(), c.points))
            .collect()
    };
    let m = member(&mut bistro, "c").await;
    assert_eq!(
        uses(&m),
        vec![
            ("a-double".into(), 150),
            ("b-dinner".into(), 60),
            ("w-welcome".into(), 100)
        ]
    );
    // Skyways sees the use of campaigns that apply at it only.
    let m = member(&mut sky, "c").await;
    assert_eq!(uses(&m), vec![("a-double".into(), 150)]);
    // Half of the first earn back: every part in proportion, by largest remainder.
    let r = bistro
        .reverse_earn(reverse_earn("c1-r", "c1", 215))
        .await
        .receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "bistro", 75),
            part("campaign", "a-double", "bistro", 75),
            part("campaign", "b-dinner", "operator", 15),
            part("campaign", "w-welcome", "bistro", 50),
        ]
    );
    // GetTransaction shows the same breakdown, and how much of each part is reversed.
    let tx = bistro
        .get_transaction(v1::GetTransactionRequest {
            transaction_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parts(tx.receipt.as_ref().unwrap()), want);
    assert_eq!(tx.reversed_points, 215);
    let m = member(&mut bistro, "c").await;
    assert_eq!(
        uses(&m),
        vec![
            ("a-double".into(), 75),
            ("b-dinner".into(), 45),
            ("w-welcome".into(), 50)
        ]
    );
    // The cap freed by the reversal is used again.
    let r = bistro
        .earn(earn_purchase("c4", "c", "100.00"))
        .await
        .receipt();
    assert_eq!(parts(&r)[1], part("campaign", "a-double", "bistro", 75));
    // The rest of the first earn: the parts sum to what is left of each.
    let r = bistro
        .reverse_earn(reverse_earn("c1-r2", "c1", 0))
        .await
        .receipt();
    assert_eq!(r.points, 215);
    assert_eq!(
        r.parts.iter().map(|p| p.points).collect::<Vec<_>>(),
        vec![75, 75, 15, 50]
    );
    // An ended campaign applies no more; ending it again returns it.
    let ended = prog
        .end_campaign(v1::EndCampaignRequest {
            campaign_id: "b-dinner".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state, "over");
    let r = bistro.earn(earn_bonus("c5", "c", 10)).await.receipt();
    assert!(r.parts.iter().all(|p| p.source != "b-dinner"));
    let e = prog
        .end_campaign(v1::EndCampaignRequest {
            campaign_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // QuoteBurn: what points are worth here and how many the member can burn.
    let q = sky
        .quote_burn(v1::QuoteBurnRequest {
            member_id: "c".into(),
            points: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.value.unwrap().amount, "1.00");
    assert_eq!(q.burnable, t.balance("c").await.0);
    t.assert_invariants().await;
}

async fn campaign_windows_are_local_and_half_open_on_a_dst_day(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let mut prog = t.programme().await;
    // Amsterdam springs forward on 2027-03-28 at 02:00: that morning has no 02:30.
    let e = prog
        .create_campaign(bonus_campaign(
            "gap",
            5,
            "2027-03-28T02:30",
            "2027-03-28T12:00",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str(), field(&e).as_str()),
        (tonic::Code::InvalidArgument, "NO_SUCH_LOCAL_TIME", "starts")
    );
    let c = prog
        .create_campaign(bonus_campaign(
            "dst",
            5,
            "2027-03-28T00:00",
            "2027-03-28T12:00",
        ))
        .await
        .unwrap()
        .into_inner();
    // Midnight is still winter time (UTC+1), noon summer time (UTC+2).
    assert_eq!(c.starts_at, "2027-03-27T23:00:00.000000Z");
    assert_eq!(c.ends_at, "2027-03-28T10:00:00.000000Z");
    assert_eq!(c.state, "scheduled");
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    };
    let mut bistro = t.partner("bistro").await;
    let mut got = vec![];
    for (i, instant) in [
        at(&c.starts_at) - 1_000_000,
        at(&c.starts_at),
        at(&c.ends_at) - 1_000_000,
        at(&c.ends_at),
    ]
    .into_iter()
    .enumerate()
    {
        t.advance_to(instant);
        let r = bistro
            .earn(earn_bonus(&format!("w{i}"), "dst", 10))
            .await
            .receipt();
        got.push(r.points);
    }
    assert_eq!(
        got,
        vec![10, 15, 15, 10],
        "from the start inclusive to the end exclusive"
    );
    t.assert_invariants().await;
}

async fn only_the_programme_team_and_operators_manage_campaigns(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let (now, later) = (t.clock.now(), t.clock.now() + DAY);
    let ok = bonus_campaign("ok", 5, &rfc(now), &rfc(later));
    for (role, name) in [(Role::Partner, "bistro"), (Role::Finance, "finance")] {
        let mut c = t.programme_as(&t.issue(role, name, 1)).await;
        let e = c.create_campaign(ok.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{role:?}");
        let e = c
            .list_campaigns(v1::ListCampaignsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{role:?}");
    }
    let mut prog = t.programme().await;
    let malformed = [
        ("ends", {
            let mut c = ok.clone();
            c.ends = rfc(now - DAY);
            c.starts = rfc(now - 2 * DAY);
            c
        }),
        ("ends", {
            let mut c = ok.clone();
            c.ends = rfc(now + 60_000_000);
            c.starts = rfc(now + 120_000_000);
            c
        }),
        ("multiplier", {
            let mut c = ok.clone();
            c.effect = Some(v1::campaign::Effect::Multiplier("0".into()));
            c
        }),
        ("partners", {
            let mut c = ok.clone();
            c.partners = vec!["nobody".into()];
            c
        }),
        ("funder", {
            let mut c = ok.clone();
            c.funder = "bank".into();
            c
        }),
        ("cap_per_member", {
            let mut c = ok.clone();
            c.cap_per_member = 2_000_000_000_000;
            c
        }),
    ];
    for (want, c) in malformed {
        let e = prog.create_campaign(c).await.unwrap_err();
        assert_eq!(
            (e.code(), field(&e).as_str()),
            (tonic::Code::InvalidArgument, want),
            "{e:?}"
        );
    }
    // Caps of overlapping campaigns that together would overflow.
    let mut big = ok.clone();
    big.campaign_id = "big".into();
    big.cap_per_member = 900_000_000_000;
    prog.create_campaign(big.clone()).await.unwrap();
    big.campaign_id = "big2".into();
    let e = prog.create_campaign(big).await.unwrap_err();
    assert_eq!(
        (field(&e).as_str(), reason(&e).as_str()),
        ("cap_per_member", "CAPS_OVERFLOW")
    );
    // Nothing refused was stored; an operator may manage campaigns too.
    let mut op = t.programme_as(&t.issue(Role::Operator, "oncall", 1)).await;
    let all = op
        .list_campaigns(v1::ListCampaignsRequest {
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .campaigns;
    assert_eq!(
        all.iter()
            .map(|c| c.campaign_id.as_str())
            .collect::<Vec<_>>(),
        vec!["big"]
    );
    op.create_campaign(ok).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_created_on_one_daemon_applies_on_another_at_once() {
    if !postgres_available("a_campaign_created_on_one_daemon_applies_on_another_at_once").await {
        return;
    }
    let t = TestDaemon::start_with(Backend::Postgres, no_scheduler).await;
    let other = t.start_another().await;
    let pem = t.partner_pem("bistro");
    let mut there = PartnerClient::new(
        coalitiond::client::connect(&other.addr.to_string(), &pem)
            .await
            .unwrap(),
    );
    let (now, later) = (t.clock.now(), t.clock.now() + DAY);
    let created = std::time::Instant::now();
    t.programme()
        .await
        .create_campaign(bonus_campaign("shared", 7, &rfc(now), &rfc(later)))
        .await
        .unwrap();
    let r = there.earn(earn_bonus("s1", "s", 10)).await.receipt();
    assert!(created.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(parts(&r)[1], part("campaign", "shared", "bistro", 7));
    t.assert_invariants().await;
}

fn with_stamps(toml: String) -> String {
    no_scheduler(toml)
        .replace(
            "max_bonus_points = 5000",
            "max_bonus_points = 5000\nstamps = { every = 3, min_purchase = \"10.00\", within_days = 30, voucher = \"a free dessert\", voucher_days = 10 }",
        )
        .replace(
            "earn_rate = \"2\"",
            "earn_rate = \"2\"\nstamps = { every = 2, within_days = 30, reward_points = 50 }",
        )
}

fn stamp_of(r: &v1::Receipt) -> Option<(String, i64)> {
    r.parts
        .iter()
        .find(|p| p.kind == "stamp")
        .map(|p| (p.source.clone(), p.points))
}

async fn redeem(
    c: &mut PartnerClient,
    txn: &str,
    voucher: &str,
) -> Result<v1::VoucherRedemption, tonic::Status> {
    c.redeem_voucher(v1::RedeemVoucherRequest {
        transaction_id: txn.into(),
        voucher_id: voucher.into(),
    })
    .await
    .map(|r| r.into_inner())
}

backends!(stamp_cards_complete_on_the_nth_purchase_and_vouchers_redeem_once);

async fn stamp_cards_complete_on_the_nth_purchase_and_vouchers_redeem_once(b: Backend) {
    let t = TestDaemon::start_with(b, with_stamps).await;
    let mut bistro = t.partner("bistro").await;
    let mut sky = t.partner("skyways").await;
    let mut fresh = t.partner("freshmart").await;
    let earn = |txn: &'static str, amount: &'static str| earn_purchase(txn, "s", amount);
    let r = bistro.earn(earn("s1", "12.00")).await.receipt();
    assert_eq!(stamp_of(&r), Some(("1/3".into(), 0)));
    let r = bistro.earn(earn("small", "5.00")).await.receipt();
    assert_eq!(stamp_of(&r), None, "below the minimum: no stamp");
    let r = bistro.earn(earn("s2", "20.00")).await.receipt();
    assert_eq!(stamp_of(&r), Some(("2/3".into(), 0)));
    // A reversal before completion takes the stamp back (a partial one does not).
    bistro
        .reverse_earn(reverse_earn("s2-r", "s2", 0))
        .await
        .receipt();
    let r = bistro.earn(earn("s3", "10.00")).await.receipt();
    assert_eq!(stamp_of(&r), Some(("2/3".into(), 0)));
    let q = bistro
        .quote_earn(earn("", "10.00"))
        .await
        .unwrap()
        .into_inner();
    let r = bistro.earn(earn("s4", "10.00")).await.receipt();
    let (source, points) = stamp_of(&r).unwrap();
    let voucher = source.strip_prefix("3/3 voucher ").unwrap().to_string();
    assert_eq!(points, 0, "a voucher, not points");
    assert_eq!(q.points, r.points);
    let m = member(&mut bistro, "s").await;
    assert_eq!(
        (m.stamp_cards[0].stamps, m.stamp_cards[0].every),
        (0, 3),
        "a completed card starts over"
    );
    assert_eq!(m.vouchers.len(), 1);
    assert_eq!(
        (
            m.vouchers[0].voucher_id.as_str(),
            m.vouchers[0].what.as_str()
        ),
        (voucher.as_str(), "a free dessert")
    );
    // Another partner does not see where else the member shops.
    let elsewhere = member(&mut sky, "s").await;
    assert!(elsewhere.stamp_cards.is_empty() && elsewhere.vouchers.is_empty());
    // Only bistro redeems it; a retry returns the first answer; another redemption is refused.
    let e = redeem(&mut sky, "rv0", &voucher).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::PermissionDenied, "VOUCHER_OF_ANOTHER_PARTNER")
    );
    let first = redeem(&mut bistro, "rv1", &voucher).await.unwrap();
    assert_eq!(redeem(&mut bistro, "rv1", &voucher).await.unwrap(), first);
    let e = redeem(&mut bistro, "rv2", &voucher).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::FailedPrecondition, "VOUCHER_ALREADY_REDEEMED")
    );
    // The completing purchase returned in full after the voucher was used: the card goes below
    // zero, the member's points are not touched beyond that earn's own.
    bistro
        .reverse_earn(reverse_earn("s4-r", "s4", 0))
        .await
        .receipt();
    let m = member(&mut bistro, "s").await;
    assert_eq!(m.stamp_cards[0].stamps, -1);
    assert!(m.vouchers.is_empty(), "redeemed");
    // Four more purchases complete the next card; its voucher expires unused.
    let mut last = None;
    for txn in ["s5", "s6", "s7", "s8"] {
        last = Some(bistro.earn(earn(txn, "10.00")).await.receipt());
    }
    let (source, _) = stamp_of(&last.unwrap()).unwrap();
    let second = source.strip_prefix("3/3 voucher ").unwrap().to_string();
    t.advance_to(t.clock.now() + 10 * DAY + 1);
    let e = redeem(&mut bistro, "rv3", &second).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::FailedPrecondition, "VOUCHER_EXPIRED")
    );
    // A retry of a redemption made before the expiry still returns its first answer.
    assert_eq!(redeem(&mut bistro, "rv1", &voucher).await.unwrap(), first);
    // A points reward is a part of the completing earn, taken back in proportion like any part.
    fresh.earn(earn("f1", "10.00")).await.receipt();
    let r = fresh.earn(earn("f2", "10.00")).await.receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "freshmart", 20),
            part("stamp", "2/2", "freshmart", 50)
        ]
    );
    let r = fresh
        .reverse_earn(reverse_earn("f2-r", "f2", 35))
        .await
        .receipt();
    assert_eq!(
        parts(&r),
        vec![
            part("base", "", "freshmart", 10),
            part("stamp", "2/2", "freshmart", 25)
        ]
    );
    t.assert_invariants().await;
}

/// The audit recomputes each member's qualifying points per day from the earns that counted them
/// and their reversals: stored days changed or lost behind its back are found.
async fn the_audit_recomputes_qualifying_points(b: Backend) {
    let t = TestDaemon::start_with(b, ladder("partner")).await;
    let mut bistro = t.partner("bistro").await;
    bistro.earn(earn_bonus("e1", "m", 600)).await.unwrap();
    bistro.earn(earn_bonus("e2", "m", 500)).await.unwrap();
    bistro
        .reverse_earn(reverse_earn("r1", "e1", 100))
        .await
        .unwrap();
    t.assert_invariants().await;
    for change in [
        // One more qualifying point on the stored day.
        "UPDATE members SET programme = REPLACE(programme, ',1000]', ',1001]') WHERE member_id = 'm'",
        // The state lost altogether.
        "UPDATE members SET programme = NULL WHERE member_id = 'm'",
    ] {
        assert_eq!(t.execute_sql(change).await, 1, "{change}");
        let report = t.audit().await;
        assert!(!report.ok(), "the audit missed: {change}\n{report}");
    }
}
