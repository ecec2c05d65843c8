//! The partner service: Earn, Burn, the two reversals, and the reads.

use super::caller::CallerPartner;
use super::wire::{
    burn_op, earn_canonical, hold_to_pb, parts_to_pb, receipt_to_pb, reverse_burn_op,
    reverse_earn_op, voucher_to_pb,
};
use crate::clock::rfc3339;
use crate::config::Partner;
use crate::ledger::Receipt;
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::services::{validate, writes};
use crate::store::{Op, TxnRecord};
use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_server::PartnerService;
use tonic::{Request, Response, Status};

/// Implements `coalition.v1.PartnerService`.
pub struct PartnerApi {
    pub(super) shared: Shared,
}

impl PartnerApi {
    /// A service over the shared state.
    pub fn new(shared: Shared) -> PartnerApi {
        PartnerApi { shared }
    }

    /// The caller's answer to a final settlement: only for itself, only once it is final.
    async fn answer(
        &self,
        req: &Request<pb::SettlementAnswerRequest>,
        state: &str,
    ) -> Result<pb::SettlementResponse, ServiceError> {
        let partner = self.caller(req)?;
        let r = req.get_ref();
        let cycle = crate::services::validate::cycle("cycle", &r.cycle)?;
        let reason = r.reason.trim();
        if state == "disputed" && reason.is_empty() {
            return Err(ServiceError::field(
                "reason",
                "REASON_REQUIRED",
                "say what is wrong with the settlement (e.g. \"our tills show 12 burns, not 13\")",
            ));
        }
        if reason.chars().count() > 500 {
            return Err(ServiceError::field(
                "reason",
                "REASON_TOO_LONG",
                "at most 500 characters",
            ));
        }
        let s = crate::services::clearing::stored(&self.shared, cycle).await?;
        if s.status != crate::store::clearing::Status::Final {
            return Err(ServiceError::refused(
                tonic::Code::FailedPrecondition,
                "SETTLEMENT_NOT_FINAL",
                format!(
                    "the settlement of {cycle} is a draft and may still change; answer it once \
                     finance has finalized it"
                ),
            ));
        }
        let a = crate::store::responses::Answer {
            cycle: cycle.to_string(),
            partner: partner.id.clone(),
            state: state.to_string(),
            reason: reason.to_string(),
            by: format!("partner/{}", partner.id),
            digest: s.settlement.digest.clone(),
            at: self.shared.clock.now(),
        };
        let out = self.shared.store.answer_settlement(&a).await?;
        tracing::info!(partner = %partner.id, %cycle, state, "settlement answered");
        Ok(super::finance::answer_pb(&out))
    }

    pub(super) fn caller<T>(&self, req: &Request<T>) -> Result<&Partner, ServiceError> {
        let id = req.extensions().get::<CallerPartner>().ok_or_else(|| {
            ServiceError::Unauthenticated("no partner identity on this call".into())
        })?;
        self.shared.config.partners.get(&id.0).ok_or_else(|| {
            ServiceError::Unauthenticated(format!("partner {:?} is not configured", id.0))
        })
    }

    /// A member's programme state and the campaigns in force at `now`, as an earn at `partner`
    /// would see them.
    async fn programme_state(
        &self,
        member: &str,
        partner: &str,
        now: crate::ledger::Micros,
    ) -> Result<
        (
            crate::programme::MemberProgramme,
            Vec<crate::programme::Campaign>,
        ),
        ServiceError,
    > {
        use crate::store::programme::{ProgrammeCall, ProgrammeReply};
        let call = ProgrammeCall::State {
            member: member.to_string(),
            partner: partner.to_string(),
            ladder: self.shared.config.ladder.clone(),
            now,
        };
        match self.shared.store.programme(call).await? {
            ProgrammeReply::State(m, c) => Ok((m, c)),
            _ => Err(ServiceError::mismatched()),
        }
    }

    /// What `member` has held at `now` (see [`super::views::held`]).
    async fn held(
        &self,
        member: &str,
        now: crate::ledger::Micros,
    ) -> Result<(i64, i64), ServiceError> {
        super::views::held(&self.shared, member, now).await
    }

