//! `IngestBatch`: a day file line by line, with the statuses, order and idempotency of the single
//! calls; a refused or malformed line never stops the file; sending the file again applies
//! nothing twice.

use coalition_tests::v1 as pb;
use coalition_tests::*;
use pb::ingest_line::Operation;

backends!(a_day_file_is_answered_line_by_line_and_can_be_sent_again);

fn line(n: u64, op: Operation) -> pb::IngestLine {
    pb::IngestLine {
        line: n,
        operation: Some(op),
    }
}

/// The day file of the test: what each line should get, by status and reason.
fn day() -> (Vec<pb::IngestLine>, Vec<(&'static str, &'static str)>) {
    let lines = vec![
        line(1, Operation::Earn(earn_bonus("e1", "m1", 300))),
        line(2, Operation::Burn(burn("b1", "m1", 100))),
        // More than is left: refused, the file goes on.
        line(3, Operation::Burn(burn("b2", "m1", 1000))),
        // Malformed: no operation, then a negative burn.
        pb::IngestLine {
            line: 4,
            operation: None,
        },
        line(5, Operation::Burn(burn("b3", "m1", -5))),
        // A reversal of an earn that does not exist.
        line(6, Operation::ReverseEarn(reverse_earn("r0", "nope", 0))),
        // An id used again with other content.
        line(7, Operation::Earn(earn_bonus("e1", "m1", 301))),
        // A reversal of the earn above, in part, and of the burn, in full.
        line(8, Operation::ReverseEarn(reverse_earn("r1", "e1", 50))),
        line(9, Operation::ReverseBurn(reverse_burn("r2", "b1", 0))),
        line(10, Operation::Earn(earn_purchase("e2", "m2", "12.50"))),
    ];
    let expected = vec![
        ("OK", ""),
        ("OK", ""),
        ("FAILED_PRECONDITION", "INSUFFICIENT_POINTS"),
        ("INVALID_ARGUMENT", "MISSING_OPERATION"),
        ("INVALID_ARGUMENT", "POINTS_NOT_POSITIVE"),
        ("NOT_FOUND", "UNKNOWN_TRANSACTION"),
        ("ALREADY_EXISTS", "REQUEST_ID_REUSED"),
        ("OK", ""),
        ("OK", ""),
        ("OK", ""),
    ];
    (lines, expected)
}

async fn send(api: &mut PartnerClient, lines: Vec<pb::IngestLine>) -> Vec<pb::IngestResult> {
    let mut stream = api
        .ingest_batch(tokio_stream::iter(lines))
        .await
        .expect("stream opens")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.expect("stream runs to its end") {
        out.push(r);
    }
    out
}

