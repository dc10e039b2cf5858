//! OpenTelemetry traces: the OTLP/HTTP exporter started from `[tracing]` (and
//! the standard `OTEL_*` variables), the span of each request (a SERVER span
//! following the GenAI semantic conventions, continuing the client's W3C
//! `traceparent`), a CLIENT span per upstream attempt whose context goes
//! upstream as `traceparent`, and the events (fallbacks, hedges) in between.
//!
//! Nothing here knows a stage: callers hand plain values (names, counts,
//! usage) and the request's [`Trace`]. With tracing off every function returns
//! at its first line: a [`Trace`] is `None`, and no span, attribute or header
//! is built, so the request path allocates nothing for tracing.
//!
//! Spans are made with the OpenTelemetry API directly rather than through the
//! `tracing` crate: a request span must stay open until its stream ends (after
//! the handler returned), attributes such as token counts arrive at the end,
//! and the log's filter and format must not decide what a trace contains.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bedrock_wire::converse::{ConverseEvent, EventKind, Usage};
use bedrock_wire::eventstream::Frame;
use bedrock_wire::operation::Operation;
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use crate::config::TracingConfig;
use crate::error::ProxyError;

/// Attribute names: OpenTelemetry's GenAI, HTTP and server conventions, then
/// the proxy's own under `bedrock_proxy.`.
pub mod attr {
    pub const PROVIDER: &str = "gen_ai.provider.name";
    /// The older name of `gen_ai.provider.name`, still what most backends read.
    pub const SYSTEM: &str = "gen_ai.system";
    pub const OPERATION: &str = "gen_ai.operation.name";
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    pub const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
    pub const REQUEST_TOP_P: &str = "gen_ai.request.top_p";
    pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    pub const RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    /// All input tokens, the cached ones included (as the conventions ask).
    pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const USAGE_CACHE_READ: &str = "gen_ai.usage.cache_read.input_tokens";
    pub const USAGE_CACHE_WRITE: &str = "gen_ai.usage.cache_creation.input_tokens";
    pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
    pub const SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
    pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const HTTP_STATUS: &str = "http.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";

    pub const REQUEST_ID: &str = "bedrock_proxy.request_id";
    pub const ROUTE: &str = "bedrock_proxy.route";
    pub const TENANT: &str = "bedrock_proxy.tenant";
    pub const API_OPERATION: &str = "bedrock_proxy.operation";
    pub const CACHE: &str = "bedrock_proxy.cache";
    pub const CACHE_TIER: &str = "bedrock_proxy.cache.tier";
    pub const ATTEMPTS: &str = "bedrock_proxy.attempts";
    pub const TARGET: &str = "bedrock_proxy.target";
    pub const UPSTREAM: &str = "bedrock_proxy.upstream";
    pub const TIER_REQUESTED: &str = "bedrock_proxy.latency_tier.requested";
    pub const TIER_SERVED: &str = "bedrock_proxy.latency_tier.served";
    pub const TIER_SENT: &str = "bedrock_proxy.latency_tier.sent";
    pub const CACHE_POINTS: &str = "bedrock_proxy.cache_points";
    pub const OUTCOME: &str = "bedrock_proxy.outcome";
    pub const COST_USD: &str = "bedrock_proxy.cost_usd";
    pub const TTFT_MS: &str = "bedrock_proxy.ttft_ms";
    pub const FROM: &str = "bedrock_proxy.from";
    pub const TO: &str = "bedrock_proxy.to";
    pub const REASON: &str = "bedrock_proxy.reason";
}

/// `gen_ai.provider.name` (and `gen_ai.system`) of every span.
pub const PROVIDER: &str = "aws.bedrock";

/// Captured prompts and completions are cut at this many bytes.
const MAX_CAPTURED: usize = 32 * 1024;

/// The exporter's tracer, set once when traces are on.
struct Tracing {
    tracer: SdkTracer,
    capture_content: bool,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Whether spans are being exported.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing: {0}")]
    Exporter(String),
    #[error("tracing: {var} is `{value}`; bedrock-proxy exports traces over OTLP/HTTP with protobuf only (`http/protobuf`, usually port 4318)")]
    Protocol { var: &'static str, value: String },
}

/// The running exporter; [`Exporter::shutdown`] sends what is still queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Flushes the spans still queued (within the export timeout) and stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "tracing: the last spans could not be exported");
        }
    }
}

