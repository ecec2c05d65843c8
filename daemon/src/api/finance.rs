//! The finance service: clearing runs, settlements, statements, exports. Finance certificates only.

use super::reconcile;
use crate::clock::rfc3339;
use crate::services::clearing::{run, stored};
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::services::validate::cycle as parse_cycle;
use crate::store::clearing::{Status, Stored};
use chrono::NaiveDate;
use coalition_clearing::export;
use coalition_proto::v1 as pb;
use coalition_proto::v1::finance_service_server::FinanceService;
use std::collections::BTreeMap;
use tonic::{Request, Response, Status as GrpcStatus};

/// Implements `coalition.v1.FinanceService`.
pub struct FinanceApi {
    shared: Shared,
}

impl FinanceApi {
    /// A service over the shared state.
    pub fn new(shared: Shared) -> FinanceApi {
        FinanceApi { shared }
    }
}

fn status_pb(s: Status) -> pb::SettlementStatus {
    match s {
        Status::Draft => pb::SettlementStatus::Draft,
        Status::Final => pb::SettlementStatus::Final,
    }
}

fn position_pb(p: &coalition_clearing::Position) -> pb::Position {
    pb::Position {
        participant: p.participant.clone(),
        receivable: p.receivable.to_string(),
        payable: p.payable.to_string(),
        fees: p.fees.to_string(),
        net_exact: p.net_exact.to_string(),
        net: p.net.to_string(),
    }
}

fn cell_pb(c: &coalition_clearing::Cell) -> pb::GrossCell {
    pb::GrossCell {
        issuer: c.issuer.clone(),
        redeemer: c.redeemer.clone(),
        points: c.points,
        allocations: c.allocations,
        value: c.value.to_string(),
    }
}

/// A stored settlement on the wire.
pub fn settlement_pb(s: &Stored) -> pb::Settlement {
    let st = &s.settlement;
    let t = &st.totals;
    pb::Settlement {
        cycle: st.cycle.to_string(),
        status: status_pb(s.status) as i32,
        currency: st.currency.clone(),
        digest: st.digest.clone(),
        previous_digest: st.previous_digest.clone(),
        ledger_head: st.ledger_head.clone(),
        seal: st.seal.clone(),
        gross: st.gross.iter().map(cell_pb).collect(),
        self_redemptions: st.self_redemptions.iter().map(cell_pb).collect(),
        responses: vec![],
        fees: st
            .fees
            .iter()
            .map(|f| pb::FeeLine {
                issuer: f.issuer.clone(),
                points: f.points,
                fee_rate: f.fee_rate.to_string(),
                value: f.value.to_string(),
            })
            .collect(),
        positions: st.positions.iter().map(position_pb).collect(),
        payments: st
            .payments
            .iter()
            .map(|p| pb::Payment {
                participant: p.participant.clone(),
                direction: match p.direction {
                    coalition_clearing::Direction::PaysIn => "pays_in".into(),
                    coalition_clearing::Direction::PaidOut => "paid_out".into(),
                },
                amount: p.amount.to_string(),
            })
            .collect(),
        totals: Some(pb::ControlTotals {
            transactions: t.counts.transactions,
            earned: t.counts.earned,
            burned: t.counts.burned,
            burns_reversed: t.counts.burns_reversed,
            earns_reversed: t.counts.earns_reversed,
            expired: t.counts.expired,
            allocations: t.allocations,
            gross_value: t.gross_value.to_string(),
            self_redemption_value: t.self_redemption_value.to_string(),
            fees: t.fees.to_string(),
            settled: t.settled.to_string(),
        }),
        created_at: rfc3339(s.created_at),
        finalized_at: s.finalized_at.map(rfc3339).unwrap_or_default(),
        accepted: s.accepted.as_ref().map(reconcile::accepted_pb),
    }
}

/// Who is calling (`role/name`), for the record.
fn caller<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<coalition_certs::Identity>()
        .map(|i| i.to_string())
        .unwrap_or_default()
}

