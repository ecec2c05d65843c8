//! Exports: the pain.001 file validates against its XSD; the CSVs have one header row and stable columns.

use chrono::NaiveDate;
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
        partners: vec!["air".into(), "food".into(), "shop".into()],
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
        }],
        counts: Counts::default(),
        previous_digest: String::new(),
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
    for csv in [settlement_csv(&s), statement_csv(&s, "food", &[])] {
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
    let csv = settlement_csv(&s);
    let total = csv.lines().last().unwrap();
    assert!(
        total.contains(",0.00,"),
        "rounded nets sum to zero: {total}"
    );
}
