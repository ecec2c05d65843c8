//! The operator service: partners' status and limits, live; certificate reloads. Operator
//! certificates only. Changes are stored first, then applied: they survive a restart and reach the
//! other daemons of the database within seconds.

use crate::clock::rfc3339;
use crate::ops::limits::LimitState;
use crate::prices::PriceVersion;
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::store::PartnerOverride;
use coalition_proto::v1 as pb;
use coalition_proto::v1::operator_service_server::OperatorService;
use tonic::{Request, Response, Status};

/// Implements `coalition.v1.OperatorService`.
pub struct OperatorApi {
    shared: Shared,
    tls: std::sync::Arc<dyn crate::services::shared::CertificateReload>,
}

impl OperatorApi {
    /// A service over the shared state and the server's certificates.
    pub fn new(
        shared: Shared,
        tls: std::sync::Arc<dyn crate::services::shared::CertificateReload>,
    ) -> OperatorApi {
        OperatorApi { shared, tls }
    }

    fn info(&self, partner: &str) -> Result<pb::PartnerInfo, ServiceError> {
        let p = self
            .shared
            .config
            .partners
            .get(partner)
            .ok_or_else(|| unknown(partner))?;
        let s = self
            .shared
            .limits
            .state(partner)
            .ok_or_else(|| unknown(partner))?;
        Ok(pb::PartnerInfo {
            id: p.id.clone(),
            name: p.name.clone(),
            kind: p.kind.clone(),
            status: match p.retired_from {
                Some(d)
                    if self
                        .shared
                        .config
                        .cycles()
                        .open(d)
                        .is_ok_and(|at| self.shared.clock.now() >= at) =>
                {
                    format!("retired since {d}")
                }
                Some(d) if s.suspended => format!("suspended, retiring on {d}"),
                Some(d) => format!("active, retiring on {d}"),
                None if s.suspended => "suspended".into(),
                None => "active".into(),
            },
            per_second: s.per_second,
            burst: s.burst,
        })
    }

    /// Stores the partner's override, then applies it here.
    async fn change(
        &self,
        partner: &str,
        f: impl FnOnce(&mut PartnerOverride),
    ) -> Result<pb::PartnerInfo, ServiceError> {
        let s = self
            .shared
            .limits
            .state(partner)
            .ok_or_else(|| unknown(partner))?;
        let mut o = PartnerOverride {
            partner: partner.to_string(),
            per_second: s.per_second,
            burst: s.burst,
            suspended: s.suspended,
            updated_at: self.shared.clock.now(),
        };
        f(&mut o);
        self.shared.store.save_partner_override(&o).await?;
        if (o.per_second, o.burst) != (s.per_second, s.burst) {
            self.shared.limits.set_quota(partner, o.per_second, o.burst);
        }
        self.shared.limits.set_suspended(partner, o.suspended);
        tracing::info!(
            partner,
            per_second = o.per_second,
            burst = o.burst,
            suspended = o.suspended,
            "partner limits changed"
        );
        self.info(partner)
    }
}

fn unknown(partner: &str) -> ServiceError {
    ServiceError::NotFound {
        reason: "UNKNOWN_PARTNER",
        message: format!("{partner:?} is not a partner of this coalition"),
    }
}