async fn a_day_file_is_answered_line_by_line_and_can_be_sent_again(b: Backend) {
    let t = TestDaemon::start(b).await;
    let mut bistro = t.partner("bistro").await;
    let (lines, expected) = day();
    let first = send(&mut bistro, lines.clone()).await;
    let got: Vec<(u64, &str, &str)> = first
        .iter()
        .map(|r| (r.line, r.status.as_str(), r.reason.as_str()))
        .collect();
    let want: Vec<(u64, &str, &str)> = expected
        .iter()
        .enumerate()
        .map(|(i, (s, r))| (i as u64 + 1, *s, *r))
        .collect();
    assert_eq!(got, want, "one answer per line, in order");
    // Lines see the lines before them: 300 − 100 (b1) − 50 (r1) + 100 (r2) = 250.
    let balances: Vec<i64> = first
        .iter()
        .filter_map(|r| r.receipt.as_ref().map(|x| x.balance_after))
        .collect();
    assert_eq!(balances.len(), 5);
    assert_eq!(balances[..4], [300, 200, 150, 250]);
    assert!(
        first[2].message.contains("cannot burn 1000"),
        "{}",
        first[2].message
    );
    assert_eq!(first[1].transaction_id, "b1");
    // The same single calls as a single call would answer: the earn's receipt is the stored one.
    let single = bistro.earn(earn_bonus("e1", "m1", 300)).await.receipt();
    assert_eq!(Some(&single), first[0].receipt.as_ref());
    t.assert_invariants().await;
    let transactions = t.transactions().await;
    assert_eq!(transactions, 5);

    // Sent again (after a failure, say): every line answers as before, nothing is applied twice.
    // (A refusal is not stored: its message tells the balance of now, as a single call's would.)
    let again = send(&mut bistro, lines).await;
    let answers = |rs: &[pb::IngestResult]| -> Vec<(u64, String, String, Option<pb::Receipt>)> {
        rs.iter()
            .map(|r| {
                (
                    r.line,
                    r.status.clone(),
                    r.reason.clone(),
                    r.receipt.clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        answers(&again),
        answers(&first),
        "a file sent again answers as the first time, applied lines with their first receipt"
    );
    assert_eq!(t.transactions().await, transactions);
    assert_eq!(t.balance("m1").await.0, 250);
    t.assert_invariants().await;
}

backends!(a_file_of_thousands_keeps_its_order_across_batches);

/// Many more lines than one batch holds: each burn needs the earn just before it, so any
/// reordering would refuse one.
async fn a_file_of_thousands_keeps_its_order_across_batches(b: Backend) {
    let t = TestDaemon::start(b).await;
    let mut sky = t.partner("skyways").await;
    let mut lines = Vec::new();
    for i in 0..3000u64 {
        let member = format!("m{}", i % 7);
        lines.push(line(
            2 * i + 1,
            Operation::Earn(earn_bonus(&format!("e{i}"), &member, 10)),
        ));
        lines.push(line(
            2 * i + 2,
            Operation::Burn(burn(&format!("b{i}"), &member, 10)),
        ));
    }
    let results = send(&mut sky, lines).await;
    assert_eq!(results.len(), 6000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.line, i as u64 + 1);
        assert_eq!(
            r.status, "OK",
            "line {}: {} {}",
            r.line, r.reason, r.message
        );
        let after = r.receipt.as_ref().map(|x| x.balance_after);
        assert_eq!(
            after,
            Some(if i % 2 == 0 { 10 } else { 0 }),
            "line {}",
            r.line
        );
    }
    assert_eq!(t.transactions().await, 6000);
    t.assert_invariants().await;
}

/// SQLite only: a new ledger file has 1 KiB pages, and under a sustained load the WAL is reused
/// in place: it never grows past its limit (64 MiB; it once grew without bound while the
/// checkpoint could not catch up with the writer), and its size is a gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_load_keeps_the_sqlite_wal_bounded() {
    let t = TestDaemon::start(Backend::Sqlite).await;
    assert_eq!(
        t.query_i64("SELECT page_size FROM pragma_page_size").await,
        1024
    );
    let wal = std::path::PathBuf::from(format!(
        "{}-wal",
        t.config
            .database_url
            .strip_prefix("sqlite://")
            .expect("a SQLite URL")
    ));
    let mut sky = t.partner("skyways").await;
    let mut largest = 0;
    // Each file: an earn for each of 5,000 members, then a burn of part of it: random leaves
    // of the member, lot, activity and idempotency indexes in every batch.
    for round in 0..4u64 {
        let mut lines = Vec::new();
        for i in 0..5000u64 {
            let member = format!("member-{}", (i * 7919 + round) % 5000);
            lines.push(line(
                2 * i + 1,
                Operation::Earn(earn_bonus(&format!("e{round}-{i}"), &member, 10)),
            ));
            lines.push(line(
                2 * i + 2,
                Operation::Burn(burn(&format!("b{round}-{i}"), &member, 3)),
            ));
        }
        let results = send(&mut sky, lines).await;
        assert!(
            results.iter().all(|r| r.status == "OK"),
            "every line applied"
        );
        largest = largest.max(std::fs::metadata(&wal).expect("the WAL exists").len());
    }
    assert!(
        largest <= 64 << 20,
        "the WAL grew to {largest} bytes, past its 64 MiB limit"
    );
    // The gauge is set by the checkpointer four times a second.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let metrics = t.metrics_text().await;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("coalition_sqlite_wal_bytes "))
        .unwrap_or_else(|| panic!("no WAL gauge in:\n{metrics}"));
    let bytes: f64 = gauge.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(bytes > 0.0 && bytes <= (64 << 20) as f64, "{gauge}");
    assert_eq!(t.transactions().await, 40_000);
    t.assert_invariants().await;
}
