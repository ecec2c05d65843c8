//! Operators: rate limits, suspension, certificate revocation, graceful shutdown, metrics.

use coalition_tests::*;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

backends!(
    a_flooding_partner_is_throttled_and_others_are_not,
    operators_change_limits_and_suspend_live_and_durably
);

fn tight_skyways(toml: String) -> String {
    toml.replacen(
        "rate_limit = { per_second = 5000, burst = 10000 }",
        "rate_limit = { per_second = 5, burst = 5 }",
        1,
    )
}

async fn a_flooding_partner_is_throttled_and_others_are_not(b: Backend) {
    let t = TestDaemon::start_with(b, tight_skyways).await;
    let (air, food) = (t.partner("skyways").await, t.partner("bistro").await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (mut a, mut f) = (air.clone(), food.clone());
        tasks.push(tokio::spawn(async move {
            (
                i,
                a.earn(earn_bonus(&format!("a{i}"), "m1", 1)).await,
                f.earn(earn_bonus(&format!("f{i}"), "m2", 1)).await,
            )
        }));
    }
    let (mut ok, mut throttled) = (Vec::new(), Vec::new());
    for task in tasks {
        let (i, a, f) = task.await.unwrap();
        f.expect("the other partner is never throttled");
        match a {
            Ok(_) => ok.push(i),
            Err(e) => {
                assert_eq!(
                    (e.code(), reason(&e).as_str()),
                    (Code::ResourceExhausted, "RATE_LIMITED"),
                    "{e:?}"
                );
                let hint = e
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .expect("RetryInfo with a delay");
                assert!(
                    hint > Duration::ZERO && hint <= Duration::from_secs(1),
                    "{hint:?}"
                );
                let ms: u64 = e
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=1000).contains(&ms));
                throttled.push(i);
            }
        }
    }
    assert!(
        ok.len() >= 5 && !throttled.is_empty(),
        "ok {ok:?} throttled {throttled:?}"
    );
    let store = &t.daemon.as_ref().unwrap().store;
    for i in &throttled {
        assert!(
            store
                .transaction("skyways", &format!("a{i}"))
                .await
                .unwrap()
                .is_none(),
            "throttled a{i} reached the ledger"
        );
    }
    assert_eq!(t.transactions().await, ok.len() as i64 + 40);
    assert_eq!(t.balance("m1").await, (ok.len() as i64, 0));
    t.assert_invariants().await;
}

