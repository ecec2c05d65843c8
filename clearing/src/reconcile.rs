//! Reconciliation, pure: a partner's own records of a cycle matched against the ledger's by the
//! partner's transaction id, as card schemes match a participant's file against the switch. Every
//! difference is a *break* of one kind; nothing here decides what to do about it.

use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

/// One transaction as the ledger or the partner records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The partner's transaction id.
    pub transaction_id: String,
    /// `earn`, `burn`, `reverse_earn` or `reverse_burn`.
    pub kind: String,
    /// The member.
    pub member: String,
    /// Points.
    pub points: i64,
    /// The purchase amount, for an earn of a purchase.
    pub purchase_amount: Option<Decimal>,
}

/// A field two records of one id disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// The kind.
    Kind,
    /// The member.
    Member,
    /// The points.
    Points,
    /// The purchase amount.
    Amount,
}

impl Field {
    /// As reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::Member => "member",
            Field::Points => "points",
            Field::Amount => "purchase_amount",
        }
    }
}

/// What a break is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// In the ledger, not in the partner's file.
    MissingInFile,
    /// In the partner's file, not in the ledger (a call that never reached us, or was refused).
    MissingInLedger,
    /// In both, but different in these fields.
    Different(Vec<Field>),
    /// The file names this id again (the first occurrence is the one matched).
    DuplicateInFile,
}

impl BreakKind {
    /// As reports and CSV name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakKind::MissingInFile => "missing_in_file",
            BreakKind::MissingInLedger => "missing_in_ledger",
            BreakKind::Different(_) => "different",
            BreakKind::DuplicateInFile => "duplicate_in_file",
        }
    }
}

/// One break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The partner's transaction id.
    pub transaction_id: String,
    /// What is wrong.
    pub kind: BreakKind,
    /// The ledger's record, if it has one.
    pub ledger: Option<Record>,
    /// The file's record (its first occurrence), if it has one.
    pub file: Option<Record>,
    /// The file's line of the record concerned (the duplicate's own line for a duplicate).
    pub line: Option<u64>,
}

/// The outcome of matching one partner's file for one cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reconciliation {
    /// Ids in both, equal in every field.
    pub matched: u64,
    /// Every break, by transaction id (then line).
    pub breaks: Vec<Break>,
}

/// Matches `file` (records with their line numbers) against `ledger`.
pub fn reconcile(ledger: &[Record], file: &[(u64, Record)]) -> Reconciliation {
    let by_id: BTreeMap<&str, &Record> = ledger
        .iter()
        .map(|r| (r.transaction_id.as_str(), r))
        .collect();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut out = Reconciliation::default();
    for (line, f) in file {
        let id = f.transaction_id.as_str();
        if !seen.insert(id) {
            out.breaks.push(Break {
                transaction_id: id.to_string(),
                kind: BreakKind::DuplicateInFile,
                ledger: by_id.get(id).map(|r| (*r).clone()),
                file: Some(f.clone()),
                line: Some(*line),
            });
            continue;
        }
        match by_id.get(id) {
            None => out.breaks.push(Break {
                transaction_id: id.to_string(),
                kind: BreakKind::MissingInLedger,
                ledger: None,
                file: Some(f.clone()),
                line: Some(*line),
            }),
            Some(l) => {
                let mut fields = Vec::new();
                if l.kind != f.kind {
                    fields.push(Field::Kind);
                }
                if l.member != f.member {
                    fields.push(Field::Member);
                }
                if l.points != f.points {
                    fields.push(Field::Points);
                }
                if l.purchase_amount.map(|d| d.normalize())
                    != f.purchase_amount.map(|d| d.normalize())
                {
                    fields.push(Field::Amount);
                }
                if fields.is_empty() {
                    out.matched += 1;
                } else {
                    out.breaks.push(Break {
                        transaction_id: id.to_string(),
                        kind: BreakKind::Different(fields),
                        ledger: Some((*l).clone()),
                        file: Some(f.clone()),
                        line: Some(*line),
                    });
                }
            }
        }
    }
    for l in ledger {
        if !seen.contains(l.transaction_id.as_str()) {
            out.breaks.push(Break {
                transaction_id: l.transaction_id.clone(),
                kind: BreakKind::MissingInFile,
                ledger: Some(l.clone()),
                file: None,
                line: None,
            });
        }
    }
    out.breaks
        .sort_by(|a, b| (&a.transaction_id, a.line).cmp(&(&b.transaction_id, b.line)));
    out
}

