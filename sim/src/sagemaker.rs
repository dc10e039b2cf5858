//! The SageMaker Runtime face: `POST /endpoints/{EndpointName}/invocations` and
//! `/invocations-response-stream` as SageMaker Runtime has them, SigV4 for
//! service `sagemaker`, endpoints (optionally hosting inference components)
//! serving the self-hosted models through the OpenAI-style messages API of the
//! LMI, vLLM and TGI containers.
//!
//! SageMaker's own failures come in its shapes (`ValidationError`,
//! `ThrottlingException`, `ServiceUnavailable`, ...); the container's come back
//! wrapped in a 424 `ModelError` carrying `OriginalStatusCode` and
//! `OriginalMessage`. Streams are event streams of `PayloadPart` frames whose
//! bytes are the container's SSE, cut wherever the container flushed (an event
//! may span two parts, a part may hold two events), ending with a
//! `ModelStreamError` or `InternalStreamFailure` exception when one is scripted.
//! Each request goes: body -> SigV4 -> request log -> endpoint -> scripted
//! faults -> container (validation, answer) -> response.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bedrock_wire::eventstream;
use bedrock_wire::sagemaker::{
    self as wire, SageMakerErrorType, SageMakerOperation, StreamException,
};
use bedrock_wire::serve::ResetConnection;
use bedrock_wire::sse;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{paced_body, Ending};
use crate::chat::{self, ChatError};
use crate::config::SimConfig;
use crate::error::SimError;
use crate::face::Face;
use crate::faults::{FaultKind, FaultRule};
use crate::latency::Timing;
use crate::render::Paced;
use crate::selfhosted::{self, SelfHostedModel, Served};
use crate::state::LoggedRequest;
use crate::SimState;

/// Settings of the SageMaker face (`[sagemaker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SageMakerConfig {
    /// The account the endpoints belong to, as error messages and ARNs name
    /// it; the simulator's `account_id` when absent.
    pub account_id: Option<String>,
    /// SageMaker's own time per invocation, before the container's first byte.
    pub overhead_ms: f64,
    /// The endpoints served.
    pub endpoints: Vec<EndpointConfig>,
}

/// One endpoint: a model of its own, or inference components each serving one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    /// The self-hosted model the endpoint serves (absent with inference components).
    #[serde(default)]
    pub model: Option<String>,
    /// Inference component name -> the self-hosted model it serves; requests
    /// must then name one in `X-Amzn-SageMaker-Inference-Component`.
    #[serde(default)]
    pub inference_components: BTreeMap<String, String>,
    /// The production variant reported in `x-Amzn-Invoked-Production-Variant`.
    #[serde(default = "all_traffic")]
    pub variant: String,
}

fn all_traffic() -> String {
    "AllTraffic".into()
}

fn endpoint(name: &str, model: &str) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        model: Some(model.into()),
        inference_components: BTreeMap::new(),
        variant: all_traffic(),
    }
}

impl Default for SageMakerConfig {
    fn default() -> Self {
        SageMakerConfig {
            account_id: None,
            overhead_ms: 15.0,
            endpoints: vec![
                endpoint(
                    "llama-3-1-8b-selfhosted",
                    "meta-llama/Llama-3.1-8B-Instruct",
                ),
                endpoint("qwen-2-5-72b-selfhosted", "qwen2.5-72b-instruct"),
                EndpointConfig {
                    name: "shared-selfhosted".into(),
                    model: None,
                    inference_components: BTreeMap::from([
                        (
                            "llama-3-1-8b-ic".into(),
                            "meta-llama/Llama-3.1-8B-Instruct".into(),
                        ),
                        ("qwen-2-5-72b-ic".into(), "qwen2.5-72b-instruct".into()),
                    ]),
                    variant: all_traffic(),
                },
            ],
        }
    }
}

