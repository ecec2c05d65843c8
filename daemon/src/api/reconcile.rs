//! Reconciliation on the wire: a partner's records (`SubmitPartnerRecords`) or its CSV loaded by
//! finance (`ReconcilePartnerFile`) are read here, matched and stored by
//! `store::reconciliation`; finance lists, exports and resolves the breaks, and finalizes.

use crate::clock::rfc3339;
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::store::reconciliation::{Finalized, ReconCall, ReconReply, Report, Submission};
use chrono::NaiveDate;
use coalition_clearing::reconcile::{self, LineError, WorkedBreak};
use coalition_proto::v1 as pb;
use tonic::Streaming;

/// Most bytes of a partner's file.
pub const MAX_FILE_BYTES: usize = 64 << 20;
/// Most records of one submission.
pub const MAX_RECORDS: usize = 1_000_000;
/// Longest note or reason.
const MAX_NOTE: usize = 500;

/// A worked break on the wire.
pub fn break_pb(b: &WorkedBreak) -> pb::ReconciliationBreak {
    pb::ReconciliationBreak {
        partner: b.partner.clone(),
        id: b.id,
        kind: b.kind.clone(),
        transaction_id: b.transaction_id.clone(),
        fields: if b.fields.is_empty() {
            vec![]
        } else {
            b.fields.split(',').map(str::to_string).collect()
        },
        line: b.line.unwrap_or(0),
        detail: b.detail.clone(),
        resolved_by: b.resolved_by.clone(),
        resolved_at: b.resolved_at.clone(),
        note: b.note.clone(),
    }
}

/// A stored reconciliation on the wire.
pub fn report_pb(r: &Report) -> pb::Reconciliation {
    pb::Reconciliation {
        cycle: r.cycle.clone(),
        partner: r.partner.clone(),
        source: r.source.clone(),
        submitted_by: r.by.clone(),
        submitted_at: rfc3339(r.at),
        records: r.records,
        ledger_records: r.ledger_records,
        matched: r.matched,
        open_breaks: r.breaks.iter().filter(|b| b.resolved_at.is_empty()).count() as i64,
        breaks: r.breaks.iter().map(break_pb).collect(),
    }
}

/// The accepted breaks of a settlement on the wire.
pub fn accepted_pb(a: &reconcile::Acceptance) -> pb::AcceptedBreaks {
    pb::AcceptedBreaks {
        reason: a.reason.clone(),
        accepted_by: a.by.clone(),
        accepted_at: a.at.clone(),
        breaks: a
            .breaks
            .iter()
            .map(|b| pb::ReconciliationBreak {
                partner: b.partner.clone(),
                id: b.id,
                kind: b.kind.clone(),
                transaction_id: b.transaction_id.clone(),
                detail: b.detail.clone(),
                ..Default::default()
            })
            .collect(),
    }
}

/// Refuses a cycle that has not closed: its records are still arriving.
fn closed(shared: &Shared, cycle: NaiveDate) -> Result<(), ServiceError> {
    let cycles = shared.config.cycles();
    let close = cycles
        .close(cycle)
        .map_err(|e| ServiceError::field("cycle", "MALFORMED_CYCLE", format!("{cycle}: {e}")))?;
    if shared.clock.now() < close {
        return Err(ServiceError::refused(
            tonic::Code::FailedPrecondition,
            "CYCLE_OPEN",
            format!(
                "cycle {cycle} closes at {}; send its records after it has closed",
                rfc3339(close)
            ),
        ));
    }
    Ok(())
}

fn partner_known(shared: &Shared, partner: &str) -> Result<(), ServiceError> {
    if shared.config.partners.contains_key(partner) {
        return Ok(());
    }
    Err(ServiceError::NotFound {
        reason: "UNKNOWN_PARTNER",
        message: format!("no partner {partner:?} is configured"),
    })
}

async fn store_submission(
    shared: &Shared,
    s: Submission,
) -> Result<pb::Reconciliation, ServiceError> {
    let (cycle, partner) = (s.cycle.clone(), s.partner.clone());
    match shared.store.reconciliation(ReconCall::Submit(s)).await? {
        ReconReply::TooManyBreaks(n) => Err(ServiceError::refused(
            tonic::Code::FailedPrecondition,
            "TOO_MANY_BREAKS",
            format!(
                "these records differ from the ledger's {partner} transactions of {cycle} in {n} places \
                 (at most {} are kept): is it the right file and the right cycle? Nothing was stored",
                crate::store::reconciliation::MAX_BREAKS
            ),
        )),
        ReconReply::BeforeFirstCycle(first) => Err(ServiceError::refused(
            tonic::Code::FailedPrecondition,
            "BEFORE_FIRST_CYCLE",
            match first {
                Some(f) => format!(
                    "cycle {cycle} precedes the coalition's first cycle {f}: the ledger has nothing \
                     to match; nothing was stored"
                ),
                None => format!(
                    "cycle {cycle} cannot be reconciled: no transaction has been accepted yet and no \
                     clearing.first_cycle is set; nothing was stored"
                ),
            },
        )),
        ReconReply::Reports(r) => r.first().map(report_pb).ok_or_else(|| {
            ServiceError::Store(crate::store::StoreError::Corrupt(format!(
                "the reconciliation of {partner} for {cycle} was not stored"
            )))
        }),
        _ => Err(ServiceError::Store(crate::store::StoreError::Corrupt(
            "unexpected reply".into(),
        ))),
    }
}

