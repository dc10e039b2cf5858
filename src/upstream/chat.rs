//! One attempt on an `openai` or `sagemaker` target: the chat request that
//! planning translated goes out, and the answer comes back as the Converse
//! answer Bedrock would have sent (a Converse body, or ConverseStream frames
//! built as the server's chunks arrive), so every ingress, the cache and
//! fallback treat it as a Bedrock answer. Errors are classified by the
//! server's own vocabulary (OpenAI's error objects, SageMaker's error types)
//! into the proxy's kinds, so fallback and retries work the same.
//!
//! A server that refuses `stream_options` (some OpenAI-compatible servers
//! answer 400 to it) is asked again without it, once, and not asked again;
//! answers without usage get an estimate, counted in
//! `bedrock_proxy_usage_estimated_total`.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bedrock_wire::converse::{ConverseEvent, Summary};
use bedrock_wire::eventstream::{decode, Frame, FrameKind, FrameSplitter};
use bedrock_wire::operation::Operation;
use bedrock_wire::sagemaker::{SageMakerErrorType, StreamException, PAYLOAD_PART};
use bedrock_wire::sse::SseDecoder;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::chain::{Prepared, Target};
use super::{read_body, Upstream, UpstreamResponse};
use crate::answer::Answer;
use crate::chat::{self, ChunkReader};
use crate::config::UpstreamKind;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::metrics;
use crate::stream::{self as relay, FrameStream, RelayedFrame};

/// Largest whole answer read into memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body kept.
const MAX_ERROR_BYTES: usize = 1024 * 1024;
/// How long a finished stream's connection is read to its end, so that it
/// can be reused, before it is let go.
const DRAIN: Duration = Duration::from_secs(1);

/// An attempt on a target whose upstream speaks chat ([`UpstreamKind::speaks_chat`]).
pub async fn attempt(
    target: &Target,
    op: Operation,
    prepared: Prepared,
    first_byte: Duration,
    deadline: Instant,
    route: &Arc<str>,
) -> Result<Answer, ProxyError> {
    let upstream = &target.upstream;
    let sent = Instant::now();
    let mut body = prepared.body;
    let send = |body: Bytes| {
        upstream.send(
            op,
            &target.model,
            body,
            &prepared.headers,
            first_byte.saturating_sub(sent.elapsed()),
            deadline,
        )
    };
    let mut response = send(body.clone()).await?;
    if !response.status.is_success() {
        let failure = failure(upstream, response, deadline).await?;
        match without_stream_options(&body) {
            Some(stripped) if failure.refused_stream_options => {
                upstream.refused_stream_options();
                body = stripped;
                response = send(body.clone()).await?;
                if !response.status.is_success() {
                    return Err(failure_of(upstream, response, deadline).await);
                }
            }
            _ => return Err(failure.error),
        }
    }
    let label = metrics::route_label(route);
    let kind = upstream.config.kind;
    let mut headers = HeaderMap::new();
    if !op.is_stream() {
        let raw = read_body(response.body, MAX_RESPONSE_BYTES, deadline, &upstream.name).await?;
        target.metrics.upstream_ttft(op, sent.elapsed());
        let answer: Value = serde_json::from_slice(&raw).map_err(|e| {
            ProxyError::upstream_unreachable(format!(
                "upstream {} answered with something that is not JSON: {e}",
                upstream.name
            ))
        })?;
        let latency_ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (converse, estimated) =
            chat::response(&answer, &upstream.name, estimate_input(&body), latency_ms)?;
        if estimated {
            metrics::usage_estimated(&label, kind.name());
        }
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let summary = Summary::of_response(&converse);
        return Ok(Answer::Whole {
            headers,
            body: Bytes::from(converse.to_string()),
            summary,
        });
    }

    let framing = match kind {
        UpstreamKind::SageMaker => Framing::PayloadParts(FrameSplitter::new()),
        _ => Framing::Sse,
    };
    let mut frames = frames(
        response.body,
        Parser::new(framing, &upstream.name),
        Reading {
            idle: upstream.timeouts().idle,
            deadline,
            sent,
            request: body,
            route: label.clone(),
            kind,
        },
    );
    let wait = first_byte.saturating_sub(sent.elapsed());
    let first = match tokio::time::timeout(wait, frames.next()).await {
        Err(_) => {
            return Err(ProxyError::upstream_timeout(format!(
                "upstream {} sent no event within {first_byte:?}",
                upstream.name
            )))
        }
        Ok(None) => {
            return Err(ProxyError::upstream_unreachable(format!(
                "upstream {} closed the stream without any event",
                upstream.name
            )))
        }
        Ok(Some(first)) => first?,
    };
    target.metrics.upstream_ttft(op, sent.elapsed());
    headers.insert(
        "content-type",
        HeaderValue::from_static(bedrock_wire::eventstream::CONTENT_TYPE),
    );
    Ok(Answer::Stream {
        headers,
        frames: relay::prepend(first, frames),
        joined: None,
    })
}

