//! Ingress adapters: each API the proxy speaks, turned into one pipeline call and
//! the pipeline's answer rendered back in that API's own shape, errors included.
//!
//! - [`bedrock`]: the Bedrock Runtime paths, byte for byte.
//! - [`openai`]: the OpenAI Chat Completions API (`/v1/chat/completions`, `/v1/models`).
//! - [`anthropic`]: the Anthropic Messages API (`/v1/messages`).
//!
//! This module holds what every adapter shares: reading the body within the
//! size limit, and checking that JSON is UTF-8 and not nested too deep before
//! it is parsed.

pub mod anthropic;
pub mod bedrock;
pub mod openai;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use bedrock_wire::converse::Summary;
use bedrock_wire::operation::Operation;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use std::sync::Arc;
use tokio::time::Instant;

use crate::app::{AppState, Runtime};
use crate::auth::Principal;
use crate::cache::{CacheStatus, Directives};
use crate::catalog::ModelInfo;
use crate::config::Limits;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::metrics;
use crate::pipeline::{self, Answer, Call, Provenance};
use crate::route::Routed;
use crate::stream::{RelayedFrame, StreamEnd, StreamObserver, StreamReader};
use axum::http::request::Parts;

/// Reads a request body, refusing it as soon as it passes `limits.max_body_bytes`.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Bytes, ProxyError> {
    let max = limits.max_body_bytes;
    let too_large = || {
        ProxyError::validation(format!(
            "The request body is larger than this proxy's limit of {max} bytes."
        ))
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ProxyError::validation(format!(
            "The request body could not be read: {e}"
        ))),
    }
}

/// Whether JSON text nests arrays and objects deeper than `max` (strings and
/// escapes are skipped, so brackets inside strings do not count).
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a JSON request body: valid UTF-8, nested at most `max_depth`, an object.
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, ProxyError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ProxyError::validation(format!(
            "Malformed input request: the body is not valid UTF-8 (invalid byte at offset {}), please reformat your input and try again.",
            e.valid_up_to()
        )));
    }
    if nesting_exceeds(bytes, max_depth) {
        return Err(ProxyError::validation(format!(
            "Malformed input request: JSON is nested deeper than this proxy's limit of {max_depth} levels."
        )));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ProxyError::validation(format!(
            "Malformed input request: {e}, please reformat your input and try again."
        ))
    })?;
    if !value.is_object() {
        return Err(ProxyError::validation(
            "Malformed input request: the body must be a JSON object.",
        ));
    }
    Ok(value)
}

/// What every ingress does first: read the body within the size limit and
/// authenticate the caller (SigV4 needs the body), recording the tenant.
pub async fn receive(
    rt: &Runtime,
    parts: &Parts,
    body: Body,
    finish: &mut Finish,
) -> Result<(Bytes, Arc<Principal>), ProxyError> {
    // The headers are checked first, so that a caller without a valid key is
    // refused before the proxy buffers (up to max_body_bytes of) its body.
    let admission = rt.auth.admit_headers(&parts.headers)?;
    let body = read_body(body, &parts.headers, &rt.config.limits).await?;
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let principal = admission.caller(parts.method.as_str(), uri, &parts.headers, &body)?;
    finish.tenant = Some(principal.tenant.clone());
    Ok((body, principal))
}

/// Routes a model id for an authenticated caller and checks the caller may use
/// the route (and is within its rate limit).
pub fn route(
    rt: &Runtime,
    principal: &Principal,
    model_id: &str,
    finish: &mut Finish,
) -> Result<Routed, ProxyError> {
    let routed = rt.routes.resolve(model_id)?;
    finish.route = Some(routed.route.name.clone());
    principal.admit(&routed.route.name)?;
    finish.model = rt
        .catalog
        .get(&routed.upstream_model)
        .map(|l| l.model.clone());
    Ok(routed)
}

