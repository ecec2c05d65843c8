//! The one place where the daemon's errors become gRPC statuses (AIP-193): a code, a message a
//! person can act on, and `google.rpc.ErrorInfo` with an UPPER_SNAKE reason a program can match.

use crate::ledger::Refusal;
use crate::store::{Rejection, StoreError};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every status the daemon sends.
pub const DOMAIN: &str = coalition_proto::codec::ERROR_DOMAIN;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
}

impl ApiError {
    /// A malformed field.
    pub fn field(
        field: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError::InvalidField {
            field,
            reason,
            message: message.into(),
        }
    }

    /// A stream's broken message: the codec's refusal as it is, anything else `BROKEN_STREAM`
    /// on `field`.
    pub fn from_stream(field: &'static str, status: Status) -> ApiError {
        if coalition_proto::codec::refusal_reason(&status).is_some() {
            return ApiError::Decode(Box::new(status));
        }
        ApiError::field(field, "BROKEN_STREAM", status.message().to_string())
    }

    /// The store answered a programme call with a reply of another kind (a bug, never input).
    pub fn mismatched() -> ApiError {
        ApiError::refused(
            Code::Internal,
            "INTERNAL",
            "the store answered another question",
        )
    }

    /// A refusal with its own code and reason.
    pub fn refused(code: Code, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Refused {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The status code and `ErrorInfo` reason this error is answered with.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            ApiError::InvalidField { reason, .. } => (Code::InvalidArgument, reason),
            ApiError::Decode(status) => (
                status.code(),
                coalition_proto::codec::refusal_reason(status).unwrap_or("BROKEN_STREAM"),
            ),
            ApiError::Refused { code, reason, .. } => (*code, reason),
            ApiError::NotFound { reason, .. } => (Code::NotFound, reason),
            ApiError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            ApiError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            ApiError::Throttled { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
            ApiError::ReloadRefused(_) => (Code::FailedPrecondition, "TLS_RELOAD_REFUSED"),
            ApiError::Store(StoreError::Unavailable(_) | StoreError::Refused(_)) => {
                (Code::Unavailable, "STORAGE_UNAVAILABLE")
            }
            ApiError::Store(StoreError::ShuttingDown) => (Code::Unavailable, "SHUTTING_DOWN"),
            ApiError::Store(StoreError::Corrupt(_)) => (Code::Internal, "STORAGE_CORRUPT"),
            ApiError::Clearing(c) => {
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
            ApiError::Export(e) => match e {
                coalition_clearing::export::ExportError::NoAccount(_) => {
                    (Code::FailedPrecondition, "NO_BANK_ACCOUNT")
                }
                coalition_clearing::export::ExportError::NothingToPay(_) => {
                    (Code::FailedPrecondition, "NOTHING_TO_PAY")
                }
            },
            ApiError::Rejected(r) => match r {
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

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let (code, reason) = e.code_and_reason();
        // Refusals by partner and reason (both bounded: configured partners, this file's reasons).
        let caller = crate::server::observe::CALLER
            .try_with(|c| c.clone())
            .unwrap_or_else(|_| "-".into());
        metrics::counter!("coalition_refusals_total", "partner" => caller, "reason" => reason)
            .increment(1);
        if let ApiError::Decode(status) = e {
            return *status;
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, DOMAIN, HashMap::new());
        if let ApiError::InvalidField { field, message, .. } = &e {
            details.add_bad_request_violation(*field, message.clone());
        }
        if code == Code::Unavailable {
            // Nothing was applied: the same request may be sent again with the same id.
            details.set_retry_info(Some(std::time::Duration::from_millis(100)));
        }
        let pushback = match &e {
            ApiError::Throttled { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                Some(retry_after.as_millis().max(1))
            }
            _ => None,
        };
        let mut status = Status::with_error_details(code, e.to_string(), details);
        if let Some(ms) = pushback {
            // gRPC's own retry pushback, for clients that read trailers rather than details.
            if let Ok(v) = ms.to_string().parse() {
                status.metadata_mut().insert("grpc-retry-pushback-ms", v);
            }
        }
        status
    }
}
