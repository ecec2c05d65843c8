//! What finance hands on: the settlement as CSV and JSON, a partner's statement as CSV, and the
//! payouts as an ISO 20022 pain.001.001.09 credit-transfer initiation. Every file carries control
//! totals (record count, sums, the settlement digest).

use crate::settle::{Direction, OPERATOR, Settlement};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::fmt::Write;

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
    let mut d = d;
    d.rescale(minor_units);
    d.to_string()
}

/// The settlement's positions as CSV: one header row, one row per participant, and a last `TOTAL`
/// row with the record count and sums. Every row carries the cycle and the digest.
pub fn settlement_csv(s: &Settlement) -> String {
    let mut out = String::from(
        "cycle,participant,receivable,payable,fees,net_exact,net,direction,record_count,digest\n",
    );
    let mu = s.minor_units;
    for p in &s.positions {
        let direction = if p.net < Decimal::ZERO {
            "pays_in"
        } else if p.net > Decimal::ZERO {
            "paid_out"
        } else {
            "none"
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},,{}",
            s.cycle,
            p.participant,
            p.receivable,
            p.payable,
            p.fees,
            p.net_exact,
            fixed(p.net, mu),
            direction,
            s.digest
        );
    }
    let sum = |f: fn(&crate::Position) -> Decimal| s.positions.iter().map(f).sum::<Decimal>();
    let _ = writeln!(
        out,
        "{},TOTAL,{},{},{},{},{},,{},{}",
        s.cycle,
        sum(|p| p.receivable),
        sum(|p| p.payable),
        sum(|p| p.fees),
        sum(|p| p.net_exact),
        fixed(sum(|p| p.net), mu),
        s.positions.len(),
        s.digest
    );
    out
}

/// The settlement as pretty JSON (its totals and digest included).
pub fn settlement_json(s: &Settlement) -> String {
    serde_json::to_string_pretty(s).expect("settlement serialises")
}

/// One allocation behind a partner's statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementLine {
    /// The transaction (ledger id) that made the allocation.
    pub ledger_id: i64,
    /// Its place in that transaction.
    pub seq: i32,
    /// The partner's own id of the transaction, if it was this partner's.
    pub transaction_id: String,
    /// Acceptance instant, RFC 3339.
    pub accepted_at: String,
    /// Who owes.
    pub issuer: String,
    /// Who is owed.
    pub redeemer: String,
    /// Points (negative: reversal).
    pub points: i64,
    /// Money per point.
    pub rate: Decimal,
    /// points × rate, exact.
    pub value: Decimal,
}

/// A partner's statement as CSV: every allocation in which it is issuer or redeemer, then a
/// `TOTAL` row (count, points, receivable − payable) with the settlement's digest.
pub fn statement_csv(s: &Settlement, partner: &str, lines: &[StatementLine]) -> String {
    let mut out = String::from(
        "cycle,partner,ledger_id,seq,transaction_id,accepted_at,issuer,redeemer,points,rate,value,signed_value,digest\n",
    );
    let (mut points, mut net) = (0i64, Decimal::ZERO);
    for l in lines {
        // Positive for the partner when it is owed, negative when it owes; self-redemptions move nothing.
        let signed = if l.issuer == l.redeemer {
            Decimal::ZERO
        } else if l.redeemer == partner {
            l.value
        } else {
            -l.value
        };
        points += l.points;
        net += signed;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.cycle,
            partner,
            l.ledger_id,
            l.seq,
            csv_field(&l.transaction_id),
            l.accepted_at,
            l.issuer,
            l.redeemer,
            l.points,
            l.rate,
            l.value,
            signed,
            s.digest
        );
    }
    let _ = writeln!(
        out,
        "{},{},TOTAL,{},,,,,{},,,{},{}",
        s.cycle,
        partner,
        lines.len(),
        points,
        net,
        s.digest
    );
    out
}

