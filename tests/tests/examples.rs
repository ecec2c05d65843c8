//! The integrators' examples (issue 15): the Python and Node tills in `examples/` play their day
//! against a real daemon over mTLS with a partner certificate the test makes, and print the
//! balances the daemon holds. They need their own dependencies (`.ci/run` installs them); where
//! those are missing the test skips loudly, and fails under `COALITION_REQUIRE_EXAMPLES=1` (CI).

use coalition_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Skips loudly, or fails in CI, when an example cannot run here.
fn unavailable(what: &str, why: &str) -> bool {
    if std::env::var("COALITION_REQUIRE_EXAMPLES").is_ok_and(|v| v == "1") {
        panic!("{what} required (COALITION_REQUIRE_EXAMPLES=1) but cannot run: {why}");
    }
    eprintln!("\n*** SKIPPED the {what} example: {why} (.ci/run installs it) ***\n");
    true
}

/// Writes the partner's certificate files and returns the till's arguments.
fn till_args(t: &TestDaemon, dir: &Path, member: &str, run: &str) -> Vec<String> {
    let pem = t.partner_pem("bistro");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("bistro.pem"),
        dir.join("bistro.key"),
    );
    std::fs::write(&ca, &pem.ca).unwrap();
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "--addr".into(),
        t.addr.clone(),
        "--ca".into(),
        p(&ca),
        "--cert".into(),
        p(&cert),
        "--key".into(),
        p(&key),
        "--member".into(),
        member.into(),
        "--run".into(),
        run.into(),
    ]
}

