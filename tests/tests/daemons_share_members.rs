//! Issue 31, point 4: two and three daemons on one PostgreSQL database deciding for the same
//! members at the same time. Every per-member value the writer keeps (campaign use, stamp cards,
//! vouchers, qualifying points, kept activity, holds) must come out as if one daemon had served
//! all the traffic: exact totals and a clean audit after every round.

use coalition_tests::*;
use coalitiond::client::connect;

const DAY: i64 = 86_400_000_000;

/// Scheduler off, a three-rung ladder, a voucher card at bistro (every 3rd purchase of at least
/// 10.00) and a points card at freshmart (every 2nd purchase: 50 points).
fn programme(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
        .replace(
            "max_bonus_points = 5000",
            "max_bonus_points = 5000\nstamps = { every = 3, min_purchase = \"10.00\", within_days = 30, voucher = \"a free dessert\", voucher_days = 10 }",
        )
        .replace(
            "earn_rate = \"2\"",
            "earn_rate = \"2\"\nstamps = { every = 2, within_days = 30, reward_points = 50 }",
        )
        + "\n[programme]\ntier_bonus_funder = \"partner\"\n\
           [[programme.tiers]]\nname = \"bronze\"\nthreshold = 0\nmultiplier = \"1\"\n\
           [[programme.tiers]]\nname = \"silver\"\nthreshold = 1000\nmultiplier = \"1.5\"\n\
           [[programme.tiers]]\nname = \"gold\"\nthreshold = 5000\nmultiplier = \"2\"\n"
}

async fn client_of(t: &TestDaemon, addr: &str, partner: &str) -> PartnerClient {
    PartnerClient::new(
        connect(addr, &t.partner_pem(partner))
            .await
            .expect("connect"),
    )
}

/// The points of `r`'s parts of `kind` (and, for campaigns, of `source`).
fn part_points(r: &v1::Receipt, kind: &str, source: Option<&str>) -> i64 {
    r.parts
        .iter()
        .filter(|p| p.kind == kind && source.is_none_or(|s| p.source == s))
        .map(|p| p.points)
        .sum()
}