/// A CSV field, quoted when it holds a separator, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
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
    let msg_id = format!("CLR-{}-{}", s.cycle.format("%Y%m%d"), &s.digest[..16]);
    let mut x = String::new();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.09">"#
    );
    let _ = writeln!(x, "  <CstmrCdtTrfInitn>");
    let _ = writeln!(x, "    <GrpHdr>");
    let _ = writeln!(x, "      <MsgId>{msg_id}</MsgId>");
    let _ = writeln!(x, "      <CreDtTm>{created_at}</CreDtTm>");
    let _ = writeln!(x, "      <NbOfTxs>{}</NbOfTxs>", payouts.len());
    let _ = writeln!(x, "      <CtrlSum>{}</CtrlSum>", fixed(ctrl, mu));
    let _ = writeln!(
        x,
        "      <InitgPty><Nm>{}</Nm></InitgPty>",
        xml_escape(&debtor.name)
    );
    let _ = writeln!(x, "    </GrpHdr>");
    let _ = writeln!(x, "    <PmtInf>");
    let _ = writeln!(x, "      <PmtInfId>{msg_id}-1</PmtInfId>");
    let _ = writeln!(x, "      <PmtMtd>TRF</PmtMtd>");
    let _ = writeln!(x, "      <NbOfTxs>{}</NbOfTxs>", payouts.len());
    let _ = writeln!(x, "      <CtrlSum>{}</CtrlSum>", fixed(ctrl, mu));
    let _ = writeln!(
        x,
        "      <ReqdExctnDt><Dt>{execution_date}</Dt></ReqdExctnDt>"
    );
    let _ = writeln!(
        x,
        "      <Dbtr><Nm>{}</Nm></Dbtr>",
        xml_escape(&debtor.name)
    );
    let _ = writeln!(
        x,
        "      <DbtrAcct><Id><IBAN>{}</IBAN></Id></DbtrAcct>",
        debtor.iban
    );
    let _ = writeln!(
        x,
        "      <DbtrAgt><FinInstnId><BICFI>{}</BICFI></FinInstnId></DbtrAgt>",
        debtor.bic
    );
    for (i, p) in payouts.iter().enumerate() {
        let acct = accounts
            .get(&p.participant)
            .ok_or_else(|| ExportError::NoAccount(p.participant.clone()))?;
        let what = if p.participant == OPERATOR {
            "issuance fees"
        } else {
            "points redeemed"
        };
        let _ = writeln!(x, "      <CdtTrfTxInf>");
        let _ = writeln!(
            x,
            "        <PmtId><EndToEndId>{}-{}</EndToEndId></PmtId>",
            s.cycle.format("%Y%m%d"),
            i + 1
        );
        let _ = writeln!(
            x,
            "        <Amt><InstdAmt Ccy=\"{}\">{}</InstdAmt></Amt>",
            s.currency,
            fixed(p.amount, mu)
        );
        let _ = writeln!(
            x,
            "        <CdtrAgt><FinInstnId><BICFI>{}</BICFI></FinInstnId></CdtrAgt>",
            acct.bic
        );
        let _ = writeln!(
            x,
            "        <Cdtr><Nm>{}</Nm></Cdtr>",
            xml_escape(&acct.name)
        );
        let _ = writeln!(
            x,
            "        <CdtrAcct><Id><IBAN>{}</IBAN></Id></CdtrAcct>",
            acct.iban
        );
        let _ = writeln!(
            x,
            "        <RmtInf><Ustrd>Coalition settlement {} {what} {}</Ustrd></RmtInf>",
            s.cycle,
            &s.digest[..16]
        );
        let _ = writeln!(x, "      </CdtTrfTxInf>");
    }
    let _ = writeln!(x, "    </PmtInf>");
    let _ = writeln!(x, "  </CstmrCdtTrfInitn>");
    let _ = writeln!(x, "</Document>");
    Ok(x)
}
