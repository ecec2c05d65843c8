//! What finance hands on: the settlement as CSV and JSON, a partner's statement as CSV, and the
//! payouts as an ISO 20022 pain.001.001.09 credit-transfer initiation. Every file carries control
//! totals (record count, sums, the settlement digest).

use crate::csv_writer::{Cell, CsvWriter};
use crate::settle::{Direction, OPERATOR, Settlement};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// A bank account of a participant or of the coalition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Account holder's name.
    pub name: String,
    /// IBAN.
    pub iban: String,
    /// BIC of the holder's bank.
    pub bic: String,
}

/// Why an export cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// A participant to be paid has no bank account configured.
    #[error("no bank account configured for {0:?}")]
    NoAccount(String),
    /// The settlement pays nobody: a credit-transfer file needs at least one transfer.
    #[error("the settlement of {0} pays nobody out: there is no credit transfer to initiate")]
    NothingToPay(NaiveDate),
}

fn fixed(d: Decimal, minor_units: u32) -> String {
    crate::settle::fixed_point(d, minor_units).to_string()
}

/// The first 16 characters of a digest (whole if shorter: a stored value is never trusted).
fn digest_prefix(d: &str) -> &str {
    d.get(..16).unwrap_or(d)
}

/// The settlement's positions as CSV: one header row, one row per participant, and a last `TOTAL`
/// row with the record count and sums. Every row carries the cycle and the digest. Breaks that
/// finance accepted when finalizing follow, one `accepted_break` row each (their partner, their
/// number as `record_count`, and what and why in `note`).
pub fn settlement_csv(s: &Settlement, accepted: Option<&crate::reconcile::Acceptance>) -> String {
    let mut w = CsvWriter::default();
    w.header(&[
        "cycle",
        "participant",
        "receivable",
        "payable",
        "fees",
        "net_exact",
        "net",
        "direction",
        "record_count",
        "digest",
        "note",
    ]);
    let mu = s.minor_units;
    let cycle = s.cycle.to_string();
    for p in &s.positions {
        let direction = if p.net < Decimal::ZERO {
            "pays_in"
        } else if p.net > Decimal::ZERO {
            "paid_out"
        } else {
            "none"
        };
        w.row([
            Cell::Text(&cycle),
            Cell::Text(&p.participant),
            p.receivable.into(),
            p.payable.into(),
            p.fees.into(),
            p.net_exact.into(),
            Cell::Number(fixed(p.net, mu)),
            Cell::Text(direction),
            Cell::Text(""),
            Cell::Text(&s.digest),
            Cell::Text(""),
        ]);
    }
    let sum = |f: fn(&crate::Position) -> Decimal| s.positions.iter().map(f).sum::<Decimal>();
    w.row([
        Cell::Text(&cycle),
        Cell::Text("TOTAL"),
        sum(|p| p.receivable).into(),
        sum(|p| p.payable).into(),
        sum(|p| p.fees).into(),
        sum(|p| p.net_exact).into(),
        Cell::Number(fixed(sum(|p| p.net), mu)),
        Cell::Text(""),
        (s.positions.len() as i64).into(),
        Cell::Text(&s.digest),
        Cell::Text(""),
    ]);
    if let Some(a) = accepted {
        for b in &a.breaks {
            let note = format!(
                "{} {} {}: accepted by {} at {}: {}",
                b.kind, b.transaction_id, b.detail, a.by, a.at, a.reason
            );
            w.row([
                Cell::Text(&cycle),
                Cell::Text(&b.partner),
                Cell::Text(""),
                Cell::Text(""),
                Cell::Text(""),
                Cell::Text(""),
                Cell::Text(""),
                Cell::Text("accepted_break"),
                b.id.into(),
                Cell::Text(&s.digest),
                Cell::Text(&note),
            ]);
        }
    }
    w.finish()
}

