//! The pipeline: one [`Call`] (whatever API it came in through) flows through the
//! stages after auth and routing: upstream attempt, then the answer as a whole
//! body or as a stream of frames whose first frame has already arrived.
//!
//! Ingress adapters build the `Call` and render the [`Answer`]; stages that edit
//! the request (prompt-cache and latency planners) edit `Call::json`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bedrock_wire::converse::{Summary, Usage};
use bedrock_wire::error::ErrorType;
use bedrock_wire::eventstream::FrameKind;
use bedrock_wire::operation::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use tokio::time::Instant;

use crate::app::Runtime;
use crate::auth::Principal;
use crate::error::{ProxyError, Side};
use crate::metrics;
use crate::route::Routed;
use crate::stream::{self, FrameStream};
use crate::upstream::{passed_headers, read_body};

/// Largest upstream answer read into memory (streams are never read whole).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest upstream error body kept.
const MAX_ERROR_BYTES: usize = 1024 * 1024;

/// One request on its way through the pipeline.
#[derive(Debug)]
pub struct Call {
    pub request_id: String,
    pub op: Operation,
    pub principal: Arc<Principal>,
    pub routed: Routed,
    /// The body as the client sent it.
    pub body: Bytes,
    /// The body parsed, when it is JSON.
    pub json: Option<Value>,
    /// Set by a stage that edited `json`; the upstream then gets `json` re-serialized
    /// instead of the client's bytes.
    pub edited: bool,
    /// Request headers passed to the upstream (InvokeModel's header members).
    pub forward: Vec<(HeaderName, HeaderValue)>,
    pub started: Instant,
}

impl Call {
    /// The body to send upstream: the client's bytes, or the edited JSON.
    pub fn upstream_body(&self) -> Bytes {
        match (&self.json, self.edited) {
            (Some(json), true) => Bytes::from(json.to_string()),
            _ => self.body.clone(),
        }
    }

    /// The latency tier the request asks for (`performanceConfig.latency`, or
    /// InvokeModel's header).
    pub fn requested_tier(&self) -> Option<&str> {
        let from_body = self
            .json
            .as_ref()
            .filter(|_| matches!(self.op, Operation::Converse | Operation::ConverseStream))
            .and_then(|j| j["performanceConfig"]["latency"].as_str());
        from_body.or_else(|| {
            self.forward
                .iter()
                .find(|(k, _)| k == "x-amzn-bedrock-performanceconfig-latency")
                .and_then(|(_, v)| v.to_str().ok())
        })
    }
}

/// What the pipeline answers with.
pub enum Answer {
    /// A complete (non-streamed) answer.
    Whole {
        headers: HeaderMap,
        body: Bytes,
        summary: Summary,
    },
    /// A stream whose first frame has arrived.
    Stream {
        headers: HeaderMap,
        frames: FrameStream,
    },
}

/// Where an answer came from, for response headers and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance {
    /// Upstream attempts made (0 for answers that needed none).
    pub attempts: u32,
}

/// Runs a call through the upstream stage; `provenance` says what it took, also
/// when it failed.
pub async fn run(
    rt: &Runtime,
    call: &Call,
    provenance: &mut Provenance,
) -> Result<Answer, ProxyError> {
    let route_label = metrics::route_label(&call.routed.route.name);
    provenance.attempts += 1;
    let result = attempt(rt, call).await;
    if let Err(e) = &result {
        if e.side == Side::Upstream {
            metrics::upstream_error(&route_label, e.kind);
        }
    }
    result
}

/// One attempt on the route's upstream.
async fn attempt(rt: &Runtime, call: &Call) -> Result<Answer, ProxyError> {
    let route = &call.routed.route;
    let upstream = rt.upstreams.get(&route.config.upstream).ok_or_else(|| {
        ProxyError::internal(format!("route {} names a missing upstream", route.name))
    })?;
    let timeouts = upstream.timeouts();
    let deadline = call.started + timeouts.total;
    let sent = Instant::now();
    let response = upstream
        .send(
            call.op,
            &call.routed.upstream_model,
            call.upstream_body(),
            &call.forward,
            deadline,
        )
        .await?;
    if !response.status.is_success() {
        let body = read_body(response.body, MAX_ERROR_BYTES, deadline, &upstream.name).await?;
        return Err(ProxyError::from_upstream(
            response.status,
            &response.headers,
            body,
        ));
    }
    let headers = passed_headers(&response.headers);
    let label = metrics::route_label(&route.name);

    if call.op.is_stream() {
        let mut frames = stream::frames(
            response.body,
            timeouts.idle,
            deadline,
            upstream.name.clone(),
        );
        let wait = timeouts
            .first_byte
            .min(deadline.saturating_duration_since(Instant::now()));
        let first = match tokio::time::timeout(wait, frames.next()).await {
            Err(_) => {
                return Err(ProxyError::upstream_timeout(format!(
                    "upstream {} sent no event within {wait:?}",
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
        metrics::upstream_ttft(&label, call.op, sent.elapsed());
        if let FrameKind::Exception(kind) = &first.frame.kind {
            // Nothing has reached the client yet: report it as the error response
            // Bedrock would have sent had it failed a moment earlier.
            let error_type = ErrorType::parse(kind).unwrap_or(ErrorType::InternalServer);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(error_type.name()) {
                h.insert("x-amzn-errortype", v);
            }
            let status = axum::http::StatusCode::from_u16(error_type.status())
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            return Err(ProxyError::from_upstream(
                status,
                &h,
                first.frame.payload.clone(),
            ));
        }
        return Ok(Answer::Stream {
            headers,
            frames: stream::prepend(first, frames),
        });
    }

    let body = read_body(response.body, MAX_RESPONSE_BYTES, deadline, &upstream.name).await?;
    metrics::upstream_ttft(&label, call.op, sent.elapsed());
    let summary = summarize(call.op, &headers, &body);
    Ok(Answer::Whole {
        headers,
        body,
        summary,
    })
}

/// What a whole answer says about itself: from the Converse body, or from
/// InvokeModel's `x-amzn-bedrock-*` headers.
pub fn summarize(op: Operation, headers: &HeaderMap, body: &[u8]) -> Summary {
    match op {
        Operation::Converse => serde_json::from_slice::<Value>(body)
            .map(|v| Summary::of_response(&v))
            .unwrap_or_default(),
        Operation::Invoke => {
            let n = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let input = n("x-amzn-bedrock-input-token-count");
            let output = n("x-amzn-bedrock-output-token-count");
            let stop_reason = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                v["stop_reason"]
                    .as_str()
                    .or(v["stopReason"].as_str())
                    .map(str::to_owned)
            });
            Summary {
                stop_reason,
                usage: Some(Usage {
                    input_tokens: input,
                    output_tokens: output,
                    total_tokens: input + output,
                    cache_read_input_tokens: n("x-amzn-bedrock-cache-read-input-token-count"),
                    cache_write_input_tokens: n("x-amzn-bedrock-cache-write-input-token-count"),
                }),
                latency_tier: headers
                    .get("x-amzn-bedrock-performanceconfig-latency")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                latency_ms: Some(n("x-amzn-bedrock-invocation-latency")),
            }
        }
        _ => Summary::default(),
    }
}