async fn operators_change_limits_and_suspend_live_and_durably(b: Backend) {
    let mut t = TestDaemon::start(b).await;
    let mut op = t.operator().await;
    let mut food = t.partner("bistro").await;
    food.earn(earn_bonus("f0", "m1", 10)).await.unwrap();

    let info = op
        .set_limit(v1::SetLimitRequest {
            partner: "skyways".into(),
            per_second: 1,
            burst: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.per_second, info.burst), (1, 2));
    let mut air = t.partner("skyways").await;
    // Burst 2 at 1/s: within a few back-to-back calls one is throttled (however slow the machine).
    let (mut allowed, mut throttled) = (0u64, 0u64);
    for i in 0..6 {
        match air.earn(earn_bonus(&format!("a{i}"), "m1", 1)).await {
            Ok(_) => allowed += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                throttled += 1;
            }
        }
    }
    assert!(
        throttled >= 1 && allowed >= 2,
        "the new quota holds at once: {allowed} allowed, {throttled} throttled"
    );

    let info = op
        .suspend_partner(v1::PartnerRequest {
            partner: "bistro".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status, "suspended");
    let before = t.transactions().await;
    let err = food.burn(burn("f1", "m1", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("suspended"), "{}", err.message());
    assert_eq!(
        t.transactions().await,
        before,
        "nothing a suspended partner sends is applied"
    );
    let limits = op
        .get_limits(v1::GetLimitsRequest {
            partner: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .limits;
    let sky = limits.iter().find(|l| l.partner == "skyways").unwrap();
    assert_eq!(
        (sky.allowed_1m, sky.throttled_1m, sky.per_second),
        (allowed, throttled, 1)
    );

    // A partner certificate cannot use the operator API.
    let mut as_partner = coalition_proto::v1::operator_service_client::OperatorServiceClient::new(
        coalitiond::client::connect(&t.addr, &t.partner_pem("skyways"))
            .await
            .unwrap(),
    );
    let err = as_partner
        .resume_partner(v1::PartnerRequest {
            partner: "bistro".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Both changes survive a restart.
    t.restart().await;
    let mut op = t.operator().await;
    let partners = op
        .list_partners(v1::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner()
        .partners;
    let status: Vec<(String, String, u32)> = partners
        .iter()
        .map(|p| (p.id.clone(), p.status.clone(), p.per_second))
        .collect();
    assert!(
        status.contains(&("bistro".into(), "suspended".into(), 5000)),
        "{status:?}"
    );
    assert!(
        status.contains(&("skyways".into(), "active".into(), 1)),
        "{status:?}"
    );
    let mut food = t.partner("bistro").await;
    assert_eq!(
        food.burn(burn("f1", "m1", 1)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    op.resume_partner(v1::PartnerRequest {
        partner: "bistro".into(),
    })
    .await
    .unwrap();
    food.burn(burn("f1", "m1", 1))
        .await
        .expect("resumed at once");
    let err = op
        .set_limit(v1::SetLimitRequest {
            partner: "nobody".into(),
            per_second: 1,
            burst: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    t.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_after_reload_while_others_keep_working() {
    let t = TestDaemon::start(Backend::Sqlite).await;
    let mut food = t.partner("bistro").await;
    food.earn(earn_bonus("f0", "m1", 10)).await.unwrap(); // an established connection
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("a0", "m1", 10)).await.unwrap();

    // Revoke skyways, reload through the operator API.
    assert_eq!(
        coalitiond::devsetup::revoke(&t.config, &t.partner_pem("skyways").cert).unwrap(),
        1
    );
    let mut op = t.operator().await;
    assert_eq!(
        op.reload_certificates(v1::ReloadCertificatesRequest {})
            .await
            .unwrap()
            .into_inner()
            .revoked,
        1
    );
    let refused = match coalitiond::client::connect(&t.addr, &t.partner_pem("skyways")).await {
        Err(_) => true,
        Ok(ch) => PartnerClient::new(ch)
            .earn(earn_bonus("a1", "m1", 1))
            .await
            .is_err_and(|e| reason(&e).is_empty()),
    };
    assert!(refused, "a revoked certificate must fail the handshake");
    food.earn(earn_bonus("f1", "m1", 1))
        .await
        .expect("an established connection of another partner keeps working");

    // Revoke freshmart, reload by SIGHUP.
    let mut shop = t.partner("freshmart").await;
    shop.earn(earn_bonus("s0", "m1", 1)).await.unwrap();
    assert_eq!(
        coalitiond::devsetup::revoke(&t.config, &t.partner_pem("freshmart").cert).unwrap(),
        2
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused = match coalitiond::client::connect(&t.addr, &t.partner_pem("freshmart")).await {
            Err(_) => true,
            Ok(ch) => PartnerClient::new(ch)
                .earn(earn_bonus("s1", "m1", 1))
                .await
                .is_err_and(|e| reason(&e).is_empty()),
        };
        if refused {
            break;
        }
    }
    assert!(refused, "SIGHUP must reload the CRL");
    food.earn(earn_bonus("f2", "m1", 1))
        .await
        .expect("still working");
    // A broken CRL is refused and the configuration in force stays.
    std::fs::write(t.config.crl.as_ref().unwrap(), "not a crl").unwrap();
    let err = op
        .reload_certificates(v1::ReloadCertificatesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "TLS_RELOAD_REFUSED")
    );
    t.partner("bistro")
        .await
        .earn(earn_bonus("f3", "m1", 1))
        .await
        .expect("new connections still work");
}

backends!(shutdown_drains_calls_in_flight_and_retries_apply_once);

async fn shutdown_drains_calls_in_flight_and_retries_apply_once(b: Backend) {
    let mut t = TestDaemon::start(b).await;
    let air = t.partner("skyways").await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut c = air.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i % 30)).await;
            (
                i,
                c.earn(earn_bonus(&format!("e{i}"), "m1", 1 + i as i64))
                    .await,
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(12)).await;
    t.stop().await; // what SIGTERM does: stop accepting, drain, commit, answer
    let mut ok = Vec::new();
    for task in tasks {
        let (i, r) = task.await.unwrap();
        if r.is_ok() {
            ok.push(i);
        }
    }
    t.restart().await;
    let store = &t.daemon.as_ref().unwrap().store;
    for i in &ok {
        assert!(
            store
                .transaction("skyways", &format!("e{i}"))
                .await
                .unwrap()
                .is_some(),
            "e{i} was answered OK but is not stored"
        );
    }
    // Clients retry everything; each call is applied exactly once.
    let mut air = t.partner("skyways").await;
    for i in 0..300u64 {
        air.earn(earn_bonus(&format!("e{i}"), "m1", 1 + i as i64))
            .await
            .unwrap();
    }
    assert_eq!(t.transactions().await, 300);
    assert_eq!(t.balance("m1").await, ((1..=300).sum::<i64>(), 0));
    t.assert_invariants().await;
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    body.to_string()
}

/// Checks the Prometheus text exposition format line by line; returns (name with labels, value).
fn parse_prometheus(body: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("TYPE ") || rest.starts_with("HELP "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            for label in series[name_end + 1..series.len() - 1]
                .split("\",")
                .filter(|l| !l.is_empty())
            {
                let (k, v) = label
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label {label:?} in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                let _ = v;
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_string(), v));
    }
    samples
}

fn calls_of(samples: &[(String, f64)], partner: &str, method: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| {
            s.starts_with("coalition_calls_total{")
                && s.contains(&format!("partner=\"{partner}\""))
                && s.contains(&format!("method=\"{method}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_per_partner() {
    let t = TestDaemon::start_with(Backend::Sqlite, tight_skyways).await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("warm", "m1", 1)).await.unwrap();
    let before = parse_prometheus(&scrape(t.metrics_addr()).await);
    for i in 0..12 {
        let _ = air.earn(earn_bonus(&format!("a{i}"), "m1", 1)).await; // some throttled
    }
    let after = parse_prometheus(&scrape(t.metrics_addr()).await);
    assert!(calls_of(&after, "skyways", "Earn") >= calls_of(&before, "skyways", "Earn") + 12.0);
    let throttled = |s: &[(String, f64)]| -> f64 {
        s.iter()
            .filter(|(k, _)| {
                k.starts_with("coalition_throttled_calls_total{")
                    && k.contains("partner=\"skyways\"")
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert!(
        throttled(&after) > throttled(&before),
        "throttled calls are counted per partner"
    );
    for name in [
        "coalition_call_seconds_bucket",
        "coalition_write_batch_size",
        "coalition_commit_seconds",
    ] {
        assert!(
            after.iter().any(|(k, _)| k.starts_with(name)),
            "{name} missing"
        );
    }
}
