//! Ingress adapters: each API the proxy speaks, turned into one pipeline call and
//! the pipeline's answer rendered back in that API's own shape, errors included.
//!
//! - [`bedrock`]: the Bedrock Runtime model paths, byte for byte.
//! - [`operations`]: Bedrock Runtime's guardrail and async-invoke operations, passed through.
//! - [`bidi`]: InvokeModelWithBidirectionalStream, relayed frame by frame both ways.
//! - [`openai`]: the OpenAI Chat Completions API (`/v1/chat/completions`).
//! - [`anthropic`]: the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`).
//! - [`models`]: `/v1/models` and `/v1/models/{id}`, in either API's shape.
//! - [`converse`]: what both translators share: the routed model's features,
//!   structured output's text format, document names, tool history as text.
//! - [`guard`]: load shedding and the in-flight count, before any of them.
//! - [`body`]: reading a body within the limits.
//! - [`shape`]: the JSON types of the OpenAI and Anthropic request members.
//! - [`finish`]: the response headers, metrics and access log of each request.
//!
//! This module builds the API router ([`app`]) and holds the steps every
//! adapter takes: receive (auth and the limits from the headers, then the
//! body), route, run (the limits from the body, then the pipeline), render.

pub mod anthropic;
pub mod bedrock;
pub mod bidi;
pub mod body;
pub mod converse;
pub mod finish;
mod gate;
#[cfg(test)]
pub(crate) mod golden;
mod guard;
pub mod models;
pub mod openai;
pub mod operations;
pub(crate) mod shape;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Router;
use bedrock_wire::converse::Summary;
use bedrock_wire::operation::Operation;
use bedrock_wire::tier::{ServiceTier, SERVICE_TIER_HEADER};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

use crate::answer::{Answer, CacheStatus, Record};
use crate::auth::Principal;
use crate::cache::Directives;
use crate::config::ServicePolicy;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::json_body::JsonBody;
use crate::latency;
use crate::limits::{self, Refusal};
use crate::log_tag::{self, Tag};
use crate::metrics;
use crate::pipeline::{self, Call};
use crate::route::Routed;
use crate::runtime::Runtime;
use crate::service_tier;
use crate::state::AppState;
use crate::telemetry::{self, Trace};
pub use body::{parse_json, read_body, BodyRules};
pub use finish::Finish;
pub use guard::Guard;

/// The API port's service: the ingress adapters' router behind the
/// load-shedding guard.
pub fn app(state: AppState) -> Guard {
    let router = Router::new()
        .merge(bedrock::routes())
        .merge(operations::routes())
        .merge(bidi::routes())
        .merge(openai::routes())
        .merge(anthropic::routes())
        .merge(models::routes())
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .with_state(state.clone());
    Guard::new(router, state)
}

async fn unknown_path(request: Request) -> Response {
    let e = ProxyError::new(
        ErrorKind::NotFound,
        Side::Client,
        format!(
            "Invalid URL ({} {}): this proxy has no such endpoint.",
            request.method(),
            request.uri().path()
        ),
    );
    metrics::rejected("unknown_path");
    render_error(request.uri().path(), &e, &bedrock_wire::new_request_id())
}

/// What every ingress does first: authenticate the caller and admit it by
/// its limits from the headers, then read the body within the size limit and
/// the body budget, check a SigV4 signature over it, recording the tenant, and
/// take a concurrency slot (held, with the body's share of the budget, until
/// the response is done).
pub async fn receive(
    state: &AppState,
    rt: &Runtime,
    parts: &Parts,
    body: Body,
    finish: &mut Finish,
) -> Result<(Bytes, Arc<Principal>), ProxyError> {
    let gate = parts.extensions.get::<gate::Gate>();
    receive_for(state, rt, parts, body, None, gate, finish).await
}