/// The Converse call a request of another API (OpenAI, Anthropic) becomes:
/// routed by the model it names (one no route serves is `NotFound`, told as
/// `unknown(model)`), sending the translated body, streamed or not.
pub fn translated_call(
    rt: &Runtime,
    principal: Arc<Principal>,
    finish: &mut Finish,
    model: &str,
    converse: Value,
    stream: bool,
    unknown: fn(&str) -> String,
) -> Result<Call, ProxyError> {
    let routed = route(rt, &principal, model, finish).map_err(|e| {
        if e.kind == ErrorKind::Validation {
            ProxyError::new(ErrorKind::NotFound, Side::Client, unknown(model))
        } else {
            e
        }
    })?;
    let op = if stream {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    finish.op = op;
    Ok(Call {
        request_id: finish.request_id.clone(),
        op,
        principal,
        routed,
        body: Bytes::from(converse.to_string()),
        json: Some(converse),
        forward: Vec::new(),
        started: finish.started,
    })
}

/// Runs a call through the pipeline, recording what it took in `finish`.
pub async fn run(
    state: &AppState,
    rt: &Arc<Runtime>,
    call: Call,
    headers: &HeaderMap,
    finish: &mut Finish,
) -> Result<Answer, ProxyError> {
    finish.requested_tier = call.requested_tier().map(str::to_owned);
    let directives = Directives::from_headers(headers);
    let mut provenance = Provenance::default();
    let result = pipeline::run(state, rt, call, &directives, &mut provenance).await;
    finish.record(&provenance);
    result
}

/// The response to a failed request, in the shape `render` makes, with the
/// proxy's headers; the books are closed on it.
pub fn failed(
    finish: &Finish,
    e: &ProxyError,
    render: fn(&ProxyError, &str) -> axum::response::Response,
) -> axum::response::Response {
    let mut response = render(e, &finish.request_id);
    finish.headers(response.headers_mut(), None);
    finish.error(e);
    response
}

/// The Converse JSON of a whole answer (for the adapters that translate it).
pub fn converse_json(body: &[u8]) -> Result<Value, ProxyError> {
    serde_json::from_slice(body)
        .map_err(|e| ProxyError::internal(format!("the upstream answer is not JSON: {e}")))
}

/// A translated whole answer as a JSON response, with the proxy's headers; the
/// books are closed on it.
pub fn json_answer(finish: &Finish, body: &Value, summary: &Summary) -> axum::response::Response {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    finish.headers(&mut headers, summary.latency_tier.as_deref());
    finish.whole(summary);
    let mut response = axum::response::Response::new(Body::from(body.to_string()));
    *response.headers_mut() = headers;
    response
}

/// A translated stream as server-sent events; the books are closed when it ends.
pub fn sse_answer(
    finish: &Finish,
    frames: crate::stream::FrameStream,
    writer: impl crate::stream::SseWriter,
) -> axum::response::Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    finish.headers(&mut headers, None);
    let body = crate::stream::to_sse_client(frames, finish.stream_observer(), writer);
    let mut response = axum::response::Response::new(Body::from_stream(body));
    *response.headers_mut() = headers;
    response
}

/// The span a request's work runs in: what the pipeline logs on the way
/// (fallbacks, breakers, cache tiers) carries the request id and operation.
pub fn request_span(request_id: &str, operation: &str) -> tracing::Span {
    tracing::info_span!("request", request_id, operation)
}

/// Renders an error in the shape of the API `path` belongs to.
pub fn render_error(path: &str, e: &ProxyError, request_id: &str) -> axum::response::Response {
    if path.starts_with("/v1/messages") {
        anthropic::error_response(e, request_id)
    } else if path.starts_with("/v1/") {
        openai::error_response(e, request_id)
    } else {
        e.bedrock_response(request_id)
    }
}