/// Whether `config` (or, when it does not say, the environment) asks for traces.
fn wanted(config: &TracingConfig, env: impl Fn(&str) -> Option<String>) -> bool {
    config.enabled.unwrap_or_else(|| {
        let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
        config.endpoint.is_some()
            || (!disabled
                && (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    || set("OTEL_EXPORTER_OTLP_ENDPOINT")))
    })
}

/// Starts exporting traces if `config` or the environment asks for it (see
/// `docs/OPERATIONS.md`); `None` when traces are off. Call once, within the
/// Tokio runtime the exporter's HTTP calls are to run on.
pub fn install(config: &TracingConfig) -> Result<Option<Exporter>, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    if !wanted(config, env) {
        return Ok(None);
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = env(var).filter(|v| v.trim() != "http/protobuf") {
            return Err(TelemetryError::Protocol { var, value });
        }
    }
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| TelemetryError::Exporter("no Tokio runtime to export from".into()))?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(ExportClient {
            client: bedrock_wire::client::http_client(Duration::from_secs(5), 4, true),
            handle,
            timeout: config.timeout.unwrap_or(Duration::from_secs(10)),
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(traces_url(endpoint));
    }
    if let Some(timeout) = config.timeout {
        builder = builder.with_timeout(timeout);
    }
    if !config.headers.is_empty() {
        builder = builder.with_headers(
            config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;

    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    match (&config.service_name, env("OTEL_SERVICE_NAME")) {
        (Some(name), _) => resource = resource.with_service_name(name.clone()),
        (None, None) => resource = resource.with_service_name("bedrock-proxy"),
        (None, Some(_)) => {}
    }
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if let Some(ratio) = config.sample_ratio {
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(ratio),
        )));
    }
    let provider = provider.build();
    let scope = InstrumentationScope::builder("bedrock-proxy")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let tracing = Tracing {
        tracer: provider.tracer_with_scope(scope),
        capture_content: config.capture_content,
    };
    if TRACING.set(tracing).is_err() {
        tracing::warn!("tracing: already started in this process; keeping the first exporter");
    }
    Ok(Some(Exporter { provider }))
}

/// The collector's trace URL for a base URL, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Sends the exporter's requests with the proxy's own hyper client. The SDK
/// exports from a thread of its own, outside the runtime, so each request is
/// run as a task on the proxy's runtime and awaited from there.
#[derive(Debug)]
struct ExportClient {
    client: bedrock_wire::client::HttpClient,
    handle: tokio::runtime::Handle,
    timeout: Duration,
}

/// Largest collector answer read.
const MAX_EXPORT_RESPONSE: usize = 4 * 1024 * 1024;

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let task = self.handle.spawn(async move {
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, MAX_EXPORT_RESPONSE)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("the collector did not answer within {timeout:?}").into()),
            }
        });
        task.await?
    }
}

/// The span of one request, or nothing when tracing is off. Cheap to clone;
/// every clone is the same span.
#[derive(Clone, Default)]
pub struct Trace(Option<Arc<RequestSpan>>);

/// A request's span (in its context, which its attempts are children of) and
/// the GenAI operation its attempts are named after, known once routed.
struct RequestSpan {
    cx: Context,
    operation: OnceLock<&'static str>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(r) => write!(f, "Trace({})", r.cx.span().span_context().trace_id()),
            None => f.write_str("Trace(off)"),
        }
    }
}

/// The GenAI operation (`gen_ai.operation.name`) of a Bedrock operation on a
/// model: `chat` (Converse, and InvokeModel on text models), `embeddings`
/// (InvokeModel on embedding models), `count_tokens` (CountTokens, a Bedrock
/// operation the conventions do not name).
pub fn operation_name(op: Operation, embedding: bool) -> &'static str {
    match op {
        Operation::CountTokens => "count_tokens",
        Operation::Invoke | Operation::InvokeStream if embedding => "embeddings",
        _ => "chat",
    }
}

/// What a request turned out to be, for its span's last attributes.
#[derive(Debug, Default)]
pub struct RequestEnd<'a> {
    pub status: u16,
    /// The error kind's label and message, for a request answered with an error.
    pub error: Option<(&'static str, &'a str)>,
    /// `ok`, a stream's end (`complete`, `upstream_error`, `client_gone`), or the error kind.
    pub outcome: &'a str,
    pub route: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// `hit`, `miss` or `bypass`, and where a hit came from.
    pub cache: &'static str,
    pub cache_tier: Option<&'static str>,
    pub attempts: u32,
    pub target: Option<&'a str>,
    pub tier_requested: Option<&'static str>,
    pub tier_served: Option<&'static str>,
    pub usage: Option<&'a Usage>,
    pub stop_reason: Option<&'a str>,
    pub ttft: Option<Duration>,
    pub streamed: bool,
    pub cost_usd: Option<f64>,
}

