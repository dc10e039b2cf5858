//! The OpenAI-compatible face, a stand-in for vLLM, SGLang, Ollama or a regional
//! provider's compatible mode: `POST /v1/chat/completions` (JSON or SSE
//! `chat.completion.chunk` events ending with `data: [DONE]`) and
//! `GET /v1/models`, on the simulator's listener. The bearer key is checked when
//! one is configured; errors come in OpenAI's shape; answers are timed by each
//! self-hosted model's latency profile. Each request goes: key -> body -> request
//! log -> model -> validation -> scripted faults -> answer -> response.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bedrock_wire::serve::ResetConnection;
use bedrock_wire::sse;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{paced_body, Ending};
use crate::chat::{self, ChatError, ChatRequest};
use crate::face::{Face, CHAT_COMPLETIONS};
use crate::faults::{FaultKind, FaultRule};
use crate::render::Paced;
use crate::selfhosted::{self, Served};
use crate::state::LoggedRequest;
use crate::SimState;

/// Settings of the OpenAI-compatible face (`[openai]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// When set, requests must carry `Authorization: Bearer <api_key>` (401
    /// otherwise). When absent any key, or none, is accepted, as vLLM without
    /// `--api-key` does.
    pub api_key: Option<String>,
}

/// The `/v1/*` routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(wrong_method),
        )
        .route("/v1/models", get(list_models).fallback(wrong_method))
        .route("/v1/models/{*id}", get(get_model).fallback(wrong_method))
        .route("/v1/{*rest}", any(unknown_path))
        .with_state(state)
}

/// An error answered in OpenAI's shape.
struct OpenAiError(ChatError);