fn limit_pb(s: &LimitState) -> pb::LimitState {
    pb::LimitState {
        partner: s.partner.clone(),
        per_second: s.per_second,
        burst: s.burst,
        suspended: s.suspended,
        allowed_1m: s.allowed[0],
        allowed_5m: s.allowed[1],
        allowed_1h: s.allowed[2],
        throttled_1m: s.throttled[0],
        throttled_5m: s.throttled[1],
        throttled_1h: s.throttled[2],
        recent_rate: (s.allowed[0] + s.throttled[0]) as f64 / 60.0,
        daemons: s.daemons,
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn get_member_balance(
        &self,
        req: Request<pb::MemberBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let caller = req.extensions().get::<coalition_certs::Identity>();
        Ok(Response::new(
            super::views::staff_balance(&self.shared, caller, req.get_ref()).await?,
        ))
    }

    async fn list_partners(
        &self,
        _req: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let mut partners = self
            .shared
            .config
            .partners
            .keys()
            .map(|p| self.info(p))
            .collect::<Result<Vec<_>, _>>()?;
        // Partners that left the config still settle what they took part in.
        for r in self
            .shared
            .store
            .partners()
            .await
            .map_err(ServiceError::from)?
        {
            if !self.shared.config.partners.contains_key(&r.id) {
                partners.push(pb::PartnerInfo {
                    id: r.id,
                    name: r.name,
                    kind: r.kind,
                    status: "left (not in the config)".into(),
                    per_second: 0,
                    burst: 0,
                });
            }
        }
        partners.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ListPartnersResponse { partners }))
    }

    async fn get_limits(
        &self,
        req: Request<pb::GetLimitsRequest>,
    ) -> Result<Response<pb::GetLimitsResponse>, Status> {
        let p = &req.get_ref().partner;
        let limits: Vec<pb::LimitState> = if p.is_empty() {
            self.shared.limits.snapshot().iter().map(limit_pb).collect()
        } else {
            vec![limit_pb(
                &self.shared.limits.state(p).ok_or_else(|| unknown(p))?,
            )]
        };
        Ok(Response::new(pb::GetLimitsResponse { limits }))
    }

    async fn set_limit(
        &self,
        req: Request<pb::SetLimitRequest>,
    ) -> Result<Response<pb::PartnerInfo>, Status> {
        let r = req.get_ref();
        if r.per_second == 0 || r.burst == 0 {
            let field = if r.per_second == 0 {
                "per_second"
            } else {
                "burst"
            };
            return Err(ServiceError::field(
                field,
                "INVALID_LIMIT",
                "must be at least 1 (suspend a partner to stop it)",
            )
            .into());
        }
        let (rate, burst) = (r.per_second, r.burst);
        Ok(Response::new(
            self.change(&r.partner, |o| (o.per_second, o.burst) = (rate, burst))
                .await?,
        ))
    }

    async fn suspend_partner(
        &self,
        req: Request<pb::PartnerRequest>,
    ) -> Result<Response<pb::PartnerInfo>, Status> {
        Ok(Response::new(
            self.change(&req.get_ref().partner, |o| o.suspended = true)
                .await?,
        ))
    }

    async fn resume_partner(
        &self,
        req: Request<pb::PartnerRequest>,
    ) -> Result<Response<pb::PartnerInfo>, Status> {
        Ok(Response::new(
            self.change(&req.get_ref().partner, |o| o.suspended = false)
                .await?,
        ))
    }

    async fn forget_member(
        &self,
        req: Request<pb::ForgetMemberRequest>,
    ) -> Result<Response<pb::ForgetMemberResponse>, Status> {
        let who = caller_name(&req)?;
        let r = req.get_ref();
        if r.member_id.starts_with('~') {
            return Err(ServiceError::field(
                "member_id",
                "ALREADY_A_PSEUDONYM",
                "ids beginning with `~` are pseudonyms: nothing links them to a member any more",
            )
            .into());
        }
        crate::services::validate::id("member_id", &r.member_id)?;
        if r.reason.trim().is_empty() {
            return Err(ServiceError::field(
                "reason",
                "REASON_REQUIRED",
                "say why the member is forgotten (a ticket, \"member's request\"): it is kept with the record",
            )
            .into());
        }
        let Some(key) = &self.shared.config.member_key else {
            return Err(ServiceError::refused(
                tonic::Code::FailedPrecondition,
                "NO_MEMBER_KEY",
                "this daemon has no privacy.member_key: set one (at least 32 characters of secret) \
                 so that a forgotten member's pseudonym cannot be traced back",
            )
            .into());
        };
        let f = crate::store::retention::Forget {
            member: r.member_id.clone(),
            pseudonym: key.pseudonym(&r.member_id),
            now: self.shared.clock.now(),
            actor: format!("operator/{who}"),
            reason: r.reason.clone(),
        };
        let out = self
            .shared
            .store
            .forget_member(&f)
            .await
            .map_err(ServiceError::from)?;
        tracing::info!(
            member = %self.shared.log_ref(&r.member_id),
            pseudonym = %out.pseudonym,
            points = out.points_forfeited,
            newly = out.newly,
            by = %who,
            "member forgotten"
        );
        Ok(Response::new(pb::ForgetMemberResponse {
            pseudonym: out.pseudonym,
            points_forfeited: out.points_forfeited,
            forgotten_at: crate::clock::rfc3339(out.at),
            newly_forgotten: out.newly,
        }))
    }

    async fn set_member_consent(
        &self,
        req: Request<pb::SetMemberConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let who = caller_name(&req)?;
        let r = req.get_ref();
        crate::services::validate::id("member_id", &r.member_id)?;
        let purpose = super::consent::purpose(&r.purpose)?;
        if purpose.scoped() && !self.shared.config.partners.contains_key(&r.partner) {
            return Err(ServiceError::field(
                "partner",
                "UNKNOWN_PARTNER",
                format!(
                    "marketing consent names a partner; {:?} is not one",
                    r.partner
                ),
            )
            .into());
        }
        // An operator's change has no partner id to retry with: each call is its own change.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let request_id = format!(
            "{}-{}",
            self.shared.clock.now(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.shared.refuse_forgotten(&r.member_id).await?;
        tracing::info!(member = %self.shared.log_ref(&r.member_id), purpose = %r.purpose, granted = r.granted, reason = %r.reason, "operator recorded a consent");
        Ok(Response::new(
            super::consent::set(
                &self.shared,
                format!("operator/{who}"),
                request_id,
                &r.member_id,
                purpose,
                &r.partner,
                r.granted,
            )
            .await?,
        ))
    }

    async fn get_member_consent(
        &self,
        req: Request<pb::MemberBalanceRequest>,
    ) -> Result<Response<pb::ConsentList>, Status> {
        let caller = req.extensions().get::<coalition_certs::Identity>().cloned();
        let r = req.get_ref();
        super::views::log_staff_read(&self.shared, caller.as_ref(), r, "GetMemberConsent").await?;
        Ok(Response::new(
            super::consent::all(&self.shared, &r.member_id).await?,
        ))
    }

    async fn confirm_catch_up(
        &self,
        req: Request<pb::ConfirmCatchUpRequest>,
    ) -> Result<Response<pb::ConfirmCatchUpResponse>, Status> {
        let through = crate::services::validate::cycle("through", &req.get_ref().through)?;
        self.shared
            .store
            .confirm_catch_up(through)
            .await
            .map_err(ServiceError::from)?;
        let cycles = match crate::scheduler::due(&self.shared)
            .await
            .map_err(|e| ServiceError::Store(crate::store::StoreError::Unavailable(e.to_string())))?
            .0
        {
            Some((start, target)) if start <= through => {
                (target.min(through) - start).num_days() + 1
            }
            _ => 0,
        };
        tracing::warn!(%through, cycles, "operator confirmed a long clearing catch-up");
        Ok(Response::new(pb::ConfirmCatchUpResponse {
            through: through.to_string(),
            cycles,
        }))
    }

    async fn reload_certificates(
        &self,
        _req: Request<pb::ReloadCertificatesRequest>,
    ) -> Result<Response<pb::ReloadCertificatesResponse>, Status> {
        let revoked = self
            .tls
            .reload_certificates()
            .map_err(ServiceError::ReloadRefused)?;
        Ok(Response::new(pb::ReloadCertificatesResponse {
            revoked: revoked as u32,
        }))
    }

    async fn set_webhook(
        &self,
        req: Request<pb::SetWebhookRequest>,
    ) -> Result<Response<pb::WebhookStatus>, Status> {
        let who = caller_name(&req)?;
        let r = req.get_ref();
        let status = crate::services::webhooks::set(
            &self.shared,
            &r.partner,
            &r.url,
            &r.secret,
            &format!("operator/{who}"),
        )
        .await?;
        Ok(Response::new(webhook_pb(status)))
    }

    async fn list_webhooks(
        &self,
        _req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let all = crate::services::webhooks::list(&self.shared).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: all.into_iter().map(webhook_pb).collect(),
        }))
    }

    async fn resume_webhook(
        &self,
        req: Request<pb::PartnerRequest>,
    ) -> Result<Response<pb::WebhookStatus>, Status> {
        let who = caller_name(&req)?;
        let status = crate::services::webhooks::resume(
            &self.shared,
            &req.get_ref().partner,
            &format!("operator/{who}"),
        )
        .await?;
        Ok(Response::new(webhook_pb(status)))
    }

    async fn set_prices(
        &self,
        req: Request<pb::SetPricesRequest>,
    ) -> Result<Response<pb::PriceVersion>, Status> {
        let by = req
            .extensions()
            .get::<coalition_certs::Identity>()
            .map_or_else(|| "operator".to_string(), |i| i.to_string());
        let v = set_prices(&self.shared, req.get_ref(), by).await?;
        Ok(Response::new(price_pb(&self.shared, &v)))
    }

    async fn list_prices(
        &self,
        req: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::ListPricesResponse>, Status> {
        let partner = req.get_ref().partner.as_str();
        let versions = self
            .shared
            .store
            .price_versions()
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListPricesResponse {
            versions: versions
                .iter()
                .filter(|v| partner.is_empty() || v.partner == partner)
                .map(|v| price_pb(&self.shared, v))
                .collect(),
        }))
    }
}

