//! The Anthropic-compatible API: `POST /v1/messages` (JSON and server-sent
//! events) and `POST /v1/messages/count_tokens` (Bedrock's CountTokens), over
//! the same pipeline as Bedrock's own paths. `model` is a route alias; keys are
//! the same API keys (`x-api-key`); `cache_control` markers become Bedrock
//! cache points. Errors are Anthropic error objects.

pub mod translate;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bedrock_wire::converse::ConverseEvent;
use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use super::{
    converse_call, converse_json, handled, json_answer, parse_json, receive, route_translated, run,
    sse_answer, Finish,
};
use crate::answer::Answer;
use crate::error::{ErrorKind, ProxyError};
use crate::limits::RateHeaders;
use crate::state::AppState;
use crate::stream::SseWriter;
use bedrock_wire::operation::Operation;
use translate::{EventWriter, Purpose};

/// The Anthropic routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

/// Anthropic's error status and type for a proxy error.
fn status_and_type(e: &ProxyError) -> (u16, &'static str) {
    match e.kind {
        ErrorKind::TooLarge => (413, "request_too_large"),
        ErrorKind::Validation | ErrorKind::Unsupported => (400, "invalid_request_error"),
        ErrorKind::Unauthenticated => (401, "authentication_error"),
        ErrorKind::AccessDenied => (403, "permission_error"),
        ErrorKind::NotFound => (404, "not_found_error"),
        ErrorKind::Throttled | ErrorKind::QuotaExceeded | ErrorKind::BudgetExceeded => {
            (429, "rate_limit_error")
        }
        ErrorKind::Unavailable | ErrorKind::ModelNotReady => (529, "overloaded_error"),
        ErrorKind::RequestTimeout => (408, "timeout_error"),
        ErrorKind::Timeout | ErrorKind::ModelError | ErrorKind::Internal => (500, "api_error"),
    }
}

/// Anthropic's error object for a proxy error.
pub fn error_response(e: &ProxyError, request_id: &str) -> Response {
    let (status, kind) = status_and_type(e);
    let body = json!({ "type": "error", "error": { "type": kind, "message": e.message } });
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

async fn messages(State(state): State<AppState>, request: Request) -> Response {
    handle(state, request, Purpose::Messages, "messages").await
}

async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    handle(
        state,
        request,
        Purpose::CountTokens,
        "messages.count_tokens",
    )
    .await
}

async fn handle(
    state: AppState,
    request: Request,
    purpose: Purpose,
    name: &'static str,
) -> Response {
    let mut finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    finish.rate_headers = RateHeaders::Anthropic;
    handled(finish, request, name, error_response, async |f, r| {
        serve(&state, f, r, purpose).await
    })
    .await
}

struct AnthropicEvents(EventWriter);

impl SseWriter for AnthropicEvents {
    fn event(&mut self, event: &ConverseEvent) -> Vec<Bytes> {
        self.0.event(event)
    }

    fn failed(&mut self, error: &ProxyError) -> Bytes {
        EventWriter::error(status_and_type(error).1, &error.message)
    }

    fn done(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

async fn serve(
    state: &AppState,
    finish: &mut Finish,
    request: Request,
    purpose: Purpose,
) -> Result<Response, ProxyError> {
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let (body, principal) = receive(state, &rt, &parts, body, finish).await?;
    if !parts.headers.contains_key("anthropic-version") {
        return Err(ProxyError::validation(
            "anthropic-version: header is required",
        ));
    }
    let json = parse_json(&body, rt.config.limits.max_json_depth)?;
    let model = json
        .get("model")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ProxyError::validation("model: Field required").with_param("model"))?;
    let (routed, features) = route_translated(&rt, &principal, finish, model, |model| {
        format!("model: {model}")
    })?;
    let t = translate::request(&json, &features, purpose)?;
    let op = match (purpose, t.stream) {
        (Purpose::CountTokens, _) => Operation::CountTokens,
        (Purpose::Messages, true) => Operation::ConverseStream,
        (Purpose::Messages, false) => Operation::Converse,
    };
    let call = converse_call(principal, routed, finish, t.converse, op);
    let id = format!("msg_bdrk_{}", finish.request_id.replace('-', ""));
    Ok(match run(state, &rt, call, &parts.headers, finish).await? {
        Answer::Whole { body, summary, .. } => {
            let converse = converse_json(&body)?;
            let answer = match purpose {
                Purpose::CountTokens => translate::count_response(&converse),
                Purpose::Messages => {
                    translate::response(&converse, &t.model, &id, &t.stop_sequences)
                }
            };
            json_answer(finish, &answer, &summary)
        }
        Answer::Stream { frames, .. } => sse_answer(
            finish,
            frames,
            AnthropicEvents(EventWriter::new(id, t.model.clone(), t.stop_sequences)),
        ),
    })
}