/// The settlement as pretty JSON (its totals and digest included), through serde, with the
/// breaks finance accepted when finalizing under `accepted_breaks`.
pub fn settlement_json(s: &Settlement, accepted: Option<&crate::reconcile::Acceptance>) -> String {
    // A Settlement is strings, numbers and decimals: serialising it cannot fail.
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let (Some(a), Some(o)) = (accepted, v.as_object_mut()) {
        o.insert(
            "accepted_breaks".into(),
            serde_json::to_value(a).unwrap_or_default(),
        );
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// What a statement line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// One allocation in which the participant is issuer or redeemer.
    Allocation,
    /// Issuance fees at one fee per point: paid by the issuer, received by the operator.
    Fee,
    /// The rounding of the exact net to minor units (with its share of the residual).
    Rounding,
}

impl LineKind {
    /// As written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Allocation => "allocation",
            LineKind::Fee => "fee",
            LineKind::Rounding => "rounding",
        }
    }
}

/// One line of a participant's statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementLine {
    /// Allocation, fee or rounding.
    pub kind: LineKind,
    /// The transaction (ledger id) that made the allocation (0 for other lines).
    pub ledger_id: i64,
    /// Its place in that transaction.
    pub seq: i32,
    /// The partner's own id of the transaction, if it was this partner's.
    pub transaction_id: String,
    /// Acceptance instant, RFC 3339 (empty for other lines).
    pub accepted_at: String,
    /// Who owes (fees: the issuer).
    pub issuer: String,
    /// Who is owed (fees: the operator).
    pub redeemer: String,
    /// Points (negative: reversal; fees: points issued net of reversals).
    pub points: i64,
    /// Money per point (fees: the fee in force at issue).
    pub rate: Decimal,
    /// points × rate, exact (rounding: the adjustment).
    pub value: Decimal,
    /// What the line does to the participant's net: positive when it is owed.
    pub signed_value: Decimal,
}

impl StatementLine {
    /// An allocation line as the store reads it; its signed value is set by [`statement`].
    #[allow(clippy::too_many_arguments)]
    pub fn allocation(
        ledger_id: i64,
        seq: i32,
        transaction_id: String,
        accepted_at: String,
        issuer: String,
        redeemer: String,
        points: i64,
        rate: Decimal,
    ) -> StatementLine {
        StatementLine {
            kind: LineKind::Allocation,
            ledger_id,
            seq,
            transaction_id,
            accepted_at,
            issuer,
            redeemer,
            points,
            rate,
            value: crate::settle::exact(Decimal::from(points) * rate),
            signed_value: Decimal::ZERO,
        }
    }
}

/// A participant's statement: its allocations (as given, in order), then its issuance fees, then
/// the rounding adjustment; the signed values sum to its rounded net, which is its payment.
pub fn statement(
    s: &Settlement,
    participant: &str,
    allocations: &[StatementLine],
) -> Vec<StatementLine> {
    let mut lines: Vec<StatementLine> = allocations
        .iter()
        .cloned()
        .map(|mut l| {
            // Owed for points redeemed here, owing for its points redeemed elsewhere; a
            // self-redemption moves nothing.
            l.signed_value = if l.issuer == l.redeemer {
                Decimal::ZERO
            } else if l.redeemer == participant {
                l.value
            } else {
                -l.value
            };
            l.signed_value = crate::settle::exact(l.signed_value);
            l
        })
        .collect();
    for f in &s.fees {
        let signed = if participant == OPERATOR {
            f.value
        } else if f.issuer == participant {
            -f.value
        } else {
            continue;
        };
        lines.push(StatementLine {
            kind: LineKind::Fee,
            ledger_id: 0,
            seq: 0,
            transaction_id: String::new(),
            accepted_at: String::new(),
            issuer: f.issuer.clone(),
            redeemer: OPERATOR.to_string(),
            points: f.points,
            rate: f.fee_rate,
            value: f.value,
            signed_value: signed,
        });
    }
    let (net_exact, net) = s
        .positions
        .iter()
        .find(|p| p.participant == participant)
        .map_or((Decimal::ZERO, Decimal::ZERO), |p| (p.net_exact, p.net));
    let rounding = crate::settle::exact(net - net_exact);
    lines.push(StatementLine {
        kind: LineKind::Rounding,
        ledger_id: 0,
        seq: 0,
        transaction_id: String::new(),
        accepted_at: String::new(),
        issuer: String::new(),
        redeemer: String::new(),
        points: 0,
        rate: Decimal::ZERO,
        value: rounding,
        signed_value: rounding,
    });
    lines
}