async fn member(c: &mut PartnerClient, m: &str) -> v1::Member {
    c.get_member(v1::GetMemberRequest {
        member_id: m.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn daemons_keep_each_members_state(daemons: usize) {
    let t = TestDaemon::start_with(Backend::Postgres, programme).await;
    let mut others = Vec::new();
    for _ in 1..daemons {
        others.push(t.start_another().await);
    }
    let mut addrs = vec![t.addr.clone()];
    addrs.extend(others.iter().map(|d| d.addr.to_string()));
    // A +30 campaign at skyways, at most 100 per member.
    let now = t.clock.now();
    let mut prog = t.programme().await;
    prog.create_campaign(v1::Campaign {
        campaign_id: "cap".into(),
        name: "thirty, a hundred at most".into(),
        starts: coalitiond::clock::rfc3339(now),
        ends: coalitiond::clock::rfc3339(now + 300 * DAY),
        effect: Some(v1::campaign::Effect::BonusPoints(30)),
        cap_per_member: 100,
        partners: vec!["skyways".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut clients: Vec<[PartnerClient; 3]> = Vec::new();
    for a in &addrs {
        clients.push([
            client_of(&t, a, "skyways").await,
            client_of(&t, a, "bistro").await,
            client_of(&t, a, "freshmart").await,
        ]);
    }
    // One member keeps points for holds and burns across all rounds.
    let mut seed = client_of(&t, &addrs[0], "freshmart").await;
    seed.earn(earn_bonus("seed", "holder", 100_000))
        .await
        .unwrap();
    let mut holder_spent = 0i64;
    let mut regular_bonus = 0i64;

    for round in 0..20 {
        // Two members new this round (their first earns race for a row that does not exist yet)
        // and one that has been there since round 0.
        let fresh = [format!("r{round}a"), format!("r{round}b")];
        let mut tasks = Vec::new();
        for m in fresh.iter().chain(std::iter::once(&"regular".to_string())) {
            for i in 0..20 {
                let mut c = clients[i % daemons][0].clone();
                let req = earn_purchase(&format!("{round}-{m}-sky{i}"), m, "10.00");
                tasks.push(tokio::spawn(async move {
                    ("sky", c.earn(req).await.map(|r| r.into_inner()))
                }));
            }
            for i in 0..9 {
                let mut c = clients[i % daemons][1].clone();
                let req = earn_purchase(&format!("{round}-{m}-bis{i}"), m, "12.00");
                tasks.push(tokio::spawn(async move {
                    ("bis", c.earn(req).await.map(|r| r.into_inner()))
                }));
            }
            for i in 0..6 {
                let mut c = clients[i % daemons][2].clone();
                let req = earn_purchase(&format!("{round}-{m}-fre{i}"), m, "5.00");
                tasks.push(tokio::spawn(async move {
                    ("fre", c.earn(req).await.map(|r| r.into_inner()))
                }));
            }
        }
        // Holds and burns of the holder, on every daemon at once.
        let mut hold_tasks = Vec::new();
        for i in 0..6 {
            let mut c = clients[i % daemons][2].clone();
            let (auth, cap, burn_id) = (
                format!("h{round}-{i}"),
                format!("c{round}-{i}"),
                format!("b{round}-{i}"),
            );
            hold_tasks.push(tokio::spawn(async move {
                c.authorize_burn(v1::AuthorizeBurnRequest {
                    transaction_id: auth.clone(),
                    member_id: "holder".into(),
                    points: 40,
                    hold_seconds: 600,
                })
                .await
                .unwrap();
                let spent = if i % 2 == 0 {
                    c.capture_burn(v1::CaptureBurnRequest {
                        transaction_id: cap,
                        authorization_id: auth,
                        points: 25,
                    })
                    .await
                    .unwrap();
                    25
                } else {
                    c.void_burn(v1::VoidBurnRequest {
                        transaction_id: cap,
                        authorization_id: auth,
                    })
                    .await
                    .unwrap();
                    0
                };
                c.burn(burn(&burn_id, "holder", 7)).await.unwrap();
                spent + 7
            }));
        }
        let mut by_member: std::collections::BTreeMap<String, Vec<(&str, v1::Receipt)>> =
            Default::default();
        for task in tasks {
            let (kind, r) = task.await.unwrap();
            let r = r.expect("every earn is accepted").receipt.unwrap();
            by_member
                .entry(r.member_id.clone())
                .or_default()
                .push((kind, r));
        }
        for task in hold_tasks {
            holder_spent += task.await.unwrap();
        }
        for m in &fresh {
            let receipts = &by_member[m];
            // The campaign: 30, 30, 30, 10 — never beyond the cap, whatever daemon decided.
            let bonus: i64 = receipts
                .iter()
                .map(|(_, r)| part_points(r, "campaign", Some("cap")))
                .sum();
            assert_eq!(
                bonus, 100,
                "round {round}, {m}: campaign bonus beyond its cap"
            );
            // Nine purchases at bistro: three vouchers, the card back at 0.
            let completed = receipts
                .iter()
                .filter(|(k, r)| {
                    *k == "bis"
                        && r.parts
                            .iter()
                            .any(|p| p.kind == "stamp" && p.source.starts_with("3/3"))
                })
                .count();
            assert_eq!(completed, 3, "round {round}, {m}: bistro cards completed");
            // Six at freshmart: three rewards of 50.
            let rewards: i64 = receipts
                .iter()
                .filter(|(k, _)| *k == "fre")
                .map(|(_, r)| part_points(r, "stamp", None))
                .sum();
            assert_eq!(rewards, 150, "round {round}, {m}: freshmart rewards");
            let mut bistro = clients[0][1].clone();
            let seen = member(&mut bistro, m).await;
            assert_eq!(
                seen.stamp_cards[0].stamps, 0,
                "round {round}, {m}: card left"
            );
            assert_eq!(seen.vouchers.len(), 3, "round {round}, {m}: vouchers");
            // The balance is exactly what the receipts gave.
            let earned: i64 = receipts.iter().map(|(_, r)| r.points).sum();
            assert_eq!(t.balance(m).await.0, earned, "round {round}, {m}: balance");
        }
        regular_bonus += by_member["regular"]
            .iter()
            .map(|(_, r)| part_points(r, "campaign", Some("cap")))
            .sum::<i64>();
        assert!(
            regular_bonus <= 100,
            "round {round}: the regular member past the cap: {regular_bonus}"
        );
        let (holder, held) = t.balance("holder").await;
        assert_eq!(
            (holder, held),
            (100_000 - holder_spent, 0),
            "round {round}: the holder's points"
        );
        t.assert_invariants().await;
    }
    // The regular member: its campaign use over all rounds reached the cap and stopped there.
    assert_eq!(regular_bonus, 100);
    for d in others {
        d.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_keep_each_members_programme_state() {
    if postgres_available("two_daemons_keep_each_members_programme_state").await {
        daemons_keep_each_members_state(2).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_keep_each_members_programme_state() {
    if postgres_available("three_daemons_keep_each_members_programme_state").await {
        daemons_keep_each_members_state(3).await
    }
}
