//! Reconciliation against partners' own records (issue 14): a partner file with every kind of
//! break gives the expected report; breaks are resolved with notes; finalizing is refused while
//! breaks are open, and finance's acceptance of open breaks is kept with the settlement and its
//! exports. Through the finance CLI and the partner API, on both backends, over mTLS.

use coalition_tests::*;
use coalitiond::cmd::{Cli, run};
use std::collections::BTreeMap;
use tonic::Code;

fn no_scheduler(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
}

/// Runs `coalitiond clearing <args…>` against `t` with the finance certificate.
async fn clearing_cli(t: &TestDaemon, args: &[&str]) -> anyhow::Result<()> {
    let path = t.dir.path().join("coalition.toml");
    let mut argv = vec!["coalitiond", "clearing", args[0]];
    argv.extend_from_slice(&["--config", path.to_str().unwrap(), "--addr", &t.addr]);
    argv.extend_from_slice(&args[1..]);
    run(<Cli as clap::Parser>::parse_from(argv)).await
}

/// The breaks of a report by (kind, transaction id): fields, line.
fn by_kind(r: &v1::Reconciliation) -> BTreeMap<(String, String), (Vec<String>, u64)> {
    r.breaks
        .iter()
        .map(|b| {
            (
                (b.kind.clone(), b.transaction_id.clone()),
                (b.fields.clone(), b.line),
            )
        })
        .collect()
}

fn key(kind: &str, id: &str) -> (String, String) {
    (kind.into(), id.into())
}

backends!(a_partner_file_is_reconciled_worked_and_accepted);

