//! `coalitiond partner ingest` against a real `coalitiond serve` killed with SIGKILL mid-file: the
//! file sent again after a restart answers every line, the lines applied before the kill with
//! their first receipt, and nothing is applied twice (on SQLite and PostgreSQL).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{drop_database, free_port, postgres_database, spawn_serve as spawn};

/// Lines of the day file: per member, earns of 10 and burns of 4 in turn, one malformed line and
/// one burn no member can cover.
const LINES: usize = 12_000;

fn day_file(path: &std::path::Path) {
    let mut s = String::from(
        "kind,transaction_id,member_id,points,purchase_amount,currency,category,original_transaction_id\n",
    );
    for i in 0..LINES {
        let m = format!("m{}", i % 40);
        match i {
            5000 => s.push_str("earn,bad-1,m1,ten,,,,\n"),
            7000 => s.push_str(&format!("burn,big-1,{m},999999,,,,\n")),
            _ if (i / 40) % 2 == 0 => s.push_str(&format!("earn,e{i},{m},10,,,,\n")),
            _ => s.push_str(&format!("burn,b{i},{m},4,,,,\n")),
        }
    }
    std::fs::write(path, s).unwrap();
}

fn ingest(dir: &std::path::Path, out: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_coalitiond"))
        .args(["partner", "ingest", "--config"])
        .arg(dir.join("coalition.toml"))
        .arg("--cert")
        .arg(dir.join("certs/dev/partner-skyways.pem"))
        .arg("--file")
        .arg(dir.join("day.csv"))
        .arg("--out")
        .arg(dir.join(out))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coalitiond partner ingest")
}

/// (line, transaction id, status, reason, balance after) of each row of a result file.
fn results(path: &std::path::Path) -> Vec<(u64, String, String, String, String)> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .filter_map(|x| x.ok())
        .map(|x| {
            (
                x[0].parse().unwrap(),
                x[1].to_string(),
                x[2].to_string(),
                x[3].to_string(),
                x[6].to_string(),
            )
        })
        .collect()
}

async fn killed_mid_file(database_url: Option<String>) {
    coalitiond::client::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = match &database_url {
        Some(url) => coalitiond::devsetup::write_dev_setup_on(dir.path(), &addr, url).unwrap(),
        None => coalitiond::devsetup::write_dev_setup(dir.path(), &addr).unwrap(),
    };
    let path = dir.path().join("coalition.toml");
    day_file(&dir.path().join("day.csv"));
    let mut daemon = spawn(&path, &addr).await;
    let mut first = ingest(dir.path(), "first.csv");
    // Let part of the file land, then kill the daemon outright.
    let started = Instant::now();
    loop {
        let answered = std::fs::metadata(dir.path().join("first.csv")).map_or(0, |m| m.len());
        if answered > 64 * 1024 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    let status = first.wait().unwrap();
    let before = results(&dir.path().join("first.csv"));
    assert!(
        !status.success() && before.len() < LINES,
        "the kill came mid-file ({} of {LINES} lines answered, exit {status:?})",
        before.len()
    );
    assert!(!before.is_empty());

    // Restart and send the whole file again.
    let mut daemon = spawn(&path, &addr).await;
    let status = ingest(dir.path(), "second.csv").wait().unwrap();
    assert!(status.success(), "the second run completes: {status:?}");
    let after = results(&dir.path().join("second.csv"));
    assert_eq!(after.len(), LINES, "one result per line");
    for (i, r) in after.iter().enumerate() {
        assert_eq!(
            r.0,
            i as u64 + 2,
            "results in file order (line 1 is the header)"
        );
        let want = match i {
            5000 => ("INVALID_ARGUMENT", "MALFORMED_LINE"),
            7000 => ("FAILED_PRECONDITION", "INSUFFICIENT_POINTS"),
            _ => ("OK", ""),
        };
        assert_eq!((r.2.as_str(), r.3.as_str()), want, "line {}", r.0);
    }
    // Lines answered before the kill answer again with their first receipt.
    for b in before.iter().filter(|b| b.2 == "OK") {
        let a = &after[(b.0 - 2) as usize];
        assert_eq!((&a.1, &a.4), (&b.1, &b.4), "line {}", b.0);
    }
    // Nothing twice: one transaction per OK line, and every member holds what its lines say.
    let (store, _) = coalitiond::store::open(&config.database_url, 1)
        .await
        .unwrap();
    let ok = after.iter().filter(|r| r.2 == "OK").count() as i64;
    assert_eq!(store.transaction_count().await.unwrap(), ok);
    let report = store
        .audit(
            coalitiond::clock::Clock::default().now(),
            &config.clearing_rules(),
        )
        .await
        .unwrap();
    assert!(report.ok(), "{report}");
    // The hash chain recomputes from the rows after the kill: the batch cut short left no link.
    let chain = store.verify_chain().await.unwrap();
    assert!(chain.ok() && chain.links > 0, "{:?}", chain.violations);
    assert_eq!(chain.links, report.chain_links);
    let earns = after.iter().filter(|r| r.1.starts_with('e')).count() as i64;
    let burns = after
        .iter()
        .filter(|r| r.1.starts_with('b') && r.2 == "OK")
        .count() as i64;
    assert_eq!(report.earned, 10 * earns);
    assert_eq!(report.burned, 4 * burns);
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_file_resumes_after_kill_9_on_sqlite() {
    killed_mid_file(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_file_resumes_after_kill_9_on_postgres() {
    let name = format!("coalition_ingest_kill_{}", std::process::id());
    let Some((url, mut admin)) = postgres_database(&name).await else {
        return;
    };
    killed_mid_file(Some(url)).await;
    drop_database(&mut admin, &name).await;
}
