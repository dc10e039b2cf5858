//! SageMaker Runtime on the wire, as botocore's `sagemaker-runtime` model
//! (2017-05-13) defines it: the paths of InvokeEndpoint and
//! InvokeEndpointWithResponseStream, the public endpoint, the headers, the error
//! types with their statuses, and the frames of a response stream (`PayloadPart`
//! events whose payload is the container's raw bytes, `ModelStreamError` and
//! `InternalStreamFailure` exceptions).

use aws_smithy_types::event_stream::Message;
use bytes::Bytes;
use percent_encoding::utf8_percent_encode;

use crate::eventstream::{encode, string_header, Frame, FrameKind};

/// The SigV4 signing name of SageMaker Runtime.
pub const SIGNING_NAME: &str = "sagemaker";
/// The `:event-type` of a stream frame carrying response bytes.
pub const PAYLOAD_PART: &str = "PayloadPart";
/// Names an inference component of an endpoint that hosts several.
pub const INFERENCE_COMPONENT_HEADER: &str = "x-amzn-sagemaker-inference-component";
/// Opaque caller data, forwarded to the container.
pub const CUSTOM_ATTRIBUTES_HEADER: &str = "x-amzn-sagemaker-custom-attributes";
/// InvokeEndpointWithResponseStream's Accept (InvokeEndpoint uses `Accept`).
pub const STREAM_ACCEPT_HEADER: &str = "x-amzn-sagemaker-accept";
/// The container's content type on a response stream (InvokeEndpoint uses
/// `Content-Type`).
pub const STREAM_CONTENT_TYPE_HEADER: &str = "x-amzn-sagemaker-content-type";
/// The production variant that answered.
pub const INVOKED_VARIANT_HEADER: &str = "x-amzn-invoked-production-variant";
/// Largest request body (`BodyBlob`'s max).
pub const MAX_BODY_BYTES: usize = 6_291_456;
/// Longest endpoint or inference component name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest `X-Amzn-SageMaker-Custom-Attributes` value.
pub const MAX_CUSTOM_ATTRIBUTES_LEN: usize = 1024;

/// The two real-time invocation operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SageMakerOperation {
    InvokeEndpoint,
    InvokeEndpointWithResponseStream,
}

impl SageMakerOperation {
    /// The last path segment (`/endpoints/{EndpointName}/...`).
    pub fn path_segment(self) -> &'static str {
        match self {
            SageMakerOperation::InvokeEndpoint => "invocations",
            SageMakerOperation::InvokeEndpointWithResponseStream => "invocations-response-stream",
        }
    }

    /// The operation's kebab-case name, as logs and fault rules spell it.
    pub fn name(self) -> &'static str {
        match self {
            SageMakerOperation::InvokeEndpoint => "invoke-endpoint",
            SageMakerOperation::InvokeEndpointWithResponseStream => {
                "invoke-endpoint-with-response-stream"
            }
        }
    }

    /// Whether the answer is an event stream.
    pub fn is_stream(self) -> bool {
        self == SageMakerOperation::InvokeEndpointWithResponseStream
    }
}

/// `/endpoints/{EndpointName}/invocations[-response-stream]`, the name escaped as
/// the SDKs escape a path label.
pub fn endpoint_path(endpoint_name: &str, operation: SageMakerOperation) -> String {
    format!(
        "/endpoints/{}/{}",
        utf8_percent_encode(endpoint_name, crate::client::PATH_SEGMENT),
        operation.path_segment()
    )
}

/// SageMaker Runtime's public endpoint in `region` (`amazonaws.com.cn` in the
/// China regions).
pub fn runtime_endpoint(region: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://runtime.sagemaker.{region}.{domain}")
}