/// Per-request bookkeeping every ingress shares: the proxy's response headers,
/// and the metrics and access-log line written once the answer is complete
/// (for a stream, when it ends).
#[derive(Debug, Clone)]
pub struct Finish {
    pub request_id: String,
    pub started: Instant,
    pub op: Operation,
    pub route: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub attempts: u32,
    pub requested_tier: Option<String>,
    pub cache: CacheStatus,
    /// cachePoint blocks the prompt-cache planner added.
    pub cache_points: u32,
    /// The target that answered.
    pub target: Option<Arc<str>>,
    /// When the answer's first byte was ready to send.
    pub answered_at: Option<Instant>,
    /// The upstream model's catalog entry (prices, for what a cache hit saved).
    pub model: Option<Arc<ModelInfo>>,
}

impl Finish {
    pub fn new(request_id: String, started: Instant) -> Finish {
        Finish {
            request_id,
            started,
            op: Operation::Converse,
            route: None,
            tenant: None,
            attempts: 0,
            requested_tier: None,
            cache: CacheStatus::Bypass,
            cache_points: 0,
            target: None,
            answered_at: None,
            model: None,
        }
    }

    fn route_label(&self) -> metrics::SharedString {
        match &self.route {
            Some(name) => metrics::route_label(name),
            None => metrics::SharedString::const_str(metrics::UNROUTED),
        }
    }

    /// Adds `x-proxy-route`, `x-proxy-attempts` and, for answers,
    /// `x-proxy-latency-tier` (the tier that served the request when known, else
    /// the one asked for, else `standard`).
    pub fn headers(&self, headers: &mut HeaderMap, served_tier: Option<&str>) {
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        if let Some(route) = &self.route {
            set("x-proxy-route", route);
        }
        set("x-proxy-attempts", &self.attempts.to_string());
        set("x-request-id", &self.request_id);
        set("x-cache", self.cache.header());
        if self.attempts > 0 {
            set("x-proxy-cache-points", &self.cache_points.to_string());
        }
        if let CacheStatus::Hit { age, .. } = self.cache {
            set("age", &age.as_secs().to_string());
        }
        let answered = self.attempts > 0 || self.cache.is_hit();
        if let Some(tier) = served_tier
            .or(self.requested_tier.as_deref())
            .or(Some("standard"))
        {
            if answered {
                set("x-proxy-latency-tier", tier);
            }
        }
    }

    /// Takes in what the pipeline did: attempts, cache outcome, the tier the
    /// answering attempt asked for.
    pub fn record(&mut self, provenance: &crate::pipeline::Provenance) {
        self.attempts = provenance.attempts;
        self.cache = provenance.cache;
        self.cache_points = provenance.cache_points;
        self.target = provenance.target.clone();
        if let Some(tier) = provenance.tier_sent {
            self.requested_tier = Some(tier.to_owned());
        }
        self.answered_at = Some(Instant::now());
    }

    /// Records the tier that served an upstream answer with its TTFT and output
    /// speed (streams: tokens over the time after the first byte; whole answers:
    /// tokens over the whole request, AWS's definition).
    fn served(&self, route: &metrics::SharedString, summary: &Summary, streamed: bool) {
        if self.cache.is_hit() || self.attempts == 0 {
            return;
        }
        let tier = match summary
            .latency_tier
            .as_deref()
            .or(self.requested_tier.as_deref())
        {
            Some("optimized") => "optimized",
            _ => "standard",
        };
        let ttft = self.answered_at.map(|t| t.duration_since(self.started));
        let output = summary.usage.map_or(0, |u| u.output_tokens) as f64;
        let span = if streamed {
            self.answered_at.map(|t| t.elapsed())
        } else {
            Some(self.started.elapsed())
        };
        let tps = span
            .filter(|d| !d.is_zero() && output > 0.0)
            .map(|d| output / d.as_secs_f64());
        metrics::served(route, tier, ttft, tps);
    }

