//! Where clearing starts and how a long catch-up behaves (issue 17): no settlement before the
//! coalition's first cycle, a bounded catch-up an operator confirms, a catch-up that yields to
//! shutdown and resumes on the next start, and an audit that checks the chain.

use chrono::NaiveDate;
use coalition_tests::*;
use std::time::{Duration, Instant};
use tonic::Code;

fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

/// UTC cycles, clearing as soon as a cycle closes, with `extra` lines in `[clearing]`.
fn clearing_with(extra: String) -> impl FnOnce(String) -> String {
    move |toml: String| {
        toml.replace("time_zone = \"Europe/Amsterdam\"", "time_zone = \"UTC\"")
            .replace("max_catch_up_cycles = 400\n", "")
            .replace(
                "grace_seconds = 300",
                &format!("grace_seconds = 0\n{extra}"),
            )
    }
}

async fn settlements(t: &TestDaemon) -> Vec<v1::Settlement> {
    let mut out = t
        .finance()
        .await
        .list_settlements(v1::ListSettlementsRequest {
            page_size: 366,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .settlements;
    out.reverse();
    out
}

/// Waits until `n` settlements exist (or `secs` pass), then returns them oldest first.
async fn wait_for(t: &TestDaemon, n: usize, secs: u64) -> Vec<v1::Settlement> {
    let started = Instant::now();
    loop {
        let s = settlements(t).await;
        if s.len() >= n || started.elapsed() > Duration::from_secs(secs) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_chained(s: &[v1::Settlement], first: NaiveDate) {
    let mut day = first;
    let mut previous = String::new();
    for x in s {
        assert_eq!(x.cycle, day.to_string(), "in order, no gap");
        assert_eq!(x.previous_digest, previous, "chained");
        previous = x.digest.clone();
        day = day.succ_opt().unwrap();
    }
}

backends!(clearing_before_the_first_cycle_is_refused_and_stores_nothing);

async fn clearing_before_the_first_cycle_is_refused_and_stores_nothing(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        clearing_with(String::new())(toml).replace("scheduler = true", "scheduler = false")
    })
    .await;
    // A fresh coalition: nothing accepted, no first_cycle configured.
    let err = t.clear("2020-01-01".parse().unwrap()).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "BEFORE_FIRST_CYCLE")
    );
    assert!(
        err.message().contains("nothing was stored"),
        "{}",
        err.message()
    );
    // The first transaction makes today the first cycle: yesterday is before it.
    t.partner("skyways")
        .await
        .earn(earn_bonus("e1", "m1", 5))
        .await
        .receipt();
    let err = t.clear(today().pred_opt().unwrap()).await.unwrap_err();
    assert_eq!(reason(&err), "BEFORE_FIRST_CYCLE");
    assert!(
        err.message().contains(&today().to_string()),
        "{}",
        err.message()
    );
    assert!(settlements(&t).await.is_empty());
    t.assert_invariants().await;
}

backends!(a_coalition_going_live_three_days_back_clears_exactly_three_cycles);

async fn a_coalition_going_live_three_days_back_clears_exactly_three_cycles(b: Backend) {
    let first = today() - chrono::Days::new(3);
    let t = TestDaemon::start_with(b, clearing_with(format!("first_cycle = \"{first}\""))).await;
    let s = wait_for(&t, 3, 20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // nothing more comes
    assert_eq!(settlements(&t).await.len(), 3);
    assert_chained(&s, first);
    // A settlement before the first cycle, inserted by hand, fails the audit.
    assert!(t.audit().await.ok());
    let before = first.pred_opt().unwrap();
    t.execute_sql(&format!(
        "INSERT INTO settlements (cycle, status, digest, previous_digest, content, created_at, finalized_at) \
         SELECT '{before}', status, digest, previous_digest, REPLACE(content, '\"cycle\":\"{first}\"', \
         '\"cycle\":\"{before}\"'), created_at, finalized_at FROM settlements WHERE cycle = '{first}'"
    ))
    .await;
    let text = t.audit().await.to_string();
    assert!(
        text.contains(&format!(
            "settlement of {before} precedes the coalition's first cycle {first}"
        )),
        "{text}"
    );
}

backends!(a_daemon_stopped_for_ten_days_catches_up_ten_cycles_in_order);

async fn a_daemon_stopped_for_ten_days_catches_up_ten_cycles_in_order(b: Backend) {
    let mut t = TestDaemon::start_with(b, clearing_with(String::new())).await;
    t.partner("skyways")
        .await
        .earn(earn_bonus("e1", "m1", 5))
        .await
        .receipt();
    let d0 = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.stop().await;
    t.advance_to(t.config.cycles().close(d0 + chrono::Days::new(9)).unwrap() + 1_000_000);
    t.restart().await;
    let s = wait_for(&t, 10, 30).await;
    assert_eq!(s.len(), 10);
    assert_chained(&s, d0);
    assert_eq!(s[0].totals.as_ref().unwrap().earned, 5);
    t.assert_invariants().await;
}

backends!(a_catch_up_beyond_the_bound_waits_for_an_operator);

async fn a_catch_up_beyond_the_bound_waits_for_an_operator(b: Backend) {
    let first = today() - chrono::Days::new(10);
    let t = TestDaemon::start_with(
        b,
        clearing_with(format!(
            "first_cycle = \"{first}\"\nmax_catch_up_cycles = 5"
        )),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        settlements(&t).await.is_empty(),
        "ten cycles > the bound of five"
    );
    // The gauge is the process's: the schedulers of this binary's other tests set it to 0 on
    // each of their ticks, this daemon's sets it to 10 on each of its own (every 500 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = t.metrics_text().await;
        if metrics.contains("coalition_clearing_catch_up_blocked_cycles 10") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = t
        .operator()
        .await
        .confirm_catch_up(v1::ConfirmCatchUpRequest {
            through: today().pred_opt().unwrap().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.cycles, 10);
    let s = wait_for(&t, 10, 30).await;
    assert_eq!(s.len(), 10);
    assert_chained(&s, first);
    t.assert_invariants().await;
}

backends!(a_long_catch_up_stops_on_shutdown_and_resumes_on_the_next_start);

async fn a_long_catch_up_stops_on_shutdown_and_resumes_on_the_next_start(b: Backend) {
    let days = 1500u64;
    let first = today() - chrono::Days::new(days);
    let mut t = TestDaemon::start_with(
        b,
        clearing_with(format!(
            "first_cycle = \"{first}\"\nmax_catch_up_cycles = 100000"
        )),
    )
    .await;
    t.partner("skyways")
        .await
        .earn(earn_bonus("e1", "m1", 5))
        .await
        .receipt();
    let partial = wait_for(&t, 30, 30).await.len();
    assert!(partial >= 30);
    let asked = Instant::now();
    t.stop().await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    t.restart().await;
    let done_before = settlements(&t).await.len();
    assert!(
        (done_before as u64) < days,
        "the catch-up was still under way when asked to stop ({done_before} of {days})"
    );
    let started = Instant::now();
    loop {
        let f = t
            .finance()
            .await
            .get_settlement(v1::CycleRequest {
                cycle: today().pred_opt().unwrap().to_string(),
            })
            .await;
        if f.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "catch-up did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every settlement chained, no gap, each as the ledger gives it: as one run would have made it.
    let report = t.audit().await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.settlements, days as i64);
}
