//! Bedrock Runtime's five operations on their real paths. Each request goes:
//! body (size limit) -> credentials -> request log -> model -> validation ->
//! scripted faults -> served tier (quota) -> prompt cache -> answer -> timing ->
//! response, JSON or paced event stream. Embedding models take a shorter path:
//! validation -> faults -> timing -> vectors.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bedrock_wire::error::ErrorType;
use bedrock_wire::eventstream::{self, exception_frame};
use bedrock_wire::serve::ResetConnection;
use futures_util::stream;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Family, Model, ModelKind, Resolved};
use crate::embed;
use crate::error::SimError;
use crate::faults::{FaultKind, FaultRule};
use crate::generate;
use crate::latency::{timing, Timing};
use crate::prompt_cache::CacheUse;
use crate::render::{self, Meta, Paced};
use crate::request::{self, Operation, Prompt, Tier};
use crate::state::{Billed, LoggedRequest};
use crate::SimState;

/// The Bedrock Runtime routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/model/{model_id}/{operation}", post(handle))
        .fallback(|| async { SimError::unknown_operation() })
        .with_state(state)
}

async fn handle(
    State(state): State<Arc<SimState>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = match path {
        Ok(Path((model_id, operation))) => serve(&state, &id, model_id, &operation, request).await,
        Err(e) => Err(SimError::validation(format!(
            "The request path is invalid: {e}"
        ))),
    };
    let mut response = result.unwrap_or_else(|e| {
        state.stats.error(e.type_name);
        e.into_response()
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

/// Everything decided about a request before answering it.
struct Plan {
    op: Operation,
    model: Arc<Model>,
    prompt: Prompt,
    fault: Option<FaultRule>,
    served: Tier,
    report_tier: bool,
    cache: CacheUse,
    timing: Timing,
    seed: u64,
}

async fn serve(
    state: &Arc<SimState>,
    request_id: &str,
    model_id: String,
    operation: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = Operation::from_name(operation).ok_or_else(SimError::unknown_operation)?;
    let (parts, body) = request.into_parts();
    let max = state.config.max_body_bytes;
    let bytes = Limited::new(body, max)
        .collect()
        .await
        .map_err(|_| {
            SimError::validation(format!(
                "The request body is larger than the limit of {max} bytes."
            ))
        })?
        .to_bytes();
    // The whole URI: over HTTP/2 it holds the authority a signature may cover.
    let uri = parts.uri.to_string();
    let identity = crate::auth::authenticate(
        &state.config,
        parts.method.as_str(),
        &uri,
        &parts.headers,
        &bytes,
    )?;

    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
    state.log.push(
        LoggedRequest {
            seq: state.log.next_seq(),
            request_id: request_id.to_owned(),
            face: crate::face::Face::Bedrock,
            operation: op.name(),
            model_id: model_id.clone(),
            path: parts.uri.path().to_owned(),
            headers: LoggedRequest::headers_without_secrets(&parts.headers),
            body: Value::Null,
            at_ms: u64::try_from(state.clock.now().as_millis()).unwrap_or(u64::MAX),
        },
        bytes.clone(),
    );
    state.stats.received(op.name(), &model_id);

    let resolved = state
        .catalog
        .resolve(&model_id)
        .ok_or_else(|| SimError::validation("The provided model identifier is invalid."))?;
    let body = parsed.map_err(SimError::malformed)?;

    if op == Operation::CountTokens {
        if resolved.model.family != Family::Anthropic {
            return Err(SimError::validation(
                "The provided model doesn't support counting tokens.",
            ));
        }
        let tokens = request::count_tokens(&body, &resolved.model)?;
        if let Some(fault) = take_fault(state, &parts.headers, &model_id, Tier::Standard, op)? {
            if let Some(e) = fault.error() {
                return Err(e);
            }
        }
        return Ok(json_response(
            json!({ "inputTokens": tokens }),
            HeaderMap::new(),
        ));
    }
    if resolved.model.kind == ModelKind::Embedding {
        return embedding(state, &parts.headers, &model_id, op, &resolved.model, &body).await;
    }

    let plan = plan(
        state,
        &identity,
        &model_id,
        op,
        &resolved,
        &body,
        &parts.headers,
    )?;
    let plan = match plan {
        Planned::Answer(plan) => *plan,
        Planned::Fail { error, after } => {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            return Err(error);
        }
    };
    let slow = plan
        .fault
        .as_ref()
        .filter(|f| f.fault == FaultKind::SlowFirstByte)
        .and_then(|f| f.ms)
        .map(Duration::from_millis);
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    respond(state, plan).await
}

/// InvokeModel on an embedding model: vectors after the model's latency.
async fn embedding(
    state: &SimState,
    headers: &HeaderMap,
    model_id: &str,
    op: Operation,
    model: &Model,
    body: &Value,
) -> Result<Response, SimError> {
    match op {
        Operation::Invoke => {}
        Operation::InvokeStream => {
            return Err(SimError::validation(
                "The provided model doesn't support streaming.",
            ))
        }
        _ => {
            return Err(SimError::validation(
                "This action doesn't support the model that you provided. Try again with a supported text or chat model.",
            ))
        }
    }
    let request = embed::request(body, model)?;
    let fault = take_fault(state, headers, model_id, Tier::Standard, op)?;
    if let Some(f) = &fault {
        let delay = Duration::from_millis(f.ms.unwrap_or(0));
        match f.fault {
            FaultKind::SlowFirstByte | FaultKind::ConnectionReset if !delay.is_zero() => {
                tokio::time::sleep(delay).await;
            }
            _ => {}
        }
        if let Some(error) = f.error() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            return Err(error);
        }
        match f.fault {
            FaultKind::ConnectionReset => {
                let mut r = StatusCode::OK.into_response();
                r.extensions_mut().insert(ResetConnection);
                return Ok(r);
            }
            FaultKind::MidstreamError => {
                let kind =
                    ErrorType::parse(f.stream_exception()).unwrap_or(ErrorType::InternalServer);
                return Err(SimError::modeled(
                    kind,
                    "The model stopped while generating the response.",
                ));
            }
            _ => {}
        }
    }
    let t = timing(
        &model.standard,
        request.input_tokens,
        0,
        state.config.jitter,
        state.config.time_scale,
        fastrand::f64(),
    );
    if !t.ttft.is_zero() {
        tokio::time::sleep(t.ttft).await;
    }
    state.stats.served(
        Tier::Standard.name(),
        Billed {
            input_tokens: request.input_tokens,
            output_tokens: 0,
            cache_read: 0,
            cache_write: 0,
        },
    );
    let mut out = HeaderMap::new();
    header(
        &mut out,
        "x-amzn-bedrock-input-token-count",
        request.input_tokens,
    );
    header(
        &mut out,
        "x-amzn-bedrock-invocation-latency",
        t.ttft.as_millis(),
    );
    Ok(json_response(embed::response(&request, model), out))
}

fn take_fault(
    state: &SimState,
    headers: &HeaderMap,
    model_id: &str,
    tier: Tier,
    op: Operation,
) -> Result<Option<FaultRule>, SimError> {
    let fault = match headers.get("x-sim-fault").and_then(|v| v.to_str().ok()) {
        Some(header) => Some(
            FaultRule::from_header(header)
                .map_err(|e| SimError::validation(format!("x-sim-fault: {e}")))?,
        ),
        None => state.faults.take(model_id, tier.name(), op.name()),
    };
    if fault.is_some() {
        state.stats.fault_fired();
    }
    Ok(fault)
}

fn plan(
    state: &SimState,
    identity: &str,
    model_id: &str,
    op: Operation,
    resolved: &Resolved,
    body: &Value,
    headers: &HeaderMap,
) -> Result<Planned, SimError> {
    let model = resolved.model.clone();
    let (mut prompt, report_tier) = match op {
        Operation::Converse | Operation::ConverseStream => (
            request::converse(body, &model)?,
            body.get("performanceConfig").is_some(),
        ),
        _ => {
            let mut prompt = match model.family {
                Family::Anthropic => request::anthropic(body, &model)?,
                Family::Meta => request::llama(body, &model)?,
                Family::Amazon | Family::Cohere => {
                    return Err(SimError::validation(format!(
                        "bedrock-sim answers InvokeModel for {} only through Converse; use Converse or ConverseStream.",
                        model.id
                    )))
                }
            };
            let header = headers
                .get(bedrock_wire::tier::LATENCY_HEADER)
                .and_then(|v| v.to_str().ok());
            if let Some(tier) = header {
                prompt.tier = request::parse_tier(tier, "performanceConfigLatency")?;
            }
            (prompt, header.is_some())
        }
    };

    let region = &state.config.region;
    if prompt.tier == Tier::Optimized {
        let supported = model.optimized.is_some()
            && resolved.via_profile
            && model.optimized_regions.iter().any(|r| r == region);
        if !supported {
            return Err(SimError::validation(format!(
                "Latency-optimized inference is not supported for {model_id} in {region}. Use an inference profile of a model that supports it, or set the latency to standard."
            )));
        }
    }

    let fault = take_fault(state, headers, model_id, prompt.tier, op)?;
    if let Some(error) = fault.as_ref().and_then(FaultRule::error) {
        let after = Duration::from_millis(fault.as_ref().and_then(|f| f.ms).unwrap_or(0));
        return Ok(Planned::Fail { error, after });
    }

    let max_tokens = prompt.max_tokens.unwrap_or(model.max_output_tokens);
    let mut served = prompt.tier;
    if served == Tier::Optimized {
        let now = state.clock.now();
        let over_quota = state
            .config
            .optimized_rpm
            .is_some_and(|rpm| !state.quota.admit(&model.id, rpm, now));
        let too_long = model
            .optimized_max_tokens
            .is_some_and(|cap| prompt.input_tokens.saturating_add(max_tokens) > cap);
        if over_quota || too_long {
            served = Tier::Standard;
            state.stats.demoted();
        }
    }

    let cache = state
        .prompt_cache
        .apply(identity, &model, &prompt, state.clock.now());
    let speed = match (served, model.optimized.as_ref()) {
        (Tier::Optimized, Some(fast)) => fast,
        _ => &model.standard,
    };
    let uncached = prompt.input_tokens.saturating_sub(cache.read);
    let timing = timing(
        speed,
        uncached,
        cache.read,
        state.config.jitter,
        state.config.time_scale,
        fastrand::f64(),
    );
    let deterministic = prompt.temperature == Some(0.0) || state.config.seed.is_some();
    let seed = if deterministic {
        let mut first = [0u8; 8];
        first.copy_from_slice(&prompt.fingerprint[..8]);
        u64::from_le_bytes(first) ^ state.config.seed.unwrap_or(0)
    } else {
        fastrand::u64(..)
    };
    prompt.max_tokens = Some(max_tokens);
    Ok(Planned::Answer(Box::new(Plan {
        op,
        model,
        prompt,
        fault,
        served,
        report_tier,
        cache,
        timing,
        seed,
    })))
}

/// What a request will get: an answer, or a scripted error (after a delay).
enum Planned {
    Answer(Box<Plan>),
    Fail { error: SimError, after: Duration },
}

fn json_response(body: Value, mut headers: HeaderMap) -> Response {
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, body.to_string()).into_response()
}

fn header(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, v);
    }
}

