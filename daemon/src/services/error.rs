//! Everything a call can fail with, as the services decide it: each refusal with the gRPC code
//! and the UPPER_SNAKE reason it is answered with (`api::error` turns it into a status, in one
//! place).

use crate::ledger::Refusal;
use crate::store::{Rejection, StoreError};
use tonic::{Code, Status};

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field of the request is malformed.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field, as named in the proto.
        field: &'static str,
        /// UPPER_SNAKE reason.
        reason: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The ledger or the batch refused the request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Storage failed: nothing was applied; retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something asked for does not exist.
    #[error("{message}")]
    NotFound {
        /// UPPER_SNAKE reason.
        reason: &'static str,
        /// What was not found.
        message: String,
    },
    /// A clearing run could not produce a settlement.
    #[error(transparent)]
    Clearing(#[from] crate::store::clearing::ClearingError),
    /// A file cannot be exported.
    #[error(transparent)]
    Export(#[from] coalition_clearing::export::ExportError),
    /// The caller could not be identified.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// New certificates could not be loaded; the previous ones stay in force.
    #[error("certificate reload refused, the previous configuration stays in force: {0}")]
    ReloadRefused(String),
    /// Any other refusal with its own code and reason (a draft asked for a payment file, a
    /// retired partner's write, a price change too soon).
    #[error("{message}")]
    Refused {
        /// The gRPC code.
        code: Code,
        /// UPPER_SNAKE reason.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A request of a stream the codec refused (a control character, text not UTF-8): answered
    /// with the codec's own status, which names the field.
    #[error("{}", .0.message())]
    Decode(Box<Status>),
    /// Over the partner's rate limit.
    #[error("partner {partner} is over its rate limit; retry in {} ms", retry_after.as_millis().max(1))]
    Throttled {
        /// The partner.
        partner: String,
        /// When a call would be let through.
        retry_after: std::time::Duration,
    },
    /// A feed's cursor points at events no longer kept.
    #[error(
        "events before sequence {oldest} are no longer kept (they are kept {days} days): resume from \
         {oldest}, and read what happened before from the ledger (ListMemberActivity, statements)"
    )]
    CursorExpired {
        /// The oldest sequence still kept.
        oldest: i64,
        /// How long events are kept.
        days: u32,
    },
}

