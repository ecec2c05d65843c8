//! Exports: the pain.001 file validates against its XSD; the CSVs have one header row and stable columns.

use chrono::NaiveDate;
use coalition_clearing::csv_writer::formula_like;
use coalition_clearing::export::*;
use coalition_clearing::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::str::FromStr;

fn sample() -> Settlement {
    let d = |s: &str| Decimal::from_str(s).unwrap();
    settle(&Input {
        cycle: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
        currency: "EUR".into(),
        minor_units: 2,
        rounding: Rounding::HalfAwayFromZero,
        slices: vec![
            Slice {
                issuer: "air".into(),
                redeemer: "food".into(),
                points: 420,
                rate: d("0.0125"),
                allocations: 1,
            },
            Slice {
                issuer: "shop".into(),
                redeemer: "food".into(),
                points: 80,
                rate: d("0.0125"),
                allocations: 1,
            },
            Slice {
                issuer: "food".into(),
                redeemer: "shop".into(),
                points: 10,
                rate: d("0.0085"),
                allocations: 1,
            },
        ],
        issuance: vec![Issuance {
            issuer: "air".into(),
            points: 1003,
            fee_rate: d("0.0015"),
            value: Decimal::ZERO,
        }],
        counts: Counts::default(),
        previous_digest: String::new(),
        ledger_head: String::new(),
    })
    .unwrap()
}

fn account(name: &str, iban: &str) -> Account {
    Account {
        name: name.into(),
        iban: iban.into(),
        bic: "DEUTDEFFXXX".into(),
    }
}

#[test]
fn pain001_validates_against_its_schema() {
    let s = sample();
    let mut accounts = BTreeMap::new();
    accounts.insert(
        "food".to_string(),
        account("Food & Co <Bistro>", "DE89370400440532013000"),
    );
    accounts.insert("shop".to_string(), account("Shop", "NL91ABNA0417164300"));
    accounts.insert(
        OPERATOR.to_string(),
        account("Coalition Operator", "FR1420041010050500013M02606"),
    );
    let debtor = account("Coalition settlement account", "BE68539007547034");
    let xml = pain001(
        &s,
        &debtor,
        &accounts,
        "2026-11-22T06:00:00Z",
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    )
    .unwrap();
    let payouts = s
        .payments
        .iter()
        .filter(|p| p.direction == Direction::PaidOut)
        .count();
    assert!(xml.contains(&format!("<NbOfTxs>{payouts}</NbOfTxs>")));
    let ctrl: Decimal = s
        .payments
        .iter()
        .filter(|p| p.direction == Direction::PaidOut)
        .map(|p| p.amount)
        .sum();
    assert!(xml.contains(&format!("<CtrlSum>{ctrl}</CtrlSum>")), "{xml}");

    let dir = std::env::temp_dir().join(format!("pain001-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("payouts.xml");
    std::fs::write(&file, &xml).unwrap();
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/pain.001.001.09.xsd");
    let out = match std::process::Command::new("xmllint")
        .args(["--noout", "--schema", schema])
        .arg(&file)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            // Like the PostgreSQL tests: loud skip on a developer's machine, a failure in CI.
            if std::env::var("COALITION_REQUIRE_XMLLINT").is_ok_and(|v| v == "1") {
                panic!("xmllint required (COALITION_REQUIRE_XMLLINT=1) but not runnable: {e}");
            }
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!(
                    "\n*** SKIPPED the XSD validation of pain.001: xmllint not found ({e}); apt-get install libxml2-utils ***\n"
                ),
            );
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    };
    assert!(
        out.status.success(),
        "pain.001 does not validate:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And an invalid file is refused by the same check (the test can fail).
    std::fs::write(
        &file,
        xml.replace("<PmtMtd>TRF</PmtMtd>", "<PmtMtd>CASH</PmtMtd>"),
    )
    .unwrap();
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema", schema])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_payout_without_an_account_is_refused() {
    let err = pain001(
        &sample(),
        &account("x", "BE68539007547034"),
        &BTreeMap::new(),
        "2026-11-22T06:00:00Z",
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, ExportError::NoAccount(_)));
}