async fn respond(state: &Arc<SimState>, plan: Plan) -> Result<Response, SimError> {
    let answer = generate::answer(&plan.prompt, plan.seed, plan.prompt.max_tokens.unwrap_or(1));
    let generation = plan.timing.ttft + plan.timing.tokens(answer.output_tokens);
    let billed = Billed {
        input_tokens: plan
            .prompt
            .input_tokens
            .saturating_sub(plan.cache.read + plan.cache.write),
        output_tokens: answer.output_tokens,
        cache_read: plan.cache.read,
        cache_write: plan.cache.write,
    };
    state.stats.served(plan.served.name(), billed);
    let meta = Meta {
        input_tokens: billed.input_tokens,
        output_tokens: answer.output_tokens,
        cache_read: billed.cache_read,
        cache_write: billed.cache_write,
        latency_ms: u64::try_from(generation.as_millis()).unwrap_or(u64::MAX),
        first_byte_ms: u64::try_from(plan.timing.ttft.as_millis()).unwrap_or(u64::MAX),
        tier: plan.report_tier.then(|| plan.served.name()),
        model_name: plan.model.short_name().to_owned(),
        seed: plan.seed,
        report_stop_sequence: plan.prompt.report_stop_sequence,
    };

    if !plan.op.is_stream() {
        match plan.fault.as_ref().map(|f| f.fault) {
            Some(FaultKind::ConnectionReset) => {
                let mut r = StatusCode::OK.into_response();
                r.extensions_mut().insert(ResetConnection);
                return Ok(r);
            }
            Some(FaultKind::MidstreamError) => {
                let rule = plan.fault.as_ref().map_or("", |f| f.stream_exception());
                let kind = ErrorType::parse(rule).unwrap_or(ErrorType::InternalServer);
                return Err(SimError::modeled(
                    kind,
                    "The model stopped while generating the response.",
                ));
            }
            _ => {}
        }
        if !generation.is_zero() {
            tokio::time::sleep(generation).await;
        }
        return Ok(match plan.op {
            Operation::Converse => {
                json_response(render::converse_body(&answer, &meta), HeaderMap::new())
            }
            _ => {
                let mut headers = HeaderMap::new();
                header(
                    &mut headers,
                    "x-amzn-bedrock-input-token-count",
                    meta.input_tokens,
                );
                header(
                    &mut headers,
                    "x-amzn-bedrock-output-token-count",
                    meta.output_tokens,
                );
                header(
                    &mut headers,
                    "x-amzn-bedrock-invocation-latency",
                    meta.latency_ms,
                );
                header(
                    &mut headers,
                    "x-amzn-bedrock-cache-read-input-token-count",
                    meta.cache_read,
                );
                header(
                    &mut headers,
                    "x-amzn-bedrock-cache-write-input-token-count",
                    meta.cache_write,
                );
                if let Some(tier) = meta.tier {
                    header(&mut headers, bedrock_wire::tier::LATENCY_HEADER, tier);
                }
                let body = match plan.prompt.format {
                    request::Format::Llama => render::llama_body(&answer, &meta),
                    _ => render::anthropic_body(&answer, &meta),
                };
                json_response(body, headers)
            }
        });
    }

    let items: Vec<Paced> = match plan.op {
        Operation::ConverseStream => render::converse_events(&answer, &meta, true)
            .into_iter()
            .map(|(e, tokens)| Paced {
                frame: e.to_frame(),
                tokens,
            })
            .collect(),
        _ => {
            let mut rng = fastrand::Rng::with_seed(plan.seed);
            let events = match plan.prompt.format {
                request::Format::Llama => render::llama_events(&answer, &meta),
                _ => render::anthropic_events(&answer, &meta),
            };
            events
                .into_iter()
                .map(|(e, tokens)| Paced {
                    frame: render::chunk_frame(&e, &mut rng),
                    tokens,
                })
                .collect()
        }
    };
    let ending = match plan.fault.as_ref() {
        Some(f) if f.fault == FaultKind::MidstreamError => Ending::Exception {
            after: f.after_events.unwrap_or(2) as usize,
            frame: exception_frame(
                f.stream_exception(),
                f.message
                    .as_deref()
                    .unwrap_or("The model stopped while generating the response."),
            ),
        },
        Some(f) if f.fault == FaultKind::ConnectionReset => Ending::Reset {
            after: f.after_events.unwrap_or(2) as usize,
        },
        _ => Ending::Complete,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static(eventstream::CONTENT_TYPE),
    );
    if plan.op == Operation::InvokeStream {
        headers.insert(
            "x-amzn-bedrock-content-type",
            HeaderValue::from_static("application/json"),
        );
        if let Some(tier) = meta.tier {
            header(&mut headers, bedrock_wire::tier::LATENCY_HEADER, tier);
        }
    }
    Ok((
        StatusCode::OK,
        headers,
        paced_body(items, plan.timing, ending, state.clone()),
    )
        .into_response())
}