/// Writes `traceparent`/`tracestate` into an upstream request's headers.
struct Outgoing<'a>(&'a mut Vec<(HeaderName, HeaderValue)>);

impl Injector for Outgoing<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes `tracestate` even when the client sent none;
        // W3C Trace Context says to leave an empty one out.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.retain(|(k, _)| k != name);
            self.0.push((name, value));
        }
    }
}

fn string_array(values: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array::String(
        values.into_iter().map(StringValue::from).collect(),
    ))
}

/// `text` cut to [`MAX_CAPTURED`] bytes at a character boundary.
fn capped(mut text: String) -> String {
    if text.len() > MAX_CAPTURED {
        let mut end = MAX_CAPTURED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("…[truncated]");
    }
    text
}

/// A Converse content block as a part of the GenAI conventions' message schema.
fn part(block: &Json) -> Json {
    if let Some(text) = block["text"].as_str() {
        return json!({ "type": "text", "content": text });
    }
    if let Some(call) = block.get("toolUse") {
        return json!({
            "type": "tool_call", "id": call["toolUseId"], "name": call["name"], "arguments": call["input"],
        });
    }
    if let Some(result) = block.get("toolResult") {
        return json!({
            "type": "tool_call_response", "id": result["toolUseId"], "response": result["content"],
        });
    }
    if let Some(text) = block["reasoningContent"]["reasoningText"]["text"].as_str() {
        return json!({ "type": "reasoning", "content": text });
    }
    // Images, documents, cache points: named, never copied (binary, or not content).
    let kind = block
        .as_object()
        .and_then(|o| o.keys().next())
        .map_or("unknown", String::as_str);
    json!({ "type": kind })
}

/// Converse messages in the conventions' schema (`role` + `parts`).
fn messages(list: &Json, finish_reason: Option<&str>) -> Json {
    let out: Vec<Json> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let parts: Vec<Json> = m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .map(part)
                .collect();
            let mut message = json!({ "role": m["role"], "parts": parts });
            if let Some(reason) = finish_reason {
                message["finish_reason"] = reason.into();
            }
            message
        })
        .collect();
    Json::Array(out)
}

impl Trace {
    /// No span (tracing off, or a request that is not traced).
    pub fn off() -> Trace {
        Trace(None)
    }

