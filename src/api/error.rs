//! The one error type at the HTTP edge. Every failure a client can see is an
//! [`ApiError`], rendered as `{"error": {"code", "message", "field"}}` with its
//! status decided here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, snake_case, stable.
    pub code: &'static str,
    /// For people; may change between versions.
    pub message: String,
    /// The offending input field (dotted path), when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, bad query).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// 422: well-formed but invalid (unknown field, wrong type, out of range).
    #[error("{message}")]
    Validation {
        message: String,
        field: Option<String>,
    },
    /// 401: no credential, or one that is wrong or expired.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: the credential is fine but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing in the caller's organization.
    #[error("{0}")]
    NotFound(String),
    /// 409: the thing exists or is in a state that forbids this.
    #[error("{0}")]
    Conflict(String),
    /// 405: the path exists, not with this method; `allow` lists those it
    /// has.
    #[error("{message}")]
    MethodNotAllowed { message: String, allow: String },
    /// 408: the body did not arrive within `server.body_read_timeout_ms`;
    /// the connection is closed after the answer.
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    /// 413: body larger than the configured limit.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: wrong `Content-Type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: too many requests for this credential; retry after the delay.
    #[error("rate limit exceeded; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// 429: an organization quota (e.g. open sessions) is used up.
    #[error("{0}")]
    QuotaExceeded(String),
    /// 503: a dependency (database, Redis) is not reachable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; details go to the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            code: "unauthorized",
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unauthorized { code, .. } => code,
            ApiError::Validation { .. } => "validation_failed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::Validation { field, .. } => {
                field.clone()
            }
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        let message = match self {
            ApiError::Internal(_) => {
                "internal error; the server log has the details under this request's \
                 X-Request-Id"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message,
                field: self.field(),
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited { retry_after_s } => {
                response.insert_header((header::RETRY_AFTER, retry_after_s.to_string()));
            }
            ApiError::Unauthorized { .. } => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"palaver\""),
                ));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            // The rest of a slow body is not waited for.
            ApiError::BodyTimeout(_) => {
                response.force_close();
            }
            _ => {}
        }
        response.json(body)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(message) | StoreError::InvalidState(message) => {
                ApiError::Conflict(message)
            }
            StoreError::LimitReached(message) => ApiError::QuotaExceeded(message),
            StoreError::Unavailable(message) => {
                tracing::warn!(%message, "database unavailable");
                ApiError::Unavailable("the database is not reachable; try again shortly".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::auth::HashingFailed> for ApiError {
    fn from(err: crate::auth::HashingFailed) -> Self {
        match err {
            crate::auth::HashingFailed::Busy => ApiError::Unavailable(err.to_string()),
            crate::auth::HashingFailed::Panicked => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<crate::state::RetryAfter> for ApiError {
    fn from(retry: crate::state::RetryAfter) -> Self {
        ApiError::RateLimited {
            retry_after_s: retry.seconds,
        }
    }
}

/// 503 while the node drains (see `server::drain`): new sessions and joins
/// belong on another node.
pub fn refuse_if_draining(state: &crate::state::AppState) -> Result<(), ApiError> {
    if state.is_draining() {
        return Err(ApiError::Unavailable(
            "this node is shutting down and takes no new sessions; try again (another node \
             will take it)"
                .into(),
        ));
    }
    Ok(())
}

/// Maps "not found" to a message naming the thing, everything else as usual.
pub fn not_found(
    what: &'static str,
    id: impl std::fmt::Display,
) -> impl FnOnce(StoreError) -> ApiError {
    move |err| match err {
        StoreError::NotFound => ApiError::NotFound(format!("no {what} with id {id}")),
        other => other.into(),
    }
}