/// Whether `name` is a valid endpoint name (`^[a-zA-Z0-9](-*[a-zA-Z0-9])*`, at
/// most 63 characters).
pub fn valid_endpoint_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// SageMaker Runtime's error types. All but [`ThrottlingException`] are modeled;
/// throttling is AWS's common error, which SageMaker sends as a 400 whose body
/// carries `{"message": null}`.
///
/// [`ThrottlingException`]: SageMakerErrorType::Throttling
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SageMakerErrorType {
    InternalFailure,
    ServiceUnavailable,
    Validation,
    ModelError,
    InternalDependency,
    ModelNotReady,
    Throttling,
}

impl SageMakerErrorType {
    pub const ALL: [SageMakerErrorType; 7] = [
        SageMakerErrorType::InternalFailure,
        SageMakerErrorType::ServiceUnavailable,
        SageMakerErrorType::Validation,
        SageMakerErrorType::ModelError,
        SageMakerErrorType::InternalDependency,
        SageMakerErrorType::ModelNotReady,
        SageMakerErrorType::Throttling,
    ];

    /// The shape name, as sent in `x-amzn-ErrorType`.
    pub fn name(self) -> &'static str {
        match self {
            SageMakerErrorType::InternalFailure => "InternalFailure",
            SageMakerErrorType::ServiceUnavailable => "ServiceUnavailable",
            SageMakerErrorType::Validation => "ValidationError",
            SageMakerErrorType::ModelError => "ModelError",
            SageMakerErrorType::InternalDependency => "InternalDependencyException",
            SageMakerErrorType::ModelNotReady => "ModelNotReadyException",
            SageMakerErrorType::Throttling => "ThrottlingException",
        }
    }

    /// The HTTP status SageMaker answers with.
    pub fn status(self) -> u16 {
        match self {
            SageMakerErrorType::InternalFailure => 500,
            SageMakerErrorType::ServiceUnavailable => 503,
            SageMakerErrorType::Validation => 400,
            SageMakerErrorType::ModelError => 424,
            SageMakerErrorType::InternalDependency => 530,
            SageMakerErrorType::ModelNotReady => 429,
            SageMakerErrorType::Throttling => 400,
        }
    }

    /// Reads a type from `x-amzn-ErrorType` (a `:suffix` allowed).
    pub fn parse(raw: &str) -> Option<SageMakerErrorType> {
        let name = raw.split(':').next().unwrap_or(raw);
        SageMakerErrorType::ALL
            .into_iter()
            .find(|t| t.name() == name)
    }

    /// Whether a caller may retry the same request: throttling and the
    /// service's own failures, never a validation error or a model's answer.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            SageMakerErrorType::Throttling
                | SageMakerErrorType::ServiceUnavailable
                | SageMakerErrorType::InternalFailure
                | SageMakerErrorType::InternalDependency
                | SageMakerErrorType::ModelNotReady
        )
    }
}

/// The exceptions a response stream can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamException {
    /// The model failed while streaming; carries an `ErrorCode` such as
    /// `ModelInvocationTimeExceeded` or `StreamBroken`.
    ModelStreamError,
    /// SageMaker itself failed.
    InternalStreamFailure,
}

impl StreamException {
    pub const ALL: [StreamException; 2] = [
        StreamException::ModelStreamError,
        StreamException::InternalStreamFailure,
    ];

    /// The `:exception-type` header.
    pub fn name(self) -> &'static str {
        match self {
            StreamException::ModelStreamError => "ModelStreamError",
            StreamException::InternalStreamFailure => "InternalStreamFailure",
        }
    }

    pub fn parse(name: &str) -> Option<StreamException> {
        StreamException::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A `PayloadPart` event: the payload is the container's bytes, unencoded.
pub fn payload_part_frame(bytes: impl Into<Bytes>) -> Bytes {
    let message = Message::new(bytes)
        .add_header(string_header(":event-type", PAYLOAD_PART))
        .add_header(string_header(":content-type", "application/octet-stream"))
        .add_header(string_header(":message-type", "event"));
    encode(&message)
}

/// An exception frame ending a response stream; the payload holds the shape's
/// members (`Message`, and `ErrorCode` for `ModelStreamError`).
pub fn exception_frame(
    exception: StreamException,
    message: &str,
    error_code: Option<&str>,
) -> Bytes {
    let mut payload = serde_json::Map::new();
    payload.insert("Message".into(), message.into());
    if let Some(code) = error_code {
        payload.insert("ErrorCode".into(), code.into());
    }
    let frame = Message::new(serde_json::Value::Object(payload).to_string())
        .add_header(string_header(":exception-type", exception.name()))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "exception"));
    encode(&frame)
}