/// A participant's net in a settlement, rounded (`0.00` for one that is not in it).
pub fn net_of(s: &Settlement, participant: &str) -> Decimal {
    let net = s
        .positions
        .iter()
        .find(|p| p.participant == participant)
        .map_or(Decimal::ZERO, |p| p.net);
    crate::settle::fixed_point(net, s.minor_units)
}

/// A participant's statement as CSV: the lines of [`statement`], then a `TOTAL` row (line count,
/// net points of its allocations, and the net, which is its settlement position and payment) with
/// the settlement's digest.
pub fn statement_csv(s: &Settlement, partner: &str, lines: &[StatementLine]) -> String {
    let mut w = CsvWriter::default();
    w.header(&[
        "cycle",
        "partner",
        "line",
        "ledger_id",
        "seq",
        "transaction_id",
        "accepted_at",
        "issuer",
        "redeemer",
        "points",
        "rate",
        "value",
        "signed_value",
        "digest",
    ]);
    let cycle = s.cycle.to_string();
    let mut points = 0i64;
    for l in lines {
        if l.kind == LineKind::Allocation {
            points = points.saturating_add(l.points);
        }
        w.row([
            Cell::Text(&cycle),
            Cell::Text(partner),
            Cell::Text(l.kind.as_str()),
            l.ledger_id.into(),
            i64::from(l.seq).into(),
            Cell::Text(&l.transaction_id),
            Cell::Text(&l.accepted_at),
            Cell::Text(&l.issuer),
            Cell::Text(&l.redeemer),
            l.points.into(),
            l.rate.into(),
            l.value.into(),
            l.signed_value.into(),
            Cell::Text(&s.digest),
        ]);
    }
    w.row([
        Cell::Text(&cycle),
        Cell::Text(partner),
        Cell::Text("TOTAL"),
        (lines.len() as i64).into(),
        Cell::Text(""),
        Cell::Text(""),
        Cell::Text(""),
        Cell::Text(""),
        Cell::Text(""),
        points.into(),
        Cell::Text(""),
        Cell::Text(""),
        net_of(s, partner).into(),
        Cell::Text(&s.digest),
    ]);
    w.finish()
}

/// One participant that must pay into the coalition's settlement account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayIn {
    /// The participant.
    pub participant: String,
    /// Amount, positive, in minor units' precision.
    pub amount: Decimal,
    /// The day the money must be on the settlement account.
    pub due: NaiveDate,
    /// The reference the payer quotes in its transfer.
    pub reference: String,
}

/// The reference a payer quotes: cycle, participant and the settlement's digest prefix.
pub fn pay_in_reference(s: &Settlement, participant: &str) -> String {
    format!(
        "CLR-{}-{}-{}",
        s.cycle.format("%Y%m%d"),
        digest_prefix(&s.digest),
        participant
    )
}

/// The pay-ins of a settlement, due on `due`.
pub fn pay_ins(s: &Settlement, due: NaiveDate) -> Vec<PayIn> {
    s.payments
        .iter()
        .filter(|p| p.direction == Direction::PaysIn)
        .map(|p| PayIn {
            participant: p.participant.clone(),
            amount: crate::settle::fixed_point(p.amount, s.minor_units),
            due,
            reference: pay_in_reference(s, &p.participant),
        })
        .collect()
}