    /// One of `partner`'s holds by its authorization id or the id of the call that closed it.
    async fn hold(&self, partner: &str, id: &str) -> Result<Option<HoldRecord>, ServiceError> {
        use crate::store::holds::{HoldsCall, HoldsReply};
        let call = HoldsCall::One {
            partner: partner.to_string(),
            id: id.to_string(),
        };
        match self.shared.store.holds(call).await? {
            HoldsReply::One(h) => Ok(h.map(|h| *h)),
            _ => Err(ServiceError::mismatched()),
        }
    }
}

/// The answer of an authorization or a void.
fn hold_response(receipt: &Receipt) -> Result<pb::HoldResponse, ServiceError> {
    let view = receipt.hold.as_ref().ok_or_else(ServiceError::mismatched)?;
    Ok(pb::HoldResponse {
        hold: Some(hold_to_pb(view, receipt.ledger_id, &receipt.member_id)),
        balance_after: receipt.balance_after,
    })
}

use crate::store::holds::HoldRecord;

fn transaction_to_pb(t: &TxnRecord) -> pb::Transaction {
    pb::Transaction {
        hold: None,
        receipt: Some(receipt_to_pb(&t.receipt, &t.partner)),
        reversed_points: t.reversed_points,
        purchase: t.purchase.as_ref().map(|(amount, currency)| pb::Money {
            amount: amount.clone(),
            currency: currency.clone(),
        }),
    }
}

const DEFAULT_PAGE: i32 = 50;
const MAX_PAGE: i32 = 500;

fn page_token(member: &str, at: i64, id: i64) -> String {
    hex::encode(format!("v1:{at}:{id}:{member}"))
}

fn parse_page_token(token: &str, member: &str) -> Result<Option<(i64, i64)>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ServiceError::field(
            "page_token",
            "INVALID_PAGE_TOKEN",
            "is not a token from a previous page of this member's activity",
        )
    };
    let raw = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = raw.splitn(4, ':');
    let (v, at, id, m) = (parts.next(), parts.next(), parts.next(), parts.next());
    if v != Some("v1") || m != Some(member) {
        return Err(bad());
    }
    let at = at.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let id = id.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok(Some((at, id)))
}

