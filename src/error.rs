//! The proxy's one error type: a kind (which also labels metrics and selects
//! fallback), a side (client, upstream, internal), a retryable flag, and, for
//! upstream errors, the response exactly as received so it can pass through.
//!
//! [`ProxyError::status`] is the one place kinds become HTTP statuses; each ingress
//! renders the body in its own API's shape (this module renders Bedrock's; the
//! OpenAI and Anthropic shapes live with their ingress).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bedrock_wire::error::{error_body, ErrorType};
use bytes::Bytes;

/// What went wrong, in the proxy's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is invalid: bad JSON, too large, too deep, unknown route.
    Validation,
    /// No credentials, or credentials this proxy does not accept (an unknown
    /// key, a bad signature).
    Unauthenticated,
    /// A known caller asking for what its key does not allow.
    AccessDenied,
    /// The request body is larger than the proxy accepts.
    TooLarge,
    /// A local rate limit, or upstream throttling.
    Throttled,
    /// Overload, shutdown, or an upstream that is unavailable or unreachable.
    Unavailable,
    /// A deadline passed.
    Timeout,
    /// The client did not send its request in time (a stalled body).
    RequestTimeout,
    /// The upstream model is not ready yet.
    ModelNotReady,
    /// The upstream cannot do what was asked here (a latency tier, a feature).
    Unsupported,
    /// The model failed while answering.
    ModelError,
    /// An upstream quota that retrying will not fix.
    QuotaExceeded,
    /// A tenant's, key's or route's dollar budget for the day or month is
    /// spent (429, like throttling, but it lasts until the window turns).
    BudgetExceeded,
    /// The upstream resource does not exist.
    NotFound,
    /// A bug or an upstream internal error.
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Validation,
        ErrorKind::Unauthenticated,
        ErrorKind::AccessDenied,
        ErrorKind::TooLarge,
        ErrorKind::Throttled,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::RequestTimeout,
        ErrorKind::ModelNotReady,
        ErrorKind::Unsupported,
        ErrorKind::ModelError,
        ErrorKind::QuotaExceeded,
        ErrorKind::BudgetExceeded,
        ErrorKind::NotFound,
        ErrorKind::Internal,
    ];

    /// Whether a fallback chain may move on after this kind of error: the
    /// upstream's failures, not the client's own mistakes.
    pub fn can_fall_back(self) -> bool {
        !matches!(
            self,
            ErrorKind::Validation
                | ErrorKind::Unauthenticated
                | ErrorKind::AccessDenied
                | ErrorKind::TooLarge
                | ErrorKind::NotFound
                | ErrorKind::RequestTimeout
                | ErrorKind::BudgetExceeded
        )
    }

    /// The label used in metrics and in `fallback_on`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::ModelNotReady => "model_not_ready",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ModelError => "model_error",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of a label (`fallback_on`); `None` for anything else.
    pub fn parse(label: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }

    /// The Bedrock exception this kind is reported as. A request the client did
    /// not finish sending is the exception: Bedrock's model has no type for it,
    /// and it is answered as AWS front ends do ([`REQUEST_TIMEOUT_TYPE`]); this
    /// is its closest modeled type, for where only those fit (stream frames).
    pub fn bedrock_type(self) -> ErrorType {
        match self {
            ErrorKind::Validation | ErrorKind::Unsupported | ErrorKind::TooLarge => {
                ErrorType::Validation
            }
            ErrorKind::Unauthenticated | ErrorKind::AccessDenied => ErrorType::AccessDenied,
            ErrorKind::Throttled | ErrorKind::BudgetExceeded => ErrorType::Throttling,
            ErrorKind::Unavailable => ErrorType::ServiceUnavailable,
            ErrorKind::Timeout | ErrorKind::RequestTimeout => ErrorType::ModelTimeout,
            ErrorKind::ModelNotReady => ErrorType::ModelNotReady,
            ErrorKind::ModelError => ErrorType::ModelError,
            ErrorKind::QuotaExceeded => ErrorType::ServiceQuotaExceeded,
            ErrorKind::NotFound => ErrorType::ResourceNotFound,
            ErrorKind::Internal => ErrorType::InternalServer,
        }
    }

    /// Whether the same request may succeed if sent again.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::ModelNotReady
                | ErrorKind::Internal
        )
    }

    /// The kind of a Bedrock exception, wherever it was reported (an error
    /// response's `x-amzn-ErrorType`, a stream's exception frame).
    pub fn from_bedrock(t: ErrorType) -> ErrorKind {
        match t {
            ErrorType::Validation | ErrorType::Conflict => ErrorKind::Validation,
            ErrorType::AccessDenied => ErrorKind::AccessDenied,
            ErrorType::Throttling => ErrorKind::Throttled,
            ErrorType::ServiceUnavailable => ErrorKind::Unavailable,
            ErrorType::ModelTimeout => ErrorKind::Timeout,
            ErrorType::ModelNotReady => ErrorKind::ModelNotReady,
            ErrorType::ModelError | ErrorType::ModelStreamError => ErrorKind::ModelError,
            ErrorType::ServiceQuotaExceeded => ErrorKind::QuotaExceeded,
            ErrorType::ResourceNotFound => ErrorKind::NotFound,
            ErrorType::InternalServer => ErrorKind::Internal,
        }
    }
}

