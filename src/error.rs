//! One error type for every face: mapped once to HTTP (envelope) and once to gRPC (`Status` + ErrorInfo).

use http::StatusCode;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    AuthMissing,
    AuthMalformed,
    AuthInvalid,
    AuthExpired,
    ChannelAccessDenied,
    ChannelScopedKey,
    ChannelNotFound,
    MessageNotFound,
    ApiKeyNotFound,
    WebhookEndpointNotFound,
    DeliveryNotFound,
    NotFound,
    InvalidLifecycleTransition,
    NotConnected,
    NoQr,
    NotSandbox,
    ConcurrentModification,
    IdempotencyConflict,
    PayloadTooLarge,
    RateLimited,
    Internal,
    Unavailable,
}

impl Code {
    /// Every code (the OpenAPI document lists them).
    pub const ALL: &[Code] = &[
        Code::InvalidRequest,
        Code::AuthMissing,
        Code::AuthMalformed,
        Code::AuthInvalid,
        Code::AuthExpired,
        Code::ChannelAccessDenied,
        Code::ChannelScopedKey,
        Code::ChannelNotFound,
        Code::MessageNotFound,
        Code::ApiKeyNotFound,
        Code::WebhookEndpointNotFound,
        Code::DeliveryNotFound,
        Code::NotFound,
        Code::InvalidLifecycleTransition,
        Code::NotConnected,
        Code::NoQr,
        Code::NotSandbox,
        Code::ConcurrentModification,
        Code::IdempotencyConflict,
        Code::PayloadTooLarge,
        Code::RateLimited,
        Code::Internal,
        Code::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::AuthMissing => "auth_missing",
            Code::AuthMalformed => "auth_malformed",
            Code::AuthInvalid => "auth_invalid",
            Code::AuthExpired => "auth_expired",
            Code::ChannelAccessDenied => "channel_access_denied",
            Code::ChannelScopedKey => "channel_scoped_key",
            Code::ChannelNotFound => "channel_not_found",
            Code::MessageNotFound => "message_not_found",
            Code::ApiKeyNotFound => "api_key_not_found",
            Code::WebhookEndpointNotFound => "webhook_endpoint_not_found",
            Code::DeliveryNotFound => "delivery_not_found",
            Code::NotFound => "not_found",
            Code::InvalidLifecycleTransition => "invalid_lifecycle_transition",
            Code::NotConnected => "not_connected",
            Code::NoQr => "no_qr",
            Code::NotSandbox => "not_sandbox",
            Code::ConcurrentModification => "concurrent_modification",
            Code::IdempotencyConflict => "idempotency_conflict",
            Code::PayloadTooLarge => "payload_too_large",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
        }
    }

    pub fn http(self) -> StatusCode {
        use Code::*;
        match self {
            InvalidRequest => StatusCode::BAD_REQUEST,
            AuthMissing | AuthMalformed | AuthInvalid | AuthExpired => StatusCode::UNAUTHORIZED,
            ChannelAccessDenied | ChannelScopedKey => StatusCode::FORBIDDEN,
            ChannelNotFound
            | MessageNotFound
            | ApiKeyNotFound
            | WebhookEndpointNotFound
            | DeliveryNotFound
            | NotFound => StatusCode::NOT_FOUND,
            InvalidLifecycleTransition
            | NotConnected
            | NoQr
            | NotSandbox
            | ConcurrentModification
            | IdempotencyConflict => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn grpc(self) -> tonic::Code {
        use Code::*;
        match self {
            InvalidRequest => tonic::Code::InvalidArgument,
            AuthMissing | AuthMalformed | AuthInvalid | AuthExpired => tonic::Code::Unauthenticated,
            ChannelAccessDenied | ChannelScopedKey => tonic::Code::PermissionDenied,
            ChannelNotFound
            | MessageNotFound
            | ApiKeyNotFound
            | WebhookEndpointNotFound
            | DeliveryNotFound
            | NotFound => tonic::Code::NotFound,
            InvalidLifecycleTransition | NotConnected | NoQr | NotSandbox => {
                tonic::Code::FailedPrecondition
            }
            ConcurrentModification => tonic::Code::Aborted,
            IdempotencyConflict => tonic::Code::AlreadyExists,
            PayloadTooLarge => tonic::Code::InvalidArgument,
            RateLimited => tonic::Code::ResourceExhausted,
            Internal => tonic::Code::Internal,
            Unavailable => tonic::Code::Unavailable,
        }
    }
}

/// `google.rpc.ErrorInfo.domain` of every gRPC error.
pub const DOMAIN: &str = "whatisup";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Map<String, Value>,
    /// Seconds, for `rate_limited`.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
        }
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// 400 naming the offending field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(Code::InvalidRequest, message).detail("field", field)
    }

    pub fn channel_not_found(id: &str) -> Self {
        ApiError::new(Code::ChannelNotFound, "no such channel").detail("channel_id", id)
    }

    pub fn transition(from: &str, action: &str) -> Self {
        ApiError::new(
            Code::InvalidLifecycleTransition,
            format!("cannot {action} a channel that is {from}"),
        )
        .detail("status", from)
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        // The cause goes to the log; the client gets the request id to quote.
        tracing::error!(error = %what, "internal error");
        ApiError::new(Code::Internal, "internal error")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(Code::Unavailable, message)
    }

    pub fn to_status(&self) -> tonic::Status {
        self.to_status_as(self.code.grpc())
    }

    /// The gRPC status with `grpc` as its code (an unknown method is UNIMPLEMENTED, not NOT_FOUND), ErrorInfo
    /// naming the contract's code, and RetryInfo when the client should wait.
    pub fn to_status_as(&self, grpc: tonic::Code) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut metadata = std::collections::HashMap::new();
        for (k, v) in &self.details {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            metadata.insert(k.clone(), v);
        }
        let mut details = ErrorDetails::with_error_info(self.code.as_str(), DOMAIN, metadata);
        if let Some(s) = self.retry_after {
            details.set_retry_info(Some(std::time::Duration::from_secs(s)));
        }
        tonic::Status::with_error_details(grpc, self.message.clone(), details)
    }

    /// A status tonic made itself (before or around our handlers) as the contract's error, with the gRPC code
    /// to answer. An undecodable message is the client's fault (INVALID_ARGUMENT, not tonic's INTERNAL).
    pub fn from_tonic(code: tonic::Code, message: &str) -> (ApiError, tonic::Code) {
        use tonic::Code as G;
        let msg = |fallback: &str| {
            if message.is_empty() {
                fallback.to_string()
            } else {
                message.to_string()
            }
        };
        match code {
            G::Unimplemented => (
                ApiError::new(Code::NotFound, msg("no such method")),
                G::Unimplemented,
            ),
            G::Internal if message.contains("decode") || message.contains("compression") => {
                let e = ApiError::invalid("body", format!("malformed request message: {message}"));
                (e, G::InvalidArgument)
            }
            G::OutOfRange if message.contains("too large") => {
                let e = ApiError::new(Code::PayloadTooLarge, msg("the message is too large"));
                (e, Code::PayloadTooLarge.grpc())
            }
            G::InvalidArgument => (
                ApiError::invalid("body", msg("invalid request")),
                G::InvalidArgument,
            ),
            G::ResourceExhausted => (
                ApiError::new(Code::RateLimited, msg("too many requests")),
                G::ResourceExhausted,
            ),
            G::Unavailable | G::Cancelled | G::DeadlineExceeded => {
                (ApiError::new(Code::Unavailable, msg("unavailable")), code)
            }
            _ => (ApiError::new(Code::Internal, msg("internal error")), code),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %e, "database pool");
        ApiError::unavailable("database unavailable")
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(format!("{e:#}"))
    }
}
