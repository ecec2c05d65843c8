//! SIGTERM to a real `coalitiond serve` process during a burst of calls: every call answered OK is
//! in the database after a restart, and clients retrying the ones that failed apply each once.

use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use coalitiond::client::{ClientPem, connect};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, spawn_serve as spawn};

fn earn(i: u64) -> pb::EarnRequest {
    pb::EarnRequest {
        transaction_id: format!("e{i}"),
        member_id: "m1".into(),
        grant: Some(pb::earn_request::Grant::BonusPoints(1 + i as i64)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_nothing_is_lost_or_doubled() {
    coalitiond::client::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = coalitiond::devsetup::write_dev_setup(dir.path(), &addr).unwrap();
    let path = dir.path().join("coalition.toml");
    let mut child = spawn(&path, &addr).await;
    let pem = ClientPem::from_dir(&dir.path().join("certs/dev"), "partner-skyways").unwrap();
    let client = PartnerServiceClient::new(connect(&addr, &pem).await.unwrap());

    let n = 400u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i % 40)).await;
            (i, c.earn(earn(i)).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(15)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut ok = Vec::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if r.is_ok() {
            ok.push(i);
        }
    }
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "coalitiond exits cleanly on SIGTERM: {exit:?}"
    );
    assert!(!ok.is_empty(), "some calls were answered before the signal");

    // Restart: every OK is there; retries of everything apply each call once.
    let mut child = spawn(&path, &addr).await;
    let (store, _) = coalitiond::store::open(&config.database_url, 1)
        .await
        .unwrap();
    for i in &ok {
        assert!(
            store
                .transaction("skyways", &format!("e{i}"))
                .await
                .unwrap()
                .is_some(),
            "e{i} answered OK but lost"
        );
    }
    let mut c = PartnerServiceClient::new(connect(&addr, &pem).await.unwrap());
    for i in 0..n {
        c.earn(earn(i)).await.unwrap();
    }
    assert_eq!(store.transaction_count().await.unwrap(), n as i64);
    let report = store
        .audit(
            coalitiond::clock::Clock::default().now(),
            &config.clearing_rules(),
        )
        .await
        .unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.earned, (1..=n as i64).sum::<i64>());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Issue 17: a real `coalitiond serve` catching up a long gap (1,500 cycles from a configured first
/// cycle) exits within 2 s of SIGTERM, and the next start finishes the catch-up: every settlement
/// chained without a gap and recomputing to its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_long_catch_up_and_the_next_start_finishes_it() {
    coalitiond::client::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    coalitiond::devsetup::write_dev_setup(dir.path(), &addr).unwrap();
    let path = dir.path().join("coalition.toml");
    let days = 1500u64;
    let today = chrono::Utc::now().date_naive();
    let first = today - chrono::Days::new(days);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("time_zone = \"Europe/Amsterdam\"", "time_zone = \"UTC\"")
        .replace(
            "grace_seconds = 300",
            &format!("grace_seconds = 0\nfirst_cycle = \"{first}\""),
        )
        .replace("max_catch_up_cycles = 400", "max_catch_up_cycles = 100000");
    std::fs::write(&path, text).unwrap();
    let config = coalitiond::config::Config::load(&path).unwrap();
    let (store, _) = coalitiond::store::open(&config.database_url, 1)
        .await
        .unwrap();
    let count = || async {
        store
            .settlements(None, 100_000)
            .await
            .map(|s| s.len())
            .unwrap_or(0)
    };
    let mut child = spawn(&path, &addr).await;
    let started = Instant::now();
    while count().await < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the catch-up did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exit = child.wait().unwrap();
    let took = asked.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?} to stop the daemon"
    );
    let done = count().await;
    assert!(
        (done as u64) < days,
        "the catch-up was still under way ({done} of {days})"
    );

    let mut child = spawn(&path, &addr).await;
    let started = Instant::now();
    while (count().await as u64) < days {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the catch-up did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = store
        .audit(
            coalitiond::clock::Clock::default().now(),
            &config.clearing_rules(),
        )
        .await
        .unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.settlements, days as i64);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