/// A partner's answer to a settlement on the wire.
pub fn answer_pb(a: &crate::store::responses::Answer) -> pb::SettlementResponse {
    pb::SettlementResponse {
        cycle: a.cycle.clone(),
        partner: a.partner.clone(),
        state: a.state.clone(),
        reason: a.reason.clone(),
        answered_by: a.by.clone(),
        answered_at: rfc3339(a.at),
        digest: a.digest.clone(),
    }
}

/// The coalition's settlement account, which pays out and is paid into.
fn settlement_account(shared: &Shared) -> Result<export::Account, ServiceError> {
    shared
        .config
        .clearing
        .settlement_account
        .clone()
        .ok_or_else(|| {
            ServiceError::Export(export::ExportError::NoAccount(
                "the coalition (clearing.settlement_account)".into(),
            ))
        })
}

/// When a payment file is made (RFC 3339 with the coalition's offset, as `CreDtTm`) and the
/// banking day its payments are due: the first business day after the cycle, not before today.
fn payment_dates(shared: &Shared, cycle: NaiveDate) -> Result<(String, NaiveDate), ServiceError> {
    let now = shared.clock.now();
    let local = chrono::DateTime::from_timestamp_micros(now)
        .unwrap_or_default()
        .with_timezone(&shared.config.time_zone);
    let due = shared
        .config
        .clearing
        .next_business_day(cycle, local.date_naive())
        .ok_or_else(|| {
            ServiceError::refused(
                tonic::Code::FailedPrecondition,
                "NO_BUSINESS_DAY",
                "clearing.business_days and clearing.holidays leave no banking day within a year",
            )
        })?;
    Ok((
        local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        due,
    ))
}

/// A partner's statement for a cleared cycle.
pub async fn statement(
    shared: &Shared,
    cycle: NaiveDate,
    partner: &str,
) -> Result<pb::Statement, ServiceError> {
    let s = stored(shared, cycle).await?;
    let participant = s
        .settlement
        .positions
        .iter()
        .any(|p| p.participant == partner);
    if !participant
        && partner != coalition_clearing::OPERATOR
        && !shared
            .store
            .partners()
            .await?
            .iter()
            .any(|p| p.id == partner)
    {
        return Err(ServiceError::NotFound {
            reason: "UNKNOWN_PARTNER",
            message: format!("{partner:?} is not a partner of this coalition"),
        });
    }
    // A partner that did not take part in the cycle has an empty statement at 0.00.
    let position = s
        .settlement
        .positions
        .iter()
        .find(|p| p.participant == partner)
        .cloned()
        .unwrap_or_else(|| coalition_clearing::Position {
            participant: partner.to_string(),
            receivable: Default::default(),
            payable: Default::default(),
            fees: Default::default(),
            net_exact: Default::default(),
            net: coalition_clearing::fixed_point(Default::default(), s.settlement.minor_units),
        });
    let allocations = shared.store.statement_lines(cycle, partner).await?;
    let lines = export::statement(&s.settlement, partner, &allocations);
    Ok(pb::Statement {
        cycle: cycle.to_string(),
        partner: partner.to_string(),
        status: status_pb(s.status) as i32,
        digest: s.settlement.digest.clone(),
        position: Some(position_pb(&position)),
        csv: export::statement_csv(&s.settlement, partner, &lines),
        net: export::net_of(&s.settlement, partner).to_string(),
        lines: lines
            .iter()
            .map(|l| pb::StatementLine {
                ledger_id: l.ledger_id,
                seq: l.seq,
                transaction_id: l.transaction_id.clone(),
                accepted_at: l.accepted_at.clone(),
                issuer: l.issuer.clone(),
                redeemer: l.redeemer.clone(),
                points: l.points,
                rate: l.rate.to_string(),
                value: l.value.to_string(),
                kind: l.kind.as_str().to_string(),
                signed_value: l.signed_value.to_string(),
            })
            .collect(),
    })
}