/// [`receive`] for a request whose route the path names (the Bedrock paths),
/// so the route's limits are decided before the body too.
pub async fn receive_for(
    state: &AppState,
    rt: &Runtime,
    parts: &Parts,
    body: Body,
    route: Option<&crate::route::Route>,
    gate: Option<&gate::Gate>,
    finish: &mut Finish,
) -> Result<(Bytes, Arc<Principal>), ProxyError> {
    // The headers are checked first, so that a caller without a valid key, or
    // over its limits, is refused before the proxy reads a byte of its body.
    let admission = rt.auth.admit_headers(&parts.headers)?;
    let caller = admission.principal();
    finish.tenant = Some(caller.tenant.clone());
    let admitted = state
        .limiter
        .admit_headers(
            &rt.config.limits,
            caller.caller(),
            route.map(|r| (&r.name, &r.config.quota)),
            admission.verified(),
        )
        .await;
    match admitted {
        Ok(ticket) => finish.limits = ticket,
        Err(Refusal { error, view }) => {
            finish.limits.view = view;
            // hyper does not read a body nobody asked for: on HTTP/1.1 the
            // connection cannot carry another request after this answer.
            finish.close_connection = parts.version <= axum::http::Version::HTTP_11
                && (parts.headers.contains_key(header::TRANSFER_ENCODING)
                    || parts
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .is_some_and(|v| v.as_bytes() != b"0"));
            return Err(error);
        }
    }
    let rules = BodyRules {
        limits: &rt.config.limits,
        connections: &rt.config.server.connections,
        budget: gate.map(gate::Gate::budget),
    };
    let (body, reservation) = read_body(body, &parts.headers, &rules).await?;
    let principal = admission.caller(
        parts.method.as_str(),
        &parts.uri,
        &signed_headers(parts),
        &body,
    )?;
    finish.tenant = Some(principal.tenant.clone());
    if let Some(gate) = gate {
        gate.admit(reservation)?;
    }
    Ok((body, principal))
}

/// The headers a SigV4 signature covers: over HTTP/2 the `host` the client
/// signed travels as the `:authority` pseudo-header, so it is put back.
pub(crate) fn signed_headers(parts: &Parts) -> std::borrow::Cow<'_, HeaderMap> {
    match parts.uri.authority() {
        Some(authority) if !parts.headers.contains_key(header::HOST) => {
            let mut headers = parts.headers.clone();
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, host);
            }
            std::borrow::Cow::Owned(headers)
        }
        _ => std::borrow::Cow::Borrowed(&parts.headers),
    }
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
    finish.routed_metrics = Some(routed.route.metrics.clone());
    principal.admit(&routed.route.name)?;
    finish.model = rt
        .catalog
        .get(&routed.upstream_model)
        .map(|l| l.model.clone());
    if finish.trace.is_on() {
        let embedding = finish
            .model
            .as_ref()
            .is_some_and(|m| m.kind == crate::catalog::ModelKind::Embedding);
        finish.trace.routed(
            telemetry::operation_name(finish.op, embedding),
            model_id,
            &routed.route.name,
            &routed.upstream_model,
        );
    }
    Ok(routed)
}

/// Routes the model a request of another API names, with what the routed
/// model supports (the translators decide by it). A model no route serves is
/// `NotFound` about the `model` field, told as `unknown(model)`.
pub fn route_translated(
    rt: &Runtime,
    principal: &Principal,
    finish: &mut Finish,
    model: &str,
    unknown: fn(&str) -> String,
) -> Result<(Routed, converse::Features), ProxyError> {
    let routed = route(rt, principal, model, finish).map_err(|e| {
        if e.kind == ErrorKind::Validation {
            ProxyError::new(ErrorKind::NotFound, Side::Client, unknown(model)).with_param("model")
        } else {
            e
        }
    })?;
    let info = rt.catalog.get(&routed.upstream_model).map(|l| &*l.model);
    let features = converse::Features::of(&routed.upstream_model, info);
    Ok((routed, features))
}

/// The call that sends a translated Converse body (`op`: Converse,
/// ConverseStream or CountTokens) on a routed model.
pub fn converse_call(
    principal: Arc<Principal>,
    routed: Routed,
    finish: &mut Finish,
    converse: Value,
    op: Operation,
) -> Call {
    finish.op = op;
    let json = JsonBody::from_value(converse);
    Call {
        op,
        principal,
        routed,
        body: json.raw().clone(),
        json: Some(json),
        forward: Vec::new(),
        started: finish.started,
        trace: finish.trace.clone(),
    }
}

