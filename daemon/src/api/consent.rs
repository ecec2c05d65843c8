//! Consent on the wire: partners record and read their members' consents (their own marketing and
//! the coalition-wide purposes, never another partner's marketing); operators record on a member's
//! behalf and read everything (each read in the access log).

use crate::clock::rfc3339;
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::store::Rejection;
use crate::store::consent::{ConsentChange, ConsentOutcome, ConsentRecord, Purpose};
use coalition_proto::v1 as pb;
use sha2::{Digest, Sha256};

/// A purpose field.
pub fn purpose(s: &str) -> Result<Purpose, ServiceError> {
    Purpose::parse(s).ok_or_else(|| {
        ServiceError::field(
            "purpose",
            "UNKNOWN_PURPOSE",
            format!("{s:?} is not a consent purpose; use marketing, analytics or sharing"),
        )
    })
}

/// A consent on the wire.
pub fn consent_pb(r: &ConsentRecord) -> pb::Consent {
    pb::Consent {
        member_id: r.member.clone(),
        purpose: r.purpose.clone(),
        partner: r.scope.clone(),
        granted: r.granted,
        captured_by: r.captured_by.clone(),
        captured_at: rfc3339(r.captured_at),
    }
}

/// Records a change by `actor`, scoped to `scope_partner` for marketing.
pub async fn set(
    shared: &Shared,
    actor: String,
    request_id: String,
    member: &str,
    purpose: Purpose,
    scope_partner: &str,
    granted: bool,
) -> Result<pb::Consent, ServiceError> {
    let scope = if purpose.scoped() { scope_partner } else { "" };
    let canonical = format!(
        "consent\n{member}\n{}\n{scope}\n{granted}",
        purpose.as_str()
    );
    let change = ConsentChange {
        hash: Sha256::digest(canonical.as_bytes()).to_vec(),
        record: ConsentRecord {
            member: member.to_string(),
            purpose: purpose.as_str().to_string(),
            scope: scope.to_string(),
            granted,
            captured_by: actor.clone(),
            captured_at: shared.clock.now(),
        },
        actor,
        request_id: request_id.clone(),
    };
    match shared.store.set_consent(&change).await? {
        ConsentOutcome::Applied(r) | ConsentOutcome::Replayed(r) => Ok(consent_pb(&r)),
        ConsentOutcome::IdReused => Err(ServiceError::Rejected(Rejection::IdReused(request_id))),
    }
}

/// The consents `partner` may read: its own marketing and the coalition-wide purposes.
pub async fn for_partner(
    shared: &Shared,
    partner: &str,
    member: &str,
) -> Result<pb::ConsentList, ServiceError> {
    let all = shared.store.consents(member).await?;
    Ok(pb::ConsentList {
        member_id: member.to_string(),
        consents: all
            .iter()
            .filter(|r| r.scope.is_empty() || r.scope == partner)
            .map(consent_pb)
            .collect(),
    })
}

/// Every consent of a member (staff).
pub async fn all(shared: &Shared, member: &str) -> Result<pb::ConsentList, ServiceError> {
    Ok(pb::ConsentList {
        member_id: member.to_string(),
        consents: shared
            .store
            .consents(member)
            .await?
            .iter()
            .map(consent_pb)
            .collect(),
    })
}