/// How a stream ends.
pub(crate) enum Ending {
    Complete,
    /// An exception frame after `after` events.
    Exception {
        after: usize,
        frame: Bytes,
    },
    /// The connection cut after `after` events.
    Reset {
        after: usize,
    },
}

struct Pacer {
    items: std::vec::IntoIter<Paced>,
    timing: Timing,
    sent: usize,
    first_token_pending: bool,
    ending: Ending,
    finished: bool,
    state: Arc<SimState>,
}

impl Drop for Pacer {
    /// A reader that went away mid-stream stopped the generation; count it.
    fn drop(&mut self) {
        if !self.finished {
            self.state.stats.stream_cancelled();
        }
    }
}

impl Pacer {
    /// The delay before an item: the first output token costs the TTFT (the
    /// message start rides with it), every later token `per_token`.
    fn delay(&mut self, item: &Paced) -> Duration {
        if self.sent == 0 {
            return self.timing.ttft;
        }
        let mut tokens = item.tokens;
        if self.first_token_pending && tokens > 0 {
            self.first_token_pending = false;
            tokens -= 1;
        }
        self.timing.tokens(tokens)
    }
}

/// An event stream that sends each item after its delay; dropping it (a client
/// that went away) stops the generation.
pub(crate) fn paced_body(
    items: Vec<Paced>,
    timing: Timing,
    ending: Ending,
    state: Arc<SimState>,
) -> Body {
    let pacer = Pacer {
        items: items.into_iter(),
        timing,
        sent: 0,
        first_token_pending: true,
        ending,
        finished: false,
        state,
    };
    let s = stream::unfold(Some(pacer), |state| async move {
        let mut p = state?;
        match &p.ending {
            Ending::Exception { after, frame } if p.sent >= *after => {
                let frame = frame.clone();
                p.finished = true;
                return Some((Ok(frame), None));
            }
            Ending::Reset { after } if p.sent >= *after => {
                p.finished = true;
                // Give the server a moment to flush the frames already sent, so
                // the reader gets every whole frame before the cut, as from a
                // real connection that dies mid-stream.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let reset = std::io::Error::other("connection reset by fault");
                return Some((Err(reset), None));
            }
            _ => {}
        }
        let Some(item) = p.items.next() else {
            p.finished = true;
            return None;
        };
        let delay = p.delay(&item);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        p.sent += 1;
        Some((Ok::<_, std::io::Error>(item.frame), Some(p)))
    });
    Body::from_stream(s)
}