/// Who must pay in, as CSV: one row per payer (amount, currency, due date, the account to pay,
/// the reference to quote), then a `TOTAL` row with the count and the sum, which equals the sum
/// the coalition pays out. A bank or finance's own tooling collects these; the daemon does not
/// debit anyone.
pub fn pay_ins_csv(s: &Settlement, due: NaiveDate, settlement_account: &Account) -> String {
    let mut w = CsvWriter::default();
    w.header(&[
        "cycle",
        "payer",
        "amount",
        "currency",
        "due_date",
        "pay_to_iban",
        "pay_to_bic",
        "pay_to_name",
        "reference",
        "record_count",
        "digest",
    ]);
    let cycle = s.cycle.to_string();
    let due_s = due.to_string();
    let rows = pay_ins(s, due);
    for p in &rows {
        w.row([
            Cell::Text(&cycle),
            Cell::Text(&p.participant),
            Cell::Number(fixed(p.amount, s.minor_units)),
            Cell::Text(&s.currency),
            Cell::Text(&due_s),
            Cell::Text(&settlement_account.iban),
            Cell::Text(&settlement_account.bic),
            Cell::Text(&settlement_account.name),
            Cell::Text(&p.reference),
            Cell::Text(""),
            Cell::Text(&s.digest),
        ]);
    }
    let total: Decimal = rows.iter().map(|p| p.amount).sum();
    w.row([
        Cell::Text(&cycle),
        Cell::Text("TOTAL"),
        Cell::Number(fixed(total, s.minor_units)),
        Cell::Text(&s.currency),
        Cell::Text(&due_s),
        Cell::Text(""),
        Cell::Text(""),
        Cell::Text(""),
        Cell::Text(""),
        (rows.len() as i64).into(),
        Cell::Text(&s.digest),
    ]);
    w.finish()
}

/// The longest name pain.001 takes (`Max140Text`), in characters.
pub const MAX_NAME: usize = 140;

/// An XML document written with quick-xml, which escapes every text it is given.
struct Xml {
    w: quick_xml::Writer<Vec<u8>>,
}

impl Xml {
    fn new() -> Xml {
        Xml {
            w: quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2),
        }
    }

    fn open(&mut self, name: &str) {
        let _ = self.w.write_event(quick_xml::events::Event::Start(
            quick_xml::events::BytesStart::new(name),
        ));
    }

    fn open_with(&mut self, name: &str, attr: (&str, &str)) {
        let mut start = quick_xml::events::BytesStart::new(name);
        start.push_attribute(attr);
        let _ = self.w.write_event(quick_xml::events::Event::Start(start));
    }

    fn close(&mut self, name: &str) {
        let _ = self.w.write_event(quick_xml::events::Event::End(
            quick_xml::events::BytesEnd::new(name),
        ));
    }

    /// `<name>text</name>`, the text escaped.
    fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        let _ = self.w.write_event(quick_xml::events::Event::Text(
            quick_xml::events::BytesText::new(text),
        ));
        self.close(name);
    }

    /// A leaf with an attribute.
    fn leaf_with(&mut self, name: &str, attr: (&str, &str), text: &str) {
        self.open_with(name, attr);
        let _ = self.w.write_event(quick_xml::events::Event::Text(
            quick_xml::events::BytesText::new(text),
        ));
        self.close(name);
    }

    /// A name, cut to what the schema allows (by characters, never inside one).
    fn name(&mut self, name: &str) {
        let cut: String = name.chars().take(MAX_NAME).collect();
        self.leaf("Nm", &cut);
    }

    fn finish(self) -> String {
        let body = String::from_utf8(self.w.into_inner()).unwrap_or_default();
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}\n")
    }
}

/// Reads back the text of every `<tag>` element of an XML document, unescaped: what a bank or a
/// check of a written file sees. `None` if the document is not well-formed.
pub fn element_texts(xml: &str, tag: &str) -> Option<Vec<String>> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(xml);
    let (mut out, mut inside, mut cur) = (Vec::new(), false, String::new());
    loop {
        match r.read_event().ok()? {
            Event::Start(e) if e.name().as_ref() == tag.as_bytes() => {
                inside = true;
                cur.clear();
            }
            Event::Text(t) if inside => cur.push_str(&t.decode().ok()?),
            // quick-xml reports entity references (`&amp;`) as events of their own.
            Event::GeneralRef(g) if inside => {
                let name = g.decode().ok()?;
                cur.push_str(quick_xml::escape::resolve_predefined_entity(&name)?);
            }
            Event::End(e) if e.name().as_ref() == tag.as_bytes() => {
                inside = false;
                out.push(std::mem::take(&mut cur));
            }
            Event::Eof => return Some(out),
            _ => {}
        }
    }
}

