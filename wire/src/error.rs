//! Bedrock Runtime's error types: names, HTTP statuses, stream member names and
//! JSON bodies, as `bedrock-runtime-service-2.json` defines them.

use bytes::Bytes;

/// The suffix Bedrock appends to `x-amzn-ErrorType`; SDKs read the part before `:`.
const ERROR_TYPE_SUFFIX: &str = ":http://internal.amazon.com/coral/com.amazon.bedrock/";

/// One of Bedrock Runtime's modeled exceptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    AccessDenied,
    Conflict,
    InternalServer,
    ModelError,
    ModelNotReady,
    ModelStreamError,
    ModelTimeout,
    ResourceNotFound,
    ServiceQuotaExceeded,
    ServiceUnavailable,
    Throttling,
    Validation,
}

impl ErrorType {
    pub const ALL: [ErrorType; 12] = [
        ErrorType::AccessDenied,
        ErrorType::Conflict,
        ErrorType::InternalServer,
        ErrorType::ModelError,
        ErrorType::ModelNotReady,
        ErrorType::ModelStreamError,
        ErrorType::ModelTimeout,
        ErrorType::ResourceNotFound,
        ErrorType::ServiceQuotaExceeded,
        ErrorType::ServiceUnavailable,
        ErrorType::Throttling,
        ErrorType::Validation,
    ];

    /// The shape name, as sent in `x-amzn-ErrorType`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::AccessDenied => "AccessDeniedException",
            ErrorType::Conflict => "ConflictException",
            ErrorType::InternalServer => "InternalServerException",
            ErrorType::ModelError => "ModelErrorException",
            ErrorType::ModelNotReady => "ModelNotReadyException",
            ErrorType::ModelStreamError => "ModelStreamErrorException",
            ErrorType::ModelTimeout => "ModelTimeoutException",
            ErrorType::ResourceNotFound => "ResourceNotFoundException",
            ErrorType::ServiceQuotaExceeded => "ServiceQuotaExceededException",
            ErrorType::ServiceUnavailable => "ServiceUnavailableException",
            ErrorType::Throttling => "ThrottlingException",
            ErrorType::Validation => "ValidationException",
        }
    }

    /// The HTTP status the API model gives this error.
    pub fn status(self) -> u16 {
        match self {
            ErrorType::AccessDenied => 403,
            ErrorType::Conflict => 400,
            ErrorType::InternalServer => 500,
            ErrorType::ModelError => 424,
            ErrorType::ModelNotReady => 429,
            ErrorType::ModelStreamError => 424,
            ErrorType::ModelTimeout => 408,
            ErrorType::ResourceNotFound => 404,
            ErrorType::ServiceQuotaExceeded => 400,
            ErrorType::ServiceUnavailable => 503,
            ErrorType::Throttling => 429,
            ErrorType::Validation => 400,
        }
    }

    /// The member name of this error in the ConverseStream / InvokeModelWithResponseStream
    /// unions (the `:exception-type` header), where it can occur in a stream.
    pub fn stream_member(self) -> Option<&'static str> {
        match self {
            ErrorType::InternalServer => Some("internalServerException"),
            ErrorType::ModelStreamError => Some("modelStreamErrorException"),
            ErrorType::Validation => Some("validationException"),
            ErrorType::Throttling => Some("throttlingException"),
            ErrorType::ServiceUnavailable => Some("serviceUnavailableException"),
            ErrorType::ModelTimeout => Some("modelTimeoutException"),
            _ => None,
        }
    }

    /// Reads a type from `x-amzn-ErrorType` (suffix allowed), a body's `__type`
    /// or a stream's `:exception-type`.
    pub fn parse(raw: &str) -> Option<ErrorType> {
        let name = raw.split(':').next().unwrap_or(raw);
        let name = name.rsplit('#').next().unwrap_or(name);
        ErrorType::ALL
            .into_iter()
            .find(|t| t.name() == name || t.stream_member().is_some_and(|m| m == name))
    }

    /// The `x-amzn-ErrorType` header value, as Bedrock writes it.
    pub fn header_value(self) -> String {
        format!("{}{}", self.name(), ERROR_TYPE_SUFFIX)
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The JSON body of a Bedrock error: `{"message": "..."}`.
pub fn error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": message }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_every_spelling() {
        for t in ErrorType::ALL {
            assert_eq!(ErrorType::parse(t.name()), Some(t));
            assert_eq!(ErrorType::parse(&t.header_value()), Some(t));
            if let Some(member) = t.stream_member() {
                assert_eq!(ErrorType::parse(member), Some(t));
            }
        }
        assert_eq!(
            ErrorType::parse("com.amazon.bedrock#ThrottlingException"),
            Some(ErrorType::Throttling)
        );
        assert_eq!(ErrorType::parse("NoSuchThing"), None);
    }

    #[test]
    fn statuses_follow_the_api_model() {
        let model: serde_json::Value = serde_json::from_str(include_str!(
            "../../reference/bedrock-runtime-service-2.json"
        ))
        .unwrap();
        for t in ErrorType::ALL {
            let shape = &model["shapes"][t.name()];
            assert_eq!(
                shape["error"]["httpStatusCode"].as_u64(),
                Some(u64::from(t.status())),
                "{t}"
            );
        }
    }
}
