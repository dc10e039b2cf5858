//! `POST /v1/responses`: OpenAI's Responses API as another face of the Chat
//! Completions translator. A Responses request is rewritten as the Chat
//! Completions request that means the same thing, which
//! [`super::translate::request`] turns into Converse (so both APIs, and a native
//! Converse client, share response-cache entries and every mapping: structured
//! output, reasoning effort, tools, documents); the Chat Completions answer is
//! then rewritten as a Response object with its output items.
//!
//! Done: string and item-list input (messages with `input_text`, `input_image`,
//! `input_file`; `function_call` / `function_call_output`; `reasoning` items
//! carrying their signature as `encrypted_content`), `instructions`, function
//! tools, `tool_choice`, `parallel_tool_calls`, `max_output_tokens`,
//! `temperature`, `top_p`, `text.format`, `reasoning.effort`, `metadata`, usage
//! with `input_tokens_details.cached_tokens`.
//! `stream: true` is the Responses event sequence ([`stream`]).
//! Not yet (refused with a 400 naming the field): `previous_response_id` and
//! the stored-response endpoints.

pub mod stream;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use bedrock_wire::operation::Operation;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tracing::Instrument;

use super::{error_response, now_secs, translate, STRUCTURED_OUTPUT_HEADER};
use crate::answer::Answer;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::ingress::{
    converse_call, converse_json, failed, json_answer, parse_json, receive, request_span,
    route_translated, run, sse_answer, Finish,
};
use crate::state::AppState;

fn invalid(param: &str, message: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorKind::Validation, Side::Client, message).with_param(param)
}

/// Members accepted and not translated: they change nothing Bedrock does
/// (`store` will once conversation state exists).
const IGNORED: &[&str] = &[
    "store",
    "user",
    "safety_identifier",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "truncation",
    "include",
    "background",
];

/// A Responses request rewritten as a Chat Completions request, with what the
/// Response object echoes back.
#[derive(Debug, Clone, PartialEq)]
pub struct AsChat {
    pub chat: Value,
    /// The request members a Response repeats (`instructions`, `tools`, ...).
    pub echo: Map<String, Value>,
}