    /// The span of a request that arrived at `started`, continuing the
    /// client's `traceparent` when it sent a valid one.
    pub fn request(headers: &HeaderMap, started: Instant, api: &'static str) -> Trace {
        let Some(t) = TRACING.get() else {
            return Trace(None);
        };
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let start = SystemTime::now()
            .checked_sub(started.elapsed())
            .unwrap_or_else(SystemTime::now);
        let span = t
            .tracer
            .span_builder(api)
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new(attr::PROVIDER, PROVIDER),
                KeyValue::new(attr::SYSTEM, PROVIDER),
                KeyValue::new(attr::API_OPERATION, api),
            ])
            .start_with_context(&t.tracer, &parent);
        Trace(Some(Arc::new(RequestSpan {
            cx: parent.with_span(span),
            operation: OnceLock::new(),
        })))
    }

    /// Whether this request is traced.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Whether prompts and completions go into this request's span.
    pub fn captures_content(&self) -> bool {
        self.0.is_some() && TRACING.get().is_some_and(|t| t.capture_content)
    }

    /// The trace id (32 hex digits), for logs and metrics lines that point at the trace.
    pub fn trace_id(&self) -> Option<String> {
        let r = self.0.as_ref()?;
        Some(r.cx.span().span_context().trace_id().to_string())
    }

    fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(r) = &self.0 {
            r.cx.span().set_attributes(attributes());
        }
    }

    /// The request was routed: its GenAI operation (see [`operation_name`]),
    /// the model the client named (the span is now named `{operation}
    /// {model}`, as the conventions say), the route, and the model the route
    /// calls (the answer's model unless a fallback says otherwise).
    pub fn routed(
        &self,
        operation: &'static str,
        requested_model: &str,
        route: &str,
        upstream_model: &str,
    ) {
        let Some(r) = &self.0 else { return };
        let _ = r.operation.set(operation);
        let span = r.cx.span();
        span.update_name(format!("{operation} {requested_model}"));
        span.set_attributes([
            KeyValue::new(attr::OPERATION, operation),
            KeyValue::new(attr::REQUEST_MODEL, requested_model.to_owned()),
            KeyValue::new(attr::ROUTE, route.to_owned()),
            KeyValue::new(attr::RESPONSE_MODEL, upstream_model.to_owned()),
        ]);
    }

    /// What the request asks the model for: whether it streams, its inference
    /// parameters and (when content is captured) its messages.
    pub fn call(&self, streamed: bool, json: Option<&Json>) {
        let Some(r) = &self.0 else { return };
        let span = r.cx.span();
        let mut attributes = vec![KeyValue::new(attr::REQUEST_STREAM, streamed)];
        if let Some(body) = json {
            // Converse's inferenceConfig; model-native bodies name them their own way.
            let inference = &body["inferenceConfig"];
            let max_tokens = inference["maxTokens"]
                .as_i64()
                .or(body["max_tokens"].as_i64());
            if let Some(n) = max_tokens {
                attributes.push(KeyValue::new(attr::REQUEST_MAX_TOKENS, n));
            }
            if let Some(t) = inference["temperature"]
                .as_f64()
                .or(body["temperature"].as_f64())
            {
                attributes.push(KeyValue::new(attr::REQUEST_TEMPERATURE, t));
            }
            if let Some(p) = inference["topP"].as_f64().or(body["top_p"].as_f64()) {
                attributes.push(KeyValue::new(attr::REQUEST_TOP_P, p));
            }
            if self.captures_content() {
                if body["messages"].is_array() {
                    let input = messages(&body["messages"], None).to_string();
                    attributes.push(KeyValue::new(attr::INPUT_MESSAGES, capped(input)));
                } else {
                    attributes.push(KeyValue::new(
                        attr::INPUT_MESSAGES,
                        capped(body.to_string()),
                    ));
                }
                if let Some(system) = body["system"].as_array() {
                    let parts: Vec<Json> = system
                        .iter()
                        .filter(|b| b.get("text").is_some())
                        .map(part)
                        .collect();
                    attributes.push(KeyValue::new(
                        attr::SYSTEM_INSTRUCTIONS,
                        capped(Json::Array(parts).to_string()),
                    ));
                }
            }
        }
        span.set_attributes(attributes);
    }

    /// A whole answer's body, as the completion (when content is captured).
    pub fn output_body(&self, body: &[u8], finish_reason: Option<&str>) {
        if !self.captures_content() {
            return;
        }
        let output = match serde_json::from_slice::<Json>(body) {
            Ok(json) if json["output"]["message"].is_object() => messages(
                &Json::Array(vec![json["output"]["message"].clone()]),
                finish_reason,
            )
            .to_string(),
            _ => String::from_utf8_lossy(body).into_owned(),
        };
        self.set(|| vec![KeyValue::new(attr::OUTPUT_MESSAGES, capped(output))]);
    }

    /// A stream's text, as the completion (when content is captured).
    pub fn output_text(&self, text: &str, finish_reason: Option<&str>) {
        if !self.captures_content() {
            return;
        }
        let mut message = json!({
            "role": "assistant",
            "parts": [{ "type": "text", "content": text }],
        });
        if let Some(reason) = finish_reason {
            message["finish_reason"] = reason.into();
        }
        let output = Json::Array(vec![message]).to_string();
        self.set(|| vec![KeyValue::new(attr::OUTPUT_MESSAGES, capped(output))]);
    }

    /// An event on the request's span (a fallback, a hedge), its attributes
    /// built only when the request is traced.
    pub fn event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(r) = &self.0 {
            r.cx.span().add_event(name, attributes());
        }
    }

    /// A move from one target of the route's chain to the next, and why.
    pub fn fallback(&self, from: &str, to: &str, reason: &'static str) {
        self.event("bedrock_proxy.fallback", || {
            vec![
                KeyValue::new(attr::FROM, from.to_owned()),
                KeyValue::new(attr::TO, to.to_owned()),
                KeyValue::new(attr::REASON, reason),
            ]
        });
    }

    /// A hedge on `target` `fired` (started beside a silent attempt) or `won`.
    pub fn hedge(&self, outcome: &'static str, target: &str) {
        self.event("bedrock_proxy.hedge", || {
            vec![
                KeyValue::new(attr::OUTCOME, outcome),
                KeyValue::new(attr::TARGET, target.to_owned()),
            ]
        });
    }

    /// An attempt answered: the model that answered and where it runs.
    pub fn answered(&self, target: &str, model: &str, base_url: &str) {
        self.set(|| {
            let mut attributes = vec![
                KeyValue::new(attr::TARGET, target.to_owned()),
                KeyValue::new(attr::RESPONSE_MODEL, model.to_owned()),
            ];
            attributes.extend(server_address(base_url));
            attributes
        });
    }

    /// The span of one upstream attempt, a child of this request's.
    pub fn attempt(&self, a: AttemptStart<'_>) -> AttemptSpan {
        let (Some(r), Some(t)) = (&self.0, TRACING.get()) else {
            return AttemptSpan(None);
        };
        let operation = r.operation.get().copied().unwrap_or("chat");
        let mut attributes = vec![
            KeyValue::new(attr::PROVIDER, PROVIDER),
            KeyValue::new(attr::SYSTEM, PROVIDER),
            KeyValue::new(attr::OPERATION, operation),
            KeyValue::new(attr::REQUEST_MODEL, a.model.to_owned()),
            KeyValue::new(attr::TARGET, a.target.to_owned()),
            KeyValue::new(attr::UPSTREAM, a.upstream.to_owned()),
            KeyValue::new(attr::TIER_SENT, a.tier.unwrap_or("as_requested")),
            KeyValue::new(attr::CACHE_POINTS, i64::from(a.cache_points)),
        ];
        attributes.extend(server_address(a.base_url));
        let span = t
            .tracer
            .span_builder(format!("{operation} {}", a.model))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&t.tracer, &r.cx);
        AttemptSpan(Some(r.cx.with_span(span)))
    }

    /// Closes the request's span with what the request turned out to be.
    pub fn end(&self, end: &RequestEnd<'_>) {
        let Some(r) = &self.0 else { return };
        let span = r.cx.span();
        let mut a = vec![
            KeyValue::new(attr::HTTP_STATUS, i64::from(end.status)),
            KeyValue::new(attr::OUTCOME, end.outcome.to_owned()),
            KeyValue::new(attr::CACHE, end.cache),
            KeyValue::new(attr::ATTEMPTS, i64::from(end.attempts)),
        ];
        let mut push = |key: &'static str, value: Option<Value>| {
            if let Some(v) = value {
                a.push(KeyValue::new(key, v));
            }
        };
        push(attr::ROUTE, end.route.map(|r| r.to_owned().into()));
        push(attr::TENANT, end.tenant.map(|t| t.to_owned().into()));
        push(attr::CACHE_TIER, end.cache_tier.map(Value::from));
        push(attr::TARGET, end.target.map(|t| t.to_owned().into()));
        push(attr::TIER_REQUESTED, end.tier_requested.map(Value::from));
        push(attr::TIER_SERVED, end.tier_served.map(Value::from));
        push(attr::COST_USD, end.cost_usd.map(Value::from));
        push(
            attr::RESPONSE_FINISH_REASONS,
            end.stop_reason.map(|r| string_array([r.to_owned()])),
        );
        if let Some(ttft) = end.ttft {
            push(attr::TTFT_MS, Some((ttft.as_secs_f64() * 1000.0).into()));
            if end.streamed {
                push(
                    attr::RESPONSE_TIME_TO_FIRST_CHUNK,
                    Some(ttft.as_secs_f64().into()),
                );
            }
        }
        if let Some(u) = end.usage {
            let input = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens;
            for (key, n) in [
                (attr::USAGE_INPUT_TOKENS, input),
                (attr::USAGE_OUTPUT_TOKENS, u.output_tokens),
                (attr::USAGE_CACHE_READ, u.cache_read_input_tokens),
                (attr::USAGE_CACHE_WRITE, u.cache_write_input_tokens),
            ] {
                push(key, Some(i64::try_from(n).unwrap_or(i64::MAX).into()));
            }
        }
        if let Some((kind, message)) = end.error {
            push(attr::ERROR_TYPE, Some(kind.into()));
            // A server span is in error for 5xx answers; a 4xx is the client's.
            if end.status >= 500 {
                span.set_status(Status::error(message.to_owned()));
            }
        } else if end.outcome == "upstream_error" {
            push(attr::ERROR_TYPE, Some("upstream_error".into()));
            span.set_status(Status::error(
                "the upstream failed in the middle of the stream",
            ));
        }
        span.set_attributes(a);
        span.end();
    }
}