/// Input tokens of the chat request sent, for answers without usage.
fn estimate_input(request: &Bytes) -> u32 {
    serde_json::from_slice(request)
        .map(|chat: Value| chat::estimate_input(&chat))
        .unwrap_or(0)
}

/// The request without `stream_options`, when it has them.
fn without_stream_options(body: &Bytes) -> Option<Bytes> {
    let mut chat: Value = serde_json::from_slice(body).ok()?;
    chat.as_object_mut()?.remove("stream_options")?;
    Some(Bytes::from(chat.to_string()))
}

/// An error answer, classified.
struct Failure {
    error: ProxyError,
    /// The server refused the request's `stream_options`.
    refused_stream_options: bool,
}

async fn failure_of(
    upstream: &Upstream,
    response: UpstreamResponse,
    deadline: Instant,
) -> ProxyError {
    match failure(upstream, response, deadline).await {
        Ok(f) => f.error,
        Err(e) => e,
    }
}

async fn failure(
    upstream: &Upstream,
    response: UpstreamResponse,
    deadline: Instant,
) -> Result<Failure, ProxyError> {
    let body = read_body(response.body, MAX_ERROR_BYTES, deadline, &upstream.name).await?;
    Ok(match upstream.config.kind {
        UpstreamKind::SageMaker => {
            sagemaker_failure(&upstream.name, response.status, &response.headers, &body)
        }
        _ => openai_failure(&upstream.name, response.status, &body),
    })
}

/// An OpenAI-compatible server's error answer (`{"error": {"message", "type",
/// "code"}}`, or the shapes other servers use), by its status.
fn openai_failure(upstream: &str, status: StatusCode, body: &[u8]) -> Failure {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = chat::error_message(&json)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    let kind = chat::error_kind(Some(status.as_u16()), &json["error"]);
    Failure {
        refused_stream_options: status == StatusCode::BAD_REQUEST
            && message.contains("stream_options"),
        error: ProxyError::new(
            kind,
            Side::Upstream,
            format!("upstream {upstream} answered {status}: {message}"),
        ),
    }
}