/// The payouts of a settlement (the coalition's settlement account pays every participant with a
/// positive net) as an ISO 20022 pain.001.001.09 document. `created_at` is RFC 3339.
pub fn pain001(
    s: &Settlement,
    debtor: &Account,
    accounts: &BTreeMap<String, Account>,
    created_at: &str,
    execution_date: NaiveDate,
) -> Result<String, ExportError> {
    let payouts: Vec<_> = s
        .payments
        .iter()
        .filter(|p| p.direction == Direction::PaidOut)
        .collect();
    if payouts.is_empty() {
        return Err(ExportError::NothingToPay(s.cycle));
    }
    let mu = s.minor_units;
    let ctrl: Decimal = payouts.iter().map(|p| p.amount).sum();
    let day = s.cycle.format("%Y%m%d").to_string();
    let msg_id = format!("CLR-{day}-{}", digest_prefix(&s.digest));
    let n = payouts.len().to_string();
    let mut x = Xml::new();
    x.open_with(
        "Document",
        ("xmlns", "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"),
    );
    x.open("CstmrCdtTrfInitn");
    x.open("GrpHdr");
    x.leaf("MsgId", &msg_id);
    x.leaf("CreDtTm", created_at);
    x.leaf("NbOfTxs", &n);
    x.leaf("CtrlSum", &fixed(ctrl, mu));
    x.open("InitgPty");
    x.name(&debtor.name);
    x.close("InitgPty");
    x.close("GrpHdr");
    x.open("PmtInf");
    x.leaf("PmtInfId", &format!("{msg_id}-1"));
    x.leaf("PmtMtd", "TRF");
    x.leaf("NbOfTxs", &n);
    x.leaf("CtrlSum", &fixed(ctrl, mu));
    x.open("ReqdExctnDt");
    x.leaf("Dt", &execution_date.to_string());
    x.close("ReqdExctnDt");
    x.open("Dbtr");
    x.name(&debtor.name);
    x.close("Dbtr");
    x.open("DbtrAcct");
    x.open("Id");
    x.leaf("IBAN", &debtor.iban);
    x.close("Id");
    x.close("DbtrAcct");
    x.open("DbtrAgt");
    x.open("FinInstnId");
    x.leaf("BICFI", &debtor.bic);
    x.close("FinInstnId");
    x.close("DbtrAgt");
    for (i, p) in payouts.iter().enumerate() {
        let acct = accounts
            .get(&p.participant)
            .ok_or_else(|| ExportError::NoAccount(p.participant.clone()))?;
        let what = if p.participant == OPERATOR {
            "issuance fees"
        } else {
            "points redeemed"
        };
        x.open("CdtTrfTxInf");
        x.open("PmtId");
        x.leaf("EndToEndId", &format!("{day}-{}", i + 1));
        x.close("PmtId");
        x.open("Amt");
        x.leaf_with("InstdAmt", ("Ccy", &s.currency), &fixed(p.amount, mu));
        x.close("Amt");
        x.open("CdtrAgt");
        x.open("FinInstnId");
        x.leaf("BICFI", &acct.bic);
        x.close("FinInstnId");
        x.close("CdtrAgt");
        x.open("Cdtr");
        x.name(&acct.name);
        x.close("Cdtr");
        x.open("CdtrAcct");
        x.open("Id");
        x.leaf("IBAN", &acct.iban);
        x.close("Id");
        x.close("CdtrAcct");
        x.open("RmtInf");
        x.leaf(
            "Ustrd",
            &format!(
                "Coalition settlement {} {what} {}",
                s.cycle,
                digest_prefix(&s.digest)
            ),
        );
        x.close("RmtInf");
        x.close("CdtTrfTxInf");
    }
    x.close("PmtInf");
    x.close("CstmrCdtTrfInitn");
    x.close("Document");
    Ok(x.finish())
}