    /// Counts what an answer cost: billed tokens for upstream answers, tokens
    /// and dollars saved for cache hits (at the original answer's price).
    fn account(&self, route: &metrics::SharedString, summary: &Summary) {
        let Some(usage) = &summary.usage else { return };
        if self.cache.is_hit() {
            let usd = self.model.as_ref().map_or(0.0, |m| {
                m.price_for(summary.latency_tier.as_deref()).cost(usage)
            });
            metrics::cache_saved(route, usage, usd);
        } else {
            metrics::tokens(route, usage);
            if usage.cache_read_input_tokens + usage.cache_write_input_tokens > 0 {
                let (label, saved) = match &self.model {
                    Some(m) => {
                        let price = m.price_for(summary.latency_tier.as_deref());
                        (
                            m.id.as_str(),
                            price.cost_uncached(usage) - price.cost(usage),
                        )
                    }
                    None => ("unknown", 0.0),
                };
                metrics::prompt_cache_usage(route, label, usage, saved);
            }
        }
    }

    fn log(&self, status: u16, outcome: &str, summary: Option<&Summary>) {
        let usage = summary.and_then(|s| s.usage).unwrap_or_default();
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            tenant = self.tenant.as_deref().unwrap_or("-"),
            route = self.route.as_deref().unwrap_or("-"),
            operation = self.op.name(),
            status,
            cache = self.cache.header(),
            outcome,
            attempts = self.attempts,
            target = self.target.as_deref().unwrap_or("-"),
            tier = summary.and_then(|s| s.latency_tier.as_deref()).unwrap_or("-"),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cache_read_tokens = usage.cache_read_input_tokens,
            cache_write_tokens = usage.cache_write_input_tokens,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
        );
    }

    /// A whole answer was sent.
    pub fn whole(&self, summary: &Summary) {
        let route = self.route_label();
        self.account(&route, summary);
        self.served(&route, summary, false);
        metrics::request_done(&route, self.op, 200, self.started.elapsed());
        self.log(200, "ok", Some(summary));
    }

    /// An error response was sent.
    pub fn error(&self, e: &ProxyError) {
        let status = e.status().as_u16();
        if self.route.is_none() {
            metrics::rejected(e.kind.label());
        }
        metrics::request_done(&self.route_label(), self.op, status, self.started.elapsed());
        tracing::info!(target: "access", request_id = %self.request_id, error = %e, "request failed");
        self.log(status, e.kind.label(), None);
    }

    /// The observer that finishes the books when a stream ends.
    pub fn stream_observer(&self) -> FinishStream {
        FinishStream {
            finish: self.clone(),
            reader: StreamReader::default(),
        }
    }
}

/// Reads a stream as it passes and writes metrics and the access log at its end.
pub struct FinishStream {
    finish: Finish,
    pub reader: StreamReader,
}

impl StreamObserver for FinishStream {
    fn frame(&mut self, frame: &RelayedFrame) {
        self.reader.read(frame);
    }

    fn end(&mut self, end: StreamEnd) {
        let route = self.finish.route_label();
        let outcome = match &end {
            StreamEnd::Complete => "complete",
            StreamEnd::Failed(_) => "upstream_error",
            StreamEnd::ClientGone => "client_gone",
        };
        if let StreamEnd::Failed(e) = &end {
            metrics::upstream_error(&route, e.kind);
        }
        self.finish.account(&route, &self.reader.summary);
        if matches!(end, StreamEnd::Complete) {
            self.finish.served(&route, &self.reader.summary, true);
        }
        metrics::stream_ended(&route, outcome);
        metrics::request_done(&route, self.finish.op, 200, self.finish.started.elapsed());
        self.finish.log(200, outcome, Some(&self.reader.summary));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[{"b":1}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[[[\"[[["}"#, 1));
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(nesting_exceeds(deep.as_bytes(), 64));
    }

    #[test]
    fn bad_bodies_get_clear_messages() {
        let e = parse_json(b"{\"a\": \"\xff\"}", 64).unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(parse_json(deep.as_bytes(), 64)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        assert!(parse_json(b"{oops", 64)
            .unwrap_err()
            .message
            .contains("Malformed input request"));
        assert!(parse_json(b"[1]", 64)
            .unwrap_err()
            .message
            .contains("JSON object"));
        assert!(parse_json(br#"{"messages":[]}"#, 64).is_ok());
    }
}