/// `SubmitPartnerRecords`: the calling partner's records, read part by part.
pub async fn submit_records(
    shared: &Shared,
    partner: &str,
    mut parts: Streaming<pb::PartnerRecords>,
) -> Result<pb::Reconciliation, ServiceError> {
    let mut cycle_text: Option<String> = None;
    let mut records = Vec::new();
    let mut malformed = Vec::new();
    let mut position: u64 = 0;
    while let Some(part) = parts
        .message()
        .await
        .map_err(|e| ServiceError::from_stream("records", e))?
    {
        match &cycle_text {
            None => cycle_text = Some(part.cycle.clone()),
            Some(c) if *c != part.cycle => {
                return Err(ServiceError::field(
                    "cycle",
                    "MIXED_CYCLES",
                    format!(
                        "every part names the same cycle: the first named {c:?}, a later one {:?}",
                        part.cycle
                    ),
                ));
            }
            Some(_) => {}
        }
        for r in &part.records {
            position += 1;
            if position as usize > MAX_RECORDS {
                return Err(ServiceError::field(
                    "records",
                    "TOO_MANY_RECORDS",
                    format!("at most {MAX_RECORDS} records in one submission"),
                ));
            }
            match reconcile::checked(
                &r.transaction_id,
                &r.kind,
                &r.member_id,
                &r.points.to_string(),
                &r.purchase_amount,
            ) {
                Ok(rec) => records.push((position, rec)),
                Err(message) => malformed.push(LineError {
                    line: position,
                    message: format!("record {position}: {message}"),
                }),
            }
        }
    }
    let cycle_text = cycle_text.ok_or_else(|| {
        ServiceError::field(
            "records",
            "EMPTY",
            "send at least one part naming the cycle",
        )
    })?;
    let cycle = crate::services::validate::cycle("cycle", &cycle_text)?;
    closed(shared, cycle)?;
    let out = store_submission(
        shared,
        Submission {
            cycle: cycle.to_string(),
            partner: partner.to_string(),
            source: "partner",
            by: format!("partner/{partner}"),
            at: shared.clock.now(),
            records,
            malformed,
            first_cycle: shared.config.clearing.first_cycle,
        },
    )
    .await?;
    tracing::info!(%partner, %cycle, matched = out.matched, open_breaks = out.open_breaks, "partner records reconciled");
    Ok(out)
}