/// A price version on the wire.
fn price_pb(shared: &Shared, v: &PriceVersion) -> pb::PriceVersion {
    let now = shared.clock.now();
    let versions = shared.prices.versions(Some(&v.partner));
    let in_force = crate::prices::in_force(&versions, now)
        .is_some_and(|f| f.effective_from == v.effective_from);
    pb::PriceVersion {
        partner: v.partner.clone(),
        effective_from: crate::clock::rfc3339(v.effective_from),
        redemption_rate: v.redemption_rate.to_string(),
        issuance_fee: v.issuance_fee.to_string(),
        set_at: crate::clock::rfc3339(v.set_at),
        set_by: v.set_by.clone(),
        in_force,
    }
}

/// Validates and records a new price version; refreshes this daemon's book at once.
async fn set_prices(
    shared: &Shared,
    r: &pb::SetPricesRequest,
    set_by: String,
) -> Result<PriceVersion, ServiceError> {
    let now = shared.clock.now();
    let known = shared
        .store
        .partners()
        .await?
        .into_iter()
        .any(|p| p.id == r.partner);
    if !known {
        return Err(ServiceError::NotFound {
            reason: "UNKNOWN_PARTNER",
            message: format!("no partner {:?} in the coalition", r.partner),
        });
    }
    let cycles = shared.config.cycles();
    let effective_from = if r.effective_from.is_empty() {
        cycles
            .cycle_of(now)
            .and_then(|c| cycles.close(c))
            .map_err(|e| {
                ServiceError::Store(crate::store::StoreError::Unavailable(e.to_string()))
            })?
    } else {
        chrono::DateTime::parse_from_rfc3339(&r.effective_from)
            .map_err(|_| {
                ServiceError::field(
                    "effective_from",
                    "MALFORMED_INSTANT",
                    format!(
                        "{:?} is not an RFC 3339 instant like 2026-12-01T00:00:00+01:00",
                        r.effective_from
                    ),
                )
            })?
            .timestamp_micros()
    };
    if effective_from < now + crate::prices::MIN_LEAD {
        return Err(ServiceError::refused(
            tonic::Code::FailedPrecondition,
            "PRICE_CHANGE_TOO_SOON",
            crate::prices::PriceError::TooSoon {
                at: crate::clock::rfc3339(effective_from),
            }
            .to_string(),
        ));
    }
    let current = shared.prices.at(&r.partner, effective_from);
    let rate = |field: &'static str, s: &str, was: Option<rust_decimal::Decimal>| {
        if s.is_empty() {
            return was.ok_or_else(|| {
                ServiceError::field(
                    field,
                    "MISSING_PRICE",
                    "the partner has no price yet: give both",
                )
            });
        }
        crate::config::rate(s).map_err(|m| ServiceError::field(field, "MALFORMED_RATE", m))
    };
    let v = PriceVersion {
        partner: r.partner.clone(),
        effective_from,
        redemption_rate: rate(
            "redemption_rate",
            &r.redemption_rate,
            current.map(|c| c.redemption_rate),
        )?
        .normalize(),
        issuance_fee: rate(
            "issuance_fee",
            &r.issuance_fee,
            current.map(|c| c.issuance_fee),
        )?
        .normalize(),
        set_at: now,
        set_by,
    };
    let stored = shared.store.add_price(&v).await?;
    if stored.redemption_rate != v.redemption_rate || stored.issuance_fee != v.issuance_fee {
        return Err(ServiceError::refused(
            tonic::Code::AlreadyExists,
            "PRICE_VERSION_EXISTS",
            crate::prices::PriceError::Conflict {
                partner: v.partner.clone(),
                at: crate::clock::rfc3339(effective_from),
            }
            .to_string(),
        ));
    }
    shared.prices.replace(shared.store.price_versions().await?);
    tracing::warn!(partner = %stored.partner, redemption_rate = %stored.redemption_rate, issuance_fee = %stored.issuance_fee,
        effective_from = %crate::clock::rfc3339(stored.effective_from), set_by = %stored.set_by, "price version recorded");
    Ok(stored)
}

/// The name on the operator certificate of a call.
fn caller_name<T>(req: &Request<T>) -> Result<String, ServiceError> {
    req.extensions()
        .get::<coalition_certs::Identity>()
        .map(|i| i.name.clone())
        .ok_or_else(|| ServiceError::Unauthenticated("no identity on this call".into()))
}

/// A webhook as an operator sees it, on the wire (its secret only when the call made it).
fn webhook_pb(s: crate::services::webhooks::Status) -> pb::WebhookStatus {
    let r = s.row;
    pb::WebhookStatus {
        partner: r.partner,
        url: r.url,
        secret: s.new_secret.unwrap_or_default(),
        delivered_sequence: r.delivered_seq,
        head_sequence: s.head,
        lag_seconds: s.lag_seconds,
        failures: r.failures,
        failing_since: r.failing_since.map(rfc3339).unwrap_or_default(),
        last_error: r.last_error.unwrap_or_default(),
        paused_at: r.paused_at.map(rfc3339).unwrap_or_default(),
        set_by: r.set_by,
        set_at: rfc3339(r.set_at),
    }
}
