//! OpenAI Chat Completions, the shape both ends of the proxy speak besides
//! Bedrock's: the OpenAI ingress takes it from clients, and the `openai` and
//! `sagemaker` upstreams are sent it. This leaf holds what both directions
//! share (finish reasons and stop reasons, usage objects, error kinds) and the
//! egress translation: a Converse request as a chat request ([`request`]), a
//! chat answer as a Converse body ([`response`]), chat stream chunks as
//! ConverseStream events ([`ChunkReader`]). Pure functions over JSON: no I/O,
//! and no stage (the ingress and the upstream client both import it).

mod answer;
mod request;

pub use answer::{estimate_input, response, ChunkReader};
pub use request::{finish_request, request, ChatRequest};

use bedrock_wire::converse::Usage;
use serde_json::{json, Value};

use crate::error::{ErrorKind, ProxyError, Side};

/// Bedrock's stop reason as an OpenAI `finish_reason`.
pub fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// An OpenAI `finish_reason` as Bedrock's stop reason. `matched_stop`: the
/// server named the stop sequence that ended the text (vLLM's `stop_reason`);
/// `tool_calls`: the answer calls tools (OpenAI says `stop` for a call the
/// request's `tool_choice` forced; Converse clients look for `tool_use`).
pub fn stop_reason(finish: Option<&str>, matched_stop: bool, tool_calls: bool) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("content_filter") => "content_filtered",
        _ if tool_calls => "tool_use",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("stop") if matched_stop => "stop_sequence",
        _ => "end_turn",
    }
}

/// Converse usage as OpenAI usage: prompt tokens include cached ones.
pub fn usage(u: &Usage) -> Value {
    let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cache_read_input_tokens },
    })
}

/// OpenAI usage as Converse usage: the prompt tokens a server served from its
/// prefix cache (`prompt_tokens_details.cached_tokens`) are cache reads, the
/// rest plain input. `None` when `v` is not a usage object.
pub fn usage_from(v: &Value) -> Option<Usage> {
    let prompt = v.get("prompt_tokens")?.as_u64()?;
    let output = v
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let cached = v["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .min(prompt);
    Some(Usage {
        input_tokens: prompt - cached,
        output_tokens: output,
        total_tokens: prompt + output,
        cache_read_input_tokens: cached,
        cache_write_input_tokens: 0,
        cache_write_1h_input_tokens: 0,
    })
}

/// The kind of an error an OpenAI-compatible server reported: by its HTTP
/// status when it answered with one, else (an error event in a stream) by the
/// error object's `type` and `code`.
pub fn error_kind(status: Option<u16>, error: &Value) -> ErrorKind {
    let code = error["code"].as_str().unwrap_or("");
    let kind = error["type"].as_str().unwrap_or("");
    match status {
        Some(429) if code == "insufficient_quota" || kind == "insufficient_quota" => {
            ErrorKind::QuotaExceeded
        }
        Some(429) => ErrorKind::Throttled,
        Some(401 | 403) => ErrorKind::AccessDenied,
        Some(404) => ErrorKind::NotFound,
        Some(408 | 504) => ErrorKind::Timeout,
        Some(503) if code == "model_not_ready" => ErrorKind::ModelNotReady,
        Some(502 | 503) => ErrorKind::Unavailable,
        Some(413) => ErrorKind::TooLarge,
        Some(400..=499) => ErrorKind::Validation,
        Some(_) => ErrorKind::Internal,
        None => match (kind, code) {
            ("rate_limit_error", _) | (_, "rate_limit_exceeded") => ErrorKind::Throttled,
            (_, "timeout") | ("timeout_error", _) => ErrorKind::Timeout,
            (_, "model_not_ready") => ErrorKind::ModelNotReady,
            ("invalid_request_error", _) => ErrorKind::Validation,
            _ => ErrorKind::ModelError,
        },
    }
}

/// The message of an OpenAI error body (`{"error": {"message"}}`), or of the
/// other shapes servers use (`{"message"}`, `{"detail"}`, `{"error": "..."}`).
pub fn error_message(body: &Value) -> Option<String> {
    let e = &body["error"];
    e["message"]
        .as_str()
        .or_else(|| e.as_str())
        .or_else(|| body["message"].as_str())
        .or_else(|| body["detail"].as_str())
        .map(str::to_owned)
}

/// An error event in a chat stream (`data: {"error": {...}}`), as the error
/// that ends the answer.
pub fn stream_error(upstream: &str, error: &Value) -> ProxyError {
    let message = error["message"]
        .as_str()
        .or_else(|| error.as_str())
        .unwrap_or("the server ended the stream with an error");
    ProxyError::new(
        error_kind(None, error),
        Side::Upstream,
        format!("upstream {upstream} failed in the middle of the answer: {message}"),
    )
}

#[cfg(test)]
mod tests;