/// `server.address` and `server.port` of an upstream base URL.
fn server_address(base_url: &str) -> Vec<KeyValue> {
    let Ok(uri) = base_url.parse::<http::Uri>() else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(2);
    if let Some(host) = uri.host() {
        out.push(KeyValue::new(attr::SERVER_ADDRESS, host.to_owned()));
    }
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    if let Some(port) = port {
        out.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
    }
    out
}

/// What an upstream attempt is: the target of the route's chain and the call.
#[derive(Debug, Clone, Copy)]
pub struct AttemptStart<'a> {
    /// `primary`, `fallback1`, ...
    pub target: &'a str,
    pub upstream: &'a str,
    pub model: &'a str,
    pub base_url: &'a str,
    /// The latency tier sent (`None`: the client's request as it was).
    pub tier: Option<&'static str>,
    pub cache_points: u32,
}

/// The span of one upstream attempt (nothing when tracing is off). Dropped
/// before it was settled (a hedge that lost, a client that went away), it ends
/// as `cancelled`.
pub struct AttemptSpan(Option<Context>);

impl AttemptSpan {
    /// Whether there is a span.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Puts this attempt's `traceparent` (and the client's `tracestate`) into
    /// the upstream request's headers.
    pub fn inject(&self, headers: &mut Vec<(HeaderName, HeaderValue)>) {
        if let Some(cx) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut Outgoing(headers));
        }
    }

    /// The attempt answered (a whole body, or a stream's first event): ends
    /// the span, unless the answer is a stream still to come.
    pub fn ok(mut self) {
        if let Some(cx) = self.0.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new(attr::OUTCOME, "ok"));
            span.end();
        }
    }

    /// The attempt failed: ends the span in error.
    pub fn failed(mut self, e: &ProxyError) {
        if let Some(cx) = self.0.take() {
            end_failed(&cx, e);
        }
    }

    /// A stream the attempt answered with, whose end (or failure) ends the span.
    pub fn follow<S>(self, stream: S) -> Followed<S> {
        Followed {
            inner: stream,
            span: self,
        }
    }
}

