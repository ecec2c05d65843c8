//! Webhooks (issue 33) against a real HTTP receiver started by the test, which verifies every
//! delivery with Python's `standardwebhooks` (the partners' own library): every event delivered
//! signed and in order, again after the receiver was down for a minute; a changed secret signs
//! the next delivery without a restart; a webhook failing too long pauses until an operator
//! resumes it; of three daemons on one PostgreSQL database only one delivers each event. Without
//! Python and the package the tests skip loudly, and fail under `COALITION_REQUIRE_EXAMPLES=1` (CI).

use coalition_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const S1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";
const S2: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgdGVzdHMgIQ==";

/// The Python with `standardwebhooks`, or a loud skip (a failure in CI).
fn python() -> Option<String> {
    let python = std::env::var("COALITION_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .output();
    let why = match probe {
        Ok(o) if o.status.success() => return Some(python),
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    if std::env::var("COALITION_REQUIRE_EXAMPLES").is_ok_and(|v| v == "1") {
        panic!("Python's standardwebhooks required (COALITION_REQUIRE_EXAMPLES=1): {why}");
    }
    eprintln!("\n*** SKIPPED a webhooks test: no Python with standardwebhooks ({why}) ***\n");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One delivery as the receiver recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Delivery {
    id: String,
    sequence: i64,
    #[allow(dead_code)]
    r#type: String,
    verified_with: Option<usize>,
}

/// The receiver process: started, stopped and started again on one port.
struct Receiver {
    python: String,
    port: u16,
    secrets: PathBuf,
    record: PathBuf,
    child: Option<Child>,
}

impl Receiver {
    fn new(python: String, dir: &Path, secrets: &[&str]) -> Receiver {
        let r = Receiver {
            python,
            port: free_port(),
            secrets: dir.join("secrets.txt"),
            record: dir.join("deliveries.jsonl"),
            child: None,
        };
        r.set_secrets(secrets);
        std::fs::write(&r.record, "").unwrap();
        r
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/coalition", self.port)
    }

    fn set_secrets(&self, secrets: &[&str]) {
        std::fs::write(&self.secrets, secrets.join("\n")).unwrap();
    }

    fn start(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("webhooks/receiver.py");
        self.child = Some(
            Command::new(&self.python)
                .arg(script)
                .arg(self.port.to_string())
                .arg(&self.secrets)
                .arg(&self.record)
                .spawn()
                .expect("receiver starts"),
        );
        // Listening before the first delivery is wanted.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `n` deliveries are recorded (or fails after `within`).
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} deliveries after {within:?}: {d:?}",
                d.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config with skyways' webhook at the receiver and short waits between attempts.
fn with_webhook(url: String, pause_after: u64) -> impl FnOnce(String) -> String {
    move |toml: String| {
        toml.replace("scheduler = true", "scheduler = false")
            .replacen(
                "id = \"skyways\"",
                &format!("id = \"skyways\"\nwebhook_url = \"{url}\"\nwebhook_secret = \"{S1}\""),
                1,
            )
            + &format!(
                "\n[events]\nwebhook_max_backoff_seconds = 2\nwebhook_pause_after_seconds = {pause_after}\n"
            )
    }
}

/// Every delivery once, in order, sequences `1..=n`, each verified.
fn in_order_once(d: &[Delivery], n: i64) {
    assert_eq!(
        d.iter().map(|x| x.sequence).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "{d:?}"
    );
    for x in d {
        assert_eq!(x.id, format!("evt_skyways_{}", x.sequence));
        assert!(x.verified_with.is_some(), "not verified: {x:?}");
    }
}

backends!(webhooks_deliver_signed_in_order_across_an_outage_and_a_new_secret);

async fn webhooks_deliver_signed_in_order_across_an_outage_and_a_new_secret(b: Backend) {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::new(python, dir.path(), &[S1]);
    receiver.start();
    let t = TestDaemon::start_with(b, with_webhook(receiver.url(), 3600)).await;
    let mut air = t.partner("skyways").await;
    for i in 1..=5 {
        air.earn(earn_bonus(&format!("e{i}"), "m1", 10))
            .await
            .receipt();
    }
    let d = receiver.wait_for(5, Duration::from_secs(20)).await;
    in_order_once(&d, 5);
    assert!(d.iter().all(|x| x.verified_with == Some(0)));

    // The receiver down for a minute: what happens meanwhile waits, and comes in order after.
    receiver.stop();
    for i in 6..=10 {
        air.earn(earn_bonus(&format!("e{i}"), "m1", 10))
            .await
            .receipt();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let status = t
        .operator()
        .await
        .list_webhooks(v1::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(status[0].delivered_sequence, 5, "{status:?}");
    assert!(
        status[0].failures > 0 && status[0].paused_at.is_empty(),
        "{status:?}"
    );
    receiver.start();
    let d = receiver.wait_for(10, Duration::from_secs(30)).await;
    in_order_once(&d, 10);

    // A new secret from the operator signs the next delivery, without a restart.
    receiver.set_secrets(&[S1, S2]);
    t.operator()
        .await
        .set_webhook(v1::SetWebhookRequest {
            partner: "skyways".into(),
            url: receiver.url(),
            secret: S2.into(),
        })
        .await
        .unwrap();
    for i in 11..=13 {
        air.earn(earn_bonus(&format!("e{i}"), "m1", 10))
            .await
            .receipt();
    }
    let d = receiver.wait_for(13, Duration::from_secs(20)).await;
    in_order_once(&d, 13);
    assert!(
        d[10..].iter().all(|x| x.verified_with == Some(1)),
        "signed with the new secret: {d:?}"
    );
    let status = t
        .operator()
        .await
        .list_webhooks(v1::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(
        (
            status[0].delivered_sequence,
            status[0].head_sequence,
            status[0].failures
        ),
        (13, 13, 0),
        "{status:?}"
    );
    assert_eq!(status[0].set_by, "operator/oncall");
}

backends!(a_webhook_failing_too_long_pauses_until_resumed);

async fn a_webhook_failing_too_long_pauses_until_resumed(b: Backend) {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::new(python, dir.path(), &[S1]);
    let t = TestDaemon::start_with(b, with_webhook(receiver.url(), 10)).await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("e1", "m1", 10)).await.receipt();
    let mut ops = t.operator().await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let paused = loop {
        let w = ops
            .list_webhooks(v1::ListWebhooksRequest {})
            .await
            .unwrap()
            .into_inner()
            .webhooks
            .remove(0);
        if !w.paused_at.is_empty() {
            break w;
        }
        assert!(Instant::now() < deadline, "never paused: {w:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(paused.last_error.contains("127.0.0.1"), "{paused:?}");
    // Every daemon's gauges follow the database within a tick (one second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = t.metrics_text().await;
        if metrics.contains("coalition_webhook_paused{partner=\"skyways\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Paused: nothing is attempted even once the receiver is back, until an operator resumes.
    receiver.start();
    air.earn(earn_bonus("e2", "m1", 10)).await.receipt();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(receiver.deliveries().is_empty());
    let resumed = ops
        .resume_webhook(v1::PartnerRequest {
            partner: "skyways".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.paused_at.is_empty());
    let d = receiver.wait_for(2, Duration::from_secs(20)).await;
    in_order_once(&d, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_three_daemons_only_one_delivers_each_event() {
    if !postgres_available("webhooks::of_three_daemons_only_one_delivers_each_event").await {
        return;
    }
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::new(python, dir.path(), &[S1]);
    receiver.start();
    let t = TestDaemon::start_with(Backend::Postgres, with_webhook(receiver.url(), 3600)).await;
    let (second, third) = (t.start_another().await, t.start_another().await);
    let pem = t.partner_pem("skyways");
    let mut calls = Vec::new();
    for (i, addr) in [
        t.addr.clone(),
        second.addr.to_string(),
        third.addr.to_string(),
    ]
    .into_iter()
    .cycle()
    .take(60)
    .enumerate()
    {
        let pem = pem.clone();
        calls.push(tokio::spawn(async move {
            let mut c = v1::partner_service_client::PartnerServiceClient::new(
                coalitiond::client::connect(&addr, &pem).await.unwrap(),
            );
            c.earn(earn_bonus(&format!("e{i}"), &format!("m{}", i % 5), 10))
                .await
                .unwrap();
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let d = receiver.wait_for(60, Duration::from_secs(40)).await;
    // A moment more: a second deliverer would show as a repeat.
    tokio::time::sleep(Duration::from_secs(3)).await;
    in_order_once(&receiver.deliveries(), 60);
    assert_eq!(d.len(), 60);
    second.shutdown().await.unwrap();
    third.shutdown().await.unwrap();
}