/// The CSV header of a partner's records.
pub const HEADER: [&str; 5] = [
    "transaction_id",
    "kind",
    "member_id",
    "points",
    "purchase_amount",
];

/// A line of a partner's file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// The line (1 is the header).
    pub line: u64,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Reads a partner's CSV (header [`HEADER`]): every record with its line, and every line that
/// cannot be read.
pub fn parse_csv(text: &str) -> (Vec<(u64, Record)>, Vec<LineError>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    match reader.headers() {
        Ok(h) if h.iter().map(str::trim).eq(HEADER) => {}
        Ok(h) => {
            errors.push(LineError {
                line: 1,
                message: format!(
                    "the header is {:?}; write {}",
                    h.iter().collect::<Vec<_>>().join(","),
                    HEADER.join(",")
                ),
            });
            return (records, errors);
        }
        Err(e) => {
            errors.push(LineError {
                line: 1,
                message: format!("not CSV: {e}"),
            });
            return (records, errors);
        }
    }
    for row in reader.records() {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(LineError {
                    line,
                    message: format!("not CSV: {e}"),
                });
                continue;
            }
        };
        let line = row.position().map_or(0, |p| p.line());
        match record(&row) {
            Ok(r) => records.push((line, r)),
            Err(message) => errors.push(LineError { line, message }),
        }
    }
    (records, errors)
}

fn record(row: &csv::StringRecord) -> Result<Record, String> {
    if row.len() != HEADER.len() {
        return Err(format!(
            "{} fields; a record has {} ({})",
            row.len(),
            HEADER.len(),
            HEADER.join(",")
        ));
    }
    let field = |i: usize| row.get(i).unwrap_or("");
    checked(field(0), field(1), field(2), field(3), field(4))
}

/// A record from its fields as a partner wrote them (the CSV's, or a `SubmitPartnerRecords`
/// record's), or what is wrong with them and what is expected.
pub fn checked(
    transaction_id: &str,
    kind: &str,
    member: &str,
    points: &str,
    purchase_amount: &str,
) -> Result<Record, String> {
    let transaction_id = transaction_id.trim();
    if transaction_id.is_empty() {
        return Err("transaction_id is empty".into());
    }
    if transaction_id.chars().count() > 128 {
        return Err("transaction_id is longer than 128 characters".into());
    }
    let kind = kind.trim();
    if !["earn", "burn", "reverse_earn", "reverse_burn"].contains(&kind) {
        return Err(format!(
            "kind {kind:?} is not earn, burn, reverse_earn or reverse_burn"
        ));
    }
    let member = member.trim();
    if member.is_empty() {
        return Err("member_id is empty".into());
    }
    if member.chars().count() > 128 {
        return Err("member_id is longer than 128 characters".into());
    }
    let points = points.trim();
    let points: i64 = points
        .parse()
        .map_err(|_| format!("points {points:?} is not a whole number"))?;
    if points <= 0 {
        return Err(format!("points {points} must be at least 1"));
    }
    let purchase_amount = match purchase_amount.trim() {
        "" => None,
        s => Some(
            s.parse::<Decimal>()
                .map_err(|_| format!("purchase_amount {s:?} is not a decimal amount"))?,
        ),
    };
    Ok(Record {
        transaction_id: transaction_id.to_string(),
        kind: kind.to_string(),
        member: member.to_string(),
        points,
        purchase_amount,
    })
}

/// One stored break as finance works it: what the matcher found and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkedBreak {
    /// The partner.
    pub partner: String,
    /// Its number within the partner's reconciliation of the cycle (1, 2, …).
    pub id: i64,
    /// `missing_in_file`, `missing_in_ledger`, `different`, `duplicate_in_file` or `malformed_line`.
    pub kind: String,
    /// The partner's transaction id (empty for a malformed line).
    pub transaction_id: String,
    /// The fields that differ, comma-separated (`different` only).
    pub fields: String,
    /// The file's line, if the break is about one.
    pub line: Option<u64>,
    /// What the matcher or the reader says.
    pub detail: String,
    /// When and by whom it was resolved, and the note; empty while open.
    pub resolved_by: String,
    /// When resolved, RFC 3339; empty while open.
    pub resolved_at: String,
    /// Finance's note.
    pub note: String,
}

