//! The finance service: clearing runs, settlements, statements, exports. Finance certificates only.

use super::Shared;
use super::error::ApiError;
use crate::clock::rfc3339;
use crate::store::clearing::{Plan, Status, Stored};
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

/// Parses a cycle field (`YYYY-MM-DD`, within the calendar).
pub fn parse_cycle(field: &'static str, s: &str) -> Result<NaiveDate, ApiError> {
    super::validate::cycle(field, s)
}

/// The clearing plan for `cycle` under this daemon's config.
pub fn plan(shared: &Shared, cycle: NaiveDate, skip_if_busy: bool) -> Plan {
    shared
        .config
        .clearing_rules()
        .plan(cycle, shared.clock.now(), skip_if_busy)
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
        gross: st.gross.iter().map(cell_pb).collect(),
        self_redemptions: st.self_redemptions.iter().map(cell_pb).collect(),
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
    }
}

async fn stored(shared: &Shared, cycle: NaiveDate) -> Result<Stored, ApiError> {
    shared
        .store
        .settlement(cycle)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            reason: "UNKNOWN_SETTLEMENT",
            message: format!("cycle {cycle} has no settlement yet; run clearing for it first"),
        })
}

/// A partner's statement for a cleared cycle.
pub async fn statement(
    shared: &Shared,
    cycle: NaiveDate,
    partner: &str,
) -> Result<pb::Statement, ApiError> {
    let s = stored(shared, cycle).await?;
    let position = s
        .settlement
        .positions
        .iter()
        .find(|p| p.participant == partner)
        .ok_or_else(|| ApiError::NotFound {
            reason: "UNKNOWN_PARTNER",
            message: format!("{partner:?} is not a participant of the settlement of {cycle}"),
        })?;
    let lines = shared.store.statement_lines(cycle, partner).await?;
    Ok(pb::Statement {
        cycle: cycle.to_string(),
        partner: partner.to_string(),
        status: status_pb(s.status) as i32,
        digest: s.settlement.digest.clone(),
        position: Some(position_pb(position)),
        csv: export::statement_csv(&s.settlement, partner, &lines),
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
            })
            .collect(),
    })
}

/// Runs the clearing of one cycle (finance's way: waits for a run in progress).
pub async fn run(shared: &Shared, cycle: NaiveDate) -> Result<Stored, ApiError> {
    let s = shared
        .store
        .run_clearing(&plan(shared, cycle, false))
        .await?;
    // A run that may wait is never skipped; if a backend ever did, say so rather than panic.
    s.ok_or_else(|| {
        ApiError::Store(crate::store::StoreError::Unavailable(
            "another daemon is clearing; try again".into(),
        ))
    })
}

/// The points liability per issuer and month of issue (in the coalition's time zone), at `now`.
pub fn liability(
    lots: &[crate::store::clearing::LotFate],
    tz: chrono_tz::Tz,
    now: i64,
) -> Vec<pb::LiabilityRow> {
    let mut rows: BTreeMap<(String, String), pb::LiabilityRow> = BTreeMap::new();
    for l in lots {
        let month = chrono::DateTime::from_timestamp_micros(l.earned_at)
            .map(|t| t.with_timezone(&tz).format("%Y-%m").to_string())
            .unwrap_or_default();
        let live = l.expires_at.is_none_or(|e| now < e);
        let r = rows
            .entry((l.issuer.clone(), month.clone()))
            .or_insert_with(|| pb::LiabilityRow {
                issuer: l.issuer.clone(),
                month,
                ..Default::default()
            });
        r.issued += l.points;
        // points = left + reversed + expired (swept) + net allocations
        r.redeemed += l.points - l.points_left - l.reversed - l.expired;
        r.reversed += l.reversed;
        r.expired += l.expired + if live { 0 } else { l.points_left };
        r.outstanding += if live { l.points_left } else { 0 };
    }
    rows.into_values().collect()
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
        _req: Request<pb::LiabilityReportRequest>,
    ) -> Result<Response<pb::LiabilityReport>, GrpcStatus> {
        let lots = self
            .shared
            .store
            .lot_fates()
            .await
            .map_err(ApiError::from)?;
        let now = self.shared.clock.now();
        Ok(Response::new(pb::LiabilityReport {
            as_of: rfc3339(now),
            rows: liability(&lots, self.shared.config.time_zone, now),
        }))
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
                return Err(ApiError::field(
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
            .map_err(ApiError::from)?;
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
        Ok(Response::new(settlement_pb(
            &stored(&self.shared, cycle).await?,
        )))
    }

    async fn finalize_settlement(
        &self,
        req: Request<pb::CycleRequest>,
    ) -> Result<Response<pb::Settlement>, GrpcStatus> {
        let cycle = parse_cycle("cycle", &req.get_ref().cycle)?;
        let s = self
            .shared
            .store
            .finalize(cycle, self.shared.clock.now())
            .await
            .map_err(ApiError::from)?;
        let s = s.ok_or_else(|| ApiError::NotFound {
            reason: "UNKNOWN_SETTLEMENT",
            message: format!(
                "cycle {cycle} has no settlement to finalize; run clearing for it first"
            ),
        })?;
        Ok(Response::new(settlement_pb(&s)))
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
        let (filename, content_type, content) =
            match pb::ExportFormat::try_from(r.format).unwrap_or_default() {
                pb::ExportFormat::Csv => (
                    format!("{stem}.csv"),
                    "text/csv",
                    export::settlement_csv(st),
                ),
                pb::ExportFormat::Json => (
                    format!("{stem}.json"),
                    "application/json",
                    export::settlement_json(st),
                ),
                pb::ExportFormat::Pain001 => {
                    let c = &self.shared.config;
                    let debtor = c.clearing.settlement_account.clone().ok_or_else(|| {
                        ApiError::Export(export::ExportError::NoAccount(
                            "the coalition (clearing.settlement_account)".into(),
                        ))
                    })?;
                    let mut accounts: BTreeMap<String, export::Account> = c
                        .partners
                        .values()
                        .filter_map(|p| p.account.clone().map(|a| (p.id.clone(), a)))
                        .collect();
                    if let Some(op) = &c.clearing.operator_account {
                        accounts.insert(coalition_clearing::OPERATOR.to_string(), op.clone());
                    }
                    let now = self.shared.clock.now();
                    let created = chrono::DateTime::from_timestamp_micros(now).unwrap_or_default();
                    let xml = export::pain001(
                        st,
                        &debtor,
                        &accounts,
                        &created.format("%Y-%m-%dT%H:%M:%S").to_string(),
                        created.date_naive().succ_opt().unwrap_or(cycle),
                    )
                    .map_err(ApiError::from)?;
                    (format!("{stem}.pain.001.xml"), "application/xml", xml)
                }
                pb::ExportFormat::Unspecified => {
                    return Err(ApiError::field(
                        "format",
                        "MISSING_FORMAT",
                        "choose CSV, JSON or PAIN001",
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
