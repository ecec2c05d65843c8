//! `coalitiond demo`: a whole day at three partners, over real mTLS, against a fresh SQLite file.

use crate::client::{ClientPem, connect};
use crate::clock::Clock;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::devsetup::write_dev_setup;
use anyhow::Context;
use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

struct Till {
    name: &'static str,
    client: PartnerServiceClient<Channel>,
}

async fn till(addr: &str, certs: &Path, partner: &'static str) -> anyhow::Result<Till> {
    let pem = ClientPem::from_dir(certs, &format!("partner-{partner}"))?;
    let channel = connect(addr, &pem)
        .await
        .with_context(|| format!("connecting as {partner}"))?;
    Ok(Till {
        name: partner,
        client: PartnerServiceClient::new(channel),
    })
}

fn show(step: &str, r: &pb::Receipt) {
    let slices: Vec<String> = r
        .slices
        .iter()
        .map(|s| format!("{} {}", s.issuer, s.points))
        .collect();
    println!(
        "  {step:<58} {:>6} pts  balance {:>6}{}{}{}",
        r.points,
        r.balance_after,
        if slices.is_empty() {
            String::new()
        } else {
            format!("  [{}]", slices.join(", "))
        },
        if r.debt_created > 0 {
            format!("  debt +{}", r.debt_created)
        } else {
            String::new()
        },
        if r.debt_repaid > 0 {
            format!("  debt repaid {}", r.debt_repaid)
        } else {
            String::new()
        },
    );
    if r.parts.len() > 1 || r.parts.iter().any(|p| p.kind != "base") || !r.tier.is_empty() {
        let parts: Vec<String> = r
            .parts
            .iter()
            .map(|p| {
                let what = if p.source.is_empty() {
                    p.kind.clone()
                } else {
                    format!("{} {}", p.kind, p.source)
                };
                format!("{what}: {} by {}", p.points, p.funder)
            })
            .collect();
        println!(
            "  {:<58} parts: {}{}",
            "",
            parts.join(", "),
            if r.tier.is_empty() {
                String::new()
            } else {
                format!("; tier now {}", r.tier)
            }
        );
    }
}

/// The demo's programme: the default tier ladder with the operator funding the tier bonus, and a
/// stamp card at bistro (every 3rd dinner of 15.00 or more: a free dessert).
fn with_programme(toml: String) -> String {
    toml.replacen(
        "max_bonus_points = 5000",
        "max_bonus_points = 5000\nstamps = { every = 3, min_purchase = \"15.00\", within_days = 60, voucher = \"a free dessert\", voucher_days = 30 }",
        1,
    ) + "\n[programme]\ntier_bonus_funder = \"operator\"\n"
}

