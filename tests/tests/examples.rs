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
