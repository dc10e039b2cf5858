//! The OpenAI-compatible API: `POST /v1/chat/completions` (JSON and server-sent
//! events) and `GET /v1/models`, over the same pipeline as Bedrock's own paths.
//! `model` is a route alias; keys are the same API keys (`Authorization:
//! Bearer`). Errors are OpenAI error objects.

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
use tracing::Instrument;

use super::{
    converse_json, failed, json_answer, parse_json, receive, request_span, run, sse_answer,
    translated_call, Finish,
};
use crate::answer::Answer;
use crate::error::{ErrorKind, ProxyError};
use crate::state::AppState;
use crate::stream::SseWriter;
use translate::ChunkWriter;

/// The OpenAI routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
}

/// OpenAI's error object for a proxy error, with its status.
pub fn error_response(e: &ProxyError, request_id: &str) -> Response {
    let (status, kind, code) = match e.kind {
        ErrorKind::Validation | ErrorKind::Unsupported | ErrorKind::TooLarge => {
            (400, "invalid_request_error", None)
        }
        ErrorKind::Unauthenticated => (401, "invalid_request_error", Some("invalid_api_key")),
        ErrorKind::AccessDenied => (403, "permission_error", None),
        ErrorKind::NotFound => (404, "invalid_request_error", Some("model_not_found")),
        ErrorKind::Throttled => (429, "rate_limit_error", Some("rate_limit_exceeded")),
        ErrorKind::QuotaExceeded => (429, "insufficient_quota", Some("insufficient_quota")),
        ErrorKind::Timeout => (408, "timeout_error", Some("timeout")),
        ErrorKind::Unavailable | ErrorKind::ModelNotReady => {
            (503, "service_unavailable", Some("service_unavailable"))
        }
        ErrorKind::ModelError | ErrorKind::Internal => (500, "server_error", None),
    };
    let body =
        json!({ "error": { "message": e.message, "type": kind, "param": null, "code": code } });
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
    let mut finish = Finish::new(bedrock_wire::new_request_id(), Instant::now());
    let span = request_span(&finish.request_id, "chat.completions");
    match serve(&state, &mut finish, request).instrument(span).await {
        Ok(response) => response,
        Err(e) => failed(&finish, &e, error_response),
    }
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
    json!({ "error": { "message": e.message, "type": response_kind, "param": null, "code": null } })
}

async fn serve(
    state: &AppState,
    finish: &mut Finish,
    request: Request,
) -> Result<Response, ProxyError> {
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let (body, principal) = receive(&rt, &parts, body, finish).await?;
    let json = parse_json(&body, rt.config.limits.max_json_depth)?;
    let t = translate::request(&json)?;
    let call = translated_call(
        &rt,
        principal,
        finish,
        &t.model,
        t.converse,
        t.stream,
        |model| format!("The model `{model}` does not exist or you do not have access to it."),
    )?;
    let id = format!("chatcmpl-{}", finish.request_id);
    let created = now_secs();
    Ok(match run(state, &rt, call, &parts.headers, finish).await? {
        Answer::Whole { body, summary, .. } => {
            let converse = converse_json(&body)?;
            json_answer(
                finish,
                &translate::response(&converse, &t.model, &id, created),
                &summary,
            )
        }
        Answer::Stream { frames, .. } => sse_answer(
            finish,
            frames,
            OpenAiChunks(ChunkWriter::new(
                id,
                t.model.clone(),
                created,
                t.include_usage,
            )),
        ),
    })
}

/// `GET /v1/models`: the routes the caller's key may use, by alias and name.
async fn models(State(state): State<AppState>, request: Request) -> Response {
    let mut finish = Finish::new(bedrock_wire::new_request_id(), Instant::now());
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let principal = match receive(&rt, &parts, body, &mut finish).await {
        Ok((_, p)) => p,
        Err(e) => return error_response(&e, &finish.request_id),
    };
    let mut data = Vec::new();
    for r in rt
        .routes
        .routes()
        .iter()
        .filter(|r| principal.may_use(&r.name))
    {
        let mut ids: Vec<&str> = r.config.aliases.iter().map(String::as_str).collect();
        if !ids.contains(&&*r.name) {
            ids.insert(0, &r.name);
        }
        for id in ids {
            data.push(
                json!({ "id": id, "object": "model", "created": 0, "owned_by": "bedrock-proxy" }),
            );
        }
    }
    Json(json!({ "object": "list", "data": data })).into_response()
}