impl From<ChatError> for OpenAiError {
    fn from(e: ChatError) -> Self {
        OpenAiError(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &self.0.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

fn error(
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    message: impl Into<String>,
) -> ChatError {
    ChatError {
        status,
        kind,
        code,
        param: None,
        message: message.into(),
    }
}

/// Checks the bearer key when one is configured.
fn check_key(config: &OpenAiConfig, headers: &HeaderMap) -> Result<(), ChatError> {
    let Some(expected) = &config.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match given {
        None => Err(error(
            401,
            "invalid_request_error",
            None,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )),
        Some(key) if key == expected => Ok(()),
        Some(key) => {
            let shown: String = key.chars().take(3).collect();
            let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
            Err(error(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                format!("Incorrect API key provided: {shown}***{tail}."),
            ))
        }
    }
}

fn model_not_found(name: &str) -> ChatError {
    error(
        404,
        "invalid_request_error",
        Some("model_not_found"),
        format!("The model `{name}` does not exist or you do not have access to it."),
    )
}

/// What an error fault answers on this face; `None` for the timing faults.
fn fault_error(rule: &FaultRule) -> Option<ChatError> {
    let (status, kind, code, default) = match rule.fault {
        FaultKind::Throttle => (
            429,
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests. Please try again later.",
        ),
        FaultKind::Unavailable => (
            503,
            "server_error",
            None,
            "The server is overloaded or not ready yet.",
        ),
        FaultKind::Internal => (
            500,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        FaultKind::ModelNotReady => (
            503,
            "server_error",
            Some("model_not_ready"),
            "The model is still loading. Please try again later.",
        ),
        FaultKind::ModelTimeout => (
            504,
            "server_error",
            Some("timeout"),
            "The model timed out while generating the response.",
        ),
        FaultKind::Validation => (
            400,
            "invalid_request_error",
            None,
            "The request was rejected by a scripted validation fault.",
        ),
        FaultKind::ModelError => (
            500,
            "server_error",
            None,
            "The model failed while generating the response.",
        ),
        // job-failure rules are Bedrock's (validated), never taken here.
        FaultKind::SlowFirstByte
        | FaultKind::MidstreamError
        | FaultKind::ConnectionReset
        | FaultKind::JobFailure => return None,
    };
    Some(error(
        status,
        kind,
        code,
        rule.message.clone().unwrap_or_else(|| default.to_owned()),
    ))
}

async fn chat_completions(State(state): State<Arc<SimState>>, request: Request) -> Response {
    let id = format!("req_{:032x}", fastrand::u128(..));
    let mut response = serve_chat(&state, &id, request).await.unwrap_or_else(|e| {
        state.stats.error(e.label());
        OpenAiError(e).into_response()
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn serve_chat(
    state: &Arc<SimState>,
    request_id: &str,
    request: Request,
) -> Result<Response, ChatError> {
    let (parts, body) = request.into_parts();
    check_key(&state.config.openai, &parts.headers)?;
    let max = state.config.max_body_bytes;
    let bytes = Limited::new(body, max)
        .collect()
        .await
        .map_err(|_| {
            error(
                413,
                "invalid_request_error",
                None,
                format!("The request body is larger than the limit of {max} bytes."),
            )
        })?
        .to_bytes();
    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
    let name = parsed
        .as_ref()
        .ok()
        .and_then(|v| v["model"].as_str())
        .unwrap_or("")
        .to_owned();
    state.log.push(
        LoggedRequest {
            seq: state.log.next_seq(),
            request_id: request_id.to_owned(),
            face: Face::OpenAi,
            operation: CHAT_COMPLETIONS,
            model_id: name.clone(),
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
        .received_on(Face::OpenAi, CHAT_COMPLETIONS, &name);

    let body = parsed.map_err(|_| {
        ChatError::invalid(
            "We could not parse the JSON body of your request. The API expects a JSON payload.",
            None,
            None,
        )
    })?;
    match body.get("model") {
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => {
            return Err(ChatError::invalid(
                "You must provide a model parameter.",
                Some("model"),
                Some("missing_required_parameter"),
            ))
        }
        Some(_) => {
            return Err(ChatError::invalid(
                "Invalid type for 'model': expected a string.",
                Some("model"),
                Some("invalid_type"),
            ))
        }
    }
    let model = selfhosted::model(&state.config.self_hosted, &name)
        .ok_or_else(|| model_not_found(&name))?;
    let chat = chat::read(&body, &model.limits())?;

    let fault = selfhosted::take_fault(
        state,
        Face::OpenAi,
        &parts.headers,
        &[&name],
        CHAT_COMPLETIONS,
    )
    .map_err(|m| ChatError::invalid(m, None, None))?;
    if let Some(rule) = &fault {
        if let Some(e) = fault_error(rule) {
            if let Some(ms) = rule.ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            return Err(e);
        }
        if rule.fault == FaultKind::SlowFirstByte {
            tokio::time::sleep(Duration::from_millis(rule.ms.unwrap_or(0))).await;
        }
    }
    let served = selfhosted::serve(state, model, &chat, Duration::ZERO);
    respond(state, &chat, served, fault).await
}

async fn respond(
    state: &Arc<SimState>,
    chat: &ChatRequest,
    served: Served,
    fault: Option<FaultRule>,
) -> Result<Response, ChatError> {
    let kind = fault.as_ref().map(|f| f.fault);
    if !chat.stream {
        match kind {
            Some(FaultKind::ConnectionReset) => {
                let mut r = StatusCode::OK.into_response();
                r.extensions_mut().insert(ResetConnection);
                return Ok(r);
            }
            Some(FaultKind::MidstreamError) => {
                return Err(error(
                    500,
                    "server_error",
                    None,
                    fault.and_then(|f| f.message).unwrap_or_else(|| {
                        "The model stopped while generating the response.".into()
                    }),
                ))
            }
            _ => {}
        }
        let generation = served.generation();
        if !generation.is_zero() {
            tokio::time::sleep(generation).await;
        }
        let body = chat::completion(&served.answer, chat, &served.meta);
        return Ok(json_response(StatusCode::OK, &body));
    }

    let mut items: Vec<Paced> = chat::chunks(&served.answer, chat, &served.meta)
        .into_iter()
        .map(|(chunk, tokens)| Paced {
            frame: sse::data_event(&chunk.to_string()),
            tokens,
        })
        .collect();
    items.push(Paced {
        frame: sse::data_event(sse::DONE),
        tokens: 0,
    });
    let ending = match fault {
        Some(f) if f.fault == FaultKind::MidstreamError => {
            let e = error(
                500,
                "server_error",
                None,
                f.message
                    .unwrap_or_else(|| "The model stopped while generating the response.".into()),
            );
            Ending::Exception {
                after: f.after_events.unwrap_or(2) as usize,
                frame: sse::data_event(&e.body().to_string()),
            }
        }
        Some(f) if f.fault == FaultKind::ConnectionReset => Ending::Reset {
            after: f.after_events.unwrap_or(2) as usize,
        },
        _ => Ending::Complete,
    };
    Ok((
        StatusCode::OK,
        [
            (
                "content-type",
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            ),
            ("cache-control", HeaderValue::from_static("no-cache")),
        ],
        paced_body(items, served.timing, ending, state.clone()),
    )
        .into_response())
}

fn model_json(model: &selfhosted::SelfHostedModel) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": 1_700_000_000u64,
        "owned_by": "bedrock-sim",
        "max_model_len": model.context_tokens,
    })
}

fn checked(
    state: &SimState,
    headers: &HeaderMap,
    answer: impl FnOnce() -> Result<Value, ChatError>,
) -> Response {
    match check_key(&state.config.openai, headers).and_then(|()| answer()) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            state.stats.error(e.label());
            OpenAiError(e).into_response()
        }
    }
}

async fn list_models(State(state): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    checked(&state, &headers, || {
        let data: Vec<Value> = state.config.self_hosted.iter().map(model_json).collect();
        Ok(json!({"object": "list", "data": data}))
    })
}

async fn get_model(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    checked(&state, &headers, || {
        selfhosted::model(&state.config.self_hosted, &id)
            .map(model_json)
            .ok_or_else(|| model_not_found(&id))
    })
}

async fn unknown_path(method: Method, uri: Uri) -> Response {
    OpenAiError(error(
        404,
        "invalid_request_error",
        None,
        format!("Invalid URL ({method} {})", uri.path()),
    ))
    .into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    OpenAiError(error(
        405,
        "invalid_request_error",
        None,
        format!("Method Not Allowed ({method} {})", uri.path()),
    ))
    .into_response()
}
