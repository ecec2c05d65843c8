//! The one place where the daemon's errors become gRPC statuses (AIP-193): a code, a message a
//! person can act on, and `google.rpc.ErrorInfo` with an UPPER_SNAKE reason a program can match.

use crate::services::error::ServiceError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every status the daemon sends.
pub const DOMAIN: &str = coalition_proto::codec::ERROR_DOMAIN;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let (code, reason) = e.code_and_reason();
        // Refusals by partner and reason (both bounded: configured partners, this file's reasons).
        let caller = super::caller::CALLER
            .try_with(|c| c.clone())
            .unwrap_or_else(|_| "-".into());
        metrics::counter!("coalition_refusals_total", "partner" => caller, "reason" => reason)
            .increment(1);
        if let ServiceError::Decode(status) = e {
            return *status;
        }
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        if let ServiceError::CursorExpired { oldest, .. } = &e {
            metadata.insert("oldest_sequence".to_string(), oldest.to_string());
        }
        details.set_error_info(reason, DOMAIN, metadata);
        if let ServiceError::InvalidField { field, message, .. } = &e {
            details.add_bad_request_violation(*field, message.clone());
        }
        if code == Code::Unavailable {
            // Nothing was applied: the same request may be sent again with the same id.
            details.set_retry_info(Some(std::time::Duration::from_millis(100)));
        }
        let pushback = match &e {
            ServiceError::Throttled { retry_after, .. } => {
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

/// A status code's canonical name, as gRPC's own tools and the Prometheus middlewares write it.
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