/// One input message's content as Chat Completions parts.
fn content_parts(content: &Value, param: &str) -> Result<Value, ProxyError> {
    let parts = match content {
        Value::String(s) => return Ok(Value::String(s.clone())),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(
                param,
                "content must be a string or a list of parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let param = format!("{param}[{i}]");
        let converted = match part["type"].as_str() {
            Some("input_text" | "output_text" | "text") => {
                json!({ "type": "text", "text": part["text"].as_str().unwrap_or("") })
            }
            Some("input_image") => {
                let url = part["image_url"].as_str().ok_or_else(|| {
                    invalid(
                        &format!("{param}.image_url"),
                        "input_image needs image_url (file_id is not supported)",
                    )
                })?;
                json!({ "type": "image_url", "image_url": { "url": url } })
            }
            Some("input_file") => {
                let data = part["file_data"].as_str().ok_or_else(|| {
                    invalid(
                        &format!("{param}.file_data"),
                        "input_file needs file_data (file_id and file_url are not supported)",
                    )
                })?;
                let mut file = json!({ "file_data": data });
                if let Some(name) = part.get("filename") {
                    file["filename"] = name.clone();
                }
                json!({ "type": "file", "file": file })
            }
            Some("refusal") => {
                json!({ "type": "text", "text": part["refusal"].as_str().unwrap_or("") })
            }
            other => {
                return Err(invalid(
                    &format!("{param}.type"),
                    format!("content part type {other:?} is not supported"),
                ))
            }
        };
        out.push(converted);
    }
    Ok(Value::Array(out))
}

/// The input items as Chat Completions messages: function calls join the
/// assistant turn they belong to, reasoning items ride on the next assistant
/// turn as `thinking_blocks` (their signature is `encrypted_content`).
fn messages(input: &Value, messages: &mut Vec<Value>) -> Result<(), ProxyError> {
    let items = match input {
        Value::String(s) => {
            messages.push(json!({ "role": "user", "content": s }));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => {
            return Err(invalid(
                "input",
                "input must be a string or a list of items",
            ))
        }
    };
    let mut thinking: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item["type"]
            .as_str()
            .or_else(|| item.get("role").map(|_| "message"));
        match kind {
            Some("message") => {
                let role = item["role"].as_str().ok_or_else(|| {
                    invalid(&format!("{param}.role"), "a message item needs a role")
                })?;
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(invalid(
                        &format!("{param}.role"),
                        format!("role `{role}` is not supported"),
                    ));
                }
                let content = content_parts(
                    item.get("content").unwrap_or(&Value::Null),
                    &format!("{param}.content"),
                )?;
                let mut message = json!({ "role": role, "content": content });
                if role == "assistant" && !thinking.is_empty() {
                    message["thinking_blocks"] = Value::Array(std::mem::take(&mut thinking));
                }
                messages.push(message);
            }
            Some("function_call") => {
                let call_id = item["call_id"].as_str().ok_or_else(|| {
                    invalid(&format!("{param}.call_id"), "a function_call needs call_id")
                })?;
                let call = json!({
                    "id": call_id,
                    "type": "function",
                    "function": { "name": item["name"], "arguments": item["arguments"] },
                });
                // Calls made in the same turn as a message, or each other, are
                // one assistant turn.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" && thinking.is_empty() => {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => {
                        let mut message =
                            json!({ "role": "assistant", "content": null, "tool_calls": [call] });
                        if !thinking.is_empty() {
                            message["thinking_blocks"] =
                                Value::Array(std::mem::take(&mut thinking));
                        }
                        messages.push(message);
                    }
                }
            }
            Some("function_call_output") => {
                let call_id = item["call_id"].as_str().ok_or_else(|| {
                    invalid(
                        &format!("{param}.call_id"),
                        "a function_call_output needs call_id",
                    )
                })?;
                let output = match &item["output"] {
                    Value::String(s) => Value::String(s.clone()),
                    other @ Value::Array(_) => content_parts(other, &format!("{param}.output"))?,
                    other => Value::String(other.to_string()),
                };
                messages
                    .push(json!({ "role": "tool", "tool_call_id": call_id, "content": output }));
            }
            Some("reasoning") => {
                let text: String = item["summary"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["text"].as_str())
                    .collect();
                // Without its signature Bedrock will not take the reasoning
                // back; a reasoning item without one is left out.
                if let Some(signature) = item["encrypted_content"].as_str() {
                    thinking.push(
                        json!({ "type": "thinking", "thinking": text, "signature": signature }),
                    );
                }
            }
            Some("item_reference") => {
                return Err(invalid(
                    &format!("{param}.type"),
                    "item_reference needs stored responses, which this proxy does not keep yet",
                ))
            }
            other => {
                return Err(invalid(
                    &format!("{param}.type"),
                    format!("input item type {other:?} is not supported"),
                ))
            }
        }
    }
    Ok(())
}

/// Responses function tools as Chat Completions tools; built-in tools have no
/// Bedrock counterpart.
fn tools(tools: &Value) -> Result<Value, ProxyError> {
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "tools must be a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        match tool["type"].as_str() {
            Some("function") => {
                let mut function = Map::new();
                for key in ["name", "description", "parameters", "strict"] {
                    if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                        function.insert(key.into(), v.clone());
                    }
                }
                out.push(json!({ "type": "function", "function": function }));
            }
            other => {
                return Err(invalid(
                    &format!("tools[{i}].type"),
                    format!(
                        "tool type {} is not supported: this proxy's Bedrock backend runs function tools only",
                        other.map_or_else(|| "(missing)".to_owned(), |o| format!("`{o}`"))
                    ),
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

fn tool_choice(choice: &Value) -> Result<Value, ProxyError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({ "type": "function", "function": { "name": o.get("name") } }))
        }
        _ => Err(invalid(
            "tool_choice",
            "tool_choice must be auto, none, required or a function",
        )),
    }
}

fn text_format(text: &Value) -> Result<Option<Value>, ProxyError> {
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({ "type": "json_object" }))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(
                json!({ "type": "json_schema", "json_schema": schema }),
            ))
        }
        other => Err(invalid(
            "text.format.type",
            format!("text format {other:?} is not supported"),
        )),
    }
}