fn end_failed(cx: &Context, e: &ProxyError) {
    let span = cx.span();
    span.set_attributes([
        KeyValue::new(attr::OUTCOME, e.kind.label()),
        KeyValue::new(attr::ERROR_TYPE, e.kind.label()),
        KeyValue::new(attr::HTTP_STATUS, i64::from(e.status().as_u16())),
    ]);
    span.set_status(Status::error(e.message.clone()));
    span.end();
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new(attr::OUTCOME, "cancelled"));
            span.end();
        }
    }
}

/// A stream that ends its attempt's span when it ends: `ok` after its last
/// item, in error at its first error, `cancelled` if dropped before either.
pub struct Followed<S> {
    inner: S,
    span: AttemptSpan,
}

impl<S, T> Stream for Followed<S>
where
    S: Stream<Item = Result<T, ProxyError>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(span) = self.span.0.take() {
                    AttemptSpan(Some(span)).ok();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(span) = self.span.0.take() {
                    end_failed(&span, e);
                }
            }
            _ => {}
        }
        polled
    }
}

/// Accumulates a ConverseStream's text for a span that captures content;
/// nothing is kept otherwise.
#[derive(Debug, Default)]
pub struct Transcript(Option<String>);

impl Transcript {
    /// A transcript that keeps text only if `trace` captures content.
    pub fn for_trace(trace: &Trace) -> Transcript {
        Transcript(trace.captures_content().then(String::new))
    }

    /// Reads one frame's text delta, if this transcript keeps text.
    pub fn read(&mut self, frame: &Frame) {
        let Some(text) = self.0.as_mut() else { return };
        if text.len() > MAX_CAPTURED {
            return;
        }
        let Some(event) = ConverseEvent::from_frame(frame) else {
            return;
        };
        if event.kind != EventKind::ContentBlockDelta {
            return;
        }
        if let Ok(delta) = serde_json::from_slice::<Json>(&event.payload) {
            if let Some(t) = delta["delta"]["text"].as_str() {
                text.push_str(t);
            }
        }
    }

    /// The text read, if kept.
    pub fn text(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
