//! Issue 31, point 2: a settlement's digest is of what it says, so the same operations give the
//! same digest on SQLite and PostgreSQL however the writer batched them; its seal (the digest and
//! the ledger head it pins) is its own on each ledger, and the audit verifies both.

use chrono::NaiveDate;
use coalition_tests::*;
use futures::future::join_all;

/// One phase of the day: calls on distinct members, so that their order within the phase does
/// not change the books (the serial run sends them one by one, the concurrent run all at once).
enum Call {
    Earn(&'static str, v1::EarnRequest),
    Burn(&'static str, v1::BurnRequest),
    ReverseBurn(&'static str, v1::ReverseBurnRequest),
    ReverseEarn(&'static str, v1::ReverseEarnRequest),
}

const MEMBERS: usize = 30;
const PARTNERS: [&str; 3] = ["skyways", "bistro", "freshmart"];

fn day_of_calls(day: usize) -> Vec<Vec<Call>> {
    let m = |i: usize| format!("d-m{i}");
    let id = |what: &str, i: usize| format!("d{day}-{what}-{i}");
    let earns = (0..MEMBERS)
        .map(|i| {
            let p = PARTNERS[i % 3];
            let r = if i % 2 == 0 {
                earn_purchase(&id("e", i), &m(i), &format!("{}.{:02}", 20 + i * 7, i * 3))
            } else {
                earn_bonus(&id("e", i), &m(i), 100 + 13 * i as i64)
            };
            Call::Earn(p, r)
        })
        .collect();
    let more = (0..MEMBERS)
        .map(|i| {
            let p = PARTNERS[(i + 1) % 3];
            Call::Earn(p, earn_bonus(&id("f", i), &m(i), 50 + i as i64))
        })
        .collect();
    let burns = (0..MEMBERS)
        .map(|i| {
            let p = PARTNERS[(i + 2) % 3];
            Call::Burn(p, burn(&id("b", i), &m(i), 60 + 3 * i as i64))
        })
        .collect();
    let returns = (0..MEMBERS)
        .filter(|i| i % 3 != 2)
        .map(|i| {
            if i % 3 == 0 {
                let p = PARTNERS[(i + 2) % 3];
                Call::ReverseBurn(p, reverse_burn(&id("rb", i), &id("b", i), 7 + i as i64))
            } else {
                let p = PARTNERS[(i + 1) % 3];
                Call::ReverseEarn(p, reverse_earn(&id("re", i), &id("f", i), 20))
            }
        })
        .collect();
    vec![earns, more, burns, returns]
}

async fn send(t: &TestDaemon, call: Call) {
    let client = |p: &'static str| t.partner(p);
    match call {
        Call::Earn(p, r) => {
            client(p).await.earn(r).await.receipt();
        }
        Call::Burn(p, r) => {
            client(p).await.burn(r).await.receipt();
        }
        Call::ReverseBurn(p, r) => {
            client(p).await.reverse_burn(r).await.receipt();
        }
        Call::ReverseEarn(p, r) => {
            client(p).await.reverse_earn(r).await.receipt();
        }
    }
}

/// Plays two days on a fresh daemon and clears both; returns the settlements and how many links
/// (batches) the chain holds.
async fn play(b: Backend, concurrent: bool, first: NaiveDate) -> (Vec<v1::Settlement>, i64) {
    let t = TestDaemon::start_with(b, |toml| {
        let toml = toml
            .replace("scheduler = true", "scheduler = false")
            .replace("time_zone = \"Europe/Amsterdam\"", "time_zone = \"UTC\"");
        // The serial run commits every call in a batch of its own.
        if concurrent {
            toml
        } else {
            toml.replace("max_batch = 1024", "max_batch = 1")
        }
    })
    .await;
    let cycles = t.config.cycles();
    let mut settlements = Vec::new();
    for (n, day) in [first, first.succ_opt().unwrap()].into_iter().enumerate() {
        t.advance_to(cycles.open(day).unwrap() + 3_600_000_000);
        for phase in day_of_calls(n) {
            if concurrent {
                join_all(phase.into_iter().map(|c| send(&t, c))).await;
            } else {
                for c in phase {
                    send(&t, c).await;
                }
            }
        }
        t.advance_to(cycles.close(day).unwrap() + 60_000_000);
        settlements.push(t.clear(day).await.unwrap());
    }
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
    let chain = t.daemon().store.verify_chain().await.unwrap();
    assert!(chain.ok(), "{:?}", chain.violations);
    let links = t.query_i64("SELECT COUNT(*) FROM ledger_chain").await;
    (settlements, links)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_books_give_the_same_digest_on_both_backends_however_batched() {
    // Two days from now, in UTC: every run clears the same business days.
    let first = chrono::Utc::now().date_naive() + chrono::Days::new(2);
    let (serial, serial_links) = play(Backend::Sqlite, false, first).await;
    let (together, together_links) = play(Backend::Sqlite, true, first).await;
    assert!(
        together_links < serial_links,
        "the runs batched differently: {together_links} and {serial_links} links"
    );
    let mut runs = vec![
        ("SQLite, a batch per call", serial),
        ("SQLite, calls at once", together),
    ];
    if postgres_available("digest_and_seal::postgres").await {
        let (pg, _) = play(Backend::Postgres, true, first).await;
        runs.push(("PostgreSQL, calls at once", pg));
    }
    let (name0, first_run) = &runs[0];
    assert!(first_run[0].totals.as_ref().unwrap().allocations > 0);
    for (name, run) in &runs[1..] {
        for (a, b) in first_run.iter().zip(run) {
            assert_eq!(
                (&a.gross, &a.positions, &a.totals),
                (&b.gross, &b.positions, &b.totals),
                "{name0} and {name} settle {} alike",
                a.cycle
            );
            assert_eq!(a.digest, b.digest, "{name0} and {name}: {}", a.cycle);
            assert_eq!(a.previous_digest, b.previous_digest);
            assert_ne!(a.ledger_head, b.ledger_head, "each ledger its own head");
            assert_ne!(a.seal, b.seal, "each ledger its own seal");
        }
    }
    for (name, run) in &runs {
        assert_eq!(run[1].previous_digest, run[0].digest, "{name}: chained");
        for s in run {
            assert_eq!(s.seal.len(), 64, "{name}: sealed");
        }
    }
}

backends!(an_edited_seal_or_ledger_head_fails_the_audit);

async fn an_edited_seal_or_ledger_head_fails_the_audit(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        toml.replace("scheduler = true", "scheduler = false")
    })
    .await;
    t.partner("skyways")
        .await
        .earn(earn_bonus("e1", "m1", 500))
        .await
        .receipt();
    t.partner("bistro")
        .await
        .burn(burn("b1", "m1", 200))
        .await
        .receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    let s = t.clear(day).await.unwrap();
    assert!(t.audit().await.ok());
    // The seal edited: the audit names it.
    t.execute_sql(&format!(
        "UPDATE settlements SET content = REPLACE(content, '\"seal\":\"{}\"', '\"seal\":\"{}\"')",
        s.seal,
        "0".repeat(64)
    ))
    .await;
    let report = t.audit().await;
    assert!(!report.ok());
    assert!(
        report.to_string().contains("do not give its seal"),
        "{report}"
    );
}

backends!(a_settlement_sealed_before_the_split_stays_verifiable);

/// A draft stored as settlements were before issue 31 (no seal; its digest over content and
/// ledger head together) passes the audit, and a re-run keeps its digest.
async fn a_settlement_sealed_before_the_split_stays_verifiable(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        toml.replace("scheduler = true", "scheduler = false")
    })
    .await;
    t.partner("skyways")
        .await
        .earn(earn_bonus("e1", "m1", 500))
        .await
        .receipt();
    t.partner("bistro")
        .await
        .burn(burn("b1", "m1", 200))
        .await
        .receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    let s = t.clear(day).await.unwrap();
    let stored: String = {
        use sqlx::Connection;
        let url = &t.config.database_url;
        let q = format!("SELECT content FROM settlements WHERE cycle = '{day}'");
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(&q).fetch_one(&mut c).await.unwrap()
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar(&q).fetch_one(&mut c).await.unwrap()
        }
    };
    let legacy = serde_json::from_str::<coalition_clearing::Settlement>(&stored)
        .unwrap()
        .with_scheme(coalition_clearing::DIGEST_PINNED);
    assert_ne!(legacy.digest, s.digest);
    let json = serde_json::to_string(&legacy).unwrap();
    assert!(!json.contains("\"seal\""), "{json}");
    t.execute_sql(&format!(
        "UPDATE settlements SET content = '{}', digest = '{}' WHERE cycle = '{day}'",
        json.replace('\'', "''"),
        legacy.digest
    ))
    .await;
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
    let again = t.clear(day).await.unwrap();
    assert_eq!(again.digest, legacy.digest, "a re-run keeps its scheme");
    assert_eq!(again.seal, "");
    assert!(t.audit().await.ok());
}
