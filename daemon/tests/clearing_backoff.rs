//! Clearing that keeps failing (issue 21): a real `coalitiond serve` whose clearing state is
//! corrupt retries with capped exponential backoff, counts each failure by cause, logs a bounded
//! number of lines, and its finance service turns NOT_SERVING once clearing has failed for longer
//! than `clearing.unhealthy_after_seconds` (while the partner service stays SERVING).

mod common;

use common::free_port;
use std::process::{Command, Stdio};
use std::time::Duration;

async fn health(addr: &str, pem: &coalitiond::client::ClientPem, service: &str) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = coalitiond::client::connect(addr, pem).await.unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_that_keeps_failing_backs_off_logs_little_and_shows_in_health() {
    use sqlx::Connection;
    coalitiond::client::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    coalitiond::devsetup::write_dev_setup(dir.path(), &addr).unwrap();
    let path = dir.path().join("coalition.toml");
    let first = (chrono::Utc::now() - chrono::Duration::days(3)).date_naive();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"{metrics}\""),
            1,
        )
        .replacen(
            "# first_cycle = \"2026-12-01\"",
            &format!("first_cycle = \"{first}\"\nunhealthy_after_seconds = 3"),
            1,
        );
    std::fs::write(&path, text).unwrap();
    let config = coalitiond::config::Config::load(&path).unwrap();
    assert_eq!(config.clearing.first_cycle, Some(first));
    // A clearing state no clearing run can read: every attempt fails (cause "corrupt").
    coalitiond::store::migrate(&config.database_url)
        .await
        .unwrap();
    let mut c = sqlx::SqliteConnection::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE clearing_state SET sealed_through = 'garbage' WHERE id = 1")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_coalitiond"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pem =
        coalitiond::client::ClientPem::from_dir(&dir.path().join("certs/dev"), "partner-bistro")
            .unwrap();
    // Failing, but not yet for longer than 3 s: still SERVING.
    assert_eq!(
        health(&addr, &pem, "coalition.v1.FinanceService").await,
        1,
        "SERVING at first"
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        health(&addr, &pem, "coalition.v1.FinanceService").await,
        2,
        "NOT_SERVING after clearing failed for longer than unhealthy_after_seconds"
    );
    assert_eq!(
        health(&addr, &pem, "coalition.v1.PartnerService").await,
        1,
        "the partner service does not depend on clearing"
    );
    let body = scrape(&metrics).await;
    let failures: f64 = body
        .lines()
        .filter(|l| l.starts_with("coalition_clearing_failures_total{cause=\"corrupt\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Attempts at about 0, 0.5, 1.5, 3.5, 7.5 s (then 15.5): a tick every 0.5 s would be 24.
    assert!(
        (3.0..=7.0).contains(&failures),
        "{failures} attempts in 12 s:\n{body}"
    );
    assert!(body.contains("coalition_clearing_failing 1"), "{body}");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    let logged = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let lines = logged
        .lines()
        .filter(|l| l.contains("scheduled clearing failed"))
        .count();
    assert_eq!(
        lines, 1,
        "one warning when clearing starts failing, the next after a minute:\n{logged}"
    );
    assert!(logged.contains("health: NOT_SERVING"), "{logged}");
}

/// GET /metrics over a plain TCP connection (HTTP/1.0).
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