/// The `x-amzn-ErrorType` of a request body that stalled, with status 408: the
/// error AWS front ends answer a request the client did not finish sending
/// with; the AWS SDKs count it as transient and retry it.
pub const REQUEST_TIMEOUT_TYPE: &str = "RequestTimeoutException";

/// Whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// An upstream error response, kept byte for byte.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Headers of an upstream error worth passing on.
const PASSED_ERROR_HEADERS: [&str; 3] = ["x-amzn-errortype", "x-amzn-requestid", "content-type"];

/// The proxy's error.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub side: Side,
    pub retryable: bool,
    pub message: String,
    /// The request member a client error is about (OpenAI's `param`).
    pub param: Option<String>,
    /// Set when this is an upstream error response, to pass it through.
    pub upstream: Option<Box<UpstreamFailure>>,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.message)
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    /// An error the proxy raises itself.
    pub fn new(kind: ErrorKind, side: Side, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            side,
            retryable: kind.retryable() && side != Side::Client,
            message: message.into(),
            param: None,
            upstream: None,
        }
    }

    /// The same error, about request member `param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The client sent something invalid.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, Side::Client, message)
    }

    /// The client sent no credentials, or ones this proxy does not accept.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, Side::Client, message)
    }

    /// The client may not do this.
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AccessDenied, Side::Client, message)
    }

    /// The request body is over the proxy's limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, Side::Client, message)
    }

    /// The client is over a local limit.
    pub fn throttled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Throttled, Side::Client, message)
    }

    /// The proxy is overloaded or shutting down.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, Side::Internal, message)
    }

    /// A bug.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, Side::Internal, message)
    }

    /// The upstream could not be reached or broke the connection.
    pub fn upstream_unreachable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, Side::Upstream, message)
    }

    /// The client's request body did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RequestTimeout, Side::Client, message)
    }

    /// An upstream deadline passed.
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, Side::Upstream, message)
    }

    /// An upstream error response, classified by its `x-amzn-ErrorType` (or
    /// status) and kept for pass-through.
    pub fn from_upstream(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let error_type = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorType::parse);
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("Message"))
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("upstream answered {status}"));
        let mut kind = match error_type {
            Some(t) => ErrorKind::from_bedrock(t),
            None => match status.as_u16() {
                403 => ErrorKind::AccessDenied,
                408 => ErrorKind::Timeout,
                429 => ErrorKind::Throttled,
                404 => ErrorKind::NotFound,
                400..=499 => ErrorKind::Validation,
                502..=504 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        };
        // Bedrock reports a tier or feature the model lacks as a ValidationException;
        // fallback policies treat it apart from a malformed request.
        let lower = message.to_ascii_lowercase();
        if kind == ErrorKind::Validation
            && (lower.contains("not supported")
                || lower.contains("doesn't support")
                || lower.contains("does not support"))
        {
            kind = ErrorKind::Unsupported;
        }
        let mut kept = HeaderMap::new();
        for name in PASSED_ERROR_HEADERS {
            if let Some(v) = headers.get(name) {
                kept.insert(name, v.clone());
            }
        }
        ProxyError {
            kind,
            side: Side::Upstream,
            retryable: kind.retryable(),
            message,
            param: None,
            upstream: Some(Box::new(UpstreamFailure {
                status,
                headers: kept,
                body,
            })),
        }
    }

    /// The HTTP status: the upstream's own for a passed-through error, else the
    /// status of the Bedrock exception the kind maps to.
    pub fn status(&self) -> StatusCode {
        if let Some(up) = &self.upstream {
            return up.status;
        }
        if self.kind == ErrorKind::RequestTimeout {
            return StatusCode::REQUEST_TIMEOUT;
        }
        StatusCode::from_u16(self.kind.bedrock_type().status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The response a Bedrock client gets: upstream errors byte for byte, the
    /// proxy's own as `x-amzn-ErrorType` plus `{"message": ...}`.
    pub fn bedrock_response(&self, request_id: &str) -> Response {
        let mut response = match &self.upstream {
            Some(up) => {
                let mut r = (up.status, up.body.clone()).into_response();
                r.headers_mut().extend(up.headers.clone());
                r
            }
            None => {
                let error_type = match self.kind {
                    ErrorKind::RequestTimeout => REQUEST_TIMEOUT_TYPE.to_owned(),
                    kind => kind.bedrock_type().header_value(),
                };
                let mut r = (self.status(), error_body(&self.message)).into_response();
                let h = r.headers_mut();
                h.insert("content-type", HeaderValue::from_static("application/json"));
                if let Ok(v) = HeaderValue::from_str(&error_type) {
                    h.insert("x-amzn-errortype", v);
                }
                r
            }
        };
        if !response.headers().contains_key("x-amzn-requestid") {
            if let Ok(v) = HeaderValue::from_str(request_id) {
                response.headers_mut().insert("x-amzn-requestid", v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_are_classified_and_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        );
        headers.insert("x-amzn-requestid", HeaderValue::from_static("abc"));
        headers.insert("x-other", HeaderValue::from_static("dropped"));
        let e = ProxyError::from_upstream(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            Bytes::from_static(br#"{"message":"slow down"}"#),
        );
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert!(e.retryable);
        assert_eq!(e.message, "slow down");
        let r = e.bedrock_response("mine");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-amzn-requestid"], "abc");
        assert!(r.headers().get("x-other").is_none());
    }

    #[test]
    fn unsupported_tiers_are_not_plain_validation_errors() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ValidationException"),
        );
        let e = ProxyError::from_upstream(
            StatusCode::BAD_REQUEST,
            &headers,
            Bytes::from_static(
                br#"{"message":"Latency-optimized inference is not supported for x"}"#,
            ),
        );
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(!e.retryable);
    }

    #[test]
    fn own_errors_are_bedrock_shaped() {
        for (e, status, ty) in [
            (ProxyError::validation("bad"), 400, "ValidationException"),
            (
                ProxyError::access_denied("no"),
                403,
                "AccessDeniedException",
            ),
            (ProxyError::throttled("slow"), 429, "ThrottlingException"),
            (
                ProxyError::overloaded("busy"),
                503,
                "ServiceUnavailableException",
            ),
            (
                ProxyError::upstream_timeout("late"),
                408,
                "ModelTimeoutException",
            ),
            (
                ProxyError::request_timeout("stalled"),
                408,
                "RequestTimeoutException",
            ),
        ] {
            let r = e.bedrock_response("rid");
            assert_eq!(r.status(), status);
            assert!(r.headers()["x-amzn-errortype"]
                .to_str()
                .unwrap()
                .starts_with(ty));
            assert_eq!(r.headers()["x-amzn-requestid"], "rid");
        }
        assert!(
            !ProxyError::throttled("x").retryable,
            "the client's own limit is not retried"
        );
    }
}