#[tonic::async_trait]
impl PartnerService for PartnerApi {
    type IngestBatchStream = super::ingest::IngestStream;
    type WatchEventsStream = super::events::EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let partner = self.caller(&req)?.id.clone();
        Ok(Response::new(
            super::events::watch(&self.shared, &partner, req.get_ref()).await?,
        ))
    }

    async fn submit_partner_records(
        &self,
        req: Request<tonic::Streaming<pb::PartnerRecords>>,
    ) -> Result<Response<pb::Reconciliation>, Status> {
        let partner = self.caller(&req)?.id.clone();
        Ok(Response::new(
            super::reconcile::submit_records(&self.shared, &partner, req.into_inner()).await?,
        ))
    }

    async fn ingest_batch(
        &self,
        req: Request<tonic::Streaming<pb::IngestLine>>,
    ) -> Result<Response<Self::IngestBatchStream>, Status> {
        let partner = self.caller(&req)?.clone();
        Ok(Response::new(super::ingest::ingest(
            self.shared.clone(),
            partner,
            req.into_inner(),
        )))
    }

    async fn earn(
        &self,
        req: Request<pb::EarnRequest>,
    ) -> Result<Response<pb::EarnResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        let receipt = match super::wire::earn_op(self.shared.config.currency, partner, r) {
            Ok((op, canonical)) => {
                writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?
            }
            Err(refused) => {
                writes::replay(
                    &self.shared,
                    partner,
                    &r.transaction_id,
                    earn_canonical(r),
                    refused,
                )
                .await?
            }
        };
        Ok(Response::new(pb::EarnResponse {
            receipt: Some(receipt_to_pb(&receipt, &partner.id)),
        }))
    }
    async fn burn(
        &self,
        req: Request<pb::BurnRequest>,
    ) -> Result<Response<pb::BurnResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        let (op, canonical) = burn_op(r)?;
        let receipt =
            writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?;
        Ok(Response::new(pb::BurnResponse {
            receipt: Some(receipt_to_pb(&receipt, &partner.id)),
            hold: None,
        }))
    }

    async fn authorize_burn(
        &self,
        req: Request<pb::AuthorizeBurnRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("transaction_id", &r.transaction_id)?;
        validate::id("member_id", &r.member_id)?;
        let points = validate::burn_points(r.points)?;
        let config = &self.shared.config;
        let seconds = match r.hold_seconds {
            0 => config.default_hold_seconds,
            s if s < 0 || s as u64 > config.max_hold_seconds => {
                return Err(ServiceError::field(
                    "hold_seconds",
                    "HOLD_TOO_LONG",
                    format!(
                        "a hold runs 1..={} seconds (0 for the default of {})",
                        config.max_hold_seconds, config.default_hold_seconds
                    ),
                )
                .into());
            }
            s => s as u64,
        };
        // The hold's length joins the content only as asked (0 = the default, whatever it is).
        let canonical = format!("authorize\n{}\n{points}\n{}", r.member_id, r.hold_seconds);
        let op = Op::Authorize {
            member: r.member_id.clone(),
            points,
            hold_for: seconds as i64 * 1_000_000,
        };
        let receipt =
            writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?;
        Ok(Response::new(hold_response(&receipt)?))
    }

    async fn capture_burn(
        &self,
        req: Request<pb::CaptureBurnRequest>,
    ) -> Result<Response<pb::BurnResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("transaction_id", &r.transaction_id)?;
        validate::id("authorization_id", &r.authorization_id)?;
        let points = validate::reversal_points(r.points)?;
        let canonical = format!("capture\n{}\n{points}", r.authorization_id);
        let op = Op::Capture {
            authorization: r.authorization_id.clone(),
            points,
        };
        let receipt =
            writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?;
        let hold = receipt
            .hold
            .as_ref()
            .map(|v| hold_to_pb(v, receipt.ledger_id, &receipt.member_id));
        Ok(Response::new(pb::BurnResponse {
            receipt: Some(receipt_to_pb(&receipt, &partner.id)),
            hold,
        }))
    }

    async fn void_burn(
        &self,
        req: Request<pb::VoidBurnRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("transaction_id", &r.transaction_id)?;
        validate::id("authorization_id", &r.authorization_id)?;
        let canonical = format!("void\n{}", r.authorization_id);
        let op = Op::Void {
            authorization: r.authorization_id.clone(),
        };
        let receipt =
            writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?;
        Ok(Response::new(hold_response(&receipt)?))
    }

    async fn reverse_earn(
        &self,
        req: Request<pb::ReverseEarnRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        let (op, canonical) = reverse_earn_op(r)?;
        let receipt =
            writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?;
        Ok(Response::new(pb::ReverseResponse {
            receipt: Some(receipt_to_pb(&receipt, &partner.id)),
        }))
    }

    async fn reverse_burn(
        &self,
        req: Request<pb::ReverseBurnRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        let (op, canonical) = reverse_burn_op(r)?;
        let receipt =
            writes::submit(&self.shared, partner, &r.transaction_id, op, canonical).await?;
        Ok(Response::new(pb::ReverseResponse {
            receipt: Some(receipt_to_pb(&receipt, &partner.id)),
        }))
    }

    async fn get_balance(
        &self,
        req: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        self.caller(&req)?;
        let r = req.get_ref();
        validate::id("member_id", &r.member_id)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        let now = self.shared.clock.now();
        let m = self
            .shared
            .store
            .member_at(&r.member_id, now)
            .await
            .map_err(ServiceError::from)?;
        let held = self.held(&r.member_id, now).await?;
        Ok(Response::new(super::views::balance(
            &r.member_id,
            m.as_ref(),
            now,
            super::views::Audience::Partner,
            held,
        )))
    }

    async fn get_member(
        &self,
        req: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("member_id", &r.member_id)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        let now = self.shared.clock.now();
        let ledger = self
            .shared
            .store
            .member_at(&r.member_id, now)
            .await
            .map_err(ServiceError::from)?;
        let held = self.held(&r.member_id, now).await?;
        let balance = super::views::balance(
            &r.member_id,
            ledger.as_ref(),
            now,
            super::views::Audience::Partner,
            held,
        );
        let (state, live) = self.programme_state(&r.member_id, &partner.id, now).await?;
        // A partner sees the programme where it takes part: campaigns in force that apply at it,
        // its own stamp card and vouchers — not where else the member shops.
        let here = |id: &str| {
            live.iter().any(|c| {
                c.id == id
                    && ((c.partners.is_empty() && c.partner_kinds.is_empty())
                        || c.partners.contains(&partner.id)
                        || c.partner_kinds.contains(&partner.kind))
            })
        };
        let mut m = pb::Member {
            member_id: r.member_id.clone(),
            balance: balance.points,
            held_points: balance.held_points,
            available_points: balance.available_points,
            debt: balance.debt,
            next_expiry_points: balance.next_expiry_points,
            next_expiry_at: balance.next_expiry,
            campaigns: state
                .granted
                .iter()
                .filter(|(c, p)| **p != 0 && here(c))
                .map(|(c, p)| pb::CampaignUse {
                    campaign_id: c.clone(),
                    points: *p,
                })
                .collect(),
            ..Default::default()
        };
        for (p, card) in state.cards.iter().filter(|(p, _)| **p == partner.id) {
            if let Some(rule) = self
                .shared
                .config
                .partners
                .get(p)
                .and_then(|x| x.stamps.as_ref())
            {
                m.stamp_cards.push(pb::StampCard {
                    partner: p.clone(),
                    stamps: card.stamps,
                    every: rule.every as i64,
                    restarts_at: if card.stamps > 0 {
                        rfc3339(card.started_at + rule.within_days as i64 * crate::programme::DAY)
                    } else {
                        String::new()
                    },
                });
            }
        }
        m.vouchers = state
            .vouchers
            .iter()
            .filter(|v| v.partner == partner.id && v.redeemed_at.is_none() && v.expires_at > now)
            .map(voucher_to_pb)
            .collect();
        if let Some(l) = self.shared.config.ladder.as_ref() {
            let tier = state.tier_index().min(l.tiers.len() - 1);
            let qualifying = state.qualifying_at(l, now);
            m.tier = l.tiers[tier].name.clone();
            m.qualifying_points = qualifying;
            if let Some(next) = l.tiers.get(tier + 1) {
                m.next_tier = next.name.clone();
                m.points_to_next_tier = (next.threshold - qualifying).max(0);
            }
            if let Some(t) = state.tier.as_ref().filter(|t| t.tier > 0) {
                m.next_review_at = rfc3339(t.review_at);
                m.tier_at_review_today = l.tiers[state.review_today(l, now)].name.clone();
            }
        }
        Ok(Response::new(m))
    }

    async fn quote_earn(
        &self,
        req: Request<pb::EarnRequest>,
    ) -> Result<Response<pb::EarnQuote>, Status> {
        let partner = self.caller(&req)?;
        let mut r = req.get_ref().clone();
        if r.transaction_id.is_empty() {
            r.transaction_id = "quote".into();
        }
        let (op, _) = super::wire::earn_op(self.shared.config.currency, partner, &r)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        let Op::Earn {
            member,
            points: base,
            purchase,
            category,
        } = op
        else {
            return Err(ServiceError::refused(
                tonic::Code::Internal,
                "INTERNAL",
                "an earn validated into another operation",
            )
            .into());
        };
        let now = self.shared.clock.now();
        let (mut state, campaigns) = self.programme_state(&member, &partner.id, now).await?;
        let ladder = self.shared.config.ladder.as_ref();
        let tier = ladder.map(|l| {
            l.tiers[state.tier_index().min(l.tiers.len() - 1)]
                .name
                .clone()
        });
        let kind = partner.kind.clone();
        let facts = crate::programme::EarnFacts {
            partner: &partner.id,
            partner_kind: &kind,
            base,
            amount: purchase.as_ref().map(|(a, _)| *a),
            category: category.as_deref(),
            tier: tier.as_deref(),
            earned_here_before: state.earned_at.contains(&partner.id),
            stamps: partner.stamps.as_ref(),
            now,
        };
        let priced =
            crate::programme::price_earn(ladder, &campaigns, &state, &facts).map_err(|e| {
                ServiceError::refused(
                    tonic::Code::InvalidArgument,
                    "POINTS_OVERFLOW",
                    e.to_string(),
                )
            })?;
        let tier_after =
            crate::programme::record_earn(ladder, &mut state, &partner.id, &priced, now);
        Ok(Response::new(pb::EarnQuote {
            points: priced.parts.iter().map(|p| p.points).sum(),
            parts: parts_to_pb(&priced.parts, &partner.id),
            tier: tier_after.unwrap_or_default(),
        }))
    }

    async fn redeem_voucher(
        &self,
        req: Request<pb::RedeemVoucherRequest>,
    ) -> Result<Response<pb::VoucherRedemption>, Status> {
        use crate::store::programme::{ProgrammeCall, ProgrammeReply, RedeemRefusal};
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("transaction_id", &r.transaction_id)?;
        validate::id("voucher_id", &r.voucher_id)?;
        let call = ProgrammeCall::Redeem {
            partner: partner.id.clone(),
            txn: r.transaction_id.clone(),
            voucher: r.voucher_id.clone(),
            now: self.shared.clock.now(),
        };
        let refused = |code, reason, message: String| -> Status {
            ServiceError::refused(code, reason, message).into()
        };
        match self
            .shared
            .store
            .programme(call)
            .await
            .map_err(ServiceError::from)?
        {
            ProgrammeReply::Redeemed(Ok(v)) => Ok(Response::new(pb::VoucherRedemption {
                voucher: Some(voucher_to_pb(&v)),
                transaction_id: r.transaction_id.clone(),
            })),
            ProgrammeReply::Redeemed(Err(e)) => Err(match e {
                RedeemRefusal::Unknown => ServiceError::NotFound {
                    reason: "UNKNOWN_VOUCHER",
                    message: format!("no voucher {:?}", r.voucher_id),
                }
                .into(),
                RedeemRefusal::OtherPartner(p) => refused(
                    tonic::Code::PermissionDenied,
                    "VOUCHER_OF_ANOTHER_PARTNER",
                    format!("voucher {} is redeemable only at {p}", r.voucher_id),
                ),
                RedeemRefusal::Expired(at) => refused(
                    tonic::Code::FailedPrecondition,
                    "VOUCHER_EXPIRED",
                    format!("voucher {} expired at {}", r.voucher_id, rfc3339(at)),
                ),
                RedeemRefusal::AlreadyRedeemed(at) => refused(
                    tonic::Code::FailedPrecondition,
                    "VOUCHER_ALREADY_REDEEMED",
                    format!(
                        "voucher {} was redeemed at {} under another transaction id",
                        r.voucher_id,
                        rfc3339(at)
                    ),
                ),
                RedeemRefusal::IdUsed(other) => refused(
                    tonic::Code::AlreadyExists,
                    "TRANSACTION_ID_REUSED",
                    format!(
                        "transaction id {:?} already redeemed voucher {other}",
                        r.transaction_id
                    ),
                ),
            }),
            _ => Err(ServiceError::mismatched().into()),
        }
    }

    async fn quote_burn(
        &self,
        req: Request<pb::QuoteBurnRequest>,
    ) -> Result<Response<pb::BurnQuote>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("member_id", &r.member_id)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        if r.points < 0 {
            return Err(ServiceError::field(
                "points",
                "POINTS_NOT_POSITIVE",
                format!("{} is negative; 0 prices the whole balance", r.points),
            )
            .into());
        }
        let now = self.shared.clock.now();
        let ledger = self
            .shared
            .store
            .member_at(&r.member_id, now)
            .await
            .map_err(ServiceError::from)?;
        let burnable = ledger.as_ref().map_or(0, |m| m.balance(now)).max(0);
        let points = if r.points == 0 { burnable } else { r.points };
        let rate = self
            .shared
            .prices
            .at(&partner.id, now)
            .ok_or_else(|| {
                ServiceError::refused(
                    tonic::Code::FailedPrecondition,
                    "PARTNER_NOT_PRICED",
                    format!("partner {} has no price in force", partner.id),
                )
            })?
            .redemption_rate;
        // Rounded as finance rounds a net position (the coalition's rounding setting).
        let value = self.shared.config.clearing.rounding.round(
            rate * rust_decimal::Decimal::from(points),
            self.shared.config.currency.minor_units,
        );
        Ok(Response::new(pb::BurnQuote {
            points,
            value: Some(pb::Money {
                amount: value.to_string(),
                currency: self.shared.config.currency.code.to_string(),
            }),
            burnable,
        }))
    }

    async fn set_consent(
        &self,
        req: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("transaction_id", &r.transaction_id)?;
        validate::id("member_id", &r.member_id)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        let purpose = super::consent::purpose(&r.purpose)?;
        Ok(Response::new(
            super::consent::set(
                &self.shared,
                format!("partner/{}", partner.id),
                r.transaction_id.clone(),
                &r.member_id,
                purpose,
                &partner.id,
                r.granted,
            )
            .await?,
        ))
    }

    async fn get_consent(
        &self,
        req: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::ConsentList>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("member_id", &r.member_id)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        Ok(Response::new(
            super::consent::for_partner(&self.shared, &partner.id, &r.member_id).await?,
        ))
    }

    async fn get_transaction(
        &self,
        req: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("transaction_id", &r.transaction_id)?;
        let t = self
            .shared
            .store
            .transaction(&partner.id, &r.transaction_id)
            .await
            .map_err(ServiceError::from)?;
        let hold = self.hold(&partner.id, &r.transaction_id).await?;
        let now = self.shared.clock.now();
        let hold_pb = |h: &HoldRecord| hold_to_pb(&h.view_at(now), h.id, &h.member);
        match (t, hold) {
            // A capture: the burn, with the hold it burned from.
            (Some(t), h) => {
                let mut out = transaction_to_pb(&t);
                out.hold = h
                    .filter(|h| h.closed_by.as_deref() == Some(r.transaction_id.as_str()))
                    .as_ref()
                    .map(hold_pb);
                Ok(Response::new(out))
            }
            (None, Some(h)) if h.partner_txn_id == r.transaction_id => {
                Ok(Response::new(pb::Transaction {
                    receipt: None,
                    reversed_points: 0,
                    purchase: None,
                    hold: Some(hold_pb(&h)),
                }))
            }
            _ => Err(ServiceError::NotFound {
                reason: "UNKNOWN_TRANSACTION",
                message: format!(
                    "no transaction {:?} of partner {}",
                    r.transaction_id, partner.id
                ),
            }
            .into()),
        }
    }

    async fn acknowledge_settlement(
        &self,
        req: Request<pb::SettlementAnswerRequest>,
    ) -> Result<Response<pb::SettlementResponse>, Status> {
        Ok(Response::new(self.answer(&req, "acknowledged").await?))
    }

    async fn dispute_settlement(
        &self,
        req: Request<pb::SettlementAnswerRequest>,
    ) -> Result<Response<pb::SettlementResponse>, Status> {
        Ok(Response::new(self.answer(&req, "disputed").await?))
    }

    async fn get_programme_report(
        &self,
        req: Request<pb::ProgrammeReportRequest>,
    ) -> Result<Response<pb::ProgrammeReport>, Status> {
        let partner = self.caller(&req)?;
        Ok(Response::new(
            super::report::programme_report(&self.shared, req.get_ref(), Some(&partner.id)).await?,
        ))
    }

    async fn get_cohorts(
        &self,
        req: Request<pb::ProgrammeReportRequest>,
    ) -> Result<Response<pb::Cohorts>, Status> {
        let partner = self.caller(&req)?;
        Ok(Response::new(
            super::report::cohorts(&self.shared, req.get_ref(), Some(&partner.id)).await?,
        ))
    }

    async fn get_statement(
        &self,
        req: Request<pb::PartnerStatementRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let partner = self.caller(&req)?;
        let cycle = crate::services::validate::cycle("cycle", &req.get_ref().cycle)?;
        Ok(Response::new(
            super::finance::statement(&self.shared, cycle, &partner.id).await?,
        ))
    }

    async fn list_member_activity(
        &self,
        req: Request<pb::ListMemberActivityRequest>,
    ) -> Result<Response<pb::ListMemberActivityResponse>, Status> {
        let partner = self.caller(&req)?;
        let r = req.get_ref();
        validate::id("member_id", &r.member_id)?;
        self.shared.refuse_forgotten(&r.member_id).await?;
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n < 0 => {
                return Err(ServiceError::field(
                    "page_size",
                    "INVALID_PAGE_SIZE",
                    "must not be negative",
                )
                .into());
            }
            n => n.min(MAX_PAGE),
        };
        let before = parse_page_token(&r.page_token, &r.member_id)?;
        // One extra row tells whether another page follows.
        let mut rows = self
            .shared
            .store
            .activity(&partner.id, &r.member_id, before, size as i64 + 1)
            .await
            .map_err(ServiceError::from)?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => page_token(&r.member_id, last.accepted_at, last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListMemberActivityResponse {
            transactions: rows.iter().map(transaction_to_pb).collect(),
            next_page_token,
        }))
    }
}
