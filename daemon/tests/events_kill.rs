//! A partner's event feed across SIGKILL (issue 33): a consumer (`coalitiond partner events
//! --follow --json`) killed mid-stream resumes from the last event it wrote, plus one; the daemon
//! killed under load and started again serves the same events under the same ids, without a gap;
//! every committed earn has exactly one event, and no event is of anything not committed.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{drop_database, free_port, postgres_database, spawn_serve as spawn};

/// Starts `coalitiond partner events --follow --json --from <from>` writing to `out`.
fn consumer(dir: &std::path::Path, from: i64, out: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_coalitiond"))
        .args(["partner", "events", "--follow", "--json", "--config"])
        .arg(dir.join("coalition.toml"))
        .arg("--partner")
        .arg("skyways")
        .arg("--from")
        .arg(from.to_string())
        .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the consumer")
}

/// (sequence, event id, transaction id) of each complete line a consumer wrote.
fn written(path: &std::path::Path) -> Vec<(i64, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let seq = v["sequence"]
                .as_str()
                .map(|s| s.parse().unwrap())
                .or_else(|| v["sequence"].as_i64())
                .unwrap();
            let txn = v["transaction"]["receipt"]["transactionId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (seq, v["eventId"].as_str().unwrap().to_string(), txn)
        })
        .collect()
}

fn kill9(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

async fn earns(
    addr: &str,
    pem: &coalitiond::client::ClientPem,
    from: usize,
    to: usize,
) -> Vec<String> {
    use coalition_proto::v1 as pb;
    let mut ok = Vec::new();
    let Ok(channel) = coalitiond::client::connect(addr, pem).await else {
        return ok;
    };
    let mut c = pb::partner_service_client::PartnerServiceClient::new(channel);
    for i in from..to {
        let r = c
            .earn(pb::EarnRequest {
                transaction_id: format!("e{i}"),
                member_id: format!("m{}", i % 9),
                grant: Some(pb::earn_request::Grant::BonusPoints(10)),
                ..Default::default()
            })
            .await;
        if r.is_ok() {
            ok.push(format!("e{i}"));
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_exactly_after_kill_9_on_sqlite() {
    resumes_after_kill_9("sqlite://coalition.db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_exactly_after_kill_9_on_postgres() {
    let name = format!("coalition_events_kill_{}", std::process::id());
    let Some((url, mut admin)) = postgres_database(&name).await else {
        return;
    };
    resumes_after_kill_9(&url).await;
    drop_database(&mut admin, &name).await;
}

async fn resumes_after_kill_9(database_url: &str) {
    coalitiond::client::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    coalitiond::devsetup::write_dev_setup_on(dir.path(), &addr, database_url).unwrap();
    let path = dir.path().join("coalition.toml");
    let pem =
        coalitiond::client::ClientPem::from_dir(&dir.path().join("certs/dev"), "partner-skyways")
            .unwrap();
    let mut daemon = spawn(&path, &addr).await;

    // A consumer follows while earns commit; it is killed part-way.
    let first = dir.path().join("first.jsonl");
    let mut c1 = consumer(dir.path(), 0, &first);
    let mut committed = earns(&addr, &pem, 0, 150).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while written(&first).len() < 100 {
        assert!(Instant::now() < deadline, "the consumer fell behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill9(&mut c1);
    let seen = written(&first);
    let last = seen.last().unwrap().0;

    // More earns; the daemon killed while they run, then started again.
    let load = tokio::spawn({
        let (addr, pem) = (addr.clone(), pem.clone());
        async move { earns(&addr, &pem, 150, 400).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill9(&mut daemon);
    committed.extend(load.await.unwrap());
    let mut daemon = spawn(&path, &addr).await;
    committed.extend(earns(&addr, &pem, 400, 450).await);

    let (store, _) = coalitiond::store::open(
        &coalitiond::config::Config::load(&path)
            .unwrap()
            .database_url,
        1,
    )
    .await
    .unwrap();
    let count = store.transaction_count().await.unwrap() as usize;

    // The consumer resumes after the last event it wrote.
    let second = dir.path().join("second.jsonl");
    let mut c2 = consumer(dir.path(), last + 1, &second);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() + written(&second).len() < count {
        assert!(
            Instant::now() < deadline,
            "the resumed consumer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill9(&mut c2);
    let got = written(&second);
    let all: Vec<(i64, String, String)> = seen.into_iter().chain(got).collect();
    // No gap, no repeat, ids as the sequence says.
    for (i, (seq, id, _)) in all.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "{all:?}");
        assert_eq!(id, &format!("evt_skyways_{seq}"));
    }
    // Every answered earn has its event; every event is of a committed earn.
    let told: BTreeMap<&str, i64> = all.iter().map(|e| (e.2.as_str(), e.0)).collect();
    for c in &committed {
        assert!(told.contains_key(c.as_str()), "{c} committed but not told");
    }
    assert_eq!(count, all.len(), "one event per transaction");
    // The same events, under the same ids, as a fresh read of the whole feed.
    let fresh = dir.path().join("fresh.jsonl");
    let mut c3 = consumer(dir.path(), 0, &fresh);
    let deadline = Instant::now() + Duration::from_secs(20);
    while written(&fresh).len() < all.len() {
        assert!(Instant::now() < deadline, "the fresh read did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill9(&mut c3);
    assert_eq!(written(&fresh), all);
    kill9(&mut daemon);
}