/// Breaks finance accepted when it finalized a settlement with them still open: kept with the
/// settlement and written into its exports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Acceptance {
    /// Why finance finalized anyway.
    pub reason: String,
    /// The certificate that finalized (`role/name`).
    pub by: String,
    /// When, RFC 3339.
    pub at: String,
    /// The breaks open at that moment.
    pub breaks: Vec<AcceptedBreak>,
}

/// One break open when its settlement was finalized.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcceptedBreak {
    /// The partner.
    pub partner: String,
    /// The break's number within the partner's reconciliation.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// The partner's transaction id (empty for a malformed line).
    pub transaction_id: String,
    /// What the matcher said.
    pub detail: String,
}

/// The detail of a break as reports show it: both sides' values where they differ.
pub fn detail(b: &Break) -> String {
    let show = |r: &Option<Record>| match r {
        Some(r) => format!(
            "{} {} {} pts{}",
            r.kind,
            r.member,
            r.points,
            r.purchase_amount
                .map(|a| format!(" amount {}", a.normalize()))
                .unwrap_or_default()
        ),
        None => "-".into(),
    };
    match &b.kind {
        BreakKind::MissingInFile => format!("ledger: {}", show(&b.ledger)),
        BreakKind::MissingInLedger => format!("file: {}", show(&b.file)),
        BreakKind::Different(_) | BreakKind::DuplicateInFile => {
            format!("ledger: {}; file: {}", show(&b.ledger), show(&b.file))
        }
    }
}

/// The fields of a `different` break, comma-separated.
pub fn fields(b: &Break) -> String {
    match &b.kind {
        BreakKind::Different(f) => f.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(","),
        _ => String::new(),
    }
}