impl ServiceError {
    /// A malformed field.
    pub fn field(
        field: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> ServiceError {
        ServiceError::InvalidField {
            field,
            reason,
            message: message.into(),
        }
    }

    /// A stream's broken message: the codec's refusal as it is, anything else `BROKEN_STREAM`
    /// on `field`.
    pub fn from_stream(field: &'static str, status: Status) -> ServiceError {
        if coalition_proto::codec::refusal_reason(&status).is_some() {
            return ServiceError::Decode(Box::new(status));
        }
        ServiceError::field(field, "BROKEN_STREAM", status.message().to_string())
    }

    /// The store answered a programme call with a reply of another kind (a bug, never input).
    pub fn mismatched() -> ServiceError {
        ServiceError::refused(
            Code::Internal,
            "INTERNAL",
            "the store answered another question",
        )
    }

    /// A refusal with its own code and reason.
    pub fn refused(code: Code, reason: &'static str, message: impl Into<String>) -> ServiceError {
        ServiceError::Refused {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The status code and `ErrorInfo` reason this error is answered with.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            ServiceError::InvalidField { reason, .. } => (Code::InvalidArgument, reason),
            ServiceError::Decode(status) => (
                status.code(),
                coalition_proto::codec::refusal_reason(status).unwrap_or("BROKEN_STREAM"),
            ),
            ServiceError::Refused { code, reason, .. } => (*code, reason),
            ServiceError::NotFound { reason, .. } => (Code::NotFound, reason),
            ServiceError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            ServiceError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            ServiceError::Throttled { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
            ServiceError::CursorExpired { .. } => (Code::FailedPrecondition, "CURSOR_EXPIRED"),
            ServiceError::ReloadRefused(_) => (Code::FailedPrecondition, "TLS_RELOAD_REFUSED"),
            ServiceError::Store(StoreError::Unavailable(_) | StoreError::Refused(_)) => {
                (Code::Unavailable, "STORAGE_UNAVAILABLE")
            }
            ServiceError::Store(StoreError::ShuttingDown) => (Code::Unavailable, "SHUTTING_DOWN"),
            ServiceError::Store(StoreError::Corrupt(_)) => (Code::Internal, "STORAGE_CORRUPT"),
            ServiceError::Clearing(c) => {
                use crate::store::clearing::ClearingError as C;
                match c {
                    C::NotClosed { .. } => (Code::FailedPrecondition, "CYCLE_NOT_CLOSED"),
                    C::OutOfOrder { .. } => (Code::FailedPrecondition, "EARLIER_CYCLE_NOT_CLEARED"),
                    C::Settle(..) => (Code::FailedPrecondition, "SETTLEMENT_FAILED"),
                    C::Calendar(..) => (Code::InvalidArgument, "MALFORMED_CYCLE"),
                    C::BeforeFirstCycle { .. } => (Code::FailedPrecondition, "BEFORE_FIRST_CYCLE"),
                    C::ChainedDraftWouldChange { .. } => {
                        (Code::FailedPrecondition, "DRAFT_ALREADY_CHAINED")
                    }
                    C::Store(StoreError::Corrupt(_)) => (Code::Internal, "STORAGE_CORRUPT"),
                    C::Store(_) => (Code::Unavailable, "STORAGE_UNAVAILABLE"),
                }
            }
            ServiceError::Export(e) => match e {
                coalition_clearing::export::ExportError::NoAccount(_) => {
                    (Code::FailedPrecondition, "NO_BANK_ACCOUNT")
                }
                coalition_clearing::export::ExportError::NothingToPay(_) => {
                    (Code::FailedPrecondition, "NOTHING_TO_PAY")
                }
            },
            ServiceError::Rejected(r) => match r {
                Rejection::Ledger(Refusal::NonPositive(_)) => {
                    (Code::InvalidArgument, "POINTS_NOT_POSITIVE")
                }
                Rejection::Ledger(Refusal::Overflow(_)) => {
                    (Code::InvalidArgument, "POINTS_OVERFLOW")
                }
                Rejection::Ledger(Refusal::InsufficientPoints { .. }) => {
                    (Code::FailedPrecondition, "INSUFFICIENT_POINTS")
                }
                Rejection::Ledger(Refusal::BeyondRemaining { .. }) => {
                    (Code::FailedPrecondition, "REVERSAL_EXCEEDS_REMAINING")
                }
                Rejection::UnknownTransaction(_) => (Code::NotFound, "UNKNOWN_TRANSACTION"),
                Rejection::MemberForgotten => (Code::FailedPrecondition, "MEMBER_FORGOTTEN"),
                Rejection::WrongKind { .. } => (Code::FailedPrecondition, "WRONG_TRANSACTION_KIND"),
                Rejection::FullyReversed(_) => (Code::FailedPrecondition, "ALREADY_FULLY_REVERSED"),
                Rejection::IdReused(_) => (Code::AlreadyExists, "REQUEST_ID_REUSED"),
                Rejection::Unpriced(_) => (Code::FailedPrecondition, "PARTNER_NOT_PRICED"),
                Rejection::Retired { .. } => (Code::PermissionDenied, "PARTNER_RETIRED"),
                Rejection::HoldExpired { .. } => (Code::FailedPrecondition, "HOLD_EXPIRED"),
                Rejection::HoldClosed {
                    state: "captured", ..
                } => (Code::FailedPrecondition, "HOLD_CAPTURED"),
                Rejection::HoldClosed { .. } => (Code::FailedPrecondition, "HOLD_VOIDED"),
                Rejection::BeyondHold { .. } => (Code::FailedPrecondition, "CAPTURE_EXCEEDS_HOLD"),
            },
        }
    }
}