/// Runs a call through the pipeline, recording what it took in `finish`:
/// first the limits the body decides (the route's, the token estimate), so a
/// refusal never reaches the cache or an upstream.
pub async fn run(
    state: &AppState,
    rt: &Arc<Runtime>,
    mut call: Call,
    headers: &HeaderMap,
    finish: &mut Finish,
) -> Result<Answer, ProxyError> {
    finish.requested_tier = call.requested_tier();
    // An app marks one call's service tier with a header where the route
    // leaves the tier to the client; a value that is no tier is refused.
    let service_policy = call.routed.route.config.resilience.service_tier;
    if let Some(tier) = service_tier::from_request_header(headers)? {
        if service_policy == ServicePolicy::Client {
            call.mark_service_tier(tier);
        }
    }
    finish.requested_service_tier = call.requested_service_tier();
    finish.wanted_service_tier = Some(service_tier::wanted(
        service_policy,
        finish.requested_service_tier,
    ));
    finish.catalog = Some(rt.catalog.clone());
    let route = &call.routed.route;
    let embedding = finish
        .model
        .as_ref()
        .is_some_and(|m| m.kind == crate::catalog::ModelKind::Embedding);
    let default_output = rt.config.limits.output_tokens_estimate;
    let estimate = || {
        limits::estimate_body(
            call.op,
            call.json.as_ref(),
            &call.body,
            embedding,
            default_output,
        )
    };
    if let Err(Refusal { error, view }) = state
        .limiter
        .admit_body(
            &mut finish.limits,
            &rt.config.limits,
            (&route.name, &route.config.quota),
            estimate,
        )
        .await
    {
        finish.limits.view = view;
        return Err(error);
    }
    let policy = call.routed.route.config.resilience.latency;
    finish.wanted_tier = Some(latency::wanted(policy, finish.requested_tier));
    if finish.trace.is_on() {
        // Only a traced request builds the tree for its attributes.
        finish.trace.call(call.op.is_stream(), call.tree());
    }
    let directives = Directives::from_headers(headers);
    let mut record = Record::default();
    // Boxed: the pipeline's state is most of a request's future, which axum
    // and tower move (copy) several times before it first runs.
    let result = crate::support::boxed(|| {
        pipeline::run(&state.pipeline, rt, call, &directives, &mut record)
    })
    .await;
    finish.pricing = finish::Pricing::of(rt, &record);
    finish.record(record);
    match &result {
        Ok(Answer::Whole { summary, .. }) => {
            finish.answer_service_tier = summary.service_tier;
            finish.invoked_model = summary.invoked_model.clone();
        }
        Ok(Answer::Stream { headers, .. }) => {
            finish.answer_service_tier = headers
                .get(SERVICE_TIER_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(ServiceTier::parse);
        }
        Err(_) => {}
    }
    if let Ok(Answer::Whole { body, summary, .. }) = &result {
        finish
            .trace
            .output_body(body, summary.stop_reason.as_deref());
    }
    // A stream still running when shutdown's grace passes ends with an
    // exception frame (or error event) rather than a cut connection.
    result.map(|answer| match answer {
        Answer::Stream {
            headers,
            frames,
            joined,
        } => Answer::Stream {
            headers,
            frames: crate::stream::until_cut(frames, state.cut.clone()),
            joined,
        },
        whole => whole,
    })
}

/// Runs several calls that answer one request (an embeddings batch a model
/// takes one text at a time) concurrently through the pipeline, answers in the
/// calls' order. The limits admit the calls' summed estimate once; `finish`
/// records the calls together: attempts summed, a cache hit only when every
/// call was one, a miss when any call missed.
pub async fn run_many(
    state: &AppState,
    rt: &Arc<Runtime>,
    mut calls: Vec<Call>,
    headers: &HeaderMap,
    finish: &mut Finish,
) -> Result<Vec<Answer>, ProxyError> {
    let Some(first) = calls.first() else {
        return Ok(Vec::new());
    };
    let route = first.routed.route.clone();
    let service_policy = route.config.resilience.service_tier;
    if let Some(tier) = service_tier::from_request_header(headers)? {
        if service_policy == ServicePolicy::Client {
            for call in &mut calls {
                call.mark_service_tier(tier);
            }
        }
    }
    if let Some(first) = calls.first() {
        finish.op = first.op;
        finish.requested_tier = first.requested_tier();
        finish.requested_service_tier = first.requested_service_tier();
    }
    finish.wanted_service_tier = Some(service_tier::wanted(
        service_policy,
        finish.requested_service_tier,
    ));
    finish.catalog = Some(rt.catalog.clone());
    let embedding = finish
        .model
        .as_ref()
        .is_some_and(|m| m.kind == crate::catalog::ModelKind::Embedding);
    let default_output = rt.config.limits.output_tokens_estimate;
    let estimate = || {
        calls.iter().fold(limits::Estimate::default(), |sum, call| {
            let one = limits::estimate_body(
                call.op,
                call.json.as_ref(),
                &call.body,
                embedding,
                default_output,
            );
            limits::Estimate {
                input: sum.input + one.input,
                output: sum.output + one.output,
            }
        })
    };
    if let Err(Refusal { error, view }) = state
        .limiter
        .admit_body(
            &mut finish.limits,
            &rt.config.limits,
            (&route.name, &route.config.quota),
            estimate,
        )
        .await
    {
        finish.limits.view = view;
        return Err(error);
    }
    finish.wanted_tier = Some(latency::wanted(
        route.config.resilience.latency,
        finish.requested_tier,
    ));
    let directives = Directives::from_headers(headers);
    let runs = calls.into_iter().map(|call| {
        let directives = &directives;
        async move {
            let mut record = Record::default();
            let result = pipeline::run(&state.pipeline, rt, call, directives, &mut record).await;
            (result, record)
        }
    });
    let done = futures_util::future::join_all(runs).await;
    let mut merged = Record::default();
    let mut cache: Option<CacheStatus> = None;
    let mut answers = Vec::with_capacity(done.len());
    let mut failure = None;
    for (result, record) in done {
        cache = Some(match (cache, record.cache) {
            (None, c) => c,
            (Some(CacheStatus::Miss), _) | (_, CacheStatus::Miss) => CacheStatus::Miss,
            (Some(CacheStatus::Bypass), _) | (_, CacheStatus::Bypass) => CacheStatus::Bypass,
            (Some(hit), _) => hit,
        });
        merged.absorb(record);
        match result {
            Ok(answer) => answers.push(answer),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    merged.cache = cache.unwrap_or_default();
    finish.pricing = finish::Pricing::of(rt, &merged);
    finish.record(merged);
    match failure {
        Some(e) => Err(e),
        None => Ok(answers),
    }
}

/// One request of a translated API (OpenAI's, Anthropic's), start to end: the
/// trace from the client's headers, the request's log tag around `serve`, and a
/// failure answered in the shape `render` makes.
pub async fn handled(
    mut finish: Finish,
    request: Request,
    name: &'static str,
    render: fn(&ProxyError, &str) -> Response,
    serve: impl AsyncFnOnce(&mut Finish, Request) -> Result<Response, ProxyError>,
) -> Response {
    start_trace(&mut finish, request.headers(), name);
    let tag = Tag::new(finish.request_id.clone(), name);
    match log_tag::scope(tag, serve(&mut finish, request)).await {
        Ok(response) => response,
        Err(e) => failed(&finish, &e, render),
    }
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
    finish.headers(&mut headers, summary.latency_tier);
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
    let body = crate::stream::to_sse_client(frames, finish.stream_observer(), writer);
    sse_body(finish, body)
}

/// A server-sent-events response of `body` (what [`sse_answer`] renders,
/// possibly with more done between its chunks).
pub fn sse_body(
    finish: &Finish,
    body: impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
) -> axum::response::Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    finish.headers(&mut headers, None);
    let mut response = axum::response::Response::new(Body::from_stream(body));
    *response.headers_mut() = headers;
    response
}

/// The request's trace span (OpenTelemetry; nothing when tracing is off),
/// continuing the client's `traceparent`. `api` names the API operation.
pub fn start_trace(finish: &mut Finish, headers: &HeaderMap, api: &'static str) {
    finish.trace = Trace::request(headers, finish.started, api);
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
