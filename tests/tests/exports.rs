//! Exports a spreadsheet or a bank opens (issue 19): text from partners and config that looks like
//! a formula is neutralised in every CSV, numbers stay numbers, pain.001 escapes and keeps names,
//! JSON parses back equal. On both backends, from real traffic over mTLS.

use coalition_clearing::csv_writer::formula_like;
use coalition_clearing::export::element_texts;
use coalition_tests::*;
use rust_decimal::Decimal;
use std::str::FromStr;

const NASTY_NAME: &str = "=Bistro, \"Group\"; <Crêpes> & Co @home";
const IDS: [&str; 6] = [
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "+1+1",
    "@SUM(1+1)",
    "-2+3",
    "a,b;\"c\"<&>",
    "plain-id",
];

fn setup(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
        .replace("name = \"Bistro Group\"", &format!("name = {NASTY_NAME:?}"))
}

/// The rows of a CSV, checked: no text cell begins like a formula; numeric columns parse as decimals.
fn parse_csv(text: &str, numeric: &[&str]) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header = r.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    for row in &rows {
        assert_eq!(row.len(), header.len());
        for (name, cell) in header.iter().zip(row.iter()) {
            if numeric.contains(&name) && !cell.is_empty() && cell != "TOTAL" {
                Decimal::from_str(cell)
                    .unwrap_or_else(|_| panic!("{name} {cell:?} is not a number"));
            } else {
                assert!(
                    !formula_like(cell),
                    "{name} {cell:?} would run as a formula"
                );
            }
        }
    }
    (header, rows)
}

backends!(exports_neutralise_formulas_and_round_trip);

async fn exports_neutralise_formulas_and_round_trip(b: Backend) {
    let t = TestDaemon::start_with(b, setup).await;
    assert_eq!(t.config.partners["bistro"].name, NASTY_NAME);
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("=e1", "=SUM(A1)", 5000))
        .await
        .receipt();
    air.earn(earn_bonus("+e2", "@m2,\"x\"", 5000))
        .await
        .receipt();
    for id in IDS {
        food.burn(burn(id, "=SUM(A1)", 100)).await.receipt();
    }
    // A reversal: a negative allocation, a negative amount on the statement.
    food.reverse_burn(reverse_burn("-r1", IDS[0], 40))
        .await
        .receipt();
    let cycles = t.config.cycles();
    let d0 = cycles.cycle_of(t.clock.now()).unwrap();
    t.advance_to(cycles.close(d0).unwrap() + 1_000_000);
    let s = t.clear(d0).await.unwrap();
    let mut fin = t.finance().await;

    // The partner's statement: every id comes back, formula-like ones behind a quote.
    let st = fin
        .get_statement(v1::StatementRequest {
            cycle: d0.to_string(),
            partner: "bistro".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (header, rows) = parse_csv(
        &st.csv,
        &[
            "ledger_id",
            "seq",
            "points",
            "rate",
            "value",
            "signed_value",
        ],
    );
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| &r[col("transaction_id")]).collect();
    for id in IDS.iter().chain(["-r1"].iter()) {
        let want = if formula_like(id) {
            format!("'{id}")
        } else {
            id.to_string()
        };
        assert!(ids.contains(&want.as_str()), "{want:?} not in {ids:?}");
    }
    let reversal = rows
        .iter()
        .find(|r| &r[col("transaction_id")] == "'-r1")
        .unwrap();
    assert_eq!(&reversal[col("points")], "-40");
    let value = &reversal[col("value")];
    assert!(
        value.starts_with('-'),
        "a negative amount stays a number: {value:?}"
    );
    assert_eq!(Decimal::from_str(value).unwrap(), Decimal::new(-48, 2));

    // The settlement as CSV and JSON.
    let export = |format: v1::ExportFormat| v1::ExportRequest {
        cycle: d0.to_string(),
        format: format as i32,
    };
    let csv_file = fin
        .export_settlement(export(v1::ExportFormat::Csv))
        .await
        .unwrap()
        .into_inner();
    let (_, rows) = parse_csv(
        std::str::from_utf8(&csv_file.content).unwrap(),
        &[
            "receivable",
            "payable",
            "fees",
            "net_exact",
            "net",
            "record_count",
        ],
    );
    assert_eq!(rows.len(), s.positions.len() + 1);
    let json = fin
        .export_settlement(export(v1::ExportFormat::Json))
        .await
        .unwrap()
        .into_inner();
    let back: coalition_clearing::Settlement = serde_json::from_slice(&json.content).unwrap();
    assert_eq!(back.digest, s.digest);
    assert_eq!(
        coalition_clearing::digest_of(&back),
        s.digest,
        "parses back equal"
    );

    // pain.001 (from the final settlement only): valid, and the names come back as configured.
    fin.finalize_settlement(v1::FinalizeSettlementRequest {
        cycle: d0.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let pain = fin
        .export_settlement(export(v1::ExportFormat::Pain001))
        .await
        .unwrap()
        .into_inner();
    let xml = String::from_utf8(pain.content).unwrap();
    if let Some(errors) = xmllint_pain001(&xml) {
        assert!(
            errors.is_empty(),
            "pain.001 does not validate: {errors}\n{xml}"
        );
    }
    let names = element_texts(&xml, "Nm").expect("well-formed");
    assert!(names.contains(&NASTY_NAME.to_string()), "{names:?}");
    t.assert_invariants().await;
}
