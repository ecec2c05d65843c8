//! `coalitiond partner earn|burn|reverse-earn|reverse-burn|balance|transaction|activity` (issue 15):
//! each subcommand against a real daemon over mTLS with a partner certificate, `--json` parsed
//! back, and a refusal rendered with its code, reason and message. On both backends.

use coalition_tests::*;
use coalitiond::cmd::partner::{PartnerCommand, one_call};
use coalitiond::cmd::{Cli, Command, run};
use serde_json::Value;

/// `coalitiond partner <args…>` against `t`, as bistro: the answer's JSON (from the `--json` text)
/// and table, and whether it was refused.
async fn partner(t: &TestDaemon, args: &[&str]) -> (Value, String, bool) {
    let cli = cli(t, args);
    let Command::Partner {
        command: PartnerCommand::Call(call),
    } = cli.command
    else {
        panic!("not a partner call: {args:?}");
    };
    let a = one_call(&call).await.expect("the daemon answers");
    let text = a.json.to_string();
    let back: Value = serde_json::from_str(&text).expect("--json prints JSON");
    (back, a.table, a.refused)
}

fn cli(t: &TestDaemon, args: &[&str]) -> Cli {
    let config = t.dir.path().join("coalition.toml");
    let mut argv = vec!["coalitiond", "partner", args[0]];
    argv.extend_from_slice(&[
        "--config",
        config.to_str().unwrap(),
        "--addr",
        &t.addr,
        "--partner",
        "bistro",
    ]);
    argv.extend_from_slice(&args[1..]);
    <Cli as clap::Parser>::parse_from(argv)
}

backends!(each_partner_subcommand_calls_the_daemon);

async fn each_partner_subcommand_calls_the_daemon(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (e1, table, refused) = partner(
        &t,
        &[
            "earn",
            "--transaction-id",
            "e1",
            "--member",
            "m1",
            "--amount",
            "42.50",
        ],
    )
    .await;
    assert!(!refused);
    let earned = e1["points"].as_i64().unwrap();
    assert!(earned > 0);
    assert_eq!(
        (e1["kind"].as_str(), e1["balance_after"].as_i64()),
        (Some("earn"), Some(earned))
    );
    assert!(
        table.contains("balance_after") && table.contains(&earned.to_string()),
        "{table}"
    );
    let (e2, _, _) = partner(
        &t,
        &[
            "earn",
            "--transaction-id",
            "e2",
            "--member",
            "m1",
            "--points",
            "100",
        ],
    )
    .await;
    assert_eq!(e2["balance_after"].as_i64(), Some(earned + 100));
    // A retry answers with the first receipt.
    let (again, _, _) = partner(
        &t,
        &[
            "earn",
            "--transaction-id",
            "e2",
            "--member",
            "m1",
            "--points",
            "100",
        ],
    )
    .await;
    assert_eq!(again, e2);
    let (b1, _, _) = partner(
        &t,
        &[
            "burn",
            "--transaction-id",
            "b1",
            "--member",
            "m1",
            "--points",
            "30",
        ],
    )
    .await;
    assert_eq!(
        (b1["kind"].as_str(), b1["balance_after"].as_i64()),
        (Some("burn"), Some(earned + 70))
    );
    let (re, _, _) = partner(
        &t,
        &[
            "reverse-earn",
            "--transaction-id",
            "re1",
            "--original",
            "e1",
            "--points",
            "5",
        ],
    )
    .await;
    assert_eq!(
        (
            re["kind"].as_str(),
            re["points"].as_i64(),
            re["original_transaction_id"].as_str()
        ),
        (Some("reverse_earn"), Some(5), Some("e1"))
    );
    let (rb, _, _) = partner(
        &t,
        &[
            "reverse-burn",
            "--transaction-id",
            "rb1",
            "--original",
            "b1",
        ],
    )
    .await;
    assert_eq!(
        (rb["points"].as_i64(), rb["balance_after"].as_i64()),
        (Some(30), Some(earned + 95)),
        "all that is left of the burn"
    );
    let (balance, table, _) = partner(&t, &["balance", "--member", "m1"]).await;
    assert_eq!(balance["points"].as_i64(), Some(earned + 95));
    assert_eq!(t.balance("m1").await.0, earned + 95);
    assert!(
        table.contains("member_id                m1")
            && table.contains(&format!("{}", earned + 95)),
        "{table}"
    );
    let (txn, table, _) = partner(&t, &["transaction", "--transaction-id", "e1"]).await;
    assert_eq!(
        (
            txn["receipt"]["transaction_id"].as_str(),
            txn["reversed_points"].as_i64(),
            txn["purchase"]["amount"].as_str()
        ),
        (Some("e1"), Some(5), Some("42.50"))
    );
    assert!(
        table.contains("purchase") && table.contains("42.50 EUR"),
        "{table}"
    );
    let (activity, table, _) = partner(&t, &["activity", "--member", "m1"]).await;
    let ids: Vec<&str> = activity["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["receipt"]["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["rb1", "re1", "b1", "e2", "e1"], "newest first");
    assert_eq!(table.lines().count(), 6, "a header and five rows: {table}");

    // A refusal: its code, reason and message, as JSON and as text; the command fails.
    let (refusal, table, refused) = partner(
        &t,
        &[
            "burn",
            "--transaction-id",
            "b2",
            "--member",
            "m1",
            "--points",
            "1000000",
        ],
    )
    .await;
    assert!(refused);
    assert_eq!(
        (refusal["code"].as_str(), refusal["reason"].as_str()),
        (Some("FAILED_PRECONDITION"), Some("INSUFFICIENT_POINTS"))
    );
    assert!(
        refusal["message"].as_str().unwrap().contains("1000000"),
        "{refusal}"
    );
    assert!(
        table.starts_with("refused: FAILED_PRECONDITION INSUFFICIENT_POINTS"),
        "{table}"
    );
    let failed = run(cli(
        &t,
        &[
            "burn",
            "--transaction-id",
            "b2",
            "--member",
            "m1",
            "--points",
            "1000000",
            "--json",
        ],
    ))
    .await;
    assert!(failed.is_err(), "a refused call exits non-zero");
    let (bad, _, _) = partner(
        &t,
        &[
            "earn",
            "--transaction-id",
            "e3",
            "--member",
            "m1",
            "--amount",
            "12.345",
        ],
    )
    .await;
    assert_eq!(
        (bad["code"].as_str(), bad["reason"].as_str()),
        (Some("INVALID_ARGUMENT"), Some("AMOUNT_TOO_PRECISE"))
    );
    // The same calls with --cert: the certificate file named directly.
    let certs = t.config.ca_cert.parent().unwrap();
    let cert = certs.join("partner-bistro.pem");
    run(cli(
        &t,
        &[
            "balance",
            "--member",
            "m1",
            "--cert",
            cert.to_str().unwrap(),
        ],
    ))
    .await
    .unwrap();
}