async fn a_partner_file_is_reconciled_worked_and_accepted(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("a1", "m1", 500)).await.receipt();
    let a2 = air.earn(earn_purchase("a2", "m2", "40.00")).await.receipt();
    air.earn(earn_bonus("a3", "m3", 300)).await.receipt();
    air.earn(earn_bonus("a4", "m4", 50)).await.receipt();
    air.burn(burn("b1", "m1", 100)).await.receipt();
    food.burn(burn("f1", "m1", 200)).await.receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();

    // A cycle still open cannot be reconciled: its records are still arriving.
    let open = food
        .submit_partner_records(tokio_stream::iter(vec![v1::PartnerRecords {
            cycle: day.to_string(),
            records: vec![],
        }]))
        .await
        .unwrap_err();
    assert_eq!(
        (open.code(), reason(&open).as_str()),
        (Code::FailedPrecondition, "CYCLE_OPEN")
    );
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    t.clear(day).await.unwrap();

    // skyways' file: every kind of break.
    let file = t.dir.path().join("skyways.csv");
    std::fs::write(
        &file,
        format!(
            "transaction_id,kind,member_id,points,purchase_amount\n\
             a1,earn,m1,500,\n\
             a2,earn,m2,{},41.00\n\
             a3,burn,m9,300,\n\
             b1,burn,m1,120,\n\
             zz,earn,m5,10,\n\
             a1,earn,m1,500,\n\
             bad,earn,m1,abc,\n",
            a2.points
        ),
    )
    .unwrap();
    let cycle = day.to_string();
    let file_arg = file.to_str().unwrap();
    clearing_cli(
        &t,
        &[
            "reconcile",
            "--cycle",
            &cycle,
            "--partner",
            "skyways",
            "--file",
            file_arg,
        ],
    )
    .await
    .unwrap();
    let mut fin = t.finance().await;
    let list = |partner: &str| v1::ReconciliationsRequest {
        cycle: cycle.clone(),
        partner: partner.into(),
    };
    let r = fin
        .list_reconciliations(list("skyways"))
        .await
        .unwrap()
        .into_inner()
        .reconciliations
        .remove(0);
    assert_eq!(
        (
            r.source.as_str(),
            r.records,
            r.ledger_records,
            r.matched,
            r.open_breaks
        ),
        ("file", 7, 5, 1, 7)
    );
    let expected: BTreeMap<_, _> = [
        (key("missing_in_file", "a4"), (vec![], 0)),
        (key("missing_in_ledger", "zz"), (vec![], 6)),
        (key("different", "a2"), (vec!["purchase_amount".into()], 3)),
        (
            key("different", "a3"),
            (vec!["kind".into(), "member".into()], 4),
        ),
        (key("different", "b1"), (vec!["points".into()], 5)),
        (key("duplicate_in_file", "a1"), (vec![], 7)),
        (key("malformed_line", ""), (vec![], 8)),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_kind(&r), expected);
    let malformed = r
        .breaks
        .iter()
        .find(|b| b.kind == "malformed_line")
        .unwrap();
    assert!(
        malformed
            .detail
            .contains("points \"abc\" is not a whole number"),
        "{malformed:?}"
    );
    let b1 = r.breaks.iter().find(|b| b.transaction_id == "b1").unwrap();
    assert!(
        b1.detail.contains("100 pts") && b1.detail.contains("120 pts"),
        "both sides shown: {b1:?}"
    );

    // bistro submits its own records through the partner API: one matches, one cannot be read.
    let mine = food
        .submit_partner_records(tokio_stream::iter(vec![
            v1::PartnerRecords {
                cycle: cycle.clone(),
                records: vec![v1::PartnerRecord {
                    transaction_id: "f1".into(),
                    kind: "burn".into(),
                    member_id: "m1".into(),
                    points: 200,
                    purchase_amount: String::new(),
                }],
            },
            v1::PartnerRecords {
                cycle: cycle.clone(),
                records: vec![v1::PartnerRecord {
                    transaction_id: "f2".into(),
                    kind: "refund".into(),
                    member_id: "m1".into(),
                    points: 5,
                    purchase_amount: String::new(),
                }],
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            mine.partner.as_str(),
            mine.source.as_str(),
            mine.matched,
            mine.open_breaks
        ),
        ("bistro", "partner", 1, 1)
    );
    assert!(
        mine.breaks[0]
            .detail
            .starts_with("record 2: kind \"refund\""),
        "{:?}",
        mine.breaks
    );

    // Finalizing is refused while breaks are open, naming them by partner.
    let e = fin
        .finalize_settlement(v1::FinalizeSettlementRequest {
            cycle: cycle.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "OPEN_BREAKS")
    );
    assert!(
        e.message().contains("bistro: 1") && e.message().contains("skyways: 7"),
        "{e:?}"
    );
    assert!(
        clearing_cli(&t, &["finalize", "--cycle", &cycle])
            .await
            .is_err(),
        "the CLI is refused too"
    );

    // Breaks are resolved with a note; a note is required; a resolution stands.
    let id_of = |kind: &str, txn: &str| {
        r.breaks
            .iter()
            .find(|b| b.kind == kind && b.transaction_id == txn)
            .unwrap()
            .id
            .to_string()
    };
    let e = fin
        .resolve_break(v1::ResolveBreakRequest {
            cycle: cycle.clone(),
            partner: "skyways".into(),
            break_id: 1,
            note: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOTE_REQUIRED");
    let e = fin
        .resolve_break(v1::ResolveBreakRequest {
            cycle: cycle.clone(),
            partner: "skyways".into(),
            break_id: 99,
            note: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "UNKNOWN_BREAK")
    );
    for (kind, txn, note) in [
        ("missing_in_file", "a4", "partner's error: a till offline"),
        ("missing_in_ledger", "zz", "re-sent by the partner"),
        ("duplicate_in_file", "a1", "partner's export repeats a line"),
        ("malformed_line", "", "partner's error"),
        ("different", "a2", "partner rounds amounts"),
    ] {
        clearing_cli(
            &t,
            &[
                "resolve",
                "--cycle",
                &cycle,
                "--partner",
                "skyways",
                "--break",
                &id_of(kind, txn),
                "--note",
                note,
            ],
        )
        .await
        .unwrap();
    }
    let resolved = fin
        .resolve_break(v1::ResolveBreakRequest {
            cycle: cycle.clone(),
            partner: "skyways".into(),
            break_id: id_of("missing_in_ledger", "zz").parse().unwrap(),
            note: "another note".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resolved.note.as_str(), resolved.resolved_by.as_str()),
        ("re-sent by the partner", "finance/finance"),
        "the first resolution stands"
    );

    // The file sent again: the same breaks, their resolutions kept.
    clearing_cli(
        &t,
        &[
            "reconcile",
            "--cycle",
            &cycle,
            "--partner",
            "skyways",
            "--file",
            file_arg,
        ],
    )
    .await
    .unwrap();
    let again = fin
        .list_reconciliations(list("skyways"))
        .await
        .unwrap()
        .into_inner()
        .reconciliations
        .remove(0);
    assert_eq!(by_kind(&again), expected);
    assert_eq!(again.open_breaks, 2, "{:?}", again.breaks);

    // The breaks export as CSV, open and resolved.
    let out = t.dir.path().join("breaks.csv");
    clearing_cli(
        &t,
        &["breaks", "--cycle", &cycle, "--out", out.to_str().unwrap()],
    )
    .await
    .unwrap();
    let csv = std::fs::read_to_string(&out).unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let states: Vec<(String, String, String)> = rows
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[1].to_string(), r[3].to_string(), r[8].to_string())
        })
        .collect();
    assert_eq!(states.len(), 8, "{csv}");
    assert_eq!(
        states.iter().filter(|s| s.2 == "open").count(),
        3,
        "two of skyways', one of bistro's: {csv}"
    );
    assert!(csv.contains("re-sent by the partner"), "{csv}");

    // Accepting open breaks needs a reason; then the settlement is final, and the accepted breaks
    // are kept with it and written into its exports.
    let e = fin
        .finalize_settlement(v1::FinalizeSettlementRequest {
            cycle: cycle.clone(),
            accept_breaks: true,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REASON_REQUIRED");
    clearing_cli(
        &t,
        &[
            "finalize",
            "--cycle",
            &cycle,
            "--accept-breaks",
            "--reason",
            "partners confirmed by phone; amounts under 1 EUR",
        ],
    )
    .await
    .unwrap();
    let s = fin
        .get_settlement(v1::CycleRequest {
            cycle: cycle.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, v1::SettlementStatus::Final as i32);
    let accepted = s.accepted.expect("the acceptance is kept");
    assert_eq!(
        accepted.reason,
        "partners confirmed by phone; amounts under 1 EUR"
    );
    assert_eq!(accepted.accepted_by, "finance/finance");
    let mut open: Vec<(String, String)> = accepted
        .breaks
        .iter()
        .map(|b| (b.partner.clone(), b.transaction_id.clone()))
        .collect();
    open.sort();
    assert_eq!(
        open,
        vec![
            ("bistro".into(), "".into()),
            ("skyways".into(), "a3".into()),
            ("skyways".into(), "b1".into())
        ]
    );
    let export = |format: v1::ExportFormat| v1::ExportRequest {
        cycle: cycle.clone(),
        format: format as i32,
    };
    let csv = fin
        .export_settlement(export(v1::ExportFormat::Csv))
        .await
        .unwrap()
        .into_inner();
    let csv = String::from_utf8(csv.content).unwrap();
    let accepted_rows: Vec<&str> = csv
        .lines()
        .filter(|l| l.contains("accepted_break"))
        .collect();
    assert_eq!(accepted_rows.len(), 3, "{csv}");
    assert!(csv.contains("amounts under 1 EUR"), "{csv}");
    let json = fin
        .export_settlement(export(v1::ExportFormat::Json))
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_slice(&json.content).unwrap();
    assert_eq!(
        json["accepted_breaks"]["breaks"].as_array().map(Vec::len),
        Some(3),
        "{json}"
    );
    assert!(t.audit().await.ok());
}

backends!(a_cycle_whose_breaks_are_resolved_finalizes);

async fn a_cycle_whose_breaks_are_resolved_finalizes(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let mut food = t.partner("bistro").await;
    food.earn(earn_bonus("f1", "m1", 80)).await.receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    t.clear(day).await.unwrap();
    let cycle = day.to_string();
    let r = food
        .submit_partner_records(tokio_stream::iter(vec![v1::PartnerRecords {
            cycle: cycle.clone(),
            records: vec![],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.matched, r.open_breaks, r.breaks[0].kind.as_str()),
        (0, 1, "missing_in_file")
    );
    let mut fin = t.finance().await;
    let fin_req = v1::FinalizeSettlementRequest {
        cycle: cycle.clone(),
        ..Default::default()
    };
    assert!(fin.finalize_settlement(fin_req.clone()).await.is_err());
    // A settlement made final behind the daemon's back while a break is open fails the audit.
    assert!(t.audit().await.ok());
    t.execute_sql(&format!(
        "UPDATE settlements SET status = 'final', finalized_at = {} WHERE cycle = '{cycle}'",
        t.clock.now()
    ))
    .await;
    let audit = t.audit().await;
    assert!(
        audit
            .violations
            .iter()
            .any(|v| v.contains("finalized while reconciliation breaks")),
        "{audit}"
    );
    t.execute_sql(&format!(
        "UPDATE settlements SET status = 'draft', finalized_at = NULL WHERE cycle = '{cycle}'"
    ))
    .await;
    assert!(t.audit().await.ok());
    fin.resolve_break(v1::ResolveBreakRequest {
        cycle: cycle.clone(),
        partner: "bistro".into(),
        break_id: r.breaks[0].id,
        note: "partner's error: its export missed bonus grants".into(),
    })
    .await
    .unwrap();
    let s = fin.finalize_settlement(fin_req).await.unwrap().into_inner();
    assert_eq!(s.status, v1::SettlementStatus::Final as i32);
    assert!(s.accepted.is_none(), "nothing was accepted open");
    // Records that differ from the ledger everywhere are the wrong file: refused, nothing stored.
    // (A part is one gRPC message: at most 64 KiB, about 2,000 records.)
    let parts: Vec<v1::PartnerRecords> = (0..51)
        .map(|p| v1::PartnerRecords {
            cycle: cycle.clone(),
            records: (0..2_000)
                .map(|i| v1::PartnerRecord {
                    transaction_id: format!("x{p}-{i}"),
                    kind: "earn".into(),
                    member_id: "m9".into(),
                    points: 1,
                    purchase_amount: String::new(),
                })
                .collect(),
        })
        .collect();
    let e = food
        .submit_partner_records(tokio_stream::iter(parts))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "TOO_MANY_BREAKS"),
        "{e:?}"
    );
    let kept = fin
        .list_reconciliations(v1::ReconciliationsRequest {
            cycle: cycle.clone(),
            partner: "bistro".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kept.reconciliations[0].records, 0,
        "the earlier report stands"
    );
    // A partner file of several chunks (over 64 KiB) goes through the CLI whole.
    let big = t.dir.path().join("freshmart.csv");
    let mut text = String::from("transaction_id,kind,member_id,points,purchase_amount\n");
    for i in 0..3_000 {
        text.push_str(&format!(
            "till-7-receipt-{i:06},earn,member-{i:06},{},\n",
            1 + i % 90
        ));
    }
    assert!(text.len() > 96 << 10);
    std::fs::write(&big, text).unwrap();
    clearing_cli(
        &t,
        &[
            "reconcile",
            "--cycle",
            &cycle,
            "--partner",
            "freshmart",
            "--file",
            big.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let fm = fin
        .list_reconciliations(v1::ReconciliationsRequest {
            cycle: cycle.clone(),
            partner: "freshmart".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .reconciliations
        .remove(0);
    assert_eq!((fm.records, fm.open_breaks), (3_000, 3_000));
    // A partner submits only its own records: the same call by skyways reconciles skyways.
    let mut air = t.partner("skyways").await;
    let theirs = air
        .submit_partner_records(tokio_stream::iter(vec![v1::PartnerRecords {
            cycle: cycle.clone(),
            records: vec![],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (theirs.partner.as_str(), theirs.ledger_records),
        ("skyways", 0)
    );
    // Finance cannot call the partner API.
    let pem = t.issue(coalition_certs::Role::Finance, "finance", 1);
    let mut as_finance = v1::partner_service_client::PartnerServiceClient::new(
        coalitiond::client::connect(&t.addr, &pem).await.unwrap(),
    );
    let e = as_finance
        .submit_partner_records(tokio_stream::iter(vec![v1::PartnerRecords {
            cycle,
            records: vec![],
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}