impl SageMakerConfig {
    /// Checks names against SageMaker's patterns and models against `models`.
    pub fn validate(&self, models: &[SelfHostedModel]) -> Result<(), String> {
        if !(self.overhead_ms >= 0.0 && self.overhead_ms.is_finite()) {
            return Err(format!(
                "sagemaker.overhead_ms must be 0 or more, got {}",
                self.overhead_ms
            ));
        }
        let served = |model: &str, what: &str| {
            if selfhosted::model(models, model).is_some() {
                Ok(())
            } else {
                Err(format!(
                    "sagemaker {what} serves {model}, which is not in self_hosted"
                ))
            }
        };
        for (i, e) in self.endpoints.iter().enumerate() {
            if !wire::valid_endpoint_name(&e.name) {
                return Err(format!(
                    "sagemaker endpoint name {:?} must match ^[a-zA-Z0-9](-*[a-zA-Z0-9])* (at most 63 characters)",
                    e.name
                ));
            }
            if self.endpoints[..i].iter().any(|o| o.name == e.name) {
                return Err(format!("sagemaker endpoint {} is listed twice", e.name));
            }
            match (&e.model, e.inference_components.is_empty()) {
                (Some(model), true) => served(model, &format!("endpoint {}", e.name))?,
                (None, false) => {
                    for (component, model) in &e.inference_components {
                        if !wire::valid_endpoint_name(component) {
                            return Err(format!(
                                "sagemaker inference component name {component:?} is not valid"
                            ));
                        }
                        served(model, &format!("inference component {component}"))?;
                    }
                }
                _ => {
                    return Err(format!(
                        "sagemaker endpoint {} needs either `model` or `inference_components`",
                        e.name
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The invocation routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/endpoints/{endpoint}/invocations", post(invoke))
        .route(
            "/endpoints/{endpoint}/invocations-response-stream",
            post(invoke_stream),
        )
        .with_state(state)
}

/// An error answered in SageMaker's shape: a status, `x-amzn-ErrorType` and a
/// JSON body.
#[derive(Debug)]
struct SageMakerError {
    status: StatusCode,
    type_name: &'static str,
    body: Value,
}

impl SageMakerError {
    fn new(kind: SageMakerErrorType, message: impl Into<String>) -> Self {
        SageMakerError {
            status: StatusCode::from_u16(kind.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            type_name: kind.name(),
            body: json!({"message": message.into()}),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(SageMakerErrorType::Validation, message)
    }

    /// SageMaker's throttling answer: a 400 whose body has no message.
    fn throttled(message: Option<String>) -> Self {
        SageMakerError {
            body: json!({"message": message}),
            ..Self::new(SageMakerErrorType::Throttling, "")
        }
    }

    /// The container answered `status` with `original`: SageMaker's 424.
    fn model_error(config: &SimConfig, endpoint: &str, status: u16, original: &str) -> Self {
        let region = &config.region;
        let account = config.sagemaker_account();
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else {
            "aws"
        };
        let side = if (400..500).contains(&status) {
            "client"
        } else {
            "server"
        };
        let group = format!("/aws/sagemaker/Endpoints/{endpoint}");
        SageMakerError {
            body: json!({
                "ErrorCode": if side == "client" { "CLIENT_ERROR_FROM_MODEL" } else { "SERVER_ERROR_FROM_MODEL" },
                "LogStreamArn": format!("arn:{partition}:logs:{region}:{account}:log-group:{group}"),
                "Message": format!("Received {side} error ({status}) from primary with message \"{original}\". See https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logEventViewer:group={group} in account {account} for more information."),
                "OriginalMessage": original,
                "OriginalStatusCode": status,
            }),
            ..Self::new(SageMakerErrorType::ModelError, "")
        }
    }

    /// A container error in OpenAI's shape, wrapped.
    fn from_container(config: &SimConfig, endpoint: &str, e: &ChatError) -> Self {
        Self::model_error(config, endpoint, e.status, &e.body().to_string())
    }

    /// AWS's front-door answers (credentials, signatures).
    fn from_auth(e: SimError) -> Self {
        SageMakerError {
            status: e.status,
            type_name: e.type_name,
            body: json!({"message": e.message}),
        }
    }
}

impl IntoResponse for SageMakerError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.type_name));
        response
    }
}

/// What an error fault answers on this face; `None` for the timing faults.
fn fault_error(config: &SimConfig, endpoint: &str, rule: &FaultRule) -> Option<SageMakerError> {
    let message = rule.message.clone();
    let or = |default: &str| message.clone().unwrap_or_else(|| default.to_owned());
    Some(match rule.fault {
        FaultKind::Throttle => SageMakerError::throttled(message),
        FaultKind::Unavailable => SageMakerError::new(
            SageMakerErrorType::ServiceUnavailable,
            or("The service is unavailable. Try your call again."),
        ),
        FaultKind::Internal => SageMakerError::new(
            SageMakerErrorType::InternalFailure,
            or("An internal failure occurred. Try your call again."),
        ),
        FaultKind::ModelNotReady => SageMakerError::new(
            SageMakerErrorType::ModelNotReady,
            or("Model is not ready to serve inference requests. Try again later."),
        ),
        FaultKind::ModelTimeout => SageMakerError::model_error(
            config,
            endpoint,
            0,
            &or("Your invocation timed out while waiting for a response from container primary."),
        ),
        FaultKind::Validation => SageMakerError::validation(or(
            "The request was rejected by a scripted validation fault.",
        )),
        FaultKind::ModelError => {
            let original = chat::ChatError {
                status: 500,
                kind: "server_error",
                code: None,
                param: None,
                message: or("The model failed while generating the response."),
            };
            SageMakerError::from_container(config, endpoint, &original)
        }
        // job-failure rules are Bedrock's (validated), never taken here.
        FaultKind::SlowFirstByte
        | FaultKind::MidstreamError
        | FaultKind::ConnectionReset
        | FaultKind::JobFailure => return None,
    })
}

async fn invoke(state: State<Arc<SimState>>, path: Path<String>, request: Request) -> Response {
    handle(state, path, SageMakerOperation::InvokeEndpoint, request).await
}

async fn invoke_stream(
    state: State<Arc<SimState>>,
    path: Path<String>,
    request: Request,
) -> Response {
    handle(
        state,
        path,
        SageMakerOperation::InvokeEndpointWithResponseStream,
        request,
    )
    .await
}

async fn handle(
    State(state): State<Arc<SimState>>,
    Path(endpoint): Path<String>,
    op: SageMakerOperation,
    request: Request,
) -> Response {
    let id = bedrock_wire::new_request_id();
    let mut response = serve(&state, &id, &endpoint, op, request)
        .await
        .unwrap_or_else(|e| {
            state.stats.error(e.type_name);
            e.into_response()
        });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

/// The endpoint's model for this request, and the component that serves it.
fn resolve<'a>(
    state: &'a SimState,
    endpoint: &'a EndpointConfig,
    headers: &'a HeaderMap,
) -> Result<(&'a SelfHostedModel, Option<&'a str>), SageMakerError> {
    let component = headers
        .get(wire::INFERENCE_COMPONENT_HEADER)
        .and_then(|v| v.to_str().ok());
    let model_id = match (component, &endpoint.model) {
        (None, Some(model)) => model,
        (Some(_), Some(_)) => return Err(SageMakerError::validation(
            "Inference Component Name header is not allowed for endpoints to which you dont plan to deploy inference component. Please remove the Inference Component Name header and try again.",
        )),
        (None, None) => return Err(SageMakerError::validation(
            "Inference Component Name header is required for endpoints to which you plan to deploy inference components. Please include Inference Component Name header or consider using SageMaker models.",
        )),
        (Some(name), None) => endpoint.inference_components.get(name).ok_or_else(|| {
            SageMakerError::validation(format!(
                "Inference Component {name} not found for endpoint {} of account {}.",
                endpoint.name,
                state.config.sagemaker_account()
            ))
        })?,
    };
    let model = selfhosted::model(&state.config.self_hosted, model_id).ok_or_else(|| {
        SageMakerError::new(
            SageMakerErrorType::InternalFailure,
            "The endpoint's model is missing.",
        )
    })?;
    Ok((model, component))
}

async fn serve(
    state: &Arc<SimState>,
    request_id: &str,
    endpoint_name: &str,
    op: SageMakerOperation,
    request: Request,
) -> Result<Response, SageMakerError> {
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, wire::MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            SageMakerError::validation(format!(
                "1 validation error detected: Value at 'body' failed to satisfy constraint: Member must have length less than or equal to {}",
                wire::MAX_BODY_BYTES
            ))
        })?
        .to_bytes();
    let Some(authorization) = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(SageMakerError::from_auth(SimError::missing_authentication()));
    };
    // The whole URI: over HTTP/2 it holds the authority a signature may cover.
    let uri = parts.uri.to_string();
    crate::auth::sigv4_identity(
        &state.config,
        wire::SIGNING_NAME,
        authorization,
        parts.method.as_str(),
        &uri,
        &parts.headers,
        Some(&bytes),
    )
    .map_err(SageMakerError::from_auth)?;

    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
    state.log.push(
        LoggedRequest {
            seq: state.log.next_seq(),
            request_id: request_id.to_owned(),
            face: Face::SageMaker,
            operation: op.name(),
            model_id: endpoint_name.to_owned(),
            path: parts.uri.path().to_owned(),
            http_version: LoggedRequest::version_name(parts.version),
            headers: LoggedRequest::headers_without_secrets(&parts.headers),
            body: Value::Null,
            at_ms: u64::try_from(state.clock.now().as_millis()).unwrap_or(u64::MAX),
        },
        bytes.clone(),
    );
    state
        .stats
        .received_on(Face::SageMaker, op.name(), endpoint_name);

    if !wire::valid_endpoint_name(endpoint_name) {
        return Err(SageMakerError::validation(format!(
            "1 validation error detected: Value '{endpoint_name}' at 'endpointName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )));
    }
    if parts
        .headers
        .get(wire::CUSTOM_ATTRIBUTES_HEADER)
        .is_some_and(|v| v.len() > wire::MAX_CUSTOM_ATTRIBUTES_LEN)
    {
        return Err(SageMakerError::validation(format!(
            "1 validation error detected: Value at 'customAttributes' failed to satisfy constraint: Member must have length less than or equal to {}",
            wire::MAX_CUSTOM_ATTRIBUTES_LEN
        )));
    }
    let config = &state.config;
    let endpoint = config
        .sagemaker
        .endpoints
        .iter()
        .find(|e| e.name == endpoint_name)
        .ok_or_else(|| {
            SageMakerError::validation(format!(
                "Endpoint {endpoint_name} of account {} not found.",
                config.sagemaker_account()
            ))
        })?;
    let (model, component) = resolve(state, endpoint, &parts.headers)?;

    let names = [endpoint_name, component.unwrap_or(""), model.id.as_str()];
    let fault = selfhosted::take_fault(state, Face::SageMaker, &parts.headers, &names, op.name())
        .map_err(SageMakerError::validation)?;
    if let Some(rule) = &fault {
        if let Some(e) = fault_error(config, endpoint_name, rule) {
            if let Some(ms) = rule.ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            return Err(e);
        }
        if rule.fault == FaultKind::SlowFirstByte {
            tokio::time::sleep(Duration::from_millis(rule.ms.unwrap_or(0))).await;
        }
    }

    // The container: vLLM answers a body it cannot read with a 400 of its own.
    let body = parsed.map_err(|e| {
        let original = ChatError::invalid(
            format!("The request body is not valid JSON: {e}"),
            None,
            None,
        );
        SageMakerError::from_container(config, endpoint_name, &original)
    })?;
    let request = chat::read(&body, &model.limits())
        .map_err(|e| SageMakerError::from_container(config, endpoint_name, &e))?;
    let overhead = Duration::from_secs_f64(config.sagemaker.overhead_ms / 1000.0);
    let served = selfhosted::serve(state, model, &request, overhead);

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&endpoint.variant) {
        headers.insert(wire::INVOKED_VARIANT_HEADER, v);
    }
    let container_type = if request.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let kind = fault.as_ref().map(|f| f.fault);
    if kind == Some(FaultKind::ConnectionReset) && !op.is_stream() {
        let mut r = StatusCode::OK.into_response();
        r.extensions_mut().insert(ResetConnection);
        return Ok(r);
    }
    if kind == Some(FaultKind::MidstreamError) && !op.is_stream() {
        let rule = fault.as_ref();
        let original = ChatError {
            status: 500,
            kind: "server_error",
            code: None,
            param: None,
            message: rule
                .and_then(|f| f.message.clone())
                .unwrap_or_else(|| "The model stopped while generating the response.".into()),
        };
        return Err(SageMakerError::from_container(
            config,
            endpoint_name,
            &original,
        ));
    }

    let parts = container_output(&request, &served);
    if !op.is_stream() {
        let generation = served.generation();
        if !generation.is_zero() {
            tokio::time::sleep(generation).await;
        }
        headers.insert("content-type", HeaderValue::from_static(container_type));
        let whole: Vec<u8> = parts.into_iter().flat_map(|(b, _)| b.to_vec()).collect();
        return Ok((StatusCode::OK, headers, whole).into_response());
    }

    headers.insert(
        "content-type",
        HeaderValue::from_static(eventstream::CONTENT_TYPE),
    );
    headers.insert(
        wire::STREAM_CONTENT_TYPE_HEADER,
        HeaderValue::from_static(container_type),
    );
    // A container that does not stream flushes its whole answer at the end.
    let timing = if request.stream {
        served.timing
    } else {
        Timing {
            ttft: served.generation(),
            per_token: Duration::ZERO,
        }
    };
    let items = payload_parts(parts, served.meta.seed);
    let ending = match fault {
        Some(f) if f.fault == FaultKind::MidstreamError => {
            let exception = f
                .exception
                .as_deref()
                .and_then(StreamException::parse)
                .unwrap_or(StreamException::ModelStreamError);
            let (default, code) = match exception {
                StreamException::ModelStreamError => (
                    "The connection between SageMaker and the model container was closed.",
                    Some("StreamBroken"),
                ),
                StreamException::InternalStreamFailure => (
                    "An internal failure occurred while streaming the response.",
                    None,
                ),
            };
            Ending::Exception {
                after: f.after_events.unwrap_or(2) as usize,
                frame: wire::exception_frame(
                    exception,
                    f.message.as_deref().unwrap_or(default),
                    code,
                ),
            }
        }
        Some(f) if f.fault == FaultKind::ConnectionReset => Ending::Reset {
            after: f.after_events.unwrap_or(2) as usize,
        },
        _ => Ending::Complete,
    };
    Ok((
        StatusCode::OK,
        headers,
        paced_body(items, timing, ending, state.clone()),
    )
        .into_response())
}

/// What the container writes, in the pieces it flushes, each with the output
/// tokens generated before it: SSE events ending with `data: [DONE]` when the
/// payload asked to stream, else the completion JSON in one piece.
fn container_output(request: &chat::ChatRequest, served: &Served) -> Vec<(Bytes, u32)> {
    if !request.stream {
        let body = chat::completion(&served.answer, request, &served.meta);
        return vec![(Bytes::from(body.to_string()), served.answer.output_tokens)];
    }
    let mut out: Vec<(Bytes, u32)> = chat::chunks(&served.answer, request, &served.meta)
        .into_iter()
        .map(|(chunk, tokens)| (sse::data_event(&chunk.to_string()), tokens))
        .collect();
    out.push((sse::data_event(sse::DONE), 0));
    out
}

/// The container's pieces as `PayloadPart` frames, cut as SageMaker relays
/// them: mostly one piece a part, but now and then a piece split across two
/// parts or two pieces in one (seeded, so a stream is reproducible).
fn payload_parts(pieces: Vec<(Bytes, u32)>, seed: u64) -> Vec<Paced> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5a6e);
    let mut out = Vec::with_capacity(pieces.len() + 4);
    let mut pieces = pieces.into_iter().peekable();
    while let Some((bytes, tokens)) = pieces.next() {
        let roll = rng.u8(..100);
        if roll < 20 && bytes.len() > 1 {
            let at = rng.usize(1..bytes.len());
            out.push(Paced {
                frame: wire::payload_part_frame(bytes.slice(..at)),
                tokens,
            });
            out.push(Paced {
                frame: wire::payload_part_frame(bytes.slice(at..)),
                tokens: 0,
            });
        } else if roll < 35 && pieces.peek().is_some() {
            let (next, more) = pieces.next().unwrap_or_default();
            let mut joined = Vec::with_capacity(bytes.len() + next.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&next);
            out.push(Paced {
                frame: wire::payload_part_frame(joined),
                tokens: tokens + more,
            });
        } else {
            out.push(Paced {
                frame: wire::payload_part_frame(bytes),
                tokens,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock_wire::eventstream::{decode, FrameSplitter};

    #[test]
    fn the_default_endpoints_are_valid_and_bad_ones_are_named() {
        let models = selfhosted::default_models();
        assert!(SageMakerConfig::default().validate(&models).is_ok());
        let mut c = SageMakerConfig::default();
        c.endpoints[0].name = "bad_name".into();
        assert!(c.validate(&models).unwrap_err().contains("bad_name"));
        let mut c = SageMakerConfig::default();
        c.endpoints[0]
            .inference_components
            .insert("ic".into(), "qwen2.5-72b-instruct".into());
        assert!(c.validate(&models).unwrap_err().contains("either"));
    }

    #[test]
    fn model_errors_wrap_the_container_answer() {
        let config = SimConfig::default();
        let e = SageMakerError::model_error(&config, "ep", 400, "{\"error\":{}}");
        assert_eq!(e.status.as_u16(), 424);
        assert_eq!(e.type_name, "ModelError");
        let keys: Vec<&str> = e
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "ErrorCode",
                "LogStreamArn",
                "Message",
                "OriginalMessage",
                "OriginalStatusCode"
            ]
        );
        assert_eq!(e.body["ErrorCode"], "CLIENT_ERROR_FROM_MODEL");
        assert_eq!(e.body["OriginalStatusCode"], 400);
        assert!(e.body["Message"]
            .as_str()
            .unwrap()
            .contains("Received client error (400) from primary"));
        let t = SageMakerError::throttled(None);
        assert_eq!(
            (t.status.as_u16(), t.type_name),
            (400, "ThrottlingException")
        );
        assert_eq!(t.body, json!({"message": null}));
    }

    #[test]
    fn payload_parts_carry_every_byte_in_order() {
        let pieces: Vec<(Bytes, u32)> = (0..40)
            .map(|i| (sse::data_event(&format!("{{\"i\":{i}}}")), 1))
            .collect();
        let expected: Vec<u8> = pieces.iter().flat_map(|(b, _)| b.to_vec()).collect();
        let items = payload_parts(pieces, 42);
        assert_ne!(items.len(), 40, "some events split or joined");
        let mut splitter = FrameSplitter::new();
        let mut bytes = Vec::new();
        for item in &items {
            splitter.push(&item.frame);
            let frame = decode(splitter.next_frame().unwrap().unwrap()).unwrap();
            bytes.extend_from_slice(wire::payload_part(&frame).unwrap());
        }
        assert_eq!(bytes, expected);
        assert_eq!(items.iter().map(|i| i.tokens).sum::<u32>(), 40);
    }
}