/// SageMaker Runtime's error answer, by its `x-amzn-ErrorType`. A `ModelError`
/// wraps what the serving container answered: its own status says whose fault
/// it was (0: the invocation timed out).
fn sagemaker_failure(
    upstream: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Failure {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .and_then(SageMakerErrorType::parse);
    let message = json["message"]
        .as_str()
        .or_else(|| json["Message"].as_str())
        .map(str::to_owned);
    let mut refused_stream_options = false;
    let (kind, message) = match error_type {
        Some(SageMakerErrorType::Throttling) => (ErrorKind::Throttled, message),
        Some(SageMakerErrorType::ModelNotReady) => (ErrorKind::ModelNotReady, message),
        Some(SageMakerErrorType::ServiceUnavailable | SageMakerErrorType::InternalDependency) => {
            (ErrorKind::Unavailable, message)
        }
        Some(SageMakerErrorType::InternalFailure) => (ErrorKind::Internal, message),
        Some(SageMakerErrorType::Validation) => (ErrorKind::Validation, message),
        Some(SageMakerErrorType::ModelError) => {
            let original = json["OriginalStatusCode"].as_u64();
            // The container's own error, when it is an OpenAI-shaped JSON text.
            let inner = json["OriginalMessage"]
                .as_str()
                .and_then(|m| serde_json::from_str::<Value>(m).ok())
                .and_then(|v| chat::error_message(&v))
                .or_else(|| json["OriginalMessage"].as_str().map(str::to_owned));
            refused_stream_options = original == Some(400)
                && inner
                    .as_deref()
                    .is_some_and(|m| m.contains("stream_options"));
            let kind = match original {
                Some(0) => ErrorKind::Timeout,
                Some(429) => ErrorKind::Throttled,
                Some(400..=499) => ErrorKind::Validation,
                _ => ErrorKind::ModelError,
            };
            (kind, inner.or(message))
        }
        None => (
            match status.as_u16() {
                429 => ErrorKind::Throttled,
                403 => ErrorKind::AccessDenied,
                404 => ErrorKind::NotFound,
                400..=499 => ErrorKind::Validation,
                502..=504 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            message,
        ),
    };
    let name = error_type.map_or("an error", SageMakerErrorType::name);
    let message = message.unwrap_or_else(|| "no message".to_owned());
    Failure {
        refused_stream_options,
        error: ProxyError::new(
            kind,
            Side::Upstream,
            format!("upstream {upstream} answered {status} {name}: {message}"),
        ),
    }
}

/// How a stream's chunks arrive: as server-sent events in the body, or inside
/// SageMaker `PayloadPart` frames (cut wherever the container flushed).
enum Framing {
    Sse,
    PayloadParts(FrameSplitter),
}

/// Bytes of a chat stream in, ConverseStream events out.
struct Parser {
    framing: Framing,
    sse: SseDecoder,
    reader: ChunkReader,
    upstream: Arc<str>,
    /// `data: [DONE]` was read.
    done: bool,
}

impl Parser {
    fn new(framing: Framing, upstream: &Arc<str>) -> Parser {
        Parser {
            framing,
            sse: SseDecoder::new(),
            reader: ChunkReader::new(upstream),
            upstream: upstream.clone(),
            done: false,
        }
    }

    /// The events the next bytes of the body complete.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<ConverseEvent>, ProxyError> {
        match &mut self.framing {
            Framing::Sse => self.sse.push(bytes),
            Framing::PayloadParts(splitter) => {
                splitter.push(bytes);
                loop {
                    let raw = match splitter.next_frame() {
                        Ok(Some(raw)) => raw,
                        Ok(None) => break,
                        Err(e) => {
                            return Err(broken(
                                &self.upstream,
                                format_args!("sent a corrupt frame: {e}"),
                            ))
                        }
                    };
                    let frame = decode(raw).map_err(|e| {
                        broken(&self.upstream, format_args!("sent a corrupt frame: {e}"))
                    })?;
                    match &frame.kind {
                        FrameKind::Event(kind) if kind == PAYLOAD_PART => {
                            self.sse.push(&frame.payload)
                        }
                        FrameKind::Event(_) => {}
                        FrameKind::Exception(name) | FrameKind::Error(name) => {
                            return Err(stream_exception(&self.upstream, name, &frame))
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        while !self.done {
            match self.sse.next_event() {
                Err(e) => {
                    return Err(broken(
                        &self.upstream,
                        format_args!("sent an unreadable stream: {e}"),
                    ))
                }
                Ok(None) => break,
                Ok(Some(event)) if event.is_done() => self.done = true,
                Ok(Some(event)) => {
                    let chunk: Value = serde_json::from_str(&event.data).map_err(|e| {
                        broken(
                            &self.upstream,
                            format_args!("sent a chunk that is not JSON: {e}"),
                        )
                    })?;
                    out.extend(self.reader.chunk(&chunk)?);
                }
            }
        }
        Ok(out)
    }
}

/// A stream the proxy cannot read.
fn broken(upstream: &str, what: impl std::fmt::Display) -> ProxyError {
    ProxyError::upstream_unreachable(format!("upstream {upstream} {what}"))
}

/// A SageMaker stream exception (`ModelStreamError`, `InternalStreamFailure`).
fn stream_exception(upstream: &str, name: &str, frame: &Frame) -> ProxyError {
    let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
    let message = payload["Message"]
        .as_str()
        .or_else(|| payload["message"].as_str())
        .unwrap_or("no message");
    let kind = match StreamException::parse(name) {
        Some(StreamException::ModelStreamError) => ErrorKind::ModelError,
        _ => ErrorKind::Internal,
    };
    ProxyError::new(
        kind,
        Side::Upstream,
        format!("upstream {upstream} failed in the middle of the answer ({name}): {message}"),
    )
}

/// What reading a stream needs besides its parser.
struct Reading {
    idle: Duration,
    deadline: Instant,
    sent: Instant,
    /// The chat request, for an estimate of its tokens when the server
    /// reports no usage.
    request: Bytes,
    route: metrics::SharedString,
    kind: UpstreamKind,
}

struct Driving {
    body: Incoming,
    parser: Parser,
    reading: Reading,
    pending: VecDeque<ConverseEvent>,
    finished: bool,
}

impl Driving {
    /// The events that end the answer (`done`: the server said `[DONE]`).
    fn end(&mut self, done: bool) -> Result<(), ProxyError> {
        self.finished = true;
        let latency_ms = u64::try_from(self.reading.sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        let input = estimate_input(&self.reading.request);
        let (events, estimated) = self.parser.reader.end(done, input, latency_ms)?;
        if estimated {
            metrics::usage_estimated(&self.reading.route, self.reading.kind.name());
        }
        self.pending.extend(events);
        Ok(())
    }

    /// Reads what is left of a finished stream's body, briefly, so that its
    /// connection goes back to the pool.
    async fn drain(&mut self) {
        let _ = tokio::time::timeout(DRAIN, async {
            while let Some(Ok(_)) = self.body.frame().await {}
        })
        .await;
    }
}

fn relayed(event: ConverseEvent) -> RelayedFrame {
    RelayedFrame {
        raw: event.to_frame(),
        frame: Frame {
            kind: FrameKind::Event(event.kind.name().to_owned()),
            payload: event.payload,
        },
    }
}

/// The ConverseStream frames of a chat stream's body, as its chunks arrive.
/// Each read waits at most `idle` (and never past the deadline).
fn frames(body: Incoming, parser: Parser, reading: Reading) -> FrameStream {
    let state = Driving {
        body,
        parser,
        reading,
        pending: VecDeque::new(),
        finished: false,
    };
    Box::pin(stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(relayed(event)), Some(s)));
            }
            if s.finished {
                s.drain().await;
                return None;
            }
            if s.parser.done {
                if let Err(e) = s.end(true) {
                    return Some((Err(e), None));
                }
                continue;
            }
            let wait = s
                .reading
                .idle
                .min(s.reading.deadline.saturating_duration_since(Instant::now()));
            let upstream = s.parser.upstream.clone();
            match tokio::time::timeout(wait, s.body.frame()).await {
                Err(_) => {
                    let msg = format!(
                        "upstream {upstream} went silent for {wait:?} in the middle of a stream"
                    );
                    return Some((Err(ProxyError::upstream_timeout(msg)), None));
                }
                Ok(None) => {
                    if let Err(e) = s.end(false) {
                        return Some((Err(e), None));
                    }
                }
                Ok(Some(Err(e))) => {
                    let msg = format!("upstream {upstream} broke off the stream: {e}");
                    return Some((Err(ProxyError::upstream_unreachable(msg)), None));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        match s.parser.push(&data) {
                            Ok(events) => s.pending.extend(events),
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock_wire::sagemaker::{exception_frame, payload_part_frame};
    use serde_json::json;

    fn kinds(events: &[ConverseEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.name()).collect()
    }

    const SSE: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn payload_parts_cut_anywhere_give_the_events_of_the_plain_stream() {
        let name: Arc<str> = Arc::from("sm");
        let mut plain = Parser::new(Framing::Sse, &name);
        let whole = plain.push(SSE.as_bytes()).unwrap();
        assert!(plain.done);
        assert_eq!(
            kinds(&whole),
            [
                "messageStart",
                "contentBlockDelta",
                "contentBlockStop",
                "messageStop"
            ]
        );
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..100 {
            // Parts cut at random, and the frames' bytes delivered in random pieces.
            let mut body = Vec::new();
            let mut rest = SSE.as_bytes();
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(40));
                body.extend_from_slice(&payload_part_frame(rest[..n].to_vec()));
                rest = &rest[n..];
            }
            let mut parser = Parser::new(Framing::PayloadParts(FrameSplitter::new()), &name);
            let mut events = Vec::new();
            let mut bytes = &body[..];
            while !bytes.is_empty() {
                let n = rng.usize(1..=bytes.len().min(64));
                events.extend(parser.push(&bytes[..n]).unwrap());
                bytes = &bytes[n..];
            }
            assert!(parser.done);
            assert_eq!(events, whole);
        }
    }

    #[test]
    fn a_stream_exception_ends_the_answer_as_a_model_error() {
        let name: Arc<str> = Arc::from("sm");
        let mut parser = Parser::new(Framing::PayloadParts(FrameSplitter::new()), &name);
        let mut body = payload_part_frame(SSE.as_bytes()[..120].to_vec()).to_vec();
        body.extend_from_slice(&exception_frame(
            StreamException::ModelStreamError,
            "broken",
            Some("StreamBroken"),
        ));
        let e = parser.push(&body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelError);
        assert!(e.message.contains("broken"), "{}", e.message);
    }

    #[test]
    fn sagemaker_errors_are_classified_by_type_and_original_status() {
        let classify = |status: u16, error_type: &str, body: Value| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-amzn-errortype",
                HeaderValue::from_str(error_type).unwrap(),
            );
            sagemaker_failure(
                "sm",
                StatusCode::from_u16(status).unwrap(),
                &headers,
                body.to_string().as_bytes(),
            )
        };
        let f = classify(400, "ThrottlingException", json!({"message": null}));
        assert_eq!(f.error.kind, ErrorKind::Throttled);
        assert!(f.error.retryable);
        let f = classify(429, "ModelNotReadyException", json!({"message": "warming"}));
        assert_eq!(f.error.kind, ErrorKind::ModelNotReady);
        let f = classify(
            424,
            "ModelError",
            json!({"ErrorCode": "CLIENT_ERROR_FROM_MODEL", "OriginalStatusCode": 400,
                "OriginalMessage": "{\"error\":{\"message\":\"Unrecognized request argument supplied: stream_options\"}}",
                "Message": "Received client error (400) from primary"}),
        );
        assert_eq!(f.error.kind, ErrorKind::Validation);
        assert!(f.refused_stream_options);
        assert!(f.error.message.contains("Unrecognized request argument"));
        let f = classify(
            424,
            "ModelError",
            json!({"OriginalStatusCode": 0, "Message": "timed out"}),
        );
        assert_eq!(f.error.kind, ErrorKind::Timeout);
        let f = classify(503, "ServiceUnavailable", json!({"message": "busy"}));
        assert_eq!(f.error.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn openai_errors_are_classified_and_stream_options_refusals_seen() {
        let f = openai_failure(
            "vllm",
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error","param":null,"code":null}}"#,
        );
        assert!(f.refused_stream_options);
        assert_eq!(f.error.kind, ErrorKind::Validation);
        assert_eq!(f.error.side, Side::Upstream);
        let f = openai_failure("vllm", StatusCode::TOO_MANY_REQUESTS, b"slow down");
        assert_eq!(f.error.kind, ErrorKind::Throttled);
        assert!(!f.refused_stream_options);
        assert!(f.error.message.contains("slow down"));
        assert_eq!(
            without_stream_options(&Bytes::from_static(
                br#"{"stream":true,"stream_options":{"include_usage":true}}"#
            )),
            Some(Bytes::from_static(br#"{"stream":true}"#))
        );
        assert_eq!(
            without_stream_options(&Bytes::from_static(br#"{"stream":true}"#)),
            None
        );
    }
}