#[test]
fn csv_has_one_header_and_stable_columns() {
    let s = sample();
    for csv in [settlement_csv(&s, None), statement_csv(&s, "food", &[])] {
        let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
        assert!(
            rows[0]
                .iter()
                .all(|h| h.chars().all(|c| c.is_ascii_lowercase() || c == '_')),
            "header {:?}",
            rows[0]
        );
        assert!(
            rows.iter().skip(1).all(|r| r.len() == rows[0].len()),
            "{csv}"
        );
        assert_eq!(rows.iter().filter(|r| r[0] == "cycle").count(), 1);
        assert!(rows.last().unwrap().contains(&"TOTAL"));
        assert!(csv.contains(&s.digest));
    }
    let csv = settlement_csv(&s, None);
    let total = csv.lines().last().unwrap();
    assert!(
        total.contains(",0.00,"),
        "rounded nets sum to zero: {total}"
    );
}

#[test]
fn pain001_escapes_every_name_and_cuts_long_ones() {
    let s = sample();
    let long: String = "Ä".repeat(200);
    let nasty = "=cmd|' /C calc'!A0, \"Bistro\" & <Co>; Crêperie";
    let mut accounts = BTreeMap::new();
    accounts.insert("food".to_string(), account(nasty, "DE89370400440532013000"));
    accounts.insert("shop".to_string(), account("Shop", "NL91ABNA0417164300"));
    accounts.insert(
        OPERATOR.to_string(),
        account("O'Neil & Söhne", "FR1420041010050500013M02606"),
    );
    let xml = pain001(
        &s,
        &account(&long, "BE68539007547034"),
        &accounts,
        "2026-11-22T06:00:00Z",
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    )
    .unwrap();
    let names = element_texts(&xml, "Nm").unwrap();
    assert!(names.contains(&nasty.to_string()), "{names:?}");
    assert!(names.contains(&"O'Neil & Söhne".to_string()), "{names:?}");
    assert!(
        names.contains(&"Ä".repeat(MAX_NAME)),
        "cut to 140 characters: {names:?}"
    );
    assert!(!names.iter().any(|n| n.chars().count() > MAX_NAME));
    // Every document still validates (the xmllint check above covers the schema itself).
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
}

#[test]
fn csv_cells_that_look_like_formulas_are_neutralised_and_numbers_stay_numbers() {
    let s = sample();
    let ids = [
        "=HYPERLINK(\"http://evil.example\",\"click\")",
        "+1+1",
        "@SUM(1+1)",
        "-2+3",
        "\tx",
        "a,b;\"c\"<&>",
        "plain",
    ];
    let lines: Vec<StatementLine> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            StatementLine::allocation(
                i as i64 + 1,
                0,
                id.to_string(),
                "2026-11-21T10:00:00.000000Z".into(),
                if i % 2 == 0 || i == 3 {
                    "air".into()
                } else {
                    "food".into()
                },
                "food".into(),
                if i == 3 { -1250 } else { 100 },
                Decimal::from_str("0.0125").unwrap(),
            )
        })
        .collect();
    let lines = statement(&s, "food", &lines);
    let csv = statement_csv(&s, "food", &lines);
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    let header = r.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let numeric = [
        "ledger_id",
        "seq",
        "points",
        "rate",
        "value",
        "signed_value",
    ];
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    // The allocations, the rounding line, TOTAL.
    assert_eq!(rows.len(), ids.len() + 2);
    for (row, id) in rows.iter().zip(ids) {
        let got = &row[col("transaction_id")];
        if formula_like(id) {
            assert_eq!(got, format!("'{id}"));
        } else {
            assert_eq!(got, id);
        }
        for (i, cell) in row.iter().enumerate() {
            if numeric.contains(&&header[i]) {
                Decimal::from_str(cell)
                    .unwrap_or_else(|_| panic!("{} {cell:?} is a number", &header[i]));
            } else {
                assert!(!formula_like(cell), "{cell:?} would run as a formula");
            }
        }
    }
    // A negative amount stays a number.
    let neg = &rows[3];
    assert_eq!(&neg[col("value")], "-15.625");
    assert_eq!(&neg[col("points")], "-1250");
    assert_eq!(&neg[col("signed_value")], "-15.625");
    let air_owes = &rows[0];
    assert_eq!(&air_owes[col("signed_value")], "1.25");
    // The settlement CSV parses back: one row per participant, TOTAL last.
    let text = settlement_csv(&s, None);
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let n = r.records().count();
    assert_eq!(n, s.positions.len() + 1);
    // JSON through serde parses back equal.
    let back: Settlement = serde_json::from_str(&settlement_json(&s, None)).unwrap();
    assert_eq!(back, s);
}