/// Checks a till's output against the daemon: each step's balance follows from the points it
/// printed, the final balance is the daemon's, the retry and the refusal went as they should.
async fn check_day(t: &TestDaemon, member: &str, out: &str) {
    let number_after = |prefix: &str, word: &str| -> i64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"));
        let at = line.find(word).unwrap_or_else(|| panic!("{line}")) + word.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit() && c != '-')
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let earned = number_after("sale:", "earned ");
    assert!(earned > 0, "{out}");
    assert_eq!(number_after("sale:", "balance "), earned, "{out}");
    assert_eq!(number_after("redeem: spent", "spent "), 20, "{out}");
    assert_eq!(
        number_after("redeem: spent", "balance "),
        earned - 20,
        "{out}"
    );
    assert!(
        out.contains("redeem: a retry answered with the first receipt"),
        "{out}"
    );
    assert_eq!(number_after("return:", "balance "), earned - 30, "{out}");
    assert!(out.contains("activity: 3 transactions"), "{out}");
    assert!(
        out.contains("refused as expected: INSUFFICIENT_POINTS (FAILED_PRECONDITION)"),
        "{out}"
    );
    let last = number_after("final balance:", "balance: ");
    assert_eq!(last, earned - 30, "{out}");
    assert_eq!(
        t.balance(member).await.0,
        last,
        "the daemon holds what the till printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_till_plays_its_day() {
    let python = std::env::var("COALITION_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            if unavailable("Python till", &String::from_utf8_lossy(&o.stderr)) {
                return;
            }
        }
        Err(e) => {
            if unavailable("Python till", &e.to_string()) {
                return;
            }
        }
    }
    let t = TestDaemon::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .arg(examples().join("python-till/till.py"))
        .args(till_args(&t, dir.path(), "m-python", "py"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_day(&t, "m-python", &stdout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_till_plays_its_day() {
    let node = examples().join("node-till");
    if !node.join("node_modules/@grpc/grpc-js").exists()
        && unavailable(
            "Node till",
            "examples/node-till/node_modules is missing (npm ci)",
        )
    {
        return;
    }
    let t = TestDaemon::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let out = match Command::new("node")
        .arg(node.join("till.js"))
        .args(till_args(&t, dir.path(), "m-node", "node"))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            if unavailable("Node till", &e.to_string()) {
                return;
            }
            unreachable!()
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_day(&t, "m-node", &stdout).await;
}

/// The certificate arguments of bistro's consumer.
fn cert_args(t: &TestDaemon, dir: &Path) -> Vec<String> {
    let mut args = till_args(t, dir, "-", "-");
    args.truncate(8);
    args
}

/// Runs a consumer twice: it reads part of the feed and stops, then resumes from its cursor and
/// reads the rest — every event once, in order.
async fn consumer_resumes(t: &TestDaemon, program: &str, script: &Path) {
    let mut food = t.partner("bistro").await;
    for i in 0..8 {
        food.earn(earn_bonus(&format!("e{i}"), "m1", 10))
            .await
            .receipt();
    }
    let dir = tempfile::tempdir().unwrap();
    let (cursor, out) = (dir.path().join("cursor"), dir.path().join("events.jsonl"));
    let run = |extra: &[&str]| {
        let o = Command::new(program)
            .arg(script)
            .args(cert_args(t, dir.path()))
            .args([
                "--cursor",
                cursor.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .expect("the consumer runs");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        text
    };
    let first = run(&["--max", "5"]);
    assert!(first.contains("resuming from sequence 1"), "{first}");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "5");
    for i in 8..10 {
        food.earn(earn_bonus(&format!("e{i}"), "m1", 10))
            .await
            .receipt();
    }
    let second = run(&["--idle", "2"]);
    assert!(second.contains("resuming from sequence 6"), "{second}");
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| {
            e["sequence"]
                .as_str()
                .map(|s| s.parse().unwrap())
                .or_else(|| e["sequence"].as_i64())
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(events[0]["eventId"], "evt_bistro_1");
    assert_eq!(events[0]["type"], "transaction.earned");
}

/// A receiver started with bistro's webhook secret gets its events, each verified by the
/// Standard Webhooks library of its language.
async fn receiver_verifies(program: &str, script: &Path) {
    const SECRET: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgdGVzdHMgIQ==";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let mut receiver = Command::new(program)
        .arg(script)
        .args(["--port", &port.to_string(), "--secret", SECRET, "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the receiver starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver does not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let t = TestDaemon::start_with(Backend::Sqlite, |toml| {
        toml.replacen(
            "id = \"bistro\"",
            &format!(
                "id = \"bistro\"\nwebhook_url = \"http://127.0.0.1:{port}/coalition\"\nwebhook_secret = \"{SECRET}\""
            ),
            1,
        )
    })
    .await;
    let mut food = t.partner("bistro").await;
    for i in 0..3 {
        food.earn(earn_bonus(&format!("w{i}"), "m1", 10))
            .await
            .receipt();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 3 delivered",
            lines.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = receiver.kill();
    let _ = receiver.wait();
    for (i, l) in lines.iter().enumerate() {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(e["eventId"], format!("evt_bistro_{}", i + 1), "{l}");
        assert_eq!(
            e["transaction"]["receipt"]["transactionId"],
            format!("w{i}")
        );
    }
}

fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("COALITION_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python)
        .args(["-c", &format!("import grpc, grpc_tools, {module}")])
        .output()
    {
        Ok(o) if o.status.success() => Some(python),
        Ok(o) => {
            unavailable("Python feed", &String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            unavailable("Python feed", &e.to_string());
            None
        }
    }
}

fn node_with(module: &str) -> bool {
    let ok = examples()
        .join(format!("node-till/node_modules/{module}"))
        .exists();
    if !ok {
        unavailable(
            "Node feed",
            &format!("node_modules/{module} is missing (npm ci)"),
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_consumer_resumes_from_its_cursor() {
    let Some(python) = python_with("grpc_status") else {
        return;
    };
    let t = TestDaemon::start(Backend::Sqlite).await;
    consumer_resumes(&t, &python, &examples().join("python-till/consumer.py")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_webhook_receiver_verifies_every_delivery() {
    let Some(python) = python_with("standardwebhooks") else {
        return;
    };
    receiver_verifies(&python, &examples().join("python-till/webhook_receiver.py")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_consumer_resumes_from_its_cursor() {
    if !node_with("@grpc/grpc-js") {
        return;
    }
    let t = TestDaemon::start(Backend::Sqlite).await;
    consumer_resumes(&t, "node", &examples().join("node-till/consumer.js")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_webhook_receiver_verifies_every_delivery() {
    if !node_with("standardwebhooks") {
        return;
    }
    receiver_verifies("node", &examples().join("node-till/webhook_receiver.js")).await;
}
