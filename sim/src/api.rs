//! Bedrock Runtime's API on its real paths. The five model operations go:
//! body (size limit) -> credentials -> request log -> model (or prompt router)
//! -> validation -> service tier -> guardrail on the prompt -> scripted faults
//! -> served tier (quotas) -> prompt cache -> answer -> guardrail on the answer
//! -> timing -> response, JSON or paced event stream. Embedding models take a
//! shorter path: validation -> service tier -> faults -> timing -> vectors. The
//! other operations have modules of their own ([`crate::guardrail`],
//! [`crate::guardrail_checks`], [`crate::async_invoke`], [`crate::bidi`]) and
//! share the admission here.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bedrock_wire::error::ErrorType;
use bedrock_wire::eventstream::{self, exception_frame};
use bedrock_wire::operation::RuntimeOperation;
use bedrock_wire::serve::ResetConnection;
use bedrock_wire::tier::ServiceTier;
use futures_util::stream;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Family, Model, ModelKind, Resolved};
use crate::embed;
use crate::error::SimError;
use crate::face::Face;
use crate::faults::{FaultKind, FaultRule, Target};
use crate::generate::{self, Answer};
use crate::guardrail::{self, Applied, Assessment, Trace};
use crate::latency::{timing, Timing};
use crate::prompt_cache::CacheUse;
use crate::render::{self, Meta, Paced};
use crate::request::{self, Operation, Prompt, Tier};
use crate::router::{self, Routed, Signals};
use crate::service_tier;
use crate::state::{Billed, LoggedRequest};
use crate::SimState;

/// The Bedrock Runtime routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route(
            "/model/{model_id}/invoke-with-bidirectional-stream",
            post(crate::bidi::handle),
        )
        .route("/model/{model_id}/{operation}", post(handle))
        .route(
            "/guardrail/{guardrail_id}/version/{guardrail_version}/apply",
            post(crate::guardrail::apply),
        )
        .route(
            "/guardrail-checks/invoke",
            post(crate::guardrail_checks::invoke),
        )
        .route(
            "/async-invoke",
            post(crate::async_invoke::start).get(crate::async_invoke::list),
        )
        .route(
            "/async-invoke/{invocation_arn}",
            get(crate::async_invoke::get),
        )
        .fallback(|| async { SimError::unknown_operation() })
        .method_not_allowed_fallback(|| async { SimError::unknown_operation() })
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
    finish(&state, &id, result)
}

