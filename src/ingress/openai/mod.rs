//! The OpenAI-compatible API: `POST /v1/chat/completions` (JSON and server-sent
//! events), `POST /v1/embeddings` ([`embeddings`]) and the Responses API
//! ([`responses`]: `POST /v1/responses` and the stored responses), over the
//! same pipeline as Bedrock's own paths. `model` is a route alias; keys are
//! the same API keys (`Authorization: Bearer`). Errors are OpenAI error
//! objects, with `param` naming the field they are about.
//! (`/v1/models` is [`super::models`], shared with the Anthropic API.)

pub mod embeddings;
pub mod responses;
pub mod translate;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bedrock_wire::converse::ConverseEvent;
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use super::{
    converse_call, converse_json, handled, json_answer, parse_json, receive, route_translated, run,
    sse_answer, Finish,
};
use crate::answer::Answer;
use crate::error::{ErrorKind, ProxyError};
use crate::state::AppState;
use crate::stream::SseWriter;
use bedrock_wire::operation::Operation;
use translate::ChunkWriter;

/// The response header that says how structured output was produced.
pub const STRUCTURED_OUTPUT_HEADER: &str = "x-proxy-structured-output";

/// The OpenAI routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::stored::retrieve).delete(responses::stored::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::stored::input_items),
        )
}

/// OpenAI's error object for a proxy error, with its status.
pub fn error_response(e: &ProxyError, request_id: &str) -> Response {
    error_with_code(e, request_id, None)
}

/// [`error_response`] with `code` in place of the one the error's kind has.
pub fn error_with_code(e: &ProxyError, request_id: &str, code: Option<&str>) -> Response {
    let (status, kind, default_code) = match e.kind {
        ErrorKind::Validation | ErrorKind::Unsupported | ErrorKind::TooLarge => {
            (400, "invalid_request_error", None)
        }
        ErrorKind::Unauthenticated => (401, "invalid_request_error", Some("invalid_api_key")),
        ErrorKind::AccessDenied => (403, "permission_error", None),
        // A model no route serves is about `model`; an unknown path is not.
        ErrorKind::NotFound if e.param.as_deref() == Some("model") => {
            (404, "invalid_request_error", Some("model_not_found"))
        }
        ErrorKind::NotFound if e.param.as_deref() == Some("previous_response_id") => (
            404,
            "invalid_request_error",
            Some("previous_response_not_found"),
        ),
        ErrorKind::NotFound => (404, "invalid_request_error", None),
        ErrorKind::Throttled => (429, "rate_limit_error", Some("rate_limit_exceeded")),
        ErrorKind::QuotaExceeded | ErrorKind::BudgetExceeded => {
            (429, "insufficient_quota", Some("insufficient_quota"))
        }
        ErrorKind::Timeout | ErrorKind::RequestTimeout => (408, "timeout_error", Some("timeout")),
        ErrorKind::Unavailable | ErrorKind::ModelNotReady => {
            (503, "service_unavailable", Some("service_unavailable"))
        }
        ErrorKind::ModelError | ErrorKind::Internal => (500, "server_error", None),
    };
    let code = code.or(default_code);
    let body =
        json!({ "error": { "message": e.message, "type": kind, "param": e.param, "code": code } });
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn chat(State(state): State<AppState>, request: Request) -> Response {
    let finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    handled(
        finish,
        request,
        "chat.completions",
        error_response,
        async |f, r| serve(&state, f, r).await,
    )
    .await
}

struct OpenAiChunks(ChunkWriter);

impl SseWriter for OpenAiChunks {
    fn event(&mut self, event: &ConverseEvent) -> Vec<Bytes> {
        self.0.event(event)
    }

    fn failed(&mut self, error: &ProxyError) -> Bytes {
        let body = error_body(error);
        Bytes::from(format!("data: {body}\n\n"))
    }

    fn done(&mut self) -> Vec<Bytes> {
        vec![self.0.done()]
    }
}

fn error_body(e: &ProxyError) -> Value {
    let response_kind = match e.kind {
        ErrorKind::Throttled => "rate_limit_error",
        ErrorKind::Validation | ErrorKind::Unsupported | ErrorKind::TooLarge => {
            "invalid_request_error"
        }
        _ => "server_error",
    };
    json!({ "error": { "message": e.message, "type": response_kind, "param": e.param, "code": null } })
}

async fn serve(
    state: &AppState,
    finish: &mut Finish,
    request: Request,
) -> Result<Response, ProxyError> {
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let (body, principal) = receive(state, &rt, &parts, body, finish).await?;
    let json = parse_json(&body, rt.config.limits.max_json_depth)?;
    let model = translate::model(&json)?;
    let (routed, features) = route_translated(&rt, &principal, finish, &model, |model| {
        format!("The model `{model}` does not exist or you do not have access to it.")
    })?;
    let t = translate::request(&json, &features)?;
    let op = if t.stream {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    let call = converse_call(principal, routed, finish, t.converse, op);
    let id = format!("chatcmpl-{}", finish.request_id);
    let created = now_secs();
    let structured = t.structured.as_ref();
    let mut response = match run(state, &rt, call, &parts.headers, finish).await? {
        Answer::Whole { body, summary, .. } => {
            let converse = converse_json(&body)?;
            json_answer(
                finish,
                &translate::response(&converse, &t.model, &id, created, structured),
                &summary,
            )
        }
        Answer::Stream { frames, .. } => sse_answer(
            finish,
            frames,
            OpenAiChunks(
                ChunkWriter::new(id, t.model.clone(), created, t.include_usage)
                    .structured(structured),
            ),
        ),
    };
    if let Some(s) = structured {
        response.headers_mut().insert(
            STRUCTURED_OUTPUT_HEADER,
            HeaderValue::from_static(s.label()),
        );
    }
    Ok(response)
}