/// A Responses request as the Chat Completions request that means the same.
pub fn as_chat(body: &Value) -> Result<AsChat, ProxyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    let mut chat = Map::new();
    let mut echo = Map::new();
    let mut msgs = Vec::new();
    if let Some(instructions) = obj.get("instructions").filter(|v| !v.is_null()) {
        let text = instructions
            .as_str()
            .ok_or_else(|| invalid("instructions", "instructions must be a string"))?;
        msgs.push(json!({ "role": "system", "content": text }));
    }
    for (key, value) in obj {
        match key.as_str() {
            "model" => {
                chat.insert("model".into(), value.clone());
            }
            "input" => messages(value, &mut msgs)?,
            "instructions" => {}
            "tools" => {
                chat.insert("tools".into(), tools(value)?);
            }
            "tool_choice" => {
                chat.insert("tool_choice".into(), tool_choice(value)?);
            }
            "parallel_tool_calls" | "temperature" | "top_p" | "metadata" => {
                chat.insert(key.clone(), value.clone());
            }
            "max_output_tokens" => {
                chat.insert("max_completion_tokens".into(), value.clone());
            }
            "text" => {
                if let Some(format) = text_format(value)? {
                    chat.insert("response_format".into(), format);
                }
            }
            "reasoning" => {
                if let Some(effort) = value.get("effort").filter(|v| !v.is_null()) {
                    chat.insert("reasoning_effort".into(), effort.clone());
                }
            }
            "stream" => {
                chat.insert("stream".into(), value.clone());
            }
            "previous_response_id" | "conversation" if !value.is_null() => {
                return Err(invalid(
                    key,
                    "this proxy does not keep conversation state yet; send the whole input",
                ))
            }
            k if IGNORED.contains(&k) || value.is_null() => {}
            k => {
                return Err(invalid(
                    k,
                    format!("`{k}` is not supported by this proxy's Bedrock backend"),
                ))
            }
        }
        if !matches!(key.as_str(), "input" | "model" | "stream") {
            echo.insert(key.clone(), value.clone());
        }
    }
    if obj.get("input").is_none() {
        return Err(invalid("input", "Missing required parameter: 'input'."));
    }
    chat.insert("messages".into(), Value::Array(msgs));
    Ok(AsChat {
        chat: Value::Object(chat),
        echo,
    })
}

/// The Response object for a Chat Completions answer.
pub fn response(completion: &Value, echo: &Map<String, Value>, id: &str, created: u64) -> Value {
    let message = &completion["choices"][0]["message"];
    let mut output = Vec::new();
    let blocks = message["thinking_blocks"].as_array();
    for (i, block) in blocks.into_iter().flatten().enumerate() {
        if block["type"] == "thinking" {
            output.push(json!({
                "type": "reasoning",
                "id": format!("rs_{id}_{i}"),
                "summary": [{ "type": "summary_text", "text": block["thinking"] }],
                "encrypted_content": block["signature"],
            }));
        }
    }
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(json!({
            "type": "message",
            "id": format!("msg_{id}"),
            "status": "completed",
            "role": "assistant",
            "content": [{ "type": "output_text", "text": text, "annotations": [] }],
        }));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        output.push(json!({
            "type": "function_call",
            "id": format!("fc_{}", call["id"].as_str().unwrap_or_default()),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }));
    }
    let finish = completion["choices"][0]["finish_reason"].as_str();
    let (status, incomplete) = match finish {
        Some("length") => ("incomplete", json!({ "reason": "max_output_tokens" })),
        Some("content_filter") => ("incomplete", json!({ "reason": "content_filter" })),
        _ => ("completed", Value::Null),
    };
    let u = &completion["usage"];
    let usage = json!({
        "input_tokens": u["prompt_tokens"].as_u64().unwrap_or(0),
        "input_tokens_details": {
            "cached_tokens": u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        },
        "output_tokens": u["completion_tokens"].as_u64().unwrap_or(0),
        "output_tokens_details": {
            "reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0),
        },
        "total_tokens": u["total_tokens"].as_u64().unwrap_or(0),
    });
    let get = |key: &str, default: Value| echo.get(key).cloned().unwrap_or(default);
    let format = echo
        .get("text")
        .and_then(|t| t.get("format"))
        .cloned()
        .unwrap_or_else(|| json!({ "type": "text" }));
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": get("instructions", Value::Null),
        "max_output_tokens": get("max_output_tokens", Value::Null),
        "model": completion["model"],
        "output": output,
        "parallel_tool_calls": get("parallel_tool_calls", Value::Bool(true)),
        "previous_response_id": null,
        "reasoning": { "effort": echo.get("reasoning").and_then(|r| r.get("effort")).cloned(), "summary": null },
        "store": false,
        "temperature": get("temperature", Value::Null),
        "text": { "format": format },
        "tool_choice": get("tool_choice", json!("auto")),
        "tools": get("tools", json!([])),
        "top_p": get("top_p", Value::Null),
        "truncation": "disabled",
        "usage": usage,
        "user": get("user", Value::Null),
        "metadata": get("metadata", json!({})),
    })
}