/// The points liability per issuer and month of issue (in the coalition's time zone), as of
/// `as_of`: a lot's points left by then are outstanding, or expired if its expiry had come (swept
/// or not). Outstanding points are valued at their issuer's `value_per_point` (0 if unknown).
pub fn liability(
    lots: &[crate::store::clearing::LotFate],
    tz: chrono_tz::Tz,
    as_of: i64,
    value_per_point: &BTreeMap<String, rust_decimal::Decimal>,
) -> Vec<pb::LiabilityRow> {
    let mut rows: BTreeMap<(String, String), pb::LiabilityRow> = BTreeMap::new();
    for l in lots {
        let month = chrono::DateTime::from_timestamp_micros(l.earned_at)
            .map(|t| t.with_timezone(&tz).format("%Y-%m").to_string())
            .unwrap_or_default();
        let live = l.expires_at.is_none_or(|e| as_of < e);
        let left = l.points - l.redeemed - l.reversed;
        let r = rows
            .entry((l.issuer.clone(), month.clone()))
            .or_insert_with(|| pb::LiabilityRow {
                issuer: l.issuer.clone(),
                month,
                ..Default::default()
            });
        r.issued += l.points;
        r.redeemed += l.redeemed;
        r.reversed += l.reversed;
        r.expired += if live { 0 } else { left };
        r.outstanding += if live { left } else { 0 };
    }
    rows.into_values()
        .map(|mut r| {
            let v = value_per_point.get(&r.issuer).copied().unwrap_or_default();
            r.value_per_point = coalition_clearing::exact(v).to_string();
            r.outstanding_value =
                coalition_clearing::exact(rust_decimal::Decimal::from(r.outstanding) * v)
                    .to_string();
            r
        })
        .collect()
}

#[tonic::async_trait]
impl FinanceService for FinanceApi {
    async fn get_member_balance(
        &self,
        req: Request<pb::MemberBalanceRequest>,
    ) -> Result<Response<pb::Balance>, GrpcStatus> {
        let caller = req.extensions().get::<coalition_certs::Identity>();
        Ok(Response::new(
            super::views::staff_balance(&self.shared, caller, req.get_ref()).await?,
        ))
    }

    async fn get_liability_report(
        &self,
        req: Request<pb::LiabilityReportRequest>,
    ) -> Result<Response<pb::LiabilityReport>, GrpcStatus> {
        let now = self.shared.clock.now();
        let as_of = match req.get_ref().as_of.as_str() {
            "" => now,
            day => {
                let day = parse_cycle("as_of", day)?;
                let cut =
                    self.shared.config.cycles().close(day).map_err(|e| {
                        ServiceError::field("as_of", "MALFORMED_CYCLE", e.to_string())
                    })?;
                if cut > now {
                    return Err(ServiceError::refused(
                        tonic::Code::FailedPrecondition,
                        "CUT_IN_THE_FUTURE",
                        format!("business day {day} has not closed yet; ask for a day that has"),
                    )
                    .into());
                }
                cut
            }
        };
        let lots = self
            .shared
            .store
            .lot_fates(as_of)
            .await
            .map_err(ServiceError::from)?;
        let values: BTreeMap<String, rust_decimal::Decimal> = self
            .shared
            .store
            .partners()
            .await
            .map_err(ServiceError::from)?
            .into_iter()
            .map(|p| (p.id, p.liability_value))
            .collect();
        let rows = liability(&lots, self.shared.config.time_zone, as_of, &values);
        let total: rust_decimal::Decimal = rows
            .iter()
            .filter_map(|r| r.outstanding_value.parse::<rust_decimal::Decimal>().ok())
            .sum();
        Ok(Response::new(pb::LiabilityReport {
            as_of: rfc3339(as_of),
            rows,
            total_outstanding_value: coalition_clearing::exact(total).to_string(),
            currency: self.shared.config.currency.code.to_string(),
        }))
    }