/// `ReconcilePartnerFile`: a partner's CSV, loaded by finance.
pub async fn reconcile_file(
    shared: &Shared,
    by: String,
    mut chunks: Streaming<pb::PartnerFileChunk>,
) -> Result<pb::Reconciliation, ServiceError> {
    let mut head: Option<(String, String)> = None;
    let mut data = Vec::new();
    while let Some(c) = chunks
        .message()
        .await
        .map_err(|e| ServiceError::from_stream("data", e))?
    {
        if head.is_none() {
            head = Some((c.cycle.clone(), c.partner.clone()));
        }
        if data.len() + c.data.len() > MAX_FILE_BYTES {
            return Err(ServiceError::field(
                "data",
                "FILE_TOO_LARGE",
                format!("at most {} MiB; split the file", MAX_FILE_BYTES >> 20),
            ));
        }
        data.extend_from_slice(&c.data);
    }
    let (cycle_text, partner) = head.ok_or_else(|| {
        ServiceError::field(
            "data",
            "EMPTY",
            "send the file, the first chunk naming cycle and partner",
        )
    })?;
    let cycle = crate::services::validate::cycle("cycle", &cycle_text)?;
    partner_known(shared, &partner)?;
    closed(shared, cycle)?;
    let text = String::from_utf8(data).map_err(|e| {
        ServiceError::field(
            "data",
            "NOT_UTF8",
            format!(
                "the file is not UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    // A line of the file holding a control character is no partner's record: the file is
    // refused whole, naming the line, as a text field of any request is.
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Err(r) = coalition_proto::codec::check_text(|| format!("data line {}", n + 1), line)
        {
            return Err(ServiceError::field(
                "data",
                coalition_proto::codec::CONTROL_CHARACTER,
                format!("line {}: {}", n + 1, r.message),
            ));
        }
    }
    if text.trim().is_empty() {
        return Err(ServiceError::field(
            "data",
            "EMPTY",
            format!(
                "the file is empty; send the partner's CSV, its first line {}",
                reconcile::HEADER.join(",")
            ),
        ));
    }
    let (records, malformed) = reconcile::parse_csv(&text);
    // A file whose header is not ours is not a report of no records: refuse it whole, so that
    // the partner's last stored report stands.
    if let Some(e) = malformed.iter().find(|e| e.line == 1) {
        return Err(ServiceError::field("data", "BAD_HEADER", e.to_string()));
    }
    let out = store_submission(
        shared,
        Submission {
            cycle: cycle.to_string(),
            partner: partner.clone(),
            source: "file",
            by,
            at: shared.clock.now(),
            records,
            malformed,
            first_cycle: shared.config.clearing.first_cycle,
        },
    )
    .await?;
    tracing::info!(%partner, %cycle, matched = out.matched, open_breaks = out.open_breaks, "partner file reconciled");
    Ok(out)
}

/// The stored reconciliations of a cycle.
pub async fn list(
    shared: &Shared,
    r: &pb::ReconciliationsRequest,
) -> Result<Vec<Report>, ServiceError> {
    let cycle = crate::services::validate::cycle("cycle", &r.cycle)?;
    let partner = (!r.partner.is_empty()).then(|| r.partner.clone());
    match shared
        .store
        .reconciliation(ReconCall::List {
            cycle: cycle.to_string(),
            partner,
        })
        .await?
    {
        ReconReply::Reports(r) => Ok(r),
        _ => Err(ServiceError::Store(crate::store::StoreError::Corrupt(
            "unexpected reply".into(),
        ))),
    }
}

/// Marks a break resolved.
pub async fn resolve(
    shared: &Shared,
    by: String,
    r: &pb::ResolveBreakRequest,
) -> Result<pb::ReconciliationBreak, ServiceError> {
    let cycle = crate::services::validate::cycle("cycle", &r.cycle)?;
    let note = r.note.trim();
    if note.is_empty() {
        return Err(ServiceError::field(
            "note",
            "NOTE_REQUIRED",
            "say why the break is resolved (e.g. \"re-sent by the partner\", \"partner's error\")",
        ));
    }
    if note.chars().count() > MAX_NOTE {
        return Err(ServiceError::field(
            "note",
            "NOTE_TOO_LONG",
            format!("at most {MAX_NOTE} characters"),
        ));
    }
    match shared
        .store
        .reconciliation(ReconCall::Resolve {
            cycle: cycle.to_string(),
            partner: r.partner.clone(),
            id: r.break_id,
            note: note.to_string(),
            by,
            at: shared.clock.now(),
        })
        .await?
    {
        ReconReply::Resolved(Some(b)) => Ok(break_pb(&b)),
        ReconReply::Resolved(None) => Err(ServiceError::NotFound {
            reason: "UNKNOWN_BREAK",
            message: format!(
                "{} has no break {} in cycle {cycle}; list them with `clearing breaks`",
                r.partner, r.break_id
            ),
        }),
        _ => Err(ServiceError::Store(crate::store::StoreError::Corrupt(
            "unexpected reply".into(),
        ))),
    }
}

/// Finalizes a settlement, refusing open breaks unless finance accepts them with a reason.
pub async fn finalize(
    shared: &Shared,
    by: String,
    r: &pb::FinalizeSettlementRequest,
) -> Result<crate::store::clearing::Stored, ServiceError> {
    let cycle = crate::services::validate::cycle("cycle", &r.cycle)?;
    let reason = r.reason.trim();
    if r.accept_breaks && reason.is_empty() {
        return Err(ServiceError::field(
            "reason",
            "REASON_REQUIRED",
            "say why the cycle is finalized with open breaks; the reason is kept with the settlement",
        ));
    }
    if reason.chars().count() > MAX_NOTE {
        return Err(ServiceError::field(
            "reason",
            "REASON_TOO_LONG",
            format!("at most {MAX_NOTE} characters"),
        ));
    }
    let accept = r.accept_breaks.then(|| (reason.to_string(), by));
    match shared
        .store
        .reconciliation(ReconCall::Finalize {
            cycle,
            now: shared.clock.now(),
            accept,
        })
        .await?
    {
        ReconReply::Finalized(Finalized::Done(s)) => Ok(*s),
        ReconReply::Finalized(Finalized::NoSettlement) => Err(ServiceError::NotFound {
            reason: "UNKNOWN_SETTLEMENT",
            message: format!(
                "cycle {cycle} has no settlement to finalize; run clearing for it first"
            ),
        }),
        ReconReply::Finalized(Finalized::OpenBreaks(open)) => {
            let mut by_partner: std::collections::BTreeMap<&str, usize> = Default::default();
            for b in &open {
                *by_partner.entry(b.partner.as_str()).or_default() += 1;
            }
            let list: Vec<String> = by_partner
                .iter()
                .map(|(p, n)| format!("{p}: {n}"))
                .collect();
            Err(ServiceError::refused(
                tonic::Code::FailedPrecondition,
                "OPEN_BREAKS",
                format!(
                    "cycle {cycle} has {} unresolved reconciliation break(s) ({}); resolve them \
                     (`clearing breaks`, `clearing resolve`) or finalize with --accept-breaks and a reason",
                    open.len(),
                    list.join(", ")
                ),
            ))
        }
        _ => Err(ServiceError::Store(crate::store::StoreError::Corrupt(
            "unexpected reply".into(),
        ))),
    }
}
