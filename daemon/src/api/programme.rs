//! The programme service: campaigns created, listed and ended at runtime by the programme team
//! (or an operator). Rules are judged by `crate::programme`; campaigns live in the database, so
//! every daemon of it applies a new one from its next batch.

use crate::clock::rfc3339;
use crate::ledger::{Funder, Micros};
use crate::programme::{self, Campaign, Effect};
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::store::programme::{ProgrammeCall, ProgrammeReply};
use coalition_proto::v1 as pb;
use coalition_proto::v1::programme_service_server::ProgrammeService;
use rust_decimal::Decimal;
use std::str::FromStr;
use tonic::{Code, Request, Response, Status};

/// Implements `coalition.v1.ProgrammeService`.
pub struct ProgrammeApi {
    shared: Shared,
}

impl ProgrammeApi {
    /// A service over the shared state.
    pub fn new(shared: Shared) -> ProgrammeApi {
        ProgrammeApi { shared }
    }

    async fn call(&self, call: ProgrammeCall) -> Result<ProgrammeReply, ServiceError> {
        Ok(self.shared.store.programme(call).await?)
    }

    /// A window's end: local time in the coalition's zone, or RFC 3339 with an offset.
    fn instant(&self, field: &'static str, s: &str) -> Result<Micros, ServiceError> {
        let s = s.trim();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(t.timestamp_micros());
        }
        let local = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
            .map_err(|_| {
                ServiceError::field(
                    field,
                    "MALFORMED_INSTANT",
                    format!(
                        "{s:?} is neither a local time YYYY-MM-DDTHH:MM[:SS] nor RFC 3339 with an offset"
                    ),
                )
            })?;
        use chrono::offset::LocalResult;
        match local.and_local_timezone(self.shared.config.time_zone) {
            LocalResult::Single(t) => Ok(t.timestamp_micros()),
            // Clocks went back: the first of the two instants, so no earn of the hour is missed.
            LocalResult::Ambiguous(first, _) => Ok(first.timestamp_micros()),
            LocalResult::None => Err(ServiceError::field(
                field,
                "NO_SUCH_LOCAL_TIME",
                format!(
                    "{s} does not exist in {} (the clocks skip it); pick a time outside the gap",
                    self.shared.config.time_zone
                ),
            )),
        }
    }

    fn campaign_from(
        &self,
        c: &pb::Campaign,
        by: String,
        now: Micros,
    ) -> Result<Campaign, ServiceError> {
        let effect = match &c.effect {
            Some(pb::campaign::Effect::Multiplier(m)) => {
                Effect::Multiplier(Decimal::from_str(m.trim()).map_err(|_| {
                    ServiceError::field(
                        "multiplier",
                        "MALFORMED_MULTIPLIER",
                        format!("{m:?} is not a decimal number"),
                    )
                })?)
            }
            Some(pb::campaign::Effect::BonusPoints(p)) => Effect::Bonus(*p),
            None => {
                return Err(ServiceError::field(
                    "effect",
                    "MISSING_EFFECT",
                    "set either multiplier or bonus_points",
                ));
            }
        };
        let funder = match c.funder.as_str() {
            "" => Funder::Partner,
            f => Funder::parse(f).ok_or_else(|| {
                ServiceError::field(
                    "funder",
                    "UNKNOWN_FUNDER",
                    format!("{f:?} is neither \"partner\" nor \"operator\""),
                )
            })?,
        };
        let min_amount = match c.min_purchase.trim() {
            "" => None,
            a => Some(crate::services::validate::money(
                "min_purchase",
                a,
                self.shared.config.currency.code,
                self.shared.config.currency,
            )?),
        };
        let category = match c.category.as_str() {
            "" => None,
            cat => crate::services::validate::category(cat).map_err(|_| {
                ServiceError::field(
                    "category",
                    "MALFORMED_CATEGORY",
                    "use 1..=64 letters, digits, '-', '_' or '.'",
                )
            })?,
        };
        if c.cap_per_member < 0 {
            return Err(ServiceError::field(
                "cap_per_member",
                "CAP_OUT_OF_RANGE",
                "use 0 (no cap) or more",
            ));
        }
        let starts_at = self.instant("starts", &c.starts)?;
        let ends_at = self.instant("ends", &c.ends)?;
        if ends_at <= now {
            return Err(ServiceError::field(
                "ends",
                "ENDS_IN_THE_PAST",
                format!(
                    "the campaign would end at {} but it is {} already",
                    rfc3339(ends_at),
                    rfc3339(now)
                ),
            ));
        }
        Ok(Campaign {
            id: c.campaign_id.clone(),
            name: c.name.clone(),
            starts_at,
            ends_at,
            partners: c.partners.clone(),
            partner_kinds: c.partner_kinds.clone(),
            min_amount,
            tiers: c.tiers.clone(),
            category,
            welcome: c.welcome,
            effect,
            cap_per_member: (c.cap_per_member > 0).then_some(c.cap_per_member),
            funder,
            created_at: now,
            created_by: by,
            ended_at: None,
        })
    }
}