    async fn get_programme_report(
        &self,
        req: Request<pb::ProgrammeReportRequest>,
    ) -> Result<Response<pb::ProgrammeReport>, GrpcStatus> {
        Ok(Response::new(
            super::report::programme_report(&self.shared, req.get_ref(), None).await?,
        ))
    }

    async fn get_cohorts(
        &self,
        req: Request<pb::ProgrammeReportRequest>,
    ) -> Result<Response<pb::Cohorts>, GrpcStatus> {
        Ok(Response::new(
            super::report::cohorts(&self.shared, req.get_ref(), None).await?,
        ))
    }

    async fn run_clearing(
        &self,
        req: Request<pb::CycleRequest>,
    ) -> Result<Response<pb::Settlement>, GrpcStatus> {
        let cycle = parse_cycle("cycle", &req.get_ref().cycle)?;
        let s = run(&self.shared, cycle).await?;
        Ok(Response::new(settlement_pb(&s)))
    }

    async fn list_settlements(
        &self,
        req: Request<pb::ListSettlementsRequest>,
    ) -> Result<Response<pb::ListSettlementsResponse>, GrpcStatus> {
        let r = req.get_ref();
        let size = match r.page_size {
            0 => 30,
            n if n < 0 => {
                return Err(ServiceError::field(
                    "page_size",
                    "INVALID_PAGE_SIZE",
                    "must not be negative",
                )
                .into());
            }
            n => n.min(366),
        } as usize;
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_cycle("page_token", &r.page_token)?)
        };
        let mut rows = self
            .shared
            .store
            .settlements(before, size as i64 + 1)
            .await
            .map_err(ServiceError::from)?;
        let more = rows.len() > size;
        rows.truncate(size);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.settlement.cycle.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSettlementsResponse {
            settlements: rows.iter().map(settlement_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_settlement(
        &self,
        req: Request<pb::CycleRequest>,
    ) -> Result<Response<pb::Settlement>, GrpcStatus> {
        let cycle = parse_cycle("cycle", &req.get_ref().cycle)?;
        let mut s = settlement_pb(&stored(&self.shared, cycle).await?);
        s.responses = self
            .shared
            .store
            .settlement_answers(&cycle.to_string())
            .await
            .map_err(ServiceError::from)?
            .iter()
            .map(answer_pb)
            .collect();
        Ok(Response::new(s))
    }

    async fn finalize_settlement(
        &self,
        req: Request<pb::FinalizeSettlementRequest>,
    ) -> Result<Response<pb::Settlement>, GrpcStatus> {
        let s = reconcile::finalize(&self.shared, caller(&req), req.get_ref()).await?;
        tracing::info!(cycle = %s.settlement.cycle, accepted_breaks = s.accepted.as_ref().map_or(0, |a| a.breaks.len()), "settlement finalized");
        Ok(Response::new(settlement_pb(&s)))
    }

    async fn reconcile_partner_file(
        &self,
        req: Request<tonic::Streaming<pb::PartnerFileChunk>>,
    ) -> Result<Response<pb::Reconciliation>, GrpcStatus> {
        let by = caller(&req);
        Ok(Response::new(
            reconcile::reconcile_file(&self.shared, by, req.into_inner()).await?,
        ))
    }

    async fn list_reconciliations(
        &self,
        req: Request<pb::ReconciliationsRequest>,
    ) -> Result<Response<pb::Reconciliations>, GrpcStatus> {
        let reports = reconcile::list(&self.shared, req.get_ref()).await?;
        Ok(Response::new(pb::Reconciliations {
            reconciliations: reports.iter().map(reconcile::report_pb).collect(),
        }))
    }

    async fn resolve_break(
        &self,
        req: Request<pb::ResolveBreakRequest>,
    ) -> Result<Response<pb::ReconciliationBreak>, GrpcStatus> {
        Ok(Response::new(
            reconcile::resolve(&self.shared, caller(&req), req.get_ref()).await?,
        ))
    }

    async fn export_breaks(
        &self,
        req: Request<pb::ReconciliationsRequest>,
    ) -> Result<Response<pb::ExportFile>, GrpcStatus> {
        let r = req.get_ref();
        let reports = reconcile::list(&self.shared, r).await?;
        let breaks: Vec<_> = reports.into_iter().flat_map(|x| x.breaks).collect();
        let stem = if r.partner.is_empty() {
            format!("breaks-{}", r.cycle)
        } else {
            format!("breaks-{}-{}", r.cycle, r.partner)
        };
        Ok(Response::new(pb::ExportFile {
            filename: format!("{stem}.csv"),
            content_type: "text/csv".into(),
            content: coalition_clearing::reconcile::breaks_csv(&r.cycle, &breaks).into_bytes(),
        }))
    }

    async fn get_statement(
        &self,
        req: Request<pb::StatementRequest>,
    ) -> Result<Response<pb::Statement>, GrpcStatus> {
        let r = req.get_ref();
        let cycle = parse_cycle("cycle", &r.cycle)?;
        Ok(Response::new(
            statement(&self.shared, cycle, &r.partner).await?,
        ))
    }

    async fn export_settlement(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::ExportFile>, GrpcStatus> {
        let r = req.get_ref();
        let cycle = parse_cycle("cycle", &r.cycle)?;
        let s = stored(&self.shared, cycle).await?;
        let st = &s.settlement;
        let stem = format!("settlement-{cycle}");
        let (filename, content_type, content) = match pb::ExportFormat::try_from(r.format)
            .unwrap_or_default()
        {
            pb::ExportFormat::Csv => (
                format!("{stem}.csv"),
                "text/csv",
                export::settlement_csv(st, s.accepted.as_ref()),
            ),
            pb::ExportFormat::Json => (
                format!("{stem}.json"),
                "application/json",
                export::settlement_json(st, s.accepted.as_ref()),
            ),
            pb::ExportFormat::Pain001 => {
                if s.status != Status::Final {
                    return Err(ServiceError::refused(
                            tonic::Code::FailedPrecondition,
                            "SETTLEMENT_NOT_FINAL",
                            format!(
                                "the settlement of {cycle} is a draft: finalize it (FinalizeSettlement) before making its payment file"
                            ),
                        )
                        .into());
                }
                let debtor = settlement_account(&self.shared)?;
                let mut accounts: BTreeMap<String, export::Account> = self
                    .shared
                    .store
                    .partners()
                    .await
                    .map_err(ServiceError::from)?
                    .into_iter()
                    .filter_map(|p| p.account.map(|a| (p.id, a)))
                    .collect();
                if let Some(op) = &self.shared.config.clearing.operator_account {
                    accounts.insert(coalition_clearing::OPERATOR.to_string(), op.clone());
                }
                let (created, due) = payment_dates(&self.shared, cycle)?;
                let xml = export::pain001(st, &debtor, &accounts, &created, due)
                    .map_err(ServiceError::from)?;
                (format!("{stem}.pain.001.xml"), "application/xml", xml)
            }
            pb::ExportFormat::Payins => {
                let debtor = settlement_account(&self.shared)?;
                let (_, due) = payment_dates(&self.shared, cycle)?;
                (
                    format!("{stem}.payins.csv"),
                    "text/csv",
                    export::pay_ins_csv(st, due, &debtor),
                )
            }
            pb::ExportFormat::Unspecified => {
                return Err(ServiceError::field(
                    "format",
                    "MISSING_FORMAT",
                    "choose CSV, JSON, PAIN001 or PAYINS",
                )
                .into());
            }
        };
        Ok(Response::new(pb::ExportFile {
            filename,
            content_type: content_type.into(),
            content: content.into_bytes(),
        }))
    }
}