/// The bytes a decoded frame carries when it is a `PayloadPart`.
pub fn payload_part(frame: &Frame) -> Option<&Bytes> {
    match &frame.kind {
        FrameKind::Event(kind) if kind == PAYLOAD_PART => Some(&frame.payload),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::{decode, FrameSplitter};
    use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};

    #[test]
    fn paths_and_endpoints() {
        assert_eq!(
            endpoint_path(
                "llama-3-1-8b",
                SageMakerOperation::InvokeEndpointWithResponseStream
            ),
            "/endpoints/llama-3-1-8b/invocations-response-stream"
        );
        assert_eq!(
            endpoint_path("a b", SageMakerOperation::InvokeEndpoint),
            "/endpoints/a%20b/invocations"
        );
        assert_eq!(
            runtime_endpoint("us-east-1"),
            "https://runtime.sagemaker.us-east-1.amazonaws.com"
        );
        assert_eq!(
            runtime_endpoint("cn-northwest-1"),
            "https://runtime.sagemaker.cn-northwest-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn endpoint_names_follow_the_model_pattern() {
        for ok in ["a", "llama-3-1-8b", "A--b", &"x".repeat(63)] {
            assert!(valid_endpoint_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!valid_endpoint_name(bad), "{bad}");
        }
    }

    #[test]
    fn error_types_parse_and_carry_statuses() {
        for t in SageMakerErrorType::ALL {
            assert_eq!(SageMakerErrorType::parse(t.name()), Some(t));
        }
        assert_eq!(
            SageMakerErrorType::parse("ValidationError:http://internal.amazon.com/coral/x/"),
            Some(SageMakerErrorType::Validation)
        );
        assert_eq!(SageMakerErrorType::ModelError.status(), 424);
        assert_eq!(SageMakerErrorType::Throttling.status(), 400);
        assert!(SageMakerErrorType::Throttling.is_retryable());
        assert!(!SageMakerErrorType::Validation.is_retryable());
    }

    #[test]
    fn payload_parts_carry_raw_bytes_in_sdk_readable_frames() {
        let bytes = payload_part_frame(&b"data: {\"x\":1}\n\n"[..]);
        let mut decoder = MessageFrameDecoder::new();
        let DecodedFrame::Complete(message) = decoder.decode_frame(bytes.clone()).unwrap() else {
            panic!("one whole frame expected");
        };
        let headers: Vec<_> = message
            .headers()
            .iter()
            .map(|h| {
                (
                    h.name().as_str().to_owned(),
                    h.value().as_string().unwrap().as_str().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            headers,
            [
                (":event-type".into(), "PayloadPart".into()),
                (":content-type".into(), "application/octet-stream".into()),
                (":message-type".into(), "event".into()),
            ]
        );
        let mut splitter = FrameSplitter::new();
        splitter.push(&bytes);
        let frame = decode(splitter.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(
            payload_part(&frame).unwrap().as_ref(),
            b"data: {\"x\":1}\n\n"
        );
    }

    #[test]
    fn exception_frames_carry_the_shape_members() {
        let frame = decode(exception_frame(
            StreamException::ModelStreamError,
            "broken",
            Some("StreamBroken"),
        ))
        .unwrap();
        assert_eq!(frame.kind, FrameKind::Exception("ModelStreamError".into()));
        assert!(payload_part(&frame).is_none());
        let body: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"Message": "broken", "ErrorCode": "StreamBroken"})
        );
    }
}