/// Who is calling, for the record.
fn caller<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<coalition_certs::Identity>()
        .map(|i| i.to_string())
        .unwrap_or_default()
}

/// A campaign on the wire, with its state at `now`.
pub fn campaign_to_pb(c: &Campaign, tz: chrono_tz::Tz, now: Micros) -> pb::Campaign {
    let local = |at: Micros| {
        chrono::DateTime::from_timestamp_micros(at)
            .map(|t| t.with_timezone(&tz).format("%Y-%m-%dT%H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let state = if c.ended_at.is_some_and(|e| e <= now) || now >= c.ends_at {
        "over"
    } else if now < c.starts_at {
        "scheduled"
    } else {
        "live"
    };
    pb::Campaign {
        campaign_id: c.id.clone(),
        name: c.name.clone(),
        starts: local(c.starts_at),
        ends: local(c.ends_at),
        partners: c.partners.clone(),
        partner_kinds: c.partner_kinds.clone(),
        min_purchase: c.min_amount.map(|a| a.to_string()).unwrap_or_default(),
        tiers: c.tiers.clone(),
        category: c.category.clone().unwrap_or_default(),
        welcome: c.welcome,
        effect: Some(match &c.effect {
            Effect::Multiplier(m) => pb::campaign::Effect::Multiplier(m.normalize().to_string()),
            Effect::Bonus(b) => pb::campaign::Effect::BonusPoints(*b),
        }),
        cap_per_member: c.cap_per_member.unwrap_or(0),
        funder: c.funder.as_str().to_string(),
        starts_at: rfc3339(c.starts_at),
        ends_at: rfc3339(c.ends_at),
        created_by: c.created_by.clone(),
        created_at: rfc3339(c.created_at),
        state: state.into(),
        ended_at: c.ended_at.map(rfc3339).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ProgrammeService for ProgrammeApi {
    async fn create_campaign(
        &self,
        req: Request<pb::Campaign>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let now = self.shared.clock.now();
        let c = self.campaign_from(req.get_ref(), caller(&req), now)?;
        let ProgrammeReply::Campaigns(others) = self
            .call(ProgrammeCall::Campaigns {
                not_over_at: Some(now),
            })
            .await?
        else {
            return Err(ServiceError::mismatched().into());
        };
        // A retry of a stored campaign is answered before the checks that depend on the others.
        if let Some(stored) = others.iter().find(|o| o.id == c.id)
            && stored.same_terms(&c)
        {
            {
                return Ok(Response::new(campaign_to_pb(
                    stored,
                    self.shared.config.time_zone,
                    now,
                )));
            }
        }
        if let Err(e) = programme::validate(
            &c,
            &self.shared.config.partner_kinds(),
            self.shared.config.ladder.as_ref(),
            &others,
        ) {
            return Err(ServiceError::InvalidField {
                field: e.field,
                reason: e.reason,
                message: e.message,
            }
            .into());
        }
        match self.call(ProgrammeCall::Create(c.clone())).await? {
            ProgrammeReply::Created(Ok(stored)) => Ok(Response::new(campaign_to_pb(
                &stored,
                self.shared.config.time_zone,
                now,
            ))),
            ProgrammeReply::Created(Err(existing)) => Err(ServiceError::refused(
                Code::AlreadyExists,
                "CAMPAIGN_EXISTS",
                format!(
                    "campaign {:?} exists with other terms (created by {} at {}); choose another id",
                    existing.id,
                    existing.created_by,
                    rfc3339(existing.created_at)
                ),
            )
            .into()),
            _ => Err(ServiceError::mismatched().into()),
        }
    }

    async fn list_campaigns(
        &self,
        req: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let now = self.shared.clock.now();
        let not_over_at = (!req.get_ref().include_ended).then_some(now);
        let ProgrammeReply::Campaigns(all) =
            self.call(ProgrammeCall::Campaigns { not_over_at }).await?
        else {
            return Err(ServiceError::mismatched().into());
        };
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns: all
                .iter()
                .map(|c| campaign_to_pb(c, self.shared.config.time_zone, now))
                .collect(),
        }))
    }

    async fn end_campaign(
        &self,
        req: Request<pb::EndCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let now = self.shared.clock.now();
        let id = req.get_ref().campaign_id.clone();
        let call = ProgrammeCall::End {
            id: id.clone(),
            now,
            by: caller(&req),
        };
        match self.call(call).await? {
            ProgrammeReply::Ended(Some(c)) => Ok(Response::new(campaign_to_pb(
                &c,
                self.shared.config.time_zone,
                now,
            ))),
            ProgrammeReply::Ended(None) => Err(ServiceError::NotFound {
                reason: "UNKNOWN_CAMPAIGN",
                message: format!("no campaign {id:?}"),
            }
            .into()),
            _ => Err(ServiceError::mismatched().into()),
        }
    }
}