/// Counts an error and stamps the request id: the last step of every operation.
pub(crate) fn finish(
    state: &SimState,
    request_id: &str,
    result: Result<Response, SimError>,
) -> Response {
    let mut response = result.unwrap_or_else(|e| {
        state.stats.error(e.type_name);
        e.into_response()
    });
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

/// A request that passed the front door: its head, the caller's identity, and
/// the body read as JSON.
pub(crate) struct Admitted {
    pub parts: Parts,
    pub identity: String,
    pub json: Result<Value, String>,
}

/// What a request is about, for the request log and the per-model counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// A model id or guardrail from the path.
    Id(&'a str),
    /// A string member of the JSON body (StartAsyncInvoke's `modelId`).
    BodyField(&'static str),
    None,
}

/// Reads the body (within the size limit), checks the credentials, and records
/// the request in the log and the counters.
pub(crate) async fn admit(
    state: &SimState,
    request_id: &str,
    op: RuntimeOperation,
    subject: Subject<'_>,
    request: Request,
) -> Result<Admitted, SimError> {
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
    let json: Result<Value, String> = serde_json::from_slice(&bytes).map_err(|e| e.to_string());
    let subject = match subject {
        Subject::Id(id) => id,
        Subject::BodyField(key) => json
            .as_ref()
            .ok()
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .unwrap_or(""),
        Subject::None => "",
    };
    log(state, request_id, op, subject, &parts, bytes.clone());
    Ok(Admitted {
        parts,
        identity,
        json,
    })
}

/// Records a request in `/_sim/requests` (its body as received, parsed when
/// read) and `/_sim/stats`.
pub(crate) fn log(
    state: &SimState,
    request_id: &str,
    op: RuntimeOperation,
    subject: &str,
    parts: &Parts,
    body: Bytes,
) {
    state.log.push(
        LoggedRequest {
            seq: state.log.next_seq(),
            request_id: request_id.to_owned(),
            face: Face::Bedrock,
            operation: op.label(),
            model_id: subject.to_owned(),
            path: parts.uri.path().to_owned(),
            http_version: LoggedRequest::version_name(parts.version),
            headers: LoggedRequest::headers_without_secrets(&parts.headers),
            body: Value::Null,
            at_ms: u64::try_from(state.clock.now().as_millis()).unwrap_or(u64::MAX),
        },
        body,
    );
    state.stats.received(op.label(), subject);
}

/// Everything decided about a request before answering it.
struct Plan {
    op: Operation,
    model: Arc<Model>,
    prompt: Prompt,
    fault: Option<FaultRule>,
    served: Tier,
    report_tier: bool,
    service: ServiceTier,
    report_service: bool,
    routed: Option<Routed>,
    guardrail: Option<Guarded>,
    cache: CacheUse,
    timing: Timing,
    seed: u64,
}

/// A guardrail a request applies, and what it found in the prompt.
struct Guarded {
    applied: Applied,
    input: Assessment,
}

/// The model a request names: a model or profile id or ARN, or a prompt
/// router's ARN resolved to the model it routes this request to.
fn resolve(
    state: &SimState,
    model_id: &str,
    op: Operation,
    body: &Result<Value, String>,
) -> Result<(Resolved, Option<Routed>), SimError> {
    let invalid = || SimError::validation("The provided model identifier is invalid.");
    if let Some(router) = state.catalog.router(model_id) {
        if op == Operation::CountTokens {
            return Err(invalid());
        }
        let body = body.as_ref().map_err(SimError::malformed)?;
        let routed = router::route(
            router,
            model_id,
            &state.config.region,
            &Signals::read(op, body),
        )?;
        let resolved = state.catalog.resolve(&routed.profile).ok_or_else(invalid)?;
        return Ok((resolved, Some(routed)));
    }
    let resolved = state.catalog.resolve(model_id).ok_or_else(invalid)?;
    if !resolved.model.serves_model_operations() {
        return Err(SimError::validation(
            "This action doesn't support the model that you provided. Try again with a supported text or chat model.",
        ));
    }
    Ok((resolved, None))
}

async fn serve(
    state: &Arc<SimState>,
    request_id: &str,
    model_id: String,
    operation: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = Operation::from_name(operation).ok_or_else(SimError::unknown_operation)?;
    let Admitted {
        parts,
        identity,
        json,
        ..
    } = admit(
        state,
        request_id,
        op.into(),
        Subject::Id(&model_id),
        request,
    )
    .await?;

    let (resolved, routed) = resolve(state, &model_id, op, &json)?;
    let body = json.map_err(SimError::malformed)?;

    if op == Operation::CountTokens {
        if resolved.model.family != Family::Anthropic {
            return Err(SimError::validation(
                "The provided model doesn't support counting tokens.",
            ));
        }
        let tokens = request::count_tokens(&body, &resolved.model)?;
        let target = Target {
            face: Face::Bedrock,
            ids: &[&model_id],
            operation: op.name(),
            ..Target::default()
        };
        if let Some(fault) = take_fault(state, &parts.headers, &target)? {
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
        routed,
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

/// InvokeModel on an embedding model: vectors after the model's latency. The
/// service tier is checked and reported as for text models; guardrails,
/// latency tiers and the prompt cache do not apply.
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
    let requested_service = service_tier::from_header(headers)?;
    let service = requested_service.tier();
    service_tier::check(state, model, service)?;
    let target = Target {
        face: Face::Bedrock,
        ids: &[model_id],
        latency: Some(Tier::Standard.name()),
        service_tier: Some(service.name()),
        operation: op.name(),
    };
    let fault = take_fault(state, headers, &target)?;
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
    if service == ServiceTier::Flex {
        service_tier::admit_flex(state, model)?;
    }
    let (speed, jitter) = service_tier::adjust(&model.standard, state.config.jitter, service);
    let t = timing(
        &speed,
        request.input_tokens,
        0,
        jitter,
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
            cache_write_1h: 0,
        },
    );
    state.stats.served_service_tier(service.name());
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
    if requested_service.0.is_some() {
        header(
            &mut out,
            bedrock_wire::tier::SERVICE_TIER_HEADER,
            service.name(),
        );
    }
    Ok(json_response(embed::response(&request, model), out))
}

/// The fault for this request: the `x-sim-fault` header's, or the first
/// installed rule that matches.
pub(crate) fn take_fault(
    state: &SimState,
    headers: &HeaderMap,
    target: &Target<'_>,
) -> Result<Option<FaultRule>, SimError> {
    let fault = match headers.get("x-sim-fault").and_then(|v| v.to_str().ok()) {
        Some(header) => Some(
            FaultRule::from_header_on(header, target.face)
                .map_err(|e| SimError::validation(format!("x-sim-fault: {e}")))?,
        ),
        None => state.faults.take(target),
    };
    if fault.is_some() {
        state.stats.fault_fired();
    }
    Ok(fault)
}

/// The fault of an operation without a model answer: an error fault answers
/// (after its delay), `slow-first-byte` waits; the rule comes back for faults
/// the operation handles itself (`job-failure`).
pub(crate) async fn fault_error(
    state: &SimState,
    headers: &HeaderMap,
    target: &Target<'_>,
) -> Result<Option<FaultRule>, SimError> {
    let Some(fault) = take_fault(state, headers, target)? else {
        return Ok(None);
    };
    let delay = Duration::from_millis(fault.ms.unwrap_or(0));
    if let Some(error) = fault.error() {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Err(error);
    }
    if fault.fault == FaultKind::SlowFirstByte && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(Some(fault))
}

#[allow(clippy::too_many_arguments)]
fn plan(
    state: &SimState,
    identity: &str,
    model_id: &str,
    op: Operation,
    resolved: &Resolved,
    routed: Option<Routed>,
    body: &Value,
    headers: &HeaderMap,
) -> Result<Planned, SimError> {
    let model = resolved.model.clone();
    let (mut prompt, report_tier, requested_service, applied) = match op {
        Operation::Converse | Operation::ConverseStream => (
            request::converse(body, &model)?,
            body.get("performanceConfig").is_some(),
            service_tier::from_body(body)?,
            Applied::from_converse(&state.config, body)?,
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
            (
                prompt,
                header.is_some(),
                service_tier::from_header(headers)?,
                Applied::from_headers(&state.config, headers)?,
            )
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
    let service = requested_service.tier();
    service_tier::check(state, &model, service)?;

    let mut ids = vec![model_id];
    if let Some(r) = &routed {
        ids.push(&r.profile);
    }
    let target = Target {
        face: Face::Bedrock,
        ids: &ids,
        latency: Some(prompt.tier.name()),
        service_tier: Some(service.name()),
        operation: op.name(),
    };
    let fault = take_fault(state, headers, &target)?;
    if let Some(error) = fault.as_ref().and_then(FaultRule::error) {
        let after = Duration::from_millis(fault.as_ref().and_then(|f| f.ms).unwrap_or(0));
        return Ok(Planned::Fail { error, after });
    }
    if service == ServiceTier::Flex {
        service_tier::admit_flex(state, &model)?;
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

    let guardrail = applied.map(|applied| {
        let texts = match op {
            Operation::Converse | Operation::ConverseStream => guardrail::converse_input(body),
            _ => guardrail::invoke_input(body),
        };
        let input = guardrail::assess(&applied.guardrail, &texts);
        state.stats.guardrail(input.intervened());
        Guarded { applied, input }
    });
    let blocked = guardrail.as_ref().is_some_and(|g| g.input.intervened());

    // A blocked prompt never reaches the model: nothing is cached, and the
    // only delay is the guardrail's.
    let (cache, timing) = if blocked {
        let chars = guardrail.as_ref().map_or(0, |g| g.input.chars);
        let delay =
            Duration::from_millis(guardrail::latency_ms(chars)).mul_f64(state.config.time_scale);
        (
            CacheUse::default(),
            Timing {
                ttft: delay,
                per_token: Duration::ZERO,
            },
        )
    } else {
        let cache = state
            .prompt_cache
            .apply(identity, &model, &prompt, state.clock.now());
        let speed = match (served, model.optimized.as_ref()) {
            (Tier::Optimized, Some(fast)) => fast,
            _ => &model.standard,
        };
        let (speed, jitter) = service_tier::adjust(speed, state.config.jitter, service);
        let uncached = prompt.input_tokens.saturating_sub(cache.read);
        let timing = timing(
            &speed,
            uncached,
            cache.read,
            jitter,
            state.config.time_scale,
            fastrand::f64(),
        );
        (cache, timing)
    };
    let deterministic = prompt.temperature == Some(0.0) || state.config.seed.is_some();
    let seed = if deterministic {
        let mut first = [0u8; 8];
        first.copy_from_slice(&prompt.fingerprint[..8]);
        u64::from_le_bytes(first) ^ state.config.seed.unwrap_or(0)
    } else {
        fastrand::u64(..)
    };
    prompt.max_tokens = Some(max_tokens);
    if let Some(r) = &routed {
        state.stats.routed(&r.router, &r.profile);
    }
    Ok(Planned::Answer(Box::new(Plan {
        op,
        model,
        prompt,
        fault,
        served,
        report_tier,
        service,
        report_service: requested_service.0.is_some(),
        routed,
        guardrail,
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

pub(crate) fn json_response(body: Value, mut headers: HeaderMap) -> Response {
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, body.to_string()).into_response()
}

fn header(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, v);
    }
}

/// What a guardrail did to an answer, for the response's trace members.
struct GuardrailOutcome<'a> {
    guarded: &'a Guarded,
    output: Option<Assessment>,
    model_output: Option<String>,
}

impl GuardrailOutcome<'_> {
    fn intervened(&self) -> bool {
        self.guarded.input.intervened() || self.output.as_ref().is_some_and(Assessment::intervened)
    }

    fn assessment(&self, state: &SimState, a: &Assessment) -> Value {
        let g = &self.guarded.applied;
        guardrail::assessment_json(&g.guardrail, &g.version, a, &state.config)
    }

    /// Converse's `trace.guardrail`.
    fn converse_trace(&self, state: &SimState) -> Value {
        let id = self.guarded.applied.guardrail.id.clone();
        let mut t = Map::new();
        let mut input = Map::new();
        input.insert(id.clone(), self.assessment(state, &self.guarded.input));
        t.insert("inputAssessment".into(), Value::Object(input));
        if let Some(output) = &self.output {
            let mut outputs = Map::new();
            outputs.insert(id, json!([self.assessment(state, output)]));
            t.insert("outputAssessments".into(), Value::Object(outputs));
        }
        if let Some(text) = &self.model_output {
            t.insert("modelOutput".into(), json!([text]));
        }
        if self.intervened() {
            t.insert("actionReason".into(), json!("Guardrail blocked."));
        }
        Value::Object(t)
    }

    /// InvokeModel's `amazon-bedrock-trace.guardrail`.
    fn invoke_trace(&self, state: &SimState) -> Value {
        let id = self.guarded.applied.guardrail.id.clone();
        let mut input = Map::new();
        input.insert(id.clone(), self.assessment(state, &self.guarded.input));
        let mut t = Map::new();
        t.insert("input".into(), Value::Object(input));
        if let Some(output) = &self.output {
            let mut one = Map::new();
            one.insert(id, self.assessment(state, output));
            t.insert("outputs".into(), json!([Value::Object(one)]));
        }
        Value::Object(t)
    }
}

/// The answer to a planned request, after the guardrail had its say on both
/// ends: the answer, what the guardrail did, and whether the model ran.
fn answer<'p>(state: &SimState, plan: &'p Plan) -> (Answer, Option<GuardrailOutcome<'p>>) {
    let max_tokens = plan.prompt.max_tokens.unwrap_or(1);
    let Some(guarded) = plan.guardrail.as_ref() else {
        return (generate::answer(&plan.prompt, plan.seed, max_tokens), None);
    };
    let g = &guarded.applied.guardrail;
    if guarded.input.intervened() {
        let outcome = GuardrailOutcome {
            guarded,
            output: None,
            model_output: None,
        };
        return (generate::blocked(&g.blocked_input_message), Some(outcome));
    }
    let answer = generate::answer(&plan.prompt, plan.seed, max_tokens);
    let text = generate::text(&answer);
    let output = guardrail::assess(g, &[&text]);
    state.stats.guardrail(output.intervened());
    let answer = if output.intervened() {
        // The model ran and is billed; the caller sees the blocked message.
        Answer {
            output_tokens: answer.output_tokens,
            ..generate::blocked(&g.blocked_output_message)
        }
    } else {
        answer
    };
    let full = guarded.applied.trace != Trace::Disabled;
    let outcome = GuardrailOutcome {
        guarded,
        output: Some(output),
        model_output: full.then_some(text),
    };
    (answer, Some(outcome))
}

async fn respond(state: &Arc<SimState>, plan: Plan) -> Result<Response, SimError> {
    let (answer, outcome) = answer(state, &plan);
    let model_ran = !plan
        .guardrail
        .as_ref()
        .is_some_and(|g| g.input.intervened());
    let generation = if model_ran {
        plan.timing.ttft + plan.timing.tokens(answer.output_tokens)
    } else {
        plan.timing.ttft
    };
    let billed = if model_ran {
        Billed {
            input_tokens: plan
                .prompt
                .input_tokens
                .saturating_sub(plan.cache.read + plan.cache.write),
            output_tokens: answer.output_tokens,
            cache_read: plan.cache.read,
            cache_write: plan.cache.write,
            cache_write_1h: plan.cache.write_1h,
        }
    } else {
        Billed::default()
    };
    state.stats.served(plan.served.name(), billed);
    state.stats.served_service_tier(plan.service.name());

    let is_converse = matches!(plan.op, Operation::Converse | Operation::ConverseStream);
    let guardrail_trace_on = outcome
        .as_ref()
        .is_some_and(|o| o.guarded.applied.trace != Trace::Disabled);
    let mut trace = Map::new();
    let mut native = Map::new();
    if let Some(r) = &plan.routed {
        trace.insert(
            "promptRouter".into(),
            json!({"invokedModelId": r.invoked_model_id}),
        );
    }
    if let Some(o) = &outcome {
        if is_converse {
            if guardrail_trace_on {
                trace.insert("guardrail".into(), o.converse_trace(state));
            }
        } else {
            native.insert(
                "amazon-bedrock-guardrailAction".into(),
                json!(if o.intervened() { "INTERVENED" } else { "NONE" }),
            );
            if guardrail_trace_on {
                trace.insert("guardrail".into(), o.invoke_trace(state));
            }
        }
    }
    let trace = (!trace.is_empty()).then_some(Value::Object(trace));
    let trace = if is_converse {
        trace
    } else {
        if let Some(t) = trace {
            native.insert("amazon-bedrock-trace".into(), t);
        }
        None
    };
    let meta = Meta {
        input_tokens: billed.input_tokens,
        output_tokens: billed.output_tokens,
        cache_read: billed.cache_read,
        cache_write: billed.cache_write,
        cache_write_1h: billed.cache_write_1h,
        latency_ms: u64::try_from(generation.as_millis()).unwrap_or(u64::MAX),
        first_byte_ms: u64::try_from(plan.timing.ttft.as_millis()).unwrap_or(u64::MAX),
        tier: plan.report_tier.then(|| plan.served.name()),
        service_tier: plan.report_service.then(|| plan.service.name()),
        trace,
        native,
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
                if let Some(tier) = meta.service_tier {
                    header(&mut headers, bedrock_wire::tier::SERVICE_TIER_HEADER, tier);
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
        if let Some(tier) = meta.service_tier {
            header(&mut headers, bedrock_wire::tier::SERVICE_TIER_HEADER, tier);
        }
    }
    let timing = if model_ran {
        plan.timing
    } else {
        Timing {
            ttft: plan.timing.ttft,
            per_token: Duration::ZERO,
        }
    };
    Ok((
        StatusCode::OK,
        headers,
        paced_body(items, timing, ending, state.clone()),
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