/// Breaks as CSV (through the one CSV writer), one row per break, open or resolved.
pub fn breaks_csv(cycle: &str, breaks: &[WorkedBreak]) -> String {
    use crate::csv_writer::{Cell, CsvWriter};
    let mut w = CsvWriter::default();
    w.header(&[
        "cycle",
        "partner",
        "break",
        "kind",
        "transaction_id",
        "fields",
        "line",
        "detail",
        "state",
        "resolved_by",
        "resolved_at",
        "note",
    ]);
    for b in breaks {
        let id = b.id.to_string();
        let line = b.line.map(|l| l.to_string()).unwrap_or_default();
        let state = if b.resolved_at.is_empty() {
            "open"
        } else {
            "resolved"
        };
        w.row([
            Cell::Text(cycle),
            Cell::Text(&b.partner),
            Cell::Number(id),
            Cell::Text(&b.kind),
            Cell::Text(&b.transaction_id),
            Cell::Text(&b.fields),
            Cell::Number(line),
            Cell::Text(&b.detail),
            Cell::Text(state),
            Cell::Text(&b.resolved_by),
            Cell::Text(&b.resolved_at),
            Cell::Text(&b.note),
        ]);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(id: &str, kind: &str, member: &str, points: i64, amount: Option<&str>) -> Record {
        Record {
            transaction_id: id.into(),
            kind: kind.into(),
            member: member.into(),
            points,
            purchase_amount: amount.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn every_kind_of_break_is_found_and_named() {
        let ledger = vec![
            rec("t1", "earn", "m1", 100, Some("100.00")),
            rec("t2", "burn", "m1", 40, None),
            rec("t3", "earn", "m2", 60, Some("30.00")),
            rec("t4", "earn", "m3", 10, None),
        ];
        let text = "transaction_id,kind,member_id,points,purchase_amount\n\
                    t1,earn,m1,100,100.0\n\
                    t2,burn,m9,41,\n\
                    t3,burn,m2,60,30.00\n\
                    t5,earn,m4,20,\n\
                    t1,earn,m1,100,100.00\n\
                    t6,earn,m4,ten,\n";
        let (file, errors) = parse_csv(text);
        assert_eq!(
            errors,
            vec![LineError {
                line: 7,
                message: "points \"ten\" is not a whole number".into()
            }]
        );
        let r = reconcile(&ledger, &file);
        assert_eq!(r.matched, 1, "t1 (100.0 = 100.00)");
        let got: Vec<(&str, &str, Option<u64>)> = r
            .breaks
            .iter()
            .map(|b| (b.transaction_id.as_str(), b.kind.as_str(), b.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("t1", "duplicate_in_file", Some(6)),
                ("t2", "different", Some(3)),
                ("t3", "different", Some(4)),
                ("t4", "missing_in_file", None),
                ("t5", "missing_in_ledger", Some(5)),
            ]
        );
        assert_eq!(
            r.breaks[1].kind,
            BreakKind::Different(vec![Field::Member, Field::Points])
        );
        assert_eq!(r.breaks[2].kind, BreakKind::Different(vec![Field::Kind]));
    }

    #[test]
    fn a_wrong_header_is_named() {
        let (records, errors) = parse_csv("id,kind\nt1,earn\n");
        assert!(records.is_empty());
        assert_eq!(errors[0].line, 1);
        assert!(
            errors[0]
                .message
                .contains("transaction_id,kind,member_id,points,purchase_amount")
        );
    }

    fn record_strategy() -> impl Strategy<Value = Record> {
        (
            "[a-z]{1,3}[0-9]{1,3}",
            prop::sample::select(vec!["earn", "burn", "reverse_earn", "reverse_burn"]),
            "m[0-9]{1,2}",
            1i64..1000,
            prop::option::of(0i64..100_000),
        )
            .prop_map(|(id, kind, member, points, cents)| Record {
                transaction_id: id,
                kind: kind.into(),
                member,
                points,
                purchase_amount: cents.map(|c| Decimal::new(c, 2)),
            })
    }

    proptest! {
        /// A file equal to the ledger matches everything; taking records out of the file, adding
        /// others, or changing one field of one gives exactly those breaks; every ledger record
        /// is either matched or in one break.
        #[test]
        fn breaks_are_exactly_the_differences(
            ledger in prop::collection::btree_map("[a-z][0-9]{1,4}", record_strategy(), 0..40),
            drop_every in 2usize..6,
            extra in prop::collection::vec(record_strategy(), 0..5),
            change in prop::option::of(0usize..40),
        ) {
            let ledger: Vec<Record> = ledger
                .into_iter()
                .map(|(id, mut r)| { r.transaction_id = id; r })
                .collect();
            let same: Vec<(u64, Record)> =
                ledger.iter().cloned().enumerate().map(|(i, r)| (i as u64 + 2, r)).collect();
            let r = reconcile(&ledger, &same);
            prop_assert_eq!(r.matched as usize, ledger.len());
            prop_assert!(r.breaks.is_empty());

            let mut file: Vec<(u64, Record)> = Vec::new();
            let mut dropped = 0;
            let mut changed = None;
            for (i, l) in ledger.iter().enumerate() {
                if i % drop_every == 0 {
                    dropped += 1;
                    continue;
                }
                let mut f = l.clone();
                if change == Some(i) {
                    f.points += 1;
                    changed = Some(f.transaction_id.clone());
                }
                file.push((i as u64 + 2, f));
            }
            let ids: BTreeSet<String> = ledger.iter().map(|l| l.transaction_id.clone()).collect();
            let mut added = 0;
            for (k, mut e) in extra.into_iter().enumerate() {
                e.transaction_id = format!("zz{k}");
                if !ids.contains(&e.transaction_id) {
                    added += 1;
                    file.push((1000 + k as u64, e));
                }
            }
            let r = reconcile(&ledger, &file);
            let count = |k: &str| r.breaks.iter().filter(|b| b.kind.as_str() == k).count();
            prop_assert_eq!(count("missing_in_file"), dropped);
            prop_assert_eq!(count("missing_in_ledger"), added);
            prop_assert_eq!(count("different"), usize::from(changed.is_some()));
            prop_assert_eq!(r.matched as usize + dropped + usize::from(changed.is_some()), ledger.len());
            if let Some(id) = changed {
                let b = r.breaks.iter().find(|b| b.transaction_id == id).unwrap();
                prop_assert_eq!(&b.kind, &BreakKind::Different(vec![Field::Points]));
            }
        }
    }
}