/// A second member meets the programme: a campaign funded by the operator, a promotion to silver,
/// a tier bonus, a completed stamp card and its voucher, then a burn of the operator's points.
async fn programme_part(
    addr: &str,
    certs: &Path,
    now: crate::ledger::Micros,
    air: &mut Till,
    shop: &mut Till,
    food: &mut Till,
) -> anyhow::Result<()> {
    let m = "member-b41d07";
    println!("\nThe programme team starts a campaign (coalitiond programme campaigns create …):");
    let pem = ClientPem::from_dir(certs, "programme")?;
    let mut prog = coalition_proto::v1::programme_service_client::ProgrammeServiceClient::new(
        connect(addr, &pem).await?,
    );
    let c = prog
        .create_campaign(pb::Campaign {
            campaign_id: "winter-double".into(),
            name: "double points on flights, on the coalition".into(),
            starts: crate::clock::rfc3339(now),
            ends: crate::clock::rfc3339(now + 30 * crate::programme::DAY),
            partner_kinds: vec!["airline".into()],
            effect: Some(pb::campaign::Effect::Multiplier("2".into())),
            cap_per_member: 2000,
            funder: "operator".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    print!("{}", crate::cmd::programme::campaigns_table(&[c]));
    println!("\nA second member flies, dines and shops:");
    for (txn, amount, step) in [
        (
            "sky-0101",
            "700.00",
            "skyways: flight for EUR 700.00, double points",
        ),
        (
            "sky-0102",
            "100.00",
            "skyways: flight for EUR 100.00 as a silver member",
        ),
    ] {
        let r = air
            .client
            .earn(pb::EarnRequest {
                transaction_id: txn.into(),
                member_id: m.into(),
                grant: money(amount),
                category: String::new(),
            })
            .await?;
        show(step, r.get_ref().receipt.as_ref().unwrap());
    }
    let mut voucher = String::new();
    for (i, txn) in ["bi-0101", "bi-0102", "bi-0103"].into_iter().enumerate() {
        let r = food
            .client
            .earn(pb::EarnRequest {
                transaction_id: txn.into(),
                member_id: m.into(),
                grant: money("24.00"),
                category: "dinner".into(),
            })
            .await?;
        let receipt = r.into_inner().receipt.unwrap_or_default();
        show(
            &format!("bistro: dinner {} of 3 on the stamp card", i + 1),
            &receipt,
        );
        if let Some(v) = receipt
            .parts
            .iter()
            .find_map(|p| p.source.split_once(" voucher ").map(|(_, v)| v.to_string()))
        {
            voucher = v;
        }
    }
    let v = food
        .client
        .redeem_voucher(pb::RedeemVoucherRequest {
            transaction_id: "bi-0104".into(),
            voucher_id: voucher.clone(),
        })
        .await?
        .into_inner();
    println!(
        "  bistro: voucher {voucher} ({}) redeemed at {}",
        v.voucher.map(|v| v.what).unwrap_or_default(),
        v.transaction_id
    );
    let r = shop
        .client
        .burn(pb::BurnRequest {
            transaction_id: "fm-0101".into(),
            member_id: m.into(),
            points: 1500,
        })
        .await?;
    show(
        "freshmart: groceries paid with 1500 points",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    let who = food
        .client
        .get_member(pb::GetMemberRequest {
            member_id: m.into(),
        })
        .await?
        .into_inner();
    println!(
        "  where {m} stands: {} points, tier {} ({} qualifying; {} more for {}), review {}",
        who.balance,
        who.tier,
        who.qualifying_points,
        who.points_to_next_tier,
        who.next_tier,
        who.next_review_at
    );
    Ok(())
}

async fn balance(t: &mut Till, member: &str) -> anyhow::Result<()> {
    let b = t
        .client
        .get_balance(pb::GetBalanceRequest {
            member_id: member.into(),
        })
        .await?
        .into_inner();
    // A partner sees no issuer split: where else the member earns is not its business.
    println!(
        "  balance of {member} as {} sees it: {} points (debt {}); next expiry {} ({} pts)",
        t.name, b.points, b.debt, b.next_expiry, b.next_expiry_points
    );
    Ok(())
}

fn money(amount: &str) -> Option<pb::earn_request::Grant> {
    Some(pb::earn_request::Grant::Purchase(pb::Money {
        amount: amount.into(),
        currency: "EUR".into(),
    }))
}

/// Runs the demo in `dir` (default `./data/demo-<unix time>`).
pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        PathBuf::from(format!("data/demo-{t}"))
    });
    println!("coalitiond demo in {}", dir.display());
    write_dev_setup(&dir, "127.0.0.1:0")?;
    let path = dir.join("coalition.toml");
    std::fs::write(&path, with_programme(std::fs::read_to_string(&path)?))?;
    let config = Config::load(&path)?;
    println!(
        "  made a dev CA and certificates for {} partners, finance, operator and programme",
        config.partners.len()
    );
    let config_cycles = config.cycles();
    let rules = config.clearing_rules();
    let daemon = Daemon::start(config, Clock::default()).await?;
    let addr = daemon.addr.to_string();
    println!(
        "  daemon listening on {addr} (mTLS), database {}",
        dir.join("coalition.db").display()
    );
    let certs = dir.join("certs/dev");
    let mut air = till(&addr, &certs, "skyways").await?;
    let mut shop = till(&addr, &certs, "freshmart").await?;
    let mut food = till(&addr, &certs, "bistro").await?;
    let m = "member-7f3a9c";

    println!("\nA member earns at three partners:");
    let r = air
        .client
        .earn(pb::EarnRequest {
            transaction_id: "sky-0001".into(),
            member_id: m.into(),
            grant: money("420.00"),
            category: String::new(),
        })
        .await?;
    show(
        "skyways: flight for EUR 420.00 (1 pt per EUR)",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    let r = shop
        .client
        .earn(pb::EarnRequest {
            transaction_id: "fm-0001".into(),
            member_id: m.into(),
            grant: money("85.40"),
            category: String::new(),
        })
        .await?;
    show(
        "freshmart: groceries for EUR 85.40 (2 pts per EUR)",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    let r = food
        .client
        .earn(pb::EarnRequest {
            transaction_id: "bi-0001".into(),
            member_id: m.into(),
            grant: Some(pb::earn_request::Grant::BonusPoints(250)),
            category: String::new(),
        })
        .await?;
    show(
        "bistro: welcome bonus",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    balance(&mut food, m).await?;

    println!("\nThe member pays with points at the restaurant (soonest-expiring points first):");
    let burn = pb::BurnRequest {
        transaction_id: "bi-0002".into(),
        member_id: m.into(),
        points: 500,
    };
    let r = food.client.burn(burn.clone()).await?;
    show(
        "bistro: dinner paid with 500 points",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    let again = food.client.burn(burn).await?;
    println!(
        "  the till retries the same burn (bi-0002): same receipt, applied once: {}",
        again.get_ref().receipt == r.get_ref().receipt
    );

    println!("\nGoods come back:");
    let r = shop
        .client
        .reverse_earn(pb::ReverseEarnRequest {
            transaction_id: "fm-0002".into(),
            original_transaction_id: "fm-0001".into(),
            points: 100,
        })
        .await?;
    show(
        "freshmart: part of the groceries returned (100 of 170 pts)",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    let r = food
        .client
        .reverse_burn(pb::ReverseBurnRequest {
            transaction_id: "bi-0003".into(),
            original_transaction_id: "bi-0002".into(),
            points: 200,
        })
        .await?;
    show(
        "bistro: part of the dinner refunded (200 pts back)",
        r.get_ref().receipt.as_ref().unwrap(),
    );
    balance(&mut air, m).await?;

    println!("\nBistro's view of the member's activity:");
    let list = food
        .client
        .list_member_activity(pb::ListMemberActivityRequest {
            member_id: m.into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    for t in list.transactions {
        let r = t.receipt.unwrap_or_default();
        println!(
            "  {}  {:<12} {:<8} {:>5} pts (reversed {})",
            r.accepted_at,
            format!("{:?}", r.kind()),
            r.transaction_id,
            r.points,
            t.reversed_points
        );
    }
    let _ = air.name;
    programme_part(
        &addr,
        &certs,
        daemon.clock.now(),
        &mut air,
        &mut shop,
        &mut food,
    )
    .await?;

    // The day ends: move the demo's clock past the cut-off and clear the cycle as finance would.
    let cycles = config_cycles;
    let today = cycles.cycle_of(daemon.clock.now())?;
    let close = cycles.close(today)?;
    daemon.clock.advance(std::time::Duration::from_micros(
        (close - daemon.clock.now() + 1_000_000) as u64,
    ));
    println!(
        "\nThe cut-off passes ({}); finance clears the day:",
        crate::clock::rfc3339(close)
    );
    let pem = ClientPem::from_dir(&certs, "finance")?;
    let mut finance = coalition_proto::v1::finance_service_client::FinanceServiceClient::new(
        connect(&addr, &pem).await?,
    );
    let settlement = finance
        .run_clearing(pb::CycleRequest {
            cycle: today.to_string(),
        })
        .await?
        .into_inner();
    crate::cmd::finance::print_settlement(&settlement);
    let full = finance
        .get_member_balance(pb::MemberBalanceRequest {
            member_id: m.into(),
            reason: "demo: where the points came from".into(),
        })
        .await?
        .into_inner();
    let by: Vec<String> = full
        .by_issuer
        .iter()
        .map(|s| format!("{} {}", s.issuer, s.points))
        .collect();
    println!(
        "\nFinance's view of {m} (written to the access log): {} points in {} lots, by issuer: {}",
        full.points,
        full.lots,
        by.join(", ")
    );
    // Both members agree to analytics at the till; the managers' report of the month follows.
    for (i, member) in [m, "member-b41d07"].into_iter().enumerate() {
        shop.client
            .set_consent(pb::SetConsentRequest {
                transaction_id: format!("consent-{i}"),
                member_id: member.into(),
                purpose: "analytics".into(),
                granted: true,
            })
            .await?;
    }
    let month = crate::report::Month::of(settlement_day(&settlement)?).to_string();
    let ask = pb::ProgrammeReportRequest {
        from_month: month.clone(),
        to_month: month.clone(),
        partner: String::new(),
    };
    let kpis = crate::api::report::from_pb(
        &finance
            .get_programme_report(ask.clone())
            .await?
            .into_inner(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let cohorts =
        crate::api::report::cohorts_from_pb(&finance.get_cohorts(ask).await?.into_inner());
    let html = dir.join("programme-report.html");
    std::fs::write(&html, crate::report::html::page(&kpis, Some(&cohorts)))?;
    println!(
        "\nThe month's programme KPIs (coalitiond report kpi --from {month} --to {month}):\n{}\nAs a page: {}",
        crate::report::table(&kpis),
        html.display()
    );
    let report = daemon.store.audit(daemon.clock.now(), &rules).await?;
    println!("\nLedger audit:\n{report}");
    daemon.shutdown().await?;
    anyhow::ensure!(report.ok(), "ledger invariants violated");
    println!(
        "\ndemo finished; inspect it with: coalitiond audit --config {}",
        dir.join("coalition.toml").display()
    );
    Ok(())
}

/// The business day a settlement clears.
fn settlement_day(s: &pb::Settlement) -> anyhow::Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(&s.cycle, "%Y-%m-%d")
        .with_context(|| format!("settlement cycle {:?}", s.cycle))
}
