//! The simulator's error responses: Bedrock's modeled exceptions plus the
//! authentication errors AWS's front door returns, each with `x-amzn-ErrorType`
//! and a JSON `message`, exactly as an SDK expects to parse them.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bedrock_wire::error::{error_body, ErrorType};

/// An error the simulated Bedrock answers with.
#[derive(Debug, Clone)]
pub struct SimError {
    pub status: StatusCode,
    /// The `x-amzn-ErrorType` name, such as `ThrottlingException`.
    pub type_name: &'static str,
    pub message: String,
}

impl SimError {
    /// One of Bedrock Runtime's modeled exceptions.
    pub fn modeled(kind: ErrorType, message: impl Into<String>) -> Self {
        SimError {
            status: StatusCode::from_u16(kind.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            type_name: kind.name(),
            message: message.into(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::modeled(ErrorType::Validation, message)
    }

    /// A request body that is not what the operation expects.
    pub fn malformed(detail: impl std::fmt::Display) -> Self {
        Self::validation(format!(
            "Malformed input request: {detail}, please reformat your input and try again."
        ))
    }

    /// AWS's answer to a request without any credentials.
    pub fn missing_authentication() -> Self {
        SimError {
            status: StatusCode::FORBIDDEN,
            type_name: "MissingAuthenticationTokenException",
            message: "Missing Authentication Token".into(),
        }
    }

    /// AWS's answer to an unknown access key or API key.
    pub fn unrecognized_client() -> Self {
        SimError {
            status: StatusCode::FORBIDDEN,
            type_name: "UnrecognizedClientException",
            message: "The security token included in the request is invalid.".into(),
        }
    }

    /// AWS's answer to a signature that does not verify.
    pub fn invalid_signature(message: impl Into<String>) -> Self {
        SimError {
            status: StatusCode::FORBIDDEN,
            type_name: "InvalidSignatureException",
            message: message.into(),
        }
    }

    /// AWS's answer to a path that names no operation.
    pub fn unknown_operation() -> Self {
        SimError {
            status: StatusCode::NOT_FOUND,
            type_name: "UnknownOperationException",
            message: "The requested operation is not recognized by the service.".into(),
        }
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let mut response = (self.status, error_body(&self.message)).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let error_type = format!(
            "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            self.type_name
        );
        if let Ok(v) = HeaderValue::from_str(&error_type) {
            headers.insert("x-amzn-errortype", v);
        }
        response
    }
}