/// `POST /v1/responses`.
pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    let mut finish = Finish::new(bedrock_wire::new_request_id(), Instant::now());
    crate::ingress::start_trace(&mut finish, request.headers(), "responses");
    let span = request_span(&finish.request_id, "responses");
    match serve(&state, &mut finish, request).instrument(span).await {
        Ok(response) => response,
        Err(e) => failed(&finish, &e, error_response),
    }
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
    let as_chat = as_chat(&json)?;
    let model = translate::model(&as_chat.chat)?;
    let (routed, features) = route_translated(&rt, &principal, finish, &model, |model| {
        format!("The model `{model}` does not exist or you do not have access to it.")
    })?;
    let t = translate::request(&as_chat.chat, &features)?;
    let op = if t.stream {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    let call = converse_call(principal, routed, finish, t.converse, op);
    let id = format!("resp_{}", finish.request_id);
    let created = now_secs();
    let structured = t.structured.as_ref();
    let mut response = match run(state, &rt, call, &parts.headers, finish).await? {
        Answer::Whole { body, summary, .. } => {
            let converse = converse_json(&body)?;
            let completion = translate::response(&converse, &t.model, &id, created, structured);
            json_answer(
                finish,
                &response(&completion, &as_chat.echo, &id, created),
                &summary,
            )
        }
        Answer::Stream { frames, .. } => sse_answer(
            finish,
            frames,
            stream::ResponseEvents::new(
                translate::ChunkWriter::new(id.clone(), t.model.clone(), created, true)
                    .structured(structured),
                id,
                created,
                t.model.clone(),
                as_chat.echo,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_with_instructions_is_the_chat_request_that_means_the_same() {
        let r = as_chat(&json!({
            "model": "haiku", "input": "Hi", "instructions": "Be brief.",
            "max_output_tokens": 50, "temperature": 0,
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"}, "store": true,
        }))
        .unwrap();
        assert_eq!(
            r.chat,
            json!({
                "model": "haiku",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "max_completion_tokens": 50, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": true}},
                "reasoning_effort": "low",
            })
        );
    }

    #[test]
    fn function_calls_join_one_assistant_turn_and_outputs_are_tool_messages() {
        let r = as_chat(&json!({
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}], "encrypted_content": "sig"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"},
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
        }))
        .unwrap();
        let messages = r.chat["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            messages[1]["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "think", "signature": "sig"}])
        );
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "c2", "content": "rain"})
        );
        assert_eq!(
            r.chat["tools"],
            json!([{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            r.chat["tool_choice"],
            json!({"type": "function", "function": {"name": "w"}})
        );
    }

    #[test]
    fn what_bedrock_cannot_do_is_refused_by_name() {
        let param = |body: Value| as_chat(&body).unwrap_err().param;
        assert_eq!(
            param(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}))
                .as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})).as_deref(),
            Some("previous_response_id")
        );
        assert_eq!(param(json!({"model": "m"})).as_deref(), Some("input"));
        assert_eq!(
            param(json!({"model": "m", "input": "x", "frobnicate": 1})).as_deref(),
            Some("frobnicate")
        );
    }

    #[test]
    fn a_completion_becomes_output_items_and_usage() {
        let completion = json!({
            "model": "haiku",
            "choices": [{"message": {"role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1510, "completion_tokens": 5, "total_tokens": 1515,
                "prompt_tokens_details": {"cached_tokens": 1200}},
        });
        let r = response(&completion, &Map::new(), "resp_x", 7);
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "Checking.");
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "t1");
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 1200);
        assert_eq!(r["usage"]["total_tokens"], 1515);
    }
}
